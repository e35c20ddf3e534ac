//! The block layer: emulated drives, their trays and media, and the PV disks behind them.
//!
//! libxl gives the stub domain each guest disk as a PV disk with the guest's devid and
//! asks for IDE drives on the device model's command line: a CD-ROM is
//! `-drive if=none,readonly=on,id=ide-<devid>[,file=/dev/xvdX,format=host_device]` plus
//! `-device ide-cd,id=ide-<devid>,drive=ide-<devid>,bus=ide.<n/2>,unit=<n%2>`, so both
//! its block-backend name and its device id are `ide-<devid>`; a hard disk is
//! `-drive file=/dev/xvdX,if=ide,index=<n>,media=disk`, which QEMU names
//! `ide<bus>-hd<unit>` and gives no device id. A medium here is always one of the stub
//! domain's PV disks (or nothing), opened as `raw` or `host_device`; filenames resolve
//! through [`fdset`]s (`/dev/fdset/N`) or name the stub domain's own disks (`/dev/xvdX`).
//!
//! Tray and medium semantics follow QEMU's block/qapi-sysemu.c and hw/ide (IDE CD-ROM):
//! - A guest may lock the tray (PREVENT ALLOW MEDIUM REMOVAL). Opening a locked tray
//!   without `force` asks the guest to eject (an eject request the IDE model reports
//!   through GET EVENT STATUS NOTIFICATION) and leaves the tray closed: `eject` and
//!   `blockdev-change-medium` then fail with "Device '…' is locked and force was not
//!   specified, wait for tray to open and try again", while `blockdev-open-tray`
//!   succeeds. With `force` the lock is dropped and the tray opens.
//! - `eject` opens the tray and removes the medium; the tray stays open.
//! - `blockdev-change-medium` opens the new medium first (so a bad filename, format or
//!   read-only mode changes nothing), then opens the tray, swaps the medium and closes
//!   the tray.
//! - Every tray movement, by a command or by the guest, is a DEVICE_TRAY_MOVED event.
//!
//! What the layer cannot do itself it reports as [`Notice`]s: the [`Vm`](crate::vm::Vm)
//! turns tray moves into QMP events and hands eject requests to the IDE model. Errors
//! are [`BlockError`]s, whose messages are QEMU's wording where QEMU has one; QMP
//! clients get them as they are.

pub mod devid;
pub mod fdset;

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use qmp::qapi::{BlockDeviceInfo, BlockInfo, BlockdevCacheInfo, DriveRef, ImageInfo, ReadOnlyMode};
use qmp::{ErrorClass, QmpError};

use fdset::{FdSets, FdTarget};

/// Why a block command, or a drive of the command line, failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BlockError {
    /// no drive has this `id` or `device` name (QMP class DeviceNotFound)
    #[error("Device '{0}' not found")]
    DeviceNotFound(String),
    #[error("Device '{0}' is not removable")]
    NotRemovable(String),
    /// the guest locked the tray; it has been asked to open it
    #[error("Device '{0}' is locked and force was not specified, wait for tray to open and try again")]
    Locked(String),
    #[error("Tray of device '{0}' is not open")]
    TrayNotOpen(String),
    #[error("Could not open '{filename}': {reason}")]
    CouldNotOpen { filename: String, reason: OpenFailure },
    #[error(
        "Format '{0}' is not supported: this device model opens the stub domain's PV disks as 'raw' or \
         'host_device' only"
    )]
    UnsupportedFormat(String),
    #[error("devid {0} is not one of the first four disks, which IDE can emulate")]
    NotAnIdeDisk(u32),
    #[error("a drive for devid {0} or its IDE position already exists")]
    DriveExists(u32),
    /// `remove-fd` of a set, or of an entry of a set, that is not there
    #[error("File descriptor named 'fdset-id:{fdset_id}{}' not found", fd_part(.fd))]
    FdNotFound { fdset_id: i64, fd: Option<i64> },
}

fn fd_part(fd: &Option<i64>) -> String {
    fd.map(|fd| format!(", fd:{fd}")).unwrap_or_default()
}

/// Why a filename did not open as a medium (the errno QEMU would report).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OpenFailure {
    #[error("No such file or directory")]
    NoSuchFile,
    #[error("Permission denied")]
    PermissionDenied,
    #[error("Invalid argument")]
    InvalidArgument,
    /// an fdset whose entries are none of our connected PV disks
    #[error("not a PV disk of this stub domain")]
    NotAPvDisk,
}

impl From<BlockError> for QmpError {
    fn from(error: BlockError) -> QmpError {
        let class = match error {
            BlockError::DeviceNotFound(_) => ErrorClass::DeviceNotFound,
            _ => ErrorClass::GenericError,
        };
        QmpError::new(class, error.to_string())
    }
}

/// What kind of IDE drive libxl asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DriveKind {
    /// `ide-cd`: removable medium, a tray the guest may lock
    CdRom,
    /// `ide-hd`: fixed medium, no tray
    HardDisk,
}

/// How a medium is opened (QMP `format`). Anything else is refused: the device model
/// has no image formats, only the stub domain's PV disks as they are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Raw,
    HostDevice,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::HostDevice => "host_device",
        }
    }

    /// The format QMP names; None (no `format`) means `raw`, what probing would find.
    pub fn parse(name: Option<&str>) -> Result<Format, BlockError> {
        match name {
            None | Some("raw") => Ok(Format::Raw),
            Some("host_device") => Ok(Format::HostDevice),
            Some(other) => Err(BlockError::UnsupportedFormat(other.to_string())),
        }
    }
}

/// A PV disk the stub domain has connected (what blkfront learnt from the backend).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PvDiskInfo {
    pub read_only: bool,
    pub size_bytes: u64,
}

/// An inserted medium.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Medium {
    /// the PV disk holding the data
    pub pv_devid: u32,
    /// the filename it was opened by, as query-block reports it
    pub filename: String,
    pub format: Format,
    pub read_only: bool,
    pub size_bytes: u64,
}

/// A medium named the way the command line or a QMP client names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MediumSource {
    pub filename: String,
    pub format: Option<String>,
}

/// A drive to create (from the device model's command line).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DriveConfig {
    /// the devid libxl computed for the guest's disk name ([`devid::devid`])
    pub devid: u32,
    pub kind: DriveKind,
    /// `readonly=on` (libxl sets it for every CD-ROM)
    pub read_only: bool,
    pub medium: Option<MediumSource>,
}

/// One emulated IDE drive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Drive {
    devid: u32,
    kind: DriveKind,
    /// disk letter index: bus = index / 2, unit = index % 2
    index: u32,
    tray_open: bool,
    tray_locked: bool,
    medium: Option<Medium>,
    /// the read-only mode `retain` keeps when there is no medium (QEMU's root state)
    root_read_only: bool,
}

impl Drive {
    pub fn devid(&self) -> u32 {
        self.devid
    }

    pub fn kind(&self) -> DriveKind {
        self.kind
    }

    /// IDE bus and unit.
    pub fn position(&self) -> (u32, u32) {
        (self.index / 2, self.index % 2)
    }

    /// The block-backend name (QMP `device`): `ide-<devid>` or `ide<bus>-hd<unit>`.
    pub fn device_name(&self) -> String {
        match self.kind {
            DriveKind::CdRom => format!("ide-{}", self.devid),
            DriveKind::HardDisk => format!("ide{}-hd{}", self.index / 2, self.index % 2),
        }
    }

    /// The guest device's id (QMP `id`): `ide-<devid>` for a CD-ROM; libxl gives hard
    /// disks none.
    pub fn qdev_id(&self) -> Option<String> {
        match self.kind {
            DriveKind::CdRom => Some(format!("ide-{}", self.devid)),
            DriveKind::HardDisk => None,
        }
    }

    pub fn removable(&self) -> bool {
        self.kind == DriveKind::CdRom
    }

    pub fn tray_open(&self) -> bool {
        self.tray_open
    }

    pub fn tray_locked(&self) -> bool {
        self.tray_locked
    }

    pub fn medium(&self) -> Option<&Medium> {
        self.medium.as_ref()
    }

    /// Whether the guest can read the medium: one is inserted and the tray is closed.
    pub fn medium_present(&self) -> bool {
        self.medium.is_some() && !self.tray_open
    }

    fn take_medium(&mut self) -> Option<Medium> {
        let medium = self.medium.take();
        if let Some(medium) = &medium {
            self.root_read_only = medium.read_only;
        }
        medium
    }
}

/// Something that happened to a drive that the device model (and QMP clients) must
/// hear of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DriveChange {
    /// the tray moved (a DEVICE_TRAY_MOVED event)
    TrayMoved { open: bool },
    /// the guest is asked to eject (it had locked the tray); with `force` the lock is gone
    EjectRequested { force: bool },
    /// the PV disk behind the medium disconnected and the medium went with it
    MediumGone,
}

/// A [`DriveChange`] of drive `devid`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Notice {
    pub devid: u32,
    pub change: DriveChange,
}

/// Why a guest's tray operation was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestTrayError {
    /// no drive has this devid
    NoSuchDrive,
    /// the drive has no tray (a hard disk)
    NotRemovable,
    /// the guest locked the tray and asked to open it (SCSI: MEDIUM REMOVAL PREVENTED)
    Locked,
}

/// The drives, the connected PV disks and the fdsets.
#[derive(Clone, Debug, Default)]
pub struct BlockLayer {
    drives: Vec<Drive>,
    pv_disks: Vec<(u32, PvDiskInfo)>,
    fdsets: FdSets,
}

fn could_not_open(filename: &str, reason: OpenFailure) -> BlockError {
    BlockError::CouldNotOpen { filename: filename.to_string(), reason }
}

impl BlockLayer {
    pub fn new() -> BlockLayer {
        BlockLayer::default()
    }

    pub fn drives(&self) -> &[Drive] {
        &self.drives
    }

    /// The drive for devid `devid`.
    pub fn drive(&self, devid: u32) -> Option<&Drive> {
        self.drives.iter().find(|drive| drive.devid == devid)
    }

    pub fn fdsets(&self) -> &FdSets {
        &self.fdsets
    }

    pub fn fdsets_mut(&mut self) -> &mut FdSets {
        &mut self.fdsets
    }

    /// The PV disk with devid `devid`, if connected.
    pub fn pv_disk(&self, devid: u32) -> Option<PvDiskInfo> {
        self.pv_disks.iter().find(|(id, _)| *id == devid).map(|(_, info)| *info)
    }

    /// Creates a drive, opening its initial medium (whose PV disk must be connected).
    pub fn add_drive(&mut self, config: DriveConfig) -> Result<(), BlockError> {
        let index =
            devid::disk_index(config.devid).filter(|index| *index < 4).ok_or(BlockError::NotAnIdeDisk(config.devid))?;
        if self.drives.iter().any(|drive| drive.devid == config.devid || drive.index == index) {
            return Err(BlockError::DriveExists(config.devid));
        }
        let medium = match &config.medium {
            None => None,
            Some(source) => Some(self.open_medium(&source.filename, source.format.as_deref(), config.read_only)?),
        };
        self.drives.push(Drive {
            devid: config.devid,
            kind: config.kind,
            index,
            tray_open: false,
            tray_locked: false,
            medium,
            root_read_only: config.read_only,
        });
        Ok(())
    }

    /// A PV disk connected: record it and put it in a new fdset with opaque
    /// `stub-devid:<devid>` (libxl 4.20 polls `query-fdsets` for exactly that).
    /// Returns the fdset id; a disk already connected keeps its set.
    pub fn pv_disk_connected(&mut self, devid: u32, info: PvDiskInfo) -> i64 {
        match self.pv_disks.iter_mut().find(|(id, _)| *id == devid) {
            Some(entry) => entry.1 = info,
            None => self.pv_disks.push((devid, info)),
        }
        let target = FdTarget::PvDisk(devid);
        if let Some(set) = self.fdsets.iter().find(|set| set.fds.iter().any(|entry| entry.target == target)) {
            return set.id;
        }
        self.fdsets.add_to_new_set(target, Some(format!("stub-devid:{devid}")))
    }

    /// A PV disk disconnected: its fdset entries go, and so does a medium it held (the
    /// tray does not move). Returns whether it was connected.
    pub fn pv_disk_disconnected(&mut self, devid: u32, notices: &mut Vec<Notice>) -> bool {
        let before = self.pv_disks.len();
        self.pv_disks.retain(|(id, _)| *id != devid);
        self.fdsets.remove_target(FdTarget::PvDisk(devid));
        for drive in &mut self.drives {
            if drive.medium.as_ref().is_some_and(|medium| medium.pv_devid == devid) {
                drive.take_medium();
                notices.push(Notice { devid: drive.devid, change: DriveChange::MediumGone });
            }
        }
        self.pv_disks.len() != before
    }

    /// Opens `filename` as a medium: resolves it to a connected PV disk and checks the
    /// format and the access mode.
    pub fn open_medium(&self, filename: &str, format: Option<&str>, read_only: bool) -> Result<Medium, BlockError> {
        let format = Format::parse(format)?;
        let pv_devid = self.resolve(filename, read_only)?;
        let info = self.pv_disk(pv_devid).ok_or_else(|| could_not_open(filename, OpenFailure::NoSuchFile))?;
        if info.read_only && !read_only {
            return Err(could_not_open(filename, OpenFailure::PermissionDenied));
        }
        Ok(Medium { pv_devid, filename: filename.to_string(), format, read_only, size_bytes: info.size_bytes })
    }

    /// The PV disk a filename names: `/dev/fdset/N` (an entry for a connected PV disk,
    /// a writable one if `read_only` is false) or `/dev/xvdX` (the PV disk for letter X).
    fn resolve(&self, filename: &str, read_only: bool) -> Result<u32, BlockError> {
        if let Some(number) = filename.strip_prefix("/dev/fdset/") {
            let id = parse_fdset_id(number).ok_or_else(|| could_not_open(filename, OpenFailure::InvalidArgument))?;
            let set = self.fdsets.get(id).ok_or_else(|| could_not_open(filename, OpenFailure::NoSuchFile))?;
            let disks: Vec<u32> = set
                .fds
                .iter()
                .filter_map(|entry| match entry.target {
                    FdTarget::PvDisk(devid) if self.pv_disk(devid).is_some() => Some(devid),
                    _ => None,
                })
                .collect();
            if disks.is_empty() {
                return Err(could_not_open(filename, OpenFailure::NotAPvDisk));
            }
            let usable = disks
                .iter()
                .copied()
                .find(|devid| read_only || self.pv_disk(*devid).is_some_and(|info| !info.read_only));
            return usable.ok_or_else(|| could_not_open(filename, OpenFailure::PermissionDenied));
        }
        if let Some(index) = filename.strip_prefix("/dev/").and_then(devid::xvd_index) {
            return self
                .pv_disks
                .iter()
                .find(|(devid, _)| devid::disk_index(*devid) == Some(index))
                .map(|(devid, _)| *devid)
                .ok_or_else(|| could_not_open(filename, OpenFailure::NoSuchFile));
        }
        Err(could_not_open(filename, OpenFailure::NoSuchFile))
    }

    /// The drive a command names.
    fn find(&self, target: DriveRef<'_>) -> Result<usize, BlockError> {
        let found = match target {
            DriveRef::Id(id) => self.drives.iter().position(|drive| drive.qdev_id().as_deref() == Some(id)),
            DriveRef::Device(name) => self.drives.iter().position(|drive| drive.device_name() == name),
        };
        found.ok_or_else(|| BlockError::DeviceNotFound(target.name().to_string()))
    }

    fn set_tray(&mut self, at: usize, open: bool, notices: &mut Vec<Notice>) {
        let drive = &mut self.drives[at];
        if drive.tray_open != open {
            drive.tray_open = open;
            notices.push(Notice { devid: drive.devid, change: DriveChange::TrayMoved { open } });
        }
    }

    /// QEMU's do_open_tray. [`BlockError::Locked`]: the guest has been asked to open it.
    fn open_tray_at(
        &mut self,
        at: usize,
        name: &str,
        force: bool,
        notices: &mut Vec<Notice>,
    ) -> Result<(), BlockError> {
        let drive = &mut self.drives[at];
        if !drive.removable() {
            return Err(BlockError::NotRemovable(name.to_string()));
        }
        if drive.tray_open {
            return Ok(());
        }
        let locked = drive.tray_locked;
        if locked {
            if force {
                drive.tray_locked = false;
            }
            let change = DriveChange::EjectRequested { force };
            notices.push(Notice { devid: drive.devid, change });
        }
        if !locked || force {
            self.set_tray(at, true, notices);
            return Ok(());
        }
        Err(BlockError::Locked(name.to_string()))
    }

    /// QEMU's blockdev_remove_medium.
    fn remove_medium_at(&mut self, at: usize, name: &str) -> Result<(), BlockError> {
        let drive = &mut self.drives[at];
        if !drive.removable() {
            return Err(BlockError::NotRemovable(name.to_string()));
        }
        if !drive.tray_open {
            return Err(BlockError::TrayNotOpen(name.to_string()));
        }
        drive.take_medium();
        Ok(())
    }

    fn close_tray_at(&mut self, at: usize, name: &str, notices: &mut Vec<Notice>) -> Result<(), BlockError> {
        if !self.drives[at].removable() {
            return Err(BlockError::NotRemovable(name.to_string()));
        }
        self.set_tray(at, false, notices);
        Ok(())
    }

    /// `eject`: open the tray (see the module notes on locks) and remove the medium.
    pub fn eject(&mut self, target: DriveRef<'_>, force: bool, notices: &mut Vec<Notice>) -> Result<(), BlockError> {
        let at = self.find(target)?;
        self.open_tray_at(at, target.name(), force, notices)?;
        self.remove_medium_at(at, target.name())
    }

    /// `blockdev-open-tray`: a locked tray without `force` only asks the guest, and that
    /// is a success.
    pub fn open_tray(
        &mut self,
        target: DriveRef<'_>,
        force: bool,
        notices: &mut Vec<Notice>,
    ) -> Result<(), BlockError> {
        let at = self.find(target)?;
        match self.open_tray_at(at, target.name(), force, notices) {
            Ok(()) | Err(BlockError::Locked(_)) => Ok(()),
            Err(error) => Err(error),
        }
    }

    /// `blockdev-close-tray`.
    pub fn close_tray(&mut self, target: DriveRef<'_>, notices: &mut Vec<Notice>) -> Result<(), BlockError> {
        let at = self.find(target)?;
        self.close_tray_at(at, target.name(), notices)
    }

    /// `blockdev-change-medium`.
    pub fn change_medium(
        &mut self,
        target: DriveRef<'_>,
        filename: &str,
        format: Option<&str>,
        mode: ReadOnlyMode,
        notices: &mut Vec<Notice>,
    ) -> Result<(), BlockError> {
        let at = self.find(target)?;
        let drive = &self.drives[at];
        let current = drive.medium.as_ref().map_or(drive.root_read_only, |medium| medium.read_only);
        let read_only = match mode {
            ReadOnlyMode::Retain => current,
            ReadOnlyMode::ReadOnly => true,
            ReadOnlyMode::ReadWrite => false,
        };
        let medium = self.open_medium(filename, format, read_only)?;
        self.open_tray_at(at, target.name(), false, notices)?;
        self.remove_medium_at(at, target.name())?;
        self.drives[at].medium = Some(medium);
        self.close_tray_at(at, target.name(), notices)
    }

    /// `query-block`, drives in creation order.
    pub fn query_block(&self) -> Vec<BlockInfo> {
        self.drives
            .iter()
            .map(|drive| BlockInfo {
                device: drive.device_name(),
                qdev: drive.qdev_id(),
                kind: "unknown",
                removable: drive.removable(),
                locked: drive.tray_locked,
                inserted: drive.medium.as_ref().map(|medium| BlockDeviceInfo {
                    file: medium.filename.clone(),
                    ro: medium.read_only,
                    drv: medium.format.as_str(),
                    backing_file_depth: 0,
                    encrypted: false,
                    detect_zeroes: "off",
                    bps: 0,
                    bps_rd: 0,
                    bps_wr: 0,
                    iops: 0,
                    iops_rd: 0,
                    iops_wr: 0,
                    image: ImageInfo {
                        filename: medium.filename.clone(),
                        format: medium.format.as_str(),
                        virtual_size: medium.size_bytes,
                    },
                    write_threshold: 0,
                    cache: BlockdevCacheInfo { writeback: true, direct: false, no_flush: false },
                }),
                tray_open: drive.removable().then_some(drive.tray_open),
                io_status: "ok",
            })
            .collect()
    }

    fn guest_drive(&mut self, devid: u32) -> Result<usize, GuestTrayError> {
        let at = self.drives.iter().position(|drive| drive.devid == devid).ok_or(GuestTrayError::NoSuchDrive)?;
        if !self.drives[at].removable() {
            return Err(GuestTrayError::NotRemovable);
        }
        Ok(at)
    }

    /// The guest locks or unlocks the tray (ATAPI PREVENT ALLOW MEDIUM REMOVAL).
    pub fn guest_lock_tray(&mut self, devid: u32, locked: bool) -> Result<(), GuestTrayError> {
        let at = self.guest_drive(devid)?;
        self.drives[at].tray_locked = locked;
        Ok(())
    }

    /// The guest opens or closes the tray (ATAPI START STOP UNIT with LoEj). Opening a
    /// locked tray is refused, closing never is.
    pub fn guest_move_tray(&mut self, devid: u32, open: bool, notices: &mut Vec<Notice>) -> Result<(), GuestTrayError> {
        let at = self.guest_drive(devid)?;
        let drive = &self.drives[at];
        if open && !drive.tray_open && drive.tray_locked {
            return Err(GuestTrayError::Locked);
        }
        self.set_tray(at, open, notices);
        Ok(())
    }
}

/// An fdset number as QEMU's qemu_parse_fd reads it: decimal digits only.
fn parse_fdset_id(text: &str) -> Option<i64> {
    if text.is_empty() || !text.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HDC: u32 = 5632;

    fn layer_with_cd() -> BlockLayer {
        let mut layer = BlockLayer::new();
        layer.pv_disk_connected(HDC, PvDiskInfo { read_only: true, size_bytes: 4096 });
        layer
            .add_drive(DriveConfig {
                devid: HDC,
                kind: DriveKind::CdRom,
                read_only: true,
                medium: Some(MediumSource { filename: "/dev/xvdc".into(), format: Some("host_device".into()) }),
            })
            .unwrap();
        layer
    }

    #[test]
    fn names_follow_libxl_and_qemu() {
        let mut layer = layer_with_cd();
        layer.pv_disk_connected(768, PvDiskInfo { read_only: false, size_bytes: 1 << 20 });
        layer
            .add_drive(DriveConfig {
                devid: 768,
                kind: DriveKind::HardDisk,
                read_only: false,
                medium: Some(MediumSource { filename: "/dev/xvda".into(), format: None }),
            })
            .unwrap();
        let cd = layer.drive(HDC).unwrap();
        assert_eq!(cd.device_name(), "ide-5632");
        assert_eq!(cd.qdev_id().as_deref(), Some("ide-5632"));
        assert_eq!(cd.position(), (1, 0));
        let hd = layer.drive(768).unwrap();
        assert_eq!(hd.device_name(), "ide0-hd0");
        assert_eq!((hd.qdev_id(), hd.position()), (None, (0, 0)));
        assert_eq!(hd.medium().unwrap().pv_devid, 768);
    }

    #[test]
    fn drives_are_found_by_id_or_device_and_missing_ones_are_device_not_found() {
        let mut layer = layer_with_cd();
        let mut notices = Vec::new();
        let error = QmpError::from(layer.eject(DriveRef::Id("ide-768"), false, &mut notices).unwrap_err());
        assert_eq!(error.class, ErrorClass::DeviceNotFound);
        assert_eq!(error.desc, "Device 'ide-768' not found");
        assert_eq!(QmpError::from(BlockError::NotRemovable("ide0-hd0".into())).class, ErrorClass::GenericError);
        layer.eject(DriveRef::Device("ide-5632"), false, &mut notices).unwrap();
        assert_eq!(notices, [Notice { devid: HDC, change: DriveChange::TrayMoved { open: true } }]);
        assert_eq!(
            DriveRef::from_args(Some("a"), Some("b")).unwrap_err().desc,
            "Need exactly one of 'device' and 'id'"
        );
    }

    #[test]
    fn formats_other_than_raw_and_host_device_are_refused() {
        let layer = layer_with_cd();
        assert!(layer.open_medium("/dev/xvdc", Some("raw"), true).is_ok());
        let error = layer.open_medium("/dev/xvdc", Some("qcow2"), true).unwrap_err().to_string();
        assert!(error.starts_with("Format 'qcow2' is not supported"), "{error}");
    }

    #[test]
    fn filenames_resolve_through_fdsets_and_xvd_names() {
        let mut layer = layer_with_cd();
        let set = layer.pv_disk_connected(51760, PvDiskInfo { read_only: false, size_bytes: 7 });
        let by_fdset = layer.open_medium(&format!("/dev/fdset/{set}"), None, false);
        assert_eq!(by_fdset.unwrap().pv_devid, 51760);
        assert_eq!(layer.open_medium("/dev/xvdd", None, false).unwrap().pv_devid, 51760);
        for (name, reason) in [
            ("/dev/fdset/9", OpenFailure::NoSuchFile),
            ("/dev/fdset/-1", OpenFailure::InvalidArgument),
            ("/dev/fdset/", OpenFailure::InvalidArgument),
            ("/dev/xvdq", OpenFailure::NoSuchFile),
            ("/srv/image.iso", OpenFailure::NoSuchFile),
        ] {
            let error = layer.open_medium(name, None, true).unwrap_err();
            assert_eq!(error.to_string(), format!("Could not open '{name}': {reason}"));
        }
        assert_eq!(
            layer.open_medium("/dev/fdset/0", None, false).unwrap_err().to_string(),
            "Could not open '/dev/fdset/0': Permission denied"
        );
    }

    #[test]
    fn disconnecting_a_pv_disk_drops_its_fdset_entry_and_medium() {
        let mut layer = layer_with_cd();
        let mut notices = Vec::new();
        assert!(layer.pv_disk_disconnected(HDC, &mut notices));
        assert!(layer.fdsets().iter().next().is_none());
        assert!(layer.drive(HDC).unwrap().medium().is_none());
        assert_eq!(notices, [Notice { devid: HDC, change: DriveChange::MediumGone }]);
        assert!(!layer.pv_disk_disconnected(HDC, &mut notices));
    }

    #[test]
    fn guest_cannot_open_a_locked_tray_but_can_close_it() {
        let mut layer = layer_with_cd();
        let mut notices = Vec::new();
        layer.guest_lock_tray(HDC, true).unwrap();
        assert_eq!(layer.guest_move_tray(HDC, true, &mut notices), Err(GuestTrayError::Locked));
        layer.guest_lock_tray(HDC, false).unwrap();
        layer.guest_move_tray(HDC, true, &mut notices).unwrap();
        layer.guest_lock_tray(HDC, true).unwrap();
        layer.guest_move_tray(HDC, false, &mut notices).unwrap();
        assert_eq!(notices.len(), 2);
        assert_eq!(layer.guest_lock_tray(768, true), Err(GuestTrayError::NoSuchDrive));
    }
}
