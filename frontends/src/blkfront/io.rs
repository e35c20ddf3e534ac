//! A disk's I/O calls: each cut into requests and run to completion, whichever
//! waiting call leads (reads the ring and the backend's watch) and the others follow.

use alloc::string::String;
use core::cell::RefCell;
use core::future::poll_fn;
use core::pin::pin;
use core::task::Poll;
use core::time::Duration;

use xen_seams::{Xen, XenstoreError, XenstoreWatch};

use super::requests::{Inner, Submission};
use super::{Disk, Error, Flush, nanoseconds};
use crate::blkif::{Operation, SECTOR_SIZE};
use crate::xenbus::State;

/// How often a request short of pages retries grants the backend still maps.
const STALE_POLL: Duration = Duration::from_millis(1);

/// A caller's whole operation, cut into [`Submission`]s.
enum Job<'b> {
    Read { sector: u64, buf: &'b mut [u8] },
    Write { sector: u64, buf: &'b [u8] },
    Flush(Operation),
    Discard { sector: u64, nr_sectors: u64 },
}

impl Job<'_> {
    fn pieces(&self, chunk_bytes: usize) -> usize {
        match self {
            Job::Read { buf, .. } => buf.len().div_ceil(chunk_bytes),
            Job::Write { buf, .. } => buf.len().div_ceil(chunk_bytes),
            Job::Flush(_) | Job::Discard { .. } => 1,
        }
    }

    fn piece(&self, index: usize, chunk_bytes: usize) -> Submission<'_> {
        let data = |operation, sector: u64, len: usize, write| {
            let buf_offset = index * chunk_bytes;
            let len_bytes = chunk_bytes.min(len - buf_offset);
            let sector = sector + (buf_offset / SECTOR_SIZE) as u64;
            Submission::Data { operation, sector, buf_offset, len_bytes, write }
        };
        match self {
            Job::Read { sector, buf } => data(Operation::Read, *sector, buf.len(), None),
            Job::Write { sector, buf } => {
                let start = index * chunk_bytes;
                let end = buf.len().min(start + chunk_bytes);
                data(Operation::Write, *sector, buf.len(), Some(&buf[start..end]))
            }
            Job::Flush(operation) => Submission::Flush(*operation),
            Job::Discard { sector, nr_sectors } => Submission::Discard { sector: *sector, nr_sectors: *nr_sectors },
        }
    }

    fn read_buffer(&mut self) -> Option<&mut [u8]> {
        match self {
            Job::Read { buf, .. } => Some(buf),
            _ => None,
        }
    }
}

/// Releases the leader role when the leading future finishes or is dropped.
struct Leadership<'a, X: Xen> {
    inner: &'a RefCell<Inner<X>>,
}

impl<X: Xen> Drop for Leadership<'_, X> {
    fn drop(&mut self) {
        if let Ok(mut inner) = self.inner.try_borrow_mut() {
            inner.leader = false;
            inner.wake_all();
        }
    }
}

/// Orphans a call's requests if the call is dropped (or returns) before they finish.
struct CallGuard<'a, 'x, X: Xen> {
    disk: &'a Disk<'x, X>,
    token: u64,
}

impl<X: Xen> Drop for CallGuard<'_, '_, X> {
    fn drop(&mut self) {
        if let Ok(mut inner) = self.disk.inner.try_borrow_mut() {
            inner.abandon(self.disk.xen, self.token);
        }
    }
}

enum Woke {
    Event,
    Watch(Result<String, XenstoreError>),
    Condition,
}

impl<'x, X: Xen> Disk<'x, X> {
    /// Completes when the disk becomes unusable (the backend goes to Closing or
    /// Closed or vanishes, or breaks the protocol), with the reason. Meanwhile it
    /// also reads responses, so I/O proceeds while it runs. The caller then closes
    /// the disk.
    pub async fn watch_backend(&self) -> Error {
        self.wait_until(u64::MAX, |inner| inner.failure.is_some()).await;
        self.failure().unwrap_or(Error::Timeout { waited: Duration::MAX })
    }

    /// Reads `buf.len()` bytes from 512-byte sector `sector`. The length and the
    /// start must be whole logical blocks (`info().sector_size`).
    pub async fn read(&self, sector: u64, buf: &mut [u8]) -> Result<(), Error> {
        self.check_data(sector, buf.len(), false)?;
        if buf.is_empty() {
            return Ok(());
        }
        self.run(Job::Read { sector, buf }).await
    }

    /// Writes `buf` at 512-byte sector `sector`; whole logical blocks, as `read`.
    pub async fn write(&self, sector: u64, buf: &[u8]) -> Result<(), Error> {
        self.check_data(sector, buf.len(), true)?;
        if buf.is_empty() {
            return Ok(());
        }
        self.run(Job::Write { sector, buf }).await
    }

    /// Makes completed writes durable. Without flush or barrier support the backend
    /// writes through and there is nothing to do.
    pub async fn flush(&self) -> Result<(), Error> {
        let flush = {
            let inner = self.inner.borrow();
            if let Some(failure) = &inner.failure {
                return Err(failure.clone());
            }
            inner.flush
        };
        let operation = match flush {
            Flush::NotNeeded => return Ok(()),
            Flush::Cache => Operation::FlushDiskCache,
            Flush::Barrier => Operation::WriteBarrier,
            Flush::Refused => return Err(Error::NotSupported(Operation::FlushDiskCache)),
        };
        self.run(Job::Flush(operation)).await
    }

    /// Tells the backend `nr_sectors` sectors from `sector` are unused. The range is
    /// sent as is; `features().discard` has the granularity the backend honours.
    pub async fn discard(&self, sector: u64, nr_sectors: u64) -> Result<(), Error> {
        {
            let inner = self.inner.borrow();
            if let Some(failure) = &inner.failure {
                return Err(failure.clone());
            }
            if self.info.read_only {
                return Err(Error::ReadOnly);
            }
            if inner.discard.is_none() {
                return Err(Error::NotSupported(Operation::Discard));
            }
        }
        self.check_range(sector, nr_sectors)?;
        if nr_sectors == 0 {
            return Ok(());
        }
        self.run(Job::Discard { sector, nr_sectors }).await
    }

    fn check_data(&self, sector: u64, len_bytes: usize, write: bool) -> Result<(), Error> {
        if let Some(failure) = &self.inner.borrow().failure {
            return Err(failure.clone());
        }
        if write && self.info.read_only {
            return Err(Error::ReadOnly);
        }
        let sector_size = self.info.sector_size;
        let block_sectors = u64::from(sector_size) / SECTOR_SIZE as u64;
        if !len_bytes.is_multiple_of(sector_size as usize) || !sector.is_multiple_of(block_sectors) {
            return Err(Error::Misaligned { sector, len_bytes, sector_size });
        }
        self.check_range(sector, (len_bytes / SECTOR_SIZE) as u64)
    }

    fn check_range(&self, sector: u64, nr_sectors: u64) -> Result<(), Error> {
        let capacity_sectors = self.info.sectors;
        match sector.checked_add(nr_sectors) {
            Some(end) if end <= capacity_sectors => Ok(()),
            _ => Err(Error::OutOfRange { sector, nr_sectors, capacity_sectors }),
        }
    }

    /// Runs one call: submits its requests as ring slots and pages allow, batched
    /// before each notify, and takes their results as they come.
    async fn run(&self, mut job: Job<'_>) -> Result<(), Error> {
        let pieces = job.pieces(self.chunk_bytes);
        let token = {
            let mut inner = self.inner.borrow_mut();
            if let Some(failure) = &inner.failure {
                return Err(failure.clone());
            }
            inner.new_token()
        };
        let _guard = CallGuard { disk: self, token };
        let timeout = nanoseconds(self.options.request_timeout);
        let mut deadline = self.xen.now_ns().saturating_add(timeout);
        let (mut next, mut outstanding, mut error) = (0, 0, None);
        loop {
            let (pages_wanted, stale) = {
                let mut inner = self.inner.borrow_mut();
                let (finished, failed) = inner.harvest(self.xen, token, job.read_buffer());
                if finished > 0 {
                    outstanding -= finished;
                    deadline = self.xen.now_ns().saturating_add(timeout);
                    error = error.or(failed);
                }
                if outstanding == 0 && (next == pieces || error.is_some()) {
                    return error.map_or(Ok(()), Err);
                }
                if let Some(failure) = &inner.failure {
                    return Err(failure.clone());
                }
                let mut submitted = false;
                while error.is_none() && next < pieces {
                    let submission = job.piece(next, self.chunk_bytes);
                    if !inner.can_submit(submission.pages()) {
                        inner.retry_stale(self.xen);
                        if !inner.can_submit(submission.pages()) {
                            break;
                        }
                    }
                    match inner.submit(self.xen, self.handle, token, &submission) {
                        Ok(()) => (next, outstanding, submitted) = (next + 1, outstanding + 1, true),
                        Err(e) => error = Some(e),
                    }
                }
                if submitted {
                    inner.push(self.xen, self.port);
                }
                if outstanding == 0 && error.is_some() {
                    return error.map_or(Ok(()), Err);
                }
                let wanted = (error.is_none() && next < pieces).then(|| job.piece(next, self.chunk_bytes).pages());
                (wanted, !inner.stale.is_empty())
            };
            // Short of pages the backend still maps: look again soon, as nothing
            // will tell us when it lets go.
            let now = self.xen.now_ns();
            let until = match pages_wanted.is_some() && stale {
                true => deadline.min(now.saturating_add(nanoseconds(STALE_POLL))),
                false => deadline,
            };
            let ready = self
                .wait_until(until, |inner| {
                    inner.failure.is_some()
                        || inner.has_done(token)
                        || pages_wanted.is_some_and(|pages| inner.can_submit(pages))
                })
                .await;
            if !ready && self.xen.now_ns() >= deadline {
                return Err(Error::Timeout { waited: self.options.request_timeout });
            }
        }
    }

    /// Waits until `ready` holds or the clock reaches `deadline` (false then),
    /// leading (reading the ring and the backend watch) when nobody else does.
    async fn wait_until(&self, deadline: u64, ready: impl Fn(&Inner<X>) -> bool) -> bool {
        loop {
            let lead = {
                let mut inner = self.inner.borrow_mut();
                if ready(&inner) {
                    return true;
                }
                if self.xen.now_ns() >= deadline {
                    return false;
                }
                !core::mem::replace(&mut inner.leader, true)
            };
            if lead {
                let _leadership = Leadership { inner: &self.inner };
                return self.lead(deadline, &ready).await;
            }
            self.follow(deadline, &ready).await;
        }
    }

    async fn lead(&self, deadline: u64, ready: &impl Fn(&Inner<X>) -> bool) -> bool {
        loop {
            if self.backend_changed.get() {
                self.check_backend().await;
            }
            {
                let mut inner = self.inner.borrow_mut();
                inner.process_responses(self.xen);
                if ready(&inner) {
                    return true;
                }
            }
            let now = self.xen.now_ns();
            if now >= deadline {
                return false;
            }
            let woke = {
                let mut event = pin!(self.xen.wait(self.port));
                let mut watch = pin!(self.watch.next(Duration::from_nanos(deadline - now)));
                poll_fn(|cx| {
                    if event.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Woke::Event);
                    }
                    if let Poll::Ready(result) = watch.as_mut().poll(cx) {
                        return Poll::Ready(Woke::Watch(result));
                    }
                    let mut inner = self.inner.borrow_mut();
                    if ready(&inner) {
                        return Poll::Ready(Woke::Condition);
                    }
                    inner.register(cx.waker());
                    Poll::Pending
                })
                .await
            };
            match woke {
                Woke::Event | Woke::Condition | Woke::Watch(Err(XenstoreError::Timeout)) => {}
                Woke::Watch(Ok(_)) => {
                    self.backend_changed.set(true);
                    self.check_backend().await;
                }
                Woke::Watch(Err(e)) => self.inner.borrow_mut().fail(e.into()),
            }
        }
    }

    /// Waits for `ready`, for the leader to step down, or for the deadline.
    async fn follow(&self, deadline: u64, ready: &impl Fn(&Inner<X>) -> bool) {
        let now = self.xen.now_ns();
        let mut sleep = pin!(self.xen.sleep(Duration::from_nanos(deadline.saturating_sub(now))));
        poll_fn(|cx| {
            {
                let mut inner = self.inner.borrow_mut();
                if ready(&inner) || !inner.leader {
                    return Poll::Ready(());
                }
                inner.register(cx.waker());
            }
            sleep.as_mut().poll(cx)
        })
        .await
    }

    /// Fails the disk if the backend has gone to Closing or Closed, or vanished.
    async fn check_backend(&self) {
        let gone = match self.dev.backend_state().await {
            Ok(None) => Some(None),
            Ok(Some(state @ (State::Closing | State::Closed))) => Some(Some(state)),
            _ => None,
        };
        self.backend_changed.set(false);
        if let Some(state) = gone {
            self.inner.borrow_mut().fail(Error::BackendGone { state });
        }
    }
}
