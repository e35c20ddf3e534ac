//! The Linux stub domain peer (xtask/src/peer.rs: Debian's kernel, busybox and QEMU in
//! a PV domain, as upstream libxl runs a "Linux stub domain") serving the same Linux
//! test guest as our image, under stock `xl create`: proof that the benchmarks compare
//! against a working peer, and where its start-up time goes.

use crate::cases::bench::Figure;
use crate::cases::hvm::{
    BootTimes, PATTERN_LEN_BYTES, PATTERN_SECTOR, check_guest_drives, wait_boot, with_device_model_log,
};
use crate::cases::kernel::IMAGE;
use crate::cases::linux::patterned_disk;
use crate::cases::qmp::Client;
use crate::harness::{self, Ctx, Test, expect_contains};
use crate::hvm_guest::{Action, DeviceModel, HvmGuest, HvmGuestConfig, disk_pattern, file_holds, nonce_cd};
use crate::{proc, xl, xs};
use serde_json::Value;
use std::time::{Duration, Instant};

/// The peer's kernel in dom0 (xtask's peer::DOM0_KERNEL).
pub const PEER_KERNEL: &str = "/usr/lib/xen/boot/peer-linux-stubdom-kernel";
/// The peer's initramfs in dom0 (xtask's peer::DOM0_RAMDISK).
pub const PEER_RAMDISK: &str = "/usr/lib/xen/boot/peer-linux-stubdom-initramfs";
/// libxl's default memory for a Linux stub domain (LIBXL_LINUX_STUBDOM_MEM).
pub const PEER_MEMORY_MIB: u32 = 128;
/// hvc0 is the console libxl logs; `quiet` keeps the kernel's lines off it (each is
/// slow under emulation and counts against libxl's 30 s); the root file system is a
/// ramfs, as a tmpfs (the default without `root=`) is limited to half the memory the
/// kernel manages, and with 128 MiB that is less than the 37 MB the initramfs unpacks
/// to ("Initramfs unpacking failed: write error", QEMU's binary cut short: SIGBUS).
const PEER_CMDLINE: &str = "console=hvc0 quiet rootfstype=ramfs";

pub fn tests() -> Vec<Test> {
    vec![Test {
        name: "xen::peer::linux_stubdom_boots_the_guest",
        limit: Duration::from_secs(900),
        run: linux_stubdom_boots_the_guest,
    }]
}

/// The peer as device model, in a stub domain of `memory_mib`.
pub fn peer_stub_domain(memory_mib: u32) -> DeviceModel {
    DeviceModel::StubDomain {
        kernel: PEER_KERNEL.to_string(),
        ramdisk: Some(PEER_RAMDISK.to_string()),
        memory_mib,
        cmdline: PEER_CMDLINE.to_string(),
    }
}

/// The peer's /init steps from its console log: `@@peer <uptime s> <step>` lines, as
/// (seconds since the stub domain's kernel started, step).
pub fn init_steps(console_log: &str) -> Vec<(f64, String)> {
    console_log
        .lines()
        .filter_map(|l| {
            let rest = &l[l.find("@@peer ")? + 7..];
            let (uptime, step) = rest.split_once(' ')?;
            Some((uptime.parse().ok()?, step.trim().to_string()))
        })
        .collect()
}

/// When the peer's /init says `step` (a prefix) ended, in seconds since its kernel started.
pub fn step_at(steps: &[(f64, String)], step: &str) -> Option<f64> {
    steps.iter().find(|(_, s)| s.starts_with(step)).map(|(t, _)| *t)
}

/// The stub domain's console 0 (libxl sends it to qemu-dm-<guest>.log).
pub fn console_log(guest: &str) -> String {
    std::fs::read_to_string(format!("/var/log/xen/qemu-dm-{guest}.log")).unwrap_or_default()
}

/// Times of one guest start with a stub domain (ours or the peer), from `xl create`.
pub struct StubStart {
    /// The stub domain's `device-model/<guest>/state` read `running` (dom0 polls it).
    pub running: Duration,
    /// `xl create` returned: QMP `cont` went through and the guest was unpaused.
    pub created: Duration,
}

/// Waits for the stub domain's `state = running` and for `xl create` to return.
pub fn wait_stub_start(guest: &mut HvmGuest, origin: Instant) -> Result<StubStart, String> {
    let stub = guest.stub_domid.ok_or("no stub domain")?;
    let state = format!("/local/domain/{stub}/device-model/{}/state", guest.domid);
    // libxl gives up after 30 s of the stub domain running; this also covers the build
    // before. A watch, not a poll: dom0's CPU is the stub domain's under TCG. A failed
    // `xl create` (libxl gave up and destroyed the stub domain) ends the wait.
    let running =
        xs::wait_for_while(&state, Duration::from_secs(120), |v| v == "running", || guest.check_create_not_failed())
            .map(|_| origin.elapsed());
    guest.wait_created(Duration::from_secs(120))?;
    let created = origin.elapsed();
    let running = running.map_err(|e| format!("the stub domain never said running: {e}"))?;
    Ok(StubStart { running, created })
}

/// What one measured guest start with a stub domain gave.
pub struct Measured {
    pub start: StubStart,
    pub boot: BootTimes,
    /// QMP `query-status` round trips through libxl's socket, seconds each (empty if
    /// none were asked for or the connection failed: see `qmp_error`).
    pub qmp_round_trips: Vec<f64>,
    pub qmp_error: Option<String>,
}

/// For `cargo xtask bench`: the test guest (its CD only) with `device_model`, a stub
/// domain: start-up (`state = running`, `xl create` done), boot (first serial byte,
/// /init), then `qmp_round_trips` QMP `query-status` through libxl's socket
/// (/var/run/xen/qmp-libxl-<guest>, dom0's vchan-socket-proxy); then destroyed.
pub fn measure(
    ctx: &mut Ctx,
    name: &str,
    device_model: DeviceModel,
    qmp_round_trips: usize,
) -> Result<Measured, String> {
    let cd = nonce_cd(&format!("/tmp/{name}-cd.iso"))?;
    let mut config = HvmGuestConfig::new(name, device_model);
    config.cdrom = Some(cd.path.clone());
    let origin = Instant::now();
    let mut guest = HvmGuest::create(ctx, &config, Duration::from_secs(120))?;
    let measured = (|| {
        let start = wait_stub_start(&mut guest, origin)?;
        let boot = wait_boot(&mut guest.shell, Duration::from_secs(900))?;
        let (qmp_round_trips, qmp_error) = match qmp_query_status(guest.domid, qmp_round_trips) {
            Ok(times) => (times, None),
            Err(e) => (Vec::new(), Some(e)),
        };
        Ok(Measured { start, boot, qmp_round_trips, qmp_error })
    })()
    .map_err(|e| with_device_model_log(name, e));
    guest.destroy()?;
    measured
}

/// `count` QMP `query-status` round trips on libxl's socket for guest `domid`, in
/// seconds (after the greeting and `qmp_capabilities`).
fn qmp_query_status(domid: u32, count: usize) -> Result<Vec<f64>, String> {
    if count == 0 {
        return Ok(Vec::new());
    }
    let (mut qmp, _greeting) = Client::connect(&format!("/var/run/xen/qmp-libxl-{domid}"))?;
    qmp.execute("qmp_capabilities", Value::Null)?;
    let mut times = Vec::with_capacity(count);
    for _ in 0..count {
        let sent = Instant::now();
        let status = qmp.execute("query-status", Value::Null)?;
        times.push(sent.elapsed().as_secs_f64());
        if status["status"] != "running" {
            return Err(format!("query-status: {status}"));
        }
    }
    Ok(times)
}

/// The value below which `fraction` of `values` lie (nearest rank); 0 if empty.
pub fn percentile(values: &[f64], fraction: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((fraction * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len().max(1));
    sorted.get(rank - 1).copied().unwrap_or(0.0)
}

/// For `cargo xtask bench`: what each stub domain costs on disk as libxl loads it: our
/// stripped image (its ramdisk is a 4 KiB placeholder libxl insists on) against the
/// peer's kernel plus initramfs.
pub fn bench_size(_ctx: &mut Ctx) -> Result<Vec<Figure>, String> {
    let len = |path: &str| std::fs::metadata(path).map(|m| m.len()).map_err(|e| format!("{path}: {e}"));
    let ours = len(IMAGE)?;
    let (kernel, ramdisk) = (len(PEER_KERNEL)?, len(PEER_RAMDISK)?);
    println!(
        "@@bench-detail stubdom-size| ours {ours} bytes; the peer's kernel {kernel} bytes + initramfs {ramdisk} bytes"
    );
    let kib = |bytes: u64| bytes as f64 / 1024.0;
    Ok(vec![
        ("stubdom-size/image".to_string(), kib(ours), "KiB"),
        ("stubdom-size/linux-stubdom".to_string(), kib(kernel + ramdisk), "KiB"),
    ])
}

/// For `cargo xtask bench`: the smallest `stubdomain_memory` (of 128, 96, 64, 48, 32
/// MiB) with which the peer starts and the test guest reaches its /init.
pub fn bench_memory(ctx: &mut Ctx) -> Result<Vec<Figure>, String> {
    let mut smallest = None;
    for memory_mib in [128, 96, 64, 48, 32] {
        let name = format!("bench-peer-mem-{memory_mib}");
        match measure(ctx, &name, peer_stub_domain(memory_mib), 0) {
            Ok(_) => {
                println!("@@bench-detail peer-memory| {memory_mib} MiB: the guest reaches /init");
                smallest = Some(memory_mib);
            }
            Err(e) => {
                let first = e.lines().next().unwrap_or_default().to_string();
                println!("@@bench-detail peer-memory| {memory_mib} MiB: fails ({first})");
                // Why (libxl's words, the peer's /init steps, the device model's log tail).
                for line in e.lines().skip(1).take(60) {
                    println!("@@bench-detail peer-memory| {memory_mib} MiB: {line}");
                }
                break;
            }
        }
    }
    let smallest = smallest.ok_or("the peer fails even with 128 MiB")?;
    Ok(vec![("stubdom-memory-smallest/linux-stubdom".to_string(), f64::from(smallest), "MiB")])
}

/// The I/O port the port-I/O benchmark reads: the primary IDE channel's alternate
/// status, which every device model here emulates and whose read changes nothing.
const PORTIO_PORT: u16 = 0x3f6;
/// Port reads a port-I/O round of the guest's `portio` program times.
const PORTIO_READS: u32 = 100_000;
/// How long the idle guest is watched for its device model's CPU time.
const IDLE_SECONDS: u64 = 60;

/// What [`portio_and_idle`] measured with one device model.
pub struct PortioIdle {
    /// One read of [`PORTIO_PORT`] as the guest timed it (CLOCK_MONOTONIC around `inb`).
    pub median_ns: u64,
    pub p99_ns: u64,
    /// The device model's CPU seconds over [`IDLE_SECONDS`] of the idle guest.
    pub idle_cpu_s: f64,
}

/// The guest's `portio` line: "portio: N reads of 0xP: median A ns, p99 B ns, total
/// C ms, last value 0xV" -> (A, B).
pub fn parse_portio(text: &str) -> Option<(u64, u64)> {
    let line = text.lines().find(|l| l.starts_with("portio: "))?;
    let after = |key: &str| -> Option<u64> { line.split(key).nth(1)?.split_whitespace().next()?.parse().ok() };
    Some((after("median ")?, after("p99 ")?))
}

/// CPU seconds domain `name` has used, from `xl list` (Time(s), 0.1 s resolution).
fn domain_cpu_seconds(name: &str) -> Result<f64, String> {
    let out = proc::run(std::process::Command::new("xl").args(["list", name]), Duration::from_secs(30))?;
    out.stdout
        .lines()
        .filter_map(|l| {
            let fields: Vec<&str> = l.split_whitespace().collect();
            // Name ID Mem VCPUs State Time(s)
            (fields.first() == Some(&name)).then(|| fields.get(5)?.parse().ok())?
        })
        .next()
        .ok_or_else(|| format!("xl list {name}: no Time(s) in {:?}", out.stdout))
}

/// Clock ticks per second of /proc/<pid>/stat's times: USER_HZ, which the x86 Linux ABI
/// fixes at 100 (dom0 has no `getconf`).
const USER_HZ: f64 = 100.0;

/// CPU seconds (user + system) process `pid` has used, from /proc/<pid>/stat.
fn process_cpu_seconds(pid: &str) -> Result<f64, String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).map_err(|e| format!("/proc/{pid}/stat: {e}"))?;
    // Fields after the command's closing parenthesis: state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    let (utime, stime) = ticks(11).zip(ticks(12)).ok_or_else(|| format!("/proc/{pid}/stat: {stat}"))?;
    Ok((utime + stime) as f64 / USER_HZ)
}

/// The device model's CPU seconds so far: the stub domain's, or dom0 qemu-xen's process.
fn device_model_cpu_seconds(guest: &HvmGuest) -> Result<f64, String> {
    if guest.stub_domid.is_some() {
        return domain_cpu_seconds(&format!("{}-dm", guest.name));
    }
    let pid_key = format!("/local/domain/{}/image/device-model-pid", guest.domid);
    let pid = xs::read(&pid_key).ok_or_else(|| format!("no {pid_key}"))?;
    process_cpu_seconds(pid.trim())
}

/// The test guest (its CD only) with `device_model`: once it is at its /init, the
/// device model's CPU time over [`IDLE_SECONDS`] of the guest idling (its /init blocked
/// reading its serial port), then the guest's `portio`
/// program timing [`PORTIO_READS`] reads of [`PORTIO_PORT`].
pub fn portio_and_idle(ctx: &mut Ctx, name: &str, device_model: DeviceModel) -> Result<PortioIdle, String> {
    let cd = nonce_cd(&format!("/tmp/{name}-cd.iso"))?;
    let mut config = HvmGuestConfig::new(name, device_model);
    config.cdrom = Some(cd.path.clone());
    let mut guest = HvmGuest::create(ctx, &config, Duration::from_secs(120))?;
    let measured = (|| {
        guest.wait_created(Duration::from_secs(120))?;
        wait_boot(&mut guest.shell, Duration::from_secs(900))?;
        guest.shell.run_ok("waitdev /dev/sr0 30", Duration::from_secs(60))?;
        let before = device_model_cpu_seconds(&guest)?;
        std::thread::sleep(Duration::from_secs(IDLE_SECONDS));
        let idle_cpu_s = device_model_cpu_seconds(&guest)? - before;
        let out = guest.shell.run_ok(&format!("portio {PORTIO_PORT:#x} {PORTIO_READS}"), Duration::from_secs(900))?;
        let (median_ns, p99_ns) = parse_portio(&out).ok_or_else(|| format!("no portio line: {out}"))?;
        println!(
            "@@bench-detail guest-portio-idle| {name}: {} ; device model CPU {idle_cpu_s:.2} s over {IDLE_SECONDS} s idle",
            out.trim()
        );
        Ok(PortioIdle { median_ns, p99_ns, idle_cpu_s })
    })()
    .map_err(|e| with_device_model_log(name, e));
    guest.destroy()?;
    measured
}

/// For `cargo xtask bench`: [`portio_and_idle`] with our stub domain, the Linux stub
/// domain peer and dom0 qemu-xen, one boot each. A peer that fails loses its rows
/// (the reason is printed), not the others.
pub fn bench_portio_idle(ctx: &mut Ctx) -> Result<Vec<Figure>, String> {
    use crate::cases::hvm::{STUBDOM_MEMORY_MIB, our_stub_domain};
    let mut figures = Vec::new();
    for (who, device_model) in [
        ("image", our_stub_domain(STUBDOM_MEMORY_MIB)),
        ("linux-stubdom", peer_stub_domain(PEER_MEMORY_MIB)),
        ("qemu-dom0", DeviceModel::Dom0Qemu),
    ] {
        match portio_and_idle(ctx, &format!("bench-portio-{who}"), device_model) {
            Ok(m) => {
                figures.push((format!("portio-read-median/{who}"), m.median_ns as f64 / 1e3, "us"));
                figures.push((format!("portio-read-p99/{who}"), m.p99_ns as f64 / 1e3, "us"));
                figures.push((format!("idle-cpu-60s/{who}"), m.idle_cpu_s, "s"));
            }
            Err(e) if who != "image" => println!("@@bench-detail guest-portio-idle| {who} failed: {e}"),
            Err(e) => return Err(e),
        }
    }
    Ok(figures)
}

const NAME: &str = "peer-linux";
const CD: &str = "/tmp/peer-linux-cd.iso";
const HDA: &str = "/tmp/peer-linux-hda.img";

/// The Linux test guest boots from its CD with the peer as device model (libxl's
/// default 128 MiB), as xen::hvm::linux_boots_from_cd_through_stub_domain does with
/// ours: the peer's QEMU starts within libxl's 30 s and answers its QMP `cont`, dom0
/// reads the guest's serial through the stub domain's console 3 (ISOLINUX, the kernel,
/// /init), the guest finds QEMU's disk and CD-ROM, reads the per-run nonce file from
/// the CD and a sector from hda, writes a nonce pattern to hda and powers off; xl
/// removes both domains and dom0 finds the pattern in the disk file. The peer's /init
/// steps (seconds since its kernel started) are reported.
///
/// libxl's 30 s is a constant made for hardware: under TCG the peer's start takes 11
/// to 12 s on a quiet bed, but CI saw the whole stub domain run 2 to 8 times slower
/// (kernel to /init 12.4 s, QEMU's exec to its QMP socket 10.3 s instead of 1.3 s) and
/// miss it. A start that times out is tried once more, with dom0's load, the domains'
/// CPU times and the first try's /init steps printed as a note; any other failure, or
/// a second time-out, fails the test.
fn linux_stubdom_boots_the_guest(ctx: &mut Ctx) -> Result<(), String> {
    let cd = nonce_cd(CD)?;
    patterned_disk(HDA, 16)?;
    let mut config = HvmGuestConfig::new(NAME, peer_stub_domain(PEER_MEMORY_MIB));
    config.hda = Some(HDA.to_string());
    config.cdrom = Some(cd.path.clone());
    config.on_poweroff = Action::Destroy;
    let mut first_try = true;
    loop {
        let origin = Instant::now();
        let mut guest = HvmGuest::create(ctx, &config, Duration::from_secs(120))?;
        let result = boot_and_power_off(&mut guest, origin, &cd.sha256_hex);
        let log = console_log(NAME);
        for line in guest.shell.transcript().render().lines() {
            println!("@@console {NAME}-serial| {line}");
        }
        for line in log.lines() {
            println!("@@console {NAME}-dm| {line}");
        }
        let steps = init_steps(&log);
        let report: Vec<String> = steps.iter().map(|(t, s)| format!("{t:.2} s {s}")).collect();
        println!("@@metric xen::peer::init_steps| (s since the stub domain's kernel started) {}", report.join("; "));
        if let Some(at) = step_at(&steps, "state running") {
            println!("@@metric xen::peer::running| QEMU running {at:.2} s after the stub domain's kernel started");
        }
        match result {
            Err(e) if first_try && e.contains("startup timed out") => {
                first_try = false;
                println!(
                    "@@note xen::peer| the peer missed libxl's 30 s start-up (its /init steps: {}); trying once \
                     more. Its failure, then dom0 and the domains now:",
                    report.join("; ")
                );
                for line in e.lines().chain(xl::load_picture().lines()) {
                    println!("@@note xen::peer| {line}");
                }
                guest.destroy()?;
            }
            result => {
                return result.map_err(|e| {
                    with_device_model_log(NAME, format!("{e}\nthe peer's /init steps: {}", report.join("; ")))
                });
            }
        }
    }
}

fn boot_and_power_off(guest: &mut HvmGuest, origin: Instant, nonce_sha256: &str) -> Result<(), String> {
    let start = wait_stub_start(guest, origin)?;
    let stub = guest.stub_domid.ok_or("no stub domain")?;
    let times = wait_boot(&mut guest.shell, Duration::from_secs(600))?;

    let tag = format!("linux peer hda {}", harness::nonce());
    check_guest_drives(
        &mut guest.shell,
        nonce_sha256,
        &[
            "scsi host0: ata_piix",
            "ATA-7: QEMU HARDDISK",
            "ATAPI: QEMU DVD-ROM",
            "[sda] 32768 512-byte logical blocks",
            "ttyS0 at I/O 0x3f8 (irq = 4, base_baud = 115200) is a 16550A",
        ],
        &tag,
    )?;

    guest.shell.send_line("poweroff -f")?;
    let stub_name = format!("{NAME}-dm");
    proc::poll(Duration::from_secs(120), Duration::from_millis(500), || {
        (matches!(xl::find(NAME), Ok(None)) && matches!(xl::find(&stub_name), Ok(None))).then_some(())
    })
    .ok_or_else(|| format!("{NAME} or {stub_name} still listed 120 s after poweroff"))?;
    let xl_log = std::fs::read_to_string(format!("/var/log/xen/xl-{NAME}.log")).unwrap_or_default();
    expect_contains(&xl_log, &format!("Domain {} has shut down, reason code 0 ", guest.domid), "xl's log")?;
    file_holds(HDA, PATTERN_SECTOR * 512, &disk_pattern(&tag, PATTERN_LEN_BYTES))?;

    println!(
        "@@metric xen::peer::linux_stubdom_boots_the_guest| from xl create: stub domain running {:.1} s, xl create \
         done {:.1} s, first serial byte {:.1} s, ISOLINUX banner {:.1} s, Linux version {:.1} s, @@guest: init \
         {:.1} s (guest {}, stub domain {stub}, {PEER_MEMORY_MIB} MiB)",
        start.running.as_secs_f64(),
        start.created.as_secs_f64(),
        times.first_byte.as_secs_f64(),
        times.banner.as_secs_f64(),
        times.linux.as_secs_f64(),
        times.init.as_secs_f64(),
        guest.domid,
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_steps_are_read_from_the_console_log() {
        let log = "[    0.000000] Linux version 6.1\n@@peer 3.41 init\n@@peer 4.02 modules\nnoise\n\
                   @@peer x bad\n@@peer 9.50 state running\n";
        let steps = init_steps(log);
        assert_eq!(steps.len(), 3, "{steps:?}");
        assert_eq!(step_at(&steps, "init"), Some(3.41));
        assert_eq!(step_at(&steps, "state running"), Some(9.5));
        assert_eq!(step_at(&steps, "qemu exited"), None);
    }

    #[test]
    fn portio_lines_are_read() {
        let out =
            "noise\nportio: 100000 reads of 0x3f6: median 41234 ns, p99 90210 ns, total 4500 ms, last value 0x50\n";
        assert_eq!(parse_portio(out), Some((41234, 90210)));
        assert_eq!(parse_portio("portio: 10 reads of 0x3f6: median x ns"), None);
        assert_eq!(parse_portio("ioperm: Operation not permitted"), None);
    }

    #[test]
    fn percentiles_take_the_nearest_rank() {
        let values: Vec<f64> = (1..=1000).rev().map(f64::from).collect();
        assert_eq!(percentile(&values, 0.5), 500.0);
        assert_eq!(percentile(&values, 0.99), 990.0);
        assert_eq!(percentile(&[3.0], 0.99), 3.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
    }

    #[test]
    fn the_peer_config_names_its_kernel_and_ramdisk() {
        let text = HvmGuestConfig::new("g", peer_stub_domain(PEER_MEMORY_MIB)).xl_config();
        assert!(text.contains(&format!("stubdomain_kernel = \"{PEER_KERNEL}\"\n")), "{text}");
        assert!(text.contains(&format!("stubdomain_ramdisk = \"{PEER_RAMDISK}\"\n")), "{text}");
        assert!(text.contains("stubdomain_memory = 128\n"), "{text}");
    }
}
