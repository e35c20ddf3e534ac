//! The connect and close story of a netfront: the handshake, the rings and buffer
//! pools granted once, and their release.

use alloc::format;
use alloc::string::ToString;
use alloc::vec;
use alloc::vec::Vec;

use xen_seams::{SharedPage, Tx, Xen};

use super::buffers::{GrantedPage, Pages, RX_RING_PAGE, TX_RING_PAGE};
use super::rx::RxQueue;
use super::tx::TxQueue;
use super::{Config, NetError, Netfront, parse_mac};
use crate::netif::{RX_RING_SIZE, TX_RING_SIZE};
use crate::ring;
use crate::xenbus::{Device, State};

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
        for which in [TX_RING_PAGE, RX_RING_PAGE] {
            ring::init_shared(net.pages.ring(which));
        }
        // Fill the rx ring before the backend maps it; nobody to notify yet.
        net.rx.refill(&net.pages);
        net.rx.ring.push_requests(net.pages.ring(RX_RING_PAGE));

        let number = |n: u32| n.to_string();
        let mut entries = vec![
            ("tx-ring-ref", number(net.pages.all[TX_RING_PAGE].grant.0)),
            ("rx-ring-ref", number(net.pages.all[RX_RING_PAGE].grant.0)),
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
