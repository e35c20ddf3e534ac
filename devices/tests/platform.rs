//! The Xen platform device as Linux's PV drivers use it: on the machine (Linux's
//! platform-pci-unplug.c sequence through ioreqs, the unplug's effect on the IDE
//! channels and the NICs, the log port's token bucket with time as an argument,
//! save/restore), then through the whole service in the simulated Xen (the blacklist
//! read from xenstore, a log write held while the other vCPU is served, and while the
//! device-model log is behind).

mod common;

use common::{GUEST, STUB, guest_config, now, pio, until_ready};
use devices::dm_args::NicModel;
use devices::ide::DriveSpec;
use devices::machine::{Effect, Machine, MachineConfig};
use devices::platform::{PLATFORM_DEVFN, PlatformWait, TokenBucket};
use devices::service::serve;
use xen_seams::hvm::{IoRangeKind, Ioreq, ioreq_type};
use xen_seams::sim::{Executor, SimGuest, SimXen, World};

type Ram = devices::vec_memory::VecGuestMemory;

const SECOND_NS: u64 = 1_000_000_000;

/// A disk at the primary master and slave, a CD at the secondary master, an RTL8139.
fn machine(xen_platform: bool) -> Machine {
    let mut ide: [[Option<DriveSpec>; 2]; 2] = Default::default();
    ide[0][0] = Some(DriveSpec::HardDisk { nr_sectors: 2048, read_only: false });
    ide[0][1] = Some(DriveSpec::HardDisk { nr_sectors: 2048, read_only: false });
    ide[1][0] = Some(DriveSpec::CdRom { medium_nr_sectors: Some(4096) });
    let mut machine =
        Machine::new(MachineConfig { ide, boot_order: "dc".into(), ram_mib: 1, com1: false, xen_platform });
    machine.add_nic(devices::nic::new_card(NicModel::Rtl8139, [0x00, 0x16, 0x3e, 1, 2, 3]));
    machine
}

/// `rep outsb` of `count` bytes at `gpa` to `port`.
fn outsb(port: u16, count: u32, gpa: u64) -> Ioreq {
    Ioreq {
        addr: port.into(),
        data: gpa,
        count,
        size: 1,
        bits: Ioreq::make_bits(0, true, false, false),
        kind: ioreq_type::PIO,
        ..Ioreq::default()
    }
}

/// The drive's status on a channel after selecting it: 0 when the channel has no drive.
fn status(m: &mut Machine, ram: &Ram, channel_base: u16, unit: u8) -> u32 {
    m.port_write(channel_base + 6, 1, 0xa0 | u32::from(unit) << 4, ram);
    m.port_read(channel_base + 7, 1, ram)
}

/// Linux's check_platform_magic and unplug (product 3, build 1, then the mask), as
/// ioreqs; the blacklist lookup answered with `blacklisted`. Returns the magic Linux
/// read after giving its build.
fn linux_unplug(m: &mut Machine, ram: &Ram, blacklisted: bool, mask: u16) -> u16 {
    assert_eq!(m.handle_ioreq(&pio(0x10, 2, true, 0), ram, 0), 0x49d2, "magic");
    assert_eq!(m.handle_ioreq(&pio(0x12, 1, true, 0), ram, 0), 1, "protocol version");
    m.handle_ioreq(&pio(0x12, 2, false, 3), ram, 0);
    m.handle_ioreq(&pio(0x10, 4, false, 1), ram, 0);
    let magic_read = pio(0x10, 2, true, 0);
    assert_eq!(m.ioreq_wait(&magic_read, 0), Some(PlatformWait::Blacklist), "the lookup is out");
    let query = m.take_blacklist_query().expect("a lookup for Linux's product and build");
    assert_eq!(query.path, "/mh/driver-blacklist/linux/1");
    m.answer_blacklist(&query, blacklisted);
    assert_eq!(m.ioreq_wait(&magic_read, 0), None);
    let magic = m.handle_ioreq(&magic_read, ram, 0) as u16;
    if magic == 0x49d2 {
        m.handle_ioreq(&pio(0x10, 2, false, mask.into()), ram, 0);
    }
    magic
}

#[test]
fn linux_unplugs_the_disks_and_nics_and_the_cd_stays() {
    let (mut m, ram) = (machine(true), Ram::new(1 << 16));
    assert!(m.claims().contains(&(IoRangeKind::Port, 0x10, 0x1f)));
    assert!(m.claims().contains(&(IoRangeKind::PciConfig, 0x10, 0x10)));
    assert_eq!(m.config_read(PLATFORM_DEVFN, 0, 4), 0x0001_5853);
    // hvmloader places the NIC's BARs; the card is on the bus.
    m.config_write(0x18, 0x10, 4, 0xc100);
    m.config_write(0x18, 0x04, 2, 0x0007);
    m.take_effects();
    assert_eq!(m.config_read(0x18, 0, 4), 0x8139_10ec);
    assert_ne!(status(&mut m, &ram, 0x1f0, 0), 0, "the disk is there before");

    assert_eq!(linux_unplug(&mut m, &ram, false, 0x0003), 0x49d2);

    assert_eq!(status(&mut m, &ram, 0x1f0, 0), 0, "no drive left on the primary channel");
    assert_eq!(status(&mut m, &ram, 0x1f0, 1), 0);
    assert_eq!(status(&mut m, &ram, 0x170, 0) & 0x40, 0x40, "the CD-ROM stays, ready");
    assert_eq!(m.port_read(0x174, 1, &ram), 0x14, "the CD's ATAPI signature");
    assert_eq!(m.port_read(0x175, 1, &ram), 0xeb);
    assert_eq!(m.config_read(0x18, 0, 4), 0xffff_ffff, "the NIC is off the bus");
    assert!(m.nic(0).is_none() && m.nic_unplugged(0));
    assert_eq!(m.port_read(0xc100, 2, &ram), 0xffff, "its registers are gone");
    let effects: Vec<Effect> = m.take_effects().into_iter().collect();
    assert!(
        effects.contains(&Effect::Release { kind: IoRangeKind::Port, first: 0xc100, last: 0xc1ff }),
        "its BAR is given back: {effects:?}"
    );
}

#[test]
fn aux_unplug_keeps_the_primary_master() {
    let (mut m, ram) = (machine(true), Ram::new(1 << 16));
    linux_unplug(&mut m, &ram, false, 0x0004);
    assert_ne!(status(&mut m, &ram, 0x1f0, 0), 0, "the primary master stays");
    m.port_write(0x1f6, 1, 0xb0, &ram);
    m.port_write(0x1f7, 1, 0xec, &ram);
    assert_eq!(m.port_read(0x1f7, 1, &ram), 0, "the slave is gone");
    assert_eq!(m.config_read(0x18, 0, 4), 0x8139_10ec, "NICs stay");
}

#[test]
fn a_blacklisted_driver_reads_the_reversed_magic_and_unplugs_nothing() {
    let (mut m, ram) = (machine(true), Ram::new(1 << 16));
    assert_eq!(linux_unplug(&mut m, &ram, true, 0x0003), 0xd249);
    assert_ne!(status(&mut m, &ram, 0x1f0, 0), 0, "Linux keeps the emulated disk");
    assert!(m.platform().is_some_and(|p| p.is_blacklisted()));
}

#[test]
fn without_the_platform_device_its_ports_are_not_ours() {
    let (mut m, ram) = (machine(false), Ram::new(1 << 16));
    assert!(!m.claims().iter().any(|&(k, a, b)| k == IoRangeKind::Port && a <= 0x10 && 0x10 <= b));
    assert_eq!(m.config_read(PLATFORM_DEVFN, 0, 4), 0xffff_ffff);
    assert_eq!(m.ioreq_wait(&pio(0x10, 2, true, 0), 0), None);
    assert_eq!(m.port_read(0x10, 2, &ram), 0xffff);
}

#[test]
fn the_log_port_holds_a_write_until_the_bucket_has_its_bytes() {
    let (mut m, ram) = (machine(true), Ram::new(1 << 16));
    let line: Vec<u8> = b"pl-123456\n".iter().copied().cycle().take(4096).collect();
    xen_seams::hvm::GuestMemory::write(&ram, 0x1000, &line).unwrap();
    // 32 pages' worth (128 KiB) go at once at t = 1 s.
    let start_ns = SECOND_NS;
    for _ in 0..32 {
        assert_eq!(m.ioreq_wait(&outsb(0x12, 4096, 0x1000), start_ns), None);
        m.handle_ioreq(&outsb(0x12, 4096, 0x1000), &ram, start_ns);
    }
    // The next 2 KiB wait 8 s: (130 - 128) KiB at 256 B/s.
    let next = outsb(0x12, 2048, 0x1000);
    let Some(PlatformWait::Tokens { until_ns }) = m.ioreq_wait(&next, start_ns) else { panic!("it must wait") };
    assert_eq!(until_ns, start_ns + 8 * SECOND_NS);
    assert!(m.ioreq_wait(&next, until_ns - 1).is_some(), "not a nanosecond early");
    assert_eq!(m.ioreq_wait(&next, until_ns), None);
    m.handle_ioreq(&next, &ram, until_ns);
    // Reads and other ports never wait for tokens.
    assert_eq!(m.ioreq_wait(&pio(0x12, 1, true, 0), until_ns), None);
    assert_eq!(m.ioreq_wait(&pio(0x10, 2, false, 0), until_ns), None);
    assert_eq!(m.platform().map(|_| ()), Some(()));
}

#[test]
fn the_platform_state_survives_save_and_restore() {
    let (mut m, ram) = (machine(true), Ram::new(1 << 16));
    m.config_write(PLATFORM_DEVFN, 0x10, 4, 0xc200);
    m.config_write(PLATFORM_DEVFN, 0x14, 4, 0xf100_0000);
    linux_unplug(&mut m, &ram, false, 0x0003);
    for byte in b"half a line" {
        m.port_write(0x12, 1, u32::from(*byte), &ram);
    }
    let payload = m.save_state(10 * SECOND_NS);
    let mut restored = machine(true);
    restored.load_state(&payload, 100 * SECOND_NS).unwrap();
    let effects: Vec<Effect> = restored.take_effects().into_iter().collect();
    assert!(effects.contains(&Effect::Claim { kind: IoRangeKind::Port, first: 0xc200, last: 0xc2ff }), "{effects:?}");
    assert!(effects.contains(&Effect::Claim { kind: IoRangeKind::Memory, first: 0xf100_0000, last: 0xf1ff_ffff }));
    assert_eq!(status(&mut restored, &ram, 0x1f0, 0), 0, "the unplugged disks stay unplugged");
    assert_eq!(restored.config_read(0x18, 0, 4), 0xffff_ffff, "so does the NIC");
    assert_eq!(restored.platform().map(|p| p.unplugged()), Some(3));
    assert_eq!(restored.platform().map(|p| p.driver()), Some((Some(3), Some(1))));
    assert_eq!(restored.port_read(0x10, 2, &ram), 0x49d2);
    // The bucket's time moved with the clock: saved at 10 s with 11 tokens spent at 0 s,
    // restored at 100 s, the tokens were counted at 90 s here and are back 11 tokens' time
    // (43 ms) later.
    let mut probe = restored.platform().cloned().unwrap();
    assert_eq!(probe.log_tokens(90 * SECOND_NS), TokenBucket::CAPACITY - 11);
    assert_eq!(probe.log_tokens(90 * SECOND_NS + 42_000_000), TokenBucket::CAPACITY - 1);
    assert_eq!(probe.log_tokens(90 * SECOND_NS + 43_000_000), TokenBucket::CAPACITY);
    // A machine without the platform device refuses the state, and the other way round.
    assert!(machine(false).load_state(&payload, 0).is_err());
    assert!(machine(true).load_state(&machine(false).save_state(0), 0).is_err());
}

/// The service's guest with the platform device.
fn platform_config() -> devices::service::Config {
    let mut config = guest_config();
    if let Some(guest) = &mut config.guest {
        guest.xen_platform = true;
    }
    config
}

fn with_service(setup: impl FnOnce(&World), script: impl AsyncFnOnce(SimGuest, World) + 'static) {
    let world = World::new();
    let guest = world.hvm_guest(GUEST, 2, 1 << 20);
    let stub: &'static SimXen = Box::leak(Box::new(world.domain(STUB)));
    setup(&world);
    let mut executor = Executor::new(&world);
    executor.spawn_background("service", async move {
        let _ = serve(stub, &platform_config(), now).await;
    });
    let watcher = world.clone();
    let clock = world.clone();
    let done = executor.spawn("guest", async move {
        until_ready(&watcher).await;
        script(guest, clock).await;
    });
    executor.run().unwrap_or_else(|stuck| panic!("{stuck}"));
    assert!(done.is_ready());
}

#[test]
fn the_blacklist_is_read_from_xenstore() {
    with_service(
        |world| {
            // As dom0 does it: the node, readable by every domain (`xenstore-chmod ... r0`).
            let node = "/mh/driver-blacklist/linux/1";
            world.xenstore_write(node, b"").unwrap();
            let readable = xen_seams::Permission::parse("r0").unwrap();
            world.with_xenstore(|sim| sim.set_perms(node, &[readable])).unwrap();
        },
        async |guest, _| {
            assert_eq!(guest.inw(0x10).await, 0x49d2);
            guest.outw(0x12, 3).await;
            guest.outl(0x10, 2).await;
            assert_eq!(guest.inw(0x10).await, 0x49d2, "build 2 is not blacklisted");
            guest.outl(0x10, 1).await;
            assert_eq!(guest.inw(0x10).await, 0xd249, "build 1 is");
        },
    );
}

#[test]
fn a_held_log_write_leaves_the_other_vcpu_served() {
    with_service(
        |_| {},
        async |guest, clock| {
            let line: Vec<u8> = b"pl-123456\n".iter().copied().cycle().take(4096).collect();
            guest.write_ram(0x1000, &line);
            let t0 = clock.now_ns();
            for _ in 0..32 {
                guest.io(0, outsb(0x12, 4096, 0x1000)).await;
            }
            // vCPU 0's next write is held; vCPU 1 reads the config address meanwhile.
            guest.outl(0xcf8, 0x8000_1000).await;
            let (held, writer_clock) = (guest.clone(), clock.clone());
            let writer = async move {
                held.io(0, outsb(0x12, 2048, 0x1000)).await;
                writer_clock.now_ns()
            };
            let (other, reader_clock) = (guest.clone(), clock.clone());
            let reader = async move {
                let value = other.io(1, pio(0xcf8, 4, true, 0)).await;
                (value, reader_clock.now_ns())
            };
            let (done_ns, (value, read_ns)) = join(writer, reader).await;
            assert_eq!(value, 0x8000_1000);
            assert!(read_ns - t0 < SECOND_NS, "vCPU 1 was served at once ({} ms)", (read_ns - t0) / 1_000_000);
            let held_ns = done_ns - t0;
            assert!((8 * SECOND_NS..9 * SECOND_NS).contains(&held_ns), "held {} ms", held_ns / 1_000_000);
        },
    );
}

#[test]
fn a_log_write_waits_while_the_log_is_behind() {
    with_service(
        |world| world.set_log_backlog_bytes(64 << 10),
        async |guest, world| {
            guest.write_ram(0x1000, b"pl-1\n");
            let t0 = world.now_ns();
            // The platform device's own ports still answer at once.
            assert_eq!(guest.inw(0x10).await, 0x49d2);
            let (held, writer_clock) = (guest.clone(), world.clone());
            let writer = async move {
                held.io(0, outsb(0x12, 5, 0x1000)).await;
                writer_clock.now_ns()
            };
            let (other, reader_clock) = (guest.clone(), world.clone());
            let reader = async move {
                let value = other.io(1, pio(0x10, 2, true, 0)).await;
                (value, reader_clock.now_ns())
            };
            // dom0 catches up with the log after 3 s.
            let (catching_up, dom0) = (world.clone(), world.domain(0));
            let catch_up = async move {
                xen_seams::Clock::sleep(&dom0, std::time::Duration::from_secs(3)).await;
                catching_up.set_log_backlog_bytes(0);
                catching_up.now_ns()
            };
            let ((done_ns, (value, read_ns)), caught_up_ns) = join(join(writer, reader), catch_up).await;
            assert_eq!(value, 0x49d2);
            assert!(read_ns - t0 < SECOND_NS / 10, "vCPU 1 was served at once ({} ms)", (read_ns - t0) / 1_000_000);
            assert!(done_ns >= caught_up_ns, "the write went on while the log was behind");
            assert!(
                done_ns - caught_up_ns < SECOND_NS / 10,
                "the write waited {} ms more",
                (done_ns - caught_up_ns) / 1_000_000
            );
        },
    );
}

/// Runs both futures to their ends, side by side.
async fn join<A: Future, B: Future>(a: A, b: B) -> (A::Output, B::Output) {
    use std::task::Poll;
    let (mut a, mut b) = (std::pin::pin!(a), std::pin::pin!(b));
    let (mut a_out, mut b_out) = (None, None);
    std::future::poll_fn(|cx| {
        if a_out.is_none()
            && let Poll::Ready(v) = a.as_mut().poll(cx)
        {
            a_out = Some(v);
        }
        if b_out.is_none()
            && let Poll::Ready(v) = b.as_mut().poll(cx)
        {
            b_out = Some(v);
        }
        match (a_out.take(), b_out.take()) {
            (Some(a), Some(b)) => Poll::Ready((a, b)),
            (a, b) => {
                (a_out, b_out) = (a, b);
                Poll::Pending
            }
        }
    })
    .await
}
