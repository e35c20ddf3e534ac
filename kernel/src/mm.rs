//! Memory: the domain's own pages, page-table edits, foreign mappings and the heap.
//!
//! A PV guest's page tables are read-only to it: every change goes through Xen
//! (`mmu_update`, `update_va_mapping`), which checks it. At boot Xen maps only the
//! image and its bootstrap area; `init` maps every page of the domain at
//! `VIRT_BASE + pfn * 4096` (adding page tables where missing), then splits the free
//! pages into the heap (the global allocator) and a pool of whole pages for rings,
//! grants and buffers. Counters are readable through `stats`.

use crate::arch::boot::{VIRT_BASE, stack_guard_page};
use crate::arch::hypercall::{self, XenError};
use core::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use linked_list_allocator::LockedHeap;
use spin::Mutex;
use xen_abi::event_channel::DOMID_SELF;
use xen_abi::hypercall::{MACH2PHYS_VIRT_START, pte};
use xen_abi::memory::{MMU_NORMAL_PT_UPDATE, MmuUpdate, PAGE_SIZE, pte_frame, table_index};
use xen_abi::start_info::StartInfo;

#[global_allocator]
static HEAP: LockedHeap = LockedHeap::empty();

/// Pseudo-physical frames not in use, for `alloc_page`.
static FREE_PAGES: Mutex<alloc::vec::Vec<u32>> = Mutex::new(alloc::vec::Vec::new());

static P2M: AtomicUsize = AtomicUsize::new(0);
static NR_PAGES: AtomicU64 = AtomicU64::new(0);
static L4_MFN: AtomicU64 = AtomicU64::new(0);
static TABLES_ADDED: AtomicU64 = AtomicU64::new(0);
static HEAP_PAGES: AtomicU64 = AtomicU64::new(0);
static POOL_PAGES: AtomicU64 = AtomicU64::new(0);
/// The pseudo-physical pages held as [`Page`] right now, one bit each: the only
/// pages of ours that may be granted or be the target of a grant copy.
static SHAREABLE: Mutex<alloc::vec::Vec<u64>> = Mutex::new(alloc::vec::Vec::new());
/// Our domain id once known ([`set_own_domid`]); `OWN_DOMID_UNKNOWN` before.
static OWN_DOMID: AtomicU32 = AtomicU32::new(OWN_DOMID_UNKNOWN);
const OWN_DOMID_UNKNOWN: u32 = u32::MAX;

/// Entry bits for a page-table page linked into its parent.
const TABLE_LINK: u64 = pte::PRESENT | pte::WRITABLE | pte::USER | pte::ACCESSED;
/// How a page-table page maps itself: Xen refuses writable mappings of page tables.
const TABLE_SELF: u64 = pte::PRESENT | pte::USER | pte::ACCESSED;

/// Why a memory operation failed.
#[derive(Debug, thiserror::Error)]
pub enum MmError {
    /// Xen refused a page-table update.
    #[error("Xen refused a page-table update: {0}")]
    Xen(#[from] XenError),
    /// No free page left (for a page table or a caller).
    #[error("no free page left")]
    OutOfPages,
    /// A pseudo-physical frame number outside the domain.
    #[error("page frame {0} is outside the domain")]
    BadPfn(u64),
    /// A guest-frame mapping asked for one of our own frames (DOMID_SELF, our domid,
    /// or a frame that turned out to be ours): it would alias memory Rust owns.
    #[error("refusing to map frame {frame:#x} of domain {domid}: it is this domain's own memory")]
    OwnFrame { domid: u16, frame: u64 },
    /// A guest-frame mapping before the kernel knows its own domid ([`set_own_domid`]).
    #[error("refusing to map a guest frame before this domain knows its own domid")]
    OwnDomidUnknown,
}

/// Virtual address of pseudo-physical page `pfn` once `init` has run.
pub fn va_of(pfn: u64) -> u64 {
    VIRT_BASE + pfn * PAGE_SIZE
}

/// Machine frame behind our pseudo-physical page `pfn` (the p2m list).
pub fn mfn_of(pfn: u64) -> u64 {
    let p2m = P2M.load(Ordering::Relaxed) as *const u64;
    assert!(pfn < NR_PAGES.load(Ordering::Relaxed), "pfn {pfn} outside the domain");
    // SAFETY: Xen maps the p2m list (one u64 per pfn, nr_pages of them) inside the
    // initial mapping and never unmaps it; `pfn` is in range (checked above).
    unsafe { p2m.add(pfn as usize).read_volatile() }
}

/// Our pseudo-physical page for machine frame `mfn` (the read-only M2P table).
pub fn pfn_of(mfn: u64) -> u64 {
    // SAFETY: Xen maps the M2P table read-only at MACH2PHYS_VIRT_START in every PV
    // guest, one u64 per machine frame of the host; reading any entry is allowed.
    unsafe { ((MACH2PHYS_VIRT_START + mfn * 8) as *const u64).read_volatile() }
}

/// Reads entry `index` of the page-table page whose machine frame is `table_mfn`.
fn read_entry(table_mfn: u64, index: usize) -> u64 {
    let pfn = pfn_of(table_mfn);
    assert!(pfn < NR_PAGES.load(Ordering::Relaxed), "page table frame {table_mfn:#x} is not ours");
    // SAFETY: page-table pages are our own pages, mapped (read-only) at va_of(pfn):
    // Xen's bootstrap tables lie in the initial mapping, tables we add are mapped by
    // `link_new_table` before use. `index` < 512 keeps the read inside the page.
    unsafe { (va_of(pfn) as *const u64).add(index & 0x1ff).read_volatile() }
}

/// Turns page `pfn` into an empty page table and links it at `index` of the table
/// `parent_mfn`.
fn link_new_table(pfn: u64, parent_mfn: u64, index: usize) -> Result<u64, MmError> {
    let va = va_of(pfn);
    let mfn = mfn_of(pfn);
    // SAFETY: `pfn` is a free page handed to us by the caller, mapped writable at `va`;
    // no reference to it exists. Xen validates a page table only if it has no writable
    // mapping, hence the zeroing followed by a read-only remap.
    unsafe {
        core::ptr::write_bytes(va as *mut u8, 0, PAGE_SIZE as usize);
        hypercall::update_va_mapping(va, (mfn << 12) | TABLE_SELF)?;
        let link = MmuUpdate {
            ptr: ((parent_mfn << 12) + index as u64 * 8) | MMU_NORMAL_PT_UPDATE,
            val: (mfn << 12) | TABLE_LINK,
        };
        hypercall::mmu_update(&[link], DOMID_SELF)?;
    }
    TABLES_ADDED.fetch_add(1, Ordering::Relaxed);
    Ok(mfn)
}

/// Returns the machine frame of the L1 table covering `va`, creating missing tables
/// with pages from `take_page`.
fn l1_table_for(va: u64, take_page: &mut dyn FnMut() -> Option<u64>) -> Result<u64, MmError> {
    let mut table = L4_MFN.load(Ordering::Relaxed);
    for level in [4, 3, 2] {
        let index = table_index(va, level);
        let entry = read_entry(table, index);
        table = if entry & pte::PRESENT != 0 {
            pte_frame(entry)
        } else {
            let pfn = take_page().ok_or(MmError::OutOfPages)?;
            link_new_table(pfn, table, index)?
        };
    }
    Ok(table)
}

/// The L1 entry mapping `va`, if its tables exist.
fn l1_entry(va: u64) -> Option<u64> {
    let mut table = L4_MFN.load(Ordering::Relaxed);
    for level in [4, 3, 2] {
        let entry = read_entry(table, table_index(va, level));
        if entry & pte::PRESENT == 0 {
            return None;
        }
        table = pte_frame(entry);
    }
    Some(read_entry(table, table_index(va, 1)))
}

fn is_mapped(va: u64) -> bool {
    l1_entry(va).is_some_and(|e| e & pte::PRESENT != 0)
}

/// Sets up memory from start_info. Must run once, before anything allocates.
pub fn init(si: &StartInfo) -> Result<(), MmError> {
    NR_PAGES.store(si.nr_pages, Ordering::Relaxed);
    P2M.store(si.mfn_list as usize, Ordering::Relaxed);
    let l4_pfn = (si.pt_base - VIRT_BASE) / PAGE_SIZE;
    L4_MFN.store(mfn_of(l4_pfn), Ordering::Relaxed);

    // Everything below the bootstrap page tables is in use (image, p2m list, start
    // info, xenstore and console pages, the tables themselves); the rest is free.
    let first_free = l4_pfn + si.nr_pt_frames;
    let nr_pages = si.nr_pages;
    if first_free >= nr_pages {
        return Err(MmError::BadPfn(first_free));
    }

    // New page tables come from the front of the free pages, which Xen has mapped.
    let mut next_table_page = first_free;
    let mut take_page = || {
        let pfn = next_table_page;
        (pfn < nr_pages && is_mapped(va_of(pfn))).then(|| {
            next_table_page += 1;
            pfn
        })
    };
    let mut batch = alloc_free_batch();
    let mut batch_l1 = u64::MAX;
    for pfn in first_free..nr_pages {
        let va = va_of(pfn);
        if is_mapped(va) {
            continue;
        }
        let l1 = l1_table_for(va, &mut take_page)?;
        if l1 != batch_l1 || batch.is_full() {
            // SAFETY: the batch maps not-yet-mapped pages of ours; nothing refers to them.
            unsafe { batch.flush()? };
            batch_l1 = l1;
        }
        batch.push(MmuUpdate {
            ptr: (l1 << 12) + table_index(va, 1) as u64 * 8,
            val: (mfn_of(pfn) << 12) | pte::KERNEL_DATA,
        });
    }
    // SAFETY: as above.
    unsafe { batch.flush()? };
    let first_unused = next_table_page;

    // Half of what is left is heap, the other half whole pages.
    let free = nr_pages - first_unused;
    let heap_pages = free / 2;
    // SAFETY: pages first_unused .. first_unused + heap_pages are ours, now mapped
    // writable and contiguous at va_of(), and used by nothing else.
    unsafe { HEAP.lock().init(va_of(first_unused) as *mut u8, (heap_pages * PAGE_SIZE) as usize) };
    HEAP_PAGES.store(heap_pages, Ordering::Relaxed);
    let pool: alloc::vec::Vec<u32> = (first_unused + heap_pages..nr_pages).rev().map(|p| p as u32).collect();
    POOL_PAGES.store(pool.len() as u64, Ordering::Relaxed);
    *FREE_PAGES.lock() = pool;
    *SHAREABLE.lock() = alloc::vec![0; nr_pages.div_ceil(64) as usize];

    // SAFETY: the guard page is part of .bss that nothing uses; unmapping it makes a
    // stack overflow fault instead of silently overwriting the pages below the stack.
    unsafe { hypercall::update_va_mapping((&raw const stack_guard_page) as u64, 0)? };
    Ok(())
}

/// A fixed batch of page-table updates (no heap exists while memory is set up).
struct Batch {
    updates: [MmuUpdate; 64],
    len: usize,
}

fn alloc_free_batch() -> Batch {
    Batch { updates: [MmuUpdate::default(); 64], len: 0 }
}

impl Batch {
    fn is_full(&self) -> bool {
        self.len == self.updates.len()
    }

    fn push(&mut self, u: MmuUpdate) {
        self.updates[self.len] = u;
        self.len += 1;
    }

    /// # Safety
    /// As for `hypercall::mmu_update`.
    unsafe fn flush(&mut self) -> Result<(), XenError> {
        if self.len > 0 {
            // SAFETY: forwarded to the caller.
            unsafe { hypercall::mmu_update(&self.updates[..self.len], DOMID_SELF)? };
        }
        self.len = 0;
        Ok(())
    }
}

/// Records our domain id (read from xenstore), so that [`MappingSlot::map_guest_frame`]
/// can refuse it.
pub fn set_own_domid(domid: u16) {
    OWN_DOMID.store(u32::from(domid), Ordering::Relaxed);
}

/// Whether `domid` may name this domain: DOMID_SELF, our own id, or any id while
/// ours is not known yet.
pub fn may_be_own_domid(domid: u16) -> bool {
    let own = OWN_DOMID.load(Ordering::Relaxed);
    domid == DOMID_SELF || own == OWN_DOMID_UNKNOWN || u32::from(domid) == own
}

/// Our pseudo-physical page behind machine frame `mfn`, if it is one of ours.
fn own_pfn(mfn: u64) -> Option<u64> {
    let pfn = pfn_of(mfn);
    (pfn < NR_PAGES.load(Ordering::Relaxed) && mfn_of(pfn) == mfn).then_some(pfn)
}

/// Whether machine frame `mfn` is one of this domain's own pages.
fn is_own_frame(mfn: u64) -> bool {
    own_pfn(mfn).is_some()
}

/// Marks page `pfn` as held by a [`Page`] (or no longer).
fn set_shareable(pfn: u64, shareable: bool) {
    let mut bits = SHAREABLE.lock();
    if let Some(word) = bits.get_mut((pfn / 64) as usize) {
        let bit = 1u64 << (pfn % 64);
        if shareable { *word |= bit } else { *word &= !bit }
    }
}

/// Whether machine frame `mfn` is a page of ours held by a [`Page`] right now: the
/// only memory of ours another domain may be let at (granted, or written by a grant
/// copy). Heap, stacks, statics, page tables and `PrivatePage`s are not.
pub fn is_shareable_frame(mfn: u64) -> bool {
    own_pfn(mfn)
        .is_some_and(|pfn| SHAREABLE.lock().get((pfn / 64) as usize).is_some_and(|word| word & (1 << (pfn % 64)) != 0))
}

/// Takes a page from the pool and zeroes it.
fn take_pool_page() -> Result<u64, MmError> {
    let pfn = u64::from(FREE_PAGES.lock().pop().ok_or(MmError::OutOfPages)?);
    // SAFETY: the page just left the pool: ours, mapped writable at va_of(pfn) since
    // `init`, and nothing refers to it (not granted, no Page or PrivatePage holds it).
    unsafe { core::ptr::write_bytes(va_of(pfn) as *mut u8, 0, PAGE_SIZE as usize) };
    Ok(pfn)
}

/// A whole page of ours that may be shared with another domain (granted, or used as
/// a ring): the peer may write it at any moment, so it is only ever copied in and out
/// with volatile accesses ([`read_page`], [`write_page`], [`read_u32`], [`write_u32`]);
/// no Rust reference into it exists. Dropping it gives it back to the pool, so a page
/// must not be dropped while granted.
#[derive(Debug)]
pub struct Page {
    pfn: u64,
}

impl Drop for Page {
    fn drop(&mut self) {
        set_shareable(self.pfn, false);
        FREE_PAGES.lock().push(self.pfn as u32);
    }
}

impl Page {
    /// Keeps the page out of the pool for good (it became a page table).
    fn into_pfn(self) -> u64 {
        let pfn = self.pfn;
        set_shareable(pfn, false);
        core::mem::forget(self);
        pfn
    }

    pub fn va(&self) -> u64 {
        va_of(self.pfn)
    }
    /// The machine frame, which a grant of the page names.
    pub fn mfn(&self) -> u64 {
        mfn_of(self.pfn)
    }
}

/// A whole page of ours that is never shared: it has no frame number to grant (and
/// `gnttab` grants only frames of live [`Page`]s), so no other domain can map it,
/// and it hands out ordinary slices.
#[derive(Debug)]
pub struct PrivatePage {
    pfn: u64,
}

impl Drop for PrivatePage {
    fn drop(&mut self) {
        FREE_PAGES.lock().push(self.pfn as u32);
    }
}

impl PrivatePage {
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: the page is ours alone (taken from the pool, not yet given back,
        // never granted: this type exposes no frame number), mapped at va_of(pfn);
        // `&self` keeps it alive and unchanged for the slice's lifetime.
        unsafe { core::slice::from_raw_parts(va_of(self.pfn) as *const u8, PAGE_SIZE as usize) }
    }
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_slice`, and `&mut self` makes this the only reference.
        unsafe { core::slice::from_raw_parts_mut(va_of(self.pfn) as *mut u8, PAGE_SIZE as usize) }
    }
}

fn page_range_check(offset: usize, len: usize) {
    assert!(
        offset.checked_add(len).is_some_and(|end| end <= PAGE_SIZE as usize),
        "access beyond the page ({offset}+{len})"
    );
}

/// Copies `out.len()` bytes from virtual address `src` with volatile loads, a machine
/// word at a time where alignment allows.
///
/// # Safety
/// `src .. src + out.len()` must be mapped readable for the whole call.
unsafe fn volatile_copy_from(src: usize, out: &mut [u8]) {
    let head = (src.next_multiple_of(8) - src).min(out.len());
    let words = (out.len() - head) / 8;
    let (head_bytes, rest) = out.split_at_mut(head);
    let (word_bytes, tail_bytes) = rest.split_at_mut(words * 8);
    for (i, b) in head_bytes.iter_mut().enumerate() {
        // SAFETY: inside the range the caller vouches for.
        *b = unsafe { ((src + i) as *const u8).read_volatile() };
    }
    for (i, chunk) in word_bytes.chunks_exact_mut(8).enumerate() {
        // SAFETY: an 8-byte aligned word inside the range (`head` aligned the address).
        let word = unsafe { ((src + head + i * 8) as *const u64).read_volatile() };
        chunk.copy_from_slice(&word.to_ne_bytes());
    }
    for (i, b) in tail_bytes.iter_mut().enumerate() {
        // SAFETY: inside the range, as above.
        *b = unsafe { ((src + head + words * 8 + i) as *const u8).read_volatile() };
    }
}

/// Copies `data` to virtual address `dst` with volatile stores, a machine word at a
/// time where alignment allows.
///
/// # Safety
/// `dst .. dst + data.len()` must be mapped writable for the whole call, and no Rust
/// reference may point into it.
unsafe fn volatile_copy_to(dst: usize, data: &[u8]) {
    let head = (dst.next_multiple_of(8) - dst).min(data.len());
    let words = (data.len() - head) / 8;
    let (head_bytes, rest) = data.split_at(head);
    let (word_bytes, tail_bytes) = rest.split_at(words * 8);
    for (i, &b) in head_bytes.iter().enumerate() {
        // SAFETY: inside the range the caller vouches for.
        unsafe { ((dst + i) as *mut u8).write_volatile(b) };
    }
    for (i, chunk) in word_bytes.chunks_exact(8).enumerate() {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        // SAFETY: an 8-byte aligned word inside the range (`head` aligned the address).
        unsafe { ((dst + head + i * 8) as *mut u64).write_volatile(u64::from_ne_bytes(word)) };
    }
    for (i, &b) in tail_bytes.iter().enumerate() {
        // SAFETY: inside the range, as above.
        unsafe { ((dst + head + words * 8 + i) as *mut u8).write_volatile(b) };
    }
}

/// Copies bytes out of one of our pages with volatile reads (it may be shared),
/// a machine word at a time where alignment allows.
pub fn read_page(page: &Page, offset: usize, out: &mut [u8]) {
    page_range_check(offset, out.len());
    // SAFETY: the range is inside our page (checked above), mapped since `init`.
    unsafe { volatile_copy_from(page.va() as usize + offset, out) }
}

/// Copies bytes into one of our pages with volatile writes (it may be shared),
/// a machine word at a time where alignment allows.
pub fn write_page(page: &Page, offset: usize, data: &[u8]) {
    page_range_check(offset, data.len());
    // SAFETY: the range is inside our page (checked above), mapped writable since
    // `init`; a `Page` never hands out references into itself.
    unsafe { volatile_copy_to(page.va() as usize + offset, data) }
}

/// Reads an aligned u32 from one of our pages in one volatile 32-bit load, so a
/// value the peer changes meanwhile is read either wholly old or wholly new
/// (single-copy atomic), never part of each.
pub fn read_u32(page: &Page, offset: usize) -> u32 {
    page_range_check(offset, 4);
    assert!(offset.is_multiple_of(4), "unaligned u32 at {offset}");
    // SAFETY: an aligned u32 inside our page (checked above), mapped since `init`.
    unsafe { ((page.va() as usize + offset) as *const u32).read_volatile() }
}

/// Writes an aligned u32 into one of our pages with one volatile store, so a peer
/// never sees half of it.
pub fn write_u32(page: &Page, offset: usize, value: u32) {
    page_range_check(offset, 4);
    assert!(offset.is_multiple_of(4), "unaligned u32 at {offset}");
    // SAFETY: an aligned u32 inside our page (checked above), mapped writable.
    unsafe { ((page.va() as usize + offset) as *mut u32).write_volatile(value) };
}

/// Takes a zeroed page from the pool, to share.
pub fn alloc_page() -> Result<Page, MmError> {
    let pfn = take_pool_page()?;
    set_shareable(pfn, true);
    Ok(Page { pfn })
}

/// Takes a zeroed page from the pool that is never shared.
pub fn alloc_private_page() -> Result<PrivatePage, MmError> {
    Ok(PrivatePage { pfn: take_pool_page()? })
}

/// A virtual page at which another domain's frame (or a grant) can be mapped.
pub struct MappingSlot {
    va: u64,
}

/// Virtual addresses for mappings of foreign frames sit above the domain's own pages.
const MAPPING_WINDOW: u64 = VIRT_BASE + 0x2000_0000;
const MAPPING_SLOTS: u64 = 4096;
static NEXT_SLOT: AtomicU64 = AtomicU64::new(0);
static FREE_SLOTS: Mutex<alloc::vec::Vec<u64>> = Mutex::new(alloc::vec::Vec::new());

impl MappingSlot {
    /// Reserves a virtual page with page tables ready under it.
    pub fn new() -> Result<Self, MmError> {
        let va = match FREE_SLOTS.lock().pop() {
            Some(va) => va,
            None => {
                let n = NEXT_SLOT.fetch_add(1, Ordering::Relaxed);
                if n >= MAPPING_SLOTS {
                    return Err(MmError::OutOfPages);
                }
                MAPPING_WINDOW + n * PAGE_SIZE
            }
        };
        let mut take = || alloc_page().ok().map(Page::into_pfn);
        l1_table_for(va, &mut take)?;
        Ok(MappingSlot { va })
    }

    pub fn va(&self) -> u64 {
        self.va
    }

    /// Writes the slot's L1 entry: `frame` of `domid` (Xen checks that we may map it).
    ///
    /// # Safety
    /// Whatever the slot mapped before becomes unreachable through it; the caller
    /// makes sure the new mapping aliases no memory that Rust references point into.
    unsafe fn set_entry(&self, domid: u16, frame: u64, writable: bool) -> Result<(), MmError> {
        // The slot's L1 table exists from its creation on.
        l1_table_for(self.va, &mut || None)?;
        let flags = if writable { pte::KERNEL_DATA } else { pte::KERNEL_DATA & !pte::WRITABLE };
        // One hypercall that also invalidates the slot's old translation: a slot is
        // remapped from frame to frame (the guest-memory cache evicts), and with
        // `mmu_update`, which leaves the TLB alone, accesses kept reaching the previous
        // frame (on the test bed, e1000 receive descriptors read out of a packet buffer,
        // packets written into other guest pages, and corrupt disk DMA).
        // SAFETY: the slot's page is ours to map and only `read`/`write` below touch
        // it (volatile, no references); aliasing is the caller's contract.
        unsafe { hypercall::update_va_mapping_otherdomain(self.va, (frame << 12) | flags, domid)? };
        Ok(())
    }

    /// Maps frame `frame` of another domain `domid` at this slot: a guest frame of an
    /// HVM guest we are the device model of, or a machine frame of a PV domain that
    /// lets us. Our own memory is refused ([`MmError::OwnFrame`]): `DOMID_SELF`, our
    /// own domid, and any frame that turns out to be ours once mapped, because a
    /// writable alias of our heap would let `write` change memory Rust owns.
    /// Refused with [`MmError::OwnDomidUnknown`] until [`set_own_domid`] has run.
    pub fn map_guest_frame(&self, domid: u16, frame: u64, writable: bool) -> Result<(), MmError> {
        let own = OWN_DOMID.load(Ordering::Relaxed);
        if own == OWN_DOMID_UNKNOWN {
            return Err(MmError::OwnDomidUnknown);
        }
        if domid == DOMID_SELF || u32::from(domid) == own {
            return Err(MmError::OwnFrame { domid, frame });
        }
        // SAFETY: `domid` is another domain, so the mapping is of its memory, which no
        // Rust reference of ours points into; checked once more below.
        unsafe { self.set_entry(domid, frame, writable)? };
        // Belt and braces: a domain id we did not expect to be ours (a stale record)
        // must still not yield an alias of our own memory.
        let mapped = l1_entry(self.va).map(pte_frame);
        if mapped.is_some_and(is_own_frame) {
            self.unmap()?;
            return Err(MmError::OwnFrame { domid, frame });
        }
        Ok(())
    }

    /// Maps our own machine frame `mfn` at this slot.
    ///
    /// # Safety
    /// The frame must not be memory Rust references point into (the heap, stacks,
    /// statics, a `PrivatePage`) while this mapping exists, unless `writable` is false
    /// and nothing writes that memory through Rust meanwhile.
    pub unsafe fn map_own_frame(&self, mfn: u64, writable: bool) -> Result<(), MmError> {
        // SAFETY: forwarded to the caller.
        unsafe { self.set_entry(DOMID_SELF, mfn, writable) }
    }

    /// Removes whatever is mapped at this slot.
    pub fn unmap(&self) -> Result<(), MmError> {
        // SAFETY: clearing the entry and flushing it is always allowed: nothing holds
        // a reference into the slot (`read`/`write` copy).
        unsafe { hypercall::update_va_mapping(self.va, 0)? };
        Ok(())
    }

    /// Copies bytes out of the mapped page (volatile: the owner may be writing it), a
    /// machine word at a time where alignment allows.
    pub fn read(&self, offset: usize, out: &mut [u8]) {
        page_range_check(offset, out.len());
        // SAFETY: inside the slot's page (checked above), which the caller mapped.
        unsafe { volatile_copy_from(self.va as usize + offset, out) }
    }

    /// Copies bytes into the mapped page, a machine word at a time where alignment
    /// allows.
    pub fn write(&self, offset: usize, data: &[u8]) {
        page_range_check(offset, data.len());
        // SAFETY: inside the slot's page, which the caller mapped writable; nothing
        // holds a reference into it.
        unsafe { volatile_copy_to(self.va as usize + offset, data) }
    }
}

impl Drop for MappingSlot {
    fn drop(&mut self) {
        let _ = self.unmap();
        FREE_SLOTS.lock().push(self.va);
    }
}

/// Memory counters.
#[derive(Clone, Copy, Debug)]
pub struct Stats {
    pub nr_pages: u64,
    pub heap_bytes: u64,
    pub heap_used_bytes: u64,
    pub pool_pages: u64,
    pub pool_free_pages: u64,
    pub page_tables_added: u64,
}

pub fn stats() -> Stats {
    let heap = HEAP.lock();
    Stats {
        nr_pages: NR_PAGES.load(Ordering::Relaxed),
        heap_bytes: HEAP_PAGES.load(Ordering::Relaxed) * PAGE_SIZE,
        heap_used_bytes: heap.used() as u64,
        pool_pages: POOL_PAGES.load(Ordering::Relaxed),
        pool_free_pages: FREE_PAGES.lock().len() as u64,
        page_tables_added: TABLES_ADDED.load(Ordering::Relaxed),
    }
}

// Untranslated foreign mappings and single loads/stores, for the device model
// (kernel/src/hvm.rs: the ioreq server's page).
impl MappingSlot {
    /// Maps machine frame `mfn` that domain `owner` owns, untranslated: the frames
    /// XENMEM_acquire_resource hands a PV caller, such as an ioreq server's page (Xen
    /// allocated it as the guest's and checks that we may map the guest's memory).
    /// Our own domain is refused, as for [`map_guest_frame`](Self::map_guest_frame).
    pub fn map_machine_frame_of(&self, owner: u16, mfn: u64, writable: bool) -> Result<(), MmError> {
        let own = OWN_DOMID.load(Ordering::Relaxed);
        if own == OWN_DOMID_UNKNOWN {
            return Err(MmError::OwnDomidUnknown);
        }
        if owner == DOMID_SELF || u32::from(owner) == own || is_own_frame(mfn) {
            return Err(MmError::OwnFrame { domid: owner, frame: mfn });
        }
        let l1 = l1_table_for(self.va, &mut || None)?;
        let flags = if writable { pte::KERNEL_DATA } else { pte::KERNEL_DATA & !pte::WRITABLE };
        let update = MmuUpdate {
            ptr: ((l1 << 12) + table_index(self.va, 1) as u64 * 8) | xen_abi::hvm::MMU_PT_UPDATE_NO_TRANSLATE,
            val: (mfn << 12) | flags,
        };
        // SAFETY: the slot's page is reached only through its volatile copies, and the
        // frame is not ours (checked above), so the mapping aliases no memory that a
        // Rust reference points into.
        unsafe { hypercall::mmu_update(&[update], owner)? };
        Ok(())
    }

    /// Reads one byte of the mapped page (volatile: the owner may be writing it).
    pub fn read_u8(&self, offset: usize) -> u8 {
        page_range_check(offset, 1);
        // SAFETY: inside the slot's page (checked above), which the caller mapped.
        unsafe { ((self.va as usize + offset) as *const u8).read_volatile() }
    }

    /// Writes one byte of the mapped page with one store.
    pub fn write_u8(&self, offset: usize, value: u8) {
        page_range_check(offset, 1);
        // SAFETY: inside the slot's page (checked above), which the caller mapped writable.
        unsafe { ((self.va as usize + offset) as *mut u8).write_volatile(value) };
    }

    /// Writes an aligned u64 of the mapped page with one store.
    pub fn write_u64(&self, offset: usize, value: u64) {
        page_range_check(offset, 8);
        assert!(offset.is_multiple_of(8), "unaligned u64 at {offset}");
        // SAFETY: an aligned u64 inside the slot's page (checked above), mapped writable.
        unsafe { ((self.va as usize + offset) as *mut u64).write_volatile(value) };
    }
}
