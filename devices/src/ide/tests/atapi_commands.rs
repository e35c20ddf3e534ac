//! The ATAPI command table one command at a time: replies byte for byte where QEMU's are
//! fixed, sense data for every refusal, the PACKET protocol's edges (DMA and overlap bits,
//! byte count limits of 0, 1 and odd, odd allocation lengths), partial last blocks, raw
//! READ CD, failed reads and a machine reset.

use alloc::vec;
use alloc::vec::Vec;

use super::harness::*;
use crate::ide::{BlockOutcome, DriveSpec, IdeEvent};

/// A CHECK CONDITION as (sense key, ASC) from REQUEST SENSE.
type Sense = (u8, u8);

fn cd_bed(medium: Option<Vec<u8>>) -> Bed {
    let spec = DriveSpec::CdRom { medium_nr_sectors: medium.as_ref().map(|m| m.len() as u64 / 512) };
    let media = medium.map(|m| vec![(HDC, m)]).unwrap_or_default();
    Bed::new([[None, None], [Some(spec), None]], media)
}

/// PACKET by polling (nIEN set) with 16-bit transfers; the data, or (status, error).
fn packet_raw(bed: &mut Bed, cdb: &[u8], limit: u16, feature: u8) -> Result<Vec<u8>, (u8, u8)> {
    let cmd = SECONDARY.command;
    bed.outb(SECONDARY.control, NIEN);
    bed.outb(cmd + FEATURE, feature);
    bed.outb(cmd + LBAM, limit as u8);
    bed.outb(cmd + LBAH, (limit >> 8) as u8);
    bed.outb(cmd + DEVICE, 0xa0);
    bed.outb(cmd + COMMAND, 0xa0);
    let status = bed.poll_not_busy(SECONDARY);
    if status & DRQ == 0 {
        return Err((status, bed.inb(cmd + ERROR)));
    }
    let mut padded = [0u8; 12];
    padded[..cdb.len()].copy_from_slice(cdb);
    bed.outsw(cmd + DATA, &padded);
    let mut data = Vec::new();
    for _ in 0..100_000 {
        let status = bed.poll_not_busy(SECONDARY);
        if status & DRQ == 0 {
            assert_eq!(bed.inb(cmd + NSECT) & 3, 3, "IO|CoD at the end");
            if status & ERR != 0 {
                return Err((status, bed.inb(cmd + ERROR)));
            }
            return Ok(data);
        }
        assert_eq!(bed.inb(cmd + NSECT) & 3, 2, "IO for data");
        let len = usize::from(bed.inb(cmd + LBAM)) | usize::from(bed.inb(cmd + LBAH)) << 8;
        assert!(len > 0 && len <= usize::from(limit.max(2)), "block of {len} bytes with a limit of {limit}");
        data.extend(bed.insw(cmd + DATA, len.div_ceil(2)).into_iter().take(len));
    }
    panic!("the data phase never ends");
}

/// A command and, when it fails, REQUEST SENSE.
fn packet(bed: &mut Bed, cdb: &[u8], limit: u16) -> Result<Vec<u8>, Sense> {
    packet_raw(bed, cdb, limit, 0).map_err(|(status, error)| {
        assert_eq!(status, DRDY | ERR);
        let sense = packet_raw(bed, &[0x03, 0, 0, 0, 18], 18, 0).expect("REQUEST SENSE");
        assert_eq!(sense[2] << 4, error);
        (sense[2], sense[12])
    })
}

const ILLEGAL_REQUEST_INVALID_FIELD: Sense = (5, 0x24);

#[test]
fn inquiry_standard_and_vital_product_data() {
    let mut bed = cd_bed(Some(plain_cd(20, 0)));
    let standard = packet(&mut bed, &[0x12, 0, 0, 0, 96], 96).unwrap();
    assert_eq!(standard.len(), 36);
    assert_eq!(&standard[..5], &[0x05, 0x80, 0x00, 0x21, 31]);
    assert_eq!(&standard[8..36], b"QEMU    QEMU DVD-ROM    2.5+");
    let pages = packet(&mut bed, &[0x12, 1, 0x00, 0, 96], 96).unwrap();
    assert_eq!(pages, [0x05, 0x00, 0, 2, 0x00, 0x83]);
    let ids = packet(&mut bed, &[0x12, 1, 0x83, 0, 255], 255).unwrap();
    assert_eq!(ids.len(), 4 + 24 + 72);
    assert_eq!(&ids[4..16], b"\x02\x00\x00\x14QM00003 ");
    assert_eq!(&ids[28..44], b"\x02\x01\x00\x44ATA     QEMU");
    let short = packet(&mut bed, &[0x12, 1, 0x83, 0, 40], 40).unwrap();
    assert_eq!(short.len(), 28, "the second descriptor does not fit");
    assert_eq!(packet(&mut bed, &[0x12, 1, 0x83, 0, 20], 20), Err((5, 0x4b)));
    assert_eq!(packet(&mut bed, &[0x12, 1, 0x80, 0, 96], 96), Err(ILLEGAL_REQUEST_INVALID_FIELD));
    // an odd allocation length: 5 bytes, the last word half used
    assert_eq!(packet(&mut bed, &[0x12, 0, 0, 0, 5], 5).unwrap(), &standard[..5]);
}

#[test]
fn mode_sense_pages() {
    let mut bed = cd_bed(Some(plain_cd(20, 0)));
    let recovery = packet(&mut bed, &[0x5a, 0, 0x01, 0, 0, 0, 0, 0, 255, 0], 255).unwrap();
    assert_eq!(recovery, [0, 14, 0x70, 0, 0, 0, 0, 0, 0x01, 6, 0, 5, 0, 0, 0, 0]);
    let audio = packet(&mut bed, &[0x5a, 0, 0x0e, 0, 0, 0, 0, 0, 255, 0], 255).unwrap();
    assert_eq!(audio.len(), 24);
    assert_eq!(&audio[..10], &[0, 22, 0x70, 0, 0, 0, 0, 0, 0x0e, 14]);
    let caps = packet(&mut bed, &[0x5a, 0, 0x2a, 0, 0, 0, 0, 0, 255, 0], 255).unwrap();
    assert_eq!(
        caps,
        [
            0, 28, 0x70, 0, 0, 0, 0, 0, 0x2a, 20, 0x3b, 0, 0x71, 0x60, 0x29, 0, 0x02, 0xc0, 0, 2, 0x02, 0x00, 0x02,
            0xc0, 0, 0, 0, 0, 0, 0
        ]
    );
    // all pages: the three above after one header
    let all = packet(&mut bed, &[0x5a, 0, 0x3f, 0, 0, 0, 0, 0, 255, 0], 255).unwrap();
    assert_eq!(all.len(), 8 + 8 + 16 + 22);
    assert_eq!(&all[..2], &[0, 52]);
    assert_eq!((all[8], all[16], all[32]), (0x01, 0x0e, 0x2a));
    // locked: capabilities byte 6 bit 1
    packet(&mut bed, &[0x1e, 0, 0, 0, 1, 0], 0).unwrap();
    let caps = packet(&mut bed, &[0x5a, 0, 0x2a, 0, 0, 0, 0, 0, 255, 0], 255).unwrap();
    assert_eq!(caps[14], 0x2b);
    // allocation length limits the reply
    assert_eq!(packet(&mut bed, &[0x5a, 0, 0x2a, 0, 0, 0, 0, 0, 8, 0], 255).unwrap().len(), 8);
    // changeable, default, saved values; unknown pages
    assert_eq!(packet(&mut bed, &[0x5a, 0, 0x6a, 0, 0, 0, 0, 0, 255, 0], 255), Err(ILLEGAL_REQUEST_INVALID_FIELD));
    assert_eq!(packet(&mut bed, &[0x5a, 0, 0xaa, 0, 0, 0, 0, 0, 255, 0], 255), Err(ILLEGAL_REQUEST_INVALID_FIELD));
    assert_eq!(packet(&mut bed, &[0x5a, 0, 0xea, 0, 0, 0, 0, 0, 255, 0], 255), Err((5, 0x39)));
    assert_eq!(packet(&mut bed, &[0x5a, 0, 0x05, 0, 0, 0, 0, 0, 255, 0], 255), Err(ILLEGAL_REQUEST_INVALID_FIELD));
}

#[test]
fn read_toc_formats() {
    let mut bed = cd_bed(Some(plain_cd(1000, 0)));
    let toc = packet(&mut bed, &[0x43, 0, 0, 0, 0, 0, 0, 0, 100, 0], 100).unwrap();
    assert_eq!(toc, [0, 18, 1, 1, 0, 0x14, 1, 0, 0, 0, 0, 0, 0, 0x16, 0xaa, 0, 0, 0, 0x03, 0xe8]);
    let lead_out_only = packet(&mut bed, &[0x43, 0, 0, 0, 0, 0, 0xaa, 0, 100, 0], 100).unwrap();
    assert_eq!(lead_out_only, [0, 10, 1, 1, 0, 0x16, 0xaa, 0, 0, 0, 0x03, 0xe8]);
    assert_eq!(packet(&mut bed, &[0x43, 0, 0, 0, 0, 0, 2, 0, 100, 0], 100), Err(ILLEGAL_REQUEST_INVALID_FIELD));
    let session = packet(&mut bed, &[0x43, 0, 0, 0, 0, 0, 0, 0, 100, 0x40], 100).unwrap();
    assert_eq!(session, [0, 0x0a, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0]);
    let raw = packet(&mut bed, &[0x43, 2, 0, 0, 0, 0, 0, 0, 100, 0x80], 100).unwrap();
    assert_eq!(raw.len(), 48);
    assert_eq!(&raw[26..33], &[1, 0x14, 0, 0xa2, 0, 0, 0], "lead-out point");
    assert_eq!(&raw[33..37], &[0, 0, 15, 25], "1000 blocks + 150 frames = 00:15:25");
    assert_eq!(packet(&mut bed, &[0x43, 0, 0, 0, 0, 0, 0, 0, 100, 0xc0], 100), Err(ILLEGAL_REQUEST_INVALID_FIELD));
}

#[test]
fn configuration_disc_information_dvd_structure_and_other_small_commands() {
    let mut bed = cd_bed(Some(plain_cd(20, 0)));
    let config = packet(&mut bed, &[0x46, 0, 0, 0, 0, 0, 0, 0x10, 0, 0], 0xfffe).unwrap();
    assert_eq!(config, [0, 0, 0, 16, 0, 0, 0, 0x08, 0, 0, 3, 8, 0, 0x10, 0, 0, 0, 0x08, 1, 0]);
    assert_eq!(packet(&mut bed, &[0x46, 0, 0, 1, 0, 0, 0, 0, 64, 0], 64), Err(ILLEGAL_REQUEST_INVALID_FIELD));
    let info = packet(&mut bed, &[0x51, 0, 0, 0, 0, 0, 0, 0, 64, 0], 64).unwrap();
    assert_eq!(&info[..8], &[0, 32, 0x0e, 1, 1, 1, 1, 0x20]);
    assert_eq!(info.len(), 34);
    assert_eq!(packet(&mut bed, &[0x51, 1, 0, 0, 0, 0, 0, 0, 64, 0], 64), Err(ILLEGAL_REQUEST_INVALID_FIELD));
    // READ DVD STRUCTURE on a CD
    assert_eq!(packet(&mut bed, &[0xad, 0, 0, 0, 0, 0, 0, 0, 0x08, 0x04, 0, 0], 0x804), Err((5, 0x30)));
    let structures = packet(&mut bed, &[0xad, 0, 0, 0, 0, 0, 0, 0xff, 0, 64, 0, 0], 64).unwrap();
    assert_eq!(&structures[..8], &[0, 18, 0, 0, 0x00, 0x40, 0x08, 0x04]);
    let mechanism = packet(&mut bed, &[0xbd, 0, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0], 8).unwrap();
    assert_eq!(mechanism, [0, 0, 0, 0, 0, 1, 0, 0]);
    packet(&mut bed, &[0xbb, 0, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0], 0).unwrap();
    packet(&mut bed, &[0x2b, 0, 0, 0, 0, 19, 0, 0, 0, 0], 0).unwrap();
    assert_eq!(packet(&mut bed, &[0x2b, 0, 0, 0, 0, 20, 0, 0, 0, 0], 0), Err((5, 0x21)));
    // opcodes without a handler, asynchronous GESN, GESN without the media class
    for opcode in [0x1a, 0x55, 0x2a, 0xa0, 0xff] {
        assert_eq!(packet(&mut bed, &[opcode], 8), Err((5, 0x20)), "opcode {opcode:#x}");
    }
    assert_eq!(packet(&mut bed, &[0x4a, 0, 0, 0, 0x10, 0, 0, 0, 8, 0], 8), Err(ILLEGAL_REQUEST_INVALID_FIELD));
    assert_eq!(packet(&mut bed, &[0x4a, 1, 0, 0, 0x02, 0, 0, 0, 8, 0], 8).unwrap(), [0, 0, 0x80, 0x10]);
}

#[test]
fn a_dvd_sized_medium_is_a_dvd() {
    // more than 80 minutes of CD; the PV disk's contents are not read here
    let nr_sectors = 80 * 60 * 75 * 4 + 4;
    let spec = DriveSpec::CdRom { medium_nr_sectors: Some(nr_sectors) };
    let mut bed = Bed::new([[None, None], [Some(spec), None]], vec![]);
    let config = packet(&mut bed, &[0x46, 0, 0, 0, 0, 0, 0, 0, 32, 0], 32).unwrap();
    assert_eq!(&config[6..8], &[0, 0x10]);
    assert_eq!((config[14], config[18]), (1, 0), "DVD-ROM is the current profile");
    let physical = packet(&mut bed, &[0xad, 0, 0, 0, 0, 0, 0, 0, 0x08, 0x04, 0, 0], 0x804).unwrap();
    assert_eq!(physical.len(), 2052);
    assert_eq!(&physical[..8], &[0x08, 0x02, 0, 0, 1, 0x0f, 1, 0]);
    let last = (nr_sectors / 4 - 1) as u32;
    assert_eq!(&physical[12..16], &last.to_be_bytes());
    assert_eq!(
        packet(&mut bed, &[0xad, 0, 0, 0, 0, 0, 1, 0, 0x08, 0x04, 0, 0], 0x804),
        Err(ILLEGAL_REQUEST_INVALID_FIELD)
    );
    assert_eq!(
        packet(&mut bed, &[0xad, 0, 0, 0, 0, 0, 0, 3, 0x08, 0x04, 0, 0], 0x804),
        Err(ILLEGAL_REQUEST_INVALID_FIELD)
    );
}

#[test]
fn without_a_medium_only_the_media_independent_commands_work() {
    let mut bed = cd_bed(None);
    for cdb in [
        &[0x00][..],
        &[0x25],
        &[0x28, 0, 0, 0, 0, 0, 0, 0, 1],
        &[0x43, 0, 0, 0, 0, 0, 0, 0, 12],
        &[0x51, 0, 0, 0, 0, 0, 0, 0, 34],
    ] {
        assert_eq!(packet(&mut bed, cdb, 2048), Err((2, 0x3a)), "{cdb:02x?}");
    }
    packet(&mut bed, &[0x12, 0, 0, 0, 36], 36).unwrap();
    let config = packet(&mut bed, &[0x46, 0, 0, 0, 0, 0, 0, 0, 8, 0], 8).unwrap();
    assert_eq!(&config[6..8], &[0, 0], "no current profile");
    let events = packet(&mut bed, &[0x4a, 1, 0, 0, 0x10, 0, 0, 0, 8, 0], 8).unwrap();
    assert_eq!(events, [0, 4, 4, 0x10, 0, 0, 0, 0], "no event, no medium");
    packet(&mut bed, &[0x5a, 0, 0x2a, 0, 0, 0, 0, 0, 30, 0], 30).unwrap();
}

#[test]
fn the_last_partial_block_cannot_be_read() {
    // 10 blocks and one more PV sector
    let mut bed = cd_bed(Some(plain_cd(10, 512)));
    assert_eq!(packet(&mut bed, &[0x25], 8).unwrap(), [0, 0, 0, 9, 0, 0, 8, 0]);
    packet(&mut bed, &[0x28, 0, 0, 0, 0, 9, 0, 0, 1, 0], 2048).unwrap();
    assert_eq!(packet(&mut bed, &[0x28, 0, 0, 0, 0, 10, 0, 0, 1, 0], 2048), Err((5, 0x21)));
    assert_eq!(packet(&mut bed, &[0x28, 0, 0, 0, 0, 9, 0, 0, 2, 0], 2048), Err((5, 0x21)));
    assert_eq!(packet(&mut bed, &[0xa8, 0, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 1, 0, 0], 2048), Err((5, 0x21)));
    // READ(12), and a count of 0
    let block = packet(&mut bed, &[0xa8, 0, 0, 0, 0, 3, 0, 0, 0, 1, 0, 0], 2048).unwrap();
    assert_eq!(block, cd_block(3));
    assert_eq!(packet(&mut bed, &[0x28, 0, 0, 0, 0, 50, 0, 0, 0, 0], 2048).unwrap(), Vec::<u8>::new());
}

#[test]
fn read_cd_user_data_and_raw_blocks_across_requests() {
    let iso = plain_cd(60, 0);
    let mut bed = cd_bed(Some(iso.clone()));
    let user = packet(&mut bed, &[0xbe, 0, 0, 0, 0, 5, 0, 0, 2, 0x10, 0, 0], 4096).unwrap();
    assert_eq!(user, &iso[5 * 2048..7 * 2048]);
    // 30 raw blocks: 27 fit in a 64 KiB request, then 3
    let raw = packet(&mut bed, &[0xbe, 0, 0, 0, 0, 10, 0, 0, 30, 0xf8, 0, 0], 0xfffe).unwrap();
    assert_eq!(raw.len(), 30 * 2352);
    for (i, block) in raw.chunks(2352).enumerate() {
        let lba = 10 + i;
        let frames = lba + 150;
        assert_eq!(&block[12..16], &[(frames / 75 / 60) as u8, (frames / 75 % 60) as u8, (frames % 75) as u8, 1]);
        assert_eq!(&block[16..2064], &iso[lba * 2048..(lba + 1) * 2048]);
    }
    let reads: Vec<Seen> = bed.seen.iter().map(|&(_, seen)| seen).collect();
    assert_eq!(
        reads,
        vec![
            Seen::Read { sector: 20, nr_sectors: 8 },
            Seen::Read { sector: 40, nr_sectors: 108 },
            Seen::Read { sector: 148, nr_sectors: 12 }
        ]
    );
    // no data requested, and an invalid transfer request
    assert_eq!(packet(&mut bed, &[0xbe, 0, 0, 0, 0, 5, 0, 0, 2, 0x00, 0, 0], 4096).unwrap(), Vec::<u8>::new());
    assert_eq!(packet(&mut bed, &[0xbe, 0, 0, 0, 0, 5, 0, 0, 2, 0x20, 0, 0], 4096), Err(ILLEGAL_REQUEST_INVALID_FIELD));
}

#[test]
fn packet_protocol_edges() {
    let iso = plain_cd(20, 0);
    let mut bed = cd_bed(Some(iso.clone()));
    // DMA and overlap are refused at the ATA level, with an interrupt
    bed.outb(SECONDARY.control, 0);
    for feature in [0x01, 0x02] {
        bed.outb(SECONDARY.command + FEATURE, feature);
        bed.outb(SECONDARY.command + COMMAND, 0xa0);
        assert!(bed.take_irq(1));
        assert_eq!((bed.inb(SECONDARY.command + STATUS), bed.inb(SECONDARY.command + ERROR)), (DRDY | ERR, 0x04));
    }
    // a byte count limit of 0: fine without data, an ATA abort with data
    packet(&mut bed, &[0x00], 0).unwrap();
    assert_eq!(packet_raw(&mut bed, &[0x12, 0, 0, 0, 36], 0, 0), Err((DRDY | ERR, 0x04)));
    assert_eq!(packet_raw(&mut bed, &[0xbe, 0, 0, 0, 0, 1, 0, 0, 1, 0x10, 0, 0], 0, 0), Err((DRDY | ERR, 0x04)));
    // 0xffff counts as 0xfffe; a limit of 1 moves 2 bytes per block
    let block = packet(&mut bed, &[0x28, 0, 0, 0, 0, 4, 0, 0, 1, 0], 0xffff).unwrap();
    assert_eq!(block, cd_block(4));
    let inquiry = packet(&mut bed, &[0x12, 0, 0, 0, 6], 1).unwrap();
    assert_eq!(inquiry, [0x05, 0x80, 0x00, 0x21, 31, 0]);
    // the limit given with the command, not a later one, shapes every block
    let data = packet(&mut bed, &[0x28, 0, 0, 0, 0, 0, 0, 0, 3, 0], 1000).unwrap();
    assert_eq!(data, &iso[..3 * 2048]);
}

#[test]
fn a_failed_cd_read_is_an_illegal_request() {
    let mut bed = cd_bed(Some(plain_cd(40, 0)));
    bed.fail_next = Some(HDC);
    assert_eq!(packet(&mut bed, &[0x28, 0, 0, 0, 0, 1, 0, 0, 1, 0], 2048), Err((5, 0x21)));
    // a medium removed in the middle of a read: NOT READY when the next blocks are fetched
    bed.outb(SECONDARY.control, NIEN);
    bed.outb(SECONDARY.command + LBAM, 0x00);
    bed.outb(SECONDARY.command + LBAH, 0x08);
    bed.outb(SECONDARY.command + COMMAND, 0xa0);
    bed.outsw(SECONDARY.command + DATA, &[0x28, 0, 0, 0, 0, 0, 0, 0, 40, 0, 0, 0]);
    assert!(bed.service_one());
    bed.insw(SECONDARY.command + DATA, 1024);
    bed.change_medium(HDC, None);
    for _ in 0..30 {
        bed.insw(SECONDARY.command + DATA, 1024);
    }
    assert_eq!(bed.poll_not_busy(SECONDARY), DRDY | DSC | DRQ, "the blocks already fetched still come");
    bed.insw(SECONDARY.command + DATA, 1024);
    assert_eq!((bed.inb(SECONDARY.command + STATUS), bed.inb(SECONDARY.command + ERROR)), (DRDY | ERR, 0x20));
    assert_eq!(bed.seen.len(), 2, "nothing fetched for the removed medium");
}

#[test]
fn a_machine_reset_unlocks_the_tray_and_forgets_the_request() {
    let mut bed = cd_bed(Some(plain_cd(20, 0)));
    packet(&mut bed, &[0x1e, 0, 0, 0, 1, 0], 0).unwrap();
    bed.outb(SECONDARY.command + LBAH, 0x08);
    bed.outb(SECONDARY.command + COMMAND, 0xa0);
    bed.outsw(SECONDARY.command + DATA, &[0x28, 0, 0, 0, 0, 1, 0, 0, 1, 0, 0, 0]);
    let request = bed.ide.take_request().unwrap();
    bed.ide.reset();
    assert!(!bed.ide.is_tray_locked(HDC));
    assert_eq!(
        bed.ide.take_events(),
        vec![IdeEvent::TrayLocked { drive: HDC, locked: true }, IdeEvent::TrayLocked { drive: HDC, locked: false }]
    );
    bed.ide.complete(request.drive, BlockOutcome::Read(vec![0; 2048]));
    assert_eq!(bed.inb(SECONDARY.command + STATUS), DRDY | DSC);
    assert_eq!(bed.inb(SECONDARY.command + LBAM), 0x14);
    assert!(!bed.level(1));
    // the medium stays
    packet(&mut bed, &[0x00], 0).unwrap();
}
