//! The pages a netfront shares with its backend: the two rings, then the tx and rx
//! buffer pools, each granted once for the device's life.

use alloc::vec::Vec;

use xen_seams::{GrantRef, Port, SharedPage, Xen};

use super::{NetError, Stats};
use crate::ring::PAGE_SIZE;

/// Bytes of one tx buffer: two per page, so a frame never crosses a page.
const TX_BUFFER_BYTES: usize = PAGE_SIZE / 2;

/// A page of ours shared with the backend, and whether its grant is still live.
pub(super) struct GrantedPage<P> {
    pub(super) page: P,
    pub(super) grant: GrantRef,
    pub(super) granted: bool,
}

/// Every page the device shares: the two rings, then the tx pool, then the rx pool.
pub(super) struct Pages<P> {
    pub(super) all: Vec<GrantedPage<P>>,
    pub(super) tx_first: usize,
    pub(super) rx_first: usize,
}

/// Where the tx ring's page is in [`Pages::all`].
pub(super) const TX_RING_PAGE: usize = 0;
/// Where the rx ring's page is.
pub(super) const RX_RING_PAGE: usize = 1;

impl<P: SharedPage> Pages<P> {
    /// The ring whose page is `which` ([`TX_RING_PAGE`] or [`RX_RING_PAGE`]).
    pub(super) fn ring(&self, which: usize) -> &[P] {
        core::slice::from_ref(&self.all[which].page)
    }

    /// The page, grant and offset of tx buffer `id`.
    pub(super) fn tx_buffer(&self, id: u16) -> (&P, GrantRef, usize) {
        let shared = &self.all[self.tx_first + id as usize / 2];
        (&shared.page, shared.grant, (id as usize % 2) * TX_BUFFER_BYTES)
    }

    /// The page and grant of rx buffer `id`.
    pub(super) fn rx_buffer(&self, id: u16) -> (&P, GrantRef) {
        let shared = &self.all[self.rx_first + id as usize];
        (&shared.page, shared.grant)
    }
}

/// The event channel, to notify the backend.
pub(super) struct Link<'a, X: Xen> {
    pub(super) xen: &'a X,
    pub(super) port: Port,
}

impl<X: Xen> Clone for Link<'_, X> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<X: Xen> Copy for Link<'_, X> {}

impl<X: Xen> Link<'_, X> {
    pub(super) fn notify(self, stats: &mut Stats) -> Result<(), NetError> {
        self.xen.notify(self.port)?;
        stats.notifications += 1;
        Ok(())
    }
}
