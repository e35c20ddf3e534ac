//! The Linux HVM test guest, driven from dom0: its xl config (with dom0's QEMU or a
//! stub domain as device model), its serial port as a command shell, the per-run
//! nonce CD, and checks of what it wrote to its disk.
//!
//! The guest is the CD image xtask builds (xtask/src/guest.rs): ISOLINUX on COM1,
//! Debian's kernel, and tests/guest/init, which says `@@guest: init <kernel>` on ttyS0
//! and then runs each line dom0 sends there as a shell command. [`GuestShell`] frames
//! every command with begin and end markers, so its output and exit status come
//! back whatever else the serial line carries (kernel messages, idle lines), and
//! keeps the whole serial transcript with times relative to `xl create`.

use crate::harness::Ctx;
use crate::{proc, xl, xs};
use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The guest's CD image in dom0 (the test bed's base initramfs holds it).
pub const GUEST_ISO: &str = "/guest/linux-cd.iso";
/// The bytes the image's /nonce.bin holds, to be found and replaced per run.
pub const NONCE_PLACEHOLDER: &str = "/guest/linux-cd-nonce-placeholder.bin";
/// libxl 4.17 refuses an empty stub-domain ramdisk; our image ignores its content.
pub const STUB_RAMDISK: &str = "/tmp/stub-ramdisk.img";

/// Who emulates the guest's devices.
#[derive(Clone, Debug)]
pub enum DeviceModel {
    /// dom0's qemu-xen (device_model_version = "qemu-xen", no stub domain).
    Dom0Qemu,
    /// A stub domain running `kernel` with `memory_mib` and `cmdline`, and `ramdisk`
    /// (None: [`STUB_RAMDISK`], which our image ignores).
    StubDomain { kernel: String, ramdisk: Option<String>, memory_mib: u32, cmdline: String },
}

/// What xl does when the guest powers off, reboots or crashes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Destroy,
    /// Keep the domain (shut down) so a test can read why it stopped.
    Preserve,
    /// Build the guest (and its stub domain) again.
    Restart,
}

impl Action {
    fn as_xl(self) -> &'static str {
        match self {
            Action::Destroy => "destroy",
            Action::Preserve => "preserve",
            Action::Restart => "restart",
        }
    }
}

/// An HVM guest booting the test CD: no VGA, COM1 on a pty, boot order CD then disk.
#[derive(Clone, Debug)]
pub struct HvmGuestConfig {
    pub name: String,
    pub device_model: DeviceModel,
    pub memory_mib: u32,
    /// A raw image file as hda (the primary master).
    pub hda: Option<String>,
    /// An ISO file as hdc (the secondary master), a CD-ROM.
    pub cdrom: Option<String>,
    /// The CD-ROM's `backendtype` (libxl's default, qdisk, when None).
    pub cdrom_backend: Option<String>,
    /// An ISO file as hdd (the secondary slave), a second CD-ROM.
    pub cdrom2: Option<String>,
    pub on_poweroff: Action,
    pub on_reboot: Action,
    pub on_crash: Action,
    /// Run the guest, its stub domain and dom0 on physical CPU 0 while the guest lives.
    /// In the test bed (Xen under QEMU TCG, one host thread per physical CPU) every
    /// device-model round trip then stays inside one host thread instead of waking
    /// another: on a loaded host ISOLINUX read the kernel from the CD in 41 s pinned,
    /// and had not finished after 300 s unpinned.
    pub one_pcpu: bool,
    /// The guest's vCPUs (`vcpus`).
    pub vcpus: u32,
    /// More xl.cfg lines, verbatim.
    pub extra: String,
}

impl HvmGuestConfig {
    /// 128 MiB, one vCPU on physical CPU 0 with dom0, no disks yet, every shutdown preserved.
    pub fn new(name: &str, device_model: DeviceModel) -> Self {
        HvmGuestConfig {
            name: name.to_string(),
            device_model,
            memory_mib: 128,
            hda: None,
            cdrom: None,
            cdrom_backend: None,
            cdrom2: None,
            on_poweroff: Action::Preserve,
            on_reboot: Action::Preserve,
            on_crash: Action::Preserve,
            one_pcpu: true,
            vcpus: 1,
            extra: String::new(),
        }
    }

    /// The xl.cfg text.
    pub fn xl_config(&self) -> String {
        let mut disks = Vec::new();
        if let Some(hda) = &self.hda {
            disks.push(format!("\"format=raw, vdev=hda, access=rw, target={hda}\""));
        }
        if let Some(cd) = &self.cdrom {
            let backend = self.cdrom_backend.as_ref().map(|b| format!("backendtype={b}, ")).unwrap_or_default();
            disks.push(format!("\"format=raw, vdev=hdc, access=ro, devtype=cdrom, {backend}target={cd}\""));
        }
        if let Some(cd) = &self.cdrom2 {
            disks.push(format!("\"format=raw, vdev=hdd, access=ro, devtype=cdrom, target={cd}\""));
        }
        let mut cfg = format!(
            "name = \"{}\"\ntype = \"hvm\"\nmemory = {}\nvcpus = {}\nvnc = 0\nsdl = 0\nnographic = 1\nvga = \"none\"\n\
             serial = \"pty\"\nboot = \"dc\"\ndevice_model_version = \"qemu-xen\"\n\
             on_poweroff = \"{}\"\non_reboot = \"{}\"\non_crash = \"{}\"\ndisk = [ {} ]\n",
            self.name,
            self.memory_mib,
            self.vcpus,
            self.on_poweroff.as_xl(),
            self.on_reboot.as_xl(),
            self.on_crash.as_xl(),
            disks.join(", ")
        );
        if self.one_pcpu {
            cfg.push_str("cpus = \"0\"\n");
        }
        if let DeviceModel::StubDomain { kernel, ramdisk, memory_mib, cmdline } = &self.device_model {
            let ramdisk = ramdisk.as_deref().unwrap_or(STUB_RAMDISK);
            cfg.push_str(&format!(
                "device_model_stubdomain_override = 1\nstubdomain_kernel = \"{kernel}\"\n\
                 stubdomain_ramdisk = \"{ramdisk}\"\nstubdomain_memory = {memory_mib}\n\
                 stubdomain_cmdline = \"{cmdline}\"\n"
            ));
        }
        cfg.push_str(&self.extra);
        cfg
    }
}

/// Why a domain stopped, from the fifth state letter of `xl list` (`-rscwS`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShutdownReason {
    Poweroff,
    Reboot,
    Suspend,
    Crash,
    Watchdog,
    SoftReset,
}

/// The shutdown reason of a shut-down domain's `xl list` row; None while it runs.
pub fn shutdown_reason(row: &xl::DomainRow) -> Option<ShutdownReason> {
    if !row.is_shutdown() {
        return None;
    }
    match row.state.as_bytes().get(4)? {
        b'-' => Some(ShutdownReason::Poweroff),
        b'r' => Some(ShutdownReason::Reboot),
        b's' => Some(ShutdownReason::Suspend),
        b'c' => Some(ShutdownReason::Crash),
        b'w' => Some(ShutdownReason::Watchdog),
        b'S' => Some(ShutdownReason::SoftReset),
        _ => None,
    }
}

/// A running test guest: `xl create` started in the background (xl waits for the
/// device model), its serial port open as a [`GuestShell`]. Destroyed on drop.
pub struct HvmGuest {
    pub name: String,
    pub domid: u32,
    /// The stub domain's domid, with [`DeviceModel::StubDomain`].
    pub stub_domid: Option<u32>,
    pub shell: GuestShell,
    xl_create: Child,
    xl_log: String,
    /// dom0's vCPUs are pinned to physical CPU 0 until the guest is dropped.
    dom0_pinned: bool,
}

impl HvmGuest {
    /// Writes the config, starts `xl create` and opens the guest's serial pty as soon
    /// as xenstore names it (a QEMU pty drops output while nobody has it open).
    /// Times in the transcript count from the start of `xl create`.
    pub fn create(ctx: &mut Ctx, config: &HvmGuestConfig, limit: Duration) -> Result<Self, String> {
        let stubdom = matches!(config.device_model, DeviceModel::StubDomain { .. });
        if stubdom {
            std::fs::write(STUB_RAMDISK, [0u8; 4096]).map_err(|e| format!("{STUB_RAMDISK}: {e}"))?;
        }
        let cfg = ctx.prepare_domain(&config.name, &config.xl_config())?;
        if config.one_pcpu {
            pin_vcpus("Domain-0", "0")?;
        }
        let unpin = || {
            if config.one_pcpu {
                let _ = pin_vcpus("Domain-0", "all");
            }
        };
        let xl_log = format!("/tmp/xl-create-{}.log", config.name);
        let out = std::fs::File::create(&xl_log).map_err(|e| format!("{xl_log}: {e}"))?;
        let origin = Instant::now();
        let mut xl_create = Command::new("xl")
            .args(["create", &cfg])
            .stdin(Stdio::null())
            .stdout(out.try_clone().map_err(|e| e.to_string())?)
            .stderr(out)
            .spawn()
            .map_err(|e| format!("xl create: {e}"))?;
        let started = (|| {
            let mut poll = |what: &str, probe: &mut dyn FnMut() -> Option<String>| {
                poll_while_creating(&mut xl_create, &xl_log, what, limit, probe)
            };
            let domid = poll("the guest's domid", &mut || xl::domid(&config.name).ok().map(|d| d.to_string()))?;
            let (stub_domid, tty_node) = if stubdom {
                let stub_name = format!("{}-dm", config.name);
                let stub = poll("the stub domain's domid", &mut || xl::domid(&stub_name).ok().map(|d| d.to_string()))?;
                if config.one_pcpu {
                    pin_vcpus(&stub_name, "0")?;
                }
                (Some(stub.clone()), format!("/local/domain/{stub}/device/console/3/tty"))
            } else {
                (None, format!("/local/domain/{domid}/serial/0/tty"))
            };
            let tty = poll(&tty_node, &mut || xs::read(&tty_node).filter(|v| v.starts_with("/dev/pts/")))?;
            let (pty, rx) = pty_reader(&tty)?;
            let parse = |s: &str| s.parse::<u32>().map_err(|e| format!("domid {s:?}: {e}"));
            Ok::<_, String>((parse(&domid)?, stub_domid.as_deref().map(parse).transpose()?, pty, rx))
        })();
        match started {
            Ok((domid, stub_domid, pty, rx)) => Ok(HvmGuest {
                name: config.name.clone(),
                domid,
                stub_domid,
                shell: GuestShell::new(Box::new(pty), rx, origin),
                xl_create,
                xl_log,
                dom0_pinned: config.one_pcpu,
            }),
            Err(e) => {
                let _ = xl_create.kill();
                let _ = xl_create.wait();
                xl::destroy(&config.name);
                unpin();
                Err(e)
            }
        }
    }

    /// Err with `xl create`'s output if it has already ended in failure.
    pub fn check_create_not_failed(&mut self) -> Result<(), String> {
        match self.xl_create.try_wait() {
            Ok(Some(status)) if !status.success() => Err(format!(
                "xl create failed ({status}):\n{}",
                std::fs::read_to_string(&self.xl_log).unwrap_or_default()
            )),
            _ => Ok(()),
        }
    }

    /// Waits for `xl create` to return; Err with its output unless it succeeded.
    pub fn wait_created(&mut self, limit: Duration) -> Result<(), String> {
        let status = proc::poll(limit, Duration::from_millis(200), || self.xl_create.try_wait().ok().flatten());
        let output = std::fs::read_to_string(&self.xl_log).unwrap_or_default();
        match status {
            Some(s) if s.success() => Ok(()),
            Some(s) => Err(format!("xl create failed ({s}):\n{output}")),
            None => Err(format!("xl create still running after {} s:\n{output}", limit.as_secs())),
        }
    }

    /// Waits until the guest has shut down (its config must preserve that kind of
    /// shutdown) and says why.
    pub fn wait_shutdown(&self, limit: Duration) -> Result<ShutdownReason, String> {
        let row = xl::wait_shutdown(&self.name, limit)?;
        shutdown_reason(&row).ok_or_else(|| format!("unknown shutdown state {row:?}"))
    }

    /// Destroys the guest (and its device model) and waits until it is gone.
    pub fn destroy(&mut self) -> Result<(), String> {
        xl::destroy(&self.name);
        proc::poll(Duration::from_secs(60), Duration::from_millis(250), || {
            matches!(xl::find(&self.name), Ok(None)).then_some(())
        })
        .ok_or_else(|| format!("{} still listed 60 s after xl destroy", self.name))
    }
}

impl Drop for HvmGuest {
    fn drop(&mut self) {
        let _ = self.xl_create.kill();
        let _ = self.xl_create.wait();
        xl::destroy(&self.name);
        if self.dom0_pinned {
            let _ = pin_vcpus("Domain-0", "all");
        }
    }
}

/// `xl vcpu-pin DOMAIN all PCPUS`: hard affinity of all the domain's vCPUs.
fn pin_vcpus(domain: &str, pcpus: &str) -> Result<(), String> {
    let out = proc::run(Command::new("xl").args(["vcpu-pin", domain, "all", pcpus]), Duration::from_secs(30))?;
    if out.success { Ok(()) } else { Err(format!("xl vcpu-pin {domain} all {pcpus}: {}{}", out.stdout, out.stderr)) }
}

/// Polls `probe` until it answers or `limit` passes; fails at once if `xl create`
/// has already failed.
fn poll_while_creating(
    xl_create: &mut Child,
    xl_log: &str,
    what: &str,
    limit: Duration,
    probe: &mut dyn FnMut() -> Option<String>,
) -> Result<String, String> {
    let output = || std::fs::read_to_string(xl_log).unwrap_or_default();
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = probe() {
            return Ok(v);
        }
        if let Ok(Some(status)) = xl_create.try_wait()
            && !status.success()
        {
            return Err(format!("xl create failed ({status}) before {what} appeared:\n{}", output()));
        }
        if Instant::now() >= deadline {
            return Err(format!("no {what} within {} s of xl create; it says:\n{}", limit.as_secs(), output()));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Opens a dom0 pty (a QEMU serial or console backend) in raw mode, without echo,
/// and reads it in a thread; chunks arrive through the channel as they are read.
pub fn pty_reader(path: &str) -> Result<(std::fs::File, mpsc::Receiver<Vec<u8>>), String> {
    let out = proc::run(Command::new("stty").args(["-F", path, "raw", "-echo"]), Duration::from_secs(10))?;
    if !out.success {
        return Err(format!("stty {path}: {}", out.stderr));
    }
    let file = std::fs::OpenOptions::new().read(true).write(true).open(path).map_err(|e| format!("{path}: {e}"))?;
    let mut reader = file.try_clone().map_err(|e| e.to_string())?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    Ok((file, rx))
}

/// Most of the serial transcript kept; a guest that prints more loses the rest.
const TRANSCRIPT_CAP_BYTES: usize = 16 << 20;

/// Everything a serial line carried, with the time each piece arrived.
#[derive(Default)]
pub struct Transcript {
    bytes: Vec<u8>,
    /// (arrival time, offset of the chunk's first byte in `bytes`), in order.
    chunks: Vec<(Duration, usize)>,
    dropped_bytes: usize,
}

impl Transcript {
    pub fn push(&mut self, at: Duration, data: &[u8]) {
        let room = TRANSCRIPT_CAP_BYTES.saturating_sub(self.bytes.len());
        let kept = &data[..data.len().min(room)];
        self.dropped_bytes += data.len() - kept.len();
        if !kept.is_empty() {
            self.chunks.push((at, self.bytes.len()));
            self.bytes.extend_from_slice(kept);
        }
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// When the byte at `offset` arrived.
    pub fn time_at(&self, offset: usize) -> Option<Duration> {
        if offset >= self.bytes.len() {
            return None;
        }
        let i = self.chunks.partition_point(|&(_, start)| start <= offset);
        self.chunks.get(i.checked_sub(1)?).map(|&(t, _)| t)
    }

    /// When the first byte arrived.
    pub fn first_byte_at(&self) -> Option<Duration> {
        self.time_at(0)
    }

    /// When `needle` was complete (its last byte arrived), for its first occurrence.
    pub fn time_of(&self, needle: &str) -> Option<Duration> {
        let at = find_bytes(&self.bytes, needle.as_bytes(), 0)?;
        self.time_at(at + needle.len().max(1) - 1)
    }

    /// The text from `offset` on, `\r` removed, each line prefixed with the time its
    /// first byte arrived, e.g. `[  31.20] ISOLINUX 6.04 ...`.
    pub fn render_from(&self, offset: usize) -> String {
        let mut out = String::new();
        let mut line_start = offset.min(self.bytes.len());
        while line_start < self.bytes.len() {
            let end = find_bytes(&self.bytes, b"\n", line_start).map_or(self.bytes.len(), |e| e + 1);
            let line = String::from_utf8_lossy(&self.bytes[line_start..end]).replace('\r', "");
            let t = self.time_at(line_start).unwrap_or_default().as_secs_f64();
            out.push_str(&format!("[{t:8.2}] {}\n", line.trim_end_matches('\n')));
            line_start = end;
        }
        if self.dropped_bytes > 0 {
            out.push_str(&format!("[transcript full: {} later bytes dropped]\n", self.dropped_bytes));
        }
        out
    }

    pub fn render(&self) -> String {
        self.render_from(0)
    }

    /// The last `nr_lines` rendered lines, for error messages.
    pub fn tail(&self, nr_lines: usize) -> String {
        let text = self.render();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(nr_lines)..].join("\n")
    }
}

/// The first position of `needle` in `haystack` at or after `from`.
pub fn find_bytes(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    if needle.is_empty() {
        return (from <= haystack.len()).then_some(from);
    }
    haystack.get(from..)?.windows(needle.len()).position(|w| w == needle).map(|p| p + from)
}

/// What one framed command printed and how it ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandOutput {
    /// Its standard output and error, `\r` removed.
    pub text: String,
    /// Its exit status.
    pub status: i32,
    /// False if the begin marker was lost: `text` is then all the line carried
    /// from when the command was sent to its end marker.
    pub begin_seen: bool,
}

/// A line for the guest's /init: `<length>:<line>` and a newline. /init runs it only
/// if all `length` bytes arrived, and otherwise answers [`GARBLED`] (a byte lost on
/// the way, seen on the bed, would have run a different command).
pub fn length_prefixed(line: &str) -> String {
    format!("{}:{line}\n", line.len())
}

/// What the guest's /init prints for a line that did not arrive whole.
pub const GARBLED: &str = "@@garbled ";

/// How often [`GuestShell::run`] sends a command again that arrived garbled.
const GARBLED_RESENDS: u32 = 3;

/// The line sent to the guest's shell for command number `id`: markers before and
/// after, the end marker with the exit status, behind its length
/// ([`length_prefixed`]). The markers are split by quotes in the line itself, so an
/// echo of the line never looks like one.
pub fn framed_command(id: u64, cmd: &str) -> Result<String, String> {
    let cmd = cmd.trim().trim_end_matches(';').trim_end();
    if cmd.is_empty() || cmd.contains(['\n', '\r']) || cmd.len() > 3000 {
        return Err(format!("a guest command is one non-empty line of at most 3000 bytes: {cmd:?}"));
    }
    // A command put in the background ends with `&`, which already separates it from
    // the next one: `& ;` is a syntax error, which ends the guest's /init.
    let separator = if cmd.ends_with('&') && !cmd.ends_with("&&") { " " } else { "; " };
    Ok(length_prefixed(&format!("echo \"@@\"\"beg {id}\"; {cmd}{separator}echo \"@@\"\"end {id} $?\"")))
}

/// Finds command `id`'s result in serial output `bytes`, looking from `from` (where
/// the transcript ended when the command was sent). None until its end marker line
/// is complete.
pub fn parse_command_output(bytes: &[u8], from: usize, id: u64) -> Option<CommandOutput> {
    let end_tag = format!("@@end {id} ");
    let mut search = from;
    let (end_at, status) = loop {
        let at = find_bytes(bytes, end_tag.as_bytes(), search)?;
        let rest = &bytes[at + end_tag.len()..];
        let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        match rest.get(digits) {
            // Not all of the line is here yet.
            None => return None,
            Some(b'\r' | b'\n') if digits > 0 => {
                let status = std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()?;
                break (at, status);
            }
            Some(_) => search = at + 1,
        }
    };
    let beg_tag = format!("@@beg {id}");
    let mut begin = None;
    let mut search = from;
    while let Some(at) = find_bytes(&bytes[..end_at], beg_tag.as_bytes(), search) {
        let after = at + beg_tag.len();
        match bytes[..end_at].get(after) {
            Some(b'\r' | b'\n') => {
                let eol = find_bytes(&bytes[..end_at], b"\n", after).map_or(end_at, |e| e + 1);
                begin = Some(eol);
                break;
            }
            _ => search = at + 1,
        }
    }
    let text_from = begin.unwrap_or(from).min(end_at);
    let text = String::from_utf8_lossy(&bytes[text_from..end_at]).replace('\r', "");
    Some(CommandOutput { text, status, begin_seen: begin.is_some() })
}

/// The guest once its /init runs: the kernel release it reported and when.
#[derive(Clone, Debug)]
pub struct GuestUp {
    pub kernel_release: String,
    /// When `@@guest: init` (or, if that was lost, the first `@@guest: ready`) arrived.
    pub at: Duration,
    pub init_line_seen: bool,
}

/// The guest's serial line as a shell: waits for its /init, runs framed commands,
/// keeps the transcript.
pub struct GuestShell {
    writer: Box<dyn Write + Send>,
    rx: mpsc::Receiver<Vec<u8>>,
    origin: Instant,
    transcript: Transcript,
    next_id: u64,
    closed: bool,
    /// command lines that reached the guest garbled (sent again)
    garbled_lines: u32,
}

impl GuestShell {
    /// A shell writing to `writer` and reading `rx`; times count from `origin`.
    pub fn new(writer: Box<dyn Write + Send>, rx: mpsc::Receiver<Vec<u8>>, origin: Instant) -> Self {
        GuestShell {
            writer,
            rx,
            origin,
            transcript: Transcript::default(),
            next_id: 1,
            closed: false,
            garbled_lines: 0,
        }
    }

    pub fn transcript(&self) -> &Transcript {
        &self.transcript
    }

    /// Takes in what arrives until `deadline` or the first chunk; false once the line
    /// is closed.
    fn pump(&mut self, deadline: Instant) -> bool {
        if self.closed {
            return false;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match self.rx.recv_timeout(left) {
            Ok(chunk) => {
                self.transcript.push(self.origin.elapsed(), &chunk);
                // Take whatever else is already there.
                while let Ok(more) = self.rx.try_recv() {
                    self.transcript.push(self.origin.elapsed(), &more);
                }
                true
            }
            Err(mpsc::RecvTimeoutError::Timeout) => true,
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                self.closed = true;
                false
            }
        }
    }

    /// Waits for `needle` anywhere in the transcript; returns when it was complete.
    pub fn wait_for(&mut self, needle: &str, limit: Duration) -> Result<Duration, String> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(t) = self.transcript.time_of(needle) {
                return Ok(t);
            }
            if Instant::now() >= deadline || !self.pump(deadline) {
                return Err(format!(
                    "{needle:?} not on the guest's serial within {} s{}; last lines:\n{}",
                    limit.as_secs(),
                    if self.closed { " (the pty closed)" } else { "" },
                    self.transcript.tail(30)
                ));
            }
        }
    }

    /// Waits for the guest's /init: its `@@guest: init <release>` line, or, when that
    /// was lost (the pty opened late), the `@@guest: ready <release>` it repeats while idle.
    pub fn wait_init(&mut self, limit: Duration) -> Result<GuestUp, String> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(up) = find_guest_up(&self.transcript) {
                return Ok(up);
            }
            if Instant::now() >= deadline || !self.pump(deadline) {
                return Err(format!(
                    "the guest's /init did not report within {} s; last lines:\n{}",
                    limit.as_secs(),
                    self.transcript.tail(40)
                ));
            }
        }
    }

    /// Sends one line with no end marker to wait for (e.g. `poweroff -f`), behind its
    /// length: a line that arrives garbled is not run (the transcript shows
    /// [`GARBLED`]).
    pub fn send_line(&mut self, line: &str) -> Result<(), String> {
        self.writer
            .write_all(length_prefixed(line).as_bytes())
            .map_err(|e| format!("writing to the guest's serial: {e}"))
    }

    /// Runs `cmd` (one line of shell) in the guest and returns what it printed. A line
    /// the guest reports garbled (it did not run it) is sent again, up to
    /// [`GARBLED_RESENDS`] times, each noted on stdout.
    pub fn run(&mut self, cmd: &str, limit: Duration) -> Result<CommandOutput, String> {
        let deadline = Instant::now() + limit;
        let mut resends = 0;
        let (mut id, mut from) = self.send_command(cmd)?;
        loop {
            if let Some(out) = parse_command_output(self.transcript.bytes(), from, id) {
                return Ok(out);
            }
            if let Some(at) = find_bytes(self.transcript.bytes(), GARBLED.as_bytes(), from)
                && resends < GARBLED_RESENDS
            {
                resends += 1;
                self.garbled_lines += 1;
                let bytes = self.transcript.bytes();
                let eol = find_bytes(bytes, b"\n", at).unwrap_or(bytes.len());
                println!(
                    "@@note guest-serial| command {id} reached the guest garbled ({} so far), sent again; \
                     sent {:?}, the guest said {:?}",
                    self.garbled_lines,
                    framed_command(id, cmd)?.trim_end(),
                    String::from_utf8_lossy(&bytes[at..eol]).trim_end()
                );
                (id, from) = self.send_command(cmd)?;
                continue;
            }
            if Instant::now() >= deadline || !self.pump(deadline) {
                return Err(format!(
                    "guest command {cmd:?} did not finish within {} s; the serial since:\n{}",
                    limit.as_secs(),
                    self.transcript.render_from(from)
                ));
            }
        }
    }

    /// Sends `cmd` as a new framed command; returns its id and where the transcript
    /// ended before it.
    fn send_command(&mut self, cmd: &str) -> Result<(u64, usize), String> {
        let id = self.next_id;
        self.next_id += 1;
        let line = framed_command(id, cmd)?;
        let from = self.transcript.bytes().len();
        self.writer.write_all(line.as_bytes()).map_err(|e| format!("writing to the guest's serial: {e}"))?;
        Ok((id, from))
    }

    /// [`GuestShell::run`], failing unless the command exits with 0.
    pub fn run_ok(&mut self, cmd: &str, limit: Duration) -> Result<String, String> {
        let out = self.run(cmd, limit)?;
        if out.status != 0 {
            return Err(format!("guest command {cmd:?} exited with {}:\n{}", out.status, out.text));
        }
        Ok(out.text)
    }
}

/// The first `@@guest: init` line in the transcript, else the first `@@guest: ready`.
fn find_guest_up(t: &Transcript) -> Option<GuestUp> {
    for (tag, init_line_seen) in [("@@guest: init ", true), ("@@guest: ready ", false)] {
        let mut search = 0;
        while let Some(at) = find_bytes(t.bytes(), tag.as_bytes(), search) {
            let start = at + tag.len();
            let Some(eol) = find_bytes(t.bytes(), b"\n", start) else { break };
            let release = String::from_utf8_lossy(&t.bytes()[start..eol]).trim().to_string();
            if !release.is_empty() {
                return Some(GuestUp { kernel_release: release, at: t.time_at(eol)?, init_line_seen });
            }
            search = eol;
        }
    }
    None
}

/// Why the per-run nonce could not be put into the CD image.
#[derive(Debug, PartialEq, Eq)]
pub enum NonceError {
    /// The nonce must have the placeholder's length (the file keeps its size).
    LengthMismatch { placeholder_len: usize, nonce_len: usize },
    /// The image does not hold the placeholder.
    NotFound,
    /// The image holds the placeholder more than once: which copy is the file is unknown.
    Ambiguous { copies: usize },
}

impl std::fmt::Display for NonceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NonceError::LengthMismatch { placeholder_len, nonce_len } => {
                write!(f, "nonce of {nonce_len} bytes for a placeholder of {placeholder_len}")
            }
            NonceError::NotFound => write!(f, "the image does not hold the nonce placeholder"),
            NonceError::Ambiguous { copies } => write!(f, "the image holds {copies} copies of the nonce placeholder"),
        }
    }
}

/// Overwrites the one copy of `placeholder` in `image` with `nonce` (same length);
/// returns its offset.
pub fn place_nonce(image: &mut [u8], placeholder: &[u8], nonce: &[u8]) -> Result<usize, NonceError> {
    if placeholder.len() != nonce.len() || placeholder.is_empty() {
        return Err(NonceError::LengthMismatch { placeholder_len: placeholder.len(), nonce_len: nonce.len() });
    }
    let mut found = Vec::new();
    let mut search = 0;
    while let Some(at) = find_bytes(image, placeholder, search) {
        found.push(at);
        search = at + 1;
    }
    match found.as_slice() {
        [] => Err(NonceError::NotFound),
        [at] => {
            image[*at..*at + nonce.len()].copy_from_slice(nonce);
            Ok(*at)
        }
        _ => Err(NonceError::Ambiguous { copies: found.len() }),
    }
}

/// A copy of the guest CD whose /nonce.bin holds bytes of this run.
pub struct NonceCd {
    pub path: String,
    /// What `sha256sum /cdrom/nonce.bin` must print in the guest.
    pub sha256_hex: String,
}

/// Copies [`GUEST_ISO`] to `dest` with fresh random bytes in its /nonce.bin.
pub fn nonce_cd(dest: &str) -> Result<NonceCd, String> {
    let mut image = std::fs::read(GUEST_ISO).map_err(|e| format!("{GUEST_ISO}: {e}"))?;
    let placeholder = std::fs::read(NONCE_PLACEHOLDER).map_err(|e| format!("{NONCE_PLACEHOLDER}: {e}"))?;
    let mut nonce = vec![0u8; placeholder.len()];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut nonce))
        .map_err(|e| format!("/dev/urandom: {e}"))?;
    place_nonce(&mut image, &placeholder, &nonce).map_err(|e| format!("{GUEST_ISO}: {e}"))?;
    std::fs::write(dest, &image).map_err(|e| format!("{dest}: {e}"))?;
    Ok(NonceCd { path: dest.to_string(), sha256_hex: sha256_hex(&nonce)? })
}

/// The test guest's kernel command line keeps the emulated disks and NICs
/// (`xen_emul_unplug=never`); [`unplugging_cd`] blanks that option in a copy of a CD.
pub const KEEP_EMULATED: &[u8] = b"xen_emul_unplug=never";

/// Blanks [`KEEP_EMULATED`] (spaces, same length) in the CD image at `path`, in place,
/// so that the guest's Linux unplugs the emulated disks and NICs through the Xen
/// platform device and uses its PV drivers.
pub fn unplugging_cd(path: &str) -> Result<(), String> {
    let mut image = std::fs::read(path).map_err(|e| format!("{path}: {e}"))?;
    let at = find_bytes(&image, KEEP_EMULATED, 0).ok_or_else(|| format!("{path}: no {:?}", "xen_emul_unplug=never"))?;
    image[at..at + KEEP_EMULATED.len()].fill(b' ');
    if find_bytes(&image, KEEP_EMULATED, at).is_some() {
        return Err(format!("{path}: the option twice"));
    }
    std::fs::write(path, &image).map_err(|e| format!("{path}: {e}"))
}

/// The sha256 of `data` in hex, by dom0's `sha256sum` (busybox).
pub fn sha256_hex(data: &[u8]) -> Result<String, String> {
    let path = format!("/tmp/sha256-input-{}", std::process::id());
    std::fs::write(&path, data).map_err(|e| format!("{path}: {e}"))?;
    let out = proc::run(Command::new("sha256sum").arg(&path), Duration::from_secs(30));
    let _ = std::fs::remove_file(&path);
    let out = out?;
    match out.stdout.split_whitespace().next() {
        Some(hex) if out.success && hex.len() == 64 => Ok(hex.to_string()),
        _ => Err(format!("sha256sum: {}{}", out.stdout, out.stderr)),
    }
}

/// The bytes `yes TAG | head -c LEN` prints: TAG and a newline, repeated, cut at LEN.
pub fn disk_pattern(tag: &str, len_bytes: usize) -> Vec<u8> {
    format!("{tag}\n").into_bytes().into_iter().cycle().take(len_bytes).collect()
}

/// The guest command that writes [`disk_pattern`]`(tag, len_bytes)` to `device` at
/// sector `offset_sectors` and flushes it to the device. `tag` is letters, digits,
/// `-`, `_`, `.` and spaces.
pub fn write_pattern_command(device: &str, tag: &str, offset_sectors: u64, len_bytes: usize) -> Result<String, String> {
    if tag.is_empty() || !tag.chars().all(|c| c.is_ascii_alphanumeric() || "-_. ".contains(c)) {
        return Err(format!("unsafe pattern tag {tag:?}"));
    }
    Ok(format!(
        "yes '{tag}' | head -c {len_bytes} | dd of={device} bs=512 seek={offset_sectors} iflag=fullblock conv=fsync \
         status=none && sync"
    ))
}

/// Checks that `path` holds `expected` at `offset_bytes` (e.g. a disk file after the
/// guest that wrote it is gone).
pub fn file_holds(path: &str, offset_bytes: u64, expected: &[u8]) -> Result<(), String> {
    let data = std::fs::read(path).map_err(|e| format!("{path}: {e}"))?;
    let start = usize::try_from(offset_bytes).map_err(|_| format!("offset {offset_bytes} too large"))?;
    let found = data.get(start..).unwrap_or_default();
    let found = &found[..found.len().min(expected.len())];
    if found == expected {
        return Ok(());
    }
    let first_diff = found.iter().zip(expected).position(|(a, b)| a != b).unwrap_or(found.len());
    Err(format!(
        "{path} differs from the expected {} bytes at offset {offset_bytes} + {first_diff} (file has {} bytes; \
         found {:?}...)",
        expected.len(),
        data.len(),
        String::from_utf8_lossy(&found[first_diff..found.len().min(first_diff + 32)])
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_for_dom0_qemu_has_the_cd_and_the_disk() {
        let mut c = HvmGuestConfig::new("g", DeviceModel::Dom0Qemu);
        c.hda = Some("/tmp/hda.img".into());
        c.cdrom = Some("/tmp/cd.iso".into());
        c.on_reboot = Action::Destroy;
        let text = c.xl_config();
        assert!(text.contains("type = \"hvm\"\n") && text.contains("vga = \"none\"\n"), "{text}");
        assert!(text.contains("serial = \"pty\"\n") && text.contains("boot = \"dc\"\n"), "{text}");
        assert!(text.contains("\"format=raw, vdev=hda, access=rw, target=/tmp/hda.img\""), "{text}");
        assert!(text.contains("\"format=raw, vdev=hdc, access=ro, devtype=cdrom, target=/tmp/cd.iso\""), "{text}");
        assert!(text.contains("on_reboot = \"destroy\"\n") && text.contains("on_poweroff = \"preserve\"\n"));
        assert!(text.contains("cpus = \"0\"\n"), "{text}");
        assert!(!text.contains("stubdomain"), "{text}");
        c.one_pcpu = false;
        assert!(!c.xl_config().contains("\ncpus = "));
    }

    #[test]
    fn config_for_a_stub_domain_names_kernel_ramdisk_and_memory() {
        let dm = DeviceModel::StubDomain {
            kernel: "/suite/rust-stubdom".into(),
            ramdisk: None,
            memory_mib: 16,
            cmdline: "x=1".into(),
        };
        let text = HvmGuestConfig::new("g", dm).xl_config();
        for line in [
            "device_model_stubdomain_override = 1\n",
            "stubdomain_kernel = \"/suite/rust-stubdom\"\n",
            "stubdomain_ramdisk = \"/tmp/stub-ramdisk.img\"\n",
            "stubdomain_memory = 16\n",
            "stubdomain_cmdline = \"x=1\"\n",
            "disk = [  ]\n",
        ] {
            assert!(text.contains(line), "{line:?} missing from\n{text}");
        }
    }

    #[test]
    fn shutdown_reason_comes_from_the_fifth_state_letter() {
        let row = |state: &str| xl::DomainRow { name: "g".into(), domid: 1, mem_mib: 1, state: state.into() };
        assert_eq!(shutdown_reason(&row("---s--")), Some(ShutdownReason::Poweroff));
        assert_eq!(shutdown_reason(&row("---sr-")), Some(ShutdownReason::Reboot));
        assert_eq!(shutdown_reason(&row("---sc-")), Some(ShutdownReason::Crash));
        assert_eq!(shutdown_reason(&row("-b----")), None);
    }

    #[test]
    fn nonce_replaces_the_only_copy_in_place() {
        let placeholder = b"PLACEHOLDER-0123".to_vec();
        let nonce = b"fresh-bytes-4567".to_vec();
        let mut image = [vec![7u8; 4096], placeholder.clone(), vec![9u8; 100]].concat();
        let before_len = image.len();
        assert_eq!(place_nonce(&mut image, &placeholder, &nonce), Ok(4096));
        assert_eq!(image.len(), before_len);
        assert_eq!(&image[4096..4112], nonce.as_slice());
        assert!(image[..4096].iter().all(|&b| b == 7) && image[4112..].iter().all(|&b| b == 9));
        // Done once, the placeholder is gone.
        assert_eq!(place_nonce(&mut image, &placeholder, &nonce), Err(NonceError::NotFound));
    }

    #[test]
    fn nonce_refuses_two_copies_and_a_wrong_length() {
        let p = b"PLACEHOLDER".to_vec();
        let mut twice = [p.clone(), b"..".to_vec(), p.clone()].concat();
        let original = twice.clone();
        assert_eq!(place_nonce(&mut twice, &p, b"NONCE-BYTES"), Err(NonceError::Ambiguous { copies: 2 }));
        assert_eq!(twice, original);
        assert_eq!(
            place_nonce(&mut twice, &p, b"short"),
            Err(NonceError::LengthMismatch { placeholder_len: 11, nonce_len: 5 })
        );
    }

    #[test]
    fn framed_command_hides_its_markers_from_an_echo() {
        let line = framed_command(7, "sha256sum /cdrom/nonce.bin;").unwrap();
        assert_eq!(line, "65:echo \"@@\"\"beg 7\"; sha256sum /cdrom/nonce.bin; echo \"@@\"\"end 7 $?\"\n");
        assert_eq!(line.len(), "65:".len() + 65 + 1);
        assert!(!line.contains("@@beg 7") && !line.contains("@@end 7"));
        let background = framed_command(8, "(nc -l -p 5001 | sha256sum > /tmp/rx.sum) >/dev/null 2>&1 &").unwrap();
        assert_eq!(
            background,
            "97:echo \"@@\"\"beg 8\"; (nc -l -p 5001 | sha256sum > /tmp/rx.sum) >/dev/null 2>&1 & echo \"@@\"\"end 8 $?\"\n"
        );
        assert!(framed_command(9, "true && true").unwrap().contains("true && true; echo"));
        assert!(framed_command(1, "a\nb").is_err());
        assert!(framed_command(1, " ; ").is_err());
    }

    /// A guest whose serial loses one byte of the first line it gets: its /init says
    /// "@@garbled"; the second copy arrives whole and runs.
    struct LossyGuest {
        tx: mpsc::Sender<Vec<u8>>,
        lines: usize,
    }

    impl Write for LossyGuest {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let line = String::from_utf8_lossy(buf).trim_end().to_string();
            self.lines += 1;
            let (length, body) = line.split_once(':').unwrap();
            assert_eq!(body.len(), length.parse::<usize>().unwrap(), "{line}");
            let reply = if self.lines == 1 {
                format!("@@garbled {} bytes\r\n", line.len() - 1)
            } else {
                let id: String = body["echo \"@@\"\"beg ".len()..].chars().take_while(char::is_ascii_digit).collect();
                format!("@@beg {id}\r\nran\r\n@@end {id} 0\r\n")
            };
            self.tx.send(reply.into_bytes()).unwrap();
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_command_that_arrives_garbled_is_sent_again() {
        let (tx, rx) = mpsc::channel();
        let mut shell = GuestShell::new(Box::new(LossyGuest { tx, lines: 0 }), rx, Instant::now());
        let out = shell.run("true", Duration::from_secs(5)).unwrap();
        assert_eq!((out.text.as_str(), out.status, shell.garbled_lines), ("ran\n", 0, 1));
    }

    #[test]
    fn parses_output_between_markers_with_crlf_and_noise() {
        let serial = b"[   5.1] ata2.00: ATAPI\r\n@@guest: ready 6.1\r\n\
                       echo \"@@\"\"beg 3\"; ls; echo \"@@\"\"end 3 $?\"\r\n\
                       @@beg 3\r\nbin\r\ndev\r\n@@end 3 0\r\n@@guest: ready 6.1\r\n";
        let out = parse_command_output(serial, 0, 3).unwrap();
        assert_eq!(out, CommandOutput { text: "bin\ndev\n".into(), status: 0, begin_seen: true });
        // Another command's markers are not this one's.
        assert_eq!(parse_command_output(serial, 0, 31), None);
        assert_eq!(parse_command_output(b"@@beg 31\nx\n@@end 31 2\n", 0, 3), None);
        assert_eq!(parse_command_output(b"@@beg 31\nx\n@@end 31 2\n", 0, 31).unwrap().status, 2);
    }

    #[test]
    fn waits_for_a_complete_end_line() {
        // The status may be cut anywhere: "@@end 4 1" could still become "@@end 4 127".
        assert_eq!(parse_command_output(b"@@beg 4\nno\n@@end 4 1", 0, 4), None);
        assert_eq!(parse_command_output(b"@@beg 4\nno\n@@end 4 ", 0, 4), None);
        let out = parse_command_output(b"@@beg 4\nno\n@@end 4 127\n", 0, 4).unwrap();
        assert_eq!((out.text.as_str(), out.status), ("no\n", 127));
    }

    #[test]
    fn lost_begin_marker_gives_everything_since_the_command_was_sent() {
        let serial = b"old output\r\nbeg 5\r\nhalf a line\r\n@@end 5 0\r\n";
        let sent_at = b"old output\r\n".len();
        let out = parse_command_output(serial, sent_at, 5).unwrap();
        assert_eq!(out, CommandOutput { text: "beg 5\nhalf a line\n".into(), status: 0, begin_seen: false });
        // Output printed before the command was sent is never taken for its result.
        assert_eq!(parse_command_output(b"@@beg 6\n@@end 6 0\n", 19, 6), None);
    }

    #[test]
    fn transcript_times_lines_by_their_first_byte() {
        let mut t = Transcript::default();
        t.push(Duration::from_millis(1500), b"ISOLINUX 6.04 ");
        t.push(Duration::from_millis(2500), b"EDD\r\nLoad");
        t.push(Duration::from_millis(3000), b"ing /vmlinuz\r\n");
        assert_eq!(t.first_byte_at(), Some(Duration::from_millis(1500)));
        assert_eq!(t.time_of("ISOLINUX"), Some(Duration::from_millis(1500)));
        // Complete only when its last byte came.
        assert_eq!(t.time_of("Loading /vmlinuz"), Some(Duration::from_millis(3000)));
        assert_eq!(t.time_of("absent"), None);
        assert_eq!(t.render(), "[    1.50] ISOLINUX 6.04 EDD\n[    2.50] Loading /vmlinuz\n");
    }

    /// A fake guest behind a channel: answers each framed command line with its
    /// markers, one byte per chunk, after some unrelated output.
    fn fake_guest(rx_lines: mpsc::Receiver<String>, tx_serial: mpsc::Sender<Vec<u8>>) {
        let say = |text: &[u8]| {
            for b in text {
                let _ = tx_serial.send(vec![*b]);
            }
        };
        say(b"uest: init 6.1.0-57-amd64\r\n@@guest: ready 6.1.0-57-amd64\r\n");
        for line in rx_lines {
            let id: u64 = line.split("beg ").nth(1).and_then(|r| r.split('"').next()).unwrap().parse().unwrap();
            let answer = format!("@@beg {id}\r\nsome output\r\n[  9.9] kernel says hi\r\n@@end {id} 3\r\n");
            say(answer.as_bytes());
        }
    }

    struct LineSender(mpsc::Sender<String>);

    impl Write for LineSender {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let _ = self.0.send(String::from_utf8_lossy(buf).into_owned());
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn shell_runs_commands_over_a_byte_by_byte_line_after_a_lost_init() {
        let (tx_lines, rx_lines) = mpsc::channel();
        let (tx_serial, rx_serial) = mpsc::channel();
        std::thread::spawn(move || fake_guest(rx_lines, tx_serial));
        let mut shell = GuestShell::new(Box::new(LineSender(tx_lines)), rx_serial, Instant::now());
        // The init line lost its start: the idle line stands in for it.
        let up = shell.wait_init(Duration::from_secs(10)).unwrap();
        assert_eq!(up.kernel_release, "6.1.0-57-amd64");
        assert!(!up.init_line_seen);
        for _ in 0..2 {
            let out = shell.run("true", Duration::from_secs(10)).unwrap();
            assert_eq!(out.text, "some output\n[  9.9] kernel says hi\n");
            assert_eq!(out.status, 3);
        }
        let err = shell.run_ok("false", Duration::from_secs(10)).unwrap_err();
        assert!(err.contains("exited with 3"), "{err}");
        assert!(shell.transcript().render().contains("] @@end 3 3\n"));
    }

    #[test]
    fn shell_gives_up_after_its_limit_with_the_transcript() {
        let (tx_serial, rx_serial) = mpsc::channel();
        tx_serial.send(b"ISOLINUX 6.04\r\n".to_vec()).unwrap();
        let mut shell = GuestShell::new(Box::new(std::io::sink()), rx_serial, Instant::now());
        let err = shell.wait_init(Duration::from_millis(200)).unwrap_err();
        assert!(err.contains("ISOLINUX 6.04"), "{err}");
        drop(tx_serial);
        let err = shell.wait_for("never", Duration::from_secs(10)).unwrap_err();
        assert!(err.contains("the pty closed"), "{err}");
    }

    #[test]
    fn disk_pattern_matches_yes_and_head() {
        let p = disk_pattern("rust-stubdom hda 1f", 45);
        assert_eq!(p, b"rust-stubdom hda 1f\nrust-stubdom hda 1f\nrust-".to_vec());
        let cmd = write_pattern_command("/dev/sda", "rust-stubdom hda 1f", 2048, 65536).unwrap();
        assert_eq!(
            cmd,
            "yes 'rust-stubdom hda 1f' | head -c 65536 | dd of=/dev/sda bs=512 seek=2048 iflag=fullblock \
             conv=fsync status=none && sync"
        );
        assert!(write_pattern_command("/dev/sda", "it's", 0, 1).is_err());
    }

    #[test]
    fn file_holds_finds_and_reports_differences() {
        let path = std::env::temp_dir().join(format!("hvm-guest-file-holds-{}", std::process::id()));
        std::fs::write(&path, b"0123456789abcdef").unwrap();
        let p = path.to_str().unwrap();
        assert_eq!(file_holds(p, 10, b"abc"), Ok(()));
        let err = file_holds(p, 10, b"abX").unwrap_err();
        assert!(err.contains("+ 2"), "{err}");
        assert!(file_holds(p, 14, b"efgh").is_err());
        assert!(file_holds(p, 100, b"x").is_err());
        std::fs::remove_file(&path).unwrap();
    }
}
