//! `cargo xtask bench`: boots the test bed once with dom0 running `xen-suite bench`,
//! collects `@@bench <name>| <value> <unit>` lines, and prints each result and the
//! ratio of every `<x>/image` to each of its peers `<x>/<peer>` (`linux`, `qemu-dom0`). Results also go to
//! target/bench/results.txt.

use crate::testbed::BootOutcome;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// One measurement: name, value, unit.
pub type Measurement = (String, f64, String);

/// Pulls the measurements and failures out of a bench boot's serial lines.
pub fn collect(outcome: &BootOutcome) -> (Vec<Measurement>, Vec<String>) {
    let mut results = Vec::new();
    let mut failures = Vec::new();
    for l in &outcome.lines {
        if let Some(at) = l.find("@@bench ") {
            let Some((name, rest)) = l[at + 8..].split_once("| ") else { continue };
            let mut parts = rest.split_whitespace();
            if let (Some(v), Some(unit)) = (parts.next().and_then(|v| v.parse().ok()), parts.next()) {
                results.push((name.to_string(), v, unit.to_string()));
            }
        } else if let Some(at) = l.find("@@bench-failed ") {
            failures.push(l[at + 15..].to_string());
        }
    }
    (results, failures)
}

/// The report: every measurement, then `<x>: image/linux = ratio` lines.
pub fn report(results: &[Measurement], failures: &[String]) -> String {
    let mut out = String::new();
    for (name, value, unit) in results {
        let _ = writeln!(out, "{name:<32} {value:>12.3} {unit}");
    }
    let by_name: BTreeMap<&str, f64> = results.iter().map(|(n, v, _)| (n.as_str(), *v)).collect();
    for (name, value) in &by_name {
        let Some(base) = name.strip_suffix("/image") else { continue };
        let peers: Vec<(&str, f64)> = by_name
            .iter()
            .filter_map(|(other, v)| Some((other.strip_prefix(base)?.strip_prefix('/')?, *v)))
            .filter(|(peer, _)| *peer != "image")
            .collect();
        if peers.is_empty() {
            let _ = writeln!(out, "ratio {base}: no peer measured");
        }
        for (peer, peer_value) in peers {
            if peer_value > 0.0 {
                let _ = writeln!(out, "ratio {base}: image/{peer} = {:.2}", value / peer_value);
            }
        }
    }
    for f in failures {
        let _ = writeln!(out, "FAILED {f}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_become_ratios() {
        let outcome = BootOutcome {
            lines: vec![
                "[ 1.0] @@bench blk-seq-read/linux| 100.000 MB/s".into(),
                "@@bench blk-seq-read/image| 95.000 MB/s".into(),
                "@@bench vchan/image| 3.5 MB/s".into(),
                "@@bench guest-boot-init/image| 100.0 s".into(),
                "@@bench guest-boot-init/qemu-dom0| 125.0 s".into(),
                "@@bench-failed net| backend gone".into(),
                "@@bench garbage".into(),
            ],
            timed_out: false,
            serial_log: "s".into(),
            log_dir: ".".into(),
        };
        let (results, failures) = collect(&outcome);
        assert_eq!(results.len(), 5);
        let text = report(&results, &failures);
        assert!(text.contains("ratio blk-seq-read: image/linux = 0.95"), "{text}");
        assert!(text.contains("ratio vchan: no peer measured"), "{text}");
        assert!(text.contains("ratio guest-boot-init: image/qemu-dom0 = 0.80"), "{text}");
        assert!(text.contains("FAILED net| backend gone"), "{text}");
    }
}
