//! The stat cache: content digests of build-context files, reused while a
//! file's `stat` is unchanged, so a no-op rebuild reads no file contents.
//!
//! One cache file per scope (a context directory, say) lives at
//! `root/statcache/<sha256(scope)>`. An entry is valid only while the file's
//! device, inode, size, mtime (ns), ctime (ns) and mode are all unchanged;
//! ctime catches `touch -m` back-dating and content rewrites that preserve
//! mtime.
//!
//! Racy entries (Git's "racily clean" problem): a file modified in the same
//! filesystem clock tick in which its digest was recorded keeps its stat
//! while its content changes. Entries whose mtime or ctime is not strictly
//! older than the cache file's own mtime (stamped by the same clock) are
//! therefore not trusted after a load: they are hashed again.
//!
//! On-disk format (little endian): magic `RBSTAT02`, entry count `u32`, then
//! per entry, sorted by path bytes: path length `u32`, path bytes, dev
//! `u64`, inode `u64`, size `u64`, mtime ns `i64`, ctime ns `i64`, mode
//! `u32`, sha256 `[u8; 32]`; then a CRC-32 of everything before it. Loading
//! reads the file once, checks the CRC and records where each entry starts;
//! lookups binary-search the loaded bytes, so a 20 000-entry cache loads in
//! a few milliseconds. A file that fails to decode is an empty cache, never
//! an error: the cache is only an accelerator.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{self, Metadata};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::atomic::write_atomic;
use crate::error::{Error, Result};
use crate::Digest;

const MAGIC: &[u8; 8] = b"RBSTAT02";
/// Bytes of an entry after its path: five u64/i64, one u32, 32 digest bytes.
const FIXED: usize = 5 * 8 + 4 + 32;

/// The stat fields an entry is keyed by.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Stat {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i64,
    ctime_ns: i64,
    mode: u32,
}

impl Stat {
    fn of(m: &Metadata) -> Stat {
        Stat {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime_ns: m.mtime().saturating_mul(1_000_000_000) + m.mtime_nsec(),
            ctime_ns: m.ctime().saturating_mul(1_000_000_000) + m.ctime_nsec(),
            mode: m.mode(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    stat: Stat,
    digest: Digest,
}

/// The entries of the cache file as loaded: its bytes, and the offset of
/// each entry's path length field, in path order.
#[derive(Debug, Default)]
struct Table {
    data: Vec<u8>,
    offsets: Vec<u32>,
    /// Entries stamped at or after this time (the file's mtime) are racy.
    written_ns: i64,
}

impl Table {
    fn path_at(&self, off: u32) -> &[u8] {
        let off = off as usize;
        let len = u32::from_le_bytes(self.data[off..off + 4].try_into().expect("4 bytes")) as usize;
        &self.data[off + 4..off + 4 + len]
    }

    fn entry_at(&self, off: u32) -> Entry {
        let start = off as usize + 4 + self.path_at(off).len();
        let f = &self.data[start..start + FIXED];
        let u64_at = |i: usize| u64::from_le_bytes(f[i..i + 8].try_into().expect("8 bytes"));
        Entry {
            stat: Stat {
                dev: u64_at(0),
                ino: u64_at(8),
                size: u64_at(16),
                mtime_ns: u64_at(24) as i64,
                ctime_ns: u64_at(32) as i64,
                mode: u32::from_le_bytes(f[40..44].try_into().expect("4 bytes")),
            },
            digest: Digest::from_raw(f[44..76].try_into().expect("32 bytes")),
        }
    }

    /// The trusted entry for `path`, if any.
    fn get(&self, path: &[u8]) -> Option<Entry> {
        let i = self
            .offsets
            .binary_search_by(|&off| self.path_at(off).cmp(path))
            .ok()?;
        let e = self.entry_at(self.offsets[i]);
        self.trusted(&e).then_some(e)
    }

    /// Whether an entry was recorded strictly after its file last changed.
    fn trusted(&self, e: &Entry) -> bool {
        e.stat.mtime_ns < self.written_ns && e.stat.ctime_ns < self.written_ns
    }

    fn iter(&self) -> impl Iterator<Item = (&[u8], Entry)> + '_ {
        self.offsets
            .iter()
            .map(|&off| (self.path_at(off), self.entry_at(off)))
    }

    /// Checks the CRC and the structure (entries in strictly increasing
    /// path order, nothing left over) and indexes the entries.
    fn decode(data: Vec<u8>, written_ns: i64) -> Option<Table> {
        let body_len = data.len().checked_sub(4)?;
        let crc = u32::from_le_bytes(data[body_len..].try_into().ok()?);
        if crc32fast::hash(&data[..body_len]) != crc || !data.starts_with(MAGIC) {
            return None;
        }
        let count = u32::from_le_bytes(data.get(8..12)?.try_into().ok()?) as usize;
        // Each entry takes more than FIXED bytes: bound the allocation by the input.
        let mut offsets = Vec::with_capacity(count.min(body_len / FIXED));
        let mut pos = 12usize;
        let mut prev: Option<&[u8]> = None;
        for _ in 0..count {
            let len = u32::from_le_bytes(data.get(pos..pos + 4)?.try_into().ok()?) as usize;
            let path = data.get(pos + 4..pos + 4 + len)?;
            if prev.is_some_and(|p| p >= path) {
                return None;
            }
            prev = Some(path);
            offsets.push(u32::try_from(pos).ok()?);
            pos = pos + 4 + len + FIXED;
            if pos > body_len {
                return None;
            }
        }
        if pos != body_len {
            return None;
        }
        Some(Table {
            data,
            offsets,
            written_ns,
        })
    }
}

/// What changed since the load: new or replaced entries, and whether
/// entries of the loaded table were dropped by [`StatCache::retain`].
#[derive(Debug, Default)]
struct Changes {
    added: HashMap<Vec<u8>, Entry>,
    /// When set, the loaded table no longer counts (its live entries were
    /// moved into `added`).
    table_dropped: bool,
}

/// File-content digests of one scope, keyed by relative path and stat.
/// Lookups and inserts take `&self` and may run from many threads (rayon).
#[derive(Debug)]
pub struct StatCache {
    path: PathBuf,
    table: Table,
    changes: RwLock<Changes>,
    dirty: AtomicBool,
}

impl StatCache {
    /// Loads the cache of `scope_id` (any string naming the scope, such as
    /// the canonical context directory) from the store at `store_root`; a
    /// missing or undecodable cache file gives an empty cache.
    pub fn load(store_root: &Path, scope_id: &str) -> Result<StatCache> {
        let path = store_root
            .join("statcache")
            .join(Digest::of_bytes(scope_id.as_bytes()).hex());
        let table = match fs::read(&path) {
            Ok(data) => {
                let meta = fs::metadata(&path).map_err(|e| Error::io("stat", &path, e))?;
                Table::decode(data, Stat::of(&meta).mtime_ns).unwrap_or_default()
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Table::default(),
            Err(e) => return Err(Error::io("read", path, e)),
        };
        Ok(StatCache {
            path,
            table,
            changes: RwLock::new(Changes::default()),
            dirty: AtomicBool::new(false),
        })
    }

    /// The file this cache is saved to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Number of trusted entries.
    pub fn len(&self) -> usize {
        self.merged().len()
    }

    /// Whether the cache has no trusted entries.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The recorded digest of `rel_path`, if its stat is unchanged.
    pub fn lookup(&self, rel_path: impl AsRef<Path>, meta: &Metadata) -> Option<Digest> {
        let key = rel_path.as_ref().as_os_str().as_bytes();
        let stat = Stat::of(meta);
        let changes = self.read_changes();
        let entry = match changes.added.get(key) {
            Some(e) => Some(*e),
            None if changes.table_dropped => None,
            None => self.table.get(key),
        };
        entry.filter(|e| e.stat == stat).map(|e| e.digest)
    }

    /// Records the digest of `rel_path` as hashed with stat `meta` (take the
    /// metadata before reading the content, so a concurrent change is seen
    /// as a change next time).
    pub fn insert(&self, rel_path: impl AsRef<Path>, meta: &Metadata, digest: Digest) {
        let key = rel_path.as_ref().as_os_str().as_bytes();
        let entry = Entry {
            stat: Stat::of(meta),
            digest,
        };
        let mut changes = self.write_changes();
        let known = match changes.added.get(key) {
            Some(e) => Some(*e),
            None if changes.table_dropped => None,
            None => self.table.get(key),
        };
        if known != Some(entry) {
            changes.added.insert(key.to_vec(), entry);
            self.dirty.store(true, Ordering::Relaxed);
        }
    }

    /// Removes entries for which `keep(rel_path)` is false (files that left
    /// the context), so the cache does not grow without bound.
    pub fn retain(&self, mut keep: impl FnMut(&Path) -> bool) {
        let mut all = self.merged();
        let before = all.len();
        all.retain(|k, _| keep(Path::new(OsStr::from_bytes(k))));
        let mut changes = self.write_changes();
        if all.len() != before || !changes.table_dropped {
            changes.added = all;
            changes.table_dropped = true;
            self.dirty.store(true, Ordering::Relaxed);
        }
    }

    /// Writes the cache atomically if anything changed since it was loaded.
    pub fn save(&self) -> Result<()> {
        if !self.dirty.load(Ordering::Relaxed) {
            return Ok(());
        }
        let data = encode(&self.merged());
        let dir = crate::atomic::parent_dir(&self.path);
        fs::create_dir_all(dir).map_err(|e| Error::io("create directory", dir, e))?;
        write_atomic(&self.path, &data)?;
        self.dirty.store(false, Ordering::Relaxed);
        Ok(())
    }

    /// Every trusted entry: the loaded table overlaid with the changes.
    fn merged(&self) -> HashMap<Vec<u8>, Entry> {
        let changes = self.read_changes();
        let mut all: HashMap<Vec<u8>, Entry> = HashMap::new();
        if !changes.table_dropped {
            for (k, e) in self.table.iter() {
                if self.table.trusted(&e) {
                    all.insert(k.to_vec(), e);
                }
            }
        }
        all.extend(changes.added.iter().map(|(k, e)| (k.clone(), *e)));
        all
    }

    // A panic in another thread while it held the lock cannot leave a
    // half-inserted entry (HashMap::insert is not observable midway), so
    // the data is still sound after poisoning.
    fn read_changes(&self) -> RwLockReadGuard<'_, Changes> {
        self.changes.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write_changes(&self) -> RwLockWriteGuard<'_, Changes> {
        self.changes.write().unwrap_or_else(|p| p.into_inner())
    }
}

fn encode(map: &HashMap<Vec<u8>, Entry>) -> Vec<u8> {
    // Sorted by path bytes: the order lookups binary-search in.
    let mut items: Vec<_> = map.iter().collect();
    items.sort_by(|a, b| a.0.cmp(b.0));
    let mut out = Vec::with_capacity(16 + items.len() * (FIXED + 40));
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(items.len() as u32).to_le_bytes());
    for (path, e) in items {
        out.extend_from_slice(&(path.len() as u32).to_le_bytes());
        out.extend_from_slice(path);
        out.extend_from_slice(&e.stat.dev.to_le_bytes());
        out.extend_from_slice(&e.stat.ino.to_le_bytes());
        out.extend_from_slice(&e.stat.size.to_le_bytes());
        out.extend_from_slice(&e.stat.mtime_ns.to_le_bytes());
        out.extend_from_slice(&e.stat.ctime_ns.to_le_bytes());
        out.extend_from_slice(&e.stat.mode.to_le_bytes());
        out.extend_from_slice(e.digest.as_raw());
    }
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// Stat of a file whose timestamps are back-dated well before now, so its
    /// entry is not racy when the cache is saved.
    fn old_file(path: &Path, content: &[u8]) -> Metadata {
        fs::write(path, content).unwrap();
        let f = fs::File::options().write(true).open(path).unwrap();
        f.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000))
            .unwrap();
        fs::metadata(path).unwrap()
    }

    #[test]
    fn round_trip_and_invalidation() {
        let root = tempfile::tempdir().unwrap();
        let ctx = tempfile::tempdir().unwrap();
        let a = ctx.path().join("a");
        let meta = old_file(&a, b"aaa");
        let d = Digest::of_bytes(b"aaa");
        let c = StatCache::load(root.path(), "ctx").unwrap();
        assert!(c.is_empty());
        assert_eq!(c.lookup("a", &meta), None);
        c.insert("a", &meta, d);
        assert_eq!(c.lookup("a", &meta), Some(d));
        assert_eq!(c.lookup("b", &meta), None);
        c.save().unwrap();

        // A different scope shares nothing.
        assert!(StatCache::load(root.path(), "other").unwrap().is_empty());

        // ctime of `a` is "now"; the cache file was written after it, in a
        // later or the same clock tick. Rewrite the cache file with a
        // far-future mtime so the entry is not racy, and reload.
        let f = fs::File::options().write(true).open(c.path()).unwrap();
        f.set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(3600))
            .unwrap();
        let c2 = StatCache::load(root.path(), "ctx").unwrap();
        assert_eq!(c2.lookup("a", &meta), Some(d));

        // Mode change invalidates.
        fs::set_permissions(&a, fs::Permissions::from_mode(0o600)).unwrap();
        let m2 = fs::metadata(&a).unwrap();
        assert_eq!(c2.lookup("a", &m2), None);

        // Content rewrite with same size and restored mtime: ctime differs.
        let meta3 = old_file(&a, b"bbb");
        assert_eq!(meta3.mtime(), meta.mtime());
        assert_eq!(c2.lookup("a", &meta3), None);
    }

    #[test]
    fn racy_entries_are_dropped_on_load() {
        let root = tempfile::tempdir().unwrap();
        let ctx = tempfile::tempdir().unwrap();
        let a = ctx.path().join("a");
        let meta = old_file(&a, b"x");
        let c = StatCache::load(root.path(), "ctx").unwrap();
        c.insert("a", &meta, Digest::of_bytes(b"x"));
        c.save().unwrap();
        // Make the cache file look written before the file's ctime: the
        // entry may have been recorded in the same tick as a later write.
        let f = fs::File::options().write(true).open(c.path()).unwrap();
        f.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(5))
            .unwrap();
        assert!(StatCache::load(root.path(), "ctx").unwrap().is_empty());
    }

    #[test]
    fn corrupt_file_is_an_empty_cache() {
        let root = tempfile::tempdir().unwrap();
        let c = StatCache::load(root.path(), "s").unwrap();
        let meta = fs::metadata(root.path()).unwrap();
        c.insert("x", &meta, Digest::of_bytes(b"x"));
        c.save().unwrap();
        let mut data = fs::read(c.path()).unwrap();
        data[12] ^= 0xff;
        fs::write(c.path(), &data).unwrap();
        assert!(StatCache::load(root.path(), "s").unwrap().is_empty());
        fs::write(c.path(), b"short").unwrap();
        assert!(StatCache::load(root.path(), "s").unwrap().is_empty());
    }

    #[test]
    fn decode_rejects_truncation_and_trailing_bytes() {
        let mut map = HashMap::new();
        let stat = Stat {
            dev: 1,
            ino: 2,
            size: 3,
            mtime_ns: 4,
            ctime_ns: 5,
            mode: 0o100644,
        };
        map.insert(
            b"dir/f".to_vec(),
            Entry {
                stat,
                digest: Digest::of_bytes(b"f"),
            },
        );
        map.insert(
            b"a".to_vec(),
            Entry {
                stat,
                digest: Digest::of_bytes(b"a"),
            },
        );
        let enc = encode(&map);
        let dec = Table::decode(enc.clone(), i64::MAX).unwrap();
        assert_eq!(dec.get(b"dir/f").unwrap().stat, stat);
        assert_eq!(dec.get(b"a").unwrap().digest, Digest::of_bytes(b"a"));
        assert_eq!(dec.get(b"b"), None);
        // Racy against an earlier write time.
        assert_eq!(Table::decode(enc.clone(), 5).unwrap().get(b"dir/f"), None);
        for cut in 0..enc.len() {
            assert!(
                Table::decode(enc[..cut].to_vec(), i64::MAX).is_none(),
                "cut at {cut}"
            );
        }
        let mut extra = enc.clone();
        extra.insert(enc.len() - 4, 0);
        assert!(Table::decode(extra, i64::MAX).is_none());
    }

    #[test]
    fn twenty_thousand_entries_from_many_threads() {
        use rayon::prelude::*;
        let root = tempfile::tempdir().unwrap();
        let meta = fs::metadata(root.path()).unwrap();
        let c = StatCache::load(root.path(), "big").unwrap();
        (0..20_000u32).into_par_iter().for_each(|i| {
            let p = format!("dir{}/file{i}", i % 37);
            c.insert(&p, &meta, Digest::of_bytes(p.as_bytes()));
        });
        (0..20_000u32).into_par_iter().for_each(|i| {
            let p = format!("dir{}/file{i}", i % 37);
            assert_eq!(c.lookup(&p, &meta), Some(Digest::of_bytes(p.as_bytes())));
        });
        c.save().unwrap();
        let f = fs::File::options().write(true).open(c.path()).unwrap();
        f.set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(3600))
            .unwrap();
        let c2 = StatCache::load(root.path(), "big").unwrap();
        assert_eq!(c2.len(), 20_000);
        c2.retain(|p| !p.starts_with("dir0"));
        assert_eq!(c2.len(), 20_000 - 541);
    }

    #[test]
    fn save_without_changes_writes_nothing() {
        let root = tempfile::tempdir().unwrap();
        let c = StatCache::load(root.path(), "s").unwrap();
        c.save().unwrap();
        assert!(!c.path().exists());
    }
}
