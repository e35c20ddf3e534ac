//! The server against a libxenvchan client written from init.c/io.c, in the sim.

use super::sim_client::{Client, ClientError, connect};
use super::*;
use alloc::rc::Rc;
use alloc::string::ToString;
use alloc::vec;
use core::cell::RefCell;
use xen_seams::sim::{Executor, PortState, SimXen, World};
use xen_seams::{Clock, EventChannels, SharedPage, Xenstore, XenstoreError};

/// Our stub domain, dom0's proxy, and the guest the stub domain serves.
const STUB: DomId = 7;
const DOM0: DomId = 0;
const PATH: &str = "device-model/5/qmp-vchan";
const ABSOLUTE: &str = "/local/domain/7/device-model/5/qmp-vchan";
const SECOND: u64 = 1_000_000_000;
const MIB: usize = 1 << 20;

fn world() -> (World, SimXen, SimXen) {
    let world = World::new();
    let (stub, dom0) = (world.domain(STUB), world.domain(DOM0));
    (world, stub, dom0)
}

fn node(world: &World, key: &str) -> Option<String> {
    world.xenstore_read(&format!("{ABSOLUTE}/{key}")).map(|v| String::from_utf8(v).unwrap())
}

/// Deterministic bytes that differ from one offset to the next.
fn pattern(len: usize, seed: u32) -> Vec<u8> {
    let mut state = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state as u8
        })
        .collect()
}

/// Everything the stub domain held is given back, and nothing is left dangling.
fn assert_all_released(world: &World) {
    assert_eq!(world.grants(STUB), [], "grants left");
    assert_eq!(world.dangling_grants(), [], "pages dropped while granted");
    assert_eq!(world.pages(STUB), [], "pages left");
    assert_eq!(world.ports(STUB), [], "ports left");
    assert_eq!(node(world, "ring-ref"), None, "nodes left");
}

fn run(executor: &mut Executor) {
    executor.run().unwrap_or_else(|stuck| panic!("{stuck}"));
}

#[test]
fn listen_sets_up_the_page_grant_port_and_nodes_as_libxenvchan_server_init() {
    let world = World::new();
    let (stub, client_dom, stranger) = (world.domain(STUB), world.domain(9), world.domain(10));
    let server = world.block_on(Server::listen(&stub, 9, PATH, Orders::DEFAULT)).unwrap().unwrap();
    assert_eq!(world.now_ns(), 0, "listen waits for nobody");
    let grants = world.grants(STUB);
    assert_eq!(grants.len(), 1, "both default rings live in the shared page");
    assert_eq!((grants[0].grantee, grants[0].readonly), (9, false));
    let ports = world.ports(STUB);
    assert_eq!(ports.len(), 1);
    assert_eq!(ports[0].state, PortState::Unbound { remote: 9 });
    assert_eq!(node(&world, "ring-ref"), Some(grants[0].grant.0.to_string()));
    assert_eq!(node(&world, "event-channel"), Some(ports[0].port.0.to_string()));
    // The client domain may read the nodes; nobody else may.
    let read =
        |xen: &SimXen, key: &str| world.block_on(xen.read_string(Tx::NONE, &format!("{ABSOLUTE}/{key}"))).unwrap();
    assert_eq!(read(&client_dom, "ring-ref"), Ok(grants[0].grant.0.to_string()));
    assert_eq!(read(&client_dom, "event-channel"), Ok(ports[0].port.0.to_string()));
    assert!(matches!(read(&stranger, "ring-ref"), Err(XenstoreError::Xs(_))));
    // The page as the client maps it.
    let page = client_dom.map_grant(STUB, grants[0].grant, true).unwrap();
    let mut header = [0xff; 24];
    page.read(0, &mut header);
    assert_eq!(header, [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 10, 0, 11, 0, 2, 1, 1, 0]);
    drop(page);
    world.block_on(server.shutdown()).unwrap().unwrap();
    assert_all_released(&world);
}

#[test]
fn orders_no_client_could_map_are_refused_before_anything_is_allocated() {
    let (world, stub, _dom0) = world();
    for (read, write) in [(10, 10), (11, 11), (9, 11), (10, 21), (0, 0), (20, 10), (10, 20)] {
        let orders = Orders { read, write };
        let result = world.block_on(Server::listen(&stub, DOM0, PATH, orders)).unwrap();
        assert_eq!(result.err(), Some(VchanError::BadOrders(orders)), "{read}/{write}");
    }
    assert_all_released(&world);
    for (read, write) in [(11, 10), (11, 20), (20, 11), (10, 19), (12, 12), (20, 20)] {
        assert_eq!(Orders { read, write }.check(), Ok(()), "{read}/{write}");
    }
}

/// The server echoes; the client writes 1 MiB in uneven chunks while it reads the echo
/// back, in one loop as vchan-socket-proxy's `data_loop` does.
fn echo_a_mebibyte(orders: Orders) {
    let (world, stub, dom0) = world();
    let sent = pattern(MIB, 1);
    let mut executor = Executor::new(&world);
    let served = executor.spawn("server", async {
        let mut server = Server::listen(&stub, DOM0, PATH, orders).await?;
        server.accept(Duration::from_secs(60)).await?;
        let mut buf = vec![0; 1500];
        let mut echoed = 0;
        loop {
            match server.read(&mut buf).await {
                Ok(n) => {
                    server.write_all(&buf[..n]).await?;
                    echoed += n;
                }
                Err(VchanError::Closed) => break,
                Err(e) => return Err(e),
            }
        }
        server.shutdown().await.map(|()| echoed)
    });
    let received = executor.spawn("client", async {
        let client = connect(&dom0, STUB, ABSOLUTE).await;
        let (mut at, mut received, mut chunk) = (0, Vec::new(), 1);
        let mut buf = vec![0; 3000];
        while received.len() < MIB {
            if at < MIB {
                chunk = (chunk * 7 + 13) % 2999 + 1; // 1..=2999 bytes, never aligned for long
                at += client.try_write(&sent[at..MIB.min(at + chunk)]).unwrap();
            }
            loop {
                match client.try_read(&mut buf).unwrap() {
                    0 => break,
                    n => received.extend_from_slice(&buf[..n]),
                }
            }
            if received.len() < MIB {
                client.wait().await;
            }
        }
        client.close();
        received
    });
    run(&mut executor);
    assert_eq!(served.take(), Some(Ok(MIB)));
    assert!(received.take().unwrap() == sent, "the echo differs from what was sent");
    assert_eq!(world.now_ns(), 0, "no wait ever ran into its timeout: no wakeup was lost");
    assert_all_released(&world);
}

#[test]
fn a_mebibyte_echoes_both_ways_through_the_in_page_rings() {
    echo_a_mebibyte(Orders::DEFAULT); // 1 KiB in, 2 KiB out: over 500 turns each way
}

#[test]
fn a_mebibyte_echoes_both_ways_through_granted_ring_pages() {
    echo_a_mebibyte(Orders { read: 13, write: 12 });
    echo_a_mebibyte(Orders { read: 11, write: 14 });
}

/// One side only writes, the other only reads: each waits on events of one kind
/// only, so a missing READ or WRITE event stalls the transfer.
#[test]
fn a_mebibyte_one_way_needs_no_event_but_the_requested_ones() {
    for to_server in [true, false] {
        let (world, stub, dom0) = world();
        let sent = pattern(MIB, 3);
        let mut executor = Executor::new(&world);
        let served = executor.spawn("server", async {
            let mut server = Server::listen(&stub, DOM0, PATH, Orders::DEFAULT).await?;
            server.accept(Duration::from_secs(60)).await?;
            let mut got = Vec::new();
            if to_server {
                let mut buf = vec![0; 700];
                while got.len() < MIB {
                    let n = server.read(&mut buf).await?;
                    got.extend_from_slice(&buf[..n]);
                }
            } else {
                for chunk in sent.chunks(5000) {
                    server.write_all(chunk).await?;
                }
            }
            assert_eq!(server.read(&mut [0; 1]).await, Err(VchanError::Closed));
            server.shutdown().await.map(|()| got)
        });
        let received = executor.spawn("client", async {
            let client = connect(&dom0, STUB, ABSOLUTE).await;
            let mut got = Vec::new();
            if to_server {
                client.write_all(&sent).await.unwrap();
            } else {
                let mut buf = vec![0; 900];
                while got.len() < MIB {
                    let n = client.read(&mut buf).await.unwrap();
                    got.extend_from_slice(&buf[..n]);
                }
            }
            client.close();
            got
        });
        run(&mut executor);
        let got = if to_server { served.take().unwrap().unwrap() } else { received.take().unwrap() };
        assert!(got == sent, "bytes differ (to_server: {to_server})");
        assert_eq!(world.now_ns(), 0, "no timeout ran out (to_server: {to_server})");
        assert_all_released(&world);
    }
}

#[test]
fn ring_pages_are_granted_writable_only_for_the_ring_the_client_writes() {
    let (world, stub, dom0) = world();
    let orders = Orders { read: 13, write: 12 };
    let _server = world.block_on(Server::listen(&stub, DOM0, PATH, orders)).unwrap().unwrap();
    let readonly: Vec<bool> = world.grants(STUB).iter().map(|g| g.readonly).collect();
    assert_eq!(readonly, [false, false, true, false], "2 read-ring pages, 1 write-ring page, then the shared page");
    let client = world.block_on(Client::init(&dom0, STUB, ABSOLUTE)).unwrap().unwrap();
    assert!(world.grants(STUB).iter().all(|g| g.mappings == 1), "the client mapped every page");
    client.close();
}

#[test]
fn notify_bits_ask_for_exactly_the_events_needed() {
    let (world, stub, dom0) = world();
    let mut server = world.block_on(Server::listen(&stub, DOM0, PATH, Orders::DEFAULT)).unwrap().unwrap();
    server.read_timeout = Duration::from_secs(1);
    server.write_timeout = Duration::from_secs(1);
    let client = world.block_on(Client::init(&dom0, STUB, ABSOLUTE)).unwrap().unwrap();
    world.block_on(server.accept(Duration::ZERO)).unwrap().unwrap();
    let byte = |offset| {
        let mut b = [0];
        client.page().read(offset, &mut b);
        b[0]
    };
    let events_to_client = || world.ports(DOM0)[0].notifications;
    let events_to_server = || world.ports(STUB)[0].notifications;
    assert_eq!(events_to_server(), 1, "the client's hello");
    assert_eq!((byte(CLI_NOTIFY), byte(SRV_NOTIFY)), (NOTIFY_WRITE, NOTIFY_WRITE), "as init.c leaves them");

    // Server to client: an event only when the client asked for one.
    assert_eq!(world.block_on(server.write(b"hello")).unwrap(), Ok(5));
    assert_eq!((events_to_client(), byte(SRV_NOTIFY)), (1, 0), "asked: one event, request consumed");
    assert_eq!(world.block_on(server.write(b" again")).unwrap(), Ok(6));
    assert_eq!(events_to_client(), 1, "not asked: no event");
    assert_eq!(client.data_ready(), 11);
    assert_eq!(world.block_on(server.write(b"!")).unwrap(), Ok(1));
    assert_eq!(events_to_client(), 2, "data_ready asked again");

    // Client to server, the same rules the other way round.
    assert_eq!(client.try_write(b"ping"), Ok(4));
    assert_eq!((events_to_server(), byte(CLI_NOTIFY)), (2, 0));
    assert_eq!(client.try_write(b"more"), Ok(4));
    assert_eq!(events_to_server(), 2);
    let mut buf = [0; 64];
    assert_eq!(world.block_on(server.read(&mut buf)).unwrap(), Ok(8));
    assert_eq!(byte(CLI_NOTIFY), 0, "data was there: no request");
    let start = world.now_ns();
    assert_eq!(world.block_on(server.read(&mut buf)).unwrap(), Err(VchanError::Timeout));
    assert_eq!(world.now_ns() - start, SECOND);
    assert_eq!(byte(CLI_NOTIFY), NOTIFY_WRITE, "an empty ring: the server asked to hear of data");
    assert_eq!(client.try_write(b"z"), Ok(1));
    assert_eq!(events_to_server(), 3);

    // Room: a full ring makes the server ask for READ, and the client's read answers.
    assert_eq!(client.try_read(&mut buf), Ok(12));
    let events_before = events_to_client();
    assert_eq!(world.block_on(server.write(&[7; 4096])).unwrap(), Ok(2048), "one ringful");
    assert_eq!(world.block_on(server.write(b"x")).unwrap(), Err(VchanError::Timeout));
    assert_eq!(byte(CLI_NOTIFY), NOTIFY_READ, "the client's write consumed the WRITE request");
    assert_eq!(client.try_read(&mut buf[..10]), Ok(10));
    assert_eq!((events_to_server(), byte(CLI_NOTIFY)), (4, 0), "room made: one event");
    assert_eq!(world.block_on(server.write(b"x")).unwrap(), Ok(1));
    assert!(events_to_client() > events_before);
    client.close();
    world.block_on(server.shutdown()).unwrap().unwrap();
    assert_all_released(&world);
}

#[test]
fn a_client_leaving_mid_message_ends_the_read_with_closed_and_the_next_one_gets_in() {
    let (world, stub, dom0) = world();
    let mut executor = Executor::new(&world);
    let log = Rc::new(RefCell::new(Vec::new()));
    let server_log = log.clone();
    let served = executor.spawn("server", async move {
        let mut server = Server::listen(&stub, DOM0, PATH, Orders::DEFAULT).await?;
        server.accept(Duration::from_secs(60)).await?;
        server.write_all(b"{\"QMP\": 1}\n").await?;
        let mut got = Vec::new();
        let mut buf = [0; 256];
        let end = loop {
            match server.read(&mut buf).await {
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) => break e,
            }
        };
        server_log.borrow_mut().push((got.len(), end, server.is_connected()));
        let refused = server.write(b"anyone there?").await;
        assert_eq!(refused, Err(VchanError::Closed));
        server.accept(Duration::from_secs(60)).await?;
        server.write_all(b"{\"QMP\": 2}\n").await?;
        assert_eq!(server.read(&mut buf).await, Err(VchanError::Closed));
        server.shutdown().await
    });
    executor.spawn("clients", async {
        let first = connect(&dom0, STUB, ABSOLUTE).await;
        assert_eq!(first.read_until(b'\n').await.unwrap(), b"{\"QMP\": 1}\n");
        let message = pattern(1000, 2);
        first.write_all(&message[..300]).await.unwrap();
        first.close(); // 700 bytes short
        let second = connect(&dom0, STUB, ABSOLUTE).await;
        assert_eq!(second.read_until(b'\n').await.unwrap(), b"{\"QMP\": 2}\n", "a fresh page, no leftovers");
        second.close();
    });
    run(&mut executor);
    assert_eq!(served.take(), Some(Ok(())));
    assert_eq!(log.borrow().as_slice(), [(300, VchanError::Closed, false)]);
    assert_eq!(world.now_ns(), 0, "nobody waited for a timeout");
    assert_all_released(&world);
}

#[test]
fn twenty_clients_in_a_row_each_get_a_fresh_greeting() {
    let (world, stub, dom0) = world();
    let mut executor = Executor::new(&world);
    let served = executor.spawn("server", async {
        let mut server = Server::listen(&stub, DOM0, PATH, Orders::DEFAULT).await?;
        for n in 0..20 {
            server.accept(Duration::from_secs(60)).await?;
            server.write_all(format!("{{\"QMP\": {{\"n\": {n}}}}}\n").as_bytes()).await?;
            let mut command = Vec::new();
            let mut buf = [0; 64];
            while !command.contains(&b'\n') {
                let len = server.read(&mut buf).await?;
                command.extend_from_slice(&buf[..len]);
            }
            assert_eq!(command, b"{\"execute\": \"qmp_capabilities\"}\n");
            // The reply, then an event the client leaves unread: it must not reach
            // the next client.
            server.write_all(b"{\"return\": {}}\n{\"event\": \"STALE\"}\n").await?;
            assert_eq!(server.read(&mut buf).await, Err(VchanError::Closed));
        }
        server.shutdown().await
    });
    let worlds = world.clone();
    executor.spawn("proxy", async move {
        for n in 0..20 {
            let client = connect(&dom0, STUB, ABSOLUTE).await;
            let greeting = client.read_until(b'\n').await.unwrap();
            assert_eq!(greeting, format!("{{\"QMP\": {{\"n\": {n}}}}}\n").as_bytes(), "client {n}");
            assert_eq!(node(&worlds, "ring-ref"), None, "a connected client's page is not on offer");
            assert!(worlds.grants(STUB).len() <= 2, "at most the last page waits for its unmap");
            client.write_all(b"{\"execute\": \"qmp_capabilities\"}\n").await.unwrap();
            let reply = client.read_until(b'\n').await.unwrap();
            assert!(reply.starts_with(b"{\"return\": {}}\n"));
            client.close();
        }
    });
    run(&mut executor);
    assert_eq!(served.take(), Some(Ok(())));
    assert_eq!(world.now_ns(), 0);
    assert_all_released(&world);
}

#[test]
fn a_client_that_comes_and_goes_before_accept_gets_a_fresh_page_for_the_next() {
    let (world, stub, dom0) = world();
    let mut server = world.block_on(Server::listen(&stub, DOM0, PATH, Orders::DEFAULT)).unwrap().unwrap();
    let first_ref = node(&world, "ring-ref");
    world.block_on(Client::init(&dom0, STUB, ABSOLUTE)).unwrap().unwrap().close();
    let mut executor = Executor::new(&world);
    let accepted = executor.spawn("server", async {
        server.accept(Duration::from_secs(60)).await?;
        server.write_all(b"hi").await
    });
    executor.spawn("client", async {
        let client = connect(&dom0, STUB, ABSOLUTE).await;
        assert_eq!(client.read_until(b'i').await.unwrap(), b"hi");
        client.close();
    });
    run(&mut executor);
    drop(executor);
    assert_eq!(accepted.take(), Some(Ok(())));
    assert_eq!(world.grants(STUB).len(), 1, "the first page was retired and its grant ended");
    assert_ne!(first_ref, None);
    world.block_on(server.shutdown()).unwrap().unwrap();
    assert_all_released(&world);
}

#[test]
fn indexes_beyond_the_ring_are_an_error_not_a_panic() {
    let (world, stub, dom0) = world();
    let mut server = world.block_on(Server::listen(&stub, DOM0, PATH, Orders::DEFAULT)).unwrap().unwrap();
    let mut buf = [0; 64];

    // Scribbling over the server's own index, the orders and cli_live changes nothing.
    let client = world.block_on(Client::init(&dom0, STUB, ABSOLUTE)).unwrap().unwrap();
    world.block_on(server.accept(Duration::ZERO)).unwrap().unwrap();
    client.write_all_now(b"0123456789");
    let page = client.page();
    page.write_u32(LEFT_CONS, 999);
    page.write(LEFT_ORDER, &[20, 0, 20, 0]);
    page.write(CLI_LIVE, &[77]);
    assert_eq!(world.block_on(server.read(&mut buf)).unwrap(), Ok(10));
    assert_eq!(&buf[..10], b"0123456789");
    assert!(server.is_connected());

    // The client's prod 5000 bytes ahead of our cons.
    page.write_u32(LEFT_PROD, 10 + 5000);
    let _ = dom0.notify(client.port());
    let corrupt = VchanError::CorruptRing { side: RingSide::Read, used: 5000, size: 1024 };
    assert_eq!(world.block_on(server.read(&mut buf)).unwrap(), Err(corrupt));
    assert!(!client.is_open(), "the server hung up");
    assert_eq!(world.block_on(server.read(&mut buf)).unwrap(), Err(VchanError::Closed));
    assert_eq!(world.block_on(server.write(b"x")).unwrap(), Err(VchanError::Closed));
    client.close();

    // The client's cons ahead of our prod.
    let kept = RefCell::new(Vec::new());
    let mut executor = Executor::new(&world);
    let result = executor.spawn("server", async {
        server.accept(Duration::from_secs(60)).await?;
        server.write(b"hi").await?;
        let mut buf = [0; 8];
        assert_eq!(server.read(&mut buf).await, Ok(2));
        server.write(b"there").await
    });
    executor.spawn("client", async {
        let client = connect(&dom0, STUB, ABSOLUTE).await;
        assert_eq!(client.read_until(b'i').await.unwrap(), b"hi");
        client.page().write_u32(RIGHT_CONS, 4000);
        client.write_all(b"ok").await.unwrap();
        client.wait().await; // the hang-up
        assert!(!client.is_open());
        kept.borrow_mut().extend(client.close_keeping_mappings()); // and never unmaps
    });
    run(&mut executor);
    drop(executor);
    let used = 2u32.wrapping_sub(4000);
    assert_eq!(result.take(), Some(Err(VchanError::CorruptRing { side: RingSide::Write, used, size: 2048 })));
    assert_eq!(world.block_on(server.shutdown()).unwrap(), Err(VchanError::StillMapped { pages: 1 }));
    assert_eq!(world.dangling_grants(), [], "the mapped page was leaked, not freed");
}

#[test]
fn a_client_that_never_unmaps_keeps_its_page_aside_until_it_does() {
    let (world, stub, dom0) = world();
    let mut server = world.block_on(Server::listen(&stub, DOM0, PATH, Orders::DEFAULT)).unwrap().unwrap();
    let connect_and_leave = |server: &mut Server<SimXen>| {
        // A zero-limit accept retires the last page and publishes a fresh one.
        assert_eq!(world.block_on(server.accept(Duration::ZERO)).unwrap(), Err(VchanError::NoClient));
        let client = world.block_on(Client::init(&dom0, STUB, ABSOLUTE)).unwrap().unwrap();
        world.block_on(server.accept(Duration::ZERO)).unwrap().unwrap();
        let kept = client.close_keeping_mappings();
        let mut buf = [0; 8];
        assert_eq!(world.block_on(server.read(&mut buf)).unwrap(), Err(VchanError::Closed));
        kept
    };
    let mut kept = Vec::new();
    for _ in 0..5 {
        kept.push(connect_and_leave(&mut server));
    }
    let refused = world.block_on(server.accept(Duration::ZERO)).unwrap();
    assert_eq!(refused, Err(VchanError::StalePages { pages: 5 }));
    assert_eq!(world.grants(STUB).len(), 5, "every mapped page is kept, still granted");
    assert_eq!(world.dangling_grants(), []);
    kept.clear(); // the clients unmap at last
    assert_eq!(world.block_on(server.accept(Duration::ZERO)).unwrap(), Err(VchanError::NoClient));
    assert_eq!(world.grants(STUB).len(), 1, "reaped; only the fresh page is granted");
    world.block_on(server.shutdown()).unwrap().unwrap();
    assert_all_released(&world);
}

#[test]
fn shutdown_waits_a_bounded_time_for_the_client_to_unmap() {
    let (world, stub, dom0) = world();
    let mut server =
        world.block_on(Server::listen(&stub, DOM0, PATH, Orders { read: 12, write: 11 })).unwrap().unwrap();
    let client = world.block_on(Client::init(&dom0, STUB, ABSOLUTE)).unwrap().unwrap();
    world.block_on(server.accept(Duration::ZERO)).unwrap().unwrap();
    let mut executor = Executor::new(&world);
    let result = executor.spawn("server", server.shutdown());
    executor.spawn("client", async {
        dom0.sleep(Duration::from_millis(300)).await;
        assert!(!client.is_open(), "the server hung up at once");
        client.close();
    });
    run(&mut executor);
    assert_eq!(result.take(), Some(Ok(())));
    assert!(world.now_ns() < SECOND / 2, "ended soon after the unmap");
    assert_all_released(&world);
}

#[test]
fn accept_gives_up_at_its_limit_and_a_later_client_still_gets_in() {
    let (world, stub, dom0) = world();
    let mut server = world.block_on(Server::listen(&stub, DOM0, PATH, Orders::DEFAULT)).unwrap().unwrap();
    assert_eq!(world.block_on(server.accept(Duration::from_secs(5))).unwrap(), Err(VchanError::NoClient));
    assert_eq!(world.now_ns(), 5 * SECOND);
    assert!(node(&world, "ring-ref").is_some(), "still on offer");
    let mut buf = [0; 8];
    assert_eq!(world.block_on(server.read(&mut buf)).unwrap(), Err(VchanError::NotConnected));
    let client = world.block_on(Client::init(&dom0, STUB, ABSOLUTE)).unwrap().unwrap();
    world.block_on(server.accept(Duration::ZERO)).unwrap().unwrap();
    assert!(server.is_connected());
    client.close();
    assert!(!server.is_connected());
    world.block_on(server.shutdown()).unwrap().unwrap();
    assert_all_released(&world);
}

#[test]
fn hanging_up_is_seen_by_the_client() {
    let (world, stub, dom0) = world();
    let mut server = world.block_on(Server::listen(&stub, DOM0, PATH, Orders::DEFAULT)).unwrap().unwrap();
    let client = world.block_on(Client::init(&dom0, STUB, ABSOLUTE)).unwrap().unwrap();
    world.block_on(server.accept(Duration::ZERO)).unwrap().unwrap();
    world.block_on(server.write_all(b"bye\n")).unwrap().unwrap();
    let events = world.ports(DOM0)[0].notifications;
    server.disconnect();
    assert_eq!(world.ports(DOM0)[0].notifications, events + 1, "an event tells the client");
    let mut buf = [0; 8];
    assert_eq!(world.block_on(client.read(&mut buf)).unwrap(), Ok(4), "what was written before stays readable");
    assert_eq!(world.block_on(client.read(&mut buf)).unwrap(), Err(ClientError::Closed));
    assert_eq!(world.block_on(server.read(&mut buf)).unwrap(), Err(VchanError::Closed));
    client.close();
    world.block_on(server.shutdown()).unwrap().unwrap();
    assert_all_released(&world);
}

#[test]
fn a_client_that_stops_reading_makes_write_time_out() {
    let (world, stub, dom0) = world();
    let mut server = world.block_on(Server::listen(&stub, DOM0, PATH, Orders::DEFAULT)).unwrap().unwrap();
    let client = world.block_on(Client::init(&dom0, STUB, ABSOLUTE)).unwrap().unwrap();
    world.block_on(server.accept(Duration::ZERO)).unwrap().unwrap();
    let result = world.block_on(server.write_all(&[1; 5000])).unwrap();
    assert_eq!(result, Err(VchanError::Timeout));
    assert_eq!(world.now_ns(), WRITE_WAIT.as_secs() * SECOND);
    assert_eq!(client.data_ready(), 2048, "one ringful went out");
    client.close();
    world.block_on(server.shutdown()).unwrap().unwrap();
    assert_all_released(&world);
}

#[test]
fn dropping_the_server_hangs_up_and_frees_what_is_not_mapped() {
    let (world, stub, dom0) = world();
    let server = world.block_on(Server::listen(&stub, DOM0, PATH, Orders { read: 12, write: 13 })).unwrap().unwrap();
    let client = world.block_on(Client::init(&dom0, STUB, ABSOLUTE)).unwrap().unwrap();
    drop(server);
    assert!(!client.is_open());
    assert_eq!(world.grants(STUB).len(), 4, "the client still maps the page and 3 ring pages");
    assert_eq!(world.dangling_grants(), [], "kept, not freed");
    assert_eq!(world.ports(STUB), []);
}

impl Client<'_> {
    /// Writes what fits now, for tests that drive the client by hand.
    fn write_all_now(&self, data: &[u8]) {
        assert_eq!(self.try_write(data), Ok(data.len()));
    }
}
