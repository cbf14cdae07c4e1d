//! The local image store: an OCI image layout at the store root
//! (`oci-layout`, `index.json`, `blobs/sha256/`), shared with the step
//! cache and snapshots that live beside it.
//!
//! `index.json` lists every image the store keeps. A named image's entry
//! carries `io.containerd.image.name` (the full normalised name) and
//! `org.opencontainers.image.ref.name` (its tag); an entry without them is
//! an untagged ("dangling", `<none>`) image. `index.json` is rewritten
//! atomically under the store's `index` lock, so concurrent rbuild
//! processes never lose each other's tags and a crash leaves the old or the
//! new index, never a torn one. Readers need no lock.
//!
//! Image IDs are config digests, as in Docker; `rbuild images` shows their
//! first 12 hex digits. Removing blobs that nothing uses any more is the
//! pruner's job, not this module's.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rbuild_cache::{
    live_leases, lock_path, remove_stale_leases, stale_leases, stray_temp_files, write_atomic,
    BlobStore, CacheIndex, CacheKey, Digest, FileLock,
};

use crate::config::ImageConfig;
use crate::layer::LayerDescriptor;
use crate::manifest::{
    Descriptor, Index, Manifest, ANNOTATION_IMAGE_NAME, ANNOTATION_REF_NAME, MEDIA_TYPE_OCI_CONFIG,
    MEDIA_TYPE_OCI_MANIFEST, OCI_LAYOUT,
};
use crate::reference::{Reference, ReferenceError};

/// Errors of the image store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The blob store or a file operation failed.
    #[error(transparent)]
    Blob(#[from] rbuild_cache::Error),
    /// A JSON document (manifest, config, `index.json`) is malformed.
    #[error("malformed {what}: {message}")]
    Json {
        /// Which document, with its digest or path.
        what: String,
        /// The parser's message.
        message: String,
    },
    /// A name is not a valid image reference.
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    /// No image has this name or ID.
    #[error("no such image: {0}")]
    NotFound(String),
    /// A short ID matches several images.
    #[error("short image ID {prefix} is ambiguous: it matches {}", matches.join(", "))]
    Ambiguous {
        /// What the user gave.
        prefix: String,
        /// The IDs it matches.
        matches: Vec<String>,
    },
    /// Removing an image by ID while several names refer to it.
    #[error("unable to remove image {id} (must be forced): it is tagged as {}", names.join(", "))]
    InUse {
        /// The short image ID.
        id: String,
        /// Its names.
        names: Vec<String>,
    },
    /// An image refers to a blob the store does not have.
    #[error("{what} {digest} is missing from the store")]
    MissingBlob {
        /// `"layer"`, `"config"`, `"manifest"`.
        what: &'static str,
        /// The blob.
        digest: Digest,
    },
    /// A config and its layers disagree.
    #[error("image {manifest}: {message}")]
    Inconsistent {
        /// The manifest digest (or `"new image"`).
        manifest: String,
        /// What disagrees.
        message: String,
    },
    /// The image is used by a running build (a live lease names it).
    #[error(
        "unable to remove image {image} (must be forced): a running build (pid {pid}) is using it"
    )]
    Leased {
        /// What the user asked to remove.
        image: String,
        /// The process holding the lease.
        pid: u32,
    },
    /// A maintenance operation needs [`Store::open_exclusive`].
    #[error("{0} needs the store opened exclusively")]
    NotExclusive(&'static str),
    /// A tag operation got a reference without a tag.
    #[error("{0} has no tag (digest references cannot be tagged or untagged)")]
    NoTag(String),
}

/// Result type of the store.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// An image in the store: its manifest and config, with their digests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Image {
    /// Digest of the manifest blob (what registries and `name@digest` name).
    pub manifest_digest: Digest,
    /// The manifest.
    pub manifest: Manifest,
    /// Digest of the config blob: the image ID.
    pub config_digest: Digest,
    /// The config.
    pub config: ImageConfig,
}

impl Image {
    /// The image ID (the config digest), as Docker defines it.
    pub fn id(&self) -> &Digest {
        &self.config_digest
    }

    /// The first 12 hex digits of the ID, as `docker images` shows it.
    pub fn short_id(&self) -> String {
        self.config_digest.hex()[..12].to_string()
    }

    /// The layers, lowest first, each with its diffID from the config.
    pub fn layers(&self) -> Vec<LayerDescriptor> {
        self.manifest
            .layers
            .iter()
            .zip(&self.config.rootfs.diff_ids)
            .map(|(d, diff_id)| LayerDescriptor {
                digest: d.digest,
                diff_id: *diff_id,
                size: d.size,
                media_type: d.media_type.clone(),
            })
            .collect()
    }

    /// Total size of config and layer blobs (what `images` shows as SIZE
    /// for compressed content).
    pub fn size(&self) -> u64 {
        self.manifest.config.size + self.manifest.layers.iter().map(|l| l.size).sum::<u64>()
    }
}

/// The image store at a store root.
#[derive(Clone, Debug)]
pub struct Store {
    root: PathBuf,
    blobs: BlobStore,
    /// The store's `gc` lock: shared for ordinary use (builds, tags,
    /// loads), exclusive for maintenance ([`Store::open_exclusive`]), so a
    /// repair or prune never deletes what a running rbuild is writing.
    _gc: Arc<FileLock>,
    exclusive: bool,
}

impl Store {
    /// Opens the store at `root`, creating the OCI layout (`oci-layout`,
    /// an empty `index.json`, `blobs/sha256`) if missing.
    ///
    /// The store's `gc` lock is held shared for the life of the `Store` (and
    /// its clones): any number of processes may use the store at once, while
    /// [`Store::open_exclusive`] waits for them all.
    pub fn open(root: &Path) -> Result<Store> {
        Self::open_with(root, false)
    }

    /// Opens the store for maintenance (`prune`, `check --repair`): waits
    /// until no other process has the store open, and keeps others out
    /// until dropped. Do not call it while this process holds another
    /// `Store` of the same root: it would wait for itself.
    pub fn open_exclusive(root: &Path) -> Result<Store> {
        Self::open_with(root, true)
    }

    /// Like [`Store::open_exclusive`] without waiting: `None` while another
    /// process has the store open (for a `check` that reports stray files
    /// only when nothing else is running).
    pub fn try_open_exclusive(root: &Path) -> Result<Option<Store>> {
        fs::create_dir_all(root)
            .map_err(|e| rbuild_cache::Error::io("create directory", root, e))?;
        match FileLock::try_exclusive(&lock_path(root, "gc")?)? {
            Some(gc) => Self::with_lock(root, gc, true).map(Some),
            None => Ok(None),
        }
    }

    fn open_with(root: &Path, exclusive: bool) -> Result<Store> {
        fs::create_dir_all(root)
            .map_err(|e| rbuild_cache::Error::io("create directory", root, e))?;
        let gc_path = lock_path(root, "gc")?;
        let gc = if exclusive {
            FileLock::exclusive(&gc_path)?
        } else {
            FileLock::shared(&gc_path)?
        };
        Self::with_lock(root, gc, exclusive)
    }

    fn with_lock(root: &Path, gc: FileLock, exclusive: bool) -> Result<Store> {
        let blobs = BlobStore::open(root)?;
        let store = Store {
            root: root.to_path_buf(),
            blobs,
            _gc: Arc::new(gc),
            exclusive,
        };
        let layout = root.join("oci-layout");
        if !layout.is_file() {
            write_atomic(&layout, OCI_LAYOUT.as_bytes())?;
        }
        if !store.index_path().is_file() {
            let _lock = store.lock_index()?;
            if !store.index_path().is_file() {
                write_atomic(&store.index_path(), &Index::default().to_json())?;
            }
        }
        Ok(store)
    }

    /// The store root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The store's blobs.
    pub fn blobs(&self) -> &BlobStore {
        &self.blobs
    }

    fn index_path(&self) -> PathBuf {
        self.root.join("index.json")
    }

    fn lock_index(&self) -> Result<FileLock> {
        Ok(FileLock::exclusive(&lock_path(&self.root, "index")?)?)
    }

    /// The current `index.json`.
    pub fn index(&self) -> Result<Index> {
        let p = self.index_path();
        let data = match fs::read(&p) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Index::default()),
            Err(e) => return Err(rbuild_cache::Error::io("read", p, e).into()),
        };
        Index::from_json(&data).map_err(|message| StoreError::Json {
            what: p.display().to_string(),
            message,
        })
    }

    /// Read-modify-write of `index.json` under the index lock; the closure
    /// may fail, leaving the index untouched.
    fn update_index<T>(&self, f: impl FnOnce(&mut Index) -> Result<T>) -> Result<T> {
        let _lock = self.lock_index()?;
        let mut index = self.index()?;
        let before = index.to_json();
        let out = f(&mut index)?;
        // Named entries by name, then untagged ones by digest: equal
        // contents give equal files.
        index.manifests.sort_by(|a, b| {
            (entry_name(a).is_none(), entry_key(a)).cmp(&(entry_name(b).is_none(), entry_key(b)))
        });
        let after = index.to_json();
        // Re-tagging a rebuilt image changes nothing: no write, no fsync.
        if after != before {
            write_atomic(&self.index_path(), &after)?;
        }
        Ok(out)
    }

    /// Writes the config and an OCI manifest for `layers` (whose blobs must
    /// be in the store) and returns the image. Nothing is named or listed:
    /// see [`Store::tag`] and [`Store::register`].
    pub fn put_image(&self, config: &ImageConfig, layers: &[LayerDescriptor]) -> Result<Image> {
        let config_digest = self.blobs.put_bytes(&config.to_json())?;
        self.assemble(&config_digest, layers)
    }

    /// Writes an OCI manifest for a config blob already in the store (kept
    /// byte for byte, so the image ID is preserved, as on `load`) and
    /// `layers`, checking that they agree.
    pub fn assemble(&self, config_digest: &Digest, layers: &[LayerDescriptor]) -> Result<Image> {
        let config_json = self.read_blob("config", config_digest)?;
        let config = ImageConfig::from_json(&config_json).map_err(|e| StoreError::Json {
            what: format!("config {config_digest}"),
            message: e.to_string(),
        })?;
        let diff_ids: Vec<Digest> = layers.iter().map(|l| l.diff_id).collect();
        if config.rootfs.diff_ids != diff_ids {
            return Err(StoreError::Inconsistent {
                manifest: "new image".into(),
                message: format!(
                    "config lists {} diff_ids that differ from the {} layers given",
                    config.rootfs.diff_ids.len(),
                    layers.len()
                ),
            });
        }
        for l in layers {
            if !self.blobs.contains(&l.digest) {
                return Err(StoreError::MissingBlob {
                    what: "layer",
                    digest: l.digest,
                });
            }
        }
        let manifest = Manifest {
            schema_version: 2,
            media_type: MEDIA_TYPE_OCI_MANIFEST.to_string(),
            config: Descriptor::new(
                MEDIA_TYPE_OCI_CONFIG,
                *config_digest,
                config_json.len() as u64,
            ),
            layers: layers
                .iter()
                .map(|l| Descriptor::new(&l.media_type, l.digest, l.size))
                .collect(),
            annotations: BTreeMap::new(),
        };
        let manifest_digest = self.blobs.put_bytes(&manifest.to_json())?;
        Ok(Image {
            manifest_digest,
            manifest,
            config_digest: *config_digest,
            config,
        })
    }

    /// Reads the image whose manifest has this digest, checking that the
    /// config matches the layers.
    pub fn image(&self, manifest_digest: &Digest) -> Result<Image> {
        let data = self.read_blob("manifest", manifest_digest)?;
        let manifest = Manifest::from_json(&data).map_err(|message| StoreError::Json {
            what: format!("manifest {manifest_digest}"),
            message,
        })?;
        let config_digest = manifest.config.digest;
        let data = self.read_blob("config", &config_digest)?;
        let config = ImageConfig::from_json(&data).map_err(|e| StoreError::Json {
            what: format!("config {config_digest}"),
            message: e.to_string(),
        })?;
        if config.rootfs.diff_ids.len() != manifest.layers.len() {
            return Err(StoreError::Inconsistent {
                manifest: manifest_digest.to_string(),
                message: format!(
                    "config has {} diff_ids but the manifest has {} layers",
                    config.rootfs.diff_ids.len(),
                    manifest.layers.len()
                ),
            });
        }
        Ok(Image {
            manifest_digest: *manifest_digest,
            manifest,
            config_digest,
            config,
        })
    }

    fn read_blob(&self, what: &'static str, digest: &Digest) -> Result<Vec<u8>> {
        self.blobs.read(digest).map_err(|e| match e {
            rbuild_cache::Error::BlobNotFound(d) => StoreError::MissingBlob { what, digest: d },
            other => other.into(),
        })
    }

    /// Checks that every blob of the image is present.
    fn check_complete(&self, image: &Image) -> Result<()> {
        for l in &image.manifest.layers {
            if !self.blobs.contains(&l.digest) {
                return Err(StoreError::MissingBlob {
                    what: "layer",
                    digest: l.digest,
                });
            }
        }
        Ok(())
    }

    /// Names the image with manifest `manifest_digest` as `reference`
    /// (which must carry a tag). A tag that named another image moves; that
    /// image stays listed as untagged if nothing else names it, as in
    /// Docker. Returns the manifest the tag named before, if it moved.
    pub fn tag(&self, reference: &Reference, manifest_digest: &Digest) -> Result<Option<Digest>> {
        let tag = reference
            .tag()
            .ok_or_else(|| StoreError::NoTag(reference.to_string()))?
            .to_string();
        let named = Reference::parse(&format!("{}:{tag}", reference.name()))?;
        let image = self.image(manifest_digest)?;
        self.check_complete(&image)?;
        let size = self.blobs.size(manifest_digest)?;
        let full = named.to_string();
        self.update_index(|index| {
            let previous = index
                .manifests
                .iter()
                .position(|d| entry_name(d).as_ref() == Some(&named))
                .map(|i| index.manifests.remove(i));
            // The image is named now: drop its untagged entry.
            index
                .manifests
                .retain(|d| !(d.digest == *manifest_digest && entry_name(d).is_none()));
            let mut desc = Descriptor::new(image.manifest.media_type(), *manifest_digest, size);
            desc.annotations
                .insert(ANNOTATION_IMAGE_NAME.into(), full.clone());
            desc.annotations
                .insert(ANNOTATION_REF_NAME.into(), tag.clone());
            index.manifests.push(desc);
            let moved = previous.filter(|p| p.digest != *manifest_digest);
            if let Some(old) = &moved {
                // Docker keeps an image whose last tag moved away as `<none>`.
                if !index.manifests.iter().any(|d| d.digest == old.digest) {
                    index
                        .manifests
                        .push(Descriptor::new(&old.media_type, old.digest, old.size));
                }
            }
            Ok(moved.map(|d| d.digest))
        })
    }

    /// Lists the image as untagged (`<none>`) unless it is already listed:
    /// what a build without `-t` does, so the image can be found by ID.
    pub fn register(&self, manifest_digest: &Digest) -> Result<()> {
        let image = self.image(manifest_digest)?;
        self.check_complete(&image)?;
        let size = self.blobs.size(manifest_digest)?;
        self.update_index(|index| {
            if !index.manifests.iter().any(|d| d.digest == *manifest_digest) {
                index.manifests.push(Descriptor::new(
                    image.manifest.media_type(),
                    *manifest_digest,
                    size,
                ));
            }
            Ok(())
        })
    }

    /// Removes one name. The image goes from the list when that was its
    /// last name (its blobs stay until pruned). `false` if the name was not
    /// in use.
    pub fn untag(&self, reference: &Reference) -> Result<bool> {
        let tag = reference
            .tag()
            .ok_or_else(|| StoreError::NoTag(reference.to_string()))?;
        let named = reference.with_tag(tag)?;
        self.update_index(|index| {
            let before = index.manifests.len();
            index
                .manifests
                .retain(|d| entry_name(d).as_ref() != Some(&named));
            Ok(index.manifests.len() != before)
        })
    }

    /// `rmi`: by name, removes that name only; by image ID (full or short,
    /// or manifest digest), removes the image's names and entry, refusing
    /// while several names refer to it unless `force`. Either way, removing
    /// the last entry of an image that a running build uses (a live
    /// [`rbuild_cache::Lease`] names its manifest) is refused unless
    /// `force`, as Docker refuses while a container uses the image.
    /// Returns the names removed.
    pub fn remove(&self, name_or_id: &str, force: bool) -> Result<Vec<Reference>> {
        let leased = if force {
            BTreeMap::new()
        } else {
            self.leased_manifests()?
        };
        let refuse = |digest: &Digest| match leased.get(digest) {
            Some(&pid) => Err(StoreError::Leased {
                image: name_or_id.to_string(),
                pid,
            }),
            None => Ok(()),
        };
        if let Some(named) = self.named_reference(name_or_id)? {
            return self.update_index(|index| {
                let Some(pos) = index
                    .manifests
                    .iter()
                    .position(|d| entry_name(d).as_ref() == Some(&named))
                else {
                    return Err(StoreError::NotFound(name_or_id.to_string()));
                };
                let digest = index.manifests[pos].digest;
                if index
                    .manifests
                    .iter()
                    .filter(|d| d.digest == digest)
                    .count()
                    == 1
                {
                    refuse(&digest)?;
                }
                index.manifests.remove(pos);
                Ok(vec![named])
            });
        }
        let image = self
            .resolve(name_or_id)?
            .ok_or_else(|| StoreError::NotFound(name_or_id.to_string()))?;
        self.update_index(|index| {
            let id = image.config_digest;
            let mut names = Vec::new();
            let mut mine = Vec::new();
            for (i, d) in index.manifests.iter().enumerate() {
                let same =
                    d.digest == image.manifest_digest || self.config_of(&d.digest) == Some(id);
                if same {
                    mine.push(i);
                    names.extend(entry_name(d));
                }
            }
            if names.len() > 1 && !force {
                return Err(StoreError::InUse {
                    id: image.short_id(),
                    names: names.iter().map(Reference::familiar).collect(),
                });
            }
            for &i in &mine {
                refuse(&index.manifests[i].digest)?;
            }
            refuse(&image.manifest_digest)?;
            for i in mine.into_iter().rev() {
                index.manifests.remove(i);
            }
            Ok(names)
        })
    }

    /// Manifests named by live leases, with the pid holding each.
    fn leased_manifests(&self) -> Result<BTreeMap<Digest, u32>> {
        let mut out = BTreeMap::new();
        for lease in live_leases(&self.root)? {
            for m in lease.record.manifests {
                out.insert(m, lease.record.pid);
            }
        }
        Ok(out)
    }

    /// The config digest of a stored manifest, if readable.
    fn config_of(&self, manifest_digest: &Digest) -> Option<Digest> {
        let data = self.blobs.read(manifest_digest).ok()?;
        Manifest::from_json(&data).ok().map(|m| m.config.digest)
    }

    /// `name_or_id` as a tagged name that is in the index, if it is one.
    fn named_reference(&self, name_or_id: &str) -> Result<Option<Reference>> {
        let Ok(r) = Reference::parse(name_or_id) else {
            return Ok(None);
        };
        if r.digest().is_some() {
            return Ok(None);
        }
        let found = self
            .index()?
            .manifests
            .iter()
            .any(|d| entry_name(d).as_ref() == Some(&r));
        Ok(found.then_some(r))
    }

    /// The image a name refers to: a tag in the index, or for `name@digest`
    /// the stored manifest with that digest.
    pub fn lookup(&self, reference: &Reference) -> Result<Option<Image>> {
        if let Some(d) = reference.digest() {
            return if self.blobs.contains(d) {
                self.image(d).map(Some)
            } else {
                Ok(None)
            };
        }
        let index = self.index()?;
        match index
            .manifests
            .iter()
            .find(|d| entry_name(d).as_ref() == Some(reference))
        {
            Some(d) => self.image(&d.digest).map(Some),
            None => Ok(None),
        }
    }

    /// Resolves what a user typed, as Docker does: a name (`app`, `app:1`,
    /// `docker.io/library/app:1`, `app@sha256:...`), a full image ID
    /// (`sha256:<config hex>` or its 64 hex digits), a unique ID prefix
    /// (`3f2a9c1b0d4e`, optionally with `sha256:`), or a manifest digest.
    pub fn resolve(&self, name_or_id: &str) -> Result<Option<Image>> {
        let as_name = Reference::parse(name_or_id);
        if let Ok(r) = &as_name {
            if let Some(image) = self.lookup(r)? {
                return Ok(Some(image));
            }
        }
        let hex = name_or_id.strip_prefix("sha256:").unwrap_or(name_or_id);
        let is_hex = !hex.is_empty()
            && hex.len() <= 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !is_hex {
            return match as_name {
                Ok(_) => Ok(None),
                Err(e) => Err(e.into()),
            };
        }
        // Image IDs (config digests) of listed images.
        let mut matches: BTreeMap<Digest, Digest> = BTreeMap::new();
        for d in self.index()?.manifests {
            if let Some(config) = self.config_of(&d.digest) {
                if config.hex().starts_with(hex) {
                    matches.entry(config).or_insert(d.digest);
                }
            }
        }
        match matches.len() {
            1 => {
                let (_, manifest) = matches.into_iter().next().expect("one match");
                return self.image(&manifest).map(Some);
            }
            0 => {}
            _ => {
                return Err(StoreError::Ambiguous {
                    prefix: name_or_id.to_string(),
                    matches: matches.keys().map(|c| c.hex()[..12].to_string()).collect(),
                })
            }
        }
        // A full manifest digest.
        if let Ok(d) = Digest::from_hex(hex) {
            if self.blobs.contains(&d) {
                if let Ok(image) = self.image(&d) {
                    return Ok(Some(image));
                }
            }
        }
        Ok(None)
    }

    /// The names of the listed image with this manifest, sorted.
    pub fn names(&self, manifest_digest: &Digest) -> Result<Vec<Reference>> {
        let mut out: Vec<Reference> = self
            .index()?
            .manifests
            .iter()
            .filter(|d| d.digest == *manifest_digest)
            .filter_map(entry_name)
            .collect();
        out.sort();
        Ok(out)
    }

    /// Every named image, sorted by name (several names may share an image).
    pub fn images(&self) -> Result<Vec<(Reference, Image)>> {
        let mut out = Vec::new();
        for d in self.index()?.manifests {
            if let Some(name) = entry_name(&d) {
                out.push((name, self.image(&d.digest)?));
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// Every blob that a listed image (named or untagged) needs: manifests,
    /// configs and layers. What a pruner must keep, besides cache entries.
    pub fn referenced_blobs(&self) -> Result<BTreeSet<Digest>> {
        let mut out = BTreeSet::new();
        for d in self.index()?.manifests {
            let image = self.image(&d.digest)?;
            out.insert(image.manifest_digest);
            out.insert(image.config_digest);
            out.extend(image.manifest.layers.iter().map(|l| l.digest));
        }
        Ok(out)
    }

    /// Verifies the store: every blob hashes to its name, every listed
    /// image has its manifest, config and layers (and they agree), every
    /// step cache record parses and its blobs are present and sound, no
    /// lease is stale and no temp files are left over. Returns what is
    /// wrong (empty when sound).
    /// Stray temp files are reported only on an exclusively opened store:
    /// otherwise they may belong to a running rbuild.
    pub fn check(&self) -> Result<Vec<Problem>> {
        let mut problems = Vec::new();
        let mut corrupt = BTreeSet::new();
        for digest in self.blobs.list()? {
            match self.blobs.verify(&digest) {
                Ok(()) => {}
                Err(rbuild_cache::Error::CorruptBlob { actual, .. }) => {
                    corrupt.insert(digest);
                    problems.push(Problem::CorruptBlob { digest, actual });
                }
                Err(e) => return Err(e.into()),
            }
        }
        for d in self.index()?.manifests {
            let label = entry_name(&d).map_or_else(|| d.digest.to_string(), |r| r.to_string());
            let broken = match self.image(&d.digest) {
                Err(e) => Some(e.to_string()),
                Ok(image) => std::iter::once(&image.manifest_digest)
                    .chain(std::iter::once(&image.config_digest))
                    .chain(image.manifest.layers.iter().map(|l| &l.digest))
                    .find(|b| corrupt.contains(b) || !self.blobs.contains(b))
                    .map(|b| format!("blob {b} is missing or corrupt")),
            };
            if let Some(reason) = broken {
                problems.push(Problem::BrokenImage {
                    entry: label,
                    manifest: d.digest,
                    reason,
                });
            }
        }
        let cache = CacheIndex::open(&self.root)?;
        for key in cache.keys()? {
            let reason = match cache.blobs_of(&key)? {
                // Removed since listed: not a problem.
                None => None,
                Some(Err(m)) => Some(format!("malformed record: {m}")),
                Some(Ok(blobs)) => blobs
                    .iter()
                    .find(|b| corrupt.contains(b) || !self.blobs.contains(b))
                    .map(|b| format!("blob {b} is missing or corrupt")),
            };
            if let Some(reason) = reason {
                problems.push(Problem::BrokenCacheEntry {
                    key: *key.digest(),
                    reason,
                });
            }
        }
        problems.extend(
            stale_leases(&self.root)?
                .into_iter()
                .map(Problem::StaleLease),
        );
        if self.exclusive {
            problems.extend(
                stray_temp_files(&self.root)?
                    .into_iter()
                    .map(Problem::StrayTemp),
            );
        }
        Ok(problems)
    }

    /// Whether this handle holds the store's `gc` lock exclusively.
    pub fn is_exclusive(&self) -> bool {
        self.exclusive
    }

    /// Removes what [`Store::check`] found broken: corrupt blobs, the
    /// index entries of broken images, broken cache records, stale leases
    /// and stray temp files. Needs a store
    /// opened with [`Store::open_exclusive`]. Returns one line per removal.
    pub fn repair(&self, problems: &[Problem]) -> Result<Vec<String>> {
        if !self.exclusive {
            return Err(StoreError::NotExclusive("repair"));
        }
        let mut done = Vec::new();
        let broken: Vec<Digest> = problems
            .iter()
            .filter_map(|p| match p {
                Problem::BrokenImage { manifest, .. } => Some(*manifest),
                _ => None,
            })
            .collect();
        if !broken.is_empty() {
            let removed = self.update_index(|index| {
                let (gone, kept) = std::mem::take(&mut index.manifests)
                    .into_iter()
                    .partition(|d| broken.contains(&d.digest));
                index.manifests = kept;
                Ok(gone)
            })?;
            for d in removed {
                let label = entry_name(&d).map_or_else(|| d.digest.to_string(), |r| r.to_string());
                done.push(format!("removed broken image {label}"));
            }
        }
        for p in problems {
            match p {
                Problem::CorruptBlob { digest, .. } => {
                    if self.blobs.remove(digest)? {
                        done.push(format!("removed corrupt blob {digest}"));
                    }
                }
                Problem::StrayTemp(path) => {
                    let r = if path.is_dir() {
                        fs::remove_dir_all(path)
                    } else {
                        fs::remove_file(path)
                    };
                    match r {
                        Ok(()) => done.push(format!("removed temp file {}", path.display())),
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                        Err(e) => return Err(rbuild_cache::Error::io("remove", path, e).into()),
                    }
                }
                Problem::BrokenCacheEntry { key, .. } => {
                    let cache = CacheIndex::open(&self.root)?;
                    if cache.remove(&CacheKey(*key))? {
                        done.push(format!("removed broken cache entry {key}"));
                    }
                }
                Problem::StaleLease(_) => {}
                Problem::BrokenImage { .. } => {}
            }
        }
        if problems.iter().any(|p| matches!(p, Problem::StaleLease(_))) {
            for path in remove_stale_leases(&self.root)? {
                done.push(format!("removed stale lease {}", path.display()));
            }
        }
        Ok(done)
    }

    /// Listed images without a name (`<none>:<none>`).
    pub fn dangling(&self) -> Result<Vec<Image>> {
        let index = self.index()?;
        let named = named_digests(&index);
        let mut out = Vec::new();
        for d in &index.manifests {
            if entry_name(d).is_none() && !named.contains(&d.digest) {
                out.push(self.image(&d.digest)?);
            }
        }
        Ok(out)
    }
}

/// What `prune` may remove, beyond blobs nothing refers to.
#[derive(Clone, Debug, Default)]
pub struct PruneOptions {
    /// Also remove untagged images and every cache record, even those
    /// whose blobs images share (`prune --all`).
    pub all: bool,
    /// Keep the most recently used cache records up to this many bytes.
    pub keep_storage: Option<u64>,
    /// Only remove cache records unused for at least this long.
    pub until: Option<std::time::Duration>,
}

/// One cache record as seen by [`Store::gc_plan`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheUsage {
    /// Its key.
    pub key: Digest,
    /// Bytes of the blobs it refers to that no kept image uses.
    pub size: u64,
    /// When it was last written or hit.
    pub last_used: Option<std::time::SystemTime>,
    /// A live lease names it: it is never removed.
    pub leased: bool,
}

/// What a prune with given options would remove (and what `du` reports as
/// reclaimable): computed without changing anything.
#[derive(Clone, Debug, Default)]
pub struct GcPlan {
    /// Untagged images to drop from `index.json` (`--all` only).
    pub images: Vec<Digest>,
    /// Cache records to remove.
    pub cache: Vec<CacheUsage>,
    /// Blobs to remove afterwards, with their sizes: those no kept image,
    /// kept cache record or live lease refers to.
    pub blobs: Vec<(Digest, u64)>,
    /// Every cache record, for reporting.
    pub all_cache: Vec<CacheUsage>,
    /// diffIDs of the layers that stay (their snapshots are worth keeping).
    pub kept_diff_ids: BTreeSet<Digest>,
    /// Layer chains of the images that stay (chain IDs, as containerd
    /// computes them), for flattened snapshots.
    pub kept_chain_ids: BTreeSet<Digest>,
}

impl GcPlan {
    /// Bytes the plan frees (blobs only; snapshots and cache mounts are
    /// counted by their owners).
    pub fn reclaimed(&self) -> u64 {
        self.blobs.iter().map(|(_, s)| s).sum()
    }
}

impl Store {
    /// Decides what a prune with `opts` removes: cache records not named by
    /// a live lease (by default only those holding blobs that no kept
    /// image uses; with `until`, only those unused that long; with
    /// `keep_storage`, the least recently used beyond that size), then
    /// every blob that nothing kept refers to. Images that are tagged, or
    /// named by a live lease, always stay with all their blobs.
    pub fn gc_plan(&self, opts: &PruneOptions) -> Result<GcPlan> {
        let mut plan = GcPlan::default();
        let leases = live_leases(&self.root)?;
        let leased_manifests: BTreeSet<Digest> = leases
            .iter()
            .flat_map(|l| l.record.manifests.iter().copied())
            .collect();
        let leased_keys: BTreeSet<Digest> = leases
            .iter()
            .flat_map(|l| l.record.cache_keys.iter().copied())
            .collect();
        let mut keep: BTreeSet<Digest> = leases
            .iter()
            .flat_map(|l| l.record.blobs.iter().copied())
            .collect();

        // Images: named ones stay; untagged ones go with --all unless leased.
        let index = self.index()?;
        let named = named_digests(&index);
        let mut kept_images = Vec::new();
        for d in &index.manifests {
            let drop =
                opts.all && !named.contains(&d.digest) && !leased_manifests.contains(&d.digest);
            if drop {
                plan.images.push(d.digest);
            } else {
                kept_images.push(d.digest);
            }
        }
        kept_images.extend(leased_manifests.iter().copied());
        for m in kept_images {
            // A broken image keeps what it still has; `check` reports it.
            keep.insert(m);
            let Ok(image) = self.image(&m) else { continue };
            keep.insert(image.config_digest);
            keep.extend(image.manifest.layers.iter().map(|l| l.digest));
            let mut chain: Option<Digest> = None;
            for diff_id in &image.config.rootfs.diff_ids {
                plan.kept_diff_ids.insert(*diff_id);
                let id = match chain {
                    None => *diff_id,
                    Some(parent) => Digest::of_bytes(format!("{parent} {diff_id}").as_bytes()),
                };
                plan.kept_chain_ids.insert(id);
                chain = Some(id);
            }
        }

        // Cache records: newest first, so keep-storage keeps the most recent.
        let cache = CacheIndex::open(&self.root)?;
        let now = std::time::SystemTime::now();
        let mut records = Vec::new();
        for key in cache.keys()? {
            let Some(raw) = cache.read_raw(&key)? else {
                continue;
            };
            let blobs = rbuild_cache::record_blobs(&raw).unwrap_or_default();
            let diff_ids = rbuild_cache::record_digests(&raw, "diff_id").unwrap_or_default();
            let size = blobs
                .iter()
                .filter(|b| !keep.contains(b))
                .filter_map(|b| self.blobs.size(b).ok())
                .sum();
            let usage = CacheUsage {
                key: *key.digest(),
                size,
                last_used: cache.last_used(&key)?,
                leased: leased_keys.contains(key.digest()),
            };
            records.push((usage, blobs, diff_ids));
        }
        records.sort_by(|a, b| {
            b.0.last_used
                .cmp(&a.0.last_used)
                .then(a.0.key.cmp(&b.0.key))
        });
        let mut kept_bytes = 0u64;
        for (usage, blobs, diff_ids) in records {
            plan.all_cache.push(usage.clone());
            let old_enough = match (opts.until, usage.last_used) {
                (None, _) => true,
                (Some(age), Some(t)) => now.duration_since(t).is_ok_and(|d| d >= age),
                (Some(_), None) => true,
            };
            let within_budget = opts
                .keep_storage
                .is_some_and(|limit| kept_bytes + usage.size <= limit);
            let worth = opts.all || usage.size > 0;
            let remove = !usage.leased && old_enough && !within_budget && worth;
            if remove {
                plan.cache.push(usage);
            } else {
                kept_bytes += usage.size;
                keep.extend(blobs);
                plan.kept_diff_ids.extend(diff_ids);
            }
        }

        for digest in self.blobs.list()? {
            if !keep.contains(&digest) {
                let size = self.blobs.size(&digest).unwrap_or(0);
                plan.blobs.push((digest, size));
            }
        }
        Ok(plan)
    }

    /// Carries out a [`GcPlan`] (from [`Store::gc_plan`] on this same
    /// exclusively opened store): drops the untagged images, then the cache
    /// records, then the blobs. Returns one line per removal.
    pub fn prune(&self, plan: &GcPlan) -> Result<Vec<String>> {
        if !self.exclusive {
            return Err(StoreError::NotExclusive("prune"));
        }
        let mut done = Vec::new();
        if !plan.images.is_empty() {
            let removed = self.update_index(|index| {
                let before = index.manifests.len();
                index
                    .manifests
                    .retain(|d| !(entry_name(d).is_none() && plan.images.contains(&d.digest)));
                Ok(before - index.manifests.len())
            })?;
            if removed > 0 {
                for d in &plan.images {
                    done.push(format!("deleted untagged image {d}"));
                }
            }
        }
        let cache = CacheIndex::open(&self.root)?;
        for c in &plan.cache {
            if cache.remove(&CacheKey(c.key))? {
                done.push(format!("deleted cache entry {}", c.key));
            }
        }
        for (d, _) in &plan.blobs {
            if self.blobs.remove(d)? {
                done.push(format!("deleted blob {d}"));
            }
        }
        Ok(done)
    }
}

/// Something [`Store::check`] found wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Problem {
    /// A blob's content does not hash to its name.
    CorruptBlob {
        /// The name (digest) it is stored under.
        digest: Digest,
        /// What its content hashes to.
        actual: Digest,
    },
    /// A listed image cannot be read or lacks blobs.
    BrokenImage {
        /// Its name, or its manifest digest when untagged.
        entry: String,
        /// Its manifest digest.
        manifest: Digest,
        /// What is wrong.
        reason: String,
    },
    /// A step cache record that does not parse, or whose blob is missing
    /// or corrupt.
    BrokenCacheEntry {
        /// The cache key.
        key: Digest,
        /// What is wrong.
        reason: String,
    },
    /// A lease file whose holder is gone.
    StaleLease(PathBuf),
    /// A temp file or directory left by a killed process.
    StrayTemp(PathBuf),
}

impl Problem {
    /// Whether the problem is damage to content (a corrupt blob, a broken
    /// image or cache record) rather than a leftover of a killed process
    /// (stale lease, temp file) that `check --repair` simply clears. A
    /// crash must never cause damage: every write is temp file, fsync,
    /// rename.
    pub fn is_corruption(&self) -> bool {
        matches!(
            self,
            Problem::CorruptBlob { .. }
                | Problem::BrokenImage { .. }
                | Problem::BrokenCacheEntry { .. }
        )
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Problem::CorruptBlob { digest, actual } => {
                write!(f, "blob {digest} is corrupt (content hashes to {actual})")
            }
            Problem::BrokenImage { entry, reason, .. } => {
                write!(f, "image {entry} is broken: {reason}")
            }
            Problem::BrokenCacheEntry { key, reason } => {
                write!(f, "cache entry {key} is broken: {reason}")
            }
            Problem::StaleLease(p) => write!(f, "stale lease {}", p.display()),
            Problem::StrayTemp(p) => write!(f, "stray temp file {}", p.display()),
        }
    }
}

/// The name of an index entry: `io.containerd.image.name`, else
/// `org.opencontainers.image.ref.name` when it is a full name rather than
/// a bare tag (it holds a `/` or `:`).
pub fn entry_name(d: &Descriptor) -> Option<Reference> {
    if let Some(r) = d
        .annotations
        .get(ANNOTATION_IMAGE_NAME)
        .and_then(|n| Reference::parse(n).ok())
    {
        return Some(r);
    }
    d.annotations
        .get(ANNOTATION_REF_NAME)
        .filter(|n| n.contains(['/', ':']))
        .and_then(|n| Reference::parse(n).ok())
        .filter(|r| r.tag().is_some())
}

/// The manifest digests that at least one named index entry points to (an
/// untagged entry of such a digest is another encoding of a named image).
fn named_digests(index: &Index) -> BTreeSet<Digest> {
    index
        .manifests
        .iter()
        .filter(|d| entry_name(d).is_some())
        .map(|d| d.digest)
        .collect()
}

fn entry_key(d: &Descriptor) -> String {
    entry_name(d).map_or_else(|| d.digest.to_string(), |r| r.to_string())
}
