//! What the service-level host tests share: the domains, the clock and the
//! configuration of a guest's device model, and waiting for it to be ready.

#![allow(dead_code)] // each test file uses its own part

use std::time::Duration;

use devices::service::{Config, GuestConfig, serve};
use qmp::Timestamp;
use xen_seams::sim::{Executor, SimXen, World};

/// The stub domain and its guest.
pub const STUB: u16 = 7;
pub const GUEST: u16 = 5;

pub fn now() -> Timestamp {
    Timestamp::new(1_700_000_000, 0)
}

/// The device model of a 2-vCPU guest with 16 MiB, booting from CD, with no drives,
/// no COM1 and no NIC; tests add what they need.
pub fn guest_config() -> Config {
    Config {
        qmp_path: "device-model/5/qmp-vchan".into(),
        ready_path: "device-model/5/state".into(),
        drives: Vec::new(),
        restore: false,
        save_console: false,
        vcpus: 2,
        guest: Some(GuestConfig {
            domid: GUEST,
            boot_order: "dc".into(),
            ram_mib: 16,
            serial_console: None,
            nics: Vec::new(),
            xen_platform: false,
        }),
        lifetime: Some(Duration::from_secs(60)),
    }
}

/// Waits until the device model says it is ready (libxl unpauses the guest then).
pub async fn until_ready(world: &World) {
    let clock = world.domain(0);
    while world.xenstore_read(&format!("/local/domain/{STUB}/device-model/{GUEST}/state")).is_none() {
        xen_seams::Clock::sleep(&clock, Duration::from_millis(10)).await;
    }
}

/// Runs the device model of `config` in `stub` as a background task; a service that
/// fails fails the test.
pub fn spawn_service(executor: &mut Executor<'_>, stub: &'static SimXen, config: Config) {
    executor.spawn_background("service", async move {
        if let Err(e) = serve(stub, &config, now).await {
            panic!("the service failed: {e}");
        }
    });
}

/// A port access as Xen's ioreq page carries it (state READY, one element).
pub fn pio(port: u16, size: u32, read: bool, data: u64) -> xen_seams::hvm::Ioreq {
    use xen_seams::hvm::{Ioreq, ioreq_type};
    Ioreq {
        addr: port.into(),
        data,
        count: 1,
        size,
        bits: Ioreq::make_bits(1, false, read, false),
        kind: ioreq_type::PIO,
        ..Ioreq::default()
    }
}
