//! The VM as QMP sees it: its run state, its block layer and the events they cause;
//! [`Vm`] is the [`qmp::Monitor`] the QMP session dispatches commands to.
//!
//! - **Run state**: running or paused (`stop`, `cont`, and the pause around a save),
//!   with STOP and RESUME events. What pausing means for the machine is a [`Signal`]
//!   the service's ioreq tasks wait on ([`Vm::running_signal`]).
//! - **Block layer** ([`crate::block`]): drives, trays, media and fdsets; tray moves
//!   become DEVICE_TRAY_MOVED events, and eject requests for trays the guest locked wait
//!   for the IDE model ([`Vm::take_eject_requests`]). The hooks for PV disks that come
//!   and go and for the guest's own tray commands are here too.
//! - **Saved state**: `xen-save-devices-state` pauses a running VM, resolves the fdset
//!   to a console, and hands the state file's write out as a [`SlowEffect`]; the VM
//!   resumes once the write is done, whatever its outcome. `xen-load-devices-state` is
//!   refused while running. The run state and this sequencing are QEMU's
//!   (migration/savevm.c, system/cpus.c); the state file's framing is
//!   [`crate::state_file`]'s.
//!
//! The devices' state is the machine's ([`crate::machine::Machine::save_state`], in
//! [`crate::snapshot`]'s sections), which the VM does not hold: the effect carries a
//! file with an empty payload, and the service, which holds the machine, puts the
//! machine's state in its place once no disk request is in flight. A VM without a
//! machine (QMP only) saves that empty payload and restores only it. What the VM
//! itself keeps is not saved: the run state after a restore is libxl's to set (`cont`),
//! and the block layer comes from the restoring argv (the trays the guest moved come
//! back from the IDE state). `xen-load-devices-state` cannot read a console, so it
//! fails once its checks have passed (libxl restores through `-incoming`).
//!
//! How the service uses it, here with a client's bytes from a fixture:
//!
//! ```
//! use devices::block::{DriveConfig, DriveKind, MediumSource, PvDiskInfo};
//! use devices::vm::{Vm, VmConfig};
//! use qmp::{Session, Timestamp, VersionInfo};
//!
//! let mut vm = Vm::new(VmConfig::default()); // fdset 1 = console 1
//! // blkfront connected the guest's hdc (devid 5632): it gets fdset `stub-devid:5632`.
//! vm.pv_disk_connected(5632, PvDiskInfo { read_only: true, size_bytes: 1 << 20 });
//! // `-drive if=none,readonly=on,id=ide-5632,file=/dev/xvdc,format=host_device`
//! let medium = MediumSource { filename: "/dev/xvdc".into(), format: Some("host_device".into()) };
//! let cd = DriveConfig { devid: 5632, kind: DriveKind::CdRom, read_only: true, medium: Some(medium) };
//! vm.add_drive(cd).unwrap();
//!
//! // A vchan client connected: send the greeting, then feed what arrives.
//! let mut session = Session::open(&mut vm, &VersionInfo::default());
//! let now = Timestamp::new(1_700_000_000, 0);
//! session.feed(&mut vm, b"{\"execute\":\"qmp_capabilities\",\"id\":1}\r\n", now);
//! session.feed(&mut vm, b"{\"execute\":\"eject\",\"arguments\":{\"id\":\"ide-5632\"}}", now);
//! assert!(vm.block().drive(5632).unwrap().tray_open());
//! // After a hook that may cause events (the guest moved a tray), deliver them.
//! vm.guest_move_tray(5632, false, now).unwrap();
//! session.deliver_events(&mut vm);
//! let to_send = session.take_output(); // greeting, replies, events, each ending \r\n
//! assert!(to_send.ends_with(b"\r\n"));
//! ```

pub mod fuzz;

use alloc::collections::VecDeque;
use alloc::format;
use alloc::rc::Rc;
use alloc::string::String;
use alloc::vec::Vec;

use qmp::qapi::{BlockInfo, FdsetInfo};
use qmp::{DriveRef, Event, Monitor, QmpError, ReadOnlyMode, RunState, SlowEffect, TimedEvent, Timestamp};

use crate::block::fdset::{FdTarget, SAVE_FDSET};
use crate::block::{BlockError, BlockLayer, DriveChange, DriveConfig, GuestTrayError, Notice, PvDiskInfo};
use crate::state_file;
use crate::task::Signal;

/// How many undelivered events are kept; older ones are dropped (QEMU drops events no
/// monitor is there to read).
pub const MAX_PENDING_EVENTS: usize = 256;

/// How the VM starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VmConfig {
    /// `Running`, as QEMU started without `-S` (libxl never passes it)
    pub run_state: RunState,
    /// the PV console registered as fdset 1, the save channel (libxl's console 1)
    pub save_console: u32,
    /// the guest's vCPUs, all online (`-smp`; there is no CPU hotplug)
    pub vcpus: u32,
}

impl Default for VmConfig {
    fn default() -> VmConfig {
        VmConfig { run_state: RunState::Running, save_console: 1, vcpus: 1 }
    }
}

/// Why a save or a load of the device state failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    #[error("a device state save is already in progress")]
    SaveInProgress,
    /// the filename is no fdset with a console in it
    #[error("Unable to open {filename}: {reason}")]
    Unable { filename: String, reason: &'static str },
    /// the state file's write failed (the reason is the writer's)
    #[error("saving Xen device state failed: {0}")]
    SaveFailed(String),
    #[error("Cannot update device state while vm is running")]
    Running,
    #[error("loading Xen device state failed")]
    LoadFailed,
    #[error("no command is waiting for its effect")]
    NothingWaiting,
    /// a restore's payload names devices this device model does not have
    #[error("the saved state holds {0} bytes for devices this device model does not have")]
    UnknownDevices(usize),
}

impl From<StateError> for QmpError {
    fn from(error: StateError) -> QmpError {
        QmpError::generic(alloc::string::ToString::to_string(&error))
    }
}

/// QMP asked to eject a tray the guest has locked: the IDE model is to tell the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EjectRequest {
    pub devid: u32,
    /// the lock was overridden (the tray opened anyway)
    pub force: bool,
}

/// A save whose state file is on its way to its console.
#[derive(Clone, Copy, Debug)]
struct SaveInProgress {
    /// the VM ran before the save paused it: it resumes afterwards
    was_running: bool,
}

/// The VM's run state, block layer and pending events.
pub struct Vm {
    run_state: RunState,
    /// on while the VM runs; the service's ioreq tasks wait for it
    running: Rc<Signal>,
    block: BlockLayer,
    events: VecDeque<TimedEvent>,
    vcpus: u32,
    dirty_log: bool,
    saving: Option<SaveInProgress>,
    /// at most one per drive, until the IDE model takes them
    eject_requests: Vec<EjectRequest>,
    quit_requested: bool,
}

impl Vm {
    /// A VM with no drives and fdset 1 holding the save console.
    pub fn new(config: VmConfig) -> Vm {
        let mut block = BlockLayer::new();
        block.fdsets_mut().add(
            SAVE_FDSET,
            FdTarget::Console(config.save_console),
            Some(format!("stub-console:{}", config.save_console)),
        );
        Vm {
            run_state: config.run_state,
            running: Rc::new(Signal::new(config.run_state == RunState::Running)),
            block,
            events: VecDeque::new(),
            vcpus: config.vcpus,
            dirty_log: false,
            saving: None,
            eject_requests: Vec::new(),
            quit_requested: false,
        }
    }

    /// On while the VM runs, off while it is paused.
    pub fn running_signal(&self) -> Rc<Signal> {
        self.running.clone()
    }

    pub fn run_state(&self) -> RunState {
        self.run_state
    }

    pub fn block(&self) -> &BlockLayer {
        &self.block
    }

    /// Whether `xen-set-global-dirty-log` turned the dirty log on.
    pub fn dirty_log(&self) -> bool {
        self.dirty_log
    }

    /// Whether a client sent `quit`.
    pub fn quit_requested(&self) -> bool {
        self.quit_requested
    }

    /// Takes the eject requests QMP made of trays the guest locked.
    pub fn take_eject_requests(&mut self) -> Vec<EjectRequest> {
        core::mem::take(&mut self.eject_requests)
    }

    /// The eject requests not yet taken.
    pub fn eject_requests(&self) -> &[EjectRequest] {
        &self.eject_requests
    }

    /// Creates a drive from the command line (its initial medium's PV disk must be
    /// connected already).
    pub fn add_drive(&mut self, config: DriveConfig) -> Result<(), BlockError> {
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

    /// Restores a VM without a machine (QMP only) from a saved payload: only the empty
    /// payload such a VM saves is accepted (a machine's state goes to the machine).
    pub fn load_payload(&mut self, payload: &[u8]) -> Result<(), StateError> {
        if payload.is_empty() { Ok(()) } else { Err(StateError::UnknownDevices(payload.len())) }
    }

    fn push_event(&mut self, event: Event, timestamp: Timestamp) {
        if self.events.len() == MAX_PENDING_EVENTS {
            self.events.pop_front();
        }
        self.events.push_back(TimedEvent { event, timestamp });
    }

    fn apply_notices(&mut self, notices: Vec<Notice>, now: Timestamp) {
        for notice in notices {
            match notice.change {
                DriveChange::TrayMoved { open } => {
                    if let Some(drive) = self.block.drive(notice.devid) {
                        let device = drive.device_name();
                        let id = drive.qdev_id().unwrap_or_else(|| device.clone());
                        self.push_event(Event::DeviceTrayMoved { device, id, tray_open: open }, now);
                    }
                }
                DriveChange::EjectRequested { force } => {
                    match self.eject_requests.iter_mut().find(|request| request.devid == notice.devid) {
                        Some(request) => request.force |= force,
                        None => self.eject_requests.push(EjectRequest { devid: notice.devid, force }),
                    }
                }
                // The IDE model follows the block layer's media (the service syncs them).
                DriveChange::MediumGone => {}
            }
        }
    }

    /// Runs a block command; a failed one may still have moved a tray or asked the guest
    /// to eject.
    fn block_command(
        &mut self,
        now: Timestamp,
        operation: impl FnOnce(&mut BlockLayer, &mut Vec<Notice>) -> Result<(), BlockError>,
    ) -> Result<(), QmpError> {
        let mut notices = Vec::new();
        let result = operation(&mut self.block, &mut notices);
        self.apply_notices(notices, now);
        result.map_err(QmpError::from)
    }

    fn pause(&mut self, now: Timestamp) {
        if self.run_state == RunState::Running {
            self.running.clear();
            log::info!("device model: paused");
            self.run_state = RunState::Paused;
            self.push_event(Event::Stop, now);
        }
    }

    fn resume(&mut self, now: Timestamp) {
        if self.run_state == RunState::Paused {
            self.running.set();
            log::info!("device model: running");
            self.run_state = RunState::Running;
            self.push_event(Event::Resume, now);
        }
    }

    /// The console a state file name stands for: `/dev/fdset/N` with a console entry.
    fn state_console(&self, filename: &str) -> Result<u32, StateError> {
        let unable = |reason: &'static str| StateError::Unable { filename: String::from(filename), reason };
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
}

impl Monitor for Vm {
    fn run_state(&self) -> RunState {
        self.run_state
    }

    fn stop(&mut self, now: Timestamp) {
        self.pause(now);
    }

    fn cont(&mut self, now: Timestamp) {
        self.resume(now);
    }

    fn quit(&mut self) {
        log::info!("device model: quit");
        self.quit_requested = true;
    }

    fn vcpus(&self) -> u32 {
        self.vcpus
    }

    fn query_block(&self) -> Vec<BlockInfo> {
        self.block.query_block()
    }

    fn eject(&mut self, drive: DriveRef<'_>, force: bool, now: Timestamp) -> Result<(), QmpError> {
        self.block_command(now, |block, notices| block.eject(drive, force, notices))
    }

    fn open_tray(&mut self, drive: DriveRef<'_>, force: bool, now: Timestamp) -> Result<(), QmpError> {
        self.block_command(now, |block, notices| block.open_tray(drive, force, notices))
    }

    fn close_tray(&mut self, drive: DriveRef<'_>, now: Timestamp) -> Result<(), QmpError> {
        self.block_command(now, |block, notices| block.close_tray(drive, notices))
    }

    fn change_medium(
        &mut self,
        drive: DriveRef<'_>,
        filename: &str,
        format: Option<&str>,
        mode: ReadOnlyMode,
        now: Timestamp,
    ) -> Result<(), QmpError> {
        self.block_command(now, |block, notices| block.change_medium(drive, filename, format, mode, notices))
    }

    fn remove_fd(&mut self, fdset_id: i64, fd: Option<i64>) -> Result<(), QmpError> {
        self.block.fdsets_mut().remove(fdset_id, fd).map_err(QmpError::from)
    }

    fn query_fdsets(&self) -> Vec<FdsetInfo<'_>> {
        self.block.fdsets().query()
    }

    fn set_global_dirty_log(&mut self, enable: bool) {
        // While on, the service reports every guest page the device model writes
        // (crate::dirty: IDE DMA, `rep ins`/`rep movs` into memory, NIC receive).
        self.dirty_log = enable;
        log::info!("device model: global dirty log {}", if enable { "on" } else { "off" });
    }

    /// QEMU's qmp_xen_save_devices_state: a running VM is paused for the save and
    /// resumed after it, whatever the outcome ([`complete_save`](Monitor::complete_save)
    /// resumes it once the state file is written).
    fn start_save(&mut self, filename: &str, _live: bool, now: Timestamp) -> Result<SlowEffect, QmpError> {
        if self.saving.is_some() {
            return Err(StateError::SaveInProgress.into());
        }
        let was_running = self.run_state == RunState::Running;
        self.pause(now);
        // With `live` and a VM libxl had stopped, QEMU releases its image locks here; PV
        // disks have none, so `live` changes nothing. (QEMU also leaves a paused VM in
        // run state "save-vm"; this VM keeps reporting "paused", which is what libxl's
        // `cont` expects anyway.)
        match self.state_console(filename) {
            Ok(console) => {
                self.saving = Some(SaveInProgress { was_running });
                // The empty payload of a VM without a machine; the service puts the
                // machine's state in its place.
                Ok(SlowEffect::WriteStateFile { console, data: state_file::encode(&[]) })
            }
            Err(error) => {
                if was_running {
                    self.resume(now);
                }
                Err(error.into())
            }
        }
    }

    fn complete_save(&mut self, result: Result<(), String>, now: Timestamp) -> Result<(), QmpError> {
        let Some(save) = self.saving.take() else {
            return Err(StateError::NothingWaiting.into());
        };
        // QEMU resumes a VM the save paused, whatever the outcome.
        if save.was_running {
            self.resume(now);
        }
        result.map_err(|reason| StateError::SaveFailed(reason).into())
    }

    /// QEMU's qmp_xen_load_devices_state: only while paused.
    fn load_state(&mut self, filename: &str) -> Result<(), QmpError> {
        if self.run_state == RunState::Running {
            return Err(StateError::Running.into());
        }
        let _console = self.state_console(filename)?;
        // Not supported: consoles are read by the service's tasks, not here, and libxl
        // restores a stub domain's device model through `-incoming` at its start.
        Err(StateError::LoadFailed.into())
    }

    fn take_events(&mut self) -> VecDeque<TimedEvent> {
        core::mem::take(&mut self.events)
    }
}

#[cfg(test)]
mod tests {
    use super::fuzz::{HDC, test_vm};
    use super::*;

    const NOW: Timestamp = Timestamp { seconds: 7, microseconds: 0 };

    fn event_names(vm: &mut Vm) -> Vec<&'static str> {
        vm.take_events().iter().map(|timed| timed.event.name()).collect()
    }

    #[test]
    fn stop_and_cont_drive_the_running_signal_and_send_one_event_per_change() {
        let mut vm = test_vm();
        let running = vm.running_signal();
        vm.stop(NOW);
        vm.stop(NOW);
        assert!(!running.is_on());
        assert_eq!((Monitor::run_state(&vm), event_names(&mut vm)), (RunState::Paused, alloc::vec!["STOP"]));
        vm.cont(NOW);
        vm.cont(NOW);
        assert!(running.is_on());
        assert_eq!((Monitor::run_state(&vm), event_names(&mut vm)), (RunState::Running, alloc::vec!["RESUME"]));
    }

    #[test]
    fn eject_requests_wait_for_the_ide_model_one_per_drive() {
        let mut vm = test_vm();
        vm.guest_lock_tray(HDC, true).unwrap();
        let locked = vm.eject(DriveRef::Id("ide-5632"), false, NOW).unwrap_err();
        assert!(locked.desc.contains("is locked"), "{}", locked.desc);
        assert_eq!(vm.eject_requests(), [EjectRequest { devid: HDC, force: false }]);
        // A forced eject before the IDE model took the first request: one request, forced.
        vm.eject(DriveRef::Id("ide-5632"), true, NOW).unwrap();
        assert_eq!(vm.take_eject_requests(), [EjectRequest { devid: HDC, force: true }]);
        assert!(vm.take_eject_requests().is_empty());
        assert_eq!(event_names(&mut vm), ["DEVICE_TRAY_MOVED"]);
    }

    #[test]
    fn undelivered_events_are_bounded_and_the_oldest_go_first() {
        let mut vm = test_vm();
        for second in 0..MAX_PENDING_EVENTS as i64 + 2 {
            let now = Timestamp::new(second, 0);
            if second % 2 == 0 { vm.stop(now) } else { vm.cont(now) }
        }
        let events = vm.take_events();
        assert_eq!(events.len(), MAX_PENDING_EVENTS);
        assert_eq!(events.front().map(|timed| (&timed.event, timed.timestamp.seconds)), Some((&Event::Stop, 2)));
    }

    #[test]
    fn a_restore_accepts_only_an_empty_payload() {
        let mut vm = test_vm();
        assert_eq!(vm.load_payload(&[]), Ok(()));
        assert_eq!(vm.load_payload(&[1, 2, 3]), Err(StateError::UnknownDevices(3)));
    }
}
