//! The Linux HVM test guest with dom0's qemu-xen as device model: proves the guest CD
//! and the dom0 tooling that drives it (tests/src/hvm_guest.rs), not our device model.

use crate::cases::hvm::{PATTERN_LEN_BYTES, PATTERN_SECTOR, check_guest_drives};
use crate::cases::linux::patterned_disk;
use crate::harness::{self, Ctx, Test};
use crate::hvm_guest::{DeviceModel, HvmGuest, HvmGuestConfig, ShutdownReason, disk_pattern, file_holds, nonce_cd};
use std::time::Duration;

pub fn tests() -> Vec<Test> {
    vec![Test {
        name: "xen::testbed::linux_guest_boots_with_dom0_qemu",
        limit: Duration::from_secs(420),
        run: linux_guest_boots_with_dom0_qemu,
    }]
}

const NAME: &str = "linux-hvm";
const CD: &str = "/tmp/linux-hvm-cd.iso";
const HDA: &str = "/tmp/linux-hvm-hda.img";

/// Boots the CD from `xl create` to a clean ACPI poweroff: ISOLINUX's banner and the
/// kernel on the serial, /init's report, ata_piix's CD and disk in dmesg, the per-run
/// nonce file's sha256, a sector read from hda, a pattern written to hda and found in
/// the disk file once the guest is gone. The serial transcript goes to the log as
/// console `linux-hvm-serial`.
fn linux_guest_boots_with_dom0_qemu(ctx: &mut Ctx) -> Result<(), String> {
    let cd = nonce_cd(CD)?;
    patterned_disk(HDA, 16)?;
    let mut config = HvmGuestConfig::new(NAME, DeviceModel::Dom0Qemu);
    config.hda = Some(HDA.to_string());
    config.cdrom = Some(cd.path.clone());
    let mut guest = HvmGuest::create(ctx, &config, Duration::from_secs(120))?;
    let result = drive(&mut guest, &cd.sha256_hex);
    for line in guest.shell.transcript().render().lines() {
        println!("@@console {NAME}-serial| {line}");
    }
    result
}

fn drive(guest: &mut HvmGuest, nonce_sha256: &str) -> Result<(), String> {
    let boot_limit = Duration::from_secs(300);
    guest.wait_created(Duration::from_secs(120))?;
    let banner_at = guest.shell.wait_for("ISOLINUX ", boot_limit)?;
    let kernel_loaded_at = guest.shell.wait_for("Loading /vmlinuz... ok", boot_limit)?;
    let initrd_loaded_at = guest.shell.wait_for("Loading /initrd.gz...ok", boot_limit)?;
    let linux_at = guest.shell.wait_for("Linux version ", boot_limit)?;
    let up = guest.shell.wait_init(boot_limit)?;
    let first_byte_at = guest.shell.transcript().first_byte_at().unwrap_or_default();

    let tag = format!("rust-stubdom hda {}", harness::nonce());
    check_guest_drives(
        &mut guest.shell,
        nonce_sha256,
        &[
            "scsi host0: ata_piix",
            "ATA-7: QEMU HARDDISK",
            "ATAPI: QEMU DVD-ROM",
            "CD-ROM",
            "[sda] 32768 512-byte logical blocks",
        ],
        &tag,
    )?;
    guest.shell.send_line("poweroff -f")?;
    let reason = guest.wait_shutdown(Duration::from_secs(120))?;
    if reason != ShutdownReason::Poweroff {
        return Err(format!("the guest stopped with {reason:?}, not a poweroff"));
    }
    guest.destroy()?;
    file_holds(HDA, PATTERN_SECTOR * 512, &disk_pattern(&tag, PATTERN_LEN_BYTES))?;

    println!(
        "@@metric xen::testbed::linux_guest_boots_with_dom0_qemu| from xl create: first serial byte {:.1} s, \
         ISOLINUX banner {:.1} s, vmlinuz loaded {:.1} s, initrd loaded {:.1} s, Linux version {:.1} s, \
         @@guest: init {:.1} s (domain {}, kernel {}{})",
        first_byte_at.as_secs_f64(),
        banner_at.as_secs_f64(),
        kernel_loaded_at.as_secs_f64(),
        initrd_loaded_at.as_secs_f64(),
        linux_at.as_secs_f64(),
        up.at.as_secs_f64(),
        guest.domid,
        up.kernel_release,
        if up.init_line_seen { "" } else { "; init line lost, idle line used" }
    );
    Ok(())
}
