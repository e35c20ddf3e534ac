//! One IDE channel: the task file as the bus presents it, device control, the interrupt
//! line and the slot for the channel's block request.
//!
//! Register writes go to both drives (they share the cable); reads come from the selected
//! drive, with QEMU's rules for absent drives: with neither drive present every register
//! reads 0, and a selected slave that is absent reads 0 in error and status. While the
//! selected drive is BSY or DRQ, writes to registers 1-6 are ignored (so the drive
//! selection cannot change under a running command).
//!
//! SRST: QEMU starts the reset on the rising edge of SRST and finishes it shortly after in
//! a bottom half. Here the drives are reset on the rising edge and show BSY until SRST is
//! written back to 0; then each runs its diagnostic (signature, error 1, status 0x50 for a
//! disk with an interrupt, 0x00 for ATAPI without one). Guests hold SRST for microseconds
//! and wait for !BSY after releasing it, so they see the same thing.

use alloc::string::String;
use alloc::vec::Vec;

use super::bmdma::{self, BusMaster, PrdError, ScatterList};
use super::drive::{Drive, status};
use super::{BlockOp, BlockOutcome, BlockRequest, DmaStart, DriveId, DriveSpec, IdeEvent, MAX_QUEUED_EVENTS};

/// Device control bits (0x3f6/0x376 write).
pub(super) mod control {
    /// interrupts disabled (the drive does not drive INTRQ)
    pub const NIEN: u8 = 0x02;
    /// software reset of both drives
    pub const SRST: u8 = 0x04;
    /// high-order byte: registers 1-5 read their previous (HOB) value
    pub const HOB: u8 = 0x80;
}

/// State the drives of a channel share, handed to a drive while it runs.
#[derive(serde::Serialize, serde::Deserialize)]
pub(super) struct Bus {
    pub channel: u8,
    pub device_control: u8,
    /// the drive's interrupt request (the line is this and !nIEN)
    pub intrq: bool,
    /// SRST has risen and not fallen yet
    pub srst_active: bool,
    /// a request per drive waiting to be taken
    queued: [Option<BlockOp>; 2],
    /// the request taken and not completed: (unit, orphaned by a reset)
    in_flight: Option<(usize, bool)>,
    /// the bus-master (BMIDE) registers
    pub bm: BusMaster,
    /// a drive with a DMA command waiting for the start bit: (unit, bytes to move)
    pub dma_waiting: Option<(usize, u64)>,
    #[serde(skip)]
    pub events: Vec<IdeEvent>,
}

impl Bus {
    fn new(channel: u8) -> Self {
        Bus {
            channel,
            device_control: 0,
            intrq: false,
            srst_active: false,
            queued: [None, None],
            in_flight: None,
            bm: BusMaster::default(),
            dma_waiting: None,
            events: Vec::new(),
        }
    }

    /// The drive interrupts. As QEMU's `ide_set_irq`: nothing is latched while nIEN is
    /// set; what is latched sets the BMIDE INTERRUPT bit too (QEMU's `bmdma_irq`).
    pub fn raise_irq(&mut self) {
        if self.device_control & control::NIEN == 0 {
            self.intrq = true;
            self.bm.status |= bmdma::status::INTERRUPT;
        }
    }

    /// Leaves `op` for the worker.
    pub fn submit(&mut self, unit: usize, op: BlockOp) {
        if let Some(slot) = self.queued.get_mut(unit) {
            *slot = Some(op);
        }
    }

    /// Forgets `unit`'s request: a queued one is dropped; a taken one's outcome will be
    /// ignored (and no new request of this channel is handed out until it arrives, so the
    /// outcome cannot be mistaken for a newer request's).
    pub fn cancel(&mut self, unit: usize) {
        if let Some(slot) = self.queued.get_mut(unit) {
            *slot = None;
        }
        if self.dma_waiting.is_some_and(|(waiting, _)| waiting == unit) {
            self.dma_waiting = None;
            self.bm.status &= !bmdma::status::ACTIVE;
        }
        if let Some((in_flight_unit, orphaned)) = &mut self.in_flight
            && *in_flight_unit == unit
        {
            *orphaned = true;
        }
    }

    fn take(&mut self) -> Option<(usize, BlockOp)> {
        if self.in_flight.is_some() {
            return None;
        }
        let unit = self.queued.iter().position(Option::is_some)?;
        let op = self.queued[unit].take()?;
        self.in_flight = Some((unit, false));
        Some((unit, op))
    }

    /// Ends the request taken for `unit`; true if its outcome is to be delivered.
    fn finish(&mut self, unit: usize) -> bool {
        match self.in_flight {
            Some((in_flight_unit, orphaned)) if in_flight_unit == unit => {
                self.in_flight = None;
                !orphaned
            }
            _ => false,
        }
    }

    /// Queues an event for QMP, dropping the oldest beyond [`MAX_QUEUED_EVENTS`].
    pub fn push_event(&mut self, event: IdeEvent) {
        if self.events.len() >= MAX_QUEUED_EVENTS {
            self.events.remove(0);
        }
        self.events.push(event);
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
pub(super) struct Channel {
    pub bus: Bus,
    drives: [Drive; 2],
    /// the selected drive (device/head bit 4)
    unit: usize,
}

impl Channel {
    pub fn new(index: u8, specs: [Option<DriveSpec>; 2]) -> Self {
        let [master, slave] = specs;
        Channel {
            bus: Bus::new(index),
            drives: [
                Drive::new(DriveId { channel: index, unit: 0 }, master),
                Drive::new(DriveId { channel: index, unit: 1 }, slave),
            ],
            unit: 0,
        }
    }

    fn no_drive(&self) -> bool {
        !self.drives[0].is_present() && !self.drives[1].is_present()
    }

    fn selected_slave_absent(&self) -> bool {
        self.unit == 1 && !self.drives[1].is_present()
    }

    fn selected(&self) -> &Drive {
        &self.drives[self.unit & 1]
    }

    pub fn irq_level(&self) -> bool {
        self.bus.intrq && self.bus.device_control & control::NIEN == 0
    }

    /// A byte read of command-block register `register` (0-7).
    pub fn read_register(&mut self, register: u8) -> u8 {
        let hob = self.bus.device_control & control::HOB != 0;
        let no_drive = self.no_drive();
        let slave_absent = self.selected_slave_absent();
        let tf = &self.selected().tf;
        let value = match register {
            // a byte access to the data port reads all ones (QEMU)
            0 => 0xff,
            _ if no_drive => 0,
            1 if slave_absent => 0,
            1 => {
                if hob {
                    tf.hob_feature
                } else {
                    tf.error
                }
            }
            2 => {
                if hob {
                    tf.hob_nsector
                } else {
                    tf.nsector as u8
                }
            }
            3 => {
                if hob {
                    tf.hob_sector
                } else {
                    tf.sector
                }
            }
            4 => {
                if hob {
                    tf.hob_lcyl
                } else {
                    tf.lcyl
                }
            }
            5 => {
                if hob {
                    tf.hob_hcyl
                } else {
                    tf.hcyl
                }
            }
            6 => tf.select,
            _ if slave_absent => 0,
            _ => tf.status,
        };
        if register == 7 {
            // reading status acknowledges the interrupt
            self.bus.intrq = false;
        }
        value
    }

    /// Alternate status: status without acknowledging the interrupt.
    pub fn read_alt_status(&self) -> u8 {
        if self.no_drive() || self.selected_slave_absent() { 0 } else { self.selected().tf.status }
    }

    /// A byte write of command-block register `register` (0-7).
    pub fn write_register(&mut self, register: u8, value: u8) {
        if register != 7 && self.selected().tf.status & (status::BSY | status::DRQ) != 0 {
            log::trace!("ide{}: write {value:#04x} to register {register} while busy ignored", self.bus.channel);
            return;
        }
        if register != 0 {
            // any register write clears HOB
            self.bus.device_control &= !control::HOB;
        }
        match register {
            1..=5 => {
                for drive in &mut self.drives {
                    drive.tf.write_shifting_hob(register, value);
                }
            }
            6 => {
                for drive in &mut self.drives {
                    drive.tf.select = value | super::drive::select::ALWAYS_ON;
                }
                self.unit = usize::from(value & super::drive::select::DEV != 0);
            }
            7 => {
                self.bus.intrq = false;
                if self.selected_slave_absent() {
                    log::trace!("ide{}: command {value:#04x} to an absent slave ignored", self.bus.channel);
                    return;
                }
                let unit = self.unit & 1;
                self.drives[unit].exec_command(&mut self.bus, value);
            }
            _ => {}
        }
    }

    pub fn write_device_control(&mut self, value: u8) {
        let rising = self.bus.device_control & control::SRST == 0 && value & control::SRST != 0;
        self.bus.device_control = value;
        if rising {
            self.bus.srst_active = true;
            for drive in &mut self.drives {
                drive.begin_soft_reset(&mut self.bus);
            }
        } else if self.bus.srst_active && value & control::SRST == 0 {
            self.bus.srst_active = false;
            for drive in &mut self.drives {
                drive.execute_diagnostic(&mut self.bus);
            }
        }
    }

    /// A 16- or 32-bit access to the data port, from the selected drive.
    pub fn read_data(&mut self, len_bytes: usize) -> u32 {
        let unit = self.unit & 1;
        self.drives[unit].read_data(&mut self.bus, len_bytes)
    }

    pub fn write_data(&mut self, len_bytes: usize, value: u32) {
        let unit = self.unit & 1;
        self.drives[unit].write_data(&mut self.bus, len_bytes, value);
    }

    /// A byte write of the BMIDE command register (QEMU's `bmdma_cmd_writeb`): a change
    /// of the start bit sets or clears ACTIVE; only start and direction are kept.
    pub fn write_bmdma_command(&mut self, value: u8) {
        let start = value & bmdma::command::START != 0;
        if start != self.bus.bm.is_started() {
            if start {
                self.bus.bm.status |= bmdma::status::ACTIVE;
            } else {
                self.bus.bm.status &= !bmdma::status::ACTIVE;
            }
        }
        self.bus.bm.command = value & (bmdma::command::START | bmdma::command::TO_MEMORY);
    }

    pub fn take_dma_start(&mut self) -> Option<DmaStart> {
        if !self.bus.bm.is_started() || self.bus.bm.status & bmdma::status::ACTIVE == 0 {
            return None;
        }
        let (unit, len_bytes) = self.bus.dma_waiting.take()?;
        Some(DmaStart {
            drive: DriveId { channel: self.bus.channel, unit: unit as u8 },
            prd_address: self.bus.bm.prd_address,
            len_bytes,
        })
    }

    pub fn start_dma(&mut self, unit: u8, table: Result<ScatterList, PrdError>) {
        if let Some(drive) = self.drives.get_mut(usize::from(unit)) {
            drive.start_dma(&mut self.bus, table);
        }
    }

    pub fn take_request(&mut self) -> Option<BlockRequest> {
        let (unit, op) = self.bus.take()?;
        Some(BlockRequest { drive: DriveId { channel: self.bus.channel, unit: unit as u8 }, op })
    }

    pub fn complete(&mut self, unit: u8, outcome: BlockOutcome) {
        let unit = usize::from(unit);
        if unit < 2 && self.bus.finish(unit) {
            self.drives[unit].complete(&mut self.bus, outcome);
        }
    }

    pub fn set_medium(&mut self, unit: u8, medium_nr_sectors: Option<u64>) {
        if let Some(drive) = self.drives.get_mut(usize::from(unit)) {
            drive.set_medium(&mut self.bus, medium_nr_sectors);
        }
    }

    pub fn set_tray_open(&mut self, unit: u8, open: bool) {
        if let Some(drive) = self.drives.get_mut(usize::from(unit)) {
            drive.set_tray_open(&mut self.bus, open);
        }
    }

    pub fn request_eject(&mut self, unit: u8) {
        if let Some(drive) = self.drives.get_mut(usize::from(unit)) {
            drive.request_eject(&mut self.bus);
        }
    }

    pub fn is_tray_locked(&self, unit: u8) -> bool {
        self.drives.get(usize::from(unit)).is_some_and(Drive::is_tray_locked)
    }

    #[cfg(test)]
    pub fn buffered_bytes(&self) -> usize {
        self.drives.iter().map(|drive| drive.io.capacity()).sum()
    }

    /// Takes the hard disk at `unit` off the channel (the Xen platform device's unplug);
    /// a CD-ROM or an empty position stays. Returns whether a disk went.
    pub fn unplug_hard_disk(&mut self, unit: usize) -> bool {
        let channel = self.bus.channel;
        match self.drives.get_mut(unit) {
            Some(drive) if drive.is_present() && !drive.is_cd() => {
                *drive = Drive::new(DriveId { channel, unit: unit as u8 }, None);
                true
            }
            _ => false,
        }
    }

    /// Power-on state (QEMU's `ide_bus_reset`).
    pub fn reset(&mut self) {
        self.unit = 0;
        self.bus.device_control = 0;
        self.bus.intrq = false;
        self.bus.srst_active = false;
        for drive in &mut self.drives {
            drive.machine_reset(&mut self.bus);
        }
        // QEMU's bmdma_reset
        self.bus.bm = BusMaster::default();
        self.bus.dma_waiting = None;
    }
}

/// Save/restore.
impl Channel {
    /// Checks a saved channel against this one and makes it fit (see
    /// [`Drive::adopt_saved`]); returns the CD medium changes to apply after it
    /// replaced this one, by unit.
    pub(super) fn adopt_saved(&self, saved: &mut Channel) -> Result<[Option<Option<u64>>; 2], String> {
        if saved.bus.channel != self.bus.channel || saved.unit > 1 {
            return Err(alloc::format!("channel {} was saved as channel {}", self.bus.channel, saved.bus.channel));
        }
        if saved.bus.in_flight.is_some() || saved.bus.queued.iter().any(Option::is_some) {
            return Err(alloc::format!("channel {} had a disk request outstanding", self.bus.channel));
        }
        if saved.bus.dma_waiting.is_some_and(|(unit, _)| unit > 1) {
            return Err(alloc::format!("channel {}: its waiting DMA names no drive", self.bus.channel));
        }
        let mut changes = [None, None];
        for ((now, then), change) in self.drives.iter().zip(saved.drives.iter_mut()).zip(changes.iter_mut()) {
            *change = now.adopt_saved(then)?;
        }
        Ok(changes)
    }

    pub(super) fn is_tray_open(&self, unit: u8) -> bool {
        self.drives.get(usize::from(unit)).is_some_and(Drive::is_tray_open)
    }

    /// No disk request is queued, taken or awaited: the state can be saved.
    pub(super) fn is_idle(&self) -> bool {
        self.bus.in_flight.is_none()
            && self.bus.queued.iter().all(Option::is_none)
            && self.drives.iter().all(|drive| drive.pending.is_none())
    }
}
