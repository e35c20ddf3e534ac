//! The image as a plain PV domU: banner, clean poweroff, panic and fault reports.

use crate::cases::runtime::{bind, finish, round_trip, start_image};
use crate::harness::{self, Ctx, Test, console_log, expect_contains};
use crate::xl;
use crate::xs::{self, data_path};
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

/// The image's `data/timers-result`.
#[derive(Debug, PartialEq, Eq)]
struct TimersResult {
    count: u64,
    fired: u64,
    inversions: u64,
    mean_late_us: u64,
    p99_late_us: u64,
    max_late_us: u64,
}

fn parse_timers_result(text: &str) -> Option<TimersResult> {
    let field =
        |key: &str| text.split_whitespace().find_map(|w| w.strip_prefix(key)?.strip_prefix('=')?.parse::<u64>().ok());
    Some(TimersResult {
        count: field("count")?,
        fired: field("fired")?,
        inversions: field("inversions")?,
        mean_late_us: field("mean_late_us")?,
        p99_late_us: field("p99_late_us")?,
        max_late_us: field("max_late_us")?,
    })
}

/// The lateness bounds, from dom0's median event round trip with the image: a timer
/// is an event from Xen to the image (about half a round trip) plus the executor's
/// work, and a thousand timers in two seconds bunch up. Bounds: the mean within
/// `MEAN_RTTS` round trips plus 1 ms, the 99th percentile within `P99_RTTS` round trips
/// plus 5 ms (on a loaded test bed, with a 96 ms round trip, the mean was 0.7 and the
/// worst 2.9 round trips), and the single worst timer within `MAX_RTTS` round trips plus
/// 50 ms: one timer can be late by however long the host deschedules QEMU's vCPU
/// thread (17 ms once, with a 0.8 ms round trip, on a 2-core host), while a lost or
/// missed timer is late by far more.
const MEAN_RTTS: u32 = 2;
const P99_RTTS: u32 = 10;
const MAX_RTTS: u32 = 10;

/// (mean, 99th percentile, worst) bounds.
fn lateness_bounds(rtt: Duration) -> (Duration, Duration, Duration) {
    (
        rtt * MEAN_RTTS + Duration::from_millis(1),
        rtt * P99_RTTS + Duration::from_millis(5),
        rtt * MAX_RTTS + Duration::from_millis(50),
    )
}

fn judge_timers(result: &TimersResult, rtt: Duration) -> Result<(), String> {
    if result.fired != result.count {
        return Err(format!("only {} of {} timers fired within 10 s", result.fired, result.count));
    }
    if result.inversions != 0 {
        return Err(format!("{} timers fired after one with a later deadline", result.inversions));
    }
    let (mean_bound, p99_bound, max_bound) = lateness_bounds(rtt);
    let us = Duration::from_micros;
    let (mean, p99, max) = (us(result.mean_late_us), us(result.p99_late_us), us(result.max_late_us));
    if mean > mean_bound || p99 > p99_bound || max > max_bound {
        return Err(format!(
            "timers were late by {} us on average (bound {} us), {} us at the 99th percentile (bound {} us) and \
             {} us at worst (bound {} us); event round trip {} us",
            mean.as_micros(),
            mean_bound.as_micros(),
            p99.as_micros(),
            p99_bound.as_micros(),
            max.as_micros(),
            max_bound.as_micros(),
            rtt.as_micros()
        ));
    }
    Ok(())
}

/// dom0 measures the event round trip with the image, the image runs a thousand
/// timers and publishes their order and lateness; dom0 judges the lateness against a
/// bound stated in round trips ([`lateness_bounds`]).
///
/// A run whose timers all fired in order but late is run once more and judged the same
/// way: on the TCG bed one host stall of 20 ms delays ten timers of the thousand by up
/// to that much, which alone passes the 99th percentile's bound (it did in two of three
/// full runs on 2026-12-02, both in the bed's first 20 s, with 3.5 ms in the third). A
/// timer implementation that is slow fails both runs; a lost or disordered timer
/// fails the first.
///
/// The second run comes [`SETTLE`] later: a run right after the first failed the same
/// way (p99 10.5 then 9.4 ms, both within the bed's first 25 s, in a full run on
/// 2026-12-02), so whatever slows the bed's start had not passed yet.
fn timers_in_order(ctx: &mut Ctx) -> Result<(), String> {
    const SETTLE: Duration = Duration::from_secs(30);
    let (result, rtt) = run_timers(ctx, "timers")?;
    match judge_timers(&result, rtt) {
        Err(why) if result.fired == result.count && result.inversions == 0 => {
            println!("@@note xen::time::thousand_timers_fire_in_order| first run: {why}; once more in {SETTLE:?}");
            std::thread::sleep(SETTLE);
            let (again, rtt) = run_timers(ctx, "timers-again")?;
            judge_timers(&again, rtt)
        }
        judged => judged,
    }
}

/// One image with a thousand timers: its result and the median event round trip.
fn run_timers(ctx: &mut Ctx, name: &str) -> Result<(TimersResult, Duration), String> {
    let domid = start_image(ctx, name, "selftest=timers count=1000")?;
    let (channels, local) = bind("timers", domid)?;
    let mut pings: Vec<Duration> =
        (0..20).map(|_| round_trip(&channels, local, Duration::from_secs(5))).collect::<Result<_, _>>()?;
    pings.sort();
    let rtt = pings[pings.len() / 2];
    let text = xs::wait_for(&data_path(domid, "timers-result"), Duration::from_secs(60), |_| true)?;
    finish(name)?;
    let result = parse_timers_result(&text).ok_or_else(|| format!("cannot read data/timers-result {text:?}"))?;
    let (mean_bound, p99_bound, max_bound) = lateness_bounds(rtt);
    println!(
        "@@metric xen::time::thousand_timers_fire_in_order| {text}; median event round trip {} us, bounds: mean {} us, \
         p99 {} us, max {} us",
        rtt.as_micros(),
        mean_bound.as_micros(),
        p99_bound.as_micros(),
        max_bound.as_micros()
    );
    Ok((result, rtt))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timer_results_are_judged_against_the_round_trip() {
        let text = "count=1000 fired=1000 inversions=0 mean_late_us=150 p99_late_us=900 max_late_us=2000";
        let result = parse_timers_result(text).unwrap();
        let rtt = Duration::from_micros(100);
        assert_eq!(judge_timers(&result, rtt), Ok(()));
        let late = TimersResult { p99_late_us: 6_001, max_late_us: 6_001, ..parse_timers_result(text).unwrap() };
        assert!(judge_timers(&late, rtt).unwrap_err().contains("at the 99th percentile (bound 6000 us)"));
        assert_eq!(judge_timers(&late, Duration::from_micros(200)), Ok(()), "a slower round trip allows more");
        let one_descheduled = TimersResult { max_late_us: 17_191, ..parse_timers_result(text).unwrap() };
        assert_eq!(judge_timers(&one_descheduled, rtt), Ok(()), "one timer late by a host hiccup");
        let missed = TimersResult { max_late_us: 51_001, ..parse_timers_result(text).unwrap() };
        assert!(judge_timers(&missed, rtt).unwrap_err().contains("at worst (bound 51000 us)"));
        let slow_on_average = TimersResult { mean_late_us: 1_201, ..parse_timers_result(text).unwrap() };
        assert!(judge_timers(&slow_on_average, rtt).unwrap_err().contains("on average (bound 1200 us)"));
        let lost = TimersResult { fired: 999, ..parse_timers_result(text).unwrap() };
        assert!(judge_timers(&lost, rtt).is_err());
        let disordered = TimersResult { inversions: 1, ..parse_timers_result(text).unwrap() };
        assert!(judge_timers(&disordered, rtt).is_err());
        assert_eq!(parse_timers_result("count=1"), None);
    }
}
