//! The seams between the kernel and the safe crates that use Xen.
//!
//! Frontends (blkfront, netfront, consoles, vchan) and the device model never call
//! Xen themselves: they are generic over these traits. The kernel implements them
//! with hypercalls and shared memory; `sim` (feature `sim`) implements them in
//! memory, with a scriptable peer domain and fault injection, so that protocol code
//! is tested on the host. Each trait is as small as its users need and no smaller.
//!
//! Memory a peer may write at any time (shared pages) is never handed out as a Rust
//! reference: it is copied in and out, so a hostile peer can only feed bad values,
//! which the protocol code validates.
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod hvm;
#[cfg(any(test, feature = "sim"))]
pub mod sim;

use alloc::string::String;
use alloc::vec::Vec;
use core::future::Future;
use core::time::Duration;

pub use xenstore::reply::XsError;
pub use xenstore::transaction::{Conflict, RetryPolicy, TransactionError};
pub use xenstore::wire::{EncodeError, Permission};

/// A domain id.
pub type DomId = u16;

/// A local event channel port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Port(pub u32);

/// A reference into our grant table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GrantRef(pub u32);

/// Why an event channel, grant or memory operation failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Xen refused the operation with this (negative) errno.
    #[error("Xen refused the operation (errno {0})")]
    Xen(i64),
    /// No free page, grant reference or port.
    #[error("no free page, grant reference or port")]
    Exhausted,
    /// The peer still has the grant mapped: it cannot be revoked yet.
    #[error("the peer still has the grant mapped")]
    InUse,
    /// The grant reference or port is not ours, or not in use.
    #[error("not a grant or port of ours")]
    Invalid,
}

/// Monotonic time and sleeping.
pub trait Clock {
    /// Nanoseconds on a monotonic clock.
    fn now_ns(&self) -> u64;
    /// Completes after `duration`.
    fn sleep(&self, duration: Duration) -> impl Future<Output = ()>;

    /// Runs `future` but gives up after `limit`.
    fn timeout<F: Future>(&self, limit: Duration, future: F) -> impl Future<Output = Result<F::Output, TimedOut>> {
        let sleep = self.sleep(limit);
        async move {
            let mut future = core::pin::pin!(future);
            let mut sleep = core::pin::pin!(sleep);
            core::future::poll_fn(|cx| {
                if let core::task::Poll::Ready(value) = future.as_mut().poll(cx) {
                    return core::task::Poll::Ready(Ok(value));
                }
                if sleep.as_mut().poll(cx).is_ready() {
                    return core::task::Poll::Ready(Err(TimedOut));
                }
                core::task::Poll::Pending
            })
            .await
        }
    }
}

/// A bounded wait ([`Clock::timeout`]) ran out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("timed out")]
pub struct TimedOut;

/// Event channels to other domains.
pub trait EventChannels {
    /// A port that domain `remote` may bind to (its number goes into xenstore).
    fn alloc_unbound(&self, remote: DomId) -> Result<Port, Error>;
    /// Binds to port `remote_port` that domain `remote` offered us.
    fn bind_interdomain(&self, remote: DomId, remote_port: u32) -> Result<Port, Error>;
    /// Notifies the other end.
    fn notify(&self, port: Port) -> Result<(), Error>;
    /// Completes at the next event on `port`. Events coalesce: after waking, check
    /// the shared state rather than counting events.
    fn wait(&self, port: Port) -> impl Future<Output = ()>;
    fn close(&self, port: Port) -> Result<(), Error>;
}

/// A page of ours that another domain may map and change at any moment.
pub trait SharedPage {
    /// The frame number a grant of this page names.
    fn frame(&self) -> u64;
    /// Copies bytes out of the page. Panics if the range leaves the page.
    fn read(&self, offset: usize, out: &mut [u8]);
    /// Copies bytes into the page. Panics if the range leaves the page.
    fn write(&self, offset: usize, data: &[u8]);
    /// Reads an aligned u32 (a ring index) after everything the peer wrote before it.
    /// The read is single-copy atomic: one 32-bit load, so a value the peer changes
    /// meanwhile (an increment across a byte carry) reads wholly old or wholly new,
    /// never part of each. Panics if `offset` is not a multiple of 4.
    fn read_u32(&self, offset: usize) -> u32;
    /// Writes an aligned u32 (a ring index) after everything we wrote before it.
    /// The write is single-copy atomic: one 32-bit store, so the peer never sees part
    /// of it. Panics if `offset` is not a multiple of 4.
    fn write_u32(&self, offset: usize, value: u32);
}

/// Whole pages to share.
pub trait Memory {
    type Page: SharedPage;
    /// A zeroed page; dropping it returns it (never drop a page still granted).
    fn alloc_page(&self) -> Result<Self::Page, Error>;
}

/// Our grant table.
pub trait Grants {
    /// Lets `domid` map `frame` (read-only if `readonly`).
    fn grant(&self, domid: DomId, frame: u64, readonly: bool) -> Result<GrantRef, Error>;
    /// Revokes a grant; `Error::InUse` while the peer has it mapped (nothing changes).
    fn end(&self, grant: GrantRef) -> Result<(), Error>;
}

/// A xenstore transaction id; `Tx::NONE` outside transactions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tx(pub u32);

impl Tx {
    pub const NONE: Tx = Tx(0);
}

/// Why a xenstore operation failed.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum XenstoreError {
    /// xenstored answered with an error (ENOENT, EACCES, EAGAIN, ...) or a bad reply.
    #[error("xenstore: {0}")]
    Xs(#[from] XsError),
    /// Refused before sending (path too long, bad characters, value too large).
    #[error("xenstore request refused: {0}")]
    Encode(EncodeError),
    /// No reply within the time limit.
    #[error("xenstore: no reply in time")]
    Timeout,
    /// The connection is unusable (corrupt ring, malformed message).
    #[error("xenstore connection broken: {0}")]
    Broken(&'static str),
}

impl Conflict for XenstoreError {
    fn is_conflict(&self) -> bool {
        matches!(self, XenstoreError::Xs(e) if e.is_conflict())
    }
}

impl XenstoreError {
    /// Whether the node does not exist.
    pub fn is_missing(&self) -> bool {
        matches!(self, XenstoreError::Xs(XsError::Errno(xenstore::reply::Errno::ENOENT)))
    }
}

pub type XsResult<T> = Result<T, XenstoreError>;

/// A registered xenstore watch; dropping it stops delivery.
pub trait XenstoreWatch {
    /// The next path that changed (at or below the watched one), waiting at most `limit`.
    fn next(&self, limit: Duration) -> impl Future<Output = XsResult<String>>;
}

/// The xenstore client. Relative paths are relative to our domain's home.
pub trait Xenstore {
    type Watch: XenstoreWatch;
    fn read(&self, tx: Tx, path: &str) -> impl Future<Output = XsResult<Vec<u8>>>;
    fn write(&self, tx: Tx, path: &str, value: &[u8]) -> impl Future<Output = XsResult<()>>;
    fn mkdir(&self, tx: Tx, path: &str) -> impl Future<Output = XsResult<()>>;
    fn rm(&self, tx: Tx, path: &str) -> impl Future<Output = XsResult<()>>;
    fn directory(&self, tx: Tx, path: &str) -> impl Future<Output = XsResult<Vec<String>>>;
    fn set_perms(&self, tx: Tx, path: &str, permissions: &[Permission]) -> impl Future<Output = XsResult<()>>;
    fn transaction_start(&self) -> impl Future<Output = XsResult<Tx>>;
    /// Committing fails with EAGAIN (`is_conflict`) when a conflicting write happened.
    fn transaction_end(&self, tx: Tx, commit: bool) -> impl Future<Output = XsResult<()>>;
    /// Watches `path` and everything below it; xenstored fires once at registration.
    fn watch(&self, path: &str) -> impl Future<Output = XsResult<Self::Watch>>;

    /// Reads a node as UTF-8 text.
    fn read_string(&self, tx: Tx, path: &str) -> impl Future<Output = XsResult<String>> {
        async move { String::from_utf8(self.read(tx, path).await?).map_err(|_| XenstoreError::Xs(XsError::NotUtf8)) }
    }

    /// Runs `body` in a transaction, redoing it when the commit conflicts, at most
    /// `policy.max_attempts` times; `body` gets the transaction and the attempt number.
    fn transaction<T>(
        &self,
        policy: RetryPolicy,
        mut body: impl AsyncFnMut(Tx, u32) -> XsResult<T>,
    ) -> impl Future<Output = Result<T, TransactionError<XenstoreError>>> {
        async move {
            xenstore::transaction::with_retries(policy, async |attempt| {
                let tx = self.transaction_start().await?;
                match body(tx, attempt).await {
                    Ok(value) => self.transaction_end(tx, true).await.map(|()| value),
                    Err(e) => {
                        let _ = self.transaction_end(tx, false).await;
                        Err(e)
                    }
                }
            })
            .await
        }
    }
}

/// Starting tasks that run beside the caller.
pub trait Spawn {
    /// Runs `future` as a task of its own (`name` is for reports); it is polled only
    /// when its own wake-ups fire, so it neither delays nor is delayed by the caller.
    fn spawn(&self, name: &str, future: impl Future<Output = ()> + 'static);
}

/// Everything a frontend or device needs from Xen, in one bound.
pub trait Xen: Clock + EventChannels + Memory + Grants + Xenstore + Spawn {
    /// Our own domain id.
    fn domid(&self) -> DomId;

    /// Bytes of log text written but not yet taken by dom0 (text the stub domain's
    /// console holds back while dom0's console daemon is behind). Logging never waits;
    /// a producer that can (the guest's log port) holds off while this is high.
    fn log_backlog_bytes(&self) -> usize {
        0
    }
}
