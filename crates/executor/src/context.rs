//! The build context: the directory tree a build may read, as filtered by
//! `.dockerignore`, and the selection of COPY/ADD sources from it.
//!
//! [`BuildContext::open`] walks the directory once (lstat only, no file
//! contents) and keeps the included entries. [`BuildContext::select`] turns
//! the sources of one COPY/ADD into a [`Selection`], resolving wildcards
//! (Go `filepath.Match`, as BuildKit) and symlinks named as sources (followed,
//! but only inside the context). [`Selection::digest`] computes the content
//! digest used in cache keys, hashing files in parallel and reusing digests
//! from the store's [`StatCache`] so a no-op rebuild reads no file contents.
//!
//! Unix sockets are skipped, as Docker's archiver does; FIFOs and device
//! nodes are kept as entries (never opened) and copied as nodes. Writing
//! selected files into an image is [`crate::copy`]'s job.

use std::collections::{HashMap, HashSet, LinkedList};
use std::fs::{self, Metadata};
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use rbuild_cache::{Digest, Hasher, StatCache};

use crate::dockerignore::{MatchState, Matcher, PatternError};
use crate::pathmatch::{clean, filepath_match, path_order};

/// Errors about the build context and COPY/ADD sources.
#[derive(Debug, thiserror::Error)]
pub enum ContextError {
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
    /// The `.dockerignore` file is invalid.
    #[error("invalid .dockerignore: {0}")]
    Ignore(#[from] PatternError),
    /// A `--exclude` pattern is invalid.
    #[error("invalid --exclude pattern: {0}")]
    Exclude(PatternError),
    /// A source does not exist in the context (or is excluded by
    /// `.dockerignore`).
    #[error("COPY source {name:?} not found in the build context")]
    NotFound {
        /// The source as written.
        name: String,
    },
    /// A wildcard source matched nothing.
    #[error("COPY source {name:?} matched no files in the build context")]
    NoMatch {
        /// The source as written.
        name: String,
    },
    /// A wildcard source is not a valid pattern.
    #[error("COPY source {name:?} is not a valid pattern")]
    BadPattern {
        /// The source as written.
        name: String,
    },
    /// A source names a path outside the context (`../x`), or a symlink
    /// on its path leads outside it.
    #[error("COPY source {name:?} is outside the build context{}", via.as_ref().map(|v| format!(" (through symlink {v})")).unwrap_or_default())]
    OutsideContext {
        /// The source as written.
        name: String,
        /// The symlink that leads out, `path -> target`, if any.
        via: Option<String>,
    },
    /// Symlinks on a source's path loop.
    #[error("COPY source {name:?}: too many levels of symbolic links")]
    SymlinkLoop {
        /// The source as written.
        name: String,
    },
}

type Result<T> = std::result::Result<T, ContextError>;

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> ContextError + 'a {
    move |source| ContextError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// What a context entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    /// A directory.
    Dir,
    /// A regular file.
    File,
    /// A symbolic link with its target, as stored.
    Symlink(String),
    /// A named pipe.
    Fifo,
    /// A character device (`rdev` in the metadata).
    CharDevice,
    /// A block device.
    BlockDevice,
}

impl EntryKind {
    /// What the file at `host` with `lstat` metadata `meta` is; a symlink's
    /// target is read. `None` for a Unix socket, which cannot be archived.
    pub fn of(host: &Path, meta: &Metadata) -> io::Result<Option<EntryKind>> {
        let ft = meta.file_type();
        Ok(Some(if ft.is_dir() {
            EntryKind::Dir
        } else if ft.is_file() {
            EntryKind::File
        } else if ft.is_symlink() {
            EntryKind::Symlink(fs::read_link(host)?.to_string_lossy().into_owned())
        } else if ft.is_fifo() {
            EntryKind::Fifo
        } else if ft.is_char_device() {
            EntryKind::CharDevice
        } else if ft.is_block_device() {
            EntryKind::BlockDevice
        } else {
            return Ok(None);
        }))
    }

    fn tag(&self) -> u8 {
        match self {
            EntryKind::Dir => b'd',
            EntryKind::File => b'f',
            EntryKind::Symlink(_) => b'l',
            EntryKind::Fifo => b'p',
            EntryKind::CharDevice => b'c',
            EntryKind::BlockDevice => b'b',
        }
    }
}

/// One included path of the context.
#[derive(Debug, Clone)]
pub struct Entry {
    /// What it is.
    pub kind: EntryKind,
    /// Its `lstat` metadata, taken during the walk.
    pub meta: Metadata,
}

impl Entry {
    /// Permission bits, including setuid, setgid and sticky.
    pub fn mode(&self) -> u32 {
        self.meta.mode() & 0o7777
    }
}

/// A build context directory with its `.dockerignore` applied.
#[derive(Debug)]
pub struct BuildContext {
    root: PathBuf,
    /// Included entries by slash-separated relative path, in
    /// [`path_order`]: each directory right before its contents.
    entries: Vec<(String, Entry)>,
    /// The context root itself (a directory).
    root_entry: Entry,
    /// Unix sockets that were left out.
    skipped: Vec<String>,
}

impl BuildContext {
    /// Walks `dir` and applies `ignore_text` (the content of the chosen
    /// ignore file: `<Dockerfile>.dockerignore` if it exists, else the
    /// context's `.dockerignore`; that choice is the caller's).
    ///
    /// An excluded directory is still descended into when a later `!`
    /// pattern could re-include something inside it; the parents of a
    /// re-included path are kept as entries (their metadata is the real one).
    pub fn open(dir: &Path, ignore_text: Option<&str>) -> Result<BuildContext> {
        let matcher = Matcher::from_ignore_file(ignore_text.unwrap_or(""))?;
        BuildContext::walk(dir, &matcher)
    }

    /// Walks `dir` excluding what `matcher` excludes (used for `.dockerignore`
    /// and for `COPY --from --exclude` on another stage's directory).
    pub fn walk(dir: &Path, matcher: &Matcher) -> Result<BuildContext> {
        let root = fs::canonicalize(dir).map_err(io_err("open build context", dir))?;
        let root_meta = fs::metadata(&root).map_err(io_err("stat", &root))?;
        if !root_meta.is_dir() {
            return Err(ContextError::Io {
                op: "open build context",
                path: root,
                source: io::Error::new(io::ErrorKind::NotADirectory, "not a directory"),
            });
        }
        let listing = Walker { matcher }.walk(&root, "", &MatchState::default())?;
        let mut skipped = listing.skipped;
        skipped.sort();
        let entries: Vec<(String, Entry)> = listing.entries.into_iter().flatten().collect();
        debug_assert!(entries
            .windows(2)
            .all(|w| path_order(&w[0].0, &w[1].0).is_lt()));
        Ok(BuildContext {
            root,
            entries,
            root_entry: Entry {
                kind: EntryKind::Dir,
                meta: root_meta,
            },
            skipped,
        })
    }

    /// The canonical context directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// All included entries by relative path, each directory right before
    /// its contents ([`path_order`]).
    pub fn entries(&self) -> &[(String, Entry)] {
        &self.entries
    }

    /// The included entry at a relative path (no symlinks followed).
    pub fn get(&self, rel: &str) -> Option<&Entry> {
        self.position(rel).map(|i| &self.entries[i].1)
    }

    fn position(&self, rel: &str) -> Option<usize> {
        self.entries
            .binary_search_by(|(p, _)| path_order(p, rel))
            .ok()
    }

    /// Unix sockets found in the context and left out (relative paths).
    pub fn skipped(&self) -> &[String] {
        &self.skipped
    }

    /// Resolves a relative path through the context's symlinks, staying
    /// inside the context: absolute targets and `..` above the root are
    /// errors. `follow_last` also follows a final symlink. `Ok(None)` when a
    /// component does not exist (or is excluded).
    fn resolve(&self, source: &str, path: &str, follow_last: bool) -> Result<Option<String>> {
        let mut pending: Vec<String> = path.split('/').rev().map(str::to_string).collect();
        let mut cur: Vec<String> = Vec::new();
        let mut hops = 0;
        while let Some(comp) = pending.pop() {
            match comp.as_str() {
                "" | "." => continue,
                ".." => {
                    if cur.pop().is_none() {
                        return Err(ContextError::OutsideContext {
                            name: source.to_string(),
                            via: None,
                        });
                    }
                    continue;
                }
                _ => {}
            }
            cur.push(comp);
            let joined = cur.join("/");
            let Some(entry) = self.get(&joined) else {
                return Ok(None);
            };
            if let EntryKind::Symlink(target) = &entry.kind {
                if pending.is_empty() && !follow_last {
                    continue;
                }
                hops += 1;
                if hops > 40 {
                    return Err(ContextError::SymlinkLoop {
                        name: source.to_string(),
                    });
                }
                let outside = || ContextError::OutsideContext {
                    name: source.to_string(),
                    via: Some(format!("{joined} -> {target}")),
                };
                if target.starts_with('/') {
                    return Err(outside());
                }
                cur.pop();
                // `..` in the target is checked against the link's directory.
                let base = cur.join("/");
                let combined = if base.is_empty() {
                    target.clone()
                } else {
                    format!("{base}/{target}")
                };
                if clean(&combined).starts_with("..") {
                    return Err(outside());
                }
                pending.extend(target.split('/').rev().map(str::to_string));
            }
        }
        Ok(Some(cur.join("/")))
    }

    /// Selects the sources of one COPY/ADD.
    ///
    /// `sources` are the source words after variable expansion. A leading `/`
    /// means the context root; a path leading out of the context (`../x`) is
    /// an error. Sources with `*`, `?` or `[` are wildcards matched with Go's
    /// `filepath.Match` against context paths of the same depth; each match
    /// is selected as if named. `follow_symlinks` follows a symlink named as
    /// a source (Docker does); symlinks inside a selected directory are kept
    /// as symlinks. `excludes` are `--exclude` patterns (`.dockerignore`
    /// syntax), matched against paths relative to each selected directory,
    /// or against a selected file's name.
    pub fn select(
        &self,
        sources: &[String],
        excludes: &[String],
        follow_symlinks: bool,
    ) -> Result<Selection<'_>> {
        let excludes = Matcher::new(excludes).map_err(ContextError::Exclude)?;
        let mut selected = Vec::new();
        for source in sources {
            let rel = clean(source.trim_start_matches('/'));
            if rel == ".." || rel.starts_with("../") {
                return Err(ContextError::OutsideContext {
                    name: source.clone(),
                    via: None,
                });
            }
            let rel = if rel == "." { String::new() } else { rel };
            if has_wildcards(&rel) {
                let depth = rel.split('/').count();
                let mut matches = Vec::new();
                for (path, _) in &self.entries {
                    if path.split('/').count() != depth {
                        continue;
                    }
                    match filepath_match(&rel, path) {
                        Ok(true) => matches.push(path.clone()),
                        Ok(false) => {}
                        Err(_) => {
                            return Err(ContextError::BadPattern {
                                name: source.clone(),
                            })
                        }
                    }
                }
                if matches.is_empty() {
                    return Err(ContextError::NoMatch {
                        name: source.clone(),
                    });
                }
                for m in matches {
                    selected.push(self.select_one(source, &m, follow_symlinks, &excludes)?);
                }
            } else {
                selected.push(self.select_one(source, &rel, follow_symlinks, &excludes)?);
            }
        }
        Ok(Selection {
            root: &self.root,
            sources: selected,
        })
    }

    fn select_one(
        &self,
        source: &str,
        rel: &str,
        follow: bool,
        excludes: &Matcher,
    ) -> Result<SelectedSource<'_>> {
        let not_found = || ContextError::NotFound {
            name: source.to_string(),
        };
        let path = self.resolve(source, rel, follow)?.ok_or_else(not_found)?;
        // The source's own entry, and the position after it: its contents
        // follow it.
        let (top_path, top, inside) = if path.is_empty() {
            ("", &self.root_entry, 0)
        } else {
            let i = self.position(&path).ok_or_else(not_found)?;
            (self.entries[i].0.as_str(), &self.entries[i].1, i + 1)
        };
        let mut files = Vec::new();
        let name = rel.rsplit('/').next().unwrap_or_default().to_string();
        if top.kind == EntryKind::Dir {
            files.push(SelectedFile {
                rel: "",
                context_path: top_path,
                entry: top,
            });
            let prefix = if path.is_empty() {
                String::new()
            } else {
                format!("{path}/")
            };
            // Per-pattern results of each directory, for its children.
            let mut states: HashMap<String, MatchState> = HashMap::new();
            // Directories already selected (entries stay in path order: a
            // directory kept only to hold a re-included entry is pushed
            // right before that entry).
            let mut chosen_dirs: HashSet<&str> = HashSet::new();
            for (p, entry) in &self.entries[inside..] {
                let Some(inner) = p.strip_prefix(&prefix) else {
                    break;
                };
                if excludes.is_empty() {
                    files.push(SelectedFile {
                        rel: inner,
                        context_path: p,
                        entry,
                    });
                    continue;
                }
                {
                    let parent = inner
                        .rfind('/')
                        .and_then(|i| states.get(&inner[..i]))
                        .cloned()
                        .unwrap_or_default();
                    let (excluded, state) = excludes
                        .excluded_in(inner, &parent)
                        .map_err(ContextError::Exclude)?;
                    if entry.kind == EntryKind::Dir {
                        states.insert(inner.to_string(), state);
                    }
                    if excluded {
                        continue;
                    }
                    // Directories excluded above a re-included entry are
                    // still needed to hold it.
                    let mut end = 0;
                    while let Some(i) = inner[end..].find('/') {
                        end += i;
                        let dir = &inner[..end];
                        if !chosen_dirs.contains(dir) {
                            let full = &p[..prefix.len() + end];
                            if let Some(i) = self.position(full) {
                                let (full, e) = &self.entries[i];
                                chosen_dirs.insert(dir);
                                files.push(SelectedFile {
                                    rel: &full[prefix.len()..],
                                    context_path: full,
                                    entry: e,
                                });
                            }
                        }
                        end += 1;
                    }
                }
                if entry.kind == EntryKind::Dir {
                    chosen_dirs.insert(inner);
                }
                files.push(SelectedFile {
                    rel: inner,
                    context_path: p,
                    entry,
                });
            }
        } else {
            if excludes.excluded(&name).map_err(ContextError::Exclude)? {
                return Ok(SelectedSource {
                    source: source.to_string(),
                    matched: rel.to_string(),
                    path,
                    is_dir: false,
                    files,
                });
            }
            files.push(SelectedFile {
                rel: "",
                context_path: top_path,
                entry: top,
            });
        }
        Ok(SelectedSource {
            source: source.to_string(),
            matched: rel.to_string(),
            is_dir: top.kind == EntryKind::Dir,
            path,
            files,
        })
    }
}

/// The ignore file text that applies to a build: `<Dockerfile>.dockerignore`
/// beside the Dockerfile (for `-f dir/app.Dockerfile`, the file
/// `dir/app.Dockerfile.dockerignore`) takes precedence over the context's
/// `.dockerignore`; `None` when neither exists.
pub fn read_ignore_text(context_dir: &Path, dockerfile: Option<&Path>) -> Result<Option<String>> {
    let mut candidates = Vec::new();
    if let Some(df) = dockerfile {
        let mut name = df.as_os_str().to_os_string();
        name.push(".dockerignore");
        candidates.push(PathBuf::from(name));
    }
    candidates.push(context_dir.join(".dockerignore"));
    for path in candidates {
        match fs::read(&path) {
            Ok(data) => return Ok(Some(String::from_utf8_lossy(&data).into_owned())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_err("read", &path)(e)),
        }
    }
    Ok(None)
}

/// Whether a source word uses wildcards (BuildKit: an unescaped `*`, `?`
/// or `[`).
pub fn has_wildcards(source: &str) -> bool {
    let mut chars = source.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                chars.next();
            }
            '*' | '?' | '[' => return true,
            _ => {}
        }
    }
    false
}

struct Walker<'a> {
    matcher: &'a Matcher,
}

/// What a walk of one subtree found, in [`path_order`]. Chunks in a linked
/// list, so joining the listings of subtrees moves no entries.
#[derive(Default)]
struct Listing {
    entries: LinkedList<Vec<(String, Entry)>>,
    /// Unix sockets that were left out.
    skipped: Vec<String>,
}

impl Listing {
    fn push(&mut self, rel: String, entry: Entry) {
        match self.entries.back_mut() {
            Some(chunk) => chunk.push((rel, entry)),
            None => self.entries.push_back(vec![(rel, entry)]),
        }
    }

    fn append(&mut self, mut other: Listing) {
        self.entries.append(&mut other.entries);
        self.skipped.append(&mut other.skipped);
    }

    fn is_empty(&self) -> bool {
        self.entries.iter().all(Vec::is_empty)
    }
}

impl Walker<'_> {
    /// Walks one directory: its entries are stat'ed and its subdirectories
    /// walked in parallel (a no-op rebuild is mostly this walk's `lstat`s).
    /// Entries are visited by name and each directory is listed before its
    /// contents, so the listing comes out in [`path_order`].
    fn walk(&self, dir: &Path, rel_dir: &str, state: &MatchState) -> Result<Listing> {
        let mut dirents = fs::read_dir(dir)
            .map_err(io_err("read directory", dir))?
            .map(|d| d.map(|d| (d.file_name().to_string_lossy().into_owned(), d)))
            .collect::<io::Result<Vec<_>>>()
            .map_err(io_err("read directory", dir))?;
        dirents.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        // Each piece rayon splits the directory into fills one listing,
        // not one allocation per entry.
        let parts = dirents
            .into_par_iter()
            .fold(
                || Ok(Listing::default()),
                |acc: Result<Listing>, (name, d)| {
                    let mut out = acc?;
                    self.visit(name, d, rel_dir, state, &mut out)?;
                    Ok(out)
                },
            )
            .collect::<Result<Vec<Listing>>>()?;
        let mut out = Listing::default();
        for part in parts {
            out.append(part);
        }
        Ok(out)
    }

    /// Adds one directory entry and, for a directory, what is inside to
    /// `out`. An excluded directory is walked only when a later `!` pattern
    /// may re-include something in it, and is listed only when something
    /// was.
    fn visit(
        &self,
        name: String,
        dirent: fs::DirEntry,
        rel_dir: &str,
        state: &MatchState,
        out: &mut Listing,
    ) -> Result<()> {
        let rel = if rel_dir.is_empty() {
            name
        } else {
            format!("{rel_dir}/{name}")
        };
        // lstat relative to the open directory: no path walk per entry.
        let meta = match dirent.metadata() {
            Ok(m) => m,
            // Removed while walking: as if it never existed.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err("stat", &dirent.path())(e)),
        };
        let kind = if meta.is_dir() {
            // No path to build for the common case of a directory.
            EntryKind::Dir
        } else {
            let host = dirent.path();
            match EntryKind::of(&host, &meta).map_err(io_err("read symlink", &host))? {
                Some(kind) => kind,
                // Sockets cannot be archived; Docker skips them too.
                None => {
                    out.skipped.push(rel);
                    return Ok(());
                }
            }
        };
        let (excluded, child_state) = if self.matcher.is_empty() {
            (false, MatchState::default())
        } else {
            self.matcher.excluded_in(&rel, state)?
        };
        let is_dir = kind == EntryKind::Dir;
        let entry = Entry { kind, meta };
        if excluded && !(is_dir && self.matcher.may_reinclude_under(&rel)) {
            return Ok(());
        }
        if !is_dir {
            out.push(rel, entry);
            return Ok(());
        }
        let inside = self.walk(&dirent.path(), &rel, &child_state)?;
        // An excluded directory is kept only as the parent of a re-included
        // path.
        if !excluded || !inside.is_empty() {
            out.push(rel, entry);
            out.append(inside);
        }
        Ok(())
    }
}

/// One selected file under a source, borrowed from the [`BuildContext`].
#[derive(Debug, Clone, Copy)]
pub struct SelectedFile<'a> {
    /// Path relative to the selected source (empty for the source itself).
    pub rel: &'a str,
    /// Path relative to the context root.
    pub context_path: &'a str,
    /// The entry.
    pub entry: &'a Entry,
}

/// One source of a COPY/ADD after wildcard and symlink resolution.
#[derive(Debug, Clone)]
pub struct SelectedSource<'a> {
    /// The source word as written (a wildcard for every one of its matches).
    pub source: String,
    /// The matched path relative to the context root, before following a
    /// final symlink (its base name names a copied file).
    pub matched: String,
    /// The resolved path relative to the context root (empty for the root).
    pub path: String,
    /// Whether it is a directory (whose contents are copied).
    pub is_dir: bool,
    /// The selected entries in [`path_order`] (parents before children);
    /// for a directory the first is the directory itself (`rel` empty).
    /// Empty when an `--exclude` pattern excluded a file source.
    pub files: Vec<SelectedFile<'a>>,
}

/// The sources of one COPY/ADD, selected from a [`BuildContext`].
#[derive(Debug, Clone)]
pub struct Selection<'a> {
    root: &'a Path,
    sources: Vec<SelectedSource<'a>>,
}

/// The content digest of a [`Selection`] and of each file in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelectionDigest {
    /// The digest of everything selected, for cache keys.
    pub digest: Digest,
    /// Per-entry digests by context-relative path, sorted (for `--explain`:
    /// which file changed). Each covers the path, kind, mode, owner,
    /// content or link target, never the modification time.
    pub files: Vec<(String, Digest)>,
}

impl<'a> Selection<'a> {
    /// The context directory on the host.
    pub fn root(&self) -> &'a Path {
        self.root
    }

    /// The selected sources, in the order given (wildcard matches sorted).
    pub fn sources(&self) -> &[SelectedSource<'a>] {
        &self.sources
    }

    /// The host path of a context-relative path.
    pub fn host_path(&self, context_path: &str) -> PathBuf {
        if context_path.is_empty() {
            self.root.to_path_buf()
        } else {
            self.root.join(context_path)
        }
    }

    /// Computes the canonical digest: a sha256 over, for each source in
    /// order, its name and resolved path, then for each selected entry (in
    /// order) its relative path, kind, mode, uid, gid and content digest (or
    /// symlink target, or device number). Never the mtime.
    ///
    /// File contents are hashed in parallel; a file whose stat matches the
    /// `cache` entry is not read, and fresh digests are recorded in it (the
    /// caller saves the cache).
    pub fn digest(&self, cache: &StatCache) -> Result<SelectionDigest> {
        let all: Vec<&SelectedFile> = self.sources.iter().flat_map(|s| &s.files).collect();
        let per_file: Vec<Digest> = all
            .par_iter()
            .map(|f| self.entry_digest(f, cache))
            .collect::<Result<_>>()?;
        let mut h = Hasher::new();
        h.update(b"rbuild-selection-v1\0");
        let mut files = Vec::with_capacity(all.len());
        let mut index = 0;
        for source in &self.sources {
            h.update_field(source.source.as_bytes());
            h.update_field(source.path.as_bytes());
            h.update(&(source.files.len() as u64).to_le_bytes());
            for f in &source.files {
                h.update_field(f.rel.as_bytes());
                h.update(per_file[index].as_raw());
                files.push((f.context_path.to_string(), per_file[index]));
                index += 1;
            }
        }
        // One source is already in path order; several may interleave or
        // overlap.
        if self.sources.len() > 1 {
            files.sort();
            files.dedup();
        }
        Ok(SelectionDigest {
            digest: h.finish(),
            files,
        })
    }

    /// The digest of one entry's record (path relative to the context,
    /// kind, mode, owner, content).
    fn entry_digest(&self, f: &SelectedFile, cache: &StatCache) -> Result<Digest> {
        let meta = &f.entry.meta;
        let mut h = Hasher::new();
        h.update_field(f.context_path.as_bytes());
        h.update(&[f.entry.kind.tag()]);
        h.update(&f.entry.mode().to_le_bytes());
        h.update(&meta.uid().to_le_bytes());
        h.update(&meta.gid().to_le_bytes());
        match &f.entry.kind {
            EntryKind::File => h.update(self.content_digest(f, cache)?.as_raw()),
            EntryKind::Symlink(target) => h.update_field(target.as_bytes()),
            EntryKind::CharDevice | EntryKind::BlockDevice => h.update(&meta.rdev().to_le_bytes()),
            EntryKind::Dir | EntryKind::Fifo => {}
        }
        Ok(h.finish())
    }

    fn content_digest(&self, f: &SelectedFile, cache: &StatCache) -> Result<Digest> {
        if let Some(d) = cache.lookup(f.context_path, &f.entry.meta) {
            return Ok(d);
        }
        let path = self.host_path(f.context_path);
        let mut file = fs::File::open(&path).map_err(io_err("open", &path))?;
        let mut h = Hasher::new();
        io::copy(&mut file, &mut h).map_err(io_err("read", &path))?;
        let d = h.finish();
        cache.insert(f.context_path, &f.entry.meta, d);
        Ok(d)
    }
}
