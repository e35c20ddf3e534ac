//! Register by register: config space, reset values, the EEPROM's serial protocol, the
//! configuration lock, interrupts, access widths, TCR/RCR masks, the timer, loopback.

use super::harness::*;
use crate::nic::{Nic, RxOutcome};

#[test]
fn config_space_is_an_rtl8139_rev_0x10_with_two_256_byte_bars_and_inta() {
    let mut nic = super::super::Rtl8139::new(MAC);
    assert_eq!(nic.config_read(0x00, 2), 0x10ec);
    assert_eq!(nic.config_read(0x02, 2), 0x8139);
    assert_eq!(nic.config_read(0x08, 4), 0x0200_0010, "Ethernet controller, revision 0x10");
    assert_eq!(nic.config_read(0x0e, 1), 0x00, "single function");
    assert_eq!(nic.config_read(0x2c, 4), 0x1100_1af4, "QEMU's subsystem ids");
    assert_eq!(nic.config_read(0x3d, 1), 1, "INTA");
    assert_eq!(nic.config_read(0x04, 2), 0, "decoding off at power-on");
    nic.config_write(0x10, 4, !0);
    assert_eq!(nic.config_read(0x10, 4), 0xffff_ff01, "256 I/O ports");
    nic.config_write(0x14, 4, !0);
    assert_eq!(nic.config_read(0x14, 4), 0xffff_ff00, "256 bytes of non-prefetchable memory");
    nic.config_write(0x18, 4, !0);
    assert_eq!(nic.config_read(0x18, 4), 0, "no BAR2");
}

#[test]
fn registers_at_reset() {
    let mut bed = Bed::new();
    let expected: [(u64, u8, u32); 30] = [
        (MAC0, 4, u32::from_le_bytes([MAC[0], MAC[1], MAC[2], MAC[3]])),
        (MAC0 + 4, 4, u32::from(u16::from_le_bytes([MAC[4], MAC[5]]))),
        (MAR0, 4, 0),
        (MAR0 + 4, 4, 0),
        (TX_STATUS0, 4, TX_HOST_OWNS),
        (TX_STATUS0 + 12, 4, TX_HOST_OWNS),
        (TX_ADDR0, 4, 0),
        (RX_BUF, 4, 0),
        (CHIP_CMD, 1, u32::from(RX_BUF_EMPTY)),
        (RX_BUF_PTR, 2, 0xfff0),
        (RX_BUF_ADDR, 2, 0),
        (INTR_MASK, 2, 0),
        (INTR_STATUS, 2, 0),
        (TX_CONFIG, 4, 0x7400_0000),
        (RX_CONFIG, 4, 0),
        (RX_MISSED, 4, 0),
        (CFG9346, 1, 0),
        (CONFIG0, 1, 0),
        (CONFIG1, 1, 0x0c),
        (TIMER_INT, 4, 0),
        (MEDIA_STATUS, 1, 0xd0),
        (CONFIG3, 1, 0x01),
        (CONFIG4, 1, 0),
        (0x5e, 1, 0x10),
        (TX_SUMMARY, 2, 0x000f),
        (BASIC_MODE_CTRL, 2, 0x1000),
        (BASIC_MODE_STATUS, 2, 0x782d),
        (NWAY_ADVERT, 2, 0x05e1),
        (NWAY_LPAR, 2, 0x05e1),
        (CSCR, 2, 0x0740),
    ];
    for (reg, size, value) in expected {
        let read = match size {
            1 => u32::from(bed.r8(reg)),
            2 => u32::from(bed.r16(reg)),
            _ => bed.r32(reg),
        };
        assert_eq!(read, value, "register {reg:#04x}");
    }
    assert_eq!(bed.r16(NWAY_EXPANSION), 0x0001);
    assert_eq!(bed.r8(CONFIG5), 0);
}

#[test]
fn the_phy_reads_as_8139too_maps_it() {
    let mut bed = Bed::new();
    let read: [u16; 8] = core::array::from_fn(|location| Linux::mdio_read(&mut bed, location));
    assert_eq!(read, [0x1000, 0x782d, 0, 0, 0x05e1, 0x05e1, 0x0001, 0]);
}

#[test]
fn eeprom_words_read_as_8139too_reads_them() {
    let mut bed = Bed::new();
    assert_eq!(read_eeprom(&mut bed, 0, 6), 0x8129);
    assert_eq!(read_eeprom(&mut bed, 1, 6), 0x10ec);
    assert_eq!(read_eeprom(&mut bed, 2, 6), 0x8139);
    for i in 0..3 {
        let word = read_eeprom(&mut bed, 7 + i, 6);
        assert_eq!(word.to_le_bytes(), [MAC[2 * i as usize], MAC[2 * i as usize + 1]]);
    }
    assert_eq!(read_eeprom(&mut bed, 63, 6), 0);
    // The 93C56 probe: the answer starts two clocks early, so it is not 0x8129.
    assert_eq!(read_eeprom(&mut bed, 0, 8), 0x04a7);
    // Reading does not disturb the registers.
    assert_eq!(bed.r8(CFG9346), 0);
    assert_eq!(bed.r32(MAC0), u32::from_le_bytes([MAC[0], MAC[1], MAC[2], MAC[3]]));
}

/// Clocks one bit into the EEPROM (programming mode, chip selected).
fn clock_in(bed: &mut Bed, bit: bool) {
    let data = if bit { 0x02 } else { 0 };
    bed.w8(CFG9346, 0x88 | data);
    bed.w8(CFG9346, 0x88 | data | 0x04);
}

#[test]
fn eeprom_data_out_only_in_programming_mode_and_writes_are_ignored() {
    let mut bed = Bed::new();
    // Select, start bit, READ word 0: after the command DO is the dummy 0, then the
    // first clock gives D15 (0x8129 has it set).
    bed.w8(CFG9346, 0x80);
    bed.w8(CFG9346, 0x88);
    for bit in [true, true, false, false, false, false, false, false, false] {
        clock_in(&mut bed, bit);
    }
    assert_eq!(bed.r8(CFG9346) & 0x01, 0, "dummy zero");
    clock_in(&mut bed, false);
    assert_eq!(bed.r8(CFG9346), 0x8c | 0x01, "D15 on EEDO, the written pins read back");
    // Normal mode: no EEDO, and the EEPROM is deselected.
    bed.w8(CFG9346, 0x00);
    assert_eq!(bed.r8(CFG9346), 0x00);
    bed.w8(CFG9346, 0x80);
    assert_eq!(bed.r8(CFG9346), 0x80, "deselected: EEDO low");

    // EWEN (00 11xxxx), then WRITE word 7 (01 000111) with 0xffff.
    bed.w8(CFG9346, 0x88);
    for bit in [true, false, false, true, true, false, false, false, false] {
        clock_in(&mut bed, bit);
    }
    bed.w8(CFG9346, 0x80);
    bed.w8(CFG9346, 0x88);
    for bit in [true, false, true, false, false, false, true, true, true] {
        clock_in(&mut bed, bit);
    }
    for _ in 0..16 {
        clock_in(&mut bed, true);
    }
    bed.w8(CFG9346, 0x00);
    assert_eq!(read_eeprom(&mut bed, 7, 6).to_le_bytes(), [MAC[0], MAC[1]], "the EEPROM is read-only");
    // EEDO is read-only in the register too.
    bed.w8(CFG9346, 0x01);
    assert_eq!(bed.r8(CFG9346), 0x00);
}

#[test]
fn eeprom_autoload_reloads_the_mac_and_resets() {
    let mut bed = Bed::new();
    bed.w32(MAC0, 0x0403_0201);
    bed.w16(INTR_MASK, 0xffff);
    bed.w8(CFG9346, 0x40);
    assert_eq!(bed.r8(CFG9346), 0x00, "back to normal mode");
    assert_eq!(bed.r32(MAC0), u32::from_le_bytes([MAC[0], MAC[1], MAC[2], MAC[3]]));
    assert_eq!(bed.r16(INTR_MASK), 0);
}

#[test]
fn config_registers_are_locked_unless_9346cr_unlocks_them() {
    let mut bed = Bed::new();
    bed.w8(CONFIG3, 0x20);
    bed.w8(CONFIG0, 0x07);
    bed.w8(CONFIG4, 0x04);
    bed.w16(BASIC_MODE_CTRL, 0x2100);
    assert_eq!((bed.r8(CONFIG3), bed.r8(CONFIG0), bed.r8(CONFIG4)), (0x01, 0x00, 0x00), "locked");
    assert_eq!(bed.r16(BASIC_MODE_CTRL), 0x1000);
    bed.w8(CFG9346, CFG9346_UNLOCK);
    bed.w8(CONFIG3, 0xff);
    bed.w8(CONFIG1, 0x00);
    bed.w8(CONFIG4, 0x04);
    bed.w16(BASIC_MODE_CTRL, 0x2100);
    assert_eq!(bed.r8(CONFIG3), 0x71, "LinkUp, Magic, PARM_En writable");
    assert_eq!(bed.r8(CONFIG1), 0x0c, "PIO and MMIO are read-only");
    assert_eq!(bed.r8(CONFIG4), 0x04);
    assert_eq!(bed.r16(BASIC_MODE_CTRL), 0x2100, "forced 100 full, as mdio_write with media=");
    bed.w16(BASIC_MODE_CTRL, 0x8000);
    assert_eq!(bed.r16(BASIC_MODE_CTRL), 0x1000, "PHY reset, self-clearing");
    bed.w8(CFG9346, CFG9346_LOCK);
    bed.w8(CONFIG5, 0xff);
    assert_eq!(bed.r8(CONFIG5), 0x7f, "CONFIG5 needs no unlocking");
}

#[test]
fn isr_is_write_one_to_clear_and_inta_follows_isr_and_imr() {
    let (mut bed, mut linux) = opened();
    bed.w16(INTR_MASK, 0);
    bed.deliver(&frame_to(MAC, 64, 0));
    assert!(linux.start_xmit(&mut bed, &frame_to(MAC, 64, 0)));
    assert_eq!(bed.r16(INTR_STATUS), RX_OK | TX_OK);
    assert!(!bed.nic.irq_level(), "masked");
    assert_eq!(bed.nic.config_read(0x06, 2) & 0x08, 0x00, "PCI status: no interrupt pending");
    bed.w16(INTR_MASK, TX_OK);
    assert!(bed.nic.irq_level());
    assert_eq!(bed.nic.config_read(0x06, 2) & 0x08, 0x08, "PCI status: interrupt pending");
    // INTx disable in COMMAND holds the line low.
    bed.nic.config_write(0x04, 2, 0x0407);
    assert!(!bed.nic.irq_level());
    bed.nic.config_write(0x04, 2, 0x0007);
    assert!(bed.nic.irq_level());
    bed.w16(INTR_STATUS, RX_OK);
    assert_eq!(bed.r16(INTR_STATUS), TX_OK, "only the bit written as 1 cleared");
    assert!(bed.nic.irq_level());
    bed.w8(INTR_STATUS, 0x04);
    assert_eq!(bed.r16(INTR_STATUS), 0);
    assert!(!bed.nic.irq_level());
    bed.w16(INTR_MASK, 0xffff);
    assert_eq!(bed.r16(INTR_MASK), 0xe07f, "reserved bits stay 0");
}

#[test]
fn accesses_of_any_width_and_alignment() {
    let mut bed = Bed::new();
    bed.w16(INTR_MASK, 0x0005);
    bed.w32(TX_CONFIG - 2, 0xffff_0000); // ISR and TCR's low half: TCR ignored (TE off)
    assert_eq!(bed.r32(INTR_MASK), 0x0000_0005, "IMR and ISR in one dword");
    assert_eq!(bed.r32(INTR_STATUS), 0, "ISR and TCR's low half");
    assert_eq!(bed.r16(TX_CONFIG + 2), 0x7400, "TCR's high half");
    bed.w8(RX_BUF + 1, 0x12);
    bed.w8(RX_BUF + 3, 0x34);
    assert_eq!(bed.r32(RX_BUF), 0x3400_1200, "byte writes keep the other bytes");
    assert_eq!(bed.r8(RX_BUF + 3), 0x34);
    assert_eq!(bed.r16(0xfe), 0, "nothing at 0xfe");
    assert_eq!(bed.nic.read(1, 0xff, 4, &bed.ram, 0), 0xffff_ff00, "past the 256 bytes: all ones");
    assert_eq!(bed.nic.read(2, 0, 4, &bed.ram, 0), 0xffff_ffff, "no BAR2");
    assert_eq!(bed.nic.read(0, 0, 3, &bed.ram, 0), 0xffff_ffff, "bad size");
    bed.nic.write(0, 0xfe, 4, 0xffff_ffff, &bed.ram, 0);
    bed.nic.write(0, u64::MAX, 4, 0xffff_ffff, &bed.ram, 0);
    assert_eq!(bed.nic.read(0, u64::MAX - 1, 2, &bed.ram, 0), 0xffff);
    // The same registers through either BAR.
    bed.bar = super::super::BAR_IO;
    assert_eq!(bed.r32(RX_BUF), 0x3400_1200);
}

#[test]
fn tcr_takes_writes_only_with_the_transmitter_on_and_keeps_its_version() {
    let mut bed = Bed::new();
    bed.w32(TX_CONFIG, TX_CONFIG_BASE);
    assert_eq!(bed.r32(TX_CONFIG), 0x7400_0000, "TE off: ignored");
    bed.w8(CHIP_CMD, CMD_TX_ENB);
    bed.w32(TX_CONFIG, 0xffff_ffff);
    assert_eq!(bed.r32(TX_CONFIG), 0x7400_0000 | 0x0307_07f0);
    // 8139too's abort handling writes TxClearAbt alone.
    bed.w32(TX_CONFIG, 1);
    assert_eq!(bed.r32(TX_CONFIG), 0x7400_0000);
}

#[test]
fn rcr_ring_sizes_and_reserved_bits() {
    let mut bed = Bed::new();
    bed.w32(RX_CONFIG, 0xffff_ffff);
    assert_eq!(bed.r32(RX_CONFIG), 0x0f03_ffbf);
    for (rblen, ring_len) in [(0u32, 8192u64), (1, 16384), (2, 32768), (3, 65536)] {
        let (mut bed, _linux) = opened();
        bed.w32(RX_CONFIG, (rblen << 11) | ACCEPT_MY_PHYS);
        // Fill the ring to just below full: every packet is 1524 bytes.
        let fits = (ring_len - 1) / 1524;
        for i in 0..fits {
            assert_eq!(bed.deliver(&frame_to(MAC, 1514, i as u8)), RxOutcome::Delivered, "{ring_len}: {i}");
        }
        assert_eq!(bed.deliver(&frame_to(MAC, 1514, 0)), RxOutcome::NoBuffer, "{ring_len}");
        assert_eq!(u64::from(bed.r16(RX_BUF_ADDR)), fits * 1524 % ring_len);
    }
}

#[test]
fn without_wrap_a_packet_continues_at_the_ring_start() {
    let (mut bed, _linux) = opened();
    bed.w32(RX_CONFIG, ACCEPT_MY_PHYS); // 8 KiB, WRAP clear
    let first = frame_to(MAC, 1514, 1);
    for _ in 0..5 {
        bed.deliver(&first);
    }
    bed.w16(RX_BUF_PTR, (5 * 1524 - 16) as u16); // all read
    let start = 5 * 1524u64;
    let frame = frame_to(MAC, 1000, 2);
    assert_eq!(bed.deliver(&frame), RxOutcome::Delivered);
    let to_end = 8192 - start as usize;
    let mut written = bed.ram.peek(RX_RING_GPA + start, to_end);
    written.extend(bed.ram.peek(RX_RING_GPA, 4 + 1000 + 4 - to_end));
    assert_eq!(&written[4..1004], &frame[..]);
    assert_eq!(u32::from_le_bytes(written[..4].try_into().unwrap()) >> 16, 1004);
    assert_eq!(u64::from(bed.r16(RX_BUF_ADDR)), (start + 1008) % 8192);
    assert_eq!(bed.ram.peek(RX_RING_GPA + 8192, 4), [0; 4], "nothing past the end");
}

#[test]
fn the_64k_ring_always_wraps() {
    let (mut bed, _linux) = opened();
    bed.w32(RX_CONFIG, (3 << 11) | RX_NO_WRAP | ACCEPT_MY_PHYS);
    for i in 0..43 {
        bed.deliver(&frame_to(MAC, 1514, i));
    }
    let start = 43 * 1524u64;
    bed.w16(RX_BUF_PTR, (start - 16) as u16);
    let frame = frame_to(MAC, 1514, 0x55);
    assert_eq!(bed.deliver(&frame), RxOutcome::Delivered);
    let to_end = 65536 - start as usize;
    let mut written = bed.ram.peek(RX_RING_GPA + start, to_end);
    written.extend(bed.ram.peek(RX_RING_GPA, 1522 - to_end));
    assert_eq!(&written[4..1518], &frame[..]);
}

#[test]
fn tctr_counts_the_pci_clock_and_timerint_raises_timeout() {
    let (mut bed, _linux) = opened();
    bed.w32(TIMER, 0);
    bed.now_ns += 1_000_000; // 1 ms: 33000 ticks
    assert_eq!(bed.r32(TIMER), 33_000);
    assert_eq!(bed.nic.next_deadline_ns(), None, "TimerInt 0: no timer");
    bed.w32(TIMER_INT, 66_000);
    assert_eq!(bed.nic.next_deadline_ns(), Some(bed.now_ns + 1_000_000));
    bed.nic.tick(bed.now_ns + 999_999);
    assert_eq!(bed.r16(INTR_STATUS) & PCS_TIMEOUT, 0);
    bed.nic.tick(bed.now_ns + 1_000_000);
    assert_eq!(bed.r16(INTR_STATUS) & PCS_TIMEOUT, PCS_TIMEOUT);
    assert!(bed.nic.irq_level(), "8139too unmasks TimeOut");
    bed.w16(INTR_STATUS, PCS_TIMEOUT);
    // The next match is a full 2^32 ticks later (about 130 s).
    let next = bed.nic.next_deadline_ns().unwrap();
    assert_eq!(next - (bed.now_ns + 1_000_000), ((1u128 << 32) * 1_000_000_000).div_ceil(33_000_000) as u64);
    // Writing TCTR starts it again from 0.
    bed.now_ns += 5_000_000;
    bed.w32(TIMER, 0x1234);
    assert_eq!(bed.r32(TIMER), 0);
    assert_eq!(bed.nic.next_deadline_ns(), Some(bed.now_ns + 2_000_000));
    // A read notices a match the glue did not tick for.
    bed.now_ns += 3_000_000;
    assert_eq!(bed.r16(INTR_STATUS) & PCS_TIMEOUT, PCS_TIMEOUT);
    bed.w32(TIMER_INT, 0);
    assert_eq!(bed.nic.next_deadline_ns(), None);
}

#[test]
fn loopback_sends_transmitted_frames_to_the_receiver() {
    let (mut bed, mut linux) = opened();
    bed.w32(TX_CONFIG, TX_CONFIG_BASE | 0x0006_0000);
    let frame = frame_to(MAC, 200, 3);
    assert!(linux.start_xmit(&mut bed, &frame));
    linux.service(&mut bed);
    assert!(bed.take_frames().is_empty(), "nothing on the wire");
    assert_eq!(linux.received, [frame]);
    assert_eq!(linux.stats.tx_packets, 1);
}

#[test]
fn rx_missed_counts_and_clears_on_write() {
    let (mut bed, _linux) = opened();
    bed.w32(RX_CONFIG, ACCEPT_MY_PHYS); // 8 KiB ring
    let mut dropped = 0;
    for i in 0..20 {
        if bed.deliver(&frame_to(MAC, 1514, i)) == RxOutcome::NoBuffer {
            dropped += 1;
        }
    }
    assert_eq!(dropped, 15, "5 fit in 8 KiB");
    assert_eq!(bed.r32(RX_MISSED), 15);
    bed.w32(RX_MISSED, 0x1234);
    assert_eq!(bed.r32(RX_MISSED), 0);
}

#[test]
fn the_ring_never_fills_to_the_last_byte() {
    let (mut bed, _linux) = opened();
    bed.w32(RX_CONFIG, ACCEPT_MY_PHYS); // 8 KiB
    for i in 0..5 {
        assert_eq!(bed.deliver(&frame_to(MAC, 1514, i)), RxOutcome::Delivered);
    }
    // 572 bytes are left: a 564-byte frame would take all of them, and CBR would meet
    // the read offset, which reads as an empty ring.
    assert_eq!(bed.deliver(&frame_to(MAC, 564, 5)), RxOutcome::NoBuffer);
    assert_eq!(bed.deliver(&frame_to(MAC, 560, 5)), RxOutcome::Delivered);
    assert_eq!(bed.r8(CHIP_CMD) & RX_BUF_EMPTY, 0, "not empty");
    assert_eq!(bed.r16(RX_BUF_ADDR), 8192 - 4);
}

#[test]
fn our_own_address_needs_apm() {
    let (mut bed, _linux) = opened();
    bed.w32(RX_CONFIG, RX_CONFIG_BASE | ACCEPT_BROADCAST);
    assert_eq!(bed.deliver(&frame_to(MAC, 64, 0)), RxOutcome::Filtered);
    assert_eq!(bed.deliver(&frame_to([0xff; 6], 64, 0)), RxOutcome::Delivered);
    bed.w32(RX_CONFIG, RX_CONFIG_BASE | ACCEPT_MY_PHYS);
    assert_eq!(bed.deliver(&frame_to(MAC, 64, 0)), RxOutcome::Delivered);
    assert_eq!(bed.deliver(&frame_to([0xff; 6], 64, 0)), RxOutcome::Filtered);
}

#[test]
fn slots_handed_over_while_the_transmitter_is_off_go_when_it_comes_on() {
    let (mut bed, _linux) = opened();
    bed.w8(CHIP_CMD, CMD_RX_ENB);
    bed.ram.poke(TX_BUFS_GPA, &frame_to(MAC, 64, 1));
    bed.ram.poke(TX_BUFS_GPA + TX_BUF_SIZE, &frame_to(MAC, 64, 2));
    bed.w32(TX_STATUS0, 64);
    bed.w32(TX_STATUS0 + 4, 64);
    assert_eq!(bed.r32(TX_STATUS0), 64, "still the card's: OWN clear, no TOK");
    assert!(bed.take_frames().is_empty());
    bed.w8(CHIP_CMD, CMD_RX_ENB | CMD_TX_ENB);
    assert_eq!(bed.take_frames(), [frame_to(MAC, 64, 1), frame_to(MAC, 64, 2)]);
    assert_eq!(bed.r16(TX_SUMMARY) & 0x3003, 0x3003, "TOK and OWN for slots 0 and 1");
}
