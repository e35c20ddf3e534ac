//! The xenstore client: requests, replies and watches over the shared ring page.
//!
//! One task (`pump`) owns the ring: it copies queued requests into the request ring,
//! reads the response ring through the protocol decoder, and hands each reply to the
//! request that waits for it and each watch event to its watch. Requests are queued
//! whole, so messages never interleave. Every wait is bounded: a request that gets no
//! reply within `REPLY_TIMEOUT` fails, and a corrupt ring or an oversized message
//! marks the connection broken, which fails every waiter at once.
//!
//! A dropped `Watch` is unregistered with xenstored (an UNWATCH queued from `Drop`,
//! whose reply nobody awaits): xenstored counts a domain's watches against a quota
//! (C xenstored's default is 128 per domain), so watches that only went out of scope
//! here once used it up after about thirty CD-ROM changes, and the stub domain could
//! then neither see a new PV disk nor notice the old one's backend closing.

use crate::events::{self, Port};
use crate::mm;
use crate::time::{self, TimedOut};
use alloc::collections::{BTreeMap, BTreeSet, VecDeque};
use alloc::string::String;
use alloc::vec::Vec;
use core::future::poll_fn;
use core::sync::atomic::{AtomicU64, Ordering, fence};
use core::task::{Poll, Waker};
use core::time::Duration;
use spin::Mutex;
use xenstore::decoder::Decoder;
use xenstore::reply::{self, WatchEvent, XsError};
use xenstore::ring::{self as xsring, RING_SIZE};
use xenstore::session::{Incoming, Session};
use xenstore::wire::{Message, MsgType, Permission, Request};

/// How long a request waits for its reply.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

pub use xen_seams::{Tx, XenstoreError as Error};

struct Connection {
    page: *mut u8,
    port: Port,
    session: Session,
    decoder: Decoder,
    outgoing: VecDeque<u8>,
    replies: BTreeMap<u32, Result<Message, XsError>>,
    reply_wakers: BTreeMap<u32, Waker>,
    /// Requests whose replies nobody awaits (the UNWATCH of a dropped watch).
    unawaited: BTreeSet<u32>,
    watches: BTreeMap<String, (VecDeque<WatchEvent>, Option<Waker>)>,
    broken: Option<&'static str>,
}

// SAFETY: `page` is the xenstore ring page, touched only by the pump under the lock;
// the image runs on one vCPU.
unsafe impl Send for Connection {}

static CONNECTION: Mutex<Option<Connection>> = Mutex::new(None);
static NEXT_TOKEN: AtomicU64 = AtomicU64::new(0);

/// Opens the connection from start_info's store page and event channel and starts
/// the pump task (it runs inside `executor::block_on`).
pub fn init(store_mfn: u64, store_evtchn: u32) -> Result<(), Error> {
    let pfn = mm::pfn_of(store_mfn);
    if pfn >= mm::stats().nr_pages {
        return Err(Error::Broken("start_info's xenstore frame is not ours"));
    }
    *CONNECTION.lock() = Some(Connection {
        page: mm::va_of(pfn) as *mut u8,
        port: Port(store_evtchn),
        session: Session::new(),
        decoder: Decoder::new(),
        outgoing: VecDeque::new(),
        replies: BTreeMap::new(),
        reply_wakers: BTreeMap::new(),
        unawaited: BTreeSet::new(),
        watches: BTreeMap::new(),
        broken: None,
    });
    events::unmask(Port(store_evtchn)).map_err(|_| Error::Broken("cannot unmask the xenstore event channel"))?;
    crate::executor::spawn(pump());
    Ok(())
}

impl Connection {
    fn index(&self, offset: usize) -> *mut u32 {
        self.page.wrapping_add(offset) as *mut u32
    }

    fn read_index(&self, offset: usize) -> u32 {
        // SAFETY: offset is one of the index fields inside the mapped ring page.
        unsafe { self.index(offset).read_volatile() }
    }

    fn write_index(&self, offset: usize, value: u32) {
        // SAFETY: as above; we own the producer index of req and the consumer of rsp.
        unsafe { self.index(offset).write_volatile(value) }
    }

    /// Moves queued request bytes into the ring; returns whether any moved.
    fn send_some(&mut self) -> Result<bool, &'static str> {
        let cons = self.read_index(xsring::REQ_CONS_OFFSET);
        let prod = self.read_index(xsring::REQ_PROD_OFFSET);
        let free = xsring::free_space(cons, prod).map_err(|_| "request ring indexes corrupt")?;
        let n = free.min(self.outgoing.len());
        if n == 0 {
            return Ok(false);
        }
        for (i, b) in self.outgoing.drain(..n).enumerate() {
            let slot = xsring::slot(prod.wrapping_add(i as u32));
            // SAFETY: slot < RING_SIZE, inside the request array of the ring page;
            // xenstored reads only below req_prod, which we publish afterwards.
            unsafe { self.page.add(xsring::REQ_OFFSET + slot).write_volatile(b) };
        }
        fence(Ordering::Release);
        self.write_index(xsring::REQ_PROD_OFFSET, prod.wrapping_add(n as u32));
        Ok(true)
    }

    /// Reads available response bytes into the decoder and dispatches whole
    /// messages; returns whether anything was read.
    fn receive_some(&mut self) -> Result<bool, &'static str> {
        let mut progress = false;
        loop {
            let cons = self.read_index(xsring::RSP_CONS_OFFSET);
            let prod = self.read_index(xsring::RSP_PROD_OFFSET);
            let available = xsring::readable(cons, prod).map_err(|_| "response ring indexes corrupt")?;
            let wanted = self.decoder.bytes_wanted();
            if available == 0 || wanted == 0 {
                break;
            }
            fence(Ordering::Acquire);
            let n = available.min(wanted).min(RING_SIZE);
            let mut buf = [0u8; RING_SIZE];
            for (i, b) in buf[..n].iter_mut().enumerate() {
                let slot = xsring::slot(cons.wrapping_add(i as u32));
                // SAFETY: slot < RING_SIZE, inside the response array; bytes below
                // rsp_prod are xenstored's finished output.
                *b = unsafe { self.page.add(xsring::RSP_OFFSET + slot).read_volatile() };
            }
            let taken = self.decoder.push(&buf[..n]);
            fence(Ordering::Release);
            self.write_index(xsring::RSP_CONS_OFFSET, cons.wrapping_add(taken as u32));
            progress = true;
            while let Some(message) = self.decoder.next_message() {
                let message = message.map_err(|_| "xenstored sent a malformed or oversized message")?;
                self.dispatch(message);
            }
            if self.decoder.broken().is_some() {
                return Err("xenstored sent a malformed or oversized message");
            }
        }
        Ok(progress)
    }

    fn dispatch(&mut self, message: Message) {
        match self.session.accept(message) {
            Incoming::Reply { req_id, result } if self.unawaited.remove(&req_id) => {
                if let Err(e) = result {
                    log::debug!("xenstore: an unawaited request failed: {e:?}");
                }
            }
            Incoming::Reply { req_id, result } => {
                self.replies.insert(req_id, result);
                if let Some(w) = self.reply_wakers.remove(&req_id) {
                    w.wake();
                }
            }
            Incoming::Watch(event) => match self.watches.get_mut(&event.token) {
                Some((queue, waker)) => {
                    // A watch nobody reads keeps at most 64 events; older ones go.
                    if queue.len() == 64 {
                        queue.pop_front();
                    }
                    queue.push_back(event);
                    if let Some(w) = waker.take() {
                        w.wake();
                    }
                }
                None => log::debug!("xenstore: event for unknown watch token {:?}", event.token),
            },
            Incoming::ProtocolError(e) => log::warn!("xenstore: ignoring unexpected message: {e:?}"),
        }
    }

    /// Queues `request` (outside any transaction) and sends what fits; its reply will
    /// be dropped on arrival. For `Drop`, which cannot wait.
    fn send_unawaited(&mut self, request: &Request<'_>) {
        if self.broken.is_some() {
            return;
        }
        let Ok((req_id, bytes)) = self.session.start(0, request) else { return };
        self.unawaited.insert(req_id);
        self.outgoing.extend(bytes);
        match self.send_some() {
            Ok(true) => {
                let _ = events::send(self.port);
            }
            // The pump sends the rest when xenstored makes room.
            Ok(false) => {}
            Err(why) => self.break_connection(why),
        }
    }

    fn break_connection(&mut self, why: &'static str) {
        log::error!("xenstore: {why}");
        self.broken = Some(why);
        for (_, w) in core::mem::take(&mut self.reply_wakers) {
            w.wake();
        }
        for (_, (_, w)) in self.watches.iter_mut() {
            if let Some(w) = w.take() {
                w.wake();
            }
        }
    }
}

/// Owns the ring: sends, receives, and sleeps on the event channel in between.
async fn pump() {
    loop {
        let port = {
            let mut guard = CONNECTION.lock();
            let Some(c) = guard.as_mut() else { return };
            if c.broken.is_some() {
                return;
            }
            let moved = c.send_some().and_then(|sent| Ok(sent | c.receive_some()?));
            match moved {
                Ok(true) => {
                    let _ = events::send(c.port);
                    continue;
                }
                Ok(false) => c.port,
                Err(why) => {
                    c.break_connection(why);
                    return;
                }
            }
        };
        events::wait(port).await;
    }
}

/// Sends `request` (in transaction `tx`, 0 for none) and waits for its reply.
async fn call(tx: u32, request: &Request<'_>) -> Result<Message, Error> {
    let req_id = {
        let mut guard = CONNECTION.lock();
        let c = guard.as_mut().ok_or(Error::Broken("xenstore not initialised"))?;
        if let Some(why) = c.broken {
            return Err(Error::Broken(why));
        }
        let (req_id, bytes) = c.session.start(tx, request).map_err(Error::Encode)?;
        c.outgoing.extend(bytes);
        // Send what fits now; the pump sends the rest as xenstored makes room (it
        // notifies us when it consumes requests).
        match c.send_some() {
            Ok(true) => events::send(c.port).map_err(|_| Error::Broken("cannot notify xenstored"))?,
            Ok(false) => {}
            Err(why) => {
                c.break_connection(why);
                return Err(Error::Broken(why));
            }
        }
        req_id
    };
    let reply = poll_fn(|cx| {
        let mut guard = CONNECTION.lock();
        let Some(c) = guard.as_mut() else { return Poll::Ready(Err(Error::Broken("xenstore closed"))) };
        if let Some(result) = c.replies.remove(&req_id) {
            return Poll::Ready(result.map_err(Error::Xs));
        }
        if let Some(why) = c.broken {
            return Poll::Ready(Err(Error::Broken(why)));
        }
        c.reply_wakers.insert(req_id, cx.waker().clone());
        Poll::Pending
    });
    match time::timeout(REPLY_TIMEOUT, reply).await {
        Ok(result) => result,
        Err(TimedOut) => {
            if let Some(c) = CONNECTION.lock().as_mut() {
                c.session.cancel(req_id);
                c.reply_wakers.remove(&req_id);
            }
            Err(Error::Timeout)
        }
    }
}

pub const NO_TX: Tx = Tx::NONE;

pub async fn read(tx: Tx, path: &str) -> Result<Vec<u8>, Error> {
    Ok(reply::read(&call(tx.0, &Request::Read { path }).await?)?)
}

/// Reads a node as UTF-8 text.
pub async fn read_string(tx: Tx, path: &str) -> Result<String, Error> {
    String::from_utf8(read(tx, path).await?).map_err(|_| Error::Xs(XsError::NotUtf8))
}

pub async fn write(tx: Tx, path: &str, value: &[u8]) -> Result<(), Error> {
    Ok(reply::ok(&call(tx.0, &Request::Write { path, value }).await?, MsgType::Write)?)
}

pub async fn mkdir(tx: Tx, path: &str) -> Result<(), Error> {
    Ok(reply::ok(&call(tx.0, &Request::Mkdir { path }).await?, MsgType::Mkdir)?)
}

pub async fn rm(tx: Tx, path: &str) -> Result<(), Error> {
    Ok(reply::ok(&call(tx.0, &Request::Rm { path }).await?, MsgType::Rm)?)
}

pub async fn directory(tx: Tx, path: &str) -> Result<Vec<String>, Error> {
    Ok(reply::directory(&call(tx.0, &Request::Directory { path }).await?)?)
}

pub async fn get_perms(tx: Tx, path: &str) -> Result<Vec<Permission>, Error> {
    Ok(reply::get_perms(&call(tx.0, &Request::GetPerms { path }).await?)?)
}

pub async fn set_perms(tx: Tx, path: &str, permissions: &[Permission]) -> Result<(), Error> {
    Ok(reply::ok(&call(tx.0, &Request::SetPerms { path, permissions }).await?, MsgType::SetPerms)?)
}

pub async fn get_domain_path(domid: u16) -> Result<String, Error> {
    Ok(reply::get_domain_path(&call(0, &Request::GetDomainPath { domid }).await?)?)
}

pub async fn transaction_start() -> Result<Tx, Error> {
    Ok(Tx(reply::transaction_start(&call(0, &Request::TransactionStart).await?)?))
}

/// Ends a transaction; committing fails with EAGAIN (a conflict) when another
/// write touched what the transaction used.
pub async fn transaction_end(tx: Tx, commit: bool) -> Result<(), Error> {
    Ok(reply::ok(&call(tx.0, &Request::TransactionEnd { commit }).await?, MsgType::TransactionEnd)?)
}

/// A registered watch; events arrive through `next`. Dropping it unregisters it
/// (with xenstored too, without waiting for the reply).
pub struct Watch {
    path: String,
    token: String,
    /// Whether xenstored still has it (false once `cancel` has unregistered it).
    registered: bool,
}

/// Watches `path` (and everything below it). Xenstored fires once at registration.
pub async fn watch(path: &str) -> Result<Watch, Error> {
    let token = alloc::format!("w{}", NEXT_TOKEN.fetch_add(1, Ordering::Relaxed));
    if let Some(c) = CONNECTION.lock().as_mut() {
        c.watches.insert(token.clone(), (VecDeque::new(), None));
    }
    let result =
        call(0, &Request::Watch { path, token: &token }).await.and_then(|m| Ok(reply::ok(&m, MsgType::Watch)?));
    if let Err(e) = result {
        if let Some(c) = CONNECTION.lock().as_mut() {
            c.watches.remove(&token);
        }
        return Err(e);
    }
    Ok(Watch { path: path.into(), token, registered: true })
}

impl Watch {
    /// The next event (path that changed), waiting at most `limit`.
    pub async fn next_event(&self, limit: Duration) -> Result<String, Error> {
        let event = poll_fn(|cx| {
            let mut guard = CONNECTION.lock();
            let Some(c) = guard.as_mut() else { return Poll::Ready(Err(Error::Broken("xenstore closed"))) };
            if let Some(why) = c.broken {
                return Poll::Ready(Err(Error::Broken(why)));
            }
            let Some((queue, waker)) = c.watches.get_mut(&self.token) else {
                return Poll::Ready(Err(Error::Broken("watch vanished")));
            };
            match queue.pop_front() {
                Some(e) => Poll::Ready(Ok(e.path)),
                None => {
                    *waker = Some(cx.waker().clone());
                    Poll::Pending
                }
            }
        });
        time::timeout(limit, event).await.map_err(|_| Error::Timeout)?
    }

    /// Unregisters the watch with xenstored and waits for its answer.
    pub async fn cancel(mut self) -> Result<(), Error> {
        self.registered = false;
        let result = call(0, &Request::Unwatch { path: &self.path, token: &self.token }).await;
        result.and_then(|m| Ok(reply::ok(&m, MsgType::Unwatch)?))
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        // Events for the token are dropped from now on; xenstored is told to stop
        // sending them unless `cancel` already did.
        if let Some(c) = CONNECTION.lock().as_mut() {
            c.watches.remove(&self.token);
            if self.registered {
                c.send_unawaited(&Request::Unwatch { path: &self.path, token: &self.token });
            }
        }
    }
}
