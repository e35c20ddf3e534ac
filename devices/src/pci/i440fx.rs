//! The i440FX host bridge (PMC), function 00:00.0 of a Xen HVM guest's bus.
//!
//! It is what QEMU's xenfv machine puts there (hw/pci-host/i440fx.c): Intel 82441FX,
//! 8086:1237 revision 02, class 06/00 (host bridge), QEMU's subsystem ids, SMRAM
//! control (0x72) at 0x02. The PAM and SMRAM registers are plain bytes here: under Xen
//! no firmware shadows the BIOS through them (SeaBIOS skips its PAM setup on Xen), so
//! writing them changes nothing else. The coreboot RAM-size byte (0x57) QEMU fills is
//! left 0.

use super::{ConfigSpace, QEMU_SUBSYSTEM_ID, QEMU_SUBSYSTEM_VENDOR_ID, SUBSYSTEM_ID, SUBSYSTEM_VENDOR_ID};

const INTEL: u16 = 0x8086;
const I440FX_PMC: u16 = 0x1237;
const REVISION: u8 = 0x02;
const CLASS_BRIDGE: u8 = 0x06;
const SUBCLASS_HOST_BRIDGE: u8 = 0x00;
/// SMRAM control register
const SMRAM: u8 = 0x72;
/// SMRAM at reset: C_BASE_SEG = 010b (SMRAM at 0xa0000), closed, not enabled
const SMRAM_RESET: u8 = 0x02;

/// The i440FX host bridge's config space at power-on, as QEMU's.
pub fn i440fx_host_bridge() -> ConfigSpace {
    let mut config = ConfigSpace::new(INTEL, I440FX_PMC, REVISION, CLASS_BRIDGE, SUBCLASS_HOST_BRIDGE, 0x00, 0x00);
    config.set_u16(SUBSYSTEM_VENDOR_ID, QEMU_SUBSYSTEM_VENDOR_ID);
    config.set_u16(SUBSYSTEM_ID, QEMU_SUBSYSTEM_ID);
    config.set_u8(SMRAM, SMRAM_RESET);
    config
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_reset_values_as_qemu() {
        let mut config = i440fx_host_bridge();
        assert_eq!(config.read(0x00, 4), 0x1237_8086);
        assert_eq!(config.read(0x08, 4), 0x0600_0002, "class 06/00, prog-if 0, revision 02");
        assert_eq!(config.read(0x0e, 1), 0x00, "single function");
        assert_eq!(config.read(0x2c, 4), 0x1100_1af4);
        assert_eq!(config.read(0x04, 4), 0, "COMMAND and STATUS 0");
        assert_eq!(config.read(0x72, 1), 0x02);
        assert_eq!(config.interrupt_pin(), 0);
        for reg in [0x10, 0x14, 0x18, 0x1c, 0x20, 0x24, 0x30] {
            config.write(reg, 4, !0);
            assert_eq!(config.read(reg, 4), 0, "no BAR at {reg:#x}");
        }
        // hvmloader turns bus mastering on for every function it finds.
        config.write(0x04, 2, 0x0004);
        assert_eq!(config.command(), 0x0004);
        config.write(0x59, 1, 0x30);
        assert_eq!(config.read(0x59, 1), 0x30, "PAM0 is a plain byte");
    }
}
