//! Page-table updates for a PV guest (xen.h): `mmu_update` and `mmuext_op`.

/// `ptr` low bits: a checked write of `val` to the page-table entry at machine address `ptr`.
pub const MMU_NORMAL_PT_UPDATE: u64 = 0;

/// `struct mmu_update`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct MmuUpdate {
    pub ptr: u64,
    pub val: u64,
}

pub const MMUEXT_PIN_L1_TABLE: u32 = 0;
pub const MMUEXT_UNPIN_TABLE: u32 = 4;
pub const MMUEXT_INVLPG_LOCAL: u32 = 7;

/// `struct mmuext_op` (arg1 is a frame number or a linear address, arg2 unused here).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct MmuextOp {
    pub cmd: u32,
    pub arg1: u64,
    pub arg2: u64,
}

/// Bytes per page, and entries per page-table page.
pub const PAGE_SIZE: u64 = 4096;
pub const ENTRIES_PER_TABLE: u64 = 512;

/// Index into the page table at `level` (1 = L1 .. 4 = L4) for virtual address `va`.
pub fn table_index(va: u64, level: u32) -> usize {
    ((va >> (12 + 9 * (level - 1))) & 0x1ff) as usize
}

/// The frame number in a page-table entry (bits 12..52).
pub fn pte_frame(pte: u64) -> u64 {
    (pte & 0x000f_ffff_ffff_f000) >> 12
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indexes_of_the_kernel_half() {
        let va = 0xffff_ffff_8000_0000u64 + 5 * 4096 + 3 * 0x20_0000;
        assert_eq!(table_index(va, 4), 511);
        assert_eq!(table_index(va, 3), 510);
        assert_eq!(table_index(va, 2), 3);
        assert_eq!(table_index(va, 1), 5);
    }

    #[test]
    fn frame_ignores_flag_bits() {
        assert_eq!(pte_frame(0x8000_0000_1234_5067), 0x12345);
    }
}
