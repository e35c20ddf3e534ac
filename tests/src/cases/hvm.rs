//! HVM guests in the test bed (the device model will serve these): reading their
//! firmware's progress from the hypervisor log.

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
