//! blkfront in the image against dom0's real block backends: Linux blkback (the
//! guest's disks: phy on a loop device) and dom0 QEMU's qdisk (what libxl uses for
//! a stub domain's CD-ROM), and hot attach/detach with `xl block-attach/-detach`.

use crate::cases::kernel::pv_config_with;
use crate::cases::linux::patterned_disk;
use crate::cases::runtime::finish;
use crate::harness::{Ctx, Test, expect_contains};
use crate::xs::{self, data_path};
use crate::{proc, xl};
use std::process::Command;
use std::time::Duration;

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
    xl::create(&cfg)?;
    let log = finish(name)?;
    xl::destroy(name);
    expect_contains(&log, "blk: 51712 read and verified 64 MiB", "console log")?;
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
    let line = log.lines().find(|l| l.contains("read and verified")).unwrap_or_default();
    println!("@@metric xen::blk::blkback_64_mib_read_write_flush| {line}");
    Ok(())
}

/// A CD-ROM image served by dom0 QEMU's qdisk backend, read-only, as libxl attaches
/// a stub domain's CD-ROM.
fn qdisk_cdrom(ctx: &mut Ctx) -> Result<(), String> {
    const IMAGE: &str = "/tmp/cdrom.iso";
    patterned_disk(IMAGE, 8)?;
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
    let log = finish(name)?;
    expect_contains(&log, "blk: 51728 read and verified 8 MiB in ", "console log")?;
    expect_contains(&log, "(read-only: no write)", "console log")?;
    let line = log.lines().find(|l| l.contains("connected")).unwrap_or_default();
    println!("@@metric xen::blk::qdisk_cdrom_read| {line}");
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

/// `xl block-attach` a disk to the running image, `xl block-detach` it while the
/// image is idle, attach again, detach while reads are in flight.
fn hotplug(ctx: &mut Ctx) -> Result<(), String> {
    const IMAGE: &str = "/tmp/hotplug.img";
    patterned_disk(IMAGE, 16)?;
    let name = "hotplug-test";
    let domid = crate::cases::runtime::start_image(ctx, name, "selftest=blkhotplug devid=51744")?;
    let dom = domid.to_string();
    let limit = Duration::from_secs(120);
    xs::wait_for(&data_path(domid, "hotplug-ready"), limit, |v| v == "1")?;
    for round in ["1", "2"] {
        xl_block(&["block-attach", &dom, "/tmp/hotplug.img,raw,xvdc,rw"])?;
        xs::wait_for(&data_path(domid, "hotplug-connected"), limit, |v| v == round)?;
        if round == "2" {
            std::thread::sleep(Duration::from_millis(500));
        }
        xl_block(&["block-detach", &dom, "xvdc"])?;
    }
    let log = finish(name)?;
    expect_contains(&log, "hotplug: round 1: detached while idle: ", "console log")?;
    expect_contains(&log, "hotplug: round 2: detached during reads after ", "console log")?;
    expect_contains(&log, "hotplug: ok", "console log")?;
    for l in log.lines().filter(|l| l.starts_with("hotplug: round")) {
        println!("@@metric xen::blk::hot_attach_and_detach_idle_and_in_flight| {l}");
    }
    Ok(())
}
