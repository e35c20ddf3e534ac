//! Checks `frontends::blkif` (and `frontends::ring`'s header) against Xen's own headers, /usr/include/xen/io/blkif.h
//! and io/ring.h (Debian's libxen-dev): sizes, field offsets, constants, and the
//! ring sizes `__CONST_RING_SIZE` gives for rings of 1 to 16 pages.

use frontends::blkif::{self, field};
use frontends::ring;

/// (C expression, Rust value) pairs.
fn pairs() -> Vec<(&'static str, usize)> {
    let off = |s: &str, f: &str| -> &'static str { Box::leak(format!("offsetof(struct {s}, {f})").into_boxed_str()) };
    let mut pairs = vec![
        ("sizeof(struct blkif_request)", blkif::REQUEST_LEN),
        (off("blkif_request", "operation"), field::OPERATION),
        (off("blkif_request", "nr_segments"), field::NR_SEGMENTS),
        (off("blkif_request", "handle"), field::HANDLE.start),
        (off("blkif_request", "id"), field::ID.start),
        (off("blkif_request", "sector_number"), field::SECTOR_NUMBER.start),
        (off("blkif_request", "seg"), field::SEGMENTS),
        ("sizeof(struct blkif_request_segment)", blkif::SEGMENT_LEN),
        (off("blkif_request_segment", "gref"), field::SEGMENT_GREF.start),
        (off("blkif_request_segment", "first_sect"), field::SEGMENT_FIRST_SECT),
        (off("blkif_request_segment", "last_sect"), field::SEGMENT_LAST_SECT),
        ("sizeof(struct blkif_request_discard)", blkif::DISCARD_REQUEST_LEN),
        (off("blkif_request_discard", "flag"), field::DISCARD_FLAG),
        (off("blkif_request_discard", "handle"), field::HANDLE.start),
        (off("blkif_request_discard", "id"), field::ID.start),
        (off("blkif_request_discard", "sector_number"), field::SECTOR_NUMBER.start),
        (off("blkif_request_discard", "nr_sectors"), field::DISCARD_NR_SECTORS.start),
        ("sizeof(struct blkif_request_indirect)", blkif::INDIRECT_REQUEST_LEN),
        (off("blkif_request_indirect", "indirect_op"), field::INDIRECT_OP),
        (off("blkif_request_indirect", "nr_segments"), field::INDIRECT_NR_SEGMENTS.start),
        (off("blkif_request_indirect", "id"), field::ID.start),
        (off("blkif_request_indirect", "sector_number"), field::SECTOR_NUMBER.start),
        (off("blkif_request_indirect", "handle"), field::INDIRECT_HANDLE.start),
        (off("blkif_request_indirect", "indirect_grefs"), field::INDIRECT_GREFS),
        ("sizeof(struct blkif_response)", blkif::RESPONSE_LEN),
        (off("blkif_response", "id"), field::RESPONSE_ID.start),
        (off("blkif_response", "operation"), field::RESPONSE_OPERATION),
        (off("blkif_response", "status"), field::RESPONSE_STATUS.start),
        ("sizeof(union blkif_sring_entry)", blkif::RING_ENTRY_LEN),
        (off("blkif_sring", "req_prod"), ring::REQ_PROD),
        (off("blkif_sring", "req_event"), ring::REQ_EVENT),
        (off("blkif_sring", "rsp_prod"), ring::RSP_PROD),
        (off("blkif_sring", "rsp_event"), ring::RSP_EVENT),
        (off("blkif_sring", "ring"), ring::ENTRIES),
        ("BLKIF_OP_READ", blkif::OP_READ.into()),
        ("BLKIF_OP_WRITE", blkif::OP_WRITE.into()),
        ("BLKIF_OP_WRITE_BARRIER", blkif::OP_WRITE_BARRIER.into()),
        ("BLKIF_OP_FLUSH_DISKCACHE", blkif::OP_FLUSH_DISKCACHE.into()),
        ("BLKIF_OP_RESERVED_1", blkif::OP_RESERVED_1.into()),
        ("BLKIF_OP_DISCARD", blkif::OP_DISCARD.into()),
        ("BLKIF_OP_INDIRECT", blkif::OP_INDIRECT.into()),
        ("BLKIF_MAX_SEGMENTS_PER_REQUEST", blkif::MAX_SEGMENTS_PER_REQUEST),
        ("BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST", blkif::MAX_INDIRECT_PAGES_PER_REQUEST),
        ("BLKIF_DISCARD_SECURE", blkif::DISCARD_SECURE.into()),
        ("VDISK_CDROM", blkif::VDISK_CDROM as usize),
        ("VDISK_REMOVABLE", blkif::VDISK_REMOVABLE as usize),
        ("VDISK_READONLY", blkif::VDISK_READONLY as usize),
        // Negative codes, compared as their 16-bit two's complement.
        ("(uint16_t)BLKIF_RSP_OKAY", blkif::RSP_OKAY as u16 as usize),
        ("(uint16_t)BLKIF_RSP_ERROR", blkif::RSP_ERROR as u16 as usize),
        ("(uint16_t)BLKIF_RSP_EOPNOTSUPP", blkif::RSP_EOPNOTSUPP as u16 as usize),
        ("XEN_PAGE_SIZE", blkif::PAGE_SIZE),
    ];
    for order in 0..=blkif::MAX_RING_PAGE_ORDER {
        let expr = format!("__CONST_RING_SIZE(blkif, {} << {order})", blkif::PAGE_SIZE);
        pairs.push((Box::leak(expr.into_boxed_str()), blkif::ring_size(1 << order) as usize));
    }
    pairs
}

const PRELUDE: &str = "#include <string.h>\n#define __XEN_INTERFACE_VERSION__ 0x00040e00\n\
    #include <xen/xen.h>\n#include <xen/io/blkif.h>\n#include <xen/io/protocols.h>\n\
    #ifndef XEN_PAGE_SIZE\n#define XEN_PAGE_SIZE (1 << XEN_PAGE_SHIFT)\n#endif\n";

#[test]
fn blkif_layout_and_constants_match_the_headers() {
    let mut pairs: Vec<(&str, u64)> = pairs().into_iter().map(|(e, v)| (e, v as u64)).collect();
    // The protocol string: equal to the header's (strcmp == 0 prints 1).
    let same_protocol = format!("strcmp(XEN_IO_PROTO_ABI_X86_64, \"{}\") == 0", blkif::PROTOCOL_X86_64);
    pairs.push((&same_protocol, 1));
    c_layout::check(PRELUDE, &pairs);
}
