//! The 16550A UART the guest sees at COM1 (I/O 0x3f8-0x3ff, ISA IRQ 4).
//!
//! It carries the guest's serial console (isolinux/GRUB in serial mode, Linux
//! `console=ttyS0`) to the stub domain's PV console 3. The register behaviour follows
//! QEMU's `hw/char/serial.c` (a 16550A with 16-byte FIFOs), so that hvmloader's
//! `uart_exists`, SeaBIOS's `detect_serial` and Linux's 8250 `autoconfig` and startup
//! tests all find a 16550A here.
//!
//! Transmission is instant: a byte written to THR goes straight into the output
//! buffer (at most `output_limit_bytes`) that the console task drains with
//! [`Uart16550::take_output`]. The output buffer is the back pressure: THRE and TEMT
//! read set only while the buffer has room for a whole transmit FIFO (16 bytes with the
//! FIFO enabled, 1 without), because Linux writes a FIFO's worth of bytes after each
//! THRE interrupt without looking at LSR in between. A THR write while the buffer is
//! completely full drops the byte and counts it ([`UartStats::dropped_tx_bytes`]); when
//! the console drains enough, THRE comes back and a THRE interrupt becomes pending
//! (the caller reads [`Uart16550::irq_level`] afterwards).
//!
//! There is no clock here, so the receive character timeout (IIR 0x0C) is modelled
//! this way: the end of each [`Uart16550::receive`] batch, and each RBR read that
//! leaves bytes behind, counts as "the line went quiet", and the timeout is indicated
//! at once whenever the RX FIFO then holds data below its trigger level. (At or above
//! the trigger level the RX data interrupt, IIR 0x04, is pending anyway.)
//!
//! Loopback (MCR bit 4) sends transmitted bytes to the RX side instead of the output
//! buffer and reflects the modem control outputs in MSR, as Linux's loopback test
//! and `size_fifo` expect; input from the console is not accepted meanwhile.

use alloc::collections::VecDeque;
use alloc::vec::Vec;

/// Receive and transmit FIFO depth of a 16550A.
const FIFO_LEN_BYTES: usize = 16;

// Register offsets from the base port.
const REG_DATA: u8 = 0; // RBR (read) / THR (write); DLL with DLAB
const REG_IER: u8 = 1; // DLM with DLAB
const REG_IIR_FCR: u8 = 2;
const REG_LCR: u8 = 3;
const REG_MCR: u8 = 4;
const REG_LSR: u8 = 5;
const REG_MSR: u8 = 6;
const REG_SCR: u8 = 7;

const LCR_DLAB: u8 = 0x80;

const IER_RDI: u8 = 0x01;
const IER_THRI: u8 = 0x02;
const IER_RLSI: u8 = 0x04;
const IER_MSI: u8 = 0x08;
const IER_MASK: u8 = 0x0f;

const IIR_NO_INT: u8 = 0x01;
const IIR_MSI: u8 = 0x00;
const IIR_THRI: u8 = 0x02;
const IIR_RDI: u8 = 0x04;
const IIR_RLSI: u8 = 0x06;
const IIR_CTI: u8 = 0x0c;
const IIR_ID_MASK: u8 = 0x0f;
const IIR_FIFO_ENABLED: u8 = 0xc0;

const FCR_FIFO_ENABLE: u8 = 0x01;
const FCR_CLEAR_RX: u8 = 0x02;
const FCR_CLEAR_TX: u8 = 0x04;
/// the FCR bits a 16550A keeps: trigger level, DMA mode, FIFO enable
const FCR_STICKY: u8 = 0xc9;
const FCR_TRIGGER_MASK: u8 = 0xc0;

const MCR_LOOP: u8 = 0x10;
const MCR_OUT2: u8 = 0x08;
const MCR_MASK: u8 = 0x1f;

const LSR_DR: u8 = 0x01;
const LSR_OE: u8 = 0x02;
const LSR_BI: u8 = 0x10;
const LSR_THRE: u8 = 0x20;
const LSR_TEMT: u8 = 0x40;
/// overrun, parity, framing errors and break: the line status interrupt causes
const LSR_INT_ANY: u8 = 0x1e;

const MSR_DCD: u8 = 0x80;
const MSR_DSR: u8 = 0x20;
const MSR_CTS: u8 = 0x10;
const MSR_ANY_DELTA: u8 = 0x0f;

/// What the UART counted since it was created.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UartStats {
    /// bytes the guest wrote to THR while the output buffer was full
    pub dropped_tx_bytes: u64,
    /// received bytes lost because the RX FIFO (or RBR) was full (only loopback can
    /// overrun: [`Uart16550::receive`] takes no more than fits)
    pub rx_overruns: u64,
}

/// A 16550A UART: registers, FIFOs and the bounded output buffer towards the console.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Uart16550 {
    divisor: u16,
    /// the received byte when the FIFO is off
    rbr: u8,
    ier: u8,
    iir: u8,
    lcr: u8,
    mcr: u8,
    lsr: u8,
    msr: u8,
    scr: u8,
    fcr: u8,
    rx_fifo: VecDeque<u8>,
    rx_trigger_level_bytes: usize,
    /// a THRE interrupt is pending (cleared by reading IIR while it shows THRE)
    thr_pending: bool,
    /// the character timeout interrupt is pending
    rx_timeout_pending: bool,
    output: VecDeque<u8>,
    output_limit_bytes: usize,
    #[serde(skip)]
    stats: UartStats,
    /// a drop was logged and the buffer has not had room since
    #[serde(skip)]
    drop_logged: bool,
}

impl Uart16550 {
    /// COM1's base I/O port.
    pub const COM1_BASE: u16 = 0x3f8;
    /// COM1's ISA IRQ.
    pub const COM1_IRQ: u8 = 4;

    /// A UART in its reset state. `output_limit_bytes`: how many transmitted bytes may
    /// wait for the console (for example 4096).
    pub fn new(output_limit_bytes: usize) -> Self {
        let mut uart = Uart16550 {
            divisor: 0x0c, // 9600 baud
            rbr: 0,
            ier: 0,
            iir: IIR_NO_INT,
            lcr: 0,
            mcr: MCR_OUT2,
            lsr: 0,
            msr: MSR_DCD | MSR_DSR | MSR_CTS,
            scr: 0,
            fcr: 0,
            rx_fifo: VecDeque::with_capacity(FIFO_LEN_BYTES),
            rx_trigger_level_bytes: 1,
            thr_pending: false,
            rx_timeout_pending: false,
            output: VecDeque::new(),
            output_limit_bytes,
            stats: UartStats::default(),
            drop_logged: false,
        };
        uart.refresh_transmitter(false);
        // Reset leaves THRE set without a pending THRE interrupt.
        uart.thr_pending = false;
        uart.update_irq();
        uart
    }

    /// Reads the register at `offset` (0..=7 from the base; byte accesses). Reading
    /// RBR, IIR, LSR and MSR has the 16550's side effects.
    pub fn read(&mut self, offset: u8) -> u8 {
        let value = match offset {
            REG_DATA if self.lcr & LCR_DLAB != 0 => self.divisor.to_le_bytes()[0],
            REG_DATA => self.read_rbr(),
            REG_IER if self.lcr & LCR_DLAB != 0 => self.divisor.to_le_bytes()[1],
            REG_IER => self.ier,
            REG_IIR_FCR => self.read_iir(),
            REG_LCR => self.lcr,
            REG_MCR => self.mcr,
            REG_LSR => self.read_lsr(),
            REG_MSR => self.read_msr(),
            REG_SCR => self.scr,
            _ => {
                log::trace!("uart: read of offset {offset}: not a register");
                0xff
            }
        };
        log::trace!("uart: read {offset} = {value:#04x}");
        value
    }

    /// Writes the register at `offset` (0..=7 from the base; byte accesses).
    pub fn write(&mut self, offset: u8, value: u8) {
        log::trace!("uart: write {offset} = {value:#04x}");
        match offset {
            REG_DATA if self.lcr & LCR_DLAB != 0 => self.divisor = (self.divisor & 0xff00) | u16::from(value),
            REG_DATA => self.write_thr(value),
            REG_IER if self.lcr & LCR_DLAB != 0 => {
                self.divisor = (self.divisor & 0x00ff) | (u16::from(value) << 8);
            }
            REG_IER => self.write_ier(value),
            REG_IIR_FCR => self.write_fcr(value),
            REG_LCR => self.lcr = value,
            REG_MCR => self.mcr = value & MCR_MASK,
            REG_LSR | REG_MSR => {} // read-only on a 16550A
            REG_SCR => self.scr = value,
            _ => log::trace!("uart: write of offset {offset}: not a register"),
        }
    }

    /// The IRQ line level: an interrupt is pending (IIR bit 0 clear).
    pub fn irq_level(&self) -> bool {
        self.iir & IIR_NO_INT == 0
    }

    /// Takes the bytes the guest transmitted, oldest first, at most `max`. When this
    /// makes room for a transmit FIFO's worth, THRE comes back and a THRE interrupt
    /// becomes pending (read [`Self::irq_level`] afterwards).
    pub fn take_output(&mut self, max: usize) -> Vec<u8> {
        let nr_bytes = max.min(self.output.len());
        let taken: Vec<u8> = self.output.drain(..nr_bytes).collect();
        self.refresh_transmitter(false);
        taken
    }

    /// How many transmitted bytes wait for the console.
    pub fn output_len(&self) -> usize {
        self.output.len()
    }

    /// Gives the guest bytes from the console; returns how many were accepted (what
    /// fits in the RX FIFO: up to 16 bytes with the FIFO enabled, 1 without, none in
    /// loopback). The caller keeps the rest and offers them again later, for example
    /// after the guest read RBR ([`Self::receive_capacity`] says how many would fit).
    pub fn receive(&mut self, input: &[u8]) -> usize {
        let nr_accepted = input.len().min(self.receive_capacity());
        if nr_accepted == 0 {
            return 0;
        }
        for &byte in &input[..nr_accepted] {
            self.push_rx(byte);
        }
        self.end_rx_batch();
        nr_accepted
    }

    /// How many bytes [`Self::receive`] would accept now.
    pub fn receive_capacity(&self) -> usize {
        if self.mcr & MCR_LOOP != 0 {
            0
        } else if self.fifo_enabled() {
            FIFO_LEN_BYTES.saturating_sub(self.rx_fifo.len())
        } else if self.lsr & LSR_DR != 0 {
            0
        } else {
            1
        }
    }

    /// Counters: bytes dropped because the output buffer was full, RX overruns.
    pub fn stats(&self) -> UartStats {
        self.stats
    }

    fn fifo_enabled(&self) -> bool {
        self.fcr & FCR_FIFO_ENABLE != 0
    }

    /// Free bytes the output buffer must have for THRE to read set: a transmit FIFO's
    /// worth (never more than the whole buffer).
    fn transmit_room_bytes(&self) -> usize {
        let fifo_len = if self.fifo_enabled() { FIFO_LEN_BYTES } else { 1 };
        fifo_len.min(self.output_limit_bytes)
    }

    /// Recomputes THRE/TEMT from the output buffer's room. `transmitted`: a byte just
    /// left THR, which (as in QEMU) makes a THRE interrupt pending again if THRE is set.
    fn refresh_transmitter(&mut self, transmitted: bool) {
        let was_empty = self.lsr & LSR_THRE != 0;
        let room = self.output_limit_bytes.saturating_sub(self.output.len());
        let empty = room >= self.transmit_room_bytes();
        if empty {
            self.lsr |= LSR_THRE | LSR_TEMT;
            if transmitted || !was_empty {
                self.thr_pending = true;
            }
        } else {
            self.lsr &= !(LSR_THRE | LSR_TEMT);
            self.thr_pending = false;
        }
        if room > 0 {
            self.drop_logged = false;
        }
        self.update_irq();
    }

    fn write_thr(&mut self, value: u8) {
        if self.mcr & MCR_LOOP != 0 {
            self.push_rx(value);
            self.end_rx_batch();
        } else if self.output.len() < self.output_limit_bytes {
            self.output.push_back(value);
        } else {
            self.stats.dropped_tx_bytes += 1;
            if !self.drop_logged {
                log::debug!("uart: output buffer full ({} bytes): dropping transmitted bytes", self.output_limit_bytes);
                self.drop_logged = true;
            }
        }
        self.refresh_transmitter(true);
    }

    fn write_ier(&mut self, value: u8) {
        let value = value & IER_MASK;
        let changed = self.ier ^ value;
        self.ier = value;
        // As QEMU (and Bochs): turning THRI on while THRE is set makes the THRE
        // interrupt pending again even if reading IIR had cleared it; turning it off
        // forgets it. SeaBIOS's detect_serial and Linux's THRE tests rely on this.
        if changed & IER_THRI != 0 {
            self.thr_pending = self.ier & IER_THRI != 0 && self.lsr & LSR_THRE != 0;
        }
        self.update_irq();
    }

    fn write_fcr(&mut self, value: u8) {
        let mut value = value;
        // Switching the FIFOs on or off clears both.
        if (value ^ self.fcr) & FCR_FIFO_ENABLE != 0 {
            value |= FCR_CLEAR_RX | FCR_CLEAR_TX;
        }
        if value & FCR_CLEAR_RX != 0 {
            self.lsr &= !(LSR_DR | LSR_BI);
            self.rx_timeout_pending = false;
            self.rx_fifo.clear();
        }
        if value & FCR_CLEAR_TX != 0 && self.lsr & LSR_THRE != 0 {
            // The transmit FIFO is always empty here (bytes leave at once), so
            // clearing it only re-arms the THRE interrupt, as in QEMU.
            self.thr_pending = true;
        }
        self.fcr = value & FCR_STICKY;
        if self.fifo_enabled() {
            self.iir |= IIR_FIFO_ENABLED;
            self.rx_trigger_level_bytes = match self.fcr & FCR_TRIGGER_MASK {
                0x00 => 1,
                0x40 => 4,
                0x80 => 8,
                _ => 14,
            };
        } else {
            self.iir &= !IIR_FIFO_ENABLED;
        }
        // The FIFO mode decides how much room THRE stands for.
        self.refresh_transmitter(false);
    }

    fn read_rbr(&mut self) -> u8 {
        let value = if self.fifo_enabled() {
            let value = self.rx_fifo.pop_front().unwrap_or(0);
            if self.rx_fifo.is_empty() {
                self.lsr &= !(LSR_DR | LSR_BI);
            }
            self.rx_timeout_pending = self.rx_below_trigger();
            value
        } else {
            self.lsr &= !(LSR_DR | LSR_BI);
            self.rbr
        };
        self.update_irq();
        value
    }

    fn read_iir(&mut self) -> u8 {
        let value = self.iir;
        if value & IIR_ID_MASK == IIR_THRI {
            self.thr_pending = false;
            self.update_irq();
        }
        value
    }

    fn read_lsr(&mut self) -> u8 {
        let value = self.lsr;
        if self.lsr & (LSR_BI | LSR_OE) != 0 {
            self.lsr &= !(LSR_BI | LSR_OE);
            self.update_irq();
        }
        value
    }

    fn read_msr(&mut self) -> u8 {
        if self.mcr & MCR_LOOP != 0 {
            // The modem control outputs loop back: OUT2 -> DCD, OUT1 -> RI,
            // RTS -> CTS, DTR -> DSR.
            ((self.mcr & 0x0c) << 4) | ((self.mcr & 0x02) << 3) | ((self.mcr & 0x01) << 5)
        } else {
            let value = self.msr;
            if self.msr & MSR_ANY_DELTA != 0 {
                self.msr &= !MSR_ANY_DELTA;
                self.update_irq();
            }
            value
        }
    }

    /// Puts one received byte into the RX FIFO (or RBR), counting an overrun if full.
    fn push_rx(&mut self, byte: u8) {
        if self.fifo_enabled() {
            if self.rx_fifo.len() < FIFO_LEN_BYTES {
                self.rx_fifo.push_back(byte);
            } else {
                // An overrun does not overwrite the FIFO's contents.
                self.lsr |= LSR_OE;
                self.stats.rx_overruns += 1;
            }
        } else {
            if self.lsr & LSR_DR != 0 {
                self.lsr |= LSR_OE;
                self.stats.rx_overruns += 1;
            }
            self.rbr = byte;
        }
        self.lsr |= LSR_DR;
    }

    /// The end of a batch of received bytes stands for the character timeout.
    fn end_rx_batch(&mut self) {
        self.rx_timeout_pending = self.rx_below_trigger();
        self.update_irq();
    }

    fn rx_below_trigger(&self) -> bool {
        self.fifo_enabled() && !self.rx_fifo.is_empty() && self.rx_fifo.len() < self.rx_trigger_level_bytes
    }

    /// Recomputes IIR from the pending causes, highest priority first.
    fn update_irq(&mut self) {
        let rx_data_ready =
            self.lsr & LSR_DR != 0 && (!self.fifo_enabled() || self.rx_fifo.len() >= self.rx_trigger_level_bytes);
        let id = if self.ier & IER_RLSI != 0 && self.lsr & LSR_INT_ANY != 0 {
            IIR_RLSI
        } else if self.ier & IER_RDI != 0 && self.rx_timeout_pending {
            IIR_CTI
        } else if self.ier & IER_RDI != 0 && rx_data_ready {
            IIR_RDI
        } else if self.ier & IER_THRI != 0 && self.thr_pending {
            IIR_THRI
        } else if self.ier & IER_MSI != 0 && self.msr & MSR_ANY_DELTA != 0 {
            IIR_MSI
        } else {
            IIR_NO_INT
        };
        self.iir = (self.iir & 0xf0) | id;
    }
}

/// Save/restore ([`crate::snapshot`]): registers, the receive FIFO and the output not
/// yet taken by the console task.
impl Uart16550 {
    /// Takes a saved UART whose FIFO and output fit this one (its output limit and
    /// counters stay this one's).
    pub fn load_state(&mut self, saved: Uart16550) -> Result<(), &'static str> {
        if saved.rx_fifo.len() > FIFO_LEN_BYTES || !(1..=FIFO_LEN_BYTES).contains(&saved.rx_trigger_level_bytes) {
            return Err("its receive FIFO is larger than a 16550A's");
        }
        if saved.output.len() > self.output_limit_bytes {
            return Err("its output is over this UART's output limit");
        }
        let (output_limit_bytes, stats) = (self.output_limit_bytes, self.stats);
        *self = Uart16550 { output_limit_bytes, stats, ..saved };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    const THR: u8 = 0;
    const RBR: u8 = 0;
    const DLL: u8 = 0;
    const IER: u8 = 1;
    const DLM: u8 = 1;
    const IIR: u8 = 2;
    const FCR: u8 = 2;
    const EFR: u8 = 2;
    const LCR: u8 = 3;
    const MCR: u8 = 4;
    const LSR: u8 = 5;
    const MSR: u8 = 6;
    const SCR: u8 = 7;

    #[test]
    fn reset_values() {
        let mut uart = Uart16550::new(4096);
        assert_eq!(uart.read(IER), 0x00);
        assert_eq!(uart.read(IIR), 0x01);
        assert_eq!(uart.read(LCR), 0x00);
        assert_eq!(uart.read(MCR), 0x08);
        assert_eq!(uart.read(LSR), 0x60);
        assert_eq!(uart.read(MSR), 0xb0);
        assert_eq!(uart.read(SCR), 0x00);
        assert_eq!(uart.read(RBR), 0x00);
        uart.write(LCR, 0x80);
        assert_eq!((uart.read(DLL), uart.read(DLM)), (0x0c, 0x00));
        assert!(!uart.irq_level());
        assert_eq!(uart.stats(), UartStats::default());
    }

    #[test]
    fn dlab_switches_offsets_0_and_1_to_the_divisor() {
        let mut uart = Uart16550::new(4096);
        uart.write(LCR, 0x83);
        uart.write(DLL, 0x01); // 115200 baud
        uart.write(DLM, 0x00);
        assert_eq!(uart.read(DLL), 0x01);
        assert_eq!(uart.read(DLM), 0x00);
        assert_eq!(uart.output_len(), 0, "a DLL write is not a transmitted byte");
        assert_eq!(uart.read(IER), 0x00, "a DLM write does not touch IER");
        uart.write(LCR, 0x03);
        assert_eq!(uart.read(LCR), 0x03);
        uart.write(THR, b'x');
        assert_eq!(uart.take_output(16), b"x");
        uart.write(LCR, 0x83);
        assert_eq!(uart.read(DLL), 0x01, "the divisor survives DLAB off and on");
    }

    #[test]
    fn ier_keeps_bits_3_to_0_and_scratch_is_plain() {
        let mut uart = Uart16550::new(4096);
        uart.write(IER, 0xff);
        assert_eq!(uart.read(IER), 0x0f);
        uart.write(SCR, 0xa5);
        assert_eq!(uart.read(SCR), 0xa5);
        uart.write(MCR, 0xff);
        assert_eq!(uart.read(MCR), 0x1f);
        uart.write(MCR, 0x0b);
        uart.write(LSR, 0x00);
        uart.write(MSR, 0x00);
        assert_eq!(uart.read(LSR), 0x60, "LSR writes are ignored");
        assert_eq!(uart.read(MSR) & 0xf0, 0xb0, "MSR writes are ignored");
    }

    #[test]
    fn thre_interrupt_follows_ier_and_reading_iir_clears_it() {
        let mut uart = Uart16550::new(4096);
        uart.write(IER, IER_THRI);
        assert!(uart.irq_level(), "enabling THRI with THRE set raises the line");
        assert_eq!(uart.read(IIR), 0x02);
        assert!(!uart.irq_level(), "reading IIR showing THRE clears it");
        assert_eq!(uart.read(IIR), 0x01);
        // A transmitted byte makes THRE pending again.
        uart.write(THR, b'a');
        assert!(uart.irq_level());
        assert_eq!(uart.read(IIR), 0x02);
        // Turning THRI off and on again re-arms it (Linux's "THRE re-assert" test).
        uart.write(IER, 0);
        assert!(!uart.irq_level());
        uart.write(IER, IER_THRI);
        assert_eq!(uart.read(IIR), 0x02);
        // Writing the same IER again is not a rising edge.
        uart.write(IER, IER_THRI);
        assert_eq!(uart.read(IIR), 0x01);
        assert_eq!(uart.take_output(16), b"a");
    }

    #[test]
    fn fcr_enables_fifo_sets_trigger_and_clears() {
        let mut uart = Uart16550::new(4096);
        uart.write(FCR, 0x01);
        assert_eq!(uart.read(IIR), 0xc1, "IIR bits 7:6 show the FIFO");
        assert_eq!(uart.receive(b"0123456789abcdefXYZ"), 16, "the RX FIFO holds 16 bytes");
        assert_eq!(uart.read(LSR) & LSR_DR, LSR_DR);
        uart.write(FCR, 0x03); // clear RX, keep the FIFO on
        assert_eq!(uart.read(LSR) & LSR_DR, 0);
        assert_eq!(uart.receive_capacity(), 16);
        // Trigger level 8: the RX data interrupt waits for 8 bytes.
        uart.write(FCR, 0x81);
        uart.write(IER, IER_RDI);
        uart.receive(b"1234567");
        assert_eq!(uart.read(IIR), 0xcc, "below the trigger: character timeout");
        uart.receive(b"8");
        assert_eq!(uart.read(IIR), 0xc4, "at the trigger: RX data");
        // Switching the FIFO off clears it and the IIR FIFO bits.
        uart.write(FCR, 0x00);
        assert_eq!(uart.read(IIR), 0x01);
        assert_eq!(uart.read(LSR) & LSR_DR, 0);
        assert_eq!(uart.receive_capacity(), 1);
    }

    #[test]
    fn non_fifo_receive_takes_one_byte_and_the_line_follows_iir() {
        let mut uart = Uart16550::new(4096);
        uart.write(IER, IER_RDI);
        assert_eq!(uart.receive(b"hi"), 1);
        assert_eq!(uart.receive(b"i"), 0, "RBR is full");
        assert!(uart.irq_level());
        assert_eq!(uart.read(IIR), 0x04);
        assert_eq!(uart.read(LSR) & LSR_DR, LSR_DR);
        assert_eq!(uart.read(RBR), b'h');
        assert!(!uart.irq_level(), "reading RBR lowers the line");
        assert_eq!(uart.read(IIR), 0x01);
        assert_eq!(uart.receive(b"i"), 1);
        assert!(uart.irq_level());
        uart.write(IER, 0);
        assert!(!uart.irq_level(), "masking RDI lowers the line");
        uart.write(IER, IER_RDI);
        assert!(uart.irq_level());
        assert_eq!(uart.read(RBR), b'i');
        assert!(!uart.irq_level());
    }

    #[test]
    fn fifo_receive_timeout_and_priority_over_thre() {
        let mut uart = Uart16550::new(4096);
        uart.write(FCR, 0xc7); // FIFO on, trigger 14, both cleared
        uart.write(IER, IER_RDI | IER_THRI);
        assert_eq!(uart.read(IIR), 0xc2, "THRE pending first");
        assert_eq!(uart.receive(b"abc"), 3);
        assert!(uart.irq_level());
        assert_eq!(uart.read(IIR), 0xcc, "the batch ended below the trigger: timeout");
        assert_eq!(uart.read(RBR), b'a');
        assert_eq!(uart.read(IIR), 0xcc, "bytes left below the trigger: timeout again");
        assert_eq!(uart.read(RBR), b'b');
        assert_eq!(uart.read(RBR), b'c');
        assert_eq!(uart.read(LSR) & LSR_DR, 0);
        assert_eq!(uart.read(RBR), 0, "an empty FIFO reads 0");
        assert_eq!(uart.read(IIR), 0xc1);
        assert!(!uart.irq_level());
        // A full batch: RX data interrupt at the trigger level.
        assert_eq!(uart.receive(&[b'z'; 20]), 16);
        assert_eq!(uart.read(IIR), 0xc4);
        for _ in 0..16 {
            assert_eq!(uart.read(RBR), b'z');
        }
        assert_eq!(uart.read(IIR), 0xc1);
    }

    #[test]
    fn loopback_echoes_bytes_and_reflects_mcr_in_msr() {
        let mut uart = Uart16550::new(4096);
        uart.write(MCR, MCR_LOOP | 0x0a); // LOOP | OUT2 | RTS
        assert_eq!(uart.read(MSR), 0x90);
        uart.write(MCR, MCR_LOOP | 0x0f);
        assert_eq!(uart.read(MSR), 0xf0);
        uart.write(MCR, MCR_LOOP);
        assert_eq!(uart.read(MSR), 0x00);
        assert_eq!(uart.receive(b"x"), 0, "no console input in loopback");
        uart.write(THR, 0x5a);
        assert_eq!(uart.output_len(), 0, "loopback bytes do not reach the console");
        assert_eq!(uart.read(LSR) & (LSR_DR | LSR_THRE), LSR_DR | LSR_THRE);
        assert_eq!(uart.read(RBR), 0x5a);
        uart.write(MCR, 0x0b);
        assert_eq!(uart.read(MSR), 0xb0, "out of loopback MSR shows the fixed lines");
    }

    #[test]
    fn loopback_overruns_are_counted_and_raise_line_status() {
        let mut uart = Uart16550::new(4096);
        uart.write(FCR, 0x07);
        uart.write(IER, IER_RLSI);
        uart.write(MCR, MCR_LOOP);
        for byte in 0..=255u8 {
            uart.write(THR, byte);
        }
        assert_eq!(uart.stats().rx_overruns, 240);
        assert!(uart.irq_level());
        assert_eq!(uart.read(IIR), 0xc6, "the overrun is a line status interrupt");
        assert_eq!(uart.read(LSR) & LSR_OE, LSR_OE);
        assert_eq!(uart.read(LSR) & LSR_OE, 0, "reading LSR clears OE");
        assert!(!uart.irq_level());
        // Non-FIFO: a second byte before RBR is read overruns too.
        let mut uart = Uart16550::new(4096);
        uart.write(MCR, MCR_LOOP);
        uart.write(THR, 1);
        uart.write(THR, 2);
        assert_eq!(uart.stats().rx_overruns, 1);
        assert_eq!(uart.read(RBR), 2);
    }

    #[test]
    fn backpressure_clears_thre_and_draining_brings_it_back_with_an_interrupt() {
        let mut uart = Uart16550::new(32);
        uart.write(FCR, 0x07);
        uart.write(IER, IER_THRI);
        assert_eq!(uart.read(IIR), 0xc2);
        // 16 bytes (a FIFO's worth) leave room for another FIFO: THRE stays set.
        for byte in 0..16u8 {
            uart.write(THR, byte);
        }
        assert_eq!(uart.read(LSR) & (LSR_THRE | LSR_TEMT), LSR_THRE | LSR_TEMT);
        uart.write(THR, 16);
        assert_eq!(uart.read(LSR) & (LSR_THRE | LSR_TEMT), 0, "less than a FIFO of room");
        assert!(!uart.irq_level(), "no THRE interrupt while THRE is clear");
        for byte in 17..40u8 {
            uart.write(THR, byte);
        }
        assert_eq!(uart.output_len(), 32);
        assert_eq!(uart.stats().dropped_tx_bytes, 8);
        // The console drains 10 bytes: 10 free is less than a FIFO, still clear.
        assert_eq!(uart.take_output(10), (0..10u8).collect::<Vec<_>>());
        assert_eq!(uart.read(LSR) & LSR_THRE, 0);
        assert!(!uart.irq_level());
        // 20 free: THRE is back, with its interrupt.
        assert_eq!(uart.take_output(10), (10..20u8).collect::<Vec<_>>());
        assert_eq!(uart.read(LSR) & (LSR_THRE | LSR_TEMT), LSR_THRE | LSR_TEMT);
        assert!(uart.irq_level());
        assert_eq!(uart.read(IIR), 0xc2);
        assert_eq!(uart.take_output(100), (20..32u8).collect::<Vec<_>>());
        assert_eq!(uart.output_len(), 0);
    }

    #[test]
    fn backpressure_without_fifo_waits_for_one_free_byte() {
        let mut uart = Uart16550::new(2);
        uart.write(THR, b'a');
        assert_eq!(uart.read(LSR) & LSR_THRE, LSR_THRE);
        uart.write(THR, b'b');
        assert_eq!(uart.read(LSR) & LSR_THRE, 0);
        uart.write(THR, b'c');
        assert_eq!(uart.stats().dropped_tx_bytes, 1);
        assert_eq!(uart.take_output(1), b"a");
        assert_eq!(uart.read(LSR) & LSR_THRE, LSR_THRE);
        // Enabling the FIFO asks for 16 bytes of room, capped at the buffer size.
        uart.write(FCR, 0x01);
        assert_eq!(uart.read(LSR) & LSR_THRE, 0, "1 free byte of 2 is not the whole buffer");
        assert_eq!(uart.take_output(1), b"b");
        assert_eq!(uart.read(LSR) & LSR_THRE, LSR_THRE);
    }

    #[test]
    fn modem_status_reads_fixed_lines_without_interrupt() {
        let mut uart = Uart16550::new(16);
        uart.write(IER, IER_MSI);
        assert!(!uart.irq_level());
        assert_eq!(uart.read(MSR), 0xb0);
    }

    #[test]
    fn offsets_past_7_read_all_ones() {
        let mut uart = Uart16550::new(16);
        assert_eq!(uart.read(8), 0xff);
        uart.write(8, 0x12);
        assert_eq!(uart.output_len(), 0);
    }

    /// hvmloader's `uart_exists` (tools/firmware/hvmloader/util.c).
    fn hvmloader_uart_exists(uart: &mut Uart16550) -> bool {
        let saved = uart.read(IER);
        uart.write(IER, 0);
        let b = uart.read(IER);
        uart.write(IER, 0xf);
        let c = uart.read(IER);
        uart.write(IER, saved);
        b == 0 && c == 0xf
    }

    /// SeaBIOS's `detect_serial` (src/serial.c).
    fn seabios_detect_serial(uart: &mut Uart16550) -> bool {
        uart.write(IER, 0x02);
        if uart.read(IER) != 0x02 {
            return false;
        }
        if uart.read(IIR) & 0x3f != 0x02 {
            return false;
        }
        uart.write(IER, 0x00);
        true
    }

    #[test]
    fn firmware_probes_find_the_uart() {
        let mut uart = Uart16550::new(4096);
        assert!(hvmloader_uart_exists(&mut uart));
        assert_eq!(uart.read(IER), 0, "uart_exists restores IER");
        assert!(seabios_detect_serial(&mut uart));
        assert!(!uart.irq_level());
    }

    /// Linux's `autoconfig` (drivers/tty/serial/8250/8250_port.c) for a port without
    /// UPF_SKIP_TEST, register by register, with `autoconfig_16550a` and `size_fifo`;
    /// returns the type it settles on.
    fn linux_autoconfig(uart: &mut Uart16550) -> &'static str {
        // IER test
        let scratch = uart.read(IER);
        uart.write(IER, 0);
        let scratch2 = uart.read(IER) & 0x0f;
        uart.write(IER, 0x0f);
        let scratch3 = uart.read(IER) & 0x0f;
        uart.write(IER, scratch);
        if scratch2 != 0 || scratch3 != 0x0f {
            return "none (IER test)";
        }
        let save_mcr = uart.read(MCR);
        let save_lcr = uart.read(LCR);
        // loopback test
        uart.write(MCR, MCR_LOOP | 0x0a);
        let status1 = uart.read(MSR) & 0xf0;
        uart.write(MCR, save_mcr);
        if status1 != 0x90 {
            return "none (LOOP test)";
        }
        uart.write(LCR, 0xbf);
        uart.write(EFR, 0);
        uart.write(LCR, 0);
        uart.write(FCR, 0x01);
        let kind = match uart.read(IIR) >> 6 {
            0 => "8250/16450",
            1 => "unknown",
            2 => "16550",
            _ => linux_autoconfig_16550a(uart),
        };
        uart.write(LCR, save_lcr);
        // Reset the UART.
        uart.write(MCR, save_mcr);
        uart.write(FCR, 0x01);
        uart.write(FCR, 0x07);
        uart.write(FCR, 0x00);
        uart.read(RBR);
        uart.write(IER, 0);
        kind
    }

    fn linux_autoconfig_16550a(uart: &mut Uart16550) -> &'static str {
        // EFR with DLAB set (ST16C650V1)
        uart.write(LCR, 0x80);
        if uart.read(EFR) == 0 {
            return "ST16650 or FSL64";
        }
        // EFR with LCR 0xBF
        uart.write(LCR, 0xbf);
        if uart.read(EFR) == 0 {
            return "EFR UART";
        }
        // National Semiconductor SuperIO: MCR LOOP visible in EXCR1 (bank 2)?
        uart.write(LCR, 0);
        let status1 = uart.read(MCR);
        uart.write(LCR, 0xe0);
        let mut status2 = uart.read(2);
        if (status2 ^ status1) & MCR_LOOP == 0 {
            uart.write(LCR, 0);
            uart.write(MCR, status1 ^ MCR_LOOP);
            uart.write(LCR, 0xe0);
            status2 = uart.read(2);
            uart.write(LCR, 0);
            uart.write(MCR, status1);
            if (status2 ^ status1) & MCR_LOOP != 0 {
                return "NS16550A";
            }
        }
        // TI16750: IIR bit 5 with the 64-byte FIFO bit
        uart.write(LCR, 0);
        uart.write(FCR, 0x21);
        let iir1 = uart.read(IIR) >> 5;
        uart.write(FCR, 0x01);
        uart.write(LCR, 0x80);
        uart.write(FCR, 0x21);
        let iir2 = uart.read(IIR) >> 5;
        uart.write(FCR, 0x01);
        uart.write(LCR, 0);
        if iir1 == 6 && iir2 == 7 {
            return "TI16750";
        }
        // XScale: IER bit 6
        let iersave = uart.read(IER);
        uart.write(IER, iersave & !0x40);
        if uart.read(IER) & 0x40 == 0 {
            uart.write(IER, iersave | 0x40);
            if uart.read(IER) & 0x40 != 0 {
                return "XScale";
            }
        }
        uart.write(IER, iersave);
        if linux_size_fifo(uart) == 64 {
            return "U6_16550A";
        }
        "16550A"
    }

    fn linux_size_fifo(uart: &mut Uart16550) -> usize {
        let old_lcr = uart.read(LCR);
        uart.write(LCR, 0);
        let old_fcr = uart.read(FCR); // reads IIR, as Linux does
        let old_mcr = uart.read(MCR);
        uart.write(FCR, 0x07);
        uart.write(MCR, MCR_LOOP);
        uart.write(LCR, 0x80);
        let old_dl = u16::from(uart.read(DLL)) | u16::from(uart.read(DLM)) << 8;
        uart.write(DLL, 1);
        uart.write(DLM, 0);
        uart.write(LCR, 0x03);
        for count in 0..=255u8 {
            uart.write(THR, count);
        }
        let mut count = 0;
        while uart.read(LSR) & LSR_DR != 0 && count < 256 {
            uart.read(RBR);
            count += 1;
        }
        uart.write(FCR, old_fcr);
        uart.write(MCR, old_mcr);
        uart.write(LCR, 0x80);
        uart.write(DLL, old_dl as u8);
        uart.write(DLM, (old_dl >> 8) as u8);
        uart.write(LCR, old_lcr);
        count
    }

    /// The register part of Linux's `serial8250_do_startup` for a 16550A with an IRQ:
    /// returns (LSR safety check passed, UART_BUG_THRE, UART_BUG_TXEN).
    fn linux_startup(uart: &mut Uart16550) -> (bool, bool, bool) {
        uart.write(FCR, 0x01);
        uart.write(FCR, 0x07);
        uart.write(FCR, 0x00);
        uart.read(LSR);
        uart.read(RBR);
        uart.read(IIR);
        uart.read(MSR);
        let lsr_ok = uart.read(LSR) != 0xff;
        // THRE re-assert test
        // wait_for_xmitr: up to 10000 polls, then go on anyway
        for _ in 0..10_000 {
            if uart.read(LSR) & LSR_THRE != 0 {
                break;
            }
        }
        uart.write(IER, IER_THRI);
        let iir1 = uart.read(IIR);
        uart.write(IER, 0);
        uart.write(IER, IER_THRI);
        let iir = uart.read(IIR);
        uart.write(IER, 0);
        let bug_thre = iir1 & IIR_NO_INT == 0 && iir & IIR_NO_INT != 0;
        uart.write(LCR, 0x03);
        uart.write(MCR, 0x0b); // DTR | RTS | OUT2
        // TX-enable test
        uart.write(IER, IER_THRI);
        let lsr = uart.read(LSR);
        let iir = uart.read(IIR);
        uart.write(IER, 0);
        let bug_txen = lsr & LSR_TEMT != 0 && iir & IIR_NO_INT != 0;
        uart.read(LSR);
        uart.read(RBR);
        uart.read(IIR);
        uart.read(MSR);
        (lsr_ok, bug_thre, bug_txen)
    }

    #[test]
    fn linux_detects_a_16550a_and_starts_it_without_bug_workarounds() {
        let mut uart = Uart16550::new(4096);
        assert!(hvmloader_uart_exists(&mut uart));
        assert!(seabios_detect_serial(&mut uart));
        assert_eq!(linux_autoconfig(&mut uart), "16550A");
        assert_eq!(uart.stats().dropped_tx_bytes, 0, "size_fifo's bytes stayed in loopback");
        assert_eq!(uart.output_len(), 0);
        assert_eq!(linux_startup(&mut uart), (true, false, false));
        // set_termios: 115200 8N1 with the 16550A FIFO (trigger 8), then RX interrupts.
        uart.write(LCR, 0x83);
        uart.write(DLL, 1);
        uart.write(DLM, 0);
        uart.write(LCR, 0x03);
        uart.write(FCR, 0x81);
        uart.write(IER, IER_RLSI | IER_RDI);
        assert!(!uart.irq_level());
        // Console output through the THRE interrupt: the ISR reads IIR, then writes up
        // to 16 bytes.
        uart.write(IER, IER_RLSI | IER_RDI | IER_THRI);
        assert!(uart.irq_level());
        assert_eq!(uart.read(IIR), 0xc2);
        assert!(!uart.irq_level());
        for &byte in b"Linux version 6" {
            uart.write(THR, byte);
        }
        assert!(uart.irq_level(), "the FIFO drained at once: THRE interrupt again");
        assert_eq!(uart.take_output(4096), b"Linux version 6");
        // Input: a line typed on the console.
        assert_eq!(uart.receive(b"root\n"), 5);
        assert!(uart.irq_level());
        assert_eq!(uart.read(IIR), 0xcc);
        let mut line = vec![];
        while uart.read(LSR) & LSR_DR != 0 {
            line.push(uart.read(RBR));
        }
        assert_eq!(line, b"root\n");
    }
}
