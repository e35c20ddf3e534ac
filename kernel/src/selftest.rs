//! Self-tests the real-Xen suite runs by naming one on the command line
//! (`selftest=NAME`). The shipped image has only `panic` and `pagefault`; the rest
//! are built with the `selftests` feature into the test bed's second image. Each prints its findings on console 0 in a fixed form the
//! dom0 side checks; those that need a peer meet it through xenstore and events.

#[cfg(feature = "selftests")]
mod peers;

use crate::cmdline::Cmdline;
#[cfg(feature = "selftests")]
use crate::{mm, time};
#[cfg(feature = "selftests")]
use alloc::vec::Vec;
#[cfg(feature = "selftests")]
use core::time::Duration;

/// Runs the self-test the command line names; Err is a failure to report.
pub async fn run(cmdline: Cmdline<'_>) -> Result<(), alloc::string::String> {
    match cmdline.value("selftest") {
        None | Some(b"none") => Ok(()),
        Some(b"panic") => panic!("selftest: deliberate panic requested on the command line"),
        Some(b"pagefault") => {
            println!("selftest: reading an unmapped address");
            // SAFETY: deliberately invalid: the low half is unmapped in this PV
            // kernel, so the read faults and the fault handler crashes the domain.
            let v = unsafe { (0xdead_0000 as *const u64).read_volatile() };
            Err(alloc::format!("unmapped read returned {v:#x}"))
        }
        #[cfg(feature = "selftests")]
        Some(b"alloc") => alloc_stress(cmdline.number("rounds").unwrap_or(20_000)),
        #[cfg(feature = "selftests")]
        Some(b"timers") => timers_in_order(cmdline.number("count").unwrap_or(1000) as usize).await,
        #[cfg(feature = "selftests")]
        Some(b"xenstore") => peers::xenstore().await,
        #[cfg(feature = "selftests")]
        Some(b"evtchn") => peers::evtchn_echo(cmdline.number("rounds").unwrap_or(10_000)).await,
        #[cfg(feature = "selftests")]
        Some(b"sleep") => peers::timed_sleep().await,
        #[cfg(feature = "selftests")]
        Some(b"grant") => peers::grant(cmdline.number("seed").unwrap_or(1) as u8).await,
        #[cfg(feature = "selftests")]
        Some(b"consoles") => peers::consoles().await,
        #[cfg(feature = "selftests")]
        Some(b"blk") => peers::blk(cmdline.number("devid").unwrap_or(51712) as u32).await,
        #[cfg(feature = "selftests")]
        Some(b"net") => {
            let (ip, prefix) = cmdline.ipv4_cidr("ip").ok_or("selftest=net needs ip=A.B.C.D/N on the command line")?;
            peers::net(ip, prefix, cmdline.number("connections").unwrap_or(1)).await
        }
        #[cfg(feature = "selftests")]
        Some(b"blkhotplug") => peers::blk_hotplug(cmdline.number("devid").unwrap_or(51744) as u32).await,
        #[cfg(feature = "selftests")]
        Some(b"blkbench") => {
            let options = frontends::blkfront::Options {
                max_ring_page_order: cmdline.number("ring_order").unwrap_or(2) as u32,
                max_data_pages: cmdline.number("data_pages").unwrap_or(512) as usize,
                ..Default::default()
            };
            peers::blk_bench(cmdline.number("devid").unwrap_or(51712) as u32, options).await
        }
        #[cfg(feature = "selftests")]
        Some(b"vchan") => peers::vchan_echo(cmdline.number("connections").unwrap_or(101)).await,
        #[cfg(feature = "selftests")]
        Some(b"indexreads") => peers::index_reads(cmdline.number("seconds").unwrap_or(10)).await,
        #[cfg(feature = "selftests")]
        Some(b"mapgrant") => peers::map_dom0_grant(cmdline.number("seed").unwrap_or(1) as u8).await,
        Some(other) => Err(alloc::format!(
            "unknown selftest \"{}\" (the peer and stress tests need an image built with feature selftests)",
            Cmdline::new(other).display()
        )),
    }
}

/// A small deterministic generator for test patterns (xorshift64).
#[cfg(feature = "selftests")]
struct Rng(u64);

#[cfg(feature = "selftests")]
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[cfg(feature = "selftests")]
fn fill(buf: &mut [u8], seed: u8) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b = seed.wrapping_add(i as u8).wrapping_mul(31);
    }
}

#[cfg(feature = "selftests")]
fn intact(buf: &[u8], seed: u8) -> bool {
    buf.iter().enumerate().all(|(i, &b)| b == seed.wrapping_add(i as u8).wrapping_mul(31))
}

#[cfg(feature = "selftests")]
/// Random heap and page allocations with patterns checked on free, then both pools
/// driven to exhaustion: every failure must be an error value, and every byte and
/// page must come back.
fn alloc_stress(rounds: u64) -> Result<(), alloc::string::String> {
    let before = mm::stats();
    let started = time::now_ns();
    println!("alloc: start {before:?}");
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut blocks: Vec<(Vec<u8>, u8)> = Vec::new();
    let mut pages: Vec<(mm::PrivatePage, u8)> = Vec::new();
    let mut peak_heap = 0;
    let mut refused = 0u64;
    for round in 0..rounds {
        match rng.below(8) {
            0..=3 => {
                // Sizes spread over 1 B .. 16 KiB, small ones more often. When the heap
                // says no (an error value, never a panic), free a block instead.
                let size = 1usize << rng.below(14);
                let size = size + rng.below(size as u64) as usize;
                let seed = rng.next() as u8;
                let mut v = Vec::new();
                if v.try_reserve_exact(size).is_err() || blocks.try_reserve(1).is_err() {
                    refused += 1;
                    if !blocks.is_empty() {
                        let (v, seed) = blocks.swap_remove(rng.below(blocks.len() as u64) as usize);
                        if !intact(&v, seed) {
                            return Err(alloc::format!("heap block of {} bytes corrupted (round {round})", v.len()));
                        }
                    }
                    continue;
                }
                v.resize(size, 0);
                fill(&mut v, seed);
                blocks.push((v, seed));
            }
            4 | 5 if !blocks.is_empty() => {
                let (v, seed) = blocks.swap_remove(rng.below(blocks.len() as u64) as usize);
                if !intact(&v, seed) {
                    return Err(alloc::format!("heap block of {} bytes corrupted (round {round})", v.len()));
                }
            }
            6 => {
                if pages.try_reserve(1).is_err() {
                    refused += 1;
                } else if let Ok(mut page) = mm::alloc_private_page() {
                    let seed = rng.next() as u8;
                    fill(page.as_mut_slice(), seed);
                    pages.push((page, seed));
                } else {
                    refused += 1;
                }
            }
            _ if !pages.is_empty() => {
                let (page, seed) = pages.swap_remove(rng.below(pages.len() as u64) as usize);
                if !intact(page.as_slice(), seed) {
                    return Err(alloc::format!("a private page corrupted (round {round})"));
                }
            }
            _ => {}
        }
        peak_heap = peak_heap.max(mm::stats().heap_used_bytes);
    }
    for (v, seed) in blocks.drain(..) {
        if !intact(&v, seed) {
            return Err("heap block corrupted at the end".into());
        }
    }
    for (page, seed) in pages.drain(..) {
        if !intact(page.as_slice(), seed) {
            return Err("page corrupted at the end".into());
        }
    }
    drop(blocks);
    drop(pages);

    // Exhaustion: take every pool page, then ask for one more.
    let mut all = Vec::new();
    all.try_reserve_exact(before.pool_pages as usize).map_err(|_| "no heap for the page list")?;
    while let Ok(p) = mm::alloc_page() {
        all.push(p);
        if all.len() as u64 > before.pool_pages {
            return Err("pool handed out more pages than it has".into());
        }
    }
    let taken = all.len() as u64;
    drop(all);
    // The heap: grow one buffer until the allocator says no.
    // The heap: ask for ever larger blocks (x1.5) until the allocator says no.
    let mut heap_max = 0usize;
    let mut want = 4096usize;
    for _ in 0..64 {
        let mut block: Vec<u8> = Vec::new();
        if block.try_reserve_exact(want).is_err() {
            break;
        }
        heap_max = block.capacity();
        if heap_max as u64 > before.heap_bytes {
            return Err("heap handed out more than its size".into());
        }
        want += want / 2;
    }

    let after = mm::stats();
    println!("alloc: end {after:?}");
    if after.heap_used_bytes != before.heap_used_bytes || after.pool_free_pages != before.pool_free_pages {
        return Err(alloc::format!(
            "leak: heap used {} -> {}, free pages {} -> {}",
            before.heap_used_bytes,
            after.heap_used_bytes,
            before.pool_free_pages,
            after.pool_free_pages
        ));
    }
    if taken != before.pool_free_pages {
        return Err(alloc::format!("exhaustion took {taken} pages of {}", before.pool_free_pages));
    }
    println!(
        "alloc: ok rounds={rounds} nr_pages={} heap_bytes={} peak_heap_used={peak_heap} refused={refused} largest_heap_block={heap_max} pool_pages={} page_tables_added={} took_ms={}",
        after.nr_pages,
        after.heap_bytes,
        after.pool_pages,
        after.page_tables_added,
        (time::now_ns() - started) / 1_000_000
    );
    Ok(())
}

#[cfg(feature = "selftests")]
/// First echoes dom0's pings on an event channel (so that dom0 can measure the event
/// round trip it bounds the lateness by), then `count` tasks sleep for pseudo-random
/// times; they must wake in deadline order. Publishes in `data/timers-result` how
/// many fired, how many fired before an earlier deadline, and the lateness (time from
/// deadline to the task running) for dom0 to judge.
async fn timers_in_order(count: usize) -> Result<(), alloc::string::String> {
    use alloc::format;
    use alloc::rc::Rc;
    use core::cell::RefCell;
    peers::echo_pings("timers", 20).await?;
    let order: Rc<RefCell<Vec<(u64, usize, u64)>>> = Rc::new(RefCell::new(Vec::new()));
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    // Deadlines start well after every task has had its first poll (which registers
    // its timer), so the order observed is the timer queue's.
    let start = time::now_ns();
    for i in 0..count {
        let deadline = start + 500_000_000 + rng.below(2_000_000_000);
        let order = order.clone();
        crate::executor::spawn(async move {
            time::sleep_until(deadline).await;
            let late = time::now_ns().saturating_sub(deadline);
            order.borrow_mut().push((deadline, i, late));
        });
    }
    // One short sleep lets every task run its first poll.
    time::sleep(Duration::from_millis(1)).await;
    if time::now_ns() > start + 500_000_000 {
        return Err("starting the timer tasks took longer than the earliest deadline".into());
    }
    let limit = time::Deadline::after_ms(10_000);
    while order.borrow().len() < count && !limit.passed() {
        time::sleep(Duration::from_millis(20)).await;
    }
    // Every task has fired (or the wait gave up): take the record out of the cell.
    let order = core::mem::take(&mut *order.borrow_mut());
    let fired = order.len();
    let inversions = order.windows(2).filter(|w| w[0].0 > w[1].0).count();
    let max_late = order.iter().map(|o| o.2).max().unwrap_or(0);
    let mean_late = order.iter().map(|o| o.2).sum::<u64>() / fired.max(1) as u64;
    let mut lateness: Vec<u64> = order.iter().map(|o| o.2).collect();
    lateness.sort_unstable();
    let p99_late = lateness.get(fired * 99 / 100).copied().unwrap_or(0);
    let result = format!(
        "count={count} fired={fired} inversions={inversions} mean_late_us={} p99_late_us={} max_late_us={}",
        mean_late / 1000,
        p99_late / 1000,
        max_late / 1000
    );
    crate::xs::write(crate::xs::NO_TX, "data/timers-result", result.as_bytes())
        .await
        .map_err(|e| format!("writing data/timers-result: {e}"))?;
    println!("timers: {result}");
    Ok(())
}
