//! xen-suite: the real-Xen tests, run inside the test bed's dom0.
//!
//! `cargo xtask test` boots Xen + dom0 under QEMU with this program and the image in
//! dom0's initramfs; dom0's /init runs `xen-suite run [FILTER [BED]]` (FILTER: names
//! contain it, or one of its `|`-separated parts), BED (4.17 or
//! 4.20) naming the release the test bed runs: only that release's tests run
//! ([`cases::on_bed`]). Each test drives
//! `xl` and judges what Xen and the guest really did (shutdown reason, guest console
//! log written by xenconsoled, hypervisor log). Results go to dom0's console, which
//! is the test bed's serial port, as `test xen::NAME ... ok|FAILED`; xtask reads them
//! from there. Lines starting with `@@` carry guest console logs and failure details.
//! `xen-suite bench [FILTER [BED]]` runs the comparisons (`cargo xtask bench`) and prints
//! `@@bench <name>| <value> <unit>`; `xen-suite demo` is `cargo xtask run`'s job.

mod cases;
#[allow(unsafe_code)] // the ioctl wrappers over /dev/xen: the only unsafe code outside kernel/
mod dom0;
mod harness;
mod hvm_guest;
mod proc;
mod xl;
mod xs;

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("list") => {
            for t in cases::all() {
                println!("{}", t.name);
            }
            ExitCode::SUCCESS
        }
        Some("list-benches") => {
            for b in cases::bench::all() {
                println!("{}", b.name);
            }
            ExitCode::SUCCESS
        }
        Some("run") => {
            let filter = args.get(1).map(String::as_str).unwrap_or("");
            let bed = args.get(2).map(String::as_str).unwrap_or("");
            let tests: Vec<_> =
                cases::all().into_iter().filter(|t| cases::on_bed(t.name, bed) && selected(filter, t.name)).collect();
            let (passed, failed) = harness::run(&tests, "");
            if failed == 0 && passed > 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE }
        }
        Some("bench") => {
            let filter = args.get(1).map(String::as_str).unwrap_or("");
            let bed = args.get(2).map(String::as_str).unwrap_or("");
            if cases::bench::run(filter, bed) == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE }
        }
        Some("demo") => match cases::hvm::demo() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                println!("@@demo failed: {e}");
                ExitCode::FAILURE
            }
        },
        _ => {
            eprintln!("usage: xen-suite list | list-benches | run [FILTER [BED]] | bench [FILTER [BED]] | demo");
            ExitCode::from(2)
        }
    }
}

/// Whether test `name` is selected by `filter`: parts separated by '|', each a
/// substring to include or, after '!', a whole name to leave out (xtask's full run
/// leaves out the tests not yet seen passing; the kernel command line that carries the
/// filter is too short to name all the others). No part to include selects every test.
pub(crate) fn selected(filter: &str, name: &str) -> bool {
    let (left_out, included): (Vec<&str>, Vec<&str>) = filter.split('|').partition(|part| part.starts_with('!'));
    let included = included.is_empty() || included.iter().any(|part| name.contains(part));
    included && !left_out.iter().any(|part| part[1..] == *name)
}

#[cfg(test)]
mod filter_tests {
    use super::selected;

    #[test]
    fn filters_include_substrings_and_leave_out_whole_names() {
        assert!(selected("", "xen::hvm::a"));
        assert!(selected("xen::hvm", "xen::hvm::a") && !selected("xen::blk", "xen::hvm::a"));
        assert!(selected("xen::blk|hvm::a", "xen::hvm::a"));
        assert!(!selected("!xen::hvm::a", "xen::hvm::a") && selected("!xen::hvm::a", "xen::hvm::ab"));
        assert!(selected("!xen::hvm::b|!xen::c", "xen::hvm::a"));
        assert!(!selected("xen::hvm|!xen::hvm::a", "xen::hvm::a"));
    }
}
