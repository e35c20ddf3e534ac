//! The devices' saved state: a machine (and each NIC) saved in the middle of what a
//! guest does, loaded into a new one built the same way, then both driven with the
//! same accesses: every read must match (the disk read in progress goes on, the rings
//! go on where they were). Then the ways a saved state is refused: another layout,
//! another version, an unknown section, truncated or damaged bytes, a disk request in
//! flight.

use std::cell::RefCell;

use devices::dm_args::NicModel;
use devices::ide::{BlockOp, BlockOutcome, BlockRequest, DriveId, DriveSpec};
use devices::machine::{Effect, Machine, MachineConfig};
use devices::nic::{Nic, RxOutcome, new_card};
use devices::snapshot::{self, Section, SectionId, SnapshotError, TimeBase, Writer};
use xen_seams::hvm::{GuestMemory, GuestMemoryError, IoRangeKind};

/// Guest RAM in a Vec, clonable so that twins get the same memory.
#[derive(Clone)]
struct Ram(RefCell<Vec<u8>>);

impl Ram {
    fn new(bytes: usize) -> Ram {
        Ram(RefCell::new(vec![0; bytes]))
    }
    fn put(&self, gpa: u64, data: &[u8]) {
        self.write(gpa, data).unwrap();
    }
}

impl GuestMemory for Ram {
    fn read(&self, gpa: u64, out: &mut [u8]) -> Result<(), GuestMemoryError> {
        let ram = self.0.borrow();
        let range = gpa as usize..gpa as usize + out.len();
        out.copy_from_slice(ram.get(range).ok_or(GuestMemoryError::Unmapped { gfn: gpa >> 12 })?);
        Ok(())
    }
    fn write(&self, gpa: u64, data: &[u8]) -> Result<(), GuestMemoryError> {
        let mut ram = self.0.borrow_mut();
        let range = gpa as usize..gpa as usize + data.len();
        ram.get_mut(range).ok_or(GuestMemoryError::Unmapped { gfn: gpa >> 12 })?.copy_from_slice(data);
        Ok(())
    }
    fn invalidate(&self) {}
}

const MAC: [u8; 6] = [0x00, 0x16, 0x3e, 0x12, 0x34, 0x56];
const DISK_SECTORS: u64 = 4096;
const HDA: DriveId = DriveId { channel: 0, unit: 0 };

fn config(com1: bool, disk_sectors: u64) -> MachineConfig {
    let mut ide: [[Option<DriveSpec>; 2]; 2] = Default::default();
    ide[0][0] = Some(DriveSpec::HardDisk { nr_sectors: disk_sectors, read_only: false });
    ide[1][0] = Some(DriveSpec::CdRom { medium_nr_sectors: Some(8192) });
    MachineConfig { ide, boot_order: "dc".into(), ram_mib: 128, com1, xen_platform: true }
}

fn machine_with(com1: bool, disk_sectors: u64, nics: &[NicModel]) -> Machine {
    let mut machine = Machine::new(config(com1, disk_sectors));
    for model in nics {
        machine.add_nic(new_card(*model, MAC));
    }
    machine
}

/// What the disk holds at `sector`: a pattern that names the sector.
fn sector_data(sector: u64, nr_sectors: u32) -> Vec<u8> {
    (0..nr_sectors as u64 * 512).map(|i| (sector * 7 + i / 512 * 3 + i) as u8).collect()
}

/// Serves the machine's block requests from [`sector_data`] (as the block workers do).
fn serve_disk(m: &mut Machine) {
    while let Some(BlockRequest { drive, op }) = m.ide_mut().take_request() {
        let outcome = match op {
            BlockOp::Read { sector, nr_sectors } => BlockOutcome::Read(sector_data(sector, nr_sectors)),
            BlockOp::Write { .. } => BlockOutcome::Written,
            BlockOp::Flush => BlockOutcome::Flushed,
            BlockOp::DmaRead { .. } | BlockOp::DmaWrite { .. } => BlockOutcome::Transferred,
        };
        m.ide_mut().complete(drive, outcome);
        m.sync_irqs();
    }
}

/// hvmloader, SeaBIOS and Linux up to the middle of a disk read: PCI set up, CMOS
/// index latched, COM1 programmed with input waiting, an 8042 command waiting for its
/// data byte, the NIC's BARs placed, and READ SECTORS of 2 sectors at LBA 5 with
/// 100 words of the first sector read.
fn boot_to_mid_read(m: &mut Machine, ram: &Ram) {
    m.config_write(0x08, 0x60, 4, 0x050b_0a05);
    m.config_write(0x09, 0x40, 2, 0x8000);
    m.config_write(0x09, 0x42, 2, 0x8000);
    m.config_write(0x09, 0x04, 2, 0x0001);
    if m.nr_nics() > 0 {
        m.config_write(0x18, 0x10, 4, 0xc100);
        m.config_write(0x18, 0x14, 4, 0xf000_0000);
        m.config_write(0x18, 0x04, 2, 0x0007);
    }
    m.port_write(0x70, 1, 0x3d, ram);
    for (port, value) in [(0x3fb, 0x80), (0x3f8, 0x01), (0x3f9, 0x00), (0x3fb, 0x03), (0x3fa, 0xc7), (0x3fc, 0x0b)] {
        m.port_write(port, 1, value, ram);
    }
    m.port_write(0x3ff, 1, 0x5a, ram);
    m.port_write(0x3f9, 1, 0x01, ram);
    if let Some(uart) = m.com1_mut() {
        uart.receive(b"login: root\n");
    }
    m.port_write(0x3f8, 1, u32::from(b'>'), ram);
    m.port_write(0x64, 1, 0x60, ram);
    m.port_write(0xb004, 2, 0x0001, ram);
    for (port, value) in [(0x1f6, 0xe0), (0x1f2, 2), (0x1f3, 5), (0x1f4, 0), (0x1f5, 0), (0x1f7, 0x20)] {
        m.port_write(port, 1, value, ram);
    }
    serve_disk(m);
    for _ in 0..100 {
        m.port_read(0x1f0, 2, ram);
    }
    m.sync_irqs();
}

/// A new machine built as `m` was, with `m`'s saved state loaded.
fn twin(m: &Machine, com1: bool, nics: &[NicModel]) -> Machine {
    let payload = m.save_state(1_000_000);
    let mut restored = machine_with(com1, DISK_SECTORS, nics);
    restored.load_state(&payload, 5_000_000_000).unwrap();
    restored
}

/// The same accesses on both machines; every value read must match.
fn drive_both(
    a: &mut Machine,
    b: &mut Machine,
    ram_a: &Ram,
    ram_b: &Ram,
    script: impl Fn(&mut Machine, &Ram) -> Vec<u32>,
) {
    let (seen_a, seen_b) = (script(a, ram_a), script(b, ram_b));
    assert_eq!(seen_a.len(), seen_b.len());
    for (i, (x, y)) in seen_a.iter().zip(&seen_b).enumerate() {
        assert_eq!(x, y, "read {i} differs after the restore");
    }
}

/// Every register a guest can read, in one sweep (both machines see the same sweep).
fn sweep(m: &mut Machine, ram: &Ram) -> Vec<u32> {
    let mut seen = Vec::new();
    for port in (0x1f1..=0x1f7).chain(0x171..=0x177).chain([0x3f6, 0x376, 0x64, 0x70, 0x71, 0xb004, 0xafe0, 0xafe2]) {
        seen.push(m.port_read(port, 1, ram));
    }
    for port in [0x3f9, 0x3fa, 0x3fb, 0x3fc, 0x3fd, 0x3fe, 0x3ff] {
        seen.push(m.port_read(port, 1, ram));
    }
    seen.push(m.port_read(0xcf8, 4, ram));
    for devfn in [0x00, 0x08, 0x09, 0x18] {
        for reg in (0..256).step_by(4) {
            seen.push(m.config_read(devfn, reg, 4));
        }
    }
    seen
}

#[test]
fn a_disk_read_in_progress_goes_on_after_a_restore_and_every_register_matches() {
    let nics = [NicModel::Rtl8139];
    let (ram_a, ram_b) = (Ram::new(64 * 1024), Ram::new(64 * 1024));
    let mut a = machine_with(true, DISK_SECTORS, &nics);
    boot_to_mid_read(&mut a, &ram_a);
    a.take_effects();
    let payload = a.save_state(1_000_000);
    // The read's 1 KiB buffer is most of it.
    assert!(payload.len() < 16 * 1024, "{} bytes of state", payload.len());
    let sizes: Vec<(SectionId, usize)> =
        snapshot::sections(&payload).unwrap().iter().map(|s| (s.id, s.body.len())).collect();
    println!("{} bytes of state: {sizes:?}", payload.len());
    let mut b = twin(&a, true, &nics);
    // The new ioreq server gets the NIC's BARs; the IDE interrupt is up again.
    let effects: Vec<Effect> = b.take_effects().into_iter().collect();
    assert!(effects.contains(&Effect::Claim { kind: IoRangeKind::Port, first: 0xc100, last: 0xc1ff }), "{effects:?}");
    assert!(effects.contains(&Effect::IsaIrq { irq: 14, level: true }), "{effects:?}");
    // Lines that are down are said to be down (Xen's restored level may be up).
    assert!(effects.contains(&Effect::IsaIrq { irq: 15, level: false }), "{effects:?}");
    assert!(effects.contains(&Effect::PciIntx { device: 3, intx: 0, level: false }), "{effects:?}");
    assert_eq!(b.layout(), a.layout());

    // The rest of sector 5 and all of sector 6, as Linux's PIO loop reads them.
    drive_both(&mut a, &mut b, &ram_a, &ram_b, |m, ram| {
        let mut words = vec![m.port_read(0x1f7, 1, ram)];
        for _ in 0..156 {
            words.push(m.port_read(0x1f0, 2, ram));
        }
        words.push(m.port_read(0x1f7, 1, ram));
        for _ in 0..256 {
            words.push(m.port_read(0x1f0, 2, ram));
        }
        words.push(m.port_read(0x1f7, 1, ram));
        words
    });
    // The restored machine's words are the disk's bytes (not only equal to the
    // original's).
    let data = sector_data(5, 2);
    let mut fresh = machine_with(true, DISK_SECTORS, &nics);
    boot_to_mid_read(&mut fresh, &ram_b);
    let mut restored = twin(&fresh, true, &nics);
    for i in 100..256 {
        let word = restored.port_read(0x1f0, 2, &ram_b) as u16;
        assert_eq!(word.to_le_bytes(), [data[i * 2], data[i * 2 + 1]], "word {i} of sector 5");
    }
    // A second restore, of the machine as it is now: COM1's input, output and
    // registers, the 8042's pending command, CMOS, then the whole sweep.
    let mut c = twin(&a, true, &nics);
    c.take_effects();
    // COM1's input, output and registers, the 8042's pending command, CMOS, then the
    // whole sweep.
    drive_both(&mut a, &mut c, &ram_a, &ram_b, |m, ram| {
        let mut seen = Vec::new();
        for _ in 0..14 {
            seen.push(m.port_read(0x3fd, 1, ram));
            seen.push(m.port_read(0x3f8, 1, ram));
        }
        seen.extend(m.com1_mut().map(|uart| uart.take_output(64)).unwrap_or_default().iter().map(|&b| u32::from(b)));
        m.port_write(0x60, 1, 0x47, ram);
        m.port_write(0x64, 1, 0x20, ram);
        seen.push(m.port_read(0x60, 1, ram));
        seen.extend(sweep(m, ram));
        // The next command is asked of the disk the same way.
        for (port, value) in [(0x1f2, 1), (0x1f3, 9), (0x1f7, 0x20)] {
            m.port_write(port, 1, value, ram);
        }
        let request = m.ide_mut().take_request();
        seen.push(match request {
            Some(BlockRequest { drive: HDA, op: BlockOp::Read { sector: 9, nr_sectors: 1 } }) => 1,
            _ => 0,
        });
        seen
    });
}

/// A NIC saved with a ring in progress, loaded into a new card, then both given the
/// same work: what they write to guest memory, transmit and show in registers matches.
fn nic_twin(card: &dyn Nic, model: NicModel) -> Box<dyn Nic> {
    let (id, version, body) = card.save_state();
    let mut restored = new_card(model, MAC);
    let section = Section { id, instance: 0, version, body: &body };
    restored.load_state(&section, TimeBase { saved_now_ns: 1_000, now_ns: 9_000_000 }).unwrap();
    restored
}

fn rtl8139_rx(card: &mut dyn Nic, ram: &Ram, frame_byte: u8, len: usize) -> RxOutcome {
    let frame: Vec<u8> = (0..len).map(|i| if i < 6 { 0xff } else { frame_byte.wrapping_add(i as u8) }).collect();
    card.receive(&frame, ram, 0)
}

#[test]
fn rtl8139_receive_ring_goes_on_where_it_was() {
    let ram = Ram::new(128 * 1024);
    let mut card = new_card(NicModel::Rtl8139, MAC);
    card.config_write(0x04, 2, 0x0005);
    card.write(0, 0x30, 4, 0x8000, &ram, 0); // RBSTART
    card.write(0, 0x44, 4, 0x0000_008f, &ram, 0); // RCR: all frames, 8 KiB ring, WRAP
    card.write(0, 0x3c, 2, 0x0005, &ram, 0); // IMR: ROK, TOK
    card.write(0, 0x37, 1, 0x0c, &ram, 0); // CR: RE, TE
    assert_eq!(rtl8139_rx(&mut *card, &ram, 1, 100), RxOutcome::Delivered);
    assert_eq!(rtl8139_rx(&mut *card, &ram, 2, 200), RxOutcome::Delivered);
    let ram_b = ram.clone();
    let restored = nic_twin(&*card, NicModel::Rtl8139);
    assert_eq!(restored.irq_level(), card.irq_level());
    let mut cards = [(card, ram), (restored, ram_b)];
    let mut seen = Vec::new();
    for (card, ram) in &mut cards {
        let mut reads = Vec::new();
        for offset in [0x00, 0x04, 0x08, 0x30, 0x37, 0x38, 0x3a, 0x3c, 0x3e, 0x40, 0x44, 0x58, 0x62, 0x64, 0x74] {
            reads.push(card.read(0, offset, 4, ram, 0));
        }
        // The driver consumes the first packet (CAPR), acknowledges, then a frame lands.
        card.write(0, 0x38, 2, 108 - 16, ram, 0);
        card.write(0, 0x3e, 2, 0xffff, ram, 0);
        reads.push(rtl8139_rx(&mut **card, ram, 3, 300) as u32);
        reads.push(card.read(0, 0x3a, 2, ram, 0));
        reads.push(card.read(0, 0x3e, 2, ram, 0));
        seen.push((reads, ram.0.borrow()[0x8000..0xa010].to_vec()));
    }
    assert_eq!(seen[0].0, seen[1].0, "registers");
    assert!(seen[0].1 == seen[1].1, "the receive ring");
    assert!(seen[0].0[6] != 0, "CBR moved past the first frames");
}

/// A legacy transmit descriptor at `at`: buffer, length, EOP | IFCS | RS.
fn e1000_tx_descriptor(ram: &Ram, at: u64, buffer: u64, len: u16) {
    let mut desc = [0u8; 16];
    desc[..8].copy_from_slice(&buffer.to_le_bytes());
    desc[8..10].copy_from_slice(&len.to_le_bytes());
    desc[11] = 0x01 | 0x02 | 0x08;
    ram.put(at, &desc);
}

#[test]
fn e1000_transmit_ring_goes_on_where_it_was() {
    let ram = Ram::new(64 * 1024);
    let mut card = new_card(NicModel::E1000, MAC);
    card.config_write(0x04, 2, 0x0006);
    for (offset, value) in [(0x3800, 0x1000), (0x3804, 0), (0x3808, 128), (0x3810, 0), (0x3818, 0), (0x0400, 0x0a)] {
        card.write(0, offset, 4, value, &ram, 0);
    }
    card.write(0, 0x00d0, 4, 0x1f, &ram, 0); // IMS
    ram.put(0x2000, &[0x5a; 60]);
    e1000_tx_descriptor(&ram, 0x1000, 0x2000, 60);
    card.write(0, 0x3818, 4, 1, &ram, 0);
    assert_eq!(card.take_tx_frame().map(|frame| frame.len()), Some(60));
    // A frame the glue has not taken yet is not part of the state.
    ram.put(0x2100, &[0xa5; 70]);
    e1000_tx_descriptor(&ram, 0x1010, 0x2100, 70);
    card.write(0, 0x3818, 4, 2, &ram, 0);
    let ram_b = ram.clone();
    let mut restored = nic_twin(&*card, NicModel::E1000);
    assert_eq!(restored.take_tx_frame(), None, "queued frames are dropped");
    assert!(card.take_tx_frame().is_some());
    let mut cards = [(card, ram), (restored, ram_b)];
    let mut seen = Vec::new();
    for (card, ram) in &mut cards {
        ram.put(0x2200, &[0x77; 80]);
        e1000_tx_descriptor(ram, 0x1020, 0x2200, 80);
        card.write(0, 0x3818, 4, 3, ram, 0);
        let frame = card.take_tx_frame();
        let mut reads = vec![frame.map_or(0, |f| f.len() as u32)];
        for offset in [0x0000, 0x0008, 0x00d0, 0x0100, 0x0400, 0x3800, 0x3808, 0x3810, 0x3818, 0x5400, 0x5404, 0x00c0] {
            reads.push(card.read(0, offset, 4, ram, 0));
        }
        reads.push(card.irq_level() as u32);
        seen.push((reads, ram.0.borrow()[0x1000..0x1080].to_vec()));
    }
    assert_eq!(seen[0], seen[1]);
    assert_eq!(seen[0].0[0], 80, "the third descriptor was sent");
    assert_eq!(seen[0].0[8], 3, "TDH went on from 2");
}

fn rewrite(payload: &[u8], change: impl Fn(&mut Section<'_>) -> Option<(u16, u16)>) -> Vec<u8> {
    let mut out = Writer::new();
    for mut section in snapshot::sections(payload).unwrap() {
        let (id, version) = change(&mut section).unwrap_or((section.id as u16, section.version));
        out.raw_section(id, section.instance, version, section.body);
    }
    out.finish()
}

#[test]
fn a_state_that_does_not_fit_is_a_clear_error() {
    let ram = Ram::new(64 * 1024);
    let nics = [NicModel::E1000];
    let mut m = machine_with(true, DISK_SECTORS, &nics);
    boot_to_mid_read(&mut m, &ram);
    let payload = m.save_state(0);
    let load = |com1, sectors, nics: &[NicModel], payload: &[u8]| {
        machine_with(com1, sectors, nics).load_state(payload, 0).unwrap_err()
    };
    // Another argv: no COM1, another disk size, another NIC, no NIC.
    for error in [
        load(false, DISK_SECTORS, &nics, &payload),
        load(true, DISK_SECTORS * 2, &nics, &payload),
        load(true, DISK_SECTORS, &[NicModel::Rtl8139], &payload),
        load(true, DISK_SECTORS, &[], &payload),
    ] {
        assert!(matches!(error, SnapshotError::LayoutMismatch(_)), "{error}");
    }
    // A newer version of one device's state names the device and both versions.
    let newer = rewrite(&payload, |s| (s.id == SectionId::Uart).then_some((s.id as u16, 2)));
    let error = load(true, DISK_SECTORS, &nics, &newer);
    assert_eq!(error, SnapshotError::Version { device: "COM1 16550A", saved: 2, supported: 1 });
    assert_eq!(error.to_string(), "the saved COM1 16550A state is version 2; this device model reads version 1");
    let newer_nic = rewrite(&payload, |s| (s.id == SectionId::E1000).then_some((s.id as u16, 7)));
    assert!(matches!(
        load(true, DISK_SECTORS, &nics, &newer_nic),
        SnapshotError::Version { device: "e1000 NIC", saved: 7, .. }
    ));
    // An unknown section, an extra one, a missing one.
    let mut unknown = payload.clone();
    let mut extra = Writer::new();
    extra.raw_section(0x4242, 0, 1, b"from the future");
    unknown.extend(extra.finish());
    assert_eq!(load(true, DISK_SECTORS, &nics, &unknown), SnapshotError::UnknownSection { id: 0x4242, version: 1 });
    let no_cmos = {
        let mut out = Writer::new();
        for s in snapshot::sections(&payload).unwrap().into_iter().filter(|s| s.id != SectionId::Cmos) {
            out.raw_section(s.id as u16, s.instance, s.version, s.body);
        }
        out.finish()
    };
    assert!(matches!(
        load(true, DISK_SECTORS, &nics, &no_cmos),
        SnapshotError::Invalid { .. } | SnapshotError::Missing { .. }
    ));
    // Empty (an older device model's state file), and every truncation.
    assert_eq!(load(true, DISK_SECTORS, &nics, &[]), SnapshotError::Empty);
    for cut in (1..payload.len()).step_by(7) {
        load(true, DISK_SECTORS, &nics, &payload[..cut]);
    }
    // The full state loads.
    machine_with(true, DISK_SECTORS, &nics).load_state(&payload, 0).unwrap();
}

#[test]
fn a_disk_request_in_flight_is_not_saved() {
    let ram = Ram::new(4096);
    let mut m = machine_with(true, DISK_SECTORS, &[]);
    for (port, value) in [(0x1f6, 0xe0), (0x1f2, 1), (0x1f3, 5), (0x1f7, 0x20)] {
        m.port_write(port, 1, value, &ram);
    }
    assert!(!m.ide().is_idle());
    let taken = m.ide_mut().take_request();
    assert!(taken.is_some());
    assert!(!m.ide().is_idle(), "taken by a worker, not completed");
    let error = machine_with(true, DISK_SECTORS, &[]).load_state(&m.save_state(0), 0).unwrap_err();
    assert!(error.to_string().contains("disk request outstanding"), "{error}");
    m.ide_mut().complete(HDA, BlockOutcome::Read(sector_data(5, 1)));
    assert!(m.ide().is_idle());
    machine_with(true, DISK_SECTORS, &[]).load_state(&m.save_state(0), 0).unwrap();
}

/// Damaged states (the checksum is only the state file's): every outcome is an
/// error or a machine that still answers every port without panicking.
#[test]
fn damaged_states_never_panic() {
    let ram = Ram::new(64 * 1024);
    let nics = [NicModel::Rtl8139, NicModel::E1000];
    let mut m = machine_with(true, DISK_SECTORS, &nics);
    boot_to_mid_read(&mut m, &ram);
    let payload = m.save_state(0);
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut loaded = 0;
    for _ in 0..400 {
        let mut damaged = payload.clone();
        for _ in 0..(next() % 4 + 1) {
            let at = next() as usize % damaged.len();
            damaged[at] = next() as u8;
        }
        if devices::machine::fuzz_load_state(&damaged) {
            loaded += 1;
        }
    }
    assert!(loaded > 0, "some damage is in values a device takes as they are");
}

/// Linux's sr reading 32 CD blocks (READ(10) through PACKET, byte count limit 63 KiB):
/// saved in the middle of the first DRQ block, the restored machine hands out the
/// rest of the data, the next DRQ block and the final status as the original does.
#[test]
fn a_cd_read_in_progress_goes_on_after_a_restore() {
    let (ram_a, ram_b) = (Ram::new(4096), Ram::new(4096));
    let mut a = machine_with(true, DISK_SECTORS, &[]);
    a.config_write(0x09, 0x40, 2, 0x8000);
    a.config_write(0x09, 0x42, 2, 0x8000);
    let limit = 63 * 1024u32;
    for (port, value) in [(0x176, 0xa0), (0x171, 0), (0x174, limit & 0xff), (0x175, limit >> 8), (0x177, 0xa0)] {
        a.port_write(port, 1, value, &ram_a);
    }
    assert_eq!(a.port_read(0x376, 1, &ram_a) & 0x08, 0x08, "DRQ for the CDB");
    let cdb = [0x28u8, 0, 0, 0, 0, 5, 0, 0, 32, 0, 0, 0];
    for pair in cdb.chunks(2) {
        a.port_write(0x170, 2, u32::from(u16::from_le_bytes([pair[0], pair[1]])), &ram_a);
    }
    serve_disk(&mut a);
    assert_eq!(a.port_read(0x177, 1, &ram_a) & 0x08, 0x08, "DRQ for data");
    let mut first = Vec::new();
    for _ in 0..1000 {
        first.push(a.port_read(0x170, 2, &ram_a));
    }
    a.sync_irqs();
    a.take_effects();
    let mut b = twin(&a, true, &[]);
    b.take_effects();
    drive_both(&mut a, &mut b, &ram_a, &ram_b, |m, ram| {
        let mut seen = Vec::new();
        for _ in 0..200 {
            let status = m.port_read(0x177, 1, ram);
            seen.push(status);
            if status & 0x08 == 0 {
                break;
            }
            let bytes = m.port_read(0x174, 1, ram) | m.port_read(0x175, 1, ram) << 8;
            seen.push(bytes);
            for _ in 0..bytes / 2 {
                seen.push(m.port_read(0x170, 2, ram));
            }
            serve_disk(m);
        }
        seen
    });
    // And what came out is the CD's blocks 5.. (PV sectors 20..).
    let data = sector_data(20, 128);
    assert_eq!(first[0] as u16, u16::from_le_bytes([data[0], data[1]]));
}

/// A READ DMA that waits for the bus master's START when the state is saved: the
/// restored machine claims BAR4 again, has the same BMIDE registers and transfer mode,
/// and START then runs the transfer with the saved PRD table address.
#[test]
fn a_dma_command_waiting_for_start_goes_on_after_a_restore() {
    use devices::machine::PIIX3_IDE_DEVFN;
    let ram = Ram::new(1 << 20);
    let mut m = machine_with(true, DISK_SECTORS, &[]);
    m.config_write(PIIX3_IDE_DEVFN, 0x20, 4, 0xc000);
    m.config_write(PIIX3_IDE_DEVFN, 0x04, 2, 0x0005);
    // SET FEATURES MWDMA2, then READ DMA of 4 sectors at LBA 7 into one 2 KiB entry
    for (port, value) in [(0x1f6, 0xa0), (0x1f1, 0x03), (0x1f2, 0x22), (0x1f7, 0xef)] {
        m.port_write(port, 1, value, &ram);
    }
    m.port_read(0x1f7, 1, &ram);
    let mut table = 0x4_0000u32.to_le_bytes().to_vec();
    table.extend_from_slice(&(0x800u32 | 1 << 31).to_le_bytes());
    ram.put(0x2000, &table);
    m.port_write(0xc004, 4, 0x2000, &ram);
    m.port_write(0xc000, 1, 0x08, &ram);
    m.port_write(0xc002, 1, 0x66, &ram);
    for (port, value) in [(0x1f6, 0xe0), (0x1f2, 4), (0x1f3, 7), (0x1f4, 0), (0x1f5, 0), (0x1f7, 0xc8)] {
        m.port_write(port, 1, value, &ram);
    }
    m.take_effects();
    let mut restored = twin(&m, true, &[]);
    assert!(
        restored.take_effects().contains(&Effect::Claim { kind: IoRangeKind::Port, first: 0xc000, last: 0xc00f }),
        "BAR4 claimed again"
    );
    for machine in [&mut m, &mut restored] {
        assert_eq!(machine.port_read(0xc000, 1, &ram), 0x08);
        assert_eq!(machine.port_read(0xc002, 1, &ram), 0x60, "drive-capable bits kept");
        assert_eq!(machine.port_read(0xc004, 4, &ram), 0x2000);
        assert_eq!(machine.port_read(0x3f6, 1, &ram), 0x58, "waiting for the bus master");
        machine.port_write(0xc000, 1, 0x09, &ram);
        let request = machine.ide_mut().take_request().expect("the transfer starts");
        match request.op {
            BlockOp::DmaRead { sector, nr_sectors, sg } => {
                assert_eq!((sector, nr_sectors, sg.len(), sg[0].gpa, sg[0].len_bytes), (7, 4, 1, 0x4_0000, 0x800))
            }
            other => panic!("{other:?}"),
        }
        machine.ide_mut().complete(request.drive, BlockOutcome::Transferred);
        assert_eq!(machine.port_read(0xc002, 1, &ram) & 0x07, 0x04, "INTR, not ACTIVE");
        assert_eq!(machine.port_read(0x1f7, 1, &ram), 0x50);
    }
    // IDENTIFY shows the mode SET FEATURES chose before the save.
    restored.port_write(0x1f7, 1, 0xec, &ram);
    let words: Vec<u32> = (0..64).map(|_| restored.port_read(0x1f0, 2, &ram)).collect();
    assert_eq!(words[63], 0x0407);
}

#[test]
fn an_ide_section_of_version_1_is_refused_by_name() {
    let ram = Ram::new(64 * 1024);
    let mut m = machine_with(true, DISK_SECTORS, &[]);
    boot_to_mid_read(&mut m, &ram);
    let older = rewrite(&m.save_state(0), |s| (s.id == SectionId::Ide).then_some((s.id as u16, 1)));
    let error = machine_with(true, DISK_SECTORS, &[]).load_state(&older, 0).unwrap_err();
    assert!(matches!(error, SnapshotError::Version { saved: 1, supported: 2, .. }), "{error}");
}
