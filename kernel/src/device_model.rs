//! Starting the device model ([`devices::service`]) the way this domain was started:
//! as libxl's stub domain (our `target` node names the guest; the argv comes from
//! xenstore), or as a plain domU for tests, with `qmp.path=PATH` naming where to serve
//! QMP and `cd=DEVID` a CD-ROM drive whose medium is the PV disk of that devid.

use crate::cmdline::Cmdline;
use crate::seams::KernelXen;
use crate::time;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::time::Duration;
use devices::block::{DriveConfig, DriveKind, MediumSource};
use devices::dm_args::DmArgs;
use devices::service::{self, Config};
use qmp::Timestamp;

fn now() -> Timestamp {
    let (sec, nsec) = time::wallclock();
    Timestamp::new(sec as i64, i64::from(nsec / 1000))
}

/// Runs the device model if this start asks for one; Ok(false) when it does not.
pub async fn run(cmdline: Cmdline<'_>) -> Result<bool, String> {
    let xen = KernelXen::new().await.map_err(|e| format!("reading our domid: {e}"))?;
    // The device model's tasks outlive any stack frame: they hold Xen for good.
    let xen: &'static KernelXen = alloc::boxed::Box::leak(alloc::boxed::Box::new(xen));
    let config = match service::stub_domain_target(xen).await.map_err(|e| e.to_string())? {
        Some(guest) => {
            let argv = service::read_dm_argv(xen, guest).await.map_err(|e| e.to_string())?;
            let args = DmArgs::parse(&argv).map_err(|e| format!("device model argv: {e}"))?;
            log::info!("stub domain of domain {guest}: {} argument(s), {} IDE drive(s)", argv.len(), args.drives.len());
            for option in &args.ignored {
                log::warn!("not emulated: {option}");
            }
            Config::stub_domain(guest, &args)
        }
        None => match cmdline.value("qmp.path") {
            Some(path) => plain_domu(cmdline, core::str::from_utf8(path).map_err(|_| "qmp.path is not UTF-8")?),
            None => return Ok(false),
        },
    };
    service::serve(xen, &config, now).await.map_err(|e| e.to_string())?;
    Ok(true)
}

/// A domU serving QMP at `path`: no save console, no argv, ready flag in `data/`.
fn plain_domu(cmdline: Cmdline<'_>, path: &str) -> Config {
    let mut drives = Vec::new();
    if let Some(devid) = cmdline.number("cd").map(|n| n as u32)
        && let Some(index) = devices::block::devid::disk_index(devid)
    {
        // As libxl writes it: the medium is /dev/xvd<letter of the disk's index>.
        let letter = char::from(b'a' + index.min(25) as u8);
        let medium = MediumSource { filename: format!("/dev/xvd{letter}"), format: Some("host_device".to_string()) };
        drives.push(DriveConfig { devid, kind: DriveKind::CdRom, read_only: true, medium: Some(medium) });
    }
    Config {
        qmp_path: path.to_string(),
        ready_path: "data/qmp-state".to_string(),
        drives,
        restore: false,
        save_console: false,
        vcpus: 1,
        guest: None,
        lifetime: Some(Duration::from_secs(600)),
    }
}
