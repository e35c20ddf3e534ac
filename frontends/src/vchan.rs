//! A libxenvchan server: the byte stream through which dom0 reaches our QMP monitor.
//!
//! libxl starts `vchan-socket-proxy <stub> <path> /var/run/xen/qmp-libxl-<guest>` in
//! dom0. For every connection on that unix socket the proxy acts as a libxenvchan
//! *client* (tools/libs/vchan/init.c, `libxenvchan_client_init`) of the server we run
//! at `path` (`device-model/<guest>/qmp-vchan`), and closes the vchan when its unix
//! client goes away.
//!
//! # The wire (io/libxenvchan.h, init.c, io.c)
//!
//! One shared page starts with `struct vchan_interface` ([`layout`]): two index pairs
//! `{cons, prod}` (free-running u32s), `left` carrying client-to-server bytes (our
//! read ring) and `right` server-to-client bytes (our write ring); the two ring
//! orders (u16, log2 of the size); `cli_live`/`srv_live` (0 closed, 1 connected, 2
//! client not connected yet); `cli_notify`/`srv_notify`, bit sets of
//! `VCHAN_NOTIFY_WRITE`/`READ`; then the grant list. A ring of order 10 lives at
//! offset 1024 of the shared page, one of order 11 at 2048; a ring of order 12 or more
//! has 2^(order-12) pages of its own, whose grant refs the list names, the read
//! (left) ring's first. Only one ring may sit in each in-page slot, and the list must
//! end before the first in-page ring ([`Orders::check`]).
//!
//! Setting up, as `libxenvchan_server_init` does: an unbound port for the client; the
//! page with the orders, `cli_live = 2`, `srv_live = 1` and `cli_notify = WRITE`; the
//! ring pages granted; the shared page granted; then, in one xenstore transaction,
//! `<path>/ring-ref` and `<path>/event-channel`, each with permissions "owner us,
//! nobody else, the client may read" (we set the same on `<path>` itself, so that a
//! client that is not dom0 can watch it). The client reads both nodes, binds the
//! port, maps the page (and the ring pages: the ones it writes read-write, the ones it
//! reads read-only, so we grant our write ring's pages read-only), checks the orders,
//! sets `cli_live = 1` and `srv_notify = WRITE`, and notifies us. On close it sets
//! `cli_live = 0`, unmaps (Linux's gntdev also clears `cli_live` and notifies when the
//! mapping goes away, even if the process dies), notifies and closes its port.
//!
//! Moving bytes (io.c): the reader copies out from `cons` and advances it, the writer
//! copies in at `prod` and advances it; a side that finds too little data or space
//! sets the matching bit in the *other* side's notify byte (`cli_notify` is what the
//! server asks of the client), issues a full barrier and looks again; a side that
//! moved an index issues a full barrier, then clears the bit in its own notify byte
//! and sends an event only if it was set. [`SharedPage`] orders index accesses with
//! acquire/release only, so the two store-then-load places use `fence(SeqCst)`.
//! io.c clears the request with an atomic and-not; `SharedPage` has no atomic
//! read-modify-write, so a plain store may erase a bit the client sets at that very
//! moment. That loses nothing: we only clear a bit just before sending an event, and
//! a libxenvchan client, woken by it, re-posts any request it still needs on its next
//! check (each `fast_get_*` that comes up short does). Indexes that claim more than a
//! ringful are [`VchanError::CorruptRing`] (io.c silently stalls): we hang up.
//!
//! # Repeated connections
//!
//! libxenvchan itself supports a client reconnecting to the *same* page ("you can
//! reconnect to an existing vchan safely", libxenvchan.h; the grant list stays put "to
//! allow for possible remapping by a client that restarts"), and the Linux stub domain
//! runs `vchan-socket-proxy -m server`, which keeps one server for its whole life: after
//! a client leaves it drains the read ring and waits for `cli_live == 1` again. That
//! design has a hole: when the next client maps the page before the server has seen
//! `cli_live` drop to 0 (the proxy reconnects as soon as libxl opens its next QMP
//! connection), the server takes the new client for the old one and never sends it a
//! fresh greeting; stale bytes of the old session also reach the new client.
//!
//! So this server gives every client a page of its own. [`Server::accept`] removes the
//! xenstore nodes as soon as a client is in (no later client can find the page); the
//! next `accept` retires that page (sets `srv_live = 0`, notifies, closes the port) and
//! publishes a fresh page, grants and port. The client side is unchanged:
//! `connect_vchan` in the 4.17 proxy watches `<path>` and retries
//! `libxenvchan_client_init` on every change until the nodes are there, so it simply
//! waits for the republish. What remains of the hole is the moment between a client's
//! connect and our `accept`: a client that leaves inside it (a QMP client cannot, it
//! waits for our greeting first) is seen as `cli_live == 0` and its page is replaced,
//! unless the next client mapped that page before we looked; then the two share it. A retired page is dropped only once every one of its
//! grants has ended ([`Grants::end`] fails while the client still maps it): until then
//! it waits in a list that each `accept` retries; [`Server::shutdown`] retries for
//! [`UNMAP_WAIT`] and then leaks the pages still mapped rather than free them.
//!
//! ```text
//! let mut server = Server::listen(xen, 0, "device-model/5/qmp-vchan", Orders::DEFAULT).await?;
//! loop {
//!     server.accept(Duration::from_secs(3600)).await?;   // a client is in; nodes removed
//!     server.write_all(greeting).await?;
//!     while let Ok(n) = server.read(&mut buf).await { ... }   // Err(Closed): it left
//! }
//! ```

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::ops::Range;
use core::sync::atomic::{Ordering, fence};
use core::time::Duration;
use xen_seams::{
    DomId, GrantRef, Grants, Permission, Port, RetryPolicy, SharedPage, TransactionError, Tx, Xen, XenstoreError,
};

#[cfg(any(test, feature = "sim"))]
pub mod sim_client;
#[cfg(test)]
mod tests;

/// `struct vchan_interface` (io/libxenvchan.h): byte offsets in the shared page, and the
/// constants of the protocol.
pub mod layout {
    /// `left.cons`: how far the server has read the client-to-server ring.
    pub const LEFT_CONS: usize = 0;
    /// `left.prod`: how far the client has written the client-to-server ring.
    pub const LEFT_PROD: usize = 4;
    /// `right.cons`: how far the client has read the server-to-client ring.
    pub const RIGHT_CONS: usize = 8;
    /// `right.prod`: how far the server has written the server-to-client ring.
    pub const RIGHT_PROD: usize = 12;
    /// `left_order` (u16): log2 of the client-to-server ring's size.
    pub const LEFT_ORDER: usize = 16;
    /// `right_order` (u16): log2 of the server-to-client ring's size.
    pub const RIGHT_ORDER: usize = 18;
    /// `cli_live` (u8), written by the client.
    pub const CLI_LIVE: usize = 20;
    /// `srv_live` (u8), written by the server.
    pub const SRV_LIVE: usize = 21;
    /// `cli_notify` (u8): what the server asked the client to notify about.
    pub const CLI_NOTIFY: usize = 22;
    /// `srv_notify` (u8): what the client asked the server to notify about.
    pub const SRV_NOTIFY: usize = 23;
    /// `grants[]` (u32 each): the ring pages' grant refs, left ring's first.
    pub const GRANTS: usize = 24;
    /// `VCHAN_NOTIFY_WRITE`: send an event when data is written.
    pub const NOTIFY_WRITE: u8 = 0x1;
    /// `VCHAN_NOTIFY_READ`: send an event when data is read (space is made).
    pub const NOTIFY_READ: u8 = 0x2;
    /// `cli_live`/`srv_live`: that side has closed.
    pub const LIVE_CLOSED: u8 = 0;
    /// `cli_live`/`srv_live`: that side is connected.
    pub const LIVE_CONNECTED: u8 = 1;
    /// `cli_live`: no client has connected yet.
    pub const LIVE_WAITING: u8 = 2;
    /// The smallest ring, 1 KiB, inside the shared page at [`SMALL_RING_OFFSET`].
    pub const SMALL_ORDER: u8 = 10;
    pub const SMALL_RING_OFFSET: usize = 1024;
    /// The 2 KiB ring, inside the shared page at [`LARGE_RING_OFFSET`].
    pub const LARGE_ORDER: u8 = 11;
    pub const LARGE_RING_OFFSET: usize = 2048;
    /// Rings of this order and above have pages of their own.
    pub const PAGE_ORDER: u8 = 12;
    /// The largest ring libxenvchan accepts (1 MiB).
    pub const MAX_ORDER: u8 = 20;
    pub const PAGE_SIZE: usize = 4096;
}

use layout::*;

/// How long [`Server::shutdown`] waits for the client to unmap before leaking pages.
pub const UNMAP_WAIT: Duration = Duration::from_secs(2);
/// Default [`Server::read_timeout`].
pub const READ_WAIT: Duration = Duration::from_secs(30);
/// Default [`Server::write_timeout`]: libxl gives a QMP command 10 s.
pub const WRITE_WAIT: Duration = Duration::from_secs(10);
/// Retired pages still mapped by clients, in channels' worth, beyond which `accept`
/// refuses to make another page (a client that never unmaps cannot eat our memory).
const MAX_STALE_CHANNELS: usize = 4;

/// The two rings' sizes, as log2 of bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Orders {
    /// The client-to-server ring ("left").
    pub read: u8,
    /// The server-to-client ring ("right").
    pub write: u8,
}

impl Orders {
    /// What `libxenvchan_server_init(.., 0, 0)` picks, as the Linux stub domain's proxy
    /// does: 1 KiB in, 2 KiB out, both inside the shared page.
    pub const DEFAULT: Orders = Orders { read: SMALL_ORDER, write: LARGE_ORDER };

    /// Checks what a libxenvchan client checks (each order in 10..=20, not both in the
    /// same in-page slot) and that the grant list fits before the in-page ring.
    pub fn check(self) -> Result<(), VchanError> {
        let valid = |order: u8| (SMALL_ORDER..=MAX_ORDER).contains(&order);
        let same_slot = self.read == self.write && self.read < PAGE_ORDER;
        let grants_end = GRANTS + 4 * self.ring_pages();
        let ring_start = [self.read, self.write].into_iter().filter_map(in_page_offset).min().unwrap_or(PAGE_SIZE);
        if valid(self.read) && valid(self.write) && !same_slot && grants_end <= ring_start {
            Ok(())
        } else {
            Err(VchanError::BadOrders(self))
        }
    }

    /// Pages granted besides the shared page.
    fn ring_pages(self) -> usize {
        pages_of(self.read) + pages_of(self.write)
    }
}

/// Pages of their own a ring of `order` needs.
fn pages_of(order: u8) -> usize {
    if order >= PAGE_ORDER { 1 << (order - PAGE_ORDER) } else { 0 }
}

/// Where a ring of `order` sits in the shared page, if it does.
fn in_page_offset(order: u8) -> Option<usize> {
    match order {
        SMALL_ORDER => Some(SMALL_RING_OFFSET),
        LARGE_ORDER => Some(LARGE_RING_OFFSET),
        _ => None,
    }
}

/// Which ring a corrupt index was found in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RingSide {
    /// Client to server ("left"): the client's `prod` is bad.
    Read,
    /// Server to client ("right"): the client's `cons` is bad.
    Write,
}

/// Why the vchan could not be set up, or a transfer failed.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum VchanError {
    /// Ring orders no libxenvchan client can map.
    #[error("vchan ring orders {}/{} cannot be laid out (10..=20, one per in-page slot)", .0.read, .0.write)]
    BadOrders(Orders),
    /// A page, grant or event channel operation failed.
    #[error("vchan: {0}")]
    Xen(#[from] xen_seams::Error),
    /// A xenstore operation failed.
    #[error("vchan: {0}")]
    Xenstore(#[from] XenstoreError),
    /// Publishing the nodes kept conflicting.
    #[error("vchan: publishing ring-ref/event-channel kept conflicting")]
    TooManyConflicts,
    /// No client connected in time.
    #[error("no vchan client connected in time")]
    NoClient,
    /// The client did not move its index in time.
    #[error("the vchan client did not move its index in time")]
    Timeout,
    /// No client is connected: call `accept` first.
    #[error("no vchan client is connected")]
    NotConnected,
    /// The connection is over: the client closed (and all it wrote was read), or we hung up.
    #[error("the vchan connection is closed")]
    Closed,
    /// The client's index claims `used` bytes in a ring of `size`: we hung up.
    #[error("vchan client corrupted the {side:?} ring: {used} bytes in use of {size}")]
    CorruptRing { side: RingSide, used: u32, size: u32 },
    /// Earlier clients still map `pages` retired pages: no new page until they unmap.
    #[error("vchan clients still map {pages} retired pages")]
    StalePages { pages: usize },
    /// Shutdown left `pages` pages still mapped by the client; they are leaked, not freed.
    #[error("vchan client still maps {pages} pages; leaked")]
    StillMapped { pages: usize },
}

/// A page of ours and its grant to the client.
struct Granted<P> {
    page: P,
    grant: GrantRef,
}

/// Where a ring's bytes are.
enum Place<P> {
    /// In the shared page, from this offset.
    Shared(usize),
    /// In pages of its own.
    Pages(Vec<Granted<P>>),
}

struct Ring<P> {
    order: u8,
    place: Place<P>,
}

impl<P: SharedPage> Ring<P> {
    fn size(&self) -> u32 {
        1 << self.order
    }

    /// Calls `f(page, offset, range)` for each contiguous piece of the `len` bytes at
    /// free-running index `index`: `range` is the piece's place in the caller's buffer.
    fn pieces(&self, shared: &P, index: u32, len: usize, mut f: impl FnMut(&P, usize, Range<usize>)) {
        let size = self.size() as usize;
        let mut at = index as usize & (size - 1);
        let mut done = 0;
        while done < len {
            let (page, offset, room) = match &self.place {
                Place::Shared(base) => (shared, base + at, size - at),
                Place::Pages(pages) => (&pages[at / PAGE_SIZE].page, at % PAGE_SIZE, PAGE_SIZE - at % PAGE_SIZE),
            };
            let n = room.min(len - done);
            f(page, offset, done..done + n);
            done += n;
            at = (at + n) & (size - 1);
        }
    }
}

/// One client's page, rings and port.
struct Channel<P> {
    shared: Granted<P>,
    read_ring: Ring<P>,
    write_ring: Ring<P>,
    port: Port,
    /// Our own indexes: a client that scribbles over them in the page cannot move them.
    read_cons: u32,
    write_prod: u32,
}

/// What a non-blocking step of `read`/`write` came to.
enum Step {
    Done(usize),
    /// Nothing to do until an event on this port.
    Wait(Port),
}

impl<P: SharedPage> Channel<P> {
    /// Allocates, fills and grants the pages and the port for `client`. On failure
    /// everything made is undone; grants that cannot end go to `retired`.
    fn create<X: Xen<Page = P>>(
        xen: &X,
        client: DomId,
        orders: Orders,
        retired: &mut Vec<Granted<P>>,
    ) -> Result<Channel<P>, VchanError> {
        let port = xen.alloc_unbound(client)?;
        let mut ring_pages = Vec::new();
        let made = (|| {
            let shared = xen.alloc_page()?;
            // The read ring's pages are written by the client; ours it only reads.
            for (order, readonly) in [(orders.read, false), (orders.write, true)] {
                for _ in 0..pages_of(order) {
                    let page = xen.alloc_page()?;
                    let grant = xen.grant(client, page.frame(), readonly)?;
                    ring_pages.push(Granted { page, grant });
                }
            }
            shared.write(LEFT_ORDER, &u16::from(orders.read).to_le_bytes());
            shared.write(RIGHT_ORDER, &u16::from(orders.write).to_le_bytes());
            shared.write(CLI_LIVE, &[LIVE_WAITING, LIVE_CONNECTED, NOTIFY_WRITE, 0]);
            for (i, granted) in ring_pages.iter().enumerate() {
                shared.write_u32(GRANTS + 4 * i, granted.grant.0);
            }
            let grant = xen.grant(client, shared.frame(), false)?;
            Ok::<_, xen_seams::Error>(Granted { page: shared, grant })
        })();
        let shared = match made {
            Ok(shared) => shared,
            Err(e) => {
                retired.append(&mut ring_pages);
                reap(xen, retired);
                let _ = xen.close(port);
                return Err(e.into());
            }
        };
        let write_pages = ring_pages.split_off(pages_of(orders.read));
        let ring = |order, pages| Ring {
            order,
            place: match in_page_offset(order) {
                Some(offset) => Place::Shared(offset),
                None => Place::Pages(pages),
            },
        };
        let read_ring = ring(orders.read, ring_pages);
        let write_ring = ring(orders.write, write_pages);
        Ok(Channel { shared, read_ring, write_ring, port, read_cons: 0, write_prod: 0 })
    }

    fn page(&self) -> &P {
        &self.shared.page
    }

    fn byte(&self, offset: usize) -> u8 {
        let mut byte = [0];
        self.page().read(offset, &mut byte);
        byte[0]
    }

    fn set_byte(&self, offset: usize, value: u8) {
        self.page().write(offset, &[value]);
    }

    /// `cli_live`, read before anything the client wrote ahead of it.
    fn cli_live(&self) -> u8 {
        let live = self.byte(CLI_LIVE);
        fence(Ordering::Acquire);
        live
    }

    /// Bytes the client has written that we have not read.
    fn readable(&self) -> Result<u32, VchanError> {
        let size = self.read_ring.size();
        let used = self.page().read_u32(LEFT_PROD).wrapping_sub(self.read_cons);
        if used > size {
            return Err(VchanError::CorruptRing { side: RingSide::Read, used, size });
        }
        Ok(used)
    }

    /// Room in the ring we write.
    fn writable(&self) -> Result<u32, VchanError> {
        let size = self.write_ring.size();
        let used = self.write_prod.wrapping_sub(self.page().read_u32(RIGHT_CONS));
        if used > size {
            return Err(VchanError::CorruptRing { side: RingSide::Write, used, size });
        }
        Ok(size - used)
    }

    /// Asks the client for an event when it does `bit`; the caller looks again after.
    fn request_notify(&self, bit: u8) {
        let requests = self.byte(CLI_NOTIFY);
        self.set_byte(CLI_NOTIFY, requests | bit);
        // Our request must be visible before we look at the index again.
        fence(Ordering::SeqCst);
    }

    /// After moving an index: sends an event if the client asked for one about `bit`.
    fn send_notify<X: Xen<Page = P>>(&self, xen: &X, bit: u8) -> Result<(), VchanError> {
        // The index must be visible before we look at the request.
        fence(Ordering::SeqCst);
        let requests = self.byte(SRV_NOTIFY);
        if requests & bit != 0 {
            // Not atomic: see the module doc for why the event that follows makes up for it.
            self.set_byte(SRV_NOTIFY, requests & !bit);
            xen.notify(self.port)?;
        }
        Ok(())
    }

    fn try_read<X: Xen<Page = P>>(&mut self, xen: &X, buf: &mut [u8]) -> Result<Step, VchanError> {
        // Liveness first: what the client wrote before closing is then surely seen.
        let live = self.cli_live();
        let mut ready = self.readable()?;
        if ready == 0 {
            if live == LIVE_CLOSED {
                return Err(VchanError::Closed);
            }
            self.request_notify(NOTIFY_WRITE);
            ready = self.readable()?;
            if ready == 0 {
                return Ok(Step::Wait(self.port));
            }
        }
        let len = buf.len().min(ready as usize);
        let shared = &self.shared.page;
        self.read_ring.pieces(shared, self.read_cons, len, |page, offset, range| page.read(offset, &mut buf[range]));
        self.read_cons = self.read_cons.wrapping_add(len as u32);
        self.page().write_u32(LEFT_CONS, self.read_cons);
        self.send_notify(xen, NOTIFY_READ)?;
        Ok(Step::Done(len))
    }

    fn try_write<X: Xen<Page = P>>(&mut self, xen: &X, data: &[u8]) -> Result<Step, VchanError> {
        if self.cli_live() == LIVE_CLOSED {
            return Err(VchanError::Closed);
        }
        let mut room = self.writable()?;
        if room == 0 {
            self.request_notify(NOTIFY_READ);
            room = self.writable()?;
            if room == 0 {
                return Ok(Step::Wait(self.port));
            }
        }
        let len = data.len().min(room as usize);
        let shared = &self.shared.page;
        self.write_ring.pieces(shared, self.write_prod, len, |page, offset, range| page.write(offset, &data[range]));
        self.write_prod = self.write_prod.wrapping_add(len as u32);
        self.page().write_u32(RIGHT_PROD, self.write_prod);
        self.send_notify(xen, NOTIFY_WRITE)?;
        Ok(Step::Done(len))
    }

    /// Tells the client we are gone (it sees `srv_live == 0` and an event).
    fn hang_up<X: Xen<Page = P>>(&self, xen: &X) {
        self.set_byte(SRV_LIVE, LIVE_CLOSED);
        fence(Ordering::SeqCst);
        // Best effort: a port whose peer left drops the event, which is fine.
        let _ = xen.notify(self.port);
    }

    /// Hangs up, closes the port and hands every granted page to `retired`.
    fn retire<X: Xen<Page = P>>(self, xen: &X, retired: &mut Vec<Granted<P>>) {
        self.hang_up(xen);
        let _ = xen.close(self.port);
        for ring in [self.read_ring, self.write_ring] {
            if let Place::Pages(mut pages) = ring.place {
                retired.append(&mut pages);
            }
        }
        retired.push(self.shared);
    }
}

/// Ends every grant the client no longer maps and frees those pages; the rest stay.
fn reap<X: Grants, P>(xen: &X, retired: &mut Vec<Granted<P>>) {
    use xen_seams::Error;
    // `Invalid` means the grant is not active: the page is safe to free.
    retired.retain(|granted| !matches!(xen.end(granted.grant), Ok(()) | Err(Error::Invalid)));
}

/// Where the server is with its current channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// The channel's nodes are not (yet) in xenstore.
    Unpublished,
    /// Published; no client yet.
    Listening,
    /// A client connected (it may have closed since: `cli_live` says).
    Connected,
    /// The channel is spent: we hung up, or a client came and went.
    HungUp,
}

/// A libxenvchan server at one xenstore path, for one client domain, one client at a
/// time (see the module doc).
pub struct Server<'x, X: Xen> {
    xen: &'x X,
    client: DomId,
    path: String,
    orders: Orders,
    /// Owner us, nobody else, the client may read.
    permissions: [Permission; 2],
    channel: Option<Channel<X::Page>>,
    phase: Phase,
    /// Pages of earlier channels whose grants have not ended yet.
    retired: Vec<Granted<X::Page>>,
    /// How long `read` waits for data.
    pub read_timeout: Duration,
    /// How long `write` waits for room.
    pub write_timeout: Duration,
}

impl<'x, X: Xen> Server<'x, X> {
    /// Sets up a vchan that domain `client` may connect to at `path` (relative to our
    /// home, or absolute): page(s), grants, port, and the xenstore nodes. Waits for no
    /// client.
    pub async fn listen(xen: &'x X, client: DomId, path: &str, orders: Orders) -> Result<Self, VchanError> {
        orders.check()?;
        let owner = Permission::parse(&format!("n{}", xen.domid()));
        let reader = Permission::parse(&format!("r{client}"));
        let (Some(owner), Some(reader)) = (owner, reader) else {
            return Err(VchanError::Xenstore(XenstoreError::Broken("permission text did not parse")));
        };
        let mut server = Server {
            xen,
            client,
            path: String::from(path),
            orders,
            permissions: [owner, reader],
            channel: None,
            phase: Phase::Unpublished,
            retired: Vec::new(),
            read_timeout: READ_WAIT,
            write_timeout: WRITE_WAIT,
        };
        server.arm().await?;
        Ok(server)
    }

    /// The path the nodes are published at.
    pub fn path(&self) -> &str {
        &self.path
    }

    pub fn orders(&self) -> Orders {
        self.orders
    }

    /// Waits, at most `limit`, for the next client. A spent channel (the last client
    /// left, or we hung up) is retired first and a fresh one published; a client still
    /// connected is hung up. Once a client is in, the nodes are removed from xenstore.
    pub async fn accept(&mut self, limit: Duration) -> Result<(), VchanError> {
        let deadline = deadline(self.xen, limit);
        loop {
            let port = self.arm().await?;
            match self.cli_live() {
                LIVE_CONNECTED => {
                    if let Err(e) = self.unpublish().await {
                        self.disconnect();
                        return Err(e);
                    }
                    self.phase = Phase::Connected;
                    return Ok(());
                }
                // A client came and went before we looked: that page is spent.
                LIVE_CLOSED => self.phase = Phase::HungUp,
                _ => {
                    let now = self.xen.now_ns();
                    if now >= deadline {
                        return Err(VchanError::NoClient);
                    }
                    wait_or_sleep(self.xen, port, deadline - now).await;
                }
            }
        }
    }

    /// Whether a client is connected and has not closed.
    pub fn is_connected(&self) -> bool {
        self.phase == Phase::Connected && self.cli_live() != LIVE_CLOSED
    }

    /// Reads what the client wrote, at least one byte, waiting at most
    /// `read_timeout` for it (`Ok(0)` only for an empty `buf`). After the client
    /// closes, what it wrote before is still returned, then `Err(Closed)`.
    pub async fn read(&mut self, buf: &mut [u8]) -> Result<usize, VchanError> {
        let deadline = deadline(self.xen, self.read_timeout);
        loop {
            let xen = self.xen;
            let channel = self.connected()?;
            if buf.is_empty() {
                return Ok(0);
            }
            let step = channel.try_read(xen, buf);
            match self.step_or_hang_up(step)? {
                Step::Done(n) => return Ok(n),
                Step::Wait(port) => self.wait(port, deadline).await?,
            }
        }
    }

    /// Writes as much of `data` as fits, at least one byte, waiting at most
    /// `write_timeout` for room (`Ok(0)` only for empty `data`).
    pub async fn write(&mut self, data: &[u8]) -> Result<usize, VchanError> {
        let deadline = deadline(self.xen, self.write_timeout);
        loop {
            let xen = self.xen;
            let channel = self.connected()?;
            if data.is_empty() {
                return Ok(0);
            }
            let step = channel.try_write(xen, data);
            match self.step_or_hang_up(step)? {
                Step::Done(n) => return Ok(n),
                Step::Wait(port) => self.wait(port, deadline).await?,
            }
        }
    }

    /// Writes all of `data`; fails if the client makes no room for `write_timeout`.
    pub async fn write_all(&mut self, mut data: &[u8]) -> Result<(), VchanError> {
        while !data.is_empty() {
            let n = self.write(data).await?;
            data = &data[n..];
        }
        Ok(())
    }

    /// Hangs up on the client (it sees `srv_live == 0`); the next `accept` publishes a
    /// fresh page.
    pub fn disconnect(&mut self) {
        if let Some(channel) = &self.channel {
            channel.hang_up(self.xen);
            self.phase = Phase::HungUp;
        }
    }

    /// Closes the vchan: hangs up, removes the nodes, and ends every grant, waiting at
    /// most [`UNMAP_WAIT`] for the client to unmap. Pages still mapped after that are
    /// leaked (never freed while granted) and reported as `StillMapped`.
    pub async fn shutdown(mut self) -> Result<(), VchanError> {
        self.retire_channel();
        let removed = self.unpublish().await;
        let deadline = deadline(self.xen, UNMAP_WAIT);
        let mut pause = Duration::from_millis(1);
        loop {
            reap(self.xen, &mut self.retired);
            let now = self.xen.now_ns();
            if self.retired.is_empty() || now >= deadline {
                break;
            }
            self.xen.sleep(pause.min(Duration::from_nanos(deadline - now))).await;
            pause = (pause * 2).min(Duration::from_millis(100));
        }
        let still_mapped = self.leak_retired();
        removed?;
        match still_mapped {
            0 => Ok(()),
            pages => Err(VchanError::StillMapped { pages }),
        }
    }

    /// Makes sure a fresh channel is published; returns its port.
    async fn arm(&mut self) -> Result<Port, VchanError> {
        if matches!(self.phase, Phase::Connected | Phase::HungUp) {
            self.retire_channel();
        }
        let channel = match self.channel.take() {
            Some(channel) => channel,
            None => {
                reap(self.xen, &mut self.retired);
                let limit = MAX_STALE_CHANNELS * (1 + self.orders.ring_pages());
                if self.retired.len() > limit {
                    return Err(VchanError::StalePages { pages: self.retired.len() });
                }
                self.phase = Phase::Unpublished;
                Channel::create(self.xen, self.client, self.orders, &mut self.retired)?
            }
        };
        let (grant, port) = (channel.shared.grant, channel.port);
        self.channel = Some(channel);
        if self.phase == Phase::Unpublished {
            self.publish(grant, port).await?;
            self.phase = Phase::Listening;
        }
        Ok(port)
    }

    /// Writes `ring-ref` and `event-channel` (and their permissions) in one transaction.
    async fn publish(&self, grant: GrantRef, port: Port) -> Result<(), VchanError> {
        let xen = self.xen;
        let ring_ref = format!("{}", grant.0);
        let event_channel = format!("{}", port.0);
        let result = xen
            .transaction(RetryPolicy::default(), async |tx, _| {
                xen.mkdir(tx, &self.path).await?;
                xen.set_perms(tx, &self.path, &self.permissions).await?;
                for (key, value) in [("ring-ref", &ring_ref), ("event-channel", &event_channel)] {
                    let node = format!("{}/{key}", self.path);
                    xen.write(tx, &node, value.as_bytes()).await?;
                    xen.set_perms(tx, &node, &self.permissions).await?;
                }
                Ok(())
            })
            .await;
        match result {
            Ok(()) => Ok(()),
            Err(TransactionError::TooManyConflicts { .. }) => Err(VchanError::TooManyConflicts),
            Err(TransactionError::Failed(e)) => Err(e.into()),
        }
    }

    /// Removes the nodes (absent already is fine).
    async fn unpublish(&self) -> Result<(), VchanError> {
        match self.xen.rm(Tx::NONE, &self.path).await {
            Err(e) if !e.is_missing() => Err(e.into()),
            _ => Ok(()),
        }
    }

    fn cli_live(&self) -> u8 {
        self.channel.as_ref().map_or(LIVE_CLOSED, Channel::cli_live)
    }

    /// The channel of the connected client.
    fn connected(&mut self) -> Result<&mut Channel<X::Page>, VchanError> {
        match (self.phase, self.channel.as_mut()) {
            (Phase::Connected, Some(channel)) => Ok(channel),
            (Phase::HungUp, _) => Err(VchanError::Closed),
            _ => Err(VchanError::NotConnected),
        }
    }

    /// Passes a step through; a corrupt ring hangs up first.
    fn step_or_hang_up(&mut self, step: Result<Step, VchanError>) -> Result<Step, VchanError> {
        if let Err(VchanError::CorruptRing { .. }) = step {
            self.disconnect();
        }
        step
    }

    /// Waits for an event on `port`, failing with `Timeout` once `deadline` has passed.
    async fn wait(&self, port: Port, deadline: u64) -> Result<(), VchanError> {
        let now = self.xen.now_ns();
        if now >= deadline {
            return Err(VchanError::Timeout);
        }
        wait_or_sleep(self.xen, port, deadline - now).await;
        Ok(())
    }

    /// Retires the current channel, if any.
    fn retire_channel(&mut self) {
        if let Some(channel) = self.channel.take() {
            channel.retire(self.xen, &mut self.retired);
            reap(self.xen, &mut self.retired);
        }
        self.phase = Phase::Unpublished;
    }

    /// Gives up on the retired pages still granted: never freed, so never reused
    /// while the client can see them. Returns how many.
    fn leak_retired(&mut self) -> usize {
        let count = self.retired.len();
        for granted in self.retired.drain(..) {
            core::mem::forget(granted.page);
        }
        count
    }
}

/// Without `shutdown`: hangs up, ends what grants it can and leaks the pages still
/// mapped. The xenstore nodes stay (removing them needs an await).
impl<X: Xen> Drop for Server<'_, X> {
    fn drop(&mut self) {
        self.retire_channel();
        self.leak_retired();
    }
}

fn deadline<X: Xen>(xen: &X, limit: Duration) -> u64 {
    xen.now_ns().saturating_add(u64::try_from(limit.as_nanos()).unwrap_or(u64::MAX))
}

/// Waits for an event on `port` or for `nanos`, whichever comes first.
async fn wait_or_sleep<X: Xen>(xen: &X, port: Port, nanos: u64) {
    let mut event = core::pin::pin!(xen.wait(port));
    let mut sleep = core::pin::pin!(xen.sleep(Duration::from_nanos(nanos)));
    core::future::poll_fn(|cx| {
        if event.as_mut().poll(cx).is_ready() || sleep.as_mut().poll(cx).is_ready() {
            core::task::Poll::Ready(())
        } else {
            core::task::Poll::Pending
        }
    })
    .await
}
