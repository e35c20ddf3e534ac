//! Counting test results: cargo's per-test lines on the host, and the suite's lines
//! read back from the test bed's serial log.

use crate::testbed::BootOutcome;

#[derive(Default, Debug)]
pub struct Tally {
    pub passed: usize,
    pub failed: usize,
}

/// A per-test result found in a line of output.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Ok,
    Failed,
}

/// Finds `test NAME ... ok|FAILED` anywhere in `line` (serial lines may carry a
/// prefix from Xen's console); returns the name and verdict.
pub fn parse_result(line: &str) -> Option<(&str, Verdict)> {
    let at = line.find("test ")?;
    let rest = &line[at + 5..];
    let (name, outcome) = rest.split_once(" ... ")?;
    if name.is_empty() || name.contains(' ') {
        return None;
    }
    let verdict = match outcome.split_whitespace().next()? {
        "ok" => Verdict::Ok,
        "FAILED" => Verdict::Failed,
        _ => return None,
    };
    Some((name, verdict))
}

impl Tally {
    /// Counts and prints one check run here: passed if `failure` is None, else failed
    /// with that reason.
    pub fn record(&mut self, name: &str, failure: Option<&str>) {
        match failure {
            None => {
                self.passed += 1;
                println!("test {name} ... ok");
            }
            Some(why) => {
                self.failed += 1;
                println!("    {why}");
                println!("test {name} ... FAILED");
            }
        }
    }

    /// Counts one line of `cargo test` output.
    pub fn count_cargo_line(&mut self, line: &str) {
        if !line.starts_with("test ") {
            return;
        }
        match parse_result(line) {
            Some((_, Verdict::Ok)) => self.passed += 1,
            Some((_, Verdict::Failed)) => self.failed += 1,
            None => {}
        }
    }
}

/// " (260.3 s; MemAvailable 612 MiB, Shmem (tmpfs) 180 MiB)": how long dom0 saw test
/// `name` take and its memory afterwards, so that a slow or starved run shows where.
fn details(name: &str, lines: &[String]) -> String {
    let verdict = format!("test {name} ... ");
    let secs = lines.iter().find_map(|l| {
        let rest = &l[l.find(&verdict)? + verdict.len()..];
        let inner = rest.split_once('(')?.1.split_once(" s)")?.0;
        inner.parse::<f64>().ok()
    });
    let memory = lines.iter().find_map(|l| {
        let tag = format!("@@memory after {name}| ");
        Some(l[l.find(&tag)? + tag.len()..].trim().to_string())
    });
    match (secs, memory) {
        (Some(secs), Some(memory)) => format!(" ({secs:.1} s; {memory})"),
        (Some(secs), None) => format!(" ({secs:.1} s)"),
        (None, Some(memory)) => format!(" ({memory})"),
        (None, None) => String::new(),
    }
}

/// Prints one verdict line per expected real-Xen test. A test with no result line
/// (the boot timed out, dom0 died) fails; failure reasons from dom0 are shown.
pub fn judge_xen_suite(expected: &[String], outcome: &BootOutcome, tally: &mut Tally) {
    for name in expected {
        let verdict = outcome.lines.iter().find_map(|l| match parse_result(l) {
            Some((n, v)) if n == name => Some(v),
            _ => None,
        });
        match verdict {
            Some(Verdict::Ok) => {
                tally.passed += 1;
                println!("test {name} ... ok{}", details(name, &outcome.lines));
            }
            other => {
                tally.failed += 1;
                let tag = format!("@@reason {name}| ");
                for l in &outcome.lines {
                    if let Some(at) = l.find(&tag) {
                        println!("    {}", &l[at + tag.len()..]);
                    }
                }
                if other.is_none() {
                    println!(
                        "    no result from dom0 ({}); see {}",
                        if outcome.timed_out { "test bed timed out" } else { "test bed ended early" },
                        outcome.serial_log.display()
                    );
                }
                println!("test {name} ... FAILED{}", details(name, &outcome.lines));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn details_name_the_duration_and_memory() {
        let lines: Vec<String> = vec![
            "[ 12.0] test xen::a ... ok (3.5 s)".into(),
            "[ 12.1] @@memory after xen::a| MemAvailable 600 MiB, Shmem (tmpfs) 20 MiB".into(),
            "[ 13.0] test xen::ab ... ok (9.0 s)".into(),
        ];
        assert_eq!(super::details("xen::a", &lines), " (3.5 s; MemAvailable 600 MiB, Shmem (tmpfs) 20 MiB)");
        assert_eq!(super::details("xen::ab", &lines), " (9.0 s)");
        assert_eq!(super::details("xen::c", &lines), "");
    }

    use super::*;

    #[test]
    fn parses_plain_and_prefixed_result_lines() {
        assert_eq!(parse_result("test a::b ... ok"), Some(("a::b", Verdict::Ok)));
        assert_eq!(parse_result("[  12.5] test xen::x ... FAILED (3.1 s)"), Some(("xen::x", Verdict::Failed)));
        assert_eq!(parse_result("test xen::x ... ok (0.4 s)"), Some(("xen::x", Verdict::Ok)));
    }

    #[test]
    fn ignores_lines_that_only_look_similar() {
        assert_eq!(parse_result("test result: ok. 3 passed; 0 failed"), None);
        assert_eq!(parse_result("test x ... ignored"), None);
        assert_eq!(parse_result("@@test-start xen::x"), None);
        assert_eq!(parse_result("test  ... ok"), None);
    }

    #[test]
    fn cargo_tally_counts_only_per_test_lines() {
        let mut t = Tally::default();
        for l in [
            "running 2 tests",
            "test a ... ok",
            "test b ... FAILED",
            "test result: FAILED. 1 passed; 1 failed",
            "test c ... ignored",
        ] {
            t.count_cargo_line(l);
        }
        assert_eq!((t.passed, t.failed), (1, 1));
    }

    #[test]
    fn recorded_checks_count_and_print_a_result_line() {
        let mut t = Tally::default();
        t.record("host::fmt", None);
        t.record("host::clippy", Some("exit status: 101"));
        t.record("host::clippy_image", None);
        assert_eq!((t.passed, t.failed), (2, 1));
    }

    #[test]
    fn missing_results_fail() {
        let outcome = BootOutcome {
            lines: vec!["test xen::a ... ok".into(), "@@reason xen::b| boom".into(), "test xen::b ... FAILED".into()],
            timed_out: true,
            serial_log: "serial.log".into(),
            log_dir: ".".into(),
        };
        let mut t = Tally::default();
        judge_xen_suite(&["xen::a".into(), "xen::b".into(), "xen::c".into()], &outcome, &mut t);
        assert_eq!((t.passed, t.failed), (1, 2));
    }
}
