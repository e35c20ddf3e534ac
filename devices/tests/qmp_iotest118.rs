//! The removable-media scenarios of QEMU's iotest 118 that apply to an IDE CD-ROM, plus
//! the locked-tray behaviour of block/qapi-sysemu.c (do_open_tray), which 118 does not
//! exercise.
//!
//! 118 runs each general test on a drive that starts filled and one that starts empty;
//! its "old" and "new" images are PV disks here, named by fdset as libxl names them.
//! Its TestChangeReadOnly cases (on a floppy there) become PV disks attached read-only
//! or read-write, which is what a chmod 444 image is to QEMU. Cases built on
//! blockdev-add / blockdev-insert-medium / blockdev-remove-medium are left out: libxl
//! does not use those commands and this server does not offer them.

mod qmp_common;
use qmp_common as common;

use common::Client;
use devices::block::{DriveConfig, DriveKind, GuestTrayError, MediumSource, PvDiskInfo};
use devices::vm::fuzz::HDC;
use devices::vm::{Vm, VmConfig};
use serde_json::{Value, json};

const ID: &str = "ide-5632";
/// devid of the PV disk holding 118's "new" image.
const NEW_DISK: u32 = 5696;

struct Case {
    client: Client,
    old_img: Option<String>,
    new_img: String,
}

/// A CD-ROM hdc, filled from PV disk hdc or empty, and PV disk NEW_DISK as "new".
fn setup(filled: bool, root_read_only: bool, old_disk_read_only: bool, new_disk_read_only: bool) -> Case {
    let mut vm = Vm::new(VmConfig::default());
    let size_bytes = 1440 << 10;
    let old = vm.pv_disk_connected(HDC, PvDiskInfo { read_only: old_disk_read_only, size_bytes });
    let new = vm.pv_disk_connected(NEW_DISK, PvDiskInfo { read_only: new_disk_read_only, size_bytes });
    let old_img = format!("/dev/fdset/{old}");
    let medium = MediumSource { filename: old_img.clone(), format: Some("raw".into()) };
    let config =
        DriveConfig { devid: HDC, kind: DriveKind::CdRom, read_only: root_read_only, medium: filled.then_some(medium) };
    vm.add_drive(config).unwrap();
    let mut client = Client::with_vm(vm);
    client.negotiate();
    Case { client, old_img: filled.then_some(old_img), new_img: format!("/dev/fdset/{new}") }
}

fn general(filled: bool) -> Case {
    setup(filled, true, true, true)
}

impl Case {
    fn info(&mut self) -> Value {
        self.client.block_info(ID)
    }

    fn filename(&mut self) -> Option<String> {
        let inserted = self.info().get("inserted").cloned()?;
        Some(inserted["image"]["filename"].as_str().unwrap().to_string())
    }

    fn change(&mut self, extra: Value) -> common::Exchange {
        let mut arguments = json!({ "id": ID, "filename": self.new_img, "format": "raw" });
        for (key, value) in extra.as_object().unwrap() {
            arguments[key] = value.clone();
        }
        self.client.command("blockdev-change-medium", Some(arguments))
    }

    fn eject_force(&mut self) -> common::Exchange {
        self.client.command("eject", Some(json!({ "id": ID, "force": true })))
    }
}

#[test]
fn blockdev_change_medium() {
    for filled in [true, false] {
        let mut case = general(filled);
        let change = case.change(json!({}));
        assert_eq!(change.ok(), &json!({}));
        assert_eq!(change.tray_moves(), [true, false], "filled: {filled}");
        assert_eq!(case.info()["tray_open"], false);
        assert_eq!(case.filename(), Some(case.new_img.clone()));
    }
}

#[test]
fn eject() {
    for filled in [true, false] {
        let mut case = general(filled);
        let eject = case.eject_force();
        assert_eq!(eject.ok(), &json!({}));
        assert_eq!(eject.tray_moves(), [true]);
        assert_eq!(case.info()["tray_open"], true);
        assert_eq!(case.filename(), None);
    }
}

#[test]
fn tray_eject_change() {
    for filled in [true, false] {
        let mut case = general(filled);
        assert_eq!(case.eject_force().tray_moves(), [true]);
        assert_eq!(case.filename(), None);
        let change = case.change(json!({}));
        assert_eq!(change.ok(), &json!({}));
        assert_eq!(change.tray_moves(), [false]);
        assert_eq!(case.info()["tray_open"], false);
        assert_eq!(case.filename(), Some(case.new_img.clone()));
    }
}

#[test]
fn tray_open_close() {
    for filled in [true, false] {
        let mut case = general(filled);
        let open = case.client.command("blockdev-open-tray", Some(json!({ "id": ID, "force": true })));
        assert_eq!(open.ok(), &json!({}));
        assert_eq!(open.tray_moves(), [true]);
        assert_eq!(case.info()["tray_open"], true);
        // the medium stays associated while the tray is open
        assert_eq!(case.filename(), case.old_img.clone());
        let close = case.client.command("blockdev-close-tray", Some(json!({ "id": ID })));
        assert_eq!(close.ok(), &json!({}));
        assert_eq!(close.tray_moves(), [false]);
        assert_eq!(case.info()["tray_open"], false);
        assert_eq!(case.filename(), case.old_img.clone());
    }
}

#[test]
fn tray_eject_close() {
    for filled in [true, false] {
        let mut case = general(filled);
        assert_eq!(case.eject_force().tray_moves(), [true]);
        let close = case.client.command("blockdev-close-tray", Some(json!({ "id": ID })));
        assert_eq!(close.tray_moves(), [false]);
        assert_eq!(case.info()["tray_open"], false);
        assert_eq!(case.filename(), None);
    }
}

#[test]
fn tray_open_change() {
    for filled in [true, false] {
        let mut case = general(filled);
        let open = case.client.command("blockdev-open-tray", Some(json!({ "id": ID, "force": true })));
        assert_eq!(open.tray_moves(), [true]);
        assert_eq!(case.filename(), case.old_img.clone());
        let change = case.change(json!({}));
        assert_eq!(change.ok(), &json!({}));
        assert_eq!(change.tray_moves(), [false]);
        assert_eq!(case.info()["tray_open"], false);
        assert_eq!(case.filename(), Some(case.new_img.clone()));
    }
}

#[test]
fn close_on_closed() {
    for filled in [true, false] {
        let mut case = general(filled);
        let close = case.client.command("blockdev-close-tray", Some(json!({ "id": ID })));
        assert_eq!(close.ok(), &json!({}));
        assert!(close.events.is_empty());
    }
}

#[test]
fn device_name_still_works() {
    // `device` is deprecated since 2.8 but QEMU accepts it, naming the block backend.
    let mut case = general(true);
    let eject = case.client.command("eject", Some(json!({ "device": ID, "force": true })));
    assert_eq!(eject.tray_moves(), [true]);
    let change = case.client.command(
        "blockdev-change-medium",
        Some(json!({ "device": ID, "filename": case.new_img, "format": "host_device" })),
    );
    assert_eq!(change.tray_moves(), [false]);
}

// --- locked tray (block/qapi-sysemu.c do_open_tray, hw/ide/atapi.c) ---

fn locked() -> Case {
    let mut case = general(true);
    case.client.vm.guest_lock_tray(HDC, true).unwrap();
    assert_eq!(case.info()["locked"], true);
    case
}

/// The eject requests waiting for the IDE model (each one's `force`); all for hdc.
fn eject_requests(case: &Case) -> Vec<bool> {
    let requests = case.client.vm.eject_requests();
    assert!(requests.iter().all(|request| request.devid == HDC), "{requests:?}");
    requests.iter().map(|request| request.force).collect()
}

#[test]
fn locked_tray_refuses_eject_without_force_and_asks_the_guest() {
    let mut case = locked();
    let eject = case.client.command("eject", Some(json!({ "id": ID })));
    assert_eq!(
        eject.error(),
        (
            "GenericError",
            "Device 'ide-5632' is locked and force was not specified, wait for tray to open and try again"
        )
    );
    assert!(eject.events.is_empty());
    assert_eq!(eject_requests(&case), [false]);
    let info = case.info();
    assert_eq!((info["tray_open"].clone(), info["locked"].clone()), (json!(false), json!(true)));
    assert_eq!(case.filename(), case.old_img.clone());

    // The guest honours the request: it unlocks and opens the tray; eject then succeeds.
    case.client.vm.guest_lock_tray(HDC, false).unwrap();
    case.client.vm.guest_move_tray(HDC, true, case.client.now).unwrap();
    case.client.session.deliver_events(&mut case.client.vm);
    let events = case.client.read();
    assert_eq!(events[0]["data"], json!({ "device": ID, "id": ID, "tray-open": true }));
    let eject = case.client.command("eject", Some(json!({ "id": ID })));
    assert_eq!(eject.ok(), &json!({}));
    assert!(eject.events.is_empty());
    assert_eq!(case.filename(), None);
}

#[test]
fn locked_tray_open_without_force_succeeds_but_only_asks_the_guest() {
    let mut case = locked();
    let open = case.client.command("blockdev-open-tray", Some(json!({ "id": ID })));
    assert_eq!(open.ok(), &json!({}));
    assert!(open.events.is_empty());
    assert_eq!(eject_requests(&case), [false]);
    assert_eq!(case.info()["tray_open"], false);
}

#[test]
fn forced_eject_of_a_locked_tray_drops_the_lock() {
    let mut case = locked();
    let eject = case.eject_force();
    assert_eq!(eject.ok(), &json!({}));
    assert_eq!(eject.tray_moves(), [true]);
    assert_eq!(eject_requests(&case), [true]);
    let info = case.info();
    assert_eq!((info["tray_open"].clone(), info["locked"].clone()), (json!(true), json!(false)));
    assert!(info.get("inserted").is_none());
}

#[test]
fn change_medium_on_a_locked_tray_fails_and_changes_nothing() {
    let mut case = locked();
    let change = case.change(json!({}));
    assert_eq!(change.error().0, "GenericError");
    assert!(change.error().1.contains("is locked"));
    assert!(change.events.is_empty());
    assert_eq!(case.filename(), case.old_img.clone());
}

#[test]
fn guest_cannot_open_a_locked_tray() {
    let mut case = locked();
    let moved = case.client.vm.guest_move_tray(HDC, true, case.client.now);
    assert_eq!(moved, Err(GuestTrayError::Locked));
    case.client.session.deliver_events(&mut case.client.vm);
    assert!(case.client.read().is_empty());
}

// --- read-only modes (118's TestChangeReadOnly) ---

/// The old medium's `ro`, then what `blockdev-change-medium` with `mode` does when the
/// new PV disk is read-only or not: Some(new ro) on success, None on a GenericError
/// (after which nothing changed and no event came).
fn read_only_case(old_read_only: bool, new_disk_read_only: bool, mode: &str) -> Option<bool> {
    let mut case = setup(true, old_read_only, old_read_only, new_disk_read_only);
    assert_eq!(case.info()["inserted"]["ro"], old_read_only);
    let change = case.change(json!({ "read-only-mode": mode }));
    if change.reply.get("error").is_some() {
        assert_eq!(change.error().0, "GenericError");
        assert!(change.events.is_empty());
        assert_eq!(case.info()["inserted"]["ro"], old_read_only);
        assert_eq!(case.filename(), case.old_img.clone());
        return None;
    }
    assert_eq!(case.filename(), Some(case.new_img.clone()));
    Some(case.info()["inserted"]["ro"].as_bool().unwrap())
}

#[test]
fn read_only_modes() {
    assert_eq!(read_only_case(true, true, "retain"), Some(true), "ro_ro_retain");
    assert_eq!(read_only_case(true, false, "retain"), Some(true), "ro_rw_retain");
    assert_eq!(read_only_case(false, true, "retain"), None, "rw_ro_retain");
    assert_eq!(read_only_case(true, false, "read-write"), Some(false), "ro_rw");
    assert_eq!(read_only_case(false, true, "read-only"), Some(true), "rw_ro");
    assert_eq!(read_only_case(false, false, "read-only"), Some(true), "make_rw_ro");
    assert_eq!(read_only_case(false, true, "read-write"), None, "make_ro_rw");
    assert_eq!(read_only_case(true, false, "retain"), Some(true), "make_rw_ro_by_retain");
    assert_eq!(read_only_case(false, true, "retain"), None, "make_ro_rw_by_retain");
}

#[test]
fn read_only_error_wording() {
    let mut case = setup(true, false, false, true);
    let change = case.change(json!({}));
    let desc = format!("Could not open '{}': Permission denied", case.new_img);
    assert_eq!(change.error(), ("GenericError", desc.as_str()));
    let mode = case.change(json!({ "read-only-mode": "sideways" }));
    assert_eq!(mode.error(), ("GenericError", "Parameter 'read-only-mode' does not accept value 'sideways'"));
}

#[test]
fn unsupported_formats_are_refused_before_anything_moves() {
    let mut case = general(true);
    let change = case.change(json!({ "format": "qcow2" }));
    let (class, desc) = change.error();
    assert_eq!(class, "GenericError");
    assert!(desc.starts_with("Format 'qcow2' is not supported"), "{desc}");
    assert!(change.events.is_empty());
    assert_eq!(case.filename(), case.old_img.clone());
    // no format: probed as raw
    let arguments = json!({ "id": ID, "filename": case.new_img });
    let change = case.client.command("blockdev-change-medium", Some(arguments));
    assert_eq!(change.ok(), &json!({}));
    assert_eq!(case.info()["inserted"]["drv"], "raw");
}

#[test]
fn unknown_drives_and_hard_disks() {
    let mut client = Client::negotiated();
    let eject = client.command("eject", Some(json!({ "id": "ide-768" })));
    assert_eq!(eject.error(), ("DeviceNotFound", "Device 'ide-768' not found"));
    let eject = client.command("eject", Some(json!({ "device": "ide0-hd0" })));
    assert_eq!(eject.error(), ("GenericError", "Device 'ide0-hd0' is not removable"));
    let close = client.command("blockdev-close-tray", Some(json!({ "device": "ide0-hd0" })));
    assert_eq!(close.error(), ("GenericError", "Device 'ide0-hd0' is not removable"));
    let both = client.command("eject", Some(json!({ "device": ID, "id": ID })));
    assert_eq!(both.error(), ("GenericError", "Need exactly one of 'device' and 'id'"));
    let disk = client.block_info("ide0-hd0");
    assert_eq!(disk["removable"], false);
    assert!(disk.get("tray_open").is_none() && disk.get("qdev").is_none());
    assert_eq!(disk["inserted"]["ro"], false);
}
