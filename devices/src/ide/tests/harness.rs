//! A test bed: the controller, in-memory PV disks that serve its block requests, port
//! helpers with the access widths guests use, and a record of interrupt edges.

use alloc::collections::BTreeMap;
use alloc::vec;
use alloc::vec::Vec;

use xen_seams::hvm::GuestMemory;

use super::super::bmdma::{fetch_prd_table, parse_prd_table, scatter};
use super::super::{BlockOp, BlockOutcome, BlockRequest, DriveId, DriveSpec, IdeController, MAX_REQUEST_SECTORS};
use crate::vec_memory::VecGuestMemory;

/// Bytes of the bed's guest RAM (DMA targets and PRD tables).
pub const RAM_BYTES: usize = 4 << 20;

/// Register offsets in a command block.
pub const DATA: u16 = 0;
pub const ERROR: u16 = 1;
pub const FEATURE: u16 = 1;
pub const NSECT: u16 = 2;
pub const LBAL: u16 = 3;
pub const LBAM: u16 = 4;
pub const LBAH: u16 = 5;
pub const DEVICE: u16 = 6;
pub const STATUS: u16 = 7;
pub const COMMAND: u16 = 7;

/// Status bits.
pub const BSY: u8 = 0x80;
pub const DRDY: u8 = 0x40;
pub const DSC: u8 = 0x10;
pub const DRQ: u8 = 0x08;
pub const ERR: u8 = 0x01;

/// Device control bits.
pub const NIEN: u8 = 0x02;
pub const SRST: u8 = 0x04;
pub const HOB: u8 = 0x80;

/// The ports of one channel.
#[derive(Clone, Copy, Debug)]
pub struct Ports {
    pub channel: u8,
    pub command: u16,
    pub control: u16,
}

pub const PRIMARY: Ports = Ports { channel: 0, command: 0x1f0, control: 0x3f6 };
pub const SECONDARY: Ports = Ports { channel: 1, command: 0x170, control: 0x376 };

pub const HDA: DriveId = DriveId { channel: 0, unit: 0 };
pub const HDC: DriveId = DriveId { channel: 1, unit: 0 };

/// A request as the worker saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seen {
    Read { sector: u64, nr_sectors: u32 },
    Write { sector: u64, nr_sectors: u32 },
    Flush,
    DmaRead { sector: u64, nr_sectors: u32 },
    DmaWrite { sector: u64, nr_sectors: u32, flush: bool },
}

pub struct Bed {
    pub ide: IdeController,
    /// the PV disks' contents
    pub media: BTreeMap<DriveId, Vec<u8>>,
    /// every request taken, in order
    pub seen: Vec<(DriveId, Seen)>,
    /// fail the next request of this drive
    pub fail_next: Option<DriveId>,
    /// the guest's RAM, for DMA
    pub ram: VecGuestMemory,
    /// bus mastering on in the PCI command register (what the machine checks)
    pub bus_master: bool,
    level: [bool; 2],
    /// rising edges of each interrupt line
    pub edges: [u32; 2],
    consumed: [u32; 2],
}

impl Bed {
    pub fn new(drives: [[Option<DriveSpec>; 2]; 2], media: Vec<(DriveId, Vec<u8>)>) -> Self {
        Bed {
            ide: IdeController::new(drives),
            media: media.into_iter().collect(),
            seen: Vec::new(),
            fail_next: None,
            ram: VecGuestMemory::new(RAM_BYTES),
            bus_master: true,
            level: [false; 2],
            edges: [0; 2],
            consumed: [0; 2],
        }
    }

    /// hda: a disk with `disk`'s contents; hdc: a CD with `cd`'s (None: no medium).
    pub fn disk_and_cd(disk: Vec<u8>, cd: Option<Vec<u8>>) -> Self {
        let disk_spec = DriveSpec::HardDisk { nr_sectors: disk.len() as u64 / 512, read_only: false };
        let cd_spec = DriveSpec::CdRom { medium_nr_sectors: cd.as_ref().map(|cd| cd.len() as u64 / 512) };
        let mut media = vec![(HDA, disk)];
        if let Some(cd) = cd {
            media.push((HDC, cd));
        }
        Bed::new([[Some(disk_spec), None], [Some(cd_spec), None]], media)
    }

    pub fn sample_irq(&mut self) {
        for channel in 0..2 {
            let level = self.ide.irq_level(channel as u8);
            if level && !self.level[channel] {
                self.edges[channel] += 1;
            }
            self.level[channel] = level;
        }
    }

    pub fn level(&self, channel: u8) -> bool {
        self.ide.irq_level(channel)
    }

    pub fn inb(&mut self, port: u16) -> u8 {
        let value = self.ide.read(port, 1);
        assert!(value <= 0xff, "byte read of {port:#x} returned {value:#x}");
        self.sample_irq();
        value as u8
    }

    pub fn outb(&mut self, port: u16, value: u8) {
        self.ide.write(port, 1, u32::from(value));
        self.sample_irq();
        self.start_dma();
    }

    pub fn inw(&mut self, port: u16) -> u16 {
        let value = self.ide.read(port, 2);
        assert!(value <= 0xffff);
        self.sample_irq();
        value as u16
    }

    pub fn outw(&mut self, port: u16, value: u16) {
        self.ide.write(port, 2, u32::from(value));
        self.sample_irq();
    }

    pub fn inl(&mut self, port: u16) -> u32 {
        let value = self.ide.read(port, 4);
        self.sample_irq();
        value
    }

    pub fn outl(&mut self, port: u16, value: u32) {
        self.ide.write(port, 4, value);
        self.sample_irq();
    }

    /// `insw`: `nr_words` 16-bit reads.
    pub fn insw(&mut self, port: u16, nr_words: usize) -> Vec<u8> {
        (0..nr_words).flat_map(|_| self.inw(port).to_le_bytes()).collect()
    }

    /// `insl`: `nr_dwords` 32-bit reads.
    pub fn insl(&mut self, port: u16, nr_dwords: usize) -> Vec<u8> {
        (0..nr_dwords).flat_map(|_| self.inl(port).to_le_bytes()).collect()
    }

    pub fn outsw(&mut self, port: u16, data: &[u8]) {
        for pair in data.chunks(2) {
            let word = u16::from_le_bytes([pair[0], pair.get(1).copied().unwrap_or(0)]);
            self.outw(port, word);
        }
    }

    pub fn outsl(&mut self, port: u16, data: &[u8]) {
        for quad in data.chunks(4) {
            let mut bytes = [0u8; 4];
            bytes[..quad.len()].copy_from_slice(quad);
            self.outl(port, u32::from_le_bytes(bytes));
        }
    }

    /// Plays the machine after a port access: starts ready DMA transfers with their PRD
    /// tables from `ram` (what `Machine::start_ide_dma` does).
    pub fn start_dma(&mut self) {
        while let Some(start) = self.ide.take_dma_start() {
            let table = if self.bus_master {
                fetch_prd_table(&self.ram, start.prd_address).and_then(|table| parse_prd_table(&table, start.len_bytes))
            } else {
                Err(super::super::PrdError::BusMasterDisabled)
            };
            self.ide.start_dma(start, table);
        }
        self.sample_irq();
    }

    /// A byte write of BMIDE register `offset` (0..16), then what the machine does.
    pub fn bm_outb(&mut self, offset: u16, value: u8) {
        self.ide.bmdma_write(offset, 1, u32::from(value));
        self.start_dma();
    }

    pub fn bm_outl(&mut self, offset: u16, value: u32) {
        self.ide.bmdma_write(offset, 4, value);
        self.start_dma();
    }

    pub fn bm_inb(&mut self, offset: u16) -> u8 {
        self.ide.bmdma_read(offset, 1) as u8
    }

    /// Plays the worker for one request; false if there was none.
    pub fn service_one(&mut self) -> bool {
        let Some(BlockRequest { drive, op }) = self.ide.take_request() else {
            return false;
        };
        let outcome = self.perform(drive, op);
        self.ide.complete(drive, outcome);
        self.sample_irq();
        true
    }

    /// Serves requests until there are none.
    pub fn service_all(&mut self) {
        let mut served = 0;
        while self.service_one() {
            served += 1;
            assert!(served < 100_000, "requests never end");
        }
    }

    fn perform(&mut self, drive: DriveId, op: BlockOp) -> BlockOutcome {
        let seen = match &op {
            BlockOp::Read { sector, nr_sectors } => Seen::Read { sector: *sector, nr_sectors: *nr_sectors },
            BlockOp::Write { sector, data } => Seen::Write { sector: *sector, nr_sectors: (data.len() / 512) as u32 },
            BlockOp::Flush => Seen::Flush,
            BlockOp::DmaRead { sector, nr_sectors, .. } => Seen::DmaRead { sector: *sector, nr_sectors: *nr_sectors },
            BlockOp::DmaWrite { sector, nr_sectors, flush, .. } => {
                Seen::DmaWrite { sector: *sector, nr_sectors: *nr_sectors, flush: *flush }
            }
        };
        self.seen.push((drive, seen));
        if let Seen::Read { nr_sectors, .. } | Seen::Write { nr_sectors, .. } = seen {
            assert!((1..=MAX_REQUEST_SECTORS).contains(&nr_sectors), "request of {nr_sectors} sectors");
        }
        if self.fail_next == Some(drive) {
            self.fail_next = None;
            return BlockOutcome::Failed;
        }
        let Some(medium) = self.media.get_mut(&drive) else {
            return BlockOutcome::Failed;
        };
        match op {
            BlockOp::Read { sector, nr_sectors } => {
                let start = sector as usize * 512;
                let end = start + nr_sectors as usize * 512;
                match medium.get(start..end) {
                    Some(bytes) => BlockOutcome::Read(bytes.to_vec()),
                    None => BlockOutcome::Failed,
                }
            }
            BlockOp::Write { sector, data } => {
                assert_eq!(data.len() % 512, 0);
                let start = sector as usize * 512;
                match medium.get_mut(start..start + data.len()) {
                    Some(bytes) => {
                        bytes.copy_from_slice(&data);
                        BlockOutcome::Written
                    }
                    None => BlockOutcome::Failed,
                }
            }
            BlockOp::Flush => BlockOutcome::Flushed,
            BlockOp::DmaRead { sector, nr_sectors, sg } => {
                let start = sector as usize * 512;
                let Some(bytes) = medium.get(start..start + nr_sectors as usize * 512) else {
                    return BlockOutcome::Failed;
                };
                match scatter(&self.ram, &sg, 0, bytes) {
                    Ok(()) => BlockOutcome::Transferred,
                    Err(_) => BlockOutcome::GuestMemoryFault,
                }
            }
            BlockOp::DmaWrite { sector, nr_sectors, sg, .. } => {
                let mut data = vec![0u8; nr_sectors as usize * 512];
                if super::super::bmdma::gather(&self.ram, &sg, 0, &mut data).is_err() {
                    return BlockOutcome::GuestMemoryFault;
                }
                let start = sector as usize * 512;
                match medium.get_mut(start..start + data.len()) {
                    Some(bytes) => {
                        bytes.copy_from_slice(&data);
                        BlockOutcome::Transferred
                    }
                    None => BlockOutcome::Failed,
                }
            }
        }
    }

    /// Writes `data` into the bed's guest RAM.
    pub fn poke(&self, gpa: u64, data: &[u8]) {
        self.ram.write(gpa, data).expect("inside the bed's RAM");
    }

    /// Reads `len` bytes of the bed's guest RAM.
    pub fn peek(&self, gpa: u64, len: usize) -> Vec<u8> {
        let mut out = vec![0u8; len];
        self.ram.read(gpa, &mut out).expect("inside the bed's RAM");
        out
    }

    /// QMP changes the medium of `drive` (None: removes it).
    pub fn change_medium(&mut self, drive: DriveId, medium: Option<Vec<u8>>) {
        let nr_sectors = medium.as_ref().map(|medium| medium.len() as u64 / 512);
        match medium {
            Some(medium) => self.media.insert(drive, medium),
            None => self.media.remove(&drive),
        };
        self.ide.set_medium(drive, nr_sectors);
        self.sample_irq();
    }

    /// QMP asks to eject a locked tray.
    pub fn request_eject(&mut self, drive: DriveId) {
        self.ide.request_eject(drive);
        self.sample_irq();
    }

    /// Consumes one interrupt edge of `channel`, if any.
    pub fn take_irq(&mut self, channel: u8) -> bool {
        let channel = usize::from(channel);
        if self.edges[channel] > self.consumed[channel] {
            self.consumed[channel] += 1;
            true
        } else {
            false
        }
    }

    /// Waits for the next interrupt edge, playing the worker meanwhile.
    pub fn wait_irq(&mut self, channel: u8) {
        for _ in 0..100_000 {
            if self.take_irq(channel) {
                return;
            }
            assert!(self.service_one(), "channel {channel}: no interrupt comes and no request is outstanding");
        }
        panic!("channel {channel}: no interrupt");
    }

    /// Interrupt edges not consumed yet.
    pub fn unconsumed_irqs(&self, channel: u8) -> u32 {
        self.edges[usize::from(channel)] - self.consumed[usize::from(channel)]
    }

    /// Polls status (the way `await_not_bsy` does) until BSY is clear, playing the worker.
    pub fn poll_not_busy(&mut self, ports: Ports) -> u8 {
        for _ in 0..100_000 {
            let status = self.inb(ports.command + STATUS);
            if status & BSY == 0 {
                return status;
            }
            self.service_one();
        }
        panic!("BSY for ever");
    }
}

/// The byte a test disk holds at `offset`: sector number and offset mixed so that a
/// misplaced sector shows.
pub fn disk_byte(offset: usize) -> u8 {
    let sector = offset / 512;
    (sector.wrapping_mul(151) ^ (sector >> 8) ^ (offset % 512).wrapping_mul(7)) as u8
}

pub fn test_disk(nr_sectors: usize) -> Vec<u8> {
    (0..nr_sectors * 512).map(disk_byte).collect()
}

/// The LBA where the test ISO's boot catalog and boot image are.
pub const BOOT_CATALOG_LBA: u32 = 20;
pub const BOOT_IMAGE_LBA: u32 = 21;
/// Boot image length in 512-byte virtual sectors (40 CD blocks).
pub const BOOT_IMAGE_VIRTUAL_SECTORS: u16 = 160;

/// Bytes of CD block `lba` outside the El Torito structures: the LBA, then a pattern.
pub fn cd_block(lba: u32) -> Vec<u8> {
    let mut block: Vec<u8> = (0..2048u32).map(|i| (i.wrapping_mul(13) ^ lba.wrapping_mul(101)) as u8).collect();
    block[..4].copy_from_slice(&lba.to_le_bytes());
    block
}

/// A CD medium of `nr_blocks` [`cd_block`]s plus `tail_bytes` (a partial block that
/// cannot be read).
pub fn plain_cd(nr_blocks: u32, tail_bytes: usize) -> Vec<u8> {
    let mut image: Vec<u8> = (0..nr_blocks).flat_map(cd_block).collect();
    image.extend(core::iter::repeat_n(0xee, tail_bytes));
    image
}

/// An ISO-like medium (at least 62 blocks) with an El Torito boot record at LBA 0x11, its
/// catalog and a 40-block no-emulation boot image.
pub fn test_iso(nr_blocks: u32, tail_bytes: usize) -> Vec<u8> {
    assert!(nr_blocks >= BOOT_IMAGE_LBA + 40);
    let mut image = plain_cd(nr_blocks, tail_bytes);
    // boot record volume descriptor
    let brvd = &mut image[0x11 * 2048..0x12 * 2048];
    brvd.fill(0);
    brvd[1..6].copy_from_slice(b"CD001");
    brvd[6] = 1;
    brvd[7..7 + 23].copy_from_slice(b"EL TORITO SPECIFICATION");
    brvd[0x47..0x4b].copy_from_slice(&BOOT_CATALOG_LBA.to_le_bytes());
    // boot catalog: validation entry and initial/default entry
    let catalog = &mut image[BOOT_CATALOG_LBA as usize * 2048..(BOOT_CATALOG_LBA as usize + 1) * 2048];
    catalog.fill(0);
    catalog[0] = 0x01;
    catalog[0x1e] = 0x55;
    catalog[0x1f] = 0xaa;
    catalog[0x20] = 0x88; // bootable
    catalog[0x21] = 0x00; // no emulation
    catalog[0x26..0x28].copy_from_slice(&BOOT_IMAGE_VIRTUAL_SECTORS.to_le_bytes());
    catalog[0x28..0x2c].copy_from_slice(&BOOT_IMAGE_LBA.to_le_bytes());
    image
}
