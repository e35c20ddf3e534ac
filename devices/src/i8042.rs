//! The 8042 keyboard controller at ports 0x60 (data) and 0x64 (status and command),
//! with no keyboard and no mouse plugged in.
//!
//! Why a controller and nothing behind it: a stub domain has no display, so there is
//! no input to give a guest, but guests still talk to the controller. The one thing
//! that matters is reset. Xen's FADT names 0xcf9 as the ACPI reset register but does
//! not set the flag that says it is supported, so Linux's `reboot` skips ACPI and goes
//! to the keyboard controller: it waits for the input buffer to empty (status bit 1
//! clear) and writes 0xfe. Without a controller each of those status reads is a
//! round trip to Xen that answers 0xff, busy forever: Linux spins 10 x 65536 reads
//! before it gives up and falls back to the BIOS, minutes under emulation. Here the
//! input buffer is always empty (a write is handled as it arrives) and 0xfe, any
//! pulse of output-port bit 0 and an output-port write with bit 0 clear reset the
//! machine, as on a PC.
//!
//! Firmware and drivers probe the controller (SeaBIOS's and Linux's self-test, the
//! configuration byte, Linux's AUX loop-back test), so its own commands are answered
//! as QEMU's 8042 answers them. A byte written for the keyboard (port 0x60) or the
//! mouse (command 0xd4) finds no device: the controller answers 0xfe with the
//! timeout bit set, as a real controller with an empty socket does, which drivers
//! take as "nothing there" at once instead of waiting out their timeouts.
//!
//! Output bytes wait in a queue bounded at [`OUTPUT_QUEUE_BYTES`]; the controller
//! raises IRQ 1 (keyboard byte) or IRQ 12 (AUX byte) while one is waiting and the
//! configuration byte enables that interrupt.

use alloc::collections::VecDeque;

use crate::ratelimit::LogLimiter;

/// The data port: output buffer on read, data for the keyboard or a command on write.
pub const DATA_PORT: u16 = 0x60;
/// The status register on read, the command register on write.
pub const COMMAND_PORT: u16 = 0x64;
/// The ISA interrupt for keyboard bytes.
pub const KEYBOARD_IRQ: u8 = 1;
/// The ISA interrupt for AUX (mouse) bytes.
pub const AUX_IRQ: u8 = 12;
/// Output bytes the controller holds before it drops new ones (a PS/2 device's queue).
pub const OUTPUT_QUEUE_BYTES: usize = 16;

/// Status register bits.
pub mod status {
    /// output buffer full: a byte waits at the data port
    pub const OUTPUT_FULL: u8 = 0x01;
    /// input buffer full: never set, a write is handled as it arrives
    pub const INPUT_FULL: u8 = 0x02;
    /// system flag: set once the controller passed its self-test
    pub const SYSTEM: u8 = 0x04;
    /// the last write was to the command port
    pub const COMMAND: u8 = 0x08;
    /// keyboard not inhibited by the key lock
    pub const UNLOCKED: u8 = 0x10;
    /// the waiting byte is from the AUX port
    pub const AUX_DATA: u8 = 0x20;
    /// the device did not answer
    pub const TIMEOUT: u8 = 0x40;
}

/// Configuration ("command") byte bits.
pub mod config {
    /// interrupt on keyboard bytes
    pub const KEYBOARD_INTERRUPT: u8 = 0x01;
    /// interrupt on AUX bytes
    pub const AUX_INTERRUPT: u8 = 0x02;
    /// the system flag
    pub const SYSTEM: u8 = 0x04;
    /// keyboard clock disabled
    pub const KEYBOARD_DISABLED: u8 = 0x10;
    /// AUX clock disabled
    pub const AUX_DISABLED: u8 = 0x20;
    /// scan codes translated to set 1
    pub const TRANSLATE: u8 = 0x40;
}

/// Controller commands (writes to [`COMMAND_PORT`]).
mod command {
    pub const READ_CONFIG: u8 = 0x20;
    pub const WRITE_CONFIG: u8 = 0x60;
    pub const AUX_DISABLE: u8 = 0xa7;
    pub const AUX_ENABLE: u8 = 0xa8;
    pub const AUX_TEST: u8 = 0xa9;
    pub const SELF_TEST: u8 = 0xaa;
    pub const KEYBOARD_TEST: u8 = 0xab;
    pub const KEYBOARD_DISABLE: u8 = 0xad;
    pub const KEYBOARD_ENABLE: u8 = 0xae;
    pub const READ_INPUT_PORT: u8 = 0xc0;
    pub const READ_OUTPUT_PORT: u8 = 0xd0;
    pub const WRITE_OUTPUT_PORT: u8 = 0xd1;
    pub const WRITE_KEYBOARD_OUTPUT: u8 = 0xd2;
    pub const WRITE_AUX_OUTPUT: u8 = 0xd3;
    pub const WRITE_AUX_DEVICE: u8 = 0xd4;
    pub const DISABLE_A20: u8 = 0xdd;
    pub const ENABLE_A20: u8 = 0xdf;
    pub const READ_TEST_INPUTS: u8 = 0xe0;
    /// 0xf0-0xff: pulse the output-port bits whose command bits (3-0) are clear
    pub const PULSE_FIRST: u8 = 0xf0;
}

/// Output port bits.
mod output_port {
    /// the CPU reset line (active low)
    pub const RESET_HIGH: u8 = 0x01;
    /// the A20 gate (meaningless under Xen, where A20 is always on)
    pub const A20: u8 = 0x02;
    /// what a PC's output port reads at power-on (reset high, A20 on, buffers empty)
    pub const POWER_ON: u8 = 0xcf;
}

/// What the controller answers at a "device not there": a resend byte with the
/// timeout bit.
const NO_DEVICE_REPLY: u8 = 0xfe;
/// The controller's self-test passed.
const SELF_TEST_PASSED: u8 = 0x55;
/// An interface test found no fault.
const INTERFACE_OK: u8 = 0x00;
/// Input port: keyboard not inhibited.
const INPUT_PORT: u8 = 0x80;

/// What a write asks of the machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ControllerRequest {
    /// the guest pulled the CPU reset line
    Reset,
}

/// A byte waiting at the data port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct OutputByte {
    value: u8,
    aux: bool,
    timeout: bool,
}

/// The 8042 keyboard controller (no keyboard or mouse attached).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct I8042 {
    config: u8,
    output_port: u8,
    self_tested: bool,
    last_write_was_command: bool,
    /// a command waiting for its data byte at the data port
    pending: Option<u8>,
    output: VecDeque<OutputByte>,
    /// what the data port reads when nothing waits (the last byte read, as on a PC)
    last_read: u8,
    dropped_bytes: u64,
    #[serde(skip)]
    log: LogLimiter,
}

impl Default for I8042 {
    fn default() -> Self {
        I8042::new()
    }
}

impl I8042 {
    /// The controller as the BIOS finds it: interrupts on, translation on.
    pub fn new() -> I8042 {
        I8042 {
            config: config::KEYBOARD_INTERRUPT | config::AUX_INTERRUPT | config::TRANSLATE,
            output_port: output_port::POWER_ON,
            self_tested: false,
            last_write_was_command: true,
            pending: None,
            output: VecDeque::with_capacity(OUTPUT_QUEUE_BYTES),
            last_read: 0,
            dropped_bytes: 0,
            log: LogLimiter::new(),
        }
    }

    /// The status register.
    pub fn status(&self) -> u8 {
        let mut value = status::UNLOCKED;
        if self.self_tested || self.config & config::SYSTEM != 0 {
            value |= status::SYSTEM;
        }
        if self.last_write_was_command {
            value |= status::COMMAND;
        }
        if let Some(byte) = self.output.front() {
            value |= status::OUTPUT_FULL;
            if byte.aux {
                value |= status::AUX_DATA;
            }
            if byte.timeout {
                value |= status::TIMEOUT;
            }
        }
        value
    }

    /// The configuration byte.
    pub fn config(&self) -> u8 {
        self.config
    }

    /// Bytes dropped because the output queue was full.
    pub fn dropped_bytes(&self) -> u64 {
        self.dropped_bytes
    }

    /// A byte read of `port` (0x60 or 0x64).
    pub fn read(&mut self, port: u16) -> u8 {
        match port {
            DATA_PORT => {
                if let Some(byte) = self.output.pop_front() {
                    self.last_read = byte.value;
                }
                self.last_read
            }
            COMMAND_PORT => self.status(),
            _ => 0xff,
        }
    }

    /// A byte write to `port` (0x60 or 0x64).
    pub fn write(&mut self, port: u16, value: u8) -> Option<ControllerRequest> {
        match port {
            DATA_PORT => {
                self.last_write_was_command = false;
                self.write_data(value)
            }
            COMMAND_PORT => {
                self.last_write_was_command = true;
                self.write_command(value)
            }
            _ => None,
        }
    }

    /// The keyboard interrupt line (IRQ 1).
    pub fn keyboard_irq_level(&self) -> bool {
        self.output.front().is_some_and(|b| !b.aux) && self.config & config::KEYBOARD_INTERRUPT != 0
    }

    /// The AUX interrupt line (IRQ 12).
    pub fn aux_irq_level(&self) -> bool {
        self.output.front().is_some_and(|b| b.aux) && self.config & config::AUX_INTERRUPT != 0
    }

    fn queue(&mut self, value: u8, aux: bool, timeout: bool) {
        if self.output.len() >= OUTPUT_QUEUE_BYTES {
            self.dropped_bytes += 1;
            if self.log.allow() {
                log::warn!("i8042: output queue full ({OUTPUT_QUEUE_BYTES} bytes): dropping {value:#04x}");
            }
            return;
        }
        self.output.push_back(OutputByte { value, aux, timeout });
    }

    fn write_command(&mut self, value: u8) -> Option<ControllerRequest> {
        // A new command abandons one still waiting for its data byte.
        self.pending = None;
        match value {
            command::READ_CONFIG => self.queue(self.config, false, false),
            command::WRITE_CONFIG
            | command::WRITE_OUTPUT_PORT
            | command::WRITE_KEYBOARD_OUTPUT
            | command::WRITE_AUX_OUTPUT
            | command::WRITE_AUX_DEVICE => self.pending = Some(value),
            command::AUX_DISABLE => self.config |= config::AUX_DISABLED,
            command::AUX_ENABLE => self.config &= !config::AUX_DISABLED,
            command::AUX_TEST | command::KEYBOARD_TEST => self.queue(INTERFACE_OK, false, false),
            command::SELF_TEST => {
                self.self_tested = true;
                self.queue(SELF_TEST_PASSED, false, false);
            }
            command::KEYBOARD_DISABLE => self.config |= config::KEYBOARD_DISABLED,
            command::KEYBOARD_ENABLE => self.config &= !config::KEYBOARD_DISABLED,
            command::READ_INPUT_PORT => self.queue(INPUT_PORT, false, false),
            command::READ_OUTPUT_PORT => self.queue(self.output_port, false, false),
            command::DISABLE_A20 => self.output_port &= !output_port::A20,
            command::ENABLE_A20 => self.output_port |= output_port::A20,
            command::READ_TEST_INPUTS => self.queue(0x00, false, false),
            command::PULSE_FIRST..=0xff => {
                // Bits 3-0 clear are pulsed low; only bit 0 (reset) does anything.
                if value & output_port::RESET_HIGH == 0 {
                    log::info!("i8042: reset line pulsed (command {value:#04x})");
                    return Some(ControllerRequest::Reset);
                }
            }
            _ => {
                if self.log.allow() {
                    log::warn!("i8042: unknown controller command {value:#04x} ignored");
                }
            }
        }
        None
    }

    fn write_data(&mut self, value: u8) -> Option<ControllerRequest> {
        match self.pending.take() {
            None => {
                // For the keyboard, and there is none.
                self.queue(NO_DEVICE_REPLY, false, true);
            }
            Some(command::WRITE_CONFIG) => self.config = value,
            Some(command::WRITE_OUTPUT_PORT) => {
                self.output_port = value;
                if value & output_port::RESET_HIGH == 0 {
                    log::info!("i8042: reset through the output port ({value:#04x})");
                    return Some(ControllerRequest::Reset);
                }
            }
            Some(command::WRITE_KEYBOARD_OUTPUT) => self.queue(value, false, false),
            Some(command::WRITE_AUX_OUTPUT) => self.queue(value, true, false),
            Some(command::WRITE_AUX_DEVICE) => {
                // For the mouse, and there is none.
                self.queue(NO_DEVICE_REPLY, true, true);
            }
            Some(_) => {}
        }
        None
    }
}

/// Save/restore ([`crate::snapshot`]).
impl I8042 {
    /// Takes a saved controller whose output queue is within [`OUTPUT_QUEUE_BYTES`]
    /// (its log limiter stays this one's).
    pub fn load_state(&mut self, saved: I8042) -> Result<(), &'static str> {
        if saved.output.len() > OUTPUT_QUEUE_BYTES {
            return Err("its output queue is longer than the controller's");
        }
        let log = core::mem::take(&mut self.log);
        *self = I8042 { log, ..saved };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Linux's `i8042_command`: the command, its parameter bytes, then the reply bytes.
    fn command(c: &mut I8042, cmd: u8, params: &[u8], replies: usize) -> alloc::vec::Vec<(u8, u8)> {
        assert_eq!(c.read(COMMAND_PORT) & status::INPUT_FULL, 0);
        assert_eq!(c.write(COMMAND_PORT, cmd), None);
        for &p in params {
            assert_eq!(c.read(COMMAND_PORT) & status::INPUT_FULL, 0);
            assert_eq!(c.write(DATA_PORT, p), None);
        }
        (0..replies)
            .map(|_| {
                let s = c.read(COMMAND_PORT);
                assert_ne!(s & status::OUTPUT_FULL, 0, "no reply byte");
                (s, c.read(DATA_PORT))
            })
            .collect()
    }

    #[test]
    fn power_on_state_is_what_firmware_expects() {
        let c = I8042::new();
        assert_eq!(c.status(), status::UNLOCKED | status::COMMAND);
        assert_eq!(c.config(), 0x43);
        assert!(!c.keyboard_irq_level() && !c.aux_irq_level());
    }

    #[test]
    fn linux_reboot_finds_the_input_buffer_empty_and_0xfe_resets() {
        let mut c = I8042::new();
        // kb_wait(): a single status read must show the input buffer empty.
        assert_eq!(c.read(COMMAND_PORT) & status::INPUT_FULL, 0);
        assert_eq!(c.write(COMMAND_PORT, 0xfe), Some(ControllerRequest::Reset));
    }

    #[test]
    fn every_pulse_of_bit_0_resets_and_the_others_do_not() {
        for cmd in 0xf0..=0xffu8 {
            let mut c = I8042::new();
            let expected = (cmd & 1 == 0).then_some(ControllerRequest::Reset);
            assert_eq!(c.write(COMMAND_PORT, cmd), expected, "command {cmd:#x}");
        }
    }

    #[test]
    fn output_port_write_with_reset_low_resets() {
        let mut c = I8042::new();
        assert_eq!(command(&mut c, 0xd0, &[], 1), [(0x19, 0xcf)]);
        assert_eq!(c.write(COMMAND_PORT, 0xd1), None);
        assert_eq!(c.write(DATA_PORT, 0xdf), None, "A20 on, reset high: nothing");
        assert_eq!(c.write(COMMAND_PORT, 0xd1), None);
        assert_eq!(c.write(DATA_PORT, 0xde), Some(ControllerRequest::Reset));
    }

    #[test]
    fn linux_probe_self_test_config_and_aux_loop() {
        let mut c = I8042::new();
        // i8042_controller_check: the buffer flushes (it is empty).
        assert_eq!(c.read(COMMAND_PORT) & status::OUTPUT_FULL, 0);
        // i8042_controller_selftest
        let reply = command(&mut c, 0xaa, &[], 1);
        assert_eq!(reply[0].1, 0x55);
        assert_ne!(c.status() & status::SYSTEM, 0);
        // i8042_controller_init: read the config byte, write it back without interrupts
        let ctr = command(&mut c, 0x20, &[], 1)[0].1;
        assert_eq!(ctr, 0x43);
        command(&mut c, 0x60, &[ctr & !0x03], 0);
        assert_eq!(command(&mut c, 0x20, &[], 1)[0].1, 0x40);
        // i8042_check_aux: loop-back returns the byte as AUX data
        let reply = command(&mut c, 0xd3, &[0x5a], 1);
        assert_eq!(reply, [(status::UNLOCKED | status::SYSTEM | status::OUTPUT_FULL | status::AUX_DATA, 0x5a)]);
        // i8042_toggle_aux: the disable bit follows 0xa7/0xa8
        command(&mut c, 0xa7, &[], 0);
        assert_ne!(command(&mut c, 0x20, &[], 1)[0].1 & config::AUX_DISABLED, 0);
        command(&mut c, 0xa8, &[], 0);
        assert_eq!(command(&mut c, 0x20, &[], 1)[0].1 & config::AUX_DISABLED, 0);
        // interface tests pass
        assert_eq!(command(&mut c, 0xab, &[], 1)[0].1, 0);
        assert_eq!(command(&mut c, 0xa9, &[], 1)[0].1, 0);
    }

    #[test]
    fn bytes_for_absent_devices_time_out_at_once() {
        let mut c = I8042::new();
        // atkbd's GETID: no keyboard, a timeout reply on the keyboard line
        assert_eq!(c.write(DATA_PORT, 0xf2), None);
        assert_eq!(c.status() & !status::SYSTEM, status::UNLOCKED | status::OUTPUT_FULL | status::TIMEOUT);
        assert!(c.keyboard_irq_level());
        assert_eq!(c.read(DATA_PORT), 0xfe);
        assert!(!c.keyboard_irq_level());
        // psmouse's reset through 0xd4: no mouse, a timeout reply on the AUX line
        c.write(COMMAND_PORT, 0xd4);
        c.write(DATA_PORT, 0xff);
        assert_eq!(c.status() & status::AUX_DATA, status::AUX_DATA);
        assert_ne!(c.status() & status::TIMEOUT, 0);
        assert!(c.aux_irq_level() && !c.keyboard_irq_level());
        assert_eq!(c.read(DATA_PORT), 0xfe);
        assert!(!c.aux_irq_level());
        // an empty buffer reads the last byte again
        assert_eq!(c.read(DATA_PORT), 0xfe);
        assert_eq!(c.status() & status::OUTPUT_FULL, 0);
    }

    #[test]
    fn interrupts_follow_the_config_byte() {
        let mut c = I8042::new();
        command(&mut c, 0x60, &[0x40], 0);
        c.write(COMMAND_PORT, 0xd2);
        c.write(DATA_PORT, 0x1c);
        assert!(!c.keyboard_irq_level(), "keyboard interrupt disabled");
        command(&mut c, 0x60, &[0x41], 0);
        assert!(c.keyboard_irq_level());
        assert_eq!(c.read(DATA_PORT), 0x1c);
        assert!(!c.keyboard_irq_level());
    }

    #[test]
    fn a_guest_that_never_reads_cannot_grow_the_queue() {
        let mut c = I8042::new();
        for _ in 0..1000 {
            c.write(COMMAND_PORT, 0xaa);
        }
        assert_eq!(c.dropped_bytes(), 1000 - OUTPUT_QUEUE_BYTES as u64);
        for _ in 0..OUTPUT_QUEUE_BYTES {
            assert_eq!(c.read(DATA_PORT), 0x55);
        }
        assert_eq!(c.status() & status::OUTPUT_FULL, 0);
    }

    #[test]
    fn a_new_command_abandons_one_waiting_for_data() {
        let mut c = I8042::new();
        c.write(COMMAND_PORT, 0xd1);
        c.write(COMMAND_PORT, 0x20);
        // 0x00 now goes to the (absent) keyboard, not to the output port
        assert_eq!(c.write(DATA_PORT, 0x00), None);
        assert_eq!(c.read(DATA_PORT), 0x43);
        assert_eq!(c.read(DATA_PORT), 0xfe);
    }
}
