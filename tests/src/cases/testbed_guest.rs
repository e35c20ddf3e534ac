//! The Linux HVM test guest with dom0's qemu-xen as device model: proves the guest CD
//! and the dom0 tooling that drives it (tests/src/hvm_guest.rs), not our device model.

use crate::cases::linux::patterned_disk;
use crate::harness::{self, Ctx, Test, expect_contains};
use crate::hvm_guest::{
    DeviceModel, HvmGuest, HvmGuestConfig, ShutdownReason, disk_pattern, file_holds, nonce_cd, sha256_hex,
    write_pattern_command,
};
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
/// Where the guest writes its pattern on hda, and how much.
const PATTERN_SECTOR: u64 = 2048;
const PATTERN_LEN_BYTES: usize = 64 << 10;
/// A sector of the patterned disk the guest reads back (it holds its own number).
const READ_SECTOR: u64 = 100;

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

    let short = Duration::from_secs(60);
    // Both drives probed (sd and sr attach asynchronously), then the lines that say
    // so: every serial byte is a device-model round trip.
    let dmesg = guest.shell.run_ok(
        "waitdev /dev/sda 30 && waitdev /dev/sr0 30 && dmesg | grep -E 'scsi host|ata[0-9.]+: [AP]|CD-ROM|\\[sda\\] [0-9]+ 512'",
        short,
    )?;
    for needle in [
        "scsi host0: ata_piix",
        "ATA-7: QEMU HARDDISK",
        "ATAPI: QEMU DVD-ROM",
        "CD-ROM",
        "[sda] 32768 512-byte logical blocks",
    ] {
        expect_contains(&dmesg, needle, "the guest's dmesg")?;
    }
    let sums = guest.shell.run_ok("mount -t iso9660 -r /dev/sr0 /cdrom && sha256sum /cdrom/nonce.bin", short)?;
    expect_contains(&sums, &format!("{nonce_sha256}  /cdrom/nonce.bin"), "sha256sum of the CD's nonce file")?;

    // A read through ata_piix: sector READ_SECTOR of the patterned disk.
    let sector: Vec<u8> = (0..64).flat_map(|_| READ_SECTOR.to_le_bytes()).collect();
    let read = guest.shell.run_ok(
        &format!("dd if=/dev/sda bs=512 skip={READ_SECTOR} count=1 iflag=direct status=none | sha256sum"),
        short,
    )?;
    expect_contains(&read, &sha256_hex(&sector)?, "sha256sum of a sector the guest read from hda")?;

    let tag = format!("rust-stubdom hda {}", harness::nonce());
    guest.shell.run_ok(&write_pattern_command("/dev/sda", &tag, PATTERN_SECTOR, PATTERN_LEN_BYTES)?, short)?;
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
