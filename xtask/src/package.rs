//! `cargo xtask package`: the Debian package users install on a Xen host, built with
//! dpkg-deb: the image under /usr/lib/xen/boot with the non-empty ramdisk file libxl
//! 4.17 wants beside it, stubctl under /usr/sbin with its man page, and an example
//! xl.cfg fragment. The 4.17 test bed installs the same package with `dpkg -i` in
//! dom0, so the tests run stubctl from where a user has it.

use crate::host::run;
use anyhow::{Context, Result};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

pub const NAME: &str = "rust-stubdom";
/// Where the package puts the image and its ramdisk, and what xl.cfg names.
pub const IMAGE_PATH: &str = "/usr/lib/xen/boot/rust-stubdom";
pub const RAMDISK_PATH: &str = "/usr/lib/xen/boot/rust-stubdom-empty.img";
/// libxl 4.17 refuses an empty stubdomain_ramdisk file; the image ignores its content.
const RAMDISK_LEN_BYTES: usize = 4096;

const XL_CFG_EXAMPLE: &str = "\
# An HVM guest whose device model is the rust-stubdom stub domain (add to its xl.cfg).
type = \"hvm\"
device_model_version = \"qemu-xen\"
device_model_stubdomain_override = 1
stubdomain_kernel = \"/usr/lib/xen/boot/rust-stubdom\"
stubdomain_ramdisk = \"/usr/lib/xen/boot/rust-stubdom-empty.img\"
stubdomain_memory = 16
serial = \"pty\"
boot = \"dc\"
disk = [ \"format=raw, vdev=hda, access=rw, target=/srv/guest/disk.img\",
         \"format=raw, vdev=hdc, access=ro, devtype=cdrom, target=/srv/guest/install.iso\" ]
# CD-ROM change on Xen 4.14-4.19 (xl refuses it for stub domains):
#   stubctl cd-insert GUEST hdc /srv/guest/other.iso
#   stubctl cd-eject GUEST hdc
#   stubctl status GUEST
# Checkpoints an agent acknowledges (ckpt/1 keys under /local/domain/<domid>/migration),
# each a file `xl restore` reads, the last 3 kept:
#   stubctl checkpoint GUEST --dir /srv/guest/ckpt --interval 60 --keep 3
";

const MAN_PAGE: &str = r#".TH STUBCTL 8 "" "rust-stubdom" "System Administration"
.SH NAME
stubctl \- dom0 helper for HVM guests whose device model is the rust-stubdom stub domain
.SH SYNOPSIS
.B stubctl
[\fB\-v\fR] \fBcd\-insert\fR \fIguest\fR \fIvdev\fR \fIimage\fR
.br
.B stubctl
[\fB\-v\fR] \fBcd\-eject\fR \fIguest\fR \fIvdev\fR
.br
.B stubctl
[\fB\-v\fR] \fBcheckpoint\fR \fIguest\fR \fB\-\-dir\fR \fIdir\fR [\fB\-\-interval\fR \fIs\fR] [\fB\-\-count\fR \fIn\fR] [\fB\-\-keep\fR \fIn\fR] [\fB\-\-ack\-timeout\fR \fIs\fR]
.br
.B stubctl
[\fB\-v\fR] \fBstatus\fR \fIguest\fR
.SH DESCRIPTION
\fBcd\-insert\fR and \fBcd\-eject\fR change the medium of a CD-ROM of a guest whose
device model runs in a stub domain, which xl/libxl 4.14 to 4.19 refuse: stubctl runs
libxl 4.20's sequence (QMP eject, remove-fd, the stub domain's PV disk swapped, the new
disk awaited in query-fdsets, blockdev-change-medium) through libxl's QMP socket and
locks, and records the new medium in the guest's vbd nodes and stored configuration.
Bad input is refused before anything changes; a failure halfway puts the old medium
back. \fBstatus\fR shows the stub domain, the device model's run state, its drives,
media and fdsets, and the stub domain's PV disks.
.PP
\fBcheckpoint\fR saves the running guest again and again (every \fIinterval\fR
seconds, \fIcount\fR times) by the ckpt/1 protocol: it announces each checkpoint
under /local/domain/\fIdomid\fR/migration (seq, progress, status written last), writes
entering_fg=1 before suspending the guest and waits for an agent's entering_fg_acked=1
(abort=1 cancels at any point, and an abort pending before a checkpoint refuses it; no
answer within \fIack\-timeout\fR seconds fails it). Each checkpoint is a complete
save through libxenguest into \fIdir\fR/\fIguest\fR.\fIseq\fR.ckpt, a file
\fBxl restore\fR reads, written under a temporary name, synced and renamed; the last
\fIkeep\fR stay. The guest is resumed afterwards whatever happened.
.SH OPTIONS
.TP
.BR \-v ", " \-\-verbose
Say each step and what it touches.
.SH EXIT STATUS
0 on success; 1 with a one-line reason on standard error otherwise.
.SH FILES
/usr/lib/xen/boot/rust-stubdom, /usr/lib/xen/boot/rust-stubdom-empty.img,
/usr/share/doc/rust-stubdom/examples/xl.cfg
"#;

/// The architecture and version the package says it is.
fn control(installed_size_kib: u64) -> String {
    format!(
        "Package: {NAME}\nVersion: {}\nArchitecture: amd64\nMaintainer: rust-stubdom developers <rust-stubdom@localhost>\n\
         Installed-Size: {installed_size_kib}\nDepends: libc6 (>= 2.34), libgcc-s1, libxenmisc4.17\nRecommends: xen-utils-common\n\
         Section: admin\nPriority: optional\n\
         Description: Xen device-model stub domain written in Rust, and its dom0 helper\n \
         A small PV unikernel that replaces QEMU as the device model of one HVM guest,\n \
         for stock xl/libxl (stubdomain_kernel), and stubctl, which changes such a\n \
         guest's CD-ROM medium on Xen 4.14-4.19 and takes checkpoints an agent\n acknowledges.\n",
        env!("CARGO_PKG_VERSION")
    )
}

fn install(root: &Path, dest: &str, bytes: &[u8], mode: u32) -> Result<()> {
    let path = root.join(dest.trim_start_matches('/'));
    fs::create_dir_all(path.parent().context("no parent directory")?)?;
    fs::write(&path, bytes).with_context(|| path.display().to_string())?;
    fs::set_permissions(&path, fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// Builds the package from `image` and `stubctl`; returns the .deb's path.
pub fn build(image: &Path, stubctl: &Path) -> Result<PathBuf> {
    let root = PathBuf::from("target/package/root");
    if root.exists() {
        fs::remove_dir_all(&root)?;
    }
    install(&root, IMAGE_PATH, &fs::read(image).with_context(|| image.display().to_string())?, 0o644)?;
    install(&root, RAMDISK_PATH, &[0u8; RAMDISK_LEN_BYTES], 0o644)?;
    install(&root, "/usr/sbin/stubctl", &fs::read(stubctl).with_context(|| stubctl.display().to_string())?, 0o755)?;
    run(Command::new("strip").arg(root.join("usr/sbin/stubctl")))?;
    install(&root, "/usr/share/doc/rust-stubdom/examples/xl.cfg", XL_CFG_EXAMPLE.as_bytes(), 0o644)?;
    let man = root.join("usr/share/man/man8/stubctl.8");
    install(&root, "/usr/share/man/man8/stubctl.8", MAN_PAGE.as_bytes(), 0o644)?;
    run(Command::new("gzip").args(["-9n"]).arg(&man))?;
    let installed_bytes: u64 = ["usr/lib/xen/boot/rust-stubdom", "usr/sbin/stubctl"]
        .iter()
        .map(|f| fs::metadata(root.join(f)).map(|m| m.len()).unwrap_or(0))
        .sum();
    install(&root, "/DEBIAN/control", control(installed_bytes.div_ceil(1024) + 8).as_bytes(), 0o644)?;
    let deb = PathBuf::from(format!("target/package/{NAME}_{}_amd64.deb", env!("CARGO_PKG_VERSION")));
    // gzip members: busybox's dpkg (the test bed's dom0) reads those.
    run(Command::new("dpkg-deb").args(["--root-owner-group", "-Zgzip", "--build"]).arg(&root).arg(&deb))?;
    Ok(deb)
}
