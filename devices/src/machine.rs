//! The guest's machine: the devices a qemu-xen `xenfv` guest finds, behind one bus.
//!
//! Xen emulates the PIC, PIT, RTC (CMOS 0x00-0x0d), IOAPIC, LAPIC, HPET and the ACPI PM
//! timer and event registers itself; every other port, PCI function and MMIO range the
//! guest touches comes to this device model as an ioreq, once [`Machine::claims`] are
//! registered with its ioreq server. What is here:
//!
//! | where | what |
//! |---|---|
//! | PCI 00:00.0 | i440FX host bridge ([`pci::i440fx`]) |
//! | PCI 00:01.0 | PIIX3 ISA bridge: PIRQ routing to Xen ([`pci::piix3`]) |
//! | PCI 00:01.1 | PIIX3 IDE, legacy ports, PIO ([`ide`]) |
//! | 0xcf8-0xcfb | the config-address latch (read back) and, at 0xcf9, PIIX3 reset control |
//! | 0x70-0x71 | CMOS NVRAM above what Xen's RTC serves ([`cmos`]) |
//! | 0x1f0-0x1f7, 0x3f6, 0x170-0x177, 0x376 | IDE channels, IRQs 14 and 15 |
//! | 0x3f8-0x3ff | COM1 16550A, IRQ 4 ([`uart`]) |
//! | 0xb004, 0xafe0-0xafe3 | ACPI PM1a control and GPE0 as hvmloader's FADT has them ([`pm`]) |
//!
//! The machine is a synchronous state machine: [`Machine::handle_ioreq`] answers one
//! request (with `rep` and pointer semantics) against guest memory and returns the
//! value for the vCPU. What it needs from Xen (interrupt lines, PIRQ routes, shutdown)
//! queues as [`Effect`]s for the caller to apply in order; slow work (disk I/O) waits in
//! the IDE controller as block requests ([`Machine::ide_mut`]). A malformed request
//! (bad size, a `rep` larger than a page, memory the guest does not have) is answered
//! (reads as all-ones) and logged at a bounded rate, never a panic.

use alloc::collections::VecDeque;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use xen_seams::hvm::ioreq_type as kind;
use xen_seams::hvm::{GuestMemory, IoRangeKind, Ioreq, ShutdownReason};

use crate::cmos::Cmos;
use crate::ide::{DriveSpec, IdeController};
use crate::pci::piix3::{Piix3Isa, ResetControl};
use crate::pci::{ConfigSpace, i440fx};
use crate::pm::{AcpiPm, PmRequest};
use crate::ratelimit::LogLimiter;
use crate::uart::Uart16550;

/// What the machine is built from (libxl's argv, read by [`crate::dm_args`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MachineConfig {
    /// IDE drives, `[channel][unit]`
    pub ide: [[Option<DriveSpec>; 2]; 2],
    /// `-boot order=` (libxl's default "cda")
    pub boot_order: String,
    /// guest RAM as `-m` gives it
    pub ram_mib: u32,
    /// a `-serial` port: COM1 exists
    pub com1: bool,
}

/// Something only Xen can do, queued by the machine for the caller, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Effect {
    /// drive ISA IRQ line `irq`
    IsaIrq { irq: u8, level: bool },
    /// route PCI interrupt link `link` to ISA IRQ `isa_irq` (0: disabled)
    LinkRoute { link: u8, isa_irq: u8 },
    /// shut the guest down (ACPI S5 poweroff, PIIX3 reset)
    Shutdown(ShutdownReason),
}

/// PCI functions on bus 0, as `device << 3 | function`.
pub const HOST_BRIDGE_DEVFN: u8 = 0x00;
pub const PIIX3_ISA_DEVFN: u8 = 0x08;
pub const PIIX3_IDE_DEVFN: u8 = 0x09;

/// ISA IRQs of the legacy devices.
pub const IDE_PRIMARY_IRQ: u8 = 14;
pub const IDE_SECONDARY_IRQ: u8 = 15;

/// The longest `rep` one ioreq may carry: Xen never lets one cross a page.
const MAX_REP_BYTES: u64 = 4096;

/// Counters for the log and the benchmarks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MachineStats {
    pub ioreqs: u64,
    /// requests answered without effect (malformed, unknown type, guest memory missing)
    pub malformed: u64,
}

/// The guest's machine.
pub struct Machine {
    config_address: u32,
    host_bridge: ConfigSpace,
    isa: Piix3Isa,
    ide_function: ConfigSpace,
    reset_control: ResetControl,
    cmos: Cmos,
    pm: AcpiPm,
    com1: Option<Uart16550>,
    ide: IdeController,
    /// the ISA levels last sent to Xen
    isa_levels: [bool; 16],
    effects: VecDeque<Effect>,
    log: LogLimiter,
    stats: MachineStats,
}

/// Bytes the guest's serial output may queue before THRE stays clear.
pub const SERIAL_OUTPUT_LIMIT_BYTES: usize = 16 * 1024;

impl Machine {
    pub fn new(config: MachineConfig) -> Machine {
        Machine {
            config_address: 0,
            host_bridge: i440fx::i440fx_host_bridge(),
            isa: Piix3Isa::new(),
            ide_function: crate::pci::piix3::piix3_ide_function(),
            reset_control: ResetControl::new(),
            cmos: Cmos::new(&config.boot_order, config.ram_mib),
            pm: AcpiPm::new(),
            com1: config.com1.then(|| Uart16550::new(SERIAL_OUTPUT_LIMIT_BYTES)),
            ide: IdeController::new(config.ide),
            isa_levels: [false; 16],
            effects: VecDeque::new(),
            log: LogLimiter::new(),
            stats: MachineStats::default(),
        }
    }

    /// What the ioreq server must claim (kind, first, last), before the guest runs.
    pub fn claims(&self) -> Vec<(IoRangeKind, u64, u64)> {
        let mut claims = vec![
            (IoRangeKind::Port, 0x70, 0x71),
            (IoRangeKind::Port, 0x170, 0x177),
            (IoRangeKind::Port, 0x1f0, 0x1f7),
            (IoRangeKind::Port, 0x376, 0x376),
            (IoRangeKind::Port, 0x3f6, 0x3f6),
            (IoRangeKind::Port, 0xcf8, 0xcfb),
            (IoRangeKind::Port, u64::from(AcpiPm::GPE0_BLK), u64::from(AcpiPm::GPE0_BLK) + 3),
            (IoRangeKind::Port, u64::from(AcpiPm::PM1A_CNT), u64::from(AcpiPm::PM1A_CNT) + 1),
        ];
        if self.com1.is_some() {
            claims.push((IoRangeKind::Port, u64::from(Uart16550::COM1_BASE), u64::from(Uart16550::COM1_BASE) + 7));
        }
        for devfn in [HOST_BRIDGE_DEVFN, PIIX3_ISA_DEVFN, PIIX3_IDE_DEVFN] {
            claims.push((IoRangeKind::PciConfig, u64::from(devfn), u64::from(devfn)));
        }
        claims
    }

    /// Takes the effects queued so far, oldest first.
    pub fn take_effects(&mut self) -> VecDeque<Effect> {
        core::mem::take(&mut self.effects)
    }

    pub fn stats(&self) -> MachineStats {
        self.stats
    }

    pub fn ide(&self) -> &IdeController {
        &self.ide
    }

    /// The IDE controller: block requests to take, outcomes and media to give it.
    /// Call [`sync_irqs`](Self::sync_irqs) after changing it.
    pub fn ide_mut(&mut self) -> &mut IdeController {
        &mut self.ide
    }

    pub fn com1(&self) -> Option<&Uart16550> {
        self.com1.as_ref()
    }

    /// COM1, for the console task. Call [`sync_irqs`](Self::sync_irqs) after changing it.
    pub fn com1_mut(&mut self) -> Option<&mut Uart16550> {
        self.com1.as_mut()
    }

    /// The CMOS contents (for save/restore and tests).
    pub fn cmos(&self) -> &Cmos {
        &self.cmos
    }

    /// Queues an interrupt-line change for each device whose level differs from what
    /// Xen was last told.
    pub fn sync_irqs(&mut self) {
        let mut levels = [None; 16];
        levels[usize::from(IDE_PRIMARY_IRQ)] = Some(self.ide.irq_level(0));
        levels[usize::from(IDE_SECONDARY_IRQ)] = Some(self.ide.irq_level(1));
        if let Some(uart) = &self.com1 {
            levels[usize::from(Uart16550::COM1_IRQ)] = Some(uart.irq_level());
        }
        for (irq, level) in levels.iter().enumerate() {
            if let Some(level) = *level
                && self.isa_levels[irq] != level
            {
                self.isa_levels[irq] = level;
                self.effects.push_back(Effect::IsaIrq { irq: irq as u8, level });
            }
        }
    }

    /// Answers one ioreq; returns the `data` the vCPU gets back.
    pub fn handle_ioreq(&mut self, req: &Ioreq, memory: &impl GuestMemory) -> u64 {
        self.stats.ioreqs += 1;
        let answer = match req.kind {
            kind::PIO => self.pio(req, memory),
            kind::COPY => self.mmio(req, memory),
            kind::PCI_CONFIG => self.pci_config(req),
            kind::INVALIDATE => {
                memory.invalidate();
                req.data
            }
            // Only ever sent through the buffered ring, which this server does not have.
            kind::TIMEOFFSET => req.data,
            other => self.malformed(req, "unknown ioreq type", other.into()),
        };
        self.sync_irqs();
        answer
    }

    fn malformed(&mut self, req: &Ioreq, what: &str, value: u64) -> u64 {
        self.stats.malformed += 1;
        if self.log.allow() {
            log::warn!(
                "ioreq: {what} ({value:#x}): type {} addr {:#x} size {} count {} ptr {} read {} ({} so far)",
                req.kind,
                req.addr,
                req.size,
                req.count,
                req.data_is_ptr(),
                req.is_read(),
                self.stats.malformed
            );
        }
        if req.is_read() { all_ones(req.size.min(8)) } else { req.data }
    }

    /// The guest-physical address of element `k` of a `rep` starting at `base`.
    fn element(base: u64, k: u64, size: u64, down: bool) -> Option<u64> {
        let offset = k.checked_mul(size)?;
        if down { base.checked_sub(offset) } else { base.checked_add(offset) }
    }

    /// Checks a `rep`: Some((count, lowest address)) when it stays inside a page's worth.
    fn rep_span(req: &Ioreq) -> Option<(u64, u64)> {
        let count = u64::from(req.count);
        let size = u64::from(req.size);
        if count == 0 || count.checked_mul(size)? > MAX_REP_BYTES {
            return None;
        }
        let last = Self::element(req.data, count - 1, size, req.df())?;
        Some((count, req.data.min(last)))
    }

    fn pio(&mut self, req: &Ioreq, memory: &impl GuestMemory) -> u64 {
        let size = req.size;
        if !matches!(size, 1 | 2 | 4) || req.addr > 0xffff {
            return self.malformed(req, "port access", req.addr);
        }
        let port = req.addr as u16;
        if !req.data_is_ptr() {
            return if req.is_read() {
                u64::from(self.port_read(port, size as u8))
            } else {
                self.port_write(port, size as u8, req.data as u32);
                req.data
            };
        }
        let Some((count, lowest)) = Self::rep_span(req) else {
            return self.malformed(req, "rep count", u64::from(req.count));
        };
        let size = u64::from(size);
        let mut buffer = vec![0u8; (count * size) as usize];
        // Element k sits at data ± k*size; `lowest` is where the buffer starts.
        let at = |k: u64| {
            let address = Self::element(req.data, k, size, req.df()).unwrap_or(lowest);
            (address - lowest) as usize
        };
        if req.is_read() {
            for k in 0..count {
                let value = self.port_read(port, size as u8).to_le_bytes();
                let start = at(k);
                buffer[start..start + size as usize].copy_from_slice(&value[..size as usize]);
            }
            if let Err(e) = memory.write(lowest, &buffer) {
                return self.malformed(req, "rep ins into guest memory", memory_error_gfn(e));
            }
        } else {
            if let Err(e) = memory.read(lowest, &mut buffer) {
                return self.malformed(req, "rep outs from guest memory", memory_error_gfn(e));
            }
            for k in 0..count {
                let start = at(k);
                let mut value = [0u8; 4];
                value[..size as usize].copy_from_slice(&buffer[start..start + size as usize]);
                self.port_write(port, size as u8, u32::from_le_bytes(value));
            }
        }
        req.data
    }

    /// MMIO: no device of this machine has an MMIO range yet; nothing is claimed, so
    /// Xen sends none. One that arrives anyway reads as all-ones.
    fn mmio(&mut self, req: &Ioreq, memory: &impl GuestMemory) -> u64 {
        if !matches!(req.size, 1 | 2 | 4 | 8) {
            return self.malformed(req, "MMIO size", req.size.into());
        }
        if req.data_is_ptr() && req.is_read() {
            let Some((count, lowest)) = Self::rep_span(req) else {
                return self.malformed(req, "rep count", u64::from(req.count));
            };
            let ones = vec![0xffu8; (count * u64::from(req.size)) as usize];
            if let Err(e) = memory.write(lowest, &ones) {
                return self.malformed(req, "rep movs into guest memory", memory_error_gfn(e));
            }
            return req.data;
        }
        if self.log.allow() {
            log::warn!("ioreq: MMIO at {:#x} (size {}) that no device claims", req.addr, req.size);
        }
        if req.is_read() && !req.data_is_ptr() { all_ones(req.size) } else { req.data }
    }

    fn pci_config(&mut self, req: &Ioreq) -> u64 {
        let sbdf = req.addr >> 32;
        let reg = (req.addr & 0xfff) as u16;
        let size = req.size;
        if !matches!(size, 1 | 2 | 4) || sbdf > 0xff || req.data_is_ptr() {
            return self.malformed(req, "PCI config access", req.addr);
        }
        let devfn = sbdf as u8;
        if req.is_read() {
            u64::from(self.config_read(devfn, reg, size as u8))
        } else {
            self.config_write(devfn, reg, size as u8, req.data as u32);
            req.data
        }
    }

    /// A config-space read of function `devfn` on bus 0; absent functions and registers
    /// beyond the 256 bytes read as all-ones.
    pub fn config_read(&mut self, devfn: u8, reg: u16, size: u8) -> u32 {
        if reg >= 256 {
            return all_ones(size.into()) as u32;
        }
        match devfn {
            HOST_BRIDGE_DEVFN => self.host_bridge.read(reg, size),
            PIIX3_ISA_DEVFN => self.isa.config_read(reg, size),
            PIIX3_IDE_DEVFN => self.ide_function.read(reg, size),
            _ => all_ones(size.into()) as u32,
        }
    }

    pub fn config_write(&mut self, devfn: u8, reg: u16, size: u8, value: u32) {
        if reg >= 256 {
            return;
        }
        match devfn {
            HOST_BRIDGE_DEVFN => self.host_bridge.write(reg, size, value),
            PIIX3_ISA_DEVFN => {
                for (link, isa_irq) in self.isa.config_write(reg, size, value) {
                    self.effects.push_back(Effect::LinkRoute { link, isa_irq });
                }
            }
            PIIX3_IDE_DEVFN => self.ide_function.write(reg, size, value),
            _ => {}
        }
    }

    /// A port read of `size` (1, 2 or 4) bytes.
    pub fn port_read(&mut self, port: u16, size: u8) -> u32 {
        match port {
            0xcf8..=0xcfb => match (port, size) {
                (0xcf8, 4) => self.config_address,
                (0xcf9, 1) => self.reset_control.read().into(),
                _ => all_ones(size.into()) as u32,
            },
            0x70..=0x71 => self.bytewise_read(port, size, |m, p| m.cmos.read(p)),
            0x1f0..=0x1f7 | 0x3f6 | 0x170..=0x177 | 0x376 => self.ide.read(port, size),
            0x3f8..=0x3ff if self.com1.is_some() => {
                self.bytewise_read(port, size, |m, p| m.com1.as_mut().map_or(0xff, |u| u.read((p - 0x3f8) as u8)))
            }
            AcpiPm::PM1A_CNT..=0xb005 | AcpiPm::GPE0_BLK..=0xafe3 => self.pm.read(port, size),
            _ => {
                if self.log.allow() {
                    log::warn!("ioreq: read of port {port:#x} that no device has");
                }
                all_ones(size.into()) as u32
            }
        }
    }

    /// A port write of `size` (1, 2 or 4) bytes.
    pub fn port_write(&mut self, port: u16, size: u8, value: u32) {
        match port {
            0xcf8..=0xcfb => match (port, size) {
                (0xcf8, 4) => self.config_address = value,
                (0xcf9, 1) if self.reset_control.write(value as u8) => {
                    log::info!("machine: reset through PIIX3 reset control (0xcf9 = {value:#x})");
                    self.effects.push_back(Effect::Shutdown(ShutdownReason::Reboot));
                }
                // Linux's type-1 probe writes a byte to 0xcfb: ignored, as on PIIX.
                _ => {}
            },
            0x70..=0x71 => self.bytewise_write(port, size, value, |m, p, v| m.cmos.write(p, v)),
            0x1f0..=0x1f7 | 0x3f6 | 0x170..=0x177 | 0x376 => self.ide.write(port, size, value),
            0x3f8..=0x3ff if self.com1.is_some() => self.bytewise_write(port, size, value, |m, p, v| {
                if let Some(uart) = m.com1.as_mut() {
                    uart.write((p - 0x3f8) as u8, v);
                }
            }),
            AcpiPm::PM1A_CNT..=0xb005 | AcpiPm::GPE0_BLK..=0xafe3 => {
                if let Some(PmRequest::PowerOff) = self.pm.write(port, size, value) {
                    log::info!("machine: ACPI S5 (poweroff) requested by the guest");
                    self.effects.push_back(Effect::Shutdown(ShutdownReason::Poweroff));
                }
            }
            _ => {
                if self.log.allow() {
                    log::warn!("ioreq: write of port {port:#x} that no device has");
                }
            }
        }
    }

    /// A wider access to byte registers, as consecutive byte accesses (low port first).
    fn bytewise_read(&mut self, port: u16, size: u8, mut read: impl FnMut(&mut Self, u16) -> u8) -> u32 {
        (0..u16::from(size)).fold(0u32, |value, i| value | (u32::from(read(self, port.wrapping_add(i))) << (8 * i)))
    }

    fn bytewise_write(&mut self, port: u16, size: u8, value: u32, mut write: impl FnMut(&mut Self, u16, u8)) {
        for i in 0..u16::from(size) {
            write(self, port.wrapping_add(i), (value >> (8 * i)) as u8);
        }
    }
}

/// All-ones in the low `size` bytes.
fn all_ones(size: u32) -> u64 {
    if size >= 8 { u64::MAX } else { (1u64 << (size * 8)) - 1 }
}

fn memory_error_gfn(e: xen_seams::hvm::GuestMemoryError) -> u64 {
    match e {
        xen_seams::hvm::GuestMemoryError::Unmapped { gfn } => gfn,
        xen_seams::hvm::GuestMemoryError::Overflow => u64::MAX,
    }
}

/// The fuzz driver for the ioreq path (devices/fuzz's `ioreq` target and a host test):
/// every 32 bytes of `data` become one ioreq, steered towards the ports and functions
/// this machine has, against a machine with a disk and a CD and 1 MiB of guest RAM;
/// block requests complete at once (every other one failing). Returns how many ioreqs
/// were answered, which is all of them: a panic is the fuzzer's finding.
pub fn fuzz_ioreqs(data: &[u8]) -> usize {
    use crate::ide::{BlockOp, BlockOutcome};
    use xen_seams::hvm::ioreq_type;

    /// Guest RAM in a Vec.
    struct Ram(core::cell::RefCell<Vec<u8>>);
    impl GuestMemory for Ram {
        fn read(&self, gpa: u64, out: &mut [u8]) -> Result<(), xen_seams::hvm::GuestMemoryError> {
            let ram = self.0.borrow();
            let end = gpa.checked_add(out.len() as u64).filter(|e| *e <= ram.len() as u64);
            let end = end.ok_or(xen_seams::hvm::GuestMemoryError::Unmapped { gfn: gpa >> 12 })?;
            out.copy_from_slice(&ram[gpa as usize..end as usize]);
            Ok(())
        }
        fn write(&self, gpa: u64, data: &[u8]) -> Result<(), xen_seams::hvm::GuestMemoryError> {
            let mut ram = self.0.borrow_mut();
            let end = gpa.checked_add(data.len() as u64).filter(|e| *e <= ram.len() as u64);
            let end = end.ok_or(xen_seams::hvm::GuestMemoryError::Unmapped { gfn: gpa >> 12 })?;
            ram[gpa as usize..end as usize].copy_from_slice(data);
            Ok(())
        }
        fn invalidate(&self) {}
    }

    const PORTS: [u16; 16] =
        [0x1f0, 0x1f1, 0x1f2, 0x1f6, 0x1f7, 0x3f6, 0x170, 0x177, 0x376, 0x3f8, 0x3fd, 0x70, 0x71, 0xcf8, 0xcf9, 0xb004];
    let mut ide: [[Option<DriveSpec>; 2]; 2] = Default::default();
    ide[0][0] = Some(DriveSpec::HardDisk { nr_sectors: 2048, read_only: false });
    ide[1][0] = Some(DriveSpec::CdRom { medium_nr_sectors: Some(4096) });
    let mut machine = Machine::new(MachineConfig { ide, boot_order: "dc".into(), ram_mib: 1, com1: true });
    let ram = Ram(core::cell::RefCell::new(vec![0; 1 << 20]));
    let mut answered = 0;
    for (n, chunk) in data.chunks_exact(32).enumerate() {
        let mut bytes = [0u8; 32];
        bytes.copy_from_slice(chunk);
        let mut req = Ioreq::from_bytes(&bytes);
        // Mostly well-formed requests at our devices; the rest as they came.
        if bytes[0] & 0x80 == 0 {
            req.kind = [ioreq_type::PIO, ioreq_type::PCI_CONFIG, ioreq_type::COPY][usize::from(bytes[1] % 3)];
            req.size = [1, 2, 4][usize::from(bytes[2] % 3)];
            req.addr = match req.kind {
                ioreq_type::PIO => u64::from(PORTS[usize::from(bytes[3] % 16)]),
                ioreq_type::PCI_CONFIG => (u64::from(bytes[4] % 12) << 32) | u64::from(bytes[5]),
                _ => req.addr,
            };
            req.count = if req.data_is_ptr() { u32::from(bytes[6]) } else { 1 };
            req.data =
                if req.data_is_ptr() { u64::from(u16::from_le_bytes([bytes[8], bytes[9]])) << 4 } else { req.data };
        }
        machine.handle_ioreq(&req, &ram);
        answered += 1;
        while let Some(request) = machine.ide_mut().take_request() {
            let outcome = match (n % 2, request.op) {
                (1, _) => BlockOutcome::Failed,
                (_, BlockOp::Read { nr_sectors, .. }) => BlockOutcome::Read(vec![0x5a; nr_sectors as usize * 512]),
                (_, BlockOp::Write { .. }) => BlockOutcome::Written,
                (_, BlockOp::Flush) => BlockOutcome::Flushed,
            };
            machine.ide_mut().complete(request.drive, outcome);
        }
        machine.sync_irqs();
        machine.take_effects();
        if let Some(uart) = machine.com1_mut() {
            uart.take_output(64);
        }
    }
    answered
}
