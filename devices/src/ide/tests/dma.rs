//! Bus-master DMA: the BMIDE registers one by one, READ/WRITE DMA (EXT) as Linux's
//! ata_piix and libata-sff (`ata_bmdma_setup`, `ata_bmdma_start`, `ata_bmdma_stop`) and
//! SeaBIOS (`ata_try_dma`, `ata_dma_transfer`) drive them, and PRD tables that are wrong.

use alloc::vec;
use alloc::vec::Vec;

use super::harness::*;
use crate::ide::DriveSpec;

/// BMIDE register offsets of the primary channel.
const BM_CMD: u16 = 0;
const BM_STATUS: u16 = 2;
const BM_PRD: u16 = 4;
const BM_START: u8 = 0x01;
const BM_TO_MEMORY: u8 = 0x08;
const BM_ACTIVE: u8 = 0x01;
const BM_ERROR: u8 = 0x02;
const BM_INTR: u8 = 0x04;

const NR_SECTORS: usize = 4096;
/// Where the tests put the PRD table and the data buffers.
const TABLE: u32 = 0x1000;

fn disk() -> Vec<u8> {
    (0..NR_SECTORS * 512).map(|i| (i / 512 * 13 + i * 7) as u8).collect()
}

fn new_bed() -> Bed {
    Bed::disk_and_cd(disk(), None)
}

/// A PRD table in guest RAM at [`TABLE`]: (address, bytes) with EOT on the last.
fn put_table(bed: &Bed, entries: &[(u32, u32)]) {
    let mut bytes = Vec::new();
    for (i, &(gpa, len)) in entries.iter().enumerate() {
        let eot = if i + 1 == entries.len() { 1u32 << 31 } else { 0 };
        bytes.extend_from_slice(&gpa.to_le_bytes());
        bytes.extend_from_slice(&((len & 0xffff) | eot).to_le_bytes());
    }
    bed.poke(u64::from(TABLE), &bytes);
}

/// `ata_bmdma_setup` + the command + `ata_bmdma_start`, LBA48 when `ext`.
fn linux_dma(bed: &mut Bed, to_memory: bool, lba: u64, nr_sectors: u16, ext: bool) {
    let cmd = PRIMARY.command;
    bed.bm_outl(BM_PRD, TABLE);
    let old = bed.bm_inb(BM_CMD) & !(BM_START | BM_TO_MEMORY);
    bed.bm_outb(BM_CMD, old | if to_memory { BM_TO_MEMORY } else { 0 });
    let status = bed.bm_inb(BM_STATUS);
    bed.bm_outb(BM_STATUS, status | BM_INTR | BM_ERROR);
    bed.outb(cmd + DEVICE, 0xe0);
    if ext {
        bed.outb(cmd + NSECT, (nr_sectors >> 8) as u8);
        bed.outb(cmd + LBAL, (lba >> 24) as u8);
        bed.outb(cmd + LBAM, (lba >> 32) as u8);
        bed.outb(cmd + LBAH, (lba >> 40) as u8);
    }
    bed.outb(cmd + NSECT, nr_sectors as u8);
    bed.outb(cmd + LBAL, lba as u8);
    bed.outb(cmd + LBAM, (lba >> 8) as u8);
    bed.outb(cmd + LBAH, (lba >> 16) as u8);
    if !ext {
        bed.outb(cmd + DEVICE, 0xe0 | ((lba >> 24) as u8 & 0x0f));
    }
    let command = match (to_memory, ext) {
        (true, false) => 0xc8,
        (true, true) => 0x25,
        (false, false) => 0xca,
        (false, true) => 0x35,
    };
    bed.outb(cmd + COMMAND, command);
    let command_register = bed.bm_inb(BM_CMD);
    bed.bm_outb(BM_CMD, command_register | BM_START);
}

/// The interrupt handler (`ata_bmdma_interrupt` for a DMA command): BM status, stop,
/// ATA status. Returns (BM status before the stop, ATA status).
fn linux_dma_interrupt(bed: &mut Bed) -> (u8, u8) {
    bed.wait_irq(0);
    let host_stat = bed.bm_inb(BM_STATUS);
    let command_register = bed.bm_inb(BM_CMD);
    bed.bm_outb(BM_CMD, command_register & !BM_START);
    let status = bed.inb(PRIMARY.command + STATUS);
    bed.bm_outb(BM_STATUS, host_stat);
    (host_stat, status)
}

fn set_features_xfer(bed: &mut Bed, mode: u8) {
    let cmd = PRIMARY.command;
    bed.outb(cmd + DEVICE, 0xa0);
    bed.outb(cmd + FEATURE, 0x03);
    bed.outb(cmd + NSECT, mode);
    bed.outb(cmd + COMMAND, 0xef);
    bed.wait_irq(0);
    assert_eq!(bed.inb(cmd + STATUS), DRDY | DSC);
}

fn identify_word(bed: &mut Bed, index: usize) -> u16 {
    let cmd = PRIMARY.command;
    bed.outb(cmd + DEVICE, 0xa0);
    bed.outb(cmd + COMMAND, 0xec);
    bed.wait_irq(0);
    assert_eq!(bed.inb(cmd + STATUS), DRDY | DSC | DRQ);
    let data = bed.insw(cmd + DATA, 256);
    u16::from_le_bytes([data[index * 2], data[index * 2 + 1]])
}

#[test]
fn bmide_registers_as_qemu_has_them() {
    let mut bed = new_bed();
    assert_eq!([bed.bm_inb(0), bed.bm_inb(2), bed.bm_inb(8), bed.bm_inb(10)], [0; 4], "all zero at reset");
    bed.bm_outb(BM_CMD, 0xff);
    assert_eq!(bed.bm_inb(BM_CMD), 0x09, "only start and direction are kept");
    assert_eq!(bed.bm_inb(BM_STATUS), BM_ACTIVE, "start sets ACTIVE");
    bed.bm_outb(BM_STATUS, 0xff);
    assert_eq!(bed.bm_inb(BM_STATUS), BM_ACTIVE | 0x60, "drive-capable bits kept; ACTIVE read-only");
    bed.bm_outb(BM_CMD, 0x08);
    assert_eq!(bed.bm_inb(BM_STATUS), 0x60, "stop clears ACTIVE");
    bed.bm_outl(BM_PRD, 0x1234_5677);
    assert_eq!(bed.ide.bmdma_read(BM_PRD, 4), 0x1234_5674);
    assert_eq!(bed.ide.bmdma_read(BM_CMD, 2), 0xffff, "word reads of the command byte are all ones");
    assert_eq!(bed.ide.bmdma_read(BM_STATUS, 4), 0xffff_ffff);
    assert_eq!(bed.ide.bmdma_read(1, 1), 0xff, "an unused byte");
    assert_eq!(bed.ide.bmdma_read(16, 1), 0xff, "past BAR4");
    assert_eq!([bed.bm_inb(8), bed.bm_inb(10)], [0, 0], "the secondary channel is apart");
    // Any interrupt of the channel sets INTR (nIEN clear), as QEMU's bmdma_irq.
    set_features_xfer(&mut bed, 0x22);
    assert_eq!(bed.bm_inb(BM_STATUS) & BM_INTR, BM_INTR);
    bed.bm_outb(BM_STATUS, BM_INTR);
    assert_eq!(bed.bm_inb(BM_STATUS) & BM_INTR, 0, "write 1 to clear");
}

#[test]
fn set_features_selects_the_mode_identify_shows() {
    let mut bed = new_bed();
    assert_eq!(identify_word(&mut bed, 63), 0x0007);
    set_features_xfer(&mut bed, 0x22); // libata: MWDMA2 on a PIIX3
    assert_eq!(identify_word(&mut bed, 63), 0x0407);
    assert_eq!(identify_word(&mut bed, 88), 0x003f);
    set_features_xfer(&mut bed, 0x45); // UDMA5
    assert_eq!((identify_word(&mut bed, 63), identify_word(&mut bed, 88)), (0x0007, 0x203f));
    set_features_xfer(&mut bed, 0x0c); // PIO4
    assert_eq!(identify_word(&mut bed, 88), 0x003f);
}

#[test]
fn linux_reads_by_dma_into_its_sg_list() {
    let mut bed = new_bed();
    set_features_xfer(&mut bed, 0x22);
    // three pieces: a page, a 64 KiB entry (count 0), half a page
    put_table(&bed, &[(0x10_0000, 0x1000), (0x20_0000, 0x1_0000), (0x30_0000, 0x800)]);
    let nr_sectors = (0x1000 + 0x1_0000 + 0x800) / 512;
    linux_dma(&mut bed, true, 100, nr_sectors as u16, false);
    assert_eq!(bed.bm_inb(BM_STATUS) & BM_ACTIVE, BM_ACTIVE);
    let (host_stat, status) = linux_dma_interrupt(&mut bed);
    assert_eq!(host_stat & (BM_ACTIVE | BM_ERROR | BM_INTR), BM_INTR, "done, no error");
    assert_eq!(status, DRDY | DSC);
    let expected = &disk()[100 * 512..(100 + nr_sectors) * 512];
    let mut got = bed.peek(0x10_0000, 0x1000);
    got.extend(bed.peek(0x20_0000, 0x1_0000));
    got.extend(bed.peek(0x30_0000, 0x800));
    assert_eq!(got, expected);
    assert_eq!(bed.seen, [(HDA, Seen::DmaRead { sector: 100, nr_sectors: nr_sectors as u32 })], "one request");
    assert_eq!(bed.peek(0x30_0800, 16), vec![0; 16], "nothing past the table");
}

#[test]
fn linux_writes_by_dma_ext_and_flushes_when_the_cache_is_off() {
    let mut bed = new_bed();
    let lba = 3000u64;
    let data: Vec<u8> = (0..0x2000).map(|i| (i * 31 + 5) as u8).collect();
    bed.poke(0x40_000, &data[..0x1000]);
    bed.poke(0x80_000, &data[0x1000..]);
    put_table(&bed, &[(0x40_000, 0x1000), (0x80_000, 0x1000)]);
    linux_dma(&mut bed, false, lba, 16, true);
    let (host_stat, status) = linux_dma_interrupt(&mut bed);
    assert_eq!((host_stat & 0x07, status), (BM_INTR, DRDY | DSC));
    assert_eq!(&bed.media[&HDA][lba as usize * 512..lba as usize * 512 + 0x2000], &data[..]);
    // LBA48 registers point past the transfer
    let cmd = PRIMARY.command;
    assert_eq!(bed.inb(cmd + LBAL), ((lba + 16) & 0xff) as u8);
    // SET FEATURES 0x82: write cache off; the next DMA write carries a flush
    bed.outb(cmd + FEATURE, 0x82);
    bed.outb(cmd + COMMAND, 0xef);
    bed.wait_irq(0);
    bed.inb(cmd + STATUS);
    linux_dma(&mut bed, false, lba, 16, true);
    linux_dma_interrupt(&mut bed);
    assert_eq!(bed.seen.last(), Some(&(HDA, Seen::DmaWrite { sector: lba, nr_sectors: 16, flush: true })));
}

#[test]
fn seabios_starts_after_the_command_and_polls_intr() {
    // ata_try_dma builds the table and clears INTR|ERROR; send_cmd; ata_dma_transfer
    // sets START and polls BM status for INTR, then clears START.
    let mut bed = new_bed();
    put_table(&bed, &[(0x7c00, 512)]);
    bed.bm_outl(BM_PRD, TABLE);
    bed.bm_outb(BM_CMD, BM_TO_MEMORY);
    bed.bm_outb(BM_STATUS, BM_ERROR | BM_INTR);
    let cmd = PRIMARY.command;
    for (reg, value) in [(FEATURE, 0), (NSECT, 1), (LBAL, 0), (LBAM, 0), (LBAH, 0), (DEVICE, 0xe0)] {
        bed.outb(cmd + reg, value);
    }
    bed.outb(cmd + COMMAND, 0xc8);
    assert!(bed.seen.is_empty(), "nothing moves before START");
    assert_eq!(bed.inb(cmd + STATUS), DRDY | DSC | DRQ, "QEMU's status while waiting for the bus master");
    bed.bm_outb(BM_CMD, BM_TO_MEMORY | BM_START);
    let mut polls = 0;
    while bed.bm_inb(BM_STATUS) & BM_INTR == 0 {
        bed.service_all();
        polls += 1;
        assert!(polls < 10, "INTR never came");
    }
    assert_eq!(bed.bm_inb(BM_STATUS) & (BM_INTR | BM_ACTIVE), BM_INTR);
    bed.bm_outb(BM_CMD, BM_TO_MEMORY);
    assert_eq!(bed.inb(cmd + STATUS), DRDY | DSC);
    assert_eq!(bed.peek(0x7c00, 512), disk()[..512]);
}

#[test]
fn start_before_the_command_also_runs_and_a_longer_table_leaves_active() {
    let mut bed = new_bed();
    put_table(&bed, &[(0x10_000, 0x2000)]);
    bed.bm_outl(BM_PRD, TABLE);
    bed.bm_outb(BM_CMD, BM_TO_MEMORY | BM_START);
    let cmd = PRIMARY.command;
    for (reg, value) in [(NSECT, 2), (LBAL, 9), (LBAM, 0), (LBAH, 0), (DEVICE, 0xe0)] {
        bed.outb(cmd + reg, value);
    }
    bed.outb(cmd + COMMAND, 0xc8);
    bed.service_all();
    assert!(bed.take_irq(0));
    assert_eq!(bed.bm_inb(BM_STATUS) & (BM_INTR | BM_ACTIVE), BM_INTR | BM_ACTIVE, "QEMU keeps ACTIVE");
    assert_eq!(bed.peek(0x10_000, 1024), disk()[9 * 512..11 * 512]);
    assert_eq!(bed.peek(0x10_400, 16), vec![0; 16]);
}

/// Runs a READ DMA of `nr_sectors` with the table as it is and returns (BM status, ATA
/// status, ATA error, requests the worker saw).
fn malformed(bed: &mut Bed, nr_sectors: u16) -> (u8, u8, u8, usize) {
    linux_dma(bed, true, 0, nr_sectors, false);
    let (host_stat, status) = linux_dma_interrupt(bed);
    let error = bed.inb(PRIMARY.command + ERROR);
    (host_stat & 0x07, status, error, bed.seen.len())
}

#[test]
fn malformed_prd_tables_end_the_command_with_an_error() {
    let failed = (BM_INTR | BM_ERROR, DRDY | ERR, 0x04);
    // too short: the end bit comes before the transfer is covered
    let mut bed = new_bed();
    put_table(&bed, &[(0x10_000, 512)]);
    let (bm, status, error, seen) = malformed(&mut bed, 2);
    assert_eq!(((bm, status, error), seen), (failed, 0), "no data moves");
    // no end bit within 512 entries
    let mut bed = new_bed();
    let entries: Vec<u8> =
        (0..600u32).flat_map(|i| [(0x10_000 + i * 2).to_le_bytes(), 2u32.to_le_bytes()]).flatten().collect();
    bed.poke(u64::from(TABLE), &entries);
    let (bm, status, error, seen) = malformed(&mut bed, 8);
    assert_eq!(((bm, status, error), seen), (failed, 0));
    // a buffer beyond guest RAM: the worker's copy fails
    let mut bed = new_bed();
    put_table(&bed, &[(0xf000_0000, 512)]);
    let (bm, status, error, seen) = malformed(&mut bed, 1);
    assert_eq!(((bm, status, error), seen), (failed, 1));
    // a table beyond guest RAM
    let mut bed = new_bed();
    bed.bm_outl(BM_PRD, 0xfff0_0000);
    linux_dma_with_table_at(&mut bed, 0xfff0_0000);
    let (host_stat, status) = linux_dma_interrupt(&mut bed);
    assert_eq!((host_stat & 0x07, status), (BM_INTR | BM_ERROR, DRDY | ERR));
    // bus mastering off in the PCI command register
    let mut bed = new_bed();
    bed.bus_master = false;
    put_table(&bed, &[(0x10_000, 512)]);
    let (bm, status, error, seen) = malformed(&mut bed, 1);
    assert_eq!(((bm, status, error), seen), (failed, 0));
    // a disk error is an ATA error without the bus master's
    let mut bed = new_bed();
    bed.fail_next = Some(HDA);
    put_table(&bed, &[(0x10_000, 512)]);
    let (bm, status, error, _) = malformed(&mut bed, 1);
    assert_eq!((bm, status, error), (BM_INTR, DRDY | ERR, 0x04));
    // and the drive takes the next command as usual
    put_table(&bed, &[(0x10_000, 512)]);
    let (bm, status, _, _) = malformed(&mut bed, 1);
    assert_eq!((bm, status), (BM_INTR, DRDY | DSC));
}

/// A READ DMA of one sector whose PRD table address the test set already.
fn linux_dma_with_table_at(bed: &mut Bed, table: u32) {
    let cmd = PRIMARY.command;
    bed.bm_outl(BM_PRD, table);
    bed.bm_outb(BM_CMD, BM_TO_MEMORY);
    for (reg, value) in [(NSECT, 1), (LBAL, 0), (LBAM, 0), (LBAH, 0), (DEVICE, 0xe0)] {
        bed.outb(cmd + reg, value);
    }
    bed.outb(cmd + COMMAND, 0xc8);
    bed.bm_outb(BM_CMD, BM_TO_MEMORY | BM_START);
}

#[test]
fn dma_commands_out_of_range_or_to_a_read_only_disk_abort_at_once() {
    let mut bed = new_bed();
    put_table(&bed, &[(0x10_000, 0x1000)]);
    let cmd = PRIMARY.command;
    linux_dma(&mut bed, true, NR_SECTORS as u64 - 1, 2, false);
    bed.wait_irq(0);
    assert_eq!((bed.inb(cmd + STATUS), bed.inb(cmd + ERROR)), (DRDY | ERR, 0x04));
    assert!(bed.seen.is_empty());
    let mut bed = Bed::new(
        [[Some(DriveSpec::HardDisk { nr_sectors: 64, read_only: true }), None], [None, None]],
        vec![(HDA, vec![0; 64 * 512])],
    );
    put_table(&bed, &[(0x10_000, 512)]);
    linux_dma(&mut bed, false, 0, 1, false);
    bed.wait_irq(0);
    assert_eq!(bed.inb(cmd + STATUS), DRDY | ERR);
    assert!(bed.seen.is_empty());
}

#[test]
fn srst_forgets_a_dma_command_waiting_for_start() {
    let mut bed = new_bed();
    put_table(&bed, &[(0x10_000, 512)]);
    let cmd = PRIMARY.command;
    for (reg, value) in [(NSECT, 1), (DEVICE, 0xe0)] {
        bed.outb(cmd + reg, value);
    }
    bed.outb(cmd + COMMAND, 0xc8);
    bed.outb(PRIMARY.control, SRST);
    bed.outb(PRIMARY.control, 0);
    bed.bm_outl(BM_PRD, TABLE);
    bed.bm_outb(BM_CMD, BM_TO_MEMORY | BM_START);
    bed.service_all();
    assert!(bed.seen.is_empty(), "no transfer after the reset");
}
