//! The real-Xen test cases, one module per area.

pub mod bench;
pub mod blk;
pub mod cd_change;
pub mod grant;
pub mod hvm;
pub mod kernel;
pub mod linux;
pub mod net;
pub mod peer;
pub mod qmp;
pub mod runtime;
pub mod stubctl;
pub mod stubdom;
pub mod testbed;
pub mod testbed_guest;
pub mod vchan;
pub mod xen420;

use crate::harness::Test;

/// Every test, in the order they run.
pub fn all() -> Vec<Test> {
    let mut v = Vec::new();
    v.extend(kernel::tests());
    v.extend(runtime::tests());
    v.extend(grant::tests());
    v.extend(blk::tests());
    v.extend(net::tests());
    v.extend(stubdom::tests());
    v.extend(vchan::tests());
    v.extend(qmp::tests());
    v.extend(testbed::tests());
    v.extend(hvm::tests());
    v.extend(stubctl::tests());
    v.extend(testbed_guest::tests());
    v.extend(peer::tests());
    v.extend(xen420::tests());
    v
}

/// Whether the test or benchmark `name` runs on the test bed of release `bed` ("4.17"
/// or "4.20"; "" is every bed): names that start with `xen420` are Xen 4.20's, the
/// others 4.17's (xtask's `Release::of` applies the same rule).
pub fn on_bed(name: &str, bed: &str) -> bool {
    let is_420 = name.starts_with("xen420");
    match bed {
        "" => true,
        "4.20" => is_420,
        _ => !is_420,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_test_runs_on_one_bed() {
        assert!(on_bed("xen::stubdom::consoles_carry_data_both_ways", "4.17"));
        assert!(!on_bed("xen::stubdom::consoles_carry_data_both_ways", "4.20"));
        assert!(on_bed("xen420::stubdom::create_save_restore", "4.20"));
        assert!(!on_bed("xen420::stubdom::create_save_restore", "4.17"));
        assert!(on_bed("xen420-cd-insert", "4.20") && !on_bed("blk", "4.20") && on_bed("blk", "4.17"));
        assert!(on_bed("xen420::stubdom::create_save_restore", "") && on_bed("blk", ""));
        let names: Vec<&str> = all().iter().map(|t| t.name).collect();
        assert!(names.iter().any(|n| on_bed(n, "4.20")), "no 4.20 test: {names:?}");
        assert!(names.iter().all(|n| n.starts_with("xen::") || n.starts_with("xen420::")), "{names:?}");
    }
}
