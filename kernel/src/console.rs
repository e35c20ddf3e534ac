//! Console 0: the PV console ring from start_info, written by the kernel's `print!`.
//!
//! The ring page is shared with dom0's console daemon, which may be slow or gone, so
//! every wait for space is bounded; past the bound, output is dropped and the console
//! is marked stalled so later writes do not wait again.

use crate::arch::{boot::VIRT_BASE, hypercall};
use crate::time::Deadline;
use core::fmt;
use core::sync::atomic::{Ordering, fence};
use spin::Mutex;
use xen_abi::console::{self as ring, OUT_RING_SIZE};
use xen_abi::hypercall::MACH2PHYS_VIRT_START;

/// How long a write waits for the console daemon to make room.
const WAIT_FOR_SPACE_MS: u64 = 2_000;

pub struct Console {
    page: *mut u8,
    evtchn: u32,
    stalled: bool,
}

// SAFETY: the ring page is accessed only through the `CONSOLE` mutex (or by the fatal
// path on the single vCPU after everything else has stopped).
unsafe impl Send for Console {}

static CONSOLE: Mutex<Option<Console>> = Mutex::new(None);

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
    *CONSOLE.lock() = Some(Console { page, evtchn, stalled: false });
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

    /// Writes all of `bytes`, waiting (bounded) for the daemon to make room.
    pub fn write(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let prod = self.read_index(ring::OUT_PROD_OFFSET);
            let cons = self.read_index(ring::OUT_CONS_OFFSET);
            let free = ring::free_space(OUT_RING_SIZE, cons, prod);
            if free == 0 {
                if self.stalled
                    || !self.wait(|c| ring::free_space(OUT_RING_SIZE, c.read_index(ring::OUT_CONS_OFFSET), prod) > 0)
                {
                    self.stalled = true;
                    return;
                }
                continue;
            }
            self.stalled = false;
            let n = free.min(bytes.len());
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
            self.notify();
            bytes = &bytes[n..];
        }
    }

    /// Waits until the daemon has consumed everything written (bounded).
    pub fn flush(&mut self) {
        let prod = self.read_index(ring::OUT_PROD_OFFSET);
        if !self.stalled {
            self.wait(|c| c.read_index(ring::OUT_CONS_OFFSET) == prod);
        }
    }

    /// Polls `done` between yields until it holds or the wait bound passes.
    fn wait(&self, done: impl Fn(&Self) -> bool) -> bool {
        self.notify();
        let deadline = Deadline::after_ms(WAIT_FOR_SPACE_MS);
        loop {
            if done(self) {
                return true;
            }
            if deadline.passed() {
                return false;
            }
            hypercall::sched_yield();
        }
    }
}

impl fmt::Write for Console {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.write(s.as_bytes());
        Ok(())
    }
}

/// Writes formatted text to console 0 (dropped if the console is not set up).
pub fn print(args: fmt::Arguments) {
    if let Some(console) = CONSOLE.lock().as_mut() {
        let _ = fmt::Write::write_fmt(console, args);
    }
}

/// Flushes console 0 (bounded).
pub fn flush() {
    if let Some(console) = CONSOLE.lock().as_mut() {
        console.flush();
    }
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
pub fn with_console_for_fatal(f: impl FnOnce(&mut Console)) {
    if CONSOLE.is_locked() {
        // SAFETY: single vCPU; the fatal path runs with events masked and ends in a
        // shutdown, so the interrupted lock holder never resumes to race with us.
        unsafe { CONSOLE.force_unlock() };
    }
    if let Some(console) = CONSOLE.lock().as_mut() {
        f(console);
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
