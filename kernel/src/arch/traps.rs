//! Exception entry, the event upcall and the failsafe callback.
//!
//! Xen delivers an exception to a 64-bit PV kernel by pushing, on the kernel stack,
//! `ss, rsp, rflags, cs, rip, [error code], r11, rcx` (rcx/r11 last, because Xen's
//! own `syscall` return path clobbers them). The stubs pop rcx/r11 back, push a zero
//! error code where the CPU pushes none and the vector number, and hand one uniform
//! `TrapFrame` to Rust. Every exception is fatal today: the handler reports it and
//! crashes the domain. The event upcall has the same frame without an error code and
//! returns with `iretq` (a PV kernel runs in ring 3, so a same-ring iretq works once
//! the RPL bits Xen cleared in CS/SS are put back).

use core::arch::global_asm;
use xen_abi::traps::{self as t, TrapInfo};

/// Vector number the failsafe callback reports (not an architectural vector).
pub const FAILSAFE_VECTOR: u64 = 256;

global_asm!(
    r#"
    .macro trap_noerr n
    .global trap_\n
    trap_\n:
        pop %rcx
        pop %r11
        push $0
        push $\n
        jmp trap_common
    .endm
    .macro trap_err n
    .global trap_\n
    trap_\n:
        pop %rcx
        pop %r11
        push $\n
        jmp trap_common
    .endm

    .text
    trap_noerr 0
    trap_noerr 1
    trap_noerr 3
    trap_noerr 4
    trap_noerr 5
    trap_noerr 6
    trap_noerr 7
    trap_err 8
    trap_noerr 9
    trap_err 10
    trap_err 11
    trap_err 12
    trap_err 13
    trap_err 14
    trap_noerr 16
    trap_err 17
    trap_noerr 18
    trap_noerr 19
    trap_noerr 20
    trap_err 21

    /* Failsafe frame: rcx, r11, ds, es, fs, gs, rip, cs, rflags, rsp, ss. */
    .global failsafe_callback
    failsafe_callback:
        pop %rcx
        pop %r11
        add $32, %rsp
        push $0
        push ${failsafe}
        jmp trap_common

    /* Stack: vector, error, rip, cs, rflags, rsp, ss. Save every GPR, then report. */
    trap_common:
        push %rax
        push %rbx
        push %rcx
        push %rdx
        push %rsi
        push %rdi
        push %rbp
        push %r8
        push %r9
        push %r10
        push %r11
        push %r12
        push %r13
        push %r14
        push %r15
        mov %rsp, %rdi
        and $-16, %rsp
        call trap_handler
    1:  ud2
        jmp 1b

    /* Event upcall: rcx, r11, rip, cs, rflags, rsp, ss. Save what the C ABI lets a
       call clobber, run the Rust handler, restore, return to the interrupted code. */
    .global hypervisor_callback
    hypervisor_callback:
        pop %rcx
        pop %r11
        push %rax
        push %rcx
        push %rdx
        push %rsi
        push %rdi
        push %r8
        push %r9
        push %r10
        push %r11
        push %rbp
        mov %rsp, %rbp
        and $-16, %rsp
        call event_upcall
        mov %rbp, %rsp
        pop %rbp
        pop %r11
        pop %r10
        pop %r9
        pop %r8
        pop %rdi
        pop %rsi
        pop %rdx
        pop %rcx
        pop %rax
        orb $3, 8(%rsp)
        orb $3, 32(%rsp)
        /* Xen masked upcalls on entry; the interrupted code ran unmasked (Xen only
           delivers upcalls then), so unmask: vcpu_info[0].evtchn_upcall_mask. An
           event arriving from here on nests a new upcall or waits for the next
           entry into Xen; the executor also scans before it blocks. */
        movb $0, shared_info_page+1(%rip)
        iretq
    "#,
    failsafe = const FAILSAFE_VECTOR,
    options(att_syntax)
);

unsafe extern "C" {
    fn trap_0();
    fn trap_1();
    fn trap_3();
    fn trap_4();
    fn trap_5();
    fn trap_6();
    fn trap_7();
    fn trap_8();
    fn trap_9();
    fn trap_10();
    fn trap_11();
    fn trap_12();
    fn trap_13();
    fn trap_14();
    fn trap_16();
    fn trap_17();
    fn trap_18();
    fn trap_19();
    fn trap_20();
    fn trap_21();
    fn failsafe_callback();
    fn hypervisor_callback();
}

/// Registers saved by `trap_common`, in stack order, followed by the CPU/Xen frame.
#[repr(C)]
#[derive(Debug)]
pub struct TrapFrame {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rbp: u64,
    pub rdi: u64,
    pub rsi: u64,
    pub rdx: u64,
    pub rcx: u64,
    pub rbx: u64,
    pub rax: u64,
    pub vector: u64,
    pub error_code: u64,
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
}

/// Installs the trap table and registers the event and failsafe callbacks.
pub fn init() {
    let entries: [(u8, unsafe extern "C" fn()); 20] = [
        (0, trap_0),
        (1, trap_1),
        (3, trap_3),
        (4, trap_4),
        (5, trap_5),
        (6, trap_6),
        (7, trap_7),
        (8, trap_8),
        (9, trap_9),
        (10, trap_10),
        (11, trap_11),
        (12, trap_12),
        (13, trap_13),
        (14, trap_14),
        (16, trap_16),
        (17, trap_17),
        (18, trap_18),
        (19, trap_19),
        (20, trap_20),
        (21, trap_21),
    ];
    let mut table = [TrapInfo::default(); 21];
    for (slot, (vector, entry)) in table.iter_mut().zip(entries) {
        // int3 may be raised from any ring; the rest only by the CPU or the kernel.
        let dpl = if vector == 3 { 3 } else { 0 };
        *slot = TrapInfo {
            vector,
            flags: dpl | t::TI_MASK_EVENTS,
            cs: t::FLAT_KERNEL_CS64,
            address: entry as *const () as u64,
        };
    }
    super::hypercall::set_trap_table(&table).expect("set_trap_table");
    use xen_abi::sched::{CALLBACKF_MASK_EVENTS, CALLBACKTYPE_EVENT, CALLBACKTYPE_FAILSAFE};
    super::hypercall::register_callback(
        CALLBACKTYPE_EVENT,
        CALLBACKF_MASK_EVENTS,
        hypervisor_callback as *const () as u64,
    )
    .expect("register event callback");
    super::hypercall::register_callback(
        CALLBACKTYPE_FAILSAFE,
        CALLBACKF_MASK_EVENTS,
        failsafe_callback as *const () as u64,
    )
    .expect("register failsafe callback");
}

/// Reports a fatal exception and crashes the domain.
#[unsafe(no_mangle)]
extern "C" fn trap_handler(frame: *const TrapFrame) -> ! {
    // SAFETY: `trap_common` passes the address of the frame it just built on this
    // stack; it stays untouched because this function never returns.
    let frame = unsafe { &*frame };
    crate::fatal::exception(frame)
}

/// Runs on every event upcall (Xen has masked further upcalls on entry).
#[unsafe(no_mangle)]
extern "C" fn event_upcall() {
    crate::events::on_upcall();
}
