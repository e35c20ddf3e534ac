//! Virtual disk numbers ("devids") as libxl computes them from names like `hdc`.
//!
//! libxl numbers every disk of a guest after Linux's device numbers
//! (libxl__device_disk_dev_number in tools/libs/light/libxl_device.c): the PV disk the
//! stub domain receives for the guest's `hdc` has devid 5632, the emulated CD-ROM is
//! named `ide-5632`, and libxl's fdset lookup searches for `stub-devid:5632`. The stub
//! domain sees every disk as `xvdX` whatever the guest calls it, but with the same devid,
//! so the letter is recovered from the devid with [`disk_index`].

/// Which naming scheme a disk name uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiskKind {
    /// `xvdX` (and `dNpM`): Xen virtual disks, major 202 or the extended scheme
    Xvd,
    /// `hdX`: IDE disks, majors 3 (hda, hdb) and 22 (hdc, hdd)
    Hd,
    /// `sdX`: SCSI disks, major 8
    Sd,
}

/// A disk name taken apart: scheme, disk index (a = 0) and partition (0 = whole disk).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VirtualDisk {
    pub kind: DiskKind,
    pub index: u32,
    pub partition: u32,
}

/// The largest disk index each scheme accepts, and its largest partition.
fn limits(kind: DiskKind) -> (u32, u32) {
    match kind {
        DiskKind::Xvd => ((1 << 20) - 1, 255),
        DiskKind::Hd => (3, 63),
        DiskKind::Sd => (15, 15),
    }
}

impl VirtualDisk {
    /// Parses `xvdc`, `hdc1`, `sdb`, `xvdaa` or `d5p2` as libxl does.
    ///
    /// Letters count in bijective base 26 (`z` = 25, `aa` = 26); a partition number has no
    /// leading zero. Returns None for anything libxl would refuse, and for a name with no
    /// letters at all (libxl would compute disk -1 there).
    pub fn parse(name: &str) -> Option<VirtualDisk> {
        if let Some(disk) = parse_d_p(name) {
            return Some(disk);
        }
        for (prefix, kind) in [("xvd", DiskKind::Xvd), ("hd", DiskKind::Hd), ("sd", DiskKind::Sd)] {
            if let Some(rest) = name.strip_prefix(prefix) {
                return parse_letters(rest, kind);
            }
        }
        None
    }

    /// The devid libxl computes for this disk.
    pub fn devid(&self) -> u32 {
        match self.kind {
            DiskKind::Hd => hd_devid(self.index) | self.partition,
            DiskKind::Sd => sd_devid(self.index) | self.partition,
            DiskKind::Xvd => {
                if self.index <= 15 && self.partition <= 15 {
                    xvd_devid(self.index) | self.partition
                } else {
                    (1 << 28) | (self.index << 8) | self.partition
                }
            }
        }
    }
}

/// `dNpM`: disk N, partition M, in the Xen scheme.
fn parse_d_p(name: &str) -> Option<VirtualDisk> {
    let rest = name.strip_prefix('d')?;
    let (disk, partition) = rest.split_once('p')?;
    let index = decimal(disk)?;
    let partition = decimal(partition)?;
    (index < (1 << 20) && partition < 256).then_some(VirtualDisk { kind: DiskKind::Xvd, index, partition })
}

fn decimal(text: &str) -> Option<u32> {
    if text.is_empty() || !text.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

fn parse_letters(rest: &str, kind: DiskKind) -> Option<VirtualDisk> {
    let (max_index, max_partition) = limits(kind);
    let letters = rest.bytes().take_while(u8::is_ascii_lowercase).count();
    if letters == 0 {
        return None;
    }
    let mut index: u32 = 0;
    for (position, letter) in rest.bytes().take(letters).enumerate() {
        if position > 0 {
            index = index.checked_add(1)?.checked_mul(26)?;
        }
        index = index.checked_add(u32::from(letter - b'a'))?;
        if index > max_index {
            return None;
        }
    }
    let digits = &rest[letters..];
    let partition = if digits.is_empty() {
        0
    } else if digits.starts_with('0') {
        return None; // leading zeroes are not permitted in partition numbers
    } else {
        decimal(digits)?
    };
    (partition <= max_partition).then_some(VirtualDisk { kind, index, partition })
}

/// hdX: `((n < 2 ? 3 : 22) << 8) | ((n & 1) << 6)`; hda 768, hdb 832, hdc 5632, hdd 5696.
pub fn hd_devid(index: u32) -> u32 {
    let major = if index < 2 { 3 } else { 22 };
    (major << 8) | ((index & 1) << 6)
}

/// sdX: `(8 << 8) | (n << 4)`; sda 2048, sdc 2080.
pub fn sd_devid(index: u32) -> u32 {
    (8 << 8) | (index << 4)
}

/// xvdX: `(202 << 8) | (n << 4)`; xvda 51712, xvdc 51744.
pub fn xvd_devid(index: u32) -> u32 {
    (202 << 8) | (index << 4)
}

/// The devid libxl computes for a disk name, as libxl__device_disk_dev_number does
/// (plain decimal numbers are taken as devids).
pub fn devid(name: &str) -> Option<u32> {
    if let Some(disk) = VirtualDisk::parse(name) {
        return Some(disk.devid());
    }
    decimal(name).filter(|number| *number <= i32::MAX as u32)
}

/// Which disk letter (a = 0) a whole-disk devid stands for, whatever its scheme: the
/// stub domain's `/dev/xvdc` is the PV disk whose devid has index 2 (hdc, sdc or xvdc).
pub fn disk_index(devid: u32) -> Option<u32> {
    if devid & (1 << 28) != 0 {
        return (devid & 0xff == 0).then_some((devid >> 8) & 0xfffff);
    }
    let major = devid >> 8;
    let minor = devid & 0xff;
    match major {
        3 if minor & 0x3f == 0 && minor < 0x80 => Some(minor >> 6),
        22 if minor & 0x3f == 0 && minor < 0x80 => Some(2 + (minor >> 6)),
        8 | 202 if minor & 0xf == 0 => Some(minor >> 4),
        _ => None,
    }
}

/// Parses the letters of a stub-domain device path's `xvdX` part into a disk index.
pub fn xvd_index(name: &str) -> Option<u32> {
    let disk = VirtualDisk::parse(name)?;
    (disk.kind == DiskKind::Xvd && disk.partition == 0 && name.starts_with("xvd")).then_some(disk.index)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devids_as_libxl_computes_them() {
        assert_eq!(devid("hda"), Some(768));
        assert_eq!(devid("hdb"), Some(832));
        assert_eq!(devid("hdc"), Some(5632));
        assert_eq!(devid("hdd"), Some(5696));
        assert_eq!(devid("sda"), Some(2048));
        assert_eq!(devid("sdc"), Some(2080));
        assert_eq!(devid("xvda"), Some(51712));
        assert_eq!(devid("xvdc"), Some(51744));
        assert_eq!(devid("xvdc1"), Some(51745));
        assert_eq!(devid("hdc3"), Some(5635));
        assert_eq!(devid("d2p0"), Some(51744));
        assert_eq!(devid("xvdq"), Some((1 << 28) | (16 << 8)));
        assert_eq!(devid("xvdaa"), Some((1 << 28) | (26 << 8)));
        assert_eq!(devid("5632"), Some(5632));
    }

    #[test]
    fn formulas() {
        assert_eq!(hd_devid(0), 768);
        assert_eq!(hd_devid(2), 5632);
        assert_eq!(sd_devid(2), 2080);
        assert_eq!(xvd_devid(2), 51744);
    }

    #[test]
    fn refuses_what_libxl_refuses() {
        let refused =
            ["hde", "sdq", "xvd", "hd", "hdc0", "hdc01", "hdc64", "sda16", "xvda256", "d1p", "dp1", "cd", "", "hdC"];
        for name in refused {
            assert_eq!(devid(name), None, "{name}");
        }
    }

    #[test]
    fn disk_index_inverts_devid() {
        for index in 0..4 {
            assert_eq!(disk_index(hd_devid(index)), Some(index));
        }
        for index in 0..16 {
            assert_eq!(disk_index(sd_devid(index)), Some(index));
            assert_eq!(disk_index(xvd_devid(index)), Some(index));
        }
        assert_eq!(disk_index(devid("xvdaa").unwrap()), Some(26));
        assert_eq!(disk_index(devid("hdc1").unwrap()), None);
        assert_eq!(disk_index(1234), None);
        assert_eq!(xvd_index("xvdc"), Some(2));
        assert_eq!(xvd_index("hdc"), None);
        assert_eq!(xvd_index("xvdc1"), None);
    }
}
