//! The image's first instructions, the ELF notes Xen's PV loader reads, and the
//! page-aligned pages the image reserves for Xen (hypercall page, shared info, stack).
//!
//! Xen enters `_start` in 64-bit mode, ring 3, with rsi pointing at start_info and
//! event delivery masked. The loader reads the notes below: entry point, where to put
//! the hypercall page, where the image is linked, and which loader to use.

use core::arch::global_asm;

/// Where the image is linked and mapped (VIRT_BASE); pseudo-physical page N of the
/// domain sits at `VIRT_BASE + N * 4096` in Xen's initial mapping.
pub const VIRT_BASE: u64 = 0xffff_ffff_8000_0000;

/// Pages reserved for the grant table (512 v1 entries each).
pub const GRANT_TABLE_FRAMES: usize = 4;

/// Size of the boot stack (the only stack, for now).
pub const BOOT_STACK_BYTES: usize = 64 * 1024;

global_asm!(
    r#"
    .macro note_begin type
        .pushsection .note.Xen, "a", @note
        .p2align 2
        .long 4
        .long 2f - 1f
        .long \type
        .asciz "Xen"
        .p2align 2
    1:
    .endm
    .macro note_end
    2:  .p2align 2
        .popsection
    .endm

    note_begin {GUEST_OS}
        .asciz "rust-stubdom"
    note_end
    note_begin {XEN_VERSION}
        .asciz "xen-3.0"
    note_end
    note_begin {LOADER}
        .asciz "generic"
    note_end
    note_begin {VIRT_BASE}
        .quad {base}
    note_end
    note_begin {PADDR_OFFSET}
        .quad {base}
    note_end
    note_begin {ENTRY}
        .quad _start
    note_end
    note_begin {HYPERCALL_PAGE}
        .quad hypercall_page
    note_end
    note_begin {SUSPEND_CANCEL}
        .long 1
    note_end
    note_begin {GUEST_VERSION}
    "#,
    concat!(".asciz \"", env!("CARGO_PKG_VERSION"), "\""),
    r#"
    note_end

    .section .bss.page_aligned, "aw", @nobits
    .p2align 12
    .global hypercall_page
    hypercall_page: .skip 4096
    .global shared_info_page
    shared_info_page: .skip 4096
    .global grant_table_frames
    grant_table_frames: .skip {grant_frames} * 4096
    .global stack_guard_page
    stack_guard_page: .skip 4096
    .global boot_stack
    boot_stack: .skip {stack_bytes}
    .global boot_stack_top
    boot_stack_top:

    .section .text.boot, "ax"
    .global _start
    _start:
        cld
        lea boot_stack_top(%rip), %rsp
        xor %ebp, %ebp
        mov %rsi, %rdi
        call kernel_main
    3:  ud2
        jmp 3b
    "#,
    GUEST_OS = const xen_abi::elfnote::GUEST_OS,
    GUEST_VERSION = const xen_abi::elfnote::GUEST_VERSION,
    XEN_VERSION = const xen_abi::elfnote::XEN_VERSION,
    LOADER = const xen_abi::elfnote::LOADER,
    VIRT_BASE = const xen_abi::elfnote::VIRT_BASE,
    PADDR_OFFSET = const xen_abi::elfnote::PADDR_OFFSET,
    ENTRY = const xen_abi::elfnote::ENTRY,
    HYPERCALL_PAGE = const xen_abi::elfnote::HYPERCALL_PAGE,
    SUSPEND_CANCEL = const xen_abi::elfnote::SUSPEND_CANCEL,
    base = const VIRT_BASE,
    stack_bytes = const BOOT_STACK_BYTES,
    grant_frames = const GRANT_TABLE_FRAMES,
    options(att_syntax)
);

unsafe extern "C" {
    /// The page Xen fills with one 32-byte call stub per hypercall.
    pub static hypercall_page: [u8; 4096];
    /// A page of the image whose mapping is replaced by the shared info frame.
    pub static shared_info_page: [u8; 4096];
    /// Pages whose mappings are replaced by the grant table frames.
    pub static grant_table_frames: [u8; GRANT_TABLE_FRAMES * 4096];
    /// Left unmapped once memory is set up, so a stack overflow faults.
    pub static stack_guard_page: [u8; 4096];
    pub static boot_stack: [u8; BOOT_STACK_BYTES];
}

/// Address range of the boot stack, for walking frame-pointer chains safely.
pub fn boot_stack_range() -> core::ops::Range<u64> {
    let start = (&raw const boot_stack) as u64;
    start..start + BOOT_STACK_BYTES as u64
}
