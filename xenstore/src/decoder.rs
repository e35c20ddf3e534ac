//! Reassembles messages from a byte stream that arrives in arbitrary pieces.
//!
//! The ring hands over whatever the peer has produced, which may end mid-header or
//! mid-payload, or hold several messages. The decoder never holds more than one message
//! (a header and at most [`PAYLOAD_MAX`] bytes), and a bad header breaks the stream for
//! good: after a framing error there is no way to know where the next message starts.

use alloc::vec::Vec;

use crate::wire::{HEADER_LEN, Header, Message, PAYLOAD_MAX};

/// Why the stream cannot be decoded any further.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// a header has a message type Xen does not define
    #[error("a header has message type {0}, which Xen does not define")]
    UnknownType(u32),
    /// a header announces a payload longer than XENSTORE_PAYLOAD_MAX (4096 bytes)
    #[error("a header announces a {0}-byte payload, more than the {PAYLOAD_MAX} allowed")]
    PayloadTooLong(u32),
}

#[derive(Debug)]
enum State {
    Header { bytes: [u8; HEADER_LEN], filled: usize },
    Payload { header: Header, payload: Vec<u8> },
    Complete(Message),
    Broken(DecodeError),
}

/// Incremental message decoder.
///
/// ```
/// # use xenstore::decoder::Decoder;
/// # let bytes: &[u8] = &[];
/// let mut decoder = Decoder::new();
/// let mut input = bytes;
/// loop {
///     input = &input[decoder.push(input)..];
///     match decoder.next_message() {
///         Some(Ok(message)) => { /* handle it */ }
///         Some(Err(_error)) => break, // the connection is unusable
///         None => break,              // need more bytes
///     }
/// }
/// ```
#[derive(Debug)]
pub struct Decoder {
    state: State,
}

impl Default for Decoder {
    fn default() -> Decoder {
        Decoder::new()
    }
}

impl Decoder {
    pub fn new() -> Decoder {
        Decoder { state: State::Header { bytes: [0; HEADER_LEN], filled: 0 } }
    }

    /// How many more bytes finish the header or payload being read; 0 while a complete
    /// message waits for [`next_message`](Self::next_message) or the stream is broken.
    /// A ring reader can copy exactly this many and leave the rest in the ring.
    pub fn bytes_wanted(&self) -> usize {
        match &self.state {
            State::Header { filled, .. } => HEADER_LEN - filled,
            State::Payload { header, payload } => header.len as usize - payload.len(),
            State::Complete(_) | State::Broken(_) => 0,
        }
    }

    /// Takes bytes up to the end of the current message and returns how many it took;
    /// the caller keeps the rest for after [`next_message`](Self::next_message).
    pub fn push(&mut self, bytes: &[u8]) -> usize {
        let mut taken = 0;
        loop {
            let rest = &bytes[taken..];
            match &mut self.state {
                State::Header { bytes: header_bytes, filled } => {
                    let count = rest.len().min(HEADER_LEN - *filled);
                    header_bytes[*filled..*filled + count].copy_from_slice(&rest[..count]);
                    *filled += count;
                    taken += count;
                    if *filled < HEADER_LEN {
                        return taken;
                    }
                    self.state = match Header::decode(header_bytes) {
                        Ok(header) => State::Payload { header, payload: Vec::with_capacity(header.len as usize) },
                        Err(error) => State::Broken(error),
                    };
                }
                State::Payload { header, payload } => {
                    let count = rest.len().min(header.len as usize - payload.len());
                    payload.extend_from_slice(&rest[..count]);
                    taken += count;
                    if payload.len() < header.len as usize {
                        return taken;
                    }
                    let message = Message { header: *header, payload: core::mem::take(payload) };
                    self.state = State::Complete(message);
                }
                State::Complete(_) | State::Broken(_) => return taken,
            }
        }
    }

    /// The next complete message, `None` until one is complete, or the error that broke
    /// the stream (again on every later call).
    pub fn next_message(&mut self) -> Option<Result<Message, DecodeError>> {
        match &self.state {
            State::Complete(_) => {
                let empty = State::Header { bytes: [0; HEADER_LEN], filled: 0 };
                match core::mem::replace(&mut self.state, empty) {
                    State::Complete(message) => Some(Ok(message)),
                    _ => None,
                }
            }
            State::Broken(error) => Some(Err(*error)),
            State::Header { .. } | State::Payload { .. } => None,
        }
    }

    /// Pushes all of `bytes` and returns every message they complete, in order; stops at
    /// a framing error, which ends the list (the rest of the bytes are meaningless).
    pub fn feed(&mut self, mut bytes: &[u8]) -> Vec<Result<Message, DecodeError>> {
        let mut messages = Vec::new();
        loop {
            bytes = &bytes[self.push(bytes)..];
            match self.next_message() {
                Some(Ok(message)) => messages.push(Ok(message)),
                Some(Err(error)) => {
                    messages.push(Err(error));
                    return messages;
                }
                None => return messages,
            }
        }
    }

    /// The error that broke the stream, if one did.
    pub fn broken(&self) -> Option<DecodeError> {
        match self.state {
            State::Broken(error) => Some(error),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{self, MsgType};
    use alloc::vec;

    fn two_messages() -> Vec<u8> {
        let mut bytes = wire::read(7, 0, "domid").unwrap();
        bytes.extend(wire::encode(MsgType::WatchEvent, 0, 0, &[b"/a\0tok\0"]).unwrap());
        bytes
    }

    fn check_two(messages: &[Result<Message, DecodeError>]) {
        assert_eq!(messages.len(), 2);
        let first = messages[0].as_ref().unwrap();
        assert_eq!(first.header, Header { msg_type: MsgType::Read, req_id: 7, tx_id: 0, len: 6 });
        assert_eq!(first.payload, b"domid\0");
        let second = messages[1].as_ref().unwrap();
        assert_eq!(second.header.msg_type, MsgType::WatchEvent);
        assert_eq!(second.payload, b"/a\0tok\0");
    }

    #[test]
    fn split_at_every_byte_boundary() {
        let bytes = two_messages();
        for split in 0..=bytes.len() {
            let mut decoder = Decoder::new();
            let mut messages = decoder.feed(&bytes[..split]);
            messages.extend(decoder.feed(&bytes[split..]));
            check_two(&messages);
            assert_eq!(decoder.bytes_wanted(), HEADER_LEN);
        }
    }

    #[test]
    fn one_byte_at_a_time() {
        let mut decoder = Decoder::new();
        let mut messages = Vec::new();
        for byte in two_messages() {
            messages.extend(decoder.feed(&[byte]));
        }
        check_two(&messages);
    }

    #[test]
    fn two_messages_in_one_push() {
        check_two(&Decoder::new().feed(&two_messages()));
    }

    #[test]
    fn push_stops_at_the_end_of_a_message() {
        let bytes = two_messages();
        let mut decoder = Decoder::new();
        assert_eq!(decoder.push(&bytes), 22);
        assert_eq!(decoder.push(&bytes[22..]), 0, "the first message is still waiting");
        assert_eq!(decoder.bytes_wanted(), 0);
        assert!(decoder.next_message().unwrap().is_ok());
        assert_eq!(decoder.push(&bytes[22..]), bytes.len() - 22);
        assert!(decoder.next_message().unwrap().is_ok());
        assert!(decoder.next_message().is_none());
    }

    #[test]
    fn bytes_wanted_tracks_header_and_payload() {
        let bytes = wire::read(1, 0, "abc").unwrap();
        let mut decoder = Decoder::new();
        assert_eq!(decoder.bytes_wanted(), 16);
        decoder.push(&bytes[..10]);
        assert_eq!(decoder.bytes_wanted(), 6);
        decoder.push(&bytes[10..17]);
        assert_eq!(decoder.bytes_wanted(), 3);
    }

    #[test]
    fn empty_payload_completes_at_the_header() {
        let bytes = wire::encode(MsgType::Directory, 3, 0, &[]).unwrap();
        let messages = Decoder::new().feed(&bytes);
        assert_eq!(messages[0].as_ref().unwrap().payload, b"");
    }

    #[test]
    fn oversize_header_breaks_the_stream() {
        let header = Header { msg_type: MsgType::Read, req_id: 1, tx_id: 0, len: 4097 };
        let mut bytes = header.encode().to_vec();
        bytes.extend(vec![0; 5000]);
        let mut decoder = Decoder::new();
        assert_eq!(decoder.feed(&bytes), vec![Err(DecodeError::PayloadTooLong(4097))]);
        assert_eq!(decoder.push(&bytes), 0);
        assert_eq!(decoder.next_message(), Some(Err(DecodeError::PayloadTooLong(4097))));
        assert_eq!(decoder.broken(), Some(DecodeError::PayloadTooLong(4097)));
    }

    #[test]
    fn payload_of_exactly_the_limit_is_accepted() {
        let bytes = wire::encode(MsgType::Read, 1, 0, &[&[b'v'; PAYLOAD_MAX]]).unwrap();
        let messages = Decoder::new().feed(&bytes);
        assert_eq!(messages[0].as_ref().unwrap().payload.len(), PAYLOAD_MAX);
    }

    #[test]
    fn unknown_type_breaks_the_stream() {
        let mut bytes = wire::read(1, 0, "a").unwrap();
        bytes[0] = 20; // XS_RESTRICT, removed
        let mut decoder = Decoder::new();
        assert_eq!(decoder.feed(&bytes), vec![Err(DecodeError::UnknownType(20))]);
        // Even a good message afterwards is not trusted.
        let good = wire::read(2, 0, "a").unwrap();
        assert_eq!(decoder.feed(&good), vec![Err(DecodeError::UnknownType(20))]);
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A cheap deterministic generator; every input must decode or break, never panic.
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..2000 {
            let mut bytes = Vec::new();
            for _ in 0..(seed % 64) {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                // Bias towards small numbers so some headers are valid.
                bytes.push(if seed.is_multiple_of(3) { (seed >> 8) as u8 } else { (seed % 5) as u8 });
            }
            let mut decoder = Decoder::new();
            for piece in bytes.chunks(1 + (seed % 7) as usize) {
                let _ = decoder.feed(piece);
                assert!(decoder.bytes_wanted() <= PAYLOAD_MAX);
            }
        }
    }
}
