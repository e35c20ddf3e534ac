//! stubctl: the dom0 helper for HVM guests whose device model is our stub domain.
//!
//! It does what stock xl cannot do for such a guest on libxl 4.14-4.19: change or
//! eject the CD-ROM's medium (`cd-insert`, `cd-eject`: libxl 4.20's sequence of QMP
//! commands and PV disk swap, done here), take checkpoints that an outside agent
//! acknowledges or aborts (`checkpoint`: ckpt/1 in `ckpt`, its own `xc_domain_save`
//! loop through libxenguest in `checkpoint` and `sys`, files `xl restore` reads
//! written by `stream`), and show the device model's view (`status`). The library
//! holds everything the binary (main.rs) runs, so that the parsers of outside input
//! (QMP lines, xenstore values, vdev names, libxl's stored config, the device model's
//! saved state) are unit-tested and fuzzed on their own.
//!
//! `sys` is the only module with `unsafe` code (the libxenctrl/libxenguest calls).

pub mod cdrom;
pub mod checkpoint;
pub mod ckpt;
pub mod config;
pub mod dmstate;
pub mod guest;
pub mod hotplug;
pub mod lock;
pub mod paths;
pub mod qmp;
pub mod status;
pub mod stream;
pub mod sys;
pub mod vbd;
pub mod vdev;
pub mod xs;

use std::io::IsTerminal;
use std::time::Instant;

/// Why a command failed: the one line stubctl prints before exiting with status 1.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no domain {0:?}")]
    NoSuchGuest(String),
    #[error("domain {name} ({domid}) has no stub domain (libxl wrote no image/device-model-domid)")]
    NoStubDomain { name: String, domid: u32 },
    #[error("{0}")]
    BadVdev(#[from] vdev::VdevError),
    #[error("the stub domain of {guest} has no disk {vdev} (devid {devid})")]
    NoSuchDisk { guest: String, vdev: String, devid: u32 },
    #[error("{vdev} of {guest} is a {kind}, not a CD-ROM")]
    NotCdrom { guest: String, vdev: String, kind: String },
    #[error("cannot use {path} as a medium: {why}")]
    BadImage { path: String, why: String },
    #[error("xenstore: {0}")]
    Xenstore(#[from] xs::XsClientError),
    #[error("QMP: {0}")]
    Qmp(#[from] qmp::QmpError),
    #[error("{0}")]
    Lock(#[from] lock::LockError),
    #[error("waiting for {what}: nothing after {secs} s")]
    Timeout { what: String, secs: u64 },
    #[error("hotplug script: {0}")]
    Hotplug(#[from] hotplug::HotplugError),
    #[error("a vbd's backend path is not dom0's vbd or qdisk: {0:?}")]
    BadBackend(String),
    #[error("domain {domid} has no usable vm uuid ({vm:?})")]
    NoUuid { domid: u32, vm: Option<String> },
    #[error("the guest's stored configuration {path}: {why}")]
    Config { path: String, why: String },
    #[error("{0}")]
    Xen(String),
    #[error("{0}")]
    Io(String),
    #[error("{0}")]
    Checkpoint(#[from] checkpoint::CheckpointError),
    #[error("{error}; putting the old medium back {rollback}")]
    RolledBack { error: Box<Error>, rollback: String },
}

/// Where progress goes: step lines on a terminal or with `-v`, details with `-v`.
#[derive(Clone, Copy, Debug)]
pub struct Progress {
    pub verbose: bool,
    /// When the command started: each line says the seconds since.
    pub started: Instant,
}

impl Progress {
    pub fn new(verbose: bool) -> Progress {
        Progress { verbose, started: Instant::now() }
    }

    /// A step of long work.
    pub fn step(&self, text: &str) {
        if self.verbose || std::io::stderr().is_terminal() {
            eprintln!("stubctl: [{:6.1} s] {text}", self.started.elapsed().as_secs_f64());
        }
    }

    /// Detail for `-v`.
    pub fn detail(&self, text: &str) {
        if self.verbose {
            eprintln!("stubctl: [{:6.1} s]   {text}", self.started.elapsed().as_secs_f64());
        }
    }
}
