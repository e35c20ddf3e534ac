//! x86_64 PV specifics: the entry point and ELF notes, hypercalls, traps and the
//! event upcall. Everything here runs only on the bare target (not in host tests).

pub mod boot;
pub mod hypercall;
pub mod traps;

/// Reads the time-stamp counter.
pub fn rdtsc() -> u64 {
    let lo: u32;
    let hi: u32;
    // SAFETY: rdtsc only reads the TSC into edx:eax; it touches no memory or stack.
    unsafe {
        core::arch::asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags));
    }
    (u64::from(hi) << 32) | u64::from(lo)
}

/// Returns the current frame pointer (every function keeps one: frame-pointer = always).
pub fn frame_pointer() -> u64 {
    let rbp: u64;
    // SAFETY: copies rbp into a register; no memory access.
    unsafe {
        core::arch::asm!("mov {}, rbp", out(reg) rbp, options(nomem, nostack, preserves_flags));
    }
    rbp
}
