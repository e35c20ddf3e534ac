//! Short libFuzzer runs of the repository's cargo-fuzz targets, one result line each.
//!
//! Each [`Target`] is a cargo-fuzz crate with a workspace of its own (so the
//! repository's workspace never builds libFuzzer) and one target run for
//! [`FUZZ_SECONDS`]. cargo-fuzz is installed with `cargo install` on first use.
//! Debian's rustc ships no sanitizer runtimes, so targets run without ASan
//! (`--sanitizer none`; the fuzzed crates have no unsafe code): libFuzzer's coverage
//! flags are stable `-C` options, the build needs no nightly. A run's output goes to
//! target/fuzz/<target>.log, its corpus grows in <dir>/corpus/<target>, and a
//! crashing input lands in <dir>/artifacts/<target>.
//!
//! First run: about 1 min for `cargo install cargo-fuzz`, then 1 min per target for
//! the instrumented build. The runs go as many at a time as there are cores, each a
//! single libFuzzer process for [`FUZZ_SECONDS`].

use crate::host::cargo;
use crate::qmp_client::{run_limited, verdict, wait_limited};
use crate::results::Tally;
use anyhow::{Context, Result};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

const CARGO_FUZZ_VERSION: &str = "0.13.2";
const FUZZ_SECONDS: u32 = 20;

/// One cargo-fuzz target and the result line that names its run.
struct Target {
    /// The test name in `cargo xtask test` output (and what FILTER matches).
    name: &'static str,
    /// The cargo-fuzz crate's directory.
    dir: &'static str,
    /// The fuzz target (a `[[bin]]` of that crate).
    target: &'static str,
}

const TARGETS: &[Target] = &[
    Target { name: "devices::fuzz::qmp_session_20s", dir: "devices/fuzz", target: "qmp_session" },
    Target { name: "devices::fuzz::state_file_20s", dir: "devices/fuzz", target: "state_file" },
    Target { name: "devices::fuzz::ioreq_20s", dir: "devices/fuzz", target: "ioreq" },
    Target { name: "devices::fuzz::rtl8139_20s", dir: "devices/fuzz", target: "rtl8139" },
    Target { name: "devices::fuzz::e1000_20s", dir: "devices/fuzz", target: "e1000" },
    Target { name: "devices::fuzz::prd_table_20s", dir: "devices/fuzz", target: "prd_table" },
    Target { name: "devices::fuzz::atapi_cdb_20s", dir: "devices/fuzz", target: "atapi_cdb" },
    Target { name: "stubctl::fuzz::qmp_reply_20s", dir: "stubctl/fuzz", target: "qmp_reply" },
    Target { name: "stubctl::fuzz::xenstore_values_20s", dir: "stubctl/fuzz", target: "xenstore_values" },
    Target { name: "stubctl::fuzz::stored_config_20s", dir: "stubctl/fuzz", target: "stored_config" },
    Target { name: "stubctl::fuzz::checkpoint_inputs_20s", dir: "stubctl/fuzz", target: "checkpoint_inputs" },
];

/// Runs the fuzz targets FILTER selects, counting one result each.
pub fn host_tests(filter: &str, tally: &mut Tally) -> Result<()> {
    let selected: Vec<&Target> = TARGETS.iter().filter(|t| t.name.contains(filter)).collect();
    if selected.is_empty() {
        return Ok(());
    }
    println!("== libFuzzer ({FUZZ_SECONDS} s per target)");
    if let Err(why) = ensure_tools() {
        for target in selected {
            verdict(tally, target.name, false, &why);
        }
        return Ok(());
    }
    // Built one after the other; then run as many at a time as there are cores (each
    // run is one libFuzzer process on one core: the same work per target, sooner).
    let target_dir = std::env::current_dir()?.join("target/fuzz");
    std::fs::create_dir_all(&target_dir)?;
    let mut built = Vec::new();
    for target in selected {
        match run_limited(&mut cargo_fuzz(target, "build", &target_dir), Duration::from_secs(900)) {
            Ok(()) => built.push(target),
            Err(why) => verdict(tally, target.name, false, &format!("building the fuzz target failed: {why}")),
        }
    }
    let at_once = std::thread::available_parallelism().map_or(1, |n| n.get());
    for group in built.chunks(at_once) {
        let mut running = Vec::new();
        for target in group {
            running.push((*target, start_run(target, &target_dir)?));
        }
        for (target, (child, log_path)) in running {
            finish_run(target, child, &log_path, tally)?;
        }
    }
    Ok(())
}

/// cargo-fuzz, and a C++ compiler for libFuzzer (./x installs only gcc).
fn ensure_tools() -> Result<(), String> {
    let installed = cargo()
        .args(["fuzz", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if !installed {
        println!("xtask: installing cargo-fuzz {CARGO_FUZZ_VERSION} (first run only, about a minute)");
        run_limited(
            cargo().args(["install", "--quiet", "--locked", "cargo-fuzz", "--version", CARGO_FUZZ_VERSION]),
            Duration::from_secs(900),
        )
        .map_err(|why| format!("cargo install cargo-fuzz failed: {why}"))?;
    }
    let has_cxx = Command::new("c++").arg("--version").stdout(Stdio::null()).status().is_ok_and(|s| s.success());
    if !has_cxx && std::env::var_os("CXX").is_none() {
        println!("xtask: installing Debian's g++ (libFuzzer is C++)");
        let apt = |args: &[&str]| run_limited(crate::host::apt_get().args(args), Duration::from_secs(300));
        apt(&["update", "-q"])
            .and_then(|()| apt(&["install", "-y", "-q", "--no-install-recommends", "g++"]))
            .map_err(|why| format!("no C++ compiler for libFuzzer, and installing g++ failed: {why}"))?;
    }
    Ok(())
}

/// `cargo fuzz ACTION TARGET` in the target's crate, with the settings the build and
/// the run share.
fn cargo_fuzz(target: &Target, action: &str, target_dir: &Path) -> Command {
    let mut cmd = cargo();
    cmd.current_dir(target.dir)
        .env("RUSTC_BOOTSTRAP", "1")
        .args(["fuzz", action, target.target, "--sanitizer", "none", "--target-dir"])
        .arg(target_dir);
    cmd
}

/// Starts `target`'s libFuzzer run for [`FUZZ_SECONDS`], its output to
/// target/fuzz/<target>.log (returned).
fn start_run(target: &Target, target_dir: &Path) -> Result<(std::process::Child, std::path::PathBuf)> {
    let log_path = target_dir.join(format!("{}.log", target.target));
    let log = std::fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
    let mut run = cargo_fuzz(target, "run", target_dir);
    run.arg("--")
        .arg(format!("-max_total_time={FUZZ_SECONDS}"))
        .arg("-timeout=10")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    let child = run.spawn().context("starting cargo fuzz run")?;
    Ok((child, log_path))
}

/// Waits for a run [`start_run`] started (bounded) and counts its result.
fn finish_run(target: &Target, mut child: std::process::Child, log_path: &Path, tally: &mut Tally) -> Result<()> {
    let status = wait_limited(&mut child, Duration::from_secs(u64::from(FUZZ_SECONDS) + 60))?;
    let text = std::fs::read_to_string(log_path).unwrap_or_default();
    let done = text.lines().rev().find(|line| line.starts_with("Done ")).unwrap_or("").to_string();
    match status {
        Some(status) if status.success() => {
            verdict(tally, target.name, true, "");
            if !done.is_empty() {
                println!("    libFuzzer: {done} (log: {})", log_path.display());
            }
        }
        outcome => {
            let why = match outcome {
                Some(status) => format!("cargo fuzz run exited with {status}"),
                None => format!("cargo fuzz run did not end within {} s", FUZZ_SECONDS + 60),
            };
            verdict(tally, target.name, false, &why);
            let lines: Vec<&str> = text.lines().collect();
            for line in &lines[lines.len().saturating_sub(40)..] {
                println!("    | {line}");
            }
            println!(
                "    full log: {}; crashing inputs: {}/artifacts/{}/",
                log_path.display(),
                target.dir,
                target.target
            );
        }
    }
    Ok(())
}
