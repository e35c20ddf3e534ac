//! The two ways the image dies on purpose: a Rust panic and a CPU exception. Both
//! print what happened and a chain of return addresses on console 0, flush it, and
//! shut the domain down with reason crash so the toolstack sees a crash.

use crate::arch::{self, boot, hypercall, traps::TrapFrame};
use crate::console::{self, ConsoleWriter};
use core::fmt::Write;
use core::sync::atomic::{AtomicBool, Ordering};
use xen_abi::sched::ShutdownReason;
use xen_abi::traps;

/// Set by the first fatal error; a second one (say, a fault while reporting) skips
/// straight to the shutdown.
static DYING: AtomicBool = AtomicBool::new(false);

/// At most this many return addresses are printed.
const MAX_FRAMES: usize = 16;

fn die(report: impl FnOnce(&mut ConsoleWriter)) -> ! {
    if !DYING.swap(true, Ordering::SeqCst) {
        console::with_console_for_fatal(|c| {
            report(c);
            c.flush();
        });
    }
    hypercall::shutdown(ShutdownReason::Crash)
}

/// Prints the return addresses found by following saved frame pointers from `rbp`.
/// Only frames inside the boot stack are followed, so a corrupt chain ends the walk.
fn write_backtrace(c: &mut ConsoleWriter, mut rbp: u64) {
    let stack = boot::boot_stack_range();
    let _ = write!(c, "backtrace:");
    for _ in 0..MAX_FRAMES {
        if !rbp.is_multiple_of(8) || !stack.contains(&rbp) || !stack.contains(&(rbp + 15)) {
            break;
        }
        // SAFETY: rbp and rbp+8 lie inside the boot stack (checked above), which is
        // mapped and readable; we only read two words of it.
        let (next, ret) = unsafe { ((rbp as *const u64).read_volatile(), ((rbp + 8) as *const u64).read_volatile()) };
        if ret == 0 {
            break;
        }
        let _ = write!(c, " {ret:#x}");
        if next <= rbp {
            break;
        }
        rbp = next;
    }
    let _ = writeln!(c);
}

/// Reports a fatal exception and crashes the domain.
pub fn exception(f: &TrapFrame) -> ! {
    die(|c| {
        let name = if f.vector == arch::traps::FAILSAFE_VECTOR {
            "failsafe callback"
        } else {
            traps::vector_name(f.vector as u8)
        };
        let _ = writeln!(
            c,
            "fatal exception: vector {} ({}) error_code={:#x} rip={:#x} cr2={:#x}",
            f.vector,
            name,
            f.error_code,
            f.rip,
            crate::shared_info::vcpu0_cr2()
        );
        // Xen keeps the saved event mask in the upper bits of the CS slot.
        let _ = writeln!(
            c,
            "rsp={:#x} rbp={:#x} rflags={:#x} cs={:#x} ss={:#x}",
            f.rsp,
            f.rbp,
            f.rflags,
            f.cs & 0xffff,
            f.ss & 0xffff
        );
        let _ = writeln!(
            c,
            "rax={:#x} rbx={:#x} rcx={:#x} rdx={:#x} rsi={:#x} rdi={:#x}",
            f.rax, f.rbx, f.rcx, f.rdx, f.rsi, f.rdi
        );
        let _ = writeln!(
            c,
            "r8={:#x} r9={:#x} r10={:#x} r11={:#x} r12={:#x} r13={:#x} r14={:#x} r15={:#x}",
            f.r8, f.r9, f.r10, f.r11, f.r12, f.r13, f.r14, f.r15
        );
        write_backtrace(c, f.rbp);
    })
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    die(|c| {
        let _ = write!(c, "panic: {}", info.message());
        if let Some(loc) = info.location() {
            let _ = write!(c, " at {}:{}:{}", loc.file(), loc.line(), loc.column());
        }
        let _ = writeln!(c);
        write_backtrace(c, arch::frame_pointer());
    })
}
