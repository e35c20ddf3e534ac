//! Tests of the test bed itself, not of the image: an HVM guest with dom0's QEMU as
//! device model reaches SeaBIOS, and a Linux PV domU reads its disk through dom0's
//! blkback. They show that the machinery the image's tests (and the benchmarks'
//! Linux peer) stand on works; the image never runs in them.

use crate::cases::hvm::seabios_after_hvmloader;
use crate::cases::linux::{dd_mb_per_s, linux_job, patterned_disk};
use crate::harness::{Ctx, Test};
use crate::{proc, xl};
use std::time::Duration;

pub fn tests() -> Vec<Test> {
    vec![
        Test {
            name: "xen::testbed::hvm_guest_reaches_seabios",
            limit: Duration::from_secs(180),
            run: guest_reaches_seabios,
        },
        Test {
            name: "xen::testbed::linux_domU_reads_its_disk_with_dd",
            limit: Duration::from_secs(240),
            run: domu_reads_disk,
        },
    ]
}

/// A diskless HVM guest with dom0's QEMU as device model: hvmloader must hand over
/// to SeaBIOS, whose banner reaches the hypervisor log through the debug port.
fn guest_reaches_seabios(ctx: &mut Ctx) -> Result<(), String> {
    let name = "hvm-seabios";
    let cfg = ctx.prepare_domain(
        name,
        "name = \"hvm-seabios\"\ntype = \"hvm\"\nmemory = 32\nvcpus = 1\nvnc = 0\nsdl = 0\nnographic = 1\n\
         vga = \"none\"\nboot = \"c\"\ndevice_model_version = \"qemu-xen\"\non_poweroff = \"destroy\"\n\
         on_reboot = \"destroy\"\non_crash = \"destroy\"\n",
    )?;
    xl::create(&cfg)?;
    let domid = xl::domid(name)?;
    proc::poll(Duration::from_secs(120), Duration::from_secs(1), || {
        seabios_after_hvmloader(&xl::dmesg().ok()?, domid).then_some(())
    })
    .ok_or_else(|| {
        let tag = format!("(d{domid})");
        let lines: Vec<String> =
            xl::dmesg().unwrap_or_default().lines().filter(|l| l.contains(&tag)).map(String::from).collect();
        format!("no SeaBIOS banner after hvmloader within 120 s; {tag} lines of xl dmesg:\n{}", lines.join("\n"))
    })
}

fn domu_reads_disk(ctx: &mut Ctx) -> Result<(), String> {
    patterned_disk("/tmp/linux-disk.img", 16)?;
    let line = linux_job(ctx, "linux-dd", "blk-read", "", "/tmp/linux-disk.img")?;
    let rate = dd_mb_per_s(&line).filter(|r| r.is_finite()).ok_or_else(|| format!("cannot read dd's line {line:?}"))?;
    if !line.starts_with("16777216 bytes") {
        return Err(format!("dd read {line:?}, not the whole 16 MiB"));
    }
    println!("@@metric xen::testbed::linux_domU_reads_its_disk_with_dd| {rate:.1} MB/s ({line})");
    Ok(())
}
