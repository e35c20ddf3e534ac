//! Builds the PV image for x86_64-target.json with -Zbuild-std and strips it; lints
//! it the same way.

use crate::host::{cargo, run};
use anyhow::{Context, Result};
use std::path::PathBuf;
use std::process::Command;

/// Where the stripped image goes: the file to name as `stubdomain_kernel`.
pub const IMAGE: &str = "target/image/rust-stubdom";
/// The same image with the self-tests the real-Xen suite drives (feature `selftests`).
pub const SELFTEST_IMAGE: &str = "target/image/rust-stubdom-selftest";

/// The shipped image and the self-test image.
pub struct Images {
    pub image: PathBuf,
    pub selftest: PathBuf,
}

/// Builds the shipped image and prints its size.
pub fn build() -> Result<PathBuf> {
    build_one("target", &[], IMAGE)
}

/// Builds both images (the self-test one in its own target directory, so that
/// switching features does not rebuild either).
pub fn build_both() -> Result<Images> {
    let image = build()?;
    let selftest = build_one("target/selftest-build", &["--features", "selftests"], SELFTEST_IMAGE)?;
    Ok(Images { image, selftest })
}

/// `cargo SUBCOMMAND` on the image crate as it is built: release, for
/// x86_64-target.json, with `core` and `alloc` built from Debian's rust-web-src
/// (no red zone, no SSE) in `target_dir`.
fn image_cargo(subcommand: &str, target_dir: &str, extra: &[&str]) -> Command {
    let mut cmd = cargo();
    cmd.env("RUSTC_BOOTSTRAP", "1")
        .args([subcommand, "--release", "--quiet", "-p", "rust-stubdom", "--target", "x86_64-target.json"])
        .args(["--target-dir", target_dir])
        .args(extra)
        .args(["-Zjson-target-spec", "-Zbuild-std=core,alloc,compiler_builtins"])
        .arg("-Zbuild-std-features=compiler-builtins-mem");
    cmd
}

/// Clippy on the image with the self-tests (a superset of the shipped image's code),
/// every warning an error.
pub fn clippy() -> Command {
    let mut cmd = image_cargo("clippy", "target/clippy-image", &["--features", "selftests"]);
    cmd.args(["--", "-D", "warnings"]);
    cmd
}

fn build_one(target_dir: &str, extra: &[&str], out: &str) -> Result<PathBuf> {
    run(&mut image_cargo("build", target_dir, extra))?;
    let unstripped = format!("{target_dir}/x86_64-target/release/rust-stubdom");
    std::fs::create_dir_all("target/image")?;
    run(std::process::Command::new("objcopy").args(["--strip-all", &unstripped, out]))?;
    let size = std::fs::metadata(out).with_context(|| out.to_string())?.len();
    println!("xtask: image {out}: {size} bytes ({:.1} KiB) stripped; symbols in {unstripped}", size as f64 / 1024.0);
    Ok(PathBuf::from(out))
}
