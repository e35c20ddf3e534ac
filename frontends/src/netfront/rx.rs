//! The receive side: rx buffers (a page each) posted in the rx ring, and the
//! validation of the backend's responses.

use alloc::vec;
use alloc::vec::Vec;

use xen_seams::{SharedPage, Xen};

use super::buffers::{Link, Pages, RX_RING_PAGE};
use super::{NetError, Stats, corrupt_ring};
use crate::netif::{self, ExtraInfo, PAGE_SIZE, RX_RING, RX_RING_SIZE, RxRequest, RxResponse, rx_flags};
use crate::ring::FrontRing;

/// An rx ring slot with no buffer posted in it.
const NO_BUFFER: u16 = u16::MAX;

/// A validated frame waiting in an rx buffer.
#[derive(Clone, Copy, Debug)]
pub(super) struct Frame {
    buffer: u16,
    offset: usize,
    len: usize,
}

/// The receive side: free buffers, which buffer each ring slot holds, and the ring.
pub(super) struct RxQueue {
    pub(super) ring: FrontRing,
    pub(super) free: Vec<u16>,
    /// The buffer posted in each ring slot (responses come back in their request's slot).
    pub(super) slot_buffer: Vec<u16>,
    /// A frame found but not yet taken (smoltcp asks before it takes).
    pub(super) pending: Option<Frame>,
    /// The slots that follow are extra-info slots.
    pub(super) in_extras: bool,
    /// The slots that follow continue a multi-slot packet (we asked for none): dropped.
    pub(super) in_fragments: bool,
    /// Push posted buffers once this many wait (or when the backend runs low).
    pub(super) push_batch: u32,
    pub(super) low_water: u32,
    pub(super) scratch: Vec<u8>,
    pub(super) stats: Stats,
}

impl RxQueue {
    pub(super) fn new(buffers: u16) -> RxQueue {
        RxQueue {
            ring: FrontRing::new(RX_RING),
            free: (0..buffers).rev().collect(),
            slot_buffer: vec![NO_BUFFER; RX_RING_SIZE as usize],
            pending: None,
            in_extras: false,
            in_fragments: false,
            push_batch: (u32::from(buffers) / 4).max(1),
            low_water: u32::from(buffers) / 2,
            scratch: vec![0; PAGE_SIZE],
            stats: Stats::default(),
        }
    }

    /// Writes an rx request for every free buffer that has a free slot.
    pub(super) fn refill<P: SharedPage>(&mut self, pages: &Pages<P>) {
        while self.ring.free_requests() > 0 {
            let Some(buffer) = self.free.pop() else { break };
            let (_, grant) = pages.rx_buffer(buffer);
            let mut bytes = [0u8; RxRequest::<&[u8]>::LEN];
            let mut request = RxRequest::new_unchecked(&mut bytes[..]);
            request.set_id(buffer);
            request.set_gref(grant.0);
            let index = self.ring.write_request(pages.ring(RX_RING_PAGE), &bytes);
            self.slot_buffer[RX_RING.slot(index)] = buffer;
        }
    }

    /// Posts free buffers and pushes them when a batch is ready, the backend runs
    /// low, or `now` (before sleeping).
    pub(super) fn flush<X: Xen>(
        &mut self,
        pages: &Pages<X::Page>,
        link: Link<'_, X>,
        now: bool,
    ) -> Result<(), NetError> {
        self.refill(pages);
        let (unpushed, posted) = (self.ring.unpushed(), self.ring.pushed_in_flight());
        let due = now || unpushed >= self.push_batch || posted < self.low_water;
        if unpushed > 0 && due && self.ring.push_requests(pages.ring(RX_RING_PAGE)) {
            link.notify(&mut self.stats)?;
        }
        Ok(())
    }

    /// The next valid frame, consuming (and recycling) the responses before it.
    pub(super) fn next_frame<P: SharedPage>(&mut self, pages: &Pages<P>) -> Result<Option<Frame>, NetError> {
        if self.pending.is_some() {
            return Ok(self.pending);
        }
        let ring = pages.ring(RX_RING_PAGE);
        let available = self.ring.unconsumed_responses(ring).map_err(corrupt_ring)?;
        let mut bytes = [0u8; RxResponse::<&[u8]>::LEN];
        for _ in 0..available {
            let index = self.ring.read_response(ring, &mut bytes);
            let buffer = core::mem::replace(&mut self.slot_buffer[RX_RING.slot(index)], NO_BUFFER);
            if buffer == NO_BUFFER {
                // Cannot happen: every pushed slot holds a buffer until its response.
                self.stats.bad_responses += 1;
                continue;
            }
            match self.check(&bytes, buffer) {
                Some(frame) => {
                    self.pending = Some(frame);
                    return Ok(self.pending);
                }
                None => self.free.push(buffer),
            }
        }
        Ok(None)
    }

    /// Validates the response (or extra-info slot) found in `buffer`'s slot.
    fn check(&mut self, bytes: &[u8], buffer: u16) -> Option<Frame> {
        if self.in_extras {
            let extra = ExtraInfo::new_unchecked(bytes);
            self.in_extras = extra.flags() & netif::EXTRA_FLAG_MORE != 0;
            return None;
        }
        let response = RxResponse::new_unchecked(bytes);
        if response.id() != buffer {
            self.stats.bad_responses += 1;
            return None;
        }
        let flags = response.flags();
        self.in_extras = flags & rx_flags::EXTRA_INFO != 0;
        let continuing = core::mem::replace(&mut self.in_fragments, flags & rx_flags::MORE_DATA != 0);
        if continuing || self.in_fragments {
            // A multi-slot packet: we did not advertise feature-sg. Count it once.
            if !continuing {
                self.stats.rx_dropped += 1;
            }
            return None;
        }
        let size = response.status();
        if size < 0 {
            self.stats.rx_dropped += 1;
            return None;
        }
        let (offset, len) = (usize::from(response.offset()), size as usize);
        if len == 0 || offset + len > PAGE_SIZE {
            self.stats.bad_responses += 1;
            return None;
        }
        Some(Frame { buffer, offset, len })
    }

    /// Copies the pending frame out, reposts its buffer, then hands the copy to `f`.
    pub(super) fn take<X: Xen, R>(
        &mut self,
        pages: &Pages<X::Page>,
        link: Link<'_, X>,
        f: impl FnOnce(&[u8]) -> R,
    ) -> Option<R> {
        let frame = self.pending.take()?;
        let (page, _) = pages.rx_buffer(frame.buffer);
        page.read(frame.offset, &mut self.scratch[..frame.len]);
        self.free.push(frame.buffer);
        self.stats.rx_packets += 1;
        self.stats.rx_bytes += frame.len as u64;
        // A failed notify means our own port is gone; the next wait reports it.
        let _ = self.flush(pages, link, false);
        Some(f(&self.scratch[..frame.len]))
    }
}
