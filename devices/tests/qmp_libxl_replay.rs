//! Replays of the QMP conversations libxl 4.20 has with a stub domain, byte for byte as
//! libxl writes them (libxl_qmp.c qmp_prepare_cmd: `{"execute":..,"id":..,"arguments":..}`
//! then `\r\n`, ids from 0x786c7100 on each connection), checked the way libxl reads the
//! replies (cut at `\r\n`, `id` an integer equal to the one sent, fdsets found by
//! opaque `stub-devid:<devid>`).
//!
//! cd-insert and cd-eject follow libxl_disk.c (libxl_cdrom_insert and its callbacks),
//! the save follows libxl_dom_save.c and libxl_qmp.c (libxl__qmp_suspend_save).

mod qmp_common;
use qmp_common as common;

use common::{Client, LIBXL_FIRST_ID, libxl_command};
use devices::state_file;
use devices::vm::fuzz::{HDC, test_vm};
use devices::vm::{EjectRequest, Vm, VmConfig};
use qmp::{RunState, Session, VersionInfo};
use serde_json::{Value, json};

/// One libxl connection: sends commands with libxl's ids and checks each reply's id.
struct Libxl<'a> {
    client: &'a mut Client,
    next_id: i64,
}

impl<'a> Libxl<'a> {
    /// Connects (a fresh greeting), checks the version libxl reads from it, negotiates.
    fn connect(client: &'a mut Client) -> Libxl<'a> {
        let greeting = client.reconnect();
        let qemu = &greeting["QMP"]["version"]["qemu"];
        let part = |name: &str| qemu[name].as_i64().unwrap();
        let version = (part("major"), part("minor"), part("micro"));
        // libxl switches to `id` at 2.8 and sends `live` from 2.11.
        assert!(version >= (2, 11, 0), "{version:?}");
        assert_eq!(greeting["QMP"]["capabilities"], json!([]));
        let mut libxl = Libxl { client, next_id: LIBXL_FIRST_ID };
        assert_eq!(libxl.send("qmp_capabilities", None).ok(), &json!({}));
        libxl
    }

    fn send(&mut self, execute: &str, arguments: Option<Value>) -> common::Exchange {
        let id = self.next_id;
        self.next_id += 1;
        let exchange = self.client.exchange(libxl_command(execute, id, arguments).as_bytes());
        assert_eq!(exchange.reply["id"].as_i64(), Some(id), "{}", exchange.reply);
        exchange
    }

    /// libxl's query_fdsets_find_fdset.
    fn find_fdset(&mut self, devid: u32) -> Option<i64> {
        let exchange = self.send("query-fdsets", None);
        Client::find_stub_fdset(exchange.ok(), devid)
    }
}

#[test]
fn greeting_is_qemus_shape_and_ends_with_crlf() {
    let mut vm = test_vm();
    let mut session = Session::open(&mut vm, &VersionInfo::default());
    let greeting = String::from_utf8(session.take_output()).unwrap();
    assert_eq!(
        greeting,
        concat!(
            r#"{"QMP":{"version":{"qemu":{"micro":0,"minor":2,"major":9},"package":"rust-stubdom "#,
            env!("CARGO_PKG_VERSION"),
            "\"},\"capabilities\":[]}}\r\n"
        )
    );
}

#[test]
fn replies_are_byte_exact_for_libxl() {
    let mut client = Client::new();
    let now = client.now;
    let (session, vm) = (&mut client.session, &mut client.vm);
    session.feed(vm, b"{\"execute\":\"qmp_capabilities\",\"id\":2020372736}\r\n", now);
    assert_eq!(session.take_output(), b"{\"return\":{},\"id\":2020372736}\r\n");
    session.feed(vm, b"{\"execute\":\"query-version\",\"id\":2020372737}\r\n", now);
    let reply = String::from_utf8(session.take_output()).unwrap();
    assert!(reply.starts_with(r#"{"return":{"#), "{reply}");
    assert!(reply.ends_with("},\"id\":2020372737}\r\n"), "{reply}");
    let reply: Value = serde_json::from_str(reply.trim_end()).unwrap();
    assert_eq!(reply["return"]["qemu"], json!({ "major": 9, "minor": 2, "micro": 0 }));
}

#[test]
fn cd_insert_as_libxl_4_20_does_it() {
    let mut client = Client::new();
    let mut libxl = Libxl::connect(&mut client);

    // 1. query-version (to learn the version), then eject by id.
    let version = libxl.send("query-version", None);
    assert_eq!(version.ok()["qemu"]["major"], 9);
    let eject = libxl.send("eject", Some(json!({ "id": "ide-5632" })));
    assert_eq!(eject.ok(), &json!({}));
    assert_eq!(eject.events.len(), 1);
    let event = &eject.events[0];
    assert_eq!(event["event"], "DEVICE_TRAY_MOVED");
    assert_eq!(event["data"], json!({ "device": "ide-5632", "id": "ide-5632", "tray-open": true }));
    assert!(event["timestamp"]["seconds"].is_i64() && event["timestamp"]["microseconds"].is_i64());

    // 2. query-fdsets; the old disk's fdset is removed.
    let old = libxl.find_fdset(HDC).expect("hdc's PV disk is in an fdset");
    assert_eq!(libxl.send("remove-fd", Some(json!({ "fdset-id": old }))).ok(), &json!({}));
    assert_eq!(libxl.find_fdset(HDC), None);

    // 3. dom0 detaches the old PV disk and attaches the new one with the same devid.
    assert!(libxl.client.vm.pv_disk_disconnected(HDC));

    // 4. libxl polls query-fdsets every 200 ms until the stub domain has added the disk.
    assert_eq!(libxl.find_fdset(HDC), None);
    libxl.client.connect_pv_disk(HDC, true, 700 << 20);
    let new = libxl.find_fdset(HDC).expect("the new PV disk is in a new fdset");

    // 5. blockdev-change-medium by fdset, as host_device.
    let filename = format!("/dev/fdset/{new}");
    let change = libxl.send(
        "blockdev-change-medium",
        Some(json!({ "id": "ide-5632", "filename": filename, "format": "host_device" })),
    );
    assert_eq!(change.ok(), &json!({}));
    assert_eq!(change.tray_moves(), [false]);

    let info = client.block_info("ide-5632");
    assert_eq!(info["tray_open"], false);
    assert_eq!(info["removable"], true);
    assert_eq!(info["inserted"]["file"], filename.as_str());
    assert_eq!(info["inserted"]["drv"], "host_device");
    assert_eq!(info["inserted"]["ro"], true);
    assert_eq!(info["inserted"]["image"]["virtual-size"], 700u64 << 20);
    assert_eq!(client.vm.block().drive(HDC).unwrap().medium().unwrap().pv_devid, HDC);
}

#[test]
fn cd_eject_as_libxl_4_20_does_it() {
    // libxl's cd-eject is cd-insert of an empty disk: the stub domain gets an empty
    // zero-size PV disk with the same devid, and libxl still polls query-fdsets until it
    // appears (libxl_disk.c: cdrom_insert_stubdom_disk_add_cb); only the
    // blockdev-change-medium is skipped.
    let mut client = Client::new();
    let mut libxl = Libxl::connect(&mut client);
    libxl.send("query-version", None);
    assert_eq!(libxl.send("eject", Some(json!({ "id": "ide-5632" }))).tray_moves(), [true]);
    let old = libxl.find_fdset(HDC).unwrap();
    libxl.send("remove-fd", Some(json!({ "fdset-id": old }))).ok();
    libxl.client.vm.pv_disk_disconnected(HDC);
    libxl.client.connect_pv_disk(HDC, true, 0);
    assert!(libxl.find_fdset(HDC).is_some());

    let info = client.block_info("ide-5632");
    assert_eq!(info["tray_open"], true);
    assert!(info.get("inserted").is_none());
}

#[test]
fn cd_insert_when_the_guest_locked_the_tray() {
    let mut client = Client::new();
    client.vm.guest_lock_tray(HDC, true).unwrap();

    // libxl's eject fails and libxl gives up on this cd-insert.
    let mut libxl = Libxl::connect(&mut client);
    libxl.send("query-version", None);
    let eject = libxl.send("eject", Some(json!({ "id": "ide-5632" })));
    assert_eq!(
        eject.error(),
        (
            "GenericError",
            "Device 'ide-5632' is locked and force was not specified, wait for tray to open and try again"
        )
    );
    assert!(eject.events.is_empty());
    // The guest was asked to eject; it unlocks and opens the tray (an event to whoever
    // is connected).
    assert_eq!(client.vm.take_eject_requests(), [EjectRequest { devid: HDC, force: false }]);
    client.vm.guest_lock_tray(HDC, false).unwrap();
    client.vm.guest_move_tray(HDC, true, client.now).unwrap();
    client.session.deliver_events(&mut client.vm);
    let events = client.read();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["data"]["tray-open"], true);

    // The retried cd-insert goes through: the tray is open already, so no event until it
    // closes on the new medium.
    let mut libxl = Libxl::connect(&mut client);
    libxl.send("query-version", None);
    let eject = libxl.send("eject", Some(json!({ "id": "ide-5632" })));
    assert_eq!(eject.ok(), &json!({}));
    assert!(eject.events.is_empty());
    let old = libxl.find_fdset(HDC).unwrap();
    libxl.send("remove-fd", Some(json!({ "fdset-id": old }))).ok();
    libxl.client.vm.pv_disk_disconnected(HDC);
    libxl.client.connect_pv_disk(HDC, true, 1 << 20);
    let new = libxl.find_fdset(HDC).unwrap();
    let change = libxl.send(
        "blockdev-change-medium",
        Some(json!({ "id": "ide-5632", "filename": format!("/dev/fdset/{new}"), "format": "host_device" })),
    );
    assert_eq!(change.tray_moves(), [false]);
}

#[test]
fn save_as_libxl_4_20_does_it() {
    let mut client = Client::new();
    // xc_domain_save turns QEMU's log-dirty mode on (its own connection)...
    let mut libxl = Libxl::connect(&mut client);
    assert_eq!(libxl.send("xen-set-global-dirty-log", Some(json!({ "enable": true }))).ok(), &json!({}));
    assert!(libxl.client.vm.dirty_log());

    // ...then, with the guest suspended, libxl__qmp_suspend_save: stop, and save to
    // fdset 1 (the stub domain's console 1) with `live` as QEMU >= 2.11 takes it.
    let mut libxl = Libxl::connect(&mut client);
    let stop = libxl.send("stop", None);
    assert_eq!(stop.ok(), &json!({}));
    assert_eq!(stop.event_names(), ["STOP"]);
    assert!(stop.events[0].get("data").is_none(), "STOP has no data");
    assert_eq!(libxl.client.vm.run_state(), RunState::Paused);
    assert!(!libxl.client.vm.running_signal().is_on(), "the vCPUs' requests wait");
    assert!(libxl.client.consoles.is_empty());
    let save = libxl.send("xen-save-devices-state", Some(json!({ "live": false, "filename": "/dev/fdset/1" })));
    assert_eq!(save.ok(), &json!({}));
    assert!(save.events.is_empty(), "already paused: no STOP/RESUME");

    // ...and turns log-dirty off when it is done.
    let mut libxl = Libxl::connect(&mut client);
    libxl.send("xen-set-global-dirty-log", Some(json!({ "enable": false }))).ok();

    assert!(!client.vm.dirty_log());
    // One state file, on console 1, framed as a restore reads it (an empty payload).
    assert_eq!(client.consoles.keys().collect::<Vec<_>>(), [&1]);
    let file = &client.consoles[&1];
    assert_eq!(file, &state_file::encode(&[]));
    assert_eq!(state_file::decode(file).unwrap(), Vec::<u8>::new());
    assert_eq!(client.vm.run_state(), RunState::Paused);
}

#[test]
fn checkpoint_resumes_with_cont() {
    // `xl save -c` and Remus: after the save, libxl resumes the device model with cont.
    let mut client = Client::negotiated();
    client.command("stop", None).ok();
    client.command("xen-save-devices-state", Some(json!({ "filename": "/dev/fdset/1", "live": true }))).ok();
    let cont = client.command("cont", None);
    assert_eq!(cont.event_names(), ["RESUME"]);
    let status = client.command("query-status", None);
    assert_eq!(status.ok(), &json!({ "running": true, "status": "running" }));
}

#[test]
fn fdsets_outlive_connections_and_each_connection_negotiates_again() {
    let mut client = Client::negotiated();
    let before = client.command("query-fdsets", None).ok().clone();
    client.reconnect();
    let refused = client.command("query-fdsets", None);
    assert_eq!(refused.error(), ("CommandNotFound", "Expecting capabilities negotiation with 'qmp_capabilities'"));
    client.negotiate();
    assert_eq!(client.command("query-fdsets", None).ok(), &before);
    assert_eq!(Client::find_stub_fdset(&before, HDC), Some(0));
    // fdset 1 is the save console
    let save = before.as_array().unwrap().iter().find(|set| set["fdset-id"] == 1).unwrap();
    assert_eq!(save["fds"][0]["opaque"], "stub-console:1");
}

#[test]
fn xl_save_first_reads_the_online_vcpus_with_query_cpus_fast() {
    // libxl_retrieve_domain_configuration (xl save, xl list -l) asks query-cpus-fast and
    // falls back to query-cpus; a failure of both fails the save. libxl sets one bit of
    // the online map per entry's cpu-index (qmp_parse_query_cpus_fast).
    let mut client = Client::negotiated();
    let mut libxl = Libxl::connect(&mut client);
    let exchange = libxl.send("query-cpus-fast", None);
    let cpus = exchange.ok().as_array().unwrap();
    let indexes: Vec<i64> = cpus.iter().map(|cpu| cpu["cpu-index"].as_i64().unwrap()).collect();
    assert_eq!(indexes, [0]);
    assert_eq!(cpus[0]["target"], json!("i386"));
    assert_eq!(cpus[0]["props"]["socket-id"], json!(0));
}

#[test]
fn query_cpus_fast_lists_every_vcpu_of_the_command_line() {
    let mut vm = Vm::new(VmConfig { vcpus: 4, ..VmConfig::default() });
    let mut session = Session::open(&mut vm, &VersionInfo::default());
    let now = qmp::Timestamp::new(0, 0);
    session.feed(&mut vm, b"{\"execute\":\"qmp_capabilities\"}{\"execute\":\"query-cpus-fast\",\"id\":7}", now);
    let output = String::from_utf8(session.take_output()).unwrap();
    let reply: Value = serde_json::from_str(output.trim_end().lines().last().unwrap()).unwrap();
    let indexes: Vec<i64> =
        reply["return"].as_array().unwrap().iter().map(|c| c["cpu-index"].as_i64().unwrap()).collect();
    assert_eq!(indexes, [0, 1, 2, 3]);
}
