//! /dev/xen/gntdev: mapping into dom0 a page that a guest granted it.
//!
//! IOCTL_GNTDEV_MAP_GRANT_REF reserves an offset (the "index") in the device for a
//! grant; mmap() of the device at that offset maps the guest's page, and that is when
//! Xen checks the grant, so a bad reference fails the mmap. The grant is released
//! once the page is unmapped and IOCTL_GNTDEV_UNMAP_GRANT_REF has given the index back.

use super::{check, ioctl_none, open_device};
use std::fs::File;
use std::io;
use std::mem::ManuallyDrop;
use std::os::fd::AsRawFd;
use std::ptr;

/// The grant device.
pub const DEVICE: &str = "/dev/xen/gntdev";

/// The size of a granted page (Xen's page size on x86).
pub use super::PAGE_SIZE;
use super::page_range;

/// `struct ioctl_gntdev_grant_ref`.
#[repr(C)]
struct GrantRef {
    domid: u32,
    reference: u32,
}

/// `struct ioctl_gntdev_map_grant_ref`, with room for exactly one reference.
#[repr(C)]
struct MapGrantRef {
    count: u32,
    pad: u32,
    /// Out: the mmap offset for the grant.
    index: u64,
    refs: [GrantRef; 1],
}

/// `struct ioctl_gntdev_unmap_grant_ref`.
#[repr(C)]
struct UnmapGrantRef {
    index: u64,
    count: u32,
    pad: u32,
}

const IOCTL_MAP_GRANT_REF: u32 = ioctl_none(b'G', 0, size_of::<MapGrantRef>());
const IOCTL_UNMAP_GRANT_REF: u32 = ioctl_none(b'G', 1, size_of::<UnmapGrantRef>());

/// An open /dev/xen/gntdev.
#[derive(Debug)]
pub struct GrantDevice {
    device: File,
}

impl GrantDevice {
    /// Opens /dev/xen/gntdev.
    pub fn open() -> Result<Self, String> {
        Ok(Self { device: open_device(DEVICE, 0)? })
    }

    /// Maps the page that domain `domid` granted as `grant_ref`, read-only or writable
    /// (a writable mapping needs a grant that allows writing).
    pub fn map(&self, domid: u32, grant_ref: u32, writable: bool) -> Result<GrantMapping<'_>, String> {
        let mut request = MapGrantRef { count: 1, pad: 0, index: 0, refs: [GrantRef { domid, reference: grant_ref }] };
        // SAFETY: this ioctl's argument is a struct ioctl_gntdev_map_grant_ref holding `count` refs;
        // `request` is one with count 1 (layout checked against the header by the tests). The driver
        // reads it and writes `index` back, only during the call.
        let result =
            unsafe { libc::ioctl(self.device.as_raw_fd(), IOCTL_MAP_GRANT_REF as libc::Ioctl, &raw mut request) };
        check(result, || format!("reserving a mapping for grant ref {grant_ref} of domain {domid} through {DEVICE}"))?;
        let index = request.index;
        let fail = |reason: String| {
            let _ = unmap_index(&self.device, index); // give the reserved index back
            Err(format!("mapping grant ref {grant_ref} of domain {domid}: {reason}"))
        };
        let Ok(offset) = libc::off_t::try_from(index) else {
            return fail(format!("{DEVICE} gave index {index:#x}, which is no valid mmap offset"));
        };
        let protection = if writable { libc::PROT_READ | libc::PROT_WRITE } else { libc::PROT_READ };
        // SAFETY: a new mapping at an address the kernel picks (null hint, no MAP_FIXED), so no
        // existing memory changes; the driver backs it with the granted page or fails.
        let address = unsafe {
            libc::mmap(ptr::null_mut(), PAGE_SIZE, protection, libc::MAP_SHARED, self.device.as_raw_fd(), offset)
        };
        if address == libc::MAP_FAILED {
            let error = io::Error::last_os_error();
            let hint = if error.raw_os_error() == Some(libc::EINVAL) {
                " (Xen refused it: is the reference granted to dom0, and writable if asked for?)"
            } else {
                ""
            };
            return fail(format!("mmap of {DEVICE} at offset {index:#x}: {error}{hint}"));
        }
        Ok(GrantMapping { device: self, address: address.cast(), index, domid, grant_ref, writable })
    }
}

/// One granted page mapped into dom0. The guest may change it at any moment, so it is
/// only ever copied in and out with volatile accesses; no reference into it is handed out.
/// Dropping it unmaps it, best effort; `unmap` reports failures instead.
#[derive(Debug)]
pub struct GrantMapping<'device> {
    device: &'device GrantDevice,
    /// Start of the PAGE_SIZE mapping, live for as long as this value.
    address: *mut u8,
    index: u64,
    domid: u32,
    grant_ref: u32,
    writable: bool,
}

impl GrantMapping<'_> {
    /// Whether the page was mapped writable.
    pub fn is_writable(&self) -> bool {
        self.writable
    }

    /// A copy of the whole page as it is now.
    pub fn bytes(&self) -> Vec<u8> {
        (0..PAGE_SIZE)
            // SAFETY: `address` starts a readable PAGE_SIZE mapping that lives as long as `self`,
            // and `offset < PAGE_SIZE`. Volatile, since the guest may write the page concurrently.
            .map(|offset| unsafe { self.address.add(offset).read_volatile() })
            .collect()
    }

    /// Copies `data` into the page at `offset`; the page must be mapped writable.
    pub fn write(&self, offset: usize, data: &[u8]) -> Result<(), String> {
        if !self.writable {
            return Err(format!("{} is mapped read-only", self.describe()));
        }
        let range = page_range(offset, data.len()).map_err(|e| format!("writing to {}: {e}", self.describe()))?;
        for (at, &byte) in range.zip(data) {
            // SAFETY: `address` starts a PAGE_SIZE mapping that lives as long as `self` and is
            // writable (checked above); `at < PAGE_SIZE` by page_range. Volatile, as the guest shares it.
            unsafe { self.address.add(at).write_volatile(byte) };
        }
        Ok(())
    }

    /// Stores `value` at the 4-byte aligned `offset` in one 32-bit store, as a ring's
    /// producer publishes its index; the page must be mapped writable.
    pub fn store_u32(&self, offset: usize, value: u32) -> Result<(), String> {
        if !self.writable {
            return Err(format!("{} is mapped read-only", self.describe()));
        }
        let range = page_range(offset, 4).map_err(|e| format!("writing to {}: {e}", self.describe()))?;
        if !range.start.is_multiple_of(4) {
            return Err(format!("offset {offset} in {} is not 4-byte aligned", self.describe()));
        }
        // SAFETY: `address` starts a page-aligned PAGE_SIZE mapping that lives as long as `self`
        // and is writable (checked above); `offset` is 4-byte aligned and the 4 bytes fit in the
        // page (page_range), so this is one aligned u32 store. Volatile, as the guest shares it.
        unsafe { self.address.add(range.start).cast::<u32>().write_volatile(value) };
        Ok(())
    }

    /// Unmaps the page and gives the grant back, reporting any failure.
    pub fn unmap(self) -> Result<(), String> {
        // Not dropped afterwards, so the page is released exactly once.
        ManuallyDrop::new(self).release()
    }

    fn describe(&self) -> String {
        format!("grant ref {} of domain {}", self.grant_ref, self.domid)
    }

    /// munmap, then IOCTL_GNTDEV_UNMAP_GRANT_REF; both are tried. Called once, from
    /// `unmap` or `drop`.
    fn release(&self) -> Result<(), String> {
        // SAFETY: `address` starts the PAGE_SIZE mapping made by `map`, unmapped only here, once;
        // nothing points into it after this, as no reference into the page is ever handed out.
        let result = unsafe { libc::munmap(self.address.cast(), PAGE_SIZE) };
        let unmapped = check(result, || format!("munmap of {}", self.describe()));
        let returned = unmap_index(&self.device.device, self.index).map_err(|e| format!("{e} ({})", self.describe()));
        match (unmapped, returned) {
            (Ok(_), Ok(())) => Ok(()),
            (Err(e), Ok(())) | (Ok(_), Err(e)) => Err(e),
            (Err(first), Err(second)) => Err(format!("{first}; {second}")),
        }
    }
}

impl Drop for GrantMapping<'_> {
    fn drop(&mut self) {
        let _ = self.release();
    }
}

/// Gives the mapping index `index` (one page) back to the driver.
fn unmap_index(device: &File, index: u64) -> Result<(), String> {
    let request = UnmapGrantRef { index, count: 1, pad: 0 };
    // SAFETY: this ioctl's argument is a struct ioctl_gntdev_unmap_grant_ref, which `request` is
    // (layout checked against the header by the tests); the driver only reads it, during the call.
    let result = unsafe { libc::ioctl(device.as_raw_fd(), IOCTL_UNMAP_GRANT_REF as libc::Ioctl, &raw const request) };
    check(result, || format!("IOCTL_GNTDEV_UNMAP_GRANT_REF at index {index:#x} on {DEVICE}")).map(drop)
}

/// (C expression, Rust value) pairs for the header check in `dom0::tests`.
#[cfg(test)]
pub(super) fn abi_facts() -> Vec<(&'static str, usize)> {
    use std::mem::offset_of;
    vec![
        ("IOCTL_GNTDEV_MAP_GRANT_REF", IOCTL_MAP_GRANT_REF as usize),
        ("IOCTL_GNTDEV_UNMAP_GRANT_REF", IOCTL_UNMAP_GRANT_REF as usize),
        ("sizeof(struct ioctl_gntdev_grant_ref)", size_of::<GrantRef>()),
        ("offsetof(struct ioctl_gntdev_grant_ref, domid)", offset_of!(GrantRef, domid)),
        ("offsetof(struct ioctl_gntdev_grant_ref, ref)", offset_of!(GrantRef, reference)),
        ("sizeof(struct ioctl_gntdev_map_grant_ref)", size_of::<MapGrantRef>()),
        ("offsetof(struct ioctl_gntdev_map_grant_ref, count)", offset_of!(MapGrantRef, count)),
        ("offsetof(struct ioctl_gntdev_map_grant_ref, index)", offset_of!(MapGrantRef, index)),
        ("offsetof(struct ioctl_gntdev_map_grant_ref, refs)", offset_of!(MapGrantRef, refs)),
        ("sizeof(struct ioctl_gntdev_unmap_grant_ref)", size_of::<UnmapGrantRef>()),
        ("offsetof(struct ioctl_gntdev_unmap_grant_ref, index)", offset_of!(UnmapGrantRef, index)),
        ("offsetof(struct ioctl_gntdev_unmap_grant_ref, count)", offset_of!(UnmapGrantRef, count)),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn open_fails_clearly_without_the_device() {
        if Path::new(DEVICE).exists() {
            return; // a real dom0: nothing to check here
        }
        let err = GrantDevice::open().unwrap_err();
        assert!(err.contains(DEVICE) && err.contains("dom0"), "{err}");
    }

    #[test]
    fn map_on_the_wrong_device_fails_with_context() {
        // /dev/null takes no gntdev ioctls: the reservation must fail, naming the grant.
        let device = GrantDevice { device: File::options().read(true).write(true).open("/dev/null").unwrap() };
        let err = device.map(3, 8, false).unwrap_err();
        assert!(err.contains("grant ref 8 of domain 3") && err.contains(DEVICE), "{err}");
    }
}
