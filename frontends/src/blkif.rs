//! The blkif wire format (Xen's io/blkif.h): request and response layouts, the ring's
//! entry size, operation and status codes. The ring itself is [`crate::ring`].
//!
//! Each layout is a view over a byte buffer in the smoltcp style: `new_unchecked`
//! to emit into a buffer we own, `new_checked` for bytes from the other side (it
//! checks the length, so the accessors never panic afterwards), and a `Repr` that
//! parses and validates the fields. Layouts are the x86_64 ABI ("x86_64-abi");
//! `tests/blkif_layout.rs` compares every size, offset and constant here with the
//! C headers.
//!
//! Sector quantities on the wire (`sector_number`, `first_sect`/`last_sect`,
//! `nr_sectors`) are 512-byte units: we never advertise
//! `feature-large-sector-size`.

use core::fmt;

use crate::ring::{self, Geometry};

pub use crate::ring::PAGE_SIZE;
/// The sector unit of every sector quantity on the wire.
pub const SECTOR_SIZE: usize = 512;
/// 512-byte sectors in a page: a segment's `last_sect` is at most this minus one.
pub const SECTORS_PER_PAGE: usize = PAGE_SIZE / SECTOR_SIZE;

/// `BLKIF_OP_*`.
pub const OP_READ: u8 = 0;
pub const OP_WRITE: u8 = 1;
pub const OP_WRITE_BARRIER: u8 = 2;
pub const OP_FLUSH_DISKCACHE: u8 = 3;
pub const OP_RESERVED_1: u8 = 4;
pub const OP_DISCARD: u8 = 5;
pub const OP_INDIRECT: u8 = 6;

/// `BLKIF_RSP_*`.
pub const RSP_OKAY: i16 = 0;
pub const RSP_ERROR: i16 = -1;
pub const RSP_EOPNOTSUPP: i16 = -2;

/// `BLKIF_MAX_SEGMENTS_PER_REQUEST`: segments in a direct request.
pub const MAX_SEGMENTS_PER_REQUEST: usize = 11;
/// `BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST`: indirect pages in an indirect request.
pub const MAX_INDIRECT_PAGES_PER_REQUEST: usize = 8;
/// `sizeof(struct blkif_request_segment)`.
pub const SEGMENT_LEN: usize = 8;
/// Segment descriptors in one indirect page.
pub const SEGMENTS_PER_INDIRECT_PAGE: usize = PAGE_SIZE / SEGMENT_LEN;
/// The most segments an indirect request can describe.
pub const MAX_INDIRECT_SEGMENTS: usize = MAX_INDIRECT_PAGES_PER_REQUEST * SEGMENTS_PER_INDIRECT_PAGE;

/// `BLKIF_DISCARD_SECURE`.
pub const DISCARD_SECURE: u8 = 1;

/// `VDISK_*` bits of the backend's `info` node.
pub const VDISK_CDROM: u32 = 0x1;
pub const VDISK_REMOVABLE: u32 = 0x2;
pub const VDISK_READONLY: u32 = 0x4;

/// `XEN_IO_PROTO_ABI_X86_64`, the value of the frontend's `protocol` node.
pub const PROTOCOL_X86_64: &str = "x86_64-abi";

/// `sizeof(struct blkif_request)`.
pub const REQUEST_LEN: usize = 112;
/// `sizeof(struct blkif_request_discard)`.
pub const DISCARD_REQUEST_LEN: usize = 32;
/// `sizeof(struct blkif_request_indirect)` on x86_64.
pub const INDIRECT_REQUEST_LEN: usize = 64;
/// `sizeof(struct blkif_response)`.
pub const RESPONSE_LEN: usize = 16;
/// `sizeof(union blkif_sring_entry)`: the largest of the request layouts.
pub const RING_ENTRY_LEN: usize = REQUEST_LEN;
/// The largest ring Linux's blkback and QEMU accept (`XENBUS_MAX_RING_GRANT_ORDER`).
pub const MAX_RING_PAGE_ORDER: u32 = 4;

/// Field positions, as in the C structs.
pub mod field {
    use core::ops::Range;

    /// A byte range of a layout.
    pub type Field = Range<usize>;

    // struct blkif_request
    pub const OPERATION: usize = 0;
    pub const NR_SEGMENTS: usize = 1;
    pub const HANDLE: Field = 2..4;
    pub const ID: Field = 8..16;
    pub const SECTOR_NUMBER: Field = 16..24;
    pub const SEGMENTS: usize = 24;

    // struct blkif_request_segment
    pub const SEGMENT_GREF: Field = 0..4;
    pub const SEGMENT_FIRST_SECT: usize = 4;
    pub const SEGMENT_LAST_SECT: usize = 5;

    // struct blkif_request_discard (operation, handle, id, sector_number as above)
    pub const DISCARD_FLAG: usize = 1;
    pub const DISCARD_NR_SECTORS: Field = 24..32;

    // struct blkif_request_indirect (operation, id, sector_number as above)
    pub const INDIRECT_OP: usize = 1;
    pub const INDIRECT_NR_SEGMENTS: Field = 2..4;
    pub const INDIRECT_HANDLE: Field = 24..26;
    pub const INDIRECT_GREFS: usize = 28;

    // struct blkif_response
    pub const RESPONSE_ID: Field = 0..8;
    pub const RESPONSE_OPERATION: usize = 8;
    pub const RESPONSE_STATUS: Field = 10..12;
}

/// Why bytes from the other side are not a valid blkif message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The buffer is shorter than the layout.
    #[error("message shorter than its layout")]
    Truncated,
    /// An operation code blkif.h does not define (or not valid here).
    #[error("unknown operation {0}")]
    BadOperation(u8),
    /// A status code blkif.h does not define.
    #[error("unknown status {0}")]
    BadStatus(i16),
    /// More segments than the request kind can hold.
    #[error("{0} segments is too many")]
    TooManySegments(usize),
    /// A segment's sectors leave its page or run backwards.
    #[error("segment sectors {first_sect}..={last_sect} leave the page")]
    BadSegment { first_sect: u8, last_sect: u8 },
}

/// A blkif operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Operation {
    Read,
    Write,
    WriteBarrier,
    FlushDiskCache,
    Discard,
    Indirect,
}

impl Operation {
    /// The operation with code `code`.
    pub fn from_code(code: u8) -> Result<Operation, WireError> {
        Ok(match code {
            OP_READ => Operation::Read,
            OP_WRITE => Operation::Write,
            OP_WRITE_BARRIER => Operation::WriteBarrier,
            OP_FLUSH_DISKCACHE => Operation::FlushDiskCache,
            OP_DISCARD => Operation::Discard,
            OP_INDIRECT => Operation::Indirect,
            other => return Err(WireError::BadOperation(other)),
        })
    }

    /// The `BLKIF_OP_*` code.
    pub fn code(self) -> u8 {
        match self {
            Operation::Read => OP_READ,
            Operation::Write => OP_WRITE,
            Operation::WriteBarrier => OP_WRITE_BARRIER,
            Operation::FlushDiskCache => OP_FLUSH_DISKCACHE,
            Operation::Discard => OP_DISCARD,
            Operation::Indirect => OP_INDIRECT,
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Operation::Read => "read",
            Operation::Write => "write",
            Operation::WriteBarrier => "write barrier",
            Operation::FlushDiskCache => "flush",
            Operation::Discard => "discard",
            Operation::Indirect => "indirect",
        })
    }
}

/// A response's status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Okay,
    /// The operation failed (-EIO).
    Error,
    /// The backend does not support the operation.
    NotSupported,
}

impl Status {
    pub fn from_code(code: i16) -> Result<Status, WireError> {
        match code {
            RSP_OKAY => Ok(Status::Okay),
            RSP_ERROR => Ok(Status::Error),
            RSP_EOPNOTSUPP => Ok(Status::NotSupported),
            other => Err(WireError::BadStatus(other)),
        }
    }

    pub fn code(self) -> i16 {
        match self {
            Status::Okay => RSP_OKAY,
            Status::Error => RSP_ERROR,
            Status::NotSupported => RSP_EOPNOTSUPP,
        }
    }
}

/// The shared ring of `nr_pages` pages (1 to 2^[`MAX_RING_PAGE_ORDER`]).
pub const fn ring_geometry(nr_pages: usize) -> Geometry {
    Geometry::new(nr_pages, RING_ENTRY_LEN)
}

/// The number of requests a shared ring of `nr_pages` pages holds
/// (`__CONST_RING_SIZE(blkif, nr_pages * PAGE_SIZE)`): a power of two.
pub const fn ring_size(nr_pages: usize) -> u32 {
    ring::size(nr_pages * PAGE_SIZE, RING_ENTRY_LEN)
}

/// Indirect pages needed for `nr_segments` segments.
pub fn indirect_pages(nr_segments: usize) -> usize {
    nr_segments.div_ceil(SEGMENTS_PER_INDIRECT_PAGE)
}

fn get_u16(bytes: &[u8], at: field::Field) -> u16 {
    u16::from_le_bytes([bytes[at.start], bytes[at.start + 1]])
}

fn get_u32(bytes: &[u8], at: field::Field) -> u32 {
    let mut value = [0; 4];
    value.copy_from_slice(&bytes[at]);
    u32::from_le_bytes(value)
}

fn get_u64(bytes: &[u8], at: field::Field) -> u64 {
    let mut value = [0; 8];
    value.copy_from_slice(&bytes[at]);
    u64::from_le_bytes(value)
}

/// One scatter-gather element: sectors `first_sect..=last_sect` of a granted page.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Segment {
    pub gref: u32,
    pub first_sect: u8,
    pub last_sect: u8,
}

impl Segment {
    /// Parses the 8 bytes of a `blkif_request_segment`, checking the sector range.
    pub fn parse(bytes: &[u8]) -> Result<Segment, WireError> {
        if bytes.len() < SEGMENT_LEN {
            return Err(WireError::Truncated);
        }
        let segment = Segment {
            gref: get_u32(bytes, field::SEGMENT_GREF),
            first_sect: bytes[field::SEGMENT_FIRST_SECT],
            last_sect: bytes[field::SEGMENT_LAST_SECT],
        };
        let (first, last) = (segment.first_sect, segment.last_sect);
        if first > last || usize::from(last) >= SECTORS_PER_PAGE {
            return Err(WireError::BadSegment { first_sect: first, last_sect: last });
        }
        Ok(segment)
    }

    /// Writes the 8 bytes of a `blkif_request_segment` (padding zeroed).
    /// Panics if `bytes` is shorter than [`SEGMENT_LEN`].
    pub fn emit(&self, bytes: &mut [u8]) {
        bytes[field::SEGMENT_GREF].copy_from_slice(&self.gref.to_le_bytes());
        bytes[field::SEGMENT_FIRST_SECT] = self.first_sect;
        bytes[field::SEGMENT_LAST_SECT] = self.last_sect;
        bytes[6] = 0;
        bytes[7] = 0;
    }

    /// The 512-byte sectors it covers.
    pub fn nr_sectors(&self) -> usize {
        usize::from(self.last_sect) + 1 - usize::from(self.first_sect)
    }
}

/// A ring request as bytes: the common head of every request layout
/// (`operation`, `id`, `sector_number` sit at the same offsets in all of them).
#[derive(Debug)]
pub struct Request<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Request<T> {
    /// A view without checks, for emitting into a buffer of at least [`REQUEST_LEN`].
    pub fn new_unchecked(buffer: T) -> Request<T> {
        Request { buffer }
    }

    /// A view of untrusted bytes: at least a whole ring entry.
    pub fn new_checked(buffer: T) -> Result<Request<T>, WireError> {
        if buffer.as_ref().len() < REQUEST_LEN {
            return Err(WireError::Truncated);
        }
        Ok(Request { buffer })
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    pub fn operation(&self) -> u8 {
        self.buffer.as_ref()[field::OPERATION]
    }
    /// `nr_segments` of a direct read/write request.
    pub fn nr_segments(&self) -> u8 {
        self.buffer.as_ref()[field::NR_SEGMENTS]
    }
    pub fn handle(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::HANDLE)
    }
    pub fn id(&self) -> u64 {
        get_u64(self.buffer.as_ref(), field::ID)
    }
    pub fn sector_number(&self) -> u64 {
        get_u64(self.buffer.as_ref(), field::SECTOR_NUMBER)
    }
    /// Direct segment `index` (< [`MAX_SEGMENTS_PER_REQUEST`]), unvalidated.
    pub fn segment_bytes(&self, index: usize) -> &[u8] {
        assert!(index < MAX_SEGMENTS_PER_REQUEST, "segment {index} of a direct request");
        let start = field::SEGMENTS + index * SEGMENT_LEN;
        &self.buffer.as_ref()[start..start + SEGMENT_LEN]
    }
    /// `flag` of a discard request.
    pub fn discard_flag(&self) -> u8 {
        self.buffer.as_ref()[field::DISCARD_FLAG]
    }
    /// `nr_sectors` of a discard request.
    pub fn discard_nr_sectors(&self) -> u64 {
        get_u64(self.buffer.as_ref(), field::DISCARD_NR_SECTORS)
    }
    /// `indirect_op` of an indirect request.
    pub fn indirect_op(&self) -> u8 {
        self.buffer.as_ref()[field::INDIRECT_OP]
    }
    /// `nr_segments` of an indirect request.
    pub fn indirect_nr_segments(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::INDIRECT_NR_SEGMENTS)
    }
    /// `handle` of an indirect request.
    pub fn indirect_handle(&self) -> u16 {
        get_u16(self.buffer.as_ref(), field::INDIRECT_HANDLE)
    }
    /// `indirect_grefs[index]` (< [`MAX_INDIRECT_PAGES_PER_REQUEST`]).
    pub fn indirect_gref(&self, index: usize) -> u32 {
        assert!(index < MAX_INDIRECT_PAGES_PER_REQUEST, "indirect page {index}");
        let start = field::INDIRECT_GREFS + index * 4;
        get_u32(self.buffer.as_ref(), start..start + 4)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Request<T> {
    fn bytes_mut(&mut self) -> &mut [u8] {
        self.buffer.as_mut()
    }
    pub fn set_operation(&mut self, code: u8) {
        self.bytes_mut()[field::OPERATION] = code;
    }
    pub fn set_nr_segments(&mut self, count: u8) {
        self.bytes_mut()[field::NR_SEGMENTS] = count;
    }
    pub fn set_handle(&mut self, handle: u16) {
        self.bytes_mut()[field::HANDLE].copy_from_slice(&handle.to_le_bytes());
    }
    pub fn set_id(&mut self, id: u64) {
        self.bytes_mut()[field::ID].copy_from_slice(&id.to_le_bytes());
    }
    pub fn set_sector_number(&mut self, sector: u64) {
        self.bytes_mut()[field::SECTOR_NUMBER].copy_from_slice(&sector.to_le_bytes());
    }
    pub fn set_segment(&mut self, index: usize, segment: &Segment) {
        assert!(index < MAX_SEGMENTS_PER_REQUEST, "segment {index} of a direct request");
        let start = field::SEGMENTS + index * SEGMENT_LEN;
        segment.emit(&mut self.bytes_mut()[start..start + SEGMENT_LEN]);
    }
    pub fn set_discard_flag(&mut self, flag: u8) {
        self.bytes_mut()[field::DISCARD_FLAG] = flag;
    }
    pub fn set_discard_nr_sectors(&mut self, count: u64) {
        self.bytes_mut()[field::DISCARD_NR_SECTORS].copy_from_slice(&count.to_le_bytes());
    }
    pub fn set_indirect_op(&mut self, code: u8) {
        self.bytes_mut()[field::INDIRECT_OP] = code;
    }
    pub fn set_indirect_nr_segments(&mut self, count: u16) {
        self.bytes_mut()[field::INDIRECT_NR_SEGMENTS].copy_from_slice(&count.to_le_bytes());
    }
    pub fn set_indirect_handle(&mut self, handle: u16) {
        self.bytes_mut()[field::INDIRECT_HANDLE].copy_from_slice(&handle.to_le_bytes());
    }
    pub fn set_indirect_gref(&mut self, index: usize, gref: u32) {
        assert!(index < MAX_INDIRECT_PAGES_PER_REQUEST, "indirect page {index}");
        let start = field::INDIRECT_GREFS + index * 4;
        self.bytes_mut()[start..start + 4].copy_from_slice(&gref.to_le_bytes());
    }
}

/// A request, parsed and validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RequestRepr {
    /// Read, write, flush or barrier with up to 11 segments (flush and barrier
    /// usually with none).
    Direct {
        operation: Operation,
        handle: u16,
        id: u64,
        sector: u64,
        nr_segments: usize,
        segments: [Segment; MAX_SEGMENTS_PER_REQUEST],
    },
    Discard {
        handle: u16,
        id: u64,
        sector: u64,
        nr_sectors: u64,
        secure: bool,
    },
    /// Read or write whose segments sit in `ceil(nr_segments / 512)` indirect pages.
    Indirect {
        operation: Operation,
        handle: u16,
        id: u64,
        sector: u64,
        nr_segments: usize,
        indirect_grefs: [u32; MAX_INDIRECT_PAGES_PER_REQUEST],
    },
}

impl RequestRepr {
    /// Parses and validates a ring entry (what a backend does with our requests).
    pub fn parse<T: AsRef<[u8]>>(request: &Request<T>) -> Result<RequestRepr, WireError> {
        let (id, sector) = (request.id(), request.sector_number());
        match Operation::from_code(request.operation())? {
            operation @ (Operation::Read | Operation::Write | Operation::WriteBarrier | Operation::FlushDiskCache) => {
                let nr_segments = usize::from(request.nr_segments());
                if nr_segments > MAX_SEGMENTS_PER_REQUEST {
                    return Err(WireError::TooManySegments(nr_segments));
                }
                let mut segments = [Segment::default(); MAX_SEGMENTS_PER_REQUEST];
                for (index, segment) in segments.iter_mut().enumerate().take(nr_segments) {
                    *segment = Segment::parse(request.segment_bytes(index))?;
                }
                Ok(RequestRepr::Direct { operation, handle: request.handle(), id, sector, nr_segments, segments })
            }
            Operation::Discard => Ok(RequestRepr::Discard {
                handle: request.handle(),
                id,
                sector,
                nr_sectors: request.discard_nr_sectors(),
                secure: request.discard_flag() & DISCARD_SECURE != 0,
            }),
            Operation::Indirect => {
                let operation = match Operation::from_code(request.indirect_op())? {
                    op @ (Operation::Read | Operation::Write) => op,
                    _ => return Err(WireError::BadOperation(request.indirect_op())),
                };
                let nr_segments = usize::from(request.indirect_nr_segments());
                if nr_segments > MAX_INDIRECT_SEGMENTS {
                    return Err(WireError::TooManySegments(nr_segments));
                }
                let mut indirect_grefs = [0; MAX_INDIRECT_PAGES_PER_REQUEST];
                for (index, gref) in indirect_grefs.iter_mut().enumerate().take(indirect_pages(nr_segments)) {
                    *gref = request.indirect_gref(index);
                }
                let handle = request.indirect_handle();
                Ok(RequestRepr::Indirect { operation, handle, id, sector, nr_segments, indirect_grefs })
            }
        }
    }

    /// Writes the request into `request`'s buffer, zeroing the rest of the entry.
    /// Panics if the buffer is shorter than [`REQUEST_LEN`] or the segment counts
    /// exceed the layout.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, request: &mut Request<T>) {
        request.bytes_mut()[..REQUEST_LEN].fill(0);
        match self {
            RequestRepr::Direct { operation, handle, id, sector, nr_segments, segments } => {
                request.set_operation(operation.code());
                request.set_nr_segments(*nr_segments as u8);
                request.set_handle(*handle);
                request.set_id(*id);
                request.set_sector_number(*sector);
                for (index, segment) in segments[..*nr_segments].iter().enumerate() {
                    request.set_segment(index, segment);
                }
            }
            RequestRepr::Discard { handle, id, sector, nr_sectors, secure } => {
                request.set_operation(OP_DISCARD);
                request.set_discard_flag(if *secure { DISCARD_SECURE } else { 0 });
                request.set_handle(*handle);
                request.set_id(*id);
                request.set_sector_number(*sector);
                request.set_discard_nr_sectors(*nr_sectors);
            }
            RequestRepr::Indirect { operation, handle, id, sector, nr_segments, indirect_grefs } => {
                request.set_operation(OP_INDIRECT);
                request.set_indirect_op(operation.code());
                request.set_indirect_nr_segments(*nr_segments as u16);
                request.set_id(*id);
                request.set_sector_number(*sector);
                request.set_indirect_handle(*handle);
                for (index, gref) in indirect_grefs[..indirect_pages(*nr_segments)].iter().enumerate() {
                    request.set_indirect_gref(index, *gref);
                }
            }
        }
    }

    /// The `id` the response must echo.
    pub fn id(&self) -> u64 {
        match self {
            RequestRepr::Direct { id, .. } | RequestRepr::Discard { id, .. } | RequestRepr::Indirect { id, .. } => *id,
        }
    }

    /// The operation the response must echo (an indirect request's `indirect_op`).
    pub fn response_operation(&self) -> Operation {
        match self {
            RequestRepr::Direct { operation, .. } | RequestRepr::Indirect { operation, .. } => *operation,
            RequestRepr::Discard { .. } => Operation::Discard,
        }
    }
}

/// A ring response as bytes.
#[derive(Debug)]
pub struct Response<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Response<T> {
    /// A view without checks, for emitting into at least [`RESPONSE_LEN`] bytes.
    pub fn new_unchecked(buffer: T) -> Response<T> {
        Response { buffer }
    }

    /// A view of untrusted bytes.
    pub fn new_checked(buffer: T) -> Result<Response<T>, WireError> {
        if buffer.as_ref().len() < RESPONSE_LEN {
            return Err(WireError::Truncated);
        }
        Ok(Response { buffer })
    }

    pub fn id(&self) -> u64 {
        get_u64(self.buffer.as_ref(), field::RESPONSE_ID)
    }
    pub fn operation(&self) -> u8 {
        self.buffer.as_ref()[field::RESPONSE_OPERATION]
    }
    pub fn status(&self) -> i16 {
        get_u16(self.buffer.as_ref(), field::RESPONSE_STATUS) as i16
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Response<T> {
    pub fn set_id(&mut self, id: u64) {
        self.buffer.as_mut()[field::RESPONSE_ID].copy_from_slice(&id.to_le_bytes());
    }
    pub fn set_operation(&mut self, code: u8) {
        self.buffer.as_mut()[field::RESPONSE_OPERATION] = code;
    }
    pub fn set_status(&mut self, status: i16) {
        self.buffer.as_mut()[field::RESPONSE_STATUS].copy_from_slice(&status.to_le_bytes());
    }
}

/// A response, parsed and validated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResponseRepr {
    pub id: u64,
    pub operation: Operation,
    pub status: Status,
}

impl ResponseRepr {
    /// Validates the operation and status codes.
    pub fn parse<T: AsRef<[u8]>>(response: &Response<T>) -> Result<ResponseRepr, WireError> {
        Ok(ResponseRepr {
            id: response.id(),
            operation: Operation::from_code(response.operation())?,
            status: Status::from_code(response.status())?,
        })
    }

    /// Writes all 16 bytes (padding zeroed).
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, response: &mut Response<T>) {
        response.buffer.as_mut()[..RESPONSE_LEN].fill(0);
        response.set_id(self.id);
        response.set_operation(self.operation.code());
        response.set_status(self.status.code());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A read of sectors 0x1000.. into two pages (grants 8 and 9): the second
    /// segment covers sectors 0-3 of its page.
    static READ_REQUEST: [u8; REQUEST_LEN] = {
        let mut bytes = [0u8; REQUEST_LEN];
        bytes[0] = 0; // BLKIF_OP_READ
        bytes[1] = 2; // nr_segments
        bytes[2] = 0x00; // handle 768 = 0x300
        bytes[3] = 0x03;
        bytes[8] = 0x2a; // id 42
        bytes[17] = 0x10; // sector 0x1000
        bytes[24] = 8; // seg[0].gref
        bytes[29] = 7; // seg[0].last_sect
        bytes[32] = 9; // seg[1].gref
        bytes[37] = 3; // seg[1].last_sect
        bytes
    };

    #[test]
    fn a_read_request_parses_from_bytes_and_emits_the_same_bytes() {
        let request = Request::new_checked(&READ_REQUEST[..]).unwrap();
        let repr = RequestRepr::parse(&request).unwrap();
        let mut segments = [Segment::default(); MAX_SEGMENTS_PER_REQUEST];
        segments[0] = Segment { gref: 8, first_sect: 0, last_sect: 7 };
        segments[1] = Segment { gref: 9, first_sect: 0, last_sect: 3 };
        let operation = Operation::Read;
        let expected = RequestRepr::Direct { operation, handle: 768, id: 42, sector: 0x1000, nr_segments: 2, segments };
        assert_eq!(repr, expected);
        assert_eq!(segments[1].nr_sectors(), 4);
        let mut bytes = [0xffu8; REQUEST_LEN];
        expected.emit(&mut Request::new_unchecked(&mut bytes[..]));
        assert_eq!(bytes, READ_REQUEST);
    }

    #[test]
    fn indirect_and_discard_requests_round_trip() {
        let indirect = RequestRepr::Indirect {
            operation: Operation::Write,
            handle: 5632,
            id: 3,
            sector: 77,
            nr_segments: 513,
            indirect_grefs: [20, 21, 0, 0, 0, 0, 0, 0],
        };
        let mut bytes = [0u8; REQUEST_LEN];
        indirect.emit(&mut Request::new_unchecked(&mut bytes[..]));
        assert_eq!((bytes[0], bytes[1], &bytes[2..4]), (OP_INDIRECT, OP_WRITE, &513u16.to_le_bytes()[..]));
        assert_eq!(&bytes[24..26], &5632u16.to_le_bytes());
        assert_eq!(&bytes[28..36], &[20, 0, 0, 0, 21, 0, 0, 0]);
        assert_eq!(RequestRepr::parse(&Request::new_checked(&bytes[..]).unwrap()), Ok(indirect.clone()));
        assert_eq!(indirect.response_operation(), Operation::Write);

        let discard = RequestRepr::Discard { handle: 768, id: 9, sector: 2048, nr_sectors: 4096, secure: true };
        discard.emit(&mut Request::new_unchecked(&mut bytes[..]));
        assert_eq!((bytes[0], bytes[1]), (OP_DISCARD, DISCARD_SECURE));
        assert_eq!(&bytes[24..32], &4096u64.to_le_bytes());
        assert_eq!(RequestRepr::parse(&Request::new_checked(&bytes[..]).unwrap()), Ok(discard));
    }

    #[test]
    fn bad_requests_are_refused() {
        assert_eq!(Request::new_checked(&READ_REQUEST[..100]).err(), Some(WireError::Truncated));
        let mut bytes = READ_REQUEST;
        bytes[1] = 12;
        let too_many = RequestRepr::parse(&Request::new_checked(&bytes[..]).unwrap());
        assert_eq!(too_many, Err(WireError::TooManySegments(12)));
        bytes = READ_REQUEST;
        bytes[36] = 5; // seg[1].first_sect > last_sect
        let backwards = RequestRepr::parse(&Request::new_checked(&bytes[..]).unwrap());
        assert_eq!(backwards, Err(WireError::BadSegment { first_sect: 5, last_sect: 3 }));
        bytes = READ_REQUEST;
        bytes[37] = 8;
        let outside = RequestRepr::parse(&Request::new_checked(&bytes[..]).unwrap());
        assert_eq!(outside, Err(WireError::BadSegment { first_sect: 0, last_sect: 8 }));
        bytes = READ_REQUEST;
        bytes[0] = OP_RESERVED_1;
        assert_eq!(RequestRepr::parse(&Request::new_checked(&bytes[..]).unwrap()), Err(WireError::BadOperation(4)));
        bytes[0] = OP_INDIRECT;
        bytes[1] = OP_DISCARD;
        assert_eq!(RequestRepr::parse(&Request::new_checked(&bytes[..]).unwrap()), Err(WireError::BadOperation(5)));
    }

    #[test]
    fn responses_parse_and_reject_unknown_codes() {
        let bytes = [42, 0, 0, 0, 0, 0, 0, 0, OP_WRITE, 0xee, 0xff, 0xff, 0xee, 0xee, 0xee, 0xee];
        let response = Response::new_checked(&bytes[..]).unwrap();
        let repr = ResponseRepr::parse(&response).unwrap();
        assert_eq!(repr, ResponseRepr { id: 42, operation: Operation::Write, status: Status::Error });
        let mut emitted = [0xaau8; RESPONSE_LEN];
        repr.emit(&mut Response::new_unchecked(&mut emitted[..]));
        assert_eq!(emitted, [42, 0, 0, 0, 0, 0, 0, 0, OP_WRITE, 0, 0xff, 0xff, 0, 0, 0, 0]);
        assert_eq!(Response::new_checked(&bytes[..15]).err(), Some(WireError::Truncated));
        let mut bad = bytes;
        bad[10] = 7;
        bad[11] = 0;
        let status = ResponseRepr::parse(&Response::new_checked(&bad[..]).unwrap());
        assert_eq!(status, Err(WireError::BadStatus(7)));
        bad = bytes;
        bad[8] = 9;
        let op = ResponseRepr::parse(&Response::new_checked(&bad[..]).unwrap());
        assert_eq!(op, Err(WireError::BadOperation(9)));
    }

    #[test]
    fn ring_sizes_and_indirect_pages() {
        assert_eq!([1, 2, 4, 8, 16].map(ring_size), [32, 64, 128, 256, 512]);
        assert_eq!(ring_geometry(4).size(), 128);
        assert_eq!((indirect_pages(0), indirect_pages(12), indirect_pages(512), indirect_pages(513)), (0, 1, 1, 2));
        assert_eq!(MAX_INDIRECT_SEGMENTS, 4096);
    }
}
