//! The device model that runs in the stub domain, as safe code over `xen-seams`.
//!
//! - [`dm_args`]: the QEMU-style argv libxl writes for the stub domain, read back into
//!   the drives to emulate and whether this start is a restore.
//! - [`state_file`]: how the device state crosses the save and restore consoles.
//! - [`service`]: the control plane libxl talks to: QMP over libvchan with the PV disks
//!   as the drives' media, readiness in xenstore, save and restore.
//!
//! The emulated devices themselves (ioreq server, PCI, IDE, 16550, NIC) are to come;
//! what stands in for them is named in [`service`].
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod dm_args;
pub mod ide;
pub mod service;
pub mod state_file;
