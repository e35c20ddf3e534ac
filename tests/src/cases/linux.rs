//! A Linux PV domU in the test bed: the peer the benchmarks compare our frontends
//! with, on the same dom0 backends. Its /init (tests/dom0/domU-init) runs one job
//! named on its command line and prints `DOMU-RESULT ...`.

use crate::harness::{Ctx, console_log};
use crate::{proc, xl};
use std::time::Duration;

/// Starts the Linux domU with `mode` (its /init's job), extra command-line words and
/// extra xl.cfg lines; it powers off when the job is done.
pub fn start_linux(ctx: &mut Ctx, name: &str, mode: &str, extra: &str, cfg_extra: &str) -> Result<(), String> {
    let cfg = ctx.prepare_domain(
        name,
        &format!(
            "name = \"{name}\"\ntype = \"pv\"\nkernel = \"/guest/linux-domU\"\nramdisk = \"/guest/linux-domU-initrd.gz\"\n\
             extra = \"console=hvc0 quiet bench.mode={mode} {extra}\"\nmemory = 256\nvcpus = 1\n\
             on_poweroff = \"preserve\"\non_crash = \"preserve\"\n{cfg_extra}"
        ),
    )?;
    xl::create(&cfg)
}

/// Waits for the Linux domU's job to end; returns its console log.
pub fn finish_linux(name: &str) -> Result<String, String> {
    xl::wait_shutdown(name, Duration::from_secs(180))?;
    proc::poll(Duration::from_secs(5), Duration::from_millis(100), || {
        let log = console_log(name);
        log.contains("DOMU-DONE").then_some(log)
    })
    .ok_or_else(|| format!("the Linux domU did not finish its job:\n{}", console_log(name)))
}

/// Runs the Linux domU with `mode` and a disk on `disk_image`; returns its
/// `DOMU-RESULT` line with dd's byte count.
pub fn linux_job(ctx: &mut Ctx, name: &str, mode: &str, extra: &str, disk_image: &str) -> Result<String, String> {
    start_linux(ctx, name, mode, extra, &format!("disk = [ \"{disk_image},raw,xvda,rw\" ]\n"))?;
    let log = finish_linux(name)?;
    log.lines()
        .filter_map(|l| l.split_once("DOMU-RESULT ").map(|(_, r)| r.to_string()))
        .find(|r| r.contains(" bytes ") && r.contains(" copied"))
        .ok_or_else(|| format!("no DOMU-RESULT line with dd's byte count:\n{log}"))
}

/// Throughput in MB/s from a summary line in dd's form
/// ("67108864 bytes (67 MB, 64 MiB) copied, 1.2 s, 55.9 MB/s"; the domU prints
/// "<bytes> bytes copied, <seconds> s").
pub fn dd_mb_per_s(line: &str) -> Option<f64> {
    let (bytes, rest) = line.split_once(" bytes")?;
    let secs = rest.split(", ").find_map(|part| part.strip_suffix(" s"))?;
    Some(bytes.trim().parse::<f64>().ok()? / secs.trim().parse::<f64>().ok()? / 1e6)
}

/// A disk image of `mib` MiB whose every 512-byte sector holds its own number.
pub fn patterned_disk(path: &str, mib: u64) -> Result<(), String> {
    let mut data = vec![0u8; (mib << 20) as usize];
    for (sector, chunk) in data.chunks_mut(512).enumerate() {
        for word in chunk.chunks_mut(8) {
            word.copy_from_slice(&(sector as u64).to_le_bytes());
        }
    }
    std::fs::write(path, data).map_err(|e| format!("{path}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_dd_summaries() {
        let r = dd_mb_per_s("67108864 bytes (67 MB, 64 MiB) copied, 1.2 s, 55.9 MB/s").unwrap();
        assert!((r - 55.924).abs() < 0.01, "{r}");
        assert_eq!(dd_mb_per_s("dd: error"), None);
        let r = dd_mb_per_s("16777216 bytes copied, 0.500000 s").unwrap();
        assert!((r - 33.554).abs() < 0.01, "{r}");
    }
}
