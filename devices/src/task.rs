//! Small pieces for the device model's tasks on a single-threaded executor: a wake-up
//! flag one task sets and another awaits, a one-slot mailbox, and waiting for the first
//! of two futures.

use core::cell::{Cell, RefCell};
use core::future::{Future, poll_fn};
use core::pin::pin;
use core::task::{Poll, Waker};

/// A flag set by one task and consumed by the task that awaits it. Setting it twice
/// before the waiter runs wakes it once (wake-ups coalesce, as events do): waiters
/// re-check their condition.
#[derive(Default)]
pub struct Notify {
    set: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

impl Notify {
    pub fn new() -> Notify {
        Notify::default()
    }

    /// Sets the flag and wakes the waiter, if any.
    pub fn notify(&self) {
        self.set.set(true);
        if let Some(waker) = self.waker.borrow_mut().take() {
            waker.wake();
        }
    }

    /// Completes once the flag is set, and clears it.
    pub fn wait(&self) -> impl Future<Output = ()> + '_ {
        poll_fn(move |cx| {
            if self.set.replace(false) {
                Poll::Ready(())
            } else {
                *self.waker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        })
    }
}

/// A level any number of tasks can wait for (a VM that runs, a service that stops).
#[derive(Default)]
pub struct Signal {
    on: Cell<bool>,
    wakers: RefCell<alloc::vec::Vec<Waker>>,
}

impl Signal {
    pub fn new(on: bool) -> Signal {
        Signal { on: Cell::new(on), wakers: RefCell::new(alloc::vec::Vec::new()) }
    }

    pub fn is_on(&self) -> bool {
        self.on.get()
    }

    /// Turns the level on and wakes every waiter.
    pub fn set(&self) {
        self.on.set(true);
        for waker in self.wakers.borrow_mut().drain(..) {
            waker.wake();
        }
    }

    pub fn clear(&self) {
        self.on.set(false);
    }

    /// Completes once the level is on (at once if it is).
    pub fn wait(&self) -> impl Future<Output = ()> + '_ {
        poll_fn(move |cx| {
            if self.on.get() {
                Poll::Ready(())
            } else {
                let mut wakers = self.wakers.borrow_mut();
                if !wakers.iter().any(|w| w.will_wake(cx.waker())) {
                    wakers.push(cx.waker().clone());
                }
                Poll::Pending
            }
        })
    }
}

/// A slot holding at most one value, with a [`Notify`] for its taker.
pub struct Mailbox<T> {
    value: RefCell<Option<T>>,
    arrived: Notify,
}

impl<T> Default for Mailbox<T> {
    fn default() -> Self {
        Mailbox { value: RefCell::new(None), arrived: Notify::new() }
    }
}

impl<T> Mailbox<T> {
    /// Puts `value` in; gives it back if the slot is full.
    pub fn put(&self, value: T) -> Result<(), T> {
        let mut slot = self.value.borrow_mut();
        if slot.is_some() {
            return Err(value);
        }
        *slot = Some(value);
        drop(slot);
        self.arrived.notify();
        Ok(())
    }

    /// Waits for a value and takes it.
    pub async fn take(&self) -> T {
        loop {
            if let Some(value) = self.value.borrow_mut().take() {
                return value;
            }
            self.arrived.wait().await;
        }
    }
}

/// Which of two futures finished first.
#[derive(Debug, PartialEq, Eq)]
pub enum Either<A, B> {
    First(A),
    Second(B),
}

/// Runs both futures until one finishes (the first is polled first); the other is
/// dropped, so both must be safe to cancel.
pub async fn first<A: Future, B: Future>(a: A, b: B) -> Either<A::Output, B::Output> {
    let mut a = pin!(a);
    let mut b = pin!(b);
    poll_fn(move |cx| {
        if let Poll::Ready(value) = a.as_mut().poll(cx) {
            return Poll::Ready(Either::First(value));
        }
        if let Poll::Ready(value) = b.as_mut().poll(cx) {
            return Poll::Ready(Either::Second(value));
        }
        Poll::Pending
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::rc::Rc;
    use xen_seams::sim::{Executor, World};

    #[test]
    fn notify_wakes_the_waiter_once_per_burst() {
        let world = World::new();
        let notify = Rc::new(Notify::new());
        let counter = Rc::new(Cell::new(0));
        let mut executor = Executor::new(&world);
        let (n, c) = (notify.clone(), counter.clone());
        executor.spawn_background("waiter", async move {
            loop {
                n.wait().await;
                c.set(c.get() + 1);
            }
        });
        executor.run().unwrap();
        assert_eq!(counter.get(), 0);
        notify.notify();
        notify.notify();
        executor.run().unwrap();
        assert_eq!(counter.get(), 1);
        notify.notify();
        executor.run().unwrap();
        assert_eq!(counter.get(), 2);
    }

    #[test]
    fn mailbox_holds_one_and_first_returns_the_winner() {
        let world = World::new();
        let mailbox = Rc::new(Mailbox::default());
        assert_eq!(mailbox.put(1), Ok(()));
        assert_eq!(mailbox.put(2), Err(2));
        let m = mailbox.clone();
        let taken = world.block_on(async move { m.take().await }).unwrap();
        assert_eq!(taken, 1);
        let result = world.block_on(async { first(core::future::pending::<()>(), async { 7 }).await }).unwrap();
        assert_eq!(result, Either::Second(7));
    }
}
