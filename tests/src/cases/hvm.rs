//! HVM guests in the test bed (the device model will serve these).

use crate::harness::{Ctx, Test};
use crate::{proc, xl};
use std::time::Duration;

pub fn tests() -> Vec<Test> {
    vec![Test { name: "xen::hvm::guest_reaches_seabios", limit: Duration::from_secs(180), run: guest_reaches_seabios }]
}

/// A diskless HVM guest with dom0's QEMU as device model: hvmloader must hand over
/// to SeaBIOS, whose banner reaches the hypervisor log through the debug port.
fn guest_reaches_seabios(ctx: &mut Ctx) -> Result<(), String> {
    let name = "hvm-seabios";
    let cfg = ctx.prepare_domain(
        name,
        "name = \"hvm-seabios\"\ntype = \"hvm\"\nmemory = 32\nvcpus = 1\nvnc = 0\nsdl = 0\nnographic = 1\n\
         vga = \"none\"\nboot = \"c\"\ndevice_model_version = \"qemu-xen\"\non_poweroff = \"destroy\"\n\
         on_reboot = \"destroy\"\non_crash = \"destroy\"\n",
    )?;
    xl::create(&cfg)?;
    let domid = xl::domid(name)?;
    proc::poll(Duration::from_secs(120), Duration::from_secs(1), || {
        seabios_after_hvmloader(&xl::dmesg().ok()?, domid).then_some(())
    })
    .ok_or_else(|| {
        let tag = format!("(d{domid})");
        let lines: Vec<String> =
            xl::dmesg().unwrap_or_default().lines().filter(|l| l.contains(&tag)).map(String::from).collect();
        format!("no SeaBIOS banner after hvmloader within 120 s; {tag} lines of xl dmesg:\n{}", lines.join("\n"))
    })
}

/// Whether the hypervisor log shows domain `domid`'s hvmloader starting and, later,
/// SeaBIOS's banner. Guest lines look like `(d4) [   15.93] SeaBIOS (version 1.16.2)`.
pub fn seabios_after_hvmloader(dmesg: &str, domid: u32) -> bool {
    let tag = format!("(d{domid}) ");
    let mut guest = dmesg.lines().filter(|l| l.contains(&tag));
    guest.any(|l| l.contains("HVM Loader")) && guest.any(|l| l.contains("SeaBIOS (version"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seabios_must_follow_hvmloader_of_the_same_domain() {
        let log = "(d4) [ 14.9] HVM Loader\n(d4) [ 15.9] SeaBIOS (version 1.16.2)\n";
        assert!(seabios_after_hvmloader(log, 4));
        assert!(!seabios_after_hvmloader(log, 3));
        assert!(!seabios_after_hvmloader("(d4) [ 15.9] SeaBIOS (version 1.16.2)\n(d4) [ 16.0] HVM Loader\n", 4));
        assert!(!seabios_after_hvmloader("(d14) [ 1.0] HVM Loader\n(d14) [ 2.0] SeaBIOS (version 1)\n", 4));
    }
}
