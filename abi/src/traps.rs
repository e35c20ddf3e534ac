//! Trap table entries and segment selectors (arch-x86/xen.h, xen-x86_64.h).

/// A 64-bit PV kernel runs in ring 3 with Xen's flat 64-bit code segment.
pub const FLAT_KERNEL_CS64: u16 = 0xe033;
pub const FLAT_KERNEL_SS64: u16 = 0xe02b;

/// `trap_info.flags` bit: deliver with event delivery masked, like an interrupt gate.
pub const TI_MASK_EVENTS: u8 = 1 << 2;

/// `struct trap_info`; a table ends with an all-zero entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct TrapInfo {
    pub vector: u8,
    /// Bits 0-1: the lowest privilege level that may raise it with `int`; bit 2: mask events.
    pub flags: u8,
    pub cs: u16,
    pub address: u64,
}

/// Exception vectors that push an error code.
pub const fn has_error_code(vector: u8) -> bool {
    matches!(vector, 8 | 10 | 11 | 12 | 13 | 14 | 17 | 21)
}

/// Names of the architectural exception vectors 0..=21.
pub fn vector_name(vector: u8) -> &'static str {
    match vector {
        0 => "divide error",
        1 => "debug",
        2 => "nmi",
        3 => "breakpoint",
        4 => "overflow",
        5 => "bound range",
        6 => "invalid opcode",
        7 => "device not available",
        8 => "double fault",
        9 => "coprocessor segment overrun",
        10 => "invalid tss",
        11 => "segment not present",
        12 => "stack fault",
        13 => "general protection",
        14 => "page fault",
        16 => "x87 floating point",
        17 => "alignment check",
        18 => "machine check",
        19 => "simd floating point",
        20 => "virtualization",
        21 => "control protection",
        _ => "reserved",
    }
}
