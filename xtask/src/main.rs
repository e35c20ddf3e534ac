//! `cargo xtask`: builds the image, builds and boots the real-Xen test bed, runs tests.
//!
//! Everything runs on Debian's Rust 1.96 (rust-toolchain.toml points rustup at /usr);
//! `./x` installs it on a fresh machine before handing over to this program.

mod bench;
mod fuzz;
mod guest;
mod host;
mod image;
mod qmp_client;
mod results;
mod testbed;

use anyhow::{Result, bail};
use clap::{Parser, Subcommand};
use std::time::Duration;

#[derive(Parser)]
#[command(about = "Build, run and test the rust-stubdom image")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build the stub-domain image (target/image/rust-stubdom) and print its size.
    Build,
    /// Build everything, boot the test bed and run the image as a domain, showing its console.
    Run,
    /// Format and lint checks, host unit tests, then the real-Xen suite; FILTER selects
    /// tests by name (host::fmt, host::clippy, host::clippy_image, xen::...).
    Test { filter: Option<String> },
    /// Throughput benchmarks against the peers the issues name (one test-bed boot).
    Bench { filter: Option<String> },
    /// The test bed on its own.
    Testbed {
        #[command(subcommand)]
        action: TestbedCmd,
    },
}

#[derive(Subcommand)]
enum TestbedCmd {
    /// Install the Debian packages and build (or reuse) dom0's initramfs.
    Build,
    /// Boot the test bed with a dom0 shell on this terminal (Ctrl-a x quits).
    Shell,
    /// Build the Linux HVM test guest's CD and boot it in plain QEMU, without Xen,
    /// with its serial port on this terminal (Ctrl-a x quits).
    Guest,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    host::chdir_to_workspace()?;
    match cli.cmd {
        Cmd::Build => {
            image::build()?;
        }
        Cmd::Run => run()?,
        Cmd::Test { filter } => test(filter.as_deref().unwrap_or(""))?,
        Cmd::Bench { filter } => bench(filter.as_deref().unwrap_or(""))?,
        Cmd::Testbed { action: TestbedCmd::Build } => {
            testbed::ensure_packages()?;
            testbed::base_initramfs()?;
        }
        Cmd::Testbed { action: TestbedCmd::Guest } => {
            testbed::ensure_packages()?;
            let (work, kver) = testbed::scratch_and_kernel()?;
            let cd = guest::build(&work, &kver, &work.join("guest-out"))?;
            println!("xtask: {} ({} bytes)", cd.iso.display(), std::fs::metadata(&cd.iso)?.len());
            guest::run_in_qemu(&cd, &work)?;
        }
        Cmd::Testbed { action: TestbedCmd::Shell } => {
            testbed::ensure_packages()?;
            let overlay = testbed::prepare_overlay(&image::build_both()?, &host::build_suite()?)?;
            testbed::shell(&overlay)?;
        }
    }
    Ok(())
}

fn run() -> Result<()> {
    testbed::ensure_packages()?;
    let images = image::build_both()?;
    let suite = host::build_suite()?;
    let overlay = testbed::prepare_overlay(&images, &suite)?;
    println!("xtask: booting Xen + dom0 under QEMU (TCG); the image's console follows");
    let outcome = testbed::boot(&overlay, "demo", "", Duration::from_secs(900), true)?;
    if !outcome.saw("@@demo: rust-stubdom ended") {
        bail!("the demo did not finish; serial log: {}", outcome.serial_log.display());
    }
    println!("xtask: serial log and guest consoles in {}", outcome.log_dir.display());
    Ok(())
}

fn test(filter: &str) -> Result<()> {
    testbed::ensure_packages()?;
    let mut tally = results::Tally::default();

    println!("== format and lints");
    host::standards(filter, &mut tally)?;

    println!("== host tests");
    host::unit_tests(filter, &mut tally)?;
    qmp_client::host_tests(filter, &mut tally)?;
    fuzz::host_tests(filter, &mut tally)?;

    let images = image::build_both()?;
    let suite = host::build_suite()?;
    let xen_tests: Vec<String> = host::list_xen_tests(&suite)?.into_iter().filter(|t| t.contains(filter)).collect();
    if xen_tests.is_empty() {
        println!("== real-Xen suite: no test matches {filter:?}");
    } else {
        println!("== real-Xen suite ({} tests, Xen 4.17 + dom0 under QEMU TCG)", xen_tests.len());
        let overlay = testbed::prepare_overlay(&images, &suite)?;
        // Each test has its own limit inside dom0 (up to 900 s); this bounds the whole
        // boot, and lets a single slow test reach its own limit and say why it failed.
        let limit = Duration::from_secs((300 + 240 * xen_tests.len() as u64).max(300 + 900));
        let outcome = testbed::boot(&overlay, "run", filter, limit, false)?;
        results::judge_xen_suite(&xen_tests, &outcome, &mut tally);
        println!("xtask: serial log and guest consoles in {}", outcome.log_dir.display());
    }

    println!("{} passed, {} failed", tally.passed, tally.failed);
    if tally.failed > 0 || tally.passed == 0 {
        std::process::exit(1);
    }
    Ok(())
}

fn bench(filter: &str) -> Result<()> {
    testbed::ensure_packages()?;
    let images = image::build_both()?;
    let suite = host::build_suite()?;
    let overlay = testbed::prepare_overlay(&images, &suite)?;
    println!("== benchmarks (Xen 4.17 + dom0 under QEMU TCG; figures are for comparison within one boot)");
    let outcome = testbed::boot(&overlay, "bench", filter, Duration::from_secs(3 * 3600), false)?;
    let (results, failures) = bench::collect(&outcome);
    let text = bench::report(&results, &failures);
    print!("{text}");
    std::fs::create_dir_all("target/bench")?;
    std::fs::write("target/bench/results.txt", &text)?;
    println!("xtask: results in target/bench/results.txt; serial log in {}", outcome.serial_log.display());
    if !failures.is_empty() || results.is_empty() {
        bail!("{} benchmark(s) failed", failures.len().max(1));
    }
    Ok(())
}
