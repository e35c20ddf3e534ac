//! Bad input never panics, never leaves a drive stuck and never makes buffers grow without
//! bound: random register traffic with a misbehaving worker, random ATA commands and random
//! CDBs driven to their end. A deterministic pseudo-random generator keeps runs repeatable.

use alloc::vec;
use alloc::vec::Vec;

use super::harness::*;
use crate::ide::{BlockOp, BlockOutcome, BlockRequest, DriveId, DriveSpec, MAX_REQUEST_SECTORS};

/// xorshift64*.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

const PORTS: [u16; 20] = [
    0x1f0, 0x1f1, 0x1f2, 0x1f3, 0x1f4, 0x1f5, 0x1f6, 0x1f7, 0x3f6, 0x3f7, 0x170, 0x171, 0x172, 0x173, 0x174, 0x175,
    0x176, 0x177, 0x376, 0x377,
];
const SIZES: [u8; 6] = [0, 1, 2, 3, 4, 8];
/// Opcodes worth sending more often than chance would.
const ATA_OPCODES: [u8; 24] = [
    0x00, 0x08, 0x10, 0x20, 0x21, 0x24, 0x27, 0x30, 0x34, 0x40, 0x42, 0x70, 0x90, 0x91, 0xa0, 0xa1, 0xc4, 0xc6, 0xc8,
    0xe0, 0xe5, 0xe7, 0xea, 0xec,
];
const ATAPI_OPCODES: [u8; 19] =
    [0x00, 0x03, 0x12, 0x1b, 0x1e, 0x25, 0x28, 0x2b, 0x43, 0x46, 0x4a, 0x51, 0x5a, 0xa8, 0xad, 0xbb, 0xbd, 0xbe, 0xef];
/// Bounds that hold whatever the guest does (one request's data, a reply, a byte count
/// limit's worth of buffered CD data, per drive).
const MAX_BUFFERED_BYTES: usize = 4 * 256 * 1024;

fn check_request(request: &BlockRequest) {
    match &request.op {
        BlockOp::Read { nr_sectors, .. } => assert!((1..=MAX_REQUEST_SECTORS).contains(nr_sectors)),
        BlockOp::Write { data, .. } => {
            assert!(!data.is_empty() && data.len() % 512 == 0 && data.len() <= MAX_REQUEST_SECTORS as usize * 512)
        }
        BlockOp::Flush => {}
        BlockOp::DmaRead { nr_sectors, sg, .. } | BlockOp::DmaWrite { nr_sectors, sg, .. } => {
            let len_bytes: u64 = sg.iter().map(|entry| u64::from(entry.len_bytes)).sum();
            assert_eq!(len_bytes, u64::from(*nr_sectors) * 512, "a scatter list as long as the transfer");
            assert!(sg.len() <= super::super::bmdma::MAX_PRD_ENTRIES);
        }
    }
}

fn random_outcome(rng: &mut Rng, bed: &Bed, request: &BlockRequest) -> BlockOutcome {
    match (rng.below(10), &request.op) {
        (0, _) => BlockOutcome::Failed,
        (1, _) => BlockOutcome::Written,
        (2, _) => BlockOutcome::Flushed,
        (3, _) => BlockOutcome::Read(vec![0; rng.below(4096) as usize]),
        (_, BlockOp::Read { sector, nr_sectors }) => {
            let start = *sector as usize * 512;
            let len = *nr_sectors as usize * 512;
            match bed.media.get(&request.drive).and_then(|medium| medium.get(start..start + len)) {
                Some(bytes) => BlockOutcome::Read(bytes.to_vec()),
                None => BlockOutcome::Failed,
            }
        }
        (_, BlockOp::Write { .. }) => BlockOutcome::Written,
        (_, BlockOp::Flush) => BlockOutcome::Flushed,
        (4, BlockOp::DmaRead { .. } | BlockOp::DmaWrite { .. }) => BlockOutcome::GuestMemoryFault,
        (_, BlockOp::DmaRead { .. } | BlockOp::DmaWrite { .. }) => BlockOutcome::Transferred,
    }
}

fn mixed_bed() -> Bed {
    Bed::new(
        [
            [
                Some(DriveSpec::HardDisk { nr_sectors: 300, read_only: false }),
                Some(DriveSpec::CdRom { medium_nr_sectors: Some(160) }),
            ],
            [
                Some(DriveSpec::CdRom { medium_nr_sectors: None }),
                Some(DriveSpec::HardDisk { nr_sectors: 70, read_only: true }),
            ],
        ],
        vec![
            (HDA, test_disk(300)),
            (DriveId { channel: 0, unit: 1 }, plain_cd(40, 0)),
            (DriveId { channel: 1, unit: 1 }, test_disk(70)),
        ],
    )
}

#[test]
fn random_port_traffic_with_a_misbehaving_worker_never_panics() {
    for seed in 1..=6u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let mut bed = mixed_bed();
        let mut held: Vec<BlockRequest> = Vec::new();
        let mut taken = 0;
        for _ in 0..60_000 {
            match rng.below(100) {
                0..=34 => {
                    let port = if rng.chance(95) { rng.pick(&PORTS) } else { rng.next() as u16 };
                    let size = rng.pick(&SIZES);
                    let value = bed.ide.read(port, size);
                    if size == 1 || size == 2 {
                        assert!(u64::from(value) < 1 << (8 * size), "read of {size} bytes returned {value:#x}");
                    }
                }
                35..=74 => {
                    let port = if rng.chance(95) { rng.pick(&PORTS) } else { rng.next() as u16 };
                    let value = match port & 0xf {
                        7 if rng.chance(70) => u32::from(rng.pick(&ATA_OPCODES)),
                        6 if rng.chance(70) => {
                            u32::from(rng.pick(&[0x00u8, 0x02, 0x04, 0x06, 0x82, 0xa0, 0xb0, 0xe0, 0xf0]))
                        }
                        2..=5 if rng.chance(70) => rng.below(4) as u32,
                        0 if rng.chance(30) => u32::from(rng.pick(&ATAPI_OPCODES)),
                        _ => rng.next() as u32,
                    };
                    bed.ide.write(port, rng.pick(&SIZES), value);
                }
                75..=86 => {
                    if let Some(request) = bed.ide.take_request() {
                        check_request(&request);
                        taken += 1;
                        held.push(request);
                    }
                    if !held.is_empty() && rng.chance(80) {
                        let request = held.remove(rng.below(held.len() as u64) as usize);
                        let outcome = random_outcome(&mut rng, &bed, &request);
                        bed.ide.complete(request.drive, outcome);
                    }
                }
                87..=89 => {
                    let drive = DriveId { channel: rng.below(3) as u8, unit: rng.below(3) as u8 };
                    let outcome = match rng.below(4) {
                        0 => BlockOutcome::Failed,
                        1 => BlockOutcome::Written,
                        2 => BlockOutcome::Flushed,
                        _ => BlockOutcome::Read(vec![0; 512 * rng.below(5) as usize]),
                    };
                    bed.ide.complete(drive, outcome);
                }
                90..=92 => {
                    let drive = DriveId { channel: rng.below(2) as u8, unit: rng.below(2) as u8 };
                    let medium = rng.pick(&[None, Some(0), Some(3), Some(160), Some(1 << 40)]);
                    bed.ide.set_medium(drive, medium);
                }
                93..=94 => {
                    let drive = DriveId { channel: rng.below(2) as u8, unit: rng.below(2) as u8 };
                    bed.ide.set_tray_open(drive, rng.chance(50));
                    bed.ide.request_eject(drive);
                }
                95 => bed.ide.reset(),
                96..=97 => {
                    assert!(bed.ide.take_events().len() <= 2 * 32);
                }
                _ => {
                    bed.ide.irq_level(rng.below(4) as u8);
                    bed.ide.is_tray_locked(DriveId { channel: rng.below(4) as u8, unit: rng.below(4) as u8 });
                }
            }
            assert!(bed.ide.buffered_bytes() <= MAX_BUFFERED_BYTES, "buffers grew to {}", bed.ide.buffered_bytes());
        }
        assert!(taken > 20, "seed {seed}: only {taken} requests");
    }
}

/// Runs whatever data phase follows, with a correct worker, until the drive is neither
/// busy nor asking for data; the number of steps it took.
fn drive_to_idle(bed: &mut Bed, rng: &mut Rng, ports: Ports) -> usize {
    for step in 0..400_000 {
        let status = bed.ide.read(ports.control, 1) as u8;
        if status & BSY != 0 {
            assert!(bed.service_one(), "BSY without a request to wait for (status {status:#x})");
        } else if status & DRQ != 0 {
            // the guest does not know the direction: write a word, then read one
            bed.ide.write(ports.command, rng.pick(&[2, 4]), rng.next() as u32);
            bed.ide.read(ports.command, rng.pick(&[2, 4]));
        } else {
            return step;
        }
        assert!(bed.ide.buffered_bytes() <= MAX_BUFFERED_BYTES);
    }
    panic!("the drive never became idle");
}

#[test]
fn random_ata_commands_always_end() {
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let mut bed = mixed_bed();
    let mut data_steps = 0;
    for _ in 0..4000 {
        let ports = rng.pick(&[PRIMARY, SECONDARY]);
        bed.ide.write(ports.control, 1, u32::from(rng.pick(&[0x00u8, 0x02, 0x80])));
        // mostly addresses on the small disks, sometimes anything (HOB bytes first)
        for offset in [1, 2, 3, 4, 5, 1, 2, 3, 4, 5] {
            let value = match offset {
                2 | 3 if rng.chance(80) => rng.below(8),
                4 | 5 if rng.chance(80) => 0,
                _ => rng.next() & 0xff,
            };
            bed.ide.write(ports.command + offset, 1, value as u32);
        }
        bed.ide.write(ports.command + DEVICE, 1, u32::from(rng.pick(&[0xa0u8, 0xb0, 0xe0, 0xf0, 0x40])));
        let opcode = if rng.chance(70) { rng.pick(&ATA_OPCODES) } else { rng.next() as u8 };
        bed.ide.write(ports.command + COMMAND, 1, u32::from(opcode));
        if opcode == 0xa0 {
            // a PACKET's CDB
            for _ in 0..6 {
                bed.ide.write(ports.command, 2, rng.next() as u32);
            }
        }
        data_steps += drive_to_idle(&mut bed, &mut rng, ports);
        if rng.chance(5) {
            bed.ide.write(ports.control, 1, 0x04);
            bed.ide.write(ports.control, 1, 0x00);
        }
    }
    let reads = bed.seen.iter().filter(|(_, seen)| matches!(seen, Seen::Read { .. })).count();
    let writes = bed.seen.iter().filter(|(_, seen)| matches!(seen, Seen::Write { .. })).count();
    let flushes = bed.seen.len() - reads - writes;
    assert!(
        reads > 50 && writes > 30 && flushes > 50,
        "the walk reached {reads} reads, {writes} writes, {flushes} flushes"
    );
    assert!(data_steps > 100_000, "{data_steps} data steps");
}

#[test]
fn random_cdbs_always_end_with_the_drive_idle() {
    let mut rng = Rng(0x0bad_cafe_f00d_d00d);
    let mut bed = Bed::new(
        [[None, None], [Some(DriveSpec::CdRom { medium_nr_sectors: Some(64 * 4 + 3) }), None]],
        vec![(HDC, plain_cd(64, 1536))],
    );
    let cmd = SECONDARY.command;
    let mut data_steps = 0;
    for round in 0..3000 {
        let mut cdb = [0u8; 12];
        for byte in &mut cdb {
            *byte = if rng.chance(50) { 0 } else { rng.next() as u8 };
        }
        match rng.below(10) {
            0..=2 => {
                // a read of a plausible range, in one of its three forms
                let opcode = rng.pick(&[0x28u8, 0xa8, 0xbe]);
                let nr_blocks = rng.below(40) as u8;
                cdb[0] = opcode;
                cdb[2..6].copy_from_slice(&(rng.below(70) as u32).to_be_bytes());
                match opcode {
                    0x28 => cdb[7..9].copy_from_slice(&[0, nr_blocks]),
                    0xa8 => cdb[6..10].copy_from_slice(&[0, 0, 0, nr_blocks]),
                    _ => {
                        cdb[6..9].copy_from_slice(&[0, 0, nr_blocks]);
                        cdb[9] = rng.pick(&[0x10, 0xf8, 0x00, 0x18]);
                    }
                }
            }
            3..=8 => cdb[0] = rng.pick(&ATAPI_OPCODES),
            _ => {}
        }
        let any_limit = rng.next() as u16;
        let limit: u16 = rng.pick(&[0, 1, 2, 3, 18, 2048, 2049, 0xfffe, 0xffff, any_limit]);
        bed.ide.write(SECONDARY.control, 1, u32::from(rng.pick(&[0x00u8, 0x02])));
        bed.ide.write(cmd + FEATURE, 1, u32::from(rng.pick(&[0u8, 0, 0, 1, 2])));
        bed.ide.write(cmd + LBAM, 1, u32::from(limit as u8));
        bed.ide.write(cmd + LBAH, 1, u32::from((limit >> 8) as u8));
        bed.ide.write(cmd + DEVICE, 1, 0xa0);
        bed.ide.write(cmd + COMMAND, 1, 0xa0);
        for pair in cdb.chunks(2) {
            bed.ide.write(cmd, 2, u32::from(u16::from_le_bytes([pair[0], pair[1]])));
        }
        data_steps += drive_to_idle(&mut bed, &mut rng, SECONDARY);
        bed.ide.read(cmd + STATUS, 1);
        if round % 97 == 0 {
            bed.ide.set_medium(HDC, rng.pick(&[None, Some(64 * 4 + 3), Some(64 * 4 + 3), Some(64 * 4 + 3), Some(2)]));
        }
        if round % 89 == 0 {
            bed.ide.set_tray_open(HDC, rng.chance(30));
        }
        if rng.chance(10) {
            // what libata's EH would send after an error
            bed.ide.write(cmd + LBAM, 1, 18);
            bed.ide.write(cmd + LBAH, 1, 0);
            bed.ide.write(cmd + COMMAND, 1, 0xa0);
            for word in [0x0003, 0, 18, 0, 0, 0] {
                bed.ide.write(cmd, 2, word);
            }
            data_steps += drive_to_idle(&mut bed, &mut rng, SECONDARY);
        }
        assert!(bed.ide.take_events().len() <= 32);
    }
    assert!(
        bed.seen.len() > 100 && data_steps > 100_000,
        "the walk reached {} reads, {data_steps} data steps",
        bed.seen.len()
    );
}
