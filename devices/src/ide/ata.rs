//! The ATA command set: which commands a drive accepts and what each does.
//!
//! The table and the handlers follow QEMU's `ide_cmd_table`: a command the drive kind does
//! not accept ends with ABRT and an interrupt; one that completes at once ends with DRDY
//! (plus DSC for the commands QEMU marks `SET_DSC`) and an interrupt. Differences from
//! QEMU: DATA SET MANAGEMENT, SMART and READ/WRITE MULTIPLE are aborted, and SET
//! MULTIPLE MODE accepts only 0 (no multiple-sector mode).
//!
//! READ/WRITE DMA (EXT) check their range at once (QEMU checks when the transfer
//! starts), then wait with DRDY|DSC|DRQ for the bus master ([`super::bmdma`]); the whole
//! transfer is one DMA block request that the worker moves between the PV disk and
//! guest memory, after which status is 0x50 and the drive interrupts.
//!
//! PIO data-in (READ SECTORS): DRQ and an interrupt before each sector, none after the
//! last; sectors come from requests of up to [`MAX_REQUEST_SECTORS`] made as the guest
//! drains them. PIO data-out (WRITE SECTORS): DRQ without an interrupt for the first
//! sector, DRQ and an interrupt for each next one, and after the last, status 0x50 and an
//! interrupt once it is on the disk. Written sectors are gathered and written in requests
//! of up to [`MAX_REQUEST_SECTORS`]; when the write cache is off (SET FEATURES 0x82) each
//! write is followed by a flush. An address past the end of the disk aborts when the
//! transfer reaches it, after the sectors before it (QEMU checks sector by sector).

use alloc::vec::Vec;
use core::mem;

use super::channel::Bus;
use super::drive::{AtaRead, AtaWrite, DmaCommand, DmaMode, Drive, Media, Pending, PioEnd, Transfer, status};
use super::identify::{ata_identify, atapi_identify, serial_number};
use super::{BlockOp, MAX_REQUEST_SECTORS};

/// ATA command opcodes this module knows.
pub(super) mod opcode {
    pub const DEVICE_RESET: u8 = 0x08;
    pub const RECALIBRATE: u8 = 0x10;
    pub const READ_SECTORS: u8 = 0x20;
    pub const READ_SECTORS_NO_RETRY: u8 = 0x21;
    pub const READ_SECTORS_EXT: u8 = 0x24;
    pub const READ_DMA_EXT: u8 = 0x25;
    pub const READ_NATIVE_MAX_EXT: u8 = 0x27;
    pub const WRITE_SECTORS: u8 = 0x30;
    pub const WRITE_SECTORS_NO_RETRY: u8 = 0x31;
    pub const WRITE_SECTORS_EXT: u8 = 0x34;
    pub const WRITE_DMA_EXT: u8 = 0x35;
    pub const WRITE_VERIFY: u8 = 0x3c;
    pub const VERIFY: u8 = 0x40;
    pub const VERIFY_NO_RETRY: u8 = 0x41;
    pub const VERIFY_EXT: u8 = 0x42;
    pub const SEEK: u8 = 0x70;
    pub const EXECUTE_DEVICE_DIAGNOSTIC: u8 = 0x90;
    pub const INITIALIZE_DEVICE_PARAMETERS: u8 = 0x91;
    pub const STANDBY_IMMEDIATE_OLD: u8 = 0x94;
    pub const IDLE_IMMEDIATE_OLD: u8 = 0x95;
    pub const STANDBY_OLD: u8 = 0x96;
    pub const IDLE_OLD: u8 = 0x97;
    pub const CHECK_POWER_MODE_OLD: u8 = 0x98;
    pub const SLEEP_OLD: u8 = 0x99;
    pub const PACKET: u8 = 0xa0;
    pub const IDENTIFY_PACKET_DEVICE: u8 = 0xa1;
    pub const SET_MULTIPLE_MODE: u8 = 0xc6;
    pub const READ_DMA: u8 = 0xc8;
    pub const READ_DMA_NO_RETRY: u8 = 0xc9;
    pub const WRITE_DMA: u8 = 0xca;
    pub const WRITE_DMA_NO_RETRY: u8 = 0xcb;
    pub const STANDBY_IMMEDIATE: u8 = 0xe0;
    pub const IDLE_IMMEDIATE: u8 = 0xe1;
    pub const STANDBY: u8 = 0xe2;
    pub const IDLE: u8 = 0xe3;
    pub const CHECK_POWER_MODE: u8 = 0xe5;
    pub const SLEEP: u8 = 0xe6;
    pub const FLUSH_CACHE: u8 = 0xe7;
    pub const FLUSH_CACHE_EXT: u8 = 0xea;
    pub const IDENTIFY_DEVICE: u8 = 0xec;
    pub const SET_FEATURES: u8 = 0xef;
    pub const READ_NATIVE_MAX: u8 = 0xf8;
}

/// Which drives accept a command and how it completes.
#[derive(Clone, Copy)]
struct CommandFlags {
    disk: bool,
    cd: bool,
    /// set DSC when the command completes without error
    set_dsc: bool,
}

const DISK: CommandFlags = CommandFlags { disk: true, cd: false, set_dsc: false };
const DISK_DSC: CommandFlags = CommandFlags { disk: true, cd: false, set_dsc: true };
const CD: CommandFlags = CommandFlags { disk: false, cd: true, set_dsc: false };
const ALL: CommandFlags = CommandFlags { disk: true, cd: true, set_dsc: false };
const ALL_DSC: CommandFlags = CommandFlags { disk: true, cd: true, set_dsc: true };

fn command_flags(command: u8) -> Option<CommandFlags> {
    use opcode::*;
    Some(match command {
        DEVICE_RESET | PACKET | IDENTIFY_PACKET_DEVICE => CD,
        READ_SECTORS | FLUSH_CACHE | IDENTIFY_DEVICE | EXECUTE_DEVICE_DIAGNOSTIC => ALL,
        SET_FEATURES => ALL_DSC,
        READ_SECTORS_NO_RETRY
        | READ_SECTORS_EXT
        | WRITE_SECTORS
        | WRITE_SECTORS_NO_RETRY
        | WRITE_SECTORS_EXT
        | WRITE_VERIFY
        | STANDBY_IMMEDIATE_OLD
        | IDLE_IMMEDIATE_OLD
        | STANDBY_OLD
        | IDLE_OLD
        | SLEEP_OLD
        | STANDBY_IMMEDIATE
        | IDLE_IMMEDIATE
        | STANDBY
        | IDLE
        | SLEEP
        | FLUSH_CACHE_EXT
        | READ_DMA
        | READ_DMA_NO_RETRY
        | READ_DMA_EXT
        | WRITE_DMA
        | WRITE_DMA_NO_RETRY
        | WRITE_DMA_EXT => DISK,
        RECALIBRATE
        | READ_NATIVE_MAX_EXT
        | READ_NATIVE_MAX
        | VERIFY
        | VERIFY_NO_RETRY
        | VERIFY_EXT
        | SEEK
        | INITIALIZE_DEVICE_PARAMETERS
        | CHECK_POWER_MODE_OLD
        | CHECK_POWER_MODE
        | SET_MULTIPLE_MODE => DISK_DSC,
        _ => return None,
    })
}

impl Drive {
    /// A write to the command register of this (selected, present or master) drive.
    pub fn exec_command(&mut self, bus: &mut Bus, command: u8) {
        // Only DEVICE RESET to an ATAPI drive is taken while BSY or DRQ.
        if self.tf.status & (status::BSY | status::DRQ) != 0 && !(command == opcode::DEVICE_RESET && self.is_cd()) {
            log::trace!("ide {:?}: command {command:#04x} while busy ignored", self.id);
            return;
        }
        log::trace!("ide {:?}: command {command:#04x}", self.id);
        let accepted = command_flags(command).filter(|flags| if self.is_cd() { flags.cd } else { flags.disk });
        let Some(flags) = accepted else {
            self.abort_command();
            bus.raise_irq();
            return;
        };
        self.tf.status = status::DRDY | status::BSY;
        self.tf.error = 0;
        if self.run_command(bus, command) {
            self.tf.status &= !status::BSY;
            if flags.set_dsc && self.tf.error == 0 {
                self.tf.status |= status::DSC;
            }
            bus.raise_irq();
        }
    }

    /// Runs an accepted command; true if it is complete (the caller then interrupts).
    fn run_command(&mut self, bus: &mut Bus, command: u8) -> bool {
        use opcode::*;
        match command {
            DEVICE_RESET => {
                self.device_reset(bus);
                false
            }
            READ_SECTORS | READ_SECTORS_NO_RETRY => self.cmd_read_sectors(bus, false),
            READ_SECTORS_EXT => self.cmd_read_sectors(bus, true),
            WRITE_SECTORS | WRITE_SECTORS_NO_RETRY | WRITE_VERIFY => self.cmd_write_sectors(false),
            WRITE_SECTORS_EXT => self.cmd_write_sectors(true),
            READ_DMA | READ_DMA_NO_RETRY => self.cmd_dma(bus, false, true),
            READ_DMA_EXT => self.cmd_dma(bus, true, true),
            WRITE_DMA | WRITE_DMA_NO_RETRY => self.cmd_dma(bus, false, false),
            WRITE_DMA_EXT => self.cmd_dma(bus, true, false),
            VERIFY | VERIFY_NO_RETRY => {
                self.lba48_transform(false);
                true
            }
            VERIFY_EXT => {
                self.lba48_transform(true);
                true
            }
            READ_NATIVE_MAX | READ_NATIVE_MAX_EXT => {
                match &self.media {
                    Media::Disk(disk) if disk.nr_sectors > 0 => {
                        let last = disk.nr_sectors - 1;
                        self.lba48_transform(command == READ_NATIVE_MAX_EXT);
                        self.set_sector(last);
                    }
                    _ => self.abort_command(),
                }
                true
            }
            CHECK_POWER_MODE | CHECK_POWER_MODE_OLD => {
                self.tf.nsector = 0xff; // active or idle
                true
            }
            SET_MULTIPLE_MODE => {
                // Word 47 advertises no multiple-sector transfers: only "off" is valid.
                if self.tf.nsector & 0xff != 0 {
                    self.abort_command();
                }
                true
            }
            EXECUTE_DEVICE_DIAGNOSTIC => {
                self.execute_diagnostic(bus);
                false
            }
            FLUSH_CACHE | FLUSH_CACHE_EXT => self.cmd_flush_cache(bus),
            IDENTIFY_DEVICE => self.cmd_identify(bus),
            IDENTIFY_PACKET_DEVICE => {
                self.io = atapi_identify(&serial_number(self.position())).to_vec();
                self.tf.status = status::DRDY | status::DSC;
                self.transfer_start(0, 512, true, PioEnd::Stop);
                bus.raise_irq();
                false
            }
            SET_FEATURES => self.cmd_set_features(bus),
            PACKET => self.cmd_packet(),
            // RECALIBRATE, SEEK, INITIALIZE DEVICE PARAMETERS, standby/idle/sleep: nothing to do
            _ => true,
        }
    }

    /// Full sector count of an LBA28 (0 = 256) or LBA48 (0 = 65536) command.
    fn lba48_transform(&mut self, lba48: bool) {
        let tf = &mut self.tf;
        tf.lba48 = lba48;
        let low = tf.nsector & 0xff;
        tf.nsector = if lba48 {
            match (u32::from(tf.hob_nsector) << 8) | low {
                0 => 65536,
                count => count,
            }
        } else if low == 0 {
            256
        } else {
            low
        };
    }

    fn cmd_identify(&mut self, bus: &mut Bus) -> bool {
        match &self.media {
            Media::Disk(disk) => {
                let data = ata_identify(
                    disk.nr_sectors,
                    disk.geometry,
                    &serial_number(self.position()),
                    disk.write_cache,
                    disk.dma_mode,
                );
                self.io = data.to_vec();
                self.tf.status = status::DRDY | status::DSC;
                self.transfer_start(0, 512, true, PioEnd::Stop);
                bus.raise_irq();
                false
            }
            Media::Cd(_) => {
                // ATAPI answers IDENTIFY DEVICE with its signature and an abort
                self.set_signature();
                self.abort_command();
                true
            }
            Media::Absent => {
                self.abort_command();
                true
            }
        }
    }

    fn cmd_set_features(&mut self, bus: &mut Bus) -> bool {
        if !self.is_present() {
            self.abort_command();
            return true;
        }
        match self.tf.feature {
            0x02 => {
                self.set_write_cache(true);
                true
            }
            0x82 => {
                self.set_write_cache(false);
                self.cmd_flush_cache(bus)
            }
            // look-ahead, reverting to defaults, APM, acoustic management, vendor NOPs
            0xcc | 0x66 | 0xaa | 0x55 | 0x05 | 0x85 | 0x69 | 0x67 | 0x96 | 0x9a | 0x42 | 0xc2 => true,
            // set transfer mode (QEMU): PIO default or PIO n selects no DMA mode; single
            // word, multiword or Ultra DMA n is what IDENTIFY then shows as selected
            0x03 if matches!(self.tf.nsector >> 3, 0 | 1 | 2 | 4 | 8) => {
                let mode = (self.tf.nsector & 0x07) as u8;
                let dma_mode = match self.tf.nsector >> 3 {
                    2 => DmaMode::SingleWord(mode),
                    4 => DmaMode::Multiword(mode),
                    8 => DmaMode::Ultra(mode),
                    _ => DmaMode::None,
                };
                if let Media::Disk(disk) = &mut self.media {
                    disk.dma_mode = dma_mode;
                }
                true
            }
            _ => {
                self.abort_command();
                true
            }
        }
    }

    fn set_write_cache(&mut self, enabled: bool) {
        if let Media::Disk(disk) = &mut self.media {
            disk.write_cache = enabled;
        }
    }

    /// FLUSH CACHE (EXT): a flush request for a disk; done at once for anything else.
    fn cmd_flush_cache(&mut self, bus: &mut Bus) -> bool {
        if matches!(self.media, Media::Disk(_)) {
            self.submit(bus, Pending::Flush, BlockOp::Flush);
        } else {
            self.flush_done(bus);
        }
        false
    }

    pub fn flush_done(&mut self, bus: &mut Bus) {
        self.tf.status = status::DRDY | status::DSC;
        bus.raise_irq();
    }

    /// READ/WRITE DMA (EXT): checks the range, then shows DRDY|DSC|DRQ (QEMU) and waits
    /// for the bus master's start bit (the channel hands out a [`DmaStart`](super::DmaStart)).
    /// A range past the end of the disk, or a write to a read-only one, aborts at once.
    fn cmd_dma(&mut self, bus: &mut Bus, lba48: bool, to_memory: bool) -> bool {
        let (nr_sectors, read_only) = match &self.media {
            Media::Disk(disk) => (disk.nr_sectors, disk.read_only),
            _ => {
                self.abort_command();
                return true;
            }
        };
        self.lba48_transform(lba48);
        let count = self.tf.nsector;
        let in_range = self.get_sector().filter(|&sector| sector.saturating_add(u64::from(count)) <= nr_sectors);
        let Some(sector) = in_range.filter(|_| to_memory || !read_only) else {
            log::trace!("ide {:?}: DMA of {count} sector(s) refused (read-only {read_only})", self.id);
            self.abort_command();
            return true;
        };
        self.transfer = Transfer::Dma(DmaCommand { to_memory, sector, nr_sectors: count });
        self.tf.status = status::DRDY | status::DSC | status::DRQ;
        bus.dma_waiting = Some((self.unit(), u64::from(count) * 512));
        false
    }

    fn cmd_read_sectors(&mut self, bus: &mut Bus, lba48: bool) -> bool {
        if self.is_cd() {
            // ATA-4 8.27.5.2: an ATAPI device puts its signature up and aborts
            self.set_signature();
            self.abort_command();
            return true;
        }
        if !self.is_present() {
            self.abort_command();
            return true;
        }
        self.lba48_transform(lba48);
        let Some(next_lba) = self.get_sector() else {
            self.abort_command();
            return true;
        };
        self.transfer =
            Transfer::AtaRead(AtaRead { next_lba, remaining: self.tf.nsector, buffered_start: 0, buffered_end: 0 });
        self.io = Vec::new();
        self.ata_read_next(bus);
        false
    }

    /// Gives the guest the next sector, fetches more, or ends the read (QEMU's
    /// `ide_sector_read`): at the start of the command and each time the guest has
    /// drained a sector.
    pub fn ata_read_next(&mut self, bus: &mut Bus) {
        self.tf.status = status::DRDY | status::DSC;
        self.tf.error = 0;
        let Transfer::AtaRead(read) = self.transfer else {
            self.transfer_stop();
            return;
        };
        if read.remaining == 0 {
            self.transfer = Transfer::None;
            self.transfer_stop();
            return;
        }
        if read.buffered_start < read.buffered_end {
            self.ata_read_present(bus, read);
            return;
        }
        let nr_sectors = match &self.media {
            Media::Disk(disk) => disk.nr_sectors,
            _ => 0,
        };
        if read.next_lba >= nr_sectors {
            log::trace!("ide {:?}: read of sector {} past the end", self.id, read.next_lba);
            self.rw_error(bus);
            return;
        }
        let chunk = u64::from(read.remaining.min(MAX_REQUEST_SECTORS)).min(nr_sectors - read.next_lba) as u32;
        self.submit(
            bus,
            Pending::AtaRead { nr_sectors: chunk },
            BlockOp::Read { sector: read.next_lba, nr_sectors: chunk },
        );
    }

    pub fn ata_read_arrived(&mut self, bus: &mut Bus, data: Vec<u8>) {
        let Transfer::AtaRead(mut read) = self.transfer else {
            return;
        };
        read.buffered_start = 0;
        read.buffered_end = data.len();
        self.io = data;
        self.ata_read_present(bus, read);
    }

    pub fn ata_read_failed(&mut self, bus: &mut Bus) {
        self.rw_error(bus);
    }

    /// Opens the window on the next buffered sector, registers already past it.
    fn ata_read_present(&mut self, bus: &mut Bus, mut read: AtaRead) {
        let start = read.buffered_start;
        read.buffered_start += 512;
        read.next_lba += 1;
        read.remaining -= 1;
        self.transfer = Transfer::AtaRead(read);
        self.set_sector(read.next_lba);
        self.tf.nsector = read.remaining;
        self.tf.status = status::DRDY | status::DSC;
        self.transfer_start(start, 512, true, PioEnd::AtaRead);
        bus.raise_irq();
    }

    fn cmd_write_sectors(&mut self, lba48: bool) -> bool {
        if !matches!(self.media, Media::Disk(_)) {
            self.abort_command();
            return true;
        }
        self.lba48_transform(lba48);
        let Some(chunk_lba) = self.get_sector() else {
            self.abort_command();
            return true;
        };
        self.transfer = Transfer::AtaWrite(AtaWrite {
            chunk_lba,
            gathered: 0,
            remaining: self.tf.nsector,
            abort_after_write: false,
        });
        self.tf.status = status::DRDY | status::DSC;
        self.fresh_io(512);
        self.transfer_start(0, 512, false, PioEnd::AtaWrite);
        false
    }

    /// The guest has filled a sector of a write.
    pub fn ata_write_block_done(&mut self, bus: &mut Bus) {
        let Transfer::AtaWrite(mut write) = self.transfer else {
            self.transfer_stop();
            return;
        };
        self.tf.status = status::DRDY | status::DSC | status::BSY;
        let (nr_sectors, read_only) = match &self.media {
            Media::Disk(disk) => (disk.nr_sectors, disk.read_only),
            _ => (0, true),
        };
        let sector = write.chunk_lba + u64::from(write.gathered);
        if read_only || sector >= nr_sectors {
            log::trace!("ide {:?}: write of sector {sector} refused (read-only {read_only})", self.id);
            if write.gathered > 0 {
                write.abort_after_write = true;
                self.ata_write_chunk(bus, write);
            } else {
                self.set_sector(sector);
                self.tf.nsector = write.remaining;
                self.rw_error(bus);
            }
            return;
        }
        write.gathered += 1;
        write.remaining -= 1;
        if write.remaining == 0 || write.gathered == MAX_REQUEST_SECTORS {
            self.ata_write_chunk(bus, write);
            return;
        }
        // as if this sector were written: registers advance, DRQ for the next, interrupt
        self.transfer = Transfer::AtaWrite(write);
        self.set_sector(sector + 1);
        self.tf.nsector = write.remaining;
        self.tf.status = status::DRDY | status::DSC;
        let start = write.gathered as usize * 512;
        self.io.resize(start + 512, 0);
        self.transfer_start(start, 512, false, PioEnd::AtaWrite);
        bus.raise_irq();
    }

    /// Writes the gathered sectors.
    fn ata_write_chunk(&mut self, bus: &mut Bus, write: AtaWrite) {
        self.transfer = Transfer::AtaWrite(write);
        let mut data = mem::take(&mut self.io);
        data.truncate(write.gathered as usize * 512);
        self.submit(bus, Pending::AtaWrite, BlockOp::Write { sector: write.chunk_lba, data });
    }

    pub fn ata_write_done(&mut self, bus: &mut Bus) {
        let write_cache = matches!(&self.media, Media::Disk(disk) if disk.write_cache);
        if write_cache {
            self.ata_write_chunk_on_disk(bus);
        } else {
            self.submit(bus, Pending::AtaWriteFlush, BlockOp::Flush);
        }
    }

    /// The gathered sectors are written: go on with the next ones, or end the command.
    pub fn ata_write_chunk_on_disk(&mut self, bus: &mut Bus) {
        let Transfer::AtaWrite(mut write) = self.transfer else {
            return;
        };
        self.tf.status = status::DRDY | status::DSC;
        let next = write.chunk_lba + u64::from(write.gathered);
        self.set_sector(next);
        self.tf.nsector = write.remaining;
        if write.abort_after_write {
            self.rw_error(bus);
            return;
        }
        if write.remaining == 0 {
            self.transfer = Transfer::None;
            self.transfer_stop();
            bus.raise_irq();
            return;
        }
        write.chunk_lba = next;
        write.gathered = 0;
        self.transfer = Transfer::AtaWrite(write);
        self.fresh_io(512);
        self.transfer_start(0, 512, false, PioEnd::AtaWrite);
        bus.raise_irq();
    }

    /// The PV disk failed the write: ABRT, registers at the first sector not known written.
    pub fn ata_write_failed(&mut self, bus: &mut Bus) {
        if let Transfer::AtaWrite(write) = self.transfer {
            self.set_sector(write.chunk_lba);
            self.tf.nsector = write.remaining + write.gathered;
        }
        self.rw_error(bus);
    }
}
