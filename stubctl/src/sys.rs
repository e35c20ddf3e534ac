//! The libxenctrl / libxenguest calls a checkpoint needs, declared by hand after
//! Debian's libxen-dev headers (xenctrl.h, xenguest.h, xen/domctl.h of Xen 4.17) and
//! checked against them by tests/sys_layout.rs (sizes, offsets, constants), behind a
//! safe interface. This is the only module of stubctl with `unsafe` code.
//!
//! libxenctrl and libxenguest have no stable ABI (their sonames carry the Xen
//! release); the layout test fails when the installed headers differ from these
//! declarations. Only what is the same from 4.17 to 4.21 is used: `xc_domain_save`,
//! `struct save_callbacks` and `struct precopy_stats` did not change, and the domain
//! info comes from `xc_domain_getinfolist` (present in every release), whose record is
//! read only for its `domain` and `flags` fields.

#![allow(unsafe_code)]

use std::ffi::{c_int, c_long, c_uint, c_ulong, c_void};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::ptr::NonNull;

/// `XCFLAGS_LIVE`: precopy rounds with the guest running before the suspend.
pub const XCFLAGS_LIVE: u32 = 1 << 0;
/// `XC_STREAM_PLAIN`: one complete image ending with END (what `xl restore` reads).
pub const XC_STREAM_PLAIN: c_int = 0;
pub const XGS_POLICY_ABORT: c_int = -1;
pub const XGS_POLICY_CONTINUE_PRECOPY: c_int = 0;
pub const XGS_POLICY_STOP_AND_COPY: c_int = 1;
/// `SHUTDOWN_suspend` (xen/sched.h).
pub const SHUTDOWN_SUSPEND: u32 = 2;
/// `XEN_DOMINF_shutdown` and where the shutdown code sits in `flags`.
pub const XEN_DOMINF_SHUTDOWN: u32 = 1 << 2;
pub const XEN_DOMINF_HVM_GUEST: u32 = 1 << 1;
pub const XEN_DOMINF_SHUTDOWNSHIFT: u32 = 16;
pub const XEN_DOMINF_SHUTDOWNMASK: u32 = 255;
/// `HVM_PARAM_CALLBACK_IRQ` (non-zero: the guest has PV drivers) and
/// `HVM_PARAM_ACPI_S_STATE`.
pub const HVM_PARAM_CALLBACK_IRQ: u32 = 0;
pub const HVM_PARAM_ACPI_S_STATE: u32 = 14;

/// `struct precopy_stats`, passed by value to the precopy policy.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PrecopyStats {
    pub iteration: c_uint,
    pub total_written: c_ulong,
    /// -1 when not known.
    pub dirty_count: c_long,
}

type SuspendFn = extern "C" fn(*mut c_void) -> c_int;
type PrecopyFn = extern "C" fn(PrecopyStats, *mut c_void) -> c_int;
type LogdirtyFn = extern "C" fn(u32, c_uint, *mut c_void) -> c_int;

/// `struct save_callbacks`, field order as in xenguest.h.
#[repr(C)]
pub struct SaveCallbacks {
    pub suspend: Option<SuspendFn>,
    pub precopy_policy: Option<PrecopyFn>,
    pub postcopy: Option<SuspendFn>,
    pub checkpoint: Option<SuspendFn>,
    pub wait_checkpoint: Option<SuspendFn>,
    pub switch_qemu_logdirty: Option<LogdirtyFn>,
    pub data: *mut c_void,
}

/// `xc_domaininfo_t` (`struct xen_domctl_getdomaininfo`): `domain` and `flags` are
/// read, the rest is kept as bytes (its layout follows the domctl interface version).
#[repr(C)]
pub struct DomainInfoRaw {
    pub domain: u16,
    pub pad1: u16,
    pub flags: u32,
    pub rest: [u8; DOMAININFO_REST_BYTES],
}

/// `sizeof(xc_domaininfo_t)` minus `domain`, `pad1` and `flags` (Xen 4.17: 112 - 8).
pub const DOMAININFO_REST_BYTES: usize = 104;

/// `xentoollog_level`: libxenctrl's messages at or above this level are printed.
pub const XTL_PROGRESS: c_uint = 4;
pub const XTL_ERROR: c_uint = 8;
/// `XTL_STDIOSTREAM_HIDE_PROGRESS`: no "Saving memory: iter N" lines.
pub const XTL_STDIOSTREAM_HIDE_PROGRESS: c_uint = 0o4;

#[repr(C)]
struct XcInterface {
    _opaque: [u8; 0],
}

/// `xentoollog_logger` (and `_stdiostream`, which starts with one).
#[repr(C)]
struct Logger {
    _opaque: [u8; 0],
}

#[link(name = "xentoollog")]
unsafe extern "C" {
    fn xtl_createlogger_stdiostream(f: *mut c_void, min_level: c_uint, flags: c_uint) -> *mut Logger;
    fn xtl_logger_destroy(logger: *mut Logger);
}

unsafe extern "C" {
    /// glibc's `FILE *stderr`.
    static stderr: *mut c_void;
    /// kill(2).
    fn kill(pid: c_int, sig: c_int) -> c_int;
}

/// `SIGKILL`.
const SIGKILL: c_int = 9;

/// SIGKILL to every process of process group `pgid` (a group `std::process` started
/// with `process_group(0)`: its id is the leader's pid).
pub fn kill_process_group(pgid: u32) -> io::Result<()> {
    let pgid =
        c_int::try_from(pgid).ok().filter(|&g| g > 1).ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: kill(2) takes plain integers and touches no memory of ours; a negative
    // pid names the group, and groups 0 and 1 (ours, init's) are refused above.
    check(unsafe { kill(-pgid, SIGKILL) })
}

#[link(name = "xenctrl")]
unsafe extern "C" {
    fn xc_interface_open(logger: *mut Logger, dombuild_logger: *mut Logger, open_flags: c_uint) -> *mut XcInterface;
    fn xc_interface_close(xch: *mut XcInterface) -> c_int;
    fn xc_domain_shutdown(xch: *mut XcInterface, domid: u32, reason: c_int) -> c_int;
    fn xc_domain_getinfolist(
        xch: *mut XcInterface,
        first_domain: u32,
        max_domains: c_uint,
        info: *mut DomainInfoRaw,
    ) -> c_int;
    fn xc_hvm_param_get(xch: *mut XcInterface, dom: u32, param: u32, value: *mut u64) -> c_int;
}

#[link(name = "xenguest")]
unsafe extern "C" {
    fn xc_domain_save(
        xch: *mut XcInterface,
        io_fd: c_int,
        dom: u32,
        flags: u32,
        callbacks: *mut SaveCallbacks,
        stream_type: c_int,
        recv_fd: c_int,
    ) -> c_int;
    fn xc_domain_resume(xch: *mut XcInterface, domid: u32, fast: c_int) -> c_int;
}

/// What a save asks of its caller (the callbacks of `xc_domain_save`).
pub trait SaveHooks {
    /// Turns the device model's dirty log on or off; `true`: done.
    fn switch_logdirty(&mut self, domid: u32, enable: bool) -> bool;
    /// Whether to go on copying, stop and copy, or abandon the save.
    fn precopy(&mut self, stats: PrecopyStats) -> c_int;
    /// Leaves the guest shut down with reason suspend and its device model's state
    /// taken; `true`: done.
    fn suspend(&mut self) -> bool;
}

/// The data pointer the callbacks get: the hooks of one `xc_domain_save` call.
struct HookData<'a> {
    hooks: &'a mut dyn SaveHooks,
}

/// Runs `f` on the hooks behind `data`; a panic becomes `failed`.
fn with_hooks(data: *mut c_void, failed: c_int, f: impl FnOnce(&mut dyn SaveHooks) -> c_int) -> c_int {
    // SAFETY: `data` is the `&mut HookData` that `Xc::save` passed to xc_domain_save
    // for this call only; libxenguest calls back on the calling thread while
    // xc_domain_save runs (no other reference to it is live then), and never after.
    let hook_data = unsafe { &mut *data.cast::<HookData<'_>>() };
    catch_unwind(AssertUnwindSafe(|| f(&mut *hook_data.hooks))).unwrap_or(failed)
}

extern "C" fn suspend_trampoline(data: *mut c_void) -> c_int {
    // libxenguest: non-zero is success.
    with_hooks(data, 0, |hooks| c_int::from(hooks.suspend()))
}

extern "C" fn precopy_trampoline(stats: PrecopyStats, data: *mut c_void) -> c_int {
    with_hooks(data, XGS_POLICY_ABORT, |hooks| hooks.precopy(stats))
}

extern "C" fn logdirty_trampoline(domid: u32, enable: c_uint, data: *mut c_void) -> c_int {
    // libxenguest: 0 is success.
    with_hooks(data, 1, |hooks| if hooks.switch_logdirty(domid, enable != 0) { 0 } else { 1 })
}

/// A libxenctrl handle (`xc_interface`) and the logger it writes to stderr through,
/// both released on drop.
pub struct Xc {
    xch: NonNull<XcInterface>,
    logger: *mut Logger,
}

/// What `xc_domain_getinfolist` says of one domain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DomainInfo {
    pub domid: u32,
    pub flags: u32,
}

impl DomainInfo {
    /// The shutdown code, if the domain has shut down.
    pub fn shutdown_reason(&self) -> Option<u32> {
        (self.flags & XEN_DOMINF_SHUTDOWN != 0)
            .then_some((self.flags >> XEN_DOMINF_SHUTDOWNSHIFT) & XEN_DOMINF_SHUTDOWNMASK)
    }

    pub fn is_hvm(&self) -> bool {
        self.flags & XEN_DOMINF_HVM_GUEST != 0
    }
}

/// -1 with errno -> the error.
fn check(rc: c_int) -> io::Result<()> {
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

impl Xc {
    /// Opens libxenctrl; its messages go to stderr from `min_level` on
    /// ([`XTL_ERROR`], or [`XTL_PROGRESS`] for detail), without progress lines.
    pub fn open(min_level: c_uint) -> io::Result<Xc> {
        // SAFETY: `stderr` is glibc's stream, valid for the whole process; the logger
        // returned is owned by the `Xc` and destroyed once, in Drop, after the handle
        // that uses it is closed. (A null logger makes libxenctrl use its default.)
        let logger = unsafe { xtl_createlogger_stdiostream(stderr, min_level, XTL_STDIOSTREAM_HIDE_PROGRESS) };
        // SAFETY: `logger` is a valid logger or null; the returned handle is owned by
        // the `Xc` and closed once, in Drop.
        let xch = unsafe { xc_interface_open(logger, logger, 0) };
        match NonNull::new(xch) {
            Some(xch) => Ok(Xc { xch, logger }),
            None => {
                let error = io::Error::last_os_error();
                // SAFETY: no handle uses the logger; destroying null is allowed too.
                unsafe { xtl_logger_destroy(logger) };
                Err(error)
            }
        }
    }

    /// Domain `domid`'s info (NotFound if there is no such domain).
    pub fn domain_info(&self, domid: u32) -> io::Result<DomainInfo> {
        let mut raw = DomainInfoRaw { domain: 0, pad1: 0, flags: 0, rest: [0; DOMAININFO_REST_BYTES] };
        // SAFETY: the handle is open; `raw` is one writable xc_domaininfo_t (its size
        // is checked against the header) and max_domains is 1.
        let n = unsafe { xc_domain_getinfolist(self.xch.as_ptr(), domid, 1, &mut raw) };
        check(n)?;
        if n != 1 || u32::from(raw.domain) != domid {
            return Err(io::Error::new(io::ErrorKind::NotFound, format!("no domain {domid}")));
        }
        Ok(DomainInfo { domid, flags: raw.flags })
    }

    /// `xc_domain_shutdown(domid, reason)`: Xen stops the guest's vCPUs where they are.
    pub fn shutdown(&self, domid: u32, reason: u32) -> io::Result<()> {
        let reason = c_int::try_from(reason).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: the handle is open; plain integer arguments.
        check(unsafe { xc_domain_shutdown(self.xch.as_ptr(), domid, reason) })
    }

    /// HVM parameter `param` of `domid`.
    pub fn hvm_param(&self, domid: u32, param: u32) -> io::Result<u64> {
        let mut value = 0u64;
        // SAFETY: the handle is open; `value` is a writable u64 for the call.
        check(unsafe { xc_hvm_param_get(self.xch.as_ptr(), domid, param, &mut value) })?;
        Ok(value)
    }

    /// `xc_domain_resume(domid, fast)`.
    pub fn resume(&self, domid: u32, fast: bool) -> io::Result<()> {
        // SAFETY: the handle is open; plain integer arguments.
        check(unsafe { xc_domain_resume(self.xch.as_ptr(), domid, c_int::from(fast)) })
    }

    /// `xc_domain_save` of `domid` into `fd` as one plain stream (live: precopy
    /// rounds first), calling back into `hooks`.
    pub fn save(&self, fd: BorrowedFd<'_>, domid: u32, live: bool, hooks: &mut dyn SaveHooks) -> io::Result<()> {
        let mut data = HookData { hooks };
        let mut callbacks = SaveCallbacks {
            suspend: Some(suspend_trampoline),
            precopy_policy: Some(precopy_trampoline),
            postcopy: None,
            checkpoint: None,
            wait_checkpoint: None,
            switch_qemu_logdirty: Some(logdirty_trampoline),
            data: (&mut data as *mut HookData<'_>).cast(),
        };
        let flags = if live { XCFLAGS_LIVE } else { 0 };
        // SAFETY: the handle is open; `fd` is open for the whole call (borrowed);
        // `callbacks` and the `data` it points to outlive the call, and libxenguest
        // keeps neither after it returns. A plain stream needs only the callbacks
        // set here (suspend, switch_qemu_logdirty; precopy_policy is optional) and no
        // receive fd (-1).
        let rc = unsafe {
            xc_domain_save(self.xch.as_ptr(), fd.as_raw_fd(), domid, flags, &mut callbacks, XC_STREAM_PLAIN, -1)
        };
        check(rc)
    }
}

impl Drop for Xc {
    fn drop(&mut self) {
        // SAFETY: the handle came from xc_interface_open and is closed only here, then
        // the logger it used (no one else holds it) is destroyed.
        unsafe {
            xc_interface_close(self.xch.as_ptr());
            xtl_logger_destroy(self.logger);
        }
    }
}
