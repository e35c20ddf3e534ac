//! Console 0's backlog: text printed while dom0's console daemon has not made room in
//! the ring waits here, so that printing never waits for dom0.
//!
//! Why: xenconsoled reads a console at most 30 times per 200 ms (its rate limit) and
//! may be slow or gone; a print that waited for room held the whole image (every task
//! runs on one vCPU) for as long, so a guest filling the log stalled every other vCPU's
//! I/O. Now a print puts what the ring cannot take into this fixed buffer (no
//! allocation: it works before the heap exists); the executor moves it on as the daemon
//! reads. Text that does not fit is dropped and counted, and the count is printed once
//! there is room again. Producers that can wait (the guest's log port) look at
//! [`Backlog::len`] and hold off instead.
//!
//! Notifications are coalesced: the daemon is told of new text only once it has read
//! everything it was last told of ([`NotifyState`]); a notification per print would
//! spend its 30 reads on a few bytes each.

/// A fixed-capacity FIFO of bytes.
pub struct Backlog<const N: usize> {
    bytes: [u8; N],
    /// index of the oldest byte
    head: usize,
    len: usize,
    /// bytes refused since the last [`Backlog::take_dropped`]
    dropped: u64,
}

impl<const N: usize> Backlog<N> {
    pub const fn new() -> Self {
        Backlog { bytes: [0; N], head: 0, len: 0, dropped: 0 }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends as much of `data` as fits; the rest is counted as dropped.
    pub fn push(&mut self, data: &[u8]) {
        let take = data.len().min(N - self.len);
        for (i, &b) in data[..take].iter().enumerate() {
            self.bytes[(self.head + self.len + i) % N] = b;
        }
        self.len += take;
        self.dropped += (data.len() - take) as u64;
    }

    /// The oldest bytes held, in one contiguous run (the whole backlog may take two).
    pub fn front(&self) -> &[u8] {
        let end = (self.head + self.len).min(N);
        &self.bytes[self.head..end]
    }

    /// Forgets the oldest `n` bytes (at most what is held).
    pub fn consume(&mut self, n: usize) {
        let n = n.min(self.len);
        self.head = (self.head + n) % N;
        self.len -= n;
        if self.len == 0 {
            self.head = 0;
        }
    }

    /// How many bytes were dropped since the last call, and starts counting again.
    pub fn take_dropped(&mut self) -> u64 {
        core::mem::take(&mut self.dropped)
    }
}

/// When to notify the console daemon: only once it has consumed everything it was
/// last notified of. Text written meanwhile is read with the pending notification,
/// or notified when the daemon catches up (the executor checks while text is unread).
#[derive(Default)]
pub struct NotifyState {
    /// the producer index at the last notification
    notified_prod: Option<u32>,
}

impl NotifyState {
    /// Whether to notify now, with the ring's indexes; records it if so.
    pub fn should_notify(&mut self, cons: u32, prod: u32) -> bool {
        if prod == cons {
            return false;
        }
        match self.notified_prod {
            Some(notified) if notified == prod => false,
            // The daemon has not read up to the last notified index yet: that
            // notification is still being served (it reads up to prod when it runs).
            Some(notified) if prod.wrapping_sub(cons) > prod.wrapping_sub(notified) => false,
            _ => {
                self.notified_prod = Some(prod);
                true
            }
        }
    }

    /// Whether text in the ring was never notified (the executor keeps checking).
    pub fn unnotified(&self, cons: u32, prod: u32) -> bool {
        prod != cons && self.notified_prod != Some(prod)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifo_wraps_and_keeps_order() {
        let mut b: Backlog<8> = Backlog::new();
        b.push(b"abcdef");
        assert_eq!(b.front(), b"abcdef");
        b.consume(4);
        b.push(b"ghijk");
        assert_eq!(b.len(), 7);
        let mut out = Vec::new();
        while !b.is_empty() {
            let run = b.front().to_vec();
            out.extend_from_slice(&run);
            b.consume(run.len());
        }
        assert_eq!(out, b"efghijk");
        assert_eq!(b.take_dropped(), 0);
    }

    #[test]
    fn what_does_not_fit_is_counted_as_dropped() {
        let mut b: Backlog<4> = Backlog::new();
        b.push(b"abcdef");
        assert_eq!(b.front(), b"abcd");
        b.push(b"x");
        assert_eq!(b.take_dropped(), 3);
        assert_eq!(b.take_dropped(), 0);
        b.consume(10);
        assert!(b.is_empty());
    }

    #[test]
    fn notifies_once_per_catch_up() {
        let mut n = NotifyState::default();
        assert!(!n.should_notify(0, 0), "nothing to read");
        assert!(n.should_notify(0, 10));
        // More text before the daemon read the first: no second notification.
        assert!(!n.should_notify(0, 20));
        assert!(!n.should_notify(5, 30), "still reading what it was told of");
        assert!(n.unnotified(5, 30));
        // The daemon read up to 10 (all it was told of) and stopped: notify for 10..30.
        assert!(n.should_notify(10, 30));
        assert!(!n.unnotified(10, 30));
        assert!(!n.should_notify(30, 30));
        // Indexes wrap.
        let mut w = NotifyState::default();
        assert!(w.should_notify(u32::MAX - 5, 4));
        assert!(!w.should_notify(u32::MAX - 2, 8));
        assert!(w.should_notify(4, 8));
    }
}
