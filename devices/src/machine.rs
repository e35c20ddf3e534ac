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
//! | PCI 00:01.1 | PIIX3 IDE, legacy ports, PIO and bus-master DMA at BAR4 where the guest puts it ([`ide`]) |
//! | 0xcf8-0xcfb | the config-address latch (read back) and, at 0xcf9, PIIX3 reset control |
//! | 0x60, 0x64 | the 8042 keyboard controller, reset through it, no keyboard or mouse ([`i8042`]) |
//! | 0x70-0x71 | CMOS NVRAM above what Xen's RTC serves ([`cmos`]) |
//! | 0x1f0-0x1f7, 0x3f6, 0x170-0x177, 0x376 | IDE channels, IRQs 14 and 15 |
//! | 0x3f8-0x3ff | COM1 16550A, IRQ 4 ([`uart`]) |
//! | 0xb004, 0xafe0-0xafe3 | ACPI PM1a control and GPE0 as hvmloader's FADT has them ([`pm`]) |
//! | PCI 00:02.0, 0x10-0x1f | the Xen platform device (with `-machine xenfv`): BAR0 I/O and BAR1 MMIO claimed where the guest puts them ([`platform`]) |
//! | PCI 00:03.0, 00:04.0, ... | the NICs ([`nic`]): their BARs claimed where the guest puts them, INTA |
//!
//! The machine is a synchronous state machine: [`Machine::handle_ioreq`] answers one
//! request (with `rep` and pointer semantics) against guest memory and returns the
//! value for the vCPU. What it needs from Xen (interrupt lines, PIRQ routes, shutdown)
//! queues as [`Effect`]s for the caller to apply in order; slow work (disk I/O) waits in
//! the IDE controller as block requests ([`Machine::ide_mut`]). When a DMA command meets
//! its channel's start bit, the machine reads the PRD table from guest memory (bus
//! mastering must be on) and hands the controller the scatter list its block request
//! carries, or the error that ends the command. A malformed request
//! (bad size, a `rep` larger than a page, memory the guest does not have) is answered
//! (reads as all-ones) and logged at a bounded rate, never a panic.
//!
//! The platform device's unplug takes the IDE hard disks (never the CD-ROMs) or the NICs
//! off the buses: an unplugged NIC's config space reads all-ones, its BARs are given
//! back and its line is low. A request the platform device cannot answer yet (a log
//! write without tokens, a magic read while the blacklist lookup is out) is left to
//! wait: [`Machine::ioreq_wait`] says so before [`Machine::handle_ioreq`] is called.
//!
//! Its state saves and loads as [`crate::snapshot`] sections, one per device, behind a
//! [`Layout`] a restore must match ([`Machine::save_state`], [`Machine::load_state`]).

use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use xen_seams::hvm::ioreq_type as kind;
use xen_seams::hvm::{GuestMemory, IoRangeKind, Ioreq, ShutdownReason};

use crate::cmos::Cmos;
use crate::i8042::{self, ControllerRequest, I8042};
use crate::ide::{DriveSpec, IdeController};
use crate::nic::Nic;
use crate::pci::BarKind;
use crate::pci::piix3::{Piix3Isa, ResetControl};
use crate::pci::{ConfigSpace, i440fx};
use crate::platform::{PLATFORM_DEVFN, PlatformRequest, PlatformWait, XenPlatform};
use crate::pm::{AcpiPm, PmRequest};
use crate::ratelimit::LogLimiter;
use crate::uart::Uart16550;

/// A port access to the platform device, decoded from its ioreq.
struct PlatformAccess {
    port: u16,
    size: u8,
    /// the written value (0 for each element of a `rep` write); None for a read
    value: Option<u32>,
    /// how many elements (a `rep` carries several)
    bytes: u64,
    /// where BAR0 decodes, if it does
    bar0: Option<u16>,
}

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
    /// the Xen platform device at 00:02.0 (`-machine xenfv`, libxl's choice unless
    /// `xen_platform_pci = 0`)
    pub xen_platform: bool,
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
    /// drive INTx pin `intx` (0 = INTA) of PCI device `device`
    PciIntx { device: u8, intx: u8, level: bool },
    /// claim a range for the ioreq server (a BAR the guest placed and enabled)
    Claim { kind: IoRangeKind, first: u64, last: u64 },
    /// give a claimed range back (the BAR moved or its decoding was turned off)
    Release { kind: IoRangeKind, first: u64, last: u64 },
}

/// PCI functions on bus 0, as `device << 3 | function`.
pub const HOST_BRIDGE_DEVFN: u8 = 0x00;
pub const PIIX3_ISA_DEVFN: u8 = 0x08;
pub const PIIX3_IDE_DEVFN: u8 = 0x09;

/// ISA IRQs of the legacy devices.
pub const IDE_PRIMARY_IRQ: u8 = 14;
pub const IDE_SECONDARY_IRQ: u8 = 15;

/// The first PCI slot of the NICs: 00:02.0 is the Xen platform device's in a qemu-xen
/// machine, so NICs start at 00:03.0 (QEMU's order with `vga = "none"`).
pub const FIRST_NIC_SLOT: u8 = 3;

/// The platform device's fixed ports.
const FIXED_PLATFORM_PORTS: core::ops::RangeInclusive<u16> =
    crate::platform::FIXED_PORT_BASE..=crate::platform::FIXED_PORT_LAST;

/// The longest `rep` one ioreq may carry: Xen never lets one cross a page.
const MAX_REP_BYTES: u64 = 4096;

/// Counters for the log and the benchmarks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MachineStats {
    pub ioreqs: u64,
    /// requests answered without effect (malformed, unknown type, guest memory missing)
    pub malformed: u64,
}

/// A NIC on the PCI bus, and the BAR ranges claimed for it.
struct NicSlot {
    /// PCI device number on bus 0 (function 0)
    device: u8,
    card: Box<dyn Nic>,
    /// per BAR, the range the ioreq server holds for it
    claimed: [Option<(BarKind, u64, u64)>; 6],
    /// the INTA level Xen was last told
    intx_level: bool,
    /// the guest touched the card's registers since the network task last looked
    touched: bool,
    /// taken off the bus by the platform device's unplug
    unplugged: bool,
}

/// The guest's machine.
pub struct Machine {
    config_address: u32,
    host_bridge: ConfigSpace,
    isa: Piix3Isa,
    ide_function: ConfigSpace,
    reset_control: ResetControl,
    cmos: Cmos,
    keyboard_controller: I8042,
    pm: AcpiPm,
    com1: Option<Uart16550>,
    ide: IdeController,
    nics: Vec<NicSlot>,
    /// the ISA levels last sent to Xen
    isa_levels: [bool; 16],
    /// the time of the request being answered (the NICs' timers)
    now_ns: u64,
    effects: VecDeque<Effect>,
    log: LogLimiter,
    stats: MachineStats,
    /// the drives as the argv gave them, for the saved state's layout
    drive_layout: [[Option<DriveLayout>; 2]; 2],
    /// the IDE bus-master ports (BAR4) the ioreq server holds: (base, length)
    bmide_claimed: Option<(u64, u64)>,
    platform: Option<XenPlatform>,
    /// the platform device's BAR0 and BAR1 ranges the ioreq server holds
    platform_claimed: [Option<(BarKind, u64, u64)>; 2],
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
            keyboard_controller: I8042::new(),
            pm: AcpiPm::new(),
            com1: config.com1.then(|| Uart16550::new(SERIAL_OUTPUT_LIMIT_BYTES)),
            ide: IdeController::new(config.ide.clone()),
            nics: Vec::new(),
            isa_levels: [false; 16],
            now_ns: 0,
            effects: VecDeque::new(),
            log: LogLimiter::new(),
            stats: MachineStats::default(),
            drive_layout: config.ide.map(|channel| channel.map(|spec| spec.map(DriveLayout::of))),
            bmide_claimed: None,
            platform: config.xen_platform.then(|| XenPlatform::new(0)),
            platform_claimed: [None; 2],
        }
    }

    /// Puts `card` on the next free PCI slot (from [`FIRST_NIC_SLOT`]); returns its
    /// device number. Its BARs are claimed once the guest places and enables them.
    pub fn add_nic(&mut self, card: Box<dyn Nic>) -> u8 {
        let device = FIRST_NIC_SLOT + self.nics.len() as u8;
        self.nics.push(NicSlot {
            device,
            card,
            claimed: [None; 6],
            intx_level: false,
            touched: false,
            unplugged: false,
        });
        device
    }

    /// NIC `index` (in the order added); None once the guest unplugged it.
    pub fn nic(&self, index: usize) -> Option<&dyn Nic> {
        self.nics.get(index).filter(|slot| !slot.unplugged).map(|slot| &*slot.card)
    }

    /// NIC `index`, for the network task (None once unplugged). Call
    /// [`sync_irqs`](Self::sync_irqs) after.
    pub fn nic_mut(&mut self, index: usize) -> Option<&mut (dyn Nic + 'static)> {
        self.nics.get_mut(index).filter(|slot| !slot.unplugged).map(|slot| &mut *slot.card)
    }

    /// Whether NIC `index` was unplugged by the guest (its network task can end).
    pub fn nic_unplugged(&self, index: usize) -> bool {
        self.nics.get(index).is_some_and(|slot| slot.unplugged)
    }

    /// The Xen platform device, if the machine has one.
    pub fn platform(&self) -> Option<&XenPlatform> {
        self.platform.as_ref()
    }

    /// The platform device's blacklist lookup to carry out (xenstore), if one waits.
    pub fn take_blacklist_query(&mut self) -> Option<crate::platform::BlacklistQuery> {
        self.platform.as_mut().and_then(XenPlatform::take_blacklist_query)
    }

    /// The answer of a lookup from [`take_blacklist_query`](Self::take_blacklist_query).
    pub fn answer_blacklist(&mut self, query: &crate::platform::BlacklistQuery, blacklisted: bool) {
        if let Some(platform) = &mut self.platform {
            platform.answer_blacklist(query.product, query.build, blacklisted);
        }
    }

    /// Whether `req` must wait before [`handle_ioreq`](Self::handle_ioreq) answers it, at
    /// `now_ns`: a log write to the platform device without the tokens for all its bytes
    /// (until when), or a magic read while the blacklist lookup is out. Nothing changes.
    pub fn ioreq_wait(&mut self, req: &Ioreq, now_ns: u64) -> Option<PlatformWait> {
        let access = self.platform_access(req)?;
        let platform = self.platform.as_mut()?;
        platform.ioreq_wait(access.port, access.size, access.value, access.bytes, access.bar0, now_ns)
    }

    /// Whether `req` writes guest text to the platform device's log port (the service
    /// holds such a write back while the device-model log is behind).
    pub fn is_log_write(&self, req: &Ioreq) -> bool {
        let Some(access) = self.platform_access(req) else { return false };
        access.value.is_some_and(|value| XenPlatform::is_log_write(access.port, access.size, value, access.bar0))
    }

    /// `req` as an access to the platform device's ports, if it is one.
    fn platform_access(&self, req: &Ioreq) -> Option<PlatformAccess> {
        let bar0 = self.platform_claimed[0].and_then(|(_, base, _)| u16::try_from(base).ok());
        self.platform.as_ref()?;
        if req.kind != kind::PIO || !matches!(req.size, 1 | 2 | 4) || req.addr > 0xffff {
            return None;
        }
        let port = req.addr as u16;
        let ours = (FIXED_PLATFORM_PORTS).contains(&port) || bar0.is_some_and(|base| port.wrapping_sub(base) < 0x100);
        if !ours {
            return None;
        }
        let (value, bytes) = if req.data_is_ptr() {
            // A rep write: every element is a log byte if the port logs; 0 stands for "not 1 or 2".
            (if req.is_read() { None } else { Some(0) }, u64::from(req.count.max(1)))
        } else {
            (if req.is_read() { None } else { Some(req.data as u32) }, 1)
        };
        Some(PlatformAccess { port, size: req.size as u8, value, bytes, bar0 })
    }

    pub fn nr_nics(&self) -> usize {
        self.nics.len()
    }

    /// The NICs whose registers the guest touched since the last call (a bit per
    /// index): their network tasks have frames to take or room to fill.
    pub fn take_touched_nics(&mut self) -> u64 {
        let mut touched = 0;
        for (index, slot) in self.nics.iter_mut().enumerate() {
            if core::mem::take(&mut slot.touched) && index < 64 {
                touched |= 1 << index;
            }
        }
        touched
    }

    /// What the ioreq server must claim (kind, first, last), before the guest runs.
    pub fn claims(&self) -> Vec<(IoRangeKind, u64, u64)> {
        let mut claims = vec![
            (IoRangeKind::Port, 0x60, 0x60),
            (IoRangeKind::Port, 0x64, 0x64),
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
        if self.platform.is_some() {
            claims.push((
                IoRangeKind::Port,
                u64::from(*FIXED_PLATFORM_PORTS.start()),
                u64::from(*FIXED_PLATFORM_PORTS.end()),
            ));
            claims.push((IoRangeKind::PciConfig, u64::from(PLATFORM_DEVFN), u64::from(PLATFORM_DEVFN)));
        }
        for slot in &self.nics {
            let devfn = u64::from(slot.device) << 3;
            claims.push((IoRangeKind::PciConfig, devfn, devfn));
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
        levels[usize::from(i8042::KEYBOARD_IRQ)] = Some(self.keyboard_controller.keyboard_irq_level());
        levels[usize::from(i8042::AUX_IRQ)] = Some(self.keyboard_controller.aux_irq_level());
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
        for slot in &mut self.nics {
            let level = !slot.unplugged && slot.card.irq_level();
            if level != slot.intx_level {
                slot.intx_level = level;
                self.effects.push_back(Effect::PciIntx { device: slot.device, intx: 0, level });
            }
        }
    }

    /// Answers one ioreq at time `now_ns`; returns the `data` the vCPU gets back.
    pub fn handle_ioreq(&mut self, req: &Ioreq, memory: &dyn GuestMemory, now_ns: u64) -> u64 {
        self.stats.ioreqs += 1;
        self.now_ns = now_ns;
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

    fn pio(&mut self, req: &Ioreq, memory: &dyn GuestMemory) -> u64 {
        let size = req.size;
        if !matches!(size, 1 | 2 | 4) || req.addr > 0xffff {
            return self.malformed(req, "port access", req.addr);
        }
        let port = req.addr as u16;
        if !req.data_is_ptr() {
            return if req.is_read() {
                u64::from(self.port_read(port, size as u8, memory))
            } else {
                self.port_write(port, size as u8, req.data as u32, memory);
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
                let value = self.port_read(port, size as u8, memory).to_le_bytes();
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
                self.port_write(port, size as u8, u32::from_le_bytes(value), memory);
            }
        }
        req.data
    }

    /// MMIO: the NICs' memory BARs. `rep movs` moves elements between guest RAM and
    /// the device, `rep stos` writes one value `count` times; an address no BAR covers
    /// reads as all-ones.
    fn mmio(&mut self, req: &Ioreq, memory: &dyn GuestMemory) -> u64 {
        if !matches!(req.size, 1 | 2 | 4 | 8) {
            return self.malformed(req, "MMIO size", req.size.into());
        }
        let size = u64::from(req.size);
        if !req.data_is_ptr() {
            let count = u64::from(req.count.max(1));
            if count.checked_mul(size).is_none_or(|bytes| bytes > MAX_REP_BYTES) {
                return self.malformed(req, "rep count", u64::from(req.count));
            }
            if req.is_read() {
                return self.mmio_access(req.addr, req.size as u8, None, memory);
            }
            for k in 0..count {
                let Some(address) = Self::element(req.addr, k, size, req.df()) else { break };
                self.mmio_access(address, req.size as u8, Some(req.data), memory);
            }
            return req.data;
        }
        let Some((count, lowest)) = Self::rep_span(req) else {
            return self.malformed(req, "rep count", u64::from(req.count));
        };
        let mut buffer = vec![0u8; (count * size) as usize];
        let at = |k: u64| (Self::element(req.data, k, size, req.df()).unwrap_or(lowest) - lowest) as usize;
        if req.is_read() {
            for k in 0..count {
                let Some(address) = Self::element(req.addr, k, size, req.df()) else { break };
                let value = self.mmio_access(address, req.size as u8, None, memory).to_le_bytes();
                let start = at(k);
                buffer[start..start + size as usize].copy_from_slice(&value[..size as usize]);
            }
            if let Err(e) = memory.write(lowest, &buffer) {
                return self.malformed(req, "rep movs into guest memory", memory_error_gfn(e));
            }
        } else {
            if let Err(e) = memory.read(lowest, &mut buffer) {
                return self.malformed(req, "rep movs from guest memory", memory_error_gfn(e));
            }
            for k in 0..count {
                let Some(address) = Self::element(req.addr, k, size, req.df()) else { break };
                let start = at(k);
                let mut value = [0u8; 8];
                value[..size as usize].copy_from_slice(&buffer[start..start + size as usize]);
                self.mmio_access(address, req.size as u8, Some(u64::from_le_bytes(value)), memory);
            }
        }
        req.data
    }

    /// One MMIO access at `address`: a read (`value` None) returns what the device
    /// answers; 8-byte accesses are split into two 4-byte ones (NIC registers are 32-bit).
    fn mmio_access(&mut self, address: u64, size: u8, value: Option<u64>, memory: &dyn GuestMemory) -> u64 {
        if size == 8 {
            let low = self.mmio_access(address, 4, value.map(|v| v & 0xffff_ffff), memory);
            let high = self.mmio_access(address.wrapping_add(4), 4, value.map(|v| v >> 32), memory);
            return low | (high << 32);
        }
        if let Some((_, base, len)) = self.platform_claimed[1]
            && (base..base + len).contains(&address)
        {
            // BAR1 has nothing behind it: reads 0, writes are dropped.
            return if value.is_some() { value.unwrap_or_default() } else { 0 };
        }
        let now = self.now_ns;
        let hit = self.nics.iter_mut().filter(|slot| !slot.unplugged).find_map(|slot| {
            slot.claimed
                .iter()
                .enumerate()
                .find_map(|(bar, claim)| match claim {
                    Some((BarKind::Memory32 { .. }, base, len)) if (*base..base + len).contains(&address) => {
                        Some((bar, address - base))
                    }
                    _ => None,
                })
                .map(|(bar, offset)| (slot, bar, offset))
        });
        match (hit, value) {
            (Some((slot, bar, offset)), None) => {
                slot.touched = true;
                u64::from(slot.card.read(bar, offset, size, memory, now))
            }
            (Some((slot, bar, offset)), Some(v)) => {
                slot.touched = true;
                slot.card.write(bar, offset, size, v as u32, memory, now);
                v
            }
            (None, _) => {
                if self.log.allow() {
                    log::warn!("ioreq: MMIO at {address:#x} (size {size}) that no device decodes");
                }
                all_ones(size.into())
            }
        }
    }

    /// The NIC whose I/O BAR covers `port`: (index, BAR, offset).
    fn nic_port(&self, port: u16) -> Option<(usize, usize, u64)> {
        let port = u64::from(port);
        self.nics.iter().enumerate().filter(|(_, slot)| !slot.unplugged).find_map(|(index, slot)| {
            slot.claimed.iter().enumerate().find_map(|(bar, claim)| match claim {
                Some((BarKind::Io, base, len)) if (*base..base + len).contains(&port) => {
                    Some((index, bar, port - base))
                }
                _ => None,
            })
        })
    }

    /// After a config write to a NIC: claims and releases BAR ranges to match what the
    /// guest has placed and enabled (released first, so a moved BAR never overlaps itself).
    fn update_nic_bars(&mut self, index: usize) {
        let Some(slot) = self.nics.get_mut(index) else { return };
        for bar in 0..6 {
            let now = slot.card.config().bar_region(bar);
            if now == slot.claimed[bar] {
                continue;
            }
            let range = |(kind, base, len): (BarKind, u64, u64)| {
                let kind = if kind == BarKind::Io { IoRangeKind::Port } else { IoRangeKind::Memory };
                (kind, base, base + len - 1)
            };
            if let Some(old) = slot.claimed[bar] {
                let (kind, first, last) = range(old);
                self.effects.push_back(Effect::Release { kind, first, last });
            }
            if let Some(new) = now {
                let (kind, first, last) = range(new);
                self.effects.push_back(Effect::Claim { kind, first, last });
            }
            slot.claimed[bar] = now;
        }
    }

    /// After a config write to the IDE function: claims or releases BAR4 to match what
    /// the guest placed and enabled.
    fn update_bmide_bar(&mut self) {
        let now = self.ide_function.bar_region(crate::pci::piix3::IDE_BUS_MASTER_BAR).map(|(_, base, len)| (base, len));
        if now == self.bmide_claimed {
            return;
        }
        if let Some((base, len)) = self.bmide_claimed {
            self.effects.push_back(Effect::Release { kind: IoRangeKind::Port, first: base, last: base + len - 1 });
        }
        if let Some((base, len)) = now {
            self.effects.push_back(Effect::Claim { kind: IoRangeKind::Port, first: base, last: base + len - 1 });
        }
        self.bmide_claimed = now;
    }

    /// After a config write to the platform device: claims and releases its BARs.
    fn update_platform_bars(&mut self) {
        let Some(platform) = &self.platform else { return };
        for bar in [crate::platform::IO_BAR, crate::platform::MMIO_BAR] {
            let now = platform.config().bar_region(bar);
            if now == self.platform_claimed[bar] {
                continue;
            }
            let range = |(kind, base, len): (BarKind, u64, u64)| {
                let kind = if kind == BarKind::Io { IoRangeKind::Port } else { IoRangeKind::Memory };
                (kind, base, base + len - 1)
            };
            if let Some(old) = self.platform_claimed[bar] {
                let (kind, first, last) = range(old);
                self.effects.push_back(Effect::Release { kind, first, last });
            }
            if let Some(new) = now {
                let (kind, first, last) = range(new);
                self.effects.push_back(Effect::Claim { kind, first, last });
            }
            self.platform_claimed[bar] = now;
        }
    }

    /// The offset in the platform device's BAR0 of `port`, when BAR0 decodes it.
    fn platform_io_offset(&self, port: u16) -> Option<u64> {
        let (_, base, len) = self.platform_claimed[0]?;
        let port = u64::from(port);
        (base..base + len).contains(&port).then(|| port - base)
    }

    /// Carries out what a write to the platform device asked for.
    fn platform_request(&mut self, request: Option<PlatformRequest>) {
        if let Some(PlatformRequest::Unplug(mask)) = request {
            self.unplug(mask);
        }
    }

    /// Takes the devices of the unplug mask `mask` off the buses (the platform
    /// device's [`unplug`](crate::platform::unplug) bits): the IDE hard disks (all of
    /// them, or all but the primary master), the NICs (config space all-ones, BARs given
    /// back, line low). CD-ROMs stay.
    pub fn unplug(&mut self, mask: u16) {
        use crate::platform::unplug;
        if mask & (unplug::ALL_IDE_DISKS | unplug::AUX_IDE_DISKS) != 0 {
            let keep_primary_master = mask & unplug::ALL_IDE_DISKS == 0;
            let gone = self.ide.unplug_hard_disks(keep_primary_master);
            if !gone.is_empty() {
                log::info!("machine: IDE disk(s) {gone:?} unplugged by the guest");
            }
        }
        if mask & unplug::ALL_NICS != 0 {
            for index in 0..self.nics.len() {
                let Some(slot) = self.nics.get_mut(index) else { continue };
                if slot.unplugged {
                    continue;
                }
                slot.unplugged = true;
                log::info!("machine: NIC at 00:{:02x}.0 unplugged by the guest", slot.device);
                for bar in 0..6 {
                    if let Some((kind, base, len)) = slot.claimed[bar].take() {
                        let kind = if kind == BarKind::Io { IoRangeKind::Port } else { IoRangeKind::Memory };
                        self.effects.push_back(Effect::Release { kind, first: base, last: base + len - 1 });
                    }
                }
            }
        }
        self.sync_irqs();
    }

    /// The offset in BAR4 of `port`, when the bus-master ports decode it.
    fn bmide_offset(&self, port: u16) -> Option<u16> {
        let (base, len) = self.bmide_claimed?;
        let port = u64::from(port);
        (base..base + len).contains(&port).then(|| (port - base) as u16)
    }

    /// Starts the DMA transfers that are ready: reads each one's PRD table (bus mastering
    /// must be on) and gives the controller its scatter list or the error.
    fn start_ide_dma(&mut self, memory: &dyn GuestMemory) {
        use crate::ide::bmdma::{PrdError, fetch_prd_table, parse_prd_table};
        while let Some(start) = self.ide.take_dma_start() {
            let table = if self.ide_function.command() & crate::pci::COMMAND_MASTER == 0 {
                Err(PrdError::BusMasterDisabled)
            } else {
                fetch_prd_table(memory, start.prd_address).and_then(|table| parse_prd_table(&table, start.len_bytes))
            };
            if let Err(error) = &table
                && self.log.allow()
            {
                log::warn!("ide {:?}: DMA of {} bytes ends with an error: {error}", start.drive, start.len_bytes);
            }
            self.ide.start_dma(start, table);
        }
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
            PLATFORM_DEVFN if self.platform.is_some() => {
                self.platform.as_ref().map_or(all_ones(size.into()) as u32, |p| p.config_read(reg, size))
            }
            _ => match self.nics.iter().find(|slot| slot.device << 3 == devfn && !slot.unplugged) {
                Some(slot) => slot.card.config_read(reg, size),
                None => all_ones(size.into()) as u32,
            },
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
            PIIX3_IDE_DEVFN => {
                self.ide_function.write(reg, size, value);
                self.update_bmide_bar();
            }
            PLATFORM_DEVFN if self.platform.is_some() => {
                if let Some(platform) = &mut self.platform {
                    platform.config_write(reg, size, value);
                }
                self.update_platform_bars();
            }
            _ => {
                if let Some(index) = self.nics.iter().position(|slot| slot.device << 3 == devfn && !slot.unplugged) {
                    self.nics[index].card.config_write(reg, size, value);
                    self.update_nic_bars(index);
                }
            }
        }
    }

    /// A port read of `size` (1, 2 or 4) bytes (`memory` for a NIC's DMA).
    pub fn port_read(&mut self, port: u16, size: u8, memory: &dyn GuestMemory) -> u32 {
        match port {
            0xcf8..=0xcfb => match (port, size) {
                (0xcf8, 4) => self.config_address,
                (0xcf9, 1) => self.reset_control.read().into(),
                _ => all_ones(size.into()) as u32,
            },
            0x60 | 0x64 => self.bytewise_read(port, size, |m, p| m.keyboard_controller.read(p)),
            0x70..=0x71 => self.bytewise_read(port, size, |m, p| m.cmos.read(p)),
            0x1f0..=0x1f7 | 0x3f6 | 0x170..=0x177 | 0x376 => self.ide.read(port, size),
            0x3f8..=0x3ff if self.com1.is_some() => {
                self.bytewise_read(port, size, |m, p| m.com1.as_mut().map_or(0xff, |u| u.read((p - 0x3f8) as u8)))
            }
            AcpiPm::PM1A_CNT..=0xb005 | AcpiPm::GPE0_BLK..=0xafe3 => self.pm.read(port, size),
            0x10..=0x1f if self.platform.is_some() => {
                self.platform.as_ref().map_or(all_ones(size.into()) as u32, |p| p.fixed_read(port, size))
            }
            _ if self.platform_io_offset(port).is_some() => {
                let offset = self.platform_io_offset(port).unwrap_or_default();
                self.platform.as_ref().map_or(all_ones(size.into()) as u32, |p| p.io_bar_read(offset, size))
            }
            _ if self.bmide_offset(port).is_some() => {
                let offset = self.bmide_offset(port).unwrap_or_default();
                self.ide.bmdma_read(offset, size)
            }
            _ => match self.nic_port(port) {
                Some((index, bar, offset)) => {
                    let now = self.now_ns;
                    self.nics[index].touched = true;
                    self.nics[index].card.read(bar, offset, size, memory, now)
                }
                None => {
                    if self.log.allow() {
                        log::warn!("ioreq: read of port {port:#x} that no device has");
                    }
                    all_ones(size.into()) as u32
                }
            },
        }
    }

    /// A port write of `size` (1, 2 or 4) bytes (`memory` for a NIC's DMA).
    pub fn port_write(&mut self, port: u16, size: u8, value: u32, memory: &dyn GuestMemory) {
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
            0x60 | 0x64 => self.bytewise_write(port, size, value, |m, p, v| {
                if let Some(ControllerRequest::Reset) = m.keyboard_controller.write(p, v) {
                    m.effects.push_back(Effect::Shutdown(ShutdownReason::Reboot));
                }
            }),
            0x70..=0x71 => self.bytewise_write(port, size, value, |m, p, v| m.cmos.write(p, v)),
            0x1f0..=0x1f7 | 0x3f6 | 0x170..=0x177 | 0x376 => {
                self.ide.write(port, size, value);
                self.start_ide_dma(memory);
            }
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
            0x10..=0x1f if self.platform.is_some() => {
                let now = self.now_ns;
                let request = self.platform.as_mut().and_then(|p| p.fixed_write(port, size, value, now));
                self.platform_request(request);
            }
            _ if self.platform_io_offset(port).is_some() => {
                let offset = self.platform_io_offset(port).unwrap_or_default();
                let now = self.now_ns;
                let request = self.platform.as_mut().and_then(|p| p.io_bar_write(offset, size, value, now));
                self.platform_request(request);
            }
            _ if self.bmide_offset(port).is_some() => {
                let offset = self.bmide_offset(port).unwrap_or_default();
                self.ide.bmdma_write(offset, size, value);
                self.start_ide_dma(memory);
            }
            _ => match self.nic_port(port) {
                Some((index, bar, offset)) => {
                    let now = self.now_ns;
                    self.nics[index].touched = true;
                    self.nics[index].card.write(bar, offset, size, value, memory, now);
                }
                None => {
                    if self.log.allow() {
                        log::warn!("ioreq: write of port {port:#x} that no device has");
                    }
                }
            },
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
/// A drive of the machine's layout (what a restore must find where the save had it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum DriveLayout {
    HardDisk { nr_sectors: u64 },
    CdRom,
}

impl DriveLayout {
    fn of(spec: DriveSpec) -> DriveLayout {
        match spec {
            DriveSpec::HardDisk { nr_sectors, .. } => DriveLayout::HardDisk { nr_sectors },
            DriveSpec::CdRom { .. } => DriveLayout::CdRom,
        }
    }
}

/// What the machine is made of, the first section of its saved state: a restore
/// into a machine of another layout (another argv) is refused before anything loads.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Layout {
    /// `[channel][unit]`
    pub drives: [[Option<DriveLayout>; 2]; 2],
    pub com1: bool,
    /// each NIC's model as its section id, in slot order
    pub nics: Vec<u16>,
}

/// The machine's own registers in its saved state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct MachineState {
    config_address: u32,
    /// the time of the save, to move the devices' timers to the restoring clock
    saved_at_ns: u64,
}

/// Section versions of the machine's own sections and of the devices that have no
/// version of their own (their state is their serde form).
const LAYOUT_VERSION: u16 = 1;
const MACHINE_VERSION: u16 = 1;
const CONFIG_SPACE_VERSION: u16 = 1;
const RESET_CONTROL_VERSION: u16 = 1;
const CMOS_VERSION: u16 = 1;
const I8042_VERSION: u16 = 1;
const PM_VERSION: u16 = 1;
const UART_VERSION: u16 = 1;

/// Save/restore ([`crate::snapshot`]): every device's state as a section.
impl Machine {
    /// Tells Xen the level of every line the machine drives, low ones too: what Xen
    /// restored for them came from the saving side and must not stay up when the
    /// device's line is down (the next rising edge would be lost).
    fn resend_irq_levels(&mut self) {
        // Levels opposite to each line's, so that sync_irqs sends every one.
        let mut lines = [None; 16];
        lines[usize::from(IDE_PRIMARY_IRQ)] = Some(self.ide.irq_level(0));
        lines[usize::from(IDE_SECONDARY_IRQ)] = Some(self.ide.irq_level(1));
        lines[usize::from(i8042::KEYBOARD_IRQ)] = Some(self.keyboard_controller.keyboard_irq_level());
        lines[usize::from(i8042::AUX_IRQ)] = Some(self.keyboard_controller.aux_irq_level());
        if let Some(uart) = &self.com1 {
            lines[usize::from(Uart16550::COM1_IRQ)] = Some(uart.irq_level());
        }
        for (sent, line) in self.isa_levels.iter_mut().zip(lines) {
            *sent = line.is_some_and(|level| !level);
        }
        for slot in &mut self.nics {
            slot.intx_level = slot.unplugged || !slot.card.irq_level();
        }
        self.sync_irqs();
    }

    /// The layout the saved state records and a restore checks.
    pub fn layout(&self) -> Layout {
        Layout {
            drives: self.drive_layout,
            com1: self.com1.is_some(),
            nics: self.nics.iter().map(|slot| slot.card.save_state().0 as u16).collect(),
        }
    }

    /// The devices' state at `now_ns`, as a state file's payload. Take it with the
    /// machine quiet: no ioreq half-answered (the VM paused) and the IDE controller
    /// [idle](IdeController::is_idle), so that no disk request is in it. Frames the
    /// NICs hold for the glue are not saved.
    pub fn save_state(&self, now_ns: u64) -> Vec<u8> {
        use crate::snapshot::SectionId as Id;
        let mut out = crate::snapshot::Writer::new();
        out.section(Id::Layout, 0, LAYOUT_VERSION, &self.layout());
        let own = MachineState { config_address: self.config_address, saved_at_ns: now_ns };
        out.section(Id::Machine, 0, MACHINE_VERSION, &own);
        out.section(Id::HostBridge, 0, CONFIG_SPACE_VERSION, &self.host_bridge);
        out.section(Id::Piix3Isa, 0, CONFIG_SPACE_VERSION, &self.isa);
        out.section(Id::IdeFunction, 0, CONFIG_SPACE_VERSION, &self.ide_function);
        out.section(Id::ResetControl, 0, RESET_CONTROL_VERSION, &self.reset_control);
        out.section(Id::Cmos, 0, CMOS_VERSION, &self.cmos);
        out.section(Id::I8042, 0, I8042_VERSION, &self.keyboard_controller);
        out.section(Id::AcpiPm, 0, PM_VERSION, &self.pm);
        if let Some(uart) = &self.com1 {
            out.section(Id::Uart, 0, UART_VERSION, uart);
        }
        out.section(Id::Ide, 0, IdeController::STATE_VERSION, &self.ide);
        if let Some(platform) = &self.platform {
            out.section(Id::XenPlatform, 0, XenPlatform::STATE_VERSION, platform);
        }
        for (index, slot) in self.nics.iter().enumerate() {
            let (id, version, body) = slot.card.save_state();
            out.raw_section(id as u16, index as u16, version, &body);
        }
        out.finish()
    }

    /// Loads a saved state (from [`save_state`](Self::save_state)) into this machine,
    /// built from the restoring argv, at `now_ns`, before the guest runs. The layout
    /// must match; every section must be a version this model reads and a state its
    /// device can take. Afterwards the NICs' BARs are claimed again and the interrupt
    /// lines that are up are raised again, as [`Effect`]s for the caller. After an
    /// error the machine may be partly loaded: it is not to run.
    pub fn load_state(&mut self, payload: &[u8], now_ns: u64) -> Result<(), crate::snapshot::SnapshotError> {
        use crate::snapshot::{SectionId as Id, SnapshotError, TimeBase, find};
        let sections = crate::snapshot::sections(payload)?;
        let layout: Layout = find(&sections, Id::Layout, 0)?.decode(LAYOUT_VERSION)?;
        let ours = self.layout();
        if layout != ours {
            return Err(SnapshotError::LayoutMismatch(alloc::format!("saved {layout:?}, here {ours:?}")));
        }
        let expected = 10 + usize::from(ours.com1) + ours.nics.len() + usize::from(self.platform.is_some());
        if sections.len() != expected {
            return Err(SnapshotError::invalid(
                Id::Layout,
                alloc::format!("{} sections where this machine has {expected}", sections.len()),
            ));
        }
        let own: MachineState = find(&sections, Id::Machine, 0)?.decode(MACHINE_VERSION)?;
        let time = TimeBase { saved_now_ns: own.saved_at_ns, now_ns };
        let config_space = |id: Id, current: &ConfigSpace| -> Result<ConfigSpace, SnapshotError> {
            let saved: ConfigSpace = find(&sections, id, 0)?.decode(CONFIG_SPACE_VERSION)?;
            let mut config = current.clone();
            config.load_state(&saved).map_err(|what| SnapshotError::invalid(id, what))?;
            Ok(config)
        };
        let host_bridge = config_space(Id::HostBridge, &self.host_bridge)?;
        let ide_function = config_space(Id::IdeFunction, &self.ide_function)?;
        let mut isa = self.isa.clone();
        let saved_isa: Piix3Isa = find(&sections, Id::Piix3Isa, 0)?.decode(CONFIG_SPACE_VERSION)?;
        isa.load_state(&saved_isa).map_err(|what| SnapshotError::invalid(Id::Piix3Isa, what))?;
        let reset_control: ResetControl = find(&sections, Id::ResetControl, 0)?.decode(RESET_CONTROL_VERSION)?;
        let mut cmos = self.cmos.clone();
        cmos.load_state(&find(&sections, Id::Cmos, 0)?.decode(CMOS_VERSION)?);
        let mut keyboard_controller = self.keyboard_controller.clone();
        keyboard_controller
            .load_state(find(&sections, Id::I8042, 0)?.decode(I8042_VERSION)?)
            .map_err(|what| SnapshotError::invalid(Id::I8042, what))?;
        let pm: AcpiPm = find(&sections, Id::AcpiPm, 0)?.decode(PM_VERSION)?;
        let com1 = match &self.com1 {
            Some(_) => {
                let mut uart = Uart16550::new(SERIAL_OUTPUT_LIMIT_BYTES);
                uart.load_state(find(&sections, Id::Uart, 0)?.decode(UART_VERSION)?)
                    .map_err(|what| SnapshotError::invalid(Id::Uart, what))?;
                Some(uart)
            }
            None => None,
        };
        let ide: IdeController = find(&sections, Id::Ide, 0)?.decode(IdeController::STATE_VERSION)?;
        let platform = match &self.platform {
            Some(current) => {
                let saved: XenPlatform = find(&sections, Id::XenPlatform, 0)?.decode(XenPlatform::STATE_VERSION)?;
                let mut platform = current.clone();
                platform.load_state(saved, time).map_err(|what| SnapshotError::invalid(Id::XenPlatform, what))?;
                Some(platform)
            }
            None => None,
        };
        // The disks the guest unplugged were gone when the IDE state was saved.
        let unplugged = platform.as_ref().map_or(0, XenPlatform::unplugged);
        if unplugged & (crate::platform::unplug::ALL_IDE_DISKS | crate::platform::unplug::AUX_IDE_DISKS) != 0 {
            self.ide.unplug_hard_disks(unplugged & crate::platform::unplug::ALL_IDE_DISKS == 0);
        }
        // The fallible loads that change the machine: NICs, then IDE.
        for (index, slot) in self.nics.iter_mut().enumerate() {
            let instance = index as u16;
            let section = sections
                .iter()
                .find(|s| s.instance == instance && matches!(s.id, Id::Rtl8139 | Id::E1000))
                .ok_or(SnapshotError::Missing { device: "NIC" })?;
            slot.card.load_state(section, time)?;
        }
        self.ide.load_state(ide)?;
        self.config_address = own.config_address;
        self.host_bridge = host_bridge;
        self.isa = isa;
        self.ide_function = ide_function;
        self.reset_control = reset_control;
        self.cmos = cmos;
        self.keyboard_controller = keyboard_controller;
        self.pm = pm;
        self.com1 = com1;
        self.platform = platform;
        self.now_ns = now_ns;
        // Claims and interrupt lines again, for the new ioreq server and the caller.
        self.effects.clear();
        self.bmide_claimed = None;
        self.update_bmide_bar();
        self.platform_claimed = [None; 2];
        self.update_platform_bars();
        if unplugged & crate::platform::unplug::ALL_NICS != 0 {
            for slot in &mut self.nics {
                slot.unplugged = true;
            }
        }
        for index in 0..self.nics.len() {
            if let Some(slot) = self.nics.get_mut(index) {
                slot.claimed = [None; 6];
                slot.touched = true;
                if slot.unplugged {
                    continue;
                }
            }
            self.update_nic_bars(index);
        }
        self.resend_irq_levels();
        Ok(())
    }
}

fn all_ones(size: u32) -> u64 {
    if size >= 8 { u64::MAX } else { (1u64 << (size * 8)) - 1 }
}

/// How a DMA block op that a fuzz driver carried out ended.
fn dma_outcome(moved: Result<(), xen_seams::hvm::GuestMemoryError>) -> crate::ide::BlockOutcome {
    match moved {
        Ok(()) => crate::ide::BlockOutcome::Transferred,
        Err(_) => crate::ide::BlockOutcome::GuestMemoryFault,
    }
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

    const PORTS: [u16; 22] = [
        0x1f0, 0x1f1, 0x1f2, 0x1f6, 0x1f7, 0x3f6, 0x170, 0x177, 0x376, 0x3f8, 0x3fd, 0x70, 0x71, 0xcf8, 0xcf9, 0xb004,
        0x60, 0x64, 0xc000, 0xc002, 0xc004, 0xc00a,
    ];
    // The platform device's ports: the magic, the product/log port, BAR0 (placed below).
    const PLATFORM_PORTS: [u16; 5] = [0x10, 0x11, 0x12, 0xc100, 0xc108];
    let mut ide: [[Option<DriveSpec>; 2]; 2] = Default::default();
    ide[0][0] = Some(DriveSpec::HardDisk { nr_sectors: 2048, read_only: false });
    ide[1][0] = Some(DriveSpec::CdRom { medium_nr_sectors: Some(4096) });
    let mut machine =
        Machine::new(MachineConfig { ide, boot_order: "dc".into(), ram_mib: 1, com1: true, xen_platform: true });
    let ram = crate::vec_memory::VecGuestMemory::new(1 << 20);
    // The bus-master ports at 0xc000, decoding, bus mastering on (as hvmloader leaves them).
    machine.config_write(PIIX3_IDE_DEVFN, 0x20, 4, 0xc000);
    machine.config_write(PIIX3_IDE_DEVFN, 0x04, 2, 0x0005);
    // The platform device's BAR0 at 0xc100, BAR1 at 0xf000_0000.
    machine.config_write(PLATFORM_DEVFN, 0x10, 4, 0xc100);
    machine.config_write(PLATFORM_DEVFN, 0x14, 4, 0xf000_0000);
    machine.take_effects();
    let mut answered = 0;
    let mut clock = 0u64;
    for (n, chunk) in data.chunks_exact(32).enumerate() {
        let mut bytes = [0u8; 32];
        bytes.copy_from_slice(chunk);
        let mut req = Ioreq::from_bytes(&bytes);
        // Mostly well-formed requests at our devices; the rest as they came.
        if bytes[0] & 0x80 == 0 {
            req.kind = [ioreq_type::PIO, ioreq_type::PCI_CONFIG, ioreq_type::COPY][usize::from(bytes[1] % 3)];
            req.size = [1, 2, 4][usize::from(bytes[2] % 3)];
            req.addr = match req.kind {
                ioreq_type::PIO if bytes[7] & 0x80 != 0 => {
                    u64::from(PLATFORM_PORTS[usize::from(bytes[3]) % PLATFORM_PORTS.len()])
                }
                ioreq_type::PIO => u64::from(PORTS[usize::from(bytes[3]) % PORTS.len()]),
                ioreq_type::PCI_CONFIG => (u64::from(bytes[4] % 12) << 32) | u64::from(bytes[5]),
                _ => req.addr,
            };
            req.count = if req.data_is_ptr() { u32::from(bytes[6]) } else { 1 };
            req.data =
                if req.data_is_ptr() { u64::from(u16::from_le_bytes([bytes[8], bytes[9]])) << 4 } else { req.data };
        }
        clock = clock.max(n as u64 * 1000);
        let now_ns = clock;
        // A request that would wait is answered anyway once its wait is over (the
        // service waits); a blacklist lookup is answered at once.
        if let Some(query) = machine.take_blacklist_query() {
            machine.answer_blacklist(&query, query.build % 2 == 1);
        }
        let now_ns = match machine.ioreq_wait(&req, now_ns) {
            Some(PlatformWait::Tokens { until_ns }) => until_ns,
            Some(PlatformWait::Blacklist) => panic!("a magic read waits with no lookup out"),
            None => now_ns,
        };
        clock = now_ns;
        assert!(machine.ioreq_wait(&req, now_ns).is_none(), "a request still waits after its wait");
        machine.handle_ioreq(&req, &ram, now_ns);
        answered += 1;
        while let Some(request) = machine.ide_mut().take_request() {
            let outcome = match (n % 2, request.op) {
                (1, _) => BlockOutcome::Failed,
                (_, BlockOp::Read { nr_sectors, .. }) => BlockOutcome::Read(vec![0x5a; nr_sectors as usize * 512]),
                (_, BlockOp::Write { .. }) => BlockOutcome::Written,
                (_, BlockOp::Flush) => BlockOutcome::Flushed,
                (_, BlockOp::DmaRead { sg, .. }) => {
                    dma_outcome(crate::ide::bmdma::scatter(&ram, &sg, 0, &[0x5a; 4096]))
                }
                (_, BlockOp::DmaWrite { sg, .. }) => {
                    dma_outcome(crate::ide::bmdma::gather(&ram, &sg, 0, &mut [0; 4096]))
                }
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

/// The machine [`fuzz_load_state`] loads into: a disk of 4096 sectors at 0/0, a CD at
/// 1/0, COM1, an RTL8139 and an e1000.
pub fn fuzz_state_machine() -> Machine {
    let mut ide: [[Option<DriveSpec>; 2]; 2] = Default::default();
    ide[0][0] = Some(DriveSpec::HardDisk { nr_sectors: 4096, read_only: false });
    ide[1][0] = Some(DriveSpec::CdRom { medium_nr_sectors: Some(8192) });
    let mut machine =
        Machine::new(MachineConfig { ide, boot_order: "dc".into(), ram_mib: 1, com1: true, xen_platform: true });
    let mac = [0x00, 0x16, 0x3e, 0x12, 0x34, 0x56];
    machine.add_nic(crate::nic::new_card(crate::dm_args::NicModel::Rtl8139, mac));
    machine.add_nic(crate::nic::new_card(crate::dm_args::NicModel::E1000, mac));
    machine
}

/// A real saved state of [`fuzz_state_machine`] in the middle of things (PCI set up,
/// BARs placed, COM1 with input, a disk read half done), for the fuzz target to damage.
pub fn fuzz_saved_state() -> Vec<u8> {
    let mut machine = fuzz_state_machine();
    let ram = FuzzRam(core::cell::RefCell::new(vec![0; 1 << 16]));
    machine.config_write(PIIX3_ISA_DEVFN, 0x60, 4, 0x050b_0a05);
    machine.config_write(PIIX3_IDE_DEVFN, 0x40, 2, 0x8000);
    for (devfn, io, mem) in [(0x18, 0xc100, 0xf000_0000u32), (0x20, 0xc200, 0xf002_0000)] {
        machine.config_write(devfn, 0x10, 4, io);
        machine.config_write(devfn, 0x14, 4, mem);
        machine.config_write(devfn, 0x04, 2, 0x0007);
    }
    for (port, value) in [(0x3fb, 0x03), (0x3fa, 0xc7), (0x3f9, 0x0f), (0x64, 0x60), (0x70, 0x3d)] {
        machine.port_write(port, 1, value, &ram);
    }
    if let Some(uart) = machine.com1_mut() {
        uart.receive(b"input");
    }
    // Linux's PV drivers: product, build, a half line of log; no unplug (the disk read
    // below needs the disk).
    machine.config_write(PLATFORM_DEVFN, 0x10, 4, 0xc300);
    machine.port_write(0x12, 2, 3, &ram);
    machine.port_write(0x10, 4, 1, &ram);
    if let Some(query) = machine.take_blacklist_query() {
        machine.answer_blacklist(&query, false);
    }
    for byte in b"half a line" {
        machine.port_write(0x12, 1, u32::from(*byte), &ram);
    }
    for (port, value) in [(0x1f6, 0xe0), (0x1f2, 2), (0x1f3, 5), (0x1f7, 0x20)] {
        machine.port_write(port, 1, value, &ram);
    }
    while let Some(request) = machine.ide_mut().take_request() {
        machine.ide_mut().complete(request.drive, crate::ide::BlockOutcome::Read(vec![0x5a; 1024]));
    }
    for _ in 0..10 {
        machine.port_read(0x1f0, 2, &ram);
    }
    machine.save_state(1_000_000)
}

/// Guest RAM in a Vec for the fuzz helpers.
struct FuzzRam(core::cell::RefCell<Vec<u8>>);

impl GuestMemory for FuzzRam {
    fn read(&self, gpa: u64, out: &mut [u8]) -> Result<(), xen_seams::hvm::GuestMemoryError> {
        let ram = self.0.borrow();
        let range = usize::try_from(gpa).ok().and_then(|start| ram.get(start..start.checked_add(out.len())?));
        out.copy_from_slice(range.ok_or(xen_seams::hvm::GuestMemoryError::Unmapped { gfn: gpa >> 12 })?);
        Ok(())
    }
    fn write(&self, gpa: u64, data: &[u8]) -> Result<(), xen_seams::hvm::GuestMemoryError> {
        let mut ram = self.0.borrow_mut();
        let start = usize::try_from(gpa).ok();
        let range = start.and_then(|start| ram.get_mut(start..start.checked_add(data.len())?));
        range.ok_or(xen_seams::hvm::GuestMemoryError::Unmapped { gfn: gpa >> 12 })?.copy_from_slice(data);
        Ok(())
    }
    fn invalidate(&self) {}
}

/// The saved-state promises, for the fuzz target (devices/fuzz, `state_file`) and the
/// host tests: any payload loaded into [`fuzz_state_machine`] is an error or a state
/// the machine then runs with: it answers every port, its disk requests and both
/// NICs' registers, receive and timers without a panic, and what it saves afterwards
/// loads again. Returns whether `payload` loaded.
pub fn fuzz_load_state(payload: &[u8]) -> bool {
    use crate::ide::{BlockOp, BlockOutcome};
    let mut machine = fuzz_state_machine();
    if machine.load_state(payload, 7_000_000).is_err() {
        return false;
    }
    let ram = FuzzRam(core::cell::RefCell::new(vec![0; 1 << 16]));
    let ports =
        (0x1f0..=0x1f7).chain(0x170..=0x177).chain([0x3f6, 0x376, 0x60, 0x64, 0x70, 0x71, 0xb004, 0xafe0, 0x10]);
    for (n, port) in ports.chain(0x3f8..=0x3ff).enumerate() {
        for size in [1, 2, 4] {
            machine.port_read(port, size, &ram);
        }
        machine.port_write(port, 1, n as u32 * 37, &ram);
        while let Some(request) = machine.ide_mut().take_request() {
            let outcome = match request.op {
                BlockOp::Read { nr_sectors, .. } => BlockOutcome::Read(vec![0xa5; nr_sectors as usize * 512]),
                BlockOp::Write { .. } => BlockOutcome::Written,
                BlockOp::Flush => BlockOutcome::Flushed,
                BlockOp::DmaRead { .. } | BlockOp::DmaWrite { .. } => BlockOutcome::Transferred,
            };
            machine.ide_mut().complete(request.drive, outcome);
        }
    }
    for devfn in [HOST_BRIDGE_DEVFN, PIIX3_ISA_DEVFN, PIIX3_IDE_DEVFN, PLATFORM_DEVFN, 0x18, 0x20] {
        for reg in (0..256).step_by(4) {
            machine.config_read(devfn, reg, 4);
        }
    }
    for index in 0..machine.nr_nics() {
        if let Some(nic) = machine.nic_mut(index) {
            for offset in (0..0x100).step_by(2).chain((0x2800..0x2830).step_by(4)).chain((0x3800..0x3830).step_by(4)) {
                let value = nic.read(0, offset, 2, &ram, 8_000_000);
                nic.write(0, offset, 2, value ^ 0x0c, &ram, 8_000_000);
            }
            nic.receive(&[0xff; 64], &ram, 9_000_000);
            nic.tick(u64::MAX / 2);
            while nic.take_tx_frame().is_some() {}
        }
    }
    machine.sync_irqs();
    machine.take_effects();
    // Drain a disk request the last writes may have left, then save and load again.
    while let Some(request) = machine.ide_mut().take_request() {
        machine.ide_mut().complete(request.drive, BlockOutcome::Failed);
    }
    let again = machine.save_state(10_000_000);
    if machine.ide().is_idle()
        && let Err(error) = fuzz_state_machine().load_state(&again, 11_000_000)
    {
        panic!("a state saved after a restore does not load: {error}");
    }
    true
}

/// The fuzz driver of PRD tables (devices/fuzz's `prd_table` target): the first 4 bytes
/// of `data` are the transfer length in sectors (bounded), the rest a PRD table. The
/// pure parser must give a list exactly as long as the transfer or an error; then the
/// table is put in the guest RAM of a machine and run as a READ DMA and a WRITE DMA
/// whose block requests move real bytes, which must end with an interrupt and without
/// a panic. Returns whether the table parsed.
pub fn fuzz_prd_table(data: &[u8]) -> bool {
    use crate::ide::bmdma::{gather, parse_prd_table, scatter};
    use crate::ide::{BlockOp, BlockOutcome};
    let Some((head, table)) = data.split_first_chunk::<4>() else { return false };
    let nr_sectors = (u32::from_le_bytes(*head) % 300).max(1);
    let len_bytes = u64::from(nr_sectors) * 512;
    let parsed = parse_prd_table(table, len_bytes);
    if let Ok(list) = &parsed {
        assert_eq!(list.len_bytes(), len_bytes, "a scatter list as long as the transfer");
        assert!(list.entries.len() <= crate::ide::bmdma::MAX_PRD_ENTRIES);
    }
    let mut ide: [[Option<DriveSpec>; 2]; 2] = Default::default();
    ide[0][0] = Some(DriveSpec::HardDisk { nr_sectors: 1024, read_only: false });
    let mut machine =
        Machine::new(MachineConfig { ide, boot_order: "c".into(), ram_mib: 1, com1: false, xen_platform: false });
    let ram = crate::vec_memory::VecGuestMemory::new(1 << 20);
    let table_gpa = 0x1000u32;
    let table_len = table.len().min(4096);
    if ram.write(u64::from(table_gpa), &table[..table_len]).is_err() {
        return parsed.is_ok();
    }
    machine.config_write(PIIX3_IDE_DEVFN, 0x20, 4, 0xc000);
    machine.config_write(PIIX3_IDE_DEVFN, 0x04, 2, 0x0005);
    for (command, direction) in [(0xc8u8, 0x08u32), (0xca, 0x00)] {
        machine.port_write(0xc004, 4, table_gpa, &ram);
        machine.port_write(0xc000, 1, direction, &ram);
        machine.port_write(0xc002, 1, 0x06, &ram);
        for (port, value) in [(0x1f6, 0xe0), (0x1f2, nr_sectors & 0xff), (0x1f3, 0), (0x1f4, 0), (0x1f5, 0)] {
            machine.port_write(port, 1, value, &ram);
        }
        machine.port_write(0x1f7, 1, u32::from(command), &ram);
        machine.port_write(0xc000, 1, direction | 1, &ram);
        while let Some(request) = machine.ide_mut().take_request() {
            let outcome = match request.op {
                BlockOp::DmaRead { nr_sectors, sg, .. } => {
                    dma_outcome(scatter(&ram, &sg, 0, &vec![0x3c; nr_sectors as usize * 512]))
                }
                BlockOp::DmaWrite { nr_sectors, sg, .. } => {
                    dma_outcome(gather(&ram, &sg, 0, &mut vec![0; nr_sectors as usize * 512]))
                }
                _ => BlockOutcome::Failed,
            };
            machine.ide_mut().complete(request.drive, outcome);
        }
        machine.sync_irqs();
        let bm_status = machine.port_read(0xc002, 1, &ram);
        assert_ne!(bm_status & 0x04, 0, "the command ended with an interrupt");
        machine.port_write(0xc000, 1, direction, &ram);
        let status = machine.port_read(0x1f7, 1, &ram) as u8;
        assert_eq!(status & 0x88, 0, "neither busy nor waiting for data: {status:#x}");
    }
    parsed.is_ok()
}

/// The fuzz driver of ATAPI CDBs (devices/fuzz's `atapi_cdb` target): every 13 bytes of
/// `data` are a PACKET command to a CD-ROM with a medium (byte 0: the features register,
/// DMA bit included; then the 12-byte CDB), sent by PIO as libata does; the reply is
/// read while DRQ is set (bounded) and the block requests are served. No CDB may panic,
/// leave the drive busy without a request, or make it buffer without bound. Returns how
/// many commands ran.
pub fn fuzz_atapi_cdb(data: &[u8]) -> usize {
    use crate::ide::{BlockOp, BlockOutcome};
    let mut ide: [[Option<DriveSpec>; 2]; 2] = Default::default();
    ide[1][0] = Some(DriveSpec::CdRom { medium_nr_sectors: Some(4096) });
    let mut machine =
        Machine::new(MachineConfig { ide, boot_order: "d".into(), ram_mib: 1, com1: false, xen_platform: false });
    let ram = crate::vec_memory::VecGuestMemory::new(1 << 16);
    let mut commands = 0;
    for chunk in data.chunks_exact(13) {
        let (features, cdb) = (chunk[0], &chunk[1..]);
        for (port, value) in [(0x176, 0xa0), (0x171, features), (0x174, 0x00), (0x175, 0x08), (0x177, 0xa0)] {
            machine.port_write(port, 1, u32::from(value), &ram);
        }
        if machine.port_read(0x177, 1, &ram) & 0x08 != 0 {
            for pair in cdb.chunks_exact(2) {
                machine.port_write(0x170, 2, u32::from(u16::from_le_bytes([pair[0], pair[1]])), &ram);
            }
        }
        for _ in 0..64 {
            while let Some(request) = machine.ide_mut().take_request() {
                let outcome = match request.op {
                    BlockOp::Read { nr_sectors, .. } => BlockOutcome::Read(vec![0x77; nr_sectors as usize * 512]),
                    _ => BlockOutcome::Failed,
                };
                machine.ide_mut().complete(request.drive, outcome);
            }
            let status = machine.port_read(0x177, 1, &ram);
            if status & 0x08 == 0 {
                assert_eq!(status & 0x80, 0, "busy with no request outstanding");
                break;
            }
            for _ in 0..1024 {
                machine.port_read(0x170, 4, &ram);
            }
        }
        commands += 1;
    }
    commands
}
