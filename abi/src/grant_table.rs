//! Grant table v1 (grant_table.h): entries we write, operations we ask Xen for.

pub const GNTTABOP_MAP_GRANT_REF: usize = 0;
pub const GNTTABOP_UNMAP_GRANT_REF: usize = 1;
pub const GNTTABOP_SETUP_TABLE: usize = 2;
pub const GNTTABOP_COPY: usize = 5;
pub const GNTTABOP_QUERY_SIZE: usize = 6;

/// The first references are reserved for the toolstack (console, xenstore).
pub const NR_RESERVED_ENTRIES: u32 = 8;
/// v1 entries per 4 KiB frame.
pub const ENTRIES_PER_FRAME: u32 = 4096 / 8;

pub const GTF_PERMIT_ACCESS: u16 = 1 << 0;
pub const GTF_READONLY: u16 = 1 << 2;
pub const GTF_READING: u16 = 1 << 3;
pub const GTF_WRITING: u16 = 1 << 4;

pub const GNTMAP_HOST_MAP: u32 = 1 << 1;
pub const GNTMAP_READONLY: u32 = 1 << 2;

pub const GNTCOPY_SOURCE_GREF: u16 = 1 << 0;
pub const GNTCOPY_DEST_GREF: u16 = 1 << 1;

pub const GNTST_OKAY: i16 = 0;

/// `struct grant_entry_v1`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct GrantEntryV1 {
    pub flags: u16,
    pub domid: u16,
    pub frame: u32,
}

/// `struct gnttab_setup_table`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct GnttabSetupTable {
    pub dom: u16,
    pub nr_frames: u32,
    pub status: i16,
    /// Guest pointer to an array of `nr_frames` u64 frame numbers Xen fills in.
    pub frame_list: u64,
}

/// `struct gnttab_query_size`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct GnttabQuerySize {
    pub dom: u16,
    pub nr_frames: u32,
    pub max_nr_frames: u32,
    pub status: i16,
}

/// `struct gnttab_map_grant_ref`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct GnttabMapGrantRef {
    pub host_addr: u64,
    pub flags: u32,
    pub grant_ref: u32,
    pub dom: u16,
    pub status: i16,
    pub handle: u32,
    pub dev_bus_addr: u64,
}

/// `struct gnttab_unmap_grant_ref`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct GnttabUnmapGrantRef {
    pub host_addr: u64,
    pub dev_bus_addr: u64,
    pub handle: u32,
    pub status: i16,
}

/// `struct gnttab_copy_ptr`: a grant reference or a frame of `domid`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct GnttabCopyPtr {
    /// `u.ref` (with GNTCOPY_*_gref) or `u.gmfn`.
    pub ref_or_gmfn: u64,
    pub domid: u16,
    pub offset: u16,
}

/// `struct gnttab_copy`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct GnttabCopy {
    pub source: GnttabCopyPtr,
    pub dest: GnttabCopyPtr,
    pub len: u16,
    pub flags: u16,
    pub status: i16,
}
