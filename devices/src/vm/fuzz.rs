//! A ready-made [`Vm`] and the QMP fuzz driver.
//!
//! [`fuzz_qmp_session`] is the single entry point shared by the cargo-fuzz target
//! (devices/fuzz, `qmp_session`) and the host robustness test (tests/qmp_robustness.rs):
//! it feeds arbitrary bytes, cut at arbitrary points and interleaved with the PV-disk
//! and guest-tray hooks, through a fresh [`Session`] over a [`Vm`], carries out the save
//! writes the session hands out, and checks that the output is still a well-formed QMP
//! stream ([`qmp::check::check_output`]).

use alloc::string::String;

use qmp::check::{StreamSummary, check_output};
use qmp::{Session, Timestamp, VersionInfo};

use super::{Vm, VmConfig};
use crate::block::{DriveConfig, DriveKind, MediumSource, PvDiskInfo};

/// devid of the guest's `hdc`, libxl's usual CD-ROM.
pub const HDC: u32 = 5632;
/// devid of the guest's `hda`.
pub const HDA: u32 = 768;

/// The VM a stub domain for an HVM guest with `hda` (disk) and `hdc` (CD-ROM with a
/// medium) starts with: both PV disks connected (hdc's in fdset 0, hda's in fdset 2;
/// fdset 1 is the save console) and the drives libxl's command line asks for.
pub fn test_vm() -> Vm {
    let mut vm = Vm::new(VmConfig::default());
    vm.pv_disk_connected(HDC, PvDiskInfo { read_only: true, size_bytes: 650 << 20 });
    vm.pv_disk_connected(HDA, PvDiskInfo { read_only: false, size_bytes: 8 << 30 });
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
    let _ = vm.add_drive(cd);
    let _ = vm.add_drive(disk);
    vm
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

/// The fuzz driver: byte 0 picks options (negotiate first; how to cut the input), the
/// rest is the client's input. Between pieces, a piece's first byte may trigger a hook
/// (PV disk hdc disconnecting or connecting, the guest locking or moving the tray).
/// Returns the output check's verdict; it never panics on any input.
pub fn fuzz_qmp_session(data: &[u8]) -> Result<StreamSummary, String> {
    let Some((&options, input)) = data.split_first() else {
        return Ok(StreamSummary::default());
    };
    let mut vm = test_vm();
    let mut session = Session::open(&mut vm, &VersionInfo::default());
    let now = Timestamp::new(1_700_000_000, 0);
    if options & 1 != 0 {
        session.feed(&mut vm, br#"{"execute":"qmp_capabilities"}"#, now);
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
                    vm.pv_disk_disconnected(HDC);
                }
                1 => {
                    vm.pv_disk_connected(HDC, PvDiskInfo { read_only: true, size_bytes: 0 });
                }
                2 => {
                    let _ = vm.guest_lock_tray(HDC, piece.len() % 2 == 0);
                }
                3 => {
                    let _ = vm.guest_move_tray(HDC, piece.len() % 2 == 0, now);
                }
                _ => {}
            }
            session.deliver_events(&mut vm);
        }
        session.feed(&mut vm, piece, now);
        // The service writes the state file to its console; here every write succeeds.
        while session.take_effect().is_some() {
            session.complete(&mut vm, Ok(()), now);
        }
        // The service hands eject requests to the IDE model after each command.
        vm.take_eject_requests();
    }
    check_output(session.output())
}
