//! Register-level behaviour: signatures, absent drives, device select, HOB, the interrupt
//! line with nIEN, status and alternate status, SRST, access widths, and what happens to
//! commands and register writes while a drive is busy.

use alloc::vec;

use super::harness::*;
use crate::ide::{BlockOp, BlockOutcome, BlockRequest, DriveId, DriveSpec};

const DISK: Option<DriveSpec> = Some(DriveSpec::HardDisk { nr_sectors: 1000, read_only: false });
const CD: Option<DriveSpec> = Some(DriveSpec::CdRom { medium_nr_sectors: Some(400) });

fn regs(bed: &mut Bed, ports: Ports) -> [u8; 8] {
    let mut values = [0u8; 8];
    for (offset, value) in values.iter_mut().enumerate().skip(1) {
        *value = bed.inb(ports.command + offset as u16);
    }
    values
}

/// `[_, error, nsect, lbal, lbam, lbah, device, status]`
fn select(bed: &mut Bed, ports: Ports, unit: u8) {
    bed.outb(ports.command + DEVICE, 0xa0 | (unit << 4));
}

#[test]
fn power_on_signatures_absent_master_and_absent_slave() {
    let mut bed = Bed::new([[None, DISK], [CD, None]], vec![]);
    // an absent master next to a present slave: QEMU's "no device" signature, status 0x50
    select(&mut bed, PRIMARY, 0);
    assert_eq!(regs(&mut bed, PRIMARY), [0, 0, 1, 1, 0xff, 0xff, 0xa0, 0x50]);
    select(&mut bed, PRIMARY, 1);
    assert_eq!(regs(&mut bed, PRIMARY), [0, 0, 1, 1, 0, 0, 0xb0, 0x50]);
    // the CD: ATAPI signature; status 0x50 until its first reset (QEMU's ide_reset)
    assert_eq!(regs(&mut bed, SECONDARY), [0, 0, 1, 1, 0x14, 0xeb, 0xa0, 0x50]);
    // the absent slave: error and status read 0, the other registers are the shared ones
    select(&mut bed, SECONDARY, 1);
    bed.outb(SECONDARY.command + NSECT, 0x55);
    bed.outb(SECONDARY.command + LBAL, 0xaa);
    assert_eq!(regs(&mut bed, SECONDARY), [0, 0, 0x55, 0xaa, 0xff, 0xff, 0xb0, 0]);
    assert_eq!(bed.inb(SECONDARY.control), 0);
    // commands to it are ignored, and do not interrupt
    bed.outb(SECONDARY.command + COMMAND, 0xec);
    assert_eq!(bed.inb(SECONDARY.command + STATUS), 0);
    assert_eq!(bed.inw(SECONDARY.command + DATA), 0);
    assert_eq!(bed.edges, [0, 0]);
}

#[test]
fn a_channel_without_drives_reads_zero() {
    let mut bed = Bed::new([[None, None], [CD, None]], vec![]);
    for value in [0x00, 0x5a, 0xff] {
        for offset in 1..8 {
            bed.outb(PRIMARY.command + offset, value);
        }
        assert_eq!(regs(&mut bed, PRIMARY), [0; 8]);
        assert_eq!(bed.inb(PRIMARY.control), 0);
        assert_eq!(bed.inw(PRIMARY.command + DATA), 0);
        assert_eq!(bed.inl(PRIMARY.command + DATA), 0);
    }
    // a byte access to the data port reads all ones (QEMU)
    assert_eq!(bed.inb(PRIMARY.command + DATA), 0xff);
}

#[test]
fn register_writes_reach_both_drives() {
    let mut bed = Bed::new([[DISK, CD], [None, None]], vec![]);
    select(&mut bed, PRIMARY, 0);
    bed.outb(PRIMARY.command + NSECT, 0x12);
    bed.outb(PRIMARY.command + LBAH, 0x34);
    bed.outb(PRIMARY.command + DEVICE, 0xe5); // slave bit clear, LBA, head 5
    select(&mut bed, PRIMARY, 1);
    let slave = regs(&mut bed, PRIMARY);
    assert_eq!((slave[2], slave[5], slave[6]), (0x12, 0x34, 0xb0));
    bed.outb(PRIMARY.command + DEVICE, 0x0f); // bits 7 and 5 always read as 1
    assert_eq!(bed.inb(PRIMARY.command + DEVICE), 0xaf);
}

#[test]
fn hob_reads_the_previous_value_until_the_next_register_write() {
    let mut bed = Bed::new([[DISK, None], [None, None]], vec![]);
    let cmd = PRIMARY.command;
    for (offset, old, new) in
        [(FEATURE, 0x11, 0x21), (NSECT, 0x12, 0x22), (LBAL, 0x13, 0x23), (LBAM, 0x14, 0x24), (LBAH, 0x15, 0x25)]
    {
        bed.outb(cmd + offset, old);
        bed.outb(cmd + offset, new);
    }
    assert_eq!(regs(&mut bed, PRIMARY)[2..6], [0x22, 0x23, 0x24, 0x25]);
    bed.outb(PRIMARY.control, HOB);
    let hob = regs(&mut bed, PRIMARY);
    assert_eq!(hob[1..6], [0x11, 0x12, 0x13, 0x14, 0x15], "the error register reads the HOB feature (QEMU)");
    assert_eq!(hob[7], 0x50);
    // a register write clears HOB
    bed.outb(cmd + DEVICE, 0xa0);
    assert_eq!(regs(&mut bed, PRIMARY)[2..6], [0x22, 0x23, 0x24, 0x25]);
}

#[test]
fn the_interrupt_line_follows_intrq_nien_and_status_reads() {
    let mut bed = Bed::new([[DISK, None], [None, None]], vec![]);
    let cmd = PRIMARY.command;
    // IDENTIFY with interrupts enabled: one rising edge
    bed.outb(PRIMARY.control, 0x08);
    bed.outb(cmd + COMMAND, 0xec);
    assert!(bed.level(0));
    assert_eq!(bed.edges[0], 1);
    // alternate status does not acknowledge it
    assert_eq!(bed.inb(PRIMARY.control), 0x58);
    assert!(bed.level(0));
    // nIEN masks the line; clearing it shows the still pending interrupt again
    bed.outb(PRIMARY.control, 0x08 | NIEN);
    assert!(!bed.level(0));
    bed.outb(PRIMARY.control, 0x08);
    assert!(bed.level(0));
    // the status register acknowledges it
    assert_eq!(bed.inb(cmd + STATUS), 0x58);
    assert!(!bed.level(0));
    bed.insw(cmd + DATA, 256);
    assert!(!bed.level(0), "no interrupt after the last word of a PIO-in block");

    // with nIEN set nothing is latched: enabling interrupts later shows nothing
    bed.outb(PRIMARY.control, 0x08 | NIEN);
    bed.outb(cmd + COMMAND, 0xec);
    bed.insw(cmd + DATA, 256);
    bed.outb(PRIMARY.control, 0x08);
    assert!(!bed.level(0));
    // writing a command acknowledges a pending interrupt too
    bed.outb(cmd + COMMAND, 0xe5); // CHECK POWER MODE
    assert!(bed.level(0));
    bed.outb(cmd + COMMAND, 0xe5);
    assert_eq!(bed.edges[0], 3, "a new interrupt is a new edge");
}

#[test]
fn srst_shows_busy_then_each_drive_runs_its_diagnostic() {
    let mut bed = Bed::new([[DISK, CD], [None, None]], vec![]);
    let cmd = PRIMARY.command;
    bed.outb(cmd + LBAM, 0x77);
    bed.outb(PRIMARY.control, 0x08 | SRST);
    assert_eq!(bed.inb(cmd + STATUS), BSY);
    select(&mut bed, PRIMARY, 1);
    assert_eq!(bed.inb(cmd + DEVICE), 0xa0, "register writes are ignored during the reset");
    bed.outb(PRIMARY.control, 0x08);
    // the master (a disk): signature, error 1, 0x50 and an interrupt
    assert_eq!(regs(&mut bed, PRIMARY), [0, 1, 1, 1, 0, 0, 0xa0, 0x50]);
    assert_eq!(bed.edges[0], 1);
    // the slave (ATAPI): signature, error 1, status 0
    select(&mut bed, PRIMARY, 1);
    assert_eq!(regs(&mut bed, PRIMARY), [0, 1, 1, 1, 0x14, 0xeb, 0xb0, 0x00]);
    assert_eq!(bed.edges[0], 1, "ATAPI does not interrupt after its diagnostic");
}

#[test]
fn srst_leaves_the_selected_drive_selected_as_qemu_does() {
    let mut bed = Bed::new([[DISK, CD], [None, None]], vec![]);
    select(&mut bed, PRIMARY, 1);
    bed.outb(PRIMARY.control, SRST);
    bed.outb(PRIMARY.control, 0);
    // the device register reads 0xa0 but the slave still answers
    assert_eq!(regs(&mut bed, PRIMARY)[4..8], [0x14, 0xeb, 0xa0, 0x00]);
}

#[test]
fn execute_device_diagnostic_and_identify_across_device_kinds() {
    let mut bed = Bed::new([[DISK, CD], [None, None]], vec![]);
    let cmd = PRIMARY.command;
    bed.outb(PRIMARY.control, 0x08);
    // EXECUTE DEVICE DIAGNOSTIC on the disk: 0x50, error 1, interrupt
    bed.outb(cmd + LBAM, 0x99);
    bed.outb(cmd + COMMAND, 0x90);
    assert_eq!(regs(&mut bed, PRIMARY), [0, 1, 1, 1, 0, 0, 0xa0, 0x50]);
    assert_eq!(bed.edges[0], 1);
    // IDENTIFY PACKET DEVICE to a disk: abort
    bed.outb(cmd + COMMAND, 0xa1);
    assert_eq!(regs(&mut bed, PRIMARY)[1], 0x04);
    assert_eq!(bed.inb(cmd + STATUS), DRDY | ERR);
    assert_eq!(bed.edges[0], 2);
    // IDENTIFY DEVICE to ATAPI: signature, abort, interrupt
    select(&mut bed, PRIMARY, 1);
    bed.outb(cmd + LBAM, 0x99);
    bed.outb(cmd + COMMAND, 0xec);
    assert_eq!(regs(&mut bed, PRIMARY), [0, 0x04, 1, 1, 0x14, 0xeb, 0xb0, DRDY | ERR]);
    assert_eq!(bed.edges[0], 3);
    // EXECUTE DEVICE DIAGNOSTIC on ATAPI: status 0, no interrupt
    bed.outb(cmd + COMMAND, 0x90);
    assert_eq!(regs(&mut bed, PRIMARY)[1..8], [1, 1, 1, 0x14, 0xeb, 0xb0, 0]);
    assert_eq!(bed.edges[0], 3);
}

#[test]
fn identify_reads_the_same_by_words_dwords_and_a_short_last_access() {
    let mut bed = Bed::new([[DISK, None], [None, None]], vec![]);
    let cmd = PRIMARY.command;
    bed.outb(cmd + COMMAND, 0xec);
    let by_words = bed.insw(cmd + DATA, 256);
    assert_eq!(bed.inb(cmd + STATUS), 0x50);
    bed.outb(cmd + COMMAND, 0xec);
    let by_dwords = bed.insl(cmd + DATA, 128);
    assert_eq!(by_words, by_dwords);
    // 127 dwords, a word, then a dword with only... nothing left: the window ended
    bed.outb(cmd + COMMAND, 0xec);
    bed.insl(cmd + DATA, 127);
    bed.inw(cmd + DATA);
    assert_eq!(bed.inb(cmd + STATUS), 0x58);
    // a dword read with 2 bytes left returns them and ends the block
    let last = bed.inl(cmd + DATA);
    assert_eq!(last, u32::from(u16::from_le_bytes([by_words[510], by_words[511]])));
    assert_eq!(bed.inb(cmd + STATUS), 0x50);
    assert_eq!(bed.inw(cmd + DATA), 0, "no data without DRQ");
}

#[test]
fn port_access_widths_split_as_qemu_does() {
    let mut bed = Bed::new([[DISK, None], [None, None]], vec![]);
    let cmd = PRIMARY.command;
    bed.outw(cmd + NSECT, 0x3412); // two byte writes: nsect, then lbal
    assert_eq!(bed.inb(cmd + NSECT), 0x12);
    assert_eq!(bed.inb(cmd + LBAL), 0x34);
    assert_eq!(bed.inw(cmd + NSECT), 0x3412);
    assert_eq!(bed.inw(cmd + STATUS), 0xff50, "the byte after the block reads all ones");
    assert_eq!(bed.inw(PRIMARY.control), 0xff50);
    assert_eq!(bed.inl(cmd + NSECT), u32::MAX);
    assert_eq!(bed.inl(PRIMARY.control), u32::MAX);
    assert_eq!(bed.ide.read(0x3f7, 1), 0xff, "0x3f7 is not ours");
    assert_eq!(bed.ide.read(0x1f8, 2), 0xffff);
    assert_eq!(bed.ide.read(cmd + NSECT, 0), u32::MAX);
    assert_eq!(bed.ide.read(cmd + NSECT, 3), u32::MAX);
    bed.ide.write(cmd + NSECT, 4, 0x1122_3344);
    bed.ide.write(cmd + NSECT, 0, 0x55);
    assert_eq!(bed.inb(cmd + NSECT), 0x12, "other widths write nothing");
}

#[test]
fn commands_and_register_writes_while_busy_are_ignored() {
    let disk = test_disk(1000);
    let mut bed = Bed::new([[DISK, None], [None, None]], vec![(HDA, disk.clone())]);
    let cmd = PRIMARY.command;
    bed.outb(cmd + NSECT, 2);
    bed.outb(cmd + LBAL, 10);
    bed.outb(cmd + DEVICE, 0xe0);
    bed.outb(cmd + COMMAND, 0x20);
    assert_eq!(bed.inb(cmd + STATUS), DRDY | DSC | BSY);
    bed.outb(cmd + LBAL, 99);
    bed.outb(cmd + DEVICE, 0xf0);
    bed.outb(cmd + COMMAND, 0xec);
    assert_eq!(bed.inb(cmd + LBAL), 10);
    assert_eq!(bed.inb(cmd + DEVICE), 0xe0);
    bed.service_all();
    // the read goes on as if nothing had happened, and IDENTIFY never ran
    assert_eq!(bed.inb(cmd + STATUS), DRDY | DSC | DRQ);
    // and in the middle of the data phase too
    bed.outb(cmd + COMMAND, 0xec);
    assert_eq!(bed.insw(cmd + DATA, 512), &disk[10 * 512..12 * 512]);
    assert_eq!(bed.inb(cmd + STATUS), DRDY | DSC);
    assert_eq!(bed.seen, vec![(HDA, Seen::Read { sector: 10, nr_sectors: 2 })]);
}

#[test]
fn srst_forgets_requests_and_ignores_late_outcomes() {
    let mut bed = Bed::new([[DISK, None], [None, None]], vec![(HDA, test_disk(1000))]);
    let cmd = PRIMARY.command;
    // a queued request is dropped
    bed.outb(cmd + COMMAND, 0xe7);
    bed.outb(PRIMARY.control, SRST);
    bed.outb(PRIMARY.control, 0);
    assert_eq!(bed.ide.take_request(), None);
    // a taken one: its outcome is ignored, and the next request waits for it
    bed.outb(cmd + NSECT, 1);
    bed.outb(cmd + DEVICE, 0xe0);
    bed.outb(cmd + COMMAND, 0x20);
    let taken = bed.ide.take_request().unwrap();
    bed.outb(PRIMARY.control, SRST);
    bed.outb(PRIMARY.control, 0);
    assert_eq!(bed.inb(cmd + STATUS), 0x50);
    bed.outb(cmd + COMMAND, 0xe7); // FLUSH CACHE
    assert_eq!(bed.inb(cmd + STATUS), DRDY | BSY);
    assert_eq!(bed.ide.take_request(), None, "not while the orphan is out");
    bed.ide.complete(taken.drive, BlockOutcome::Read(vec![0; 512]));
    assert_eq!(bed.inb(cmd + STATUS), DRDY | BSY);
    assert_eq!(bed.ide.take_request(), Some(BlockRequest { drive: HDA, op: BlockOp::Flush }));
    bed.ide.complete(HDA, BlockOutcome::Flushed);
    assert_eq!(bed.inb(cmd + STATUS), 0x50);
    // outcomes nobody asked for are ignored
    bed.ide.complete(HDA, BlockOutcome::Written);
    bed.ide.complete(DriveId { channel: 7, unit: 9 }, BlockOutcome::Failed);
    assert_eq!(bed.inb(cmd + STATUS), 0x50);
}

#[test]
fn device_reset_stops_an_atapi_command_even_while_busy() {
    let mut bed = Bed::new([[None, None], [CD, None]], vec![(HDC, test_iso(100, 0))]);
    let cmd = SECONDARY.command;
    bed.outb(cmd + LBAM, 0x00);
    bed.outb(cmd + LBAH, 0x08);
    bed.outb(cmd + COMMAND, 0xa0);
    bed.outsw(cmd + DATA, &[0x28, 0, 0, 0, 0, 5, 0, 0, 1, 0, 0, 0]); // READ(10) LBA 5
    assert_eq!(bed.inb(cmd + STATUS) & BSY, BSY);
    let taken = bed.ide.take_request().unwrap();
    bed.outb(cmd + COMMAND, 0x08); // DEVICE RESET
    assert_eq!(regs(&mut bed, SECONDARY), [0, 0, 1, 1, 0x14, 0xeb, 0xa0, 0x00]);
    bed.ide.complete(taken.drive, BlockOutcome::Failed);
    assert_eq!(bed.inb(cmd + STATUS), 0x00);
    assert_eq!(bed.edges[1], 0);
}

#[test]
fn other_ata_commands_as_qemu_answers_them() {
    let mut bed = Bed::new([[DISK, None], [None, None]], vec![]);
    let cmd = PRIMARY.command;
    let run = |bed: &mut Bed, command: u8| {
        bed.outb(cmd + COMMAND, command);
        (bed.inb(cmd + STATUS), bed.inb(cmd + ERROR))
    };
    // no multiple-sector mode, no SMART, no NOP, no DATA SET MANAGEMENT
    for command in [0xc4, 0xc5, 0x29, 0x39, 0xb0, 0x00, 0x06, 0xa0, 0x08] {
        assert_eq!(run(&mut bed, command), (DRDY | ERR, 0x04), "command {command:#x}");
    }
    bed.outb(cmd + NSECT, 16);
    assert_eq!(run(&mut bed, 0xc6), (DRDY | ERR, 0x04), "SET MULTIPLE 16");
    bed.outb(cmd + NSECT, 0);
    assert_eq!(run(&mut bed, 0xc6), (DRDY | DSC, 0), "SET MULTIPLE 0 (off)");
    // power management and friends complete at once
    assert_eq!(run(&mut bed, 0xe0), (DRDY, 0), "STANDBY IMMEDIATE");
    assert_eq!(run(&mut bed, 0xe1), (DRDY, 0), "IDLE IMMEDIATE");
    assert_eq!(run(&mut bed, 0x10), (DRDY | DSC, 0), "RECALIBRATE");
    assert_eq!(run(&mut bed, 0x70), (DRDY | DSC, 0), "SEEK");
    assert_eq!(run(&mut bed, 0x91), (DRDY | DSC, 0), "INITIALIZE DEVICE PARAMETERS");
    assert_eq!(run(&mut bed, 0xe5), (DRDY | DSC, 0), "CHECK POWER MODE");
    assert_eq!(bed.inb(cmd + NSECT), 0xff, "active or idle");
    // SET FEATURES: known subcommands pass, others abort
    for (feature, nsect, expected) in [
        (0x03, 0x0c, 0),
        (0x03, 0x22, 0),
        (0x03, 0x45, 0),
        (0x03, 0x18, 0x04),
        (0xaa, 0, 0),
        (0x55, 0, 0),
        (0x66, 0, 0),
        (0x33, 0, 0x04),
    ] {
        bed.outb(cmd + FEATURE, feature);
        bed.outb(cmd + NSECT, nsect);
        let (status, error) = run(&mut bed, 0xef);
        assert_eq!(error, expected, "SET FEATURES {feature:#x}/{nsect:#x}");
        assert_eq!(status, if expected == 0 { DRDY | DSC } else { DRDY | ERR });
    }
    // READ NATIVE MAX ADDRESS (EXT): the last sector
    bed.outb(cmd + DEVICE, 0xe0);
    run(&mut bed, 0xf8);
    assert_eq!(regs(&mut bed, PRIMARY)[3..7], [0xe7, 0x03, 0x00, 0xe0]);
    bed.outb(cmd + DEVICE, 0xe0);
    run(&mut bed, 0x27);
    assert_eq!(regs(&mut bed, PRIMARY)[3..6], [0xe7, 0x03, 0x00]);
    bed.outb(PRIMARY.control, HOB);
    assert_eq!(regs(&mut bed, PRIMARY)[3..6], [0, 0, 0]);
}
