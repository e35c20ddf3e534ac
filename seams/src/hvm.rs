//! The seams a device model uses to serve an HVM guest: its ioreq server, its memory,
//! its interrupt lines and its shutdown.
//!
//! Xen forwards every port, MMIO range and PCI function a device model registered to
//! that model's ioreq server: one synchronous request slot per guest vCPU, an event
//! channel per vCPU, and the rule that every request is answered (or the vCPU waits
//! forever). Guest memory is reached by mapping guest frames; interrupts and shutdown
//! are `dm_op`s on the guest. The kernel implements these with hypercalls, `sim` with a
//! simulated guest whose test code issues requests as Xen would.
//!
//! As everywhere in the seams, memory another domain writes (the ioreq page, guest RAM)
//! is only copied in and out.

use core::fmt;
use core::future::Future;

pub use xen_abi::hvm::Ioreq;
pub use xen_abi::sched::ShutdownReason;

use crate::{DomId, Error};

/// What an ioreq-server range covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IoRangeKind {
    /// I/O ports (`first..=last`)
    Port,
    /// guest-physical MMIO addresses (`first..=last`)
    Memory,
    /// PCI functions by SBDF (segment 0: `bus << 8 | device << 3 | function`)
    PciConfig,
}

/// The guest's ioreq server as this device model sees it: created, its ioreq page
/// mapped, enabled and every vCPU's event channel bound. Dropping it destroys it.
pub trait IoreqServer {
    /// The guest's vCPUs: slots `0..nr_vcpus()`.
    fn nr_vcpus(&self) -> u32;

    /// The request vCPU `vcpu` has waiting (state IOREQ_READY), copied out after the
    /// state was seen; None when its slot holds no new request.
    fn pending(&self, vcpu: u32) -> Option<Ioreq>;

    /// Answers vCPU `vcpu`'s request: stores `data` (the value a read returns; ignored
    /// by Xen for writes), then, ordered after it, state IORESP_READY, and notifies.
    fn respond(&self, vcpu: u32, data: u64) -> Result<(), Error>;

    /// Completes at the next event on vCPU `vcpu`'s channel. Events coalesce and may be
    /// spurious: check [`pending`](Self::pending) after waking.
    fn wait(&self, vcpu: u32) -> impl Future<Output = ()>;

    /// Claims `first..=last` of `kind` for this server (Xen refuses an overlap with a
    /// range it holds already).
    fn map_range(&self, kind: IoRangeKind, first: u64, last: u64) -> Result<(), Error>;

    /// Gives back a range claimed with exactly these bounds.
    fn unmap_range(&self, kind: IoRangeKind, first: u64, last: u64) -> Result<(), Error>;
}

/// Why guest memory could not be reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestMemoryError {
    /// The guest frame is not RAM (a hole, MMIO, unpopulated) or Xen refused to map it.
    Unmapped { gfn: u64 },
    /// The range wraps around the address space.
    Overflow,
}

impl fmt::Display for GuestMemoryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GuestMemoryError::Unmapped { gfn } => write!(f, "guest frame {gfn:#x} cannot be mapped"),
            GuestMemoryError::Overflow => write!(f, "guest address range wraps around"),
        }
    }
}

/// The guest's RAM, by guest-physical address. Copies may cross page boundaries.
pub trait GuestMemory {
    fn read(&self, gpa: u64, out: &mut [u8]) -> Result<(), GuestMemoryError>;
    fn write(&self, gpa: u64, data: &[u8]) -> Result<(), GuestMemoryError>;
    /// Forgets every cached mapping (IOREQ_TYPE_INVALIDATE: the guest gave frames back).
    fn invalidate(&self);
}

/// `dm_op`s on the guest that are not about the ioreq server.
pub trait HvmControl {
    /// Drives ISA IRQ line `irq` (0..=15).
    fn set_isa_irq_level(&self, irq: u8, level: bool) -> Result<(), Error>;
    /// Drives INTx pin `intx` (0 = INTA) of PCI device `device` on bus 0.
    fn set_pci_intx_level(&self, device: u8, intx: u8, level: bool) -> Result<(), Error>;
    /// Routes PCI interrupt link `link` (0..=3) to ISA IRQ `isa_irq` (0 = disabled).
    fn set_pci_link_route(&self, link: u8, isa_irq: u8) -> Result<(), Error>;
    /// Shuts the guest down (poweroff, reboot, crash) as its toolstack configured.
    fn remote_shutdown(&self, reason: ShutdownReason) -> Result<(), Error>;
    /// Tells Xen that the device model wrote guest frames `first_gfn..first_gfn +
    /// nr_pages` (`XEN_DMOP_modified_memory`), so that a live save's dirty log has
    /// them; Xen ignores it while the guest's log-dirty mode is off.
    fn modified_memory(&self, first_gfn: u64, nr_pages: u32) -> Result<(), Error>;
}

/// What a domain that is an HVM guest's device model can reach of that guest.
pub trait DeviceModelHost {
    type Server: IoreqServer;
    type Memory: GuestMemory;
    type Control: HvmControl;

    /// Creates and enables an ioreq server for `guest` (no buffered ring) with every
    /// vCPU's channel bound; it claims nothing until told to.
    fn create_ioreq_server(&self, guest: DomId) -> Result<Self::Server, Error>;
    /// Access to `guest`'s RAM through a small cache of mappings.
    fn guest_memory(&self, guest: DomId) -> Self::Memory;
    fn hvm_control(&self, guest: DomId) -> Self::Control;
}

/// The ioreq types a device model sees (`Ioreq::kind`).
pub mod ioreq_type {
    pub use xen_abi::hvm::{
        IOREQ_TYPE_COPY as COPY, IOREQ_TYPE_INVALIDATE as INVALIDATE, IOREQ_TYPE_PCI_CONFIG as PCI_CONFIG,
        IOREQ_TYPE_PIO as PIO, IOREQ_TYPE_TIMEOFFSET as TIMEOFFSET,
    };
}
