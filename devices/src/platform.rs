//! The Xen platform device (PCI 5853:0001 at 00:02.0 of a qemu-xen `xenfv` machine), as
//! a synchronous state machine.
//!
//! It is what a guest's PV drivers look for before they take over from the emulated
//! devices (Xen's docs/misc/hvm-emulated-unplug.pandoc; QEMU's hw/i386/xen/xen_platform.c;
//! qemu-xen-traditional's token bucket):
//!
//! - **PCI function**: vendor 5853, device 0001, revision 1, class ff/80, subsystem
//!   5853:0001, INTA (Xen drives the line itself for the event-channel callback), COMMAND
//!   preset to I/O and memory. BAR0 is 256 I/O ports: offset 0 the platform flags (byte),
//!   offset 4 a byte 1 unplugs every disk and NIC (old SUSE drivers), offset 8 a byte 1
//!   unplugs the disks, 2 the NICs, anything else is a log character. BAR1 is 16 MiB of
//!   prefetchable memory with nothing behind it (Linux puts its grant frames there):
//!   reads 0, writes ignored.
//! - **Fixed ports 0x10-0x1f**: word read of 0x10 is the magic 0x49d2, or 0xd249 once
//!   the driver's product and build are blacklisted; byte read of 0x10 the flags, of 0x12
//!   the protocol version 1. Word write of 0x10 is the unplug mask ([`unplug`]), dword
//!   write of 0x10 the driver's build number, word write of 0x12 its product number,
//!   byte write of 0x12 a log character. Everything else reads all-ones.
//! - **Blacklist**: after product then build, the device asks (a [`BlacklistQuery`] the
//!   service takes) whether xenstore has `/mh/driver-blacklist/<product name>/<build>`,
//!   with the product names of Xen's public/hvm/pvdrivers.h ([`product_name`]; Linux
//!   writes 3, "linux"). Until the answer comes a magic read waits
//!   ([`XenPlatform::ioreq_wait`]); it is then answered from the cached result.
//! - **Log**: guest text goes into the device-model log a line at a time (flushed at a
//!   newline or 4 KiB), through a token bucket of one token a byte
//!   ([`TokenBucket`]: 128 KiB, starting full, refilled at 256 B/s). A write that needs
//!   more tokens than the bucket has waits: [`XenPlatform::ioreq_wait`] says until when,
//!   and the request is answered only then, so only that vCPU waits.
//!
//! The device does not unplug anything itself: it reports the mask
//! ([`PlatformRequest::Unplug`]) and the machine removes the devices from its buses.

use alloc::string::String;
use alloc::vec::Vec;

use crate::pci::{BarKind, BarSpec, ConfigSpace, SUBSYSTEM_ID, SUBSYSTEM_VENDOR_ID};
use crate::snapshot::TimeBase;

/// PCI ids of the platform device.
pub const VENDOR_XENSOURCE: u16 = 0x5853;
pub const DEVICE_PLATFORM: u16 = 0x0001;
const REVISION: u8 = 1;
const CLASS_OTHER: u8 = 0xff;
const SUBCLASS_OTHER: u8 = 0x80;

/// The device's PCI slot: 00:02.0, the first free slot when QEMU builds `xenfv`.
pub const PLATFORM_DEVFN: u8 = 0x10;

/// BAR0: 256 I/O ports; BAR1: 16 MiB of memory.
pub const IO_BAR: usize = 0;
pub const IO_BAR_BYTES: u32 = 0x100;
pub const MMIO_BAR: usize = 1;
pub const MMIO_BAR_BYTES: u32 = 0x100_0000;

/// The fixed ports (QEMU claims 16 of them).
pub const FIXED_PORT_BASE: u16 = 0x10;
pub const FIXED_PORT_LAST: u16 = 0x1f;
/// Magic (word read), unplug (word write), build (dword write), flags (byte).
pub const PORT_MAGIC: u16 = 0x10;
/// Protocol version (byte read), product (word write), log (byte write).
pub const PORT_PRODUCT: u16 = 0x12;

pub const MAGIC: u16 = 0x49d2;
/// The magic a blacklisted driver reads.
pub const MAGIC_BLACKLISTED: u16 = 0xd249;
pub const PROTOCOL_VERSION: u8 = 1;

/// The unplug mask's bits.
pub mod unplug {
    /// all IDE (and SCSI) disks, never CD-ROMs
    pub const ALL_IDE_DISKS: u16 = 1 << 0;
    /// all NICs
    pub const ALL_NICS: u16 = 1 << 1;
    /// all IDE disks but the primary master (bit 0 overrides it)
    pub const AUX_IDE_DISKS: u16 = 1 << 2;
    /// NVMe disks (there are none on this machine)
    pub const NVME_DISKS: u16 = 1 << 3;
}

/// Platform flags bit 0: ROM lock (only rombios used it; noted, not carried out).
const FLAG_ROM_LOCK: u8 = 1;

/// The longest log line kept before it is flushed, in bytes (QEMU's buffer).
pub const LOG_LINE_BYTES: usize = 4096;

/// The product names of Xen's register of PV driver products (public/hvm/pvdrivers.h):
/// the directory under `/mh/driver-blacklist/` that blacklists a product's builds.
pub fn product_name(product: u16) -> Option<&'static str> {
    match product {
        0x0001 => Some("xensource-windows"),
        0x0002 => Some("gplpv-windows"),
        0x0003 => Some("linux"),
        0xffff => Some("experimental"),
        _ => None,
    }
}

/// A token bucket of one token a byte: [`Self::CAPACITY`] tokens, starting full,
/// refilled at [`Self::FILL_BYTES_PER_S`]. Time is an argument (monotonic ns).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TokenBucket {
    tokens: u64,
    /// the time the tokens were counted at (advanced by whole tokens only, so that no
    /// fraction of a token is lost)
    counted_at_ns: u64,
}

impl TokenBucket {
    pub const CAPACITY: u64 = 128 * 1024;
    pub const FILL_BYTES_PER_S: u64 = 256;
    /// 10^9 / 256: the refill time of one token, exact.
    const NS_PER_TOKEN: u64 = 1_000_000_000 / Self::FILL_BYTES_PER_S;

    /// A full bucket at `now_ns`.
    pub fn new(now_ns: u64) -> TokenBucket {
        TokenBucket { tokens: Self::CAPACITY, counted_at_ns: now_ns }
    }

    fn refill(&mut self, now_ns: u64) {
        let elapsed = now_ns.saturating_sub(self.counted_at_ns);
        let whole = elapsed / Self::NS_PER_TOKEN;
        self.tokens = self.tokens.saturating_add(whole);
        if self.tokens >= Self::CAPACITY {
            self.tokens = Self::CAPACITY;
            self.counted_at_ns = self.counted_at_ns.max(now_ns);
        } else {
            self.counted_at_ns += whole * Self::NS_PER_TOKEN;
        }
    }

    /// The tokens there are at `now_ns`.
    pub fn available(&mut self, now_ns: u64) -> u64 {
        self.refill(now_ns);
        self.tokens
    }

    /// None when `count` tokens (at most the capacity) are there at `now_ns`; else the
    /// time they will be.
    pub fn ready_at(&mut self, count: u64, now_ns: u64) -> Option<u64> {
        let count = count.min(Self::CAPACITY);
        self.refill(now_ns);
        if self.tokens >= count {
            return None;
        }
        Some(self.counted_at_ns.saturating_add((count - self.tokens) * Self::NS_PER_TOKEN))
    }

    /// Takes `count` tokens (fewer if there are fewer).
    pub fn take(&mut self, count: u64, now_ns: u64) {
        self.refill(now_ns);
        self.tokens = self.tokens.saturating_sub(count);
    }
}

/// What blacklist lookup the device needs (the service reads xenstore).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlacklistQuery {
    pub product: u16,
    pub build: u32,
    /// `/mh/driver-blacklist/<product name>/<build>`
    pub path: String,
}

/// Where the blacklist answer stands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
enum Blacklist {
    /// no product and build given yet (or the product has no name): not blacklisted
    #[default]
    Unknown,
    /// asked; magic reads wait
    Asked,
    Answered {
        blacklisted: bool,
    },
}

/// What the machine must do after a write to the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlatformRequest {
    /// remove these devices ([`unplug`] bits) from the buses
    Unplug(u16),
}

/// Why an ioreq must wait before the device can answer it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlatformWait {
    /// the log bucket has the tokens at this time (ns)
    Tokens { until_ns: u64 },
    /// the blacklist answer has not come back from xenstore
    Blacklist,
}

/// The Xen platform device.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct XenPlatform {
    config: ConfigSpace,
    flags: u8,
    product: Option<u16>,
    build: Option<u32>,
    blacklist: Blacklist,
    /// the unplug bits the guest has written so far
    unplugged: u16,
    log_line: Vec<u8>,
    bucket: TokenBucket,
    /// a lookup for the service to take (not saved: a restore asks again)
    #[serde(skip)]
    query: Option<BlacklistQuery>,
}

impl XenPlatform {
    /// The device at power-on, its log bucket full at `now_ns`.
    pub fn new(now_ns: u64) -> XenPlatform {
        let mut config =
            ConfigSpace::new(VENDOR_XENSOURCE, DEVICE_PLATFORM, REVISION, CLASS_OTHER, SUBCLASS_OTHER, 0, 0);
        config.set_u16(SUBSYSTEM_VENDOR_ID, VENDOR_XENSOURCE);
        config.set_u16(SUBSYSTEM_ID, DEVICE_PLATFORM);
        config.set_u8(crate::pci::INTERRUPT_PIN, 1);
        config.set_bar(IO_BAR, BarSpec { kind: BarKind::Io, size_bytes: IO_BAR_BYTES });
        config
            .set_bar(MMIO_BAR, BarSpec { kind: BarKind::Memory32 { prefetchable: true }, size_bytes: MMIO_BAR_BYTES });
        config.set_u16(crate::pci::COMMAND, crate::pci::COMMAND_IO | crate::pci::COMMAND_MEMORY);
        XenPlatform {
            config,
            flags: 0,
            product: None,
            build: None,
            blacklist: Blacklist::Unknown,
            unplugged: 0,
            log_line: Vec::new(),
            bucket: TokenBucket::new(now_ns),
            query: None,
        }
    }

    pub fn config(&self) -> &ConfigSpace {
        &self.config
    }

    pub fn config_read(&self, reg: u16, size: u8) -> u32 {
        self.config.read(reg, size)
    }

    pub fn config_write(&mut self, reg: u16, size: u8, value: u32) {
        self.config.write(reg, size, value);
    }

    /// The unplug bits the guest has written so far.
    pub fn unplugged(&self) -> u16 {
        self.unplugged
    }

    /// Whether the driver's product and build were found blacklisted.
    pub fn is_blacklisted(&self) -> bool {
        self.blacklist == Blacklist::Answered { blacklisted: true }
    }

    /// The product and build numbers the driver wrote, if it did.
    pub fn driver(&self) -> (Option<u16>, Option<u32>) {
        (self.product, self.build)
    }

    /// The blacklist lookup to carry out, if one is waiting.
    pub fn take_blacklist_query(&mut self) -> Option<BlacklistQuery> {
        self.query.take()
    }

    /// Whether a blacklist lookup waits to be taken.
    pub fn has_blacklist_query(&self) -> bool {
        self.query.is_some()
    }

    /// The answer of the lookup for `product` and `build`: whether the node exists (a
    /// failed read is "not blacklisted", as in qemu-xen-traditional). An answer for
    /// another product or build than the driver's latest is dropped.
    pub fn answer_blacklist(&mut self, product: u16, build: u32, blacklisted: bool) {
        if self.blacklist == Blacklist::Asked && self.product == Some(product) && self.build == Some(build) {
            if blacklisted {
                log::info!(
                    "platform: PV driver product {:?} build {:?} is blacklisted: its magic reads {MAGIC_BLACKLISTED:#x}",
                    self.product,
                    self.build
                );
            }
            self.blacklist = Blacklist::Answered { blacklisted };
        }
    }

    /// Whether a port write of `size` bytes at `port` (fixed, or `bar0` + offset when
    /// BAR0 decodes at `bar0`) is a log character.
    pub fn is_log_write(port: u16, size: u8, value: u32, bar0: Option<u16>) -> bool {
        if port == PORT_PRODUCT && size == 1 {
            return true;
        }
        matches!(bar0, Some(base) if port.wrapping_sub(base) == 8 && size == 1 && !matches!(value & 0xff, 1 | 2))
    }

    /// Before the machine answers a port access: whether it must wait, and for what.
    /// `bytes` is how many elements a `rep` carries (1 otherwise); `value` the written
    /// value of a plain write.
    pub fn ioreq_wait(
        &mut self,
        port: u16,
        size: u8,
        write: Option<u32>,
        bytes: u64,
        bar0: Option<u16>,
        now_ns: u64,
    ) -> Option<PlatformWait> {
        match write {
            None if port == PORT_MAGIC && size == 2 && self.blacklist == Blacklist::Asked => {
                Some(PlatformWait::Blacklist)
            }
            Some(value) if Self::is_log_write(port, size, value, bar0) => {
                self.bucket.ready_at(bytes, now_ns).map(|until_ns| PlatformWait::Tokens { until_ns })
            }
            _ => None,
        }
    }

    /// A read of the fixed ports 0x10-0x1f.
    pub fn fixed_read(&self, port: u16, size: u8) -> u32 {
        match (port, size) {
            (PORT_MAGIC, 2) => u32::from(if self.is_blacklisted() { MAGIC_BLACKLISTED } else { MAGIC }),
            (PORT_MAGIC, 1) => u32::from(self.flags),
            (PORT_PRODUCT, 1) => u32::from(PROTOCOL_VERSION),
            _ => all_ones(size),
        }
    }

    /// A write of the fixed ports 0x10-0x1f at `now_ns`.
    pub fn fixed_write(&mut self, port: u16, size: u8, value: u32, now_ns: u64) -> Option<PlatformRequest> {
        match (port, size) {
            (PORT_MAGIC, 2) => return self.unplug(value as u16),
            (PORT_MAGIC, 4) => self.set_build(value),
            (PORT_MAGIC, 1) => self.set_flags(value as u8),
            (PORT_PRODUCT, 2) => self.set_product(value as u16),
            (PORT_PRODUCT, 1) => self.log_byte(value as u8, now_ns),
            _ => log::trace!("platform: write of {size} byte(s) {value:#x} to port {port:#x} ignored"),
        }
        None
    }

    /// A read at `offset` of BAR0.
    pub fn io_bar_read(&self, offset: u64, size: u8) -> u32 {
        match (offset, size) {
            (0, 1) => u32::from(self.flags),
            _ => all_ones(size),
        }
    }

    /// A write at `offset` of BAR0 at `now_ns`.
    pub fn io_bar_write(&mut self, offset: u64, size: u8, value: u32, now_ns: u64) -> Option<PlatformRequest> {
        match (offset, size, value & 0xff) {
            (0, 1, flags) => self.set_flags(flags as u8),
            (4, 1, 1) => return self.unplug(unplug::ALL_IDE_DISKS | unplug::ALL_NICS),
            (8, 1, 1) => return self.unplug(unplug::ALL_IDE_DISKS),
            (8, 1, 2) => return self.unplug(unplug::ALL_NICS),
            (8, 1, byte) => self.log_byte(byte as u8, now_ns),
            _ => log::trace!("platform: BAR0 write of {size} byte(s) {value:#x} at {offset:#x} ignored"),
        }
        None
    }

    fn unplug(&mut self, mask: u16) -> Option<PlatformRequest> {
        log::info!(
            "platform: the guest unplugs {mask:#06x} (disks {}, NICs {}, aux disks {})",
            mask & unplug::ALL_IDE_DISKS != 0,
            mask & unplug::ALL_NICS != 0,
            mask & unplug::AUX_IDE_DISKS != 0
        );
        self.unplugged |= mask;
        Some(PlatformRequest::Unplug(mask))
    }

    fn set_flags(&mut self, flags: u8) {
        if flags & FLAG_ROM_LOCK != self.flags & FLAG_ROM_LOCK {
            log::debug!("platform: ROM lock {} (not carried out)", flags & FLAG_ROM_LOCK != 0);
        }
        self.flags = flags & FLAG_ROM_LOCK;
    }

    fn set_product(&mut self, product: u16) {
        match product_name(product) {
            Some(name) => log::info!("platform: PV drivers of product {product} ({name}) in the guest"),
            None => log::info!("platform: PV drivers of unknown product {product} in the guest"),
        }
        self.product = Some(product);
        self.build = None;
        self.blacklist = Blacklist::Unknown;
        self.query = None;
    }

    fn set_build(&mut self, build: u32) {
        let Some(product) = self.product else {
            log::info!("platform: the guest's drivers gave build {build} before their product; ignored");
            return;
        };
        log::info!("platform: PV driver build {build}");
        self.build = Some(build);
        match product_name(product) {
            Some(name) => {
                let path = alloc::format!("/mh/driver-blacklist/{name}/{build}");
                self.query = Some(BlacklistQuery { product, build, path });
                self.blacklist = Blacklist::Asked;
            }
            None => self.blacklist = Blacklist::Answered { blacklisted: false },
        }
    }

    fn log_byte(&mut self, byte: u8, now_ns: u64) {
        self.bucket.take(1, now_ns);
        if byte == b'\n' || self.log_line.len() >= LOG_LINE_BYTES - 1 {
            if byte != b'\n' {
                self.log_line.push(byte);
            }
            self.flush_log();
        } else {
            self.log_line.push(byte);
        }
    }

    fn flush_log(&mut self) {
        let line: String = self.log_line.iter().flat_map(|&b| core::ascii::escape_default(b)).map(char::from).collect();
        log::info!("guest: {line}");
        self.log_line.clear();
    }

    /// The tokens the log bucket has at `now_ns` (tests, stats).
    pub fn log_tokens(&mut self, now_ns: u64) -> u64 {
        self.bucket.available(now_ns)
    }
}

/// Save/restore ([`crate::snapshot`]): section [`SectionId::XenPlatform`](crate::snapshot::SectionId::XenPlatform).
impl XenPlatform {
    /// Version 1: config space, flags, product, build, blacklist answer, unplugged bits,
    /// the log line and the bucket.
    pub const STATE_VERSION: u16 = 1;

    /// Takes a saved device (decoded from its section) at the restoring clock: the
    /// config space must be this function's, the log line at most [`LOG_LINE_BYTES`];
    /// the bucket's time moves to this clock; a lookup that was in flight is asked again.
    pub fn load_state(&mut self, saved: XenPlatform, time: TimeBase) -> Result<(), &'static str> {
        if saved.log_line.len() >= LOG_LINE_BYTES {
            return Err("its log line is longer than the device keeps");
        }
        if saved.bucket.tokens > TokenBucket::CAPACITY {
            return Err("its log bucket holds more than it can");
        }
        let mut config = self.config.clone();
        config.load_state(&saved.config)?;
        let query = match (saved.blacklist, saved.product.and_then(product_name), saved.build) {
            (Blacklist::Asked, Some(name), Some(build)) => Some(BlacklistQuery {
                product: saved.product.unwrap_or_default(),
                build,
                path: alloc::format!("/mh/driver-blacklist/{name}/{build}"),
            }),
            (Blacklist::Asked, _, _) => return Err("a blacklist lookup without a product name and build"),
            _ => None,
        };
        *self = XenPlatform {
            config,
            bucket: TokenBucket { tokens: saved.bucket.tokens, counted_at_ns: time.rebase(saved.bucket.counted_at_ns) },
            query,
            ..saved
        };
        Ok(())
    }
}

fn all_ones(size: u8) -> u32 {
    match size {
        1 => 0xff,
        2 => 0xffff,
        _ => u32::MAX,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND_NS: u64 = 1_000_000_000;

    #[test]
    fn bucket_starts_full_refills_at_256_bytes_a_second_and_caps() {
        let mut bucket = TokenBucket::new(5 * SECOND_NS);
        assert_eq!(bucket.available(5 * SECOND_NS), 128 * 1024);
        assert_eq!(bucket.ready_at(128 * 1024, 5 * SECOND_NS), None, "a full bucket has 128 KiB");
        bucket.take(128 * 1024, 5 * SECOND_NS);
        assert_eq!(bucket.available(5 * SECOND_NS), 0);
        // 1 s later: 256 tokens; 2 KiB more need 8 s in all.
        assert_eq!(bucket.available(6 * SECOND_NS), 256);
        assert_eq!(bucket.ready_at(2048, 6 * SECOND_NS), Some(13 * SECOND_NS));
        assert_eq!(bucket.ready_at(2048, 13 * SECOND_NS), None);
        // Fractions of a token are not lost: 1.5 s then 0.5 s is 2 s of tokens.
        let mut bucket = TokenBucket::new(0);
        bucket.take(TokenBucket::CAPACITY, 0);
        assert_eq!(bucket.available(SECOND_NS + SECOND_NS / 2), 384);
        assert_eq!(bucket.available(2 * SECOND_NS), 512);
        // It never holds more than its capacity, however long it waits.
        assert_eq!(bucket.available(u64::MAX), TokenBucket::CAPACITY);
        // More than the capacity waits for a full bucket, not forever.
        let mut bucket = TokenBucket::new(0);
        bucket.take(1, 0);
        assert!(bucket.ready_at(u64::MAX, 0).is_some_and(|t| t <= SECOND_NS / 256 + 1));
    }

    #[test]
    fn config_space_is_qemus_xen_platform() {
        let mut platform = XenPlatform::new(0);
        assert_eq!(platform.config_read(0x00, 4), 0x0001_5853);
        assert_eq!(platform.config_read(0x08, 4), 0xff80_0001, "class ff/80, revision 1");
        assert_eq!(platform.config_read(0x2c, 4), 0x0001_5853, "subsystem 5853:0001");
        assert_eq!(platform.config_read(0x3d, 1), 1, "INTA");
        assert_eq!(platform.config_read(0x04, 2), 0x0003, "I/O and memory decoding preset");
        platform.config_write(0x10, 4, !0);
        assert_eq!(platform.config_read(0x10, 4), 0xffff_ff01, "BAR0: 256 I/O ports");
        platform.config_write(0x14, 4, !0);
        assert_eq!(platform.config_read(0x14, 4), 0xff00_0008, "BAR1: 16 MiB prefetchable");
        for reg in [0x18, 0x1c, 0x20, 0x24, 0x30] {
            platform.config_write(reg, 4, !0);
            assert_eq!(platform.config_read(reg, 4), 0, "no BAR at {reg:#x}");
        }
    }

    #[test]
    fn fixed_ports_as_the_unplug_protocol_has_them() {
        let mut platform = XenPlatform::new(0);
        assert_eq!(platform.fixed_read(0x10, 2), 0x49d2);
        assert_eq!(platform.fixed_read(0x12, 1), 1, "protocol version");
        assert_eq!(platform.fixed_read(0x10, 1), 0, "flags");
        assert_eq!(platform.fixed_read(0x10, 4), 0xffff_ffff);
        assert_eq!(platform.fixed_read(0x11, 1), 0xff);
        assert_eq!(platform.fixed_read(0x12, 2), 0xffff);
        assert_eq!(platform.fixed_read(0x1f, 1), 0xff);
        platform.fixed_write(0x10, 1, 0xff, 0);
        assert_eq!(platform.fixed_read(0x10, 1), 1, "only the ROM lock bit is kept");
        // A build before a product is ignored (qemu-xen-traditional's rule).
        platform.fixed_write(0x10, 4, 7, 0);
        assert_eq!(platform.take_blacklist_query(), None);
        assert_eq!(platform.driver(), (None, None));
        // An unknown product cannot be blacklisted: no lookup, the magic stays.
        platform.fixed_write(0x12, 2, 0x1234, 0);
        platform.fixed_write(0x10, 4, 7, 0);
        assert_eq!(platform.take_blacklist_query(), None);
        assert_eq!(platform.ioreq_wait(0x10, 2, None, 1, None, 0), None);
        assert_eq!(platform.fixed_read(0x10, 2), 0x49d2);
        // The unplug mask is a word write; other sizes are not.
        assert_eq!(platform.fixed_write(0x10, 2, 0x0003, 0), Some(PlatformRequest::Unplug(3)));
        assert_eq!(platform.unplugged(), 3);
        assert_eq!(platform.fixed_write(0x11, 2, 0x0003, 0), None);
    }

    #[test]
    fn every_registered_product_has_its_blacklist_directory() {
        assert_eq!(product_name(1), Some("xensource-windows"));
        assert_eq!(product_name(2), Some("gplpv-windows"));
        assert_eq!(product_name(3), Some("linux"));
        assert_eq!(product_name(0xffff), Some("experimental"));
        assert_eq!(product_name(0), None);
        assert_eq!(product_name(4), None);
    }

    #[test]
    fn blacklist_answer_for_another_build_is_dropped() {
        let mut platform = XenPlatform::new(0);
        platform.fixed_write(0x12, 2, 3, 0);
        platform.fixed_write(0x10, 4, 1, 0);
        let first = platform.take_blacklist_query().unwrap();
        assert_eq!(first.path, "/mh/driver-blacklist/linux/1");
        platform.fixed_write(0x10, 4, 2, 0);
        let second = platform.take_blacklist_query().unwrap();
        platform.answer_blacklist(first.product, first.build, true);
        assert_eq!(platform.ioreq_wait(0x10, 2, None, 1, None, 0), Some(PlatformWait::Blacklist));
        platform.answer_blacklist(second.product, second.build, false);
        assert_eq!(platform.ioreq_wait(0x10, 2, None, 1, None, 0), None);
        assert_eq!(platform.fixed_read(0x10, 2), 0x49d2);
    }

    #[test]
    fn io_bar_flags_unplug_and_log() {
        let mut platform = XenPlatform::new(0);
        assert_eq!(platform.io_bar_read(0, 1), 0);
        assert_eq!(platform.io_bar_read(4, 1), 0xff);
        platform.io_bar_write(0, 1, 1, 0);
        assert_eq!(platform.io_bar_read(0, 1), 1);
        assert_eq!(platform.io_bar_write(4, 1, 1, 0), Some(PlatformRequest::Unplug(3)), "old SUSE: everything");
        assert_eq!(platform.io_bar_write(8, 1, 1, 0), Some(PlatformRequest::Unplug(1)));
        assert_eq!(platform.io_bar_write(8, 1, 2, 0), Some(PlatformRequest::Unplug(2)));
        assert_eq!(platform.io_bar_write(8, 1, u32::from(b'x'), 0), None);
        assert_eq!(platform.log_tokens(0), TokenBucket::CAPACITY - 1, "a log character costs a token");
        // Waits: BAR0 offset 8 logs unless the byte is 1 or 2.
        let bar0 = Some(0xc000);
        platform.bucket.take(TokenBucket::CAPACITY, 0);
        assert!(platform.ioreq_wait(0xc008, 1, Some(u32::from(b'x')), 1, bar0, 0).is_some());
        assert_eq!(platform.ioreq_wait(0xc008, 1, Some(1), 1, bar0, 0), None);
        assert_eq!(platform.ioreq_wait(0xc000, 1, Some(0), 1, bar0, 0), None);
    }

    #[test]
    fn log_lines_are_bounded() {
        let mut platform = XenPlatform::new(0);
        for _ in 0..3 * LOG_LINE_BYTES {
            platform.fixed_write(PORT_PRODUCT, 1, u32::from(b'a'), 0);
            assert!(platform.log_line.len() < LOG_LINE_BYTES);
        }
        platform.fixed_write(PORT_PRODUCT, 1, u32::from(b'\n'), 0);
        assert!(platform.log_line.is_empty());
    }
}
