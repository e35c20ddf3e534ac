//! Register offsets (in BAR 0) and bit fields of the 8254x as Linux's e1000 driver
//! (e1000_hw.h) and QEMU's e1000 (e1000_regs.h) name them, plus the PHY's MII registers,
//! the descriptor bits and the EEPROM words this card uses.

// Device control and status.
pub const CTRL: u32 = 0x0000;
pub const STATUS: u32 = 0x0008;
pub const EECD: u32 = 0x0010;
pub const EERD: u32 = 0x0014;
pub const CTRL_EXT: u32 = 0x0018;
pub const MDIC: u32 = 0x0020;
pub const VET: u32 = 0x0038;
// Interrupts.
pub const ICR: u32 = 0x00c0;
pub const ITR: u32 = 0x00c4;
pub const ICS: u32 = 0x00c8;
pub const IMS: u32 = 0x00d0;
pub const IMC: u32 = 0x00d8;
// Receive and transmit control.
pub const RCTL: u32 = 0x0100;
pub const TCTL: u32 = 0x0400;
pub const TIPG: u32 = 0x0410;
pub const AIT: u32 = 0x0458;
pub const LEDCTL: u32 = 0x0e00;
pub const PBA: u32 = 0x1000;
// Receive ring.
pub const RDFH: u32 = 0x2410;
pub const RDFT: u32 = 0x2418;
pub const RDFHS: u32 = 0x2420;
pub const RDFTS: u32 = 0x2428;
pub const RDFPC: u32 = 0x2430;
pub const RDBAL: u32 = 0x2800;
pub const RDBAH: u32 = 0x2804;
pub const RDLEN: u32 = 0x2808;
pub const RDH: u32 = 0x2810;
pub const RDT: u32 = 0x2818;
pub const RDTR: u32 = 0x2820;
pub const RADV: u32 = 0x282c;
// Transmit ring.
pub const TDFH: u32 = 0x3410;
pub const TDFT: u32 = 0x3418;
pub const TDFHS: u32 = 0x3420;
pub const TDFTS: u32 = 0x3428;
pub const TDFPC: u32 = 0x3430;
pub const TDBAL: u32 = 0x3800;
pub const TDBAH: u32 = 0x3804;
pub const TDLEN: u32 = 0x3808;
pub const TDH: u32 = 0x3810;
pub const TDT: u32 = 0x3818;
pub const TIDV: u32 = 0x3820;
pub const TXDCTL: u32 = 0x3828;
pub const TADV: u32 = 0x382c;
// Statistics (0x4000..=0x40fc, clear on read).
pub const STATS_FIRST: u32 = 0x4000;
pub const STATS_LAST: u32 = 0x40fc;
pub const MPC: u32 = 0x4010;
pub const PRC64: u32 = 0x405c;
pub const PRC127: u32 = 0x4060;
pub const PRC255: u32 = 0x4064;
pub const PRC511: u32 = 0x4068;
pub const PRC1023: u32 = 0x406c;
pub const PRC1522: u32 = 0x4070;
pub const GPRC: u32 = 0x4074;
pub const BPRC: u32 = 0x4078;
pub const MPRC: u32 = 0x407c;
pub const GPTC: u32 = 0x4080;
pub const GORCL: u32 = 0x4088;
pub const GORCH: u32 = 0x408c;
pub const GOTCL: u32 = 0x4090;
pub const GOTCH: u32 = 0x4094;
pub const RNBC: u32 = 0x40a0;
pub const ROC: u32 = 0x40ac;
pub const TORL: u32 = 0x40c0;
pub const TORH: u32 = 0x40c4;
pub const TOTL: u32 = 0x40c8;
pub const TOTH: u32 = 0x40cc;
pub const TPR: u32 = 0x40d0;
pub const TPT: u32 = 0x40d4;
pub const PTC64: u32 = 0x40d8;
pub const PTC127: u32 = 0x40dc;
pub const PTC255: u32 = 0x40e0;
pub const PTC511: u32 = 0x40e4;
pub const PTC1023: u32 = 0x40e8;
pub const PTC1522: u32 = 0x40ec;
pub const MPTC: u32 = 0x40f0;
pub const BPTC: u32 = 0x40f4;
pub const TSCTC: u32 = 0x40f8;
// Filters, wake-up and management.
pub const RXCSUM: u32 = 0x5000;
pub const MTA: u32 = 0x5200;
pub const RA: u32 = 0x5400;
pub const VFTA: u32 = 0x5600;
pub const WUC: u32 = 0x5800;
pub const WUFC: u32 = 0x5808;
pub const WUS: u32 = 0x5810;
pub const MANC: u32 = 0x5820;
pub const IPAV: u32 = 0x5838;
pub const IP4AT: u32 = 0x5840;
pub const IP6AT: u32 = 0x5880;
pub const FFLT: u32 = 0x5f00;
pub const SWSM: u32 = 0x5b50;

/// Entries of the multicast table array and of the VLAN filter table array.
pub const NR_MTA: usize = 128;
pub const NR_VFTA: usize = 128;
/// Receive address registers: 16 (low, high) pairs.
pub const NR_RA: usize = 32;

// BAR 1 (I/O): the indirect window onto the BAR 0 registers.
pub const IOADDR: u64 = 0x00;
pub const IODATA: u64 = 0x04;

pub const CTRL_SLU: u32 = 1 << 6;
pub const CTRL_SPD_1000: u32 = 1 << 9;
pub const CTRL_SWDPIN0: u32 = 1 << 18;
pub const CTRL_SWDPIN2: u32 = 1 << 20;
pub const CTRL_RST: u32 = 1 << 26;
pub const CTRL_VME: u32 = 1 << 30;
pub const CTRL_PHY_RST: u32 = 1 << 31;

pub const STATUS_FD: u32 = 1 << 0;
pub const STATUS_LU: u32 = 1 << 1;
pub const STATUS_TXOFF: u32 = 1 << 4;
pub const STATUS_SPEED_1000: u32 = 1 << 7;
pub const STATUS_ASDV: u32 = 3 << 8;
pub const STATUS_MTXCKOK: u32 = 1 << 10;
pub const STATUS_GIO_MASTER_ENABLE: u32 = 1 << 19;

pub const EECD_SK: u32 = 1 << 0;
pub const EECD_CS: u32 = 1 << 1;
pub const EECD_DI: u32 = 1 << 2;
pub const EECD_DO: u32 = 1 << 3;
pub const EECD_FWE_MASK: u32 = 3 << 4;
pub const EECD_REQ: u32 = 1 << 6;
pub const EECD_GNT: u32 = 1 << 7;
pub const EECD_PRES: u32 = 1 << 8;

pub const EERD_START: u32 = 1 << 0;
pub const EERD_DONE: u32 = 1 << 4;
pub const EERD_ADDR_SHIFT: u32 = 8;
pub const EERD_DATA_SHIFT: u32 = 16;

pub const MDIC_DATA_MASK: u32 = 0xffff;
pub const MDIC_REG_SHIFT: u32 = 16;
pub const MDIC_REG_MASK: u32 = 0x1f << MDIC_REG_SHIFT;
pub const MDIC_PHY_SHIFT: u32 = 21;
pub const MDIC_PHY_MASK: u32 = 0x1f << MDIC_PHY_SHIFT;
pub const MDIC_OP_WRITE: u32 = 1 << 26;
pub const MDIC_OP_READ: u32 = 1 << 27;
pub const MDIC_READY: u32 = 1 << 28;
pub const MDIC_INT_EN: u32 = 1 << 29;
pub const MDIC_ERROR: u32 = 1 << 30;

// Interrupt causes (ICR, ICS, IMS, IMC).
pub const ICR_TXDW: u32 = 1 << 0;
pub const ICR_TXQE: u32 = 1 << 1;
pub const ICR_LSC: u32 = 1 << 2;
pub const ICR_RXSEQ: u32 = 1 << 3;
pub const ICR_RXDMT0: u32 = 1 << 4;
pub const ICR_RXO: u32 = 1 << 6;
pub const ICR_RXT0: u32 = 1 << 7;
pub const ICR_MDAC: u32 = 1 << 9;

pub const RCTL_EN: u32 = 1 << 1;
pub const RCTL_SBP: u32 = 1 << 2;
pub const RCTL_UPE: u32 = 1 << 3;
pub const RCTL_MPE: u32 = 1 << 4;
pub const RCTL_LPE: u32 = 1 << 5;
pub const RCTL_RDMTS_SHIFT: u32 = 8;
pub const RCTL_MO_SHIFT: u32 = 12;
pub const RCTL_BAM: u32 = 1 << 15;
pub const RCTL_SZ_SHIFT: u32 = 16;
pub const RCTL_VFE: u32 = 1 << 18;
pub const RCTL_BSEX: u32 = 1 << 25;
pub const RCTL_SECRC: u32 = 1 << 26;

pub const TCTL_EN: u32 = 1 << 1;
pub const TCTL_PSP: u32 = 1 << 3;

pub const RAH_AV: u32 = 1 << 31;

pub const MANC_RMCP_EN: u32 = 1 << 8;
pub const MANC_0298_EN: u32 = 1 << 9;
pub const MANC_ARP_EN: u32 = 1 << 13;
pub const MANC_RCV_TCO_EN: u32 = 1 << 17;
pub const MANC_EN_MNG2HOST: u32 = 1 << 21;

// Transmit descriptors: the command byte and type in `lower`, status and options in
// `upper` (legacy, context and data descriptors share these positions).
pub const TXD_CMD_EOP: u32 = 1 << 24;
pub const TXD_CMD_IFCS: u32 = 1 << 25;
/// context descriptors: IPv4 (else IPv6) for TSO
pub const TXD_CMD_IP: u32 = 1 << 25;
/// context descriptors: TCP (else UDP)
pub const TXD_CMD_TCP: u32 = 1 << 24;
pub const TXD_CMD_TSE: u32 = 1 << 26;
pub const TXD_CMD_RS: u32 = 1 << 27;
pub const TXD_CMD_RPS: u32 = 1 << 28;
pub const TXD_CMD_DEXT: u32 = 1 << 29;
pub const TXD_CMD_VLE: u32 = 1 << 30;
pub const TXD_CMD_IDE: u32 = 1 << 31;
pub const TXD_DTYP_D: u32 = 1 << 20;
pub const TXD_STAT_DD: u32 = 1 << 0;
pub const TXD_STAT_EC: u32 = 1 << 1;
pub const TXD_STAT_LC: u32 = 1 << 2;
pub const TXD_STAT_TU: u32 = 1 << 3;
/// data descriptor option (upper bits 15:8): insert the IPv4 header checksum
pub const TXD_POPTS_IXSM: u8 = 1 << 0;
/// data descriptor option: insert the TCP/UDP checksum
pub const TXD_POPTS_TXSM: u8 = 1 << 1;

// Receive descriptor status and errors.
pub const RXD_STAT_DD: u8 = 1 << 0;
pub const RXD_STAT_EOP: u8 = 1 << 1;
/// "ignore checksum indication": the card did not check the TCP/IP checksums
pub const RXD_STAT_IXSM: u8 = 1 << 2;
pub const RXD_STAT_VP: u8 = 1 << 3;
/// RX data error (the buffer could not be written)
pub const RXD_ERR_RXE: u8 = 1 << 7;

// MII registers of the PHY (an M88E1011 as QEMU presents it, at PHY address 1).
pub const PHY_ADDRESS: u32 = 1;
pub const MII_BMCR: usize = 0;
pub const MII_BMSR: usize = 1;
pub const MII_PHYID1: usize = 2;
pub const MII_PHYID2: usize = 3;
pub const MII_ANAR: usize = 4;
pub const MII_ANLPAR: usize = 5;
pub const MII_ANER: usize = 6;
pub const MII_CTRL1000: usize = 9;
pub const MII_STAT1000: usize = 10;
pub const M88_PHY_SPEC_CTRL: usize = 0x10;
pub const M88_PHY_SPEC_STATUS: usize = 0x11;
pub const M88_EXT_PHY_SPEC_CTRL: usize = 0x14;
pub const M88_RX_ERR_CNTR: usize = 0x15;

pub const BMCR_SPEED1000: u16 = 1 << 6;
pub const BMCR_FD: u16 = 1 << 8;
pub const BMCR_ANRESTART: u16 = 1 << 9;
pub const BMCR_AUTOEN: u16 = 1 << 12;
pub const BMCR_LOOPBACK: u16 = 1 << 14;
pub const BMCR_RESET: u16 = 1 << 15;

pub const BMSR_EXTCAP: u16 = 1 << 0;
pub const BMSR_LINK_ST: u16 = 1 << 2;
pub const BMSR_AUTONEG: u16 = 1 << 3;
pub const BMSR_AN_COMP: u16 = 1 << 5;
pub const BMSR_MFPS: u16 = 1 << 6;
pub const BMSR_EXTSTAT: u16 = 1 << 8;
pub const BMSR_10T_HD: u16 = 1 << 11;
pub const BMSR_10T_FD: u16 = 1 << 12;
pub const BMSR_100TX_HD: u16 = 1 << 13;
pub const BMSR_100TX_FD: u16 = 1 << 14;

pub const ANAR_CSMACD: u16 = 1 << 0;
pub const ANAR_10: u16 = 1 << 5;
pub const ANAR_10FD: u16 = 1 << 6;
pub const ANAR_TX: u16 = 1 << 7;
pub const ANAR_TXFD: u16 = 1 << 8;
pub const ANAR_PAUSE: u16 = 1 << 10;
pub const ANAR_PAUSE_ASYM: u16 = 1 << 11;

pub const ANLPAR_10: u16 = 1 << 5;
pub const ANLPAR_10FD: u16 = 1 << 6;
pub const ANLPAR_TX: u16 = 1 << 7;
pub const ANLPAR_TXFD: u16 = 1 << 8;
pub const ANLPAR_ACK: u16 = 1 << 14;

pub const CTRL1000_FULL: u16 = 1 << 9;
pub const CTRL1000_PORT: u16 = 1 << 10;
pub const CTRL1000_MASTER: u16 = 1 << 11;

pub const STAT1000_HALF: u16 = 1 << 10;
pub const STAT1000_FULL: u16 = 1 << 11;
pub const STAT1000_ROK: u16 = 1 << 12;
pub const STAT1000_LOK: u16 = 1 << 13;

/// PHY identifier of the M88E1011 (ID1 << 16 | ID2, revision bits included).
pub const PHY_ID1: u16 = 0x0141;
pub const PHY_ID2: u16 = 0x0c20;

/// The EEPROM: 64 words, read through microwire with this opcode, summing to
/// [`EEPROM_SUM`] with the checksum in word [`EEPROM_CHECKSUM_WORD`].
pub const EEPROM_NR_WORDS: usize = 64;
pub const EEPROM_READ_OPCODE_MICROWIRE: u32 = 0x6;
pub const EEPROM_CHECKSUM_WORD: usize = 0x3f;
pub const EEPROM_SUM: u16 = 0xbaba;

/// PCI identity of the 82540EM as QEMU presents it.
pub const PCI_VENDOR_INTEL: u16 = 0x8086;
pub const PCI_DEVICE_82540EM: u16 = 0x100e;
pub const PCI_REVISION: u8 = 0x03;
pub const PCI_CLASS_NETWORK: u8 = 0x02;
pub const PCI_SUBCLASS_ETHERNET: u8 = 0x00;

/// BAR 0 (memory) and BAR 1 (I/O) sizes.
pub const MMIO_BAR_BYTES: u32 = 0x2_0000;
pub const IO_BAR_BYTES: u32 = 0x40;
