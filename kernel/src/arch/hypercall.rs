//! Hypercalls through the hypercall page, and typed wrappers for the ones in use.
//!
//! Xen's stub for hypercall N sits at `hypercall_page + N * 32` and does
//! `mov $N, %eax; syscall; ret`. Arguments go in rdi, rsi, rdx, r10, r8; the result
//! comes back in rax; rcx and r11 are clobbered by `syscall`. Release builds of Xen
//! preserve the argument registers, debug builds poison them, so we assume clobbered.

use super::boot::hypercall_page;
use xen_abi::event_channel::EvtchnOp;
use xen_abi::hypercall as hc;
use xen_abi::sched::{self, CallbackRegister, SchedShutdown, ShutdownReason};
use xen_abi::traps::TrapInfo;

/// A negative Xen errno from a failed hypercall.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("Xen returned errno {0}")]
pub struct XenError(pub i64);

/// Issues hypercall `nr` with five arguments.
///
/// # Safety
/// The arguments must be valid for that hypercall: any pointer among them must point
/// to memory of the layout Xen expects for `nr`, live and writable where Xen writes.
pub unsafe fn hypercall(nr: usize, a: [u64; 5]) -> i64 {
    let stub = (&raw const hypercall_page) as u64 + (nr * hc::STUB_SIZE_BYTES) as u64;
    let ret: i64;
    // SAFETY:
    // 1. `stub` is inside the page Xen filled with hypercall stubs (ELF note
    //    HYPERCALL_PAGE), and `nr` < 128 for every caller, so it is a valid stub.
    // 2. The stub uses only rax, rcx and r11 and returns with `ret`; all argument
    //    registers are declared clobbered; the stack below rsp is ours (no red zone).
    // 3. Memory effects are those of hypercall `nr`, which the caller vouches for.
    unsafe {
        core::arch::asm!(
            "call {stub}",
            stub = in(reg) stub,
            lateout("rax") ret,
            inlateout("rdi") a[0] => _,
            inlateout("rsi") a[1] => _,
            inlateout("rdx") a[2] => _,
            inlateout("r10") a[3] => _,
            inlateout("r8") a[4] => _,
            lateout("rcx") _,
            lateout("r11") _,
        );
    }
    ret
}

fn check(ret: i64) -> Result<i64, XenError> {
    if ret < 0 { Err(XenError(ret)) } else { Ok(ret) }
}

/// Installs the trap table; `table` ends with an all-zero entry.
pub fn set_trap_table(table: &[TrapInfo]) -> Result<(), XenError> {
    assert!(table.last().is_some_and(|t| t.address == 0), "trap table must end with a zero entry");
    // SAFETY: `table` is a live, zero-terminated array of `struct trap_info` (layout
    // checked against xen.h); Xen only reads it during the call.
    check(unsafe { hypercall(hc::SET_TRAP_TABLE, [table.as_ptr() as u64, 0, 0, 0, 0]) }).map(drop)
}

/// Registers a callback entry point (event upcall, failsafe, ...).
pub fn register_callback(kind: u16, flags: u16, address: u64) -> Result<(), XenError> {
    let arg = CallbackRegister { kind, flags, address };
    // SAFETY: `arg` is a live `struct callback_register` that Xen only reads.
    check(unsafe { hypercall(hc::CALLBACK_OP, [sched::CALLBACKOP_REGISTER as u64, (&raw const arg) as u64, 0, 0, 0]) })
        .map(drop)
}

/// Replaces the mapping of `va` (one page) with `pte`, invalidating it locally.
///
/// # Safety
/// No Rust reference may point into the page at `va`, and whatever the old mapping
/// backed must no longer be needed: its contents become unreachable through `va`.
pub unsafe fn update_va_mapping(va: u64, pte: u64) -> Result<(), XenError> {
    // SAFETY: arguments are plain values; the caller upholds the aliasing contract.
    check(unsafe { hypercall(hc::UPDATE_VA_MAPPING, [va, pte, hc::UVMF_INVLPG as u64, 0, 0]) }).map(drop)
}

/// Sends an event on a bound local port.
pub fn evtchn_send(port: u32) -> Result<(), XenError> {
    event_channel_op(&mut xen_abi::hypercall::EvtchnSend { port })
}

/// Gives up the vCPU for one scheduling round.
pub fn sched_yield() {
    // SAFETY: SCHEDOP_yield takes no pointer.
    unsafe { hypercall(hc::SCHED_OP, [sched::SCHEDOP_YIELD as u64, 0, 0, 0, 0]) };
}

/// Stops the domain with `reason`; Xen does not return to us.
pub fn shutdown(reason: ShutdownReason) -> ! {
    let arg = SchedShutdown { reason: reason as u32 };
    loop {
        // SAFETY: `arg` is a live `struct sched_shutdown` that Xen only reads.
        unsafe { hypercall(hc::SCHED_OP, [sched::SCHEDOP_SHUTDOWN as u64, (&raw const arg) as u64, 0, 0, 0]) };
    }
}

/// Applies page-table writes; `foreign_domid` names whose frames the new entries
/// point at (DOMID_SELF for our own).
///
/// # Safety
/// Each update rewrites a live page-table entry of this domain: the caller must make
/// sure no Rust reference points into memory whose mapping is removed or replaced.
pub unsafe fn mmu_update(updates: &[xen_abi::memory::MmuUpdate], foreign_domid: u16) -> Result<(), XenError> {
    let mut done: u32 = 0;
    // SAFETY: `updates` is a live array of `struct mmu_update` and `done` a live u32
    // Xen writes the success count to; the mapping contract is the caller's.
    let ret = unsafe {
        hypercall(
            hc::MMU_UPDATE,
            [updates.as_ptr() as u64, updates.len() as u64, (&raw mut done) as u64, u64::from(foreign_domid), 0],
        )
    };
    check(ret).map(drop)
}

/// Flushes this vCPU's TLB entry for `va` (MMUEXT_INVLPG_LOCAL): `mmu_update` does
/// not, so a slot remapped to another frame must be flushed before it is used.
pub fn invlpg_local(va: u64) -> Result<(), XenError> {
    let op = xen_abi::memory::MmuextOp { cmd: xen_abi::memory::MMUEXT_INVLPG_LOCAL, arg1: va, arg2: 0 };
    let mut done: u32 = 0;
    // SAFETY: `op` is a live `struct mmuext_op` (layout checked in xen-abi) that Xen only
    // reads, and `done` a live u32 it writes the count to; a TLB flush changes no mapping.
    let ret = unsafe {
        hypercall(
            hc::MMUEXT_OP,
            [(&raw const op) as u64, 1, (&raw mut done) as u64, u64::from(xen_abi::event_channel::DOMID_SELF), 0],
        )
    };
    check(ret).map(drop)
}

/// Event channel operation `T::CMD` on `arg`, which Xen reads and writes back in place.
pub fn event_channel_op<T: EvtchnOp>(arg: &mut T) -> Result<(), XenError> {
    // SAFETY: `T` is one of xen-abi's event channel structs (the trait is sealed there)
    // and `T::CMD` is the command that takes exactly that struct, layouts checked
    // against Xen's headers; `arg` is live and writable for the call.
    check(unsafe { hypercall(hc::EVENT_CHANNEL_OP, [T::CMD as u64, (arg as *mut T) as u64, 0, 0, 0]) }).map(drop)
}

/// A grant table operation on `count` structs starting at `args`.
///
/// # Safety
/// `args` must point at `count` live structs of the type `cmd` takes; any guest
/// address inside them must be valid for what Xen does with it.
pub unsafe fn grant_table_op<T>(cmd: usize, args: *mut T, count: u32) -> Result<(), XenError> {
    // SAFETY: forwarded to the caller's contract.
    check(unsafe { hypercall(hc::GRANT_TABLE_OP, [cmd as u64, args as u64, u64::from(count), 0, 0]) }).map(drop)
}

/// Arms the one-shot timer at absolute system time `deadline_ns` (0 cancels it);
/// VIRQ_TIMER fires when it expires.
pub fn set_timer_op(deadline_ns: u64) -> Result<(), XenError> {
    // SAFETY: set_timer_op takes a plain value.
    check(unsafe { hypercall(hc::SET_TIMER_OP, [deadline_ns, 0, 0, 0, 0]) }).map(drop)
}

/// Blocks the vCPU until an event is pending. Called with upcalls masked, Xen unmasks
/// and checks for pending events atomically, so a wake-up cannot be missed.
pub fn sched_block() {
    // SAFETY: SCHEDOP_block takes no pointer.
    unsafe { hypercall(hc::SCHED_OP, [sched::SCHEDOP_BLOCK as u64, 0, 0, 0, 0]) };
}
