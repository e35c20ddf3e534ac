//! IDENTIFY DEVICE and IDENTIFY PACKET DEVICE data, and the disk's CHS geometry.
//!
//! The words are QEMU's (hw/ide/core.c `ide_identify`, `ide_atapi_identify`). A disk
//! advertises DMA as QEMU's does: word 49 bit 8, single word DMA 0-2 (word 62), multiword
//! DMA 0-2 (word 63) and Ultra DMA 0-5 (word 88), each word's high byte showing the mode
//! SET FEATURES selected. Linux's ata_piix gives the PIIX3 (8086:7010) multiword DMA 1-2
//! and no Ultra DMA, so a Linux guest runs its disk in MWDMA2. The CD-ROM advertises no
//! DMA (ATAPI PACKET with the DMA bit is refused), so guests read it by PIO. SMART and
//! READ/WRITE MULTIPLE are not advertised (word 47 = 0, word 82 bit 0 clear).

/// Bytes in IDENTIFY data (256 little-endian words).
pub(super) const IDENTIFY_LEN_BYTES: usize = 512;

/// The firmware revision QEMU reports (`qemu_hw_version()`).
pub(super) const FIRMWARE_REVISION: &str = "2.5+";
/// Model strings QEMU uses; guests and tests key on them.
pub(super) const DISK_MODEL: &str = "QEMU HARDDISK";
pub(super) const CDROM_MODEL: &str = "QEMU DVD-ROM";

/// The largest LBA28 sector count IDENTIFY words 60-61 carry.
const MAX_LBA28_SECTORS: u64 = (1 << 28) - 1;

/// Legacy CHS geometry of a disk: QEMU's `guess_chs_for_size` (16 heads, 63 sectors per
/// track, 2 to 16383 cylinders). Only CHS-addressed commands and IDENTIFY words 1-6 and
/// 54-58 use it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(super) struct Geometry {
    pub cylinders: u16,
    pub heads: u8,
    pub sectors_per_track: u8,
}

impl Geometry {
    pub fn for_size(nr_sectors: u64) -> Self {
        let heads = 16u8;
        let sectors_per_track = 63u8;
        let cylinders = (nr_sectors / (u64::from(heads) * u64::from(sectors_per_track))).clamp(2, 16383);
        // The clamp keeps the value below 16384, so the conversion cannot fail.
        Geometry { cylinders: u16::try_from(cylinders).unwrap_or(16383), heads, sectors_per_track }
    }

    /// Sectors the CHS geometry covers (IDENTIFY words 57-58).
    pub fn nr_sectors(self) -> u32 {
        u32::from(self.cylinders) * u32::from(self.heads) * u32::from(self.sectors_per_track)
    }
}

/// The serial number QEMU gives the drive at `index` (0 = primary master .. 3 = secondary
/// slave): "QM00001" .. "QM00004".
pub(super) fn serial_number(index: u8) -> [u8; 7] {
    let mut serial = *b"QM00000";
    serial[6] = b'1' + (index & 3);
    serial
}

/// Word-addressed builder over a 512-byte little-endian buffer.
struct Words([u8; IDENTIFY_LEN_BYTES]);

impl Words {
    fn new() -> Self {
        Words([0; IDENTIFY_LEN_BYTES])
    }

    fn set(&mut self, word: usize, value: u16) {
        if let Some(bytes) = self.0.get_mut(word * 2..word * 2 + 2) {
            bytes.copy_from_slice(&value.to_le_bytes());
        }
    }

    /// An ATA string: space padded to `len_words * 2` bytes, the two bytes of each word
    /// swapped (the first character is the high byte of the first word).
    fn set_string(&mut self, first_word: usize, len_words: usize, text: &[u8]) {
        for i in 0..len_words * 2 {
            let byte = text.get(i).copied().unwrap_or(b' ');
            if let Some(slot) = self.0.get_mut(first_word * 2 + (i ^ 1)) {
                *slot = byte;
            }
        }
    }
}

/// Supported single word (word 62) and multiword (word 63) DMA modes: 0-2.
const DMA_MODES_0_TO_2: u16 = 0x07;
/// Supported Ultra DMA modes (word 88): 0-5.
const UDMA_MODES_0_TO_5: u16 = 0x3f;

/// The selected-mode bit (high byte) of a DMA mode word for mode `mode`.
fn selected(mode: u8) -> u16 {
    1u16.checked_shl(u32::from(mode & 7) + 8).unwrap_or(0)
}

/// IDENTIFY DEVICE for an ATA disk of `nr_sectors` 512-byte sectors.
pub(super) fn ata_identify(
    nr_sectors: u64,
    geometry: Geometry,
    serial: &[u8],
    write_cache: bool,
    dma_mode: DmaMode,
) -> [u8; 512] {
    let mut w = Words::new();
    w.set(0, 0x0040); // fixed device, not removable
    w.set(1, geometry.cylinders);
    w.set(3, u16::from(geometry.heads));
    w.set(4, 512 * u16::from(geometry.sectors_per_track)); // retired: bytes per track
    w.set(5, 512); // retired: bytes per sector
    w.set(6, u16::from(geometry.sectors_per_track));
    w.set_string(10, 10, serial);
    w.set(20, 3); // retired: buffer type
    w.set(21, 512); // retired: buffer size in sectors
    w.set(22, 4); // obsolete: ECC bytes
    w.set_string(23, 4, FIRMWARE_REVISION.as_bytes());
    w.set_string(27, 20, DISK_MODEL.as_bytes());
    // word 47 = 0: no READ/WRITE MULTIPLE
    w.set(48, 1); // dword I/O
    w.set(49, (1 << 11) | (1 << 9) | (1 << 8)); // IORDY, LBA, DMA
    w.set(51, 0x200); // PIO timing mode
    w.set(52, 0x200); // DMA timing mode
    w.set(53, 0b111); // words 54-58, 64-70 and 88 valid
    w.set(54, geometry.cylinders);
    w.set(55, u16::from(geometry.heads));
    w.set(56, u16::from(geometry.sectors_per_track));
    let chs_sectors = geometry.nr_sectors();
    w.set(57, chs_sectors as u16);
    w.set(58, (chs_sectors >> 16) as u16);
    let lba28_sectors = nr_sectors.min(MAX_LBA28_SECTORS);
    w.set(60, lba28_sectors as u16);
    w.set(61, (lba28_sectors >> 16) as u16);
    let (single_word, multiword, ultra) = match dma_mode {
        DmaMode::None => (0, 0, 0),
        DmaMode::SingleWord(mode) => (selected(mode), 0, 0),
        DmaMode::Multiword(mode) => (0, selected(mode), 0),
        DmaMode::Ultra(mode) => (0, 0, selected(mode)),
    };
    w.set(62, DMA_MODES_0_TO_2 | single_word);
    w.set(63, DMA_MODES_0_TO_2 | multiword);
    w.set(64, 0b11); // PIO 3 and 4
    for word in 65..=68 {
        w.set(word, 120); // cycle times in ns
    }
    w.set(80, 0xf0); // ATA-4 .. ATA-7
    w.set(81, 0x16);
    w.set(82, (1 << 14) | (1 << 5)); // NOP, write cache supported
    w.set(83, (1 << 14) | (1 << 13) | (1 << 12) | (1 << 10)); // FLUSH EXT, FLUSH, LBA48
    w.set(84, 1 << 14); // no GPL (bit 5): libata skips READ LOG EXT
    w.set(85, (1 << 14) | (u16::from(write_cache) << 5));
    w.set(86, (1 << 13) | (1 << 12) | (1 << 10));
    w.set(87, 1 << 14);
    w.set(88, UDMA_MODES_0_TO_5 | ultra);
    w.set(93, 0x6001); // hardware reset result as QEMU reports it
    w.set(100, nr_sectors as u16);
    w.set(101, (nr_sectors >> 16) as u16);
    w.set(102, (nr_sectors >> 32) as u16);
    w.set(103, (nr_sectors >> 48) as u16);
    w.0
}

/// IDENTIFY PACKET DEVICE for the ATAPI CD/DVD-ROM.
pub(super) fn atapi_identify(serial: &[u8]) -> [u8; 512] {
    let mut w = Words::new();
    // ATAPI, CD-ROM (type 5), removable, DRQ within 50 us of PACKET (no CDB interrupt),
    // 12-byte packets
    w.set(0, (2 << 14) | (5 << 8) | (1 << 7) | (2 << 5));
    w.set_string(10, 10, serial);
    w.set(20, 3);
    w.set(21, 512);
    w.set(22, 4);
    w.set_string(23, 4, FIRMWARE_REVISION.as_bytes());
    w.set_string(27, 20, CDROM_MODEL.as_bytes());
    w.set(48, 1);
    w.set(49, 1 << 9); // LBA; no DMA
    w.set(53, 0b11);
    w.set(64, 0b11);
    w.set(65, 0xb4);
    w.set(66, 0xb4);
    w.set(67, 0x12c);
    w.set(68, 0xb4);
    w.set(71, 30);
    w.set(72, 30);
    w.set(80, 0x1e); // ATA/ATAPI-1 .. 4
    w.0
}

use super::drive::DmaMode;

#[cfg(test)]
mod tests {
    use super::*;

    fn word(data: &[u8; 512], index: usize) -> u16 {
        u16::from_le_bytes([data[index * 2], data[index * 2 + 1]])
    }

    #[test]
    fn disk_identify_words_libata_and_seabios_read() {
        let nr_sectors = 0x1_2345_6789u64;
        let data = ata_identify(nr_sectors, Geometry::for_size(nr_sectors), &serial_number(0), true, DmaMode::None);
        assert_eq!(word(&data, 0), 0x0040);
        assert_eq!(word(&data, 47), 0, "no multiple-sector transfers");
        assert_ne!(word(&data, 49) & (1 << 8), 0, "DMA");
        assert_ne!(word(&data, 49) & (1 << 9), 0, "LBA");
        assert_eq!((word(&data, 62), word(&data, 63), word(&data, 88)), (0x07, 0x07, 0x3f), "nothing selected");
        assert_eq!(word(&data, 53) & 0b100, 0b100, "word 88 valid");
        assert_eq!(u32::from(word(&data, 60)) | (u32::from(word(&data, 61)) << 16), 0x0fff_ffff);
        let lba48 = (0..4).fold(0u64, |acc, i| acc | (u64::from(word(&data, 100 + i)) << (16 * i)));
        assert_eq!(lba48, nr_sectors);
        assert_eq!(word(&data, 83) & 0xf400, 0x7400);
        assert_eq!(word(&data, 84) & (1 << 5), 0, "no GPL");
        assert_ne!(word(&data, 85) & (1 << 5), 0, "write cache enabled");
        assert_eq!(word(&data, 93) & 0xdf61, 0x4001, "SeaBIOS keeps probing the slave");
        // model: "QEMU HARDDISK" with bytes swapped in each word
        assert_eq!(&data[54..60], b"EQUMH ");
        assert_eq!(&data[20..28], b"MQ0000 1");
    }

    #[test]
    fn disk_identify_shows_the_selected_dma_mode() {
        let identify = |mode| ata_identify(1 << 20, Geometry::for_size(1 << 20), &serial_number(0), true, mode);
        let words = |data: &[u8; 512]| (word(data, 62), word(data, 63), word(data, 88));
        // libata's MWDMA2 on a PIIX3: SET FEATURES 0x03 with 0x22
        assert_eq!(words(&identify(DmaMode::Multiword(2))), (0x07, 0x0407, 0x3f));
        assert_eq!(words(&identify(DmaMode::Ultra(5))), (0x07, 0x07, 0x203f));
        assert_eq!(words(&identify(DmaMode::SingleWord(0))), (0x0107, 0x07, 0x3f));
    }

    #[test]
    fn cdrom_identify_is_a_removable_atapi_cdrom_without_dma() {
        let data = atapi_identify(&serial_number(2));
        assert_eq!(word(&data, 0), 0x85c0);
        assert_eq!(word(&data, 49), 1 << 9);
        assert_eq!(word(&data, 63), 0);
        assert_eq!(&data[54..66], b"EQUMD DVR-MO");
    }

    #[test]
    fn geometry_is_clamped() {
        assert_eq!(Geometry::for_size(0).cylinders, 2);
        assert_eq!(Geometry::for_size(16 * 63 * 100).cylinders, 100);
        assert_eq!(Geometry::for_size(u64::MAX).cylinders, 16383);
    }
}
