//! Malformed descriptors and rings end the operation with an error bit, a count and a
//! bounded log, never a panic or a hang; the fuzz driver on pseudo-random input.

use alloc::vec;
use alloc::vec::Vec;

use super::super::fuzz_e1000;
use super::super::regs::*;
use super::harness::*;
use crate::nic::{MAX_QUEUED_TX_FRAMES, Nic, RxOutcome};
use crate::pci;

/// Past the end of the test guest's RAM.
const NOT_RAM: u64 = 0x8000_0000;

fn master_abort(guest: &Guest) -> bool {
    guest.nic.config_read(u16::from(pci::STATUS), 2) & (1 << 13) != 0
}

#[test]
fn transmit_buffer_outside_ram_drops_that_packet_only() {
    let mut guest = Guest::new();
    guest.open_and_wait_for_link(16, 8);
    guest.queue_tx_descs(&[(NOT_RAM, TXD_CMD_IFCS | TXD_CMD | 100, 0)]);
    let good = ethernet_frame(PEER_MAC, 0x0800, &pattern(100, 1));
    guest.xmit(&[&good]);
    assert_eq!(guest.wire_frames(), vec![good], "the bad packet dropped, the next one sent");
    assert_eq!(guest.tx_desc_upper(0) & TXD_STAT_DD, TXD_STAT_DD, "the bad descriptor is still handed back");
    assert!(master_abort(&guest), "PCI status: received master abort");
    assert_eq!(guest.nic.stats().dma_errors, 1);
    // The status bit is write-1-to-clear.
    guest.nic.config_write(u16::from(pci::STATUS), 2, 1 << 13);
    assert!(!master_abort(&guest));
}

#[test]
fn transmit_ring_outside_ram_stops_at_that_descriptor() {
    let mut guest = Guest::new();
    guest.open_and_wait_for_link(16, 8);
    guest.ew32(TDBAL, NOT_RAM as u32);
    guest.ew32(TDT, 5);
    assert_eq!(guest.er32(TDH), 0, "nothing consumed");
    assert!(master_abort(&guest));
    assert_eq!(guest.nic.stats().dma_errors, 1);
    guest.ew32(TDT, 6);
    assert_eq!(guest.nic.stats().dma_errors, 2, "each doorbell tries once");
}

#[test]
fn receive_buffer_outside_ram_gets_the_error_bit() {
    let mut guest = Guest::new();
    guest.open_and_wait_for_link(16, 8);
    let mut desc = [0u8; 16];
    desc[..8].copy_from_slice(&NOT_RAM.to_le_bytes());
    guest.ram_write(RX_RING, &desc);
    let frame = ethernet_frame(MAC, 0x0800, &pattern(100, 1));
    assert_eq!(guest.deliver(&frame), RxOutcome::DmaError);
    let desc = guest.rx_desc(0);
    assert_eq!(desc.status, RXD_STAT_DD | RXD_STAT_EOP | RXD_STAT_IXSM, "handed back");
    assert_eq!(desc.errors, RXD_ERR_RXE, "with RX data error");
    assert!(master_abort(&guest));
    assert_eq!(guest.clean_rx(), Vec::<Vec<u8>>::new(), "the driver drops it");
    assert_eq!(guest.deliver(&frame), RxOutcome::Delivered, "the next buffer is fine");
    assert_eq!(guest.clean_rx(), vec![frame]);
}

#[test]
fn receive_ring_outside_ram_takes_nothing() {
    let mut guest = Guest::new();
    guest.open_and_wait_for_link(16, 8);
    guest.ew32(RDBAL, NOT_RAM as u32);
    assert_eq!(guest.deliver(&ethernet_frame(MAC, 0x0800, &pattern(100, 1))), RxOutcome::DmaError);
    assert_eq!(guest.er32(RDH), 0);
    assert!(master_abort(&guest));
    assert_eq!(guest.nic.stats().dma_errors, 1);
}

#[test]
fn transmit_packet_longer_than_a_frame_is_dropped() {
    let mut guest = Guest::new();
    guest.open_and_wait_for_link(16, 8);
    let piece = pattern(1000, 4);
    let addr = guest.tx_buffer(&piece);
    guest.queue_tx_descs(&[
        (addr, TXD_CMD_IFCS | 1000, 0),
        (addr, TXD_CMD_IFCS | 1000, 0),
        (addr, TXD_CMD_IFCS | TXD_CMD | 1000, 0),
    ]);
    let good = ethernet_frame(PEER_MAC, 0x0800, &pattern(100, 1));
    guest.xmit(&[&good]);
    assert_eq!(guest.wire_frames(), vec![good]);
    assert_eq!(guest.nic.stats().dma_errors, 1, "counted as a bad length");
    assert_eq!(guest.er32(TDH), 4);
    // And the shortest: a frame without a whole Ethernet header.
    guest.xmit(&[&[0u8; 10]]);
    assert_eq!(guest.wire_frames(), Vec::<Vec<u8>>::new());
    assert_eq!(guest.nic.stats().dma_errors, 2);
}

#[test]
fn rings_that_never_end_are_walked_once() {
    let mut guest = Guest::new();
    guest.open_and_wait_for_link(8, 8);
    // Descriptors without EOP all round, and a tail beyond the ring.
    let piece = pattern(64, 4);
    let addr = guest.tx_buffer(&piece);
    for index in 0..8 {
        guest.write_tx_desc(index, addr, TXD_CMD_IFCS | TXD_CMD_RS | 64, 0);
    }
    guest.ew32(TDT, 0x100);
    assert_eq!(guest.er32(TDH), 0, "once round, back where it started");
    assert_eq!(guest.nic.take_tx_frame(), None, "no end of packet, no frame");
    // Receive descriptors without buffers all round.
    guest.ram_write(RX_RING, &[0; 8 * 16]);
    guest.ew32(RDT, 0x100);
    assert_eq!(guest.deliver(&ethernet_frame(MAC, 0x0800, &pattern(100, 1))), RxOutcome::NoBuffer);
    assert_eq!(guest.er32(RDH), 0);
    // Empty rings.
    guest.ew32(TDLEN, 0);
    guest.ew32(RDLEN, 0);
    guest.ew32(TDT, 3);
    assert_eq!(guest.deliver(&ethernet_frame(MAC, 0x0800, &pattern(100, 1))), RxOutcome::NoBuffer);
    assert!(!guest.nic.can_receive());
    // Heads outside the ring.
    guest.ew32(TDLEN, 128);
    guest.ew32(TDH, 50);
    guest.ew32(TDT, 2);
    assert_eq!(guest.er32(TDH), 50);
    guest.ew32(RDLEN, 128);
    guest.ew32(RDH, 50);
    assert_eq!(guest.deliver(&ethernet_frame(MAC, 0x0800, &pattern(100, 1))), RxOutcome::NoBuffer);
}

#[test]
fn tso_with_a_tiny_mss_is_bounded() {
    let mut guest = Guest::new();
    guest.open_and_wait_for_link(16, 8);
    let payload = pattern(3000, 2);
    let mut frame = ethernet_frame(PEER_MAC, 0x0800, &[0; 40]);
    frame.extend_from_slice(&payload);
    let addr = guest.tx_buffer(&frame);
    let context_addr = 14 | 24 << 8 | 33 << 16 | 34 << 32 | 50 << 40;
    let cmd = TXD_CMD_DEXT | TXD_CMD_TSE | TXD_CMD_TCP | TXD_CMD_IP | payload.len() as u32;
    guest.queue_tx_descs(&[
        (context_addr, cmd, 54 << 8 | 1 << 16),
        (addr, TXD_CMD_IFCS | TXD_CMD_DEXT | TXD_DTYP_D | TXD_CMD_TSE | TXD_CMD | frame.len() as u32, 3 << 8),
    ]);
    guest.ring_tx();
    assert_eq!(guest.er32(TDH), 2, "consumed");
    assert_eq!(guest.wire_frames().len(), MAX_QUEUED_TX_FRAMES, "as many segments as the queue holds");
    assert_eq!(guest.nic.stats().tx_dropped, 1, "the rest dropped");
    // An MSS that makes segments longer than a frame drops the packet.
    let big_mss = 0xffff_u32;
    guest.queue_tx_descs(&[
        (context_addr, cmd, 54 << 8 | big_mss << 16),
        (addr, TXD_CMD_IFCS | TXD_CMD_DEXT | TXD_DTYP_D | TXD_CMD_TSE | TXD_CMD | frame.len() as u32, 3 << 8),
    ]);
    guest.ring_tx();
    assert_eq!(guest.wire_frames().len(), 0);
    assert_eq!(guest.nic.stats().dma_errors, 1);
}

/// xorshift64*, for repeatable pseudo-random input.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

#[test]
fn fuzz_driver_survives_pseudo_random_input() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut total_ops = 0;
    for round in 0..300 {
        let len = 64 + (rng.next() % 4096) as usize;
        let data: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        let nr_ops = fuzz_e1000(&data);
        assert!(nr_ops > 0, "round {round}: no operation ran");
        total_ops += nr_ops;
    }
    assert!(total_ops > 50_000, "{total_ops} operations");
}
