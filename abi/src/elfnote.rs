//! `XEN_ELFNOTE_*` types (elfnote.h) that Xen's PV loader reads from the image.

pub const ENTRY: u32 = 1;
pub const HYPERCALL_PAGE: u32 = 2;
pub const VIRT_BASE: u32 = 3;
pub const PADDR_OFFSET: u32 = 4;
pub const XEN_VERSION: u32 = 5;
pub const GUEST_OS: u32 = 6;
pub const GUEST_VERSION: u32 = 7;
pub const LOADER: u32 = 8;
pub const FEATURES: u32 = 10;
pub const SUSPEND_CANCEL: u32 = 14;
