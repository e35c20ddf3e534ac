//! Grant tables against dom0's grant devices: dom0 maps the image's grants
//! (/dev/xen/gntdev), the image maps dom0's (/dev/xen/gntalloc), and a ring index in
//! a shared page is read while dom0 increments it.

use crate::cases::runtime::{finish, start_image};
use crate::dom0::{gntalloc::GrantAllocator, gntdev::GrantDevice};
use crate::harness::{self, Ctx, Test, expect_contains};
use crate::xs::{self, data_path};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

pub fn tests() -> Vec<Test> {
    vec![
        Test { name: "xen::grant::dom0_maps_granted_page", limit: Duration::from_secs(120), run: grant_to_dom0 },
        Test { name: "xen::grant::image_maps_dom0_grant", limit: Duration::from_secs(120), run: map_dom0_grant },
        Test {
            name: "xen::grant::index_reads_never_tear",
            limit: Duration::from_secs(240),
            run: index_reads_never_tear,
        },
    ]
}

/// Where the counter sits in the shared page (the image's `COUNTER_OFFSET`).
const COUNTER_OFFSET: usize = 64;
/// dom0 stops counting here, far from the wrap to 0 (which would read as going back).
const COUNTER_STOP: u32 = 0xf000_0000;
/// How long the image reads, in seconds.
const READ_SECONDS: u64 = 10;
/// At least this many increments by dom0: 2^22 crosses 16384 carries out of the low
/// byte and 64 out of the second.
const MIN_INCREMENTS: u32 = 1 << 22;
/// At least this many reads by the image.
const MIN_READS: u64 = 1_000_000;
/// At least this many reads must see a new value, or the reads did not overlap the
/// increments and prove nothing.
const MIN_CHANGES: u64 = 10_000;

/// The image's counts, from `data/tear-result`.
#[derive(Debug, PartialEq, Eq)]
struct TearResult {
    reads: u64,
    changes: u64,
    violations: u64,
    first: u32,
    last: u32,
}

fn parse_tear_result(text: &str) -> Option<TearResult> {
    let field = |key: &str| {
        text.split_whitespace().find_map(|word| word.strip_prefix(key)?.strip_prefix('=')?.parse::<u64>().ok())
    };
    Some(TearResult {
        reads: field("reads")?,
        changes: field("changes")?,
        violations: field("violations")?,
        first: u32::try_from(field("first")?).ok()?,
        last: u32::try_from(field("last")?).ok()?,
    })
}

/// Judges the image's counts against what dom0 did (`increments`, its last value).
fn judge_tear_result(result: &TearResult, increments: u32) -> Result<(), String> {
    if result.violations > 0 {
        return Err(format!(
            "{} of {} reads of the index went backwards: torn reads (the index is not read in one load)",
            result.violations, result.reads
        ));
    }
    if result.reads < MIN_READS {
        return Err(format!("the image made only {} reads (at least {MIN_READS} wanted)", result.reads));
    }
    if result.changes < MIN_CHANGES {
        return Err(format!(
            "only {} of {} reads saw the counter move (at least {MIN_CHANGES}): the reads did not race dom0",
            result.changes, result.reads
        ));
    }
    if increments < MIN_INCREMENTS {
        return Err(format!("dom0 incremented only {increments} times (at least {MIN_INCREMENTS} wanted)"));
    }
    if result.first == 0 || result.last > increments || result.first > result.last {
        return Err(format!("the image read values dom0 never wrote: {result:?}, dom0 stopped at {increments}"));
    }
    Ok(())
}

/// dom0 increments a u32 in a page the image granted it, as fast as it can, while the
/// image reads it in a loop through its ring-index path; the image publishes its
/// counts and dom0 judges.
fn index_reads_never_tear(ctx: &mut Ctx) -> Result<(), String> {
    let name = "tear-test";
    let domid = start_image(ctx, name, &format!("selftest=indexreads seconds={READ_SECONDS}"))?;
    let limit = Duration::from_secs(60);
    let gref: u32 = xs::wait_for(&data_path(domid, "tear-ref"), limit, |v| v.parse::<u32>().is_ok())?
        .parse()
        .map_err(|e| format!("tear-ref: {e}"))?;
    let stop = AtomicBool::new(false);
    let started = Instant::now();
    let (counted, result) = std::thread::scope(|scope| {
        let counter = scope.spawn(|| -> Result<u32, String> {
            let device = GrantDevice::open()?;
            let mapping = device.map(domid, gref, true)?;
            let mut value = 0u32;
            while value < COUNTER_STOP && !stop.load(Ordering::Relaxed) {
                // Checking the flag costs more than a store: look at it now and then.
                for _ in 0..4096 {
                    value += 1;
                    mapping.store_u32(COUNTER_OFFSET, value)?;
                }
            }
            mapping.unmap()?;
            Ok(value)
        });
        let result =
            xs::wait_for(&data_path(domid, "tear-result"), limit + Duration::from_secs(READ_SECONDS), |_| true);
        stop.store(true, Ordering::Relaxed);
        let counted = counter.join().unwrap_or_else(|_| Err("the counting thread panicked".into()));
        (counted, result)
    });
    let increments = counted?;
    let seconds = started.elapsed().as_secs_f64();
    let text = result?;
    xs::write(&data_path(domid, "tear-unmapped"), "1")?;
    let log = finish(name)?;
    let result = parse_tear_result(&text).ok_or_else(|| format!("cannot read data/tear-result {text:?}"))?;
    println!(
        "@@metric xen::grant::index_reads_never_tear| image: {text}; dom0: {increments} increments in {seconds:.1} s"
    );
    judge_tear_result(&result, increments)?;
    expect_contains(&log, "indexreads: reads=", "console log")
}

fn grant_pattern(seed: u8, i: usize) -> u8 {
    seed.wrapping_add((i as u8).wrapping_mul(7)) ^ (i >> 8) as u8
}

fn grant_to_dom0(ctx: &mut Ctx) -> Result<(), String> {
    let name = "grant-test";
    let seed: u8 = (harness::nonce().bytes().map(u32::from).sum::<u32>() % 251) as u8 + 1;
    let domid = start_image(ctx, name, &format!("selftest=grant seed={seed}"))?;
    let limit = Duration::from_secs(60);
    let gref: u32 =
        xs::wait_for(&data_path(domid, "grant-ref"), limit, |v| v.parse::<u32>().is_ok())?.parse().unwrap_or(0);
    let device = GrantDevice::open()?;
    let mapping = device.map(domid, gref, false)?;
    let bytes = mapping.bytes();
    if let Some(i) = (0..bytes.len()).find(|&i| bytes[i] != grant_pattern(seed, i)) {
        return Err(format!(
            "granted page differs from the pattern at byte {i}: {} != {}",
            bytes[i],
            grant_pattern(seed, i)
        ));
    }
    xs::write(&data_path(domid, "grant-state"), "mapped")?;
    let busy = xs::wait_for(&data_path(domid, "grant-busy"), limit, |_| true)?;
    if busy != "refused" {
        return Err(format!("while dom0 had the page mapped, the image's end_access said {busy:?}"));
    }
    mapping.unmap()?;
    xs::write(&data_path(domid, "grant-state"), "unmapped")?;
    xs::wait_for(&data_path(domid, "grant-end"), limit, |v| v == "ok")?;
    let log = finish(name)?;
    expect_contains(&log, "grant: end_access refused while mapped, succeeded after unmap", "console log")?;
    expect_contains(&log, "grant: map_guest_frame refused our own frame (DOMID_SELF and domid", "console log")?;
    expect_contains(&log, "grant: a heap frame is refused as a grant and as a copy's destination", "console log")?;
    expect_contains(&log, "grant: copy of 1000 bytes verified", "console log")?;
    expect_contains(&log, "grant: a remapped slot reads its new frame", "console log")?;
    expect_contains(&log, "grant: ok", "console log")
}

fn map_dom0_grant(ctx: &mut Ctx) -> Result<(), String> {
    let name = "mapgrant-test";
    let seed: u8 = (harness::nonce().bytes().map(u32::from).sum::<u32>() % 251) as u8 + 1;
    let domid = start_image(ctx, name, &format!("selftest=mapgrant seed={seed}"))?;
    let allocator = GrantAllocator::open()?;
    let page = allocator.share(domid, true)?;
    let pattern: Vec<u8> = (0..2048).map(|i| grant_pattern(seed, i)).collect();
    page.write(0, &pattern)?;
    xs::write(&data_path(domid, "dom0-grant-ref"), &page.grant_ref().to_string())?;
    xs::wait_for(&data_path(domid, "mapgrant-done"), Duration::from_secs(60), |v| v == "1")?;
    let answer = format!("image-was-here:{seed}");
    let got = page.read(2048, answer.len())?;
    page.release()?;
    let log = finish(name)?;
    if got != answer.as_bytes() {
        return Err(format!("the image's answer in dom0's page is {:?}", String::from_utf8_lossy(&got)));
    }
    expect_contains(&log, "mapgrant: read dom0's pattern, wrote the answer, unmapped", "console log")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tear_results_are_read_and_judged() {
        let text = "reads=5000000 changes=200000 violations=0 first=12 last=90000000 ms=10000";
        let result = parse_tear_result(text).unwrap();
        assert_eq!(
            result,
            TearResult { reads: 5_000_000, changes: 200_000, violations: 0, first: 12, last: 90_000_000 }
        );
        assert_eq!(judge_tear_result(&result, 90_000_001), Ok(()));
        let torn = TearResult { violations: 3, ..parse_tear_result(text).unwrap() };
        assert!(judge_tear_result(&torn, 90_000_001).unwrap_err().contains("torn reads"));
        let idle = TearResult { changes: 5, ..parse_tear_result(text).unwrap() };
        assert!(judge_tear_result(&idle, 90_000_001).unwrap_err().contains("did not race"));
        assert!(judge_tear_result(&result, 1000).is_err(), "too few increments, and a value dom0 never wrote");
        assert_eq!(parse_tear_result("reads=1 changes=x"), None);
    }
}
