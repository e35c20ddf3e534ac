//! The Intel 82540EM gigabit NIC (PCI 8086:100e) as QEMU's `e1000` presents it, for a
//! guest's `-device e1000`: what Linux's e1000 driver probes, configures and drives.
//!
//! - **PCI**: revision 3, class 02:00, QEMU's subsystem ids, INTA; BAR 0 is 128 KiB of
//!   registers, BAR 1 64 I/O ports with the IOADDR/IODATA window onto them (Linux
//!   issues the MAC reset of an 82540 through it). The registers take aligned 32-bit
//!   writes; reads of 1 or 2 bytes see part of the register (with its read side
//!   effects); other accesses read all ones or are ignored.
//! - **EEPROM** ([`eeprom`]): microwire through EECD and words through EERD, the MAC in
//!   words 0-2, summing to 0xBABA. **PHY** ([`phy`]) through MDIC: an M88E1011 with
//!   1000 Mb/s full duplex and QEMU's 500 ms autonegotiation, started when the driver
//!   restarts it or when the link comes back.
//! - **Interrupts**: ICR (read to clear, write 1 to clear), ICS, IMS, IMC; INTA is
//!   `ICR & IMS` with QEMU's moderation: a rising edge is raised at once and opens a
//!   window (the smallest of ITR, TADV if a descriptor asked for delayed interrupts,
//!   RADV if RDTR is set; at least 128 µs), and further edges within it wait for its
//!   end. RDTR and TIDV delays are not modelled (neither are they in QEMU).
//! - **Receive**: RCTL enable, unicast exact match (16 receive addresses), the 4096-bit
//!   multicast hash (MTA, RCTL.MO), broadcast (BAM), promiscuous UPE/MPE, VLAN filter
//!   (VFTA) and tag stripping (CTRL.VME), long packets (LPE), buffer sizes 256-16384;
//!   legacy 16-byte descriptors, a frame spanning as many as it needs, the length
//!   including the 4-byte FCS the driver strips (whose bytes are not written, as in
//!   QEMU), status DD/EOP/IXSM (no receive checksum offload), RXT0 and RXDMT0.
//! - **Transmit** ([`tx`]): legacy, context and data descriptors with checksum
//!   insertion and TSO as QEMU does them, VLAN tag insertion; DD written back on RS;
//!   TXDW and TXQE. Frames wait in a queue of [`MAX_QUEUED_TX_FRAMES`] for the glue;
//!   while the link is down they are dropped instead.
//! - **Statistics**: the counters Linux's e1000_update_stats reads (0x4000-0x40fc),
//!   clear on read (a 64-bit pair when its high half is read), kept as QEMU keeps them.
//!
//! **Back pressure.** A packet is taken from the ring only when the glue's queue has
//! room for all the frames it becomes (one, or one per TSO segment); otherwise the
//! transmit unit pauses with TDH at that packet and STATUS.TXOFF set (which is also
//! what keeps Linux's "Tx unit hang" check quiet), and resumes on the next register
//! access or received frame after the glue made room ([`E1000::resume_transmit`] lets
//! the glue resume it at once). Frames are lost only when a TSO packet needs more than
//! the whole queue or the link is down.
//!
//! **Bad input.** Descriptor rings and buffers are reached only by DMA through
//! [`GuestMemory`] while bus mastering is on. An address that is not guest RAM sets the
//! PCI status bit "received master abort", counts a DMA error and logs a bounded line:
//! a receive buffer gets RXE in its descriptor, a transmit buffer drops its packet, a
//! descriptor stops the ring at that descriptor. A ring is walked at most once per
//! doorbell, so a ring that never ends costs one pass. Frames longer than
//! [`MAX_FRAME_BYTES`] are dropped and counted; the card holds at most one frame under
//! assembly.
//!
//! **Where this follows the hardware rather than QEMU** (noted so the differences are
//! deliberate): CTRL.RST resets the MAC's registers (QEMU only clears the bit, and
//! ignores the I/O window Linux writes it through); all statistics clear on read (QEMU
//! leaves CRCERRS-MPC and RNBC counting up); VET reading 0, as Linux's e1000_init_hw
//! leaves it on an 82540, tags and strips with TPID 0x8100; receive descriptors get a
//! fresh status byte. QEMU's one-second receive pause after each RCTL write is not
//! copied.

mod eeprom;
mod phy;
pub mod regs;
mod tx;

#[cfg(test)]
mod tests;

use alloc::collections::VecDeque;
use alloc::vec::Vec;

use xen_seams::hvm::GuestMemory;

use self::eeprom::Eeprom;
use self::phy::Phy;
use self::regs::*;
use self::tx::{Transmitter, TxDescriptor, TxDrop, TxPort};
use crate::nic::{MAX_FRAME_BYTES, MAX_QUEUED_TX_FRAMES, Nic, NicStats, RxOutcome};
use crate::pci::{self, BarKind, BarSpec, ConfigSpace};
use crate::ratelimit::LogLimiter;
use crate::snapshot::{self, Section, SectionId, SnapshotError, TimeBase};

/// QEMU's autonegotiation time.
const AUTONEG_NS: u64 = 500_000_000;
/// ITR counts in units of 256 ns; RADV and TADV in units of 1024 ns (4 ITR units).
const MODERATION_UNIT_NS: u64 = 256;
/// The shortest moderation window, in ITR units (QEMU: the 7813 interrupts/s the
/// 8254x guarantees at most).
const MIN_MODERATION_UNITS: u32 = 500;
/// Descriptor size, either ring.
const DESC_BYTES: u64 = 16;
/// Frames are padded to this before filtering and delivery (without FCS).
const MIN_FRAME_BYTES: usize = 60;
const FCS_BYTES: usize = 4;
const ETH_HEADER_BYTES: usize = 14;
const VLAN_TAG_BYTES: usize = 4;
/// The longest frame received without LPE (an 802.1Q-tagged 1500-byte payload), and
/// with it (QEMU's e1000x_is_oversized).
const MAX_SHORT_FRAME_BYTES: usize = ETH_HEADER_BYTES + VLAN_TAG_BYTES + 1500;
const MAX_LONG_FRAME_BYTES: usize = 16384 - FCS_BYTES;
/// The 802.1Q TPID, used when VET is 0.
const ETH_P_8021Q: u16 = 0x8100;
/// PCI STATUS: received master abort (a DMA to an address that is not RAM).
const PCI_STATUS_RECEIVED_MASTER_ABORT: u16 = 1 << 13;
/// QEMU's cache line size at realize.
const PCI_CACHE_LINE_SIZE: u8 = 0x10;
/// Registers decode within the BAR's 128 KiB.
const MMIO_OFFSET_MASK: u64 = MMIO_BAR_BYTES as u64 - 1;
/// IOADDR selects a register by its BAR 0 offset (bits 16:2).
const IOADDR_MASK: u32 = MMIO_BAR_BYTES - 4;

const CTRL_POWER_ON: u32 = CTRL_SWDPIN2 | CTRL_SWDPIN0 | CTRL_SPD_1000 | CTRL_SLU;
const STATUS_POWER_ON: u32 =
    0x8000_0000 | STATUS_GIO_MASTER_ENABLE | STATUS_ASDV | STATUS_MTXCKOK | STATUS_SPEED_1000 | STATUS_FD | STATUS_LU;
/// MANC reads this and ignores writes (QEMU has no write handler for it).
const MANC_VALUE: u32 = MANC_EN_MNG2HOST | MANC_RCV_TCO_EN | MANC_ARP_EN | MANC_0298_EN | MANC_RMCP_EN;

/// Registers QEMU keeps without acting on them: (first offset, number of consecutive
/// registers, writable bits, power-on value).
const STORED: [(u32, usize, u32, u32); 20] = [
    (PBA, 1, u32::MAX, 0x0010_0030),
    (LEDCTL, 1, u32::MAX, 0x602),
    (SWSM, 1, u32::MAX, 0),
    (WUFC, 1, u32::MAX, 0),
    (TXDCTL, 1, u32::MAX, 0),
    (IPAV, 1, u32::MAX, 0),
    (WUC, 1, u32::MAX, 0),
    (WUS, 1, u32::MAX, 0),
    (AIT, 1, 0xffff, 0),
    (TDFH, 1, 0x7ff, 0),
    (TDFT, 1, 0x7ff, 0),
    (TDFHS, 3, 0x1fff, 0), // TDFHS, TDFTS, TDFPC
    (RDFH, 1, 0x1fff, 0),
    (RDFT, 1, 0x1fff, 0),
    (RDFHS, 1, 0x1fff, 0),
    (RDFTS, 1, 0x1fff, 0),
    (RDFPC, 1, 0x1fff, 0),
    (IP4AT, 7, u32::MAX, 0),
    (IP6AT, 4, u32::MAX, 0),
    (FFLT, 7, 0x7ff, 0),
];
const NR_STORED: usize = {
    let mut total = 0;
    let mut i = 0;
    while i < STORED.len() {
        total += STORED[i].1;
        i += 1;
    }
    total
};
const NR_STATS: usize = ((STATS_LAST - STATS_FIRST) / 4 + 1) as usize;

/// The slot of the stored register at (aligned) `offset`, and its writable bits.
fn stored_slot(offset: u32) -> Option<(usize, u32)> {
    let mut slot = 0;
    for &(first, count, writable, _) in &STORED {
        let index = offset.wrapping_sub(first) / 4;
        if offset >= first && (index as usize) < count {
            return Some((slot + index as usize, writable));
        }
        slot += count;
    }
    None
}

/// Index of `offset` in an array of `count` registers starting at `first`.
fn array_index(offset: u32, first: u32, count: usize) -> Option<usize> {
    let index = (offset.checked_sub(first)? / 4) as usize;
    (index < count).then_some(index)
}

/// The statistics counters, kept as QEMU keeps them (saturating at all ones).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
struct StatRegs(#[serde(with = "crate::snapshot::big_array")] [u32; NR_STATS]);

impl StatRegs {
    fn slot(&mut self, offset: u32) -> Option<&mut u32> {
        self.0.get_mut((offset.wrapping_sub(STATS_FIRST) / 4) as usize)
    }

    fn increment(&mut self, offset: u32) {
        if let Some(counter) = self.slot(offset) {
            *counter = counter.saturating_add(1);
        }
    }

    /// Adds to the 64-bit counter whose low half is at `low` (saturating).
    fn add64(&mut self, low: u32, bytes: usize) {
        let old = u64::from(self.read_raw(low)) | (u64::from(self.read_raw(low + 4)) << 32);
        let new = old.saturating_add(bytes as u64);
        if let Some(counter) = self.slot(low) {
            *counter = new as u32;
        }
        if let Some(counter) = self.slot(low + 4) {
            *counter = (new >> 32) as u32;
        }
    }

    /// Counts a frame of `len_bytes` (FCS included) in its size bucket (64, 65-127,
    /// ..., 1024 and up), given the bucket registers in that order.
    fn count_size(&mut self, buckets: [u32; 6], len_bytes: usize) {
        let bucket = match len_bytes {
            0..=63 => return,
            64 => buckets[0],
            65..=127 => buckets[1],
            128..=255 => buckets[2],
            256..=511 => buckets[3],
            512..=1023 => buckets[4],
            _ => buckets[5],
        };
        self.increment(bucket);
    }

    fn read_raw(&self, offset: u32) -> u32 {
        self.0.get((offset.wrapping_sub(STATS_FIRST) / 4) as usize).copied().unwrap_or(0)
    }

    /// A read by the driver: clear on read; the high half of a 64-bit pair clears both.
    fn read(&mut self, offset: u32) -> u32 {
        let value = self.read_raw(offset);
        match offset {
            GORCL | GOTCL | TORL | TOTL => {}
            GORCH | GOTCH | TORH | TOTH => {
                for half in [offset - 4, offset] {
                    if let Some(counter) = self.slot(half) {
                        *counter = 0;
                    }
                }
            }
            _ => {
                if let Some(counter) = self.slot(offset) {
                    *counter = 0;
                }
            }
        }
        value
    }
}

/// The MAC's registers (those with behaviour are named; the rest are stored).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
struct MacRegs {
    ctrl: u32,
    /// STATUS less TXOFF, which follows the transmit unit
    status: u32,
    mdic: u32,
    eerd: u32,
    vet: u32,
    icr: u32,
    itr: u32,
    ims: u32,
    rctl: u32,
    tctl: u32,
    rdbal: u32,
    rdbah: u32,
    rdlen: u32,
    rdh: u32,
    rdt: u32,
    rdtr: u32,
    radv: u32,
    tdbal: u32,
    tdbah: u32,
    tdlen: u32,
    tdh: u32,
    tdt: u32,
    tadv: u32,
    ra: [u32; NR_RA],
    #[serde(with = "crate::snapshot::big_array")]
    mta: [u32; NR_MTA],
    #[serde(with = "crate::snapshot::big_array")]
    vfta: [u32; NR_VFTA],
    stats: StatRegs,
    #[serde(with = "crate::snapshot::big_array")]
    stored: [u32; NR_STORED],
}

impl MacRegs {
    /// The registers after power-on or a MAC reset: RAL0/RAH0 hold `mac`, valid.
    fn power_on(mac: [u8; 6]) -> Self {
        let mut ra = [0; NR_RA];
        ra[0] = u32::from_le_bytes([mac[0], mac[1], mac[2], mac[3]]);
        ra[1] = u32::from_le_bytes([mac[4], mac[5], 0, 0]) | RAH_AV;
        let mut stored = [0; NR_STORED];
        let mut slot = 0;
        for &(_, count, _, value) in &STORED {
            stored[slot..slot + count].fill(value);
            slot += count;
        }
        MacRegs {
            ctrl: CTRL_POWER_ON,
            status: STATUS_POWER_ON,
            mdic: 0,
            eerd: 0,
            vet: u32::from(ETH_P_8021Q),
            icr: 0,
            itr: 0,
            ims: 0,
            rctl: 0,
            tctl: 0,
            rdbal: 0,
            rdbah: 0,
            rdlen: 0,
            rdh: 0,
            rdt: 0,
            rdtr: 0,
            radv: 0,
            tdbal: 0,
            tdbah: 0,
            tdlen: 0,
            tdh: 0,
            tdt: 0,
            tadv: 0,
            ra,
            mta: [0; NR_MTA],
            vfta: [0; NR_VFTA],
            stats: StatRegs([0; NR_STATS]),
            stored,
        }
    }
}

/// The log limiters, one per kind of trouble.
#[derive(Clone, Debug, Default)]
struct Logs {
    /// accesses of a bad size or to a missing BAR
    access: LogLimiter,
    /// DMA to or from addresses that are not guest RAM
    dma: LogLimiter,
    /// malformed rings and packets
    ring: LogLimiter,
}

/// The card's bus-master accesses to guest memory: failures set the PCI master abort
/// bit, count and log.
struct Bus<'a> {
    mem: &'a dyn GuestMemory,
    config: &'a mut ConfigSpace,
    stats: &'a mut NicStats,
    log: &'a mut LogLimiter,
}

impl Bus<'_> {
    fn read(&mut self, addr: u64, out: &mut [u8], what: &str) -> bool {
        match self.mem.read(addr, out) {
            Ok(()) => true,
            Err(error) => {
                self.failed(addr, out.len(), what, error);
                false
            }
        }
    }

    fn write(&mut self, addr: u64, data: &[u8], what: &str) -> bool {
        match self.mem.write(addr, data) {
            Ok(()) => true,
            Err(error) => {
                self.failed(addr, data.len(), what, error);
                false
            }
        }
    }

    fn failed(&mut self, addr: u64, len_bytes: usize, what: &str, error: xen_seams::hvm::GuestMemoryError) {
        self.stats.dma_errors += 1;
        let status = self.config.read(u16::from(pci::STATUS), 2) as u16;
        self.config.set_u16(pci::STATUS, status | PCI_STATUS_RECEIVED_MASTER_ABORT);
        if self.log.allow() {
            log::warn!("e1000: DMA of {len_bytes} bytes at {addr:#x} ({what}) failed: {error}");
        }
    }
}

/// The transmitter's way out: buffers by DMA, frames to the glue's queue, counters.
struct Port<'a> {
    bus: Bus<'a>,
    queue: &'a mut VecDeque<Vec<u8>>,
    stat_regs: &'a mut StatRegs,
    ring_log: &'a mut LogLimiter,
    link_up: bool,
}

impl TxPort for Port<'_> {
    fn dma_read(&mut self, addr: u64, out: &mut [u8]) -> bool {
        self.bus.read(addr, out, "transmit buffer")
    }

    fn send(&mut self, pieces: &[&[u8]], completes_tso: bool) -> bool {
        let len_bytes: usize = pieces.iter().map(|piece| piece.len()).sum();
        if !(ETH_HEADER_BYTES..=MAX_FRAME_BYTES).contains(&len_bytes) {
            self.dropped(TxDrop::BadLength);
            return true;
        }
        // Counted as QEMU counts them (the tag not included in the octets).
        let data_bytes = if pieces.len() > 1 { len_bytes - VLAN_TAG_BYTES } else { len_bytes };
        let destination = pieces.first().and_then(|piece| piece.first()).copied().unwrap_or(0);
        let broadcast = pieces.first().is_some_and(|piece| piece.get(..6) == Some(&[0xff; 6]));
        if broadcast {
            self.stat_regs.increment(BPTC);
        } else if destination & 1 != 0 {
            self.stat_regs.increment(MPTC);
        }
        self.stat_regs.count_size([PTC64, PTC127, PTC255, PTC511, PTC1023, PTC1522], len_bytes + FCS_BYTES);
        if completes_tso {
            self.stat_regs.increment(TSCTC);
        }
        self.stat_regs.increment(TPT);
        self.stat_regs.add64(TOTL, data_bytes + FCS_BYTES);
        self.stat_regs.increment(GPTC);
        self.stat_regs.add64(GOTCL, data_bytes + FCS_BYTES);
        if !self.link_up {
            self.bus.stats.tx_dropped += 1;
            return true;
        }
        if self.queue.len() >= MAX_QUEUED_TX_FRAMES {
            self.bus.stats.tx_dropped += 1;
            return false;
        }
        self.queue.push_back(pieces.concat());
        self.bus.stats.tx_frames += 1;
        true
    }

    fn dropped(&mut self, why: TxDrop) {
        match why {
            TxDrop::Dma => {}
            TxDrop::BadLength => {
                self.bus.stats.dma_errors += 1;
                if self.ring_log.allow() {
                    log::warn!("e1000: transmit packet of a bad length (over {MAX_FRAME_BYTES} bytes?) dropped");
                }
            }
            TxDrop::QueueFull => {
                if self.ring_log.allow() {
                    log::warn!("e1000: TSO packet with more segments than the transmit queue holds: rest dropped");
                }
            }
        }
    }
}

/// An 82540EM: PCI function, registers, EEPROM, PHY, both DMA engines, and the frames
/// waiting for the glue.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct E1000 {
    mac: [u8; 6],
    config: ConfigSpace,
    regs: MacRegs,
    eeprom: Eeprom,
    phy: Phy,
    transmitter: Transmitter,
    #[serde(skip)]
    tx_queue: VecDeque<Vec<u8>>,
    /// IOADDR: the register the I/O window shows
    io_addr: u32,
    /// the wire (the stub domain's vif) is there, as [`Nic::set_link_up`] said
    wire_up: bool,
    /// autonegotiation completes at this time
    autoneg_deadline_ns: Option<u64>,
    /// the moderation window ends at this time
    moderation_deadline_ns: Option<u64>,
    /// INTA as the card drives it (before INTx disable)
    irq_asserted: bool,
    /// a transmit descriptor asked for a delayed interrupt (IDE) since the last window
    tx_ide: bool,
    /// the transmit unit waits for room in the glue's queue
    tx_stalled: bool,
    /// receive buffer size from RCTL
    rx_buffer_bytes: usize,
    /// RXDMT0 fires when free descriptors are at most RDLEN >> this
    rx_threshold_shift: u32,
    #[serde(skip)]
    stats: NicStats,
    #[serde(skip)]
    logs: Logs,
}

impl E1000 {
    /// An 82540EM with this MAC address (in its EEPROM and receive address 0), link up.
    pub fn new(mac: [u8; 6]) -> Self {
        E1000 {
            mac,
            config: config_space(),
            regs: MacRegs::power_on(mac),
            eeprom: Eeprom::new(mac),
            phy: Phy::new(),
            transmitter: Transmitter::new(),
            tx_queue: VecDeque::new(),
            io_addr: 0,
            wire_up: true,
            autoneg_deadline_ns: None,
            moderation_deadline_ns: None,
            irq_asserted: false,
            tx_ide: false,
            tx_stalled: false,
            rx_buffer_bytes: rx_buffer_bytes(0),
            rx_threshold_shift: 1,
            stats: NicStats::default(),
            logs: Logs::default(),
        }
    }

    /// The MAC address the card was made with.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// Resumes a transmit unit that paused for room in the queue (after the glue took
    /// frames); the next register access or received frame does it anyway.
    pub fn resume_transmit(&mut self, mem: &dyn GuestMemory, now_ns: u64) {
        if self.tx_stalled && self.tx_queue.len() < MAX_QUEUED_TX_FRAMES {
            self.start_transmit(mem, now_ns);
        }
    }

    fn bus_master(&self) -> bool {
        self.config.command() & pci::COMMAND_MASTER != 0
    }

    /// The TPID of 802.1Q tags: VET, or 0x8100 while VET is 0.
    fn vlan_tpid(&self) -> u16 {
        match self.regs.vet as u16 {
            0 => ETH_P_8021Q,
            tpid => tpid,
        }
    }

    // ---- register access ----

    fn read_reg(&mut self, offset: u32, now_ns: u64) -> u32 {
        let r = &mut self.regs;
        match offset {
            CTRL => r.ctrl,
            STATUS => r.status | if self.tx_stalled { STATUS_TXOFF } else { 0 },
            EECD => self.eeprom.read_eecd(),
            EERD => self.eeprom.read_eerd(r.eerd),
            MDIC => r.mdic,
            VET => r.vet,
            ICR => {
                let icr = r.icr;
                self.set_interrupt_cause(0, now_ns);
                icr
            }
            ICS => r.icr,
            IMS => r.ims,
            ITR => r.itr,
            RCTL => r.rctl,
            TCTL => r.tctl,
            RDBAL => r.rdbal,
            RDBAH => r.rdbah,
            RDLEN => r.rdlen,
            RDH => r.rdh,
            RDT => r.rdt,
            RDTR => r.rdtr,
            RADV => r.radv,
            TDBAL => r.tdbal,
            TDBAH => r.tdbah,
            TDLEN => r.tdlen,
            TDH => r.tdh,
            TDT => r.tdt,
            TADV => r.tadv,
            MANC => MANC_VALUE,
            STATS_FIRST..=STATS_LAST => r.stats.read(offset),
            _ => {
                if let Some(index) = array_index(offset, RA, NR_RA) {
                    r.ra[index]
                } else if let Some(index) = array_index(offset, MTA, NR_MTA) {
                    r.mta[index]
                } else if let Some(index) = array_index(offset, VFTA, NR_VFTA) {
                    r.vfta[index]
                } else if let Some((slot, _)) = stored_slot(offset) {
                    r.stored.get(slot).copied().unwrap_or(0)
                } else {
                    log::trace!("e1000: read of unimplemented register {offset:#x}");
                    0
                }
            }
        }
    }

    fn write_reg(&mut self, offset: u32, value: u32, mem: &dyn GuestMemory, now_ns: u64) {
        let r = &mut self.regs;
        match offset {
            CTRL if value & CTRL_RST != 0 => self.mac_reset(),
            CTRL => r.ctrl = value,
            EECD => self.eeprom.write_eecd(value),
            EERD => r.eerd = value,
            MDIC => {
                let outcome = self.phy.mdic_write(value, r.mdic);
                r.mdic = outcome.mdic;
                if outcome.restart_autoneg {
                    self.restart_autoneg(now_ns);
                }
                if outcome.mdic & MDIC_INT_EN != 0 {
                    self.set_ics(ICR_MDAC, now_ns);
                }
            }
            VET => r.vet = value,
            ICR => {
                let icr = r.icr & !value;
                self.set_interrupt_cause(icr, now_ns);
            }
            ICS => self.set_ics(value, now_ns),
            IMS => {
                r.ims |= value;
                self.set_ics(0, now_ns);
            }
            IMC => {
                r.ims &= !value;
                self.set_ics(0, now_ns);
            }
            ITR => r.itr = value & 0xffff,
            RDTR => r.rdtr = value & 0xffff,
            RADV => r.radv = value & 0xffff,
            TADV => r.tadv = value & 0xffff,
            RCTL => {
                r.rctl = value;
                self.rx_buffer_bytes = rx_buffer_bytes(value);
                self.rx_threshold_shift = ((value >> RCTL_RDMTS_SHIFT) & 3) + 1;
            }
            TCTL => {
                r.tctl = value;
                self.start_transmit(mem, now_ns);
            }
            TDT => {
                r.tdt = value & 0xffff;
                self.start_transmit(mem, now_ns);
            }
            RDBAL => r.rdbal = value,
            RDBAH => r.rdbah = value,
            RDLEN => r.rdlen = value & 0xf_ff80,
            RDH => r.rdh = value & 0xffff,
            RDT => r.rdt = value & 0xffff,
            TDBAL => r.tdbal = value,
            TDBAH => r.tdbah = value,
            TDLEN => r.tdlen = value & 0xf_ff80,
            TDH => r.tdh = value & 0xffff,
            STATUS | MANC | STATS_FIRST..=STATS_LAST => {
                log::trace!("e1000: write of {value:#x} to read-only register {offset:#x} ignored");
            }
            _ => {
                if let Some(index) = array_index(offset, RA, NR_RA) {
                    r.ra[index] = value;
                } else if let Some(index) = array_index(offset, MTA, NR_MTA) {
                    r.mta[index] = value;
                } else if let Some(index) = array_index(offset, VFTA, NR_VFTA) {
                    r.vfta[index] = value;
                } else if let Some((slot, writable)) = stored_slot(offset) {
                    if let Some(stored) = r.stored.get_mut(slot) {
                        *stored = value & writable;
                    }
                } else {
                    log::trace!("e1000: write of {value:#x} to unimplemented register {offset:#x} ignored");
                }
            }
        }
    }

    fn mmio_read(&mut self, offset: u64, size: u8, now_ns: u64) -> u32 {
        let offset = (offset & MMIO_OFFSET_MASK) as u32;
        let dword = self.read_reg(offset & !3, now_ns);
        narrow(dword >> (8 * (offset & 3)), size)
    }

    fn mmio_write(&mut self, offset: u64, size: u8, value: u32, mem: &dyn GuestMemory, now_ns: u64) {
        if size != 4 || offset & 3 != 0 {
            if self.logs.access.allow() {
                log::warn!("e1000: {size}-byte register write at {offset:#x} ignored (32-bit aligned only)");
            }
            return;
        }
        self.write_reg((offset & MMIO_OFFSET_MASK) as u32, value, mem, now_ns);
    }

    fn io_read(&mut self, offset: u64, size: u8, now_ns: u64) -> u32 {
        let dword = match offset & !3 {
            IOADDR => self.io_addr,
            IODATA => self.read_reg(self.io_addr & IOADDR_MASK, now_ns),
            _ => 0,
        };
        narrow(dword >> (8 * (offset & 3)), size)
    }

    fn io_write(&mut self, offset: u64, size: u8, value: u32, mem: &dyn GuestMemory, now_ns: u64) {
        match offset {
            IOADDR if size == 4 => self.io_addr = value,
            IODATA if size == 4 => self.write_reg(self.io_addr & IOADDR_MASK, value, mem, now_ns),
            _ => {
                if self.logs.access.allow() {
                    log::warn!("e1000: {size}-byte I/O write at {offset:#x} ignored");
                }
            }
        }
    }

    // ---- interrupts and timers ----

    /// Sets ICR to `icr` and drives INTA from `ICR & IMS` under moderation (QEMU's
    /// set_interrupt_cause).
    fn set_interrupt_cause(&mut self, icr: u32, now_ns: u64) {
        self.regs.icr = icr;
        let pending = self.regs.ims & icr;
        if !self.irq_asserted && pending != 0 {
            if self.moderation_deadline_ns.is_some() {
                // A rising edge inside the window waits for its end.
                return;
            }
            let mut units = 0;
            if self.tx_ide && pending & (ICR_TXQE | ICR_TXDW) != 0 {
                units = shortest_delay(units, self.regs.tadv * 4);
            }
            if self.regs.rdtr != 0 && pending & ICR_RXT0 != 0 {
                units = shortest_delay(units, self.regs.radv * 4);
            }
            units = shortest_delay(units, self.regs.itr).max(MIN_MODERATION_UNITS);
            self.moderation_deadline_ns = Some(now_ns.saturating_add(u64::from(units) * MODERATION_UNIT_NS));
            self.tx_ide = false;
        }
        self.irq_asserted = pending != 0;
    }

    fn set_ics(&mut self, causes: u32, now_ns: u64) {
        self.set_interrupt_cause(self.regs.icr | causes, now_ns);
    }

    /// Runs the timers that are due at `now_ns`.
    fn run_timers(&mut self, now_ns: u64) {
        if self.moderation_deadline_ns.is_some_and(|deadline| deadline <= now_ns) {
            self.moderation_deadline_ns = None;
            self.set_interrupt_cause(self.regs.icr, now_ns);
        }
        if self.autoneg_deadline_ns.is_some_and(|deadline| deadline <= now_ns) {
            self.autoneg_deadline_ns = None;
            if self.wire_up {
                self.phy.set_autoneg_done();
                self.regs.status |= STATUS_LU;
                self.set_ics(ICR_LSC, now_ns);
            }
        }
    }

    // ---- link ----

    fn link_down(&mut self) {
        self.regs.status &= !STATUS_LU;
        self.phy.set_link_down();
    }

    fn restart_autoneg(&mut self, now_ns: u64) {
        self.link_down();
        self.autoneg_deadline_ns = Some(now_ns.saturating_add(AUTONEG_NS));
    }

    // ---- resets ----

    /// CTRL.RST: the MAC's registers to their power-on values; the PHY, the link, the
    /// EEPROM contents and the frames already queued stay.
    fn mac_reset(&mut self) {
        log::debug!("e1000: MAC reset");
        self.regs = MacRegs::power_on(self.mac);
        if !self.phy.link_up() {
            self.regs.status &= !STATUS_LU;
        }
        self.eeprom.reset();
        self.transmitter.reset();
        self.io_addr = 0;
        self.moderation_deadline_ns = None;
        self.irq_asserted = false;
        self.tx_ide = false;
        self.tx_stalled = false;
        self.rx_buffer_bytes = rx_buffer_bytes(0);
        self.rx_threshold_shift = 1;
    }

    // ---- transmit ----

    fn tx_ring_base(&self) -> u64 {
        (u64::from(self.regs.tdbah) << 32) | u64::from(self.regs.tdbal & !0xf)
    }

    /// Walks the transmit ring from TDH towards TDT (QEMU's start_xmit), at most once
    /// round, pausing at a packet the queue has no room for.
    fn start_transmit(&mut self, mem: &dyn GuestMemory, now_ns: u64) {
        self.tx_stalled = false;
        if self.regs.tctl & TCTL_EN == 0 || !self.bus_master() {
            return;
        }
        let nr_descs = self.regs.tdlen / DESC_BYTES as u32;
        if self.regs.tdh == self.regs.tdt {
            self.set_ics(ICR_TXQE, now_ns);
            return;
        }
        if nr_descs == 0 || self.regs.tdh >= nr_descs {
            if self.logs.ring.allow() {
                log::warn!(
                    "e1000: transmit ring of {nr_descs} descriptors with TDH {} TDT {}: not walked",
                    self.regs.tdh,
                    self.regs.tdt
                );
            }
            return;
        }
        let base = self.tx_ring_base();
        let vlan_tpid = (self.regs.ctrl & CTRL_VME != 0).then(|| self.vlan_tpid());
        let mut causes = ICR_TXQE;
        for _ in 0..nr_descs {
            if self.regs.tdh == self.regs.tdt {
                break;
            }
            let desc_addr = base.wrapping_add(u64::from(self.regs.tdh) * DESC_BYTES);
            let mut bus = Bus { mem, config: &mut self.config, stats: &mut self.stats, log: &mut self.logs.dma };
            let mut bytes = [0u8; DESC_BYTES as usize];
            if !bus.read(desc_addr, &mut bytes, "transmit descriptor") {
                break;
            }
            let desc = TxDescriptor::from_bytes(&bytes);
            if let Some(nr_frames) = self.transmitter.frames_needed(&desc)
                && self.wire_up
                && self.tx_queue.len() + nr_frames.min(MAX_QUEUED_TX_FRAMES) > MAX_QUEUED_TX_FRAMES
            {
                self.tx_stalled = true;
                break;
            }
            self.tx_ide |= desc.lower & TXD_CMD_IDE != 0;
            let mut port = Port {
                bus,
                queue: &mut self.tx_queue,
                stat_regs: &mut self.regs.stats,
                ring_log: &mut self.logs.ring,
                link_up: self.wire_up,
            };
            self.transmitter.process(&desc, vlan_tpid, &mut port);
            if desc.wants_report() {
                port.bus.write(desc_addr + 12, &desc.done_upper().to_le_bytes(), "transmit descriptor");
                causes |= ICR_TXDW;
            }
            self.regs.tdh = (self.regs.tdh + 1) % nr_descs;
        }
        self.set_ics(causes, now_ns);
    }

    // ---- receive ----

    fn rx_ring_base(&self) -> u64 {
        (u64::from(self.regs.rdbah) << 32) | u64::from(self.regs.rdbal & !0xf)
    }

    fn nr_rx_descs(&self) -> u32 {
        self.regs.rdlen / DESC_BYTES as u32
    }

    /// The ring has buffers for `total_bytes` (QEMU's e1000_has_rxbufs).
    fn has_rx_buffers(&self, total_bytes: usize) -> bool {
        let (head, tail) = (self.regs.rdh, self.regs.rdt);
        let nr_descs = self.nr_rx_descs();
        if nr_descs == 0 || head >= nr_descs {
            return false;
        }
        if total_bytes <= self.rx_buffer_bytes {
            return head != tail;
        }
        let nr_buffers = match head.cmp(&tail) {
            core::cmp::Ordering::Less => tail - head,
            core::cmp::Ordering::Greater => nr_descs + tail - head,
            core::cmp::Ordering::Equal => return false,
        };
        total_bytes <= nr_buffers as usize * self.rx_buffer_bytes
    }

    /// The receive address filters (QEMU's receive_filter): VLAN filter, then
    /// broadcast, promiscuous, exact and hash matches.
    fn accepts(&self, frame: &[u8]) -> bool {
        let rctl = self.regs.rctl;
        if vlan_tci(frame, self.vlan_tpid()).is_some_and(|tci| rctl & RCTL_VFE != 0 && !self.vlan_allowed(tci)) {
            return false;
        }
        let Some(destination) = frame.get(..6) else { return false };
        if destination == [0xff; 6] {
            if rctl & RCTL_BAM != 0 {
                return true;
            }
        } else if destination[0] & 1 != 0 {
            if rctl & RCTL_MPE != 0 {
                return true;
            }
        } else if rctl & RCTL_UPE != 0 {
            return true;
        }
        let exact = self.regs.ra.chunks_exact(2).any(|pair| {
            let (low, high) = (pair[0], pair[1]);
            let [a0, a1, a2, a3] = low.to_le_bytes();
            let [a4, a5, _, _] = high.to_le_bytes();
            high & RAH_AV != 0 && destination == [a0, a1, a2, a3, a4, a5]
        });
        if exact {
            return true;
        }
        let shift = [4, 3, 2, 0][((rctl >> RCTL_MO_SHIFT) & 3) as usize];
        let hash = ((u32::from(destination[5]) << 8 | u32::from(destination[4])) >> shift) & 0xfff;
        self.regs.mta[(hash >> 5) as usize & (NR_MTA - 1)] & (1 << (hash & 0x1f)) != 0
    }

    fn vlan_allowed(&self, tci: u16) -> bool {
        let vid = u32::from(tci) & 0xfff;
        self.regs.vfta[(vid >> 5) as usize & (NR_VFTA - 1)] & (1 << (vid & 0x1f)) != 0
    }

    /// Ring full (or unusable): the frame is missed.
    fn overrun(&mut self, now_ns: u64) -> RxOutcome {
        self.regs.stats.increment(RNBC);
        self.regs.stats.increment(MPC);
        self.stats.rx_no_buffer += 1;
        self.set_ics(ICR_RXO, now_ns);
        RxOutcome::NoBuffer
    }

    /// Writes `data` (the frame, tag stripped) into the ring (QEMU's e1000_receive_iov).
    fn deliver(&mut self, data: &[u8], vlan_tci: Option<u16>, mem: &dyn GuestMemory, now_ns: u64) -> RxOutcome {
        let size = data.len();
        let fcs_bytes = if self.regs.rctl & RCTL_SECRC != 0 { 0 } else { FCS_BYTES };
        let total = size + fcs_bytes;
        if !self.has_rx_buffers(total) {
            return self.overrun(now_ns);
        }
        let nr_descs = self.nr_rx_descs();
        let base = self.rx_ring_base();
        let head_start = self.regs.rdh;
        let buffer_bytes = self.rx_buffer_bytes;
        let mut done = 0;
        let mut buffer_failed = false;
        let mut bus = Bus { mem, config: &mut self.config, stats: &mut self.stats, log: &mut self.logs.dma };
        loop {
            let desc_addr = base.wrapping_add(u64::from(self.regs.rdh) * DESC_BYTES);
            let mut desc = [0u8; DESC_BYTES as usize];
            if !bus.read(desc_addr, &mut desc, "receive descriptor") {
                return RxOutcome::DmaError;
            }
            let buffer = u64::from_le_bytes([desc[0], desc[1], desc[2], desc[3], desc[4], desc[5], desc[6], desc[7]]);
            let mut status = 0;
            let mut errors = 0;
            if buffer != 0 {
                let desc_bytes = (total - done).min(buffer_bytes);
                if done < size {
                    let piece = &data[done..size.min(done + buffer_bytes)];
                    if !bus.write(buffer, piece, "receive buffer") {
                        buffer_failed = true;
                    }
                }
                done += desc_bytes;
                desc[8..10].copy_from_slice(&(desc_bytes as u16).to_le_bytes());
                if done >= total {
                    status |= RXD_STAT_EOP | RXD_STAT_IXSM;
                }
                if buffer_failed {
                    errors |= RXD_ERR_RXE;
                }
            }
            // Otherwise a descriptor without a buffer is handed back empty.
            if vlan_tci.is_some() {
                status |= RXD_STAT_VP;
            }
            desc[12] = status;
            desc[13] = errors;
            desc[14..16].copy_from_slice(&vlan_tci.unwrap_or(0).to_le_bytes());
            // The status with DD goes last, so the driver never sees a half-written one.
            if !bus.write(desc_addr + 8, &desc[8..], "receive descriptor")
                || !bus.write(desc_addr + 12, &[status | RXD_STAT_DD], "receive descriptor")
            {
                return RxOutcome::DmaError;
            }
            self.regs.rdh = (self.regs.rdh + 1) % nr_descs;
            if self.regs.rdh == head_start {
                if self.logs.ring.allow() {
                    log::warn!("e1000: receive ring wrapped round within one frame of {size} bytes");
                }
                return self.overrun(now_ns);
            }
            if done >= total {
                break;
            }
        }
        let stats = &mut self.regs.stats;
        stats.count_size([PRC64, PRC127, PRC255, PRC511, PRC1023, PRC1522], total);
        stats.increment(TPR);
        stats.increment(GPRC);
        stats.add64(TORL, size + FCS_BYTES);
        stats.add64(GORCL, size + FCS_BYTES);
        if data.get(..6) == Some(&[0xff; 6]) {
            stats.increment(BPRC);
        } else if data.first().is_some_and(|byte| byte & 1 != 0) {
            stats.increment(MPRC);
        }
        let mut causes = ICR_RXT0;
        let mut tail = self.regs.rdt;
        if tail < self.regs.rdh {
            tail += nr_descs;
        }
        let free_bytes = u64::from(tail.saturating_sub(self.regs.rdh)) * DESC_BYTES;
        if free_bytes <= u64::from(self.regs.rdlen >> self.rx_threshold_shift) {
            causes |= ICR_RXDMT0;
        }
        self.set_ics(causes, now_ns);
        if buffer_failed {
            return RxOutcome::DmaError;
        }
        self.stats.rx_frames += 1;
        RxOutcome::Delivered
    }
}

impl Nic for E1000 {
    fn config(&self) -> &ConfigSpace {
        &self.config
    }

    fn config_read(&self, reg: u16, size: u8) -> u32 {
        self.config.read(reg, size)
    }

    fn config_write(&mut self, reg: u16, size: u8, value: u32) {
        self.config.write(reg, size, value);
    }

    fn read(&mut self, bar: usize, offset: u64, size: u8, mem: &dyn GuestMemory, now_ns: u64) -> u32 {
        self.run_timers(now_ns);
        self.resume_transmit(mem, now_ns);
        if !matches!(size, 1 | 2 | 4) || bar > 1 {
            if self.logs.access.allow() {
                log::warn!("e1000: {size}-byte read of BAR {bar} offset {offset:#x}: reads all ones");
            }
            return u32::MAX;
        }
        if bar == 0 { self.mmio_read(offset, size, now_ns) } else { self.io_read(offset, size, now_ns) }
    }

    fn write(&mut self, bar: usize, offset: u64, size: u8, value: u32, mem: &dyn GuestMemory, now_ns: u64) {
        self.run_timers(now_ns);
        self.resume_transmit(mem, now_ns);
        match bar {
            0 => self.mmio_write(offset, size, value, mem, now_ns),
            1 => self.io_write(offset, size, value, mem, now_ns),
            _ => {
                if self.logs.access.allow() {
                    log::warn!("e1000: write to BAR {bar} ignored");
                }
            }
        }
    }

    fn irq_level(&self) -> bool {
        self.irq_asserted && self.config.command() & pci::COMMAND_INTX_DISABLE == 0
    }

    fn take_tx_frame(&mut self) -> Option<Vec<u8>> {
        self.tx_queue.pop_front()
    }

    fn receive(&mut self, frame: &[u8], mem: &dyn GuestMemory, now_ns: u64) -> RxOutcome {
        self.run_timers(now_ns);
        self.resume_transmit(mem, now_ns);
        if self.regs.status & STATUS_LU == 0 || self.regs.rctl & RCTL_EN == 0 {
            self.stats.rx_filtered += 1;
            return RxOutcome::Filtered;
        }
        if !self.bus_master() {
            return RxOutcome::DmaError;
        }
        let mut padded = [0u8; MIN_FRAME_BYTES];
        let frame = match frame.len() {
            len if len < MIN_FRAME_BYTES => {
                padded[..len].copy_from_slice(frame);
                &padded[..]
            }
            _ => frame,
        };
        let max_bytes = if self.regs.rctl & RCTL_LPE != 0 { MAX_LONG_FRAME_BYTES } else { MAX_SHORT_FRAME_BYTES };
        if (frame.len() > max_bytes && self.regs.rctl & RCTL_SBP == 0) || frame.len() > MAX_LONG_FRAME_BYTES {
            self.regs.stats.increment(ROC);
            self.stats.rx_filtered += 1;
            return RxOutcome::Filtered;
        }
        if !self.accepts(frame) {
            self.stats.rx_filtered += 1;
            return RxOutcome::Filtered;
        }
        let tci = if self.regs.ctrl & CTRL_VME != 0 { vlan_tci(frame, self.vlan_tpid()) } else { None };
        match tci {
            Some(tci) => {
                let mut stripped = Vec::with_capacity(frame.len() - VLAN_TAG_BYTES);
                stripped.extend_from_slice(&frame[..12]);
                stripped.extend_from_slice(&frame[12 + VLAN_TAG_BYTES..]);
                self.deliver(&stripped, Some(tci), mem, now_ns)
            }
            None => self.deliver(frame, None, mem, now_ns),
        }
    }

    fn can_receive(&self) -> bool {
        self.regs.status & STATUS_LU != 0
            && self.regs.rctl & RCTL_EN != 0
            && self.bus_master()
            && self.has_rx_buffers(1)
    }

    fn set_link_up(&mut self, up: bool, now_ns: u64) {
        self.run_timers(now_ns);
        if up == self.wire_up {
            return;
        }
        self.wire_up = up;
        let old_status = self.regs.status;
        if !up {
            self.link_down();
            self.autoneg_deadline_ns = None;
        } else if self.phy.autoneg_enabled() && !self.phy.autoneg_complete() {
            if self.autoneg_deadline_ns.is_none() {
                self.restart_autoneg(now_ns);
            }
        } else {
            self.regs.status |= STATUS_LU;
            self.phy.set_link_up();
        }
        if self.regs.status != old_status {
            self.set_ics(ICR_LSC, now_ns);
        }
    }

    fn next_deadline_ns(&self) -> Option<u64> {
        match (self.moderation_deadline_ns, self.autoneg_deadline_ns) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn tick(&mut self, now_ns: u64) {
        self.run_timers(now_ns);
    }

    fn stats(&self) -> NicStats {
        self.stats
    }

    fn reset(&mut self) {
        let fresh = E1000::new(self.mac);
        let wire_up = self.wire_up;
        let stats = self.stats;
        let logs = core::mem::take(&mut self.logs);
        *self = E1000 { stats, logs, wire_up, ..fresh };
        if !wire_up {
            self.link_down();
        }
    }

    fn save_state(&self) -> (SectionId, u16, Vec<u8>) {
        (SectionId::E1000, Self::STATE_VERSION, snapshot::encode(self))
    }

    fn load_state(&mut self, section: &Section<'_>, time: TimeBase) -> Result<(), SnapshotError> {
        let invalid = |what: &str| SnapshotError::invalid(SectionId::E1000, what);
        if section.id != SectionId::E1000 {
            return Err(invalid("the card here is an e1000, the saved one is not"));
        }
        let mut saved: E1000 = section.decode(Self::STATE_VERSION)?;
        let mut config = self.config.clone();
        config.load_state(&saved.config).map_err(invalid)?;
        if !saved.transmitter.saved_state_fits() {
            return Err(invalid("its transmit buffer is over the card's"));
        }
        saved.config = config;
        // What follows from RCTL is taken from RCTL; the glue's queue is empty now.
        saved.rx_buffer_bytes = rx_buffer_bytes(saved.regs.rctl);
        saved.rx_threshold_shift = ((saved.regs.rctl >> RCTL_RDMTS_SHIFT) & 3) + 1;
        saved.tx_stalled = false;
        saved.autoneg_deadline_ns = saved.autoneg_deadline_ns.map(|t| time.rebase(t));
        saved.moderation_deadline_ns = saved.moderation_deadline_ns.map(|t| time.rebase(t));
        let (stats, logs) = (self.stats, core::mem::take(&mut self.logs));
        *self = E1000 { stats, logs, ..saved };
        Ok(())
    }
}

impl E1000 {
    /// The version of the [`SectionId::E1000`] section this model writes and reads.
    pub const STATE_VERSION: u16 = 1;
}

/// The card's PCI function before the firmware assigns its BARs.
fn config_space() -> ConfigSpace {
    let mut config = ConfigSpace::new(
        PCI_VENDOR_INTEL,
        PCI_DEVICE_82540EM,
        PCI_REVISION,
        PCI_CLASS_NETWORK,
        PCI_SUBCLASS_ETHERNET,
        0x00,
        0x00,
    );
    config.set_u16(pci::SUBSYSTEM_VENDOR_ID, pci::QEMU_SUBSYSTEM_VENDOR_ID);
    config.set_u16(pci::SUBSYSTEM_ID, pci::QEMU_SUBSYSTEM_ID);
    config.set_u8(pci::CACHE_LINE_SIZE, PCI_CACHE_LINE_SIZE);
    config.set_u8(pci::INTERRUPT_PIN, 1);
    config.set_bar(0, BarSpec { kind: BarKind::Memory32 { prefetchable: false }, size_bytes: MMIO_BAR_BYTES });
    config.set_bar(1, BarSpec { kind: BarKind::Io, size_bytes: IO_BAR_BYTES });
    config
}

/// The receive buffer size RCTL selects (QEMU's e1000x_rxbufsize).
fn rx_buffer_bytes(rctl: u32) -> usize {
    let size_bits = (rctl >> RCTL_SZ_SHIFT) & 3;
    match (rctl & RCTL_BSEX != 0, size_bits) {
        (true, 1) => 16384,
        (true, 2) => 8192,
        (true, 3) => 4096,
        (false, 1) => 1024,
        (false, 2) => 512,
        (false, 3) => 256,
        _ => 2048,
    }
}

/// The smaller of two moderation delays, 0 meaning "none yet" (QEMU's mit_update_delay).
fn shortest_delay(current: u32, candidate: u32) -> u32 {
    if candidate != 0 && (current == 0 || candidate < current) { candidate } else { current }
}

/// The low `size` bytes of `value`.
fn narrow(value: u32, size: u8) -> u32 {
    match size {
        1 => value & 0xff,
        2 => value & 0xffff,
        _ => value,
    }
}

/// The TCI of an 802.1Q-tagged frame whose type field is `tpid`.
fn vlan_tci(frame: &[u8], tpid: u16) -> Option<u16> {
    match frame.get(12..16) {
        Some(&[t0, t1, c0, c1]) if u16::from_be_bytes([t0, t1]) == tpid => Some(u16::from_be_bytes([c0, c1])),
        _ => None,
    }
}

pub use crate::vec_memory::VecGuestMemory;

/// The registers the fuzz driver writes most, as the driver's configuration touches them.
const FUZZ_REGISTERS: [u32; 24] = [
    CTRL, EECD, EERD, MDIC, VET, ICR, ICS, IMS, IMC, ITR, RCTL, TCTL, RDBAL, RDLEN, RDH, RDT, RDTR, RADV, TDBAL, TDLEN,
    TDH, TDT, TADV, MTA,
];
/// Guest RAM of the fuzz driver, and the mask that keeps addresses inside it.
const FUZZ_RAM_BYTES: usize = 0x1_0000;
const FUZZ_RAM_MASK: u32 = FUZZ_RAM_BYTES as u32 - 1;
/// Where the fuzz driver's configuration puts the rings (16 descriptors each).
const FUZZ_TX_RING: u32 = 0x0000;
const FUZZ_RX_RING: u32 = 0x1000;
const FUZZ_RING_BYTES: u32 = 16 * DESC_BYTES as u32;

/// The input of [`fuzz_e1000`], consumed from the front.
struct FuzzInput<'a>(&'a [u8]);

impl<'a> FuzzInput<'a> {
    fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        let (taken, rest) = self.0.split_at_checked(n)?;
        self.0 = rest;
        Some(taken)
    }

    fn byte(&mut self) -> Option<u8> {
        self.bytes(1).map(|bytes| bytes[0])
    }

    fn u16(&mut self) -> Option<u16> {
        self.bytes(2).map(|bytes| u16::from_le_bytes([bytes[0], bytes[1]]))
    }

    fn u32(&mut self) -> Option<u32> {
        self.bytes(4).map(|bytes| u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }
}

/// The card, its RAM and clock, as [`fuzz_e1000`] drives them.
struct FuzzRig {
    nic: E1000,
    ram: VecGuestMemory,
    now_ns: u64,
}

impl FuzzRig {
    fn write(&mut self, reg: u32, value: u32) {
        self.nic.write(0, u64::from(reg), 4, value, &self.ram, self.now_ns);
    }

    fn read(&mut self, reg: u32) -> u32 {
        self.nic.read(0, u64::from(reg), 4, &self.ram, self.now_ns)
    }

    /// What Linux's open leaves: bus master on, rings in RAM, units and interrupts on,
    /// every address accepted (the fuzzer picks destinations at random).
    fn configure(&mut self) {
        let command = pci::COMMAND_IO | pci::COMMAND_MEMORY | pci::COMMAND_MASTER;
        self.nic.config_write(u16::from(pci::BAR0), 4, 0xf000_0000);
        self.nic.config_write(u16::from(pci::COMMAND), 2, u32::from(command));
        for (reg, value) in [
            (CTRL, CTRL_POWER_ON | CTRL_VME),
            (TDBAL, FUZZ_TX_RING),
            (TDLEN, FUZZ_RING_BYTES),
            (RDBAL, FUZZ_RX_RING),
            (RDLEN, FUZZ_RING_BYTES),
            (RCTL, RCTL_EN | RCTL_BAM | RCTL_UPE | RCTL_MPE),
            (TCTL, TCTL_EN),
            (IMS, u32::MAX),
        ] {
            self.write(reg, value);
        }
    }

    /// Writes `nr_descs` transmit descriptors from TDT (buffers in RAM, lengths and
    /// command bits from the input, EOP usually on the last) and rings the doorbell.
    fn transmit(&mut self, input: &mut FuzzInput<'_>) -> Option<()> {
        let nr_descs = u32::from(input.byte()? % 6) + 1;
        let ring_len = (self.nic.regs.tdlen / DESC_BYTES as u32).max(1);
        let mut tail = self.nic.regs.tdt;
        for i in 0..nr_descs {
            let command = input.byte()?;
            let kind = input.byte()?;
            let addr = u64::from(u32::from(input.u16()?) & FUZZ_RAM_MASK);
            let len = u32::from(input.u16()? % 2048);
            let mut lower = u32::from(command) << 24 & !(TXD_CMD_DEXT | TXD_DTYP_D) | len;
            lower |= match kind % 4 {
                0 => TXD_CMD_DEXT,
                1 => TXD_CMD_DEXT | TXD_DTYP_D,
                _ => 0,
            };
            if i == nr_descs - 1 && kind & 0x08 == 0 {
                lower |= TXD_CMD_EOP | TXD_CMD_RS;
            }
            let upper = input.u32()?;
            let mut desc = [0u8; DESC_BYTES as usize];
            desc[..8].copy_from_slice(&addr.to_le_bytes());
            desc[8..12].copy_from_slice(&lower.to_le_bytes());
            desc[12..].copy_from_slice(&upper.to_le_bytes());
            let base = self.nic.tx_ring_base();
            let _ = self.ram.write(base.wrapping_add(u64::from(tail % ring_len) * DESC_BYTES), &desc);
            tail = (tail + 1) % ring_len;
        }
        self.write(TDT, tail);
        Some(())
    }

    /// Gives the card `count` receive buffers from RDT (some without an address).
    fn refill(&mut self, input: &mut FuzzInput<'_>) -> Option<()> {
        let count = input.byte()? % 16;
        let ring_len = self.nic.nr_rx_descs().max(1);
        let mut tail = self.nic.regs.rdt;
        for _ in 0..count {
            let buffer = u64::from(u32::from(input.u16()?) & FUZZ_RAM_MASK & !0x7);
            let mut desc = [0u8; DESC_BYTES as usize];
            desc[..8].copy_from_slice(&buffer.to_le_bytes());
            let base = self.nic.rx_ring_base();
            let _ = self.ram.write(base.wrapping_add(u64::from(tail % ring_len) * DESC_BYTES), &desc);
            tail = (tail + 1) % ring_len;
        }
        self.write(RDT, tail);
        Some(())
    }

    /// A frame from the wire to our MAC, broadcast, a multicast group or anyone,
    /// sometimes VLAN-tagged.
    fn receive(&mut self, input: &mut FuzzInput<'_>) -> Option<()> {
        let kind = input.byte()?;
        let len = usize::from(input.u16()? % 1600);
        let mut frame: Vec<u8> = (0..len).map(|i| (i as u8) ^ kind).collect();
        let destination = match kind % 4 {
            0 => self.nic.mac,
            1 => [0xff; 6],
            2 => [0x33, 0x33, 0, 0, 0, kind],
            _ => [kind & 0xfe; 6],
        };
        let n = frame.len().min(6);
        frame[..n].copy_from_slice(&destination[..n]);
        if kind & 0x10 != 0 && frame.len() >= 16 {
            frame[12..14].copy_from_slice(&ETH_P_8021Q.to_be_bytes());
        }
        self.nic.receive(&frame, &self.ram, self.now_ns);
        Some(())
    }

    /// The card's promises; a panic here is a finding.
    fn check(&self) {
        assert!(self.nic.tx_queue.len() <= MAX_QUEUED_TX_FRAMES, "transmit queue over its bound");
        assert!(
            self.nic.tx_queue.iter().all(|frame| (ETH_HEADER_BYTES..=MAX_FRAME_BYTES).contains(&frame.len())),
            "a queued frame of a bad length"
        );
        assert!(!self.nic.irq_level() || self.nic.regs.icr & self.nic.regs.ims != 0, "INTA without an unmasked cause");
    }
}

/// The fuzz driver for this card (for a cargo-fuzz target in devices/fuzz, and a host
/// test on pseudo-random input). `data` is a stream of operations against one card
/// with 64 KiB of guest RAM, configured first as Linux's open leaves it: register
/// writes and reads (mostly the registers that matter, values often kept inside RAM),
/// RAM writes, bursts of transmit descriptors (legacy, context and data, any command
/// bits and lengths, buffers in RAM) with a doorbell, receive buffers handed over,
/// frames from the wire, time passing, link changes, PCI COMMAND writes, the glue
/// taking frames, I/O window accesses, resets. After each operation the card's promises
/// are checked: the glue's queue stays within [`MAX_QUEUED_TX_FRAMES`] frames of 14 to
/// [`MAX_FRAME_BYTES`] bytes, and INTA is only raised for an unmasked cause. Returns
/// how many operations ran (every complete one); a panic is the fuzzer's finding.
pub fn fuzz_e1000(data: &[u8]) -> usize {
    let mut rig = FuzzRig {
        nic: E1000::new([0x52, 0x54, 0x00, 0x12, 0x34, 0x56]),
        ram: VecGuestMemory::new(FUZZ_RAM_BYTES),
        now_ns: 0,
    };
    rig.configure();
    let mut input = FuzzInput(data);
    let mut nr_ops = 0;
    while let Some(op) = input.byte() {
        let ran = match op % 14 {
            0 | 1 => (|| {
                let pick = input.byte()?;
                let value = input.u32()?;
                let reg = if pick & 0x80 != 0 {
                    (value >> 15) & IOADDR_MASK
                } else {
                    FUZZ_REGISTERS[usize::from(pick) % FUZZ_REGISTERS.len()]
                };
                let mut value = if pick & 0x40 != 0 { value & FUZZ_RAM_MASK } else { value };
                // Mostly leave the card running: a MAC reset or receiver off now and then.
                if pick & 0x20 == 0 {
                    match reg {
                        CTRL => value &= !CTRL_RST,
                        RCTL => value |= RCTL_EN,
                        _ => {}
                    }
                }
                rig.write(reg, value);
                Some(())
            })(),
            2 => input.byte().map(|pick| {
                rig.read(FUZZ_REGISTERS[usize::from(pick) % FUZZ_REGISTERS.len()]);
            }),
            3 => (|| {
                let addr = u64::from(input.u32()? & FUZZ_RAM_MASK);
                let len = usize::from(input.byte()? % 32);
                // Writes past the end of RAM are refused, as a real guest's would be.
                let _ = rig.ram.write(addr, input.bytes(len)?);
                Some(())
            })(),
            4 | 5 => rig.transmit(&mut input),
            6 => rig.refill(&mut input),
            7 | 8 => rig.receive(&mut input),
            9 => input.u32().map(|ns| {
                rig.now_ns = rig.now_ns.saturating_add(u64::from(ns) * 64);
                rig.nic.tick(rig.now_ns);
            }),
            10 => input.byte().map(|bits| match bits % 4 {
                0 => rig.nic.set_link_up(bits & 4 != 0, rig.now_ns),
                1 => rig.nic.config_write(u16::from(pci::COMMAND), 2, u32::from(bits) & 0x0407),
                2 => {
                    if bits == 0xfe {
                        rig.nic.reset();
                        rig.configure();
                    }
                }
                _ => {
                    rig.nic.resume_transmit(&rig.ram, rig.now_ns);
                }
            }),
            11 => input.byte().map(|count| {
                for _ in 0..count % 80 {
                    rig.nic.take_tx_frame();
                }
            }),
            12 => (|| {
                let offset = u64::from(input.byte()? % 8);
                let value = input.u32()?;
                rig.nic.write(1, offset, 4, value, &rig.ram, rig.now_ns);
                rig.nic.read(1, offset, 4, &rig.ram, rig.now_ns);
                Some(())
            })(),
            _ => (|| {
                // Back to the standard configuration, or another ring layout (any
                // length, any place in RAM).
                let [a, b, c, d] = input.u32()?.to_le_bytes();
                if a & 1 == 0 {
                    rig.configure();
                    return Some(());
                }
                rig.write(TDBAL, u32::from(a) << 8);
                rig.write(TDLEN, u32::from(b) << 7);
                rig.write(RDBAL, u32::from(c) << 8);
                rig.write(RDLEN, u32::from(d) << 7);
                rig.write(RCTL, rig.nic.regs.rctl ^ (u32::from(a ^ d) << RCTL_SZ_SHIFT & (3 << RCTL_SZ_SHIFT)));
                Some(())
            })(),
        };
        if ran.is_none() {
            break;
        }
        nr_ops += 1;
        rig.check();
    }
    nr_ops
}
