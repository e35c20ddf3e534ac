//! The devices' saved state: the payload of a [`crate::state_file`], as sections.
//!
//! A payload is a sequence of sections, each a header then a body:
//!
//! | bytes | what |
//! |---|---|
//! | 2 | section id ([`SectionId`], stable: an id is never reused for another device) |
//! | 2 | instance (the NIC's index on the machine; 0 for one-of-a-kind devices) |
//! | 2 | the body's version (the device's own format version) |
//! | 4 | the body's length in bytes |
//! | n | the body: the device's state as postcard encodes it (serde) |
//!
//! all little-endian. The first section is the [`SectionId::Layout`]: which drives,
//! which NICs, whether COM1 exists, so that a restore into a machine built from a
//! different argv is a clear error before any device is touched. A device's state
//! struct is its serde form: a change to what a device keeps must bump its section's
//! version, and a reader refuses a version it does not know (newer or older) with an
//! error that names the device and both versions. The loader checks what a device
//! relies on (positions inside buffers, queue lengths) before it takes a state.
//!
//! Why serde + postcard: the device structs derive their encoding, so nothing
//! field-by-field is written by hand; postcard is compact (varints) and `no_std`.

use alloc::string::{String, ToString};
use alloc::vec::Vec;

use serde::Serialize;
use serde::de::DeserializeOwned;

/// The sections a payload may hold. The numbers are part of the format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u16)]
pub enum SectionId {
    /// the machine's layout (drives, NICs, COM1), checked against the restoring argv
    Layout = 1,
    /// the machine's own registers (the config-address latch, the time of the last request)
    Machine = 2,
    /// i440FX config space (00:00.0)
    HostBridge = 3,
    /// PIIX3 ISA bridge config space (00:01.0)
    Piix3Isa = 4,
    /// PIIX3 IDE function config space (00:01.1)
    IdeFunction = 5,
    /// PIIX3 reset control (0xcf9)
    ResetControl = 6,
    Cmos = 7,
    I8042 = 8,
    AcpiPm = 9,
    /// COM1
    Uart = 10,
    /// both IDE channels with their drives (registers, the command in progress, the
    /// CD's tray, lock, medium and sense)
    Ide = 11,
    Rtl8139 = 12,
    E1000 = 13,
    /// the Xen platform device (00:02.0): unplugged devices, driver product and build,
    /// blacklist answer, log line and token bucket
    XenPlatform = 14,
}

impl SectionId {
    pub fn from_u16(value: u16) -> Option<SectionId> {
        use SectionId::*;
        [
            Layout,
            Machine,
            HostBridge,
            Piix3Isa,
            IdeFunction,
            ResetControl,
            Cmos,
            I8042,
            AcpiPm,
            Uart,
            Ide,
            Rtl8139,
            E1000,
            XenPlatform,
        ]
        .into_iter()
        .find(|id| *id as u16 == value)
    }

    /// The device's name in errors and logs.
    pub fn name(self) -> &'static str {
        match self {
            SectionId::Layout => "machine layout",
            SectionId::Machine => "machine",
            SectionId::HostBridge => "i440FX host bridge",
            SectionId::Piix3Isa => "PIIX3 ISA bridge",
            SectionId::IdeFunction => "PIIX3 IDE function",
            SectionId::ResetControl => "PIIX3 reset control",
            SectionId::Cmos => "CMOS",
            SectionId::I8042 => "8042 keyboard controller",
            SectionId::AcpiPm => "ACPI PM",
            SectionId::Uart => "COM1 16550A",
            SectionId::Ide => "IDE",
            SectionId::Rtl8139 => "RTL8139 NIC",
            SectionId::E1000 => "e1000 NIC",
            SectionId::XenPlatform => "Xen platform device",
        }
    }
}

/// Bytes of a section header.
pub const SECTION_HEADER_BYTES: usize = 10;

/// Why a payload does not restore into this machine.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    #[error(
        "the saved state has no device state (saved by a device model without device state, or by one without a machine)"
    )]
    Empty,
    #[error("the saved state stops inside a section at byte {offset} of {len_bytes}")]
    Truncated { offset: usize, len_bytes: usize },
    #[error("the saved state holds a section of id {id} (version {version}) that this device model does not know")]
    UnknownSection { id: u16, version: u16 },
    #[error("the saved {device} state is version {saved}; this device model reads version {supported}")]
    Version { device: &'static str, saved: u16, supported: u16 },
    #[error("the saved {device} state is corrupt: {reason}")]
    Corrupt { device: &'static str, reason: String },
    #[error("the saved {device} state is not one this device model can take: {what}")]
    Invalid { device: &'static str, what: String },
    #[error("the saved state has no {device} section")]
    Missing { device: &'static str },
    #[error("the saved state has {device} (instance {instance}) twice")]
    Duplicate { device: &'static str, instance: u16 },
    #[error("the saved state's first section is {0}, not the machine layout")]
    NoLayoutFirst(&'static str),
    #[error("the saved machine does not match this one: {0}")]
    LayoutMismatch(String),
}

impl SnapshotError {
    /// A state the device cannot take (`what` says why).
    pub fn invalid(device: SectionId, what: impl ToString) -> SnapshotError {
        SnapshotError::Invalid { device: device.name(), what: what.to_string() }
    }
}

/// The saving clock and the restoring one, to move a device's timers across: a time
/// `t` of the saving clock becomes `now_ns + (t - saved_now_ns)` (a deadline keeps the
/// time it had left; a time in the past stays that far in the past, at least 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimeBase {
    pub saved_now_ns: u64,
    pub now_ns: u64,
}

impl TimeBase {
    pub fn rebase(self, t_ns: u64) -> u64 {
        if t_ns >= self.saved_now_ns {
            self.now_ns.saturating_add(t_ns - self.saved_now_ns)
        } else {
            self.now_ns.saturating_sub(self.saved_now_ns - t_ns)
        }
    }
}

/// A device's state as a section body.
pub fn encode<T: Serialize + ?Sized>(state: &T) -> Vec<u8> {
    // Serializing plain structs into a Vec cannot fail (no maps with odd keys, no
    // sequences without a length); an empty body would be refused on restore.
    postcard::to_allocvec(state).unwrap_or_default()
}

/// Builds a payload section by section.
#[derive(Debug, Default)]
pub struct Writer {
    out: Vec<u8>,
}

impl Writer {
    pub fn new() -> Writer {
        Writer::default()
    }

    /// Appends `state` as section `id`/`instance` of `version`.
    pub fn section<T: Serialize + ?Sized>(&mut self, id: SectionId, instance: u16, version: u16, state: &T) {
        self.raw_section(id as u16, instance, version, &encode(state));
    }

    /// Appends a section with a body already encoded (tests write odd ones).
    pub fn raw_section(&mut self, id: u16, instance: u16, version: u16, body: &[u8]) {
        self.out.extend_from_slice(&id.to_le_bytes());
        self.out.extend_from_slice(&instance.to_le_bytes());
        self.out.extend_from_slice(&version.to_le_bytes());
        self.out.extend_from_slice(&(body.len() as u32).to_le_bytes());
        self.out.extend_from_slice(body);
    }

    pub fn finish(self) -> Vec<u8> {
        self.out
    }
}

/// One section of a payload, borrowed from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Section<'a> {
    pub id: SectionId,
    pub instance: u16,
    pub version: u16,
    pub body: &'a [u8],
}

impl Section<'_> {
    /// The body as `T`, if the section is `supported` version and the body is
    /// exactly one `T`.
    pub fn decode<T: DeserializeOwned>(&self, supported: u16) -> Result<T, SnapshotError> {
        let device = self.id.name();
        if self.version != supported {
            return Err(SnapshotError::Version { device, saved: self.version, supported });
        }
        let (value, rest) = postcard::take_from_bytes::<T>(self.body)
            .map_err(|e| SnapshotError::Corrupt { device, reason: e.to_string() })?;
        if !rest.is_empty() {
            return Err(SnapshotError::Corrupt {
                device,
                reason: alloc::format!("{} bytes after its end", rest.len()),
            });
        }
        Ok(value)
    }
}

/// Splits a payload into its sections (nothing decoded yet): every header and length
/// checked, an unknown id refused, a duplicate refused, the layout first.
pub fn sections(payload: &[u8]) -> Result<Vec<Section<'_>>, SnapshotError> {
    if payload.is_empty() {
        return Err(SnapshotError::Empty);
    }
    let mut sections: Vec<Section<'_>> = Vec::new();
    let mut offset = 0;
    while offset < payload.len() {
        let truncated = SnapshotError::Truncated { offset, len_bytes: payload.len() };
        let header = payload.get(offset..offset + SECTION_HEADER_BYTES).ok_or(truncated.clone())?;
        let word = |at: usize| u16::from_le_bytes([header[at], header[at + 1]]);
        let (raw_id, instance, version) = (word(0), word(2), word(4));
        let len_bytes = u32::from_le_bytes([header[6], header[7], header[8], header[9]]) as usize;
        let start = offset + SECTION_HEADER_BYTES;
        let body = start.checked_add(len_bytes).and_then(|end| payload.get(start..end)).ok_or(truncated)?;
        let id = SectionId::from_u16(raw_id).ok_or(SnapshotError::UnknownSection { id: raw_id, version })?;
        if sections.iter().any(|s| s.id == id && s.instance == instance) {
            return Err(SnapshotError::Duplicate { device: id.name(), instance });
        }
        if sections.is_empty() && id != SectionId::Layout {
            return Err(SnapshotError::NoLayoutFirst(id.name()));
        }
        sections.push(Section { id, instance, version, body });
        offset = start + len_bytes;
    }
    Ok(sections)
}

/// The section `id`/`instance` of `sections`.
pub fn find<'a>(sections: &[Section<'a>], id: SectionId, instance: u16) -> Result<Section<'a>, SnapshotError> {
    sections
        .iter()
        .find(|s| s.id == id && s.instance == instance)
        .copied()
        .ok_or(SnapshotError::Missing { device: id.name() })
}

/// serde for arrays longer than serde's own 32 (config spaces, NVRAM, register
/// files), as a tuple of N elements: `#[serde(with = "crate::snapshot::big_array")]`.
pub mod big_array {
    use core::fmt;
    use core::marker::PhantomData;

    use serde::de::{Deserialize, Deserializer, Error, SeqAccess, Visitor};
    use serde::ser::{Serialize, SerializeTuple, Serializer};

    pub fn serialize<S: Serializer, T: Serialize, const N: usize>(array: &[T; N], s: S) -> Result<S::Ok, S::Error> {
        let mut tuple = s.serialize_tuple(N)?;
        for element in array {
            tuple.serialize_element(element)?;
        }
        tuple.end()
    }

    struct ArrayVisitor<T, const N: usize>(PhantomData<T>);

    impl<'de, T: Deserialize<'de> + Copy + Default, const N: usize> Visitor<'de> for ArrayVisitor<T, N> {
        type Value = [T; N];

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "an array of {N} elements")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<[T; N], A::Error> {
            let mut array = [T::default(); N];
            for (i, slot) in array.iter_mut().enumerate() {
                *slot = seq.next_element()?.ok_or_else(|| A::Error::invalid_length(i, &self))?;
            }
            Ok(array)
        }
    }

    pub fn deserialize<'de, D, T, const N: usize>(d: D) -> Result<[T; N], D::Error>
    where
        D: Deserializer<'de>,
        T: Deserialize<'de> + Copy + Default,
    {
        d.deserialize_tuple(N, ArrayVisitor::<T, N>(PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Regs {
        a: u8,
        #[serde(with = "big_array")]
        big: [u16; 40],
    }

    fn payload(sections: &[(u16, u16, u16, &[u8])]) -> Vec<u8> {
        let mut writer = Writer::new();
        for (id, instance, version, body) in sections {
            writer.raw_section(*id, *instance, *version, body);
        }
        writer.finish()
    }

    #[test]
    fn sections_round_trip_with_big_arrays() {
        let regs = Regs { a: 7, big: core::array::from_fn(|i| i as u16 * 1000) };
        let mut writer = Writer::new();
        writer.section(SectionId::Layout, 0, 1, &());
        writer.section(SectionId::Cmos, 0, 3, &regs);
        let bytes = writer.finish();
        let parsed = sections(&bytes).unwrap();
        assert_eq!(parsed.len(), 2);
        let cmos = find(&parsed, SectionId::Cmos, 0).unwrap();
        assert_eq!(cmos.decode::<Regs>(3).unwrap(), regs);
        assert_eq!(cmos.decode::<Regs>(2), Err(SnapshotError::Version { device: "CMOS", saved: 3, supported: 2 }));
        assert_eq!(find(&parsed, SectionId::Uart, 0), Err(SnapshotError::Missing { device: "COM1 16550A" }));
    }

    #[test]
    fn bad_payloads_are_typed_errors() {
        assert_eq!(sections(&[]), Err(SnapshotError::Empty));
        let unknown = payload(&[(1, 0, 1, &[]), (999, 0, 4, &[1, 2])]);
        assert_eq!(sections(&unknown), Err(SnapshotError::UnknownSection { id: 999, version: 4 }));
        let not_first = payload(&[(7, 0, 1, &[])]);
        assert_eq!(sections(&not_first), Err(SnapshotError::NoLayoutFirst("CMOS")));
        let twice = payload(&[(1, 0, 1, &[]), (12, 1, 1, &[]), (12, 1, 1, &[])]);
        assert_eq!(sections(&twice), Err(SnapshotError::Duplicate { device: "RTL8139 NIC", instance: 1 }));
        let whole = payload(&[(1, 0, 1, &[]), (7, 0, 1, &[1, 2, 3, 4])]);
        // Every cut but the one between the two sections.
        for cut in (1..whole.len()).filter(|cut| *cut != SECTION_HEADER_BYTES) {
            assert!(matches!(sections(&whole[..cut]), Err(SnapshotError::Truncated { .. })), "cut at {cut}");
        }
        // A body longer than its type, or shorter: corrupt.
        let long = payload(&[(1, 0, 1, &[]), (7, 0, 1, &[5, 6])]);
        let parsed = sections(&long).unwrap();
        let error = parsed[1].decode::<u8>(1).unwrap_err();
        assert!(error.to_string().contains("CMOS state is corrupt: 1 bytes after its end"), "{error}");
        assert!(matches!(parsed[1].decode::<Regs>(1), Err(SnapshotError::Corrupt { device: "CMOS", .. })));
    }
}
