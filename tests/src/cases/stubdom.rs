//! The image as libxl's stub domain for an HVM guest (device_model_stubdomain_override),
//! with what stock xl 4.17 sets up around it: consoles served by a dom0 QEMU, the
//! console-0 log file, the save file behind console 1, a pty behind console 3, and
//! libxl's QMP connection through vchan-socket-proxy.

use crate::cases::hvm::seabios_after_hvmloader;
use crate::cases::kernel::{IMAGE, SELFTEST_IMAGE};
use crate::cases::linux::patterned_disk;
use crate::cases::qmp::Client;
use crate::harness::{Ctx, Test, expect_contains};
use crate::hvm_guest::pty_reader;
use crate::{harness, proc, xl, xs};
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub fn tests() -> Vec<Test> {
    vec![
        Test { name: "xen::stubdom::consoles_carry_data_both_ways", limit: Duration::from_secs(240), run: consoles },
        Test {
            name: "xen::stubdom::libxl_starts_saves_and_restores_the_image",
            limit: Duration::from_secs(500),
            run: device_model,
        },
        Test {
            name: "xen::stubdom::qmp_client_that_stops_reading_is_dropped",
            limit: Duration::from_secs(300),
            run: qmp_client_that_stops_reading,
        },
    ]
}

/// An HVM guest config whose device model is `image` with `cmdline`, plus `extra` lines.
pub fn stubdom_config(name: &str, image: &str, cmdline: &str, extra: &str) -> String {
    format!(
        "name = \"{name}\"\ntype = \"hvm\"\nmemory = 32\nvcpus = 1\nvnc = 0\nsdl = 0\nnographic = 1\nvga = \"none\"\n\
         serial = \"pty\"\nboot = \"c\"\ndevice_model_version = \"qemu-xen\"\ndevice_model_stubdomain_override = 1\n\
         stubdomain_kernel = \"{image}\"\nstubdomain_ramdisk = \"/tmp/stub-ramdisk.img\"\nstubdomain_memory = 16\n\
         stubdomain_cmdline = \"{cmdline}\"\non_poweroff = \"destroy\"\non_reboot = \"destroy\"\non_crash = \"destroy\"\n{extra}"
    )
}

/// `xl create` of a stub-domain guest, running in the background (xl waits for the
/// device model, which these tests keep busy). Killed and cleaned up on drop.
pub struct Creation {
    child: std::process::Child,
    pub guest: String,
    log: String,
}

impl Creation {
    /// The self-test image as device model.
    pub fn start(ctx: &mut Ctx, guest: &str, cmdline: &str) -> Result<Self, String> {
        Self::start_with(ctx, guest, SELFTEST_IMAGE, cmdline, "")
    }

    pub fn start_with(ctx: &mut Ctx, guest: &str, image: &str, cmdline: &str, extra: &str) -> Result<Self, String> {
        // libxl 4.17 refuses an empty stub-domain ramdisk; ours ignores its content.
        std::fs::write("/tmp/stub-ramdisk.img", [0u8; 4096]).map_err(|e| e.to_string())?;
        let cfg = ctx.prepare_domain(guest, &stubdom_config(guest, image, cmdline, extra))?;
        let log = format!("/tmp/xl-create-{guest}.log");
        let out = std::fs::File::create(&log).map_err(|e| format!("{log}: {e}"))?;
        let child = Command::new("xl")
            .args(["create", &cfg])
            .stdin(Stdio::null())
            .stdout(out.try_clone().map_err(|e| e.to_string())?)
            .stderr(out)
            .spawn()
            .map_err(|e| format!("xl create: {e}"))?;
        Ok(Creation { child, guest: guest.to_string(), log })
    }

    /// Waits for `xl create` to finish; Err with its output unless it succeeded.
    pub fn created(&mut self, limit: Duration) -> Result<(), String> {
        let status = proc::poll(limit, Duration::from_millis(200), || self.child.try_wait().ok().flatten());
        let output = std::fs::read_to_string(&self.log).unwrap_or_default();
        match status {
            Some(status) if status.success() => Ok(()),
            Some(status) => Err(format!("xl create failed ({status}):\n{output}\nconsole 0:\n{}", self.console0())),
            None => Err(format!(
                "xl create still running after {} s:\n{output}\nconsole 0:\n{}",
                limit.as_secs(),
                self.console0()
            )),
        }
    }

    /// The (guest, stub domain) domids, once both exist.
    pub fn domids(&self) -> Result<(u32, u32), String> {
        let stub = format!("{}-dm", self.guest);
        proc::poll(Duration::from_secs(60), Duration::from_millis(200), || {
            Some((xl::domid(&self.guest).ok()?, xl::domid(&stub).ok()?))
        })
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

fn read_until(rx: &mpsc::Receiver<Vec<u8>>, seen: &mut String, needle: &str, limit: Duration) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    while !seen.contains(needle) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(chunk) => seen.push_str(&String::from_utf8_lossy(&chunk)),
            Err(_) => {
                return Err(format!("{needle:?} did not arrive on the pty within {} s; got {seen:?}", limit.as_secs()));
            }
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
    let tty = xs::wait_for(&format!("/local/domain/{stub}/device/console/3/tty"), Duration::from_secs(30), |v| {
        v.starts_with("/dev/pts/")
    })?;
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

    let log = proc::poll(Duration::from_secs(30), Duration::from_millis(200), || {
        Some(console0()).filter(|l| l.contains("consoles: ok"))
    })
    .ok_or_else(|| format!("no \"consoles: ok\" on console 0:\n{}", console0()))?;
    expect_contains(&log, "rust-stubdom 0.1.0: Xen PV stub domain", "console 0 (qemu-dm log)")?;
    println!(
        "@@metric xen::stubdom::consoles_carry_data_both_ways| console 1 -> {save}, console 3 <-> {tty}, console 0 -> qemu-dm-stubcons.log"
    );
    Ok(())
}

/// `xl -vvv ARGS` with a limit; Err with its output unless it succeeded.
fn xl_verbose(args: &[&str], limit: Duration) -> Result<(), String> {
    let out = proc::run(Command::new("xl").arg("-vvv").args(args), limit)?;
    if out.success {
        return Ok(());
    }
    let tail: Vec<&str> = out.stderr.lines().rev().take(40).collect();
    Err(format!("xl {} failed:\n{}", args.join(" "), tail.into_iter().rev().collect::<Vec<_>>().join("\n")))
}

/// The shipped image as stock xl 4.17's device model, from `xl create` to `xl save` and
/// `xl restore`:
/// - `xl create` returns only once libxl saw the image's QMP (through its own
///   vchan-socket-proxy) and `state = running`; the guest then runs (its hvmloader
///   starts; whether SeaBIOS's banner follows is reported);
/// - on libxl's QMP socket the argv's drives are there with their PV disks as media
///   and fdsets; the CD-ROM is ejected and its PV disk put back through its fdset
///   (xl 4.17 cannot attach a disk to a stub domain: the PV disk swap itself is
///   `xen::qmp::cd_insert_over_vchan_with_pv_disk_swap`);
/// - `xl save` runs libxl's QMP save sequence (the state file reaches the save image
///   through console 1), `xl restore` replays it into console 2 of a new stub domain,
///   which loads it and reports ready.
pub fn device_model(ctx: &mut Ctx) -> Result<(), String> {
    patterned_disk("/tmp/stub-hda.img", 16)?;
    patterned_disk("/tmp/stub-cd.iso", 4)?;
    let disks = "disk = [ \"format=raw, vdev=hda, access=rw, target=/tmp/stub-hda.img\", \
                 \"format=raw, vdev=hdc, access=ro, devtype=cdrom, target=/tmp/stub-cd.iso\" ]\n";
    let started = Instant::now();
    let mut creation = Creation::start_with(ctx, "dmguest", IMAGE, "loglevel=info", disks)?;
    creation.created(Duration::from_secs(120))?;
    let create_secs = started.elapsed().as_secs_f64();
    let (guest, stub) = creation.domids()?;
    let state = xs::read(&format!("/local/domain/{stub}/device-model/{guest}/state"));
    if state.as_deref() != Some("running") {
        return Err(format!("device-model state is {state:?}"));
    }
    // libxl unpaused the guest: its hvmloader runs. (SeaBIOS's banner follows in most
    // runs, but in one of several it never came after hvmloader's last line, with no
    // device model involved yet; it is reported, not required, until that is understood.)
    let tag = format!("(d{guest}) ");
    proc::poll(Duration::from_secs(120), Duration::from_secs(1), || {
        xl::dmesg().ok()?.lines().any(|l| l.contains(&tag) && l.contains("HVM Loader")).then_some(())
    })
    .ok_or_else(|| format!("guest {guest} never started hvmloader after xl create"))?;
    let seabios = proc::poll(Duration::from_secs(30), Duration::from_secs(1), || {
        seabios_after_hvmloader(&xl::dmesg().ok()?, guest).then_some(())
    })
    .is_some();

    let (mut qmp, _greeting) = Client::connect(&format!("/var/run/xen/qmp-libxl-{guest}"))?;
    qmp.execute("qmp_capabilities", Value::Null)?;
    let status = qmp.execute("query-status", Value::Null)?;
    if status["status"] != json!("running") {
        return Err(format!("query-status: {status}"));
    }
    let hda = qmp.drive("ide0-hd0")?;
    if hda["inserted"]["file"] != json!("/dev/xvda")
        || hda["inserted"]["ro"] != json!(false)
        || hda["inserted"]["image"]["virtual-size"] != json!(16 << 20)
    {
        return Err(format!("hda: {hda}"));
    }
    let cd = qmp.drive("ide-5632")?;
    if cd["inserted"]["file"] != json!("/dev/xvdc")
        || cd["inserted"]["ro"] != json!(true)
        || cd["removable"] != json!(true)
    {
        return Err(format!("hdc: {cd}"));
    }
    qmp.stub_fdset(768)?.ok_or("no stub-devid:768 fdset")?;
    let cd_fdset = qmp.stub_fdset(5632)?.ok_or("no stub-devid:5632 fdset")?;
    qmp.execute("eject", json!({ "id": "ide-5632" }))?;
    let ejected = qmp.drive("ide-5632")?;
    if ejected.get("inserted").is_some() || ejected["tray_open"] != json!(true) {
        return Err(format!("after eject: {ejected}"));
    }
    let filename = format!("/dev/fdset/{cd_fdset}");
    qmp.execute("blockdev-change-medium", json!({ "id": "ide-5632", "filename": filename, "format": "host_device" }))?;
    let back = qmp.drive("ide-5632")?;
    if back["inserted"]["file"] != json!(filename) || back["inserted"]["image"]["virtual-size"] != json!(4 << 20) {
        return Err(format!("after blockdev-change-medium: {back}"));
    }
    drop(qmp);
    let log = creation.console0();
    expect_contains(&log, &format!("stub domain of domain {guest}"), "console 0 (qemu-dm log)")?;
    expect_contains(&log, "PV disk 5632: 4194304 bytes, read-only as fdset", "console 0 (qemu-dm log)")?;

    // Save: dirty log, stop, xen-save-devices-state into fdset 1 (console 1).
    let image = "/tmp/dmguest.save";
    let _ = std::fs::remove_file(image);
    let saving = Instant::now();
    xl_verbose(&["save", "dmguest", image], Duration::from_secs(180))?;
    let save_secs = saving.elapsed().as_secs_f64();
    let saved = std::fs::read(image).map_err(|e| format!("{image}: {e}"))?;
    if !saved.windows(8).any(|w| w == b"RSTUBDM1") {
        return Err(format!("the save image ({} bytes) holds no device-model state file", saved.len()));
    }
    proc::poll(Duration::from_secs(60), Duration::from_millis(500), || {
        xl::find("dmguest-dm").ok().filter(Option::is_none)
    })
    .ok_or("the stub domain outlived the saved guest")?;

    // Restore: a new stub domain reads the state file from console 2.
    let restoring = Instant::now();
    xl_verbose(&["restore", image], Duration::from_secs(180))?;
    let restore_secs = restoring.elapsed().as_secs_f64();
    let guest = xl::domid("dmguest")?;
    let restored = creation.console0();
    // The machine's state (every device's section) that only dom0's console-2 backend carried.
    expect_contains(&restored, "bytes of device state from console 2 (", "console 0 after xl restore")?;
    let row = xl::find("dmguest")?.ok_or("no dmguest after xl restore")?;
    if row.state.contains('p') || row.is_shutdown() || row.is_crashed() {
        return Err(format!("restored guest is {row:?}"));
    }
    let (mut qmp, _greeting) = Client::connect(&format!("/var/run/xen/qmp-libxl-{guest}"))?;
    qmp.execute("qmp_capabilities", Value::Null)?;
    let status = qmp.execute("query-status", Value::Null)?;
    if status["status"] != json!("running") {
        return Err(format!("query-status after restore: {status}"));
    }
    qmp.drive("ide-5632")?;
    println!(
        "@@metric xen::stubdom::libxl_starts_saves_and_restores_the_image| xl create {create_secs:.1} s, \
         xl save {save_secs:.1} s ({} bytes), xl restore {restore_secs:.1} s, SeaBIOS banner seen: {seabios}",
        saved.len()
    );
    Ok(())
}

/// A QMP client on libxl's own socket that sends and never reads cannot take the
/// device model down: once the replies have filled the socket, vchan-socket-proxy's
/// buffer and our vchan ring, our write gives up after its limit and that client is
/// dropped (its later replies discarded); after 15 s it reads what did reach it and
/// leaves; the next client gets `running`, and the stub domain lives on.
fn qmp_client_that_stops_reading(ctx: &mut Ctx) -> Result<(), String> {
    let mut creation = Creation::start_with(ctx, "qmpflood", IMAGE, "loglevel=info", "")?;
    creation.created(Duration::from_secs(120))?;
    let (guest, stub) = creation.domids()?;
    let socket = format!("/var/run/xen/qmp-libxl-{guest}");
    let stream = proc::poll(Duration::from_secs(30), Duration::from_millis(100), || {
        std::os::unix::net::UnixStream::connect(&socket).ok()
    })
    .ok_or_else(|| format!("cannot connect to {socket}"))?;
    let mut writer = stream.try_clone().map_err(|e| e.to_string())?;
    writer.set_write_timeout(Some(Duration::from_secs(5))).map_err(|e| e.to_string())?;
    // Negotiate, then ask for much more than any buffer on the way holds, reading nothing.
    let mut sent = 0usize;
    writer.write_all(b"{\"execute\":\"qmp_capabilities\"}\r\n").map_err(|e| e.to_string())?;
    for _ in 0..4000 {
        // A write may block once the proxy stops reading us: that is the point.
        if writer.write_all(b"{\"execute\":\"query-commands\"}\r\n").is_err() {
            break;
        }
        sent += 1;
    }
    std::thread::sleep(Duration::from_secs(15));
    // Only now read what reached us, until the line is quiet, before closing: Xen's
    // vchan-socket-proxy exits (and libxl loses its QMP socket for good) when a client
    // closes with replies unread, since its read() then fails with ECONNRESET, whatever
    // the device model does. That is dom0's limit, not the one under test.
    let mut reader = stream.try_clone().map_err(|e| e.to_string())?;
    reader.set_read_timeout(Some(Duration::from_secs(2))).map_err(|e| e.to_string())?;
    let drain_deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut drained_bytes = 0usize;
    let mut chunk = [0u8; 65536];
    while std::time::Instant::now() < drain_deadline {
        match reader.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => drained_bytes += n,
        }
    }
    drop(reader);
    drop(writer);
    drop(stream);

    let (mut qmp, _greeting) = Client::connect(&socket)?;
    qmp.execute("qmp_capabilities", Value::Null)?;
    let status = qmp.execute("query-status", Value::Null)?;
    if status["status"] != json!("running") {
        return Err(format!("query-status after the flood: {status}"));
    }
    drop(qmp);
    let row = xl::find("qmpflood-dm")?.ok_or("the stub domain is gone")?;
    if row.domid != stub || row.is_shutdown() || row.is_crashed() {
        return Err(format!("the stub domain is {row:?}"));
    }
    let log = creation.console0();
    expect_contains(&log, "QMP: client dropped", "console 0 (qemu-dm log)")?;
    println!(
        "@@metric xen::stubdom::qmp_client_that_stops_reading_is_dropped| {sent} query-commands sent unread for 15 s \
         ({drained_bytes} bytes of replies reached the client); the next client got running; stub domain {stub} alive"
    );
    Ok(())
}
