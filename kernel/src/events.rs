//! Event channels: binding, sending, and delivery to the tasks that wait on them.
//!
//! Delivery has two halves. The upcall (and `dispatch_pending`, the same scan run
//! from task context) runs with upcalls masked, takes no lock and allocates nothing:
//! it acknowledges Xen's pending bits and moves them into our own `FIRED` bitmap.
//! The executor then wakes the task registered for each fired port. A port's bit is
//! cleared in Xen's bitmap *before* we look at the port's ring, so an event that
//! arrives while we handle the previous one sets it again and is seen on the next
//! scan: none is lost. Events on one port coalesce, as on real hardware, so waiters
//! re-check their condition (ring indexes) after waking.
//!
//! A port has one waiter at a time: waiting consumes the port's event, and a port keeps
//! one waker (a second waiter's would replace the first's). Every port belongs to one
//! frontend or server task, which is the only one that waits on it.

use crate::arch::hypercall::{self, XenError};
use crate::shared_info;
use alloc::collections::BTreeMap;
use core::future::Future;
use core::pin::Pin;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use core::task::{Context, Poll, Waker};
use spin::Mutex;
use xen_abi::event_channel::{
    self as ev, EvtchnAllocUnbound, EvtchnBindInterdomain, EvtchnBindVirq, EvtchnClose, EvtchnUnmask, NR_EVENT_CHANNELS,
};

/// Ports that fired and have not been consumed by a waiter yet.
static FIRED: [AtomicU64; NR_EVENT_CHANNELS / 64] = [const { AtomicU64::new(0) }; NR_EVENT_CHANNELS / 64];
/// Set when FIRED gained a bit since the executor last looked.
static NEW_EVENTS: AtomicBool = AtomicBool::new(false);
static WAKERS: Mutex<BTreeMap<u32, Waker>> = Mutex::new(BTreeMap::new());
static UPCALLS: AtomicU64 = AtomicU64::new(0);

/// A local event channel port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Port(pub u32);

/// Called by the upcall entry with further upcalls masked.
pub fn on_upcall() {
    UPCALLS.fetch_add(1, Ordering::Relaxed);
    scan_pending();
}

/// Moves Xen's pending, unmasked ports into FIRED until nothing is left pending.
fn scan_pending() {
    // Bounded: each round consumes what was pending; a peer flooding us faster than
    // we scan cannot keep us here past the bound, its events stay pending for later.
    for _ in 0..64 {
        if !shared_info::vcpu0_take_upcall_pending() {
            break;
        }
        let mut selector = shared_info::vcpu0_take_pending_selector();
        while selector != 0 {
            let word = selector.trailing_zeros() as usize;
            selector &= selector - 1;
            let ready = shared_info::take_pending_unmasked(word);
            if ready != 0 {
                FIRED[word].fetch_or(ready, Ordering::AcqRel);
                NEW_EVENTS.store(true, Ordering::Release);
            }
        }
    }
}

/// Runs the upcall's scan from task context (events that arrived while upcalls
/// were masked are otherwise only delivered at the next entry into Xen).
pub fn dispatch_pending() {
    shared_info::with_upcalls_masked(scan_pending);
}

/// Wakes the tasks waiting on ports that fired. Returns whether any port had fired.
pub fn wake_fired() -> bool {
    if !NEW_EVENTS.swap(false, Ordering::AcqRel) {
        return false;
    }
    let mut wakers = WAKERS.lock();
    for (word, bits) in FIRED.iter().enumerate() {
        let mut bits = bits.load(Ordering::Acquire);
        while bits != 0 {
            let bit = bits.trailing_zeros();
            bits &= bits - 1;
            if let Some(w) = wakers.remove(&(word as u32 * 64 + bit)) {
                w.wake();
            }
        }
    }
    true
}

/// Whether any event is waiting to be handed to a task.
pub fn work_pending() -> bool {
    NEW_EVENTS.load(Ordering::Acquire)
}

/// Consumes a fired event on `port`, if there is one.
pub fn take_fired(port: Port) -> bool {
    let (word, bit) = ev::word_and_bit(port.0);
    FIRED[word].fetch_and(!(1 << bit), Ordering::AcqRel) & (1 << bit) != 0
}

/// Waits for the next event on `port`.
pub fn wait(port: Port) -> impl Future<Output = ()> {
    WaitEvent { port }
}

struct WaitEvent {
    port: Port,
}

impl Future for WaitEvent {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if take_fired(self.port) {
            return Poll::Ready(());
        }
        WAKERS.lock().insert(self.port.0, cx.waker().clone());
        // An event may have fired between the check and the registration.
        if take_fired(self.port) {
            WAKERS.lock().remove(&self.port.0);
            return Poll::Ready(());
        }
        Poll::Pending
    }
}

impl Drop for WaitEvent {
    fn drop(&mut self) {
        WAKERS.lock().remove(&self.port.0);
    }
}

/// Allocates a port that domain `remote` may bind to.
pub fn alloc_unbound(remote: u16) -> Result<Port, XenError> {
    let mut arg = EvtchnAllocUnbound { dom: ev::DOMID_SELF, remote_dom: remote, port: 0 };
    hypercall::event_channel_op(&mut arg)?;
    let port = Port(arg.port);
    unmask(port)?;
    Ok(port)
}

/// Binds to `remote_port` of domain `remote`.
pub fn bind_interdomain(remote: u16, remote_port: u32) -> Result<Port, XenError> {
    let mut arg = EvtchnBindInterdomain { remote_dom: remote, remote_port, local_port: 0 };
    hypercall::event_channel_op(&mut arg)?;
    let port = Port(arg.local_port);
    unmask(port)?;
    Ok(port)
}

/// Binds a virtual IRQ of vCPU 0.
pub fn bind_virq(virq: u32) -> Result<Port, XenError> {
    let mut arg = EvtchnBindVirq { virq, vcpu: 0, port: 0 };
    hypercall::event_channel_op(&mut arg)?;
    let port = Port(arg.port);
    unmask(port)?;
    Ok(port)
}

/// Notifies the other end of `port`.
pub fn send(port: Port) -> Result<(), XenError> {
    hypercall::evtchn_send(port.0)
}

/// Stops delivery of `port` (it stays pending in Xen until unmasked).
pub fn mask(port: Port) {
    shared_info::set_port_mask(port.0, true);
}

/// Resumes delivery of `port`; Xen re-raises it if it became pending meanwhile.
pub fn unmask(port: Port) -> Result<(), XenError> {
    hypercall::event_channel_op(&mut EvtchnUnmask { port: port.0 })
}

/// Closes `port`; a task still waiting on it is woken and sees no more events.
pub fn close(port: Port) -> Result<(), XenError> {
    let result = hypercall::event_channel_op(&mut EvtchnClose { port: port.0 });
    take_fired(port);
    if let Some(w) = WAKERS.lock().remove(&port.0) {
        w.wake();
    }
    result
}

/// How many upcalls have arrived since boot.
pub fn upcall_count() -> u64 {
    UPCALLS.load(Ordering::Relaxed)
}
