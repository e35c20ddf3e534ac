//! Random register, DMA and wire traffic into the RTL8139 (devices::nic::rtl8139::fuzz_rtl8139):
//! no input may panic or break the card's bounds, and every operation runs.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    assert_eq!(devices::nic::rtl8139::fuzz_rtl8139(data), data.len() / 8);
});
