//! Builds the PV image for x86_64-target.json with -Zbuild-std and strips it.

use crate::host::{cargo, run};
use anyhow::{Context, Result};
use std::path::PathBuf;

/// Where the stripped image goes: the file to name as `stubdomain_kernel`.
pub const IMAGE: &str = "target/image/rust-stubdom";

pub fn build() -> Result<PathBuf> {
    run(cargo()
        .env("RUSTC_BOOTSTRAP", "1")
        .args(["build", "--release", "--quiet", "-p", "rust-stubdom", "--target", "x86_64-target.json"])
        .args(["-Zjson-target-spec", "-Zbuild-std=core,alloc,compiler_builtins"])
        .arg("-Zbuild-std-features=compiler-builtins-mem"))?;
    let unstripped = "target/x86_64-target/release/rust-stubdom";
    std::fs::create_dir_all("target/image")?;
    run(std::process::Command::new("objcopy").args(["--strip-all", unstripped, IMAGE]))?;
    let size = std::fs::metadata(IMAGE).with_context(|| IMAGE.to_string())?.len();
    println!("xtask: image {IMAGE}: {size} bytes ({:.1} KiB) stripped; symbols in {unstripped}", size as f64 / 1024.0);
    Ok(PathBuf::from(IMAGE))
}
