//! The command set libxl uses, run against the [`Engine`]: the state that outlives QMP
//! connections.
//!
//! What each command really does today:
//!
//! - `qmp_capabilities`: ends negotiation ([`Session`](crate::Session)); `enable:
//!   ["oob"]` is refused, as QEMU does without an I/O thread.
//! - `query-version`, `query-commands`: real.
//! - `query-status`, `stop`, `cont`: real run state with STOP/RESUME events; what
//!   pausing means is the device model's ([`DeviceModel::pause`], [`resume`]).
//! - `quit`: [`DeviceModel::quit`]; the session reads nothing more.
//! - `query-block`, `eject`, `blockdev-open-tray`, `blockdev-close-tray`,
//!   `blockdev-change-medium`: real ([`block`](crate::block)), DEVICE_TRAY_MOVED events;
//!   the guest side of trays (lock, eject requests) waits for the IDE model, which will
//!   call [`Engine::guest_lock_tray`] and [`Engine::guest_move_tray`].
//! - `add-fd`: always "No file descriptor supplied via SCM_RIGHTS" (vchan cannot carry
//!   one, and QEMU says exactly this when none came).
//! - `remove-fd`, `query-fdsets`: real ([`block::fdset`](crate::block::fdset)).
//! - `query-cpus-fast`: one entry per vCPU of [`EngineConfig::vcpus`] (libxl reads the
//!   online vCPUs from it before `xl save`); there is no CPU hotplug.
//! - `xen-set-global-dirty-log`: [`DeviceModel::set_global_dirty_log`].
//! - `xen-save-devices-state`: the state file [`DeviceModel::save_state`] returns goes
//!   to the console behind the fdset (the image frames it: devices' `state_file`). That
//!   write is slow work: the command returns [`Outcome::Pending`] with a
//!   [`SlowEffect`], the caller carries it out, and the reply (success, or the reason it
//!   failed) follows only then ([`Engine::complete_effect`]).
//! - `xen-load-devices-state`: what [`DeviceModel::read_console`] gives for the console
//!   behind the fdset goes to [`DeviceModel::load_state`].
//!
//! [`resume`]: DeviceModel::resume
//!
//! The run state and the save/load sequencing (pause around a save of a running VM,
//! refusing a load while running, STOP/RESUME events) are QEMU's (migration/savevm.c,
//! system/cpus.c). What the state file holds is the device model's.

use alloc::collections::VecDeque;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use serde::Serialize;
use serde_json::json;

use crate::args::Args;
use crate::block::fdset::{FdTarget, SAVE_FDSET};
use crate::block::{BlockLayer, DriveChange, DriveConfig, DriveRef, GuestTrayError, Notice, PvDiskInfo, ReadOnlyMode};
use crate::error::{ErrorClass, QmpError};
use crate::json::Object;
use crate::protocol::{Timestamp, VersionInfo};

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

/// A device model failure; the QMP reply carries QEMU's generic wording, this is for
/// the implementation's own log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceModelError(pub String);

/// The device model the engine drives: the image implements it over its real devices,
/// tests with `sim::SimDeviceModel` (feature `sim`).
pub trait DeviceModel {
    /// QMP `stop` (and the pause around a save): stop emulating, so that the device
    /// state stops changing. Called only when running.
    fn pause(&mut self);

    /// QMP `cont`: emulate again. Called only when paused.
    fn resume(&mut self);

    /// `xen-set-global-dirty-log`: while enabled, guest memory the device model writes
    /// (DMA) must be reported to Xen as modified (dm_op modified_memory) so that a live
    /// save copies it again.
    fn set_global_dirty_log(&mut self, enable: bool);

    /// `xen-save-devices-state`: the devices' state, serialised. `live` is libxl's
    /// "this is a live migration" flag (QEMU then releases image locks).
    fn save_state(&mut self, live: bool) -> Result<Vec<u8>, DeviceModelError>;

    /// `xen-load-devices-state`: restores what [`save_state`](Self::save_state) produced.
    fn load_state(&mut self, state: &[u8]) -> Result<(), DeviceModelError>;

    /// Reads a whole state file from PV console `console`.
    fn read_console(&mut self, console: u32) -> Result<Vec<u8>, DeviceModelError>;

    /// QMP `quit`: the device model is to exit (the stub domain shuts down).
    fn quit(&mut self);

    /// A drive changed: the IDE model reports tray moves and eject requests to the
    /// guest (GET EVENT STATUS NOTIFICATION, UNIT ATTENTION). The default ignores them.
    fn drive_changed(&mut self, devid: u32, change: DriveChange) {
        let _ = (devid, change);
    }
}

/// The VM's run state as QMP reports it (a subset of QEMU's RunState).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunState {
    Running,
    Paused,
}

impl RunState {
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Running => "running",
            RunState::Paused => "paused",
        }
    }
}

/// An asynchronous message to QMP clients.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// `DEVICE_TRAY_MOVED {device, id, tray-open}`
    DeviceTrayMoved { device: String, id: String, tray_open: bool },
    /// `STOP`: the VM stopped
    Stop,
    /// `RESUME`: the VM runs again
    Resume,
}

impl Event {
    /// The event's name on the wire.
    pub fn name(&self) -> &'static str {
        match self {
            Event::DeviceTrayMoved { .. } => "DEVICE_TRAY_MOVED",
            Event::Stop => "STOP",
            Event::Resume => "RESUME",
        }
    }

    /// The `data` member; None for events without one (QEMU then omits it).
    pub fn data(&self) -> Option<serde_json::Value> {
        match self {
            Event::DeviceTrayMoved { device, id, tray_open } => {
                Some(json!({ "device": device, "id": id, "tray-open": tray_open }))
            }
            Event::Stop | Event::Resume => None,
        }
    }
}

/// Work a command needs that the engine cannot do itself (it has no I/O): the caller
/// carries it out and reports back with [`Engine::complete_effect`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SlowEffect {
    /// Write `data` to PV console `console` and wait until dom0 has taken all of it.
    WriteStateFile { console: u32, data: Vec<u8> },
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

/// A save whose state file is on its way to its console.
#[derive(Clone, Copy, Debug)]
struct SaveInProgress {
    /// the VM ran before the save paused it: it resumes afterwards
    was_running: bool,
}

/// An event and when it happened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimedEvent {
    pub event: Event,
    pub timestamp: Timestamp,
}

/// How the engine starts.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// what the greeting and `query-version` announce
    pub version: VersionInfo,
    /// `Running`, as QEMU started without `-S` (libxl never passes it)
    pub run_state: RunState,
    /// the PV console registered as fdset 1, the save channel (libxl's console 1)
    pub save_console: u32,
    /// the guest's vCPUs, all online (`-smp`; there is no CPU hotplug)
    pub vcpus: u32,
}

impl Default for EngineConfig {
    fn default() -> EngineConfig {
        EngineConfig { version: VersionInfo::default(), run_state: RunState::Running, save_console: 1, vcpus: 1 }
    }
}

/// How many undelivered events are kept; older ones are dropped (QEMU drops events no
/// monitor is there to read).
pub const MAX_PENDING_EVENTS: usize = 256;

/// The QMP server's state across connections, and the device model behind it.
pub struct Engine<D: DeviceModel> {
    device_model: D,
    version: VersionInfo,
    run_state: RunState,
    block: BlockLayer,
    events: VecDeque<TimedEvent>,
    quit_requested: bool,
    vcpus: u32,
    saving: Option<SaveInProgress>,
}

impl<D: DeviceModel> Engine<D> {
    /// An engine with no drives and fdset 1 holding the save console.
    pub fn new(device_model: D, config: EngineConfig) -> Engine<D> {
        let mut block = BlockLayer::new();
        block.fdsets_mut().add(
            SAVE_FDSET,
            FdTarget::Console(config.save_console),
            Some(format!("stub-console:{}", config.save_console)),
        );
        Engine {
            device_model,
            version: config.version,
            run_state: config.run_state,
            block,
            events: VecDeque::new(),
            quit_requested: false,
            vcpus: config.vcpus,
            saving: None,
        }
    }

    /// A new connection: drops events nobody was connected to receive and returns the
    /// session, whose output starts with the greeting.
    pub fn open_session(&mut self) -> crate::Session {
        self.events.clear();
        crate::Session::new(&self.version)
    }

    pub fn version(&self) -> &VersionInfo {
        &self.version
    }

    pub fn run_state(&self) -> RunState {
        self.run_state
    }

    pub fn block(&self) -> &BlockLayer {
        &self.block
    }

    pub fn device_model(&self) -> &D {
        &self.device_model
    }

    pub fn device_model_mut(&mut self) -> &mut D {
        &mut self.device_model
    }

    /// Whether a client sent `quit`.
    pub fn quit_requested(&self) -> bool {
        self.quit_requested
    }

    /// Takes the events not yet delivered, oldest first.
    pub fn take_events(&mut self) -> VecDeque<TimedEvent> {
        core::mem::take(&mut self.events)
    }

    /// Creates a drive from the command line (its initial medium's PV disk must be
    /// connected already).
    pub fn add_drive(&mut self, config: DriveConfig) -> Result<(), QmpError> {
        self.block.add_drive(config)
    }

    /// Hook: a PV disk connected. Puts it in a new fdset with opaque
    /// `stub-devid:<devid>` and returns the fdset id.
    pub fn pv_disk_connected(&mut self, devid: u32, info: PvDiskInfo) -> i64 {
        self.block.pv_disk_connected(devid, info)
    }

    /// Hook: a PV disk disconnected. Drops its fdset entry (and a medium it held);
    /// returns whether it was connected.
    pub fn pv_disk_disconnected(&mut self, devid: u32) -> bool {
        let mut notices = Vec::new();
        let was_connected = self.block.pv_disk_disconnected(devid, &mut notices);
        self.apply_notices(notices, Timestamp::default());
        was_connected
    }

    /// Hook for the IDE model: the guest locks or unlocks the tray.
    pub fn guest_lock_tray(&mut self, devid: u32, locked: bool) -> Result<(), GuestTrayError> {
        self.block.guest_lock_tray(devid, locked)
    }

    /// Hook for the IDE model: the guest opens or closes the tray; a move is a
    /// DEVICE_TRAY_MOVED event stamped `now`.
    pub fn guest_move_tray(&mut self, devid: u32, open: bool, now: Timestamp) -> Result<(), GuestTrayError> {
        let mut notices = Vec::new();
        self.block.guest_move_tray(devid, open, &mut notices)?;
        self.apply_notices(notices, now);
        Ok(())
    }

    fn push_event(&mut self, event: Event, timestamp: Timestamp) {
        if self.events.len() == MAX_PENDING_EVENTS {
            self.events.pop_front();
        }
        self.events.push_back(TimedEvent { event, timestamp });
    }

    fn apply_notices(&mut self, notices: Vec<Notice>, now: Timestamp) {
        for notice in notices {
            if let DriveChange::TrayMoved { open } = notice.change
                && let Some(drive) = self.block.drive(notice.devid)
            {
                let device = drive.device_name();
                let id = drive.qdev_id().unwrap_or_else(|| device.clone());
                self.push_event(Event::DeviceTrayMoved { device, id, tray_open: open }, now);
            }
            self.device_model.drive_changed(notice.devid, notice.change);
        }
    }

    fn pause(&mut self, now: Timestamp) {
        if self.run_state == RunState::Running {
            self.device_model.pause();
            self.run_state = RunState::Paused;
            self.push_event(Event::Stop, now);
        }
    }

    fn resume(&mut self, now: Timestamp) {
        if self.run_state == RunState::Paused {
            self.device_model.resume();
            self.run_state = RunState::Running;
            self.push_event(Event::Resume, now);
        }
    }

    /// Runs a negotiated session's command (everything but `qmp_capabilities`, which
    /// the session handles). Events it causes are queued stamped `now`. A command with
    /// slow work returns it as [`Outcome::Pending`]; its reply comes from
    /// [`complete_effect`](Self::complete_effect).
    pub fn execute(&mut self, command: &str, arguments: &Object, now: Timestamp) -> Outcome {
        if command == "xen-save-devices-state" {
            return self.start_save(arguments, now);
        }
        self.execute_now(command, arguments, now).into()
    }

    /// `xen-save-devices-state`: pauses, takes the state, and hands its write out.
    fn start_save(&mut self, arguments: &Object, now: Timestamp) -> Outcome {
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
        if self.saving.is_some() {
            return Outcome::Done(Err(QmpError::generic("a device state save is already in progress")));
        }
        self.save_devices_state(filename, live.unwrap_or(true), now)
    }

    /// The slow work of the command [`execute`](Self::execute) left pending is done
    /// (`Err` says why it failed): finishes the command and returns its reply.
    pub fn complete_effect(
        &mut self,
        result: Result<(), String>,
        now: Timestamp,
    ) -> Result<serde_json::Value, QmpError> {
        let Some(save) = self.saving.take() else {
            return Err(QmpError::generic("no command is waiting for its effect"));
        };
        // QEMU resumes a VM the save paused, whatever the outcome.
        if save.was_running {
            self.resume(now);
        }
        result
            .map(|()| empty())
            .map_err(|reason| QmpError::generic(format!("saving Xen device state failed: {reason}")))
    }

    fn execute_now(
        &mut self,
        command: &str,
        arguments: &Object,
        now: Timestamp,
    ) -> Result<serde_json::Value, QmpError> {
        let mut args = Args::new(arguments);
        match command {
            "query-version" => {
                args.finish()?;
                to_value(&self.version)
            }
            "query-commands" => {
                args.finish()?;
                Ok(serde_json::Value::Array(COMMANDS.iter().map(|name| json!({ "name": name })).collect()))
            }
            "query-status" => {
                args.finish()?;
                Ok(json!({
                    "running": self.run_state == RunState::Running,
                    "status": self.run_state.as_str(),
                }))
            }
            "query-cpus-fast" => {
                // libxl reads the online vCPUs from it (xl save, xl list -l): QEMU's
                // CpuInfoFast for qemu-system-i386, one socket per vCPU.
                args.finish()?;
                Ok(serde_json::Value::Array(
                    (0..self.vcpus)
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
            "stop" => {
                args.finish()?;
                self.pause(now);
                Ok(empty())
            }
            "cont" => {
                args.finish()?;
                self.resume(now);
                Ok(empty())
            }
            "quit" => {
                args.finish()?;
                self.quit_requested = true;
                self.device_model.quit();
                Ok(empty())
            }
            "query-block" => {
                args.finish()?;
                to_value(&self.block.query_block())
            }
            "eject" => {
                let (device, id) = (args.opt_str("device")?, args.opt_str("id")?);
                let force = args.opt_bool("force")?.unwrap_or(false);
                args.finish()?;
                let target = DriveRef::from_args(device, id)?;
                self.block_command(now, |block, notices| block.eject(target, force, notices))
            }
            "blockdev-open-tray" => {
                let (device, id) = (args.opt_str("device")?, args.opt_str("id")?);
                let force = args.opt_bool("force")?.unwrap_or(false);
                args.finish()?;
                let target = DriveRef::from_args(device, id)?;
                self.block_command(now, |block, notices| block.open_tray(target, force, notices))
            }
            "blockdev-close-tray" => {
                let (device, id) = (args.opt_str("device")?, args.opt_str("id")?);
                args.finish()?;
                let target = DriveRef::from_args(device, id)?;
                self.block_command(now, |block, notices| block.close_tray(target, notices))
            }
            "blockdev-change-medium" => {
                let device = args.opt_str("device")?;
                let id = args.opt_str("id")?;
                let filename = args.str("filename")?;
                let format = args.opt_str("format")?;
                let mode = args.opt_enum("read-only-mode", &ReadOnlyMode::NAMES)?;
                args.finish()?;
                let target = DriveRef::from_args(device, id)?;
                let mode = mode.map_or(ReadOnlyMode::Retain, ReadOnlyMode::from_index);
                self.block_command(now, |block, notices| block.change_medium(target, filename, format, mode, notices))
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
                self.block.fdsets_mut().remove(fdset_id, fd).map(|()| empty())
            }
            "query-fdsets" => {
                args.finish()?;
                to_value(&self.block.fdsets().query())
            }
            "xen-set-global-dirty-log" => {
                let enable = args.bool("enable")?;
                args.finish()?;
                self.device_model.set_global_dirty_log(enable);
                Ok(empty())
            }
            "xen-load-devices-state" => {
                let filename = args.str("filename")?;
                args.finish()?;
                self.load_devices_state(filename)
            }
            _ => Err(QmpError::new(ErrorClass::CommandNotFound, format!("The command {command} has not been found"))),
        }
    }

    fn block_command(
        &mut self,
        now: Timestamp,
        operation: impl FnOnce(&mut BlockLayer, &mut Vec<Notice>) -> Result<(), QmpError>,
    ) -> Result<serde_json::Value, QmpError> {
        let mut notices = Vec::new();
        let result = operation(&mut self.block, &mut notices);
        // A failed command may still have moved a tray or asked the guest to eject.
        self.apply_notices(notices, now);
        result.map(|()| empty())
    }

    /// The console a state file name stands for: `/dev/fdset/N` with a console entry.
    fn state_console(&self, filename: &str) -> Result<u32, QmpError> {
        let unable = |reason: &str| QmpError::generic(format!("Unable to open {filename}: {reason}"));
        let number = filename.strip_prefix("/dev/fdset/").ok_or_else(|| unable("No such file or directory"))?;
        let id: i64 = number
            .parse()
            .ok()
            .filter(|id| *id >= 0 && number.bytes().all(|byte| byte.is_ascii_digit()))
            .ok_or_else(|| unable("Invalid argument"))?;
        let set = self.block.fdsets().get(id).ok_or_else(|| unable("No such file or directory"))?;
        set.fds
            .iter()
            .find_map(|entry| match entry.target {
                FdTarget::Console(console) => Some(console),
                FdTarget::PvDisk(_) => None,
            })
            .ok_or_else(|| unable("state files go to a console of the stub domain, not to a disk"))
    }

    /// QEMU's qmp_xen_save_devices_state: a running VM is paused for the save and
    /// resumed after it, whatever the outcome ([`complete_effect`](Self::complete_effect)
    /// resumes it once the state file is written).
    fn save_devices_state(&mut self, filename: &str, live: bool, now: Timestamp) -> Outcome {
        let was_running = self.run_state == RunState::Running;
        self.pause(now);
        let state = self.state_console(filename).and_then(|console| {
            self.device_model
                .save_state(live)
                .map(|data| (console, data))
                .map_err(|e| QmpError::generic(format!("saving Xen device state failed: {}", e.0)))
        });
        // With `live` and a VM libxl had stopped, QEMU releases its image locks here; PV
        // disks have none. (QEMU also leaves a paused VM in run state "save-vm"; this
        // server keeps reporting "paused", which is what libxl's `cont` expects anyway.)
        match state {
            Ok((console, data)) => {
                self.saving = Some(SaveInProgress { was_running });
                Outcome::Pending(SlowEffect::WriteStateFile { console, data })
            }
            Err(error) => {
                if was_running {
                    self.resume(now);
                }
                Outcome::Done(Err(error))
            }
        }
    }

    /// QEMU's qmp_xen_load_devices_state: only while paused.
    fn load_devices_state(&mut self, filename: &str) -> Result<serde_json::Value, QmpError> {
        if self.run_state == RunState::Running {
            return Err(QmpError::generic("Cannot update device state while vm is running"));
        }
        let console = self.state_console(filename)?;
        // PLACEHOLDER: the whole console content is the blob save_state produced.
        let state = self.device_model.read_console(console);
        state
            .and_then(|state| self.device_model.load_state(&state))
            .map(|()| empty())
            .map_err(|_| QmpError::generic("loading Xen device state failed"))
    }
}

fn empty() -> serde_json::Value {
    serde_json::Value::Object(serde_json::Map::new())
}

fn to_value(value: &impl Serialize) -> Result<serde_json::Value, QmpError> {
    serde_json::to_value(value).map_err(|error| QmpError::generic(error.to_string()))
}
