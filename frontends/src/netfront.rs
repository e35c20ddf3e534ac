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

use crate::netif::{
    self, ExtraInfo, PAGE_SIZE, RX_RING_SIZE, RxRequest, RxResponse, TX_RING_SIZE, TxRequest, TxResponse,
};
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
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum NetError {
    /// The xenbus handshake or a xenstore operation failed.
    #[error("netfront: {0}")]
    Xenbus(xenbus::Error),
    /// An event channel, grant or page operation failed.
    #[error("netfront: {0}")]
    Xen(#[from] xen_seams::Error),
    /// `device/vif/N/mac` is not a unicast MAC address.
    #[error("netfront: {0:?} is not a unicast MAC address")]
    BadMac(String),
    /// The backend lacks a feature we require.
    #[error("netfront: the backend lacks {0}")]
    MissingFeature(&'static str),
    /// A buffer count outside 1..=256.
    #[error("netfront: buffer counts must be 1..=256")]
    BadConfig,
    /// A frame to send is empty or longer than [`MAX_FRAME_BYTES`].
    #[error("netfront: a {len}-byte frame is not 1..={MAX_FRAME_BYTES} bytes")]
    FrameSize { len: usize },
    /// Every tx buffer (or tx ring slot) is in flight; wait and retry.
    #[error("netfront: every tx buffer is in flight")]
    TxFull,
    /// The backend left Connected (its state then, None if its node vanished).
    #[error("netfront: the backend {}", xenbus::Departure(*state))]
    BackendGone { state: Option<State> },
    /// The backend's ring indexes are impossible; the device is shut down.
    #[error("netfront: corrupt ring: {0}")]
    CorruptRing(&'static str),
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
        self.blocked = !room;
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
    fn take<X: Xen, R>(&mut self, pages: &Pages<X::Page>, link: Link<'_, X>, f: impl FnOnce(&[u8]) -> R) -> Option<R> {
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
        let connected = async {
            net.device.wait_backend(State::Connected).await?;
            // The backend may have missed requests pushed before it bound the port.
            net.link()?.notify(&mut net.tx.stats)
        };
        match connected.await {
            Ok(()) => Ok(net),
            Err(error) => {
                // Tell the backend we are not there (as xenbus_dev_fatal does); the
                // drop then closes the port and ends (or keeps) the grants.
                let _ = net.device.switch_state(State::Closing).await;
                Err(error)
            }
        }
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
            self.tx.reclaim(&self.pages)?;
            let send = self.tx.blocked && self.tx.has_room(&self.pages)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netif::{EXTRA_FLAG_MORE, RX_SLOT_BYTES, RxRequest, TX_SLOT_BYTES, tx_flags};
    use alloc::collections::VecDeque;
    use alloc::rc::Rc;
    use core::cell::RefCell;
    use smoltcp::iface::{Config as IfaceConfig, Interface, SocketSet};
    use smoltcp::socket::tcp;
    use smoltcp::wire::{IpAddress, IpCidr};
    use xen_seams::sim::{Executor, MappedPage, PvDevice, SimXen, World};
    use xen_seams::{Clock, EventChannels, Xenstore};

    const FRONT: u16 = 5;
    const FRONT_NODE: &str = "/local/domain/5/device/vif/0";
    const BACK_NODE: &str = "/local/domain/0/backend/vif/5/0";
    const MAC: &str = "00:16:3e:5a:00:01";
    const SMALL: Config = Config { rx_buffers: 16, tx_buffers: 8 };

    /// The device under test, attached as libxl does ([`World::toolstack`]).
    const DEVICE: PvDevice = PvDevice { kind: "vif", devid: 0, frontend: FRONT, backend: 0 };

    fn front_node(world: &World, key: &str) -> Option<String> {
        world.xenstore_read(&format!("{FRONT_NODE}/{key}")).map(|v| String::from_utf8(v).unwrap())
    }

    /// What dom0's side of the wire holds and how the backend misbehaves.
    #[derive(Default)]
    struct Wire {
        to_guest: VecDeque<ToGuest>,
        from_guest: Vec<Vec<u8>>,
        /// Where in each rx page the backend copies a frame.
        rx_offset: u16,
        /// The next tx responses name an id that was never sent.
        tx_bad_ids: u32,
        /// Claim 1000 more rx responses than there are.
        corrupt_rx_prod: bool,
        /// Disconnect and go Closing once this many rx slots were used.
        close_after: Option<usize>,
        rx_slots_used: usize,
        /// Backend features to advertise besides feature-rx-copy.
        no_rx_copy: bool,
    }

    /// One use of an rx slot by the backend.
    enum ToGuest {
        Frame(Vec<u8>),
        /// A handmade response to the request in the slot (`id` None: echo its id).
        Response {
            id: Option<u16>,
            offset: u16,
            flags: u16,
            status: i16,
        },
        /// An extra-info slot.
        Extra {
            flags: u8,
        },
    }

    /// dom0's netback in copy mode, as far as the frontend can tell.
    struct Netback {
        xen: SimXen,
        tx_ring: MappedPage,
        rx_ring: MappedPage,
        port: Port,
        tx_req_cons: u32,
        tx_rsp_prod: u32,
        rx_req_cons: u32,
        rx_rsp_prod: u32,
    }

    async fn read_number(xen: &SimXen, key: &str) -> u32 {
        xen.read_string(Tx::NONE, &format!("{FRONT_NODE}/{key}")).await.unwrap().parse().unwrap()
    }

    async fn front_state(xen: &SimXen) -> Option<State> {
        xen.read_string(Tx::NONE, &format!("{FRONT_NODE}/state")).await.ok().and_then(|s| State::parse(&s))
    }

    impl Netback {
        /// Publishes features and InitWait, waits for the frontend's Connected, maps
        /// the rings, binds the event channel and goes Connected.
        async fn connect(xen: SimXen, wire: &Rc<RefCell<Wire>>) -> Option<Netback> {
            let mut features = vec![
                ("feature-sg", "1"),
                ("feature-gso-tcpv4", "1"),
                ("feature-split-event-channels", "1"),
                ("multi-queue-max-queues", "4"),
            ];
            if !wire.borrow().no_rx_copy {
                features.push(("feature-rx-copy", "1"));
            }
            for (key, value) in features {
                xen.write(Tx::NONE, &format!("{BACK_NODE}/{key}"), value.as_bytes()).await.unwrap();
            }
            xen.write(Tx::NONE, &format!("{BACK_NODE}/state"), b"2").await.unwrap();
            loop {
                match front_state(&xen).await {
                    Some(State::Connected) => break,
                    Some(State::Closing | State::Closed) => return None,
                    _ => xen.sleep(Duration::from_millis(1)).await,
                }
            }
            assert_eq!(read_number(&xen, "request-rx-copy").await, 1);
            let tx_ring = xen.map_grant(FRONT, GrantRef(read_number(&xen, "tx-ring-ref").await), true).unwrap();
            let rx_ring = xen.map_grant(FRONT, GrantRef(read_number(&xen, "rx-ring-ref").await), true).unwrap();
            let port = xen.bind_interdomain(FRONT, read_number(&xen, "event-channel").await).unwrap();
            xen.write(Tx::NONE, &format!("{BACK_NODE}/state"), b"4").await.unwrap();
            Some(Netback {
                xen,
                tx_ring,
                rx_ring,
                port,
                tx_req_cons: 0,
                tx_rsp_prod: 0,
                rx_req_cons: 0,
                rx_rsp_prod: 0,
            })
        }

        /// Sends every queued tx request's frame onto the wire and answers it.
        fn take_tx(&mut self, wire: &mut Wire) -> bool {
            let prod = self.tx_ring.read_u32(ring::REQ_PROD);
            assert!(prod.wrapping_sub(self.tx_rsp_prod) <= TX_RING_SIZE, "the frontend overfilled the tx ring");
            let busy = prod != self.tx_req_cons;
            while self.tx_req_cons != prod {
                let mut bytes = [0u8; TX_SLOT_BYTES];
                self.tx_ring.read(ring::slot_offset(self.tx_req_cons, TX_RING_SIZE, TX_SLOT_BYTES), &mut bytes);
                self.tx_req_cons = self.tx_req_cons.wrapping_add(1);
                let request = TxRequest::new_checked(&bytes[..]).unwrap();
                let (offset, size) = (usize::from(request.offset()), usize::from(request.size()));
                assert!(size > 0 && offset + size <= PAGE_SIZE, "a tx request leaves its page");
                assert_eq!(request.flags() & (tx_flags::MORE_DATA | tx_flags::EXTRA_INFO), 0);
                let page = self.xen.map_grant(FRONT, GrantRef(request.gref()), false).unwrap();
                let mut frame = vec![0; size];
                page.read(offset, &mut frame);
                drop(page);
                wire.from_guest.push(frame);
                let mut id = request.id();
                if wire.tx_bad_ids > 0 {
                    wire.tx_bad_ids -= 1;
                    id ^= 0x4000;
                }
                let mut response = [0u8; 4];
                let mut view = TxResponse::new_unchecked(&mut response[..]);
                view.set_id(id);
                view.set_status(status::OKAY);
                self.tx_ring.write(ring::slot_offset(self.tx_rsp_prod, TX_RING_SIZE, TX_SLOT_BYTES), &response);
                self.tx_rsp_prod = self.tx_rsp_prod.wrapping_add(1);
            }
            Self::push(&self.xen, self.port, &self.tx_ring, self.tx_rsp_prod);
            busy
        }

        /// Uses rx slots for what waits on the wire, while the frontend has posted some.
        fn deliver(&mut self, wire: &mut Wire) -> bool {
            let mut busy = false;
            loop {
                if wire.close_after.is_some_and(|n| wire.rx_slots_used >= n) {
                    break;
                }
                let prod = self.rx_ring.read_u32(ring::REQ_PROD);
                if prod == self.rx_req_cons {
                    break;
                }
                let Some(item) = wire.to_guest.pop_front() else { break };
                busy = true;
                wire.rx_slots_used += 1;
                let mut bytes = [0u8; RX_SLOT_BYTES];
                self.rx_ring.read(ring::slot_offset(self.rx_req_cons, RX_RING_SIZE, RX_SLOT_BYTES), &mut bytes);
                self.rx_req_cons = self.rx_req_cons.wrapping_add(1);
                let request = RxRequest::new_checked(&bytes[..]).unwrap();
                let mut response = [0u8; RX_SLOT_BYTES];
                match item {
                    ToGuest::Frame(frame) => {
                        let page = self.xen.map_grant(FRONT, GrantRef(request.gref()), true).unwrap();
                        page.write(usize::from(wire.rx_offset), &frame);
                        let mut view = RxResponse::new_unchecked(&mut response[..]);
                        view.set_id(request.id());
                        view.set_offset(wire.rx_offset);
                        view.set_flags(rx_flags::DATA_VALIDATED);
                        view.set_status(frame.len() as i16);
                    }
                    ToGuest::Response { id, offset, flags, status } => {
                        let mut view = RxResponse::new_unchecked(&mut response[..]);
                        view.set_id(id.unwrap_or(request.id()));
                        view.set_offset(offset);
                        view.set_flags(flags);
                        view.set_status(status);
                    }
                    ToGuest::Extra { flags } => {
                        let mut view = ExtraInfo::new_unchecked(&mut response[..]);
                        view.set_kind(netif::extra_type::GSO);
                        view.set_flags(flags);
                    }
                }
                self.rx_ring.write(ring::slot_offset(self.rx_rsp_prod, RX_RING_SIZE, RX_SLOT_BYTES), &response);
                self.rx_rsp_prod = self.rx_rsp_prod.wrapping_add(1);
            }
            let mut prod = self.rx_rsp_prod;
            if wire.corrupt_rx_prod {
                prod = prod.wrapping_add(1000);
            }
            Self::push(&self.xen, self.port, &self.rx_ring, prod);
            busy
        }

        /// RING_PUSH_RESPONSES_AND_CHECK_NOTIFY.
        fn push(xen: &SimXen, port: Port, page: &MappedPage, new: u32) {
            let old = page.read_u32(ring::RSP_PROD);
            page.write_u32(ring::RSP_PROD, new);
            if ring::needs_notify(old, new, page.read_u32(ring::RSP_EVENT)) {
                xen.notify(port).unwrap();
            }
        }

        /// RING_FINAL_CHECK_FOR_REQUESTS on tx (and on rx if frames wait), then sleeps
        /// until notified or `limit`.
        async fn idle(&mut self, wire: &Rc<RefCell<Wire>>, limit: Duration) {
            self.tx_ring.write_u32(ring::REQ_EVENT, self.tx_req_cons.wrapping_add(1));
            if self.tx_ring.read_u32(ring::REQ_PROD) != self.tx_req_cons {
                return;
            }
            if !wire.borrow().to_guest.is_empty() {
                self.rx_ring.write_u32(ring::REQ_EVENT, self.rx_req_cons.wrapping_add(1));
                if self.rx_ring.read_u32(ring::REQ_PROD) != self.rx_req_cons {
                    return;
                }
            }
            let mut event = core::pin::pin!(self.xen.wait(self.port));
            let mut timer = core::pin::pin!(self.xen.sleep(limit));
            poll_fn(|cx| {
                if event.as_mut().poll(cx).is_ready() || timer.as_mut().poll(cx).is_ready() {
                    Poll::Ready(())
                } else {
                    Poll::Pending
                }
            })
            .await;
        }

        /// Unmaps the rings, closes the port and goes to `state`.
        async fn disconnect(self, state: State) {
            let Netback { xen, tx_ring, rx_ring, port, .. } = self;
            drop((tx_ring, rx_ring));
            xen.close(port).unwrap();
            let text = (state as u32).to_string();
            xen.write(Tx::NONE, &format!("{BACK_NODE}/state"), text.as_bytes()).await.unwrap();
        }
    }

    /// The backend's life: connect, move frames both ways (calling `peer` each round,
    /// which returns when it next wants a call), disconnect when the frontend closes
    /// or `close_after` is reached.
    async fn netback(back: SimXen, wire: Rc<RefCell<Wire>>, mut peer: impl FnMut(&mut Wire) -> Duration) {
        let Some(mut nb) = Netback::connect(back.clone(), &wire).await else { return };
        loop {
            let took = nb.take_tx(&mut wire.borrow_mut());
            let busy = nb.deliver(&mut wire.borrow_mut()) | took;
            let delay = peer(&mut wire.borrow_mut());
            let closing = {
                let wire = wire.borrow();
                wire.close_after.is_some_and(|n| wire.rx_slots_used >= n)
            };
            if closing {
                nb.disconnect(State::Closing).await;
                return;
            }
            if !busy {
                if front_state(&back).await.is_some_and(|s| s >= State::Closing) {
                    nb.disconnect(State::Closed).await;
                    return;
                }
                nb.idle(&wire, delay).await;
            }
        }
    }

    fn quiet_peer(_: &mut Wire) -> Duration {
        Duration::from_millis(50)
    }

    /// Distinct frames: the index in the first bytes, then a pattern.
    fn frame(index: usize, len: usize) -> Vec<u8> {
        let mut frame: Vec<u8> = (0..len).map(|i| (i * 7 + index) as u8).collect();
        for (i, byte) in (index as u32).to_le_bytes().iter().enumerate().take(len) {
            frame[i] = *byte;
        }
        frame
    }

    fn expected_grants(config: Config) -> usize {
        2 + usize::from(config.tx_buffers).div_ceil(2) + usize::from(config.rx_buffers)
    }

    /// Receives `count` frames, waiting (bounded) when none is there.
    async fn receive_frames(net: &mut Netfront<'_, SimXen>, count: usize) -> Vec<Vec<u8>> {
        let mut frames = Vec::new();
        while frames.len() < count {
            match net.receive().unwrap() {
                Some(frame) => frames.push(frame),
                None => assert!(net.wait(Duration::from_secs(5)).await.unwrap().receive, "no frame came"),
            }
        }
        frames
    }

    /// Sends every frame, waiting (bounded) while the tx pool is full.
    async fn send_frames(net: &mut Netfront<'_, SimXen>, frames: &[Vec<u8>]) {
        for frame in frames {
            loop {
                match net.send(frame) {
                    Ok(()) => break,
                    Err(NetError::TxFull) => assert!(net.wait(Duration::from_secs(5)).await.unwrap().send),
                    Err(e) => panic!("{e}"),
                }
            }
        }
    }

    fn run(executor: &mut Executor<'_>) {
        executor.run().unwrap_or_else(|stuck| panic!("{stuck}"));
    }

    #[test]
    fn connect_negotiates_copy_mode_one_queue_and_nothing_more() {
        let world = World::new();
        world.toolstack(DEVICE, &[("mac", MAC)]);
        let (front, back) = (world.domain(FRONT), world.domain(0));
        let wire = Rc::new(RefCell::new(Wire::default()));
        let mut executor = Executor::new(&world);
        executor.spawn_background("netback", netback(back, wire.clone(), quiet_peer));
        let checked = executor.spawn("netfront", async {
            let net = Netfront::connect_with(&front, 0, SMALL).await.unwrap();
            assert_eq!(net.mac(), [0x00, 0x16, 0x3e, 0x5a, 0x00, 0x01]);
            assert_eq!(net.live_grants(), expected_grants(SMALL));
            assert_eq!(world.grants(FRONT).len(), expected_grants(SMALL));
            let ring_ref: u32 = front_node(&world, "rx-ring-ref").unwrap().parse().unwrap();
            let rx_ring = world.domain(0).map_grant(FRONT, GrantRef(ring_ref), false).unwrap();
            assert_eq!(rx_ring.read_u32(ring::REQ_PROD), 16, "every rx buffer posted at connect");
            drop(rx_ring);
            let negotiated =
                ["request-rx-copy", "feature-rx-notify", "feature-no-csum-offload", "multi-queue-num-queues"];
            for key in negotiated {
                assert_eq!(front_node(&world, key).as_deref(), Some("1"), "{key}");
            }
            for key in ["feature-sg", "feature-gso-tcpv4", "feature-gso-tcpv6", "event-channel-tx", "queue-0"] {
                assert_eq!(front_node(&world, key), None, "{key} must not be advertised");
            }
            assert_eq!(front_node(&world, "state").as_deref(), Some("4"));
            net.close().await
        });
        run(&mut executor);
        assert_eq!(checked.take(), Some(Ok(())));
        assert_eq!(front_node(&world, "state").as_deref(), Some("6"));
        assert_eq!(world.grants(FRONT), []);
        assert_eq!(world.dangling_grants(), []);
        assert!(world.ports(FRONT).is_empty());
    }

    #[test]
    fn a_backend_without_rx_copy_or_a_bad_mac_is_refused_cleanly() {
        let world = World::new();
        world.toolstack(DEVICE, &[("mac", MAC)]);
        let (front, back) = (world.domain(FRONT), world.domain(0));
        let wire = Rc::new(RefCell::new(Wire { no_rx_copy: true, ..Wire::default() }));
        let mut executor = Executor::new(&world);
        executor.spawn_background("netback", netback(back, wire, quiet_peer));
        let result = executor.spawn("netfront", async { Netfront::connect(&front, 0).await.map(|_| ()) });
        run(&mut executor);
        assert_eq!(result.take(), Some(Err(NetError::MissingFeature("feature-rx-copy"))));
        assert_eq!(world.grants(FRONT), []);

        for bad in
            ["01:16:3e:00:00:01", "00:16:3e:00:00", "00:16:3e:00:00:01:02", "00:16:3e:0g:00:01", "", "00:16:3e:100:0:1"]
        {
            world.xenstore_write(&format!("{FRONT_NODE}/mac"), bad.as_bytes()).unwrap();
            let result = world.block_on(async { Netfront::connect(&front, 0).await.map(|_| ()) }).unwrap();
            match result {
                Err(NetError::BadMac(text)) => assert_eq!(text, bad),
                Err(NetError::Xenbus(xenbus::Error::Xenstore(_))) if bad.is_empty() => {}
                other => panic!("{bad:?}: {other:?}"),
            }
        }
        assert_eq!(parse_mac(" 0:16:3e:a:b:c\n"), Ok([0, 0x16, 0x3e, 0xa, 0xb, 0xc]));
        assert_eq!(
            world
                .block_on(async {
                    Netfront::connect_with(&front, 0, Config { rx_buffers: 0, tx_buffers: 1 }).await.map(|_| ())
                })
                .unwrap(),
            Err(NetError::BadConfig)
        );
    }

    #[test]
    fn frames_of_every_edge_size_cross_both_ways() {
        let world = World::new();
        world.toolstack(DEVICE, &[("mac", MAC)]);
        let (front, back) = (world.domain(FRONT), world.domain(0));
        let sizes = [1, 2, 13, 14, 60, 64, 1000, 1499, 1513, 1514];
        let to_guest: Vec<Vec<u8>> = sizes.iter().enumerate().map(|(i, &len)| frame(i, len)).collect();
        let wire = Rc::new(RefCell::new(Wire::default()));
        wire.borrow_mut().to_guest.extend(to_guest.iter().cloned().map(ToGuest::Frame));
        let mut executor = Executor::new(&world);
        executor.spawn_background("netback", netback(back, wire.clone(), quiet_peer));
        let wire_in_test = wire.clone();
        let outcome = executor.spawn("netfront", async move {
            let mut net = Netfront::connect_with(&front, 0, SMALL).await.unwrap();
            let received = receive_frames(&mut net, sizes.len()).await;
            let from_guest: Vec<Vec<u8>> = sizes.iter().enumerate().map(|(i, &len)| frame(100 + i, len)).collect();
            send_frames(&mut net, &from_guest).await;
            assert_eq!(net.send(&[]), Err(NetError::FrameSize { len: 0 }));
            assert_eq!(net.send(&[0; MAX_FRAME_BYTES + 1]), Err(NetError::FrameSize { len: MAX_FRAME_BYTES + 1 }));
            // Frames the backend copies at an offset, up to the page's last byte.
            wire_in_test.borrow_mut().rx_offset = (PAGE_SIZE - MAX_FRAME_BYTES) as u16;
            wire_in_test.borrow_mut().to_guest.push_back(ToGuest::Frame(frame(7, MAX_FRAME_BYTES)));
            wire_in_test.borrow_mut().to_guest.push_back(ToGuest::Frame(frame(8, 1)));
            let at_end = receive_frames(&mut net, 2).await;
            assert_eq!(at_end, [frame(7, MAX_FRAME_BYTES), frame(8, 1)]);
            // Let the backend answer every tx request, then close.
            while net.stats().tx_packets < sizes.len() as u64 {
                net.wait(Duration::from_millis(10)).await.unwrap();
            }
            let stats = net.stats();
            net.close().await.unwrap();
            (received, from_guest, stats)
        });
        run(&mut executor);
        let (received, from_guest, stats) = outcome.take().unwrap();
        assert_eq!(received, to_guest);
        assert_eq!(wire.borrow().from_guest, from_guest);
        let bytes: usize = sizes.iter().sum();
        assert_eq!((stats.rx_packets, stats.tx_packets, stats.tx_bytes), (12, 10, bytes as u64));
        assert_eq!(stats.rx_bytes, (bytes + MAX_FRAME_BYTES + 1) as u64);
        assert_eq!((stats.bad_responses, stats.rx_dropped, stats.tx_errors, stats.tx_dropped), (0, 0, 0, 0));
        assert_eq!(world.grants(FRONT), []);
        assert_eq!(world.dangling_grants(), []);
    }

    #[test]
    fn thousands_of_frames_refill_the_rx_ring_with_a_fixed_set_of_grants() {
        let world = World::new();
        world.toolstack(DEVICE, &[("mac", MAC)]);
        let (front, back) = (world.domain(FRONT), world.domain(0));
        const FRAMES: usize = 5000;
        let to_guest: Vec<Vec<u8>> = (0..FRAMES).map(|i| frame(i, 60 + i % 1455)).collect();
        let from_guest: Vec<Vec<u8>> = (0..FRAMES).map(|i| frame(i + FRAMES, 1 + i % 1514)).collect();
        let wire = Rc::new(RefCell::new(Wire::default()));
        wire.borrow_mut().to_guest.extend(to_guest.iter().cloned().map(ToGuest::Frame));
        let mut executor = Executor::new(&world);
        executor.spawn_background("netback", netback(back, wire.clone(), quiet_peer));
        let world_in_test = world.clone();
        let sent = from_guest.clone();
        let outcome = executor.spawn("netfront", async move {
            let mut net = Netfront::connect_with(&front, 0, SMALL).await.unwrap();
            let grants = world_in_test.grants(FRONT);
            let mut received = Vec::new();
            let mut next_send = 0;
            while received.len() < FRAMES || next_send < FRAMES {
                while next_send < FRAMES && net.send(&sent[next_send]).is_ok() {
                    next_send += 1;
                }
                while let Some(frame) = net.receive().unwrap() {
                    received.push(frame);
                    if received.len() % 997 == 0 {
                        assert_eq!(world_in_test.grants(FRONT).len(), grants.len(), "grants stay fixed");
                        assert_eq!(net.live_grants(), expected_grants(SMALL));
                    }
                }
                if received.len() < FRAMES || next_send < FRAMES {
                    assert!(net.wait(Duration::from_secs(5)).await.unwrap().any(), "progress without timeouts");
                }
            }
            assert_eq!(
                world_in_test.grants(FRONT).iter().map(|g| g.grant).collect::<Vec<_>>(),
                grants.iter().map(|g| g.grant).collect::<Vec<_>>(),
                "the same grants, reused"
            );
            let stats = net.stats();
            net.close().await.unwrap();
            (received, stats)
        });
        run(&mut executor);
        let (received, stats) = outcome.take().unwrap();
        assert!(received == to_guest, "every frame arrived intact and in order");
        assert!(wire.borrow().from_guest == from_guest, "every frame left intact and in order");
        assert_eq!((stats.rx_packets, stats.bad_responses, stats.rx_dropped), (FRAMES as u64, 0, 0));
        assert!(stats.tx_packets >= FRAMES as u64 - u64::from(SMALL.tx_buffers));
        // Batching: far fewer kicks than frames.
        assert!(stats.notifications < (FRAMES / 2) as u64, "{stats:?}");
        assert!(world.now_ns() < 1_000_000_000, "events, not timeouts, moved the frames");
        assert_eq!(world.dangling_grants(), []);
        assert_eq!(world.grants(FRONT), []);
    }

    #[test]
    fn bad_responses_are_dropped_and_counted_and_traffic_goes_on() {
        let world = World::new();
        world.toolstack(DEVICE, &[("mac", MAC)]);
        let (front, back) = (world.domain(FRONT), world.domain(0));
        let wire = Rc::new(RefCell::new(Wire::default()));
        let bad = |id, offset, flags, status| ToGuest::Response { id, offset, flags, status };
        wire.borrow_mut().to_guest.extend([
            ToGuest::Frame(frame(0, 100)),
            bad(Some(999), 0, 0, 60),                  // unknown id
            bad(Some(3), 0, 0, 60),                    // an id posted in another slot
            bad(None, 0, 0, 4097),                     // oversize
            bad(None, 4000, 0, 200),                   // runs off the page
            bad(None, 0xffff, 0, 1),                   // offset outside the page
            bad(None, 0, 0, 0),                        // empty
            bad(None, 0, 0, status::ERROR),            // error status: a drop
            bad(None, 0, 0, status::DROPPED),          // a drop
            bad(None, 0, rx_flags::MORE_DATA, 100),    // fragments we never asked for:
            bad(None, 0, rx_flags::MORE_DATA, 100),    //   one packet in three slots,
            bad(None, 0, 0, 100),                      //   dropped as one
            bad(None, 0, rx_flags::EXTRA_INFO, 60),    // a frame with two extra slots:
            ToGuest::Extra { flags: EXTRA_FLAG_MORE }, //   the extras are skipped
            ToGuest::Extra { flags: 0 },
            ToGuest::Frame(frame(1, 1514)),
        ]);
        wire.borrow_mut().tx_bad_ids = 2;
        let mut executor = Executor::new(&world);
        executor.spawn_background("netback", netback(back, wire.clone(), quiet_peer));
        let wire_in_test = wire.clone();
        let outcome = executor.spawn("netfront", async move {
            let mut net = Netfront::connect_with(&front, 0, SMALL).await.unwrap();
            let first = receive_frames(&mut net, 3).await;
            // Tx: two responses name ids never sent; those buffers stay in flight.
            let frames: Vec<Vec<u8>> = (0..40).map(|i| frame(i, 200)).collect();
            send_frames(&mut net, &frames).await;
            while wire_in_test.borrow().from_guest.len() < frames.len() {
                net.wait(Duration::from_millis(10)).await.unwrap();
            }
            net.wait(Duration::from_millis(10)).await.unwrap();
            let stats = net.stats();
            assert!(net.error().is_none());
            net.close().await.unwrap();
            (first, stats)
        });
        run(&mut executor);
        let (first, stats) = outcome.take().unwrap();
        assert_eq!(first[0], frame(0, 100));
        assert_eq!(first[1].len(), 60, "the frame before the extras");
        assert_eq!(first[2], frame(1, 1514), "the extra slots skipped, not delivered");
        assert_eq!(stats.bad_responses, 2 + 4 + 2, "{stats:?}");
        assert_eq!(stats.rx_dropped, 3, "{stats:?}");
        assert_eq!(stats.tx_packets, 38);
        assert_eq!(world.grants(FRONT), [], "buffers lost to bad ids are still ended at close");
        assert_eq!(world.dangling_grants(), []);
    }

    #[test]
    fn backend_closing_mid_traffic_fails_sends_and_receives_and_ends_the_grants() {
        let world = World::new();
        world.toolstack(DEVICE, &[("mac", MAC)]);
        let (front, back) = (world.domain(FRONT), world.domain(0));
        let to_guest: Vec<Vec<u8>> = (0..3000).map(|i| frame(i, 64 + i % 1400)).collect();
        let wire = Rc::new(RefCell::new(Wire { close_after: Some(1000), ..Wire::default() }));
        wire.borrow_mut().to_guest.extend(to_guest.iter().cloned().map(ToGuest::Frame));
        let mut executor = Executor::new(&world);
        executor.spawn_background("netback", netback(back, wire.clone(), quiet_peer));
        let world_in_test = world.clone();
        let outcome = executor.spawn("netfront", async move {
            let mut net = Netfront::connect_with(&front, 0, SMALL).await.unwrap();
            let mut received = Vec::new();
            let mut index = 0;
            let error = loop {
                while net.send(&frame(index, 300)).is_ok() {
                    index += 1;
                }
                match net.receive() {
                    Ok(Some(frame)) => received.push(frame),
                    Ok(None) => {
                        if let Err(e) = net.wait(Duration::from_secs(5)).await {
                            break e;
                        }
                    }
                    Err(e) => break e,
                }
            };
            let gone = NetError::BackendGone { state: Some(State::Closing) };
            assert_eq!(error, gone);
            assert_eq!(net.send(&frame(0, 60)), Err(gone.clone()));
            assert_eq!(net.receive(), Err(gone.clone()));
            assert_eq!(net.wait(Duration::from_secs(1)).await, Err(gone.clone()));
            assert_eq!(net.error(), Some(&gone));
            assert_eq!(net.live_grants(), 0, "the backend unmapped everything: all grants ended");
            assert_eq!(world_in_test.grants(FRONT), []);
            net.close().await.unwrap();
            received
        });
        run(&mut executor);
        let received = outcome.take().unwrap();
        assert!(received == to_guest[..1000], "frames delivered before the close still arrive");
        assert_eq!(front_node(&world, "state").as_deref(), Some("6"));
        assert_eq!(world.dangling_grants(), []);
        assert!(world.ports(FRONT).is_empty());
    }

    #[test]
    fn a_vanished_backend_is_detected_and_its_mapped_rings_are_never_freed() {
        let world = World::new();
        world.toolstack(DEVICE, &[("mac", MAC)]);
        let (front, back) = (world.domain(FRONT), world.domain(0));
        let wire = Rc::new(RefCell::new(Wire::default()));
        let mut executor = Executor::new(&world);
        executor.spawn_background("netback", netback(back, wire.clone(), quiet_peer));
        let world_in_test = world.clone();
        let outcome = executor.spawn("netfront", async move {
            let mut net = Netfront::connect_with(&front, 0, SMALL).await.unwrap();
            net.send(&frame(1, 100)).unwrap();
            assert_eq!(net.wait(Duration::from_millis(100)).await, Ok(Ready::default()));
            world_in_test.xenstore_rm(BACK_NODE).unwrap();
            let error = net.wait(Duration::from_secs(5)).await;
            // The backend (crashed, say) still maps both rings: those grants stay.
            let live = net.live_grants();
            drop(net);
            (error, live)
        });
        run(&mut executor);
        let (error, live) = outcome.take().unwrap();
        assert_eq!(error, Err(NetError::BackendGone { state: None }));
        assert_eq!(live, 2);
        let left = world.grants(FRONT);
        assert_eq!(left.len(), 2);
        assert!(left.iter().all(|g| g.mappings == 1 && !g.page_dropped), "{left:?}");
        assert_eq!(world.dangling_grants(), []);
        assert_eq!(wire.borrow().from_guest, [frame(1, 100)]);
    }

    #[test]
    fn a_corrupt_response_index_shuts_the_device_down_with_an_error() {
        let world = World::new();
        world.toolstack(DEVICE, &[("mac", MAC)]);
        let (front, back) = (world.domain(FRONT), world.domain(0));
        let wire = Rc::new(RefCell::new(Wire::default()));
        wire.borrow_mut().to_guest.push_back(ToGuest::Frame(frame(0, 80)));
        let mut executor = Executor::new(&world);
        executor.spawn_background("netback", netback(back, wire.clone(), quiet_peer));
        let wire_in_test = wire.clone();
        let outcome = executor.spawn("netfront", async move {
            let mut net = Netfront::connect_with(&front, 0, SMALL).await.unwrap();
            assert_eq!(receive_frames(&mut net, 1).await, [frame(0, 80)]);
            wire_in_test.borrow_mut().corrupt_rx_prod = true;
            let error = net.wait(Duration::from_secs(5)).await;
            let after = (net.send(&frame(1, 60)), net.receive(), net.live_grants());
            net.close().await.unwrap();
            (error, after)
        });
        run(&mut executor);
        let corrupt = NetError::CorruptRing("more responses than requests");
        let (error, after) = outcome.take().unwrap();
        assert_eq!(error, Err(corrupt.clone()));
        assert_eq!(after, (Err(corrupt.clone()), Err(corrupt), 2), "only the mapped rings stay granted");
        assert_eq!(world.grants(FRONT), [], "ended at close, once the backend unmapped");
        assert_eq!(world.dangling_grants(), []);
    }

    /// A plain in-memory Ethernet device for the peer's smoltcp interface.
    #[derive(Default)]
    struct MemoryDevice {
        rx: VecDeque<Vec<u8>>,
        tx: Vec<Vec<u8>>,
    }

    struct MemoryRx(Vec<u8>);
    struct MemoryTx<'a>(&'a mut Vec<Vec<u8>>);

    impl phy::RxToken for MemoryRx {
        fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
            f(&self.0)
        }
    }

    impl phy::TxToken for MemoryTx<'_> {
        fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
            let mut frame = vec![0; len];
            let result = f(&mut frame);
            self.0.push(frame);
            result
        }
    }

    impl phy::Device for MemoryDevice {
        type RxToken<'a> = MemoryRx;
        type TxToken<'a> = MemoryTx<'a>;
        fn receive(&mut self, _: Instant) -> Option<(MemoryRx, MemoryTx<'_>)> {
            let frame = self.rx.pop_front()?;
            Some((MemoryRx(frame), MemoryTx(&mut self.tx)))
        }
        fn transmit(&mut self, _: Instant) -> Option<MemoryTx<'_>> {
            Some(MemoryTx(&mut self.tx))
        }
        fn capabilities(&self) -> DeviceCapabilities {
            let mut capabilities = DeviceCapabilities::default();
            capabilities.medium = Medium::Ethernet;
            capabilities.max_transmission_unit = MAX_FRAME_BYTES;
            capabilities
        }
    }

    fn instant(world: &World) -> Instant {
        Instant::from_millis((world.now_ns() / 1_000_000) as i64)
    }

    /// How long smoltcp may sleep, kept within 1..=100 ms.
    fn poll_delay(delay: Option<smoltcp::time::Duration>) -> Duration {
        let delay = delay.map_or(Duration::from_millis(100), |d| Duration::from_micros(d.total_micros()));
        delay.clamp(Duration::from_millis(1), Duration::from_millis(100))
    }

    fn tcp_socket() -> tcp::Socket<'static> {
        tcp::Socket::new(tcp::SocketBuffer::new(vec![0; 16 * 1024]), tcp::SocketBuffer::new(vec![0; 16 * 1024]))
    }

    /// The peer behind the backend: a smoltcp interface on 10.0.0.1 whose TCP port 7
    /// echoes what it receives.
    fn echo_peer(world: World) -> impl FnMut(&mut Wire) -> Duration {
        let mut device = MemoryDevice::default();
        let mac = EthernetAddress([0x02, 0, 0, 0, 0, 0x01]);
        let mut config = IfaceConfig::new(HardwareAddress::Ethernet(mac));
        config.random_seed = 7;
        let mut iface = Interface::new(config, &mut device, instant(&world));
        iface.update_ip_addrs(|addrs| addrs.push(IpCidr::new(IpAddress::v4(10, 0, 0, 1), 24)).unwrap());
        let mut sockets = SocketSet::new(vec![]);
        let server = sockets.add(tcp_socket());
        let mut echo: VecDeque<u8> = VecDeque::new();
        move |wire: &mut Wire| {
            device.rx.extend(wire.from_guest.drain(..));
            let now = instant(&world);
            iface.poll(now, &mut device, &mut sockets);
            let socket = sockets.get_mut::<tcp::Socket>(server);
            if !socket.is_open() {
                socket.listen(7).unwrap();
            }
            if socket.can_recv() {
                socket
                    .recv(|data| {
                        echo.extend(data.iter());
                        (data.len(), ())
                    })
                    .unwrap();
            }
            while socket.can_send() && !echo.is_empty() {
                let (front, _) = echo.as_slices();
                let n = socket.send_slice(front).unwrap();
                echo.drain(..n);
                if n == 0 {
                    break;
                }
            }
            if !socket.may_recv() && echo.is_empty() && socket.state() == tcp::State::CloseWait {
                socket.close();
            }
            iface.poll(now, &mut device, &mut sockets);
            wire.to_guest.extend(device.tx.drain(..).map(ToGuest::Frame));
            poll_delay(iface.poll_delay(now, &sockets))
        }
    }

    #[test]
    fn smoltcp_over_netfront_exchanges_64_kib_over_tcp_with_a_peer_behind_the_backend() {
        let world = World::new();
        world.toolstack(DEVICE, &[("mac", MAC)]);
        let (front, back) = (world.domain(FRONT), world.domain(0));
        let wire = Rc::new(RefCell::new(Wire::default()));
        let mut executor = Executor::new(&world);
        executor.spawn_background("netback + peer", netback(back, wire.clone(), echo_peer(world.clone())));
        let world_in_test = world.clone();
        let data: Vec<u8> = (0..64 * 1024).map(|i| (i * 31 % 251) as u8).collect();
        let sent = data.clone();
        let outcome = executor.spawn("netfront + smoltcp", async move {
            let world = world_in_test;
            let mut net = Netfront::connect(&front, 0).await.unwrap();
            let mut config = IfaceConfig::new(net.hardware_address());
            config.random_seed = 42;
            let mut iface = Interface::new(config, &mut net, instant(&world));
            iface.update_ip_addrs(|addrs| addrs.push(IpCidr::new(IpAddress::v4(10, 0, 0, 2), 24)).unwrap());
            let mut sockets = SocketSet::new(vec![]);
            let client = sockets.add(tcp_socket());
            let remote = (IpAddress::v4(10, 0, 0, 1), 7);
            sockets.get_mut::<tcp::Socket>(client).connect(iface.context(), remote, 49152).unwrap();
            let (mut written, mut echoed) = (0, Vec::new());
            while echoed.len() < sent.len() {
                assert!(world.now_ns() < 60_000_000_000, "the exchange stalled");
                let now = instant(&world);
                iface.poll(now, &mut net, &mut sockets);
                let socket = sockets.get_mut::<tcp::Socket>(client);
                if socket.can_send() && written < sent.len() {
                    written += socket.send_slice(&sent[written..]).unwrap();
                }
                if socket.can_recv() {
                    socket
                        .recv(|data| {
                            echoed.extend_from_slice(data);
                            (data.len(), ())
                        })
                        .unwrap();
                }
                iface.poll(now, &mut net, &mut sockets);
                let delay = poll_delay(iface.poll_delay(now, &sockets));
                net.wait(delay).await.unwrap();
            }
            sockets.get_mut::<tcp::Socket>(client).close();
            let stats = net.stats();
            net.close().await.unwrap();
            (echoed, stats)
        });
        run(&mut executor);
        let (echoed, stats) = outcome.take().unwrap();
        assert!(echoed == data, "64 KiB went to the peer and came back intact");
        assert!(stats.rx_bytes > 64 * 1024 && stats.tx_bytes > 64 * 1024, "{stats:?}");
        assert_eq!((stats.bad_responses, stats.rx_dropped, stats.tx_errors, stats.tx_dropped), (0, 0, 0, 0));
        assert_eq!(world.grants(FRONT), []);
        assert_eq!(world.dangling_grants(), []);
    }

    #[test]
    fn a_backend_that_never_connects_times_out_and_leaves_nothing_behind() {
        let world = World::new();
        world.toolstack(DEVICE, &[("mac", MAC)]);
        let front = world.domain(FRONT);
        world.xenstore_write(&format!("{BACK_NODE}/feature-rx-copy"), b"1").unwrap();
        world.xenstore_write(&format!("{BACK_NODE}/state"), b"2").unwrap();
        let result = world.block_on(async { Netfront::connect_with(&front, 0, SMALL).await.map(|_| ()) }).unwrap();
        let timeout = xenbus::Error::Timeout { waiting_for: State::Connected, last: Some(State::InitWait) };
        assert_eq!(result, Err(NetError::Xenbus(timeout)));
        assert!(world.now_ns() >= xenbus::BACKEND_WAIT.as_nanos() as u64, "bounded by the xenbus wait");
        assert_eq!(front_node(&world, "state").as_deref(), Some("5"));
        assert_eq!(world.grants(FRONT), []);
        assert_eq!(world.dangling_grants(), []);
        assert!(world.ports(FRONT).is_empty());
    }
}
