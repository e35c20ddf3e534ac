//! The Linux HVM test guest: a bootable CD image made from Debian packages only.
//!
//! The CD holds ISOLINUX (serial console on COM1, no prompt), Debian's kernel (the
//! one dom0 runs), a small busybox initramfs whose /init is tests/guest/init, and
//! `/nonce.bin`: a 64 KiB placeholder that dom0 overwrites in a copy of the image with
//! per-run bytes (ISO 9660 stores a file in one contiguous extent), so the sha256 the
//! guest prints ties its output to this run. The image and the placeholder go into
//! dom0's base initramfs (see testbed.rs) as /guest/linux-cd.iso and
//! /guest/linux-cd-nonce-placeholder.bin (tests/src/hvm_guest.rs names the same paths).

use crate::host::run;
use crate::testbed::{copy_modules, pack};
use anyhow::{Context, Result, bail};
use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The guest's /init and ISOLINUX's configuration; a change rebuilds the image.
pub const INPUT_FILES: &[&str] = &["tests/guest/init", "tests/guest/isolinux.cfg", CDEJECT_SOURCE, PORTIO_SOURCE];
/// The guest's own eject of its CD-ROM tray (busybox has no eject applet), built static.
const CDEJECT_SOURCE: &str = "tests/guest/cdeject.c";
/// The port-I/O benchmark's guest program (times reads of one I/O port), built static.
const PORTIO_SOURCE: &str = "tests/guest/portio.c";
/// File names of the image and of the placeholder its /nonce.bin holds.
const ISO_NAME: &str = "linux-cd.iso";
const PLACEHOLDER_NAME: &str = "linux-cd-nonce-placeholder.bin";
/// Kernel modules in the initramfs (with their dependencies). /init loads the
/// storage ones; the NIC and PV drivers are there for later tests to `modprobe`.
/// (8139cp drives QEMU's rtl8139, whose PCI revision 0x20 8139too refuses.)
const MODULES: &[&str] =
    &["ata_piix", "sd_mod", "sr_mod", "isofs", "8139too", "8139cp", "e1000", "xen-blkfront", "xen-netfront"];
/// ISOLINUX's boot sector and its core module, from Debian's isolinux and syslinux-common.
const ISOLINUX_BIN: &str = "/usr/lib/ISOLINUX/isolinux.bin";
const LDLINUX_C32: &str = "/usr/lib/syslinux/modules/bios/ldlinux.c32";
/// Length of /nonce.bin.
pub const NONCE_LEN_BYTES: usize = 64 << 10;

/// The bytes /nonce.bin holds in the built image: 16-byte lines `NONCE-PH xxxxxx\n`
/// numbered from 0, so no shifted copy of the pattern matches itself.
pub fn nonce_placeholder() -> Vec<u8> {
    (0..NONCE_LEN_BYTES / 16).flat_map(|i| format!("NONCE-PH {i:06x}\n").into_bytes()).collect()
}

/// What [`build`] made.
pub struct GuestCd {
    pub iso: PathBuf,
    pub initrd_len_bytes: u64,
}

/// Builds the CD image at `out_dir/linux-cd.iso` (with the placeholder beside it) from
/// the installed kernel `kver`, using `work` as scratch space.
pub fn build(work: &Path, kver: &str, out_dir: &Path) -> Result<GuestCd> {
    let root = work.join("guest-root");
    let cd = work.join("guest-cd");
    for d in [&root, &cd] {
        if d.exists() {
            fs::remove_dir_all(d)?;
        }
    }
    fs::create_dir_all(out_dir)?;

    // The initramfs: busybox, /init, the modules.
    for d in ["bin", "sbin", "usr/bin", "usr/sbin", "proc", "sys", "dev", "tmp", "cdrom"] {
        fs::create_dir_all(root.join(d))?;
    }
    fs::copy("/bin/busybox", root.join("bin/busybox")).context("/bin/busybox (busybox-static)")?;
    let applets = Command::new("/bin/busybox").arg("--list").output()?;
    for a in String::from_utf8_lossy(&applets.stdout).lines() {
        if a != "busybox" {
            symlink("busybox", root.join("bin").join(a))?;
        }
    }
    run(Command::new("mknod").args(["-m", "600"]).arg(root.join("dev/console")).args(["c", "5", "1"]))?;
    fs::copy("tests/guest/init", root.join("init"))?;
    run(Command::new("gcc").args(["-static", "-Os", "-Wall", "-o"]).arg(root.join("bin/cdeject")).arg(CDEJECT_SOURCE))?;
    run(Command::new("gcc").args(["-static", "-O2", "-Wall", "-o"]).arg(root.join("bin/portio")).arg(PORTIO_SOURCE))?;
    copy_modules(&root, kver, MODULES)?;

    // The CD: ISOLINUX, the kernel, the initramfs, the nonce placeholder.
    fs::create_dir_all(cd.join("isolinux"))?;
    fs::copy(ISOLINUX_BIN, cd.join("isolinux/isolinux.bin")).context("isolinux.bin (Debian's isolinux)")?;
    fs::copy(LDLINUX_C32, cd.join("isolinux/ldlinux.c32")).context("ldlinux.c32 (Debian's syslinux-common)")?;
    fs::copy("tests/guest/isolinux.cfg", cd.join("isolinux/isolinux.cfg"))?;
    fs::copy(format!("/boot/vmlinuz-{kver}"), cd.join("vmlinuz"))?;
    pack(&root, &cd.join("initrd.gz"))?;
    let initrd_len_bytes = fs::metadata(cd.join("initrd.gz"))?.len();
    let placeholder = nonce_placeholder();
    fs::write(cd.join("nonce.bin"), &placeholder)?;

    let iso = out_dir.join(ISO_NAME);
    run(Command::new("xorriso")
        .args(["-as", "mkisofs", "-quiet", "-R", "-V", "RUST_STUBDOM_GUEST", "-o"])
        .arg(&iso)
        .args(["-b", "isolinux/isolinux.bin", "-c", "isolinux/boot.cat"])
        .args(["-no-emul-boot", "-boot-load-size", "4", "-boot-info-table"])
        .arg(&cd))?;
    // dom0 finds the placeholder by its content: it must be in the image exactly once.
    let image = fs::read(&iso)?;
    let copies = image.windows(placeholder.len()).filter(|w| *w == placeholder.as_slice()).count();
    if copies != 1 {
        bail!("{} holds {copies} copies of the nonce placeholder, not 1", iso.display());
    }
    fs::write(out_dir.join(PLACEHOLDER_NAME), &placeholder)?;
    fs::remove_dir_all(&root)?;
    fs::remove_dir_all(&cd)?;
    Ok(GuestCd { iso, initrd_len_bytes })
}

/// Boots the CD in plain QEMU (TCG, no Xen) with its serial port on this terminal and
/// a 16 MiB scratch disk as hda: a quick check of the guest itself (Ctrl-a x quits).
pub fn run_in_qemu(cd: &GuestCd, work: &Path) -> Result<()> {
    let hda = work.join("guest-hda.img");
    fs::write(&hda, vec![0u8; 16 << 20])?;
    run(Command::new("qemu-system-x86_64")
        .args(["-accel", "tcg", "-machine", "pc", "-m", "128", "-display", "none", "-vga", "none"])
        .args(["-monitor", "none", "-nic", "none", "-no-reboot", "-serial", "mon:stdio", "-boot", "d"])
        .arg("-drive")
        .arg(format!("file={},format=raw,if=ide,index=0,media=disk", hda.display()))
        .arg("-drive")
        .arg(format!("file={},format=raw,if=ide,index=2,media=cdrom,readonly=on", cd.iso.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The command loop of tests/guest/init (from its init line on), run by the
    /// busybox the guest gets, with `input` as its serial; what it printed once `until`
    /// appears (or 20 s pass).
    fn run_init_loop(input: &str, until: &str) -> String {
        use std::io::{BufRead, Write};
        let init = fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/guest/init")).unwrap();
        let at = init.find("echo \"@@guest: init").expect("the init line");
        let mut child = Command::new("busybox")
            .args(["ash", "-c", &format!("exec 2>&1; {}", &init[at..])])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("busybox (the guest's shell)");
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let until = until.to_string();
        std::thread::spawn(move || {
            let mut seen = String::new();
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                seen.push_str(&line);
                seen.push('\n');
                if line == until {
                    break;
                }
            }
            let _ = tx.send(seen);
        });
        let seen = rx.recv_timeout(std::time::Duration::from_secs(20)).unwrap_or_default();
        let _ = child.kill();
        let _ = child.wait();
        seen
    }

    #[test]
    fn the_guest_init_survives_a_malformed_command_line() {
        // A line cut short (as a serial read that gave up mid-line left it), then a
        // command that must still run, in the same shell (its variable persists).
        let seen = run_init_loop("@\"\"beg 7\"; true; echo \"@@\"\"end 7 $?\"\ni=5\necho \"after $i\"\n", "after 5");
        assert!(seen.contains("unterminated quoted string"), "{seen}");
        assert!(seen.ends_with("after 5\n"), "{seen}");
    }

    #[test]
    fn the_guest_init_runs_only_whole_length_prefixed_lines() {
        // "true" lost its "t" on the way (seen on the bed); then the same line whole;
        // then a line whose length prefix lost its colon.
        let whole = "echo \"ran $((1 + 1))\"";
        let cut = whole.replacen("echo", "cho", 1);
        let input = format!("{}:{cut}\n{}:{whole}\n{}{whole}\necho done\n", whole.len(), whole.len(), whole.len());
        let seen = run_init_loop(&input, "done");
        assert_eq!(seen.lines().filter(|l| l.starts_with("@@garbled")).count(), 2, "{seen}");
        assert_eq!(seen.matches("ran 2").count(), 1, "{seen}");
        assert!(!seen.contains("not found"), "{seen}");
        assert!(seen.ends_with("done\n"), "{seen}");
    }

    #[test]
    fn placeholder_has_the_nonce_length_and_no_shifted_self_match() {
        let p = nonce_placeholder();
        assert_eq!(p.len(), NONCE_LEN_BYTES);
        assert_eq!(&p[..16], b"NONCE-PH 000000\n");
        assert_eq!(&p[p.len() - 16..], b"NONCE-PH 000fff\n");
        // Two copies back to back hold the pattern only at the two obvious places.
        let twice = [p.clone(), p.clone()].concat();
        assert_eq!(twice.windows(p.len()).filter(|w| *w == p.as_slice()).count(), 2);
    }
}
