//! The executor: async tasks woken by event channels and timers, one vCPU, no
//! busy-waiting. When no task is ready it arms the one-shot timer for the earliest
//! deadline, masks upcalls, checks once more for work and blocks in Xen
//! (SCHEDOP_block unmasks and checks for pending events atomically).

use crate::arch::hypercall;
use crate::events::{self, Port};
use crate::{shared_info, time};
use alloc::boxed::Box;
use alloc::collections::{BTreeMap, VecDeque};
use alloc::sync::Arc;
use alloc::task::Wake;
use core::future::Future;
use core::pin::Pin;
use core::sync::atomic::{AtomicU64, Ordering};
use core::task::{Context, Poll, Waker};
use spin::Mutex;

type Task = Pin<Box<dyn Future<Output = ()>>>;

/// Id 0 is the future passed to `block_on`; spawned tasks count up from 1.
static READY: Mutex<VecDeque<u64>> = Mutex::new(VecDeque::new());
static NEW_TASKS: Mutex<NewTasks> = Mutex::new(NewTasks(VecDeque::new()));
static NEXT_ID: AtomicU64 = AtomicU64::new(1);
static BLOCKS: AtomicU64 = AtomicU64::new(0);
static TIMER_PORT: Mutex<Option<Port>> = Mutex::new(None);

/// Tasks spawned but not yet picked up by `block_on`.
struct NewTasks(VecDeque<(u64, Task)>);

// SAFETY: the image runs on one vCPU and tasks are created and polled only in task
// context (never from the upcall), so a task never moves between threads.
unsafe impl Send for NewTasks {}

struct TaskWaker(u64);

impl Wake for TaskWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        let mut ready = READY.lock();
        if !ready.contains(&self.0) {
            ready.push_back(self.0);
        }
    }
}

/// Starts `future` as a task; it runs while `block_on` runs.
pub fn spawn(future: impl Future<Output = ()> + 'static) {
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    NEW_TASKS.lock().0.push_back((id, Box::pin(future)));
    READY.lock().push_back(id);
}

/// Binds VIRQ_TIMER so that armed timers wake a blocked vCPU.
pub fn init() -> Result<(), hypercall::XenError> {
    *TIMER_PORT.lock() = Some(events::bind_virq(xen_abi::event_channel::VIRQ_TIMER)?);
    Ok(())
}

/// How many times the vCPU has blocked in Xen.
pub fn block_count() -> u64 {
    BLOCKS.load(Ordering::Relaxed)
}

/// Runs `main` (and spawned tasks) until `main` completes.
pub fn block_on<F: Future>(main: F) -> F::Output {
    let mut main = core::pin::pin!(main);
    let mut tasks: BTreeMap<u64, Task> = BTreeMap::new();
    let wakers: Mutex<BTreeMap<u64, Waker>> = Mutex::new(BTreeMap::new());
    let waker_for = |id: u64| {
        let mut wakers = wakers.lock();
        if let Some(w) = wakers.get(&id) {
            return w.clone();
        }
        let w = Waker::from(Arc::new(TaskWaker(id)));
        wakers.insert(id, w.clone());
        w
    };
    READY.lock().push_back(0);
    loop {
        events::dispatch_pending();
        events::wake_fired();
        if let Some(port) = *TIMER_PORT.lock() {
            events::take_fired(port);
        }
        time::fire_expired();
        adopt_new_tasks(&mut tasks);

        let ready: VecDeque<u64> = core::mem::take(&mut *READY.lock());
        for id in ready {
            let waker = waker_for(id);
            let mut cx = Context::from_waker(&waker);
            if id == 0 {
                if let Poll::Ready(v) = main.as_mut().poll(&mut cx) {
                    return v;
                }
            } else if let Some(task) = tasks.get_mut(&id)
                && task.as_mut().poll(&mut cx).is_ready()
            {
                tasks.remove(&id);
                wakers.lock().remove(&id);
            }
            adopt_new_tasks(&mut tasks);
        }
        idle();
    }
}

fn adopt_new_tasks(tasks: &mut BTreeMap<u64, Task>) {
    for (id, task) in NEW_TASKS.lock().0.drain(..) {
        tasks.insert(id, task);
    }
}

/// How often the executor looks at console 0 while it holds text back.
const CONSOLE_POLL_NS: u64 = 5_000_000;

/// Blocks in Xen unless there is work; returns when an event or timer may have fired.
fn idle() {
    // Console 0's held-back text moves on as dom0 reads it; while some is left, come
    // back soon even if nothing else happens (dom0's console daemon notifies us when it
    // reads, but not when its rate limit ends).
    let console_deadline = crate::console::pump().then(|| time::now_ns().saturating_add(CONSOLE_POLL_NS));
    let deadline = match (time::next_deadline(), console_deadline) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    if let Some(deadline) = deadline {
        // Arm before the last check: a timer already due fires at once.
        let _ = hypercall::set_timer_op(deadline);
    }
    let previous = shared_info::mask_upcalls();
    let busy = !READY.lock().is_empty()
        || events::work_pending()
        || time::next_deadline().is_some_and(|d| d <= time::now_ns());
    if busy {
        shared_info::restore_upcalls(previous);
        return;
    }
    BLOCKS.fetch_add(1, Ordering::Relaxed);
    // Unmasks atomically; a pending event returns at once and its upcall runs.
    hypercall::sched_block();
    shared_info::restore_upcalls(0);
}
