//! blkfront in the image against dom0's real block backends: Linux blkback (the
//! guest's disks: phy on a loop device) and dom0 QEMU's qdisk (what libxl uses for
//! a stub domain's CD-ROM), and hot attach/detach with `xl block-attach/-detach`.

use crate::cases::kernel::pv_config_with;
use crate::cases::linux::patterned_disk;
use crate::cases::runtime::finish;
use crate::harness::{self, Ctx, Test, expect_contains};
use crate::xs::{self, data_path};
use crate::{proc, xl};
use std::process::Command;
use std::time::{Duration, Instant};

pub fn tests() -> Vec<Test> {
    vec![
        Test { name: "xen::blk::blkback_64_mib_read_write_flush", limit: Duration::from_secs(300), run: blkback },
        Test { name: "xen::blk::qdisk_cdrom_read", limit: Duration::from_secs(300), run: qdisk_cdrom },
        Test {
            name: "xen::blk::hot_attach_and_detach_idle_and_in_flight",
            limit: Duration::from_secs(400),
            run: hotplug,
        },
    ]
}

/// Reads sector `n` of a disk image.
fn sector(image: &[u8], n: usize) -> &[u8] {
    &image[n * 512..(n + 1) * 512]
}

fn holds(sector: &[u8], value: u64) -> bool {
    sector.chunks(8).all(|w| u64::from_le_bytes(w.try_into().unwrap()) == value)
}

/// The image reads dom0's 64 MiB pattern, writes 1 MiB at sector 4096 and flushes;
/// dom0 checks the file after the domain is gone.
fn blkback(ctx: &mut Ctx) -> Result<(), String> {
    const IMAGE: &str = "/tmp/blkback.img";
    patterned_disk(IMAGE, 64)?;
    let name = "blk-test";
    let cfg = ctx.prepare_domain(
        name,
        &pv_config_with(name, 16, "selftest=blk devid=51712", "disk = [ \"/tmp/blkback.img,raw,xvda,rw\" ]\n"),
    )?;
    let before = std::fs::read(IMAGE).map_err(|e| format!("{IMAGE}: {e}"))?;
    xl::create(&cfg)?;
    let domid = xl::domid(name)?;
    let log = finish(name)?;
    let read = xs::read(&data_path(domid, "blk-read"));
    xl::destroy(name);
    expect_read(read, 51712, &before)?;
    expect_contains(&log, "blk: ok", "console log")?;
    let data = std::fs::read(IMAGE).map_err(|e| e.to_string())?;
    for n in [0, 4095, 6144, 131071] {
        if !holds(sector(&data, n), n as u64) {
            return Err(format!("sector {n}, which the image must not write, changed"));
        }
    }
    for n in 4096..6144 {
        if !holds(sector(&data, n), n as u64 ^ 0xa5a5_a5a5_a5a5_a5a5) {
            return Err(format!("sector {n} does not hold what the image wrote"));
        }
    }
    let line = log.lines().find(|l| l.contains("blk: 51712 read ")).unwrap_or_default();
    println!("@@metric xen::blk::blkback_64_mib_read_write_flush| {line}");
    Ok(())
}

/// FNV-1a's 64-bit offset basis and prime over little-endian u64 words: the digest
/// the image publishes of what it read (kernel/src/selftest/peers.rs).
fn digest(bytes: &[u8]) -> u64 {
    bytes.chunks_exact(8).fold(0xcbf2_9ce4_8422_2325, |digest, word| {
        (digest ^ u64::from_le_bytes(word.try_into().unwrap_or_default())).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The image's `data/blk-read` must name the whole of `disk` with its digest.
fn expect_read(published: Option<String>, devid: u32, disk: &[u8]) -> Result<(), String> {
    let want = format!("devid={devid} bytes={} digest={:016x}", disk.len(), digest(disk));
    match published {
        Some(got) if got == want => Ok(()),
        Some(got) => Err(format!("the image read {got:?}; dom0's file is {want:?}")),
        None => Err("the image published no data/blk-read".into()),
    }
}

/// A disk image of `mib` MiB whose every 8-byte word is a function of `key` and its
/// position, so that only a reader of this run's file can know its digest.
fn nonce_disk(path: &str, mib: u64, key: u64) -> Result<Vec<u8>, String> {
    let mut data = vec![0u8; (mib << 20) as usize];
    for (i, word) in data.chunks_exact_mut(8).enumerate() {
        // splitmix64 of (key + i): every word differs, none is guessable without key.
        let mut z = key.wrapping_add((i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        word.copy_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    std::fs::write(path, &data).map_err(|e| format!("{path}: {e}"))?;
    Ok(data)
}

/// A CD-ROM image served by dom0 QEMU's qdisk backend, read-only, as libxl attaches
/// a stub domain's CD-ROM. dom0 fills it with this run's nonce pattern; the image
/// publishes the digest of what it read and dom0 compares.
fn qdisk_cdrom(ctx: &mut Ctx) -> Result<(), String> {
    const IMAGE: &str = "/tmp/cdrom.iso";
    let key = u64::from_str_radix(&harness::nonce()[..16], 16).map_err(|e| format!("nonce: {e}"))?;
    let disk = nonce_disk(IMAGE, 8, key)?;
    let name = "cdrom-test";
    let cfg = ctx.prepare_domain(
        name,
        &pv_config_with(
            name,
            16,
            "selftest=blk devid=51728",
            "disk = [ \"format=raw, vdev=xvdb, access=ro, devtype=cdrom, backendtype=qdisk, target=/tmp/cdrom.iso\" ]\n",
        ),
    )?;
    xl::create(&cfg)?;
    let domid = xl::domid(name)?;
    let log = finish(name)?;
    expect_read(xs::read(&data_path(domid, "blk-read")), 51728, &disk)?;
    expect_contains(&log, "(read-only: no write)", "console log")?;
    let line = log.lines().find(|l| l.contains("connected")).unwrap_or_default();
    println!("@@metric xen::blk::qdisk_cdrom_read| {line}; digest of 8 MiB of nonce {key:016x} matches dom0's");
    Ok(())
}

/// `xl block-attach|block-detach ...`; a failure reports xl's verbose log and the
/// domain's vbd backends.
pub fn xl_block(args: &[&str]) -> Result<(), String> {
    let out = proc::run(Command::new("xl").arg("-vvv").args(args), Duration::from_secs(120))?;
    if out.success {
        return Ok(());
    }
    let backends = args
        .get(1)
        .and_then(|dom| {
            proc::run(
                Command::new("xenstore-ls").arg(format!("/local/domain/0/backend/vbd/{dom}")),
                Duration::from_secs(20),
            )
            .ok()
        })
        .map(|o| o.stdout)
        .unwrap_or_default();
    Err(format!(
        "xl {}: {}{}\nbackend/vbd/{}:\n{backends}",
        args.join(" "),
        out.stdout,
        out.stderr,
        args.get(1).unwrap_or(&"")
    ))
}

/// blkback's count of read requests for vbd `devid` of `domid` (sysfs statistics).
fn blkback_read_requests(domid: u32, devid: u32) -> Result<u64, String> {
    let path = format!("/sys/bus/xen-backend/devices/vbd-{domid}-{devid}/statistics/rd_req");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    text.trim().parse().map_err(|e| format!("{path} holds {text:?}: {e}"))
}

/// One round's `data/hotplug-result-<round>`: how the disk ended, requests left
/// unanswered on the ring, reads completed.
#[derive(Debug, PartialEq, Eq)]
struct HotplugResult {
    error: String,
    in_flight: u64,
    reads: u64,
}

fn parse_hotplug_result(text: &str) -> Option<HotplugResult> {
    let field = |key: &str| text.split_whitespace().find_map(|w| w.strip_prefix(key)?.strip_prefix('='));
    Some(HotplugResult {
        error: field("error")?.to_string(),
        in_flight: field("in_flight")?.parse().ok()?,
        reads: field("reads")?.parse().ok()?,
    })
}

/// The detach must end the disk with the backend's departure, not a timeout; in
/// round 2 with requests still in flight and reads done before it.
fn judge_hotplug_round(round: u32, result: &HotplugResult) -> Result<(), String> {
    if result.error != "backend-gone" {
        return Err(format!("round {round}: the disk ended with {:?}, not the backend's departure", result.error));
    }
    match round {
        1 if result.in_flight != 0 => Err(format!("round 1: {} requests in flight on an idle disk", result.in_flight)),
        2 if result.in_flight == 0 => {
            Err("round 2: no request was in flight when the backend left (the detach missed the reads)".into())
        }
        2 if result.reads < 3 => Err(format!("round 2: only {} reads before the detach", result.reads)),
        _ => Ok(()),
    }
}

/// `xl block-attach` a disk to the running image, `xl block-detach` it while the
/// image is idle, attach again, detach while reads are in flight. dom0 checks from
/// blkback's own counters that reads were streaming when it detached, and from the
/// image's published counts that requests were in flight and failed with the
/// backend's departure, promptly, not with a timeout.
fn hotplug(ctx: &mut Ctx) -> Result<(), String> {
    const IMAGE: &str = "/tmp/hotplug.img";
    const DEVID: u32 = 51744;
    patterned_disk(IMAGE, 16)?;
    let name = "hotplug-test";
    let domid = crate::cases::runtime::start_image(ctx, name, &format!("selftest=blkhotplug devid={DEVID}"))?;
    let dom = domid.to_string();
    let limit = Duration::from_secs(120);
    xs::wait_for(&data_path(domid, "hotplug-ready"), limit, |v| v == "1")?;
    let mut metrics = Vec::new();
    for round in [1u32, 2] {
        xl_block(&["block-attach", &dom, "/tmp/hotplug.img,raw,xvdc,rw"])?;
        xs::wait_for(&data_path(domid, "hotplug-connected"), limit, |v| v == round.to_string())?;
        if round == 2 {
            xs::wait_for(&data_path(domid, "hotplug-reading"), limit, |v| v == "1")?;
            // blkback's own count shows reads arriving right up to the detach.
            let first = blkback_read_requests(domid, DEVID)?;
            std::thread::sleep(Duration::from_millis(200));
            let second = blkback_read_requests(domid, DEVID)?;
            if second <= first {
                return Err(format!("blkback's rd_req stayed at {first} over 200 ms: no reads to detach under"));
            }
            metrics.push(format!("blkback rd_req {first} -> {second} in the 200 ms before the detach"));
        }
        let detached = Instant::now();
        xl_block(&["block-detach", &dom, "xvdc"])?;
        // The image noticed promptly: well inside blkfront's 30 s request timeout.
        let text =
            xs::wait_for(&data_path(domid, &format!("hotplug-result-{round}")), Duration::from_secs(20), |_| true)?;
        let noticed_s = detached.elapsed().as_secs_f64();
        let result =
            parse_hotplug_result(&text).ok_or_else(|| format!("cannot read hotplug-result-{round}: {text:?}"))?;
        judge_hotplug_round(round, &result)?;
        metrics.push(format!("round {round}: {text} (seen {noticed_s:.1} s after the detach began)"));
    }
    let log = finish(name)?;
    expect_contains(&log, "hotplug: ok", "console log")?;
    for metric in metrics {
        println!("@@metric xen::blk::hot_attach_and_detach_idle_and_in_flight| {metric}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_are_fnv1a_over_little_endian_words() {
        assert_eq!(digest(&[]), 0xcbf2_9ce4_8422_2325);
        // One word of zeros: the basis times the prime.
        assert_eq!(digest(&[0; 8]), 0xcbf2_9ce4_8422_2325u64.wrapping_mul(0x0000_0100_0000_01b3));
        assert_ne!(digest(&[1, 0, 0, 0, 0, 0, 0, 0]), digest(&[0, 0, 0, 0, 0, 0, 0, 1]));
        let disk = [7u8; 16];
        let want = format!("devid=5 bytes=16 digest={:016x}", digest(&disk));
        assert_eq!(expect_read(Some(want), 5, &disk), Ok(()));
        assert!(expect_read(Some("devid=5 bytes=16 digest=0".into()), 5, &disk).is_err());
        assert!(expect_read(None, 5, &disk).is_err());
    }

    #[test]
    fn hotplug_results_are_read_and_judged() {
        let text = "error=backend-gone in_flight=2 reads=40 (blkfront: backend went to Closing)";
        let result = parse_hotplug_result(text).unwrap();
        assert_eq!(result, HotplugResult { error: "backend-gone".into(), in_flight: 2, reads: 40 });
        assert_eq!(judge_hotplug_round(2, &result), Ok(()));
        assert!(judge_hotplug_round(1, &result).is_err(), "in flight on an idle disk");
        let missed = HotplugResult { in_flight: 0, ..parse_hotplug_result(text).unwrap() };
        assert!(judge_hotplug_round(2, &missed).unwrap_err().contains("no request was in flight"));
        let silent = HotplugResult { error: "timeout".into(), ..parse_hotplug_result(text).unwrap() };
        assert!(judge_hotplug_round(2, &silent).unwrap_err().contains("not the backend's departure"));
        let idle = parse_hotplug_result("error=backend-gone in_flight=0 reads=0 (gone)").unwrap();
        assert_eq!(judge_hotplug_round(1, &idle), Ok(()));
    }
}
