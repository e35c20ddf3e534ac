//! The QMP engine against real clients on the host: QEMU's own Python client library
//! (`qemu.qmp` from PyPI) through a unix-socket adapter, and a short libFuzzer run.
//!
//! - `qmp::python::*`: builds qmp's `unix_server` example, makes sure target/py-venv
//!   holds [`QEMU_QMP`] (created on first use: python3's venv module, installing
//!   Debian's python3-venv if it is missing, then pip from PyPI), and runs
//!   tests/python/qmp_client_test.py, which prints one `test qmp::python::NAME ... ok`
//!   line per check.
//! - `qmp::fuzz::session_20s`: qmp/fuzz's `session` target for 20 s under cargo-fuzz
//!   (installed with `cargo install` on first use). Debian's rustc ships no sanitizer
//!   runtimes, so it runs without ASan (`--sanitizer none`; qmp has no unsafe code):
//!   libFuzzer's coverage flags are stable `-C` options, the build needs no nightly.
//!   Its output goes to target/fuzz/session.log, the corpus grows in
//!   qmp/fuzz/corpus/session, a crashing input lands in qmp/fuzz/artifacts/session.
//!
//! First run: about 1 min for `cargo install cargo-fuzz`, 1 min for the instrumented
//! build, a few seconds for the venv; afterwards the step takes about 25 s.

use crate::host::cargo;
use crate::results::Tally;
use anyhow::{Context, Result};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The client library, pinned.
const QEMU_QMP: &str = "qemu.qmp==0.0.6";
const VENV: &str = "target/py-venv";
const SCRIPT: &str = "tests/python/qmp_client_test.py";
const ADAPTER: &str = "target/debug/examples/unix_server";
const CARGO_FUZZ_VERSION: &str = "0.13.2";
const FUZZ_NAME: &str = "qmp::fuzz::session_20s";
const FUZZ_SECONDS: u32 = 20;

/// Runs the steps FILTER selects, echoing and counting their result lines.
pub fn host_tests(filter: &str, tally: &mut Tally) -> Result<()> {
    let python = "qmp::python".contains(filter) || filter.starts_with("qmp::python::");
    let fuzz = FUZZ_NAME.contains(filter);
    if !python && !fuzz {
        return Ok(());
    }
    println!("== QMP engine with real clients (qemu.qmp) and libFuzzer");
    if python {
        python_client(filter, tally)?;
    }
    if fuzz {
        fuzz_session(tally)?;
    }
    Ok(())
}

fn verdict(tally: &mut Tally, name: &str, ok: bool, why: &str) {
    if ok {
        tally.passed += 1;
        println!("test {name} ... ok");
    } else {
        tally.failed += 1;
        println!("test {name} ... FAILED");
        if !why.is_empty() {
            println!("    {why}");
        }
    }
}

/// Waits for `child` at most `limit`; kills it after that (None).
fn wait_limited(child: &mut Child, limit: Duration) -> Result<Option<ExitStatus>> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs `cmd` (output inherited) within `limit`; Err says what went wrong.
fn run_limited(cmd: &mut Command, limit: Duration) -> Result<(), String> {
    let mut child = cmd.spawn().map_err(|error| format!("starting {cmd:?}: {error}"))?;
    match wait_limited(&mut child, limit) {
        Ok(Some(status)) if status.success() => Ok(()),
        Ok(Some(status)) => Err(format!("{cmd:?} failed: {status}")),
        Ok(None) => Err(format!("{cmd:?} did not finish within {} s", limit.as_secs())),
        Err(error) => Err(format!("waiting for {cmd:?}: {error}")),
    }
}

fn python_client(filter: &str, tally: &mut Tally) -> Result<()> {
    let build = cargo()
        .args(["build", "--quiet", "-p", "qmp", "--features", "sim", "--example", "unix_server"])
        .status()
        .context("starting cargo build")?;
    if !build.success() {
        verdict(tally, "qmp::python::build_adapter", false, "cargo build of qmp's unix_server example failed");
        return Ok(());
    }
    let python = match ensure_venv() {
        Ok(python) => python,
        Err(why) => {
            verdict(tally, "qmp::python::venv", false, &why);
            return Ok(());
        }
    };

    let limit = Duration::from_secs(90);
    let mut child = Command::new(&python)
        .args(["-u", SCRIPT, ADAPTER])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", python.display()))?;
    let stdout = child.stdout.take().expect("piped");
    let (lines_tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + limit;
    let failed_before = tally.failed;
    let mut timed_out = false;
    loop {
        match lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(Ok(line)) => {
                // Lines of checks FILTER does not name are shown but not counted.
                let counted = crate::results::parse_result(&line).is_some_and(|(name, _)| name.contains(filter));
                println!("{line}");
                if counted {
                    tally.count_cargo_line(&line);
                }
            }
            Ok(Err(_)) | Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                timed_out = true;
                break;
            }
        }
    }
    let remaining = deadline.saturating_duration_since(Instant::now()).max(Duration::from_secs(1));
    let status = wait_limited(&mut child, if timed_out { Duration::ZERO } else { remaining })?;
    match status {
        None => verdict(tally, "qmp::python::time_limit", false, &format!("{SCRIPT} ran over {} s", limit.as_secs())),
        Some(status) if !status.success() && tally.failed == failed_before => {
            // The script died before reporting a failure (an import error, a crash).
            verdict(tally, "qmp::python::script", false, &format!("{SCRIPT} exited with {status}"));
        }
        Some(_) => {}
    }
    Ok(())
}

/// target/py-venv with [`QEMU_QMP`] installed; returns its python. Quick when present.
fn ensure_venv() -> Result<PathBuf, String> {
    let venv = Path::new(VENV);
    let python = venv.join("bin/python");
    let marker = venv.join(".xtask-installed");
    let imports = |python: &Path| {
        Command::new(python)
            .args(["-c", "import qemu.qmp"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    };
    if std::fs::read_to_string(&marker).is_ok_and(|text| text.trim() == QEMU_QMP) && imports(&python) {
        return Ok(python);
    }

    // A venv whose interpreter no longer runs (python3 replaced) is made again.
    let runs = Command::new(&python).arg("-c").arg("pass").status().is_ok_and(|status| status.success());
    if !runs {
        println!("xtask: creating {VENV} (first run only)");
        let _ = std::fs::remove_dir_all(venv);
        let create = || run_limited(Command::new("python3").args(["-m", "venv", VENV]), Duration::from_secs(120));
        if let Err(first) = create() {
            // Debian's python3 has no venv module (ensurepip) without python3-venv.
            if !Path::new("/usr/bin/apt-get").exists() {
                return Err(format!("could not create {VENV} with python3 -m venv: {first}"));
            }
            println!("xtask: python3 -m venv failed; installing Debian's python3 and python3-venv");
            let _ = std::fs::remove_dir_all(venv);
            let apt = |args: &[&str]| {
                run_limited(
                    Command::new("apt-get").args(args).env("DEBIAN_FRONTEND", "noninteractive"),
                    Duration::from_secs(300),
                )
            };
            apt(&["update", "-q"])
                .and_then(|()| apt(&["install", "-y", "-q", "--no-install-recommends", "python3", "python3-venv"]))
                .map_err(|why| {
                    format!("python3 -m venv failed ({first}), and so did installing python3-venv: {why}")
                })?;
            create().map_err(|why| format!("could not create {VENV} even with python3-venv installed: {why}"))?;
        }
    }

    println!("xtask: installing {QEMU_QMP} from PyPI into {VENV} (first run only)");
    let pip = run_limited(
        Command::new(&python).args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--no-input",
            "--timeout",
            "15",
            "--retries",
            "2",
            QEMU_QMP,
        ]),
        Duration::from_secs(180),
    );
    if let Err(why) = pip {
        // Tell an unreachable index apart from other failures.
        let probe = Command::new(&python)
            .args([
                "-c",
                "import urllib.request; urllib.request.urlopen('https://pypi.org/simple/qemu-qmp/', timeout=10)",
            ])
            .stderr(Stdio::null())
            .status();
        let reachable = probe.is_ok_and(|status| status.success());
        return Err(if reachable {
            format!("pip could not install {QEMU_QMP} into {VENV}: {why}")
        } else {
            format!(
                "PyPI (https://pypi.org) is unreachable from this machine, so {QEMU_QMP} cannot be installed into \
                 {VENV} (needed once; set https_proxy or PIP_INDEX_URL if a proxy or mirror is required): {why}"
            )
        });
    }
    if !imports(&python) {
        return Err(format!("{QEMU_QMP} is installed in {VENV} but `import qemu.qmp` fails"));
    }
    std::fs::write(&marker, format!("{QEMU_QMP}\n"))
        .map_err(|error| format!("writing {}: {error}", marker.display()))?;
    Ok(python)
}

/// `cargo fuzz` with the settings the build and the run share.
fn cargo_fuzz(action: &str, target_dir: &Path) -> Command {
    let mut cmd = cargo();
    cmd.current_dir("qmp/fuzz")
        .env("RUSTC_BOOTSTRAP", "1")
        .args(["fuzz", action, "session", "--sanitizer", "none", "--target-dir"])
        .arg(target_dir);
    cmd
}

fn fuzz_session(tally: &mut Tally) -> Result<()> {
    let installed = cargo()
        .args(["fuzz", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if !installed {
        println!("xtask: installing cargo-fuzz {CARGO_FUZZ_VERSION} (first run only, about a minute)");
        let install = run_limited(
            cargo().args(["install", "--quiet", "--locked", "cargo-fuzz", "--version", CARGO_FUZZ_VERSION]),
            Duration::from_secs(900),
        );
        if let Err(why) = install {
            verdict(tally, FUZZ_NAME, false, &format!("cargo install cargo-fuzz failed: {why}"));
            return Ok(());
        }
    }

    // libfuzzer-sys compiles libFuzzer (C++); ./x installs only gcc.
    let has_cxx = Command::new("c++").arg("--version").stdout(Stdio::null()).status().is_ok_and(|s| s.success());
    if !has_cxx && std::env::var_os("CXX").is_none() {
        println!("xtask: installing Debian's g++ (libFuzzer is C++)");
        let apt = |args: &[&str]| {
            run_limited(
                Command::new("apt-get").args(args).env("DEBIAN_FRONTEND", "noninteractive"),
                Duration::from_secs(300),
            )
        };
        if let Err(why) =
            apt(&["update", "-q"]).and_then(|()| apt(&["install", "-y", "-q", "--no-install-recommends", "g++"]))
        {
            verdict(
                tally,
                FUZZ_NAME,
                false,
                &format!("no C++ compiler for libFuzzer, and installing g++ failed: {why}"),
            );
            return Ok(());
        }
    }

    let target_dir = std::env::current_dir()?.join("target/fuzz");
    std::fs::create_dir_all(&target_dir)?;
    if let Err(why) = run_limited(&mut cargo_fuzz("build", &target_dir), Duration::from_secs(900)) {
        verdict(tally, FUZZ_NAME, false, &format!("building the fuzz target failed: {why}"));
        return Ok(());
    }

    let log_path = target_dir.join("session.log");
    let log = std::fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
    let mut run = cargo_fuzz("run", &target_dir);
    run.arg("--")
        .arg(format!("-max_total_time={FUZZ_SECONDS}"))
        .arg("-timeout=10")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    let mut child = run.spawn().context("starting cargo fuzz run")?;
    let status = wait_limited(&mut child, Duration::from_secs(u64::from(FUZZ_SECONDS) + 60))?;
    let text = std::fs::read_to_string(&log_path).unwrap_or_default();
    let done = text.lines().rev().find(|line| line.starts_with("Done ")).unwrap_or("").to_string();
    match status {
        Some(status) if status.success() => {
            verdict(tally, FUZZ_NAME, true, "");
            if !done.is_empty() {
                println!("    libFuzzer: {done} (log: {})", log_path.display());
            }
        }
        outcome => {
            let why = match outcome {
                Some(status) => format!("cargo fuzz run exited with {status}"),
                None => format!("cargo fuzz run did not end within {} s", FUZZ_SECONDS + 60),
            };
            verdict(tally, FUZZ_NAME, false, &why);
            let lines: Vec<&str> = text.lines().collect();
            for line in &lines[lines.len().saturating_sub(40)..] {
                println!("    | {line}");
            }
            println!("    full log: {}; crashing inputs: qmp/fuzz/artifacts/session/", log_path.display());
        }
    }
    Ok(())
}
