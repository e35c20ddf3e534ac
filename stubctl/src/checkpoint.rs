//! `stubctl checkpoint`: checkpoints of a running stub-domain guest by the ckpt/1
//! protocol (`ckpt`), each one complete `xc_domain_save` of the guest into a file
//! stock `xl restore` reads (`stream`), the guest resumed cooperatively afterwards
//! whatever happened.
//!
//! One cycle: ckpt/1's start (refused while an abort is pending); the guest's config
//! from `xl list -l`; `<dir>/.<name>.<seq>.ckpt.tmp` opened with xl's header and the
//! libxl stream's start; a live plain `xc_domain_save` (libxenguest, `sys`) whose
//! callbacks are: `switch_qemu_logdirty` -> QMP `xen-set-global-dirty-log`;
//! `precopy_policy` -> `progress`, the agent's abort, libxc's 5/50 rule; `suspend` ->
//! `entering_fg`, the wait for the agent's acknowledgement (abort, timeout), then the
//! guest suspended as libxl suspends an HVM guest (PV drivers: `control/shutdown` =
//! suspend; none: `xc_domain_shutdown(SHUTDOWN_suspend)`), QMP `stop` and
//! `xen-save-devices-state` into console 1 (`dmstate`). Then always: QMP `cont`,
//! `xc_domain_resume` (fast when the guest suspended itself), XS_RESUME. A save that
//! succeeded without an abort meanwhile gets its EMULATOR_CONTEXT and END, is
//! fsynced and renamed to `<dir>/<name>.<seq>.ckpt` (the directory fsynced too), and
//! all but the last `keep` checkpoints of the guest are removed; anything else removes
//! the temporary file.

use crate::ckpt::{self, Agent, Op, Outcome};
use crate::guest::{self, Guest};
use crate::lock::PathLock;
use crate::paths::{self, Host};
use crate::qmp::Client;
use crate::sys::{self, PrecopyStats, SaveHooks, Xc};
use crate::xs::{Tx, Xenstore};
use crate::{Error, Progress, dmstate, stream};
use serde_json::{Value, json};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Per QMP reply (libxl's `LIBXL_QMP_CMD_TIMEOUT`).
const QMP_LIMIT: Duration = Duration::from_secs(10);
/// For the guest to suspend, per stage (libxl's 60 s).
const SUSPEND_LIMIT: Duration = Duration::from_secs(60);
/// For the device model's state to reach dom0's file after the QMP reply.
const DM_STATE_LIMIT: Duration = Duration::from_secs(20);
const POLL: Duration = Duration::from_millis(50);
const LOCK_LIMIT: Duration = Duration::from_secs(60);

/// What `stubctl checkpoint` was asked for.
#[derive(Clone, Debug)]
pub struct Options {
    pub dir: PathBuf,
    /// Between the end of one cycle and the start of the next.
    pub interval: Duration,
    /// How many cycles (None: until one fails).
    pub count: Option<u64>,
    /// How many committed checkpoints of the guest to keep in `dir`.
    pub keep: usize,
    /// How long the agent has to acknowledge the suspend.
    pub ack_limit: Duration,
}

/// A committed checkpoint, for the report line.
#[derive(Clone, Debug)]
pub struct Committed {
    pub seq: u64,
    pub file: PathBuf,
    pub len_bytes: u64,
    /// The guest suspended to resumed.
    pub paused: Duration,
    /// The whole cycle.
    pub took: Duration,
}

/// Why a cycle did not commit: the one line stubctl prints.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint {seq} refused: an abort was pending")]
    Refused { seq: u64 },
    #[error("checkpoint {seq} cancelled: {why}")]
    Cancelled { seq: u64, why: String },
    #[error("checkpoint {seq} failed: no suspend acknowledgement within {} s", .limit.as_secs())]
    TimedOut { seq: u64, limit: Duration },
    #[error("checkpoint {seq} failed: {why}")]
    Failed { seq: u64, why: String },
}

/// The checkpoint files of guest `name` in `dir`, oldest first: `<name>.<seq>.ckpt`.
pub fn checkpoints(dir: &Path, name: &str) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if let Some(seq) = path.file_name().and_then(|f| f.to_str()).and_then(|f| seq_of(f, name)) {
            found.push((seq, path));
        }
    }
    found.sort();
    Ok(found)
}

/// The sequence number of a checkpoint file name of guest `name`.
pub fn seq_of(file_name: &str, name: &str) -> Option<u64> {
    let rest = file_name.strip_prefix(name)?.strip_prefix('.')?.strip_suffix(".ckpt")?;
    if rest.is_empty() || !rest.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    rest.parse().ok()
}

/// The files to remove so that only the last `keep` of `files` (oldest first) stay.
pub fn to_remove(files: &[(u64, PathBuf)], keep: usize) -> &[(u64, PathBuf)] {
    &files[..files.len().saturating_sub(keep)]
}

/// `xl list -l`'s JSON for one domain -> the config `xl save` would put in its
/// header: `config`, with `c_info.domid` 0 (a restore picks a new domid).
pub fn config_from_xl_list(text: &str) -> Option<Vec<u8>> {
    let list: Value = serde_json::from_str(text).ok()?;
    let mut config = list.as_array()?.first()?.get("config")?.clone();
    let c_info = config.get_mut("c_info")?.as_object_mut()?;
    if c_info.contains_key("domid") {
        c_info.insert("domid".into(), json!(0));
    }
    serde_json::to_vec_pretty(&config).ok()
}

/// Runs the cycles; each committed checkpoint is reported through `on_commit`.
pub fn run(
    target: &str,
    options: &Options,
    progress: &Progress,
    mut on_commit: impl FnMut(&Committed),
) -> Result<u64, Error> {
    let mut xs = Xenstore::open()?;
    let guest = guest::find(&mut xs, target)?;
    let uuid = guest::uuid(&mut xs, guest.domid)?;
    let host = Host::real();
    let level = if progress.verbose { sys::XTL_PROGRESS } else { sys::XTL_ERROR };
    let xc = Xc::open(level).map_err(|e| Error::Xen(format!("opening libxenctrl: {e}")))?;
    fs::create_dir_all(&options.dir).map_err(|e| Error::Io(format!("{}: {e}", options.dir.display())))?;
    let mut committed = 0;
    let mut cycle = 0;
    loop {
        let existing =
            checkpoints(&options.dir, &guest.name).map_err(|e| Error::Io(format!("{}: {e}", options.dir.display())))?;
        let seq = existing.last().map_or(1, |(seq, _)| seq + 1);
        let started = Instant::now();
        let result = one(&mut xs, &xc, &host, &guest, &uuid, seq, options, progress);
        match result {
            Ok((file, paused)) => {
                let len_bytes = fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
                committed += 1;
                on_commit(&Committed { seq, file, len_bytes, paused, took: started.elapsed() });
                let files = checkpoints(&options.dir, &guest.name)
                    .map_err(|e| Error::Io(format!("{}: {e}", options.dir.display())))?;
                for (_, old) in to_remove(&files, options.keep) {
                    progress.detail(&format!("removing {}", old.display()));
                    fs::remove_file(old).map_err(|e| Error::Io(format!("{}: {e}", old.display())))?;
                }
            }
            Err(error) => return Err(Error::Checkpoint(error)),
        }
        cycle += 1;
        if options.count.is_some_and(|count| cycle >= count) {
            return Ok(committed);
        }
        std::thread::sleep(options.interval);
    }
}

/// The ckpt/1 keys' writer.
fn apply(xs: &mut Xenstore, domid: u32, ops: &[Op]) -> Result<(), Error> {
    let base = ckpt::base(domid);
    for op in ops {
        match op {
            Op::Write(key, value) => xs.write(Tx::NONE, &format!("{base}/{key}"), value)?,
            Op::Rm(key) => xs.rm(Tx::NONE, &format!("{base}/{key}"))?,
        }
    }
    Ok(())
}

fn read_agent(xs: &mut Xenstore, domid: u32) -> Result<Agent, Error> {
    let base = ckpt::base(domid);
    let acked = xs.read(Tx::NONE, &format!("{base}/entering_fg_acked"))?;
    let abort = xs.read(Tx::NONE, &format!("{base}/abort"))?;
    Ok(Agent::from_values(acked.as_deref(), abort.as_deref()))
}

/// The guest's config as `xl save` writes it.
fn guest_config(domid: u32) -> Result<Vec<u8>, Error> {
    let out = std::process::Command::new("xl")
        .args(["list", "-l", &domid.to_string()])
        .output()
        .map_err(|e| Error::Xen(format!("running xl list -l: {e}")))?;
    let text = String::from_utf8_lossy(&out.stdout);
    config_from_xl_list(&text).ok_or_else(|| {
        Error::Xen(format!("xl list -l {domid} gave no config: {}", String::from_utf8_lossy(&out.stderr).trim()))
    })
}

/// One cycle: the committed file and how long the guest was suspended.
#[allow(clippy::too_many_arguments)]
fn one(
    xs: &mut Xenstore,
    xc: &Xc,
    host: &Host,
    guest: &Guest,
    uuid: &paths::Uuid,
    seq: u64,
    options: &Options,
    progress: &Progress,
) -> Result<(PathBuf, Duration), CheckpointError> {
    let failed = |why: String| CheckpointError::Failed { seq, why };
    let agent = read_agent(xs, guest.domid).map_err(|e| failed(e.to_string()))?;
    match ckpt::start(agent, seq) {
        Err(refusal) => {
            apply(xs, guest.domid, &refusal).map_err(|e| failed(e.to_string()))?;
            return Err(CheckpointError::Refused { seq });
        }
        Ok(ops) => apply(xs, guest.domid, &ops).map_err(|e| failed(e.to_string()))?,
    }
    progress.step(&format!("checkpoint {seq} of {} (domain {})", guest.name, guest.domid));
    let final_path = options.dir.join(format!("{}.{seq}.ckpt", guest.name));
    let tmp_path = options.dir.join(format!(".{}.{seq}.ckpt.tmp", guest.name));
    let result = save_to(xs, xc, host, guest, uuid, &tmp_path, options, progress);
    let (outcome, back) = match result {
        Ok((file, paused)) => match read_agent(xs, guest.domid) {
            Ok(agent) if ckpt::may_commit(agent) => match commit(file, &tmp_path, &final_path, &options.dir) {
                Ok(()) => (Outcome::Committed { file: final_path.display().to_string() }, Ok((final_path, paused))),
                Err(e) => {
                    let why = format!("writing {}: {e}", final_path.display());
                    (Outcome::Failed { why: why.clone() }, Err(failed(why)))
                }
            },
            Ok(_) => {
                let why = "abort after the save".to_string();
                (Outcome::Cancelled { why: why.clone() }, Err(CheckpointError::Cancelled { seq, why }))
            }
            Err(e) => (Outcome::Failed { why: e.to_string() }, Err(failed(e.to_string()))),
        },
        Err(SaveEnd::Cancelled(why)) => {
            (Outcome::Cancelled { why: why.clone() }, Err(CheckpointError::Cancelled { seq, why }))
        }
        Err(SaveEnd::TimedOut) => (
            Outcome::TimedOut { limit: options.ack_limit },
            Err(CheckpointError::TimedOut { seq, limit: options.ack_limit }),
        ),
        Err(SaveEnd::Failed(why)) => (Outcome::Failed { why: why.clone() }, Err(failed(why))),
    };
    if back.is_err() {
        let _ = fs::remove_file(&tmp_path);
    }
    apply(xs, guest.domid, &ckpt::finish(&outcome)).map_err(|e| failed(format!("{e} (after: {outcome:?})")))?;
    back
}

/// The complete file `tmp` made durable under its final name: fsync, rename, fsync
/// of the directory.
fn commit(file: File, tmp: &Path, dest: &Path, dir: &Path) -> io::Result<()> {
    file.sync_all()?;
    drop(file);
    fs::rename(tmp, dest)?;
    File::open(dir)?.sync_all()
}

/// How a save ended without a file.
enum SaveEnd {
    Cancelled(String),
    TimedOut,
    Failed(String),
}

/// The save into `tmp` (created here) with the guest resumed afterwards: the
/// complete file, and how long the guest was suspended.
#[allow(clippy::too_many_arguments)]
fn save_to(
    xs: &mut Xenstore,
    xc: &Xc,
    host: &Host,
    guest: &Guest,
    uuid: &paths::Uuid,
    tmp: &Path,
    options: &Options,
    progress: &Progress,
) -> Result<(File, Duration), SaveEnd> {
    let config = guest_config(guest.domid).map_err(|e| SaveEnd::Failed(e.to_string()))?;
    let prologue = stream::prologue(&config).map_err(|e| SaveEnd::Failed(e.to_string()))?;
    let _ = fs::remove_file(tmp);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(tmp)
        .map_err(|e| SaveEnd::Failed(format!("{}: {e}", tmp.display())))?;
    file.write_all(&prologue).map_err(|e| SaveEnd::Failed(format!("{}: {e}", tmp.display())))?;

    let _lock =
        PathLock::acquire(&host.qmp_lock(guest.domid, uuid), LOCK_LIMIT).map_err(|e| SaveEnd::Failed(e.to_string()))?;
    let qmp =
        Client::connect(&host.qmp_socket(guest.domid), QMP_LIMIT).map_err(|e| SaveEnd::Failed(format!("QMP: {e}")))?;
    let mut hooks = Hooks {
        xs,
        xc,
        qmp,
        guest,
        ack_limit: options.ack_limit,
        progress,
        save_file: format!("/var/lib/xen/qemu-save.{}", guest.domid),
        end: None,
        suspended: None,
        stopped: false,
        suspended_at: None,
        dm_state: None,
    };
    let saved = xc.save(file.as_fd(), guest.domid, true, &mut hooks);
    let resumed = hooks.resume();
    let paused = hooks.suspended_at.map(|at| at.elapsed()).unwrap_or_default();
    if let Some(end) = hooks.end.take() {
        return Err(end);
    }
    if let Err(e) = resumed {
        return Err(SaveEnd::Failed(format!("resuming the guest: {e}")));
    }
    saved.map_err(|e| SaveEnd::Failed(format!("xc_domain_save: {e}")))?;
    let dm_state = hooks.dm_state.take().ok_or_else(|| SaveEnd::Failed("no device model state".into()))?;
    let epilogue = stream::epilogue(&dm_state).map_err(|e| SaveEnd::Failed(e.to_string()))?;
    file.write_all(&epilogue).map_err(|e| SaveEnd::Failed(format!("{}: {e}", tmp.display())))?;
    progress.detail(&format!("guest suspended for {:.2} s", paused.as_secs_f64()));
    Ok((file, paused))
}

/// How the guest was suspended (and so how it is resumed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Suspended {
    /// It suspended itself (PV drivers, `control/shutdown`): fast resume, its
    /// SCHEDOP_shutdown returns "cancelled".
    Itself,
    /// Xen stopped it (`xc_domain_shutdown`): plain resume.
    ByXen,
}

/// libxenguest's callbacks for one save.
struct Hooks<'a> {
    xs: &'a mut Xenstore,
    xc: &'a Xc,
    qmp: Client,
    guest: &'a Guest,
    ack_limit: Duration,
    progress: &'a Progress,
    /// Dom0's end of the stub domain's console 1.
    save_file: String,
    /// Why the save is being abandoned (set by a callback).
    end: Option<SaveEnd>,
    suspended: Option<Suspended>,
    /// QMP `stop` was sent.
    stopped: bool,
    suspended_at: Option<Instant>,
    dm_state: Option<Vec<u8>>,
}

impl Hooks<'_> {
    fn domid(&self) -> u32 {
        self.guest.domid
    }

    /// Waits for ckpt/1's acknowledgement: `Ok(true)` acknowledged.
    fn wait_for_ack(&mut self) -> Result<bool, Error> {
        apply(self.xs, self.domid(), &ckpt::request_suspend())?;
        self.progress.step("waiting for the agent's acknowledgement");
        let started = Instant::now();
        loop {
            let agent = read_agent(self.xs, self.domid())?;
            match ckpt::ack_wait(agent, started.elapsed(), self.ack_limit) {
                ckpt::AckWait::Wait => std::thread::sleep(POLL),
                ckpt::AckWait::Suspend => return Ok(true),
                ckpt::AckWait::Abort => {
                    self.end = Some(SaveEnd::Cancelled("abort before the suspend".into()));
                    return Ok(false);
                }
                ckpt::AckWait::TimedOut => {
                    self.end = Some(SaveEnd::TimedOut);
                    return Ok(false);
                }
            }
        }
    }

    /// Suspends the guest as libxl does for an HVM guest.
    fn suspend_guest(&mut self) -> Result<(), Error> {
        let domid = self.domid();
        let xen = |what: &str, e: io::Error| Error::Xen(format!("{what} of domain {domid}: {e}"));
        let callback_irq = self.xc.hvm_param(domid, sys::HVM_PARAM_CALLBACK_IRQ).map_err(|e| xen("HVM param", e))?;
        let s_state = self.xc.hvm_param(domid, sys::HVM_PARAM_ACPI_S_STATE).map_err(|e| xen("HVM param", e))?;
        let started = Instant::now();
        if callback_irq == 0 || s_state != 0 {
            self.progress.detail("suspending the guest with xc_domain_shutdown (no PV drivers)");
            self.xc.shutdown(domid, sys::SHUTDOWN_SUSPEND).map_err(|e| xen("xc_domain_shutdown", e))?;
            self.suspended = Some(Suspended::ByXen);
        } else {
            self.progress.detail("asking the guest's PV drivers to suspend (control/shutdown)");
            let node = format!("{}/control/shutdown", paths::domain(domid));
            self.xs.write(Tx::NONE, &node, "suspend")?;
            loop {
                let value = self.xs.read(Tx::NONE, &node)?;
                if value.as_deref() != Some("suspend") {
                    break;
                }
                if started.elapsed() >= SUSPEND_LIMIT {
                    // As libxl: take the request back unless acknowledged meanwhile.
                    let _ = self.xs.write(Tx::NONE, &node, "");
                    return Err(Error::Timeout { what: "the guest to take the suspend request".into(), secs: 60 });
                }
                std::thread::sleep(POLL);
            }
            self.suspended = Some(Suspended::Itself);
        }
        loop {
            let info = self.xc.domain_info(domid).map_err(|e| xen("domain info", e))?;
            match info.shutdown_reason() {
                Some(sys::SHUTDOWN_SUSPEND) => break,
                Some(other) => {
                    self.suspended = None;
                    return Err(Error::Xen(format!("domain {domid} shut down with reason {other}, not suspend")));
                }
                None if started.elapsed() >= SUSPEND_LIMIT => {
                    return Err(Error::Timeout { what: "the guest to suspend".into(), secs: 60 });
                }
                None => std::thread::sleep(POLL),
            }
        }
        self.suspended_at = Some(Instant::now());
        Ok(())
    }

    /// QMP `stop` and the device model's state from console 1.
    fn save_device_model(&mut self) -> Result<(), Error> {
        self.qmp.execute("stop", Value::Null)?;
        self.stopped = true;
        let before = fs::metadata(&self.save_file).map(|m| m.len()).unwrap_or(0);
        self.qmp.execute("xen-save-devices-state", json!({ "filename": "/dev/fdset/1", "live": true }))?;
        let started = Instant::now();
        loop {
            let bytes = fs::read(&self.save_file).unwrap_or_default();
            let at = dmstate::offset(before, bytes.len() as u64) as usize;
            match dmstate::frame(bytes.get(at..).unwrap_or_default()) {
                Ok(Some(frame)) => {
                    self.progress.detail(&format!("{} bytes of device model state", frame.len()));
                    self.dm_state = Some(frame.to_vec());
                    return Ok(());
                }
                Ok(None) if started.elapsed() < DM_STATE_LIMIT => std::thread::sleep(POLL),
                Ok(None) => {
                    return Err(Error::Timeout {
                        what: format!("the device model's state in {}", self.save_file),
                        secs: DM_STATE_LIMIT.as_secs(),
                    });
                }
                Err(e) => return Err(Error::Xen(format!("{}: {e}", self.save_file))),
            }
        }
    }

    /// The cooperative resume, whatever happened: QMP `cont`, `xc_domain_resume`,
    /// XS_RESUME. Every step is tried; the first error is returned.
    fn resume(&mut self) -> Result<(), Error> {
        let mut first = Ok(());
        if self.stopped {
            if let Err(e) = self.qmp.execute("cont", Value::Null) {
                first = first.and(Err(Error::Qmp(e)));
            }
            self.stopped = false;
        }
        if let Some(how) = self.suspended.take() {
            let domid = self.domid();
            if let Err(e) = self.xc.resume(domid, how == Suspended::Itself) {
                first = first.and(Err(Error::Xen(format!("xc_domain_resume of domain {domid}: {e}"))));
            }
            if let Err(e) = self.xs.resume_domain(domid) {
                first = first.and(Err(Error::Xenstore(e)));
            }
            self.progress.step("guest resumed");
        }
        first
    }
}

impl SaveHooks for Hooks<'_> {
    fn switch_logdirty(&mut self, _domid: u32, enable: bool) -> bool {
        self.progress.detail(&format!("device model dirty log {}", if enable { "on" } else { "off" }));
        self.qmp.execute("xen-set-global-dirty-log", json!({ "enable": enable })).is_ok()
    }

    fn precopy(&mut self, stats: PrecopyStats) -> std::ffi::c_int {
        let agent = match read_agent(self.xs, self.domid()) {
            Ok(agent) => agent,
            Err(e) => {
                self.end = Some(SaveEnd::Failed(e.to_string()));
                return sys::XGS_POLICY_ABORT;
            }
        };
        let iteration = stats.iteration;
        let progress = (iteration.saturating_add(1) * 15).min(80);
        let _ = apply(self.xs, self.domid(), &[Op::Write("progress", progress.to_string())]);
        match ckpt::precopy(agent, iteration, stats.dirty_count) {
            ckpt::Precopy::Abort => {
                self.end = Some(SaveEnd::Cancelled(format!("abort during the copy (iteration {iteration})")));
                sys::XGS_POLICY_ABORT
            }
            ckpt::Precopy::Continue => sys::XGS_POLICY_CONTINUE_PRECOPY,
            ckpt::Precopy::StopAndCopy => sys::XGS_POLICY_STOP_AND_COPY,
        }
    }

    fn suspend(&mut self) -> bool {
        let step = match self.wait_for_ack() {
            Ok(false) => return false,
            Ok(true) => self.suspend_guest().and_then(|()| self.save_device_model()),
            Err(e) => Err(e),
        };
        match step {
            Ok(()) => true,
            Err(e) => {
                self.end = Some(SaveEnd::Failed(e.to_string()));
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_file_names() {
        assert_eq!(seq_of("g.12.ckpt", "g"), Some(12));
        assert_eq!(seq_of("g.x.ckpt", "g"), None);
        assert_eq!(seq_of("g..ckpt", "g"), None);
        assert_eq!(seq_of(".g.3.ckpt.tmp", "g"), None);
        assert_eq!(seq_of("gg.3.ckpt", "g"), None);
        assert_eq!(seq_of("g.3.ckpt", "g.3"), None);
        let files: Vec<(u64, PathBuf)> = (1..=5).map(|n| (n, PathBuf::from(format!("g.{n}.ckpt")))).collect();
        assert_eq!(to_remove(&files, 2).iter().map(|f| f.0).collect::<Vec<_>>(), [1, 2, 3]);
        assert!(to_remove(&files, 9).is_empty());
        assert_eq!(to_remove(&files, 0).len(), 5);
    }

    #[test]
    fn a_commit_renames_the_synced_file_into_place() {
        let dir = std::env::temp_dir().join(format!("stubctl-ckpt-commit-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let (tmp, dest) = (dir.join(".g.1.ckpt.tmp"), dir.join("g.1.ckpt"));
        let mut file = OpenOptions::new().write(true).create_new(true).open(&tmp).unwrap();
        file.write_all(b"whole checkpoint").unwrap();
        commit(file, &tmp, &dest, &dir).unwrap();
        let (tmp_left, content) = (tmp.exists(), fs::read(&dest).unwrap());
        let listed = checkpoints(&dir, "g").unwrap();
        fs::remove_dir_all(&dir).unwrap();
        assert!(!tmp_left);
        assert_eq!(content, b"whole checkpoint");
        assert_eq!(listed, [(1, dest)]);
    }

    #[test]
    fn checkpoints_are_listed_in_order() {
        let dir = std::env::temp_dir().join(format!("stubctl-ckpt-list-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        for name in ["g.10.ckpt", "g.9.ckpt", ".g.11.ckpt.tmp", "h.1.ckpt", "g.2.ckpt"] {
            fs::write(dir.join(name), b"x").unwrap();
        }
        let found = checkpoints(&dir, "g").unwrap();
        fs::remove_dir_all(&dir).unwrap();
        assert_eq!(found.iter().map(|f| f.0).collect::<Vec<_>>(), [2, 9, 10]);
    }

    #[test]
    fn the_config_is_xl_lists_with_domid_zero() {
        let text = r#"[{"domid": 7, "config": {"c_info": {"type": "hvm", "name": "g", "domid": 7}, "b_info": {}}}]"#;
        let config: Value = serde_json::from_slice(&config_from_xl_list(text).unwrap()).unwrap();
        assert_eq!(config["c_info"]["domid"], json!(0));
        assert_eq!(config["c_info"]["name"], json!("g"));
        let without = r#"[{"domid": 7, "config": {"c_info": {"name": "g"}}}]"#;
        let config: Value = serde_json::from_slice(&config_from_xl_list(without).unwrap()).unwrap();
        assert_eq!(config["c_info"].get("domid"), None);
        assert_eq!(config_from_xl_list("[]"), None);
        assert_eq!(config_from_xl_list("not json"), None);
        assert_eq!(config_from_xl_list(r#"[{"domid": 7}]"#), None);
    }
}
