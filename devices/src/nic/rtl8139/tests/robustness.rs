//! Malformed slots and rings end that operation with the card's error bits and a bounded
//! log, never a panic, a hang or a growing buffer; and the fuzz driver on pseudo-random
//! input.

use alloc::vec::Vec;

use super::harness::*;
use crate::nic::{MAX_QUEUED_TX_FRAMES, Nic, RxOutcome};

const PCI_STATUS_MASTER_ABORT: u32 = 0x2000;

/// Hands slot `cur_tx % 4` to the card as the driver would, but with a raw TSD value.
fn raw_transmit(bed: &mut Bed, linux: &mut Linux, tsd: u32) -> u32 {
    let slot = linux.cur_tx % NUM_TX_DESC;
    bed.w32(TX_STATUS0 + 4 * slot, tsd);
    linux.cur_tx += 1;
    let status = bed.r32(TX_STATUS0 + 4 * slot);
    linux.service(bed);
    status
}

#[test]
fn slots_with_impossible_lengths_abort() {
    let (mut bed, mut linux) = opened();
    for len in [0u32, 13, 1519, 0x1fff] {
        let status = raw_transmit(&mut bed, &mut linux, len);
        assert_eq!(status & (TX_ABORTED | TX_HOST_OWNS | TX_STAT_OK), TX_ABORTED | TX_HOST_OWNS, "{len} bytes");
    }
    assert!(bed.take_frames().is_empty());
    assert_eq!(bed.nic.stats().dma_errors, 4);
    assert_eq!(linux.stats.tx_aborted_errors, 4, "8139too saw TxAborted each time");
    assert_eq!(bed.r16(INTR_STATUS), 0, "TER acknowledged");
    assert!(!bed.nic.irq_level());
    assert_eq!(bed.nic.tx_log.seen(), 4, "each one went through the log limiter");
    // The card carries on.
    assert!(linux.start_xmit(&mut bed, &frame_to(MAC, 64, 0)));
    linux.service(&mut bed);
    assert_eq!(bed.take_frames(), [frame_to(MAC, 64, 0)]);
}

#[test]
fn a_transmit_buffer_outside_ram_aborts_with_a_master_abort() {
    let (mut bed, mut linux) = opened();
    for (slot, address) in [(0u64, RAM_BYTES as u32 - 10), (1, 0xffff_f000)] {
        bed.w32(TX_ADDR0 + 4 * slot, address);
    }
    bed.ram.hole = Some(TX_BUFS_GPA + 2 * TX_BUF_SIZE..TX_BUFS_GPA + 2 * TX_BUF_SIZE + 1);
    for _ in 0..3 {
        let status = raw_transmit(&mut bed, &mut linux, 0x0008_0000 | 100);
        assert_eq!(status & (TX_ABORTED | TX_STAT_OK), TX_ABORTED);
    }
    assert_eq!(bed.nic.stats().dma_errors, 3);
    assert_eq!(linux.stats.tx_aborted_errors, 3);
    assert_eq!(bed.nic.config_read(0x06, 2) & PCI_STATUS_MASTER_ABORT, PCI_STATUS_MASTER_ABORT);
    bed.nic.config_write(0x06, 2, PCI_STATUS_MASTER_ABORT);
    assert_eq!(bed.nic.config_read(0x06, 2) & PCI_STATUS_MASTER_ABORT, 0, "write 1 to clear");
    // Slot 3 is fine.
    bed.ram.hole = None;
    assert!(linux.start_xmit(&mut bed, &frame_to(MAC, 64, 3)));
    linux.service(&mut bed);
    assert_eq!(bed.take_frames(), [frame_to(MAC, 64, 3)]);
}

#[test]
fn without_bus_mastering_nothing_touches_guest_memory() {
    let (mut bed, mut linux) = opened();
    bed.nic.config_write(0x04, 2, 0x0003);
    bed.ram.poke(TX_BUFS_GPA, &frame_to(MAC, 64, 0));
    let status = raw_transmit(&mut bed, &mut linux, 64);
    assert_eq!(status & (TX_ABORTED | TX_STAT_OK), TX_ABORTED);
    assert_eq!(bed.nic.config_read(0x06, 2) & PCI_STATUS_MASTER_ABORT, 0, "no transaction, no master abort");
    assert!(bed.nic.can_receive(), "the glue need not hold frames for a card that cannot take them");
    assert_eq!(bed.deliver(&frame_to(MAC, 64, 1)), RxOutcome::DmaError);
    assert_eq!(bed.ram.peek(RX_RING_GPA, 8), [0; 8]);
    assert_eq!(bed.r16(RX_BUF_ADDR), 0);
    linux.service(&mut bed);
    assert_eq!(linux.stats.rx_errors, 1, "RER reached 8139too's weird-interrupt path");
    assert!(linux.received.is_empty());
    bed.nic.config_write(0x04, 2, 0x0007);
    assert_eq!(bed.deliver(&frame_to(MAC, 64, 2)), RxOutcome::Delivered);
    linux.service(&mut bed);
    assert_eq!(linux.received, [frame_to(MAC, 64, 2)]);
}

#[test]
fn a_ring_outside_ram_drops_frames_with_rer() {
    let (mut bed, _linux) = opened();
    bed.w32(RX_BUF, RAM_BYTES as u32 - 100);
    assert_eq!(bed.deliver(&frame_to(MAC, 1514, 0)), RxOutcome::DmaError);
    bed.w32(RX_BUF, 0xffff_ff00);
    assert_eq!(bed.deliver(&frame_to(MAC, 64, 0)), RxOutcome::DmaError);
    // A hole in the part of the ring a wrapped packet continues into.
    bed.w32(RX_BUF, RX_RING_GPA as u32);
    bed.w32(RX_CONFIG, ACCEPT_MY_PHYS); // 8 KiB, WRAP clear
    for i in 0..5 {
        assert_eq!(bed.deliver(&frame_to(MAC, 1514, i)), RxOutcome::Delivered);
    }
    bed.w16(RX_BUF_PTR, (5 * 1524 - 16) as u16);
    bed.ram.hole = Some(RX_RING_GPA..RX_RING_GPA + 1);
    assert_eq!(bed.deliver(&frame_to(MAC, 1514, 5)), RxOutcome::DmaError);
    assert_eq!(bed.r16(RX_BUF_ADDR), 5 * 1524, "CBR stays");
    assert_eq!(bed.nic.stats().dma_errors, 3);
    assert_eq!(bed.r16(INTR_STATUS) & RX_ERR, RX_ERR);
    assert_eq!(bed.nic.config_read(0x06, 2) & PCI_STATUS_MASTER_ABORT, PCI_STATUS_MASTER_ABORT);
    bed.ram.hole = None;
    assert_eq!(bed.deliver(&frame_to(MAC, 1514, 6)), RxOutcome::Delivered);
    assert_eq!(bed.nic.stats().rx_frames, 6);
}

#[test]
fn frames_from_the_wire_that_are_no_ethernet_frames_are_dropped() {
    let (mut bed, _linux) = opened();
    for len in [0usize, 5, 13, 1519, 9000] {
        let mut frame = alloc::vec![0u8; len];
        frame.iter_mut().zip(MAC).for_each(|(byte, mac)| *byte = mac);
        assert_eq!(bed.deliver(&frame), RxOutcome::Filtered, "{len} bytes");
    }
    assert_eq!(bed.r16(RX_BUF_ADDR), 0);
    assert_eq!(bed.nic.stats().rx_filtered, 5);
    assert_eq!(bed.deliver(&frame_to(MAC, 14, 0)), RxOutcome::Delivered, "a bare header, padded");
}

#[test]
fn any_capr_keeps_the_ring_offsets_sane() {
    let (mut bed, _linux) = opened();
    for (i, capr) in [0x1233u16, 0xffff, 0x7ffe, 0x0003, 0x8000, 0xfff0, 0x4321].into_iter().enumerate() {
        bed.w16(RX_BUF_PTR, capr);
        for j in 0..30 {
            bed.deliver(&frame_to(MAC, 60 + 47 * j, i as u8));
            let cbr = u32::from(bed.r16(RX_BUF_ADDR));
            assert!(cbr < RX_BUF_LEN && cbr % 4 == 0, "CBR {cbr:#x} after CAPR {capr:#x}");
        }
    }
}

#[test]
fn tx_queue_never_exceeds_its_bound() {
    let (mut bed, mut linux) = opened();
    for i in 0..1000u32 {
        raw_transmit(&mut bed, &mut linux, 0x0008_0000 | (60 + i % 1400));
        assert!(bed.nic.tx_queue.len() <= MAX_QUEUED_TX_FRAMES);
    }
    assert_eq!(linux.stats.tx_packets, 1000);
    assert_eq!(bed.nic.stats().tx_dropped, 1000 - MAX_QUEUED_TX_FRAMES as u64);
}

#[test]
fn random_register_and_memory_traffic_never_panics() {
    // A setup prologue in the fuzz driver's encoding (8 bytes an operation), then noise.
    let write = |offset: u8, size_selector: u8, value: u32| {
        let mut op = [0u8, 0x80, offset, size_selector, 0, 0, 0, 0];
        op[4..].copy_from_slice(&value.to_le_bytes());
        op
    };
    let mut bytes = Vec::new();
    bytes.extend([8u8, 0, 0, 1, 0x07, 0, 0, 0]); // COMMAND: I/O, memory, bus master
    bytes.extend(write(0x30, 2, 0x1000)); // RBSTART
    bytes.extend(write(0x37, 0, 0x0c)); // CR: RE, TE
    bytes.extend(write(0x44, 2, 0xf78f)); // RCR: 32 KiB, WRAP, accept everything
    bytes.extend(write(0x3c, 1, 0xffff)); // IMR
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };
    while bytes.len() < 1 << 17 {
        bytes.extend(next().to_le_bytes());
    }
    let (ran, stats) = super::super::fuzz_run(&bytes);
    assert_eq!(ran, bytes.len() / 8);
    assert_eq!(super::super::fuzz_rtl8139(&bytes[..100]), 12);
    // The noise reached both directions and the error paths.
    assert!(stats.rx_frames > 0, "{stats:?}");
    assert!(stats.tx_frames + stats.tx_dropped > 0, "{stats:?}");
    assert!(stats.dma_errors > 0, "{stats:?}");
    assert!(stats.rx_no_buffer + stats.rx_filtered > 0, "{stats:?}");
}
