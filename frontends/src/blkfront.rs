//! blkfront: the stub domain's PV disks (`device/vbd/<devid>`), spoken over Xen's
//! blkif shared ring.
//!
//! A disk reads as one story, top to bottom:
//!
//! ```text
//! let disk = Disk::connect(xen, 768, Options::default()).await?;   // handshake
//! disk.read(sector, &mut buf).await?;                               // any length
//! disk.write(sector, &buf).await?;   disk.flush().await?;   disk.discard(s, n).await?;
//! ... concurrently: let why = disk.watch_backend().await;            // xl block-detach
//! disk.close().await?;                                              // Closing -> Closed, grants ended
//! ```
//!
//! **Handshake.** [`Disk::connect`] waits for the backend's InitWait, reads
//! `max-ring-page-order` (or the older `max-ring-pages`), grants a ring of
//! 2^order pages and offers an event channel, publishes `ring-ref` (or
//! `ring-page-order` + `ring-ref0..N`), `event-channel`, `protocol` = x86_64-abi and
//! `feature-persistent` in one transaction with state Initialised, waits for
//! Connected, reads the geometry (`sectors`, `sector-size`, `physical-sector-size`,
//! `info`, `mode`) and the features the backend publishes on connecting
//! (`feature-persistent`, `feature-max-indirect-segments`, `feature-flush-cache`,
//! `feature-barrier`, `feature-discard` with `discard-granularity`/`-alignment`/
//! `-secure`), then switches to Connected. Like Linux we never write
//! `feature-large-sector-size`, so every sector number here, and the backend's
//! `sectors`, is in 512-byte units (that is what blkback publishes).
//!
//! **I/O.** The caller's bytes are copied through pages of ours (the seams share
//! memory only as whole pages): a read or write of any length is cut into requests
//! of at most 11 segments, or into indirect requests of up to the negotiated
//! `feature-max-indirect-segments`; as many as the ring and the page budget allow
//! go out before one notify (ring.h's `RING_PUSH_REQUESTS_AND_CHECK_NOTIFY`).
//! With persistent grants the pages come from a pool granted once and reused
//! (LIFO); without, each request grants its pages and ends them once answered, and
//! a page the backend still maps waits aside (its grant retried) instead of being
//! dropped. Responses are matched by id (a ring slot); a response naming no
//! request in flight, a duplicate, an unknown operation or status, or more
//! responses than requests marks the disk broken with [`ProtocolError`]: every
//! request in flight and every later one fails with it.
//!
//! **Who reads the ring.** No background task is needed. Whichever waiting future
//! (an I/O call or [`Disk::watch_backend`]) finds no leader becomes the leader: it
//! alone waits on the event channel and the backend's `state` watch (the kernel keeps
//! one waker per port), consumes responses (`RING_FINAL_CHECK_FOR_RESPONSES`), and
//! wakes the others; when it finishes, another waiter takes over.
//!
//! **Backend loss.** When the backend's `state` goes to Closing or Closed, or the
//! node vanishes, the disk fails with [`Error::BackendGone`]: requests in flight end
//! at once with that error, and later calls fail fast. [`Disk::watch_backend`]
//! completes then; [`Disk::failure`] says the same without waiting. Every wait is
//! bounded: a request with no progress for [`Options::request_timeout`] fails with
//! [`Error::Timeout`]. [`Disk::close`] says Closing, waits (bounded) for the backend,
//! says Closed, and ends every grant, retrying those still mapped for
//! [`Options::release_timeout`]; a page the backend will not let go is leaked on
//! purpose (never freed while granted) and reported.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::cell::{Cell, RefCell};
use core::future::poll_fn;
use core::pin::pin;
use core::sync::atomic::{Ordering, fence};
use core::task::{Poll, Waker};
use core::time::Duration;

use xen_seams::{DomId, GrantRef, Grants, Port, SharedPage, Xen, XenstoreError, XenstoreWatch};

use crate::blkif::{
    self, MAX_SEGMENTS_PER_REQUEST, Operation, PAGE_SIZE, REQUEST_LEN, RESPONSE_LEN, RING_REQ_EVENT, RING_REQ_PROD,
    RING_RSP_EVENT, RING_RSP_PROD, RequestRepr, Response, ResponseRepr, SECTOR_SIZE, Segment, Status, WireError,
};
use crate::xenbus::{self, Device, State};

/// How often [`Disk::close`] retries grants the backend still maps.
const RELEASE_POLL: Duration = Duration::from_millis(10);
/// How often a request short of pages retries grants the backend still maps.
const STALE_POLL: Duration = Duration::from_millis(1);
/// Segment descriptors written to an indirect page at a time.
const SEGMENT_BATCH: usize = 64;

/// What the frontend asks for; the backend's offers cap each.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// The largest ring to use, as log2(pages) (0: one page, 32 requests in flight).
    pub max_ring_page_order: u32,
    /// Offer persistent grants (used if the backend offers them too).
    pub persistent_grants: bool,
    /// Segments per indirect request at most; 11 or less disables indirect requests.
    pub max_indirect_segments: u32,
    /// Data and indirect pages the disk may hold (allocated as needed, kept for
    /// reuse): bounds memory and the data in flight (256 pages = 1 MiB).
    pub max_data_pages: usize,
    /// A request with no progress for this long fails with [`Error::Timeout`].
    pub request_timeout: Duration,
    /// How long [`Disk::close`] waits for the backend to unmap our pages.
    pub release_timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            max_ring_page_order: 0,
            persistent_grants: true,
            max_indirect_segments: 32,
            max_data_pages: 256,
            request_timeout: Duration::from_secs(30),
            release_timeout: Duration::from_secs(10),
        }
    }
}

/// The disk's geometry and flags, as the backend published them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DiskInfo {
    /// Size in 512-byte sectors.
    pub sectors: u64,
    /// Logical block size in bytes: I/O must be aligned to it.
    pub sector_size: u32,
    pub physical_sector_size: u32,
    /// The raw `info` bits (`VDISK_*`).
    pub info: u32,
    /// `VDISK_READONLY`, or `mode` = "r".
    pub read_only: bool,
    pub cdrom: bool,
    pub removable: bool,
}

impl DiskInfo {
    pub fn capacity_bytes(&self) -> u64 {
        self.sectors.saturating_mul(SECTOR_SIZE as u64)
    }
}

/// How [`Disk::flush`] reaches stable storage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flush {
    /// No `feature-flush-cache` nor `feature-barrier`: the backend writes through,
    /// flush has nothing to do.
    NotNeeded,
    /// `BLKIF_OP_FLUSH_DISKCACHE`.
    Cache,
    /// `BLKIF_OP_WRITE_BARRIER` without segments (an older backend).
    Barrier,
    /// The backend answered a flush with EOPNOTSUPP: flushes fail from then on.
    Refused,
}

/// Discard as the backend offers it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Discard {
    pub granularity_bytes: u32,
    pub alignment_bytes: u32,
    pub secure: bool,
}

/// What was negotiated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Features {
    pub ring_pages: u32,
    /// Requests in flight at most.
    pub ring_size: u32,
    pub persistent_grants: bool,
    /// Segments per request: 11, or the indirect limit.
    pub max_segments: u32,
    /// Whether requests above 11 segments go out as indirect requests.
    pub indirect: bool,
    pub flush: Flush,
    pub discard: Option<Discard>,
}

/// Counters for tests and tuning.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Requests put on the ring.
    pub requests: u64,
    /// Notifications sent to the backend (fewer than requests when batched).
    pub notifications: u64,
    /// Requests whose response has not been consumed.
    pub in_flight: usize,
    /// Data and indirect pages allocated.
    pub pages: usize,
    /// Pages whose grant the backend still maps after answering.
    pub stale_grants: usize,
}

/// Why the backend's responses cannot be trusted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// A response id we never gave out.
    #[error("response with unknown id {id}")]
    UnknownId { id: u64 },
    /// A response for a request not in flight (a duplicate, or a stale id).
    #[error("response for request {id}, which is not in flight")]
    NotInFlight { id: u64 },
    /// A response whose operation is not the request's.
    #[error("response {id} has operation {got}, the request was {expected}")]
    WrongOperation { id: u64, expected: u8, got: u8 },
    /// A response with an unknown operation or status code.
    #[error("response {id}: {why}")]
    Malformed { id: u64, why: WireError },
    /// The response producer index runs past the requests we made.
    #[error("rsp_prod {rsp_prod} claims {} responses, only {outstanding} requests are outstanding", rsp_prod.wrapping_sub(*rsp_cons))]
    TooManyResponses { rsp_prod: u32, rsp_cons: u32, outstanding: u32 },
}

/// Why a disk operation failed.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum Error {
    /// The xenbus handshake or a xenstore operation failed.
    #[error("blkfront: {0}")]
    Xenbus(xenbus::Error),
    /// The backend published a value we cannot use.
    #[error("blkfront: backend's {key}: {why}")]
    BadBackend { key: &'static str, why: &'static str },
    /// Xen refused a page, grant or event channel operation.
    #[error("blkfront: {0}")]
    Xen(xen_seams::Error),
    /// A write or discard to a read-only disk.
    #[error("blkfront: the disk is read-only")]
    ReadOnly,
    /// The backend does not offer (or refused) the operation.
    #[error("blkfront: the backend does not support {0}")]
    NotSupported(Operation),
    /// The length or start is not a whole number of logical blocks.
    #[error("blkfront: {len_bytes} bytes at sector {sector} are not whole {sector_size}-byte blocks")]
    Misaligned { sector: u64, len_bytes: usize, sector_size: u32 },
    /// The range leaves the disk.
    #[error("blkfront: sectors {sector}+{nr_sectors} leave the disk ({capacity_sectors} sectors)")]
    OutOfRange { sector: u64, nr_sectors: u64, capacity_sectors: u64 },
    /// The backend answered BLKIF_RSP_ERROR (the request starting at `sector`).
    #[error("blkfront: {operation} at sector {sector} failed")]
    Io { operation: Operation, sector: u64 },
    /// The backend went to Closing/Closed, or its node vanished.
    #[error("blkfront: backend {}", xenbus::Departure(*state))]
    BackendGone { state: Option<State> },
    /// The backend broke the ring protocol; the disk is unusable.
    #[error("blkfront: backend broke the protocol: {0}")]
    Protocol(ProtocolError),
    /// No response for this long.
    #[error("blkfront: no response in {waited:?}")]
    Timeout { waited: Duration },
    /// The disk was closed.
    #[error("blkfront: disk closed")]
    Closed,
    /// Pages the backend never unmapped: leaked (not freed) so it cannot see reuse.
    #[error("blkfront: the backend still maps {count} pages; leaked rather than reused")]
    GrantsLeaked { count: usize },
}

impl From<xenbus::Error> for Error {
    fn from(e: xenbus::Error) -> Self {
        match e {
            xenbus::Error::BackendGone { state } => Error::BackendGone { state },
            other => Error::Xenbus(other),
        }
    }
}

impl From<XenstoreError> for Error {
    fn from(e: XenstoreError) -> Self {
        Error::Xenbus(xenbus::Error::Xenstore(e))
    }
}

/// One of our pages and its grant to the backend, if granted.
struct Buffer<P> {
    page: P,
    grant: Option<GrantRef>,
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

/// Copies bytes out of a run of pages viewed as one buffer (a multi-page ring).
pub(crate) fn read_across<Q: SharedPage>(pages: &[Q], offset: usize, out: &mut [u8]) {
    let mut done = 0;
    while done < out.len() {
        let at = offset + done;
        let len = (PAGE_SIZE - at % PAGE_SIZE).min(out.len() - done);
        pages[at / PAGE_SIZE].read(at % PAGE_SIZE, &mut out[done..done + len]);
        done += len;
    }
}

/// Copies bytes into a run of pages viewed as one buffer.
pub(crate) fn write_across<Q: SharedPage>(pages: &[Q], offset: usize, data: &[u8]) {
    let mut done = 0;
    while done < data.len() {
        let at = offset + done;
        let len = (PAGE_SIZE - at % PAGE_SIZE).min(data.len() - done);
        pages[at / PAGE_SIZE].write(at % PAGE_SIZE, &data[done..done + len]);
        done += len;
    }
}

/// Ends `buffer`'s grant if it has one; false while the backend still maps it.
fn try_end<G: Grants, P>(xen: &G, buffer: &mut Buffer<P>) -> bool {
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

/// A ring slot's request, from submission until its owner takes the result.
#[derive(Debug)]
enum SlotState {
    Free,
    InFlight,
    /// In flight, but its caller is gone: recycled when the response comes.
    Orphaned,
    Done(Result<(), Error>),
}

struct Slot<P> {
    state: SlotState,
    /// Bumped each time the slot is freed; the high half of the request id, so a
    /// late duplicate of an earlier response cannot complete the slot's next request.
    generation: u32,
    /// The call that submitted it (0: none).
    owner: u64,
    /// The operation the response must echo.
    operation: Operation,
    sector: u64,
    /// Where in the caller's buffer the request's bytes go.
    buf_offset: usize,
    len_bytes: usize,
    pages: Vec<Buffer<P>>,
    indirect: Vec<Buffer<P>>,
}

/// One request to put on the ring.
enum Submission<'b> {
    Data { operation: Operation, sector: u64, buf_offset: usize, len_bytes: usize, write: Option<&'b [u8]> },
    Flush(Operation),
    Discard { sector: u64, nr_sectors: u64 },
}

impl Submission<'_> {
    /// Data and indirect pages the request needs.
    fn pages(&self) -> usize {
        match self {
            Submission::Data { len_bytes, .. } => pages_for(*len_bytes),
            _ => 0,
        }
    }
}

fn pages_for(len_bytes: usize) -> usize {
    let data = len_bytes.div_ceil(PAGE_SIZE);
    data + if data > MAX_SEGMENTS_PER_REQUEST { blkif::indirect_pages(data) } else { 0 }
}

/// A caller's whole operation, cut into [`Submission`]s.
enum Job<'b> {
    Read { sector: u64, buf: &'b mut [u8] },
    Write { sector: u64, buf: &'b [u8] },
    Flush(Operation),
    Discard { sector: u64, nr_sectors: u64 },
}

impl Job<'_> {
    fn pieces(&self, chunk_bytes: usize) -> usize {
        match self {
            Job::Read { buf, .. } => buf.len().div_ceil(chunk_bytes),
            Job::Write { buf, .. } => buf.len().div_ceil(chunk_bytes),
            Job::Flush(_) | Job::Discard { .. } => 1,
        }
    }

    fn piece(&self, index: usize, chunk_bytes: usize) -> Submission<'_> {
        let data = |operation, sector: u64, len: usize, write| {
            let buf_offset = index * chunk_bytes;
            let len_bytes = chunk_bytes.min(len - buf_offset);
            let sector = sector + (buf_offset / SECTOR_SIZE) as u64;
            Submission::Data { operation, sector, buf_offset, len_bytes, write }
        };
        match self {
            Job::Read { sector, buf } => data(Operation::Read, *sector, buf.len(), None),
            Job::Write { sector, buf } => {
                let start = index * chunk_bytes;
                let end = buf.len().min(start + chunk_bytes);
                data(Operation::Write, *sector, buf.len(), Some(&buf[start..end]))
            }
            Job::Flush(operation) => Submission::Flush(*operation),
            Job::Discard { sector, nr_sectors } => Submission::Discard { sector: *sector, nr_sectors: *nr_sectors },
        }
    }

    fn read_buffer(&mut self) -> Option<&mut [u8]> {
        match self {
            Job::Read { buf, .. } => Some(buf),
            _ => None,
        }
    }
}

/// Everything that changes while the disk runs.
struct Inner<X: Xen> {
    backend_id: DomId,
    persistent: bool,
    /// Data and indirect pages we may allocate.
    budget: usize,
    ring: Vec<Buffer<X::Page>>,
    ring_size: u32,
    req_prod_pvt: u32,
    req_prod_pushed: u32,
    rsp_cons: u32,
    slots: Vec<Slot<X::Page>>,
    free_ids: Vec<usize>,
    /// Idle pages (granted for good with persistent grants, ungranted otherwise).
    pool: Vec<Buffer<X::Page>>,
    /// Pages whose per-request grant the backend still maps.
    stale: Vec<Buffer<X::Page>>,
    /// Every page, once the disk is closing: ended and freed as the backend lets go.
    retired: Vec<Buffer<X::Page>>,
    allocated: usize,
    failure: Option<Error>,
    /// A waiter is reading the ring and the backend watch.
    leader: bool,
    waiters: Vec<Waker>,
    next_token: u64,
    flush: Flush,
    discard: Option<Discard>,
    stats: Stats,
}

impl<X: Xen> Inner<X> {
    fn new(backend_id: DomId) -> Self {
        Inner {
            backend_id,
            persistent: false,
            budget: 0,
            ring: Vec::new(),
            ring_size: 0,
            req_prod_pvt: 0,
            req_prod_pushed: 0,
            rsp_cons: 0,
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
    fn set_up(&mut self, persistent: bool, budget: usize, max_segments: usize) {
        self.persistent = persistent;
        self.budget = budget;
        let indirect = if max_segments > MAX_SEGMENTS_PER_REQUEST { blkif::indirect_pages(max_segments) } else { 0 };
        self.slots = (0..self.ring_size)
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
        self.free_ids = (0..self.ring_size as usize).rev().collect();
        self.pool = Vec::with_capacity(budget);
        self.stale = Vec::with_capacity(budget);
        self.waiters = Vec::with_capacity(8);
    }

    fn new_token(&mut self) -> u64 {
        let token = self.next_token;
        self.next_token += 1;
        token
    }

    fn register(&mut self, waker: &Waker) {
        if !self.waiters.iter().any(|w| w.will_wake(waker)) {
            self.waiters.push(waker.clone());
        }
    }

    fn wake_all(&mut self) {
        for waker in self.waiters.drain(..) {
            waker.wake();
        }
    }

    fn fail(&mut self, error: Error) {
        if self.failure.is_none() {
            self.failure = Some(error);
        }
        self.wake_all();
    }

    fn has_done(&self, token: u64) -> bool {
        self.slots.iter().any(|slot| slot.owner == token && matches!(slot.state, SlotState::Done(_)))
    }

    fn can_submit(&self, pages: usize) -> bool {
        !self.free_ids.is_empty()
            && self.req_prod_pvt.wrapping_sub(self.rsp_cons) < self.ring_size
            && self.pool.len() + self.budget.saturating_sub(self.allocated) >= pages
    }

    /// An idle page, or a new one while the budget allows.
    fn take_buffer(&mut self, xen: &X) -> Result<Buffer<X::Page>, Error> {
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

    fn ensure_granted(&self, xen: &X, buffer: &mut Buffer<X::Page>, readonly: bool) -> Result<u32, Error> {
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
    fn recycle(&mut self, xen: &X, mut buffer: Buffer<X::Page>) {
        if self.persistent || try_end(xen, &mut buffer) {
            self.pool.push(buffer);
        } else {
            self.stale.push(buffer);
        }
    }

    fn release_slot(&mut self, xen: &X, id: usize) {
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
    fn retry_stale(&mut self, xen: &X) {
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

    /// Puts one request on the ring (not yet pushed).
    fn submit(&mut self, xen: &X, handle: u16, token: u64, submission: &Submission<'_>) -> Result<(), Error> {
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
        write_across(&self.ring, blkif::entry_offset(self.req_prod_pvt, self.ring_size), &entry);
        self.req_prod_pvt = self.req_prod_pvt.wrapping_add(1);
        self.stats.requests += 1;
        Ok(())
    }

    /// Takes and fills the request's pages and encodes its ring entry.
    #[allow(clippy::too_many_arguments)]
    fn fill(
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
    fn push(&mut self, xen: &X, port: Port) {
        let (old, new) = (self.req_prod_pushed, self.req_prod_pvt);
        if old == new || self.ring.is_empty() {
            return;
        }
        self.ring[0].write_u32(RING_REQ_PROD, new);
        // The backend must see req_prod before we read req_event (ring.h's xen_mb).
        fence(Ordering::SeqCst);
        let req_event = self.ring[0].read_u32(RING_REQ_EVENT);
        self.req_prod_pushed = new;
        if new.wrapping_sub(req_event) < new.wrapping_sub(old) {
            self.stats.notifications += 1;
            if let Err(e) = xen.notify(port) {
                self.fail(Error::Xen(e));
            }
        }
    }

    /// Consumes every response, then re-arms rsp_event and checks again
    /// (`RING_FINAL_CHECK_FOR_RESPONSES`). A bad response fails the disk.
    fn process_responses(&mut self, xen: &X) {
        if self.failure.is_some() || self.ring.is_empty() {
            return;
        }
        let mut progressed = false;
        loop {
            let rsp_prod = self.ring[0].read_u32(RING_RSP_PROD);
            let outstanding = self.req_prod_pvt.wrapping_sub(self.rsp_cons);
            if rsp_prod.wrapping_sub(self.rsp_cons) > outstanding {
                let rsp_cons = self.rsp_cons;
                self.fail(Error::Protocol(ProtocolError::TooManyResponses { rsp_prod, rsp_cons, outstanding }));
                return;
            }
            while self.rsp_cons != rsp_prod {
                let mut bytes = [0u8; RESPONSE_LEN];
                read_across(&self.ring, blkif::entry_offset(self.rsp_cons, self.ring_size), &mut bytes);
                self.rsp_cons = self.rsp_cons.wrapping_add(1);
                if let Err(e) = self.complete(xen, &bytes) {
                    self.fail(Error::Protocol(e));
                    return;
                }
                progressed = true;
            }
            self.ring[0].write_u32(RING_RSP_EVENT, self.rsp_cons.wrapping_add(1));
            fence(Ordering::SeqCst);
            if self.ring[0].read_u32(RING_RSP_PROD) == self.rsp_cons {
                break;
            }
        }
        if progressed {
            self.wake_all();
        }
    }

    /// Checks one response against the request in flight and records its result.
    fn complete(&mut self, xen: &X, bytes: &[u8; RESPONSE_LEN]) -> Result<(), ProtocolError> {
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
    fn harvest(&mut self, xen: &X, token: u64, mut read_into: Option<&mut [u8]>) -> (usize, Option<Error>) {
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
    fn abandon(&mut self, xen: &X, token: u64) {
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

    /// Gathers every page (ring, pool, aside, in requests) for ending and freeing.
    fn retire_all(&mut self) {
        let Inner { ring, slots, pool, stale, retired, free_ids, .. } = self;
        retired.append(ring);
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
    fn end_retired(&mut self, xen: &X) -> usize {
        self.retired.retain_mut(|buffer| !try_end(xen, buffer));
        self.retired.len()
    }

    /// Leaks the pages the backend still maps: freeing them would hand memory it
    /// can still read and write to whoever allocates it next.
    fn leak_retired(&mut self) {
        for buffer in self.retired.drain(..) {
            core::mem::forget(buffer);
        }
    }

    fn stats(&self) -> Stats {
        Stats {
            in_flight: self.req_prod_pvt.wrapping_sub(self.rsp_cons) as usize,
            pages: self.allocated,
            stale_grants: self.stale.len(),
            ..self.stats
        }
    }
}

/// Releases the leader role when the leading future finishes or is dropped.
struct Leadership<'a, X: Xen> {
    inner: &'a RefCell<Inner<X>>,
}

impl<X: Xen> Drop for Leadership<'_, X> {
    fn drop(&mut self) {
        if let Ok(mut inner) = self.inner.try_borrow_mut() {
            inner.leader = false;
            inner.wake_all();
        }
    }
}

/// Orphans a call's requests if the call is dropped (or returns) before they finish.
struct CallGuard<'a, 'x, X: Xen> {
    disk: &'a Disk<'x, X>,
    token: u64,
}

impl<X: Xen> Drop for CallGuard<'_, '_, X> {
    fn drop(&mut self) {
        if let Ok(mut inner) = self.disk.inner.try_borrow_mut() {
            inner.abandon(self.disk.xen, self.token);
        }
    }
}

enum Woke {
    Event,
    Watch(Result<String, XenstoreError>),
    Condition,
}

/// A connected PV disk.
pub struct Disk<'x, X: Xen> {
    xen: &'x X,
    dev: Device<'x, X>,
    devid: u32,
    handle: u16,
    port: Port,
    /// The backend's `state`.
    watch: X::Watch,
    info: DiskInfo,
    features: Features,
    /// Bytes per request at most.
    chunk_bytes: usize,
    options: Options,
    inner: RefCell<Inner<X>>,
    /// Everything was released (by `close` or a failed `connect`).
    closed: Cell<bool>,
    /// The backend's state changed and has not been read since: set before the read
    /// and cleared after it, so a caller cancelled mid-read (a short timeout around
    /// `watch_backend`) does not lose the change.
    backend_changed: Cell<bool>,
}

impl<'x, X: Xen> Disk<'x, X> {
    /// Connects to the backend of `device/vbd/<devid>`.
    pub async fn connect(xen: &'x X, devid: u32, options: Options) -> Result<Self, Error> {
        let dev = Device::open(xen, "vbd", devid).await?;
        dev.wait_backend(State::InitWait).await?;
        let offered = offered_ring_order(&dev).await?;
        let order = options.max_ring_page_order.min(offered).min(blkif::MAX_RING_PAGE_ORDER);
        let watch = xen.watch(&format!("{}/state", dev.backend)).await?;
        let port = xen.alloc_unbound(dev.backend_id).map_err(Error::Xen)?;
        let features = Features {
            ring_pages: 1 << order,
            ring_size: blkif::ring_size(1 << order),
            persistent_grants: false,
            max_segments: MAX_SEGMENTS_PER_REQUEST as u32,
            indirect: false,
            flush: Flush::NotNeeded,
            discard: None,
        };
        let backend_id = dev.backend_id;
        let mut disk = Disk {
            xen,
            dev,
            devid,
            handle: devid as u16,
            port,
            watch,
            info: DiskInfo::default(),
            features,
            chunk_bytes: MAX_SEGMENTS_PER_REQUEST * PAGE_SIZE,
            options,
            inner: RefCell::new(Inner::new(backend_id)),
            closed: Cell::new(false),
            backend_changed: Cell::new(false),
        };
        match disk.handshake(order).await {
            Ok(()) => Ok(disk),
            Err(e) => {
                disk.abandon().await;
                Err(e)
            }
        }
    }

    async fn handshake(&mut self, order: u32) -> Result<(), Error> {
        let nr_pages = 1usize << order;
        let inner = self.inner.get_mut();
        for _ in 0..nr_pages {
            let page = self.xen.alloc_page().map_err(Error::Xen)?;
            let grant = self.xen.grant(self.dev.backend_id, page.frame(), false).map_err(Error::Xen)?;
            inner.ring.push(Buffer { page, grant: Some(grant) });
        }
        // SHARED_RING_INIT: the producers start at 0 (a fresh page), the events at 1.
        inner.ring[0].write_u32(RING_REQ_EVENT, 1);
        inner.ring[0].write_u32(RING_RSP_EVENT, 1);
        inner.ring_size = blkif::ring_size(nr_pages);
        let grant_text = |buffer: &Buffer<X::Page>| buffer.grant.map_or(String::new(), |g| g.0.to_string());

        let mut entries: Vec<(String, String)> = Vec::new();
        if nr_pages == 1 {
            entries.push(("ring-ref".into(), grant_text(&inner.ring[0])));
        } else {
            entries.push(("ring-page-order".into(), order.to_string()));
            for (index, buffer) in inner.ring.iter().enumerate() {
                entries.push((format!("ring-ref{index}"), grant_text(buffer)));
            }
        }
        entries.push(("event-channel".into(), self.port.0.to_string()));
        entries.push(("protocol".into(), blkif::PROTOCOL_X86_64.into()));
        if self.options.persistent_grants {
            entries.push(("feature-persistent".into(), "1".into()));
        }
        let entries: Vec<(&str, String)> = entries.iter().map(|(key, value)| (key.as_str(), value.clone())).collect();
        self.dev.publish(&entries, State::Initialised).await?;
        self.dev.wait_backend(State::Connected).await?;
        self.read_backend_properties().await?;
        self.dev.switch_state(State::Connected).await?;
        Ok(())
    }

    /// Reads the geometry and features the backend publishes when it connects.
    async fn read_backend_properties(&mut self) -> Result<(), Error> {
        let sectors = self.dev.read_backend_u64("sectors").await?;
        let sector_size = u32::try_from(self.dev.read_backend_u64("sector-size").await?).unwrap_or(0);
        if !sector_size.is_power_of_two() || !(512..=PAGE_SIZE as u32).contains(&sector_size) {
            let why = "not a power of two from 512 to 4096";
            return Err(Error::BadBackend { key: "sector-size", why });
        }
        let physical = self.backend_number("physical-sector-size").await?.unwrap_or(u64::from(sector_size));
        let physical_sector_size = u32::try_from(physical).unwrap_or(0);
        if physical_sector_size < sector_size || physical_sector_size % sector_size != 0 {
            let why = "not a multiple of sector-size";
            return Err(Error::BadBackend { key: "physical-sector-size", why });
        }
        let info = u32::try_from(self.dev.read_backend_u64("info").await?)
            .map_err(|_| Error::BadBackend { key: "info", why: "more than 32 bits" })?;
        let mode_read_only = self.dev.read_backend_opt("mode").await?.is_some_and(|mode| mode.trim() == "r");
        self.info = DiskInfo {
            sectors,
            sector_size,
            physical_sector_size,
            info,
            read_only: info & blkif::VDISK_READONLY != 0 || mode_read_only,
            cdrom: info & blkif::VDISK_CDROM != 0,
            removable: info & blkif::VDISK_REMOVABLE != 0,
        };

        let persistent = self.options.persistent_grants && self.dev.backend_feature("feature-persistent").await?;
        let offered = self.backend_number("feature-max-indirect-segments").await?.unwrap_or(0);
        let flush = if self.dev.backend_feature("feature-flush-cache").await? {
            Flush::Cache
        } else if self.dev.backend_feature("feature-barrier").await? {
            Flush::Barrier
        } else {
            Flush::NotNeeded
        };
        let discard = match self.dev.backend_feature("feature-discard").await? {
            false => None,
            true => Some(Discard {
                granularity_bytes: self.backend_u32("discard-granularity").await?.unwrap_or(sector_size),
                alignment_bytes: self.backend_u32("discard-alignment").await?.unwrap_or(0),
                secure: self.dev.backend_feature("discard-secure").await?,
            }),
        };

        // Segments per request: what both sides allow and the page budget can
        // hold together with the indirect pages.
        let budget = self.options.max_data_pages.max(1);
        let limit = (self.options.max_indirect_segments as usize)
            .min(usize::try_from(offered).unwrap_or(usize::MAX))
            .min(blkif::MAX_INDIRECT_SEGMENTS);
        let fit = limit.min(budget.saturating_sub(blkif::indirect_pages(limit)));
        let (max_segments, indirect) = match fit > MAX_SEGMENTS_PER_REQUEST {
            true => (fit, true),
            false => (MAX_SEGMENTS_PER_REQUEST.min(budget), false),
        };
        self.chunk_bytes = max_segments * PAGE_SIZE;
        self.features.persistent_grants = persistent;
        self.features.max_segments = max_segments as u32;
        self.features.indirect = indirect;
        self.features.flush = flush;
        self.features.discard = discard;
        let inner = self.inner.get_mut();
        inner.flush = flush;
        inner.discard = discard;
        inner.set_up(persistent, budget, max_segments);
        Ok(())
    }

    async fn backend_number(&self, key: &str) -> Result<Option<u64>, Error> {
        match self.dev.read_backend_opt(key).await? {
            None => Ok(None),
            Some(text) => text.trim().parse().map(Some).map_err(|_| {
                let path = format!("{}/{key}", self.dev.backend);
                Error::Xenbus(xenbus::Error::BadNode { path, why: "not a number" })
            }),
        }
    }

    async fn backend_u32(&self, key: &'static str) -> Result<Option<u32>, Error> {
        match self.backend_number(key).await? {
            None => Ok(None),
            Some(value) => {
                u32::try_from(value).map(Some).map_err(|_| Error::BadBackend { key, why: "more than 32 bits" })
            }
        }
    }

    /// The disk's geometry and flags.
    pub fn info(&self) -> &DiskInfo {
        &self.info
    }

    /// What was negotiated (flush and discard as they stand now).
    pub fn features(&self) -> Features {
        let inner = self.inner.borrow();
        Features { flush: inner.flush, discard: inner.discard, ..self.features.clone() }
    }

    pub fn devid(&self) -> u32 {
        self.devid
    }

    pub fn stats(&self) -> Stats {
        self.inner.borrow().stats()
    }

    /// Why the disk became unusable, if it did (backend gone, protocol broken):
    /// for an I/O loop to check on every wake.
    pub fn failure(&self) -> Option<Error> {
        self.inner.borrow().failure.clone()
    }

    /// Completes when the disk becomes unusable (the backend goes to Closing or
    /// Closed or vanishes, or breaks the protocol), with the reason. Meanwhile it
    /// also reads responses, so I/O proceeds while it runs. The caller then closes
    /// the disk.
    pub async fn watch_backend(&self) -> Error {
        self.wait_until(u64::MAX, |inner| inner.failure.is_some()).await;
        self.failure().unwrap_or(Error::Timeout { waited: Duration::MAX })
    }

    /// Reads `buf.len()` bytes from 512-byte sector `sector`. The length and the
    /// start must be whole logical blocks (`info().sector_size`).
    pub async fn read(&self, sector: u64, buf: &mut [u8]) -> Result<(), Error> {
        self.check_data(sector, buf.len(), false)?;
        if buf.is_empty() {
            return Ok(());
        }
        self.run(Job::Read { sector, buf }).await
    }

    /// Writes `buf` at 512-byte sector `sector`; whole logical blocks, as `read`.
    pub async fn write(&self, sector: u64, buf: &[u8]) -> Result<(), Error> {
        self.check_data(sector, buf.len(), true)?;
        if buf.is_empty() {
            return Ok(());
        }
        self.run(Job::Write { sector, buf }).await
    }

    /// Makes completed writes durable. Without flush or barrier support the backend
    /// writes through and there is nothing to do.
    pub async fn flush(&self) -> Result<(), Error> {
        let flush = {
            let inner = self.inner.borrow();
            if let Some(failure) = &inner.failure {
                return Err(failure.clone());
            }
            inner.flush
        };
        let operation = match flush {
            Flush::NotNeeded => return Ok(()),
            Flush::Cache => Operation::FlushDiskCache,
            Flush::Barrier => Operation::WriteBarrier,
            Flush::Refused => return Err(Error::NotSupported(Operation::FlushDiskCache)),
        };
        self.run(Job::Flush(operation)).await
    }

    /// Tells the backend `nr_sectors` sectors from `sector` are unused. The range is
    /// sent as is; `features().discard` has the granularity the backend honours.
    pub async fn discard(&self, sector: u64, nr_sectors: u64) -> Result<(), Error> {
        {
            let inner = self.inner.borrow();
            if let Some(failure) = &inner.failure {
                return Err(failure.clone());
            }
            if self.info.read_only {
                return Err(Error::ReadOnly);
            }
            if inner.discard.is_none() {
                return Err(Error::NotSupported(Operation::Discard));
            }
        }
        self.check_range(sector, nr_sectors)?;
        if nr_sectors == 0 {
            return Ok(());
        }
        self.run(Job::Discard { sector, nr_sectors }).await
    }

    fn check_data(&self, sector: u64, len_bytes: usize, write: bool) -> Result<(), Error> {
        if let Some(failure) = &self.inner.borrow().failure {
            return Err(failure.clone());
        }
        if write && self.info.read_only {
            return Err(Error::ReadOnly);
        }
        let sector_size = self.info.sector_size;
        let block_sectors = u64::from(sector_size) / SECTOR_SIZE as u64;
        if !len_bytes.is_multiple_of(sector_size as usize) || !sector.is_multiple_of(block_sectors) {
            return Err(Error::Misaligned { sector, len_bytes, sector_size });
        }
        self.check_range(sector, (len_bytes / SECTOR_SIZE) as u64)
    }

    fn check_range(&self, sector: u64, nr_sectors: u64) -> Result<(), Error> {
        let capacity_sectors = self.info.sectors;
        match sector.checked_add(nr_sectors) {
            Some(end) if end <= capacity_sectors => Ok(()),
            _ => Err(Error::OutOfRange { sector, nr_sectors, capacity_sectors }),
        }
    }

    /// Runs one call: submits its requests as ring slots and pages allow, batched
    /// before each notify, and takes their results as they come.
    async fn run(&self, mut job: Job<'_>) -> Result<(), Error> {
        let pieces = job.pieces(self.chunk_bytes);
        let token = {
            let mut inner = self.inner.borrow_mut();
            if let Some(failure) = &inner.failure {
                return Err(failure.clone());
            }
            inner.new_token()
        };
        let _guard = CallGuard { disk: self, token };
        let timeout = nanoseconds(self.options.request_timeout);
        let mut deadline = self.xen.now_ns().saturating_add(timeout);
        let (mut next, mut outstanding, mut error) = (0, 0, None);
        loop {
            let (pages_wanted, stale) = {
                let mut inner = self.inner.borrow_mut();
                let (finished, failed) = inner.harvest(self.xen, token, job.read_buffer());
                if finished > 0 {
                    outstanding -= finished;
                    deadline = self.xen.now_ns().saturating_add(timeout);
                    error = error.or(failed);
                }
                if outstanding == 0 && (next == pieces || error.is_some()) {
                    return error.map_or(Ok(()), Err);
                }
                if let Some(failure) = &inner.failure {
                    return Err(failure.clone());
                }
                let mut submitted = false;
                while error.is_none() && next < pieces {
                    let submission = job.piece(next, self.chunk_bytes);
                    if !inner.can_submit(submission.pages()) {
                        inner.retry_stale(self.xen);
                        if !inner.can_submit(submission.pages()) {
                            break;
                        }
                    }
                    match inner.submit(self.xen, self.handle, token, &submission) {
                        Ok(()) => (next, outstanding, submitted) = (next + 1, outstanding + 1, true),
                        Err(e) => error = Some(e),
                    }
                }
                if submitted {
                    inner.push(self.xen, self.port);
                }
                if outstanding == 0 && error.is_some() {
                    return error.map_or(Ok(()), Err);
                }
                let wanted = (error.is_none() && next < pieces).then(|| job.piece(next, self.chunk_bytes).pages());
                (wanted, !inner.stale.is_empty())
            };
            // Short of pages the backend still maps: look again soon, as nothing
            // will tell us when it lets go.
            let now = self.xen.now_ns();
            let until = match pages_wanted.is_some() && stale {
                true => deadline.min(now.saturating_add(nanoseconds(STALE_POLL))),
                false => deadline,
            };
            let ready = self
                .wait_until(until, |inner| {
                    inner.failure.is_some()
                        || inner.has_done(token)
                        || pages_wanted.is_some_and(|pages| inner.can_submit(pages))
                })
                .await;
            if !ready && self.xen.now_ns() >= deadline {
                return Err(Error::Timeout { waited: self.options.request_timeout });
            }
        }
    }

    /// Waits until `ready` holds or the clock reaches `deadline` (false then),
    /// leading (reading the ring and the backend watch) when nobody else does.
    async fn wait_until(&self, deadline: u64, ready: impl Fn(&Inner<X>) -> bool) -> bool {
        loop {
            let lead = {
                let mut inner = self.inner.borrow_mut();
                if ready(&inner) {
                    return true;
                }
                if self.xen.now_ns() >= deadline {
                    return false;
                }
                !core::mem::replace(&mut inner.leader, true)
            };
            if lead {
                let _leadership = Leadership { inner: &self.inner };
                return self.lead(deadline, &ready).await;
            }
            self.follow(deadline, &ready).await;
        }
    }

    async fn lead(&self, deadline: u64, ready: &impl Fn(&Inner<X>) -> bool) -> bool {
        loop {
            if self.backend_changed.get() {
                self.check_backend().await;
            }
            {
                let mut inner = self.inner.borrow_mut();
                inner.process_responses(self.xen);
                if ready(&inner) {
                    return true;
                }
            }
            let now = self.xen.now_ns();
            if now >= deadline {
                return false;
            }
            let woke = {
                let mut event = pin!(self.xen.wait(self.port));
                let mut watch = pin!(self.watch.next(Duration::from_nanos(deadline - now)));
                poll_fn(|cx| {
                    if event.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Woke::Event);
                    }
                    if let Poll::Ready(result) = watch.as_mut().poll(cx) {
                        return Poll::Ready(Woke::Watch(result));
                    }
                    let mut inner = self.inner.borrow_mut();
                    if ready(&inner) {
                        return Poll::Ready(Woke::Condition);
                    }
                    inner.register(cx.waker());
                    Poll::Pending
                })
                .await
            };
            match woke {
                Woke::Event | Woke::Condition | Woke::Watch(Err(XenstoreError::Timeout)) => {}
                Woke::Watch(Ok(_)) => {
                    self.backend_changed.set(true);
                    self.check_backend().await;
                }
                Woke::Watch(Err(e)) => self.inner.borrow_mut().fail(e.into()),
            }
        }
    }

    /// Waits for `ready`, for the leader to step down, or for the deadline.
    async fn follow(&self, deadline: u64, ready: &impl Fn(&Inner<X>) -> bool) {
        let now = self.xen.now_ns();
        let mut sleep = pin!(self.xen.sleep(Duration::from_nanos(deadline.saturating_sub(now))));
        poll_fn(|cx| {
            {
                let mut inner = self.inner.borrow_mut();
                if ready(&inner) || !inner.leader {
                    return Poll::Ready(());
                }
                inner.register(cx.waker());
            }
            sleep.as_mut().poll(cx)
        })
        .await
    }

    /// Fails the disk if the backend has gone to Closing or Closed, or vanished.
    async fn check_backend(&self) {
        let gone = match self.dev.backend_state().await {
            Ok(None) => Some(None),
            Ok(Some(state @ (State::Closing | State::Closed))) => Some(Some(state)),
            _ => None,
        };
        self.backend_changed.set(false);
        if let Some(state) = gone {
            self.inner.borrow_mut().fail(Error::BackendGone { state });
        }
    }

    /// Closes the device: Closing, a bounded wait for the backend, Closed; then
    /// ends every grant (retrying those still mapped) and closes the event channel.
    pub async fn close(self) -> Result<(), Error> {
        self.inner.borrow_mut().fail(Error::Closed);
        let told = self.say_goodbye().await;
        let leaked = self.release_all().await;
        let _ = self.xen.close(self.port);
        self.closed.set(true);
        told?;
        match leaked {
            0 => Ok(()),
            count => Err(Error::GrantsLeaked { count }),
        }
    }

    async fn say_goodbye(&self) -> Result<(), Error> {
        if self.dev.state().await?.is_none() {
            return Ok(()); // our node is gone: the toolstack tore the device down
        }
        match self.dev.backend_state().await {
            Ok(Some(state)) if state != State::Closed => self.dev.close().await?,
            _ => self.dev.switch_state(State::Closed).await?,
        }
        Ok(())
    }

    /// After a failed handshake: Closed, and everything released.
    async fn abandon(&self) {
        self.inner.borrow_mut().fail(Error::Closed);
        let _ = self.dev.switch_state(State::Closed).await;
        self.release_all().await;
        let _ = self.xen.close(self.port);
        self.closed.set(true);
    }

    /// Ends every grant, retrying for `release_timeout` those the backend still
    /// maps; returns how many pages had to be leaked.
    async fn release_all(&self) -> usize {
        self.inner.borrow_mut().retire_all();
        let deadline = self.xen.now_ns().saturating_add(nanoseconds(self.options.release_timeout));
        loop {
            let left = self.inner.borrow_mut().end_retired(self.xen);
            if left == 0 {
                return 0;
            }
            if self.xen.now_ns() >= deadline {
                self.inner.borrow_mut().leak_retired();
                return left;
            }
            self.xen.sleep(RELEASE_POLL).await;
        }
    }
}

/// Dropping a disk without [`Disk::close`] ends what it can at once and leaks the
/// pages the backend still maps; xenstore is left as it is.
impl<X: Xen> Drop for Disk<'_, X> {
    fn drop(&mut self) {
        if self.closed.get() {
            return;
        }
        let inner = self.inner.get_mut();
        inner.retire_all();
        inner.end_retired(self.xen);
        inner.leak_retired();
        let _ = self.xen.close(self.port);
    }
}

/// The ring order the backend accepts: `max-ring-page-order`, or log2 of the older
/// `max-ring-pages`, or 0.
async fn offered_ring_order<X: Xen>(dev: &Device<'_, X>) -> Result<u32, Error> {
    let number = async |key: &str| -> Result<Option<u64>, Error> {
        match dev.read_backend_opt(key).await? {
            None => Ok(None),
            Some(text) => Ok(text.trim().parse().ok()),
        }
    };
    if let Some(order) = number("max-ring-page-order").await? {
        return Ok(u32::try_from(order).unwrap_or(u32::MAX));
    }
    match number("max-ring-pages").await? {
        Some(pages) if pages.is_power_of_two() => Ok(pages.trailing_zeros()),
        _ => Ok(0),
    }
}

/// The id of the request in slot `index`: the slot's generation above its index.
fn request_id(index: usize, generation: u32) -> u64 {
    u64::from(generation) << 32 | index as u64
}

fn nanoseconds(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blkif::{RING_REQ_EVENT, RING_REQ_PROD, RING_RSP_EVENT, RING_RSP_PROD, Request};
    use alloc::collections::{BTreeMap, BTreeSet};
    use alloc::rc::Rc;
    use alloc::vec;
    use core::future::Future;
    use xen_seams::sim::{Executor, MappedPage, PvDevice, SimXen, World};
    use xen_seams::{Clock, EventChannels, Xenstore};

    const FRONT: DomId = 5;
    const BACK: DomId = 0;
    const DEVID: u32 = 768;
    const FRONT_NODE: &str = "/local/domain/5/device/vbd/768";
    const BACK_NODE: &str = "/local/domain/0/backend/vbd/5/768";
    /// 8 MiB.
    const DISK_SECTORS: u64 = 16384;
    const SECOND: u64 = 1_000_000_000;

    /// The disk's initial contents: differs from byte to byte and sector to sector.
    fn pattern(offset: usize) -> u8 {
        (offset % 251) as u8 ^ (offset / 512) as u8
    }

    fn expected(sector: u64, len: usize) -> Vec<u8> {
        let start = sector as usize * 512;
        (start..start + len).map(pattern).collect()
    }

    /// What the backend does wrong, and at which request (counted from 0).
    #[derive(Clone, Copy, Debug, PartialEq)]
    enum Fault {
        None,
        UnknownId(usize),
        /// Answers with the previous response's id.
        Duplicate(usize),
        Garbage(usize),
        ExtraResponses(usize),
        WrongOperation(usize),
        BadStatus(usize),
        IoError(usize),
        /// Never answers this request or any later one.
        Silent(usize),
        /// Goes to Closing instead of answering (the dom0 side of `xl block-detach`).
        Close(usize),
        /// Its directory is removed instead of answering; it unmaps 5 ms later.
        Vanish(usize),
        /// Maps the ring, then goes to Closing instead of Connected.
        RefuseConnect,
    }

    #[derive(Clone)]
    struct Config {
        sectors: u64,
        sector_size: u32,
        info: u32,
        mode: &'static str,
        max_ring_page_order: Option<u32>,
        persistent: bool,
        max_indirect: Option<u32>,
        flush: bool,
        barrier: bool,
        discard: bool,
        refuse_flush: bool,
        /// Answers each batch in reverse order.
        reverse: bool,
        /// Answers before unmapping: a request's pages stay mapped until the next wake.
        unmap_late: bool,
        fault: Fault,
    }

    impl Default for Config {
        fn default() -> Self {
            Config {
                sectors: DISK_SECTORS,
                sector_size: 512,
                info: 0,
                mode: "w",
                max_ring_page_order: None,
                persistent: false,
                max_indirect: None,
                flush: true,
                barrier: false,
                discard: false,
                refuse_flush: false,
                reverse: false,
                unmap_late: false,
                fault: Fault::None,
            }
        }
    }

    #[derive(Clone, Debug, PartialEq)]
    struct Seen {
        operation: Operation,
        indirect: bool,
        nr_segments: usize,
        sector: u64,
        nr_sectors: u64,
    }

    /// What the backend saw and holds.
    #[derive(Default)]
    struct Log {
        disk: Vec<u8>,
        seen: Vec<Seen>,
        /// The most requests pushed and not yet answered, as the backend saw it.
        max_in_flight: u32,
        /// The frontend's nodes when it was Initialised.
        front: BTreeMap<String, String>,
        data_grefs: BTreeSet<u32>,
        persistent: bool,
        /// Unmapped everything and closed its port.
        finished: bool,
    }

    enum Either<A, B> {
        Left(A),
        Right(B),
    }

    async fn select<A: Future, B: Future>(a: A, b: B) -> Either<A::Output, B::Output> {
        let (mut a, mut b) = (pin!(a), pin!(b));
        poll_fn(|cx| {
            if let Poll::Ready(value) = a.as_mut().poll(cx) {
                return Poll::Ready(Either::Left(value));
            }
            if let Poll::Ready(value) = b.as_mut().poll(cx) {
                return Poll::Ready(Either::Right(value));
            }
            Poll::Pending
        })
        .await
    }

    async fn join<A: Future, B: Future>(a: A, b: B) -> (A::Output, B::Output) {
        let (mut a, mut b) = (pin!(a), pin!(b));
        let (mut left, mut right) = (None, None);
        poll_fn(|cx| {
            if left.is_none()
                && let Poll::Ready(value) = a.as_mut().poll(cx)
            {
                left = Some(value);
            }
            if right.is_none()
                && let Poll::Ready(value) = b.as_mut().poll(cx)
            {
                right = Some(value);
            }
            match (left.take(), right.take()) {
                (Some(l), Some(r)) => Poll::Ready((l, r)),
                (l, r) => {
                    (left, right) = (l, r);
                    Poll::Pending
                }
            }
        })
        .await
    }

    /// The backend's side of one connection.
    struct Connection {
        ring: Vec<MappedPage>,
        size: u32,
        port: Port,
        req_cons: u32,
        rsp_prod_pvt: u32,
        persistent: bool,
        cache: BTreeMap<u32, MappedPage>,
        late: Vec<MappedPage>,
        received: usize,
        /// The id of the last request answered.
        previous_id: u64,
        stopped: bool,
    }

    enum After {
        Continue,
        Vanish,
    }

    /// A blkback written for the tests: serves an in-memory disk through the sim's
    /// grant mappings, with the faults of `config`.
    struct Backend {
        xen: SimXen,
        world: World,
        config: Config,
        log: Rc<RefCell<Log>>,
    }

    impl Backend {
        fn write(&self, key: &str, value: &str) {
            let _ = self.world.xenstore_write(&format!("{BACK_NODE}/{key}"), value.as_bytes());
        }

        fn front(&self, key: &str) -> Option<String> {
            let value = self.world.xenstore_read(&format!("{FRONT_NODE}/{key}"))?;
            Some(String::from_utf8(value).unwrap())
        }

        fn front_number(&self, key: &str) -> u32 {
            self.front(key).unwrap_or_else(|| panic!("frontend wrote no {key}")).parse().unwrap()
        }

        async fn run(self) {
            let config = self.config.clone();
            if let Some(order) = config.max_ring_page_order {
                self.write("max-ring-page-order", &order.to_string());
            }
            if let Some(segments) = config.max_indirect {
                self.write("feature-max-indirect-segments", &segments.to_string());
            }
            self.write("state", "2");
            let watch = self.xen.watch(&format!("{FRONT_NODE}/state")).await.unwrap();
            loop {
                match self.front("state").as_deref() {
                    Some("3") => break,
                    Some("5" | "6") | None => {
                        self.write("state", "6");
                        return;
                    }
                    _ => {}
                }
                if watch.next(Duration::from_secs(60)).await.is_err() {
                    return;
                }
            }
            {
                let mut log = self.log.borrow_mut();
                for key in ["ring-ref", "ring-page-order", "event-channel", "protocol", "feature-persistent"] {
                    if let Some(value) = self.front(key) {
                        log.front.insert(key.into(), value);
                    }
                }
                for index in 0..16 {
                    if let Some(value) = self.front(&format!("ring-ref{index}")) {
                        log.front.insert(format!("ring-ref{index}"), value);
                    }
                }
            }
            let order = self.front("ring-page-order").map_or(0, |order| order.parse().unwrap());
            let grefs: Vec<u32> = match order {
                0 => vec![self.front_number("ring-ref")],
                _ => (0..1 << order).map(|index| self.front_number(&format!("ring-ref{index}"))).collect(),
            };
            let ring = grefs.iter().map(|&gref| self.xen.map_grant(FRONT, GrantRef(gref), true).unwrap()).collect();
            let port = self.xen.bind_interdomain(FRONT, self.front_number("event-channel")).unwrap();
            let persistent = config.persistent && self.front("feature-persistent").as_deref() == Some("1");
            self.log.borrow_mut().persistent = persistent;
            let mut connection = Connection {
                ring,
                size: blkif::ring_size(1 << order),
                port,
                req_cons: 0,
                rsp_prod_pvt: 0,
                persistent,
                cache: BTreeMap::new(),
                late: Vec::new(),
                received: 0,
                previous_id: u64::MAX,
                stopped: false,
            };
            if config.fault == Fault::RefuseConnect {
                self.write("state", "5");
                connection.stopped = true;
            } else {
                self.write("sectors", &config.sectors.to_string());
                self.write("sector-size", &config.sector_size.to_string());
                self.write("info", &config.info.to_string());
                self.write("mode", config.mode);
                self.write("feature-persistent", if config.persistent { "1" } else { "0" });
                self.write("feature-flush-cache", if config.flush { "1" } else { "0" });
                if config.barrier {
                    self.write("feature-barrier", "1");
                }
                if config.discard {
                    self.write("feature-discard", "1");
                    self.write("discard-granularity", "4096");
                    self.write("discard-alignment", "0");
                }
                self.write("state", "4");
            }
            loop {
                let wake = select(self.xen.wait(port), watch.next(Duration::from_secs(3600)));
                let woke = match connection.late.is_empty() {
                    true => wake.await,
                    // Pages answered but still mapped are unmapped a millisecond later.
                    false => match select(wake, self.xen.sleep(Duration::from_millis(1))).await {
                        Either::Left(woke) => woke,
                        Either::Right(()) => {
                            connection.late.clear();
                            continue;
                        }
                    },
                };
                match woke {
                    Either::Left(()) if !connection.stopped => {
                        if let After::Vanish = self.serve(&mut connection) {
                            self.world.xenstore_rm(BACK_NODE).unwrap();
                            self.xen.sleep(Duration::from_millis(5)).await;
                            break;
                        }
                    }
                    Either::Left(()) => {}
                    Either::Right(Ok(_)) => match self.front("state").as_deref() {
                        Some("5") => self.write("state", "5"),
                        Some("6") | None => {
                            drop(connection);
                            self.xen.close(port).unwrap();
                            self.write("state", "6");
                            self.log.borrow_mut().finished = true;
                            return;
                        }
                        _ => {}
                    },
                    Either::Right(Err(_)) => return,
                }
            }
            drop(connection);
            self.xen.close(port).unwrap();
            self.log.borrow_mut().finished = true;
        }

        /// Serves what is on the ring, as blkback does, with the configured faults.
        fn serve(&self, connection: &mut Connection) -> After {
            let fault = self.config.fault;
            let mut after = After::Continue;
            loop {
                let req_prod = connection.ring[0].read_u32(RING_REQ_PROD);
                let in_flight = req_prod.wrapping_sub(connection.rsp_prod_pvt);
                let mut log = self.log.borrow_mut();
                log.max_in_flight = log.max_in_flight.max(in_flight);
                drop(log);
                let mut answers: Vec<[u8; RESPONSE_LEN]> = Vec::new();
                while connection.req_cons != req_prod && !connection.stopped {
                    let mut entry = [0u8; REQUEST_LEN];
                    let offset = blkif::entry_offset(connection.req_cons, connection.size);
                    read_across(&connection.ring, offset, &mut entry);
                    connection.req_cons = connection.req_cons.wrapping_add(1);
                    let index = connection.received;
                    connection.received += 1;
                    let request = Request::new_checked(&entry[..]).unwrap();
                    let request = RequestRepr::parse(&request).expect("a valid request");
                    match fault {
                        Fault::Silent(n) if n == index => connection.stopped = true,
                        Fault::Close(n) if n == index => {
                            connection.stopped = true;
                            self.write("state", "5");
                        }
                        Fault::Vanish(n) if n == index => {
                            connection.stopped = true;
                            after = After::Vanish;
                        }
                        _ => {}
                    }
                    if connection.stopped {
                        break;
                    }
                    let status = self.execute(connection, &request);
                    let repr = ResponseRepr { id: request.id(), operation: request.response_operation(), status };
                    let mut bytes = [0u8; RESPONSE_LEN];
                    repr.emit(&mut Response::new_unchecked(&mut bytes[..]));
                    let mut response = Response::new_unchecked(&mut bytes[..]);
                    match fault {
                        Fault::UnknownId(n) if n == index => response.set_id(9999),
                        Fault::WrongOperation(n) if n == index => response.set_operation(blkif::OP_WRITE),
                        Fault::BadStatus(n) if n == index => response.set_status(7),
                        Fault::IoError(n) if n == index => response.set_status(blkif::RSP_ERROR),
                        Fault::Garbage(n) if n == index => bytes = [0xa5; RESPONSE_LEN],
                        _ => {}
                    }
                    if fault == Fault::Duplicate(index) {
                        Response::new_unchecked(&mut bytes[..]).set_id(connection.previous_id);
                    }
                    connection.previous_id = request.id();
                    answers.push(bytes);
                }
                if self.config.reverse {
                    answers.reverse();
                }
                for answer in &answers {
                    let offset = blkif::entry_offset(connection.rsp_prod_pvt, connection.size);
                    write_across(&connection.ring, offset, answer);
                    connection.rsp_prod_pvt = connection.rsp_prod_pvt.wrapping_add(1);
                }
                if matches!(fault, Fault::ExtraResponses(n) if n < connection.received) {
                    connection.rsp_prod_pvt = connection.rsp_prod_pvt.wrapping_add(5);
                }
                // RING_PUSH_RESPONSES_AND_CHECK_NOTIFY
                let old = connection.ring[0].read_u32(RING_RSP_PROD);
                let new = connection.rsp_prod_pvt;
                connection.ring[0].write_u32(RING_RSP_PROD, new);
                let rsp_event = connection.ring[0].read_u32(RING_RSP_EVENT);
                if new.wrapping_sub(rsp_event) < new.wrapping_sub(old) {
                    self.xen.notify(connection.port).unwrap();
                }
                if connection.stopped {
                    return after;
                }
                // RING_FINAL_CHECK_FOR_REQUESTS
                connection.ring[0].write_u32(RING_REQ_EVENT, connection.req_cons.wrapping_add(1));
                if connection.ring[0].read_u32(RING_REQ_PROD) == connection.req_cons {
                    return after;
                }
            }
        }

        fn execute(&self, connection: &mut Connection, request: &RequestRepr) -> Status {
            let config = &self.config;
            let operation = request.response_operation();
            let mut seen = Seen { operation, indirect: false, nr_segments: 0, sector: 0, nr_sectors: 0 };
            let status = match *request {
                RequestRepr::Direct { operation: Operation::FlushDiskCache, .. } => {
                    if config.flush && !config.refuse_flush { Status::Okay } else { Status::NotSupported }
                }
                RequestRepr::Direct { operation: Operation::WriteBarrier, .. } => {
                    if config.barrier {
                        Status::Okay
                    } else {
                        Status::NotSupported
                    }
                }
                RequestRepr::Direct { operation, sector, nr_segments, segments, .. } => {
                    (seen.sector, seen.nr_segments) = (sector, nr_segments);
                    seen.nr_sectors = segments[..nr_segments].iter().map(|s| s.nr_sectors() as u64).sum();
                    self.copy(connection, operation, sector, &segments[..nr_segments])
                }
                RequestRepr::Discard { sector, nr_sectors, .. } => {
                    (seen.sector, seen.nr_sectors) = (sector, nr_sectors);
                    let range = sector as usize * 512..(sector + nr_sectors) as usize * 512;
                    match config.discard {
                        true => {
                            self.log.borrow_mut().disk[range].fill(0);
                            Status::Okay
                        }
                        false => Status::NotSupported,
                    }
                }
                RequestRepr::Indirect { operation, sector, nr_segments, indirect_grefs, .. } => {
                    let mut segments = Vec::new();
                    for index in 0..nr_segments {
                        let page = index / blkif::SEGMENTS_PER_INDIRECT_PAGE;
                        let mut bytes = [0u8; blkif::SEGMENT_LEN];
                        let offset = (index % blkif::SEGMENTS_PER_INDIRECT_PAGE) * blkif::SEGMENT_LEN;
                        self.with_page(connection, indirect_grefs[page], false, |page| page.read(offset, &mut bytes));
                        segments.push(Segment::parse(&bytes).expect("a valid indirect segment"));
                    }
                    seen.indirect = true;
                    (seen.sector, seen.nr_segments) = (sector, nr_segments);
                    seen.nr_sectors = segments.iter().map(|s| s.nr_sectors() as u64).sum();
                    self.copy(connection, operation, sector, &segments)
                }
            };
            self.log.borrow_mut().seen.push(seen);
            status
        }

        fn copy(&self, connection: &mut Connection, operation: Operation, sector: u64, segments: &[Segment]) -> Status {
            let mut position = sector as usize * 512;
            for segment in segments {
                let len = segment.nr_sectors() * 512;
                let offset = usize::from(segment.first_sect) * 512;
                if position + len > self.log.borrow().disk.len() {
                    return Status::Error;
                }
                self.log.borrow_mut().data_grefs.insert(segment.gref);
                let range = position..position + len;
                let log = &self.log;
                self.with_page(connection, segment.gref, operation == Operation::Read, |page| match operation {
                    Operation::Read => page.write(offset, &log.borrow().disk[range]),
                    _ => page.read(offset, &mut log.borrow_mut().disk[range]),
                });
                position += len;
            }
            Status::Okay
        }

        /// Maps a grant for `action`: kept mapped with persistent grants, unmapped
        /// after (or, with `unmap_late`, at the next wake) otherwise.
        fn with_page(&self, connection: &mut Connection, gref: u32, writable: bool, action: impl FnOnce(&MappedPage)) {
            if connection.persistent {
                let page = connection.cache.entry(gref).or_insert_with(|| {
                    self.xen.map_grant(FRONT, GrantRef(gref), true).expect("persistent grants are writable")
                });
                action(page);
                return;
            }
            let page = self.xen.map_grant(FRONT, GrantRef(gref), writable).expect("a live grant");
            action(&page);
            if self.config.unmap_late {
                connection.late.push(page);
            }
        }
    }

    /// A world with the toolstack's nodes for vbd 768 of dom5, served by dom0.
    struct Sim {
        world: World,
        front: SimXen,
        back: SimXen,
        config: Config,
        log: Rc<RefCell<Log>>,
    }

    struct Outcome<T> {
        value: T,
        stats: Stats,
        closed: Result<(), Error>,
    }

    impl Sim {
        fn new(config: Config) -> Sim {
            let world = World::new();
            let back = world.domain(BACK);
            let front = world.domain(FRONT);
            world.toolstack(PvDevice { kind: "vbd", devid: DEVID, frontend: FRONT, backend: BACK }, &[]);
            let disk = (0..config.sectors as usize * 512).map(pattern).collect();
            let log = Rc::new(RefCell::new(Log { disk, ..Log::default() }));
            Sim { world, front, back, config, log }
        }

        fn backend(&self) -> Backend {
            let (xen, world) = (self.back.clone(), self.world.clone());
            Backend { xen, world, config: self.config.clone(), log: self.log.clone() }
        }

        /// Connects, runs `body`, closes; fails the test on a deadlock.
        fn run<T>(&self, options: Options, body: impl AsyncFnOnce(&Disk<'_, SimXen>) -> T) -> Outcome<T> {
            let mut executor = Executor::new(&self.world);
            executor.spawn_background("backend", self.backend().run());
            let output = executor.spawn("frontend", async {
                let disk = Disk::connect(&self.front, DEVID, options).await.expect("connects");
                let value = body(&disk).await;
                let stats = disk.stats();
                Outcome { value, stats, closed: disk.close().await }
            });
            executor.run().unwrap_or_else(|stuck| panic!("{stuck}"));
            drop(executor);
            output.take().expect("the frontend finished")
        }

        /// Nothing of the frontend's is left: no grant, port or page, state Closed.
        fn assert_clean(&self) {
            assert_eq!(self.world.dangling_grants(), []);
            assert_eq!(self.world.grants(FRONT), []);
            assert_eq!(self.world.ports(FRONT), []);
            assert_eq!(self.world.pages(FRONT), [], "every page freed, none leaked");
            let state = self.world.xenstore_read(&format!("{FRONT_NODE}/state"));
            assert_eq!(state.as_deref(), Some(&b"6"[..]));
        }
    }

    fn no_persistence() -> Options {
        Options { persistent_grants: false, ..Options::default() }
    }

    #[test]
    fn connect_negotiates_and_reports_geometry() {
        let config = Config { persistent: true, info: 0, ..Config::default() };
        let sim = Sim::new(config);
        let outcome = sim.run(Options::default(), async |disk| {
            let state = sim.world.xenstore_read(&format!("{FRONT_NODE}/state"));
            (disk.info().clone(), disk.features(), state)
        });
        let (info, features, state) = outcome.value;
        assert_eq!(state.as_deref(), Some(&b"4"[..]), "Connected once connected");
        let expected_info = DiskInfo {
            sectors: DISK_SECTORS,
            sector_size: 512,
            physical_sector_size: 512,
            info: 0,
            read_only: false,
            cdrom: false,
            removable: false,
        };
        assert_eq!(info, expected_info);
        assert_eq!(info.capacity_bytes(), 8 << 20);
        let expected_features = Features {
            ring_pages: 1,
            ring_size: 32,
            persistent_grants: true,
            max_segments: 11,
            indirect: false,
            flush: Flush::Cache,
            discard: None,
        };
        assert_eq!(features, expected_features);
        let front = &sim.log.borrow().front;
        assert_eq!(front.get("protocol").map(String::as_str), Some("x86_64-abi"));
        assert_eq!(front.get("feature-persistent").map(String::as_str), Some("1"));
        assert_eq!(front.get("ring-ref").map(String::as_str), Some("8"), "the first grant ref");
        assert!(front.contains_key("event-channel"));
        assert!(!front.contains_key("ring-page-order"), "a one-page ring has no order node");
        assert_eq!(outcome.closed, Ok(()));
        assert!(sim.log.borrow().finished);
        sim.assert_clean();
    }

    #[test]
    fn reads_of_various_sizes_and_alignments_match_the_disk() {
        let sim = Sim::new(Config::default());
        let cases: [(u64, usize); 9] = [
            (0, 512),
            (DISK_SECTORS - 1, 512),
            (1, 4096),
            (3, 4608),
            (8, 11 * 4096),
            (7, 11 * 4096 + 512),
            (100, 12 * 4096),
            (5, 1 << 20),
            (0, 8 << 20),
        ];
        let outcome = sim.run(no_persistence(), async |disk| {
            let mut results = Vec::new();
            for (sector, len) in cases {
                let mut buf = vec![0u8; len];
                let result = disk.read(sector, &mut buf).await;
                results.push((result, buf == expected(sector, len)));
            }
            results
        });
        for ((sector, len), (result, matches)) in cases.iter().zip(outcome.value) {
            assert_eq!(result, Ok(()), "read of {len} bytes at {sector}");
            assert!(matches, "data of {len} bytes at {sector}");
        }
        let log = sim.log.borrow();
        assert!(log.seen.iter().all(|seen| seen.nr_segments <= 11 && !seen.indirect));
        assert!(log.max_in_flight >= 20, "a large read keeps many requests in flight ({})", log.max_in_flight);
        assert!(
            outcome.stats.notifications * 4 < outcome.stats.requests,
            "requests are batched before notifying: {:?}",
            outcome.stats
        );
        assert_eq!(outcome.closed, Ok(()));
        sim.assert_clean();
    }

    #[test]
    fn writes_of_various_sizes_land_on_the_disk_and_read_back() {
        let sim = Sim::new(Config::default());
        let writes: [(u64, usize, u8); 5] =
            [(0, 512, 1), (9, 4096 + 512, 2), (64, 11 * 4096, 3), (200, 30 * 4096 + 1024, 4), (4000, 3 << 20, 5)];
        let outcome = sim.run(Options::default(), async |disk| {
            let mut results = Vec::new();
            for (sector, len, seed) in writes {
                let data: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(seed) ^ seed).collect();
                results.push(disk.write(sector, &data).await);
                let mut back = vec![0u8; len];
                results.push(disk.read(sector, &mut back).await);
                assert!(back == data, "read back {len} bytes at {sector}");
            }
            results
        });
        assert!(outcome.value.iter().all(Result::is_ok), "{:?}", outcome.value);
        let log = sim.log.borrow();
        for (sector, len, seed) in writes {
            let start = sector as usize * 512;
            let on_disk = &log.disk[start..start + len];
            assert!(on_disk.iter().enumerate().all(|(i, &b)| b == (i as u8).wrapping_mul(seed) ^ seed));
        }
        assert_eq!(log.disk[512 * 8..512 * 9], expected(8, 512)[..], "untouched sectors keep the pattern");
        drop(log);
        assert_eq!(outcome.closed, Ok(()));
        sim.assert_clean();
    }

    #[test]
    fn multi_page_rings_carry_many_requests_across_page_boundaries() {
        let config = Config { max_ring_page_order: Some(4), reverse: true, ..Config::default() };
        let sim = Sim::new(config);
        let options = Options { max_ring_page_order: 2, max_data_pages: 2048, ..no_persistence() };
        let outcome = sim.run(options, async |disk| {
            let mut buf = vec![0u8; 4 << 20];
            let read = disk.read(16, &mut buf).await;
            let data: Vec<u8> = (0..4 << 20).map(|i: usize| (i / 7) as u8).collect();
            let write = disk.write(0, &data).await;
            let mut back = vec![0u8; 4 << 20];
            let reread = disk.read(0, &mut back).await;
            (disk.features(), read, buf == expected(16, 4 << 20), write, reread, back == data)
        });
        let (features, read, read_matches, write, reread, matches) = outcome.value;
        assert_eq!((features.ring_pages, features.ring_size), (4, 128));
        assert_eq!((read, write, reread), (Ok(()), Ok(()), Ok(())));
        assert!(read_matches && matches, "answered in reverse order, matched by id");
        let log = sim.log.borrow();
        assert_eq!(log.front.get("ring-page-order").map(String::as_str), Some("2"));
        assert!((0..4).all(|i| log.front.contains_key(&format!("ring-ref{i}"))));
        assert!(!log.front.contains_key("ring-ref"));
        assert!(log.max_in_flight > 72, "entries past 72 straddle ring pages ({})", log.max_in_flight);
        drop(log);
        assert_eq!(outcome.closed, Ok(()));
        sim.assert_clean();
    }

    #[test]
    fn persistent_grants_reuse_a_pool_that_stays_mapped() {
        let sim = Sim::new(Config { persistent: true, ..Config::default() });
        let outcome = sim.run(Options::default(), async |disk| {
            for round in 0..10u64 {
                let mut buf = vec![0u8; 11 * 4096];
                disk.read(round * 88, &mut buf).await.unwrap();
                assert!(buf == expected(round * 88, buf.len()));
                disk.write(round * 88, &buf).await.unwrap();
            }
            (disk.features().persistent_grants, sim.world.grants(FRONT))
        });
        let (persistent, grants) = outcome.value;
        assert!(persistent && sim.log.borrow().persistent);
        assert_eq!(outcome.stats.pages, 11, "one request's worth of pages, reused");
        assert_eq!(grants.len(), 12, "the ring and the pool stay granted");
        assert!(grants.iter().all(|g| g.mappings == 1 && !g.readonly), "and mapped by the backend");
        assert_eq!(sim.log.borrow().data_grefs.len(), 11);
        assert_eq!(outcome.closed, Ok(()));
        sim.assert_clean();
    }

    #[test]
    fn without_persistent_grants_each_request_ends_its_grants() {
        let sim = Sim::new(Config { persistent: true, ..Config::default() });
        let outcome = sim.run(no_persistence(), async |disk| {
            let mut buf = vec![0u8; 100 * 1024];
            disk.read(0, &mut buf).await.unwrap();
            disk.write(1000, &buf).await.unwrap();
            (disk.features().persistent_grants, sim.world.grants(FRONT).len())
        });
        assert_eq!(outcome.value, (false, 1), "only the ring stays granted between requests");
        assert!(!sim.log.borrow().persistent);
        assert!(!sim.log.borrow().front.contains_key("feature-persistent"));
        assert_eq!(outcome.closed, Ok(()));
        sim.assert_clean();
    }

    #[test]
    fn indirect_requests_carry_up_to_the_negotiated_segments() {
        let sim = Sim::new(Config { max_indirect: Some(256), ..Config::default() });
        let options = Options { max_indirect_segments: 64, ..Options::default() };
        let outcome = sim.run(options, async |disk| {
            let mut buf = vec![0u8; 1 << 20];
            disk.read(3, &mut buf).await.unwrap();
            let data = vec![0x5a; 200 * 4096];
            disk.write(2048, &data).await.unwrap();
            let mut back = vec![0u8; data.len()];
            disk.read(2048, &mut back).await.unwrap();
            (disk.features(), buf == expected(3, 1 << 20), back == data)
        });
        let (features, read_matches, write_matches) = outcome.value;
        assert!(features.indirect && features.max_segments == 64);
        assert!(read_matches && write_matches);
        let log = sim.log.borrow();
        let first = &log.seen[0];
        assert_eq!((first.operation, first.indirect, first.nr_segments), (Operation::Read, true, 64));
        assert!(log.seen.iter().all(|s| s.nr_segments <= 64));
        assert!(log.seen.iter().any(|s| s.indirect && s.operation == Operation::Write));
        drop(log);
        assert_eq!(outcome.closed, Ok(()));
        sim.assert_clean();
    }

    #[test]
    fn indirect_segments_shrink_to_the_page_budget_and_off_means_eleven() {
        let sim = Sim::new(Config { max_indirect: Some(256), persistent: true, ..Config::default() });
        let options = Options { max_indirect_segments: 64, max_data_pages: 40, ..Options::default() };
        let outcome = sim.run(options, async |disk| {
            let mut buf = vec![0u8; 1 << 20];
            disk.read(0, &mut buf).await.unwrap();
            (disk.features().max_segments, buf == expected(0, 1 << 20))
        });
        assert_eq!(outcome.value, (39, true), "39 data pages and an indirect page fit in 40");
        assert!(outcome.stats.pages <= 40);
        assert_eq!(outcome.closed, Ok(()));
        sim.assert_clean();

        let sim = Sim::new(Config { max_indirect: Some(256), ..Config::default() });
        let options = Options { max_indirect_segments: 0, ..Options::default() };
        let outcome = sim.run(options, async |disk| {
            let mut buf = vec![0u8; 1 << 20];
            disk.read(0, &mut buf).await.unwrap();
            disk.features()
        });
        assert!(!outcome.value.indirect && outcome.value.max_segments == 11);
        assert!(sim.log.borrow().seen.iter().all(|s| !s.indirect && s.nr_segments <= 11));
        sim.assert_clean();
    }

    #[test]
    fn flush_uses_flush_cache_or_barrier_or_nothing() {
        for (flush, barrier, wanted, requests) in [
            (true, true, Flush::Cache, vec![Operation::FlushDiskCache]),
            (false, true, Flush::Barrier, vec![Operation::WriteBarrier]),
            (false, false, Flush::NotNeeded, vec![]),
        ] {
            let sim = Sim::new(Config { flush, barrier, ..Config::default() });
            let outcome = sim.run(Options::default(), async |disk| (disk.features().flush, disk.flush().await));
            assert_eq!(outcome.value, (wanted, Ok(())));
            let seen: Vec<_> = sim.log.borrow().seen.iter().map(|s| s.operation).collect();
            assert_eq!(seen, requests);
            sim.assert_clean();
        }
    }

    #[test]
    fn a_refused_flush_is_reported_and_remembered() {
        let sim = Sim::new(Config { refuse_flush: true, ..Config::default() });
        let outcome = sim.run(Options::default(), async |disk| {
            let first = disk.flush().await;
            let second = disk.flush().await;
            let still_works = disk.read(0, &mut [0u8; 512]).await;
            (first, second, disk.features().flush, still_works)
        });
        let not_supported = Err(Error::NotSupported(Operation::FlushDiskCache));
        assert_eq!(outcome.value, (not_supported.clone(), not_supported, Flush::Refused, Ok(())));
        assert_eq!(sim.log.borrow().seen.len(), 2, "the second flush is refused without asking");
        sim.assert_clean();
    }

    #[test]
    fn discard_is_sent_when_offered() {
        let sim = Sim::new(Config { discard: true, ..Config::default() });
        let outcome = sim.run(Options::default(), async |disk| {
            let discard = disk.features().discard;
            let result = disk.discard(8, 16).await;
            let out_of_range = disk.discard(DISK_SECTORS - 1, 2).await;
            let mut buf = vec![0xffu8; 8 * 512];
            disk.read(8, &mut buf).await.unwrap();
            (discard, result, out_of_range, buf.iter().all(|&b| b == 0))
        });
        let granularity = Discard { granularity_bytes: 4096, alignment_bytes: 0, secure: false };
        let capacity_sectors = DISK_SECTORS;
        let out_of_range = Err(Error::OutOfRange { sector: DISK_SECTORS - 1, nr_sectors: 2, capacity_sectors });
        assert_eq!(outcome.value, (Some(granularity), Ok(()), out_of_range, true));
        let seen = sim.log.borrow().seen[0].clone();
        assert_eq!((seen.operation, seen.sector, seen.nr_sectors), (Operation::Discard, 8, 16));
        sim.assert_clean();

        let sim = Sim::new(Config::default());
        let outcome = sim.run(Options::default(), async |disk| disk.discard(0, 8).await);
        assert_eq!(outcome.value, Err(Error::NotSupported(Operation::Discard)));
        sim.assert_clean();
    }

    #[test]
    fn a_read_only_disk_refuses_writes_and_discards() {
        for (info, mode) in [(blkif::VDISK_READONLY, "w"), (0, "r")] {
            let sim = Sim::new(Config { info, mode, discard: true, ..Config::default() });
            let outcome = sim.run(Options::default(), async |disk| {
                let mut buf = vec![0u8; 4096];
                let read = disk.read(0, &mut buf).await;
                let write = disk.write(0, &buf).await;
                let discard = disk.discard(0, 8).await;
                (disk.info().read_only, read, write, discard)
            });
            assert_eq!(outcome.value, (true, Ok(()), Err(Error::ReadOnly), Err(Error::ReadOnly)));
            assert!(sim.log.borrow().seen.iter().all(|s| s.operation == Operation::Read));
            sim.assert_clean();
        }
    }

    #[test]
    fn a_cdrom_reports_its_flags() {
        let info = blkif::VDISK_CDROM | blkif::VDISK_REMOVABLE | blkif::VDISK_READONLY;
        let sim = Sim::new(Config { info, sector_size: 2048, ..Config::default() });
        let outcome = sim.run(Options::default(), async |disk| {
            let mut buf = vec![0u8; 2048];
            let aligned = disk.read(4, &mut buf).await;
            let misaligned = disk.read(1, &mut buf).await;
            let short = disk.read(0, &mut buf[..512]).await;
            (disk.info().clone(), aligned, buf == expected(4, 2048), misaligned, short)
        });
        let (info, aligned, matches, misaligned, short) = outcome.value;
        assert!(info.cdrom && info.removable && info.read_only);
        assert_eq!((info.sector_size, aligned, matches), (2048, Ok(()), true));
        assert_eq!(misaligned, Err(Error::Misaligned { sector: 1, len_bytes: 2048, sector_size: 2048 }));
        assert_eq!(short, Err(Error::Misaligned { sector: 0, len_bytes: 512, sector_size: 2048 }));
        sim.assert_clean();
    }

    #[test]
    fn out_of_range_and_misaligned_requests_are_refused_up_front() {
        let sim = Sim::new(Config::default());
        let outcome = sim.run(Options::default(), async |disk| {
            let mut buf = vec![0u8; 1024];
            let past_end = disk.read(DISK_SECTORS - 1, &mut buf).await;
            let overflow = disk.read(u64::MAX, &mut buf).await;
            let ragged = disk.read(0, &mut buf[..700]).await;
            let empty = disk.read(DISK_SECTORS, &mut []).await;
            (past_end, overflow, ragged, empty)
        });
        let (past_end, overflow, ragged, empty) = outcome.value;
        let capacity_sectors = DISK_SECTORS;
        assert_eq!(past_end, Err(Error::OutOfRange { sector: DISK_SECTORS - 1, nr_sectors: 2, capacity_sectors }));
        assert_eq!(overflow, Err(Error::OutOfRange { sector: u64::MAX, nr_sectors: 2, capacity_sectors }));
        assert_eq!(ragged, Err(Error::Misaligned { sector: 0, len_bytes: 700, sector_size: 512 }));
        assert_eq!(empty, Ok(()));
        assert!(sim.log.borrow().seen.is_empty(), "nothing reached the backend");
        sim.assert_clean();
    }

    #[test]
    fn an_error_status_fails_only_that_call() {
        let sim = Sim::new(Config { fault: Fault::IoError(1), ..Config::default() });
        let outcome = sim.run(Options::default(), async |disk| {
            let mut buf = vec![0u8; 30 * 4096];
            let failed = disk.read(0, &mut buf).await;
            let next = disk.read(0, &mut buf).await;
            (failed, next, disk.failure())
        });
        let (failed, next, failure) = outcome.value;
        assert_eq!(failed, Err(Error::Io { operation: Operation::Read, sector: 88 }), "the second request's start");
        assert_eq!((next, failure), (Ok(()), None));
        assert_eq!(outcome.closed, Ok(()));
        sim.assert_clean();
    }

    /// A three-request read against a backend that misbehaves at request `at`.
    fn misbehaving(fault: Fault) -> (Result<(), Error>, Result<(), Error>, Option<Error>) {
        let sim = Sim::new(Config { fault, ..Config::default() });
        let outcome = sim.run(no_persistence(), async |disk| {
            let mut buf = vec![0u8; 30 * 4096];
            let first = disk.read(0, &mut buf).await;
            let later = disk.write(0, &buf[..512]).await;
            (first, later, disk.failure())
        });
        assert_eq!(outcome.closed, Ok(()));
        assert!(sim.world.now_ns() < SECOND, "no timeout was needed");
        sim.assert_clean();
        outcome.value
    }

    fn assert_broken(fault: Fault, error: ProtocolError) {
        let broken = Err(Error::Protocol(error.clone()));
        assert_eq!(misbehaving(fault), (broken.clone(), broken, Some(Error::Protocol(error))), "{fault:?}");
    }

    #[test]
    fn an_unknown_id_breaks_the_disk() {
        assert_broken(Fault::UnknownId(1), ProtocolError::UnknownId { id: 9999 });
    }

    #[test]
    fn a_duplicate_response_breaks_the_disk() {
        assert_broken(Fault::Duplicate(1), ProtocolError::NotInFlight { id: 0 });
    }

    #[test]
    fn a_late_duplicate_cannot_complete_the_next_request_in_its_slot() {
        let sim = Sim::new(Config { fault: Fault::Duplicate(1), ..Config::default() });
        let outcome = sim.run(no_persistence(), async |disk| {
            let mut buf = vec![0u8; 4096];
            let first = disk.read(0, &mut buf).await;
            let second = disk.read(8, &mut buf).await; // slot 0 again, its next generation
            (first, second)
        });
        let stale = Err(Error::Protocol(ProtocolError::NotInFlight { id: 0 }));
        assert_eq!(outcome.value, (Ok(()), stale));
        assert_eq!(outcome.closed, Ok(()));
        sim.assert_clean();
    }

    #[test]
    fn a_garbage_response_breaks_the_disk() {
        assert_broken(Fault::Garbage(2), ProtocolError::UnknownId { id: 0xa5a5_a5a5_a5a5_a5a5 });
    }

    #[test]
    fn a_wrong_operation_or_unknown_status_breaks_the_disk() {
        let wrong = ProtocolError::WrongOperation { id: 1, expected: blkif::OP_READ, got: blkif::OP_WRITE };
        assert_broken(Fault::WrongOperation(1), wrong);
        assert_broken(Fault::BadStatus(0), ProtocolError::Malformed { id: 0, why: WireError::BadStatus(7) });
    }

    #[test]
    fn more_responses_than_requests_break_the_disk() {
        let (first, later, failure) = misbehaving(Fault::ExtraResponses(0));
        assert!(matches!(first, Err(Error::Protocol(ProtocolError::TooManyResponses { .. }))), "{first:?}");
        assert_eq!(later, first);
        assert_eq!(failure, first.err());
    }

    #[test]
    fn the_backend_closing_mid_request_fails_it_and_the_watch_notices() {
        let sim = Sim::new(Config { fault: Fault::Close(1), ..Config::default() });
        let outcome = sim.run(no_persistence(), async |disk| {
            let mut buf = vec![0u8; 30 * 4096];
            let (read, watched) = join(disk.read(0, &mut buf), disk.watch_backend()).await;
            let later = disk.read(0, &mut buf[..512]).await;
            (read, watched, later)
        });
        let gone = Error::BackendGone { state: Some(State::Closing) };
        assert_eq!(outcome.value, (Err(gone.clone()), gone.clone(), Err(gone)));
        assert!(sim.world.now_ns() < SECOND, "noticed at once, no timeout");
        assert_eq!(outcome.closed, Ok(()), "Closing -> Closed, every grant ended once the backend let go");
        assert!(sim.log.borrow().finished);
        sim.assert_clean();
    }

    #[test]
    fn the_backend_vanishing_mid_request_fails_it() {
        let sim = Sim::new(Config { fault: Fault::Vanish(0), ..Config::default() });
        let outcome = sim.run(no_persistence(), async |disk| {
            let mut buf = vec![0u8; 4096];
            disk.read(0, &mut buf).await
        });
        assert_eq!(outcome.value, Err(Error::BackendGone { state: None }));
        assert_eq!(outcome.closed, Ok(()));
        sim.assert_clean();
    }

    #[test]
    fn an_idle_hot_unplug_is_noticed_by_watch_backend() {
        let sim = Sim::new(Config { persistent: true, ..Config::default() });
        let outcome = sim.run(Options::default(), async |disk| {
            disk.read(0, &mut [0u8; 4096]).await.unwrap();
            let unplug = async {
                sim.front.sleep(Duration::from_secs(2)).await;
                sim.world.xenstore_write(&format!("{BACK_NODE}/state"), b"5").unwrap();
            };
            let (gone, ()) = join(disk.watch_backend(), unplug).await;
            (gone, sim.world.now_ns())
        });
        assert_eq!(outcome.value, (Error::BackendGone { state: Some(State::Closing) }, 2 * SECOND));
        assert_eq!(outcome.closed, Ok(()), "the persistent pool is ended too");
        sim.assert_clean();
    }

    #[test]
    fn a_silent_backend_times_out_and_the_disk_still_closes() {
        let sim = Sim::new(Config { fault: Fault::Silent(0), ..Config::default() });
        let outcome = sim.run(no_persistence(), async |disk| {
            let result = disk.read(0, &mut [0u8; 4096]).await;
            (result, sim.world.now_ns())
        });
        assert_eq!(outcome.value, (Err(Error::Timeout { waited: Duration::from_secs(30) }), 30 * SECOND));
        assert_eq!(outcome.closed, Ok(()));
        sim.assert_clean();
    }

    #[test]
    fn grants_still_mapped_after_a_response_are_set_aside_and_ended_later() {
        let sim = Sim::new(Config { unmap_late: true, ..Config::default() });
        let options = Options { max_data_pages: 24, ..no_persistence() };
        let outcome = sim.run(options, async |disk| {
            let mut most_aside = 0;
            for round in 0..6u64 {
                let mut buf = vec![0u8; 20 * 4096];
                disk.read(round * 16, &mut buf).await.unwrap();
                assert!(buf == expected(round * 16, buf.len()));
                most_aside = most_aside.max(disk.stats().stale_grants);
                assert_eq!(sim.world.dangling_grants(), []);
            }
            most_aside
        });
        assert!(outcome.value > 0, "some pages waited aside for their grants to end");
        assert!(outcome.stats.pages <= 24, "within the page budget");
        assert_eq!(outcome.closed, Ok(()));
        sim.assert_clean();
    }

    #[test]
    fn concurrent_calls_share_the_ring_and_take_turns_leading() {
        let sim = Sim::new(Config { reverse: true, ..Config::default() });
        let options = Options { max_data_pages: 16, ..no_persistence() };
        let outcome = sim.run(options, async |disk| {
            let mut a = vec![0u8; 300 * 1024];
            let mut b = vec![0u8; 120 * 1024];
            let data = vec![0x77u8; 200 * 1024];
            let reads = join(disk.read(0, &mut a), disk.read(4000, &mut b));
            let ((ra, rb), rc) = join(reads, disk.write(8000, &data)).await;
            let mut back = vec![0u8; data.len()];
            disk.read(8000, &mut back).await.unwrap();
            (ra, rb, rc, a == expected(0, a.len()), b == expected(4000, b.len()), back == data)
        });
        assert_eq!(outcome.value, (Ok(()), Ok(()), Ok(()), true, true, true));
        assert!(outcome.stats.pages <= 16);
        sim.assert_clean();
    }

    #[test]
    fn a_dropped_call_orphans_its_requests_without_leaking() {
        let sim = Sim::new(Config::default());
        let outcome = sim.run(no_persistence(), async |disk| {
            let mut buf = vec![0u8; 64 * 1024];
            {
                let mut read = pin!(disk.read(0, &mut buf));
                poll_fn(|cx| {
                    assert!(read.as_mut().poll(cx).is_pending());
                    Poll::Ready(())
                })
                .await;
            }
            let in_flight = disk.stats().in_flight;
            let mut other = vec![0u8; 4096];
            let result = disk.read(100, &mut other).await;
            (in_flight, result, other == expected(100, 4096), disk.stats().in_flight)
        });
        assert_eq!(outcome.value, (2, Ok(()), true, 0));
        sim.assert_clean();
    }

    #[test]
    fn a_backend_closing_during_the_handshake_leaves_nothing_granted() {
        let sim = Sim::new(Config { fault: Fault::RefuseConnect, ..Config::default() });
        let mut executor = Executor::new(&sim.world);
        executor.spawn_background("backend", sim.backend().run());
        let result =
            executor.spawn("frontend", async { Disk::connect(&sim.front, DEVID, Options::default()).await.err() });
        executor.run().unwrap_or_else(|stuck| panic!("{stuck}"));
        drop(executor);
        assert_eq!(result.take(), Some(Some(Error::BackendGone { state: Some(State::Closing) })));
        assert!(sim.log.borrow().finished, "the backend unmapped the ring once we said Closed");
        sim.assert_clean();
    }

    #[test]
    fn a_missing_backend_geometry_is_a_clear_error() {
        let sim = Sim::new(Config { sector_size: 1000, ..Config::default() });
        let mut executor = Executor::new(&sim.world);
        executor.spawn_background("backend", sim.backend().run());
        let result =
            executor.spawn("frontend", async { Disk::connect(&sim.front, DEVID, Options::default()).await.err() });
        executor.run().unwrap_or_else(|stuck| panic!("{stuck}"));
        drop(executor);
        let why = "not a power of two from 512 to 4096";
        assert_eq!(result.take(), Some(Some(Error::BadBackend { key: "sector-size", why })));
        sim.assert_clean();
    }
}
