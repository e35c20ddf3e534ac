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
use core::fmt;
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
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProtocolError {
    /// A response id we never gave out.
    UnknownId { id: u64 },
    /// A response for a request not in flight (a duplicate, or a stale id).
    NotInFlight { id: u64 },
    /// A response whose operation is not the request's.
    WrongOperation { id: u64, expected: u8, got: u8 },
    /// A response with an unknown operation or status code.
    Malformed { id: u64, why: WireError },
    /// The response producer index runs past the requests we made.
    TooManyResponses { rsp_prod: u32, rsp_cons: u32, outstanding: u32 },
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtocolError::UnknownId { id } => write!(f, "response with unknown id {id}"),
            ProtocolError::NotInFlight { id } => write!(f, "response for request {id}, which is not in flight"),
            ProtocolError::WrongOperation { id, expected, got } => {
                write!(f, "response {id} has operation {got}, the request was {expected}")
            }
            ProtocolError::Malformed { id, why } => write!(f, "response {id}: {why}"),
            ProtocolError::TooManyResponses { rsp_prod, rsp_cons, outstanding } => write!(
                f,
                "rsp_prod {rsp_prod} claims {} responses, only {outstanding} requests are outstanding",
                rsp_prod.wrapping_sub(*rsp_cons)
            ),
        }
    }
}

/// Why a disk operation failed.
#[derive(Clone, Debug, PartialEq)]
pub enum Error {
    /// The xenbus handshake or a xenstore operation failed.
    Xenbus(xenbus::Error),
    /// The backend published a value we cannot use.
    BadBackend { key: &'static str, why: &'static str },
    /// Xen refused a page, grant or event channel operation.
    Xen(xen_seams::Error),
    /// A write or discard to a read-only disk.
    ReadOnly,
    /// The backend does not offer (or refused) the operation.
    NotSupported(Operation),
    /// The length or start is not a whole number of logical blocks.
    Misaligned { sector: u64, len_bytes: usize, sector_size: u32 },
    /// The range leaves the disk.
    OutOfRange { sector: u64, nr_sectors: u64, capacity_sectors: u64 },
    /// The backend answered BLKIF_RSP_ERROR (the request starting at `sector`).
    Io { operation: Operation, sector: u64 },
    /// The backend went to Closing/Closed, or its node vanished.
    BackendGone { state: Option<State> },
    /// The backend broke the ring protocol; the disk is unusable.
    Protocol(ProtocolError),
    /// No response for this long.
    Timeout { waited: Duration },
    /// The disk was closed.
    Closed,
    /// Pages the backend never unmapped: leaked (not freed) so it cannot see reuse.
    GrantsLeaked { count: usize },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Xenbus(e) => write!(f, "blkfront: {e}"),
            Error::BadBackend { key, why } => write!(f, "blkfront: backend's {key}: {why}"),
            Error::Xen(e) => write!(f, "blkfront: {e}"),
            Error::ReadOnly => f.write_str("blkfront: the disk is read-only"),
            Error::NotSupported(op) => write!(f, "blkfront: the backend does not support {op}"),
            Error::Misaligned { sector, len_bytes, sector_size } => write!(
                f,
                "blkfront: {len_bytes} bytes at sector {sector} are not whole {sector_size}-byte blocks"
            ),
            Error::OutOfRange { sector, nr_sectors, capacity_sectors } => write!(
                f,
                "blkfront: sectors {sector}+{nr_sectors} leave the disk ({capacity_sectors} sectors)"
            ),
            Error::Io { operation, sector } => write!(f, "blkfront: {operation} at sector {sector} failed"),
            Error::BackendGone { state: Some(state) } => write!(f, "blkfront: backend went to {state:?}"),
            Error::BackendGone { state: None } => f.write_str("blkfront: backend vanished"),
            Error::Protocol(e) => write!(f, "blkfront: backend broke the protocol: {e}"),
            Error::Timeout { waited } => write!(f, "blkfront: no response in {waited:?}"),
            Error::Closed => f.write_str("blkfront: disk closed"),
            Error::GrantsLeaked { count } => {
                write!(f, "blkfront: the backend still maps {count} pages; leaked rather than reused")
            }
        }
    }
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
            Submission::Data { operation, sector, buf_offset, len_bytes, .. } => (operation, sector, buf_offset, len_bytes),
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
        let id = id as u64;
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
        let index = usize::try_from(id).ok().filter(|&index| index < self.slots.len());
        let index = index.ok_or(ProtocolError::UnknownId { id })?;
        let persistent = self.persistent;
        let slot = &mut self.slots[index];
        let orphaned = match slot.state {
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
            retired.extend(slot.pages.drain(..));
            retired.extend(slot.indirect.drain(..));
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
        if len_bytes % sector_size as usize != 0 || sector % block_sectors != 0 {
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
                Woke::Watch(Ok(_)) => self.check_backend().await,
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

fn nanoseconds(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}
