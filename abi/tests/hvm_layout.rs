//! Checks the device-model structs and constants (xen_abi::hvm) against Xen's headers:
//! hvm/ioreq.h, hvm/dm_op.h (a tools-only header: `__XEN_TOOLS__`) and memory.h.

use std::mem::{offset_of, size_of};
use xen_abi::hvm::*;

const PRELUDE: &str = "#define __XEN_TOOLS__ 1\n#include <xen/xen.h>\n#include <xen/memory.h>\n\
    #include <xen/sched.h>\n#include <xen/hvm/ioreq.h>\n#include <xen/hvm/dm_op.h>\n\
    #include <xen/hvm/hvm_op.h>\n";

macro_rules! size {
    ($c:literal, $t:ty) => {
        (concat!("sizeof(", $c, ")"), size_of::<$t>() as u64)
    };
}
macro_rules! off {
    ($c:literal, $cf:literal, $t:ty, $f:ident) => {
        (concat!("offsetof(", $c, ", ", $cf, ")"), offset_of!($t, $f) as u64)
    };
}

#[test]
fn device_model_structs_match_xen_headers() {
    c_layout::check(
        PRELUDE,
        &[
            size!("struct ioreq", Ioreq),
            off!("struct ioreq", "addr", Ioreq, addr),
            off!("struct ioreq", "data", Ioreq, data),
            off!("struct ioreq", "count", Ioreq, count),
            off!("struct ioreq", "size", Ioreq, size),
            off!("struct ioreq", "vp_eport", Ioreq, vp_eport),
            off!("struct ioreq", "type", Ioreq, kind),
            ("offsetof(struct ioreq, type) - 1", IOREQ_BITS_OFFSET as u64),
            ("offsetof(struct ioreq, vp_eport)", IOREQ_VP_EPORT_OFFSET as u64),
            ("offsetof(struct ioreq, data)", IOREQ_DATA_OFFSET as u64),
            ("sizeof(struct ioreq)", IOREQ_SIZE_BYTES as u64),
            size!("struct xen_dm_op", DmOp),
            off!("struct xen_dm_op", "u", DmOp, args),
            size!("struct xen_dm_op_buf", DmOpBuf),
            size!("struct xen_dm_op_create_ioreq_server", CreateIoreqServer),
            off!("struct xen_dm_op_create_ioreq_server", "id", CreateIoreqServer, id),
            size!("struct xen_dm_op_get_ioreq_server_info", GetIoreqServerInfo),
            off!("struct xen_dm_op_get_ioreq_server_info", "flags", GetIoreqServerInfo, flags),
            off!("struct xen_dm_op_get_ioreq_server_info", "bufioreq_port", GetIoreqServerInfo, bufioreq_port),
            off!("struct xen_dm_op_get_ioreq_server_info", "ioreq_gfn", GetIoreqServerInfo, ioreq_gfn),
            size!("struct xen_dm_op_ioreq_server_range", IoreqServerRange),
            off!("struct xen_dm_op_ioreq_server_range", "type", IoreqServerRange, kind),
            off!("struct xen_dm_op_ioreq_server_range", "start", IoreqServerRange, start),
            off!("struct xen_dm_op_ioreq_server_range", "end", IoreqServerRange, end),
            size!("struct xen_dm_op_set_ioreq_server_state", SetIoreqServerState),
            off!("struct xen_dm_op_set_ioreq_server_state", "enabled", SetIoreqServerState, enabled),
            size!("struct xen_dm_op_destroy_ioreq_server", DestroyIoreqServer),
            size!("struct xen_dm_op_set_pci_intx_level", SetPciIntxLevel),
            off!("struct xen_dm_op_set_pci_intx_level", "bus", SetPciIntxLevel, bus),
            off!("struct xen_dm_op_set_pci_intx_level", "device", SetPciIntxLevel, device),
            off!("struct xen_dm_op_set_pci_intx_level", "intx", SetPciIntxLevel, intx),
            off!("struct xen_dm_op_set_pci_intx_level", "level", SetPciIntxLevel, level),
            size!("struct xen_dm_op_set_isa_irq_level", SetIsaIrqLevel),
            off!("struct xen_dm_op_set_isa_irq_level", "level", SetIsaIrqLevel, level),
            size!("struct xen_dm_op_set_pci_link_route", SetPciLinkRoute),
            off!("struct xen_dm_op_set_pci_link_route", "isa_irq", SetPciLinkRoute, isa_irq),
            size!("struct xen_dm_op_modified_memory", ModifiedMemory),
            size!("struct xen_dm_op_modified_memory_extent", ModifiedMemoryExtent),
            off!("struct xen_dm_op_modified_memory_extent", "first_pfn", ModifiedMemoryExtent, first_pfn),
            size!("struct xen_dm_op_remote_shutdown", RemoteShutdown),
            size!("struct xen_dm_op_nr_vcpus", NrVcpus),
            size!("struct xen_mem_acquire_resource", MemAcquireResource),
            off!("struct xen_mem_acquire_resource", "type", MemAcquireResource, kind),
            off!("struct xen_mem_acquire_resource", "id", MemAcquireResource, id),
            off!("struct xen_mem_acquire_resource", "nr_frames", MemAcquireResource, nr_frames),
            off!("struct xen_mem_acquire_resource", "frame", MemAcquireResource, frame),
            off!("struct xen_mem_acquire_resource", "frame_list", MemAcquireResource, frame_list),
        ],
    );
}

#[test]
fn device_model_constants_match_xen_headers() {
    c_layout::check(
        PRELUDE,
        &[
            ("STATE_IOREQ_NONE", u64::from(STATE_IOREQ_NONE)),
            ("STATE_IOREQ_READY", u64::from(STATE_IOREQ_READY)),
            ("STATE_IOREQ_INPROCESS", u64::from(STATE_IOREQ_INPROCESS)),
            ("STATE_IORESP_READY", u64::from(STATE_IORESP_READY)),
            ("IOREQ_TYPE_PIO", u64::from(IOREQ_TYPE_PIO)),
            ("IOREQ_TYPE_COPY", u64::from(IOREQ_TYPE_COPY)),
            ("IOREQ_TYPE_PCI_CONFIG", u64::from(IOREQ_TYPE_PCI_CONFIG)),
            ("IOREQ_TYPE_TIMEOFFSET", u64::from(IOREQ_TYPE_TIMEOFFSET)),
            ("IOREQ_TYPE_INVALIDATE", u64::from(IOREQ_TYPE_INVALIDATE)),
            ("IOREQ_READ", u64::from(IOREQ_READ)),
            ("XEN_DMOP_create_ioreq_server", u64::from(dmop::CREATE_IOREQ_SERVER)),
            ("XEN_DMOP_get_ioreq_server_info", u64::from(dmop::GET_IOREQ_SERVER_INFO)),
            ("XEN_DMOP_map_io_range_to_ioreq_server", u64::from(dmop::MAP_IO_RANGE_TO_IOREQ_SERVER)),
            ("XEN_DMOP_unmap_io_range_from_ioreq_server", u64::from(dmop::UNMAP_IO_RANGE_FROM_IOREQ_SERVER)),
            ("XEN_DMOP_set_ioreq_server_state", u64::from(dmop::SET_IOREQ_SERVER_STATE)),
            ("XEN_DMOP_destroy_ioreq_server", u64::from(dmop::DESTROY_IOREQ_SERVER)),
            ("XEN_DMOP_set_pci_intx_level", u64::from(dmop::SET_PCI_INTX_LEVEL)),
            ("XEN_DMOP_set_isa_irq_level", u64::from(dmop::SET_ISA_IRQ_LEVEL)),
            ("XEN_DMOP_set_pci_link_route", u64::from(dmop::SET_PCI_LINK_ROUTE)),
            ("XEN_DMOP_modified_memory", u64::from(dmop::MODIFIED_MEMORY)),
            ("XEN_DMOP_remote_shutdown", u64::from(dmop::REMOTE_SHUTDOWN)),
            ("XEN_DMOP_nr_vcpus", u64::from(dmop::NR_VCPUS)),
            ("XEN_DMOP_no_gfns", u64::from(dmop::NO_GFNS)),
            ("XEN_DMOP_IO_RANGE_PORT", u64::from(dmop::IO_RANGE_PORT)),
            ("XEN_DMOP_IO_RANGE_MEMORY", u64::from(dmop::IO_RANGE_MEMORY)),
            ("XEN_DMOP_IO_RANGE_PCI", u64::from(dmop::IO_RANGE_PCI)),
            ("HVM_IOREQSRV_BUFIOREQ_OFF", u64::from(dmop::BUFIOREQ_OFF)),
            ("XEN_DMOP_PCI_SBDF(0, 0, 1, 1)", pci_sbdf(0, 1, 1)),
            ("XENMEM_acquire_resource", XENMEM_ACQUIRE_RESOURCE as u64),
            ("XENMEM_resource_ioreq_server", u64::from(XENMEM_RESOURCE_IOREQ_SERVER)),
            ("XENMEM_resource_ioreq_server_frame_ioreq(0)", RESOURCE_IOREQ_SERVER_FRAME_IOREQ_0),
            ("MMU_PT_UPDATE_NO_TRANSLATE", MMU_PT_UPDATE_NO_TRANSLATE),
            ("__HYPERVISOR_dm_op", xen_abi::hypercall::DM_OP as u64),
        ],
    );
}

/// The hand-written argument encodings put each field where the C struct has it.
#[test]
fn dm_op_encodings_follow_the_struct_offsets() {
    let intx = SetPciIntxLevel { domain: 0x0102, bus: 3, device: 4, intx: 5, level: 6 }.to_bytes();
    assert_eq!(intx[offset_of!(SetPciIntxLevel, bus)], 3);
    assert_eq!(intx[offset_of!(SetPciIntxLevel, device)], 4);
    assert_eq!(intx[offset_of!(SetPciIntxLevel, intx)], 5);
    assert_eq!(intx[offset_of!(SetPciIntxLevel, level)], 6);
    let create = CreateIoreqServer { handle_bufioreq: 2, pad: [0; 3], id: 0x0304 }.to_bytes();
    assert_eq!(create[offset_of!(CreateIoreqServer, id)], 4);
    let info = GetIoreqServerInfo { id: 9, flags: 1, ..Default::default() }.to_bytes();
    assert_eq!((info[offset_of!(GetIoreqServerInfo, id)], info[offset_of!(GetIoreqServerInfo, flags)]), (9, 1));
    let state = SetIoreqServerState { id: 9, enabled: 1, pad: 0 }.to_bytes();
    assert_eq!(state[offset_of!(SetIoreqServerState, enabled)], 1);
    let link = SetPciLinkRoute { link: 2, isa_irq: 11 }.to_bytes();
    assert_eq!(link[offset_of!(SetPciLinkRoute, isa_irq)], 11);
    let isa = SetIsaIrqLevel { isa_irq: 14, level: 1 }.to_bytes();
    assert_eq!(isa[offset_of!(SetIsaIrqLevel, level)], 1);
    let range = range_bytes(&IoreqServerRange { id: 1, pad: 0, kind: 2, start: 0x10, end: 0x20 });
    assert_eq!(range[offset_of!(IoreqServerRange, kind)], 2);
    assert_eq!(range[offset_of!(IoreqServerRange, start)], 0x10);
    assert_eq!(range[offset_of!(IoreqServerRange, end)], 0x20);
}
