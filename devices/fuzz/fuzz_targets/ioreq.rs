//! Random ioreq streams into the machine (devices::machine::fuzz_ioreqs): no input may
//! panic, and every ioreq is answered.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let answered = devices::machine::fuzz_ioreqs(data);
    assert_eq!(answered, data.len() / 32, "an ioreq went unanswered");
});
