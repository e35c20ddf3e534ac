//! The device model's QMP against a real client on the host: QEMU's own Python client
//! library (`qemu.qmp` from PyPI) through a unix-socket adapter. (QMP's libFuzzer run is
//! in `fuzz`, with the other cargo-fuzz targets.)
//!
//! `qmp::python::*`: builds devices' `unix_server` example (a QMP session over the
//! device model's `Vm`), makes sure target/py-venv
//! holds [`QEMU_QMP`] (created on first use: python3's venv module, installing
//! Debian's python3-venv if it is missing, then pip from PyPI), and runs
//! tests/python/qmp_client_test.py, which prints one `test qmp::python::NAME ... ok`
//! line per check.
//!
//! The venv is made on first use (a few seconds, plus pip's download).

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

/// Runs the Python client's checks if FILTER selects them, echoing and counting
/// their result lines.
pub fn host_tests(filter: &str, tally: &mut Tally) -> Result<()> {
    let python = "qmp::python".contains(filter) || filter.starts_with("qmp::python::");
    if !python {
        return Ok(());
    }
    println!("== QMP with a real client (qemu.qmp)");
    python_client(filter, tally)
}

/// Counts and prints one result line, with `why` under a failure.
pub(crate) fn verdict(tally: &mut Tally, name: &str, ok: bool, why: &str) {
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
pub(crate) fn wait_limited(child: &mut Child, limit: Duration) -> Result<Option<ExitStatus>> {
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
pub(crate) fn run_limited(cmd: &mut Command, limit: Duration) -> Result<(), String> {
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
        .args(["build", "--quiet", "-p", "devices", "--example", "unix_server"])
        .status()
        .context("starting cargo build")?;
    if !build.success() {
        verdict(tally, "qmp::python::build_adapter", false, "cargo build of devices' unix_server example failed");
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
            let apt = |args: &[&str]| run_limited(crate::host::apt_get().args(args), Duration::from_secs(300));
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
