//! rust-stubdom: a Xen device-model stub domain as a `no_std` x86_64 PV unikernel.
//!
//! This crate is the image and the only crate with `unsafe` code: it boots as a PV
//! domain and brings up the console, traps, memory, grant tables, event channels,
//! timers, xenstore and the executor, and prints its banner. Then it runs a self-test
//! named on the command line, or else the device model ([`device_model`]: as libxl's
//! stub domain, or with `qmp.path=` as a plain domU), or else nothing, and powers off.
#![cfg_attr(not(test), no_std)]
#![cfg_attr(not(test), no_main)]
// Until the frontends and the device model use the whole runtime, the shipped image
// (without the self-tests) leaves parts of it uncalled.
#![cfg_attr(not(feature = "selftests"), allow(dead_code))]

extern crate alloc;

mod cmdline;

#[cfg(not(test))]
mod arch;
#[cfg(not(test))]
#[macro_use]
mod console;
mod console_backlog;
#[cfg(not(test))]
mod device_model;
#[cfg(not(test))]
mod events;
#[cfg(not(test))]
mod executor;
#[cfg(not(test))]
mod fatal;
#[cfg(not(test))]
mod gnttab;
#[cfg(not(test))]
mod hvm;
#[cfg(not(test))]
mod logger;
#[cfg(not(test))]
mod mm;
#[cfg(not(test))]
mod seams;
#[cfg(not(test))]
mod selftest;
#[cfg(not(test))]
mod shared_info;
#[cfg(not(test))]
mod time;
#[cfg(not(test))]
mod xs;

/// Project name and version, as printed in the banner.
pub const NAME: &str = "rust-stubdom";
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

#[cfg(not(test))]
mod boot {
    use crate::arch::{self, hypercall};
    use crate::cmdline::Cmdline;
    use crate::{console, device_model, executor, gnttab, logger, mm, selftest, shared_info, xs};
    use xen_abi::sched::ShutdownReason;
    use xen_abi::start_info::StartInfo;

    /// Console 0's xenbus handshake where dom0's backend wants one (console.rs).
    async fn connect_console() {
        match console::connect_xenbus_backend().await {
            Ok(true) => log::info!("console 0: told dom0's xenbus console backend we are connected"),
            Ok(false) => {}
            Err(e) => log::warn!("console 0: cannot read or write console/state: {e}"),
        }
    }

    /// First Rust code; `_start` passes the start_info pointer Xen gave in rsi.
    #[unsafe(no_mangle)]
    extern "C" fn kernel_main(start_info: *const StartInfo) -> ! {
        // SAFETY: Xen maps start_info inside the initial mapping and passes its
        // address in rsi; we copy it once and never keep a reference into it.
        let si = unsafe { start_info.read() };
        if shared_info::map(si.shared_info).is_err() {
            // No time source means no bounded console waits: nothing can be reported.
            hypercall::shutdown(ShutdownReason::Crash);
        }
        if console::init(si.console_mfn, si.console_evtchn, si.nr_pages).is_err() {
            hypercall::shutdown(ShutdownReason::Crash);
        }
        arch::traps::init();

        let cmdline = Cmdline::new(si.cmdline());
        logger::init(cmdline.log_level());
        println!("{} {}: Xen PV stub domain", crate::NAME, crate::VERSION);
        println!(
            "start_info: magic={} nr_pages={} flags={:#x} cmdline=\"{}\"",
            Cmdline::new(si.magic()).display(),
            si.nr_pages,
            si.flags,
            cmdline.display()
        );
        if !si.is_x86_64_pv() {
            panic!("not a 64-bit PV start_info");
        }
        if let Err(e) = mm::init(&si) {
            panic!("memory set-up failed: {e}");
        }
        if let Err(e) = gnttab::init() {
            panic!("grant table set-up failed: {e}");
        }
        if let Err(e) = executor::init() {
            panic!("timer event set-up failed: {e:?}");
        }
        if let Err(e) = xs::init(si.store_mfn, si.store_evtchn) {
            panic!("xenstore set-up failed: {e}");
        }
        log::info!("memory: {:?}", mm::stats());

        // A self-test named on the command line, or else the device model if this
        // start asks for one (as a stub domain, or `qmp.path=`), or else nothing.
        // (One block_on for everything: the tasks it spawns, xenstore's among them,
        // end with it.)
        let (what, outcome) = if cmdline.value("selftest").is_some() {
            (
                "selftest",
                executor::block_on(async {
                    connect_console().await;
                    selftest::run(cmdline).await
                }),
            )
        } else {
            (
                "device model",
                executor::block_on(async {
                    connect_console().await;
                    device_model::run(cmdline).await
                })
                .map(drop),
            )
        };
        match outcome {
            Ok(()) => {}
            Err(e) => {
                println!("{what}: FAILED: {e}");
                console::flush();
                hypercall::shutdown(ShutdownReason::Crash);
            }
        }
        println!("{}: powering off", crate::NAME);
        console::flush();
        hypercall::shutdown(ShutdownReason::Poweroff)
    }
}
