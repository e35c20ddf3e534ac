//! Message framing, paths, permissions and request encoding (io/xs_wire.h).
//!
//! Every message in either direction is a 16-byte little-endian header
//! (`struct xsd_sockmsg`) followed by `len` bytes of payload. Requests are checked here,
//! before they leave the domain: xenstored kills the connection of a client that sends
//! more than [`PAYLOAD_MAX`] bytes, and a domain cannot reconnect.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use crate::decoder::DecodeError;

/// `sizeof(struct xsd_sockmsg)`.
pub const HEADER_LEN: usize = 16;
/// `XENSTORE_PAYLOAD_MAX`: the longest payload either side may send.
pub const PAYLOAD_MAX: usize = 4096;
/// `XENSTORE_ABS_PATH_MAX`: the longest path starting with '/'.
pub const ABS_PATH_MAX: usize = 3072;
/// `XENSTORE_REL_PATH_MAX`: the longest path relative to the domain's home.
pub const REL_PATH_MAX: usize = 2048;

/// `enum xsd_sockmsg_type`: what a request asks for, echoed in its reply.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MsgType {
    Control = 0,
    Directory = 1,
    Read = 2,
    GetPerms = 3,
    Watch = 4,
    Unwatch = 5,
    TransactionStart = 6,
    TransactionEnd = 7,
    Introduce = 8,
    Release = 9,
    GetDomainPath = 10,
    Write = 11,
    Mkdir = 12,
    Rm = 13,
    SetPerms = 14,
    WatchEvent = 15,
    Error = 16,
    IsDomainIntroduced = 17,
    Resume = 18,
    SetTarget = 19,
    // 20 was XS_RESTRICT, since removed from Xen.
    ResetWatches = 21,
    DirectoryPart = 22,
}

impl MsgType {
    /// Every type Xen defines, in numeric order.
    pub const ALL: [MsgType; 22] = [
        MsgType::Control,
        MsgType::Directory,
        MsgType::Read,
        MsgType::GetPerms,
        MsgType::Watch,
        MsgType::Unwatch,
        MsgType::TransactionStart,
        MsgType::TransactionEnd,
        MsgType::Introduce,
        MsgType::Release,
        MsgType::GetDomainPath,
        MsgType::Write,
        MsgType::Mkdir,
        MsgType::Rm,
        MsgType::SetPerms,
        MsgType::WatchEvent,
        MsgType::Error,
        MsgType::IsDomainIntroduced,
        MsgType::Resume,
        MsgType::SetTarget,
        MsgType::ResetWatches,
        MsgType::DirectoryPart,
    ];
}

/// A message type number Xen does not define.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnknownMsgType(pub u32);

impl TryFrom<u32> for MsgType {
    type Error = UnknownMsgType;

    fn try_from(number: u32) -> Result<MsgType, UnknownMsgType> {
        MsgType::ALL.into_iter().find(|msg_type| *msg_type as u32 == number).ok_or(UnknownMsgType(number))
    }
}

/// `struct xsd_sockmsg`, with a known type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub msg_type: MsgType,
    /// Chosen by the client, echoed by xenstored; 0 in watch events.
    pub req_id: u32,
    /// 0 outside a transaction.
    pub tx_id: u32,
    /// Payload length in bytes.
    pub len: u32,
}

impl Header {
    /// The header as it travels: four little-endian u32 in field order.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut bytes = [0; HEADER_LEN];
        let fields = [self.msg_type as u32, self.req_id, self.tx_id, self.len];
        for (chunk, field) in bytes.chunks_exact_mut(4).zip(fields) {
            chunk.copy_from_slice(&field.to_le_bytes());
        }
        bytes
    }

    /// Parses an untrusted header; rejects unknown types and payloads over [`PAYLOAD_MAX`].
    pub fn decode(bytes: &[u8; HEADER_LEN]) -> Result<Header, DecodeError> {
        let field = |index: usize| {
            let mut word = [0; 4];
            word.copy_from_slice(&bytes[index * 4..index * 4 + 4]);
            u32::from_le_bytes(word)
        };
        let msg_type = MsgType::try_from(field(0)).map_err(|UnknownMsgType(n)| DecodeError::UnknownType(n))?;
        let len = field(3);
        if len as usize > PAYLOAD_MAX {
            return Err(DecodeError::PayloadTooLong(len));
        }
        Ok(Header { msg_type, req_id: field(1), tx_id: field(2), len })
    }
}

/// One whole message: a header and exactly `header.len` bytes of payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub header: Header,
    pub payload: Vec<u8>,
}

/// Why a request was not encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// the path is empty
    #[error("the path is empty")]
    EmptyPath,
    /// the path is longer than xenstored accepts
    #[error("the path is {len} bytes, more than the {max} xenstored accepts")]
    PathTooLong { len: usize, max: usize },
    /// the path has a character other than ASCII letters, digits and -/_@
    #[error("the path has {0:?}; xenstored accepts only ASCII letters, digits and -/_@")]
    PathCharacter(char),
    /// the path contains "//"
    #[error("the path contains \"//\"")]
    DoubleSlash,
    /// the path ends with '/'
    #[error("the path ends with '/'")]
    TrailingSlash,
    /// the path starts with '@', which only watches may do
    #[error("the path starts with '@', which only watches may do")]
    SpecialPath,
    /// the watch token contains a NUL byte
    #[error("the watch token contains a NUL byte")]
    NulInToken,
    /// set_perms needs at least one permission (the owner's)
    #[error("set_perms needs at least one permission (the owner's)")]
    NoPermissions,
    /// transaction_start was given a transaction id; transactions do not nest
    #[error("transaction_start was given a transaction id; transactions do not nest")]
    NestedTransaction,
    /// transaction_end was given transaction id 0, which is no transaction
    #[error("transaction_end was given transaction id 0, which is no transaction")]
    NoTransaction,
    /// the payload is longer than XENSTORE_PAYLOAD_MAX (4096 bytes)
    #[error("the payload is {0} bytes, more than the {PAYLOAD_MAX} allowed")]
    PayloadTooLong(usize),
}

/// Checks a node path as xenstored would: absolute ("/a/b", at most [`ABS_PATH_MAX`]
/// bytes) or relative to the domain's home ("a/b", at most [`REL_PATH_MAX`]), made of
/// ASCII letters, digits and `-/_@`, with no "//" and no trailing '/' except the root.
pub fn check_path(path: &str) -> Result<(), EncodeError> {
    if path.starts_with('@') {
        return Err(EncodeError::SpecialPath);
    }
    check_watch_path(path)
}

/// Checks a watch path: a node path, or a special watch such as "@releaseDomain".
pub fn check_watch_path(path: &str) -> Result<(), EncodeError> {
    if path.is_empty() {
        return Err(EncodeError::EmptyPath);
    }
    let max = if path.starts_with('/') { ABS_PATH_MAX } else { REL_PATH_MAX };
    if path.len() > max {
        return Err(EncodeError::PathTooLong { len: path.len(), max });
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || "-/_@".contains(c);
    if let Some(c) = path.chars().find(|c| !allowed(*c)) {
        return Err(EncodeError::PathCharacter(c));
    }
    if path.contains("//") {
        return Err(EncodeError::DoubleSlash);
    }
    if path != "/" && path.ends_with('/') {
        return Err(EncodeError::TrailingSlash);
    }
    Ok(())
}

/// Which operations a domain may do on a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    None,
    Read,
    Write,
    Both,
}

impl Access {
    /// The letter of the text form: 'n', 'r', 'w' or 'b'.
    pub fn letter(self) -> char {
        match self {
            Access::None => 'n',
            Access::Read => 'r',
            Access::Write => 'w',
            Access::Both => 'b',
        }
    }

    pub fn from_letter(letter: char) -> Option<Access> {
        match letter {
            'n' => Some(Access::None),
            'r' => Some(Access::Read),
            'w' => Some(Access::Write),
            'b' => Some(Access::Both),
            _ => None,
        }
    }

    pub fn can_read(self) -> bool {
        matches!(self, Access::Read | Access::Both)
    }

    pub fn can_write(self) -> bool {
        matches!(self, Access::Write | Access::Both)
    }
}

/// One entry of a node's permission list. The first entry names the owner (who always
/// has full access) and, in `access`, what domains not listed may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Permission {
    pub domid: u16,
    pub access: Access,
}

impl Permission {
    /// Parses the text form, e.g. "r5": an access letter then a decimal domid.
    pub fn parse(text: &str) -> Option<Permission> {
        let mut chars = text.chars();
        let access = Access::from_letter(chars.next()?)?;
        let domid = parse_decimal(chars.as_str())?;
        Some(Permission { domid: u16::try_from(domid).ok()?, access })
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.access.letter(), self.domid)
    }
}

/// Strict unsigned decimal: digits only, no sign, no spaces, fits in a u32.
pub(crate) fn parse_decimal(text: &str) -> Option<u32> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.bytes().try_fold(0u32, |n, digit| n.checked_mul(10)?.checked_add(u32::from(digit - b'0')))
}

/// A header and a payload made of `parts`, as one buffer ready for the ring.
pub fn encode(msg_type: MsgType, req_id: u32, tx_id: u32, parts: &[&[u8]]) -> Result<Vec<u8>, EncodeError> {
    let len: usize = parts.iter().map(|part| part.len()).sum();
    if len > PAYLOAD_MAX {
        return Err(EncodeError::PayloadTooLong(len));
    }
    let header = Header { msg_type, req_id, tx_id, len: len as u32 };
    let mut bytes = Vec::with_capacity(HEADER_LEN + len);
    bytes.extend_from_slice(&header.encode());
    for part in parts {
        bytes.extend_from_slice(part);
    }
    Ok(bytes)
}

fn path_request(msg_type: MsgType, req_id: u32, tx_id: u32, path: &str) -> Result<Vec<u8>, EncodeError> {
    check_path(path)?;
    encode(msg_type, req_id, tx_id, &[path.as_bytes(), b"\0"])
}

/// XS_READ "path\0"; the reply is the value.
pub fn read(req_id: u32, tx_id: u32, path: &str) -> Result<Vec<u8>, EncodeError> {
    path_request(MsgType::Read, req_id, tx_id, path)
}

/// XS_DIRECTORY "path\0"; the reply lists the children's names.
pub fn directory(req_id: u32, tx_id: u32, path: &str) -> Result<Vec<u8>, EncodeError> {
    path_request(MsgType::Directory, req_id, tx_id, path)
}

/// XS_GET_PERMS "path\0".
pub fn get_perms(req_id: u32, tx_id: u32, path: &str) -> Result<Vec<u8>, EncodeError> {
    path_request(MsgType::GetPerms, req_id, tx_id, path)
}

/// XS_MKDIR "path\0": creates the node and missing parents, keeps existing values.
pub fn mkdir(req_id: u32, tx_id: u32, path: &str) -> Result<Vec<u8>, EncodeError> {
    path_request(MsgType::Mkdir, req_id, tx_id, path)
}

/// XS_RM "path\0": removes the node and everything below it.
pub fn rm(req_id: u32, tx_id: u32, path: &str) -> Result<Vec<u8>, EncodeError> {
    path_request(MsgType::Rm, req_id, tx_id, path)
}

/// XS_GET_DOMAIN_PATH "domid\0" (decimal); the reply is `/local/domain/<domid>`.
pub fn get_domain_path(req_id: u32, tx_id: u32, domid: u16) -> Result<Vec<u8>, EncodeError> {
    let text = format!("{domid}\0");
    encode(MsgType::GetDomainPath, req_id, tx_id, &[text.as_bytes()])
}

/// XS_WRITE "path\0value": the value is raw bytes with no terminator.
pub fn write(req_id: u32, tx_id: u32, path: &str, value: &[u8]) -> Result<Vec<u8>, EncodeError> {
    check_path(path)?;
    encode(MsgType::Write, req_id, tx_id, &[path.as_bytes(), b"\0", value])
}

/// XS_SET_PERMS "path\0" then each permission's text form and a NUL; owner first.
pub fn set_perms(req_id: u32, tx_id: u32, path: &str, permissions: &[Permission]) -> Result<Vec<u8>, EncodeError> {
    check_path(path)?;
    if permissions.is_empty() {
        return Err(EncodeError::NoPermissions);
    }
    let text: String = permissions.iter().map(|permission| format!("{permission}\0")).collect();
    encode(MsgType::SetPerms, req_id, tx_id, &[path.as_bytes(), b"\0", text.as_bytes()])
}

fn watch_request(msg_type: MsgType, req_id: u32, tx_id: u32, path: &str, token: &str) -> Result<Vec<u8>, EncodeError> {
    check_watch_path(path)?;
    if token.contains('\0') {
        return Err(EncodeError::NulInToken);
    }
    encode(msg_type, req_id, tx_id, &[path.as_bytes(), b"\0", token.as_bytes(), b"\0"])
}

/// XS_WATCH "path\0token\0": events for the path and below carry the token.
pub fn watch(req_id: u32, tx_id: u32, path: &str, token: &str) -> Result<Vec<u8>, EncodeError> {
    watch_request(MsgType::Watch, req_id, tx_id, path, token)
}

/// XS_UNWATCH "path\0token\0", the same pair given to [`watch`].
pub fn unwatch(req_id: u32, tx_id: u32, path: &str, token: &str) -> Result<Vec<u8>, EncodeError> {
    watch_request(MsgType::Unwatch, req_id, tx_id, path, token)
}

/// XS_TRANSACTION_START "\0"; `tx_id` must be 0. The reply is the new transaction's id.
pub fn transaction_start(req_id: u32, tx_id: u32) -> Result<Vec<u8>, EncodeError> {
    if tx_id != 0 {
        return Err(EncodeError::NestedTransaction);
    }
    encode(MsgType::TransactionStart, req_id, tx_id, &[b"\0"])
}

/// XS_TRANSACTION_END "T\0" (commit) or "F\0" (abandon) for transaction `tx_id`.
pub fn transaction_end(req_id: u32, tx_id: u32, commit: bool) -> Result<Vec<u8>, EncodeError> {
    if tx_id == 0 {
        return Err(EncodeError::NoTransaction);
    }
    let payload: &[u8] = if commit { b"T\0" } else { b"F\0" };
    encode(MsgType::TransactionEnd, req_id, tx_id, &[payload])
}

/// A request a client can make, for code that handles requests generically (a session).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request<'a> {
    Read { path: &'a str },
    Directory { path: &'a str },
    GetPerms { path: &'a str },
    GetDomainPath { domid: u16 },
    Mkdir { path: &'a str },
    Rm { path: &'a str },
    Write { path: &'a str, value: &'a [u8] },
    SetPerms { path: &'a str, permissions: &'a [Permission] },
    Watch { path: &'a str, token: &'a str },
    Unwatch { path: &'a str, token: &'a str },
    TransactionStart,
    TransactionEnd { commit: bool },
}

impl Request<'_> {
    /// The type of the request, and of its successful reply.
    pub fn msg_type(&self) -> MsgType {
        match self {
            Request::Read { .. } => MsgType::Read,
            Request::Directory { .. } => MsgType::Directory,
            Request::GetPerms { .. } => MsgType::GetPerms,
            Request::GetDomainPath { .. } => MsgType::GetDomainPath,
            Request::Mkdir { .. } => MsgType::Mkdir,
            Request::Rm { .. } => MsgType::Rm,
            Request::Write { .. } => MsgType::Write,
            Request::SetPerms { .. } => MsgType::SetPerms,
            Request::Watch { .. } => MsgType::Watch,
            Request::Unwatch { .. } => MsgType::Unwatch,
            Request::TransactionStart => MsgType::TransactionStart,
            Request::TransactionEnd { .. } => MsgType::TransactionEnd,
        }
    }

    pub fn encode(&self, req_id: u32, tx_id: u32) -> Result<Vec<u8>, EncodeError> {
        match *self {
            Request::Read { path } => read(req_id, tx_id, path),
            Request::Directory { path } => directory(req_id, tx_id, path),
            Request::GetPerms { path } => get_perms(req_id, tx_id, path),
            Request::GetDomainPath { domid } => get_domain_path(req_id, tx_id, domid),
            Request::Mkdir { path } => mkdir(req_id, tx_id, path),
            Request::Rm { path } => rm(req_id, tx_id, path),
            Request::Write { path, value } => write(req_id, tx_id, path, value),
            Request::SetPerms { path, permissions } => set_perms(req_id, tx_id, path, permissions),
            Request::Watch { path, token } => watch(req_id, tx_id, path, token),
            Request::Unwatch { path, token } => unwatch(req_id, tx_id, path, token),
            Request::TransactionStart => transaction_start(req_id, tx_id),
            Request::TransactionEnd { commit } => transaction_end(req_id, tx_id, commit),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;
    use alloc::vec;

    #[test]
    fn read_of_domid_matches_fixture() {
        let expected = [0x02, 0, 0, 0, 0x07, 0, 0, 0, 0, 0, 0, 0, 0x06, 0, 0, 0, b'd', b'o', b'm', b'i', b'd', 0];
        assert_eq!(read(7, 0, "domid").unwrap(), expected);
    }

    #[test]
    fn write_has_no_trailing_nul() {
        let bytes = write(1, 5, "/a/b", b"xy").unwrap();
        assert_eq!(&bytes[..16], &[11, 0, 0, 0, 1, 0, 0, 0, 5, 0, 0, 0, 7, 0, 0, 0]);
        assert_eq!(&bytes[16..], b"/a/b\0xy");
    }

    #[test]
    fn request_payload_fixtures() {
        let payload = |bytes: Vec<u8>| bytes[HEADER_LEN..].to_vec();
        let perms = [Permission { domid: 0, access: Access::None }, Permission { domid: 5, access: Access::Read }];
        assert_eq!(payload(set_perms(1, 0, "x", &perms).unwrap()), b"x\0n0\0r5\0");
        assert_eq!(payload(watch(1, 0, "@releaseDomain", "t1").unwrap()), b"@releaseDomain\0t1\0");
        assert_eq!(payload(unwatch(1, 0, "/a", "").unwrap()), b"/a\0\0");
        assert_eq!(payload(get_domain_path(1, 0, 65535).unwrap()), b"65535\0");
        assert_eq!(payload(transaction_start(1, 0).unwrap()), b"\0");
        assert_eq!(payload(transaction_end(1, 9, true).unwrap()), b"T\0");
        assert_eq!(payload(transaction_end(1, 9, false).unwrap()), b"F\0");
        let end = transaction_end(3, 9, true).unwrap();
        assert_eq!(&end[..16], &[7, 0, 0, 0, 3, 0, 0, 0, 9, 0, 0, 0, 2, 0, 0, 0]);
    }

    #[test]
    fn request_enum_encodes_like_the_functions() {
        let request = Request::Write { path: "a", value: b"1" };
        assert_eq!(request.msg_type(), MsgType::Write);
        assert_eq!(request.encode(4, 2), write(4, 2, "a", b"1"));
        assert_eq!(Request::TransactionStart.encode(1, 0), transaction_start(1, 0));
    }

    #[test]
    fn paths_are_checked() {
        assert_eq!(check_path("/"), Ok(()));
        assert_eq!(check_path("device/vbd/768/state"), Ok(()));
        assert_eq!(check_path("/a-b_c@d/E9"), Ok(()));
        assert_eq!(check_path(""), Err(EncodeError::EmptyPath));
        assert_eq!(check_path("/a//b"), Err(EncodeError::DoubleSlash));
        assert_eq!(check_path("/a/"), Err(EncodeError::TrailingSlash));
        assert_eq!(check_path("a b"), Err(EncodeError::PathCharacter(' ')));
        assert_eq!(check_path("a\0b"), Err(EncodeError::PathCharacter('\0')));
        assert_eq!(check_path("/é"), Err(EncodeError::PathCharacter('é')));
        assert_eq!(check_path("@releaseDomain"), Err(EncodeError::SpecialPath));
        assert_eq!(check_watch_path("@releaseDomain"), Ok(()));
        assert_eq!(read(1, 0, "a.b"), Err(EncodeError::PathCharacter('.')));
    }

    #[test]
    fn path_length_limits() {
        let absolute = "/".to_string() + &"a".repeat(ABS_PATH_MAX - 1);
        assert_eq!(check_path(&absolute), Ok(()));
        let too_long = absolute.clone() + "a";
        assert_eq!(check_path(&too_long), Err(EncodeError::PathTooLong { len: ABS_PATH_MAX + 1, max: ABS_PATH_MAX }));
        assert_eq!(check_path(&"a".repeat(REL_PATH_MAX)), Ok(()));
        assert_eq!(
            check_path(&"a".repeat(REL_PATH_MAX + 1)),
            Err(EncodeError::PathTooLong { len: REL_PATH_MAX + 1, max: REL_PATH_MAX })
        );
    }

    #[test]
    fn payload_limit_is_enforced() {
        // "a\0" plus 4094 bytes of value is exactly the limit.
        assert!(write(1, 0, "a", &vec![b'x'; PAYLOAD_MAX - 2]).is_ok());
        assert_eq!(write(1, 0, "a", &vec![b'x'; PAYLOAD_MAX - 1]), Err(EncodeError::PayloadTooLong(PAYLOAD_MAX + 1)));
        let path = "/".to_string() + &"a".repeat(ABS_PATH_MAX - 1);
        let token = "t".repeat(2000);
        assert!(matches!(watch(1, 0, &path, &token), Err(EncodeError::PayloadTooLong(_))));
    }

    #[test]
    fn other_encoding_errors() {
        assert_eq!(watch(1, 0, "/a", "x\0y"), Err(EncodeError::NulInToken));
        assert_eq!(set_perms(1, 0, "/a", &[]), Err(EncodeError::NoPermissions));
        assert_eq!(transaction_start(1, 3), Err(EncodeError::NestedTransaction));
        assert_eq!(transaction_end(1, 0, true), Err(EncodeError::NoTransaction));
        assert_eq!(EncodeError::DoubleSlash.to_string(), "the path contains \"//\"");
    }

    #[test]
    fn msg_type_from_number() {
        for msg_type in MsgType::ALL {
            assert_eq!(MsgType::try_from(msg_type as u32), Ok(msg_type));
        }
        assert_eq!(MsgType::try_from(20), Err(UnknownMsgType(20)));
        assert_eq!(MsgType::try_from(23), Err(UnknownMsgType(23)));
        assert_eq!(MsgType::try_from(0xffff), Err(UnknownMsgType(0xffff)));
        assert_eq!(MsgType::try_from(u32::MAX), Err(UnknownMsgType(u32::MAX)));
    }

    #[test]
    fn header_round_trip_and_checks() {
        let header = Header { msg_type: MsgType::WatchEvent, req_id: 0x0102_0304, tx_id: 9, len: 4096 };
        assert_eq!(Header::decode(&header.encode()), Ok(header));
        let mut bytes = header.encode();
        bytes[12..16].copy_from_slice(&4097u32.to_le_bytes());
        assert_eq!(Header::decode(&bytes), Err(DecodeError::PayloadTooLong(4097)));
        bytes[0..4].copy_from_slice(&99u32.to_le_bytes());
        assert_eq!(Header::decode(&bytes), Err(DecodeError::UnknownType(99)));
    }

    #[test]
    fn permissions_round_trip() {
        for access in [Access::None, Access::Read, Access::Write, Access::Both] {
            for domid in [0, 1, 7, 32752, 65535] {
                let permission = Permission { domid, access };
                assert_eq!(Permission::parse(&permission.to_string()), Some(permission));
            }
        }
        assert_eq!(Permission { domid: 12, access: Access::Both }.to_string(), "b12");
        for bad in ["", "r", "x5", "r-1", "r+1", "r65536", "r 5", "5", "rr5", "r5 "] {
            assert_eq!(Permission::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn decimal_parsing_is_strict() {
        assert_eq!(parse_decimal("0"), Some(0));
        assert_eq!(parse_decimal("4294967295"), Some(u32::MAX));
        assert_eq!(parse_decimal("4294967296"), None);
        assert_eq!(parse_decimal(""), None);
        assert_eq!(parse_decimal("+1"), None);
        assert_eq!(parse_decimal("1a"), None);
    }
}
