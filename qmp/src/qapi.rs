//! What commands take and return, and the events, in the shapes of QEMU's QAPI schema.
//!
//! These are the wire format only: the device model behind the [`Monitor`] trait fills
//! them in (`query-block`'s [`BlockInfo`] from its drives, `query-fdsets`'
//! [`FdsetInfo`] from its fdsets) and queues the [`Event`]s its state changes cause.
//! Member names, their order and which ones are left out when absent follow QEMU 9.2
//! (qapi/block-core.json, qapi/block.json, qapi/misc.json, qapi/run-state.json).
//!
//! [`Monitor`]: crate::Monitor

use alloc::string::String;
use alloc::vec::Vec;

use serde::Serialize;
use serde_json::json;

use crate::error::QmpError;
use crate::protocol::Timestamp;

/// The VM's run state as `query-status` reports it (a subset of QEMU's RunState).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunState {
    Running,
    Paused,
}

impl RunState {
    /// The state's name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Running => "running",
            RunState::Paused => "paused",
        }
    }
}

/// `blockdev-change-medium`'s `read-only-mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadOnlyMode {
    /// the drive's current mode (the last medium's, or the command line's)
    Retain,
    ReadOnly,
    ReadWrite,
}

impl ReadOnlyMode {
    /// QAPI's BlockdevChangeReadOnlyMode values, in schema order.
    pub const NAMES: [&'static str; 3] = ["retain", "read-only", "read-write"];

    /// The mode at `index` in [`NAMES`](Self::NAMES).
    pub fn from_index(index: usize) -> ReadOnlyMode {
        match index {
            1 => ReadOnlyMode::ReadOnly,
            2 => ReadOnlyMode::ReadWrite,
            _ => ReadOnlyMode::Retain,
        }
    }
}

/// Which drive a command names: by `id` (the guest device) or by `device` (the block
/// backend, deprecated since QEMU 2.8 but still accepted).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DriveRef<'a> {
    Id(&'a str),
    Device(&'a str),
}

impl<'a> DriveRef<'a> {
    /// Exactly one of `device` and `id`, as QEMU's qmp_get_blk demands.
    pub fn from_args(device: Option<&'a str>, id: Option<&'a str>) -> Result<DriveRef<'a>, QmpError> {
        match (device, id) {
            (None, Some(id)) => Ok(DriveRef::Id(id)),
            (Some(device), None) => Ok(DriveRef::Device(device)),
            _ => Err(QmpError::generic("Need exactly one of 'device' and 'id'")),
        }
    }

    /// The name as the client gave it, for messages.
    pub fn name(&self) -> &'a str {
        match *self {
            DriveRef::Id(name) | DriveRef::Device(name) => name,
        }
    }
}

/// `query-block`'s BlockInfo.
#[derive(Clone, Debug, Serialize)]
pub struct BlockInfo {
    pub device: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub qdev: Option<String>,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub removable: bool,
    pub locked: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inserted: Option<BlockDeviceInfo>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tray_open: Option<bool>,
    #[serde(rename = "io-status")]
    pub io_status: &'static str,
}

/// `query-block`'s BlockDeviceInfo (the members QEMU 9.2 always sends).
#[derive(Clone, Debug, Serialize)]
pub struct BlockDeviceInfo {
    pub file: String,
    pub ro: bool,
    pub drv: &'static str,
    pub backing_file_depth: u32,
    pub encrypted: bool,
    pub detect_zeroes: &'static str,
    pub bps: u64,
    pub bps_rd: u64,
    pub bps_wr: u64,
    pub iops: u64,
    pub iops_rd: u64,
    pub iops_wr: u64,
    pub image: ImageInfo,
    pub write_threshold: u64,
    pub cache: BlockdevCacheInfo,
}

/// `query-block`'s ImageInfo.
#[derive(Clone, Debug, Serialize)]
pub struct ImageInfo {
    pub filename: String,
    pub format: &'static str,
    #[serde(rename = "virtual-size")]
    pub virtual_size: u64,
}

/// `query-block`'s BlockdevCacheInfo (libxl's `cache=writeback`).
#[derive(Clone, Debug, Serialize)]
pub struct BlockdevCacheInfo {
    pub writeback: bool,
    pub direct: bool,
    #[serde(rename = "no-flush")]
    pub no_flush: bool,
}

/// `query-fdsets`'s FdsetInfo.
#[derive(Clone, Debug, Serialize)]
pub struct FdsetInfo<'a> {
    #[serde(rename = "fdset-id")]
    pub fdset_id: i64,
    pub fds: Vec<FdsetFdInfo<'a>>,
}

/// `query-fdsets`'s FdsetFdInfo.
#[derive(Clone, Debug, Serialize)]
pub struct FdsetFdInfo<'a> {
    pub fd: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub opaque: Option<&'a str>,
}

/// An asynchronous message to QMP clients.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// `DEVICE_TRAY_MOVED {device, id, tray-open}`
    DeviceTrayMoved { device: String, id: String, tray_open: bool },
    /// `STOP`: the VM stopped
    Stop,
    /// `RESUME`: the VM runs again
    Resume,
}

impl Event {
    /// The event's name on the wire.
    pub fn name(&self) -> &'static str {
        match self {
            Event::DeviceTrayMoved { .. } => "DEVICE_TRAY_MOVED",
            Event::Stop => "STOP",
            Event::Resume => "RESUME",
        }
    }

    /// The `data` member; None for events without one (QEMU then omits it).
    pub fn data(&self) -> Option<serde_json::Value> {
        match self {
            Event::DeviceTrayMoved { device, id, tray_open } => {
                Some(json!({ "device": device, "id": id, "tray-open": tray_open }))
            }
            Event::Stop | Event::Resume => None,
        }
    }
}

/// An event and when it happened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimedEvent {
    pub event: Event,
    pub timestamp: Timestamp,
}
