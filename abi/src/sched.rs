//! `sched_op` (sched.h) and `callback_op` (callback.h) arguments.

pub const SCHEDOP_YIELD: usize = 0;
pub const SCHEDOP_BLOCK: usize = 1;
pub const SCHEDOP_SHUTDOWN: usize = 2;
pub const SCHEDOP_POLL: usize = 3;

/// Why a domain stops (`SHUTDOWN_*`); xl reports it as "reason code N".
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShutdownReason {
    Poweroff = 0,
    Reboot = 1,
    Suspend = 2,
    Crash = 3,
    Watchdog = 4,
}

/// `struct sched_shutdown`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SchedShutdown {
    pub reason: u32,
}

pub const CALLBACKOP_REGISTER: usize = 0;
pub const CALLBACKTYPE_EVENT: u16 = 0;
pub const CALLBACKTYPE_FAILSAFE: u16 = 1;
pub const CALLBACKTYPE_SYSCALL: u16 = 2;
/// Xen masks event delivery (vcpu_info.evtchn_upcall_mask) when it enters the callback.
pub const CALLBACKF_MASK_EVENTS: u16 = 1 << 0;

/// `struct callback_register`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct CallbackRegister {
    pub kind: u16,
    pub flags: u16,
    pub address: u64,
}
