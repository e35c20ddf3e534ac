//! SeaBIOS as it finds the drives (src/hw/ata.c `ata_detect`), reads the disk and boots the
//! CD (src/cdrom.c `cdrom_boot`, src/hw/blockcmd.c): every command polled with nIEN set,
//! data moved with 32-bit `insl`/`outsl` (Xen's SeaBIOS has CONFIG_ATA_PIO32=y), PACKET
//! with a byte count limit of one block. Error codes are SeaBIOS's.

use alloc::vec;
use alloc::vec::Vec;

use super::harness::*;
use crate::ide::DriveSpec;

const DC_HD15: u8 = 0x08;
const DH_DEV0: u8 = 0xa0;
const DH_DEV1: u8 = 0xb0;
const DH_LBA: u8 = 0x40;

const CMD_READ_SECTORS: u8 = 0x20;
const CMD_READ_SECTORS_EXT: u8 = 0x24;
const CMD_WRITE_SECTORS: u8 = 0x30;
const CMD_WRITE_SECTORS_EXT: u8 = 0x34;
const CMD_PACKET: u8 = 0xa0;
const CMD_IDENTIFY_PACKET_DEVICE: u8 = 0xa1;
const CMD_IDENTIFY_DEVICE: u8 = 0xec;

/// SeaBIOS's `struct ata_pio_command`.
#[derive(Default, Clone, Copy)]
struct PioCommand {
    feature: u8,
    sector_count: u8,
    lba_low: u8,
    lba_mid: u8,
    lba_high: u8,
    device: u8,
    command: u8,
    sector_count2: u8,
    lba_low2: u8,
    lba_mid2: u8,
    lba_high2: u8,
}

#[derive(Debug, PartialEq, Eq)]
enum Found {
    Ata { slave: bool, nr_sectors: u64, model: Vec<u8> },
    Atapi { slave: bool, is_cd: bool, model: Vec<u8> },
}

struct SeaBios<'a> {
    bed: &'a mut Bed,
    ports: Ports,
}

impl SeaBios<'_> {
    fn reg(&self, offset: u16) -> u16 {
        self.ports.command + offset
    }

    /// `await_ide`: poll status; time passes (the worker runs) between polls.
    fn await_ide(&mut self, mask: u8, flags: u8) -> Result<u8, i32> {
        let mut idle_polls = 0;
        for _ in 0..100_000 {
            let status = self.bed.inb(self.reg(STATUS));
            if status & mask == flags {
                return Ok(status);
            }
            if !self.bed.service_one() {
                idle_polls += 1;
                if idle_polls > 100 {
                    break;
                }
            }
        }
        Err(-1) // "timeout"
    }

    fn await_not_bsy(&mut self) -> Result<u8, i32> {
        self.await_ide(BSY, 0)
    }

    fn await_rdy(&mut self) -> Result<u8, i32> {
        self.await_ide(DRDY, DRDY)
    }

    /// `pause_await_not_bsy`: one alternate-status read, then wait.
    fn pause_await_not_bsy(&mut self) -> Result<u8, i32> {
        self.bed.inb(self.ports.control);
        self.await_not_bsy()
    }

    fn ata_reset(&mut self, slave: bool) {
        let control = self.ports.control;
        self.bed.outb(control, DC_HD15 | NIEN | SRST);
        self.bed.outb(control, DC_HD15 | NIEN);
        if self.await_not_bsy().is_ok() {
            if slave {
                for _ in 0..100 {
                    self.bed.outb(self.reg(DEVICE), DH_DEV1);
                    if self.await_not_bsy().is_err() {
                        break;
                    }
                    if self.bed.inb(self.reg(DEVICE)) == DH_DEV1 {
                        break;
                    }
                }
            } else {
                // "QEMU doesn't reset dh on reset, so set it explicitly."
                self.bed.outb(self.reg(DEVICE), DH_DEV0);
            }
        }
        self.bed.outb(control, DC_HD15);
    }

    fn send_cmd(&mut self, slave: bool, cmd: &PioCommand) -> Result<(), i32> {
        self.await_not_bsy()?;
        let new_dh = (cmd.device & !DH_DEV1) | if slave { DH_DEV1 } else { DH_DEV0 };
        let old_dh = self.bed.inb(self.reg(DEVICE));
        self.bed.outb(self.reg(DEVICE), new_dh);
        if (old_dh ^ new_dh) & 0x10 != 0 {
            self.await_not_bsy()?;
        }
        if cmd.command & !0x11 == CMD_READ_SECTORS_EXT {
            self.bed.outb(self.reg(FEATURE), 0);
            self.bed.outb(self.reg(NSECT), cmd.sector_count2);
            self.bed.outb(self.reg(LBAL), cmd.lba_low2);
            self.bed.outb(self.reg(LBAM), cmd.lba_mid2);
            self.bed.outb(self.reg(LBAH), cmd.lba_high2);
        }
        self.bed.outb(self.reg(FEATURE), cmd.feature);
        self.bed.outb(self.reg(NSECT), cmd.sector_count);
        self.bed.outb(self.reg(LBAL), cmd.lba_low);
        self.bed.outb(self.reg(LBAM), cmd.lba_mid);
        self.bed.outb(self.reg(LBAH), cmd.lba_high);
        self.bed.outb(self.reg(COMMAND), cmd.command);
        Ok(())
    }

    fn ata_wait_data(&mut self) -> Result<(), i32> {
        let status = self.await_not_bsy()?;
        if status & ERR != 0 {
            return Err(-4);
        }
        if status & DRQ == 0 {
            return Err(-5);
        }
        Ok(())
    }

    /// `ata_pio_transfer`: `count` blocks of `block_len` bytes.
    fn ata_pio_transfer(&mut self, count: usize, block_len: usize, write: Option<&[u8]>) -> Result<Vec<u8>, i32> {
        let mut data = Vec::new();
        let mut status;
        let mut left = count;
        let mut block = 0;
        loop {
            match write {
                Some(source) => {
                    let chunk = source[block * block_len..(block + 1) * block_len].to_vec();
                    self.bed.outsl(self.reg(DATA), &chunk[..block_len / 4 * 4]);
                }
                None => data.extend(self.bed.insl(self.reg(DATA), block_len / 4)),
            }
            block += 1;
            status = self.pause_await_not_bsy()?;
            left -= 1;
            if left == 0 {
                break;
            }
            if status & (BSY | DRQ | ERR) != DRQ {
                return Err(-6);
            }
        }
        let mut status = status & (BSY | 0x20 | DRQ | ERR);
        if write.is_none() {
            status &= !0x20;
        }
        if status != 0 {
            return Err(-7);
        }
        Ok(data)
    }

    fn ata_pio_cmd_data(
        &mut self,
        slave: bool,
        cmd: &PioCommand,
        count: usize,
        write: Option<&[u8]>,
    ) -> Result<Vec<u8>, i32> {
        self.bed.outb(self.ports.control, DC_HD15 | NIEN);
        let result = self
            .send_cmd(slave, cmd)
            .and_then(|()| self.ata_wait_data())
            .and_then(|()| self.ata_pio_transfer(count, 512, write));
        self.bed.outb(self.ports.control, DC_HD15);
        result
    }

    /// `ata_readwrite` by PIO.
    fn ata_readwrite(&mut self, slave: bool, lba: u64, count: usize, write: Option<&[u8]>) -> Result<Vec<u8>, i32> {
        let mut cmd = PioCommand::default();
        let mut lba_low = lba;
        if count >= 1 << 8 || lba + count as u64 >= 1 << 28 {
            cmd.sector_count2 = (count >> 8) as u8;
            cmd.lba_low2 = (lba >> 24) as u8;
            cmd.lba_mid2 = (lba >> 32) as u8;
            cmd.lba_high2 = (lba >> 40) as u8;
            lba_low &= 0xff_ffff;
            cmd.command = if write.is_some() { CMD_WRITE_SECTORS_EXT } else { CMD_READ_SECTORS_EXT };
        } else {
            cmd.command = if write.is_some() { CMD_WRITE_SECTORS } else { CMD_READ_SECTORS };
        }
        cmd.sector_count = count as u8;
        cmd.lba_low = lba_low as u8;
        cmd.lba_mid = (lba_low >> 8) as u8;
        cmd.lba_high = (lba_low >> 16) as u8;
        cmd.device = ((lba_low >> 24) as u8 & 0xf) | DH_LBA;
        self.ata_pio_cmd_data(slave, &cmd, count, write)
    }

    /// `ata_atapi_process_op`: PACKET, the CDB by `outsw`, `count` blocks of `block_len`.
    fn atapi_op(&mut self, slave: bool, cdb: [u8; 12], block_len: usize, count: usize) -> Result<Vec<u8>, i32> {
        let cmd = PioCommand {
            lba_mid: block_len as u8,
            lba_high: (block_len >> 8) as u8,
            command: CMD_PACKET,
            ..PioCommand::default()
        };
        self.bed.outb(self.ports.control, DC_HD15 | NIEN);
        let result = (|| {
            self.send_cmd(slave, &cmd)?;
            self.ata_wait_data()?;
            self.bed.outsw(self.reg(DATA), &cdb);
            let status = self.pause_await_not_bsy()?;
            if status & ERR != 0 {
                self.bed.inb(self.reg(ERROR));
                return Err(-2);
            }
            if block_len == 0 {
                return Ok(Vec::new());
            }
            if status & DRQ == 0 {
                return Err(-3);
            }
            self.ata_pio_transfer(count, block_len, None)
        })();
        self.bed.outb(self.ports.control, DC_HD15);
        result
    }

    fn identify(&mut self, slave: bool, command: u8) -> Result<Vec<u8>, i32> {
        let cmd = PioCommand { command, ..PioCommand::default() };
        self.ata_pio_cmd_data(slave, &cmd, 1, None)
    }

    /// `ata_detect` for this channel.
    fn detect(&mut self) -> Vec<Found> {
        let mut found = Vec::new();
        let mut did_reset = false;
        for slave in [false, true] {
            if self.await_not_bsy().is_err() {
                continue;
            }
            let new_dh = if slave { DH_DEV1 } else { DH_DEV0 };
            self.bed.outb(self.reg(DEVICE), new_dh);
            if self.await_not_bsy().is_err() {
                continue;
            }
            self.bed.outb(self.reg(DEVICE), new_dh);
            let dh = self.bed.inb(self.reg(DEVICE));
            self.bed.outb(self.reg(NSECT), 0x55);
            self.bed.outb(self.reg(LBAL), 0xaa);
            let sc = self.bed.inb(self.reg(NSECT));
            let sn = self.bed.inb(self.reg(LBAL));
            if sc != 0x55 || sn != 0xaa || dh != new_dh {
                continue;
            }
            if !did_reset {
                self.ata_reset(slave);
                did_reset = true;
            }
            let buffer = match self.identify(slave, CMD_IDENTIFY_PACKET_DEVICE) {
                Ok(buffer) => {
                    let word0 = u16::from_le_bytes([buffer[0], buffer[1]]);
                    found.push(Found::Atapi { slave, is_cd: (word0 >> 8) & 0x1f == 5, model: model(&buffer) });
                    buffer
                }
                Err(_) => {
                    if self.bed.inb(self.reg(STATUS)) == 0 {
                        continue; // "Status not set - can't be a valid drive."
                    }
                    if self.await_rdy().is_err() {
                        continue;
                    }
                    let Ok(buffer) = self.identify(slave, CMD_IDENTIFY_DEVICE) else {
                        continue;
                    };
                    let word = |i: usize| u64::from(u16::from_le_bytes([buffer[2 * i], buffer[2 * i + 1]]));
                    let nr_sectors = if word(83) & (1 << 10) != 0 {
                        word(100) | word(101) << 16 | word(102) << 32 | word(103) << 48
                    } else {
                        word(60) | word(61) << 16
                    };
                    found.push(Found::Ata { slave, nr_sectors, model: model(&buffer) });
                    buffer
                }
            };
            let reset_result = u16::from_le_bytes([buffer[186], buffer[187]]);
            if !slave && reset_result & 0xdf61 == 0x4041 {
                break;
            }
        }
        found
    }

    fn test_unit_ready(&mut self, slave: bool) -> Result<Vec<u8>, i32> {
        self.atapi_op(slave, [0; 12], 0, 0)
    }

    fn request_sense(&mut self, slave: bool) -> Result<Vec<u8>, i32> {
        let mut cdb = [0u8; 12];
        cdb[0] = 0x03;
        cdb[4] = 18;
        self.atapi_op(slave, cdb, 18, 1)
    }

    fn read_10(&mut self, slave: bool, lba: u32, count: u16) -> Result<Vec<u8>, i32> {
        let mut cdb = [0u8; 12];
        cdb[0] = 0x28;
        cdb[2..6].copy_from_slice(&lba.to_be_bytes());
        cdb[7..9].copy_from_slice(&count.to_be_bytes());
        self.atapi_op(slave, cdb, 2048, usize::from(count))
    }

    /// `atapi_is_ready` / `scsi_is_ready`: TEST UNIT READY until it passes, REQUEST SENSE
    /// after each failure; MEDIUM NOT PRESENT gives up. The 5 s are 50 rounds here.
    fn is_ready(&mut self, slave: bool) -> Result<(), i32> {
        for _ in 0..50 {
            if self.test_unit_ready(slave).is_ok() {
                return Ok(());
            }
            let Ok(sense) = self.request_sense(slave) else {
                continue; // "Error - retry."
            };
            if sense[12] == 0x3a {
                return Err(-1);
            }
        }
        Err(-1)
    }

    /// `cdrom_boot`: the boot record, the catalog, the no-emulation image (read in chunks
    /// of up to 32 blocks). Returns the load segment and the image.
    fn cdrom_boot(&mut self, slave: bool) -> Result<(u16, Vec<u8>), i32> {
        let _ = self.is_ready(slave);
        let buffer = self.read_10(slave, 0x11, 1).map_err(|_| 3)?;
        if buffer[0] != 0 {
            return Err(4);
        }
        if &buffer[1..31] != b"CD001\x01EL TORITO SPECIFICATION\0" {
            return Err(5);
        }
        let catalog_lba = u32::from_le_bytes([buffer[0x47], buffer[0x48], buffer[0x49], buffer[0x4a]]);
        let catalog = self.read_10(slave, catalog_lba, 1).map_err(|_| 7)?;
        if catalog[0] != 1 || catalog[1] != 0 {
            return Err(8);
        }
        if catalog[0x1e] != 0x55 || catalog[0x1f] != 0xaa {
            return Err(10);
        }
        if catalog[0x20] != 0x88 {
            return Err(11);
        }
        let segment = match u16::from_le_bytes([catalog[0x22], catalog[0x23]]) {
            0 => 0x07c0,
            segment => segment,
        };
        let nr_virtual_sectors = u16::from_le_bytes([catalog[0x26], catalog[0x27]]);
        let mut lba = u32::from_le_bytes([catalog[0x28], catalog[0x29], catalog[0x2a], catalog[0x2b]]);
        let mut blocks_left = nr_virtual_sectors.div_ceil(4);
        let mut image = Vec::new();
        while blocks_left > 0 {
            let count = blocks_left.min(32);
            image.extend(self.read_10(slave, lba, count).map_err(|_| 12)?);
            lba += u32::from(count);
            blocks_left -= count;
        }
        Ok((segment, image))
    }
}

fn model(identify: &[u8]) -> Vec<u8> {
    let mut model: Vec<u8> = identify[54..94].chunks(2).flat_map(|pair| [pair[1], pair[0]]).collect();
    while model.last() == Some(&b' ') {
        model.pop();
    }
    model
}

#[test]
fn seabios_finds_the_disk_and_the_cdrom_and_boots_el_torito_without_interrupts() {
    let mut disk = test_disk(4096);
    disk[510] = 0x55;
    disk[511] = 0xaa;
    let iso = test_iso(64, 1000);
    let mut bed = Bed::disk_and_cd(disk.clone(), Some(iso.clone()));

    let primary = SeaBios { bed: &mut bed, ports: PRIMARY }.detect();
    assert_eq!(primary, vec![Found::Ata { slave: false, nr_sectors: 4096, model: b"QEMU HARDDISK".to_vec() }]);
    let secondary = SeaBios { bed: &mut bed, ports: SECONDARY }.detect();
    assert_eq!(secondary, vec![Found::Atapi { slave: false, is_cd: true, model: b"QEMU DVD-ROM".to_vec() }]);

    // the MBR, then a 300-sector read that needs LBA48 and three requests
    let mut bios = SeaBios { bed: &mut bed, ports: PRIMARY };
    assert_eq!(bios.ata_readwrite(false, 0, 1, None).unwrap(), &disk[..512]);
    assert_eq!(bios.ata_readwrite(false, 1000, 300, None).unwrap(), &disk[1000 * 512..1300 * 512]);

    let requests_before = bed.seen.len();
    let mut bios = SeaBios { bed: &mut bed, ports: SECONDARY };
    let (segment, image) = bios.cdrom_boot(false).expect("cdrom_boot");
    assert_eq!(segment, 0x07c0);
    let start = BOOT_IMAGE_LBA as usize * 2048;
    assert_eq!(image.len(), usize::from(BOOT_IMAGE_VIRTUAL_SECTORS) * 512);
    assert_eq!(image, &iso[start..start + image.len()]);
    // 40 blocks: a 32-block READ(10) in one 64 KiB request, then 8 blocks
    let cd_requests: Vec<Seen> = bed.seen[requests_before..].iter().map(|&(_, seen)| seen).collect();
    assert_eq!(
        cd_requests,
        vec![
            Seen::Read { sector: 0x11 * 4, nr_sectors: 4 },
            Seen::Read { sector: u64::from(BOOT_CATALOG_LBA) * 4, nr_sectors: 4 },
            Seen::Read { sector: u64::from(BOOT_IMAGE_LBA) * 4, nr_sectors: 128 },
            Seen::Read { sector: u64::from(BOOT_IMAGE_LBA + 32) * 4, nr_sectors: 32 },
        ]
    );
    // nIEN polling: the interrupt lines never rose
    assert_eq!(bed.edges, [0, 0]);
    assert!(!bed.level(0) && !bed.level(1));
}

#[test]
fn seabios_writes_reach_the_disk() {
    let disk = test_disk(1024);
    let mut bed = Bed::disk_and_cd(disk, None);
    let data: Vec<u8> = (0..200 * 512).map(|i| (i * 3 + 1) as u8).collect();
    let mut bios = SeaBios { bed: &mut bed, ports: PRIMARY };
    bios.detect();
    bios.ata_readwrite(false, 500, 200, Some(&data)).expect("write");
    assert_eq!(bios.ata_readwrite(false, 500, 200, None).unwrap(), data);
    assert_eq!(&bed.media[&HDA][500 * 512..700 * 512], &data[..]);
    // gathered into a 128-sector write and a 72-sector one
    let writes: Vec<Seen> =
        bed.seen.iter().filter(|(_, seen)| matches!(seen, Seen::Write { .. })).map(|&(_, s)| s).collect();
    assert_eq!(writes, vec![Seen::Write { sector: 500, nr_sectors: 128 }, Seen::Write { sector: 628, nr_sectors: 72 }]);
}

/// With no medium, TEST UNIT READY fails and SeaBIOS's REQUEST SENSE reads 16 of the 18
/// bytes (`insl` of 18 / 4 dwords) and fails too; SeaBIOS then sends commands while DRQ is
/// still up, which the drive ignores (as QEMU does), until its READ(10) drains the two
/// bytes. The boot fails cleanly and the drive is usable afterwards.
#[test]
fn seabios_with_an_empty_cd_drive_gives_up_and_leaves_the_drive_usable() {
    let mut bed = Bed::new([[None, None], [Some(DriveSpec::CdRom { medium_nr_sectors: None }), None]], vec![]);
    let mut bios = SeaBios { bed: &mut bed, ports: SECONDARY };
    assert_eq!(bios.detect().len(), 1);
    assert_eq!(bios.test_unit_ready(false), Err(-2));
    assert_eq!(bios.request_sense(false), Err(-7), "2 bytes of sense left over");
    assert_eq!(bios.cdrom_boot(false), Err(5));
    // the channel is idle again: a fresh TEST UNIT READY reports the missing medium
    assert_eq!(bios.bed.inb(SECONDARY.command + STATUS) & (BSY | DRQ), 0);
    assert_eq!(bios.test_unit_ready(false), Err(-2));
    assert_eq!(bios.bed.inb(SECONDARY.command + ERROR), 0x20, "NOT READY << 4");
    assert!(bed.seen.is_empty());
}
