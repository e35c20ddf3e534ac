//! A test bed: the card behind the BAR Linux uses, guest RAM in a Vec (with an optional
//! hole), the PCI setup hvmloader and `pci_enable_device`/`pci_set_master` do, and a model
//! of Linux's 8139too (drivers/net/ethernet/realtek/8139too.c, RX_BUF_IDX 2: a 32 KiB ring)
//! that makes the driver's register accesses in the driver's order and with its widths:
//! probe, open (`rtl8139_hw_start`), `start_xmit`, the interrupt handler, NAPI poll
//! (`rtl8139_rx`), receive error recovery, `__set_rx_mode`, close.

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use core::cell::RefCell;
use core::ops::Range;

use xen_seams::hvm::{GuestMemory, GuestMemoryError};

use super::super::{BAR_MMIO, Rtl8139};
use crate::nic::{Nic, RxOutcome};

/// The MAC the argv gives the card.
pub const MAC: [u8; 6] = [0x00, 0x16, 0x3e, 0x5a, 0x01, 0x02];
pub const RAM_BYTES: usize = 1 << 20;

// Registers, by 8139too's names.
pub const MAC0: u64 = 0x00;
pub const MAR0: u64 = 0x08;
pub const TX_STATUS0: u64 = 0x10;
pub const TX_ADDR0: u64 = 0x20;
pub const RX_BUF: u64 = 0x30;
pub const CHIP_CMD: u64 = 0x37;
pub const RX_BUF_PTR: u64 = 0x38;
pub const RX_BUF_ADDR: u64 = 0x3a;
pub const INTR_MASK: u64 = 0x3c;
pub const INTR_STATUS: u64 = 0x3e;
pub const TX_CONFIG: u64 = 0x40;
pub const RX_CONFIG: u64 = 0x44;
pub const TIMER: u64 = 0x48;
pub const RX_MISSED: u64 = 0x4c;
pub const CFG9346: u64 = 0x50;
pub const CONFIG0: u64 = 0x51;
pub const CONFIG1: u64 = 0x52;
pub const TIMER_INT: u64 = 0x54;
pub const MEDIA_STATUS: u64 = 0x58;
pub const CONFIG3: u64 = 0x59;
pub const CONFIG4: u64 = 0x5a;
pub const HLT_CLK: u64 = 0x5b;
pub const MULTI_INTR: u64 = 0x5c;
pub const TX_SUMMARY: u64 = 0x60;
pub const BASIC_MODE_CTRL: u64 = 0x62;
pub const BASIC_MODE_STATUS: u64 = 0x64;
pub const NWAY_ADVERT: u64 = 0x66;
pub const NWAY_LPAR: u64 = 0x68;
pub const NWAY_EXPANSION: u64 = 0x6a;
pub const CSCR: u64 = 0x74;
pub const CONFIG5: u64 = 0xd8;

pub const CMD_RESET: u8 = 0x10;
pub const CMD_RX_ENB: u8 = 0x08;
pub const CMD_TX_ENB: u8 = 0x04;
pub const RX_BUF_EMPTY: u8 = 0x01;

pub const PCI_ERR: u16 = 0x8000;
pub const PCS_TIMEOUT: u16 = 0x4000;
pub const RX_FIFO_OVER: u16 = 0x40;
pub const RX_UNDERRUN: u16 = 0x20;
pub const RX_OVERFLOW: u16 = 0x10;
pub const TX_ERR: u16 = 0x08;
pub const TX_OK: u16 = 0x04;
pub const RX_ERR: u16 = 0x02;
pub const RX_OK: u16 = 0x01;
pub const RX_ACK_BITS: u16 = RX_FIFO_OVER | RX_OVERFLOW | RX_OK;
pub const INTR_MASK_ALL: u16 =
    PCI_ERR | PCS_TIMEOUT | RX_UNDERRUN | RX_OVERFLOW | RX_FIFO_OVER | TX_ERR | TX_OK | RX_ERR | RX_OK;
pub const INTR_MASK_NORX: u16 = PCI_ERR | PCS_TIMEOUT | RX_UNDERRUN | TX_ERR | TX_OK | RX_ERR;

pub const TX_HOST_OWNS: u32 = 0x2000;
pub const TX_UNDERRUN: u32 = 0x4000;
pub const TX_STAT_OK: u32 = 0x8000;
pub const TX_OUT_OF_WINDOW: u32 = 0x2000_0000;
pub const TX_ABORTED: u32 = 0x4000_0000;
pub const TX_CARRIER_LOST: u32 = 0x8000_0000;

pub const RX_MULTICAST: u32 = 0x8000;
pub const RX_PHYSICAL: u32 = 0x4000;
pub const RX_BROADCAST: u32 = 0x2000;
pub const RX_STATUS_OK: u32 = 0x0001;

pub const ACCEPT_BROADCAST: u32 = 0x08;
pub const ACCEPT_MULTICAST: u32 = 0x04;
pub const ACCEPT_MY_PHYS: u32 = 0x02;
pub const ACCEPT_ALL_PHYS: u32 = 0x01;
pub const RX_NO_WRAP: u32 = 1 << 7;

pub const CFG9346_LOCK: u8 = 0x00;
pub const CFG9346_UNLOCK: u8 = 0xc0;
pub const CSCR_LINK_CHANGE_BIT: u16 = 0x0800;

/// `rtl8139_rx_config` with RX_BUF_IDX 2: 32 KiB ring, WRAP, no FIFO threshold, unlimited
/// DMA burst.
pub const RX_CONFIG_BASE: u32 = (1 << 12) | RX_NO_WRAP | (7 << 13) | (7 << 8);
/// `rtl8139_tx_config`: IFG 9.6 us, 1024-byte DMA bursts, 16 + 8 * 16 retries.
pub const TX_CONFIG_BASE: u32 = (3 << 24) | (6 << 8) | (8 << 4);
pub const RX_BUF_LEN: u32 = 32 * 1024;
pub const RX_BUF_PAD: u32 = 16;
pub const RX_BUF_WRAP_PAD: u32 = 2048;
pub const RX_BUF_TOT_LEN: u32 = RX_BUF_LEN + RX_BUF_PAD + RX_BUF_WRAP_PAD;
pub const NUM_TX_DESC: u64 = 4;
pub const TX_BUF_SIZE: u64 = 1536;
pub const MAX_ETH_FRAME_SIZE: u32 = 1536;
pub const ETH_ZLEN: usize = 60;
/// Where open() puts the rings (dma_alloc_coherent).
pub const RX_RING_GPA: u64 = 0x4_0000;
pub const TX_BUFS_GPA: u64 = 0x2_0000;

/// Guest RAM in a Vec; the `hole` reads and writes as not mapped.
pub struct Ram {
    bytes: RefCell<Vec<u8>>,
    pub hole: Option<Range<u64>>,
}

impl Ram {
    pub fn new(len_bytes: usize) -> Self {
        Ram { bytes: RefCell::new(vec![0; len_bytes]), hole: None }
    }

    fn check(&self, gpa: u64, len: usize) -> Result<Range<usize>, GuestMemoryError> {
        let end = gpa.checked_add(len as u64).ok_or(GuestMemoryError::Overflow)?;
        let unmapped = GuestMemoryError::Unmapped { gfn: gpa >> 12 };
        if end > self.bytes.borrow().len() as u64 {
            return Err(unmapped);
        }
        if let Some(hole) = &self.hole
            && gpa < hole.end
            && hole.start < end
        {
            return Err(unmapped);
        }
        Ok(gpa as usize..end as usize)
    }

    /// Guest RAM as a test sees it, whatever the hole.
    pub fn peek(&self, gpa: u64, len: usize) -> Vec<u8> {
        self.bytes.borrow()[gpa as usize..gpa as usize + len].to_vec()
    }

    pub fn poke(&self, gpa: u64, data: &[u8]) {
        self.bytes.borrow_mut()[gpa as usize..gpa as usize + data.len()].copy_from_slice(data);
    }

    pub fn peek_u32(&self, gpa: u64) -> u32 {
        u32::from_le_bytes(self.peek(gpa, 4).try_into().unwrap())
    }
}

impl GuestMemory for Ram {
    fn read(&self, gpa: u64, out: &mut [u8]) -> Result<(), GuestMemoryError> {
        let range = self.check(gpa, out.len())?;
        out.copy_from_slice(&self.bytes.borrow()[range]);
        Ok(())
    }

    fn write(&self, gpa: u64, data: &[u8]) -> Result<(), GuestMemoryError> {
        let range = self.check(gpa, data.len())?;
        self.bytes.borrow_mut()[range].copy_from_slice(data);
        Ok(())
    }

    fn invalidate(&self) {}
}

/// The card in a machine: RAM, a clock, the BAR the driver uses.
pub struct Bed {
    pub nic: Rtl8139,
    pub ram: Ram,
    pub now_ns: u64,
    /// BAR_MMIO (8139too's default) or BAR_IO (`use_io=1`)
    pub bar: usize,
}

impl Bed {
    /// A card after hvmloader (BARs placed, I/O and memory decoding on) and Linux's
    /// `pci_enable_device` + `pci_set_master`.
    pub fn new() -> Self {
        let mut bed = Bed { nic: Rtl8139::new(MAC), ram: Ram::new(RAM_BYTES), now_ns: 1_000_000, bar: BAR_MMIO };
        bed.nic.config_write(0x10, 4, 0xc101);
        bed.nic.config_write(0x14, 4, 0xf200_0000);
        bed.nic.config_write(0x04, 2, 0x0007);
        bed
    }

    pub fn r8(&mut self, reg: u64) -> u8 {
        self.nic.read(self.bar, reg, 1, &self.ram, self.now_ns) as u8
    }

    pub fn r16(&mut self, reg: u64) -> u16 {
        self.nic.read(self.bar, reg, 2, &self.ram, self.now_ns) as u16
    }

    pub fn r32(&mut self, reg: u64) -> u32 {
        self.nic.read(self.bar, reg, 4, &self.ram, self.now_ns)
    }

    pub fn w8(&mut self, reg: u64, value: u8) {
        self.nic.write(self.bar, reg, 1, u32::from(value), &self.ram, self.now_ns);
    }

    pub fn w16(&mut self, reg: u64, value: u16) {
        self.nic.write(self.bar, reg, 2, u32::from(value), &self.ram, self.now_ns);
    }

    pub fn w32(&mut self, reg: u64, value: u32) {
        self.nic.write(self.bar, reg, 4, value, &self.ram, self.now_ns);
    }

    /// RTL_W8_F and friends: a write flushed by reading the register back.
    pub fn w8_f(&mut self, reg: u64, value: u8) {
        self.w8(reg, value);
        self.r8(reg);
    }

    pub fn w16_f(&mut self, reg: u64, value: u16) {
        self.w16(reg, value);
        self.r16(reg);
    }

    pub fn w32_f(&mut self, reg: u64, value: u32) {
        self.w32(reg, value);
        self.r32(reg);
    }

    /// A frame from the wire, as the glue offers it.
    pub fn deliver(&mut self, frame: &[u8]) -> RxOutcome {
        self.nic.receive(frame, &self.ram, self.now_ns)
    }

    /// Every frame the glue can take now.
    pub fn take_frames(&mut self) -> Vec<Vec<u8>> {
        core::iter::from_fn(|| self.nic.take_tx_frame()).collect()
    }
}

/// A frame to `destination` from a peer, `len` bytes, with a recognisable payload.
pub fn frame_to(destination: [u8; 6], len: usize, seed: u8) -> Vec<u8> {
    let mut frame: Vec<u8> = (0..len).map(|i| seed.wrapping_add(i as u8).wrapping_mul(31)).collect();
    frame[..6].copy_from_slice(&destination);
    frame[6..12].copy_from_slice(&[0x00, 0x16, 0x3e, 0x99, 0x88, 0x77]);
    frame[12..14].copy_from_slice(&[0x08, 0x00]);
    frame
}

/// Linux's `ether_crc(ETH_ALEN, addr) >> 26`, bit by bit (`bitrev32(crc32_le(~0, ...))`).
pub fn linux_mc_bit(addr: &[u8; 6]) -> u32 {
    let mut crc = !0u32;
    for &byte in addr {
        for bit in 0..8 {
            let mix = (crc ^ u32::from(byte >> bit)) & 1;
            crc >>= 1;
            if mix != 0 {
                crc ^= 0xedb8_8320;
            }
        }
    }
    crc.reverse_bits() >> 26
}

/// `rtl_chip_info`: name, TxConfig version bits, HasHltClk, HasLWake.
const CHIPS: [(&str, u32, bool, bool); 10] = [
    ("RTL-8139", 0x4000_0000, true, false),
    ("RTL-8139 rev K", 0x6000_0000, true, false),
    ("RTL-8139A", 0x7000_0000, true, false),
    ("RTL-8139A rev G", 0x7080_0000, true, false),
    ("RTL-8139B", 0x7800_0000, false, true),
    ("RTL-8130", 0x7c00_0000, false, true),
    ("RTL-8139C", 0x7400_0000, false, true),
    ("RTL-8100", 0x7880_0000, false, true),
    ("RTL-8100B/8139D", 0x7440_0000, true, true),
    ("RTL-8101", 0x74c0_0000, false, true),
];
const HW_REVID_MASK: u32 = 0x7cc0_0000;
const CH_8139B: usize = 4;

/// The driver's counters that the tests look at (`dev->stats` and `xstats`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinuxStats {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub rx_errors: u64,
    pub tx_errors: u64,
    pub tx_aborted_errors: u64,
    pub tx_carrier_errors: u64,
    pub tx_dropped: u64,
    pub rx_missed_errors: u64,
    pub rx_fifo_errors: u64,
    pub rx_length_errors: u64,
    pub rx_lost_in_ring: u64,
}

/// 8139too's view of one card.
pub struct Linux {
    pub chipset: usize,
    pub addr_len: u32,
    pub dev_addr: [u8; 6],
    pub rx_config: u32,
    pub tx_flag: u32,
    pub cur_rx: u32,
    pub cur_tx: u64,
    pub dirty_tx: u64,
    pub carrier: bool,
    pub running: bool,
    pub napi_scheduled: bool,
    pub queue_stopped: bool,
    pub promisc: bool,
    pub allmulti: bool,
    pub mc_list: Vec<[u8; 6]>,
    /// NETIF_F_RXFCS: keep the FCS on received frames
    pub rxfcs: bool,
    /// frames handed to the stack
    pub received: Vec<Vec<u8>>,
    /// netdev_info/netdev_err lines
    pub log: Vec<String>,
    pub stats: LinuxStats,
    /// interrupts handled
    pub interrupts: u32,
}

impl Linux {
    /// `rtl8139_init_one` after the PCI core enabled the device.
    pub fn probe(bed: &mut Bed) -> Self {
        bed.w8(HLT_CLK, b'R');
        assert_ne!(bed.r32(TX_CONFIG), 0xffff_ffff, "chip not responding");
        let version = bed.r32(TX_CONFIG) & HW_REVID_MASK;
        let chipset = CHIPS.iter().position(|chip| chip.1 == version).unwrap_or(0);
        let (_, _, _, has_lwake) = CHIPS[chipset];
        if chipset >= CH_8139B {
            let tmp8 = bed.r8(CONFIG1);
            let mut new_tmp8 = tmp8;
            if has_lwake && tmp8 & 0x10 != 0 {
                new_tmp8 &= !0x10;
            }
            new_tmp8 |= 0x01;
            if new_tmp8 != tmp8 {
                bed.w8(CFG9346, CFG9346_UNLOCK);
                bed.w8(CONFIG1, tmp8);
                bed.w8(CFG9346, CFG9346_LOCK);
            }
            if has_lwake {
                let tmp8 = bed.r8(CONFIG4);
                if tmp8 & 0x04 != 0 {
                    bed.w8(CFG9346, CFG9346_UNLOCK);
                    bed.w8(CONFIG4, tmp8 & !0x04);
                    bed.w8(CFG9346, CFG9346_LOCK);
                }
            }
        } else {
            let tmp8 = bed.r8(CONFIG1) & !0x03;
            bed.w8(CONFIG1, tmp8);
        }
        chip_reset(bed);

        let addr_len = if read_eeprom(bed, 0, 8) == 0x8129 { 8 } else { 6 };
        let mut dev_addr = [0u8; 6];
        for i in 0..3 {
            let word = read_eeprom(bed, i + 7, addr_len);
            dev_addr[2 * i as usize..2 * i as usize + 2].copy_from_slice(&word.to_le_bytes());
        }
        if CHIPS[chipset].2 {
            bed.w8(HLT_CLK, b'H');
        }
        Linux {
            chipset,
            addr_len,
            dev_addr,
            rx_config: 0,
            tx_flag: 0,
            cur_rx: 0,
            cur_tx: 0,
            dirty_tx: 0,
            carrier: false,
            running: false,
            napi_scheduled: false,
            queue_stopped: false,
            promisc: false,
            allmulti: false,
            mc_list: Vec::new(),
            rxfcs: false,
            received: Vec::new(),
            log: Vec::new(),
            stats: LinuxStats::default(),
            interrupts: 0,
        }
    }

    pub fn chip_name(&self) -> &'static str {
        CHIPS[self.chipset].0
    }

    /// `rtl8139_open`: rings allocated, `rtl8139_init_ring`, `rtl8139_hw_start`.
    pub fn open(&mut self, bed: &mut Bed) {
        self.tx_flag = (256 << 11) & 0x003f_0000;
        self.cur_rx = 0;
        self.cur_tx = 0;
        self.dirty_tx = 0;
        self.hw_start(bed);
        self.running = true;
        self.queue_stopped = false;
    }

    pub fn hw_start(&mut self, bed: &mut Bed) {
        if CHIPS[self.chipset].2 {
            bed.w8(HLT_CLK, b'R');
        }
        chip_reset(bed);
        bed.w8_f(CFG9346, CFG9346_UNLOCK);
        let mac = self.dev_addr;
        bed.w32_f(MAC0, u32::from_le_bytes([mac[0], mac[1], mac[2], mac[3]]));
        bed.w32_f(MAC0 + 4, u32::from(u16::from_le_bytes([mac[4], mac[5]])));
        self.cur_rx = 0;
        bed.w32_f(RX_BUF, RX_RING_GPA as u32);
        bed.w8(CHIP_CMD, CMD_RX_ENB | CMD_TX_ENB);
        self.rx_config = RX_CONFIG_BASE | ACCEPT_BROADCAST | ACCEPT_MY_PHYS;
        bed.w32(RX_CONFIG, self.rx_config);
        bed.w32(TX_CONFIG, TX_CONFIG_BASE);
        self.check_media(bed, true);
        if self.chipset >= CH_8139B {
            let config3 = bed.r8(CONFIG3);
            bed.w8(CONFIG3, config3 & !0x20);
        }
        bed.w8(CFG9346, CFG9346_LOCK);
        for i in 0..NUM_TX_DESC {
            bed.w32_f(TX_ADDR0 + 4 * i, (TX_BUFS_GPA + i * TX_BUF_SIZE) as u32);
        }
        bed.w32(RX_MISSED, 0);
        self.set_rx_mode(bed);
        let multi_intr = bed.r16(MULTI_INTR);
        bed.w16(MULTI_INTR, multi_intr & 0xf000);
        let tmp = bed.r8(CHIP_CMD);
        if tmp & CMD_RX_ENB == 0 || tmp & CMD_TX_ENB == 0 {
            bed.w8(CHIP_CMD, CMD_RX_ENB | CMD_TX_ENB);
        }
        bed.w16(INTR_MASK, INTR_MASK_ALL);
    }

    /// `mdio_read` of the internal PHY (phy id 32).
    pub fn mdio_read(bed: &mut Bed, location: usize) -> u16 {
        const MAP: [u64; 8] = [BASIC_MODE_CTRL, BASIC_MODE_STATUS, 0, 0, NWAY_ADVERT, NWAY_LPAR, NWAY_EXPANSION, 0];
        match MAP.get(location) {
            Some(&reg) if reg != 0 => bed.r16(reg),
            _ => 0,
        }
    }

    /// `rtl_check_media` = `mii_check_media`.
    pub fn check_media(&mut self, bed: &mut Bed, init_media: bool) {
        let old_carrier = self.carrier;
        Linux::mdio_read(bed, 1);
        let new_carrier = Linux::mdio_read(bed, 1) & 0x0004 != 0;
        if !init_media && old_carrier == new_carrier {
            return;
        }
        if !new_carrier {
            self.carrier = false;
            self.log.push("link down".into());
            return;
        }
        self.carrier = true;
        let advertise = Linux::mdio_read(bed, 4);
        let lpa = Linux::mdio_read(bed, 5);
        let common = lpa & advertise;
        let (speed, duplex) = if common & 0x0100 != 0 {
            (100, "full")
        } else if common & 0x0080 != 0 {
            (100, "half")
        } else if common & 0x0040 != 0 {
            (10, "full")
        } else {
            (10, "half")
        };
        self.log.push(format!("link up, {speed}Mbps, {duplex}-duplex, lpa 0x{lpa:04X}"));
    }

    /// `rtl8139_start_xmit`; false if the stack would not have called it (queue stopped).
    pub fn start_xmit(&mut self, bed: &mut Bed, frame: &[u8]) -> bool {
        if self.queue_stopped {
            return false;
        }
        let entry = self.cur_tx % NUM_TX_DESC;
        let len = frame.len();
        if len >= TX_BUF_SIZE as usize {
            self.stats.tx_dropped += 1;
            return true;
        }
        let buffer = TX_BUFS_GPA + entry * TX_BUF_SIZE;
        if len < ETH_ZLEN {
            bed.ram.poke(buffer, &[0; ETH_ZLEN]);
        }
        bed.ram.poke(buffer, frame);
        bed.w32_f(TX_STATUS0 + 4 * entry, self.tx_flag | len.max(ETH_ZLEN) as u32);
        self.cur_tx += 1;
        if self.cur_tx.wrapping_sub(NUM_TX_DESC) == self.dirty_tx {
            self.queue_stopped = true;
        }
        true
    }

    /// `rtl8139_interrupt`; false if the interrupt was not ours.
    pub fn interrupt(&mut self, bed: &mut Bed) -> bool {
        let status = bed.r16(INTR_STATUS);
        if status & INTR_MASK_ALL == 0 {
            return false;
        }
        self.interrupts += 1;
        if status == 0xffff {
            return true;
        }
        if !self.running {
            bed.w16(INTR_MASK, 0);
            return true;
        }
        let link_changed = if status & RX_UNDERRUN != 0 { bed.r16(CSCR) & CSCR_LINK_CHANGE_BIT } else { 0 };
        let ackstat = status & !(RX_ACK_BITS | TX_ERR);
        if ackstat != 0 {
            bed.w16(INTR_STATUS, ackstat);
        }
        if status & RX_ACK_BITS != 0 && !self.napi_scheduled {
            bed.w16_f(INTR_MASK, INTR_MASK_NORX);
            self.napi_scheduled = true;
        }
        if status & (PCI_ERR | PCS_TIMEOUT | RX_UNDERRUN | RX_ERR) != 0 {
            self.weird_interrupt(bed, status, link_changed);
        }
        if status & (TX_OK | TX_ERR) != 0 {
            self.tx_interrupt(bed);
            if status & TX_ERR != 0 {
                bed.w16(INTR_STATUS, TX_ERR);
            }
        }
        true
    }

    fn weird_interrupt(&mut self, bed: &mut Bed, mut status: u16, link_changed: u16) {
        self.stats.rx_missed_errors += u64::from(bed.r32(RX_MISSED));
        bed.w32(RX_MISSED, 0);
        if status & RX_UNDERRUN != 0 && link_changed != 0 {
            self.check_media(bed, false);
            status &= !RX_UNDERRUN;
        }
        if status & (RX_UNDERRUN | RX_ERR) != 0 {
            self.stats.rx_errors += 1;
        }
        if status & PCS_TIMEOUT != 0 {
            self.stats.rx_length_errors += 1;
        }
        if status & RX_UNDERRUN != 0 {
            self.stats.rx_fifo_errors += 1;
        }
        if status & PCI_ERR != 0 {
            let pci_status = bed.nic.config_read(0x06, 2);
            bed.nic.config_write(0x06, 2, pci_status);
            self.log.push(format!("PCI Bus error {pci_status:04x}"));
        }
    }

    fn tx_interrupt(&mut self, bed: &mut Bed) {
        let mut dirty_tx = self.dirty_tx;
        let mut tx_left = self.cur_tx - dirty_tx;
        while tx_left > 0 {
            let entry = dirty_tx % NUM_TX_DESC;
            let txstatus = bed.r32(TX_STATUS0 + 4 * entry);
            if txstatus & (TX_STAT_OK | TX_UNDERRUN | TX_ABORTED) == 0 {
                break;
            }
            if txstatus & (TX_OUT_OF_WINDOW | TX_ABORTED) != 0 {
                self.stats.tx_errors += 1;
                if txstatus & TX_ABORTED != 0 {
                    self.stats.tx_aborted_errors += 1;
                    bed.w32(TX_CONFIG, 1);
                    bed.w16(INTR_STATUS, TX_ERR);
                }
                if txstatus & TX_CARRIER_LOST != 0 {
                    self.stats.tx_carrier_errors += 1;
                }
            } else {
                self.stats.tx_packets += 1;
                self.stats.tx_bytes += u64::from(txstatus & 0x7ff);
            }
            dirty_tx += 1;
            tx_left -= 1;
        }
        if self.dirty_tx != dirty_tx {
            self.dirty_tx = dirty_tx;
            self.queue_stopped = false;
        }
    }

    fn isr_ack(&mut self, bed: &mut Bed) {
        let status = bed.r16(INTR_STATUS) & RX_ACK_BITS;
        if status != 0 {
            if status & (RX_FIFO_OVER | RX_OVERFLOW) != 0 {
                self.stats.rx_errors += 1;
                if status & RX_FIFO_OVER != 0 {
                    self.stats.rx_fifo_errors += 1;
                }
            }
            bed.w16_f(INTR_STATUS, RX_ACK_BITS);
        }
    }

    /// `rtl8139_rx`: -1 after a receive error reset.
    fn rx(&mut self, bed: &mut Bed, budget: i32) -> i32 {
        let mut received = 0;
        let mut rx_size = 0;
        while self.running && received < budget && bed.r8(CHIP_CMD) & RX_BUF_EMPTY == 0 {
            let ring_offset = self.cur_rx % RX_BUF_LEN;
            let rx_status = bed.ram.peek_u32(RX_RING_GPA + u64::from(ring_offset));
            rx_size = rx_status >> 16;
            let pkt_size = if self.rxfcs { rx_size } else { rx_size.wrapping_sub(4) };
            if rx_size == 0xfff0 {
                break;
            }
            if !(8..=MAX_ETH_FRAME_SIZE + 4).contains(&rx_size) || rx_status & RX_STATUS_OK == 0 {
                self.rx_err(bed, rx_status);
                return -1;
            }
            let data = bed.ram.peek(RX_RING_GPA + u64::from(ring_offset) + 4, pkt_size as usize);
            self.stats.rx_packets += 1;
            self.stats.rx_bytes += u64::from(pkt_size);
            self.received.push(data);
            received += 1;
            self.cur_rx = (self.cur_rx + rx_size + 4 + 3) & !3;
            bed.w16(RX_BUF_PTR, self.cur_rx.wrapping_sub(16) as u16);
            self.isr_ack(bed);
        }
        if received == 0 || rx_size == 0xfff0 {
            self.isr_ack(bed);
        }
        received
    }

    /// `rtl8139_rx_err` (the default, not CONFIG_8139_OLD_RX_RESET).
    fn rx_err(&mut self, bed: &mut Bed, rx_status: u32) {
        self.stats.rx_errors += 1;
        if rx_status & RX_STATUS_OK != 0 {
            self.stats.rx_lost_in_ring += 1;
        }
        let tmp8 = bed.r8(CHIP_CMD);
        bed.w8(CHIP_CMD, tmp8 & !CMD_RX_ENB);
        bed.w8(CHIP_CMD, tmp8);
        bed.w32(RX_CONFIG, self.rx_config);
        self.cur_rx = 0;
    }

    /// `rtl8139_poll`.
    pub fn poll(&mut self, bed: &mut Bed, budget: i32) -> i32 {
        let mut work_done = 0;
        if bed.r16(INTR_STATUS) & RX_ACK_BITS != 0 {
            work_done += self.rx(bed, budget);
        }
        if work_done < budget {
            self.napi_scheduled = false;
            bed.w16_f(INTR_MASK, INTR_MASK_ALL);
        }
        work_done
    }

    /// The interrupt line and NAPI until both are quiet.
    pub fn service(&mut self, bed: &mut Bed) {
        for _ in 0..1000 {
            let mut busy = false;
            if bed.nic.irq_level() {
                assert!(self.interrupt(bed), "INTA asserted but ISR & IMR has nothing for 8139too");
                busy = true;
            }
            if self.napi_scheduled {
                self.poll(bed, 64);
                busy = true;
            }
            if !busy {
                return;
            }
        }
        panic!("interrupt storm");
    }

    /// `__set_rx_mode` from `dev->flags` and the multicast list.
    pub fn set_rx_mode(&mut self, bed: &mut Bed) {
        let (rx_mode, mc_filter) = if self.promisc {
            (ACCEPT_BROADCAST | ACCEPT_MULTICAST | ACCEPT_MY_PHYS | ACCEPT_ALL_PHYS, [!0u32; 2])
        } else if self.mc_list.len() > 32 || self.allmulti {
            (ACCEPT_BROADCAST | ACCEPT_MULTICAST | ACCEPT_MY_PHYS, [!0u32; 2])
        } else {
            let mut rx_mode = ACCEPT_BROADCAST | ACCEPT_MY_PHYS;
            let mut mc_filter = [0u32; 2];
            for addr in &self.mc_list {
                let bit_nr = linux_mc_bit(addr);
                mc_filter[(bit_nr >> 5) as usize] |= 1 << (bit_nr & 31);
                rx_mode |= ACCEPT_MULTICAST;
            }
            (rx_mode, mc_filter)
        };
        let tmp = RX_CONFIG_BASE | rx_mode;
        if self.rx_config != tmp {
            bed.w32_f(RX_CONFIG, tmp);
            self.rx_config = tmp;
        }
        bed.w32_f(MAR0, mc_filter[0]);
        bed.w32_f(MAR0 + 4, mc_filter[1]);
    }

    /// `rtl8139_set_mac_address`.
    pub fn set_mac_address(&mut self, bed: &mut Bed, mac: [u8; 6]) {
        self.dev_addr = mac;
        bed.w8_f(CFG9346, CFG9346_UNLOCK);
        bed.w32_f(MAC0, u32::from_le_bytes([mac[0], mac[1], mac[2], mac[3]]));
        bed.w32_f(MAC0 + 4, u32::from(u16::from_le_bytes([mac[4], mac[5]])));
        bed.w8_f(CFG9346, CFG9346_LOCK);
    }

    /// `rtl8139_close`.
    pub fn close(&mut self, bed: &mut Bed) {
        self.running = false;
        self.napi_scheduled = false;
        bed.w8(CHIP_CMD, 0);
        bed.w16(INTR_MASK, 0);
        self.stats.rx_missed_errors += u64::from(bed.r32(RX_MISSED));
        bed.w32(RX_MISSED, 0);
        self.cur_tx = 0;
        self.dirty_tx = 0;
        bed.w8(CFG9346, CFG9346_UNLOCK);
        if CHIPS[self.chipset].2 {
            bed.w8(HLT_CLK, b'H');
        }
    }
}

/// `rtl8139_chip_reset`.
pub fn chip_reset(bed: &mut Bed) {
    bed.w8(CHIP_CMD, CMD_RESET);
    for _ in 0..1000 {
        if bed.r8(CHIP_CMD) & CMD_RESET == 0 {
            return;
        }
    }
    panic!("reset never completed");
}

const EE_SHIFT_CLK: u8 = 0x04;
const EE_CS: u8 = 0x08;
const EE_DATA_WRITE: u8 = 0x02;
const EE_DATA_READ: u8 = 0x01;
const EE_ENB: u8 = 0x80 | EE_CS;
const EE_READ_CMD: u32 = 6;

/// 8139too's `read_eeprom`, `eeprom_delay` (a read of Cfg9346) included.
pub fn read_eeprom(bed: &mut Bed, location: u32, addr_len: u32) -> u16 {
    let read_cmd = location | (EE_READ_CMD << addr_len);
    bed.w8(CFG9346, EE_ENB & !EE_CS);
    bed.w8(CFG9346, EE_ENB);
    bed.r8(CFG9346);
    for i in (0..=4 + addr_len).rev() {
        let dataval = if read_cmd & (1 << i) != 0 { EE_DATA_WRITE } else { 0 };
        bed.w8(CFG9346, EE_ENB | dataval);
        bed.r8(CFG9346);
        bed.w8(CFG9346, EE_ENB | dataval | EE_SHIFT_CLK);
        bed.r8(CFG9346);
    }
    bed.w8(CFG9346, EE_ENB);
    bed.r8(CFG9346);
    let mut retval = 0u16;
    for _ in 0..16 {
        bed.w8(CFG9346, EE_ENB | EE_SHIFT_CLK);
        bed.r8(CFG9346);
        retval = (retval << 1) | u16::from(bed.r8(CFG9346) & EE_DATA_READ);
        bed.w8(CFG9346, EE_ENB);
        bed.r8(CFG9346);
    }
    bed.w8(CFG9346, 0);
    bed.r8(CFG9346);
    retval
}

/// A probed and opened card.
pub fn opened() -> (Bed, Linux) {
    let mut bed = Bed::new();
    let mut linux = Linux::probe(&mut bed);
    linux.open(&mut bed);
    (bed, linux)
}
