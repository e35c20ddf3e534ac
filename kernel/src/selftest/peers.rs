//! Self-tests with a peer in dom0 (the real-Xen suite's counterpart). They meet
//! through this domain's `data/` directory in xenstore, which the toolstack makes
//! writable for the domain; event channels are offered to dom0 (domain 0).

use crate::events::{self, Port};
use crate::seams::KernelXen;
use crate::{gnttab, mm, time, xs};
use alloc::format;
use alloc::string::String;
use core::time::Duration;
use xen_seams::{RetryPolicy, TransactionError, Xen, Xenstore};

type Result<T> = core::result::Result<T, String>;

fn fail<E: core::fmt::Display>(what: &str) -> impl FnOnce(E) -> String + '_ {
    move |e| format!("{what}: {e}")
}

/// Waits until node `path` exists (bounded), returning its value.
async fn await_node(path: &str, limit: Duration) -> Result<String> {
    let deadline = time::Deadline::after_ms(limit.as_millis() as u64);
    loop {
        if let Ok(v) = xs::read_string(xs::NO_TX, path).await {
            return Ok(v);
        }
        if deadline.passed() {
            return Err(format!("{path} did not appear within {} s", limit.as_secs()));
        }
        time::sleep(Duration::from_millis(50)).await;
    }
}

/// Reads its own identity, echoes a value dom0 writes to a watched node, commits a
/// transaction that races a dom0 writer, and gives up on one that a dom0 write storm
/// keeps conflicting.
pub async fn xenstore() -> Result<()> {
    let domid = xs::read_string(xs::NO_TX, "domid").await.map_err(fail("reading domid"))?;
    let name = xs::read_string(xs::NO_TX, "name").await.map_err(fail("reading name"))?;
    let domid_num: u16 = domid.parse().map_err(|_| format!("domid {domid:?} is not a number"))?;
    let home = xs::get_domain_path(domid_num).await.map_err(fail("get_domain_path"))?;
    println!("xenstore: domid={domid} name={name} home={home}");

    // Watch, then tell dom0 we are ready; the first event is the registration's.
    let watch = xs::watch("data/echo-in").await.map_err(fail("watching data/echo-in"))?;
    xs::write(xs::NO_TX, "data/ready", b"1").await.map_err(fail("writing data/ready"))?;
    let echoed = loop {
        let path = watch.next_event(Duration::from_secs(60)).await.map_err(fail("waiting for data/echo-in"))?;
        match xs::read(xs::NO_TX, "data/echo-in").await {
            Ok(v) if !v.is_empty() => break v,
            _ => log::debug!("watch fired for {path}, nothing to echo yet"),
        }
    };
    xs::write(xs::NO_TX, "data/echo-out", &echoed).await.map_err(fail("writing data/echo-out"))?;
    watch.cancel().await.map_err(fail("unwatching"))?;
    println!("xenstore: echoed {}", String::from_utf8_lossy(&echoed));

    // Race: in attempt 1, after our read, dom0 rewrites data/race: the commit must
    // conflict and attempt 2 must commit what dom0 wrote.
    let policy = RetryPolicy::default();
    let xen = KernelXen::new().await.map_err(fail("reading our domid"))?;
    let (attempt, seen) = xen
        .transaction(policy, async |tx, attempt| {
            let value = xs::read_string(tx, "data/race").await?;
            if attempt == 1 {
                xs::write(xs::NO_TX, "data/race-attempt", b"1").await?;
                // dom0 polls for that and writes data/race; give it time.
                let deadline = time::Deadline::after_ms(10_000);
                while xs::read_string(xs::NO_TX, "data/race").await.as_deref() == Ok(value.as_str())
                    && !deadline.passed()
                {
                    time::sleep(Duration::from_millis(50)).await;
                }
            }
            xs::write(tx, "data/race-result", format!("{value}-seen").as_bytes()).await?;
            Ok((attempt, value))
        })
        .await
        .map_err(fail("race transaction"))?;
    if attempt < 2 {
        return Err(format!("race transaction committed on attempt {attempt}: the dom0 write did not conflict"));
    }
    println!("xenstore: race transaction committed on attempt {attempt} with {seen}");

    // Storm: dom0 writes data/storm every few ms; each attempt reads it, waits, and
    // commits, so every commit conflicts and the bounded retries must give up.
    xs::write(xs::NO_TX, "data/storm-go", b"1").await.map_err(fail("writing data/storm-go"))?;
    await_node("data/storm", Duration::from_secs(30)).await?;
    let started = time::now_ns();
    let storm = xen
        .transaction(policy, async |tx, _| {
            let value = xs::read(tx, "data/storm").await?;
            // Hold the transaction open until dom0's next write has landed (bounded).
            let deadline = time::Deadline::after_ms(5_000);
            while xs::read(xs::NO_TX, "data/storm").await.as_ref() == Ok(&value) && !deadline.passed() {
                time::sleep(Duration::from_millis(20)).await;
            }
            xs::write(tx, "data/storm-seen", &value).await
        })
        .await;
    xs::write(xs::NO_TX, "data/storm-done", b"1").await.map_err(fail("writing data/storm-done"))?;
    match storm {
        Err(TransactionError::TooManyConflicts { attempts }) => println!(
            "xenstore: storm transaction gave up after {attempts} attempts in {} ms: {}",
            (time::now_ns() - started) / 1_000_000,
            TransactionError::<xs::Error>::TooManyConflicts { attempts }
        ),
        Ok(()) => return Err("storm transaction committed despite the dom0 writer".into()),
        Err(e) => return Err(format!("storm transaction failed otherwise: {e}")),
    }
    tree_operations(domid_num).await?;
    dropped_watches().await?;
    println!("xenstore: ok");
    Ok(())
}

/// Watches registered and dropped this many times: far more than xenstored's quota of
/// watches per domain (C xenstored 128, oxenstored 100), which watches that were not
/// unregistered when dropped would exhaust.
const DROPPED_WATCHES: u32 = 400;

/// Registers and drops [`DROPPED_WATCHES`] watches, then checks a new one still fires.
async fn dropped_watches() -> Result<()> {
    const PATH: &str = "data/watch-churn";
    for i in 1..=DROPPED_WATCHES {
        let watch = xs::watch(PATH).await.map_err(|e| format!("watch {i} of {DROPPED_WATCHES}: {e}"))?;
        drop(watch);
    }
    let watch = xs::watch(PATH).await.map_err(fail("the watch after the dropped ones"))?;
    // The registration's event, then the one for our write.
    watch.next_event(Duration::from_secs(10)).await.map_err(fail("the registration event"))?;
    xs::write(xs::NO_TX, PATH, b"1").await.map_err(fail("writing data/watch-churn"))?;
    watch.next_event(Duration::from_secs(10)).await.map_err(fail("the event for data/watch-churn"))?;
    drop(watch);
    println!("xenstore: {DROPPED_WATCHES} watches dropped and unregistered; a new one still fires");
    Ok(())
}

/// mkdir, directory, get/set_perms, rm, and the request size limit.
async fn tree_operations(domid: u16) -> Result<()> {
    use xenstore::wire::{Access, Permission};
    xs::mkdir(xs::NO_TX, "data/tree").await.map_err(fail("mkdir"))?;
    xs::write(xs::NO_TX, "data/tree/b", b"2").await.map_err(fail("write"))?;
    xs::write(xs::NO_TX, "data/tree/a", b"1").await.map_err(fail("write"))?;
    let mut children = xs::directory(xs::NO_TX, "data/tree").await.map_err(fail("directory"))?;
    children.sort();
    if children != ["a", "b"] {
        return Err(format!("directory data/tree lists {children:?}"));
    }
    let perms = xs::get_perms(xs::NO_TX, "data/tree/a").await.map_err(fail("get_perms"))?;
    if perms.first().map(|p| p.domid) != Some(domid) {
        return Err(format!("data/tree/a is not owned by us: {perms:?}"));
    }
    // Let dom0 read it (dom0 can anyway), others nothing; then read the perms back.
    let wanted = [Permission { domid, access: Access::None }, Permission { domid: 0, access: Access::Read }];
    xs::set_perms(xs::NO_TX, "data/tree/a", &wanted).await.map_err(fail("set_perms"))?;
    let perms = xs::get_perms(xs::NO_TX, "data/tree/a").await.map_err(fail("get_perms"))?;
    if perms != wanted {
        return Err(format!("set_perms wrote {wanted:?} but get_perms reads {perms:?}"));
    }
    xs::rm(xs::NO_TX, "data/tree").await.map_err(fail("rm"))?;
    match xs::read(xs::NO_TX, "data/tree/a").await {
        Err(xs::Error::Xs(xenstore::reply::XsError::Errno(xenstore::reply::Errno::ENOENT))) => {}
        other => return Err(format!("after rm, reading data/tree/a gave {other:?}")),
    }
    // A value over the 4096-byte payload limit is refused before it reaches the ring.
    let big = alloc::vec![b'x'; 5000];
    match xs::write(xs::NO_TX, "data/big", &big).await {
        Err(xs::Error::Encode(_)) => {}
        other => return Err(format!("an oversized write gave {other:?}")),
    }
    println!("xenstore: mkdir, directory, get/set_perms, rm and the size limit ok");
    Ok(())
}

/// Offers dom0 an event channel at data/<name>-port and returns it.
async fn offer_port(name: &str) -> Result<Port> {
    let port = events::alloc_unbound(0).map_err(|e| format!("alloc_unbound: {e:?}"))?;
    xs::write(xs::NO_TX, &format!("data/{name}-port"), format!("{}", port.0).as_bytes())
        .await
        .map_err(fail("publishing the port"))?;
    Ok(port)
}

async fn next_event(port: Port, what: &str) -> Result<()> {
    time::timeout(Duration::from_secs(30), events::wait(port))
        .await
        .map_err(|_| format!("no event for {what} within 30 s"))
}

/// Answers every event dom0 sends with one back, `rounds` times.
pub async fn evtchn_echo(rounds: u64) -> Result<()> {
    let port = offer_port("evtchn").await?;
    for i in 0..rounds {
        next_event(port, &format!("round {i}")).await?;
        events::send(port).map_err(|e| format!("send: {e:?}"))?;
    }
    println!(
        "evtchn: echoed {rounds} events (upcalls {}, blocks {})",
        events::upcall_count(),
        crate::executor::block_count()
    );

    // Masked: dom0's event must wait, not vanish, and arrive on unmask.
    events::mask(port);
    xs::write(xs::NO_TX, "data/evtchn-masked", b"1").await.map_err(fail("writing data/evtchn-masked"))?;
    await_node("data/evtchn-sent", Duration::from_secs(60)).await?;
    time::sleep(Duration::from_millis(100)).await;
    events::dispatch_pending();
    if events::take_fired(port) {
        return Err("an event was delivered while its port was masked".into());
    }
    events::unmask(port).map_err(|e| format!("unmask: {e:?}"))?;
    next_event(port, "the event sent while masked").await?;
    events::send(port).map_err(|e| format!("send: {e:?}"))?;
    println!("evtchn: event sent while masked was held and delivered on unmask");
    events::close(port).map_err(|e| format!("close: {e:?}"))?;
    Ok(())
}

/// Offers dom0 a port at data/<name>-port and answers `pings` events on it, so that
/// dom0 can measure the event round trip; returns the port.
pub async fn echo_pings(name: &str, pings: u64) -> Result<Port> {
    let port = offer_port(name).await?;
    for i in 0..pings {
        next_event(port, &format!("ping {i}")).await?;
        events::send(port).map_err(|e| format!("send: {e:?}"))?;
    }
    Ok(port)
}

/// How many 200 ms sleeps dom0 times (it judges their median: one exchange that a
/// loaded test bed delivers late says nothing about the image's clock).
pub const TIMED_SLEEPS: u32 = 5;

/// Echoes pings (so dom0 can measure the event round trip), then answers each of
/// [`TIMED_SLEEPS`] sleep requests after sleeping 200 ms; dom0 times the sleeps with
/// its own clock.
pub async fn timed_sleep() -> Result<()> {
    let port = echo_pings("sleep", 20).await?;
    let mut measured_us = alloc::vec::Vec::new();
    for i in 0..TIMED_SLEEPS {
        next_event(port, &format!("sleep request {i}")).await?;
        let t0 = time::now_ns();
        time::sleep(Duration::from_millis(200)).await;
        let t1 = time::now_ns();
        events::send(port).map_err(|e| format!("send: {e:?}"))?;
        measured_us.push((t1 - t0) / 1000);
    }
    let (sec, nsec) = time::wallclock();
    xs::write(xs::NO_TX, "data/sleep-wallclock", format!("{sec}.{nsec:09}").as_bytes())
        .await
        .map_err(fail("writing the wall clock"))?;
    println!("sleep: 200 ms measured {measured_us:?} us by the image; wallclock {sec}.{nsec:09}");
    Ok(())
}

fn grant_pattern(seed: u8, i: usize) -> u8 {
    seed.wrapping_add((i as u8).wrapping_mul(7)) ^ (i >> 8) as u8
}

/// Grants dom0 a page with a pattern; ending the grant must be refused while dom0
/// has it mapped and succeed after it unmaps. Also checks GNTTABOP_copy and a
/// mapping of our own frame through a mapping slot (the foreign-mapping path).
pub async fn grant(seed: u8) -> Result<()> {
    let page = mm::alloc_page().map_err(|e| format!("alloc_page: {e}"))?;
    let pattern: alloc::vec::Vec<u8> =
        (0..xen_abi::memory::PAGE_SIZE as usize).map(|i| grant_pattern(seed, i)).collect();
    mm::write_page(&page, 0, &pattern);
    let gref = gnttab::grant_access(0, page.mfn(), true).map_err(|e| format!("grant_access: {e}"))?;
    let watch = xs::watch("data/grant-state").await.map_err(fail("watching data/grant-state"))?;
    xs::write(xs::NO_TX, "data/grant-ref", format!("{}", gref.0).as_bytes())
        .await
        .map_err(fail("publishing the grant"))?;
    let mut refused_while_mapped = false;
    loop {
        watch.next_event(Duration::from_secs(60)).await.map_err(fail("waiting for data/grant-state"))?;
        match xs::read_string(xs::NO_TX, "data/grant-state").await.as_deref() {
            Ok("mapped") if !refused_while_mapped => {
                let verdict = match gnttab::end_access(gref) {
                    Err(gnttab::GrantError::InUse) => "refused",
                    Ok(()) => "ended",
                    Err(_) => "error",
                };
                xs::write(xs::NO_TX, "data/grant-busy", verdict.as_bytes())
                    .await
                    .map_err(fail("writing data/grant-busy"))?;
                if verdict != "refused" {
                    return Err(format!("end_access while dom0 had the page mapped: {verdict}"));
                }
                refused_while_mapped = true;
            }
            Ok("unmapped") if refused_while_mapped => {
                gnttab::end_access(gref).map_err(|e| format!("end_access after unmap: {e}"))?;
                xs::write(xs::NO_TX, "data/grant-end", b"ok").await.map_err(fail("writing data/grant-end"))?;
                break;
            }
            _ => {}
        }
    }
    println!("grant: end_access refused while mapped, succeeded after unmap");

    // GNTTABOP_copy between two of our own frames.
    let target = mm::alloc_page().map_err(|e| format!("alloc_page: {e}"))?;
    let mut op = xen_abi::grant_table::GnttabCopy {
        source: xen_abi::grant_table::GnttabCopyPtr {
            ref_or_gmfn: page.mfn(),
            domid: xen_abi::event_channel::DOMID_SELF,
            offset: 100,
        },
        dest: xen_abi::grant_table::GnttabCopyPtr {
            ref_or_gmfn: target.mfn(),
            domid: xen_abi::event_channel::DOMID_SELF,
            offset: 200,
        },
        len: 1000,
        ..Default::default()
    };
    gnttab::copy(core::slice::from_mut(&mut op)).map_err(|e| format!("GNTTABOP_copy: {e}"))?;
    // Heap memory is no page to share: neither a grant of it nor a copy into it.
    let heap = alloc::vec![0u8; 8192];
    // The first whole page inside the block.
    let heap_pfn = ((heap.as_ptr() as u64).next_multiple_of(4096) - mm::va_of(0)) / 4096;
    let heap_frame = mm::mfn_of(heap_pfn);
    match gnttab::grant_access(0, heap_frame, true) {
        Err(gnttab::GrantError::NotShareable(_)) => {}
        other => return Err(format!("granting a heap frame gave {other:?}")),
    }
    let mut into_heap = xen_abi::grant_table::GnttabCopy { dest: op.source, source: op.dest, len: 8, ..op };
    into_heap.dest.ref_or_gmfn = heap_frame;
    match gnttab::copy(core::slice::from_mut(&mut into_heap)) {
        Err(gnttab::GrantError::NotShareable(_)) => {}
        other => return Err(format!("GNTTABOP_copy into a heap frame gave {other:?}")),
    }
    drop(heap);
    println!("grant: a heap frame is refused as a grant and as a copy's destination");
    // The copy landed in `target`; read it through a mapping slot of its frame. The
    // safe guest-frame mapper must refuse our own frame, by DOMID_SELF or by our domid.
    let slot = mm::MappingSlot::new().map_err(|e| format!("mapping slot: {e}"))?;
    let own_domid = KernelXen::new().await.map_err(fail("reading our domid"))?.domid();
    for domid in [xen_abi::event_channel::DOMID_SELF, own_domid] {
        match slot.map_guest_frame(domid, target.mfn(), true) {
            Err(mm::MmError::OwnFrame { .. }) => {}
            other => return Err(format!("map_guest_frame of our own frame as domain {domid} gave {other:?}")),
        }
    }
    // SAFETY: `target` is a `Page`, into which no Rust reference points; the mapping
    // is read-only and only `slot.read` (volatile copies) touches it before `unmap`.
    unsafe { slot.map_own_frame(target.mfn(), false) }.map_err(|e| format!("map_own_frame: {e}"))?;
    let mut copied = [0u8; 1000];
    slot.read(200, &mut copied);
    slot.unmap().map_err(|e| format!("unmap: {e}"))?;
    if copied.iter().enumerate().any(|(i, &b)| b != grant_pattern(seed, 100 + i)) {
        return Err("GNTTABOP_copy result differs from the source".into());
    }
    println!("grant: map_guest_frame refused our own frame (DOMID_SELF and domid {own_domid})");
    println!("grant: copy of 1000 bytes verified through a mapping slot");
    // A slot remapped from one frame to another reads the new frame at once: the guest
    // memory cache does this all the time, and a translation left in the TLB would
    // read (and write) the old frame.
    let other = mm::alloc_page().map_err(|e| format!("alloc_page: {e}"))?;
    mm::write_page(&other, 0, &[0xa5; 64]);
    // SAFETY: as above, for `target` and then `other` (both `Page`s, read-only mappings).
    unsafe { slot.map_own_frame(target.mfn(), false) }.map_err(|e| format!("map_own_frame: {e}"))?;
    let mut first = [0u8; 64];
    // (The read leaves the first frame's translation in the TLB.)
    slot.read(0, &mut first);
    // SAFETY: as above.
    unsafe { slot.map_own_frame(other.mfn(), false) }.map_err(|e| format!("map_own_frame: {e}"))?;
    let mut second = [0u8; 64];
    slot.read(0, &mut second);
    slot.unmap().map_err(|e| format!("unmap: {e}"))?;
    if second != [0xa5; 64] {
        return Err(format!("a slot remapped to another frame still read the first (read {:02x?})", &second[..8]));
    }
    println!("grant: a remapped slot reads its new frame");
    println!("grant: ok");
    Ok(())
}

/// Where in the shared page dom0's counter sits: 8-byte aligned, as a ring index
/// at the start of a ring page is.
const COUNTER_OFFSET: usize = 64;
/// Reads between looks at the clock.
const READS_PER_BATCH: u64 = 4096;

/// Grants dom0 a page in which dom0 increments a u32 as fast as it can, reads it
/// through `SharedPage::read_u32` (the ring-index path) for `seconds`, and publishes
/// in `data/tear-result` how many reads saw the value move and how many saw it go
/// backwards: a read torn across a byte carry (0x..ff -> 0x..00) is undercut by the
/// next read. dom0 judges; the image only counts.
pub async fn index_reads(seconds: u64) -> Result<()> {
    use xen_seams::SharedPage;
    let page = mm::alloc_page().map_err(|e| format!("alloc_page: {e}"))?;
    let gref = gnttab::grant_access(0, page.mfn(), false).map_err(|e| format!("grant_access: {e}"))?;
    xs::write(xs::NO_TX, "data/tear-ref", format!("{}", gref.0).as_bytes())
        .await
        .map_err(fail("publishing the grant"))?;
    // dom0 maps the page and starts counting from 1.
    let deadline = time::Deadline::after_ms(60_000);
    let first = loop {
        let value = page.read_u32(COUNTER_OFFSET);
        if value != 0 {
            break value;
        }
        if deadline.passed() {
            return Err("dom0 did not start counting within 60 s".into());
        }
        time::sleep(Duration::from_millis(1)).await;
    };
    let (mut reads, mut changes, mut violations, mut previous) = (0u64, 0u64, 0u64, first);
    let mut first_violation = None;
    let started = time::now_ns();
    let limit_ns = seconds.saturating_mul(1_000_000_000);
    while time::now_ns() - started < limit_ns {
        for _ in 0..READS_PER_BATCH {
            let value = page.read_u32(COUNTER_OFFSET);
            if value < previous {
                violations += 1;
                first_violation.get_or_insert((previous, value));
            } else if value != previous {
                changes += 1;
            }
            previous = value;
        }
        reads += READS_PER_BATCH;
    }
    let took_ms = (time::now_ns() - started) / 1_000_000;
    let worst = match first_violation {
        Some((before, after)) => format!(" first_violation={before:#x}->{after:#x}"),
        None => String::new(),
    };
    let result = format!(
        "reads={reads} changes={changes} violations={violations} first={first} last={previous} ms={took_ms}{worst}"
    );
    xs::write(xs::NO_TX, "data/tear-result", result.as_bytes()).await.map_err(fail("writing data/tear-result"))?;
    println!("indexreads: {result}");
    // The page goes back to the pool only once dom0 has let go of it.
    await_node("data/tear-unmapped", Duration::from_secs(60)).await?;
    if let Err(e) = gnttab::end_access(gref) {
        // Still granted: keep the page out of the pool for good.
        core::mem::forget(page);
        return Err(format!("end_access after dom0 unmapped: {e}"));
    }
    Ok(())
}

/// Maps a page dom0 granted us (GNTTABOP_map_grant_ref), checks dom0's pattern,
/// writes an answer into it and unmaps it.
pub async fn map_dom0_grant(seed: u8) -> Result<()> {
    let gref: u32 = await_node("data/dom0-grant-ref", Duration::from_secs(60))
        .await?
        .parse()
        .map_err(|_| "data/dom0-grant-ref is not a number")?;
    let mapping =
        gnttab::map_grant(0, gref, false).map_err(|e| format!("map_grant_ref of dom0's grant {gref}: {e}"))?;
    let mut page = alloc::vec![0u8; 2048];
    mapping.read(0, &mut page);
    if let Some(i) = (0..page.len()).find(|&i| page[i] != grant_pattern(seed, i)) {
        return Err(format!("dom0's page differs from the pattern at byte {i}"));
    }
    let answer = format!("image-was-here:{seed}");
    mapping.write(2048, answer.as_bytes());
    drop(mapping);
    xs::write(xs::NO_TX, "data/mapgrant-done", b"1").await.map_err(fail("writing data/mapgrant-done"))?;
    println!("mapgrant: read dom0's pattern, wrote the answer, unmapped");
    Ok(())
}

/// As a stub domain: writes to console 1 (the save channel, a file in dom0) and
/// console 3 (the guest's serial port, a pty in dom0), then echoes what dom0 types
/// on console 3 until it sends "quit" (bounded).
pub async fn consoles() -> Result<()> {
    use frontends::console::Console;
    let xen = KernelXen::new().await.map_err(fail("reading our domid"))?;
    let save = Console::connect(&xen, 1).await.map_err(fail("console 1"))?;
    save.write(b"rust-stubdom: console 1 (save channel) works\n").await.map_err(fail("writing console 1"))?;
    let serial = Console::connect(&xen, 3).await.map_err(fail("console 3"))?;
    serial.write(b"rust-stubdom: console 3 (guest serial) ready\n").await.map_err(fail("writing console 3"))?;
    println!("consoles: 1 and 3 connected");
    let deadline = time::Deadline::after_ms(120_000);
    let mut line = alloc::vec::Vec::new();
    loop {
        if deadline.passed() {
            return Err("no \"quit\" on console 3 within 120 s".into());
        }
        let mut buf = [0u8; 256];
        let n = serial.read(&mut buf, Duration::from_secs(1)).await.map_err(fail("reading console 3"))?;
        for &b in &buf[..n] {
            if b == b'\n' || b == b'\r' {
                if line == b"quit" {
                    save.close().await.map_err(fail("closing console 1"))?;
                    serial.close().await.map_err(fail("closing console 3"))?;
                    println!("consoles: ok");
                    return Ok(());
                }
                if !line.is_empty() {
                    let mut reply = b"echo: ".to_vec();
                    reply.extend_from_slice(&line);
                    reply.push(b'\n');
                    serial.write(&reply).await.map_err(fail("writing console 3"))?;
                    line.clear();
                }
            } else if line.len() < 200 {
                line.push(b);
            }
        }
    }
}

/// A libvchan echo service at data/vchan for dom0 (vchan-socket-proxy connects once
/// per unix client): each connection gets a greeting, then its bytes echoed back.
pub async fn vchan_echo(connections: u64) -> Result<()> {
    use frontends::vchan::{Orders, Server, VchanError};
    let xen = KernelXen::new().await.map_err(fail("reading our domid"))?;
    let mut server = Server::listen(&xen, 0, "data/vchan", Orders::DEFAULT).await.map_err(fail("vchan listen"))?;
    let mut echoed = 0u64;
    for n in 0..connections {
        server.accept(Duration::from_secs(120)).await.map_err(|e| format!("vchan accept #{n}: {e}"))?;
        server.write_all(b"rust-stubdom vchan echo\n").await.map_err(|e| format!("vchan greeting #{n}: {e}"))?;
        let mut buf = [0u8; 4096];
        loop {
            match server.read(&mut buf).await {
                Ok(k) => {
                    server.write_all(&buf[..k]).await.map_err(|e| format!("vchan echo #{n}: {e}"))?;
                    echoed += k as u64;
                }
                Err(VchanError::Closed) => break,
                Err(e) => return Err(format!("vchan read #{n}: {e}")),
            }
        }
    }
    server.shutdown().await.map_err(fail("vchan shutdown"))?;
    println!("vchan: served {connections} connections, echoed {echoed} bytes");
    Ok(())
}

/// Checks that every 512-byte sector in `buf` (starting at `first`) holds its
/// number xor `key` in each 8-byte word, as the dom0 side wrote it.
fn check_sectors(buf: &[u8], first: u64, key: u64) -> Result<()> {
    for (i, sector) in buf.chunks(512).enumerate() {
        let want = (first + i as u64) ^ key;
        for word in sector.chunks(8) {
            if u64::from_le_bytes(word.try_into().unwrap()) != want {
                return Err(format!("sector {} holds the wrong pattern", first + i as u64));
            }
        }
    }
    Ok(())
}

fn fill_sectors(buf: &mut [u8], first: u64, key: u64) {
    for (i, sector) in buf.chunks_mut(512).enumerate() {
        for word in sector.chunks_mut(8) {
            word.copy_from_slice(&((first + i as u64) ^ key).to_le_bytes());
        }
    }
}

/// The key dom0 expects in sectors the image wrote.
const WRITTEN_KEY: u64 = 0xa5a5_a5a5_a5a5_a5a5;

/// FNV-1a's 64-bit offset basis and prime, applied to little-endian u64 words: the
/// digest of what a disk held, which dom0 computes over its file the same way.
const DIGEST_START: u64 = 0xcbf2_9ce4_8422_2325;
const DIGEST_PRIME: u64 = 0x0000_0100_0000_01b3;

fn digest_words(mut digest: u64, bytes: &[u8]) -> u64 {
    for word in bytes.chunks_exact(8) {
        let mut le = [0u8; 8];
        le.copy_from_slice(word);
        digest = (digest ^ u64::from_le_bytes(le)).wrapping_mul(DIGEST_PRIME);
    }
    digest
}

/// Reads the whole disk `devid` and publishes the digest of what it read in
/// `data/blk-read` for dom0 to compare with its file (the image does not know the
/// pattern); unless the disk is read-only, writes 1 MiB of our own pattern at sector
/// 4096, flushes, reads it back.
pub async fn blk(devid: u32) -> Result<()> {
    use frontends::blkfront::{Disk, Options};
    let xen = KernelXen::new().await.map_err(fail("reading our domid"))?;
    let disk = Disk::connect(&xen, devid, Options::default()).await.map_err(fail("connecting the disk"))?;
    let info = disk.info().clone();
    println!(
        "blk: {devid} connected: {} sectors, sector size {}, read-only {}, cdrom {}, {:?}",
        info.sectors,
        info.sector_size,
        info.read_only,
        info.cdrom,
        disk.features()
    );
    let mut buf = alloc::vec![0u8; 1 << 20];
    let started = time::now_ns();
    let mut sector = 0;
    let mut digest = DIGEST_START;
    while sector < info.sectors {
        let n = ((info.sectors - sector) as usize * 512).min(buf.len());
        disk.read(sector, &mut buf[..n]).await.map_err(|e| format!("reading at sector {sector}: {e}"))?;
        digest = digest_words(digest, &buf[..n]);
        sector += n as u64 / 512;
    }
    let read_ns = time::now_ns() - started;
    let read = format!("devid={devid} bytes={} digest={digest:016x}", info.sectors * 512);
    xs::write(xs::NO_TX, "data/blk-read", read.as_bytes()).await.map_err(fail("writing data/blk-read"))?;
    if !info.read_only {
        fill_sectors(&mut buf, 4096, WRITTEN_KEY);
        disk.write(4096, &buf).await.map_err(fail("writing 1 MiB at sector 4096"))?;
        disk.flush().await.map_err(fail("flushing"))?;
        buf.fill(0);
        disk.read(4096, &mut buf).await.map_err(fail("reading back"))?;
        check_sectors(&buf, 4096, WRITTEN_KEY)?;
    }
    let stats = disk.stats();
    disk.close().await.map_err(fail("closing the disk"))?;
    println!(
        "blk: {devid} read {} MiB in {} ms ({read}){}; {stats:?}",
        info.sectors / 2048,
        read_ns / 1_000_000,
        if info.read_only { " (read-only: no write)" } else { ", wrote and flushed 1 MiB at sector 4096" }
    );
    println!("blk: ok");
    Ok(())
}

/// Throughput: reads the whole disk, then writes it, in 1 MiB calls, timed.
pub async fn blk_bench(devid: u32, options: frontends::blkfront::Options) -> Result<()> {
    use frontends::blkfront::Disk;
    let xen = KernelXen::new().await.map_err(fail("reading our domid"))?;
    let disk = Disk::connect(&xen, devid, options).await.map_err(fail("connecting the disk"))?;
    println!("blkbench: {:?}", disk.features());
    let sectors = disk.info().sectors;
    let mut buf = alloc::vec![0u8; 1 << 20];
    let bytes = sectors * 512;
    let t0 = time::now_ns();
    let mut s = 0;
    while s < sectors {
        let n = ((sectors - s) as usize * 512).min(buf.len());
        disk.read(s, &mut buf[..n]).await.map_err(|e| format!("read at {s}: {e}"))?;
        s += n as u64 / 512;
    }
    let t1 = time::now_ns();
    s = 0;
    while s < sectors {
        let n = ((sectors - s) as usize * 512).min(buf.len());
        disk.write(s, &buf[..n]).await.map_err(|e| format!("write at {s}: {e}"))?;
        s += n as u64 / 512;
    }
    disk.flush().await.map_err(fail("flush"))?;
    let t2 = time::now_ns();
    let disk_stats = disk.stats();
    disk.close().await.map_err(fail("closing the disk"))?;
    println!("blkbench: read {bytes} bytes in {} ns; wrote {bytes} bytes in {} ns", t1 - t0, t2 - t1);
    println!("blkbench: {:?}", disk_stats);
    Ok(())
}

/// Hot-plug: waits for dom0 to attach disk `devid` (`xl block-attach`), reads it,
/// and lets dom0 detach it, first while idle, then while reads are in flight.
/// Either way the disk must notice, fail what was in flight, and close cleanly.
/// For dom0 to judge, each round publishes `data/hotplug-result-<round>`: how the
/// disk ended (`error=backend-gone` is the backend leaving, as opposed to a timeout),
/// how many requests were still on the ring unanswered (`in_flight`), and how many
/// reads had completed. In round 2 the image first publishes
/// `data/hotplug-reading` once reads stream, so that dom0 detaches mid-stream.
pub async fn blk_hotplug(devid: u32) -> Result<()> {
    use frontends::blkfront::{Disk, Error, Options};
    let xen = KernelXen::new().await.map_err(fail("reading our domid"))?;
    use frontends::xenbus::{DeviceEvent, DeviceWatch};
    let mut devices = DeviceWatch::new(&xen, "vbd").await.map_err(fail("watching device/vbd"))?;
    xs::write(xs::NO_TX, "data/hotplug-ready", b"1").await.map_err(fail("writing data/hotplug-ready"))?;
    let mut buf = alloc::vec![0u8; 1 << 20];
    let kind = |error: &Error| match error {
        Error::BackendGone { .. } => "backend-gone",
        Error::Timeout { .. } => "timeout",
        _ => "other",
    };
    for round in 1..=2u32 {
        // The attach arrives as an event from the device watch.
        match devices.next(Duration::from_secs(120)).await.map_err(fail("device watch"))? {
            Some(DeviceEvent::Added(id)) if id == devid => {}
            other => return Err(format!("round {round}: expected vbd {devid} to be attached, got {other:?}")),
        }
        let disk =
            Disk::connect(&xen, devid, Options::default()).await.map_err(|e| format!("round {round}: connect: {e}"))?;
        disk.read(0, &mut buf).await.map_err(|e| format!("round {round}: first read: {e}"))?;
        check_sectors(&buf, 0, 0)?;
        xs::write(xs::NO_TX, "data/hotplug-connected", format!("{round}").as_bytes())
            .await
            .map_err(fail("writing data/hotplug-connected"))?;
        let (error, reads) = if round == 1 {
            // Idle: only the backend watch can notice the detach.
            let error = time::timeout(Duration::from_secs(120), disk.watch_backend())
                .await
                .map_err(|_| "round 1: no detach within 120 s")?;
            (error, 0)
        } else {
            let mut reads = 0u64;
            let sectors = disk.info().sectors;
            let deadline = time::Deadline::after_ms(120_000);
            let error = loop {
                let start = (reads * 2048) % sectors.saturating_sub(2048).max(1);
                match disk.read(start, &mut buf).await {
                    Ok(()) => {
                        check_sectors(&buf, start, 0)?;
                        reads += 1;
                    }
                    Err(e) => break e,
                }
                if reads == 3 {
                    // Reads stream: dom0 may detach now.
                    xs::write(xs::NO_TX, "data/hotplug-reading", b"1")
                        .await
                        .map_err(fail("writing data/hotplug-reading"))?;
                }
                if deadline.passed() {
                    return Err("round 2: no detach within 120 s".into());
                }
            };
            (error, reads)
        };
        let in_flight = disk.stats().in_flight;
        let result = format!("error={} in_flight={in_flight} reads={reads} ({error})", kind(&error));
        xs::write(xs::NO_TX, &format!("data/hotplug-result-{round}"), result.as_bytes())
            .await
            .map_err(fail("writing data/hotplug-result"))?;
        disk.close().await.map_err(|e| format!("round {round}: close: {e}"))?;
        println!("hotplug: round {round}: {result}; closed cleanly");
        // libxl removes the device's nodes once we are Closed.
        match devices.next(Duration::from_secs(60)).await.map_err(fail("device watch"))? {
            Some(DeviceEvent::Removed(id)) if id == devid => {}
            other => return Err(format!("round {round}: expected vbd {devid} to be removed, got {other:?}")),
        }
    }
    println!("hotplug: ok");
    Ok(())
}

/// The network: netfront + smoltcp at `ip`/`prefix` answering pings (smoltcp replies to
/// ICMP echo itself) and echoing TCP port 7, for `connections` connections.
pub async fn net(ip: [u8; 4], prefix: u8, connections: u64) -> Result<()> {
    use frontends::netfront::Netfront;
    use smoltcp::iface::{Config, Interface, SocketSet};
    use smoltcp::socket::tcp;
    use smoltcp::time::Instant;
    use smoltcp::wire::{IpAddress, IpCidr};
    let xen = KernelXen::new().await.map_err(fail("reading our domid"))?;
    let mut netdev = Netfront::connect(&xen, 0).await.map_err(fail("connecting vif 0"))?;
    let now = || Instant::from_micros((time::now_ns() / 1000) as i64);
    let mut config = Config::new(netdev.hardware_address());
    config.random_seed = time::now_ns();
    let mut iface = Interface::new(config, &mut netdev, now());
    iface.update_ip_addrs(|addrs| {
        let _ = addrs.push(IpCidr::new(IpAddress::v4(ip[0], ip[1], ip[2], ip[3]), prefix));
    });
    let mut sockets = SocketSet::new(alloc::vec![]);
    let socket =
        tcp::Socket::new(tcp::SocketBuffer::new(alloc::vec![0; 65536]), tcp::SocketBuffer::new(alloc::vec![0; 65536]));
    let echo = sockets.add(socket);
    sockets.get_mut::<tcp::Socket>(echo).listen(7).map_err(|e| format!("listen: {e:?}"))?;
    // A discard service on port 5001 for throughput runs.
    let sink_socket =
        tcp::Socket::new(tcp::SocketBuffer::new(alloc::vec![0; 65536]), tcp::SocketBuffer::new(alloc::vec![0; 1024]));
    let sink = sockets.add(sink_socket);
    sockets.get_mut::<tcp::Socket>(sink).listen(5001).map_err(|e| format!("listen: {e:?}"))?;
    let (mut sunk, mut sink_open) = (0u64, false);
    println!("net: {}.{}.{}.{}/{prefix} up, mac {:02x?}", ip[0], ip[1], ip[2], ip[3], netdev.mac());
    xs::write(xs::NO_TX, "data/net-ready", b"1").await.map_err(fail("writing data/net-ready"))?;
    let (mut served, mut echoed, mut was_open) = (0u64, 0u64, false);
    let deadline = time::Deadline::after_ms(300_000);
    let mut chunk = alloc::vec![0u8; 16384];
    let mut next_report = time::now_ns() + 5_000_000_000;
    while served < connections {
        if time::now_ns() > next_report {
            next_report = time::now_ns() + 5_000_000_000;
            log::info!("net: {:?}", netdev.stats());
        }
        if deadline.passed() {
            return Err(format!("served {served} of {connections} connections in 300 s"));
        }
        iface.poll(now(), &mut netdev, &mut sockets);
        let s = sockets.get_mut::<tcp::Socket>(echo);
        if s.can_recv() && s.can_send() {
            let room = (s.send_capacity() - s.send_queue()).min(chunk.len());
            let n = s.recv_slice(&mut chunk[..room]).map_err(|e| format!("recv: {e:?}"))?;
            s.send_slice(&chunk[..n]).map_err(|e| format!("send: {e:?}"))?;
            echoed += n as u64;
        }
        if s.is_open() {
            was_open = true;
        }
        if s.state() == tcp::State::CloseWait && s.send_queue() == 0 {
            s.close();
        }
        if s.state() == tcp::State::Closed && was_open {
            was_open = false;
            served += 1;
            s.listen(7).map_err(|e| format!("listen: {e:?}"))?;
        }
        let k = sockets.get_mut::<tcp::Socket>(sink);
        while k.can_recv() {
            sunk += k.recv(|d| (d.len(), d.len())).map_err(|e| format!("recv: {e:?}"))? as u64;
        }
        if k.is_open() {
            sink_open = true;
        }
        if k.state() == tcp::State::CloseWait {
            k.close();
        }
        if k.state() == tcp::State::Closed && sink_open {
            sink_open = false;
            served += 1;
            k.listen(5001).map_err(|e| format!("listen: {e:?}"))?;
        }
        iface.poll(now(), &mut netdev, &mut sockets);
        let delay = iface
            .poll_delay(now(), &sockets)
            .map(|d| Duration::from_micros(d.total_micros()))
            .unwrap_or(Duration::from_millis(100))
            .min(Duration::from_millis(100));
        netdev.wait(delay).await.map_err(fail("netfront"))?;
    }
    let stats = netdev.stats();
    netdev.close().await.map_err(fail("closing vif 0"))?;
    println!("net: served {served} connections, echoed {echoed} bytes, discarded {sunk} bytes; {stats:?}");
    println!("net: ok");
    Ok(())
}
