//! Arbitrary bytes through a QMP session and its engine: the parser, the framer, every
//! command, and the PV-disk and guest-tray hooks between pieces of input.
//!
//! Run with `cargo fuzz run session` in qmp/fuzz. The same driver,
//! `qmp::sim::fuzz_one`, runs on a few thousand generated inputs in the host tests
//! (qmp/tests/robustness.rs), where cargo-fuzz is not needed.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(problem) = qmp::sim::fuzz_one(data) {
        panic!("malformed QMP output: {problem}");
    }
});
