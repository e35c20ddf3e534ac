//! What the toolstack (libxl) writes to xenstore before a PV frontend starts: the one
//! fixture every frontend's host tests begin with.

use alloc::format;
use alloc::string::String;

use xenstore::wire::{Access, Permission};

use super::World;
use crate::DomId;

/// A PV device as the toolstack names it: its kind (`vbd`, `vif`, `console`), its
/// device id, the frontend's domain and the backend's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PvDevice<'a> {
    pub kind: &'a str,
    pub devid: u32,
    pub frontend: DomId,
    pub backend: DomId,
}

impl PvDevice<'_> {
    /// `/local/domain/<frontend>/device/<kind>/<devid>`.
    pub fn front_path(&self) -> String {
        format!("/local/domain/{}/device/{}/{}", self.frontend, self.kind, self.devid)
    }

    /// `/local/domain/<backend>/backend/<kind>/<frontend>/<devid>`.
    pub fn back_path(&self) -> String {
        format!("/local/domain/{}/backend/{}/{}/{}", self.backend, self.kind, self.frontend, self.devid)
    }
}

impl World {
    /// Attaches `device` as libxl does before either end starts: the frontend's
    /// directory with `backend`, `backend-id`, `state` = 1 (Initialising) and
    /// `front_nodes` (netfront's `mac`, say), owned by the frontend and readable by the
    /// backend; the backend's directory with `frontend` and `state` = 1, owned by the
    /// backend and readable by the frontend; the frontend's `device/<kind>` directory
    /// the frontend's own. Watches fire as for any dom0 write.
    pub fn toolstack(&self, device: PvDevice<'_>, front_nodes: &[(&str, &str)]) {
        let (front, back) = (device.front_path(), device.back_path());
        let owned_by = |owner: DomId, reader: DomId| {
            [Permission { domid: owner, access: Access::None }, Permission { domid: reader, access: Access::Read }]
        };
        let front_owned = owned_by(device.frontend, device.backend);
        let back_owned = owned_by(device.backend, device.frontend);
        let backend_id = format!("{}", device.backend);
        let front_entries = [("backend", back.as_str()), ("backend-id", &backend_id), ("state", "1")];
        self.with_xenstore(|xs| {
            for (key, value) in front_entries.iter().chain(front_nodes) {
                let path = format!("{front}/{key}");
                xs.write(&path, value.as_bytes()).expect("the toolstack writes the frontend's nodes");
                xs.set_perms(&path, &front_owned).expect("the toolstack sets the frontend's permissions");
            }
            xs.set_perms(&front, &front_owned).expect("the toolstack owns the frontend's directory");
            // libxl makes the domain's `device` directory (and each kind's, on first
            // use) the domain's own, so that it can list and watch its devices.
            let domain_owned = [Permission { domid: device.frontend, access: Access::None }];
            let device_dir = format!("/local/domain/{}/device", device.frontend);
            for dir in [device_dir.clone(), format!("{device_dir}/{}", device.kind)] {
                xs.set_perms(&dir, &domain_owned).expect("the toolstack gives the domain its device directory");
            }
            for (key, value) in [("frontend", front.as_str()), ("state", "1")] {
                let path = format!("{back}/{key}");
                xs.write(&path, value.as_bytes()).expect("the toolstack writes the backend's nodes");
                xs.set_perms(&path, &back_owned).expect("the toolstack sets the backend's permissions");
            }
            xs.set_perms(&back, &back_owned).expect("the toolstack owns the backend's directory");
        });
    }
}
