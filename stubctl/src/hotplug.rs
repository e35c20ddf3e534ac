//! Running a vbd's hotplug script (libxl's block script) as libxl runs it, bounded,
//! and saying why when it does not finish.
//!
//! libxl gives a hotplug script `LIBXL_HOTPLUG_TIMEOUT` (40 s) and then kills it. A
//! script that sits that long is stuck somewhere (the block script's `flock` on
//! /var/run/xen-hotplug/block, `losetup`, a `xenstore-read`): the error says where,
//! from what /proc shows of the script's processes just before they are killed (each
//! one's command line, state and kernel wait channel), who else has the block
//! script's lock file open, and the end of the scripts' log. The script runs in its
//! own process group and the whole group is killed, so that no child (a `flock`
//! waiting, a `losetup`) lives on holding the lock's file descriptor.

use crate::sys;
use std::fmt::Write as _;
use std::fs;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// libxl's `LIBXL_HOTPLUG_TIMEOUT`.
pub const HOTPLUG_LIMIT: Duration = Duration::from_secs(40);
/// The lock the block script takes around its sharing check and `losetup`
/// (locking.sh's `claim_lock block`).
const BLOCK_LOCK_FILE: &str = "/var/run/xen-hotplug/block";
/// Where the scripts send their stderr (xen-hotplug-common.sh).
const HOTPLUG_LOG: &str = "/var/log/xen/xen-hotplug.log";
/// How much of that log an error quotes, and how much of its end is read for that.
const LOG_TAIL_LINES: usize = 6;
const LOG_TAIL_BYTES: u64 = 8192;
/// Bounds on a description: processes listed, characters per command line.
const MAX_PROCESSES: usize = 16;
const MAX_CMDLINE_CHARS: usize = 160;

/// A hotplug script and how long it may run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Script {
    pub path: String,
    /// libxl's [`HOTPLUG_LIMIT`]; the host tests' stand-ins get less.
    pub limit: Duration,
}

/// Why a hotplug script did not do its work.
#[derive(Debug, thiserror::Error)]
pub enum HotplugError {
    #[error("cannot run {script}: {why}")]
    Spawn { script: String, why: String },
    #[error("{script} {action} failed ({status}): {output}")]
    Failed { script: String, action: String, status: String, output: String },
    /// It sat past its limit and was killed; `picture` says where it was.
    #[error("{script} {action} did not finish within {secs} s; killed. {picture}")]
    Stuck { script: String, action: String, secs: u64, picture: String },
    #[error("{script} add left hotplug-status {status:?} ({why})")]
    NotConnected { script: String, status: Option<String>, why: String },
}

impl Script {
    /// Runs `script action` for the backend `backend/vbd/<frontend>/<devid>` with
    /// libxl's environment (`script`, `XENBUS_TYPE`, `XENBUS_PATH`,
    /// `XENBUS_BASE_PATH`), stdin /dev/null, up to the limit.
    pub fn run(&self, frontend_domid: u32, devid: u32, action: &str) -> Result<(), HotplugError> {
        let script = &self.path;
        let relative = format!("backend/vbd/{frontend_domid}/{devid}");
        let mut child = Command::new(script)
            .arg(action)
            .env("script", script)
            .env("XENBUS_TYPE", "vbd")
            .env("XENBUS_PATH", &relative)
            .env("XENBUS_BASE_PATH", "backend")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .map_err(|e| HotplugError::Spawn { script: script.clone(), why: e.to_string() })?;
        let deadline = Instant::now() + self.limit;
        loop {
            match child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() >= deadline => {
                    let picture = stuck_picture(child.id());
                    // The whole group: the script and every child it started.
                    let _ = sys::kill_process_group(child.id());
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(HotplugError::Stuck {
                        script: script.clone(),
                        action: action.to_string(),
                        secs: self.limit.as_secs(),
                        picture,
                    });
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(50)),
                Err(e) => return Err(HotplugError::Spawn { script: script.clone(), why: e.to_string() }),
            }
        }
        let output =
            child.wait_with_output().map_err(|e| HotplugError::Spawn { script: script.clone(), why: e.to_string() })?;
        if output.status.success() {
            return Ok(());
        }
        Err(HotplugError::Failed {
            script: script.clone(),
            action: action.to_string(),
            status: output.status.to_string(),
            output: format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout).trim(),
                String::from_utf8_lossy(&output.stderr).trim()
            ),
        })
    }
}

/// One process as /proc shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct ProcessView {
    pid: u32,
    /// The process group.
    pgrp: u32,
    /// `R`, `S`, `D`, ...
    state: char,
    comm: String,
}

/// Parses `/proc/<pid>/stat`: `pid (comm) state ppid pgrp ...` (comm may hold spaces
/// and parentheses: it ends at the last `)`).
fn parse_stat(text: &str) -> Option<ProcessView> {
    let (head, rest) = text.rsplit_once(')')?;
    let (pid, comm) = head.split_once(" (")?;
    let mut fields = rest.split_ascii_whitespace();
    let state = fields.next()?.chars().next()?;
    let _ppid = fields.next()?;
    let pgrp = fields.next()?.parse().ok()?;
    Some(ProcessView { pid: pid.trim().parse().ok()?, pgrp, state, comm: comm.to_string() })
}

/// `/proc/<pid>/cmdline` as one line, bounded.
fn cmdline(pid: u32) -> String {
    let raw = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let text = String::from_utf8_lossy(&raw).replace('\0', " ");
    text.trim().chars().take(MAX_CMDLINE_CHARS).collect()
}

fn all_pids() -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else { return Vec::new() };
    let mut pids: Vec<u32> = entries.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect();
    pids.sort_unstable();
    pids
}

/// Whether process `pid` has `file` open (any descriptor naming it, unlinked or not).
fn has_open(pid: u32, file: &str) -> bool {
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else { return false };
    fds.filter_map(Result::ok).any(|fd| {
        fs::read_link(fd.path()).is_ok_and(|target| {
            let target = target.to_string_lossy();
            target.strip_suffix(" (deleted)").unwrap_or(&target) == file
        })
    })
}

/// Where a stuck script is: its group's processes (state, wait channel, command
/// line), the processes that have the block lock file open, the log's last lines.
fn stuck_picture(pgid: u32) -> String {
    let views: Vec<ProcessView> = all_pids()
        .into_iter()
        .filter_map(|pid| parse_stat(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?))
        .collect();
    let mut text = String::from("Its processes:");
    for view in views.iter().filter(|v| v.pgrp == pgid).take(MAX_PROCESSES) {
        let wchan = fs::read_to_string(format!("/proc/{}/wchan", view.pid)).unwrap_or_default();
        let _ =
            write!(text, " [{} {} {} in {:?}: {}]", view.pid, view.comm, view.state, wchan.trim(), cmdline(view.pid));
    }
    // /var/run is a link to /run on Debian: what /proc shows is the resolved name.
    let lock_file = std::path::Path::new(BLOCK_LOCK_FILE)
        .parent()
        .and_then(|dir| fs::canonicalize(dir).ok())
        .map_or_else(|| BLOCK_LOCK_FILE.to_string(), |dir| dir.join("block").to_string_lossy().into_owned());
    let holders: Vec<String> = views
        .iter()
        .filter(|v| has_open(v.pid, &lock_file))
        .take(MAX_PROCESSES)
        .map(|v| format!("{} {} (group {})", v.pid, v.comm, v.pgrp))
        .collect();
    let _ =
        write!(text, ". {lock_file} open in: {}", if holders.is_empty() { "none".into() } else { holders.join(", ") });
    let tail = log_tail(&read_end(HOTPLUG_LOG, LOG_TAIL_BYTES), LOG_TAIL_LINES);
    if !tail.is_empty() {
        let _ = write!(text, ". {HOTPLUG_LOG} ends: {tail}");
    }
    text
}

/// The last `bytes` bytes of file `path` (a log that may have grown large), as text;
/// empty if it cannot be read.
fn read_end(path: &str, bytes: u64) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut file) = fs::File::open(path) else { return String::new() };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut end = Vec::new();
    if file.seek(SeekFrom::Start(len.saturating_sub(bytes))).is_err() || file.take(bytes).read_to_end(&mut end).is_err()
    {
        return String::new();
    }
    String::from_utf8_lossy(&end).into_owned()
}

/// The last `lines` non-empty lines of `log`, joined with " | ".
fn log_tail(log: &str, lines: usize) -> String {
    let kept: Vec<&str> = log.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    kept[kept.len().saturating_sub(lines)..].join(" | ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_parse_with_spaces_and_parentheses_in_the_name() {
        let view = parse_stat("4242 (flock) S 4200 4200 4200 0 -1 4194560 105 0 0 0").unwrap();
        assert_eq!(view, ProcessView { pid: 4242, pgrp: 4200, state: 'S', comm: "flock".into() });
        let odd = parse_stat("7 (a (b) c) D 1 9 9 0").unwrap();
        assert_eq!((odd.comm.as_str(), odd.state, odd.pgrp), ("a (b) c", 'D', 9));
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(parse_stat("12 (x) R"), None);
    }

    #[test]
    fn only_the_end_of_a_long_log_is_read() {
        let path = std::env::temp_dir().join(format!("stubctl-hotplug-log-{}", std::process::id()));
        fs::write(&path, format!("{}last line\n", "x".repeat(100_000))).unwrap();
        let end = read_end(path.to_str().unwrap(), 64);
        assert_eq!(end.len(), 64);
        assert!(end.ends_with("last line\n"));
        assert_eq!(read_end("/nonexistent/log", 64), "");
        fs::remove_file(&path).unwrap();
    }

    #[test]
    fn the_log_tail_is_the_last_non_empty_lines() {
        assert_eq!(log_tail("a\n\nb\nc\n\n", 2), "b | c");
        assert_eq!(log_tail("", 3), "");
        assert_eq!(log_tail("only\n", 3), "only");
    }

    /// A script that hangs with a child: killed at the limit, with the child (a
    /// `sleep` in this group) named in the error and gone afterwards.
    #[test]
    fn a_stuck_script_is_killed_with_its_children_and_described() {
        let dir = std::env::temp_dir().join(format!("stubctl-hotplug-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let script = dir.join("stuck");
        let marker = dir.join("child-pid");
        fs::write(&script, format!("#!/bin/sh\nsleep 300 &\necho $! > {}\nwait\n", marker.display())).unwrap();
        fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let started = Instant::now();
        // 3 s: time enough for the shell to start its child on a busy machine.
        let stuck = Script { path: script.display().to_string(), limit: Duration::from_secs(3) };
        let error = stuck.run(3, 5632, "add").unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(15), "{error}");
        assert!(matches!(error, HotplugError::Stuck { secs: 3, .. }), "{error}");
        let error = error.to_string();
        assert!(error.contains("add did not finish within 3 s; killed"), "{error}");
        assert!(error.contains(" sleep ") && error.contains("sleep 300"), "{error}");
        let child: u32 = fs::read_to_string(&marker).unwrap().trim().parse().unwrap();
        // The child was killed with the group (a zombie until reaped by init counts as gone).
        let deadline = Instant::now() + Duration::from_secs(5);
        let alive = || {
            fs::read_to_string(format!("/proc/{child}/stat"))
                .ok()
                .and_then(|s| parse_stat(&s))
                .is_some_and(|v| v.state != 'Z')
        };
        while alive() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(!alive(), "the script's child {child} outlived it");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_failing_script_reports_its_output_and_a_good_one_succeeds() {
        let script = |path: &str| Script { path: path.to_string(), limit: Duration::from_secs(10) };
        let error = script("/bin/false").run(3, 5632, "add").unwrap_err();
        assert!(matches!(error, HotplugError::Failed { .. }), "{error}");
        assert!(error.to_string().contains("/bin/false add failed (exit status: 1)"), "{error}");
        script("/bin/true").run(3, 5632, "remove").unwrap();
        let error = script("/nonexistent/block").run(3, 5632, "add").unwrap_err();
        assert!(matches!(error, HotplugError::Spawn { .. }), "{error}");
    }
}
