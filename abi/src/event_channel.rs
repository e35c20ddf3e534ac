//! Event channel operations (event_channel.h) and the 2-level pending bitmaps.

pub const EVTCHNOP_BIND_INTERDOMAIN: usize = 0;
pub const EVTCHNOP_BIND_VIRQ: usize = 1;
pub const EVTCHNOP_CLOSE: usize = 3;
pub const EVTCHNOP_ALLOC_UNBOUND: usize = 6;
pub const EVTCHNOP_UNMASK: usize = 9;

/// `VIRQ_TIMER`: fires when the one-shot timer (set_timer_op) expires.
pub const VIRQ_TIMER: u32 = 0;

/// Ports of the 2-level ABI: 64 words of 64 bits in shared info.
pub const NR_EVENT_CHANNELS: usize = 64 * 64;

/// `DOMID_SELF`.
pub const DOMID_SELF: u16 = 0x7ff0;

/// `struct evtchn_alloc_unbound`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct EvtchnAllocUnbound {
    pub dom: u16,
    pub remote_dom: u16,
    pub port: u32,
}

/// `struct evtchn_bind_interdomain`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct EvtchnBindInterdomain {
    pub remote_dom: u16,
    pub remote_port: u32,
    pub local_port: u32,
}

/// `struct evtchn_bind_virq`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct EvtchnBindVirq {
    pub virq: u32,
    pub vcpu: u32,
    pub port: u32,
}

/// `struct evtchn_close`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct EvtchnClose {
    pub port: u32,
}

/// `struct evtchn_unmask`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct EvtchnUnmask {
    pub port: u32,
}

/// The argument of an `EVENTCHANNEL_op` hypercall: each struct names the one command
/// that takes it, so a caller cannot pair a struct with a command that makes Xen
/// read or write past it. Sealed: only the structs of this crate, whose layouts
/// `tests/layout.rs` checks against Xen's headers, implement it.
pub trait EvtchnOp: sealed::Sealed {
    /// The `EVTCHNOP_*` command.
    const CMD: usize;
}

pub(crate) mod sealed {
    /// Implemented only inside xen-abi.
    pub trait Sealed {}
}

macro_rules! evtchn_op {
    ($($ty:ty => $cmd:expr),* $(,)?) => {$(
        impl sealed::Sealed for $ty {}
        impl EvtchnOp for $ty {
            const CMD: usize = $cmd;
        }
    )*};
}

evtchn_op! {
    EvtchnBindInterdomain => EVTCHNOP_BIND_INTERDOMAIN,
    EvtchnBindVirq => EVTCHNOP_BIND_VIRQ,
    EvtchnClose => EVTCHNOP_CLOSE,
    crate::hypercall::EvtchnSend => crate::hypercall::EVTCHNOP_SEND,
    EvtchnAllocUnbound => EVTCHNOP_ALLOC_UNBOUND,
    EvtchnUnmask => EVTCHNOP_UNMASK,
}

/// Word and bit of `port` in the pending/mask bitmaps.
pub fn word_and_bit(port: u32) -> (usize, u32) {
    ((port / 64) as usize, port % 64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_map_to_words_and_bits() {
        assert_eq!(word_and_bit(0), (0, 0));
        assert_eq!(word_and_bit(63), (0, 63));
        assert_eq!(word_and_bit(64), (1, 0));
        assert_eq!(word_and_bit(4095), (63, 63));
    }
}
