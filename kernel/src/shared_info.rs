//! The shared info page: mapped over a reserved page of the image, then read and
//! written only through volatile accesses (Xen updates it at any time).

use crate::arch::boot::shared_info_page;
use crate::arch::hypercall::{self, XenError};
use core::ptr::{addr_of, addr_of_mut};
use core::sync::atomic::{AtomicPtr, AtomicU8, AtomicU64, Ordering};
use xen_abi::hypercall::pte;
use xen_abi::shared::{SharedInfo, VcpuTimeInfo};

static SHARED_INFO: AtomicPtr<SharedInfo> = AtomicPtr::new(core::ptr::null_mut());

/// Maps the shared info frame (machine address from start_info) at the reserved page.
pub fn map(machine_address: u64) -> Result<(), XenError> {
    let va = (&raw const shared_info_page) as u64;
    // SAFETY: `shared_info_page` is a page-aligned page of our .bss that nothing else
    // uses or references; from now on it aliases the shared info frame.
    unsafe { hypercall::update_va_mapping(va, (machine_address & !0xfff) | pte::KERNEL_DATA)? };
    SHARED_INFO.store(va as *mut SharedInfo, Ordering::Release);
    Ok(())
}

fn page() -> *mut SharedInfo {
    let p = SHARED_INFO.load(Ordering::Acquire);
    assert!(!p.is_null(), "shared info used before it was mapped");
    p
}

/// A consistent copy of vCPU 0's time record (retries while Xen is updating it).
pub fn vcpu0_time() -> VcpuTimeInfo {
    let p = page();
    // Xen bumps `version` to odd before an update and to even after; a copy taken
    // between two equal even reads is consistent. Xen's update is a few instructions,
    // so the bound only guards against a broken hypervisor.
    for _ in 0..1_000_000 {
        // SAFETY: `p` points at the mapped shared info page; volatile reads of plain
        // integers from it are always valid, whatever Xen is writing.
        unsafe {
            let time = addr_of!((*p).vcpu_info[0].time);
            let before = addr_of!((*time).version).read_volatile();
            core::sync::atomic::fence(Ordering::Acquire);
            let copy = time.read_volatile();
            core::sync::atomic::fence(Ordering::Acquire);
            let after = addr_of!((*time).version).read_volatile();
            if before == after && before & 1 == 0 {
                return copy;
            }
        }
    }
    panic!("vcpu_time_info version never settled");
}

/// The faulting address Xen recorded for vCPU 0's last page fault.
pub fn vcpu0_cr2() -> u64 {
    let p = SHARED_INFO.load(Ordering::Acquire);
    if p.is_null() {
        return 0;
    }
    // SAFETY: mapped shared info page; volatile read of a plain integer.
    unsafe { addr_of!((*p).vcpu_info[0].arch.cr2).read_volatile() }
}

fn vcpu0_upcall_mask() -> &'static AtomicU8 {
    // SAFETY: the byte lives in the mapped shared info page for the image's lifetime;
    // Xen and we access it only atomically or with single-byte stores.
    unsafe { AtomicU8::from_ptr(addr_of_mut!((*page()).vcpu_info[0].evtchn_upcall_mask)) }
}

/// Clears vCPU 0's "upcall pending" flag; returns whether it was set.
pub fn vcpu0_take_upcall_pending() -> bool {
    // SAFETY: as for `vcpu0_upcall_mask`: a byte of the mapped page Xen sets atomically.
    let flag = unsafe { AtomicU8::from_ptr(addr_of_mut!((*page()).vcpu_info[0].evtchn_upcall_pending)) };
    flag.swap(0, Ordering::AcqRel) != 0
}

/// Takes vCPU 0's selector of bitmap words that have pending ports.
pub fn vcpu0_take_pending_selector() -> u64 {
    // SAFETY: an 8-byte aligned u64 of the mapped page (offset checked in xen-abi)
    // that Xen updates with atomic operations.
    let sel = unsafe { AtomicU64::from_ptr(addr_of_mut!((*page()).vcpu_info[0].evtchn_pending_sel)) };
    sel.swap(0, Ordering::AcqRel)
}

fn bitmap_word(pending: bool, word: usize) -> &'static AtomicU64 {
    let p = page();
    assert!(word < 64, "event bitmap word {word} out of range");
    // SAFETY: word < 64 keeps the pointer inside the 64-word bitmaps of the mapped
    // page; Xen sets and clears their bits with atomic operations, as we do.
    unsafe {
        let base = if pending { addr_of_mut!((*p).evtchn_pending) } else { addr_of_mut!((*p).evtchn_mask) };
        AtomicU64::from_ptr((base as *mut u64).add(word))
    }
}

/// Acknowledges and returns the pending, unmasked ports of bitmap `word`.
pub fn take_pending_unmasked(word: usize) -> u64 {
    let ready = bitmap_word(true, word).load(Ordering::Acquire) & !bitmap_word(false, word).load(Ordering::Acquire);
    if ready != 0 {
        bitmap_word(true, word).fetch_and(!ready, Ordering::AcqRel);
    }
    ready
}

/// Sets or clears the mask bit of `port`.
pub fn set_port_mask(port: u32, masked: bool) {
    let (word, bit) = xen_abi::event_channel::word_and_bit(port);
    if masked {
        bitmap_word(false, word).fetch_or(1 << bit, Ordering::AcqRel);
    } else {
        bitmap_word(false, word).fetch_and(!(1 << bit), Ordering::AcqRel);
    }
}

/// Masks upcalls (the PV equivalent of `cli`); returns the previous mask.
pub fn mask_upcalls() -> u8 {
    vcpu0_upcall_mask().swap(1, Ordering::AcqRel)
}

/// Restores the upcall mask returned by `mask_upcalls`.
pub fn restore_upcalls(previous: u8) {
    vcpu0_upcall_mask().store(previous, Ordering::Release);
}

/// Runs `f` with upcalls masked.
pub fn with_upcalls_masked<R>(f: impl FnOnce() -> R) -> R {
    let previous = mask_upcalls();
    let r = f();
    restore_upcalls(previous);
    r
}

/// Wall-clock time (seconds, nanoseconds since 1970) at system time 0, from shared info.
pub fn wallclock_base() -> (u64, u32) {
    let p = page();
    for _ in 0..1_000_000 {
        // SAFETY: volatile reads of plain integers in the mapped page; the version
        // protocol (odd while Xen writes) gives a consistent copy.
        unsafe {
            let before = addr_of!((*p).wc_version).read_volatile();
            core::sync::atomic::fence(Ordering::Acquire);
            let sec = u64::from(addr_of!((*p).wc_sec).read_volatile())
                | (u64::from(addr_of!((*p).wc_sec_hi).read_volatile()) << 32);
            let nsec = addr_of!((*p).wc_nsec).read_volatile();
            core::sync::atomic::fence(Ordering::Acquire);
            let after = addr_of!((*p).wc_version).read_volatile();
            if before == after && before & 1 == 0 {
                return (sec, nsec);
            }
        }
    }
    panic!("wall clock version never settled");
}
