//! The card's 93C46 serial EEPROM (64 words of 16 bits), as a driver bit-bangs it through
//! the 9346CR register: chip select, shift clock and data in driven by the driver, data
//! out read back.
//!
//! A read is: chip select rises, then on each rising clock edge one bit goes in: a start
//! bit (1), the opcode (`10` for read) and 6 address bits; the EEPROM then drives a dummy
//! 0 and shifts the word out, most significant bit first, one bit per rising edge. After
//! the 16th bit it waits for a new start bit without needing chip select to drop (as
//! QEMU's model does, for the FreeBSD drivers that keep it high between reads). Linux's
//! 8139too first reads word 0 with 8 address bits (a 93C56): a 93C46 starts its answer
//! two clocks early, so the word comes back shifted and is not 0x8129, and the driver
//! settles on 6 address bits.
//!
//! The contents are read-only here: write, erase and write-enable commands are accepted
//! and ignored, so a guest cannot change the MAC the card reloads on reset.

/// Words in a 93C46.
pub const NR_WORDS: usize = 64;

/// Bits of a command after the start bit: 2 opcode bits and 6 address bits.
const COMMAND_BITS: u8 = 8;
const OPCODE_READ: u16 = 0b10;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
enum State {
    /// waiting for the start bit
    Idle,
    /// shifting in a command
    Command { bits: u16, nr_bits: u8 },
    /// shifting out a word
    Read { remaining: u16, nr_bits: u8 },
    /// a command we do not carry out; waits for chip select to drop
    Ignore,
}

/// A 93C46 and the state of its serial interface.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Eeprom93c46 {
    #[serde(with = "crate::snapshot::big_array")]
    words: [u16; NR_WORDS],
    state: State,
    chip_select: bool,
    clock: bool,
    data_out: bool,
}

impl Eeprom93c46 {
    pub fn new(words: [u16; NR_WORDS]) -> Self {
        Eeprom93c46 { words, state: State::Idle, chip_select: false, clock: false, data_out: false }
    }

    /// Word `index` (0..64), or 0 past the end.
    pub fn word(&self, index: usize) -> u16 {
        self.words.get(index).copied().unwrap_or(0)
    }

    /// The pins as the driver now drives them (9346CR EECS, EESK, EEDI in programming
    /// mode; all low otherwise).
    pub fn set_pins(&mut self, chip_select: bool, clock: bool, data_in: bool) {
        let select_rises = chip_select && !self.chip_select;
        let clock_rises = clock && !self.clock;
        self.chip_select = chip_select;
        self.clock = clock;
        if !chip_select || select_rises {
            self.state = State::Idle;
            self.data_out = false;
        }
        if chip_select && clock_rises {
            self.shift(data_in);
        }
    }

    /// EEDO: what the EEPROM drives (low while it is not selected).
    pub fn data_out(&self) -> bool {
        self.chip_select && self.data_out
    }

    /// One rising clock edge with `data_in` on DI.
    fn shift(&mut self, data_in: bool) {
        self.state = match self.state {
            State::Idle if data_in => State::Command { bits: 0, nr_bits: 0 },
            State::Idle => State::Idle,
            State::Command { bits, nr_bits } => {
                let bits = (bits << 1) | u16::from(data_in);
                let nr_bits = nr_bits + 1;
                if nr_bits < COMMAND_BITS {
                    State::Command { bits, nr_bits }
                } else if bits >> 6 == OPCODE_READ {
                    // The dummy zero, then the word from the next edge on.
                    self.data_out = false;
                    State::Read { remaining: self.word(usize::from(bits & 0x3f)), nr_bits: 0 }
                } else {
                    log::trace!("rtl8139: EEPROM command {bits:#04x} ignored (read-only)");
                    State::Ignore
                }
            }
            State::Read { remaining, nr_bits } => {
                self.data_out = remaining & 0x8000 != 0;
                let nr_bits = nr_bits + 1;
                if nr_bits < 16 { State::Read { remaining: remaining << 1, nr_bits } } else { State::Idle }
            }
            State::Ignore => State::Ignore,
        };
    }
}
