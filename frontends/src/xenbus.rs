//! The xenbus handshake every PV frontend does with its backend, written once.
//!
//! The toolstack creates `device/<kind>/<id>` under our home with `backend` (the
//! backend's directory) and `backend-id`, and both `state` nodes at Initialising.
//! A driver then reads as one story, top to bottom:
//!
//! ```text
//! let dev = Device::open(xen, "vbd", 768).await?;             // find the backend
//! dev.wait_backend(State::InitWait).await?;                    // backend published features
//! let sectors = ... dev.read_backend("feature-...") ...
//! dev.publish(&[("ring-ref", ..), ("event-channel", ..)], State::Initialised).await?;
//! dev.wait_backend(State::Connected).await?;                   // backend mapped our ring
//! dev.switch_state(State::Connected).await?;
//! ...
//! dev.close().await;                                           // Closing -> Closed
//! ```
//!
//! Every wait is bounded and watches the backend's `state`: a backend that moves to
//! Closing or Closed, or whose node vanishes, ends the wait with an error instead of
//! a hang.

use alloc::format;
use alloc::string::{String, ToString};
use core::fmt;
use core::time::Duration;
use xen_seams::{DomId, RetryPolicy, TransactionError, Tx, Xen, XenstoreError, XenstoreWatch};

/// `enum xenbus_state` (io/xenbus.h).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum State {
    Unknown = 0,
    Initialising = 1,
    InitWait = 2,
    Initialised = 3,
    Connected = 4,
    Closing = 5,
    Closed = 6,
    Reconfiguring = 7,
    Reconfigured = 8,
}

impl State {
    /// Parses the decimal text of a `state` node.
    pub fn parse(text: &str) -> Option<State> {
        Some(match text.trim().parse::<u32>().ok()? {
            0 => State::Unknown,
            1 => State::Initialising,
            2 => State::InitWait,
            3 => State::Initialised,
            4 => State::Connected,
            5 => State::Closing,
            6 => State::Closed,
            7 => State::Reconfiguring,
            8 => State::Reconfigured,
            _ => return None,
        })
    }

    fn text(self) -> String {
        (self as u32).to_string()
    }
}

/// Why a frontend could not (or can no longer) talk to its backend.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum Error {
    /// A xenstore operation failed.
    #[error(transparent)]
    Xenstore(#[from] XenstoreError),
    /// A node the protocol requires is missing or malformed.
    #[error("{path}: {why}")]
    BadNode { path: String, why: &'static str },
    /// The backend went to Closing/Closed or its directory vanished.
    #[error("backend {}", Departure(*state))]
    BackendGone { state: Option<State> },
    /// The backend did not reach the state in time.
    #[error("backend did not reach {waiting_for:?} in time (last seen {last:?})")]
    Timeout { waiting_for: State, last: Option<State> },
    /// Publishing our entries kept conflicting.
    #[error("publishing the frontend's entries kept conflicting")]
    TooManyConflicts,
}

/// How a backend left, in words: "went to Closing", or "vanished" (no state node).
pub(crate) struct Departure(pub Option<State>);

impl fmt::Display for Departure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(state) => write!(f, "went to {state:?}"),
            None => f.write_str("vanished"),
        }
    }
}

/// How long one wait for the backend may take.
pub const BACKEND_WAIT: Duration = Duration::from_secs(30);

/// A frontend device: our node `device/<kind>/<id>` and its backend.
pub struct Device<'x, X: Xen> {
    xen: &'x X,
    /// Our node, relative to our home: `device/<kind>/<id>`.
    pub node: String,
    /// The backend's directory (absolute).
    pub backend: String,
    pub backend_id: DomId,
    pub limit: Duration,
}

impl<'x, X: Xen> Device<'x, X> {
    /// Finds the backend of `device/<kind>/<id>`.
    pub async fn open(xen: &'x X, kind: &str, id: u32) -> Result<Self, Error> {
        let node = format!("device/{kind}/{id}");
        let backend = read_node(xen, &format!("{node}/backend")).await?;
        let id_path = format!("{node}/backend-id");
        let backend_id = read_node(xen, &id_path)
            .await?
            .parse()
            .map_err(|_| Error::BadNode { path: id_path, why: "not a domain id" })?;
        Ok(Device { xen, node, backend, backend_id, limit: BACKEND_WAIT })
    }

    /// The backend's current state; None if its node is gone.
    pub async fn backend_state(&self) -> Result<Option<State>, Error> {
        let path = format!("{}/state", self.backend);
        match self.xen.read_string(Tx::NONE, &path).await {
            Ok(text) => State::parse(&text).map(Some).ok_or(Error::BadNode { path, why: "not a xenbus state" }),
            Err(e) if e.is_missing() => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Waits until the backend reaches `wanted` or a later setup state. Fails if it
    /// closes or vanishes (unless `wanted` is Closing/Closed) or the wait runs out.
    pub async fn wait_backend(&self, wanted: State) -> Result<State, Error> {
        let watch = self.xen.watch(&format!("{}/state", self.backend)).await?;
        let deadline = self.xen.now_ns().saturating_add(self.limit.as_nanos() as u64);
        let mut last = None;
        loop {
            let state = self.backend_state().await?;
            last = state.or(last);
            match state {
                Some(s) if s >= wanted && (s <= State::Connected || wanted >= State::Closing) => return Ok(s),
                Some(State::Closing | State::Closed) | None if wanted < State::Closing => {
                    return Err(Error::BackendGone { state });
                }
                _ => {}
            }
            let now = self.xen.now_ns();
            if now >= deadline {
                return Err(Error::Timeout { waiting_for: wanted, last });
            }
            match watch.next(Duration::from_nanos(deadline - now)).await {
                Ok(_) => {}
                Err(XenstoreError::Timeout) => return Err(Error::Timeout { waiting_for: wanted, last }),
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Reads a node of the backend's directory.
    pub async fn read_backend(&self, key: &str) -> Result<String, Error> {
        read_node(self.xen, &format!("{}/{key}", self.backend)).await
    }

    /// Reads a backend node that may be absent (feature flags).
    pub async fn read_backend_opt(&self, key: &str) -> Result<Option<String>, Error> {
        match self.xen.read_string(Tx::NONE, &format!("{}/{key}", self.backend)).await {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.is_missing() => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Reads a numeric backend node.
    pub async fn read_backend_u64(&self, key: &str) -> Result<u64, Error> {
        let path = format!("{}/{key}", self.backend);
        read_node(self.xen, &path).await?.trim().parse().map_err(|_| Error::BadNode { path, why: "not a number" })
    }

    /// Whether the backend advertises `feature` as "1".
    pub async fn backend_feature(&self, feature: &str) -> Result<bool, Error> {
        Ok(self.read_backend_opt(feature).await?.is_some_and(|v| v.trim() == "1"))
    }

    /// Writes `entries` under our node and switches to `state`, atomically.
    pub async fn publish(&self, entries: &[(&str, String)], state: State) -> Result<(), Error> {
        let result = self
            .xen
            .transaction(RetryPolicy::default(), async |tx, _| {
                for (key, value) in entries {
                    self.xen.write(tx, &format!("{}/{key}", self.node), value.as_bytes()).await?;
                }
                self.xen.write(tx, &format!("{}/state", self.node), state.text().as_bytes()).await
            })
            .await;
        match result {
            Ok(()) => Ok(()),
            Err(TransactionError::TooManyConflicts { .. }) => Err(Error::TooManyConflicts),
            Err(TransactionError::Failed(e)) => Err(e.into()),
        }
    }

    /// Sets our `state`.
    pub async fn switch_state(&self, state: State) -> Result<(), Error> {
        Ok(self.xen.write(Tx::NONE, &format!("{}/state", self.node), state.text().as_bytes()).await?)
    }

    /// Our own `state`.
    pub async fn state(&self) -> Result<Option<State>, Error> {
        match self.xen.read_string(Tx::NONE, &format!("{}/state", self.node)).await {
            Ok(text) => Ok(State::parse(&text)),
            Err(e) if e.is_missing() => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Closes the connection: Closing, wait (bounded) for the backend to close, then
    /// Closed. Best effort: a backend that is already gone is not an error.
    pub async fn close(&self) -> Result<(), Error> {
        self.switch_state(State::Closing).await?;
        match self.wait_backend(State::Closing).await {
            Ok(_) | Err(Error::Timeout { .. }) | Err(Error::BackendGone { .. }) => {}
            Err(e) => return Err(e),
        }
        self.switch_state(State::Closed).await
    }
}

/// A change in the set of devices of one kind under our `device/` directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceEvent {
    /// `device/<kind>/<id>` appeared with its `backend` node (a hot attach).
    Added(u32),
    /// `device/<kind>/<id>` is gone (the toolstack removed it after a detach).
    Removed(u32),
}

/// Watches `device/<kind>` for devices the toolstack attaches and removes while we
/// run (`xl block-attach` / `xl block-detach` on our domain).
pub struct DeviceWatch<'x, X: Xen> {
    xen: &'x X,
    kind: String,
    watch: X::Watch,
    known: alloc::collections::BTreeSet<u32>,
    pending: alloc::collections::VecDeque<DeviceEvent>,
}

impl<'x, X: Xen> DeviceWatch<'x, X> {
    /// Starts watching; devices present now are reported as `Added` first.
    pub async fn new(xen: &'x X, kind: &str) -> Result<Self, Error> {
        let watch = xen.watch(&format!("device/{kind}")).await?;
        Ok(DeviceWatch { xen, kind: kind.to_string(), watch, known: Default::default(), pending: Default::default() })
    }

    /// Devices whose node is complete enough to connect (has `backend`).
    async fn present(&self) -> Result<alloc::collections::BTreeSet<u32>, Error> {
        let dir = format!("device/{}", self.kind);
        let ids = match self.xen.directory(Tx::NONE, &dir).await {
            Ok(ids) => ids,
            Err(e) if e.is_missing() => alloc::vec::Vec::new(),
            Err(e) => return Err(e.into()),
        };
        let mut present = alloc::collections::BTreeSet::new();
        for id in ids.iter().filter_map(|i| i.parse::<u32>().ok()) {
            if self.xen.read(Tx::NONE, &format!("{dir}/{id}/backend")).await.is_ok() {
                present.insert(id);
            }
        }
        Ok(present)
    }

    /// The next change, waiting at most `limit` (None when nothing changed in time).
    pub async fn next(&mut self, limit: Duration) -> Result<Option<DeviceEvent>, Error> {
        let deadline = self.xen.now_ns().saturating_add(limit.as_nanos() as u64);
        loop {
            if let Some(e) = self.pending.pop_front() {
                return Ok(Some(e));
            }
            let present = self.present().await?;
            self.pending.extend(present.difference(&self.known).map(|&id| DeviceEvent::Added(id)));
            self.pending.extend(self.known.difference(&present).map(|&id| DeviceEvent::Removed(id)));
            self.known = present;
            if !self.pending.is_empty() {
                continue;
            }
            let now = self.xen.now_ns();
            if now >= deadline {
                return Ok(None);
            }
            match self.watch.next(Duration::from_nanos(deadline - now)).await {
                Ok(_) => {}
                Err(XenstoreError::Timeout) => return Ok(None),
                Err(e) => return Err(e.into()),
            }
        }
    }
}

async fn read_node<X: Xen>(xen: &X, path: &str) -> Result<String, Error> {
    match xen.read_string(Tx::NONE, path).await {
        Ok(v) if !v.is_empty() => Ok(v),
        Ok(_) => Err(Error::BadNode { path: path.to_string(), why: "empty" }),
        Err(e) if e.is_missing() => Err(Error::BadNode { path: path.to_string(), why: "missing" }),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;
    use xen_seams::Clock;
    use xen_seams::sim::{Executor, PvDevice, SimXen, World};

    const FRONT: u16 = 5;
    const FRONT_NODE: &str = "/local/domain/5/device/vbd/768";
    const BACK_NODE: &str = "/local/domain/0/backend/vbd/5/768";

    /// The device under test, attached as libxl does ([`World::toolstack`]).
    const DEVICE: PvDevice = PvDevice { kind: "vbd", devid: 768, frontend: FRONT, backend: 0 };

    fn backend_state(world: &World, state: State) {
        world.xenstore_write(&format!("{BACK_NODE}/state"), state.text().as_bytes()).unwrap();
    }

    fn front_node(world: &World, key: &str) -> Option<String> {
        world.xenstore_read(&format!("{FRONT_NODE}/{key}")).map(|v| String::from_utf8(v).unwrap())
    }

    /// The whole handshake as a driver does it.
    async fn connect(xen: &SimXen) -> Result<u64, Error> {
        let dev = Device::open(xen, "vbd", 768).await?;
        assert_eq!((dev.backend.as_str(), dev.backend_id), (BACK_NODE, 0));
        dev.wait_backend(State::InitWait).await?;
        let multi_page = dev.backend_feature("max-ring-page-order").await?;
        assert!(!multi_page);
        dev.publish(&[("ring-ref", "8".into()), ("event-channel", "3".into())], State::Initialised).await?;
        dev.wait_backend(State::Connected).await?;
        let sectors = dev.read_backend_u64("sectors").await?;
        dev.switch_state(State::Connected).await?;
        Ok(sectors)
    }

    #[test]
    fn handshake_reads_as_one_story() {
        let world = World::new();
        world.toolstack(DEVICE, &[]);
        let front = world.domain(FRONT);
        let mut executor = Executor::new(&world);
        let result = executor.spawn("frontend", async { connect(&front).await });
        let backend = world.clone();
        let back = world.domain(0);
        executor.spawn("backend", async move {
            back.sleep(Duration::from_millis(10)).await;
            backend_state(&backend, State::InitWait);
            // Wait for the frontend's Initialised, then connect.
            while front_node(&backend, "state").as_deref() != Some("3") {
                back.sleep(Duration::from_millis(5)).await;
            }
            assert_eq!(front_node(&backend, "ring-ref").as_deref(), Some("8"));
            backend.xenstore_write(&format!("{BACK_NODE}/sectors"), b"131072").unwrap();
            backend_state(&backend, State::Connected);
        });
        executor.run().unwrap_or_else(|stuck| panic!("{stuck}"));
        assert_eq!(result.take(), Some(Ok(131072)));
        assert_eq!(front_node(&world, "state").as_deref(), Some("4"));
    }

    #[test]
    fn backend_closing_during_the_handshake_is_an_error_not_a_hang() {
        let world = World::new();
        world.toolstack(DEVICE, &[]);
        let front = world.domain(FRONT);
        let mut executor = Executor::new(&world);
        let result = executor.spawn("frontend", async { connect(&front).await });
        let backend = world.clone();
        let back = world.domain(0);
        executor.spawn("backend", async move {
            back.sleep(Duration::from_millis(10)).await;
            backend_state(&backend, State::InitWait);
            back.sleep(Duration::from_millis(10)).await;
            backend_state(&backend, State::Closing);
        });
        executor.run().unwrap_or_else(|stuck| panic!("{stuck}"));
        assert_eq!(result.take(), Some(Err(Error::BackendGone { state: Some(State::Closing) })));
    }

    #[test]
    fn vanished_backend_is_detected() {
        let world = World::new();
        world.toolstack(DEVICE, &[]);
        let front = world.domain(FRONT);
        world.xenstore_rm(BACK_NODE).unwrap();
        let result = world.block_on(async { connect(&front).await }).unwrap();
        assert_eq!(result, Err(Error::BackendGone { state: None }));
    }

    #[test]
    fn silent_backend_times_out() {
        let world = World::new();
        world.toolstack(DEVICE, &[]);
        let front = world.domain(FRONT);
        let started = world.now_ns();
        let result = world.block_on(async { connect(&front).await }).unwrap();
        assert_eq!(result, Err(Error::Timeout { waiting_for: State::InitWait, last: Some(State::Initialising) }));
        assert!(world.now_ns() - started >= BACKEND_WAIT.as_nanos() as u64, "the whole wait elapsed (virtually)");
    }

    #[test]
    fn missing_or_malformed_nodes_are_clear_errors() {
        let world = World::new();
        world.toolstack(DEVICE, &[]);
        let front = world.domain(FRONT);
        let no_device = world.block_on(async { Device::open(&front, "vif", 0).await.err() }).unwrap();
        assert_eq!(no_device, Some(Error::BadNode { path: "device/vif/0/backend".into(), why: "missing" }));
        world.xenstore_write(&format!("{FRONT_NODE}/backend-id"), b"zero").unwrap();
        let bad_id = world.block_on(async { Device::open(&front, "vbd", 768).await.err() }).unwrap();
        assert_eq!(bad_id, Some(Error::BadNode { path: "device/vbd/768/backend-id".into(), why: "not a domain id" }));
        world.xenstore_write(&format!("{FRONT_NODE}/backend-id"), b"0").unwrap();
        backend_state(&world, State::InitWait);
        world.xenstore_write(&format!("{BACK_NODE}/state"), b"banana").unwrap();
        let bad_state = world.block_on(async { connect(&front).await }).unwrap();
        assert_eq!(bad_state, Err(Error::BadNode { path: format!("{BACK_NODE}/state"), why: "not a xenbus state" }));
    }

    #[test]
    fn close_walks_closing_then_closed() {
        let world = World::new();
        world.toolstack(DEVICE, &[]);
        let front = world.domain(FRONT);
        let mut executor = Executor::new(&world);
        let seen = alloc::rc::Rc::new(core::cell::RefCell::new(vec![]));
        let result = executor.spawn("frontend", async {
            let dev = Device::open(&front, "vbd", 768).await?;
            dev.close().await
        });
        let backend = world.clone();
        let back = world.domain(0);
        let seen_by_backend = seen.clone();
        executor.spawn("backend", async move {
            while front_node(&backend, "state").as_deref() != Some("5") {
                back.sleep(Duration::from_millis(5)).await;
            }
            seen_by_backend.borrow_mut().push(5);
            backend_state(&backend, State::Closed);
        });
        executor.run().unwrap_or_else(|stuck| panic!("{stuck}"));
        assert_eq!(result.take(), Some(Ok(())));
        assert_eq!(*seen.borrow(), [5]);
        assert_eq!(front_node(&world, "state").as_deref(), Some("6"));
    }

    #[test]
    fn publish_is_atomic_and_survives_conflicts() {
        let world = World::new();
        world.toolstack(DEVICE, &[]);
        let front = world.domain(FRONT);
        world.with_xenstore(|xs| xs.fail_next_commits_with_eagain(2));
        let result = world
            .block_on(async {
                let dev = Device::open(&front, "vbd", 768).await?;
                dev.publish(&[("ring-ref", "9".into())], State::Initialised).await
            })
            .unwrap();
        assert_eq!(result, Ok(()));
        assert_eq!(front_node(&world, "ring-ref").as_deref(), Some("9"));
        assert_eq!(front_node(&world, "state").as_deref(), Some("3"));
        world.with_xenstore(|xs| xs.fail_commits_with_eagain_forever());
        let result = world
            .block_on(async {
                let dev = Device::open(&front, "vbd", 768).await?;
                dev.publish(&[("ring-ref", "10".into())], State::Initialised).await
            })
            .unwrap();
        assert_eq!(result, Err(Error::TooManyConflicts));
        assert_eq!(front_node(&world, "ring-ref").as_deref(), Some("9"), "nothing of the failed attempts stuck");
    }

    #[test]
    fn device_watch_reports_hot_attach_and_removal() {
        let world = World::new();
        let front = world.domain(FRONT);
        let mut executor = Executor::new(&world);
        let events = executor.spawn("frontend", async {
            let mut watch = DeviceWatch::new(&front, "vbd").await.unwrap();
            let mut seen = vec![];
            while seen.len() < 3 {
                match watch.next(Duration::from_secs(60)).await.unwrap() {
                    Some(e) => seen.push(e),
                    None => break,
                }
            }
            seen
        });
        let toolstack_world = world.clone();
        let back = world.domain(0);
        executor.spawn("toolstack", async move {
            back.sleep(Duration::from_millis(10)).await;
            toolstack_world.toolstack(DEVICE, &[]); // attaches vbd 768
            back.sleep(Duration::from_millis(10)).await;
            // A node without its backend entry yet is not a device yet.
            toolstack_world.xenstore_write("/local/domain/5/device/vbd/832/state", b"1").unwrap();
            back.sleep(Duration::from_millis(10)).await;
            toolstack_world.xenstore_write("/local/domain/5/device/vbd/832/backend", b"/x").unwrap();
            back.sleep(Duration::from_millis(10)).await;
            toolstack_world.xenstore_rm(FRONT_NODE).unwrap();
        });
        executor.run().unwrap_or_else(|stuck| panic!("{stuck}"));
        assert_eq!(
            events.take().unwrap(),
            [DeviceEvent::Added(768), DeviceEvent::Added(832), DeviceEvent::Removed(768)]
        );
    }

    #[test]
    fn states_parse_from_text() {
        assert_eq!(State::parse("4"), Some(State::Connected));
        assert_eq!(State::parse(" 6\n"), Some(State::Closed));
        assert_eq!(State::parse("9"), None);
        assert_eq!(State::parse(""), None);
        assert_eq!(State::Initialised.text(), "3");
    }
}
