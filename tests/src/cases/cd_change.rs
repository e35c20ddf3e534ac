//! Benchmark `cd-change` (`cargo xtask bench cd-change`): changing the guest's CD on
//! Xen 4.17, where libxl refuses `xl cd-insert` for a stub-domain guest, with our stub
//! domain, dom0's qemu-xen and the Linux stub domain peer as device model, in the same
//! test-bed boot: from the command a user runs (`stubctl cd-insert` for a stub domain,
//! `xl cd-insert` for dom0's QEMU) to the guest's first read of the new medium's nonce
//! file; median of four changes between two CDs.

use crate::cases::bench::Figure;
use crate::cases::hvm::{STUBDOM_MEMORY_MIB, our_stub_domain, wait_boot, with_device_model_log};
use crate::cases::peer::{PEER_MEMORY_MIB, peer_stub_domain};
use crate::harness::Ctx;
use crate::hvm_guest::{DeviceModel, GuestShell, HvmGuest, HvmGuestConfig, NonceCd, nonce_cd};
use crate::proc;
use std::process::Command;
use std::time::{Duration, Instant};

/// Where the bed's dom0 has stubctl (installed from the project's package).
const STUBCTL: &str = "/usr/sbin/stubctl";
/// The test guest's CD-ROM.
const CD_VDEV: &str = "hdc";
const NR_CHANGES: usize = 4;
const CD_READ_ATTEMPTS: usize = 10;
/// The guest's read of its CD's nonce file (unmounted again: a mounted CD locks the
/// tray); opening the drive first makes Linux check the medium.
const READ_CD: &str =
    ": < /dev/sr0 2>/dev/null; mount -t iso9660 -r /dev/sr0 /cdrom && { sha256sum /cdrom/nonce.bin; umount /cdrom; }";

/// The bench: ours, dom0 qemu-xen, then the Linux stub domain peer (a peer that fails
/// loses its row, with the reason printed, not the others').
pub fn bench(ctx: &mut Ctx) -> Result<Vec<Figure>, String> {
    let mut figures = Vec::new();
    let runs = [
        ("image", "bench-cd-stubdom", our_stub_domain(STUBDOM_MEMORY_MIB)),
        ("qemu-dom0", "bench-cd-qemu", DeviceModel::Dom0Qemu),
        ("linux-stubdom", "bench-cd-peer", peer_stub_domain(PEER_MEMORY_MIB)),
    ];
    for (who, name, device_model) in runs {
        match measure(ctx, name, device_model) {
            Ok(seconds) => figures.push((format!("cd-change-4.17/{who}"), seconds, "s")),
            // Our own failure fails the bench; a peer's is reported.
            Err(e) if who == "image" => return Err(e),
            Err(e) => println!("@@bench-detail cd-change| {who} failed: {e}"),
        }
    }
    Ok(figures)
}

/// Boots the test guest with `device_model` and changes its CD [`NR_CHANGES`] times;
/// the median in seconds.
fn measure(ctx: &mut Ctx, name: &str, device_model: DeviceModel) -> Result<f64, String> {
    let stubdom = matches!(device_model, DeviceModel::StubDomain { .. });
    let first = nonce_cd(&format!("/tmp/{name}-cd.iso"))?;
    let second = nonce_cd(&format!("/tmp/{name}-cd-b.iso"))?;
    let mut config = HvmGuestConfig::new(name, device_model);
    config.cdrom = Some(first.path.clone());
    let mut guest = HvmGuest::create(ctx, &config, Duration::from_secs(120))?;
    let median = (|| {
        guest.wait_created(Duration::from_secs(120))?;
        wait_boot(&mut guest.shell, Duration::from_secs(900))?;
        let mut changes = Vec::new();
        for round in 0..NR_CHANGES {
            let cd = if round % 2 == 0 { &second } else { &first };
            changes.push(cd_change(&mut guest.shell, name, stubdom, cd)?);
        }
        println!("@@bench-detail cd-change| {name}: {changes:.2?} s");
        changes.sort_by(f64::total_cmp);
        Ok(changes[changes.len() / 2])
    })()
    .map_err(|e| with_device_model_log(name, e));
    guest.destroy()?;
    median
}

/// Seconds from the insert command to the guest's first read of `cd`'s nonce.
fn cd_change(shell: &mut GuestShell, guest: &str, stubdom: bool, cd: &NonceCd) -> Result<f64, String> {
    let started = Instant::now();
    let program = if stubdom { STUBCTL } else { "xl" };
    let args = ["cd-insert", guest, CD_VDEV, &cd.path];
    let out = proc::run(Command::new(program).args(args), Duration::from_secs(180))?;
    if !out.success {
        return Err(format!("{program} {} failed: {}{}", args.join(" "), out.stdout, out.stderr));
    }
    // A read that meets the change's UNIT ATTENTION or the old medium is tried again.
    let expected = format!("{}  /cdrom/nonce.bin", cd.sha256_hex);
    for _ in 0..CD_READ_ATTEMPTS {
        if shell.run(READ_CD, Duration::from_secs(120))?.text.contains(&expected) {
            return Ok(started.elapsed().as_secs_f64());
        }
    }
    Err(format!("the guest did not read {} after {CD_READ_ATTEMPTS} attempts", cd.path))
}
