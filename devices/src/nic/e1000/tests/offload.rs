//! Checksum insertion and TSO with the descriptors Linux's e1000_tx_csum and e1000_tso
//! write: the frames the glue gets are complete, with valid checksums.

use alloc::vec;
use alloc::vec::Vec;

use super::super::regs::*;
use super::harness::*;

const SRC_IP: [u8; 4] = [10, 0, 0, 2];
const DST_IP: [u8; 4] = [10, 0, 0, 1];
const ETH_LEN: usize = 14;
const IP_LEN: usize = 20;
const TCP_LEN: usize = 20;
const TCP_SEQ: u32 = 0x0102_0304;
const IP_ID: u16 = 0x1234;
const TCP_ACK_PSH_FIN: u8 = 0x19;

/// The folded sum of the IPv4 pseudo header (not inverted), as Linux leaves it in the
/// TCP/UDP checksum field for the card to finish.
fn pseudo_header_sum(protocol: u8, len: usize) -> u16 {
    let mut bytes = Vec::new();
    bytes.extend_from_slice(&SRC_IP);
    bytes.extend_from_slice(&DST_IP);
    bytes.extend_from_slice(&[0, protocol]);
    bytes.extend_from_slice(&(len as u16).to_be_bytes());
    !internet_checksum(&bytes)
}

/// An IPv4 frame carrying `l4` (header and payload) of `protocol`, IP checksum filled
/// in unless `tso` (Linux zeroes the total length and checksum for TSO).
fn ipv4_frame(protocol: u8, l4: &[u8], tso: bool) -> Vec<u8> {
    let mut ip = Vec::new();
    let total_len = if tso { 0 } else { (IP_LEN + l4.len()) as u16 };
    ip.extend_from_slice(&[0x45, 0x00]);
    ip.extend_from_slice(&total_len.to_be_bytes());
    ip.extend_from_slice(&IP_ID.to_be_bytes());
    ip.extend_from_slice(&[0x40, 0x00, 64, protocol, 0, 0]);
    ip.extend_from_slice(&SRC_IP);
    ip.extend_from_slice(&DST_IP);
    if !tso {
        let checksum = internet_checksum(&ip);
        ip[10..12].copy_from_slice(&checksum.to_be_bytes());
    }
    ip.extend_from_slice(l4);
    ethernet_frame(PEER_MAC, 0x0800, &ip)
}

fn tcp_segment(payload: &[u8], flags: u8, check: u16) -> Vec<u8> {
    let mut tcp = Vec::new();
    tcp.extend_from_slice(&40000u16.to_be_bytes());
    tcp.extend_from_slice(&5001u16.to_be_bytes());
    tcp.extend_from_slice(&TCP_SEQ.to_be_bytes());
    tcp.extend_from_slice(&0x0a0b_0c0du32.to_be_bytes());
    tcp.extend_from_slice(&[0x50, flags, 0xff, 0xff]);
    tcp.extend_from_slice(&check.to_be_bytes());
    tcp.extend_from_slice(&[0, 0]);
    tcp.extend_from_slice(payload);
    tcp
}

/// The checksum of an L4 segment with its IPv4 pseudo header verifies.
fn l4_checksum_ok(protocol: u8, segment: &[u8]) -> bool {
    let mut bytes = Vec::new();
    bytes.extend_from_slice(&SRC_IP);
    bytes.extend_from_slice(&DST_IP);
    bytes.extend_from_slice(&[0, protocol]);
    bytes.extend_from_slice(&(segment.len() as u16).to_be_bytes());
    bytes.extend_from_slice(segment);
    internet_checksum(&bytes) == 0
}

/// A context descriptor as e1000_tx_csum / e1000_tso write it.
#[allow(clippy::too_many_arguments)]
fn context(ipcss: u8, ipcso: u8, ipcse: u16, tucss: u8, tucso: u8, cmd: u32, hdr_len: u8, mss: u16) -> (u64, u32, u32) {
    let addr = u64::from(ipcss)
        | u64::from(ipcso) << 8
        | u64::from(ipcse) << 16
        | u64::from(tucss) << 32
        | u64::from(tucso) << 40;
    (addr, cmd, u32::from(hdr_len) << 8 | u32::from(mss) << 16)
}

/// Data descriptors for `frame` split at `cuts`, with `lower_flags` and POPTS, the
/// last one with Linux's txd_cmd.
fn data_descs(guest: &mut Guest, frame: &[u8], cuts: &[usize], lower_flags: u32, popts: u8) -> Vec<(u64, u32, u32)> {
    let mut bounds = vec![0];
    bounds.extend_from_slice(cuts);
    bounds.push(frame.len());
    let mut descs = Vec::new();
    for (i, pair) in bounds.windows(2).enumerate() {
        let piece = &frame[pair[0]..pair[1]];
        let addr = guest.tx_buffer(piece);
        let mut lower = lower_flags | TXD_CMD_IFCS | TXD_CMD_DEXT | TXD_DTYP_D | piece.len() as u32;
        if i == bounds.len() - 2 {
            lower |= TXD_CMD;
        }
        descs.push((addr, lower, u32::from(popts) << 8));
    }
    descs
}

#[test]
fn tcp_checksum_is_inserted() {
    let mut guest = Guest::new();
    guest.open_and_wait_for_link(16, 8);
    let payload = pattern(301, 7);
    let tcp = tcp_segment(&payload, 0x18, pseudo_header_sum(6, TCP_LEN + payload.len()));
    let frame = ipv4_frame(6, &tcp, false);
    let css = (ETH_LEN + IP_LEN) as u8;
    let mut descs = vec![context(0, 0, 0, css, css + 16, TXD_CMD_DEXT | TXD_CMD_TCP, 0, 0)];
    descs.extend(data_descs(&mut guest, &frame, &[54], 0, TXD_POPTS_TXSM));
    guest.queue_tx_descs(&descs);
    guest.ring_tx();
    let sent = guest.wire_frames();
    assert_eq!(sent.len(), 1);
    let out = &sent[0];
    assert_eq!(out.len(), frame.len());
    assert_eq!(out[..50], frame[..50], "headers untouched up to the checksum");
    assert_eq!(out[52..], frame[52..], "and after it");
    assert!(l4_checksum_ok(6, &out[ETH_LEN + IP_LEN..]), "TCP checksum valid");
    assert_eq!(guest.er32(TDH), 3, "context and two data descriptors");
}

#[test]
fn udp_checksum_is_inserted() {
    let mut guest = Guest::new();
    guest.open_and_wait_for_link(16, 8);
    let payload = pattern(200, 3);
    let mut udp = Vec::new();
    udp.extend_from_slice(&5353u16.to_be_bytes());
    udp.extend_from_slice(&5353u16.to_be_bytes());
    udp.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    udp.extend_from_slice(&pseudo_header_sum(17, 8 + payload.len()).to_be_bytes());
    udp.extend_from_slice(&payload);
    let frame = ipv4_frame(17, &udp, false);
    let css = (ETH_LEN + IP_LEN) as u8;
    let mut descs = vec![context(0, 0, 0, css, css + 6, TXD_CMD_DEXT, 0, 0)];
    descs.extend(data_descs(&mut guest, &frame, &[], 0, TXD_POPTS_TXSM));
    guest.queue_tx_descs(&descs);
    guest.ring_tx();
    let sent = guest.wire_frames();
    assert!(l4_checksum_ok(17, &sent[0][ETH_LEN + IP_LEN..]), "UDP checksum valid");
}

#[test]
fn tso_cuts_a_tcp_packet_into_mss_sized_frames() {
    let mut guest = Guest::new();
    guest.open_and_wait_for_link(32, 8);
    let mss = 1000usize;
    let payload = pattern(2 * mss + 600, 11);
    let hdr_len = ETH_LEN + IP_LEN + TCP_LEN;
    let tcp = tcp_segment(&payload, TCP_ACK_PSH_FIN, pseudo_header_sum(6, 0));
    let frame = ipv4_frame(6, &tcp, true);
    let ipcss = ETH_LEN as u8;
    let tucss = (ETH_LEN + IP_LEN) as u8;
    let cmd = TXD_CMD_DEXT | TXD_CMD_TSE | TXD_CMD_TCP | TXD_CMD_IP | payload.len() as u32;
    let mut descs =
        vec![context(ipcss, ipcss + 10, u16::from(tucss) - 1, tucss, tucss + 16, cmd, hdr_len as u8, mss as u16)];
    // The linear head, a fragment, and the 4-byte sentinel Linux splits off the end.
    let cuts = [hdr_len + 700, frame.len() - 4];
    descs.extend(data_descs(&mut guest, &frame, &cuts, TXD_CMD_TSE, TXD_POPTS_TXSM | TXD_POPTS_IXSM));
    guest.queue_tx_descs(&descs);
    guest.ring_tx();
    let sent = guest.wire_frames();
    assert_eq!(sent.len(), 3, "2600 bytes at MSS 1000");
    for (k, segment) in sent.iter().enumerate() {
        let piece = &payload[k * mss..((k + 1) * mss).min(payload.len())];
        assert_eq!(segment.len(), hdr_len + piece.len(), "segment {k}");
        assert_eq!(segment[..12], frame[..12]);
        let ip = &segment[ETH_LEN..ETH_LEN + IP_LEN];
        assert_eq!(u16::from_be_bytes([ip[2], ip[3]]) as usize, IP_LEN + TCP_LEN + piece.len(), "IP total length");
        assert_eq!(u16::from_be_bytes([ip[4], ip[5]]), IP_ID + k as u16, "IP identification");
        assert_eq!(internet_checksum(ip), 0, "IP header checksum of segment {k}");
        let tcp = &segment[ETH_LEN + IP_LEN..];
        assert_eq!(u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]), TCP_SEQ + (k * mss) as u32, "sequence");
        let flags = if k == 2 { TCP_ACK_PSH_FIN } else { 0x10 };
        assert_eq!(tcp[13], flags, "PSH and FIN on the last segment only");
        assert!(l4_checksum_ok(6, tcp), "TCP checksum of segment {k}");
        assert_eq!(&tcp[TCP_LEN..], piece);
    }
    assert_eq!(guest.er32(TSCTC), 1, "one TSO context completed");
    assert_eq!(guest.er32(GPTC), 3);
    // A payload of whole MSS ends with its last full segment (QEMU would add a
    // header-only one).
    let payload = pattern(2 * mss, 12);
    let tcp = tcp_segment(&payload, 0x18, pseudo_header_sum(6, 0));
    let frame = ipv4_frame(6, &tcp, true);
    let cmd = TXD_CMD_DEXT | TXD_CMD_TSE | TXD_CMD_TCP | TXD_CMD_IP | payload.len() as u32;
    let mut descs =
        vec![context(ipcss, ipcss + 10, u16::from(tucss) - 1, tucss, tucss + 16, cmd, hdr_len as u8, mss as u16)];
    descs.extend(data_descs(&mut guest, &frame, &[frame.len() - 4], TXD_CMD_TSE, TXD_POPTS_TXSM | TXD_POPTS_IXSM));
    guest.queue_tx_descs(&descs);
    guest.ring_tx();
    let sent = guest.wire_frames();
    assert_eq!(sent.iter().map(Vec::len).collect::<Vec<_>>(), vec![hdr_len + mss, hdr_len + mss]);
    assert_eq!(sent[1][ETH_LEN + IP_LEN + 13], 0x18, "the last segment keeps PSH");
    assert!(sent.iter().all(|segment| l4_checksum_ok(6, &segment[ETH_LEN + IP_LEN..])));
}

#[test]
fn a_plain_frame_after_a_tso_packet_uses_no_offload() {
    let mut guest = Guest::new();
    guest.open_and_wait_for_link(32, 8);
    let hdr_len = ETH_LEN + IP_LEN + TCP_LEN;
    let payload = pattern(1500, 1);
    let tcp = tcp_segment(&payload, 0x10, pseudo_header_sum(6, 0));
    let frame = ipv4_frame(6, &tcp, true);
    let tucss = (ETH_LEN + IP_LEN) as u8;
    let cmd = TXD_CMD_DEXT | TXD_CMD_TSE | TXD_CMD_TCP | TXD_CMD_IP | payload.len() as u32;
    let mut descs = vec![context(14, 24, 33, tucss, tucss + 16, cmd, hdr_len as u8, 1000)];
    descs.extend(data_descs(&mut guest, &frame, &[], TXD_CMD_TSE, TXD_POPTS_TXSM | TXD_POPTS_IXSM));
    guest.queue_tx_descs(&descs);
    // Linux's erratum workaround: the next linear frame loses its last 4 bytes to a
    // separate descriptor.
    let plain = ethernet_frame(PEER_MAC, 0x0806, &pattern(50, 2));
    guest.xmit(&[&plain[..plain.len() - 4], &plain[plain.len() - 4..]]);
    let sent = guest.wire_frames();
    assert_eq!(sent.len(), 3);
    assert_eq!(sent[2], plain);
}
