//! Reading tar streams onto disk: layer blobs from the store
//! ([`unpack_layer`], verified against their descriptor while streaming) and
//! local archives named by `ADD` ([`extract_archive`]).
//!
//! Everything lands inside the destination: names are cleaned (`..` that
//! would climb out is refused, a leading `/` is dropped), parent directories
//! are resolved with [`crate::rootfs`] so a symlink, whether in the tree
//! already or written earlier by the same archive, is never followed out of
//! it, the final component is never followed, and hard links must point
//! inside. Nothing is allocated according to a size an archive declares;
//! a truncated stream is an error.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs::{self, OpenOptions};
use std::io::{self, BufReader, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rbuild_cache::{BlobStore, Digest, Hasher};
use rustix::fs::{AtFlags, FileType, Mode, Timespec, Timestamps, CWD};

use crate::compress::{self, Format};
use crate::layer::{LayerDescriptor, LayerError, Result, OPAQUE_WHITEOUT, WHITEOUT_PREFIX};
use crate::rootfs;

/// How whiteouts in a layer are materialised.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnpackMode {
    /// Overlayfs lower-dir form: a whiteout becomes a 0:0 character device,
    /// an opaque marker the xattr `trusted.overlay.opaque=y` on its
    /// directory. Needs root (mknod, trusted xattrs).
    Overlay,
    /// Flattened form: a whiteout deletes the path from `dest`, an opaque
    /// marker deletes what the directory held before this layer.
    Apply,
}

/// What to do with `.wh.` entries.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Whiteouts {
    Layer(UnpackMode),
    /// `ADD` archives: whiteout names are ordinary files.
    Literal,
}

/// Unpacks a layer blob from `store` into `dest` (created if missing).
///
/// The blob is decompressed according to its media type; its digest, size
/// and diffID are checked while streaming, and a mismatch is an error once
/// the stream ends: the caller must then discard `dest`.
pub fn unpack_layer(
    store: &BlobStore,
    layer: &LayerDescriptor,
    dest: &Path,
    mode: UnpackMode,
) -> Result<()> {
    let format = Format::from_media_type(&layer.media_type)
        .ok_or_else(|| LayerError::MediaType(layer.media_type.clone()))?;
    let file = store.open_blob(&layer.digest)?;
    let blob_path = store.path(&layer.digest);
    let rest = file
        .try_clone()
        .map_err(|e| LayerError::io("open", &blob_path, e))?;
    let compressed = Arc::new(Mutex::new(Counted::default()));
    let reader = HashRead {
        inner: file,
        state: compressed.clone(),
    };
    let uncompressed = Arc::new(Mutex::new(Counted::default()));
    let decoder = compress::decoder(format, BufReader::with_capacity(256 * 1024, reader))
        .map_err(|e| tar_err(None, e))?;
    let tar = HashRead {
        inner: decoder,
        state: uncompressed.clone(),
    };
    fs::create_dir_all(dest).map_err(|e| LayerError::io("create directory", dest, e))?;
    let mut ex = Extractor::new(dest, dest, Whiteouts::Layer(mode));
    let mut tar = ex.run(tar)?;
    // Hash what follows the end-of-archive marker, then any compressed
    // bytes the decoder did not need: both belong to the blob.
    io::copy(&mut tar, &mut io::sink()).map_err(|e| tar_err(None, e))?;
    drop(tar);
    let mut rest = HashRead {
        inner: rest,
        state: compressed.clone(),
    };
    io::copy(&mut rest, &mut io::sink()).map_err(|e| LayerError::io("read", &blob_path, e))?;
    let check = |what, expected: String, actual: String| {
        if expected == actual {
            Ok(())
        } else {
            Err(LayerError::Mismatch {
                what,
                layer: layer.digest,
                expected,
                actual,
            })
        }
    };
    let (digest, size) = take(&compressed);
    let (diff_id, _) = take(&uncompressed);
    check("size", layer.size.to_string(), size.to_string())?;
    check("digest", layer.digest.to_string(), digest.to_string())?;
    check("diff_id", layer.diff_id.to_string(), diff_id.to_string())?;
    ex.finish()
}

/// Extracts a local archive for `ADD`: the stream's compression (none,
/// gzip, bzip2, xz, zstd) is detected from its first bytes, and entries are
/// written under `dest_dir`, a path inside the image whose root is
/// `rootfs` on the host (symlinks in `dest_dir` are resolved inside the
/// rootfs).
///
/// Returns `Ok(false)` without writing anything when the input is not a tar
/// archive (the caller then copies the file as it is, as Docker does).
/// Entries that would land outside the destination, through `..`, a symlink
/// or a hard link, are an error.
pub fn extract_archive<R: Read + Send>(reader: R, rootfs: &Path, dest_dir: &str) -> Result<bool> {
    let mut reader = BufReader::with_capacity(256 * 1024, reader);
    let format = compress::sniff(&mut reader).map_err(|e| tar_err(None, e))?;
    let mut input = compress::decoder(format, reader).map_err(|e| tar_err(None, e))?;
    // Decide "is it a tar?" from the first header block, as Docker does.
    let mut first = [0u8; 512];
    let got = read_full(&mut input, &mut first).map_err(|e| tar_err(None, e))?;
    if got < first.len() || !is_tar_header(&first) {
        return Ok(false);
    }
    let dest = rootfs::resolve(rootfs, dest_dir)
        .map_err(|e| LayerError::io("resolve", rootfs.join(dest_dir.trim_start_matches('/')), e))?;
    fs::create_dir_all(&dest).map_err(|e| LayerError::io("create directory", &dest, e))?;
    let stream = io::Cursor::new(first).chain(input);
    let mut ex = Extractor::new(rootfs, &dest, Whiteouts::Literal);
    ex.run(stream)?;
    ex.finish()?;
    Ok(true)
}

/// Whether a 512-byte block is a tar header: a valid checksum, and either a
/// ustar magic or an old-style header with a name.
fn is_tar_header(block: &[u8; 512]) -> bool {
    let field = &block[148..156];
    let digits: Vec<u8> = field
        .iter()
        .copied()
        .skip_while(|b| *b == b' ')
        .take_while(|b| (b'0'..=b'7').contains(b))
        .collect();
    let Ok(text) = std::str::from_utf8(&digits) else {
        return false;
    };
    let Ok(stored) = u32::from_str_radix(text, 8) else {
        return false;
    };
    let sum: u32 = block
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                32
            } else {
                u32::from(b)
            }
        })
        .sum();
    sum == stored && block[0] != 0
}

fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

fn tar_err(entry: Option<&str>, e: io::Error) -> LayerError {
    LayerError::Tar {
        entry: entry.map(str::to_string),
        message: e.to_string(),
    }
}

/// Running sha256 and byte count of a stream.
#[derive(Default)]
struct Counted {
    hasher: Hasher,
    size: u64,
}

fn take(state: &Mutex<Counted>) -> (Digest, u64) {
    let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
    let c = std::mem::take(&mut *s);
    (c.hasher.finish(), c.size)
}

/// A reader that hashes what passes through into shared state, so the
/// digest can be read after the reader was handed to a decoder.
struct HashRead<R> {
    inner: R,
    state: Arc<Mutex<Counted>>,
}

impl<R: Read> Read for HashRead<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.hasher.update(&buf[..n]);
        s.size += n as u64;
        Ok(n)
    }
}

/// Metadata applied to a directory once all its children are written
/// (writing a child changes the directory's mtime; a read-only mode would
/// block the children).
struct PendingDir {
    path: PathBuf,
    mode: u32,
    mtime: i64,
}

struct Extractor<'a> {
    /// Symlinks resolve inside this root.
    root: &'a Path,
    /// Entries must land under this host directory (inside `root`).
    dest: &'a Path,
    whiteouts: Whiteouts,
    privileged: bool,
    /// Host paths written by this stream (an opaque marker keeps them).
    written: HashSet<PathBuf>,
    dirs: Vec<PendingDir>,
}

/// What one tar entry is, read from its header.
struct Item {
    name: Vec<u8>,
    kind: tar::EntryType,
    link: Option<Vec<u8>>,
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: i64,
    size: u64,
    dev: (u32, u32),
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

impl<'a> Extractor<'a> {
    fn new(root: &'a Path, dest: &'a Path, whiteouts: Whiteouts) -> Extractor<'a> {
        Extractor {
            root,
            dest,
            whiteouts,
            privileged: rustix::process::geteuid().is_root(),
            written: HashSet::new(),
            dirs: Vec::new(),
        }
    }

    /// Writes every entry of the tar stream; returns the stream positioned
    /// after the end-of-archive marker.
    fn run<R: Read>(&mut self, reader: R) -> Result<R> {
        let mut archive = tar::Archive::new(reader);
        {
            let entries = archive.entries().map_err(|e| tar_err(None, e))?;
            for entry in entries {
                let mut entry = entry.map_err(|e| tar_err(None, e))?;
                let item = read_item(&mut entry)?;
                let shown = String::from_utf8_lossy(&item.name).into_owned();
                self.entry(item, &mut entry).map_err(|e| match e {
                    LayerError::Tar {
                        entry: None,
                        message,
                    } => LayerError::Tar {
                        entry: Some(shown.clone()),
                        message,
                    },
                    e => e,
                })?;
            }
        }
        Ok(archive.into_inner())
    }

    /// The host path for an archive name, refusing names that climb out and
    /// parents that resolve outside the destination. `None` for the root.
    fn locate(&self, name: &[u8]) -> Result<Option<PathBuf>> {
        let shown = || String::from_utf8_lossy(name).into_owned();
        let mut comps: Vec<&[u8]> = Vec::new();
        for c in name.split(|&b| b == b'/') {
            match c {
                b"" | b"." => {}
                b".." => {
                    if comps.pop().is_none() {
                        return Err(LayerError::Breakout {
                            entry: shown(),
                            reason: "`..` climbs above the destination".into(),
                        });
                    }
                }
                c => comps.push(c),
            }
        }
        if comps.is_empty() {
            return Ok(None);
        }
        let rel = comps.join(&b'/');
        let mut in_root = self
            .dest
            .strip_prefix(self.root)
            .unwrap_or(Path::new(""))
            .as_os_str()
            .as_bytes()
            .to_vec();
        in_root.push(b'/');
        in_root.extend_from_slice(&rel);
        let host = rootfs::resolve_parent_bytes(self.root, &in_root)
            .map_err(|e| LayerError::io("resolve", self.dest.join(OsStr::from_bytes(&rel)), e))?;
        if !host.starts_with(self.dest) || host == self.dest {
            return Err(LayerError::Breakout {
                entry: shown(),
                reason: format!("resolves to {} through a symlink", host.display()),
            });
        }
        Ok(Some(host))
    }

    fn entry<R: Read>(&mut self, item: Item, data: &mut R) -> Result<()> {
        use tar::EntryType as T;
        if matches!(item.kind, T::XGlobalHeader | T::XHeader) {
            return Ok(());
        }
        let Some(path) = self.locate(&item.name)? else {
            // The root entry ("./"): its metadata belongs to the destination,
            // which this stream does not own.
            return Ok(());
        };
        let base = path.file_name().map(|n| n.as_bytes()).unwrap_or_default();
        if let Whiteouts::Layer(mode) = self.whiteouts {
            if base == OPAQUE_WHITEOUT.as_bytes() {
                let dir = path.parent().unwrap_or(self.dest).to_path_buf();
                return self.opaque(&dir, mode);
            }
            if let Some(hidden) = base.strip_prefix(WHITEOUT_PREFIX.as_bytes()) {
                let target = path.with_file_name(OsStr::from_bytes(hidden));
                return self.whiteout(&target, mode);
            }
        }
        let is_dir = item.kind == T::Directory;
        ensure_parent(&path)?;
        self.clear(&path, is_dir)?;
        match item.kind {
            T::Directory => {
                if !path.is_dir() {
                    fs::create_dir(&path)
                        .map_err(|e| LayerError::io("create directory", &path, e))?;
                }
            }
            T::Regular | T::Continuous => {
                self.write_file(&path, item.size, data)?;
            }
            T::Symlink => {
                let target = item.link.clone().unwrap_or_default();
                std::os::unix::fs::symlink(OsStr::from_bytes(&target), &path)
                    .map_err(|e| LayerError::io("create symlink", &path, e))?;
            }
            T::Link => {
                let target = item.link.clone().unwrap_or_default();
                let Some(from) = self.locate(&target)? else {
                    return Err(LayerError::Breakout {
                        entry: String::from_utf8_lossy(&item.name).into_owned(),
                        reason: "hard link to the destination directory itself".into(),
                    });
                };
                fs::hard_link(&from, &path)
                    .map_err(|e| LayerError::io("create hard link", &path, e))?;
                self.written.insert(path);
                // A hard link shares the inode: its own header's metadata
                // would overwrite the file's.
                return Ok(());
            }
            T::Char | T::Block | T::Fifo => {
                let ft = match item.kind {
                    T::Char => FileType::CharacterDevice,
                    T::Block => FileType::BlockDevice,
                    _ => FileType::Fifo,
                };
                if ft != FileType::Fifo && !self.privileged {
                    // Devices need CAP_MKNOD; unprivileged Docker skips them too.
                    return Ok(());
                }
                rustix::fs::mknodat(
                    CWD,
                    &path,
                    ft,
                    Mode::from_raw_mode(item.mode & 0o7777),
                    rustix::fs::makedev(item.dev.0, item.dev.1),
                )
                .map_err(|e| LayerError::io("create device node", &path, e.into()))?;
            }
            other => {
                return Err(LayerError::Tar {
                    entry: Some(String::from_utf8_lossy(&item.name).into_owned()),
                    message: format!("unsupported entry type {:?}", other.as_byte() as char),
                })
            }
        }
        self.written.insert(path.clone());
        self.apply_meta(&path, &item, is_dir)
    }

    /// Makes room for a new entry at `path`: anything there is removed,
    /// except a directory that a directory entry will reuse.
    fn clear(&self, path: &Path, keep_dir: bool) -> Result<()> {
        match fs::symlink_metadata(path) {
            Ok(md) if md.is_dir() && keep_dir => Ok(()),
            Ok(md) => remove(path, md.is_dir()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(LayerError::io("stat", path, e)),
        }
    }

    fn write_file<R: Read>(&self, path: &Path, size: u64, data: &mut R) -> Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(path)
            .map_err(|e| LayerError::io("create", path, e))?;
        let copied = io::copy(data, &mut f).map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof | io::ErrorKind::InvalidData | io::ErrorKind::Other => {
                tar_err(None, e)
            }
            _ => LayerError::io("write", path, e),
        })?;
        if copied != size {
            return Err(LayerError::Tar {
                entry: None,
                message: format!("truncated: {copied} of {size} bytes"),
            });
        }
        f.flush().map_err(|e| LayerError::io("write", path, e))
    }

    fn apply_meta(&mut self, path: &Path, item: &Item, is_dir: bool) -> Result<()> {
        let symlink = item.kind == tar::EntryType::Symlink;
        if self.privileged {
            let uid = u32::try_from(item.uid).ok().map(rustix::fs::Uid::from_raw);
            let gid = u32::try_from(item.gid).ok().map(rustix::fs::Gid::from_raw);
            rustix::fs::chownat(CWD, path, uid, gid, AtFlags::SYMLINK_NOFOLLOW)
                .map_err(|e| LayerError::io("chown", path, e.into()))?;
        }
        for (name, value) in &item.xattrs {
            let name = OsStr::from_bytes(name);
            match rustix::fs::lsetxattr(path, name, value, rustix::fs::XattrFlags::empty()) {
                Ok(()) => {}
                // Filesystems without xattrs, and trusted./security. names
                // without privilege, are skipped as Docker skips them.
                Err(rustix::io::Errno::NOTSUP) => {}
                Err(rustix::io::Errno::PERM) if !self.privileged => {}
                Err(e) => return Err(LayerError::io("set xattr on", path, e.into())),
            }
        }
        if is_dir {
            self.dirs.push(PendingDir {
                path: path.to_path_buf(),
                mode: item.mode,
                mtime: item.mtime,
            });
            return Ok(());
        }
        if !symlink {
            // chmod after chown: chown clears setuid/setgid bits.
            fs::set_permissions(path, fs::Permissions::from_mode(item.mode & 0o7777))
                .map_err(|e| LayerError::io("chmod", path, e))?;
        }
        set_mtime(path, item.mtime)
    }

    fn whiteout(&mut self, target: &Path, mode: UnpackMode) -> Result<()> {
        match mode {
            UnpackMode::Apply => match fs::symlink_metadata(target) {
                Ok(md) => remove(target, md.is_dir()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(LayerError::io("stat", target, e)),
            },
            UnpackMode::Overlay => {
                ensure_parent(target)?;
                self.clear(target, false)?;
                rustix::fs::mknodat(
                    CWD,
                    target,
                    FileType::CharacterDevice,
                    Mode::empty(),
                    rustix::fs::makedev(0, 0),
                )
                .map_err(|e| LayerError::io("create whiteout device", target, e.into()))?;
                self.written.insert(target.to_path_buf());
                Ok(())
            }
        }
    }

    fn opaque(&mut self, dir: &Path, mode: UnpackMode) -> Result<()> {
        match fs::symlink_metadata(dir) {
            Ok(md) if md.is_dir() => {}
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if mode == UnpackMode::Apply {
                    return Ok(());
                }
                fs::create_dir_all(dir).map_err(|e| LayerError::io("create directory", dir, e))?;
            }
            Err(e) => return Err(LayerError::io("stat", dir, e)),
        }
        match mode {
            UnpackMode::Overlay => rustix::fs::lsetxattr(
                dir,
                "trusted.overlay.opaque",
                b"y",
                rustix::fs::XattrFlags::empty(),
            )
            .map_err(|e| LayerError::io("set opaque xattr on", dir, e.into())),
            UnpackMode::Apply => self.remove_unwritten(dir),
        }
    }

    /// Removes everything below `dir` that this stream did not write.
    fn remove_unwritten(&self, dir: &Path) -> Result<()> {
        let rd = fs::read_dir(dir).map_err(|e| LayerError::io("read directory", dir, e))?;
        for child in rd {
            let child = child.map_err(|e| LayerError::io("read directory", dir, e))?;
            let path = child.path();
            let is_dir = child
                .file_type()
                .map_err(|e| LayerError::io("stat", &path, e))?
                .is_dir();
            if !self.written.contains(&path) {
                remove(&path, is_dir)?;
            } else if is_dir {
                self.remove_unwritten(&path)?;
            }
        }
        Ok(())
    }

    /// Applies the deferred directory metadata, deepest first.
    fn finish(mut self) -> Result<()> {
        self.dirs.sort_by(|a, b| b.path.cmp(&a.path));
        for d in &self.dirs {
            fs::set_permissions(&d.path, fs::Permissions::from_mode(d.mode & 0o7777))
                .map_err(|e| LayerError::io("chmod", &d.path, e))?;
            set_mtime(&d.path, d.mtime)?;
        }
        Ok(())
    }
}

/// Creates missing parent directories (mode 0755, as Docker creates the
/// parents an archive does not list). The parent was resolved inside the
/// destination, so no symlink is on the way.
fn ensure_parent(path: &Path) -> Result<()> {
    match path.parent() {
        Some(parent) if !parent.is_dir() => fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(parent)
            .map_err(|e| LayerError::io("create directory", parent, e)),
        _ => Ok(()),
    }
}

fn remove(path: &Path, is_dir: bool) -> Result<()> {
    let r = if is_dir {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    };
    r.map_err(|e| LayerError::io("remove", path, e))
}

fn set_mtime(path: &Path, mtime: i64) -> Result<()> {
    let t = Timespec {
        tv_sec: mtime,
        tv_nsec: 0,
    };
    rustix::fs::utimensat(
        CWD,
        path,
        &Timestamps {
            last_access: t,
            last_modification: t,
        },
        AtFlags::SYMLINK_NOFOLLOW,
    )
    .map_err(|e| LayerError::io("set mtime of", path, e.into()))
}

/// Reads an entry's header (with its PAX records) into an [`Item`].
fn read_item<R: Read>(entry: &mut tar::Entry<'_, R>) -> Result<Item> {
    let name = entry.path_bytes().into_owned();
    let shown = String::from_utf8_lossy(&name).into_owned();
    let bad = |e: io::Error| tar_err(Some(&shown), e);
    let link = entry.link_name_bytes().map(|l| l.into_owned());
    let size = entry.size();
    let h = entry.header();
    let kind = h.entry_type();
    // An all-NUL or blank numeric field reads as 0, as GNU tar reads it
    // (tools leave the device fields of ordinary entries empty).
    let field = |r: io::Result<u64>, at: std::ops::Range<usize>| match r {
        Ok(v) => Ok(v),
        Err(_)
            if h.as_bytes()[at.clone()]
                .iter()
                .all(|&b| b == 0 || b == b' ') =>
        {
            Ok(0)
        }
        Err(e) => Err(bad(e)),
    };
    let mode = field(h.mode().map(u64::from), 100..108)? as u32;
    let uid = field(h.uid(), 108..116)?;
    let gid = field(h.gid(), 116..124)?;
    let mut mtime = field(h.mtime(), 136..148)? as i64;
    let dev = if matches!(kind, tar::EntryType::Char | tar::EntryType::Block) {
        let major = field(
            h.device_major().map(|d| u64::from(d.unwrap_or(0))),
            329..337,
        )?;
        let minor = field(
            h.device_minor().map(|d| u64::from(d.unwrap_or(0))),
            337..345,
        )?;
        (major as u32, minor as u32)
    } else {
        (0, 0)
    };
    let mut xattrs = Vec::new();
    if let Some(pax) = entry.pax_extensions().map_err(bad)? {
        for ext in pax {
            let ext = ext.map_err(bad)?;
            let key = ext.key_bytes();
            if let Some(attr) = key.strip_prefix(b"SCHILY.xattr.") {
                xattrs.push((attr.to_vec(), ext.value_bytes().to_vec()));
            } else if key == b"mtime" {
                // PAX mtimes may carry a fraction: "1700000000.123".
                let v = String::from_utf8_lossy(ext.value_bytes());
                if let Ok(secs) = v.split('.').next().unwrap_or("").parse::<i64>() {
                    mtime = secs;
                }
            }
        }
    }
    Ok(Item {
        name,
        kind,
        link,
        mode,
        uid,
        gid,
        mtime,
        size,
        dev,
        xattrs,
    })
}
