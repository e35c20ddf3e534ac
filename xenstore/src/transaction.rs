//! Transaction retries, bounded: redo an attempt whose commit conflicted, a fixed number
//! of times at most.
//!
//! xenstored answers a commit with EAGAIN when another write changed what the
//! transaction used, and the whole transaction must be redone. Retrying "until it works"
//! spins forever under a steady writer (a question raised in a Xen code review about
//! such a loop); here the number of attempts is part of the call, so the loop ends.

use crate::reply::{Errno, XsError};

/// How many times to run a transaction before giving up on conflicts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in total, the first included; 0 runs none.
    pub max_attempts: u32,
}

impl Default for RetryPolicy {
    fn default() -> RetryPolicy {
        RetryPolicy { max_attempts: 8 }
    }
}

/// An error that may mean "a conflicting write happened: redo the transaction".
/// Transports that wrap `XsError` in their own error type implement it too.
pub trait Conflict {
    fn is_conflict(&self) -> bool;
}

impl Conflict for XsError {
    fn is_conflict(&self) -> bool {
        *self == XsError::Errno(Errno::EAGAIN)
    }
}

/// Why a transaction did not complete.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TransactionError<E = XsError> {
    /// every attempt ended in EAGAIN (a conflicting write)
    #[error("all {attempts} attempts ended in EAGAIN (a conflicting write)")]
    TooManyConflicts { attempts: u32 },
    /// an attempt failed with an error other than EAGAIN
    #[error("the transaction failed: {0}")]
    Failed(E),
}

/// Runs `attempt(1)`, `attempt(2)`, ... until one succeeds, one fails with an error
/// other than EAGAIN (returned at once), or `policy.max_attempts` have ended in EAGAIN.
///
/// Each attempt is a whole transaction: start, reads and writes, commit. An attempt
/// that fails before its commit should abandon its transaction itself (commit = false);
/// after an EAGAIN commit xenstored has already ended it. The attempt number lets the
/// caller back off between attempts; this function needs no executor or timer.
pub async fn with_retries<T, E, F>(policy: RetryPolicy, mut attempt: F) -> Result<T, TransactionError<E>>
where
    E: Conflict,
    F: AsyncFnMut(u32) -> Result<T, E>,
{
    for number in 1..=policy.max_attempts {
        match attempt(number).await {
            Ok(value) => return Ok(value),
            Err(error) if error.is_conflict() => continue,
            Err(error) => return Err(TransactionError::Failed(error)),
        }
    }
    Err(TransactionError::TooManyConflicts { attempts: policy.max_attempts })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::{Client, Sim};
    use core::pin::pin;
    use core::task::{Context, Poll, Waker};

    /// Polls a future that never waits on anything outside itself.
    fn block_on<F: Future>(future: F) -> F::Output {
        let mut future = pin!(future);
        let mut context = Context::from_waker(Waker::noop());
        for _ in 0..1000 {
            if let Poll::Ready(output) = future.as_mut().poll(&mut context) {
                return output;
            }
        }
        panic!("the future kept returning Pending");
    }

    const COUNTER: &str = "/local/domain/1/counter";

    /// A sim where domain 1 has a counter at "counter" in its home.
    fn setup() -> (Sim, Client) {
        let mut sim = Sim::new();
        let client = Client::connect(&mut sim, 1);
        sim.write(COUNTER, b"0").unwrap();
        (sim, client)
    }

    /// One attempt: read a counter, maybe let a rival write it, write it plus one, commit.
    fn increment(sim: &mut Sim, client: &mut Client, rival_value: Option<&[u8]>) -> Result<u32, XsError> {
        let tx_id = client.transaction_start(sim)?;
        let value = client.read(sim, tx_id, "counter")?;
        let number: u32 = core::str::from_utf8(&value).unwrap().parse().unwrap();
        if let Some(rival_value) = rival_value {
            sim.write(COUNTER, rival_value).unwrap();
        }
        client.write(sim, tx_id, "counter", alloc::format!("{}", number + 1).as_bytes())?;
        client.transaction_end(sim, tx_id, true)?;
        Ok(number + 1)
    }

    #[test]
    fn eagain_forever_stops_after_max_attempts() {
        let (mut sim, mut client) = setup();
        sim.fail_commits_with_eagain_forever();
        let mut calls = 0;
        let policy = RetryPolicy { max_attempts: 5 };
        let result = block_on(with_retries(policy, async |number| {
            calls += 1;
            assert_eq!(number, calls);
            increment(&mut sim, &mut client, None)
        }));
        assert_eq!(result, Err(TransactionError::TooManyConflicts { attempts: 5 }));
        assert_eq!(calls, 5);
        assert_eq!(sim.commits(), 5);
        assert_eq!(sim.read(COUNTER), Some(b"0".to_vec()));
    }

    #[test]
    fn default_policy_is_eight_attempts() {
        let (mut sim, mut client) = setup();
        sim.fail_commits_with_eagain_forever();
        let result = block_on(with_retries(RetryPolicy::default(), async |_| increment(&mut sim, &mut client, None)));
        assert_eq!(result, Err(TransactionError::TooManyConflicts { attempts: 8 }));
        assert_eq!(sim.commits(), 8);
    }

    #[test]
    fn conflict_with_a_concurrent_writer_succeeds_on_retry() {
        let (mut sim, mut client) = setup();
        let result = block_on(with_retries(RetryPolicy::default(), async |number| {
            // The rival writes 10 during the first attempt only.
            let rival = if number == 1 { Some(&b"10"[..]) } else { None };
            increment(&mut sim, &mut client, rival).map(|value| (number, value))
        }));
        assert_eq!(result, Ok((2, 11)));
        assert_eq!(sim.read(COUNTER), Some(b"11".to_vec()));
        assert_eq!(sim.commits(), 2);
    }

    #[test]
    fn other_errors_return_at_once() {
        let mut calls = 0;
        let result: Result<(), _> = block_on(with_retries(RetryPolicy::default(), async |_| {
            calls += 1;
            Err(XsError::Errno(Errno::ENOENT))
        }));
        assert_eq!(result, Err(TransactionError::Failed(XsError::Errno(Errno::ENOENT))));
        assert_eq!(calls, 1);
    }

    #[test]
    fn zero_attempts_runs_nothing() {
        let mut calls = 0;
        let result = block_on(with_retries(RetryPolicy { max_attempts: 0 }, async |_| {
            calls += 1;
            Ok::<(), XsError>(())
        }));
        assert_eq!(result, Err(TransactionError::TooManyConflicts { attempts: 0 }));
        assert_eq!(calls, 0);
    }
}
