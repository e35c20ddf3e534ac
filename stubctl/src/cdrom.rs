//! `stubctl cd-insert` / `cd-eject`: libxl 4.20's CD-ROM change for a stub-domain
//! guest (libxl_disk.c, "libxl: Enable stubdom cdrom changing"), for libxl 4.14-4.19,
//! which refuse it.
//!
//! The sequence, under libxl's device-changes and QMP locks:
//! 1. everything checked before anything changes: the guest, its stub domain, the
//!    vdev (an IDE CD-ROM of the stub domain, a drive QMP knows), the image (opened);
//! 2. QMP `eject` of `ide-<devid>` (a tray the guest locked refuses: nothing changed);
//! 3. `query-fdsets`, `remove-fd` of the fdset of `stub-devid:<devid>`;
//! 4. the stub domain's PV disk swapped: the old one removed, the new one (the image,
//!    or for an eject the zero-size empty-cdrom file, as libxl 4.19+ does) added;
//! 5. `query-fdsets` every 200 ms until the stub domain has put the new PV disk in an
//!    fdset `stub-devid:<devid>`;
//! 6. for an insert, `blockdev-change-medium` with `/dev/fdset/<N>`, `host_device`;
//! 7. the guest's own vbd nodes and stored configuration name the new medium.
//!
//! A failure in 4-6 puts the old medium back by the same steps (and says whether that
//! worked); a failure in 7 leaves the change made and says what was not recorded.

use crate::guest::{self, Guest};
use crate::lock::PathLock;
use crate::paths::{self, BackendKind, BackendPath, Host};
use crate::qmp::{self, Client};
use crate::vbd::{self, CdromVbd};
use crate::xs::{Tx, Xenstore};
use crate::{Error, Progress, config};
use serde_json::{Value, json};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;
use std::time::{Duration, Instant};
use xenstore::transaction::RetryPolicy;

/// Per QMP reply (libxl's `LIBXL_QMP_CMD_TIMEOUT`).
const QMP_LIMIT: Duration = Duration::from_secs(10);
/// For the stub domain to put a new PV disk in an fdset (libxl 4.20's whole
/// cd-insert has 40 s).
const FDSET_LIMIT: Duration = Duration::from_secs(40);
const FDSET_POLL: Duration = Duration::from_millis(200);
/// For a lock libxl holds.
const LOCK_LIMIT: Duration = Duration::from_secs(60);

/// What a change did, for the report line.
#[derive(Debug)]
pub struct Changed {
    pub guest: Guest,
    pub devid: u32,
    pub old_medium: Option<String>,
    pub new_medium: Option<String>,
    pub fdset: i64,
}

/// The CD-ROM being changed.
#[derive(Clone, Copy, Debug)]
struct Cdrom<'a> {
    guest: &'a Guest,
    /// The guest's name for it (`hdc`).
    vdev: &'a str,
    devid: u32,
}

/// The stub domain's CD-ROM PV disk `devid` as it is now.
#[derive(Clone, Debug)]
struct StubCdrom {
    /// The medium, None for an empty drive (empty `params`, or the empty-cdrom file).
    medium: Option<String>,
}

/// Checks that `vdev` is a CD-ROM of the stub domain; returns its medium.
fn stub_cdrom(xs: &mut Xenstore, host: &Host, guest: &Guest, vdev: &str, devid: u32) -> Result<StubCdrom, Error> {
    let frontend = paths::frontend(guest.stub, devid);
    let no_disk = || Error::NoSuchDisk { guest: guest.name.clone(), vdev: vdev.to_string(), devid };
    let backend_text = xs.read(Tx::NONE, &format!("{frontend}/backend"))?.ok_or_else(no_disk)?;
    let backend = BackendPath::parse(&backend_text).ok_or(Error::BadBackend(backend_text))?;
    let kind = xs.read(Tx::NONE, &format!("{frontend}/device-type"))?.unwrap_or_else(|| "disk".to_string());
    if kind != "cdrom" || !crate::vdev::is_ide(vdev) {
        return Err(Error::NotCdrom { guest: guest.name.clone(), vdev: vdev.to_string(), kind });
    }
    let params = xs.read(Tx::NONE, &format!("{}/params", backend.path()))?.unwrap_or_default();
    let medium = paths::medium_of_params(backend.kind, &params).filter(|m| *m != host.empty_cdrom(guest.domid));
    Ok(StubCdrom { medium })
}

/// The image as an absolute path, if it is a regular file or block device this
/// process can open for reading.
fn check_image(image: &Path) -> Result<String, Error> {
    let bad = |why: String| Error::BadImage { path: image.display().to_string(), why };
    let file = std::fs::File::open(image).map_err(|e| bad(e.to_string()))?;
    let kind = file.metadata().map_err(|e| bad(e.to_string()))?.file_type();
    if !kind.is_file() && !kind.is_block_device() {
        return Err(bad("neither a regular file nor a block device".to_string()));
    }
    let absolute = std::fs::canonicalize(image).map_err(|e| bad(e.to_string()))?;
    let text = absolute.to_str().ok_or_else(|| bad("the path is not UTF-8".to_string()))?;
    if text.contains(['\n', '\0']) {
        return Err(bad("the path has a newline".to_string()));
    }
    Ok(text.to_string())
}

/// The zero-size file that stands for an empty drive (libxl 4.19+'s name), made if missing.
fn empty_cdrom_file(host: &Host, guest: u32) -> Result<String, Error> {
    let path = host.empty_cdrom(guest);
    if std::fs::metadata(&path).is_err() {
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o400)
            .open(&path)
            .map_err(|e| Error::BadImage { path: path.clone(), why: e.to_string() })?;
    }
    Ok(path)
}

/// Steps 3-6: the old PV disk out, `medium` (None: empty) in, the drive given it.
fn swap(
    xs: &mut Xenstore,
    host: &Host,
    qmp: &mut Client,
    cdrom: Cdrom,
    medium: Option<&str>,
    progress: &Progress,
) -> Result<i64, Error> {
    let Cdrom { guest, vdev, devid } = cdrom;
    if let Some(old) = qmp::stub_fdset(&qmp.query_fdsets()?, devid) {
        progress.detail(&format!("remove-fd of fdset {old}"));
        qmp.execute("remove-fd", json!({ "fdset-id": old }))?;
    }
    progress.step(&format!("swapping the PV disk {devid} of stub domain {}", guest.stub));
    vbd::remove(xs, guest.stub, devid, &host.block_script, progress)?;
    let file = match medium {
        Some(path) => path.to_string(),
        None => empty_cdrom_file(host, guest.domid)?,
    };
    let new =
        CdromVbd { stub: guest.stub, devid, vdev: vdev.to_string(), medium: file, script: host.block_script.clone() };
    vbd::add(xs, &new, progress)?;
    progress.step("waiting for the stub domain to open the new PV disk");
    let deadline = Instant::now() + FDSET_LIMIT;
    let fdset = loop {
        if let Some(fdset) = qmp::stub_fdset(&qmp.query_fdsets()?, devid) {
            break fdset;
        }
        if Instant::now() >= deadline {
            return Err(Error::Timeout {
                what: format!("fdset {} in query-fdsets", qmp::stub_devid_opaque(devid)),
                secs: FDSET_LIMIT.as_secs(),
            });
        }
        std::thread::sleep(FDSET_POLL);
    };
    if medium.is_some() {
        let filename = format!("/dev/fdset/{fdset}");
        progress.detail(&format!("blockdev-change-medium {} {filename}", qmp::ide_drive(devid)));
        qmp.execute(
            "blockdev-change-medium",
            json!({ "id": qmp::ide_drive(devid), "filename": filename, "format": "host_device" }),
        )?;
    }
    Ok(fdset)
}

/// Step 7: the guest's own vbd (backend and libxl's copy) and stored configuration.
fn record(xs: &mut Xenstore, host: &Host, cdrom: Cdrom, medium: Option<&str>) -> Result<(), Error> {
    let Cdrom { guest, vdev, devid } = cdrom;
    let libxl = paths::libxl_vbd(guest.domid, devid);
    if let Some(text) = xs.read(Tx::NONE, &format!("{libxl}/backend"))? {
        let backend = BackendPath::parse(&text).ok_or(Error::BadBackend(text))?;
        let params = match backend.kind {
            BackendKind::Qdisk => format!("aio:{}", medium.unwrap_or_default()),
            BackendKind::Vbd => medium.unwrap_or_default().to_string(),
        };
        let backend_path = backend.path();
        xs.transaction(RetryPolicy::default(), |xs, tx| {
            if xs.read(tx, &format!("{backend_path}/params"))?.is_some() {
                xs.write(tx, &format!("{backend_path}/params"), &params)?;
            }
            xs.write(tx, &format!("{libxl}/params"), &params)
        })?;
    }
    let uuid = guest::uuid(xs, guest.domid)?;
    let path = host.libxl_json(guest.domid, &uuid);
    let _lock = PathLock::acquire(&host.userdata_lock(guest.domid, &uuid), LOCK_LIMIT)?;
    let config_error = |why: String| Error::Config { path: path.clone(), why };
    let text = match std::fs::read(&path) {
        Ok(text) => text,
        // A guest libxl keeps no configuration for: nothing to update.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(config_error(e.to_string())),
    };
    let changed = config::with_medium(&text, vdev, medium).map_err(|e| config_error(e.to_string()))?;
    let tmp = format!("{path}.stubctl-tmp");
    std::fs::write(&tmp, &changed).map_err(|e| config_error(e.to_string()))?;
    std::fs::rename(&tmp, &path).map_err(|e| config_error(e.to_string()))
}

/// Inserts `image` (None: ejects) into CD-ROM `vdev` of guest `target`.
pub fn change(target: &str, vdev: &str, image: Option<&Path>, progress: &Progress) -> Result<Changed, Error> {
    // A bad vdev is refused before the image is looked at.
    crate::vdev::devid(vdev)?;
    let new_medium = image.map(check_image).transpose()?;
    change_on(&mut Xenstore::open()?, &Host::real(), target, vdev, new_medium, progress)
}

/// [`change`] on `xs` and `host`, the medium already checked.
fn change_on(
    xs: &mut Xenstore,
    host: &Host,
    target: &str,
    vdev: &str,
    new_medium: Option<String>,
    progress: &Progress,
) -> Result<Changed, Error> {
    // 1. Checks, before anything changes.
    let devid = crate::vdev::devid(vdev)?;
    let guest = guest::find(xs, target)?;
    let old = stub_cdrom(xs, host, &guest, vdev, devid)?;
    let uuid = guest::uuid(xs, guest.domid)?;
    let _device_lock = PathLock::acquire(&host.device_changes_lock(), LOCK_LIMIT)?;
    let _qmp_lock = PathLock::acquire(&host.qmp_lock(guest.domid, &uuid), LOCK_LIMIT)?;
    progress.step(&format!("connecting to the device model of {} (stub domain {})", guest.name, guest.stub));
    let mut qmp = Client::connect(&host.qmp_socket(guest.domid), QMP_LIMIT)?;
    qmp.execute("query-version", Value::Null)?;
    let drive = qmp::ide_drive(devid);
    if !qmp.query_block()?.iter().any(|d| d.is(&drive) && d.removable) {
        return Err(Error::NotCdrom {
            guest: guest.name.clone(),
            vdev: vdev.to_string(),
            kind: "not removable".into(),
        });
    }

    // 2. The eject: refused for a locked tray, and then nothing has changed.
    progress.step(&format!("ejecting {drive}"));
    qmp.execute("eject", json!({ "id": drive }))?;

    // 3-6, undone on failure.
    let cdrom = Cdrom { guest: &guest, vdev, devid };
    let fdset = match swap(xs, host, &mut qmp, cdrom, new_medium.as_deref(), progress) {
        Ok(fdset) => fdset,
        Err(error) => {
            progress.step(&format!("{error}; putting the old medium back"));
            let rollback = match swap(xs, host, &mut qmp, cdrom, old.medium.as_deref(), progress) {
                Ok(fdset) => format!("worked (fdset {fdset}, {})", old.medium.as_deref().unwrap_or("empty")),
                Err(again) => format!("failed too: {again}"),
            };
            return Err(Error::RolledBack { error: Box::new(error), rollback });
        }
    };
    drop(qmp);

    // 7.
    record(xs, host, cdrom, new_medium.as_deref())?;
    Ok(Changed { guest, devid, old_medium: old.medium, new_medium, fdset })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guest::tests::domains;
    use crate::hotplug::Script;
    use crate::xs::sim_server;
    use std::os::unix::net::UnixStream;

    #[test]
    fn only_an_ide_cdrom_of_the_stub_domain_is_changed() {
        let mut sim = domains();
        for (path, value) in [
            ("/local/domain/4/device/vbd/5632/backend", "/local/domain/0/backend/qdisk/4/5632"),
            ("/local/domain/4/device/vbd/5632/device-type", "cdrom"),
            ("/local/domain/0/backend/qdisk/4/5632/params", "aio:/tmp/a.iso"),
            ("/local/domain/4/device/vbd/5696/backend", "/local/domain/0/backend/vbd/4/5696"),
            ("/local/domain/4/device/vbd/5696/device-type", "cdrom"),
            ("/local/domain/0/backend/vbd/4/5696/params", "/var/run/xen/empty-cdrom.3"),
            ("/local/domain/4/device/vbd/768/backend", "/local/domain/0/backend/vbd/4/768"),
            ("/local/domain/4/device/vbd/768/device-type", "disk"),
        ] {
            sim.write(path, value.as_bytes()).unwrap();
        }
        let (mut xs, _thread) = sim_server::serve(sim);
        let g = Guest { name: "g".into(), domid: 3, stub: 4 };
        assert_eq!(stub_cdrom(&mut xs, &Host::real(), &g, "hdc", 5632).unwrap().medium.as_deref(), Some("/tmp/a.iso"));
        // The empty-cdrom file is an empty drive.
        assert_eq!(stub_cdrom(&mut xs, &Host::real(), &g, "hdd", 5696).unwrap().medium, None);
        assert!(
            matches!(stub_cdrom(&mut xs, &Host::real(), &g, "hda", 768), Err(Error::NotCdrom { kind, .. }) if kind == "disk")
        );
        assert!(matches!(
            stub_cdrom(&mut xs, &Host::real(), &g, "hdb", 832),
            Err(Error::NoSuchDisk { devid: 832, .. })
        ));
    }

    use std::io::{BufRead, BufReader, Write as _};
    use std::os::unix::net::UnixListener;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Instant;
    use xenstore::sim::Sim;

    const UUID: &str = "2a9c3f5e-0d1b-4c7a-9e8f-1234567890ab";

    /// A dom0 for `change_on`: its own libxl directories, a block script whose first
    /// `stuck_first` adds hang (a shell waiting on a `sleep`) and whose next
    /// `fail_first` adds fail, the guest's stored config.
    struct Dom0 {
        dir: std::path::PathBuf,
        host: Host,
    }

    impl Dom0 {
        fn new(name: &str, fail_first: u32) -> Dom0 {
            Dom0::with_script(name, 0, fail_first, Duration::from_secs(10))
        }

        fn with_script(name: &str, stuck_first: u32, fail_first: u32, script_limit: Duration) -> Dom0 {
            let dir = std::env::temp_dir().join(format!("stubctl-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            for sub in ["run", "lib"] {
                std::fs::create_dir_all(dir.join(sub)).unwrap();
            }
            let runs = dir.join("script-runs");
            // Appends one line per run.
            let script = format!(
                "#!/bin/sh\necho \"$1 $XENBUS_PATH\" >> {runs}\n[ \"$1\" = remove ] && exit 0\nadds=$(grep -c add {runs})\n\
                 [ $adds -le {stuck_first} ] && sleep 60\n[ $adds -gt {last_bad} ] && touch {done} && exit 0\nexit 1\n",
                runs = runs.display(),
                last_bad = stuck_first + fail_first,
                done = dir.join("hotplug-connected").display()
            );
            let script_path = dir.join("block");
            std::fs::write(&script_path, script).unwrap();
            std::fs::set_permissions(&script_path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
            let host = Host {
                run_dir: dir.join("run").display().to_string(),
                lib_dir: dir.join("lib").display().to_string(),
                block_script: Script { path: script_path.display().to_string(), limit: script_limit },
            };
            let config = r#"{"c_info":{"name":"g"},"disks":[{"pdev_path":"/tmp/a.iso","vdev":"hdc","format":"raw","is_cdrom":1}]}"#;
            std::fs::write(dir.join(format!("lib/userdata-d.3.{UUID}.libxl-json")), format!("{config}\0")).unwrap();
            Dom0 { dir, host }
        }

        fn config(&self) -> Vec<u8> {
            std::fs::read(self.dir.join(format!("lib/userdata-d.3.{UUID}.libxl-json"))).unwrap()
        }
    }

    impl Drop for Dom0 {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    /// Guest `g` (3) whose stub domain (4) has CD A in hdc through dom0's qdisk, as
    /// libxl 4.17 creates it.
    fn guest_with_cd() -> Sim {
        let mut sim = domains();
        for (path, value) in [
            ("/local/domain/4/device/vbd/5632/backend", "/local/domain/0/backend/qdisk/4/5632"),
            ("/local/domain/4/device/vbd/5632/device-type", "cdrom"),
            ("/local/domain/0/backend/qdisk/4/5632/params", "aio:/tmp/a.iso"),
            ("/local/domain/0/backend/qdisk/4/5632/state", "4"),
            ("/libxl/4/device/vbd/5632/backend", "/local/domain/0/backend/qdisk/4/5632"),
            ("/libxl/3/device/vbd/5632/backend", "/local/domain/0/backend/qdisk/3/5632"),
            ("/libxl/3/device/vbd/5632/params", "aio:/tmp/a.iso"),
            ("/local/domain/0/backend/qdisk/3/5632/params", "aio:/tmp/a.iso"),
        ] {
            sim.write(path, value.as_bytes()).unwrap();
        }
        sim
    }

    /// The backends and hotplug script around the store, in time as on the 4.17 bed:
    /// Closing becomes Closed; dom0's QEMU deletes a closed, offline qdisk's frontend
    /// and backend directories 300 ms later; dom0's kernel probes a new vbd 500 ms
    /// after it appears, and puts it in InitWait if its frontend exists then (else the
    /// device stays unprobed until its backend goes); the script's run makes it
    /// Connected (the stub domain's PV disk is then `ready`).
    fn backends(dir: std::path::PathBuf, ready: Arc<AtomicBool>) -> impl FnMut(&mut Sim) + Send + 'static {
        let (mut qemu_cleanup_at, mut kernel_probe_at, mut probe_failed) = (None, None, false);
        move |sim: &mut Sim| {
            let now = Instant::now();
            let qdisk = "/local/domain/0/backend/qdisk/4/5632";
            let vbd = "/local/domain/0/backend/vbd/4/5632";
            let closed = sim.read(&format!("{qdisk}/state")).as_deref() == Some(b"6")
                && sim.read(&format!("{qdisk}/online")).as_deref() == Some(b"0");
            match qemu_cleanup_at {
                None if closed => qemu_cleanup_at = Some(now + Duration::from_millis(300)),
                Some(at) if now >= at => {
                    let _ = sim.rm("/local/domain/4/device/vbd/5632");
                    let _ = sim.rm(qdisk);
                    qemu_cleanup_at = None;
                }
                _ => {}
            }
            let frontend = sim.read("/local/domain/4/device/vbd/5632/backend").is_some();
            match (sim.read(&format!("{vbd}/state")).as_deref(), kernel_probe_at) {
                (None, _) => (kernel_probe_at, probe_failed) = (None, false),
                (Some(b"1"), None) if !probe_failed => kernel_probe_at = Some(now + Duration::from_millis(500)),
                (Some(b"1"), Some(at)) if now >= at => {
                    kernel_probe_at = None;
                    if frontend {
                        sim.write(&format!("{vbd}/state"), b"2").unwrap();
                    } else {
                        probe_failed = true;
                    }
                }
                _ => {}
            }
            for backend in [qdisk, vbd] {
                let state = sim.read(&format!("{backend}/state"));
                let connected = dir.join("hotplug-connected");
                match state.as_deref() {
                    Some(b"5") => sim.write(&format!("{backend}/state"), b"6").unwrap(),
                    Some(b"2") if connected.exists() => {
                        let _ = std::fs::remove_file(&connected);
                        sim.write(&format!("{backend}/hotplug-status"), b"connected").unwrap();
                        sim.write(&format!("{backend}/state"), b"4").unwrap();
                    }
                    _ => {}
                }
            }
            let vbd = sim.read("/local/domain/0/backend/vbd/4/5632/state");
            ready.store(vbd.as_deref() == Some(b"4"), Ordering::SeqCst);
        }
    }

    /// The stub domain's QMP as libxl's socket serves it: one client, the commands
    /// `change_on` sends; a new PV disk gets an fdset once it is `ready`. Every command
    /// (with its fdset or filename) goes to the returned log.
    fn device_model(socket: &str, ready: Arc<AtomicBool>) -> Arc<Mutex<Vec<String>>> {
        let log = Arc::new(Mutex::new(Vec::new()));
        let listener = UnixListener::bind(socket).unwrap();
        let commands = log.clone();
        std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut writer = stream.try_clone().unwrap();
            let reply = |writer: &mut UnixStream, value: Value| {
                writer.write_all(format!("{value}\r\n").as_bytes()).unwrap();
            };
            reply(&mut writer, json!({"QMP":{"version":{"qemu":{"major":7,"minor":2,"micro":0}},"capabilities":[]}}));
            let mut fdsets = vec![(1, true)];
            let mut medium = Some("/dev/xvdc".to_string());
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                let request: Value = serde_json::from_str(&line).unwrap();
                let (command, id, args) = (request["execute"].as_str().unwrap(), &request["id"], &request["arguments"]);
                let ret = match command {
                    "query-block" => json!([{"device":"","qdev":"ide-5632","removable":true,"locked":false,
                        "tray_open": medium.is_none(),
                        "inserted": medium.as_ref().map(|f| json!({"file": f, "ro": true}))}])
                    .to_string()
                    .replace(",\"inserted\":null", "")
                    .parse()
                    .unwrap(),
                    "eject" => {
                        medium = None;
                        json!({})
                    }
                    "query-fdsets" => {
                        if ready.load(Ordering::SeqCst) && fdsets.is_empty() {
                            fdsets.push((2, true));
                        }
                        Value::Array(
                            fdsets
                                .iter()
                                .map(|(id, _)| json!({"fdset-id": id, "fds": [{"fd": 3, "opaque": "stub-devid:5632"}]}))
                                .collect(),
                        )
                    }
                    "remove-fd" => {
                        fdsets.retain(|(id, _)| json!(id) != args["fdset-id"]);
                        json!({})
                    }
                    "blockdev-change-medium" => {
                        medium = args["filename"].as_str().map(str::to_string);
                        json!({})
                    }
                    _ => json!({}),
                };
                let detail = [&args["fdset-id"], &args["filename"]]
                    .iter()
                    .filter(|v| !v.is_null())
                    .map(|v| format!(" {}", v.as_str().map_or(v.to_string(), str::to_string)))
                    .collect::<String>();
                commands.lock().unwrap().push(format!("{command}{detail}"));
                reply(&mut writer, json!({"return": ret, "id": id}));
            }
        });
        log
    }

    /// The QMP commands `log` holds, with repeated polls of query-fdsets as one.
    fn commands(log: &Arc<Mutex<Vec<String>>>) -> Vec<String> {
        let mut commands = log.lock().unwrap().clone();
        commands.dedup();
        commands
    }

    #[test]
    fn insert_then_eject_run_libxl_420s_sequence_and_record_the_medium() {
        let dom0 = Dom0::new("insert", 0);
        let ready = Arc::new(AtomicBool::new(false));
        let (mut xs, thread) = sim_server::serve_with(guest_with_cd(), backends(dom0.dir.clone(), ready.clone()));
        let log = device_model(&dom0.host.qmp_socket(3), ready.clone());
        let progress = Progress::new(false);
        let changed = change_on(&mut xs, &dom0.host, "g", "hdc", Some("/tmp/b.iso".into()), &progress).unwrap();
        assert_eq!((changed.fdset, changed.old_medium.as_deref()), (2, Some("/tmp/a.iso")));
        assert_eq!(
            commands(&log),
            [
                "qmp_capabilities",
                "query-version",
                "query-block",
                "eject",
                "query-fdsets",
                "remove-fd 1",
                "query-fdsets",
                "blockdev-change-medium /dev/fdset/2"
            ]
        );
        assert_eq!(config::medium(&dom0.config(), "hdc").as_deref(), Some("/tmp/b.iso"));
        // libxl's locks are released (and unlinked) again.
        assert!(
            std::fs::read_dir(&dom0.host.lib_dir).unwrap().all(|e| !e
                .unwrap()
                .file_name()
                .to_string_lossy()
                .contains("lock"))
        );
        drop(xs);
        let sim = thread.join().unwrap();
        let read = |path: &str| sim.read(path).map(|v| String::from_utf8(v).unwrap());
        assert_eq!(read("/local/domain/0/backend/vbd/4/5632/params").as_deref(), Some("/tmp/b.iso"));
        assert_eq!(read("/local/domain/0/backend/vbd/4/5632/script"), Some(dom0.host.block_script.path.clone()));
        assert_eq!(read("/local/domain/0/backend/qdisk/4/5632/params"), None);
        assert_eq!(read("/libxl/3/device/vbd/5632/params").as_deref(), Some("aio:/tmp/b.iso"));
        assert_eq!(read("/local/domain/0/backend/qdisk/3/5632/params").as_deref(), Some("aio:/tmp/b.iso"));
        let runs = std::fs::read_to_string(dom0.dir.join("script-runs")).unwrap();
        assert_eq!(runs, "add backend/vbd/4/5632\n");

        // The eject: the empty-cdrom file in the medium's place, no change-medium.
        ready.store(false, Ordering::SeqCst);
        let (mut xs, thread) = sim_server::serve_with(sim, backends(dom0.dir.clone(), ready.clone()));
        std::fs::remove_file(dom0.host.qmp_socket(3)).unwrap();
        let log = device_model(&dom0.host.qmp_socket(3), ready);
        let changed = change_on(&mut xs, &dom0.host, "3", "hdc", None, &progress).unwrap();
        assert_eq!((changed.old_medium.as_deref(), changed.new_medium), (Some("/tmp/b.iso"), None));
        let commands = commands(&log);
        assert!(
            commands.contains(&"eject".to_string()) && commands.contains(&"remove-fd 1".to_string()),
            "{commands:?}"
        );
        assert!(!commands.iter().any(|c| c.starts_with("blockdev-change-medium")), "{commands:?}");
        assert_eq!(config::medium(&dom0.config(), "hdc"), None);
        let empty = dom0.host.empty_cdrom(3);
        assert_eq!(std::fs::metadata(&empty).unwrap().len(), 0);
        drop(xs);
        let sim = thread.join().unwrap();
        assert_eq!(sim.read("/local/domain/0/backend/vbd/4/5632/params"), Some(empty.into_bytes()));
        assert_eq!(sim.read("/libxl/3/device/vbd/5632/params").as_deref(), Some(&b"aio:"[..]));
        let runs = std::fs::read_to_string(dom0.dir.join("script-runs")).unwrap();
        assert_eq!(runs, "add backend/vbd/4/5632\nremove backend/vbd/4/5632\nadd backend/vbd/4/5632\n");
    }

    #[test]
    fn a_failed_swap_puts_the_old_medium_back_and_records_nothing() {
        let dom0 = Dom0::new("rollback", 1);
        let ready = Arc::new(AtomicBool::new(false));
        let (mut xs, thread) = sim_server::serve_with(guest_with_cd(), backends(dom0.dir.clone(), ready.clone()));
        let log = device_model(&dom0.host.qmp_socket(3), ready);
        let before = dom0.config();
        let progress = Progress::new(false);
        let result = change_on(&mut xs, &dom0.host, "g", "hdc", Some("/tmp/b.iso".into()), &progress);
        let Err(Error::RolledBack { error, rollback }) = result else { panic!("{result:?}") };
        assert!(matches!(*error, Error::Hotplug(_)), "{error}");
        assert!(rollback.starts_with("worked (fdset 2, /tmp/a.iso)"), "{rollback}");
        assert_eq!(
            commands(&log),
            [
                "qmp_capabilities",
                "query-version",
                "query-block",
                "eject",
                "query-fdsets",
                "remove-fd 1",
                "query-fdsets",
                "blockdev-change-medium /dev/fdset/2"
            ]
        );
        assert_eq!(dom0.config(), before);
        drop(xs);
        let sim = thread.join().unwrap();
        assert_eq!(sim.read("/local/domain/0/backend/vbd/4/5632/params").as_deref(), Some(&b"/tmp/a.iso"[..]));
        assert_eq!(sim.read("/libxl/3/device/vbd/5632/params").as_deref(), Some(&b"aio:/tmp/a.iso"[..]));
        let runs = std::fs::read_to_string(dom0.dir.join("script-runs")).unwrap();
        // The failed add, its clean-up, the old medium's add.
        assert_eq!(runs, "add backend/vbd/4/5632\nremove backend/vbd/4/5632\nadd backend/vbd/4/5632\n");
    }

    /// A block script stuck in its first add (as once on a slow 4.17 bed): killed at
    /// its limit, its half-made PV disk removed, the add tried once more, the insert
    /// done.
    #[test]
    fn a_stuck_block_script_is_killed_and_the_add_tried_once_more() {
        let dom0 = Dom0::with_script("stuck", 1, 0, Duration::from_secs(4));
        let ready = Arc::new(AtomicBool::new(false));
        let (mut xs, thread) = sim_server::serve_with(guest_with_cd(), backends(dom0.dir.clone(), ready.clone()));
        let log = device_model(&dom0.host.qmp_socket(3), ready);
        let started = Instant::now();
        let changed = change_on(&mut xs, &dom0.host, "g", "hdc", Some("/tmp/b.iso".into()), &Progress::new(false));
        let changed = changed.unwrap();
        assert!(started.elapsed() < Duration::from_secs(30), "{:?}", started.elapsed());
        assert_eq!((changed.fdset, changed.new_medium.as_deref()), (2, Some("/tmp/b.iso")));
        assert_eq!(commands(&log).last().map(String::as_str), Some("blockdev-change-medium /dev/fdset/2"));
        assert_eq!(config::medium(&dom0.config(), "hdc").as_deref(), Some("/tmp/b.iso"));
        drop(xs);
        let sim = thread.join().unwrap();
        assert_eq!(sim.read("/local/domain/0/backend/vbd/4/5632/params").as_deref(), Some(&b"/tmp/b.iso"[..]));
        let runs = std::fs::read_to_string(dom0.dir.join("script-runs")).unwrap();
        // The stuck add, its clean-up, the second add.
        assert_eq!(runs, "add backend/vbd/4/5632\nremove backend/vbd/4/5632\nadd backend/vbd/4/5632\n");
    }

    #[test]
    fn images_must_be_readable_files_or_block_devices() {
        assert!(check_image(Path::new("/nonexistent/cd.iso")).is_err());
        assert!(matches!(check_image(Path::new("/")), Err(Error::BadImage { why, .. }) if why.contains("neither")));
        let path = std::env::temp_dir().join(format!("stubctl-image-{}.iso", std::process::id()));
        std::fs::write(&path, b"iso").unwrap();
        assert_eq!(check_image(&path).unwrap(), std::fs::canonicalize(&path).unwrap().to_str().unwrap());
        std::fs::remove_file(&path).unwrap();
    }
}
