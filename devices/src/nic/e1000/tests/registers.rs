//! Registers one by one: PCI identity and BARs, power-on values, EEPROM and PHY access,
//! interrupt cause and mask, moderation, statistics, the I/O window, odd accesses.

use alloc::vec;

use super::super::regs::*;
use super::harness::*;
use crate::nic::{Nic, RxOutcome};
use crate::pci;

#[test]
fn pci_function_is_an_82540em_as_qemu_presents_it() {
    let nic = super::super::E1000::new(MAC);
    assert_eq!(nic.config_read(0x00, 4), 0x100e_8086, "vendor and device");
    assert_eq!(nic.config_read(0x08, 4), 0x0200_0003, "class 02:00, revision 3");
    assert_eq!(nic.config_read(0x2c, 4), 0x1100_1af4, "QEMU's subsystem ids");
    assert_eq!(nic.config_read(0x3d, 1), 1, "INTA");
    assert_eq!(nic.config_read(0x0c, 1), 0x10, "cache line size as QEMU sets it");
    assert_eq!(nic.config_read(0x04, 4), 0, "COMMAND and STATUS 0");
    let mut nic = nic;
    nic.config_write(0x10, 4, 0xffff_ffff);
    nic.config_write(0x14, 4, 0xffff_ffff);
    nic.config_write(0x18, 4, 0xffff_ffff);
    assert_eq!(nic.config_read(0x10, 4), 0xfffe_0000, "BAR 0: 128 KiB of memory");
    assert_eq!(nic.config_read(0x14, 4), 0xffff_ffc1, "BAR 1: 64 I/O ports");
    assert_eq!(nic.config_read(0x18, 4), 0, "no BAR 2");
    nic.config_write(0x10, 4, MMIO_BASE);
    nic.config_write(0x14, 4, IO_BASE);
    nic.config_write(0x04, 2, u32::from(pci::COMMAND_IO | pci::COMMAND_MEMORY));
    assert_eq!(
        nic.config().bar_region(0),
        Some((pci::BarKind::Memory32 { prefetchable: false }, 0xf000_0000, 0x2_0000))
    );
    assert_eq!(nic.config().bar_region(1), Some((pci::BarKind::Io, 0xc000, 0x40)));
}

#[test]
fn power_on_values_are_qemus() {
    let mut guest = Guest::new();
    assert_eq!(guest.er32(CTRL), 0x0014_0240, "CTRL: SWDPIN0/2, 1000 Mb/s, set link up");
    assert_eq!(guest.er32(STATUS), 0x8008_0783, "STATUS: link up, 1000 Mb/s full duplex");
    assert_eq!(guest.er32(EECD), EECD_PRES | EECD_GNT | EECD_DO, "EECD: present, granted, DO idle high");
    assert_eq!(guest.er32(MANC), 0x0022_2300);
    assert_eq!(guest.er32(PBA), 0x0010_0030);
    assert_eq!(guest.er32(LEDCTL), 0x602);
    assert_eq!(guest.er32(VET), 0x8100);
    assert_eq!(guest.er32(RA), 0x5e3e_1600, "receive address 0 low: the MAC's first four bytes");
    assert_eq!(guest.er32(RA + 4), 0x8000_016c, "receive address 0 high: the last two, valid");
    assert_eq!(guest.er32(RA + 8), 0);
    for reg in [ICR, IMS, RCTL, TCTL, RDLEN, RDH, RDT, TDLEN, TDH, TDT, ITR, MDIC, EERD] {
        assert_eq!(guest.er32(reg), 0, "register {reg:#x}");
    }
    for reg in [CTRL_EXT, TIPG, TIDV, RXCSUM, 0x1_fffc] {
        guest.ew32(reg, 0x1234_5678);
        assert_eq!(guest.er32(reg), 0, "register {reg:#x} is not implemented (QEMU reads 0)");
    }
    guest.ew32(STATUS, 0);
    assert_eq!(guest.er32(STATUS), 0x8008_0783, "STATUS is read-only");
    guest.ew32(MANC, 0);
    assert_eq!(guest.er32(MANC), 0x0022_2300, "MANC is read-only, as in QEMU");
    guest.ew32(RDLEN, 0xffff_ffff);
    assert_eq!(guest.er32(RDLEN), 0xf_ff80, "RDLEN: 128-byte multiples");
    guest.ew32(TDT, 0xffff_ffff);
    assert_eq!(guest.er32(TDT), 0xffff, "TDT: 16 bits");
    guest.ew32(TDFH, 0xffff_ffff);
    assert_eq!(guest.er32(TDFH), 0x7ff, "TDFH: 11 bits");
    guest.ew32(IP4AT + 24, 0xdead_beef);
    assert_eq!(guest.er32(IP4AT + 24), 0xdead_beef, "the last IPv4 address table entry");
    assert_eq!(guest.er32(IP4AT + 28), 0, "past the table");
}

#[test]
fn eeprom_bit_banged_as_linux_does_holds_the_mac_and_sums_to_0xbaba() {
    let mut guest = Guest::new();
    let words = guest.read_eeprom(0, 64);
    assert_eq!(&words[..3], &[0x1600, 0x5e3e, 0x016c], "MAC in words 0-2, little endian");
    assert_eq!(words[11], 0x100e, "device id");
    assert_eq!(words[13], 0x100e, "device id");
    assert_eq!(words[12], 0x8086, "vendor id");
    assert_eq!(words[10], 0x6403, "template word 10");
    assert_eq!(words.iter().fold(0u16, |sum, &word| sum.wrapping_add(word)), 0xbaba);
    // One word at a time from the middle.
    assert_eq!(guest.read_eeprom(12, 2), vec![0x8086, 0x100e]);
    assert_eq!(guest.er32(EECD) & EECD_DO, EECD_DO, "DO idles high once deselected");
}

#[test]
fn eeprom_words_through_eerd() {
    let mut guest = Guest::new();
    guest.ew32(EERD, (1 << EERD_ADDR_SHIFT) | EERD_START);
    let eerd = guest.er32(EERD);
    assert_eq!(eerd & EERD_DONE, EERD_DONE);
    assert_eq!(eerd >> EERD_DATA_SHIFT, 0x5e3e);
    guest.ew32(EERD, 0x40 << EERD_ADDR_SHIFT | EERD_START);
    assert_eq!(guest.er32(EERD), EERD_DONE | 0x40 << EERD_ADDR_SHIFT, "past the EEPROM: done, no data");
    guest.ew32(EERD, 3 << EERD_ADDR_SHIFT);
    assert_eq!(guest.er32(EERD), 3 << EERD_ADDR_SHIFT, "without START nothing happens");
}

#[test]
fn phy_through_mdic_as_e1000_hw_reads_it() {
    let mut guest = Guest::new();
    assert_eq!(guest.read_phy(MII_PHYID1 as u32), Ok(0x0141));
    assert_eq!(guest.read_phy(MII_PHYID2 as u32), Ok(0x0c20), "M88E1011_I_PHY_ID with its revision");
    let bmsr = guest.read_phy(MII_BMSR as u32).unwrap();
    assert_eq!(bmsr & BMSR_LINK_ST, BMSR_LINK_ST, "link up");
    assert_eq!(bmsr & BMSR_AN_COMP, 0, "autonegotiation not yet complete at power-on");
    assert_eq!(guest.read_phy(MII_BMCR as u32), Ok(BMCR_SPEED1000 | BMCR_FD | BMCR_AUTOEN));
    assert_eq!(guest.read_phy(MII_STAT1000 as u32), Ok(0x3c00), "1000BASE-T status: full and half, receivers OK");
    assert_eq!(guest.read_phy(M88_PHY_SPEC_STATUS as u32), Ok(0xac00));
    // Absent registers, read-only ones and other PHY addresses answer with the error bit.
    assert!(guest.read_phy(7).is_err(), "next page register absent");
    assert!(guest.write_phy(MII_BMSR as u32, 0).is_err(), "BMSR is read-only");
    assert!(guest.read_phy_at(2, MII_PHYID1 as u32).is_err(), "no PHY at address 2");
    guest.write_phy(MII_ANAR as u32, 0x0de1).unwrap();
    assert_eq!(guest.read_phy(MII_ANAR as u32), Ok(0x0de1));
    // BMCR: reset and restart clear themselves, bits 5:0 are reserved.
    guest.write_phy(MII_BMCR as u32, BMCR_RESET | BMCR_AUTOEN | 0x3f).unwrap();
    assert_eq!(guest.read_phy(MII_BMCR as u32), Ok(BMCR_AUTOEN));
    // MDIC with its interrupt enable raises MDAC.
    guest.ew32(IMS, ICR_MDAC);
    guest.ew32(MDIC, (MII_BMSR as u32) << MDIC_REG_SHIFT | PHY_ADDRESS << MDIC_PHY_SHIFT | MDIC_OP_READ | MDIC_INT_EN);
    assert!(guest.irq());
    assert_eq!(guest.er32(ICR), ICR_MDAC);
}

#[test]
fn icr_reads_clear_and_inta_follows_ims() {
    let mut guest = Guest::new();
    guest.ew32(ICS, ICR_RXT0 | ICR_TXDW);
    assert!(!guest.irq(), "masked");
    assert_eq!(guest.er32(ICS), ICR_RXT0 | ICR_TXDW, "ICS reads as ICR without clearing");
    guest.ew32(IMS, ICR_RXT0);
    assert!(guest.irq(), "unmasked: the first edge is raised at once");
    assert_eq!(guest.er32(IMS), ICR_RXT0);
    assert_eq!(guest.er32(ICR), ICR_RXT0 | ICR_TXDW);
    assert!(!guest.irq(), "ICR read clears the causes and drops INTA");
    assert_eq!(guest.er32(ICR), 0);
    // Write 1 to clear.
    guest.advance_ns(1_000_000);
    guest.ew32(ICS, ICR_RXT0 | ICR_LSC);
    assert!(guest.irq());
    guest.ew32(ICR, ICR_RXT0);
    assert!(!guest.irq(), "the only unmasked cause cleared");
    assert_eq!(guest.er32(ICS), ICR_LSC);
    // IMC masks.
    guest.advance_ns(1_000_000);
    guest.ew32(IMS, ICR_LSC);
    assert!(guest.irq());
    guest.ew32(IMC, 0xffff_ffff);
    assert!(!guest.irq());
    assert_eq!(guest.er32(IMS), 0);
    // INTx disable in COMMAND holds the pin low.
    guest.ew32(IMS, ICR_LSC);
    assert!(!guest.irq(), "a new edge inside the moderation window waits");
    guest.advance_ns(1_000_000);
    assert!(guest.irq());
    guest.nic.config_write(0x04, 2, u32::from(pci::COMMAND_MEMORY | pci::COMMAND_MASTER | pci::COMMAND_INTX_DISABLE));
    assert!(!guest.irq());
}

#[test]
fn moderation_holds_a_second_edge_until_the_window_closes() {
    let mut guest = Guest::new();
    guest.ew32(ITR, 1000); // 256 us
    guest.ew32(IMS, ICR_RXT0);
    guest.ew32(ICS, ICR_RXT0);
    assert!(guest.irq(), "first edge at once");
    let opened = guest.now_ns;
    assert_eq!(guest.nic.next_deadline_ns(), Some(opened + 256_000));
    guest.er32(ICR);
    assert!(!guest.irq());
    guest.advance_ns(100_000);
    guest.ew32(ICS, ICR_RXT0);
    assert!(!guest.irq(), "inside the window the edge waits");
    assert_eq!(guest.er32(ICS), ICR_RXT0, "the cause is recorded meanwhile");
    guest.advance_ns(155_000);
    assert!(!guest.irq(), "1 us before the window closes");
    guest.advance_ns(1_000);
    assert!(guest.irq(), "raised when the window closes");
    assert_eq!(guest.nic.next_deadline_ns(), Some(opened + 2 * 256_000), "and a new window opens");
    // Without ITR the window is QEMU's minimum, 500 * 256 ns.
    guest.er32(ICR);
    guest.ew32(ITR, 0);
    guest.advance_ns(1_000_000);
    guest.ew32(ICS, ICR_RXT0);
    assert_eq!(guest.nic.next_deadline_ns(), Some(guest.now_ns + 128_000));
    // TADV is used when a descriptor asked for a delayed interrupt; RADV when RDTR is set.
    guest.er32(ICR);
    guest.advance_ns(1_000_000);
    guest.ew32(RDTR, 1);
    guest.ew32(RADV, 300); // 300 * 1024 ns
    guest.ew32(ICS, ICR_RXT0);
    assert_eq!(guest.nic.next_deadline_ns(), Some(guest.now_ns + 300 * 1024));
}

#[test]
fn statistics_clear_on_read() {
    let mut guest = Guest::new();
    guest.open_and_wait_for_link(8, 8);
    guest.er32(GPRC);
    for _ in 0..3 {
        assert_eq!(guest.deliver(&ethernet_frame(MAC, 0x0800, &pattern(100, 1))), RxOutcome::Delivered);
    }
    guest.deliver(&ethernet_frame(BROADCAST, 0x0806, &pattern(46, 2)));
    assert_eq!(guest.er32(GPRC), 4);
    assert_eq!(guest.er32(GPRC), 0, "cleared by the read");
    assert_eq!(guest.er32(BPRC), 1);
    assert_eq!(guest.er32(PRC127), 3, "114 + 4 bytes");
    assert_eq!(guest.er32(PRC64), 1, "60 + 4 bytes");
    assert_eq!(guest.er32(TPR), 4);
    let octets = 3 * (114 + 4) + 64;
    assert_eq!(guest.er32(GORCL), octets);
    assert_eq!(guest.er32(GORCL), octets, "the low half does not clear");
    assert_eq!(guest.er32(GORCH), 0);
    assert_eq!(guest.er32(GORCL), 0, "reading the high half cleared the pair");
    guest.ew32(GPRC, 55);
    assert_eq!(guest.er32(GPRC), 0, "counters are read-only");
    // Missed frames: MPC and RNBC clear on read too (QEMU lets them count up).
    guest.ew32(RDT, guest.nic.regs.rdh);
    assert_eq!(guest.deliver(&ethernet_frame(MAC, 0x0800, &pattern(100, 3))), RxOutcome::NoBuffer);
    assert_eq!(guest.er32(MPC), 1);
    assert_eq!(guest.er32(MPC), 0);
    assert_eq!(guest.er32(RNBC), 1);
}

#[test]
fn io_window_reaches_the_registers() {
    let mut guest = Guest::new();
    assert_eq!(guest.io_er32(STATUS), 0x8008_0783);
    guest.io_ew32(IMS, ICR_LSC);
    assert_eq!(guest.er32(IMS), ICR_LSC);
    assert_eq!(guest.nic.read(1, IOADDR, 4, &guest.ram, guest.now_ns), IMS, "IOADDR reads back");
    assert_eq!(guest.nic.read(1, 0x08, 4, &guest.ram, guest.now_ns), 0, "reserved ports read 0");
    guest.io_ew32(ICS, ICR_LSC);
    assert!(guest.irq());
    assert_eq!(guest.io_er32(ICR), ICR_LSC, "ICR through the window clears too");
    assert!(!guest.irq());
}

#[test]
fn odd_accesses_are_harmless() {
    let mut guest = Guest::new();
    assert_eq!(guest.nic.read(0, u64::from(STATUS), 3, &guest.ram, guest.now_ns), u32::MAX, "bad size");
    assert_eq!(guest.nic.read(2, 0, 4, &guest.ram, guest.now_ns), u32::MAX, "no BAR 2");
    assert_eq!(guest.nic.read(0, u64::from(STATUS), 1, &guest.ram, guest.now_ns), 0x83, "byte 0 of STATUS");
    assert_eq!(guest.nic.read(0, u64::from(STATUS) + 2, 2, &guest.ram, guest.now_ns), 0x8008, "bytes 2-3");
    assert_eq!(guest.nic.read(0, u64::from(STATUS) + 0x2_0000, 4, &guest.ram, guest.now_ns), 0x8008_0783, "aliased");
    guest.nic.write(0, u64::from(IMS), 2, 0xffff, &guest.ram, guest.now_ns);
    guest.nic.write(0, u64::from(IMS) + 1, 4, 0xffff_ffff, &guest.ram, guest.now_ns);
    guest.nic.write(1, IOADDR, 2, IMS, &guest.ram, guest.now_ns);
    guest.nic.write(3, 0, 4, 0, &guest.ram, guest.now_ns);
    assert_eq!(guest.er32(IMS), 0, "partial and unaligned writes are ignored");
    // A read of ICR's upper half still clears it (the read side effect of the register).
    guest.ew32(ICS, ICR_LSC);
    assert_eq!(guest.nic.read(0, u64::from(ICR) + 2, 2, &guest.ram, guest.now_ns), 0);
    assert_eq!(guest.er32(ICR), 0);
}
