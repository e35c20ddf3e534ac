//! libxl's stored configuration of a guest, changed as cd-insert and cd-eject change
//! it: never a panic, and a changed config says the new medium.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stubctl::config;

fuzz_target!(|text: &[u8]| {
    if let Ok(changed) = config::with_medium(text, "hdc", Some("/tmp/b.iso")) {
        assert_eq!(config::medium(&changed, "hdc").as_deref(), Some("/tmp/b.iso"));
    }
    let _ = config::with_medium(text, "hdc", None);
});
