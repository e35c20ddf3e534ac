//! A guest for the tests: 2 MiB of RAM and the register, EEPROM, PHY and ring sequences
//! of Linux's e1000 driver (e1000_main.c, e1000_hw.c), in the order it issues them.

use alloc::vec;
use alloc::vec::Vec;

use super::super::regs::*;
use super::super::{E1000, VecGuestMemory};
use crate::nic::{Nic, RxOutcome};
use crate::pci;

pub(super) const MAC: [u8; 6] = [0x00, 0x16, 0x3e, 0x5e, 0x6c, 0x01];
pub(super) const BROADCAST: [u8; 6] = [0xff; 6];
pub(super) const PEER_MAC: [u8; 6] = [0x00, 0x16, 0x3e, 0x00, 0x00, 0x99];
pub(super) const RAM_BYTES: usize = 2 << 20;
pub(super) const TX_RING: u64 = 0x1_0000;
pub(super) const RX_RING: u64 = 0x2_0000;
/// Transmit buffers are handed out round-robin from here.
pub(super) const TX_BUFFERS: u64 = 0x4_0000;
const TX_BUFFERS_END: u64 = 0x10_0000;
/// Receive buffer `i` is at RX_BUFFERS + i * 2048.
pub(super) const RX_BUFFERS: u64 = 0x10_0000;
pub(super) const RX_BUFFER_BYTES: u64 = 2048;
/// What hvmloader gives the card's BARs.
pub(super) const MMIO_BASE: u32 = 0xf000_0000;
pub(super) const IO_BASE: u32 = 0xc000;
/// Linux's IMS_ENABLE_MASK.
pub(super) const IMS_ENABLE_MASK: u32 = ICR_RXT0 | ICR_TXDW | ICR_RXDMT0 | ICR_RXSEQ | ICR_LSC;
/// Linux's txd_cmd with the default tx_int_delay (8): EOP, IFCS, IDE, RS.
pub(super) const TXD_CMD: u32 = TXD_CMD_EOP | TXD_CMD_IFCS | TXD_CMD_IDE | TXD_CMD_RS;

/// A receive descriptor as the card left it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct RxDesc {
    pub buffer: u64,
    pub len: u16,
    pub status: u8,
    pub errors: u8,
    pub special: u16,
}

/// The guest: the card, its RAM, a clock, and the driver's ring bookkeeping.
pub(super) struct Guest {
    pub nic: E1000,
    pub ram: VecGuestMemory,
    pub now_ns: u64,
    pub tx_count: u32,
    /// next_to_use / next_to_clean of the transmit ring
    pub tx_next: u32,
    pub tx_clean: u32,
    pub rx_count: u32,
    pub rx_next_use: u32,
    pub rx_next_clean: u32,
    tx_buffer_cursor: u64,
}

impl Guest {
    /// A fresh card as hvmloader leaves it: BARs assigned, I/O, memory and bus master on.
    pub fn new() -> Self {
        Guest::with_nic(E1000::new(MAC))
    }

    /// `nic` with its BARs assigned and decoding and bus mastering on, in fresh RAM.
    pub fn with_nic(nic: E1000) -> Self {
        let mut guest = Guest {
            nic,
            ram: VecGuestMemory::new(RAM_BYTES),
            now_ns: 1_000_000_000,
            tx_count: 0,
            tx_next: 0,
            tx_clean: 0,
            rx_count: 0,
            rx_next_use: 0,
            rx_next_clean: 0,
            tx_buffer_cursor: TX_BUFFERS,
        };
        guest.nic.config_write(0x10, 4, MMIO_BASE);
        guest.nic.config_write(0x14, 4, IO_BASE);
        let command = pci::COMMAND_IO | pci::COMMAND_MEMORY | pci::COMMAND_MASTER;
        guest.nic.config_write(0x04, 2, u32::from(command));
        guest
    }

    pub fn er32(&mut self, reg: u32) -> u32 {
        self.nic.read(0, u64::from(reg), 4, &self.ram, self.now_ns)
    }

    pub fn ew32(&mut self, reg: u32, value: u32) {
        self.nic.write(0, u64::from(reg), 4, value, &self.ram, self.now_ns);
    }

    /// E1000_WRITE_REG_IO: through IOADDR/IODATA.
    pub fn io_ew32(&mut self, reg: u32, value: u32) {
        self.nic.write(1, IOADDR, 4, reg, &self.ram, self.now_ns);
        self.nic.write(1, IODATA, 4, value, &self.ram, self.now_ns);
    }

    pub fn io_er32(&mut self, reg: u32) -> u32 {
        self.nic.write(1, IOADDR, 4, reg, &self.ram, self.now_ns);
        self.nic.read(1, IODATA, 4, &self.ram, self.now_ns)
    }

    /// E1000_WRITE_FLUSH.
    pub fn flush(&mut self) {
        self.er32(STATUS);
    }

    /// Lets `ns` pass, running the card's timers when they are due.
    pub fn advance_ns(&mut self, ns: u64) {
        let target = self.now_ns + ns;
        while let Some(deadline) = self.nic.next_deadline_ns().filter(|&deadline| deadline <= target) {
            self.now_ns = self.now_ns.max(deadline);
            self.nic.tick(self.now_ns);
        }
        self.now_ns = target;
    }

    pub fn ram_write(&self, addr: u64, data: &[u8]) {
        use xen_seams::hvm::GuestMemory;
        self.ram.write(addr, data).expect("test RAM write");
    }

    pub fn ram_read(&self, addr: u64, len: usize) -> Vec<u8> {
        use xen_seams::hvm::GuestMemory;
        let mut out = vec![0; len];
        self.ram.read(addr, &mut out).expect("test RAM read");
        out
    }

    pub fn irq(&self) -> bool {
        self.nic.irq_level()
    }

    // ---- EEPROM (e1000_read_eeprom, microwire) ----

    fn raise_ee_clk(&mut self, eecd: &mut u32) {
        *eecd |= EECD_SK;
        self.ew32(EECD, *eecd);
        self.flush();
    }

    fn lower_ee_clk(&mut self, eecd: &mut u32) {
        *eecd &= !EECD_SK;
        self.ew32(EECD, *eecd);
        self.flush();
    }

    fn shift_out_ee_bits(&mut self, data: u32, count: u32) {
        let mut eecd = self.er32(EECD) & !EECD_DO;
        let mut mask = 1 << (count - 1);
        while mask != 0 {
            eecd &= !EECD_DI;
            if data & mask != 0 {
                eecd |= EECD_DI;
            }
            self.ew32(EECD, eecd);
            self.flush();
            self.raise_ee_clk(&mut eecd);
            self.lower_ee_clk(&mut eecd);
            mask >>= 1;
        }
        eecd &= !EECD_DI;
        self.ew32(EECD, eecd);
    }

    fn shift_in_ee_bits(&mut self, count: u32) -> u16 {
        let mut eecd = self.er32(EECD) & !(EECD_DO | EECD_DI);
        let mut data = 0u16;
        for _ in 0..count {
            data <<= 1;
            self.raise_ee_clk(&mut eecd);
            eecd = self.er32(EECD) & !EECD_DI;
            if eecd & EECD_DO != 0 {
                data |= 1;
            }
            self.lower_ee_clk(&mut eecd);
        }
        data
    }

    /// e1000_acquire_eeprom for microwire: request, wait for grant, select.
    fn acquire_eeprom(&mut self) {
        let mut eecd = self.er32(EECD) | EECD_REQ;
        self.ew32(EECD, eecd);
        eecd = self.er32(EECD);
        assert!(eecd & EECD_GNT != 0, "EEPROM access granted");
        eecd &= !(EECD_DI | EECD_SK);
        self.ew32(EECD, eecd);
        eecd |= EECD_CS;
        self.ew32(EECD, eecd);
    }

    /// e1000_standby_eeprom for microwire: deselect, clock, select (a new command).
    fn standby_eeprom(&mut self) {
        let mut eecd = self.er32(EECD);
        eecd &= !(EECD_CS | EECD_SK);
        self.ew32(EECD, eecd);
        self.flush();
        eecd |= EECD_SK;
        self.ew32(EECD, eecd);
        eecd |= EECD_CS;
        self.ew32(EECD, eecd);
        eecd &= !EECD_SK;
        self.ew32(EECD, eecd);
    }

    fn release_eeprom(&mut self) {
        let mut eecd = self.er32(EECD);
        eecd &= !(EECD_CS | EECD_DI);
        self.ew32(EECD, eecd);
        eecd |= EECD_SK;
        self.ew32(EECD, eecd);
        eecd &= !EECD_SK;
        self.ew32(EECD, eecd);
        eecd &= !EECD_REQ;
        self.ew32(EECD, eecd);
    }

    /// e1000_read_eeprom of `count` words from `first` (6 address bits: the EECD size
    /// bit reads 0, a 64-word part).
    pub fn read_eeprom(&mut self, first: u32, count: u32) -> Vec<u16> {
        assert_eq!(self.er32(EECD) & (1 << 9), 0, "EECD says 64 words");
        self.acquire_eeprom();
        let mut words = Vec::new();
        for offset in first..first + count {
            self.shift_out_ee_bits(EEPROM_READ_OPCODE_MICROWIRE, 3);
            self.shift_out_ee_bits(offset, 6);
            words.push(self.shift_in_ee_bits(16));
            self.standby_eeprom();
        }
        self.release_eeprom();
        words
    }

    // ---- PHY (e1000_read_phy_reg_ex / e1000_write_phy_reg_ex) ----

    pub fn read_phy(&mut self, reg: u32) -> Result<u16, u32> {
        self.read_phy_at(PHY_ADDRESS, reg)
    }

    pub fn read_phy_at(&mut self, phy: u32, reg: u32) -> Result<u16, u32> {
        self.ew32(MDIC, (reg << MDIC_REG_SHIFT) | (phy << MDIC_PHY_SHIFT) | MDIC_OP_READ);
        let mut mdic = 0;
        for _ in 0..64 {
            mdic = self.er32(MDIC);
            if mdic & MDIC_READY != 0 {
                break;
            }
        }
        if mdic & MDIC_READY == 0 || mdic & MDIC_ERROR != 0 {
            return Err(mdic);
        }
        Ok(mdic as u16)
    }

    pub fn write_phy(&mut self, reg: u32, data: u16) -> Result<(), u32> {
        self.ew32(MDIC, u32::from(data) | (reg << MDIC_REG_SHIFT) | (PHY_ADDRESS << MDIC_PHY_SHIFT) | MDIC_OP_WRITE);
        let mdic = self.er32(MDIC);
        if mdic & MDIC_READY == 0 || mdic & MDIC_ERROR != 0 {
            return Err(mdic);
        }
        Ok(())
    }

    // ---- probe and open ----

    /// e1000_reset_hw for an 82540: interrupts off, units stopped, the MAC reset
    /// through the I/O window, HW ARP off, pending causes read away.
    pub fn reset_hw(&mut self) {
        self.ew32(IMC, 0xffff_ffff);
        self.ew32(RCTL, 0);
        self.ew32(TCTL, TCTL_PSP);
        self.flush();
        let ctrl = self.er32(CTRL);
        self.io_ew32(CTRL, ctrl | CTRL_RST);
        self.advance_ns(5_000_000);
        let manc = self.er32(MANC);
        self.ew32(MANC, manc & !MANC_ARP_EN);
        self.ew32(IMC, 0xffff_ffff);
        self.er32(ICR);
    }

    /// e1000_probe's hardware part: reset, EEPROM checksum, MAC, PHY id. Returns the
    /// MAC read from the EEPROM and the PHY id.
    pub fn probe(&mut self) -> ([u8; 6], u32) {
        self.reset_hw();
        let words = self.read_eeprom(0, EEPROM_NR_WORDS as u32);
        let sum = words.iter().fold(0u16, |sum, &word| sum.wrapping_add(word));
        assert_eq!(sum, EEPROM_SUM, "EEPROM checksum (e1000_validate_eeprom_checksum)");
        let mut mac = [0u8; 6];
        for (i, word) in words[..3].iter().enumerate() {
            mac[2 * i..2 * i + 2].copy_from_slice(&word.to_le_bytes());
        }
        let id1 = self.read_phy(MII_PHYID1 as u32).expect("PHY ID1");
        let id2 = self.read_phy(MII_PHYID2 as u32).expect("PHY ID2");
        (mac, (u32::from(id1) << 16) | u32::from(id2))
    }

    /// e1000_init_hw and e1000_setup_link as they run for an 82540 with an M88 PHY:
    /// VLAN filter off, receive addresses and hash cleared, autonegotiation advertised
    /// and restarted.
    pub fn init_hw(&mut self) {
        self.ew32(VET, 0);
        for i in 0..NR_VFTA as u32 {
            self.ew32(VFTA + 4 * i, 0);
        }
        self.rar_set(MAC, 0);
        for i in 1..15 {
            self.ew32(RA + 8 * i, 0);
            self.ew32(RA + 8 * i + 4, 0);
        }
        for i in 0..NR_MTA as u32 {
            self.ew32(MTA + 4 * i, 0);
        }
        // e1000_copper_link_mgp_setup and e1000_phy_setup_autoneg.
        self.write_phy(M88_PHY_SPEC_CTRL as u32, 0x0068).expect("M88 PSCR");
        let bmcr = self.read_phy(MII_BMCR as u32).expect("BMCR");
        self.write_phy(MII_BMCR as u32, bmcr | BMCR_RESET).expect("PHY reset");
        self.write_phy(MII_ANAR as u32, 0x0de1).expect("ANAR");
        self.write_phy(MII_CTRL1000 as u32, CTRL1000_FULL).expect("1000T control");
        let bmcr = self.read_phy(MII_BMCR as u32).expect("BMCR");
        self.write_phy(MII_BMCR as u32, bmcr | BMCR_AUTOEN | BMCR_ANRESTART).expect("autoneg restart");
        for _ in 0..10 {
            if self.read_phy(MII_BMSR as u32).expect("BMSR") & BMSR_LINK_ST != 0 {
                break;
            }
        }
    }

    /// e1000_rar_set.
    pub fn rar_set(&mut self, mac: [u8; 6], index: u32) {
        let low = u32::from_le_bytes([mac[0], mac[1], mac[2], mac[3]]);
        let high = u32::from_le_bytes([mac[4], mac[5], 0, 0]) | RAH_AV;
        self.ew32(RA + 8 * index, low);
        self.flush();
        self.ew32(RA + 8 * index + 4, high);
        self.flush();
    }

    /// e1000_set_rx_mode: promiscuous and all-multicast flags, multicast addresses in
    /// receive addresses 1-14 and the rest in the hash.
    pub fn set_rx_mode(&mut self, promiscuous: bool, all_multi: bool, multicast: &[[u8; 6]]) {
        let mut rctl = self.er32(RCTL);
        if promiscuous {
            rctl |= RCTL_UPE | RCTL_MPE;
            rctl &= !RCTL_VFE;
        } else {
            if all_multi {
                rctl |= RCTL_MPE;
            } else {
                rctl &= !RCTL_MPE;
            }
            rctl &= !RCTL_UPE;
        }
        self.ew32(RCTL, rctl);
        let mut mta = [0u32; NR_MTA];
        let mut i = 1;
        for &address in multicast {
            if i == 15 {
                // e1000_hash_mc_addr with mc_filter_type 0.
                let hash = ((u32::from(address[4]) >> 4) | (u32::from(address[5]) << 4)) & 0xfff;
                mta[(hash >> 5) as usize & 0x7f] |= 1 << (hash & 0x1f);
            } else {
                self.rar_set(address, i);
                i += 1;
            }
        }
        for index in i..15 {
            self.ew32(RA + 8 * index, 0);
            self.ew32(RA + 8 * index + 4, 0);
        }
        for index in (0..NR_MTA).rev() {
            self.ew32(MTA + 4 * index as u32, mta[index]);
        }
        self.flush();
    }

    /// e1000_open with `nr_tx` and `nr_rx` descriptors: reset and init, configure
    /// (receive mode, VLAN stripping, transmit and receive units, buffers), interrupts
    /// on, and the LSC the driver fires at itself to start its watchdog.
    pub fn open(&mut self, nr_tx: u32, nr_rx: u32) {
        self.reset_hw();
        self.init_hw();
        self.set_rx_mode(false, false, &[]);
        let ctrl = self.er32(CTRL);
        self.ew32(CTRL, ctrl | CTRL_VME);
        // e1000_configure_tx.
        self.tx_count = nr_tx;
        self.tx_next = 0;
        self.tx_clean = 0;
        self.ram_write(TX_RING, &vec![0; nr_tx as usize * 16]);
        self.ew32(TDLEN, nr_tx * 16);
        self.ew32(TDBAH, (TX_RING >> 32) as u32);
        self.ew32(TDBAL, TX_RING as u32);
        self.ew32(TDT, 0);
        self.ew32(TDH, 0);
        self.ew32(TIPG, 0x0060_2008);
        self.ew32(TIDV, 8);
        self.ew32(TADV, 32);
        let tctl = self.er32(TCTL);
        self.ew32(TCTL, (tctl & !0xff0) | TCTL_PSP | (1 << 28) | (0x0f << 4));
        // e1000_setup_rctl (2048-byte buffers, MTU 1500).
        let rctl = self.er32(RCTL) & !(3 << RCTL_MO_SHIFT) & !(3 << RCTL_SZ_SHIFT) & !RCTL_BSEX & !RCTL_LPE;
        self.ew32(RCTL, rctl | RCTL_BAM);
        // e1000_configure_rx.
        let rctl = self.er32(RCTL);
        self.ew32(RCTL, rctl & !RCTL_EN);
        self.ew32(RDTR, 0);
        self.ew32(RADV, 8);
        self.ew32(ITR, 1_000_000_000 / (20_000 * 256));
        self.rx_count = nr_rx;
        self.rx_next_use = 0;
        self.rx_next_clean = 0;
        self.ram_write(RX_RING, &vec![0; nr_rx as usize * 16]);
        self.ew32(RDLEN, nr_rx * 16);
        self.ew32(RDBAH, (RX_RING >> 32) as u32);
        self.ew32(RDBAL, RX_RING as u32);
        self.ew32(RDT, 0);
        self.ew32(RDH, 0);
        let rxcsum = self.er32(RXCSUM);
        self.ew32(RXCSUM, rxcsum | (1 << 9));
        self.ew32(RCTL, rctl | RCTL_EN);
        self.alloc_rx_buffers(nr_rx - 1);
        // e1000_irq_enable, then the LSC that starts the watchdog.
        self.ew32(IMS, IMS_ENABLE_MASK);
        self.flush();
        self.ew32(ICS, ICR_LSC);
    }

    /// e1000_open followed by the interrupt and the watchdog runs that bring the link
    /// up (autonegotiation takes 500 ms): the driver's carrier is on and TCTL.EN set.
    pub fn open_and_wait_for_link(&mut self, nr_tx: u32, nr_rx: u32) {
        self.open(nr_tx, nr_rx);
        self.interrupt();
        assert!(!self.watchdog(), "link down while autonegotiation runs");
        self.advance_ns(600_000_000);
        let (icr, _) = self.interrupt();
        assert!(icr & ICR_LSC != 0, "autonegotiation done signals LSC, ICR {icr:#x}");
        assert!(self.watchdog(), "link up after autonegotiation");
    }

    /// e1000_alloc_rx_buffers: `count` buffers from next_to_use, RDT one behind it.
    pub fn alloc_rx_buffers(&mut self, count: u32) {
        let mut i = self.rx_next_use;
        for _ in 0..count {
            let buffer = RX_BUFFERS + u64::from(i) * RX_BUFFER_BYTES;
            let mut desc = [0u8; 16];
            desc[..8].copy_from_slice(&buffer.to_le_bytes());
            self.ram_write(RX_RING + u64::from(i) * 16, &desc);
            i = (i + 1) % self.rx_count;
        }
        if i != self.rx_next_use {
            self.rx_next_use = i;
            let tail = if i == 0 { self.rx_count - 1 } else { i - 1 };
            self.ew32(RDT, tail);
        }
    }

    /// e1000_has_link for copper and the link-up part of e1000_watchdog: BMSR's link
    /// bit (read twice), then STATUS for speed and duplex, and TCTL.EN.
    pub fn watchdog(&mut self) -> bool {
        self.read_phy(MII_BMSR as u32).expect("BMSR");
        let bmsr = self.read_phy(MII_BMSR as u32).expect("BMSR");
        if bmsr & BMSR_LINK_ST == 0 {
            return false;
        }
        let status = self.er32(STATUS);
        assert_eq!(status & (STATUS_SPEED_1000 | STATUS_FD), STATUS_SPEED_1000 | STATUS_FD, "1000 Mb/s full duplex");
        let tctl = self.er32(TCTL);
        self.ew32(TCTL, tctl | TCTL_EN);
        true
    }

    /// e1000_intr and the NAPI poll: ICR read (0: not ours), interrupts masked, the
    /// transmit ring cleaned, received frames taken, interrupts unmasked. Returns ICR
    /// and the frames.
    pub fn interrupt(&mut self) -> (u32, Vec<Vec<u8>>) {
        let icr = self.er32(ICR);
        if icr == 0 {
            return (0, Vec::new());
        }
        self.ew32(IMC, 0xffff_ffff);
        self.flush();
        self.clean_tx();
        let frames = self.clean_rx();
        self.ew32(IMS, IMS_ENABLE_MASK);
        self.flush();
        (icr, frames)
    }

    // ---- transmit ----

    pub fn write_tx_desc(&mut self, index: u32, addr: u64, lower: u32, upper: u32) {
        let mut desc = [0u8; 16];
        desc[..8].copy_from_slice(&addr.to_le_bytes());
        desc[8..12].copy_from_slice(&lower.to_le_bytes());
        desc[12..].copy_from_slice(&upper.to_le_bytes());
        self.ram_write(TX_RING + u64::from(index) * 16, &desc);
    }

    /// `upper` of transmit descriptor `index`.
    pub fn tx_desc_upper(&self, index: u32) -> u32 {
        let bytes = self.ram_read(TX_RING + u64::from(index) * 16 + 12, 4);
        u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
    }

    /// Copies `data` into a transmit buffer and returns its address.
    pub fn tx_buffer(&mut self, data: &[u8]) -> u64 {
        if self.tx_buffer_cursor + data.len() as u64 > TX_BUFFERS_END {
            self.tx_buffer_cursor = TX_BUFFERS;
        }
        let addr = self.tx_buffer_cursor;
        self.ram_write(addr, data);
        self.tx_buffer_cursor += (data.len() as u64 + 63) & !63;
        addr
    }

    /// Queues descriptors (addr, lower, upper) at next_to_use without ringing.
    pub fn queue_tx_descs(&mut self, descs: &[(u64, u32, u32)]) {
        for &(addr, lower, upper) in descs {
            self.write_tx_desc(self.tx_next, addr, lower, upper);
            self.tx_next = (self.tx_next + 1) % self.tx_count;
        }
    }

    /// Rings the transmit doorbell (TDT = next_to_use).
    pub fn ring_tx(&mut self) {
        self.ew32(TDT, self.tx_next);
    }

    /// e1000_xmit_frame of a plain (no offload) frame whose data is in `pieces`: one
    /// legacy descriptor per piece, EOP/RS/IDE on the last, then TDT.
    pub fn xmit(&mut self, pieces: &[&[u8]]) {
        let mut descs = Vec::new();
        for (i, piece) in pieces.iter().enumerate() {
            let addr = self.tx_buffer(piece);
            let mut lower = TXD_CMD_IFCS | piece.len() as u32;
            if i == pieces.len() - 1 {
                lower |= TXD_CMD;
            }
            descs.push((addr, lower, 0));
        }
        self.queue_tx_descs(&descs);
        self.ring_tx();
    }

    /// e1000_clean_tx_irq: reclaims descriptors whose DD is set. Returns how many.
    pub fn clean_tx(&mut self) -> u32 {
        let mut cleaned = 0;
        while self.tx_clean != self.tx_next && self.tx_desc_upper(self.tx_clean) & TXD_STAT_DD != 0 {
            self.write_tx_desc(self.tx_clean, 0, 0, 0);
            self.tx_clean = (self.tx_clean + 1) % self.tx_count;
            cleaned += 1;
        }
        cleaned
    }

    /// Frames the card handed to the glue, oldest first.
    pub fn wire_frames(&mut self) -> Vec<Vec<u8>> {
        core::iter::from_fn(|| self.nic.take_tx_frame()).collect()
    }

    // ---- receive ----

    pub fn rx_desc(&self, index: u32) -> RxDesc {
        let b = self.ram_read(RX_RING + u64::from(index) * 16, 16);
        RxDesc {
            buffer: u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]),
            len: u16::from_le_bytes([b[8], b[9]]),
            status: b[12],
            errors: b[13],
            special: u16::from_le_bytes([b[14], b[15]]),
        }
    }

    /// A frame from the wire.
    pub fn deliver(&mut self, frame: &[u8]) -> RxOutcome {
        self.nic.receive(frame, &self.ram, self.now_ns)
    }

    /// e1000_clean_rx_irq (MTU 1500): takes descriptors with DD from next_to_clean,
    /// drops frames with errors or without EOP, strips the FCS, clears the status,
    /// refills. Returns the frames.
    pub fn clean_rx(&mut self) -> Vec<Vec<u8>> {
        let mut frames = Vec::new();
        let mut cleaned = 0;
        loop {
            let index = self.rx_next_clean;
            let desc = self.rx_desc(index);
            if desc.status & RXD_STAT_DD == 0 {
                break;
            }
            let len = usize::from(desc.len);
            if desc.status & RXD_STAT_EOP != 0 && desc.errors == 0 && len > 4 {
                frames.push(self.ram_read(desc.buffer, len - 4));
            }
            self.ram_write(RX_RING + u64::from(index) * 16 + 12, &[0]);
            self.rx_next_clean = (index + 1) % self.rx_count;
            cleaned += 1;
        }
        if cleaned > 0 {
            self.alloc_rx_buffers(cleaned);
        }
        frames
    }
}

/// An Ethernet frame: destination, our peer as source, type, payload.
pub(super) fn ethernet_frame(destination: [u8; 6], ether_type: u16, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(14 + payload.len());
    frame.extend_from_slice(&destination);
    frame.extend_from_slice(&PEER_MAC);
    frame.extend_from_slice(&ether_type.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// `len` bytes of a recognisable pattern.
pub(super) fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed)).collect()
}

/// The Internet checksum of `data` (a test's own, independent of the card's).
pub(super) fn internet_checksum(data: &[u8]) -> u16 {
    let mut sum = 0u64;
    for (i, byte) in data.iter().enumerate() {
        sum += if i % 2 == 0 { u64::from(*byte) << 8 } else { u64::from(*byte) };
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}
