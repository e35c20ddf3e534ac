//! A Debian 13 (trixie) root for the Xen 4.20 test bed, made with `mmdebstrap` from
//! the same archive the host's apt uses, without touching the host's apt configuration
//! (mmdebstrap keeps its own apt state inside the root it builds).
//!
//! The root is only a source of files: the 4.20 bed's dom0 initramfs takes Xen 4.20,
//! xl and libxl, xenstored, xenconsoled, the hotplug scripts, vchan-socket-proxy, dom0's
//! QEMU 10.0 and SeaBIOS from it (testbed.rs), as the 4.17 bed takes them from the host.
//! It is rebuilt only when the way it is made changes ([`KEY`]).

use crate::host::{APT_RETRIES, run_retrying};
use anyhow::{Context, Result, bail};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The suite and the packages (besides trixie's essential set) the root holds.
const SUITE: &str = "trixie";
pub const PACKAGES: &[&str] =
    &["xen-hypervisor-4.20-amd64", "xen-utils-4.20", "xenstore-utils", "qemu-system-xen", "seabios", "busybox-static"];
/// Bump when the way the root is made changes (a rebuild follows).
const KEY: u32 = 1;
/// The archive when the host's apt names none we can use.
const DEFAULT_ARCHIVE: &str = "http://deb.debian.org/debian";

/// The archive URI the host's apt uses for bookworm (trixie is served there too).
fn archive_uri() -> String {
    let out = Command::new("apt-get").args(["indextargets", "--format", "$(SITE) $(RELEASE)"]).output();
    let text = out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
    text.lines()
        .filter_map(|l| l.split_once(' '))
        .find(|(site, release)| *release == "bookworm" && site.starts_with("http"))
        .map(|(site, _)| site.to_string())
        .unwrap_or_else(|| DEFAULT_ARCHIVE.to_string())
}

/// What the root is made from; a change means a rebuild.
fn inputs(archive: &str) -> String {
    format!("key {KEY}\nsuite {SUITE}\narchive {archive}\nvariant essential\ninclude {}\n", PACKAGES.join(","))
}

/// Builds the root under `dir` unless an up-to-date one is there; returns its path.
pub fn ensure_root(dir: &Path) -> Result<PathBuf> {
    let root = dir.join("trixie-root");
    let key_file = dir.join("trixie-root.inputs");
    let archive = archive_uri();
    let wanted = inputs(&archive);
    if root.join("usr").is_dir() && fs::read_to_string(&key_file).ok().as_deref() == Some(&wanted) {
        return Ok(root);
    }
    fs::create_dir_all(dir)?;
    println!("xtask: building a Debian 13 root with mmdebstrap ({SUITE} from {archive}: {})", PACKAGES.join(" "));
    let started = Instant::now();
    let tmp = dir.join("trixie-root.tmp");
    remove_dir_if_present(&tmp)?;
    remove_dir_if_present(&root)?;
    let _ = fs::remove_file(&key_file);
    let tmp_str = tmp.to_str().context("non-UTF-8 path")?;
    // One download failure fails mmdebstrap as a whole (apt's own retries first).
    run_retrying(
        3,
        Duration::from_secs(30),
        || {
            let mut cmd = Command::new("mmdebstrap");
            cmd.args(["--quiet", "--variant=essential", "--mode=root"])
                .arg(format!("--aptopt=Acquire::Retries \"{APT_RETRIES}\""))
                .arg(format!("--include={}", PACKAGES.join(",")))
                .args([SUITE, tmp_str, &archive]);
            cmd
        },
        || remove_dir_if_present(&tmp),
    )?;
    fs::rename(&tmp, &root)?;
    fs::write(&key_file, wanted)?;
    println!("xtask: Debian 13 root in {:.1} s", started.elapsed().as_secs_f64());
    Ok(root)
}

fn remove_dir_if_present(dir: &Path) -> Result<()> {
    if dir.exists() {
        fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    Ok(())
}

/// `Package Version` of every package installed in `root`, one a line.
pub fn package_versions(root: &Path) -> Result<String> {
    let admindir = root.join("var/lib/dpkg");
    let out = Command::new("dpkg-query")
        .arg(format!("--admindir={}", admindir.display()))
        .args(["-W", "-f", "${Package} ${Version}\n"])
        .output()?;
    if !out.status.success() {
        bail!("dpkg-query in {}: {}", root.display(), String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8(out.stdout)?)
}
