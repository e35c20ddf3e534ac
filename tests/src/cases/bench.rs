//! Benchmarks (`cargo xtask bench`): throughput of our frontends against the peer
//! the issues name, measured in the same test-bed boot. Each prints
//! `@@bench <name>| <value> <unit>`; xtask turns pairs `<x>/image` and `<x>/linux`
//! into ratios.

use crate::cases::kernel::pv_config_with;
use crate::cases::linux::{dd_mb_per_s, finish_linux, linux_job, patterned_disk, start_linux};
use crate::cases::net::{start_net_image, tcp_send_rate};
use crate::cases::runtime::finish;
use crate::harness::{self, Ctx};
use crate::xl;
use std::time::Duration;

/// One measured figure: (name, value, unit).
pub type Figure = (String, f64, &'static str);

pub struct Bench {
    pub name: &'static str,
    pub limit: Duration,
    pub run: fn(&mut Ctx) -> Result<Vec<Figure>, String>,
}

pub fn all() -> Vec<Bench> {
    let minutes = |m: u64| Duration::from_secs(60 * m);
    vec![
        Bench { name: "blk", limit: minutes(15), run: blk },
        Bench { name: "net", limit: minutes(15), run: net },
        Bench { name: "vchan", limit: minutes(15), run: vchan },
        Bench { name: "stubdom-size", limit: minutes(1), run: crate::cases::peer::bench_size },
        Bench { name: "guest-boot", limit: minutes(75), run: guest_boot },
        Bench { name: "stubdom-memory", limit: minutes(60), run: stubdom_memory },
        Bench { name: "peer-memory", limit: minutes(60), run: crate::cases::peer::bench_memory },
        Bench { name: "guest-net", limit: minutes(60), run: guest_net },
        Bench { name: "guest-disk", limit: minutes(40), run: guest_disk },
        Bench { name: "guest-portio-idle", limit: minutes(60), run: crate::cases::peer::bench_portio_idle },
        Bench { name: "cd-change", limit: minutes(45), run: crate::cases::cd_change::bench },
        // On the Xen 4.20 bed (cases::on_bed).
        Bench { name: "xen420-cd-insert", limit: minutes(30), run: crate::cases::xen420::bench_cd_insert },
    ]
}

/// TCP throughput through each emulated NIC (10 MiB each way, as
/// xen::hvm::<model>_ping_and_tcp), our stub domain against dom0 qemu-xen with the same
/// model: [`NET_ROUNDS`] exchanges in one boot each; medians (single exchanges under
/// TCG varied by a factor of two from one day to the next).
fn guest_net(ctx: &mut Ctx) -> Result<Vec<Figure>, String> {
    use crate::cases::hvm::{NicFigures, STUBDOM_MEMORY_MIB, nic_test, our_stub_domain};
    use crate::hvm_guest::DeviceModel;
    const NET_ROUNDS: usize = 3;
    let column = |rounds: &[NicFigures], f: fn(&NicFigures) -> f64| -> Vec<f64> { rounds.iter().map(f).collect() };
    let mut figures = Vec::new();
    for (model, driver) in [("rtl8139", "8139too"), ("e1000", "e1000")] {
        let ours = nic_test(
            ctx,
            &format!("bench-net-{model}"),
            our_stub_domain(STUBDOM_MEMORY_MIB),
            model,
            driver,
            "192.0.2.31",
            NET_ROUNDS,
        )?;
        // QEMU's rtl8139 is an RTL8139C+ (revision 0x20), which 8139too refuses ("use
        // 8139cp"): the guest drives it with 8139cp, in C+ mode, as any Linux guest of
        // dom0 qemu-xen with model=rtl8139 does.
        let qemu_driver = if model == "rtl8139" { "8139cp" } else { driver };
        let qemu = nic_test(
            ctx,
            &format!("bench-net-qemu-{model}"),
            DeviceModel::Dom0Qemu,
            model,
            qemu_driver,
            "192.0.2.32",
            NET_ROUNDS,
        )?;
        for (direction, f) in [
            ("to-guest", (|r| r.to_guest_mb_per_s) as fn(&NicFigures) -> f64),
            ("from-guest", |r| r.from_guest_mb_per_s),
        ] {
            let (mut a, mut b) = (column(&ours, f), column(&qemu, f));
            println!(
                "@@bench-detail guest-net| {model} {direction} MB/s per round: ours {a:.3?}, dom0 qemu-xen {b:.3?}"
            );
            figures.push((format!("guest-net-{model}-{direction}/image"), median(&mut a), "MB/s"));
            figures.push((format!("guest-net-{model}-{direction}/qemu-dom0"), median(&mut b), "MB/s"));
        }
    }
    Ok(figures)
}

/// The guest's sequential read of its emulated disk (`dd iflag=direct`, 32 MiB a round,
/// three rounds in one boot), our stub domain against dom0 qemu-xen and the Linux stub
/// domain peer on the same kind of file; medians. A peer that fails loses its row (the
/// reason is printed).
fn guest_disk(ctx: &mut Ctx) -> Result<Vec<Figure>, String> {
    use crate::cases::hvm::{STUBDOM_MEMORY_MIB, guest_disk_read_rates, our_stub_domain};
    use crate::cases::peer::{PEER_MEMORY_MIB, peer_stub_domain};
    use crate::hvm_guest::DeviceModel;
    let mut ours = guest_disk_read_rates(ctx, "bench-disk-stubdom", our_stub_domain(STUBDOM_MEMORY_MIB), 3)?;
    let mut qemu = guest_disk_read_rates(ctx, "bench-disk-qemu", DeviceModel::Dom0Qemu, 3)?;
    let mut figures = vec![
        ("guest-disk-read/image".to_string(), median(&mut ours), "MB/s"),
        ("guest-disk-read/qemu-dom0".to_string(), median(&mut qemu), "MB/s"),
    ];
    match guest_disk_read_rates(ctx, "bench-disk-peer", peer_stub_domain(PEER_MEMORY_MIB), 3) {
        Ok(mut peer) => figures.push(("guest-disk-read/linux-stubdom".to_string(), median(&mut peer), "MB/s")),
        Err(e) => println!("@@bench-detail guest-disk| the Linux stub domain failed: {e}"),
    }
    Ok(figures)
}

/// The Linux test guest with our stub domain (16 MiB), with dom0's qemu-xen and with
/// the Linux stub domain peer (128 MiB, libxl's default) as device model, in turn, two
/// rounds each; medians. From `xl create`: the stub domain's `state = running` and
/// `xl create` done (QMP `cont` answered, guest unpaused), the guest's first serial
/// byte (ISOLINUX) and its /init's first line; then, in the first round, 1000 QMP
/// `query-status` round trips through libxl's socket (median and p99). A peer that
/// fails to serve the guest loses its rows (the reason is printed), not the others.
fn guest_boot(ctx: &mut Ctx) -> Result<Vec<Figure>, String> {
    use crate::cases::hvm::{STUBDOM_MEMORY_MIB, measure_boot, our_stub_domain};
    use crate::cases::peer::{Measured, PEER_MEMORY_MIB, measure, peer_stub_domain, percentile};
    use crate::hvm_guest::DeviceModel;
    const QMP_ROUND_TRIPS: usize = 1000;
    let (mut ours, mut peer, mut qemu_first, mut qemu_init) = (vec![], vec![], vec![], vec![]);
    for round in 0..2 {
        let qmp = if round == 0 { QMP_ROUND_TRIPS } else { 0 };
        ours.push(measure(ctx, &format!("bench-boot-stubdom-{round}"), our_stub_domain(STUBDOM_MEMORY_MIB), qmp)?);
        let qemu = measure_boot(ctx, &format!("bench-boot-qemu-{round}"), DeviceModel::Dom0Qemu)?;
        qemu_first.push(qemu.first_byte.as_secs_f64());
        qemu_init.push(qemu.init.as_secs_f64());
        match measure(ctx, &format!("bench-boot-peer-{round}"), peer_stub_domain(PEER_MEMORY_MIB), qmp) {
            Ok(m) => peer.push(m),
            Err(e) => println!("@@bench-detail guest-boot| the Linux stub domain failed in round {round}: {e}"),
        }
    }
    let column = |runs: &[Measured], f: fn(&Measured) -> Duration| -> Vec<f64> {
        runs.iter().map(|m| f(m).as_secs_f64()).collect()
    };
    let mut figures = Vec::new();
    for (row, f) in [
        ("stubdom-start-running", (|m| m.start.running) as fn(&Measured) -> Duration),
        ("stubdom-start-unpaused", |m| m.start.created),
        ("guest-boot-first-byte", |m| m.boot.first_byte),
        ("guest-boot-init", |m| m.boot.init),
    ] {
        let (mut a, mut b) = (column(&ours, f), column(&peer, f));
        println!("@@bench-detail guest-boot| {row} s per round: ours {a:.1?}, linux stub domain {b:.1?}");
        figures.push((format!("{row}/image"), median(&mut a), "s"));
        if !b.is_empty() {
            figures.push((format!("{row}/linux-stubdom"), median(&mut b), "s"));
        }
    }
    println!("@@bench-detail guest-boot| dom0 qemu-xen: first byte {qemu_first:.1?} s, init {qemu_init:.1?} s");
    figures.push(("guest-boot-first-byte/qemu-dom0".to_string(), median(&mut qemu_first), "s"));
    figures.push(("guest-boot-init/qemu-dom0".to_string(), median(&mut qemu_init), "s"));
    for (who, first) in [("image", ours.first()), ("linux-stubdom", peer.first())] {
        let Some(first) = first else { continue };
        match &first.qmp_error {
            Some(e) => println!("@@bench-detail guest-boot| QMP round trips with {who} failed: {e}"),
            None => {
                let trips = &first.qmp_round_trips;
                println!("@@bench-detail guest-boot| {} QMP round trips with {who}", trips.len());
                figures.push((format!("qmp-query-status-median/{who}"), percentile(trips, 0.5) * 1e3, "ms"));
                figures.push((format!("qmp-query-status-p99/{who}"), percentile(trips, 0.99) * 1e3, "ms"));
            }
        }
    }
    Ok(figures)
}

/// The smallest `stubdomain_memory` (of 16, 12, 8, 6 MiB) with which the whole boot
/// test (xen::hvm::linux_boots_from_cd_through_stub_domain) passes.
fn stubdom_memory(ctx: &mut Ctx) -> Result<Vec<Figure>, String> {
    let mut smallest = None;
    for memory_mib in [16, 12, 8, 6] {
        match crate::cases::hvm::boot_test(ctx, memory_mib) {
            Ok(_) => {
                println!("@@bench-detail stubdom-memory| {memory_mib} MiB: the boot test passes");
                smallest = Some(memory_mib);
            }
            Err(e) => {
                let first = e.lines().next().unwrap_or_default().to_string();
                println!("@@bench-detail stubdom-memory| {memory_mib} MiB: fails ({first})");
                break;
            }
        }
    }
    let smallest = smallest.ok_or("the boot test fails even with 16 MiB")?;
    Ok(vec![("stubdom-memory-smallest/image".to_string(), f64::from(smallest), "MiB")])
}

/// Sequential read and write, 64 MiB, on a blkback (loop) disk in dom0's tmpfs,
/// 1 MiB at a time. Image and Linux take turns, three rounds; medians are reported.
fn blk(ctx: &mut Ctx) -> Result<Vec<(String, f64, &'static str)>, String> {
    const DISK: &str = "/tmp/bench-disk.img";
    const ROUNDS: usize = 3;
    patterned_disk(DISK, 64)?;
    let (mut image_read, mut image_write, mut linux_read, mut linux_write) = (vec![], vec![], vec![], vec![]);
    for round in 0..ROUNDS {
        let (r, w) = image_blk(ctx, DISK, round)?;
        image_read.push(r);
        image_write.push(w);
        let read = linux_job(ctx, &format!("bench-linux-read-{round}"), "blk-read", "", DISK)?;
        linux_read.push(dd_mb_per_s(&read).ok_or(read.clone())?);
        let write = linux_job(ctx, &format!("bench-linux-write-{round}"), "blk-write", "bench.mib=64", DISK)?;
        linux_write.push(dd_mb_per_s(&write).ok_or(write.clone())?);
    }
    for (name, v) in [
        ("image reads", &image_read),
        ("image writes", &image_write),
        ("linux reads", &linux_read),
        ("linux writes", &linux_write),
    ] {
        println!("@@bench-detail blk| {name} MB/s per round: {v:.1?}");
    }
    Ok(vec![
        ("blk-seq-read/image".to_string(), median(&mut image_read), "MB/s"),
        ("blk-seq-write/image".to_string(), median(&mut image_write), "MB/s"),
        ("blk-seq-read/linux".to_string(), median(&mut linux_read), "MB/s"),
        ("blk-seq-write/linux".to_string(), median(&mut linux_write), "MB/s"),
    ])
}

/// TCP throughput from dom0 into the guest (32 MiB into a discard service) over
/// netback and xenbr0: the image's netfront + smoltcp against Linux's netfront +
/// TCP stack. Three alternating rounds, medians.
fn net(ctx: &mut Ctx) -> Result<Vec<(String, f64, &'static str)>, String> {
    const BYTES: usize = 32 << 20;
    let (mut image, mut linux) = (vec![], vec![]);
    for round in 0..3 {
        let name = format!("bench-image-net-{round}");
        start_net_image(ctx, &name, "selftest=net ip=192.0.2.2/24 connections=1")?;
        image.push(tcp_send_rate("192.0.2.2", BYTES)?);
        finish(&name)?;
        xl::destroy(&name);
        let name = format!("bench-linux-net-{round}");
        start_linux(ctx, &name, "net-sink", "bench.ip=192.0.2.3", "vif = [ \"bridge=xenbr0\" ]\n")?;
        linux.push(tcp_send_rate("192.0.2.3", BYTES)?);
        finish_linux(&name)?;
        xl::destroy(&name);
    }
    println!("@@bench-detail net| image MB/s per round: {image:.1?}; linux MB/s per round: {linux:.1?}");
    Ok(vec![
        ("net-tcp-rx/image".to_string(), median(&mut image), "MB/s"),
        ("net-tcp-rx/linux".to_string(), median(&mut linux), "MB/s"),
    ])
}

/// vchan throughput: dom0's vchan-socket-proxy (libxl's QMP path) echoing 10 MiB
/// through the image's vchan server vs through an echo server on Xen's libxenvchan
/// (tests/dom0/vchan-echo.c) in the Linux domU; three alternating rounds.
fn vchan(ctx: &mut Ctx) -> Result<Vec<(String, f64, &'static str)>, String> {
    use crate::cases::vchan::{echo_exchange, start_proxy};
    const BYTES: usize = 10 << 20;
    let rate = |d: Duration| BYTES as f64 / d.as_secs_f64() / 1e6;
    let (mut image, mut linux) = (vec![], vec![]);
    for round in 0..3 {
        let name = format!("bench-image-vchan-{round}");
        let domid = crate::cases::runtime::start_image(ctx, &name, "selftest=vchan connections=1")?;
        let proxy = start_proxy(domid, &format!("/local/domain/{domid}/data/vchan"))?;
        image.push(rate(echo_exchange(true, BYTES)?));
        drop(proxy);
        finish(&name)?;
        xl::destroy(&name);
        let name = format!("bench-linux-vchan-{round}");
        start_linux(ctx, &name, "vchan-echo", "", "")?;
        let domid = xl::domid(&name)?;
        let proxy = start_proxy(domid, &format!("/local/domain/{domid}/data/vchan"))?;
        linux.push(rate(echo_exchange(false, BYTES)?));
        drop(proxy);
        finish_linux(&name)?;
        xl::destroy(&name);
    }
    println!("@@bench-detail vchan| image MB/s per round: {image:.2?}; linux MB/s per round: {linux:.2?}");
    Ok(vec![
        ("vchan-echo/image".to_string(), median(&mut image), "MB/s"),
        ("vchan-echo/linux".to_string(), median(&mut linux), "MB/s"),
    ])
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// The image's blkbench self-test: (read MB/s, write MB/s).
fn image_blk(ctx: &mut Ctx, disk: &str, round: usize) -> Result<(f64, f64), String> {
    let name = &format!("bench-image-blk-{round}");
    let cfg = ctx.prepare_domain(
        name,
        &pv_config_with(name, 16, "selftest=blkbench devid=51712", &format!("disk = [ \"{disk},raw,xvda,rw\" ]\n")),
    )?;
    xl::create(&cfg)?;
    let log = finish(name)?;
    let line =
        log.lines().find(|l| l.starts_with("blkbench: read ")).ok_or_else(|| format!("no blkbench line:\n{log}"))?;
    parse_blkbench(line).ok_or_else(|| format!("cannot read {line:?}"))
}

/// "blkbench: read B bytes in N ns; wrote B bytes in M ns" -> (read MB/s, write MB/s).
fn parse_blkbench(line: &str) -> Option<(f64, f64)> {
    let numbers: Vec<f64> = line.split_whitespace().filter_map(|w| w.trim_end_matches(';').parse().ok()).collect();
    match numbers[..] {
        [rb, rn, wb, wn] if rn > 0.0 && wn > 0.0 => Some((rb / rn * 1e3, wb / wn * 1e3)),
        _ => None,
    }
}

/// Runs every benchmark of test bed `bed` whose name contains `filter`, each with a
/// time limit.
pub fn run(filter: &str, bed: &str) -> usize {
    let mut failed = 0;
    for b in all().into_iter().filter(|b| crate::selected(filter, b.name) && super::on_bed(b.name, bed)) {
        println!("@@bench-start {}", b.name);
        let mut ctx = Ctx::default();
        let (tx, rx) = std::sync::mpsc::channel();
        let run = b.run;
        std::thread::spawn(move || {
            let result = run(&mut ctx);
            let _ = tx.send((result, ctx));
        });
        match rx.recv_timeout(b.limit) {
            Ok((Ok(results), ctx)) => {
                harness::clean_up(&ctx);
                for (name, value, unit) in results {
                    println!("@@bench {name}| {value:.3} {unit}");
                }
            }
            Ok((Err(e), ctx)) => {
                harness::clean_up(&ctx);
                failed += 1;
                println!("@@bench-failed {}| {e}", b.name);
            }
            Err(_) => {
                failed += 1;
                println!("@@bench-failed {}| no result within 900 s", b.name);
            }
        }
    }
    println!("@@bench-done failed={failed}");
    failed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_blkbench_lines() {
        let (r, w) =
            parse_blkbench("blkbench: read 67108864 bytes in 1000000000 ns; wrote 67108864 bytes in 2000000000 ns")
                .unwrap();
        assert!((r - 67.108864).abs() < 1e-6 && (w - 33.554432).abs() < 1e-6);
        assert_eq!(parse_blkbench("blkbench: read 5 bytes in 0 ns; wrote 5 bytes in 0 ns"), None);
    }
}
