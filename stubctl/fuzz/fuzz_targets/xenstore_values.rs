//! Values read from xenstore (a domain may have written them) and vdev names from the
//! command line, through every parser that reads them. None of it may panic, and a
//! uuid accepted must be safe in a file name.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stubctl::paths::{self, BackendKind, BackendPath, Uuid};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = stubctl::vdev::devid(&text);
    let _ = stubctl::vdev::is_ide(&text);
    let _ = paths::parse_domid(&text);
    if let Some(uuid) = Uuid::from_vm_path(&text) {
        assert!(!uuid.to_string().contains('/') && !uuid.to_string().contains('.'));
    }
    if let Some(backend) = BackendPath::parse(&text) {
        assert_eq!(BackendPath::parse(&backend.path()), Some(backend));
    }
    let _ = paths::medium_of_params(BackendKind::Qdisk, &text);
    let _ = paths::medium_of_params(BackendKind::Vbd, &text);
});
