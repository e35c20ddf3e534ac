//! Monotonic time from Xen's per-vCPU time record and the TSC.

use crate::arch;
use crate::shared_info;

/// Nanoseconds since the host booted (Xen system time).
pub fn now_ns() -> u64 {
    shared_info::vcpu0_time().system_time_at(arch::rdtsc())
}

/// A point in time after which a bounded wait gives up.
#[derive(Clone, Copy, Debug)]
pub struct Deadline(u64);

impl Deadline {
    pub fn after_ms(ms: u64) -> Self {
        Deadline(now_ns().saturating_add(ms * 1_000_000))
    }

    pub fn passed(self) -> bool {
        now_ns() >= self.0
    }
}
