//! Host-side cargo invocations: the format and lint checks, unit tests, the dom0 suite
//! binary, the workspace root.

use crate::image;
use crate::results::Tally;
use anyhow::{Context, Result, bail};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Runs from the workspace root, whatever directory `cargo xtask` was called in.
pub fn chdir_to_workspace() -> Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().context("xtask has no parent directory")?;
    std::env::set_current_dir(root).with_context(|| format!("cd {}", root.display()))
}

/// A `cargo` command on Debian's toolchain (the one rust-toolchain.toml names).
pub fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.env("RUSTC", "/usr/bin/rustc").env("RUSTDOC", "/usr/bin/rustdoc");
    cmd
}

/// Runs `cmd`, failing with its name if it does not succeed.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

/// How often apt retries a failed download (a mirror's moment of trouble is not a
/// failed suite): for every apt-get and mmdebstrap this crate runs.
pub const APT_RETRIES: u32 = 5;

/// `apt-get` with [`APT_RETRIES`] and no questions.
pub fn apt_get() -> Command {
    let mut cmd = Command::new("apt-get");
    cmd.arg("-o").arg(format!("Acquire::Retries={APT_RETRIES}")).env("DEBIAN_FRONTEND", "noninteractive");
    cmd
}

/// Runs the command `make` builds up to `attempts` times, `pause` apart, calling
/// `cleanup` before each retry; the last failure if none succeeds. For downloads,
/// whose failures are mostly the network's and pass.
pub fn run_retrying(
    attempts: u32,
    pause: std::time::Duration,
    mut make: impl FnMut() -> Command,
    mut cleanup: impl FnMut() -> Result<()>,
) -> Result<()> {
    let mut attempt = 1;
    loop {
        match run(&mut make()) {
            Ok(()) => return Ok(()),
            Err(e) if attempt < attempts => {
                println!("xtask: {e:#}; trying again in {} s ({attempt} of {attempts} failed)", pause.as_secs());
                std::thread::sleep(pause);
                cleanup()?;
                attempt += 1;
            }
            Err(e) => return Err(e.context(format!("{attempts} attempts failed"))),
        }
    }
}

/// The format and lint standard, each check one result line: `host::fmt` (rustfmt.toml's
/// format, `cargo fmt --all --check`), `host::clippy` (every host crate with all its
/// targets and features, and the image crate's host tests) and `host::clippy_image` (the
/// image as it is built, for x86_64-target.json), clippy's warnings and the compiler's
/// denied. Checks whose name does not contain `filter` are skipped.
pub fn standards(filter: &str, tally: &mut Tally) -> Result<()> {
    let fmt = || {
        let mut cmd = cargo();
        cmd.args(["fmt", "--all", "--check"]);
        vec![cmd]
    };
    let clippy = || {
        let (mut crates, mut kernel_tests) = (cargo(), cargo());
        crates.args(["clippy", "--quiet", "--all-targets", "--all-features", "--", "-D", "warnings"]);
        kernel_tests.args(["clippy", "--quiet", "-p", "rust-stubdom", "--tests", "--", "-D", "warnings"]);
        vec![crates, kernel_tests]
    };
    let checks: [(&str, &dyn Fn() -> Vec<Command>); 3] =
        [("host::fmt", &fmt), ("host::clippy", &clippy), ("host::clippy_image", &|| vec![image::clippy()])];
    for (name, commands) in checks {
        if !name.contains(filter) {
            continue;
        }
        let mut failure = None;
        for mut cmd in commands() {
            let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
            if !status.success() {
                failure = Some(format!("{cmd:?}: {status}"));
                break;
            }
        }
        tally.record(name, failure.as_deref());
    }
    Ok(())
}

/// `cargo test --workspace [FILTER]`, echoing its output and counting its result lines.
pub fn unit_tests(filter: &str, tally: &mut Tally) -> Result<()> {
    let mut cmd = cargo();
    cmd.args(["test", "--workspace", "--color", "never"]);
    if !filter.is_empty() {
        cmd.args(["--", filter]);
    }
    let failed_before = tally.failed;
    let mut child = cmd.stdout(Stdio::piped()).spawn().context("starting cargo test")?;
    let stdout = child.stdout.take().expect("piped");
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        println!("{line}");
        tally.count_cargo_line(&line);
    }
    let status = child.wait()?;
    if !status.success() && tally.failed == failed_before {
        // A build error or a crashed test binary: no per-test line says so.
        tally.record("host::cargo_test", Some(&status.to_string()));
    }
    Ok(())
}

/// Builds the dom0 suite program (a host binary: dom0 runs Debian's userland), and
/// beside it stubctl, the dom0 helper the suite tests.
pub fn build_suite() -> Result<PathBuf> {
    run(cargo().args(["build", "--release", "--quiet", "-p", "xen-suite", "-p", "stubctl"]))?;
    Ok(PathBuf::from("target/release/xen-suite"))
}

/// The names of the real-Xen tests, asked from the suite binary itself.
pub fn list_xen_tests(suite: &Path) -> Result<Vec<String>> {
    let out = Command::new(suite).arg("list").output().with_context(|| format!("running {}", suite.display()))?;
    if !out.status.success() {
        bail!("{} list failed", suite.display());
    }
    Ok(String::from_utf8(out.stdout)?.lines().map(str::to_string).collect())
}

/// The names of the benchmarks, asked from the suite binary itself.
pub fn list_benches(suite: &Path) -> Result<Vec<String>> {
    let out =
        Command::new(suite).arg("list-benches").output().with_context(|| format!("running {}", suite.display()))?;
    if !out.status.success() {
        bail!("{} list-benches failed", suite.display());
    }
    Ok(String::from_utf8(out.stdout)?.lines().map(str::to_string).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A command that succeeds once `marker` exists.
    fn marker_test(marker: &Path) -> Command {
        let mut cmd = Command::new("test");
        cmd.arg("-e").arg(marker);
        cmd
    }

    #[test]
    fn a_retried_command_succeeds_after_the_cleanup_between_attempts() {
        let marker = std::env::temp_dir().join(format!("xtask-retry-{}", std::process::id()));
        let _ = std::fs::remove_file(&marker);
        let mut cleanups = 0;
        let result = run_retrying(
            3,
            Duration::ZERO,
            || marker_test(&marker),
            || {
                cleanups += 1;
                std::fs::write(&marker, b"")?;
                Ok(())
            },
        );
        let _ = std::fs::remove_file(&marker);
        assert!(result.is_ok(), "{result:?}");
        assert_eq!(cleanups, 1);
    }

    #[test]
    fn a_command_that_always_fails_fails_after_the_last_attempt() {
        let mut runs = 0;
        let result = run_retrying(
            3,
            Duration::ZERO,
            || {
                runs += 1;
                Command::new("false")
            },
            || Ok(()),
        );
        let e = result.expect_err("false never succeeds");
        assert_eq!(runs, 3);
        assert!(format!("{e:#}").contains("3 attempts failed"), "{e:#}");
    }
}
