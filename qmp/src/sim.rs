//! A recording device model, a ready-made engine, and the fuzz driver.
//!
//! [`fuzz_one`] is the single entry point shared by the cargo-fuzz target (fuzz/) and
//! the host robustness test: it feeds arbitrary bytes, cut at arbitrary points and
//! interleaved with the PV-disk and guest-tray hooks, through a fresh session, and
//! checks that the output is still a well-formed QMP stream.

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use crate::block::{DriveChange, DriveConfig, DriveKind, MediumSource, PvDiskInfo};
use crate::commands::{DeviceModel, DeviceModelError, Engine, EngineConfig, SlowEffect};
use crate::protocol::{Session, Timestamp};

/// What the engine asked of the device model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Call {
    Pause,
    Resume,
    DirtyLog(bool),
    SaveState { live: bool },
    LoadState(Vec<u8>),
    WriteConsole { console: u32, data: Vec<u8> },
    ReadConsole(u32),
    Quit,
    DriveChanged { devid: u32, change: DriveChange },
}

/// A device model that records every call. Its "state" is a byte string: `save_state`
/// returns it, `load_state` replaces it; consoles are byte buffers.
#[derive(Clone, Debug, Default)]
pub struct SimDeviceModel {
    pub calls: Vec<Call>,
    pub state: Vec<u8>,
    pub consoles: BTreeMap<u32, Vec<u8>>,
    pub fail_save: bool,
    pub fail_load: bool,
    /// console writes fail with this reason
    pub fail_console_write: Option<String>,
}

impl SimDeviceModel {
    pub fn new() -> SimDeviceModel {
        SimDeviceModel { state: b"sim-device-state".to_vec(), ..SimDeviceModel::default() }
    }
}

impl DeviceModel for SimDeviceModel {
    fn pause(&mut self) {
        self.calls.push(Call::Pause);
    }

    fn resume(&mut self) {
        self.calls.push(Call::Resume);
    }

    fn set_global_dirty_log(&mut self, enable: bool) {
        self.calls.push(Call::DirtyLog(enable));
    }

    fn save_state(&mut self, live: bool) -> Result<Vec<u8>, DeviceModelError> {
        self.calls.push(Call::SaveState { live });
        if self.fail_save {
            return Err(DeviceModelError(String::from("save refused by the test")));
        }
        Ok(self.state.clone())
    }

    fn load_state(&mut self, state: &[u8]) -> Result<(), DeviceModelError> {
        self.calls.push(Call::LoadState(state.to_vec()));
        if self.fail_load {
            return Err(DeviceModelError(String::from("load refused by the test")));
        }
        self.state = state.to_vec();
        Ok(())
    }

    fn read_console(&mut self, console: u32) -> Result<Vec<u8>, DeviceModelError> {
        self.calls.push(Call::ReadConsole(console));
        Ok(self.consoles.get(&console).cloned().unwrap_or_default())
    }

    fn quit(&mut self) {
        self.calls.push(Call::Quit);
    }

    fn drive_changed(&mut self, devid: u32, change: DriveChange) {
        self.calls.push(Call::DriveChanged { devid, change });
    }
}

impl SimDeviceModel {
    /// Carries out a command's slow work as the image does (here: into `consoles`).
    pub fn carry_out(&mut self, effect: SlowEffect) -> Result<(), String> {
        match effect {
            SlowEffect::WriteStateFile { console, data } => {
                self.calls.push(Call::WriteConsole { console, data: data.clone() });
                if let Some(reason) = &self.fail_console_write {
                    return Err(reason.clone());
                }
                self.consoles.entry(console).or_default().extend_from_slice(&data);
                Ok(())
            }
        }
    }
}

/// Carries out the slow work `session` waits for, if any, and completes it (what the
/// image's QMP task does between reading and writing).
pub fn run_effects(session: &mut Session, engine: &mut Engine<SimDeviceModel>, now: Timestamp) {
    while let Some(effect) = session.take_effect() {
        let result = engine.device_model_mut().carry_out(effect);
        session.complete(engine, result, now);
    }
}

/// devid of the guest's `hdc`, libxl's usual CD-ROM.
pub const HDC: u32 = 5632;
/// devid of the guest's `hda`.
pub const HDA: u32 = 768;

/// The engine a stub domain for an HVM guest with `hda` (disk) and `hdc` (CD-ROM with
/// a medium) starts with: both PV disks connected (hdc's in fdset 0, hda's in fdset 2;
/// fdset 1 is the save console) and the drives libxl's command line asks for.
pub fn test_engine() -> Engine<SimDeviceModel> {
    let mut engine = Engine::new(SimDeviceModel::new(), EngineConfig::default());
    engine.pv_disk_connected(HDC, PvDiskInfo { read_only: true, size_bytes: 650 << 20 });
    engine.pv_disk_connected(HDA, PvDiskInfo { read_only: false, size_bytes: 8 << 30 });
    let cd = DriveConfig {
        devid: HDC,
        kind: DriveKind::CdRom,
        read_only: true,
        medium: Some(MediumSource { filename: "/dev/xvdc".into(), format: Some("host_device".into()) }),
    };
    let disk = DriveConfig {
        devid: HDA,
        kind: DriveKind::HardDisk,
        read_only: false,
        medium: Some(MediumSource { filename: "/dev/xvda".into(), format: Some("host_device".into()) }),
    };
    // Both PV disks are connected, so neither can fail.
    let _ = engine.add_drive(cd);
    let _ = engine.add_drive(disk);
    engine
}

/// A small deterministic generator (xorshift64*), for cutting input and for tests.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number below `bound` (0 if `bound` is 0).
    pub fn below(&mut self, bound: usize) -> usize {
        if bound == 0 { 0 } else { (self.next_u64() % bound as u64) as usize }
    }
}

/// What a well-formed QMP output stream held after its greeting.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StreamSummary {
    pub returns: usize,
    pub errors: usize,
    pub events: usize,
}

/// Checks that `output` is a QMP stream: `\r\n`-terminated JSON objects, the greeting
/// first, then replies (`return` or `error` with a known class and a description) and
/// events (`event` with a timestamp), and counts them.
pub fn check_output(output: &[u8]) -> Result<StreamSummary, String> {
    let mut summary = StreamSummary::default();
    let mut rest = output;
    let mut first = true;
    while !rest.is_empty() {
        let end = rest
            .windows(2)
            .position(|pair| pair == b"\r\n")
            .ok_or_else(|| String::from("output does not end with \\r\\n"))?;
        let line = &rest[..end];
        rest = &rest[end + 2..];
        let value: serde_json::Value =
            serde_json::from_slice(line).map_err(|error| format!("output line is not JSON: {error}"))?;
        let object = value.as_object().ok_or_else(|| String::from("output line is not an object"))?;
        if first {
            if !object.contains_key("QMP") {
                return Err(String::from("the first line is not the greeting"));
            }
            first = false;
            continue;
        }
        if let Some(error) = object.get("error") {
            let class = error.get("class").and_then(|class| class.as_str());
            if !matches!(class, Some("GenericError" | "CommandNotFound" | "DeviceNotFound")) {
                return Err(format!("unexpected error class in {value}"));
            }
            if error.get("desc").and_then(|desc| desc.as_str()).is_none() {
                return Err(format!("error without desc: {value}"));
            }
            summary.errors += 1;
        } else if object.contains_key("return") {
            summary.returns += 1;
        } else if object.contains_key("event") {
            if object.get("timestamp").and_then(|stamp| stamp.get("seconds")).is_none() {
                return Err(format!("event without timestamp: {value}"));
            }
            summary.events += 1;
        } else {
            return Err(format!("unexpected output line: {value}"));
        }
    }
    if first {
        return Err(String::from("no greeting"));
    }
    Ok(summary)
}

/// The fuzz driver: byte 0 picks options (negotiate first; how to cut the input), the
/// rest is the client's input. Between pieces, a piece's first byte may trigger a hook
/// (PV disk hdc disconnecting or connecting, the guest locking or moving the tray).
/// Returns the output check's verdict; it never panics on any input.
pub fn fuzz_one(data: &[u8]) -> Result<StreamSummary, String> {
    let Some((&options, input)) = data.split_first() else {
        return Ok(StreamSummary::default());
    };
    let mut engine = test_engine();
    let mut session = engine.open_session();
    let now = Timestamp::new(1_700_000_000, 0);
    if options & 1 != 0 {
        session.feed(&mut engine, br#"{"execute":"qmp_capabilities"}"#, now);
    }
    let mut rng = Rng::new(u64::from(options) << 32 | input.len() as u64);
    let mut rest = input;
    while !rest.is_empty() {
        let cut = 1 + rng.below(if options & 2 != 0 { 4 } else { 256 }).min(rest.len() - 1);
        let (piece, tail) = rest.split_at(cut.min(rest.len()));
        rest = tail;
        if options & 4 != 0 {
            match piece[0] % 16 {
                0 => {
                    engine.pv_disk_disconnected(HDC);
                }
                1 => {
                    engine.pv_disk_connected(HDC, PvDiskInfo { read_only: true, size_bytes: 0 });
                }
                2 => {
                    let _ = engine.guest_lock_tray(HDC, piece.len() % 2 == 0);
                }
                3 => {
                    let _ = engine.guest_move_tray(HDC, piece.len() % 2 == 0, now);
                }
                _ => {}
            }
            session.deliver_events(&mut engine);
        }
        session.feed(&mut engine, piece, now);
        run_effects(&mut session, &mut engine, now);
    }
    check_output(session.output())
}
