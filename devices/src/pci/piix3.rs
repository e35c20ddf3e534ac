//! The PIIX3 south bridge as a Xen HVM guest sees it: the ISA bridge 00:01.0 with the
//! PCI interrupt (PIRQ) routes, the IDE function 00:01.1, and the reset control
//! register at port 0xcf9.
//!
//! - ISA bridge: 8086:7000, class 06/01, header type 0x80 (multi-function: SeaBIOS
//!   and Linux look at functions 1-7 of a slot only when function 0 says so), with
//!   QEMU's reset values (hw/isa/piix.c `piix_reset`). hvmloader asserts that 00:01.0
//!   is 8086:7000, writes the ISA IRQs of the four links into PIRQA-D (0x60-0x63) and
//!   reads them back to fill each function's interrupt line.
//! - PIRQ routes: Xen routes PCI INTx itself, so the device model only forwards the
//!   routes: every config write touching 0x60-0x63 re-sends each touched link as
//!   `value & 0x80 ? 0 : value & 0x0f` (QEMU's `xen_piix_pci_write_config_client`),
//!   which the caller passes to `xendevicemodel_set_pci_link_route`.
//! - IDE: 8086:7010, class 01/01, prog-if 0x80 (both channels in legacy mode at
//!   0x1f0/0x3f6 IRQ 14 and 0x170/0x376 IRQ 15, bus-master capable) with BAR4 (BMIBA,
//!   config 0x20), 16 I/O ports of bus-master registers ([`crate::ide::bmdma`]), which
//!   SeaBIOS (CONFIG_ATA_DMA, set in Xen's build) and Linux's ata_piix use for disk
//!   reads and writes. COMMAND 0 and STATUS 0x0280 (medium
//!   DEVSEL, fast back-to-back) at reset, as QEMU's `piix_ide_reset`; IDETIM (0x40-0x43)
//!   is writable: hvmloader writes 0x8000 to 0x40 and 0x42, and Linux's ata_piix uses a
//!   channel only if bit 7 of 0x41 (primary) or 0x43 (secondary) reads back set.
//! - Reset control (0xcf9): a write with bit 2 (RCPU) set resets the system (the FADT's
//!   reset register takes 6); otherwise bit 1 (system reset type) is kept.

use alloc::vec::Vec;

use super::{
    BarKind, BarSpec, COMMAND, ConfigSpace, HEADER_TYPE_MULTI_FUNCTION, QEMU_SUBSYSTEM_ID, QEMU_SUBSYSTEM_VENDOR_ID,
    STATUS, STATUS_DEVSEL_MEDIUM, STATUS_FAST_BACK, SUBSYSTEM_ID, SUBSYSTEM_VENDOR_ID,
};

const INTEL: u16 = 0x8086;
const PIIX3_ISA: u16 = 0x7000;
const PIIX3_IDE: u16 = 0x7010;
const CLASS_BRIDGE: u8 = 0x06;
const SUBCLASS_ISA_BRIDGE: u8 = 0x01;
const CLASS_STORAGE: u8 = 0x01;
const SUBCLASS_IDE: u8 = 0x01;
/// legacy (compatibility) mode on both channels, bus-master capable
const PROG_IF_LEGACY_BUS_MASTER: u8 = 0x80;
/// BMIBA, the bus-master registers' I/O BAR
pub const IDE_BUS_MASTER_BAR: usize = 4;

/// PIRQA route; PIRQB-D follow.
const PIRQ_ROUTE: u16 = 0x60;
const NR_PIRQ_LINKS: u8 = 4;
/// PIRQ route bit 7: routing disabled
const PIRQ_DISABLED: u8 = 0x80;
const PIRQ_ISA_IRQ_MASK: u8 = 0x0f;

/// The PIIX3 ISA bridge's config space at reset (hw/isa/piix.c `piix_reset`).
const ISA_RESET_BYTES: &[(u8, u8)] = &[
    (0x04, 0x07), // COMMAND: I/O, memory, bus master
    (0x05, 0x00),
    (0x06, 0x00),
    (0x07, 0x02), // STATUS: medium DEVSEL
    (0x4c, 0x4d), // ISA I/O recovery timer
    (0x4e, 0x03), // X-bus chip select A
    (0x4f, 0x00),
    (0x60, PIRQ_DISABLED),
    (0x61, PIRQ_DISABLED),
    (0x62, PIRQ_DISABLED),
    (0x63, PIRQ_DISABLED),
    (0x69, 0x02), // top of memory
    (0x70, 0x80), // MBIRQ0: disabled
    (0x76, 0x0c), // MBDMA0, MBDMA1: disabled
    (0x77, 0x0c),
    (0x78, 0x02), // programmable chip select control
    (0x79, 0x00),
    (0x80, 0x00),
    (0x82, 0x00),
    (0xa0, 0x08), // SMI control
    (0xa2, 0x00),
    (0xa3, 0x00),
    (0xa4, 0x00),
    (0xa5, 0x00),
    (0xa6, 0x00),
    (0xa7, 0x00),
    (0xa8, 0x0f), // SMI request
    (0xaa, 0x00),
    (0xab, 0x00),
    (0xac, 0x00),
    (0xae, 0x00),
];

/// The PIIX3 ISA bridge, function 00:01.0.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Piix3Isa {
    config: ConfigSpace,
}

impl Default for Piix3Isa {
    fn default() -> Self {
        Self::new()
    }
}

impl Piix3Isa {
    /// The ISA bridge at reset: QEMU's values, all four PIRQ routes disabled (0x80).
    pub fn new() -> Self {
        let mut config = ConfigSpace::new(
            INTEL,
            PIIX3_ISA,
            0x00,
            CLASS_BRIDGE,
            SUBCLASS_ISA_BRIDGE,
            0x00,
            HEADER_TYPE_MULTI_FUNCTION,
        );
        config.set_u16(SUBSYSTEM_VENDOR_ID, QEMU_SUBSYSTEM_VENDOR_ID);
        config.set_u16(SUBSYSTEM_ID, QEMU_SUBSYSTEM_ID);
        for &(reg, value) in ISA_RESET_BYTES {
            config.set_u8(reg, value);
        }
        Piix3Isa { config }
    }

    /// Reads `size` bytes (1, 2 or 4) at `reg`, as [`ConfigSpace::read`].
    pub fn config_read(&self, reg: u16, size: u8) -> u32 {
        self.config.read(reg, size)
    }

    /// Writes `size` bytes at `reg`; returns the PIRQ link routes to send to Xen:
    /// (link 0..3, ISA IRQ: 0 = disabled, else 1..15) for each link whose byte in
    /// 0x60..0x63 the write touched, even if it did not change.
    pub fn config_write(&mut self, reg: u16, size: u8, value: u32) -> Vec<(u8, u8)> {
        self.config.write(reg, size, value);
        if !matches!(size, 1 | 2 | 4) {
            return Vec::new();
        }
        let touched = u32::from(reg)..u32::from(reg) + u32::from(size);
        (0..NR_PIRQ_LINKS)
            .filter(|&link| touched.contains(&(u32::from(PIRQ_ROUTE) + u32::from(link))))
            .map(|link| (link, self.pirq_route(link)))
            .collect()
    }

    /// The ISA IRQ link `link` (0..3) is routed to: 0 when disabled.
    pub fn pirq_route(&self, link: u8) -> u8 {
        let route = self.config.read(PIRQ_ROUTE + u16::from(link), 1) as u8;
        if route & PIRQ_DISABLED != 0 { 0 } else { route & PIRQ_ISA_IRQ_MASK }
    }

    /// The function's config space.
    pub fn config(&self) -> &ConfigSpace {
        &self.config
    }
}

/// PIIX3's reset control register at port 0xcf9 (byte): returns true when the write
/// asks for a system reset (bit 2 set, as QEMU's `rcr_write`: reboot). Keeps bit 1.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ResetControl {
    value: u8,
}

impl ResetControl {
    /// The port.
    pub const PORT: u16 = 0xcf9;
    /// RCPU: reset the CPU (the system, here)
    const RESET_CPU: u8 = 1 << 2;
    /// SRST: the reset is a hard (system) reset
    const SYSTEM_RESET: u8 = 1 << 1;

    /// The register at reset: 0.
    pub fn new() -> Self {
        ResetControl::default()
    }

    /// Reads the register: the kept system-reset bit.
    pub fn read(&self) -> u8 {
        self.value
    }

    /// Writes the register; true when the guest asked for a reset (bit 2), which
    /// leaves the register as it was.
    pub fn write(&mut self, value: u8) -> bool {
        if value & Self::RESET_CPU != 0 {
            log::info!("piix3: reset requested through 0xcf9 ({value:#04x})");
            return true;
        }
        self.value = value & Self::SYSTEM_RESET;
        false
    }
}

/// PIIX3 IDE function 00:01.1 (8086:7010, class 01/01): prog-if 0x80, BAR4 the 16 bus-master
/// ports; 0x40-0x43 IDETIM writable.
pub fn piix3_ide_function() -> ConfigSpace {
    let mut config =
        ConfigSpace::new(INTEL, PIIX3_IDE, 0x00, CLASS_STORAGE, SUBCLASS_IDE, PROG_IF_LEGACY_BUS_MASTER, 0x00);
    config.set_bar(
        IDE_BUS_MASTER_BAR,
        BarSpec { kind: BarKind::Io, size_bytes: u32::from(crate::ide::bmdma::BMIDE_LEN_BYTES) },
    );
    config.set_u16(SUBSYSTEM_VENDOR_ID, QEMU_SUBSYSTEM_VENDOR_ID);
    config.set_u16(SUBSYSTEM_ID, QEMU_SUBSYSTEM_ID);
    config.set_u16(COMMAND, 0x0000);
    config.set_u16(STATUS, STATUS_DEVSEL_MEDIUM | STATUS_FAST_BACK);
    config
}

/// Save/restore ([`crate::snapshot`]).
impl Piix3Isa {
    /// Takes a saved ISA bridge (its config space: PIRQ routes, the rest).
    pub fn load_state(&mut self, saved: &Piix3Isa) -> Result<(), &'static str> {
        self.config.load_state(&saved.config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    #[test]
    fn isa_bridge_ids_header_and_reset_values() {
        let isa = Piix3Isa::new();
        // hvmloader: ASSERT devfn 0x08 is 8086:7000
        assert_eq!(isa.config_read(0x00, 2), 0x8086);
        assert_eq!(isa.config_read(0x02, 2), 0x7000);
        assert_eq!(isa.config_read(0x0a, 2), 0x0601);
        // SeaBIOS/Linux scan functions 1-7 only if bit 7 of fn 0's header type is set
        assert_eq!(isa.config_read(0x0e, 1), 0x80);
        assert_eq!(isa.config_read(0x04, 4), 0x0200_0007);
        assert_eq!(isa.config_read(0x60, 4), 0x8080_8080);
        assert_eq!(isa.config_read(0x4c, 4), 0x0003_004d);
        assert_eq!(isa.config_read(0x68, 4), 0x0000_0200);
        assert_eq!(isa.config_read(0x70, 1), 0x80);
        assert_eq!(isa.config_read(0x76, 4), 0x0002_0c0c);
        assert_eq!(isa.config_read(0xa0, 1), 0x08);
        assert_eq!(isa.config_read(0xa8, 1), 0x0f);
        assert_eq!(isa.config_read(0x2c, 4), 0x1100_1af4);
        assert_eq!((0..4).map(|link| isa.pirq_route(link)).collect::<Vec<_>>(), [0, 0, 0, 0]);
    }

    #[test]
    fn hvmloader_pirq_byte_writes_send_each_link() {
        let mut isa = Piix3Isa::new();
        // pci_setup: links 0..3 get ISA IRQs 5, 10, 11, 5 (PCI_ISA_IRQ_MASK 0x0c20)
        let mut sent = vec![];
        for (link, irq) in [(0u16, 5u32), (1, 10), (2, 11), (3, 5)] {
            sent.extend(isa.config_write(0x60 + link, 1, irq));
        }
        assert_eq!(sent, [(0, 5), (1, 10), (2, 11), (3, 5)]);
        assert_eq!(isa.config_read(0x60, 4), 0x050b_0a05);
        // hvmloader then reads PIRQ[(pin - 1 + slot) & 3] for each interrupt line
        let (pin, slot) = (1u16, 2u16); // INTA of 00:02.0
        assert_eq!(isa.config_read(0x60 + ((pin - 1 + slot) & 3), 1), 11);
    }

    #[test]
    fn word_dword_and_unaligned_writes_send_the_touched_links() {
        let mut isa = Piix3Isa::new();
        assert_eq!(isa.config_write(0x60, 2, 0x0a05), [(0, 5), (1, 10)]);
        assert_eq!(isa.config_write(0x60, 4, 0x8b0b_0a05), [(0, 5), (1, 10), (2, 11), (3, 0)], "bit 7 disables");
        assert_eq!(isa.config_write(0x62, 2, 0x0509), [(2, 9), (3, 5)]);
        assert_eq!(isa.config_write(0x5f, 2, 0x0700), [(0, 7)], "a word write ending at 0x60");
        assert_eq!(isa.config_write(0x63, 4, 0x0000_0003), [(3, 3)], "a dword write starting at 0x63");
        assert_eq!(isa.config_write(0x61, 1, 0x1b), [(1, 11)], "only the low four bits are the IRQ");
        assert_eq!(isa.config_write(0x64, 4, 0xffff_ffff), [], "past the routes");
        assert_eq!(isa.config_write(0x5c, 4, 0xffff_ffff), [], "before the routes");
        assert_eq!(isa.config_write(0x60, 3, 0x0000_0000), [], "bad size");
        assert_eq!(isa.config_write(0x60, 1, 0x05), [(0, 5)], "an unchanged route is sent again");
        assert_eq!(isa.config_write(0x60, 1, 0x05), [(0, 5)]);
    }

    #[test]
    fn reset_control_keeps_bit_1_and_resets_on_bit_2() {
        let mut rcr = ResetControl::new();
        assert_eq!(rcr.read(), 0);
        assert!(!rcr.write(0x02));
        assert_eq!(rcr.read(), 0x02);
        assert!(!rcr.write(0x0b));
        assert_eq!(rcr.read(), 0x02, "only bit 1 is kept");
        assert!(!rcr.write(0x01));
        assert_eq!(rcr.read(), 0x00);
        assert!(rcr.write(0x06), "the FADT reset value");
        assert!(rcr.write(0x04));
        assert_eq!(rcr.read(), 0x00, "a reset write is not stored");
    }

    #[test]
    fn ide_function_is_legacy_bus_master_with_bar4_and_writable_idetim() {
        let mut ide = piix3_ide_function();
        assert_eq!(ide.read(0x00, 4), 0x7010_8086);
        assert_eq!(ide.read(0x08, 4), 0x0101_8000, "class 01/01, prog-if 0x80, revision 0");
        assert_eq!(ide.read(0x04, 4), 0x0280_0000);
        assert_eq!(ide.read(0x0e, 1), 0x00);
        assert_eq!(ide.interrupt_pin(), 0);
        for reg in [0x10, 0x14, 0x18, 0x1c, 0x24, 0x30] {
            ide.write(reg, 4, !0);
            assert_eq!(ide.read(reg, 4), 0, "no BAR at {reg:#x}");
        }
        assert_eq!(ide.read(0x20, 4), 0x0000_0001, "BMIBA: an I/O BAR at reset");
        ide.write(0x20, 4, !0);
        assert_eq!(ide.read(0x20, 4), 0xffff_fff1, "16 bytes of I/O");
        ide.write(0x20, 4, 0xc040);
        assert_eq!(ide.bar_region(4), None, "no decoding before COMMAND I/O");
        // hvmloader: enable IDE0 and IDE1 decode
        ide.write(0x40, 2, 0x8000);
        ide.write(0x42, 2, 0x8000);
        // ata_piix piix_enable_bits: bit 7 of 0x41 and 0x43
        assert_eq!(ide.read(0x41, 1) & 0x80, 0x80);
        assert_eq!(ide.read(0x43, 1) & 0x80, 0x80);
        assert_eq!(ide.read(0x40, 4), 0x8000_8000);
        // hvmloader: COMMAND |= I/O (BAR4) | MASTER
        ide.write(0x04, 2, 0x0005);
        assert_eq!(ide.read(0x04, 2), 0x0005);
        assert_eq!(ide.bar_region(4), Some((BarKind::Io, 0xc040, 16)));
        assert_eq!(ide.read(0x06, 2), 0x0280, "STATUS unchanged");
    }
}
