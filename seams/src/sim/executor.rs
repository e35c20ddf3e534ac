//! A single-threaded executor on the virtual clock that reports deadlocks instead of
//! hanging.

use alloc::boxed::Box;
use alloc::rc::Rc;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::task::Wake;
use alloc::vec::Vec;
use core::cell::RefCell;
use core::fmt;
use core::pin::Pin;
use core::sync::atomic::{AtomicBool, Ordering};
use core::task::{Context, Waker};

use super::{Seconds, World};

/// Polls per [`Executor::run`] unless [`Executor::set_poll_limit`] says otherwise.
pub const DEFAULT_POLL_LIMIT: u64 = 1_000_000;

/// Runs tasks on a [`World`]'s virtual clock.
///
/// Tasks are polled in spawn order whenever woken. When none is ready, the clock
/// jumps to the earliest deadline any sim future waits for; when none is ready and no
/// deadline is pending, the run stops. Foreground tasks ([`spawn`](Self::spawn)) must
/// finish; background ones ([`spawn_background`](Self::spawn_background), a backend
/// serving forever, say) may be left waiting.
pub struct Executor<'a> {
    world: World,
    tasks: Vec<Task<'a>>,
    poll_limit: u64,
}

struct Task<'a> {
    name: String,
    background: bool,
    future: Option<Pin<Box<dyn Future<Output = ()> + 'a>>>,
    woken: Arc<Woken>,
}

/// A task's waker: sets its flag.
struct Woken(AtomicBool);

impl Wake for Woken {
    fn wake(self: Arc<Self>) {
        self.0.store(true, Ordering::Relaxed);
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// The value a spawned task returned, once it has finished.
pub struct Output<T>(Rc<RefCell<Option<T>>>);

impl<T> Output<T> {
    /// The value, if the task finished (and it was not taken already).
    pub fn take(&self) -> Option<T> {
        self.0.borrow_mut().take()
    }

    pub fn is_ready(&self) -> bool {
        self.0.borrow().is_some()
    }
}

/// Why [`Executor::run`] stopped before every foreground task finished.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StuckReason {
    /// every unfinished task waits and nothing pending can wake any of them
    Deadlock,
    /// the poll budget ran out (a task that spins, or time that never stops moving)
    PollLimit,
}

/// An unfinished task and what it waits for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskReport {
    pub name: String,
    pub background: bool,
    /// The sim futures it is parked on, in words ("an event on dom5 port 1", ...);
    /// empty if it waits on something the sim does not know.
    pub waiting_on: Vec<String>,
}

/// The report of a run that could not finish.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stuck {
    pub reason: StuckReason,
    /// The virtual clock when the run stopped.
    pub now_ns: u64,
    /// Polls in this run.
    pub polls: u64,
    /// Every unfinished task, foreground and background.
    pub tasks: Vec<TaskReport>,
    /// Sim futures parked outside any task (polled by hand).
    pub unowned_waits: Vec<String>,
}

impl fmt::Display for Stuck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let reason = match self.reason {
            StuckReason::Deadlock => "deadlock: every task waits and nothing can wake one",
            StuckReason::PollLimit => "the poll budget ran out",
        };
        write!(f, "{reason} (at {}, after {} polls)", Seconds(self.now_ns), self.polls)?;
        for task in &self.tasks {
            let kind = if task.background { " (background)" } else { "" };
            write!(f, "\n  task {:?}{kind} waits on ", task.name)?;
            match task.waiting_on.as_slice() {
                [] => f.write_str("nothing the sim knows of")?,
                waits => f.write_str(&waits.join(", "))?,
            }
        }
        for wait in &self.unowned_waits {
            write!(f, "\n  outside any task: {wait}")?;
        }
        Ok(())
    }
}

impl core::error::Error for Stuck {}

impl<'a> Executor<'a> {
    pub fn new(world: &World) -> Executor<'a> {
        Executor { world: world.clone(), tasks: Vec::new(), poll_limit: DEFAULT_POLL_LIMIT }
    }

    /// How many task polls one [`run`](Self::run) may make.
    pub fn set_poll_limit(&mut self, polls: u64) {
        self.poll_limit = polls;
    }

    /// Adds a task that [`run`](Self::run) must finish; its value lands in the
    /// returned [`Output`].
    pub fn spawn<T: 'a>(&mut self, name: &str, future: impl Future<Output = T> + 'a) -> Output<T> {
        let slot = Rc::new(RefCell::new(None));
        let output = Output(slot.clone());
        self.push(name, false, async move {
            let value = future.await;
            *slot.borrow_mut() = Some(value);
        });
        output
    }

    /// Adds a task that may still be waiting when the foreground tasks are done.
    pub fn spawn_background(&mut self, name: &str, future: impl Future<Output = ()> + 'a) {
        self.push(name, true, future);
    }

    fn push(&mut self, name: &str, background: bool, future: impl Future<Output = ()> + 'a) {
        self.tasks.push(Task {
            name: String::from(name),
            background,
            future: Some(Box::pin(future)),
            woken: Arc::new(Woken(AtomicBool::new(true))),
        });
    }

    /// Polls woken tasks, moving the clock when all wait on timers, until every
    /// foreground task has finished and no task is woken (background tasks may then
    /// still wait; the clock does not move for them). Can be called again after
    /// spawning more.
    pub fn run(&mut self) -> Result<(), Stuck> {
        let mut polls = 0;
        loop {
            for (name, future) in self.world.take_spawned() {
                self.push(&name, true, future);
            }
            let mut polled_any = false;
            for index in 0..self.tasks.len() {
                let task = &mut self.tasks[index];
                let Some(future) = task.future.as_mut() else { continue };
                if !task.woken.0.load(Ordering::Relaxed) {
                    continue;
                }
                if polls >= self.poll_limit {
                    return Err(self.stuck(StuckReason::PollLimit, polls));
                }
                task.woken.0.store(false, Ordering::Relaxed);
                polls += 1;
                polled_any = true;
                let waker = Waker::from(task.woken.clone());
                self.world.set_current_task(Some(index));
                let ready = future.as_mut().poll(&mut Context::from_waker(&waker)).is_ready();
                self.world.set_current_task(None);
                if ready {
                    task.future = None;
                }
            }
            if polled_any {
                continue;
            }
            let foreground_done = self.tasks.iter().all(|task| task.background || task.future.is_none());
            if foreground_done {
                return Ok(());
            }
            if !self.world.fire_next_deadline() {
                return Err(self.stuck(StuckReason::Deadlock, polls));
            }
        }
    }

    fn stuck(&self, reason: StuckReason, polls: u64) -> Stuck {
        self.world.with(|state| Stuck {
            reason,
            now_ns: state.now_ns,
            polls,
            tasks: self
                .tasks
                .iter()
                .enumerate()
                .filter(|(_, task)| task.future.is_some())
                .map(|(index, task)| TaskReport {
                    name: task.name.clone(),
                    background: task.background,
                    waiting_on: state.describe_waits(Some(index)),
                })
                .collect(),
            unowned_waits: state.describe_waits(None),
        })
    }
}
