//! Guest RAM in a `Vec`, for the fuzz drivers and the host tests that play a guest
//! against a device: addresses past its end, and ranges that wrap, are not RAM (the
//! error the kernel's foreign mappings give for a frame the guest lacks).

use alloc::vec;
use alloc::vec::Vec;
use core::cell::{Cell, RefCell};
use core::ops::Range;

use xen_seams::hvm::{GuestMemory, GuestMemoryError};

/// `len_bytes` of zeroed guest RAM from address 0, counting how often the device model
/// dropped its mappings ([`GuestMemory::invalidate`]).
pub struct VecGuestMemory {
    bytes: RefCell<Vec<u8>>,
    invalidations: Cell<u32>,
}

impl VecGuestMemory {
    pub fn new(len_bytes: usize) -> Self {
        VecGuestMemory { bytes: RefCell::new(vec![0; len_bytes]), invalidations: Cell::new(0) }
    }

    /// How many times [`GuestMemory::invalidate`] was called.
    pub fn invalidations(&self) -> u32 {
        self.invalidations.get()
    }

    /// A copy of all of RAM.
    pub fn to_vec(&self) -> Vec<u8> {
        self.bytes.borrow().clone()
    }

    fn range(&self, gpa: u64, len: usize) -> Result<Range<usize>, GuestMemoryError> {
        let end = gpa.checked_add(len as u64).ok_or(GuestMemoryError::Overflow)?;
        let ram_bytes = self.bytes.borrow().len() as u64;
        if end > ram_bytes {
            return Err(GuestMemoryError::Unmapped { gfn: gpa.max(ram_bytes) >> 12 });
        }
        Ok(gpa as usize..end as usize)
    }
}

impl GuestMemory for VecGuestMemory {
    fn read(&self, gpa: u64, out: &mut [u8]) -> Result<(), GuestMemoryError> {
        let range = self.range(gpa, out.len())?;
        out.copy_from_slice(&self.bytes.borrow()[range]);
        Ok(())
    }

    fn write(&self, gpa: u64, data: &[u8]) -> Result<(), GuestMemoryError> {
        let range = self.range(gpa, data.len())?;
        self.bytes.borrow_mut()[range].copy_from_slice(data);
        Ok(())
    }

    fn invalidate(&self) {
        self.invalidations.set(self.invalidations.get() + 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_ram_is_ram() {
        let ram = VecGuestMemory::new(8192);
        ram.write(8190, &[1, 2]).unwrap();
        let mut two = [0u8; 2];
        ram.read(8190, &mut two).unwrap();
        assert_eq!(two, [1, 2]);
        assert_eq!(ram.write(8191, &[1, 2]), Err(GuestMemoryError::Unmapped { gfn: 2 }), "the first frame past RAM");
        assert_eq!(ram.read(u64::MAX, &mut two), Err(GuestMemoryError::Overflow));
        assert_eq!(ram.read(1 << 20, &mut two), Err(GuestMemoryError::Unmapped { gfn: 256 }));
        ram.invalidate();
        assert_eq!(ram.invalidations(), 1);
        assert_eq!(ram.to_vec().iter().filter(|b| **b != 0).count(), 2);
    }
}
