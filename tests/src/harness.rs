//! Runs tests one after another, each in its own thread with a time limit, prints a
//! result line per test, and leaves no domain behind.

use crate::xl;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// One real-Xen test. `run` returns Err with the reason it failed.
pub struct Test {
    pub name: &'static str,
    pub limit: Duration,
    pub run: fn(&mut Ctx) -> Result<(), String>,
}

/// What a test leaves for the harness: domains to report on and destroy.
#[derive(Default)]
pub struct Ctx {
    domains: Vec<String>,
}

/// Where xenconsoled (started with --log=guest) writes a domain's console 0.
pub fn console_log_path(domain: &str) -> String {
    format!("/var/log/xen/console/guest-{domain}.log")
}

impl Ctx {
    /// Writes an xl config for `domain` to /tmp, clears its old console log, and
    /// records the domain for clean-up. Returns the config path.
    pub fn prepare_domain(&mut self, domain: &str, config: &str) -> Result<String, String> {
        let path = format!("/tmp/{domain}.cfg");
        std::fs::write(&path, config).map_err(|e| format!("writing {path}: {e}"))?;
        let log = console_log_path(domain);
        std::fs::write(&log, "").map_err(|e| format!("clearing {log}: {e}"))?;
        xl::destroy(domain);
        self.domains.push(domain.to_string());
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

/// Prints the console logs of a test's domains and destroys them.
pub fn clean_up(ctx: &Ctx) {
    report_domains(ctx)
}

fn report_domains(ctx: &Ctx) {
    for d in &ctx.domains {
        for line in console_log(d).lines() {
            println!("@@console {d}| {line}");
        }
        xl::destroy(d);
    }
}

/// Runs the tests whose name contains `filter`; returns (passed, failed).
pub fn run(tests: &[Test], filter: &str) -> (usize, usize) {
    let selected: Vec<&Test> = tests.iter().filter(|t| t.name.contains(filter)).collect();
    println!("@@suite-start {} tests", selected.len());
    let (mut passed, mut failed) = (0, 0);
    for t in selected {
        println!("@@test-start {}", t.name);
        let started = Instant::now();
        let (tx, rx) = mpsc::channel();
        let run = t.run;
        std::thread::spawn(move || {
            let mut ctx = Ctx::default();
            let result = run(&mut ctx);
            let _ = tx.send((result, ctx));
        });
        let result = match rx.recv_timeout(t.limit) {
            Ok((result, ctx)) => {
                report_domains(&ctx);
                result
            }
            Err(_) => Err(format!("no result within {} s", t.limit.as_secs())),
        };
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
    }
    println!("@@suite-done passed={passed} failed={failed}");
    (passed, failed)
}
