//! ATAPI PACKET commands with random CDBs (devices::machine::fuzz_atapi_cdb): no CDB may
//! panic, and every command is answered.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    assert_eq!(devices::machine::fuzz_atapi_cdb(data), data.len() / 13, "a command went unanswered");
});
