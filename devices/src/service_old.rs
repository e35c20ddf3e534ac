//! The stub domain's control plane: what the image runs as libxl's device model.
//!
//! libxl starts the stub domain with the guest's disks as its PV disks, consoles 1 (save)
//! and 2 (restore, only when restoring), and the device model's argv in xenstore. It then
//! waits for a libvchan server at `device-model/<guest>/qmp-vchan` and for
//! `device-model/<guest>/state = running`. This module does that: reads the argv
//! ([`crate::dm_args`]), connects the PV disks and gives each an fdset
//! `stub-devid:<devid>`, creates the IDE drives the argv names, loads a saved state from
//! console 2 when restoring, and serves QMP ([`qmp`]) until `quit`, following PV disks
//! that dom0 attaches and detaches (the CD-ROM change).
//!
//! **Placeholders** (the emulated devices are later work): [`Devices`] has no device
//! state, so a saved state file carries an empty payload and a restore accepts only
//! that; `stop`/`cont` and the dirty log change nothing but the run state.

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::time::Duration;

use frontends::blkfront::{Disk, Options};
use frontends::console::Console;
use frontends::vchan::{Orders, Server, VchanError};
use frontends::xenbus::{DeviceEvent, DeviceWatch};
use qmp::block::{DriveConfig, PvDiskInfo};
use qmp::{DeviceModel, DeviceModelError, Engine, EngineConfig, Timestamp};
use xen_seams::{Tx, Xen};

use crate::dm_args::DmArgs;
use crate::state_file;

/// PV console numbers libxl gives a stub domain.
pub const SAVE_CONSOLE: u32 = 1;
pub const RESTORE_CONSOLE: u32 = 2;

/// How long a restore waits for the saved state to arrive on console 2.
pub const RESTORE_WAIT: Duration = Duration::from_secs(60);

/// What to serve, and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// the libvchan server's xenstore directory, relative to our home
    pub qmp_path: String,
    /// the node that reads `running` once QMP is served, relative to our home
    pub ready_path: String,
    pub drives: Vec<DriveConfig>,
    /// the saved device state arrives on console 2 before anything else
    pub restore: bool,
    /// connect console 1 as fdset 1 (libxl's save channel)
    pub save_console: bool,
    /// the guest's vCPUs (`query-cpus-fast`)
    pub vcpus: u32,
    /// stop serving after this long (self-tests); None: until `quit`
    pub lifetime: Option<Duration>,
}

impl Config {
    /// The contract with libxl for guest `guest` and its device model's argv.
    pub fn stub_domain(guest: u32, args: &DmArgs) -> Config {
        Config {
            qmp_path: format!("device-model/{guest}/qmp-vchan"),
            ready_path: format!("device-model/{guest}/state"),
            drives: args.drives.clone(),
            restore: args.incoming.is_some(),
            save_console: true,
            vcpus: args.vcpus,
            lifetime: None,
        }
    }
}

/// The guest's domid when we are its stub domain (libxl wrote our `target`).
pub async fn stub_domain_target<X: Xen>(xen: &X) -> Result<Option<u32>, String> {
    match xen.read_string(Tx::NONE, "target").await {
        Ok(text) => text.trim().parse().map(Some).map_err(|_| format!("target {text:?} is not a domain id")),
        Err(e) if e.is_missing() => Ok(None),
        Err(e) => Err(format!("reading target: {e}")),
    }
}

/// Reads the argv libxl stored for the device model of `guest`.
pub async fn read_dm_argv<X: Xen>(xen: &X, guest: u32) -> Result<Vec<String>, String> {
    let vm_node = format!("/local/domain/{guest}/vm");
    let vm = xen.read_string(Tx::NONE, &vm_node).await.map_err(|e| format!("reading {vm_node}: {e}"))?;
    let dir = format!("{}/image/dm-argv", vm.trim_end_matches('/'));
    let mut keys: Vec<(u32, String)> = xen
        .directory(Tx::NONE, &dir)
        .await
        .map_err(|e| format!("listing {dir}: {e}"))?
        .into_iter()
        .filter_map(|key| Some((key.parse().ok()?, key)))
        .collect();
    keys.sort();
    let mut argv = Vec::with_capacity(keys.len());
    for (_, key) in keys {
        let node = format!("{dir}/{key}");
        argv.push(xen.read_string(Tx::NONE, &node).await.map_err(|e| format!("reading {node}: {e}"))?);
    }
    Ok(argv)
}

/// The device model behind QMP. Today it holds no emulated devices (see the module
/// doc); it carries state files between the engine and the consoles.
#[derive(Default)]
pub struct Devices {
    /// state files the engine wrote, sent to their console after the command
    outgoing: Vec<(u32, Vec<u8>)>,
    paused: bool,
    dirty_log: bool,
}

impl Devices {
    /// Restores the devices from a saved payload. PLACEHOLDER: no device has state yet,
    /// so only an empty payload is accepted.
    pub fn load_payload(&mut self, payload: &[u8]) -> Result<(), DeviceModelError> {
        if payload.is_empty() {
            Ok(())
        } else {
            Err(DeviceModelError(format!(
                "the saved state holds {} bytes for devices this device model does not have",
                payload.len()
            )))
        }
    }

    pub fn paused(&self) -> bool {
        self.paused
    }

    pub fn dirty_log(&self) -> bool {
        self.dirty_log
    }

    /// State files queued for consoles, oldest first.
    pub fn take_outgoing(&mut self) -> Vec<(u32, Vec<u8>)> {
        core::mem::take(&mut self.outgoing)
    }
}

impl DeviceModel for Devices {
    fn pause(&mut self) {
        self.paused = true;
        log::info!("device model: paused");
    }
    fn resume(&mut self) {
        self.paused = false;
        log::info!("device model: running");
    }
    fn set_global_dirty_log(&mut self, enable: bool) {
        // PLACEHOLDER: no emulated device writes guest memory yet, so nothing to log.
        self.dirty_log = enable;
        log::info!("device model: global dirty log {}", if enable { "on" } else { "off" });
    }
    fn save_state(&mut self, _live: bool) -> Result<Vec<u8>, DeviceModelError> {
        // PLACEHOLDER payload: empty until devices have state; the framing is real.
        Ok(state_file::encode(&[]))
    }
    fn load_state(&mut self, file: &[u8]) -> Result<(), DeviceModelError> {
        let payload = state_file::decode(file).map_err(|e| DeviceModelError(e.to_string()))?;
        self.load_payload(&payload)
    }
    fn write_console(&mut self, console: u32, data: &[u8]) -> Result<(), DeviceModelError> {
        self.outgoing.push((console, data.to_vec()));
        Ok(())
    }
    fn read_console(&mut self, console: u32) -> Result<Vec<u8>, DeviceModelError> {
        Err(DeviceModelError(format!("console {console} carries no state file for xen-load-devices-state")))
    }
    fn quit(&mut self) {
        log::info!("device model: quit");
    }
}

/// Reads one state file from `console` (bounded by [`RESTORE_WAIT`]).
/// Returns the payload and the size of the file it came in.
async fn read_state_file<X: Xen>(xen: &X, console: &Console<'_, X>) -> Result<(Vec<u8>, usize), String> {
    let deadline = xen.now_ns().saturating_add(RESTORE_WAIT.as_nanos() as u64);
    let mut reader = state_file::Reader::new();
    let mut buf = [0u8; 2048];
    loop {
        let now = xen.now_ns();
        if now >= deadline {
            return Err(format!(
                "no complete device state on console {RESTORE_CONSOLE} within {} s ({} bytes arrived)",
                RESTORE_WAIT.as_secs(),
                reader.received()
            ));
        }
        let n = console
            .read(&mut buf, Duration::from_nanos(deadline - now))
            .await
            .map_err(|e| format!("console {RESTORE_CONSOLE}: {e}"))?;
        if let Some(payload) = reader.push(&buf[..n]).map_err(|e| format!("console {RESTORE_CONSOLE}: {e}"))? {
            return Ok((payload, reader.received()));
        }
    }
}

/// Serves the device model's control plane until `quit` (or `config.lifetime`).
/// `now` gives wall-clock stamps for QMP events.
pub async fn serve<X: Xen>(xen: &X, config: &Config, now: impl Fn() -> Timestamp) -> Result<(), String> {
    let mut engine = Engine::new(
        Devices::default(),
        EngineConfig { save_console: SAVE_CONSOLE, vcpus: config.vcpus, ..EngineConfig::default() },
    );

    // The PV disks present now: the drives' media.
    let mut devices = DeviceWatch::new(xen, "vbd").await.map_err(|e| format!("watching device/vbd: {e}"))?;
    let mut disks: BTreeMap<u32, Disk<'_, X>> = BTreeMap::new();
    while let Some(event) = devices.next(Duration::ZERO).await.map_err(|e| format!("device watch: {e}"))? {
        if let DeviceEvent::Added(devid) = event {
            connect_disk(xen, &mut engine, &mut disks, devid).await;
        }
    }
    for drive in &config.drives {
        if let Err(e) = engine.add_drive(drive.clone()) {
            // QEMU would refuse to start; an empty drive keeps the guest's other disks.
            log::error!("drive ide-{}: {}; the drive starts empty", drive.devid, e.desc);
            let empty = DriveConfig { medium: None, ..drive.clone() };
            engine.add_drive(empty).map_err(|e| format!("drive ide-{}: {}", drive.devid, e.desc))?;
        }
    }

    let save_console = if config.save_console {
        Some(Console::connect(xen, SAVE_CONSOLE).await.map_err(|e| format!("console {SAVE_CONSOLE} (save): {e}"))?)
    } else {
        None
    };
    if config.restore {
        let console = Console::connect(xen, RESTORE_CONSOLE)
            .await
            .map_err(|e| format!("console {RESTORE_CONSOLE} (restore): {e}"))?;
        let (payload, file_size) = read_state_file(xen, &console).await?;
        engine.device_model_mut().load_payload(&payload).map_err(|e| format!("restoring: {}", e.0))?;
        log::info!(
            "device model: restored {} bytes of device state from console {RESTORE_CONSOLE} ({file_size}-byte state file)",
            payload.len()
        );
        let _ = console.close().await;
    }

    let mut server = Server::listen(xen, 0, &config.qmp_path, Orders::DEFAULT)
        .await
        .map_err(|e| format!("vchan server at {}: {e}", config.qmp_path))?;
    server.read_timeout = Duration::from_millis(20);
    xen.write(Tx::NONE, &config.ready_path, b"running")
        .await
        .map_err(|e| format!("writing {}: {e}", config.ready_path))?;
    log::info!(
        "device model: QMP at {}, {} drive(s), {} PV disk(s)",
        config.qmp_path,
        config.drives.len(),
        disks.len()
    );

    let started = xen.now_ns();
    let mut session = None;
    let mut buf = [0u8; 4096];
    while !engine.quit_requested() {
        if let Some(limit) = config.lifetime
            && xen.now_ns() - started > limit.as_nanos() as u64
        {
            return Err(format!("no quit within {} s", limit.as_secs()));
        }
        // PV disks come and go (the CD-ROM change): each connected one is an fdset.
        if let Some(event) = devices.next(Duration::from_millis(10)).await.map_err(|e| format!("device watch: {e}"))? {
            match event {
                DeviceEvent::Added(devid) => connect_disk(xen, &mut engine, &mut disks, devid).await,
                DeviceEvent::Removed(devid) => log::info!("PV disk {devid}: removed"),
            }
        }
        // A detach shows first as the backend closing: close our side so it completes.
        // (A 1 ms limit is enough: blkfront keeps a change it saw until it is read.)
        let mut gone = Vec::new();
        for (&devid, disk) in &disks {
            if let Ok(reason) = xen.timeout(Duration::from_millis(1), disk.watch_backend()).await {
                log::info!("PV disk {devid}: detached ({reason})");
                gone.push(devid);
            }
        }
        for devid in gone {
            engine.pv_disk_disconnected(devid);
            if let Some(disk) = disks.remove(&devid) {
                let _ = disk.close().await;
            }
        }
        if session.is_none() {
            match server.accept(Duration::from_millis(20)).await {
                Ok(()) => session = Some(engine.open_session()),
                Err(VchanError::NoClient) => {}
                Err(e) => return Err(format!("vchan accept: {e}")),
            }
        }
        if let Some(s) = session.as_mut() {
            match server.read(&mut buf).await {
                Ok(n) => s.feed(&mut engine, &buf[..n], now()),
                Err(VchanError::Timeout) => {}
                Err(VchanError::Closed) => session = None,
                Err(e) => return Err(format!("vchan read: {e}")),
            }
        }
        // A state file is in dom0 before the reply that says it is saved.
        for (number, data) in engine.device_model_mut().take_outgoing() {
            let sent = match (&save_console, number) {
                (Some(console), SAVE_CONSOLE) => match console.write(&data).await {
                    Ok(()) => console.drain().await.map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                },
                _ => Err("not connected".to_string()),
            };
            match sent {
                Ok(()) => log::info!("device model: {} bytes of state written to console {number}", data.len()),
                Err(e) => log::error!("device model: the state file for console {number} is lost: {e}"),
            }
        }
        if let Some(s) = session.as_mut() {
            s.deliver_events(&mut engine);
            let out = s.take_output();
            if !out.is_empty() {
                match server.write_all(&out).await {
                    Ok(()) => {}
                    Err(VchanError::Closed) => session = None,
                    Err(e) => return Err(format!("vchan write: {e}")),
                }
            }
        }
    }
    for (_, disk) in disks {
        let _ = disk.close().await;
    }
    if let Some(console) = save_console {
        let _ = console.close().await;
    }
    let _ = server.shutdown().await;
    log::info!("device model: quit");
    Ok(())
}

/// Connects PV disk `devid` and gives it its fdset; a disk that fails is logged and left.
async fn connect_disk<'x, X: Xen>(
    xen: &'x X,
    engine: &mut Engine<Devices>,
    disks: &mut BTreeMap<u32, Disk<'x, X>>,
    devid: u32,
) {
    if disks.contains_key(&devid) {
        return;
    }
    match Disk::connect(xen, devid, Options::default()).await {
        Ok(disk) => {
            let info = PvDiskInfo { read_only: disk.info().read_only, size_bytes: disk.info().capacity_bytes() };
            let fdset = engine.pv_disk_connected(devid, info);
            log::info!(
                "PV disk {devid}: {} bytes{} as fdset {fdset}",
                info.size_bytes,
                if info.read_only { ", read-only" } else { "" }
            );
            disks.insert(devid, disk);
        }
        Err(e) => log::error!("PV disk {devid}: {e}"),
    }
}
