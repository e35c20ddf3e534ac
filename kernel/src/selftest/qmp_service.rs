//! The QMP server over libvchan, with the block layer's media following the PV
//! disks dom0 attaches and detaches: the control plane libxl's CD-ROM change talks
//! to. Run as a self-test (`selftest=qmp qmp.path=PATH`) while the device model
//! that will own it is still to come.

use crate::seams::KernelXen;
use crate::{time, xs};
use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::time::Duration;
use frontends::blkfront::{Disk, Options};
use frontends::vchan::{Orders, Server, VchanError};
use frontends::xenbus::{DeviceEvent, DeviceWatch};
use qmp::block::{DriveConfig, DriveKind, MediumSource, PvDiskInfo};
use qmp::{DeviceModel, DeviceModelError, Engine, EngineConfig, Timestamp};

/// Placeholder device model: run state changes are logged, device state is empty
/// (the save stream carries no device state yet), consoles are not wired to QMP yet.
struct NoDevices;

impl DeviceModel for NoDevices {
    fn pause(&mut self) {
        log::info!("qmp: device model paused (no devices yet)");
    }
    fn resume(&mut self) {
        log::info!("qmp: device model resumed (no devices yet)");
    }
    fn set_global_dirty_log(&mut self, enable: bool) {
        log::info!("qmp: global dirty log {enable} (no guest memory tracking yet)");
    }
    fn save_state(&mut self, _live: bool) -> Result<Vec<u8>, DeviceModelError> {
        Ok(Vec::new())
    }
    fn load_state(&mut self, _state: &[u8]) -> Result<(), DeviceModelError> {
        Ok(())
    }
    fn write_console(&mut self, n: u32, _data: &[u8]) -> Result<(), DeviceModelError> {
        Err(DeviceModelError(format!("console {n} is not connected to QMP yet")))
    }
    fn read_console(&mut self, n: u32) -> Result<Vec<u8>, DeviceModelError> {
        Err(DeviceModelError(format!("console {n} is not connected to QMP yet")))
    }
    fn quit(&mut self) {
        log::info!("qmp: quit");
    }
}

fn now() -> Timestamp {
    let (sec, nsec) = time::wallclock();
    Timestamp::new(sec as i64, i64::from(nsec / 1000))
}

/// Serves QMP at `path` (relative to our home) for dom0; `cd_devid` is the CD-ROM
/// drive `ide-<devid>` whose medium is the PV disk of the same devid. Ends on `quit`.
pub async fn serve(path: &str, cd_devid: u32) -> Result<(), String> {
    let xen = KernelXen::new().await.map_err(|e| format!("reading our domid: {e}"))?;
    let mut engine = Engine::new(NoDevices, EngineConfig::default());
    let mut devices = DeviceWatch::new(&xen, "vbd").await.map_err(|e| format!("watching device/vbd: {e}"))?;
    let mut disks: BTreeMap<u32, Disk<'_, KernelXen>> = BTreeMap::new();
    let mut drive_added = false;
    let mut server = Server::listen(&xen, 0, path, Orders::DEFAULT).await.map_err(|e| format!("vchan listen: {e}"))?;
    server.read_timeout = Duration::from_millis(20);
    let mut session = None;
    let mut buf = [0u8; 4096];
    xs::write(xs::NO_TX, "data/qmp-ready", b"1").await.map_err(|e| format!("writing data/qmp-ready: {e}"))?;
    let deadline = time::Deadline::after_ms(600_000);
    while !engine.quit_requested() {
        if deadline.passed() {
            return Err("no quit within 600 s".into());
        }
        // PV disks come and go: each connected one is a fdset entry stub-devid:<devid>.
        if let Some(event) = devices.next(Duration::from_millis(10)).await.map_err(|e| format!("device watch: {e}"))? {
            match event {
                DeviceEvent::Added(devid) => {
                    let disk = Disk::connect(&xen, devid, Options::default()).await.map_err(|e| format!("disk {devid}: {e}"))?;
                    let info = PvDiskInfo { read_only: disk.info().read_only, size_bytes: disk.info().capacity_bytes() };
                    let fdset = engine.pv_disk_connected(devid, info);
                    println!("qmp: PV disk {devid} connected ({} bytes) as fdset {fdset}", info.size_bytes);
                    disks.insert(devid, disk);
                    if devid == cd_devid && !drive_added {
                        let medium = MediumSource { filename: format!("/dev/fdset/{fdset}"), format: Some("host_device".into()) };
                        engine
                            .add_drive(DriveConfig { devid, kind: DriveKind::CdRom, read_only: true, medium: Some(medium) })
                            .map_err(|e| format!("adding ide-{devid}: {e:?}"))?;
                        drive_added = true;
                    }
                }
                DeviceEvent::Removed(devid) => println!("qmp: PV disk {devid} removed"),
            }
        }
        // A detach shows first as the backend closing: close our side so it completes.
        // (Polled with a 1 ms limit: blkfront keeps a backend change it saw but had no
        // time to read, so the next poll still reports it.)
        let mut gone = Vec::new();
        for (&devid, disk) in &disks {
            if let Ok(reason) = time::timeout(Duration::from_millis(1), disk.watch_backend()).await {
                println!("qmp: PV disk {devid} detached ({reason})");
                gone.push(devid);
            }
        }
        for devid in gone {
            engine.pv_disk_disconnected(devid);
            if let Some(disk) = disks.remove(&devid) {
                let _ = disk.close().await;
            }
        }
        if session.is_none() && drive_added {
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
        if let Some(s) = session.as_mut() {
            s.deliver_events(&mut engine);
            let out = s.take_output();
            if !out.is_empty() {
                server.write_all(&out).await.map_err(|e| format!("vchan write: {e}"))?;
            }
        }
    }
    for (_, disk) in disks {
        let _ = disk.close().await;
    }
    let _ = server.shutdown().await;
    println!("qmp: ok");
    Ok(())
}
