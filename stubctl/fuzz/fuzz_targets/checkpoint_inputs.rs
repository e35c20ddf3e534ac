//! What `stubctl checkpoint` reads from outside: the device model's saved state in
//! dom0's console file (dmstate::frame), `xl list -l`'s JSON and checkpoint file names.
//! None may panic; a frame found is a prefix of the input and framed as promised.

#![no_main]

use libfuzzer_sys::fuzz_target;
use stubctl::{checkpoint, dmstate};

fuzz_target!(|data: &[u8]| {
    if let Ok(Some(frame)) = dmstate::frame(data) {
        assert!(data.starts_with(frame));
        assert!(frame.starts_with(b"RSTUBDM1") && frame.ends_with(b"RSTUBEND"));
    }
    let text = String::from_utf8_lossy(data);
    if let Some(config) = checkpoint::config_from_xl_list(&text) {
        assert!(serde_json::from_slice::<serde_json::Value>(&config).is_ok());
    }
    let _ = checkpoint::seq_of(&text, "g");
});
