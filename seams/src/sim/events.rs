//! Event channels: unbound and interdomain ports, pending bits that coalesce, and
//! waiters woken by the peer's notify.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use core::future::poll_fn;
use core::task::Poll;

use super::{EINVAL, ESRCH, State, Wait, WaitSlot, World, take_fault};
use crate::{DomId, Error, EventChannels, Port};

/// Port 0 is never allocated, as in Xen.
const FIRST_PORT: u32 = 1;
/// The 2-level ABI's limit on 64-bit guests.
const NR_PORTS: u32 = 4096;

#[derive(Default)]
pub(super) struct PortTable {
    ports: BTreeMap<u32, Entry>,
}

struct Entry {
    state: PortState,
    pending: bool,
    notifications: u64,
}

/// Where a port leads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortState {
    /// Offered to `remote` (or left behind when the peer closed its end).
    Unbound {
        remote: DomId,
    },
    Interdomain {
        remote: DomId,
        remote_port: Port,
    },
}

/// An open port as the sim sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortInfo {
    pub port: Port,
    pub state: PortState,
    /// An event arrived that no wait has consumed yet.
    pub pending: bool,
    /// Notifications delivered to this port, coalesced ones included (the peer's
    /// notifies, not counting dropped ones; the bind and close events are not counted).
    pub notifications: u64,
}

impl PortTable {
    fn allocate(&mut self, state: PortState, pending: bool) -> Result<u32, Error> {
        let free = (FIRST_PORT..NR_PORTS).find(|port| !self.ports.contains_key(port));
        let port = free.ok_or(Error::Exhausted)?;
        self.ports.insert(port, Entry { state, pending, notifications: 0 });
        Ok(port)
    }
}

impl State {
    fn port_entry(&mut self, domid: DomId, port: u32) -> Option<&mut Entry> {
        self.domains.get_mut(&domid)?.ports.ports.get_mut(&port)
    }

    /// Marks `domid`'s `port` pending and wakes its waiters.
    fn raise(&mut self, domid: DomId, port: u32) {
        if let Some(entry) = self.port_entry(domid, port) {
            entry.pending = true;
            self.wake_where(|wait| *wait == Wait::Event { domid, port });
        }
    }
}

impl World {
    /// `domid`'s open ports, lowest first.
    pub fn ports(&self, domid: DomId) -> Vec<PortInfo> {
        self.with(|state| {
            let Some(domain) = state.domains.get(&domid) else { return Vec::new() };
            let info = |(port, entry): (&u32, &Entry)| PortInfo {
                port: Port(*port),
                state: entry.state,
                pending: entry.pending,
                notifications: entry.notifications,
            };
            domain.ports.ports.iter().map(info).collect()
        })
    }

    /// The next `count` notifies by `domid` on connected ports succeed but deliver
    /// nothing.
    pub fn drop_next_notifications(&self, domid: DomId, count: u32) {
        self.with(|state| {
            if let Some(domain) = state.domain(domid) {
                domain.faults.notifications = count;
            }
        });
    }

    /// The next `count` port allocations and binds by `domid` fail with
    /// `Error::Exhausted`.
    pub fn fail_next_port_allocations(&self, domid: DomId, count: u32) {
        self.with(|state| {
            if let Some(domain) = state.domain(domid) {
                domain.faults.port_allocations = count;
            }
        });
    }
}

impl EventChannels for super::SimXen {
    fn alloc_unbound(&self, remote: DomId) -> Result<Port, Error> {
        self.world.with(|state| {
            let domain = state.domain(self.domid).ok_or(Error::Invalid)?;
            if take_fault(&mut domain.faults.port_allocations) {
                return Err(Error::Exhausted);
            }
            domain.ports.allocate(PortState::Unbound { remote }, false).map(Port)
        })
    }

    /// Fails with `Error::Xen(-ESRCH)` if `remote` is not a domain, and
    /// `Error::Xen(-EINVAL)` if its port is not unbound and offered to us.
    fn bind_interdomain(&self, remote: DomId, remote_port: u32) -> Result<Port, Error> {
        self.world.with(|state| {
            let remote_domain = state.domain(remote).ok_or(Error::Xen(-ESRCH))?;
            let offered = remote_domain.ports.ports.get(&remote_port).map(|e| e.state);
            if offered != Some(PortState::Unbound { remote: self.domid }) {
                return Err(Error::Xen(-EINVAL));
            }
            let domain = state.domain(self.domid).ok_or(Error::Invalid)?;
            if take_fault(&mut domain.faults.port_allocations) {
                return Err(Error::Exhausted);
            }
            let connected = PortState::Interdomain { remote, remote_port: Port(remote_port) };
            // Pending at once, as Xen does, so that nothing sent before is missed.
            let port = domain.ports.allocate(connected, true)?;
            if let Some(entry) = state.port_entry(remote, remote_port) {
                let back = PortState::Interdomain { remote: self.domid, remote_port: Port(port) };
                entry.state = back;
            }
            Ok(Port(port))
        })
    }

    /// `Error::Invalid` if the port is not open; a notify on a port whose peer closed
    /// (or never bound) is dropped silently, as in Xen.
    fn notify(&self, port: Port) -> Result<(), Error> {
        self.world.with(|state| {
            let domain = state.domain(self.domid).ok_or(Error::Invalid)?;
            let entry = domain.ports.ports.get(&port.0).ok_or(Error::Invalid)?;
            let PortState::Interdomain { remote, remote_port } = entry.state else {
                return Ok(());
            };
            if take_fault(&mut domain.faults.notifications) {
                return Ok(());
            }
            if let Some(entry) = state.port_entry(remote, remote_port.0) {
                entry.notifications += 1;
            }
            state.raise(remote, remote_port.0);
            Ok(())
        })
    }

    /// Completes when the port is pending (consuming it), or at once if the port is
    /// not open (closed, say).
    fn wait(&self, port: Port) -> impl Future<Output = ()> {
        let mut slot = WaitSlot::new(&self.world);
        let (world, domid) = (self.world.clone(), self.domid);
        poll_fn(move |cx| {
            world.with(|state| match state.port_entry(domid, port.0) {
                Some(entry) if !entry.pending => {
                    slot.park(state, cx, Wait::Event { domid, port: port.0 }, None);
                    Poll::Pending
                }
                Some(entry) => {
                    entry.pending = false;
                    slot.finish(state);
                    Poll::Ready(())
                }
                None => {
                    slot.finish(state);
                    Poll::Ready(())
                }
            })
        })
    }

    /// Frees the port and wakes its waiters; a connected peer's port goes back to
    /// unbound (offered to us) with an event pending, so that its waiter looks.
    fn close(&self, port: Port) -> Result<(), Error> {
        self.world.with(|state| {
            let domain = state.domain(self.domid).ok_or(Error::Invalid)?;
            let entry = domain.ports.ports.remove(&port.0).ok_or(Error::Invalid)?;
            let domid = self.domid;
            state.wake_where(|wait| *wait == Wait::Event { domid, port: port.0 });
            if let PortState::Interdomain { remote, remote_port } = entry.state {
                if let Some(peer) = state.port_entry(remote, remote_port.0) {
                    peer.state = PortState::Unbound { remote: domid };
                }
                state.raise(remote, remote_port.0);
            }
            Ok(())
        })
    }
}
