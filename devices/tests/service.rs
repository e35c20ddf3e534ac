//! The control plane in the simulated Xen: dom0 connects as vchan-socket-proxy does,
//! once per QMP client, and talks QMP to the service.

use devices::service::{Config, serve};
use frontends::vchan::sim_client::{Client, connect};
use qmp::Timestamp;
use serde_json::{Value, json};
use std::time::Duration;
use xen_seams::sim::{Executor, SimXen, World};

const STUB: u16 = 7;
const QMP_PATH: &str = "device-model/5/qmp-vchan";

fn config() -> Config {
    Config {
        qmp_path: QMP_PATH.into(),
        ready_path: "device-model/5/state".into(),
        drives: Vec::new(),
        restore: false,
        save_console: false,
        vcpus: 2,
        lifetime: Some(Duration::from_secs(600)),
    }
}

async fn message(client: &Client<'_>) -> Value {
    let line = match client.read_until(b'\n').await {
        Ok(line) => line,
        Err(e) => return json!({ "client-error": format!("{e:?}") }),
    };
    assert!(line.ends_with(b"\r\n"), "{line:?}");
    serde_json::from_slice(&line).expect("JSON")
}

async fn execute(client: &Client<'_>, request: &str) -> Value {
    client.write_all(format!("{request}\r\n").as_bytes()).await.expect("sent");
    message(client).await
}

/// One vchan-socket-proxy connection: greeting, negotiation, then `requests`.
async fn session(dom0: &SimXen, requests: &[&str]) -> Vec<Value> {
    let client = connect(dom0, STUB, &format!("/local/domain/{STUB}/{QMP_PATH}")).await;
    let greeting = message(&client).await;
    assert_eq!(greeting["QMP"]["version"]["qemu"]["major"], json!(9), "{greeting}");
    assert_eq!(execute(&client, r#"{"execute":"qmp_capabilities","id":1}"#).await["return"], json!({}));
    let mut replies = Vec::new();
    for request in requests {
        replies.push(execute(&client, request).await);
    }
    client.close();
    replies
}

#[test]
fn each_connection_gets_a_greeting_and_quit_ends_the_service() {
    let world = World::new();
    let (stub, dom0) = (world.domain(STUB), world.domain(0));
    let mut executor = Executor::new(&world);
    let served =
        executor.spawn("service", async move { serve(&stub, &config(), || Timestamp::new(1_700_000_000, 0)).await });
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
        let client = connect(&dom0, STUB, &format!("/local/domain/{STUB}/{QMP_PATH}")).await;
        message(&client).await;
        client.write_all(b"{\"execute\": \"qmp_capab").await.expect("sent");
        client.close();
        replies.extend(session(&dom0, &[r#"{"execute":"quit","id":3}"#]).await);
        replies
    });
    let run = executor.run();
    assert_eq!(served.take(), Some(Ok(())));
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
fn without_quit_the_service_ends_at_its_lifetime_with_an_error() {
    let world = World::new();
    let stub = world.domain(STUB);
    let mut executor = Executor::new(&world);
    let served = executor.spawn("service", async move { serve(&stub, &config(), || Timestamp::new(0, 0)).await });
    executor.run().unwrap_or_else(|stuck| panic!("{stuck}"));
    assert_eq!(served.take(), Some(Err("no quit within 600 s".to_string())));
    assert!(world.now_ns() >= 600_000_000_000);
}
