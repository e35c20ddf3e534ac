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
//!
//! **Where things are.** `connect`: the handshake and the close; `io`: the calls and
//! who leads; `requests`: the request slots on the [`FrontRing`](crate::ring::FrontRing)
//! and the matching of responses; `buffers`: data pages and their grants; [`sim`]
//! (feature `sim`): a blkback serving an in-memory disk, with faults, for host tests.

mod buffers;
mod connect;
mod io;
mod requests;
#[cfg(any(test, feature = "sim"))]
pub mod sim;
#[cfg(test)]
mod tests;

use core::cell::{Cell, RefCell};
use core::time::Duration;

use xen_seams::{Port, Xen, XenstoreError};

use crate::blkif::{Operation, SECTOR_SIZE, WireError};
use crate::xenbus::{self, Device, State};
use requests::Inner;

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
}

fn nanoseconds(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}
