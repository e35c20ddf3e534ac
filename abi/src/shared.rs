//! The shared info page (xen.h, arch-x86/xen.h): per-vCPU event and time state.

/// `XEN_LEGACY_MAX_VCPUS` on x86.
pub const LEGACY_MAX_VCPUS: usize = 32;

/// `struct vcpu_time_info`: system time = system_time + scaled (tsc - tsc_timestamp).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct VcpuTimeInfo {
    /// Odd while Xen updates the record.
    pub version: u32,
    pub pad0: u32,
    pub tsc_timestamp: u64,
    pub system_time: u64,
    pub tsc_to_system_mul: u32,
    pub tsc_shift: i8,
    pub flags: u8,
    pub pad1: [u8; 2],
}

impl VcpuTimeInfo {
    /// Nanoseconds since boot at TSC value `tsc`, by Xen's scaling rule.
    pub fn system_time_at(&self, tsc: u64) -> u64 {
        let mut delta = tsc.wrapping_sub(self.tsc_timestamp);
        if self.tsc_shift >= 0 {
            delta <<= self.tsc_shift;
        } else {
            delta >>= -(self.tsc_shift as i32);
        }
        let scaled = ((delta as u128 * self.tsc_to_system_mul as u128) >> 32) as u64;
        self.system_time.wrapping_add(scaled)
    }
}

/// `struct arch_vcpu_info` (x86_64).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ArchVcpuInfo {
    /// The faulting address of the last page fault.
    pub cr2: u64,
    pub pad: u64,
}

/// `struct vcpu_info`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct VcpuInfo {
    pub evtchn_upcall_pending: u8,
    pub evtchn_upcall_mask: u8,
    pub evtchn_pending_sel: u64,
    pub arch: ArchVcpuInfo,
    pub time: VcpuTimeInfo,
}

/// `struct arch_shared_info` (x86).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ArchSharedInfo {
    pub max_pfn: u64,
    pub pfn_to_mfn_frame_list_list: u64,
    pub nmi_reason: u64,
    pub p2m_cr3: u64,
    pub p2m_vaddr: u64,
    pub p2m_generation: u64,
}

/// `struct shared_info`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SharedInfo {
    pub vcpu_info: [VcpuInfo; LEGACY_MAX_VCPUS],
    pub evtchn_pending: [u64; 64],
    pub evtchn_mask: [u64; 64],
    pub wc_version: u32,
    pub wc_sec: u32,
    pub wc_nsec: u32,
    pub wc_sec_hi: u32,
    pub arch: ArchSharedInfo,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_scaling_follows_shift_and_multiplier() {
        // mul = 2^31 means x0.5 after >> 32; shift 1 doubles first: 1 ns per tick.
        let t = VcpuTimeInfo {
            tsc_timestamp: 1000,
            system_time: 5_000,
            tsc_to_system_mul: 1 << 31,
            tsc_shift: 1,
            ..Default::default()
        };
        assert_eq!(t.system_time_at(1000), 5_000);
        assert_eq!(t.system_time_at(1400), 5_400);
        let t = VcpuTimeInfo { tsc_shift: -2, tsc_to_system_mul: u32::MAX, ..t };
        // 4000 ticks >> 2 = 1000, * (2^32-1) >> 32 = 999.
        assert_eq!(t.system_time_at(5000), 5_999);
    }
}
