//! Reply parsing: xenstored's answers as typed values or typed errors.
//!
//! Each function takes the reply message and the kind of request it answers, so an
//! error reply (XS_ERROR with an errno name), a reply of the wrong type and a malformed
//! payload all come back as [`XsError`] rather than as a wrong value.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use crate::wire::{Message, MsgType, Permission, parse_decimal};

/// An error name from `xsd_errors`, sent by xenstored as the payload of XS_ERROR.
#[allow(clippy::upper_case_acronyms)] // the names as they travel
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Errno {
    EINVAL,
    EACCES,
    EEXIST,
    EISDIR,
    ENOENT,
    ENOMEM,
    ENOSPC,
    EIO,
    ENOTEMPTY,
    ENOSYS,
    EROFS,
    EBUSY,
    /// At commit: another write changed what the transaction used; try again.
    EAGAIN,
    EISCONN,
    E2BIG,
    EPERM,
    /// A name not in Xen's table.
    Unknown,
}

impl Errno {
    /// The known names, in the order of Xen's `xsd_errors` table.
    pub const KNOWN: [Errno; 16] = [
        Errno::EINVAL,
        Errno::EACCES,
        Errno::EEXIST,
        Errno::EISDIR,
        Errno::ENOENT,
        Errno::ENOMEM,
        Errno::ENOSPC,
        Errno::EIO,
        Errno::ENOTEMPTY,
        Errno::ENOSYS,
        Errno::EROFS,
        Errno::EBUSY,
        Errno::EAGAIN,
        Errno::EISCONN,
        Errno::E2BIG,
        Errno::EPERM,
    ];

    /// The name as sent on the wire ("Unknown" for [`Errno::Unknown`]).
    pub fn name(self) -> &'static str {
        match self {
            Errno::EINVAL => "EINVAL",
            Errno::EACCES => "EACCES",
            Errno::EEXIST => "EEXIST",
            Errno::EISDIR => "EISDIR",
            Errno::ENOENT => "ENOENT",
            Errno::ENOMEM => "ENOMEM",
            Errno::ENOSPC => "ENOSPC",
            Errno::EIO => "EIO",
            Errno::ENOTEMPTY => "ENOTEMPTY",
            Errno::ENOSYS => "ENOSYS",
            Errno::EROFS => "EROFS",
            Errno::EBUSY => "EBUSY",
            Errno::EAGAIN => "EAGAIN",
            Errno::EISCONN => "EISCONN",
            Errno::E2BIG => "E2BIG",
            Errno::EPERM => "EPERM",
            Errno::Unknown => "Unknown",
        }
    }

    pub fn from_name(name: &[u8]) -> Errno {
        let known = Errno::KNOWN.into_iter().find(|errno| errno.name().as_bytes() == name);
        known.unwrap_or(Errno::Unknown)
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a request did not give its result.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum XsError {
    /// xenstored refused the request with an error name
    #[error("xenstored refused the request: {0}")]
    Errno(Errno),
    /// the reply's type is neither the request's nor XS_ERROR
    #[error("a {expected:?} request was answered with {got:?}")]
    WrongReplyType { expected: MsgType, got: MsgType },
    /// a string in the reply is not NUL-terminated
    #[error("a string in the reply is not NUL-terminated")]
    MissingNul,
    /// the reply has the wrong number of strings
    #[error("the reply has the wrong number of strings")]
    WrongFieldCount,
    /// text in the reply is not UTF-8
    #[error("text in the reply is not UTF-8")]
    NotUtf8,
    /// a number in the reply is not plain decimal in range
    #[error("a number in the reply is not plain decimal in range")]
    BadNumber,
    /// a permission in the reply is not a letter n/r/w/b then a domid
    #[error("a permission in the reply is not a letter n/r/w/b then a domid")]
    BadPermission,
    /// the reply should be "OK" and is not
    #[error("the reply should be \"OK\" and is not")]
    NotOk,
}

/// An XS_WATCH_EVENT: `path` changed (or is the watched path, on registration), and
/// `token` says which watch matched.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchEvent {
    pub path: String,
    pub token: String,
}

/// The reply's payload if it answers `request` successfully; the errno of an XS_ERROR.
pub fn payload_of(reply: &Message, request: MsgType) -> Result<&[u8], XsError> {
    match reply.header.msg_type {
        got if got == request => Ok(&reply.payload),
        MsgType::Error => Err(XsError::Errno(error_name(&reply.payload)?)),
        got => Err(XsError::WrongReplyType { expected: request, got }),
    }
}

/// The errno named by an XS_ERROR payload such as "EAGAIN\0".
pub fn error_name(payload: &[u8]) -> Result<Errno, XsError> {
    match nul_terminated(payload)?.as_slice() {
        [name] => Ok(Errno::from_name(name)),
        _ => Err(XsError::WrongFieldCount),
    }
}

/// Splits "a\0b\0" into ["a", "b"]; the empty payload is no strings.
fn nul_terminated(payload: &[u8]) -> Result<Vec<&[u8]>, XsError> {
    let Some(body) = payload.strip_suffix(b"\0") else {
        return if payload.is_empty() { Ok(Vec::new()) } else { Err(XsError::MissingNul) };
    };
    Ok(body.split(|byte| *byte == 0).collect())
}

fn text(bytes: &[u8]) -> Result<&str, XsError> {
    core::str::from_utf8(bytes).map_err(|_| XsError::NotUtf8)
}

fn single_string(payload: &[u8]) -> Result<&str, XsError> {
    match nul_terminated(payload)?.as_slice() {
        [string] => text(string),
        _ => Err(XsError::WrongFieldCount),
    }
}

/// XS_READ: the value, raw bytes without a terminator.
pub fn read(reply: &Message) -> Result<Vec<u8>, XsError> {
    Ok(payload_of(reply, MsgType::Read)?.to_vec())
}

/// XS_DIRECTORY: the children's names (not full paths).
pub fn directory(reply: &Message) -> Result<Vec<String>, XsError> {
    let payload = payload_of(reply, MsgType::Directory)?;
    nul_terminated(payload)?.into_iter().map(|name| text(name).map(String::from)).collect()
}

/// XS_GET_PERMS: the permission list, owner first.
pub fn get_perms(reply: &Message) -> Result<Vec<Permission>, XsError> {
    let fields = nul_terminated(payload_of(reply, MsgType::GetPerms)?)?;
    if fields.is_empty() {
        return Err(XsError::WrongFieldCount);
    }
    let parse = |field: &[u8]| Permission::parse(text(field)?).ok_or(XsError::BadPermission);
    fields.into_iter().map(parse).collect()
}

/// XS_GET_DOMAIN_PATH: the domain's home, `/local/domain/<domid>`.
pub fn get_domain_path(reply: &Message) -> Result<String, XsError> {
    Ok(String::from(single_string(payload_of(reply, MsgType::GetDomainPath)?)?))
}

/// XS_TRANSACTION_START: the new transaction's id (never 0, which means "none").
pub fn transaction_start(reply: &Message) -> Result<u32, XsError> {
    let id = single_string(payload_of(reply, MsgType::TransactionStart)?)?;
    match parse_decimal(id) {
        Some(0) | None => Err(XsError::BadNumber),
        Some(tx_id) => Ok(tx_id),
    }
}

/// The "OK\0" that answers write, mkdir, rm, set_perms, watch, unwatch and
/// transaction_end.
pub fn ok(reply: &Message, request: MsgType) -> Result<(), XsError> {
    match payload_of(reply, request)? {
        b"OK\0" => Ok(()),
        _ => Err(XsError::NotOk),
    }
}

/// An XS_WATCH_EVENT's "path\0token\0".
pub fn watch_event(message: &Message) -> Result<WatchEvent, XsError> {
    match nul_terminated(payload_of(message, MsgType::WatchEvent)?)?.as_slice() {
        [path, token] => Ok(WatchEvent { path: String::from(text(path)?), token: String::from(text(token)?) }),
        _ => Err(XsError::WrongFieldCount),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Access, Header};
    use alloc::string::ToString;
    use alloc::vec;

    fn reply(msg_type: MsgType, payload: &[u8]) -> Message {
        let header = Header { msg_type, req_id: 1, tx_id: 0, len: payload.len() as u32 };
        Message { header, payload: payload.to_vec() }
    }

    #[test]
    fn error_replies_become_errnos() {
        let eagain = reply(MsgType::Error, b"EAGAIN\0");
        assert_eq!(read(&eagain), Err(XsError::Errno(Errno::EAGAIN)));
        assert_eq!(ok(&eagain, MsgType::TransactionEnd), Err(XsError::Errno(Errno::EAGAIN)));
        let odd = reply(MsgType::Error, b"EWHATEVER\0");
        assert_eq!(directory(&odd), Err(XsError::Errno(Errno::Unknown)));
        assert_eq!(read(&reply(MsgType::Error, b"ENOENT")), Err(XsError::MissingNul));
        assert_eq!(read(&reply(MsgType::Error, b"")), Err(XsError::WrongFieldCount));
        assert_eq!(read(&reply(MsgType::Error, b"EIO\0EIO\0")), Err(XsError::WrongFieldCount));
        for errno in Errno::KNOWN {
            assert_eq!(Errno::from_name(errno.name().as_bytes()), errno);
        }
        let message = XsError::Errno(Errno::EPERM).to_string();
        assert_eq!(message, "xenstored refused the request: EPERM");
    }

    #[test]
    fn wrong_reply_type() {
        let wrong = reply(MsgType::Write, b"OK\0");
        assert_eq!(read(&wrong), Err(XsError::WrongReplyType { expected: MsgType::Read, got: MsgType::Write }));
        assert!(matches!(ok(&wrong, MsgType::Mkdir), Err(XsError::WrongReplyType { .. })));
    }

    #[test]
    fn read_is_raw_bytes() {
        assert_eq!(read(&reply(MsgType::Read, b"a\0b")), Ok(b"a\0b".to_vec()));
        assert_eq!(read(&reply(MsgType::Read, b"")), Ok(vec![]));
    }

    #[test]
    fn directory_lists_names() {
        let names = directory(&reply(MsgType::Directory, b"vbd\0vif\0")).unwrap();
        assert_eq!(names, ["vbd", "vif"]);
        assert_eq!(directory(&reply(MsgType::Directory, b"")), Ok(vec![]));
        assert_eq!(directory(&reply(MsgType::Directory, b"vbd\0vif")), Err(XsError::MissingNul));
        assert_eq!(directory(&reply(MsgType::Directory, b"\xff\0")), Err(XsError::NotUtf8));
    }

    #[test]
    fn get_perms_parses_each() {
        let perms = get_perms(&reply(MsgType::GetPerms, b"n0\0r5\0b7\0")).unwrap();
        assert_eq!(
            perms,
            [
                Permission { domid: 0, access: Access::None },
                Permission { domid: 5, access: Access::Read },
                Permission { domid: 7, access: Access::Both },
            ]
        );
        assert_eq!(get_perms(&reply(MsgType::GetPerms, b"")), Err(XsError::WrongFieldCount));
        assert_eq!(get_perms(&reply(MsgType::GetPerms, b"q1\0")), Err(XsError::BadPermission));
        assert_eq!(get_perms(&reply(MsgType::GetPerms, b"r70000\0")), Err(XsError::BadPermission));
        assert_eq!(get_perms(&reply(MsgType::GetPerms, b"r1")), Err(XsError::MissingNul));
    }

    #[test]
    fn domain_path_and_transaction_id() {
        let path = reply(MsgType::GetDomainPath, b"/local/domain/3\0");
        assert_eq!(get_domain_path(&path), Ok("/local/domain/3".to_string()));
        let bad = reply(MsgType::GetDomainPath, b"/a\0/b\0");
        assert_eq!(get_domain_path(&bad), Err(XsError::WrongFieldCount));
        assert_eq!(transaction_start(&reply(MsgType::TransactionStart, b"42\0")), Ok(42));
        for bad in [&b"0\0"[..], b"-1\0", b"x\0", b"4294967296\0", b"\0"] {
            let message = reply(MsgType::TransactionStart, bad);
            assert_eq!(transaction_start(&message), Err(XsError::BadNumber), "{bad:?}");
        }
        let missing = reply(MsgType::TransactionStart, b"42");
        assert_eq!(transaction_start(&missing), Err(XsError::MissingNul));
    }

    #[test]
    fn ok_replies() {
        for request in [MsgType::Write, MsgType::Mkdir, MsgType::Rm, MsgType::Watch] {
            assert_eq!(ok(&reply(request, b"OK\0"), request), Ok(()));
        }
        assert_eq!(ok(&reply(MsgType::Rm, b"OK"), MsgType::Rm), Err(XsError::NotOk));
        assert_eq!(ok(&reply(MsgType::Rm, b"NO\0"), MsgType::Rm), Err(XsError::NotOk));
    }

    #[test]
    fn watch_events() {
        let event = watch_event(&reply(MsgType::WatchEvent, b"/local/domain/1/x\0tok\0")).unwrap();
        assert_eq!(event, WatchEvent { path: "/local/domain/1/x".into(), token: "tok".into() });
        let empty_token = watch_event(&reply(MsgType::WatchEvent, b"/a\0\0")).unwrap();
        assert_eq!(empty_token.token, "");
        for bad in [&b"/a\0"[..], b"/a\0t\0extra\0", b""] {
            let message = reply(MsgType::WatchEvent, bad);
            assert_eq!(watch_event(&message), Err(XsError::WrongFieldCount), "{bad:?}");
        }
        assert_eq!(watch_event(&reply(MsgType::WatchEvent, b"/a\0t")), Err(XsError::MissingNul));
        assert!(matches!(watch_event(&reply(MsgType::Read, b"/a\0t\0")), Err(XsError::WrongReplyType { .. })));
    }
}
