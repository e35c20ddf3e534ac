//! A libxenvchan client for host tests (feature `sim`), step for step as tools/libs/vchan/init.c
//! (`libxenvchan_client_init`) and io.c (`libxenvchan_read`/`write`/`close`) do it,
//! with its own reading of `struct vchan_interface` (not the server's `layout`), so
//! that a layout mistake on either side shows up as a failed exchange.

use alloc::vec::Vec;
use core::time::Duration;
use xen_seams::sim::{MappedPage, SimXen};
use xen_seams::{DomId, Error, EventChannels, GrantRef, Port, SharedPage, Tx, Xenstore, XenstoreWatch};

// struct vchan_interface, field after field.
/// `struct ring_shared left` (client writes), then `right`: `{ u32 cons, prod }` each.
const LEFT: usize = 0;
const RIGHT: usize = LEFT + 8;
const CONS: usize = 0;
const PROD: usize = 4;
/// `uint16_t left_order, right_order`.
const LEFT_ORDER: usize = RIGHT + 8;
const RIGHT_ORDER: usize = LEFT_ORDER + 2;
/// `uint8_t cli_live, srv_live, cli_notify, srv_notify`.
const CLI_LIVE: usize = RIGHT_ORDER + 2;
const SRV_LIVE: usize = CLI_LIVE + 1;
const CLI_NOTIFY: usize = SRV_LIVE + 1;
const SRV_NOTIFY: usize = CLI_NOTIFY + 1;
/// `uint32_t grants[]`.
const GRANTS: usize = SRV_NOTIFY + 1;
const VCHAN_NOTIFY_WRITE: u8 = 1;
const VCHAN_NOTIFY_READ: u8 = 2;
/// init.c's SMALL_RING_SHIFT/OFFSET, LARGE_RING_SHIFT/OFFSET, MAX_RING_SHIFT.
const SMALL_SHIFT: u32 = 10;
const SMALL_OFFSET: usize = 1024;
const LARGE_SHIFT: u32 = 11;
const LARGE_OFFSET: usize = 2048;
const MAX_SHIFT: u32 = 20;
const PAGE_SHIFT: u32 = 12;
const PAGE: usize = 4096;

/// Why the client could not connect, or its peer went away.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum ClientError {
    /// `ring-ref` or `event-channel` is missing or 0 (init.c gives up too).
    #[error("ring-ref or event-channel is missing or 0")]
    NoNodes,
    /// Binding the port or mapping a grant failed.
    #[error("vchan client: {0}")]
    Xen(#[from] Error),
    /// The orders in the page are out of range or collide.
    #[error("ring orders {0}/{1} are out of range or collide")]
    BadOrders(u32, u32),
    /// `srv_live` is 0 and nothing is left to read.
    #[error("the server closed and nothing is left to read")]
    Closed,
}

/// Where one ring's bytes are.
enum Buffer {
    /// Inside the shared page, at this offset.
    InPage(usize),
    /// Mapped grants of their own.
    Mapped(Vec<MappedPage>),
}

struct Ring {
    /// Offset of its `struct ring_shared` in the page.
    shared: usize,
    order: u32,
    buffer: Buffer,
}

impl Ring {
    fn size(&self) -> u32 {
        1 << self.order
    }
}

/// A connected libxenvchan client.
pub struct Client<'a> {
    xen: &'a SimXen,
    ring: MappedPage,
    /// The left ring: we write, the server reads.
    write: Ring,
    /// The right ring: the server writes, we read.
    read: Ring,
    port: Port,
}

fn parse(text: Result<alloc::string::String, xen_seams::XenstoreError>) -> u32 {
    text.ok().and_then(|t| t.parse().ok()).unwrap_or(0)
}

impl<'a> Client<'a> {
    /// `libxenvchan_client_init(domain, path)`: read both nodes, bind the port, map
    /// the page(s), check the orders, then `cli_live = 1`, `srv_notify = WRITE` and an
    /// event to the server.
    pub async fn init(xen: &'a SimXen, server: DomId, path: &str) -> Result<Client<'a>, ClientError> {
        let ring_ref = parse(xen.read_string(Tx::NONE, &alloc::format!("{path}/ring-ref")).await);
        if ring_ref == 0 {
            return Err(ClientError::NoNodes);
        }
        let remote_port = parse(xen.read_string(Tx::NONE, &alloc::format!("{path}/event-channel")).await);
        if remote_port == 0 {
            return Err(ClientError::NoNodes);
        }
        let port = xen.bind_interdomain(server, remote_port)?;
        match Self::map(xen, server, GrantRef(ring_ref), port) {
            Ok(client) => {
                client.set(CLI_LIVE, 1);
                client.set(SRV_NOTIFY, VCHAN_NOTIFY_WRITE);
                xen.notify(port)?;
                Ok(client)
            }
            Err(e) => {
                xen.close(port)?;
                Err(e)
            }
        }
    }

    /// init.c's `init_gnt_cli`.
    fn map(xen: &'a SimXen, server: DomId, ring_ref: GrantRef, port: Port) -> Result<Client<'a>, ClientError> {
        let ring = xen.map_grant(server, ring_ref, true)?;
        let order = |offset| {
            let mut bytes = [0; 2];
            ring.read(offset, &mut bytes);
            u32::from(u16::from_le_bytes(bytes))
        };
        let (write_order, read_order) = (order(LEFT_ORDER), order(RIGHT_ORDER));
        let valid = |o: u32| (SMALL_SHIFT..=MAX_SHIFT).contains(&o);
        if !valid(write_order) || !valid(read_order) || (write_order == read_order && read_order < PAGE_SHIFT) {
            return Err(ClientError::BadOrders(write_order, read_order));
        }
        let mut next_grant = 0;
        let mut buffer = |order: u32, writable: bool| -> Result<Buffer, ClientError> {
            Ok(match order {
                SMALL_SHIFT => Buffer::InPage(SMALL_OFFSET),
                LARGE_SHIFT => Buffer::InPage(LARGE_OFFSET),
                _ => {
                    let mut pages = Vec::new();
                    for _ in 0..1usize << (order - PAGE_SHIFT) {
                        let grant = GrantRef(ring.read_u32(GRANTS + 4 * next_grant));
                        next_grant += 1;
                        pages.push(xen.map_grant(server, grant, writable)?);
                    }
                    Buffer::Mapped(pages)
                }
            })
        };
        let write = Ring { shared: LEFT, order: write_order, buffer: buffer(write_order, true)? };
        let read = Ring { shared: RIGHT, order: read_order, buffer: buffer(read_order, false)? };
        Ok(Client { xen, ring, write, read, port })
    }

    /// The shared page, for tests that play a hostile client.
    pub fn page(&self) -> &MappedPage {
        &self.ring
    }

    pub fn port(&self) -> Port {
        self.port
    }

    fn byte(&self, offset: usize) -> u8 {
        let mut byte = [0];
        self.ring.read(offset, &mut byte);
        byte[0]
    }

    fn set(&self, offset: usize, value: u8) {
        self.ring.write(offset, &[value]);
    }

    /// `libxenvchan_is_open` for a client: `srv_live`.
    pub fn is_open(&self) -> bool {
        self.byte(SRV_LIVE) != 0
    }

    /// `request_notify`: ask the server for an event (the sim is sequentially
    /// consistent, so no barrier is needed here).
    fn request_notify(&self, bit: u8) {
        self.set(SRV_NOTIFY, self.byte(SRV_NOTIFY) | bit);
    }

    /// `send_notify`: clear the server's request and send an event if it was there.
    fn send_notify(&self, bit: u8) {
        let previous = self.byte(CLI_NOTIFY);
        self.set(CLI_NOTIFY, previous & !bit);
        if previous & bit != 0 {
            self.xen.notify(self.port).expect("our port is bound");
        }
    }

    /// `raw_get_data_ready`: a bad index reads as "nothing", as io.c does.
    fn raw_data_ready(&self) -> u32 {
        let (prod, cons) = (self.read.shared + PROD, self.read.shared + CONS);
        let ready = self.ring.read_u32(prod).wrapping_sub(self.ring.read_u32(cons));
        if ready > self.read.size() { 0 } else { ready }
    }

    fn raw_buffer_space(&self) -> u32 {
        let (prod, cons) = (self.write.shared + PROD, self.write.shared + CONS);
        let used = self.ring.read_u32(prod).wrapping_sub(self.ring.read_u32(cons));
        let ready = self.write.size().wrapping_sub(used);
        if ready > self.write.size() { 0 } else { ready }
    }

    /// `libxenvchan_data_ready`: always asks to hear about more.
    pub fn data_ready(&self) -> u32 {
        self.request_notify(VCHAN_NOTIFY_WRITE);
        self.raw_data_ready()
    }

    /// Calls `f(page, offset, range)` for each contiguous piece of `len` bytes at `index`.
    fn pieces(
        &self,
        ring: &Ring,
        index: u32,
        len: usize,
        mut f: impl FnMut(&MappedPage, usize, core::ops::Range<usize>),
    ) {
        let size = ring.size() as usize;
        let mut at = index as usize % size;
        let mut done = 0;
        while done < len {
            let (page, offset, room) = match &ring.buffer {
                Buffer::InPage(base) => (&self.ring, base + at, size - at),
                Buffer::Mapped(pages) => (&pages[at / PAGE], at % PAGE, PAGE - at % PAGE),
            };
            let n = room.min(len - done);
            f(page, offset, done..done + n);
            done += n;
            at = (at + n) % size;
        }
    }

    /// Non-blocking `libxenvchan_read`: `Ok(0)` if nothing is there yet.
    pub fn try_read(&self, buf: &mut [u8]) -> Result<usize, ClientError> {
        let mut ready = self.raw_data_ready();
        if (ready as usize) < buf.len() {
            self.request_notify(VCHAN_NOTIFY_WRITE);
            ready = self.raw_data_ready();
        }
        if ready == 0 {
            return if self.is_open() { Ok(0) } else { Err(ClientError::Closed) };
        }
        let len = buf.len().min(ready as usize);
        let cons = self.ring.read_u32(self.read.shared + CONS);
        self.pieces(&self.read, cons, len, |page, offset, range| page.read(offset, &mut buf[range]));
        self.ring.write_u32(self.read.shared + CONS, cons.wrapping_add(len as u32));
        self.send_notify(VCHAN_NOTIFY_READ);
        Ok(len)
    }

    /// Non-blocking `libxenvchan_write`: as much as fits now.
    pub fn try_write(&self, data: &[u8]) -> Result<usize, ClientError> {
        if !self.is_open() {
            return Err(ClientError::Closed);
        }
        let mut room = self.raw_buffer_space();
        if (room as usize) < data.len() {
            self.request_notify(VCHAN_NOTIFY_READ);
            room = self.raw_buffer_space();
        }
        let len = data.len().min(room as usize);
        if len == 0 {
            return Ok(0);
        }
        let prod = self.ring.read_u32(self.write.shared + PROD);
        self.pieces(&self.write, prod, len, |page, offset, range| page.write(offset, &data[range]));
        self.ring.write_u32(self.write.shared + PROD, prod.wrapping_add(len as u32));
        self.send_notify(VCHAN_NOTIFY_WRITE);
        Ok(len)
    }

    /// `libxenvchan_wait`: the next event.
    pub async fn wait(&self) {
        self.xen.wait(self.port).await;
    }

    /// Blocking `libxenvchan_read`.
    pub async fn read(&self, buf: &mut [u8]) -> Result<usize, ClientError> {
        loop {
            match self.try_read(buf)? {
                0 => self.wait().await,
                n => return Ok(n),
            }
        }
    }

    /// Blocking `libxenvchan_write`: all of `data`.
    pub async fn write_all(&self, mut data: &[u8]) -> Result<(), ClientError> {
        while !data.is_empty() {
            let n = self.try_write(data)?;
            data = &data[n..];
            if !data.is_empty() {
                self.wait().await;
            }
        }
        Ok(())
    }

    /// Reads until `byte` has been read (the bytes after it in the last read are kept too).
    pub async fn read_until(&self, byte: u8) -> Result<Vec<u8>, ClientError> {
        let mut got = Vec::new();
        let mut buf = [0; 64];
        while !got.contains(&byte) {
            let n = self.read(&mut buf).await?;
            got.extend_from_slice(&buf[..n]);
        }
        Ok(got)
    }

    /// `libxenvchan_close`: unmap the ring pages, `cli_live = 0`, unmap the page (the
    /// gntdev unmap notification would clear `cli_live` and notify as well), notify,
    /// close the port.
    pub fn close(self) {
        let Client { xen, ring, write, read, port } = self;
        drop((write, read));
        ring.write(CLI_LIVE, &[0]);
        ring.unmap();
        let _ = xen.notify(port);
        xen.close(port).expect("our port is open");
    }

    /// Closes like a client that dies with its mappings held by someone else: says
    /// goodbye and closes the port, but hands the mappings back instead of unmapping.
    pub fn close_keeping_mappings(self) -> Vec<MappedPage> {
        let Client { xen, ring, write, read, port } = self;
        ring.write(CLI_LIVE, &[0]);
        let _ = xen.notify(port);
        xen.close(port).expect("our port is open");
        let mut kept = Vec::from([ring]);
        for buffer in [write.buffer, read.buffer] {
            if let Buffer::Mapped(pages) = buffer {
                kept.extend(pages);
            }
        }
        kept
    }
}

/// `connect_vchan` of vchan-socket-proxy: watch `path` and try
/// `libxenvchan_client_init` at every change until it works.
pub async fn connect<'a>(xen: &'a SimXen, server: DomId, path: &str) -> Client<'a> {
    let watch = xen.watch(path).await.expect("watch registered");
    loop {
        watch.next(Duration::from_secs(120)).await.expect("the server publishes its nodes in time");
        if let Ok(client) = Client::init(xen, server, path).await {
            return client;
        }
    }
}
