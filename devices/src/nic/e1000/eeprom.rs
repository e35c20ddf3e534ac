//! The card's 64-word microwire EEPROM, as the driver reaches it: bit-banged through
//! EECD (Linux's e1000 on an 82540 reads it this way) or a word at a time through EERD
//! (QEMU implements EERD on every model, so this card does too).
//!
//! The contents are QEMU's e1000 template with the MAC address in words 0-2, the device
//! id in words 11 and 13, and word 0x3f chosen so that words 0x00-0x3f sum to 0xBABA,
//! which the driver checks before it believes the MAC.
//!
//! The microwire protocol follows QEMU's `set_eecd`/`get_eecd`: a rising edge of CS
//! starts a command; the driver clocks in 3 opcode bits and 6 address bits on rising
//! edges of SK, and after a READ opcode each falling edge moves DO to the next data bit,
//! most significant bit first, running on into the following words. DO reads 1 while
//! no read is under way. Writes and the other opcodes are ignored.

use super::regs::*;

/// QEMU's e1000_eeprom_template (Intel's 8254x manual, tables 5-2 and 5-3); words 0-2,
/// 11, 13 and 0x3f are filled in by [`Eeprom::new`].
const TEMPLATE: [u16; EEPROM_NR_WORDS] = [
    0x0000, 0x0000, 0x0000, 0x0000, 0xffff, 0x0000, 0x0000, 0x0000, //
    0x3000, 0x1000, 0x6403, 0x0000, 0x8086, 0x0000, 0x8086, 0x3040, //
    0x0008, 0x2000, 0x7e14, 0x0048, 0x1000, 0x00d8, 0x0000, 0x2700, //
    0x6cc9, 0x3150, 0x0722, 0x040b, 0x0984, 0x0000, 0xc000, 0x0706, //
    0x1008, 0x0000, 0x0f04, 0x7fff, 0x4d01, 0xffff, 0xffff, 0xffff, //
    0xffff, 0xffff, 0xffff, 0xffff, 0xffff, 0xffff, 0xffff, 0xffff, //
    0x0100, 0x4000, 0x121c, 0xffff, 0xffff, 0xffff, 0xffff, 0xffff, //
    0xffff, 0xffff, 0xffff, 0xffff, 0xffff, 0xffff, 0xffff, 0x0000, //
];
/// Words holding the PCI device id.
const DEVICE_ID_WORDS: [usize; 2] = [11, 13];
/// Opcode and address bits of a microwire command on a 64-word part.
const COMMAND_BITS: u16 = 9;
/// The EECD bits the driver drives (and reads back).
const EECD_DRIVEN: u32 = EECD_SK | EECD_CS | EECD_DI | EECD_FWE_MASK | EECD_REQ;

/// The EEPROM and its microwire shift state.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub(super) struct Eeprom {
    #[serde(with = "crate::snapshot::big_array")]
    words: [u16; EEPROM_NR_WORDS],
    /// bits shifted in since CS rose
    shifted_in: u32,
    nr_bits_in: u16,
    /// the data bit DO shows while reading: word `bit_out >> 4`, bit `15 - (bit_out & 15)`
    bit_out: u16,
    reading: bool,
    /// the driven EECD bits as last written
    eecd: u32,
}

impl Eeprom {
    /// The EEPROM of a card with this MAC address.
    pub(super) fn new(mac: [u8; 6]) -> Self {
        let mut words = TEMPLATE;
        for (word, pair) in words.iter_mut().zip(mac.chunks_exact(2)) {
            *word = u16::from_le_bytes([pair[0], pair[1]]);
        }
        for index in DEVICE_ID_WORDS {
            words[index] = PCI_DEVICE_82540EM;
        }
        let sum = words[..EEPROM_CHECKSUM_WORD].iter().fold(0u16, |sum, &word| sum.wrapping_add(word));
        words[EEPROM_CHECKSUM_WORD] = EEPROM_SUM.wrapping_sub(sum);
        Eeprom { words, shifted_in: 0, nr_bits_in: 0, bit_out: 0, reading: false, eecd: 0 }
    }

    /// Back to idle (a MAC reset): the contents stay.
    pub(super) fn reset(&mut self) {
        *self = Eeprom { words: self.words, shifted_in: 0, nr_bits_in: 0, bit_out: 0, reading: false, eecd: 0 };
    }

    /// EECD as the driver reads it: present, access granted, the driven bits, and DO.
    pub(super) fn read_eecd(&self) -> u32 {
        let mut eecd = EECD_PRES | EECD_GNT | self.eecd;
        if !self.reading || self.data_bit() {
            eecd |= EECD_DO;
        }
        eecd
    }

    /// A write to EECD: chip select and clock edges drive the microwire state.
    pub(super) fn write_eecd(&mut self, value: u32) {
        let old = self.eecd;
        self.eecd = value & EECD_DRIVEN;
        if value & EECD_CS == 0 {
            return;
        }
        if (value ^ old) & EECD_CS != 0 {
            // CS rose: a new command starts.
            self.shifted_in = 0;
            self.nr_bits_in = 0;
            self.bit_out = 0;
            self.reading = false;
        }
        if (value ^ old) & EECD_SK == 0 {
            return;
        }
        if value & EECD_SK == 0 {
            // Falling edge: DO moves on to the next bit.
            self.bit_out = self.bit_out.wrapping_add(1);
            return;
        }
        self.shifted_in = (self.shifted_in << 1) | u32::from(value & EECD_DI != 0);
        self.nr_bits_in = self.nr_bits_in.wrapping_add(1);
        if self.nr_bits_in == COMMAND_BITS && !self.reading {
            let address = (self.shifted_in & 0x3f) as u16;
            // The falling edge after the last address bit brings bit 15 of that word.
            self.bit_out = (address << 4).wrapping_sub(1);
            self.reading = (self.shifted_in >> 6) & 7 == EEPROM_READ_OPCODE_MICROWIRE;
        }
    }

    /// EERD as the driver reads it after writing `eerd`: with START set, DONE and (for
    /// words 0..64) the word in bits 31:16, the written bits kept (QEMU's flash_eerd_read).
    pub(super) fn read_eerd(&self, eerd: u32) -> u32 {
        if eerd & EERD_START == 0 {
            return eerd;
        }
        let request = eerd & !EERD_START;
        match self.words.get((request >> EERD_ADDR_SHIFT) as usize) {
            Some(&word) => (u32::from(word) << EERD_DATA_SHIFT) | EERD_DONE | request,
            None => EERD_DONE | request,
        }
    }

    fn data_bit(&self) -> bool {
        let word = self.words[usize::from(self.bit_out >> 4) & (EEPROM_NR_WORDS - 1)];
        (word >> ((self.bit_out & 0xf) ^ 0xf)) & 1 != 0
    }
}
