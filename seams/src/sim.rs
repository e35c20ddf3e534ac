//! An in-memory Xen for host tests: domains, pages, grants, event channels, xenstore
//! and a virtual clock, driven by a small executor, with injectable faults.
//!
//! A [`World`] holds every domain; [`World::domain`] gives a [`SimXen`] handle that
//! implements all the seam traits as that domain. A test runs the driver under test
//! as one domain (say 5) and scripts its backend as another (say 0), both as tasks of
//! an [`Executor`]. The executor runs tasks until they finish; when every task waits
//! and a timer is pending it moves the virtual clock to the earliest deadline, so a
//! 30 s timeout takes no real time; when every task waits and no timer is pending it
//! stops with a [`Stuck`] report of who waits on what, never hanging. A poll budget
//! stops tasks that spin.
//!
//! What a backend needs beyond the traits is here too: [`SimXen::map_grant`] maps
//! another domain's grant ([`MappedPage`]), and the World reads and writes xenstore as
//! dom0 and exposes the xenstore sim for its fault injection; [`World::toolstack`] writes
//! a PV device's nodes as libxl does before a frontend starts.
//!
//! Semantics follow Xen where a driver can tell: grant refs start at 8 (0-7 are the
//! toolstack's) and are reused once ended; a grant cannot end while mapped; ports start
//! at 1; binding sets the binder's new port pending once; events coalesce; a notify on
//! a port whose peer closed is dropped silently; xenstore requests time out after
//! 10 s (as the kernel's client), watch queues keep the latest 64 events, a framing
//! error breaks the connection and a message the session cannot account for is
//! ignored.
//!
//! Differences, chosen for tests: closing a port wakes both ends (Xen tells the peer
//! nothing): the peer's port goes back to unbound with one event pending, and a wait
//! on a port that is not open completes at once. Grants are checked strictly: a domain
//! may only grant live pages of its own (Xen would take any frame), and a page dropped
//! while granted is reported by [`World::dangling_grants`] (its bytes stay readable
//! through the grant). Not modelled: grant copy and transitive grants, masking, VIRQs,
//! IPIs and vCPUs, domain death, xenstore quotas, real concurrency (memory is
//! sequentially consistent; a task runs until it awaits something that is not ready).

mod events;
mod executor;
mod hvm;
mod memory;
mod store;
#[cfg(test)]
mod tests;
mod toolstack;

use alloc::collections::BTreeMap;
use alloc::rc::Rc;
use alloc::string::String;
use alloc::vec::Vec;
use core::cell::RefCell;
use core::fmt;
use core::future::poll_fn;
use core::task::{Context, Poll, Waker};
use core::time::Duration;

use xenstore::sim::Sim;

use crate::{Clock, DomId, Xen};

pub use events::{PortInfo, PortState};
pub use executor::{DEFAULT_POLL_LIMIT, Executor, Output, Stuck, StuckReason, TaskReport};
pub use hvm::{EEXIST, ENOENT, IrqChange, SimGuest, SimGuestMemory, SimHvmControl, SimIoreqServer, pci_address};
pub use memory::{GrantInfo, MappedPage, PAGE_SIZE, SimPage};
pub use store::{DEFAULT_XENSTORE_TIMEOUT, SimWatch};
pub use toolstack::PvDevice;
pub use xenstore::reply::Errno;
pub use xenstore::sim::{ConnectionId, Sim as XenstoreSim};

/// Errnos the sim refuses with, as `Error::Xen(-errno)`.
pub const EPERM: i64 = 1;
pub const ESRCH: i64 = 3;
pub const EINVAL: i64 = 22;

/// The simulated machine: every domain's pages, grants, ports and xenstore
/// connection, the xenstore sim and the virtual clock. Cloning shares it.
#[derive(Clone, Default)]
pub struct World {
    state: Rc<RefCell<State>>,
}

/// One domain's view of the world; implements every seam trait as `domid`.
#[derive(Clone)]
pub struct SimXen {
    world: World,
    domid: DomId,
}

/// A task started with `Spawn::spawn`, waiting for the executor.
type SpawnedTask = core::pin::Pin<alloc::boxed::Box<dyn Future<Output = ()>>>;

#[derive(Default)]
struct State {
    now_ns: u64,
    domains: BTreeMap<DomId, Domain>,
    frames: memory::Frames,
    xenstore: Sim,
    xenstore_timeout: Option<Duration>,
    waiters: BTreeMap<u64, Waiter>,
    next_waiter: u64,
    /// The task the executor is polling, recorded in the waiters it registers.
    current_task: Option<usize>,
    /// Wakers to call once the state is no longer borrowed.
    to_wake: Vec<Waker>,
    /// HVM guests (device-model tests).
    guests: hvm::Guests,
    /// Tasks started with `Spawn::spawn`, for the executor to adopt.
    spawned: Vec<(String, SpawnedTask)>,
    /// What `Xen::log_backlog_bytes` answers (a test sets it).
    log_backlog_bytes: usize,
}

struct Domain {
    grants: memory::GrantTable,
    ports: events::PortTable,
    xenstore: store::Connection,
    faults: Faults,
}

/// Counts of upcoming operations to fail, per domain.
#[derive(Default)]
struct Faults {
    page_allocations: u32,
    grants: u32,
    port_allocations: u32,
    notifications: u32,
}

/// What a parked future waits for.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Wait {
    /// Only its deadline.
    Timer,
    Event {
        domid: DomId,
        port: u32,
    },
    Reply {
        domid: DomId,
        req_id: u32,
    },
    Watch {
        domid: DomId,
        token: String,
    },
    /// A device model's wait on a guest vCPU's ioreq channel.
    Ioreq {
        guest: DomId,
        vcpu: u32,
    },
    /// A guest vCPU waiting for its device model's answer.
    IoreqResponse {
        guest: DomId,
        vcpu: u32,
    },
}

struct Waiter {
    wait: Wait,
    /// Woken (and cleared) when the clock reaches it.
    deadline: Option<u64>,
    waker: Waker,
    task: Option<usize>,
}

/// A time on the virtual clock, shown in seconds.
struct Seconds(u64);

impl fmt::Display for Seconds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:09} s", self.0 / 1_000_000_000, self.0 % 1_000_000_000)
    }
}

/// Takes one from a fault counter; true if this operation is to fail.
fn take_fault(counter: &mut u32) -> bool {
    let fail = *counter > 0;
    *counter = counter.saturating_sub(1);
    fail
}

fn nanoseconds(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

impl State {
    fn domain(&mut self, domid: DomId) -> Option<&mut Domain> {
        self.domains.get_mut(&domid)
    }

    /// Queues the wakers of every waiter `matches` picks.
    fn wake_where(&mut self, matches: impl Fn(&Wait) -> bool) {
        let wakers = self.waiters.values().filter(|w| matches(&w.wait)).map(|w| w.waker.clone());
        self.to_wake.extend(wakers);
    }

    /// The earliest deadline of any parked future.
    fn next_deadline(&self) -> Option<u64> {
        self.waiters.values().filter_map(|w| w.deadline).min()
    }

    /// Moves the clock to `now_ns` (never back) and wakes every waiter whose deadline
    /// has come.
    fn advance_to(&mut self, now_ns: u64) {
        self.now_ns = self.now_ns.max(now_ns);
        let now = self.now_ns;
        for waiter in self.waiters.values_mut() {
            if waiter.deadline.is_some_and(|deadline| deadline <= now) {
                waiter.deadline = None;
                self.to_wake.push(waiter.waker.clone());
            }
        }
    }

    /// What the waiters of task `task` (or of no task) wait for, in words.
    fn describe_waits(&self, task: Option<usize>) -> Vec<String> {
        let describe = |waiter: &Waiter| {
            let what = match &waiter.wait {
                Wait::Timer => String::from("a timer"),
                Wait::Event { domid, port } => alloc::format!("an event on dom{domid} port {port}"),
                Wait::Reply { domid, req_id } => {
                    alloc::format!("xenstored's reply to dom{domid} request {req_id}")
                }
                Wait::Watch { domid, token } => {
                    let path = self.domains.get(domid).and_then(|d| d.xenstore.watch_path(token));
                    alloc::format!("a dom{domid} watch event on {}", path.unwrap_or("?"))
                }
                Wait::Ioreq { guest, vcpu } => alloc::format!("an ioreq from dom{guest} vCPU {vcpu}"),
                Wait::IoreqResponse { guest, vcpu } => {
                    alloc::format!("the device model's answer to dom{guest} vCPU {vcpu}")
                }
            };
            match waiter.deadline {
                Some(deadline) => alloc::format!("{what} (until {})", Seconds(deadline)),
                None => what,
            }
        };
        self.waiters.values().filter(|w| w.task == task).map(describe).collect()
    }
}

impl World {
    /// An empty world at time 0, with a xenstore holding only the root.
    pub fn new() -> World {
        World::default()
    }

    /// Runs `operation` on the state, then calls the wakers it queued.
    fn with<T>(&self, operation: impl FnOnce(&mut State) -> T) -> T {
        let (value, wakers) = {
            let mut state = self.state.borrow_mut();
            let value = operation(&mut state);
            (value, core::mem::take(&mut state.to_wake))
        };
        for waker in wakers {
            waker.wake();
        }
        value
    }

    /// A handle acting as `domid`, creating the domain (and its xenstore connection
    /// and home `/local/domain/<domid>`) the first time.
    pub fn domain(&self, domid: DomId) -> SimXen {
        self.with(|state| {
            if !state.domains.contains_key(&domid) {
                let connection = store::Connection::new(state.xenstore.connect(domid));
                let domain = Domain {
                    grants: memory::GrantTable::default(),
                    ports: events::PortTable::default(),
                    xenstore: connection,
                    faults: Faults::default(),
                };
                state.domains.insert(domid, domain);
                store::pump(state);
            }
        });
        SimXen { world: self.clone(), domid }
    }

    /// The domains created so far.
    pub fn domains(&self) -> Vec<DomId> {
        self.with(|state| state.domains.keys().copied().collect())
    }

    /// Sets the log backlog every domain reports (`Xen::log_backlog_bytes`), as a
    /// console daemon falling behind would.
    pub fn set_log_backlog_bytes(&self, len_bytes: usize) {
        self.with(|state| state.log_backlog_bytes = len_bytes);
    }

    /// The virtual clock, in nanoseconds since the world began.
    pub fn now_ns(&self) -> u64 {
        self.with(|state| state.now_ns)
    }

    /// Moves the virtual clock forward, waking the timers that expire.
    pub fn advance(&self, duration: Duration) {
        self.with(|state| {
            let now = state.now_ns.saturating_add(nanoseconds(duration));
            state.advance_to(now);
        });
    }

    /// Moves the clock to the earliest pending deadline and wakes its waiters;
    /// false if no deadline is pending.
    fn fire_next_deadline(&self) -> bool {
        self.with(|state| match state.next_deadline() {
            Some(deadline) => {
                state.advance_to(deadline);
                true
            }
            None => false,
        })
    }

    /// Tasks spawned since the last call, for the executor.
    fn take_spawned(&self) -> Vec<(String, SpawnedTask)> {
        self.with(|state| core::mem::take(&mut state.spawned))
    }

    fn set_current_task(&self, task: Option<usize>) {
        self.with(|state| state.current_task = task);
    }

    /// Runs one future to completion on a fresh executor.
    pub fn block_on<T>(&self, future: impl Future<Output = T>) -> Result<T, Stuck> {
        let mut executor = Executor::new(self);
        let output = executor.spawn("main", future);
        executor.run()?;
        Ok(output.take().expect("a finished foreground task has its output"))
    }
}

impl fmt::Debug for World {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.state.try_borrow() {
            Ok(state) => f
                .debug_struct("World")
                .field("now", &format_args!("{}", Seconds(state.now_ns)))
                .field("domains", &state.domains.keys().collect::<Vec<_>>())
                .finish(),
            Err(_) => f.write_str("World { .. }"),
        }
    }
}

impl SimXen {
    /// The world this handle lives in.
    pub fn world(&self) -> &World {
        &self.world
    }
}

impl fmt::Debug for SimXen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SimXen(dom{})", self.domid)
    }
}

impl Clock for SimXen {
    fn now_ns(&self) -> u64 {
        self.world.now_ns()
    }

    /// Completes once the virtual clock reaches now + `duration` (the deadline is
    /// taken at the call, as in the kernel).
    fn sleep(&self, duration: Duration) -> impl Future<Output = ()> {
        let deadline = self.world.now_ns().saturating_add(nanoseconds(duration));
        let mut slot = WaitSlot::new(&self.world);
        let world = self.world.clone();
        poll_fn(move |cx| {
            world.with(|state| {
                if state.now_ns >= deadline {
                    slot.finish(state);
                    Poll::Ready(())
                } else {
                    slot.park(state, cx, Wait::Timer, Some(deadline));
                    Poll::Pending
                }
            })
        })
    }
}

/// Spawned tasks join the running [`Executor`] as background tasks (they may still
/// wait when the foreground tasks finish, as a device model's servers do).
impl crate::Spawn for SimXen {
    fn spawn(&self, name: &str, future: impl Future<Output = ()> + 'static) {
        let name = String::from(name);
        self.world.with(|state| state.spawned.push((name, alloc::boxed::Box::pin(future))));
    }
}

impl Xen for SimXen {
    fn domid(&self) -> DomId {
        self.domid
    }

    fn log_backlog_bytes(&self) -> usize {
        self.world.with(|state| state.log_backlog_bytes)
    }
}

/// A leaf future's registration in the world's waiter table; removed when the
/// future completes or is dropped.
struct WaitSlot {
    world: World,
    id: Option<u64>,
}

impl WaitSlot {
    fn new(world: &World) -> WaitSlot {
        WaitSlot { world: world.clone(), id: None }
    }

    /// Records (or refreshes) that the future polled with `cx` waits for `wait`, at
    /// most until `deadline`.
    fn park(&mut self, state: &mut State, cx: &Context<'_>, wait: Wait, deadline: Option<u64>) {
        let id = *self.id.get_or_insert_with(|| {
            state.next_waiter += 1;
            state.next_waiter
        });
        let waiter = Waiter { wait, deadline, waker: cx.waker().clone(), task: state.current_task };
        state.waiters.insert(id, waiter);
    }

    /// The future completed: it waits no more.
    fn finish(&mut self, state: &mut State) {
        if let Some(id) = self.id.take() {
            state.waiters.remove(&id);
        }
    }
}

impl Drop for WaitSlot {
    fn drop(&mut self) {
        if let Some(id) = self.id.take()
            && let Ok(mut state) = self.world.state.try_borrow_mut()
        {
            state.waiters.remove(&id);
        }
    }
}
