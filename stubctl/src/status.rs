//! `stubctl status`: a guest's stub domain, its device model's run state, drives,
//! media and fdsets (QMP), and the stub domain's PV disks (xenstore).

use crate::guest;
use crate::lock::PathLock;
use crate::paths::{self, BackendPath};
use crate::qmp::{self, Client};
use crate::xs::{Tx, Xenstore};
use crate::{Error, Progress};
use serde_json::Value;
use std::fmt::Write;
use std::time::Duration;

/// The report for guest `target`, as text.
pub fn status(target: &str, progress: &Progress) -> Result<String, Error> {
    let host = paths::Host::real();
    let mut xs = Xenstore::open()?;
    let guest = guest::find(&mut xs, target)?;
    let uuid = guest::uuid(&mut xs, guest.domid)?;
    let stub_name = xs.read(Tx::NONE, &format!("{}/name", paths::domain(guest.stub)))?.unwrap_or_default();
    let mut out = String::new();
    let _ =
        writeln!(out, "guest {} (domain {}), stub domain {stub_name} (domain {})", guest.name, guest.domid, guest.stub);

    let (run_state, drives, fdsets, version) = {
        let _lock = PathLock::acquire(&host.qmp_lock(guest.domid, &uuid), Duration::from_secs(60))?;
        progress.detail(&format!("QMP at {}", host.qmp_socket(guest.domid)));
        let mut qmp = Client::connect(&host.qmp_socket(guest.domid), Duration::from_secs(10))?;
        let run_state = qmp::parse_status(&qmp.execute("query-status", Value::Null)?)?;
        (run_state, qmp.query_block()?, qmp.query_fdsets()?, qmp.version)
    };
    let _ = writeln!(out, "device model: {run_state} (QMP greeting: QEMU {}.{}.{})", version.0, version.1, version.2);
    let _ = writeln!(out, "drives:");
    for drive in &drives {
        let name = drive.qdev.as_deref().unwrap_or(&drive.device);
        let medium = match &drive.inserted {
            Some(m) => format!("{}{}", m.file, if m.ro { " (read-only)" } else { "" }),
            None => "no medium".to_string(),
        };
        let tray = match drive.tray_open {
            Some(true) => ", tray open",
            Some(false) => ", tray closed",
            None => "",
        };
        let locked = if drive.locked { ", locked" } else { "" };
        let _ = writeln!(out, "  {name}: {medium}{tray}{locked}");
    }
    let _ = writeln!(out, "fdsets:");
    for set in &fdsets {
        let fds: Vec<String> =
            set.fds.iter().map(|fd| format!("fd {} {}", fd.fd, fd.opaque.as_deref().unwrap_or("-"))).collect();
        let _ = writeln!(out, "  {}: {}", set.fdset_id, fds.join(", "));
    }
    let _ = writeln!(out, "PV disks of the stub domain:");
    let vbds = xs.directory(Tx::NONE, &format!("{}/device/vbd", paths::domain(guest.stub)))?;
    for devid in vbds.iter().filter_map(|d| d.parse::<u32>().ok()) {
        let frontend = paths::frontend(guest.stub, devid);
        let backend_text = xs.read(Tx::NONE, &format!("{frontend}/backend"))?.unwrap_or_default();
        let Some(backend) = BackendPath::parse(&backend_text) else {
            let _ = writeln!(out, "  {devid}: backend {backend_text:?}");
            continue;
        };
        let read = |xs: &mut Xenstore, key: &str| xs.read(Tx::NONE, &format!("{}/{key}", backend.path()));
        let (dev, state, params) = (read(&mut xs, "dev")?, read(&mut xs, "state")?, read(&mut xs, "params")?);
        let kind = xs.read(Tx::NONE, &format!("{frontend}/device-type"))?.unwrap_or_default();
        let _ = writeln!(
            out,
            "  {devid} {} {kind} {} state {}: {}",
            dev.unwrap_or_default(),
            backend.kind,
            state.unwrap_or_default(),
            params.unwrap_or_default()
        );
    }
    Ok(out)
}
