//! The device model's QMP server without I/O: protocol session, commands, block layer.
//!
//! libxl drives a qemu-xen stub domain over QMP: it reads the greeting, negotiates
//! capabilities, changes CD-ROMs (`eject`, `query-fdsets`, `remove-fd`,
//! `blockdev-change-medium`) and saves the device model (`xen-set-global-dirty-log`,
//! `stop`, `xen-save-devices-state`). This crate speaks that protocol as QEMU does, over
//! bytes the caller moves: the image copies bytes between the libvchan server and a
//! [`Session`]; the tests feed the same bytes from fixtures.
//!
//! - [`protocol`]: one connection. [`Session::new`] queues the greeting; [`Session::feed`]
//!   takes whatever bytes arrived (split or merged messages), runs the commands and
//!   queues replies and events, `\r\n`-terminated as QEMU writes them.
//! - [`commands`]: the [`Engine`], the state that outlives connections (run state, block
//!   layer, pending events) and the command set; the device model itself sits behind the
//!   [`DeviceModel`] trait the image implements.
//! - [`block`]: drives named and numbered as libxl and QEMU do, trays, locks, media that
//!   are the stub domain's own PV disks, and fdsets.
//!
//! Time is an argument (a [`Timestamp`] for event stamps), never read from a clock.
//!
//! What the image does with it:
//!
//! ```
//! use qmp::block::{DriveConfig, DriveKind, MediumSource, PvDiskInfo};
//! use qmp::{DeviceModel, DeviceModelError, Engine, EngineConfig, Timestamp};
//!
//! struct Devices; // the real device model
//! impl DeviceModel for Devices {
//!     fn pause(&mut self) {}
//!     fn resume(&mut self) {}
//!     fn set_global_dirty_log(&mut self, _enable: bool) {}
//!     fn save_state(&mut self, _live: bool) -> Result<Vec<u8>, DeviceModelError> { Ok(vec![]) }
//!     fn load_state(&mut self, _state: &[u8]) -> Result<(), DeviceModelError> { Ok(()) }
//!     fn read_console(&mut self, _n: u32) -> Result<Vec<u8>, DeviceModelError> { Ok(vec![]) }
//!     fn quit(&mut self) {}
//! }
//!
//! let mut engine = Engine::new(Devices, EngineConfig::default()); // fdset 1 = console 1
//! // blkfront connected the guest's hdc (devid 5632): it gets fdset `stub-devid:5632`.
//! engine.pv_disk_connected(5632, PvDiskInfo { read_only: true, size_bytes: 1 << 20 });
//! // `-drive if=none,readonly=on,id=ide-5632,file=/dev/xvdc,format=host_device`
//! let medium = MediumSource { filename: "/dev/xvdc".into(), format: Some("host_device".into()) };
//! let cd = DriveConfig { devid: 5632, kind: DriveKind::CdRom, read_only: true, medium: Some(medium) };
//! engine.add_drive(cd).unwrap();
//!
//! // A vchan client connected: send the greeting, then feed what arrives.
//! let mut session = engine.open_session();
//! let now = Timestamp::new(1_700_000_000, 0);
//! session.feed(&mut engine, b"{\"execute\":\"qmp_capabilities\",\"id\":1}\r\n", now);
//! session.feed(&mut engine, b"{\"execute\":\"eject\",\"arguments\":{\"id\":\"ide-5632\"}}", now);
//! // After a hook that may cause events (the guest moved a tray), deliver them.
//! session.deliver_events(&mut engine);
//! let to_send = session.take_output(); // greeting, replies, events, each ending \r\n
//! assert!(to_send.ends_with(b"\r\n"));
//! ```
//!
//! Facts come from QEMU (monitor/qmp.c, qapi/qmp-dispatch.c, qobject/json-streamer.c,
//! qapi/qobject-input-visitor.c, block/qapi-sysemu.c, monitor/fds.c, migration/savevm.c,
//! the QAPI schema) and libxl (tools/libs/light/libxl_qmp.c, libxl_disk.c, libxl_dm.c).
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;
#[cfg(test)]
extern crate std;

mod args;
pub mod block;
pub mod commands;
pub mod error;
pub mod json;
pub mod protocol;
#[cfg(any(test, feature = "sim"))]
pub mod sim;

pub use commands::{DeviceModel, DeviceModelError, Engine, EngineConfig, Event, Outcome, RunState, SlowEffect};
pub use error::{ErrorClass, QmpError};
pub use protocol::{MAX_HELD_MESSAGES, Session, Timestamp, VersionInfo};
