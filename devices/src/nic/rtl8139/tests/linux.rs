//! The card as Linux's 8139too drives it (the harness's model of the driver): probe,
//! open, transmit, receive with wrap-around, a full ring, the receive filters as
//! `__set_rx_mode` programs them, link changes, receive error recovery, close and reset.

use alloc::vec;
use alloc::vec::Vec;

use super::harness::*;
use crate::nic::{MAX_QUEUED_TX_FRAMES, Nic, RxOutcome};

const PEER: [u8; 6] = [0x00, 0x16, 0x3e, 0x77, 0x66, 0x55];
const BROADCAST: [u8; 6] = [0xff; 6];
const ALL_HOSTS: [u8; 6] = [0x01, 0x00, 0x5e, 0x00, 0x00, 0x01];

/// What the stack gets for a frame from the wire: padded to 60 bytes, without FCS.
fn as_received(frame: &[u8]) -> Vec<u8> {
    let mut expected = frame.to_vec();
    expected.resize(frame.len().max(ETH_ZLEN), 0);
    expected
}

#[test]
fn probe_identifies_an_rtl8139c_and_reads_the_mac_from_the_eeprom() {
    let mut bed = Bed::new();
    assert_eq!(bed.nic.config_read(0x00, 4), 0x8139_10ec);
    assert_eq!(bed.nic.config_read(0x08, 1), 0x10, "revision below 0x20: 8139too, not 8139cp");
    let linux = Linux::probe(&mut bed);
    assert_eq!(linux.chip_name(), "RTL-8139C");
    assert_eq!(linux.addr_len, 6, "a 93C46: the 8-bit-address read of word 0 is not 0x8129");
    assert_eq!(linux.dev_addr, MAC);
    assert_eq!(bed.r8(CONFIG1), 0x0c, "8139too writes back the old CONFIG1 (its PM_Enable is lost)");
    assert_eq!(bed.r8(CFG9346), 0x00, "locked again");
    assert!(!bed.nic.irq_level());
}

#[test]
fn probe_through_io_ports_too() {
    let mut bed = Bed::new();
    bed.bar = super::super::BAR_IO;
    let mut linux = Linux::probe(&mut bed);
    assert_eq!(linux.dev_addr, MAC);
    linux.open(&mut bed);
    assert!(linux.start_xmit(&mut bed, &frame_to(PEER, 100, 1)));
    linux.service(&mut bed);
    assert_eq!(bed.take_frames(), [frame_to(PEER, 100, 1)]);
}

#[test]
fn open_programs_the_card_as_hw_start_does() {
    let (mut bed, linux) = opened();
    assert_eq!(bed.r32(RX_CONFIG), RX_CONFIG_BASE | ACCEPT_BROADCAST | ACCEPT_MY_PHYS);
    assert_eq!(bed.r32(RX_CONFIG), 0xf78a);
    assert_eq!(bed.r32(TX_CONFIG), 0x7400_0000 | TX_CONFIG_BASE, "version bits kept");
    assert_eq!(bed.r16(INTR_MASK), INTR_MASK_ALL);
    assert_eq!(bed.r32(RX_BUF), RX_RING_GPA as u32);
    for i in 0..4 {
        assert_eq!(bed.r32(TX_ADDR0 + 4 * i), (TX_BUFS_GPA + i * TX_BUF_SIZE) as u32);
        assert_eq!(bed.r32(TX_STATUS0 + 4 * i), TX_HOST_OWNS);
    }
    assert_eq!(bed.r8(CHIP_CMD), CMD_RX_ENB | CMD_TX_ENB | RX_BUF_EMPTY);
    assert_eq!(bed.r16(RX_BUF_PTR), 0xfff0);
    assert_eq!(bed.r16(RX_BUF_ADDR), 0);
    assert_eq!(bed.r32(MAR0), 0);
    assert_eq!(bed.r32(MAC0), u32::from_le_bytes([MAC[0], MAC[1], MAC[2], MAC[3]]));
    assert!(linux.carrier);
    assert_eq!(linux.log, ["link up, 100Mbps, full-duplex, lpa 0x05E1"]);
    assert_eq!(bed.r8(CONFIG3) & 0x20, 0, "magic packet off");
    assert!(!bed.nic.irq_level());
}

#[test]
fn transmitted_frames_reach_the_glue_byte_for_byte() {
    let (mut bed, mut linux) = opened();
    let frames: Vec<Vec<u8>> = [42usize, 60, 61, 1514, 100, 1000, 64, 1518, 200, 300]
        .iter()
        .enumerate()
        .map(|(i, &len)| frame_to(PEER, len, i as u8))
        .collect();
    for frame in &frames {
        assert!(linux.start_xmit(&mut bed, frame));
        assert!(bed.nic.irq_level(), "TOK");
        linux.service(&mut bed);
        assert!(!bed.nic.irq_level());
    }
    // The driver pads short frames to ETH_ZLEN itself; the card sends SIZE bytes.
    let expected: Vec<Vec<u8>> = frames.iter().map(|frame| as_received(frame)).collect();
    assert_eq!(bed.take_frames(), expected);
    assert_eq!(linux.stats.tx_packets, 10);
    let sent_bytes: usize = expected.iter().map(Vec::len).sum();
    assert_eq!(linux.stats.tx_bytes, sent_bytes as u64);
    assert_eq!(linux.dirty_tx, linux.cur_tx);
    assert_eq!(bed.nic.stats().tx_frames, 10);
    // The last slot used: OWN, TOK and the size; the threshold bits as written.
    let last = bed.r32(TX_STATUS0 + 4 * ((linux.cur_tx - 1) % 4));
    assert_eq!(last, TX_STAT_OK | TX_HOST_OWNS | 0x0008_0000 | 300);
    assert_eq!(bed.r16(TX_SUMMARY), 0xf00f, "TOK and OWN for all four slots");
}

#[test]
fn the_queue_stops_after_four_slots_and_wakes_on_tok() {
    let (mut bed, mut linux) = opened();
    for i in 0..4 {
        assert!(linux.start_xmit(&mut bed, &frame_to(PEER, 80, i)));
    }
    assert!(linux.queue_stopped);
    assert!(!linux.start_xmit(&mut bed, &frame_to(PEER, 80, 9)));
    linux.service(&mut bed);
    assert!(!linux.queue_stopped);
    assert_eq!(linux.interrupts, 1, "one interrupt for the four completions");
    assert_eq!(bed.take_frames().len(), 4);
}

#[test]
fn a_glue_that_does_not_drain_costs_dropped_frames_not_memory() {
    let (mut bed, mut linux) = opened();
    for i in 0..100u32 {
        assert!(linux.start_xmit(&mut bed, &frame_to(PEER, 60, i as u8)));
        linux.service(&mut bed);
    }
    assert_eq!(linux.stats.tx_packets, 100, "every slot completes with TOK");
    let stats = bed.nic.stats();
    assert_eq!(stats.tx_frames, MAX_QUEUED_TX_FRAMES as u64);
    assert_eq!(stats.tx_dropped, 100 - MAX_QUEUED_TX_FRAMES as u64);
    let taken = bed.take_frames();
    assert_eq!(taken.len(), MAX_QUEUED_TX_FRAMES);
    assert_eq!(taken[0], frame_to(PEER, 60, 0), "the oldest frames are kept");
}

#[test]
fn received_frames_land_in_the_ring_as_8139too_reads_them() {
    let (mut bed, mut linux) = opened();
    let frames: Vec<Vec<u8>> = [60usize, 42, 1514, 1518, 99, 100, 101, 102]
        .iter()
        .enumerate()
        .map(|(i, &len)| frame_to(MAC, len, i as u8))
        .collect();
    for frame in &frames {
        assert_eq!(bed.deliver(frame), RxOutcome::Delivered);
    }
    assert!(bed.nic.irq_level(), "ROK");
    assert_eq!(bed.r8(CHIP_CMD) & RX_BUF_EMPTY, 0);
    linux.service(&mut bed);
    let expected: Vec<Vec<u8>> = frames.iter().map(|frame| as_received(frame)).collect();
    assert_eq!(linux.received, expected);
    assert_eq!(linux.stats.rx_errors, 0);
    assert_eq!(bed.r16(INTR_STATUS), 0, "ROK acknowledged");
    assert!(!bed.nic.irq_level());
    assert_eq!(bed.r8(CHIP_CMD) & RX_BUF_EMPTY, RX_BUF_EMPTY);
    assert_eq!(bed.r16(RX_BUF_ADDR) as u32, linux.cur_rx % RX_BUF_LEN, "CBR where the driver will read next");
    assert_eq!(bed.r16(RX_BUF_PTR), (linux.cur_rx - 16) as u16);
    assert_eq!(bed.nic.stats().rx_frames, frames.len() as u64);
}

#[test]
fn the_ring_entry_has_status_length_with_fcs_data_and_fcs() {
    let (mut bed, _linux) = opened();
    let frame = frame_to(MAC, 100, 7);
    assert_eq!(bed.deliver(&frame), RxOutcome::Delivered);
    let header = bed.ram.peek_u32(RX_RING_GPA);
    assert_eq!(header & 0xffff, RX_PHYSICAL | RX_STATUS_OK);
    assert_eq!(header >> 16, 104);
    assert_eq!(bed.ram.peek(RX_RING_GPA + 4, 100), frame);
    let fcs = bed.ram.peek_u32(RX_RING_GPA + 104);
    assert_eq!(fcs, super::super::crc::ethernet_fcs(&frame));
    assert_eq!(bed.r16(RX_BUF_ADDR), 108, "4 + 100 + 4, dword aligned");
    // With NETIF_F_RXFCS the stack gets the FCS too.
    let (mut bed, mut linux) = opened();
    linux.rxfcs = true;
    bed.deliver(&frame);
    linux.service(&mut bed);
    let mut with_fcs = frame.clone();
    with_fcs.extend_from_slice(&super::super::crc::ethernet_fcs(&frame).to_le_bytes());
    assert_eq!(linux.received, [with_fcs]);
}

#[test]
fn packets_run_past_the_end_of_the_ring_with_wrap_set() {
    let (mut bed, mut linux) = opened();
    let mut expected = Vec::new();
    let mut crossed_end = 0;
    for i in 0..200u32 {
        let frame = frame_to(MAC, 1000 + (i as usize * 37) % 518, i as u8);
        let before = u32::from(bed.r16(RX_BUF_ADDR));
        assert_eq!(bed.deliver(&frame), RxOutcome::Delivered, "frame {i}");
        let after = u32::from(bed.r16(RX_BUF_ADDR));
        let packet_end = before + 4 + frame.len() as u32 + 4;
        if packet_end > RX_BUF_LEN {
            crossed_end += 1;
            // The tail went past RX_BUF_LEN (into the driver's pad), not to the start,
            // and the next packet starts as far into the ring as the tail went.
            assert!(packet_end <= RX_BUF_TOT_LEN, "inside the driver's allocation");
            let tail = packet_end - RX_BUF_LEN;
            assert_eq!(after, (tail + 3) & !3, "frame {i}");
            assert_eq!(bed.ram.peek(RX_RING_GPA + u64::from(before) + 4, frame.len()), frame);
        }
        expected.push(frame);
        linux.service(&mut bed);
    }
    assert!(crossed_end >= 5, "the ring wrapped {crossed_end} times");
    assert_eq!(linux.received, expected);
    assert_eq!(linux.stats.rx_errors, 0);
    assert!(linux.cur_rx > 5 * RX_BUF_LEN);
}

#[test]
fn a_full_ring_drops_with_rxovw_and_recovers_once_drained() {
    let (mut bed, mut linux) = opened();
    let mut delivered = vec![frame_to(MAC, 1514, 0)];
    assert_eq!(bed.deliver(&delivered[0]), RxOutcome::Delivered);
    // The interrupt schedules NAPI, which masks the Rx interrupts while it polls: the
    // card then asks the glue to hold frames once the ring is full.
    assert!(linux.interrupt(&mut bed));
    loop {
        let frame = frame_to(MAC, 1514, delivered.len() as u8);
        if !bed.nic.can_receive() {
            break;
        }
        assert_eq!(bed.deliver(&frame), RxOutcome::Delivered);
        delivered.push(frame);
    }
    assert_eq!(delivered.len(), 21, "21 packets of 1524 bytes fit in 32 KiB");
    // The glue was told to hold; a frame offered anyway is dropped and counted.
    assert_eq!(bed.deliver(&frame_to(MAC, 1514, 0xee)), RxOutcome::NoBuffer);
    assert_eq!(bed.nic.stats().rx_no_buffer, 1);
    assert_eq!(bed.r32(RX_MISSED), 1);
    assert_eq!(bed.r16(INTR_STATUS) & (RX_OVERFLOW | RX_OK), RX_OVERFLOW | RX_OK);
    // A small frame still fits.
    assert_eq!(bed.deliver(&frame_to(MAC, 60, 0xdd)), RxOutcome::Delivered);
    delivered.push(frame_to(MAC, 60, 0xdd));
    linux.service(&mut bed);
    assert_eq!(linux.received, delivered);
    assert_eq!(linux.stats.rx_errors, 1, "isr_ack counts RxOverflow");
    assert!(bed.nic.can_receive());
    assert!(!bed.nic.irq_level());
    assert_eq!(bed.deliver(&frame_to(MAC, 1514, 0xcc)), RxOutcome::Delivered);
    linux.service(&mut bed);
    assert_eq!(linux.received.last(), Some(&frame_to(MAC, 1514, 0xcc)));
}

/// 8139too's NAPI poll reads the ring only while ISR has an Rx bit. When its budget
/// runs out while the glue refills the ring after each CAPR write, the ack that follows
/// the write clears the ROK of the refill; the next poll then finds ISR clear and
/// completes with the ring full and interrupts unmasked. On the test bed this stalled
/// a TCP stream to the guest for good (the glue held netback's frames for the full
/// ring). With RXOVW unmasked the card takes the next frame, drops it for lack of room
/// and interrupts, as QEMU's does, and the driver drains the ring.
#[test]
fn a_ring_left_full_by_a_spent_napi_budget_is_drained_after_an_overflow() {
    let (mut bed, mut linux) = opened();
    let mut delivered = vec![frame_to(MAC, 1514, 0)];
    assert_eq!(bed.deliver(&delivered[0]), RxOutcome::Delivered);
    assert!(linux.interrupt(&mut bed), "NAPI scheduled, Rx interrupts masked");
    while bed.nic.can_receive() {
        let frame = frame_to(MAC, 1514, delivered.len() as u8);
        assert_eq!(bed.deliver(&frame), RxOutcome::Delivered);
        delivered.push(frame);
    }
    // The last ack of the spent poll, after the glue's last refill.
    bed.w16(INTR_STATUS, RX_ACK_BITS);
    assert_eq!(linux.poll(&mut bed, 64), 0, "the poll sees no Rx bit and leaves the ring alone");
    assert!(linux.received.is_empty());
    assert!(!bed.nic.irq_level(), "nothing pending: only a new frame can wake the driver");
    assert!(bed.nic.can_receive(), "with RXOVW unmasked the card takes a frame for a full ring");
    assert_eq!(bed.deliver(&frame_to(MAC, 1514, 0xee)), RxOutcome::NoBuffer);
    assert!(bed.nic.irq_level());
    linux.service(&mut bed);
    assert_eq!(linux.received, delivered);
    assert_eq!(bed.nic.stats().rx_no_buffer, 1);
}

#[test]
fn the_filters_follow_set_rx_mode() {
    let (mut bed, mut linux) = opened();
    let other_multicast = [0x01, 0x00, 0x5e, 0x00, 0x00, 0x02];
    assert_ne!(linux_mc_bit(&other_multicast), linux_mc_bit(&ALL_HOSTS));
    let cases = |bed: &mut Bed| {
        [PEER, MAC, BROADCAST, ALL_HOSTS, other_multicast].map(|destination| bed.deliver(&frame_to(destination, 64, 0)))
    };
    use RxOutcome::{Delivered as D, Filtered as F};
    // Open: our address and broadcast.
    assert_eq!(cases(&mut bed), [F, D, D, F, F]);
    // One multicast group: AM and its hash bit.
    linux.mc_list.push(ALL_HOSTS);
    linux.set_rx_mode(&mut bed);
    assert_eq!(bed.r32(RX_CONFIG) & 0x0f, ACCEPT_BROADCAST | ACCEPT_MULTICAST | ACCEPT_MY_PHYS);
    assert_eq!(cases(&mut bed), [F, D, D, D, F]);
    // IFF_ALLMULTI.
    linux.allmulti = true;
    linux.set_rx_mode(&mut bed);
    assert_eq!(cases(&mut bed), [F, D, D, D, D]);
    // IFF_PROMISC.
    linux.promisc = true;
    linux.set_rx_mode(&mut bed);
    assert_eq!(cases(&mut bed), [D, D, D, D, D]);
    // Back to plain.
    linux.promisc = false;
    linux.allmulti = false;
    linux.mc_list.clear();
    linux.set_rx_mode(&mut bed);
    assert_eq!(cases(&mut bed), [F, D, D, F, F]);

    // The frames the driver got, with the status bits the card reported.
    linux.service(&mut bed);
    assert_eq!(linux.received.len(), 2 + 3 + 4 + 5 + 2);
    assert_eq!(linux.stats.rx_errors, 0, "changing RCR at run time did not lose the driver's place");
    let stats = bed.nic.stats();
    assert_eq!((stats.rx_frames, stats.rx_filtered), (16, 9));
}

#[test]
fn the_status_word_says_which_address_matched() {
    let (mut bed, mut linux) = opened();
    linux.promisc = true;
    linux.set_rx_mode(&mut bed);
    let mut offset = 0u64;
    for (destination, status) in [(MAC, RX_PHYSICAL), (BROADCAST, RX_BROADCAST), (ALL_HOSTS, RX_MULTICAST), (PEER, 0)] {
        bed.deliver(&frame_to(destination, 64, 0));
        assert_eq!(bed.ram.peek_u32(RX_RING_GPA + offset) & 0xffff, status | RX_STATUS_OK, "{destination:02x?}");
        offset += 4 + 64 + 4;
    }
}

#[test]
fn link_down_and_up_reach_the_driver() {
    let (mut bed, mut linux) = opened();
    bed.nic.set_link_up(false, bed.now_ns);
    assert!(bed.nic.irq_level(), "PUN/LinkChg");
    assert_ne!(bed.r16(CSCR) & CSCR_LINK_CHANGE_BIT, 0);
    linux.service(&mut bed);
    assert!(!linux.carrier);
    assert_eq!(linux.log.last().map(|line| line.as_str()), Some("link down"));
    assert_eq!(linux.stats.rx_errors, 0, "a link change is not counted as an underrun");
    assert_eq!(bed.r16(CSCR) & CSCR_LINK_CHANGE_BIT, 0, "cleared with the acknowledgement");
    assert_eq!(bed.r16(BASIC_MODE_STATUS) & 0x0024, 0, "no link, no autonegotiation");
    assert_eq!(bed.r8(MEDIA_STATUS) & 0x04, 0x04, "LINKB");
    // Nothing comes in; what goes out is lost.
    assert_eq!(bed.deliver(&frame_to(MAC, 64, 0)), RxOutcome::Filtered);
    assert!(bed.nic.can_receive(), "the glue need not hold frames for a card without link");
    bed.w32(TX_STATUS0, 0x0008_0000 | 64);
    assert_eq!(bed.r32(TX_STATUS0) & (TX_STAT_OK | TX_CARRIER_LOST), TX_STAT_OK | TX_CARRIER_LOST);
    assert!(bed.take_frames().is_empty());
    assert_eq!(bed.nic.stats().tx_dropped, 1);
    linux.cur_tx += 1;
    linux.service(&mut bed);

    bed.nic.set_link_up(true, bed.now_ns);
    bed.nic.set_link_up(true, bed.now_ns);
    linux.service(&mut bed);
    assert!(linux.carrier);
    assert_eq!(linux.log.last().map(|line| line.as_str()), Some("link up, 100Mbps, full-duplex, lpa 0x05E1"));
    assert_eq!(linux.log.len(), 3, "open, down, up: a repeated 'up' is no change");
    assert_eq!(bed.deliver(&frame_to(MAC, 64, 1)), RxOutcome::Delivered);
    linux.service(&mut bed);
    assert_eq!(linux.received, [frame_to(MAC, 64, 1)]);
}

#[test]
fn receive_error_recovery_restarts_the_ring_at_zero() {
    let (mut bed, mut linux) = opened();
    for i in 0..3 {
        bed.deliver(&frame_to(MAC, 200, i));
    }
    linux.service(&mut bed);
    assert_eq!(linux.received.len(), 3);
    // The driver loses its place (as after a DMA glitch): it reads a bad header and
    // resets the receiver with RE off/on and RCR, then reads from 0.
    linux.cur_rx += 8;
    bed.deliver(&frame_to(MAC, 300, 3));
    linux.service(&mut bed);
    assert_eq!(linux.stats.rx_errors, 1);
    assert_eq!(linux.cur_rx, 0);
    assert_eq!(bed.r16(RX_BUF_ADDR), 0, "CBR back at 0");
    assert_eq!(bed.r16(RX_BUF_PTR), 0xfff0);
    bed.deliver(&frame_to(MAC, 400, 4));
    linux.service(&mut bed);
    assert_eq!(linux.received.len(), 4);
    assert_eq!(linux.received[3], frame_to(MAC, 400, 4));
}

#[test]
fn close_stops_the_card_and_open_starts_it_again() {
    let (mut bed, mut linux) = opened();
    bed.deliver(&frame_to(MAC, 100, 0));
    linux.close(&mut bed);
    assert!(!bed.nic.irq_level(), "IMR 0");
    assert_eq!(bed.r8(CHIP_CMD) & (CMD_RX_ENB | CMD_TX_ENB), 0);
    assert_eq!(bed.deliver(&frame_to(MAC, 100, 1)), RxOutcome::Filtered);
    linux.open(&mut bed);
    assert_eq!(bed.r16(INTR_STATUS), 0, "the chip reset cleared the old ROK");
    assert_eq!(bed.deliver(&frame_to(MAC, 100, 2)), RxOutcome::Delivered);
    linux.service(&mut bed);
    assert_eq!(linux.received, [frame_to(MAC, 100, 2)]);
    assert!(linux.start_xmit(&mut bed, &frame_to(PEER, 100, 3)));
    linux.service(&mut bed);
    assert_eq!(bed.take_frames(), [frame_to(PEER, 100, 3)]);
}

#[test]
fn a_new_mac_filters_and_the_chip_reset_keeps_it_but_a_machine_reset_does_not() {
    let (mut bed, mut linux) = opened();
    let new_mac = [0x02, 0x00, 0x00, 0x00, 0x00, 0x01];
    linux.set_mac_address(&mut bed, new_mac);
    assert_eq!(bed.deliver(&frame_to(new_mac, 64, 0)), RxOutcome::Delivered);
    assert_eq!(bed.deliver(&frame_to(MAC, 64, 0)), RxOutcome::Filtered);
    // ifdown/ifup: hw_start resets the chip and writes dev_addr again.
    linux.close(&mut bed);
    linux.open(&mut bed);
    assert_eq!(bed.r32(MAC0), u32::from_le_bytes([0x02, 0, 0, 0]));
    // The chip reset alone keeps IDR and MAR.
    linux.allmulti = true;
    linux.set_rx_mode(&mut bed);
    chip_reset(&mut bed);
    assert_eq!(bed.r16(MAC0 + 4), 0x0100);
    assert_eq!(bed.r32(MAR0), 0xffff_ffff);
    assert_eq!(bed.r16(INTR_MASK), 0);
    assert_eq!(bed.r8(CHIP_CMD), RX_BUF_EMPTY);
    // A machine reset reloads the EEPROM's MAC and clears the PCI setup.
    bed.nic.reset();
    assert_eq!(bed.r32(MAC0), u32::from_le_bytes([MAC[0], MAC[1], MAC[2], MAC[3]]), "IDR from the EEPROM");
    assert_eq!(bed.nic.config_read(0x04, 2), 0, "COMMAND");
    assert_eq!(bed.nic.config_read(0x10, 4), 0x1, "BAR0 unassigned");
    bed.nic.config_write(0x04, 2, 0x0007);
    let mut linux = Linux::probe(&mut bed);
    assert_eq!(linux.dev_addr, MAC);
    assert_eq!(bed.r32(MAR0), 0);
    linux.open(&mut bed);
    assert_eq!(bed.deliver(&frame_to(MAC, 64, 0)), RxOutcome::Delivered);
}
