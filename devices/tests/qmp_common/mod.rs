//! A QMP client for the tests: it talks in bytes to a session over the device model's
//! [`Vm`], reads the replies back, and plays the service's part for slow work (the
//! state file's write to a console goes into [`Client::consoles`]).
#![allow(dead_code)]

use std::collections::BTreeMap;

use devices::block::PvDiskInfo;
use devices::vm::Vm;
use devices::vm::fuzz::test_vm;
use qmp::{Session, SlowEffect, Timestamp, VersionInfo};
use serde_json::Value;

/// libxl's first QMP id on every connection (0x786c7100, "xlq\0"; libxl_qmp.c).
pub const LIBXL_FIRST_ID: i64 = 0x786c7100;

pub struct Client {
    pub vm: Vm,
    pub session: Session,
    pub now: Timestamp,
    /// what was written to each PV console (state files)
    pub consoles: BTreeMap<u32, Vec<u8>>,
    /// console writes fail with this reason
    pub fail_console_write: Option<String>,
}

/// What one command produced: events first (as QEMU sends them), then the reply.
#[derive(Debug)]
pub struct Exchange {
    pub events: Vec<Value>,
    pub reply: Value,
}

impl Exchange {
    /// The `return` member; panics (failing the test) on an error reply.
    pub fn ok(&self) -> &Value {
        self.reply.get("return").unwrap_or_else(|| panic!("expected a return, got {}", self.reply))
    }

    /// `(class, desc)` of an error reply.
    pub fn error(&self) -> (&str, &str) {
        let error = self.reply.get("error").unwrap_or_else(|| panic!("expected an error, got {}", self.reply));
        (error["class"].as_str().unwrap(), error["desc"].as_str().unwrap())
    }

    /// The `tray-open` values of the DEVICE_TRAY_MOVED events, in order.
    pub fn tray_moves(&self) -> Vec<bool> {
        self.events
            .iter()
            .filter(|event| event["event"] == "DEVICE_TRAY_MOVED")
            .map(|event| event["data"]["tray-open"].as_bool().unwrap())
            .collect()
    }

    pub fn event_names(&self) -> Vec<&str> {
        self.events.iter().map(|event| event["event"].as_str().unwrap()).collect()
    }
}

/// Splits output into its `\r\n`-terminated JSON lines.
pub fn lines(output: &[u8]) -> Vec<Value> {
    let text = String::from_utf8_lossy(output);
    assert!(output.is_empty() || output.ends_with(b"\r\n"), "no \\r\\n at the end: {text:?}");
    output
        .split(|&byte| byte == b'\n')
        .filter(|line| !line.is_empty())
        .map(|line| {
            let line = line.strip_suffix(b"\r").expect("every line ends with \\r\\n");
            let text = String::from_utf8_lossy(line);
            serde_json::from_slice(line).unwrap_or_else(|error| panic!("{error}: {text}"))
        })
        .collect()
}

/// A command line as libxl writes it: execute, id, then arguments, no spaces, `\r\n`.
pub fn libxl_command(execute: &str, id: i64, arguments: Option<Value>) -> String {
    match arguments {
        None => format!("{{\"execute\":\"{execute}\",\"id\":{id}}}\r\n"),
        Some(arguments) => format!("{{\"execute\":\"{execute}\",\"id\":{id},\"arguments\":{arguments}}}\r\n"),
    }
}

/// Carries out the slow work `session` waits for, if any, and completes it (what the
/// service's QMP task does between reading and writing): state files go to `consoles`,
/// a `stop` has no disk I/O to wait for.
pub fn run_effects(
    session: &mut Session,
    vm: &mut Vm,
    consoles: &mut BTreeMap<u32, Vec<u8>>,
    fail_console_write: Option<&str>,
    now: Timestamp,
) {
    while let Some(effect) = session.take_effect() {
        let result = match effect {
            SlowEffect::WriteStateFile { console, data } => match fail_console_write {
                Some(reason) => Err(reason.to_string()),
                None => {
                    consoles.entry(console).or_default().extend_from_slice(&data);
                    Ok(())
                }
            },
            // No disk I/O runs here.
            SlowEffect::Quiesce => Ok(()),
        };
        session.complete(vm, result, now);
    }
}

impl Client {
    /// A client of the VM with hda and hdc ([`test_vm`]); the greeting is read.
    pub fn new() -> Client {
        Client::with_vm(test_vm())
    }

    pub fn with_vm(mut vm: Vm) -> Client {
        let session = Session::open(&mut vm, &VersionInfo::default());
        let mut client = Client {
            vm,
            session,
            now: Timestamp::new(1_700_000_000, 0),
            consoles: BTreeMap::new(),
            fail_console_write: None,
        };
        let greeting = client.read();
        assert_eq!(greeting.len(), 1);
        assert!(greeting[0].get("QMP").is_some());
        client
    }

    /// A client that has negotiated capabilities.
    pub fn negotiated() -> Client {
        let mut client = Client::new();
        client.negotiate();
        client
    }

    /// A new connection to the same VM (as vchan-socket-proxy makes for each libxl
    /// operation); returns the greeting.
    pub fn reconnect(&mut self) -> Value {
        self.session = Session::open(&mut self.vm, &VersionInfo::default());
        let mut greeting = self.read();
        assert_eq!(greeting.len(), 1);
        greeting.remove(0)
    }

    pub fn negotiate(&mut self) {
        let exchange = self.command("qmp_capabilities", None);
        assert_eq!(exchange.ok(), &serde_json::json!({}));
    }

    /// Moves the clock on by a millisecond per call, so events carry distinct stamps.
    fn tick(&mut self) -> Timestamp {
        self.now.microseconds += 1000;
        self.now
    }

    /// Sends raw bytes and returns every line the session answered.
    pub fn send(&mut self, bytes: &[u8]) -> Vec<Value> {
        let now = self.tick();
        self.session.feed(&mut self.vm, bytes, now);
        let fail = self.fail_console_write.as_deref();
        run_effects(&mut self.session, &mut self.vm, &mut self.consoles, fail, now);
        self.read()
    }

    pub fn read(&mut self) -> Vec<Value> {
        lines(&self.session.take_output())
    }

    /// Sends raw bytes that should produce exactly one reply (after any events).
    pub fn exchange(&mut self, bytes: &[u8]) -> Exchange {
        let mut lines = self.send(bytes);
        let text = String::from_utf8_lossy(bytes);
        let reply = lines.pop().unwrap_or_else(|| panic!("no reply to {text}"));
        assert!(reply.get("event").is_none(), "the last line is an event: {reply}");
        for line in &lines {
            assert!(line.get("event").is_some(), "more than one reply: {lines:?} then {reply}");
        }
        Exchange { events: lines, reply }
    }

    /// Sends `{"execute":..., "arguments":...}` without an id.
    pub fn command(&mut self, execute: &str, arguments: Option<Value>) -> Exchange {
        let request = match arguments {
            None => serde_json::json!({ "execute": execute }),
            Some(arguments) => serde_json::json!({ "execute": execute, "arguments": arguments }),
        };
        self.exchange(request.to_string().as_bytes())
    }

    /// `query-block`'s entry for device `ide-<devid>`.
    pub fn block_info(&mut self, device: &str) -> Value {
        let exchange = self.command("query-block", None);
        exchange
            .ok()
            .as_array()
            .unwrap()
            .iter()
            .find(|info| info["device"] == device)
            .cloned()
            .unwrap_or_else(|| panic!("no {device} in query-block"))
    }

    /// The fdset whose entry has opaque `stub-devid:<devid>`, found as libxl does.
    pub fn find_stub_fdset(query_fdsets: &Value, devid: u32) -> Option<i64> {
        let needle = format!("stub-devid:{devid}");
        for fdset in query_fdsets.as_array().expect("query-fdsets returns an array") {
            let id = fdset["fdset-id"].as_i64().expect("fdset-id is an integer");
            for fd in fdset["fds"].as_array().expect("fds is an array") {
                assert!(fd["fd"].is_i64(), "fd is an integer");
                if fd.get("opaque").and_then(Value::as_str) == Some(needle.as_str()) {
                    return Some(id);
                }
            }
        }
        None
    }

    /// Connects a PV disk through the VM's hook.
    pub fn connect_pv_disk(&mut self, devid: u32, read_only: bool, size_bytes: u64) -> i64 {
        self.vm.pv_disk_connected(devid, PvDiskInfo { read_only, size_bytes })
    }

    /// Delivers the events hooks caused (as the service does when the guest moved a
    /// tray) and returns what the session wrote.
    pub fn deliver_events(&mut self) -> Vec<Value> {
        self.session.deliver_events(&mut self.vm);
        self.read()
    }
}
