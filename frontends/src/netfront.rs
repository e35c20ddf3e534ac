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
//!
//! Where things are: `connect` (the handshake, the close), `buffers` (the shared pages),
//! `tx` and `rx` (the two queues over their [`FrontRing`](crate::ring::FrontRing)s),
//! `phy` (the smoltcp device), and [`sim`] (feature `sim`): a netback with a scriptable
//! wire, for host tests.

mod buffers;
mod connect;
mod phy;
mod rx;
#[cfg(any(test, feature = "sim"))]
pub mod sim;
#[cfg(test)]
mod tests;
mod tx;

pub use phy::{NetfrontRxToken, NetfrontTxToken};

use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;
use core::future::poll_fn;
use core::pin::pin;
use core::task::Poll;
use core::time::Duration;

use smoltcp::wire::{EthernetAddress, HardwareAddress};
use xen_seams::{Port, Xen, XenstoreError, XenstoreWatch, XsResult};

use crate::ring::TooManyResponses;
use crate::xenbus::{self, Device, State};
use buffers::{Link, Pages};
use rx::RxQueue;
use tx::TxQueue;

/// The largest frame we send or expect: a 1500-byte MTU plus the Ethernet header
/// (no FCS), which is smoltcp's Ethernet "MTU".
pub const MAX_FRAME_BYTES: usize = 1514;

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

/// The error a ring whose response producer runs past our requests gets.
fn corrupt_ring(_: TooManyResponses) -> NetError {
    NetError::CorruptRing("more responses than requests")
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
            let rx_ring = self.pages.ring(buffers::RX_RING_PAGE);
            let mut more = self.rx.ring.final_check_for_responses(rx_ring);
            if self.tx.blocked {
                let tx_ring = self.pages.ring(buffers::TX_RING_PAGE);
                more = more.and_then(|rx| Ok(rx | self.tx.ring.final_check_for_responses(tx_ring)?));
            }
            if self.guard(more.map_err(corrupt_ring))? {
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
