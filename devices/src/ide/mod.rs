//! The PIIX3 IDE controller in legacy mode: two channels of two drives, ATA disks and
//! ATAPI CD/DVD-ROMs, by PIO and (disks) bus-master DMA, as a synchronous state machine.
//!
//! It is what SeaBIOS (src/hw/ata.c) and Linux (ata_piix, libata-sff, sd, sr) talk to at
//! 0x1f0-0x1f7/0x3f6 (IRQ 14) and 0x170-0x177/0x376 (IRQ 15), and it behaves as QEMU's
//! hw/ide/core.c and atapi.c do, register by register, except where a difference is named
//! in the item's docs. The controller does no I/O itself: a command that needs the disk
//! leaves a [`BlockRequest`] (shown to the guest as BSY) that the caller takes with
//! [`IdeController::take_request`], performs on the backing PV disk and answers with
//! [`IdeController::complete`]. A request is at most 64 KiB (128 sectors): long transfers
//! are cut into requests, the next one made when the guest has drained (reads) or filled
//! (writes) the buffer.
//!
//! Bus-master DMA ([`bmdma`]): the BMIDE registers of BAR4 are read and written through
//! [`IdeController::bmdma_read`] / [`bmdma_write`](IdeController::bmdma_write). A READ/WRITE
//! DMA (EXT) command waits for its channel's start bit; then
//! [`IdeController::take_dma_start`] hands the caller (the machine, which has guest
//! memory) the PRD table address, and [`IdeController::start_dma`] takes the parsed
//! scatter list back. The whole transfer is then one [`BlockOp::DmaRead`] or
//! [`BlockOp::DmaWrite`] that the block worker moves straight between the PV disk and
//! guest memory, in chunks each of which blkfront sends as several ring requests at
//! once. A PRD table that does not fit, or guest memory that is not there, ends the
//! command with ABRT and the BMIDE ERROR bit. IDENTIFY advertises DMA for disks only:
//! the CD-ROM stays on PIO (ATAPI PACKET with the DMA bit is refused).
//!
//! - `channel`: the task-file registers as the bus presents them (device select, absent
//!   drives, HOB, device control with nIEN and SRST, the interrupt line, the request slot).
//! - `drive`: one drive's registers, PIO data window and request completion.
//! - `ata`: the ATA command set (IDENTIFY, READ/WRITE SECTORS (EXT), FLUSH CACHE, ...).
//! - `atapi`: PACKET and the MMC commands of a CD/DVD-ROM, sense data, trays and media changes.
//! - `identify`: IDENTIFY (PACKET) DEVICE data and CHS geometry.
//! - [`bmdma`]: the bus-master registers, PRD tables and the scatter/gather copy.

mod ata;
mod atapi;
pub mod bmdma;
mod channel;
mod drive;
mod identify;
#[cfg(test)]
mod tests;

use alloc::vec::Vec;

pub use bmdma::{PrdError, ScatterList, SgEntry};
use channel::Channel;

/// Which drive: channel 0 = primary (0x1f0-0x1f7, 0x3f6, IRQ 14), 1 = secondary
/// (0x170-0x177, 0x376, IRQ 15); unit 0 = master, 1 = slave.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct DriveId {
    pub channel: u8,
    pub unit: u8,
}

/// What sits at a drive position (from the device model's command line).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DriveSpec {
    /// ATA disk; nr_sectors in 512-byte sectors of the backing PV disk
    HardDisk { nr_sectors: u64, read_only: bool },
    /// ATAPI CD-ROM; the medium's size in 512-byte sectors, None = no medium (tray closed, empty)
    CdRom { medium_nr_sectors: Option<u64> },
}

/// Slow work the controller asks for; a worker does it on the PV disk and calls
/// `IdeController::complete`. Sectors are 512-byte sectors of the backing PV disk.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum BlockOp {
    Read {
        sector: u64,
        nr_sectors: u32,
    },
    /// data.len() is a multiple of 512
    Write {
        sector: u64,
        data: Vec<u8>,
    },
    Flush,
    /// READ DMA (EXT): `nr_sectors` from `sector` straight into guest memory, `sg` in
    /// order (as long as the sectors)
    DmaRead {
        sector: u64,
        nr_sectors: u32,
        sg: Vec<SgEntry>,
    },
    /// WRITE DMA (EXT): guest memory at `sg` onto `nr_sectors` from `sector`, then a
    /// flush when `flush` (the drive's write cache is off)
    DmaWrite {
        sector: u64,
        nr_sectors: u32,
        sg: Vec<SgEntry>,
        flush: bool,
    },
}

/// A [`BlockOp`] for one drive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockRequest {
    pub drive: DriveId,
    pub op: BlockOp,
}

/// How the worker's [`BlockRequest`] ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BlockOutcome {
    /// the bytes read (len == nr_sectors * 512)
    Read(Vec<u8>),
    Written,
    Flushed,
    /// a DMA op moved all its bytes
    Transferred,
    /// a DMA op met guest memory that is not there (the PRD table pointed outside RAM)
    GuestMemoryFault,
    /// the PV disk failed (I/O error, backend gone, timed out): the command ends with an error status
    Failed,
}

/// Things QMP must hear about (the guest moved or locked a CD tray).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdeEvent {
    TrayLocked { drive: DriveId, locked: bool },
    TrayMoved { drive: DriveId, open: bool },
}

/// Largest transfer one [`BlockRequest`] carries, in 512-byte sectors (64 KiB).
pub const MAX_REQUEST_SECTORS: u32 = 128;

/// Events kept per channel between two [`IdeController::take_events`] calls.
pub const MAX_QUEUED_EVENTS: usize = 32;

/// Port offsets of the command block (0x1f0/0x170 + n).
const COMMAND_BLOCK_LEN: u16 = 8;
const PRIMARY_COMMAND_BASE: u16 = 0x1f0;
const SECONDARY_COMMAND_BASE: u16 = 0x170;
const PRIMARY_CONTROL_PORT: u16 = 0x3f6;
const SECONDARY_CONTROL_PORT: u16 = 0x376;

/// Where a port lands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Port {
    /// register `0..=7` of the channel's command block
    Command {
        channel: usize,
        register: u8,
    },
    /// alternate status (read) / device control (write)
    Control {
        channel: usize,
    },
    Unclaimed,
}

fn decode_port(port: u16) -> Port {
    for (channel, base, control) in
        [(0, PRIMARY_COMMAND_BASE, PRIMARY_CONTROL_PORT), (1, SECONDARY_COMMAND_BASE, SECONDARY_CONTROL_PORT)]
    {
        if (base..base + COMMAND_BLOCK_LEN).contains(&port) {
            return Port::Command { channel, register: (port - base) as u8 };
        }
        if port == control {
            return Port::Control { channel };
        }
    }
    Port::Unclaimed
}

/// All ones in the low `size` bytes: what an access nobody decodes returns.
fn all_ones(size: u8) -> u32 {
    match size {
        1 => 0xff,
        2 => 0xffff,
        _ => u32::MAX,
    }
}

/// A DMA transfer ready to start (a DMA command and the start bit): the machine reads
/// its PRD table and answers with [`IdeController::start_dma`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DmaStart {
    pub drive: DriveId,
    pub prd_address: u32,
    pub len_bytes: u64,
}

/// The PIIX3 IDE function's two legacy channels and their drives.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct IdeController {
    channels: [Channel; 2],
}

impl IdeController {
    /// `drives[channel][unit]`
    pub fn new(drives: [[Option<DriveSpec>; 2]; 2]) -> Self {
        let [primary, secondary] = drives;
        IdeController { channels: [Channel::new(0, primary), Channel::new(1, secondary)] }
    }

    /// Port I/O. `port` is absolute (0x1f0-0x1f7, 0x3f6, 0x170-0x177, 0x376); size 1, 2 or 4
    /// (4 only meaningful on the data port: two 16-bit words, low first). Returns the value
    /// in the low `size` bytes. Never panics on any (port, size, value).
    ///
    /// As QEMU's port I/O core does: the data port takes 16- and 32-bit accesses (a byte
    /// read of it returns 0xff); a 16-bit access to another register is two byte accesses
    /// (the second one past the block reads 0xff); other sizes read all ones.
    pub fn read(&mut self, port: u16, size: u8) -> u32 {
        match (decode_port(port), size) {
            (Port::Command { channel, register: 0 }, 2 | 4) => self.channels[channel].read_data(usize::from(size)),
            (Port::Command { channel, register }, 1) => u32::from(self.channels[channel].read_register(register)),
            (Port::Command { channel, register }, 2) => {
                let low = self.channels[channel].read_register(register);
                let high = if register + 1 < COMMAND_BLOCK_LEN as u8 {
                    self.channels[channel].read_register(register + 1)
                } else {
                    0xff
                };
                u32::from(u16::from_le_bytes([low, high]))
            }
            (Port::Control { channel }, 1) => u32::from(self.channels[channel].read_alt_status()),
            (Port::Control { channel }, 2) => 0xff00 | u32::from(self.channels[channel].read_alt_status()),
            _ => all_ones(size),
        }
    }

    /// Port output; see [`read`](Self::read) for how sizes split.
    pub fn write(&mut self, port: u16, size: u8, value: u32) {
        match (decode_port(port), size) {
            (Port::Command { channel, register: 0 }, 2 | 4) => {
                self.channels[channel].write_data(usize::from(size), value)
            }
            (Port::Command { channel, register }, 1) => self.channels[channel].write_register(register, value as u8),
            (Port::Command { channel, register }, 2) => {
                self.channels[channel].write_register(register, value as u8);
                if register + 1 < COMMAND_BLOCK_LEN as u8 {
                    self.channels[channel].write_register(register + 1, (value >> 8) as u8);
                }
            }
            (Port::Control { channel }, 1 | 2) => self.channels[channel].write_device_control(value as u8),
            _ => log::trace!("ide: write of {size} bytes to port {port:#x} ignored"),
        }
    }

    /// A read of `size` bytes at `offset` (0..16) of the bus-master registers (BAR4);
    /// see [`bmdma`] for the layout.
    pub fn bmdma_read(&mut self, offset: u16, size: u8) -> u32 {
        let Some((channel, register)) = bmdma::decode_offset(offset) else { return all_ones(size) };
        let bm = &self.channels[channel].bus.bm;
        match (register, size) {
            (0, 1) => u32::from(bm.command),
            (2, 1) => u32::from(bm.status),
            (4..=7, _) => bm.read_prd_address(register, size),
            _ => all_ones(size),
        }
    }

    /// A write of `size` bytes at `offset` (0..16) of the bus-master registers. Setting
    /// the start bit may leave a [`DmaStart`] to take.
    pub fn bmdma_write(&mut self, offset: u16, size: u8, value: u32) {
        let Some((channel, register)) = bmdma::decode_offset(offset) else { return };
        let channel = &mut self.channels[channel];
        match (register, size) {
            (0, 1) => channel.write_bmdma_command(value as u8),
            (2, 1) => channel.bus.bm.write_status(value as u8),
            (4..=7, _) => channel.bus.bm.write_prd_address(register, size, value),
            _ => log::trace!("ide: BMIDE write of {size} bytes at {offset:#x} ignored"),
        }
    }

    /// The next DMA transfer ready to start, if any: a drive has a DMA command and its
    /// channel's start bit is set. The caller reads the PRD table and calls
    /// [`start_dma`](Self::start_dma) before anything else touches the controller.
    pub fn take_dma_start(&mut self) -> Option<DmaStart> {
        self.channels.iter_mut().find_map(Channel::take_dma_start)
    }

    /// The PRD table of a transfer from [`take_dma_start`](Self::take_dma_start): a
    /// scatter list leaves a DMA [`BlockRequest`]; an error ends the command (ABRT, the
    /// BMIDE ERROR bit, an interrupt).
    pub fn start_dma(&mut self, start: DmaStart, table: Result<ScatterList, PrdError>) {
        if let Some(channel) = self.channels.get_mut(usize::from(start.drive.channel)) {
            channel.start_dma(start.drive.unit, table);
        }
    }

    /// The level of the channel's interrupt line (ISA 14 for channel 0, 15 for channel 1):
    /// INTRQ set and nIEN clear. The glue sends a change to Xen when it differs from the
    /// last one sent (ISA IRQs 14/15 are edge-triggered at the PIC; QEMU lowers the line on
    /// a status read, so a new interrupt is a new rising edge).
    ///
    /// As in QEMU, INTRQ is only latched when the drive interrupts while nIEN is clear: a
    /// command completed under nIEN (SeaBIOS polls that way) leaves nothing pending. Setting
    /// nIEN while INTRQ is latched lowers the line and clearing it raises it again (QEMU
    /// leaves its line high throughout); libata reads status right after setting nIEN, so
    /// it never sees the difference.
    ///
    /// Port accesses, `complete`, `set_medium`, `set_tray_open`, `request_eject` and `reset`
    /// can change the level.
    pub fn irq_level(&self, channel: u8) -> bool {
        self.channels.get(usize::from(channel)).is_some_and(Channel::irq_level)
    }

    /// The next block request, if any (at most one outstanding per channel). While a
    /// request is outstanding the drive shows BSY.
    ///
    /// A port write, a port read of the data port and [`complete`](Self::complete) can each
    /// leave a new request: ask again after them. A request taken before a reset (SRST,
    /// DEVICE RESET, [`reset`](Self::reset)) still gets its outcome through `complete`, which
    /// is then ignored; until it has, that channel hands out no new request.
    pub fn take_request(&mut self) -> Option<BlockRequest> {
        self.channels.iter_mut().find_map(Channel::take_request)
    }

    /// The outcome of the request taken for `drive`. An outcome for a drive with nothing
    /// outstanding (e.g. after a reset) is ignored.
    pub fn complete(&mut self, drive: DriveId, outcome: BlockOutcome) {
        if let Some(channel) = self.channels.get_mut(usize::from(drive.channel)) {
            channel.complete(drive.unit, outcome);
        }
    }

    /// QMP changed a CD's medium: Some(nr_sectors) inserted, None removed (tray stays as the
    /// host left it: see `set_tray_open`). Drives QEMU's cdrom_changed / UNIT ATTENTION / GESN
    /// NEW_MEDIA sequence so that the guest notices.
    pub fn set_medium(&mut self, drive: DriveId, medium_nr_sectors: Option<u64>) {
        if let Some(channel) = self.channels.get_mut(usize::from(drive.channel)) {
            channel.set_medium(drive.unit, medium_nr_sectors);
        }
    }

    /// QMP opened or closed the tray. A tray that moves runs the same change sequence as
    /// [`set_medium`](Self::set_medium) (QEMU's `ide_cd_change_cb`); no [`IdeEvent`] is
    /// queued for it since QMP made the move.
    pub fn set_tray_open(&mut self, drive: DriveId, open: bool) {
        if let Some(channel) = self.channels.get_mut(usize::from(drive.channel)) {
            channel.set_tray_open(drive.unit, open);
        }
    }

    /// QMP asked to eject a tray the guest has locked: report EJECT_REQUESTED through GESN.
    pub fn request_eject(&mut self, drive: DriveId) {
        if let Some(channel) = self.channels.get_mut(usize::from(drive.channel)) {
            channel.request_eject(drive.unit);
        }
    }

    /// Events for QMP since the last call (guest PREVENT ALLOW MEDIUM REMOVAL, START STOP
    /// UNIT eject/load). Only changes are reported, and at most
    /// [`MAX_QUEUED_EVENTS`] per channel are kept between calls
    /// (the oldest are dropped first).
    pub fn take_events(&mut self) -> Vec<IdeEvent> {
        let mut events = Vec::new();
        for channel in &mut self.channels {
            events.append(&mut channel.bus.events);
        }
        events
    }

    /// Bytes the drives hold in their data buffers (tests check that guests cannot make it
    /// grow without bound).
    #[cfg(test)]
    fn buffered_bytes(&self) -> usize {
        self.channels.iter().map(Channel::buffered_bytes).sum()
    }

    pub fn is_tray_locked(&self, drive: DriveId) -> bool {
        self.channels.get(usize::from(drive.channel)).is_some_and(|channel| channel.is_tray_locked(drive.unit))
    }

    /// A machine reset (QEMU's `ide_bus_reset`): both channels back to their power-on
    /// state (registers, signatures, device control, no interrupt, no transfer; outstanding
    /// requests are forgotten and their outcomes ignored). Drives keep their media; trays
    /// are unlocked (with an [`IdeEvent::TrayLocked`] for each that was locked); sense data
    /// and the NOT READY / UNIT ATTENTION reports of a pending media change are dropped
    /// (GESN still reports the change). Unlike QEMU, an open tray stays open (QEMU marks it
    /// closed while its block layer still has it open) and disks' write caches are on again
    /// (QEMU keeps what SET FEATURES last chose).
    pub fn reset(&mut self) {
        for channel in &mut self.channels {
            channel.reset();
        }
    }
}

/// The Xen platform device's unplug ([`crate::platform`]).
impl IdeController {
    /// Takes every hard disk off its channel (CD-ROMs stay), all but the primary master
    /// when `keep_primary_master`, then resets both channels as QEMU resets the IDE
    /// function after an unplug (a request in flight is forgotten, its outcome ignored).
    /// Returns the positions of the disks that went.
    pub fn unplug_hard_disks(&mut self, keep_primary_master: bool) -> Vec<DriveId> {
        let mut gone = Vec::new();
        for (channel_index, channel) in self.channels.iter_mut().enumerate() {
            for unit in 0..2usize {
                if keep_primary_master && channel_index == 0 && unit == 0 {
                    continue;
                }
                if channel.unplug_hard_disk(unit) {
                    gone.push(DriveId { channel: channel_index as u8, unit: unit as u8 });
                }
            }
        }
        if !gone.is_empty() {
            self.reset();
        }
        gone
    }
}

/// Save/restore ([`crate::snapshot`]): both channels with their drives, section
/// [`SectionId::Ide`](crate::snapshot::SectionId::Ide).
impl IdeController {
    /// The version of the IDE section this model writes and reads.
    /// Version 2 added the bus-master registers, the DMA transfer and each disk's
    /// transfer mode; a version 1 section is refused (no release wrote one for a guest
    /// that could then be restored here with DMA).
    pub const STATE_VERSION: u16 = 2;

    /// Whether the CD tray of `drive` is open (after a restore, the block layer is told).
    pub fn is_tray_open(&self, drive: DriveId) -> bool {
        self.channels.get(usize::from(drive.channel)).is_some_and(|channel| channel.is_tray_open(drive.unit))
    }

    /// No disk request is queued, with a block worker, or awaited by a drive: the
    /// state can be saved (the service waits for this while the VM is paused).
    pub fn is_idle(&self) -> bool {
        self.channels.iter().all(Channel::is_idle)
    }

    /// Takes a saved controller (decoded from its section) in place of this one, built
    /// from the restoring argv: drives must sit where they sat and be what they were (a
    /// disk the same size), and no disk request may have been outstanding. A CD whose
    /// medium differs from the saved one sees a medium change, as after QMP `change`.
    pub fn load_state(&mut self, mut saved: IdeController) -> Result<(), crate::snapshot::SnapshotError> {
        let mut changes = [[None, None], [None, None]];
        for ((now, then), change) in self.channels.iter().zip(saved.channels.iter_mut()).zip(changes.iter_mut()) {
            *change = now
                .adopt_saved(then)
                .map_err(|what| crate::snapshot::SnapshotError::invalid(crate::snapshot::SectionId::Ide, what))?;
        }
        *self = saved;
        for (channel, units) in changes.into_iter().enumerate() {
            for (unit, change) in units.into_iter().enumerate() {
                if let Some(medium_nr_sectors) = change {
                    self.set_medium(DriveId { channel: channel as u8, unit: unit as u8 }, medium_nr_sectors);
                }
            }
        }
        Ok(())
    }
}
