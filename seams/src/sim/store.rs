//! Each domain's xenstore connection: requests go to the xenstore sim as bytes
//! through a `Session`, replies and watch events come back through a `Decoder`, as
//! in the kernel's client.

use alloc::collections::{BTreeMap, VecDeque};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::future::poll_fn;
use core::task::Poll;
use core::time::Duration;

use xenstore::decoder::Decoder;
use xenstore::reply::{self, Errno, XsError};
use xenstore::session::{Incoming, Session};
use xenstore::sim::{ConnectionId, Sim};
use xenstore::wire::{Message, MsgType, Permission, Request};

use super::{SimXen, State, Wait, WaitSlot, World, nanoseconds};
use crate::{DomId, Tx, XenstoreError, XenstoreWatch, XsResult};

/// How long a request waits for its reply (the kernel's client waits as long).
pub const DEFAULT_XENSTORE_TIMEOUT: Duration = Duration::from_secs(10);
/// Events a watch keeps when nobody reads them; older ones are dropped (as the kernel).
const WATCH_QUEUE_LEN: usize = 64;

pub(super) struct Connection {
    id: ConnectionId,
    session: Session,
    decoder: Decoder,
    replies: BTreeMap<u32, Result<Message, XsError>>,
    watches: BTreeMap<String, WatchQueue>,
    broken: Option<&'static str>,
    next_token: u64,
}

struct WatchQueue {
    path: String,
    events: VecDeque<String>,
}

impl Connection {
    pub(super) fn new(id: ConnectionId) -> Connection {
        Connection {
            id,
            session: Session::new(),
            decoder: Decoder::new(),
            replies: BTreeMap::new(),
            watches: BTreeMap::new(),
            broken: None,
            next_token: 0,
        }
    }

    pub(super) fn watch_path(&self, token: &str) -> Option<&str> {
        self.watches.get(token).map(|queue| queue.path.as_str())
    }
}

/// Moves everything the xenstore sim has sent to every connection into its replies
/// and watch queues, and wakes whoever waits for them.
pub(super) fn pump(state: &mut State) {
    let State { domains, xenstore, to_wake, waiters, .. } = state;
    for (domid, domain) in domains.iter_mut() {
        let connection = &mut domain.xenstore;
        let bytes = xenstore.receive(connection.id);
        if bytes.is_empty() || connection.broken.is_some() {
            continue;
        }
        let mut arrived = false;
        for message in connection.decoder.feed(&bytes) {
            let Ok(message) = message else {
                connection.broken = Some("xenstored sent a malformed or oversized message");
                break;
            };
            match connection.session.accept(message) {
                Incoming::Reply { req_id, result } => {
                    connection.replies.insert(req_id, result);
                    arrived = true;
                }
                Incoming::Watch(event) => {
                    if let Some(queue) = connection.watches.get_mut(&event.token) {
                        if queue.events.len() == WATCH_QUEUE_LEN {
                            queue.events.pop_front();
                        }
                        queue.events.push_back(event.path);
                        arrived = true;
                    }
                }
                // Ignored, as the kernel's client does (a late reply after a timeout).
                Incoming::ProtocolError(_) => {}
            }
        }
        if arrived || connection.broken.is_some() {
            let ours = |wait: &Wait| match wait {
                Wait::Reply { domid: d, .. } | Wait::Watch { domid: d, .. } => d == domid,
                _ => false,
            };
            to_wake.extend(waiters.values().filter(|w| ours(&w.wait)).map(|w| w.waker.clone()));
        }
    }
}

impl State {
    fn connection(&mut self, domid: DomId) -> &mut Connection {
        &mut self.domains.get_mut(&domid).expect("a handle's domain exists").xenstore
    }

    /// Sends `request` as `domid`; returns its request id.
    fn send_request(&mut self, domid: DomId, tx: Tx, request: &Request) -> XsResult<u32> {
        let connection = self.connection(domid);
        if let Some(why) = connection.broken {
            return Err(XenstoreError::Broken(why));
        }
        let started = connection.session.start(tx.0, request);
        let (req_id, bytes) = started.map_err(XenstoreError::Encode)?;
        let id = connection.id;
        self.xenstore.send(id, &bytes);
        pump(self);
        Ok(req_id)
    }

    /// Forgets request `req_id` of `domid` (its reply, if any, is dropped).
    fn cancel_request(&mut self, domid: DomId, req_id: u32) {
        let connection = self.connection(domid);
        connection.session.cancel(req_id);
        connection.replies.remove(&req_id);
    }

    fn xenstore_timeout_ns(&self) -> u64 {
        nanoseconds(self.xenstore_timeout.unwrap_or(DEFAULT_XENSTORE_TIMEOUT))
    }
}

/// A request waiting for its reply; dropping it cancels the request.
struct Outstanding {
    world: World,
    domid: DomId,
    req_id: Option<u32>,
}

impl Drop for Outstanding {
    fn drop(&mut self) {
        if let Some(req_id) = self.req_id.take()
            && let Ok(mut state) = self.world.state.try_borrow_mut()
        {
            state.cancel_request(self.domid, req_id);
        }
    }
}

impl SimXen {
    /// Sends `request` and waits for its checked reply, at most the xenstore timeout.
    async fn call(&self, tx: Tx, request: Request<'_>) -> XsResult<Message> {
        let domid = self.domid;
        let (req_id, deadline) = self.world.with(|state| {
            let req_id = state.send_request(domid, tx, &request)?;
            let deadline = state.now_ns.saturating_add(state.xenstore_timeout_ns());
            Ok::<_, XenstoreError>((req_id, deadline))
        })?;
        let world = self.world.clone();
        let mut outstanding = Outstanding { world, domid, req_id: Some(req_id) };
        let mut slot = WaitSlot::new(&self.world);
        poll_fn(|cx| {
            self.world.with(|state| {
                let connection = state.connection(domid);
                let result = if let Some(reply) = connection.replies.remove(&req_id) {
                    reply.map_err(XenstoreError::Xs)
                } else if let Some(why) = connection.broken {
                    Err(XenstoreError::Broken(why))
                } else if state.now_ns >= deadline {
                    state.cancel_request(domid, req_id);
                    Err(XenstoreError::Timeout)
                } else {
                    slot.park(state, cx, Wait::Reply { domid, req_id }, Some(deadline));
                    return Poll::Pending;
                };
                outstanding.req_id = None;
                slot.finish(state);
                Poll::Ready(result)
            })
        })
        .await
    }
}

/// Sends `request` and takes its reply at once, for drop paths (the sim answers
/// synchronously); a lost reply is cancelled.
fn call_now(state: &mut State, domid: DomId, request: &Request) {
    if let Ok(req_id) = state.send_request(domid, Tx::NONE, request) {
        state.cancel_request(domid, req_id);
    }
}

impl crate::Xenstore for SimXen {
    type Watch = SimWatch;

    async fn read(&self, tx: Tx, path: &str) -> XsResult<Vec<u8>> {
        Ok(reply::read(&self.call(tx, Request::Read { path }).await?)?)
    }

    async fn write(&self, tx: Tx, path: &str, value: &[u8]) -> XsResult<()> {
        Ok(reply::ok(&self.call(tx, Request::Write { path, value }).await?, MsgType::Write)?)
    }

    async fn mkdir(&self, tx: Tx, path: &str) -> XsResult<()> {
        Ok(reply::ok(&self.call(tx, Request::Mkdir { path }).await?, MsgType::Mkdir)?)
    }

    async fn rm(&self, tx: Tx, path: &str) -> XsResult<()> {
        Ok(reply::ok(&self.call(tx, Request::Rm { path }).await?, MsgType::Rm)?)
    }

    async fn directory(&self, tx: Tx, path: &str) -> XsResult<Vec<String>> {
        Ok(reply::directory(&self.call(tx, Request::Directory { path }).await?)?)
    }

    async fn set_perms(&self, tx: Tx, path: &str, permissions: &[Permission]) -> XsResult<()> {
        let request = Request::SetPerms { path, permissions };
        Ok(reply::ok(&self.call(tx, request).await?, MsgType::SetPerms)?)
    }

    async fn transaction_start(&self) -> XsResult<Tx> {
        Ok(Tx(reply::transaction_start(&self.call(Tx::NONE, Request::TransactionStart).await?)?))
    }

    async fn transaction_end(&self, tx: Tx, commit: bool) -> XsResult<()> {
        let reply = self.call(tx, Request::TransactionEnd { commit }).await?;
        Ok(reply::ok(&reply, MsgType::TransactionEnd)?)
    }

    async fn watch(&self, path: &str) -> XsResult<SimWatch> {
        let domid = self.domid;
        // The queue exists before the request, so the registration event lands in it.
        let token = self.world.with(|state| {
            let connection = state.connection(domid);
            connection.next_token += 1;
            let token = format!("sim-watch-{}", connection.next_token);
            let queue = WatchQueue { path: String::from(path), events: VecDeque::new() };
            connection.watches.insert(token.clone(), queue);
            token
        });
        let registered = async {
            let reply = self.call(Tx::NONE, Request::Watch { path, token: &token }).await?;
            Ok::<_, XenstoreError>(reply::ok(&reply, MsgType::Watch)?)
        };
        match registered.await {
            Ok(()) => {
                let world = self.world.clone();
                Ok(SimWatch { world, domid, path: String::from(path), token })
            }
            Err(error) => {
                self.world.with(|state| state.connection(domid).watches.remove(&token));
                Err(error)
            }
        }
    }
}

/// A registered watch of one domain; dropping it sends UNWATCH.
pub struct SimWatch {
    world: World,
    domid: DomId,
    path: String,
    token: String,
}

impl SimWatch {
    /// The path as registered (relative paths stay relative).
    pub fn path(&self) -> &str {
        &self.path
    }
}

impl XenstoreWatch for SimWatch {
    async fn next(&self, limit: Duration) -> XsResult<String> {
        let domid = self.domid;
        let deadline = self.world.now_ns().saturating_add(nanoseconds(limit));
        let mut slot = WaitSlot::new(&self.world);
        poll_fn(|cx| {
            self.world.with(|state| {
                let connection = state.connection(domid);
                let queue = connection.watches.get_mut(&self.token);
                let result = if let Some(path) = queue.and_then(|q| q.events.pop_front()) {
                    Ok(path)
                } else if let Some(why) = connection.broken {
                    Err(XenstoreError::Broken(why))
                } else if state.now_ns >= deadline {
                    Err(XenstoreError::Timeout)
                } else {
                    let wait = Wait::Watch { domid, token: self.token.clone() };
                    slot.park(state, cx, wait, Some(deadline));
                    return Poll::Pending;
                };
                slot.finish(state);
                Poll::Ready(result)
            })
        })
        .await
    }
}

impl Drop for SimWatch {
    fn drop(&mut self) {
        let Ok(mut state) = self.world.state.try_borrow_mut() else { return };
        let connection = state.connection(self.domid);
        if connection.watches.remove(&self.token).is_some() && connection.broken.is_none() {
            let request = Request::Unwatch { path: &self.path, token: &self.token };
            call_now(&mut state, self.domid, &request);
        }
        let wakers = core::mem::take(&mut state.to_wake);
        drop(state);
        wakers.into_iter().for_each(|waker| waker.wake());
    }
}

impl World {
    /// A node's value, read directly (absolute path, no permissions).
    pub fn xenstore_read(&self, path: &str) -> Option<Vec<u8>> {
        self.with(|state| state.xenstore.read(path))
    }

    /// Writes a node as dom0 would (absolute path); watches fire.
    pub fn xenstore_write(&self, path: &str, value: &[u8]) -> Result<(), Errno> {
        self.with_xenstore(|sim| sim.write(path, value))
    }

    /// Removes a subtree as dom0 would (absolute path); watches fire.
    pub fn xenstore_rm(&self, path: &str) -> Result<(), Errno> {
        self.with_xenstore(|sim| sim.rm(path))
    }

    /// Runs `operation` on the xenstore sim (its direct methods and fault injection:
    /// `fail_commits_with_eagain_forever`, `drop_replies`, `inject`, ...), then
    /// delivers what it sent.
    pub fn with_xenstore<T>(&self, operation: impl FnOnce(&mut Sim) -> T) -> T {
        self.with(|state| {
            let value = operation(&mut state.xenstore);
            pump(state);
            value
        })
    }

    /// `domid`'s connection to the xenstore sim, e.g. for [`Sim::inject`].
    pub fn xenstore_connection(&self, domid: DomId) -> Option<ConnectionId> {
        self.with(|state| state.domains.get(&domid).map(|d| d.xenstore.id))
    }

    /// Why `domid`'s xenstore connection is broken, if it is.
    pub fn xenstore_broken(&self, domid: DomId) -> Option<&'static str> {
        self.with(|state| state.domains.get(&domid).and_then(|d| d.xenstore.broken))
    }

    /// How long a request waits for a reply before `XenstoreError::Timeout`
    /// (default [`DEFAULT_XENSTORE_TIMEOUT`]).
    pub fn set_xenstore_timeout(&self, limit: Duration) {
        self.with(|state| state.xenstore_timeout = Some(limit));
    }
}
