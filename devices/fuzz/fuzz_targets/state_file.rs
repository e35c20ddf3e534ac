//! Arbitrary bytes through the restore stream: the state-file reader, in pieces of
//! every size, under a small and the default payload limit; then the device-state
//! decoder behind it: the bytes as a payload, or (first byte odd) as damage to a real
//! saved state, loaded into a machine that must then run and save again.
//!
//! Run with `cargo fuzz run state_file` in devices/fuzz. The same checks,
//! `devices::state_file::check_reader` and `devices::machine::fuzz_load_state`, run on
//! generated inputs in the host tests, where cargo-fuzz is not needed.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

static SAVED: OnceLock<Vec<u8>> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    if let Err(problem) = devices::state_file::check_reader(data) {
        panic!("state-file reader broke a promise: {problem}");
    }
    let Some((&control, rest)) = data.split_first() else { return };
    if control & 1 == 0 {
        devices::machine::fuzz_load_state(rest);
    } else {
        // (offset, value) pairs written over a real saved state.
        let mut payload = SAVED.get_or_init(devices::machine::fuzz_saved_state).clone();
        for pair in rest.chunks_exact(3) {
            let at = usize::from(u16::from_le_bytes([pair[0], pair[1]])) % payload.len().max(1);
            if let Some(byte) = payload.get_mut(at) {
                *byte = pair[2];
            }
        }
        devices::machine::fuzz_load_state(&payload);
    }
});
