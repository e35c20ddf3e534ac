//! One drive position: its task-file registers, its PIO data window, the data command it
//! is running and the block request that command waits for.
//!
//! The PIO window is a range of `io` that the guest reads (data-in) or fills (data-out)
//! through the data port while DRQ is set; when the window is done, DRQ drops and the
//! command's next step runs (`PioEnd`). Unlike QEMU, an access that runs past the end of
//! the window (a 32-bit read with 2 bytes left, a 16-bit read with 1 byte left) takes the
//! bytes that are left, zero-padded, and ends the window instead of returning 0 forever:
//! libata reads the odd trailing byte of an ATAPI transfer that way.

use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use super::atapi::CdRom;
use super::bmdma::{self, PrdError, ScatterList};
use super::channel::Bus;
use super::identify::Geometry;
use super::{BlockOp, BlockOutcome, DriveId, DriveSpec};

/// Status register bits.
pub(super) mod status {
    pub const BSY: u8 = 0x80;
    pub const DRDY: u8 = 0x40;
    pub const DSC: u8 = 0x10;
    pub const DRQ: u8 = 0x08;
    pub const ERR: u8 = 0x01;
}

/// Error register bits (ATA; ATAPI puts the sense key in bits 7:4).
pub(super) mod error {
    pub const ABRT: u8 = 0x04;
    pub const MC: u8 = 0x20;
}

/// Device/head register bits.
pub(super) mod select {
    /// bits 7 and 5, which read as 1
    pub const ALWAYS_ON: u8 = 0xa0;
    pub const LBA: u8 = 0x40;
    pub const DEV: u8 = 0x10;
    /// head number (CHS) or LBA bits 27:24
    pub const HEAD: u8 = 0x0f;
}

/// A hard disk backed by a PV disk.
#[derive(serde::Serialize, serde::Deserialize)]
pub(super) struct Disk {
    pub nr_sectors: u64,
    pub read_only: bool,
    pub geometry: Geometry,
    /// SET FEATURES 0x02/0x82; when off, each write is followed by a flush
    pub write_cache: bool,
    /// the DMA mode SET FEATURES 0x03 selected (IDENTIFY words 62, 63, 88 show it)
    pub dma_mode: DmaMode,
}

/// The transfer mode SET FEATURES 0x03 last selected, as IDENTIFY reports it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(super) enum DmaMode {
    /// PIO (the default, or a PIO mode): no DMA mode shown as selected
    #[default]
    None,
    SingleWord(u8),
    Multiword(u8),
    Ultra(u8),
}

/// What the drive position holds.
#[derive(serde::Serialize, serde::Deserialize)]
pub(super) enum Media {
    /// No drive. It still has registers (the bus writes them) and, as in QEMU, an absent
    /// master executes commands as a disk without a medium would.
    Absent,
    Disk(Disk),
    Cd(CdRom),
}

/// The task-file registers and their HOB copies.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub(super) struct TaskFile {
    pub feature: u8,
    pub error: u8,
    /// sector count; after an LBA48 (or 0 = 256) transform it holds the full count
    pub nsector: u32,
    pub sector: u8,
    pub lcyl: u8,
    pub hcyl: u8,
    pub hob_feature: u8,
    pub hob_nsector: u8,
    pub hob_sector: u8,
    pub hob_lcyl: u8,
    pub hob_hcyl: u8,
    pub select: u8,
    pub status: u8,
    /// the running command is an EXT one (48-bit addressing)
    pub lba48: bool,
}

impl TaskFile {
    /// A write to registers 1-5: the old value moves to the HOB copy.
    pub fn write_shifting_hob(&mut self, register: u8, value: u8) {
        match register {
            1 => {
                self.hob_feature = self.feature;
                self.feature = value;
            }
            2 => {
                self.hob_nsector = self.nsector as u8;
                self.nsector = u32::from(value);
            }
            3 => {
                self.hob_sector = self.sector;
                self.sector = value;
            }
            4 => {
                self.hob_lcyl = self.lcyl;
                self.lcyl = value;
            }
            5 => {
                self.hob_hcyl = self.hcyl;
                self.hcyl = value;
            }
            _ => {}
        }
    }
}

/// What happens when the guest has finished the PIO window.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(super) enum PioEnd {
    /// the data phase is over (IDENTIFY, or no transfer)
    Stop,
    AtaRead,
    AtaWrite,
    /// the 12-byte PACKET CDB has arrived
    AtapiPacket,
    AtapiReply,
}

/// The request a drive waits for, with what its outcome must look like.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(super) enum Pending {
    AtaRead {
        nr_sectors: u32,
    },
    AtaWrite,
    /// the flush that follows a write while the write cache is off
    AtaWriteFlush,
    Flush,
    CdRead {
        nr_blocks: u32,
    },
    /// a DMA transfer; ACTIVE stays set after it when the PRD table was longer
    Dma {
        longer_than_transfer: bool,
    },
}

/// A READ/WRITE DMA (EXT) command: what it moves once the bus master starts.
#[derive(Clone, Copy, Debug, serde::Serialize, serde::Deserialize)]
pub(super) struct DmaCommand {
    /// a read: the device writes guest memory
    pub to_memory: bool,
    pub sector: u64,
    pub nr_sectors: u32,
}

/// A READ SECTORS (EXT) in progress.
#[derive(Clone, Copy, Debug, serde::Serialize, serde::Deserialize)]
pub(super) struct AtaRead {
    /// the sector the guest gets next
    pub next_lba: u64,
    /// sectors still to give the guest
    pub remaining: u32,
    /// byte offset in `io` of the next buffered sector, and the end of the buffered ones
    pub buffered_start: usize,
    pub buffered_end: usize,
}

/// A WRITE SECTORS (EXT) in progress.
#[derive(Clone, Copy, Debug, serde::Serialize, serde::Deserialize)]
pub(super) struct AtaWrite {
    /// first sector of the data gathered in `io`
    pub chunk_lba: u64,
    /// sectors gathered in `io` and not written yet
    pub gathered: u32,
    /// sectors the guest has still to send
    pub remaining: u32,
    /// the guest went past the end of the disk: write what was gathered, then abort
    pub abort_after_write: bool,
}

/// CD blocks still to fetch for an ATAPI read.
#[derive(Clone, Copy, Debug, serde::Serialize, serde::Deserialize)]
pub(super) struct CdFetch {
    pub next_block: u64,
    pub nr_blocks: u64,
    /// 2048 (user data) or 2352 (raw)
    pub block_len_bytes: usize,
}

/// An ATAPI data-in command in progress: reply bytes in `io[data_start..]` plus blocks
/// still to fetch.
#[derive(Clone, Copy, Debug, serde::Serialize, serde::Deserialize)]
pub(super) struct AtapiTransfer {
    /// bytes still to hand to the guest
    pub bytes_left: u64,
    /// first byte of `io` not handed out yet
    pub data_start: usize,
    pub fetch: Option<CdFetch>,
}

#[derive(Clone, Copy, Debug, serde::Serialize, serde::Deserialize)]
pub(super) enum Transfer {
    None,
    AtaRead(AtaRead),
    AtaWrite(AtaWrite),
    Atapi(AtapiTransfer),
    Dma(DmaCommand),
}

#[derive(serde::Serialize, serde::Deserialize)]
pub(super) struct Drive {
    pub id: DriveId,
    pub media: Media,
    pub tf: TaskFile,
    /// PIO and request data
    pub io: Vec<u8>,
    pio_pos: usize,
    pio_end: usize,
    /// the window is device-to-host
    pio_in: bool,
    pio_end_action: PioEnd,
    pub transfer: Transfer,
    pub pending: Option<Pending>,
}

impl Drive {
    pub fn new(id: DriveId, spec: Option<DriveSpec>) -> Self {
        let media = match spec {
            None => Media::Absent,
            Some(DriveSpec::HardDisk { nr_sectors, read_only }) => Media::Disk(Disk {
                nr_sectors,
                read_only,
                geometry: Geometry::for_size(nr_sectors),
                write_cache: true,
                dma_mode: DmaMode::None,
            }),
            Some(DriveSpec::CdRom { medium_nr_sectors }) => Media::Cd(CdRom::new(medium_nr_sectors)),
        };
        let mut drive = Drive {
            id,
            media,
            tf: TaskFile::default(),
            io: Vec::new(),
            pio_pos: 0,
            pio_end: 0,
            pio_in: true,
            pio_end_action: PioEnd::Stop,
            transfer: Transfer::None,
            pending: None,
        };
        drive.reset_registers();
        drive
    }

    pub fn is_present(&self) -> bool {
        !matches!(self.media, Media::Absent)
    }

    pub fn is_cd(&self) -> bool {
        matches!(self.media, Media::Cd(_))
    }

    pub fn unit(&self) -> usize {
        usize::from(self.id.unit & 1)
    }

    /// Index 0-3 of the position, for the serial number.
    pub fn position(&self) -> u8 {
        (self.id.channel & 1) * 2 + (self.id.unit & 1)
    }

    /// QEMU's `ide_reset` without the drive's medium state: registers to power-on values,
    /// no transfer, signature in place. The caller cancels the drive's request first.
    fn reset_registers(&mut self) {
        self.tf = TaskFile { select: select::ALWAYS_ON, status: status::DRDY | status::DSC, ..TaskFile::default() };
        self.transfer = Transfer::None;
        self.pending = None;
        self.io = Vec::new();
        self.transfer_stop();
        if let Media::Cd(cd) = &mut self.media {
            cd.reset_sense();
        }
        self.set_signature();
    }

    /// Cancels the request and resets the registers.
    fn reset(&mut self, bus: &mut Bus) {
        bus.cancel(self.unit());
        self.reset_registers();
    }

    /// The rising edge of SRST: reset, BSY until SRST falls.
    pub fn begin_soft_reset(&mut self, bus: &mut Bus) {
        self.reset(bus);
        self.tf.status = status::BSY;
    }

    /// DEVICE RESET (ATAPI): reset, status 0, no interrupt.
    pub fn device_reset(&mut self, bus: &mut Bus) {
        self.reset(bus);
        self.tf.status = 0;
    }

    /// A machine reset.
    pub fn machine_reset(&mut self, bus: &mut Bus) {
        self.reset(bus);
        if let Media::Disk(disk) = &mut self.media {
            disk.write_cache = true;
            disk.dma_mode = DmaMode::None;
        }
        let id = self.id;
        if let Media::Cd(cd) = &mut self.media {
            cd.machine_reset(id, bus);
        }
    }

    /// The reset signature: sector count 1, LBA low 1, LBA mid/high 0x14/0xeb for ATAPI,
    /// 0/0 for a disk, 0xff/0xff for no drive.
    pub fn set_signature(&mut self) {
        self.tf.select &= !select::HEAD;
        self.tf.nsector = 1;
        self.tf.sector = 1;
        (self.tf.lcyl, self.tf.hcyl) = match self.media {
            Media::Cd(_) => (0x14, 0xeb),
            Media::Disk(_) => (0, 0),
            Media::Absent => (0xff, 0xff),
        };
    }

    /// EXECUTE DEVICE DIAGNOSTIC, also the end of SRST: signature and error 1; a disk (or
    /// an absent master) shows 0x50 and interrupts, ATAPI shows 0x00 and does not.
    pub fn execute_diagnostic(&mut self, bus: &mut Bus) {
        self.set_signature();
        self.tf.error = 0x01;
        if self.is_cd() {
            self.tf.status = 0;
        } else {
            self.tf.status = status::DRDY | status::DSC;
            bus.raise_irq();
        }
    }

    /// Opens a PIO window over `io[start..start + len_bytes]`.
    pub fn transfer_start(&mut self, start: usize, len_bytes: usize, device_to_host: bool, end: PioEnd) {
        let end_pos = start.saturating_add(len_bytes).min(self.io.len());
        self.pio_pos = start.min(end_pos);
        self.pio_end = end_pos;
        self.pio_in = device_to_host;
        self.pio_end_action = end;
        if self.tf.status & status::ERR == 0 {
            self.tf.status |= status::DRQ;
        }
    }

    /// Closes the PIO window.
    pub fn transfer_stop(&mut self) {
        self.pio_end_action = PioEnd::Stop;
        self.pio_pos = 0;
        self.pio_end = 0;
        self.tf.status &= !status::DRQ;
    }

    /// Ends the command with ABRT (status 0x41, error 0x04), no interrupt.
    pub fn abort_command(&mut self) {
        self.transfer_stop();
        self.transfer = Transfer::None;
        self.tf.status = status::DRDY | status::ERR;
        self.tf.error = error::ABRT;
    }

    /// A read or write failed: ABRT and interrupt (QEMU's `ide_rw_error`).
    pub fn rw_error(&mut self, bus: &mut Bus) {
        self.abort_command();
        bus.raise_irq();
    }

    /// Leaves a request for the worker and shows BSY until it completes.
    pub fn submit(&mut self, bus: &mut Bus, pending: Pending, op: BlockOp) {
        self.tf.status |= status::BSY;
        self.pending = Some(pending);
        bus.submit(self.unit(), op);
    }

    /// A data-port read of `len_bytes` (2 or 4).
    pub fn read_data(&mut self, bus: &mut Bus, len_bytes: usize) -> u32 {
        if self.tf.status & status::DRQ == 0 || !self.pio_in {
            return 0;
        }
        let mut value = 0u32;
        for shift in (0..len_bytes.min(4)).map(|i| 8 * i) {
            if self.pio_pos < self.pio_end {
                value |= u32::from(self.io.get(self.pio_pos).copied().unwrap_or(0)) << shift;
                self.pio_pos += 1;
            }
        }
        if self.pio_pos >= self.pio_end {
            self.tf.status &= !status::DRQ;
            self.end_transfer(bus);
        }
        value
    }

    /// A data-port write of `len_bytes` (2 or 4).
    pub fn write_data(&mut self, bus: &mut Bus, len_bytes: usize, value: u32) {
        if self.tf.status & status::DRQ == 0 || self.pio_in {
            return;
        }
        for byte in value.to_le_bytes().into_iter().take(len_bytes.min(4)) {
            if self.pio_pos < self.pio_end {
                if let Some(slot) = self.io.get_mut(self.pio_pos) {
                    *slot = byte;
                }
                self.pio_pos += 1;
            }
        }
        if self.pio_pos >= self.pio_end {
            self.tf.status &= !status::DRQ;
            self.end_transfer(bus);
        }
    }

    fn end_transfer(&mut self, bus: &mut Bus) {
        match self.pio_end_action {
            PioEnd::Stop => self.transfer_stop(),
            PioEnd::AtaRead => self.ata_read_next(bus),
            PioEnd::AtaWrite => self.ata_write_block_done(bus),
            PioEnd::AtapiPacket => self.atapi_packet_received(bus),
            PioEnd::AtapiReply => self.atapi_reply_next(bus),
        }
    }

    /// The worker's outcome for this drive's request.
    pub fn complete(&mut self, bus: &mut Bus, outcome: BlockOutcome) {
        let Some(pending) = self.pending.take() else {
            return;
        };
        self.tf.status &= !status::BSY;
        match pending {
            Pending::AtaRead { nr_sectors } => match outcome {
                BlockOutcome::Read(data) if data.len() == nr_sectors as usize * 512 => self.ata_read_arrived(bus, data),
                _ => self.ata_read_failed(bus),
            },
            Pending::AtaWrite => match outcome {
                BlockOutcome::Written => self.ata_write_done(bus),
                _ => self.ata_write_failed(bus),
            },
            Pending::AtaWriteFlush => match outcome {
                BlockOutcome::Flushed => self.ata_write_chunk_on_disk(bus),
                _ => self.ata_write_failed(bus),
            },
            Pending::Flush => match outcome {
                BlockOutcome::Flushed => self.flush_done(bus),
                _ => self.rw_error(bus),
            },
            Pending::CdRead { nr_blocks } => match outcome {
                BlockOutcome::Read(data) if data.len() == nr_blocks as usize * 2048 => self.cd_read_arrived(bus, data),
                _ => self.cd_read_failed(bus),
            },
            Pending::Dma { longer_than_transfer } => match outcome {
                BlockOutcome::Transferred => self.dma_done(bus, longer_than_transfer),
                BlockOutcome::GuestMemoryFault => self.dma_error(bus, true),
                _ => self.dma_error(bus, false),
            },
        }
    }

    /// The bus master started this drive's DMA command with `table` (QEMU's
    /// `ide_dma_cb` on its first call).
    pub fn start_dma(&mut self, bus: &mut Bus, table: Result<ScatterList, PrdError>) {
        let Transfer::Dma(dma) = self.transfer else {
            return;
        };
        let list = match table {
            Ok(list) if list.len_bytes() == u64::from(dma.nr_sectors) * 512 => list,
            _ => {
                self.dma_error(bus, true);
                return;
            }
        };
        let pending = Pending::Dma { longer_than_transfer: list.longer_than_transfer };
        let op = if dma.to_memory {
            BlockOp::DmaRead { sector: dma.sector, nr_sectors: dma.nr_sectors, sg: list.entries }
        } else {
            let flush = matches!(&self.media, Media::Disk(disk) if !disk.write_cache);
            BlockOp::DmaWrite { sector: dma.sector, nr_sectors: dma.nr_sectors, sg: list.entries, flush }
        };
        self.submit(bus, pending, op);
    }

    /// Every sector moved: registers past the last one, status 0x50, ACTIVE cleared
    /// (unless the table was longer), an interrupt.
    fn dma_done(&mut self, bus: &mut Bus, longer_than_transfer: bool) {
        if let Transfer::Dma(dma) = self.transfer {
            self.set_sector(dma.sector + u64::from(dma.nr_sectors));
        }
        self.tf.nsector = 0;
        self.transfer = Transfer::None;
        self.transfer_stop();
        self.tf.status = status::DRDY | status::DSC;
        if !longer_than_transfer {
            bus.bm.status &= !bmdma::status::ACTIVE;
        }
        bus.raise_irq();
    }

    /// The DMA command fails: ABRT, ACTIVE cleared, the BMIDE ERROR bit when the bus
    /// master itself failed (its PRD table or guest memory), an interrupt.
    pub fn dma_error(&mut self, bus: &mut Bus, bus_master_error: bool) {
        self.abort_command();
        bus.bm.status &= !bmdma::status::ACTIVE;
        if bus_master_error {
            bus.bm.status |= bmdma::status::ERROR;
        }
        bus.raise_irq();
    }

    /// The sector number the registers address: LBA48, LBA28 or CHS (QEMU's
    /// `ide_get_sector`). None for a CHS address with sector 0.
    pub fn get_sector(&self) -> Option<u64> {
        let tf = &self.tf;
        if tf.select & select::LBA != 0 {
            if tf.lba48 {
                Some(
                    u64::from(tf.hob_hcyl) << 40
                        | u64::from(tf.hob_lcyl) << 32
                        | u64::from(tf.hob_sector) << 24
                        | u64::from(tf.hcyl) << 16
                        | u64::from(tf.lcyl) << 8
                        | u64::from(tf.sector),
                )
            } else {
                Some(
                    u64::from(tf.select & select::HEAD) << 24
                        | u64::from(tf.hcyl) << 16
                        | u64::from(tf.lcyl) << 8
                        | u64::from(tf.sector),
                )
            }
        } else {
            let geometry = self.geometry();
            let cylinder = u64::from(tf.hcyl) << 8 | u64::from(tf.lcyl);
            let heads = u64::from(geometry.heads);
            let sectors = u64::from(geometry.sectors_per_track);
            let sector_in_track = u64::from(tf.sector).checked_sub(1)?;
            Some(cylinder * heads * sectors + u64::from(tf.select & select::HEAD) * sectors + sector_in_track)
        }
    }

    /// Writes `sector` back into the address registers (QEMU's `ide_set_sector`).
    pub fn set_sector(&mut self, sector: u64) {
        let geometry = self.geometry();
        let tf = &mut self.tf;
        if tf.select & select::LBA != 0 {
            if tf.lba48 {
                tf.sector = sector as u8;
                tf.lcyl = (sector >> 8) as u8;
                tf.hcyl = (sector >> 16) as u8;
                tf.hob_sector = (sector >> 24) as u8;
                tf.hob_lcyl = (sector >> 32) as u8;
                tf.hob_hcyl = (sector >> 40) as u8;
            } else {
                tf.select = (tf.select & !select::HEAD) | ((sector >> 24) as u8 & select::HEAD);
                tf.hcyl = (sector >> 16) as u8;
                tf.lcyl = (sector >> 8) as u8;
                tf.sector = sector as u8;
            }
        } else {
            let per_cylinder = u64::from(geometry.heads) * u64::from(geometry.sectors_per_track);
            let sectors = u64::from(geometry.sectors_per_track);
            let cylinder = sector / per_cylinder;
            let rest = sector % per_cylinder;
            tf.hcyl = (cylinder >> 8) as u8;
            tf.lcyl = cylinder as u8;
            tf.select = (tf.select & !select::HEAD) | ((rest / sectors) as u8 & select::HEAD);
            tf.sector = (rest % sectors + 1) as u8;
        }
    }

    fn geometry(&self) -> Geometry {
        match &self.media {
            Media::Disk(disk) => disk.geometry,
            _ => Geometry::for_size(0),
        }
    }

    /// Puts a new buffer of `len_bytes` zeroes in `io`.
    pub fn fresh_io(&mut self, len_bytes: usize) {
        self.io = vec![0; len_bytes];
    }

    pub fn is_tray_locked(&self) -> bool {
        matches!(&self.media, Media::Cd(cd) if cd.tray_locked)
    }
}

/// Save/restore: what a saved drive must be to replace this one.
impl Drive {
    pub fn is_tray_open(&self) -> bool {
        matches!(&self.media, Media::Cd(cd) if cd.tray_open)
    }

    /// Checks a saved drive against this one (built from the restoring argv): the same
    /// position and kind of media (a disk of the same size), no disk request outstanding,
    /// and its PIO window and transfer inside its buffer. Then makes it fit this
    /// machine: the disk's geometry is this disk's (it follows from the size), and a CD
    /// whose medium differs from the one this machine has sees a medium change.
    pub(super) fn adopt_saved(&self, saved: &mut Drive) -> Result<Option<Option<u64>>, String> {
        if saved.id != self.id {
            return Err(alloc::format!("drive {:?} was saved as {:?}", self.id, saved.id));
        }
        let mut medium_change = None;
        match (&self.media, &mut saved.media) {
            (Media::Absent, Media::Absent) => {}
            (Media::Cd(now), Media::Cd(then)) => {
                if now.medium_nr_sectors != then.medium_nr_sectors {
                    medium_change = Some(now.medium_nr_sectors);
                }
            }
            (Media::Disk(now), Media::Disk(then)) if now.nr_sectors == then.nr_sectors => {
                then.read_only = now.read_only;
                then.geometry = now.geometry;
            }
            (now, then) => {
                return Err(alloc::format!(
                    "drive {:?} is {} here and was {} when saved",
                    self.id,
                    describe(now),
                    describe(then)
                ));
            }
        }
        if saved.pending.is_some() {
            return Err(alloc::format!("drive {:?} had a disk request outstanding", self.id));
        }
        if saved.pio_pos > saved.pio_end || saved.pio_end > saved.io.len() {
            return Err(alloc::format!("drive {:?}: its PIO window is outside its buffer", self.id));
        }
        let buffer_ok = match saved.transfer {
            Transfer::None => true,
            Transfer::AtaRead(read) => {
                read.buffered_start <= read.buffered_end
                    && read.buffered_end <= saved.io.len()
                    && read.buffered_start.is_multiple_of(512)
                    && read.buffered_end.is_multiple_of(512)
            }
            Transfer::AtaWrite(write) => write.gathered <= super::MAX_REQUEST_SECTORS,
            Transfer::Dma(dma) => dma.nr_sectors <= 65536,
            Transfer::Atapi(transfer) => {
                transfer.data_start <= saved.io.len()
                    && transfer.fetch.is_none_or(|fetch| {
                        matches!(fetch.block_len_bytes, 2048 | 2352) && fetch.nr_blocks <= u64::from(u32::MAX)
                    })
            }
        };
        if !buffer_ok {
            return Err(alloc::format!("drive {:?}: its transfer is outside its buffer", self.id));
        }
        Ok(medium_change)
    }
}

fn describe(media: &Media) -> String {
    match media {
        Media::Absent => String::from("absent"),
        Media::Disk(disk) => alloc::format!("a disk of {} sectors", disk.nr_sectors),
        Media::Cd(_) => String::from("a CD-ROM"),
    }
}
