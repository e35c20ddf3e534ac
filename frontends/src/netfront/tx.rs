//! The transmit side: tx buffers (two per page), the frames in flight and the tx ring.

use alloc::vec;
use alloc::vec::Vec;

use xen_seams::{SharedPage, Xen};

use super::buffers::{Link, Pages, TX_RING_PAGE};
use super::{MAX_FRAME_BYTES, NetError, Stats, corrupt_ring};
use crate::netif::{TX_RING, TxRequest, TxResponse, status};
use crate::ring::FrontRing;

/// The transmit side: free buffers, the frames in flight (by buffer id) and the ring.
pub(super) struct TxQueue {
    pub(super) ring: FrontRing,
    pub(super) free: Vec<u16>,
    /// Bytes of the frame in flight in each buffer; 0 when the buffer is free.
    pub(super) in_flight: Vec<u16>,
    /// A send found no room: [`Netfront::wait`](super::Netfront::wait) reports when there is some again.
    pub(super) blocked: bool,
    /// Where smoltcp builds a frame before it is copied into a buffer.
    pub(super) scratch: Vec<u8>,
    pub(super) stats: Stats,
}

impl TxQueue {
    pub(super) fn new(buffers: u16) -> TxQueue {
        TxQueue {
            ring: FrontRing::new(TX_RING),
            free: (0..buffers).rev().collect(),
            in_flight: vec![0; buffers as usize],
            blocked: false,
            scratch: vec![0; MAX_FRAME_BYTES],
            stats: Stats::default(),
        }
    }

    /// Takes the backend's tx responses, freeing the buffers they name.
    pub(super) fn reclaim<P: SharedPage>(&mut self, pages: &Pages<P>) -> Result<(), NetError> {
        let ring = pages.ring(TX_RING_PAGE);
        let available = self.ring.unconsumed_responses(ring).map_err(corrupt_ring)?;
        let mut bytes = [0u8; TxResponse::<&[u8]>::LEN];
        for _ in 0..available {
            self.ring.read_response(ring, &mut bytes);
            let response = TxResponse::new_unchecked(&bytes[..]);
            let id = response.id();
            let len = match self.in_flight.get(id as usize) {
                Some(&len) if len != 0 => len,
                _ => {
                    self.stats.bad_responses += 1;
                    continue;
                }
            };
            self.in_flight[id as usize] = 0;
            self.free.push(id);
            match response.status() {
                status::OKAY => {
                    self.stats.tx_packets += 1;
                    self.stats.tx_bytes += u64::from(len);
                }
                status::ERROR | status::DROPPED => self.stats.tx_errors += 1,
                _ => self.stats.bad_responses += 1,
            }
        }
        Ok(())
    }

    /// Whether a frame can be queued now, reclaiming completed ones if needed.
    pub(super) fn has_room<P: SharedPage>(&mut self, pages: &Pages<P>) -> Result<bool, NetError> {
        if self.free.is_empty() || self.ring.free_requests() == 0 {
            self.reclaim(pages)?;
        }
        let room = !self.free.is_empty() && self.ring.free_requests() > 0;
        self.blocked = !room;
        Ok(room)
    }

    /// Copies `frame` into a free buffer and writes its request (not yet pushed).
    pub(super) fn queue<P: SharedPage>(&mut self, pages: &Pages<P>, frame: &[u8]) -> Result<(), NetError> {
        if frame.is_empty() || frame.len() > MAX_FRAME_BYTES {
            return Err(NetError::FrameSize { len: frame.len() });
        }
        if !self.has_room(pages)? {
            return Err(NetError::TxFull);
        }
        let Some(id) = self.free.pop() else { return Err(NetError::TxFull) };
        let (page, grant, offset) = pages.tx_buffer(id);
        page.write(offset, frame);
        let mut bytes = [0u8; TxRequest::<&[u8]>::LEN];
        let mut request = TxRequest::new_unchecked(&mut bytes[..]);
        request.set_gref(grant.0);
        request.set_offset(offset as u16);
        request.set_flags(0);
        request.set_id(id);
        request.set_size(frame.len() as u16);
        self.ring.write_request(pages.ring(TX_RING_PAGE), &bytes);
        self.in_flight[id as usize] = frame.len() as u16;
        Ok(())
    }

    /// Pushes queued requests, notifying the backend if it asked.
    pub(super) fn flush<X: Xen>(&mut self, pages: &Pages<X::Page>, link: Link<'_, X>) -> Result<(), NetError> {
        if self.ring.push_requests(pages.ring(TX_RING_PAGE)) {
            link.notify(&mut self.stats)?;
        }
        Ok(())
    }
}
