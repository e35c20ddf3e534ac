//! The PV console ring page (io/console.h) and its index arithmetic.

pub const IN_RING_SIZE: usize = 1024;
pub const OUT_RING_SIZE: usize = 2048;

/// `struct xencons_interface`. Indexes run freely and wrap at 2^32; a slot is
/// `index % ring size` (both sizes are powers of two).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct XenconsInterface {
    pub input: [u8; IN_RING_SIZE],
    pub output: [u8; OUT_RING_SIZE],
    pub in_cons: u32,
    pub in_prod: u32,
    pub out_cons: u32,
    pub out_prod: u32,
}

/// Byte offsets of the index fields, for volatile access to the shared page.
pub const IN_CONS_OFFSET: usize = IN_RING_SIZE + OUT_RING_SIZE;
pub const IN_PROD_OFFSET: usize = IN_CONS_OFFSET + 4;
pub const OUT_CONS_OFFSET: usize = IN_CONS_OFFSET + 8;
pub const OUT_PROD_OFFSET: usize = IN_CONS_OFFSET + 12;
pub const OUTPUT_OFFSET: usize = IN_RING_SIZE;

/// Free space in a ring of `size` bytes given the peer's consumer index and our
/// producer index; a peer that reports more than a ringful yields zero, never more.
pub fn free_space(size: usize, cons: u32, prod: u32) -> usize {
    let used = prod.wrapping_sub(cons) as usize;
    size.saturating_sub(used)
}

/// Ring slot of a free-running index.
pub fn slot(size: usize, index: u32) -> usize {
    index as usize & (size - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_space_handles_wraparound() {
        assert_eq!(free_space(OUT_RING_SIZE, 0, 0), 2048);
        assert_eq!(free_space(OUT_RING_SIZE, u32::MAX - 10, 5), 2048 - 16);
        assert_eq!(free_space(OUT_RING_SIZE, 0, 2048), 0);
    }

    #[test]
    fn hostile_consumer_index_never_gives_extra_space() {
        // cons ahead of prod: a ring "fuller" than possible. No space, no panic.
        assert_eq!(free_space(OUT_RING_SIZE, 100, 50), 0);
        assert_eq!(free_space(OUT_RING_SIZE, 0, 5000), 0);
    }

    #[test]
    fn slot_masks_into_ring() {
        assert_eq!(slot(OUT_RING_SIZE, 2048 + 7), 7);
        assert_eq!(slot(IN_RING_SIZE, u32::MAX), 1023);
    }
}
