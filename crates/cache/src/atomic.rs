//! Atomic file replacement: temp file in the same directory, write, fsync,
//! rename, fsync the directory. A reader (or a process started after a
//! crash) sees either the old file or the new one, never a partial write.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Prefix of every temp file rbuild creates beside a final file; `rbuild
/// check --repair` may remove stray ones left by a killed process.
pub const TEMP_PREFIX: &str = ".rbuild-tmp-";

/// Writes `bytes` to `path` atomically (temp file in the same directory,
/// fsync, rename over `path`, fsync of the directory).
///
/// ```
/// let dir = tempfile::tempdir().unwrap();
/// let p = dir.path().join("x.json");
/// rbuild_cache::write_atomic(&p, b"{}").unwrap();
/// assert_eq!(std::fs::read(&p).unwrap(), b"{}");
/// ```
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = parent_dir(path);
    let mut tmp = tempfile::Builder::new()
        .prefix(TEMP_PREFIX)
        .tempfile_in(dir)
        .map_err(|e| Error::io("create temp file in", dir, e))?;
    tmp.write_all(bytes)
        .and_then(|()| tmp.as_file().sync_all())
        .map_err(|e| Error::io("write", tmp.path(), e))?;
    tmp.persist(path)
        .map_err(|e| Error::io("rename temp file to", path, e.error))?;
    sync_dir(dir)
}

/// Fsyncs a directory so that a rename into it survives a power loss.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io("fsync directory", dir, e))
}

/// Temp files a killed rbuild may have left in the store at `store_root`:
/// every entry of `tmp/`, and `.rbuild-tmp-*` files beside final files in
/// the root, `cache/`, `statcache/` and `leases/`. They are garbage only when no other
/// rbuild process is running: delete them while holding the store's `gc`
/// lock exclusively (see [`crate::lock_path`]), which every writer holds
/// shared.
pub fn stray_temp_files(store_root: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let tmp = store_root.join("tmp");
    for (dir, all) in [
        (tmp, true),
        (store_root.to_path_buf(), false),
        (store_root.join("cache"), false),
        (store_root.join("statcache"), false),
        (store_root.join("leases"), false),
    ] {
        let rd = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io("read directory", &dir, e)),
        };
        for entry in rd {
            let entry = entry.map_err(|e| Error::io("read directory", &dir, e))?;
            if all
                || entry
                    .file_name()
                    .as_encoded_bytes()
                    .starts_with(TEMP_PREFIX.as_bytes())
            {
                out.push(entry.path());
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The directory a path lives in (`.` for a bare file name).
pub(crate) fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_existing_file_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("f")]);
    }

    #[test]
    fn stray_temp_files_are_found_and_final_files_are_not() {
        let root = tempfile::tempdir().unwrap();
        let blobs = crate::BlobStore::open(root.path()).unwrap();
        let idx = crate::CacheIndex::open(root.path()).unwrap();
        blobs.put_bytes(b"kept").unwrap();
        write_atomic(&root.path().join("index.json"), b"{}").unwrap();
        assert!(stray_temp_files(root.path()).unwrap().is_empty());
        // What a process killed mid-write leaves behind.
        let half = blobs.temp_file().unwrap().keep().unwrap().1;
        let beside = idx.path(&crate::CacheKey(crate::Digest::of_bytes(b"k")));
        let beside = beside.with_file_name(format!("{TEMP_PREFIX}abc"));
        std::fs::write(&beside, b"partial").unwrap();
        let root_tmp = root.path().join(format!("{TEMP_PREFIX}index"));
        std::fs::write(&root_tmp, b"{").unwrap();
        let mut expected = vec![half, beside, root_tmp];
        expected.sort();
        assert_eq!(stray_temp_files(root.path()).unwrap(), expected);
    }

    #[test]
    fn missing_directory_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("nope/f");
        let err = write_atomic(&p, b"x").unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
    }
}
