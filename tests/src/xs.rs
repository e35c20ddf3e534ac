//! dom0's view of xenstore, through the xenstore-read/-write tools.

use crate::proc;
use std::process::Command;
use std::time::Duration;

/// The value at `path`, or None if it does not exist (or xenstore is unreachable).
pub fn read(path: &str) -> Option<String> {
    let out = proc::run(Command::new("xenstore-read").arg(path), Duration::from_secs(20)).ok()?;
    out.success.then(|| out.stdout.trim_end_matches('\n').to_string())
}

pub fn write(path: &str, value: &str) -> Result<(), String> {
    let out = proc::run(Command::new("xenstore-write").args([path, value]), Duration::from_secs(20))?;
    if out.success { Ok(()) } else { Err(format!("xenstore-write {path} failed: {}", out.stderr)) }
}

/// Waits until `path` exists and satisfies `accept`; returns its value.
pub fn wait_for(path: &str, limit: Duration, accept: impl Fn(&str) -> bool) -> Result<String, String> {
    proc::poll(limit, Duration::from_millis(50), || read(path).filter(|v| accept(v)))
        .ok_or_else(|| format!("{path} not as expected within {} s (now: {:?})", limit.as_secs(), read(path)))
}

/// `/local/domain/<domid>/data/<key>`: the directory a domain may write to.
pub fn data_path(domid: u32, key: &str) -> String {
    format!("/local/domain/{domid}/data/{key}")
}
