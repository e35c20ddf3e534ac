//! Grant tables (v1): sharing our pages with other domains, copying through grants,
//! and mapping pages other domains grant us.
//!
//! Writing an entry follows Xen's rule: frame and domain first, a write barrier,
//! then the flags that make it valid. Ending access is a compare-and-swap of the
//! flags that fails while Xen has the grant mapped (GTF_reading/GTF_writing), so a
//! reference the peer still uses is never recycled.

use crate::arch::boot::{GRANT_TABLE_FRAMES, grant_table_frames};
use crate::arch::hypercall::{self, XenError};
use crate::mm::{self, MappingSlot};
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU16, Ordering, fence};
use spin::Mutex;
use xen_abi::event_channel::DOMID_SELF;
use xen_abi::grant_table::{
    self as gt, GnttabCopy, GnttabMapGrantRef, GnttabQuerySize, GnttabSetupTable, GnttabUnmapGrantRef,
};
use xen_abi::hypercall::pte;

/// A grant reference in our table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GrantRef(pub u32);

/// Why a grant table operation failed.
#[derive(Debug, thiserror::Error)]
pub enum GrantError {
    #[error("Xen refused the grant operation: {0}")]
    Xen(#[from] XenError),
    /// Xen's per-operation status (GNTST_*).
    #[error("grant operation failed with GNTST {0}")]
    Status(i16),
    /// Every reference is in use.
    #[error("no free grant reference")]
    TableFull,
    /// The peer still has the grant mapped; try again after it unmaps.
    #[error("the peer still has the grant mapped")]
    InUse,
    #[error("not a grant of ours")]
    NotGranted,
    /// The frame is not a page of ours held as `mm::Page` (it may be heap, a stack,
    /// a page table or a private page): letting another domain at it is refused.
    #[error("frame {0:#x} is not a shareable page of ours")]
    NotShareable(u64),
}

struct Table {
    base: *mut u8,
    free: Vec<u32>,
    in_use: Vec<bool>,
}

// SAFETY: `base` points at the grant table frames mapped at init, used only under the lock.
unsafe impl Send for Table {}

static TABLE: Mutex<Option<Table>> = Mutex::new(None);

/// Sets up the table with Xen and maps its frames.
pub fn init() -> Result<(), GrantError> {
    let mut query = GnttabQuerySize { dom: DOMID_SELF, ..Default::default() };
    // SAFETY: one live gnttab_query_size.
    unsafe { hypercall::grant_table_op(gt::GNTTABOP_QUERY_SIZE, &mut query, 1)? };
    if query.status != gt::GNTST_OKAY {
        return Err(GrantError::Status(query.status));
    }
    let nr_frames = (GRANT_TABLE_FRAMES as u32).min(query.max_nr_frames);
    let mut frames = [0u64; GRANT_TABLE_FRAMES];
    let mut setup = GnttabSetupTable { dom: DOMID_SELF, nr_frames, status: 0, frame_list: frames.as_mut_ptr() as u64 };
    // SAFETY: `setup` is live and its frame_list points at room for nr_frames u64s.
    unsafe { hypercall::grant_table_op(gt::GNTTABOP_SETUP_TABLE, &mut setup, 1)? };
    if setup.status != gt::GNTST_OKAY {
        return Err(GrantError::Status(setup.status));
    }
    let base = (&raw const grant_table_frames) as u64;
    for (i, mfn) in frames.iter().take(nr_frames as usize).enumerate() {
        // SAFETY: the reserved .bss pages are used by nothing else; their mappings are
        // replaced by the grant table frames Xen just gave us.
        unsafe { hypercall::update_va_mapping(base + i as u64 * 4096, (mfn << 12) | pte::KERNEL_DATA)? };
    }
    let nr_entries = nr_frames * gt::ENTRIES_PER_FRAME;
    let free = (gt::NR_RESERVED_ENTRIES..nr_entries).rev().collect();
    *TABLE.lock() = Some(Table { base: base as *mut u8, free, in_use: alloc::vec![false; nr_entries as usize] });
    Ok(())
}

impl Table {
    fn flags(&self, r: u32) -> &AtomicU16 {
        // SAFETY: `r` < nr_entries (callers check via in_use), so the entry lies in
        // the mapped frames; flags is the entry's first, 2-byte aligned field, which
        // Xen updates atomically.
        unsafe { AtomicU16::from_ptr(self.base.add(r as usize * 8) as *mut u16) }
    }
}

/// Lets `domid` map our machine frame `frame` (read-only if `readonly`). Only the
/// frame of a live `mm::Page` may be granted ([`GrantError::NotShareable`]).
pub fn grant_access(domid: u16, frame: u64, readonly: bool) -> Result<GrantRef, GrantError> {
    if !mm::is_shareable_frame(frame) {
        return Err(GrantError::NotShareable(frame));
    }
    let mut guard = TABLE.lock();
    let table = guard.as_mut().ok_or(GrantError::TableFull)?;
    let r = table.free.pop().ok_or(GrantError::TableFull)?;
    table.in_use[r as usize] = true;
    // SAFETY: entry `r` is inside the mapped table and not valid yet (flags 0), so Xen
    // ignores it while we fill in domid and frame.
    unsafe {
        let entry = table.base.add(r as usize * 8);
        (entry.add(2) as *mut u16).write_volatile(domid);
        (entry.add(4) as *mut u32).write_volatile(frame as u32);
    }
    fence(Ordering::Release);
    let flags = gt::GTF_PERMIT_ACCESS | if readonly { gt::GTF_READONLY } else { 0 };
    table.flags(r).store(flags, Ordering::Release);
    Ok(GrantRef(r))
}

/// Revokes a grant. Fails with `InUse` (and changes nothing) while the peer has it mapped.
pub fn end_access(r: GrantRef) -> Result<(), GrantError> {
    let mut guard = TABLE.lock();
    let table = guard.as_mut().ok_or(GrantError::NotGranted)?;
    if !table.in_use.get(r.0 as usize).copied().unwrap_or(false) {
        return Err(GrantError::NotGranted);
    }
    let flags = table.flags(r.0);
    // Xen changes the flags only to set or clear reading/writing: a few tries settle it.
    for _ in 0..64 {
        let current = flags.load(Ordering::Acquire);
        if current & (gt::GTF_READING | gt::GTF_WRITING) != 0 {
            return Err(GrantError::InUse);
        }
        if flags.compare_exchange(current, 0, Ordering::AcqRel, Ordering::Acquire).is_ok() {
            table.in_use[r.0 as usize] = false;
            table.free.push(r.0);
            return Ok(());
        }
    }
    Err(GrantError::InUse)
}

/// Copies with GNTTABOP_copy; every operation's status must be okay. A destination
/// frame of our own must be a live `mm::Page` ([`GrantError::NotShareable`]), so a
/// copy cannot write memory Rust references point into.
pub fn copy(ops: &mut [GnttabCopy]) -> Result<(), GrantError> {
    for op in ops.iter() {
        let by_frame = op.flags & gt::GNTCOPY_DEST_GREF == 0;
        if by_frame && mm::may_be_own_domid(op.dest.domid) && !mm::is_shareable_frame(op.dest.ref_or_gmfn) {
            return Err(GrantError::NotShareable(op.dest.ref_or_gmfn));
        }
    }
    // SAFETY: `ops` is a live array of gnttab_copy; Xen validates the frames and
    // grants they name and writes only each op's status.
    unsafe { hypercall::grant_table_op(gt::GNTTABOP_COPY, ops.as_mut_ptr(), ops.len() as u32)? };
    match ops.iter().find(|op| op.status != gt::GNTST_OKAY) {
        Some(op) => Err(GrantError::Status(op.status)),
        None => Ok(()),
    }
}

/// A page another domain granted us, mapped at a slot of ours until dropped.
pub struct ForeignGrant {
    slot: MappingSlot,
    handle: u32,
}

/// Maps grant `r` of domain `domid`.
pub fn map_grant(domid: u16, r: u32, readonly: bool) -> Result<ForeignGrant, GrantError> {
    let slot = MappingSlot::new().map_err(|_| GrantError::TableFull)?;
    let mut op = GnttabMapGrantRef {
        host_addr: slot.va(),
        flags: gt::GNTMAP_HOST_MAP | if readonly { gt::GNTMAP_READONLY } else { 0 },
        grant_ref: r,
        dom: domid,
        ..Default::default()
    };
    // SAFETY: `op` is live; host_addr is a slot of ours with page tables under it.
    unsafe { hypercall::grant_table_op(gt::GNTTABOP_MAP_GRANT_REF, &mut op, 1)? };
    if op.status != gt::GNTST_OKAY {
        return Err(GrantError::Status(op.status));
    }
    Ok(ForeignGrant { slot, handle: op.handle })
}

impl ForeignGrant {
    pub fn read(&self, offset: usize, out: &mut [u8]) {
        self.slot.read(offset, out)
    }
    pub fn write(&self, offset: usize, data: &[u8]) {
        self.slot.write(offset, data)
    }
}

impl Drop for ForeignGrant {
    fn drop(&mut self) {
        let mut op = GnttabUnmapGrantRef { host_addr: self.slot.va(), handle: self.handle, ..Default::default() };
        // SAFETY: unmaps the grant we mapped at our slot; nothing refers into it.
        let _ = unsafe { hypercall::grant_table_op(gt::GNTTABOP_UNMAP_GRANT_REF, &mut op, 1) };
    }
}
