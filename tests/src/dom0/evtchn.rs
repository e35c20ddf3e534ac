//! /dev/xen/evtchn: binding to a guest's event channel, notifying it, and waiting for its events.
//!
//! Linux's driver (drivers/xen/evtchn.c) queues the local port of each event that
//! arrives on a port bound through the device, and masks that port; read() hands the
//! queued ports out as u32s, and writing a port back unmasks it.

use super::{check, ioctl_none, open_device};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// The event channel device.
pub const DEVICE: &str = "/dev/xen/evtchn";

/// `struct ioctl_evtchn_bind_interdomain`.
#[repr(C)]
struct BindInterdomain {
    remote_domain: u32,
    remote_port: u32,
}

/// `struct ioctl_evtchn_unbind`.
#[repr(C)]
struct Unbind {
    port: u32,
}

/// `struct ioctl_evtchn_notify`.
#[repr(C)]
struct Notify {
    port: u32,
}

const IOCTL_BIND_INTERDOMAIN: u32 = ioctl_none(b'E', 1, size_of::<BindInterdomain>());
const IOCTL_UNBIND: u32 = ioctl_none(b'E', 3, size_of::<Unbind>());
const IOCTL_NOTIFY: u32 = ioctl_none(b'E', 4, size_of::<Notify>());

/// An open /dev/xen/evtchn and the local ports bound through it. Dropping it unbinds
/// those ports and closes the device.
#[derive(Debug)]
pub struct EventChannels {
    device: File,
    /// Local ports bound here and not yet unbound.
    bound: Mutex<Vec<u32>>,
}

impl EventChannels {
    /// Opens /dev/xen/evtchn. Non-blocking, so that a read can never outlast `wait`'s
    /// timeout (say, if another thread took the event between poll and read).
    pub fn open() -> Result<Self, String> {
        Ok(Self::from_file(open_device(DEVICE, libc::O_NONBLOCK)?))
    }

    fn from_file(device: File) -> Self {
        Self { device, bound: Mutex::new(Vec::new()) }
    }

    fn bound_ports(&self) -> MutexGuard<'_, Vec<u32>> {
        self.bound.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Binds a new local port to `remote_port` of `remote_domain` and returns the local port.
    pub fn bind_interdomain(&self, remote_domain: u32, remote_port: u32) -> Result<u32, String> {
        let request = BindInterdomain { remote_domain, remote_port };
        // SAFETY: this ioctl's argument is a struct ioctl_evtchn_bind_interdomain, which `request`
        // is (layout checked against the header by the tests); the driver only reads it, during the call.
        let result =
            unsafe { libc::ioctl(self.device.as_raw_fd(), IOCTL_BIND_INTERDOMAIN as libc::Ioctl, &raw const request) };
        let port =
            check(result, || format!("binding to port {remote_port} of domain {remote_domain} through {DEVICE}"))?;
        // The driver returns the new local port; check() has ruled out negative values.
        let port = port as u32;
        self.bound_ports().push(port);
        Ok(port)
    }

    /// Sends an event on local `port` to its remote end.
    pub fn notify(&self, port: u32) -> Result<(), String> {
        let request = Notify { port };
        // SAFETY: this ioctl's argument is a struct ioctl_evtchn_notify, which `request` is;
        // the driver only reads it, during the call.
        let result = unsafe { libc::ioctl(self.device.as_raw_fd(), IOCTL_NOTIFY as libc::Ioctl, &raw const request) };
        check(result, || format!("notifying local port {port} through {DEVICE}")).map(drop)
    }

    /// Waits up to `timeout` for an event on any port bound here. Returns that local
    /// port, already unmasked again, or None if the time ran out.
    pub fn wait(&self, timeout: Duration) -> Result<Option<u32>, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let mut poll_fd = libc::pollfd { fd: self.device.as_raw_fd(), events: libc::POLLIN, revents: 0 };
            // SAFETY: `poll_fd` is one valid pollfd and the count says one; poll() only
            // writes its `revents`, during the call.
            let ready = unsafe { libc::poll(&raw mut poll_fd, 1, poll_timeout_ms(remaining)) };
            if ready < 0 {
                let error = io::Error::last_os_error();
                if error.kind() == io::ErrorKind::Interrupted {
                    continue; // same deadline
                }
                return Err(format!("polling {DEVICE}: {error}"));
            }
            if ready == 0 {
                if Instant::now() >= deadline {
                    return Ok(None);
                }
                continue;
            }
            let mut buffer = [0u8; 4];
            match (&self.device).read(&mut buffer) {
                Ok(4) => {}
                // Someone else took the event first, or a signal came: wait on.
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => continue,
                Ok(n) => return Err(format!("reading {DEVICE}: got {n} bytes, expected a 4-byte port")),
                Err(e) => {
                    let hint = if e.raw_os_error() == Some(libc::EFBIG) {
                        " (the driver's event ring overflowed)"
                    } else {
                        ""
                    };
                    return Err(format!("reading {DEVICE}: {e}{hint}"));
                }
            }
            let port = u32::from_ne_bytes(buffer);
            (&self.device)
                .write_all(&buffer)
                .map_err(|e| format!("unmasking local port {port} (writing it back to {DEVICE}): {e}"))?;
            return Ok(Some(port));
        }
    }

    /// Unbinds local `port`.
    pub fn unbind(&self, port: u32) -> Result<(), String> {
        self.unbind_port(port)?;
        self.bound_ports().retain(|&p| p != port);
        Ok(())
    }

    fn unbind_port(&self, port: u32) -> Result<(), String> {
        let request = Unbind { port };
        // SAFETY: this ioctl's argument is a struct ioctl_evtchn_unbind, which `request` is;
        // the driver only reads it, during the call.
        let result = unsafe { libc::ioctl(self.device.as_raw_fd(), IOCTL_UNBIND as libc::Ioctl, &raw const request) };
        check(result, || format!("unbinding local port {port} through {DEVICE}")).map(drop)
    }
}

impl Drop for EventChannels {
    fn drop(&mut self) {
        // Best effort: closing the device makes the driver unbind whatever is left anyway.
        let ports = std::mem::take(self.bound.get_mut().unwrap_or_else(PoisonError::into_inner));
        for port in ports {
            let _ = self.unbind_port(port);
        }
    }
}

/// poll(2)'s timeout for `remaining`: whole milliseconds rounded up (so a wait never
/// ends early and never spins on a zero timeout), capped at what a c_int holds.
fn poll_timeout_ms(remaining: Duration) -> libc::c_int {
    remaining.as_nanos().div_ceil(1_000_000).min(libc::c_int::MAX as u128) as libc::c_int
}

/// (C expression, Rust value) pairs for the header check in `dom0::tests`.
#[cfg(test)]
pub(super) fn abi_facts() -> Vec<(&'static str, usize)> {
    use std::mem::offset_of;
    vec![
        ("IOCTL_EVTCHN_BIND_INTERDOMAIN", IOCTL_BIND_INTERDOMAIN as usize),
        ("IOCTL_EVTCHN_UNBIND", IOCTL_UNBIND as usize),
        ("IOCTL_EVTCHN_NOTIFY", IOCTL_NOTIFY as usize),
        ("sizeof(struct ioctl_evtchn_bind_interdomain)", size_of::<BindInterdomain>()),
        ("offsetof(struct ioctl_evtchn_bind_interdomain, remote_domain)", offset_of!(BindInterdomain, remote_domain)),
        ("offsetof(struct ioctl_evtchn_bind_interdomain, remote_port)", offset_of!(BindInterdomain, remote_port)),
        ("sizeof(struct ioctl_evtchn_unbind)", size_of::<Unbind>()),
        ("sizeof(struct ioctl_evtchn_notify)", size_of::<Notify>()),
        ("sizeof(evtchn_port_t)", size_of::<u32>()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::OwnedFd;
    use std::os::unix::net::UnixStream;
    use std::path::Path;

    /// EventChannels over one end of a socket pair: the other end plays the driver.
    fn fake_device() -> (EventChannels, UnixStream) {
        let (ours, driver) = UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        (EventChannels::from_file(File::from(OwnedFd::from(ours))), driver)
    }

    #[test]
    fn open_fails_clearly_without_the_device() {
        if Path::new(DEVICE).exists() {
            return; // a real dom0: nothing to check here
        }
        let err = EventChannels::open().unwrap_err();
        assert!(err.contains(DEVICE) && err.contains("dom0"), "{err}");
    }

    #[test]
    fn wait_returns_a_pending_port_and_unmasks_it() {
        let (channels, mut driver) = fake_device();
        driver.write_all(&7u32.to_ne_bytes()).unwrap();
        assert_eq!(channels.wait(Duration::from_secs(5)), Ok(Some(7)));
        let mut unmasked = [0u8; 4];
        driver.read_exact(&mut unmasked).unwrap();
        assert_eq!(u32::from_ne_bytes(unmasked), 7);
    }

    #[test]
    fn wait_takes_one_port_at_a_time() {
        let (channels, mut driver) = fake_device();
        driver.write_all(&[3u32.to_ne_bytes(), 9u32.to_ne_bytes()].concat()).unwrap();
        assert_eq!(channels.wait(Duration::from_secs(5)), Ok(Some(3)));
        assert_eq!(channels.wait(Duration::from_secs(5)), Ok(Some(9)));
    }

    #[test]
    fn wait_times_out_with_none() {
        let (channels, _driver) = fake_device();
        let started = Instant::now();
        assert_eq!(channels.wait(Duration::from_millis(100)), Ok(None));
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(100) && waited < Duration::from_secs(5), "{waited:?}");
        assert_eq!(channels.wait(Duration::ZERO), Ok(None));
    }

    #[test]
    fn wait_reports_a_short_read() {
        let (channels, driver) = fake_device();
        drop(driver); // end of file: readable, but no port
        let err = channels.wait(Duration::from_secs(5)).unwrap_err();
        assert!(err.contains(DEVICE) && err.contains("got 0 bytes"), "{err}");
    }

    #[test]
    fn ioctls_on_the_wrong_device_fail_with_context() {
        let (channels, _driver) = fake_device();
        let err = channels.bind_interdomain(5, 6).unwrap_err();
        assert!(err.contains("port 6 of domain 5") && err.contains(DEVICE), "{err}");
        assert!(channels.notify(4).unwrap_err().contains("notifying local port 4"));
        assert!(channels.unbind(4).unwrap_err().contains("unbinding local port 4"));
    }

    #[test]
    fn poll_timeout_rounds_up_and_saturates() {
        assert_eq!(poll_timeout_ms(Duration::ZERO), 0);
        assert_eq!(poll_timeout_ms(Duration::from_nanos(1)), 1);
        assert_eq!(poll_timeout_ms(Duration::from_micros(1500)), 2);
        assert_eq!(poll_timeout_ms(Duration::from_secs(3)), 3000);
        assert_eq!(poll_timeout_ms(Duration::MAX), libc::c_int::MAX);
    }
}
