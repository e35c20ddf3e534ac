//! The device model's state as our stub domain writes it for `xen-save-devices-state`
//! into fdset 1, its console 1, whose dom0 end (the stub domain's dom0 QEMU) appends
//! it to /var/lib/xen/qemu-save.<guest> (reference dom0-helper.md §3.5: the file is
//! opened once per stub domain, so a second save follows the first in it).
//!
//! So a checkpoint reads only what the current save added: the file's length before
//! the QMP command is the offset, and the frame starting there (devices/src/
//! state_file.rs: magic `RSTUBDM1`, payload length u32 LE, payload, FNV-1a 32 of the
//! payload u32 LE, `RSTUBEND`) is waited for until it is complete, because the QMP
//! reply can come before dom0's QEMU has drained the console into the file. The whole
//! frame is the EMULATOR_CONTEXT body (the restoring stub domain reads the frame).

const MAGIC: &[u8; 8] = b"RSTUBDM1";
const END: &[u8; 8] = b"RSTUBEND";
const HEADER_BYTES: usize = 12;
const TRAILER_BYTES: usize = 12;
/// The largest payload accepted (the stub domain's own limit).
pub const MAX_PAYLOAD_BYTES: usize = 1 << 20;

/// Why the bytes after the offset are not our device state.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DmStateError {
    #[error("the saved device state starts with {0:02x?}, not the stub domain's magic")]
    NotAStateFile(Vec<u8>),
    #[error("the saved device state claims {0} bytes, over the {MAX_PAYLOAD_BYTES}-byte limit")]
    TooLarge(usize),
    #[error("the saved device state's checksum does not match")]
    Checksum,
    #[error("the saved device state's end marker is missing")]
    BadTrailer,
}

fn fnv1a(data: &[u8]) -> u32 {
    data.iter().fold(0x811c_9dc5u32, |hash, &byte| (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193))
}

/// The complete frame at the start of `bytes`, `Ok(None)` while it is incomplete
/// (bytes after it are ignored).
pub fn frame(bytes: &[u8]) -> Result<Option<&[u8]>, DmStateError> {
    let start = &bytes[..bytes.len().min(MAGIC.len())];
    if start != &MAGIC[..start.len()] {
        return Err(DmStateError::NotAStateFile(start.to_vec()));
    }
    let Some(len_bytes) = bytes.get(8..HEADER_BYTES) else { return Ok(None) };
    let payload_len = u32::from_le_bytes([len_bytes[0], len_bytes[1], len_bytes[2], len_bytes[3]]) as usize;
    if payload_len > MAX_PAYLOAD_BYTES {
        return Err(DmStateError::TooLarge(payload_len));
    }
    let total = HEADER_BYTES + payload_len + TRAILER_BYTES;
    let Some(whole) = bytes.get(..total) else { return Ok(None) };
    let (payload, trailer) = whole[HEADER_BYTES..].split_at(payload_len);
    if &trailer[4..] != END {
        return Err(DmStateError::BadTrailer);
    }
    if u32::from_le_bytes([trailer[0], trailer[1], trailer[2], trailer[3]]) != fnv1a(payload) {
        return Err(DmStateError::Checksum);
    }
    Ok(Some(whole))
}

/// Where the current save's frame starts in a file that was `before` bytes long
/// before the save and is `now` bytes long: after the old content, or at 0 if the
/// file was recreated meanwhile (shorter than before).
pub fn offset(before: u64, now: u64) -> u64 {
    if now < before { 0 } else { before }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(payload: &[u8]) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        out.extend_from_slice(payload);
        out.extend_from_slice(&fnv1a(payload).to_le_bytes());
        out.extend_from_slice(END);
        out
    }

    #[test]
    fn a_frame_is_found_only_when_complete() {
        let whole = encode(b"device state");
        for cut in 0..whole.len() {
            assert_eq!(frame(&whole[..cut]), Ok(None), "cut at {cut}");
        }
        let mut longer = whole.clone();
        longer.extend_from_slice(b"next");
        assert_eq!(frame(&longer), Ok(Some(&whole[..])));
        // The FNV-1a 32 of "a" (a published test vector), as the stub domain computes it.
        assert_eq!(fnv1a(b"a"), 0xe40c_292c);
    }

    #[test]
    fn damaged_frames_are_refused() {
        let whole = encode(b"device state");
        assert!(matches!(frame(b"QEVM\0\0\0\x03"), Err(DmStateError::NotAStateFile(_))));
        let mut flipped = whole.clone();
        flipped[14] ^= 1;
        assert_eq!(frame(&flipped), Err(DmStateError::Checksum));
        let mut trailer = whole.clone();
        let last = trailer.len() - 1;
        trailer[last] = b'X';
        assert_eq!(frame(&trailer), Err(DmStateError::BadTrailer));
        let mut huge = MAGIC.to_vec();
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(frame(&huge), Err(DmStateError::TooLarge(u32::MAX as usize)));
    }

    #[test]
    fn the_offset_skips_earlier_saves() {
        assert_eq!(offset(100, 180), 100);
        assert_eq!(offset(100, 100), 100);
        assert_eq!(offset(100, 40), 0);
    }
}
