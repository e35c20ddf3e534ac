//! Linux's libata-sff (as ata_piix uses it) probing a channel and running the commands sd
//! and sr send: SRST with the port frozen (nIEN), device classification by signature,
//! IDENTIFY (PACKET) DEVICE, SET FEATURES - XFER MODE, then interrupt-driven PIO
//! (`ata_sff_hsm_move`): one interrupt per sector of a read and none after the last one,
//! the first sector of a write sent by polling, PACKET CDBs sent by polling (no CDB
//! interrupt), ATAPI data in blocks whose length comes from LBA mid/high, REQUEST SENSE by
//! EH after a CHECK CONDITION.

use alloc::vec;
use alloc::vec::Vec;

use super::harness::*;
use crate::ide::{DriveSpec, IdeEvent};

/// ATA_DEVCTL_OBS: the device control value libata writes (nIEN clear).
const CTL: u8 = 0x08;
const DEVICE_OBS: u8 = 0xa0;
const DEVICE_LBA: u8 = 0x40;

/// libata's `struct ata_taskfile`, the parts used here.
#[derive(Default, Clone, Copy, Debug)]
struct Taskfile {
    feature: u8,
    nsect: u8,
    lbal: u8,
    lbam: u8,
    lbah: u8,
    device: u8,
    command: u8,
    lba48: bool,
    hob_nsect: u8,
    hob_lbal: u8,
    hob_lbam: u8,
    hob_lbah: u8,
}

impl Taskfile {
    fn command(command: u8) -> Self {
        Taskfile { command, ..Taskfile::default() }
    }

    /// `ata_build_rw_tf`: LBA28 when it fits, LBA48 otherwise.
    fn read_write(write: bool, lba: u64, nr_sectors: u32) -> Self {
        let mut tf = Taskfile::default();
        if lba + u64::from(nr_sectors) <= 1 << 28 && nr_sectors <= 256 {
            tf.command = if write { 0x30 } else { 0x20 };
            tf.device = DEVICE_LBA | ((lba >> 24) as u8 & 0x0f);
        } else {
            tf.command = if write { 0x34 } else { 0x24 };
            tf.lba48 = true;
            tf.device = DEVICE_LBA;
            tf.hob_nsect = (nr_sectors >> 8) as u8;
            tf.hob_lbal = (lba >> 24) as u8;
            tf.hob_lbam = (lba >> 32) as u8;
            tf.hob_lbah = (lba >> 40) as u8;
        }
        tf.nsect = nr_sectors as u8;
        tf.lbal = lba as u8;
        tf.lbam = (lba >> 8) as u8;
        tf.lbah = (lba >> 16) as u8;
        tf
    }
}

/// The registers `ata_sff_tf_read` returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ResultTf {
    status: u8,
    error: u8,
    nsect: u8,
    lbal: u8,
    lbam: u8,
    lbah: u8,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    None,
    Ata,
    Atapi,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Failure {
    /// the device ended the command with ERR (AC_ERR_DEV)
    Device { status: u8, error: u8 },
    /// a host state machine violation (AC_ERR_HSM)
    Hsm(&'static str),
}

/// What sr sees of a failed packet command after EH's REQUEST SENSE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Sense {
    key: u8,
    asc: u8,
}

fn ata_ok(status: u8) -> bool {
    status & (BSY | 0x20 | DRQ | ERR) == 0
}

struct Libata<'a> {
    bed: &'a mut Bed,
    ports: Ports,
    ctl: u8,
    /// ATA_PFLAG_PIO32: 32-bit data transfers
    pio32: bool,
    /// byte counts of the ATAPI DRQ blocks of the last packet command
    atapi_blocks: Vec<usize>,
}

impl<'a> Libata<'a> {
    fn new(bed: &'a mut Bed, ports: Ports, pio32: bool) -> Self {
        Libata { bed, ports, ctl: CTL, pio32, atapi_blocks: Vec::new() }
    }

    fn reg(&self, offset: u16) -> u16 {
        self.ports.command + offset
    }

    fn check_status(&mut self) -> u8 {
        self.bed.inb(self.reg(STATUS))
    }

    fn altstatus(&mut self) -> u8 {
        self.bed.inb(self.ports.control)
    }

    fn dev_select(&mut self, dev: u8) {
        self.bed.outb(self.reg(DEVICE), DEVICE_OBS | (dev << 4));
        self.altstatus();
    }

    /// `ata_wait_idle`: a short busy wait for !BSY && !DRQ.
    fn wait_idle(&mut self) -> u8 {
        let mut status = 0;
        for _ in 0..10 {
            status = self.check_status();
            if status & (BSY | DRQ) == 0 {
                break;
            }
        }
        status
    }

    /// `ata_sff_wait_ready` (and the PIO task's waits): poll status until !BSY.
    fn wait_ready(&mut self) -> u8 {
        self.bed.poll_not_busy(self.ports)
    }

    fn set_devctl(&mut self, ctl: u8) {
        self.bed.outb(self.ports.control, ctl);
    }

    /// `ata_sff_freeze`.
    fn freeze(&mut self) {
        self.ctl |= NIEN;
        self.set_devctl(self.ctl);
        self.check_status();
    }

    /// `ata_sff_thaw`: clear and enable interrupts.
    fn thaw(&mut self) {
        self.check_status();
        self.ctl &= !NIEN;
        self.set_devctl(self.ctl);
        self.wait_idle();
    }

    fn devchk(&mut self, dev: u8) -> bool {
        self.dev_select(dev);
        for (nsect, lbal) in [(0x55, 0xaa), (0xaa, 0x55), (0x55, 0xaa)] {
            self.bed.outb(self.reg(NSECT), nsect);
            self.bed.outb(self.reg(LBAL), lbal);
        }
        self.bed.inb(self.reg(NSECT)) == 0x55 && self.bed.inb(self.reg(LBAL)) == 0xaa
    }

    fn tf_read(&mut self) -> ResultTf {
        ResultTf {
            status: self.check_status(),
            error: self.bed.inb(self.reg(ERROR)),
            nsect: self.bed.inb(self.reg(NSECT)),
            lbal: self.bed.inb(self.reg(LBAL)),
            lbam: self.bed.inb(self.reg(LBAM)),
            lbah: self.bed.inb(self.reg(LBAH)),
        }
    }

    fn classify(&mut self, dev: u8, present: bool) -> (Class, u8) {
        self.dev_select(dev);
        let tf = self.tf_read();
        let diagnostic_failed = match tf.error {
            0 => true,
            1 => false,
            0x81 if dev == 0 => false,
            _ => return (Class::None, tf.error),
        };
        let class = match (tf.lbam, tf.lbah) {
            (0, 0) => Class::Ata,
            (0x14, 0xeb) => Class::Atapi,
            _ if present && diagnostic_failed => Class::Ata,
            _ => Class::None,
        };
        if class == Class::Ata && self.check_status() == 0 {
            return (Class::None, tf.error);
        }
        (class, tf.error)
    }

    /// `ata_sff_softreset`.
    fn softreset(&mut self) -> [Class; 2] {
        let mut devmask = 0;
        if self.devchk(0) {
            devmask |= 1;
        }
        if self.devchk(1) {
            devmask |= 2;
        }
        self.dev_select(0);
        // ata_bus_softreset
        self.set_devctl(self.ctl);
        self.set_devctl(self.ctl | SRST);
        self.set_devctl(self.ctl);
        // ata_sff_wait_after_reset
        self.wait_ready();
        if devmask & 2 != 0 {
            self.dev_select(1);
            for _ in 0..2 {
                if self.bed.inb(self.reg(NSECT)) == 1 && self.bed.inb(self.reg(LBAL)) == 1 {
                    break;
                }
            }
            self.wait_ready();
        }
        self.dev_select(0);
        if devmask & 2 != 0 {
            self.dev_select(1);
        }
        if devmask & 1 != 0 {
            self.dev_select(0);
        }
        let (class0, error) = self.classify(0, devmask & 1 != 0);
        let class1 = if error != 0x81 { self.classify(1, devmask & 2 != 0).0 } else { Class::None };
        [class0, class1]
    }

    fn tf_load(&mut self, tf: &Taskfile) {
        if tf.lba48 {
            self.bed.outb(self.reg(FEATURE), 0);
            self.bed.outb(self.reg(NSECT), tf.hob_nsect);
            self.bed.outb(self.reg(LBAL), tf.hob_lbal);
            self.bed.outb(self.reg(LBAM), tf.hob_lbam);
            self.bed.outb(self.reg(LBAH), tf.hob_lbah);
        }
        self.bed.outb(self.reg(FEATURE), tf.feature);
        self.bed.outb(self.reg(NSECT), tf.nsect);
        self.bed.outb(self.reg(LBAL), tf.lbal);
        self.bed.outb(self.reg(LBAM), tf.lbam);
        self.bed.outb(self.reg(LBAH), tf.lbah);
        self.wait_idle();
    }

    /// `ata_sff_qc_issue` up to the command write.
    fn issue(&mut self, dev: u8, tf: &Taskfile) {
        assert_eq!(self.bed.unconsumed_irqs(self.ports.channel), 0, "an interrupt nobody expected");
        self.wait_idle();
        self.dev_select(dev);
        self.wait_idle();
        self.tf_load(tf);
        self.bed.outb(self.reg(DEVICE), DEVICE_OBS | tf.device | (dev << 4));
        self.wait_idle();
        self.bed.outb(self.reg(COMMAND), tf.command);
        self.altstatus();
    }

    /// The interrupt handler's status read (`ata_sff_irq_status`).
    fn irq_status(&mut self) -> u8 {
        let status = self.altstatus();
        if status & BSY != 0 {
            return status;
        }
        self.check_status()
    }

    fn data_in(&mut self, len: usize) -> Vec<u8> {
        let port = self.reg(DATA);
        let mut data = if self.pio32 { self.bed.insl(port, len / 4) } else { self.bed.insw(port, len / 2) };
        let slop = if self.pio32 { len % 4 } else { len % 2 };
        if slop > 0 {
            let pad = if self.pio32 && slop == 3 {
                self.bed.inl(port).to_le_bytes().to_vec()
            } else {
                self.bed.inw(port).to_le_bytes().to_vec()
            };
            data.extend_from_slice(&pad[..slop]);
        }
        data
    }

    fn data_out(&mut self, data: &[u8]) {
        let port = self.reg(DATA);
        if self.pio32 { self.bed.outsl(port, data) } else { self.bed.outsw(port, data) }
    }

    /// ATA PIO data-in, interrupt driven.
    fn pio_in(&mut self, dev: u8, tf: &Taskfile, nr_sectors: usize) -> Result<Vec<u8>, Failure> {
        let channel = self.ports.channel;
        self.issue(dev, tf);
        let mut data = Vec::new();
        for sector in 0..nr_sectors {
            self.bed.wait_irq(channel);
            let status = self.irq_status();
            if status & DRQ == 0 {
                return Err(if status & ERR != 0 {
                    Failure::Device { status, error: self.bed.inb(self.reg(ERROR)) }
                } else {
                    Failure::Hsm("ST-ATA: DRQ=0 without device error")
                });
            }
            data.extend(self.data_in(512));
            if sector + 1 == nr_sectors {
                let status = self.wait_idle();
                if !ata_ok(status) {
                    return Err(Failure::Device { status, error: self.bed.inb(self.reg(ERROR)) });
                }
            }
        }
        assert_eq!(self.bed.unconsumed_irqs(channel), 0, "no interrupt after the last sector");
        Ok(data)
    }

    /// ATA PIO data-out: the first sector by polling, the others on interrupts.
    fn pio_out(&mut self, dev: u8, tf: &Taskfile, data: &[u8]) -> Result<(), Failure> {
        let channel = self.ports.channel;
        self.issue(dev, tf);
        let status = self.wait_ready();
        assert_eq!(self.bed.unconsumed_irqs(channel), 0, "no interrupt before the first sector");
        if status & DRQ == 0 {
            return Err(Failure::Device { status, error: self.bed.inb(self.reg(ERROR)) });
        }
        for sector in data.chunks(512) {
            self.data_out(sector);
            self.altstatus();
            self.bed.wait_irq(channel);
            let status = self.irq_status();
            if status & (ERR | 0x20) != 0 {
                return Err(Failure::Device { status, error: self.bed.inb(self.reg(ERROR)) });
            }
            let last = sector.as_ptr_range().end == data.as_ptr_range().end;
            if last != (status & DRQ == 0) {
                return Err(Failure::Hsm("DRQ does not match the sectors left"));
            }
        }
        Ok(())
    }

    fn non_data(&mut self, dev: u8, tf: &Taskfile) -> Result<ResultTf, Failure> {
        let channel = self.ports.channel;
        self.issue(dev, tf);
        self.bed.wait_irq(channel);
        let status = self.irq_status();
        if !ata_ok(status) {
            return Err(Failure::Device { status, error: self.bed.inb(self.reg(ERROR)) });
        }
        Ok(self.tf_read())
    }

    /// ATAPI_PROT_PIO / ATAPI_PROT_NODATA with a device-to-host data phase of up to
    /// `alloc_len` bytes (the byte count limit is min(alloc_len, 63 KiB) as `atapi_xlat` sets it).
    fn packet(&mut self, dev: u8, cdb: &[u8], alloc_len: usize) -> Result<Vec<u8>, Failure> {
        let channel = self.ports.channel;
        let limit = alloc_len.min(63 * 1024);
        let tf = Taskfile { lbam: limit as u8, lbah: (limit >> 8) as u8, command: 0xa0, ..Taskfile::default() };
        self.atapi_blocks.clear();
        self.issue(dev, &tf);
        // HSM_ST_FIRST from the PIO task: no CDB interrupt
        let status = self.wait_ready();
        if status & DRQ == 0 {
            return Err(if status & (ERR | 0x20) != 0 {
                Failure::Device { status, error: self.bed.inb(self.reg(ERROR)) }
            } else {
                Failure::Hsm("ST_FIRST: !(DRQ|ERR|DF)")
            });
        }
        assert_eq!(self.bed.inb(self.reg(NSECT)) & 3, 1, "interrupt reason CoD for the CDB");
        let mut padded = [0u8; 12];
        padded[..cdb.len()].copy_from_slice(cdb);
        self.data_out(&padded);
        self.altstatus();
        let mut data = Vec::new();
        for _ in 0..100_000 {
            self.bed.wait_irq(channel);
            let status = self.irq_status();
            if status & DRQ == 0 {
                if !ata_ok(status) {
                    return Err(Failure::Device { status, error: self.bed.inb(self.reg(ERROR)) });
                }
                assert_eq!(self.bed.inb(self.reg(NSECT)) & 3, 3, "interrupt reason IO|CoD at the end");
                return Ok(data);
            }
            if alloc_len == 0 {
                return Err(Failure::Hsm("data phase in a no-data command"));
            }
            // atapi_pio_bytes
            let tf = self.tf_read();
            let bytes = usize::from(tf.lbah) << 8 | usize::from(tf.lbam);
            if tf.nsect & 1 != 0 || tf.nsect & 2 == 0 || bytes == 0 {
                return Err(Failure::Hsm("ATAPI check failed"));
            }
            self.atapi_blocks.push(bytes);
            data.extend(self.data_in(bytes));
            self.altstatus();
        }
        panic!("the data phase never ends");
    }

    /// A SCSI command through libata: on a device error, EH's REQUEST SENSE.
    fn scsi(&mut self, dev: u8, cdb: &[u8], alloc_len: usize) -> Result<Vec<u8>, Sense> {
        match self.packet(dev, cdb, alloc_len) {
            Ok(data) => Ok(data),
            Err(Failure::Device { status, error }) => {
                assert_eq!(status & ERR, ERR);
                let sense = self.packet(dev, &[0x03, 0, 0, 0, 96], 96).expect("REQUEST SENSE");
                assert_eq!(sense.len(), 18);
                assert_eq!(sense[2], error >> 4, "the error register carries the sense key");
                Err(Sense { key: sense[2], asc: sense[12] })
            }
            Err(failure) => panic!("{failure:?}"),
        }
    }

    /// Probe: reset with the port frozen, classify, then IDENTIFY, SET FEATURES - XFER
    /// MODE (PIO4) and IDENTIFY again for each device. Returns each device's class and
    /// IDENTIFY data.
    fn probe(&mut self) -> Vec<(u8, Class, Vec<u8>)> {
        self.freeze();
        let classes = self.softreset();
        self.thaw();
        let mut found = Vec::new();
        for (dev, class) in [0u8, 1].into_iter().zip(classes) {
            let command = match class {
                Class::None => continue,
                Class::Ata => 0xec,
                Class::Atapi => 0xa1,
            };
            let id = self.pio_in(dev, &Taskfile::command(command), 1).expect("IDENTIFY");
            let set_xfer = Taskfile { feature: 0x03, nsect: 0x0c, ..Taskfile::command(0xef) };
            self.non_data(dev, &set_xfer).expect("SET FEATURES - XFER MODE");
            let again = self.pio_in(dev, &Taskfile::command(command), 1).expect("IDENTIFY after SET FEATURES");
            assert_eq!(id, again, "revalidation sees the same device");
            found.push((dev, class, id));
        }
        found
    }
}

fn word(id: &[u8], index: usize) -> u16 {
    u16::from_le_bytes([id[2 * index], id[2 * index + 1]])
}

fn cdb10(opcode: u8, lba: u32, count: u16) -> [u8; 10] {
    let mut cdb = [0u8; 10];
    cdb[0] = opcode;
    cdb[2..6].copy_from_slice(&lba.to_be_bytes());
    cdb[7..9].copy_from_slice(&count.to_be_bytes());
    cdb
}

const TEST_UNIT_READY: [u8; 6] = [0; 6];
const READ_CAPACITY: [u8; 10] = [0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0];
/// GET EVENT STATUS NOTIFICATION, polled, media class, 8 bytes (sr_get_events).
const GESN_MEDIA: [u8; 10] = [0x4a, 1, 0, 0, 0x10, 0, 0, 0, 8, 0];

#[test]
fn linux_probes_both_channels_and_runs_sd_with_interrupt_driven_pio() {
    let nr_sectors = 70_000;
    let disk = test_disk(nr_sectors);
    let mut bed = Bed::disk_and_cd(disk.clone(), Some(test_iso(80, 0)));

    let mut primary = Libata::new(&mut bed, PRIMARY, false);
    let found = primary.probe();
    assert_eq!(found.len(), 1);
    let (dev, class, id) = &found[0];
    assert_eq!((*dev, *class), (0, Class::Ata));
    // what libata and sd use: LBA48 with FLUSH EXT, write cache on, DMA (multiword 0-2
    // for ata_piix's PIIX3), no multiple
    assert_ne!(word(id, 83) & (1 << 10), 0);
    assert_ne!(word(id, 83) & (1 << 13), 0);
    assert_ne!(word(id, 85) & (1 << 5), 0);
    assert_ne!(word(id, 49) & (1 << 8), 0);
    assert_eq!(word(id, 63) & 0x07, 0x07);
    assert_eq!(word(id, 47) & 0xff, 0);
    let capacity = (0..4).fold(0u64, |acc, i| acc | u64::from(word(id, 100 + i)) << (16 * i));
    assert_eq!(capacity, nr_sectors as u64);
    // each IDENTIFY and SET FEATURES interrupted once, nothing else did
    assert_eq!(bed.edges[0], 3);

    // sd: a 300-sector write near the end (LBA48), read back, flush, standby at shutdown
    let mut sd = Libata::new(&mut bed, PRIMARY, true);
    let lba = 65_000u64;
    let data: Vec<u8> = (0..300 * 512).map(|i: usize| (i / 512 * 37 + i % 251) as u8).collect();
    sd.pio_out(0, &Taskfile::read_write(true, lba, 300), &data).expect("WRITE SECTORS EXT");
    let read = sd.pio_in(0, &Taskfile::read_write(false, lba, 300), 300).expect("READ SECTORS EXT");
    assert_eq!(read, data);
    let small = sd.pio_in(0, &Taskfile::read_write(false, 100, 8), 8).expect("READ SECTORS");
    assert_eq!(small, &disk[100 * 512..108 * 512]);
    sd.non_data(0, &Taskfile { device: DEVICE_LBA, ..Taskfile::command(0xea) }).expect("FLUSH CACHE EXT");
    sd.non_data(0, &Taskfile::command(0xe0)).expect("STANDBY IMMEDIATE");
    assert_eq!(bed.edges[0], 3 + 300 + 300 + 8 + 2, "one interrupt per sector and per non-data command");
    assert_eq!(&bed.media[&HDA][lba as usize * 512..(lba as usize + 300) * 512], &data[..]);
    let disk_requests: Vec<Seen> = bed.seen.iter().filter(|(drive, _)| *drive == HDA).map(|&(_, seen)| seen).collect();
    assert_eq!(
        disk_requests,
        vec![
            Seen::Write { sector: lba, nr_sectors: 128 },
            Seen::Write { sector: lba + 128, nr_sectors: 128 },
            Seen::Write { sector: lba + 256, nr_sectors: 44 },
            Seen::Read { sector: lba, nr_sectors: 128 },
            Seen::Read { sector: lba + 128, nr_sectors: 128 },
            Seen::Read { sector: lba + 256, nr_sectors: 44 },
            Seen::Read { sector: 100, nr_sectors: 8 },
            Seen::Flush,
        ]
    );
}

#[test]
fn linux_sr_reads_the_cd_with_drq_blocks_capped_by_the_byte_count_limit() {
    let iso = test_iso(80, 0);
    let mut bed = Bed::disk_and_cd(test_disk(64), Some(iso.clone()));
    let mut sr = Libata::new(&mut bed, SECONDARY, true);
    let found = sr.probe();
    assert_eq!(found.len(), 1);
    assert_eq!((found[0].0, found[0].1), (0, Class::Atapi));
    assert_eq!(word(&found[0].2, 0), 0x85c0);

    // scsi_probe_and_add_lun: INQUIRY, then TEST UNIT READY
    let inquiry = sr.scsi(0, &[0x12, 0, 0, 0, 36, 0], 36).unwrap();
    assert_eq!(inquiry[0] & 0x1f, 5, "CD/DVD");
    assert_eq!(inquiry[1], 0x80, "removable");
    assert_eq!(&inquiry[8..32], b"QEMU    QEMU DVD-ROM    ");
    sr.scsi(0, &TEST_UNIT_READY, 0).unwrap();
    // sr_probe: READ CAPACITY, MODE SENSE(10) page 0x2A, GET CONFIGURATION
    let capacity = sr.scsi(0, &READ_CAPACITY, 8).unwrap();
    assert_eq!(capacity, [0, 0, 0, 79, 0, 0, 8, 0]);
    let caps = sr.scsi(0, &[0x5a, 0, 0x2a, 0, 0, 0, 0, 0, 128, 0], 128).unwrap();
    assert_eq!(caps.len(), 30);
    assert_eq!((caps[8], caps[9], caps[10], caps[12], caps[13], caps[14]), (0x2a, 20, 0x3b, 0x71, 0x60, 0x29));
    let config = sr.scsi(0, &[0x46, 0, 0, 0, 0, 0, 0, 0, 8, 0], 8).unwrap();
    assert_eq!(config, [0, 0, 0, 16, 0, 0, 0, 0x08], "current profile CD-ROM");
    // open: READ TOC (header, then all), lock the door
    let header = sr.scsi(0, &[0x43, 0, 0, 0, 0, 0, 0, 0, 12, 0], 12).unwrap();
    assert_eq!(header, [0, 18, 1, 1, 0, 0x14, 1, 0, 0, 0, 0, 0]);
    let toc = sr.scsi(0, &[0x43, 2, 0, 0, 0, 0, 0, 3, 0x24, 0], 804).unwrap();
    assert_eq!(toc.len(), 20);
    assert_eq!(&toc[12..20], &[0, 0x16, 0xaa, 0, 0, 0, 3, 5], "lead-out at 80 blocks in MSF: 00:03:05");
    sr.scsi(0, &[0x1e, 0, 0, 0, 1, 0], 0).unwrap();
    assert_eq!(bed.ide.take_events(), vec![IdeEvent::TrayLocked { drive: HDC, locked: true }]);
    assert!(bed.ide.is_tray_locked(HDC));

    // READ(10) of 40 blocks (80 KiB): DRQ blocks of 64512 bytes (63 KiB) then the rest
    let mut sr = Libata::new(&mut bed, SECONDARY, true);
    let edges_before = sr.bed.edges[1];
    let data = sr.scsi(0, &cdb10(0x28, 30, 40), 40 * 2048).unwrap();
    assert_eq!(data, &iso[30 * 2048..70 * 2048]);
    assert_eq!(sr.atapi_blocks, vec![64512, 81920 - 64512]);
    assert_eq!(sr.bed.edges[1] - edges_before, 3, "one interrupt per DRQ block and one at the end");
    // the same with 16-bit transfers and an odd limit that must be made even
    let mut sr = Libata::new(&mut bed, SECONDARY, false);
    let data = sr.scsi(0, &cdb10(0x28, 2, 3), 3001).unwrap();
    assert_eq!(data, &iso[2 * 2048..5 * 2048]);
    assert_eq!(sr.atapi_blocks, vec![3000, 3000, 144]);

    // disk-event polling: nothing to report
    let events = sr.scsi(0, &GESN_MEDIA, 8).unwrap();
    assert_eq!(events, [0, 4, 4, 0x10, 0, 2, 0, 0]);
    // requests never exceed 64 KiB
    let cd_reads: Vec<Seen> = bed.seen.iter().filter(|(drive, _)| *drive == HDC).map(|&(_, seen)| seen).collect();
    assert_eq!(
        cd_reads,
        vec![
            Seen::Read { sector: 30 * 4, nr_sectors: 128 },
            Seen::Read { sector: 62 * 4, nr_sectors: 32 },
            Seen::Read { sector: 2 * 4, nr_sectors: 12 },
        ]
    );
}

#[test]
fn linux_notices_a_cd_change_through_gesn_and_unit_attention() {
    let first = test_iso(80, 0);
    let mut second = test_iso(120, 0);
    second[0] = 0x42;
    let mut bed = Bed::disk_and_cd(test_disk(64), Some(first));
    let mut sr = Libata::new(&mut bed, SECONDARY, true);
    sr.probe();
    sr.scsi(0, &TEST_UNIT_READY, 0).unwrap();

    // QMP: eject and insert another medium (the tray is closed again)
    sr.bed.change_medium(HDC, Some(second.clone()));
    assert!(sr.bed.take_irq(1), "QEMU interrupts on a media change; libata counts it as an idle interrupt");
    sr.check_status();

    // sr_check_events: GESN reports NEW_MEDIA once
    let events = sr.scsi(0, &GESN_MEDIA, 8).unwrap();
    assert_eq!(events[4..6], [2, 2], "NEW_MEDIA, medium present");
    let events = sr.scsi(0, &GESN_MEDIA, 8).unwrap();
    assert_eq!(events[4..6], [0, 2]);
    // then TEST UNIT READY: NOT READY / MEDIUM NOT PRESENT, then UNIT ATTENTION, then ready
    assert_eq!(sr.scsi(0, &TEST_UNIT_READY, 0), Err(Sense { key: 2, asc: 0x3a }));
    assert_eq!(sr.scsi(0, &TEST_UNIT_READY, 0), Err(Sense { key: 6, asc: 0x28 }));
    sr.scsi(0, &TEST_UNIT_READY, 0).unwrap();
    let capacity = sr.scsi(0, &READ_CAPACITY, 8).unwrap();
    assert_eq!(capacity[..4], 119u32.to_be_bytes());
    let block = sr.scsi(0, &cdb10(0x28, 0, 1), 2048).unwrap();
    assert_eq!(block, &second[..2048]);
}

#[test]
fn linux_sees_unit_attention_block_other_commands_until_request_sense() {
    let iso = test_iso(80, 0);
    let mut bed = Bed::disk_and_cd(test_disk(64), Some(iso.clone()));
    let mut sr = Libata::new(&mut bed, SECONDARY, false);
    sr.probe();
    sr.bed.change_medium(HDC, Some(iso.clone()));
    assert!(sr.bed.take_irq(1));
    sr.check_status();
    // 02/3A, then 06/28 on READ CAPACITY; without REQUEST SENSE the next command gets
    // the pending UNIT ATTENTION as status ERR, error MC | 0x60
    assert_eq!(sr.packet(0, &TEST_UNIT_READY, 0), Err(Failure::Device { status: DRDY | ERR, error: 0x20 }));
    assert_eq!(sr.packet(0, &READ_CAPACITY, 8), Err(Failure::Device { status: DRDY | ERR, error: 0x60 }));
    assert_eq!(sr.packet(0, &TEST_UNIT_READY, 0), Err(Failure::Device { status: ERR, error: 0x60 | 0x20 }));
    // INQUIRY is allowed under UNIT ATTENTION; REQUEST SENSE reports and clears it
    sr.scsi(0, &[0x12, 0, 0, 0, 36, 0], 36).unwrap();
    let sense = sr.packet(0, &[0x03, 0, 0, 0, 18], 18).unwrap();
    assert_eq!((sense[2], sense[12]), (6, 0x28));
    sr.scsi(0, &TEST_UNIT_READY, 0).unwrap();
}

#[test]
fn linux_ejects_and_loads_the_tray_and_honours_the_lock() {
    let iso = test_iso(80, 0);
    let mut bed = Bed::disk_and_cd(test_disk(64), Some(iso));
    let mut sr = Libata::new(&mut bed, SECONDARY, false);
    sr.probe();
    const LOCK: [u8; 6] = [0x1e, 0, 0, 0, 1, 0];
    const UNLOCK: [u8; 6] = [0x1e, 0, 0, 0, 0, 0];
    const EJECT: [u8; 6] = [0x1b, 0, 0, 0, 0x02, 0];
    const LOAD: [u8; 6] = [0x1b, 0, 0, 0, 0x03, 0];
    sr.scsi(0, &LOCK, 0).unwrap();
    // locked: the guest cannot eject, QMP can only ask
    assert_eq!(sr.scsi(0, &EJECT, 0), Err(Sense { key: 2, asc: 0x53 }));
    sr.bed.request_eject(HDC);
    assert!(sr.bed.take_irq(1));
    sr.check_status();
    let events = sr.scsi(0, &GESN_MEDIA, 8).unwrap();
    assert_eq!(events[4..6], [1, 2], "EJECT_REQUESTED");
    // the guest answers the request: unlock, eject
    sr.scsi(0, &UNLOCK, 0).unwrap();
    sr.scsi(0, &EJECT, 0).unwrap();
    assert_eq!(
        sr.bed.ide.take_events(),
        vec![
            IdeEvent::TrayLocked { drive: HDC, locked: true },
            IdeEvent::TrayLocked { drive: HDC, locked: false },
            IdeEvent::TrayMoved { drive: HDC, open: true },
        ]
    );
    assert_eq!(sr.scsi(0, &TEST_UNIT_READY, 0), Err(Sense { key: 2, asc: 0x3a }));
    let events = sr.scsi(0, &GESN_MEDIA, 8).unwrap();
    assert_eq!(events[4..6], [0, 1], "tray open");
    sr.scsi(0, &LOAD, 0).unwrap();
    assert_eq!(sr.bed.ide.take_events(), vec![IdeEvent::TrayMoved { drive: HDC, open: false }]);
    sr.scsi(0, &TEST_UNIT_READY, 0).unwrap();
    // an empty drive: removal prevented is an ILLEGAL REQUEST
    sr.bed.change_medium(HDC, None);
    assert!(sr.bed.take_irq(1));
    sr.check_status();
    sr.scsi(0, &LOCK, 0).unwrap();
    assert_eq!(sr.scsi(0, &EJECT, 0), Err(Sense { key: 5, asc: 0x53 }));
}

#[test]
fn linux_probe_of_an_empty_channel_finds_nothing() {
    let mut bed =
        Bed::new([[None, None], [Some(DriveSpec::HardDisk { nr_sectors: 64, read_only: false }), None]], vec![]);
    let mut ata = Libata::new(&mut bed, PRIMARY, false);
    assert!(!ata.devchk(0) && !ata.devchk(1));
    assert!(ata.probe().is_empty());
    assert_eq!(bed.edges, [0, 0]);
}
