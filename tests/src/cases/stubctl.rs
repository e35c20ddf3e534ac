//! stubctl, the dom0 helper (stubctl/), on the 4.17 bed where libxl refuses `xl
//! cd-insert` for stub-domain guests: `stubctl cd-insert` / `cd-eject` / `status`
//! against the Linux test guest served by our stub domain, as a user runs them (the
//! binary at /usr/sbin/stubctl in dom0); and `stubctl checkpoint` with an agent in
//! dom0 answering ckpt/1 through xenstore, the checkpoints restored by stock `xl
//! restore`.

use crate::cases::hvm::{
    SMALL_GUEST_MEMORY_MIB, STUBDOM_MEMORY_MIB, our_stub_domain, reattach_serial, wait_boot, with_device_model_log,
};
use crate::cases::linux::patterned_disk;
use crate::cases::xen420::medium_view;
use crate::harness::{Ctx, Test, expect_contains};
use crate::hvm_guest::{GuestShell, HvmGuest, HvmGuestConfig, NonceCd, nonce_cd, sha256_hex};
use crate::{proc, xl, xs};
use serde_json::{Value, json};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub fn tests() -> Vec<Test> {
    vec![
        Test { name: "xen::stubctl::cd_insert_and_eject", limit: Duration::from_secs(900), run: cd_insert_and_eject },
        Test {
            name: "xen::stubctl::forty_ejects_and_inserts",
            limit: Duration::from_secs(1800),
            run: forty_ejects_and_inserts,
        },
        Test {
            name: "xen::stubctl::checkpoint_ack_abort_timeout_then_twenty",
            limit: Duration::from_secs(2700),
            run: checkpoint_ack_abort_timeout_then_twenty,
        },
    ]
}

/// Where the bed's dom0 has stubctl.
const STUBCTL: &str = "/usr/sbin/stubctl";
/// The guest's CD-ROM: vdev, libxl's devid and QMP's drive.
const CD_VDEV: &str = "hdc";
const CD_DEVID: u32 = 5632;
const CD_DRIVE: &str = "ide-5632";
/// How long a guest command may take.
const SHORT: Duration = Duration::from_secs(120);

/// One stubctl run: exit status, output, wall time.
#[derive(Debug)]
struct Run {
    success: bool,
    stdout: String,
    stderr: String,
    secs: f64,
}

fn stubctl(args: &[&str]) -> Result<Run, String> {
    let started = Instant::now();
    let out = proc::run(Command::new(STUBCTL).args(args), Duration::from_secs(180))?;
    Ok(Run { success: out.success, stdout: out.stdout, stderr: out.stderr, secs: started.elapsed().as_secs_f64() })
}

fn stubctl_ok(args: &[&str]) -> Result<Run, String> {
    let run = stubctl(args)?;
    if !run.success {
        return Err(format!("stubctl {} failed:\n{}{}", args.join(" "), run.stdout, run.stderr));
    }
    // A step stubctl had to try twice worked, but the first try's story is worth keeping.
    if run.stderr.contains("once more") {
        println!("@@note xen::stubctl| stubctl {} retried a step:", args.join(" "));
        for line in run.stderr.lines() {
            println!("@@note xen::stubctl| {line}");
        }
    }
    Ok(run)
}

/// The guest opens the drive (as udev would, so Linux checks the media), mounts its
/// CD, prints the sha256 of /nonce.bin, unmounts it.
const READ_SR0: &str =
    ": < /dev/sr0 2>/dev/null; mount -t iso9660 -r /dev/sr0 /cdrom && { sha256sum /cdrom/nonce.bin; umount /cdrom; }";

/// Checks that the guest reads `cd`; a first read that fails is tried once more (a
/// guest without disk-event polling may meet the change's UNIT ATTENTION once) and
/// that is said in the returned note.
fn expect_guest_reads(shell: &mut GuestShell, cd: &NonceCd) -> Result<String, String> {
    let mut read = || -> Result<(), String> {
        let text = shell.run_ok(READ_SR0, SHORT)?;
        let sum = text.lines().find_map(|l| l.trim().strip_suffix("  /cdrom/nonce.bin"));
        if sum != Some(cd.sha256_hex.as_str()) {
            return Err(format!("the guest read nonce digest {sum:?}; {} has {}", cd.path, cd.sha256_hex));
        }
        Ok(())
    };
    match read() {
        Ok(()) => Ok("first read".to_string()),
        Err(first) => read().map(|()| format!("second read (first: {})", first.lines().next().unwrap_or_default())),
    }
}

/// Checks that the guest finds no medium: one `dd` (what xen420's check runs; the
/// open closes the open tray, as Linux's cdrom driver auto-closes it).
fn expect_guest_finds_no_medium(shell: &mut GuestShell) -> Result<(), String> {
    let out = shell
        .run("dd if=/dev/sr0 of=/dev/null bs=2048 count=1", SHORT)
        .map_err(|e| format!("{e}\nthe guest's serial before:\n{}", shell.transcript().tail(30)))?;
    if out.status == 0 {
        return Err(format!("the guest still reads a medium: {}", out.text));
    }
    expect_contains(&out.text, "No medium found", "the guest's dd of /dev/sr0")
}

/// Everything dom0 sees of the CD-ROM.
#[derive(Debug)]
struct View {
    /// QMP's medium of ide-5632 (None: no medium).
    qmp_file: Option<String>,
    tray_open: bool,
    /// The fdset of `stub-devid:5632`.
    fdset: Option<i64>,
    /// The stub domain's PV disk 5632: `xl block-list` state and its backend's params.
    stub_state: Option<String>,
    stub_params: Option<String>,
    /// The guest's own vbd's params (libxl's copy) and xl's stored config.
    guest_params: Option<String>,
    xl_target: Option<String>,
}

fn view(name: &str, domid: u32, stub: u32) -> Result<View, String> {
    let m = medium_view(name, domid, stub)?;
    Ok(View {
        qmp_file: m.drive["inserted"]["file"].as_str().map(str::to_string),
        tray_open: m.drive["tray_open"] == json!(true),
        fdset: m.fdset,
        stub_state: m.stub_vbd.map(|r| r.state),
        stub_params: m.backend_params,
        guest_params: xs::read(&format!("/libxl/{domid}/device/vbd/{CD_DEVID}/params")),
        xl_target: m.xl_target,
    })
}

impl View {
    /// Every view names `iso` as the medium, through the stub domain's PV disk.
    fn expect_medium(&self, iso: &str) -> Result<(), String> {
        let bad = |what: &str| Err(format!("{what}: {self:?}"));
        let Some(fdset) = self.fdset else { return bad("no fdset stub-devid:5632") };
        if self.qmp_file.as_deref() != Some(&format!("/dev/fdset/{fdset}")) || self.tray_open {
            return bad(&format!("QMP's medium is not /dev/fdset/{fdset} behind a closed tray"));
        }
        if self.stub_state.as_deref() != Some("4") || self.stub_params.as_deref() != Some(iso) {
            return bad(&format!("the stub domain's PV disk is not a connected vbd on {iso}"));
        }
        if !self.guest_params.as_deref().is_some_and(|p| p.ends_with(iso)) || self.xl_target.as_deref() != Some(iso) {
            return bad(&format!("the guest's vbd or stored config does not name {iso}"));
        }
        Ok(())
    }
}

/// The guest boots with CD A (libxl 4.17's default qdisk backend for the stub
/// domain's CD-ROM) and a disk; dom0 runs stubctl:
/// - bad input, each refused with its one-line reason and exit status 1, and nothing
///   changed (QMP's medium and the PV disk as before, the guest still reads A): a
///   guest that does not exist, a domain without stub domain (dom0), a vdev that is
///   the guest's disk, a name that is no vdev, an image that does not exist, a vdev the
///   guest does not have;
/// - `cd-insert` of CD B: QMP's medium, the stub domain's new PV disk (a blkback vbd),
///   the guest's vbd and xl's stored config all name B, and the guest reads B's nonce;
/// - `status` shows the drive in its fdset;
/// - `cd-eject`: no medium in QMP, none in the guest;
/// - `cd-insert` of A into the ejected drive: the guest reads A.
fn cd_insert_and_eject(ctx: &mut Ctx) -> Result<(), String> {
    let name = "stubctl-cd";
    let first = nonce_cd("/tmp/stubctl-cd-a.iso")?;
    let second = nonce_cd("/tmp/stubctl-cd-b.iso")?;
    patterned_disk("/tmp/stubctl-hda.img", 16)?;
    let mut config = HvmGuestConfig::new(name, our_stub_domain(STUBDOM_MEMORY_MIB));
    config.hda = Some("/tmp/stubctl-hda.img".to_string());
    config.cdrom = Some(first.path.clone());
    let mut guest = HvmGuest::create(ctx, &config, Duration::from_secs(120))?;
    let result = (|| {
        guest.wait_created(Duration::from_secs(120))?;
        guest.shell.wait_init(Duration::from_secs(600))?;
        guest.shell.run_ok("waitdev /dev/sr0 30", SHORT)?;
        let (domid, stub) = (guest.domid, guest.stub_domid.ok_or("no stub domain")?);
        expect_guest_reads(&mut guest.shell, &first)?;
        let before = view(name, domid, stub)?;

        // Bad input: refused before anything changes.
        let missing = "/tmp/stubctl-no-such.iso";
        let refusals: [(&[&str], String); 6] = [
            (&["cd-insert", "no-such-guest", CD_VDEV, &second.path], "no domain \"no-such-guest\"".to_string()),
            (&["cd-insert", "Domain-0", CD_VDEV, &second.path], "has no stub domain".to_string()),
            (&["cd-insert", name, "hda", &second.path], "hda of stubctl-cd is a disk, not a CD-ROM".to_string()),
            (&["cd-insert", name, "cdrom0", &second.path], "\"cdrom0\" is not a virtual device name".to_string()),
            (&["cd-insert", name, CD_VDEV, missing], format!("cannot use {missing} as a medium")),
            (&["cd-eject", name, "hdd"], "has no disk hdd".to_string()),
        ];
        let mut refused = Vec::new();
        for (args, needle) in &refusals {
            let run = stubctl(args)?;
            if run.success {
                return Err(format!("stubctl {} succeeded: {}", args.join(" "), run.stdout));
            }
            let line = run.stderr.trim();
            if line.lines().count() != 1 || !line.contains(needle.as_str()) {
                return Err(format!(
                    "stubctl {}: expected one line with {needle:?}, got {:?}",
                    args.join(" "),
                    run.stderr
                ));
            }
            refused.push(format!("{:.1} s", run.secs));
        }
        let after_refusals = view(name, domid, stub)?;
        if after_refusals.qmp_file != before.qmp_file
            || after_refusals.stub_params != before.stub_params
            || after_refusals.fdset != before.fdset
        {
            return Err(format!("bad input changed the CD-ROM: before {before:?}, after {after_refusals:?}"));
        }
        expect_guest_reads(&mut guest.shell, &first)?;

        // cd-insert of B.
        let insert = stubctl_ok(&["-v", "cd-insert", name, CD_VDEV, &second.path])?;
        let inserted = view(name, domid, stub)?;
        inserted.expect_medium(&second.path).map_err(|e| format!("after cd-insert: {e}\n{}", insert.stderr))?;
        let read_b = expect_guest_reads(&mut guest.shell, &second)?;

        let status = stubctl_ok(&["status", name])?;
        let fdset = inserted.fdset.unwrap_or_default();
        expect_contains(&status.stdout, &format!("{CD_DRIVE}: /dev/fdset/{fdset} (read-only)"), "stubctl status")?;
        expect_contains(&status.stdout, &format!("{fdset}: fd "), "stubctl status")?;
        expect_contains(&status.stdout, &format!("stub-devid:{CD_DEVID}"), "stubctl status")?;
        expect_contains(&status.stdout, "device model: running", "stubctl status")?;

        // cd-eject.
        let eject = stubctl_ok(&["-v", "cd-eject", name, CD_VDEV])?;
        let ejected = view(name, domid, stub)?;
        if ejected.qmp_file.is_some()
            || ejected.fdset.is_none()
            || !ejected.xl_target.as_deref().unwrap_or("").is_empty()
        {
            return Err(format!("after cd-eject: {ejected:?}\n{}", eject.stderr));
        }
        expect_guest_finds_no_medium(&mut guest.shell)?;

        // cd-insert into the ejected drive.
        let again = stubctl_ok(&["cd-insert", name, CD_VDEV, &first.path])?;
        view(name, domid, stub)?.expect_medium(&first.path).map_err(|e| format!("after the second cd-insert: {e}"))?;
        let read_a = expect_guest_reads(&mut guest.shell, &first)?;
        for (domain, id) in [(name.to_string(), domid), (format!("{name}-dm"), stub)] {
            let row = xl::find(&domain)?.ok_or_else(|| format!("{domain} is gone"))?;
            if row.domid != id || row.is_shutdown() || row.is_crashed() {
                return Err(format!("{domain} is {row:?}, was domain {id}"));
            }
        }
        println!(
            "@@metric xen::stubctl::cd_insert_and_eject| 6 bad inputs refused ({}), nothing changed; cd-insert {:.1} s \
             (guest read B: {read_b}), cd-eject {:.1} s, cd-insert into the empty drive {:.1} s (guest read A: \
             {read_a}); stub PV disk after insert: {:?} state {:?}",
            refused.join(", "),
            insert.secs,
            eject.secs,
            again.secs,
            inserted.stub_params,
            inserted.stub_state
        );
        Ok(())
    })()
    .map_err(|e| with_device_model_log(name, e));
    let _ = guest.destroy();
    result
}

/// Ejects and inserts in a row for [`forty_ejects_and_inserts`]: each change swaps the
/// stub domain's PV disk, and a stub domain that leaked xenstore watches per swap ran
/// into xenstored's quota of 128 at the 31st change.
const CHANGE_ROUNDS: usize = 40;

/// One guest, [`CHANGE_ROUNDS`] rounds of `stubctl cd-eject` and `cd-insert` (B and A
/// in turn): every change succeeds, and afterwards the guest reads the last medium.
fn forty_ejects_and_inserts(ctx: &mut Ctx) -> Result<(), String> {
    let name = "stubctl-forty";
    let cds = [nonce_cd("/tmp/stubctl-cd-a.iso")?, nonce_cd("/tmp/stubctl-cd-b.iso")?];
    let mut config = HvmGuestConfig::new(name, our_stub_domain(STUBDOM_MEMORY_MIB));
    config.cdrom = Some(cds[0].path.clone());
    let mut guest = HvmGuest::create(ctx, &config, Duration::from_secs(120))?;
    let result = (|| {
        guest.wait_created(Duration::from_secs(120))?;
        guest.shell.wait_init(Duration::from_secs(600))?;
        guest.shell.run_ok("waitdev /dev/sr0 30", SHORT)?;
        let mut secs = Vec::new();
        for round in 1..=CHANGE_ROUNDS {
            let cd = &cds[round % 2];
            for args in [vec!["-v", "cd-eject", name, CD_VDEV], vec!["-v", "cd-insert", name, CD_VDEV, &cd.path]] {
                let run = stubctl_ok(&args).map_err(|e| format!("round {round} of {CHANGE_ROUNDS}: {e}"))?;
                secs.push(format!("{:.1}", run.secs));
            }
        }
        let last = &cds[CHANGE_ROUNDS % 2];
        view(name, guest.domid, guest.stub_domid.ok_or("no stub domain")?)?.expect_medium(&last.path)?;
        let read = expect_guest_reads(&mut guest.shell, last)?;
        println!(
            "@@metric xen::stubctl::forty_ejects_and_inserts| {} changes (s each): {}; guest read the last: {read}",
            secs.len(),
            secs.join(" ")
        );
        Ok(())
    })()
    .map_err(|e| with_device_model_log(name, e));
    let _ = guest.destroy();
    result
}

/// Where the checkpoint tests put their files (dom0's /tmp, a tmpfs: few files kept).
const CKPT_DIR: &str = "/tmp/stubctl-ckpt";
/// The guest's disk in the checkpoint tests, and the sector of its records.
const CKPT_HDA: &str = "/tmp/stubctl-ckpt-hda.img";
const RECORD_SECTOR: u64 = 16384;

/// The guest's serial counter, one a second.
const TICKER: &str = "(i=0; while :; do i=$((i+1)); echo \"@@tick $i\"; sleep 1; done) &";

/// The guest's checksummed log: record i in sector RECORD_SECTOR + i, then `@@logged i`.
const LOG_WRITER: &str = "(i=0; while :; do i=$((i+1)); printf 'log %d %d\\n' $i $(( i * 2654435761 % 4294967291 )) | \
    dd of=/dev/sda bs=512 seek=$((16384+i)) count=1 conv=sync oflag=direct status=none; echo \"@@logged $i\"; \
    sleep 1; done) &";

/// Record `i` of [`LOG_WRITER`], as it is in the disk's sector.
fn log_record(i: u64) -> Vec<u8> {
    let mut sector = format!("log {i} {}\n", i * 2_654_435_761 % 4_294_967_291).into_bytes();
    sector.resize(512, 0);
    sector
}

/// The numbers after `tag` (e.g. "@@tick ") in `shell`'s transcript, in order (the
/// echoed command lines, which have `$i` there, are not numbers).
fn numbers_after(shell: &GuestShell, tag: &str) -> Vec<u64> {
    let text = String::from_utf8_lossy(shell.transcript().bytes()).into_owned();
    text.match_indices(tag)
        .filter_map(|(at, _)| {
            let digits: String = text[at + tag.len()..].chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
        .collect()
}

/// The guest's newest `tag` number once it is past `after` (the guest is running).
fn wait_past(shell: &mut GuestShell, tag: &str, after: u64, limit: Duration) -> Result<u64, String> {
    let deadline = Instant::now() + limit;
    loop {
        // A command round trip takes in what the serial has sent meanwhile.
        shell.run_ok("true", SHORT)?;
        let newest = numbers_after(shell, tag).into_iter().max().unwrap_or(0);
        if newest > after {
            return Ok(newest);
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "the guest's {tag}counter did not pass {after} within {} s:\n{}",
                limit.as_secs(),
                shell.transcript().tail(20)
            ));
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// An agent in dom0 answering ckpt/1 through xenstore (xenstore-read/-write), on a
/// thread, until stopped.
struct CkptAgent {
    stop: Arc<AtomicBool>,
    answers: Arc<AtomicU32>,
    thread: std::thread::JoinHandle<()>,
}

#[derive(Clone, Copy)]
enum AgentMode {
    /// Acknowledges every suspend request.
    Ack,
    /// Writes abort once cycle `seq` is pending (the copy starts then), no ack.
    AbortWhenPending { seq: u64 },
}

/// How often the dom0 agent looks at the guest's ckpt/1 keys.
const AGENT_POLL: Duration = Duration::from_millis(200);

impl CkptAgent {
    fn start(domid: u32, mode: AgentMode) -> CkptAgent {
        let (stop, answers) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU32::new(0)));
        let (stop_seen, counted) = (stop.clone(), answers.clone());
        let base = format!("/local/domain/{domid}/migration");
        let thread = std::thread::spawn(move || {
            while !stop_seen.load(Ordering::SeqCst) {
                let key = |k: &str| xs::read(&format!("{base}/{k}"));
                match mode {
                    AgentMode::Ack => {
                        if key("entering_fg").as_deref() == Some("1")
                            && key("entering_fg_acked").as_deref() != Some("1")
                            && xs::write(&format!("{base}/entering_fg_acked"), "1").is_ok()
                        {
                            counted.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    AgentMode::AbortWhenPending { seq } => {
                        if counted.load(Ordering::SeqCst) == 0
                            && key("status").as_deref() == Some("pending")
                            && key("seq") == Some(seq.to_string())
                            && xs::write(&format!("{base}/abort"), "1").is_ok()
                        {
                            counted.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                }
                // Each read is a xenstore-read process: polled every 20 ms they kept
                // dom0 busy (load 2.4) and slowed the checkpoints they answer.
                std::thread::sleep(AGENT_POLL);
            }
        });
        CkptAgent { stop, answers, thread }
    }

    /// Stops the agent; how many answers it wrote.
    fn stop(self) -> u32 {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.thread.join();
        self.answers.load(Ordering::SeqCst)
    }
}

/// The checkpoint files and temporary files in [`CKPT_DIR`].
fn ckpt_files() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(CKPT_DIR)
        .map(|dir| dir.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect())
        .unwrap_or_default();
    names.sort();
    names
}

/// The ckpt/1 key `key` of guest `domid`.
fn ckpt_key(domid: u32, key: &str) -> Option<String> {
    xs::read(&format!("/local/domain/{domid}/migration/{key}"))
}

/// Xen's verify-stream-v2 on `file` if dom0 can run it (a Python script), and
/// [`walk_stream`].
fn verify_stream(file: &str) -> Result<String, String> {
    let verifier = "/usr/lib/xen-4.17/bin/verify-stream-v2";
    if !std::path::Path::new("/usr/bin/python3").exists() || !std::path::Path::new(verifier).exists() {
        return walk_stream(file).map(|walked| format!("{walked} (dom0 has no python3 for verify-stream-v2)"));
    }
    let out = proc::run(
        Command::new(verifier).env("PYTHONPATH", "/usr/lib/xen-4.17/lib/python").args(["-f", "xl", "-i", file]),
        Duration::from_secs(300),
    )?;
    if !out.success {
        return Err(format!("verify-stream-v2 refused {file}:\n{}{}", out.stdout, out.stderr));
    }
    Ok(format!("verify-stream-v2 accepted it; {}", walk_stream(file)?))
}

/// Walks a checkpoint file as `xl restore` reads it (dom0 has no python3 for Xen's
/// verify-stream-v2): xl's header and config, the libxl stream's header, its records
/// with libxc's stream inline after LIBXC_CONTEXT (image and domain header, records up
/// to its END), the device model's state (qemu-xen, our stub domain's frame) and END,
/// nothing after it. Returns a summary.
fn walk_stream(path: &str) -> Result<String, String> {
    use std::io::{BufReader, Read, Seek, SeekFrom};
    let file = std::fs::File::open(path).map_err(|e| format!("{path}: {e}"))?;
    let file_len = file.metadata().map_err(|e| format!("{path}: {e}"))?.len();
    let mut r = BufReader::new(file);
    fn take(r: &mut impl Read, n: usize, path: &str) -> Result<Vec<u8>, String> {
        let mut buf = vec![0; n];
        r.read_exact(&mut buf).map_err(|e| format!("{path} ends early: {e}"))?;
        Ok(buf)
    }
    let le = |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    let xl = take(&mut r, 48, path)?;
    if &xl[..32] != b"Xen saved domain, xl format\n \0 \r" || le(&xl[32..]) != 0x0102_0304 || le(&xl[36..]) != 3 {
        return Err(format!("{path}: not an xl save file with JSON and stream v2: {:02x?}", &xl[32..48]));
    }
    let optional = le(&xl[44..]) as usize;
    let config = take(&mut r, optional, path)?;
    let config_len = le(&config) as usize;
    if config_len + 4 != optional || config.last() != Some(&0) {
        return Err(format!("{path}: config of {config_len} bytes in {optional} bytes of optional data"));
    }
    serde_json::from_slice::<Value>(&config[4..optional - 1]).map_err(|e| format!("{path}: config: {e}"))?;
    if take(&mut r, 16, path)? != b"LibxlFmt\0\0\0\x02\0\0\0\0" {
        return Err(format!("{path}: no libxl stream v2 header"));
    }
    let (mut libxc_records, mut pages_records, mut emulator) = (0u64, 0u64, None);
    loop {
        let header = take(&mut r, 8, path)?;
        let (kind, len) = (le(&header), le(&header[4..]) as usize);
        let body = take(&mut r, len.next_multiple_of(8), path)?;
        match kind {
            0 => break,
            1 if len == 0 => {
                let image = take(&mut r, 24, path)?;
                if image[..8] != [0xff; 8] || &image[8..12] != b"XENF" || image[12..16] != [0, 0, 0, 3] {
                    return Err(format!("{path}: no libxc stream v3 image header: {image:02x?}"));
                }
                let domain = take(&mut r, 16, path)?;
                if le(&domain) != 2 {
                    return Err(format!("{path}: libxc domain type {} is not x86 HVM", le(&domain)));
                }
                loop {
                    let header = take(&mut r, 8, path)?;
                    let (kind, len) = (le(&header), le(&header[4..]) as u64);
                    libxc_records += 1;
                    if kind == 1 {
                        pages_records += 1;
                    }
                    if kind == 0 {
                        break;
                    }
                    if kind == 0x0e {
                        return Err(format!("{path}: a CHECKPOINT record in a plain stream"));
                    }
                    let padded = len.next_multiple_of(8);
                    r.seek(SeekFrom::Current(padded as i64)).map_err(|e| format!("{path}: {e}"))?;
                }
            }
            3 if len >= 8 + 8 && le(&body) == 2 && le(&body[4..]) == 0 && &body[8..16] == b"RSTUBDM1" => {
                emulator = Some(len - 8);
            }
            other => return Err(format!("{path}: unexpected libxl record type {other}, length {len}")),
        }
    }
    let at = r.stream_position().map_err(|e| format!("{path}: {e}"))?;
    let emulator = emulator.ok_or_else(|| format!("{path}: no EMULATOR_CONTEXT with our device state"))?;
    if at != file_len {
        return Err(format!("{path}: {} bytes after the libxl END", file_len - at));
    }
    Ok(format!(
        "stream walked: {libxc_records} libxc records ({pages_records} PAGE_DATA), device state {emulator} bytes, \
         END at the end of the file"
    ))
}

/// Boots the Linux test guest `name` with a disk and a CD, through our stub domain.
fn boot_ckpt_guest(ctx: &mut Ctx, name: &str) -> Result<(HvmGuest, Vec<u8>), String> {
    let cd = nonce_cd(&format!("/tmp/{name}-cd.iso"))?;
    patterned_disk(CKPT_HDA, 16)?;
    let hda = std::fs::read(CKPT_HDA).map_err(|e| format!("{CKPT_HDA}: {e}"))?;
    let mut config = HvmGuestConfig::new(name, our_stub_domain(STUBDOM_MEMORY_MIB));
    config.memory_mib = SMALL_GUEST_MEMORY_MIB;
    config.hda = Some(CKPT_HDA.to_string());
    config.cdrom = Some(cd.path.clone());
    let mut guest = HvmGuest::create(ctx, &config, Duration::from_secs(120))?;
    guest.wait_created(Duration::from_secs(120)).map_err(|e| with_device_model_log(name, e))?;
    wait_boot(&mut guest.shell, Duration::from_secs(600)).map_err(|e| with_device_model_log(name, e))?;
    guest.shell.run_ok("waitdev /dev/sda 30", SHORT)?;
    let _ = std::fs::remove_dir_all(CKPT_DIR);
    Ok((guest, hda))
}

/// `xl destroy` of the guest, `xl restore` of `file`: the guest's new domid, stub
/// domain and shell.
fn destroy_and_restore(guest: &mut HvmGuest, file: &str) -> Result<f64, String> {
    guest.destroy()?;
    let started = Instant::now();
    let out = proc::run(Command::new("xl").args(["restore", file]), Duration::from_secs(300))?;
    if !out.success {
        return Err(format!("xl restore {file} failed:\n{}{}", out.stdout, out.stderr));
    }
    let restore_secs = started.elapsed().as_secs_f64();
    let (domid, stub, shell) = reattach_serial(&guest.name, started)?;
    guest.domid = domid;
    guest.stub_domid = Some(stub);
    guest.shell = shell;
    Ok(restore_secs)
}

/// [`checkpoint_ack_abort_timeout`] on a booted guest, then, on the guest restored from
/// that checkpoint, [`twenty_checkpoints`]: one guest boot for both (and the twenty are
/// taken of a restored domain).
fn checkpoint_ack_abort_timeout_then_twenty(ctx: &mut Ctx) -> Result<(), String> {
    let name = "stubctl-ckpt";
    let (mut guest, hda) = boot_ckpt_guest(ctx, name)?;
    let result = checkpoint_ack_abort_timeout(&mut guest, &hda)
        .and_then(|()| {
            let _ = std::fs::remove_dir_all(CKPT_DIR);
            twenty_checkpoints(&mut guest)
        })
        .map_err(|e| with_device_model_log(name, e));
    let _ = guest.destroy();
    let _ = std::fs::remove_dir_all(CKPT_DIR);
    result
}

/// ckpt/1 against an agent in dom0, on one booted guest (its serial counter ticking,
/// a record written to its disk first):
/// - the agent acknowledges -> exit 0, `<dir>/<name>.1.ckpt` committed, `status`
///   success and `file` naming it, the guest's counter advances;
/// - no acknowledgement within `--ack-timeout 5` -> exit 1 with the timeout, status
///   failure, no new file and no temporary file left, the guest running;
/// - the agent aborts as soon as the cycle is pending -> cancelled during the copy,
///   no file, the abort removed, the guest running;
/// - an abort already pending -> refused before anything ("abort pending");
/// - `xl destroy` and `xl restore` of the committed file: the counter continues from
///   the checkpoint (above its value when the checkpoint began, below its value when
///   the guest was destroyed, ten ticks later than the last cycle), the disk's record
///   and pattern read back intact.
fn checkpoint_ack_abort_timeout(guest: &mut HvmGuest, hda: &[u8]) -> Result<(), String> {
    let name = guest.name.clone();
    let name = name.as_str();
    let domid = guest.domid;
    let shell = &mut guest.shell;
    shell.send_line(TICKER)?;
    let mut tick = wait_past(shell, "@@tick ", 1, SHORT)?;
    let nonce = format!("ckpt-record-{}", std::process::id());
    shell.run_ok(
        &format!(
            "printf '{nonce}' | dd of=/dev/sda bs=512 seek={RECORD_SECTOR} count=1 conv=sync oflag=direct status=none"
        ),
        SHORT,
    )?;

    // Acknowledged.
    let at_start = wait_past(shell, "@@tick ", tick, SHORT)?;
    let agent = CkptAgent::start(domid, AgentMode::Ack);
    let acked = stubctl(&["-v", "checkpoint", name, "--dir", CKPT_DIR, "--count", "1", "--ack-timeout", "120"]);
    let acks = agent.stop();
    let acked = acked?;
    let file = format!("{CKPT_DIR}/{name}.1.ckpt");
    if !acked.success || acks != 1 || ckpt_files() != [format!("{name}.1.ckpt")] {
        return Err(format!(
            "acknowledged checkpoint: exit {}, {acks} acks, files {:?}:\n{}{}",
            acked.success,
            ckpt_files(),
            acked.stdout,
            acked.stderr
        ));
    }
    if ckpt_key(domid, "status").as_deref() != Some("success") || ckpt_key(domid, "file") != Some(file.clone()) {
        return Err(format!(
            "after the acknowledged checkpoint: status {:?}, file {:?}",
            ckpt_key(domid, "status"),
            ckpt_key(domid, "file")
        ));
    }
    let len_bytes = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
    tick = wait_past(shell, "@@tick ", at_start + 1, SHORT)?;
    let at_end = tick;

    // Not acknowledged: the timeout.
    let timed_out = stubctl(&["checkpoint", name, "--dir", CKPT_DIR, "--count", "1", "--ack-timeout", "5"])?;
    if timed_out.success || !timed_out.stderr.contains("no suspend acknowledgement within 5 s") {
        return Err(format!("unacknowledged checkpoint: {timed_out:?}"));
    }
    if ckpt_key(domid, "status").as_deref() != Some("failure") || ckpt_files() != [format!("{name}.1.ckpt")] {
        return Err(format!("after the timeout: status {:?}, files {:?}", ckpt_key(domid, "status"), ckpt_files()));
    }
    tick = wait_past(shell, "@@tick ", tick + 1, SHORT)?;

    // Aborted during the copy.
    let agent = CkptAgent::start(domid, AgentMode::AbortWhenPending { seq: 2 });
    let aborted = stubctl(&["-v", "checkpoint", name, "--dir", CKPT_DIR, "--count", "1", "--ack-timeout", "120"]);
    let aborts = agent.stop();
    let aborted = aborted?;
    if aborted.success || aborts != 1 || !aborted.stderr.contains("cancelled: abort during the copy") {
        return Err(format!("checkpoint aborted during the copy ({aborts} aborts written): {aborted:?}"));
    }
    if ckpt_key(domid, "status").as_deref() != Some("cancelled")
        || ckpt_key(domid, "abort").is_some()
        || ckpt_files() != [format!("{name}.1.ckpt")]
    {
        return Err(format!(
            "after the abort: status {:?}, abort {:?}, files {:?}",
            ckpt_key(domid, "status"),
            ckpt_key(domid, "abort"),
            ckpt_files()
        ));
    }
    tick = wait_past(shell, "@@tick ", tick + 1, SHORT)?;

    // An abort already pending.
    xs::write(&format!("/local/domain/{domid}/migration/abort"), "1")?;
    let refused = stubctl(&["checkpoint", name, "--dir", CKPT_DIR, "--count", "1"])?;
    if refused.success || !refused.stderr.contains("refused: an abort was pending") {
        return Err(format!("checkpoint with an abort pending: {refused:?}"));
    }
    if ckpt_key(domid, "status").as_deref() != Some("cancelled")
        || ckpt_key(domid, "error_info").as_deref() != Some("abort pending")
        || ckpt_key(domid, "abort").is_some()
    {
        return Err(format!(
            "after the refusal: status {:?}, error_info {:?}",
            ckpt_key(domid, "status"),
            ckpt_key(domid, "error_info")
        ));
    }
    // Ten more ticks: the restored counter (its first ticks may be lost before
    // dom0 opens the new pty) must still come out below this one.
    let now = wait_past(shell, "@@tick ", 0, SHORT)?;
    let before_destroy = wait_past(shell, "@@tick ", now.max(tick) + 10, SHORT)?;
    let verified = verify_stream(&file)?;

    // xl destroy + xl restore of the committed checkpoint.
    let restore_secs = destroy_and_restore(guest, &file)?;
    let shell = &mut guest.shell;
    let resumed = wait_past(shell, "@@tick ", 0, Duration::from_secs(180))?;
    let first = numbers_after(shell, "@@tick ").into_iter().min().unwrap_or(0);
    if first <= at_start || first >= before_destroy {
        return Err(format!(
            "after the restore the counter went on from {first}; the checkpoint was taken between ticks {at_start} \
             and {at_end}, the guest was at {before_destroy} when destroyed"
        ));
    }
    let record = shell.run_ok(
        &format!(
            "dd if=/dev/sda bs=512 skip={RECORD_SECTOR} count=1 iflag=direct status=none | head -c {}",
            nonce.len()
        ),
        SHORT,
    )?;
    expect_contains(&record, &nonce, "the disk record read after the restore")?;
    let pattern = shell.run_ok("dd if=/dev/sda bs=512 count=64 iflag=direct status=none | sha256sum", SHORT)?;
    let want = sha256_hex(&hda[..32 * 1024])?;
    expect_contains(&pattern, &want, "the disk's first 32 KiB read after the restore")?;
    println!(
        "@@metric xen::stubctl::checkpoint_ack_abort_timeout| acknowledged: {:.1} s, {len_bytes} bytes ({}); \
         timeout after {:.1} s; abort during the copy {:.1} s; pending abort refused in {:.1} s; {verified}; \
         xl restore {restore_secs:.1} s, the counter went on from {first} (checkpoint between {at_start} and \
         {at_end}, destroyed at {before_destroy}; now {resumed}), disk record and pattern intact",
        acked.secs,
        acked.stdout.trim(),
        timed_out.secs,
        aborted.secs,
        refused.secs
    );
    Ok(())
}

/// 20 checkpoints one second apart, acknowledged by the agent, the last one kept
/// (dom0's /tmp is a tmpfs of half its 1 GiB: a 128 MiB guest's file was ~147 MB, and
/// the next one is written beside it; the guest has [`SMALL_GUEST_MEMORY_MIB`]),
/// while the guest writes a checksummed log to its disk; then `xl destroy` and `xl
/// restore` of the last (a late) checkpoint: the log goes on from that point and every
/// record in dom0's disk file, from the first to the last written, is there and
/// checks out.
fn twenty_checkpoints(guest: &mut HvmGuest) -> Result<(), String> {
    let name = guest.name.clone();
    let name = name.as_str();
    let count = 20;
    let domid = guest.domid;
    guest.shell.send_line(LOG_WRITER)?;
    let first_logged = wait_past(&mut guest.shell, "@@logged ", 2, SHORT)?;
    let agent = CkptAgent::start(domid, AgentMode::Ack);
    let run = stubctl_long(&[
        "checkpoint",
        name,
        "--dir",
        CKPT_DIR,
        "--count",
        &count.to_string(),
        "--interval",
        "1",
        "--keep",
        "1",
        "--ack-timeout",
        "120",
    ]);
    let acks = agent.stop();
    let run = run?;
    let lines: Vec<&str> = run.stdout.lines().filter(|l| l.starts_with("checkpoint ")).collect();
    if !run.success || lines.len() != count || acks != count as u32 {
        return Err(format!("{count} checkpoints: exit {}, {acks} acks:\n{}{}", run.success, run.stdout, run.stderr));
    }
    if ckpt_files() != [format!("{name}.20.ckpt")] {
        return Err(format!("after {count} checkpoints with --keep 1 the directory holds {:?}", ckpt_files()));
    }
    let pauses: Vec<f64> =
        lines.iter().filter_map(|l| l.split("suspended ").nth(1)?.split(' ').next()?.parse().ok()).collect();
    let sizes: Vec<u64> = lines.iter().filter_map(|l| l.split('(').nth(1)?.split(' ').next()?.parse().ok()).collect();
    // Ten more records after the last checkpoint (see checkpoint_ack_abort_timeout;
    // the serial was not read while stubctl ran: the first wait takes it in).
    let now = wait_past(&mut guest.shell, "@@logged ", 0, SHORT)?;
    let before_destroy = wait_past(&mut guest.shell, "@@logged ", now + 10, SHORT)?;
    let file = format!("{CKPT_DIR}/{name}.20.ckpt");
    let verified = verify_stream(&file)?;
    let restore_secs = destroy_and_restore(guest, &file)?;
    let resumed_from = {
        let newest = wait_past(&mut guest.shell, "@@logged ", 0, Duration::from_secs(180))?;
        let first = numbers_after(&guest.shell, "@@logged ").into_iter().min().unwrap_or(0);
        wait_past(&mut guest.shell, "@@logged ", newest + 2, SHORT)?;
        first
    };
    if resumed_from <= first_logged || resumed_from >= before_destroy {
        return Err(format!(
            "after the restore the log went on from record {resumed_from}; it was at {first_logged} before the \
             checkpoints and at {before_destroy} when destroyed"
        ));
    }
    let last = numbers_after(&guest.shell, "@@logged ").into_iter().max().unwrap_or(0);
    guest.destroy()?;
    let disk = std::fs::read(CKPT_HDA).map_err(|e| format!("{CKPT_HDA}: {e}"))?;
    for i in 1..=last {
        let at = ((RECORD_SECTOR + i) * 512) as usize;
        if disk.get(at..at + 512) != Some(&log_record(i)[..]) {
            let found = disk.get(at..at + 32).map(|b| String::from_utf8_lossy(b).into_owned());
            return Err(format!("record {i} of {last} in {CKPT_HDA} is {found:?}"));
        }
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or_default()
    };
    println!(
        "@@metric xen::stubctl::twenty_checkpoints| {count} checkpoints in {:.0} s, guest suspended median {:.3} s \
         (max {:.3} s), files {} bytes (median); {verified}; restore of checkpoint 20 in {restore_secs:.1} s, the \
         log went on from record {resumed_from} (at {before_destroy} when destroyed); records 1..={last} intact",
        run.secs,
        median(pauses.clone()),
        pauses.iter().copied().fold(0.0, f64::max),
        median(sizes.iter().map(|&s| s as f64).collect()) as u64,
    );
    Ok(())
}

/// [`stubctl`] with room for many checkpoints.
fn stubctl_long(args: &[&str]) -> Result<Run, String> {
    let started = Instant::now();
    let out = proc::run(Command::new(STUBCTL).args(args), Duration::from_secs(2000))?;
    Ok(Run { success: out.success, stdout: out.stdout, stderr: out.stderr, secs: started.elapsed().as_secs_f64() })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file shaped as stubctl writes it: xl header, config, libxl header,
    /// LIBXC_CONTEXT, a libxc stream (headers, one PAGE_DATA, END), EMULATOR_CONTEXT, END.
    fn stream_file() -> Vec<u8> {
        let mut f = b"Xen saved domain, xl format\n \0 \r".to_vec();
        for word in [0x0102_0304u32, 3, 0, 4 + 3] {
            f.extend_from_slice(&word.to_le_bytes());
        }
        f.extend_from_slice(&3u32.to_le_bytes());
        f.extend_from_slice(b"{}\0");
        f.extend_from_slice(b"LibxlFmt\0\0\0\x02\0\0\0\0");
        f.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0]);
        f.extend_from_slice(&[0xff; 8]);
        f.extend_from_slice(b"XENF\0\0\0\x03");
        f.extend_from_slice(&[0; 8]);
        for word in [2u32, 12, 4, 17] {
            f.extend_from_slice(&word.to_le_bytes());
        }
        f.extend_from_slice(&[1, 0, 0, 0, 5, 0, 0, 0, 1, 2, 3, 4, 5, 0, 0, 0]);
        f.extend_from_slice(&[0; 8]);
        f.extend_from_slice(&[3, 0, 0, 0, 16, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0]);
        f.extend_from_slice(b"RSTUBDM1");
        f.extend_from_slice(&[0; 8]);
        f
    }

    #[test]
    fn the_stream_walker_accepts_stubctls_shape_only() {
        let path = std::env::temp_dir().join(format!("walk-stream-{}", std::process::id()));
        let path = path.to_str().unwrap();
        let walk = |bytes: &[u8]| {
            std::fs::write(path, bytes).unwrap();
            walk_stream(path)
        };
        let good = stream_file();
        let summary = walk(&good);
        assert_eq!(
            summary.as_deref(),
            Ok("stream walked: 2 libxc records (1 PAGE_DATA), device state 8 bytes, END at the end of the file")
        );
        assert!(walk(&good[..good.len() - 1]).unwrap_err().contains("ends early"));
        let mut trailing = good.clone();
        trailing.extend_from_slice(&[0; 8]);
        assert!(walk(&trailing).unwrap_err().contains("8 bytes after the libxl END"));
        let mut qemu = good.clone();
        let at = qemu.len() - 16;
        qemu[at..at + 4].copy_from_slice(b"QEVM");
        assert!(walk(&qemu).unwrap_err().contains("unexpected libxl record type 3"));
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn log_records_are_what_the_guest_writes() {
        // busybox: printf 'log %d %d\n' 3 $(( 3 * 2654435761 % 4294967291 ))
        assert!(log_record(3).starts_with(b"log 3 3668339992\n\0"));
        assert_eq!(log_record(3).len(), 512);
    }
}
