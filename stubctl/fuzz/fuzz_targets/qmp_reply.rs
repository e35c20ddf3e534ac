//! A QMP line from the device model: parsed as a message, and its return value read
//! as query-fdsets, query-block and query-status replies. None of it may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stubctl::qmp::{self, Message};

fuzz_target!(|line: &[u8]| {
    if let Ok(Message::Return { value, .. }) = qmp::parse_message(line) {
        if let Ok(fdsets) = qmp::parse_fdsets(&value) {
            let _ = qmp::stub_fdset(&fdsets, 5632);
        }
        if let Ok(drives) = qmp::parse_block(&value) {
            let _ = drives.iter().any(|d| d.is("ide-5632"));
        }
        let _ = qmp::parse_status(&value);
    }
});
