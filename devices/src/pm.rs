//! The ACPI power management registers Xen leaves to the device model: PM1a_CNT at
//! 0xb004 and GPE0 at 0xafe0-0xafe3.
//!
//! hvmloader's FADT places the PM1a control register (16 bits) at 0xb004 and the GPE0
//! block (4 bytes: two status bytes, two enable bytes) at 0xafe0
//! (tools/libacpi/static_tables.c, ACPI_*_ADDRESS_V1); Xen emulates PM1a_STS/EN and the
//! PM timer next to them, but not these (QEMU's PIIX4 PM does, hw/acpi/core.c).
//!
//! - PM1a_CNT reads with SCI_EN (bit 0) set: the guest is in ACPI mode from the start,
//!   so hvmloader's `acpi_enable_sci` needs no SMI command (the FADT has none).
//!   Other bits keep what the guest wrote, except SLP_EN (bit 13), which reads 0.
//! - A write with SLP_EN set is a sleep request for SLP_TYP (bits 12:10). hvmloader's
//!   DSDT gives `_S5` (and the `_S4` SSDT) SLP_TYP 0 and `_S3` SLP_TYP 1
//!   (tools/libacpi/dsdt.asl, ssdt_s3.asl, ssdt_s4.asl): type 0 is a power off, as in
//!   QEMU; suspend (type 1) and other types are not supported and are ignored (logged
//!   once).
//! - GPE0 status bytes are write-1-to-clear, enable bytes plain; the SCI (GSI 9) is
//!   asserted while a status bit is set with its enable bit.
//!
//! Byte, word and dword accesses are taken apart byte by byte, so a byte write of
//! SLP_EN to 0xb005 keeps the low byte (as QEMU does since 8.1).

/// What the guest asked the platform to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PmRequest {
    /// S5 (soft off) or S4: destroy the guest as powered off
    PowerOff,
}

const SCI_EN: u16 = 1 << 0;
const SLP_EN: u16 = 1 << 13;
const SLP_TYP_SHIFT: u16 = 10;
const SLP_TYP_MASK: u16 = 0x7;
/// SLP_TYP of hvmloader's `_S5` and `_S4`
const SLP_TYP_SOFT_OFF: u16 = 0;
/// SLP_TYP of hvmloader's `_S3`
const SLP_TYP_SUSPEND: u16 = 1;

/// PM1a_CNT and the GPE0 block.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct AcpiPm {
    /// what the guest wrote, without SLP_EN
    pm1a_cnt: u16,
    gpe0_sts: u16,
    gpe0_en: u16,
    #[serde(skip)]
    unsupported_sleep_logged: bool,
}

impl AcpiPm {
    /// PM1a control register, 2 bytes.
    pub const PM1A_CNT: u16 = 0xb004;
    /// GPE0 block, 4 bytes: STS (2), then EN (2).
    pub const GPE0_BLK: u16 = 0xafe0;
    /// GPE0 block length in bytes.
    pub const GPE0_LEN_BYTES: u16 = 4;

    /// The registers at power-on (SCI_EN reads set).
    pub fn new() -> Self {
        AcpiPm::default()
    }

    /// Reads `size` bytes (1, 2 or 4) at `port`; bytes outside the registers read 0xff.
    pub fn read(&mut self, port: u16, size: u8) -> u32 {
        if !matches!(size, 1 | 2 | 4) {
            log::trace!("pm: read of {port:#x} size {size}: bad size");
            return u32::MAX;
        }
        let mut value = 0u32;
        for i in 0..u16::from(size) {
            value |= u32::from(self.read_byte(port.wrapping_add(i))) << (8 * i);
        }
        log::trace!("pm: read {port:#x}/{size} = {value:#x}");
        value
    }

    /// Writes `size` bytes (1, 2 or 4) at `port`; Some(request) when the guest asked
    /// to sleep or power off.
    pub fn write(&mut self, port: u16, size: u8, value: u32) -> Option<PmRequest> {
        log::trace!("pm: write {port:#x}/{size} = {value:#x}");
        if !matches!(size, 1 | 2 | 4) {
            log::trace!("pm: write of {port:#x} size {size}: bad size, ignored");
            return None;
        }
        let mut pm1a_cnt = self.pm1a_cnt;
        let mut pm1a_cnt_written = false;
        for (i, byte) in value.to_le_bytes().into_iter().take(usize::from(size)).enumerate() {
            let byte = u16::from(byte);
            match port.wrapping_add(i as u16) {
                p if p == Self::PM1A_CNT => {
                    pm1a_cnt = (pm1a_cnt & 0xff00) | byte;
                    pm1a_cnt_written = true;
                }
                p if p == Self::PM1A_CNT + 1 => {
                    pm1a_cnt = (pm1a_cnt & 0x00ff) | (byte << 8);
                    pm1a_cnt_written = true;
                }
                p if p == Self::GPE0_BLK => self.gpe0_sts &= !byte,
                p if p == Self::GPE0_BLK + 1 => self.gpe0_sts &= !(byte << 8),
                p if p == Self::GPE0_BLK + 2 => self.gpe0_en = (self.gpe0_en & 0xff00) | byte,
                p if p == Self::GPE0_BLK + 3 => self.gpe0_en = (self.gpe0_en & 0x00ff) | (byte << 8),
                p => log::trace!("pm: write of {p:#x}: not a register"),
            }
        }
        if pm1a_cnt_written { self.write_pm1a_cnt(pm1a_cnt) } else { None }
    }

    /// Sets GPE0 status bit `bit` (0..16), for an event the device model signals.
    pub fn raise_gpe(&mut self, bit: u8) {
        if let Some(mask) = 1u16.checked_shl(u32::from(bit)) {
            self.gpe0_sts |= mask;
        }
    }

    /// The SCI level: a GPE0 status bit is set with its enable bit.
    pub fn sci_level(&self) -> bool {
        self.gpe0_sts & self.gpe0_en != 0
    }

    fn read_byte(&self, port: u16) -> u8 {
        let pm1a_cnt = (self.pm1a_cnt | SCI_EN).to_le_bytes();
        let gpe0_sts = self.gpe0_sts.to_le_bytes();
        let gpe0_en = self.gpe0_en.to_le_bytes();
        match port {
            p if p == Self::PM1A_CNT => pm1a_cnt[0],
            p if p == Self::PM1A_CNT + 1 => pm1a_cnt[1],
            p if p == Self::GPE0_BLK => gpe0_sts[0],
            p if p == Self::GPE0_BLK + 1 => gpe0_sts[1],
            p if p == Self::GPE0_BLK + 2 => gpe0_en[0],
            p if p == Self::GPE0_BLK + 3 => gpe0_en[1],
            _ => 0xff,
        }
    }

    fn write_pm1a_cnt(&mut self, value: u16) -> Option<PmRequest> {
        self.pm1a_cnt = value & !SLP_EN;
        if value & SLP_EN == 0 {
            return None;
        }
        match (value >> SLP_TYP_SHIFT) & SLP_TYP_MASK {
            SLP_TYP_SOFT_OFF => {
                log::info!("pm: the guest powers off (PM1a_CNT {value:#06x})");
                Some(PmRequest::PowerOff)
            }
            sleep_type => {
                if !self.unsupported_sleep_logged {
                    let what = if sleep_type == SLP_TYP_SUSPEND { "S3 suspend" } else { "an undefined sleep type" };
                    log::warn!("pm: the guest asked for {what} (SLP_TYP {sleep_type}): not supported, ignored");
                    self.unsupported_sleep_logged = true;
                }
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// hvmloader's `acpi_enable_sci` (hvmloader.c): true when it would not BUG.
    fn hvmloader_acpi_enable_sci(pm: &mut AcpiPm) -> bool {
        // If SCI_EN were clear, hvmloader would write 0xf1 to the SMI command port
        // 0xb2, which nobody emulates, and read again.
        let _first = pm.read(AcpiPm::PM1A_CNT, 1);
        pm.read(AcpiPm::PM1A_CNT, 1) & 1 != 0
    }

    #[test]
    fn sci_en_reads_set_and_hvmloader_enables_acpi() {
        let mut pm = AcpiPm::new();
        assert_eq!(pm.read(0xb004, 2), 0x0001);
        assert_eq!(pm.read(0xb004, 1), 0x01);
        assert_eq!(pm.read(0xb005, 1), 0x00);
        assert!(hvmloader_acpi_enable_sci(&mut pm));
        // Even a guest clearing SCI_EN reads it set.
        assert_eq!(pm.write(0xb004, 2, 0x0000), None);
        assert_eq!(pm.read(0xb004, 2), 0x0001);
    }

    /// ACPICA's acpi_hw_legacy_sleep for S5 (Linux `poweroff`): read PM1_CNT, write it
    /// back with SLP_TYP, then with SLP_TYP | SLP_EN.
    #[test]
    fn linux_poweroff_sequence_powers_off() {
        let mut pm = AcpiPm::new();
        // acpi_hw_disable_all_gpes / clear_acpi_status: GPE enables off, status cleared
        assert_eq!(pm.write(0xafe2, 1, 0x00), None);
        assert_eq!(pm.write(0xafe3, 1, 0x00), None);
        assert_eq!(pm.write(0xafe0, 1, 0xff), None);
        assert_eq!(pm.write(0xafe1, 1, 0xff), None);
        let control = pm.read(0xb004, 2) & !(0x1c00 | 0x2000);
        let control = control | (SLP_TYP_SOFT_OFF as u32) << 10;
        assert_eq!(pm.write(0xb004, 2, control), None, "SLP_TYP alone does nothing");
        assert_eq!(pm.write(0xb004, 2, control | 0x2000), Some(PmRequest::PowerOff));
        assert_eq!(pm.read(0xb004, 2) & 0x2000, 0, "SLP_EN reads 0");
    }

    #[test]
    fn a_byte_write_of_slp_en_keeps_the_low_byte_and_powers_off() {
        let mut pm = AcpiPm::new();
        assert_eq!(pm.write(0xb004, 2, 0x0006), None);
        assert_eq!(pm.write(0xb005, 1, 0x04), None, "SLP_TYP 1 without SLP_EN");
        assert_eq!(pm.read(0xb004, 2), 0x0407, "the low byte is kept");
        assert_eq!(pm.write(0xb005, 1, 0x20), Some(PmRequest::PowerOff));
        assert_eq!(pm.read(0xb004, 2), 0x0007);
        // A dword write at 0xb004 covers PM1a_CNT and two bytes outside it.
        assert_eq!(pm.write(0xb004, 4, 0xffff_2001), Some(PmRequest::PowerOff));
    }

    #[test]
    fn suspend_is_ignored() {
        let mut pm = AcpiPm::new();
        assert_eq!(pm.write(0xb004, 2, (SLP_TYP_SUSPEND << 10 | SLP_EN | SCI_EN) as u32), None);
        assert_eq!(pm.read(0xb004, 2), u32::from(SLP_TYP_SUSPEND << 10 | SCI_EN));
        assert_eq!(pm.write(0xb004, 2, (5 << 10 | SLP_EN) as u32), None);
    }

    #[test]
    fn gpe0_status_is_write_one_to_clear_and_enable_is_plain() {
        let mut pm = AcpiPm::new();
        assert_eq!(pm.read(0xafe0, 4), 0);
        pm.raise_gpe(2);
        pm.raise_gpe(9);
        pm.raise_gpe(16); // no such bit
        assert_eq!(pm.read(0xafe0, 2), 0x0204);
        assert!(!pm.sci_level(), "not enabled");
        pm.write(0xafe2, 2, 0x0004);
        assert_eq!(pm.read(0xafe2, 2), 0x0004);
        assert!(pm.sci_level());
        pm.write(0xafe0, 1, 0x00);
        assert_eq!(pm.read(0xafe0, 2), 0x0204, "writing 0 clears nothing");
        pm.write(0xafe0, 1, 0x04);
        assert_eq!(pm.read(0xafe0, 2), 0x0200);
        assert!(!pm.sci_level());
        pm.write(0xafe0, 4, 0x0000_ff00);
        assert_eq!(pm.read(0xafe0, 4), 0x0000_0000, "dword: STS bytes cleared, EN bytes written 0");
    }

    #[test]
    fn outside_bytes_and_bad_sizes_read_all_ones() {
        let mut pm = AcpiPm::new();
        assert_eq!(pm.read(0xb006, 1), 0xff);
        assert_eq!(pm.read(0xb003, 2), 0x01ff);
        assert_eq!(pm.read(0xafe2, 4), 0xffff_0000);
        assert_eq!(pm.read(0xb004, 3), u32::MAX);
        assert_eq!(pm.write(0xb004, 3, 0x2000), None);
        assert_eq!(pm.write(0xffff, 2, 0xffff), None);
    }
}
