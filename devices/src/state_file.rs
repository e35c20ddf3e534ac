//! The device-model state file as it crosses the save (1) and restore (2) consoles.
//!
//! On save, libxl asks for `xen-save-devices-state` into fdset 1, our console 1, whose
//! dom0 end is the file /var/lib/xen/qemu-save.<guest>; libxl copies that file into the
//! save image. On restore it replays the file into console 2. A PV console carries
//! bytes but no end of file, so the file is framed: the reader knows from the header how
//! much to wait for and from the trailer that it got all of it.
//!
//! Layout (little-endian): magic `RSTUBDM1`, payload length u32, payload, FNV-1a 32 of
//! the payload u32, end magic `RSTUBEND`.

use alloc::vec::Vec;
use core::fmt;

const MAGIC: &[u8; 8] = b"RSTUBDM1";
const END: &[u8; 8] = b"RSTUBEND";
const HEADER: usize = 12;
const TRAILER: usize = 12;
/// The largest payload a reader accepts (a state file is small; this bounds memory).
pub const MAX_PAYLOAD: usize = 16 << 20;

/// Frames `payload` as a state file.
pub fn encode(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + payload.len() + TRAILER);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(payload);
    out.extend_from_slice(&fnv1a(payload).to_le_bytes());
    out.extend_from_slice(END);
    out
}

fn fnv1a(data: &[u8]) -> u32 {
    data.iter().fold(0x811c_9dc5u32, |hash, &byte| (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193))
}

/// Why bytes are not a state file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StateFileError {
    /// the first bytes are not our magic (`QEVM` would be a real QEMU's stream)
    NotAStateFile([u8; 8]),
    TooLarge(usize),
    Checksum,
    BadTrailer,
    /// [`decode`] of a file that stops early
    Truncated {
        have: usize,
        need: usize,
    },
}

impl fmt::Display for StateFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StateFileError::NotAStateFile(start) if start.starts_with(b"QEVM") => {
                write!(f, "the saved device state is a QEMU migration stream, not this device model's")
            }
            StateFileError::NotAStateFile(start) => {
                write!(f, "the saved device state starts with {start:02x?}, not this device model's magic")
            }
            StateFileError::TooLarge(len) => {
                write!(f, "a device state of {len} bytes is over the {MAX_PAYLOAD}-byte limit")
            }
            StateFileError::Checksum => write!(f, "the device state's checksum does not match"),
            StateFileError::BadTrailer => write!(f, "the device state's end marker is missing"),
            StateFileError::Truncated { have, need } => {
                write!(f, "the device state stops after {have} of {need} bytes")
            }
        }
    }
}

/// Collects a state file from pieces as a console delivers them.
#[derive(Default)]
pub struct Reader {
    buf: Vec<u8>,
}

impl Reader {
    pub fn new() -> Reader {
        Reader::default()
    }

    /// Bytes needed before the file is complete (as far as is known yet).
    fn needed(&self) -> Result<usize, StateFileError> {
        if self.buf.len() < HEADER {
            return Ok(HEADER);
        }
        let mut magic = [0u8; 8];
        magic.copy_from_slice(&self.buf[..8]);
        if &magic != MAGIC {
            return Err(StateFileError::NotAStateFile(magic));
        }
        let len = u32::from_le_bytes([self.buf[8], self.buf[9], self.buf[10], self.buf[11]]) as usize;
        if len > MAX_PAYLOAD {
            return Err(StateFileError::TooLarge(len));
        }
        Ok(HEADER + len + TRAILER)
    }

    /// Takes the next bytes; returns the payload once the file is complete. Bytes after
    /// the end are ignored (a console may carry nothing else, but it may pad).
    pub fn push(&mut self, mut data: &[u8]) -> Result<Option<Vec<u8>>, StateFileError> {
        while !data.is_empty() {
            let need = self.needed()?;
            let take = need.saturating_sub(self.buf.len()).min(data.len());
            if take == 0 {
                break;
            }
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
        }
        let need = self.needed()?;
        if self.buf.len() < need {
            return Ok(None);
        }
        let payload = &self.buf[HEADER..need - TRAILER];
        let trailer = &self.buf[need - TRAILER..need];
        if &trailer[4..] != END {
            return Err(StateFileError::BadTrailer);
        }
        if u32::from_le_bytes([trailer[0], trailer[1], trailer[2], trailer[3]]) != fnv1a(payload) {
            return Err(StateFileError::Checksum);
        }
        Ok(Some(payload.to_vec()))
    }

    /// How many bytes arrived so far.
    pub fn received(&self) -> usize {
        self.buf.len()
    }
}

/// Decodes a whole state file.
pub fn decode(file: &[u8]) -> Result<Vec<u8>, StateFileError> {
    let mut reader = Reader::new();
    match reader.push(file)? {
        Some(payload) => Ok(payload),
        None => Err(StateFileError::Truncated { have: file.len(), need: reader.needed()? }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;
    use alloc::vec;

    #[test]
    fn round_trip_byte_by_byte_and_whole() {
        for payload in [vec![], vec![7u8; 1], (0..=255u8).cycle().take(70_000).collect::<Vec<_>>()] {
            let file = encode(&payload);
            assert_eq!(decode(&file).unwrap(), payload);
            let mut reader = Reader::new();
            let mut done = None;
            for (i, byte) in file.iter().enumerate() {
                let got = reader.push(core::slice::from_ref(byte)).unwrap();
                assert_eq!(got.is_some(), i == file.len() - 1);
                done = got.or(done);
            }
            assert_eq!(done.unwrap(), payload);
        }
    }

    #[test]
    fn trailing_bytes_are_ignored() {
        let mut file = encode(b"state");
        file.extend_from_slice(b"\r\npadding");
        assert_eq!(decode(&file).unwrap(), b"state");
    }

    #[test]
    fn damage_is_reported() {
        let file = encode(b"device state");
        let mut flipped = file.clone();
        flipped[14] ^= 1;
        assert_eq!(decode(&flipped), Err(StateFileError::Checksum));
        let mut end = file.clone();
        let last = end.len() - 1;
        end[last] = b'X';
        assert_eq!(decode(&end), Err(StateFileError::BadTrailer));
        assert_eq!(decode(&file[..20]), Err(StateFileError::Truncated { have: 20, need: file.len() }));
        let qemu = decode(b"QEVM\0\0\0\x03more bytes");
        assert!(qemu.as_ref().unwrap_err().to_string().contains("QEMU migration stream"), "{qemu:?}");
        let mut huge = file.clone();
        huge[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decode(&huge), Err(StateFileError::TooLarge(u32::MAX as usize)));
    }
}
