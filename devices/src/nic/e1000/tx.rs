//! The transmit path's packet assembly: legacy, context and data descriptors in, whole
//! Ethernet frames out, with the offloads the 82540 has and Linux's e1000 uses.
//!
//! Linux's e1000 turns on TCP/UDP checksum offload and TSO for every part from the
//! 82544 on, the 82540 included, whatever the card says, so both are implemented here
//! as QEMU's e1000 does them (`process_tx_desc`, `xmit_seg`, `putsum`):
//!
//! - a context descriptor (DEXT, type 0) sets the offsets of the IP and TCP/UDP headers
//!   and checksum fields, the header length, MSS and payload length; QEMU keeps one set
//!   for TSO contexts and one for the others, and so does this;
//! - data descriptors (DEXT, type D) carry the packet; the first one's POPTS says which
//!   checksums to insert (IXSM: IPv4 header, TXSM: TCP/UDP), TSE asks for segmentation;
//! - legacy descriptors carry plain packets (their CSO/CSS checksum insertion is not
//!   implemented, as in QEMU; Linux never asks for it);
//! - with TSE, the payload is cut into MSS-sized pieces, each sent behind a copy of the
//!   header with the IPv4 total length and identification (or IPv6 payload length),
//!   the TCP sequence number and flags (PSH and FIN on the last piece only) or the UDP
//!   length fixed up, and the checksums computed;
//! - VLE inserts an 802.1Q tag (TPID from VET, TCI from the descriptor) when CTRL.VME is
//!   set.
//!
//! Where this differs from QEMU: a TSO packet whose payload is a whole number of MSS
//! ends with its last full segment (QEMU sends one more, header-only segment); the
//! IPv6 payload length excludes the fixed header; frames longer than
//! [`MAX_FRAME_BYTES`] (jumbo frames) are dropped, which bounds the assembly buffer.
//!
//! Bad input ends the packet, never the ring: a buffer outside guest RAM or a packet
//! longer than [`MAX_FRAME_BYTES`] drops that packet (the rest of its descriptors are
//! consumed without DMA); a TSO packet whose segments do not fit, or that would need
//! more frames than the glue has room for, stops producing frames. The work per
//! descriptor is bounded by the frames it can produce, which the queue bounds.

use alloc::vec::Vec;

use super::regs::*;
use crate::nic::MAX_FRAME_BYTES;

/// The most bytes of one frame (or TSO segment) the card assembles.
pub(super) const TX_BUFFER_BYTES: usize = MAX_FRAME_BYTES;
/// Bytes of header a TSO context can name (hdr_len is 8 bits).
const MAX_HEADER_BYTES: usize = 256;
/// Length of the IPv6 fixed header, which the payload length excludes.
const IPV6_HEADER_BYTES: usize = 40;
/// TCP flags byte offset within the TCP header, and the PSH and FIN flags.
const TCP_FLAGS_OFFSET: usize = 13;
const TCP_PSH_FIN: u8 = 0x09;

/// One 16-byte transmit descriptor as the guest wrote it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct TxDescriptor {
    /// buffer address (legacy and data descriptors)
    pub(super) addr: u64,
    /// length, type and command bits (bytes 8..12)
    pub(super) lower: u32,
    /// status, options and VLAN tag (bytes 12..16)
    pub(super) upper: u32,
}

impl TxDescriptor {
    pub(super) fn from_bytes(bytes: &[u8; 16]) -> Self {
        let [a0, a1, a2, a3, a4, a5, a6, a7, l0, l1, l2, l3, u0, u1, u2, u3] = *bytes;
        TxDescriptor {
            addr: u64::from_le_bytes([a0, a1, a2, a3, a4, a5, a6, a7]),
            lower: u32::from_le_bytes([l0, l1, l2, l3]),
            upper: u32::from_le_bytes([u0, u1, u2, u3]),
        }
    }

    fn kind(&self) -> Kind {
        match self.lower & (TXD_CMD_DEXT | TXD_DTYP_D) {
            TXD_CMD_DEXT => Kind::Context,
            x if x == TXD_CMD_DEXT | TXD_DTYP_D => Kind::Data,
            _ => Kind::Legacy,
        }
    }

    /// The descriptor asks for a status write-back (RS, or RPS on older parts).
    pub(super) fn wants_report(&self) -> bool {
        self.lower & (TXD_CMD_RS | TXD_CMD_RPS) != 0
    }

    /// `upper` as written back: DD set, the collision and underrun bits clear.
    pub(super) fn done_upper(&self) -> u32 {
        (self.upper | TXD_STAT_DD) & !(TXD_STAT_EC | TXD_STAT_LC | TXD_STAT_TU)
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Context,
    Data,
    Legacy,
}

/// What a context descriptor set up (QEMU's e1000x_txd_props).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Offload {
    ipcss: u8,
    ipcso: u8,
    ipcse: u16,
    tucss: u8,
    tucso: u8,
    tucse: u16,
    paylen: u32,
    hdr_len: u8,
    mss: u16,
    /// IPv4 (else IPv6) for TSO
    ipv4: bool,
    /// TCP (else UDP)
    tcp: bool,
}

impl Offload {
    fn from_context(desc: &TxDescriptor) -> (Self, bool) {
        let addr = desc.addr.to_le_bytes();
        let upper = desc.upper.to_le_bytes();
        let offload = Offload {
            ipcss: addr[0],
            ipcso: addr[1],
            ipcse: u16::from_le_bytes([addr[2], addr[3]]),
            tucss: addr[4],
            tucso: addr[5],
            tucse: u16::from_le_bytes([addr[6], addr[7]]),
            paylen: desc.lower & 0xf_ffff,
            hdr_len: upper[1],
            mss: u16::from_le_bytes([upper[2], upper[3]]),
            ipv4: desc.lower & TXD_CMD_IP != 0,
            tcp: desc.lower & TXD_CMD_TCP != 0,
        };
        (offload, desc.lower & TXD_CMD_TSE != 0)
    }

    /// Frames a TSO packet of this context becomes.
    fn nr_segments(&self) -> usize {
        match self.mss {
            0 => 1,
            mss => (self.paylen.div_ceil(u32::from(mss)) as usize).max(1),
        }
    }
}

/// Why a packet was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(super) enum TxDrop {
    /// a buffer was outside guest RAM (already reported by [`TxPort::dma_read`])
    Dma,
    /// longer than [`MAX_FRAME_BYTES`] (or TSO segments that would be), or shorter
    /// than an Ethernet header
    BadLength,
    /// the glue's queue filled up in the middle of a TSO packet
    QueueFull,
}

/// Where the transmitter reads buffers from and sends frames to.
pub(super) trait TxPort {
    /// Copies guest memory at `addr` into `out` by DMA; false (reported) if it failed.
    fn dma_read(&mut self, addr: u64, out: &mut [u8]) -> bool;
    /// A finished frame, given in pieces; `completes_tso`: the last segment of a TSO
    /// packet of several. The port drops (and counts) frames of a bad length. False if
    /// there was no room: the packet's remaining frames are dropped.
    fn send(&mut self, pieces: &[&[u8]], completes_tso: bool) -> bool;
    /// A packet was dropped (counted and logged by the port).
    fn dropped(&mut self, why: TxDrop);
}

/// The packet being assembled and the offload contexts.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub(super) struct Transmitter {
    /// the frame (or TSO segment) so far, at most [`TX_BUFFER_BYTES`]
    data: Vec<u8>,
    /// a TSO packet's header, copied back in front of each segment
    #[serde(with = "crate::snapshot::big_array")]
    header: [u8; MAX_HEADER_BYTES],
    /// the 802.1Q tag to insert after the MAC addresses
    vlan_tag: Option<[u8; 4]>,
    /// POPTS of the packet's first data descriptor
    sum_needed: u8,
    /// the current descriptor asks for TSO
    tse: bool,
    props: Offload,
    tso_props: Offload,
    /// segments of the current TSO packet sent so far
    tso_frames: u16,
    /// a packet has begun (descriptors without EOP were taken)
    in_packet: bool,
    /// the current packet is being skipped until its EOP
    dropping: Option<TxDrop>,
}

impl Transmitter {
    pub(super) fn new() -> Self {
        Transmitter {
            data: Vec::new(),
            header: [0; MAX_HEADER_BYTES],
            vlan_tag: None,
            sum_needed: 0,
            tse: false,
            props: Offload::default(),
            tso_props: Offload::default(),
            tso_frames: 0,
            in_packet: false,
            dropping: None,
        }
    }

    /// How many frames the packet `desc` starts will become, if it starts one (the
    /// card holds a packet back until the glue has room for all of them).
    pub(super) fn frames_needed(&self, desc: &TxDescriptor) -> Option<usize> {
        match desc.kind() {
            _ if self.in_packet => None,
            Kind::Context => None,
            Kind::Data if desc.lower & TXD_CMD_TSE != 0 => Some(self.tso_props.nr_segments()),
            Kind::Data | Kind::Legacy => Some(1),
        }
    }

    /// Takes one descriptor: a context is remembered, data is appended (and TSO
    /// segments sent as they fill), and EOP sends the rest and ends the packet.
    /// `vlan_tpid`: the TPID to insert with VLE, None while CTRL.VME is clear.
    pub(super) fn process(&mut self, desc: &TxDescriptor, vlan_tpid: Option<u16>, port: &mut dyn TxPort) {
        match desc.kind() {
            Kind::Context => {
                let (offload, tse) = Offload::from_context(desc);
                if tse {
                    self.tso_props = offload;
                    self.tso_frames = 0;
                } else {
                    self.props = offload;
                }
                return;
            }
            Kind::Data => {
                if !self.in_packet {
                    self.sum_needed = (desc.upper >> 8) as u8;
                }
                self.tse = desc.lower & TXD_CMD_TSE != 0;
            }
            Kind::Legacy => self.tse = false,
        }
        self.in_packet = true;
        let eop = desc.lower & TXD_CMD_EOP != 0;
        if let Some(tpid) = vlan_tpid
            && desc.lower & TXD_CMD_VLE != 0
            && (self.tse || eop)
        {
            let tci = (desc.upper >> 16) as u16;
            let [t0, t1] = tpid.to_be_bytes();
            let [c0, c1] = tci.to_be_bytes();
            self.vlan_tag = Some([t0, t1, c0, c1]);
        }
        let len_bytes = (desc.lower & 0xffff) as usize;
        if self.dropping.is_none() {
            if self.tse {
                self.append_segmenting(desc.addr, len_bytes, port);
            } else {
                self.append(desc.addr, len_bytes, port);
            }
        }
        if eop {
            self.end_packet(port);
        }
    }

    /// Forgets the packet under way and the contexts (a MAC reset).
    /// A saved transmitter holds no more than this one could (save/restore).
    pub(super) fn saved_state_fits(&self) -> bool {
        self.data.len() <= TX_BUFFER_BYTES
    }

    pub(super) fn reset(&mut self) {
        *self = Transmitter::new();
    }

    fn append(&mut self, addr: u64, len_bytes: usize, port: &mut dyn TxPort) {
        let start = self.data.len();
        if start + len_bytes > TX_BUFFER_BYTES {
            self.dropping = Some(TxDrop::BadLength);
            return;
        }
        self.data.resize(start + len_bytes, 0);
        if !port.dma_read(addr, &mut self.data[start..]) {
            self.dropping = Some(TxDrop::Dma);
        }
    }

    /// Appends with TSO: whenever header plus one MSS of payload is there, that
    /// segment goes out and the next starts from a copy of the header.
    fn append_segmenting(&mut self, mut addr: u64, mut len_bytes: usize, port: &mut dyn TxPort) {
        let hdr_len = usize::from(self.tso_props.hdr_len);
        let segment_bytes = hdr_len + usize::from(self.tso_props.mss);
        if segment_bytes > TX_BUFFER_BYTES {
            self.dropping = Some(TxDrop::BadLength);
            return;
        }
        while len_bytes > 0 {
            let start = self.data.len();
            if start >= segment_bytes {
                // Only with MSS 0: the header went out alone; the payload has nowhere to go.
                break;
            }
            let nr_bytes = len_bytes.min(segment_bytes - start);
            self.data.resize(start + nr_bytes, 0);
            if !port.dma_read(addr, &mut self.data[start..]) {
                self.dropping = Some(TxDrop::Dma);
                return;
            }
            if start < hdr_len && self.data.len() >= hdr_len {
                self.header[..hdr_len].copy_from_slice(&self.data[..hdr_len]);
            }
            addr = addr.wrapping_add(nr_bytes as u64);
            len_bytes -= nr_bytes;
            if self.data.len() == segment_bytes {
                if !self.send_segment(port) {
                    self.dropping = Some(TxDrop::QueueFull);
                    return;
                }
                self.data.clear();
                self.data.extend_from_slice(&self.header[..hdr_len]);
            }
        }
    }

    fn end_packet(&mut self, port: &mut dyn TxPort) {
        match self.dropping {
            Some(why) => port.dropped(why),
            None => {
                let hdr_len = usize::from(self.tso_props.hdr_len);
                let nothing_left =
                    self.tse && (self.data.len() < hdr_len || (self.data.len() == hdr_len && self.tso_frames > 0));
                if !nothing_left && !self.send_segment(port) {
                    port.dropped(TxDrop::QueueFull);
                }
            }
        }
        self.data.clear();
        self.vlan_tag = None;
        self.sum_needed = 0;
        self.tse = false;
        self.tso_frames = 0;
        self.in_packet = false;
        self.dropping = None;
    }

    /// Finishes the frame in `data` (TSO fix-ups, checksums, VLAN tag) and sends it.
    fn send_segment(&mut self, port: &mut dyn TxPort) -> bool {
        let props = if self.tse { self.tso_props } else { self.props };
        let size = self.data.len();
        let mut completes_tso = false;
        if self.tse {
            let frames = self.tso_frames;
            let css = usize::from(props.ipcss);
            if props.ipv4 {
                set_be16(&mut self.data, css + 2, size.saturating_sub(css) as u16);
                let id = be16(&self.data, css + 4).wrapping_add(frames);
                set_be16(&mut self.data, css + 4, id);
            } else {
                set_be16(&mut self.data, css + 4, size.saturating_sub(css + IPV6_HEADER_BYTES) as u16);
            }
            let css = usize::from(props.tucss);
            let len = size.saturating_sub(css) as u16;
            if props.tcp {
                let sent_bytes = u32::from(frames).wrapping_mul(u32::from(props.mss));
                let seq = be32(&self.data, css + 4).wrapping_add(sent_bytes);
                set_be32(&mut self.data, css + 4, seq);
                if props.paylen.wrapping_sub(sent_bytes) > u32::from(props.mss) {
                    if let Some(flags) = self.data.get_mut(css + TCP_FLAGS_OFFSET) {
                        *flags &= !TCP_PSH_FIN;
                    }
                } else if frames > 0 {
                    completes_tso = true;
                }
            } else {
                set_be16(&mut self.data, css + 4, len);
            }
            if self.sum_needed & TXD_POPTS_TXSM != 0 {
                // Linux leaves the pseudo-header sum without the length in the field.
                let sloc = usize::from(props.tucso);
                let partial = u32::from(be16(&self.data, sloc)) + u32::from(len);
                set_be16(&mut self.data, sloc, ((partial >> 16) + (partial & 0xffff)) as u16);
            }
            self.tso_frames = self.tso_frames.wrapping_add(1);
        }
        if self.sum_needed & TXD_POPTS_TXSM != 0 {
            insert_checksum(&mut self.data, props.tucso, props.tucss, props.tucse);
        }
        if self.sum_needed & TXD_POPTS_IXSM != 0 {
            insert_checksum(&mut self.data, props.ipcso, props.ipcss, props.ipcse);
        }
        match &self.vlan_tag {
            Some(tag) => {
                let split = self.data.len().min(12);
                port.send(&[&self.data[..split], tag, &self.data[split..]], completes_tso)
            }
            None => port.send(&[&self.data], completes_tso),
        }
    }
}

/// The Internet checksum of `data[start..end]` (QEMU's putsum): over the bytes from
/// `start` to `end` inclusive (`end` 0: to the end of the frame), stored big endian at
/// `at` (0 stored as 0xffff), if `at` lies before the last byte.
fn insert_checksum(data: &mut [u8], at: u8, start: u8, end: u16) {
    let mut n = data.len();
    if end != 0 && usize::from(end) < n {
        n = usize::from(end) + 1;
    }
    let at = usize::from(at);
    if n == 0 || at >= n - 1 {
        return;
    }
    let start = usize::from(start).min(n);
    let sum = !fold(ones_complement_sum(&data[start..n]));
    set_be16(data, at, if sum == 0 { 0xffff } else { sum });
}

/// The 32-bit sum of `data` as big-endian 16-bit words (an odd last byte padded).
pub(super) fn ones_complement_sum(data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    let mut sum: u32 = 0;
    for pair in &mut chunks {
        sum = sum.wrapping_add(u32::from(u16::from_be_bytes([pair[0], pair[1]])));
    }
    if let [last] = chunks.remainder() {
        sum = sum.wrapping_add(u32::from(*last) << 8);
    }
    sum
}

/// Folds a 32-bit one's complement sum into 16 bits.
pub(super) fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum >> 16) + (sum & 0xffff);
    }
    sum as u16
}

fn be16(data: &[u8], at: usize) -> u16 {
    match data.get(at..at + 2) {
        Some(&[hi, lo]) => u16::from_be_bytes([hi, lo]),
        _ => 0,
    }
}

fn be32(data: &[u8], at: usize) -> u32 {
    match data.get(at..at + 4) {
        Some(&[b0, b1, b2, b3]) => u32::from_be_bytes([b0, b1, b2, b3]),
        _ => 0,
    }
}

/// Stores `value` big endian at `at`, if the frame is that long.
fn set_be16(data: &mut [u8], at: usize, value: u16) {
    if let Some(slot) = data.get_mut(at..at + 2) {
        slot.copy_from_slice(&value.to_be_bytes());
    }
}

fn set_be32(data: &mut [u8], at: usize, value: u32) {
    if let Some(slot) = data.get_mut(at..at + 4) {
        slot.copy_from_slice(&value.to_be_bytes());
    }
}
