//! The Linux stub domain peer: what Xen users run today as an HVM guest's stub domain
//! (upstream libxl's "Linux stub domain": a Linux PV kernel, busybox and QEMU), built
//! here from Debian 12 packages only, so that the benchmarks and
//! `xen::peer::linux_stubdom_boots_the_guest` compare our image with it on the same
//! test bed.
//!
//! The kernel is Debian's cloud flavour of the kernel dom0 runs (`apt-get download`,
//! `dpkg-deb -x` under target/testbed/peer/): it is Xen PV capable, its bzImage is
//! LZ4 (libxenguest unpacks it in dom0, before libxl's 30 s start-up clock runs), and
//! it has 12 MB less resident kernel than the generic one. The initramfs holds busybox,
//! Debian's `xen-qemu-system-i386` with its whole shared-library closure, the xenstore
//! CLI, `vchan-socket-proxy`, the Xen frontend modules QEMU needs (evtchn, gntdev,
//! gntalloc, privcmd, blkfront), the VGA BIOSes, and peer-init.sh as /init; it is an
//! lz4 (legacy format) cpio, the cheapest to unpack under TCG, which libxenguest passes
//! through untouched.
//!
//! Both files are cached in target/testbed/peer/ under a key of what they are made from,
//! and reach the 4.17 bed's dom0 as a third, uncompressed, cpio archive of its initramfs
//! ([`DOM0_KERNEL`], [`DOM0_RAMDISK`]), so a guest config names them with
//! `stubdomain_kernel` / `stubdomain_ramdisk`.

use crate::host::{apt_get, run};
use crate::testbed::{Sysroot, copy_into, copy_with_libs};
use anyhow::{Context, Result, bail};
use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where dom0 finds the peer's kernel (tests/src/cases/peer.rs names the same paths).
pub const DOM0_KERNEL: &str = "/usr/lib/xen/boot/peer-linux-stubdom-kernel";
/// Where dom0 finds the peer's initramfs.
pub const DOM0_RAMDISK: &str = "/usr/lib/xen/boot/peer-linux-stubdom-initramfs";

/// Bump when the way the peer is assembled changes.
const PEER_LAYOUT: u32 = 1;
/// The peer's /init.
const INIT: &str = include_str!("peer-init.sh");
/// Host packages the peer is made from (besides the downloaded kernel): the files are
/// copied from the installed system, so its Xen libraries are dom0's.
const PACKAGES: &[&str] =
    &["qemu-system-xen", "busybox-static", "xenstore-utils", "xen-utils-4.17", "libxenmisc4.17", "libc6", "seabios"];
/// Host tools only the peer needs.
const TOOLS: &[&str] = &["lz4"];
/// The frontend modules /init loads, in that order (none depends on another).
const MODULES: &[(&str, &str)] = &[
    ("xen-evtchn", "drivers/xen/xen-evtchn.ko"),
    ("xen-gntdev", "drivers/xen/xen-gntdev.ko"),
    ("xen-gntalloc", "drivers/xen/xen-gntalloc.ko"),
    ("xen-privcmd", "drivers/xen/xen-privcmd.ko"),
    ("xen-blkfront", "drivers/block/xen-blkfront.ko"),
];
/// xenstore's multi-call names /init uses.
const XENSTORE_NAMES: &[&str] = &["read", "write", "list", "ls", "watch", "exists", "rm"];

/// The peer's two boot files on this machine, and the dom0 archive that holds them.
pub struct Peer {
    pub kernel: PathBuf,
    pub ramdisk: PathBuf,
    /// An uncompressed newc cpio with both at [`DOM0_KERNEL`] and [`DOM0_RAMDISK`].
    pub dom0_archive: PathBuf,
}

fn dpkg_version(pkg: &str) -> Option<String> {
    let out = Command::new("dpkg-query").args(["-W", "-f", "${Version}", pkg]).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Installs the host tools the peer needs, if missing.
fn ensure_tools() -> Result<()> {
    let missing: Vec<&str> = TOOLS.iter().copied().filter(|p| dpkg_version(p).is_none()).collect();
    if missing.is_empty() {
        return Ok(());
    }
    println!("xtask: installing Debian packages for the Linux stub domain peer: {}", missing.join(" "));
    run(apt_get().args(["install", "-y", "--no-install-recommends"]).args(&missing))
}

/// The cloud flavour of the kernel release dom0 runs (6.1.0-57-amd64 gives
/// 6.1.0-57-cloud-amd64).
fn cloud_release(dom0_kver: &str) -> Result<String> {
    let abi = dom0_kver.strip_suffix("-amd64").with_context(|| format!("kernel {dom0_kver} is not -amd64"))?;
    Ok(format!("{abi}-cloud-amd64"))
}

/// Downloads `linux-image-<release>` into `dir` (once) and unpacks it; returns the
/// unpacked tree and the .deb's file name.
fn cloud_kernel(dir: &Path, release: &str) -> Result<(PathBuf, String)> {
    let pkg = format!("linux-image-{release}");
    let find_deb = || -> Result<Option<String>> {
        Ok(fs::read_dir(dir)?
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .find(|n| n.starts_with(&format!("{pkg}_")) && n.ends_with(".deb")))
    };
    let deb = match find_deb()? {
        Some(deb) => deb,
        None => {
            println!("xtask: downloading {pkg} for the Linux stub domain peer");
            run(apt_get().args(["download", "-q", &pkg]).current_dir(dir))?;
            find_deb()?.with_context(|| format!("apt-get download {pkg} left no .deb in {}", dir.display()))?
        }
    };
    let tree = dir.join("kernel-tree");
    if !tree.join(format!("boot/vmlinuz-{release}")).exists() {
        if tree.exists() {
            fs::remove_dir_all(&tree)?;
        }
        run(Command::new("dpkg-deb").arg("-x").arg(dir.join(&deb)).arg(&tree))?;
    }
    Ok((tree, deb))
}

/// Whether the peer gets the host's strace, to log QEMU's failed system calls
/// (`XTASK_PEER_STRACE=1`, for diagnosis: it is not part of the peer as measured).
fn with_strace() -> bool {
    std::env::var("XTASK_PEER_STRACE").is_ok_and(|v| v == "1")
}

/// What the peer is made from; a change means a rebuild.
fn inputs(deb: &str) -> String {
    let mut s = format!("layout {PEER_LAYOUT}\nkernel {deb}\n");
    for p in PACKAGES.iter().chain(TOOLS) {
        s.push_str(&format!("{p} {}\n", dpkg_version(p).unwrap_or_default()));
    }
    s.push_str(&format!("strace {}\n", with_strace()));
    s.push_str(&format!("init {}\n{INIT}", INIT.len()));
    s
}

/// Builds the peer unless an up-to-date one is cached; `dom0_kver` is the kernel
/// release dom0 runs (the peer runs its cloud flavour).
pub fn build(bed_dir: &Path, dom0_kver: &str) -> Result<Peer> {
    let dir = bed_dir.join("peer");
    fs::create_dir_all(&dir)?;
    let dir = dir.canonicalize()?;
    ensure_tools()?;
    let release = cloud_release(dom0_kver)?;
    let (tree, deb) = cloud_kernel(&dir, &release)?;
    let peer = Peer {
        kernel: dir.join("kernel"),
        ramdisk: dir.join("initramfs.lz4"),
        dom0_archive: dir.join("dom0-archive.cpio"),
    };
    let key_file = dir.join("inputs.txt");
    let key = inputs(&deb);
    if peer.dom0_archive.exists() && fs::read_to_string(&key_file).ok().as_deref() == Some(&key) {
        return Ok(peer);
    }
    println!("xtask: building the Linux stub domain peer from Debian packages (kernel {release})");
    fs::copy(tree.join(format!("boot/vmlinuz-{release}")), &peer.kernel)?;
    let root = dir.join("root");
    stage_root(&root, &tree.join("lib/modules").join(&release).join("kernel"))?;
    pack_lz4(&root, &peer.ramdisk)?;
    fs::remove_dir_all(&root)?;

    // dom0's copy: the files at the paths guest configs name.
    let dom0_root = dir.join("dom0-root");
    if dom0_root.exists() {
        fs::remove_dir_all(&dom0_root)?;
    }
    for (from, to) in [(&peer.kernel, DOM0_KERNEL), (&peer.ramdisk, DOM0_RAMDISK)] {
        let dest = dom0_root.join(to.trim_start_matches('/'));
        fs::create_dir_all(dest.parent().context("no parent")?)?;
        fs::copy(from, &dest)?;
    }
    pack_plain(&dom0_root, &peer.dom0_archive)?;
    fs::remove_dir_all(&dom0_root)?;
    fs::write(&key_file, key)?;
    println!(
        "xtask: Linux stub domain peer: kernel {} bytes, initramfs {} bytes (lz4)",
        fs::metadata(&peer.kernel)?.len(),
        fs::metadata(&peer.ramdisk)?.len()
    );
    Ok(peer)
}

/// The stub domain's root file system: busybox, QEMU and its libraries, the xenstore
/// CLI, vchan-socket-proxy, the modules from `modules_dir`, the VGA BIOSes, /init.
fn stage_root(root: &Path, modules_dir: &Path) -> Result<()> {
    if root.exists() {
        fs::remove_dir_all(root)?;
    }
    for d in ["bin", "sbin", "usr/bin", "usr/sbin", "proc", "sys", "dev", "tmp", "lib/modules"] {
        fs::create_dir_all(root.join(d))?;
    }
    let host = Sysroot::host();
    fs::copy("/bin/busybox", root.join("bin/busybox"))?;
    let applets = Command::new("/bin/busybox").arg("--list").output()?;
    for a in String::from_utf8_lossy(&applets.stdout).lines() {
        if a != "busybox" {
            symlink("busybox", root.join("bin").join(a))?;
        }
    }
    // The kernel opens /dev/console for /init before devtmpfs is mounted.
    run(Command::new("mknod").args(["-m", "600"]).arg(root.join("dev/console")).args(["c", "5", "1"]))?;
    copy_with_libs(root, &host, "/usr/libexec/xen-qemu-system-i386")?;
    copy_with_libs(root, &host, "/usr/lib/xen-4.17/bin/vchan-socket-proxy")?;
    copy_with_libs(root, &host, "/usr/bin/xenstore")?;
    if with_strace() {
        copy_with_libs(root, &host, "/usr/bin/strace")?;
    }
    for name in XENSTORE_NAMES {
        symlink("xenstore", root.join("usr/bin").join(format!("xenstore-{name}")))?;
    }
    // Debian's QEMU looks for ROMs in <bindir>/../share/seabios too.
    for rom in ["vgabios-cirrus.bin", "vgabios-stdvga.bin"] {
        copy_into(root, &host, &format!("/usr/share/seabios/{rom}"))?;
    }
    for (name, path) in MODULES {
        fs::copy(modules_dir.join(path), root.join("lib/modules").join(format!("{name}.ko")))
            .with_context(|| format!("module {path}"))?;
    }
    let init = root.join("init");
    fs::write(&init, INIT)?;
    run(Command::new("chmod").arg("755").arg(&init))?;
    Ok(())
}

/// Packs `dir` as a newc cpio compressed with lz4's legacy format (the one Linux's
/// initramfs unpacker reads), level 9 (same unpacking speed, smaller file).
fn pack_lz4(dir: &Path, out: &Path) -> Result<()> {
    pack_with(dir, out, "| lz4 -l -9 -q -c")
}

/// Packs `dir` as an uncompressed newc cpio (its files are compressed already).
fn pack_plain(dir: &Path, out: &Path) -> Result<()> {
    pack_with(dir, out, "")
}

fn pack_with(dir: &Path, out: &Path, filter: &str) -> Result<()> {
    let out_file = fs::File::create(out)?;
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!("find . | LC_ALL=C sort | cpio -o -H newc --quiet -R 0:0 {filter}"))
        .current_dir(dir)
        .stdout(out_file)
        .status()?;
    if !status.success() {
        bail!("packing {} failed", dir.display());
    }
    Ok(())
}

/// Appends the peer's dom0 archive to a dom0 initramfs image: zeros up to a 512-byte
/// boundary first (Linux skips zeros between archives and wants an uncompressed one
/// 4-byte aligned).
pub fn append_to_initramfs(image: &mut Vec<u8>, peer: &Peer) -> Result<()> {
    image.resize(image.len().next_multiple_of(512), 0);
    image.extend(fs::read(&peer.dom0_archive).with_context(|| peer.dom0_archive.display().to_string())?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_peer_runs_the_cloud_flavour_of_dom0s_kernel() {
        assert_eq!(cloud_release("6.1.0-57-amd64").unwrap(), "6.1.0-57-cloud-amd64");
        assert!(cloud_release("6.1.0-57-rt-arm64").is_err());
    }

    #[test]
    fn the_cache_key_changes_with_the_kernel() {
        assert_ne!(inputs("linux-image-a.deb"), inputs("linux-image-b.deb"));
        assert!(inputs("x").contains(INIT));
    }
}
