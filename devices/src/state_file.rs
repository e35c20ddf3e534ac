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
//!
//! The restore stream comes from dom0's save image, which need not be ours or intact,
//! so the reader trusts no length it has not checked: a header claiming more than
//! the reader's limit is refused before any payload is read, and the buffer for a
//! payload within the limit is reserved whole, fallibly, so a heap that cannot hold
//! it is an error value ([`StateFileError::OutOfMemory`]), never an allocation failure
//! that ends the domain.

use alloc::vec::Vec;

const MAGIC: &[u8; 8] = b"RSTUBDM1";
const END: &[u8; 8] = b"RSTUBEND";
const HEADER_BYTES: usize = 12;
const TRAILER_BYTES: usize = 12;
/// The largest payload [`Reader::new`] and [`decode`] accept. The device state of an
/// emulated PC (PCI config space, IDE, UART, NIC registers) is a few KiB; guest RAM
/// and video memory are never part of it. 1 MiB leaves room while keeping the
/// buffer a small part of a 16 MiB stub domain's heap.
pub const MAX_PAYLOAD_BYTES: usize = 1 << 20;

/// Frames `payload` as a state file.
pub fn encode(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_BYTES + payload.len() + TRAILER_BYTES);
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
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StateFileError {
    /// The first bytes are not our magic (`QEVM` would be a real QEMU's stream).
    #[error("{}", describe_start(.0))]
    NotAStateFile([u8; 8]),
    /// The header claims a payload over the reader's limit; refused before reading it.
    #[error("the saved device state claims {len_bytes} bytes, over the {max_bytes}-byte limit")]
    TooLarge { len_bytes: usize, max_bytes: usize },
    /// The heap cannot hold a payload of this size (within the limit).
    #[error("no memory for a device state of {len_bytes} bytes")]
    OutOfMemory { len_bytes: usize },
    #[error("the device state's checksum does not match")]
    Checksum,
    #[error("the device state's end marker is missing")]
    BadTrailer,
    /// [`decode`] of a file that stops early.
    #[error("the device state stops after {have} of {need} bytes")]
    Truncated { have: usize, need: usize },
}

fn describe_start(start: &[u8; 8]) -> alloc::string::String {
    if start.starts_with(b"QEVM") {
        "the saved device state is a QEMU migration stream, not this device model's".into()
    } else {
        alloc::format!("the saved device state starts with {start:02x?}, not this device model's magic")
    }
}

/// The payload length a header announces, checked against `max_bytes`.
fn parse_header(header: &[u8; HEADER_BYTES], max_bytes: usize) -> Result<usize, StateFileError> {
    let mut magic = [0u8; 8];
    magic.copy_from_slice(&header[..8]);
    if &magic != MAGIC {
        return Err(StateFileError::NotAStateFile(magic));
    }
    let len_bytes = u32::from_le_bytes([header[8], header[9], header[10], header[11]]) as usize;
    if len_bytes > max_bytes {
        return Err(StateFileError::TooLarge { len_bytes, max_bytes });
    }
    Ok(len_bytes)
}

/// Checks the trailer that follows `payload`.
fn check_trailer(payload: &[u8], trailer: &[u8]) -> Result<(), StateFileError> {
    if trailer.get(4..) != Some(END.as_slice()) {
        return Err(StateFileError::BadTrailer);
    }
    let checksum = trailer.get(..4).and_then(|bytes| bytes.try_into().ok()).map(u32::from_le_bytes);
    if checksum != Some(fnv1a(payload)) {
        return Err(StateFileError::Checksum);
    }
    Ok(())
}

/// A buffer for `len` bytes, reserved whole or not at all.
fn reserve(len_bytes: usize) -> Result<Vec<u8>, StateFileError> {
    let mut buf = Vec::new();
    buf.try_reserve_exact(len_bytes).map_err(|_| StateFileError::OutOfMemory { len_bytes })?;
    Ok(buf)
}

/// Collects a state file from pieces as a console delivers them.
#[derive(Debug)]
pub struct Reader {
    max_payload_bytes: usize,
    header: [u8; HEADER_BYTES],
    header_len: usize,
    /// The announced payload length, once the header is in and checked.
    payload_len: Option<usize>,
    /// Payload then trailer, reserved whole once the header is checked.
    body: Vec<u8>,
    /// The first error, returned again by every later `push`.
    failed: Option<StateFileError>,
    /// The payload was handed out; bytes after the file are ignored.
    done: bool,
}

impl Default for Reader {
    fn default() -> Self {
        Reader::new()
    }
}

impl Reader {
    /// A reader for payloads up to [`MAX_PAYLOAD_BYTES`].
    pub fn new() -> Reader {
        Reader::with_max_payload(MAX_PAYLOAD_BYTES)
    }

    /// A reader for payloads up to `max_payload_bytes` (say, what the heap can spare).
    pub fn with_max_payload(max_payload_bytes: usize) -> Reader {
        Reader {
            max_payload_bytes,
            header: [0; HEADER_BYTES],
            header_len: 0,
            payload_len: None,
            body: Vec::new(),
            failed: None,
            done: false,
        }
    }

    /// Takes the next bytes; returns the payload once the file is complete. Bytes after
    /// the end are ignored (a console may carry nothing else, but it may pad). After an
    /// error, every later call returns the same error.
    pub fn push(&mut self, data: &[u8]) -> Result<Option<Vec<u8>>, StateFileError> {
        if let Some(error) = &self.failed {
            return Err(error.clone());
        }
        let result = self.take(data);
        if let Err(error) = &result {
            self.failed = Some(error.clone());
            self.body = Vec::new();
        }
        result
    }

    fn take(&mut self, mut data: &[u8]) -> Result<Option<Vec<u8>>, StateFileError> {
        if self.done {
            return Ok(None);
        }
        if self.header_len < HEADER_BYTES {
            let n = (HEADER_BYTES - self.header_len).min(data.len());
            self.header[self.header_len..self.header_len + n].copy_from_slice(&data[..n]);
            self.header_len += n;
            data = &data[n..];
            if self.header_len < HEADER_BYTES {
                return Ok(None);
            }
        }
        let payload_len = match self.payload_len {
            Some(len) => len,
            None => {
                let len = parse_header(&self.header, self.max_payload_bytes)?;
                self.body = reserve(len + TRAILER_BYTES)?;
                self.payload_len = Some(len);
                len
            }
        };
        let want = payload_len + TRAILER_BYTES - self.body.len();
        let n = want.min(data.len());
        // Within the reserved capacity: no allocation.
        self.body.extend_from_slice(&data[..n]);
        if self.body.len() < payload_len + TRAILER_BYTES {
            return Ok(None);
        }
        let (payload, trailer) = self.body.split_at(payload_len);
        check_trailer(payload, trailer)?;
        self.done = true;
        let mut payload = core::mem::take(&mut self.body);
        payload.truncate(payload_len);
        Ok(Some(payload))
    }

    /// How many bytes of the file arrived so far (bytes after its end not counted).
    pub fn received(&self) -> usize {
        let body = if self.done { self.payload_len.unwrap_or(0) + TRAILER_BYTES } else { self.body.len() };
        self.header_len + body
    }

    /// Bytes the file needs in all, once the header says.
    fn needed(&self) -> Option<usize> {
        self.payload_len.map(|len| HEADER_BYTES + len + TRAILER_BYTES)
    }
}

/// Collects the state files a restore stream holds and keeps the last complete one:
/// libxl's qemu-save file can hold an older state before the newest (a device model
/// asked to save twice, as `xl save -c` does, writes two files to one console).
///
/// A file after a complete one replaces it once it is complete and intact; bytes
/// after a complete file that do not start a new one (padding) end the search, and
/// so does a later file that is damaged: the last complete state stands. An error
/// before any complete file is the reader's error.
#[derive(Debug)]
pub struct LatestReader {
    current: Reader,
    latest: Option<Vec<u8>>,
    /// no later file can follow (bytes after the last one were not a file)
    closed: bool,
    /// bytes of the stream taken, the current file's included
    received_before: usize,
}

impl Default for LatestReader {
    fn default() -> Self {
        LatestReader::new()
    }
}

impl LatestReader {
    /// A reader for payloads up to [`MAX_PAYLOAD_BYTES`].
    pub fn new() -> LatestReader {
        LatestReader::with_max_payload(MAX_PAYLOAD_BYTES)
    }

    pub fn with_max_payload(max_payload_bytes: usize) -> LatestReader {
        LatestReader {
            current: Reader::with_max_payload(max_payload_bytes),
            latest: None,
            closed: false,
            received_before: 0,
        }
    }

    /// Takes the next bytes. Errors only while no complete file has arrived (and then
    /// every later call repeats it).
    pub fn push(&mut self, mut data: &[u8]) -> Result<(), StateFileError> {
        while !data.is_empty() && !self.closed {
            let before = self.current.received();
            match self.current.push(data) {
                Ok(Some(payload)) => {
                    let taken = self.current.received() - before;
                    data = data.get(taken..).unwrap_or_default();
                    self.received_before += self.current.received();
                    self.latest = Some(payload);
                    self.current = Reader::with_max_payload(self.current.max_payload_bytes);
                }
                Ok(None) => return Ok(()),
                Err(error) if self.latest.is_none() => return Err(error),
                Err(_) => self.closed = true,
            }
        }
        Ok(())
    }

    /// The last complete payload so far.
    pub fn latest(&self) -> Option<&[u8]> {
        self.latest.as_deref()
    }

    /// A later file has begun and is not complete yet (worth waiting for).
    pub fn later_file_in_progress(&self) -> bool {
        self.latest.is_some() && !self.closed && self.current.received() > 0
    }

    /// The last complete payload, if any.
    pub fn finish(self) -> Option<Vec<u8>> {
        self.latest
    }

    /// Bytes of the stream taken so far (padding after the last file not counted).
    pub fn received(&self) -> usize {
        self.received_before + if self.closed { 0 } else { self.current.received() }
    }
}

/// Decodes a whole state file (payload up to [`MAX_PAYLOAD_BYTES`]).
pub fn decode(file: &[u8]) -> Result<Vec<u8>, StateFileError> {
    let Some(header) = file.first_chunk::<HEADER_BYTES>() else {
        return Err(StateFileError::Truncated { have: file.len(), need: HEADER_BYTES });
    };
    let payload_len = parse_header(header, MAX_PAYLOAD_BYTES)?;
    let need = HEADER_BYTES + payload_len + TRAILER_BYTES;
    let (Some(payload), Some(trailer)) =
        (file.get(HEADER_BYTES..HEADER_BYTES + payload_len), file.get(HEADER_BYTES + payload_len..need))
    else {
        return Err(StateFileError::Truncated { have: file.len(), need });
    };
    check_trailer(payload, trailer)?;
    let mut out = reserve(payload_len)?;
    out.extend_from_slice(payload);
    Ok(out)
}

/// Checks the reader's promises on arbitrary input, for the fuzz target
/// (devices/fuzz) and the host tests: never a panic; the first byte picks the
/// piece size the rest is pushed in and a small limit; a payload comes out only for
/// a whole, intact file, equal to what `decode` finds, and `encode` of it gives the
/// file back; after an error every push repeats it.
pub fn check_reader(data: &[u8]) -> Result<(), alloc::string::String> {
    use alloc::format;
    let Some((&control, input)) = data.split_first() else { return Ok(()) };
    let piece = usize::from(control & 0x3f) + 1;
    let max_payload_bytes = if control & 0x40 != 0 { 256 } else { MAX_PAYLOAD_BYTES };
    let mut reader = Reader::with_max_payload(max_payload_bytes);
    let mut outcome = None;
    for chunk in input.chunks(piece) {
        match reader.push(chunk) {
            Ok(Some(payload)) => {
                if outcome.is_some() {
                    return Err("a second payload from one reader".into());
                }
                outcome = Some(Ok(payload));
            }
            Ok(None) => {}
            Err(error) => {
                if reader.push(b"more").as_ref() != Err(&error) {
                    return Err(format!("after {error:?}, a later push did not repeat it"));
                }
                outcome = Some(Err(error));
                break;
            }
        }
        if reader.received() > input.len() {
            return Err(format!("received {} of {} bytes", reader.received(), input.len()));
        }
    }
    match outcome {
        Some(Ok(payload)) => {
            let file = encode(&payload);
            if input.get(..file.len()) != Some(file.as_slice()) {
                return Err("the payload does not re-encode to the input's file".into());
            }
            if payload.len() <= MAX_PAYLOAD_BYTES && decode(input).as_ref() != Ok(&payload) {
                return Err("decode disagrees with the reader".into());
            }
            if reader.received() != file.len() {
                return Err(format!("received {} for a {}-byte file", reader.received(), file.len()));
            }
        }
        Some(Err(StateFileError::TooLarge { len_bytes, max_bytes })) if len_bytes <= max_bytes => {
            return Err(format!("TooLarge for {len_bytes} bytes within the {max_bytes}-byte limit"));
        }
        Some(Err(StateFileError::TooLarge { .. })) if reader.received() > HEADER_BYTES => {
            return Err("an oversized header was not refused before its payload".into());
        }
        Some(Err(_)) => {}
        None => {
            if let Some(need) = reader.needed()
                && input.len() >= need
            {
                return Err(format!("{} bytes in, a {need}-byte file, and no payload", input.len()));
            }
        }
    }
    Ok(())
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
            assert_eq!(reader.received(), file.len());
        }
    }

    #[test]
    fn trailing_bytes_are_ignored() {
        let mut file = encode(b"state");
        file.extend_from_slice(b"\r\npadding");
        assert_eq!(decode(&file).unwrap(), b"state");
        let mut reader = Reader::new();
        assert_eq!(reader.push(&file).unwrap().unwrap(), b"state");
        assert_eq!(reader.push(b"more padding"), Ok(None));
        assert_eq!(reader.received(), file.len() - 9);
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
        assert_eq!(decode(&file[..5]), Err(StateFileError::Truncated { have: 5, need: 12 }));
        let qemu = decode(b"QEVM\0\0\0\x03more bytes");
        assert!(qemu.as_ref().unwrap_err().to_string().contains("QEMU migration stream"), "{qemu:?}");
    }

    /// A header claiming 16 MiB, as much as a whole stub domain, with the payload
    /// trickling in: refused at the header, before any payload byte is stored.
    #[test]
    fn an_oversized_header_is_refused_before_its_payload() {
        let mut header = MAGIC.to_vec();
        header.extend_from_slice(&(16u32 << 20).to_le_bytes());
        let mut reader = Reader::new();
        let refused = StateFileError::TooLarge { len_bytes: 16 << 20, max_bytes: MAX_PAYLOAD_BYTES };
        assert_eq!(reader.push(&header), Err(refused.clone()));
        assert_eq!(reader.push(&[0; 4096]), Err(refused.clone()), "and stays refused");
        assert_eq!(reader.received(), HEADER_BYTES, "no payload byte taken");
        assert!(refused.to_string().contains("claims 16777216 bytes, over the 1048576-byte limit"));
        let mut huge = encode(b"x");
        huge[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            decode(&huge),
            Err(StateFileError::TooLarge { len_bytes: u32::MAX as usize, max_bytes: MAX_PAYLOAD_BYTES })
        );
    }

    /// The limit is the reader's: a file over it is refused, the same file under a
    /// larger limit is read.
    #[test]
    fn the_limit_is_the_readers() {
        let file = encode(&[5u8; 1000]);
        assert_eq!(
            Reader::with_max_payload(999).push(&file),
            Err(StateFileError::TooLarge { len_bytes: 1000, max_bytes: 999 })
        );
        assert_eq!(Reader::with_max_payload(1000).push(&file), Ok(Some(vec![5u8; 1000])));
    }

    /// Under the limit, the buffer is reserved whole at the header and never grown
    /// (whether the heap can hold it is then one fallible reservation).
    #[test]
    fn the_buffer_is_reserved_whole_at_the_header() {
        let file = encode(&[1u8; 100]);
        let mut reader = Reader::new();
        assert_eq!(reader.push(&file[..HEADER_BYTES]), Ok(None));
        assert_eq!(reader.body.capacity(), 100 + TRAILER_BYTES, "reserved whole at the header");
        assert_eq!(reader.push(&file[HEADER_BYTES..50]), Ok(None));
        assert_eq!(reader.body.capacity(), 100 + TRAILER_BYTES, "never grown");
        assert_eq!(reader.push(&file[50..]), Ok(Some(vec![1u8; 100])));
    }

    /// Two states on one stream (libxl's qemu-save file after two saves): the last
    /// complete one wins, in whatever pieces the console delivers; padding or a damaged
    /// later file leave the last complete state standing.
    #[test]
    fn the_last_complete_state_wins() {
        let mut stream = encode(b"older state");
        stream.extend(encode(b"newest state"));
        for piece in [1, 5, 23, stream.len()] {
            let mut reader = LatestReader::new();
            for chunk in stream.chunks(piece) {
                reader.push(chunk).unwrap();
            }
            assert!(!reader.later_file_in_progress());
            assert_eq!(reader.received(), stream.len());
            assert_eq!(reader.finish().unwrap(), b"newest state", "pieces of {piece}");
        }
        // A later file still arriving: the older one is what there is, and the reader
        // says a later one is on its way.
        let mut reader = LatestReader::new();
        reader.push(&stream[..stream.len() - 3]).unwrap();
        assert_eq!(reader.latest(), Some(&b"older state"[..]));
        assert!(reader.later_file_in_progress());
        // Padding after the last file, or a damaged later file: the complete one stands.
        let mut padded = encode(b"only state");
        padded.extend_from_slice(b"\r\n\0\0 padding");
        let mut damaged = encode(b"older state");
        let mut bad = encode(b"newer state");
        bad[14] ^= 0x40;
        damaged.extend(bad);
        for (input, want) in [(&padded, &b"only state"[..]), (&damaged, &b"older state"[..])] {
            let mut reader = LatestReader::new();
            reader.push(input).unwrap();
            assert!(!reader.later_file_in_progress());
            assert_eq!(reader.finish().as_deref(), Some(want));
        }
        // Before any complete file, an error is the reader's error.
        let mut reader = LatestReader::new();
        assert!(matches!(reader.push(b"QEVM\0\0\0\x03 more bytes"), Err(StateFileError::NotAStateFile(_))));
        assert!(reader.push(&encode(b"x")).is_err(), "and stays");
    }

    /// The fuzz target's checks over generated inputs: valid files in random pieces,
    /// damaged files and noise.
    #[test]
    fn the_fuzz_checks_hold_on_generated_inputs() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for round in 0..3000 {
            let len = (next() % 600) as usize;
            let payload: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            let mut input = vec![next() as u8];
            match round % 4 {
                0 => input.extend(encode(&payload)),
                1 => {
                    input.extend(encode(&payload));
                    let at = (next() as usize) % input.len();
                    input[at] ^= 1 << (next() % 8);
                }
                2 => {
                    input.extend(encode(&payload));
                    input.truncate((next() as usize) % input.len() + 1);
                }
                _ => input.extend(&payload),
            }
            check_reader(&input).unwrap_or_else(|problem| panic!("round {round}: {problem}: {input:02x?}"));
        }
    }
}
