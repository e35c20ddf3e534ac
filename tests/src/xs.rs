//! dom0's view of xenstore, through the xenstore-read/-write/-watch tools.

use crate::{harness, proc};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The value at `path`, or None if it does not exist (or xenstore is unreachable).
pub fn read(path: &str) -> Option<String> {
    let out = proc::run(Command::new("xenstore-read").arg(path), Duration::from_secs(20)).ok()?;
    out.success.then(|| out.stdout.trim_end_matches('\n').to_string())
}

pub fn write(path: &str, value: &str) -> Result<(), String> {
    let out = proc::run(Command::new("xenstore-write").args([path, value]), Duration::from_secs(20))?;
    if out.success { Ok(()) } else { Err(format!("xenstore-write {path} failed: {}", out.stderr)) }
}

/// Waits until `path` exists and satisfies `accept`; returns its value. A
/// `xenstore-watch` on `path` says when to read it again (its first event, when the
/// watch is registered, covers a change made before), with a read every
/// [`WATCH_FALLBACK`] besides; without the watch tool, every 50 ms. Reading on every
/// tick would start a xenstore-read process 20 times a second: under TCG that is CPU
/// dom0 takes from the domains being waited for (a Linux stub domain has 30 s to
/// start).
pub fn wait_for(path: &str, limit: Duration, accept: impl Fn(&str) -> bool) -> Result<String, String> {
    wait_for_while(path, limit, accept, || Ok(()))
}

/// [`wait_for`], giving up early with `still_possible`'s error once that says the value
/// can no longer come (it is asked after each read).
pub fn wait_for_while(
    path: &str,
    limit: Duration,
    accept: impl Fn(&str) -> bool,
    mut still_possible: impl FnMut() -> Result<(), String>,
) -> Result<String, String> {
    let watch = Watch::start(path);
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = read(path).filter(|v| accept(v)) {
            return Ok(v);
        }
        still_possible()?;
        let now = Instant::now();
        if now >= deadline || harness::cancelled() {
            return Err(format!("{path} not as expected within {} s (now: {:?})", limit.as_secs(), read(path)));
        }
        let left = deadline - now;
        match &watch {
            Some(watch) => watch.next_event(left.min(WATCH_FALLBACK)),
            None => std::thread::sleep(left.min(Duration::from_millis(50))),
        }
    }
}

/// How often [`wait_for`] reads its node while a watch on it stays silent.
pub const WATCH_FALLBACK: Duration = Duration::from_secs(1);

/// A `xenstore-watch` on one node: each event it prints arrives on a channel; the
/// process is killed when this is dropped.
struct Watch {
    child: Child,
    events: mpsc::Receiver<()>,
}

impl Watch {
    fn start(path: &str) -> Option<Watch> {
        harness::ensure_live().ok()?;
        let mut child = Command::new("xenstore-watch")
            .arg(path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let stdout = child.stdout.take()?;
        let (tx, events) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                if line.is_err() || tx.send(()).is_err() {
                    break;
                }
            }
        });
        Some(Watch { child, events })
    }

    /// Returns on the next event (taking any others queued with it) or after `limit`.
    fn next_event(&self, limit: Duration) {
        match self.events.recv_timeout(limit) {
            Ok(()) => while self.events.try_recv().is_ok() {},
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            // The watch ended (no tool, no xenstored): don't spin on a closed channel.
            Err(mpsc::RecvTimeoutError::Disconnected) => std::thread::sleep(limit.min(Duration::from_millis(50))),
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `/local/domain/<domid>/data/<key>`: the directory a domain may write to.
pub fn data_path(domid: u32, key: &str) -> String {
    format!("/local/domain/{domid}/data/{key}")
}
