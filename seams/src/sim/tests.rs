//! The sim against scripted peers: each frontend below knows only the seam traits.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;
use core::cell::{Cell, RefCell};
use core::pin::{Pin, pin};
use core::task::{Context, Poll, Waker};
use core::time::Duration;

use super::*;
use crate::{
    Clock, Error, EventChannels, GrantRef, Grants, Memory, Permission, Port, RetryPolicy, SharedPage, TransactionError,
    Tx, Xenstore, XenstoreError, XenstoreWatch,
};
use xenstore::reply::XsError;
use xenstore::wire::{Access, Header, MsgType};

const BACK: DomId = 0;
const FRONT: DomId = 5;
const SECOND: u64 = 1_000_000_000;
const FRONT_DEVICE: &str = "/local/domain/5/device/demo/0";
const BACK_DEVICE: &str = "/local/domain/0/backend/demo/5/0";

/// Polls once with a waker that does nothing.
fn poll_once<F: Future>(future: Pin<&mut F>) -> Poll<F::Output> {
    future.poll(&mut Context::from_waker(Waker::noop()))
}

fn world_with_two_domains() -> (World, SimXen, SimXen) {
    let world = World::new();
    let back = world.domain(BACK);
    let front = world.domain(FRONT);
    (world, back, front)
}

async fn read_number<X: Xenstore>(xen: &X, tx: Tx, path: &str) -> u32 {
    let text = xen.read_string(tx, path).await.expect("node readable");
    text.parse().expect("a decimal number")
}

/// A frontend as drivers will write it: grants a ring page and offers a port through
/// xenstore, waits for the backend's value in the page, then waits for the backend to
/// close before ending the grant. Knows only the traits.
async fn demo_frontend<X: Xen>(xen: &X, backend: DomId) -> u32 {
    let page = xen.alloc_page().unwrap();
    let gref = xen.grant(backend, page.frame(), false).unwrap();
    let port = xen.alloc_unbound(backend).unwrap();
    let (ring_ref, channel) = (gref.0.to_string(), port.0.to_string());
    xen.transaction(RetryPolicy::default(), async |tx, _| {
        xen.write(tx, "device/demo/0/ring-ref", ring_ref.as_bytes()).await?;
        xen.write(tx, "device/demo/0/event-channel", channel.as_bytes()).await?;
        xen.write(tx, "device/demo/0/state", b"3").await
    })
    .await
    .unwrap();
    let value = loop {
        xen.wait(port).await;
        match page.read_u32(0) {
            0 => continue, // events coalesce and may be spurious: check the page
            value => break value,
        }
    };
    assert_eq!(xen.end(gref), Err(Error::InUse), "the backend still maps the ring");
    let state = format!("{BACK_DEVICE}/state");
    let watch = xen.watch(&state).await.unwrap();
    while xen.read_string(Tx::NONE, &state).await.ok().as_deref() != Some("6") {
        watch.next(Duration::from_secs(30)).await.unwrap();
    }
    xen.end(gref).unwrap();
    xen.close(port).unwrap();
    value
}

/// The scripted backend: waits for the frontend to be initialised, maps its ring,
/// binds its port, answers, and closes a second later.
async fn demo_backend(xen: &SimXen, frontend: DomId) {
    let readable =
        [Permission { domid: BACK, access: Access::None }, Permission { domid: frontend, access: Access::Read }];
    xen.write(Tx::NONE, "backend/demo/5/0/state", b"2").await.unwrap();
    xen.set_perms(Tx::NONE, "backend/demo/5/0/state", &readable).await.unwrap();
    let watch = xen.watch(&format!("{FRONT_DEVICE}/state")).await.unwrap();
    loop {
        watch.next(Duration::from_secs(30)).await.unwrap();
        let state = xen.read_string(Tx::NONE, &format!("{FRONT_DEVICE}/state")).await;
        if state.as_deref() == Ok("3") {
            break;
        }
    }
    let gref = read_number(xen, Tx::NONE, &format!("{FRONT_DEVICE}/ring-ref")).await;
    let remote_port = read_number(xen, Tx::NONE, &format!("{FRONT_DEVICE}/event-channel")).await;
    let ring = xen.map_grant(frontend, GrantRef(gref), true).unwrap();
    let port = xen.bind_interdomain(frontend, remote_port).unwrap();
    xen.wait(port).await; // the bind's own event
    ring.write_u32(0, 0xfeed);
    xen.notify(port).unwrap();
    xen.write(Tx::NONE, "backend/demo/5/0/state", b"4").await.unwrap();
    xen.sleep(Duration::from_secs(1)).await;
    ring.unmap();
    xen.close(port).unwrap();
    xen.write(Tx::NONE, "backend/demo/5/0/state", b"6").await.unwrap();
}

#[test]
fn frontend_and_scripted_backend_share_a_ring_and_an_event_channel() {
    let (world, back, front) = world_with_two_domains();
    let mut executor = Executor::new(&world);
    let value = executor.spawn("frontend", demo_frontend(&front, BACK));
    executor.spawn("backend", demo_backend(&back, FRONT));
    executor.run().unwrap_or_else(|stuck| panic!("{stuck}"));
    assert_eq!(value.take(), Some(0xfeed));
    assert_eq!(world.now_ns(), SECOND, "only the backend's one-second sleep took time");
    assert_eq!(world.grants(FRONT), []);
    assert_eq!(world.ports(FRONT), []);
    assert_eq!(world.ports(BACK), []);
    assert_eq!(world.dangling_grants(), []);
    assert_eq!(world.pages(FRONT), [], "the frontend dropped its ring page");
}

#[test]
fn ending_a_mapped_grant_is_in_use_until_unmapped() {
    let (world, back, front) = world_with_two_domains();
    let page = front.alloc_page().unwrap();
    let gref = front.grant(BACK, page.frame(), false).unwrap();
    assert_eq!(gref, GrantRef(8), "refs 0-7 are the toolstack's");
    let mapping = back.map_grant(FRONT, gref, true).unwrap();
    assert_eq!(world.grants(FRONT)[0].mappings, 1);
    assert_eq!(front.end(gref), Err(Error::InUse));
    assert_eq!(front.end(gref), Err(Error::InUse), "nothing changed");
    mapping.unmap();
    assert_eq!(front.end(gref), Ok(()));
    assert_eq!(front.end(gref), Err(Error::Invalid), "already ended");
    assert_eq!(front.end(GrantRef(1234)), Err(Error::Invalid), "never granted");
    assert_eq!(front.grant(BACK, page.frame(), true), Ok(gref), "ended refs are reused");
}

#[test]
fn mapping_is_refused_for_other_domains_read_only_grants_and_ended_grants() {
    let world = World::new();
    let (back, front, other) = (world.domain(BACK), world.domain(FRONT), world.domain(7));
    let page = front.alloc_page().unwrap();
    let read_only = front.grant(BACK, page.frame(), true).unwrap();
    assert_eq!(other.map_grant(FRONT, read_only, false).err(), Some(Error::Xen(-EPERM)));
    assert_eq!(back.map_grant(FRONT, read_only, true).err(), Some(Error::Xen(-EPERM)));
    let mapping = back.map_grant(FRONT, read_only, false).unwrap();
    assert!(!mapping.is_writable());
    drop(mapping);
    front.end(read_only).unwrap();
    assert_eq!(back.map_grant(FRONT, read_only, false).err(), Some(Error::Invalid));
    assert_eq!(back.map_grant(42, read_only, false).err(), Some(Error::Invalid), "no such domain");
    // Only live pages of one's own may be granted.
    assert_eq!(back.grant(FRONT, page.frame(), false), Err(Error::Invalid));
    assert_eq!(front.grant(BACK, 0xdead, false), Err(Error::Invalid));
}

#[test]
#[should_panic(expected = "read-only mapping")]
fn writing_through_a_read_only_mapping_panics() {
    let (_world, back, front) = world_with_two_domains();
    let page = front.alloc_page().unwrap();
    let gref = front.grant(BACK, page.frame(), true).unwrap();
    back.map_grant(FRONT, gref, false).unwrap().write(0, b"x");
}

#[test]
fn a_page_and_its_mapping_see_the_same_bytes() {
    let (_world, back, front) = world_with_two_domains();
    let page = front.alloc_page().unwrap();
    let other = front.alloc_page().unwrap();
    assert_ne!(page.frame(), other.frame());
    let gref = front.grant(BACK, page.frame(), false).unwrap();
    let mapping = back.map_grant(FRONT, gref, true).unwrap();
    assert_eq!(mapping.frame(), page.frame());
    page.write(100, b"request");
    let mut bytes = [0; 7];
    mapping.read(100, &mut bytes);
    assert_eq!(&bytes, b"request");
    mapping.write_u32(PAGE_SIZE - 4, 0x0102_0304);
    assert_eq!(page.read_u32(PAGE_SIZE - 4), 0x0102_0304);
    page.read(PAGE_SIZE - 4, &mut bytes[..4]);
    assert_eq!(bytes[..4], [4, 3, 2, 1], "little-endian");
    let mut untouched = [0xff; 8];
    other.read(100, &mut untouched);
    assert_eq!(untouched, [0; 8], "pages start zeroed");
}

#[test]
fn an_index_the_peer_increments_across_byte_carries_reads_whole() {
    let (_world, back, front) = world_with_two_domains();
    let page = front.alloc_page().unwrap();
    let gref = front.grant(BACK, page.frame(), false).unwrap();
    let mapping = back.map_grant(FRONT, gref, true).unwrap();
    for carry in [0xffu32, 0xffff, 0xff_ffff, 0xffff_ffff] {
        for value in [carry, carry.wrapping_add(1)] {
            mapping.write_u32(8, value);
            assert_eq!(page.read_u32(8), value, "the whole of {value:#x}, never part of it");
            page.write_u32(12, value);
            assert_eq!(mapping.read_u32(12), value);
        }
    }
    let mut bytes = [0; 4];
    page.read(8, &mut bytes);
    assert_eq!(bytes, [0; 4], "0xffff_ffff + 1 wrapped to 0");
}

#[test]
#[should_panic(expected = "ring index at unaligned offset 6")]
fn a_ring_index_at_an_unaligned_offset_panics() {
    let world = World::new();
    let page = world.domain(FRONT).alloc_page().unwrap();
    page.read_u32(6);
}

#[test]
#[should_panic(expected = "wrote through a read-only mapping")]
fn an_index_written_through_a_read_only_mapping_panics() {
    let (_world, back, front) = world_with_two_domains();
    let page = front.alloc_page().unwrap();
    let gref = front.grant(BACK, page.frame(), true).unwrap();
    back.map_grant(FRONT, gref, false).unwrap().write_u32(0, 1);
}

#[test]
#[should_panic(expected = "leave the 4096-byte page")]
fn reading_past_the_page_panics() {
    let world = World::new();
    let page = world.domain(FRONT).alloc_page().unwrap();
    page.read(PAGE_SIZE - 2, &mut [0; 4]);
}

#[test]
fn failed_allocations_and_dropped_granted_pages_are_visible() {
    let (world, back, front) = world_with_two_domains();
    world.fail_next_page_allocations(FRONT, 2);
    assert_eq!(front.alloc_page().err(), Some(Error::Exhausted));
    assert_eq!(front.alloc_page().err(), Some(Error::Exhausted));
    assert_eq!(back.alloc_page().err(), None, "other domains are unaffected");
    let page = front.alloc_page().unwrap();
    let frame = page.frame();
    world.fail_next_grants(FRONT, 1);
    assert_eq!(front.grant(BACK, frame, false), Err(Error::Exhausted));
    let gref = front.grant(BACK, frame, false).unwrap();
    page.write(0, b"stale");
    assert_eq!(world.pages(FRONT), [frame]);
    drop(page); // a leak: still granted
    assert_eq!(world.pages(FRONT), []);
    let dangling = world.dangling_grants();
    assert_eq!(dangling.len(), 1);
    assert_eq!((dangling[0].granter, dangling[0].grant, dangling[0].frame), (FRONT, gref, frame));
    let mapping = back.map_grant(FRONT, gref, false).unwrap();
    let mut bytes = [0; 5];
    mapping.read(0, &mut bytes);
    assert_eq!(&bytes, b"stale", "the peer still sees the old bytes");
    drop(mapping);
    front.end(gref).unwrap();
    assert_eq!(world.dangling_grants(), []);
}

#[test]
fn binding_sets_the_binders_port_pending_once() {
    let (world, back, front) = world_with_two_domains();
    let offered = front.alloc_unbound(BACK).unwrap();
    assert_eq!(offered, Port(1), "port 0 is never used");
    assert_eq!(back.bind_interdomain(FRONT, offered.0 + 1).err(), Some(Error::Xen(-EINVAL)));
    assert_eq!(back.bind_interdomain(99, offered.0).err(), Some(Error::Xen(-ESRCH)));
    let bound = back.bind_interdomain(FRONT, offered.0).unwrap();
    let state = PortState::Interdomain { remote: FRONT, remote_port: offered };
    let info = PortInfo { port: bound, state, pending: true, notifications: 0 };
    assert_eq!(world.ports(BACK), [info]);
    assert!(!world.ports(FRONT)[0].pending, "the allocator's port is not pending");
    assert_eq!(poll_once(pin!(back.wait(bound))), Poll::Ready(()));
    assert_eq!(poll_once(pin!(back.wait(bound))), Poll::Pending, "only once");
    assert_eq!(back.bind_interdomain(FRONT, offered.0).err(), Some(Error::Xen(-EINVAL)), "taken");
}

#[test]
fn events_coalesce_and_wait_consumes_them() {
    let (world, back, front) = world_with_two_domains();
    let port = front.alloc_unbound(BACK).unwrap();
    let bound = back.bind_interdomain(FRONT, port.0).unwrap();
    for _ in 0..3 {
        back.notify(bound).unwrap();
    }
    assert_eq!(world.ports(FRONT)[0].notifications, 3);
    assert_eq!(poll_once(pin!(front.wait(port))), Poll::Ready(()));
    let mut second = pin!(front.wait(port));
    assert_eq!(poll_once(second.as_mut()), Poll::Pending, "three notifies, one event");
    back.notify(bound).unwrap();
    assert_eq!(poll_once(second.as_mut()), Poll::Ready(()));
}

#[test]
fn notify_wakes_a_waiting_task() {
    let (world, back, front) = world_with_two_domains();
    let port = front.alloc_unbound(BACK).unwrap();
    let bound = back.bind_interdomain(FRONT, port.0).unwrap();
    let mut executor = Executor::new(&world);
    let woke_at = executor.spawn("frontend", async {
        front.wait(port).await;
        front.now_ns()
    });
    executor.spawn("backend", async {
        back.sleep(Duration::from_millis(250)).await;
        back.notify(bound).unwrap();
    });
    executor.run().unwrap();
    assert_eq!(woke_at.take(), Some(SECOND / 4));
}

#[test]
fn dropped_notifications_are_lost() {
    let (world, back, front) = world_with_two_domains();
    let port = front.alloc_unbound(BACK).unwrap();
    let bound = back.bind_interdomain(FRONT, port.0).unwrap();
    world.drop_next_notifications(BACK, 1);
    assert_eq!(back.notify(bound), Ok(()), "the sender cannot tell");
    assert!(!world.ports(FRONT)[0].pending);
    back.notify(bound).unwrap();
    assert!(world.ports(FRONT)[0].pending);
    world.fail_next_port_allocations(FRONT, 1);
    assert_eq!(front.alloc_unbound(BACK), Err(Error::Exhausted));
    assert_eq!(front.alloc_unbound(BACK), Ok(Port(2)));
}

#[test]
fn closing_a_port_wakes_both_ends_and_later_notifies_are_invalid() {
    let (world, back, front) = world_with_two_domains();
    let port = front.alloc_unbound(BACK).unwrap();
    let bound = back.bind_interdomain(FRONT, port.0).unwrap();
    assert_eq!(poll_once(pin!(back.wait(bound))), Poll::Ready(())); // the bind's event
    let mut executor = Executor::new(&world);
    executor.spawn("frontend waits", front.wait(port));
    executor.spawn("backend waits on its own port", back.wait(bound));
    executor.spawn("backend closes", async {
        back.sleep(Duration::from_secs(5)).await;
        back.close(bound).unwrap();
    });
    executor.run().unwrap_or_else(|stuck| panic!("{stuck}"));
    assert_eq!(world.now_ns(), 5 * SECOND);
    assert_eq!(back.notify(bound), Err(Error::Invalid), "closed");
    assert_eq!(back.close(bound), Err(Error::Invalid), "closed twice");
    assert_eq!(front.notify(port), Ok(()), "the peer's notify is dropped, as in Xen");
    let reverted = PortState::Unbound { remote: BACK };
    assert_eq!(world.ports(FRONT)[0].state, reverted);
    assert_eq!(poll_once(pin!(back.wait(bound))), Poll::Ready(()), "not open: at once");
    assert_eq!(front.notify(Port(77)), Err(Error::Invalid), "never opened");
}

#[test]
fn a_sleep_of_30_virtual_seconds_is_instant() {
    let world = World::new();
    let xen = world.domain(FRONT);
    world.advance(Duration::from_millis(1500));
    let start = xen.now_ns();
    let mut executor = Executor::new(&world);
    let polls = executor.spawn("sleeper", async {
        xen.sleep(Duration::from_secs(30)).await;
        xen.now_ns()
    });
    executor.set_poll_limit(2); // the first poll parks, the second finds the time passed
    executor.run().unwrap();
    assert_eq!(polls.take(), Some(start + 30 * SECOND));
    assert_eq!(xen.now_ns(), start + 30 * SECOND);
    assert_eq!(world.block_on(xen.sleep(Duration::ZERO)), Ok(()), "zero: at once");
}

#[test]
fn timers_fire_in_deadline_order() {
    let world = World::new();
    let xen = world.domain(FRONT);
    let order = RefCell::new(Vec::new());
    let mut executor = Executor::new(&world);
    for (name, seconds) in [("c", 3), ("a", 1), ("b", 2)] {
        let (xen, order) = (&xen, &order);
        executor.spawn(name, async move {
            xen.sleep(Duration::from_secs(seconds)).await;
            order.borrow_mut().push((name, xen.now_ns() / SECOND));
        });
    }
    executor.run().unwrap();
    drop(executor);
    assert_eq!(order.into_inner(), [("a", 1), ("b", 2), ("c", 3)]);
}

#[test]
fn a_deadlock_is_reported_not_hung() {
    let (world, _back, front) = world_with_two_domains();
    let port = front.alloc_unbound(BACK).unwrap();
    let mut executor = Executor::new(&world);
    executor.spawn("frontend", front.wait(port)); // nobody will ever bind
    executor.spawn("sleeper", front.sleep(Duration::from_secs(2)));
    let stuck = executor.run().unwrap_err();
    assert_eq!(stuck.reason, StuckReason::Deadlock);
    assert_eq!(stuck.now_ns, 2 * SECOND, "the timer ran out first");
    let expected =
        TaskReport { name: "frontend".into(), background: false, waiting_on: vec!["an event on dom5 port 1".into()] };
    assert_eq!(stuck.tasks, [expected]);
    let report = stuck.to_string();
    assert!(report.starts_with("deadlock"), "{report}");
    assert!(report.contains("task \"frontend\" waits on an event on dom5 port 1"), "{report}");
}

/// Wakes itself and stays pending: a task that spins.
struct Spin;

impl Future for Spin {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

#[test]
fn the_poll_limit_stops_a_spinning_task() {
    let world = World::new();
    let mut executor = Executor::new(&world);
    executor.spawn("spinner", Spin);
    executor.set_poll_limit(100);
    let stuck = executor.run().unwrap_err();
    assert_eq!((stuck.reason, stuck.polls), (StuckReason::PollLimit, 100));
    assert_eq!(stuck.tasks[0].waiting_on, Vec::<String>::new());
    assert!(stuck.to_string().contains("nothing the sim knows of"));
}

#[test]
fn a_background_backend_may_outlive_the_frontend() {
    let (world, back, front) = world_with_two_domains();
    let port = front.alloc_unbound(BACK).unwrap();
    let bound = back.bind_interdomain(FRONT, port.0).unwrap();
    assert_eq!(poll_once(pin!(back.wait(bound))), Poll::Ready(())); // the bind's event
    let served = Cell::new(0);
    let mut executor = Executor::new(&world);
    executor.spawn_background("echo backend", async {
        loop {
            back.wait(bound).await;
            served.set(served.get() + 1);
            back.notify(bound).unwrap();
        }
    });
    executor.spawn("frontend", async {
        for _ in 0..3 {
            front.notify(port).unwrap();
            front.wait(port).await;
        }
    });
    executor.run().unwrap_or_else(|stuck| panic!("{stuck}"));
    assert_eq!(served.get(), 3);
    assert!(!world.ports(BACK)[0].pending, "the backend answered the last request");
}

#[test]
fn eagain_forever_ends_in_too_many_conflicts() {
    let world = World::new();
    let xen = world.domain(FRONT);
    world.with_xenstore(|sim| sim.fail_commits_with_eagain_forever());
    let attempts = Cell::new(0);
    let policy = RetryPolicy { max_attempts: 4 };
    let result = world
        .block_on(xen.transaction(policy, async |tx, attempt| {
            attempts.set(attempt);
            xen.write(tx, "data/x", b"1").await
        }))
        .unwrap();
    assert_eq!(result, Err(TransactionError::TooManyConflicts { attempts: 4 }));
    assert_eq!(attempts.get(), 4);
    assert_eq!(world.xenstore_read("/local/domain/5/data/x"), None);
    assert_eq!(world.with_xenstore(|sim| sim.commits()), 4);
}

#[test]
fn a_transaction_conflicting_with_a_rival_is_redone() {
    let world = World::new();
    let xen = world.domain(FRONT);
    world.xenstore_write("/local/domain/5/counter", b"0").unwrap();
    let result = world.block_on(xen.transaction(RetryPolicy::default(), async |tx, attempt| {
        let value = read_number(&xen, tx, "counter").await;
        if attempt == 1 {
            world.xenstore_write("/local/domain/5/counter", b"10").unwrap(); // a rival
        }
        xen.write(tx, "counter", (value + 1).to_string().as_bytes()).await.map(|()| attempt)
    }));
    assert_eq!(result, Ok(Ok(2)));
    assert_eq!(world.xenstore_read("/local/domain/5/counter"), Some(b"11".to_vec()));
}

#[test]
fn watch_events_arrive_for_a_backend_state_change() {
    let (world, back, front) = world_with_two_domains();
    let mut executor = Executor::new(&world);
    let seen = executor.spawn("frontend", async {
        let watch = front.watch(BACK_DEVICE).await.unwrap();
        let mut seen = vec![watch.next(Duration::ZERO).await.unwrap()]; // registration
        seen.push(watch.next(Duration::from_secs(30)).await.unwrap());
        let quiet = watch.next(Duration::from_secs(30)).await;
        (seen, quiet, front.now_ns())
    });
    executor.spawn("backend", async {
        back.sleep(Duration::from_secs(2)).await;
        back.write(Tx::NONE, "backend/demo/5/0/state", b"4").await.unwrap();
    });
    executor.run().unwrap_or_else(|stuck| panic!("{stuck}"));
    let (seen, quiet, now) = seen.take().unwrap();
    let state = format!("{BACK_DEVICE}/state");
    assert_eq!(seen, [String::from(BACK_DEVICE), state]);
    assert_eq!(quiet, Err(XenstoreError::Timeout), "nothing more changed");
    assert_eq!(now, 32 * SECOND, "the change at 2 s, then a 30 s limit");
}

#[test]
fn relative_watches_and_dropped_watches() {
    let world = World::new();
    let xen = world.domain(FRONT);
    let events = world
        .block_on(async {
            let watch = xen.watch("device").await.unwrap();
            assert_eq!(watch.path(), "device");
            assert_eq!(watch.next(Duration::ZERO).await.as_deref(), Ok("device"));
            world.xenstore_write("/local/domain/5/device/vif/0/state", b"1").unwrap();
            world.xenstore_write("/local/domain/5/elsewhere", b"1").unwrap();
            let event = watch.next(Duration::ZERO).await;
            drop(watch);
            world.xenstore_write("/local/domain/5/device/vif/0/state", b"2").unwrap();
            (event, xen.watch("device").await.unwrap().next(Duration::ZERO).await)
        })
        .unwrap();
    assert_eq!(events.0.as_deref(), Ok("device/vif/0/state"), "relative, as registered");
    assert_eq!(events.1.as_deref(), Ok("device"), "only the new registration event");
}

#[test]
fn relative_paths_live_in_the_domains_home_and_permissions_hold() {
    let (world, back, front) = world_with_two_domains();
    world
        .block_on(async {
            front.write(Tx::NONE, "device/x", b"front").await.unwrap();
            assert_eq!(front.directory(Tx::NONE, "device").await.unwrap(), ["x"]);
            back.write(Tx::NONE, "secret", b"dom0's").await.unwrap();
            let denied = front.read(Tx::NONE, "/local/domain/0/secret").await;
            assert_eq!(denied, Err(XenstoreError::Xs(XsError::Errno(Errno::EACCES))));
            assert!(front.read(Tx::NONE, "device/missing").await.unwrap_err().is_missing());
            let bad = front.read(Tx::NONE, "device//x").await;
            assert!(matches!(bad, Err(XenstoreError::Encode(_))));
            front.rm(Tx::NONE, "device").await.unwrap();
            front.mkdir(Tx::NONE, "empty").await.unwrap();
        })
        .unwrap();
    assert_eq!(world.xenstore_read("/local/domain/5/device/x"), None);
    assert_eq!(world.xenstore_read("/local/domain/5/empty"), Some(Vec::new()));
    assert_eq!(world.xenstore_read("/local/domain/0/secret"), Some(b"dom0's".to_vec()));
    assert_eq!(world.domains(), [BACK, FRONT]);
}

#[test]
fn the_toolstack_fixture_gives_each_end_its_own_nodes_and_read_access_to_the_other() {
    let world = World::new();
    let (front, back, stranger) = (world.domain(FRONT), world.domain(7), world.domain(9));
    let device = PvDevice { kind: "vif", devid: 1, frontend: FRONT, backend: 7 };
    world.toolstack(device, &[("mac", "00:16:3e:00:00:01")]);
    let (front_path, back_path) = (device.front_path(), device.back_path());
    assert_eq!(
        (front_path.as_str(), back_path.as_str()),
        ("/local/domain/5/device/vif/1", "/local/domain/7/backend/vif/5/1")
    );
    let read = |path: String| world.xenstore_read(&path).map(|value| String::from_utf8(value).unwrap());
    assert_eq!(read(format!("{front_path}/backend")), Some(back_path.clone()));
    assert_eq!(read(format!("{front_path}/backend-id")).as_deref(), Some("7"));
    assert_eq!(read(format!("{back_path}/frontend")), Some(front_path.clone()));
    world
        .block_on(async {
            for key in ["backend", "backend-id", "state", "mac"] {
                assert!(front.read(Tx::NONE, &format!("{front_path}/{key}")).await.is_ok(), "{key}");
                assert!(back.read(Tx::NONE, &format!("{front_path}/{key}")).await.is_ok(), "{key}");
            }
            front.write(Tx::NONE, &format!("{front_path}/state"), b"3").await.unwrap();
            back.write(Tx::NONE, &format!("{back_path}/state"), b"2").await.unwrap();
            assert_eq!(front.read_string(Tx::NONE, &format!("{back_path}/state")).await.as_deref(), Ok("2"));
            let denied = Err(XenstoreError::Xs(XsError::Errno(Errno::EACCES)));
            assert_eq!(back.write(Tx::NONE, &format!("{front_path}/state"), b"6").await, denied);
            assert_eq!(front.write(Tx::NONE, &format!("{back_path}/state"), b"6").await, denied);
            assert_eq!(stranger.read(Tx::NONE, &format!("{front_path}/mac")).await.map(|_| ()), denied);
            assert_eq!(stranger.read(Tx::NONE, &format!("{back_path}/state")).await.map(|_| ()), denied);
        })
        .unwrap();
}

#[test]
fn a_lost_xenstore_reply_times_out_on_the_virtual_clock() {
    let world = World::new();
    let xen = world.domain(FRONT);
    world.with_xenstore(|sim| sim.drop_replies(1));
    let result = world.block_on(xen.write(Tx::NONE, "lost", b"1")).unwrap();
    assert_eq!(result, Err(XenstoreError::Timeout));
    assert_eq!(world.now_ns(), DEFAULT_XENSTORE_TIMEOUT.as_secs() * SECOND);
    assert_eq!(world.xenstore_read("/local/domain/5/lost"), Some(b"1".to_vec()), "it took effect");
    world.set_xenstore_timeout(Duration::from_secs(1));
    world.with_xenstore(|sim| sim.drop_replies(1));
    let start = world.now_ns();
    assert_eq!(world.block_on(xen.read(Tx::NONE, "lost")).unwrap(), Err(XenstoreError::Timeout));
    assert_eq!(world.now_ns() - start, SECOND);
    assert_eq!(world.block_on(xen.read(Tx::NONE, "lost")).unwrap(), Ok(b"1".to_vec()));
}

#[test]
fn a_malformed_message_breaks_the_connection() {
    let world = World::new();
    let xen = world.domain(FRONT);
    let connection = world.xenstore_connection(FRONT).unwrap();
    let header = Header { msg_type: MsgType::Read, req_id: 0, tx_id: 0, len: 5000 };
    world.with_xenstore(|sim| sim.inject(connection, &header.encode()));
    let broken = world.xenstore_broken(FRONT).expect("broken at once");
    let result = world.block_on(xen.read(Tx::NONE, "domid")).unwrap();
    assert_eq!(result, Err(XenstoreError::Broken(broken)));
    assert_eq!(world.xenstore_broken(BACK), None);
}

#[test]
fn handles_report_their_domid() {
    let world = World::new();
    assert_eq!(world.domain(FRONT).domid(), FRONT);
    assert_eq!(world.domain(BACK).domid(), BACK);
    assert_eq!(format!("{:?}", world.domain(FRONT)), "SimXen(dom5)");
}
