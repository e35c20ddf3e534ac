//! Arbitrary bytes through a QMP session over the device model's `Vm`: the parser, the
//! framer, every command's dispatch and its effect on the run state and the block layer,
//! and the PV-disk and guest-tray hooks between pieces of input.
//!
//! Run with `cargo fuzz run qmp_session` in devices/fuzz. The same driver,
//! `devices::vm::fuzz::fuzz_qmp_session`, runs on a few thousand generated inputs in
//! the host tests (devices/tests/qmp_robustness.rs), where cargo-fuzz is not needed.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(problem) = devices::vm::fuzz::fuzz_qmp_session(data) {
        panic!("malformed QMP output: {problem}");
    }
});
