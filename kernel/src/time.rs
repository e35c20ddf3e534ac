//! Time: Xen system time (monotonic ns), the wall clock, and timers for tasks.
//!
//! Timers live in one queue ordered by (deadline, arrival); the executor fires the
//! expired ones in that order and, before blocking, arms Xen's one-shot timer
//! (set_timer_op) for the earliest deadline, whose VIRQ_TIMER event wakes it.

use crate::arch;
use crate::shared_info;
use alloc::collections::BTreeMap;
use core::future::Future;
use core::pin::Pin;
use core::sync::atomic::{AtomicU64, Ordering};
use core::task::{Context, Poll, Waker};
use core::time::Duration;
use spin::Mutex;

/// Nanoseconds since the host booted (Xen system time).
pub fn now_ns() -> u64 {
    shared_info::vcpu0_time().system_time_at(arch::rdtsc())
}

/// Wall-clock time now, as (seconds, nanoseconds) since 1970.
pub fn wallclock() -> (u64, u32) {
    let (sec, nsec) = shared_info::wallclock_base();
    let total = u128::from(sec) * 1_000_000_000 + u128::from(nsec) + u128::from(now_ns());
    ((total / 1_000_000_000) as u64, (total % 1_000_000_000) as u32)
}

/// A point in time after which a bounded wait gives up.
#[derive(Clone, Copy, Debug)]
pub struct Deadline(u64);

impl Deadline {
    pub fn after_ms(ms: u64) -> Self {
        Deadline(now_ns().saturating_add(ms * 1_000_000))
    }

    pub fn passed(self) -> bool {
        now_ns() >= self.0
    }
}

/// Pending timers: (deadline ns, arrival number) -> the task to wake.
static TIMERS: Mutex<BTreeMap<(u64, u64), Waker>> = Mutex::new(BTreeMap::new());
static ARRIVALS: AtomicU64 = AtomicU64::new(0);

/// Wakes every timer whose deadline has passed, earliest first. Returns how many.
pub fn fire_expired() -> usize {
    let now = now_ns();
    let mut fired = 0;
    loop {
        let next = {
            let mut timers = TIMERS.lock();
            match timers.first_key_value().map(|(&key, _)| key) {
                Some(key) if key.0 <= now => timers.remove(&key).map(|w| (key, w)),
                _ => None,
            }
        };
        match next {
            Some((_, waker)) => {
                waker.wake();
                fired += 1;
            }
            None => return fired,
        }
    }
}

/// The earliest pending deadline, if any.
pub fn next_deadline() -> Option<u64> {
    TIMERS.lock().first_key_value().map(|(&(d, _), _)| d)
}

/// Completes at absolute system time `deadline_ns`.
pub fn sleep_until(deadline_ns: u64) -> Sleep {
    Sleep { deadline: deadline_ns, key: None }
}

/// Completes after `duration`.
pub fn sleep(duration: Duration) -> Sleep {
    sleep_until(now_ns().saturating_add(duration.as_nanos() as u64))
}

pub struct Sleep {
    deadline: u64,
    key: Option<(u64, u64)>,
}

impl Future for Sleep {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if now_ns() >= self.deadline {
            if let Some(key) = self.key.take() {
                TIMERS.lock().remove(&key);
            }
            return Poll::Ready(());
        }
        let deadline = self.deadline;
        let key = *self.key.get_or_insert_with(|| (deadline, ARRIVALS.fetch_add(1, Ordering::Relaxed)));
        TIMERS.lock().insert(key, cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            TIMERS.lock().remove(&key);
        }
    }
}

/// Runs `future` but gives up after `duration`.
pub async fn timeout<F: Future>(duration: Duration, future: F) -> Result<F::Output, TimedOut> {
    let mut future = core::pin::pin!(future);
    let mut sleep = core::pin::pin!(sleep(duration));
    core::future::poll_fn(|cx| {
        if let Poll::Ready(v) = future.as_mut().poll(cx) {
            return Poll::Ready(Ok(v));
        }
        if sleep.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(TimedOut));
        }
        Poll::Pending
    })
    .await
}

/// A bounded wait ran out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("timed out")]
pub struct TimedOut;
