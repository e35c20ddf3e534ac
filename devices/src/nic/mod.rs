//! Emulated PCI network cards, as synchronous state machines: what the guest's driver
//! sees through the card's BARs, and frames in and out for the glue to carry between
//! the card and the stub domain's netfront (the guest's vif, same MAC).
//!
//! A card reaches guest memory only through [`GuestMemory`] (descriptor rings and
//! buffers, by DMA), only while the guest has enabled bus mastering in its PCI command
//! register, and never keeps more than a bounded number of frames: a guest that
//! transmits faster than the glue drains, or a wire that floods the guest, costs
//! dropped frames (counted in [`NicStats`]), never memory. Malformed descriptors (lengths
//! beyond a buffer, addresses outside guest RAM, rings that never end) end that
//! operation with the card's error status and a bounded log line.
//!
//! Time is an argument (`now_ns`, a monotonic clock in nanoseconds) where a card has
//! timers (interrupt moderation); [`Nic::next_deadline_ns`] tells the glue when to call
//! [`Nic::tick`].

pub mod e1000;
pub mod rtl8139;

use alloc::vec::Vec;

use xen_seams::hvm::GuestMemory;

use crate::pci::ConfigSpace;
use crate::snapshot::{Section, SectionId, SnapshotError, TimeBase};

/// Frames a card holds for the glue at most, transmitted but not yet taken.
pub const MAX_QUEUED_TX_FRAMES: usize = 64;

/// The largest Ethernet frame either way (without FCS), a VLAN tag included.
pub const MAX_FRAME_BYTES: usize = 1518;

/// What became of a frame offered to the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RxOutcome {
    /// written into the guest's receive ring
    Delivered,
    /// not for this card (address filter) or not accepted while the receiver is off
    Filtered,
    /// the guest's receive ring has no room: not written (the card signals an overflow
    /// where it has one; the glue keeps the frame and offers it again)
    NoBuffer,
    /// the ring or buffer address is outside guest RAM (or bus mastering is off): dropped
    DmaError,
}

/// Counters for the log and the tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NicStats {
    pub tx_frames: u64,
    /// frames the guest sent while [`MAX_QUEUED_TX_FRAMES`] were waiting for the glue
    pub tx_dropped: u64,
    pub rx_frames: u64,
    pub rx_filtered: u64,
    /// frames offered while the receive ring was full (the glue offers each again, so
    /// one frame may count more than once)
    pub rx_no_buffer: u64,
    /// descriptor or buffer accesses that failed (bad address, bad length)
    pub dma_errors: u64,
}

/// An emulated PCI NIC, as the machine and the service drive it.
pub trait Nic {
    /// Config space (vendor, device, BARs, interrupt pin) for the machine's PCI bus and
    /// BAR decoding.
    fn config(&self) -> &ConfigSpace;
    fn config_read(&self, reg: u16, size: u8) -> u32;
    fn config_write(&mut self, reg: u16, size: u8, value: u32);

    /// A register read at `offset` within BAR `bar` (size 1, 2 or 4).
    fn read(&mut self, bar: usize, offset: u64, size: u8, mem: &dyn GuestMemory, now_ns: u64) -> u32;
    /// A register write; may start transmission (DMA from guest memory).
    fn write(&mut self, bar: usize, offset: u64, size: u8, value: u32, mem: &dyn GuestMemory, now_ns: u64);

    /// The level of the card's INTA# line.
    fn irq_level(&self) -> bool;

    /// The oldest frame the guest transmitted and the glue has not taken yet.
    fn take_tx_frame(&mut self) -> Option<Vec<u8>>;

    /// Offers a frame from the wire to the guest.
    fn receive(&mut self, frame: &[u8], mem: &dyn GuestMemory, now_ns: u64) -> RxOutcome;

    /// Whether the guest has room for a frame now (the glue keeps frames otherwise).
    fn can_receive(&self) -> bool;

    /// The link as the guest's driver sees it (down while the vif is missing or its
    /// backend closed).
    fn set_link_up(&mut self, up: bool, now_ns: u64);

    /// When the card next needs [`tick`](Self::tick) (a moderation timer), if ever.
    fn next_deadline_ns(&self) -> Option<u64>;
    fn tick(&mut self, now_ns: u64);

    fn stats(&self) -> NicStats;

    /// A machine reset: the card back to its power-on state (its MAC kept).
    fn reset(&mut self);

    /// The card's state for a save ([`crate::snapshot`]): its section id, the section's
    /// version and the body. Registers, ring positions, EEPROM, PHY and interrupt state
    /// are in it; frames the card holds for the glue are not (they are dropped, as a
    /// wire may drop them).
    fn save_state(&self) -> (SectionId, u16, Vec<u8>);

    /// Takes a saved state of this model (a section [`save_state`](Self::save_state)
    /// wrote); `time` moves the card's timers from the saving clock to this one.
    fn load_state(&mut self, section: &Section<'_>, time: TimeBase) -> Result<(), SnapshotError>;
}

/// A card of `model` with `mac` (what the argv's `-device` asks for).
pub fn new_card(model: crate::dm_args::NicModel, mac: [u8; 6]) -> alloc::boxed::Box<dyn Nic> {
    use crate::dm_args::NicModel;
    match model {
        NicModel::Rtl8139 => alloc::boxed::Box::new(rtl8139::Rtl8139::new(mac)),
        NicModel::E1000 => alloc::boxed::Box::new(e1000::E1000::new(mac)),
    }
}
