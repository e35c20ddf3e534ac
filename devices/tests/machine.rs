//! The machine as hvmloader, SeaBIOS and Linux find it, through ioreqs: first the
//! machine on its own (every ioreq shape, against guest memory in a Vec), then the
//! whole service in the simulated Xen, where the guest's accesses go through Xen's
//! routing to the device model's ioreq tasks and the effects come back as `dm_op`s.

use std::cell::RefCell;
use std::time::Duration;

mod common;

use common::{GUEST, STUB, guest_config, now, pio, spawn_service, until_ready};
use devices::machine::{Effect, Machine, MachineConfig};
use devices::service::serve;
use xen_seams::hvm::{GuestMemory, IoRangeKind, Ioreq, ShutdownReason, ioreq_type};
use xen_seams::sim::{Executor, IrqChange, SimGuest, SimXen, World};

/// Guest RAM for machine-level tests.
type Ram = devices::vec_memory::VecGuestMemory;

fn machine() -> Machine {
    Machine::new(MachineConfig {
        ide: Default::default(),
        boot_order: "dc".into(),
        ram_mib: 128,
        com1: true,
        xen_platform: false,
    })
}

fn pci(devfn: u8, reg: u16, size: u32, read: bool, data: u64) -> Ioreq {
    Ioreq {
        addr: (u64::from(devfn) << 32) | u64::from(reg),
        data,
        count: 1,
        size,
        bits: Ioreq::make_bits(1, false, read, false),
        kind: ioreq_type::PCI_CONFIG,
        ..Ioreq::default()
    }
}

#[test]
fn hvmloader_finds_the_i440fx_piix3_and_ide_functions() {
    let (mut m, ram) = (machine(), Ram::new(4096));
    let id = |m: &mut Machine, devfn| m.handle_ioreq(&pci(devfn, 0, 4, true, 0), &ram, 0);
    assert_eq!(id(&mut m, 0x00), 0x1237_8086);
    assert_eq!(id(&mut m, 0x08), 0x7000_8086);
    assert_eq!(id(&mut m, 0x09), 0x7010_8086);
    assert_eq!(id(&mut m, 0x10), 0xffff_ffff, "nothing at 00:02.0");
    // SeaBIOS walks functions 1-7 only behind a multi-function header.
    assert_eq!(m.handle_ioreq(&pci(0x08, 0x0e, 1, true, 0), &ram, 0) & 0x80, 0x80);
    // hvmloader routes PIRQA-D to IRQs 5, 10, 11, 5 with one dword write.
    m.handle_ioreq(&pci(0x08, 0x60, 4, false, 0x050b_0a05), &ram, 0);
    let routes: Vec<Effect> = m.take_effects().into_iter().collect();
    assert_eq!(
        routes,
        [
            Effect::LinkRoute { link: 0, isa_irq: 5 },
            Effect::LinkRoute { link: 1, isa_irq: 10 },
            Effect::LinkRoute { link: 2, isa_irq: 11 },
            Effect::LinkRoute { link: 3, isa_irq: 5 },
        ]
    );
    // ...and enables IDE decoding, which Linux's ata_piix then reads back.
    m.handle_ioreq(&pci(0x09, 0x40, 2, false, 0x8000), &ram, 0);
    m.handle_ioreq(&pci(0x09, 0x42, 2, false, 0x8000), &ram, 0);
    assert_eq!(m.handle_ioreq(&pci(0x09, 0x40, 4, true, 0), &ram, 0), 0x8000_8000);
    // Class codes: an IDE controller in legacy mode and bus-master capable (prog-if 0x80).
    assert_eq!(m.handle_ioreq(&pci(0x09, 0x08, 4, true, 0), &ram, 0) >> 8, 0x01_01_80);
    // BAR4 (16 I/O ports) is claimed once placed and I/O decoding is on, released when off.
    m.handle_ioreq(&pci(0x09, 0x20, 4, false, 0xc040), &ram, 0);
    assert!(m.take_effects().is_empty());
    m.handle_ioreq(&pci(0x09, 0x04, 2, false, 0x0005), &ram, 0);
    assert_eq!(
        m.take_effects().pop_front(),
        Some(Effect::Claim { kind: IoRangeKind::Port, first: 0xc040, last: 0xc04f })
    );
    m.handle_ioreq(&pio(0xc044, 4, false, 0x8000), &ram, 0);
    assert_eq!(m.handle_ioreq(&pio(0xc044, 4, true, 0), &ram, 0), 0x8000, "the PRD address through the claimed ports");
    m.handle_ioreq(&pci(0x09, 0x04, 2, false, 0x0004), &ram, 0);
    assert_eq!(
        m.take_effects().pop_front(),
        Some(Effect::Release { kind: IoRangeKind::Port, first: 0xc040, last: 0xc04f })
    );
}

#[test]
fn the_config_address_latch_reads_back_and_byte_probes_are_ignored() {
    let (mut m, ram) = (machine(), Ram::new(4096));
    // Linux's pci_check_type1: byte 0x01 to 0xcfb, then the latch must read back.
    m.handle_ioreq(&pio(0xcfb, 1, false, 0x01), &ram, 0);
    m.handle_ioreq(&pio(0xcf8, 4, false, 0x8000_0000), &ram, 0);
    assert_eq!(m.handle_ioreq(&pio(0xcf8, 4, true, 0), &ram, 0), 0x8000_0000);
    assert!(m.take_effects().is_empty(), "no reset from the probe");
    // ACPI's reset register: 6 to 0xcf9 reboots.
    m.handle_ioreq(&pio(0xcf9, 1, false, 0x06), &ram, 0);
    assert_eq!(m.take_effects().pop_front(), Some(Effect::Shutdown(ShutdownReason::Reboot)));
}

/// Linux's reboot without ACPI's reset register (Xen's FADT leaves it unflagged):
/// `kb_wait` reads 0x64 until the input buffer is empty, then 0xfe reboots; the
/// keyboard controller's ports are claimed so Xen does not answer them with 0xff.
#[test]
fn keyboard_controller_reset_reboots_and_its_interrupts_reach_xen() {
    let (mut m, ram) = (machine(), Ram::new(4096));
    assert!(m.claims().contains(&(IoRangeKind::Port, 0x60, 0x60)));
    assert!(m.claims().contains(&(IoRangeKind::Port, 0x64, 0x64)));
    assert_eq!(m.handle_ioreq(&pio(0x64, 1, true, 0), &ram, 0) & 0x02, 0);
    // A byte for the (absent) keyboard: a timeout reply on IRQ 1, gone once read.
    m.handle_ioreq(&pio(0x60, 1, false, 0xf2), &ram, 0);
    assert_eq!(m.take_effects().pop_front(), Some(Effect::IsaIrq { irq: 1, level: true }));
    assert_eq!(m.handle_ioreq(&pio(0x64, 1, true, 0), &ram, 0) & 0x41, 0x41);
    assert_eq!(m.handle_ioreq(&pio(0x60, 1, true, 0), &ram, 0), 0xfe);
    assert_eq!(m.take_effects().pop_front(), Some(Effect::IsaIrq { irq: 1, level: false }));
    m.handle_ioreq(&pio(0x64, 1, false, 0xfe), &ram, 0);
    assert_eq!(m.take_effects().pop_front(), Some(Effect::Shutdown(ShutdownReason::Reboot)));
}

#[test]
fn cmos_boot_order_and_acpi_poweroff() {
    let (mut m, ram) = (machine(), Ram::new(4096));
    m.handle_ioreq(&pio(0x70, 1, false, 0x3d), &ram, 0);
    // "dc": CD first (3), then the disk (2).
    assert_eq!(m.handle_ioreq(&pio(0x71, 1, true, 0), &ram, 0), 0x23);
    // hvmloader's acpi_enable_sci needs SCI_EN set.
    assert_eq!(m.handle_ioreq(&pio(0xb004, 2, true, 0), &ram, 0) & 1, 1);
    // Linux's S5: SLP_TYP 0 | SLP_EN.
    m.handle_ioreq(&pio(0xb004, 2, false, 0x2000), &ram, 0);
    assert_eq!(m.take_effects().pop_front(), Some(Effect::Shutdown(ShutdownReason::Poweroff)));
}

#[test]
fn rep_outs_and_ins_move_guest_memory_in_both_directions() {
    let (mut m, ram) = (machine(), Ram::new(16384));
    // `rep outsb` of "hi\n" from guest memory to COM1's THR, then the UART has it.
    ram.write(0x1000, b"hi\n").unwrap();
    let outs = Ioreq {
        addr: 0x3f8,
        data: 0x1000,
        count: 3,
        size: 1,
        bits: Ioreq::make_bits(1, true, false, false),
        kind: ioreq_type::PIO,
        ..Ioreq::default()
    };
    m.handle_ioreq(&outs, &ram, 0);
    assert_eq!(m.com1_mut().unwrap().take_output(16), b"hi\n");
    // `std; rep outsb` goes downwards from the last byte.
    let down = Ioreq { data: 0x1002, bits: Ioreq::make_bits(1, true, false, true), ..outs };
    m.handle_ioreq(&down, &ram, 0);
    assert_eq!(m.com1_mut().unwrap().take_output(16), b"\nih");
    // `rep insb` of the CMOS data port: the same byte count times, into memory.
    m.handle_ioreq(&pio(0x70, 1, false, 0x3d), &ram, 0);
    let ins = Ioreq { addr: 0x71, data: 0x2000, count: 4, bits: Ioreq::make_bits(1, true, true, false), ..outs };
    m.handle_ioreq(&ins, &ram, 0);
    let mut got = [0u8; 4];
    ram.read(0x2000, &mut got).unwrap();
    assert_eq!(got, [0x23; 4]);
}

#[test]
fn malformed_requests_are_answered_without_effect() {
    let (mut m, ram) = (machine(), Ram::new(8192));
    // Sizes Xen never sends, a rep larger than a page, memory the guest lacks, a
    // pointer that wraps, an unknown type: answered (reads all-ones), counted.
    assert_eq!(m.handle_ioreq(&pio(0x70, 3, true, 0), &ram, 0), 0xff_ffff);
    let huge = Ioreq { data: 0, count: 5000, bits: Ioreq::make_bits(1, true, true, false), ..pio(0x71, 1, true, 0) };
    m.handle_ioreq(&huge, &ram, 0);
    let outside = Ioreq { data: 1 << 30, count: 2, ..huge };
    m.handle_ioreq(&outside, &ram, 0);
    let wraps = Ioreq { data: u64::MAX - 1, count: 4, ..huge };
    m.handle_ioreq(&wraps, &ram, 0);
    let odd = Ioreq { kind: 42, ..pio(0x70, 1, true, 0) };
    assert_eq!(m.handle_ioreq(&odd, &ram, 0), 0xff);
    assert_eq!(m.stats().malformed, 5);
    assert_eq!(ram.to_vec().iter().filter(|b| **b != 0).count(), 0, "nothing was written");
    // IOREQ_TYPE_INVALIDATE drops the cached mappings.
    let invalidate = Ioreq { kind: ioreq_type::INVALIDATE, count: 0, size: 4, data: u64::MAX, ..Ioreq::default() };
    m.handle_ioreq(&invalidate, &ram, 0);
    assert_eq!(ram.invalidations(), 1);
}

/// A pseudo-random ioreq stream (as the fuzz target feeds) never panics and every
/// request gets an answer.
#[test]
fn random_ioreq_streams_never_panic() {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };
    let mut bytes = vec![0u8; 1 << 16];
    for chunk in bytes.chunks_mut(8) {
        chunk.copy_from_slice(&next().to_le_bytes()[..chunk.len()]);
    }
    let answered = devices::machine::fuzz_ioreqs(&bytes);
    assert!(answered > 1000, "{answered}");
    // The PRD-table and ATAPI CDB fuzz drivers over the same bytes, and over tables
    // built to parse (a length, then entries with the end bit on the last).
    assert_eq!(devices::machine::fuzz_atapi_cdb(&bytes[..13 * 400]), 400);
    let mut parsed = 0;
    for (n, chunk) in bytes.chunks(96).enumerate() {
        parsed += usize::from(devices::machine::fuzz_prd_table(chunk));
        let mut table = (n as u32 % 8 + 1).to_le_bytes().to_vec();
        for entry in 0..4u32 {
            table.extend_from_slice(&(0x2_0000 + entry * 0x1_0000).to_le_bytes());
            table.extend_from_slice(&(0x800 | u32::from(entry == 3) << 31).to_le_bytes());
        }
        assert!(devices::machine::fuzz_prd_table(&table), "a well-formed table parses");
    }
    assert!(parsed < bytes.len() / 96, "random tables are mostly refused");
}

/// Runs the service for `guest` and `script` as the guest's CPUs.
fn with_service(script: impl AsyncFnOnce(SimGuest) + 'static) -> World {
    let world = World::new();
    let guest = world.hvm_guest(GUEST, 2, 16 << 20);
    let stub: &'static SimXen = Box::leak(Box::new(world.domain(STUB)));
    let mut executor = Executor::new(&world);
    executor.spawn_background("service", async move {
        let _ = serve(stub, &guest_config(), now).await;
    });
    let watcher = world.clone();
    let done = executor.spawn("guest", async move {
        // The guest runs once the device model says it is ready, as libxl arranges.
        until_ready(&watcher).await;
        script(guest).await;
    });
    executor.run().unwrap_or_else(|stuck| panic!("{stuck}"));
    assert!(done.is_ready());
    world
}

#[test]
fn everything_is_claimed_before_running_and_the_guest_is_served_through_xen() {
    with_service(async |guest| {
        let claimed = guest.claimed();
        for port in [0x70u64, 0x1f0, 0x1f7, 0x3f6, 0x170, 0x376, 0xcf8, 0xcf9, 0xb004, 0xafe0] {
            assert!(
                claimed.iter().any(|&(k, a, b)| k == IoRangeKind::Port && a <= port && port <= b),
                "port {port:#x} unclaimed: {claimed:?}"
            );
        }
        assert!(!claimed.iter().any(|&(_, a, b)| a <= 0x3f8 && 0x3f8 <= b), "no COM1 without a serial console");
        // hvmloader's scan through 0xcf8/0xcfc, as Xen routes it.
        assert_eq!(guest.pci_read(0, 0, 0, 4).await, 0x1237_8086);
        assert_eq!(guest.pci_read(1, 0, 0, 4).await, 0x7000_8086);
        assert_eq!(guest.pci_read(1, 1, 0, 2).await, 0x8086);
        assert_eq!(guest.pci_read(3, 0, 0, 4).await, 0xffff_ffff);
        guest.pci_write(1, 0, 0x60, 1, 11).await;
        assert_eq!(guest.pci_read(1, 0, 0x60, 1).await, 11);
        // No floppy, CD first.
        guest.outb(0x70, 0x10).await;
        assert_eq!(guest.inb(0x71).await, 0);
        assert!(guest.irq_log().contains(&IrqChange::LinkRoute { link: 0, isa_irq: 11 }));
        // Linux powers off.
        guest.outw(0xb004, 0x2000).await;
        assert_eq!(guest.shutdown_reason(), Some(ShutdownReason::Poweroff));
    });
}

#[test]
fn each_vcpu_is_served_on_its_own() {
    with_service(async |guest| {
        let a = guest.clone();
        let read_on = |vcpu: u32| {
            let g = a.clone();
            async move {
                let req = Ioreq {
                    addr: 0xcf8,
                    count: 1,
                    size: 4,
                    bits: Ioreq::make_bits(0, false, true, false),
                    kind: ioreq_type::PIO,
                    ..Ioreq::default()
                };
                g.io(vcpu, req).await
            }
        };
        guest.outl(0xcf8, 0x8000_0800).await;
        assert_eq!(read_on(1).await, 0x8000_0800);
        assert_eq!(read_on(0).await, 0x8000_0800);
    });
}

/// Xen notifies every request; should a notification be lost, the vCPU (held in Xen
/// until answered) must not wait for ever: the server looks at its slot each second.
#[test]
fn a_request_whose_event_was_lost_is_still_answered() {
    with_service(async |guest| {
        guest.outl(0xcf8, 0x8000_0000).await;
        guest.lose_next_event();
        assert_eq!(guest.inl(0xcfc).await, 0x1237_8086);
        guest.lose_next_event();
        guest.outl(0xcf8, 0x8000_0800).await;
        assert_eq!(guest.inl(0xcfc).await, 0x7000_8086);
    });
}

/// The guest's disk (hda) served from a simulated blkback.
const HDA: xen_seams::sim::PvDevice = xen_seams::sim::PvDevice { kind: "vbd", devid: 768, frontend: STUB, backend: 0 };

/// Polls the primary channel's status until BSY clears (as SeaBIOS's ndelay loop
/// does), sleeping on `clock` between polls.
async fn wait_not_busy(guest: &SimGuest, clock: &SimXen) -> u8 {
    for _ in 0..10_000 {
        let status = guest.inb(0x1f7).await;
        if status & 0x80 == 0 {
            return status;
        }
        xen_seams::Clock::sleep(clock, Duration::from_micros(100)).await;
    }
    panic!("the disk stayed busy");
}

/// A SeaBIOS-style LBA28 PIO command on the primary master, interrupts on.
async fn ata_command(guest: &SimGuest, command: u8, lba: u32, count: u8) {
    guest.outb(0x3f6, 0x00).await; // nIEN clear: interrupts on
    guest.outb(0x1f6, 0xe0 | ((lba >> 24) as u8 & 0x0f)).await;
    guest.outb(0x1f2, count).await;
    guest.outb(0x1f3, lba as u8).await;
    guest.outb(0x1f4, (lba >> 8) as u8).await;
    guest.outb(0x1f5, (lba >> 16) as u8).await;
    guest.outb(0x1f7, command).await;
}

/// The service in the simulated Xen with one hard disk (devid 768, `len_bytes` of a
/// sector-numbered pattern) behind the simulated blkback (configured by `blkback`): the disk's bytes, blkback's
/// log, the guest (1 vCPU, 16 MiB) and the executor with blkback and the service spawned.
fn served_hard_disk(
    world: &World,
    len_bytes: usize,
    blkback: frontends::blkfront::sim::Config,
) -> (Vec<u8>, std::rc::Rc<RefCell<frontends::blkfront::sim::Log>>, SimGuest, Executor<'static>) {
    // The stub domain exists (with its home) before libxl attaches its disk.
    let stub: &'static SimXen = Box::leak(Box::new(world.domain(STUB)));
    world.toolstack(HDA, &[]);
    let disk: Vec<u8> = (0..len_bytes).map(|i: usize| (i / 512) as u8 ^ (i % 251) as u8).collect();
    let backend = frontends::blkfront::sim::Backend::new(world.domain(0), HDA, blkback, disk.clone());
    let log = backend.log();
    let guest = world.hvm_guest(GUEST, 1, 16 << 20);
    let mut config = guest_config();
    config.drives = vec![devices::block::DriveConfig {
        devid: 768,
        kind: devices::block::DriveKind::HardDisk,
        read_only: false,
        medium: Some(devices::block::MediumSource { filename: "/dev/xvda".into(), format: Some("host_device".into()) }),
    }];
    let mut executor = Executor::new(world);
    executor.spawn_background("blkback", backend.run());
    spawn_service(&mut executor, stub, config);
    (disk, log, guest, executor)
}

#[test]
fn the_guest_reads_and_writes_its_disk_through_ioreqs_block_workers_and_blkback() {
    let world = World::new();
    let (disk, log, guest, mut executor) = served_hard_disk(&world, 1 << 20, Default::default());
    let watcher = world.clone();
    let clock = world.domain(0);
    let g = guest.clone();
    let done = executor.spawn("guest", async move {
        until_ready(&watcher).await;
        // READ SECTORS of two sectors at LBA 9: BSY while the worker reads the PV disk,
        // then DRQ and an interrupt per sector; `rep insw` moves each into guest RAM.
        ata_command(&g, 0x20, 9, 2).await;
        for sector in 0..2u64 {
            let status = wait_not_busy(&g, &clock).await;
            assert_eq!(status & 0x08, 0x08, "DRQ for sector {sector}: status {status:#x}");
            g.ins(0x1f0, 2, 256, 0x10000 + sector * 512).await;
        }
        // WRITE SECTORS of one sector at LBA 100 from guest RAM (`rep outsw`).
        g.write_ram(0x20000, &[0xee; 512]);
        ata_command(&g, 0x30, 100, 1).await;
        assert_eq!(wait_not_busy(&g, &clock).await & 0x08, 0x08);
        g.outs(0x1f0, 2, 256, 0x20000).await;
        let status = wait_not_busy(&g, &clock).await;
        assert_eq!(status & 0x89, 0x00, "the write completed without error: {status:#x}");
        // FLUSH CACHE.
        ata_command(&g, 0xe7, 0, 0).await;
        assert_eq!(wait_not_busy(&g, &clock).await & 0x01, 0);
    });
    executor.run().unwrap_or_else(|stuck| panic!("{stuck}"));
    assert!(done.is_ready());
    let mut read = vec![0u8; 1024];
    guest.read_ram(0x10000, &mut read);
    assert_eq!(read, &disk[9 * 512..11 * 512]);
    assert!(log.borrow().disk[100 * 512..101 * 512].iter().all(|&b| b == 0xee), "the write reached blkback");
    // One interrupt per sector read, one for the written sector, one for the flush.
    assert!(guest.isa_rising_edges(14) >= 4, "{:?}", guest.irq_log());
}

/// One QMP line from the client, read a byte at a time.
async fn qmp_message(client: &frontends::vchan::sim_client::Client<'_>) -> serde_json::Value {
    let mut line = Vec::new();
    let mut byte = [0u8];
    while !line.ends_with(b"\n") {
        client.read(&mut byte).await.expect("QMP reply");
        line.push(byte[0]);
    }
    serde_json::from_slice(&line).expect("JSON")
}

/// libxl's `xen-set-global-dirty-log` on a QMP connection of its own.
async fn set_dirty_log(dom0: &SimXen, enable: bool) {
    let path = format!("/local/domain/{STUB}/device-model/{GUEST}/qmp-vchan");
    let client = frontends::vchan::sim_client::connect(dom0, STUB, &path).await;
    qmp_message(&client).await;
    for request in [
        r#"{"execute":"qmp_capabilities"}"#.to_string(),
        format!(r#"{{"execute":"xen-set-global-dirty-log","arguments":{{"enable":{enable}}}}}"#),
    ] {
        client.write_all(format!("{request}\r\n").as_bytes()).await.expect("sent");
        let reply = qmp_message(&client).await;
        assert_eq!(reply["return"], serde_json::json!({}), "{reply}");
    }
    client.close();
}

/// Where hvmloader put the IDE function's BAR4 (the bus-master registers) in these tests.
const BM: u16 = 0xc000;

/// As hvmloader and ata_piix: BAR4 placed, I/O and bus mastering on, the drive in MWDMA2.
async fn enable_mwdma2(g: &SimGuest, clock: &SimXen) {
    g.pci_write(1, 1, 0x20, 4, u32::from(BM)).await;
    g.pci_write(1, 1, 0x04, 2, 0x0005).await;
    // SET FEATURES: transfer mode MWDMA2
    g.outb(0x1f1, 0x03).await;
    ata_command(g, 0xef, 0, 0x22).await;
    assert_eq!(wait_not_busy(g, clock).await, 0x50);
}

/// As `ata_bmdma_setup` and `ata_bmdma_start`: the PRD table (at 0x8000) for `table`,
/// the command (LBA48 registers, so READ/WRITE DMA EXT see their HOB bytes), START.
async fn start_dma(g: &SimGuest, command: u8, lba: u32, count: u16, table: &[(u32, u32)], to_memory: bool) {
    let mut bytes = Vec::new();
    for (i, &(gpa, len)) in table.iter().enumerate() {
        let eot = if i + 1 == table.len() { 1u32 << 31 } else { 0 };
        bytes.extend_from_slice(&gpa.to_le_bytes());
        bytes.extend_from_slice(&((len & 0xffff) | eot).to_le_bytes());
    }
    g.write_ram(0x8000, &bytes);
    g.outl(BM + 4, 0x8000).await;
    g.outb(BM, if to_memory { 0x08 } else { 0 }).await;
    g.outb(BM + 2, 0x06).await;
    // the HOB bytes first (an LBA48 command reads them; LBA28 ignores them)
    g.outb(0x3f6, 0x00).await;
    g.outb(0x1f6, 0x40).await;
    g.outb(0x1f2, (count >> 8) as u8).await;
    g.outb(0x1f3, 0).await;
    g.outb(0x1f4, 0).await;
    g.outb(0x1f5, 0).await;
    g.outb(0x1f2, count as u8).await;
    g.outb(0x1f3, lba as u8).await;
    g.outb(0x1f4, (lba >> 8) as u8).await;
    g.outb(0x1f5, (lba >> 16) as u8).await;
    g.outb(0x1f7, command).await;
    g.outb(BM, if to_memory { 0x09 } else { 0x01 }).await;
}

/// Polls the bus-master status for its interrupt bit, then clears START as
/// `ata_bmdma_stop` does: (the bus-master status's low bits, the ATA status).
async fn finish_dma(g: &SimGuest, clock: &SimXen, to_memory: bool) -> (u8, u8) {
    let mut bm_status = 0;
    for _ in 0..10_000 {
        bm_status = g.inb(BM + 2).await;
        if bm_status & 0x04 != 0 {
            break;
        }
        xen_seams::Clock::sleep(clock, Duration::from_micros(100)).await;
    }
    g.outb(BM, if to_memory { 0x08 } else { 0 }).await;
    (bm_status & 0x07, g.inb(0x1f7).await)
}

/// One QMP command on a connection of its own, as libxl sends them: its reply.
async fn qmp_command(dom0: &SimXen, command: &str) -> serde_json::Value {
    let path = format!("/local/domain/{STUB}/device-model/{GUEST}/qmp-vchan");
    let client = frontends::vchan::sim_client::connect(dom0, STUB, &path).await;
    qmp_message(&client).await;
    let mut reply = serde_json::Value::Null;
    for request in [r#"{"execute":"qmp_capabilities"}"#, command] {
        client.write_all(format!("{request}\r\n").as_bytes()).await.expect("sent");
        // Events (STOP, RESUME) may come before the reply, as in QEMU.
        reply = qmp_message(&client).await;
        while reply.get("event").is_some() {
            reply = qmp_message(&client).await;
        }
        assert!(reply.get("return").is_some(), "{request}: {reply}");
    }
    client.close();
    reply
}

/// libxl's suspend of a guest whose DMA is in flight on a slow disk: dirty log on, then
/// QMP `stop`. The reply must come only once the DMA has landed in guest RAM and its
/// pages were reported, or the last pass of the save would miss them.
#[test]
fn stop_replies_after_the_dma_in_flight_landed_and_was_reported() {
    let world = World::new();
    let slow = frontends::blkfront::sim::Config { latency: Some(Duration::from_millis(20)), ..Default::default() };
    let (disk, _log, guest, mut executor) = served_hard_disk(&world, 4 << 20, slow);
    let watcher = world.clone();
    let clock = world.domain(0);
    let g = guest.clone();
    const READ_SECTORS: u16 = 2048;
    let done = executor.spawn("guest", async move {
        until_ready(&watcher).await;
        enable_mwdma2(&g, &clock).await;
        set_dirty_log(&clock, true).await;
        let table: Vec<(u32, u32)> = (0..16).map(|i| (0x10_0000 + i * 0x1_0000, 0x1_0000)).collect();
        start_dma(&g, 0x25, 10, READ_SECTORS, &table, true).await;
        qmp_command(&clock, r#"{"execute":"stop"}"#).await;
        // Paused: nothing of the guest runs; look at its memory from outside.
        let mut landed = vec![0u8; usize::from(READ_SECTORS) * 512];
        g.read_ram(0x10_0000, &mut landed);
        assert!(landed == disk[10 * 512..(10 + usize::from(READ_SECTORS)) * 512], "stop replied before the DMA landed");
        let mut dirty: Vec<u64> =
            g.modified_memory_log().iter().flat_map(|&(first, nr)| first..first + u64::from(nr)).collect();
        dirty.sort();
        dirty.dedup();
        assert_eq!(dirty, (0x100..0x200).collect::<Vec<u64>>(), "stop replied before the pages were reported");
        qmp_command(&clock, r#"{"execute":"cont"}"#).await;
        assert_eq!(finish_dma(&g, &clock, true).await, (0x04, 0x50), "the read ends normally after cont");
        set_dirty_log(&clock, false).await;
    });
    executor.run().unwrap_or_else(|stuck| panic!("{stuck}"));
    assert!(done.is_ready());
}

/// Linux's ata_piix with the disk in MWDMA2, through the whole service: hvmloader places
/// BAR4 and turns on bus mastering, libata selects MWDMA2, `ata_bmdma_setup` writes the
/// PRD table address and direction, the command goes out, `ata_bmdma_start` sets START,
/// and the block worker moves the data straight between blkback and guest RAM. While
/// libxl's dirty log is on, every page the DMA wrote is reported to Xen.
#[test]
fn linux_dma_reads_and_writes_through_the_service_and_reports_the_pages_it_wrote() {
    let world = World::new();
    let (disk, log, guest, mut executor) = served_hard_disk(&world, 4 << 20, Default::default());
    let watcher = world.clone();
    let clock = world.domain(0);
    let g = guest.clone();
    // A 1 MiB read: 16 PRD entries of 64 KiB (count 0), more than one blkfront call.
    const READ_SECTORS: u32 = 2048;
    let done = executor.spawn("guest", async move {
        until_ready(&watcher).await;
        set_dirty_log(&clock, true).await;
        enable_mwdma2(&g, &clock).await;
        let dma = async |command: u8, lba: u32, count: u16, table: &[(u32, u32)], to_memory: bool| {
            start_dma(&g, command, lba, count, table, to_memory).await;
            finish_dma(&g, &clock, to_memory).await
        };
        let read_table: Vec<(u32, u32)> = (0..16).map(|i| (0x10_0000 + i * 0x1_0000, 0x1_0000)).collect();
        // READ DMA EXT of 2048 sectors (count 0x0800: the low byte is 0)
        let (bm, status) = dma(0x25, 10, READ_SECTORS as u16, &read_table, true).await;
        assert_eq!((bm, status), (0x04, 0x50), "read done without error");
        g.write_ram(0x30_0000, &[0xdd; 1024]);
        let (bm, status) = dma(0xca, 3000, 2, &[(0x30_0000, 1024)], false).await;
        assert_eq!((bm, status), (0x04, 0x50), "write done without error");
        set_dirty_log(&clock, false).await;
    });
    executor.run().unwrap_or_else(|stuck| panic!("{stuck}"));
    assert!(done.is_ready());
    let mut read = vec![0u8; READ_SECTORS as usize * 512];
    guest.read_ram(0x10_0000, &mut read);
    assert!(read == disk[10 * 512..(10 + READ_SECTORS as usize) * 512], "the read landed in guest RAM");
    assert!(log.borrow().disk[3000 * 512..3002 * 512].iter().all(|&b| b == 0xdd), "the write reached blkback");
    // One guest request, several blkfront requests at once (each carries at most 44 KiB).
    assert!(log.borrow().max_in_flight >= 4, "the 1 MiB DMA kept {} requests in flight", log.borrow().max_in_flight);
    let mut dirty: Vec<u64> =
        guest.modified_memory_log().iter().flat_map(|&(first, nr)| first..first + u64::from(nr)).collect();
    dirty.sort();
    dirty.dedup();
    assert_eq!(dirty, (0x100..0x200).collect::<Vec<u64>>(), "the 256 pages the read wrote, and nothing else");
}

/// Linux's 8250 driver on an edge-triggered IRQ 4 (how Xen's IOAPIC delivers ISA
/// interrupts): the tty writes through THRE interrupts and reads through RX
/// interrupts, the console task draining output and feeding input in between. Every
/// byte must get through without the line getting stuck high (no new edge).
#[test]
fn linux_tty_io_on_an_edge_triggered_irq4() {
    let mut m = machine();
    let ram = Ram::new(4096);
    let base = 0x3f8u16;
    let mut level = false;
    // Rising edges of IRQ 4 since the last call.
    let mut edges = |m: &mut Machine| {
        m.sync_irqs();
        let mut rising = 0;
        for effect in m.take_effects() {
            if let Effect::IsaIrq { irq: 4, level: now } = effect {
                if now && !level {
                    rising += 1;
                }
                level = now;
            }
        }
        rising
    };
    // serial8250_do_startup, then the tty's settings: FIFO on (trigger 8), OUT2,
    // RX and line-status interrupts on.
    m.port_write(base + 2, 1, 0x07, &ram);
    m.port_write(base + 2, 1, 0x81, &ram);
    m.port_write(base + 3, 1, 0x03, &ram);
    m.port_write(base + 4, 1, 0x0b, &ram);
    let mut ier = 0x05u32;
    m.port_write(base + 1, 1, ier, &ram);
    edges(&mut m);
    let text: Vec<u8> = (0..200).map(|i| b'a' + (i % 26) as u8).collect();
    let mut pending: &[u8] = &text;
    let mut received = Vec::new();
    let mut transmitted = Vec::new();
    let mut input: &[u8] = b"echo command from dom0\n";
    // start_tx
    ier |= 0x02;
    m.port_write(base + 1, 1, ier, &ram);
    let mut rounds = 0;
    while (!pending.is_empty() || !input.is_empty() || received.len() < 23) && rounds < 1000 {
        rounds += 1;
        // The console task: drain output, feed input.
        transmitted.extend(m.com1_mut().unwrap().take_output(4096));
        let accepted = m.com1_mut().unwrap().receive(input);
        input = &input[accepted..];
        if edges(&mut m) == 0 {
            continue;
        }
        // serial8250_handle_irq, as long as IIR says an interrupt is pending.
        loop {
            let iir = m.port_read(base + 2, 1, &ram);
            if iir & 1 != 0 {
                break;
            }
            let mut lsr = m.port_read(base + 5, 1, &ram);
            while lsr & 0x01 != 0 {
                received.push(m.port_read(base, 1, &ram) as u8);
                lsr = m.port_read(base + 5, 1, &ram);
            }
            if lsr & 0x20 != 0 && ier & 0x02 != 0 {
                for _ in 0..16 {
                    let Some((&byte, rest)) = pending.split_first() else { break };
                    m.port_write(base, 1, byte.into(), &ram);
                    pending = rest;
                }
                if pending.is_empty() {
                    ier &= !0x02;
                    m.port_write(base + 1, 1, ier, &ram);
                }
            }
        }
        edges(&mut m);
    }
    transmitted.extend(m.com1_mut().unwrap().take_output(4096));
    assert_eq!(transmitted, text, "after {rounds} rounds");
    assert_eq!(received, b"echo command from dom0\n");
}

/// The guest's serial console (console 3).
const SERIAL: xen_seams::sim::PvDevice =
    xen_seams::sim::PvDevice { kind: "console", devid: 3, frontend: STUB, backend: 0 };

/// COM1 wired to the stub domain's console 3: a line dom0 types reaches the guest,
/// which reads it as Linux's 8250 driver does (an RX interrupt, then RBR while LSR
/// says data ready), and what the guest transmits reaches dom0. The input is more than
/// the UART's FIFO holds, so the serial task must wait for the guest to read without
/// spinning (the simulator's poll budget catches a task that never yields).
#[test]
fn the_serial_console_carries_a_line_each_way() {
    use frontends::console::sim::{Line, backend};
    let world = World::new();
    let stub: &'static SimXen = Box::leak(Box::new(world.domain(STUB)));
    world.toolstack(SERIAL, &[]);
    let line = std::rc::Rc::new(RefCell::new(Line::default()));
    let typed = b"echo a line longer than the sixteen bytes of the receive FIFO\n";
    let guest = world.hvm_guest(GUEST, 1, 16 << 20);
    let mut config = guest_config();
    config.guest.as_mut().unwrap().serial_console = Some(3);
    let mut executor = Executor::new(&world);
    executor.spawn_background("console backend", backend(world.domain(0), SERIAL, line.clone()));
    spawn_service(&mut executor, stub, config);
    let watcher = world.clone();
    let clock = world.domain(0);
    let g = guest.clone();
    let dom0_side = line.clone();
    let received = executor.spawn("guest", async move {
        until_ready(&watcher).await;
        // serial8250_do_startup and the tty's settings: FIFO (trigger 8), 8N1, OUT2,
        // RX interrupts on.
        g.outb(0x3fa, 0x81).await;
        g.outb(0x3fb, 0x03).await;
        g.outb(0x3fc, 0x0b).await;
        g.outb(0x3f9, 0x05).await;
        // dom0 types once the guest's driver has set the UART up.
        dom0_side.borrow_mut().to_guest.extend(typed.iter().copied());
        let mut received = Vec::new();
        for _ in 0..20_000 {
            if received.ends_with(b"\n") {
                break;
            }
            if !g.isa_irq_level(4) {
                xen_seams::Clock::sleep(&clock, Duration::from_millis(1)).await;
                continue;
            }
            // The interrupt handler: while IIR says something is pending, drain RX.
            while g.inb(0x3fa).await & 1 == 0 {
                while g.inb(0x3fd).await & 1 != 0 {
                    received.push(g.inb(0x3f8).await);
                }
            }
        }
        // The console's polled write: THRE, then the byte.
        for &byte in b"ok\n" {
            while g.inb(0x3fd).await & 0x20 == 0 {
                xen_seams::Clock::sleep(&clock, Duration::from_millis(1)).await;
            }
            g.outb(0x3f8, byte).await;
        }
        // dom0 sees it once the serial task has moved it to the console.
        for _ in 0..10_000 {
            if dom0_side.borrow().from_guest.ends_with(b"ok\n") {
                break;
            }
            xen_seams::Clock::sleep(&clock, Duration::from_millis(1)).await;
        }
        received
    });
    let stopped = executor.run();
    stopped.unwrap_or_else(|stuck| panic!("{stuck}"));
    assert_eq!(received.take().unwrap(), typed);
    assert!(line.borrow().from_guest.ends_with(b"ok\n"), "{:?}", String::from_utf8_lossy(&line.borrow().from_guest));
}

/// A card for the machine's NIC plumbing: one I/O BAR (256 bytes) and one memory BAR
/// (4 KiB) over 256 byte registers; INTA while register 0 is non-zero.
struct FakeNic {
    config: devices::pci::ConfigSpace,
    registers: [u8; 256],
}

impl FakeNic {
    fn new() -> FakeNic {
        use devices::pci::{BarKind, BarSpec, ConfigSpace};
        let mut config = ConfigSpace::new(0x1234, 0x5678, 1, 0x02, 0x00, 0, 0);
        config.set_bar(0, BarSpec { kind: BarKind::Io, size_bytes: 256 });
        config.set_bar(1, BarSpec { kind: BarKind::Memory32 { prefetchable: false }, size_bytes: 4096 });
        FakeNic { config, registers: [0; 256] }
    }
}

impl devices::nic::Nic for FakeNic {
    fn config(&self) -> &devices::pci::ConfigSpace {
        &self.config
    }
    fn config_read(&self, reg: u16, size: u8) -> u32 {
        self.config.read(reg, size)
    }
    fn config_write(&mut self, reg: u16, size: u8, value: u32) {
        self.config.write(reg, size, value)
    }
    fn read(&mut self, _bar: usize, offset: u64, _size: u8, _mem: &dyn GuestMemory, _now: u64) -> u32 {
        u32::from(self.registers[(offset & 0xff) as usize])
    }
    fn write(&mut self, _bar: usize, offset: u64, _size: u8, value: u32, _mem: &dyn GuestMemory, _now: u64) {
        self.registers[(offset & 0xff) as usize] = value as u8;
    }
    fn irq_level(&self) -> bool {
        self.registers[0] != 0
    }
    fn take_tx_frame(&mut self) -> Option<Vec<u8>> {
        None
    }
    fn receive(&mut self, _frame: &[u8], _mem: &dyn GuestMemory, _now: u64) -> devices::nic::RxOutcome {
        devices::nic::RxOutcome::NoBuffer
    }
    fn can_receive(&self) -> bool {
        false
    }
    fn set_link_up(&mut self, _up: bool, _now: u64) {}
    fn next_deadline_ns(&self) -> Option<u64> {
        None
    }
    fn tick(&mut self, _now: u64) {}
    fn stats(&self) -> devices::nic::NicStats {
        devices::nic::NicStats::default()
    }
    fn reset(&mut self) {}
    fn save_state(&self) -> (devices::snapshot::SectionId, u16, Vec<u8>) {
        (devices::snapshot::SectionId::Rtl8139, 0, self.registers.to_vec())
    }
    fn load_state(
        &mut self,
        _section: &devices::snapshot::Section<'_>,
        _time: devices::snapshot::TimeBase,
    ) -> Result<(), devices::snapshot::SnapshotError> {
        Err(devices::snapshot::SnapshotError::Missing { device: "fake NIC" })
    }
}

/// A NIC's BARs are claimed where hvmloader puts them once decoding is on, moved
/// claims are released first, port and MMIO accesses reach the card, and its INTA is
/// driven through Xen.
#[test]
fn nic_bars_are_claimed_where_the_guest_puts_them() {
    let (mut m, ram) = (machine(), Ram::new(4096));
    let device = m.add_nic(Box::new(FakeNic::new()));
    assert_eq!(device, 3);
    let devfn = device << 3;
    assert!(m.claims().contains(&(IoRangeKind::PciConfig, 0x18, 0x18)));
    let cfg = |m: &mut Machine, reg: u16, size: u32, value: Option<u64>| match value {
        Some(v) => m.handle_ioreq(&pci(devfn, reg, size, false, v), &ram, 0),
        None => m.handle_ioreq(&pci(devfn, reg, size, true, 0), &ram, 0),
    };
    assert_eq!(cfg(&mut m, 0, 4, None), 0x5678_1234);
    // hvmloader: size the BARs with decoding off, place them, then turn decoding on.
    cfg(&mut m, 0x10, 4, Some(0xffff_ffff));
    assert_eq!(cfg(&mut m, 0x10, 4, None) & 0xffff_ff00, 0xffff_ff00);
    cfg(&mut m, 0x10, 4, Some(0xc100));
    cfg(&mut m, 0x14, 4, Some(0xf000_0000));
    assert!(m.take_effects().is_empty(), "nothing is claimed while decoding is off");
    cfg(&mut m, 0x04, 2, Some(0x0007));
    let claims: Vec<Effect> = m.take_effects().into_iter().collect();
    assert_eq!(
        claims,
        [
            Effect::Claim { kind: IoRangeKind::Port, first: 0xc100, last: 0xc1ff },
            Effect::Claim { kind: IoRangeKind::Memory, first: 0xf000_0000, last: 0xf000_0fff },
        ]
    );
    // Register accesses through both BARs; writing register 0 raises INTA.
    m.handle_ioreq(&pio(0xc105, 1, false, 0x42), &ram, 0);
    assert_eq!(m.handle_ioreq(&pio(0xc105, 1, true, 0), &ram, 0), 0x42);
    let mmio_read = Ioreq {
        addr: 0xf000_0005,
        count: 1,
        size: 4,
        bits: Ioreq::make_bits(1, false, true, false),
        kind: ioreq_type::COPY,
        ..Ioreq::default()
    };
    assert_eq!(m.handle_ioreq(&mmio_read, &ram, 0), 0x42);
    let mmio_write = Ioreq { addr: 0xf000_0000, data: 1, bits: Ioreq::make_bits(1, false, false, false), ..mmio_read };
    m.handle_ioreq(&mmio_write, &ram, 0);
    assert_eq!(m.take_effects().pop_front(), Some(Effect::PciIntx { device: 3, intx: 0, level: true }));
    // Moving the I/O BAR releases the old range before claiming the new one.
    cfg(&mut m, 0x10, 4, Some(0xc200));
    let moved: Vec<Effect> = m.take_effects().into_iter().collect();
    assert_eq!(
        moved,
        [
            Effect::Release { kind: IoRangeKind::Port, first: 0xc100, last: 0xc1ff },
            Effect::Claim { kind: IoRangeKind::Port, first: 0xc200, last: 0xc2ff },
        ]
    );
    // Decoding off gives everything back.
    cfg(&mut m, 0x04, 2, Some(0x0000));
    assert_eq!(m.take_effects().len(), 2);
    assert_eq!(m.handle_ioreq(&pio(0xc205, 1, true, 0), &ram, 0), 0xff);
}
