//! Console 0: the PV console ring from start_info, written by the kernel's `print!`.
//!
//! The ring page is shared with dom0's console daemon, which may be slow, rate-limited
//! or gone. Printing never waits for it: what the ring cannot take goes into a backlog
//! ([`crate::console_backlog`]) that [`pump`] (run by the executor) moves into the ring
//! as the daemon reads. Only [`flush`], at the end or on the fatal path, waits, and
//! that wait is bounded: past the bound the console is marked stalled so later flushes
//! do not wait again.

use crate::arch::{boot::VIRT_BASE, hypercall};
use crate::console_backlog::{Backlog, NotifyState};
use crate::time::Deadline;
use core::fmt;
use core::sync::atomic::{Ordering, fence};
use spin::Mutex;
use xen_abi::console::{self as ring, OUT_RING_SIZE};
use xen_abi::hypercall::MACH2PHYS_VIRT_START;

/// How long a flush waits for the console daemon to make progress.
const WAIT_FOR_SPACE_MS: u64 = 2_000;

/// Text waiting for room in the ring (the log's bytes are several times the guest's
/// on the platform device's log port; its writes hold off past 8 KiB of backlog).
const BACKLOG_BYTES: usize = 128 << 10;

pub struct Console {
    page: *mut u8,
    evtchn: u32,
    /// dom0 read nothing for WAIT_FOR_SPACE_MS while text waited: flushes do not wait
    /// and the executor stops polling, until dom0 reads again
    stalled: bool,
    notify: NotifyState,
    /// the consumer index last seen, and when text last stopped waiting or dom0 last
    /// read (ns)
    last_cons: u32,
    progress_ns: u64,
}

// SAFETY: the ring page is accessed only through the `CONSOLE` mutex (or by the fatal
// path on the single vCPU after everything else has stopped).
unsafe impl Send for Console {}

static CONSOLE: Mutex<Option<Console>> = Mutex::new(None);
/// Console 0's backlog (a static of its own, all zeros, so it costs the image nothing).
/// Locked after CONSOLE, never before it.
static BACKLOG: Mutex<Backlog<BACKLOG_BYTES>> = Mutex::new(Backlog::new());

/// start_info's console frame is not one of this domain's pages.
#[derive(Debug, thiserror::Error)]
#[error("start_info's console frame is not one of this domain's pages")]
pub struct FrameNotOurs;

/// Finds the console page through the machine-to-physical table and opens it.
pub fn init(mfn: u64, evtchn: u32, nr_pages: u64) -> Result<(), FrameNotOurs> {
    // SAFETY: the M2P table is mapped read-only into every PV guest at
    // MACH2PHYS_VIRT_START with one u64 per machine frame; Xen hands out console
    // frames it owns, so the entry exists.
    let pfn = unsafe { ((MACH2PHYS_VIRT_START + mfn * 8) as *const u64).read_volatile() };
    if pfn >= nr_pages {
        return Err(FrameNotOurs);
    }
    let page = (VIRT_BASE + pfn * 4096) as *mut u8;
    *CONSOLE.lock() = Some(Console {
        page,
        evtchn,
        stalled: false,
        notify: NotifyState::default(),
        last_cons: 0,
        progress_ns: crate::time::now_ns(),
    });
    Ok(())
}

impl Console {
    fn index(&self, offset: usize) -> *mut u32 {
        self.page.wrapping_add(offset) as *mut u32
    }

    fn read_index(&self, offset: usize) -> u32 {
        // SAFETY: `offset` is one of the index fields inside the mapped ring page.
        unsafe { self.index(offset).read_volatile() }
    }

    fn notify(&self) {
        // A failed notify only delays output; nothing to report it to.
        let _ = hypercall::evtchn_send(self.evtchn);
    }

    /// Copies as much of `bytes` as the ring has room for; returns how much.
    fn put_in_ring(&mut self, bytes: &[u8]) -> usize {
        let prod = self.read_index(ring::OUT_PROD_OFFSET);
        let cons = self.read_index(ring::OUT_CONS_OFFSET);
        let n = ring::free_space(OUT_RING_SIZE, cons, prod).min(bytes.len());
        if n == 0 {
            return 0;
        }
        for (i, &b) in bytes[..n].iter().enumerate() {
            let slot = ring::slot(OUT_RING_SIZE, prod.wrapping_add(i as u32));
            // SAFETY: `slot` < OUT_RING_SIZE, so the byte is inside the ring's
            // output array of the mapped page; the daemon reads only below prod.
            unsafe { self.page.add(ring::OUTPUT_OFFSET + slot).write_volatile(b) };
        }
        // The data must be visible before the index that publishes it.
        fence(Ordering::Release);
        // SAFETY: out_prod is a field of the mapped ring page and we are its only writer.
        unsafe { self.index(ring::OUT_PROD_OFFSET).write_volatile(prod.wrapping_add(n as u32)) };
        n
    }

    /// Moves backlog into the ring, says how much was dropped once there is room,
    /// and notifies the daemon if it has caught up with what it was told of.
    fn pump(&mut self, backlog: &mut Backlog<BACKLOG_BYTES>) {
        while !backlog.is_empty() {
            let n = self.put_in_ring(backlog.front());
            if n == 0 {
                break;
            }
            backlog.consume(n);
            if backlog.is_empty() {
                let dropped = backlog.take_dropped();
                if dropped > 0 {
                    let _ = fmt::Write::write_fmt(
                        &mut BacklogWriter(backlog),
                        format_args!("[console: {dropped} bytes of output dropped: dom0 did not read them in time]\n"),
                    );
                }
            }
        }
        self.notify_if_due();
        self.watch_progress(backlog);
    }

    /// Marks the console stalled once text has waited WAIT_FOR_SPACE_MS with dom0
    /// reading nothing, and not stalled as soon as dom0 reads again.
    fn watch_progress(&mut self, backlog: &Backlog<BACKLOG_BYTES>) {
        let now = crate::time::now_ns();
        let cons = self.read_index(ring::OUT_CONS_OFFSET);
        let prod = self.read_index(ring::OUT_PROD_OFFSET);
        let waiting = !backlog.is_empty() || self.notify.unnotified(cons, prod);
        if cons != self.last_cons || !waiting {
            self.last_cons = cons;
            self.progress_ns = now;
            self.stalled = false;
        } else if now.saturating_sub(self.progress_ns) > WAIT_FOR_SPACE_MS * 1_000_000 {
            self.stalled = true;
        }
    }

    /// Writes `bytes` without waiting: into the ring if nothing is held back, the
    /// rest into the backlog (what does not fit there is dropped and counted).
    fn write(&mut self, backlog: &mut Backlog<BACKLOG_BYTES>, mut bytes: &[u8]) {
        self.pump(backlog);
        if backlog.is_empty() {
            let n = self.put_in_ring(bytes);
            bytes = &bytes[n..];
        }
        backlog.push(bytes);
        self.notify_if_due();
    }

    fn notify_if_due(&mut self) {
        let prod = self.read_index(ring::OUT_PROD_OFFSET);
        let cons = self.read_index(ring::OUT_CONS_OFFSET);
        if self.notify.should_notify(cons, prod) {
            self.notify();
        }
    }

    /// Whether the executor should come back soon: text is held back or unnotified.
    fn needs_pump(&self, backlog: &Backlog<BACKLOG_BYTES>) -> bool {
        if self.stalled {
            return false;
        }
        let prod = self.read_index(ring::OUT_PROD_OFFSET);
        let cons = self.read_index(ring::OUT_CONS_OFFSET);
        !backlog.is_empty() || self.notify.unnotified(cons, prod)
    }

    /// Waits (bounded: until the daemon makes no progress for WAIT_FOR_SPACE_MS) until
    /// the daemon has read everything, backlog included.
    fn flush(&mut self, backlog: &mut Backlog<BACKLOG_BYTES>) {
        if self.stalled {
            return;
        }
        let mut deadline = Deadline::after_ms(WAIT_FOR_SPACE_MS);
        let mut last_cons = self.read_index(ring::OUT_CONS_OFFSET);
        loop {
            self.pump(backlog);
            let cons = self.read_index(ring::OUT_CONS_OFFSET);
            if backlog.is_empty() && cons == self.read_index(ring::OUT_PROD_OFFSET) {
                return;
            }
            if cons != last_cons {
                last_cons = cons;
                deadline = Deadline::after_ms(WAIT_FOR_SPACE_MS);
            }
            if deadline.passed() {
                self.stalled = true;
                return;
            }
            // Tell the daemon again: a flush may be the last chance.
            self.notify();
            hypercall::sched_yield();
        }
    }
}

/// `fmt::Write` into the backlog (for the dropped-bytes line).
struct BacklogWriter<'a>(&'a mut Backlog<BACKLOG_BYTES>);

impl fmt::Write for BacklogWriter<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.0.push(s.as_bytes());
        Ok(())
    }
}

/// The console with the backlog, for `fmt::Write` (the fatal path's reports).
pub struct ConsoleWriter<'a> {
    console: &'a mut Console,
    backlog: &'a mut Backlog<BACKLOG_BYTES>,
}

impl ConsoleWriter<'_> {
    /// Waits (bounded) until the daemon has read everything.
    pub fn flush(&mut self) {
        self.console.flush(self.backlog);
    }
}

impl fmt::Write for ConsoleWriter<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.console.write(self.backlog, s.as_bytes());
        Ok(())
    }
}

/// Writes formatted text to console 0 without waiting (dropped if the console is not
/// set up, or if the backlog is full).
pub fn print(args: fmt::Arguments) {
    if let Some(console) = CONSOLE.lock().as_mut() {
        let mut backlog = BACKLOG.lock();
        let _ = fmt::Write::write_fmt(&mut ConsoleWriter { console, backlog: &mut backlog }, args);
    }
}

/// Flushes console 0 (bounded).
pub fn flush() {
    if let Some(console) = CONSOLE.lock().as_mut() {
        console.flush(&mut BACKLOG.lock());
    }
}

/// Moves held-back text into the ring as the daemon makes room (the executor calls
/// this on every round). Returns whether it should be called again soon even if
/// nothing else happens (text still held back or not yet notified).
pub fn pump() -> bool {
    match CONSOLE.lock().as_mut() {
        Some(console) => {
            let mut backlog = BACKLOG.lock();
            console.pump(&mut backlog);
            console.needs_pump(&backlog)
        }
        None => false,
    }
}

/// Bytes held back because the ring was full.
pub fn backlog_bytes() -> usize {
    BACKLOG.lock().len()
}

/// Tells a xenbus-style backend of console 0 that the frontend is connected.
///
/// Dom0's QEMU 8.2 and later (Debian 13's 10.0, the console backend of a stub domain
/// on Xen 4.20) serves console 0 as a xenbus device: it maps the ring at once but
/// reads it only once the frontend's `console/state` says Initialised or Connected.
/// No PV frontend writes that node for console 0 (libxl creates none; that QEMU
/// writes Initialising, 1, itself), so without this the stub domain's log stays
/// empty. Writes Connected (4) only over QEMU's 1; with xenconsoled or an older QEMU
/// the node is absent and nothing is written. Returns whether it wrote.
pub async fn connect_xenbus_backend() -> Result<bool, crate::xs::Error> {
    const STATE: &str = "console/state";
    match crate::xs::read_string(crate::xs::NO_TX, STATE).await {
        Ok(state) if state == "1" => {
            crate::xs::write(crate::xs::NO_TX, STATE, b"4").await?;
            Ok(true)
        }
        Ok(_) => Ok(false),
        Err(e) if e.is_missing() => Ok(false),
        Err(e) => Err(e),
    }
}

/// Runs `f` on the console even if the lock is held: for the fatal path only, when
/// the holder was interrupted by a fault and will never run again.
pub fn with_console_for_fatal(f: impl FnOnce(&mut ConsoleWriter)) {
    if CONSOLE.is_locked() {
        // SAFETY: single vCPU; the fatal path runs with events masked and ends in a
        // shutdown, so the interrupted lock holder never resumes to race with us.
        unsafe { CONSOLE.force_unlock() };
    }
    if BACKLOG.is_locked() {
        // SAFETY: as for CONSOLE just above.
        unsafe { BACKLOG.force_unlock() };
    }
    if let Some(console) = CONSOLE.lock().as_mut() {
        f(&mut ConsoleWriter { console, backlog: &mut BACKLOG.lock() });
    }
}

#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => { $crate::console::print(format_args!($($arg)*)) };
}

#[macro_export]
macro_rules! println {
    () => { $crate::print!("\n") };
    ($($arg:tt)*) => { $crate::console::print(format_args!("{}\n", format_args!($($arg)*))) };
}
