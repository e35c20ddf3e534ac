//! The netfront against [`sim::netback`] in the simulated Xen, and smoltcp over it.

use alloc::collections::VecDeque;
use alloc::format;
use alloc::rc::Rc;
use alloc::vec;
use core::cell::RefCell;

use smoltcp::iface::{Config as IfaceConfig, Interface, SocketSet};
use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::socket::tcp;
use smoltcp::time::Instant;
use smoltcp::wire::{IpAddress, IpCidr};
use xen_seams::sim::{Executor, PvDevice, SimXen, World};
use xen_seams::{GrantRef, SharedPage};

use super::sim::{ToGuest, Wire, netback, quiet_peer};
use super::*;
use crate::netif::{EXTRA_FLAG_MORE, PAGE_SIZE, rx_flags, status};
use crate::ring;

const FRONT: u16 = 5;
const FRONT_NODE: &str = "/local/domain/5/device/vif/0";
const BACK_NODE: &str = "/local/domain/0/backend/vif/5/0";
const MAC: &str = "00:16:3e:5a:00:01";
const SMALL: Config = Config { rx_buffers: 16, tx_buffers: 8 };

/// The device under test, attached as libxl does ([`World::toolstack`]).
const DEVICE: PvDevice = PvDevice { kind: "vif", devid: 0, frontend: FRONT, backend: 0 };

fn front_node(world: &World, key: &str) -> Option<String> {
    world.xenstore_read(&format!("{FRONT_NODE}/{key}")).map(|v| String::from_utf8(v).unwrap())
}

/// Distinct frames: the index in the first bytes, then a pattern.
fn frame(index: usize, len: usize) -> Vec<u8> {
    let mut frame: Vec<u8> = (0..len).map(|i| (i * 7 + index) as u8).collect();
    for (i, byte) in (index as u32).to_le_bytes().iter().enumerate().take(len) {
        frame[i] = *byte;
    }
    frame
}

fn expected_grants(config: Config) -> usize {
    2 + usize::from(config.tx_buffers).div_ceil(2) + usize::from(config.rx_buffers)
}

/// Receives `count` frames, waiting (bounded) when none is there.
async fn receive_frames(net: &mut Netfront<'_, SimXen>, count: usize) -> Vec<Vec<u8>> {
    let mut frames = Vec::new();
    while frames.len() < count {
        match net.receive().unwrap() {
            Some(frame) => frames.push(frame),
            None => assert!(net.wait(Duration::from_secs(5)).await.unwrap().receive, "no frame came"),
        }
    }
    frames
}

/// Sends every frame, waiting (bounded) while the tx pool is full.
async fn send_frames(net: &mut Netfront<'_, SimXen>, frames: &[Vec<u8>]) {
    for frame in frames {
        loop {
            match net.send(frame) {
                Ok(()) => break,
                Err(NetError::TxFull) => assert!(net.wait(Duration::from_secs(5)).await.unwrap().send),
                Err(e) => panic!("{e}"),
            }
        }
    }
}

fn run(executor: &mut Executor<'_>) {
    executor.run().unwrap_or_else(|stuck| panic!("{stuck}"));
}

#[test]
fn connect_negotiates_copy_mode_one_queue_and_nothing_more() {
    let world = World::new();
    world.toolstack(DEVICE, &[("mac", MAC)]);
    let (front, back) = (world.domain(FRONT), world.domain(0));
    let wire = Rc::new(RefCell::new(Wire::default()));
    let mut executor = Executor::new(&world);
    executor.spawn_background("netback", netback(back, DEVICE, wire.clone(), quiet_peer));
    let checked = executor.spawn("netfront", async {
        let net = Netfront::connect_with(&front, 0, SMALL).await.unwrap();
        assert_eq!(net.mac(), [0x00, 0x16, 0x3e, 0x5a, 0x00, 0x01]);
        assert_eq!(net.live_grants(), expected_grants(SMALL));
        assert_eq!(world.grants(FRONT).len(), expected_grants(SMALL));
        let ring_ref: u32 = front_node(&world, "rx-ring-ref").unwrap().parse().unwrap();
        let rx_ring = world.domain(0).map_grant(FRONT, GrantRef(ring_ref), false).unwrap();
        assert_eq!(rx_ring.read_u32(ring::REQ_PROD), 16, "every rx buffer posted at connect");
        drop(rx_ring);
        let negotiated = ["request-rx-copy", "feature-rx-notify", "feature-no-csum-offload", "multi-queue-num-queues"];
        for key in negotiated {
            assert_eq!(front_node(&world, key).as_deref(), Some("1"), "{key}");
        }
        for key in ["feature-sg", "feature-gso-tcpv4", "feature-gso-tcpv6", "event-channel-tx", "queue-0"] {
            assert_eq!(front_node(&world, key), None, "{key} must not be advertised");
        }
        assert_eq!(front_node(&world, "state").as_deref(), Some("4"));
        net.close().await
    });
    run(&mut executor);
    assert_eq!(checked.take(), Some(Ok(())));
    assert_eq!(front_node(&world, "state").as_deref(), Some("6"));
    assert_eq!(world.grants(FRONT), []);
    assert_eq!(world.dangling_grants(), []);
    assert!(world.ports(FRONT).is_empty());
}

#[test]
fn a_backend_without_rx_copy_or_a_bad_mac_is_refused_cleanly() {
    let world = World::new();
    world.toolstack(DEVICE, &[("mac", MAC)]);
    let (front, back) = (world.domain(FRONT), world.domain(0));
    let wire = Rc::new(RefCell::new(Wire { no_rx_copy: true, ..Wire::default() }));
    let mut executor = Executor::new(&world);
    executor.spawn_background("netback", netback(back, DEVICE, wire, quiet_peer));
    let result = executor.spawn("netfront", async { Netfront::connect(&front, 0).await.map(|_| ()) });
    run(&mut executor);
    assert_eq!(result.take(), Some(Err(NetError::MissingFeature("feature-rx-copy"))));
    assert_eq!(world.grants(FRONT), []);

    for bad in
        ["01:16:3e:00:00:01", "00:16:3e:00:00", "00:16:3e:00:00:01:02", "00:16:3e:0g:00:01", "", "00:16:3e:100:0:1"]
    {
        world.xenstore_write(&format!("{FRONT_NODE}/mac"), bad.as_bytes()).unwrap();
        let result = world.block_on(async { Netfront::connect(&front, 0).await.map(|_| ()) }).unwrap();
        match result {
            Err(NetError::BadMac(text)) => assert_eq!(text, bad),
            Err(NetError::Xenbus(xenbus::Error::Xenstore(_))) if bad.is_empty() => {}
            other => panic!("{bad:?}: {other:?}"),
        }
    }
    assert_eq!(parse_mac(" 0:16:3e:a:b:c\n"), Ok([0, 0x16, 0x3e, 0xa, 0xb, 0xc]));
    assert_eq!(
        world
            .block_on(async {
                Netfront::connect_with(&front, 0, Config { rx_buffers: 0, tx_buffers: 1 }).await.map(|_| ())
            })
            .unwrap(),
        Err(NetError::BadConfig)
    );
}

#[test]
fn frames_of_every_edge_size_cross_both_ways() {
    let world = World::new();
    world.toolstack(DEVICE, &[("mac", MAC)]);
    let (front, back) = (world.domain(FRONT), world.domain(0));
    let sizes = [1, 2, 13, 14, 60, 64, 1000, 1499, 1513, 1514];
    let to_guest: Vec<Vec<u8>> = sizes.iter().enumerate().map(|(i, &len)| frame(i, len)).collect();
    let wire = Rc::new(RefCell::new(Wire::default()));
    wire.borrow_mut().to_guest.extend(to_guest.iter().cloned().map(ToGuest::Frame));
    let mut executor = Executor::new(&world);
    executor.spawn_background("netback", netback(back, DEVICE, wire.clone(), quiet_peer));
    let wire_in_test = wire.clone();
    let outcome = executor.spawn("netfront", async move {
        let mut net = Netfront::connect_with(&front, 0, SMALL).await.unwrap();
        let received = receive_frames(&mut net, sizes.len()).await;
        let from_guest: Vec<Vec<u8>> = sizes.iter().enumerate().map(|(i, &len)| frame(100 + i, len)).collect();
        send_frames(&mut net, &from_guest).await;
        assert_eq!(net.send(&[]), Err(NetError::FrameSize { len: 0 }));
        assert_eq!(net.send(&[0; MAX_FRAME_BYTES + 1]), Err(NetError::FrameSize { len: MAX_FRAME_BYTES + 1 }));
        // Frames the backend copies at an offset, up to the page's last byte.
        wire_in_test.borrow_mut().rx_offset = (PAGE_SIZE - MAX_FRAME_BYTES) as u16;
        wire_in_test.borrow_mut().to_guest.push_back(ToGuest::Frame(frame(7, MAX_FRAME_BYTES)));
        wire_in_test.borrow_mut().to_guest.push_back(ToGuest::Frame(frame(8, 1)));
        let at_end = receive_frames(&mut net, 2).await;
        assert_eq!(at_end, [frame(7, MAX_FRAME_BYTES), frame(8, 1)]);
        // Let the backend answer every tx request, then close.
        while net.stats().tx_packets < sizes.len() as u64 {
            net.wait(Duration::from_millis(10)).await.unwrap();
        }
        let stats = net.stats();
        net.close().await.unwrap();
        (received, from_guest, stats)
    });
    run(&mut executor);
    let (received, from_guest, stats) = outcome.take().unwrap();
    assert_eq!(received, to_guest);
    assert_eq!(wire.borrow().from_guest, from_guest);
    let bytes: usize = sizes.iter().sum();
    assert_eq!((stats.rx_packets, stats.tx_packets, stats.tx_bytes), (12, 10, bytes as u64));
    assert_eq!(stats.rx_bytes, (bytes + MAX_FRAME_BYTES + 1) as u64);
    assert_eq!((stats.bad_responses, stats.rx_dropped, stats.tx_errors, stats.tx_dropped), (0, 0, 0, 0));
    assert_eq!(world.grants(FRONT), []);
    assert_eq!(world.dangling_grants(), []);
}

#[test]
fn thousands_of_frames_refill_the_rx_ring_with_a_fixed_set_of_grants() {
    let world = World::new();
    world.toolstack(DEVICE, &[("mac", MAC)]);
    let (front, back) = (world.domain(FRONT), world.domain(0));
    const FRAMES: usize = 5000;
    let to_guest: Vec<Vec<u8>> = (0..FRAMES).map(|i| frame(i, 60 + i % 1455)).collect();
    let from_guest: Vec<Vec<u8>> = (0..FRAMES).map(|i| frame(i + FRAMES, 1 + i % 1514)).collect();
    let wire = Rc::new(RefCell::new(Wire::default()));
    wire.borrow_mut().to_guest.extend(to_guest.iter().cloned().map(ToGuest::Frame));
    let mut executor = Executor::new(&world);
    executor.spawn_background("netback", netback(back, DEVICE, wire.clone(), quiet_peer));
    let world_in_test = world.clone();
    let sent = from_guest.clone();
    let outcome = executor.spawn("netfront", async move {
        let mut net = Netfront::connect_with(&front, 0, SMALL).await.unwrap();
        let grants = world_in_test.grants(FRONT);
        let mut received = Vec::new();
        let mut next_send = 0;
        while received.len() < FRAMES || next_send < FRAMES {
            while next_send < FRAMES && net.send(&sent[next_send]).is_ok() {
                next_send += 1;
            }
            while let Some(frame) = net.receive().unwrap() {
                received.push(frame);
                if received.len() % 997 == 0 {
                    assert_eq!(world_in_test.grants(FRONT).len(), grants.len(), "grants stay fixed");
                    assert_eq!(net.live_grants(), expected_grants(SMALL));
                }
            }
            if received.len() < FRAMES || next_send < FRAMES {
                assert!(net.wait(Duration::from_secs(5)).await.unwrap().any(), "progress without timeouts");
            }
        }
        assert_eq!(
            world_in_test.grants(FRONT).iter().map(|g| g.grant).collect::<Vec<_>>(),
            grants.iter().map(|g| g.grant).collect::<Vec<_>>(),
            "the same grants, reused"
        );
        let stats = net.stats();
        net.close().await.unwrap();
        (received, stats)
    });
    run(&mut executor);
    let (received, stats) = outcome.take().unwrap();
    assert!(received == to_guest, "every frame arrived intact and in order");
    assert!(wire.borrow().from_guest == from_guest, "every frame left intact and in order");
    assert_eq!((stats.rx_packets, stats.bad_responses, stats.rx_dropped), (FRAMES as u64, 0, 0));
    assert!(stats.tx_packets >= FRAMES as u64 - u64::from(SMALL.tx_buffers));
    // Batching: far fewer kicks than frames.
    assert!(stats.notifications < (FRAMES / 2) as u64, "{stats:?}");
    assert!(world.now_ns() < 1_000_000_000, "events, not timeouts, moved the frames");
    assert_eq!(world.dangling_grants(), []);
    assert_eq!(world.grants(FRONT), []);
}

#[test]
fn bad_responses_are_dropped_and_counted_and_traffic_goes_on() {
    let world = World::new();
    world.toolstack(DEVICE, &[("mac", MAC)]);
    let (front, back) = (world.domain(FRONT), world.domain(0));
    let wire = Rc::new(RefCell::new(Wire::default()));
    let bad = |id, offset, flags, status| ToGuest::Response { id, offset, flags, status };
    wire.borrow_mut().to_guest.extend([
        ToGuest::Frame(frame(0, 100)),
        bad(Some(999), 0, 0, 60),                  // unknown id
        bad(Some(3), 0, 0, 60),                    // an id posted in another slot
        bad(None, 0, 0, 4097),                     // oversize
        bad(None, 4000, 0, 200),                   // runs off the page
        bad(None, 0xffff, 0, 1),                   // offset outside the page
        bad(None, 0, 0, 0),                        // empty
        bad(None, 0, 0, status::ERROR),            // error status: a drop
        bad(None, 0, 0, status::DROPPED),          // a drop
        bad(None, 0, rx_flags::MORE_DATA, 100),    // fragments we never asked for:
        bad(None, 0, rx_flags::MORE_DATA, 100),    //   one packet in three slots,
        bad(None, 0, 0, 100),                      //   dropped as one
        bad(None, 0, rx_flags::EXTRA_INFO, 60),    // a frame with two extra slots:
        ToGuest::Extra { flags: EXTRA_FLAG_MORE }, //   the extras are skipped
        ToGuest::Extra { flags: 0 },
        ToGuest::Frame(frame(1, 1514)),
    ]);
    wire.borrow_mut().tx_bad_ids = 2;
    let mut executor = Executor::new(&world);
    executor.spawn_background("netback", netback(back, DEVICE, wire.clone(), quiet_peer));
    let wire_in_test = wire.clone();
    let outcome = executor.spawn("netfront", async move {
        let mut net = Netfront::connect_with(&front, 0, SMALL).await.unwrap();
        let first = receive_frames(&mut net, 3).await;
        // Tx: two responses name ids never sent; those buffers stay in flight.
        let frames: Vec<Vec<u8>> = (0..40).map(|i| frame(i, 200)).collect();
        send_frames(&mut net, &frames).await;
        while wire_in_test.borrow().from_guest.len() < frames.len() {
            net.wait(Duration::from_millis(10)).await.unwrap();
        }
        net.wait(Duration::from_millis(10)).await.unwrap();
        let stats = net.stats();
        assert!(net.error().is_none());
        net.close().await.unwrap();
        (first, stats)
    });
    run(&mut executor);
    let (first, stats) = outcome.take().unwrap();
    assert_eq!(first[0], frame(0, 100));
    assert_eq!(first[1].len(), 60, "the frame before the extras");
    assert_eq!(first[2], frame(1, 1514), "the extra slots skipped, not delivered");
    assert_eq!(stats.bad_responses, 2 + 4 + 2, "{stats:?}");
    assert_eq!(stats.rx_dropped, 3, "{stats:?}");
    assert_eq!(stats.tx_packets, 38);
    assert_eq!(world.grants(FRONT), [], "buffers lost to bad ids are still ended at close");
    assert_eq!(world.dangling_grants(), []);
}

#[test]
fn backend_closing_mid_traffic_fails_sends_and_receives_and_ends_the_grants() {
    let world = World::new();
    world.toolstack(DEVICE, &[("mac", MAC)]);
    let (front, back) = (world.domain(FRONT), world.domain(0));
    let to_guest: Vec<Vec<u8>> = (0..3000).map(|i| frame(i, 64 + i % 1400)).collect();
    let wire = Rc::new(RefCell::new(Wire { close_after: Some(1000), ..Wire::default() }));
    wire.borrow_mut().to_guest.extend(to_guest.iter().cloned().map(ToGuest::Frame));
    let mut executor = Executor::new(&world);
    executor.spawn_background("netback", netback(back, DEVICE, wire.clone(), quiet_peer));
    let world_in_test = world.clone();
    let outcome = executor.spawn("netfront", async move {
        let mut net = Netfront::connect_with(&front, 0, SMALL).await.unwrap();
        let mut received = Vec::new();
        let mut index = 0;
        let error = loop {
            while net.send(&frame(index, 300)).is_ok() {
                index += 1;
            }
            match net.receive() {
                Ok(Some(frame)) => received.push(frame),
                Ok(None) => {
                    if let Err(e) = net.wait(Duration::from_secs(5)).await {
                        break e;
                    }
                }
                Err(e) => break e,
            }
        };
        let gone = NetError::BackendGone { state: Some(State::Closing) };
        assert_eq!(error, gone);
        assert_eq!(net.send(&frame(0, 60)), Err(gone.clone()));
        assert_eq!(net.receive(), Err(gone.clone()));
        assert_eq!(net.wait(Duration::from_secs(1)).await, Err(gone.clone()));
        assert_eq!(net.error(), Some(&gone));
        assert_eq!(net.live_grants(), 0, "the backend unmapped everything: all grants ended");
        assert_eq!(world_in_test.grants(FRONT), []);
        net.close().await.unwrap();
        received
    });
    run(&mut executor);
    let received = outcome.take().unwrap();
    assert!(received == to_guest[..1000], "frames delivered before the close still arrive");
    assert_eq!(front_node(&world, "state").as_deref(), Some("6"));
    assert_eq!(world.dangling_grants(), []);
    assert!(world.ports(FRONT).is_empty());
}

#[test]
fn a_vanished_backend_is_detected_and_its_mapped_rings_are_never_freed() {
    let world = World::new();
    world.toolstack(DEVICE, &[("mac", MAC)]);
    let (front, back) = (world.domain(FRONT), world.domain(0));
    let wire = Rc::new(RefCell::new(Wire::default()));
    let mut executor = Executor::new(&world);
    executor.spawn_background("netback", netback(back, DEVICE, wire.clone(), quiet_peer));
    let world_in_test = world.clone();
    let outcome = executor.spawn("netfront", async move {
        let mut net = Netfront::connect_with(&front, 0, SMALL).await.unwrap();
        net.send(&frame(1, 100)).unwrap();
        assert_eq!(net.wait(Duration::from_millis(100)).await, Ok(Ready::default()));
        world_in_test.xenstore_rm(BACK_NODE).unwrap();
        let error = net.wait(Duration::from_secs(5)).await;
        // The backend (crashed, say) still maps both rings: those grants stay.
        let live = net.live_grants();
        drop(net);
        (error, live)
    });
    run(&mut executor);
    let (error, live) = outcome.take().unwrap();
    assert_eq!(error, Err(NetError::BackendGone { state: None }));
    assert_eq!(live, 2);
    let left = world.grants(FRONT);
    assert_eq!(left.len(), 2);
    assert!(left.iter().all(|g| g.mappings == 1 && !g.page_dropped), "{left:?}");
    assert_eq!(world.dangling_grants(), []);
    assert_eq!(wire.borrow().from_guest, [frame(1, 100)]);
}

#[test]
fn a_corrupt_response_index_shuts_the_device_down_with_an_error() {
    let world = World::new();
    world.toolstack(DEVICE, &[("mac", MAC)]);
    let (front, back) = (world.domain(FRONT), world.domain(0));
    let wire = Rc::new(RefCell::new(Wire::default()));
    wire.borrow_mut().to_guest.push_back(ToGuest::Frame(frame(0, 80)));
    let mut executor = Executor::new(&world);
    executor.spawn_background("netback", netback(back, DEVICE, wire.clone(), quiet_peer));
    let wire_in_test = wire.clone();
    let outcome = executor.spawn("netfront", async move {
        let mut net = Netfront::connect_with(&front, 0, SMALL).await.unwrap();
        assert_eq!(receive_frames(&mut net, 1).await, [frame(0, 80)]);
        wire_in_test.borrow_mut().corrupt_rx_prod = true;
        let error = net.wait(Duration::from_secs(5)).await;
        let after = (net.send(&frame(1, 60)), net.receive(), net.live_grants());
        net.close().await.unwrap();
        (error, after)
    });
    run(&mut executor);
    let corrupt = NetError::CorruptRing("more responses than requests");
    let (error, after) = outcome.take().unwrap();
    assert_eq!(error, Err(corrupt.clone()));
    assert_eq!(after, (Err(corrupt.clone()), Err(corrupt), 2), "only the mapped rings stay granted");
    assert_eq!(world.grants(FRONT), [], "ended at close, once the backend unmapped");
    assert_eq!(world.dangling_grants(), []);
}

/// A plain in-memory Ethernet device for the peer's smoltcp interface.
#[derive(Default)]
struct MemoryDevice {
    rx: VecDeque<Vec<u8>>,
    tx: Vec<Vec<u8>>,
}

struct MemoryRx(Vec<u8>);
struct MemoryTx<'a>(&'a mut Vec<Vec<u8>>);

impl phy::RxToken for MemoryRx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl phy::TxToken for MemoryTx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut frame = vec![0; len];
        let result = f(&mut frame);
        self.0.push(frame);
        result
    }
}

impl phy::Device for MemoryDevice {
    type RxToken<'a> = MemoryRx;
    type TxToken<'a> = MemoryTx<'a>;
    fn receive(&mut self, _: Instant) -> Option<(MemoryRx, MemoryTx<'_>)> {
        let frame = self.rx.pop_front()?;
        Some((MemoryRx(frame), MemoryTx(&mut self.tx)))
    }
    fn transmit(&mut self, _: Instant) -> Option<MemoryTx<'_>> {
        Some(MemoryTx(&mut self.tx))
    }
    fn capabilities(&self) -> DeviceCapabilities {
        let mut capabilities = DeviceCapabilities::default();
        capabilities.medium = Medium::Ethernet;
        capabilities.max_transmission_unit = MAX_FRAME_BYTES;
        capabilities
    }
}

fn instant(world: &World) -> Instant {
    Instant::from_millis((world.now_ns() / 1_000_000) as i64)
}

/// How long smoltcp may sleep, kept within 1..=100 ms.
fn poll_delay(delay: Option<smoltcp::time::Duration>) -> Duration {
    let delay = delay.map_or(Duration::from_millis(100), |d| Duration::from_micros(d.total_micros()));
    delay.clamp(Duration::from_millis(1), Duration::from_millis(100))
}

fn tcp_socket() -> tcp::Socket<'static> {
    tcp::Socket::new(tcp::SocketBuffer::new(vec![0; 16 * 1024]), tcp::SocketBuffer::new(vec![0; 16 * 1024]))
}

/// The peer behind the backend: a smoltcp interface on 10.0.0.1 whose TCP port 7
/// echoes what it receives.
fn echo_peer(world: World) -> impl FnMut(&mut Wire) -> Duration {
    let mut device = MemoryDevice::default();
    let mac = EthernetAddress([0x02, 0, 0, 0, 0, 0x01]);
    let mut config = IfaceConfig::new(HardwareAddress::Ethernet(mac));
    config.random_seed = 7;
    let mut iface = Interface::new(config, &mut device, instant(&world));
    iface.update_ip_addrs(|addrs| addrs.push(IpCidr::new(IpAddress::v4(10, 0, 0, 1), 24)).unwrap());
    let mut sockets = SocketSet::new(vec![]);
    let server = sockets.add(tcp_socket());
    let mut echo: VecDeque<u8> = VecDeque::new();
    move |wire: &mut Wire| {
        device.rx.extend(wire.from_guest.drain(..));
        let now = instant(&world);
        iface.poll(now, &mut device, &mut sockets);
        let socket = sockets.get_mut::<tcp::Socket>(server);
        if !socket.is_open() {
            socket.listen(7).unwrap();
        }
        if socket.can_recv() {
            socket
                .recv(|data| {
                    echo.extend(data.iter());
                    (data.len(), ())
                })
                .unwrap();
        }
        while socket.can_send() && !echo.is_empty() {
            let (front, _) = echo.as_slices();
            let n = socket.send_slice(front).unwrap();
            echo.drain(..n);
            if n == 0 {
                break;
            }
        }
        if !socket.may_recv() && echo.is_empty() && socket.state() == tcp::State::CloseWait {
            socket.close();
        }
        iface.poll(now, &mut device, &mut sockets);
        wire.to_guest.extend(device.tx.drain(..).map(ToGuest::Frame));
        poll_delay(iface.poll_delay(now, &sockets))
    }
}

#[test]
fn smoltcp_over_netfront_exchanges_64_kib_over_tcp_with_a_peer_behind_the_backend() {
    let world = World::new();
    world.toolstack(DEVICE, &[("mac", MAC)]);
    let (front, back) = (world.domain(FRONT), world.domain(0));
    let wire = Rc::new(RefCell::new(Wire::default()));
    let mut executor = Executor::new(&world);
    executor.spawn_background("netback + peer", netback(back, DEVICE, wire.clone(), echo_peer(world.clone())));
    let world_in_test = world.clone();
    let data: Vec<u8> = (0..64 * 1024).map(|i| (i * 31 % 251) as u8).collect();
    let sent = data.clone();
    let outcome = executor.spawn("netfront + smoltcp", async move {
        let world = world_in_test;
        let mut net = Netfront::connect(&front, 0).await.unwrap();
        let mut config = IfaceConfig::new(net.hardware_address());
        config.random_seed = 42;
        let mut iface = Interface::new(config, &mut net, instant(&world));
        iface.update_ip_addrs(|addrs| addrs.push(IpCidr::new(IpAddress::v4(10, 0, 0, 2), 24)).unwrap());
        let mut sockets = SocketSet::new(vec![]);
        let client = sockets.add(tcp_socket());
        let remote = (IpAddress::v4(10, 0, 0, 1), 7);
        sockets.get_mut::<tcp::Socket>(client).connect(iface.context(), remote, 49152).unwrap();
        let (mut written, mut echoed) = (0, Vec::new());
        while echoed.len() < sent.len() {
            assert!(world.now_ns() < 60_000_000_000, "the exchange stalled");
            let now = instant(&world);
            iface.poll(now, &mut net, &mut sockets);
            let socket = sockets.get_mut::<tcp::Socket>(client);
            if socket.can_send() && written < sent.len() {
                written += socket.send_slice(&sent[written..]).unwrap();
            }
            if socket.can_recv() {
                socket
                    .recv(|data| {
                        echoed.extend_from_slice(data);
                        (data.len(), ())
                    })
                    .unwrap();
            }
            iface.poll(now, &mut net, &mut sockets);
            let delay = poll_delay(iface.poll_delay(now, &sockets));
            net.wait(delay).await.unwrap();
        }
        sockets.get_mut::<tcp::Socket>(client).close();
        let stats = net.stats();
        net.close().await.unwrap();
        (echoed, stats)
    });
    run(&mut executor);
    let (echoed, stats) = outcome.take().unwrap();
    assert!(echoed == data, "64 KiB went to the peer and came back intact");
    assert!(stats.rx_bytes > 64 * 1024 && stats.tx_bytes > 64 * 1024, "{stats:?}");
    assert_eq!((stats.bad_responses, stats.rx_dropped, stats.tx_errors, stats.tx_dropped), (0, 0, 0, 0));
    assert_eq!(world.grants(FRONT), []);
    assert_eq!(world.dangling_grants(), []);
}

#[test]
fn a_backend_that_never_connects_times_out_and_leaves_nothing_behind() {
    let world = World::new();
    world.toolstack(DEVICE, &[("mac", MAC)]);
    let front = world.domain(FRONT);
    world.xenstore_write(&format!("{BACK_NODE}/feature-rx-copy"), b"1").unwrap();
    world.xenstore_write(&format!("{BACK_NODE}/state"), b"2").unwrap();
    let result = world.block_on(async { Netfront::connect_with(&front, 0, SMALL).await.map(|_| ()) }).unwrap();
    let timeout = xenbus::Error::Timeout { waiting_for: State::Connected, last: Some(State::InitWait) };
    assert_eq!(result, Err(NetError::Xenbus(timeout)));
    assert!(world.now_ns() >= xenbus::BACKEND_WAIT.as_nanos() as u64, "bounded by the xenbus wait");
    assert_eq!(front_node(&world, "state").as_deref(), Some("5"));
    assert_eq!(world.grants(FRONT), []);
    assert_eq!(world.dangling_grants(), []);
    assert!(world.ports(FRONT).is_empty());
}
