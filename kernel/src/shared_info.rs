//! The shared info page: mapped over a reserved page of the image, then read and
//! written only through volatile accesses (Xen updates it at any time).

use crate::arch::boot::shared_info_page;
use crate::arch::hypercall::{self, XenError};
use core::ptr::{addr_of, addr_of_mut};
use core::sync::atomic::{AtomicPtr, Ordering};
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

/// Acknowledges an upcall: clears vCPU 0's pending flag and selector word.
pub fn vcpu0_ack_upcall() -> u64 {
    let p = page();
    // SAFETY: mapped shared info page. Xen sets these fields with atomic operations;
    // clearing the byte with a volatile store and swapping the selector atomically
    // is how guests acknowledge (the selector is 8-byte aligned, checked in xen-abi).
    unsafe {
        addr_of_mut!((*p).vcpu_info[0].evtchn_upcall_pending).write_volatile(0);
        let sel = addr_of_mut!((*p).vcpu_info[0].evtchn_pending_sel);
        core::sync::atomic::AtomicU64::from_ptr(sel).swap(0, Ordering::AcqRel)
    }
}
