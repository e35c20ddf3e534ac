//! The real-Xen test beds: Xen and a Debian dom0 booted inside qemu-system-x86_64
//! (TCG), built from Debian packages. Two releases ([`Release`]): Debian 12's Xen 4.17,
//! whose dom0 userland is the host's installed packages, and Debian 13's Xen 4.20, whose
//! dom0 userland comes from a trixie root made with mmdebstrap (trixie.rs); dom0's
//! kernel is the host's (bookworm's) in both.
//!
//! dom0's initramfs is two gzip'd cpio archives back to back (Linux unpacks both):
//! a large base (busybox, Xen's toolstack, dom0's QEMU, firmware, kernel modules,
//! the Linux PV domU (4.17 only) and the Linux HVM guest's CD), rebuilt only when the
//! packages or files it is made from change, and a small overlay with
//! the project's files (/init, /suite/xen-suite, /suite/rust-stubdom,
//! /suite/rust-stubdom-selftest and /suite/rust-stubdom.deb, the Debian package that
//! dom0's /init installs with `dpkg -i`) made every run.
//! Every boot is bounded by a host-side limit and a watchdog inside dom0; the serial
//! log and the guests' console logs are left under the bed's directory (target/testbed/
//! for 4.17, target/testbed420/ for 4.20), in logs/.

use crate::host::{apt_get, run};
use anyhow::{Context, Result, bail};
use std::collections::BTreeSet;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A bed that prints nothing for `SILENCE_NUDGE` gets a byte on its serial line (and
/// another each `SILENCE_NUDGE` while it stays quiet); one silent for `SILENCE_LIMIT`
/// is killed.
const SILENCE_NUDGE: Duration = Duration::from_secs(60);
const SILENCE_LIMIT: Duration = Duration::from_secs(600);

/// Bump when the way the base initramfs is assembled changes.
const BASE_LAYOUT: u32 = 6;
/// The host's packages: the 4.17 bed's dom0 userland and hypervisor, the kernel both
/// beds' dom0 (and the HVM guest) run, the tools that assemble the initramfs.
const PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "qemu-system-xen",
    "xen-hypervisor-4.17-amd64",
    "xen-utils-4.17",
    "linux-image-amd64",
    "busybox-static",
    "cpio",
    "kmod",
    "util-linux",
    "bash",
    "binutils",
    "gcc",
    // Xen's headers (the ABI layout tests) and libxenctrl/libxenguest, which stubctl
    // links for its checkpoints.
    "libxen-dev",
    // The Linux HVM test guest's CD (guest.rs).
    "isolinux",
    "syslinux-common",
    "xorriso",
];
/// Host tools the 4.20 bed needs besides [`PACKAGES`] (not part of the 4.17 bed's inputs).
const PACKAGES_420: &[&str] = &["mmdebstrap"];

/// A Xen release the suite runs on, each with its own test bed and cache directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Release {
    /// Debian 12's Xen 4.17, userland from the host: tests named `xen::...`.
    Xen417,
    /// Debian 13's Xen 4.20, userland from a trixie root: tests named `xen420::...`.
    Xen420,
}

impl Release {
    pub const ALL: [Release; 2] = [Release::Xen417, Release::Xen420];

    /// "4.17" or "4.20".
    pub fn version(self) -> &'static str {
        match self {
            Release::Xen417 => "4.17",
            Release::Xen420 => "4.20",
        }
    }

    /// The bed's cache and log directory.
    pub fn dir(self) -> &'static Path {
        Path::new(match self {
            Release::Xen417 => "target/testbed",
            Release::Xen420 => "target/testbed420",
        })
    }

    /// The bed a real-Xen test or benchmark runs on: names that start with `xen420`
    /// belong to 4.20 (tests/src/cases/mod.rs applies the same rule inside dom0).
    pub fn of(name: &str) -> Release {
        if name.starts_with("xen420") { Release::Xen420 } else { Release::Xen417 }
    }

    /// What dom0's /init passes to the suite as `suite.bed`.
    fn bed_arg(self) -> &'static str {
        self.version()
    }

    /// "Xen 4.17 + Debian 12 dom0", for progress lines.
    pub fn describe(self) -> &'static str {
        match self {
            Release::Xen417 => "Xen 4.17 + Debian 12 dom0",
            Release::Xen420 => "Xen 4.20 + Debian 13 dom0 userland (Debian 12 kernel)",
        }
    }

    /// Where dom0's files come from, building the trixie root if needed.
    fn sysroot(self) -> Result<Sysroot> {
        match self {
            Release::Xen417 => Ok(Sysroot::host()),
            Release::Xen420 => Ok(Sysroot { dir: crate::trixie::ensure_root(self.dir())? }),
        }
    }

    fn xen_bin(self) -> String {
        format!("/usr/lib/xen-{}/bin", self.version())
    }
}

/// A tree dom0's files are copied from: the host's `/` or a root made for a release.
/// Paths are named as they are inside the tree; its own tools (`ldd`) name libraries.
pub struct Sysroot {
    dir: PathBuf,
}

impl Sysroot {
    pub fn host() -> Self {
        Sysroot { dir: PathBuf::from("/") }
    }

    fn is_host(&self) -> bool {
        self.dir == Path::new("/")
    }

    /// Where `path` (absolute, as inside the tree) is on this machine.
    fn source(&self, path: &str) -> PathBuf {
        self.dir.join(path.trim_start_matches('/'))
    }

    /// The shared libraries `file` (a path inside the tree) needs, as the tree's `ldd` names them.
    fn libraries(&self, file: &str) -> Result<Vec<String>> {
        let out = if self.is_host() {
            Command::new("ldd").arg(file).output()?
        } else {
            Command::new("chroot").arg(&self.dir).args(["ldd", file]).output()?
        };
        Ok(ldd_paths(&String::from_utf8_lossy(&out.stdout)))
    }
}

/// The absolute paths in `ldd` output.
fn ldd_paths(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|line| match line.split_once("=> ") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next().filter(|p| p.starts_with('/')),
        })
        .filter(|lib| lib.starts_with('/'))
        .map(str::to_string)
        .collect()
}
/// The C source of the Linux domU's vchan echo server.
const VCHAN_ECHO_SOURCE: &str = "tests/dom0/vchan-echo.c";

/// Kernel modules the Linux PV domU (the benchmarks' peer) loads.
const DOMU_MODULES: &[&str] = &["xen-blkfront", "xen-netfront", "xen-gntalloc", "xen-evtchn"];
/// Kernel modules dom0 loads (with their dependencies).
const DOM0_MODULES: &[&str] = &[
    "xen-evtchn",
    "xen-gntdev",
    "xen-gntalloc",
    "xen-privcmd",
    "xenfs",
    "xen-blkback",
    "xen-netback",
    "loop",
    "bridge",
    "tun",
];
/// QEMU: Xen needs SVM + nested paging for HVM guests (Debian's Xen has no shadow
/// paging); rdrand spares dom0 a long wait for entropy.
const CPU: &str = "qemu64,+svm,+npt,+rdrand";
const XEN_CMDLINE: &str = "console=com1 com1=115200 dom0_mem=1024M,max:1024M loglvl=all guest_loglvl=all \
                           noreboot console_timestamps=boot bootscrub=0";

fn installed_version(pkg: &str) -> Option<String> {
    let out = Command::new("dpkg-query").args(["-W", "-f", "${Status}|${Version}", pkg]).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (status, version) = text.split_once('|')?;
    status.ends_with(" installed").then(|| version.to_string())
}

/// Installs the host's Debian packages the test beds are made from, if any is missing.
pub fn ensure_packages() -> Result<()> {
    let missing: Vec<&str> =
        PACKAGES.iter().chain(PACKAGES_420).copied().filter(|p| installed_version(p).is_none()).collect();
    if missing.is_empty() {
        return Ok(());
    }
    println!("xtask: installing Debian packages: {}", missing.join(" "));
    let mut args: Vec<String> = vec!["install".into(), "-y".into(), "--no-install-recommends".into()];
    args.extend(missing.iter().map(|s| s.to_string()));
    // A qemu-utils from backports (newer than bookworm's QEMU) breaks qemu-system-common:
    // take bookworm's, which matches the QEMU the test bed uses.
    if installed_version("qemu-utils").is_some_and(|v| v.contains("bpo")) {
        args.extend(["--allow-downgrades".into(), "qemu-utils/bookworm".into()]);
    }
    run(apt_get().arg("update").arg("-q"))?;
    run(apt_get().args(&args))
}

/// The newest installed Debian kernel version (dom0 runs it).
fn kernel_version() -> Result<String> {
    let mut versions: Vec<String> = fs::read_dir("/boot")?
        .filter_map(|e| e.ok()?.file_name().to_str()?.strip_prefix("vmlinuz-").map(String::from))
        .collect();
    versions.sort_by_key(|v| {
        v.split(|c: char| !c.is_ascii_digit()).map(|n| n.parse::<u64>().unwrap_or(0)).collect::<Vec<_>>()
    });
    versions.pop().context("no /boot/vmlinuz-*: is linux-image-amd64 installed?")
}

/// The 4.17 bed's scratch directory and the kernel version dom0 (and the HVM guest) run.
pub fn scratch_and_kernel() -> Result<(PathBuf, String)> {
    let dir = Release::Xen417.dir();
    fs::create_dir_all(dir)?;
    Ok((dir.to_path_buf(), kernel_version()?))
}

/// What a bed's base initramfs is made from; a change means a rebuild.
fn base_inputs(release: Release, sys: &Sysroot, kver: &str) -> Result<String> {
    let mut s = format!("layout {BASE_LAYOUT}\nkernel {kver}\n");
    for file in ["tests/dom0/domU-init", VCHAN_ECHO_SOURCE].iter().chain(crate::guest::INPUT_FILES) {
        let text = fs::read_to_string(file).unwrap_or_default();
        s.push_str(&format!("{file} {}\n{text}", text.len()));
    }
    for p in PACKAGES {
        s.push_str(&format!("{p} {}\n", installed_version(p).unwrap_or_default()));
    }
    if release == Release::Xen420 {
        s.push_str(&format!("release 4.20 root:\n{}", crate::trixie::package_versions(&sys.dir)?));
    }
    Ok(s)
}

/// Copies `file` (and the target of a symlink) from `sys` into `root`, with the
/// shared libraries the tree's `ldd` names for it.
pub(crate) fn copy_with_libs(root: &Path, sys: &Sysroot, file: &str) -> Result<()> {
    copy_into(root, sys, file)?;
    for lib in sys.libraries(file)? {
        copy_into(root, sys, &lib)?;
    }
    Ok(())
}

/// Copies a program built on this machine to `dest` inside `root`, with the shared
/// libraries this machine's `ldd` names for it taken from `sys` (a program built on
/// Debian 12 runs on Debian 13's newer libraries of the same names).
fn copy_program(root: &Path, sys: &Sysroot, program: &Path, dest: &str) -> Result<()> {
    copy_libraries(root, sys, program)?;
    let dest = root.join(dest.trim_start_matches('/'));
    fs::create_dir_all(dest.parent().context("no parent directory")?)?;
    fs::copy(program, &dest).with_context(|| format!("copying {}", program.display()))?;
    Ok(())
}

/// Copies the shared libraries this machine's `ldd` names for `program` from `sys`
/// into `root` (for a program that gets into dom0 another way).
fn copy_libraries(root: &Path, sys: &Sysroot, program: &Path) -> Result<()> {
    let out = Command::new("ldd").arg(program).output()?;
    for lib in ldd_paths(&String::from_utf8_lossy(&out.stdout)) {
        copy_into(root, sys, &lib)?;
    }
    Ok(())
}

/// Copies one path of `sys` into `root` at the same place; symlinks are kept and followed.
pub(crate) fn copy_into(root: &Path, sys: &Sysroot, path: &str) -> Result<()> {
    let dest = root.join(path.trim_start_matches('/'));
    if dest.symlink_metadata().is_ok() {
        return Ok(());
    }
    fs::create_dir_all(dest.parent().unwrap())?;
    let source = sys.source(path);
    let meta = fs::symlink_metadata(&source).with_context(|| format!("{} is missing", source.display()))?;
    if meta.file_type().is_symlink() {
        // Keep the link as it is and copy what it names, one hop at a time, so
        // every path the link chain uses exists inside `root` too. (An absolute
        // target names a path inside the tree.)
        let target = fs::read_link(&source)?;
        symlink(&target, &dest)?;
        let next = Path::new(path).parent().unwrap().join(&target);
        copy_into(root, sys, next.to_str().context("non-UTF-8 path")?)?;
    } else if meta.is_dir() {
        run(Command::new("cp").arg("-a").arg(format!("{}/.", source.display())).arg(&dest))?;
    } else {
        fs::copy(&source, &dest).with_context(|| format!("copying {}", source.display()))?;
    }
    Ok(())
}

pub(crate) fn copy_modules(root: &Path, kver: &str, modules: &[&str]) -> Result<()> {
    let mut files = BTreeSet::new();
    for m in modules {
        let out = Command::new("modprobe").args(["-S", kver, "--show-depends", m]).output()?;
        if !out.status.success() {
            bail!("modprobe --show-depends {m}: {}", String::from_utf8_lossy(&out.stderr));
        }
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if let Some(path) = line.strip_prefix("insmod ") {
                files.insert(path.split_whitespace().next().unwrap_or_default().to_string());
            }
        }
    }
    let host = Sysroot::host();
    for f in &files {
        copy_into(root, &host, f)?;
    }
    for f in ["modules.order", "modules.builtin", "modules.builtin.modinfo"] {
        copy_into(root, &host, &format!("/lib/modules/{kver}/{f}"))?;
    }
    run(Command::new("depmod").arg("-b").arg(root).arg(kver))
}

/// Packs `dir` as a gzip'd newc cpio archive at `out`.
pub(crate) fn pack(dir: &Path, out: &Path) -> Result<()> {
    let out_file = fs::File::create(out)?;
    let status = Command::new("sh")
        .arg("-c")
        .arg("find . | LC_ALL=C sort | cpio -o -H newc --quiet -R 0:0 | gzip -6")
        .current_dir(dir)
        .stdout(out_file)
        .status()?;
    if !status.success() {
        bail!("packing {} failed", dir.display());
    }
    Ok(())
}

/// A busybox initramfs with the PV block and net drivers, coreutils' dd and
/// tests/dom0/domU-init as /init.
fn build_domu_initramfs(dir: &Path, kver: &str, out: &Path) -> Result<()> {
    let root = dir.join("domU-root");
    if root.exists() {
        fs::remove_dir_all(&root)?;
    }
    for d in ["bin", "sbin", "usr/bin", "proc", "sys", "dev", "tmp"] {
        fs::create_dir_all(root.join(d))?;
    }
    fs::copy("/bin/busybox", root.join("bin/busybox"))?;
    let applets = Command::new("/bin/busybox").arg("--list").output()?;
    for a in String::from_utf8_lossy(&applets.stdout).lines() {
        if a != "busybox" && a != "dd" && a != "date" {
            symlink("busybox", root.join("bin").join(a))?;
        }
    }
    run(Command::new("mknod").args(["-m", "600"]).arg(root.join("dev/console")).args(["c", "5", "1"]))?;
    let host = Sysroot::host();
    copy_with_libs(&root, &host, "/usr/bin/dd")?;
    copy_with_libs(&root, &host, "/usr/bin/date")?;
    // The vchan benchmark's Linux peer: an echo server on Xen's libxenvchan.
    let echo = dir.join("vchan-echo");
    run(Command::new("gcc").args(["-O2", "-Wall", "-o"]).arg(&echo).arg(VCHAN_ECHO_SOURCE).arg("-lxenvchan"))?;
    copy_program(&root, &host, &echo, "/usr/bin/vchan-echo")?;
    symlink("/usr/bin/dd", root.join("bin/dd"))?;
    fs::copy("tests/dom0/domU-init", root.join("init"))?;
    copy_modules(&root, kver, DOMU_MODULES)?;
    pack(&root, out)?;
    fs::remove_dir_all(&root)?;
    Ok(())
}

/// Builds a bed's dom0 base initramfs unless an up-to-date one exists; returns its path.
pub fn base_initramfs(release: Release) -> Result<PathBuf> {
    let kver = kernel_version()?;
    let dir = release.dir();
    fs::create_dir_all(dir)?;
    let sys = release.sysroot()?;
    let out = dir.join("base-initrd.gz");
    let key_file = dir.join("base-inputs.txt");
    let inputs = base_inputs(release, &sys, &kver)?;
    if out.exists() && fs::read_to_string(&key_file).ok().as_deref() == Some(&inputs) {
        return Ok(out);
    }
    let (v, xen_bin) = (release.version(), release.xen_bin());
    println!("xtask: building the Xen {v} bed's dom0 base initramfs from Debian packages (kernel {kver})");
    let started = Instant::now();
    let root = dir.join("dom0-root");
    if root.exists() {
        fs::remove_dir_all(&root)?;
    }
    for d in [
        "bin", "sbin", "usr/bin", "usr/sbin", "proc", "sys", "dev", "tmp", "run", "etc", "root", "var/log", "var/lib",
        "var/lock",
    ] {
        fs::create_dir_all(root.join(d))?;
    }
    symlink("../run", root.join("var/run"))?;
    // (busybox-static: the 4.20 bed's runs on this machine too)
    let busybox = sys.source("/bin/busybox");
    fs::copy(&busybox, root.join("bin/busybox"))?;
    let applets = Command::new(&busybox).arg("--list").output()?;
    for a in String::from_utf8_lossy(&applets.stdout).lines() {
        if a != "busybox" {
            symlink("busybox", root.join("bin").join(a))?;
        }
    }
    run(Command::new("mknod").args(["-m", "600"]).arg(root.join("dev/console")).args(["c", "5", "1"]))?;
    run(Command::new("mknod").args(["-m", "666"]).arg(root.join("dev/null")).args(["c", "1", "3"]))?;
    fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")?;
    fs::write(root.join("etc/group"), "root:x:0:\n")?;

    // bash for Xen's hotplug scripts; flock and losetup from util-linux (busybox's lack features they use).
    for f in ["/bin/bash", "/usr/bin/flock", "/sbin/losetup"] {
        copy_with_libs(&root, &sys, f)?;
    }
    for b in
        ["xl", "xenstored", "xenconsoled", "xenconsole", "xen-init-dom0", "libxl-save-helper", "vchan-socket-proxy"]
    {
        copy_with_libs(&root, &sys, &format!("{xen_bin}/{b}"))?;
    }
    for b in ["xl", "xenstored", "xenconsoled", "xen-init-dom0"] {
        symlink(format!("../lib/xen-{v}/bin/{b}"), root.join("usr/sbin").join(b))?;
    }
    copy_with_libs(&root, &sys, "/usr/bin/xenstore")?;
    for e in fs::read_dir(sys.source("/usr/bin"))? {
        let name = e?.file_name().into_string().unwrap_or_default();
        if name.starts_with("xenstore-") {
            let _ = symlink("xenstore", root.join("usr/bin").join(&name));
        }
    }
    // libxl runs /usr/bin/vchan-socket-proxy for a stub domain's QMP: Debian's is a
    // link to a wrapper that picks the versioned binary.
    copy_into(&root, &sys, "/usr/lib/xen-common/bin")?;
    copy_into(&root, &sys, "/usr/bin/vchan-socket-proxy")?;
    copy_into(&root, &sys, "/etc/xen")?;
    // HVM guests: dom0's device model, hvmloader and SeaBIOS.
    copy_with_libs(&root, &sys, "/usr/libexec/xen-qemu-system-i386")?;
    copy_into(&root, &sys, &format!("/usr/lib/xen-{v}/boot/hvmloader"))?;
    copy_into(&root, &sys, "/usr/share/seabios/bios-256k.bin")?;
    copy_into(&root, &sys, "/usr/share/qemu/keymaps")?;
    copy_into(&root, &sys, "/usr/share/qemu/kvmvapic.bin")?;
    // The option ROMs dom0's QEMU loads for the emulated NICs (the guest-net
    // benchmark's peer; QEMU refuses to start without them), from ipxe-qemu.
    for rom in ["efi-rtl8139.rom", "efi-e1000.rom"] {
        let source = sys.source(&format!("/usr/lib/ipxe/qemu/{rom}"));
        if source.exists() {
            fs::copy(&source, root.join("usr/share/qemu").join(rom))?;
        }
    }
    copy_modules(&root, &kver, DOM0_MODULES)?;
    fs::create_dir_all(root.join("guest"))?;
    if release == Release::Xen417 {
        // The Linux PV domU the benchmarks compare against: its kernel and initramfs.
        fs::copy(format!("/boot/vmlinuz-{kver}"), root.join("guest/linux-domU"))?;
        build_domu_initramfs(dir, &kver, &root.join("guest/linux-domU-initrd.gz"))?;
    }
    // The Linux HVM test guest's CD, booted by the HVM tests.
    let cd = crate::guest::build(dir, &kver, &root.join("guest"))?;
    println!("xtask: guest CD {} bytes (initramfs {} bytes)", fs::metadata(&cd.iso)?.len(), cd.initrd_len_bytes);

    let tmp = dir.join("base-initrd.gz.tmp");
    pack(&root, &tmp)?;
    fs::rename(&tmp, &out)?;
    fs::write(&key_file, inputs)?;
    fs::remove_dir_all(&root)?;
    println!("xtask: base initramfs {} bytes in {:.1} s", fs::metadata(&out)?.len(), started.elapsed().as_secs_f64());
    Ok(out)
}

/// Boot files for one run of a bed: Xen, dom0's kernel and the combined initramfs.
pub struct Overlay {
    release: Release,
    xen: PathBuf,
    vmlinuz: PathBuf,
    initrd: PathBuf,
}

/// Adds the project's files on top of a bed's base initramfs.
pub fn prepare_overlay(release: Release, images: &crate::image::Images, suite: &Path) -> Result<Overlay> {
    let base = base_initramfs(release)?;
    let sys = release.sysroot()?;
    let dir = release.dir();
    let root = dir.join("overlay-root");
    if root.exists() {
        fs::remove_dir_all(&root)?;
    }
    fs::create_dir_all(root.join("suite"))?;
    fs::copy("tests/dom0/init", root.join("init"))?;
    fs::copy(&images.image, root.join("suite/rust-stubdom"))?;
    fs::copy(&images.selftest, root.join("suite/rust-stubdom-selftest"))?;
    copy_program(&root, &sys, suite, "/suite/xen-suite")?;
    // The Debian package users install (the image, stubctl): dom0's /init installs it
    // with `dpkg -i`; stubctl's libraries are dom0's own. stubctl is built against this
    // machine's Xen 4.17 libraries (libxenctrl/libxenguest change ABI with each
    // release), so it runs on the 4.17 bed only; the 4.20 bed's libxl changes CDs
    // itself and its tests do not use stubctl.
    let stubctl = suite.with_file_name("stubctl");
    if release == Release::Xen417 {
        copy_libraries(&root, &sys, &stubctl)?;
    }
    fs::copy(crate::package::build(&images.image, &stubctl)?, root.join("suite/rust-stubdom.deb"))?;
    let overlay = dir.join("overlay-initrd.gz");
    pack(&root, &overlay)?;

    let initrd = dir.join("dom0-initrd.gz");
    let mut combined = fs::read(&base)?;
    combined.extend(fs::read(&overlay)?);
    if release == Release::Xen417 {
        // The Linux stub domain peer's kernel and initramfs (peer.rs).
        crate::peer::append_to_initramfs(&mut combined, &crate::peer::build(dir, &kernel_version()?)?)?;
    }
    fs::write(&initrd, combined)?;

    let xen = dir.join("xen");
    let xen_gz = sys.source(&format!("/boot/xen-{}-amd64.gz", release.version()));
    let gz = fs::File::open(&xen_gz).with_context(|| xen_gz.display().to_string())?;
    // QEMU's multiboot loader wants Xen's ELF uncompressed.
    let status = Command::new("gzip").arg("-dc").stdin(gz).stdout(fs::File::create(&xen)?).status()?;
    if !status.success() {
        bail!("gunzip of Xen failed");
    }
    let vmlinuz = PathBuf::from(format!("/boot/vmlinuz-{}", kernel_version()?));
    Ok(Overlay { release, xen, vmlinuz, initrd })
}

fn qemu_command(overlay: &Overlay, dom0_cmdline: &str) -> Command {
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-accel", "tcg,thread=multi,tb-size=512", "-cpu", CPU, "-m", "3072", "-smp", "2", "-machine", "pc"])
        .args(["-display", "none", "-vga", "none", "-monitor", "none", "-nic", "none", "-no-reboot"])
        .arg("-kernel")
        .arg(&overlay.xen)
        .args(["-append", XEN_CMDLINE])
        .arg("-initrd")
        // QEMU's multiboot module list is comma-separated: a comma inside is doubled.
        .arg(format!("{} {},{}", overlay.vmlinuz.display(), dom0_cmdline.replace(',', ",,"), overlay.initrd.display()));
    cmd
}

/// Asks the bed's QEMU for its status over QMP every 2 s, for as long as it runs. The
/// answer does not matter: each request wakes QEMU's main loop, which runs the timers it
/// owns (the emulated LAPIC and HPET timers Xen depends on). The whole bed was seen to
/// stop with every vCPU halted until a byte came in on the serial line (see `boot`), as
/// if a timer's deadline had been missed until the main loop woke for I/O.
fn poke_main_loop(monitor: PathBuf) {
    std::thread::spawn(move || {
        let started = Instant::now();
        let stream = loop {
            match std::os::unix::net::UnixStream::connect(&monitor) {
                Ok(stream) => break stream,
                Err(_) if started.elapsed() < Duration::from_secs(30) => std::thread::sleep(Duration::from_millis(100)),
                Err(_) => return,
            }
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
        let mut reader = BufReader::new(match stream.try_clone() {
            Ok(s) => s,
            Err(_) => return,
        });
        let mut writer = stream;
        let mut line = String::new();
        let mut request = |text: &str| -> bool {
            line.clear();
            writer.write_all(text.as_bytes()).is_ok() && reader.read_line(&mut line).map(|n| n > 0).unwrap_or(false)
        };
        // The greeting, then capabilities negotiation.
        if !request("") || !request("{\"execute\":\"qmp_capabilities\"}\n") {
            return;
        }
        while request("{\"execute\":\"query-status\"}\n") {
            std::thread::sleep(Duration::from_secs(2));
        }
    });
}

/// What a bounded boot of the test bed printed.
pub struct BootOutcome {
    pub lines: Vec<String>,
    pub timed_out: bool,
    pub serial_log: PathBuf,
    pub log_dir: PathBuf,
}

impl BootOutcome {
    pub fn saw(&self, needle: &str) -> bool {
        self.lines.iter().any(|l| l.contains(needle))
    }
}

/// Kills QEMU when the boot ends for any reason, including an error or a panic here.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Boots the test bed with dom0 running `suite=MODE`, reads the serial port until
/// dom0 powers off or `limit` passes, and writes the logs. `echo` shows every line.
pub fn boot(overlay: &Overlay, mode: &str, filter: &str, limit: Duration, echo: bool) -> Result<BootOutcome> {
    if filter.contains([' ', ',', '\'', '"']) {
        bail!("a test filter may not contain spaces, commas or quotes: {filter:?}");
    }
    let log_dir = overlay.release.dir().join("logs");
    if log_dir.exists() {
        fs::remove_dir_all(&log_dir)?;
    }
    fs::create_dir_all(&log_dir)?;
    // dom0's watchdog fires a little before the host gives up, so dom0 still says why.
    let wd = limit.as_secs().saturating_sub(30).max(60);
    let dom0_cmdline = format!(
        "console=hvc0 earlyprintk=xen quiet loglevel=4 suite={mode} suite.filter={filter} suite.bed={} suite.wd={wd}",
        overlay.release.bed_arg()
    );
    let mut cmd = qemu_command(overlay, &dom0_cmdline);
    // stdin is a pipe kept open for the nudge below (nothing else is ever written).
    // In /tmp: a socket's path must stay short (108 bytes), wherever the clone is.
    let monitor = std::env::temp_dir().join(format!("rust-stubdom-bed-{}.qmp", std::process::id()));
    cmd.arg("-qmp").arg(format!("unix:{},server=on,wait=off", monitor.display()));
    cmd.args(["-serial", "stdio"]).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::inherit());
    let mut child = KillOnDrop(cmd.spawn().context("starting qemu-system-x86_64")?);
    poke_main_loop(monitor.clone());
    let stdout = child.0.stdout.take().expect("piped");
    let mut serial_in = child.0.stdin.take().expect("piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    // "^@": dom0's tty echoing a nudge byte (see below).
                    let line = String::from_utf8_lossy(&buf)
                        .replace('\r', "")
                        .replace("^@", "")
                        .trim_end_matches('\n')
                        .to_string();
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            }
        }
    });

    let serial_log = log_dir.join("serial.log");
    let mut log = fs::File::create(&serial_log)?;
    let started = Instant::now();
    let mut lines = Vec::new();
    let mut timed_out = false;
    let mut froze = false;
    let mut last_line_at = Instant::now();
    let mut last_nudge = Instant::now();
    let mut nudged = false;
    loop {
        let left = limit.saturating_sub(started.elapsed());
        if left.is_zero() {
            timed_out = true;
            break;
        }
        // Seen on this bed with Xen under TCG: right after an HVM guest's "upcall
        // vector" line, Xen, dom0 and the guests all idle with QEMU's vCPUs halted, as
        // if no timer were armed, until an interrupt comes; one byte on the serial line
        // is one (it reaches dom0's console as a NUL, echoed as "^@", which the reader
        // strips) and brought a frozen bed back. So a bed quiet for a minute gets a
        // byte every minute (normal runs are often that quiet: the bytes are harmless),
        // and one silent for 10 minutes (dom0's heartbeat is every 2) is killed instead
        // of waiting for the whole limit.
        let silent = last_line_at.elapsed();
        if silent >= SILENCE_NUDGE && last_nudge.elapsed() >= SILENCE_NUDGE {
            last_nudge = Instant::now();
            if !nudged {
                nudged = true;
                writeln!(log, "xtask: no output for {} s: a byte on the serial line", silent.as_secs())?;
            }
            let _ = serial_in.write_all(&[0]).and_then(|()| serial_in.flush());
        }
        if silent >= SILENCE_LIMIT {
            froze = true;
            break;
        }
        match rx.recv_timeout(left.min(Duration::from_secs(1))) {
            Ok(line) => {
                last_line_at = Instant::now();
                if nudged {
                    nudged = false;
                    writeln!(log, "xtask: the bed spoke again after {} s", silent.as_secs())?;
                }
                let t = started.elapsed().as_secs_f64();
                writeln!(log, "[{t:8.2}] {line}")?;
                if echo {
                    println!("[{t:8.2}] {line}");
                } else {
                    show_progress(t, &line);
                }
                lines.push(line);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    drop(serial_in);
    drop(child);
    let _ = fs::remove_file(&monitor);
    if timed_out {
        writeln!(log, "xtask: test bed killed after {} s", limit.as_secs())?;
        println!("xtask: test bed killed after {} s", limit.as_secs());
    }
    if froze {
        let note =
            format!("xtask: test bed killed: no output for {} s (it had stopped as a whole)", SILENCE_LIMIT.as_secs());
        writeln!(log, "{note}")?;
        println!("{note}");
    }
    write_console_logs(&log_dir, &lines)?;
    Ok(BootOutcome { lines, timed_out, serial_log, log_dir })
}

/// One line of progress per milestone while tests run (results are judged later).
fn show_progress(t: f64, line: &str) {
    for tag in ["@@dom0: ", "@@test-start ", "@@bench-start "] {
        if let Some(at) = line.find(tag) {
            println!("  [{t:7.1} s] {}", &line[at + 2..]);
        }
    }
}

/// Splits the `@@console DOMAIN| text` lines into one file per guest domain.
fn write_console_logs(log_dir: &Path, lines: &[String]) -> Result<()> {
    let mut files: std::collections::BTreeMap<String, fs::File> = Default::default();
    for l in lines {
        let Some(at) = l.find("@@console ") else { continue };
        let Some((domain, text)) = l[at + 10..].split_once("| ") else { continue };
        if domain.is_empty() || !domain.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            continue;
        }
        if !files.contains_key(domain) {
            files.insert(domain.to_string(), fs::File::create(log_dir.join(format!("console-{domain}.log")))?);
        }
        writeln!(files.get_mut(domain).unwrap(), "{text}")?;
    }
    Ok(())
}

/// Boots the test bed with a dom0 shell on this terminal.
pub fn shell(overlay: &Overlay) -> Result<()> {
    let mut cmd = qemu_command(overlay, "console=hvc0 earlyprintk=xen suite=shell");
    cmd.args(["-serial", "mon:stdio"]);
    run(&mut cmd)
}
