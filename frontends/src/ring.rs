//! Xen's shared I/O ring (io/ring.h): the request/response ring under blkif and netif.
//!
//! A ring is one or more granted pages that start with `struct *_sring`: four
//! free-running u32 indexes (`req_prod`, `req_event`, `rsp_prod`, `rsp_event`), padding
//! to 64 bytes, then a power-of-two number of entries, each the size of the larger of
//! the request and the response. A ring of several pages is one buffer: an entry may
//! straddle two pages. The frontend produces requests and consumes responses
//! ([`FrontRing`]); the backend the other way round ([`BackRing`], which the simulated
//! backends use).
//!
//! The shared pages are the peer's to write at any time, so nothing here holds a
//! reference into them: entries are copied in and out through [`SharedPage::read`] and
//! [`SharedPage::write`], and each index is one aligned u32 read or written through
//! [`SharedPage::read_u32`] / [`SharedPage::write_u32`] (a single-copy-atomic access,
//! ordered after everything the peer wrote before it, or before it after everything we
//! wrote). The private indexes (`req_prod_pvt`, `rsp_cons`, ...) live in the ring
//! structs, never in the page. The notification rules are ring.h's:
//! `RING_PUSH_*_AND_CHECK_NOTIFY` publishes a producer index and says whether the peer
//! asked to be told (its event index lies in the newly produced range), and
//! `RING_FINAL_CHECK_FOR_*` re-arms our event index before sleeping and looks once
//! more, with a full barrier between the store and the load in both.
//!
//! Indexes from the peer are validated, not trusted: a response producer that claims
//! more responses than requests were pushed is [`TooManyResponses`].

use core::sync::atomic::{Ordering, fence};

use xen_seams::SharedPage;

/// Bytes in a Xen page: the unit of grants, and of a ring's pages.
pub const PAGE_SIZE: usize = 4096;

/// Byte offset of `req_prod` in the ring's first page.
pub const REQ_PROD: usize = 0;
/// Byte offset of `req_event`.
pub const REQ_EVENT: usize = 4;
/// Byte offset of `rsp_prod`.
pub const RSP_PROD: usize = 8;
/// Byte offset of `rsp_event`.
pub const RSP_EVENT: usize = 12;
/// Byte offset of the first entry (`ring[0]`), after the indexes and the padding.
pub const ENTRIES: usize = 64;

/// Entries in a ring of `ring_bytes` whose entries are `entry_bytes` each: as many as
/// fit after the header, rounded down to a power of two (`__CONST_RING_SIZE`); 0 if
/// none fits.
pub const fn size(ring_bytes: usize, entry_bytes: usize) -> u32 {
    let fit = ring_bytes.saturating_sub(ENTRIES) / entry_bytes;
    if fit == 0 { 0 } else { 1 << (usize::BITS - 1 - fit.leading_zeros()) }
}

/// Whether the peer must be notified after a producer index moved from `old` to
/// `new` while the peer asked to be told at `event`: true if `event` lies in
/// `(old, new]`, counting across the wrap.
const fn needs_notify(old: u32, new: u32, event: u32) -> bool {
    new.wrapping_sub(event) < new.wrapping_sub(old)
}

/// `SHARED_RING_INIT`: both producers 0, both event indexes 1 (the peer is told of
/// the first request or response).
pub fn init_shared<Q: SharedPage>(pages: &[Q]) {
    pages[0].write_u32(REQ_PROD, 0);
    pages[0].write_u32(RSP_PROD, 0);
    pages[0].write_u32(REQ_EVENT, 1);
    pages[0].write_u32(RSP_EVENT, 1);
}

/// Where a ring's entries are: how many, and how large.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    size: u32,
    entry_bytes: usize,
}

impl Geometry {
    /// The ring of `nr_pages` pages whose entries are `entry_bytes` each. Panics if
    /// not even one entry fits (a constant of the protocol, never the peer's).
    pub const fn new(nr_pages: usize, entry_bytes: usize) -> Geometry {
        let size = size(nr_pages * PAGE_SIZE, entry_bytes);
        assert!(size > 0, "a ring holds at least one entry");
        Geometry { size, entry_bytes }
    }

    /// Entries in the ring (a power of two).
    pub const fn size(self) -> u32 {
        self.size
    }

    /// The entry a free-running index names: 0..size.
    pub const fn slot(self, index: u32) -> usize {
        (index & (self.size - 1)) as usize
    }

    /// Byte offset, from the start of the first page, of the entry `index` names.
    pub const fn entry_offset(self, index: u32) -> usize {
        ENTRIES + self.slot(index) * self.entry_bytes
    }

    /// Copies entry `index` (its first `out.len()` bytes) out of the ring's pages.
    pub fn read_entry<Q: SharedPage>(self, pages: &[Q], index: u32, out: &mut [u8]) {
        debug_assert!(out.len() <= self.entry_bytes, "an entry is {} bytes", self.entry_bytes);
        let start = self.entry_offset(index);
        let mut done = 0;
        while done < out.len() {
            let at = start + done;
            let len = (PAGE_SIZE - at % PAGE_SIZE).min(out.len() - done);
            pages[at / PAGE_SIZE].read(at % PAGE_SIZE, &mut out[done..done + len]);
            done += len;
        }
    }

    /// Copies `data` into entry `index` (its first `data.len()` bytes).
    pub fn write_entry<Q: SharedPage>(self, pages: &[Q], index: u32, data: &[u8]) {
        debug_assert!(data.len() <= self.entry_bytes, "an entry is {} bytes", self.entry_bytes);
        let start = self.entry_offset(index);
        let mut done = 0;
        while done < data.len() {
            let at = start + done;
            let len = (PAGE_SIZE - at % PAGE_SIZE).min(data.len() - done);
            pages[at / PAGE_SIZE].write(at % PAGE_SIZE, &data[done..done + len]);
            done += len;
        }
    }
}

/// The response producer claims more responses than there are requests outstanding:
/// the backend corrupted the ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("rsp_prod {rsp_prod} claims {} responses, only {outstanding} requests are outstanding", rsp_prod.wrapping_sub(*rsp_cons))]
pub struct TooManyResponses {
    pub rsp_prod: u32,
    pub rsp_cons: u32,
    pub outstanding: u32,
}

/// The frontend's end of a ring (`struct *_front_ring`): writes requests, publishes
/// them, consumes the backend's responses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrontRing {
    geometry: Geometry,
    /// The next request's index (`req_prod_pvt`).
    req_prod_pvt: u32,
    /// The `req_prod` last published.
    req_prod_pushed: u32,
    /// The next response's index (`rsp_cons`).
    rsp_cons: u32,
}

impl FrontRing {
    /// `FRONT_RING_INIT`: nothing written, published or consumed yet.
    pub const fn new(geometry: Geometry) -> FrontRing {
        FrontRing { geometry, req_prod_pvt: 0, req_prod_pushed: 0, rsp_cons: 0 }
    }

    /// Entries in the ring.
    pub const fn size(&self) -> u32 {
        self.geometry.size
    }

    /// Requests written whose responses have not been consumed.
    pub const fn in_flight(&self) -> u32 {
        self.req_prod_pvt.wrapping_sub(self.rsp_cons)
    }

    /// Requests published whose responses have not been consumed.
    pub const fn pushed_in_flight(&self) -> u32 {
        self.req_prod_pushed.wrapping_sub(self.rsp_cons)
    }

    /// Requests written since the last push.
    pub const fn unpushed(&self) -> u32 {
        self.req_prod_pvt.wrapping_sub(self.req_prod_pushed)
    }

    /// Entries free for requests (`RING_FREE_REQUESTS`).
    pub const fn free_requests(&self) -> u32 {
        self.geometry.size - self.in_flight()
    }

    /// Copies `request` into the next entry and returns its index; the backend sees
    /// it at the next [`push_requests`](Self::push_requests). Panics if the ring is
    /// full (the caller checks [`free_requests`](Self::free_requests) first).
    pub fn write_request<Q: SharedPage>(&mut self, pages: &[Q], request: &[u8]) -> u32 {
        assert!(self.free_requests() > 0, "a request on a full ring");
        let index = self.req_prod_pvt;
        self.geometry.write_entry(pages, index, request);
        self.req_prod_pvt = index.wrapping_add(1);
        index
    }

    /// Publishes the requests written so far and says whether the backend must be
    /// notified (`RING_PUSH_REQUESTS_AND_CHECK_NOTIFY`).
    pub fn push_requests<Q: SharedPage>(&mut self, pages: &[Q]) -> bool {
        let (old, new) = (self.req_prod_pushed, self.req_prod_pvt);
        if old == new {
            return false;
        }
        pages[0].write_u32(REQ_PROD, new);
        self.req_prod_pushed = new;
        // The backend must see req_prod before we read req_event (ring.h's xen_mb).
        fence(Ordering::SeqCst);
        needs_notify(old, new, pages[0].read_u32(REQ_EVENT))
    }

    /// Responses the backend produced that we have not consumed
    /// (`RING_HAS_UNCONSUMED_RESPONSES`), refused if it claims more than the requests
    /// we published.
    pub fn unconsumed_responses<Q: SharedPage>(&self, pages: &[Q]) -> Result<u32, TooManyResponses> {
        let rsp_prod = pages[0].read_u32(RSP_PROD);
        let outstanding = self.pushed_in_flight();
        match rsp_prod.wrapping_sub(self.rsp_cons) {
            available if available <= outstanding => Ok(available),
            _ => Err(TooManyResponses { rsp_prod, rsp_cons: self.rsp_cons, outstanding }),
        }
    }

    /// Copies the next response out (its first `out.len()` bytes), consumes it and
    /// returns its index. Call it only for responses
    /// [`unconsumed_responses`](Self::unconsumed_responses) counted.
    pub fn read_response<Q: SharedPage>(&mut self, pages: &[Q], out: &mut [u8]) -> u32 {
        let index = self.rsp_cons;
        self.geometry.read_entry(pages, index, out);
        self.rsp_cons = index.wrapping_add(1);
        index
    }

    /// Before sleeping: asks to be notified at the next response and looks once more
    /// (`RING_FINAL_CHECK_FOR_RESPONSES`); true if a response is already there.
    pub fn final_check_for_responses<Q: SharedPage>(&self, pages: &[Q]) -> Result<bool, TooManyResponses> {
        if self.unconsumed_responses(pages)? > 0 {
            return Ok(true);
        }
        pages[0].write_u32(RSP_EVENT, self.rsp_cons.wrapping_add(1));
        // The backend must see rsp_event before we look at rsp_prod again.
        fence(Ordering::SeqCst);
        Ok(self.unconsumed_responses(pages)? > 0)
    }
}

/// The backend's end of a ring (`struct *_back_ring`): consumes requests, writes and
/// publishes responses. Only the simulated backends of the host tests use it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackRing {
    geometry: Geometry,
    /// The next response's index (`rsp_prod_pvt`).
    rsp_prod_pvt: u32,
    /// The next request's index (`req_cons`).
    req_cons: u32,
}

impl BackRing {
    /// `BACK_RING_INIT`: nothing consumed or answered yet.
    pub const fn new(geometry: Geometry) -> BackRing {
        BackRing { geometry, rsp_prod_pvt: 0, req_cons: 0 }
    }

    /// The index of the next response to write.
    pub const fn rsp_prod_pvt(&self) -> u32 {
        self.rsp_prod_pvt
    }

    /// The frontend's `req_prod`, as it is in the page.
    pub fn requests_produced<Q: SharedPage>(&self, pages: &[Q]) -> u32 {
        pages[0].read_u32(REQ_PROD)
    }

    /// Requests to consume (`RING_HAS_UNCONSUMED_REQUESTS`): those produced, but no
    /// more than there are entries for their responses.
    pub fn unconsumed_requests<Q: SharedPage>(&self, pages: &[Q]) -> u32 {
        let produced = self.requests_produced(pages).wrapping_sub(self.req_cons);
        let room = self.geometry.size.wrapping_sub(self.req_cons.wrapping_sub(self.rsp_prod_pvt));
        produced.min(room)
    }

    /// Copies the next request out (its first `out.len()` bytes), consumes it and
    /// returns its index.
    pub fn read_request<Q: SharedPage>(&mut self, pages: &[Q], out: &mut [u8]) -> u32 {
        let index = self.req_cons;
        self.geometry.read_entry(pages, index, out);
        self.req_cons = index.wrapping_add(1);
        index
    }

    /// Copies `response` into the next response entry and returns its index; the
    /// frontend sees it at the next [`push_responses`](Self::push_responses).
    pub fn write_response<Q: SharedPage>(&mut self, pages: &[Q], response: &[u8]) -> u32 {
        let index = self.rsp_prod_pvt;
        self.geometry.write_entry(pages, index, response);
        self.rsp_prod_pvt = index.wrapping_add(1);
        index
    }

    /// Publishes the responses written so far and says whether the frontend must be
    /// notified (`RING_PUSH_RESPONSES_AND_CHECK_NOTIFY`).
    pub fn push_responses<Q: SharedPage>(&mut self, pages: &[Q]) -> bool {
        let (old, new) = (pages[0].read_u32(RSP_PROD), self.rsp_prod_pvt);
        pages[0].write_u32(RSP_PROD, new);
        // The frontend must see rsp_prod before we read rsp_event (ring.h's xen_mb).
        fence(Ordering::SeqCst);
        needs_notify(old, new, pages[0].read_u32(RSP_EVENT))
    }

    /// Before sleeping: asks to be notified at the next request and looks once more
    /// (`RING_FINAL_CHECK_FOR_REQUESTS`); true if a request is already there.
    pub fn final_check_for_requests<Q: SharedPage>(&self, pages: &[Q]) -> bool {
        if self.unconsumed_requests(pages) > 0 {
            return true;
        }
        pages[0].write_u32(REQ_EVENT, self.req_cons.wrapping_add(1));
        // The frontend must see req_event before we look at req_prod again.
        fence(Ordering::SeqCst);
        self.unconsumed_requests(pages) > 0
    }

    /// A misbehaving backend, for tests: moves the response producer over `count`
    /// entries it never wrote, so that the next push claims them.
    #[cfg(any(test, feature = "sim"))]
    pub fn claim_unwritten_responses(&mut self, count: u32) {
        self.rsp_prod_pvt = self.rsp_prod_pvt.wrapping_add(count);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;
    use xen_seams::sim::{MappedPage, SimPage, World};
    use xen_seams::{Grants, Memory};

    const FRONT: u16 = 5;
    const BACK: u16 = 0;
    /// `sizeof(union blkif_sring_entry)` and `sizeof(struct blkif_response)`.
    const BLK_ENTRY: usize = 112;
    const BLK_RESPONSE: usize = 16;

    /// A ring of `nr_pages` pages: the frontend's pages and the backend's mappings of them.
    fn shared_pages(world: &World, nr_pages: usize) -> (Vec<SimPage>, Vec<MappedPage>) {
        let (front, back) = (world.domain(FRONT), world.domain(BACK));
        let pages: Vec<SimPage> = (0..nr_pages).map(|_| front.alloc_page().unwrap()).collect();
        let grants = pages.iter().map(|page| front.grant(BACK, page.frame(), false).unwrap());
        let mapped = grants.map(|grant| back.map_grant(FRONT, grant, true).unwrap()).collect();
        init_shared(&pages);
        (pages, mapped)
    }

    /// A request as bytes: its index in every byte but the first four, which say `tag`.
    fn entry(tag: u32, len: usize) -> Vec<u8> {
        let mut bytes: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(31) ^ tag as u8).collect();
        bytes[..4].copy_from_slice(&tag.to_le_bytes());
        bytes
    }

    #[test]
    fn sizes_and_offsets_follow_ring_h() {
        let blk = [1, 2, 4, 8, 16].map(|pages| Geometry::new(pages, BLK_ENTRY).size());
        assert_eq!(blk, [32, 64, 128, 256, 512], "__CONST_RING_SIZE(blkif, pages * 4096)");
        assert_eq!([12, 8, 64].map(|entry| size(PAGE_SIZE, entry)), [256, 256, 32]);
        assert_eq!((size(PAGE_SIZE, PAGE_SIZE), size(0, 8)), (0, 0), "no entry fits");
        let one = Geometry::new(1, BLK_ENTRY);
        assert_eq!((one.entry_offset(0), one.entry_offset(33), one.slot(33)), (64, 64 + 112, 1), "indexes run free");
        let four = Geometry::new(4, BLK_ENTRY);
        assert_eq!(four.entry_offset(72), 8128, "entry 72 of a 4-page ring straddles pages 1 and 2");
        let tx = Geometry::new(1, 12);
        assert_eq!(tx.entry_offset(255) + 12, 64 + 256 * 12);
        assert_eq!(tx.entry_offset(u32::MAX), tx.entry_offset(255));
    }

    #[test]
    fn notify_is_needed_only_when_the_event_index_was_crossed() {
        assert!(needs_notify(0, 1, 1), "fresh ring: the event index is 1");
        assert!(needs_notify(0, 5, 3));
        assert!(!needs_notify(5, 9, 3), "the peer is still busy before 3");
        assert!(!needs_notify(5, 9, 10), "the peer wants to hear at 10");
        assert!(needs_notify(u32::MAX - 1, 2, 0), "across the wrap");
        assert!(!needs_notify(7, 7, 7), "nothing new");
    }

    #[test]
    fn requests_and_responses_cross_a_four_page_ring_and_straddle_its_pages() {
        let world = World::new();
        let (pages, mapped) = shared_pages(&world, 4);
        let geometry = Geometry::new(4, BLK_ENTRY);
        let (mut front, mut back) = (FrontRing::new(geometry), BackRing::new(geometry));
        let mut seen = Vec::new();
        // Three rounds of 100 requests: indexes 0..300 wrap the 128 entries twice.
        for round in 0..3u32 {
            for tag in round * 100..round * 100 + 100 {
                if front.free_requests() == 0 {
                    break;
                }
                front.write_request(&pages, &entry(tag, BLK_ENTRY));
            }
            assert_eq!(back.unconsumed_requests(&mapped), 0, "nothing is visible before the push");
            front.push_requests(&pages);
            while back.unconsumed_requests(&mapped) > 0 {
                let mut request = [0u8; BLK_ENTRY];
                back.read_request(&mapped, &mut request);
                let tag = u32::from_le_bytes([request[0], request[1], request[2], request[3]]);
                assert_eq!(request[..], entry(tag, BLK_ENTRY)[..], "entry {tag} arrives whole");
                back.write_response(&mapped, &entry(tag, BLK_RESPONSE));
            }
            back.push_responses(&mapped);
            let available = front.unconsumed_responses(&pages).unwrap();
            for _ in 0..available {
                let mut response = [0u8; BLK_RESPONSE];
                front.read_response(&pages, &mut response);
                seen.push(u32::from_le_bytes([response[0], response[1], response[2], response[3]]));
            }
            assert_eq!(front.in_flight(), 0);
        }
        assert_eq!(seen, (0..300).collect::<Vec<u32>>(), "in order, every entry across page boundaries");
    }

    #[test]
    fn the_peer_is_notified_only_when_it_asked() {
        let world = World::new();
        let (pages, mapped) = shared_pages(&world, 1);
        let geometry = Geometry::new(1, 12);
        let (mut front, mut back) = (FrontRing::new(geometry), BackRing::new(geometry));
        front.write_request(&pages, &entry(0, 12));
        assert!(front.push_requests(&pages), "a fresh ring asks for the first request");
        front.write_request(&pages, &entry(1, 12));
        assert!(!front.push_requests(&pages), "the backend has not re-armed req_event");
        assert!(!front.push_requests(&pages), "nothing new to push");
        assert!(back.final_check_for_requests(&mapped), "two requests wait");
        let mut request = [0u8; 12];
        back.read_request(&mapped, &mut request);
        back.read_request(&mapped, &mut request);
        assert!(!back.final_check_for_requests(&mapped), "drained: re-armed at req_cons + 1");
        front.write_request(&pages, &entry(2, 12));
        assert!(front.push_requests(&pages), "the backend sleeps and asked to hear of request 2");

        assert_eq!(front.final_check_for_responses(&pages), Ok(false), "armed at the first response");
        back.write_response(&mapped, &entry(0, 4));
        assert!(back.push_responses(&mapped));
        back.write_response(&mapped, &entry(1, 4));
        assert!(!back.push_responses(&mapped), "the frontend has not consumed yet");
        assert_eq!(front.final_check_for_responses(&pages), Ok(true));
    }

    #[test]
    fn free_running_indexes_wrap_past_u32_max() {
        let world = World::new();
        let (pages, mapped) = shared_pages(&world, 1);
        let geometry = Geometry::new(1, 8);
        let start = u32::MAX - 3;
        let mut front = FrontRing { geometry, req_prod_pvt: start, req_prod_pushed: start, rsp_cons: start };
        let mut back = BackRing { geometry, rsp_prod_pvt: start, req_cons: start };
        for offset in [REQ_PROD, RSP_PROD] {
            pages[0].write_u32(offset, start);
        }
        for tag in 0..8 {
            front.write_request(&pages, &entry(tag, 8));
        }
        front.push_requests(&pages);
        assert_eq!(back.unconsumed_requests(&mapped), 8);
        for _ in 0..8 {
            let mut request = [0u8; 8];
            back.read_request(&mapped, &mut request);
            back.write_response(&mapped, &request);
        }
        back.push_responses(&mapped);
        assert_eq!(front.unconsumed_responses(&pages), Ok(8));
        let mut tags = Vec::new();
        for _ in 0..8 {
            let mut response = [0u8; 8];
            front.read_response(&pages, &mut response);
            tags.push(response[0]);
        }
        assert_eq!(tags, [0, 1, 2, 3, 4, 5, 6, 7]);
        assert_eq!((front.in_flight(), pages[0].read_u32(RSP_PROD)), (0, 4));
    }

    #[test]
    fn a_response_producer_past_the_requests_is_refused() {
        let world = World::new();
        let (pages, mapped) = shared_pages(&world, 1);
        let geometry = Geometry::new(1, 8);
        let (mut front, mut back) = (FrontRing::new(geometry), BackRing::new(geometry));
        for tag in 0..4 {
            front.write_request(&pages, &entry(tag, 8));
        }
        front.push_requests(&pages);
        front.write_request(&pages, &entry(4, 8)); // written, not pushed: cannot be answered
        back.write_response(&mapped, &[0; 8]);
        back.claim_unwritten_responses(4);
        back.push_responses(&mapped);
        let corrupt = TooManyResponses { rsp_prod: 5, rsp_cons: 0, outstanding: 4 };
        assert_eq!(front.unconsumed_responses(&pages), Err(corrupt));
        assert_eq!(front.final_check_for_responses(&pages), Err(corrupt));
        assert_eq!(
            alloc::string::ToString::to_string(&corrupt),
            "rsp_prod 5 claims 5 responses, only 4 requests are outstanding"
        );
    }
}
