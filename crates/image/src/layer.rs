//! Layers: the description of a filesystem change as a list of
//! [`LayerEntry`]s, and the writer that turns such a list into a
//! deterministic, compressed OCI layer blob in the store.
//!
//! [`write_layer`] streams file → tar → sha256 (diffID) → compressor →
//! sha256 (digest) → blob temp file in one pass; nothing holds a whole file
//! or layer in memory. The compressor works on its own threads and the
//! blob's hashing and writing on another, so the three stages overlap. The tar rules that make layers reproducible (sorted
//! entries, PAX headers, fixed owner-name and mode rules, mtimes clamped to
//! `SOURCE_DATE_EPOCH`) live here and in `tarball`; unpacking is in
//! [`crate::unpack`], compression in [`crate::compress`]. Computing which
//! entries a layer holds (the diff of a snapshot) is the executor's job.

mod scan;
mod tarball;

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::path::PathBuf;
use std::sync::mpsc;

use rbuild_cache::{BlobStore, Digest, Hasher};
use serde::{Deserialize, Serialize};

use crate::compress::{self, Compression, Encoder};

pub use scan::entries_from_dir;

/// Name prefix of a whiteout entry (a deletion) in a layer tar.
pub const WHITEOUT_PREFIX: &str = ".wh.";
/// Name of the entry that marks its directory opaque (lower contents hidden).
pub const OPAQUE_WHITEOUT: &str = ".wh..wh..opq";

/// One entry of a layer: a path relative to the image root (no leading `/`
/// or `./`, no trailing `/`), what is there, and its metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerEntry {
    /// Relative path inside the image, e.g. `usr/bin/env`.
    pub path: String,
    /// What the entry is.
    pub kind: EntryKind,
    /// Owner, permissions, mtime and xattrs.
    pub meta: Meta,
}

/// The kind of a [`LayerEntry`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntryKind {
    /// A directory.
    Dir,
    /// A regular file whose content is read from `source` on the host;
    /// exactly `size` bytes are written (a file that changed size since is
    /// an error).
    File {
        /// Where the content is read from.
        source: PathBuf,
        /// Its size in bytes.
        size: u64,
    },
    /// A symbolic link; the target is stored as is.
    Symlink {
        /// The link's target.
        target: String,
    },
    /// A hard link to an earlier [`EntryKind::File`] entry of the same layer
    /// (a path relative to the image root).
    Hardlink {
        /// The path of the file linked to.
        target: String,
    },
    /// The path was deleted: written as `dir/.wh.name`.
    Whiteout,
    /// The directory at this path hides everything below it in lower layers:
    /// written as `path/.wh..wh..opq`.
    Opaque,
    /// A character device.
    CharDevice {
        /// Device major number.
        major: u32,
        /// Device minor number.
        minor: u32,
    },
    /// A block device.
    BlockDevice {
        /// Device major number.
        major: u32,
        /// Device minor number.
        minor: u32,
    },
    /// A named pipe.
    Fifo,
}

/// Metadata of a layer entry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Meta {
    /// Permission bits, including setuid, setgid and sticky (`0o7777` mask).
    pub mode: u32,
    /// Owner user id.
    pub uid: u32,
    /// Owner group id.
    pub gid: u32,
    /// Modification time, seconds since the Unix epoch.
    pub mtime: i64,
    /// Extended attributes, by full name (`user.x`, `security.capability`).
    pub xattrs: BTreeMap<String, Vec<u8>>,
}

/// How a layer is written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LayerOptions {
    /// Compression of the blob.
    pub compression: Compression,
    /// When set, every mtime later than this is written as this value
    /// (`SOURCE_DATE_EPOCH`, reproducible builds).
    pub source_date_epoch: Option<i64>,
}

/// A layer blob in the store, as a manifest names it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LayerDescriptor {
    /// Digest of the (compressed) blob.
    pub digest: Digest,
    /// Digest of the uncompressed tar (the config's `rootfs.diff_ids`).
    pub diff_id: Digest,
    /// Size of the blob in bytes.
    pub size: u64,
    /// OCI media type of the blob.
    pub media_type: String,
}

/// Errors of writing, unpacking and extracting layers.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    /// An I/O operation on a path failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The blob store failed.
    #[error(transparent)]
    Store(#[from] rbuild_cache::Error),
    /// A layer entry path is empty, has `..` or a NUL byte, or is not UTF-8.
    #[error("invalid layer entry path {0:?}")]
    InvalidPath(String),
    /// Two entries of one layer have the same path.
    #[error("duplicate layer entry {0:?}")]
    DuplicatePath(String),
    /// A hard link does not point to an earlier regular file of the layer.
    #[error("hard link {path:?} points to {target:?}, which is not an earlier file of the layer")]
    HardlinkTarget {
        /// The link.
        path: String,
        /// What it points to.
        target: String,
    },
    /// A source file's size changed between listing and writing it.
    #[error("{path} changed size while the layer was written (expected {expected} bytes)")]
    SizeChanged {
        /// The source file.
        path: PathBuf,
        /// The size recorded in its entry.
        expected: u64,
    },
    /// The compression settings are invalid (level out of range).
    #[error("invalid compression settings: {0}")]
    Compression(String),
    /// A layer's media type is not one rbuild can unpack.
    #[error("unsupported layer media type {0:?}")]
    MediaType(String),
    /// Content did not hash to the digest its descriptor gives.
    #[error("{what} mismatch for layer {layer}: expected {expected}, got {actual}")]
    Mismatch {
        /// `"digest"`, `"diff_id"` or `"size"`.
        what: &'static str,
        /// The layer's blob digest.
        layer: Digest,
        /// The expected value.
        expected: String,
        /// What the content gave.
        actual: String,
    },
    /// A tar stream is malformed or truncated.
    #[error("malformed tar{}: {message}", entry.as_deref().map(|e| format!(" at entry {e:?}")).unwrap_or_default())]
    Tar {
        /// The entry being read, when known.
        entry: Option<String>,
        /// What is wrong.
        message: String,
    },
    /// An archive entry would end up outside the destination.
    #[error("archive entry {entry:?} escapes the destination: {reason}")]
    Breakout {
        /// The entry's name in the archive.
        entry: String,
        /// Why it is refused.
        reason: String,
    },
}

impl LayerError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> LayerError {
        LayerError::Io {
            op,
            path: path.into(),
            source,
        }
    }
}

/// Result type of the layer functions.
pub type Result<T, E = LayerError> = std::result::Result<T, E>;

/// Writes `entries` as a layer blob into `store` and describes it.
///
/// Entries may come in any order: they are sorted by path components, so
/// parents precede children and an opaque marker precedes the rest of its
/// directory. Two entries with the same path are an error.
pub fn write_layer(
    store: &BlobStore,
    entries: Vec<LayerEntry>,
    opts: &LayerOptions,
) -> Result<LayerDescriptor> {
    let entries = prepare(entries)?;
    let (tmp, enc) = blob_encoder(store, opts)?;
    let mut sink = DiffIdWriter::new(enc);
    write_tar(&entries, opts, &mut sink, &tmp)?;
    finish(sink, opts, &tmp)
}

/// Stores an existing tar stream (optionally gzip/zstd/bzip2/xz compressed,
/// detected from its first bytes) as a layer blob compressed per `opts`:
/// the import path of `rbuild import`. The tar is kept byte for byte; its
/// diffID is the digest of the decompressed stream.
pub fn compress_tar<R: Read + Send>(
    reader: R,
    store: &BlobStore,
    opts: &LayerOptions,
) -> Result<LayerDescriptor> {
    let mut reader = BufReader::with_capacity(256 * 1024, reader);
    let format = compress::sniff(&mut reader).map_err(|e| tar_err(None, e))?;
    let mut input = compress::decoder(format, reader).map_err(|e| tar_err(None, e))?;
    let (tmp, enc) = blob_encoder(store, opts)?;
    let mut sink = DiffIdWriter::new(enc);
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(tar_err(None, e)),
        };
        sink.write_all(&buf[..n])
            .map_err(|e| LayerError::io("write layer blob", &tmp, e))?;
    }
    finish(sink, opts, &tmp)
}

fn tar_err(entry: Option<String>, e: io::Error) -> LayerError {
    LayerError::Tar {
        entry,
        message: e.to_string(),
    }
}

/// The compressor writing into a new blob (through a [`BlobThread`]), and
/// the blob's temp file for error messages.
fn blob_encoder(store: &BlobStore, opts: &LayerOptions) -> Result<(PathBuf, Encoder<BlobThread>)> {
    let blob = store.writer()?;
    let tmp = blob.temp_path().to_path_buf();
    let blob = BlobThread::new(blob).map_err(|e| LayerError::io("start writing", &tmp, e))?;
    let enc =
        Encoder::new(opts.compression, blob).map_err(|e| LayerError::Compression(e.to_string()))?;
    Ok((tmp, enc))
}

fn finish(
    sink: DiffIdWriter<Encoder<BlobThread>>,
    opts: &LayerOptions,
    tmp: &std::path::Path,
) -> Result<LayerDescriptor> {
    let (diff_id, enc) = sink.finish();
    let blob = enc
        .finish()
        .and_then(BlobThread::finish)
        .map_err(|e| LayerError::io("write layer blob", tmp, e))?;
    let (digest, size) = blob.finish()?;
    Ok(LayerDescriptor {
        digest,
        diff_id,
        size,
        media_type: opts.compression.media_type().to_string(),
    })
}

/// Hands what is written to a thread that writes it into a blob (hashing
/// it on the way): the blob's sha256 and file writes then overlap with the
/// tar stream's own hashing and with compression.
struct BlobThread {
    buf: Vec<u8>,
    tx: Option<mpsc::SyncSender<Vec<u8>>>,
    thread: Option<std::thread::JoinHandle<io::Result<rbuild_cache::BlobWriter>>>,
}

/// Bytes handed over at a time.
const BLOB_CHUNK: usize = 1 << 20;

impl BlobThread {
    fn new(mut blob: rbuild_cache::BlobWriter) -> io::Result<BlobThread> {
        // A few chunks in flight keep both sides busy; more only holds memory.
        let (tx, rx) = mpsc::sync_channel::<Vec<u8>>(4);
        let thread = std::thread::Builder::new()
            .name("rbuild-blob".into())
            .spawn(move || {
                for chunk in rx {
                    // On an error the receiver is dropped, so the writing
                    // side stops too and reports this error.
                    blob.write_all(&chunk)?;
                }
                Ok(blob)
            })?;
        Ok(BlobThread {
            buf: Vec::with_capacity(BLOB_CHUNK),
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    fn send(&mut self) -> io::Result<()> {
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(BLOB_CHUNK));
        let sent = self.tx.as_ref().map(|tx| tx.send(chunk).is_ok());
        if sent == Some(true) {
            return Ok(());
        }
        // The thread stopped: its error is the one to report.
        Err(self
            .join()
            .err()
            .unwrap_or_else(|| io::Error::other("blob writer stopped")))
    }

    fn join(&mut self) -> io::Result<rbuild_cache::BlobWriter> {
        self.tx = None;
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(io::Error::other("blob writer thread panicked")),
            None => Err(io::Error::other("blob writer already finished")),
        }
    }

    /// Writes what is left and returns the blob, all of it written.
    fn finish(mut self) -> io::Result<rbuild_cache::BlobWriter> {
        if !self.buf.is_empty() {
            self.send()?;
        }
        self.join()
    }
}

impl Write for BlobThread {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(BLOB_CHUNK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == BLOB_CHUNK {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        // Chunks are only ever written whole, in order; `finish` writes the
        // rest.
        Ok(())
    }
}

/// Hashes (the diffID) and forwards everything written through it.
struct DiffIdWriter<W: Write> {
    inner: W,
    hasher: Hasher,
}

impl<W: Write> DiffIdWriter<W> {
    fn new(inner: W) -> Self {
        DiffIdWriter {
            inner,
            hasher: Hasher::new(),
        }
    }

    fn finish(self) -> (Digest, W) {
        (self.hasher.finish(), self.inner)
    }
}

impl<W: Write> Write for DiffIdWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// An entry with its normalised path split into components.
struct Prepared {
    entry: LayerEntry,
    /// Components of the tar name (whiteout: `[.., ".wh.name"]`); an
    /// opaque marker's last component is `""` so it sorts first in its
    /// directory.
    key: Vec<String>,
}

impl Prepared {
    /// The name written into the tar header.
    fn tar_name(&self) -> String {
        match self.entry.kind {
            EntryKind::Opaque => format!("{}/{OPAQUE_WHITEOUT}", self.entry.path),
            EntryKind::Dir => format!("{}/", self.key.join("/")),
            _ => self.key.join("/"),
        }
    }
}

/// Splits a relative image path into components, refusing `..`, NUL and
/// the empty path; `.` and empty components are dropped.
pub(crate) fn normalize(path: &str) -> Result<Vec<String>> {
    if path.contains('\0') {
        return Err(LayerError::InvalidPath(path.to_string()));
    }
    let mut comps = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => return Err(LayerError::InvalidPath(path.to_string())),
            c => comps.push(c.to_string()),
        }
    }
    if comps.is_empty() {
        return Err(LayerError::InvalidPath(path.to_string()));
    }
    Ok(comps)
}

/// Normalises, sorts and checks entries.
fn prepare(entries: Vec<LayerEntry>) -> Result<Vec<Prepared>> {
    let mut out = Vec::with_capacity(entries.len());
    for mut entry in entries {
        let mut comps = normalize(&entry.path)?;
        entry.path = comps.join("/");
        match &entry.kind {
            EntryKind::Whiteout => {
                let last = comps.last_mut().expect("normalize never returns empty");
                *last = format!("{WHITEOUT_PREFIX}{last}");
            }
            EntryKind::Opaque => comps.push(String::new()),
            _ => {}
        }
        out.push(Prepared { entry, key: comps });
    }
    out.sort_by(|a, b| a.key.cmp(&b.key));
    let mut files = HashSet::new();
    for i in 0..out.len() {
        if i > 0 && out[i - 1].key.cmp(&out[i].key) == Ordering::Equal {
            return Err(LayerError::DuplicatePath(out[i].entry.path.clone()));
        }
        match &out[i].entry.kind {
            EntryKind::File { .. } => {
                files.insert(out[i].entry.path.clone());
            }
            EntryKind::Hardlink { target } => {
                let target = normalize(target)
                    .map_err(|_| LayerError::InvalidPath(target.clone()))?
                    .join("/");
                if !files.contains(&target) {
                    return Err(LayerError::HardlinkTarget {
                        path: out[i].entry.path.clone(),
                        target,
                    });
                }
                out[i].entry.kind = EntryKind::Hardlink { target };
            }
            _ => {}
        }
    }
    Ok(out)
}

/// Writes the tar stream of prepared entries into `out`.
fn write_tar(
    entries: &[Prepared],
    opts: &LayerOptions,
    out: &mut dyn Write,
    blob_path: &std::path::Path,
) -> Result<()> {
    let werr = |e| LayerError::io("write layer blob", blob_path, e);
    let no_xattrs = BTreeMap::new();
    let mut buf = vec![0u8; 256 * 1024];
    for p in entries {
        let e = &p.entry;
        let mtime = match opts.source_date_epoch {
            Some(epoch) if e.meta.mtime > epoch => epoch,
            _ => e.meta.mtime,
        };
        let name = p.tar_name();
        let mut h = tarball::Header {
            name: &name,
            typeflag: b'0',
            mode: e.meta.mode,
            uid: e.meta.uid,
            gid: e.meta.gid,
            size: 0,
            mtime,
            linkname: "",
            devmajor: 0,
            devminor: 0,
            xattrs: &e.meta.xattrs,
        };
        match &e.kind {
            EntryKind::Dir => h.typeflag = b'5',
            EntryKind::File { size, .. } => h.size = *size,
            EntryKind::Symlink { target } => {
                h.typeflag = b'2';
                h.linkname = target;
            }
            EntryKind::Hardlink { target } => {
                h.typeflag = b'1';
                h.linkname = target;
            }
            EntryKind::Whiteout | EntryKind::Opaque => {
                // Whiteouts are empty regular files with no owner, mode or
                // xattrs, as containerd's and Docker's diff writers emit them.
                h.mode = 0;
                h.uid = 0;
                h.gid = 0;
                h.xattrs = &no_xattrs;
            }
            EntryKind::CharDevice { major, minor } => {
                h.typeflag = b'3';
                h.devmajor = *major;
                h.devminor = *minor;
            }
            EntryKind::BlockDevice { major, minor } => {
                h.typeflag = b'4';
                h.devmajor = *major;
                h.devminor = *minor;
            }
            EntryKind::Fifo => h.typeflag = b'6',
        }
        tarball::write_header(out, &h).map_err(werr)?;
        if let EntryKind::File { source, size } = &e.kind {
            copy_exact(source, *size, out, &mut buf, blob_path)?;
            tarball::write_padding(out, *size).map_err(werr)?;
        }
    }
    tarball::write_trailer(out).map_err(werr)
}

/// Copies exactly `size` bytes of `source` into `out`; a file that is now
/// shorter or longer is an error (the header already promised `size`).
fn copy_exact(
    source: &std::path::Path,
    size: u64,
    out: &mut dyn Write,
    buf: &mut [u8],
    blob_path: &std::path::Path,
) -> Result<()> {
    let mut f = File::open(source).map_err(|e| LayerError::io("open", source, e))?;
    let mut left = size;
    while left > 0 {
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = match f.read(&mut buf[..want]) {
            Ok(0) => {
                return Err(LayerError::SizeChanged {
                    path: source.to_path_buf(),
                    expected: size,
                })
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(LayerError::io("read", source, e)),
        };
        out.write_all(&buf[..n])
            .map_err(|e| LayerError::io("write layer blob", blob_path, e))?;
        left -= n as u64;
    }
    let mut probe = [0u8; 1];
    match f.read(&mut probe) {
        Ok(0) => Ok(()),
        Ok(_) => Err(LayerError::SizeChanged {
            path: source.to_path_buf(),
            expected: size,
        }),
        Err(e) => Err(LayerError::io("read", source, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, kind: EntryKind) -> LayerEntry {
        LayerEntry {
            path: path.into(),
            kind,
            meta: Meta::default(),
        }
    }

    #[test]
    fn sorts_parents_first_and_opaque_before_children() {
        let entries = vec![
            entry("a.b", EntryKind::Dir),
            entry("a/-x", EntryKind::Fifo),
            entry("a", EntryKind::Opaque),
            entry("a/b/c", EntryKind::Whiteout),
            entry("a/b", EntryKind::Dir),
            entry("./a/", EntryKind::Dir),
        ];
        let names: Vec<String> = prepare(entries)
            .unwrap()
            .iter()
            .map(Prepared::tar_name)
            .collect();
        assert_eq!(
            names,
            ["a/", "a/.wh..wh..opq", "a/-x", "a/b/", "a/b/.wh.c", "a.b/"]
        );
    }

    #[test]
    fn rejects_duplicates_dotdot_and_dangling_hardlinks() {
        let dup = vec![entry("x", EntryKind::Dir), entry("./x", EntryKind::Fifo)];
        assert!(matches!(prepare(dup), Err(LayerError::DuplicatePath(p)) if p == "x"));
        let up = vec![entry("a/../../etc", EntryKind::Dir)];
        assert!(matches!(prepare(up), Err(LayerError::InvalidPath(_))));
        let link = vec![entry(
            "l",
            EntryKind::Hardlink {
                target: "missing".into(),
            },
        )];
        assert!(matches!(
            prepare(link),
            Err(LayerError::HardlinkTarget { .. })
        ));
    }
}
