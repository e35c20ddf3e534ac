//! libxl's lock files, taken the way libxl takes them (`libxl__lock_file`): open or
//! create the file, `flock` it exclusively, check that the path still names the file
//! locked (the holder unlinks it on release), and on release unlink then close.
//! Waiting is bounded: a lock not got within the limit is an error, never a hang.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

/// Why a lock was not taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("cannot open the lock file {path}: {source}")]
    Open { path: String, source: std::io::Error },
    #[error("{path} stayed locked by another program (libxl?) for {secs} s")]
    Busy { path: String, secs: u64 },
}

/// A held lock; released (unlinked, then unlocked) on drop.
#[derive(Debug)]
pub struct PathLock {
    path: String,
    file: Option<File>,
}

impl PathLock {
    pub fn acquire(path: &str, limit: Duration) -> Result<PathLock, LockError> {
        let deadline = Instant::now() + limit;
        loop {
            let file = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(path)
                .map_err(|source| LockError::Open { path: path.to_string(), source })?;
            match file.try_lock() {
                Ok(()) => {
                    // The holder before us may have unlinked the file we locked.
                    let same = match (file.metadata(), std::fs::metadata(path)) {
                        (Ok(locked), Ok(named)) => locked.ino() == named.ino() && locked.dev() == named.dev(),
                        _ => false,
                    };
                    if same {
                        return Ok(PathLock { path: path.to_string(), file: Some(file) });
                    }
                }
                Err(std::fs::TryLockError::WouldBlock) => {}
                Err(std::fs::TryLockError::Error(source)) => {
                    return Err(LockError::Open { path: path.to_string(), source });
                }
            }
            if Instant::now() >= deadline {
                return Err(LockError::Busy { path: path.to_string(), secs: limit.as_secs() });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for PathLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        drop(self.file.take());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_lock_makes_the_next_one_wait_and_release_unlinks() {
        let dir = std::env::temp_dir().join(format!("stubctl-lock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("userdata-l.1.x.qmp-socket-lock");
        let path = path.to_str().unwrap();
        let held = PathLock::acquire(path, Duration::from_secs(1)).unwrap();
        let started = Instant::now();
        assert!(matches!(PathLock::acquire(path, Duration::from_millis(300)), Err(LockError::Busy { .. })));
        assert!(started.elapsed() >= Duration::from_millis(300));
        drop(held);
        assert!(!std::path::Path::new(path).exists());
        let again = PathLock::acquire(path, Duration::from_secs(1)).unwrap();
        drop(again);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
