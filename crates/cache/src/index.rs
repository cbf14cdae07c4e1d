//! The step cache index: `root/cache/<key-hex>.json`, one JSON record per
//! cache key. The record type belongs to the caller (the solver); this
//! module only stores it atomically and finds it again.

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::atomic::write_atomic;
use crate::error::{Error, Result};
use crate::{Digest, DigestError};

/// The cache key of a build step: a sha256 over a canonical encoding of
/// everything that determines the step's result.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CacheKey(pub Digest);

impl CacheKey {
    /// The digest the key is.
    pub fn digest(&self) -> &Digest {
        &self.0
    }
}

impl From<Digest> for CacheKey {
    fn from(d: Digest) -> CacheKey {
        CacheKey(d)
    }
}

impl fmt::Display for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for CacheKey {
    type Err = DigestError;

    fn from_str(s: &str) -> Result<CacheKey, DigestError> {
        s.parse().map(CacheKey)
    }
}

/// The on-disk map from [`CacheKey`] to a caller-defined record.
#[derive(Clone, Debug)]
pub struct CacheIndex {
    dir: PathBuf,
}

impl CacheIndex {
    /// Opens (creating if needed) the index under `store_root/cache`.
    pub fn open(store_root: &Path) -> Result<CacheIndex> {
        let dir = store_root.join("cache");
        fs::create_dir_all(&dir).map_err(|e| Error::io("create directory", &dir, e))?;
        Ok(CacheIndex { dir })
    }

    /// The file holding a key's record.
    pub fn path(&self, key: &CacheKey) -> PathBuf {
        self.dir.join(format!("{}.json", key.0.hex()))
    }

    /// The record stored under `key`, if any.
    ///
    /// A record that no longer decodes as `T` (written by an older rbuild
    /// with another record format) is a cache miss, not an error: the step
    /// simply runs again and overwrites it.
    pub fn get<T: DeserializeOwned>(&self, key: &CacheKey) -> Result<Option<T>> {
        let p = self.path(key);
        let data = match fs::read(&p) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io("read", p, e)),
        };
        Ok(serde_json::from_slice(&data).ok())
    }

    /// Stores `record` under `key` atomically (replacing any older one).
    pub fn put<T: Serialize>(&self, key: &CacheKey, record: &T) -> Result<()> {
        let data = serde_json::to_vec(record).map_err(|source| Error::Encode {
            what: format!("cache record {key}"),
            source,
        })?;
        write_atomic(&self.path(key), &data)
    }

    /// Marks a record as used now (its file's mtime), for pruning by age or
    /// least-recent use; `false` if there is no record.
    pub fn touch(&self, key: &CacheKey) -> Result<bool> {
        let p = self.path(key);
        match fs::File::options().write(true).open(&p) {
            Ok(f) => f
                .set_modified(std::time::SystemTime::now())
                .map(|()| true)
                .map_err(|e| Error::io("touch", p, e)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(Error::io("open", p, e)),
        }
    }

    /// When a record was last written or [touched](CacheIndex::touch).
    pub fn last_used(&self, key: &CacheKey) -> Result<Option<std::time::SystemTime>> {
        let p = self.path(key);
        match fs::metadata(&p).and_then(|m| m.modified()) {
            Ok(t) => Ok(Some(t)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io("stat", p, e)),
        }
    }

    /// Deletes a key's record; `false` if there was none.
    pub fn remove(&self, key: &CacheKey) -> Result<bool> {
        let p = self.path(key);
        match fs::remove_file(&p) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(Error::io("remove", p, e)),
        }
    }

    /// The blobs `key`'s record refers to (see [`record_blobs`]): `None`
    /// when there is no record, `Some(Err(..))` when it is not JSON.
    pub fn blobs_of(&self, key: &CacheKey) -> Result<Option<Result<Vec<Digest>, String>>> {
        Ok(self.read_raw(key)?.map(|data| record_blobs(&data)))
    }

    /// The raw bytes of `key`'s record, if any (for maintenance that
    /// follows records without knowing their type, see [`record_digests`]).
    pub fn read_raw(&self, key: &CacheKey) -> Result<Option<Vec<u8>>> {
        let p = self.path(key);
        match fs::read(&p) {
            Ok(data) => Ok(Some(data)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io("read", p, e)),
        }
    }

    /// Every key with a record, sorted (for `check`, `du` and `prune`).
    pub fn keys(&self) -> Result<Vec<CacheKey>> {
        let mut out = Vec::new();
        let rd = fs::read_dir(&self.dir).map_err(|e| Error::io("read directory", &self.dir, e))?;
        for entry in rd {
            let entry = entry.map_err(|e| Error::io("read directory", &self.dir, e))?;
            let name = entry.file_name();
            if let Some(d) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".json"))
                .and_then(|h| Digest::from_hex(h).ok())
            {
                out.push(CacheKey(d));
            }
        }
        out.sort();
        Ok(out)
    }
}

/// The blobs a cache record (JSON) refers to. By the convention every
/// record follows, a field named `digest` holding a `sha256:` digest names
/// a blob of the store, at any depth; other digests (diffIDs, file
/// digests, parent keys) use other field names. This lets maintenance
/// (`check`, `du`, `prune`) follow records without knowing their type.
pub fn record_blobs(json: &[u8]) -> Result<Vec<Digest>, String> {
    record_digests(json, "digest")
}

/// The `sha256:` digests held by fields named `field` anywhere in a JSON
/// record, sorted and deduplicated (`"diff_id"` gives the layers' diffIDs).
pub fn record_digests(json: &[u8], field: &str) -> Result<Vec<Digest>, String> {
    let value: serde_json::Value = serde_json::from_slice(json).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    let mut stack = vec![&value];
    while let Some(v) = stack.pop() {
        match v {
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    match v {
                        serde_json::Value::String(s) if k == field => {
                            if let Ok(d) = s.parse::<Digest>() {
                                out.push(d);
                            }
                        }
                        _ => stack.push(v),
                    }
                }
            }
            serde_json::Value::Array(items) => stack.extend(items),
            _ => {}
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct Rec {
        layer: Option<Digest>,
        note: String,
    }

    #[test]
    fn put_get_remove() {
        let dir = tempfile::tempdir().unwrap();
        let idx = CacheIndex::open(dir.path()).unwrap();
        let k = CacheKey(Digest::of_bytes(b"step"));
        assert_eq!(idx.get::<Rec>(&k).unwrap(), None);
        let r = Rec {
            layer: Some(Digest::of_bytes(b"l")),
            note: "COPY a b".into(),
        };
        idx.put(&k, &r).unwrap();
        assert_eq!(idx.get::<Rec>(&k).unwrap(), Some(r));
        assert_eq!(idx.keys().unwrap(), vec![k]);
        assert!(idx.remove(&k).unwrap());
        assert!(!idx.remove(&k).unwrap());
        assert_eq!(idx.get::<Rec>(&k).unwrap(), None);
    }

    #[test]
    fn touch_records_last_use() {
        let dir = tempfile::tempdir().unwrap();
        let idx = CacheIndex::open(dir.path()).unwrap();
        let k = CacheKey(Digest::of_bytes(b"step"));
        assert!(!idx.touch(&k).unwrap());
        assert_eq!(idx.last_used(&k).unwrap(), None);
        idx.put(&k, &1u32).unwrap();
        let old = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1000);
        fs::File::options()
            .write(true)
            .open(idx.path(&k))
            .unwrap()
            .set_modified(old)
            .unwrap();
        assert_eq!(idx.last_used(&k).unwrap(), Some(old));
        assert!(idx.touch(&k).unwrap());
        assert!(idx.last_used(&k).unwrap().unwrap() > old);
        assert_eq!(idx.get::<u32>(&k).unwrap(), Some(1));
    }

    #[test]
    fn undecodable_record_is_a_miss() {
        let dir = tempfile::tempdir().unwrap();
        let idx = CacheIndex::open(dir.path()).unwrap();
        let k = CacheKey(Digest::of_bytes(b"step"));
        fs::write(idx.path(&k), b"{\"old\": true}").unwrap();
        assert_eq!(idx.get::<Rec>(&k).unwrap(), None);
    }

    #[test]
    fn record_blobs_follow_digest_fields_only() {
        let dir = tempfile::tempdir().unwrap();
        let idx = CacheIndex::open(dir.path()).unwrap();
        let k = CacheKey(Digest::of_bytes(b"step"));
        assert_eq!(idx.blobs_of(&k).unwrap(), None);
        let layer = Digest::of_bytes(b"layer");
        let diff = Digest::of_bytes(b"diff");
        let json = format!(
            r#"{{"layer":{{"digest":"{layer}","diff_id":"{diff}","size":3}},"created":"x"}}"#
        );
        fs::write(idx.path(&k), &json).unwrap();
        assert_eq!(idx.blobs_of(&k).unwrap(), Some(Ok(vec![layer])));
        assert_eq!(record_digests(json.as_bytes(), "diff_id"), Ok(vec![diff]));
        fs::write(idx.path(&k), b"{\"layer\":null}").unwrap();
        assert_eq!(idx.blobs_of(&k).unwrap(), Some(Ok(vec![])));
        fs::write(idx.path(&k), b"{trunc").unwrap();
        assert!(matches!(idx.blobs_of(&k).unwrap(), Some(Err(_))));
    }

    #[test]
    fn key_round_trips_as_string() {
        let k = CacheKey(Digest::of_bytes(b"x"));
        assert_eq!(k.to_string().parse::<CacheKey>().unwrap(), k);
        assert_eq!(serde_json::to_string(&k).unwrap(), format!("\"{}\"", k.0));
    }
}
