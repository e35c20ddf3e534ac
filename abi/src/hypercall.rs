//! Hypercall numbers (xen.h) and the hypercall page layout.

/// Each hypercall has a 32-byte stub in the hypercall page, at `number * 32`.
pub const STUB_SIZE_BYTES: usize = 32;

pub const SET_TRAP_TABLE: usize = 0;
pub const MMU_UPDATE: usize = 1;
pub const STACK_SWITCH: usize = 3;
pub const FPU_TASKSWITCH: usize = 5;
pub const MEMORY_OP: usize = 12;
pub const UPDATE_VA_MAPPING: usize = 14;
pub const SET_TIMER_OP: usize = 15;
pub const XEN_VERSION: usize = 17;
pub const CONSOLE_IO: usize = 18;
pub const GRANT_TABLE_OP: usize = 20;
pub const UPDATE_VA_MAPPING_OTHERDOMAIN: usize = 22;
pub const IRET: usize = 23;
pub const VCPU_OP: usize = 24;
pub const MMUEXT_OP: usize = 26;
pub const SCHED_OP: usize = 29;
pub const CALLBACK_OP: usize = 30;
pub const EVENT_CHANNEL_OP: usize = 32;
pub const PHYSDEV_OP: usize = 33;
pub const HVM_OP: usize = 34;
pub const DM_OP: usize = 41;

/// `EVTCHNOP_send` (event_channel.h): notify the remote end of a port.
pub const EVTCHNOP_SEND: usize = 4;

/// `struct evtchn_send`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct EvtchnSend {
    pub port: u32,
}

/// `update_va_mapping` flags (xen.h): invalidate the one mapping on this vCPU.
pub const UVMF_INVLPG: usize = 2;

/// Read-only machine-to-physical table every x86_64 PV guest sees (`MACH2PHYS_VIRT_START`).
pub const MACH2PHYS_VIRT_START: u64 = 0xFFFF_8000_0000_0000;

/// Page-table entry bits (x86 PAE/long mode) a PV guest uses for its own mappings.
pub mod pte {
    pub const PRESENT: u64 = 1 << 0;
    pub const WRITABLE: u64 = 1 << 1;
    pub const USER: u64 = 1 << 2;
    pub const ACCESSED: u64 = 1 << 5;
    pub const DIRTY: u64 = 1 << 6;
    /// What a 64-bit PV kernel uses for its data pages (Xen runs it in ring 3).
    pub const KERNEL_DATA: u64 = PRESENT | WRITABLE | USER | ACCESSED | DIRTY;
}
