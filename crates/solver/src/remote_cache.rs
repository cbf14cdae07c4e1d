//! The step cache shared between machines: `--cache-to` exports the records
//! of a build's steps (cache key -> layer and creation time, as the local
//! cache index stores them) and `--cache-from` imports them, through a
//! registry or an OCI layout directory.
//!
//! The export is an OCI artifact: an image manifest whose config blob has
//! the media type [`CACHE_CONFIG_MEDIA_TYPE`] and holds the records, and
//! whose layers are the records' layer blobs, so a registry keeps the blobs
//! alive and mounts them like any image's. On import only the manifest and
//! the config are read; a layer is fetched when a step that missed needs the
//! root filesystem under it, or when the final image is written.
//!
//! This module does not decide what is cached (the runner does) and does not
//! speak HTTP (`rbuild_image::registry` does).

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use rbuild_cache::{BlobStore, CacheIndex, CacheKey, Digest};
use rbuild_image::manifest::{
    Descriptor, Index, Manifest, ANNOTATION_REF_NAME, MEDIA_TYPE_OCI_MANIFEST, OCI_LAYOUT,
};
use rbuild_image::registry::{self, ClientOptions, RegistryClient};
use rbuild_image::{LayerDescriptor, Reference};
use serde::{Deserialize, Serialize};

use crate::exec::StepRecord;
use crate::graph::BuildGraph;
use crate::plan::{Base, Op, Plan};

/// Media type of the config blob of a cache export: what marks the manifest
/// as an rbuild step cache rather than a runnable image.
pub const CACHE_CONFIG_MEDIA_TYPE: &str = "application/vnd.rbuild.cache.config.v1+json";

/// The tag a local (OCI layout) cache is stored under when none is given.
const DEFAULT_LOCAL_TAG: &str = "latest";

/// Why a cache could not be imported or exported. Each variant names the
/// file, layout or registry concerned.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// Reading or writing a file of an OCI layout failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A layout's `index.json` or a cache manifest is not valid.
    #[error("{what}: {message}")]
    Invalid {
        /// The file or manifest.
        what: String,
        /// What is wrong with it.
        message: String,
    },
    /// A layout has no cache under the requested tag.
    #[error("{index} lists no manifest tagged {tag:?}")]
    NoSuchTag {
        /// The layout's `index.json`.
        index: PathBuf,
        /// The tag asked for.
        tag: String,
    },
    /// The manifest found is not an rbuild step cache.
    #[error("manifest {manifest} is not an rbuild cache (config media type {media_type:?})")]
    NotACache {
        /// The manifest's digest.
        manifest: Digest,
        /// Its config's media type.
        media_type: String,
    },
    /// A `ref=` that is not an image reference.
    #[error(transparent)]
    Reference(#[from] rbuild_image::ReferenceError),
    /// The registry failed (names the registry).
    #[error(transparent)]
    Registry(#[from] registry::Error),
    /// The local blob store failed (a blob whose bytes do not match its
    /// digest is refused here).
    #[error(transparent)]
    Blob(#[from] rbuild_cache::Error),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CacheError + '_ {
    move |source| CacheError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Where a step cache lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheLocation {
    /// `type=registry,ref=REF`: an artifact in a registry.
    Registry {
        /// The reference, e.g. `registry.example.com/app:buildcache`.
        reference: String,
    },
    /// `type=local,src=DIR` / `dest=DIR`: an OCI image layout directory.
    Local {
        /// The layout directory.
        dir: PathBuf,
        /// The `org.opencontainers.image.ref.name` of the cache manifest
        /// (`tag=`, default `latest`).
        tag: String,
    },
}

impl CacheLocation {
    /// A local cache in `dir` under `tag` (`None`: `latest`).
    pub fn local(dir: impl Into<PathBuf>, tag: Option<String>) -> CacheLocation {
        CacheLocation::Local {
            dir: dir.into(),
            tag: tag.unwrap_or_else(|| DEFAULT_LOCAL_TAG.to_string()),
        }
    }
}

impl std::fmt::Display for CacheLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CacheLocation::Registry { reference } => write!(f, "type=registry,ref={reference}"),
            CacheLocation::Local { dir, tag } => {
                write!(f, "type=local,dir={},tag={tag}", dir.display())
            }
        }
    }
}

/// Which steps an export holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CacheMode {
    /// `mode=min` (BuildKit's default): the steps of the target stage and
    /// the stages it is based on, the ones the final image is made of.
    #[default]
    Min,
    /// `mode=max`: every step of every stage that was built.
    Max,
}

/// One `--cache-to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheExport {
    /// Where to write.
    pub location: CacheLocation,
    /// What to write.
    pub mode: CacheMode,
}

/// The config blob of a cache export.
#[derive(Debug, Default, Serialize, Deserialize)]
struct CacheConfig {
    /// Step records by cache key (sorted, so equal caches encode equally).
    records: BTreeMap<Digest, StepRecord>,
}

/// Where an imported cache's blobs are read from.
enum BlobSource {
    Registry {
        // Boxed: a client is large, and sources are few.
        client: Box<RegistryClient>,
        repository: String,
    },
    /// An OCI layout's `blobs/sha256` directory.
    Local { blobs: PathBuf },
}

impl BlobSource {
    /// Copies one blob into `store`, verified against its digest.
    fn fetch(&self, store: &BlobStore, digest: &Digest, size: u64) -> Result<(), CacheError> {
        match self {
            BlobSource::Registry { client, repository } => {
                registry::fetch_blob_to_store(client, store, repository, digest, size)?;
            }
            BlobSource::Local { blobs } => {
                copy_blob(&blobs.join(digest.hex()), store, digest)?;
            }
        }
        Ok(())
    }
}

/// Streams the file `from` into `store` as `digest`; a file whose bytes do
/// not hash to `digest` is rejected and nothing is stored.
fn copy_blob(from: &Path, store: &BlobStore, digest: &Digest) -> Result<(), CacheError> {
    if store.contains(digest) {
        return Ok(());
    }
    let mut src = File::open(from).map_err(io_err(from))?;
    let mut writer = store.writer()?;
    std::io::copy(&mut src, &mut writer).map_err(io_err(from))?;
    writer.finish_verified(digest)?;
    Ok(())
}

/// The records of every `--cache-from` source, and where their layers can
/// be fetched from.
#[derive(Default)]
pub(crate) struct ImportedCache {
    records: BTreeMap<Digest, StepRecord>,
    sources: Vec<BlobSource>,
    /// Layer blob -> index into `sources`.
    layer_source: BTreeMap<Digest, usize>,
}

impl ImportedCache {
    /// Reads the manifest and config of each source (no layers). A source
    /// that cannot be read is skipped with a warning, as BuildKit does: the
    /// first build of a branch has no cache to import yet.
    pub fn load(
        locations: &[CacheLocation],
        options: &ClientOptions,
        store: &BlobStore,
        warnings: &mut Vec<String>,
    ) -> ImportedCache {
        let mut cache = ImportedCache::default();
        for loc in locations {
            match open_source(loc, options, store) {
                Ok((source, manifest, config)) => {
                    let n = cache.sources.len();
                    cache.sources.push(source);
                    for l in &manifest.layers {
                        cache.layer_source.entry(l.digest).or_insert(n);
                    }
                    for (key, rec) in config.records {
                        cache.records.entry(key).or_insert(rec);
                    }
                }
                Err(e) => warnings.push(format!("importing cache from {loc}: {e}")),
            }
        }
        cache
    }

    /// The imported record for a step key.
    pub fn lookup(&self, key: &Digest) -> Option<StepRecord> {
        self.records.get(key).cloned()
    }

    /// Makes sure every blob of `layers` is in `store`, fetching the missing
    /// ones from the source that exported them. Layers no source knows are
    /// left alone (the caller's own use of them reports the missing blob).
    pub fn ensure_layers(
        &self,
        store: &BlobStore,
        layers: &[LayerDescriptor],
    ) -> Result<(), CacheError> {
        for l in layers {
            if store.contains(&l.digest) {
                continue;
            }
            if let Some(&i) = self.layer_source.get(&l.digest) {
                self.sources[i].fetch(store, &l.digest, l.size)?;
            }
        }
        Ok(())
    }
}

/// Opens one `--cache-from` source: its manifest and config.
fn open_source(
    loc: &CacheLocation,
    options: &ClientOptions,
    store: &BlobStore,
) -> Result<(BlobSource, Manifest, CacheConfig), CacheError> {
    let (source, bytes) = match loc {
        CacheLocation::Registry { reference } => {
            let r = Reference::parse(reference)?;
            let client = RegistryClient::new(r.registry(), options)?;
            let wanted = match (r.digest(), r.tag()) {
                (Some(d), _) => d.to_string(),
                (None, Some(t)) => t.to_string(),
                (None, None) => "latest".to_string(),
            };
            let m = registry::fetch_image_manifest(&client, r.repository(), &wanted)?;
            let source = BlobSource::Registry {
                client: Box::new(client),
                repository: r.repository().to_string(),
            };
            (source, m.bytes)
        }
        CacheLocation::Local { dir, tag } => {
            let index_path = dir.join("index.json");
            let data = std::fs::read(&index_path).map_err(io_err(&index_path))?;
            let index = Index::from_json(&data).map_err(|message| CacheError::Invalid {
                what: index_path.display().to_string(),
                message,
            })?;
            let entry = index
                .manifests
                .iter()
                .find(|d| d.annotations.get(ANNOTATION_REF_NAME) == Some(tag))
                .ok_or_else(|| CacheError::NoSuchTag {
                    index: index_path.clone(),
                    tag: tag.clone(),
                })?;
            let blobs = dir.join("blobs").join("sha256");
            let path = blobs.join(entry.digest.hex());
            let bytes = std::fs::read(&path).map_err(io_err(&path))?;
            let actual = Digest::of_bytes(&bytes);
            if actual != entry.digest {
                return Err(CacheError::Blob(rbuild_cache::Error::DigestMismatch {
                    expected: entry.digest,
                    actual,
                }));
            }
            (BlobSource::Local { blobs }, bytes)
        }
    };
    let manifest_digest = Digest::of_bytes(&bytes);
    let manifest = Manifest::from_json(&bytes).map_err(|message| CacheError::Invalid {
        what: format!("manifest {manifest_digest}"),
        message,
    })?;
    if manifest.config.media_type != CACHE_CONFIG_MEDIA_TYPE {
        return Err(CacheError::NotACache {
            manifest: manifest_digest,
            media_type: manifest.config.media_type,
        });
    }
    // The config is small and needed at once: fetch it through the store,
    // which verifies it, then read it back.
    source.fetch(store, &manifest.config.digest, manifest.config.size)?;
    let config: CacheConfig = serde_json::from_slice(&store.read(&manifest.config.digest)?)
        .map_err(|e| CacheError::Invalid {
            what: format!("cache config {}", manifest.config.digest),
            message: e.to_string(),
        })?;
    Ok((source, manifest, config))
}

/// The records a `mode` export holds: for every step (FROMs excluded) of
/// the chosen stages, what the local cache index has for its key.
pub(crate) fn records_for(
    mode: CacheMode,
    plan: &Plan,
    graph: &BuildGraph,
    cache: &CacheIndex,
) -> BTreeMap<Digest, StepRecord> {
    let mut stages = Vec::new();
    match mode {
        CacheMode::Max => stages.extend((0..plan.stages.len()).filter(|&i| plan.stages[i].needed)),
        CacheMode::Min => {
            let mut at = Some(plan.target);
            while let Some(i) = at {
                stages.push(i);
                at = match plan.stages[i].base {
                    Base::Stage(s) => Some(s),
                    _ => None,
                };
            }
        }
    }
    let mut out = BTreeMap::new();
    for i in stages {
        for (n, step) in plan.stages[i].steps.iter().enumerate() {
            if matches!(step.op, Op::From) {
                continue;
            }
            let key = graph.graph[graph.stages[i][n]].key;
            if let Ok(Some(rec)) = cache.get::<StepRecord>(&CacheKey::from(key)) {
                out.insert(key, rec);
            }
        }
    }
    out
}

/// Writes `records` (with their layers, which must be in `store` or
/// fetchable through `imported`) to `export.location`. Returns the digest of
/// the cache manifest.
pub(crate) fn export(
    export: &CacheExport,
    records: &BTreeMap<Digest, StepRecord>,
    store: &BlobStore,
    imported: &ImportedCache,
    options: &ClientOptions,
) -> Result<Digest, CacheError> {
    let mut layers: Vec<LayerDescriptor> = Vec::new();
    for rec in records.values() {
        if let Some(l) = &rec.layer {
            if !layers.iter().any(|x| x.digest == l.digest) {
                layers.push(l.clone());
            }
        }
    }
    imported.ensure_layers(store, &layers)?;
    let config = serde_json::to_vec(&CacheConfig {
        records: records.clone(),
    })
    .expect("a cache config always serialises (string keys only)");
    let config_digest = store.put_bytes(&config)?;
    let manifest = Manifest {
        schema_version: 2,
        media_type: MEDIA_TYPE_OCI_MANIFEST.to_string(),
        config: Descriptor::new(CACHE_CONFIG_MEDIA_TYPE, config_digest, config.len() as u64),
        layers: layers
            .iter()
            .map(|l| Descriptor::new(&l.media_type, l.digest, l.size))
            .collect(),
        annotations: BTreeMap::new(),
    };
    let manifest_json = manifest.to_json();
    let manifest_digest = store.put_bytes(&manifest_json)?;
    match &export.location {
        CacheLocation::Registry { reference } => {
            let r = Reference::parse(reference)?;
            let client = RegistryClient::new(r.registry(), options)?;
            registry::push_content(&client, store, r.repository(), r.tag(), &manifest_digest)?;
        }
        CacheLocation::Local { dir, tag } => {
            write_layout(dir, tag, store, &manifest, &manifest_digest, &manifest_json)?;
        }
    }
    Ok(manifest_digest)
}

/// Writes the cache manifest and its blobs into the OCI layout `dir`, and
/// names it `tag` in its `index.json` (replacing an older cache of that tag,
/// keeping other entries).
fn write_layout(
    dir: &Path,
    tag: &str,
    store: &BlobStore,
    manifest: &Manifest,
    manifest_digest: &Digest,
    manifest_json: &[u8],
) -> Result<(), CacheError> {
    let layout = BlobStore::open(dir)?;
    for d in std::iter::once(&manifest.config).chain(manifest.layers.iter()) {
        copy_blob(&store.path(&d.digest), &layout, &d.digest)?;
    }
    copy_blob(&store.path(manifest_digest), &layout, manifest_digest)?;
    // The blob store's temp directory is not part of an OCI layout.
    let _ = std::fs::remove_dir(layout.tmp_dir());
    rbuild_cache::write_atomic(&dir.join("oci-layout"), OCI_LAYOUT.as_bytes())?;
    let index_path = dir.join("index.json");
    let mut index = match std::fs::read(&index_path) {
        Ok(data) => Index::from_json(&data).map_err(|message| CacheError::Invalid {
            what: index_path.display().to_string(),
            message,
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Index::default(),
        Err(e) => return Err(io_err(&index_path)(e)),
    };
    index
        .manifests
        .retain(|d| d.annotations.get(ANNOTATION_REF_NAME).map(String::as_str) != Some(tag));
    let mut entry = Descriptor::new(
        MEDIA_TYPE_OCI_MANIFEST,
        *manifest_digest,
        manifest_json.len() as u64,
    );
    entry
        .annotations
        .insert(ANNOTATION_REF_NAME.to_string(), tag.to_string());
    index.manifests.push(entry);
    rbuild_cache::write_atomic(&index_path, &index.to_json())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(store: &BlobStore, data: &[u8]) -> LayerDescriptor {
        let digest = store.put_bytes(data).unwrap();
        LayerDescriptor {
            digest,
            diff_id: Digest::of_bytes(b"diff"),
            size: data.len() as u64,
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
        }
    }

    #[test]
    fn local_round_trip_fetches_layers_only_on_demand() {
        let dir = tempfile::tempdir().unwrap();
        let a = BlobStore::open(&dir.path().join("a")).unwrap();
        let l = layer(&a, b"layer one");
        let mut records = BTreeMap::new();
        let k1 = Digest::of_bytes(b"k1");
        let k2 = Digest::of_bytes(b"k2");
        records.insert(
            k1,
            StepRecord {
                layer: Some(l.clone()),
                created: "2024-01-01T00:00:00Z".into(),
            },
        );
        records.insert(
            k2,
            StepRecord {
                layer: None,
                created: "2024-01-02T00:00:00Z".into(),
            },
        );
        let loc = CacheLocation::local(dir.path().join("cache"), None);
        let exp = CacheExport {
            location: loc.clone(),
            mode: CacheMode::Max,
        };
        let opts = ClientOptions::default();
        let m = export(&exp, &records, &a, &ImportedCache::default(), &opts).unwrap();
        // Exporting again gives the same manifest and one index entry.
        assert_eq!(
            export(&exp, &records, &a, &ImportedCache::default(), &opts).unwrap(),
            m
        );
        let index = std::fs::read_to_string(dir.path().join("cache/index.json")).unwrap();
        assert_eq!(index.matches(&m.to_string()).count(), 1, "{index}");
        assert!(!dir.path().join("cache/tmp").exists());

        let b = BlobStore::open(&dir.path().join("b")).unwrap();
        let mut warnings = Vec::new();
        let imported = ImportedCache::load(&[loc], &opts, &b, &mut warnings);
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(
            imported.lookup(&k2).unwrap().created,
            "2024-01-02T00:00:00Z"
        );
        assert_eq!(imported.lookup(&k1).unwrap().layer, Some(l.clone()));
        assert!(imported.lookup(&Digest::of_bytes(b"k3")).is_none());
        // Not fetched until asked for.
        assert!(!b.contains(&l.digest));
        imported
            .ensure_layers(&b, std::slice::from_ref(&l))
            .unwrap();
        assert_eq!(b.read(&l.digest).unwrap(), b"layer one");
    }

    #[test]
    fn missing_or_foreign_sources_are_warnings() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(&dir.path().join("s")).unwrap();
        let mut warnings = Vec::new();
        let imported = ImportedCache::load(
            &[CacheLocation::local(dir.path().join("nothing"), None)],
            &ClientOptions::default(),
            &store,
            &mut warnings,
        );
        assert!(imported.lookup(&Digest::of_bytes(b"k")).is_none());
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].contains("nothing/index.json"), "{warnings:?}");
    }

    #[test]
    fn tampered_local_blob_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let a = BlobStore::open(&dir.path().join("a")).unwrap();
        let l = layer(&a, b"original");
        let records = BTreeMap::from([(
            Digest::of_bytes(b"k"),
            StepRecord {
                layer: Some(l.clone()),
                created: String::new(),
            },
        )]);
        let loc = CacheLocation::local(dir.path().join("cache"), Some("t".into()));
        let exp = CacheExport {
            location: loc.clone(),
            mode: CacheMode::Min,
        };
        let opts = ClientOptions::default();
        export(&exp, &records, &a, &ImportedCache::default(), &opts).unwrap();
        let blob = dir.path().join("cache/blobs/sha256").join(l.digest.hex());
        std::fs::write(&blob, b"tampered").unwrap();
        let b = BlobStore::open(&dir.path().join("b")).unwrap();
        let imported = ImportedCache::load(&[loc], &opts, &b, &mut Vec::new());
        let err = imported
            .ensure_layers(&b, std::slice::from_ref(&l))
            .unwrap_err();
        assert!(
            matches!(
                err,
                CacheError::Blob(rbuild_cache::Error::DigestMismatch { .. })
            ),
            "{err}"
        );
        assert!(!b.contains(&l.digest));
    }
}
