//! The disk's data really goes to and from the PV disk: writes read back by LBA28, LBA48
//! and CHS addresses, long transfers cut into 64 KiB requests, read-only disks, addresses
//! past the end, failed requests and the write cache switch.

use alloc::vec;
use alloc::vec::Vec;

use super::harness::*;
use crate::ide::{BlockOp, BlockOutcome, DriveSpec};

/// Where a command addresses.
#[derive(Clone, Copy)]
enum Address {
    Lba28(u32),
    Lba48(u64),
    Chs { cylinder: u16, head: u8, sector: u8 },
}

/// A PIO command by polling (nIEN set), 16-bit data: reads `count` sectors or writes
/// `data`. Returns the data read, or the status and error it ended with (and what was
/// read before).
fn pio(bed: &mut Bed, address: Address, count: u32, write: Option<&[u8]>) -> Result<Vec<u8>, (u8, u8, Vec<u8>)> {
    let cmd = PRIMARY.command;
    bed.outb(PRIMARY.control, NIEN);
    let (lba48, device, regs) = match address {
        Address::Lba28(lba) => {
            (false, 0xe0 | ((lba >> 24) as u8 & 0x0f), [lba as u8, (lba >> 8) as u8, (lba >> 16) as u8])
        }
        Address::Lba48(lba) => {
            bed.outb(cmd + NSECT, (count >> 8) as u8);
            bed.outb(cmd + LBAL, (lba >> 24) as u8);
            bed.outb(cmd + LBAM, (lba >> 32) as u8);
            bed.outb(cmd + LBAH, (lba >> 40) as u8);
            (true, 0xe0, [lba as u8, (lba >> 8) as u8, (lba >> 16) as u8])
        }
        Address::Chs { cylinder, head, sector } => {
            (false, 0xa0 | head, [sector, cylinder as u8, (cylinder >> 8) as u8])
        }
    };
    bed.outb(cmd + NSECT, count as u8);
    bed.outb(cmd + LBAL, regs[0]);
    bed.outb(cmd + LBAM, regs[1]);
    bed.outb(cmd + LBAH, regs[2]);
    bed.outb(cmd + DEVICE, device);
    let command = match (write.is_some(), lba48) {
        (false, false) => 0x20,
        (false, true) => 0x24,
        (true, false) => 0x30,
        (true, true) => 0x34,
    };
    bed.outb(cmd + COMMAND, command);
    let nr_sectors = match (count, lba48) {
        (0, false) => 256,
        (0, true) => 65536,
        (count, _) => count as usize,
    };
    let mut read = Vec::new();
    for sector in 0..nr_sectors {
        let status = bed.poll_not_busy(PRIMARY);
        if status & DRQ == 0 {
            return Err((status, bed.inb(cmd + ERROR), read));
        }
        match write {
            Some(data) => bed.outsl(cmd + DATA, &data[sector * 512..(sector + 1) * 512]),
            None => read.extend(bed.insl(cmd + DATA, 128)),
        }
    }
    let status = bed.poll_not_busy(PRIMARY);
    if status & (ERR | DRQ) != 0 {
        return Err((status, bed.inb(cmd + ERROR), read));
    }
    Ok(read)
}

fn disk_bed(nr_sectors: usize, read_only: bool) -> (Bed, Vec<u8>) {
    let disk = test_disk(nr_sectors);
    let spec = DriveSpec::HardDisk { nr_sectors: nr_sectors as u64, read_only };
    (Bed::new([[Some(spec), None], [None, None]], vec![(HDA, disk.clone())]), disk)
}

fn pattern(len_sectors: usize, seed: u8) -> Vec<u8> {
    (0..len_sectors * 512).map(|i| (i as u8).wrapping_mul(seed) ^ (i >> 9) as u8).collect()
}

#[test]
fn written_sectors_read_back_by_lba28_lba48_and_chs() {
    let (mut bed, mut expected) = disk_bed(20_000, false);
    let first = pattern(3, 5);
    pio(&mut bed, Address::Lba28(4000), 3, Some(&first)).unwrap();
    expected[4000 * 512..4003 * 512].copy_from_slice(&first);
    let second = pattern(270, 11);
    pio(&mut bed, Address::Lba48(15_000), 270, Some(&second)).unwrap();
    expected[15_000 * 512..15_270 * 512].copy_from_slice(&second);
    // CHS 1/2/3 with 16 heads and 63 sectors per track is LBA (1 * 16 + 2) * 63 + 2
    let third = pattern(2, 23);
    pio(&mut bed, Address::Chs { cylinder: 1, head: 2, sector: 3 }, 2, Some(&third)).unwrap();
    expected[1136 * 512..1138 * 512].copy_from_slice(&third);
    assert_eq!(bed.media[&HDA], expected);

    assert_eq!(pio(&mut bed, Address::Lba28(4000), 3, None).unwrap(), first);
    assert_eq!(pio(&mut bed, Address::Lba48(15_000), 270, None).unwrap(), second);
    assert_eq!(pio(&mut bed, Address::Chs { cylinder: 1, head: 2, sector: 3 }, 2, None).unwrap(), third);
    // the address registers end past the last sector: CHS 1/2/5
    assert_eq!([bed.inb(0x1f3), bed.inb(0x1f4), bed.inb(0x1f5), bed.inb(0x1f6)], [5, 1, 0, 0xa2]);
    // a sector count of 0 means 256
    assert_eq!(pio(&mut bed, Address::Lba28(100), 0, None).unwrap(), &expected[100 * 512..356 * 512]);
}

#[test]
fn read_sectors_ext_of_65536_sectors_goes_in_64k_requests_as_the_guest_drains() {
    let (mut bed, disk) = disk_bed(65_536 + 8, false);
    let cmd = PRIMARY.command;
    bed.outb(PRIMARY.control, NIEN);
    // HOB: count 0, LBA 0; then count 0, LBA 8: 65536 sectors from LBA 8
    for (register, value) in [(NSECT, 0), (LBAL, 0), (LBAM, 0), (LBAH, 0), (NSECT, 0), (LBAL, 8), (LBAM, 0), (LBAH, 0)]
    {
        bed.outb(cmd + register, value);
    }
    bed.outb(cmd + DEVICE, 0xe0);
    bed.outb(cmd + COMMAND, 0x24);
    let mut mismatches = 0;
    for chunk in 0..512 {
        assert!(bed.service_one(), "chunk {chunk} asked for");
        assert_eq!(bed.ide.take_request(), None, "nothing more until the guest drains the buffer");
        for sector in 0..128 {
            assert_eq!(bed.inb(PRIMARY.control), DRDY | DSC | DRQ);
            // straight to the controller: 8 million reads
            let data: Vec<u8> = (0..128).flat_map(|_| bed.ide.read(cmd + DATA, 4).to_le_bytes()).collect();
            let lba = 8 + chunk * 128 + sector;
            mismatches += usize::from(data != disk[lba * 512..(lba + 1) * 512]);
        }
    }
    assert_eq!(mismatches, 0);
    bed.sample_irq();
    assert_eq!(bed.inb(cmd + STATUS), DRDY | DSC);
    assert_eq!(bed.seen.len(), 512);
    assert!(
        bed.seen
            .iter()
            .enumerate()
            .all(|(i, &(_, seen))| seen == Seen::Read { sector: 8 + i as u64 * 128, nr_sectors: 128 })
    );
    assert_eq!(bed.edges, [0, 0]);
}

#[test]
fn a_read_only_disk_refuses_the_first_written_sector() {
    let (mut bed, disk) = disk_bed(100, true);
    let data = pattern(4, 3);
    let (status, error, _) = pio(&mut bed, Address::Lba28(10), 4, Some(&data)).unwrap_err();
    assert_eq!((status, error), (DRDY | ERR, 0x04));
    // the registers point at the sector that failed
    assert_eq!([bed.inb(0x1f2), bed.inb(0x1f3)], [4, 10]);
    assert!(bed.seen.is_empty());
    assert_eq!(bed.media[&HDA], disk);
    // reads still work
    assert_eq!(pio(&mut bed, Address::Lba28(10), 4, None).unwrap(), &disk[10 * 512..14 * 512]);
}

#[test]
fn reads_and_writes_past_the_end_stop_there_with_abort() {
    let (mut bed, disk) = disk_bed(100, false);
    // sectors 95-99 come, then ABRT where sector 100 would be
    let (status, error, read) = pio(&mut bed, Address::Lba28(95), 10, None).unwrap_err();
    assert_eq!((status, error), (DRDY | ERR, 0x04));
    assert_eq!(read, &disk[95 * 512..]);
    assert_eq!(bed.seen, vec![(HDA, Seen::Read { sector: 95, nr_sectors: 5 })]);
    // a write: the sectors that fit are written, then ABRT
    let data = pattern(10, 7);
    let (status, error, _) = pio(&mut bed, Address::Lba28(97), 10, Some(&data)).unwrap_err();
    assert_eq!((status, error), (DRDY | ERR, 0x04));
    assert_eq!(&bed.media[&HDA][97 * 512..], &data[..3 * 512]);
    assert_eq!(bed.seen[1], (HDA, Seen::Write { sector: 97, nr_sectors: 3 }));
    // entirely past the end, and a CHS sector number of 0
    assert!(pio(&mut bed, Address::Lba48(1 << 40), 1, None).is_err());
    assert!(pio(&mut bed, Address::Chs { cylinder: 0, head: 0, sector: 0 }, 1, None).is_err());
    assert_eq!(bed.seen.len(), 2);
}

#[test]
fn a_failed_request_ends_the_command_with_abort() {
    let (mut bed, disk) = disk_bed(1000, false);
    bed.fail_next = Some(HDA);
    let (status, error, read) = pio(&mut bed, Address::Lba28(0), 2, None).unwrap_err();
    assert_eq!((status, error, read.len()), (DRDY | ERR, 0x04, 0));
    bed.fail_next = Some(HDA);
    let (status, error, _) = pio(&mut bed, Address::Lba28(0), 2, Some(&pattern(2, 9))).unwrap_err();
    assert_eq!((status, error), (DRDY | ERR, 0x04));
    assert_eq!([bed.inb(0x1f2), bed.inb(0x1f3)], [2, 0], "the registers point at the unwritten sectors");
    assert_eq!(bed.media[&HDA], disk);
    // FLUSH CACHE
    bed.fail_next = Some(HDA);
    bed.outb(0x1f7, 0xe7);
    assert_eq!(bed.poll_not_busy(PRIMARY), DRDY | ERR);
    // a worker that answers with the wrong kind or length of outcome fails the command too
    bed.outb(0x1f2, 1);
    bed.outb(0x1f7, 0x20);
    let request = bed.ide.take_request().unwrap();
    bed.ide.complete(request.drive, BlockOutcome::Read(vec![0; 100]));
    assert_eq!(bed.inb(0x1f7), DRDY | ERR);
    bed.outb(0x1f7, 0xe7);
    let request = bed.ide.take_request().unwrap();
    assert_eq!(request.op, BlockOp::Flush);
    bed.ide.complete(request.drive, BlockOutcome::Written);
    assert_eq!(bed.inb(0x1f7), DRDY | ERR);
    // and the drive works afterwards
    assert_eq!(pio(&mut bed, Address::Lba28(3), 1, None).unwrap(), &disk[3 * 512..4 * 512]);
}

#[test]
fn with_the_write_cache_off_each_write_is_flushed() {
    let (mut bed, _) = disk_bed(1000, false);
    let cmd = PRIMARY.command;
    bed.outb(PRIMARY.control, NIEN);
    bed.outb(cmd + FEATURE, 0x82);
    bed.outb(cmd + COMMAND, 0xef);
    assert_eq!(bed.poll_not_busy(PRIMARY), DRDY | DSC);
    assert_eq!(bed.seen, vec![(HDA, Seen::Flush)], "disabling the cache flushes it");
    bed.outb(cmd + COMMAND, 0xec);
    let id = bed.insw(cmd + DATA, 256);
    assert_eq!(id[170] & (1 << 5), 0, "IDENTIFY word 85: write cache disabled");
    pio(&mut bed, Address::Lba28(1), 2, Some(&pattern(2, 1))).unwrap();
    assert_eq!(bed.seen[1..], [(HDA, Seen::Write { sector: 1, nr_sectors: 2 }), (HDA, Seen::Flush)]);
    // on again: writes alone
    bed.outb(cmd + FEATURE, 0x02);
    bed.outb(cmd + COMMAND, 0xef);
    pio(&mut bed, Address::Lba28(1), 2, Some(&pattern(2, 1))).unwrap();
    assert_eq!(bed.seen[3..], [(HDA, Seen::Write { sector: 1, nr_sectors: 2 })]);
}
