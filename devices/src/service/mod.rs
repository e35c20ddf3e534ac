//! The stub domain's device model as libxl runs it: the guest's machine behind an
//! ioreq server, its disks and serial port, and QMP.
//!
//! libxl starts the stub domain with the guest's disks as its PV disks, consoles 1
//! (save), 2 (restore, only when restoring) and 3 (the guest's serial port), and the
//! device model's argv in xenstore. It then waits for a libvchan server at
//! `device-model/<guest>/qmp-vchan` and for `device-model/<guest>/state = running`,
//! and only then unpauses the guest. [`serve`] does, in this order:
//!
//! 1. connects the PV disks (each an fdset `stub-devid:<devid>`) and creates the drives
//!    the argv names ([`crate::dm_args`]);
//! 2. reads a saved state from console 2 when restoring ([`crate::state_file`]: the
//!    last complete state file on it);
//! 3. builds the [`Machine`](crate::machine::Machine) from the argv, loads the saved
//!    state into it ([`crate::snapshot`]; a state that does not fit is a
//!    [`ServiceError::Restore`] and the device model never reports `running`),
//!    creates the guest's ioreq server and claims every port and PCI function the
//!    machine has (the BARs the restored NICs decode too);
//! 4. listens for QMP, starts the tasks below, and writes `running`.
//!
//! Then everything runs as separate executor tasks, so that none waits for another:
//! one **ioreq task per guest vCPU** (answers the vCPU's requests against the machine),
//! one **block worker per IDE drive** (carries out the drive's disk I/O on its PV disk,
//! bounded by [`BLOCK_IO_LIMIT`]), the **serial task** (COM1 to and from console 3),
//! the **QMP task** (one client at a time over libvchan; a state file for `xl save`
//! is written and drained to console 1 before its reply), the **hot-plug task** (PV
//! disks that dom0 attaches), one **detach watcher per PV disk**, and with the Xen
//! platform device the **platform task** (the blacklist lookups its driver asks for,
//! read from xenstore). A request the platform device cannot answer yet (a log write
//! without its tokens, a magic read before the blacklist answer) waits in its vCPU's
//! ioreq task ([`Machine::ioreq_wait`](crate::machine::Machine::ioreq_wait)), and so
//! does a log write while dom0 has not caught up with the device-model log
//! ([`xen_seams::Xen::log_backlog_bytes`]); the other tasks, and the other vCPUs,
//! carry on. A NIC the guest unplugged ends its
//! network task. They share the
//! machine and the [`Vm`] (run state and block layer, which QMP commands reach) through
//! `RefCell`s that are never held across an await. The IDE model follows the block
//! layer: after every QMP command and disk change the service gives it the trays and
//! media the block layer now has, and the eject requests QMP made; the guest's own tray
//! commands go the other way, into the block layer.
//!
//! A client that misbehaves (stops reading, corrupts its ring, leaves mappings behind)
//! loses its connection, not the device model; only failures of Xen itself (xenstore,
//! grants, event channels, the ioreq server) end [`serve`] with a [`ServiceError`].
//!
//! **Save**: the Vm pauses and frames an empty payload ([`crate::vm`]); the QMP task puts
//! the machine's state in its place ([`Machine::save_state`](crate::machine::Machine::save_state))
//! once no disk request is in flight (the paused VM makes no new ones), then writes the
//! file to console 1.

mod tasks;

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::rc::Rc;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::cell::{Cell, RefCell};
use core::time::Duration;

use frontends::blkfront::{self, Disk, Options};
use frontends::console::{Console, ConsoleError};
use frontends::vchan::{Orders, Server, VchanError};
use frontends::xenbus::{self, DeviceEvent, DeviceWatch};
use qmp::Timestamp;
use xen_seams::hvm::{DeviceModelHost, HvmControl, IoreqServer};
use xen_seams::{DomId, Tx, Xen, XenstoreError};

use crate::block::{BlockError, DriveConfig, DriveKind, PvDiskInfo};
use crate::dm_args::{DmArgs, NicConfig};
use crate::ide::{BlockRequest, DriveId, DriveSpec};
use crate::machine::{Effect, Machine, MachineConfig};
use crate::ratelimit::LogLimiter;
use crate::state_file;
use crate::task::{Mailbox, Notify, Signal};
use crate::vm::{Vm, VmConfig};

/// PV console numbers libxl gives a stub domain.
pub const SAVE_CONSOLE: u32 = 1;
pub const RESTORE_CONSOLE: u32 = 2;

/// How long a restore waits for the saved state to arrive on console 2.
pub const RESTORE_WAIT: Duration = Duration::from_secs(60);

/// After a complete saved state, how long a restore waits for more (a later state
/// file on the same stream replaces it).
pub const RESTORE_QUIET: Duration = Duration::from_secs(1);

/// How long one disk request may take before the guest's command fails.
pub const BLOCK_IO_LIMIT: Duration = Duration::from_secs(30);

/// How long a NIC's network task waits before connecting its vif again after the
/// backend went away (or was not there).
pub const VIF_RETRY: Duration = Duration::from_secs(2);

/// How often the device model logs what it has done (when something changed).
pub const STATS_PERIOD: Duration = Duration::from_secs(30);

/// The HVM guest whose machine this device model emulates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestConfig {
    pub domid: DomId,
    /// `-boot order=`
    pub boot_order: String,
    /// `-m`
    pub ram_mib: u32,
    /// the PV console COM1 is wired to (`-serial /dev/hvc3` is console 3); None: no COM1
    pub serial_console: Option<u32>,
    /// the NICs, each bridged to the stub domain's vif of the same devid
    pub nics: Vec<NicConfig>,
    /// the Xen platform device at 00:02.0
    pub xen_platform: bool,
}

/// What to serve, and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// the libvchan server's xenstore directory, relative to our home
    pub qmp_path: String,
    /// the node that reads `running` once everything is served, relative to our home
    pub ready_path: String,
    pub drives: Vec<DriveConfig>,
    /// the saved device state arrives on console 2 before anything else
    pub restore: bool,
    /// connect console 1 as fdset 1 (libxl's save channel)
    pub save_console: bool,
    /// the guest's vCPUs (`query-cpus-fast`)
    pub vcpus: u32,
    /// the guest to emulate a machine for; None serves QMP only (a plain domU in tests)
    pub guest: Option<GuestConfig>,
    /// stop serving after this long (self-tests); None: until `quit`
    pub lifetime: Option<Duration>,
}

impl Config {
    /// The contract with libxl for guest `guest` and its device model's argv.
    pub fn stub_domain(guest: u32, args: &DmArgs) -> Config {
        let serial_console = args.serials.iter().find_map(|serial| {
            let number = serial.strip_prefix("/dev/hvc").and_then(|n| n.parse().ok());
            if number.is_none() {
                log::warn!("not emulated: -serial {serial} (a stub domain's serial port is /dev/hvcN)");
            }
            number
        });
        Config {
            qmp_path: format!("device-model/{guest}/qmp-vchan"),
            ready_path: format!("device-model/{guest}/state"),
            drives: args.drives.clone(),
            restore: args.incoming.is_some(),
            save_console: true,
            vcpus: args.vcpus,
            guest: Some(GuestConfig {
                domid: guest as DomId,
                boot_order: args.boot_order.clone(),
                ram_mib: args.ram_mib.unwrap_or(128),
                serial_console,
                nics: args.nics.clone(),
                xen_platform: args.xen_platform,
            }),
            lifetime: None,
        }
    }
}

/// Why the device model stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("xenstore: {what}: {error}")]
    Xenstore { what: String, error: XenstoreError },
    #[error("watching device/vbd: {0}")]
    DeviceWatch(xenbus::Error),
    #[error("console {number}: {error}")]
    Console { number: u32, error: ConsoleError },
    #[error("restoring the device state: {0}")]
    Restore(String),
    #[error("drive ide-{devid}: {error}")]
    Drive { devid: u32, error: BlockError },
    #[error("QMP's vchan server at {path}: {error}")]
    Vchan { path: String, error: VchanError },
    #[error("ioreq server for domain {guest}: {error}")]
    IoreqServer { guest: DomId, error: xen_seams::Error },
    #[error("claiming {what} for domain {guest}: {error}")]
    Claim { guest: DomId, what: String, error: xen_seams::Error },
    #[error("no quit within {0} s")]
    Lifetime(u64),
}

/// The guest's domid when we are its stub domain (libxl wrote our `target`).
pub async fn stub_domain_target<X: Xen>(xen: &X) -> Result<Option<u32>, ServiceError> {
    match xen.read_string(Tx::NONE, "target").await {
        Ok(text) => text.trim().parse().map(Some).map_err(|_| ServiceError::Xenstore {
            what: format!("target {text:?} is not a domain id"),
            error: XenstoreError::Broken("not a number"),
        }),
        Err(e) if e.is_missing() => Ok(None),
        Err(error) => Err(ServiceError::Xenstore { what: "reading target".to_string(), error }),
    }
}

/// Reads the argv libxl stored for the device model of `guest`.
pub async fn read_dm_argv<X: Xen>(xen: &X, guest: u32) -> Result<Vec<String>, ServiceError> {
    let failed = |what: String| move |error| ServiceError::Xenstore { what, error };
    let vm_node = format!("/local/domain/{guest}/vm");
    let vm = xen.read_string(Tx::NONE, &vm_node).await.map_err(failed(format!("reading {vm_node}")))?;
    let dir = format!("{}/image/dm-argv", vm.trim_end_matches('/'));
    let mut keys: Vec<(u32, String)> = xen
        .directory(Tx::NONE, &dir)
        .await
        .map_err(failed(format!("listing {dir}")))?
        .into_iter()
        .filter_map(|key| Some((key.parse().ok()?, key)))
        .collect();
    keys.sort();
    let mut argv = Vec::with_capacity(keys.len());
    for (_, key) in keys {
        let node = format!("{dir}/{key}");
        argv.push(xen.read_string(Tx::NONE, &node).await.map_err(failed(format!("reading {node}")))?);
    }
    Ok(argv)
}

/// A CD drive's medium and tray as last given to the IDE model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct MediaState {
    medium_nr_sectors: Option<u64>,
    tray_open: bool,
}

/// One IDE drive: where it sits and what its worker is told.
struct IdeDrive {
    devid: u32,
    position: DriveId,
    kind: DriveKind,
    mailbox: Mailbox<BlockRequest>,
    synced: Cell<Option<MediaState>>,
}

/// What the tasks share.
pub(crate) struct Shared<X: Xen + DeviceModelHost + 'static> {
    xen: &'static X,
    /// the guest's domid (0 without a guest)
    guest: DomId,
    now: fn() -> Timestamp,
    /// the run state and the block layer (drives, trays, media, fdsets)
    vm: RefCell<Vm>,
    disks: RefCell<BTreeMap<u32, Rc<Disk<'static, X>>>>,
    machine: Option<Rc<RefCell<Machine>>>,
    server: Option<X::Server>,
    memory: Option<X::Memory>,
    control: Option<X::Control>,
    drives: Vec<IdeDrive>,
    running: Rc<Signal>,
    /// QMP clients have events to read (a guest moved a tray, a disk went away)
    qmp_events: Notify,
    /// COM1 has output, or has room for input the serial task holds
    serial_wake: Notify,
    /// the platform device has a blacklist lookup for the platform task
    platform_wake: Notify,
    serial_holds_input: Cell<bool>,
    /// the NICs on the machine, by index, and what wakes each one's network task (the
    /// guest touched its registers)
    nics: Vec<NicConfig>,
    nic_wake: Vec<Notify>,
    /// bytes the serial console brought in, and how many the guest's UART took
    serial_in_bytes: Cell<u64>,
    serial_taken_bytes: Cell<u64>,
    /// vCPU requests found pending by the periodic look rather than by their event
    lost_ioreq_events: Cell<u64>,
    /// interrupt lines raised (rising edges sent to Xen), by ISA IRQ
    isa_raised: RefCell<[u64; 16]>,
    /// set when the service is to end (quit, or a task's fatal error)
    stopping: Signal,
    failure: RefCell<Option<ServiceError>>,
    log: RefCell<LogLimiter>,
}

impl<X: Xen + DeviceModelHost + 'static> Shared<X> {
    /// Ends the service with `error` (the first one wins).
    fn fail(&self, error: ServiceError) {
        log::error!("device model: {error}");
        self.failure.borrow_mut().get_or_insert(error);
        self.stopping.set();
    }

    fn drive(&self, position: DriveId) -> Option<&IdeDrive> {
        self.drives.iter().find(|d| d.position == position)
    }

    /// After anything touched the machine: applies its effects, hands block requests to
    /// the workers, passes guest tray moves to QMP and wakes the serial task if it has
    /// work.
    fn after_machine_change(&self) {
        let Some(machine) = &self.machine else { return };
        let (effects, requests, events, serial_work, touched_nics, lookup) = {
            let mut m = machine.borrow_mut();
            let lookup = m.platform().is_some_and(crate::platform::XenPlatform::has_blacklist_query);
            let touched_nics = m.take_touched_nics();
            let effects = m.take_effects();
            let mut requests = Vec::new();
            while let Some(request) = m.ide_mut().take_request() {
                requests.push(request);
            }
            let events = m.ide_mut().take_events();
            // The serial task has work when COM1 has output, or room for input it holds.
            let serial_work = m
                .com1()
                .is_some_and(|u| u.output_len() > 0 || (self.serial_holds_input.get() && u.receive_capacity() > 0));
            (effects, requests, events, serial_work, touched_nics, lookup)
        };
        if lookup {
            self.platform_wake.notify();
        }
        for (index, wake) in self.nic_wake.iter().enumerate() {
            if index < 64 && touched_nics & (1 << index) != 0 {
                wake.notify();
            }
        }
        self.apply(effects);
        for request in requests {
            let drive = request.drive;
            let refused = match self.drive(drive) {
                Some(d) => d.mailbox.put(request).err(),
                None => Some(request),
            };
            if refused.is_some() {
                // One request per channel is outstanding at most: this is a bug of ours.
                log::error!("device model: drive {drive:?} has no free worker; its command fails");
                let mut m = machine.borrow_mut();
                m.ide_mut().complete(drive, crate::ide::BlockOutcome::Failed);
                m.sync_irqs();
            }
        }
        if !events.is_empty() {
            self.guest_tray_events(events);
        }
        if serial_work {
            self.serial_wake.notify();
        }
    }

    /// Carries out the machine's effects with Xen.
    fn apply(&self, effects: impl IntoIterator<Item = Effect>) {
        let Some(control) = &self.control else { return };
        for effect in effects {
            let result = match effect {
                Effect::IsaIrq { irq, level } => {
                    if level && let Some(count) = self.isa_raised.borrow_mut().get_mut(usize::from(irq)) {
                        *count += 1;
                    }
                    control.set_isa_irq_level(irq, level)
                }
                Effect::LinkRoute { link, isa_irq } => control.set_pci_link_route(link, isa_irq),
                Effect::Shutdown(reason) => {
                    log::info!("device model: guest shutdown ({reason:?})");
                    control.remote_shutdown(reason)
                }
                Effect::PciIntx { device, intx, level } => control.set_pci_intx_level(device, intx, level),
                Effect::Claim { kind, first, last } => match &self.server {
                    Some(server) => {
                        // The guest decides how often (BAR sizing toggles decoding): not at info.
                        log::debug!("device model: claiming {kind:?} {first:#x}-{last:#x}");
                        server.map_range(kind, first, last)
                    }
                    None => Ok(()),
                },
                Effect::Release { kind, first, last } => match &self.server {
                    Some(server) => server.unmap_range(kind, first, last),
                    None => Ok(()),
                },
            };
            if let Err(e) = result
                && self.log.borrow_mut().allow()
            {
                log::warn!("device model: Xen refused {effect:?}: {e}");
            }
        }
    }

    /// The guest locked, unlocked, opened or closed a CD tray: the block layer follows.
    fn guest_tray_events(&self, events: Vec<crate::ide::IdeEvent>) {
        let now = (self.now)();
        {
            let mut vm = self.vm.borrow_mut();
            for event in events {
                let (position, result) = match event {
                    crate::ide::IdeEvent::TrayLocked { drive, locked } => {
                        (drive, self.drive(drive).map(|d| vm.guest_lock_tray(d.devid, locked)))
                    }
                    crate::ide::IdeEvent::TrayMoved { drive, open } => {
                        (drive, self.drive(drive).map(|d| vm.guest_move_tray(d.devid, open, now)))
                    }
                };
                if let Some(Err(e)) = result {
                    log::warn!("device model: the guest's tray change on {position:?} was refused: {e:?}");
                }
            }
        }
        // The block layer's view is now the IDE model's own: nothing to push back.
        self.record_media();
        self.qmp_events.notify();
    }

    /// What the block layer says a CD drive holds.
    fn media_of(vm: &Vm, drive: &IdeDrive) -> MediaState {
        let block = vm.block().drive(drive.devid);
        MediaState {
            medium_nr_sectors: block.and_then(|d| d.medium()).map(|m| m.size_bytes / 512),
            tray_open: block.is_some_and(|d| d.tray_open()),
        }
    }

    fn record_media(&self) {
        let vm = self.vm.borrow();
        for drive in self.drives.iter().filter(|d| d.kind == DriveKind::CdRom) {
            drive.synced.set(Some(Self::media_of(&vm, drive)));
        }
    }

    /// After a QMP command or a disk change: gives the IDE model the trays and media
    /// the block layer now has, and the eject requests QMP made.
    fn sync_media(&self) {
        let Some(machine) = &self.machine else { return };
        let (ejects, changes) = {
            let mut vm = self.vm.borrow_mut();
            let ejects = vm.take_eject_requests();
            let changes: Vec<(DriveId, MediaState, Option<MediaState>)> = self
                .drives
                .iter()
                .filter(|d| d.kind == DriveKind::CdRom)
                .map(|d| (d.position, Self::media_of(&vm, d), d.synced.get()))
                .filter(|(_, now, before)| Some(*now) != *before)
                .collect();
            (ejects, changes)
        };
        {
            let mut m = machine.borrow_mut();
            for (position, now, before) in &changes {
                if before.is_none_or(|b| b.tray_open != now.tray_open) && now.tray_open {
                    m.ide_mut().set_tray_open(*position, true);
                }
                if before.is_none_or(|b| b.medium_nr_sectors != now.medium_nr_sectors) {
                    m.ide_mut().set_medium(*position, now.medium_nr_sectors);
                }
                if before.is_none_or(|b| b.tray_open != now.tray_open) && !now.tray_open {
                    m.ide_mut().set_tray_open(*position, false);
                }
            }
            for request in ejects {
                if let Some(d) = self.drives.iter().find(|d| d.devid == request.devid) {
                    m.ide_mut().request_eject(d.position);
                }
            }
            m.sync_irqs();
        }
        for (position, now, _) in changes {
            if let Some(d) = self.drive(position) {
                d.synced.set(Some(now));
            }
        }
        self.after_machine_change();
    }

    /// After the machine took a saved state, before the guest runs: the BARs it claims
    /// and the interrupt lines it raises go to Xen, and the block layer learns the
    /// trays and locks the guest left (the media are the argv's on both sides).
    fn after_restore(&self) {
        let Some(machine) = &self.machine else { return };
        let effects = machine.borrow_mut().take_effects();
        self.apply(effects);
        let now = (self.now)();
        let mut vm = self.vm.borrow_mut();
        let m = machine.borrow();
        for drive in self.drives.iter().filter(|d| d.kind == DriveKind::CdRom) {
            let open = m.ide().is_tray_open(drive.position);
            let locked = m.ide().is_tray_locked(drive.position);
            let result = vm
                .guest_lock_tray(drive.devid, false)
                .and_then(|()| vm.guest_move_tray(drive.devid, open, now))
                .and_then(|()| vm.guest_lock_tray(drive.devid, locked));
            if let Err(e) = result {
                log::warn!("drive ide-{}: the restored tray state was refused: {e:?}", drive.devid);
            }
        }
    }

    /// The devices' state as a state file, for a save (the VM is paused: no ioreq is
    /// answered). Waits first until no disk request is in flight (each is bounded by
    /// [`BLOCK_IO_LIMIT`]), so that the saved IDE state has none; None without a machine.
    async fn machine_state_file(&self) -> Result<Option<Vec<u8>>, String> {
        let Some(machine) = &self.machine else { return Ok(None) };
        self.wait_disks_idle().await?;
        let payload = machine.borrow().save_state(self.xen.now_ns());
        log::info!("device model: {} bytes of device state", payload.len());
        Ok(Some(state_file::encode(&payload)))
    }

    /// Waits until no disk request (PIO or DMA) is with a block worker: a transfer in
    /// flight has then written guest memory and reported its pages. Bounded by
    /// [`BLOCK_IO_LIMIT`] and a margin, as each request is.
    pub(super) async fn wait_disks_idle(&self) -> Result<(), String> {
        let Some(machine) = &self.machine else { return Ok(()) };
        let limit = BLOCK_IO_LIMIT + Duration::from_secs(5);
        let deadline = self.xen.now_ns().saturating_add(limit.as_nanos() as u64);
        while !machine.borrow().ide().is_idle() {
            if self.xen.now_ns() >= deadline {
                return Err(format!("disk requests still in flight after {} s", limit.as_secs()));
            }
            self.xen.sleep(Duration::from_millis(2)).await;
        }
        Ok(())
    }

    /// Connects PV disk `devid`, gives it its fdset and a detach watcher.
    async fn connect_disk(self: &Rc<Self>, devid: u32) {
        if self.disks.borrow().contains_key(&devid) {
            return;
        }
        match Disk::connect(self.xen, devid, Options::default()).await {
            Ok(disk) => {
                let info = PvDiskInfo { read_only: disk.info().read_only, size_bytes: disk.info().capacity_bytes() };
                let fdset = self.vm.borrow_mut().pv_disk_connected(devid, info);
                log::info!(
                    "PV disk {devid}: {} bytes{} as fdset {fdset}",
                    info.size_bytes,
                    if info.read_only { ", read-only" } else { "" }
                );
                let disk = Rc::new(disk);
                self.disks.borrow_mut().insert(devid, disk.clone());
                let shared = self.clone();
                self.xen.spawn("pv-disk-detach", tasks::watch_detach(shared, devid, disk));
            }
            Err(e) => log::error!("PV disk {devid}: {e}"),
        }
    }
}

/// Reads the saved state from `console` (bounded by [`RESTORE_WAIT`]): the last
/// complete state file on it ([`state_file::LatestReader`]). Once one is complete, a
/// later one is waited for only while it is arriving, or for [`RESTORE_QUIET`] when
/// nothing more comes. Returns the payload and the bytes that arrived.
async fn read_state_file<X: Xen>(xen: &X, console: &Console<'_, X>) -> Result<(Vec<u8>, usize), ServiceError> {
    let deadline = xen.now_ns().saturating_add(RESTORE_WAIT.as_nanos() as u64);
    let mut reader = state_file::LatestReader::new();
    let mut buf = [0u8; 2048];
    loop {
        let now = xen.now_ns();
        let complete = reader.latest().is_some();
        if now >= deadline {
            if complete {
                log::warn!(
                    "device model: a later state file on console {RESTORE_CONSOLE} did not complete; the last complete one is taken"
                );
                break;
            }
            return Err(ServiceError::Restore(format!(
                "no complete device state on console {RESTORE_CONSOLE} within {} s ({} bytes arrived)",
                RESTORE_WAIT.as_secs(),
                reader.received()
            )));
        }
        let wait = if complete && !reader.later_file_in_progress() {
            RESTORE_QUIET
        } else {
            Duration::from_nanos(deadline - now)
        };
        let n = console
            .read(&mut buf, wait.min(Duration::from_nanos(deadline - now)))
            .await
            .map_err(|error| ServiceError::Console { number: RESTORE_CONSOLE, error })?;
        if n == 0 && complete && !reader.later_file_in_progress() {
            break;
        }
        reader.push(&buf[..n]).map_err(|e| ServiceError::Restore(format!("console {RESTORE_CONSOLE}: {e}")))?;
    }
    let received = reader.received();
    match reader.finish() {
        Some(payload) => Ok((payload, received)),
        None => Err(ServiceError::Restore(format!("no complete device state on console {RESTORE_CONSOLE}"))),
    }
}

fn log_restored(payload_bytes: usize, file_bytes: usize) {
    log::info!(
        "device model: restored {payload_bytes} bytes of device state from console {RESTORE_CONSOLE} \
         ({file_bytes}-byte state file)"
    );
}

/// The IDE drive specs of the machine, from the drives and the PV disks behind them.
fn machine_config(guest: &GuestConfig, vm: &Vm, drives: &[DriveConfig]) -> (MachineConfig, Vec<IdeDrive>) {
    let mut ide: [[Option<DriveSpec>; 2]; 2] = Default::default();
    let mut ide_drives = Vec::new();
    for drive in drives {
        let Some(index) = crate::block::devid::disk_index(drive.devid).filter(|i| *i < 4) else {
            log::warn!("not emulated: drive ide-{} (not one of the four IDE positions)", drive.devid);
            continue;
        };
        let position = DriveId { channel: (index / 2) as u8, unit: (index % 2) as u8 };
        let medium = vm.block().drive(drive.devid).and_then(|d| d.medium());
        let spec = match drive.kind {
            DriveKind::HardDisk => match medium {
                Some(m) => DriveSpec::HardDisk { nr_sectors: m.size_bytes / 512, read_only: m.read_only },
                None => {
                    log::error!("drive ide-{}: a hard disk without its PV disk is left out", drive.devid);
                    continue;
                }
            },
            DriveKind::CdRom => DriveSpec::CdRom { medium_nr_sectors: medium.map(|m| m.size_bytes / 512) },
        };
        ide[usize::from(position.channel)][usize::from(position.unit)] = Some(spec);
        ide_drives.push(IdeDrive {
            devid: drive.devid,
            position,
            kind: drive.kind,
            mailbox: Mailbox::default(),
            synced: Cell::new(None),
        });
    }
    let config = MachineConfig {
        ide,
        boot_order: guest.boot_order.clone(),
        ram_mib: guest.ram_mib,
        com1: guest.serial_console.is_some(),
        xen_platform: guest.xen_platform,
    };
    (config, ide_drives)
}

/// Serves the device model until `quit` (or `config.lifetime`). `now` gives
/// wall-clock stamps for QMP events.
pub async fn serve<X>(xen: &'static X, config: &Config, now: fn() -> Timestamp) -> Result<(), ServiceError>
where
    X: Xen + DeviceModelHost + 'static,
{
    let vm = Vm::new(VmConfig { save_console: SAVE_CONSOLE, vcpus: config.vcpus, ..VmConfig::default() });
    let running = vm.running_signal();

    // The PV disks present now: the drives' media.
    let mut watch = DeviceWatch::new(xen, "vbd").await.map_err(ServiceError::DeviceWatch)?;
    let mut present = Vec::new();
    while let Some(event) = watch.next(Duration::ZERO).await.map_err(ServiceError::DeviceWatch)? {
        if let DeviceEvent::Added(devid) = event {
            present.push(devid);
        }
    }
    let mut shared = Shared {
        xen,
        guest: config.guest.as_ref().map_or(0, |g| g.domid),
        now,
        vm: RefCell::new(vm),
        disks: RefCell::new(BTreeMap::new()),
        machine: None,
        server: None,
        memory: None,
        control: None,
        drives: Vec::new(),
        running,
        qmp_events: Notify::new(),
        serial_wake: Notify::new(),
        platform_wake: Notify::new(),
        serial_holds_input: Cell::new(false),
        nics: Vec::new(),
        nic_wake: Vec::new(),
        serial_in_bytes: Cell::new(0),
        serial_taken_bytes: Cell::new(0),
        lost_ioreq_events: Cell::new(0),
        isa_raised: RefCell::new([0; 16]),
        stopping: Signal::new(false),
        failure: RefCell::new(None),
        log: RefCell::new(LogLimiter::new()),
    };
    // Disks connect before the machine exists (its drives need their sizes); their
    // detach watchers start with the service below.
    let mut disks = Vec::new();
    for devid in present {
        match Disk::connect(xen, devid, Options::default()).await {
            Ok(disk) => {
                let info = PvDiskInfo { read_only: disk.info().read_only, size_bytes: disk.info().capacity_bytes() };
                let fdset = shared.vm.get_mut().pv_disk_connected(devid, info);
                log::info!(
                    "PV disk {devid}: {} bytes{} as fdset {fdset}",
                    info.size_bytes,
                    if info.read_only { ", read-only" } else { "" }
                );
                disks.push((devid, Rc::new(disk)));
            }
            Err(e) => log::error!("PV disk {devid}: {e}"),
        }
    }
    for drive in &config.drives {
        let vm = shared.vm.get_mut();
        if let Err(e) = vm.add_drive(drive.clone()) {
            // QEMU would refuse to start; an empty drive keeps the guest's other disks.
            log::error!("drive ide-{}: {e}; the drive starts empty", drive.devid);
            let empty = DriveConfig { medium: None, ..drive.clone() };
            vm.add_drive(empty).map_err(|error| ServiceError::Drive { devid: drive.devid, error })?;
        }
    }

    let save_console = if config.save_console {
        Some(
            Console::connect(xen, SAVE_CONSOLE)
                .await
                .map_err(|error| ServiceError::Console { number: SAVE_CONSOLE, error })?,
        )
    } else {
        None
    };
    let mut restored = None;
    if config.restore {
        let console = Console::connect(xen, RESTORE_CONSOLE)
            .await
            .map_err(|error| ServiceError::Console { number: RESTORE_CONSOLE, error })?;
        let (payload, file_size) = read_state_file(xen, &console).await?;
        let _ = console.close().await;
        // Without a machine only an empty state restores; with one, the machine takes
        // it once it is built (below).
        if config.guest.is_none() {
            shared.vm.get_mut().load_payload(&payload).map_err(|e| ServiceError::Restore(e.to_string()))?;
            log_restored(payload.len(), file_size);
        } else {
            restored = Some((payload, file_size));
        }
    }

    // The guest's machine, and everything it claims registered before `running`.
    let mut serial_console = None;
    if let Some(guest) = &config.guest {
        let (machine_config, drives) = machine_config(guest, shared.vm.get_mut(), &config.drives);
        let mut machine = Machine::new(machine_config);
        let mut nics = Vec::new();
        for nic in &guest.nics {
            let slot = machine.add_nic(crate::nic::new_card(nic.model, nic.mac));
            log::info!("device model: {:?} at 00:{slot:02x}.0 for vif {}", nic.model, nic.devid);
            shared.nic_wake.push(Notify::new());
            nics.push(nic.clone());
        }
        shared.nics = nics;
        if let Some((payload, file_size)) = &restored {
            machine
                .load_state(payload, xen.now_ns())
                .map_err(|e| ServiceError::Restore(format!("the saved device state: {e}")))?;
            log_restored(payload.len(), *file_size);
        }
        let machine = Rc::new(RefCell::new(machine));
        let server = xen
            .create_ioreq_server(guest.domid)
            .map_err(|error| ServiceError::IoreqServer { guest: guest.domid, error })?;
        for (kind, first, last) in machine.borrow().claims() {
            server.map_range(kind, first, last).map_err(|error| ServiceError::Claim {
                guest: guest.domid,
                what: format!("{kind:?} {first:#x}-{last:#x}"),
                error,
            })?;
        }
        log::info!(
            "device model: machine for domain {} ({} vCPU(s), {} IDE drive(s), COM1 {}), boot order {}",
            guest.domid,
            server.nr_vcpus(),
            drives.len(),
            if guest.serial_console.is_some() { "on" } else { "off" },
            guest.boot_order
        );
        shared.machine = Some(machine);
        shared.memory = Some(xen.guest_memory(guest.domid));
        shared.control = Some(xen.hvm_control(guest.domid));
        shared.server = Some(server);
        shared.drives = drives;
        if restored.is_some() {
            shared.after_restore();
        }
        if let Some(number) = guest.serial_console {
            serial_console =
                Some(Console::connect(xen, number).await.map_err(|error| ServiceError::Console { number, error })?);
        }
    }

    let mut server = Server::listen(xen, 0, &config.qmp_path, Orders::DEFAULT)
        .await
        .map_err(|error| ServiceError::Vchan { path: config.qmp_path.clone(), error })?;
    server.read_timeout = Duration::from_secs(60);

    let shared = Rc::new(shared);
    shared.record_media();
    for (devid, disk) in disks {
        shared.disks.borrow_mut().insert(devid, disk.clone());
        xen.spawn("pv-disk-detach", tasks::watch_detach(shared.clone(), devid, disk));
    }
    if let Some(server) = &shared.server {
        for vcpu in 0..server.nr_vcpus() {
            xen.spawn("ioreq", tasks::serve_vcpu(shared.clone(), vcpu));
        }
    }
    for drive in &shared.drives {
        xen.spawn("block-worker", tasks::block_worker(shared.clone(), drive.position));
    }
    if let Some(console) = serial_console {
        xen.spawn("serial", tasks::serial(shared.clone(), console));
    }
    for (index, nic) in shared.nics.iter().enumerate() {
        xen.spawn("network", tasks::network(shared.clone(), index, nic.devid, nic.mac));
    }
    if shared.machine.as_ref().is_some_and(|m| m.borrow().platform().is_some()) {
        xen.spawn("platform", tasks::platform(shared.clone()));
        // A restored lookup that was in flight is asked again.
        shared.platform_wake.notify();
    }
    xen.spawn("hotplug", tasks::hotplug(shared.clone(), watch));
    xen.spawn("stats", tasks::stats(shared.clone()));
    xen.spawn("qmp", tasks::qmp(shared.clone(), server, save_console, config.qmp_path.clone()));

    xen.write(Tx::NONE, &config.ready_path, b"running")
        .await
        .map_err(|error| ServiceError::Xenstore { what: format!("writing {}", config.ready_path), error })?;
    log::info!(
        "device model: ready; QMP at {}, {} drive(s), {} PV disk(s)",
        config.qmp_path,
        config.drives.len(),
        shared.disks.borrow().len()
    );

    let outcome = match config.lifetime {
        Some(limit) => match xen.timeout(limit, shared.stopping.wait()).await {
            Ok(()) => Ok(()),
            Err(_) => Err(ServiceError::Lifetime(limit.as_secs())),
        },
        None => {
            shared.stopping.wait().await;
            Ok(())
        }
    };
    shared.stopping.set();
    // Let the tasks see `stopping` and let go of what they hold.
    xen.sleep(Duration::from_millis(50)).await;
    close_disks(&shared).await;
    if let Some(error) = shared.failure.borrow_mut().take() {
        return Err(error);
    }
    outcome?;
    log::info!("device model: stopped");
    Ok(())
}

/// Closes the PV disks nothing else holds (a disk still in use is dropped).
async fn close_disks<X: Xen + DeviceModelHost + 'static>(shared: &Shared<X>) {
    let disks = core::mem::take(&mut *shared.disks.borrow_mut());
    for (devid, disk) in disks {
        match Rc::try_unwrap(disk) {
            Ok(disk) => {
                if let Err(e) = disk.close().await {
                    log::warn!("PV disk {devid}: closing: {e}");
                }
            }
            Err(_) => log::warn!("PV disk {devid}: still in use at the end; dropped"),
        }
    }
}

/// Whether a vchan error is the client's doing (its connection ends, the service
/// goes on) rather than Xen's.
pub fn is_client_fault(error: &VchanError) -> bool {
    matches!(
        error,
        VchanError::Timeout
            | VchanError::Closed
            | VchanError::NotConnected
            | VchanError::CorruptRing { .. }
            | VchanError::StalePages { .. }
            | VchanError::NoClient
    )
}

/// Why a disk request failed, for the bounded log.
fn block_failure(error: Result<blkfront::Error, xen_seams::TimedOut>) -> String {
    match error {
        Ok(e) => e.to_string(),
        Err(_) => format!("no answer within {} s", BLOCK_IO_LIMIT.as_secs()),
    }
}
