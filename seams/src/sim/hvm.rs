//! A simulated HVM guest for device-model tests: its RAM, one ioreq slot per vCPU, and
//! Xen's side of the ioreq protocol.
//!
//! [`World::hvm_guest`] creates the guest; the device model under test (another domain
//! of the world) gets its ioreq server, memory and `dm_op`s through
//! [`DeviceModelHost`]. Test code plays the guest's CPU with [`SimGuest`]: `inb`,
//! `outw`, `ins` ... go through the routing Xen does (unclaimed ports and MMIO read as
//! all-ones and drop writes; a 4-byte write to 0xcf8 is latched; 0xcfc-0xcff become
//! PCI_CONFIG requests for a claimed function when the latch's enable bit is set, else
//! all-ones), then wait for the device model's answer as a vCPU would.
//!
//! Checked as Xen checks: a response to a slot that holds no request, a range that
//! overlaps one claimed already, an unmap of a range never claimed are refused. Not
//! modelled: the buffered ring, page clamping of `rep`, the guest's own interrupt
//! controllers (levels and edges are recorded, see [`IrqChange`]).

use alloc::collections::BTreeMap;
use alloc::vec;
use alloc::vec::Vec;
use core::future::{Future, poll_fn};
use core::task::Poll;

use xen_abi::hvm::{
    IOREQ_TYPE_COPY, IOREQ_TYPE_INVALIDATE, IOREQ_TYPE_PCI_CONFIG, IOREQ_TYPE_PIO, Ioreq, STATE_IOREQ_NONE,
    STATE_IOREQ_READY, STATE_IORESP_READY,
};

use super::{EINVAL, SimXen, Wait, WaitSlot, World};
use crate::hvm::{
    DeviceModelHost, GuestMemory, GuestMemoryError, HvmControl, IoRangeKind, IoreqServer, ShutdownReason,
};
use crate::{DomId, Error};

/// EEXIST and ENOENT as `Error::Xen(-errno)`.
pub const EEXIST: i64 = 17;
pub const ENOENT: i64 = 2;

const PAGE_BYTES: u64 = 4096;

/// An interrupt line the device model drove, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IrqChange {
    Isa { irq: u8, level: bool },
    PciIntx { device: u8, intx: u8, level: bool },
    LinkRoute { link: u8, isa_irq: u8 },
}

pub(super) struct GuestState {
    ram: Vec<u8>,
    slots: Vec<Slot>,
    /// the device model domain whose server exists, and what it claims
    server: Option<Server>,
    cf8: u32,
    isa_levels: [bool; 16],
    irq_log: Vec<IrqChange>,
    /// `modified_memory` calls: (first gfn, pages), oldest first
    modified: Vec<(u64, u32)>,
    shutdown: Option<ShutdownReason>,
    invalidations: u64,
    /// guest frames that are not RAM (holes) although inside `ram`
    holes: Vec<(u64, u64)>,
    /// the next forwarded request's event is lost (a test of the server's bounded wait)
    lose_next_event: bool,
}

#[derive(Clone, Copy, Default)]
struct Slot {
    req: Ioreq,
    /// an event on the vCPU's channel not yet consumed by a wait
    notified: bool,
}

struct Server {
    emulator: DomId,
    ranges: Vec<(IoRangeKind, u64, u64)>,
}

impl GuestState {
    fn claims(&self, kind: IoRangeKind, address: u64) -> bool {
        self.server
            .as_ref()
            .is_some_and(|s| s.ranges.iter().any(|&(k, a, b)| k == kind && a <= address && address <= b))
    }

    fn frame_ok(&self, gfn: u64) -> bool {
        gfn < self.ram.len() as u64 / PAGE_BYTES && !self.holes.iter().any(|&(a, b)| a <= gfn && gfn < b)
    }

    fn check_range(&self, gpa: u64, len: usize) -> Result<(usize, usize), GuestMemoryError> {
        let end = gpa.checked_add(len as u64).ok_or(GuestMemoryError::Overflow)?;
        if len > 0 {
            for gfn in gpa / PAGE_BYTES..=(end - 1) / PAGE_BYTES {
                if !self.frame_ok(gfn) {
                    return Err(GuestMemoryError::Unmapped { gfn });
                }
            }
        }
        Ok((gpa as usize, end as usize))
    }
}

/// The guest, as test code acting as its vCPUs and as Xen sees it.
#[derive(Clone)]
pub struct SimGuest {
    world: World,
    domid: DomId,
}

/// All-ones in the low `size` bytes (what Xen returns for an unclaimed read).
fn all_ones(size: u32) -> u64 {
    if size >= 8 { u64::MAX } else { (1u64 << (size * 8)) - 1 }
}

impl World {
    /// Creates HVM guest `domid` with `nr_vcpus` vCPUs and `ram_bytes` of RAM at
    /// guest-physical 0 (a whole number of pages).
    pub fn hvm_guest(&self, domid: DomId, nr_vcpus: u32, ram_bytes: usize) -> SimGuest {
        self.domain(domid);
        self.with(|state| {
            let guest = GuestState {
                ram: vec![0; ram_bytes - ram_bytes % PAGE_BYTES as usize],
                slots: vec![Slot::default(); nr_vcpus as usize],
                server: None,
                cf8: 0,
                isa_levels: [false; 16],
                irq_log: Vec::new(),
                modified: Vec::new(),
                shutdown: None,
                invalidations: 0,
                holes: Vec::new(),
                lose_next_event: false,
            };
            state.guests.insert(domid, guest);
        });
        SimGuest { world: self.clone(), domid }
    }
}

impl SimGuest {
    pub fn domid(&self) -> DomId {
        self.domid
    }

    fn with<T>(&self, f: impl FnOnce(&mut GuestState) -> T) -> T {
        let domid = self.domid;
        self.world.with(|state| f(state.guests.get_mut(&domid).expect("the guest exists")))
    }

    /// Runs one access as vCPU `vcpu`, Xen's routing included; returns what a read
    /// gets (for writes, what the device model answered).
    pub async fn io(&self, vcpu: u32, req: Ioreq) -> u64 {
        let routed = self.with(|guest| route(guest, req));
        match routed {
            Routed::Answered(value) => value,
            Routed::Forward(req) => self.forward(vcpu, req).await,
        }
    }

    /// Puts `req` in the vCPU's slot, notifies, and waits for IORESP_READY.
    async fn forward(&self, vcpu: u32, mut req: Ioreq) -> u64 {
        let (world, domid) = (self.world.clone(), self.domid);
        req.bits = (req.bits & !0x0f) | STATE_IOREQ_READY;
        world.with(|state| {
            let guest = state.guests.get_mut(&domid).expect("the guest exists");
            let slot = &mut guest.slots[vcpu as usize];
            assert_eq!(slot.req.state(), STATE_IOREQ_NONE, "vCPU {vcpu} issued a request while one is outstanding");
            slot.req = req;
            if core::mem::take(&mut guest.lose_next_event) {
                return;
            }
            slot.notified = true;
            state.wake_where(|w| *w == Wait::Ioreq { guest: domid, vcpu });
        });
        let mut waiter = WaitSlot::new(&world);
        poll_fn(move |cx| {
            world.with(|state| {
                let guest = state.guests.get_mut(&domid).expect("the guest exists");
                let slot = &mut guest.slots[vcpu as usize];
                if slot.req.state() == STATE_IORESP_READY {
                    slot.req.bits &= !0x0f;
                    let data = slot.req.data;
                    waiter.finish(state);
                    Poll::Ready(data)
                } else {
                    waiter.park(state, cx, Wait::IoreqResponse { guest: domid, vcpu }, None);
                    Poll::Pending
                }
            })
        })
        .await
    }

    fn port_req(port: u16, size: u32, read: bool, data: u64) -> Ioreq {
        Ioreq {
            addr: u64::from(port),
            data,
            count: 1,
            size,
            bits: Ioreq::make_bits(0, false, read, false),
            kind: IOREQ_TYPE_PIO,
            ..Ioreq::default()
        }
    }

    pub async fn inb(&self, port: u16) -> u8 {
        self.io(0, Self::port_req(port, 1, true, 0)).await as u8
    }
    pub async fn inw(&self, port: u16) -> u16 {
        self.io(0, Self::port_req(port, 2, true, 0)).await as u16
    }
    pub async fn inl(&self, port: u16) -> u32 {
        self.io(0, Self::port_req(port, 4, true, 0)).await as u32
    }
    pub async fn outb(&self, port: u16, value: u8) {
        self.io(0, Self::port_req(port, 1, false, value.into())).await;
    }
    pub async fn outw(&self, port: u16, value: u16) {
        self.io(0, Self::port_req(port, 2, false, value.into())).await;
    }
    pub async fn outl(&self, port: u16, value: u32) {
        self.io(0, Self::port_req(port, 4, false, value.into())).await;
    }

    /// `rep ins` of `count` elements of `size` bytes from `port` into guest memory at
    /// `gpa` (upwards), as one ioreq with data_is_ptr.
    pub async fn ins(&self, port: u16, size: u32, count: u32, gpa: u64) {
        let req = Ioreq {
            addr: u64::from(port),
            data: gpa,
            count,
            size,
            bits: Ioreq::make_bits(0, true, true, false),
            kind: IOREQ_TYPE_PIO,
            ..Ioreq::default()
        };
        self.io(0, req).await;
    }

    /// `rep outs` from guest memory at `gpa` to `port`.
    pub async fn outs(&self, port: u16, size: u32, count: u32, gpa: u64) {
        let req = Ioreq {
            addr: u64::from(port),
            data: gpa,
            count,
            size,
            bits: Ioreq::make_bits(0, true, false, false),
            kind: IOREQ_TYPE_PIO,
            ..Ioreq::default()
        };
        self.io(0, req).await;
    }

    /// An MMIO read of `size` bytes at `gpa`.
    pub async fn mmio_read(&self, gpa: u64, size: u32) -> u64 {
        let req = Ioreq {
            addr: gpa,
            count: 1,
            size,
            bits: Ioreq::make_bits(0, false, true, false),
            kind: IOREQ_TYPE_COPY,
            ..Ioreq::default()
        };
        self.io(0, req).await
    }

    pub async fn mmio_write(&self, gpa: u64, size: u32, value: u64) {
        let req = Ioreq {
            addr: gpa,
            data: value,
            count: 1,
            size,
            bits: Ioreq::make_bits(0, false, false, false),
            kind: IOREQ_TYPE_COPY,
            ..Ioreq::default()
        };
        self.io(0, req).await;
    }

    /// Config read through 0xcf8/0xcfc as a guest does (type 1 mechanism).
    pub async fn pci_read(&self, device: u8, function: u8, reg: u8, size: u32) -> u32 {
        self.outl(0xcf8, pci_address(device, function, reg)).await;
        let port = 0xcfc + u16::from(reg & 3);
        match size {
            1 => self.inb(port).await.into(),
            2 => self.inw(port).await.into(),
            _ => self.inl(port).await,
        }
    }

    pub async fn pci_write(&self, device: u8, function: u8, reg: u8, size: u32, value: u32) {
        self.outl(0xcf8, pci_address(device, function, reg)).await;
        let port = 0xcfc + u16::from(reg & 3);
        match size {
            1 => self.outb(port, value as u8).await,
            2 => self.outw(port, value as u16).await,
            _ => self.outl(port, value).await,
        }
    }

    /// Xen's IOREQ_TYPE_INVALIDATE broadcast after the guest gave memory back.
    pub async fn invalidate(&self, vcpu: u32) {
        let req = Ioreq {
            data: u64::MAX,
            count: 0,
            size: 4,
            bits: Ioreq::make_bits(0, false, false, false),
            kind: IOREQ_TYPE_INVALIDATE,
            ..Ioreq::default()
        };
        self.io(vcpu, req).await;
    }

    pub fn read_ram(&self, gpa: u64, out: &mut [u8]) {
        self.with(|g| out.copy_from_slice(&g.ram[gpa as usize..gpa as usize + out.len()]));
    }

    pub fn write_ram(&self, gpa: u64, data: &[u8]) {
        self.with(|g| g.ram[gpa as usize..gpa as usize + data.len()].copy_from_slice(data));
    }

    /// Makes guest frames `first..end` not RAM (mapping them fails).
    pub fn add_hole(&self, first_gfn: u64, end_gfn: u64) {
        self.with(|g| g.holes.push((first_gfn, end_gfn)));
    }

    /// The next request forwarded to the device model arrives without its event, as
    /// if the notification were lost.
    pub fn lose_next_event(&self) {
        self.with(|g| g.lose_next_event = true);
    }

    pub fn isa_irq_level(&self, irq: u8) -> bool {
        self.with(|g| g.isa_levels[usize::from(irq & 15)])
    }

    /// Every interrupt change the device model made, oldest first.
    pub fn irq_log(&self) -> Vec<IrqChange> {
        self.with(|g| g.irq_log.clone())
    }

    /// The frames the device model reported written (`modified_memory`): (first gfn,
    /// pages), oldest first.
    pub fn modified_memory_log(&self) -> Vec<(u64, u32)> {
        self.with(|g| g.modified.clone())
    }

    /// Rising edges of ISA IRQ `irq` so far.
    pub fn isa_rising_edges(&self, irq: u8) -> usize {
        self.with(|g| {
            let mut level = false;
            let mut edges = 0;
            for change in &g.irq_log {
                if let IrqChange::Isa { irq: i, level: l } = *change
                    && i == irq
                {
                    if l && !level {
                        edges += 1;
                    }
                    level = l;
                }
            }
            edges
        })
    }

    pub fn shutdown_reason(&self) -> Option<ShutdownReason> {
        self.with(|g| g.shutdown)
    }

    /// The ranges the server claims now (kind, first, last), in claim order.
    pub fn claimed(&self) -> Vec<(IoRangeKind, u64, u64)> {
        self.with(|g| g.server.as_ref().map(|s| s.ranges.clone()).unwrap_or_default())
    }

    pub fn has_server(&self) -> bool {
        self.with(|g| g.server.is_some())
    }

    pub fn invalidations(&self) -> u64 {
        self.with(|g| g.invalidations)
    }
}

/// The CF8 value that selects bus 0 `device`.`function` register `reg`.
pub fn pci_address(device: u8, function: u8, reg: u8) -> u32 {
    0x8000_0000 | (u32::from(device & 0x1f) << 11) | (u32::from(function & 7) << 8) | u32::from(reg & 0xfc)
}

enum Routed {
    Answered(u64),
    Forward(Ioreq),
}

/// What Xen does with an access before (or instead of) forwarding it.
fn route(guest: &mut GuestState, req: Ioreq) -> Routed {
    let unclaimed = Routed::Answered(if req.is_read() { all_ones(req.size) } else { 0 });
    match req.kind {
        IOREQ_TYPE_PIO => {
            let port = req.addr;
            if port == 0xcf8 && req.size == 4 && !req.is_read() && !req.data_is_ptr() {
                guest.cf8 = req.data as u32;
            }
            if (0xcfc..=0xcff).contains(&port) && guest.cf8 & 0x8000_0000 != 0 {
                let sbdf = u64::from((guest.cf8 >> 8) & 0xffff);
                if !guest.claims(IoRangeKind::PciConfig, sbdf) {
                    return unclaimed;
                }
                let reg = u64::from(guest.cf8 & 0xfc) | (port & 3);
                return Routed::Forward(Ioreq { addr: (sbdf << 32) | reg, kind: IOREQ_TYPE_PCI_CONFIG, ..req });
            }
            if guest.claims(IoRangeKind::Port, port) { Routed::Forward(req) } else { unclaimed }
        }
        IOREQ_TYPE_COPY => {
            if guest.claims(IoRangeKind::Memory, req.addr) {
                Routed::Forward(req)
            } else {
                unclaimed
            }
        }
        // Broadcasts go to every enabled server.
        _ if guest.server.is_some() => Routed::Forward(req),
        _ => unclaimed,
    }
}

/// The server the device model holds.
pub struct SimIoreqServer {
    world: World,
    guest: DomId,
    nr_vcpus: u32,
}

impl SimIoreqServer {
    fn with<T>(&self, f: impl FnOnce(&mut GuestState) -> T) -> T {
        let guest = self.guest;
        self.world.with(|state| f(state.guests.get_mut(&guest).expect("the guest exists")))
    }
}

impl Drop for SimIoreqServer {
    fn drop(&mut self) {
        self.with(|g| g.server = None);
    }
}

impl IoreqServer for SimIoreqServer {
    fn nr_vcpus(&self) -> u32 {
        self.nr_vcpus
    }

    fn pending(&self, vcpu: u32) -> Option<Ioreq> {
        self.with(|g| g.slots.get(vcpu as usize).map(|s| s.req).filter(|r| r.state() == STATE_IOREQ_READY))
    }

    fn respond(&self, vcpu: u32, data: u64) -> Result<(), Error> {
        let guest = self.guest;
        self.world.with(|state| {
            let g = state.guests.get_mut(&guest).ok_or(Error::Invalid)?;
            let slot = g.slots.get_mut(vcpu as usize).ok_or(Error::Invalid)?;
            if slot.req.state() != STATE_IOREQ_READY {
                // Xen would crash the domain for a state that moves the wrong way.
                return Err(Error::Xen(-EINVAL));
            }
            slot.req.data = data;
            slot.req.bits = (slot.req.bits & !0x0f) | STATE_IORESP_READY;
            state.wake_where(|w| *w == Wait::IoreqResponse { guest, vcpu });
            Ok(())
        })
    }

    fn wait(&self, vcpu: u32) -> impl Future<Output = ()> {
        let (world, guest) = (self.world.clone(), self.guest);
        let mut waiter = WaitSlot::new(&world);
        poll_fn(move |cx| {
            world.with(|state| {
                let Some(slot) = state.guests.get_mut(&guest).and_then(|g| g.slots.get_mut(vcpu as usize)) else {
                    waiter.finish(state);
                    return Poll::Ready(());
                };
                if slot.notified {
                    slot.notified = false;
                    waiter.finish(state);
                    Poll::Ready(())
                } else {
                    waiter.park(state, cx, Wait::Ioreq { guest, vcpu }, None);
                    Poll::Pending
                }
            })
        })
    }

    fn map_range(&self, kind: IoRangeKind, first: u64, last: u64) -> Result<(), Error> {
        self.with(|g| {
            let server = g.server.as_mut().ok_or(Error::Invalid)?;
            if first > last {
                return Err(Error::Xen(-EINVAL));
            }
            if server.ranges.iter().any(|&(k, a, b)| k == kind && a <= last && first <= b) {
                return Err(Error::Xen(-EEXIST));
            }
            server.ranges.push((kind, first, last));
            Ok(())
        })
    }

    fn unmap_range(&self, kind: IoRangeKind, first: u64, last: u64) -> Result<(), Error> {
        self.with(|g| {
            let server = g.server.as_mut().ok_or(Error::Invalid)?;
            let at = server.ranges.iter().position(|&r| r == (kind, first, last)).ok_or(Error::Xen(-ENOENT))?;
            server.ranges.remove(at);
            Ok(())
        })
    }
}

/// The guest's RAM as the device model reaches it.
pub struct SimGuestMemory {
    world: World,
    guest: DomId,
}

impl GuestMemory for SimGuestMemory {
    fn read(&self, gpa: u64, out: &mut [u8]) -> Result<(), GuestMemoryError> {
        let guest = self.guest;
        self.world.with(|state| {
            let g = state.guests.get(&guest).ok_or(GuestMemoryError::Unmapped { gfn: gpa / PAGE_BYTES })?;
            let (a, b) = g.check_range(gpa, out.len())?;
            out.copy_from_slice(&g.ram[a..b]);
            Ok(())
        })
    }

    fn write(&self, gpa: u64, data: &[u8]) -> Result<(), GuestMemoryError> {
        let guest = self.guest;
        self.world.with(|state| {
            let g = state.guests.get_mut(&guest).ok_or(GuestMemoryError::Unmapped { gfn: gpa / PAGE_BYTES })?;
            let (a, b) = g.check_range(gpa, data.len())?;
            g.ram[a..b].copy_from_slice(data);
            Ok(())
        })
    }

    fn invalidate(&self) {
        let guest = self.guest;
        self.world.with(|state| {
            if let Some(g) = state.guests.get_mut(&guest) {
                g.invalidations += 1;
            }
        });
    }
}

/// The guest's interrupt lines and shutdown as the device model drives them.
pub struct SimHvmControl {
    world: World,
    guest: DomId,
}

impl SimHvmControl {
    fn with<T>(&self, f: impl FnOnce(&mut GuestState) -> Result<T, Error>) -> Result<T, Error> {
        let guest = self.guest;
        self.world.with(|state| f(state.guests.get_mut(&guest).ok_or(Error::Invalid)?))
    }
}

impl HvmControl for SimHvmControl {
    fn set_isa_irq_level(&self, irq: u8, level: bool) -> Result<(), Error> {
        self.with(|g| {
            if irq > 15 {
                return Err(Error::Xen(-EINVAL));
            }
            g.isa_levels[usize::from(irq)] = level;
            g.irq_log.push(IrqChange::Isa { irq, level });
            Ok(())
        })
    }

    fn set_pci_intx_level(&self, device: u8, intx: u8, level: bool) -> Result<(), Error> {
        self.with(|g| {
            if device > 31 || intx > 3 {
                return Err(Error::Xen(-EINVAL));
            }
            g.irq_log.push(IrqChange::PciIntx { device, intx, level });
            Ok(())
        })
    }

    fn set_pci_link_route(&self, link: u8, isa_irq: u8) -> Result<(), Error> {
        self.with(|g| {
            if link > 3 || isa_irq > 15 {
                return Err(Error::Xen(-EINVAL));
            }
            g.irq_log.push(IrqChange::LinkRoute { link, isa_irq });
            Ok(())
        })
    }

    fn remote_shutdown(&self, reason: ShutdownReason) -> Result<(), Error> {
        self.with(|g| {
            g.shutdown = Some(reason);
            Ok(())
        })
    }

    fn modified_memory(&self, first_gfn: u64, nr_pages: u32) -> Result<(), Error> {
        self.with(|g| {
            let end = first_gfn.checked_add(u64::from(nr_pages)).ok_or(Error::Xen(-EINVAL))?;
            if nr_pages == 0 || end > (g.ram.len() as u64).div_ceil(PAGE_BYTES) {
                return Err(Error::Xen(-EINVAL));
            }
            g.modified.push((first_gfn, nr_pages));
            Ok(())
        })
    }
}

impl DeviceModelHost for SimXen {
    type Server = SimIoreqServer;
    type Memory = SimGuestMemory;
    type Control = SimHvmControl;

    fn create_ioreq_server(&self, guest: DomId) -> Result<SimIoreqServer, Error> {
        let emulator = self.domid;
        let nr_vcpus = self.world.with(|state| {
            let g = state.guests.get_mut(&guest).ok_or(Error::Xen(-super::ESRCH))?;
            if g.server.is_some() {
                return Err(Error::Exhausted);
            }
            g.server = Some(Server { emulator, ranges: Vec::new() });
            Ok(g.slots.len() as u32)
        })?;
        Ok(SimIoreqServer { world: self.world.clone(), guest, nr_vcpus })
    }

    fn guest_memory(&self, guest: DomId) -> SimGuestMemory {
        SimGuestMemory { world: self.world.clone(), guest }
    }

    fn hvm_control(&self, guest: DomId) -> SimHvmControl {
        SimHvmControl { world: self.world.clone(), guest }
    }
}

/// Guests by domid, in the world's state.
pub(super) type Guests = BTreeMap<DomId, GuestState>;

impl GuestState {
    #[allow(dead_code)]
    fn emulator(&self) -> Option<DomId> {
        self.server.as_ref().map(|s| s.emulator)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::Executor;

    #[test]
    fn unclaimed_ports_read_all_ones_and_claimed_ones_reach_the_server() {
        let world = World::new();
        let guest = world.hvm_guest(1, 1, 1 << 20);
        let dm = world.domain(2);
        let server = dm.create_ioreq_server(1).unwrap();
        server.map_range(IoRangeKind::Port, 0x3f8, 0x3ff).unwrap();
        assert_eq!(server.map_range(IoRangeKind::Port, 0x3fc, 0x400), Err(Error::Xen(-EEXIST)));
        let mut executor = Executor::new(&world);
        let g = guest.clone();
        let reads = executor.spawn("guest", async move { (g.inb(0x60).await, g.inb(0x3fd).await) });
        executor.spawn_background("dm", async move {
            loop {
                server.wait(0).await;
                if let Some(req) = server.pending(0) {
                    assert_eq!(req.addr, 0x3fd);
                    server.respond(0, 0x60).unwrap();
                }
            }
        });
        executor.run().unwrap();
        assert_eq!(reads.take(), Some((0xff, 0x60)));
    }

    #[test]
    fn pci_config_goes_through_the_cf8_latch_to_claimed_functions_only() {
        let world = World::new();
        let guest = world.hvm_guest(1, 1, 1 << 20);
        let server = world.domain(2).create_ioreq_server(1).unwrap();
        server.map_range(IoRangeKind::Port, 0xcf8, 0xcfb).unwrap();
        server.map_range(IoRangeKind::PciConfig, 0x08, 0x08).unwrap();
        let mut executor = Executor::new(&world);
        let g = guest.clone();
        let out = executor.spawn("guest", async move { (g.pci_read(1, 0, 0, 4).await, g.pci_read(2, 0, 0, 4).await) });
        executor.spawn_background("dm", async move {
            loop {
                server.wait(0).await;
                if let Some(req) = server.pending(0) {
                    let answer = if req.kind == IOREQ_TYPE_PCI_CONFIG {
                        assert_eq!(req.addr, 0x08 << 32);
                        0x7000_8086
                    } else {
                        0
                    };
                    server.respond(0, answer).unwrap();
                }
            }
        });
        executor.run().unwrap();
        assert_eq!(out.take(), Some((0x7000_8086, 0xffff_ffff)));
    }

    #[test]
    fn memory_holes_and_bounds_are_errors() {
        let world = World::new();
        let guest = world.hvm_guest(1, 1, 64 << 10);
        guest.add_hole(4, 5);
        let memory = world.domain(2).guest_memory(1);
        assert!(memory.write(0x1000, &[1, 2, 3]).is_ok());
        let mut back = [0u8; 3];
        memory.read(0x1000, &mut back).unwrap();
        assert_eq!(back, [1, 2, 3]);
        assert_eq!(memory.read(0x4000, &mut back), Err(GuestMemoryError::Unmapped { gfn: 4 }));
        assert_eq!(memory.read(64 << 10, &mut back), Err(GuestMemoryError::Unmapped { gfn: 16 }));
        assert_eq!(memory.read(u64::MAX - 1, &mut back), Err(GuestMemoryError::Overflow));
    }
}
