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
//! therefore dropped on load and hashed again.
//!
//! On-disk format (little endian): magic `RBSTAT01`, entry count `u32`, then
//! per entry: path length `u32`, path bytes, dev `u64`, inode `u64`, size
//! `u64`, mtime ns `i64`, ctime ns `i64`, mode `u32`, sha256 `[u8; 32]`;
//! then a sha256 of everything before it. A file that fails to decode is an
//! empty cache, never an error: the cache is only an accelerator.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{self, Metadata};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::RwLock;

use crate::atomic::write_atomic;
use crate::error::{Error, Result};
use crate::Digest;

const MAGIC: &[u8; 8] = b"RBSTAT01";

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

#[derive(Clone, Copy, Debug)]
struct Entry {
    stat: Stat,
    digest: Digest,
}

/// File-content digests of one scope, keyed by relative path and stat.
/// Lookups and inserts take `&self` and may run from many threads (rayon).
#[derive(Debug)]
pub struct StatCache {
    path: PathBuf,
    entries: RwLock<HashMap<Vec<u8>, Entry>>,
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
        let entries = match fs::read(&path) {
            Ok(data) => {
                let meta = fs::metadata(&path).map_err(|e| Error::io("stat", &path, e))?;
                let written_ns = Stat::of(&meta).mtime_ns;
                decode(&data)
                    .map(|mut m| {
                        m.retain(|_, e| {
                            e.stat.mtime_ns < written_ns && e.stat.ctime_ns < written_ns
                        });
                        m
                    })
                    .unwrap_or_default()
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => HashMap::new(),
            Err(e) => return Err(Error::io("read", path, e)),
        };
        Ok(StatCache {
            path,
            entries: RwLock::new(entries),
            dirty: AtomicBool::new(false),
        })
    }

    /// The file this cache is saved to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.read_entries().len()
    }

    /// Whether the cache has no entries.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The recorded digest of `rel_path`, if its stat is unchanged.
    pub fn lookup(&self, rel_path: impl AsRef<Path>, meta: &Metadata) -> Option<Digest> {
        let key = rel_path.as_ref().as_os_str().as_bytes();
        let stat = Stat::of(meta);
        self.read_entries()
            .get(key)
            .filter(|e| e.stat == stat)
            .map(|e| e.digest)
    }

    /// Records the digest of `rel_path` as hashed with stat `meta` (take the
    /// metadata before reading the content, so a concurrent change is seen
    /// as a change next time).
    pub fn insert(&self, rel_path: impl AsRef<Path>, meta: &Metadata, digest: Digest) {
        let key = rel_path.as_ref().as_os_str().as_bytes().to_vec();
        let entry = Entry {
            stat: Stat::of(meta),
            digest,
        };
        let mut map = self.entries.write().unwrap_or_else(|p| p.into_inner());
        let changed = map
            .insert(key, entry)
            .is_none_or(|old| old.stat != entry.stat || old.digest != entry.digest);
        if changed {
            self.dirty.store(true, Ordering::Relaxed);
        }
    }

    /// Removes entries for which `keep(rel_path)` is false (files that left
    /// the context), so the cache does not grow without bound.
    pub fn retain(&self, mut keep: impl FnMut(&Path) -> bool) {
        let mut map = self.entries.write().unwrap_or_else(|p| p.into_inner());
        let before = map.len();
        map.retain(|k, _| keep(Path::new(OsStr::from_bytes(k))));
        if map.len() != before {
            self.dirty.store(true, Ordering::Relaxed);
        }
    }

    /// Writes the cache atomically if anything changed since it was loaded.
    pub fn save(&self) -> Result<()> {
        if !self.dirty.load(Ordering::Relaxed) {
            return Ok(());
        }
        let data = encode(&self.read_entries());
        let dir = crate::atomic::parent_dir(&self.path);
        fs::create_dir_all(dir).map_err(|e| Error::io("create directory", dir, e))?;
        write_atomic(&self.path, &data)?;
        self.dirty.store(false, Ordering::Relaxed);
        Ok(())
    }

    fn read_entries(&self) -> std::sync::RwLockReadGuard<'_, HashMap<Vec<u8>, Entry>> {
        // A panic in another thread while it held the lock cannot leave a
        // half-inserted entry (HashMap::insert is not observable midway), so
        // the data is still sound.
        self.entries.read().unwrap_or_else(|p| p.into_inner())
    }
}

fn encode(map: &HashMap<Vec<u8>, Entry>) -> Vec<u8> {
    // Sorted so that equal caches give equal files.
    let mut items: Vec<_> = map.iter().collect();
    items.sort_by(|a, b| a.0.cmp(b.0));
    let mut out = Vec::with_capacity(16 + items.len() * 112);
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
    let sum = Digest::of_bytes(&out);
    out.extend_from_slice(sum.as_raw());
    out
}

/// A cursor over the encoded bytes; every read is bounds-checked.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }
}

fn decode(data: &[u8]) -> Option<HashMap<Vec<u8>, Entry>> {
    let body_len = data.len().checked_sub(32)?;
    let (body, sum) = data.split_at(body_len);
    if Digest::of_bytes(body).as_raw()[..] != sum[..] {
        return None;
    }
    let mut c = Cursor(body);
    if c.take(8)? != MAGIC {
        return None;
    }
    let count = u32::from_le_bytes(c.array()?) as usize;
    // Each entry takes at least 80 bytes: bound the allocation by the input.
    let mut map = HashMap::with_capacity(count.min(body.len() / 80));
    for _ in 0..count {
        let len = u32::from_le_bytes(c.array()?) as usize;
        let path = c.take(len)?.to_vec();
        let stat = Stat {
            dev: u64::from_le_bytes(c.array()?),
            ino: u64::from_le_bytes(c.array()?),
            size: u64::from_le_bytes(c.array()?),
            mtime_ns: i64::from_le_bytes(c.array()?),
            ctime_ns: i64::from_le_bytes(c.array()?),
            mode: u32::from_le_bytes(c.array()?),
        };
        let digest = Digest::from_raw(c.array()?);
        map.insert(path, Entry { stat, digest });
    }
    c.0.is_empty().then_some(map)
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
        let enc = encode(&map);
        let dec = decode(&enc).unwrap();
        assert_eq!(dec[&b"dir/f".to_vec()].stat, stat);
        for cut in 0..enc.len() {
            assert!(decode(&enc[..cut]).is_none(), "cut at {cut}");
        }
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
