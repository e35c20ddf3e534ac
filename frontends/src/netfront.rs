//! PV network frontend `device/vif/N`: Ethernet frames to and from dom0's netback.
//!
//! The handshake, as Linux netfront does it:
//!
//! ```text
//! let dev = Device::open(xen, "vif", n).await?;          // find the backend
//! mac = read device/vif/N/mac                              // written by the toolstack
//! dev.wait_backend(State::InitWait).await?;               // backend published features
//! require feature-rx-copy; note multi-queue-max-queues     // copy mode, one queue
//! grant tx ring, rx ring, rx and tx buffer pools; one event channel; fill the rx ring
//! dev.publish(tx-ring-ref, rx-ring-ref, event-channel, request-rx-copy=1,
//!             feature-rx-notify=1, feature-no-csum-offload=1,
//!             [multi-queue-num-queues=1], Connected)       // netback connects on our
//! dev.wait_backend(State::Connected).await?;               // Connected, not Initialised
//! ```
//!
//! We advertise no scatter-gather, GSO or checksum offload: every frame is one slot of
//! at most [`MAX_FRAME_BYTES`], with a complete checksum both ways (smoltcp verifies
//! and computes checksums in software).
//!
//! Data path (copy mode). A fixed pool of rx pages is granted once; each is posted in
//! an rx request, netback copies one frame into it, and after we copy the frame out it
//! is posted again. The tx pool is granted once too (read-only, two 2 KiB buffers per
//! page); a frame is copied into a free buffer and named by a tx request whose id is
//! the buffer's number. Responses are copied out of the ring and validated before
//! anything acts on them: a tx response must name a buffer in flight; an rx response
//! sits in the slot of its request (netif.h), must echo that request's id, and must
//! describe bytes inside the page. A bad response is dropped and counted; a ring whose
//! producer index claims more responses than requests breaks the device with an error.
//! Notifications follow ring.h: requests are pushed in batches and the backend is only
//! kicked when it asked (`req_event`); we only ask to be woken (`rsp_event`) just
//! before sleeping.
//!
//! The raw frame API ([`Netfront::send`], [`Netfront::receive_with`],
//! [`Netfront::wait`]) works without smoltcp (the device model's emulated NIC will
//! bridge frames through it); [`Netfront`] also implements [`smoltcp::phy::Device`].
//!
//! Backend loss: [`Netfront::wait`] watches the backend's `state`. Once it leaves
//! Connected (Closing, Closed, reset, or vanished), every call fails with
//! [`NetError::BackendGone`] and the grants are ended; a grant the backend still maps
//! is retried at [`Netfront::close`] or drop, and its page is leaked rather than freed.

use crate::netif::{self, ExtraInfo, PAGE_SIZE, RX_RING_SIZE, RxRequest, RxResponse, TX_RING_SIZE, TxRequest, TxResponse};
use crate::netif::{ring, rx_flags, status};
use crate::xenbus::{self, Device, State};
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;
use core::future::poll_fn;
use core::pin::pin;
use core::sync::atomic::{Ordering, fence};
use core::task::Poll;
use core::time::Duration;
use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, HardwareAddress};
use xen_seams::{GrantRef, Port, SharedPage, Tx, Xen, XenstoreError, XenstoreWatch, XsResult};

/// The largest frame we send or expect: a 1500-byte MTU plus the Ethernet header
/// (no FCS), which is smoltcp's Ethernet "MTU".
pub const MAX_FRAME_BYTES: usize = 1514;
/// Bytes of one tx buffer: two per page, so a frame never crosses a page.
const TX_BUFFER_BYTES: usize = PAGE_SIZE / 2;
/// An rx ring slot with no buffer posted in it.
const NO_BUFFER: u16 = u16::MAX;

/// How many buffers to keep; each rx buffer is a page, each tx buffer half a page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// Pages posted to the backend for receiving (1..=256).
    pub rx_buffers: u16,
    /// Frames that may be in flight to the backend (1..=256).
    pub tx_buffers: u16,
}

impl Default for Config {
    /// 128 rx pages and 128 tx buffers: 192 pages (768 KiB) plus the two rings.
    fn default() -> Self {
        Config { rx_buffers: 128, tx_buffers: 128 }
    }
}

/// Counters of the data path.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Frames received and handed to the consumer.
    pub rx_packets: u64,
    pub rx_bytes: u64,
    /// Frames the backend reported as failed, or sent in pieces we did not negotiate.
    pub rx_dropped: u64,
    /// Frames the backend confirmed as sent.
    pub tx_packets: u64,
    pub tx_bytes: u64,
    /// Frames the backend reported as dropped or failed.
    pub tx_errors: u64,
    /// Frames smoltcp built while every tx buffer was in flight (lost).
    pub tx_dropped: u64,
    /// Responses that failed validation (unknown id, bad offset or size), dropped.
    pub bad_responses: u64,
    /// Event-channel notifications we sent the backend.
    pub notifications: u64,
}

impl Stats {
    fn merge(self, other: Stats) -> Stats {
        Stats {
            rx_packets: self.rx_packets + other.rx_packets,
            rx_bytes: self.rx_bytes + other.rx_bytes,
            rx_dropped: self.rx_dropped + other.rx_dropped,
            tx_packets: self.tx_packets + other.tx_packets,
            tx_bytes: self.tx_bytes + other.tx_bytes,
            tx_errors: self.tx_errors + other.tx_errors,
            tx_dropped: self.tx_dropped + other.tx_dropped,
            bad_responses: self.bad_responses + other.bad_responses,
            notifications: self.notifications + other.notifications,
        }
    }
}

/// Why the network frontend could not (or can no longer) do what was asked.
#[derive(Clone, Debug, PartialEq)]
pub enum NetError {
    /// The xenbus handshake or a xenstore operation failed.
    Xenbus(xenbus::Error),
    /// An event channel, grant or page operation failed.
    Xen(xen_seams::Error),
    /// `device/vif/N/mac` is not a unicast MAC address.
    BadMac(String),
    /// The backend lacks a feature we require.
    MissingFeature(&'static str),
    /// A buffer count outside 1..=256.
    BadConfig,
    /// A frame to send is empty or longer than [`MAX_FRAME_BYTES`].
    FrameSize { len: usize },
    /// Every tx buffer (or tx ring slot) is in flight; wait and retry.
    TxFull,
    /// The backend left Connected (its state then, None if its node vanished).
    BackendGone { state: Option<State> },
    /// The backend's ring indexes are impossible; the device is shut down.
    CorruptRing(&'static str),
}

impl fmt::Display for NetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NetError::Xenbus(e) => write!(f, "netfront: {e}"),
            NetError::Xen(e) => write!(f, "netfront: {e}"),
            NetError::BadMac(text) => write!(f, "netfront: {text:?} is not a unicast MAC address"),
            NetError::MissingFeature(name) => write!(f, "netfront: the backend lacks {name}"),
            NetError::BadConfig => write!(f, "netfront: buffer counts must be 1..=256"),
            NetError::FrameSize { len } => write!(f, "netfront: a {len}-byte frame is not 1..={MAX_FRAME_BYTES} bytes"),
            NetError::TxFull => write!(f, "netfront: every tx buffer is in flight"),
            NetError::BackendGone { state: Some(s) } => write!(f, "netfront: the backend went to {s:?}"),
            NetError::BackendGone { state: None } => write!(f, "netfront: the backend vanished"),
            NetError::CorruptRing(why) => write!(f, "netfront: corrupt ring: {why}"),
        }
    }
}

impl From<xenbus::Error> for NetError {
    fn from(e: xenbus::Error) -> Self {
        match e {
            xenbus::Error::BackendGone { state } => NetError::BackendGone { state },
            e => NetError::Xenbus(e),
        }
    }
}

impl From<XenstoreError> for NetError {
    fn from(e: XenstoreError) -> Self {
        NetError::Xenbus(xenbus::Error::Xenstore(e))
    }
}

impl From<xen_seams::Error> for NetError {
    fn from(e: xen_seams::Error) -> Self {
        NetError::Xen(e)
    }
}

/// What [`Netfront::wait`] found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ready {
    /// A frame is waiting to be received.
    pub receive: bool,
    /// A send that found every tx buffer busy may now succeed.
    pub send: bool,
}

impl Ready {
    pub fn any(self) -> bool {
        self.receive || self.send
    }
}

/// Parses `aa:bb:cc:dd:ee:ff` (one or two hex digits per octet) into a unicast address.
pub fn parse_mac(text: &str) -> Result<[u8; 6], NetError> {
    let bad = || NetError::BadMac(text.to_string());
    let mut mac = [0u8; 6];
    let mut parts = text.trim().split(':');
    for octet in &mut mac {
        let part = parts.next().ok_or_else(bad)?;
        if part.is_empty() || part.len() > 2 {
            return Err(bad());
        }
        *octet = u8::from_str_radix(part, 16).map_err(|_| bad())?;
    }
    if parts.next().is_some() || !EthernetAddress(mac).is_unicast() {
        return Err(bad());
    }
    Ok(mac)
}

/// A page of ours shared with the backend, and whether its grant is still live.
struct GrantedPage<P> {
    page: P,
    grant: GrantRef,
    granted: bool,
}

/// Every page the device shares: the two rings, then the tx pool, then the rx pool.
struct Pages<P> {
    all: Vec<GrantedPage<P>>,
    tx_first: usize,
    rx_first: usize,
}

const TX_RING: usize = 0;
const RX_RING: usize = 1;

impl<P: SharedPage> Pages<P> {
    fn ring(&self, which: usize) -> &P {
        &self.all[which].page
    }

    /// The page, grant and offset of tx buffer `id`.
    fn tx_buffer(&self, id: u16) -> (&P, GrantRef, usize) {
        let shared = &self.all[self.tx_first + id as usize / 2];
        (&shared.page, shared.grant, (id as usize % 2) * TX_BUFFER_BYTES)
    }

    /// The page and grant of rx buffer `id`.
    fn rx_buffer(&self, id: u16) -> (&P, GrantRef) {
        let shared = &self.all[self.rx_first + id as usize];
        (&shared.page, shared.grant)
    }
}

/// Our private view of one shared ring (`struct *_front_ring`).
struct FrontRing {
    which: usize,
    slot_bytes: usize,
    size: u32,
    req_prod_pvt: u32,
    /// The `req_prod` the backend has seen.
    req_prod_pushed: u32,
    rsp_cons: u32,
}

impl FrontRing {
    fn new(which: usize, slot_bytes: usize, size: u32) -> FrontRing {
        FrontRing { which, slot_bytes, size, req_prod_pvt: 0, req_prod_pushed: 0, rsp_cons: 0 }
    }

    fn slot(&self, index: u32) -> usize {
        ring::slot_offset(index, self.size, self.slot_bytes)
    }

    fn free_slots(&self) -> u32 {
        self.size - self.req_prod_pvt.wrapping_sub(self.rsp_cons)
    }

    /// Publishes the requests written so far; true if the backend must be notified
    /// (`RING_PUSH_REQUESTS_AND_CHECK_NOTIFY`).
    fn push<P: SharedPage>(&mut self, pages: &Pages<P>) -> bool {
        let (old, new) = (self.req_prod_pushed, self.req_prod_pvt);
        if old == new {
            return false;
        }
        let page = pages.ring(self.which);
        page.write_u32(ring::REQ_PROD, new);
        self.req_prod_pushed = new;
        // The backend must see the new requests before we read req_event (store-load).
        fence(Ordering::SeqCst);
        ring::needs_notify(old, new, page.read_u32(ring::REQ_EVENT))
    }

    /// The backend's `rsp_prod`, refused if it answers more requests than we pushed.
    fn response_prod<P: SharedPage>(&self, pages: &Pages<P>) -> Result<u32, NetError> {
        let prod = pages.ring(self.which).read_u32(ring::RSP_PROD);
        let pushed = self.req_prod_pushed.wrapping_sub(self.rsp_cons);
        if prod.wrapping_sub(self.rsp_cons) > pushed {
            return Err(NetError::CorruptRing("more responses than requests"));
        }
        Ok(prod)
    }

    /// Asks for an event at the next response and says whether one is already there
    /// (`RING_FINAL_CHECK_FOR_RESPONSES`).
    fn arm<P: SharedPage>(&self, pages: &Pages<P>) -> Result<bool, NetError> {
        pages.ring(self.which).write_u32(ring::RSP_EVENT, self.rsp_cons.wrapping_add(1));
        fence(Ordering::SeqCst);
        Ok(self.response_prod(pages)? != self.rsp_cons)
    }
}

/// The event channel, to notify the backend.
struct Link<'a, X: Xen> {
    xen: &'a X,
    port: Port,
}

impl<X: Xen> Clone for Link<'_, X> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<X: Xen> Copy for Link<'_, X> {}

impl<X: Xen> Link<'_, X> {
    fn notify(self, stats: &mut Stats) -> Result<(), NetError> {
        self.xen.notify(self.port)?;
        stats.notifications += 1;
        Ok(())
    }
}

/// The transmit side: free buffers, the frames in flight (by buffer id) and the ring.
struct TxQueue {
    ring: FrontRing,
    free: Vec<u16>,
    /// Bytes of the frame in flight in each buffer; 0 when the buffer is free.
    in_flight: Vec<u16>,
    /// A send found no room: [`Netfront::wait`] reports when there is some again.
    blocked: bool,
    /// Where smoltcp builds a frame before it is copied into a buffer.
    scratch: Vec<u8>,
    stats: Stats,
}

impl TxQueue {
    fn new(buffers: u16) -> TxQueue {
        TxQueue {
            ring: FrontRing::new(TX_RING, netif::TX_SLOT_BYTES, TX_RING_SIZE),
            free: (0..buffers).rev().collect(),
            in_flight: vec![0; buffers as usize],
            blocked: false,
            scratch: vec![0; MAX_FRAME_BYTES],
            stats: Stats::default(),
        }
    }

    /// Takes the backend's tx responses, freeing the buffers they name.
    fn reclaim<P: SharedPage>(&mut self, pages: &Pages<P>) -> Result<(), NetError> {
        let prod = self.ring.response_prod(pages)?;
        let page = pages.ring(TX_RING);
        let mut bytes = [0u8; TxResponse::<&[u8]>::LEN];
        while self.ring.rsp_cons != prod {
            page.read(self.ring.slot(self.ring.rsp_cons), &mut bytes);
            self.ring.rsp_cons = self.ring.rsp_cons.wrapping_add(1);
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
    fn has_room<P: SharedPage>(&mut self, pages: &Pages<P>) -> Result<bool, NetError> {
        if self.free.is_empty() || self.ring.free_slots() == 0 {
            self.reclaim(pages)?;
        }
        let room = !self.free.is_empty() && self.ring.free_slots() > 0;
        self.blocked |= !room;
        Ok(room)
    }

    /// Copies `frame` into a free buffer and writes its request (not yet pushed).
    fn queue<P: SharedPage>(&mut self, pages: &Pages<P>, frame: &[u8]) -> Result<(), NetError> {
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
        pages.ring(TX_RING).write(self.ring.slot(self.ring.req_prod_pvt), &bytes);
        self.ring.req_prod_pvt = self.ring.req_prod_pvt.wrapping_add(1);
        self.in_flight[id as usize] = frame.len() as u16;
        Ok(())
    }

    /// Pushes queued requests, notifying the backend if it asked.
    fn flush<X: Xen>(&mut self, pages: &Pages<X::Page>, link: Link<'_, X>) -> Result<(), NetError> {
        if self.ring.push(pages) {
            link.notify(&mut self.stats)?;
        }
        Ok(())
    }
}

/// A validated frame waiting in an rx buffer.
#[derive(Clone, Copy, Debug)]
struct Frame {
    buffer: u16,
    offset: usize,
    len: usize,
}

/// The receive side: free buffers, which buffer each ring slot holds, and the ring.
struct RxQueue {
    ring: FrontRing,
    free: Vec<u16>,
    /// The buffer posted in each ring slot (responses come back in their request's slot).
    slot_buffer: Vec<u16>,
    /// A frame found but not yet taken (smoltcp asks before it takes).
    pending: Option<Frame>,
    /// The slots that follow are extra-info slots.
    in_extras: bool,
    /// The slots that follow continue a multi-slot packet (we asked for none): dropped.
    in_fragments: bool,
    /// Push posted buffers once this many wait (or when the backend runs low).
    push_batch: u32,
    low_water: u32,
    scratch: Vec<u8>,
    stats: Stats,
}

impl RxQueue {
    fn new(buffers: u16) -> RxQueue {
        RxQueue {
            ring: FrontRing::new(RX_RING, netif::RX_SLOT_BYTES, RX_RING_SIZE),
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
    fn refill<P: SharedPage>(&mut self, pages: &Pages<P>) {
        let page = pages.ring(RX_RING);
        while self.ring.free_slots() > 0 {
            let Some(buffer) = self.free.pop() else { break };
            let (_, grant) = pages.rx_buffer(buffer);
            let mut bytes = [0u8; RxRequest::<&[u8]>::LEN];
            let mut request = RxRequest::new_unchecked(&mut bytes[..]);
            request.set_id(buffer);
            request.set_gref(grant.0);
            let index = self.ring.req_prod_pvt;
            page.write(self.ring.slot(index), &bytes);
            self.slot_buffer[(index & (self.ring.size - 1)) as usize] = buffer;
            self.ring.req_prod_pvt = index.wrapping_add(1);
        }
    }

    /// Posts free buffers and pushes them when a batch is ready, the backend runs
    /// low, or `now` (before sleeping).
    fn flush<X: Xen>(&mut self, pages: &Pages<X::Page>, link: Link<'_, X>, now: bool) -> Result<(), NetError> {
        self.refill(pages);
        let unpushed = self.ring.req_prod_pvt.wrapping_sub(self.ring.req_prod_pushed);
        let posted = self.ring.req_prod_pushed.wrapping_sub(self.ring.rsp_cons);
        if unpushed > 0 && (now || unpushed >= self.push_batch || posted < self.low_water) && self.ring.push(pages) {
            link.notify(&mut self.stats)?;
        }
        Ok(())
    }

    /// The next valid frame, consuming (and recycling) the responses before it.
    fn next_frame<P: SharedPage>(&mut self, pages: &Pages<P>) -> Result<Option<Frame>, NetError> {
        if self.pending.is_some() {
            return Ok(self.pending);
        }
        let prod = self.ring.response_prod(pages)?;
        let page = pages.ring(RX_RING);
        let mut bytes = [0u8; RxResponse::<&[u8]>::LEN];
        while self.ring.rsp_cons != prod {
            let index = self.ring.rsp_cons;
            page.read(self.ring.slot(index), &mut bytes);
            self.ring.rsp_cons = index.wrapping_add(1);
            let slot = (index & (self.ring.size - 1)) as usize;
            let buffer = core::mem::replace(&mut self.slot_buffer[slot], NO_BUFFER);
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
    fn take<X: Xen, R>(
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

/// A connected network frontend.
pub struct Netfront<'x, X: Xen> {
    xen: &'x X,
    device: Device<'x, X>,
    /// The backend's `state`; None once xenstore could no longer deliver it.
    watch: Option<X::Watch>,
    port: Port,
    port_open: bool,
    mac: [u8; 6],
    pages: Pages<X::Page>,
    tx: TxQueue,
    rx: RxQueue,
    broken: Option<NetError>,
}

impl<'x, X: Xen> Netfront<'x, X> {
    /// Connects `device/vif/<id>` with the default buffer pools.
    pub async fn connect(xen: &'x X, id: u32) -> Result<Self, NetError> {
        Self::connect_with(xen, id, Config::default()).await
    }

    /// Connects `device/vif/<id>`; on failure every grant made is ended (or its page
    /// kept if the backend still maps it) and the event channel closed.
    pub async fn connect_with(xen: &'x X, id: u32, config: Config) -> Result<Self, NetError> {
        let counts = 1..=RX_RING_SIZE.min(TX_RING_SIZE);
        if !counts.contains(&u32::from(config.rx_buffers)) || !counts.contains(&u32::from(config.tx_buffers)) {
            return Err(NetError::BadConfig);
        }
        let device = Device::open(xen, "vif", id).await?;
        let mac = parse_mac(&xen.read_string(Tx::NONE, &format!("{}/mac", device.node)).await?)?;
        device.wait_backend(State::InitWait).await?;
        if !device.backend_feature("feature-rx-copy").await? {
            return Err(NetError::MissingFeature("feature-rx-copy"));
        }
        let multi_queue = device.read_backend_opt("multi-queue-max-queues").await?.is_some();
        let watch = xen.watch(&format!("{}/state", device.backend)).await?;
        let port = xen.alloc_unbound(device.backend_id)?;
        let mut net = Netfront {
            xen,
            device,
            watch: Some(watch),
            port,
            port_open: true,
            mac,
            pages: Pages { all: Vec::new(), tx_first: 2, rx_first: 2 + usize::from(config.tx_buffers).div_ceil(2) },
            tx: TxQueue::new(config.tx_buffers),
            rx: RxQueue::new(config.rx_buffers),
            broken: None,
        };
        net.share_pages(config)?;
        for which in [TX_RING, RX_RING] {
            // SHARED_RING_INIT: producers 0 (the page is zeroed), events at 1.
            let page = net.pages.ring(which);
            page.write_u32(ring::REQ_EVENT, 1);
            page.write_u32(ring::RSP_EVENT, 1);
        }
        // Fill the rx ring before the backend maps it; nobody to notify yet.
        net.rx.refill(&net.pages);
        net.rx.ring.push(&net.pages);

        let number = |n: u32| n.to_string();
        let mut entries = vec![
            ("tx-ring-ref", number(net.pages.all[TX_RING].grant.0)),
            ("rx-ring-ref", number(net.pages.all[RX_RING].grant.0)),
            ("event-channel", number(port.0)),
            ("request-rx-copy", number(1)),
            ("feature-rx-notify", number(1)),
            // Frames must reach us with complete checksums: smoltcp verifies them.
            ("feature-no-csum-offload", number(1)),
        ];
        if multi_queue {
            entries.push(("multi-queue-num-queues", number(1)));
        }
        // Linux netfront goes straight to Connected: netback connects on that, and
        // does nothing on Initialised.
        net.device.publish(&entries, State::Connected).await?;
        net.device.wait_backend(State::Connected).await?;
        // The backend may have missed requests pushed before it bound the port.
        net.link()?.notify(&mut net.tx.stats)?;
        Ok(net)
    }

    /// Allocates and grants the rings and buffer pools.
    fn share_pages(&mut self, config: Config) -> Result<(), NetError> {
        let backend = self.device.backend_id;
        let tx_pages = usize::from(config.tx_buffers).div_ceil(2);
        let kinds = [(2, false), (tx_pages, true), (usize::from(config.rx_buffers), false)];
        for (count, readonly) in kinds {
            for _ in 0..count {
                let page = self.xen.alloc_page()?;
                let grant = self.xen.grant(backend, page.frame(), readonly)?;
                self.pages.all.push(GrantedPage { page, grant, granted: true });
            }
        }
        Ok(())
    }

    /// Our MAC address (from `device/vif/N/mac`).
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// Our MAC address, for `smoltcp::iface::Config`.
    pub fn hardware_address(&self) -> HardwareAddress {
        HardwareAddress::Ethernet(EthernetAddress(self.mac))
    }

    /// The data path's counters.
    pub fn stats(&self) -> Stats {
        self.rx.stats.merge(self.tx.stats)
    }

    /// Why the device stopped working, if it did.
    pub fn error(&self) -> Option<&NetError> {
        self.broken.as_ref()
    }

    /// Grants the device holds (rings and pools), still live: constant while connected.
    pub fn live_grants(&self) -> usize {
        self.pages.all.iter().filter(|p| p.granted).count()
    }

    fn link(&self) -> Result<Link<'x, X>, NetError> {
        match &self.broken {
            Some(error) => Err(error.clone()),
            None => Ok(Link { xen: self.xen, port: self.port }),
        }
    }

    /// Marks the device unusable and ends every grant the backend no longer maps.
    fn fail(&mut self, error: NetError) -> NetError {
        if self.broken.is_none() {
            self.broken = Some(error.clone());
        }
        self.rx.pending = None;
        self.end_grants();
        error
    }

    /// Passes `result` on, shutting the device down first if the ring was corrupt.
    fn guard<T>(&mut self, result: Result<T, NetError>) -> Result<T, NetError> {
        result.map_err(|error| match error {
            NetError::CorruptRing(_) => self.fail(error),
            error => error,
        })
    }

    fn end_grants(&mut self) {
        for shared in self.pages.all.iter_mut().filter(|p| p.granted) {
            shared.granted = self.xen.end(shared.grant).is_err();
        }
    }

    /// Sends one frame (1..=1514 bytes): copies it into a tx buffer and pushes it.
    /// `TxFull` when every buffer is in flight (see [`wait`](Self::wait)).
    pub fn send(&mut self, frame: &[u8]) -> Result<(), NetError> {
        let link = self.link()?;
        let result = self.tx.queue(&self.pages, frame).and_then(|()| self.tx.flush(&self.pages, link));
        self.guard(result)
    }

    /// Sends as many of `frames` as there is room for, with one push (and at most one
    /// notification); returns how many were queued. Stops at an oversized frame.
    pub fn send_batch(&mut self, frames: &[&[u8]]) -> Result<usize, NetError> {
        let link = self.link()?;
        let mut sent = 0;
        let mut result = Ok(());
        for frame in frames {
            match self.tx.queue(&self.pages, frame) {
                Ok(()) => sent += 1,
                Err(NetError::TxFull) => break,
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        let flushed = self.tx.flush(&self.pages, link);
        self.guard(result.and(flushed).map(|()| sent))
    }

    /// Takes the next received frame, if any, and hands it to `f` (no allocation).
    pub fn receive_with<R>(&mut self, f: impl FnOnce(&[u8]) -> R) -> Result<Option<R>, NetError> {
        let link = self.link()?;
        let found = self.rx.next_frame(&self.pages);
        if self.guard(found)?.is_none() {
            // Drained: give the backend every buffer back before the caller sleeps.
            self.rx.flush(&self.pages, link, true)?;
            return Ok(None);
        }
        Ok(self.rx.take(&self.pages, link, f))
    }

    /// Takes the next received frame, if any, as a new vector.
    pub fn receive(&mut self) -> Result<Option<Vec<u8>>, NetError> {
        self.receive_with(|frame| frame.to_vec())
    }

    /// Pushes what is queued, and reports what can be done without waiting.
    fn poll_ready(&mut self) -> Result<Ready, NetError> {
        let link = self.link()?;
        let result = (|| {
            self.rx.flush(&self.pages, link, true)?;
            self.tx.flush(&self.pages, link)?;
            let send = self.tx.blocked && self.tx.has_room(&self.pages)?;
            if send {
                self.tx.blocked = false;
            }
            let receive = self.rx.next_frame(&self.pages)?.is_some();
            Ok(Ready { receive, send })
        })();
        self.guard(result)
    }

    /// Waits until a frame can be received, a send refused with `TxFull` can succeed,
    /// or `limit` passes (then both are false). Fails once the backend is gone.
    pub async fn wait(&mut self, limit: Duration) -> Result<Ready, NetError> {
        let deadline = self.xen.now_ns().saturating_add(u64::try_from(limit.as_nanos()).unwrap_or(u64::MAX));
        loop {
            let ready = self.poll_ready()?;
            if ready.any() {
                return Ok(ready);
            }
            // Ask to be woken at the next response, then look once more.
            let mut more = self.rx.ring.arm(&self.pages);
            if self.tx.blocked {
                more = more.and_then(|rx| Ok(rx | self.tx.ring.arm(&self.pages)?));
            }
            if self.guard(more)? {
                continue;
            }
            let now = self.xen.now_ns();
            if now >= deadline {
                return Ok(Ready::default());
            }
            let remaining = Duration::from_nanos(deadline - now);
            match woken_by(self.xen, self.port, self.watch.as_ref(), remaining).await {
                Woken::Event | Woken::Timer | Woken::Watch(Err(XenstoreError::Timeout)) => {}
                Woken::Watch(Ok(_)) => self.check_backend().await?,
                Woken::Watch(Err(e)) => {
                    // The watch is dead; keep serving frames, report it once.
                    self.watch = None;
                    return Err(e.into());
                }
            }
        }
    }

    /// Reads the backend's state after its watch fired; anything but Connected means
    /// the rings are gone.
    async fn check_backend(&mut self) -> Result<(), NetError> {
        match self.device.backend_state().await {
            Ok(Some(State::Connected)) => Ok(()),
            Ok(state) => Err(self.fail(NetError::BackendGone { state })),
            Err(xenbus::Error::BadNode { .. }) => Err(self.fail(NetError::BackendGone { state: None })),
            Err(e) => Err(e.into()),
        }
    }

    /// Closes the device: Closing, a bounded wait for the backend to close, Closed;
    /// then the event channel and every grant. A page the backend still maps is
    /// leaked, never freed.
    pub async fn close(mut self) -> Result<(), NetError> {
        self.watch = None;
        let result = self.device.close().await;
        if core::mem::take(&mut self.port_open) {
            let _ = self.xen.close(self.port);
        }
        self.end_grants();
        Ok(result?)
    }
}

impl<X: Xen> Drop for Netfront<'_, X> {
    fn drop(&mut self) {
        if core::mem::take(&mut self.port_open) {
            let _ = self.xen.close(self.port);
        }
        self.end_grants();
        for shared in core::mem::take(&mut self.pages.all) {
            if shared.granted {
                // The backend still maps it: freeing it would hand it our next data.
                core::mem::forget(shared.page);
            }
        }
    }
}

impl<X: Xen> fmt::Debug for Netfront<'_, X> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Netfront")
            .field("node", &self.device.node)
            .field("mac", &EthernetAddress(self.mac))
            .field("stats", &self.stats())
            .field("broken", &self.broken)
            .finish()
    }
}

/// What ended a sleep in [`Netfront::wait`].
enum Woken {
    Event,
    Watch(XsResult<String>),
    Timer,
}

async fn woken_by<X: Xen>(xen: &X, port: Port, watch: Option<&X::Watch>, limit: Duration) -> Woken {
    let mut event = pin!(xen.wait(port));
    let mut timer = pin!(xen.sleep(limit));
    let mut watch = pin!(watch.map(|w| w.next(limit)));
    poll_fn(|cx| {
        if event.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Woken::Event);
        }
        if let Some(next) = watch.as_mut().as_pin_mut()
            && let Poll::Ready(result) = next.poll(cx)
        {
            return Poll::Ready(Woken::Watch(result));
        }
        if timer.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Woken::Timer);
        }
        Poll::Pending
    })
    .await
}

/// smoltcp's receive token: copies the pending frame out of its rx buffer.
pub struct NetfrontRxToken<'a, X: Xen> {
    rx: &'a mut RxQueue,
    pages: &'a Pages<X::Page>,
    link: Link<'a, X>,
}

/// smoltcp's transmit token: copies the built frame into a tx buffer and pushes it.
pub struct NetfrontTxToken<'a, X: Xen> {
    tx: &'a mut TxQueue,
    pages: &'a Pages<X::Page>,
    link: Link<'a, X>,
}

impl<X: Xen> phy::RxToken for NetfrontRxToken<'_, X> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        let mut f = Some(f);
        match self.rx.take(self.pages, self.link, |frame| (f.take().expect("called once"))(frame)) {
            Some(result) => result,
            // Not reached: the token exists only while a frame is pending.
            None => (f.take().expect("not called"))(&[]),
        }
    }
}

impl<X: Xen> phy::TxToken for NetfrontTxToken<'_, X> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        if len > MAX_FRAME_BYTES {
            // smoltcp keeps to the MTU; build the frame aside and drop it.
            self.tx.stats.tx_dropped += 1;
            return f(&mut vec![0; len]);
        }
        let result = f(&mut self.tx.scratch[..len]);
        // Lend the scratch buffer out of the queue for the copy (no allocation).
        let scratch = core::mem::take(&mut self.tx.scratch);
        match self.tx.queue(self.pages, &scratch[..len]) {
            // A failed notify means our own port is gone; the next wait reports it.
            Ok(()) => drop(self.tx.flush(self.pages, self.link)),
            // No room (smoltcp asked before the ring filled), or a corrupt ring the
            // next poll or wait reports.
            Err(_) => self.tx.stats.tx_dropped += 1,
        }
        self.tx.scratch = scratch;
        result
    }
}

/// The netfront as a smoltcp Ethernet device (MTU 1514 including the header).
impl<'x, X: Xen> phy::Device for Netfront<'x, X> {
    type RxToken<'a>
        = NetfrontRxToken<'a, X>
    where
        Self: 'a;
    type TxToken<'a>
        = NetfrontTxToken<'a, X>
    where
        Self: 'a;

    fn receive(&mut self, _timestamp: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        let link = self.link().ok()?;
        let found = self.rx.next_frame(&self.pages);
        match self.guard(found) {
            Ok(Some(_)) => {}
            Ok(None) => {
                let _ = self.rx.flush(&self.pages, link, true);
                return None;
            }
            Err(_) => return None,
        }
        let rx = NetfrontRxToken { rx: &mut self.rx, pages: &self.pages, link };
        let tx = NetfrontTxToken { tx: &mut self.tx, pages: &self.pages, link };
        Some((rx, tx))
    }

    fn transmit(&mut self, _timestamp: Instant) -> Option<Self::TxToken<'_>> {
        let link = self.link().ok()?;
        let room = self.tx.has_room(&self.pages);
        if !self.guard(room).ok()? {
            return None;
        }
        Some(NetfrontTxToken { tx: &mut self.tx, pages: &self.pages, link })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut capabilities = DeviceCapabilities::default();
        capabilities.medium = Medium::Ethernet;
        capabilities.max_transmission_unit = MAX_FRAME_BYTES;
        capabilities
    }
}
