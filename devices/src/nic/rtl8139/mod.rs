//! A Realtek RTL8139C in classic (non-C+) mode: PCI 10ec:8139 revision 0x10, the card
//! libxl names by default (`-device rtl8139`), as Linux's 8139too drives it.
//!
//! The PCI revision is what makes Linux pick the driver: 8139cp refuses revisions below
//! 0x20 ("not an 8139C+ compatible chip") and 8139too refuses 0x20 and above, so at 0x10
//! the guest uses the classic register set and none of C+ mode's descriptor rings and
//! offloads. (QEMU presents revision 0x20, for 8139cp.) TCR's version bits say RTL-8139C
//! (0x74000000), which 8139too identifies as a chip with `HasLWake`: it keeps the clock
//! running and never writes HltClk 'H'.
//!
//! What the guest sees, through BAR0 (256 I/O ports) or BAR1 (256 bytes of MMIO), the
//! same registers either way, and INTA:
//!
//! - IDR0-5 (the MAC, loaded from the EEPROM at power-on) and MAR0-7 (the multicast
//!   hash filter); the 93C46 EEPROM (words 7-9 hold the MAC given to [`Rtl8139::new`])
//!   bit-banged through 9346CR, which also unlocks CONFIG0-4 and BMCR for writing
//!   (CONFIG5 is always writable).
//! - Four transmit slots, TSD0-3 and TSAD0-3, used in turn. Writing a TSD with OWN clear
//!   hands the slot to the card: the frame (SIZE bytes at TSAD) is copied from guest
//!   memory into the queue the glue drains ([`Nic::take_tx_frame`]), then OWN and TOK are
//!   set and ISR.TOK raised. A slot whose size is outside 14..=1518 bytes or whose buffer
//!   is not in guest RAM ends with TABT and ISR.TER instead (and PCI status "received
//!   master abort" for a bad address).
//! - The receive ring at RBSTART, 8, 16, 32 or 64 KiB (RCR.RBLEN). Each accepted frame is
//!   written at CBR as {u16 status, u16 length with the 4-byte FCS, frame (padded to 60
//!   bytes as the wire would), FCS}, and CBR advances to the next dword. With RCR.WRAP set
//!   (what 8139too does, with 2 KiB of slack after its ring) a packet that reaches the end
//!   of the ring carries on past it; with WRAP clear, and always for 64 KiB, it continues
//!   at the ring's start. The driver frees space by writing CAPR (16 less than its read
//!   offset); CR.BUFE reads set when the ring is empty. A frame that does not fit, with
//!   at least one spare dword kept so that CBR never catches up with the read offset, is
//!   dropped with ISR.RXOVW and counted in MPC. A ring outside guest RAM drops the frame
//!   with ISR.RER.
//! - RCR's address filter: broadcast (AB), multicast through the MAR hash (AM; 8139too's
//!   `ether_crc >> 26`), our IDR address (APM) and any other unicast address (AAP).
//! - IMR/ISR (write 1 to clear) driving INTA as `ISR & IMR != 0`, unless the PCI command
//!   register disables INTx.
//! - CR: RST (a software reset that keeps IDR and MAR, as the data sheet says), RE and
//!   TE. Clearing RE resets the ring offsets to 0, which is what 8139too's receive error
//!   recovery (RE off, RE on, RCR, `cur_rx = 0`) expects; unlike QEMU, writing RCR does
//!   not, because 8139too rewrites RCR at run time when the multicast list changes.
//! - The PHY as 8139too reads it (`mdio_read` of phy 32 maps to BMCR, BMSR, ANAR, ANLPAR,
//!   ANER), MSR and CSCR. A link change sets ISR bit 5 (PUN/LinkChg) and CSCR bit 11,
//!   which 8139too reads in its interrupt handler before it checks the media again;
//!   acknowledging ISR bit 5 clears it. The link is up at 100 Mbit/s full duplex, with
//!   autonegotiation complete, from [`Rtl8139::new`] until [`Nic::set_link_up`] says
//!   otherwise. While it is down nothing is received, and a transmitted frame completes
//!   with TOK and CRS (carrier lost) but goes nowhere (counted as dropped).
//! - TCTR counting at the 33 MHz PCI clock from its last write, and TimerInt raising
//!   ISR.TimeOut whenever TCTR reaches it ([`Nic::next_deadline_ns`]). 8139too uses
//!   neither.
//! - TCR loopback (LBK = 11) turns transmitted frames into received ones.
//!
//! [`Nic::reset`] (the machine's reset) returns the card to its power-on state: config
//! space, IDR from the EEPROM, MAR cleared; the link, the statistics and frames the glue
//! has not taken yet stay.
//!
//! DMA happens only while the PCI command register enables bus mastering, and only
//! through [`GuestMemory`] copies. Every frame a guest can make the card handle is at most
//! 1526 bytes on the stack; the only memory that grows is the transmit queue, bounded by
//! [`MAX_QUEUED_TX_FRAMES`]. Each register access does a bounded amount of work (at most
//! four slots per transmission pass).

mod crc;
mod eeprom;
#[cfg(test)]
mod tests;

use alloc::collections::VecDeque;
use alloc::vec;
use alloc::vec::Vec;

use xen_seams::hvm::{GuestMemory, GuestMemoryError};

use self::crc::{ethernet_fcs, multicast_hash_bit};
use self::eeprom::Eeprom93c46;
use super::{MAX_FRAME_BYTES, MAX_QUEUED_TX_FRAMES, Nic, NicStats, RxOutcome};
use crate::pci::{
    BarKind, BarSpec, COMMAND, COMMAND_INTX_DISABLE, COMMAND_MASTER, ConfigSpace, INTERRUPT_PIN, QEMU_SUBSYSTEM_ID,
    QEMU_SUBSYSTEM_VENDOR_ID, STATUS, SUBSYSTEM_ID, SUBSYSTEM_VENDOR_ID,
};
use crate::ratelimit::LogLimiter;
use crate::snapshot::{self, Section, SectionId, SnapshotError, TimeBase};

pub const VENDOR_REALTEK: u16 = 0x10ec;
pub const DEVICE_RTL8139: u16 = 0x8139;
/// The PCI revision: below 0x20, so Linux binds 8139too (classic mode), not 8139cp.
pub const REVISION: u8 = 0x10;
const CLASS_NETWORK: u8 = 0x02;
const SUBCLASS_ETHERNET: u8 = 0x00;

/// BAR0: the registers as I/O ports.
pub const BAR_IO: usize = 0;
/// BAR1: the same registers as MMIO.
pub const BAR_MMIO: usize = 1;
/// The size of either BAR.
pub const REGISTERS_LEN_BYTES: u32 = 0x100;

// Register offsets (RTL8139C data sheet; names as 8139too has them in comments).
const IDR0: u8 = 0x00; // MAC0
const MAR0: u8 = 0x08;
const TSD0: u8 = 0x10; // TxStatus0
const TSAD0: u8 = 0x20; // TxAddr0
const RBSTART: u8 = 0x30; // RxBuf
const CR: u8 = 0x37; // ChipCmd
const CAPR: u8 = 0x38; // RxBufPtr
const CBR: u8 = 0x3a; // RxBufAddr
const IMR: u8 = 0x3c; // IntrMask
const ISR: u8 = 0x3e; // IntrStatus
const TCR: u8 = 0x40; // TxConfig
const RCR: u8 = 0x44; // RxConfig
const TCTR: u8 = 0x48; // Timer
const MPC: u8 = 0x4c; // RxMissed
const CR9346: u8 = 0x50; // Cfg9346
const CONFIG0: u8 = 0x51;
const CONFIG1: u8 = 0x52;
const TIMER_INT: u8 = 0x54;
const MSR: u8 = 0x58; // MediaStatus
const CONFIG3: u8 = 0x59;
const CONFIG4: u8 = 0x5a;
const HLTCLK: u8 = 0x5b;
const MULINT: u8 = 0x5c; // MultiIntr
const RERID: u8 = 0x5e;
const TX_SUMMARY: u8 = 0x60; // TSAD in the data sheet
const BMCR: u8 = 0x62; // BasicModeCtrl
const BMSR: u8 = 0x64; // BasicModeStatus
const ANAR: u8 = 0x66; // NWayAdvert
const ANLPAR: u8 = 0x68; // NWayLPAR
const ANER: u8 = 0x6a; // NWayExpansion
const CSCR: u8 = 0x74;
const CONFIG5: u8 = 0xd8;

const CR_RST: u8 = 0x10;
const CR_RE: u8 = 0x08;
const CR_TE: u8 = 0x04;
const CR_BUFE: u8 = 0x01;

const ISR_ROK: u16 = 0x0001;
const ISR_RER: u16 = 0x0002;
const ISR_TOK: u16 = 0x0004;
const ISR_TER: u16 = 0x0008;
const ISR_RXOVW: u16 = 0x0010;
/// PUN/LinkChg (8139too's RxUnderrun)
const ISR_LINK_CHANGE: u16 = 0x0020;
const ISR_TIMEOUT: u16 = 0x4000;
/// The bits IMR and ISR have (7-12 are reserved).
const ISR_BITS: u16 = 0xe07f;

const TSD_SIZE: u32 = 0x1fff;
const TSD_OWN: u32 = 0x2000;
const TSD_TUN: u32 = 0x4000;
const TSD_TOK: u32 = 0x8000;
const TSD_TABT: u32 = 0x4000_0000;
const TSD_CRS: u32 = 0x8000_0000;
/// SIZE, OWN and the early transmit threshold; the status bits clear on a write.
const TSD_WRITABLE: u32 = 0x003f_3fff;
const TSD_RESERVED: u32 = 0x00c0_0000;

/// TCR's hardware version bits (30-26, 23-22): RTL-8139C in 8139too's table.
const TCR_VERSION_RTL8139C: u32 = 0x7400_0000;
/// Interframe gap, loopback, CRC off, DMA burst, retry count.
const TCR_WRITABLE: u32 = 0x0307_07f0;
const TCR_LOOPBACK: u32 = 0x0006_0000;

const RCR_AAP: u32 = 0x01;
const RCR_APM: u32 = 0x02;
const RCR_AM: u32 = 0x04;
const RCR_AB: u32 = 0x08;
/// Bit 7: a packet at the end of the ring carries on past it (8139too's `RxNoWrap`).
const RCR_WRAP: u32 = 0x80;
const RCR_RBLEN_SHIFT: u32 = 11;
const RCR_WRITABLE: u32 = 0x0f03_ffbf;

const RX_STATUS_ROK: u32 = 0x0001;
const RX_STATUS_BAR: u32 = 0x2000;
const RX_STATUS_PAM: u32 = 0x4000;
const RX_STATUS_MAR: u32 = 0x8000;

const CR9346_MODE: u8 = 0xc0;
const CR9346_AUTOLOAD: u8 = 0x40;
const CR9346_PROGRAM: u8 = 0x80;
const CR9346_CONFIG_WRITE: u8 = 0xc0;
const CR9346_EECS: u8 = 0x08;
const CR9346_EESK: u8 = 0x04;
const CR9346_EEDI: u8 = 0x02;
const CR9346_EEDO: u8 = 0x01;
const CR9346_WRITABLE: u8 = 0xce;

/// CONFIG1 at reset: I/O and memory mapping enabled (read-only bits).
const CONFIG1_RESET: u8 = 0x0c;
const CONFIG1_READ_ONLY: u8 = 0x0c;
/// CONFIG3 at reset: fast back-to-back.
const CONFIG3_RESET: u8 = 0x01;
const CONFIG3_WRITABLE: u8 = 0x70;
const CONFIG0_WRITABLE: u8 = 0x07;
const CONFIG4_READ_ONLY: u8 = 0x0a;
const CONFIG5_WRITABLE: u8 = 0x7f;
const MULINT_READ_ONLY: u16 = 0xf000;

const BMCR_RESET_BIT: u16 = 0x8000;
/// Speed 100, autonegotiation enable, full duplex: writable with 9346CR unlocked.
const BMCR_WRITABLE: u16 = 0x3100;
const BMCR_RESET: u16 = 0x1000;
/// 100BASE-TX full/half, 10BASE-T full/half, autonegotiation able, extended registers.
const BMSR_BASE: u16 = 0x7809;
const BMSR_LINK: u16 = 0x0004;
const BMSR_AN_COMPLETE: u16 = 0x0020;
/// Every 10/100 mode, full duplex, IEEE 802.3.
const ANAR_RESET: u16 = 0x05e1;
const ANLPAR_LINK_UP: u16 = 0x05e1;
/// The link partner can autonegotiate.
const ANER_VALUE: u16 = 0x0001;
/// TX and RX flow control, auxiliary power; 100 Mbit/s.
const MSR_BASE: u8 = 0xd0;
/// MSR.LINKB: the link is down.
const MSR_LINK_DOWN: u8 = 0x04;
/// LD, heart beat, F_LINK_100 (QEMU's reset value).
const CSCR_BASE: u16 = 0x0340;
const CSCR_LINK_OK: u16 = 0x0400;
const CSCR_LINK_CHANGE: u16 = 0x0800;

/// PCI status: the card, as bus master, got a master abort (write 1 to clear).
const PCI_STATUS_RECEIVED_MASTER_ABORT: u16 = 0x2000;
/// PCI status: INTx is pending (read-only).
const PCI_STATUS_INTERRUPT: u16 = 0x0008;

const NR_TX_SLOTS: usize = 4;
const ETH_HEADER_BYTES: usize = 14;
/// The shortest frame on the wire, without FCS: shorter ones are padded on receive.
const ETH_MIN_FRAME_BYTES: usize = 60;
const FCS_BYTES: usize = 4;
const RX_HEADER_BYTES: usize = 4;
/// The largest packet the card writes into the ring.
const MAX_RX_PACKET_BYTES: usize = RX_HEADER_BYTES + MAX_FRAME_BYTES + FCS_BYTES;
const RX_RING_MIN_BYTES: u32 = 8 * 1024;
/// The 64 KiB ring ignores RCR.WRAP.
const RX_RING_MAX_BYTES: u32 = 64 * 1024;
/// CAPR at reset: the read offset 0, minus 16.
const CAPR_RESET: u16 = 0xfff0;
const CAPR_BIAS: u32 = 16;
/// MPC counts 24 bits.
const MPC_MASK: u32 = 0x00ff_ffff;
const PCI_CLOCK_HZ: u128 = 33_000_000;
const NS_PER_SEC: u128 = 1_000_000_000;

/// Why a transmission or a reception did not reach guest memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
enum DmaFault {
    #[error("bus mastering is off")]
    NoBusMaster,
    #[error("a {len_bytes}-byte frame is outside 14..=1518 bytes")]
    BadLength { len_bytes: usize },
    #[error("guest memory at {gpa:#x}: {error}")]
    Memory { gpa: u64, error: GuestMemoryError },
}

/// The card: config space, registers, EEPROM, link, transmit queue.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct Rtl8139 {
    config: ConfigSpace,
    eeprom: Eeprom93c46,
    /// IDR0-5
    mac: [u8; 6],
    mar: [u8; 8],
    tsd: [u32; NR_TX_SLOTS],
    tsad: [u32; NR_TX_SLOTS],
    /// the slot the transmitter looks at next
    tx_next_slot: usize,
    rbstart: u32,
    /// CR's RE and TE
    command: u8,
    /// CAPR as last written: the driver's read offset minus 16
    capr: u16,
    /// CBR: where the next packet goes, an offset below the ring length
    rx_write_offset: u32,
    imr: u16,
    isr: u16,
    tcr: u32,
    rcr: u32,
    /// MPC
    missed_packets: u32,
    cr9346: u8,
    config0: u8,
    config1: u8,
    config3: u8,
    config4: u8,
    config5: u8,
    hltclk: u8,
    multi_intr: u16,
    bmcr: u16,
    anar: u16,
    link_up: bool,
    /// CSCR bit 11, until the driver acknowledges ISR.LinkChg
    link_changed: bool,
    timer_int: u32,
    /// when TCTR was last zeroed
    tctr_base_ns: u64,
    /// TCTR (without wrapping) when TimerInt was last compared
    timer_checked_ticks: u64,
    /// the latest time seen, so that time never runs backwards
    last_now_ns: u64,
    #[serde(skip)]
    tx_queue: VecDeque<Vec<u8>>,
    #[serde(skip)]
    stats: NicStats,
    #[serde(skip)]
    tx_log: LogLimiter,
    #[serde(skip)]
    rx_log: LogLimiter,
}

impl Rtl8139 {
    /// A card with this MAC in its EEPROM, at power-on, link up.
    pub fn new(mac: [u8; 6]) -> Self {
        let mut words = [0u16; eeprom::NR_WORDS];
        words[0] = 0x8129;
        words[1] = VENDOR_REALTEK;
        words[2] = DEVICE_RTL8139;
        for (i, pair) in mac.chunks_exact(2).enumerate() {
            words[7 + i] = u16::from_le_bytes([pair[0], pair[1]]);
        }
        let mut card = Rtl8139 {
            config: config_space(),
            eeprom: Eeprom93c46::new(words),
            mac,
            mar: [0; 8],
            tsd: [TSD_OWN; NR_TX_SLOTS],
            tsad: [0; NR_TX_SLOTS],
            tx_next_slot: 0,
            rbstart: 0,
            command: 0,
            capr: CAPR_RESET,
            rx_write_offset: 0,
            imr: 0,
            isr: 0,
            tcr: TCR_VERSION_RTL8139C,
            rcr: 0,
            missed_packets: 0,
            cr9346: 0,
            config0: 0,
            config1: CONFIG1_RESET,
            config3: CONFIG3_RESET,
            config4: 0,
            config5: 0,
            hltclk: 0,
            multi_intr: 0,
            bmcr: BMCR_RESET,
            anar: ANAR_RESET,
            link_up: true,
            link_changed: false,
            timer_int: 0,
            tctr_base_ns: 0,
            timer_checked_ticks: 0,
            last_now_ns: 0,
            tx_queue: VecDeque::new(),
            stats: NicStats::default(),
            tx_log: LogLimiter::new(),
            rx_log: LogLimiter::new(),
        };
        card.power_on();
        card
    }

    /// The MAC the EEPROM holds (words 7-9).
    pub fn eeprom_mac(&self) -> [u8; 6] {
        let mut mac = [0u8; 6];
        for (i, pair) in mac.chunks_exact_mut(2).enumerate() {
            pair.copy_from_slice(&self.eeprom.word(7 + i).to_le_bytes());
        }
        mac
    }

    /// The power-on state: config space, IDR from the EEPROM, every register at its
    /// reset value. The link, the statistics and frames waiting for the glue stay.
    fn power_on(&mut self) {
        self.config = config_space();
        self.mac = self.eeprom_mac();
        self.mar = [0; 8];
        self.tsad = [0; NR_TX_SLOTS];
        self.rcr = 0;
        self.missed_packets = 0;
        self.multi_intr = 0;
        self.config4 = 0;
        self.cr9346 = 0;
        self.hltclk = 0;
        self.eeprom.set_pins(false, false, false);
        self.soft_reset();
    }

    /// CR.RST (and the reload 9346CR auto-load mode does): transmitter and receiver off,
    /// slots back to the host, ring offsets to 0, interrupts masked and clear, PHY,
    /// TCR, CONFIG0/1/3/5 and the timer at their reset values. IDR, MAR, TSAD, RCR and
    /// MPC keep their values.
    fn soft_reset(&mut self) {
        self.command = 0;
        self.tsd = [TSD_OWN; NR_TX_SLOTS];
        self.tx_next_slot = 0;
        self.rbstart = 0;
        self.reset_rx_ring();
        self.imr = 0;
        self.isr = 0;
        self.tcr = TCR_VERSION_RTL8139C;
        self.config0 = 0;
        self.config1 = CONFIG1_RESET;
        self.config3 = CONFIG3_RESET;
        self.config5 = 0;
        self.bmcr = BMCR_RESET;
        self.anar = ANAR_RESET;
        self.link_changed = false;
        self.timer_int = 0;
        self.tctr_base_ns = self.last_now_ns;
        self.timer_checked_ticks = 0;
    }

    fn reset_rx_ring(&mut self) {
        self.capr = CAPR_RESET;
        self.rx_write_offset = 0;
    }

    fn bus_master(&self) -> bool {
        self.config.command() & COMMAND_MASTER != 0
    }

    fn config_unlocked(&self) -> bool {
        self.cr9346 & CR9346_MODE == CR9346_CONFIG_WRITE
    }

    fn rx_ring_len(&self) -> u32 {
        RX_RING_MIN_BYTES << ((self.rcr >> RCR_RBLEN_SHIFT) & 3)
    }

    /// Where the driver reads next: CAPR + 16, within the ring.
    fn rx_read_offset(&self) -> u32 {
        (u32::from(self.capr) + CAPR_BIAS) % self.rx_ring_len()
    }

    /// Bytes the card may still write before reaching the driver's read offset.
    fn rx_free_bytes(&self) -> u32 {
        let ring_len = self.rx_ring_len();
        let used = (self.rx_write_offset + ring_len - self.rx_read_offset()) % ring_len;
        ring_len - used
    }

    fn rx_ring_empty(&self) -> bool {
        self.rx_write_offset == self.rx_read_offset()
    }

    /// ISR & IMR: what the card would signal on INTA.
    fn interrupt_pending(&self) -> bool {
        self.isr & self.imr != 0
    }

    // ---- registers -------------------------------------------------------------------

    /// Reads `size` bytes at `offset` byte by byte; bytes past the registers read 0xff.
    fn read_registers(&mut self, offset: u64, size: u8, now_ns: u64) -> u32 {
        self.advance_timer(now_ns);
        let mut value = 0u32;
        for i in 0..size {
            let byte = match register_byte(offset, i) {
                Some(at) => {
                    let (base, _) = register_span(at);
                    (self.register_value(base) >> (8 * u32::from(at - base))) as u8
                }
                None => 0xff,
            };
            value |= u32::from(byte) << (8 * u32::from(i));
        }
        log::trace!("rtl8139: read {offset:#04x}/{size} = {value:#x}");
        value
    }

    /// Writes `size` bytes at `offset`: each register touched gets one write with the
    /// bytes that fall in it (a partial write keeps the other bytes).
    fn write_registers(&mut self, offset: u64, size: u8, value: u32, mem: &dyn GuestMemory, now_ns: u64) {
        log::trace!("rtl8139: write {offset:#04x}/{size} = {value:#x}");
        self.advance_timer(now_ns);
        let mut i = 0u8;
        while i < size {
            let Some(at) = register_byte(offset, i) else {
                i += 1;
                continue;
            };
            let (base, _) = register_span(at);
            let (mut bits, mut mask) = (0u32, 0u32);
            while i < size {
                let Some(at) = register_byte(offset, i).filter(|&at| register_span(at).0 == base) else {
                    break;
                };
                let shift = 8 * u32::from(at - base);
                bits |= ((value >> (8 * u32::from(i))) & 0xff) << shift;
                mask |= 0xff << shift;
                i += 1;
            }
            self.write_register(base, bits, mask, mem);
        }
    }

    /// The whole value of the register starting at `base`.
    fn register_value(&self, base: u8) -> u32 {
        match base {
            IDR0..=0x05 => u32::from(self.mac[usize::from(base - IDR0)]),
            MAR0..=0x0f => u32::from(self.mar[usize::from(base - MAR0)]),
            TSD0..=0x1f => self.tsd[usize::from((base - TSD0) / 4)],
            TSAD0..=0x2f => self.tsad[usize::from((base - TSAD0) / 4)],
            RBSTART => self.rbstart,
            CR => u32::from(self.command | if self.rx_ring_empty() { CR_BUFE } else { 0 }),
            CAPR => u32::from(self.capr),
            CBR => self.rx_write_offset,
            IMR => u32::from(self.imr),
            ISR => u32::from(self.isr),
            TCR => self.tcr,
            RCR => self.rcr,
            TCTR => self.timer_checked_ticks as u32,
            MPC => self.missed_packets,
            // The EEPROM is selected only in programming mode.
            CR9346 => u32::from(self.cr9346 | if self.eeprom.data_out() { CR9346_EEDO } else { 0 }),
            CONFIG0 => u32::from(self.config0),
            CONFIG1 => u32::from(self.config1),
            TIMER_INT => self.timer_int,
            MSR => u32::from(MSR_BASE | if self.link_up { 0 } else { MSR_LINK_DOWN }),
            CONFIG3 => u32::from(self.config3),
            CONFIG4 => u32::from(self.config4),
            HLTCLK => u32::from(self.hltclk),
            MULINT => u32::from(self.multi_intr),
            RERID => u32::from(REVISION),
            TX_SUMMARY => self.tx_summary(),
            BMCR => u32::from(self.bmcr),
            BMSR => u32::from(BMSR_BASE | if self.link_up { BMSR_LINK | BMSR_AN_COMPLETE } else { 0 }),
            ANAR => u32::from(self.anar),
            ANLPAR => u32::from(if self.link_up { ANLPAR_LINK_UP } else { 0 }),
            ANER => u32::from(ANER_VALUE),
            CSCR => u32::from(
                CSCR_BASE
                    | if self.link_up { CSCR_LINK_OK } else { 0 }
                    | if self.link_changed { CSCR_LINK_CHANGE } else { 0 },
            ),
            CONFIG5 => u32::from(self.config5),
            _ => 0,
        }
    }

    /// TSAD (0x60): TOK, TUN, TABT and OWN of the four slots.
    fn tx_summary(&self) -> u32 {
        let mut summary = 0;
        for (slot, &tsd) in self.tsd.iter().enumerate() {
            let bit = |flag: u32, shift: usize| if tsd & flag != 0 { 1u32 << (shift + slot) } else { 0 };
            summary |= bit(TSD_TOK, 12) | bit(TSD_TUN, 8) | bit(TSD_TABT, 4) | bit(TSD_OWN, 0);
        }
        summary
    }

    /// A write of the bits in `mask` to the register starting at `base`.
    fn write_register(&mut self, base: u8, bits: u32, mask: u32, mem: &dyn GuestMemory) {
        let merge = |old: u32| (old & !mask) | (bits & mask);
        match base {
            IDR0..=0x05 => self.mac[usize::from(base - IDR0)] = bits as u8,
            MAR0..=0x0f => self.mar[usize::from(base - MAR0)] = bits as u8,
            TSD0..=0x1f => {
                let slot = usize::from((base - TSD0) / 4);
                let old = self.tsd[slot];
                self.tsd[slot] = (merge(old) & TSD_WRITABLE) | (old & TSD_RESERVED);
                self.transmit_pending(mem);
            }
            TSAD0..=0x2f => {
                let slot = usize::from((base - TSAD0) / 4);
                self.tsad[slot] = merge(self.tsad[slot]);
            }
            RBSTART => self.rbstart = merge(self.rbstart),
            CR => self.write_command(bits as u8, mem),
            CAPR => self.capr = merge(u32::from(self.capr)) as u16,
            IMR => self.imr = merge(u32::from(self.imr)) as u16 & ISR_BITS,
            ISR => {
                let clear = (bits & mask) as u16;
                self.isr &= !clear;
                if clear & ISR_LINK_CHANGE != 0 {
                    self.link_changed = false;
                }
            }
            TCR => {
                // As QEMU: ignored while the transmitter is off (8139too enables TE first).
                if self.command & CR_TE != 0 {
                    self.tcr = (merge(self.tcr) & TCR_WRITABLE) | TCR_VERSION_RTL8139C;
                }
            }
            RCR => {
                self.rcr = merge(self.rcr) & RCR_WRITABLE;
                self.rx_write_offset %= self.rx_ring_len();
            }
            TCTR => {
                self.tctr_base_ns = self.last_now_ns;
                self.timer_checked_ticks = 0;
            }
            MPC => self.missed_packets = 0,
            CR9346 => self.write_cr9346(bits as u8),
            CONFIG0 if self.config_unlocked() => {
                self.config0 = (bits as u8 & CONFIG0_WRITABLE) | (self.config0 & !CONFIG0_WRITABLE);
            }
            CONFIG1 if self.config_unlocked() => {
                self.config1 = (bits as u8 & !CONFIG1_READ_ONLY) | (self.config1 & CONFIG1_READ_ONLY);
            }
            CONFIG3 if self.config_unlocked() => {
                self.config3 = (bits as u8 & CONFIG3_WRITABLE) | (self.config3 & !CONFIG3_WRITABLE);
            }
            CONFIG4 if self.config_unlocked() => {
                self.config4 = (bits as u8 & !CONFIG4_READ_ONLY) | (self.config4 & CONFIG4_READ_ONLY);
            }
            CONFIG5 => self.config5 = (bits as u8 & CONFIG5_WRITABLE) | (self.config5 & !CONFIG5_WRITABLE),
            TIMER_INT => self.timer_int = merge(self.timer_int),
            HLTCLK => self.hltclk = bits as u8,
            MULINT => {
                let value = merge(u32::from(self.multi_intr)) as u16;
                self.multi_intr = (value & !MULINT_READ_ONLY) | (self.multi_intr & MULINT_READ_ONLY);
            }
            BMCR => self.write_bmcr(merge(u32::from(self.bmcr)) as u16),
            ANAR => self.anar = merge(u32::from(self.anar)) as u16,
            _ => log::trace!("rtl8139: write to {base:#04x} ignored"),
        }
    }

    /// CR: RST resets, then RE and TE take the written values.
    fn write_command(&mut self, value: u8, mem: &dyn GuestMemory) {
        if value & CR_RST != 0 {
            self.soft_reset();
        }
        let old = self.command;
        self.command = value & (CR_RE | CR_TE);
        if old & CR_RE != 0 && self.command & CR_RE == 0 {
            self.reset_rx_ring();
        }
        if old & CR_TE == 0 && self.command & CR_TE != 0 {
            self.transmit_pending(mem);
        }
    }

    /// 9346CR: the EEPROM pins in programming mode, a reload in auto-load mode.
    fn write_cr9346(&mut self, value: u8) {
        let value = value & CR9346_WRITABLE;
        match value & CR9346_MODE {
            CR9346_PROGRAM => {
                self.eeprom.set_pins(value & CR9346_EECS != 0, value & CR9346_EESK != 0, value & CR9346_EEDI != 0);
                self.cr9346 = value;
            }
            CR9346_AUTOLOAD => {
                // Loads IDR from the EEPROM, resets the rest, back to normal mode.
                self.eeprom.set_pins(false, false, false);
                self.mac = self.eeprom_mac();
                self.soft_reset();
                self.cr9346 = 0;
            }
            _ => {
                self.eeprom.set_pins(false, false, false);
                self.cr9346 = value;
            }
        }
    }

    /// BMCR: reset and restart autonegotiation are self-clearing; speed, autonegotiation
    /// and duplex change only with 9346CR unlocked.
    fn write_bmcr(&mut self, value: u16) {
        if value & BMCR_RESET_BIT != 0 {
            self.bmcr = BMCR_RESET;
            self.anar = ANAR_RESET;
        } else if self.config_unlocked() {
            self.bmcr = (value & BMCR_WRITABLE) | (self.bmcr & !BMCR_WRITABLE);
        }
    }

    // ---- transmit --------------------------------------------------------------------

    /// Sends the slots the driver has handed over, in turn, from the current one.
    fn transmit_pending(&mut self, mem: &dyn GuestMemory) {
        if self.command & CR_TE == 0 {
            return;
        }
        for _ in 0..NR_TX_SLOTS {
            let slot = self.tx_next_slot;
            if self.tsd[slot] & TSD_OWN != 0 {
                break;
            }
            self.transmit_slot(slot, mem);
            self.tx_next_slot = (slot + 1) % NR_TX_SLOTS;
        }
    }

    fn transmit_slot(&mut self, slot: usize, mem: &dyn GuestMemory) {
        let len_bytes = (self.tsd[slot] & TSD_SIZE) as usize;
        let mut buffer = [0u8; MAX_FRAME_BYTES];
        let gpa = u64::from(self.tsad[slot]);
        let fetched = self.fetch_tx_frame(gpa, len_bytes, &mut buffer, mem);
        let frame = match fetched {
            Ok(frame) => frame,
            Err(fault) => {
                self.tsd[slot] |= TSD_OWN | TSD_TABT;
                self.isr |= ISR_TER;
                self.stats.dma_errors += 1;
                if matches!(fault, DmaFault::Memory { .. }) {
                    self.set_master_abort();
                }
                if self.tx_log.allow() {
                    log::warn!("rtl8139: transmit slot {slot} aborted: {fault}");
                }
                return;
            }
        };
        self.tsd[slot] |= TSD_OWN | TSD_TOK;
        self.isr |= ISR_TOK;
        if self.tcr & TCR_LOOPBACK == TCR_LOOPBACK {
            self.receive_frame(frame, mem);
        } else if !self.link_up {
            // Nobody on the wire: sent into the void, carrier lost.
            self.tsd[slot] |= TSD_CRS;
            self.stats.tx_dropped += 1;
        } else if self.tx_queue.len() >= MAX_QUEUED_TX_FRAMES {
            self.stats.tx_dropped += 1;
        } else {
            self.tx_queue.push_back(frame.to_vec());
            self.stats.tx_frames += 1;
        }
    }

    /// Copies a slot's frame out of guest memory into `buffer`.
    fn fetch_tx_frame<'a>(
        &self,
        gpa: u64,
        len_bytes: usize,
        buffer: &'a mut [u8; MAX_FRAME_BYTES],
        mem: &dyn GuestMemory,
    ) -> Result<&'a [u8], DmaFault> {
        let frame = buffer
            .get_mut(..len_bytes)
            .filter(|frame| frame.len() >= ETH_HEADER_BYTES)
            .ok_or(DmaFault::BadLength { len_bytes })?;
        if !self.bus_master() {
            return Err(DmaFault::NoBusMaster);
        }
        mem.read(gpa, frame).map_err(|error| DmaFault::Memory { gpa, error })?;
        Ok(frame)
    }

    /// PCI status: the card's DMA got a master abort.
    fn set_master_abort(&mut self) {
        let status = self.config.read(u16::from(STATUS), 2) as u16;
        self.config.set_u16(STATUS, status | PCI_STATUS_RECEIVED_MASTER_ABORT);
    }

    // ---- receive ---------------------------------------------------------------------

    fn receive_frame(&mut self, frame: &[u8], mem: &dyn GuestMemory) -> RxOutcome {
        if !self.link_up || self.command & CR_RE == 0 {
            self.stats.rx_filtered += 1;
            return RxOutcome::Filtered;
        }
        if frame.len() < ETH_HEADER_BYTES || frame.len() > MAX_FRAME_BYTES {
            if self.rx_log.allow() {
                log::warn!("rtl8139: dropped a {}-byte frame from the wire", frame.len());
            }
            self.stats.rx_filtered += 1;
            return RxOutcome::Filtered;
        }
        let Some(address_status) = self.address_filter(frame) else {
            self.stats.rx_filtered += 1;
            return RxOutcome::Filtered;
        };

        let padded_len = frame.len().max(ETH_MIN_FRAME_BYTES);
        let packet_len = RX_HEADER_BYTES + padded_len + FCS_BYTES;
        let aligned_len = (packet_len as u32 + 3) & !3;
        if aligned_len >= self.rx_free_bytes() {
            self.isr |= ISR_RXOVW;
            self.missed_packets = (self.missed_packets + 1) & MPC_MASK;
            self.stats.rx_no_buffer += 1;
            return RxOutcome::NoBuffer;
        }

        let mut packet = [0u8; MAX_RX_PACKET_BYTES];
        let header = RX_STATUS_ROK | address_status | (((padded_len + FCS_BYTES) as u32) << 16);
        packet[..RX_HEADER_BYTES].copy_from_slice(&header.to_le_bytes());
        let body = RX_HEADER_BYTES..RX_HEADER_BYTES + padded_len;
        packet[RX_HEADER_BYTES..RX_HEADER_BYTES + frame.len()].copy_from_slice(frame);
        let fcs = ethernet_fcs(&packet[body.clone()]);
        packet[body.end..packet_len].copy_from_slice(&fcs.to_le_bytes());

        if let Err(fault) = self.write_rx_packet(&packet[..packet_len], mem) {
            self.isr |= ISR_RER;
            self.stats.dma_errors += 1;
            if matches!(fault, DmaFault::Memory { .. }) {
                self.set_master_abort();
            }
            if self.rx_log.allow() {
                log::warn!("rtl8139: received frame dropped: {fault}");
            }
            return RxOutcome::DmaError;
        }
        self.rx_write_offset = (self.rx_write_offset + aligned_len) % self.rx_ring_len();
        self.isr |= ISR_ROK;
        self.stats.rx_frames += 1;
        RxOutcome::Delivered
    }

    /// The receive status bits of an accepted frame (which address matched), or None.
    fn address_filter(&self, frame: &[u8]) -> Option<u32> {
        let destination: [u8; 6] = frame.get(..6)?.try_into().ok()?;
        if destination == [0xff; 6] {
            (self.rcr & RCR_AB != 0).then_some(RX_STATUS_BAR)
        } else if destination[0] & 1 != 0 {
            let bit = multicast_hash_bit(&destination);
            let hashed = self.mar.get(usize::from(bit >> 3)).is_some_and(|byte| byte & (1 << (bit & 7)) != 0);
            (self.rcr & RCR_AM != 0 && hashed).then_some(RX_STATUS_MAR)
        } else if destination == self.mac {
            (self.rcr & (RCR_APM | RCR_AAP) != 0).then_some(RX_STATUS_PAM)
        } else {
            (self.rcr & RCR_AAP != 0).then_some(0)
        }
    }

    /// Writes one packet at CBR: in one piece past the ring's end with RCR.WRAP (below
    /// 64 KiB), or continued at the ring's start.
    fn write_rx_packet(&self, packet: &[u8], mem: &dyn GuestMemory) -> Result<(), DmaFault> {
        if !self.bus_master() {
            return Err(DmaFault::NoBusMaster);
        }
        let ring_len = self.rx_ring_len();
        let overflows_end = self.rcr & RCR_WRAP != 0 && ring_len < RX_RING_MAX_BYTES;
        let to_end = ring_len.saturating_sub(self.rx_write_offset) as usize;
        let first_len = if overflows_end { packet.len() } else { packet.len().min(to_end) };
        let (first, rest) = packet.split_at(first_len);
        let start = u64::from(self.rbstart);
        let gpa = start + u64::from(self.rx_write_offset);
        mem.write(gpa, first).map_err(|error| DmaFault::Memory { gpa, error })?;
        if !rest.is_empty() {
            mem.write(start, rest).map_err(|error| DmaFault::Memory { gpa: start, error })?;
        }
        Ok(())
    }

    // ---- timer -----------------------------------------------------------------------

    /// Brings TCTR to `now_ns` and raises ISR.TimeOut if it passed TimerInt meanwhile.
    fn advance_timer(&mut self, now_ns: u64) {
        let now_ns = now_ns.max(self.last_now_ns);
        self.last_now_ns = now_ns;
        let ticks = pci_ticks(now_ns.saturating_sub(self.tctr_base_ns));
        if self.timer_int != 0 && next_timer_match(self.timer_checked_ticks, self.timer_int) <= ticks {
            self.isr |= ISR_TIMEOUT;
        }
        self.timer_checked_ticks = ticks;
    }
}

/// The config space at power-on: 10ec:8139 revision 0x10, Ethernet, QEMU's subsystem ids,
/// BAR0 256 I/O ports, BAR1 256 bytes of memory, INTA.
fn config_space() -> ConfigSpace {
    let mut config =
        ConfigSpace::new(VENDOR_REALTEK, DEVICE_RTL8139, REVISION, CLASS_NETWORK, SUBCLASS_ETHERNET, 0x00, 0x00);
    config.set_u16(SUBSYSTEM_VENDOR_ID, QEMU_SUBSYSTEM_VENDOR_ID);
    config.set_u16(SUBSYSTEM_ID, QEMU_SUBSYSTEM_ID);
    config.set_bar(BAR_IO, BarSpec { kind: BarKind::Io, size_bytes: REGISTERS_LEN_BYTES });
    config.set_bar(
        BAR_MMIO,
        BarSpec { kind: BarKind::Memory32 { prefetchable: false }, size_bytes: REGISTERS_LEN_BYTES },
    );
    config.set_u8(INTERRUPT_PIN, 1);
    config
}

/// The register offset of byte `i` of an access at `offset`, if it is inside the 256.
fn register_byte(offset: u64, i: u8) -> Option<u8> {
    offset.checked_add(u64::from(i)).and_then(|at| u8::try_from(at).ok())
}

/// The register byte `offset` belongs to: its first byte and its width.
fn register_span(offset: u8) -> (u8, u8) {
    match offset {
        TSD0..=0x33 | TCR..=0x4f | TIMER_INT..=0x57 => (offset & !3, 4),
        CAPR..=0x3f | MULINT..=0x5d | TX_SUMMARY..=0x6b | CSCR..=0x75 => (offset & !1, 2),
        _ => (offset, 1),
    }
}

/// TCTR ticks in `elapsed_ns`.
fn pci_ticks(elapsed_ns: u64) -> u64 {
    (u128::from(elapsed_ns) * PCI_CLOCK_HZ / NS_PER_SEC) as u64
}

/// The first TCTR value (without wrapping) after `after_ticks` whose low 32 bits are
/// `timer_int`.
fn next_timer_match(after_ticks: u64, timer_int: u32) -> u64 {
    let candidate = (after_ticks & !0xffff_ffff).saturating_add(u64::from(timer_int));
    if candidate <= after_ticks { candidate.saturating_add(1 << 32) } else { candidate }
}

impl Nic for Rtl8139 {
    fn config(&self) -> &ConfigSpace {
        &self.config
    }

    /// Config space, with STATUS bit 3 showing a pending interrupt.
    fn config_read(&self, reg: u16, size: u8) -> u32 {
        let mut value = self.config.read(reg, size);
        if self.interrupt_pending() && matches!(size, 1 | 2 | 4) {
            for i in 0..u16::from(size) {
                if reg.checked_add(i) == Some(u16::from(STATUS)) {
                    value |= u32::from(PCI_STATUS_INTERRUPT) << (8 * i);
                }
            }
        }
        value
    }

    fn config_write(&mut self, reg: u16, size: u8, value: u32) {
        self.config.write(reg, size, value);
    }

    fn read(&mut self, bar: usize, offset: u64, size: u8, _mem: &dyn GuestMemory, now_ns: u64) -> u32 {
        if !matches!(bar, BAR_IO | BAR_MMIO) || !matches!(size, 1 | 2 | 4) {
            log::trace!("rtl8139: read of BAR {bar} {offset:#x}/{size}: all ones");
            return u32::MAX;
        }
        self.read_registers(offset, size, now_ns)
    }

    fn write(&mut self, bar: usize, offset: u64, size: u8, value: u32, mem: &dyn GuestMemory, now_ns: u64) {
        if !matches!(bar, BAR_IO | BAR_MMIO) || !matches!(size, 1 | 2 | 4) {
            log::trace!("rtl8139: write of BAR {bar} {offset:#x}/{size}: ignored");
            return;
        }
        self.write_registers(offset, size, value, mem, now_ns);
    }

    fn irq_level(&self) -> bool {
        self.interrupt_pending() && self.config.command() & COMMAND_INTX_DISABLE == 0
    }

    fn take_tx_frame(&mut self) -> Option<Vec<u8>> {
        self.tx_queue.pop_front()
    }

    fn receive(&mut self, frame: &[u8], mem: &dyn GuestMemory, now_ns: u64) -> RxOutcome {
        self.advance_timer(now_ns);
        self.receive_frame(frame, mem)
    }

    /// Room for the largest packet, or a card that drops frames anyway (receiver off,
    /// link down, no bus mastering), so that the glue never holds frames for it; or a
    /// driver that unmasked Rx Buffer Overflow (QEMU's `rtl8139_can_receive` says the
    /// same). The last is what keeps 8139too going: its NAPI poll looks at the ring only
    /// while ISR has an Rx bit, and when its budget runs out with the ring refilled after
    /// its last CAPR write, its own ack has cleared ROK, the ring is full and the poll
    /// ends with interrupts unmasked and nothing pending. Only a frame offered to a full
    /// ring (RXOVW, an interrupt) makes it look again; a glue holding frames without
    /// offering them would wait for it forever (ours keeps that frame and offers it
    /// again after the guest's next register write). While NAPI runs (RXOVW masked) the
    /// glue holds frames without offering them. The answer changes with register writes
    /// (CAPR, CR, IMR).
    fn can_receive(&self) -> bool {
        if !self.link_up || self.command & CR_RE == 0 || !self.bus_master() || self.imr & ISR_RXOVW != 0 {
            return true;
        }
        let largest = (MAX_RX_PACKET_BYTES as u32 + 3) & !3;
        largest < self.rx_free_bytes()
    }

    fn set_link_up(&mut self, up: bool, now_ns: u64) {
        self.advance_timer(now_ns);
        if self.link_up != up {
            self.link_up = up;
            self.link_changed = true;
            self.isr |= ISR_LINK_CHANGE;
        }
    }

    /// When TCTR next reaches TimerInt, while TimerInt is not 0.
    fn next_deadline_ns(&self) -> Option<u64> {
        if self.timer_int == 0 {
            return None;
        }
        let ticks = next_timer_match(self.timer_checked_ticks, self.timer_int);
        let ns = (u128::from(ticks) * NS_PER_SEC).div_ceil(PCI_CLOCK_HZ);
        Some(self.tctr_base_ns.saturating_add(u64::try_from(ns).unwrap_or(u64::MAX)))
    }

    fn tick(&mut self, now_ns: u64) {
        self.advance_timer(now_ns);
    }

    fn stats(&self) -> NicStats {
        self.stats
    }

    fn reset(&mut self) {
        self.power_on();
    }

    fn save_state(&self) -> (SectionId, u16, Vec<u8>) {
        (SectionId::Rtl8139, Self::STATE_VERSION, snapshot::encode(self))
    }

    fn load_state(&mut self, section: &Section<'_>, time: TimeBase) -> Result<(), SnapshotError> {
        let invalid = |what: &str| SnapshotError::invalid(SectionId::Rtl8139, what);
        if section.id != SectionId::Rtl8139 {
            return Err(invalid("the card here is an RTL8139, the saved one is not"));
        }
        let mut saved: Rtl8139 = section.decode(Self::STATE_VERSION)?;
        let mut config = self.config.clone();
        config.load_state(&saved.config).map_err(invalid)?;
        if saved.tx_next_slot >= NR_TX_SLOTS {
            return Err(invalid("its next transmit slot is not one of the four"));
        }
        if saved.rx_write_offset >= saved.rx_ring_len() {
            return Err(invalid("its receive write offset is outside its ring"));
        }
        saved.config = config;
        saved.tctr_base_ns = time.rebase(saved.tctr_base_ns);
        saved.last_now_ns = time.rebase(saved.last_now_ns);
        let (stats, tx_log, rx_log) = (self.stats, self.tx_log.clone(), self.rx_log.clone());
        *self = Rtl8139 { stats, tx_log, rx_log, ..saved };
        Ok(())
    }
}

impl Rtl8139 {
    /// The version of the [`SectionId::Rtl8139`] section this model writes and reads.
    pub const STATE_VERSION: u16 = 1;
}

/// Operations [`fuzz_rtl8139`] decodes, one per 8 bytes of input.
const FUZZ_OP_BYTES: usize = 8;
/// Guest RAM the fuzz driver gives the card: 128 KiB, so that rings and buffers fall
/// inside, across the end and outside.
const FUZZ_RAM_BYTES: usize = 128 * 1024;
/// The registers fuzzed operations aim at, most of the time.
const FUZZ_REGISTERS: [u8; 24] = [
    IDR0, MAR0, TSD0, 0x14, 0x18, 0x1c, TSAD0, 0x24, 0x28, 0x2c, RBSTART, CR, CAPR, IMR, ISR, TCR, RCR, TCTR, MPC,
    CR9346, CONFIG1, TIMER_INT, BMCR, CONFIG5,
];

/// The fuzz driver (devices/fuzz's `rtl8139` target and a host test): every 8 bytes of
/// `data` become one operation on a card with 128 KiB of guest RAM: a register write or
/// read (mostly at real registers, through either BAR), a frame from the wire (to our
/// MAC, broadcast, multicast or elsewhere, of any length up to 1600 bytes), a write into
/// guest memory (descriptor and buffer contents), a config space write (bus mastering on
/// and off), a link change, time passing, the glue taking frames, a reset. Returns how
/// many operations ran, which is all of them: a panic, or a broken bound (frames queued,
/// ring offsets), is the finding.
pub fn fuzz_rtl8139(data: &[u8]) -> usize {
    fuzz_run(data).0
}

/// [`fuzz_rtl8139`], also returning the card's statistics.
fn fuzz_run(data: &[u8]) -> (usize, NicStats) {
    const MAC: [u8; 6] = [0x00, 0x16, 0x3e, 0x12, 0x34, 0x56];
    let mut card = Rtl8139::new(MAC);
    let ram = crate::vec_memory::VecGuestMemory::new(FUZZ_RAM_BYTES);
    let mut now_ns = 0u64;
    let mut ran = 0;
    for op in data.chunks_exact(FUZZ_OP_BYTES) {
        let word = u32::from_le_bytes([op[4], op[5], op[6], op[7]]);
        let offset = if op[1] & 0x80 != 0 {
            u64::from(op[2])
        } else {
            u64::from(FUZZ_REGISTERS[usize::from(op[2]) % FUZZ_REGISTERS.len()])
        };
        let bar = if op[1] & 0x40 != 0 { BAR_MMIO } else { BAR_IO };
        let size = [1, 2, 4][usize::from(op[3] % 3)];
        match op[0] % 12 {
            0..=3 => card.write(bar, offset, size, word, &ram, now_ns),
            4 => {
                card.read(bar, offset, size, &ram, now_ns);
            }
            5 | 6 => {
                let len_bytes = usize::from(u16::from_le_bytes([op[1], op[2]])) % 1600;
                let mut frame = vec![op[3]; len_bytes];
                let destination: [u8; 6] = match op[4] % 4 {
                    0 => MAC,
                    1 => [0xff; 6],
                    2 => [0x01, 0x00, 0x5e, 0x00, 0x00, op[5]],
                    _ => [op[5], op[6], op[7], op[5], op[6], op[7]],
                };
                for (byte, &value) in frame.iter_mut().zip(destination.iter()) {
                    *byte = value;
                }
                card.receive(&frame, &ram, now_ns);
            }
            7 => {
                let gpa = (usize::from(u16::from_le_bytes([op[1], op[2]])) << 1) % FUZZ_RAM_BYTES;
                let _ = ram.write(gpa as u64, &op[3..]);
            }
            8 => {
                let reg = if op[1] & 1 == 0 { u16::from(COMMAND) } else { u16::from(op[2]) };
                card.config_write(reg, size, word);
            }
            9 => card.set_link_up(op[1] & 1 == 0, now_ns),
            10 => {
                now_ns = now_ns.saturating_add(u64::from(word) * 16);
                if card.next_deadline_ns().is_some_and(|deadline| deadline <= now_ns) {
                    card.tick(now_ns);
                }
            }
            _ => {
                for _ in 0..usize::from(op[1] % 8) {
                    card.take_tx_frame();
                }
                if op[2] == 0xff {
                    card.reset();
                }
            }
        }
        card.irq_level();
        card.can_receive();
        assert!(card.tx_queue.len() <= MAX_QUEUED_TX_FRAMES, "transmit queue over its bound");
        assert!(card.rx_write_offset < card.rx_ring_len(), "CBR outside the ring");
        assert!(card.rx_write_offset.is_multiple_of(4), "CBR not dword aligned");
        ran += 1;
    }
    (ran, card.stats())
}
