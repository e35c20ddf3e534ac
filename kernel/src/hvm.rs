//! The device model's reach into its HVM guest: the ioreq server, guest memory,
//! interrupt lines and shutdown, with `dm_op` and `XENMEM_acquire_resource`.
//!
//! Life of the ioreq server (Xen 4.17 has no default server: the guest reaches only
//! what a server claims): `create_ioreq_server` without a buffered ring, the
//! synchronous ioreq page acquired as a resource (Xen hands a PV caller the machine
//! frame, which is mapped untranslated with the guest as owner), `get_ioreq_server_info`
//! with no_gfns (so that Xen never takes the legacy gfn path), enable (which is what
//! writes each vCPU's event channel into its slot), then one interdomain binding per
//! vCPU. Dropping the server destroys it, unmaps the page and closes the ports.
//!
//! Guest memory goes through a small cache of foreign mappings of guest frames
//! (translated through the guest's p2m), dropped whole on IOREQ_TYPE_INVALIDATE.

use alloc::vec::Vec;
use core::cell::RefCell;
use core::future::Future;
use core::sync::atomic::{Ordering, fence};

use xen_abi::hvm::{
    self as abi, DmOp, DmOpArgs, DmOpBuf, IOREQ_BITS_OFFSET, IOREQ_DATA_OFFSET, IOREQ_SIZE_BYTES,
    IOREQ_VP_EPORT_OFFSET, Ioreq, MemAcquireResource, STATE_IOREQ_READY, STATE_IORESP_READY, dmop,
};
use xen_abi::hypercall as hc;
use xen_abi::memory::PAGE_SIZE;
use xen_seams::hvm::{DeviceModelHost, GuestMemory, GuestMemoryError, HvmControl, IoRangeKind, IoreqServer};
use xen_seams::{DomId, Error};

use crate::arch::hypercall::{self, XenError};
use crate::events::{self, Port};
use crate::mm::{MappingSlot, MmError};
use crate::seams::KernelXen;

/// The most vCPUs one synchronous ioreq page serves (4096 / 32).
const MAX_VCPUS: u32 = (PAGE_SIZE as usize / IOREQ_SIZE_BYTES) as u32;
/// Guest frames kept mapped at once.
const GUEST_MAPPINGS: usize = 64;

fn xen(e: XenError) -> Error {
    Error::Xen(e.0)
}

fn mm_error(e: MmError) -> Error {
    match e {
        MmError::Xen(x) => Error::Xen(x.0),
        MmError::OutOfPages => Error::Exhausted,
        MmError::BadPfn(_) | MmError::OwnFrame { .. } | MmError::OwnDomidUnknown => Error::Invalid,
    }
}

/// `HYPERVISOR_dm_op(guest, 1 or 2 buffers)` with `op` in the first; Xen writes the
/// union back for ops with outputs.
fn dm_op(guest: DomId, op: &mut DmOp, extra: Option<&mut [u8]>) -> Result<(), XenError> {
    let mut bufs =
        [DmOpBuf { ptr: (op as *mut DmOp) as u64, size: core::mem::size_of::<DmOp>() as u64 }, DmOpBuf::default()];
    let mut nr_bufs = 1u64;
    if let Some(extra) = extra {
        bufs[1] = DmOpBuf { ptr: extra.as_mut_ptr() as u64, size: extra.len() as u64 };
        nr_bufs = 2;
    }
    // SAFETY: `bufs` describes live buffers: `op` (a `struct xen_dm_op`, layout checked
    // in xen-abi) and, optionally, `extra`, both writable and borrowed for the call;
    // Xen copies in at most their sizes and writes back only into `op`.
    let ret = unsafe { hypercall::hypercall(hc::DM_OP, [u64::from(guest), nr_bufs, bufs.as_mut_ptr() as u64, 0, 0]) };
    if ret < 0 { Err(XenError(ret)) } else { Ok(()) }
}

/// A dm_op whose arguments are `args`; returns the union as Xen left it.
fn dm_op_args<A: DmOpArgs>(guest: DomId, args: &A) -> Result<[u8; 24], XenError> {
    let mut op = DmOp::new(A::OP, &args.to_bytes());
    dm_op(guest, &mut op, None)?;
    Ok(op.arg_bytes())
}

/// The machine frame of the ioreq server's synchronous page.
fn acquire_ioreq_page(guest: DomId, id: u16) -> Result<u64, XenError> {
    let mut frames = [0u64; 1];
    let mut arg = MemAcquireResource {
        domid: guest,
        kind: abi::XENMEM_RESOURCE_IOREQ_SERVER,
        id: u32::from(id),
        nr_frames: 1,
        pad: 0,
        frame: abi::RESOURCE_IOREQ_SERVER_FRAME_IOREQ_0,
        frame_list: frames.as_mut_ptr() as u64,
    };
    // SAFETY: `arg` is a live `struct xen_mem_acquire_resource` (layout checked in
    // xen-abi) and `frame_list` points at `frames`, room for `nr_frames` u64 that Xen
    // writes (for a PV caller it is output only).
    let ret = unsafe {
        hypercall::hypercall(hc::MEMORY_OP, [abi::XENMEM_ACQUIRE_RESOURCE as u64, (&raw mut arg) as u64, 0, 0, 0])
    };
    if ret < 0 {
        return Err(XenError(ret));
    }
    Ok(frames[0])
}

/// The guest's ioreq server, with its page mapped and every vCPU's port bound.
pub struct KernelIoreqServer {
    guest: DomId,
    id: u16,
    page: MappingSlot,
    ports: Vec<Port>,
}

impl KernelIoreqServer {
    fn create(guest: DomId) -> Result<Self, Error> {
        let nr_vcpus = u32::from_le_bytes(
            dm_op_args(guest, &abi::NrVcpus { vcpus: 0 }).map_err(xen)?[..4].try_into().unwrap_or([0; 4]),
        );
        if nr_vcpus == 0 || nr_vcpus > MAX_VCPUS {
            log::error!("ioreq server: the guest has {nr_vcpus} vCPUs; one ioreq page serves 1..={MAX_VCPUS}");
            return Err(Error::Invalid);
        }
        let created =
            dm_op_args(guest, &abi::CreateIoreqServer { handle_bufioreq: dmop::BUFIOREQ_OFF, pad: [0; 3], id: 0 })
                .map_err(xen)?;
        let id = u16::from_le_bytes([created[4], created[5]]);
        let destroy = |e: Error| {
            let _ = dm_op_args(guest, &abi::DestroyIoreqServer { id, pad: 0 });
            e
        };
        let page = MappingSlot::new().map_err(mm_error).map_err(destroy)?;
        let mfn = acquire_ioreq_page(guest, id).map_err(xen).map_err(destroy)?;
        page.map_machine_frame_of(guest, mfn, true).map_err(mm_error).map_err(destroy)?;
        // no_gfns: never let Xen fall back to the legacy gfn route for this server.
        dm_op_args(guest, &abi::GetIoreqServerInfo { id, flags: dmop::NO_GFNS, ..Default::default() })
            .map_err(xen)
            .map_err(destroy)?;
        dm_op_args(guest, &abi::SetIoreqServerState { id, enabled: 1, pad: 0 }).map_err(xen).map_err(destroy)?;
        let mut server = KernelIoreqServer { guest, id, page, ports: Vec::new() };
        for vcpu in 0..nr_vcpus {
            let remote = server.read_u32(vcpu as usize * IOREQ_SIZE_BYTES + IOREQ_VP_EPORT_OFFSET);
            // On failure, Drop destroys the server and closes the ports bound so far.
            let port = events::bind_interdomain(guest, remote).map_err(xen)?;
            server.ports.push(port);
        }
        log::info!("ioreq server {id} for domain {guest}: {nr_vcpus} vCPU(s), ioreq page mfn {mfn:#x}");
        Ok(server)
    }

    fn read_u32(&self, offset: usize) -> u32 {
        let mut bytes = [0u8; 4];
        self.page.read(offset, &mut bytes);
        u32::from_le_bytes(bytes)
    }

    fn range_op(&self, op: u32, kind: IoRangeKind, first: u64, last: u64) -> Result<(), Error> {
        let kind = match kind {
            IoRangeKind::Port => dmop::IO_RANGE_PORT,
            IoRangeKind::Memory => dmop::IO_RANGE_MEMORY,
            IoRangeKind::PciConfig => dmop::IO_RANGE_PCI,
        };
        let range = abi::IoreqServerRange { id: self.id, pad: 0, kind, start: first, end: last };
        let mut op = DmOp::new(op, &abi::range_bytes(&range));
        dm_op(self.guest, &mut op, None).map_err(xen)
    }
}

impl Drop for KernelIoreqServer {
    fn drop(&mut self) {
        for port in self.ports.drain(..) {
            let _ = events::close(port);
        }
        if let Err(e) = dm_op_args(self.guest, &abi::DestroyIoreqServer { id: self.id, pad: 0 }) {
            log::warn!("ioreq server {}: destroy failed (errno {})", self.id, e.0);
        }
        // The slot unmaps the page when it drops.
    }
}

impl IoreqServer for KernelIoreqServer {
    fn nr_vcpus(&self) -> u32 {
        self.ports.len() as u32
    }

    fn pending(&self, vcpu: u32) -> Option<Ioreq> {
        if vcpu >= self.nr_vcpus() {
            return None;
        }
        let base = vcpu as usize * IOREQ_SIZE_BYTES;
        if self.page.read_u8(base + IOREQ_BITS_OFFSET) & 0x0f != STATE_IOREQ_READY {
            return None;
        }
        // Everything Xen wrote before READY is read after it.
        fence(Ordering::Acquire);
        let mut bytes = [0u8; IOREQ_SIZE_BYTES];
        self.page.read(base, &mut bytes);
        Some(Ioreq::from_bytes(&bytes))
    }

    fn respond(&self, vcpu: u32, data: u64) -> Result<(), Error> {
        let port = *self.ports.get(vcpu as usize).ok_or(Error::Invalid)?;
        let base = vcpu as usize * IOREQ_SIZE_BYTES;
        let bits = self.page.read_u8(base + IOREQ_BITS_OFFSET);
        if bits & 0x0f != STATE_IOREQ_READY {
            // Never move the state backwards: Xen crashes the guest for that.
            return Err(Error::Invalid);
        }
        self.page.write_u64(base + IOREQ_DATA_OFFSET, data);
        // The data is visible before the state that says it is there.
        fence(Ordering::Release);
        self.page.write_u8(base + IOREQ_BITS_OFFSET, (bits & !0x0f) | STATE_IORESP_READY);
        events::send(port).map_err(xen)
    }

    fn wait(&self, vcpu: u32) -> impl Future<Output = ()> {
        let port = self.ports.get(vcpu as usize).copied();
        async move {
            match port {
                Some(port) => events::wait(port).await,
                // No such vCPU: never wakes (callers only wait on their own vCPUs).
                None => core::future::pending().await,
            }
        }
    }

    fn map_range(&self, kind: IoRangeKind, first: u64, last: u64) -> Result<(), Error> {
        self.range_op(dmop::MAP_IO_RANGE_TO_IOREQ_SERVER, kind, first, last)
    }

    fn unmap_range(&self, kind: IoRangeKind, first: u64, last: u64) -> Result<(), Error> {
        self.range_op(dmop::UNMAP_IO_RANGE_FROM_IOREQ_SERVER, kind, first, last)
    }
}

/// One cached mapping of a guest frame.
struct Mapping {
    gfn: u64,
    writable: bool,
    slot: MappingSlot,
}

/// The guest's RAM through a small cache of foreign mappings.
pub struct KernelGuestMemory {
    guest: DomId,
    cache: RefCell<Cache>,
}

#[derive(Default)]
struct Cache {
    mappings: Vec<Mapping>,
    /// the entry to replace next when the cache is full
    next_victim: usize,
}

impl KernelGuestMemory {
    /// Runs `access` on the mapping of `gfn` (writable if `write`), mapping it if needed.
    fn with_frame<T>(
        &self,
        gfn: u64,
        write: bool,
        access: impl FnOnce(&MappingSlot) -> T,
    ) -> Result<T, GuestMemoryError> {
        let mut cache = self.cache.borrow_mut();
        if let Some(m) = cache.mappings.iter().find(|m| m.gfn == gfn && (m.writable || !write)) {
            return Ok(access(&m.slot));
        }
        let unmapped = GuestMemoryError::Unmapped { gfn };
        // Map writable when we can (one mapping serves both directions); frames the
        // guest holds read-only (ROM) are mapped read-only for reads.
        let index = match cache.mappings.iter().position(|m| m.gfn == gfn) {
            Some(index) => index,
            None if cache.mappings.len() < GUEST_MAPPINGS => {
                let slot = MappingSlot::new().map_err(|_| unmapped)?;
                cache.mappings.push(Mapping { gfn: u64::MAX, writable: false, slot });
                cache.mappings.len() - 1
            }
            None => {
                let victim = cache.next_victim % GUEST_MAPPINGS;
                cache.next_victim = victim + 1;
                victim
            }
        };
        let entry = &mut cache.mappings[index];
        entry.gfn = u64::MAX;
        let writable = match entry.slot.map_guest_frame(self.guest, gfn, true) {
            Ok(()) => true,
            Err(_) if !write => {
                entry.slot.map_guest_frame(self.guest, gfn, false).map_err(|_| unmapped)?;
                false
            }
            Err(_) => return Err(unmapped),
        };
        entry.gfn = gfn;
        entry.writable = writable;
        Ok(access(&entry.slot))
    }

    /// Splits `len` bytes at `gpa` into (gfn, offset in page, offset in buffer, length).
    fn pieces(gpa: u64, len: usize) -> Result<impl Iterator<Item = (u64, usize, usize, usize)>, GuestMemoryError> {
        gpa.checked_add(len as u64).ok_or(GuestMemoryError::Overflow)?;
        let mut done = 0usize;
        Ok(core::iter::from_fn(move || {
            if done >= len {
                return None;
            }
            let at = gpa + done as u64;
            let in_page = (at % PAGE_SIZE) as usize;
            let n = (PAGE_SIZE as usize - in_page).min(len - done);
            let piece = (at / PAGE_SIZE, in_page, done, n);
            done += n;
            Some(piece)
        }))
    }
}

impl GuestMemory for KernelGuestMemory {
    fn read(&self, gpa: u64, out: &mut [u8]) -> Result<(), GuestMemoryError> {
        for (gfn, offset, at, n) in Self::pieces(gpa, out.len())? {
            self.with_frame(gfn, false, |slot| slot.read(offset, &mut out[at..at + n]))?;
        }
        Ok(())
    }

    fn write(&self, gpa: u64, data: &[u8]) -> Result<(), GuestMemoryError> {
        for (gfn, offset, at, n) in Self::pieces(gpa, data.len())? {
            self.with_frame(gfn, true, |slot| slot.write(offset, &data[at..at + n]))?;
        }
        Ok(())
    }

    fn invalidate(&self) {
        let mut cache = self.cache.borrow_mut();
        for mapping in cache.mappings.iter_mut() {
            let _ = mapping.slot.unmap();
            mapping.gfn = u64::MAX;
        }
    }
}

/// Interrupt lines and shutdown of the guest.
pub struct KernelHvmControl {
    guest: DomId,
}

impl HvmControl for KernelHvmControl {
    fn set_isa_irq_level(&self, irq: u8, level: bool) -> Result<(), Error> {
        dm_op_args(self.guest, &abi::SetIsaIrqLevel { isa_irq: irq, level: u8::from(level) }).map(drop).map_err(xen)
    }

    fn set_pci_intx_level(&self, device: u8, intx: u8, level: bool) -> Result<(), Error> {
        let args = abi::SetPciIntxLevel { domain: 0, bus: 0, device, intx, level: u8::from(level) };
        dm_op_args(self.guest, &args).map(drop).map_err(xen)
    }

    fn set_pci_link_route(&self, link: u8, isa_irq: u8) -> Result<(), Error> {
        dm_op_args(self.guest, &abi::SetPciLinkRoute { link, isa_irq }).map(drop).map_err(xen)
    }

    fn remote_shutdown(&self, reason: xen_seams::hvm::ShutdownReason) -> Result<(), Error> {
        dm_op_args(self.guest, &abi::RemoteShutdown { reason: reason as u32 }).map(drop).map_err(xen)
    }

    fn modified_memory(&self, first_gfn: u64, nr_pages: u32) -> Result<(), Error> {
        // One extent in the second buffer; Xen restarts the hypercall itself when it
        // preempts a long one (the extent and `opaque` record the progress).
        let extent = abi::ModifiedMemoryExtent { nr: nr_pages, pad: 0, first_pfn: first_gfn };
        let mut extent_bytes = [0u8; 16];
        extent_bytes[0..4].copy_from_slice(&extent.nr.to_le_bytes());
        extent_bytes[8..16].copy_from_slice(&extent.first_pfn.to_le_bytes());
        let args = abi::ModifiedMemory { nr_extents: 1, opaque: 0 };
        let mut op = DmOp::new(abi::ModifiedMemory::OP, &args.to_bytes());
        dm_op(self.guest, &mut op, Some(&mut extent_bytes)).map_err(xen)
    }
}

impl DeviceModelHost for KernelXen {
    type Server = KernelIoreqServer;
    type Memory = KernelGuestMemory;
    type Control = KernelHvmControl;

    fn create_ioreq_server(&self, guest: DomId) -> Result<KernelIoreqServer, Error> {
        KernelIoreqServer::create(guest)
    }

    fn guest_memory(&self, guest: DomId) -> KernelGuestMemory {
        KernelGuestMemory { guest, cache: RefCell::new(Cache::default()) }
    }

    fn hvm_control(&self, guest: DomId) -> KernelHvmControl {
        KernelHvmControl { guest }
    }
}
