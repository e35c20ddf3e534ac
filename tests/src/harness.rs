//! Runs tests one after another, each in its own thread with a time limit, prints a
//! result line per test, and leaves no domain behind.
//!
//! A test that runs past its limit is given up on: the harness marks its run
//! cancelled, waits briefly for the thread to notice, and destroys every domain the
//! test registered. Rust cannot stop a thread, so the late thread keeps running
//! until it returns, but it can no longer act: every dom0 command goes through
//! [`crate::proc::run`], which refuses to start one for a cancelled run (and kills
//! one in progress), [`crate::proc::poll`] stops waiting, and [`Ctx`] registers no
//! more domains. So the next test's domains are safe from it.

use crate::xl;
use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, mpsc};
use std::time::{Duration, Instant};

/// How long a timed-out test's thread gets to notice before its domains go.
const GRACE: Duration = Duration::from_secs(1);

/// One real-Xen test. `run` returns Err with the reason it failed.
pub struct Test {
    pub name: &'static str,
    pub limit: Duration,
    pub run: fn(&mut Ctx) -> Result<(), String>,
}

/// One test's run, shared by the harness and the test's thread.
#[derive(Debug, Default)]
struct Run {
    /// Set (under the `domains` lock) when the harness gives up on the test.
    cancelled: AtomicBool,
    /// The domains the test registered, to report on and destroy.
    domains: Mutex<Vec<String>>,
}

impl Run {
    fn domains(&self) -> MutexGuard<'_, Vec<String>> {
        self.domains.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Marks the run cancelled; no domain can be registered afterwards.
    fn cancel(&self) -> Vec<String> {
        let domains = self.domains();
        self.cancelled.store(true, Ordering::SeqCst);
        domains.clone()
    }
}

thread_local! {
    /// The run of the test this thread executes, if any.
    static CURRENT_RUN: RefCell<Option<Arc<Run>>> = const { RefCell::new(None) };
}

/// Whether this thread belongs to a test the harness has given up on.
pub fn cancelled() -> bool {
    CURRENT_RUN.with(|run| run.borrow().as_ref().is_some_and(|run| run.cancelled.load(Ordering::SeqCst)))
}

/// Fails if this thread belongs to a test the harness has given up on.
pub fn ensure_live() -> Result<(), String> {
    if cancelled() {
        Err("the harness gave up on this test (time limit); it may not act any more".into())
    } else {
        Ok(())
    }
}

/// What a test leaves for the harness: domains to report on and destroy.
#[derive(Default)]
pub struct Ctx {
    run: Arc<Run>,
}

/// Where xenconsoled (started with --log=guest) writes a domain's console 0.
pub fn console_log_path(domain: &str) -> String {
    format!("/var/log/xen/console/guest-{domain}.log")
}

impl Ctx {
    /// Records `domain` for clean-up; refused once the harness gave up on the test.
    pub fn register_domain(&mut self, domain: &str) -> Result<(), String> {
        let mut domains = self.run.domains();
        if self.run.cancelled.load(Ordering::SeqCst) {
            return Err(format!("not registering domain {domain}: the harness gave up on this test"));
        }
        if !domains.iter().any(|d| d == domain) {
            domains.push(domain.to_string());
        }
        Ok(())
    }

    /// The domains registered so far.
    pub fn domains(&self) -> Vec<String> {
        self.run.domains().clone()
    }

    /// Records the domain for clean-up, writes an xl config for `domain` to /tmp,
    /// clears its old console log. Returns the config path.
    pub fn prepare_domain(&mut self, domain: &str, config: &str) -> Result<String, String> {
        self.register_domain(domain)?;
        let path = format!("/tmp/{domain}.cfg");
        std::fs::write(&path, config).map_err(|e| format!("writing {path}: {e}"))?;
        let log = console_log_path(domain);
        std::fs::write(&log, "").map_err(|e| format!("clearing {log}: {e}"))?;
        xl::destroy(domain);
        Ok(path)
    }
}

/// The text of a domain's console log so far.
pub fn console_log(domain: &str) -> String {
    std::fs::read(console_log_path(domain)).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
}

/// Fails unless `haystack` contains `needle`, naming `what` was searched.
pub fn expect_contains(haystack: &str, needle: &str, what: &str) -> Result<(), String> {
    if haystack.contains(needle) { Ok(()) } else { Err(format!("{what} lacks {needle:?}")) }
}

/// A value no earlier run could have produced, to tie output to this run.
pub fn nonce() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/uuid")
        .map(|s| s.trim().replace('-', ""))
        .unwrap_or_else(|_| format!("{:x}", Instant::now().elapsed().as_nanos()))
}

/// What the harness does with a finished (or abandoned) test's domains.
pub trait Cleanup {
    /// Reports on `domain` (its console log) and destroys it.
    fn report_and_destroy(&self, domain: &str);

    /// Removes the scratch files (disk images, CD images, save files) a test wrote
    /// since `since`: dom0's /tmp is a tmpfs in its 1 GiB, and a full run's images
    /// filled it once (`xl save` then failed with ENOSPC).
    fn remove_scratch(&self, _since: std::time::SystemTime) {}
}

/// What tests leave in /tmp that is theirs alone: (directory, extensions).
const SCRATCH: (&str, &[&str]) = ("/tmp", &["iso", "img", "save"]);

/// Removes the files in `dir` (not below) whose extension is one of `extensions` and
/// that were written since `since`.
fn remove_scratch_in(dir: &str, extensions: &[&str], since: std::time::SystemTime) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        let ours = path.extension().and_then(|e| e.to_str()).is_some_and(|e| extensions.contains(&e));
        let written_since = entry.metadata().and_then(|m| m.modified()).is_ok_and(|t| t >= since);
        if ours && written_since && entry.file_type().is_ok_and(|t| t.is_file()) {
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// The real clean-up: console logs to stdout, then `xl destroy`.
pub struct Xl;

impl Cleanup for Xl {
    fn remove_scratch(&self, since: std::time::SystemTime) {
        remove_scratch_in(SCRATCH.0, SCRATCH.1, since);
    }

    fn report_and_destroy(&self, domain: &str) {
        for line in console_log(domain).lines() {
            println!("@@console {domain}| {line}");
        }
        xl::destroy(domain);
    }
}

/// Prints the console logs of a test's domains and destroys them.
pub fn clean_up(ctx: &Ctx) {
    for domain in ctx.domains() {
        Xl.report_and_destroy(&domain);
    }
}

/// Runs the tests whose name contains `filter`; returns (passed, failed).
pub fn run(tests: &[Test], filter: &str) -> (usize, usize) {
    run_with(tests, filter, &Xl)
}

/// `run`, with `cleanup` for the domains each test leaves.
pub fn run_with(tests: &[Test], filter: &str, cleanup: &dyn Cleanup) -> (usize, usize) {
    let selected: Vec<&Test> = tests.iter().filter(|t| t.name.contains(filter)).collect();
    println!("@@suite-start {} tests", selected.len());
    let (mut passed, mut failed) = (0, 0);
    for t in selected {
        println!("@@test-start {}", t.name);
        let started = Instant::now();
        let result = run_one(t, cleanup);
        let secs = started.elapsed().as_secs_f64();
        match result {
            Ok(()) => {
                passed += 1;
                println!("test {} ... ok ({secs:.1} s)", t.name);
            }
            Err(reason) => {
                failed += 1;
                for line in reason.lines() {
                    println!("@@reason {}| {line}", t.name);
                }
                println!("test {} ... FAILED ({secs:.1} s)", t.name);
            }
        }
        println!("@@memory after {}| {}", t.name, memory_summary());
    }
    println!("@@suite-done passed={passed} failed={failed}");
    (passed, failed)
}

/// The machine's available memory and its tmpfs share (/proc/meminfo's MemAvailable
/// and Shmem): dom0 has 1 GiB and its /tmp is a tmpfs, so a test that leaves files
/// behind, or a slow bed, shows here.
fn memory_summary() -> String {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mib = |key: &str| {
        meminfo
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(':')?.split_whitespace().next()?.parse::<u64>().ok())
            .map_or_else(|| "?".to_string(), |kib| (kib / 1024).to_string())
    };
    format!("MemAvailable {} MiB, Shmem (tmpfs) {} MiB", mib("MemAvailable"), mib("Shmem"))
}

/// Runs one test in its own thread within its limit, then cleans up its domains.
fn run_one(t: &Test, cleanup: &dyn Cleanup) -> Result<(), String> {
    // A second's margin: some file systems keep coarse modification times.
    let started = std::time::SystemTime::now() - Duration::from_secs(1);
    let shared = Arc::new(Run::default());
    let (tx, rx) = mpsc::channel();
    let run = t.run;
    let for_thread = shared.clone();
    let spawned = std::thread::Builder::new().name(t.name.to_string()).spawn(move || {
        CURRENT_RUN.with(|current| *current.borrow_mut() = Some(for_thread.clone()));
        let mut ctx = Ctx { run: for_thread };
        let result = run(&mut ctx);
        let _ = tx.send(result);
    });
    if let Err(e) = spawned {
        return Err(format!("cannot start the test's thread: {e}"));
    }
    let result = match rx.recv_timeout(t.limit) {
        Ok(result) => result,
        Err(_) => {
            // From here on the thread can neither start commands nor register
            // domains; give a command it is running time to be killed.
            shared.cancel();
            let _ = rx.recv_timeout(GRACE);
            // What the device models and libxl last said is all there is to go on.
            Err(with_xen_logs(format!("no result within {} s; the test's domains were destroyed", t.limit.as_secs())))
        }
    };
    for domain in shared.domains().iter() {
        cleanup.report_and_destroy(domain);
    }
    cleanup.remove_scratch(started);
    result
}

/// `error` with the last lines of every log in /var/log/xen (libxl's, the device
/// models' and the dom0 QEMU's that serves a stub domain's consoles).
pub fn with_xen_logs(error: String) -> String {
    let mut text = error;
    let mut paths: Vec<_> = std::fs::read_dir("/var/log/xen")
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    paths.sort();
    for path in paths {
        let log = std::fs::read_to_string(&path).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        text.push_str(&format!("\n{} (last lines):\n", path.display()));
        text.push_str(&tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// What the tests below saw, in order.
    static EVENTS: Mutex<Vec<String>> = Mutex::new(Vec::new());

    fn event(what: String) {
        EVENTS.lock().unwrap().push(what);
    }

    fn marker() -> std::path::PathBuf {
        std::env::temp_dir().join(format!("xen-suite-late-thread-{}", std::process::id()))
    }

    /// Records clean-ups instead of running xl.
    struct Recorder;

    impl Cleanup for Recorder {
        fn report_and_destroy(&self, domain: &str) {
            event(format!("destroyed {domain}"));
        }
    }

    /// Registers a domain, hangs past its limit and the harness's grace, then acts
    /// as a late thread would, while the next test runs: runs a command and
    /// registers the next test's domain.
    fn hangs(ctx: &mut Ctx) -> Result<(), String> {
        ctx.register_domain("hanging-domain")?;
        std::thread::sleep(Duration::from_millis(200) + GRACE + Duration::from_millis(300));
        let touched = crate::proc::run(Command::new("touch").arg(marker()), Duration::from_secs(5));
        event(format!("late command: {}", touched.map(|_| "ran".to_string()).unwrap_or_else(|e| e)));
        let registered = ctx.register_domain("next-domain");
        event(format!("late registration: {}", registered.map(|()| "done".to_string()).unwrap_or_else(|e| e)));
        Ok(())
    }

    /// The next test: it registers its own domain and waits until the late thread
    /// of the previous test has tried to act.
    fn next(ctx: &mut Ctx) -> Result<(), String> {
        ctx.register_domain("next-domain")?;
        event("next test started".into());
        let tried = crate::proc::poll(Duration::from_secs(5), Duration::from_millis(10), || {
            EVENTS.lock().unwrap().iter().any(|e| e.starts_with("late registration")).then_some(())
        });
        tried.ok_or_else(|| "the late thread never tried to act".to_string())
    }

    #[test]
    fn scratch_written_during_a_test_is_removed_and_older_files_stay() {
        let dir = std::env::temp_dir().join(format!("scratch-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let old = dir.join("before.img");
        std::fs::write(&old, b"x").unwrap();
        let since = std::time::SystemTime::now() + Duration::from_millis(10);
        std::thread::sleep(Duration::from_millis(50));
        for name in ["disk.img", "cd.iso", "guest.save", "xl-create.log"] {
            std::fs::write(dir.join(name), b"x").unwrap();
        }
        remove_scratch_in(dir.to_str().unwrap(), SCRATCH.1, since);
        let mut left: Vec<String> =
            std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        left.sort();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(left, ["before.img", "xl-create.log"]);
    }

    #[test]
    fn a_test_that_hangs_is_cut_off_and_its_late_thread_cannot_act() {
        let _ = std::fs::remove_file(marker());
        let tests = [
            Test { name: "harness::hangs", limit: Duration::from_millis(200), run: hangs },
            Test { name: "harness::next", limit: Duration::from_secs(10), run: next },
        ];
        assert_eq!(run_with(&tests, "harness::", &Recorder), (1, 1));
        assert!(!marker().exists(), "the timed-out test's thread ran a command after the harness gave up on it");
        let events = EVENTS.lock().unwrap().clone();
        assert_eq!(events[..2], ["destroyed hanging-domain", "next test started"], "destroyed before the next test");
        let late: Vec<&String> = events.iter().filter(|e| e.starts_with("late")).collect();
        assert_eq!(late.len(), 2, "{events:?}");
        assert!(late.iter().all(|e| e.contains("gave up on this test")), "refused: {events:?}");
        assert_eq!(events.last().map(String::as_str), Some("destroyed next-domain"), "{events:?}");
        assert_eq!(events.iter().filter(|e| e.starts_with("destroyed")).count(), 2, "{events:?}");
    }

    #[test]
    fn a_thread_outside_any_test_may_act() {
        assert!(!cancelled());
        assert_eq!(ensure_live(), Ok(()));
        let mut ctx = Ctx::default();
        ctx.register_domain("demo").unwrap();
        ctx.register_domain("demo").unwrap();
        assert_eq!(ctx.domains(), ["demo"]);
    }
}
