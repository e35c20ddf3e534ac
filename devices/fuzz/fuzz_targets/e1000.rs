//! Random register, descriptor, DMA and wire traffic into the 82540EM
//! (devices::nic::e1000::fuzz_e1000): no input may panic or break the card's promises
//! (bounded transmit queue, frame lengths, INTA only for an unmasked cause).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    devices::nic::e1000::fuzz_e1000(data);
});
