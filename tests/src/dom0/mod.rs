//! Safe wrappers over dom0's Xen devices, for tests whose counterpart lives in dom0.
//!
//! A guest under test offers an event channel port or a granted page; dom0 uses them
//! through Linux's Xen drivers (/dev/xen/evtchn, /dev/xen/gntdev), and dom0 grants a
//! guest a page through /dev/xen/gntalloc. This is one of the
//! few places outside the kernel crate allowed `unsafe`: every block is as small as
//! it can be, says why it holds, and nothing unsafe leaks out of these modules.
//! Ioctl numbers and structs follow /usr/include/xen/sys/{evtchn,gntdev,gntalloc}.h; the
//! host tests below compile those headers and compare.

// Nothing in main calls these yet: the dom0-side test cases that will are being written.
#![allow(dead_code)]

pub mod evtchn;
pub mod gntalloc;
pub mod gntdev;

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;

/// Bytes in one granted page.
pub const PAGE_SIZE: usize = 4096;

/// The page offsets that `len` bytes at `offset` cover, if they fit in the page
/// (shared by the gntdev and gntalloc mappings).
pub(crate) fn page_range(offset: usize, len: usize) -> Result<std::ops::Range<usize>, String> {
    match offset.checked_add(len) {
        Some(end) if end <= PAGE_SIZE => Ok(offset..end),
        _ => Err(format!("{len} bytes at offset {offset} do not fit in a {PAGE_SIZE}-byte page")),
    }
}

/// Linux's `_IOC(_IOC_NONE, kind, number, size)`: no direction bits (the Xen drivers
/// ignore them), the argument size in bits 16..30, the type in 8..16, the number in 0..8.
pub(crate) const fn ioctl_none(kind: u8, number: u8, size: usize) -> u32 {
    assert!(size < 1 << 14, "_IOC size field is 14 bits");
    ((size as u32) << 16) | ((kind as u32) << 8) | number as u32
}

/// Opens a Xen device read-write and close-on-exec, plus `extra_flags`. The error
/// names the device and says what its absence usually means.
pub(crate) fn open_device(path: &str, extra_flags: i32) -> Result<File, String> {
    OpenOptions::new().read(true).write(true).custom_flags(libc::O_CLOEXEC | extra_flags).open(path).map_err(|e| {
        let hint = match e.kind() {
            io::ErrorKind::NotFound => " (is this a Xen dom0 with the driver loaded and /dev/xen populated?)",
            io::ErrorKind::PermissionDenied => " (dom0's Xen devices need root)",
            _ => "",
        };
        format!("cannot open {path}: {e}{hint}")
    })
}

/// Turns a libc return value into `Ok(value)`, or the errno as an error about `what`.
pub(crate) fn check(result: libc::c_int, what: impl FnOnce() -> String) -> Result<libc::c_int, String> {
    if result >= 0 { Ok(result) } else { Err(format!("{}: {}", what(), io::Error::last_os_error())) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctls_and_structs_match_xen_headers() {
        let pairs: Vec<(&str, u64)> = [evtchn::abi_facts(), gntdev::abi_facts(), gntalloc::abi_facts()]
            .into_iter()
            .flatten()
            .map(|(e, v)| (e, v as u64))
            .collect();
        let prelude = "#include <sys/ioctl.h>\n#define __XEN_INTERFACE_VERSION__ 0x00040e00\n\
                       #include <xen/xen.h>\n#include <xen/event_channel.h>\n#include <xen/sys/evtchn.h>\n\
                       #include <xen/sys/gntdev.h>\n#include <xen/sys/gntalloc.h>\n";
        c_layout::check(prelude, &pairs);
    }

    #[test]
    fn page_range_accepts_only_what_fits() {
        assert_eq!(page_range(0, PAGE_SIZE), Ok(0..PAGE_SIZE));
        assert_eq!(page_range(4090, 6), Ok(4090..4096));
        assert_eq!(page_range(PAGE_SIZE, 0), Ok(PAGE_SIZE..PAGE_SIZE));
        assert!(page_range(4090, 7).unwrap_err().contains("7 bytes at offset 4090"));
        assert!(page_range(usize::MAX, 2).is_err());
    }

    #[test]
    fn ioctl_none_packs_like_linux() {
        // _IOC(_IOC_NONE, 'E', 1, 8), worked out by hand.
        assert_eq!(ioctl_none(b'E', 1, 8), 0x0008_4501);
    }

    #[test]
    fn open_device_names_the_missing_path() {
        let path = "/dev/xen/no-such-device";
        let err = open_device(path, 0).unwrap_err();
        assert!(err.contains(path) && err.contains("dom0"), "{err}");
    }
}
