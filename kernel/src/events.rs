//! Event delivery. For now the image runs with upcalls masked and only acknowledges
//! an upcall if one arrives; per-port dispatch comes with the executor.

use core::sync::atomic::{AtomicU64, Ordering};

static UPCALLS: AtomicU64 = AtomicU64::new(0);

/// Called by the upcall entry with further upcalls masked.
pub fn on_upcall() {
    UPCALLS.fetch_add(1, Ordering::Relaxed);
    crate::shared_info::vcpu0_ack_upcall();
}

/// How many upcalls have arrived since boot.
#[allow(dead_code)]
pub fn upcall_count() -> u64 {
    UPCALLS.load(Ordering::Relaxed)
}
