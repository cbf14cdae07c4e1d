//! Advisory file locks (`flock(2)`) for coordinating rbuild processes that
//! share one store: a writer of `index.json`, a pruner and a build take the
//! lock they need, and the kernel drops it when the process dies, so a
//! killed rbuild never leaves a stale lock behind.
//!
//! `flock` locks belong to an open file description, so two `FileLock`s on
//! the same path exclude each other even inside one process (between threads).

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use rustix::fs::{flock, FlockOperation};

use crate::error::{Error, Result};

/// The path of the store-wide lock file `name` (`root/locks/<name>.lock`),
/// creating the `locks` directory. Names in use: `index` (held exclusively
/// while `index.json` is rewritten) and `gc` (every process that writes to
/// the store holds it shared; prune, `check --repair` and removal of stray
/// temp files hold it exclusively).
pub fn lock_path(store_root: &Path, name: &str) -> Result<PathBuf> {
    let dir = store_root.join("locks");
    std::fs::create_dir_all(&dir).map_err(|e| Error::io("create directory", &dir, e))?;
    Ok(dir.join(format!("{name}.lock")))
}

/// What [`FileLock::probe`] found.
#[derive(Debug)]
pub enum Probe {
    /// The lock file does not exist.
    Missing,
    /// Another open file description holds a lock on it.
    Busy,
    /// Nobody held it; it is now held exclusively by the returned lock.
    Free(FileLock),
}

/// A held advisory lock on a lock file; released on drop (or process exit).
#[derive(Debug)]
pub struct FileLock {
    file: File,
    path: PathBuf,
}

impl FileLock {
    /// Blocks until an exclusive lock on `path` is held (the file is created
    /// if missing).
    pub fn exclusive(path: &Path) -> Result<FileLock> {
        Self::acquire(path, FlockOperation::LockExclusive)
    }

    /// Blocks until a shared lock on `path` is held: several shared holders
    /// may coexist, but not with an exclusive one.
    pub fn shared(path: &Path) -> Result<FileLock> {
        Self::acquire(path, FlockOperation::LockShared)
    }

    /// Takes an exclusive lock if nobody holds any lock on `path`; `None`
    /// when it is busy.
    pub fn try_exclusive(path: &Path) -> Result<Option<FileLock>> {
        match Self::acquire(path, FlockOperation::NonBlockingLockExclusive) {
            Ok(l) => Ok(Some(l)),
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::WouldBlock => {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Tries an exclusive lock on an existing lock file without creating
    /// it: tells a lock file that is gone from one that is held (its holder
    /// is alive) and from one nobody holds (its holder died).
    pub fn probe(path: &Path) -> Result<Probe> {
        let file = match OpenOptions::new().read(true).write(true).open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Probe::Missing),
            Err(e) => return Err(Error::io("open lock file", path, e)),
        };
        match Self::lock(file, path, FlockOperation::NonBlockingLockExclusive) {
            Ok(l) => Ok(Probe::Free(l)),
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::WouldBlock => {
                Ok(Probe::Busy)
            }
            Err(e) => Err(e),
        }
    }

    /// The lock file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn acquire(path: &Path, op: FlockOperation) -> Result<FileLock> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| Error::io("open lock file", path, e))?;
        Self::lock(file, path, op)
    }

    fn lock(file: File, path: &Path, op: FlockOperation) -> Result<FileLock> {
        loop {
            match flock(&file, op) {
                Ok(()) => break,
                // A signal interrupted the wait: wait again.
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(Error::io("lock", path, e.into())),
            }
        }
        Ok(FileLock {
            file,
            path: path.to_path_buf(),
        })
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        // Closing the file releases the lock too; unlocking first makes the
        // release explicit and independent of any duplicated descriptor.
        let _ = flock(&self.file, FlockOperation::Unlock);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exclusive_excludes_until_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("l.lock");
        let held = FileLock::exclusive(&p).unwrap();
        assert!(FileLock::try_exclusive(&p).unwrap().is_none());
        drop(held);
        assert!(FileLock::try_exclusive(&p).unwrap().is_some());
    }

    #[test]
    fn shared_locks_coexist_but_block_exclusive() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("l.lock");
        let a = FileLock::shared(&p).unwrap();
        let b = FileLock::shared(&p).unwrap();
        assert!(FileLock::try_exclusive(&p).unwrap().is_none());
        drop(a);
        assert!(FileLock::try_exclusive(&p).unwrap().is_none());
        drop(b);
        assert!(FileLock::try_exclusive(&p).unwrap().is_some());
    }

    #[test]
    fn probe_tells_missing_busy_and_free_apart_without_creating() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("l.lock");
        assert!(matches!(FileLock::probe(&p).unwrap(), Probe::Missing));
        assert!(!p.exists());
        let held = FileLock::shared(&p).unwrap();
        assert!(matches!(FileLock::probe(&p).unwrap(), Probe::Busy));
        drop(held);
        assert!(matches!(FileLock::probe(&p).unwrap(), Probe::Free(_)));
    }

    #[test]
    fn exclusive_lock_serialises_threads() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("l.lock");
        let counter = dir.path().join("counter");
        std::fs::write(&counter, "0").unwrap();
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..25 {
                        let _l = FileLock::exclusive(&p).unwrap();
                        let n: u32 = std::fs::read_to_string(&counter).unwrap().parse().unwrap();
                        std::fs::write(&counter, (n + 1).to_string()).unwrap();
                    }
                });
            }
        });
        assert_eq!(std::fs::read_to_string(&counter).unwrap(), "100");
    }
}
