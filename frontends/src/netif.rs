//! The netif wire format (io/netif.h).
//!
//! Each ring ([`crate::ring`]) is one page whose entries ("slots") are the size of the
//! larger of the request and response: a tx slot is 12 bytes, an rx slot 8, so both
//! rings have 256 slots in a 4 KiB page.
//!
//! Requests, responses and extra-info slots are views over byte buffers, in smoltcp's
//! style: `new_unchecked` for emitting into a buffer we own, `new_checked` for parsing
//! bytes copied out of the shared page (only the length is checked: the values are the
//! backend's and the driver validates them). All fields are little-endian (x86).

use core::ops::Range;

use crate::ring::Geometry;
pub use crate::ring::PAGE_SIZE;

/// Why a buffer could not be viewed as a netif structure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The buffer is shorter than the structure.
    #[error("buffer shorter than the netif structure")]
    Truncated,
}

/// Bytes in a tx ring slot (`union netif_tx_sring_entry`).
pub const TX_SLOT_BYTES: usize = 12;
/// Bytes in an rx ring slot (`union netif_rx_sring_entry`).
pub const RX_SLOT_BYTES: usize = 8;
/// The tx ring: one page of tx slots.
pub const TX_RING: Geometry = Geometry::new(1, TX_SLOT_BYTES);
/// The rx ring: one page of rx slots.
pub const RX_RING: Geometry = Geometry::new(1, RX_SLOT_BYTES);
/// Slots in the tx ring (`NET_TX_RING_SIZE` for 4 KiB pages).
pub const TX_RING_SIZE: u32 = TX_RING.size();
/// Slots in the rx ring (`NET_RX_RING_SIZE` for 4 KiB pages).
pub const RX_RING_SIZE: u32 = RX_RING.size();

/// The largest packet a tx request can describe (`XEN_NETIF_MAX_TX_SIZE`).
pub const MAX_TX_SIZE: usize = 0xFFFF;
/// Slots any backend must accept for one packet (`XEN_NETIF_NR_SLOTS_MIN`).
pub const NR_SLOTS_MIN: usize = 18;

/// `NETTXF_*`: tx request flags.
pub mod tx_flags {
    /// The protocol checksum is blank (offload).
    pub const CSUM_BLANK: u16 = 1 << 0;
    /// The data was validated against its checksum.
    pub const DATA_VALIDATED: u16 = 1 << 1;
    /// The packet continues in the next request.
    pub const MORE_DATA: u16 = 1 << 2;
    /// Extra-info slots follow.
    pub const EXTRA_INFO: u16 = 1 << 3;
}

/// `NETRXF_*`: rx response flags.
pub mod rx_flags {
    /// The data was validated against its checksum.
    pub const DATA_VALIDATED: u16 = 1 << 0;
    /// The protocol checksum is blank (offload).
    pub const CSUM_BLANK: u16 = 1 << 1;
    /// The packet continues in the next response.
    pub const MORE_DATA: u16 = 1 << 2;
    /// Extra-info slots follow.
    pub const EXTRA_INFO: u16 = 1 << 3;
    /// The packet has a GSO prefix (deprecated).
    pub const GSO_PREFIX: u16 = 1 << 4;
}

/// `NETIF_RSP_*`: response status values (rx: a positive status is the size).
pub mod status {
    pub const DROPPED: i16 = -2;
    pub const ERROR: i16 = -1;
    pub const OKAY: i16 = 0;
    /// No response: the slot answered an extra-info request.
    pub const NULL: i16 = 1;
}

/// `XEN_NETIF_EXTRA_FLAG_MORE`: another extra-info slot follows.
pub const EXTRA_FLAG_MORE: u8 = 1 << 0;
/// `XEN_NETIF_EXTRA_TYPE_*`.
pub mod extra_type {
    pub const NONE: u8 = 0;
    pub const GSO: u8 = 1;
    pub const MCAST_ADD: u8 = 2;
    pub const MCAST_DEL: u8 = 3;
    pub const HASH: u8 = 4;
}

fn get_u16(buffer: &[u8], field: Range<usize>) -> u16 {
    u16::from_le_bytes([buffer[field.start], buffer[field.start + 1]])
}

fn set_u16(buffer: &mut [u8], field: Range<usize>, value: u16) {
    buffer[field].copy_from_slice(&value.to_le_bytes());
}

fn get_u32(buffer: &[u8], field: Range<usize>) -> u32 {
    let b = &buffer[field];
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

fn set_u32(buffer: &mut [u8], field: Range<usize>, value: u32) {
    buffer[field].copy_from_slice(&value.to_le_bytes());
}

/// Declares a view type over a byte buffer: constructors, length check, accessors.
macro_rules! view {
    (
        $(#[$doc:meta])* $name:ident, $len:expr;
        $( $(#[$fdoc:meta])* $field:ident / $setter:ident : $ty:ident @ $range:expr ),* $(,)?
    ) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub struct $name<T: AsRef<[u8]>> {
            buffer: T,
        }

        impl<T: AsRef<[u8]>> $name<T> {
            /// Bytes the structure occupies.
            pub const LEN: usize = $len;

            /// Wraps a buffer without checking its length (for emitting into a buffer of
            /// at least `LEN` bytes; accessors panic on a shorter one).
            pub const fn new_unchecked(buffer: T) -> Self {
                $name { buffer }
            }

            /// Wraps a buffer after checking that it holds the whole structure; the
            /// accessors never panic afterwards.
            pub fn new_checked(buffer: T) -> Result<Self, Error> {
                let view = Self::new_unchecked(buffer);
                view.check_len()?;
                Ok(view)
            }

            /// Checks that the buffer holds the whole structure.
            pub fn check_len(&self) -> Result<(), Error> {
                if self.buffer.as_ref().len() < Self::LEN { Err(Error::Truncated) } else { Ok(()) }
            }

            pub fn into_inner(self) -> T {
                self.buffer
            }

            $(
                $(#[$fdoc])*
                pub fn $field(&self) -> $ty {
                    view!(@get $ty, self.buffer.as_ref(), $range)
                }
            )*
        }

        impl<T: AsRef<[u8]> + AsMut<[u8]>> $name<T> {
            $(
                pub fn $setter(&mut self, value: $ty) {
                    view!(@set $ty, self.buffer.as_mut(), $range, value)
                }
            )*
        }
    };
    (@get u16, $b:expr, $r:expr) => { get_u16($b, $r) };
    (@get i16, $b:expr, $r:expr) => { get_u16($b, $r) as i16 };
    (@get u32, $b:expr, $r:expr) => { get_u32($b, $r) };
    (@get u8, $b:expr, $r:expr) => { $b[$r.start] };
    (@set u16, $b:expr, $r:expr, $v:expr) => { set_u16($b, $r, $v) };
    (@set i16, $b:expr, $r:expr, $v:expr) => { set_u16($b, $r, $v as u16) };
    (@set u32, $b:expr, $r:expr, $v:expr) => { set_u32($b, $r, $v) };
    (@set u8, $b:expr, $r:expr, $v:expr) => { $b[$r.start] = $v };
}

view! {
    /// `struct netif_tx_request`: one packet (or fragment) for the backend to send.
    TxRequest, 12;
    /// Grant reference of the page holding the data.
    gref / set_gref: u32 @ 0..4,
    /// Offset of the data in that page.
    offset / set_offset: u16 @ 4..6,
    /// `NETTXF_*`.
    flags / set_flags: u16 @ 6..8,
    /// Echoed in the response.
    id / set_id: u16 @ 8..10,
    /// Packet size in bytes (of the whole packet, in a first fragment).
    size / set_size: u16 @ 10..12,
}

view! {
    /// `struct netif_tx_response`: the backend is done with a tx request.
    TxResponse, 4;
    /// The request's id.
    id / set_id: u16 @ 0..2,
    /// `NETIF_RSP_*`.
    status / set_status: i16 @ 2..4,
}

view! {
    /// `struct netif_rx_request`: a page the backend may copy one packet into.
    RxRequest, 8;
    /// Echoed in the response.
    id / set_id: u16 @ 0..2,
    /// Grant reference of the page.
    gref / set_gref: u32 @ 4..8,
}

view! {
    /// `struct netif_rx_response`: a packet arrived in a posted page.
    RxResponse, 8;
    /// The request's id.
    id / set_id: u16 @ 0..2,
    /// Offset of the packet in the page.
    offset / set_offset: u16 @ 2..4,
    /// `NETRXF_*`.
    flags / set_flags: u16 @ 4..6,
    /// Packet size in bytes if positive, else `NETIF_RSP_*`.
    status / set_status: i16 @ 6..8,
}

view! {
    /// `struct netif_extra_info`: a slot that follows a request or response flagged
    /// `EXTRA_INFO`; its type-specific data is not interpreted here.
    ExtraInfo, 8;
    /// `XEN_NETIF_EXTRA_TYPE_*`.
    kind / set_kind: u8 @ 0..1,
    /// `XEN_NETIF_EXTRA_FLAG_*`.
    flags / set_flags: u8 @ 1..2,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tx request as Linux netfront lays it out: gref 0x1234_5678, offset 2048,
    /// flags csum_blank|data_validated, id 7, size 1514.
    static TX_REQUEST: [u8; 12] = [0x78, 0x56, 0x34, 0x12, 0x00, 0x08, 0x03, 0x00, 0x07, 0x00, 0xea, 0x05];
    /// An rx response: id 200, offset 0, flags data_validated, size 60.
    static RX_RESPONSE: [u8; 8] = [0xc8, 0x00, 0x00, 0x00, 0x01, 0x00, 0x3c, 0x00];
    /// A tx response: id 3, status DROPPED.
    static TX_RESPONSE: [u8; 4] = [0x03, 0x00, 0xfe, 0xff];

    #[test]
    fn both_rings_have_256_slots_in_a_page() {
        assert_eq!((TX_RING_SIZE, RX_RING_SIZE), (256, 256));
    }

    #[test]
    fn tx_request_parses_and_emits_the_fixture() {
        let request = TxRequest::new_checked(&TX_REQUEST[..]).unwrap();
        assert_eq!(request.gref(), 0x1234_5678);
        assert_eq!(request.offset(), 2048);
        assert_eq!(request.flags(), tx_flags::CSUM_BLANK | tx_flags::DATA_VALIDATED);
        assert_eq!((request.id(), request.size()), (7, 1514));
        let mut bytes = [0xffu8; 12];
        let mut emitted = TxRequest::new_unchecked(&mut bytes[..]);
        emitted.set_gref(0x1234_5678);
        emitted.set_offset(2048);
        emitted.set_flags(3);
        emitted.set_id(7);
        emitted.set_size(1514);
        assert_eq!(bytes, TX_REQUEST);
    }

    #[test]
    fn responses_parse_with_signed_status() {
        let rx = RxResponse::new_checked(&RX_RESPONSE[..]).unwrap();
        assert_eq!((rx.id(), rx.offset(), rx.flags(), rx.status()), (200, 0, rx_flags::DATA_VALIDATED, 60));
        let tx = TxResponse::new_checked(&TX_RESPONSE[..]).unwrap();
        assert_eq!((tx.id(), tx.status()), (3, status::DROPPED));
        let mut bytes = [0u8; 8];
        let mut error = RxResponse::new_unchecked(&mut bytes[..]);
        error.set_status(status::ERROR);
        assert_eq!(bytes[6..8], [0xff, 0xff]);
    }

    #[test]
    fn rx_request_leaves_the_pad_alone() {
        let mut bytes = [0xaau8; 8];
        let mut request = RxRequest::new_unchecked(&mut bytes[..]);
        request.set_id(0x0102);
        request.set_gref(0x0a0b_0c0d);
        assert_eq!(bytes, [0x02, 0x01, 0xaa, 0xaa, 0x0d, 0x0c, 0x0b, 0x0a]);
    }

    #[test]
    fn short_buffers_are_refused_not_panicked_on() {
        assert_eq!(TxRequest::new_checked(&TX_REQUEST[..11]).err(), Some(Error::Truncated));
        assert_eq!(RxResponse::new_checked(&[0u8; 7][..]).err(), Some(Error::Truncated));
        assert_eq!(TxResponse::new_checked(&[][..]).err(), Some(Error::Truncated));
        assert_eq!(ExtraInfo::new_checked(&[0u8; 2][..]).err(), Some(Error::Truncated));
        let extra = ExtraInfo::new_checked(&[extra_type::GSO, EXTRA_FLAG_MORE, 0, 0, 0, 0, 0, 0][..]).unwrap();
        assert_eq!((extra.kind(), extra.flags()), (extra_type::GSO, EXTRA_FLAG_MORE));
    }
}
