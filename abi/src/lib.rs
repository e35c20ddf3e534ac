//! Xen's public guest interface for an x86_64 PV domain, defined by us.
//!
//! Every `#[repr(C)]` type here mirrors a struct of Xen's public headers and has its
//! size and field offsets checked against the real headers (`tests/layout.rs`, which
//! compiles a C program against /usr/include/xen). The kernel reads and writes these
//! through raw pointers; the safe crates use them as plain data.
#![no_std]
#![forbid(unsafe_code)]

pub mod console;
pub mod elfnote;
pub mod event_channel;
pub mod grant_table;
pub mod hvm;
pub mod hypercall;
pub mod memory;
pub mod sched;
pub mod shared;
pub mod start_info;
pub mod traps;
