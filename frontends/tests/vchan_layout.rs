//! Checks the vchan server's view of `struct vchan_interface` against Xen's own
//! header, /usr/include/xen/io/libxenvchan.h (Debian's libxen-dev).
//!
//! The in-page ring offsets (1024, 2048) and the order limits live in init.c, not in
//! the header; the sim tests' client, written from init.c, covers those.

use frontends::vchan::layout::*;

/// (C expression, Rust value) pairs.
fn pairs() -> Vec<(&'static str, usize)> {
    const S: &str = "struct vchan_interface";
    let field = |name: &'static str| -> &'static str { Box::leak(format!("offsetof({S}, {name})").into_boxed_str()) };
    let size =
        |name: &'static str| -> &'static str { Box::leak(format!("sizeof((({S} *)0)->{name})").into_boxed_str()) };
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

#[test]
fn vchan_interface_matches_libxenvchan_h() {
    let pairs: Vec<(&str, u64)> = pairs().into_iter().map(|(e, v)| (e, v as u64)).collect();
    c_layout::check("#include <sys/types.h>\n#include <xen/io/libxenvchan.h>\n", &pairs);
}

#[test]
fn live_values_are_the_headers() {
    // io/libxenvchan.h documents them in a comment only: 0 exited, 1 connected, 2 not yet.
    assert_eq!((LIVE_CLOSED, LIVE_CONNECTED, LIVE_WAITING), (0, 1, 2));
    assert_eq!((SMALL_ORDER, LARGE_ORDER, PAGE_ORDER, MAX_ORDER), (10, 11, 12, 20));
    assert_eq!((SMALL_RING_OFFSET, LARGE_RING_OFFSET), (1 << SMALL_ORDER, 1 << LARGE_ORDER));
}
