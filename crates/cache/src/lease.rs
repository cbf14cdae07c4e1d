//! Build leases: `root/leases/<id>.lock` and `root/leases/<id>.json`.
//!
//! A running build holds an exclusive `flock` on its `<id>.lock` for its
//! whole life and describes in `<id>.json` what it needs: the manifests of
//! the base images it resolved, and the cache keys (and blobs) it produces.
//! `rmi` refuses to drop an image a live lease names, and prune keeps
//! everything a live lease names.
//!
//! Liveness is the lock itself: the kernel releases it when the process
//! dies, so a lease whose lock can be taken is stale, whatever its record
//! says, and may be removed by anyone. The lock file is locked under a temp
//! name and only then renamed to `<id>.lock` (the lock follows the inode),
//! so no reader ever sees an unlocked lock file of a live build.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::atomic::{write_atomic, TEMP_PREFIX};
use crate::error::{Error, Result};
use crate::lock::{FileLock, Probe};
use crate::Digest;

/// What a lease protects, as stored in `<id>.json`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    /// The process holding the lease (informational: liveness is the lock).
    pub pid: u32,
    /// When the lease was taken, in seconds since the Unix epoch.
    pub created: u64,
    /// What holds it (`"build"`), for messages.
    pub purpose: String,
    /// Manifest digests of images the holder uses (base images, `--from` images).
    pub manifests: Vec<Digest>,
    /// Blobs the holder needs or is producing.
    pub blobs: Vec<Digest>,
    /// Step cache keys the holder reads or writes.
    pub cache_keys: Vec<Digest>,
}

/// A live lease held by this process; released (and its files removed) on drop.
#[derive(Debug)]
pub struct Lease {
    id: String,
    json: PathBuf,
    /// `<id>.lock` (the lock itself was taken under the temp name).
    lock_path: PathBuf,
    record: LeaseRecord,
    // Declared last so it is released after the files are gone.
    _lock: FileLock,
}

/// A live lease of some process, as found by [`live_leases`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LiveLease {
    /// The lease id (file stem).
    pub id: String,
    /// Its record (default when the holder has not written it yet).
    pub record: LeaseRecord,
}

/// The directory holding the leases of the store at `store_root`.
pub fn lease_dir(store_root: &Path) -> PathBuf {
    store_root.join("leases")
}

impl Lease {
    /// Takes a new lease on the store at `store_root` for `purpose`,
    /// naming `manifests`, `blobs` and `cache_keys`. The caller's pid and
    /// the current time are filled in.
    pub fn acquire(
        store_root: &Path,
        purpose: &str,
        manifests: Vec<Digest>,
        blobs: Vec<Digest>,
        cache_keys: Vec<Digest>,
    ) -> Result<Lease> {
        let dir = lease_dir(store_root);
        fs::create_dir_all(&dir).map_err(|e| Error::io("create directory", &dir, e))?;
        let temp = tempfile::Builder::new()
            .prefix(TEMP_PREFIX)
            .suffix(".lock")
            .tempfile_in(&dir)
            .map_err(|e| Error::io("create temp file in", &dir, e))?;
        let (_, temp_path) = temp
            .keep()
            .map_err(|e| Error::io("keep temp file", &dir, e.error))?;
        let lock = match FileLock::exclusive(&temp_path) {
            Ok(l) => l,
            Err(e) => {
                let _ = fs::remove_file(&temp_path);
                return Err(e);
            }
        };
        let created = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let id = format!(
            "{created}-{}-{}",
            std::process::id(),
            random_suffix(&temp_path)
        );
        let lock_path = dir.join(format!("{id}.lock"));
        fs::rename(&temp_path, &lock_path).map_err(|e| {
            let _ = fs::remove_file(&temp_path);
            Error::io("rename lease lock to", &lock_path, e)
        })?;
        let lease = Lease {
            json: dir.join(format!("{id}.json")),
            lock_path,
            id,
            record: LeaseRecord {
                pid: std::process::id(),
                created,
                purpose: purpose.to_string(),
                manifests,
                blobs,
                cache_keys,
            },
            _lock: lock,
        };
        lease.write()?;
        Ok(lease)
    }

    /// The lease id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// What the lease names.
    pub fn record(&self) -> &LeaseRecord {
        &self.record
    }

    /// Adds blobs the holder has produced or needs (written atomically).
    pub fn add_blobs(&mut self, blobs: impl IntoIterator<Item = Digest>) -> Result<()> {
        let before = self.record.blobs.len();
        for b in blobs {
            if !self.record.blobs.contains(&b) {
                self.record.blobs.push(b);
            }
        }
        if self.record.blobs.len() == before {
            return Ok(());
        }
        self.write()
    }

    fn write(&self) -> Result<()> {
        let data = serde_json::to_vec(&self.record).map_err(|source| Error::Encode {
            what: format!("lease {}", self.id),
            source,
        })?;
        write_atomic(&self.json, &data)
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        // Record first: a lock file without a record is a live lease naming
        // nothing, never a record without a lock.
        let _ = fs::remove_file(&self.json);
        let _ = fs::remove_file(&self.lock_path);
    }
}

/// A few characters that tell two leases of one process apart: the unique
/// part of the temp file name the lock was created under.
fn random_suffix(temp_path: &Path) -> String {
    temp_path
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix(TEMP_PREFIX))
        .and_then(|n| n.strip_suffix(".lock"))
        .unwrap_or("0")
        .to_string()
}

/// The leases of live processes. Stale leases met on the way are left in
/// place (see [`stale_leases`]).
pub fn live_leases(store_root: &Path) -> Result<Vec<LiveLease>> {
    let mut out = Vec::new();
    for (id, lock_path, json) in lease_files(store_root)? {
        // Only a held lock is a live lease: a missing one has just been
        // released by a finished build, a free one belongs to a dead one.
        // Probing never creates a lock file a finished build removed.
        if !matches!(FileLock::probe(&lock_path)?, Probe::Busy) {
            continue;
        }
        let record = match fs::read(&json) {
            Ok(data) => serde_json::from_slice(&data).unwrap_or_default(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => LeaseRecord::default(),
            Err(e) => return Err(Error::io("read", json, e)),
        };
        out.push(LiveLease { id, record });
    }
    Ok(out)
}

/// Files of leases whose holder is gone: lock files nobody holds and
/// records without a held lock. Temp files of a lease being taken are left
/// to [`crate::stray_temp_files`].
pub fn stale_leases(store_root: &Path) -> Result<Vec<PathBuf>> {
    let dir = lease_dir(store_root);
    let mut out = Vec::new();
    for entry in lease_dir_entries(&dir)? {
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(TEMP_PREFIX) {
            // Half-written records and locks of a lease being taken: stray
            // temp files (`stray_temp_files`), removed only when no rbuild runs.
            continue;
        }
        if let Some(stem) = name.strip_suffix(".json") {
            let lock = dir.join(format!("{stem}.lock"));
            if !matches!(FileLock::probe(&lock)?, Probe::Busy) {
                out.push(path);
            }
        } else if !name.ends_with(".lock") || matches!(FileLock::probe(&path)?, Probe::Free(_)) {
            // An unheld lock, or a file that is no part of a lease.
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

/// Removes the files of stale leases (see [`stale_leases`]); returns what
/// was removed. Safe while builds run: a live lease's lock cannot be taken.
pub fn remove_stale_leases(store_root: &Path) -> Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    for path in stale_leases(store_root)? {
        // Re-check under the lock: the holder may have just finished and
        // removed it, which is fine, but a lock file is only removed while
        // this process holds it.
        let guard = if path.extension().is_some_and(|e| e == "lock") {
            match FileLock::probe(&path)? {
                Probe::Free(g) => Some(g),
                Probe::Busy | Probe::Missing => continue,
            }
        } else {
            None
        };
        match fs::remove_file(&path) {
            Ok(()) => removed.push(path),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("remove", path, e)),
        }
        drop(guard);
    }
    Ok(removed)
}

/// `(id, lock path, record path)` of every `<id>.lock` in the lease directory.
fn lease_files(store_root: &Path) -> Result<Vec<(String, PathBuf, PathBuf)>> {
    let dir = lease_dir(store_root);
    let mut out = Vec::new();
    for entry in lease_dir_entries(&dir)? {
        let name = entry.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".lock")) else {
            continue;
        };
        if stem.starts_with(TEMP_PREFIX) {
            continue;
        }
        out.push((
            stem.to_string(),
            entry.path(),
            dir.join(format!("{stem}.json")),
        ));
    }
    out.sort();
    Ok(out)
}

/// The entries of the lease directory; none when it does not exist yet.
fn lease_dir_entries(dir: &Path) -> Result<Vec<fs::DirEntry>> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io("read directory", dir, e)),
    };
    rd.map(|e| e.map_err(|e| Error::io("read directory", dir, e)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_lease_is_listed_and_gone_after_drop() {
        let root = tempfile::tempdir().unwrap();
        let m = Digest::of_bytes(b"manifest");
        let k = Digest::of_bytes(b"key");
        let mut lease = Lease::acquire(root.path(), "build", vec![m], vec![], vec![k]).unwrap();
        let b = Digest::of_bytes(b"blob");
        lease.add_blobs([b, b]).unwrap();
        let live = live_leases(root.path()).unwrap();
        assert_eq!(live.len(), 1);
        assert_eq!(live[0].id, lease.id());
        assert_eq!(live[0].record.manifests, vec![m]);
        assert_eq!(live[0].record.blobs, vec![b]);
        assert_eq!(live[0].record.cache_keys, vec![k]);
        assert_eq!(live[0].record.pid, std::process::id());
        assert!(stale_leases(root.path()).unwrap().is_empty());
        assert!(remove_stale_leases(root.path()).unwrap().is_empty());
        drop(lease);
        assert!(live_leases(root.path()).unwrap().is_empty());
        assert_eq!(fs::read_dir(lease_dir(root.path())).unwrap().count(), 0);
    }

    #[test]
    fn unlocked_lease_is_stale_and_removed() {
        let root = tempfile::tempdir().unwrap();
        let lease = Lease::acquire(root.path(), "build", vec![], vec![], vec![]).unwrap();
        let id = lease.id().to_string();
        // A killed holder leaves its files with nobody holding the lock:
        // leak the lease (files stay) and put an unlocked inode in place of
        // the lock file, as the kernel's release at exit would leave it.
        std::mem::forget(lease);
        let dir = lease_dir(root.path());
        let lock = dir.join(format!("{id}.lock"));
        fs::remove_file(&lock).unwrap();
        fs::write(&lock, b"").unwrap();
        // A record whose lock never made it, and a stray file.
        fs::write(dir.join("1-2-x.json"), b"{}").unwrap();
        fs::write(dir.join("junk"), b"").unwrap();
        // A lock still under its temp name is a temp file, not a lease.
        fs::write(dir.join(format!("{TEMP_PREFIX}abc.lock")), b"").unwrap();
        assert!(live_leases(root.path()).unwrap().is_empty());
        let stale = stale_leases(root.path()).unwrap();
        assert_eq!(stale.len(), 4, "{stale:?}");
        assert_eq!(remove_stale_leases(root.path()).unwrap(), stale);
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1);
        assert_eq!(
            crate::stray_temp_files(root.path()).unwrap(),
            vec![dir.join(format!("{TEMP_PREFIX}abc.lock"))]
        );
    }

    #[test]
    fn two_leases_of_one_process_are_distinct() {
        let root = tempfile::tempdir().unwrap();
        let a = Lease::acquire(root.path(), "build", vec![], vec![], vec![]).unwrap();
        let b = Lease::acquire(root.path(), "build", vec![], vec![], vec![]).unwrap();
        assert_ne!(a.id(), b.id());
        assert_eq!(live_leases(root.path()).unwrap().len(), 2);
    }
}
