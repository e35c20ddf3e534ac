//! File descriptor sets: QEMU's way of naming files as `/dev/fdset/N`.
//!
//! In QEMU a client passes descriptors over a unix socket with `add-fd`; over vchan it
//! cannot, so here every entry is something the stub domain owns: one of its PV disks
//! (added when the disk connects, opaque `stub-devid:<devid>`, which is what libxl 4.20
//! polls `query-fdsets` for) or one of its consoles (fdset 1 is console 1, the save
//! channel libxl names as `/dev/fdset/1`). The `fd` numbers are made up, allocated like
//! POSIX descriptors (the lowest free one, from 3), because clients expect integers there.
//!
//! Differences from QEMU (monitor/fds.c), all because entries are not descriptors:
//! - `remove-fd` drops an entry at once; QEMU keeps removed descriptors listed while
//!   the VM is paused. A medium already inserted from a set does not depend on the set.
//! - A set is dropped when its last entry goes (there are no duplicated descriptors
//!   keeping an empty set alive).
//! - Sets survive client disconnects (QEMU closes unused descriptors when a monitor
//!   disconnects; these are the stub domain's own devices, not a client's).

use alloc::string::String;
use alloc::vec::Vec;

use qmp::qapi::{FdsetFdInfo, FdsetInfo};

use super::BlockError;

/// The fdset libxl names as the device model's save file: the stub domain's console 1.
pub const SAVE_FDSET: i64 = 1;

/// The first made-up descriptor number (0 to 2 look like stdio to a reader).
const FIRST_FD: i64 = 3;

/// What an fdset entry stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FdTarget {
    /// one of the stub domain's PV disks, by devid
    PvDisk(u32),
    /// one of the stub domain's PV consoles, by number
    Console(u32),
}

/// One entry of a set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FdEntry {
    pub fd: i64,
    pub opaque: Option<String>,
    pub target: FdTarget,
}

/// A set: entries in the order they were added.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FdSet {
    pub id: i64,
    pub fds: Vec<FdEntry>,
}

/// All sets, ordered by id.
#[derive(Clone, Debug, Default)]
pub struct FdSets {
    sets: Vec<FdSet>,
}

impl FdSets {
    pub fn new() -> FdSets {
        FdSets::default()
    }

    /// The set with this id.
    pub fn get(&self, id: i64) -> Option<&FdSet> {
        self.sets.iter().find(|set| set.id == id)
    }

    /// All sets, by ascending id.
    pub fn iter(&self) -> impl Iterator<Item = &FdSet> {
        self.sets.iter()
    }

    fn lowest_free_fd(&self) -> i64 {
        let mut fd = FIRST_FD;
        while self.sets.iter().flat_map(|set| &set.fds).any(|entry| entry.fd == fd) {
            fd += 1;
        }
        fd
    }

    /// Adds an entry to set `id`, creating the set if needed; returns the entry's fd.
    pub fn add(&mut self, id: i64, target: FdTarget, opaque: Option<String>) -> i64 {
        let fd = self.lowest_free_fd();
        let entry = FdEntry { fd, opaque, target };
        match self.sets.iter().position(|set| set.id >= id) {
            Some(at) if self.sets[at].id == id => self.sets[at].fds.push(entry),
            Some(at) => self.sets.insert(at, FdSet { id, fds: alloc::vec![entry] }),
            None => self.sets.push(FdSet { id, fds: alloc::vec![entry] }),
        }
        fd
    }

    /// Adds an entry to a new set with the lowest free id, as QEMU's `add-fd` without
    /// `fdset-id` does, except that [`SAVE_FDSET`] is never handed out.
    pub fn add_to_new_set(&mut self, target: FdTarget, opaque: Option<String>) -> i64 {
        let mut id = 0;
        while id == SAVE_FDSET || self.get(id).is_some() {
            id += 1;
        }
        self.add(id, target, opaque);
        id
    }

    /// `remove-fd`: one entry (with `fd`) or the whole set.
    pub fn remove(&mut self, id: i64, fd: Option<i64>) -> Result<(), BlockError> {
        let not_found = || BlockError::FdNotFound { fdset_id: id, fd };
        let at = self.sets.iter().position(|set| set.id == id).ok_or_else(not_found)?;
        match fd {
            None => self.sets[at].fds.clear(),
            Some(fd) => {
                let fds = &mut self.sets[at].fds;
                let entry = fds.iter().position(|entry| entry.fd == fd).ok_or_else(not_found)?;
                fds.remove(entry);
            }
        }
        self.sets.retain(|set| !set.fds.is_empty());
        Ok(())
    }

    /// Drops every entry for `target` (a PV disk that went away); true if any was there.
    pub fn remove_target(&mut self, target: FdTarget) -> bool {
        let before: usize = self.sets.iter().map(|set| set.fds.len()).sum();
        for set in &mut self.sets {
            set.fds.retain(|entry| entry.target != target);
        }
        self.sets.retain(|set| !set.fds.is_empty());
        let after: usize = self.sets.iter().map(|set| set.fds.len()).sum();
        after != before
    }

    /// `query-fdsets`, in QEMU's order: sets by descending id, entries oldest first.
    pub fn query(&self) -> Vec<FdsetInfo<'_>> {
        self.sets
            .iter()
            .rev()
            .map(|set| FdsetInfo {
                fdset_id: set.id,
                fds: set
                    .fds
                    .iter()
                    .map(|entry| FdsetFdInfo { fd: entry.fd, opaque: entry.opaque.as_deref() })
                    .collect(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    #[test]
    fn new_sets_take_the_lowest_free_id_but_never_the_save_set() {
        let mut sets = FdSets::new();
        sets.add(SAVE_FDSET, FdTarget::Console(1), None);
        assert_eq!(sets.add_to_new_set(FdTarget::PvDisk(5632), None), 0);
        assert_eq!(sets.add_to_new_set(FdTarget::PvDisk(768), None), 2);
        sets.remove(0, None).unwrap();
        sets.remove(SAVE_FDSET, None).unwrap();
        assert_eq!(sets.add_to_new_set(FdTarget::PvDisk(5632), None), 0);
        assert_eq!(sets.add_to_new_set(FdTarget::PvDisk(832), None), 3);
    }

    #[test]
    fn fds_are_lowest_free_from_three() {
        let mut sets = FdSets::new();
        assert_eq!(sets.add(1, FdTarget::Console(1), None), 3);
        assert_eq!(sets.add(1, FdTarget::Console(2), None), 4);
        sets.remove(1, Some(3)).unwrap();
        assert_eq!(sets.add(5, FdTarget::PvDisk(768), None), 3);
    }

    #[test]
    fn remove_reports_as_qemu_does() {
        let mut sets = FdSets::new();
        sets.add(2, FdTarget::PvDisk(768), Some("stub-devid:768".to_string()));
        assert_eq!(sets.remove(7, None).unwrap_err().to_string(), "File descriptor named 'fdset-id:7' not found");
        assert_eq!(
            sets.remove(2, Some(9)).unwrap_err().to_string(),
            "File descriptor named 'fdset-id:2, fd:9' not found"
        );
        sets.remove(2, Some(3)).unwrap();
        assert!(sets.get(2).is_none());
    }

    #[test]
    fn query_order_and_shape() {
        let mut sets = FdSets::new();
        sets.add(1, FdTarget::Console(1), None);
        sets.add(0, FdTarget::PvDisk(5632), Some("stub-devid:5632".to_string()));
        let json = serde_json::to_string(&sets.query()).unwrap();
        assert_eq!(
            json,
            concat!(
                r#"[{"fdset-id":1,"fds":[{"fd":3}]},"#,
                r#"{"fdset-id":0,"fds":[{"fd":4,"opaque":"stub-devid:5632"}]}]"#
            )
        );
    }
}
