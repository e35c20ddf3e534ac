//! stubctl's hand-written libxenctrl/libxenguest declarations (src/sys.rs) against
//! the installed headers (Debian's libxen-dev): sizes, offsets, constants.

use std::mem::{offset_of, size_of};
use stubctl::sys::*;

const PRELUDE: &str = "#include <xenctrl.h>\n#include <xenguest.h>\n#include <xen/hvm/params.h>\n";

#[test]
fn declarations_match_xens_headers() {
    c_layout::check(
        PRELUDE,
        &[
            ("sizeof(struct save_callbacks)", size_of::<SaveCallbacks>() as u64),
            ("offsetof(struct save_callbacks, suspend)", offset_of!(SaveCallbacks, suspend) as u64),
            ("offsetof(struct save_callbacks, precopy_policy)", offset_of!(SaveCallbacks, precopy_policy) as u64),
            ("offsetof(struct save_callbacks, postcopy)", offset_of!(SaveCallbacks, postcopy) as u64),
            ("offsetof(struct save_callbacks, checkpoint)", offset_of!(SaveCallbacks, checkpoint) as u64),
            ("offsetof(struct save_callbacks, wait_checkpoint)", offset_of!(SaveCallbacks, wait_checkpoint) as u64),
            (
                "offsetof(struct save_callbacks, switch_qemu_logdirty)",
                offset_of!(SaveCallbacks, switch_qemu_logdirty) as u64,
            ),
            ("offsetof(struct save_callbacks, data)", offset_of!(SaveCallbacks, data) as u64),
            ("sizeof(struct precopy_stats)", size_of::<PrecopyStats>() as u64),
            ("offsetof(struct precopy_stats, iteration)", offset_of!(PrecopyStats, iteration) as u64),
            ("offsetof(struct precopy_stats, total_written)", offset_of!(PrecopyStats, total_written) as u64),
            ("offsetof(struct precopy_stats, dirty_count)", offset_of!(PrecopyStats, dirty_count) as u64),
            ("sizeof(xc_domaininfo_t)", size_of::<DomainInfoRaw>() as u64),
            ("offsetof(xc_domaininfo_t, domain)", offset_of!(DomainInfoRaw, domain) as u64),
            ("offsetof(xc_domaininfo_t, flags)", offset_of!(DomainInfoRaw, flags) as u64),
            ("sizeof(xc_stream_type_t)", size_of::<std::ffi::c_int>() as u64),
            ("XC_STREAM_PLAIN", XC_STREAM_PLAIN as u64),
            ("XCFLAGS_LIVE", XCFLAGS_LIVE as u64),
            ("XGS_POLICY_ABORT", XGS_POLICY_ABORT as u64),
            ("XGS_POLICY_CONTINUE_PRECOPY", XGS_POLICY_CONTINUE_PRECOPY as u64),
            ("XGS_POLICY_STOP_AND_COPY", XGS_POLICY_STOP_AND_COPY as u64),
            ("SHUTDOWN_suspend", SHUTDOWN_SUSPEND as u64),
            ("XEN_DOMINF_shutdown", XEN_DOMINF_SHUTDOWN as u64),
            ("XEN_DOMINF_hvm_guest", XEN_DOMINF_HVM_GUEST as u64),
            ("XEN_DOMINF_shutdownshift", XEN_DOMINF_SHUTDOWNSHIFT as u64),
            ("XEN_DOMINF_shutdownmask", XEN_DOMINF_SHUTDOWNMASK as u64),
            ("HVM_PARAM_CALLBACK_IRQ", HVM_PARAM_CALLBACK_IRQ as u64),
            ("HVM_PARAM_ACPI_S_STATE", HVM_PARAM_ACPI_S_STATE as u64),
            ("XTL_PROGRESS", XTL_PROGRESS as u64),
            ("XTL_ERROR", XTL_ERROR as u64),
            ("XTL_STDIOSTREAM_HIDE_PROGRESS", XTL_STDIOSTREAM_HIDE_PROGRESS as u64),
        ],
    );
}

#[test]
fn shutdown_reason_is_read_from_flags() {
    let suspended = DomainInfo { domid: 3, flags: XEN_DOMINF_SHUTDOWN | XEN_DOMINF_HVM_GUEST | (2 << 16) };
    assert_eq!(suspended.shutdown_reason(), Some(SHUTDOWN_SUSPEND));
    assert!(suspended.is_hvm());
    let running = DomainInfo { domid: 3, flags: 2 << 16 };
    assert_eq!(running.shutdown_reason(), None);
}
