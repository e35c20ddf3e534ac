//! Benchmarks (`cargo xtask bench`): throughput of our frontends against the peer
//! the issues name, measured in the same test-bed boot. Each prints
//! `@@bench <name>| <value> <unit>`; xtask turns pairs `<x>/image` and `<x>/linux`
//! into ratios.

use crate::cases::linux::{dd_mb_per_s, linux_job, patterned_disk};
use crate::harness::{self, Ctx};
use std::time::Duration;

pub struct Bench {
    pub name: &'static str,
    pub run: fn(&mut Ctx) -> Result<Vec<(String, f64, &'static str)>, String>,
}

pub fn all() -> Vec<Bench> {
    vec![Bench { name: "blk", run: blk }]
}

/// Sequential read and write, 64 MiB, on a blkback (loop) disk in dom0's tmpfs.
fn blk(ctx: &mut Ctx) -> Result<Vec<(String, f64, &'static str)>, String> {
    const DISK: &str = "/tmp/bench-disk.img";
    patterned_disk(DISK, 64)?;
    let mut results = Vec::new();
    let read = linux_job(ctx, "bench-linux-read", "blk-read", "", DISK)?;
    results.push(("blk-seq-read/linux".to_string(), dd_mb_per_s(&read).ok_or(read.clone())?, "MB/s"));
    let write = linux_job(ctx, "bench-linux-write", "blk-write", "bench.mib=64", DISK)?;
    results.push(("blk-seq-write/linux".to_string(), dd_mb_per_s(&write).ok_or(write.clone())?, "MB/s"));
    Ok(results)
}

/// Runs every benchmark whose name contains `filter`, each with a time limit.
pub fn run(filter: &str) -> usize {
    let mut failed = 0;
    for b in all().into_iter().filter(|b| b.name.contains(filter)) {
        println!("@@bench-start {}", b.name);
        let mut ctx = Ctx::default();
        let (tx, rx) = std::sync::mpsc::channel();
        let run = b.run;
        std::thread::spawn(move || {
            let result = run(&mut ctx);
            let _ = tx.send((result, ctx));
        });
        match rx.recv_timeout(Duration::from_secs(900)) {
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
