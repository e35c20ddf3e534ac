//! The command set libxl uses: each command's arguments read as QEMU reads them, then
//! handed to the device model through the [`Monitor`] trait.
//!
//! What each command does here, and what it asks of the [`Monitor`]:
//!
//! - `qmp_capabilities`: ends negotiation ([`Session`](crate::Session)); `enable:
//!   ["oob"]` is refused, as QEMU does without an I/O thread.
//! - `query-version` (what the session announced), `query-commands` ([`COMMANDS`]):
//!   answered here.
//! - `query-status`, `stop`, `cont`: [`Monitor::run_state`], [`Monitor::stop`],
//!   [`Monitor::cont`] (the run state and its STOP/RESUME events are the device model's).
//! - `quit`: [`Monitor::quit`]; the session reads nothing more.
//! - `query-block`, `eject`, `blockdev-open-tray`, `blockdev-close-tray`,
//!   `blockdev-change-medium`: the device model's block layer, by drive
//!   ([`DriveRef`]: exactly one of `device` and `id`).
//! - `add-fd`: always "No file descriptor supplied via SCM_RIGHTS" (vchan cannot carry
//!   one, and QEMU says exactly this when none came).
//! - `remove-fd`, `query-fdsets`: the device model's fdsets.
//! - `query-cpus-fast`: one entry per vCPU of [`Monitor::vcpus`] (libxl reads the
//!   online vCPUs from it before `xl save`); there is no CPU hotplug.
//! - `xen-set-global-dirty-log`: [`Monitor::set_global_dirty_log`].
//! - `xen-save-devices-state`: [`Monitor::start_save`] gives the slow work (the state
//!   file's write to a console): the command returns [`Outcome::Pending`], the caller
//!   carries the work out, and the reply (success, or the reason it failed) follows only
//!   then ([`complete_effect`], [`Monitor::complete_save`]).
//! - `xen-load-devices-state`: [`Monitor::load_state`].
//!
//! Argument errors use QEMU's wording (qapi/qobject-input-visitor.c) and come before
//! the device model is asked anything.

use alloc::collections::VecDeque;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use serde::Serialize;
use serde_json::json;

use crate::args::Args;
use crate::error::{ErrorClass, QmpError};
use crate::json::Object;
use crate::protocol::{Timestamp, VersionInfo};
use crate::qapi::{BlockInfo, DriveRef, FdsetInfo, ReadOnlyMode, RunState, TimedEvent};

/// Every command this server knows, in the order `query-commands` lists them.
pub const COMMANDS: [&str; 19] = [
    "qmp_capabilities",
    "query-version",
    "query-commands",
    "query-status",
    "query-cpus-fast",
    "stop",
    "cont",
    "quit",
    "query-block",
    "eject",
    "blockdev-open-tray",
    "blockdev-close-tray",
    "blockdev-change-medium",
    "add-fd",
    "remove-fd",
    "query-fdsets",
    "xen-set-global-dirty-log",
    "xen-save-devices-state",
    "xen-load-devices-state",
];

/// The device model as QMP commands reach it: its run state, its block layer and
/// fdsets, its saved state, and the events all these cause.
///
/// Every method gets arguments already checked against the schema; errors it returns
/// go to the client as they are (their wording is the implementation's, QEMU's where
/// QEMU has one). Methods that may cause events get `now` to stamp them; the session
/// collects them with [`take_events`](Self::take_events) after each command.
pub trait Monitor {
    /// `query-status`.
    fn run_state(&self) -> RunState;

    /// `stop`: pauses a running VM (a STOP event); nothing if it is paused.
    fn stop(&mut self, now: Timestamp);

    /// `cont`: resumes a paused VM (a RESUME event); nothing if it runs.
    fn cont(&mut self, now: Timestamp);

    /// `quit`: the device model is to exit (the stub domain shuts down).
    fn quit(&mut self);

    /// `query-cpus-fast`: how many vCPUs the guest has (all online).
    fn vcpus(&self) -> u32;

    /// `query-block`: every drive, in creation order.
    fn query_block(&self) -> Vec<BlockInfo>;

    /// `eject`: opens the tray (asking the guest first if it locked it, unless `force`)
    /// and removes the medium.
    fn eject(&mut self, drive: DriveRef<'_>, force: bool, now: Timestamp) -> Result<(), QmpError>;

    /// `blockdev-open-tray`.
    fn open_tray(&mut self, drive: DriveRef<'_>, force: bool, now: Timestamp) -> Result<(), QmpError>;

    /// `blockdev-close-tray`.
    fn close_tray(&mut self, drive: DriveRef<'_>, now: Timestamp) -> Result<(), QmpError>;

    /// `blockdev-change-medium`: `filename` opened as `format` (None: not given).
    fn change_medium(
        &mut self,
        drive: DriveRef<'_>,
        filename: &str,
        format: Option<&str>,
        mode: ReadOnlyMode,
        now: Timestamp,
    ) -> Result<(), QmpError>;

    /// `remove-fd`: entry `fd` of fdset `fdset_id`, or the whole set.
    fn remove_fd(&mut self, fdset_id: i64, fd: Option<i64>) -> Result<(), QmpError>;

    /// `query-fdsets`.
    fn query_fdsets(&self) -> Vec<FdsetInfo<'_>>;

    /// `xen-set-global-dirty-log`: while enabled, guest memory the device model writes
    /// (DMA) must be reported to Xen as modified so that a live save copies it again.
    fn set_global_dirty_log(&mut self, enable: bool);

    /// `xen-save-devices-state`: takes the devices' state for `filename` and returns the
    /// write that is left to do. `live` is libxl's "this is a live migration" flag (true
    /// when not given, as in QEMU).
    fn start_save(&mut self, filename: &str, live: bool, now: Timestamp) -> Result<SlowEffect, QmpError>;

    /// The write [`start_save`](Self::start_save) returned is done (`Err` says why it
    /// failed): finishes the save.
    fn complete_save(&mut self, result: Result<(), String>, now: Timestamp) -> Result<(), QmpError>;

    /// `xen-load-devices-state`: restores the devices from `filename`.
    fn load_state(&mut self, filename: &str) -> Result<(), QmpError>;

    /// The events not yet delivered, oldest first.
    fn take_events(&mut self) -> VecDeque<TimedEvent>;
}

/// Work a command needs that cannot be done while the command runs (it waits for a
/// peer): the caller carries it out and reports back ([`Session::complete`]).
///
/// [`Session::complete`]: crate::Session::complete
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SlowEffect {
    /// Write `data` to PV console `console` and wait until dom0 has taken all of it.
    WriteStateFile { console: u32, data: Vec<u8> },
    /// `stop`: wait until the devices' I/O in flight has finished (a DMA transfer has
    /// written guest memory and reported its pages to the dirty log), so that nothing
    /// changes the guest after the reply (libxl saves memory and device state next).
    Quiesce,
}

/// What running a command gave.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// The reply, now.
    Done(Result<serde_json::Value, QmpError>),
    /// The reply waits for `effect`.
    Pending(SlowEffect),
}

impl From<Result<serde_json::Value, QmpError>> for Outcome {
    fn from(result: Result<serde_json::Value, QmpError>) -> Outcome {
        Outcome::Done(result)
    }
}

/// Runs a negotiated session's command (everything but `qmp_capabilities`, which the
/// session handles) against `monitor`; `version` is what `query-version` reports.
/// Events it causes are stamped `now`. A command with slow work returns it as
/// [`Outcome::Pending`]; its reply comes from [`complete_effect`].
pub fn execute<M: Monitor + ?Sized>(
    monitor: &mut M,
    version: &VersionInfo,
    command: &str,
    arguments: &Object,
    now: Timestamp,
) -> Outcome {
    if command == "xen-save-devices-state" {
        return start_save(monitor, arguments, now);
    }
    if command == "stop" {
        if let Err(error) = Args::new(arguments).finish() {
            return Outcome::Done(Err(error));
        }
        monitor.stop(now);
        return Outcome::Pending(SlowEffect::Quiesce);
    }
    execute_now(monitor, version, command, arguments, now).into()
}

/// `xen-save-devices-state`: reads the arguments and hands the save to the monitor.
fn start_save<M: Monitor + ?Sized>(monitor: &mut M, arguments: &Object, now: Timestamp) -> Outcome {
    let mut args = Args::new(arguments);
    let parsed = (|| {
        let filename = args.str("filename")?;
        let live = args.opt_bool("live")?;
        args.finish()?;
        Ok((filename, live))
    })();
    let (filename, live) = match parsed {
        Ok(parsed) => parsed,
        Err(error) => return Outcome::Done(Err(error)),
    };
    match monitor.start_save(filename, live.unwrap_or(true), now) {
        Ok(effect) => Outcome::Pending(effect),
        Err(error) => Outcome::Done(Err(error)),
    }
}

/// The slow work of the command [`execute`] left pending is done (`Err` says why it
/// failed): finishes the command (a save, if `save`, else a `stop`) and returns its reply.
pub fn complete_effect<M: Monitor + ?Sized>(
    monitor: &mut M,
    save: bool,
    result: Result<(), String>,
    now: Timestamp,
) -> Result<serde_json::Value, QmpError> {
    if save {
        return monitor.complete_save(result, now).map(|()| empty());
    }
    result.map(|()| empty()).map_err(QmpError::generic)
}

fn execute_now<M: Monitor + ?Sized>(
    monitor: &mut M,
    version: &VersionInfo,
    command: &str,
    arguments: &Object,
    now: Timestamp,
) -> Result<serde_json::Value, QmpError> {
    let mut args = Args::new(arguments);
    match command {
        "query-version" => {
            args.finish()?;
            to_value(version)
        }
        "query-commands" => {
            args.finish()?;
            Ok(serde_json::Value::Array(COMMANDS.iter().map(|name| json!({ "name": name })).collect()))
        }
        "query-status" => {
            args.finish()?;
            let run_state = monitor.run_state();
            Ok(json!({
                "running": run_state == RunState::Running,
                "status": run_state.as_str(),
            }))
        }
        "query-cpus-fast" => {
            // libxl reads the online vCPUs from it (xl save, xl list -l): QEMU's
            // CpuInfoFast for qemu-system-i386, one socket per vCPU.
            args.finish()?;
            Ok(serde_json::Value::Array(
                (0..monitor.vcpus())
                    .map(|cpu| {
                        json!({
                            "cpu-index": cpu,
                            "qom-path": format!("/machine/unattached/device[{cpu}]"),
                            "thread-id": cpu,
                            "props": { "socket-id": cpu, "core-id": 0, "thread-id": 0 },
                            "target": "i386",
                        })
                    })
                    .collect(),
            ))
        }
        "cont" => {
            args.finish()?;
            monitor.cont(now);
            Ok(empty())
        }
        "quit" => {
            args.finish()?;
            monitor.quit();
            Ok(empty())
        }
        "query-block" => {
            args.finish()?;
            to_value(&monitor.query_block())
        }
        "eject" => {
            let (device, id) = (args.opt_str("device")?, args.opt_str("id")?);
            let force = args.opt_bool("force")?.unwrap_or(false);
            args.finish()?;
            let drive = DriveRef::from_args(device, id)?;
            monitor.eject(drive, force, now).map(|()| empty())
        }
        "blockdev-open-tray" => {
            let (device, id) = (args.opt_str("device")?, args.opt_str("id")?);
            let force = args.opt_bool("force")?.unwrap_or(false);
            args.finish()?;
            let drive = DriveRef::from_args(device, id)?;
            monitor.open_tray(drive, force, now).map(|()| empty())
        }
        "blockdev-close-tray" => {
            let (device, id) = (args.opt_str("device")?, args.opt_str("id")?);
            args.finish()?;
            let drive = DriveRef::from_args(device, id)?;
            monitor.close_tray(drive, now).map(|()| empty())
        }
        "blockdev-change-medium" => {
            let device = args.opt_str("device")?;
            let id = args.opt_str("id")?;
            let filename = args.str("filename")?;
            let format = args.opt_str("format")?;
            let mode = args.opt_enum("read-only-mode", &ReadOnlyMode::NAMES)?;
            args.finish()?;
            let drive = DriveRef::from_args(device, id)?;
            let mode = mode.map_or(ReadOnlyMode::Retain, ReadOnlyMode::from_index);
            monitor.change_medium(drive, filename, format, mode, now).map(|()| empty())
        }
        "add-fd" => {
            args.opt_int("fdset-id")?;
            args.opt_str("opaque")?;
            args.finish()?;
            Err(QmpError::generic("No file descriptor supplied via SCM_RIGHTS"))
        }
        "remove-fd" => {
            let fdset_id = args.int("fdset-id")?;
            let fd = args.opt_int("fd")?;
            args.finish()?;
            monitor.remove_fd(fdset_id, fd).map(|()| empty())
        }
        "query-fdsets" => {
            args.finish()?;
            to_value(&monitor.query_fdsets())
        }
        "xen-set-global-dirty-log" => {
            let enable = args.bool("enable")?;
            args.finish()?;
            monitor.set_global_dirty_log(enable);
            Ok(empty())
        }
        "xen-load-devices-state" => {
            let filename = args.str("filename")?;
            args.finish()?;
            monitor.load_state(filename).map(|()| empty())
        }
        _ => Err(QmpError::new(ErrorClass::CommandNotFound, format!("The command {command} has not been found"))),
    }
}

fn empty() -> serde_json::Value {
    serde_json::Value::Object(serde_json::Map::new())
}

fn to_value(value: &impl Serialize) -> Result<serde_json::Value, QmpError> {
    serde_json::to_value(value).map_err(|error| QmpError::generic(error.to_string()))
}
