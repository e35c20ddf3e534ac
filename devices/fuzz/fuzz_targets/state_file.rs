//! Arbitrary bytes through the restore stream's state-file reader, in pieces of
//! every size, under a small and the default payload limit.
//!
//! Run with `cargo fuzz run state_file` in devices/fuzz. The same checks,
//! `devices::state_file::check_reader`, run on a few thousand generated inputs in
//! the host tests, where cargo-fuzz is not needed.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(problem) = devices::state_file::check_reader(data) {
        panic!("state-file reader broke a promise: {problem}");
    }
});
