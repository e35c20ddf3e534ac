//! Finding a guest by name or domid, its stub domain and its uuid, in xenstore.

use crate::Error;
use crate::paths::{self, Uuid};
use crate::xs::{Tx, Xenstore};

/// A guest whose device model runs in a stub domain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Guest {
    pub name: String,
    pub domid: u32,
    pub stub: u32,
}

/// The domid of domain `target` (a name, or a domid that exists).
pub fn domid_of(xs: &mut Xenstore, target: &str) -> Result<(u32, String), Error> {
    if let Some(domid) = paths::parse_domid(target)
        && let Some(name) = xs.read(Tx::NONE, &format!("{}/name", paths::domain(domid)))?
    {
        return Ok((domid, name));
    }
    for entry in xs.directory(Tx::NONE, "/local/domain")? {
        let Some(domid) = paths::parse_domid(&entry) else { continue };
        if xs.read(Tx::NONE, &format!("{}/name", paths::domain(domid)))?.as_deref() == Some(target) {
            return Ok((domid, target.to_string()));
        }
    }
    Err(Error::NoSuchGuest(target.to_string()))
}

/// Guest `target` and its stub domain; refused if it has none.
pub fn find(xs: &mut Xenstore, target: &str) -> Result<Guest, Error> {
    let (domid, name) = domid_of(xs, target)?;
    let stub = xs.read(Tx::NONE, &paths::stub_domid(domid))?.as_deref().and_then(paths::parse_domid);
    match stub {
        Some(stub) if stub != 0 && stub != domid => Ok(Guest { name, domid, stub }),
        _ => Err(Error::NoStubDomain { name, domid }),
    }
}

/// The guest's VM uuid (libxl's lock and userdata files carry it).
pub fn uuid(xs: &mut Xenstore, domid: u32) -> Result<Uuid, Error> {
    let vm = xs.read(Tx::NONE, &format!("{}/vm", paths::domain(domid)))?;
    vm.as_deref().and_then(Uuid::from_vm_path).ok_or(Error::NoUuid { domid, vm })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::xs::sim_server;
    use xenstore::sim::Sim;

    /// dom0, guest `g` (3) with stub domain `g-dm` (4) as libxl writes them, and `plain` (5).
    pub fn domains() -> Sim {
        let mut sim = Sim::new();
        for (path, value) in [
            ("/local/domain/0/name", "Domain-0"),
            ("/local/domain/3/name", "g"),
            ("/local/domain/3/vm", "/vm/2a9c3f5e-0d1b-4c7a-9e8f-1234567890ab"),
            ("/local/domain/3/image/device-model-domid", "4"),
            ("/local/domain/4/name", "g-dm"),
            ("/local/domain/5/name", "plain"),
            ("/local/domain/5/vm", "/vm/../../etc"),
        ] {
            sim.write(path, value.as_bytes()).unwrap();
        }
        sim
    }

    #[test]
    fn finds_guests_by_name_or_domid_and_their_stub_domain() {
        let (mut xs, _thread) = sim_server::serve(domains());
        let g = Guest { name: "g".into(), domid: 3, stub: 4 };
        assert_eq!(find(&mut xs, "g").unwrap(), g);
        assert_eq!(find(&mut xs, "3").unwrap(), g);
        assert!(matches!(find(&mut xs, "Domain-0"), Err(Error::NoStubDomain { domid: 0, .. })));
        assert!(matches!(find(&mut xs, "plain"), Err(Error::NoStubDomain { domid: 5, .. })));
        assert!(matches!(find(&mut xs, "nobody"), Err(Error::NoSuchGuest(_))));
        assert!(matches!(find(&mut xs, "9"), Err(Error::NoSuchGuest(_))));
        assert_eq!(uuid(&mut xs, 3).unwrap().to_string(), "2a9c3f5e-0d1b-4c7a-9e8f-1234567890ab");
        assert!(matches!(uuid(&mut xs, 5), Err(Error::NoUuid { .. })));
    }
}
