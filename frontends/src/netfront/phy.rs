//! The netfront as a smoltcp Ethernet device: tokens that copy a frame out of an rx
//! buffer or into a tx buffer.

use alloc::vec;

use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::time::Instant;
use xen_seams::Xen;

use super::buffers::{Link, Pages};
use super::rx::RxQueue;
use super::tx::TxQueue;
use super::{MAX_FRAME_BYTES, Netfront};

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
