//! /dev/xen/gntalloc: dom0 granting one of its own pages to a guest.
//!
//! IOCTL_GNTALLOC_ALLOC_GREF allocates a zeroed page, grants it to a domain (read-only
//! or writable for that domain) and reserves an offset (the "index") in the device for
//! it; mmap() of the device at that offset, MAP_SHARED, gives dom0 the page, always
//! read-write. Linux's driver (drivers/xen/gntalloc.c) revokes the grant only once the
//! page is unmapped and IOCTL_GNTALLOC_DEALLOC_GREF has given the index back, and if the
//! guest still has the page mapped then, the kernel keeps the page until the guest
//! unmaps it: releasing never waits for the guest.

use super::{PAGE_SIZE, page_range};
use super::{check, ioctl_none, open_device};
use std::fs::File;
use std::io;
use std::mem::ManuallyDrop;
use std::os::fd::AsRawFd;
use std::ptr;

/// The grant allocation device.
pub const DEVICE: &str = "/dev/xen/gntalloc";

/// `GNTALLOC_FLAG_WRITABLE`: the grantee may write the page.
const FLAG_WRITABLE: u16 = 1;

/// `struct ioctl_gntalloc_alloc_gref`, with room for exactly one reference.
#[repr(C)]
struct AllocGref {
    domid: u16,
    flags: u16,
    count: u32,
    /// Out: the mmap offset for the pages.
    index: u64,
    /// Out: the grant reference of each page.
    gref_ids: [u32; 1],
}

/// `struct ioctl_gntalloc_dealloc_gref`.
#[repr(C)]
struct DeallocGref {
    index: u64,
    count: u32,
}

const IOCTL_ALLOC_GREF: u32 = ioctl_none(b'G', 5, size_of::<AllocGref>());
const IOCTL_DEALLOC_GREF: u32 = ioctl_none(b'G', 6, size_of::<DeallocGref>());

/// An open /dev/xen/gntalloc. Closing it (dropping it, after every page shared through
/// it) makes the driver give back whatever grants are left.
#[derive(Debug)]
pub struct GrantAllocator {
    device: File,
}

impl GrantAllocator {
    /// Opens /dev/xen/gntalloc.
    pub fn open() -> Result<Self, String> {
        Ok(Self { device: open_device(DEVICE, 0)? })
    }

    /// Allocates a zeroed page, grants it to domain `domid` (writable for that domain,
    /// or read-only) and maps it into dom0. The guest needs `grant_ref()` of the result.
    pub fn share(&self, domid: u32, writable: bool) -> Result<SharedPage<'_>, String> {
        let Ok(domid16) = u16::try_from(domid) else {
            return Err(format!("cannot share a page with domain {domid}: {DEVICE} takes 16-bit domain ids"));
        };
        let flags = if writable { FLAG_WRITABLE } else { 0 };
        let mut request = AllocGref { domid: domid16, flags, count: 1, index: 0, gref_ids: [0] };
        // SAFETY: this ioctl's argument is a struct ioctl_gntalloc_alloc_gref with room for `count`
        // references; `request` is one with count 1 (layout checked against the header by the tests).
        // The driver reads it and writes `index` and `gref_ids` back, only during the call.
        let result = unsafe { libc::ioctl(self.device.as_raw_fd(), IOCTL_ALLOC_GREF as libc::Ioctl, &raw mut request) };
        check(result, || format!("granting a page to domain {domid} through {DEVICE}"))?;
        let index = request.index;
        let grant_ref = request.gref_ids[0];
        let fail = |reason: String| {
            let _ = dealloc_index(&self.device, index); // give the grant and its index back
            Err(format!("sharing grant ref {grant_ref} with domain {domid}: {reason}"))
        };
        let Ok(offset) = libc::off_t::try_from(index) else {
            return fail(format!("{DEVICE} gave index {index:#x}, which is no valid mmap offset"));
        };
        // SAFETY: a new mapping at an address the kernel picks (null hint, no MAP_FIXED), so no
        // existing memory changes; the driver backs it with the granted page or fails.
        let address = unsafe {
            libc::mmap(
                ptr::null_mut(),
                PAGE_SIZE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                self.device.as_raw_fd(),
                offset,
            )
        };
        if address == libc::MAP_FAILED {
            let error = io::Error::last_os_error();
            return fail(format!("mmap of {DEVICE} at offset {index:#x}: {error}"));
        }
        Ok(SharedPage { allocator: self, address: address.cast(), index, domid, grant_ref, writable })
    }
}

/// One dom0 page granted to a guest and mapped into dom0. The guest may change it at
/// any moment, so it is only ever copied in and out with volatile accesses; no reference
/// into it is handed out. Dropping it releases it, best effort; `release` reports failures.
#[derive(Debug)]
pub struct SharedPage<'allocator> {
    allocator: &'allocator GrantAllocator,
    /// Start of the PAGE_SIZE read-write mapping, live for as long as this value.
    address: *mut u8,
    index: u64,
    domid: u32,
    grant_ref: u32,
    writable: bool,
}

impl SharedPage<'_> {
    /// The grant reference the guest maps the page with.
    pub fn grant_ref(&self) -> u32 {
        self.grant_ref
    }

    /// The domain the page is granted to.
    pub fn domid(&self) -> u32 {
        self.domid
    }

    /// Whether the guest may write the page (dom0 always may).
    pub fn is_writable_by_guest(&self) -> bool {
        self.writable
    }

    /// Copies `data` into the page at `offset`.
    pub fn write(&self, offset: usize, data: &[u8]) -> Result<(), String> {
        let range = page_range(offset, data.len()).map_err(|e| format!("writing to {}: {e}", self.describe()))?;
        for (at, &byte) in range.zip(data) {
            // SAFETY: `address` starts a read-write PAGE_SIZE mapping that lives as long as `self`;
            // `at < PAGE_SIZE` by page_range. Volatile, since the guest shares the page.
            unsafe { self.address.add(at).write_volatile(byte) };
        }
        Ok(())
    }

    /// A copy of the `len` bytes at `offset` as they are now.
    pub fn read(&self, offset: usize, len: usize) -> Result<Vec<u8>, String> {
        let range = page_range(offset, len).map_err(|e| format!("reading from {}: {e}", self.describe()))?;
        Ok(range
            // SAFETY: `address` starts a readable PAGE_SIZE mapping that lives as long as `self`;
            // `at < PAGE_SIZE` by page_range. Volatile, since the guest may write the page concurrently.
            .map(|at| unsafe { self.address.add(at).read_volatile() })
            .collect())
    }

    /// Unmaps the page and deallocates the grant, reporting any failure. The grant is
    /// revoked now, or, if the guest still maps the page, once the guest unmaps it.
    pub fn release(self) -> Result<(), String> {
        // Not dropped afterwards, so the page is released exactly once.
        ManuallyDrop::new(self).release_once()
    }

    fn describe(&self) -> String {
        format!("grant ref {} shared with domain {}", self.grant_ref, self.domid)
    }

    /// munmap, then IOCTL_GNTALLOC_DEALLOC_GREF; both are tried. Called once, from
    /// `release` or `drop`.
    fn release_once(&self) -> Result<(), String> {
        // SAFETY: `address` starts the PAGE_SIZE mapping made by `share`, unmapped only here, once;
        // nothing points into it after this, as no reference into the page is ever handed out.
        let result = unsafe { libc::munmap(self.address.cast(), PAGE_SIZE) };
        let unmapped = check(result, || format!("munmap of {}", self.describe()));
        let returned =
            dealloc_index(&self.allocator.device, self.index).map_err(|e| format!("{e} ({})", self.describe()));
        match (unmapped, returned) {
            (Ok(_), Ok(())) => Ok(()),
            (Err(e), Ok(())) | (Ok(_), Err(e)) => Err(e),
            (Err(first), Err(second)) => Err(format!("{first}; {second}")),
        }
    }
}

impl Drop for SharedPage<'_> {
    fn drop(&mut self) {
        let _ = self.release_once();
    }
}

/// Deallocates the grant at index `index` (one page).
fn dealloc_index(device: &File, index: u64) -> Result<(), String> {
    let request = DeallocGref { index, count: 1 };
    // SAFETY: this ioctl's argument is a struct ioctl_gntalloc_dealloc_gref, which `request` is
    // (layout checked against the header by the tests); the driver only reads it, during the call.
    let result = unsafe { libc::ioctl(device.as_raw_fd(), IOCTL_DEALLOC_GREF as libc::Ioctl, &raw const request) };
    check(result, || format!("IOCTL_GNTALLOC_DEALLOC_GREF at index {index:#x} on {DEVICE}")).map(drop)
}

/// (C expression, Rust value) pairs for the header check in `dom0::tests`.
#[cfg(test)]
pub(super) fn abi_facts() -> Vec<(&'static str, usize)> {
    use std::mem::offset_of;
    vec![
        ("IOCTL_GNTALLOC_ALLOC_GREF", IOCTL_ALLOC_GREF as usize),
        ("IOCTL_GNTALLOC_DEALLOC_GREF", IOCTL_DEALLOC_GREF as usize),
        ("GNTALLOC_FLAG_WRITABLE", FLAG_WRITABLE as usize),
        ("sizeof(struct ioctl_gntalloc_alloc_gref)", size_of::<AllocGref>()),
        ("offsetof(struct ioctl_gntalloc_alloc_gref, domid)", offset_of!(AllocGref, domid)),
        ("offsetof(struct ioctl_gntalloc_alloc_gref, flags)", offset_of!(AllocGref, flags)),
        ("offsetof(struct ioctl_gntalloc_alloc_gref, count)", offset_of!(AllocGref, count)),
        ("offsetof(struct ioctl_gntalloc_alloc_gref, index)", offset_of!(AllocGref, index)),
        ("offsetof(struct ioctl_gntalloc_alloc_gref, gref_ids)", offset_of!(AllocGref, gref_ids)),
        ("sizeof(((struct ioctl_gntalloc_alloc_gref *)0)->domid)", size_of::<u16>()),
        ("sizeof(((struct ioctl_gntalloc_alloc_gref *)0)->gref_ids)", size_of::<[u32; 1]>()),
        ("sizeof(struct ioctl_gntalloc_dealloc_gref)", size_of::<DeallocGref>()),
        ("offsetof(struct ioctl_gntalloc_dealloc_gref, index)", offset_of!(DeallocGref, index)),
        ("offsetof(struct ioctl_gntalloc_dealloc_gref, count)", offset_of!(DeallocGref, count)),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// /dev/null in place of the device: it takes no gntalloc ioctls.
    fn fake_allocator() -> GrantAllocator {
        GrantAllocator { device: File::options().read(true).write(true).open("/dev/null").unwrap() }
    }

    /// A SharedPage over a private anonymous page instead of a granted one; releasing it
    /// unmaps the page and then fails at the DEALLOC ioctl, as /dev/null takes none.
    fn fake_page(allocator: &GrantAllocator) -> SharedPage<'_> {
        // SAFETY: a new anonymous mapping at an address the kernel picks (null hint, no
        // MAP_FIXED), so no existing memory changes; SharedPage unmaps it exactly once.
        let address = unsafe {
            libc::mmap(
                ptr::null_mut(),
                PAGE_SIZE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(address, libc::MAP_FAILED, "{}", io::Error::last_os_error());
        SharedPage { allocator, address: address.cast(), index: 0x1000, domid: 7, grant_ref: 42, writable: true }
    }

    #[test]
    fn open_fails_clearly_without_the_device() {
        if Path::new(DEVICE).exists() {
            return; // a real dom0: nothing to check here
        }
        let err = GrantAllocator::open().unwrap_err();
        assert!(err.contains(DEVICE) && err.contains("dom0"), "{err}");
    }

    #[test]
    fn share_on_the_wrong_device_fails_with_context() {
        let allocator = fake_allocator();
        let err = allocator.share(3, true).unwrap_err();
        assert!(err.contains("domain 3") && err.contains(DEVICE), "{err}");
    }

    #[test]
    fn share_rejects_domids_beyond_16_bits() {
        let allocator = fake_allocator();
        let err = allocator.share(0x1_0000, false).unwrap_err();
        assert!(err.contains("domain 65536") && err.contains("16-bit"), "{err}");
    }

    #[test]
    fn write_then_read_round_trips_at_the_page_edges() {
        let allocator = fake_allocator();
        let page = fake_page(&allocator);
        assert_eq!(page.grant_ref(), 42);
        assert_eq!(page.read(0, PAGE_SIZE).unwrap(), vec![0; PAGE_SIZE]);
        page.write(0, b"head").unwrap();
        page.write(PAGE_SIZE - 4, b"tail").unwrap();
        page.write(PAGE_SIZE, b"").unwrap();
        assert_eq!(page.read(0, 4).unwrap(), b"head");
        assert_eq!(page.read(PAGE_SIZE - 4, 4).unwrap(), b"tail");
        assert_eq!(page.read(PAGE_SIZE, 0).unwrap(), b"");
        assert_eq!(page.read(4, 1).unwrap(), [0]);
    }

    #[test]
    fn out_of_page_accesses_fail_and_change_nothing() {
        let allocator = fake_allocator();
        let page = fake_page(&allocator);
        let err = page.write(PAGE_SIZE - 3, b"four").unwrap_err();
        assert!(err.contains("writing to grant ref 42 shared with domain 7"), "{err}");
        assert!(err.contains("4 bytes at offset 4093"), "{err}");
        assert_eq!(page.read(PAGE_SIZE - 3, 3).unwrap(), [0, 0, 0]);
        let err = page.read(1, PAGE_SIZE).unwrap_err();
        assert!(err.contains("reading from grant ref 42") && err.contains("4096 bytes at offset 1"), "{err}");
        assert!(page.read(usize::MAX, 1).is_err());
        assert!(page.write(usize::MAX, b"x").is_err());
    }

    #[test]
    fn release_reports_a_failed_dealloc() {
        let allocator = fake_allocator();
        let err = fake_page(&allocator).release().unwrap_err();
        // munmap worked; only the ioctl failed, and the error names it and the grant.
        assert!(!err.contains("munmap"), "{err}");
        assert!(err.contains("IOCTL_GNTALLOC_DEALLOC_GREF at index 0x1000") && err.contains("grant ref 42"), "{err}");
    }
}
