//! The device-model interface to an HVM guest (hvm/ioreq.h, hvm/dm_op.h, memory.h):
//! synchronous ioreqs, `dm_op` sub-operations and `XENMEM_acquire_resource`.
//!
//! A device model creates an ioreq server for its guest with `dm_op`, maps the server's
//! synchronous ioreq page (one [`Ioreq`] slot per vCPU) with `acquire_resource`, binds
//! each vCPU's event channel and answers every request Xen forwards. `tests/hvm_layout.rs`
//! checks every struct and constant here against the installed headers.

/// `ioreq_t` state values (the low nibble of [`Ioreq::bits`]).
pub const STATE_IOREQ_NONE: u8 = 0;
pub const STATE_IOREQ_READY: u8 = 1;
pub const STATE_IOREQ_INPROCESS: u8 = 2;
pub const STATE_IORESP_READY: u8 = 3;

/// `ioreq_t` types.
pub const IOREQ_TYPE_PIO: u8 = 0;
pub const IOREQ_TYPE_COPY: u8 = 1;
pub const IOREQ_TYPE_PCI_CONFIG: u8 = 2;
pub const IOREQ_TYPE_TIMEOFFSET: u8 = 7;
pub const IOREQ_TYPE_INVALIDATE: u8 = 8;

/// `ioreq_t` direction bit value for a read (device to guest).
pub const IOREQ_READ: u8 = 1;

/// `struct ioreq`: one vCPU's request slot in the synchronous ioreq page. The bit
/// fields of byte 30 are kept as one byte: state in bits 0-3, data_is_ptr bit 4,
/// dir bit 5, df bit 6.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ioreq {
    pub addr: u64,
    pub data: u64,
    pub count: u32,
    pub size: u32,
    pub vp_eport: u32,
    pub pad0: u16,
    pub bits: u8,
    pub kind: u8,
}

/// Bytes per slot, and the offsets the device model reads and writes one at a time.
pub const IOREQ_SIZE_BYTES: usize = 32;
pub const IOREQ_DATA_OFFSET: usize = 8;
pub const IOREQ_VP_EPORT_OFFSET: usize = 24;
pub const IOREQ_BITS_OFFSET: usize = 30;

impl Ioreq {
    /// Decodes a slot copied out of the ioreq page (little endian, as on x86).
    pub fn from_bytes(b: &[u8; IOREQ_SIZE_BYTES]) -> Ioreq {
        let u64_at = |at: usize| {
            u64::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3], b[at + 4], b[at + 5], b[at + 6], b[at + 7]])
        };
        let u32_at = |at: usize| u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
        Ioreq {
            addr: u64_at(0),
            data: u64_at(8),
            count: u32_at(16),
            size: u32_at(20),
            vp_eport: u32_at(24),
            pad0: u16::from_le_bytes([b[28], b[29]]),
            bits: b[30],
            kind: b[31],
        }
    }

    /// Encodes the slot as the page holds it.
    pub fn to_bytes(&self) -> [u8; IOREQ_SIZE_BYTES] {
        let mut b = [0u8; IOREQ_SIZE_BYTES];
        b[0..8].copy_from_slice(&self.addr.to_le_bytes());
        b[8..16].copy_from_slice(&self.data.to_le_bytes());
        b[16..20].copy_from_slice(&self.count.to_le_bytes());
        b[20..24].copy_from_slice(&self.size.to_le_bytes());
        b[24..28].copy_from_slice(&self.vp_eport.to_le_bytes());
        b[28..30].copy_from_slice(&self.pad0.to_le_bytes());
        b[30] = self.bits;
        b[31] = self.kind;
        b
    }

    pub fn state(&self) -> u8 {
        self.bits & 0x0f
    }
    pub fn data_is_ptr(&self) -> bool {
        self.bits & 0x10 != 0
    }
    /// Whether the guest reads (the device model supplies `data`).
    pub fn is_read(&self) -> bool {
        self.bits & 0x20 != 0
    }
    /// The direction flag: repeated elements go downwards in memory.
    pub fn df(&self) -> bool {
        self.bits & 0x40 != 0
    }

    /// Byte 30 for the given state and flags.
    pub fn make_bits(state: u8, data_is_ptr: bool, read: bool, df: bool) -> u8 {
        (state & 0x0f) | (u8::from(data_is_ptr) << 4) | (u8::from(read) << 5) | (u8::from(df) << 6)
    }
}

/// `dm_op` sub-operations (hvm/dm_op.h).
pub mod dmop {
    pub const CREATE_IOREQ_SERVER: u32 = 1;
    pub const GET_IOREQ_SERVER_INFO: u32 = 2;
    pub const MAP_IO_RANGE_TO_IOREQ_SERVER: u32 = 3;
    pub const UNMAP_IO_RANGE_FROM_IOREQ_SERVER: u32 = 4;
    pub const SET_IOREQ_SERVER_STATE: u32 = 5;
    pub const DESTROY_IOREQ_SERVER: u32 = 6;
    pub const SET_PCI_INTX_LEVEL: u32 = 8;
    pub const SET_ISA_IRQ_LEVEL: u32 = 9;
    pub const SET_PCI_LINK_ROUTE: u32 = 10;
    pub const MODIFIED_MEMORY: u32 = 11;
    pub const REMOTE_SHUTDOWN: u32 = 16;
    pub const NR_VCPUS: u32 = 20;

    /// `get_ioreq_server_info` flag: do not allocate guest frames for the pages.
    pub const NO_GFNS: u16 = 1;

    /// `map_io_range` types.
    pub const IO_RANGE_PORT: u32 = 0;
    pub const IO_RANGE_MEMORY: u32 = 1;
    pub const IO_RANGE_PCI: u32 = 2;

    /// `create_ioreq_server`'s handle_bufioreq: no buffered ring.
    pub const BUFIOREQ_OFF: u8 = 0;
}

/// `struct xen_dm_op`: the op and its sub-op arguments (the union is 24 bytes,
/// 8-aligned). Sub-op structs are written into `args` at offset 0.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct DmOp {
    pub op: u32,
    pub pad: u32,
    pub args: [u64; 3],
}

impl DmOp {
    /// An op whose arguments are the little-endian bytes `args` (at most 24).
    pub fn new(op: u32, args: &[u8]) -> DmOp {
        let mut words = [0u64; 3];
        let mut bytes = [0u8; 24];
        let n = args.len().min(24);
        bytes[..n].copy_from_slice(&args[..n]);
        for (i, word) in words.iter_mut().enumerate() {
            let mut w = [0u8; 8];
            w.copy_from_slice(&bytes[i * 8..i * 8 + 8]);
            *word = u64::from_le_bytes(w);
        }
        DmOp { op, pad: 0, args: words }
    }

    /// The argument bytes (what Xen wrote back for ops with outputs).
    pub fn arg_bytes(&self) -> [u8; 24] {
        let mut bytes = [0u8; 24];
        for (i, word) in self.args.iter().enumerate() {
            bytes[i * 8..i * 8 + 8].copy_from_slice(&word.to_le_bytes());
        }
        bytes
    }
}

/// `struct xen_dm_op_create_ioreq_server`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct CreateIoreqServer {
    pub handle_bufioreq: u8,
    pub pad: [u8; 3],
    pub id: u16,
}

/// `struct xen_dm_op_get_ioreq_server_info`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct GetIoreqServerInfo {
    pub id: u16,
    pub flags: u16,
    pub bufioreq_port: u32,
    pub ioreq_gfn: u64,
    pub bufioreq_gfn: u64,
}

/// `struct xen_dm_op_ioreq_server_range` (map and unmap; `end` is inclusive).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct IoreqServerRange {
    pub id: u16,
    pub pad: u16,
    pub kind: u32,
    pub start: u64,
    pub end: u64,
}

/// `struct xen_dm_op_set_ioreq_server_state`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SetIoreqServerState {
    pub id: u16,
    pub enabled: u8,
    pub pad: u8,
}

/// `struct xen_dm_op_destroy_ioreq_server`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct DestroyIoreqServer {
    pub id: u16,
    pub pad: u16,
}

/// `struct xen_dm_op_set_pci_intx_level`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SetPciIntxLevel {
    pub domain: u16,
    pub bus: u8,
    pub device: u8,
    pub intx: u8,
    pub level: u8,
}

/// `struct xen_dm_op_set_isa_irq_level`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SetIsaIrqLevel {
    pub isa_irq: u8,
    pub level: u8,
}

/// `struct xen_dm_op_set_pci_link_route`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SetPciLinkRoute {
    pub link: u8,
    pub isa_irq: u8,
}

/// `struct xen_dm_op_modified_memory` (followed by a buffer of [`ModifiedMemoryExtent`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ModifiedMemory {
    pub nr_extents: u32,
    pub opaque: u32,
}

/// `struct xen_dm_op_modified_memory_extent`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ModifiedMemoryExtent {
    pub nr: u32,
    pub pad: u32,
    pub first_pfn: u64,
}

/// `struct xen_dm_op_remote_shutdown`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct RemoteShutdown {
    pub reason: u32,
}

/// `struct xen_dm_op_nr_vcpus`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct NrVcpus {
    pub vcpus: u32,
}

/// `struct xen_dm_op_buf`: a guest buffer for `dm_op`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct DmOpBuf {
    pub ptr: u64,
    pub size: u64,
}

/// `memory_op` command, resource type and frame index for the ioreq pages.
pub const XENMEM_ACQUIRE_RESOURCE: usize = 28;
pub const XENMEM_RESOURCE_IOREQ_SERVER: u16 = 0;
/// Frame index of the first synchronous ioreq page (vCPUs 0..127).
pub const RESOURCE_IOREQ_SERVER_FRAME_IOREQ_0: u64 = 1;

/// `struct xen_mem_acquire_resource`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct MemAcquireResource {
    pub domid: u16,
    pub kind: u16,
    pub id: u32,
    pub nr_frames: u32,
    pub pad: u32,
    pub frame: u64,
    pub frame_list: u64,
}

/// `mmu_update` ptr type: a checked PTE write whose frame is a machine frame of the
/// foreign domain, not translated through its p2m (for frames `acquire_resource` gave).
pub const MMU_PT_UPDATE_NO_TRANSLATE: u64 = 3;

/// Bytes of plain-data struct `T` as little-endian bytes (for [`DmOp::new`]).
pub trait DmOpArgs: Copy {
    const OP: u32;
    fn to_bytes(&self) -> [u8; 24];
}

macro_rules! dm_op_args {
    ($t:ty, $op:expr, |$s:ident, $b:ident| $body:block) => {
        impl DmOpArgs for $t {
            const OP: u32 = $op;
            fn to_bytes(&self) -> [u8; 24] {
                let $s = self;
                #[allow(unused_mut)]
                let mut $b = [0u8; 24];
                $body
                $b
            }
        }
    };
}

dm_op_args!(CreateIoreqServer, dmop::CREATE_IOREQ_SERVER, |s, b| {
    b[0] = s.handle_bufioreq;
    b[4..6].copy_from_slice(&s.id.to_le_bytes());
});
dm_op_args!(GetIoreqServerInfo, dmop::GET_IOREQ_SERVER_INFO, |s, b| {
    b[0..2].copy_from_slice(&s.id.to_le_bytes());
    b[2..4].copy_from_slice(&s.flags.to_le_bytes());
});
dm_op_args!(SetIoreqServerState, dmop::SET_IOREQ_SERVER_STATE, |s, b| {
    b[0..2].copy_from_slice(&s.id.to_le_bytes());
    b[2] = s.enabled;
});
dm_op_args!(DestroyIoreqServer, dmop::DESTROY_IOREQ_SERVER, |s, b| {
    b[0..2].copy_from_slice(&s.id.to_le_bytes());
});
dm_op_args!(SetPciIntxLevel, dmop::SET_PCI_INTX_LEVEL, |s, b| {
    b[0..2].copy_from_slice(&s.domain.to_le_bytes());
    b[2] = s.bus;
    b[3] = s.device;
    b[4] = s.intx;
    b[5] = s.level;
});
dm_op_args!(SetIsaIrqLevel, dmop::SET_ISA_IRQ_LEVEL, |s, b| {
    b[0] = s.isa_irq;
    b[1] = s.level;
});
dm_op_args!(SetPciLinkRoute, dmop::SET_PCI_LINK_ROUTE, |s, b| {
    b[0] = s.link;
    b[1] = s.isa_irq;
});
dm_op_args!(ModifiedMemory, dmop::MODIFIED_MEMORY, |s, b| {
    b[0..4].copy_from_slice(&s.nr_extents.to_le_bytes());
});
dm_op_args!(RemoteShutdown, dmop::REMOTE_SHUTDOWN, |s, b| {
    b[0..4].copy_from_slice(&s.reason.to_le_bytes());
});
dm_op_args!(NrVcpus, dmop::NR_VCPUS, |_s, b| {});

/// A map or unmap of one range (the op is the caller's choice).
pub fn range_bytes(range: &IoreqServerRange) -> [u8; 24] {
    let mut b = [0u8; 24];
    b[0..2].copy_from_slice(&range.id.to_le_bytes());
    b[4..8].copy_from_slice(&range.kind.to_le_bytes());
    b[8..16].copy_from_slice(&range.start.to_le_bytes());
    b[16..24].copy_from_slice(&range.end.to_le_bytes());
    b
}

/// The SBDF encoding of a PCI range (segment 0).
pub fn pci_sbdf(bus: u8, device: u8, function: u8) -> u64 {
    (u64::from(bus) << 8) | (u64::from(device & 0x1f) << 3) | u64::from(function & 7)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioreq_round_trips_and_decodes_bits() {
        let req = Ioreq {
            addr: 0x1f0,
            data: 0x1234_5678_9abc_def0,
            count: 256,
            size: 2,
            vp_eport: 7,
            pad0: 0,
            bits: Ioreq::make_bits(STATE_IOREQ_READY, true, true, false),
            kind: IOREQ_TYPE_PIO,
        };
        let back = Ioreq::from_bytes(&req.to_bytes());
        assert_eq!(back, req);
        assert_eq!(back.state(), STATE_IOREQ_READY);
        assert!(back.data_is_ptr() && back.is_read() && !back.df());
        assert_eq!(req.to_bytes()[30], 0x31);
    }

    #[test]
    fn dm_op_args_land_in_the_union() {
        let op = DmOp::new(
            SetPciIntxLevel::OP,
            &SetPciIntxLevel { domain: 0, bus: 0, device: 3, intx: 1, level: 1 }.to_bytes(),
        );
        assert_eq!(op.op, 8);
        assert_eq!(&op.arg_bytes()[..6], &[0, 0, 0, 3, 1, 1]);
        let range = IoreqServerRange { id: 2, pad: 0, kind: dmop::IO_RANGE_PORT, start: 0x1f0, end: 0x1f7 };
        let op = DmOp::new(dmop::MAP_IO_RANGE_TO_IOREQ_SERVER, &range_bytes(&range));
        assert_eq!(op.args, [2, 0x1f0, 0x1f7]);
        assert_eq!(pci_sbdf(0, 1, 1), 0x09);
    }
}
