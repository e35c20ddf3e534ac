//! A disk's connect and close story: the xenbus handshake, the backend's geometry
//! and features, and the release of every grant at the end.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::cell::{Cell, RefCell};
use core::time::Duration;

use xen_seams::{SharedPage, Xen};

use super::buffers::Buffer;
use super::requests::Inner;
use super::{Discard, Disk, DiskInfo, Error, Features, Flush, Options, nanoseconds};
use crate::blkif::{self, MAX_SEGMENTS_PER_REQUEST, PAGE_SIZE};
use crate::ring;
use crate::xenbus::{self, Device, State};

/// How often [`Disk::close`] retries grants the backend still maps.
const RELEASE_POLL: Duration = Duration::from_millis(10);

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
            inner: RefCell::new(Inner::new(backend_id, 1 << order)),
            closed: Cell::new(false),
            backend_changed: Cell::new(false),
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
            inner.ring_pages.push(Buffer { page, grant: Some(grant) });
        }
        ring::init_shared(&inner.ring_pages);
        let grant_text = |buffer: &Buffer<X::Page>| buffer.grant.map_or(String::new(), |g| g.0.to_string());

        let mut entries: Vec<(String, String)> = Vec::new();
        if nr_pages == 1 {
            entries.push(("ring-ref".into(), grant_text(&inner.ring_pages[0])));
        } else {
            entries.push(("ring-page-order".into(), order.to_string()));
            for (index, buffer) in inner.ring_pages.iter().enumerate() {
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
