//! Where libxl keeps what stubctl reads and writes: xenstore paths of domains and
//! vbds, libxl's lock and userdata files, and parsers for the values found there
//! (domids, the VM's uuid, a backend path, a backend's `params`). Values in xenstore
//! may have been written by a guest's domain: each parser refuses what libxl would
//! not have written, so no such value ends up in a file name or a command.

use crate::hotplug::{HOTPLUG_LIMIT, Script};
use std::fmt;

/// `/local/domain/<domid>`.
pub fn domain(domid: u32) -> String {
    format!("/local/domain/{domid}")
}

/// Where libxl writes the domid of a guest's stub domain (`libxl_get_stubdom_id`).
pub fn stub_domid(guest: u32) -> String {
    format!("/local/domain/{guest}/image/device-model-domid")
}

/// The stub domain's vbd frontend for disk `devid`.
pub fn frontend(stub: u32, devid: u32) -> String {
    format!("/local/domain/{stub}/device/vbd/{devid}")
}

/// A vbd's backend directory in dom0 (`kind` is `vbd` or `qdisk`).
pub fn backend(kind: BackendKind, frontend_domid: u32, devid: u32) -> String {
    format!("/local/domain/0/backend/{kind}/{frontend_domid}/{devid}")
}

/// libxl's own copy of a vbd's nodes (what `xl block-list` and `block-detach` read).
pub fn libxl_vbd(frontend_domid: u32, devid: u32) -> String {
    format!("/libxl/{frontend_domid}/device/vbd/{devid}")
}

/// Where libxl keeps its sockets, locks and stored configurations on this host, and
/// the hotplug script it runs for phy disks. [`Host::real`] is libxl's; the host tests
/// use their own directories and a stand-in script.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Host {
    /// libxl's run directory (`libxl__run_dir_path`).
    pub run_dir: String,
    /// libxl's userdata directory (`libxl__xen_dir_path`).
    pub lib_dir: String,
    /// The block hotplug script libxl names for phy disks, with libxl's limit.
    pub block_script: Script,
}

impl Host {
    pub fn real() -> Host {
        Host {
            run_dir: "/var/run/xen".to_string(),
            lib_dir: "/var/lib/xen".to_string(),
            block_script: Script { path: "/etc/xen/scripts/block".to_string(), limit: HOTPLUG_LIMIT },
        }
    }

    /// libxl's QMP socket for a guest (for a stub domain, vchan-socket-proxy's).
    pub fn qmp_socket(&self, guest: u32) -> String {
        format!("{}/qmp-libxl-{guest}", self.run_dir)
    }

    /// The zero-size file libxl (4.19+) gives a stub domain's CD-ROM PV disk for an
    /// empty drive.
    pub fn empty_cdrom(&self, guest: u32) -> String {
        format!("{}/empty-cdrom.{guest}", self.run_dir)
    }

    /// The lock libxl takes around device changes (`libxl-device-changes-lock`).
    pub fn device_changes_lock(&self) -> String {
        format!("{}/libxl-device-changes-lock", self.run_dir)
    }

    /// One of libxl's per-domain userdata files (`libxl__userdata_path`): `kind` `l`
    /// for a lock, `d` for data.
    pub fn userdata(&self, guest: u32, uuid: &Uuid, kind: char, what: &str) -> String {
        format!("{}/userdata-{kind}.{guest}.{uuid}.{what}", self.lib_dir)
    }

    /// The lock libxl takes around each QMP session with a guest's device model.
    pub fn qmp_lock(&self, guest: u32, uuid: &Uuid) -> String {
        self.userdata(guest, uuid, 'l', "qmp-socket-lock")
    }

    /// The lock libxl takes to change a guest's stored configuration.
    pub fn userdata_lock(&self, guest: u32, uuid: &Uuid) -> String {
        self.userdata(guest, uuid, 'l', "domain-userdata-lock")
    }

    /// The guest's stored configuration (`xl list -l`, `xl save` read it).
    pub fn libxl_json(&self, guest: u32, uuid: &Uuid) -> String {
        self.userdata(guest, uuid, 'd', "libxl-json")
    }
}

/// A domain id as xenstore writes it: plain decimal, below the reserved ids (0x7ff0).
pub fn parse_domid(text: &str) -> Option<u32> {
    if text.is_empty() || text.len() > 5 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok().filter(|domid| *domid < 0x7ff0)
}

/// A VM's uuid in libxl's form (`LIBXL_UUID_FMT`: 8-4-4-4-12 lowercase hex).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Uuid(String);

impl Uuid {
    pub fn parse(text: &str) -> Option<Uuid> {
        let groups: Vec<&str> = text.split('-').collect();
        let lens: Vec<usize> = groups.iter().map(|g| g.len()).collect();
        let hex = groups.iter().all(|g| g.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        (lens == [8, 4, 4, 4, 12] && hex).then(|| Uuid(text.to_string()))
    }

    /// The uuid in a domain's `vm` node (`/vm/<uuid>`).
    pub fn from_vm_path(vm: &str) -> Option<Uuid> {
        Uuid::parse(vm.strip_prefix("/vm/")?)
    }
}

impl fmt::Display for Uuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Which dom0 backend serves a vbd.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendKind {
    /// Linux's blkback (`type` phy), set up by the hotplug script.
    Vbd,
    /// dom0 QEMU's qdisk.
    Qdisk,
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackendKind::Vbd => "vbd",
            BackendKind::Qdisk => "qdisk",
        })
    }
}

/// The parts of a vbd backend path `/local/domain/0/backend/<kind>/<fe>/<devid>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackendPath {
    pub kind: BackendKind,
    pub frontend_domid: u32,
    pub devid: u32,
}

impl BackendPath {
    /// Parses a frontend's `backend` node; only dom0's vbd and qdisk backends are accepted.
    pub fn parse(path: &str) -> Option<BackendPath> {
        let rest = path.strip_prefix("/local/domain/0/backend/")?;
        let mut parts = rest.split('/');
        let kind = match parts.next()? {
            "vbd" => BackendKind::Vbd,
            "qdisk" => BackendKind::Qdisk,
            _ => return None,
        };
        let frontend_domid = parse_domid(parts.next()?)?;
        let devid = parts.next()?;
        if parts.next().is_some() || devid.is_empty() || devid.len() > 10 || !devid.bytes().all(|b| b.is_ascii_digit())
        {
            return None;
        }
        Some(BackendPath { kind, frontend_domid, devid: devid.parse().ok()? })
    }

    pub fn path(&self) -> String {
        backend(self.kind, self.frontend_domid, self.devid)
    }
}

/// The file behind a backend's `params`: phy's is the path itself, qdisk's is
/// `<format>:<path>` (libxl writes aio, qcow, qcow2, vhd or qed; `aio:` alone is an
/// empty drive). None for an empty drive.
pub fn medium_of_params(kind: BackendKind, params: &str) -> Option<String> {
    let path = match kind {
        BackendKind::Vbd => params,
        BackendKind::Qdisk => match params.split_once(':') {
            Some((format, path)) if ["aio", "raw", "qcow", "qcow2", "vhd", "qed"].contains(&format) => path,
            _ => params,
        },
    };
    (!path.is_empty()).then(|| path.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const UUID: &str = "2a9c3f5e-0d1b-4c7a-9e8f-1234567890ab";

    #[test]
    fn paths_are_libxls() {
        let uuid = Uuid::parse(UUID).unwrap();
        let host = Host::real();
        assert_eq!(stub_domid(3), "/local/domain/3/image/device-model-domid");
        assert_eq!(frontend(4, 5632), "/local/domain/4/device/vbd/5632");
        assert_eq!(backend(BackendKind::Qdisk, 4, 5632), "/local/domain/0/backend/qdisk/4/5632");
        assert_eq!(libxl_vbd(4, 5632), "/libxl/4/device/vbd/5632");
        assert_eq!(host.qmp_lock(3, &uuid), format!("/var/lib/xen/userdata-l.3.{UUID}.qmp-socket-lock"));
        assert_eq!(host.libxl_json(3, &uuid), format!("/var/lib/xen/userdata-d.3.{UUID}.libxl-json"));
        assert_eq!(host.userdata_lock(3, &uuid), format!("/var/lib/xen/userdata-l.3.{UUID}.domain-userdata-lock"));
        assert_eq!(host.qmp_socket(3), "/var/run/xen/qmp-libxl-3");
        assert_eq!(host.empty_cdrom(3), "/var/run/xen/empty-cdrom.3");
        assert_eq!(host.device_changes_lock(), "/var/run/xen/libxl-device-changes-lock");
    }

    #[test]
    fn domids_are_plain_decimal() {
        assert_eq!(parse_domid("0"), Some(0));
        assert_eq!(parse_domid("32751"), Some(32751));
        assert_eq!(parse_domid("32752"), None); // DOMID_FIRST_RESERVED and above
        assert_eq!(parse_domid("65535"), None);
        for bad in ["", "-1", "+3", " 3", "3 ", "0x10", "123456", "3\n"] {
            assert_eq!(parse_domid(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn uuids_only_in_libxls_form() {
        assert_eq!(Uuid::from_vm_path(&format!("/vm/{UUID}")).map(|u| u.to_string()), Some(UUID.to_string()));
        assert_eq!(Uuid::from_vm_path(UUID), None);
        assert_eq!(Uuid::parse(&UUID.to_uppercase()), None);
        assert_eq!(Uuid::parse("../../../../etc/passwd"), None);
        assert_eq!(Uuid::parse("2a9c3f5e-0d1b-4c7a-9e8f-1234567890ab-00"), None);
        assert_eq!(Uuid::parse(""), None);
    }

    #[test]
    fn backend_paths() {
        let parsed = BackendPath::parse("/local/domain/0/backend/qdisk/4/5632");
        assert_eq!(parsed, Some(BackendPath { kind: BackendKind::Qdisk, frontend_domid: 4, devid: 5632 }));
        assert_eq!(parsed.unwrap().path(), "/local/domain/0/backend/qdisk/4/5632");
        assert_eq!(BackendPath::parse("/local/domain/0/backend/vbd/4/768").map(|p| p.kind), Some(BackendKind::Vbd));
        for bad in [
            "/local/domain/1/backend/vbd/4/768",
            "/local/domain/0/backend/vif/4/0",
            "/local/domain/0/backend/vbd/4",
            "/local/domain/0/backend/vbd/4/768/x",
            "/local/domain/0/backend/vbd/x/768",
            "/local/domain/0/backend/vbd/4/-1",
            "",
        ] {
            assert_eq!(BackendPath::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn media_from_params() {
        assert_eq!(medium_of_params(BackendKind::Qdisk, "aio:/tmp/a.iso").as_deref(), Some("/tmp/a.iso"));
        assert_eq!(medium_of_params(BackendKind::Qdisk, "qcow2:/x:y.img").as_deref(), Some("/x:y.img"));
        assert_eq!(medium_of_params(BackendKind::Qdisk, "aio:"), None);
        assert_eq!(medium_of_params(BackendKind::Qdisk, ""), None);
        assert_eq!(medium_of_params(BackendKind::Vbd, "/tmp/aio:b.iso").as_deref(), Some("/tmp/aio:b.iso"));
        assert_eq!(medium_of_params(BackendKind::Vbd, ""), None);
    }
}
