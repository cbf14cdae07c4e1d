//! Layer diffs: the changes a build step made to a snapshot, as [`LayerEntry`]s.
//!
//! Two sources of changes produce the same entries for the same change:
//! - an overlayfs upper directory ([`diff_upper`]): only copied-up or created
//!   things are there; deletions are 0:0 character devices and a directory that
//!   hides its lower contents carries `trusted.overlay.opaque=y`;
//! - two full trees, parent and new ([`diff_trees`]), for the native snapshotter.
//!
//! The rules follow containerd's `continuity` double-walk differ (what BuildKit
//! and containerd write for a RUN):
//! - a path present in the new tree is emitted when it is new or differs from
//!   the parent: file type, permission bits, owner, xattrs, device numbers, and
//!   for non-directories the mtime, symlink target and content. A copy-up that
//!   changed nothing (a `chmod` to the same mode, opening a file for writing
//!   without writing) is therefore absent. Directory mtimes alone do not count:
//!   they change whenever a child does;
//! - a path gone from the new tree is a whiteout;
//! - a directory that replaced a deleted path (recreated, or a file turned into
//!   a directory) is opaque, with all of its new contents. overlayfs marks such
//!   directories itself; the native differ recognises a recreated directory by
//!   its inode identity (inode number and birth time) recorded before the step;
//! - every directory above an emitted path is emitted too, with its metadata
//!   from the new tree, so that extracting the layer recreates parents with
//!   their real owner and mode (containerd's `ChangeWriter` does the same);
//! - regular files sharing an inode within the emitted set become hardlinks to
//!   the first of them in path order. A hardlink to a file that is not emitted
//!   becomes a plain file.
//!
//! Xattrs are kept (`security.capability`, `user.*`), except overlayfs's own
//! `trusted.overlay.*`/`user.overlay.*` bookkeeping. Sockets are skipped, as
//! tar cannot hold them. This module reads trees; it never writes.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::{CString, OsStr};
use std::fs::{self, File, Metadata};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use rbuild_image::{EntryKind, LayerEntry, Meta};

/// An error while reading a tree to diff it.
#[derive(Debug, thiserror::Error)]
#[error("diff: {path}: {source}")]
pub struct DiffError {
    /// The host path that could not be read.
    pub path: PathBuf,
    /// The underlying error.
    #[source]
    pub source: io::Error,
}

type Result<T> = std::result::Result<T, DiffError>;

fn ctx<T>(path: &Path, r: io::Result<T>) -> Result<T> {
    r.map_err(|source| DiffError {
        path: path.to_path_buf(),
        source,
    })
}

/// The identity of a directory, recorded before a step so that the native
/// differ can tell a directory that was removed and recreated from one that
/// was only modified. The birth time makes a reused inode number harmless.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DirIdentity {
    ino: u64,
    btime: Option<SystemTime>,
}

impl DirIdentity {
    fn of(md: &Metadata) -> DirIdentity {
        DirIdentity {
            ino: md.ino(),
            btime: md.created().ok(),
        }
    }
}

/// Records the identity of every directory under `root` (relative paths).
pub(crate) fn dir_identities(root: &Path) -> Result<HashMap<String, DirIdentity>> {
    let mut out = HashMap::new();
    let mut stack = vec![String::new()];
    while let Some(rel) = stack.pop() {
        let dir = join(root, &rel);
        for name in sorted_names(&dir)? {
            let p = child(&rel, &name);
            let full = join(root, &p);
            let md = ctx(&full, fs::symlink_metadata(&full))?;
            if md.is_dir() {
                out.insert(p.clone(), DirIdentity::of(&md));
                stack.push(p);
            }
        }
    }
    Ok(out)
}

/// Diffs an overlayfs upper directory against the merged view of its lower
/// layers (`lower`, a directory or read-only overlay mount).
pub fn diff_upper(upper: &Path, lower: &Path) -> Result<Vec<LayerEntry>> {
    let mut c = Changes::default();
    walk_upper(upper, lower, "", true, &mut c)?;
    c.into_entries(upper)
}

fn walk_upper(
    upper: &Path,
    lower: &Path,
    rel: &str,
    lower_is_dir: bool,
    c: &mut Changes,
) -> Result<()> {
    for name in sorted_names(&join(upper, rel))? {
        let p = child(rel, &name);
        let up = join(upper, &p);
        let md = ctx(&up, fs::symlink_metadata(&up))?;
        // The parent is a real directory in the lower view, so this lstat cannot
        // be redirected by a symlink in an intermediate component.
        let low = if lower_is_dir {
            lstat_opt(&join(lower, &p))?
        } else {
            None
        };
        if is_whiteout(&md) {
            if low.is_some() {
                c.whiteout(p);
            }
            continue;
        }
        if md.is_dir() {
            if is_opaque(&up)? {
                c.opaque(p.clone());
                add_all(upper, &p, c)?;
                continue;
            }
            match &low {
                Some(lmd) if lmd.is_dir() => {
                    if !same_dir(&join(lower, &p), lmd, &up, &md)? {
                        c.node(p.clone());
                    }
                    walk_upper(upper, lower, &p, true, c)?;
                }
                _ => {
                    c.node(p.clone());
                    walk_upper(upper, lower, &p, false, c)?;
                }
            }
            continue;
        }
        let unchanged = match &low {
            Some(lmd) => same_nondir(&join(lower, &p), lmd, &up, &md)?,
            None => false,
        };
        if !unchanged {
            c.node(p);
        }
    }
    Ok(())
}

/// Diffs two full trees: `parent` as it was before the step and `new` after.
/// `idents` are the directory identities of `new` recorded before the step.
pub(crate) fn diff_trees(
    parent: &Path,
    new: &Path,
    idents: &HashMap<String, DirIdentity>,
) -> Result<Vec<LayerEntry>> {
    let mut c = Changes::default();
    walk_trees(parent, new, idents, "", true, &mut c)?;
    c.into_entries(new)
}

fn walk_trees(
    parent: &Path,
    new: &Path,
    idents: &HashMap<String, DirIdentity>,
    rel: &str,
    parent_is_dir: bool,
    c: &mut Changes,
) -> Result<()> {
    let mut names: BTreeSet<Vec<u8>> = sorted_names(&join(new, rel))?.into_iter().collect();
    if parent_is_dir {
        names.extend(sorted_names(&join(parent, rel))?);
    }
    for name in names {
        let p = child(rel, &name);
        let np = join(new, &p);
        let pp = join(parent, &p);
        let nmd = lstat_opt(&np)?;
        let pmd = if parent_is_dir { lstat_opt(&pp)? } else { None };
        match (pmd, nmd) {
            (None, None) => {}
            (Some(_), None) => c.whiteout(p),
            (None, Some(nmd)) => {
                c.node(p.clone());
                if nmd.is_dir() {
                    walk_trees(parent, new, idents, &p, false, c)?;
                }
            }
            (Some(pmd), Some(nmd)) if nmd.is_dir() => {
                let recreated = !pmd.is_dir() || idents.get(&p) != Some(&DirIdentity::of(&nmd));
                if recreated {
                    // What overlayfs records for a directory created where a
                    // deleted path was: opaque, holding only its new contents.
                    c.opaque(p.clone());
                    add_all(new, &p, c)?;
                } else {
                    if !same_dir(&pp, &pmd, &np, &nmd)? {
                        c.node(p.clone());
                    }
                    walk_trees(parent, new, idents, &p, true, c)?;
                }
            }
            (Some(pmd), Some(nmd)) => {
                if !same_nondir(&pp, &pmd, &np, &nmd)? {
                    c.node(p);
                }
            }
        }
    }
    Ok(())
}

/// Emits everything under `rel` in `root` (the contents of an opaque dir).
fn add_all(root: &Path, rel: &str, c: &mut Changes) -> Result<()> {
    for name in sorted_names(&join(root, rel))? {
        let p = child(rel, &name);
        let full = join(root, &p);
        let md = ctx(&full, fs::symlink_metadata(&full))?;
        // Below an opaque directory nothing of the lower layers shows, so
        // overlayfs never needs a whiteout there.
        if is_whiteout(&md) {
            continue;
        }
        c.node(p.clone());
        if md.is_dir() {
            add_all(root, &p, c)?;
        }
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    Node,
    Whiteout,
}

/// The set of changed paths, in path order.
#[derive(Default)]
struct Changes {
    paths: BTreeMap<String, Change>,
    opaque: BTreeSet<String>,
}

impl Changes {
    fn node(&mut self, p: String) {
        self.paths.insert(p, Change::Node);
    }
    fn whiteout(&mut self, p: String) {
        self.paths.insert(p, Change::Whiteout);
    }
    fn opaque(&mut self, p: String) {
        self.paths.insert(p.clone(), Change::Node);
        self.opaque.insert(p);
    }

    /// Adds parent directories, resolves hardlinks, and reads the metadata of
    /// every emitted path from the new tree `root`.
    fn into_entries(mut self, root: &Path) -> Result<Vec<LayerEntry>> {
        let mut parents = Vec::new();
        for p in self.paths.keys().chain(self.opaque.iter()) {
            let mut cur = p.as_str();
            while let Some((parent, _)) = cur.rsplit_once('/') {
                if !self.paths.contains_key(parent) {
                    parents.push(parent.to_string());
                }
                cur = parent;
            }
        }
        for p in parents {
            self.paths.insert(p, Change::Node);
        }

        // The layer writer orders entries by path components, and a hardlink
        // must point to a file written before it: pick link targets in that order.
        let mut ordered: Vec<(&String, &Change)> = self.paths.iter().collect();
        ordered.sort_by(|a, b| crate::pathmatch::path_order(a.0, b.0));

        let mut entries = Vec::with_capacity(self.paths.len() + self.opaque.len());
        let mut inodes: HashMap<(u64, u64), String> = HashMap::new();
        for (p, change) in ordered {
            if *change == Change::Whiteout {
                entries.push(LayerEntry {
                    path: p.clone(),
                    kind: EntryKind::Whiteout,
                    meta: Meta::default(),
                });
                continue;
            }
            let full = join(root, p);
            let md = ctx(&full, fs::symlink_metadata(&full))?;
            let ft = md.file_type();
            let kind = if ft.is_dir() {
                EntryKind::Dir
            } else if ft.is_file() {
                let key = (md.dev(), md.ino());
                match inodes.get(&key) {
                    Some(first) if md.nlink() > 1 => EntryKind::Hardlink {
                        target: first.clone(),
                    },
                    _ => {
                        if md.nlink() > 1 {
                            inodes.insert(key, p.clone());
                        }
                        EntryKind::File {
                            source: full.clone(),
                            size: md.len(),
                        }
                    }
                }
            } else if ft.is_symlink() {
                let target = ctx(&full, fs::read_link(&full))?;
                EntryKind::Symlink {
                    target: String::from_utf8_lossy(target.as_os_str().as_bytes()).into_owned(),
                }
            } else if ft.is_char_device() {
                EntryKind::CharDevice {
                    major: libc::major(md.rdev()),
                    minor: libc::minor(md.rdev()),
                }
            } else if ft.is_block_device() {
                EntryKind::BlockDevice {
                    major: libc::major(md.rdev()),
                    minor: libc::minor(md.rdev()),
                }
            } else if ft.is_fifo() {
                EntryKind::Fifo
            } else {
                continue;
            };
            entries.push(LayerEntry {
                path: p.clone(),
                kind,
                meta: meta_of(&full, &md)?,
            });
            if self.opaque.contains(p) {
                entries.push(LayerEntry {
                    path: p.clone(),
                    kind: EntryKind::Opaque,
                    meta: Meta::default(),
                });
            }
        }
        Ok(entries)
    }
}

/// The layer metadata of a path.
fn meta_of(path: &Path, md: &Metadata) -> Result<Meta> {
    Ok(Meta {
        mode: md.mode() & 0o7777,
        uid: md.uid(),
        gid: md.gid(),
        mtime: md.mtime(),
        xattrs: read_xattrs(path)?,
    })
}

fn same_dir(lp: &Path, lmd: &Metadata, np: &Path, nmd: &Metadata) -> Result<bool> {
    Ok(lmd.mode() == nmd.mode()
        && lmd.uid() == nmd.uid()
        && lmd.gid() == nmd.gid()
        && read_xattrs(lp)? == read_xattrs(np)?)
}

fn same_nondir(lp: &Path, lmd: &Metadata, np: &Path, nmd: &Metadata) -> Result<bool> {
    // `mode()` holds the file type too, so a type change is caught here.
    if lmd.mode() != nmd.mode()
        || lmd.uid() != nmd.uid()
        || lmd.gid() != nmd.gid()
        || lmd.rdev() != nmd.rdev()
        || lmd.len() != nmd.len()
        || lmd.mtime() != nmd.mtime()
        || lmd.mtime_nsec() != nmd.mtime_nsec()
        || read_xattrs(lp)? != read_xattrs(np)?
    {
        return Ok(false);
    }
    let ft = nmd.file_type();
    if ft.is_symlink() {
        return Ok(ctx(lp, fs::read_link(lp))? == ctx(np, fs::read_link(np))?);
    }
    if ft.is_file() {
        // Same as continuity: equal nanosecond mtimes (not truncated by a tar
        // round trip) are trusted; otherwise the content decides.
        if nmd.mtime_nsec() != 0 || nmd.len() == 0 {
            return Ok(true);
        }
        return same_content(lp, np);
    }
    Ok(true)
}

fn same_content(a: &Path, b: &Path) -> Result<bool> {
    let mut fa = ctx(a, File::open(a))?;
    let mut fb = ctx(b, File::open(b))?;
    let mut ba = vec![0u8; 64 * 1024];
    let mut bb = vec![0u8; 64 * 1024];
    loop {
        let na = ctx(a, read_full(&mut fa, &mut ba))?;
        let nb = ctx(b, read_full(&mut fb, &mut bb))?;
        if na != nb || ba[..na] != bb[..nb] {
            return Ok(false);
        }
        if na == 0 {
            return Ok(true);
        }
    }
}

fn read_full(f: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

fn is_whiteout(md: &Metadata) -> bool {
    md.file_type().is_char_device() && md.rdev() == 0
}

fn is_opaque(path: &Path) -> Result<bool> {
    for name in ["trusted.overlay.opaque", "user.overlay.opaque"] {
        if let Some(v) = ctx(path, getxattr(path, name))? {
            if v == b"y" {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

/// Xattrs that overlayfs keeps for itself; they describe the snapshot, not the image.
fn is_internal_xattr(name: &str) -> bool {
    name.starts_with("trusted.overlay.") || name.starts_with("user.overlay.")
}

/// The xattrs of a path (not following symlinks), minus overlayfs bookkeeping.
pub(crate) fn read_xattrs(path: &Path) -> Result<BTreeMap<String, Vec<u8>>> {
    ctx(path, read_xattrs_io(path))
}

fn read_xattrs_io(path: &Path) -> io::Result<BTreeMap<String, Vec<u8>>> {
    let cpath = cstring(path.as_os_str())?;
    let mut out = BTreeMap::new();
    let names = loop {
        // SAFETY: a null buffer with size 0 asks for the needed size.
        let n = unsafe { libc::llistxattr(cpath.as_ptr(), std::ptr::null_mut(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENOTSUP) {
                return Ok(out);
            }
            return Err(e);
        }
        if n == 0 {
            return Ok(out);
        }
        let mut buf = vec![0u8; n as usize];
        // SAFETY: buf is valid for buf.len() bytes.
        let m = unsafe { libc::llistxattr(cpath.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if m < 0 {
            let e = io::Error::last_os_error();
            // The list grew between the two calls: ask again.
            if e.raw_os_error() == Some(libc::ERANGE) {
                continue;
            }
            return Err(e);
        }
        buf.truncate(m as usize);
        break buf;
    };
    for raw in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let Ok(name) = std::str::from_utf8(raw) else {
            continue;
        };
        if is_internal_xattr(name) {
            continue;
        }
        if let Some(v) = getxattr(path, name)? {
            out.insert(name.to_string(), v);
        }
    }
    Ok(out)
}

/// One xattr of a path (not following symlinks); `None` when absent.
pub(crate) fn getxattr(path: &Path, name: &str) -> io::Result<Option<Vec<u8>>> {
    let cpath = cstring(path.as_os_str())?;
    let cname = cstring(OsStr::new(name))?;
    loop {
        // SAFETY: a null buffer with size 0 asks for the needed size.
        let n = unsafe { libc::lgetxattr(cpath.as_ptr(), cname.as_ptr(), std::ptr::null_mut(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::ENODATA) | Some(libc::ENOTSUP) => Ok(None),
                _ => Err(e),
            };
        }
        let mut buf = vec![0u8; n as usize];
        // SAFETY: buf is valid for buf.len() bytes.
        let m = unsafe {
            libc::lgetxattr(
                cpath.as_ptr(),
                cname.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        if m < 0 {
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::ERANGE) => continue,
                Some(libc::ENODATA) => return Ok(None),
                _ => return Err(e),
            }
        }
        buf.truncate(m as usize);
        return Ok(Some(buf));
    }
}

pub(crate) fn cstring(s: &OsStr) -> io::Result<CString> {
    CString::new(s.as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))
}

fn lstat_opt(path: &Path) -> Result<Option<Metadata>> {
    match fs::symlink_metadata(path) {
        Ok(md) => Ok(Some(md)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        // A non-directory in a parent position means the path does not exist.
        Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => Ok(None),
        Err(e) => Err(DiffError {
            path: path.to_path_buf(),
            source: e,
        }),
    }
}

fn sorted_names(dir: &Path) -> Result<Vec<Vec<u8>>> {
    let mut names = Vec::new();
    for entry in ctx(dir, fs::read_dir(dir))? {
        let entry = ctx(dir, entry)?;
        names.push(entry.file_name().as_bytes().to_vec());
    }
    names.sort();
    Ok(names)
}

fn child(rel: &str, name: &[u8]) -> String {
    let name = String::from_utf8_lossy(name);
    if rel.is_empty() {
        name.into_owned()
    } else {
        format!("{rel}/{name}")
    }
}

fn join(root: &Path, rel: &str) -> PathBuf {
    if rel.is_empty() {
        root.to_path_buf()
    } else {
        root.join(rel)
    }
}
