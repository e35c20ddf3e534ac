//! The image as libxl's stub domain for an HVM guest (device_model_stubdomain_override),
//! with what stock xl 4.17 sets up around it: consoles served by a dom0 QEMU, the
//! console-0 log file, the save file behind console 1, a pty behind console 3.

use crate::cases::kernel::SELFTEST_IMAGE;
use crate::harness::{Ctx, Test, expect_contains};
use crate::{harness, proc, xl, xs};
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub fn tests() -> Vec<Test> {
    vec![Test { name: "xen::stubdom::consoles_carry_data_both_ways", limit: Duration::from_secs(240), run: consoles }]
}

/// An HVM guest config whose device model is the self-test image with `cmdline`.
pub fn stubdom_config(name: &str, cmdline: &str) -> String {
    format!(
        "name = \"{name}\"\ntype = \"hvm\"\nmemory = 32\nvcpus = 1\nvnc = 0\nsdl = 0\nnographic = 1\nvga = \"none\"\n\
         serial = \"pty\"\nboot = \"c\"\ndevice_model_version = \"qemu-xen\"\ndevice_model_stubdomain_override = 1\n\
         stubdomain_kernel = \"{SELFTEST_IMAGE}\"\nstubdomain_ramdisk = \"/tmp/stub-ramdisk.img\"\nstubdomain_memory = 16\n\
         stubdomain_cmdline = \"{cmdline}\"\non_poweroff = \"destroy\"\non_reboot = \"destroy\"\non_crash = \"destroy\"\n"
    )
}

/// `xl create` of a stub-domain guest, running in the background (xl waits for the
/// device model, which these tests keep busy). Killed and cleaned up on drop.
pub struct Creation {
    child: std::process::Child,
    pub guest: String,
}

impl Creation {
    pub fn start(ctx: &mut Ctx, guest: &str, cmdline: &str) -> Result<Self, String> {
        // libxl 4.17 refuses an empty stub-domain ramdisk; ours ignores its content.
        std::fs::write("/tmp/stub-ramdisk.img", [0u8; 4096]).map_err(|e| e.to_string())?;
        let cfg = ctx.prepare_domain(guest, &stubdom_config(guest, cmdline))?;
        let child = Command::new("xl")
            .args(["create", &cfg])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("xl create: {e}"))?;
        Ok(Creation { child, guest: guest.to_string() })
    }

    /// The (guest, stub domain) domids, once both exist.
    pub fn domids(&self) -> Result<(u32, u32), String> {
        let stub = format!("{}-dm", self.guest);
        proc::poll(Duration::from_secs(60), Duration::from_millis(200), || Some((xl::domid(&self.guest).ok()?, xl::domid(&stub).ok()?)))
            .ok_or_else(|| format!("{} and {stub} did not both appear within 60 s", self.guest))
    }

    /// The stub domain's console 0, which libxl sends to qemu-dm-<guest>.log.
    pub fn console0(&self) -> String {
        std::fs::read_to_string(format!("/var/log/xen/qemu-dm-{}.log", self.guest)).unwrap_or_default()
    }
}

impl Drop for Creation {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        xl::destroy(&format!("{}-dm", self.guest));
        xl::destroy(&self.guest);
    }
}

/// Reads a pty in a thread; lines arrive through a channel.
fn pty_reader(path: &str) -> Result<(std::fs::File, mpsc::Receiver<Vec<u8>>), String> {
    let out = proc::run(Command::new("stty").args(["-F", path, "raw", "-echo"]), Duration::from_secs(10))?;
    if !out.success {
        return Err(format!("stty {path}: {}", out.stderr));
    }
    let file = std::fs::OpenOptions::new().read(true).write(true).open(path).map_err(|e| format!("{path}: {e}"))?;
    let mut reader = file.try_clone().map_err(|e| e.to_string())?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    Ok((file, rx))
}

fn read_until(rx: &mpsc::Receiver<Vec<u8>>, seen: &mut String, needle: &str, limit: Duration) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    while !seen.contains(needle) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(chunk) => seen.push_str(&String::from_utf8_lossy(&chunk)),
            Err(_) => return Err(format!("{needle:?} did not arrive on the pty within {} s; got {seen:?}", limit.as_secs())),
        }
    }
    Ok(())
}

fn consoles(ctx: &mut Ctx) -> Result<(), String> {
    let creation = Creation::start(ctx, "stubcons", "selftest=consoles")?;
    let (guest, stub) = creation.domids()?;
    let console0 = || creation.console0();

    // Console 1: libxl points it at the save file.
    let save = format!("/var/lib/xen/qemu-save.{guest}");
    proc::poll(Duration::from_secs(60), Duration::from_millis(200), || {
        std::fs::read_to_string(&save).ok().filter(|t| t.contains("console 1 (save channel) works"))
    })
    .ok_or_else(|| format!("{save} never got the image's line; console 0:\n{}", console0()))?;

    // Console 3: the guest's serial port, a pty in dom0.
    let tty = xs::wait_for(&format!("/local/domain/{stub}/device/console/3/tty"), Duration::from_secs(30), |v| v.starts_with("/dev/pts/"))?;
    let (mut pty, rx) = pty_reader(&tty)?;
    // QEMU drops pty output while nobody has the pty open, so the image's own
    // greeting may be gone: dom0 speaks first, and repeats until answered.
    let mut seen = String::new();
    let nonce = harness::nonce();
    let mut answered = Err(String::new());
    for _ in 0..15 {
        pty.write_all(format!("ping {nonce}\n").as_bytes()).map_err(|e| e.to_string())?;
        answered = read_until(&rx, &mut seen, &format!("echo: ping {nonce}"), Duration::from_secs(2));
        if answered.is_ok() {
            break;
        }
    }
    answered.map_err(|e| format!("{e}; console 0:\n{}", console0()))?;
    pty.write_all(b"quit\n").map_err(|e| e.to_string())?;

    let log = proc::poll(Duration::from_secs(30), Duration::from_millis(200), || Some(console0()).filter(|l| l.contains("consoles: ok")))
        .ok_or_else(|| format!("no \"consoles: ok\" on console 0:\n{}", console0()))?;
    expect_contains(&log, "rust-stubdom 0.1.0: Xen PV stub domain", "console 0 (qemu-dm log)")?;
    println!("@@metric xen::stubdom::consoles_carry_data_both_ways| console 1 -> {save}, console 3 <-> {tty}, console 0 -> qemu-dm-stubcons.log");
    Ok(())
}
