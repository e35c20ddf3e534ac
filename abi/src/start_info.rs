//! `struct start_info` (xen.h): what Xen hands a PV domain at boot (pointer in rsi).

pub const MAX_GUEST_CMDLINE: usize = 1024;

/// `SIF_*` flags.
pub const SIF_PRIVILEGED: u32 = 1 << 0;
pub const SIF_INITDOMAIN: u32 = 1 << 1;
pub const SIF_MOD_START_PFN: u32 = 1 << 3;

/// `struct start_info` for x86_64 (the domU view of the console union).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct StartInfo {
    /// "xen-<version>-<platform>", NUL-padded.
    pub magic: [u8; 32],
    pub nr_pages: u64,
    /// Machine address of the shared info page.
    pub shared_info: u64,
    pub flags: u32,
    pub store_mfn: u64,
    pub store_evtchn: u32,
    pub console_mfn: u64,
    pub console_evtchn: u32,
    /// Virtual address of the initial page directory.
    pub pt_base: u64,
    pub nr_pt_frames: u64,
    /// Virtual address of the pfn -> mfn list.
    pub mfn_list: u64,
    pub mod_start: u64,
    pub mod_len: u64,
    pub cmd_line: [u8; MAX_GUEST_CMDLINE],
    pub first_p2m_pfn: u64,
    pub nr_p2m_frames: u64,
}

impl StartInfo {
    /// The magic string up to its first NUL.
    pub fn magic(&self) -> &[u8] {
        until_nul(&self.magic)
    }

    /// The command line up to its first NUL.
    pub fn cmdline(&self) -> &[u8] {
        until_nul(&self.cmd_line)
    }

    /// Whether the magic says this is a 64-bit x86 PV start_info.
    pub fn is_x86_64_pv(&self) -> bool {
        let m = self.magic();
        m.starts_with(b"xen-3.0-") && m.ends_with(b"x86_64")
    }
}

fn until_nul(bytes: &[u8]) -> &[u8] {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    &bytes[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blank() -> StartInfo {
        StartInfo {
            magic: [0; 32],
            nr_pages: 0,
            shared_info: 0,
            flags: 0,
            store_mfn: 0,
            store_evtchn: 0,
            console_mfn: 0,
            console_evtchn: 0,
            pt_base: 0,
            nr_pt_frames: 0,
            mfn_list: 0,
            mod_start: 0,
            mod_len: 0,
            cmd_line: [0; MAX_GUEST_CMDLINE],
            first_p2m_pfn: 0,
            nr_p2m_frames: 0,
        }
    }

    #[test]
    fn magic_and_cmdline_stop_at_nul() {
        let mut si = blank();
        si.magic[..14].copy_from_slice(b"xen-3.0-x86_64");
        si.cmd_line[..8].copy_from_slice(b"a=b c d\0");
        assert!(si.is_x86_64_pv());
        assert_eq!(si.cmdline(), b"a=b c d");
    }

    #[test]
    fn unterminated_cmdline_is_whole_array() {
        let mut si = blank();
        si.cmd_line = [b'x'; MAX_GUEST_CMDLINE];
        assert_eq!(si.cmdline().len(), MAX_GUEST_CMDLINE);
        si.magic[..14].copy_from_slice(b"xen-3.0-x86_32");
        assert!(!si.is_x86_64_pv());
    }
}
