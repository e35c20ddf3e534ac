//! The stub domain's PV disks: the xenstore node set of a vbd as libxl 4.17 writes it
//! (frontend, dom0 backend, libxl's copy), written in one bounded transaction; the
//! hotplug script run as libxl runs it (`hotplug`); and libxl's removal sequence
//! (Closing, wait for Closed, script `remove`, nodes deleted).
//!
//! New PV disks are always `phy` vbds served by dom0's blkback through the block
//! script (a loop device for a file): dom0's QEMU that serves the stub domain's qdisk
//! disks at start is not known to pick up qdisk disks added later.

use crate::hotplug::{HotplugError, Script};
use crate::paths::{self, BackendKind, BackendPath};
use crate::xs::{Tx, Xenstore, XsClientError};
use crate::{Error, Progress};
use std::time::{Duration, Instant};
use xenstore::transaction::RetryPolicy;
use xenstore::wire::{Access, Permission};

/// libxl's limits: the backend reaching InitWait (`LIBXL_INIT_TIMEOUT`) and Closed
/// (`LIBXL_DESTROY_TIMEOUT`).
const INIT_LIMIT: Duration = Duration::from_secs(10);
const DESTROY_LIMIT: Duration = Duration::from_secs(10);
/// For dom0's QEMU to tear down a qdisk device it closed (it deletes the frontend's
/// and the backend's directories itself, some time after Closed).
const QDISK_CLEANUP_LIMIT: Duration = Duration::from_secs(10);
/// Attempts at adding a PV disk: a second one after a backend that never reached
/// InitWait (dom0's kernel keeps a device whose probe failed until its node goes) or
/// a block script that sat past its limit (killed; once seen on a slow 4.17 bed, in
/// an eject's add of the empty-cdrom file, where the very next add of a medium went
/// through).
const ADD_ATTEMPTS: u32 = 2;
/// xenbus states.
const STATE_INIT_WAIT: &str = "2";
const STATE_CLOSING: &str = "5";
const STATE_CLOSED: &str = "6";

/// A CD-ROM PV disk to give the stub domain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CdromVbd {
    pub stub: u32,
    pub devid: u32,
    /// The guest's name for the drive (`hdc`), the backend's `dev`.
    pub vdev: String,
    /// The file or block device behind it (for an empty drive, the empty-cdrom file).
    pub medium: String,
    /// The hotplug script that sets the backend up (libxl's block script).
    pub script: Script,
}

/// The nodes of one vbd: (relative key, value) for the frontend and the backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeSet {
    pub frontend_path: String,
    pub frontend: Vec<(&'static str, String)>,
    pub backend_path: String,
    pub backend: Vec<(&'static str, String)>,
    pub libxl_path: String,
}

impl CdromVbd {
    /// The nodes libxl 4.17's `device_disk_add` writes for a read-only phy CD-ROM.
    pub fn nodes(&self) -> NodeSet {
        let frontend_path = paths::frontend(self.stub, self.devid);
        let backend_path = paths::backend(BackendKind::Vbd, self.stub, self.devid);
        let frontend = vec![
            ("backend", backend_path.clone()),
            ("backend-id", "0".to_string()),
            ("state", "1".to_string()),
            ("virtual-device", self.devid.to_string()),
            ("device-type", "cdrom".to_string()),
            ("trusted", "1".to_string()),
            ("protocol", "x86_64-abi".to_string()),
        ];
        let backend = vec![
            ("frontend", frontend_path.clone()),
            ("params", self.medium.clone()),
            ("script", self.script.path.clone()),
            ("frontend-id", self.stub.to_string()),
            ("online", "1".to_string()),
            ("removable", "1".to_string()),
            ("bootable", "1".to_string()),
            ("state", "1".to_string()),
            ("dev", self.vdev.clone()),
            ("type", "phy".to_string()),
            ("mode", "r".to_string()),
            ("device-type", "cdrom".to_string()),
            ("discard-enable", "0".to_string()),
            ("specification", "xen".to_string()),
        ];
        NodeSet { frontend_path, frontend, backend_path, backend, libxl_path: paths::libxl_vbd(self.stub, self.devid) }
    }
}

/// Writes `nodes` in one transaction: the frontend owned by the stub domain (dom0 may
/// read), the backend owned by dom0 (the stub domain may read), libxl's copy.
fn write_nodes(xs: &mut Xenstore, stub: u32, nodes: &NodeSet) -> Result<(), XsClientError> {
    let stub_domid = u16::try_from(stub).unwrap_or(u16::MAX);
    let frontend_perms =
        [Permission { domid: stub_domid, access: Access::None }, Permission { domid: 0, access: Access::Read }];
    let backend_perms =
        [Permission { domid: 0, access: Access::None }, Permission { domid: stub_domid, access: Access::Read }];
    xs.transaction(RetryPolicy::default(), |xs, tx| {
        for path in [&nodes.frontend_path, &nodes.backend_path, &nodes.libxl_path] {
            xs.rm(tx, path)?;
        }
        xs.mkdir(tx, &nodes.frontend_path)?;
        xs.set_perms(tx, &nodes.frontend_path, &frontend_perms)?;
        xs.mkdir(tx, &nodes.backend_path)?;
        xs.set_perms(tx, &nodes.backend_path, &backend_perms)?;
        // The backend's keys before the frontend's `state` makes the frontend look.
        for (key, value) in &nodes.backend {
            xs.write(tx, &format!("{}/{key}", nodes.backend_path), value)?;
            xs.write(tx, &format!("{}/{key}", nodes.libxl_path), value)?;
        }
        xs.write(tx, &format!("{}/backend", nodes.libxl_path), &nodes.backend_path)?;
        for (key, value) in &nodes.frontend {
            xs.write(tx, &format!("{}/{key}", nodes.frontend_path), value)?;
        }
        Ok(())
    })
}

/// Polls `path` until `accept` holds for its value (None: the node is gone), up to `limit`.
fn wait_for(
    xs: &mut Xenstore,
    path: &str,
    limit: Duration,
    accept: impl Fn(Option<&str>) -> bool,
) -> Result<bool, XsClientError> {
    let deadline = Instant::now() + limit;
    loop {
        if accept(xs.read(Tx::NONE, path)?.as_deref()) {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Gives the stub domain PV disk `vbd`: nodes in one transaction, the backend's
/// InitWait awaited, the block script run. Partial work is removed again on failure;
/// a backend that does not reach InitWait, or a block script that is stuck, gets a
/// second attempt.
pub fn add(xs: &mut Xenstore, vbd: &CdromVbd, progress: &Progress) -> Result<(), Error> {
    let mut attempt = 1;
    loop {
        match add_once(xs, vbd, progress) {
            Err(Error::Timeout { what, secs }) if attempt < ADD_ATTEMPTS && what.contains("InitWait") => {
                progress.detail(&format!("{what}: nothing after {secs} s; once more"));
                attempt += 1;
            }
            Err(Error::Hotplug(HotplugError::Stuck { .. })) if attempt < ADD_ATTEMPTS => {
                progress.detail("the block script was stuck; once more");
                attempt += 1;
            }
            result => return result,
        }
    }
}

fn add_once(xs: &mut Xenstore, vbd: &CdromVbd, progress: &Progress) -> Result<(), Error> {
    let nodes = vbd.nodes();
    progress.detail(&format!("adding PV disk {} of domain {}: {}", vbd.devid, vbd.stub, vbd.medium));
    write_nodes(xs, vbd.stub, &nodes)?;
    let result = (|| {
        let state_path = format!("{}/state", nodes.backend_path);
        if !wait_for(xs, &state_path, INIT_LIMIT, |s| s == Some(STATE_INIT_WAIT))? {
            let frontend = xs.read(Tx::NONE, &format!("{}/backend", nodes.frontend_path))?;
            let why = if frontend.is_none() { " (its frontend was removed meanwhile)" } else { "" };
            return Err(Error::Timeout {
                what: format!("the backend {} to reach InitWait{why}", nodes.backend_path),
                secs: INIT_LIMIT.as_secs(),
            });
        }
        vbd.script.run(vbd.stub, vbd.devid, "add")?;
        match xs.read(Tx::NONE, &format!("{}/hotplug-status", nodes.backend_path))?.as_deref() {
            Some("connected") => Ok(()),
            other => {
                let why = xs.read(Tx::NONE, &format!("{}/hotplug-error", nodes.backend_path))?.unwrap_or_default();
                Err(Error::Hotplug(HotplugError::NotConnected {
                    script: vbd.script.path.clone(),
                    status: other.map(str::to_string),
                    why,
                }))
            }
        }
    })();
    if let Err(e) = &result {
        progress.detail(&format!("adding PV disk {} failed ({e}); removing what was written", vbd.devid));
        let _ = remove(xs, vbd.stub, vbd.devid, &vbd.script, progress);
    }
    result
}

/// Removes the stub domain's PV disk `devid` as libxl does: backend `online` 0 and
/// `state` Closing, Closed awaited ([`DESTROY_LIMIT`], then removed anyway, as libxl's
/// forced removal does), `block_script remove` for a backend that script set up, then
/// the frontend, backend and libxl directories. A disk that is not there is fine.
///
/// For a qdisk, dom0's QEMU deletes the frontend's and backend's directories itself
/// once it has closed the device, a moment after Closed (QEMU's xen-bus cleanup of an
/// offline device): that is awaited ([`QDISK_CLEANUP_LIMIT`]) so that QEMU cannot
/// delete the frontend of the PV disk added next under the same path (it did on the
/// 4.17 bed: dom0's kernel then found no frontend for the new vbd).
pub fn remove(
    xs: &mut Xenstore,
    stub: u32,
    devid: u32,
    block_script: &Script,
    progress: &Progress,
) -> Result<(), Error> {
    let frontend = paths::frontend(stub, devid);
    let backend_text = match xs.read(Tx::NONE, &format!("{frontend}/backend"))? {
        Some(text) => text,
        None => match xs.read(Tx::NONE, &format!("{}/backend", paths::libxl_vbd(stub, devid)))? {
            Some(text) => text,
            None => {
                xs.transaction(RetryPolicy::default(), |xs, tx| xs.rm(tx, &frontend))?;
                return Ok(());
            }
        },
    };
    let backend = BackendPath::parse(&backend_text).ok_or_else(|| Error::BadBackend(backend_text.clone()))?;
    let backend_path = backend.path();
    progress.detail(&format!("removing PV disk {devid} of domain {stub} ({backend_path})"));
    let state_path = format!("{backend_path}/state");
    xs.transaction(RetryPolicy::default(), |xs, tx| {
        if let Some(state) = xs.read(tx, &state_path)? {
            xs.write(tx, &format!("{backend_path}/online"), "0")?;
            if state != STATE_CLOSED {
                xs.write(tx, &state_path, STATE_CLOSING)?;
            }
        }
        Ok(())
    })?;
    if !wait_for(xs, &state_path, DESTROY_LIMIT, |s| s.is_none() || s == Some(STATE_CLOSED))? {
        progress.detail(&format!("{backend_path} did not reach Closed within 10 s; removing it anyway"));
    }
    if backend.kind == BackendKind::Qdisk && !wait_for(xs, &backend_path, QDISK_CLEANUP_LIMIT, |v| v.is_none())? {
        progress.detail(&format!("dom0's QEMU left {backend_path} for 10 s after Closed; removing it"));
    }
    let script = xs.read(Tx::NONE, &format!("{backend_path}/script"))?;
    if backend.kind == BackendKind::Vbd
        && script.as_deref() == Some(block_script.path.as_str())
        && let Err(e) = block_script.run(backend.frontend_domid, backend.devid, "remove")
    {
        progress.detail(&format!("hotplug remove: {e}"));
    }
    let libxl = paths::libxl_vbd(stub, devid);
    xs.transaction(RetryPolicy::default(), |xs, tx| {
        xs.rm(tx, &frontend)?;
        xs.rm(tx, &libxl)?;
        xs.rm(tx, &backend_path)
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xs::sim_server;
    use xenstore::sim::Sim;
    use xenstore::wire::Access;

    const BLOCK: &str = "/etc/xen/scripts/block";

    fn block() -> Script {
        Script { path: BLOCK.to_string(), limit: crate::hotplug::HOTPLUG_LIMIT }
    }

    #[test]
    fn nodes_go_in_with_libxls_permissions_and_come_out_again() {
        let vbd = CdromVbd { stub: 4, devid: 5632, vdev: "hdc".into(), medium: "/tmp/b.iso".into(), script: block() };
        let (mut xs, thread) = sim_server::serve(Sim::new());
        write_nodes(&mut xs, 4, &vbd.nodes()).unwrap();
        // A backend that already closed: removal needs no wait.
        xs.write(Tx::NONE, "/local/domain/0/backend/vbd/4/5632/state", STATE_CLOSED).unwrap();
        xs.write(Tx::NONE, "/local/domain/0/backend/vbd/4/5632/script", "/bin/true-not-block").unwrap();
        drop(xs);
        let sim = thread.join().unwrap();
        assert_eq!(sim.read("/local/domain/4/device/vbd/5632/virtual-device").as_deref(), Some(&b"5632"[..]));
        assert_eq!(sim.read("/local/domain/0/backend/vbd/4/5632/params").as_deref(), Some(&b"/tmp/b.iso"[..]));
        assert_eq!(sim.read("/libxl/4/device/vbd/5632/params").as_deref(), Some(&b"/tmp/b.iso"[..]));
        let frontend = sim.get_perms("/local/domain/4/device/vbd/5632").unwrap();
        assert_eq!((frontend[0].domid, frontend[0].access), (4, Access::None));
        assert_eq!((frontend[1].domid, frontend[1].access), (0, Access::Read));
        let backend = sim.get_perms("/local/domain/0/backend/vbd/4/5632").unwrap();
        assert_eq!((backend[0].domid, backend[1].domid, backend[1].access), (0, 4, Access::Read));
        // The keys inherit their directory's permissions.
        assert_eq!(sim.get_perms("/local/domain/0/backend/vbd/4/5632/params").unwrap(), backend);

        let (mut xs, thread) = sim_server::serve(sim);
        remove(&mut xs, 4, 5632, &block(), &Progress::new(false)).unwrap();
        // Removing what is gone is fine.
        remove(&mut xs, 4, 5632, &block(), &Progress::new(false)).unwrap();
        drop(xs);
        let sim = thread.join().unwrap();
        for gone in
            ["/local/domain/4/device/vbd/5632", "/local/domain/0/backend/vbd/4/5632", "/libxl/4/device/vbd/5632"]
        {
            assert!(sim.read(gone).is_none(), "{gone}");
        }
    }

    #[test]
    fn removal_closes_a_live_backend_first_and_refuses_a_foreign_backend_path() {
        let mut sim = Sim::new();
        for (path, value) in [
            ("/local/domain/4/device/vbd/5632/backend", "/local/domain/0/backend/qdisk/4/5632"),
            ("/local/domain/0/backend/qdisk/4/5632/state", "4"),
            ("/local/domain/4/device/vbd/768/backend", "/local/domain/7/backend/vbd/4/768"),
        ] {
            sim.write(path, value.as_bytes()).unwrap();
        }
        let (mut xs, thread) = sim_server::serve(sim);
        let started = Instant::now();
        // Nobody closes this backend: removed anyway after DESTROY_LIMIT, as libxl's forced removal.
        remove(&mut xs, 4, 5632, &block(), &Progress::new(false)).unwrap();
        assert!(started.elapsed() >= DESTROY_LIMIT);
        assert!(matches!(remove(&mut xs, 4, 768, &block(), &Progress::new(false)), Err(Error::BadBackend(_))));
        drop(xs);
        let sim = thread.join().unwrap();
        assert!(sim.read("/local/domain/0/backend/qdisk/4/5632").is_none());
        assert!(sim.read("/local/domain/4/device/vbd/768/backend").is_some());
    }

    #[test]
    fn node_set_is_libxls_for_a_phy_cdrom() {
        let vbd = CdromVbd { stub: 7, devid: 5632, vdev: "hdc".into(), medium: "/tmp/b.iso".into(), script: block() };
        let nodes = vbd.nodes();
        assert_eq!(nodes.frontend_path, "/local/domain/7/device/vbd/5632");
        assert_eq!(nodes.backend_path, "/local/domain/0/backend/vbd/7/5632");
        assert_eq!(nodes.libxl_path, "/libxl/7/device/vbd/5632");
        let get = |set: &[(&str, String)], key: &str| set.iter().find(|(k, _)| *k == key).map(|(_, v)| v.clone());
        assert_eq!(get(&nodes.frontend, "backend").as_deref(), Some("/local/domain/0/backend/vbd/7/5632"));
        assert_eq!(get(&nodes.frontend, "virtual-device").as_deref(), Some("5632"));
        assert_eq!(get(&nodes.frontend, "device-type").as_deref(), Some("cdrom"));
        assert_eq!(get(&nodes.backend, "frontend").as_deref(), Some("/local/domain/7/device/vbd/5632"));
        assert_eq!(get(&nodes.backend, "params").as_deref(), Some("/tmp/b.iso"));
        assert_eq!(get(&nodes.backend, "frontend-id").as_deref(), Some("7"));
        assert_eq!(get(&nodes.backend, "mode").as_deref(), Some("r"));
        assert_eq!(get(&nodes.backend, "type").as_deref(), Some("phy"));
        assert_eq!(get(&nodes.backend, "dev").as_deref(), Some("hdc"));
        assert_eq!(get(&nodes.backend, "script").as_deref(), Some(BLOCK));
        // Every key once.
        for set in [&nodes.frontend, &nodes.backend] {
            let mut keys: Vec<&str> = set.iter().map(|(k, _)| *k).collect();
            keys.sort();
            keys.dedup();
            assert_eq!(keys.len(), set.len());
        }
    }
}
