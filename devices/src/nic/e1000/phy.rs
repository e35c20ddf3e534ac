//! The card's copper PHY (an M88E1011 at MII address 1, as QEMU presents it), reached
//! through MDIC.
//!
//! The registers and their power-on values are QEMU's `phy_reg_init`: 1000 Mb/s full
//! duplex with autonegotiation enabled, link up but autonegotiation not yet complete.
//! Only the registers QEMU lists are readable or writable; any other access, or one to
//! another PHY address, completes with MDIC's error bit, which is how the driver learns
//! that a register is absent. BMCR's reset and restart bits clear themselves; a restart
//! with autonegotiation enabled is reported to the card, which runs QEMU's 500 ms
//! negotiation (the link drops, then comes back with autonegotiation complete).

use super::regs::*;

/// What a register allows (QEMU's `phy_regcap`).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Access {
    None,
    Read,
    ReadWrite,
}

const NR_PHY_REGS: usize = 32;

fn access(reg: usize) -> Access {
    match reg {
        MII_BMSR | MII_PHYID1 | MII_PHYID2 | MII_ANLPAR | MII_ANER | MII_STAT1000 | M88_PHY_SPEC_STATUS
        | M88_RX_ERR_CNTR => Access::Read,
        MII_BMCR | MII_ANAR | MII_CTRL1000 | M88_PHY_SPEC_CTRL | M88_EXT_PHY_SPEC_CTRL => Access::ReadWrite,
        _ => Access::None,
    }
}

/// The PHY's registers.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub(super) struct Phy {
    regs: [u16; NR_PHY_REGS],
}

/// What an MDIC write did.
pub(super) struct MdicOutcome {
    /// MDIC as it now reads (ready, data or error)
    pub(super) mdic: u32,
    /// the guest restarted autonegotiation (BMCR restart with autonegotiation enabled)
    pub(super) restart_autoneg: bool,
}

impl Phy {
    /// The PHY at power-on.
    pub(super) fn new() -> Self {
        let mut regs = [0u16; NR_PHY_REGS];
        regs[MII_BMCR] = BMCR_SPEED1000 | BMCR_FD | BMCR_AUTOEN;
        regs[MII_BMSR] = BMSR_EXTCAP
            | BMSR_LINK_ST
            | BMSR_AUTONEG
            | BMSR_MFPS
            | BMSR_EXTSTAT
            | BMSR_10T_HD
            | BMSR_10T_FD
            | BMSR_100TX_HD
            | BMSR_100TX_FD;
        regs[MII_PHYID1] = PHY_ID1;
        regs[MII_PHYID2] = PHY_ID2;
        regs[MII_ANAR] = ANAR_CSMACD | ANAR_10 | ANAR_10FD | ANAR_TX | ANAR_TXFD | ANAR_PAUSE | ANAR_PAUSE_ASYM;
        regs[MII_ANLPAR] = ANLPAR_10 | ANLPAR_10FD | ANLPAR_TX | ANLPAR_TXFD;
        regs[MII_CTRL1000] = CTRL1000_FULL | CTRL1000_PORT | CTRL1000_MASTER;
        regs[MII_STAT1000] = STAT1000_HALF | STAT1000_FULL | STAT1000_ROK | STAT1000_LOK;
        regs[M88_PHY_SPEC_CTRL] = 0x0360;
        regs[M88_PHY_SPEC_STATUS] = 0xac00;
        regs[M88_EXT_PHY_SPEC_CTRL] = 0x0d60;
        Phy { regs }
    }

    /// Register `reg` (0..32), whatever MDIC would allow.
    pub(super) fn reg(&self, reg: usize) -> u16 {
        self.regs.get(reg).copied().unwrap_or(0)
    }

    /// Autonegotiation is enabled in BMCR.
    pub(super) fn autoneg_enabled(&self) -> bool {
        self.regs[MII_BMCR] & BMCR_AUTOEN != 0
    }

    pub(super) fn autoneg_complete(&self) -> bool {
        self.regs[MII_BMSR] & BMSR_AN_COMP != 0
    }

    pub(super) fn link_up(&self) -> bool {
        self.regs[MII_BMSR] & BMSR_LINK_ST != 0
    }

    /// The PHY sees the link go down (or negotiation restart): no link, negotiation not
    /// complete, no partner acknowledgement.
    pub(super) fn set_link_down(&mut self) {
        self.regs[MII_BMSR] &= !(BMSR_LINK_ST | BMSR_AN_COMP);
        self.regs[MII_ANLPAR] &= !ANLPAR_ACK;
    }

    pub(super) fn set_link_up(&mut self) {
        self.regs[MII_BMSR] |= BMSR_LINK_ST;
    }

    /// Negotiation finished: link up, complete, acknowledged by the partner.
    pub(super) fn set_autoneg_done(&mut self) {
        self.regs[MII_BMSR] |= BMSR_LINK_ST | BMSR_AN_COMP;
        self.regs[MII_ANLPAR] |= ANLPAR_ACK;
    }

    /// A write of `value` to MDIC, with `old_mdic` as MDIC read before (QEMU's set_mdic).
    pub(super) fn mdic_write(&mut self, value: u32, old_mdic: u32) -> MdicOutcome {
        let data = (value & MDIC_DATA_MASK) as u16;
        let reg = ((value & MDIC_REG_MASK) >> MDIC_REG_SHIFT) as usize;
        let mut restart_autoneg = false;
        let mdic = if (value & MDIC_PHY_MASK) >> MDIC_PHY_SHIFT != PHY_ADDRESS {
            old_mdic | MDIC_ERROR
        } else if value & MDIC_OP_READ != 0 {
            if access(reg) == Access::None {
                value | MDIC_ERROR
            } else {
                (value & !MDIC_DATA_MASK) | u32::from(self.reg(reg))
            }
        } else if value & MDIC_OP_WRITE != 0 {
            if access(reg) != Access::ReadWrite {
                value | MDIC_ERROR
            } else {
                if reg == MII_BMCR {
                    // Bits 5:0 are reserved; reset and restart clear themselves.
                    self.regs[MII_BMCR] = data & !(0x3f | BMCR_RESET | BMCR_ANRESTART);
                    restart_autoneg = self.autoneg_enabled() && data & BMCR_ANRESTART != 0;
                } else if let Some(slot) = self.regs.get_mut(reg) {
                    *slot = data;
                }
                value
            }
        } else {
            value
        };
        MdicOutcome { mdic: mdic | MDIC_READY, restart_autoneg }
    }
}
