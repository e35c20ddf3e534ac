//! The xenstore protocol without I/O: messages, replies, ring arithmetic, a client session.
//!
//! The kernel copies bytes between the shared ring page and this crate; everything that
//! can be got wrong without touching memory (framing, limits, reply parsing, request ids,
//! transaction retries) lives here, where it is tested on the host. `sim` is an in-memory
//! xenstored that speaks the same bytes, for this crate's tests and for driver crates'.
//!
//! Facts come from Xen's io/xs_wire.h (checked by `tests/layout.rs`) and
//! docs/misc/xenstore.txt.
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;
#[cfg(test)]
extern crate std;

pub mod decoder;
pub mod reply;
pub mod ring;
pub mod session;
#[cfg(any(test, feature = "sim"))]
pub mod sim;
pub mod transaction;
pub mod wire;
