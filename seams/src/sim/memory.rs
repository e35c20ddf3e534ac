//! Pages, grant tables and grant mappings: the bytes live in the world, so a page and
//! every mapping of a grant of it see the same bytes. `read_u32`/`write_u32` move
//! their four bytes in one step, as the seam's single-copy atomic contract asks.

use alloc::collections::BTreeMap;
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

use super::{EPERM, State, World, take_fault};
use crate::{DomId, Error, GrantRef, Grants, Memory, SharedPage};

pub const PAGE_SIZE: usize = 4096;

/// The first frame number handed out; frames are never reused.
const FIRST_FRAME: u64 = 0x10_0000;
/// Refs 0-7 are reserved for the toolstack (console, xenstore), as in Xen.
const FIRST_GRANT_REF: u32 = 8;
/// Xen's default: 64 grant frames of 512 version-1 entries.
const GRANT_ENTRIES: u32 = 64 * 512;

#[derive(Default)]
pub(super) struct Frames {
    pages: BTreeMap<u64, Frame>,
    next: u64,
}

struct Frame {
    owner: DomId,
    bytes: Vec<u8>,
    /// The owner dropped its page while grants of it remained; the bytes stay until
    /// the last grant ends.
    dropped: bool,
}

#[derive(Default)]
pub(super) struct GrantTable {
    entries: BTreeMap<u32, Grant>,
}

struct Grant {
    grantee: DomId,
    frame: u64,
    readonly: bool,
    mappings: u32,
}

/// A grant as the sim sees it, for tests that check what is left over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GrantInfo {
    pub granter: DomId,
    pub grant: GrantRef,
    pub grantee: DomId,
    pub frame: u64,
    pub readonly: bool,
    /// Live mappings by the grantee.
    pub mappings: u32,
    /// The granter dropped the page while it was still granted.
    pub page_dropped: bool,
}

/// A page of a domain's memory; dropping it frees it.
pub struct SimPage {
    world: World,
    frame: u64,
}

/// Another domain's granted page, mapped; dropping it unmaps it.
pub struct MappedPage {
    world: World,
    mapper: DomId,
    granter: DomId,
    grant: GrantRef,
    frame: u64,
    writable: bool,
}

/// The end of `len` bytes at `offset`, or a panic naming the bad range.
fn end_of(offset: usize, len: usize) -> usize {
    match offset.checked_add(len) {
        Some(end) if end <= PAGE_SIZE => end,
        _ => panic!("{len} bytes at offset {offset} leave the {PAGE_SIZE}-byte page"),
    }
}

fn check_aligned(offset: usize) {
    assert!(offset.is_multiple_of(4), "ring index at unaligned offset {offset}");
}

impl World {
    fn read_frame(&self, frame: u64, offset: usize, out: &mut [u8]) {
        let end = end_of(offset, out.len());
        self.with(|state| {
            let page = state.frames.pages.get(&frame).expect("a live page or mapping has its frame");
            out.copy_from_slice(&page.bytes[offset..end]);
        });
    }

    fn write_frame(&self, frame: u64, offset: usize, data: &[u8]) {
        let end = end_of(offset, data.len());
        self.with(|state| {
            let page = state.frames.pages.get_mut(&frame).expect("a live page or mapping has its frame");
            page.bytes[offset..end].copy_from_slice(data);
        });
    }

    /// Reads the aligned u32 at `offset` in one step: the four bytes come from one
    /// borrow of the world, so no other operation lands between them (the seam's
    /// single-copy atomic contract for ring indices).
    fn read_frame_u32(&self, frame: u64, offset: usize) -> u32 {
        check_aligned(offset);
        let end = end_of(offset, 4);
        self.with(|state| {
            let page = state.frames.pages.get(&frame).expect("a live page or mapping has its frame");
            let mut bytes = [0; 4];
            bytes.copy_from_slice(&page.bytes[offset..end]);
            u32::from_le_bytes(bytes)
        })
    }

    /// Writes the aligned u32 at `offset` in one step, as `read_frame_u32` reads.
    fn write_frame_u32(&self, frame: u64, offset: usize, value: u32) {
        check_aligned(offset);
        let end = end_of(offset, 4);
        self.with(|state| {
            let page = state.frames.pages.get_mut(&frame).expect("a live page or mapping has its frame");
            page.bytes[offset..end].copy_from_slice(&value.to_le_bytes());
        });
    }

    /// Every grant `granter` has not ended, lowest ref first.
    pub fn grants(&self, granter: DomId) -> Vec<GrantInfo> {
        self.with(|state| {
            let Some(domain) = state.domains.get(&granter) else { return Vec::new() };
            let info = |(gref, grant): (&u32, &Grant)| GrantInfo {
                granter,
                grant: GrantRef(*gref),
                grantee: grant.grantee,
                frame: grant.frame,
                readonly: grant.readonly,
                mappings: grant.mappings,
                page_dropped: state.frames.pages.get(&grant.frame).is_none_or(|f| f.dropped),
            };
            domain.grants.entries.iter().map(info).collect()
        })
    }

    /// Grants, in any domain, whose page its owner dropped: a leak in the driver
    /// (in Xen, the peer would keep access to memory that is reused).
    pub fn dangling_grants(&self) -> Vec<GrantInfo> {
        let domains = self.domains();
        domains.into_iter().flat_map(|d| self.grants(d)).filter(|g| g.page_dropped).collect()
    }

    /// The frames of `domid`'s pages that are allocated and not dropped.
    pub fn pages(&self, domid: DomId) -> Vec<u64> {
        self.with(|state| {
            let pages = state.frames.pages.iter();
            pages.filter(|(_, f)| f.owner == domid && !f.dropped).map(|(n, _)| *n).collect()
        })
    }

    /// The next `count` page allocations by `domid` fail with `Error::Exhausted`.
    pub fn fail_next_page_allocations(&self, domid: DomId, count: u32) {
        self.with(|state| {
            if let Some(domain) = state.domain(domid) {
                domain.faults.page_allocations = count;
            }
        });
    }

    /// The next `count` grants by `domid` fail with `Error::Exhausted` (a full table).
    pub fn fail_next_grants(&self, domid: DomId, count: u32) {
        self.with(|state| {
            if let Some(domain) = state.domain(domid) {
                domain.faults.grants = count;
            }
        });
    }
}

impl State {
    /// Frees a frame's bytes once its page is dropped and no grant names it.
    fn collect_frame(&mut self, frame: u64) {
        let granted =
            self.domains.values().any(|domain| domain.grants.entries.values().any(|grant| grant.frame == frame));
        if !granted && self.frames.pages.get(&frame).is_some_and(|page| page.dropped) {
            self.frames.pages.remove(&frame);
        }
    }
}

impl Memory for super::SimXen {
    type Page = SimPage;

    fn alloc_page(&self) -> Result<SimPage, Error> {
        let frame = self.world.with(|state| {
            let domain = state.domains.get_mut(&self.domid).ok_or(Error::Invalid)?;
            if take_fault(&mut domain.faults.page_allocations) {
                return Err(Error::Exhausted);
            }
            let frames = &mut state.frames;
            let frame = FIRST_FRAME + frames.next;
            frames.next += 1;
            let page = Frame { owner: self.domid, bytes: vec![0; PAGE_SIZE], dropped: false };
            frames.pages.insert(frame, page);
            Ok(frame)
        })?;
        Ok(SimPage { world: self.world.clone(), frame })
    }
}

impl Grants for super::SimXen {
    fn grant(&self, domid: DomId, frame: u64, readonly: bool) -> Result<GrantRef, Error> {
        self.world.with(|state| {
            let page = state.frames.pages.get(&frame);
            let ours = page.is_some_and(|page| page.owner == self.domid && !page.dropped);
            let domain = state.domains.get_mut(&self.domid).ok_or(Error::Invalid)?;
            if !ours {
                return Err(Error::Invalid);
            }
            if take_fault(&mut domain.faults.grants) {
                return Err(Error::Exhausted);
            }
            let entries = &mut domain.grants.entries;
            let free = (FIRST_GRANT_REF..GRANT_ENTRIES).find(|r| !entries.contains_key(r));
            let gref = free.ok_or(Error::Exhausted)?;
            entries.insert(gref, Grant { grantee: domid, frame, readonly, mappings: 0 });
            Ok(GrantRef(gref))
        })
    }

    fn end(&self, grant: GrantRef) -> Result<(), Error> {
        self.world.with(|state| {
            let domain = state.domains.get_mut(&self.domid).ok_or(Error::Invalid)?;
            let entry = domain.grants.entries.get(&grant.0).ok_or(Error::Invalid)?;
            if entry.mappings > 0 {
                return Err(Error::InUse);
            }
            let frame = entry.frame;
            domain.grants.entries.remove(&grant.0);
            state.collect_frame(frame);
            Ok(())
        })
    }
}

impl super::SimXen {
    /// Maps grant `grant` of domain `granter`, as a backend does.
    ///
    /// Returns `Error::Invalid` if `granter` has no such grant (never made, or ended),
    /// and `Error::Xen(-EPERM)` if the grant is for another domain, or read-only and
    /// `writable` is asked for.
    pub fn map_grant(&self, granter: DomId, grant: GrantRef, writable: bool) -> Result<MappedPage, Error> {
        let frame = self.world.with(|state| {
            let domain = state.domains.get_mut(&granter).ok_or(Error::Invalid)?;
            let entry = domain.grants.entries.get_mut(&grant.0).ok_or(Error::Invalid)?;
            if entry.grantee != self.domid || (writable && entry.readonly) {
                return Err(Error::Xen(-EPERM));
            }
            entry.mappings += 1;
            Ok(entry.frame)
        })?;
        let world = self.world.clone();
        Ok(MappedPage { world, mapper: self.domid, granter, grant, frame, writable })
    }
}

impl SharedPage for SimPage {
    fn frame(&self) -> u64 {
        self.frame
    }
    fn read(&self, offset: usize, out: &mut [u8]) {
        self.world.read_frame(self.frame, offset, out);
    }
    fn write(&self, offset: usize, data: &[u8]) {
        self.world.write_frame(self.frame, offset, data);
    }
    fn read_u32(&self, offset: usize) -> u32 {
        self.world.read_frame_u32(self.frame, offset)
    }
    fn write_u32(&self, offset: usize, value: u32) {
        self.world.write_frame_u32(self.frame, offset, value);
    }
}

impl Drop for SimPage {
    fn drop(&mut self) {
        if let Ok(mut state) = self.world.state.try_borrow_mut() {
            if let Some(page) = state.frames.pages.get_mut(&self.frame) {
                page.dropped = true;
            }
            state.collect_frame(self.frame);
        }
    }
}

impl fmt::Debug for SimPage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SimPage({:#x})", self.frame)
    }
}

impl MappedPage {
    pub fn granter(&self) -> DomId {
        self.granter
    }

    pub fn grant_ref(&self) -> GrantRef {
        self.grant
    }

    pub fn is_writable(&self) -> bool {
        self.writable
    }

    /// Unmaps the page (dropping it does the same).
    pub fn unmap(self) {}
}

/// Reads and writes go to the granter's page; `frame` is the granter's frame.
/// Writing through a read-only mapping panics, as the page fault would be fatal.
impl SharedPage for MappedPage {
    fn frame(&self) -> u64 {
        self.frame
    }
    fn read(&self, offset: usize, out: &mut [u8]) {
        self.world.read_frame(self.frame, offset, out);
    }
    fn write(&self, offset: usize, data: &[u8]) {
        assert!(self.writable, "dom{} wrote through a read-only mapping", self.mapper);
        self.world.write_frame(self.frame, offset, data);
    }
    fn read_u32(&self, offset: usize) -> u32 {
        self.world.read_frame_u32(self.frame, offset)
    }
    fn write_u32(&self, offset: usize, value: u32) {
        assert!(self.writable, "dom{} wrote through a read-only mapping", self.mapper);
        self.world.write_frame_u32(self.frame, offset, value);
    }
}

impl Drop for MappedPage {
    fn drop(&mut self) {
        if let Ok(mut state) = self.world.state.try_borrow_mut()
            && let Some(domain) = state.domains.get_mut(&self.granter)
            && let Some(entry) = domain.grants.entries.get_mut(&self.grant.0)
        {
            entry.mappings = entry.mappings.saturating_sub(1);
        }
    }
}

impl fmt::Debug for MappedPage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "MappedPage(dom{}'s grant {} in dom{}, {})",
            self.granter,
            self.grant.0,
            self.mapper,
            if self.writable { "writable" } else { "read-only" }
        )
    }
}
