//! Guest memory that reports what the device model writes into it, for a live save.
//!
//! While QMP's `xen-set-global-dirty-log` has the dirty log on, libxl's live save copies
//! the pages Xen's log-dirty mode saw change. Xen sees the guest's own writes, not the
//! ones the device model makes through its foreign mappings, so each of those is
//! reported with `XEN_DMOP_modified_memory` ([`HvmControl::modified_memory`]), as
//! QEMU's `xen_modified_memory` does: IDE DMA into guest memory, `rep ins` and `rep movs`
//! into memory answered from an ioreq, and the NICs' receive DMA all go through a
//! [`DirtyLogged`] memory.

use core::cell::Cell;

use xen_seams::hvm::{GuestMemory, GuestMemoryError, HvmControl};

const PAGE_SHIFT: u32 = 12;

/// `memory`, with every successful write reported to `control` when `enabled`.
pub struct DirtyLogged<'a, M: GuestMemory + ?Sized, C: HvmControl + ?Sized> {
    memory: &'a M,
    control: &'a C,
    enabled: bool,
    /// reports Xen refused (logged once per wrapper)
    failed_reports: Cell<u64>,
}

impl<'a, M: GuestMemory + ?Sized, C: HvmControl + ?Sized> DirtyLogged<'a, M, C> {
    /// `enabled`: the dirty log is on now (the caller asks the VM for each batch of work).
    pub fn new(memory: &'a M, control: &'a C, enabled: bool) -> Self {
        DirtyLogged { memory, control, enabled, failed_reports: Cell::new(0) }
    }

    /// The frames a write of `len_bytes` at `gpa` touched: (first gfn, count).
    pub fn frames(gpa: u64, len_bytes: usize) -> Option<(u64, u32)> {
        let last = gpa.checked_add(len_bytes.checked_sub(1)? as u64)?;
        let first_gfn = gpa >> PAGE_SHIFT;
        u32::try_from((last >> PAGE_SHIFT) - first_gfn + 1).ok().map(|count| (first_gfn, count))
    }
}

impl<M: GuestMemory + ?Sized, C: HvmControl + ?Sized> GuestMemory for DirtyLogged<'_, M, C> {
    fn read(&self, gpa: u64, out: &mut [u8]) -> Result<(), GuestMemoryError> {
        self.memory.read(gpa, out)
    }

    fn write(&self, gpa: u64, data: &[u8]) -> Result<(), GuestMemoryError> {
        self.memory.write(gpa, data)?;
        if self.enabled
            && let Some((first_gfn, nr_pages)) = Self::frames(gpa, data.len())
            && let Err(error) = self.control.modified_memory(first_gfn, nr_pages)
        {
            let failures = self.failed_reports.get() + 1;
            self.failed_reports.set(failures);
            if failures == 1 {
                log::warn!(
                    "dirty log: Xen refused modified_memory for {nr_pages} frame(s) at {first_gfn:#x}: {error:?}"
                );
            }
        }
        Ok(())
    }

    fn invalidate(&self) {
        self.memory.invalidate();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;
    use core::cell::RefCell;
    use xen_seams::Error;
    use xen_seams::hvm::ShutdownReason;

    #[derive(Default)]
    struct Recorder(RefCell<Vec<(u64, u32)>>);

    impl HvmControl for Recorder {
        fn set_isa_irq_level(&self, _: u8, _: bool) -> Result<(), Error> {
            Ok(())
        }
        fn set_pci_intx_level(&self, _: u8, _: u8, _: bool) -> Result<(), Error> {
            Ok(())
        }
        fn set_pci_link_route(&self, _: u8, _: u8) -> Result<(), Error> {
            Ok(())
        }
        fn remote_shutdown(&self, _: ShutdownReason) -> Result<(), Error> {
            Ok(())
        }
        fn modified_memory(&self, first_gfn: u64, nr_pages: u32) -> Result<(), Error> {
            self.0.borrow_mut().push((first_gfn, nr_pages));
            Ok(())
        }
    }

    #[test]
    fn writes_report_the_frames_they_touch_only_while_enabled() {
        let ram = crate::vec_memory::VecGuestMemory::new(0x10000);
        let control = Recorder::default();
        let logged = DirtyLogged::new(&ram, &control, true);
        logged.write(0x1ffe, &[1, 2, 3, 4]).unwrap();
        logged.write(0x3000, &[0; 0x1000]).unwrap();
        logged.write(0x5000, &[]).unwrap();
        assert!(logged.write(0x20000, &[1]).is_err());
        let mut out = [0u8; 4];
        logged.read(0x1ffe, &mut out).unwrap();
        assert_eq!(out, [1, 2, 3, 4]);
        assert_eq!(*control.0.borrow(), [(1, 2), (3, 1)], "reads, empty and failed writes report nothing");
        let off = DirtyLogged::new(&ram, &control, false);
        off.write(0x1000, &[1]).unwrap();
        assert_eq!(control.0.borrow().len(), 2);
    }
}
