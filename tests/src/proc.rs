//! Running dom0 commands with a time limit: no test may hang the suite, and a test
//! the harness gave up on runs none.

use crate::harness;
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// What a finished command printed, and how it ended.
#[derive(Debug)]
pub struct Output {
    pub success: bool,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `cmd` to completion or kills it after `limit`. Refused, or killed while it
/// runs, once the harness has given up on the calling thread's test.
pub fn run(cmd: &mut Command, limit: Duration) -> Result<Output, String> {
    let what = format!("{cmd:?}");
    harness::ensure_live().map_err(|e| format!("not running {what}: {e}"))?;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {what}: {e}"))?;
    let mut out = child.stdout.take().expect("piped stdout");
    let mut err = child.stderr.take().expect("piped stderr");
    let out_reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = out.read_to_end(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err.read_to_end(&mut s);
        s
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|e| format!("waiting for {what}: {e}"))? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("{what} did not finish within {} s; killed", limit.as_secs()));
        }
        if harness::cancelled() {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("{what} killed: the harness gave up on this test"));
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // The child has exited; its pipes close unless it left a daemon holding them
    // (xl create does: its monitor process), so don't wait for the readers forever.
    let collect = |h: std::thread::JoinHandle<Vec<u8>>| {
        let until = Instant::now() + Duration::from_secs(2);
        while !h.is_finished() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(10));
        }
        if h.is_finished() {
            String::from_utf8_lossy(&h.join().unwrap_or_default()).into_owned()
        } else {
            String::new()
        }
    };
    Ok(Output {
        success: status.success(),
        code: status.code(),
        stdout: collect(out_reader),
        stderr: collect(err_reader),
    })
}

/// Polls `probe` every `every` until it returns `Some` or `limit` passes (or the
/// harness gives up on the calling thread's test).
pub fn poll<T>(limit: Duration, every: Duration, mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = probe() {
            return Some(v);
        }
        if Instant::now() >= deadline || harness::cancelled() {
            return None;
        }
        std::thread::sleep(every);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_collects_output_and_status() {
        let out =
            run(Command::new("sh").args(["-c", "echo hi; echo oops >&2; exit 3"]), Duration::from_secs(10)).unwrap();
        assert!(!out.success);
        assert_eq!(out.code, Some(3));
        assert_eq!(out.stdout, "hi\n");
        assert_eq!(out.stderr, "oops\n");
    }

    #[test]
    fn run_kills_a_command_past_its_limit() {
        let started = Instant::now();
        let err = run(Command::new("sleep").arg("30"), Duration::from_millis(300)).unwrap_err();
        assert!(err.contains("did not finish"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn poll_gives_up_after_limit() {
        let mut n = 0;
        assert_eq!(
            poll(Duration::from_millis(100), Duration::from_millis(10), || {
                n += 1;
                None::<()>
            }),
            None
        );
        assert!(n >= 2);
        assert_eq!(poll(Duration::from_secs(1), Duration::from_millis(1), || Some(7)), Some(7));
    }
}
