//! The disk's data and indirect pages: a page and its grant, the pool of idle pages,
//! pages set aside while the backend still maps them, and their release.

use xen_seams::{GrantRef, Grants, SharedPage, Xen};

use super::Error;
use super::requests::{Inner, SlotState};

/// One of our pages and its grant to the backend, if granted.
pub(super) struct Buffer<P> {
    pub(super) page: P,
    pub(super) grant: Option<GrantRef>,
}

impl<P: SharedPage> SharedPage for Buffer<P> {
    fn frame(&self) -> u64 {
        self.page.frame()
    }
    fn read(&self, offset: usize, out: &mut [u8]) {
        self.page.read(offset, out);
    }
    fn write(&self, offset: usize, data: &[u8]) {
        self.page.write(offset, data);
    }
    fn read_u32(&self, offset: usize) -> u32 {
        self.page.read_u32(offset)
    }
    fn write_u32(&self, offset: usize, value: u32) {
        self.page.write_u32(offset, value);
    }
}

/// Ends `buffer`'s grant if it has one; false while the backend still maps it.
pub(super) fn try_end<G: Grants, P>(xen: &G, buffer: &mut Buffer<P>) -> bool {
    match buffer.grant {
        None => true,
        Some(grant) => match xen.end(grant) {
            // Invalid: not a grant of ours any more; nothing left to end.
            Ok(()) | Err(xen_seams::Error::Invalid) => {
                buffer.grant = None;
                true
            }
            Err(_) => false,
        },
    }
}

impl<X: Xen> Inner<X> {
    /// An idle page, or a new one while the budget allows.
    pub(super) fn take_buffer(&mut self, xen: &X) -> Result<Buffer<X::Page>, Error> {
        if let Some(buffer) = self.pool.pop() {
            return Ok(buffer);
        }
        if self.allocated >= self.budget {
            return Err(Error::Xen(xen_seams::Error::Exhausted));
        }
        let page = xen.alloc_page().map_err(Error::Xen)?;
        // Persistent grants are writable whatever the request (blkif.h note 8).
        let grant = match self.persistent {
            true => Some(xen.grant(self.backend_id, page.frame(), false).map_err(Error::Xen)?),
            false => None,
        };
        self.allocated += 1;
        Ok(Buffer { page, grant })
    }

    pub(super) fn ensure_granted(&self, xen: &X, buffer: &mut Buffer<X::Page>, readonly: bool) -> Result<u32, Error> {
        match buffer.grant {
            Some(grant) => Ok(grant.0),
            None => {
                let grant = xen.grant(self.backend_id, buffer.page.frame(), readonly).map_err(Error::Xen)?;
                buffer.grant = Some(grant);
                Ok(grant.0)
            }
        }
    }

    /// Returns a page to the pool, or sets it aside while the backend still maps a
    /// per-request grant of it.
    pub(super) fn recycle(&mut self, xen: &X, mut buffer: Buffer<X::Page>) {
        if self.persistent || try_end(xen, &mut buffer) {
            self.pool.push(buffer);
        } else {
            self.stale.push(buffer);
        }
    }

    pub(super) fn release_slot(&mut self, xen: &X, id: usize) {
        let mut pages = core::mem::take(&mut self.slots[id].pages);
        let mut indirect = core::mem::take(&mut self.slots[id].indirect);
        for buffer in pages.drain(..).chain(indirect.drain(..)) {
            self.recycle(xen, buffer);
        }
        let slot = &mut self.slots[id];
        (slot.pages, slot.indirect) = (pages, indirect);
        slot.state = SlotState::Free;
        slot.owner = 0;
        slot.generation = slot.generation.wrapping_add(1);
        self.free_ids.push(id);
    }

    /// Moves pages whose grants the backend has let go back to the pool.
    pub(super) fn retry_stale(&mut self, xen: &X) {
        let mut index = 0;
        while index < self.stale.len() {
            if try_end(xen, &mut self.stale[index]) {
                let buffer = self.stale.swap_remove(index);
                self.pool.push(buffer);
            } else {
                index += 1;
            }
        }
    }

    /// Gathers every page (ring, pool, aside, in requests) for ending and freeing.
    pub(super) fn retire_all(&mut self) {
        let Inner { ring_pages, slots, pool, stale, retired, free_ids, .. } = self;
        retired.append(ring_pages);
        retired.append(pool);
        retired.append(stale);
        for (id, slot) in slots.iter_mut().enumerate() {
            retired.append(&mut slot.pages);
            retired.append(&mut slot.indirect);
            if !matches!(slot.state, SlotState::Free) {
                slot.state = SlotState::Free;
                slot.owner = 0;
                free_ids.push(id);
            }
        }
    }

    /// Ends what can be ended and frees those pages; returns how many remain mapped.
    pub(super) fn end_retired(&mut self, xen: &X) -> usize {
        self.retired.retain_mut(|buffer| !try_end(xen, buffer));
        self.retired.len()
    }

    /// Leaks the pages the backend still maps: freeing them would hand memory it
    /// can still read and write to whoever allocates it next.
    pub(super) fn leak_retired(&mut self) {
        for buffer in self.retired.drain(..) {
            core::mem::forget(buffer);
        }
    }
}
