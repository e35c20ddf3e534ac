//! The image as a plain PV domU: banner, clean poweroff, panic and fault reports.

use crate::harness::{self, Ctx, Test, console_log, expect_contains};
use crate::xl;
use std::time::Duration;

/// Where the test bed puts the shipped image in dom0.
pub const IMAGE: &str = "/suite/rust-stubdom";
/// The same image built with the `selftests` feature (stress and peer self-tests).
pub const SELFTEST_IMAGE: &str = "/suite/rust-stubdom-selftest";
const VERSION: &str = env!("CARGO_PKG_VERSION");

pub fn tests() -> Vec<Test> {
    vec![
        Test { name: "xen::kernel::banner_and_poweroff", limit: Duration::from_secs(90), run: banner_and_poweroff },
        Test { name: "xen::kernel::panic_crashes_with_message", limit: Duration::from_secs(90), run: panic_crashes },
        Test {
            name: "xen::kernel::page_fault_crashes_with_report",
            limit: Duration::from_secs(90),
            run: page_fault_crashes,
        },
        Test { name: "xen::kernel::allocator_stress_in_8_mib", limit: Duration::from_secs(120), run: allocator_stress },
        Test {
            name: "xen::time::thousand_timers_fire_in_order",
            limit: Duration::from_secs(120),
            run: timers_in_order,
        },
    ]
}

/// An xl config for the image as a PV domU with `memory_mib` and `cmdline`. Both
/// shutdown reasons are preserved so the test can read which one it was. Command
/// lines naming a stress or peer self-test run the self-test image.
pub fn pv_config(name: &str, memory_mib: u32, cmdline: &str) -> String {
    pv_config_with(name, memory_mib, cmdline, "")
}

/// `pv_config` plus extra xl.cfg lines (disks, vifs).
pub fn pv_config_with(name: &str, memory_mib: u32, cmdline: &str, extra: &str) -> String {
    let shipped = ["selftest=none", "selftest=panic", "selftest=pagefault"];
    let image = if !cmdline.contains("selftest=") || shipped.iter().any(|w| cmdline.contains(w)) {
        IMAGE
    } else {
        SELFTEST_IMAGE
    };
    format!(
        "name = \"{name}\"\ntype = \"pv\"\nkernel = \"{image}\"\nextra = \"{cmdline}\"\nmemory = {memory_mib}\n\
         vcpus = 1\non_poweroff = \"preserve\"\non_crash = \"preserve\"\non_reboot = \"preserve\"\n{extra}"
    )
}

/// Boots the image with `cmdline`, waits for it to stop, returns (row, console log).
pub fn boot(ctx: &mut Ctx, name: &str, memory_mib: u32, cmdline: &str) -> Result<(xl::DomainRow, String), String> {
    let cfg = ctx.prepare_domain(name, &pv_config(name, memory_mib, cmdline))?;
    xl::create(&cfg)?;
    let row = xl::wait_shutdown(name, Duration::from_secs(60))?;
    // xenconsoled may still be writing the last lines to its log.
    let log = crate::proc::poll(Duration::from_secs(5), Duration::from_millis(100), || {
        let log = console_log(name);
        (log.contains("powering off") || log.contains("backtrace:") || log.contains("selftest: FAILED")).then_some(log)
    })
    .unwrap_or_else(|| console_log(name));
    Ok((row, log))
}

fn banner_and_poweroff(ctx: &mut Ctx) -> Result<(), String> {
    let nonce = harness::nonce();
    let cmdline = format!("selftest=none run={nonce}");
    let (row, log) = boot(ctx, "banner", 16, &cmdline)?;
    if row.is_crashed() {
        return Err(format!("domain crashed instead of powering off: {row:?}\n{log}"));
    }
    expect_contains(&log, &format!("rust-stubdom {VERSION}: Xen PV stub domain"), "console log")?;
    // 16 MiB are 4096 pages; the cmdline must come back verbatim from start_info.
    expect_contains(&log, "magic=xen-3.0-x86_64 nr_pages=4096 ", "console log")?;
    expect_contains(&log, &format!("cmdline=\"{cmdline}\""), "console log")?;
    // Logging is on at level info by default.
    expect_contains(&log, "[INFO rust_stubdom::boot] memory: Stats {", "console log")?;
    expect_contains(&log, "rust-stubdom: powering off", "console log")
}

fn panic_crashes(ctx: &mut Ctx) -> Result<(), String> {
    let (row, log) = boot(ctx, "panicker", 16, "selftest=panic loglevel=off")?;
    if !row.is_crashed() {
        return Err(format!("expected a crash, got state {}\n{log}", row.state));
    }
    expect_contains(
        &log,
        "panic: selftest: deliberate panic requested on the command line at kernel/src/selftest.rs:",
        "console log",
    )?;
    expect_contains(&log, "backtrace: 0x", "console log")?;
    if log.contains("powering off") {
        return Err("image went on past its panic".into());
    }
    if log.contains("[INFO") {
        return Err("loglevel=off still printed info messages".into());
    }
    Ok(())
}

fn page_fault_crashes(ctx: &mut Ctx) -> Result<(), String> {
    let (row, log) = boot(ctx, "faulter", 16, "selftest=pagefault")?;
    if !row.is_crashed() {
        return Err(format!("expected a crash, got state {}\n{log}", row.state));
    }
    expect_contains(&log, "fatal exception: vector 14 (page fault)", "console log")?;
    // The image read 0xdead0000: cr2 must name it, and the register dump must follow.
    expect_contains(&log, "cr2=0xdead0000", "console log")?;
    expect_contains(&log, "rsp=0x", "console log")?;
    expect_contains(&log, "backtrace:", "console log")
}

/// Boots a self-test that must end in a clean poweroff; returns its console log.
pub fn boot_selftest(ctx: &mut Ctx, name: &str, memory_mib: u32, cmdline: &str) -> Result<String, String> {
    let (row, log) = boot(ctx, name, memory_mib, cmdline)?;
    if row.is_crashed() || !log.contains("rust-stubdom: powering off") {
        return Err(format!("self-test did not finish cleanly (state {}):\n{log}", row.state));
    }
    Ok(log)
}

/// The console line starting with `prefix`, if any.
pub fn line_with<'a>(log: &'a str, prefix: &str) -> Option<&'a str> {
    log.lines().find(|l| l.starts_with(prefix))
}

fn allocator_stress(ctx: &mut Ctx) -> Result<(), String> {
    let log = boot_selftest(ctx, "alloc", 8, "selftest=alloc rounds=50000")?;
    let line = line_with(&log, "alloc: ok ").ok_or_else(|| format!("no \"alloc: ok\" line:\n{log}"))?;
    // 8 MiB are 2048 pages; the counters must say the heap and pool were really used.
    expect_contains(line, "rounds=50000 nr_pages=2048 ", "alloc line")?;
    println!("@@metric xen::kernel::allocator_stress_in_8_mib| {line}");
    Ok(())
}

fn timers_in_order(ctx: &mut Ctx) -> Result<(), String> {
    let log = boot_selftest(ctx, "timers", 8, "selftest=timers count=1000")?;
    let line =
        line_with(&log, "timers: 1000 fired in deadline order").ok_or_else(|| format!("no timer result:\n{log}"))?;
    println!("@@metric xen::time::thousand_timers_fire_in_order| {line}");
    Ok(())
}

/// `cargo xtask run`: start the image and show its console as it runs.
pub fn demo() -> Result<(), String> {
    let name = "rust-stubdom";
    let mut ctx = Ctx::default();
    let cfg = ctx.prepare_domain(name, &pv_config(name, 16, "selftest=none"))?;
    println!("@@demo: xl create {cfg}");
    xl::create(&cfg)?;
    let row = xl::wait_shutdown(name, Duration::from_secs(60));
    std::thread::sleep(Duration::from_millis(500));
    println!("@@demo: console of {name} (from xenconsoled's log):");
    for line in console_log(name).lines() {
        println!("[{name}] {line}");
    }
    xl::destroy(name);
    let row = row?;
    println!("@@demo: {name} ended with state {} ({})", row.state, if row.is_crashed() { "crash" } else { "shutdown" });
    Ok(())
}
