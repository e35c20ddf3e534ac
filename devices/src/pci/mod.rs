//! PCI configuration space of one function, and the chipset's functions on bus 0.
//!
//! Xen turns a guest's 0xcf8/0xcfc accesses into PCI_CONFIG ioreqs for the device
//! model (register offset, size 1/2/4); [`ConfigSpace`] answers them for one function:
//! a 256-byte type 0 header and device area with, per byte, a writable mask and a
//! write-1-to-clear mask, as QEMU's hw/pci/pci.c keeps them:
//!
//! - vendor, device, revision, class, header type, subsystem ids, capability pointer
//!   and interrupt pin are read-only;
//! - COMMAND: I/O, memory, bus master, SERR and INTx disable are writable (QEMU's
//!   `pci_init_wmask`); cache line size, latency timer and interrupt line are writable
//!   (QEMU keeps the latency timer at 0; real PIIX/i440FX parts let it be written);
//! - STATUS: the error bits are write-1-to-clear;
//! - BARs ([`ConfigSpace::set_bar`]) keep their type bits and take addresses aligned to
//!   their size, so writing ~0 reads back the size mask (hvmloader's sizing); BARs not
//!   set read 0 and ignore writes, and so does the expansion ROM BAR unless
//!   [`ConfigSpace::set_rom_bar`] gives one;
//! - the device-specific area 0x40-0xff is writable unless the device narrows it
//!   ([`ConfigSpace::set_writable_mask_u8`]), as in QEMU.
//!
//! Accesses may be unaligned and cross dwords; bytes past offset 0xff read 0xff and
//! ignore writes. [`ConfigSpace::bar_region`] says what a BAR decodes now, which the
//! device model registers with Xen as an I/O or MMIO range.
//!
//! The functions: [`i440fx`] (00:00.0 host bridge) and [`piix3`] (00:01.0 ISA bridge
//! with the PIRQ routes, 00:01.1 IDE, and the reset control register at 0xcf9).

pub mod i440fx;
pub mod piix3;

pub use i440fx::i440fx_host_bridge;
pub use piix3::{Piix3Isa, ResetControl, piix3_ide_function};

/// Size of a conventional PCI configuration space.
const CONFIG_LEN_BYTES: usize = 256;
/// Number of BARs in a type 0 header.
pub const NR_BARS: usize = 6;

pub const VENDOR_ID: u8 = 0x00;
pub const DEVICE_ID: u8 = 0x02;
pub const COMMAND: u8 = 0x04;
pub const STATUS: u8 = 0x06;
pub const REVISION_ID: u8 = 0x08;
pub const PROG_IF: u8 = 0x09;
pub const SUBCLASS: u8 = 0x0a;
pub const CLASS: u8 = 0x0b;
pub const CACHE_LINE_SIZE: u8 = 0x0c;
pub const LATENCY_TIMER: u8 = 0x0d;
pub const HEADER_TYPE: u8 = 0x0e;
pub const BAR0: u8 = 0x10;
pub const SUBSYSTEM_VENDOR_ID: u8 = 0x2c;
pub const SUBSYSTEM_ID: u8 = 0x2e;
pub const ROM_BAR: u8 = 0x30;
pub const INTERRUPT_LINE: u8 = 0x3c;
pub const INTERRUPT_PIN: u8 = 0x3d;
/// The first byte after the standard header.
const DEVICE_SPECIFIC: usize = 0x40;

pub const COMMAND_IO: u16 = 1 << 0;
pub const COMMAND_MEMORY: u16 = 1 << 1;
pub const COMMAND_MASTER: u16 = 1 << 2;
pub const COMMAND_SERR: u16 = 1 << 8;
pub const COMMAND_INTX_DISABLE: u16 = 1 << 10;
/// The COMMAND bits a guest may change (QEMU's `pci_init_wmask`).
const COMMAND_WRITABLE: u16 = COMMAND_IO | COMMAND_MEMORY | COMMAND_MASTER | COMMAND_SERR | COMMAND_INTX_DISABLE;

/// STATUS: fast back-to-back capable.
pub const STATUS_FAST_BACK: u16 = 1 << 7;
/// STATUS: medium DEVSEL timing.
pub const STATUS_DEVSEL_MEDIUM: u16 = 1 << 9;
/// The STATUS error bits, write-1-to-clear (QEMU's `pci_init_w1cmask`): master data
/// parity error, signalled and received target abort, received master abort,
/// signalled system error, detected parity error.
const STATUS_WRITE_ONE_TO_CLEAR: u16 = 0xf900;

/// Header type bit 7: a multi-function device.
pub const HEADER_TYPE_MULTI_FUNCTION: u8 = 0x80;

/// QEMU's default subsystem ids for every non-bridge function (Red Hat, QEMU).
pub const QEMU_SUBSYSTEM_VENDOR_ID: u16 = 0x1af4;
pub const QEMU_SUBSYSTEM_ID: u16 = 0x1100;

const BAR_IO_SPACE: u32 = 0x1;
const BAR_IO_TYPE_MASK: u32 = 0x3;
const BAR_MEM_PREFETCHABLE: u32 = 0x8;
const BAR_MEM_TYPE_MASK: u32 = 0xf;
const ROM_ENABLE: u32 = 0x1;
const ROM_ADDRESS_MASK: u32 = !0x7ff;
/// The smallest I/O and memory BAR sizes (the type bits must stay below the size).
const MIN_IO_BAR_BYTES: u32 = 4;
const MIN_MEM_BAR_BYTES: u32 = 16;
const MIN_ROM_BAR_BYTES: u32 = 0x800;
/// x86 has 64 KiB of I/O ports.
const IO_SPACE_END: u64 = 0x1_0000;
/// 32-bit memory BARs decode below 4 GiB only, and never up to the last byte (QEMU's
/// `pci_bar_address` treats that as the sizing pattern).
const MEM32_SPACE_END: u64 = 0xffff_ffff;

/// What a BAR decodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum BarKind {
    /// I/O ports
    Io,
    /// 32-bit memory
    Memory32 {
        /// the prefetchable bit
        prefetchable: bool,
    },
}

/// A BAR's kind and size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BarSpec {
    pub kind: BarKind,
    /// a power of two, at least 4 for I/O and 16 for memory (smaller or uneven sizes
    /// are rounded up)
    pub size_bytes: u32,
}

/// A function's 256-byte config space: values, writable-bit masks, write-1-to-clear
/// bits, BARs with sizing (write ~0, read back the size mask), COMMAND decode bits.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct ConfigSpace {
    #[serde(with = "crate::snapshot::big_array")]
    bytes: [u8; CONFIG_LEN_BYTES],
    #[serde(with = "crate::snapshot::big_array")]
    writable: [u8; CONFIG_LEN_BYTES],
    #[serde(with = "crate::snapshot::big_array")]
    write_one_to_clear: [u8; CONFIG_LEN_BYTES],
    bars: [Option<BarSpec>; NR_BARS],
    rom_size_bytes: Option<u32>,
}

impl ConfigSpace {
    /// A function with these ids and the standard masks; no BARs, COMMAND and STATUS 0.
    pub fn new(vendor: u16, device: u16, revision: u8, class: u8, subclass: u8, prog_if: u8, header_type: u8) -> Self {
        let mut config = ConfigSpace {
            bytes: [0; CONFIG_LEN_BYTES],
            writable: [0; CONFIG_LEN_BYTES],
            write_one_to_clear: [0; CONFIG_LEN_BYTES],
            bars: [None; NR_BARS],
            rom_size_bytes: None,
        };
        config.set_u16(VENDOR_ID, vendor);
        config.set_u16(DEVICE_ID, device);
        config.set_u8(REVISION_ID, revision);
        config.set_u8(PROG_IF, prog_if);
        config.set_u8(SUBCLASS, subclass);
        config.set_u8(CLASS, class);
        config.set_u8(HEADER_TYPE, header_type);
        config.set_mask_u16(COMMAND, COMMAND_WRITABLE);
        config.writable[usize::from(CACHE_LINE_SIZE)] = 0xff;
        config.writable[usize::from(LATENCY_TIMER)] = 0xff;
        config.writable[usize::from(INTERRUPT_LINE)] = 0xff;
        for (i, byte) in STATUS_WRITE_ONE_TO_CLEAR.to_le_bytes().into_iter().enumerate() {
            config.write_one_to_clear[usize::from(STATUS) + i] = byte;
        }
        config.writable[DEVICE_SPECIFIC..].fill(0xff);
        config
    }

    /// Gives BAR `index` (0..6) a kind and size; its address starts at 0.
    pub fn set_bar(&mut self, index: usize, spec: BarSpec) {
        let Some(slot) = self.bars.get_mut(index) else {
            log::warn!("pci: BAR {index} does not exist; not set");
            return;
        };
        let (min_bytes, type_bits) = match spec.kind {
            BarKind::Io => (MIN_IO_BAR_BYTES, BAR_IO_SPACE),
            BarKind::Memory32 { prefetchable } => {
                (MIN_MEM_BAR_BYTES, if prefetchable { BAR_MEM_PREFETCHABLE } else { 0 })
            }
        };
        let size_bytes = power_of_two_at_least(spec.size_bytes, min_bytes);
        if size_bytes != spec.size_bytes {
            log::warn!("pci: BAR {index} size {:#x} rounded up to {size_bytes:#x}", spec.size_bytes);
        }
        *slot = Some(BarSpec { kind: spec.kind, size_bytes });
        let reg = bar_reg(index);
        self.set_u32(reg, type_bits);
        self.set_mask_u32(reg, !(size_bytes - 1));
    }

    /// Gives the function an expansion ROM BAR (0x30) of `size_bytes` (rounded up to a
    /// power of two of at least 2 KiB): its address bits and enable bit become writable.
    pub fn set_rom_bar(&mut self, size_bytes: u32) {
        let size_bytes = power_of_two_at_least(size_bytes, MIN_ROM_BAR_BYTES);
        self.rom_size_bytes = Some(size_bytes);
        self.set_u32(ROM_BAR, 0);
        self.set_mask_u32(ROM_BAR, (!(size_bytes - 1) & ROM_ADDRESS_MASK) | ROM_ENABLE);
    }

    /// Sets a power-on value, whatever the masks say.
    pub fn set_u8(&mut self, reg: u8, value: u8) {
        self.bytes[usize::from(reg)] = value;
    }

    /// Sets a power-on value (little endian); bytes past 0xff are dropped.
    pub fn set_u16(&mut self, reg: u8, value: u16) {
        self.set_bytes(reg, &value.to_le_bytes());
    }

    /// Sets a power-on value (little endian); bytes past 0xff are dropped.
    pub fn set_u32(&mut self, reg: u8, value: u32) {
        self.set_bytes(reg, &value.to_le_bytes());
    }

    /// Makes the bits of `mask` in byte `reg` writable by the guest and the others
    /// read-only (device-specific registers); they stop being write-1-to-clear.
    pub fn set_writable_mask_u8(&mut self, reg: u8, mask: u8) {
        self.writable[usize::from(reg)] = mask;
        self.write_one_to_clear[usize::from(reg)] &= !mask;
    }

    /// Makes the bits of `mask` in byte `reg` write-1-to-clear (device-specific status
    /// bits); they stop being plainly writable.
    pub fn set_write_one_to_clear_mask_u8(&mut self, reg: u8, mask: u8) {
        self.write_one_to_clear[usize::from(reg)] = mask;
        self.writable[usize::from(reg)] &= !mask;
    }

    /// Reads `size` bytes (1, 2 or 4) at `reg`, aligned or not, little endian; bytes
    /// past 0xff read 0xff, and a bad size reads all ones.
    pub fn read(&self, reg: u16, size: u8) -> u32 {
        if !matches!(size, 1 | 2 | 4) {
            log::trace!("pci: config read of {reg:#x} size {size}: bad size");
            return u32::MAX;
        }
        let mut value = 0u32;
        for i in 0..u16::from(size) {
            let byte = reg.checked_add(i).and_then(|offset| self.bytes.get(usize::from(offset))).copied();
            value |= u32::from(byte.unwrap_or(0xff)) << (8 * i);
        }
        value
    }

    /// Writes `size` bytes (1, 2 or 4) at `reg`, aligned or not, little endian, through
    /// the writable and write-1-to-clear masks; bytes past 0xff and bad sizes are
    /// ignored.
    pub fn write(&mut self, reg: u16, size: u8, value: u32) {
        if !matches!(size, 1 | 2 | 4) {
            log::trace!("pci: config write of {reg:#x} size {size}: bad size, ignored");
            return;
        }
        for (i, byte) in value.to_le_bytes().into_iter().take(usize::from(size)).enumerate() {
            let Some(offset) = usize::from(reg).checked_add(i).filter(|&offset| offset < CONFIG_LEN_BYTES) else {
                continue;
            };
            let writable = self.writable[offset];
            let clear = self.write_one_to_clear[offset];
            let old = self.bytes[offset];
            self.bytes[offset] = ((old & !writable) | (byte & writable)) & !(byte & clear);
        }
    }

    /// BAR `index`'s current decoded region: Some((kind, base, size)) only when its
    /// decode bit (COMMAND I/O or memory) is on and the base is non-zero and not the
    /// sizing pattern (the region must end below 4 GiB - 1 for memory, below 64 KiB
    /// for I/O).
    pub fn bar_region(&self, index: usize) -> Option<(BarKind, u64, u64)> {
        let spec = (*self.bars.get(index)?)?;
        let raw = self.read(u16::from(bar_reg(index)), 4);
        let size = u64::from(spec.size_bytes);
        let (decode_bit, base, end) = match spec.kind {
            BarKind::Io => (COMMAND_IO, raw & !BAR_IO_TYPE_MASK, IO_SPACE_END),
            BarKind::Memory32 { .. } => (COMMAND_MEMORY, raw & !BAR_MEM_TYPE_MASK, MEM32_SPACE_END),
        };
        let base = u64::from(base);
        if self.command() & decode_bit == 0 || base == 0 || base + size > end {
            return None;
        }
        Some((spec.kind, base, size))
    }

    /// The expansion ROM's decoded region: Some((base, size)) when a ROM BAR was set,
    /// its enable bit and COMMAND memory decoding are on and the base is non-zero and
    /// below 4 GiB - 1.
    pub fn rom_region(&self) -> Option<(u64, u64)> {
        let size = u64::from(self.rom_size_bytes?);
        let raw = self.read(u16::from(ROM_BAR), 4);
        let base = u64::from(raw & ROM_ADDRESS_MASK);
        if self.command() & COMMAND_MEMORY == 0 || raw & ROM_ENABLE == 0 || base == 0 || base + size > MEM32_SPACE_END {
            return None;
        }
        Some((base, size))
    }

    /// The BAR's kind and size, if it has one.
    pub fn bar_spec(&self, index: usize) -> Option<BarSpec> {
        *self.bars.get(index)?
    }

    /// The interrupt pin (0 none, 1 INTA .. 4 INTD).
    pub fn interrupt_pin(&self) -> u8 {
        self.bytes[usize::from(INTERRUPT_PIN)]
    }

    /// The COMMAND register.
    pub fn command(&self) -> u16 {
        u16::from_le_bytes([self.bytes[usize::from(COMMAND)], self.bytes[usize::from(COMMAND) + 1]])
    }

    fn set_bytes(&mut self, reg: u8, bytes: &[u8]) {
        for (i, &byte) in bytes.iter().enumerate() {
            if let Some(slot) = self.bytes.get_mut(usize::from(reg) + i) {
                *slot = byte;
            }
        }
    }

    fn set_mask_u16(&mut self, reg: u8, mask: u16) {
        for (i, byte) in mask.to_le_bytes().into_iter().enumerate() {
            if let Some(slot) = self.writable.get_mut(usize::from(reg) + i) {
                *slot = byte;
            }
        }
    }

    fn set_mask_u32(&mut self, reg: u8, mask: u32) {
        for (i, byte) in mask.to_le_bytes().into_iter().enumerate() {
            if let Some(slot) = self.writable.get_mut(usize::from(reg) + i) {
                *slot = byte;
            }
        }
    }
}

/// The config register of BAR `index` (< 6).
fn bar_reg(index: usize) -> u8 {
    BAR0 + 4 * (index as u8)
}

/// `size` rounded up to a power of two, at least `min`, at most 2 GiB.
fn power_of_two_at_least(size: u32, min: u32) -> u32 {
    size.max(min).checked_next_power_of_two().unwrap_or(1 << 31)
}

/// Save/restore ([`crate::snapshot`]): a config space is saved whole.
impl ConfigSpace {
    /// Takes a saved config space's values: it must be of the same function (the same
    /// IDs, writable bits and BARs); the masks stay this model's.
    pub fn load_state(&mut self, saved: &ConfigSpace) -> Result<(), &'static str> {
        let same_function = saved.writable == self.writable
            && saved.write_one_to_clear == self.write_one_to_clear
            && saved.bars == self.bars
            && saved.rom_size_bytes == self.rom_size_bytes
            && saved.bytes.get(..4) == self.bytes.get(..4);
        if !same_function {
            return Err("its config space is another PCI function's");
        }
        self.bytes = saved.bytes;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    /// A function with an I/O BAR, a 32-bit memory BAR and a prefetchable one, like
    /// the Xen platform device plus a NIC.
    fn device() -> ConfigSpace {
        let mut config = ConfigSpace::new(0x5853, 0x0001, 0x01, 0xff, 0x80, 0x00, 0x00);
        config.set_bar(0, BarSpec { kind: BarKind::Io, size_bytes: 0x100 });
        config.set_bar(1, BarSpec { kind: BarKind::Memory32 { prefetchable: true }, size_bytes: 0x100_0000 });
        config.set_bar(3, BarSpec { kind: BarKind::Memory32 { prefetchable: false }, size_bytes: 0x1000 });
        config.set_u8(INTERRUPT_PIN, 1);
        config
    }

    /// hvmloader's pci_setup (tools/firmware/hvmloader/pci.c, 4.17) over the functions
    /// of bus 0 given as (devfn, config): sizing with decoding off, assignment in order
    /// of decreasing size (MMIO from 0xf0000000, I/O from 0xc000), then COMMAND
    /// |= MASTER and the decoding each function needs. Returns what it printed as
    /// (devfn, bar register, size, value written).
    fn hvmloader_pci_setup(functions: &mut [(u8, &mut ConfigSpace)]) -> Vec<(u8, u8, u64, u32)> {
        struct Bar {
            function: usize,
            reg: u16,
            size: u64,
        }
        let mut bars: Vec<Bar> = Vec::new();
        let mut decode = [0u16; 256];
        for (function, (devfn, config)) in functions.iter_mut().enumerate() {
            let cmd = config.read(0x04, 2) & !0x3;
            config.write(0x04, 2, cmd);
            for bar in 0..7u16 {
                let reg = if bar == 6 { 0x30 } else { 0x10 + 4 * bar };
                let data = config.read(reg, 4);
                if reg != 0x30 {
                    config.write(reg, 4, !0);
                } else {
                    config.write(reg, 4, (data | 0xffff_f800) & !1);
                }
                let mut size = u64::from(config.read(reg, 4));
                config.write(reg, 4, data);
                if reg != 0x30 {
                    size &= if data & 1 == 0 { 0xffff_fff0 } else { 0xffff_fffc & 0xffff };
                } else {
                    size &= 0xffff_f800;
                }
                size &= !(size.wrapping_sub(1));
                if size == 0 {
                    continue;
                }
                let at = bars.iter().position(|other| other.size < size).unwrap_or(bars.len());
                bars.insert(at, Bar { function, reg, size });
            }
            decode[usize::from(*devfn)] = 0x4;
        }
        let mut mem_base: u64 = 0xf000_0000;
        let mut io_base: u64 = 0xc000;
        let mut printed = Vec::new();
        for bar in &bars {
            let (devfn, config) = &mut functions[bar.function];
            let mut data = config.read(bar.reg, 4);
            let is_mem = data & 1 == 0 || bar.reg == 0x30;
            let resource = if is_mem {
                data &= 0xf;
                &mut mem_base
            } else {
                data &= 0x3;
                &mut io_base
            };
            let base = (*resource + bar.size - 1) & !(bar.size - 1);
            *resource = base + bar.size;
            data |= base as u32;
            config.write(bar.reg, 4, data);
            printed.push((*devfn, bar.reg as u8, bar.size, data));
            decode[usize::from(*devfn)] |= if is_mem { 0x2 } else { 0x1 };
        }
        for (devfn, config) in functions.iter_mut() {
            let cmd = config.read(0x04, 2) | u32::from(decode[usize::from(*devfn)]);
            config.write(0x04, 2, cmd);
        }
        printed
    }

    #[test]
    fn hvmloader_sizes_assigns_and_enables_bars() {
        let mut config = device();
        assert_eq!(config.bar_region(0), None, "decoding off at power-on");
        let printed = hvmloader_pci_setup(&mut [(0x10, &mut config)]);
        assert_eq!(
            printed,
            [(0x10, 0x14, 0x100_0000, 0xf000_0008), (0x10, 0x1c, 0x1000, 0xf100_0000), (0x10, 0x10, 0x100, 0xc001),]
        );
        assert_eq!(config.command(), COMMAND_IO | COMMAND_MEMORY | COMMAND_MASTER);
        assert_eq!(config.bar_region(0), Some((BarKind::Io, 0xc000, 0x100)));
        assert_eq!(config.bar_region(1), Some((BarKind::Memory32 { prefetchable: true }, 0xf000_0000, 0x100_0000)));
        assert_eq!(config.bar_region(2), None, "no BAR 2");
        assert_eq!(config.bar_region(3), Some((BarKind::Memory32 { prefetchable: false }, 0xf100_0000, 0x1000)));
        assert_eq!(config.bar_region(6), None);
        assert_eq!(config.rom_region(), None);
    }

    #[test]
    fn sizing_reads_back_the_size_mask_with_the_type_bits() {
        let mut config = device();
        config.write(0x10, 4, !0);
        assert_eq!(config.read(0x10, 4), 0xffff_ff01);
        config.write(0x14, 4, !0);
        assert_eq!(config.read(0x14, 4), 0xff00_0008);
        config.write(0x1c, 4, !0);
        assert_eq!(config.read(0x1c, 4), 0xffff_f000);
        for reg in [0x18, 0x20, 0x24, 0x30] {
            config.write(reg, 4, !0);
            assert_eq!(config.read(reg, 4), 0, "absent BAR at {reg:#x}");
        }
        // Decoding on with the sizing pattern still latched: nothing decodes.
        config.write(0x04, 2, u32::from(COMMAND_IO | COMMAND_MEMORY));
        assert_eq!(config.bar_region(0), None);
        assert_eq!(config.bar_region(1), None);
        assert_eq!(config.bar_region(3), None);
        // Unaligned addresses are truncated to the size.
        config.write(0x14, 4, 0xf012_3456);
        assert_eq!(config.read(0x14, 4), 0xf000_0008);
        config.write(0x10, 4, 0xc0ff);
        assert_eq!(config.bar_region(0), Some((BarKind::Io, 0xc000, 0x100)));
        // An I/O BAR past the 64 KiB port space does not decode.
        config.write(0x10, 4, 0x1_0000);
        assert_eq!(config.bar_region(0), None);
    }

    #[test]
    fn decode_bits_gate_the_regions() {
        let mut config = device();
        config.write(0x10, 4, 0xc100);
        config.write(0x14, 4, 0xe000_0000);
        config.write(0x04, 2, u32::from(COMMAND_MEMORY));
        assert_eq!(config.bar_region(0), None, "I/O decoding off");
        assert_eq!(config.bar_region(1), Some((BarKind::Memory32 { prefetchable: true }, 0xe000_0000, 0x100_0000)));
        config.write(0x04, 1, u32::from(COMMAND_IO));
        assert_eq!(config.bar_region(0), Some((BarKind::Io, 0xc100, 0x100)));
        assert_eq!(config.bar_region(1), None, "memory decoding off");
    }

    #[test]
    fn read_only_fields_keep_their_values() {
        let mut config = device();
        config.set_u16(SUBSYSTEM_VENDOR_ID, QEMU_SUBSYSTEM_VENDOR_ID);
        config.set_u16(SUBSYSTEM_ID, QEMU_SUBSYSTEM_ID);
        let before: Vec<u32> = (0..0x40).step_by(4).map(|reg| config.read(reg, 4)).collect();
        for reg in [0x00, 0x08, 0x0c, 0x28, 0x2c, 0x34, 0x38, 0x3c] {
            config.write(reg, 4, 0xffff_ffff);
        }
        assert_eq!(config.read(0x00, 4), before[0], "vendor/device");
        assert_eq!(config.read(0x08, 4), before[2], "revision/class");
        assert_eq!(config.read(0x0c, 4), 0x0000_ffff, "cache line and latency written, header type 0, BIST 0");
        assert_eq!(config.read(0x2c, 4), 0x1100_1af4, "subsystem");
        assert_eq!(config.read(0x34, 4), 0, "capability pointer");
        assert_eq!(config.read(0x3c, 4), 0x0000_01ff, "line written, pin 1 read-only, min_gnt/max_lat 0");
        assert_eq!(config.interrupt_pin(), 1);
    }

    #[test]
    fn command_and_status_masks() {
        let mut config = device();
        config.set_u16(STATUS, STATUS_DEVSEL_MEDIUM | 0x8000 | 0x2000);
        config.write(0x04, 4, 0xffff_ffff);
        assert_eq!(config.command(), 0x0507, "IO, MEM, MASTER, SERR, INTx disable");
        assert_eq!(config.read(0x06, 2), u32::from(STATUS_DEVSEL_MEDIUM), "error bits cleared by writing 1");
        config.set_u16(STATUS, 0xa200);
        config.write(0x06, 2, 0x2000);
        assert_eq!(config.read(0x06, 2), 0x8200, "only the bit written as 1 is cleared");
        config.write(0x04, 2, 0);
        assert_eq!(config.command(), 0);
    }

    #[test]
    fn unaligned_and_odd_size_accesses() {
        let mut config = device();
        assert_eq!(config.read(0x01, 2), 0x0158, "bytes 1 and 2: vendor high, device low");
        assert_eq!(config.read(0x02, 4), 0x0000_0001, "device id, then COMMAND 0");
        assert_eq!(config.read(0xfe, 4), 0xffff_0000, "bytes past 0xff read 0xff");
        assert_eq!(config.read(0xff, 2), 0xff00);
        assert_eq!(config.read(0x100, 4), 0xffff_ffff);
        assert_eq!(config.read(0xffff, 4), 0xffff_ffff);
        assert_eq!(config.read(0x00, 3), 0xffff_ffff, "bad size");
        config.write(0xfe, 4, 0x1234_5678);
        assert_eq!(config.read(0xfe, 2), 0x5678, "the in-range bytes are written");
        config.write(0x3b, 2, 0x0aff);
        assert_eq!(config.read(0x3c, 1), 0x0a, "a word write across a dword boundary");
        config.write(0x40, 3, 0x00ff_ffff);
        assert_eq!(config.read(0x40, 4), 0, "bad size write ignored");
        config.write(0xffff, 4, 0xffff_ffff);
    }

    #[test]
    fn device_specific_area_is_writable_unless_narrowed() {
        let mut config = device();
        config.write(0x40, 4, 0xdead_beef);
        assert_eq!(config.read(0x40, 4), 0xdead_beef);
        config.set_writable_mask_u8(0x44, 0x0f);
        config.set_u8(0x44, 0x50);
        config.write(0x44, 1, 0xaa);
        assert_eq!(config.read(0x44, 1), 0x5a);
        config.set_write_one_to_clear_mask_u8(0x45, 0x80);
        config.set_u8(0x45, 0x81);
        config.write(0x45, 1, 0x81);
        assert_eq!(config.read(0x45, 1), 0x01, "bit 7 cleared by writing 1, bit 0 written");
    }

    #[test]
    fn rom_bar_absent_or_sized() {
        let mut config = device();
        config.write(0x30, 4, 0xffff_f800);
        assert_eq!(config.read(0x30, 4), 0);
        config.set_rom_bar(0x1_0000);
        config.write(0x30, 4, 0xffff_f800);
        assert_eq!(config.read(0x30, 4), 0xffff_0000, "64 KiB ROM, enable bit clear");
        config.write(0x30, 4, 0xf200_0001);
        config.write(0x04, 2, u32::from(COMMAND_MEMORY));
        assert_eq!(config.rom_region(), Some((0xf200_0000, 0x1_0000)));
        config.write(0x30, 4, 0xf200_0000);
        assert_eq!(config.rom_region(), None, "enable bit clear");
        let mut rom_device = device();
        rom_device.set_rom_bar(0x1_0000);
        let printed = hvmloader_pci_setup(&mut [(0x18, &mut rom_device)]);
        assert!(printed.contains(&(0x18, 0x30, 0x1_0000, 0xf100_0000)), "{printed:x?}");
    }

    #[test]
    fn odd_bar_specs_are_rounded_and_bad_indexes_ignored() {
        let mut config = device();
        config.set_bar(2, BarSpec { kind: BarKind::Io, size_bytes: 3 });
        assert_eq!(config.bar_spec(2), Some(BarSpec { kind: BarKind::Io, size_bytes: 4 }));
        config.set_bar(4, BarSpec { kind: BarKind::Memory32 { prefetchable: false }, size_bytes: 0x1001 });
        assert_eq!(config.bar_spec(4).map(|spec| spec.size_bytes), Some(0x2000));
        config.set_bar(5, BarSpec { kind: BarKind::Memory32 { prefetchable: false }, size_bytes: u32::MAX });
        assert_eq!(config.bar_spec(5).map(|spec| spec.size_bytes), Some(0x8000_0000));
        config.set_bar(6, BarSpec { kind: BarKind::Io, size_bytes: 4 });
        assert_eq!(config.bar_spec(6), None);
        config.write(0x18, 4, !0);
        assert_eq!(config.read(0x18, 4), 0xffff_fffd);
    }
}
