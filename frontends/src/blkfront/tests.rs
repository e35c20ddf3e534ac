//! The disk against [`sim::Backend`], a blkback with faults, in the simulated Xen.

use alloc::format;
use alloc::rc::Rc;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::cell::{Cell, RefCell};
use core::future::{Future, poll_fn};
use core::pin::pin;
use core::task::Poll;
use core::time::Duration;

use xen_seams::Clock;
use xen_seams::sim::{Executor, PvDevice, SimXen, World};

use super::sim::{Backend, Config, Fault, Log};
use super::*;
use crate::blkif;

const FRONT: u16 = 5;
const BACK: u16 = 0;
const DEVID: u32 = 768;
const DEVICE: PvDevice = PvDevice { kind: "vbd", devid: DEVID, frontend: FRONT, backend: BACK };
const FRONT_NODE: &str = "/local/domain/5/device/vbd/768";
const BACK_NODE: &str = "/local/domain/0/backend/vbd/5/768";
/// 8 MiB.
const DISK_SECTORS: u64 = 16384;
const SECOND: u64 = 1_000_000_000;

/// The disk's initial contents: differs from byte to byte and sector to sector.
fn pattern(offset: usize) -> u8 {
    (offset % 251) as u8 ^ (offset / 512) as u8
}

fn expected(sector: u64, len: usize) -> Vec<u8> {
    let start = sector as usize * 512;
    (start..start + len).map(pattern).collect()
}

async fn join<A: Future, B: Future>(a: A, b: B) -> (A::Output, B::Output) {
    let (mut a, mut b) = (pin!(a), pin!(b));
    let (mut left, mut right) = (None, None);
    poll_fn(|cx| {
        if left.is_none()
            && let Poll::Ready(value) = a.as_mut().poll(cx)
        {
            left = Some(value);
        }
        if right.is_none()
            && let Poll::Ready(value) = b.as_mut().poll(cx)
        {
            right = Some(value);
        }
        match (left.take(), right.take()) {
            (Some(l), Some(r)) => Poll::Ready((l, r)),
            (l, r) => {
                (left, right) = (l, r);
                Poll::Pending
            }
        }
    })
    .await
}

/// A world with the toolstack's nodes for vbd 768 of dom5, served by dom0's
/// [`Backend`] (taken once, by `run` or `backend`).
struct Sim {
    world: World,
    front: SimXen,
    backend: Cell<Option<Backend>>,
    log: Rc<RefCell<Log>>,
}

struct Outcome<T> {
    value: T,
    stats: Stats,
    closed: Result<(), Error>,
}

impl Sim {
    fn new(config: Config) -> Sim {
        let world = World::new();
        let front = world.domain(FRONT);
        world.toolstack(DEVICE, &[]);
        let disk = (0..DISK_SECTORS as usize * 512).map(pattern).collect();
        let backend = Backend::new(world.domain(BACK), DEVICE, config, disk);
        let log = backend.log();
        Sim { world, front, backend: Cell::new(Some(backend)), log }
    }

    fn backend(&self) -> Backend {
        self.backend.take().expect("one backend per Sim")
    }

    /// Connects, runs `body`, closes; fails the test on a deadlock.
    fn run<T>(&self, options: Options, body: impl AsyncFnOnce(&Disk<'_, SimXen>) -> T) -> Outcome<T> {
        let mut executor = Executor::new(&self.world);
        executor.spawn_background("backend", self.backend().run());
        let output = executor.spawn("frontend", async {
            let disk = Disk::connect(&self.front, DEVID, options).await.expect("connects");
            let value = body(&disk).await;
            let stats = disk.stats();
            Outcome { value, stats, closed: disk.close().await }
        });
        executor.run().unwrap_or_else(|stuck| panic!("{stuck}"));
        drop(executor);
        output.take().expect("the frontend finished")
    }

    /// Nothing of the frontend's is left: no grant, port or page, state Closed.
    fn assert_clean(&self) {
        assert_eq!(self.world.dangling_grants(), []);
        assert_eq!(self.world.grants(FRONT), []);
        assert_eq!(self.world.ports(FRONT), []);
        assert_eq!(self.world.pages(FRONT), [], "every page freed, none leaked");
        let state = self.world.xenstore_read(&format!("{FRONT_NODE}/state"));
        assert_eq!(state.as_deref(), Some(&b"6"[..]));
    }
}

fn no_persistence() -> Options {
    Options { persistent_grants: false, ..Options::default() }
}

#[test]
fn connect_negotiates_and_reports_geometry() {
    let config = Config { persistent: true, info: 0, ..Config::default() };
    let sim = Sim::new(config);
    let outcome = sim.run(Options::default(), async |disk| {
        let state = sim.world.xenstore_read(&format!("{FRONT_NODE}/state"));
        (disk.info().clone(), disk.features(), state)
    });
    let (info, features, state) = outcome.value;
    assert_eq!(state.as_deref(), Some(&b"4"[..]), "Connected once connected");
    let expected_info = DiskInfo {
        sectors: DISK_SECTORS,
        sector_size: 512,
        physical_sector_size: 512,
        info: 0,
        read_only: false,
        cdrom: false,
        removable: false,
    };
    assert_eq!(info, expected_info);
    assert_eq!(info.capacity_bytes(), 8 << 20);
    let expected_features = Features {
        ring_pages: 1,
        ring_size: 32,
        persistent_grants: true,
        max_segments: 11,
        indirect: false,
        flush: Flush::Cache,
        discard: None,
    };
    assert_eq!(features, expected_features);
    let front = &sim.log.borrow().front;
    assert_eq!(front.get("protocol").map(String::as_str), Some("x86_64-abi"));
    assert_eq!(front.get("feature-persistent").map(String::as_str), Some("1"));
    assert_eq!(front.get("ring-ref").map(String::as_str), Some("8"), "the first grant ref");
    assert!(front.contains_key("event-channel"));
    assert!(!front.contains_key("ring-page-order"), "a one-page ring has no order node");
    assert_eq!(outcome.closed, Ok(()));
    assert!(sim.log.borrow().finished);
    sim.assert_clean();
}

#[test]
fn reads_of_various_sizes_and_alignments_match_the_disk() {
    let sim = Sim::new(Config::default());
    let cases: [(u64, usize); 9] = [
        (0, 512),
        (DISK_SECTORS - 1, 512),
        (1, 4096),
        (3, 4608),
        (8, 11 * 4096),
        (7, 11 * 4096 + 512),
        (100, 12 * 4096),
        (5, 1 << 20),
        (0, 8 << 20),
    ];
    let outcome = sim.run(no_persistence(), async |disk| {
        let mut results = Vec::new();
        for (sector, len) in cases {
            let mut buf = vec![0u8; len];
            let result = disk.read(sector, &mut buf).await;
            results.push((result, buf == expected(sector, len)));
        }
        results
    });
    for ((sector, len), (result, matches)) in cases.iter().zip(outcome.value) {
        assert_eq!(result, Ok(()), "read of {len} bytes at {sector}");
        assert!(matches, "data of {len} bytes at {sector}");
    }
    let log = sim.log.borrow();
    assert!(log.seen.iter().all(|seen| seen.nr_segments <= 11 && !seen.indirect));
    assert!(log.max_in_flight >= 20, "a large read keeps many requests in flight ({})", log.max_in_flight);
    assert!(
        outcome.stats.notifications * 4 < outcome.stats.requests,
        "requests are batched before notifying: {:?}",
        outcome.stats
    );
    assert_eq!(outcome.closed, Ok(()));
    sim.assert_clean();
}

#[test]
fn writes_of_various_sizes_land_on_the_disk_and_read_back() {
    let sim = Sim::new(Config::default());
    let writes: [(u64, usize, u8); 5] =
        [(0, 512, 1), (9, 4096 + 512, 2), (64, 11 * 4096, 3), (200, 30 * 4096 + 1024, 4), (4000, 3 << 20, 5)];
    let outcome = sim.run(Options::default(), async |disk| {
        let mut results = Vec::new();
        for (sector, len, seed) in writes {
            let data: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(seed) ^ seed).collect();
            results.push(disk.write(sector, &data).await);
            let mut back = vec![0u8; len];
            results.push(disk.read(sector, &mut back).await);
            assert!(back == data, "read back {len} bytes at {sector}");
        }
        results
    });
    assert!(outcome.value.iter().all(Result::is_ok), "{:?}", outcome.value);
    let log = sim.log.borrow();
    for (sector, len, seed) in writes {
        let start = sector as usize * 512;
        let on_disk = &log.disk[start..start + len];
        assert!(on_disk.iter().enumerate().all(|(i, &b)| b == (i as u8).wrapping_mul(seed) ^ seed));
    }
    assert_eq!(log.disk[512 * 8..512 * 9], expected(8, 512)[..], "untouched sectors keep the pattern");
    drop(log);
    assert_eq!(outcome.closed, Ok(()));
    sim.assert_clean();
}

#[test]
fn multi_page_rings_carry_many_requests_across_page_boundaries() {
    let config = Config { max_ring_page_order: Some(4), reverse: true, ..Config::default() };
    let sim = Sim::new(config);
    let options = Options { max_ring_page_order: 2, max_data_pages: 2048, ..no_persistence() };
    let outcome = sim.run(options, async |disk| {
        let mut buf = vec![0u8; 4 << 20];
        let read = disk.read(16, &mut buf).await;
        let data: Vec<u8> = (0..4 << 20).map(|i: usize| (i / 7) as u8).collect();
        let write = disk.write(0, &data).await;
        let mut back = vec![0u8; 4 << 20];
        let reread = disk.read(0, &mut back).await;
        (disk.features(), read, buf == expected(16, 4 << 20), write, reread, back == data)
    });
    let (features, read, read_matches, write, reread, matches) = outcome.value;
    assert_eq!((features.ring_pages, features.ring_size), (4, 128));
    assert_eq!((read, write, reread), (Ok(()), Ok(()), Ok(())));
    assert!(read_matches && matches, "answered in reverse order, matched by id");
    let log = sim.log.borrow();
    assert_eq!(log.front.get("ring-page-order").map(String::as_str), Some("2"));
    assert!((0..4).all(|i| log.front.contains_key(&format!("ring-ref{i}"))));
    assert!(!log.front.contains_key("ring-ref"));
    assert!(log.max_in_flight > 72, "entries past 72 straddle ring pages ({})", log.max_in_flight);
    drop(log);
    assert_eq!(outcome.closed, Ok(()));
    sim.assert_clean();
}

#[test]
fn persistent_grants_reuse_a_pool_that_stays_mapped() {
    let sim = Sim::new(Config { persistent: true, ..Config::default() });
    let outcome = sim.run(Options::default(), async |disk| {
        for round in 0..10u64 {
            let mut buf = vec![0u8; 11 * 4096];
            disk.read(round * 88, &mut buf).await.unwrap();
            assert!(buf == expected(round * 88, buf.len()));
            disk.write(round * 88, &buf).await.unwrap();
        }
        (disk.features().persistent_grants, sim.world.grants(FRONT))
    });
    let (persistent, grants) = outcome.value;
    assert!(persistent && sim.log.borrow().persistent);
    assert_eq!(outcome.stats.pages, 11, "one request's worth of pages, reused");
    assert_eq!(grants.len(), 12, "the ring and the pool stay granted");
    assert!(grants.iter().all(|g| g.mappings == 1 && !g.readonly), "and mapped by the backend");
    assert_eq!(sim.log.borrow().data_grefs.len(), 11);
    assert_eq!(outcome.closed, Ok(()));
    sim.assert_clean();
}

#[test]
fn without_persistent_grants_each_request_ends_its_grants() {
    let sim = Sim::new(Config { persistent: true, ..Config::default() });
    let outcome = sim.run(no_persistence(), async |disk| {
        let mut buf = vec![0u8; 100 * 1024];
        disk.read(0, &mut buf).await.unwrap();
        disk.write(1000, &buf).await.unwrap();
        (disk.features().persistent_grants, sim.world.grants(FRONT).len())
    });
    assert_eq!(outcome.value, (false, 1), "only the ring stays granted between requests");
    assert!(!sim.log.borrow().persistent);
    assert!(!sim.log.borrow().front.contains_key("feature-persistent"));
    assert_eq!(outcome.closed, Ok(()));
    sim.assert_clean();
}

#[test]
fn indirect_requests_carry_up_to_the_negotiated_segments() {
    let sim = Sim::new(Config { max_indirect: Some(256), ..Config::default() });
    let options = Options { max_indirect_segments: 64, ..Options::default() };
    let outcome = sim.run(options, async |disk| {
        let mut buf = vec![0u8; 1 << 20];
        disk.read(3, &mut buf).await.unwrap();
        let data = vec![0x5a; 200 * 4096];
        disk.write(2048, &data).await.unwrap();
        let mut back = vec![0u8; data.len()];
        disk.read(2048, &mut back).await.unwrap();
        (disk.features(), buf == expected(3, 1 << 20), back == data)
    });
    let (features, read_matches, write_matches) = outcome.value;
    assert!(features.indirect && features.max_segments == 64);
    assert!(read_matches && write_matches);
    let log = sim.log.borrow();
    let first = &log.seen[0];
    assert_eq!((first.operation, first.indirect, first.nr_segments), (Operation::Read, true, 64));
    assert!(log.seen.iter().all(|s| s.nr_segments <= 64));
    assert!(log.seen.iter().any(|s| s.indirect && s.operation == Operation::Write));
    drop(log);
    assert_eq!(outcome.closed, Ok(()));
    sim.assert_clean();
}

#[test]
fn indirect_segments_shrink_to_the_page_budget_and_off_means_eleven() {
    let sim = Sim::new(Config { max_indirect: Some(256), persistent: true, ..Config::default() });
    let options = Options { max_indirect_segments: 64, max_data_pages: 40, ..Options::default() };
    let outcome = sim.run(options, async |disk| {
        let mut buf = vec![0u8; 1 << 20];
        disk.read(0, &mut buf).await.unwrap();
        (disk.features().max_segments, buf == expected(0, 1 << 20))
    });
    assert_eq!(outcome.value, (39, true), "39 data pages and an indirect page fit in 40");
    assert!(outcome.stats.pages <= 40);
    assert_eq!(outcome.closed, Ok(()));
    sim.assert_clean();

    let sim = Sim::new(Config { max_indirect: Some(256), ..Config::default() });
    let options = Options { max_indirect_segments: 0, ..Options::default() };
    let outcome = sim.run(options, async |disk| {
        let mut buf = vec![0u8; 1 << 20];
        disk.read(0, &mut buf).await.unwrap();
        disk.features()
    });
    assert!(!outcome.value.indirect && outcome.value.max_segments == 11);
    assert!(sim.log.borrow().seen.iter().all(|s| !s.indirect && s.nr_segments <= 11));
    sim.assert_clean();
}

#[test]
fn flush_uses_flush_cache_or_barrier_or_nothing() {
    for (flush, barrier, wanted, requests) in [
        (true, true, Flush::Cache, vec![Operation::FlushDiskCache]),
        (false, true, Flush::Barrier, vec![Operation::WriteBarrier]),
        (false, false, Flush::NotNeeded, vec![]),
    ] {
        let sim = Sim::new(Config { flush, barrier, ..Config::default() });
        let outcome = sim.run(Options::default(), async |disk| (disk.features().flush, disk.flush().await));
        assert_eq!(outcome.value, (wanted, Ok(())));
        let seen: Vec<_> = sim.log.borrow().seen.iter().map(|s| s.operation).collect();
        assert_eq!(seen, requests);
        sim.assert_clean();
    }
}

#[test]
fn a_refused_flush_is_reported_and_remembered() {
    let sim = Sim::new(Config { refuse_flush: true, ..Config::default() });
    let outcome = sim.run(Options::default(), async |disk| {
        let first = disk.flush().await;
        let second = disk.flush().await;
        let still_works = disk.read(0, &mut [0u8; 512]).await;
        (first, second, disk.features().flush, still_works)
    });
    let not_supported = Err(Error::NotSupported(Operation::FlushDiskCache));
    assert_eq!(outcome.value, (not_supported.clone(), not_supported, Flush::Refused, Ok(())));
    assert_eq!(sim.log.borrow().seen.len(), 2, "the second flush is refused without asking");
    sim.assert_clean();
}

#[test]
fn discard_is_sent_when_offered() {
    let sim = Sim::new(Config { discard: true, ..Config::default() });
    let outcome = sim.run(Options::default(), async |disk| {
        let discard = disk.features().discard;
        let result = disk.discard(8, 16).await;
        let out_of_range = disk.discard(DISK_SECTORS - 1, 2).await;
        let mut buf = vec![0xffu8; 8 * 512];
        disk.read(8, &mut buf).await.unwrap();
        (discard, result, out_of_range, buf.iter().all(|&b| b == 0))
    });
    let granularity = Discard { granularity_bytes: 4096, alignment_bytes: 0, secure: false };
    let capacity_sectors = DISK_SECTORS;
    let out_of_range = Err(Error::OutOfRange { sector: DISK_SECTORS - 1, nr_sectors: 2, capacity_sectors });
    assert_eq!(outcome.value, (Some(granularity), Ok(()), out_of_range, true));
    let seen = sim.log.borrow().seen[0].clone();
    assert_eq!((seen.operation, seen.sector, seen.nr_sectors), (Operation::Discard, 8, 16));
    sim.assert_clean();

    let sim = Sim::new(Config::default());
    let outcome = sim.run(Options::default(), async |disk| disk.discard(0, 8).await);
    assert_eq!(outcome.value, Err(Error::NotSupported(Operation::Discard)));
    sim.assert_clean();
}

#[test]
fn a_read_only_disk_refuses_writes_and_discards() {
    for (info, mode) in [(blkif::VDISK_READONLY, "w"), (0, "r")] {
        let sim = Sim::new(Config { info, mode, discard: true, ..Config::default() });
        let outcome = sim.run(Options::default(), async |disk| {
            let mut buf = vec![0u8; 4096];
            let read = disk.read(0, &mut buf).await;
            let write = disk.write(0, &buf).await;
            let discard = disk.discard(0, 8).await;
            (disk.info().read_only, read, write, discard)
        });
        assert_eq!(outcome.value, (true, Ok(()), Err(Error::ReadOnly), Err(Error::ReadOnly)));
        assert!(sim.log.borrow().seen.iter().all(|s| s.operation == Operation::Read));
        sim.assert_clean();
    }
}

#[test]
fn a_cdrom_reports_its_flags() {
    let info = blkif::VDISK_CDROM | blkif::VDISK_REMOVABLE | blkif::VDISK_READONLY;
    let sim = Sim::new(Config { info, sector_size: 2048, ..Config::default() });
    let outcome = sim.run(Options::default(), async |disk| {
        let mut buf = vec![0u8; 2048];
        let aligned = disk.read(4, &mut buf).await;
        let misaligned = disk.read(1, &mut buf).await;
        let short = disk.read(0, &mut buf[..512]).await;
        (disk.info().clone(), aligned, buf == expected(4, 2048), misaligned, short)
    });
    let (info, aligned, matches, misaligned, short) = outcome.value;
    assert!(info.cdrom && info.removable && info.read_only);
    assert_eq!((info.sector_size, aligned, matches), (2048, Ok(()), true));
    assert_eq!(misaligned, Err(Error::Misaligned { sector: 1, len_bytes: 2048, sector_size: 2048 }));
    assert_eq!(short, Err(Error::Misaligned { sector: 0, len_bytes: 512, sector_size: 2048 }));
    sim.assert_clean();
}

#[test]
fn out_of_range_and_misaligned_requests_are_refused_up_front() {
    let sim = Sim::new(Config::default());
    let outcome = sim.run(Options::default(), async |disk| {
        let mut buf = vec![0u8; 1024];
        let past_end = disk.read(DISK_SECTORS - 1, &mut buf).await;
        let overflow = disk.read(u64::MAX, &mut buf).await;
        let ragged = disk.read(0, &mut buf[..700]).await;
        let empty = disk.read(DISK_SECTORS, &mut []).await;
        (past_end, overflow, ragged, empty)
    });
    let (past_end, overflow, ragged, empty) = outcome.value;
    let capacity_sectors = DISK_SECTORS;
    assert_eq!(past_end, Err(Error::OutOfRange { sector: DISK_SECTORS - 1, nr_sectors: 2, capacity_sectors }));
    assert_eq!(overflow, Err(Error::OutOfRange { sector: u64::MAX, nr_sectors: 2, capacity_sectors }));
    assert_eq!(ragged, Err(Error::Misaligned { sector: 0, len_bytes: 700, sector_size: 512 }));
    assert_eq!(empty, Ok(()));
    assert!(sim.log.borrow().seen.is_empty(), "nothing reached the backend");
    sim.assert_clean();
}

#[test]
fn an_error_status_fails_only_that_call() {
    let sim = Sim::new(Config { fault: Fault::IoError(1), ..Config::default() });
    let outcome = sim.run(Options::default(), async |disk| {
        let mut buf = vec![0u8; 30 * 4096];
        let failed = disk.read(0, &mut buf).await;
        let next = disk.read(0, &mut buf).await;
        (failed, next, disk.failure())
    });
    let (failed, next, failure) = outcome.value;
    assert_eq!(failed, Err(Error::Io { operation: Operation::Read, sector: 88 }), "the second request's start");
    assert_eq!((next, failure), (Ok(()), None));
    assert_eq!(outcome.closed, Ok(()));
    sim.assert_clean();
}

/// A three-request read against a backend that misbehaves at request `at`.
fn misbehaving(fault: Fault) -> (Result<(), Error>, Result<(), Error>, Option<Error>) {
    let sim = Sim::new(Config { fault, ..Config::default() });
    let outcome = sim.run(no_persistence(), async |disk| {
        let mut buf = vec![0u8; 30 * 4096];
        let first = disk.read(0, &mut buf).await;
        let later = disk.write(0, &buf[..512]).await;
        (first, later, disk.failure())
    });
    assert_eq!(outcome.closed, Ok(()));
    assert!(sim.world.now_ns() < SECOND, "no timeout was needed");
    sim.assert_clean();
    outcome.value
}

fn assert_broken(fault: Fault, error: ProtocolError) {
    let broken = Err(Error::Protocol(error.clone()));
    assert_eq!(misbehaving(fault), (broken.clone(), broken, Some(Error::Protocol(error))), "{fault:?}");
}

#[test]
fn an_unknown_id_breaks_the_disk() {
    assert_broken(Fault::UnknownId(1), ProtocolError::UnknownId { id: 9999 });
}

#[test]
fn a_duplicate_response_breaks_the_disk() {
    assert_broken(Fault::Duplicate(1), ProtocolError::NotInFlight { id: 0 });
}

#[test]
fn a_late_duplicate_cannot_complete_the_next_request_in_its_slot() {
    let sim = Sim::new(Config { fault: Fault::Duplicate(1), ..Config::default() });
    let outcome = sim.run(no_persistence(), async |disk| {
        let mut buf = vec![0u8; 4096];
        let first = disk.read(0, &mut buf).await;
        let second = disk.read(8, &mut buf).await; // slot 0 again, its next generation
        (first, second)
    });
    let stale = Err(Error::Protocol(ProtocolError::NotInFlight { id: 0 }));
    assert_eq!(outcome.value, (Ok(()), stale));
    assert_eq!(outcome.closed, Ok(()));
    sim.assert_clean();
}

#[test]
fn a_garbage_response_breaks_the_disk() {
    assert_broken(Fault::Garbage(2), ProtocolError::UnknownId { id: 0xa5a5_a5a5_a5a5_a5a5 });
}

#[test]
fn a_wrong_operation_or_unknown_status_breaks_the_disk() {
    let wrong = ProtocolError::WrongOperation { id: 1, expected: blkif::OP_READ, got: blkif::OP_WRITE };
    assert_broken(Fault::WrongOperation(1), wrong);
    assert_broken(Fault::BadStatus(0), ProtocolError::Malformed { id: 0, why: WireError::BadStatus(7) });
}

#[test]
fn more_responses_than_requests_break_the_disk() {
    let (first, later, failure) = misbehaving(Fault::ExtraResponses(0));
    assert!(matches!(first, Err(Error::Protocol(ProtocolError::TooManyResponses { .. }))), "{first:?}");
    assert_eq!(later, first);
    assert_eq!(failure, first.err());
}

#[test]
fn the_backend_closing_mid_request_fails_it_and_the_watch_notices() {
    let sim = Sim::new(Config { fault: Fault::Close(1), ..Config::default() });
    let outcome = sim.run(no_persistence(), async |disk| {
        let mut buf = vec![0u8; 30 * 4096];
        let (read, watched) = join(disk.read(0, &mut buf), disk.watch_backend()).await;
        let later = disk.read(0, &mut buf[..512]).await;
        (read, watched, later)
    });
    let gone = Error::BackendGone { state: Some(State::Closing) };
    assert_eq!(outcome.value, (Err(gone.clone()), gone.clone(), Err(gone)));
    assert!(sim.world.now_ns() < SECOND, "noticed at once, no timeout");
    assert_eq!(outcome.closed, Ok(()), "Closing -> Closed, every grant ended once the backend let go");
    assert!(sim.log.borrow().finished);
    sim.assert_clean();
}

#[test]
fn the_backend_vanishing_mid_request_fails_it() {
    let sim = Sim::new(Config { fault: Fault::Vanish(0), ..Config::default() });
    let outcome = sim.run(no_persistence(), async |disk| {
        let mut buf = vec![0u8; 4096];
        disk.read(0, &mut buf).await
    });
    assert_eq!(outcome.value, Err(Error::BackendGone { state: None }));
    assert_eq!(outcome.closed, Ok(()));
    sim.assert_clean();
}

#[test]
fn an_idle_hot_unplug_is_noticed_by_watch_backend() {
    let sim = Sim::new(Config { persistent: true, ..Config::default() });
    let outcome = sim.run(Options::default(), async |disk| {
        disk.read(0, &mut [0u8; 4096]).await.unwrap();
        let unplug = async {
            sim.front.sleep(Duration::from_secs(2)).await;
            sim.world.xenstore_write(&format!("{BACK_NODE}/state"), b"5").unwrap();
        };
        let (gone, ()) = join(disk.watch_backend(), unplug).await;
        (gone, sim.world.now_ns())
    });
    assert_eq!(outcome.value, (Error::BackendGone { state: Some(State::Closing) }, 2 * SECOND));
    assert_eq!(outcome.closed, Ok(()), "the persistent pool is ended too");
    sim.assert_clean();
}

#[test]
fn a_silent_backend_times_out_and_the_disk_still_closes() {
    let sim = Sim::new(Config { fault: Fault::Silent(0), ..Config::default() });
    let outcome = sim.run(no_persistence(), async |disk| {
        let result = disk.read(0, &mut [0u8; 4096]).await;
        (result, sim.world.now_ns())
    });
    assert_eq!(outcome.value, (Err(Error::Timeout { waited: Duration::from_secs(30) }), 30 * SECOND));
    assert_eq!(outcome.closed, Ok(()));
    sim.assert_clean();
}

#[test]
fn grants_still_mapped_after_a_response_are_set_aside_and_ended_later() {
    let sim = Sim::new(Config { unmap_late: true, ..Config::default() });
    let options = Options { max_data_pages: 24, ..no_persistence() };
    let outcome = sim.run(options, async |disk| {
        let mut most_aside = 0;
        for round in 0..6u64 {
            let mut buf = vec![0u8; 20 * 4096];
            disk.read(round * 16, &mut buf).await.unwrap();
            assert!(buf == expected(round * 16, buf.len()));
            most_aside = most_aside.max(disk.stats().stale_grants);
            assert_eq!(sim.world.dangling_grants(), []);
        }
        most_aside
    });
    assert!(outcome.value > 0, "some pages waited aside for their grants to end");
    assert!(outcome.stats.pages <= 24, "within the page budget");
    assert_eq!(outcome.closed, Ok(()));
    sim.assert_clean();
}

#[test]
fn concurrent_calls_share_the_ring_and_take_turns_leading() {
    let sim = Sim::new(Config { reverse: true, ..Config::default() });
    let options = Options { max_data_pages: 16, ..no_persistence() };
    let outcome = sim.run(options, async |disk| {
        let mut a = vec![0u8; 300 * 1024];
        let mut b = vec![0u8; 120 * 1024];
        let data = vec![0x77u8; 200 * 1024];
        let reads = join(disk.read(0, &mut a), disk.read(4000, &mut b));
        let ((ra, rb), rc) = join(reads, disk.write(8000, &data)).await;
        let mut back = vec![0u8; data.len()];
        disk.read(8000, &mut back).await.unwrap();
        (ra, rb, rc, a == expected(0, a.len()), b == expected(4000, b.len()), back == data)
    });
    assert_eq!(outcome.value, (Ok(()), Ok(()), Ok(()), true, true, true));
    assert!(outcome.stats.pages <= 16);
    sim.assert_clean();
}

#[test]
fn a_dropped_call_orphans_its_requests_without_leaking() {
    let sim = Sim::new(Config::default());
    let outcome = sim.run(no_persistence(), async |disk| {
        let mut buf = vec![0u8; 64 * 1024];
        {
            let mut read = pin!(disk.read(0, &mut buf));
            poll_fn(|cx| {
                assert!(read.as_mut().poll(cx).is_pending());
                Poll::Ready(())
            })
            .await;
        }
        let in_flight = disk.stats().in_flight;
        let mut other = vec![0u8; 4096];
        let result = disk.read(100, &mut other).await;
        (in_flight, result, other == expected(100, 4096), disk.stats().in_flight)
    });
    assert_eq!(outcome.value, (2, Ok(()), true, 0));
    sim.assert_clean();
}

#[test]
fn a_backend_closing_during_the_handshake_leaves_nothing_granted() {
    let sim = Sim::new(Config { fault: Fault::RefuseConnect, ..Config::default() });
    let mut executor = Executor::new(&sim.world);
    executor.spawn_background("backend", sim.backend().run());
    let result = executor.spawn("frontend", async { Disk::connect(&sim.front, DEVID, Options::default()).await.err() });
    executor.run().unwrap_or_else(|stuck| panic!("{stuck}"));
    drop(executor);
    assert_eq!(result.take(), Some(Some(Error::BackendGone { state: Some(State::Closing) })));
    assert!(sim.log.borrow().finished, "the backend unmapped the ring once we said Closed");
    sim.assert_clean();
}

#[test]
fn a_missing_backend_geometry_is_a_clear_error() {
    let sim = Sim::new(Config { sector_size: 1000, ..Config::default() });
    let mut executor = Executor::new(&sim.world);
    executor.spawn_background("backend", sim.backend().run());
    let result = executor.spawn("frontend", async { Disk::connect(&sim.front, DEVID, Options::default()).await.err() });
    executor.run().unwrap_or_else(|stuck| panic!("{stuck}"));
    drop(executor);
    let why = "not a power of two from 512 to 4096";
    assert_eq!(result.take(), Some(Some(Error::BadBackend { key: "sector-size", why })));
    sim.assert_clean();
}
