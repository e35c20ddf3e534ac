//! The device model's QMP server without I/O: the protocol and the command dispatch.
//!
//! libxl drives a qemu-xen stub domain over QMP: it reads the greeting, negotiates
//! capabilities, changes CD-ROMs (`eject`, `query-fdsets`, `remove-fd`,
//! `blockdev-change-medium`) and saves the device model (`xen-set-global-dirty-log`,
//! `stop`, `xen-save-devices-state`). This crate speaks that protocol as QEMU does, over
//! bytes the caller moves: the image copies bytes between the libvchan server and a
//! [`Session`]; the tests feed the same bytes from fixtures.
//!
//! - [`protocol`]: one connection. [`Session::open`] queues the greeting;
//!   [`Session::feed`] takes whatever bytes arrived (split or merged messages), runs the
//!   commands and queues replies and events, `\r\n`-terminated as QEMU writes them;
//!   slow work a command needs ([`SlowEffect`]) is handed out and its reply waits.
//! - [`commands`]: the command set: each command's arguments read as QEMU reads them
//!   ([`QmpError`]s with QEMU's wording), then handed to the device model through the
//!   small [`Monitor`] trait it implements (run state, block layer, fdsets, saved state,
//!   events). The device model itself, with the state that outlives connections, is
//!   not here: it is devices' `Vm` (drives, trays, media, fdsets, running or paused).
//! - [`qapi`]: the wire types commands return and events carry (`query-block`'s
//!   [`BlockInfo`](qapi::BlockInfo), [`Event`], [`RunState`]), filled in by the monitor.
//! - [`json`], [`error`]: JSON values as clients send them, and error replies.
//! - [`check`]: whether output is a well-formed QMP stream (for fuzzing and tests).
//!
//! Time is an argument (a [`Timestamp`] for event stamps), never read from a clock.
//!
//! Facts come from QEMU (monitor/qmp.c, qapi/qmp-dispatch.c, qobject/json-streamer.c,
//! qapi/qobject-input-visitor.c, the QAPI schema) and libxl (tools/libs/light/libxl_qmp.c,
//! libxl_disk.c, libxl_dm.c).
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;
#[cfg(test)]
extern crate std;

mod args;
pub mod check;
pub mod commands;
pub mod error;
pub mod json;
pub mod protocol;
pub mod qapi;

pub use commands::{Monitor, Outcome, SlowEffect};
pub use error::{ErrorClass, QmpError};
pub use protocol::{MAX_HELD_MESSAGES, Session, Timestamp, VersionInfo};
pub use qapi::{DriveRef, Event, ReadOnlyMode, RunState, TimedEvent};
