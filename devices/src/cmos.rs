//! The CMOS NVRAM behind ports 0x70 (index) and 0x71 (data), for the indexes Xen's
//! own RTC does not answer.
//!
//! Xen emulates the MC146818 clock itself but only its registers 0x00-0x0d: a write of
//! an index ≥ 0x0e to port 0x70, and any access to port 0x71 while such an index is
//! latched, comes to the device model (xen/arch/x86/hvm/rtc.c). Those bytes are the
//! PC's NVRAM, which firmware reads for the boot order and hvmloader writes with the
//! memory sizes. The bytes at power-on are what QEMU's pc machine puts there
//! (hw/i386/pc.c `pc_cmos_init_late`, `set_boot_dev`; hw/rtc/mc146818rtc.c):
//!
//! | index | contents |
//! |---|---|
//! | 0x10 | floppy drive types: 0 (no floppy drives) |
//! | 0x14 | equipment byte: FPU and PS/2 mouse present (0x06) |
//! | 0x15-0x16 | base memory in KiB (640) |
//! | 0x17-0x18, 0x30-0x31 | memory between 1 MiB and 64 MiB, in KiB |
//! | 0x32 (alias 0x37) | century, BCD (0x20) |
//! | 0x34-0x35 | memory between 16 MiB and 4 GiB, in 64 KiB units |
//! | 0x38 | third boot device << 4; bit 0 clear (QEMU's default `fd_bootchk`: check the floppy signature) |
//! | 0x3d | second boot device << 4 \| first boot device |
//! | 0x5b-0x5d | memory above 4 GiB, in 64 KiB units |
//!
//! Boot devices are SeaBIOS's codes (src/boot.c): 1 floppy, 2 hard disk, 3 CD-ROM,
//! 4 network. Xen's RAM split puts at most 0xf0000000 bytes below 4 GiB
//! (HVM_BELOW_4G_RAM_END, QEMU's `xen_ram_init`). Hard disk geometry (0x12, 0x19-0x2c)
//! and ATA translation (0x39) stay 0: SeaBIOS then probes the drives itself.
//!
//! hvmloader rewrites the memory size bytes from the guest's real layout before
//! SeaBIOS reads them; Linux writes 0x0f (shutdown status) when it boots secondary
//! vCPUs. Index 0x37 reads and writes 0x32, as in QEMU.

use alloc::string::String;

/// The NVRAM size: indexes 0x00..0x7f (the index register keeps 7 bits).
const NVRAM_LEN_BYTES: usize = 128;
/// The first index Xen leaves to the device model.
const FIRST_NVRAM_INDEX: u8 = 0x0e;

const FLOPPY_TYPES: usize = 0x10;
const EQUIPMENT: usize = 0x14;
const BASE_MEMORY_KIB: usize = 0x15;
const EXTENDED_MEMORY_KIB: usize = 0x17;
const EXTENDED_MEMORY_KIB_COPY: usize = 0x30;
const CENTURY: usize = 0x32;
const HIGH_MEMORY_64KIB: usize = 0x34;
const IBM_PS2_CENTURY: u8 = 0x37;
const BOOT_FLAG_1: usize = 0x38;
const BOOT_FLAG_2: usize = 0x3d;
const ABOVE_4G_MEMORY_64KIB: usize = 0x5b;

/// FPU present (bit 1) and PS/2 mouse installed (bit 2), as QEMU.
const EQUIPMENT_FPU_AND_MOUSE: u8 = 0x06;
/// Xen's guest RAM below 4 GiB ends here at the latest.
const HVM_BELOW_4G_RAM_END: u64 = 0xf000_0000;
/// QEMU (and SeaBIOS) take at most three boot devices from CMOS.
const MAX_BOOT_DEVICES: usize = 3;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;

/// The NVRAM part of the PC's CMOS: 128 bytes and the index latch.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Cmos {
    index: u8,
    #[serde(with = "crate::snapshot::big_array")]
    nvram: [u8; NVRAM_LEN_BYTES],
}

impl Cmos {
    /// The index port.
    pub const INDEX_PORT: u16 = 0x70;
    /// The data port.
    pub const DATA_PORT: u16 = 0x71;

    /// The NVRAM as QEMU's pc machine fills it for a guest of `ram_mib` MiB started with
    /// `-boot order=<boot_order>`. `boot_order` holds QEMU's letters ('a' or 'b' floppy,
    /// 'c' disk, 'd' CD-ROM, 'n' network), for example "dc"; other letters are skipped
    /// and letters after the third device are ignored (each logged once, here).
    pub fn new(boot_order: &str, ram_mib: u32) -> Self {
        let mut cmos = Cmos { index: 0, nvram: [0; NVRAM_LEN_BYTES] };
        cmos.set_boot_order(boot_order);
        cmos.set_memory_size(u64::from(ram_mib) * MIB);
        cmos.nvram[FLOPPY_TYPES] = 0;
        cmos.nvram[EQUIPMENT] = EQUIPMENT_FPU_AND_MOUSE;
        cmos.nvram[CENTURY] = 0x20;
        cmos
    }

    /// Reads port 0x70 (reads 0xff, as in QEMU: the index is write-only) or 0x71
    /// (the byte at the latched index). Byte accesses.
    pub fn read(&mut self, port: u16) -> u8 {
        match port {
            Self::DATA_PORT => match self.nvram_offset() {
                Some(offset) => {
                    let value = self.nvram[offset];
                    log::trace!("cmos: read {:#04x} = {value:#04x}", self.index);
                    value
                }
                None => {
                    log::trace!("cmos: read of RTC register {:#04x} (Xen's): 0xff", self.index);
                    0xff
                }
            },
            _ => 0xff,
        }
    }

    /// Writes port 0x70 (latches the index; bit 7, the NMI mask, is dropped as Xen
    /// does) or 0x71 (the byte at the latched index). Byte accesses.
    pub fn write(&mut self, port: u16, value: u8) {
        match port {
            Self::INDEX_PORT => self.index = value & 0x7f,
            Self::DATA_PORT => match self.nvram_offset() {
                Some(offset) => {
                    log::trace!("cmos: write {:#04x} = {value:#04x}", self.index);
                    self.nvram[offset] = value;
                }
                None => log::trace!("cmos: write of RTC register {:#04x} (Xen's): ignored", self.index),
            },
            _ => log::trace!("cmos: write of port {port:#x}: not ours"),
        }
    }

    /// The NVRAM bytes 0..128 for save/restore (0x00-0x0d are Xen's and stay 0 here).
    pub fn nvram(&self) -> &[u8; 128] {
        &self.nvram
    }

    /// Puts back the NVRAM bytes [`Self::nvram`] returned (restore).
    pub fn restore_nvram(&mut self, nvram: &[u8; 128]) {
        self.nvram = *nvram;
    }

    /// The NVRAM byte the latched index selects; None for Xen's RTC registers.
    fn nvram_offset(&self) -> Option<usize> {
        if self.index < FIRST_NVRAM_INDEX {
            return None;
        }
        let index = if self.index == IBM_PS2_CENTURY { CENTURY as u8 } else { self.index };
        Some(usize::from(index) % NVRAM_LEN_BYTES)
    }

    /// 0x3d and 0x38 as QEMU's `set_boot_dev`.
    fn set_boot_order(&mut self, boot_order: &str) {
        let mut devices = [0u8; MAX_BOOT_DEVICES];
        let mut nr_devices = 0;
        let mut skipped = String::new();
        let mut ignored = String::new();
        for letter in boot_order.chars() {
            let device = match letter {
                'a' | 'b' => 1,
                'c' => 2,
                'd' => 3,
                'n' => 4,
                _ => {
                    skipped.push(letter);
                    continue;
                }
            };
            match devices.get_mut(nr_devices) {
                Some(slot) => {
                    *slot = device;
                    nr_devices += 1;
                }
                None => ignored.push(letter),
            }
        }
        if !skipped.is_empty() {
            log::warn!("cmos: boot order {boot_order:?}: skipped the letters {skipped:?} (not a, b, c, d or n)");
        }
        if !ignored.is_empty() {
            log::warn!("cmos: boot order {boot_order:?}: only three devices fit; ignored {ignored:?}");
        }
        let [first, second, third] = devices;
        self.nvram[BOOT_FLAG_2] = (second << 4) | first;
        self.nvram[BOOT_FLAG_1] = third << 4;
    }

    /// The memory size bytes for `ram_bytes` of guest RAM.
    fn set_memory_size(&mut self, ram_bytes: u64) {
        let below_4g_bytes = ram_bytes.min(HVM_BELOW_4G_RAM_END);
        let above_4g_bytes = ram_bytes - below_4g_bytes;
        let base_kib = (below_4g_bytes / KIB).min(640);
        let extended_kib = (below_4g_bytes.saturating_sub(MIB) / KIB).min(0xffff);
        let high_64kib = (below_4g_bytes.saturating_sub(16 * MIB) / (64 * KIB)).min(0xffff);
        let above_4g_64kib = (above_4g_bytes / (64 * KIB)).min(0xff_ffff);
        self.set_le(BASE_MEMORY_KIB, base_kib, 2);
        self.set_le(EXTENDED_MEMORY_KIB, extended_kib, 2);
        self.set_le(EXTENDED_MEMORY_KIB_COPY, extended_kib, 2);
        self.set_le(HIGH_MEMORY_64KIB, high_64kib, 2);
        self.set_le(ABOVE_4G_MEMORY_64KIB, above_4g_64kib, 3);
    }

    fn set_le(&mut self, offset: usize, value: u64, len_bytes: usize) {
        for (i, byte) in value.to_le_bytes().iter().take(len_bytes).enumerate() {
            if let Some(slot) = self.nvram.get_mut(offset + i) {
                *slot = *byte;
            }
        }
    }
}

/// Save/restore ([`crate::snapshot`]).
impl Cmos {
    /// Takes a saved CMOS (index latch and NVRAM; the index as a write would leave it).
    pub fn load_state(&mut self, saved: &Cmos) {
        self.index = saved.index & 0x7f;
        self.nvram = saved.nvram;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_index(cmos: &mut Cmos, index: u8) -> u8 {
        cmos.write(0x70, index);
        cmos.read(0x71)
    }

    /// SeaBIOS's boot order decoding on QEMU (src/boot.c, boot_init): the device codes
    /// in priority order and whether the floppy signature check is skipped.
    fn seabios_boot_order(cmos: &mut Cmos) -> ([u8; 3], bool) {
        let flag1 = read_index(cmos, 0x38);
        let flag2 = read_index(cmos, 0x3d);
        let mut order = u32::from(flag2) | (u32::from(flag1 & 0xf0) << 4);
        let mut devices = [0u8; 3];
        for device in &mut devices {
            *device = (order & 0x0f) as u8;
            order >>= 4;
        }
        (devices, flag1 & 1 != 0)
    }

    #[test]
    fn boot_orders_as_qemu_set_boot_dev() {
        for (order, devices, flag2, flag1) in [
            ("dc", [3, 2, 0], 0x23, 0x00),
            ("cda", [2, 3, 1], 0x32, 0x10),
            ("c", [2, 0, 0], 0x02, 0x00),
            ("n", [4, 0, 0], 0x04, 0x00),
            ("b", [1, 0, 0], 0x01, 0x00),
            ("", [0, 0, 0], 0x00, 0x00),
        ] {
            let mut cmos = Cmos::new(order, 1024);
            assert_eq!(read_index(&mut cmos, 0x3d), flag2, "{order}");
            assert_eq!(read_index(&mut cmos, 0x38), flag1, "{order}");
            assert_eq!(seabios_boot_order(&mut cmos), (devices, false), "{order}");
        }
    }

    #[test]
    fn bad_letters_are_skipped_and_a_fourth_device_ignored() {
        let mut cmos = Cmos::new("xd?c", 1024);
        assert_eq!(seabios_boot_order(&mut cmos).0, [3, 2, 0]);
        let mut cmos = Cmos::new("zzz", 1024);
        assert_eq!(seabios_boot_order(&mut cmos).0, [0, 0, 0]);
        let mut cmos = Cmos::new("cdna", 1024);
        assert_eq!(seabios_boot_order(&mut cmos).0, [2, 3, 4]);
        let mut cmos = Cmos::new("dcé", 1024);
        assert_eq!(seabios_boot_order(&mut cmos).0, [3, 2, 0]);
    }

    #[test]
    fn power_on_bytes_for_1_gib() {
        let mut cmos = Cmos::new("cda", 1024);
        assert_eq!(read_index(&mut cmos, 0x10), 0x00, "no floppy");
        assert_eq!(read_index(&mut cmos, 0x14), 0x06);
        assert_eq!((read_index(&mut cmos, 0x15), read_index(&mut cmos, 0x16)), (0x80, 0x02), "640 KiB");
        // (1024 - 1) MiB in KiB = 1047552, capped at 0xffff
        assert_eq!((read_index(&mut cmos, 0x17), read_index(&mut cmos, 0x18)), (0xff, 0xff));
        assert_eq!((read_index(&mut cmos, 0x30), read_index(&mut cmos, 0x31)), (0xff, 0xff));
        // (1024 - 16) MiB in 64 KiB = 16128 = 0x3f00
        assert_eq!((read_index(&mut cmos, 0x34), read_index(&mut cmos, 0x35)), (0x00, 0x3f));
        assert_eq!(read_index(&mut cmos, 0x5b), 0);
        assert_eq!(read_index(&mut cmos, 0x32), 0x20);
        assert_eq!(read_index(&mut cmos, 0x37), 0x20, "the PS/2 century alias");
    }

    #[test]
    fn small_and_large_guests() {
        let mut cmos = Cmos::new("c", 32);
        // 31 MiB in KiB = 31744 = 0x7c00; 16 MiB in 64 KiB = 256
        assert_eq!((read_index(&mut cmos, 0x17), read_index(&mut cmos, 0x18)), (0x00, 0x7c));
        assert_eq!((read_index(&mut cmos, 0x34), read_index(&mut cmos, 0x35)), (0x00, 0x01));
        // 8 GiB: 0xf0000000 below 4 GiB, the rest above in 64 KiB units
        let mut cmos = Cmos::new("c", 8192);
        assert_eq!((read_index(&mut cmos, 0x34), read_index(&mut cmos, 0x35)), (0x00, 0xef));
        let above = (8u64 << 30) - 0xf000_0000;
        let above_64kib = above / 65536;
        assert_eq!(
            (read_index(&mut cmos, 0x5b), read_index(&mut cmos, 0x5c), read_index(&mut cmos, 0x5d)),
            (above_64kib as u8, (above_64kib >> 8) as u8, (above_64kib >> 16) as u8)
        );
    }

    #[test]
    fn index_latch_drops_the_nmi_bit_and_reads_of_0x70_are_all_ones() {
        let mut cmos = Cmos::new("c", 1024);
        cmos.write(0x70, 0x80 | 0x40);
        cmos.write(0x71, 0x5a);
        assert_eq!(cmos.nvram()[0x40], 0x5a);
        assert_eq!(read_index(&mut cmos, 0x40), 0x5a);
        assert_eq!(cmos.read(0x70), 0xff);
        // 0x85 is RTC register 5 (Xen's) with NMIs masked, not NVRAM byte 0x05 + 0x80.
        cmos.write(0x70, 0x85);
        assert_eq!(cmos.read(0x71), 0xff);
        cmos.write(0x71, 0x33);
        assert!(!cmos.nvram().contains(&0x33));
        cmos.write(0x70, 0x40);
        // The latch stays until the next index write.
        cmos.write(0x71, 0xa5);
        assert_eq!(cmos.read(0x71), 0xa5);
        assert_eq!(cmos.read(0x71), 0xa5);
    }

    #[test]
    fn hvmloader_memory_writes_land_in_nvram() {
        let mut cmos = Cmos::new("dc", 2048);
        // cmos_write_memory_size for 1 GiB of low memory (hvmloader.c)
        let base_mem: u32 = 640;
        let ext_mem: u32 = 0xffff;
        let alt_mem: u32 = ((1u32 << 30) - 0x100_0000) >> 16;
        for (index, value) in [
            (0x15, base_mem as u8),
            (0x16, (base_mem >> 8) as u8),
            (0x17, ext_mem as u8),
            (0x18, (ext_mem >> 8) as u8),
            (0x30, ext_mem as u8),
            (0x31, (ext_mem >> 8) as u8),
            (0x34, alt_mem as u8),
            (0x35, (alt_mem >> 8) as u8),
        ] {
            cmos.write(0x70, index);
            cmos.write(0x71, value);
        }
        assert_eq!((read_index(&mut cmos, 0x34), read_index(&mut cmos, 0x35)), (0x00, 0x3f));
        assert_eq!(read_index(&mut cmos, 0x3d), 0x23, "the boot order is untouched");
    }

    #[test]
    fn rtc_indexes_are_not_ours() {
        let mut cmos = Cmos::new("c", 1024);
        cmos.write(0x70, 0x00);
        cmos.write(0x71, 0x12);
        assert_eq!(cmos.read(0x71), 0xff);
        cmos.write(0x70, 0x0d);
        assert_eq!(cmos.read(0x71), 0xff);
        assert!(cmos.nvram()[..0x0e].iter().all(|&byte| byte == 0));
        cmos.write(0x70, 0x0e);
        cmos.write(0x71, 0x12);
        assert_eq!(cmos.read(0x71), 0x12);
        assert_eq!(cmos.read(0x72), 0xff);
    }

    #[test]
    fn nvram_round_trips_through_save_and_restore() {
        let mut cmos = Cmos::new("dc", 1024);
        cmos.write(0x70, 0x0f);
        cmos.write(0x71, 0x0a);
        let saved = *cmos.nvram();
        let mut restored = Cmos::new("c", 16);
        restored.restore_nvram(&saved);
        assert_eq!(restored.nvram(), &saved);
        assert_eq!(read_index(&mut restored, 0x0f), 0x0a);
        assert_eq!(read_index(&mut restored, 0x3d), 0x23);
    }
}
