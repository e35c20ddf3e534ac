//! The card driven as Linux's e1000 drives it: probe, open and link negotiation,
//! transmit, receive with wrap-around and interrupts, a full ring, the address
//! filters as set_rx_mode programs them, link loss, resets, and the transmit pause
//! while the glue's queue is full.

use alloc::vec;
use alloc::vec::Vec;

use super::super::regs::*;
use super::harness::*;
use crate::nic::{MAX_QUEUED_TX_FRAMES, Nic, RxOutcome};
use crate::pci;

#[test]
fn probe_reads_the_mac_from_the_eeprom_and_finds_the_m88_phy() {
    let mut guest = Guest::new();
    let (mac, phy_id) = guest.probe();
    assert_eq!(mac, MAC);
    assert_eq!(phy_id & 0xffff_fff0, 0x0141_0c20, "M88E1011_I_PHY_ID");
    assert_eq!(guest.er32(RA), 0x5e3e_1600, "the MAC reset left receive address 0 on the MAC");
    assert!(!guest.irq());
}

#[test]
fn open_negotiates_the_link_and_signals_it() {
    let mut guest = Guest::new();
    guest.probe();
    guest.open(16, 16);
    assert!(guest.irq(), "the LSC the driver fires at itself");
    let (icr, _) = guest.interrupt();
    assert_eq!(icr & ICR_LSC, ICR_LSC);
    assert_eq!(guest.er32(STATUS) & STATUS_LU, 0, "autonegotiation restarted: link down meanwhile");
    assert!(!guest.watchdog());
    assert_eq!(guest.er32(TCTL) & TCTL_EN, 0, "transmit stays off without link");
    guest.advance_ns(400_000_000);
    assert!(!guest.irq(), "still negotiating");
    guest.advance_ns(200_000_000);
    assert!(guest.irq(), "negotiation done");
    let (icr, _) = guest.interrupt();
    assert_eq!(icr & ICR_LSC, ICR_LSC);
    assert!(guest.watchdog());
    let bmsr = guest.read_phy(MII_BMSR as u32).unwrap();
    assert_eq!(bmsr & (BMSR_LINK_ST | BMSR_AN_COMP), BMSR_LINK_ST | BMSR_AN_COMP);
    assert_eq!(guest.read_phy(MII_ANLPAR as u32).unwrap() & ANLPAR_ACK, ANLPAR_ACK);
    assert_eq!(guest.er32(STATUS) & STATUS_LU, STATUS_LU);
    assert_eq!(guest.er32(TCTL) & TCTL_EN, TCTL_EN);
    assert_eq!(guest.nic.next_deadline_ns(), None, "no timer left running");
}

#[test]
fn transmit_hands_the_glue_exactly_the_frame() {
    let mut guest = Guest::new();
    guest.open_and_wait_for_link(16, 16);
    guest.advance_ns(1_000_000);
    let frame = ethernet_frame(PEER_MAC, 0x0800, &pattern(100, 5));
    guest.xmit(&[&frame]);
    assert_eq!(guest.wire_frames(), vec![frame.clone()]);
    assert_eq!(guest.er32(TDH), 1);
    assert_eq!(guest.tx_desc_upper(0) & TXD_STAT_DD, TXD_STAT_DD, "written back on RS");
    assert!(guest.irq());
    let (icr, _) = guest.interrupt();
    assert_eq!(icr & (ICR_TXDW | ICR_TXQE), ICR_TXDW | ICR_TXQE);
    assert_eq!(guest.tx_clean, 1, "the driver reclaimed the descriptor");
    // A frame in pieces: the linear head and two page fragments.
    let big = ethernet_frame(PEER_MAC, 0x86dd, &pattern(1400, 9));
    guest.xmit(&[&big[..54], &big[54..1000], &big[1000..]]);
    assert_eq!(guest.wire_frames(), vec![big.clone()]);
    assert_eq!(guest.er32(TDH), 4);
    assert_eq!(guest.er32(GPTC), 2);
    assert_eq!(guest.er32(TPT), 2);
    assert_eq!(guest.er32(GOTCL), (114 + 4) + (1414 + 4));
    assert_eq!(guest.er32(PTC127), 1);
    assert_eq!(guest.er32(PTC1522), 1);
    assert_eq!(guest.nic.stats().tx_frames, 2);
    // Broadcast and multicast are counted as such.
    guest.xmit(&[&ethernet_frame(BROADCAST, 0x0806, &pattern(46, 1))]);
    guest.xmit(&[&ethernet_frame([0x01, 0, 0x5e, 0, 0, 1], 0x0800, &pattern(46, 1))]);
    assert_eq!(guest.wire_frames().len(), 2);
    assert_eq!(guest.er32(BPTC), 1);
    assert_eq!(guest.er32(MPTC), 1);
}

#[test]
fn transmit_ring_wraps_round() {
    let mut guest = Guest::new();
    guest.open_and_wait_for_link(8, 8);
    let mut sent = Vec::new();
    for n in 0..20u8 {
        let frame = ethernet_frame(PEER_MAC, 0x0800, &pattern(60 + usize::from(n), n));
        guest.xmit(&[&frame]);
        sent.push(frame);
        guest.clean_tx();
    }
    assert_eq!(guest.wire_frames(), sent);
    assert_eq!(guest.er32(TDH), 20 % 8);
}

#[test]
fn received_frames_land_in_the_ring_with_wrap_around() {
    let mut guest = Guest::new();
    guest.open_and_wait_for_link(8, 8);
    assert_eq!(guest.er32(RDT), 6, "Linux gives count - 1 buffers and leaves RDT one behind");
    let mut sent = Vec::new();
    let mut received = Vec::new();
    for n in 0..20u8 {
        let frame = ethernet_frame(MAC, 0x0800, &pattern(80 + 3 * usize::from(n), n));
        assert_eq!(guest.deliver(&frame), RxOutcome::Delivered, "frame {n}");
        let index = u32::from(n) % 8;
        let desc = guest.rx_desc(index);
        assert_eq!(desc.len as usize, frame.len() + 4, "length with the FCS");
        assert_eq!(desc.status, RXD_STAT_DD | RXD_STAT_EOP | RXD_STAT_IXSM);
        assert_eq!(desc.errors, 0);
        sent.push(frame);
        if n % 3 == 2 {
            guest.advance_ns(1_000_000);
            let (icr, frames) = guest.interrupt();
            assert_eq!(icr & ICR_RXT0, ICR_RXT0);
            received.extend(frames);
        }
    }
    received.extend(guest.clean_rx());
    assert_eq!(received, sent);
    assert_eq!(guest.er32(RDH), 20 % 8);
    assert_eq!(guest.nic.stats().rx_frames, 20);
}

#[test]
fn receive_interrupts_are_raised_acknowledged_and_warn_of_a_low_ring() {
    let mut guest = Guest::new();
    guest.open_and_wait_for_link(8, 8);
    guest.advance_ns(1_000_000);
    assert!(!guest.irq());
    assert_eq!(guest.er32(ICR), ICR_TXQE, "left from the watchdog's TCTL write (masked)");
    guest.deliver(&ethernet_frame(MAC, 0x0800, &pattern(100, 1)));
    assert!(guest.irq());
    assert_eq!(guest.er32(ICS), ICR_RXT0, "5 buffers left of 8: no RXDMT0");
    assert_eq!(guest.er32(ICR), ICR_RXT0);
    assert!(!guest.irq(), "acknowledged by the ICR read");
    guest.deliver(&ethernet_frame(MAC, 0x0800, &pattern(100, 2)));
    assert!(!guest.irq(), "within the moderation window");
    guest.advance_ns(200_000);
    assert!(guest.irq(), "raised when the window closes");
    assert_eq!(guest.er32(ICR), ICR_RXT0 | ICR_RXDMT0, "4 left: at the half-ring threshold");
}

#[test]
fn a_full_ring_drops_the_frame_and_counts_it() {
    let mut guest = Guest::new();
    guest.open_and_wait_for_link(8, 8);
    for n in 0..6 {
        assert!(guest.nic.can_receive());
        assert_eq!(guest.deliver(&ethernet_frame(MAC, 0x0800, &pattern(100, n))), RxOutcome::Delivered);
    }
    assert!(!guest.nic.can_receive(), "RDH reached RDT");
    guest.er32(ICR);
    assert_eq!(guest.deliver(&ethernet_frame(MAC, 0x0800, &pattern(100, 7))), RxOutcome::NoBuffer);
    assert_eq!(guest.er32(ICS) & ICR_RXO, ICR_RXO, "receiver overrun");
    assert_eq!(guest.nic.stats().rx_no_buffer, 1);
    assert_eq!(guest.er32(RNBC), 1);
    assert_eq!(guest.er32(MPC), 1);
    // The driver cleans: room again.
    assert_eq!(guest.clean_rx().len(), 6);
    assert!(guest.nic.can_receive());
    assert_eq!(guest.deliver(&ethernet_frame(MAC, 0x0800, &pattern(100, 8))), RxOutcome::Delivered);
}

#[test]
fn a_frame_longer_than_a_buffer_spans_descriptors() {
    let mut guest = Guest::new();
    guest.open_and_wait_for_link(8, 8);
    let rctl = guest.er32(RCTL);
    guest.ew32(RCTL, rctl | 3 << RCTL_SZ_SHIFT); // 256-byte buffers
    let frame = ethernet_frame(MAC, 0x0800, &pattern(986, 3)); // 1000 + 4 bytes
    assert_eq!(guest.deliver(&frame), RxOutcome::Delivered);
    let descs: Vec<_> = (0..4).map(|i| guest.rx_desc(i)).collect();
    assert_eq!(descs.iter().map(|desc| desc.len).collect::<Vec<_>>(), vec![256, 256, 256, 236]);
    assert_eq!(descs.iter().map(|desc| desc.status).collect::<Vec<_>>(), vec![1, 1, 1, 7], "EOP on the last only");
    let mut data = Vec::new();
    for (desc, len) in descs.iter().zip([256, 256, 256, 232]) {
        data.extend(guest.ram_read(desc.buffer, len));
    }
    assert_eq!(data, frame);
    assert_eq!(guest.er32(RDH), 4);
    // Not enough buffers for it: nothing is written.
    let frame = ethernet_frame(MAC, 0x0800, &pattern(986, 4));
    assert_eq!(guest.deliver(&frame), RxOutcome::NoBuffer, "2 buffers of 256 bytes left");
    assert_eq!(guest.er32(RDH), 4);
}

#[test]
fn short_frames_are_padded() {
    let mut guest = Guest::new();
    guest.open_and_wait_for_link(8, 8);
    let arp = ethernet_frame(BROADCAST, 0x0806, &pattern(28, 6));
    assert_eq!(guest.deliver(&arp), RxOutcome::Delivered);
    let mut padded = arp.clone();
    padded.resize(60, 0);
    assert_eq!(guest.clean_rx(), vec![padded]);
}

#[test]
fn filters_as_set_rx_mode_programs_them() {
    let mut guest = Guest::new();
    guest.open_and_wait_for_link(64, 64);
    let other = [0x00, 0x16, 0x3e, 0x00, 0x00, 0x42];
    let all_nodes = [0x33, 0x33, 0x00, 0x00, 0x00, 0x01];
    let outcome = |guest: &mut Guest, destination: [u8; 6]| {
        let outcome = guest.deliver(&ethernet_frame(destination, 0x0800, &pattern(64, destination[5])));
        guest.clean_rx();
        outcome
    };
    assert_eq!(outcome(&mut guest, MAC), RxOutcome::Delivered, "our MAC");
    assert_eq!(outcome(&mut guest, other), RxOutcome::Filtered, "another station");
    assert_eq!(outcome(&mut guest, BROADCAST), RxOutcome::Delivered, "broadcast (BAM)");
    assert_eq!(outcome(&mut guest, all_nodes), RxOutcome::Filtered, "multicast not joined");
    // Joined: the first 14 in receive addresses 1-14, the rest in the hash table.
    let groups: Vec<[u8; 6]> = (0..20u8).map(|n| [0x01, 0x00, 0x5e, 0x00, 0x00, n]).collect();
    let mut joined = groups.clone();
    joined.push(all_nodes);
    guest.set_rx_mode(false, false, &joined);
    assert_eq!(guest.er32(RA + 8 * 14 + 4) & RAH_AV, RAH_AV, "receive address 14 in use");
    assert_ne!((0..128).map(|i| guest.er32(MTA + 4 * i)).fold(0, |or, word| or | word), 0, "hash in use");
    for group in &joined {
        assert_eq!(outcome(&mut guest, *group), RxOutcome::Delivered, "{group:x?}");
    }
    assert_eq!(outcome(&mut guest, [0x01, 0x00, 0x5e, 0x7f, 0x00, 0x77]), RxOutcome::Filtered, "a group not joined");
    // All-multicast, then promiscuous.
    guest.set_rx_mode(false, true, &[]);
    assert_eq!(outcome(&mut guest, [0x01, 0x00, 0x5e, 0x7f, 0x00, 0x77]), RxOutcome::Delivered, "IFF_ALLMULTI");
    assert_eq!(outcome(&mut guest, other), RxOutcome::Filtered);
    guest.set_rx_mode(true, false, &[]);
    assert_eq!(guest.er32(RCTL) & (RCTL_UPE | RCTL_MPE), RCTL_UPE | RCTL_MPE);
    assert_eq!(outcome(&mut guest, other), RxOutcome::Delivered, "IFF_PROMISC");
    guest.set_rx_mode(false, false, &[]);
    assert_eq!(outcome(&mut guest, other), RxOutcome::Filtered, "back to normal");
    assert_eq!(outcome(&mut guest, all_nodes), RxOutcome::Filtered, "groups left");
    // Without BAM broadcasts are not taken.
    let rctl = guest.er32(RCTL);
    guest.ew32(RCTL, rctl & !RCTL_BAM);
    assert_eq!(outcome(&mut guest, BROADCAST), RxOutcome::Filtered);
    assert_eq!(guest.nic.stats().rx_filtered, 7);
}

#[test]
fn vlan_tags_are_inserted_on_transmit_and_stripped_on_receive() {
    let mut guest = Guest::new();
    guest.open_and_wait_for_link(16, 16);
    assert_eq!(guest.er32(VET), 0, "e1000_init_hw clears VET on an 82540");
    assert_eq!(guest.er32(CTRL) & CTRL_VME, CTRL_VME, "Linux turns on tag stripping and insertion");
    // Transmit with VLE: the tag goes in after the addresses.
    let frame = ethernet_frame(PEER_MAC, 0x0800, &pattern(100, 4));
    let addr = guest.tx_buffer(&frame);
    guest.queue_tx_descs(&[(addr, TXD_CMD_IFCS | TXD_CMD_VLE | TXD_CMD | frame.len() as u32, 0x2005 << 16)]);
    guest.ring_tx();
    let mut tagged = frame[..12].to_vec();
    tagged.extend_from_slice(&[0x81, 0x00, 0x20, 0x05]);
    tagged.extend_from_slice(&frame[12..]);
    assert_eq!(guest.wire_frames(), vec![tagged.clone()]);
    // Receive: stripped, the tag in the descriptor.
    let mut incoming = ethernet_frame(MAC, 0x8100, &[0x20, 0x25, 0x08, 0x00]);
    incoming.extend(pattern(100, 5));
    assert_eq!(guest.deliver(&incoming), RxOutcome::Delivered);
    let desc = guest.rx_desc(0);
    assert_eq!(desc.status & RXD_STAT_VP, RXD_STAT_VP);
    assert_eq!(desc.special, 0x2025, "priority 1, VLAN 37");
    let mut untagged = incoming[..12].to_vec();
    untagged.extend_from_slice(&incoming[16..]);
    assert_eq!(guest.clean_rx(), vec![untagged]);
    // With the VLAN filter on, only VLANs in VFTA pass.
    let rctl = guest.er32(RCTL);
    guest.ew32(RCTL, rctl | RCTL_VFE);
    assert_eq!(guest.deliver(&incoming), RxOutcome::Filtered);
    let vid = 37;
    guest.ew32(VFTA + 4 * (vid >> 5), 1 << (vid & 0x1f));
    assert_eq!(guest.deliver(&incoming), RxOutcome::Delivered);
}

#[test]
fn link_loss_is_signalled_and_frames_go_nowhere_until_it_returns() {
    let mut guest = Guest::new();
    guest.open_and_wait_for_link(16, 16);
    guest.advance_ns(1_000_000);
    guest.nic.set_link_up(false, guest.now_ns);
    assert!(guest.irq());
    let (icr, _) = guest.interrupt();
    assert_eq!(icr & ICR_LSC, ICR_LSC);
    assert!(!guest.watchdog());
    assert_eq!(guest.er32(STATUS) & STATUS_LU, 0);
    assert!(!guest.nic.can_receive());
    assert_eq!(guest.deliver(&ethernet_frame(MAC, 0x0800, &pattern(100, 1))), RxOutcome::Filtered);
    // A frame sent meanwhile is consumed but goes nowhere.
    guest.xmit(&[&ethernet_frame(PEER_MAC, 0x0800, &pattern(100, 2))]);
    assert_eq!(guest.wire_frames(), Vec::<Vec<u8>>::new());
    assert_eq!(guest.tx_desc_upper(0) & TXD_STAT_DD, TXD_STAT_DD);
    assert_eq!(guest.nic.stats().tx_dropped, 1);
    // Back: negotiation again, then LSC and link.
    guest.advance_ns(1_000_000);
    guest.nic.set_link_up(true, guest.now_ns);
    assert_eq!(guest.er32(STATUS) & STATUS_LU, 0, "negotiating");
    guest.advance_ns(500_000_000);
    assert!(guest.irq());
    let (icr, _) = guest.interrupt();
    assert_eq!(icr & ICR_LSC, ICR_LSC);
    assert!(guest.watchdog());
    assert_eq!(guest.deliver(&ethernet_frame(MAC, 0x0800, &pattern(100, 3))), RxOutcome::Delivered);
}

#[test]
fn mac_reset_through_the_io_window_restores_power_on_registers() {
    let mut guest = Guest::new();
    guest.open_and_wait_for_link(16, 16);
    guest.ew32(ICS, ICR_RXT0);
    guest.ew32(RA, 0x1234_5678);
    guest.ew32(MTA + 8, 0xffff_ffff);
    assert!(guest.irq());
    let ctrl = guest.er32(CTRL);
    guest.io_ew32(CTRL, ctrl | CTRL_RST);
    assert!(!guest.irq(), "causes and mask cleared");
    assert_eq!(guest.er32(CTRL), 0x0014_0240, "RST clears itself, CTRL back to its power-on value");
    for reg in [ICR, IMS, RCTL, TCTL, RDLEN, RDBAL, TDLEN, TDBAL, MTA + 8] {
        assert_eq!(guest.er32(reg), 0, "register {reg:#x}");
    }
    assert_eq!(guest.er32(RA), 0x5e3e_1600, "receive address 0 back on the MAC");
    assert_eq!(guest.er32(VET), 0x8100);
    assert_eq!(guest.er32(STATUS) & STATUS_LU, STATUS_LU, "the link stays up (the PHY is not reset)");
    assert_eq!(guest.read_phy(MII_BMSR as u32).unwrap() & BMSR_AN_COMP, BMSR_AN_COMP);
}

#[test]
fn machine_reset_returns_to_power_on_and_keeps_the_mac() {
    let mut guest = Guest::new();
    guest.open_and_wait_for_link(16, 16);
    guest.xmit(&[&ethernet_frame(PEER_MAC, 0x0800, &pattern(100, 2))]);
    guest.deliver(&ethernet_frame(MAC, 0x0800, &pattern(100, 1)));
    guest.nic.reset();
    assert_eq!(guest.nic.take_tx_frame(), None, "queued frames dropped");
    assert_eq!(guest.nic.config_read(0x10, 4), 0, "BAR 0 unassigned");
    assert_eq!(guest.nic.config_read(0x04, 2), 0, "COMMAND 0");
    assert!(!guest.irq());
    assert_eq!(guest.nic.next_deadline_ns(), None);
    let mut guest = Guest::with_nic(guest.nic);
    assert_eq!(guest.er32(RCTL), 0);
    assert_eq!(guest.er32(STATUS), 0x8008_0783);
    assert_eq!(guest.read_phy(MII_BMCR as u32), Ok(BMCR_SPEED1000 | BMCR_FD | BMCR_AUTOEN));
    let (mac, _) = guest.probe();
    assert_eq!(mac, MAC);
    assert_eq!(guest.nic.stats().rx_frames, 1, "counters survive");
    // A card whose link is down comes out of reset with the link down.
    guest.nic.set_link_up(false, guest.now_ns);
    guest.nic.reset();
    assert_eq!(Guest::with_nic(guest.nic).er32(STATUS) & STATUS_LU, 0);
}

#[test]
fn transmit_pauses_while_the_glue_is_full_and_resumes() {
    let mut guest = Guest::new();
    guest.open_and_wait_for_link(128, 8);
    let frames: Vec<Vec<u8>> =
        (0..70u8).map(|n| ethernet_frame(PEER_MAC, 0x0800, &pattern(60 + usize::from(n), n))).collect();
    for frame in &frames {
        let addr = guest.tx_buffer(frame);
        guest.queue_tx_descs(&[(addr, TXD_CMD_IFCS | TXD_CMD | frame.len() as u32, 0)]);
    }
    guest.ring_tx();
    assert_eq!(guest.er32(TDH), MAX_QUEUED_TX_FRAMES as u32, "stopped at the first packet without room");
    assert_eq!(guest.er32(STATUS) & STATUS_TXOFF, STATUS_TXOFF, "paused");
    let first = guest.wire_frames();
    assert_eq!(first.len(), MAX_QUEUED_TX_FRAMES);
    assert_eq!(guest.er32(STATUS) & STATUS_TXOFF, 0, "the next register access resumed it");
    assert_eq!(guest.er32(TDH), 70);
    let rest = guest.wire_frames();
    assert_eq!([first, rest].concat(), frames, "nothing lost, nothing reordered");
    assert_eq!(guest.nic.stats().tx_dropped, 0);
    // The glue may also resume it itself.
    for frame in frames.iter().take(65) {
        let addr = guest.tx_buffer(frame);
        guest.queue_tx_descs(&[(addr, TXD_CMD_IFCS | TXD_CMD | frame.len() as u32, 0)]);
    }
    guest.ring_tx();
    assert_eq!(guest.wire_frames().len(), MAX_QUEUED_TX_FRAMES);
    guest.nic.resume_transmit(&guest.ram, guest.now_ns);
    assert_eq!(guest.wire_frames().len(), 1);
}

#[test]
fn bus_mastering_off_means_no_dma() {
    let mut guest = Guest::new();
    guest.open_and_wait_for_link(16, 16);
    guest.nic.config_write(0x04, 2, u32::from(pci::COMMAND_IO | pci::COMMAND_MEMORY));
    assert!(!guest.nic.can_receive());
    assert_eq!(guest.deliver(&ethernet_frame(MAC, 0x0800, &pattern(100, 1))), RxOutcome::DmaError);
    assert_eq!(guest.rx_desc(0).status, 0, "nothing written");
    let frame = ethernet_frame(PEER_MAC, 0x0800, &pattern(100, 2));
    guest.xmit(&[&frame]);
    assert_eq!(guest.er32(TDH), 0, "the ring is not read");
    assert_eq!(guest.nic.take_tx_frame(), None);
    guest.nic.config_write(0x04, 2, u32::from(pci::COMMAND_IO | pci::COMMAND_MEMORY | pci::COMMAND_MASTER));
    guest.ring_tx();
    assert_eq!(guest.wire_frames(), vec![frame]);
}
