//! The content-addressed blob store: `root/blobs/sha256/<hex>`, the layout of
//! an OCI image layout's blob directory, shared by every image in the store.
//!
//! Every blob is streamed into a temp file under `root/tmp` (the same
//! filesystem), hashed while written, fsynced and only then renamed to its
//! digest name. A crash leaves at most a stray temp file in `root/tmp`,
//! never a truncated blob under a digest name.

use std::fs::{self, File, Permissions};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tempfile::NamedTempFile;

use crate::atomic::{sync_dir, TEMP_PREFIX};
use crate::error::{Error, Result};
use crate::{Digest, Hasher};

/// Handle on the blob directory of a store; cheap to clone, shareable
/// between threads.
#[derive(Clone, Debug)]
pub struct BlobStore {
    inner: Arc<Dirs>,
}

#[derive(Debug)]
struct Dirs {
    root: PathBuf,
    blobs: PathBuf,
    tmp: PathBuf,
}

impl BlobStore {
    /// Opens (creating if needed) the blob directories of the store at `root`.
    pub fn open(root: &Path) -> Result<BlobStore> {
        let blobs = root.join("blobs").join("sha256");
        let tmp = root.join("tmp");
        for d in [&blobs, &tmp] {
            fs::create_dir_all(d).map_err(|e| Error::io("create directory", d, e))?;
        }
        Ok(BlobStore {
            inner: Arc::new(Dirs {
                root: root.to_path_buf(),
                blobs,
                tmp,
            }),
        })
    }

    /// The store root this blob store lives in.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// The store's temp directory (same filesystem as the blobs, so a
    /// rename from here into place is atomic).
    pub fn tmp_dir(&self) -> &Path {
        &self.inner.tmp
    }

    /// Where the blob with this digest lives (whether or not it exists).
    pub fn path(&self, digest: &Digest) -> PathBuf {
        self.inner.blobs.join(digest.hex())
    }

    /// Whether the blob is present.
    pub fn contains(&self, digest: &Digest) -> bool {
        self.path(digest).is_file()
    }

    /// The size in bytes of a stored blob.
    pub fn size(&self, digest: &Digest) -> Result<u64> {
        let p = self.path(digest);
        match fs::metadata(&p) {
            Ok(m) => Ok(m.len()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(Error::BlobNotFound(*digest)),
            Err(e) => Err(Error::io("stat", p, e)),
        }
    }

    /// Opens a stored blob for streaming reads.
    pub fn open_blob(&self, digest: &Digest) -> Result<File> {
        let p = self.path(digest);
        match File::open(&p) {
            Ok(f) => Ok(f),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(Error::BlobNotFound(*digest)),
            Err(e) => Err(Error::io("open", p, e)),
        }
    }

    /// Reads a whole (small: JSON config or manifest) blob and checks that it
    /// still hashes to its name.
    pub fn read(&self, digest: &Digest) -> Result<Vec<u8>> {
        let mut data = Vec::new();
        self.open_blob(digest)?
            .read_to_end(&mut data)
            .map_err(|e| Error::io("read", self.path(digest), e))?;
        let actual = Digest::of_bytes(&data);
        if actual != *digest {
            return Err(Error::CorruptBlob {
                digest: *digest,
                path: self.path(digest),
                actual,
            });
        }
        Ok(data)
    }

    /// Re-hashes a stored blob (streaming) and fails if it no longer matches
    /// its digest.
    pub fn verify(&self, digest: &Digest) -> Result<()> {
        let mut f = self.open_blob(digest)?;
        let mut h = Hasher::new();
        io::copy(&mut f, &mut h).map_err(|e| Error::io("read", self.path(digest), e))?;
        let actual = h.finish();
        if actual != *digest {
            return Err(Error::CorruptBlob {
                digest: *digest,
                path: self.path(digest),
                actual,
            });
        }
        Ok(())
    }

    /// Stores a byte slice and returns its digest (a no-op if present).
    pub fn put_bytes(&self, data: &[u8]) -> Result<Digest> {
        let digest = Digest::of_bytes(data);
        if self.contains(&digest) {
            return Ok(digest);
        }
        let mut w = self.writer()?;
        w.write_all(data)
            .map_err(|e| Error::io("write", w.temp_path(), e))?;
        w.finish_verified(&digest)?;
        Ok(digest)
    }

    /// A streaming writer for a new blob; see [`BlobWriter`].
    pub fn writer(&self) -> Result<BlobWriter> {
        let tmp = self.temp_file()?;
        Ok(BlobWriter {
            store: self.clone(),
            out: BufWriter::with_capacity(256 * 1024, tmp),
            hasher: Hasher::new(),
            size: 0,
            written_back: 0,
        })
    }

    /// A new temp file in the store's temp directory, removed on drop unless
    /// imported with [`BlobStore::import_file`].
    pub fn temp_file(&self) -> Result<NamedTempFile> {
        tempfile::Builder::new()
            .prefix(TEMP_PREFIX)
            .tempfile_in(self.tmp_dir())
            .map_err(|e| Error::io("create temp file in", self.tmp_dir(), e))
    }

    /// Moves a temp file (in [`BlobStore::tmp_dir`], already hashed by the
    /// caller to `digest`) into place: fsync, rename, fsync the directory.
    /// If the blob already exists the temp file is just removed.
    pub fn import_file(&self, temp_path: &Path, digest: &Digest) -> Result<()> {
        let dest = self.path(digest);
        if dest.is_file() {
            return fs::remove_file(temp_path).map_err(|e| Error::io("remove", temp_path, e));
        }
        let f = File::open(temp_path).map_err(|e| Error::io("open", temp_path, e))?;
        f.set_permissions(Permissions::from_mode(0o644))
            .and_then(|()| f.sync_all())
            .map_err(|e| Error::io("fsync", temp_path, e))?;
        fs::rename(temp_path, &dest).map_err(|e| Error::io("rename into place", &dest, e))?;
        sync_dir(&self.inner.blobs)
    }

    /// Deletes a blob; `false` if it was not there.
    pub fn remove(&self, digest: &Digest) -> Result<bool> {
        let p = self.path(digest);
        match fs::remove_file(&p) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(Error::io("remove", p, e)),
        }
    }

    /// Digests of all stored blobs (names that are not digests are skipped).
    pub fn list(&self) -> Result<Vec<Digest>> {
        let dir = &self.inner.blobs;
        let mut out = Vec::new();
        for entry in fs::read_dir(dir).map_err(|e| Error::io("read directory", dir, e))? {
            let entry = entry.map_err(|e| Error::io("read directory", dir, e))?;
            if let Some(d) = entry
                .file_name()
                .to_str()
                .and_then(|n| Digest::from_hex(n).ok())
            {
                out.push(d);
            }
        }
        out.sort();
        Ok(out)
    }
}

/// Streams a new blob into a temp file while hashing and counting it.
///
/// Nothing is visible under a digest name until [`BlobWriter::finish`] or
/// [`BlobWriter::finish_verified`] succeeds; dropping the writer (or a crash)
/// removes or strands only the temp file.
///
/// ```
/// use std::io::Write;
/// let dir = tempfile::tempdir().unwrap();
/// let store = rbuild_cache::BlobStore::open(dir.path()).unwrap();
/// let mut w = store.writer().unwrap();
/// w.write_all(b"hello").unwrap();
/// let (digest, size) = w.finish().unwrap();
/// assert_eq!(size, 5);
/// assert_eq!(store.read(&digest).unwrap(), b"hello");
/// ```
pub struct BlobWriter {
    store: BlobStore,
    out: BufWriter<NamedTempFile>,
    hasher: Hasher,
    size: u64,
    /// Bytes of the file whose writeback to disk has been started.
    written_back: u64,
}

/// How much new data in a blob file starts its writeback: the fsync that
/// completes a blob then waits for the last few MiB, not the whole blob,
/// and the disk writes while the data is still being produced.
const WRITEBACK_EVERY: u64 = 16 << 20;

impl BlobWriter {
    /// Bytes written so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The temp file being written (for error messages).
    pub fn temp_path(&self) -> &Path {
        self.out.get_ref().path()
    }

    /// Completes the blob: fsync, rename to its digest. Returns the digest and size.
    pub fn finish(self) -> Result<(Digest, u64)> {
        let digest = self.hasher.clone().finish();
        let size = self.size;
        self.commit(&digest)?;
        Ok((digest, size))
    }

    /// Completes the blob only if it hashes to `expected`; on a mismatch the
    /// temp file is removed and nothing is stored.
    pub fn finish_verified(self, expected: &Digest) -> Result<u64> {
        let actual = self.hasher.clone().finish();
        if actual != *expected {
            return Err(Error::DigestMismatch {
                expected: *expected,
                actual,
            });
        }
        let size = self.size;
        self.commit(expected)?;
        Ok(size)
    }

    fn commit(self, digest: &Digest) -> Result<()> {
        let path = self.temp_path().to_path_buf();
        let tmp = self
            .out
            .into_inner()
            .map_err(|e| Error::io("write", &path, e.into_error()))?;
        let dest = self.store.path(digest);
        if dest.is_file() {
            // Same digest, same content: keep the existing file; the temp
            // file is deleted when `tmp` drops.
            return Ok(());
        }
        tmp.as_file()
            .set_permissions(Permissions::from_mode(0o644))
            .and_then(|()| tmp.as_file().sync_all())
            .map_err(|e| Error::io("fsync", &path, e))?;
        tmp.persist(&dest)
            .map_err(|e| Error::io("rename into place", &dest, e.error))?;
        sync_dir(&self.store.inner.blobs)
    }
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.out.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        let in_file = self.size - self.out.buffer().len() as u64;
        if let Some(len) = std::num::NonZeroU64::new(in_file - self.written_back)
            .filter(|len| len.get() >= WRITEBACK_EVERY)
        {
            // DONTNEED starts writeback of the range's dirty pages without
            // waiting for it. Only a hint: the fsync at the end is what
            // makes the blob durable.
            let _ = rustix::fs::fadvise(
                self.out.get_ref().as_file(),
                self.written_back,
                Some(len),
                rustix::fs::Advice::DontNeed,
            );
            self.written_back = in_file;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn put_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let s = BlobStore::open(dir.path()).unwrap();
        let d = s.put_bytes(b"{\"a\":1}").unwrap();
        assert_eq!(d, Digest::of_bytes(b"{\"a\":1}"));
        assert!(s.contains(&d));
        assert_eq!(s.size(&d).unwrap(), 7);
        assert_eq!(s.read(&d).unwrap(), b"{\"a\":1}");
        assert_eq!(s.list().unwrap(), vec![d]);
        // Deduplicated: storing again changes nothing.
        assert_eq!(s.put_bytes(b"{\"a\":1}").unwrap(), d);
        assert_eq!(names(&dir.path().join("blobs/sha256")), vec![d.hex()]);
        assert!(names(s.tmp_dir()).is_empty());
    }

    #[test]
    fn finish_verified_rejects_mismatch_and_stores_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let s = BlobStore::open(dir.path()).unwrap();
        let claimed = Digest::of_bytes(b"expected content");
        let mut w = s.writer().unwrap();
        w.write_all(b"other content").unwrap();
        let err = w.finish_verified(&claimed).unwrap_err();
        match err {
            Error::DigestMismatch { expected, actual } => {
                assert_eq!(expected, claimed);
                assert_eq!(actual, Digest::of_bytes(b"other content"));
            }
            other => panic!("unexpected {other}"),
        }
        assert!(!s.contains(&claimed));
        assert!(names(&dir.path().join("blobs/sha256")).is_empty());
        assert!(names(s.tmp_dir()).is_empty());
    }

    #[test]
    fn unfinished_writer_never_appears_under_a_digest_name() {
        // A writer abandoned mid-stream (as when the process is killed) has
        // its bytes only in tmp/, never under blobs/.
        let dir = tempfile::tempdir().unwrap();
        let s = BlobStore::open(dir.path()).unwrap();
        let data = vec![7u8; 1 << 20];
        let digest = Digest::of_bytes(&data);
        let mut w = s.writer().unwrap();
        w.write_all(&data[..data.len() / 2]).unwrap();
        w.flush().unwrap();
        assert_eq!(names(s.tmp_dir()).len(), 1);
        assert!(names(s.tmp_dir())[0].starts_with(TEMP_PREFIX));
        assert!(names(&dir.path().join("blobs/sha256")).is_empty());
        // Simulate the kill: the temp file stays behind, nothing is renamed.
        std::mem::forget(w);
        assert!(!s.contains(&digest));
        assert!(s.list().unwrap().is_empty());
        assert!(matches!(s.open_blob(&digest), Err(Error::BlobNotFound(_))));
    }

    #[test]
    fn dropped_writer_cleans_its_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let s = BlobStore::open(dir.path()).unwrap();
        let mut w = s.writer().unwrap();
        w.write_all(b"partial").unwrap();
        drop(w);
        assert!(names(s.tmp_dir()).is_empty());
        assert!(s.list().unwrap().is_empty());
    }

    #[test]
    fn streaming_writer_counts_and_hashes() {
        let dir = tempfile::tempdir().unwrap();
        let s = BlobStore::open(dir.path()).unwrap();
        let mut w = s.writer().unwrap();
        let mut all = Vec::new();
        for i in 0..1000u32 {
            let chunk = i.to_le_bytes().repeat(97);
            w.write_all(&chunk).unwrap();
            all.extend_from_slice(&chunk);
        }
        assert_eq!(w.size(), all.len() as u64);
        let (d, n) = w.finish().unwrap();
        assert_eq!(d, Digest::of_bytes(&all));
        assert_eq!(n, all.len() as u64);
        s.verify(&d).unwrap();
        let mode = fs::metadata(s.path(&d)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o644);
    }

    #[test]
    fn read_detects_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let s = BlobStore::open(dir.path()).unwrap();
        let d = s.put_bytes(b"good").unwrap();
        fs::write(s.path(&d), b"evil").unwrap();
        assert!(matches!(s.read(&d), Err(Error::CorruptBlob { .. })));
        assert!(matches!(s.verify(&d), Err(Error::CorruptBlob { .. })));
    }

    #[test]
    fn import_file_renames_into_place() {
        let dir = tempfile::tempdir().unwrap();
        let s = BlobStore::open(dir.path()).unwrap();
        let tmp = s.temp_file().unwrap();
        fs::write(tmp.path(), b"layer bytes").unwrap();
        let d = Digest::of_bytes(b"layer bytes");
        let (_, p) = tmp.keep().unwrap();
        s.import_file(&p, &d).unwrap();
        assert_eq!(s.read(&d).unwrap(), b"layer bytes");
        assert!(!p.exists());
        // Importing a duplicate just drops the temp file.
        let tmp = s.temp_file().unwrap();
        fs::write(tmp.path(), b"layer bytes").unwrap();
        let (_, p) = tmp.keep().unwrap();
        s.import_file(&p, &d).unwrap();
        assert!(!p.exists());
        assert!(names(s.tmp_dir()).is_empty());
    }

    #[test]
    fn concurrent_writers_of_the_same_blob() {
        let dir = tempfile::tempdir().unwrap();
        let s = BlobStore::open(dir.path()).unwrap();
        let data = vec![42u8; 300_000];
        std::thread::scope(|sc| {
            for _ in 0..4 {
                sc.spawn(|| {
                    let mut w = s.writer().unwrap();
                    w.write_all(&data).unwrap();
                    w.finish().unwrap();
                });
            }
        });
        let d = Digest::of_bytes(&data);
        s.verify(&d).unwrap();
        assert!(names(s.tmp_dir()).is_empty());
    }
}
