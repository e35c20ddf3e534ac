//! Command dispatch over a recording [`Monitor`]: each command's arguments reach the
//! monitor exactly as parsed (defaults included), bad arguments never reach it, and
//! what the monitor returns (values, errors, events, slow work) reaches the client as
//! it is. The device model's own semantics (trays, fdsets, run state) are tested with
//! the real monitor, devices' `Vm` (devices/tests/qmp_*.rs).

use std::collections::VecDeque;

use qmp::qapi::{BlockDeviceInfo, BlockInfo, BlockdevCacheInfo, FdsetFdInfo, FdsetInfo, ImageInfo};
use qmp::{
    DriveRef, ErrorClass, Event, Monitor, QmpError, ReadOnlyMode, RunState, Session, SlowEffect, TimedEvent, Timestamp,
    VersionInfo,
};
use serde_json::{Value, json};

/// What the session asked of the monitor.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Call {
    Stop,
    Cont,
    Quit,
    Eject { drive: String, by_id: bool, force: bool },
    OpenTray { drive: String, by_id: bool, force: bool },
    CloseTray { drive: String, by_id: bool },
    ChangeMedium { drive: String, by_id: bool, filename: String, format: Option<String>, mode: ReadOnlyMode },
    RemoveFd { fdset_id: i64, fd: Option<i64> },
    DirtyLog(bool),
    StartSave { filename: String, live: bool },
    CompleteSave(Result<(), String>),
    LoadState(String),
}

/// A monitor that records every call and answers what the test set up.
#[derive(Default)]
struct Recorder {
    calls: Vec<Call>,
    run_state: Option<RunState>,
    vcpus: u32,
    /// every block command fails with this
    block_error: Option<QmpError>,
    events: VecDeque<TimedEvent>,
}

fn drive_parts(drive: DriveRef<'_>) -> (String, bool) {
    match drive {
        DriveRef::Id(name) => (name.to_string(), true),
        DriveRef::Device(name) => (name.to_string(), false),
    }
}

impl Recorder {
    fn block_result(&self) -> Result<(), QmpError> {
        self.block_error.clone().map_or(Ok(()), Err)
    }
}

impl Monitor for Recorder {
    fn run_state(&self) -> RunState {
        self.run_state.unwrap_or(RunState::Running)
    }
    fn stop(&mut self, now: Timestamp) {
        self.calls.push(Call::Stop);
        self.events.push_back(TimedEvent { event: Event::Stop, timestamp: now });
    }
    fn cont(&mut self, _now: Timestamp) {
        self.calls.push(Call::Cont);
    }
    fn quit(&mut self) {
        self.calls.push(Call::Quit);
    }
    fn vcpus(&self) -> u32 {
        self.vcpus
    }
    fn query_block(&self) -> Vec<BlockInfo> {
        let image = ImageInfo { filename: "/dev/fdset/0".into(), format: "host_device", virtual_size: 4096 };
        let cache = BlockdevCacheInfo { writeback: true, direct: false, no_flush: false };
        let inserted = BlockDeviceInfo {
            file: "/dev/fdset/0".into(),
            ro: true,
            drv: "host_device",
            backing_file_depth: 0,
            encrypted: false,
            detect_zeroes: "off",
            bps: 0,
            bps_rd: 0,
            bps_wr: 0,
            iops: 0,
            iops_rd: 0,
            iops_wr: 0,
            image,
            write_threshold: 0,
            cache,
        };
        vec![
            BlockInfo {
                device: "ide-5632".into(),
                qdev: Some("ide-5632".into()),
                kind: "unknown",
                removable: true,
                locked: false,
                inserted: Some(inserted),
                tray_open: Some(false),
                io_status: "ok",
            },
            BlockInfo {
                device: "ide0-hd0".into(),
                qdev: None,
                kind: "unknown",
                removable: false,
                locked: false,
                inserted: None,
                tray_open: None,
                io_status: "ok",
            },
        ]
    }
    fn eject(&mut self, drive: DriveRef<'_>, force: bool, _now: Timestamp) -> Result<(), QmpError> {
        let (drive, by_id) = drive_parts(drive);
        self.calls.push(Call::Eject { drive, by_id, force });
        self.block_result()
    }
    fn open_tray(&mut self, drive: DriveRef<'_>, force: bool, _now: Timestamp) -> Result<(), QmpError> {
        let (drive, by_id) = drive_parts(drive);
        self.calls.push(Call::OpenTray { drive, by_id, force });
        self.block_result()
    }
    fn close_tray(&mut self, drive: DriveRef<'_>, _now: Timestamp) -> Result<(), QmpError> {
        let (drive, by_id) = drive_parts(drive);
        self.calls.push(Call::CloseTray { drive, by_id });
        self.block_result()
    }
    fn change_medium(
        &mut self,
        drive: DriveRef<'_>,
        filename: &str,
        format: Option<&str>,
        mode: ReadOnlyMode,
        _now: Timestamp,
    ) -> Result<(), QmpError> {
        let (drive, by_id) = drive_parts(drive);
        let (filename, format) = (filename.to_string(), format.map(str::to_string));
        self.calls.push(Call::ChangeMedium { drive, by_id, filename, format, mode });
        self.block_result()
    }
    fn remove_fd(&mut self, fdset_id: i64, fd: Option<i64>) -> Result<(), QmpError> {
        self.calls.push(Call::RemoveFd { fdset_id, fd });
        self.block_result()
    }
    fn query_fdsets(&self) -> Vec<FdsetInfo<'_>> {
        vec![
            FdsetInfo { fdset_id: 1, fds: vec![FdsetFdInfo { fd: 3, opaque: None }] },
            FdsetInfo { fdset_id: 0, fds: vec![FdsetFdInfo { fd: 4, opaque: Some("stub-devid:5632") }] },
        ]
    }
    fn set_global_dirty_log(&mut self, enable: bool) {
        self.calls.push(Call::DirtyLog(enable));
    }
    fn start_save(&mut self, filename: &str, live: bool, _now: Timestamp) -> Result<SlowEffect, QmpError> {
        self.calls.push(Call::StartSave { filename: filename.to_string(), live });
        Ok(SlowEffect::WriteStateFile { console: 1, data: b"state".to_vec() })
    }
    fn complete_save(&mut self, result: Result<(), String>, _now: Timestamp) -> Result<(), QmpError> {
        self.calls.push(Call::CompleteSave(result.clone()));
        result.map_err(|reason| QmpError::generic(format!("save: {reason}")))
    }
    fn load_state(&mut self, filename: &str) -> Result<(), QmpError> {
        self.calls.push(Call::LoadState(filename.to_string()));
        Ok(())
    }
    fn take_events(&mut self) -> VecDeque<TimedEvent> {
        std::mem::take(&mut self.events)
    }
}

const NOW: Timestamp = Timestamp { seconds: 1_700_000_000, microseconds: 5 };

/// A negotiated session over `monitor`.
fn negotiated(monitor: &mut Recorder) -> Session {
    let mut session = Session::open(monitor, &VersionInfo::default());
    session.feed(monitor, b"{\"execute\":\"qmp_capabilities\"}", NOW);
    session.take_output();
    session
}

/// The `\r\n`-terminated lines a session wrote.
fn lines(output: &[u8]) -> Vec<Value> {
    assert!(output.is_empty() || output.ends_with(b"\r\n"), "{}", String::from_utf8_lossy(output));
    output.split(|&b| b == b'\n').filter(|l| !l.is_empty()).map(|l| serde_json::from_slice(l).unwrap()).collect()
}

/// Runs one command and returns its last output line (the reply).
fn run(monitor: &mut Recorder, session: &mut Session, execute: &str, arguments: Value) -> Value {
    let request = json!({ "execute": execute, "arguments": arguments });
    session.feed(monitor, request.to_string().as_bytes(), NOW);
    complete_quiesce(monitor, session);
    lines(&session.take_output()).pop().expect("a reply")
}

/// What the service does for a `stop` once no disk I/O is in flight.
fn complete_quiesce(monitor: &mut Recorder, session: &mut Session) {
    if let Some(effect) = session.take_effect() {
        assert_eq!(effect, SlowEffect::Quiesce);
        session.complete(monitor, Ok(()), NOW);
    }
}

#[test]
fn arguments_reach_the_monitor_as_parsed() {
    let cases: Vec<(&str, Value, Call)> = vec![
        ("eject", json!({ "id": "ide-5632" }), Call::Eject { drive: "ide-5632".into(), by_id: true, force: false }),
        (
            "eject",
            json!({ "device": "ide-5632", "force": true }),
            Call::Eject { drive: "ide-5632".into(), by_id: false, force: true },
        ),
        ("blockdev-open-tray", json!({ "id": "cd" }), Call::OpenTray { drive: "cd".into(), by_id: true, force: false }),
        (
            "blockdev-open-tray",
            json!({ "device": "cd", "force": true }),
            Call::OpenTray { drive: "cd".into(), by_id: false, force: true },
        ),
        ("blockdev-close-tray", json!({ "device": "cd" }), Call::CloseTray { drive: "cd".into(), by_id: false }),
        (
            "blockdev-change-medium",
            json!({ "id": "cd", "filename": "/dev/fdset/2" }),
            Call::ChangeMedium {
                drive: "cd".into(),
                by_id: true,
                filename: "/dev/fdset/2".into(),
                format: None,
                mode: ReadOnlyMode::Retain,
            },
        ),
        ("remove-fd", json!({ "fdset-id": 3 }), Call::RemoveFd { fdset_id: 3, fd: None }),
        ("remove-fd", json!({ "fdset-id": 0, "fd": 4 }), Call::RemoveFd { fdset_id: 0, fd: Some(4) }),
        ("xen-set-global-dirty-log", json!({ "enable": true }), Call::DirtyLog(true)),
        ("xen-set-global-dirty-log", json!({ "enable": false }), Call::DirtyLog(false)),
        ("xen-load-devices-state", json!({ "filename": "/dev/fdset/2" }), Call::LoadState("/dev/fdset/2".into())),
        ("stop", json!({}), Call::Stop),
        ("cont", json!({}), Call::Cont),
    ];
    for (execute, arguments, call) in cases {
        let mut monitor = Recorder::default();
        let mut session = negotiated(&mut monitor);
        let reply = run(&mut monitor, &mut session, execute, arguments.clone());
        assert_eq!(reply["return"], json!({}), "{execute} {arguments}: {reply}");
        assert_eq!(monitor.calls, [call], "{execute} {arguments}");
    }
    // every read-only-mode, with a format
    for (name, mode) in [
        ("retain", ReadOnlyMode::Retain),
        ("read-only", ReadOnlyMode::ReadOnly),
        ("read-write", ReadOnlyMode::ReadWrite),
    ] {
        let mut monitor = Recorder::default();
        let mut session = negotiated(&mut monitor);
        let arguments =
            json!({ "device": "ide-5632", "filename": "/dev/xvdc", "format": "host_device", "read-only-mode": name });
        run(&mut monitor, &mut session, "blockdev-change-medium", arguments);
        let expected = Call::ChangeMedium {
            drive: "ide-5632".into(),
            by_id: false,
            filename: "/dev/xvdc".into(),
            format: Some("host_device".into()),
            mode,
        };
        assert_eq!(monitor.calls, [expected]);
    }
}

#[test]
fn the_save_gets_live_as_sent_and_true_when_absent() {
    for (arguments, live) in [
        (json!({ "filename": "/dev/fdset/1", "live": false }), false),
        (json!({ "filename": "/dev/fdset/1", "live": true }), true),
        (json!({ "filename": "/dev/fdset/1" }), true),
    ] {
        let mut monitor = Recorder::default();
        let mut session = negotiated(&mut monitor);
        let request = json!({ "execute": "xen-save-devices-state", "arguments": arguments, "id": 3 });
        session.feed(&mut monitor, request.to_string().as_bytes(), NOW);
        assert!(session.is_waiting());
        assert_eq!(monitor.calls, [Call::StartSave { filename: "/dev/fdset/1".into(), live }]);
        let effect = session.take_effect().expect("the write is handed out");
        assert_eq!(effect, SlowEffect::WriteStateFile { console: 1, data: b"state".to_vec() });
        session.complete(&mut monitor, Ok(()), NOW);
        assert_eq!(monitor.calls.last(), Some(&Call::CompleteSave(Ok(()))));
        assert_eq!(lines(&session.take_output()), [json!({ "return": {}, "id": 3 })]);
    }
}

#[test]
fn a_failed_save_write_reaches_the_monitor_and_its_error_the_client() {
    let mut monitor = Recorder::default();
    let mut session = negotiated(&mut monitor);
    session.feed(&mut monitor, br#"{"execute":"xen-save-devices-state","arguments":{"filename":"x"},"id":1}"#, NOW);
    assert!(session.take_effect().is_some());
    session.complete(&mut monitor, Err("console 1: gone".into()), NOW);
    assert_eq!(monitor.calls.last(), Some(&Call::CompleteSave(Err("console 1: gone".into()))));
    let reply = lines(&session.take_output()).pop().unwrap();
    assert_eq!(reply, json!({ "error": { "class": "GenericError", "desc": "save: console 1: gone" }, "id": 1 }));
}

#[test]
fn argument_errors_never_reach_the_monitor() {
    for (execute, arguments, desc) in [
        ("eject", json!({}), "Need exactly one of 'device' and 'id'"),
        ("eject", json!({ "id": "a", "device": "b" }), "Need exactly one of 'device' and 'id'"),
        ("eject", json!({ "id": "a", "force": 1 }), "Invalid parameter type for 'force', expected: boolean"),
        ("eject", json!({ "id": "a", "forced": true }), "Parameter 'forced' is unexpected"),
        ("blockdev-open-tray", json!({ "id": "a", "extra": 1 }), "Parameter 'extra' is unexpected"),
        ("blockdev-close-tray", json!({ "id": 7 }), "Invalid parameter type for 'id', expected: string"),
        ("blockdev-change-medium", json!({ "id": "a" }), "Parameter 'filename' is missing"),
        (
            "blockdev-change-medium",
            json!({ "id": "a", "filename": "f", "read-only-mode": "sideways" }),
            "Parameter 'read-only-mode' does not accept value 'sideways'",
        ),
        ("remove-fd", json!({ "fdset-id": "0" }), "Invalid parameter type for 'fdset-id', expected: integer"),
        ("xen-set-global-dirty-log", json!({}), "Parameter 'enable' is missing"),
        ("xen-save-devices-state", json!({}), "Parameter 'filename' is missing"),
        (
            "xen-save-devices-state",
            json!({ "filename": "f", "live": 0 }),
            "Invalid parameter type for 'live', expected: boolean",
        ),
        ("xen-load-devices-state", json!({ "filename": 1 }), "Invalid parameter type for 'filename', expected: string"),
        ("stop", json!({ "now": true }), "Parameter 'now' is unexpected"),
        ("quit", json!({ "now": true }), "Parameter 'now' is unexpected"),
    ] {
        let mut monitor = Recorder::default();
        let mut session = negotiated(&mut monitor);
        let reply = run(&mut monitor, &mut session, execute, arguments.clone());
        assert_eq!(reply["error"], json!({ "class": "GenericError", "desc": desc }), "{execute} {arguments}");
        assert!(monitor.calls.is_empty(), "{execute} {arguments}: {:?}", monitor.calls);
        assert!(!session.is_waiting() && !session.is_closed());
    }
}

#[test]
fn monitor_errors_keep_their_class_and_wording() {
    let mut monitor = Recorder {
        block_error: Some(QmpError::new(ErrorClass::DeviceNotFound, "Device 'x' not found")),
        ..Recorder::default()
    };
    let mut session = negotiated(&mut monitor);
    let reply = run(&mut monitor, &mut session, "eject", json!({ "id": "x" }));
    assert_eq!(reply["error"], json!({ "class": "DeviceNotFound", "desc": "Device 'x' not found" }));
}

#[test]
fn query_replies_are_the_monitors_in_qemus_shape() {
    let mut monitor = Recorder { run_state: Some(RunState::Paused), vcpus: 3, ..Recorder::default() };
    let mut session = negotiated(&mut monitor);
    let status = run(&mut monitor, &mut session, "query-status", json!({}));
    assert_eq!(status["return"], json!({ "running": false, "status": "paused" }));
    let cpus = run(&mut monitor, &mut session, "query-cpus-fast", json!({}));
    let indexes: Vec<i64> =
        cpus["return"].as_array().unwrap().iter().map(|c| c["cpu-index"].as_i64().unwrap()).collect();
    assert_eq!(indexes, [0, 1, 2]);
    assert_eq!(cpus["return"][2]["qom-path"], "/machine/unattached/device[2]");
    // query-block and query-fdsets: member names and values, and absent members left out.
    let block = run(&mut monitor, &mut session, "query-block", json!({}));
    let inserted = json!({
        "file": "/dev/fdset/0", "ro": true, "drv": "host_device", "backing_file_depth": 0, "encrypted": false,
        "detect_zeroes": "off", "bps": 0, "bps_rd": 0, "bps_wr": 0, "iops": 0, "iops_rd": 0, "iops_wr": 0,
        "image": { "filename": "/dev/fdset/0", "format": "host_device", "virtual-size": 4096 },
        "write_threshold": 0, "cache": { "writeback": true, "direct": false, "no-flush": false },
    });
    assert_eq!(
        block["return"],
        json!([
            {
                "device": "ide-5632", "qdev": "ide-5632", "type": "unknown", "removable": true, "locked": false,
                "inserted": inserted, "tray_open": false, "io-status": "ok",
            },
            { "device": "ide0-hd0", "type": "unknown", "removable": false, "locked": false, "io-status": "ok" },
        ])
    );
    let fdsets = run(&mut monitor, &mut session, "query-fdsets", json!({}));
    assert_eq!(
        fdsets["return"],
        json!([
            { "fdset-id": 1, "fds": [{ "fd": 3 }] },
            { "fdset-id": 0, "fds": [{ "fd": 4, "opaque": "stub-devid:5632" }] },
        ])
    );
    assert!(monitor.calls.is_empty(), "queries change nothing: {:?}", monitor.calls);
}

#[test]
fn events_the_monitor_queues_come_before_the_reply_and_only_once_negotiated() {
    let mut monitor = Recorder::default();
    monitor.events.push_back(TimedEvent { event: Event::Resume, timestamp: NOW });
    // Events from before the connection are dropped when it opens.
    let mut session = Session::open(&mut monitor, &VersionInfo::default());
    assert!(monitor.events.is_empty());
    session.take_output();
    // Before negotiation, events are dropped too.
    monitor.events.push_back(TimedEvent { event: Event::Resume, timestamp: NOW });
    session.deliver_events(&mut monitor);
    assert!(session.take_output().is_empty());
    session.feed(&mut monitor, b"{\"execute\":\"qmp_capabilities\"}", NOW);
    session.take_output();
    let out = lines(&{
        session.feed(&mut monitor, b"{\"execute\":\"stop\",\"id\":9}", NOW);
        complete_quiesce(&mut monitor, &mut session);
        session.take_output()
    });
    assert_eq!(
        out,
        [
            json!({ "event": "STOP", "timestamp": { "seconds": 1_700_000_000, "microseconds": 5 } }),
            json!({ "return": {}, "id": 9 }),
        ]
    );
}

#[test]
fn quit_closes_the_session_only_when_it_succeeds() {
    let mut monitor = Recorder::default();
    let mut session = negotiated(&mut monitor);
    run(&mut monitor, &mut session, "quit", json!({ "bogus": 1 }));
    assert!(!session.is_closed());
    session.feed(&mut monitor, b"{\"execute\":\"quit\",\"id\":1}{\"execute\":\"stop\",\"id\":2}", NOW);
    assert_eq!(lines(&session.take_output()), [json!({ "return": {}, "id": 1 })]);
    assert!(session.is_closed());
    assert_eq!(monitor.calls, [Call::Quit], "nothing after quit is run");
}

#[test]
fn query_version_reports_what_the_greeting_announced() {
    let mut monitor = Recorder::default();
    let version = VersionInfo { package: "test-package".into(), ..VersionInfo::default() };
    let mut session = Session::open(&mut monitor, &version);
    let greeting = lines(&session.take_output()).remove(0);
    session.feed(&mut monitor, b"{\"execute\":\"qmp_capabilities\"}{\"execute\":\"query-version\"}", NOW);
    let reply = lines(&session.take_output()).pop().unwrap();
    assert_eq!(reply["return"], greeting["QMP"]["version"]);
    assert_eq!(reply["return"]["package"], "test-package");
}

/// `stop` pauses at once (STOP goes out) but replies only when the caller says the
/// devices' I/O in flight has finished; a quiesce that failed is the reply's error.
#[test]
fn the_stop_reply_waits_for_the_io_in_flight() {
    let mut monitor = Recorder::default();
    let mut session = negotiated(&mut monitor);
    session.feed(&mut monitor, b"{\"execute\":\"stop\",\"id\":4}", NOW);
    assert_eq!(monitor.calls, [Call::Stop], "paused at once");
    let out = lines(&session.take_output());
    assert_eq!(out.iter().map(|m| m["event"].clone()).collect::<Vec<_>>(), [json!("STOP")], "no reply yet: {out:?}");
    assert!(session.is_waiting());
    assert_eq!(session.take_effect(), Some(SlowEffect::Quiesce));
    session.complete(&mut monitor, Ok(()), NOW);
    assert_eq!(lines(&session.take_output()), [json!({ "return": {}, "id": 4 })]);

    session.feed(&mut monitor, b"{\"execute\":\"stop\",\"id\":5}", NOW);
    session.take_output();
    assert_eq!(session.take_effect(), Some(SlowEffect::Quiesce));
    session.complete(&mut monitor, Err("disk requests still in flight after 35 s".into()), NOW);
    let reply = lines(&session.take_output()).pop().expect("a reply");
    assert_eq!(reply["id"], json!(5));
    assert_eq!(reply["error"]["class"], json!("GenericError"));
    assert_eq!(reply["error"]["desc"], json!("disk requests still in flight after 35 s"));
}
