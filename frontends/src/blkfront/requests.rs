//! The disk's ring: request slots, submitting requests (with their pages) and
//! matching the backend's responses to them. The ring itself is a [`FrontRing`] over
//! the granted ring pages.

use alloc::vec::Vec;
use core::task::Waker;

use xen_seams::{DomId, Port, SharedPage, Xen};

use super::buffers::{Buffer, try_end};
use super::{Discard, Error, Flush, ProtocolError, Stats};
use crate::blkif::{
    self, MAX_SEGMENTS_PER_REQUEST, Operation, PAGE_SIZE, REQUEST_LEN, RESPONSE_LEN, RequestRepr, Response,
    ResponseRepr, SECTOR_SIZE, Segment, Status,
};
use crate::ring::{FrontRing, TooManyResponses};

/// Segment descriptors written to an indirect page at a time.
const SEGMENT_BATCH: usize = 64;

/// A ring slot's request, from submission until its owner takes the result.
#[derive(Debug)]
pub(super) enum SlotState {
    Free,
    InFlight,
    /// In flight, but its caller is gone: recycled when the response comes.
    Orphaned,
    Done(Result<(), Error>),
}

pub(super) struct Slot<P> {
    pub(super) state: SlotState,
    /// Bumped each time the slot is freed; the high half of the request id, so a
    /// late duplicate of an earlier response cannot complete the slot's next request.
    pub(super) generation: u32,
    /// The call that submitted it (0: none).
    pub(super) owner: u64,
    /// The operation the response must echo.
    pub(super) operation: Operation,
    pub(super) sector: u64,
    /// Where in the caller's buffer the request's bytes go.
    pub(super) buf_offset: usize,
    pub(super) len_bytes: usize,
    pub(super) pages: Vec<Buffer<P>>,
    pub(super) indirect: Vec<Buffer<P>>,
}

/// One request to put on the ring.
pub(super) enum Submission<'b> {
    Data { operation: Operation, sector: u64, buf_offset: usize, len_bytes: usize, write: Option<&'b [u8]> },
    Flush(Operation),
    Discard { sector: u64, nr_sectors: u64 },
}

impl Submission<'_> {
    /// Data and indirect pages the request needs.
    pub(super) fn pages(&self) -> usize {
        match self {
            Submission::Data { len_bytes, .. } => pages_for(*len_bytes),
            _ => 0,
        }
    }
}

/// Data and indirect pages a request of `len_bytes` needs.
fn pages_for(len_bytes: usize) -> usize {
    let data = len_bytes.div_ceil(PAGE_SIZE);
    data + if data > MAX_SEGMENTS_PER_REQUEST { blkif::indirect_pages(data) } else { 0 }
}

/// Everything that changes while the disk runs.
pub(super) struct Inner<X: Xen> {
    pub(super) backend_id: DomId,
    pub(super) persistent: bool,
    /// Data and indirect pages we may allocate.
    pub(super) budget: usize,
    /// The shared ring's pages (none once retired).
    pub(super) ring_pages: Vec<Buffer<X::Page>>,
    pub(super) ring: FrontRing,
    pub(super) slots: Vec<Slot<X::Page>>,
    pub(super) free_ids: Vec<usize>,
    /// Idle pages (granted for good with persistent grants, ungranted otherwise).
    pub(super) pool: Vec<Buffer<X::Page>>,
    /// Pages whose per-request grant the backend still maps.
    pub(super) stale: Vec<Buffer<X::Page>>,
    /// Every page, once the disk is closing: ended and freed as the backend lets go.
    pub(super) retired: Vec<Buffer<X::Page>>,
    pub(super) allocated: usize,
    pub(super) failure: Option<Error>,
    /// A waiter is reading the ring and the backend watch.
    pub(super) leader: bool,
    pub(super) waiters: Vec<Waker>,
    pub(super) next_token: u64,
    pub(super) flush: Flush,
    pub(super) discard: Option<Discard>,
    pub(super) stats: Stats,
}

impl<X: Xen> Inner<X> {
    /// A disk whose ring will have `nr_ring_pages` pages.
    pub(super) fn new(backend_id: DomId, nr_ring_pages: usize) -> Self {
        Inner {
            backend_id,
            persistent: false,
            budget: 0,
            ring_pages: Vec::new(),
            ring: FrontRing::new(blkif::ring_geometry(nr_ring_pages)),
            slots: Vec::new(),
            free_ids: Vec::new(),
            pool: Vec::new(),
            stale: Vec::new(),
            retired: Vec::new(),
            allocated: 0,
            failure: None,
            leader: false,
            waiters: Vec::new(),
            next_token: 1,
            flush: Flush::NotNeeded,
            discard: None,
            stats: Stats::default(),
        }
    }

    /// Sizes the slot table and pools once the features are known, so that the
    /// I/O path does not allocate.
    pub(super) fn set_up(&mut self, persistent: bool, budget: usize, max_segments: usize) {
        self.persistent = persistent;
        self.budget = budget;
        let indirect = if max_segments > MAX_SEGMENTS_PER_REQUEST { blkif::indirect_pages(max_segments) } else { 0 };
        self.slots = (0..self.ring.size())
            .map(|_| Slot {
                state: SlotState::Free,
                generation: 0,
                owner: 0,
                operation: Operation::Read,
                sector: 0,
                buf_offset: 0,
                len_bytes: 0,
                pages: Vec::with_capacity(max_segments),
                indirect: Vec::with_capacity(indirect),
            })
            .collect();
        self.free_ids = (0..self.ring.size() as usize).rev().collect();
        self.pool = Vec::with_capacity(budget);
        self.stale = Vec::with_capacity(budget);
        self.waiters = Vec::with_capacity(8);
    }

    pub(super) fn new_token(&mut self) -> u64 {
        let token = self.next_token;
        self.next_token += 1;
        token
    }

    pub(super) fn register(&mut self, waker: &Waker) {
        if !self.waiters.iter().any(|w| w.will_wake(waker)) {
            self.waiters.push(waker.clone());
        }
    }

    pub(super) fn wake_all(&mut self) {
        for waker in self.waiters.drain(..) {
            waker.wake();
        }
    }

    pub(super) fn fail(&mut self, error: Error) {
        if self.failure.is_none() {
            self.failure = Some(error);
        }
        self.wake_all();
    }

    pub(super) fn has_done(&self, token: u64) -> bool {
        self.slots.iter().any(|slot| slot.owner == token && matches!(slot.state, SlotState::Done(_)))
    }

    pub(super) fn can_submit(&self, pages: usize) -> bool {
        !self.free_ids.is_empty()
            && self.ring.free_requests() > 0
            && self.pool.len() + self.budget.saturating_sub(self.allocated) >= pages
    }

    /// Puts one request on the ring (not yet pushed).
    pub(super) fn submit(
        &mut self,
        xen: &X,
        handle: u16,
        token: u64,
        submission: &Submission<'_>,
    ) -> Result<(), Error> {
        let id = self.free_ids.pop().ok_or(Error::Xen(xen_seams::Error::Exhausted))?;
        let mut pages = core::mem::take(&mut self.slots[id].pages);
        let mut indirect = core::mem::take(&mut self.slots[id].indirect);
        let mut entry = [0u8; REQUEST_LEN];
        let filled = self.fill(xen, handle, id, submission, &mut pages, &mut indirect, &mut entry);
        let slot = &mut self.slots[id];
        (slot.pages, slot.indirect) = (pages, indirect);
        slot.owner = token;
        slot.state = SlotState::InFlight; // so that release_slot frees it on failure
        if let Err(e) = filled {
            self.release_slot(xen, id);
            return Err(e);
        }
        let (operation, sector, buf_offset, len_bytes) = match *submission {
            Submission::Data { operation, sector, buf_offset, len_bytes, .. } => {
                (operation, sector, buf_offset, len_bytes)
            }
            Submission::Flush(operation) => (operation, 0, 0, 0),
            Submission::Discard { sector, .. } => (Operation::Discard, sector, 0, 0),
        };
        let slot = &mut self.slots[id];
        (slot.operation, slot.sector, slot.buf_offset, slot.len_bytes) = (operation, sector, buf_offset, len_bytes);
        self.ring.write_request(&self.ring_pages, &entry);
        self.stats.requests += 1;
        Ok(())
    }

    /// Takes and fills the request's pages and encodes its ring entry.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn fill(
        &mut self,
        xen: &X,
        handle: u16,
        id: usize,
        submission: &Submission<'_>,
        pages: &mut Vec<Buffer<X::Page>>,
        indirect: &mut Vec<Buffer<X::Page>>,
        entry: &mut [u8; REQUEST_LEN],
    ) -> Result<(), Error> {
        let id = request_id(id, self.slots[id].generation);
        let request = &mut blkif::Request::new_unchecked(&mut entry[..]);
        let (operation, sector, len_bytes, write) = match *submission {
            Submission::Data { operation, sector, len_bytes, write, .. } => (operation, sector, len_bytes, write),
            Submission::Flush(operation) => {
                let segments = [Segment::default(); MAX_SEGMENTS_PER_REQUEST];
                RequestRepr::Direct { operation, handle, id, sector: 0, nr_segments: 0, segments }.emit(request);
                return Ok(());
            }
            Submission::Discard { sector, nr_sectors } => {
                RequestRepr::Discard { handle, id, sector, nr_sectors, secure: false }.emit(request);
                return Ok(());
            }
        };
        let nr_data = len_bytes.div_ceil(PAGE_SIZE);
        let nr_indirect = pages_for(len_bytes) - nr_data;
        for _ in 0..nr_data {
            pages.push(self.take_buffer(xen)?);
        }
        for _ in 0..nr_indirect {
            indirect.push(self.take_buffer(xen)?);
        }
        let readonly = operation == Operation::Write;
        let mut direct = [Segment::default(); MAX_SEGMENTS_PER_REQUEST];
        let mut batch = [0u8; SEGMENT_BATCH * blkif::SEGMENT_LEN];
        for (index, buffer) in pages.iter_mut().enumerate() {
            let start = index * PAGE_SIZE;
            let len = PAGE_SIZE.min(len_bytes - start);
            if let Some(data) = write {
                buffer.page.write(0, &data[start..start + len]);
            }
            let gref = self.ensure_granted(xen, buffer, readonly)?;
            let segment = Segment { gref, first_sect: 0, last_sect: (len / SECTOR_SIZE - 1) as u8 };
            if nr_indirect == 0 {
                direct[index] = segment;
                continue;
            }
            // Descriptors go out in batches; a batch never crosses an indirect page.
            let in_batch = index % SEGMENT_BATCH;
            segment.emit(&mut batch[in_batch * blkif::SEGMENT_LEN..]);
            if in_batch == SEGMENT_BATCH - 1 || index == nr_data - 1 {
                let first = index - in_batch;
                let offset = (first % blkif::SEGMENTS_PER_INDIRECT_PAGE) * blkif::SEGMENT_LEN;
                let target = &indirect[first / blkif::SEGMENTS_PER_INDIRECT_PAGE];
                target.page.write(offset, &batch[..(in_batch + 1) * blkif::SEGMENT_LEN]);
            }
        }
        if nr_indirect == 0 {
            RequestRepr::Direct { operation, handle, id, sector, nr_segments: nr_data, segments: direct }.emit(request);
            return Ok(());
        }
        let mut indirect_grefs = [0; blkif::MAX_INDIRECT_PAGES_PER_REQUEST];
        for (gref, buffer) in indirect_grefs.iter_mut().zip(indirect.iter_mut()) {
            *gref = self.ensure_granted(xen, buffer, true)?;
        }
        RequestRepr::Indirect { operation, handle, id, sector, nr_segments: nr_data, indirect_grefs }.emit(request);
        Ok(())
    }

    /// Publishes the new requests and notifies the backend if it asked to be
    /// (`RING_PUSH_REQUESTS_AND_CHECK_NOTIFY`).
    pub(super) fn push(&mut self, xen: &X, port: Port) {
        if self.ring_pages.is_empty() || !self.ring.push_requests(&self.ring_pages) {
            return;
        }
        self.stats.notifications += 1;
        if let Err(e) = xen.notify(port) {
            self.fail(Error::Xen(e));
        }
    }

    /// Consumes every response, then re-arms rsp_event and checks again
    /// (`RING_FINAL_CHECK_FOR_RESPONSES`). A bad response fails the disk.
    pub(super) fn process_responses(&mut self, xen: &X) {
        if self.failure.is_some() || self.ring_pages.is_empty() {
            return;
        }
        let corrupt = |TooManyResponses { rsp_prod, rsp_cons, outstanding }| {
            Error::Protocol(ProtocolError::TooManyResponses { rsp_prod, rsp_cons, outstanding })
        };
        let mut progressed = false;
        loop {
            let available = match self.ring.unconsumed_responses(&self.ring_pages) {
                Ok(available) => available,
                Err(e) => return self.fail(corrupt(e)),
            };
            for _ in 0..available {
                let mut bytes = [0u8; RESPONSE_LEN];
                self.ring.read_response(&self.ring_pages, &mut bytes);
                if let Err(e) = self.complete(xen, &bytes) {
                    return self.fail(Error::Protocol(e));
                }
                progressed = true;
            }
            match self.ring.final_check_for_responses(&self.ring_pages) {
                Ok(true) => {}
                Ok(false) => break,
                Err(e) => return self.fail(corrupt(e)),
            }
        }
        if progressed {
            self.wake_all();
        }
    }

    /// Checks one response against the request in flight and records its result.
    pub(super) fn complete(&mut self, xen: &X, bytes: &[u8; RESPONSE_LEN]) -> Result<(), ProtocolError> {
        let response = Response::new_unchecked(&bytes[..]);
        let id = response.id();
        let index = usize::try_from(id & u64::from(u32::MAX)).ok().filter(|&index| index < self.slots.len());
        let index = index.ok_or(ProtocolError::UnknownId { id })?;
        let persistent = self.persistent;
        let slot = &mut self.slots[index];
        let orphaned = match slot.state {
            _ if request_id(index, slot.generation) != id => return Err(ProtocolError::NotInFlight { id }),
            SlotState::InFlight => false,
            SlotState::Orphaned => true,
            _ => return Err(ProtocolError::NotInFlight { id }),
        };
        let expected = slot.operation;
        if response.operation() != expected.code() {
            return Err(ProtocolError::WrongOperation { id, expected: expected.code(), got: response.operation() });
        }
        let repr = ResponseRepr::parse(&response).map_err(|why| ProtocolError::Malformed { id, why })?;
        let result = match repr.status {
            Status::Okay => Ok(()),
            Status::Error => Err(Error::Io { operation: expected, sector: slot.sector }),
            Status::NotSupported => Err(Error::NotSupported(expected)),
        };
        if !persistent {
            // The backend is done with the pages; a grant still mapped is retried later.
            for buffer in slot.pages.iter_mut().chain(slot.indirect.iter_mut()) {
                try_end(xen, buffer);
            }
        }
        if repr.status == Status::NotSupported {
            match expected {
                Operation::FlushDiskCache | Operation::WriteBarrier => self.flush = Flush::Refused,
                Operation::Discard => self.discard = None,
                _ => {}
            }
        }
        if orphaned {
            self.release_slot(xen, index);
        } else {
            self.slots[index].state = SlotState::Done(result);
        }
        Ok(())
    }

    /// Takes the finished requests of call `token`: copies read data out, frees
    /// their slots. Returns how many finished and the first error among them.
    pub(super) fn harvest(&mut self, xen: &X, token: u64, mut read_into: Option<&mut [u8]>) -> (usize, Option<Error>) {
        let (mut count, mut first_error) = (0, None);
        for id in 0..self.slots.len() {
            let slot = &mut self.slots[id];
            if slot.owner != token || !matches!(slot.state, SlotState::Done(_)) {
                continue;
            }
            let SlotState::Done(result) = core::mem::replace(&mut slot.state, SlotState::InFlight) else {
                continue;
            };
            match (result, read_into.as_deref_mut()) {
                (Ok(()), Some(out)) => {
                    let out = &mut out[slot.buf_offset..slot.buf_offset + slot.len_bytes];
                    for (chunk, buffer) in out.chunks_mut(PAGE_SIZE).zip(&slot.pages) {
                        buffer.page.read(0, chunk);
                    }
                }
                (Ok(()), None) => {}
                (Err(e), _) => {
                    first_error = first_error.or(Some(e));
                }
            }
            self.release_slot(xen, id);
            count += 1;
        }
        if count > 0 {
            if !self.stale.is_empty() {
                self.retry_stale(xen);
            }
            self.wake_all(); // pages and slots came free
        }
        (count, first_error)
    }

    /// Call `token` is gone: its requests in flight become orphans, finished ones
    /// are freed.
    pub(super) fn abandon(&mut self, xen: &X, token: u64) {
        let mut released = false;
        for id in 0..self.slots.len() {
            if self.slots[id].owner != token {
                continue;
            }
            match self.slots[id].state {
                SlotState::InFlight => self.slots[id].state = SlotState::Orphaned,
                SlotState::Done(_) => {
                    self.release_slot(xen, id);
                    released = true;
                }
                SlotState::Free | SlotState::Orphaned => {}
            }
        }
        if released {
            self.wake_all();
        }
    }

    pub(super) fn stats(&self) -> Stats {
        Stats {
            in_flight: self.ring.in_flight() as usize,
            pages: self.allocated,
            stale_grants: self.stale.len(),
            ..self.stats
        }
    }
}

/// The id of the request in slot `index`: the slot's generation above its index.
fn request_id(index: usize, generation: u32) -> u64 {
    u64::from(generation) << 32 | index as u64
}
