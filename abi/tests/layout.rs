//! Checks every ABI struct's size and field offsets against Xen's own headers.
//!
//! A C program is compiled against /usr/include/xen (Debian's libxen-dev, which
//! `cargo xtask` installs) by the c-layout helper and prints sizeof/offsetof; the
//! Rust side must agree.

use std::mem::{offset_of, size_of};
use xen_abi::console::XenconsInterface;
use xen_abi::event_channel::{
    EvtchnAllocUnbound, EvtchnBindInterdomain, EvtchnBindVirq, EvtchnClose, EvtchnOp, EvtchnUnmask,
};
use xen_abi::grant_table::{
    GnttabCopy, GnttabCopyPtr, GnttabMapGrantRef, GnttabQuerySize, GnttabSetupTable, GnttabUnmapGrantRef, GrantEntryV1,
};
use xen_abi::hypercall::EvtchnSend;
use xen_abi::memory::{MmuUpdate, MmuextOp};
use xen_abi::sched::{CallbackRegister, SchedShutdown};
use xen_abi::shared::{ArchSharedInfo, SharedInfo, VcpuInfo, VcpuTimeInfo};
use xen_abi::start_info::StartInfo;
use xen_abi::traps::TrapInfo;

/// (C expression, Rust value) pairs.
fn rust_layout() -> Vec<(&'static str, usize)> {
    macro_rules! size {
        ($c:literal, $t:ty) => {
            (concat!("sizeof(", $c, ")"), size_of::<$t>())
        };
    }
    macro_rules! off {
        ($c:literal, $cf:literal, $t:ty, $f:ident) => {
            (concat!("offsetof(", $c, ", ", $cf, ")"), offset_of!($t, $f))
        };
    }
    vec![
        size!("struct start_info", StartInfo),
        off!("struct start_info", "nr_pages", StartInfo, nr_pages),
        off!("struct start_info", "shared_info", StartInfo, shared_info),
        off!("struct start_info", "flags", StartInfo, flags),
        off!("struct start_info", "store_mfn", StartInfo, store_mfn),
        off!("struct start_info", "store_evtchn", StartInfo, store_evtchn),
        off!("struct start_info", "console.domU.mfn", StartInfo, console_mfn),
        off!("struct start_info", "console.domU.evtchn", StartInfo, console_evtchn),
        off!("struct start_info", "pt_base", StartInfo, pt_base),
        off!("struct start_info", "nr_pt_frames", StartInfo, nr_pt_frames),
        off!("struct start_info", "mfn_list", StartInfo, mfn_list),
        off!("struct start_info", "mod_start", StartInfo, mod_start),
        off!("struct start_info", "mod_len", StartInfo, mod_len),
        off!("struct start_info", "cmd_line", StartInfo, cmd_line),
        off!("struct start_info", "first_p2m_pfn", StartInfo, first_p2m_pfn),
        off!("struct start_info", "nr_p2m_frames", StartInfo, nr_p2m_frames),
        size!("struct vcpu_time_info", VcpuTimeInfo),
        off!("struct vcpu_time_info", "tsc_timestamp", VcpuTimeInfo, tsc_timestamp),
        off!("struct vcpu_time_info", "system_time", VcpuTimeInfo, system_time),
        off!("struct vcpu_time_info", "tsc_to_system_mul", VcpuTimeInfo, tsc_to_system_mul),
        off!("struct vcpu_time_info", "tsc_shift", VcpuTimeInfo, tsc_shift),
        off!("struct vcpu_time_info", "flags", VcpuTimeInfo, flags),
        size!("struct vcpu_info", VcpuInfo),
        off!("struct vcpu_info", "evtchn_upcall_mask", VcpuInfo, evtchn_upcall_mask),
        off!("struct vcpu_info", "evtchn_pending_sel", VcpuInfo, evtchn_pending_sel),
        off!("struct vcpu_info", "arch", VcpuInfo, arch),
        off!("struct vcpu_info", "time", VcpuInfo, time),
        size!("struct arch_shared_info", ArchSharedInfo),
        size!("struct shared_info", SharedInfo),
        off!("struct shared_info", "evtchn_pending", SharedInfo, evtchn_pending),
        off!("struct shared_info", "evtchn_mask", SharedInfo, evtchn_mask),
        off!("struct shared_info", "wc_version", SharedInfo, wc_version),
        off!("struct shared_info", "wc_sec", SharedInfo, wc_sec),
        off!("struct shared_info", "wc_nsec", SharedInfo, wc_nsec),
        off!("struct shared_info", "wc_sec_hi", SharedInfo, wc_sec_hi),
        off!("struct shared_info", "arch", SharedInfo, arch),
        size!("struct trap_info", TrapInfo),
        off!("struct trap_info", "flags", TrapInfo, flags),
        off!("struct trap_info", "cs", TrapInfo, cs),
        off!("struct trap_info", "address", TrapInfo, address),
        size!("struct callback_register", CallbackRegister),
        off!("struct callback_register", "flags", CallbackRegister, flags),
        off!("struct callback_register", "address", CallbackRegister, address),
        size!("struct sched_shutdown", SchedShutdown),
        size!("struct evtchn_alloc_unbound", EvtchnAllocUnbound),
        off!("struct evtchn_alloc_unbound", "remote_dom", EvtchnAllocUnbound, remote_dom),
        off!("struct evtchn_alloc_unbound", "port", EvtchnAllocUnbound, port),
        size!("struct evtchn_bind_interdomain", EvtchnBindInterdomain),
        off!("struct evtchn_bind_interdomain", "remote_port", EvtchnBindInterdomain, remote_port),
        off!("struct evtchn_bind_interdomain", "local_port", EvtchnBindInterdomain, local_port),
        size!("struct evtchn_bind_virq", EvtchnBindVirq),
        off!("struct evtchn_bind_virq", "port", EvtchnBindVirq, port),
        size!("struct evtchn_close", EvtchnClose),
        off!("struct evtchn_close", "port", EvtchnClose, port),
        size!("struct evtchn_unmask", EvtchnUnmask),
        off!("struct evtchn_unmask", "port", EvtchnUnmask, port),
        size!("struct evtchn_send", EvtchnSend),
        off!("struct evtchn_send", "port", EvtchnSend, port),
        size!("struct grant_entry_v1", GrantEntryV1),
        off!("struct grant_entry_v1", "domid", GrantEntryV1, domid),
        off!("struct grant_entry_v1", "frame", GrantEntryV1, frame),
        size!("struct gnttab_setup_table", GnttabSetupTable),
        off!("struct gnttab_setup_table", "nr_frames", GnttabSetupTable, nr_frames),
        off!("struct gnttab_setup_table", "status", GnttabSetupTable, status),
        off!("struct gnttab_setup_table", "frame_list", GnttabSetupTable, frame_list),
        size!("struct gnttab_query_size", GnttabQuerySize),
        off!("struct gnttab_query_size", "max_nr_frames", GnttabQuerySize, max_nr_frames),
        off!("struct gnttab_query_size", "status", GnttabQuerySize, status),
        size!("struct gnttab_map_grant_ref", GnttabMapGrantRef),
        off!("struct gnttab_map_grant_ref", "flags", GnttabMapGrantRef, flags),
        off!("struct gnttab_map_grant_ref", "ref", GnttabMapGrantRef, grant_ref),
        off!("struct gnttab_map_grant_ref", "dom", GnttabMapGrantRef, dom),
        off!("struct gnttab_map_grant_ref", "status", GnttabMapGrantRef, status),
        off!("struct gnttab_map_grant_ref", "handle", GnttabMapGrantRef, handle),
        off!("struct gnttab_map_grant_ref", "dev_bus_addr", GnttabMapGrantRef, dev_bus_addr),
        size!("struct gnttab_unmap_grant_ref", GnttabUnmapGrantRef),
        off!("struct gnttab_unmap_grant_ref", "dev_bus_addr", GnttabUnmapGrantRef, dev_bus_addr),
        off!("struct gnttab_unmap_grant_ref", "handle", GnttabUnmapGrantRef, handle),
        off!("struct gnttab_unmap_grant_ref", "status", GnttabUnmapGrantRef, status),
        size!("struct gnttab_copy_ptr", GnttabCopyPtr),
        off!("struct gnttab_copy_ptr", "domid", GnttabCopyPtr, domid),
        off!("struct gnttab_copy_ptr", "offset", GnttabCopyPtr, offset),
        size!("struct gnttab_copy", GnttabCopy),
        off!("struct gnttab_copy", "dest", GnttabCopy, dest),
        off!("struct gnttab_copy", "len", GnttabCopy, len),
        off!("struct gnttab_copy", "flags", GnttabCopy, flags),
        off!("struct gnttab_copy", "status", GnttabCopy, status),
        size!("struct mmu_update", MmuUpdate),
        off!("struct mmu_update", "val", MmuUpdate, val),
        size!("struct mmuext_op", MmuextOp),
        off!("struct mmuext_op", "arg1", MmuextOp, arg1),
        off!("struct mmuext_op", "arg2", MmuextOp, arg2),
        size!("struct xencons_interface", XenconsInterface),
        off!("struct xencons_interface", "out", XenconsInterface, output),
        off!("struct xencons_interface", "in_cons", XenconsInterface, in_cons),
        off!("struct xencons_interface", "in_prod", XenconsInterface, in_prod),
        off!("struct xencons_interface", "out_cons", XenconsInterface, out_cons),
        off!("struct xencons_interface", "out_prod", XenconsInterface, out_prod),
    ]
}

/// Constants whose values must match the headers.
fn rust_constants() -> Vec<(&'static str, usize)> {
    use xen_abi::{
        console, elfnote, event_channel as ev, grant_table as gt, hypercall as hc, memory as mm, sched, traps,
    };
    vec![
        ("__HYPERVISOR_set_trap_table", hc::SET_TRAP_TABLE),
        ("__HYPERVISOR_mmu_update", hc::MMU_UPDATE),
        ("__HYPERVISOR_memory_op", hc::MEMORY_OP),
        ("__HYPERVISOR_update_va_mapping", hc::UPDATE_VA_MAPPING),
        ("__HYPERVISOR_update_va_mapping_otherdomain", hc::UPDATE_VA_MAPPING_OTHERDOMAIN),
        ("__HYPERVISOR_set_timer_op", hc::SET_TIMER_OP),
        ("__HYPERVISOR_xen_version", hc::XEN_VERSION),
        ("__HYPERVISOR_console_io", hc::CONSOLE_IO),
        ("__HYPERVISOR_grant_table_op", hc::GRANT_TABLE_OP),
        ("__HYPERVISOR_iret", hc::IRET),
        ("__HYPERVISOR_vcpu_op", hc::VCPU_OP),
        ("__HYPERVISOR_mmuext_op", hc::MMUEXT_OP),
        ("__HYPERVISOR_sched_op", hc::SCHED_OP),
        ("__HYPERVISOR_callback_op", hc::CALLBACK_OP),
        ("__HYPERVISOR_event_channel_op", hc::EVENT_CHANNEL_OP),
        ("__HYPERVISOR_dm_op", hc::DM_OP),
        ("EVTCHNOP_send", hc::EVTCHNOP_SEND),
        ("UVMF_INVLPG", hc::UVMF_INVLPG),
        ("EVTCHNOP_bind_interdomain", ev::EVTCHNOP_BIND_INTERDOMAIN),
        ("EVTCHNOP_bind_virq", ev::EVTCHNOP_BIND_VIRQ),
        ("EVTCHNOP_close", ev::EVTCHNOP_CLOSE),
        ("EVTCHNOP_alloc_unbound", ev::EVTCHNOP_ALLOC_UNBOUND),
        ("EVTCHNOP_unmask", ev::EVTCHNOP_UNMASK),
        // Each argument struct names the command that takes it.
        ("EVTCHNOP_alloc_unbound", EvtchnAllocUnbound::CMD),
        ("EVTCHNOP_bind_interdomain", EvtchnBindInterdomain::CMD),
        ("EVTCHNOP_bind_virq", EvtchnBindVirq::CMD),
        ("EVTCHNOP_close", EvtchnClose::CMD),
        ("EVTCHNOP_unmask", EvtchnUnmask::CMD),
        ("EVTCHNOP_send", EvtchnSend::CMD),
        ("VIRQ_TIMER", ev::VIRQ_TIMER as usize),
        ("DOMID_SELF", ev::DOMID_SELF as usize),
        ("EVTCHN_2L_NR_CHANNELS", ev::NR_EVENT_CHANNELS),
        ("GNTTABOP_map_grant_ref", gt::GNTTABOP_MAP_GRANT_REF),
        ("GNTTABOP_unmap_grant_ref", gt::GNTTABOP_UNMAP_GRANT_REF),
        ("GNTTABOP_setup_table", gt::GNTTABOP_SETUP_TABLE),
        ("GNTTABOP_copy", gt::GNTTABOP_COPY),
        ("GNTTABOP_query_size", gt::GNTTABOP_QUERY_SIZE),
        ("GNTTAB_NR_RESERVED_ENTRIES", gt::NR_RESERVED_ENTRIES as usize),
        ("GTF_permit_access", gt::GTF_PERMIT_ACCESS as usize),
        ("GTF_readonly", gt::GTF_READONLY as usize),
        ("GTF_reading", gt::GTF_READING as usize),
        ("GTF_writing", gt::GTF_WRITING as usize),
        ("GNTMAP_host_map", gt::GNTMAP_HOST_MAP as usize),
        ("GNTMAP_readonly", gt::GNTMAP_READONLY as usize),
        ("GNTCOPY_source_gref", gt::GNTCOPY_SOURCE_GREF as usize),
        ("GNTCOPY_dest_gref", gt::GNTCOPY_DEST_GREF as usize),
        ("GNTST_okay", gt::GNTST_OKAY as usize),
        ("MMU_NORMAL_PT_UPDATE", mm::MMU_NORMAL_PT_UPDATE as usize),
        ("MMUEXT_PIN_L1_TABLE", mm::MMUEXT_PIN_L1_TABLE as usize),
        ("MMUEXT_UNPIN_TABLE", mm::MMUEXT_UNPIN_TABLE as usize),
        ("MMUEXT_INVLPG_LOCAL", mm::MMUEXT_INVLPG_LOCAL as usize),
        ("MACH2PHYS_VIRT_START", hc::MACH2PHYS_VIRT_START as usize),
        ("SCHEDOP_yield", sched::SCHEDOP_YIELD),
        ("SCHEDOP_block", sched::SCHEDOP_BLOCK),
        ("SCHEDOP_shutdown", sched::SCHEDOP_SHUTDOWN),
        ("SCHEDOP_poll", sched::SCHEDOP_POLL),
        ("SHUTDOWN_poweroff", sched::ShutdownReason::Poweroff as usize),
        ("SHUTDOWN_crash", sched::ShutdownReason::Crash as usize),
        ("CALLBACKOP_register", sched::CALLBACKOP_REGISTER),
        ("CALLBACKTYPE_event", sched::CALLBACKTYPE_EVENT as usize),
        ("CALLBACKTYPE_failsafe", sched::CALLBACKTYPE_FAILSAFE as usize),
        ("CALLBACKTYPE_syscall", sched::CALLBACKTYPE_SYSCALL as usize),
        ("CALLBACKF_mask_events", sched::CALLBACKF_MASK_EVENTS as usize),
        ("FLAT_KERNEL_CS64", traps::FLAT_KERNEL_CS64 as usize),
        ("FLAT_KERNEL_SS64", traps::FLAT_KERNEL_SS64 as usize),
        ("XEN_ELFNOTE_ENTRY", elfnote::ENTRY as usize),
        ("XEN_ELFNOTE_HYPERCALL_PAGE", elfnote::HYPERCALL_PAGE as usize),
        ("XEN_ELFNOTE_VIRT_BASE", elfnote::VIRT_BASE as usize),
        ("XEN_ELFNOTE_PADDR_OFFSET", elfnote::PADDR_OFFSET as usize),
        ("XEN_ELFNOTE_XEN_VERSION", elfnote::XEN_VERSION as usize),
        ("XEN_ELFNOTE_GUEST_OS", elfnote::GUEST_OS as usize),
        ("XEN_ELFNOTE_GUEST_VERSION", elfnote::GUEST_VERSION as usize),
        ("XEN_ELFNOTE_LOADER", elfnote::LOADER as usize),
        ("XEN_ELFNOTE_FEATURES", elfnote::FEATURES as usize),
        ("XEN_ELFNOTE_SUSPEND_CANCEL", elfnote::SUSPEND_CANCEL as usize),
        ("MAX_GUEST_CMDLINE", xen_abi::start_info::MAX_GUEST_CMDLINE),
        ("sizeof(((struct xencons_interface *)0)->in)", console::IN_RING_SIZE),
        ("sizeof(((struct xencons_interface *)0)->out)", console::OUT_RING_SIZE),
    ]
}

/// The headers every check here compiles against.
const PRELUDE: &str = "#define __XEN_INTERFACE_VERSION__ 0x00040e00\n\
    #include <xen/xen.h>\n#include <xen/callback.h>\n#include <xen/sched.h>\n\
    #include <xen/event_channel.h>\n#include <xen/grant_table.h>\n#include <xen/elfnote.h>\n\
    #include <xen/io/console.h>\n";

fn check(pairs: Vec<(&'static str, usize)>) {
    let pairs: Vec<(&str, u64)> = pairs.into_iter().map(|(e, v)| (e, v as u64)).collect();
    c_layout::check(PRELUDE, &pairs);
}

#[test]
fn struct_layouts_match_xen_headers() {
    check(rust_layout());
}

#[test]
fn constants_match_xen_headers() {
    check(rust_constants());
}
