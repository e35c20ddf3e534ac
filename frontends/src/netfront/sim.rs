//! A netback for host tests (feature `sim`): dom0's netback in copy mode, as far as
//! a [`Netfront`](super::Netfront) in the simulated Xen can tell, with a scriptable
//! wire behind it and faults to inject.
//!
//! ```text
//! let world = World::new();
//! let device = PvDevice { kind: "vif", devid: 0, frontend: 5, backend: 0 };
//! world.toolstack(device, &[("mac", "00:16:3e:5a:00:01")]);   // what xl writes first
//! let wire = Rc::new(RefCell::new(Wire::default()));          // frames both ways
//! executor.spawn_background("netback", netback(world.domain(0), device, wire.clone(), quiet_peer));
//! let net = Netfront::connect(&world.domain(5), 0).await?;
//! ```
//!
//! The backend publishes the features Linux's netback does (it offers more than the
//! frontend takes) and InitWait, waits for the frontend's Connected, maps both rings,
//! binds the event channel and goes Connected. Then, each round, it sends the frames
//! of the tx ring onto the wire ([`Wire::from_guest`]), uses posted rx buffers for
//! what waits in [`Wire::to_guest`], calls the peer, and sleeps until notified or the
//! peer's delay. It disconnects (unmaps, closes its port) when the frontend closes, or
//! goes Closing once [`Wire::close_after`] rx slots were used.

use alloc::collections::VecDeque;
use alloc::format;
use alloc::rc::Rc;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;
use core::cell::RefCell;
use core::future::poll_fn;
use core::pin::pin;
use core::task::Poll;
use core::time::Duration;

use xen_seams::sim::{MappedPage, PvDevice, SimXen};
use xen_seams::{Clock, DomId, EventChannels, GrantRef, Port, SharedPage, Tx, Xenstore};

use crate::netif::{
    self, ExtraInfo, PAGE_SIZE, RX_RING, RX_SLOT_BYTES, RxRequest, RxResponse, TX_RING, TX_SLOT_BYTES, TxRequest,
    TxResponse, rx_flags, status, tx_flags,
};
use crate::ring::BackRing;
use crate::xenbus::State;

/// What dom0's side of the wire holds and how the backend misbehaves.
#[derive(Debug, Default)]
pub struct Wire {
    /// What the backend delivers next, one rx slot each.
    pub to_guest: VecDeque<ToGuest>,
    /// The frames the frontend sent, in order.
    pub from_guest: Vec<Vec<u8>>,
    /// Where in each rx page the backend copies a frame.
    pub rx_offset: u16,
    /// The next tx responses name an id that was never sent.
    pub tx_bad_ids: u32,
    /// The next rx push claims 1000 responses more than were written (and so does
    /// every later one).
    pub corrupt_rx_prod: bool,
    /// Disconnect and go Closing once this many rx slots were used.
    pub close_after: Option<usize>,
    /// Rx slots used so far.
    pub rx_slots_used: usize,
    /// Leave `feature-rx-copy` out of the backend's features.
    pub no_rx_copy: bool,
}

/// One use of an rx slot by the backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ToGuest {
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

/// The peer of [`netback`] that never sends and wants a call every 50 ms.
pub fn quiet_peer(_: &mut Wire) -> Duration {
    Duration::from_millis(50)
}

/// The backend's life: connect, move frames both ways (calling `peer` each round,
/// which returns when it next wants a call), disconnect when the frontend closes or
/// `close_after` is reached. `xen` is the backend's domain; the toolstack's nodes of
/// `device` must be there first.
pub async fn netback(
    xen: SimXen,
    device: PvDevice<'_>,
    wire: Rc<RefCell<Wire>>,
    mut peer: impl FnMut(&mut Wire) -> Duration,
) {
    let Some(mut nb) = Netback::connect(xen, device, &wire).await else { return };
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
            if nb.front_state().await.is_some_and(|s| s >= State::Closing) {
                nb.disconnect(State::Closed).await;
                return;
            }
            nb.idle(&wire, delay).await;
        }
    }
}

/// dom0's netback in copy mode, connected.
struct Netback {
    xen: SimXen,
    frontend: DomId,
    front_path: String,
    back_path: String,
    tx_page: [MappedPage; 1],
    rx_page: [MappedPage; 1],
    tx: BackRing,
    rx: BackRing,
    port: Port,
}

impl Netback {
    /// Publishes features and InitWait, waits for the frontend's Connected, maps
    /// the rings, binds the event channel and goes Connected.
    async fn connect(xen: SimXen, device: PvDevice<'_>, wire: &Rc<RefCell<Wire>>) -> Option<Netback> {
        let (front_path, back_path) = (device.front_path(), device.back_path());
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
            xen.write(Tx::NONE, &format!("{back_path}/{key}"), value.as_bytes()).await.expect("the backend's node");
        }
        xen.write(Tx::NONE, &format!("{back_path}/state"), b"2").await.expect("the backend's state");
        loop {
            match front_state(&xen, &front_path).await {
                Some(State::Connected) => break,
                Some(State::Closing | State::Closed) => return None,
                _ => xen.sleep(Duration::from_millis(1)).await,
            }
        }
        let number = async |key: &str| -> u32 {
            let text = xen.read_string(Tx::NONE, &format!("{front_path}/{key}")).await;
            text.expect("the frontend's node").parse().expect("a decimal number")
        };
        assert_eq!(number("request-rx-copy").await, 1);
        let frontend = device.frontend;
        let map = |gref: u32| xen.map_grant(frontend, GrantRef(gref), true).expect("a ring grant");
        let tx_page = map(number("tx-ring-ref").await);
        let rx_page = map(number("rx-ring-ref").await);
        let port = xen.bind_interdomain(frontend, number("event-channel").await).expect("the frontend's port");
        xen.write(Tx::NONE, &format!("{back_path}/state"), b"4").await.expect("the backend's state");
        Some(Netback {
            xen,
            frontend,
            front_path,
            back_path,
            tx_page: [tx_page],
            rx_page: [rx_page],
            tx: BackRing::new(TX_RING),
            rx: BackRing::new(RX_RING),
            port,
        })
    }

    async fn front_state(&self) -> Option<State> {
        front_state(&self.xen, &self.front_path).await
    }

    /// Sends every queued tx request's frame onto the wire and answers it.
    fn take_tx(&mut self, wire: &mut Wire) -> bool {
        let produced = self.tx.requests_produced(&self.tx_page);
        let size = TX_RING.size();
        assert!(produced.wrapping_sub(self.tx.rsp_prod_pvt()) <= size, "the frontend overfilled the tx ring");
        let available = self.tx.unconsumed_requests(&self.tx_page);
        for _ in 0..available {
            let mut bytes = [0u8; TX_SLOT_BYTES];
            self.tx.read_request(&self.tx_page, &mut bytes);
            let request = TxRequest::new_checked(&bytes[..]).expect("a whole slot");
            let (offset, size) = (usize::from(request.offset()), usize::from(request.size()));
            assert!(size > 0 && offset + size <= PAGE_SIZE, "a tx request leaves its page");
            assert_eq!(request.flags() & (tx_flags::MORE_DATA | tx_flags::EXTRA_INFO), 0);
            let page = self.xen.map_grant(self.frontend, GrantRef(request.gref()), false).expect("a tx grant");
            let mut frame = vec![0; size];
            page.read(offset, &mut frame);
            drop(page);
            wire.from_guest.push(frame);
            let mut id = request.id();
            if wire.tx_bad_ids > 0 {
                wire.tx_bad_ids -= 1;
                id ^= 0x4000;
            }
            let mut response = [0u8; TxResponse::<&[u8]>::LEN];
            let mut view = TxResponse::new_unchecked(&mut response[..]);
            view.set_id(id);
            view.set_status(status::OKAY);
            self.tx.write_response(&self.tx_page, &response);
        }
        if self.tx.push_responses(&self.tx_page) {
            self.xen.notify(self.port).expect("the backend's port");
        }
        available > 0
    }

    /// Uses rx slots for what waits on the wire, while the frontend has posted some.
    fn deliver(&mut self, wire: &mut Wire) -> bool {
        let mut busy = false;
        loop {
            if wire.close_after.is_some_and(|n| wire.rx_slots_used >= n) {
                break;
            }
            if self.rx.unconsumed_requests(&self.rx_page) == 0 {
                break;
            }
            let Some(item) = wire.to_guest.pop_front() else { break };
            busy = true;
            wire.rx_slots_used += 1;
            let mut bytes = [0u8; RX_SLOT_BYTES];
            self.rx.read_request(&self.rx_page, &mut bytes);
            let request = RxRequest::new_checked(&bytes[..]).expect("a whole slot");
            let mut response = [0u8; RX_SLOT_BYTES];
            match item {
                ToGuest::Frame(frame) => {
                    let page = self.xen.map_grant(self.frontend, GrantRef(request.gref()), true).expect("an rx grant");
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
            self.rx.write_response(&self.rx_page, &response);
        }
        if core::mem::take(&mut wire.corrupt_rx_prod) {
            self.rx.claim_unwritten_responses(1000);
        }
        if self.rx.push_responses(&self.rx_page) {
            self.xen.notify(self.port).expect("the backend's port");
        }
        busy
    }

    /// RING_FINAL_CHECK_FOR_REQUESTS on tx (and on rx if frames wait), then sleeps
    /// until notified or `limit`.
    async fn idle(&mut self, wire: &Rc<RefCell<Wire>>, limit: Duration) {
        if self.tx.final_check_for_requests(&self.tx_page) {
            return;
        }
        if !wire.borrow().to_guest.is_empty() && self.rx.final_check_for_requests(&self.rx_page) {
            return;
        }
        let mut event = pin!(self.xen.wait(self.port));
        let mut timer = pin!(self.xen.sleep(limit));
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
        let Netback { xen, back_path, tx_page, rx_page, port, .. } = self;
        drop((tx_page, rx_page));
        xen.close(port).expect("the backend's port");
        let text = (state as u32).to_string();
        xen.write(Tx::NONE, &format!("{back_path}/state"), text.as_bytes()).await.expect("the backend's state");
    }
}

async fn front_state(xen: &SimXen, front_path: &str) -> Option<State> {
    xen.read_string(Tx::NONE, &format!("{front_path}/state")).await.ok().and_then(|s| State::parse(&s))
}
