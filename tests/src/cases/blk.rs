//! blkfront in the image against dom0's real block backends: Linux blkback (the
//! guest's disks: phy on a loop device) and dom0 QEMU's qdisk (what libxl uses for
//! a stub domain's CD-ROM), and hot attach/detach with `xl block-attach/-detach`.

use crate::cases::kernel::pv_config_with;
use crate::cases::linux::patterned_disk;
use crate::cases::runtime::finish;
use crate::harness::{Ctx, Test, expect_contains};
use crate::xl;
use std::time::Duration;

pub fn tests() -> Vec<Test> {
    vec![
        Test { name: "xen::blk::blkback_64_mib_read_write_flush", limit: Duration::from_secs(300), run: blkback },
        Test { name: "xen::blk::qdisk_cdrom_read", limit: Duration::from_secs(300), run: qdisk_cdrom },
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
    let cfg = ctx.prepare_domain(name, &pv_config_with(name, 16, "selftest=blk devid=51712", "disk = [ \"/tmp/blkback.img,raw,xvda,rw\" ]\n"))?;
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
