//! The PIIX3 IDE function's bus-master DMA (BMIDE) registers and its PRD tables.
//!
//! BAR4 is 16 I/O ports, 8 per channel (primary at +0, secondary at +8), as QEMU's
//! hw/ide/pci.c and piix.c have them:
//!
//! - +0 command (byte): bit 0 start/stop, bit 3 direction (1: the device writes memory).
//!   Only those two bits are kept. Setting start sets ACTIVE and, when a drive has a DMA
//!   command waiting, starts its transfer; clearing it clears ACTIVE (a transfer already
//!   handed to the block worker still completes, where QEMU waits for it).
//! - +2 status (byte): bit 0 ACTIVE (read-only), bit 1 ERROR and bit 2 INTERRUPT
//!   (write 1 to clear), bits 5 and 6 drive 0/1 DMA capable (read/write). INTERRUPT is set
//!   whenever the channel's drive interrupts with nIEN clear (QEMU's `bmdma_irq`).
//! - +4 PRD table address (any width; bits 1:0 read as 0).
//!
//! Other offsets, and word or dword accesses to the command and status bytes, read as
//! all ones and ignore writes (QEMU's `bmdma_read`/`bmdma_write`).
//!
//! A PRD table is a list of 8-byte entries: a 32-bit physical address, a 16-bit byte
//! count (bit 0 ignored, 0 meaning 64 KiB) and a 16-bit flags word whose bit 15 ends the
//! table. The specification forbids an entry crossing a 64 KiB boundary; QEMU does not
//! check it and neither does this model (SeaBIOS and Linux never build one). As in QEMU,
//! the table is read at most one page (512 entries) from its start. Unlike QEMU, which
//! moves what a short table describes and then stops without an interrupt, a table that
//! describes less than the transfer (it ends early, or runs past 512 entries without an
//! end bit) ends the command before any data moves, with ABRT, the BMIDE ERROR bit and
//! an interrupt, so a guest never waits for a transfer that cannot finish. A table
//! describing more than the transfer leaves ACTIVE set at the end, as in QEMU.

use alloc::vec::Vec;

use xen_seams::hvm::{GuestMemory, GuestMemoryError};

/// Bytes of BAR4.
pub const BMIDE_LEN_BYTES: u16 = 16;
/// Ports of one channel in BAR4.
const CHANNEL_STRIDE: u16 = 8;

/// Command register bits.
pub(super) mod command {
    pub const START: u8 = 0x01;
    /// the device writes memory (a disk read)
    pub const TO_MEMORY: u8 = 0x08;
}

/// Status register bits.
pub(super) mod status {
    pub const ACTIVE: u8 = 0x01;
    pub const ERROR: u8 = 0x02;
    pub const INTERRUPT: u8 = 0x04;
    /// drive 0 and 1 DMA capable: kept for the driver
    pub const DRIVES_CAPABLE: u8 = 0x60;
}

/// The longest table read: one page of entries (QEMU's fail-safe).
pub const MAX_PRD_ENTRIES: usize = 512;
const PRD_ENTRY_BYTES: usize = 8;
const PRD_END_OF_TABLE: u32 = 1 << 31;

/// One piece of guest memory a transfer moves to or from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SgEntry {
    pub gpa: u64,
    pub len_bytes: u32,
}

/// The guest memory of one transfer, in order, exactly as long as the transfer.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ScatterList {
    pub entries: Vec<SgEntry>,
    /// the table described more than the transfer: ACTIVE stays set at the end
    pub longer_than_transfer: bool,
}

impl ScatterList {
    pub fn len_bytes(&self) -> u64 {
        self.entries.iter().map(|entry| u64::from(entry.len_bytes)).sum()
    }
}

/// Why a transfer could not start.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PrdError {
    #[error("bus mastering is off in the PCI command register")]
    BusMasterDisabled,
    #[error("the PRD table at {table_gpa:#x} is not in guest memory")]
    TableUnreadable { table_gpa: u64 },
    #[error("the PRD table describes {described_bytes} bytes and ends; the transfer is {needed_bytes}")]
    TooShort { described_bytes: u64, needed_bytes: u64 },
    #[error(
        "the PRD table has no end bit in {MAX_PRD_ENTRIES} entries and describes {described_bytes} of {needed_bytes} bytes"
    )]
    NoEndOfTable { described_bytes: u64, needed_bytes: u64 },
}

/// Reads the PRD table at `table_gpa` from guest memory: entries up to the one with the
/// end bit, at most [`MAX_PRD_ENTRIES`]. An entry that cannot be read ends the table
/// there (an error only if it is the first).
pub fn fetch_prd_table(memory: &dyn GuestMemory, table_gpa: u32) -> Result<Vec<u8>, PrdError> {
    let mut table = Vec::new();
    for index in 0..MAX_PRD_ENTRIES {
        let mut entry = [0u8; PRD_ENTRY_BYTES];
        let gpa = u64::from(table_gpa) + (index * PRD_ENTRY_BYTES) as u64;
        if memory.read(gpa, &mut entry).is_err() {
            if table.is_empty() {
                return Err(PrdError::TableUnreadable { table_gpa: u64::from(table_gpa) });
            }
            break;
        }
        table.extend_from_slice(&entry);
        if u32::from_le_bytes([entry[4], entry[5], entry[6], entry[7]]) & PRD_END_OF_TABLE != 0 {
            break;
        }
    }
    Ok(table)
}

/// The scatter list of a transfer of `transfer_len_bytes` from the PRD table bytes
/// `table` (whole 8-byte entries; a trailing partial entry is ignored): entries are
/// taken until the transfer is covered, the last one cut to what is left. A pure
/// function: it neither reads nor checks guest memory (the copy does).
pub fn parse_prd_table(table: &[u8], transfer_len_bytes: u64) -> Result<ScatterList, PrdError> {
    let mut entries = Vec::new();
    let mut described_bytes = 0u64;
    for raw in table.chunks_exact(PRD_ENTRY_BYTES).take(MAX_PRD_ENTRIES) {
        if described_bytes >= transfer_len_bytes {
            break;
        }
        let gpa = u64::from(u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]));
        let count_and_flags = u32::from_le_bytes([raw[4], raw[5], raw[6], raw[7]]);
        let len_bytes = match count_and_flags & 0xfffe {
            0 => 0x1_0000,
            len => len,
        };
        let needed = transfer_len_bytes - described_bytes;
        let taken = u64::from(len_bytes).min(needed) as u32;
        entries.push(SgEntry { gpa, len_bytes: taken });
        described_bytes += u64::from(taken);
        if described_bytes >= transfer_len_bytes {
            return Ok(ScatterList { entries, longer_than_transfer: taken < len_bytes });
        }
        if count_and_flags & PRD_END_OF_TABLE != 0 {
            return Err(PrdError::TooShort { described_bytes, needed_bytes: transfer_len_bytes });
        }
    }
    if described_bytes >= transfer_len_bytes {
        return Ok(ScatterList { entries, longer_than_transfer: false });
    }
    Err(PrdError::NoEndOfTable { described_bytes, needed_bytes: transfer_len_bytes })
}

/// The pieces of guest memory that bytes `offset_bytes..offset_bytes + len_bytes` of a
/// transfer over `sg` occupy: (gpa, start in the caller's buffer, length).
fn pieces(sg: &[SgEntry], offset_bytes: u64, len_bytes: usize) -> impl Iterator<Item = (u64, usize, usize)> + '_ {
    let end = offset_bytes.saturating_add(len_bytes as u64);
    let mut entry_start = 0u64;
    sg.iter().filter_map(move |entry| {
        let entry_end = entry_start + u64::from(entry.len_bytes);
        let from = offset_bytes.max(entry_start);
        let to = end.min(entry_end);
        let piece = (from < to)
            .then(|| (entry.gpa + (from - entry_start), (from - offset_bytes) as usize, (to - from) as usize));
        entry_start = entry_end;
        piece
    })
}

/// Copies `data` into guest memory as bytes `offset_bytes..` of a transfer over `sg`
/// (what a disk read moves; bytes past the list's end are dropped).
pub fn scatter(
    memory: &dyn GuestMemory,
    sg: &[SgEntry],
    offset_bytes: u64,
    data: &[u8],
) -> Result<(), GuestMemoryError> {
    for (gpa, at, len) in pieces(sg, offset_bytes, data.len()) {
        memory.write(gpa, &data[at..at + len])?;
    }
    Ok(())
}

/// Fills `out` from guest memory with bytes `offset_bytes..` of a transfer over `sg`
/// (what a disk write moves; bytes past the list's end are left as they are).
pub fn gather(
    memory: &dyn GuestMemory,
    sg: &[SgEntry],
    offset_bytes: u64,
    out: &mut [u8],
) -> Result<(), GuestMemoryError> {
    for (gpa, at, len) in pieces(sg, offset_bytes, out.len()) {
        memory.read(gpa, &mut out[at..at + len])?;
    }
    Ok(())
}

/// One channel's BMIDE registers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(super) struct BusMaster {
    pub command: u8,
    pub status: u8,
    pub prd_address: u32,
}

impl BusMaster {
    pub fn is_started(&self) -> bool {
        self.command & command::START != 0
    }

    /// A byte write of the status register.
    pub fn write_status(&mut self, value: u8) {
        let kept = self.status & status::ACTIVE;
        let still_set = self.status & !value & (status::ERROR | status::INTERRUPT);
        self.status = (value & status::DRIVES_CAPABLE) | kept | still_set;
    }

    /// A write of `size` bytes at `offset` (4..8) of the PRD table address.
    pub fn write_prd_address(&mut self, offset: u16, size: u8, value: u32) {
        let shift = 8 * u32::from(offset.saturating_sub(4).min(3));
        let mask = match size {
            1 => 0xffu32,
            2 => 0xffff,
            _ => u32::MAX,
        }
        .checked_shl(shift)
        .unwrap_or(0);
        let value = value.checked_shl(shift).unwrap_or(0);
        self.prd_address = ((self.prd_address & !mask) | (value & mask)) & !3;
    }

    /// A read of `size` bytes at `offset` (4..8) of the PRD table address.
    pub fn read_prd_address(&self, offset: u16, size: u8) -> u32 {
        let shift = 8 * u32::from(offset.saturating_sub(4).min(3));
        let value = self.prd_address.checked_shr(shift).unwrap_or(0);
        match size {
            1 => value & 0xff,
            2 => value & 0xffff,
            _ => value,
        }
    }
}

/// Where an offset of BAR4 lands: (channel, register offset 0..8).
pub(super) fn decode_offset(offset: u16) -> Option<(usize, u16)> {
    (offset < BMIDE_LEN_BYTES).then(|| (usize::from(offset / CHANNEL_STRIDE), offset % CHANNEL_STRIDE))
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    fn entry(gpa: u32, count: u32, last: bool) -> [u8; 8] {
        let mut bytes = [0u8; 8];
        bytes[..4].copy_from_slice(&gpa.to_le_bytes());
        bytes[4..].copy_from_slice(&(count | if last { PRD_END_OF_TABLE } else { 0 }).to_le_bytes());
        bytes
    }

    fn table(entries: &[[u8; 8]]) -> Vec<u8> {
        entries.iter().flatten().copied().collect()
    }

    #[test]
    fn a_linux_table_gives_its_entries() {
        let bytes = table(&[entry(0x10_0000, 0x1000, false), entry(0x20_0000, 0x800, true)]);
        let list = parse_prd_table(&bytes, 0x1800).unwrap();
        assert_eq!(
            list.entries,
            [SgEntry { gpa: 0x10_0000, len_bytes: 0x1000 }, SgEntry { gpa: 0x20_0000, len_bytes: 0x800 }]
        );
        assert!(!list.longer_than_transfer);
        assert_eq!(list.len_bytes(), 0x1800);
    }

    #[test]
    fn a_zero_count_is_64_kib_and_bit_0_is_ignored() {
        // SeaBIOS writes a 64 KiB entry as 0x10000 | EOT: its low 16 bits are 0.
        let bytes = table(&[entry(0x1_0000, 0x1_0000, false), entry(0x3_0000, 0x201, true)]);
        let list = parse_prd_table(&bytes, 0x1_0200).unwrap();
        assert_eq!(list.entries[0].len_bytes, 0x1_0000);
        assert_eq!(list.entries[1].len_bytes, 0x200);
    }

    #[test]
    fn a_longer_table_is_cut_and_keeps_active() {
        let bytes = table(&[entry(0x1000, 0x2000, true)]);
        let list = parse_prd_table(&bytes, 0x200).unwrap();
        assert_eq!(list.entries, [SgEntry { gpa: 0x1000, len_bytes: 0x200 }]);
        assert!(list.longer_than_transfer);
        // Entries after the covered transfer are not looked at, end bit or not.
        let bytes = table(&[entry(0x1000, 0x200, false), entry(0, 0, false)]);
        assert!(!parse_prd_table(&bytes, 0x200).unwrap().longer_than_transfer);
    }

    #[test]
    fn a_table_that_ends_early_is_too_short() {
        let bytes = table(&[entry(0x1000, 0x200, true), entry(0x2000, 0x200, true)]);
        assert_eq!(
            parse_prd_table(&bytes, 0x400),
            Err(PrdError::TooShort { described_bytes: 0x200, needed_bytes: 0x400 })
        );
    }

    #[test]
    fn a_table_without_end_bit_stops_at_512_entries() {
        let bytes: Vec<u8> = (0..MAX_PRD_ENTRIES + 10).flat_map(|i| entry(i as u32 * 0x1000, 0x200, false)).collect();
        let needed = (MAX_PRD_ENTRIES as u64 + 1) * 0x200;
        assert_eq!(
            parse_prd_table(&bytes, needed),
            Err(PrdError::NoEndOfTable { described_bytes: MAX_PRD_ENTRIES as u64 * 0x200, needed_bytes: needed })
        );
        assert!(parse_prd_table(&bytes, MAX_PRD_ENTRIES as u64 * 0x200).is_ok());
        assert!(matches!(parse_prd_table(&[], 512), Err(PrdError::NoEndOfTable { .. })));
        assert!(matches!(parse_prd_table(&[1, 2, 3], 512), Err(PrdError::NoEndOfTable { .. })));
    }

    #[test]
    fn fetch_reads_up_to_the_end_bit_and_fails_only_without_a_first_entry() {
        let ram = crate::vec_memory::VecGuestMemory::new(0x2000);
        let bytes = table(&[entry(0x100, 0x200, false), entry(0x300, 0x200, true), entry(0x500, 0x200, true)]);
        ram.write(0x1000, &bytes).unwrap();
        assert_eq!(fetch_prd_table(&ram, 0x1000).unwrap(), bytes[..16]);
        // A table running off the end of RAM ends there.
        ram.write(0x1ff8, &entry(0x100, 0x200, false)).unwrap();
        assert_eq!(fetch_prd_table(&ram, 0x1ff8).unwrap().len(), 8);
        assert_eq!(fetch_prd_table(&ram, 0x4000), Err(PrdError::TableUnreadable { table_gpa: 0x4000 }));
    }

    #[test]
    fn scatter_and_gather_follow_the_list_from_any_offset() {
        let ram = crate::vec_memory::VecGuestMemory::new(0x4000);
        let sg = [SgEntry { gpa: 0x1000, len_bytes: 3 }, SgEntry { gpa: 0x3000, len_bytes: 5 }];
        scatter(&ram, &sg, 0, b"abcd").unwrap();
        scatter(&ram, &sg, 4, b"efghXX").unwrap();
        let mut out = [0u8; 3];
        ram.read(0x1000, &mut out).unwrap();
        assert_eq!(&out, b"abc");
        let mut out = [0u8; 6];
        ram.read(0x3000, &mut out).unwrap();
        assert_eq!(&out, b"defgh\0", "bytes past the list are dropped");
        let mut back = [0u8; 8];
        gather(&ram, &sg, 0, &mut back).unwrap();
        assert_eq!(&back, b"abcdefgh");
        let mut middle = [0u8; 4];
        gather(&ram, &sg, 2, &mut middle).unwrap();
        assert_eq!(&middle, b"cdef");
        let outside = [SgEntry { gpa: 0x3ffe, len_bytes: 4 }];
        assert!(scatter(&ram, &outside, 0, b"1234").is_err());
    }

    #[test]
    fn status_bits_clear_on_one_and_capable_bits_are_kept() {
        let mut bm = BusMaster { status: status::ACTIVE | status::ERROR | status::INTERRUPT, ..Default::default() };
        bm.write_status(status::INTERRUPT | 0x60 | 0x80 | status::ACTIVE);
        assert_eq!(bm.status, status::ACTIVE | status::ERROR | 0x60, "INTR cleared, ACTIVE read-only, bit 7 not kept");
        bm.write_status(status::ERROR);
        assert_eq!(bm.status, status::ACTIVE);
    }

    #[test]
    fn prd_address_takes_any_width_and_drops_bits_1_0() {
        let mut bm = BusMaster::default();
        bm.write_prd_address(4, 4, 0x1234_5677);
        assert_eq!(bm.prd_address, 0x1234_5674);
        bm.write_prd_address(6, 2, 0xabcd);
        assert_eq!(bm.prd_address, 0xabcd_5674);
        bm.write_prd_address(5, 1, 0x00);
        assert_eq!(bm.prd_address, 0xabcd_0074);
        assert_eq!(bm.read_prd_address(4, 4), 0xabcd_0074);
        assert_eq!(bm.read_prd_address(7, 1), 0xab);
        assert_eq!(bm.read_prd_address(6, 2), 0xabcd);
        assert_eq!(vec![decode_offset(0), decode_offset(10), decode_offset(16)], [Some((0, 0)), Some((1, 2)), None]);
    }
}
