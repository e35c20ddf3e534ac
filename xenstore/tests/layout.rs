//! Checks every constant, message type, error name and layout against Xen's xs_wire.h.
//!
//! A C program is compiled against /usr/include/xen (Debian's libxen-dev) and prints
//! the values; the Rust side must agree.

use std::mem::{offset_of, size_of};
use std::process::Command;
use xenstore::reply::Errno;
use xenstore::ring::{self, DomainInterface};
use xenstore::wire::{self, Header, MsgType};

/// Prints each C expression on its own line, `%lu` for numbers or `%s` for strings.
fn c_output(expressions: &[(&str, &str)]) -> Vec<String> {
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("xenstore-layout-{}-{call}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // errno.h first: xs_wire.h only defines the xsd_errors table when EINVAL is defined.
    let mut source = String::from(
        "#include <errno.h>\n#include <stddef.h>\n#include <stdio.h>\n#include <stdint.h>\n\
         #include <xen/io/xs_wire.h>\nint main(void) {\n",
    );
    for (format, expression) in expressions {
        match *format {
            "%s" => source.push_str(&format!("  printf(\"%s\\n\", {expression});\n")),
            _ => source.push_str(&format!("  printf(\"%lu\\n\", (unsigned long)({expression}));\n")),
        }
    }
    source.push_str("  return 0;\n}\n");
    let c_file = dir.join("layout.c");
    let executable = dir.join("layout");
    std::fs::write(&c_file, source).unwrap();
    let output = Command::new("cc")
        .arg("-o")
        .arg(&executable)
        .arg(&c_file)
        .output()
        .expect("running cc (gcc) for the layout check");
    assert!(
        output.status.success(),
        "compiling against /usr/include/xen failed (is libxen-dev installed?):\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let output = Command::new(&executable).output().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    String::from_utf8(output.stdout).unwrap().lines().map(String::from).collect()
}

fn c_numbers(expressions: &[&str]) -> Vec<usize> {
    let with_format: Vec<(&str, &str)> = expressions.iter().map(|e| ("%lu", *e)).collect();
    c_output(&with_format).iter().map(|line| line.parse().unwrap()).collect()
}

/// (C expression, Rust value) pairs must agree.
fn check(pairs: Vec<(String, usize)>) {
    let expressions: Vec<&str> = pairs.iter().map(|pair| pair.0.as_str()).collect();
    let c = c_numbers(&expressions);
    assert_eq!(c.len(), pairs.len());
    let wrong: Vec<String> = pairs
        .iter()
        .zip(&c)
        .filter(|((_, rust), c)| rust != *c)
        .map(|((expression, rust), c)| format!("{expression}: Rust {rust}, C {c}"))
        .collect();
    assert!(wrong.is_empty(), "mismatches with xs_wire.h:\n{}", wrong.join("\n"));
}

/// The C name of each message type.
fn c_name(msg_type: MsgType) -> &'static str {
    match msg_type {
        MsgType::Control => "XS_CONTROL",
        MsgType::Directory => "XS_DIRECTORY",
        MsgType::Read => "XS_READ",
        MsgType::GetPerms => "XS_GET_PERMS",
        MsgType::Watch => "XS_WATCH",
        MsgType::Unwatch => "XS_UNWATCH",
        MsgType::TransactionStart => "XS_TRANSACTION_START",
        MsgType::TransactionEnd => "XS_TRANSACTION_END",
        MsgType::Introduce => "XS_INTRODUCE",
        MsgType::Release => "XS_RELEASE",
        MsgType::GetDomainPath => "XS_GET_DOMAIN_PATH",
        MsgType::Write => "XS_WRITE",
        MsgType::Mkdir => "XS_MKDIR",
        MsgType::Rm => "XS_RM",
        MsgType::SetPerms => "XS_SET_PERMS",
        MsgType::WatchEvent => "XS_WATCH_EVENT",
        MsgType::Error => "XS_ERROR",
        MsgType::IsDomainIntroduced => "XS_IS_DOMAIN_INTRODUCED",
        MsgType::Resume => "XS_RESUME",
        MsgType::SetTarget => "XS_SET_TARGET",
        MsgType::ResetWatches => "XS_RESET_WATCHES",
        MsgType::DirectoryPart => "XS_DIRECTORY_PART",
    }
}

#[test]
fn message_types_match() {
    let pairs = MsgType::ALL.iter().map(|t| (c_name(*t).to_string(), *t as usize)).collect();
    check(pairs);
    // Numbers Xen calls invalid are refused.
    let [count, invalid] = c_numbers(&["XS_TYPE_COUNT", "XS_INVALID"])[..] else { unreachable!() };
    assert_eq!(count, *MsgType::ALL.iter().max().unwrap() as usize + 1);
    assert!(MsgType::try_from(count as u32).is_err());
    assert!(MsgType::try_from(invalid as u32).is_err());
}

#[test]
fn constants_match() {
    let pairs: Vec<(&str, usize)> = vec![
        ("XENSTORE_PAYLOAD_MAX", wire::PAYLOAD_MAX),
        ("XENSTORE_ABS_PATH_MAX", wire::ABS_PATH_MAX),
        ("XENSTORE_REL_PATH_MAX", wire::REL_PATH_MAX),
        ("XENSTORE_RING_SIZE", ring::RING_SIZE),
        ("MASK_XENSTORE_IDX(0xffffffffu)", ring::slot(u32::MAX)),
        ("MASK_XENSTORE_IDX(1024u + 5u)", ring::slot(1029)),
        ("XENSTORE_SERVER_FEATURE_RECONNECTION", ring::SERVER_FEATURE_RECONNECTION as usize),
        ("XENSTORE_SERVER_FEATURE_ERROR", ring::SERVER_FEATURE_ERROR as usize),
        ("XENSTORE_CONNECTED", ring::CONNECTED as usize),
        ("XENSTORE_RECONNECT", ring::RECONNECT as usize),
        ("XENSTORE_ERROR_NONE", ring::ERROR_NONE as usize),
        ("XENSTORE_ERROR_COMM", ring::ERROR_COMM as usize),
        ("XENSTORE_ERROR_RINGIDX", ring::ERROR_RINGIDX as usize),
        ("XENSTORE_ERROR_PROTO", ring::ERROR_PROTO as usize),
    ];
    check(pairs.into_iter().map(|(c, rust)| (c.to_string(), rust)).collect());
}

#[test]
fn header_layout_matches_xsd_sockmsg() {
    let fields = ["type", "req_id", "tx_id", "len"];
    let mut expressions = vec!["sizeof(struct xsd_sockmsg)".to_string()];
    expressions.extend(fields.iter().map(|f| format!("offsetof(struct xsd_sockmsg, {f})")));
    let expressions: Vec<&str> = expressions.iter().map(String::as_str).collect();
    let c = c_numbers(&expressions);
    assert_eq!(c[0], wire::HEADER_LEN);
    // Each field's value must be where C puts that field, little-endian.
    let header = Header { msg_type: MsgType::Write, req_id: 0x1111_2222, tx_id: 0x3333_4444, len: 0x0555 };
    let bytes = header.encode();
    let values = [MsgType::Write as u32, 0x1111_2222, 0x3333_4444, 0x0555];
    for ((field, offset), value) in fields.iter().zip(&c[1..]).zip(values) {
        let word = u32::from_le_bytes(bytes[*offset..*offset + 4].try_into().unwrap());
        assert_eq!(word, value, "xsd_sockmsg.{field} at offset {offset}");
    }
}

#[test]
fn ring_page_layout_matches() {
    macro_rules! field {
        ($field:ident, $constant:expr) => {{
            let c = concat!("offsetof(struct xenstore_domain_interface, ", stringify!($field), ")");
            let rust = offset_of!(DomainInterface, $field);
            assert_eq!(rust, $constant, "{} constant", stringify!($field));
            (c.to_string(), rust)
        }};
    }
    check(vec![
        ("sizeof(struct xenstore_domain_interface)".to_string(), size_of::<DomainInterface>()),
        field!(req, ring::REQ_OFFSET),
        field!(rsp, ring::RSP_OFFSET),
        field!(req_cons, ring::REQ_CONS_OFFSET),
        field!(req_prod, ring::REQ_PROD_OFFSET),
        field!(rsp_cons, ring::RSP_CONS_OFFSET),
        field!(rsp_prod, ring::RSP_PROD_OFFSET),
        field!(server_features, ring::SERVER_FEATURES_OFFSET),
        field!(connection, ring::CONNECTION_OFFSET),
        field!(error, ring::ERROR_OFFSET),
    ]);
}

#[test]
fn error_names_match_xsd_errors() {
    let count = c_numbers(&["sizeof(xsd_errors) / sizeof(xsd_errors[0])"])[0];
    assert_eq!(count, Errno::KNOWN.len(), "xsd_errors has {count} entries");
    let expressions: Vec<String> = (0..count).map(|i| format!("xsd_errors[{i}].errstring")).collect();
    let with_format: Vec<(&str, &str)> = expressions.iter().map(|e| ("%s", e.as_str())).collect();
    let names = c_output(&with_format);
    let ours: Vec<&str> = Errno::KNOWN.iter().map(|errno| errno.name()).collect();
    assert_eq!(names, ours);
}
