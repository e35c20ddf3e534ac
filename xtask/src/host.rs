//! Host-side cargo invocations: unit tests, the dom0 suite binary, the workspace root.

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

/// `cargo test --workspace [FILTER]`, echoing its output and counting its result lines.
pub fn unit_tests(filter: &str, tally: &mut Tally) -> Result<()> {
    let mut cmd = cargo();
    cmd.args(["test", "--workspace", "--color", "never"]);
    if !filter.is_empty() {
        cmd.args(["--", filter]);
    }
    let mut child = cmd.stdout(Stdio::piped()).spawn().context("starting cargo test")?;
    let stdout = child.stdout.take().expect("piped");
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        println!("{line}");
        tally.count_cargo_line(&line);
    }
    let status = child.wait()?;
    if !status.success() && tally.failed == 0 {
        // A build error or a crashed test binary: no per-test line says so.
        tally.failed += 1;
        println!("test host::cargo_test ... FAILED ({status})");
    }
    Ok(())
}

/// Builds the dom0 suite program (a host binary: dom0 runs Debian's userland).
pub fn build_suite() -> Result<PathBuf> {
    run(cargo().args(["build", "--release", "--quiet", "-p", "xen-suite"]))?;
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
