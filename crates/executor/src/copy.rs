//! COPY and ADD: writing selected sources into an image's root filesystem
//! with Docker/BuildKit semantics.
//!
//! Destination rules (Docker reference, BuildKit behaviour):
//! - A relative destination is relative to WORKDIR.
//! - A destination ending in `/` (or `.`) is a directory. Several source
//!   words need such a destination; several matches of one wildcard make it
//!   a directory too.
//! - A single file to an existing directory goes into it; to any other path
//!   it becomes that file (named after the destination).
//! - A source directory copies its contents, not itself.
//! - Symlinks inside copied directories stay symlinks; a symlink named as a
//!   source was already followed by the selection.
//! - Every destination path is resolved through [`rootfs::resolve`], so
//!   symlinks in the image (`/app -> /srv`, `-> ..`) are followed inside the
//!   rootfs, never on the host. An existing symlink to a directory (such as
//!   `/lib -> usr/lib`) is kept and written through.
//!
//! Metadata: files keep their mode and modification time (BuildKit copies
//! the source's mtime); ownership is 0:0 for context, heredoc and downloaded
//! sources and preserved for `--from` sources, unless `--chown` is given.
//! `--chmod` (octal or symbolic, as BuildKit accepts) applies to files and
//! directories. Directories created for the destination's parents are
//! 0755 (or the `--chmod` mode, as current BuildKit does), owned by the
//! `--chown` owner (root by default), as BuildKit's `MkdirAll` does. Hard
//! links within one copy are preserved.
//!
//! ADD extracts local tar archives (plain, gzip, bzip2, xz, zstd) into the
//! destination; COPY never extracts. Downloading URLs is [`crate::fetch`]'s
//! job; the downloaded file is then copied as [`CopySource::File`]. ADD of a
//! git repository is not supported.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rbuild_image::rootfs;

use crate::context::{
    has_wildcards, BuildContext, ContextError, Entry, EntryKind, SelectedSource, Selection,
};
use crate::dockerignore::Matcher;
use crate::pathmatch::{clean, filepath_match};
use crate::user::{lookup_chown, UserError};

/// Errors of a COPY/ADD file operation.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// A filesystem operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The host path.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// Several source words with a destination that is not a directory.
    #[error("when using COPY with more than one source file, the destination must be a directory and end with a / (destination {dest:?})")]
    MultipleSources {
        /// The destination as written.
        dest: String,
    },
    /// A source of another stage or image does not exist.
    #[error("COPY source {name:?} not found")]
    NotFound {
        /// The source as written.
        name: String,
    },
    /// A path component of the destination exists and is not a directory.
    #[error("cannot copy to {path:?}: a parent is not a directory")]
    NotADirectory {
        /// The path inside the image.
        path: String,
    },
    /// A directory would be replaced by a file, or a file by a directory.
    #[error("cannot copy {what} onto existing {path:?}")]
    Conflict {
        /// What is being copied.
        what: &'static str,
        /// The path inside the image.
        path: String,
    },
    /// The `--chown` user or group cannot be resolved.
    #[error("--chown: {0}")]
    Chown(#[from] UserError),
    /// The `--chmod` value is invalid.
    #[error("invalid chmod parameter: {0:?}. it should be octal string and between 0 and 07777, or a symbolic mode")]
    Chmod(String),
    /// Selecting sources (of another stage) failed.
    #[error(transparent)]
    Context(#[from] ContextError),
    /// A local archive could not be extracted.
    #[error("extract {path}: {message}")]
    Extract {
        /// The archive on the host.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
}

type Result<T> = std::result::Result<T, CopyError>;

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> CopyError + 'a {
    move |source| CopyError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// What to copy.
#[derive(Debug, Clone, Copy)]
pub enum CopySource<'a> {
    /// Sources selected from the build context.
    Context(&'a Selection<'a>),
    /// Paths (wildcards allowed, symlinks followed inside `root`) in another
    /// root filesystem: a stage or image for `COPY --from`.
    Dir {
        /// The other rootfs on the host.
        root: &'a Path,
        /// The source paths as written.
        paths: &'a [String],
    },
    /// A heredoc file (`COPY <<EOF name`): created with mode 0644.
    Inline {
        /// The file name.
        name: &'a str,
        /// Its content.
        data: &'a [u8],
    },
    /// A host file copied under `name` (a downloaded ADD URL).
    File {
        /// The file on the host.
        path: &'a Path,
        /// The name it gets in a destination directory.
        name: &'a str,
    },
}

/// A `--chmod` value: octal (`755`, `0644`) or symbolic (`u+x`,
/// `u=rwx,g=rx,o=`), as BuildKit accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Chmod {
    /// Replace the permission bits.
    Octal(u32),
    /// chmod(1)-style clauses, applied to the source mode.
    Symbolic(Vec<ChmodClause>),
}

/// One `who op perms` clause of a symbolic mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChmodClause {
    who: u32,
    ops: Vec<(char, String)>,
}

impl Chmod {
    /// Parses a `--chmod` value.
    pub fn parse(s: &str) -> Result<Chmod> {
        let bad = || CopyError::Chmod(s.to_string());
        if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
            let mode = u32::from_str_radix(s, 8).map_err(|_| bad())?;
            if mode > 0o7777 {
                return Err(bad());
            }
            return Ok(Chmod::Octal(mode));
        }
        let mut clauses = Vec::new();
        for clause in s.split(',') {
            let mut chars = clause.chars().peekable();
            let mut who = 0;
            while let Some(&c) = chars.peek() {
                who |= match c {
                    'u' => 0o4700,
                    'g' => 0o2070,
                    'o' => 0o1007,
                    'a' => 0o7777,
                    _ => break,
                };
                chars.next();
            }
            if who == 0 {
                who = 0o7777;
            }
            let mut ops = Vec::new();
            while let Some(op) = chars.next() {
                if !matches!(op, '+' | '-' | '=') {
                    return Err(bad());
                }
                let mut perms = String::new();
                while let Some(&c) = chars.peek() {
                    if !matches!(c, 'r' | 'w' | 'x' | 'X' | 's' | 't') {
                        break;
                    }
                    perms.push(c);
                    chars.next();
                }
                ops.push((op, perms));
            }
            if ops.is_empty() {
                return Err(bad());
            }
            clauses.push(ChmodClause { who, ops });
        }
        Ok(Chmod::Symbolic(clauses))
    }

    /// The new permission bits for an entry with `mode`.
    pub fn apply(&self, mode: u32, is_dir: bool) -> u32 {
        match self {
            Chmod::Octal(m) => *m,
            Chmod::Symbolic(clauses) => {
                let mut mode = mode & 0o7777;
                for c in clauses {
                    for (op, perms) in &c.ops {
                        let mut bits = 0;
                        for p in perms.chars() {
                            bits |= match p {
                                'r' => 0o444,
                                'w' => 0o222,
                                'x' => 0o111,
                                'X' if is_dir || mode & 0o111 != 0 => 0o111,
                                's' => 0o6000,
                                't' => 0o1000,
                                _ => 0,
                            };
                        }
                        bits &= c.who;
                        match op {
                            '+' => mode |= bits,
                            '-' => mode &= !bits,
                            _ => mode = (mode & !c.who) | bits,
                        }
                    }
                }
                mode
            }
        }
    }
}

/// Flags of one COPY/ADD.
#[derive(Debug, Clone, Default)]
pub struct CopyOptions {
    /// `--chown=user[:group]`, resolved against the destination image.
    pub chown: Option<String>,
    /// `--chmod`.
    pub chmod: Option<Chmod>,
    /// `--exclude` patterns for [`CopySource::Dir`] sources (context
    /// selections apply theirs in [`BuildContext::select`]).
    pub exclude: Vec<String>,
    /// `--parents`: keep each source's path (after a `/./` pivot, if any)
    /// under the destination.
    pub parents: bool,
    /// `--link`: the files are written the same way; the layer being
    /// independent of its parent is the snapshotter's concern.
    pub link: bool,
    /// ADD: extract local tar archives instead of copying them.
    pub extract_archives: bool,
}

/// What a node of a copy is.
#[derive(Debug, Clone)]
enum NodeKind {
    Dir,
    File(PathBuf),
    Data(Vec<u8>),
    Symlink(String),
    Fifo,
    CharDevice(u64),
    BlockDevice(u64),
}

/// One entry to write, relative to its item's destination.
#[derive(Debug, Clone)]
struct Node {
    rel: String,
    kind: NodeKind,
    mode: u32,
    uid: u32,
    gid: u32,
    /// Modification time (seconds, nanoseconds); `None` is now.
    mtime: Option<(i64, i64)>,
    /// `(dev, inode)` of a multiply-linked source file, to keep hard links.
    link_key: Option<(u64, u64)>,
}

/// One source after expansion: a directory whose contents are copied, or
/// a single non-directory.
#[derive(Debug)]
struct Item {
    /// The name a non-directory gets inside a destination directory.
    name: String,
    /// With `--parents`: the path kept under the destination.
    parents: Option<String>,
    is_dir: bool,
    /// For a directory the first node is the directory itself.
    nodes: Vec<Node>,
    /// A local file that ADD may extract.
    archive_candidate: bool,
}

fn node_from_entry(rel: &str, host: PathBuf, entry: &Entry, keep_owner: bool) -> Node {
    let m = &entry.meta;
    let kind = match &entry.kind {
        EntryKind::Dir => NodeKind::Dir,
        EntryKind::File => NodeKind::File(host),
        EntryKind::Symlink(t) => NodeKind::Symlink(t.clone()),
        EntryKind::Fifo => NodeKind::Fifo,
        EntryKind::CharDevice => NodeKind::CharDevice(m.rdev()),
        EntryKind::BlockDevice => NodeKind::BlockDevice(m.rdev()),
    };
    let (uid, gid) = if keep_owner {
        (m.uid(), m.gid())
    } else {
        (0, 0)
    };
    Node {
        rel: rel.to_string(),
        link_key: (entry.kind == EntryKind::File && m.nlink() > 1).then(|| (m.dev(), m.ino())),
        kind,
        mode: m.mode() & 0o7777,
        uid,
        gid,
        mtime: Some((m.mtime(), m.mtime_nsec())),
    }
}

/// With `--parents`, the part of `matched` kept under the destination:
/// everything, or what follows a `/./` pivot in the source as written.
fn parents_path(written: &str, matched: &str) -> String {
    let strip = match written.find("/./") {
        Some(i) => {
            let before = clean(written[..i].trim_start_matches('/'));
            if before == "." {
                0
            } else {
                before.split('/').count()
            }
        }
        None => 0,
    };
    matched
        .split('/')
        .filter(|c| !c.is_empty())
        .skip(strip)
        .collect::<Vec<_>>()
        .join("/")
}

fn items_from_selected(sel: &Selection, src: &SelectedSource, keep_owner: bool) -> Item {
    Item {
        name: src
            .matched
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_string(),
        parents: Some(parents_path(&src.source, &src.matched)),
        is_dir: src.is_dir,
        nodes: src
            .files
            .iter()
            .map(|f| node_from_entry(f.rel, sel.host_path(f.context_path), f.entry, keep_owner))
            .collect(),
        archive_candidate: !src.is_dir,
    }
}

/// Expands one source path of another rootfs (wildcards matched per
/// component with Go's `filepath.Match`) to image paths.
fn expand_in_root(root: &Path, written: &str) -> Result<Vec<String>> {
    let cleaned = clean(&format!("/{written}"));
    let rel = cleaned.trim_start_matches('/');
    if !has_wildcards(rel) {
        return Ok(vec![rel.to_string()]);
    }
    let mut current = vec![String::new()];
    for comp in rel.split('/') {
        let mut next = Vec::new();
        for base in &current {
            let join = |name: &str| {
                if base.is_empty() {
                    name.to_string()
                } else {
                    format!("{base}/{name}")
                }
            };
            if !has_wildcards(comp) {
                next.push(join(comp));
                continue;
            }
            let host = rootfs::resolve(root, base).map_err(io_err("resolve", root))?;
            let Ok(listing) = fs::read_dir(&host) else {
                continue;
            };
            let mut names: Vec<String> = listing
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            for name in names {
                match filepath_match(comp, &name) {
                    Ok(true) => next.push(join(&name)),
                    Ok(false) => {}
                    Err(_) => {
                        return Err(ContextError::BadPattern {
                            name: written.to_string(),
                        }
                        .into())
                    }
                }
            }
        }
        current = next;
    }
    if current.is_empty() {
        return Err(ContextError::NoMatch {
            name: written.to_string(),
        }
        .into());
    }
    Ok(current)
}

/// Items for `COPY --from`: each path resolved inside `root` (symlinks
/// followed there), directories walked without following inner symlinks.
fn items_from_root(root: &Path, paths: &[String], excludes: &[String]) -> Result<Vec<Item>> {
    let matcher = Matcher::new(excludes).map_err(ContextError::Exclude)?;
    let mut items = Vec::new();
    for written in paths {
        for image_path in expand_in_root(root, written)? {
            let host = rootfs::resolve(root, &image_path).map_err(io_err("resolve", root))?;
            let meta = match fs::symlink_metadata(&host) {
                Ok(m) => m,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(CopyError::NotFound {
                        name: written.clone(),
                    })
                }
                Err(e) => return Err(io_err("stat", &host)(e)),
            };
            let name = image_path
                .rsplit('/')
                .next()
                .unwrap_or_default()
                .to_string();
            let parents = Some(parents_path(written, &image_path));
            if meta.is_dir() {
                let ctx = BuildContext::walk(&host, &matcher)?;
                let sel = ctx.select(&[".".to_string()], &[], false)?;
                let mut item = items_from_selected(&sel, &sel.sources()[0], true);
                item.name = name;
                item.parents = parents;
                items.push(item);
            } else {
                let entry = Entry {
                    // A socket named as a `--from` source is taken as a
                    // regular file here.
                    kind: EntryKind::of(&host, &meta)
                        .map_err(io_err("read symlink", &host))?
                        .unwrap_or(EntryKind::File),
                    meta,
                };
                if matcher.excluded(&name).map_err(ContextError::Exclude)? {
                    continue;
                }
                items.push(Item {
                    nodes: vec![node_from_entry("", host.clone(), &entry, true)],
                    name,
                    parents,
                    is_dir: false,
                    archive_candidate: false,
                });
            }
        }
    }
    Ok(items)
}

/// Joins image paths.
fn join_image(base: &str, rel: &str) -> String {
    match (base.trim_end_matches('/'), rel) {
        (b, "") => {
            if b.is_empty() {
                "/".to_string()
            } else {
                b.to_string()
            }
        }
        (b, r) => format!("{b}/{r}"),
    }
}

/// Performs one COPY/ADD into `rootfs`.
///
/// `dest` is the destination as written (after variable expansion) and
/// `workdir` the stage's WORKDIR (an absolute image path; `/` when unset).
pub fn apply(
    rootfs_dir: &Path,
    source: CopySource<'_>,
    dest: &str,
    workdir: &str,
    opts: &CopyOptions,
) -> Result<()> {
    let chown = match &opts.chown {
        Some(spec) if !spec.is_empty() => Some(lookup_chown(rootfs_dir, spec)?),
        _ => None,
    };
    let (items, words) = match source {
        CopySource::Context(sel) => {
            let mut words: Vec<&str> = sel.sources().iter().map(|s| s.source.as_str()).collect();
            words.dedup();
            let items = sel
                .sources()
                .iter()
                .map(|s| items_from_selected(sel, s, false))
                .collect();
            (items, words.len())
        }
        CopySource::Dir { root, paths } => {
            (items_from_root(root, paths, &opts.exclude)?, paths.len())
        }
        CopySource::Inline { name, data } => (
            vec![Item {
                name: name.to_string(),
                parents: Some(name.to_string()),
                is_dir: false,
                nodes: vec![Node {
                    rel: String::new(),
                    kind: NodeKind::Data(data.to_vec()),
                    mode: 0o644,
                    uid: 0,
                    gid: 0,
                    mtime: None,
                    link_key: None,
                }],
                archive_candidate: false,
            }],
            1,
        ),
        CopySource::File { path, name } => {
            let meta = fs::metadata(path).map_err(io_err("stat", path))?;
            let entry = Entry {
                kind: EntryKind::File,
                meta,
            };
            let mut node = node_from_entry("", path.to_path_buf(), &entry, false);
            node.link_key = None;
            (
                vec![Item {
                    name: name.to_string(),
                    parents: Some(name.to_string()),
                    is_dir: false,
                    nodes: vec![node],
                    archive_candidate: false,
                }],
                1,
            )
        }
    };

    let dir_syntax = dest.ends_with('/') || dest == "." || dest.ends_with("/.") || dest.is_empty();
    if words > 1 && !dir_syntax {
        return Err(CopyError::MultipleSources {
            dest: dest.to_string(),
        });
    }
    let dest_path = clean(&if dest.starts_with('/') {
        dest.to_string()
    } else {
        format!("{}/{dest}", if workdir.is_empty() { "/" } else { workdir })
    });
    let dest_is_dir = dir_syntax || items.len() > 1 || opts.parents;

    let mut w = Writer {
        rootfs: rootfs_dir,
        chown,
        chmod: opts.chmod.as_ref(),
        links: HashMap::new(),
        dir_times: Vec::new(),
    };
    for item in items {
        if item.nodes.is_empty() {
            continue;
        }
        let kept = if opts.parents {
            item.parents.clone()
        } else {
            None
        };
        if item.is_dir {
            let target = join_image(&dest_path, kept.as_deref().unwrap_or(""));
            w.copy_tree(&target, &item.nodes)?;
            continue;
        }
        if opts.extract_archives && item.archive_candidate {
            if let NodeKind::File(host) = &item.nodes[0].kind {
                if w.extract(host, &dest_path)? {
                    continue;
                }
            }
        }
        let target = if let Some(k) = kept {
            join_image(&dest_path, &k)
        } else if dest_is_dir || w.is_dir(&dest_path)? {
            join_image(&dest_path, &item.name)
        } else {
            dest_path.clone()
        };
        let parent = crate::pathmatch::dir(&target);
        w.mkdir_all(&parent)?;
        w.write_node(&target, &item.nodes[0])?;
    }
    w.finish()
}

struct Writer<'a> {
    rootfs: &'a Path,
    chown: Option<(u32, u32)>,
    chmod: Option<&'a Chmod>,
    /// First written host path of each multiply-linked source inode.
    links: HashMap<(u64, u64), PathBuf>,
    /// Directories whose times are set after their contents are written.
    dir_times: Vec<(PathBuf, Option<(i64, i64)>)>,
}

impl Writer<'_> {
    fn resolve(&self, image_path: &str) -> Result<PathBuf> {
        rootfs::resolve(self.rootfs, image_path).map_err(io_err("resolve", self.rootfs))
    }

    fn resolve_parent(&self, image_path: &str) -> Result<PathBuf> {
        rootfs::resolve_parent(self.rootfs, image_path).map_err(io_err("resolve", self.rootfs))
    }

    fn is_dir(&self, image_path: &str) -> Result<bool> {
        let host = self.resolve(image_path)?;
        Ok(fs::metadata(host).is_ok_and(|m| m.is_dir()))
    }

    fn owner(&self, node_uid: u32, node_gid: u32) -> (u32, u32) {
        self.chown.unwrap_or((node_uid, node_gid))
    }

    /// Creates the missing directories of `image_path` (0755, the chown
    /// owner or root), following existing symlinks inside the rootfs.
    fn mkdir_all(&mut self, image_path: &str) -> Result<()> {
        // Resolve once (symlinks followed inside the rootfs, missing parts
        // appended), then create what is missing along the resolved path,
        // which has no symlinks left.
        let host = self.resolve(image_path)?;
        let rel = host
            .strip_prefix(self.rootfs)
            .unwrap_or(Path::new(""))
            .to_path_buf();
        let mut cur = self.rootfs.to_path_buf();
        for comp in rel.components() {
            cur.push(comp);
            match fs::symlink_metadata(&cur) {
                Ok(m) if m.is_dir() => continue,
                Ok(_) => {
                    return Err(CopyError::NotADirectory {
                        path: format!(
                            "/{}",
                            cur.strip_prefix(self.rootfs).unwrap_or(&cur).display()
                        ),
                    })
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    fs::create_dir(&cur).map_err(io_err("create directory", &cur))?;
                    // BuildKit (fsutil since 2025) gives created parents the
                    // --chmod mode too, not only the copied entries.
                    let mode = self.chmod.map_or(0o755, |c| c.apply(0o755, true));
                    fs::set_permissions(&cur, fs::Permissions::from_mode(mode))
                        .map_err(io_err("chmod", &cur))?;
                    let (uid, gid) = self.chown.unwrap_or((0, 0));
                    std::os::unix::fs::lchown(&cur, Some(uid), Some(gid))
                        .map_err(io_err("chown", &cur))?;
                }
                Err(e) => return Err(io_err("stat", &cur)(e)),
            }
        }
        Ok(())
    }

    /// Copies a directory item's contents into `target`. A missing target is
    /// created like any parent (BuildKit copies a directory's contents, not
    /// the directory, so the source directory's own owner and mode are not
    /// carried over); an existing one is left as it is.
    fn copy_tree(&mut self, target: &str, nodes: &[Node]) -> Result<()> {
        self.mkdir_all(target)?;
        for node in nodes.iter().filter(|n| !n.rel.is_empty()) {
            let path = join_image(target, &node.rel);
            self.write_node(&path, node)?;
        }
        Ok(())
    }

    /// Writes one node at `image_path`. An existing directory there gets the
    /// node's metadata (as BuildKit does inside a copied tree).
    fn write_node(&mut self, image_path: &str, node: &Node) -> Result<()> {
        let host = self.resolve_parent(image_path)?;
        let existing = match fs::symlink_metadata(&host) {
            Ok(m) => Some(m),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) if e.raw_os_error() == Some(20) => {
                return Err(CopyError::NotADirectory {
                    path: image_path.to_string(),
                })
            }
            Err(e) => return Err(io_err("stat", &host)(e)),
        };
        let (uid, gid) = self.owner(node.uid, node.gid);
        let mode = match self.chmod {
            Some(c) => c.apply(node.mode, matches!(node.kind, NodeKind::Dir)),
            None => node.mode,
        };
        if let NodeKind::Dir = node.kind {
            let is_dir = match &existing {
                Some(m) if m.is_dir() => true,
                // A symlink to a directory (`/lib -> usr/lib`) is kept and
                // written through, inside the rootfs.
                Some(m) if m.file_type().is_symlink() && self.is_dir(image_path)? => return Ok(()),
                Some(_) => {
                    fs::remove_file(&host).map_err(io_err("remove", &host))?;
                    false
                }
                None => false,
            };
            if !is_dir {
                fs::create_dir(&host).map_err(io_err("create directory", &host))?;
            }
            std::os::unix::fs::lchown(&host, Some(uid), Some(gid))
                .map_err(io_err("chown", &host))?;
            fs::set_permissions(&host, fs::Permissions::from_mode(mode))
                .map_err(io_err("chmod", &host))?;
            self.dir_times.push((host, node.mtime));
            return Ok(());
        }
        match &existing {
            Some(m) if m.is_dir() => {
                return Err(CopyError::Conflict {
                    what: "a file",
                    path: image_path.to_string(),
                })
            }
            Some(_) => fs::remove_file(&host).map_err(io_err("remove", &host))?,
            None => {}
        }
        if let Some(key) = node.link_key {
            if let Some(first) = self.links.get(&key) {
                fs::hard_link(first, &host).map_err(io_err("link", &host))?;
                return Ok(());
            }
            self.links.insert(key, host.clone());
        }
        match &node.kind {
            NodeKind::File(src) => {
                let mut input = File::open(src).map_err(io_err("open", src))?;
                let mut out = create_new(&host)?;
                // std's copy uses copy_file_range between files: no user-space
                // buffer for large files.
                io::copy(&mut input, &mut out).map_err(io_err("copy to", &host))?;
            }
            NodeKind::Data(data) => {
                let mut out = create_new(&host)?;
                io::Write::write_all(&mut out, data).map_err(io_err("write", &host))?;
            }
            NodeKind::Symlink(target) => {
                std::os::unix::fs::symlink(target, &host).map_err(io_err("symlink", &host))?;
            }
            NodeKind::Fifo => mknod(&host, rustix::fs::FileType::Fifo, mode, 0)?,
            NodeKind::CharDevice(dev) => {
                mknod(&host, rustix::fs::FileType::CharacterDevice, mode, *dev)?
            }
            NodeKind::BlockDevice(dev) => {
                mknod(&host, rustix::fs::FileType::BlockDevice, mode, *dev)?
            }
            NodeKind::Dir => {}
        }
        std::os::unix::fs::lchown(&host, Some(uid), Some(gid)).map_err(io_err("chown", &host))?;
        if !matches!(node.kind, NodeKind::Symlink(_)) {
            // After chown, which clears setuid/setgid.
            fs::set_permissions(&host, fs::Permissions::from_mode(mode))
                .map_err(io_err("chmod", &host))?;
        }
        set_mtime(&host, node.mtime)
    }

    /// ADD of a local archive: extracted into `dest_dir` through the image's
    /// confined extractor. `false` (nothing written) when it is not a tar.
    fn extract(&mut self, archive: &Path, dest_dir: &str) -> Result<bool> {
        let file = File::open(archive).map_err(io_err("open", archive))?;
        rbuild_image::extract_archive(file, self.rootfs, dest_dir).map_err(|e| CopyError::Extract {
            path: archive.to_path_buf(),
            message: e.to_string(),
        })
    }

    /// Sets directory times last (children changed them), deepest first.
    fn finish(self) -> Result<()> {
        for (host, mtime) in self.dir_times.iter().rev() {
            set_mtime(host, *mtime)?;
        }
        Ok(())
    }
}

fn create_new(host: &Path) -> Result<File> {
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(host)
        .map_err(io_err("create", host))
}

fn mknod(host: &Path, kind: rustix::fs::FileType, mode: u32, dev: u64) -> Result<()> {
    rustix::fs::mknodat(
        rustix::fs::CWD,
        host,
        kind,
        rustix::fs::Mode::from_raw_mode(mode),
        dev,
    )
    .map_err(|e| io_err("mknod", host)(e.into()))
}

/// Sets atime and mtime (not following a symlink); `None` leaves them at
/// the time of writing.
fn set_mtime(host: &Path, mtime: Option<(i64, i64)>) -> Result<()> {
    let Some((sec, nsec)) = mtime else {
        return Ok(());
    };
    let ts = rustix::fs::Timespec {
        tv_sec: sec,
        tv_nsec: nsec,
    };
    let times = rustix::fs::Timestamps {
        last_access: ts,
        last_modification: ts,
    };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        host,
        &times,
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .map_err(|e| io_err("set times", host)(e.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chmod_values() {
        assert_eq!(Chmod::parse("755").unwrap(), Chmod::Octal(0o755));
        assert_eq!(Chmod::parse("0644").unwrap(), Chmod::Octal(0o644));
        assert!(Chmod::parse("17777").is_err());
        assert!(Chmod::parse("8").is_err());
        assert!(Chmod::parse("abc").is_err());
        let sym = Chmod::parse("u+x").unwrap();
        assert_eq!(sym.apply(0o644, false), 0o744);
        let sym = Chmod::parse("u=rwx,g=rx,o=").unwrap();
        assert_eq!(sym.apply(0o666, false), 0o750);
        let sym = Chmod::parse("a+X").unwrap();
        assert_eq!(sym.apply(0o644, false), 0o644);
        assert_eq!(sym.apply(0o644, true), 0o755);
        assert_eq!(Chmod::parse("go-w").unwrap().apply(0o666, false), 0o644);
    }

    #[test]
    fn parents_pivot() {
        assert_eq!(parents_path("a/b/c.txt", "a/b/c.txt"), "a/b/c.txt");
        assert_eq!(parents_path("./x/./y/z", "x/y/z"), "y/z");
        assert_eq!(parents_path("x/./y/*", "x/y/q"), "y/q");
        assert_eq!(parents_path("/./a", "a"), "a");
    }
}
