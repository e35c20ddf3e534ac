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

/// `struct evtchn_close`, `struct evtchn_unmask` and `struct evtchn_send`: just a port.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct EvtchnPort {
    pub port: u32,
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
