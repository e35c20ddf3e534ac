//! Checks the netif wire format (frontends::netif) against Xen's own headers.
//!
//! A C program is compiled against /usr/include/xen/io/netif.h and ring.h
//! (libxen-dev) and prints sizes, offsets and constants; the Rust side must agree.
//! Field offsets on the Rust side are found by writing all-ones through a view's
//! setter into a zeroed buffer and seeing where the bytes land.

use frontends::netif::{self, ExtraInfo, RxRequest, RxResponse, TxRequest, TxResponse};
use frontends::ring;

/// Where a setter writes: the first byte it changes in a zeroed buffer.
fn offset(set: impl FnOnce(&mut [u8])) -> i64 {
    let mut buffer = [0u8; 16];
    set(&mut buffer);
    buffer.iter().position(|&b| b != 0).expect("the setter wrote something") as i64
}

/// (C expression, Rust value) pairs.
fn rust_values() -> Vec<(&'static str, i64)> {
    type Tx<'a> = TxRequest<&'a mut [u8]>;
    vec![
        ("sizeof(struct netif_tx_request)", TxRequest::<&[u8]>::LEN as i64),
        ("offsetof(struct netif_tx_request, gref)", offset(|b| Tx::new_unchecked(b).set_gref(!0))),
        ("offsetof(struct netif_tx_request, offset)", offset(|b| Tx::new_unchecked(b).set_offset(!0))),
        ("offsetof(struct netif_tx_request, flags)", offset(|b| Tx::new_unchecked(b).set_flags(!0))),
        ("offsetof(struct netif_tx_request, id)", offset(|b| Tx::new_unchecked(b).set_id(!0))),
        ("offsetof(struct netif_tx_request, size)", offset(|b| Tx::new_unchecked(b).set_size(!0))),
        ("sizeof(struct netif_tx_response)", TxResponse::<&[u8]>::LEN as i64),
        ("offsetof(struct netif_tx_response, id)", offset(|b| TxResponse::new_unchecked(b).set_id(!0))),
        ("offsetof(struct netif_tx_response, status)", offset(|b| TxResponse::new_unchecked(b).set_status(-1))),
        ("sizeof(struct netif_rx_request)", RxRequest::<&[u8]>::LEN as i64),
        ("offsetof(struct netif_rx_request, id)", offset(|b| RxRequest::new_unchecked(b).set_id(!0))),
        ("offsetof(struct netif_rx_request, gref)", offset(|b| RxRequest::new_unchecked(b).set_gref(!0))),
        ("sizeof(struct netif_rx_response)", RxResponse::<&[u8]>::LEN as i64),
        ("offsetof(struct netif_rx_response, id)", offset(|b| RxResponse::new_unchecked(b).set_id(!0))),
        ("offsetof(struct netif_rx_response, offset)", offset(|b| RxResponse::new_unchecked(b).set_offset(!0))),
        ("offsetof(struct netif_rx_response, flags)", offset(|b| RxResponse::new_unchecked(b).set_flags(!0))),
        ("offsetof(struct netif_rx_response, status)", offset(|b| RxResponse::new_unchecked(b).set_status(-1))),
        ("sizeof(struct netif_extra_info)", ExtraInfo::<&[u8]>::LEN as i64),
        ("offsetof(struct netif_extra_info, type)", offset(|b| ExtraInfo::new_unchecked(b).set_kind(!0))),
        ("offsetof(struct netif_extra_info, flags)", offset(|b| ExtraInfo::new_unchecked(b).set_flags(!0))),
        ("sizeof(union netif_tx_sring_entry)", netif::TX_SLOT_BYTES as i64),
        ("sizeof(union netif_rx_sring_entry)", netif::RX_SLOT_BYTES as i64),
        ("offsetof(struct netif_tx_sring, req_prod)", ring::REQ_PROD as i64),
        ("offsetof(struct netif_tx_sring, req_event)", ring::REQ_EVENT as i64),
        ("offsetof(struct netif_tx_sring, rsp_prod)", ring::RSP_PROD as i64),
        ("offsetof(struct netif_tx_sring, rsp_event)", ring::RSP_EVENT as i64),
        ("offsetof(struct netif_tx_sring, ring)", ring::ENTRIES as i64),
        ("offsetof(struct netif_rx_sring, ring)", ring::ENTRIES as i64),
        ("__CONST_RING_SIZE(netif_tx, 4096)", netif::TX_RING_SIZE as i64),
        ("__CONST_RING_SIZE(netif_rx, 4096)", netif::RX_RING_SIZE as i64),
        ("NETTXF_csum_blank", netif::tx_flags::CSUM_BLANK as i64),
        ("NETTXF_data_validated", netif::tx_flags::DATA_VALIDATED as i64),
        ("NETTXF_more_data", netif::tx_flags::MORE_DATA as i64),
        ("NETTXF_extra_info", netif::tx_flags::EXTRA_INFO as i64),
        ("NETRXF_data_validated", netif::rx_flags::DATA_VALIDATED as i64),
        ("NETRXF_csum_blank", netif::rx_flags::CSUM_BLANK as i64),
        ("NETRXF_more_data", netif::rx_flags::MORE_DATA as i64),
        ("NETRXF_extra_info", netif::rx_flags::EXTRA_INFO as i64),
        ("NETRXF_gso_prefix", netif::rx_flags::GSO_PREFIX as i64),
        ("NETIF_RSP_DROPPED", netif::status::DROPPED as i64),
        ("NETIF_RSP_ERROR", netif::status::ERROR as i64),
        ("NETIF_RSP_OKAY", netif::status::OKAY as i64),
        ("NETIF_RSP_NULL", netif::status::NULL as i64),
        ("XEN_NETIF_EXTRA_FLAG_MORE", netif::EXTRA_FLAG_MORE as i64),
        ("XEN_NETIF_EXTRA_TYPE_NONE", netif::extra_type::NONE as i64),
        ("XEN_NETIF_EXTRA_TYPE_GSO", netif::extra_type::GSO as i64),
        ("XEN_NETIF_EXTRA_TYPE_MCAST_ADD", netif::extra_type::MCAST_ADD as i64),
        ("XEN_NETIF_EXTRA_TYPE_MCAST_DEL", netif::extra_type::MCAST_DEL as i64),
        ("XEN_NETIF_EXTRA_TYPE_HASH", netif::extra_type::HASH as i64),
        ("XEN_NETIF_MAX_TX_SIZE", netif::MAX_TX_SIZE as i64),
        ("XEN_NETIF_NR_SLOTS_MIN", netif::NR_SLOTS_MIN as i64),
    ]
}

#[test]
fn netif_layout_and_constants_match_xen_headers() {
    // Signed values compare as their two's complement, as C's cast prints them.
    let pairs: Vec<(&str, u64)> = rust_values().into_iter().map(|(e, v)| (e, v as u64)).collect();
    let prelude = "#include <string.h>\n#define __XEN_INTERFACE_VERSION__ 0x00040e00\n\
                   #include <xen/xen.h>\n#include <xen/grant_table.h>\n#include <xen/io/netif.h>\n";
    c_layout::check(prelude, &pairs);
}
