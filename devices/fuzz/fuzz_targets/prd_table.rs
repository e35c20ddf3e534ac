//! PRD tables (devices::machine::fuzz_prd_table): the pure parser and a READ and a WRITE
//! DMA over the same table in guest RAM; no table may panic or leave a command hanging.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    devices::machine::fuzz_prd_table(data);
});
