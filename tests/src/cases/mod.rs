//! The real-Xen test cases, one module per area.

pub mod bench;
pub mod blk;
pub mod grant;
pub mod hvm;
pub mod kernel;
pub mod linux;
pub mod net;
pub mod qmp;
pub mod runtime;
pub mod stubdom;
pub mod testbed;
pub mod vchan;

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
    v
}
