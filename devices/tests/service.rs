//! The service in the simulated Xen: dom0 connects as vchan-socket-proxy does, once
//! per QMP client, and talks QMP to it. No client, however it misbehaves, ends the
//! device model: after each fault a new client gets its greeting and `query-status`.

use devices::service::{Config, ServiceError, serve};
use frontends::vchan::sim_client::{Client, connect};
use qmp::Timestamp;
use serde_json::{Value, json};
use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;
use xen_seams::sim::{Executor, MappedPage, SimXen, World};

const STUB: u16 = 7;
const QMP_PATH: &str = "device-model/5/qmp-vchan";
/// The client's (left) ring's producer index in the vchan page (io/libxenvchan.h).
const LEFT_PROD: usize = 4;

fn config() -> Config {
    Config {
        qmp_path: QMP_PATH.into(),
        ready_path: "device-model/5/state".into(),
        drives: Vec::new(),
        restore: false,
        save_console: false,
        vcpus: 2,
        guest: None,
        lifetime: Some(Duration::from_secs(600)),
    }
}

fn now() -> Timestamp {
    Timestamp::new(1_700_000_000, 0)
}

/// The stub domain, for as long as the test's tasks need it.
fn stub(world: &World) -> &'static SimXen {
    Box::leak(Box::new(world.domain(STUB)))
}

/// The next message, read a byte at a time so that nothing after its `\r\n` is taken.
async fn message(client: &Client<'_>) -> Value {
    let mut line = Vec::new();
    let mut byte = [0u8];
    while !line.ends_with(b"\n") {
        match client.read(&mut byte).await {
            Ok(_) => line.push(byte[0]),
            Err(e) => return json!({ "client-error": format!("{e:?}") }),
        }
    }
    assert!(line.ends_with(b"\r\n"), "{line:?}");
    serde_json::from_slice(&line).expect("JSON")
}

/// Sends a command and returns its reply (events before it are skipped).
async fn execute(client: &Client<'_>, request: &str) -> Value {
    client.write_all(format!("{request}\r\n").as_bytes()).await.expect("sent");
    loop {
        let message = message(client).await;
        if message.get("event").is_none() {
            return message;
        }
    }
}

async fn open(dom0: &SimXen) -> Client<'_> {
    let client = connect(dom0, STUB, &format!("/local/domain/{STUB}/{QMP_PATH}")).await;
    let greeting = message(&client).await;
    assert_eq!(greeting["QMP"]["version"]["qemu"]["major"], json!(9), "{greeting}");
    client
}

/// One vchan-socket-proxy connection: greeting, negotiation, then `requests`.
async fn session(dom0: &SimXen, requests: &[&str]) -> Vec<Value> {
    let client = open(dom0).await;
    assert_eq!(execute(&client, r#"{"execute":"qmp_capabilities","id":1}"#).await["return"], json!({}));
    let mut replies = Vec::new();
    for request in requests {
        replies.push(execute(&client, request).await);
    }
    client.close();
    replies
}

/// A new client gets its greeting and `running`.
async fn still_served(dom0: &SimXen) {
    let replies = session(dom0, &[r#"{"execute":"query-status","id":2}"#]).await;
    assert_eq!(replies[0]["return"], json!({ "running": true, "status": "running" }), "{}", replies[0]);
}

/// Runs the service and `dom0`'s script; the script ends with `quit`, and the service
/// must then end cleanly.
fn run_with(script: impl AsyncFnOnce(&SimXen) + 'static) {
    let world = World::new();
    let stub = stub(&world);
    let dom0 = world.domain(0);
    let mut executor = Executor::new(&world);
    let served = executor.spawn("service", async move { serve(stub, &config(), now).await });
    executor.spawn("dom0", async move {
        script(&dom0).await;
        let replies = session(&dom0, &[r#"{"execute":"quit","id":3}"#]).await;
        assert_eq!(replies[0], json!({ "return": {}, "id": 3 }));
    });
    let run = executor.run();
    run.unwrap_or_else(|stuck| panic!("{stuck}"));
    match served.take() {
        Some(Ok(())) => {}
        other => panic!("the service ended with {other:?}"),
    }
}

#[test]
fn each_connection_gets_a_greeting_and_quit_ends_the_service() {
    let world = World::new();
    let stub = stub(&world);
    let dom0 = world.domain(0);
    let mut executor = Executor::new(&world);
    let served = executor.spawn("service", async move { serve(stub, &config(), now).await });
    let watcher = world.clone();
    let replies = executor.spawn("dom0", async move {
        let mut replies = session(&dom0, &[r#"{"execute":"query-status","id":2}"#]).await;
        // The service said it is ready before the first client got in.
        assert_eq!(
            watcher.xenstore_read(&format!("/local/domain/{STUB}/device-model/5/state")),
            Some(b"running".to_vec())
        );
        // A malformed request gets an error reply; the connection carries on.
        replies.extend(session(&dom0, &[r#"{"execute": 42}"#, r#"{"execute":"query-cpus-fast","id":"x"}"#]).await);
        // A client that leaves mid-request: its half message does not reach the next.
        let client = open(&dom0).await;
        client.write_all(b"{\"execute\": \"qmp_capab").await.expect("sent");
        client.close();
        replies.extend(session(&dom0, &[r#"{"execute":"quit","id":3}"#]).await);
        replies
    });
    let run = executor.run();
    assert!(matches!(served.take(), Some(Ok(()))));
    run.unwrap_or_else(|stuck| panic!("{stuck}"));
    let replies = replies.take().unwrap();
    assert_eq!(replies[0]["return"], json!({ "running": true, "status": "running" }));
    assert_eq!(replies[1]["error"]["class"], json!("GenericError"), "{}", replies[1]);
    let cpus = replies[2]["return"].as_array().expect("query-cpus-fast");
    assert_eq!(replies[2]["id"], json!("x"));
    assert_eq!(cpus.len(), 2);
    assert_eq!(replies[3], json!({ "return": {}, "id": 3 }));
}

#[test]
fn a_client_that_stops_reading_is_dropped_and_the_next_one_served() {
    run_with(async |dom0| {
        let client = open(dom0).await;
        client.write_all(b"{\"execute\":\"qmp_capabilities\"}\r\n").await.expect("sent");
        // Replies pile up in the server's ring; the client never reads them. Once the
        // ring is full the server's write gives up after its limit and drops the
        // client's replies from then on, still taking what it sends: every one of a
        // thousand requests goes in, none blocks for good.
        let request = b"{\"execute\":\"query-commands\"}\r\n";
        for _ in 0..1000 {
            client.write_all(request).await.expect("the server keeps taking input");
        }
        // Then it leaves (vchan-socket-proxy closes when its unix client does).
        let unread = client.data_ready();
        assert!(unread > 0, "replies were waiting unread");
        client.close();
        still_served(dom0).await;
    });
}

#[test]
fn a_client_that_corrupts_its_ring_is_dropped_and_the_next_one_served() {
    run_with(async |dom0| {
        let client = open(dom0).await;
        // The client's producer claims far more than the ring holds.
        let page = client.page();
        xen_seams::SharedPage::write_u32(page, LEFT_PROD, 0x7000_0000);
        let _ = xen_seams::EventChannels::notify(dom0, client.port());
        client.wait().await;
        assert!(!client.is_open(), "the server hung up");
        client.close();
        still_served(dom0).await;
    });
}

#[test]
fn clients_that_leave_their_mappings_behind_cost_only_themselves() {
    run_with(async |dom0| {
        // Five clients leave without unmapping: the server has no page to offer a new
        // one until they do, but it keeps running.
        let kept: Rc<RefCell<Vec<MappedPage>>> = Rc::default();
        for _ in 0..5 {
            let client = open(dom0).await;
            kept.borrow_mut().extend(client.close_keeping_mappings());
        }
        // Meanwhile the server tries to offer a page, and must not give up.
        xen_seams::Clock::sleep(dom0, Duration::from_secs(5)).await;
        kept.borrow_mut().clear(); // the clients unmap at last
        still_served(dom0).await;
    });
}

#[test]
fn without_quit_the_service_ends_at_its_lifetime_with_an_error() {
    let world = World::new();
    let stub = stub(&world);
    let mut executor = Executor::new(&world);
    let served = executor.spawn("service", async move { serve(stub, &config(), now).await });
    executor.run().unwrap_or_else(|stuck| panic!("{stuck}"));
    match served.take() {
        Some(Err(ServiceError::Lifetime(600))) => {}
        other => panic!("{other:?}"),
    }
    assert!(world.now_ns() >= 600_000_000_000);
}

/// The save console (console 1).
const SAVE: xen_seams::sim::PvDevice =
    xen_seams::sim::PvDevice { kind: "console", devid: 1, frontend: STUB, backend: 0 };

/// `xen-save-devices-state` replies only once the state file is in dom0: with a save
/// console whose backend stops taking bytes partway, the reply is a GenericError that
/// says why (so `xl save` fails loudly instead of writing an image without device
/// state), and the service carries on.
#[test]
fn a_save_whose_console_stops_midway_fails_with_the_reason() {
    use frontends::console::sim::{Line, backend};
    let world = World::new();
    let stub = stub(&world);
    world.toolstack(SAVE, &[]);
    let line = Rc::new(RefCell::new(Line { consume_limit: Some(10), ..Line::default() }));
    let dom0 = world.domain(0);
    let mut config = config();
    config.save_console = true;
    let mut executor = Executor::new(&world);
    executor.spawn_background("console 1 backend", backend(world.domain(0), SAVE, line.clone()));
    let served = executor.spawn("service", async move { serve(stub, &config, now).await });
    let replies = executor.spawn("dom0", async move {
        let replies = session(
            &dom0,
            &[
                r#"{"execute":"stop","id":2}"#,
                r#"{"execute":"xen-save-devices-state","id":3,"arguments":{"filename":"/dev/fdset/1","live":false}}"#,
                r#"{"execute":"query-status","id":4}"#,
            ],
        )
        .await;
        session(&dom0, &[r#"{"execute":"quit","id":5}"#]).await;
        replies
    });
    executor.run().unwrap_or_else(|stuck| panic!("{stuck}"));
    assert!(matches!(served.take(), Some(Ok(()))));
    let replies = replies.take().unwrap();
    let error = &replies[1]["error"];
    assert_eq!(error["class"], "GenericError", "{}", replies[1]);
    let desc = error["desc"].as_str().unwrap();
    assert!(desc.contains("saving Xen device state failed") && desc.contains("console 1"), "{desc}");
    assert_eq!(line.borrow().from_guest.len(), 10, "the backend took 10 bytes and stopped");
    assert_eq!(replies[2]["return"]["status"], "paused");
}
