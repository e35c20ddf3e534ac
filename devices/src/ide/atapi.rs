//! ATAPI: the PACKET protocol and the MMC commands of a CD/DVD-ROM, its sense data, its
//! tray and QEMU's model of a media change.
//!
//! PACKET (0xA0): DRQ with interrupt reason CoD for the 12-byte CDB, no interrupt. A reply
//! goes out in DRQ blocks of at most the byte count limit the guest put in LBA mid/high
//! (0xffff counts as 0xfffe; a limit below the reply is made even), each with interrupt
//! reason IO, the block's length in LBA mid/high, and an interrupt; the end is status 0x50,
//! interrupt reason IO|CoD and an interrupt. An error is status 0x51, error = sense key << 4,
//! the sense kept for REQUEST SENSE. CD blocks are 2048 bytes, 4 sectors of the PV disk; a
//! medium whose size is not a multiple of 2048 bytes has its last partial block unreadable.
//! Blocks come from requests of up to 64 KiB, fetched when the buffered data does not fill
//! the next DRQ block, so a DRQ block is never waited for in the middle.
//!
//! The command table and the replies are QEMU's (hw/ide/atapi.c). Differences: MODE SENSE
//! page 0x3F (all pages) answers the three pages instead of 05/24/00; a PACKET with the DMA
//! bit set is aborted (no DMA); a data command with a byte count limit of 0 is aborted with
//! an interrupt and interrupt reason IO|CoD (QEMU aborts without an interrupt); a limit of 1
//! moves 2 bytes per block instead of none.
//!
//! Media change (QEMU's `ide_cd_change_cb` and `ide_atapi_cmd`): a medium or tray change
//! made by the host sets `cdrom_changed` = 1 and GESN's NEW_MEDIA event, and interrupts.
//! The next command that is not allowed under UNIT ATTENTION, with the tray closed and a
//! medium in, fails with NOT READY / MEDIUM NOT PRESENT (02/3A), the one after that with
//! UNIT ATTENTION / MEDIUM MAY HAVE CHANGED (06/28); while that UNIT ATTENTION is pending
//! (until REQUEST SENSE) such commands end with status ERR, error MC | 0x60.

use alloc::vec;
use alloc::vec::Vec;

use super::channel::Bus;
use super::drive::{AtapiTransfer, CdFetch, Drive, Media, Pending, PioEnd, Transfer, error, status};
use super::identify::{CDROM_MODEL, FIRMWARE_REVISION, serial_number};
use super::{BlockOp, DriveId, IdeEvent, MAX_REQUEST_SECTORS};

/// Bytes in a CD block as the PV disk stores it.
const CD_BLOCK_LEN_BYTES: usize = 2048;
/// Bytes in a raw (READ CD 0xF8) block.
const CD_RAW_BLOCK_LEN_BYTES: usize = 2352;
/// Bytes in a CDB.
const PACKET_LEN_BYTES: usize = 12;
/// PV sectors above which a medium is a DVD (QEMU's CD_MAX_SECTORS: 80 minutes of CD).
const CD_MAX_SECTORS: u64 = 80 * 60 * 75 * 2048 / 512;

/// Interrupt reason (sector count register) bits.
mod reason {
    /// command or data
    pub const COD: u32 = 0x01;
    /// device to host
    pub const IO: u32 = 0x02;
}

/// SCSI sense keys this device reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
#[derive(serde::Serialize, serde::Deserialize)]
pub(super) enum SenseKey {
    NoSense = 0x0,
    NotReady = 0x2,
    IllegalRequest = 0x5,
    UnitAttention = 0x6,
}

/// Additional sense codes this device reports (the qualifier is always 0, as in QEMU).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
#[derive(serde::Serialize, serde::Deserialize)]
pub(super) enum Asc {
    None = 0x00,
    InvalidOpcode = 0x20,
    LbaOutOfRange = 0x21,
    InvalidFieldInCdb = 0x24,
    MediumMayHaveChanged = 0x28,
    IncompatibleFormat = 0x30,
    SavingParametersNotSupported = 0x39,
    MediumNotPresent = 0x3a,
    DataPhaseError = 0x4b,
    MediumRemovalPrevented = 0x53,
}

/// A command that failed with CHECK CONDITION.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct CheckCondition {
    pub key: SenseKey,
    pub asc: Asc,
}

const fn check(key: SenseKey, asc: Asc) -> CheckCondition {
    CheckCondition { key, asc }
}

const INVALID_FIELD: CheckCondition = check(SenseKey::IllegalRequest, Asc::InvalidFieldInCdb);
const LBA_OUT_OF_RANGE: CheckCondition = check(SenseKey::IllegalRequest, Asc::LbaOutOfRange);
const MEDIUM_NOT_PRESENT: CheckCondition = check(SenseKey::NotReady, Asc::MediumNotPresent);

/// What a packet command asks of the drive.
#[derive(Debug, PartialEq, Eq)]
enum Action {
    /// good status, no data
    Good,
    /// send the first `max_len` bytes of `data`
    Reply { data: Vec<u8>, max_len: usize },
    /// send `nr_blocks` CD blocks from `lba`
    Read { lba: u64, nr_blocks: u64, block_len_bytes: usize },
    /// the byte count limit is 0 for a data command: abort at the ATA level
    AbortBadByteCount,
}

/// How a command may run (QEMU's `atapi_cmd_table` flags).
#[derive(Clone, Copy, Default)]
struct PacketFlags {
    /// runs while a UNIT ATTENTION is pending
    allow_unit_attention: bool,
    /// needs a medium: NOT READY / MEDIUM NOT PRESENT otherwise
    check_ready: bool,
    /// never transfers data, so a byte count limit of 0 is fine
    no_data: bool,
    /// transfers data only for some parameters; the handler checks the limit
    conditional_data: bool,
}

mod op {
    pub const TEST_UNIT_READY: u8 = 0x00;
    pub const REQUEST_SENSE: u8 = 0x03;
    pub const INQUIRY: u8 = 0x12;
    pub const START_STOP_UNIT: u8 = 0x1b;
    pub const PREVENT_ALLOW_MEDIUM_REMOVAL: u8 = 0x1e;
    pub const READ_CAPACITY: u8 = 0x25;
    pub const READ_10: u8 = 0x28;
    pub const SEEK_10: u8 = 0x2b;
    pub const READ_TOC_PMA_ATIP: u8 = 0x43;
    pub const GET_CONFIGURATION: u8 = 0x46;
    pub const GET_EVENT_STATUS_NOTIFICATION: u8 = 0x4a;
    pub const READ_DISC_INFORMATION: u8 = 0x51;
    pub const MODE_SENSE_10: u8 = 0x5a;
    pub const READ_12: u8 = 0xa8;
    pub const READ_DVD_STRUCTURE: u8 = 0xad;
    pub const SET_CD_SPEED: u8 = 0xbb;
    pub const MECHANISM_STATUS: u8 = 0xbd;
    pub const READ_CD: u8 = 0xbe;
}

/// The flags of a known opcode; None for an opcode without a handler.
fn packet_flags(opcode: u8) -> Option<PacketFlags> {
    let ua = PacketFlags { allow_unit_attention: true, ..PacketFlags::default() };
    let ready = PacketFlags { check_ready: true, ..PacketFlags::default() };
    let no_data = PacketFlags { no_data: true, ..PacketFlags::default() };
    Some(match opcode {
        op::TEST_UNIT_READY | op::SEEK_10 => PacketFlags { check_ready: true, no_data: true, ..PacketFlags::default() },
        op::REQUEST_SENSE | op::INQUIRY | op::GET_CONFIGURATION | op::GET_EVENT_STATUS_NOTIFICATION => ua,
        op::START_STOP_UNIT | op::PREVENT_ALLOW_MEDIUM_REMOVAL | op::SET_CD_SPEED => no_data,
        op::READ_CAPACITY
        | op::READ_10
        | op::READ_12
        | op::READ_TOC_PMA_ATIP
        | op::READ_DISC_INFORMATION
        | op::READ_DVD_STRUCTURE => ready,
        op::MODE_SENSE_10 | op::MECHANISM_STATUS => PacketFlags::default(),
        op::READ_CD => PacketFlags { check_ready: true, conditional_data: true, ..PacketFlags::default() },
        _ => return None,
    })
}

fn be16(bytes: &[u8], at: usize) -> usize {
    usize::from(u16::from_be_bytes([bytes[at], bytes[at + 1]]))
}

fn be24(bytes: &[u8], at: usize) -> u64 {
    u64::from(bytes[at]) << 16 | u64::from(bytes[at + 1]) << 8 | u64::from(bytes[at + 2])
}

fn be32(bytes: &[u8], at: usize) -> u64 {
    u64::from(u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]))
}

fn put_be16(bytes: &mut [u8], at: usize, value: u16) {
    bytes[at..at + 2].copy_from_slice(&value.to_be_bytes());
}

fn put_be32(bytes: &mut [u8], at: usize, value: u32) {
    bytes[at..at + 4].copy_from_slice(&value.to_be_bytes());
}

/// Space-padded ASCII field.
fn put_padded(bytes: &mut [u8], text: &[u8]) {
    for (i, slot) in bytes.iter_mut().enumerate() {
        *slot = text.get(i).copied().unwrap_or(b' ');
    }
}

/// Minutes, seconds, frames of an LBA (with the 2-second lead-in).
fn lba_to_msf(lba: u64) -> [u8; 3] {
    let frames = lba + 150;
    [(frames / 75 / 60) as u8, (frames / 75 % 60) as u8, (frames % 75) as u8]
}

/// The drive's media and sense state.
#[derive(serde::Serialize, serde::Deserialize)]
pub(super) struct CdRom {
    /// None: no medium
    pub medium_nr_sectors: Option<u64>,
    pub tray_open: bool,
    pub tray_locked: bool,
    /// 0: nothing; 1: report NOT READY next; 2: report UNIT ATTENTION next
    pub cdrom_changed: u8,
    pub sense_key: SenseKey,
    pub asc: Asc,
    /// GESN: a medium change to report
    pub new_media: bool,
    /// GESN: the host asked to eject
    pub eject_request: bool,
}

impl CdRom {
    pub fn new(medium_nr_sectors: Option<u64>) -> Self {
        CdRom {
            medium_nr_sectors,
            tray_open: false,
            tray_locked: false,
            cdrom_changed: 0,
            sense_key: SenseKey::NoSense,
            asc: Asc::None,
            new_media: false,
            eject_request: false,
        }
    }

    /// The medium's size in PV sectors, 0 without one.
    fn nr_sectors(&self) -> u64 {
        self.medium_nr_sectors.unwrap_or(0)
    }

    fn inserted(&self) -> bool {
        self.medium_nr_sectors.is_some()
    }

    /// A medium the drive can read: tray closed and a non-empty medium in.
    fn media_present(&self) -> bool {
        !self.tray_open && self.nr_sectors() > 0
    }

    /// Readable 2048-byte blocks.
    fn nr_blocks(&self) -> u64 {
        self.nr_sectors() >> 2
    }

    fn is_dvd(&self) -> bool {
        self.media_present() && self.nr_sectors() > CD_MAX_SECTORS
    }

    fn is_cd(&self) -> bool {
        self.media_present() && self.nr_sectors() <= CD_MAX_SECTORS
    }

    /// The reset part of QEMU's `ide_reset` for ATAPI state.
    pub fn reset_sense(&mut self) {
        self.sense_key = SenseKey::NoSense;
        self.asc = Asc::None;
        self.cdrom_changed = 0;
    }

    /// A machine reset also unlocks the tray.
    pub fn machine_reset(&mut self, drive: DriveId, bus: &mut Bus) {
        if self.tray_locked {
            self.tray_locked = false;
            bus.push_event(IdeEvent::TrayLocked { drive, locked: false });
        }
    }

    /// The host changed the medium or moved the tray (QEMU's `ide_cd_change_cb`).
    fn changed(&mut self, bus: &mut Bus) {
        self.cdrom_changed = 1;
        self.new_media = true;
        self.eject_request = false;
        bus.raise_irq();
    }

    /// Runs a CDB after the checks every command goes through.
    fn execute(
        &mut self,
        cdb: &[u8; PACKET_LEN_BYTES],
        byte_count_limit: u16,
        drive: DriveId,
        position: u8,
        bus: &mut Bus,
    ) -> Result<Action, Precheck> {
        let flags = packet_flags(cdb[0]);
        let allow_unit_attention = flags.is_some_and(|flags| flags.allow_unit_attention);
        if self.sense_key == SenseKey::UnitAttention && !allow_unit_attention {
            return Err(Precheck::UnitAttentionPending);
        }
        if !allow_unit_attention && !self.tray_open && self.inserted() && self.cdrom_changed != 0 {
            let failure = if self.cdrom_changed == 1 {
                self.cdrom_changed = 2;
                MEDIUM_NOT_PRESENT
            } else {
                self.cdrom_changed = 0;
                check(SenseKey::UnitAttention, Asc::MediumMayHaveChanged)
            };
            return Err(Precheck::Check(failure));
        }
        let Some(flags) = flags else {
            return Err(Precheck::Check(check(SenseKey::IllegalRequest, Asc::InvalidOpcode)));
        };
        if flags.check_ready && !(self.media_present() && self.inserted()) {
            return Err(Precheck::Check(MEDIUM_NOT_PRESENT));
        }
        if !flags.no_data && !flags.conditional_data && byte_count_limit == 0 {
            return Ok(Action::AbortBadByteCount);
        }
        self.dispatch(cdb, byte_count_limit, drive, position, bus).map_err(Precheck::Check)
    }

    fn dispatch(
        &mut self,
        cdb: &[u8; PACKET_LEN_BYTES],
        byte_count_limit: u16,
        drive: DriveId,
        position: u8,
        bus: &mut Bus,
    ) -> Result<Action, CheckCondition> {
        match cdb[0] {
            op::TEST_UNIT_READY | op::SET_CD_SPEED => Ok(Action::Good),
            op::REQUEST_SENSE => Ok(self.request_sense(cdb)),
            op::INQUIRY => inquiry(cdb, position),
            op::START_STOP_UNIT => self.start_stop_unit(cdb, drive, bus),
            op::PREVENT_ALLOW_MEDIUM_REMOVAL => {
                let locked = cdb[4] & 1 != 0;
                if self.tray_locked != locked {
                    self.tray_locked = locked;
                    bus.push_event(IdeEvent::TrayLocked { drive, locked });
                }
                Ok(Action::Good)
            }
            op::READ_CAPACITY => {
                let mut data = vec![0; 8];
                // the last LBA, truncated to 32 bits as QEMU does
                put_be32(&mut data, 0, (self.nr_blocks() as u32).wrapping_sub(1));
                put_be32(&mut data, 4, CD_BLOCK_LEN_BYTES as u32);
                Ok(Action::Reply { data, max_len: 8 })
            }
            op::READ_10 | op::READ_12 => {
                let nr_blocks = if cdb[0] == op::READ_10 { be16(cdb, 7) as u64 } else { be32(cdb, 6) };
                self.read(be32(cdb, 2), nr_blocks, CD_BLOCK_LEN_BYTES)
            }
            op::READ_CD => self.read_cd(cdb, byte_count_limit),
            op::SEEK_10 => {
                if be32(cdb, 2) >= self.nr_blocks() {
                    Err(LBA_OUT_OF_RANGE)
                } else {
                    Ok(Action::Good)
                }
            }
            op::READ_TOC_PMA_ATIP => self.read_toc(cdb),
            op::GET_CONFIGURATION => self.get_configuration(cdb),
            op::GET_EVENT_STATUS_NOTIFICATION => self.get_event_status_notification(cdb),
            op::READ_DISC_INFORMATION => read_disc_information(cdb),
            op::MODE_SENSE_10 => self.mode_sense(cdb),
            op::READ_DVD_STRUCTURE => self.read_dvd_structure(cdb),
            op::MECHANISM_STATUS => {
                let mut data = vec![0; 8];
                data[5] = 1; // one slot
                Ok(Action::Reply { data, max_len: be16(cdb, 8) })
            }
            _ => Err(check(SenseKey::IllegalRequest, Asc::InvalidOpcode)),
        }
    }

    fn request_sense(&mut self, cdb: &[u8]) -> Action {
        let mut data = vec![0; 18];
        data[0] = 0x70 | 0x80; // current error, sense data valid
        data[2] = self.sense_key as u8;
        data[7] = 10; // additional length
        data[12] = self.asc as u8;
        if self.sense_key == SenseKey::UnitAttention {
            self.sense_key = SenseKey::NoSense;
        }
        Action::Reply { data, max_len: usize::from(cdb[4]) }
    }

    fn start_stop_unit(&mut self, cdb: &[u8], drive: DriveId, bus: &mut Bus) -> Result<Action, CheckCondition> {
        let start = cdb[4] & 1 != 0;
        let load_eject = cdb[4] & 2 != 0;
        let power_condition = cdb[4] & 0xf0;
        if power_condition != 0 || !load_eject {
            return Ok(Action::Good);
        }
        if !start && !self.tray_open && self.tray_locked {
            let key = if self.inserted() { SenseKey::NotReady } else { SenseKey::IllegalRequest };
            return Err(check(key, Asc::MediumRemovalPrevented));
        }
        let open = !start;
        if self.tray_open != open {
            self.tray_open = open;
            bus.push_event(IdeEvent::TrayMoved { drive, open });
        }
        Ok(Action::Good)
    }

    fn read(&self, lba: u64, nr_blocks: u64, block_len_bytes: usize) -> Result<Action, CheckCondition> {
        if nr_blocks == 0 {
            return Ok(Action::Good);
        }
        let total = self.nr_blocks();
        if lba >= total || lba + nr_blocks > total {
            return Err(LBA_OUT_OF_RANGE);
        }
        Ok(Action::Read { lba, nr_blocks, block_len_bytes })
    }

    fn read_cd(&self, cdb: &[u8], byte_count_limit: u16) -> Result<Action, CheckCondition> {
        let nr_blocks = be24(cdb, 6);
        if nr_blocks == 0 {
            return Ok(Action::Good);
        }
        let lba = be32(cdb, 2);
        let total = self.nr_blocks();
        if lba >= total || lba + nr_blocks > total {
            return Err(LBA_OUT_OF_RANGE);
        }
        let block_len_bytes = match cdb[9] & 0xf8 {
            0x00 => return Ok(Action::Good),
            _ if byte_count_limit == 0 => return Ok(Action::AbortBadByteCount),
            0x10 => CD_BLOCK_LEN_BYTES,
            0xf8 => CD_RAW_BLOCK_LEN_BYTES,
            _ => return Err(INVALID_FIELD),
        };
        self.read(lba, nr_blocks, block_len_bytes)
    }

    fn read_toc(&self, cdb: &[u8]) -> Result<Action, CheckCondition> {
        let max_len = be16(cdb, 7);
        let format = cdb[9] >> 6;
        let msf = cdb[1] & 0x02 != 0;
        let start_track = cdb[6];
        let total = self.nr_blocks();
        let data = match format {
            0 => toc(total, msf, start_track).ok_or(INVALID_FIELD)?,
            1 => {
                // multi-session information: a single session
                let mut data = vec![0; 12];
                data[1] = 0x0a;
                data[2] = 1;
                data[3] = 1;
                data
            }
            2 => raw_toc(total, msf),
            _ => return Err(INVALID_FIELD),
        };
        Ok(Action::Reply { data, max_len })
    }

    fn get_configuration(&self, cdb: &[u8]) -> Result<Action, CheckCondition> {
        const PROFILE_CD_ROM: u16 = 0x0008;
        const PROFILE_DVD_ROM: u16 = 0x0010;
        if cdb[2] != 0 || cdb[3] != 0 {
            // only starting feature 0 is supported
            return Err(INVALID_FIELD);
        }
        let max_len = be16(cdb, 7).min(512);
        let current = if self.is_dvd() {
            PROFILE_DVD_ROM
        } else if self.is_cd() {
            PROFILE_CD_ROM
        } else {
            0
        };
        let mut data = vec![0; 20];
        put_be32(&mut data, 0, 16); // data length after this field
        put_be16(&mut data, 6, current);
        // feature 0 (profile list): persistent, current, 8 bytes of profile descriptors
        data[10] = 0x03;
        data[11] = 8;
        for (at, profile) in [(12, PROFILE_DVD_ROM), (16, PROFILE_CD_ROM)] {
            put_be16(&mut data, at, profile);
            data[at + 2] = u8::from(profile == current);
        }
        Ok(Action::Reply { data, max_len })
    }

    fn get_event_status_notification(&mut self, cdb: &[u8]) -> Result<Action, CheckCondition> {
        const CLASS_MEDIA: u8 = 4;
        const MEDIA_STATUS_TRAY_OPEN: u8 = 1;
        const MEDIA_STATUS_PRESENT: u8 = 2;
        const EVENT_EJECT_REQUEST: u8 = 1;
        const EVENT_NEW_MEDIA: u8 = 2;
        if cdb[1] & 1 == 0 {
            // asynchronous notification is not supported
            return Err(INVALID_FIELD);
        }
        let max_len = be16(cdb, 7);
        let mut data = vec![0; 4];
        data[3] = 1 << CLASS_MEDIA; // supported classes
        if cdb[4] & (1 << CLASS_MEDIA) != 0 {
            data[2] = CLASS_MEDIA;
            let media_status = if self.tray_open {
                MEDIA_STATUS_TRAY_OPEN
            } else if self.inserted() {
                MEDIA_STATUS_PRESENT
            } else {
                0
            };
            let mut event = 0;
            if media_status != MEDIA_STATUS_TRAY_OPEN {
                if self.new_media {
                    event = EVENT_NEW_MEDIA;
                    self.new_media = false;
                } else if self.eject_request {
                    event = EVENT_EJECT_REQUEST;
                    self.eject_request = false;
                }
            }
            data.extend_from_slice(&[event, media_status, 0, 0]);
            put_be16(&mut data, 0, 4);
        } else {
            data[2] = 0x80; // no event available
        }
        Ok(Action::Reply { data, max_len })
    }

    fn mode_sense(&self, cdb: &[u8]) -> Result<Action, CheckCondition> {
        const PAGE_ERROR_RECOVERY: u8 = 0x01;
        const PAGE_AUDIO_CONTROL: u8 = 0x0e;
        const PAGE_CAPABILITIES: u8 = 0x2a;
        const PAGE_ALL: u8 = 0x3f;
        let max_len = be16(cdb, 7);
        let page_control = cdb[2] >> 6;
        let page = cdb[2] & 0x3f;
        match page_control {
            0 => {}
            3 => return Err(check(SenseKey::IllegalRequest, Asc::SavingParametersNotSupported)),
            _ => return Err(INVALID_FIELD), // changeable and default values
        }
        let pages: &[u8] = match page {
            PAGE_ERROR_RECOVERY => &[PAGE_ERROR_RECOVERY],
            PAGE_AUDIO_CONTROL => &[PAGE_AUDIO_CONTROL],
            PAGE_CAPABILITIES => &[PAGE_CAPABILITIES],
            PAGE_ALL => &[PAGE_ERROR_RECOVERY, PAGE_AUDIO_CONTROL, PAGE_CAPABILITIES],
            _ => return Err(INVALID_FIELD),
        };
        // header: mode data length, medium type 0x70, no block descriptors
        let mut data = vec![0; 8];
        data[2] = 0x70;
        for &code in pages {
            let start = data.len();
            match code {
                PAGE_ERROR_RECOVERY => {
                    data.extend_from_slice(&[PAGE_ERROR_RECOVERY, 6, 0x00, 0x05, 0, 0, 0, 0]);
                }
                PAGE_AUDIO_CONTROL => {
                    data.extend_from_slice(&[PAGE_AUDIO_CONTROL, 14]);
                    data.resize(start + 16, 0); // volumes 0
                }
                _ => {
                    data.extend_from_slice(&[PAGE_CAPABILITIES, 20]);
                    data.resize(start + 22, 0);
                    data[start + 2] = 0x3b; // reads CD-R/RW, DVD-ROM/R/RAM
                    data[start + 4] = 0x71; // audio play (some Linux code keys on it), multi-session, mode 2
                    data[start + 5] = 0x60; // CD-DA accurate, ...
                    // lock, eject; bit 1: locked now
                    data[start + 6] = 0x29 | if self.tray_locked { 0x02 } else { 0 };
                    put_be16(&mut data, start + 8, 704); // max read speed (4x)
                    data[start + 11] = 2; // volume levels
                    put_be16(&mut data, start + 12, 512); // buffer KiB
                    put_be16(&mut data, start + 14, 704); // current read speed
                }
            }
        }
        let mode_data_len = (data.len() - 2) as u16;
        put_be16(&mut data, 0, mode_data_len);
        Ok(Action::Reply { data, max_len })
    }

    fn read_dvd_structure(&self, cdb: &[u8]) -> Result<Action, CheckCondition> {
        let max_len = be16(cdb, 8);
        let media_type = cdb[1];
        let format = cdb[7];
        if format < 0xff {
            if self.is_cd() {
                return Err(check(SenseKey::IllegalRequest, Asc::IncompatibleFormat));
            }
            if !self.media_present() {
                return Err(INVALID_FIELD);
            }
        }
        if media_type != 0 || !(format <= 0x7f || format == 0xff) {
            return Err(INVALID_FIELD);
        }
        let total = self.nr_blocks();
        let data = match format {
            0x00 => {
                // physical format information, layer 0 only
                if cdb[6] != 0 {
                    return Err(INVALID_FIELD);
                }
                if total == 0 {
                    return Err(check(SenseKey::IllegalRequest, Asc::MediumNotPresent));
                }
                let mut data = vec![0; 2048 + 4];
                put_be16(&mut data, 0, 2048 + 2);
                data[4] = 1; // DVD-ROM, version 1
                data[5] = 0x0f; // 120 mm, maximum rate unspecified
                data[6] = 1; // one layer, read-only
                put_be32(&mut data, 12, (total - 1) as u32); // end sector
                put_be32(&mut data, 16, (total - 1) as u32); // layer 0 end sector
                data
            }
            0x01 => {
                // copyright: none, no region restriction
                let mut data = vec![0; 8];
                put_be16(&mut data, 0, 4 + 2);
                data
            }
            0x04 => {
                // disc manufacturing information
                let mut data = vec![0; 2048 + 4];
                put_be16(&mut data, 0, 2048 + 2);
                data
            }
            0xff => {
                // the structures listed above, readable, not writable
                let mut data = vec![0; 20];
                put_be16(&mut data, 0, 16 + 2);
                for (at, structure, len) in
                    [(4, 0x00, 2048 + 4), (8, 0x01, 4 + 4), (12, 0x03, 188 + 4), (16, 0x04, 2048 + 4)]
                {
                    data[at] = structure;
                    data[at + 1] = 0x40;
                    put_be16(&mut data, at + 2, len);
                }
                data
            }
            _ => return Err(INVALID_FIELD),
        };
        Ok(Action::Reply { data, max_len })
    }
}

/// Why a CDB did not get to its handler.
enum Precheck {
    /// a UNIT ATTENTION is pending: status ERR, error MC | UNIT ATTENTION << 4
    UnitAttentionPending,
    Check(CheckCondition),
}

fn inquiry(cdb: &[u8], position: u8) -> Result<Action, CheckCondition> {
    let max_len = usize::from(cdb[4]);
    let serial = serial_number(position);
    if cdb[1] & 1 == 0 {
        let mut data = vec![0; 36];
        data[0] = 0x05; // CD/DVD device
        data[1] = 0x80; // removable
        data[3] = 0x21; // ATAPI, response data format 1
        data[4] = 36 - 5; // additional length
        put_padded(&mut data[8..16], b"QEMU");
        put_padded(&mut data[16..32], CDROM_MODEL.as_bytes());
        put_padded(&mut data[32..36], FIRMWARE_REVISION.as_bytes());
        return Ok(Action::Reply { data, max_len });
    }
    // vital product data
    let mut data = vec![0x05, cdb[2], 0, 0];
    match cdb[2] {
        0x00 => data.extend_from_slice(&[0x00, 0x83]), // supported pages
        0x83 => {
            // device identification: serial number, then T10 vendor + model + serial
            if data.len() + 24 > max_len {
                return Err(check(SenseKey::IllegalRequest, Asc::DataPhaseError));
            }
            data.extend_from_slice(&[0x02, 0x00, 0x00, 20]);
            let mut field = [0u8; 20];
            put_padded(&mut field, &serial);
            data.extend_from_slice(&field);
            if data.len() + 72 <= max_len {
                data.extend_from_slice(&[0x02, 0x01, 0x00, 68]);
                let mut field = [0u8; 68];
                put_padded(&mut field[..8], b"ATA");
                put_padded(&mut field[8..48], CDROM_MODEL.as_bytes());
                put_padded(&mut field[48..68], &serial);
                data.extend_from_slice(&field);
            }
        }
        _ => return Err(INVALID_FIELD),
    }
    data[3] = (data.len() - 4) as u8;
    Ok(Action::Reply { data, max_len })
}

fn read_disc_information(cdb: &[u8]) -> Result<Action, CheckCondition> {
    if cdb[1] & 7 != 0 {
        // data types 1 and 2 are for BD
        return Err(INVALID_FIELD);
    }
    let mut data = vec![0; 34];
    data[1] = 32; // length after this field
    data[2] = 0x0e; // last session complete, disc finalized
    data[3] = 1; // first track on disc
    data[4] = 1; // sessions
    data[5] = 1; // first track of last session
    data[6] = 1; // last track of last session
    data[7] = 0x20; // unrestricted use
    Ok(Action::Reply { data, max_len: be16(cdb, 7) })
}

/// TOC format 0: one data track from LBA 0 and the lead-out (QEMU's `cdrom_read_toc`).
fn toc(nr_blocks: u64, msf: bool, start_track: u8) -> Option<Vec<u8>> {
    if start_track > 1 && start_track != 0xaa {
        return None;
    }
    let address = |lba: u64| -> [u8; 4] {
        if msf {
            let [m, s, f] = lba_to_msf(lba);
            [0, m, s, f]
        } else {
            (lba as u32).to_be_bytes()
        }
    };
    let mut data = vec![0, 0, 1, 1]; // length, first and last track
    if start_track <= 1 {
        data.extend_from_slice(&[0, 0x14, 1, 0]); // data track 1
        data.extend_from_slice(&address(0));
    }
    data.extend_from_slice(&[0, 0x16, 0xaa, 0]); // lead-out
    data.extend_from_slice(&address(nr_blocks));
    let len = (data.len() - 2) as u16;
    put_be16(&mut data, 0, len);
    Some(data)
}

/// TOC format 2 (raw): the A0/A1/A2 points and track 1 (QEMU's `cdrom_read_toc_raw`).
fn raw_toc(nr_blocks: u64, msf: bool) -> Vec<u8> {
    let mut data = vec![0, 0, 1, 1];
    data.extend_from_slice(&[1, 0x14, 0, 0xa0, 0, 0, 0, 0, 1, 0x00, 0x00]); // first track 1
    data.extend_from_slice(&[1, 0x14, 0, 0xa1, 0, 0, 0, 0, 1, 0x00, 0x00]); // last track 1
    data.extend_from_slice(&[1, 0x14, 0, 0xa2, 0, 0, 0]); // lead-out
    if msf {
        let [m, s, f] = lba_to_msf(nr_blocks);
        data.extend_from_slice(&[0, m, s, f]);
    } else {
        data.extend_from_slice(&(nr_blocks as u32).to_be_bytes());
    }
    data.extend_from_slice(&[1, 0x14, 0, 1, 0, 0, 0]); // track 1
    if msf {
        let [m, s, f] = lba_to_msf(0);
        data.extend_from_slice(&[0, m, s, f]);
    } else {
        data.extend_from_slice(&[0, 0, 0, 0]);
    }
    let len = (data.len() - 2) as u16;
    put_be16(&mut data, 0, len);
    data
}

/// A raw 2352-byte block around 2048 bytes of user data: sync, header (MSF, mode 1), data,
/// and zeroes where EDC/ECC would be (QEMU's `cd_data_to_raw`).
fn raw_block(lba: u64, user_data: &[u8], out: &mut Vec<u8>) {
    out.push(0x00);
    out.extend_from_slice(&[0xff; 10]);
    out.push(0x00);
    out.extend_from_slice(&lba_to_msf(lba));
    out.push(0x01);
    out.extend_from_slice(user_data);
    out.extend_from_slice(&[0; 288]);
}

impl Drive {
    /// PACKET: wait for the CDB.
    pub fn cmd_packet(&mut self) -> bool {
        // overlapped commands and DMA are not supported
        if self.tf.feature & 0x03 != 0 {
            self.abort_command();
            return true;
        }
        self.tf.status = status::DRDY | status::DSC;
        self.tf.nsector = reason::COD;
        self.fresh_io(PACKET_LEN_BYTES);
        self.transfer_start(0, PACKET_LEN_BYTES, false, PioEnd::AtapiPacket);
        false
    }

    /// The byte count limit from LBA mid/high (0xffff counts as 0xfffe).
    fn byte_count_limit(&self) -> u16 {
        match u16::from_le_bytes([self.tf.lcyl, self.tf.hcyl]) {
            0xffff => 0xfffe,
            limit => limit,
        }
    }

    pub fn atapi_packet_received(&mut self, bus: &mut Bus) {
        let mut cdb = [0u8; PACKET_LEN_BYTES];
        for (slot, byte) in cdb.iter_mut().zip(&self.io) {
            *slot = *byte;
        }
        let byte_count_limit = self.byte_count_limit();
        let (id, position) = (self.id, self.position());
        let Media::Cd(cd) = &mut self.media else {
            self.transfer_stop();
            return;
        };
        log::trace!("ide {id:?}: packet {cdb:02x?} limit {byte_count_limit}");
        match cd.execute(&cdb, byte_count_limit, id, position, bus) {
            Ok(Action::Good) => self.atapi_good(bus),
            Ok(Action::Reply { mut data, max_len }) => {
                data.truncate(max_len);
                self.transfer =
                    Transfer::Atapi(AtapiTransfer { bytes_left: data.len() as u64, data_start: 0, fetch: None });
                self.io = data;
                self.tf.status = status::DRDY | status::DSC;
                self.atapi_reply_next(bus);
            }
            Ok(Action::Read { lba, nr_blocks, block_len_bytes }) => {
                self.transfer = Transfer::Atapi(AtapiTransfer {
                    bytes_left: nr_blocks * block_len_bytes as u64,
                    data_start: 0,
                    fetch: Some(CdFetch { next_block: lba, nr_blocks, block_len_bytes }),
                });
                self.io = Vec::new();
                self.tf.status = status::DRDY | status::DSC;
                self.atapi_reply_next(bus);
            }
            Ok(Action::AbortBadByteCount) => {
                self.abort_command();
                self.set_reason(reason::IO | reason::COD);
                bus.raise_irq();
            }
            Err(Precheck::UnitAttentionPending) => {
                self.transfer_stop();
                self.tf.error = error::MC | (SenseKey::UnitAttention as u8) << 4;
                self.tf.status = status::ERR;
                self.tf.nsector = 0;
                bus.raise_irq();
            }
            Err(Precheck::Check(failure)) => self.atapi_error(bus, failure),
        }
    }

    fn set_reason(&mut self, bits: u32) {
        self.tf.nsector = (self.tf.nsector & !7) | bits;
    }

    /// Good status: 0x50, interrupt reason IO|CoD, interrupt.
    fn atapi_good(&mut self, bus: &mut Bus) {
        self.transfer = Transfer::None;
        self.tf.error = 0;
        self.tf.status = status::DRDY | status::DSC;
        self.set_reason(reason::IO | reason::COD);
        self.transfer_stop();
        bus.raise_irq();
    }

    /// CHECK CONDITION: 0x51, error = sense key << 4, sense kept, interrupt.
    fn atapi_error(&mut self, bus: &mut Bus, failure: CheckCondition) {
        log::trace!("ide {:?}: check condition {failure:?}", self.id);
        self.transfer = Transfer::None;
        self.tf.error = (failure.key as u8) << 4;
        self.tf.status = status::DRDY | status::ERR;
        self.set_reason(reason::IO | reason::COD);
        if let Media::Cd(cd) = &mut self.media {
            cd.sense_key = failure.key;
            cd.asc = failure.asc;
        }
        self.transfer_stop();
        bus.raise_irq();
    }

    /// The next DRQ block of a reply, a fetch, or the end (QEMU's
    /// `ide_atapi_cmd_reply_end`): after the CDB and each time the guest has drained a block.
    pub fn atapi_reply_next(&mut self, bus: &mut Bus) {
        let Transfer::Atapi(mut transfer) = self.transfer else {
            self.transfer_stop();
            return;
        };
        if transfer.bytes_left == 0 {
            self.atapi_good(bus);
            return;
        }
        let limit = u64::from(self.byte_count_limit());
        let mut block_len = transfer.bytes_left;
        if block_len > limit {
            block_len = limit & !1;
        }
        if block_len == 0 {
            // a limit of 1: QEMU would stall with an empty block
            block_len = transfer.bytes_left.min(2);
        }
        let block_len = block_len as usize;
        let buffered = self.io.len().saturating_sub(transfer.data_start);
        if buffered < block_len {
            match transfer.fetch {
                Some(fetch) if fetch.nr_blocks > 0 => self.cd_fetch(bus, fetch),
                _ => self.atapi_error(bus, LBA_OUT_OF_RANGE),
            }
            return;
        }
        let start = transfer.data_start;
        transfer.data_start += block_len;
        transfer.bytes_left -= block_len as u64;
        self.transfer = Transfer::Atapi(transfer);
        self.set_reason(reason::IO);
        self.tf.lcyl = block_len as u8;
        self.tf.hcyl = (block_len >> 8) as u8;
        self.tf.status = status::DRDY | status::DSC;
        self.transfer_start(start, block_len, true, PioEnd::AtapiReply);
        bus.raise_irq();
    }

    /// Asks for the next blocks of an ATAPI read (at most 64 KiB of PV disk).
    fn cd_fetch(&mut self, bus: &mut Bus, fetch: CdFetch) {
        let Media::Cd(cd) = &self.media else {
            return;
        };
        if !cd.media_present() {
            self.atapi_error(bus, MEDIUM_NOT_PRESENT);
            return;
        }
        if fetch.next_block.saturating_add(fetch.nr_blocks) > cd.nr_blocks() {
            self.atapi_error(bus, LBA_OUT_OF_RANGE);
            return;
        }
        let max_blocks = (MAX_REQUEST_SECTORS as usize * 512 / fetch.block_len_bytes) as u64;
        let nr_blocks = fetch.nr_blocks.min(max_blocks) as u32;
        self.submit(
            bus,
            Pending::CdRead { nr_blocks },
            BlockOp::Read { sector: fetch.next_block * 4, nr_sectors: nr_blocks * 4 },
        );
    }

    pub fn cd_read_arrived(&mut self, bus: &mut Bus, data: Vec<u8>) {
        let Transfer::Atapi(mut transfer) = self.transfer else {
            return;
        };
        let Some(mut fetch) = transfer.fetch else {
            return;
        };
        // drop what the guest has read, append the new blocks
        self.io.drain(..transfer.data_start.min(self.io.len()));
        transfer.data_start = 0;
        let nr_blocks = data.len() / CD_BLOCK_LEN_BYTES;
        if fetch.block_len_bytes == CD_RAW_BLOCK_LEN_BYTES {
            for (i, user_data) in data.chunks_exact(CD_BLOCK_LEN_BYTES).enumerate() {
                raw_block(fetch.next_block + i as u64, user_data, &mut self.io);
            }
        } else {
            self.io.extend_from_slice(&data);
        }
        fetch.next_block += nr_blocks as u64;
        fetch.nr_blocks = fetch.nr_blocks.saturating_sub(nr_blocks as u64);
        transfer.fetch = Some(fetch);
        self.transfer = Transfer::Atapi(transfer);
        self.atapi_reply_next(bus);
    }

    /// The PV disk failed a CD read: QEMU reports ILLEGAL REQUEST / LBA OUT OF RANGE for
    /// any read error other than a missing medium.
    pub fn cd_read_failed(&mut self, bus: &mut Bus) {
        let medium_gone = matches!(&self.media, Media::Cd(cd) if !cd.inserted());
        self.atapi_error(bus, if medium_gone { MEDIUM_NOT_PRESENT } else { LBA_OUT_OF_RANGE });
    }

    pub fn set_medium(&mut self, bus: &mut Bus, medium_nr_sectors: Option<u64>) {
        if let Media::Cd(cd) = &mut self.media {
            cd.medium_nr_sectors = medium_nr_sectors;
            cd.changed(bus);
        }
    }

    pub fn set_tray_open(&mut self, bus: &mut Bus, open: bool) {
        if let Media::Cd(cd) = &mut self.media
            && cd.tray_open != open
        {
            cd.tray_open = open;
            cd.changed(bus);
        }
    }

    /// QEMU's `ide_cd_eject_request_cb` without force.
    pub fn request_eject(&mut self, bus: &mut Bus) {
        if let Media::Cd(cd) = &mut self.media {
            cd.eject_request = true;
            bus.raise_irq();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toc_of_a_small_disc_in_lba_and_msf() {
        let lba = toc(1000, false, 0).unwrap();
        assert_eq!(lba, [0, 18, 1, 1, 0, 0x14, 1, 0, 0, 0, 0, 0, 0, 0x16, 0xaa, 0, 0, 0, 0x03, 0xe8]);
        let msf = toc(1000, true, 1).unwrap();
        // track 1 at 00:02:00, lead-out at 1150 frames = 00:15:25
        assert_eq!(&msf[8..12], &[0, 0, 2, 0]);
        assert_eq!(&msf[16..20], &[0, 0, 15, 25]);
        assert_eq!(toc(1000, false, 2), None);
        assert_eq!(toc(1000, false, 0xaa).unwrap().len(), 12);
    }

    #[test]
    fn raw_toc_is_four_descriptors() {
        let raw = raw_toc(1000, false);
        assert_eq!(raw.len(), 4 + 4 * 11);
        assert_eq!(u16::from_be_bytes([raw[0], raw[1]]) as usize, raw.len() - 2);
    }

    #[test]
    fn raw_block_layout() {
        let mut out = Vec::new();
        raw_block(0, &[0xab; 2048], &mut out);
        assert_eq!(out.len(), CD_RAW_BLOCK_LEN_BYTES);
        assert_eq!(&out[..16], &[0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0, 2, 0, 1]);
        assert!(out[16..2064].iter().all(|&b| b == 0xab));
        assert!(out[2064..].iter().all(|&b| b == 0));
    }
}
