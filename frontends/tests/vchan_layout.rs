//! Checks the vchan server's view of `struct vchan_interface` against Xen's own
//! header, /usr/include/xen/io/libxenvchan.h (Debian's libxen-dev).
//!
//! The in-page ring offsets (1024, 2048) and the order limits live in init.c, not in
//! the header; the sim tests' client, written from init.c, covers those.

use frontends::vchan::layout::*;
use std::process::Command;

/// (C expression, Rust value) pairs.
fn pairs() -> Vec<(&'static str, usize)> {
    const S: &str = "struct vchan_interface";
    let field = |name: &'static str| -> &'static str { Box::leak(format!("offsetof({S}, {name})").into_boxed_str()) };
    let size = |name: &'static str| -> &'static str { Box::leak(format!("sizeof((({S} *)0)->{name})").into_boxed_str()) };
    vec![
        (field("left.cons"), LEFT_CONS),
        (field("left.prod"), LEFT_PROD),
        (field("right.cons"), RIGHT_CONS),
        (field("right.prod"), RIGHT_PROD),
        (field("left_order"), LEFT_ORDER),
        (field("right_order"), RIGHT_ORDER),
        (field("cli_live"), CLI_LIVE),
        (field("srv_live"), SRV_LIVE),
        (field("cli_notify"), CLI_NOTIFY),
        (field("srv_notify"), SRV_NOTIFY),
        (field("grants"), GRANTS),
        ("sizeof(struct vchan_interface)", GRANTS),
        (size("left.prod"), 4),
        (size("left_order"), 2),
        (size("right_order"), 2),
        (size("cli_live"), 1),
        (size("srv_live"), 1),
        (size("cli_notify"), 1),
        (size("srv_notify"), 1),
        (size("grants[0]"), 4),
        ("VCHAN_NOTIFY_WRITE", usize::from(NOTIFY_WRITE)),
        ("VCHAN_NOTIFY_READ", usize::from(NOTIFY_READ)),
    ]
}

fn c_values(exprs: &[&str]) -> Vec<usize> {
    let dir = std::env::temp_dir().join(format!("vchan-layout-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut src = String::from(
        "#include <stddef.h>\n#include <stdio.h>\n#include <stdint.h>\n#include <sys/types.h>\n\
         #include <xen/io/libxenvchan.h>\nint main(void) {\n",
    );
    for e in exprs {
        src.push_str(&format!("  printf(\"%lu\\n\", (unsigned long)({e}));\n"));
    }
    src.push_str("  return 0;\n}\n");
    let (c, exe) = (dir.join("layout.c"), dir.join("layout"));
    std::fs::write(&c, src).unwrap();
    let out = Command::new("cc").arg("-o").arg(&exe).arg(&c).output().expect("running cc for the layout check");
    assert!(
        out.status.success(),
        "compiling against /usr/include/xen/io/libxenvchan.h failed (is libxen-dev installed?):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(&exe).output().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    String::from_utf8(out.stdout).unwrap().lines().map(|l| l.parse().unwrap()).collect()
}

#[test]
fn vchan_interface_matches_libxenvchan_h() {
    let pairs = pairs();
    let exprs: Vec<&str> = pairs.iter().map(|p| p.0).collect();
    let c = c_values(&exprs);
    assert_eq!(c.len(), pairs.len());
    let wrong: Vec<String> = pairs
        .iter()
        .zip(&c)
        .filter(|((_, rust), c)| rust != *c)
        .map(|((e, rust), c)| format!("{e}: Rust {rust}, C {c}"))
        .collect();
    assert!(wrong.is_empty(), "layout mismatches:\n{}", wrong.join("\n"));
}

#[test]
fn live_values_are_the_headers() {
    // io/libxenvchan.h documents them in a comment only: 0 exited, 1 connected, 2 not yet.
    assert_eq!((LIVE_CLOSED, LIVE_CONNECTED, LIVE_WAITING), (0, 1, 2));
    assert_eq!((SMALL_ORDER, LARGE_ORDER, PAGE_ORDER, MAX_ORDER), (10, 11, 12, 20));
    assert_eq!((SMALL_RING_OFFSET, LARGE_RING_OFFSET), (1 << SMALL_ORDER, 1 << LARGE_ORDER));
}
