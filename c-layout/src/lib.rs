//! Asks the C compiler what Xen's headers say, for the ABI tests.
//!
//! Every crate that defines Xen structures or constants in Rust checks them against
//! /usr/include/xen (Debian's libxen-dev) the same way: compile a small C program that
//! prints each expression (a `sizeof`, an `offsetof`, a constant), run it, and
//! compare with the Rust values. This crate is that program builder, shared.

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Values of C `expressions`, each converted to `unsigned long long` (so a negative
/// constant reads as its two's complement, like `value as u64` in Rust), compiled
/// after `prelude` (the `#include`s and any `#define`s they need).
pub fn values(prelude: &str, expressions: &[&str]) -> Vec<u64> {
    static CALLS: AtomicUsize = AtomicUsize::new(0);
    let call = CALLS.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("c-layout-{}-{call}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut src =
        format!("#include <stddef.h>\n#include <stdio.h>\n#include <stdint.h>\n{prelude}\nint main(void) {{\n");
    for e in expressions {
        src.push_str(&format!("  printf(\"%llu\\n\", (unsigned long long)({e}));\n"));
    }
    src.push_str("  return 0;\n}\n");
    let (c, exe) = (dir.join("layout.c"), dir.join("layout"));
    std::fs::write(&c, &src).unwrap();
    let out = Command::new("cc").arg("-o").arg(&exe).arg(&c).output().expect("running cc (gcc) for a layout check");
    assert!(
        out.status.success(),
        "compiling against /usr/include/xen failed (is libxen-dev installed?):\n{}\n{src}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(&exe).output().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let values: Vec<u64> = String::from_utf8(out.stdout).unwrap().lines().map(|l| l.parse().unwrap()).collect();
    assert_eq!(values.len(), expressions.len(), "the C program printed a different number of values");
    values
}

/// Panics, listing every mismatch, unless each (C expression, Rust value) pair agrees.
pub fn check(prelude: &str, pairs: &[(&str, u64)]) {
    let expressions: Vec<&str> = pairs.iter().map(|p| p.0).collect();
    let c = values(prelude, &expressions);
    let wrong: Vec<String> = pairs
        .iter()
        .zip(&c)
        .filter(|((_, rust), c)| rust != *c)
        .map(|((e, rust), c)| format!("{e}: Rust {rust}, C {c}"))
        .collect();
    assert!(wrong.is_empty(), "layout mismatches against Xen's headers:\n{}", wrong.join("\n"));
}

#[cfg(test)]
mod tests {
    #[test]
    fn values_and_mismatches() {
        assert_eq!(super::values("", &["sizeof(uint32_t)", "-1", "1ULL << 63"]), [4, u64::MAX, 1 << 63]);
        let result = std::panic::catch_unwind(|| super::check("", &[("sizeof(uint16_t)", 2), ("3", 4)]));
        let message = *result.unwrap_err().downcast::<String>().unwrap();
        assert!(message.contains("3: Rust 4, C 3") && !message.contains("uint16_t"), "{message}");
    }
}
