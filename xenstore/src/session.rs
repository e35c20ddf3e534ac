//! The client side of a connection, without I/O: request ids, outstanding requests,
//! and what each incoming message is.
//!
//! xenstored may answer in any order and sends watch events at any time, so every
//! request gets an id that no outstanding request has, and every incoming message is
//! matched against the outstanding table. A message nobody asked for is reported as a
//! value; the caller decides whether that ends the connection.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use crate::reply::{self, WatchEvent, XsError};
use crate::wire::{EncodeError, Message, MsgType, Request};

/// What an incoming message is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Incoming {
    /// The answer to request `req_id`: the message if it has the request's type,
    /// otherwise the error it carries.
    Reply {
        req_id: u32,
        result: Result<Message, XsError>,
    },
    Watch(WatchEvent),
    /// xenstored broke the protocol; the message was dropped.
    ProtocolError(ProtocolError),
}

/// A message the session cannot account for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// a reply to a request id that is not outstanding
    #[error("a {msg_type:?} reply to request {req_id}, which is not outstanding")]
    UnknownRequestId { req_id: u32, msg_type: MsgType },
    /// a watch event that does not parse
    #[error("a watch event that does not parse: {0}")]
    BadWatchEvent(XsError),
}

/// Request ids and the requests awaiting replies.
#[derive(Debug, Default)]
pub struct Session {
    next_req_id: u32,
    /// Outstanding request id -> the reply type that answers it.
    outstanding: BTreeMap<u32, MsgType>,
}

impl Session {
    pub fn new() -> Session {
        Session::default()
    }

    /// Encodes `request` in transaction `tx_id` (0 for none) under a fresh request id and
    /// records it as outstanding. Returns the id and the bytes to put on the ring.
    pub fn start(&mut self, tx_id: u32, request: &Request) -> Result<(u32, Vec<u8>), EncodeError> {
        let req_id = self.free_req_id();
        let bytes = request.encode(req_id, tx_id)?;
        self.outstanding.insert(req_id, request.msg_type());
        self.next_req_id = req_id.wrapping_add(1);
        Ok((req_id, bytes))
    }

    /// The next id, wrapping, that is not outstanding. Fewer than 2^32 requests can be
    /// outstanding (each holds memory), so this ends within `outstanding + 1` steps.
    fn free_req_id(&self) -> u32 {
        let mut req_id = self.next_req_id;
        while self.outstanding.contains_key(&req_id) {
            req_id = req_id.wrapping_add(1);
        }
        req_id
    }

    /// Classifies a decoded message; a reply retires its request.
    pub fn accept(&mut self, message: Message) -> Incoming {
        let header = message.header;
        if header.msg_type == MsgType::WatchEvent {
            return match reply::watch_event(&message) {
                Ok(event) => Incoming::Watch(event),
                Err(error) => Incoming::ProtocolError(ProtocolError::BadWatchEvent(error)),
            };
        }
        let Some(expected) = self.outstanding.remove(&header.req_id) else {
            let (req_id, msg_type) = (header.req_id, header.msg_type);
            return Incoming::ProtocolError(ProtocolError::UnknownRequestId { req_id, msg_type });
        };
        let result = match reply::payload_of(&message, expected).err() {
            None => Ok(message),
            Some(error) => Err(error),
        };
        Incoming::Reply { req_id: header.req_id, result }
    }

    /// Stops waiting for a reply (after a timeout, say); a late reply then counts as
    /// unknown. Returns whether the request was outstanding.
    pub fn cancel(&mut self, req_id: u32) -> bool {
        self.outstanding.remove(&req_id).is_some()
    }

    /// How many requests await replies.
    pub fn outstanding(&self) -> usize {
        self.outstanding.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reply::Errno;
    use crate::wire::{self, Header};

    fn message(msg_type: MsgType, req_id: u32, payload: &[u8]) -> Message {
        let header = Header { msg_type, req_id, tx_id: 0, len: payload.len() as u32 };
        Message { header, payload: payload.to_vec() }
    }

    #[test]
    fn start_encodes_with_fresh_ids() {
        let mut session = Session::new();
        let (first, bytes) = session.start(0, &Request::Read { path: "domid" }).unwrap();
        assert_eq!(bytes, wire::read(first, 0, "domid").unwrap());
        let (second, _) = session.start(4, &Request::Rm { path: "/x" }).unwrap();
        assert_ne!(first, second);
        assert_eq!(session.outstanding(), 2);
    }

    #[test]
    fn encode_errors_leave_no_outstanding_request() {
        let mut session = Session::new();
        let error = session.start(0, &Request::Read { path: "a//b" });
        assert_eq!(error, Err(EncodeError::DoubleSlash));
        assert_eq!(session.outstanding(), 0);
    }

    #[test]
    fn ids_wrap_and_skip_outstanding_ones() {
        let mut session = Session::new();
        session.next_req_id = u32::MAX - 1;
        let request = Request::Read { path: "a" };
        let ids: Vec<u32> = (0..3).map(|_| session.start(0, &request).unwrap().0).collect();
        assert_eq!(ids, [u32::MAX - 1, u32::MAX, 0]);
        // The reply to u32::MAX arrives; the others stay outstanding across the wrap.
        let reply = session.accept(message(MsgType::Read, u32::MAX, b"v"));
        assert!(matches!(reply, Incoming::Reply { req_id: u32::MAX, result: Ok(_) }));
        session.next_req_id = u32::MAX - 1;
        assert_eq!(session.start(0, &request).unwrap().0, u32::MAX);
        assert_eq!(session.start(0, &request).unwrap().0, 1);
    }

    #[test]
    fn replies_are_matched_and_checked() {
        let mut session = Session::new();
        let (read_id, _) = session.start(0, &Request::Read { path: "a" }).unwrap();
        let (write_id, _) = session.start(0, &Request::Write { path: "a", value: b"" }).unwrap();
        let (mkdir_id, _) = session.start(0, &Request::Mkdir { path: "b" }).unwrap();
        // Out of order: an error, a wrong type, then the good one.
        assert_eq!(
            session.accept(message(MsgType::Error, write_id, b"EACCES\0")),
            Incoming::Reply { req_id: write_id, result: Err(XsError::Errno(Errno::EACCES)) }
        );
        assert_eq!(
            session.accept(message(MsgType::Read, mkdir_id, b"x")),
            Incoming::Reply {
                req_id: mkdir_id,
                result: Err(XsError::WrongReplyType { expected: MsgType::Mkdir, got: MsgType::Read }),
            }
        );
        let good = message(MsgType::Read, read_id, b"value");
        let expected = Incoming::Reply { req_id: read_id, result: Ok(good.clone()) };
        assert_eq!(session.accept(good), expected);
        assert_eq!(session.outstanding(), 0);
    }

    #[test]
    fn unknown_ids_and_bad_events_are_values() {
        let mut session = Session::new();
        let unknown = ProtocolError::UnknownRequestId { req_id: 99, msg_type: MsgType::Read };
        assert_eq!(session.accept(message(MsgType::Read, 99, b"")), Incoming::ProtocolError(unknown));
        let (req_id, _) = session.start(0, &Request::Read { path: "a" }).unwrap();
        assert!(session.cancel(req_id));
        assert!(!session.cancel(req_id));
        assert!(matches!(
            session.accept(message(MsgType::Read, req_id, b"late")),
            Incoming::ProtocolError(ProtocolError::UnknownRequestId { .. })
        ));
        assert_eq!(
            session.accept(message(MsgType::WatchEvent, 0, b"/a\0")),
            Incoming::ProtocolError(ProtocolError::BadWatchEvent(XsError::WrongFieldCount))
        );
        assert_eq!(
            session.accept(message(MsgType::WatchEvent, 0, b"/a\0t\0")),
            Incoming::Watch(WatchEvent { path: "/a".into(), token: "t".into() })
        );
    }
}
