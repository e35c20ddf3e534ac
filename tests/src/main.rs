//! xen-suite: the real-Xen tests, run inside the test bed's dom0.
//!
//! `cargo xtask test` boots Xen + dom0 under QEMU with this program and the image in
//! dom0's initramfs; dom0's /init runs `xen-suite run [FILTER]`. Each test drives
//! `xl` and judges what Xen and the guest really did (shutdown reason, guest console
//! log written by xenconsoled, hypervisor log). Results go to dom0's console, which
//! is the test bed's serial port, as `test xen::NAME ... ok|FAILED`; xtask reads them
//! from there. Lines starting with `@@` carry guest console logs and failure details.
//! `xen-suite bench` runs the throughput comparisons (`cargo xtask bench`) and prints
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
        Some("run") => {
            let filter = args.get(1).map(String::as_str).unwrap_or("");
            let (passed, failed) = harness::run(&cases::all(), filter);
            if failed == 0 && passed > 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE }
        }
        Some("bench") => {
            let filter = args.get(1).map(String::as_str).unwrap_or("");
            if cases::bench::run(filter) == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE }
        }
        Some("demo") => match cases::hvm::demo() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                println!("@@demo failed: {e}");
                ExitCode::FAILURE
            }
        },
        _ => {
            eprintln!("usage: xen-suite list | run [FILTER] | bench [FILTER] | demo");
            ExitCode::from(2)
        }
    }
}
