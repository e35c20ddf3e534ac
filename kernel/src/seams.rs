//! The kernel's side of the seams: `KernelXen` implements the `xen_seams` traits
//! that frontends and the device model are generic over, by delegating to the
//! kernel's modules (events, gnttab, mm, time, xs).

use crate::arch::hypercall::XenError;
use crate::{events, gnttab, mm, time, xs};
use alloc::string::String;
use alloc::vec::Vec;
use core::sync::atomic::{Ordering, fence};
use core::time::Duration;
use xen_seams::{
    Clock, DomId, Error, EventChannels, GrantRef, Grants, Memory, Permission, Port, SharedPage, Tx, Xen, Xenstore,
    XenstoreWatch, XsResult,
};

/// Xen as this domain sees it.
#[derive(Clone, Copy, Debug)]
pub struct KernelXen {
    domid: DomId,
}

impl KernelXen {
    /// Reads our domain id from xenstore (it is nowhere in start_info) and records it
    /// in `mm`, which refuses to map our own frames as another domain's.
    pub async fn new() -> XsResult<Self> {
        let domid = xs::read_string(xs::NO_TX, "domid").await?;
        let domid = domid.parse().map_err(|_| xen_seams::XenstoreError::Broken("xenstore's domid is not a number"))?;
        mm::set_own_domid(domid);
        Ok(KernelXen { domid })
    }
}

fn xen_error(e: XenError) -> Error {
    Error::Xen(e.0)
}

fn port(p: Port) -> events::Port {
    events::Port(p.0)
}

impl Clock for KernelXen {
    fn now_ns(&self) -> u64 {
        time::now_ns()
    }
    fn sleep(&self, duration: Duration) -> impl Future<Output = ()> {
        time::sleep(duration)
    }
}

impl EventChannels for KernelXen {
    fn alloc_unbound(&self, remote: DomId) -> Result<Port, Error> {
        events::alloc_unbound(remote).map(|p| Port(p.0)).map_err(xen_error)
    }
    fn bind_interdomain(&self, remote: DomId, remote_port: u32) -> Result<Port, Error> {
        events::bind_interdomain(remote, remote_port).map(|p| Port(p.0)).map_err(xen_error)
    }
    fn notify(&self, p: Port) -> Result<(), Error> {
        events::send(port(p)).map_err(xen_error)
    }
    fn wait(&self, p: Port) -> impl Future<Output = ()> {
        events::wait(port(p))
    }
    fn close(&self, p: Port) -> Result<(), Error> {
        events::close(port(p)).map_err(xen_error)
    }
}

impl SharedPage for mm::Page {
    fn frame(&self) -> u64 {
        self.mfn()
    }
    fn read(&self, offset: usize, out: &mut [u8]) {
        mm::read_page(self, offset, out);
    }
    fn write(&self, offset: usize, data: &[u8]) {
        mm::write_page(self, offset, data);
    }
    fn read_u32(&self, offset: usize) -> u32 {
        // One aligned 32-bit load: single-copy atomic, so a peer's increment across a
        // byte carry is seen wholly or not at all.
        let value = mm::read_u32(self, offset);
        // What the peer wrote before the index must be read after it.
        fence(Ordering::Acquire);
        value
    }
    fn write_u32(&self, offset: usize, value: u32) {
        // What we wrote before the index must be visible before it.
        fence(Ordering::Release);
        mm::write_u32(self, offset, value);
    }
}

impl Memory for KernelXen {
    type Page = mm::Page;
    fn alloc_page(&self) -> Result<mm::Page, Error> {
        mm::alloc_page().map_err(|_| Error::Exhausted)
    }
}

impl Grants for KernelXen {
    fn grant(&self, domid: DomId, frame: u64, readonly: bool) -> Result<GrantRef, Error> {
        gnttab::grant_access(domid, frame, readonly).map(|r| GrantRef(r.0)).map_err(|e| match e {
            gnttab::GrantError::TableFull => Error::Exhausted,
            gnttab::GrantError::Xen(x) => xen_error(x),
            _ => Error::Invalid,
        })
    }
    fn end(&self, grant: GrantRef) -> Result<(), Error> {
        gnttab::end_access(gnttab::GrantRef(grant.0)).map_err(|e| match e {
            gnttab::GrantError::InUse => Error::InUse,
            gnttab::GrantError::Xen(x) => xen_error(x),
            _ => Error::Invalid,
        })
    }
}

impl XenstoreWatch for xs::Watch {
    fn next(&self, limit: Duration) -> impl Future<Output = XsResult<String>> {
        self.next_event(limit)
    }
}

impl Xenstore for KernelXen {
    type Watch = xs::Watch;
    fn read(&self, tx: Tx, path: &str) -> impl Future<Output = XsResult<Vec<u8>>> {
        xs::read(tx, path)
    }
    fn write(&self, tx: Tx, path: &str, value: &[u8]) -> impl Future<Output = XsResult<()>> {
        xs::write(tx, path, value)
    }
    fn mkdir(&self, tx: Tx, path: &str) -> impl Future<Output = XsResult<()>> {
        xs::mkdir(tx, path)
    }
    fn rm(&self, tx: Tx, path: &str) -> impl Future<Output = XsResult<()>> {
        xs::rm(tx, path)
    }
    fn directory(&self, tx: Tx, path: &str) -> impl Future<Output = XsResult<Vec<String>>> {
        xs::directory(tx, path)
    }
    fn set_perms(&self, tx: Tx, path: &str, permissions: &[Permission]) -> impl Future<Output = XsResult<()>> {
        xs::set_perms(tx, path, permissions)
    }
    fn transaction_start(&self) -> impl Future<Output = XsResult<Tx>> {
        xs::transaction_start()
    }
    fn transaction_end(&self, tx: Tx, commit: bool) -> impl Future<Output = XsResult<()>> {
        xs::transaction_end(tx, commit)
    }
    fn watch(&self, path: &str) -> impl Future<Output = XsResult<xs::Watch>> {
        xs::watch(path)
    }
}

impl Xen for KernelXen {
    fn domid(&self) -> DomId {
        self.domid
    }

    fn log_backlog_bytes(&self) -> usize {
        crate::console::backlog_bytes()
    }
}

impl xen_seams::Spawn for KernelXen {
    fn spawn(&self, _name: &str, future: impl Future<Output = ()> + 'static) {
        crate::executor::spawn(future);
    }
}
