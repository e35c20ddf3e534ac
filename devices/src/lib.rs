//! The device model that runs in the stub domain, as safe code over `xen-seams`.
//!
//! - [`machine`]: the guest's machine as a qemu-xen `xenfv` guest finds it (i440FX,
//!   PIIX3 with its IDE function, CMOS, ACPI PM, COM1) behind one bus, answering the
//!   ioreqs Xen forwards, with the guest's NICs ([`nic`]: RTL8139 and 82540EM);
//!   its devices are synchronous state machines:
//!   [`pci`] (config spaces, i440FX, PIIX3), [`ide`] (ATA disk and ATAPI CD-ROM, PIO),
//!   [`uart`] (16550A), [`cmos`] (NVRAM above Xen's RTC), [`pm`] (PM1a control, GPE0),
//!   [`i8042`] (the keyboard controller, for reset), [`platform`] (the Xen platform
//!   device: unplug of emulated disks and NICs for PV drivers, blacklist, log port).
//! - [`block`]: the block layer: drives named and numbered as libxl and QEMU do, trays,
//!   locks, media that are the stub domain's own PV disks, and fdsets.
//! - [`vm`]: the VM as QMP sees it: the run state (running or paused, STOP/RESUME),
//!   the block layer and the events they cause; [`vm::Vm`] implements the `qmp` crate's
//!   `Monitor` trait, which the QMP session dispatches commands to.
//! - [`service`]: the stub domain's device model as libxl runs it: the ioreq server,
//!   block workers on the PV disks, a network task per NIC, the serial console, QMP
//!   over libvchan, hot-plug, readiness, save and restore, as separate tasks.
//! - [`dm_args`]: the QEMU-style argv libxl writes for the stub domain.
//! - [`state_file`]: how the device state crosses the save and restore consoles;
//!   [`snapshot`]: the sections of that state, one per device.
//! - [`task`], [`ratelimit`]: small helpers for the tasks and for bounded logging;
//!   [`vec_memory`]: guest RAM in a `Vec` for the fuzz drivers and host tests.
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod block;
pub mod cmos;
pub mod dirty;
pub mod dm_args;
pub mod i8042;
pub mod ide;
pub mod machine;
pub mod nic;
pub mod pci;
pub mod platform;
pub mod pm;
pub mod ratelimit;
pub mod service;
pub mod snapshot;
pub mod state_file;
pub mod task;
pub mod uart;
pub mod vec_memory;
pub mod vm;
