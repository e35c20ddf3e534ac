//! Virtual device names (`hdc`, `xvda1`, `sdb`, or a number) to the device id libxl
//! gives a disk: the `<devid>` of its xenstore directories, of QMP's `ide-<devid>` and
//! of the stub domain's fdset `stub-devid:<devid>`.
//!
//! The rules are libxl's (`libxl__device_disk_dev_number`, libxl_device.c): a
//! prefix, drive letters counted like spreadsheet columns (`a` = 0, `z` = 25, `aa` =
//! 26), then an optional partition number without leading zeros.

/// Why a virtual device name was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum VdevError {
    /// not `hdX`, `sdX`, `xvdX` (with an optional partition) or a number
    #[error("{0:?} is not a virtual device name (hdX, sdX, xvdX, with an optional partition, or a number)")]
    Unknown(String),
}

/// The device id of virtual device `vdev`, as libxl numbers it.
pub fn devid(vdev: &str) -> Result<u32, VdevError> {
    let unknown = || VdevError::Unknown(vdev.to_string());
    if let Some((disk, partition)) = disk_and_partition(vdev, "xvd", (1 << 20) - 1, 255) {
        return Ok(if disk <= 15 && partition <= 15 {
            (202 << 8) | (disk << 4) | partition
        } else {
            (1 << 28) | (disk << 8) | partition
        });
    }
    if let Some(number) = plain_number(vdev) {
        return Ok(number);
    }
    if let Some((disk, partition)) = disk_and_partition(vdev, "hd", 3, 63) {
        let major = if disk < 2 { 3 } else { 22 };
        return Ok((major << 8) | ((disk & 1) << 6) | partition);
    }
    if let Some((disk, partition)) = disk_and_partition(vdev, "sd", 15, 15) {
        return Ok((8 << 8) | (disk << 4) | partition);
    }
    Err(unknown())
}

/// Whether `vdev` names an IDE drive (`hdX`): the only drives our device model can
/// give a CD-ROM to.
pub fn is_ide(vdev: &str) -> bool {
    disk_and_partition(vdev, "hd", 3, 63).is_some_and(|(_, partition)| partition == 0)
}

/// A decimal number, or hexadecimal after `0x`, up to `i32::MAX` (libxl: `strtoul`, base 0).
fn plain_number(text: &str) -> Option<u32> {
    let value = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) if !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit()) => {
            u32::from_str_radix(hex, 16).ok()?
        }
        Some(_) => return None,
        None if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) => text.parse().ok()?,
        None => return None,
    };
    (value <= i32::MAX as u32).then_some(value)
}

/// `<prefix><letters>[<partition>]`: the drive index and partition, each within its limit.
fn disk_and_partition(vdev: &str, prefix: &str, max_disk: u32, max_partition: u32) -> Option<(u32, u32)> {
    let rest = vdev.strip_prefix(prefix)?;
    let letters_len = rest.bytes().take_while(u8::is_ascii_lowercase).count();
    if letters_len == 0 {
        return None;
    }
    let (letters, partition) = rest.split_at(letters_len);
    let mut disk: u32 = 0;
    for (at, letter) in letters.bytes().enumerate() {
        let digit = u32::from(letter - b'a');
        disk = if at == 0 { digit } else { (disk + 1).checked_mul(26)?.checked_add(digit)? };
        if disk > max_disk {
            return None;
        }
    }
    if partition.is_empty() {
        return Some((disk, 0));
    }
    if partition.starts_with('0') || !partition.bytes().all(|b| b.is_ascii_digit()) || partition.len() > 10 {
        return None;
    }
    let partition: u64 = partition.parse().ok()?;
    (partition <= u64::from(max_partition)).then_some((disk, partition as u32))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ide_names_as_libxl_numbers_them() {
        // The reference's table: hdc 5632, hdd 5696.
        assert_eq!(devid("hda"), Ok(768));
        assert_eq!(devid("hdb"), Ok(832));
        assert_eq!(devid("hdc"), Ok(5632));
        assert_eq!(devid("hdd"), Ok(5696));
        assert_eq!(devid("hda1"), Ok(769));
        assert_eq!(devid("hdc63"), Ok(5632 + 63));
        assert!(devid("hde").is_err() && devid("hda64").is_err());
    }

    #[test]
    fn xvd_and_sd_names() {
        assert_eq!(devid("xvda"), Ok(51712));
        assert_eq!(devid("xvdb3"), Ok(51712 + 16 + 3));
        assert_eq!(devid("xvdq"), Ok((1 << 28) | (16 << 8)));
        assert_eq!(devid("xvdaa"), Ok((1 << 28) | (26 << 8)));
        assert_eq!(devid("xvda16"), Ok((1 << 28) | 16));
        assert_eq!(devid("sda"), Ok(2048));
        assert_eq!(devid("sdb2"), Ok(2048 + 16 + 2));
        assert!(devid("sdq").is_err() && devid("sda16").is_err());
    }

    #[test]
    fn numbers_and_refusals() {
        assert_eq!(devid("5632"), Ok(5632));
        assert_eq!(devid("0x1600"), Ok(5632));
        assert!(devid("0x").is_err() && devid("2147483648").is_err() && devid("99999999999999").is_err());
        for bad in ["", "hd", "xvd", "hdc01", "hdc0", "hdC", "cdrom", "hdc-1", "xvda256", "hdc 1", "ide-5632"] {
            assert_eq!(devid(bad), Err(VdevError::Unknown(bad.to_string())), "{bad}");
        }
        // Drive letters beyond the limit end the count, not the program.
        assert!(devid(&format!("xvd{}", "z".repeat(100))).is_err());
    }

    #[test]
    fn only_whole_ide_drives_are_ide() {
        assert!(is_ide("hdc") && is_ide("hda"));
        assert!(!is_ide("hdc1") && !is_ide("xvdc") && !is_ide("sdc") && !is_ide("5632"));
    }
}
