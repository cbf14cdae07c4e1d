//! Snapshots: writable root filesystems built from a chain of image layers,
//! and the layer a build step leaves behind in one.
//!
//! Two implementations behind one API ([`Snapshotter`]):
//! - **overlay**: every layer is unpacked once into `<root>/snapshots/<diffid-hex>`
//!   in overlayfs lower-dir form (whiteouts as 0:0 character devices, opaque
//!   directories as `trusted.overlay.opaque=y`); a snapshot mounts overlayfs
//!   with the parent chain as lower dirs and a fresh upper dir under
//!   `<root>/tmp`. Its diff is read from the upper dir, and after a commit the
//!   upper dir *is* the new layer in lower-dir form, so it is moved into
//!   `snapshots/` instead of unpacking the new layer again.
//! - **native**, for hosts where overlayfs cannot be mounted: the parent chain is
//!   flattened once per chain into `<root>/snapshots/native/<chainid-hex>`
//!   (layers applied in order), copied for each snapshot, and the diff is taken
//!   by walking the parent and the new tree.
//!
//! Both produce the same layer for the same change (see [`crate::diff`]).
//! This module owns `<root>/snapshots/` and the `snap-*`, `unpack-*`, `flat-*`
//! and `view-*` entries of `<root>/tmp`. Temp dirs are renamed into place
//! only when complete, so a crash never leaves a half-unpacked snapshot under
//! its final name. Every mount and temp dir of a snapshot or view is removed
//! when it is dropped, on success and on error paths alike.

mod mount;
mod tree;

use std::collections::HashMap;
use std::ffi::OsString;
use std::fmt;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{mpsc, Arc};

use rbuild_cache::{BlobStore, Digest};
use rbuild_image::{unpack_layer, write_layer, LayerDescriptor, LayerOptions, UnpackMode};

use crate::diff::{self, DiffError, DirIdentity};
use mount::{Overlay, MAX_LOWERS};

/// An error of the snapshotter.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// A filesystem operation on the store failed.
    #[error("snapshot: {path}: {source}")]
    Io {
        /// The path operated on.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Mounting a snapshot failed.
    #[error("snapshot: mounting {what} at {target}: {source}")]
    Mount {
        /// What was mounted (`overlay`, `bind`).
        what: &'static str,
        /// The mount point.
        target: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Unpacking a layer into a snapshot failed.
    #[error("snapshot: unpacking layer {diff_id}: {source}")]
    Unpack {
        /// The layer's diff ID.
        diff_id: Digest,
        /// The underlying error.
        #[source]
        source: Box<rbuild_image::LayerError>,
    },
    /// Writing the layer of a committed snapshot failed.
    #[error("snapshot: writing layer: {0}")]
    WriteLayer(#[source] Box<rbuild_image::LayerError>),
    /// Reading the changes of a snapshot failed.
    #[error(transparent)]
    Diff(#[from] DiffError),
    /// rbuild received SIGINT or SIGTERM (see [`crate::sandbox::handle_interrupts`]).
    #[error("interrupted")]
    Interrupted,
    /// An unknown `--snapshotter` name.
    #[error("unknown snapshotter {0:?} (expected overlay or native)")]
    UnknownKind(String),
}

type Result<T> = std::result::Result<T, SnapshotError>;

fn io_ctx<T>(path: &Path, r: io::Result<T>) -> Result<T> {
    r.map_err(|source| SnapshotError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Which snapshotter to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotterKind {
    /// overlayfs over per-layer snapshots.
    Overlay,
    /// Full copies of the flattened parent tree.
    Native,
}

impl SnapshotterKind {
    /// Overlay when an overlayfs with an upper dir can be mounted under
    /// `<store_root>/tmp` (the filesystem the snapshots live on), else native.
    pub fn detect(store_root: &Path) -> SnapshotterKind {
        if probe_overlay(&store_root.join("tmp")).is_ok() {
            SnapshotterKind::Overlay
        } else {
            SnapshotterKind::Native
        }
    }
}

fn probe_overlay(tmp: &Path) -> io::Result<()> {
    fs::create_dir_all(tmp)?;
    let dir = TempDir::new(tmp, "probe-")?;
    let (l1, l2, u, w, m) = (
        dir.path.join("l1"),
        dir.path.join("l2"),
        dir.path.join("u"),
        dir.path.join("w"),
        dir.path.join("m"),
    );
    for d in [&l1, &l2, &u, &w, &m] {
        fs::create_dir(d)?;
    }
    let lowers = [l1, l2];
    mount::mount_overlay(
        &Overlay {
            lowers: &lowers,
            upper: Some((&u, &w)),
        },
        &m,
    )?;
    mount::unmount(&m)
}

impl FromStr for SnapshotterKind {
    type Err = SnapshotError;
    fn from_str(s: &str) -> Result<SnapshotterKind> {
        match s {
            "overlay" | "overlayfs" => Ok(SnapshotterKind::Overlay),
            "native" => Ok(SnapshotterKind::Native),
            other => Err(SnapshotError::UnknownKind(other.to_string())),
        }
    }
}

impl fmt::Display for SnapshotterKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SnapshotterKind::Overlay => "overlay",
            SnapshotterKind::Native => "native",
        })
    }
}

/// Creates snapshots of layer chains in a store. Cheap to clone.
///
/// The temp dirs of finished snapshots and views are removed on a
/// background thread: removing a dir tree costs milliseconds per directory
/// on a busy disk, a build step should not wait for it. Dropping the last
/// clone of a snapshotter (and its last snapshot and view) waits until
/// everything queued is removed.
#[derive(Clone)]
pub struct Snapshotter {
    root: PathBuf,
    blobs: BlobStore,
    kind: SnapshotterKind,
    /// Lower dirs one overlay mount may stack; deeper chains are partly flattened.
    max_lowers: usize,
    remover: Arc<Remover>,
}

impl Snapshotter {
    /// A snapshotter over the store at `store_root` whose blobs are `blobs`.
    pub fn new(store_root: &Path, blobs: BlobStore, kind: SnapshotterKind) -> Result<Snapshotter> {
        let s = Snapshotter {
            root: store_root.to_path_buf(),
            blobs,
            kind,
            max_lowers: MAX_LOWERS,
            remover: Remover::start(),
        };
        for d in [s.snapshots_dir(), s.tmp_dir(), s.native_dir()] {
            io_ctx(&d, fs::create_dir_all(&d))?;
        }
        remove_stale(&s.tmp_dir());
        Ok(s)
    }

    /// Which implementation this snapshotter uses.
    pub fn kind(&self) -> SnapshotterKind {
        self.kind
    }

    fn snapshots_dir(&self) -> PathBuf {
        self.root.join("snapshots")
    }

    fn native_dir(&self) -> PathBuf {
        self.root.join("snapshots").join("native")
    }

    fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// A temp dir under `<root>/tmp` removed by the background remover.
    fn temp_dir(&self, prefix: &str) -> Result<TempDir> {
        let tmp = self.tmp_dir();
        let mut dir = io_ctx(&tmp, TempDir::new(&tmp, prefix))?;
        dir.remover = Some(self.remover.clone());
        Ok(dir)
    }

    /// A writable root filesystem holding `parent` (bottom layer first; empty
    /// for `FROM scratch`). Layers not yet unpacked are unpacked first.
    pub fn prepare(&self, parent: &[LayerDescriptor]) -> Result<ActiveSnapshot> {
        if crate::sandbox::interrupted() {
            return Err(SnapshotError::Interrupted);
        }
        let dir = self.temp_dir("snap-")?;
        match self.kind {
            SnapshotterKind::Overlay => {
                let lowers = self.lower_dirs(parent, &dir.path)?;
                let upper = dir.path.join("upper");
                let work = dir.path.join("work");
                let merged = dir.path.join("merged");
                for d in [&upper, &work, &merged] {
                    io_ctx(d, fs::create_dir(d))?;
                }
                mount::mount_overlay(
                    &Overlay {
                        lowers: &lowers,
                        upper: Some((&upper, &work)),
                    },
                    &merged,
                )
                .map_err(|source| SnapshotError::Mount {
                    what: "overlay",
                    target: merged.clone(),
                    source,
                })?;
                Ok(ActiveSnapshot {
                    snapshotter: self.clone(),
                    parent: parent.to_vec(),
                    rootfs: merged.clone(),
                    mounts: vec![merged],
                    idents: HashMap::new(),
                    dir,
                })
            }
            SnapshotterKind::Native => {
                let rootfs = dir.path.join("rootfs");
                io_ctx(&rootfs, fs::create_dir(&rootfs))?;
                if let Some(flat) = self.ensure_flat(parent)? {
                    io_ctx(
                        &rootfs,
                        tree::clone_tree(&flat, &rootfs, tree::Hardlinks::Split),
                    )?;
                }
                let idents = diff::dir_identities(&rootfs)?;
                Ok(ActiveSnapshot {
                    snapshotter: self.clone(),
                    parent: parent.to_vec(),
                    rootfs,
                    mounts: Vec::new(),
                    idents,
                    dir,
                })
            }
        }
    }

    /// A read-only root filesystem of `layers`, for `COPY --from` and
    /// `RUN --mount=from=`.
    pub fn view(&self, layers: &[LayerDescriptor]) -> Result<ReadOnlyView> {
        let dir = self.temp_dir("view-")?;
        let path = dir.path.join("rootfs");
        io_ctx(&path, fs::create_dir(&path))?;
        let mut view = ReadOnlyView {
            path: path.clone(),
            mounted: false,
            _dir: dir,
        };
        match self.kind {
            SnapshotterKind::Overlay => {
                self.mount_lower_view(layers, &path, &view._dir.path)?;
                view.mounted = !layers.is_empty();
            }
            SnapshotterKind::Native => {
                if let Some(flat) = self.ensure_flat(layers)? {
                    mount::bind_readonly(&flat, &path).map_err(|source| SnapshotError::Mount {
                        what: "bind",
                        target: path.clone(),
                        source,
                    })?;
                    view.mounted = true;
                }
            }
        }
        Ok(view)
    }

    /// Mounts the merged, read-only view of `layers` at `target` (nothing
    /// for no layers). overlayfs needs two lower dirs when it has no upper
    /// dir, so a single layer gets an empty dir below it: its whiteouts must
    /// still read as absent, which a plain bind of the snapshot would not do.
    fn mount_lower_view(
        &self,
        layers: &[LayerDescriptor],
        target: &Path,
        scratch: &Path,
    ) -> Result<()> {
        if layers.is_empty() {
            return Ok(());
        }
        let mut lowers = self.lower_dirs(layers, scratch)?;
        if lowers.len() == 1 {
            let empty = scratch.join("empty-lower");
            io_ctx(&empty, fs::create_dir(&empty))?;
            lowers.push(empty);
        }
        mount::mount_overlay(
            &Overlay {
                lowers: &lowers,
                upper: None,
            },
            target,
        )
        .map_err(|source| SnapshotError::Mount {
            what: "overlay",
            target: target.to_path_buf(),
            source,
        })
    }

    /// The lower dirs of an overlay over `chain`, topmost first. Chains deeper
    /// than one mount can stack, or whose paths would not fit in mount(2)'s
    /// option page on kernels without `lowerdir+`, get their bottom layers
    /// flattened into one native snapshot. An empty chain gets one empty dir
    /// under `scratch`.
    fn lower_dirs(&self, chain: &[LayerDescriptor], scratch: &Path) -> Result<Vec<PathBuf>> {
        if chain.is_empty() {
            let empty = scratch.join("empty");
            io_ctx(&empty, fs::create_dir(&empty))?;
            return Ok(vec![empty]);
        }
        let mut dirs = Vec::with_capacity(chain.len());
        for layer in chain.iter().rev() {
            dirs.push(self.ensure_unpacked(layer)?);
        }
        let mut keep = dirs.len().min(self.max_lowers);
        if !fsconfig_lowerdir_plus() {
            let (upper, work) = (scratch.join("upper"), scratch.join("work"));
            while keep > 1 {
                let fits = mount::legacy_options(&Overlay {
                    lowers: &dirs[..keep],
                    upper: Some((&upper, &work)),
                })
                .is_some();
                if fits {
                    break;
                }
                keep -= 1;
            }
        }
        if keep < dirs.len() {
            // The top keep-1 layers stay separate; everything below is one flat dir.
            let split = chain.len() - (keep - 1);
            let flat = self
                .ensure_flat(&chain[..split])?
                .expect("a non-empty chain has a flat tree");
            dirs.truncate(keep - 1);
            dirs.push(flat);
        }
        Ok(dirs)
    }

    /// `snapshots/<diffid-hex>`, unpacked in overlay form if missing.
    fn ensure_unpacked(&self, layer: &LayerDescriptor) -> Result<PathBuf> {
        let dest = self.snapshots_dir().join(layer.diff_id.hex());
        if dest.is_dir() {
            return Ok(dest);
        }
        let tmp = self.temp_dir("unpack-")?;
        unpack_layer(&self.blobs, layer, &tmp.path, UnpackMode::Overlay).map_err(|source| {
            SnapshotError::Unpack {
                diff_id: layer.diff_id,
                source: Box::new(source),
            }
        })?;
        tmp.persist(&dest)?;
        Ok(dest)
    }

    /// `snapshots/native/<chainid-hex>`: the chain applied layer by layer,
    /// starting from the longest prefix already flattened. `None` for an
    /// empty chain.
    fn ensure_flat(&self, chain: &[LayerDescriptor]) -> Result<Option<PathBuf>> {
        if chain.is_empty() {
            return Ok(None);
        }
        let ids = chain_ids(chain);
        let dest = self.native_dir().join(ids[chain.len() - 1].hex());
        if dest.is_dir() {
            return Ok(Some(dest));
        }
        let tmp = self.temp_dir("flat-")?;
        let base = (0..chain.len() - 1)
            .rev()
            .find(|&i| self.native_dir().join(ids[i].hex()).is_dir());
        let start = match base {
            Some(i) => {
                let src = self.native_dir().join(ids[i].hex());
                io_ctx(
                    &src,
                    tree::clone_tree(&src, &tmp.path, tree::Hardlinks::Keep),
                )?;
                i + 1
            }
            None => 0,
        };
        for layer in &chain[start..] {
            unpack_layer(&self.blobs, layer, &tmp.path, UnpackMode::Apply).map_err(|source| {
                SnapshotError::Unpack {
                    diff_id: layer.diff_id,
                    source: Box::new(source),
                }
            })?;
        }
        tmp.persist(&dest)?;
        Ok(Some(dest))
    }
}

/// Whether this kernel's overlayfs takes `lowerdir+` through fsconfig (6.8+):
/// then there is no option-string limit to fit into.
fn fsconfig_lowerdir_plus() -> bool {
    static PROBE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *PROBE.get_or_init(|| {
        let mut u = kernel_release();
        u.truncate(
            u.find(|c: char| !c.is_ascii_digit() && c != '.')
                .unwrap_or(u.len()),
        );
        let mut parts = u.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
        let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
        (major, minor) >= (6, 8)
    })
}

fn kernel_release() -> String {
    fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// containerd's chain IDs: the first layer's diff ID, then
/// `sha256(parent_chain_id + " " + diff_id)` for each layer above.
fn chain_ids(chain: &[LayerDescriptor]) -> Vec<Digest> {
    let mut ids: Vec<Digest> = Vec::with_capacity(chain.len());
    for layer in chain {
        let id = match ids.last() {
            None => layer.diff_id,
            Some(parent) => Digest::of_bytes(format!("{parent} {}", layer.diff_id).as_bytes()),
        };
        ids.push(id);
    }
    ids
}

/// A writable root filesystem on top of a layer chain. Dropping it without
/// [`commit`](ActiveSnapshot::commit) discards the changes; either way its
/// mounts and temp dirs are removed.
pub struct ActiveSnapshot {
    snapshotter: Snapshotter,
    parent: Vec<LayerDescriptor>,
    rootfs: PathBuf,
    /// Mounted paths, unmounted in reverse order.
    mounts: Vec<PathBuf>,
    /// Native: directory identities before the step.
    idents: HashMap<String, DirIdentity>,
    dir: TempDir,
}

impl fmt::Debug for ActiveSnapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ActiveSnapshot")
            .field("kind", &self.snapshotter.kind)
            .field("rootfs", &self.rootfs)
            .field("parent_layers", &self.parent.len())
            .finish()
    }
}

impl ActiveSnapshot {
    /// The root of the writable filesystem.
    pub fn rootfs(&self) -> &Path {
        &self.rootfs
    }

    /// The layers below this snapshot.
    pub fn parent(&self) -> &[LayerDescriptor] {
        &self.parent
    }

    /// Writes the changes made in [`rootfs`](ActiveSnapshot::rootfs) as a
    /// layer into the blob store; `None` when nothing changed.
    pub fn commit(mut self, opts: &LayerOptions) -> Result<Option<LayerDescriptor>> {
        match self.snapshotter.kind {
            SnapshotterKind::Overlay => self.commit_overlay(opts),
            SnapshotterKind::Native => {
                let flat = self.snapshotter.ensure_flat(&self.parent)?;
                let empty;
                let parent_root = match &flat {
                    Some(p) => p.as_path(),
                    None => {
                        empty = self.dir.path.join("empty");
                        io_ctx(&empty, fs::create_dir(&empty))?;
                        empty.as_path()
                    }
                };
                let entries = diff::diff_trees(parent_root, &self.rootfs, &self.idents)?;
                if entries.is_empty() {
                    return Ok(None);
                }
                let desc = write_layer(&self.snapshotter.blobs, entries, opts)
                    .map_err(|e| SnapshotError::WriteLayer(Box::new(e)))?;
                Ok(Some(desc))
            }
        }
    }

    fn commit_overlay(&mut self, opts: &LayerOptions) -> Result<Option<LayerDescriptor>> {
        // The upper dir must be stable while it is read and moved.
        self.unmount_all()?;
        let lower = self.dir.path.join("lower");
        io_ctx(&lower, fs::create_dir(&lower))?;
        self.snapshotter
            .mount_lower_view(&self.parent, &lower, &self.dir.path)?;
        if !self.parent.is_empty() {
            self.mounts.push(lower.clone());
        }
        let upper = self.dir.path.join("upper");
        let entries = diff::diff_upper(&upper, &lower)?;
        if entries.is_empty() {
            return Ok(None);
        }
        let desc = write_layer(&self.snapshotter.blobs, entries, opts)
            .map_err(|e| SnapshotError::WriteLayer(Box::new(e)))?;
        self.unmount_all()?;
        // The upper dir is this layer in overlay lower-dir form. With
        // SOURCE_DATE_EPOCH the layer's mtimes were clamped and the upper dir's
        // were not, so the layer is unpacked from the blob instead when needed.
        let dest = self.snapshotter.snapshots_dir().join(desc.diff_id.hex());
        if opts.source_date_epoch.is_none() && !dest.exists() {
            // Best effort: the layer can still be unpacked from its blob.
            let _ = fs::rename(&upper, &dest);
        }
        Ok(Some(desc))
    }

    fn unmount_all(&mut self) -> Result<()> {
        while let Some(m) = self.mounts.pop() {
            if let Err(source) = mount::unmount(&m) {
                self.mounts.push(m.clone());
                return Err(SnapshotError::Mount {
                    what: "unmount",
                    target: m,
                    source,
                });
            }
        }
        Ok(())
    }
}

impl Drop for ActiveSnapshot {
    fn drop(&mut self) {
        // Errors cannot be reported from drop; a failed unmount leaves the
        // dir in place rather than deleting through a live mount.
        let mounted = self.unmount_all().is_err();
        if mounted {
            self.dir.keep = true;
        }
    }
}

/// A read-only root filesystem of a layer chain. Unmounted and removed on drop.
pub struct ReadOnlyView {
    path: PathBuf,
    mounted: bool,
    _dir: TempDir,
}

impl ReadOnlyView {
    /// The root of the view.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl fmt::Debug for ReadOnlyView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReadOnlyView")
            .field("path", &self.path)
            .finish()
    }
}

impl Drop for ReadOnlyView {
    fn drop(&mut self) {
        if self.mounted && mount::unmount(&self.path).is_err() {
            self._dir.keep = true;
        }
    }
}

/// Prefixes of the temp dirs of snapshots, views, unpacks and runs.
const TEMP_PREFIXES: [&str; 6] = ["snap-", "view-", "unpack-", "flat-", "run-", "probe-"];

/// Removes the temp dirs (and their mounts) of rbuild processes that died
/// without cleaning up (SIGKILL, power loss). A temp dir's name carries its
/// owner's pid; dirs of live processes are left alone, so concurrent builds
/// on one store are safe. Best effort: failures leave things for next time.
fn remove_stale(tmp: &Path) {
    let Ok(entries) = fs::read_dir(tmp) else {
        return;
    };
    let own = std::process::id();
    let mut stale = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = TEMP_PREFIXES.iter().find_map(|p| name.strip_prefix(p)) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        // SAFETY: kill with signal 0 only checks that the process exists.
        let dead = pid as u32 != own
            && unsafe { libc::kill(pid, 0) } != 0
            && io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
        if dead {
            stale.push(e.path());
        }
    }
    if stale.is_empty() {
        return;
    }
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for dir in stale {
        let prefix = format!("{}/", dir.display());
        let mut points: Vec<&str> = mountinfo
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|m| m.starts_with(&prefix))
            .collect();
        // Innermost first.
        points.sort_by_key(|m| std::cmp::Reverse(m.len()));
        let mut busy = false;
        for m in points {
            busy |= mount::unmount(Path::new(m)).is_err();
        }
        if !busy {
            let _ = fs::remove_dir_all(&dir);
        }
    }
}

/// A private (0700) directory under the store's `tmp/`, removed on drop
/// unless persisted. Its name is `<prefix><pid>-<random>`.
pub(crate) struct TempDir {
    pub(crate) path: PathBuf,
    keep: bool,
    /// Removes the dir in the background; `None`: removed on drop.
    remover: Option<Arc<Remover>>,
}

impl TempDir {
    pub(crate) fn new(parent: &Path, prefix: &str) -> io::Result<TempDir> {
        let mut template = parent
            .join(format!("{prefix}{}-XXXXXX", std::process::id()))
            .into_os_string()
            .into_vec();
        template.push(0);
        // SAFETY: template is a NUL-terminated template that mkdtemp fills in place.
        let p = unsafe { libc::mkdtemp(template.as_mut_ptr().cast()) };
        if p.is_null() {
            return Err(io::Error::last_os_error());
        }
        template.pop();
        Ok(TempDir {
            path: PathBuf::from(OsString::from_vec(template)),
            keep: false,
            remover: None,
        })
    }

    /// Renames the dir to `dest`. Someone else having put the same content
    /// there first is success: the dir is then removed.
    fn persist(mut self, dest: &Path) -> Result<()> {
        match fs::rename(&self.path, dest) {
            Ok(()) => {
                self.keep = true;
                Ok(())
            }
            Err(_) if dest.is_dir() => Ok(()),
            Err(source) => Err(SnapshotError::Io {
                path: dest.to_path_buf(),
                source,
            }),
        }
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        match &self.remover {
            Some(r) => r.remove(std::mem::take(&mut self.path)),
            None => {
                let _ = fs::remove_dir_all(&self.path);
            }
        }
    }
}

/// A thread that removes dir trees queued by [`TempDir`]s. Its drop
/// (when the last snapshotter, snapshot and view holding it are gone) waits
/// for the queue to drain, so nothing is left behind by a finished build.
/// A dir whose removal is cut short by the process ending keeps its
/// `<prefix><pid>-` name, and the next snapshotter removes it as stale.
pub(crate) struct Remover {
    queue: Option<mpsc::Sender<PathBuf>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Remover {
    fn start() -> Arc<Remover> {
        let (tx, rx) = mpsc::channel::<PathBuf>();
        let thread = std::thread::Builder::new()
            .name("rbuild-remove".into())
            .spawn(move || {
                for dir in rx {
                    let _ = fs::remove_dir_all(&dir);
                }
            })
            .ok();
        Arc::new(Remover {
            queue: thread.is_some().then_some(tx),
            thread,
        })
    }

    fn remove(&self, dir: PathBuf) {
        let unsent = match &self.queue {
            Some(q) => q.send(dir).err().map(|e| e.0),
            None => Some(dir),
        };
        // No thread (it could not be started): remove it here.
        if let Some(dir) = unsent {
            let _ = fs::remove_dir_all(&dir);
        }
    }
}

impl Drop for Remover {
    fn drop(&mut self) {
        drop(self.queue.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rbuild_image::{Compression, EntryKind, LayerEntry, Meta};

    fn layer(blobs: &BlobStore, src: &Path, name: &str, delete: Option<&str>) -> LayerDescriptor {
        fs::write(src, name).expect("write source");
        let mut entries = vec![LayerEntry {
            path: name.to_string(),
            kind: EntryKind::File {
                source: src.to_path_buf(),
                size: name.len() as u64,
            },
            meta: Meta {
                mode: 0o644,
                ..Meta::default()
            },
        }];
        if let Some(d) = delete {
            entries.push(LayerEntry {
                path: d.to_string(),
                kind: EntryKind::Whiteout,
                meta: Meta::default(),
            });
        }
        let opts = LayerOptions {
            compression: Compression::None,
            source_date_epoch: Some(0),
        };
        write_layer(blobs, entries, &opts).expect("write layer")
    }

    /// A chain deeper than one overlay mount may stack gets its bottom
    /// layers flattened, and still shows the right tree.
    #[test]
    fn deep_chains_are_flattened_below_the_stack_limit() {
        if unsafe { libc::geteuid() } != 0 {
            assert!(std::env::var_os("CI").is_none(), "CI runs as root");
            eprintln!("skipped: not root");
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let blobs = BlobStore::open(dir.path()).expect("store");
        let src = dir.path().join("src");
        let chain = vec![
            layer(&blobs, &src, "a", None),
            layer(&blobs, &src, "b", None),
            layer(&blobs, &src, "c", Some("a")),
            layer(&blobs, &src, "d", Some("b")),
        ];
        let mut s = Snapshotter::new(dir.path(), blobs, SnapshotterKind::Overlay).expect("new");
        s.max_lowers = 2;
        let snap = s.prepare(&chain).expect("prepare");
        let mut names: Vec<String> = fs::read_dir(snap.rootfs())
            .expect("read rootfs")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["c", "d"]);
        // The bottom three layers became one flat tree.
        let flat = chain_ids(&chain[..3]);
        assert!(s.native_dir().join(flat[2].hex()).join("c").is_file());
        fs::write(snap.rootfs().join("e"), b"e").expect("write");
        let desc = snap.commit(&LayerOptions::default()).expect("commit");
        assert!(desc.is_some());
        // Dropping the snapshotter waits for its temp dirs to be removed.
        let tmp = s.tmp_dir();
        drop(s);
        assert!(fs::read_dir(tmp).expect("tmp").next().is_none());
    }

    #[test]
    fn chain_ids_follow_containerd() {
        let d = |b: u8| Digest::from_raw([b; 32]);
        let desc = |b| LayerDescriptor {
            digest: d(0),
            diff_id: d(b),
            size: 0,
            media_type: String::new(),
        };
        let ids = chain_ids(&[desc(1), desc(2)]);
        assert_eq!(ids[0], d(1));
        assert_eq!(
            ids[1],
            Digest::of_bytes(format!("{} {}", d(1), d(2)).as_bytes())
        );
    }
}
