//! Moving images in and out of the store as files: `save` to an OCI
//! archive (a tar of an OCI image layout), an OCI layout directory, or a
//! docker-archive (`docker save` format); `load` of OCI archives and
//! docker-archives; and `import` of a rootfs tarball as a one-layer image.
//!
//! `load` is all-or-nothing: every entry is first staged in a private
//! directory under the store's `tmp/`, every referenced blob is verified
//! against its digest (and every layer against its diffID), and only then
//! are blobs renamed into the blob store and, last of all, names written to
//! `index.json`. A malformed or hostile archive leaves the store unchanged.
//! Entry names are only used as keys; nothing is extracted by path.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{self, File};
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use rbuild_cache::{write_atomic, Digest, Hasher, TEMP_PREFIX};
use serde::{Deserialize, Serialize};

use crate::compress::{self, Format};
use crate::config::{host_platform, rfc3339, ContainerConfig, History, ImageConfig};
use crate::layer::{compress_tar, LayerDescriptor, LayerError, LayerOptions};
use crate::manifest::{
    is_index, is_manifest, Descriptor, Index, Manifest, ANNOTATION_IMAGE_NAME, ANNOTATION_REF_NAME,
    OCI_LAYOUT,
};
use crate::reference::Reference;
use crate::store::{entry_name, Image, Store, StoreError};

/// JSON documents of an archive larger than this are refused: they are
/// read into memory, and a hostile archive must not exhaust it.
const MAX_JSON_SIZE: u64 = 8 << 20;
/// Symlinks between entries (docker-archive layer de-duplication) are
/// followed at most this many times.
const MAX_LINK_DEPTH: usize = 8;

/// Errors of save, load and import.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A blob or file operation failed.
    #[error(transparent)]
    Blob(#[from] rbuild_cache::Error),
    /// Writing or reading a layer failed.
    #[error(transparent)]
    Layer(#[from] LayerError),
    /// Reading the archive stream failed (truncated or not a tar).
    #[error("reading archive: {0}")]
    Read(#[source] io::Error),
    /// Writing the archive failed.
    #[error("writing archive {path}: {source}")]
    Write {
        /// The archive or the entry being written.
        path: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The archive is neither an OCI layout nor a docker-archive.
    #[error("not an image archive: it has neither index.json nor manifest.json")]
    UnknownFormat,
    /// A file the archive's JSON refers to is not in it.
    #[error("archive is missing {path} (referenced by {by})")]
    Missing {
        /// The entry name.
        path: String,
        /// Which document refers to it.
        by: String,
    },
    /// A blob does not hash to the digest (or size) it is named by.
    #[error(
        "{path} in the archive does not match its descriptor: expected {expected}, got {actual}"
    )]
    Mismatch {
        /// The entry.
        path: String,
        /// What the descriptor or config says.
        expected: String,
        /// What the content gives.
        actual: String,
    },
    /// A JSON document is malformed.
    #[error("malformed {file} in the archive: {message}")]
    Json {
        /// The entry.
        file: String,
        /// The parser's message.
        message: String,
    },
    /// The archive's structure is invalid (bad entry names, a config that
    /// does not match its layers, unsupported media types).
    #[error("invalid archive: {0}")]
    Invalid(String),
}

/// Result type of this module.
pub type Result<T, E = ArchiveError> = std::result::Result<T, E>;

/// Archive formats of [`save`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArchiveFormat {
    /// A tar of an OCI image layout (`oci-archive:`; BuildKit's `type=oci`).
    Oci,
    /// The `docker save` format (`docker-archive:`; BuildKit's `type=docker`).
    Docker,
}

/// An image to save, under an optional name.
pub type SaveItem = (Option<Reference>, Image);

/// Writes `images` as an archive in `format` to `out`. The same image may
/// appear under several names. Entries are written in a fixed order with
/// fixed metadata, so equal input gives an identical archive.
pub fn save<W: Write>(
    store: &Store,
    images: &[SaveItem],
    format: ArchiveFormat,
    out: W,
) -> Result<W> {
    let mut tar = TarOut::new(out);
    match format {
        ArchiveFormat::Oci => save_oci(store, images, &mut tar)?,
        ArchiveFormat::Docker => save_docker(store, images, &mut tar)?,
    }
    tar.finish()
}

/// The `index.json` describing `images`: one entry per name (annotated
/// with the full name and the tag), one unannotated entry per unnamed image.
fn oci_index(store: &Store, images: &[SaveItem]) -> Result<Index> {
    let mut index = Index::default();
    for (name, image) in images {
        let size = store.blobs().size(&image.manifest_digest)?;
        let mut d = Descriptor::new(image.manifest.media_type(), image.manifest_digest, size);
        if let Some(r) = name {
            d.annotations
                .insert(ANNOTATION_IMAGE_NAME.into(), r.to_string());
            if let Some(tag) = r.tag() {
                d.annotations
                    .insert(ANNOTATION_REF_NAME.into(), tag.to_string());
            }
        }
        if !index.manifests.contains(&d) {
            index.manifests.push(d);
        }
    }
    Ok(index)
}

/// Every blob of `images`, de-duplicated, in digest order.
fn all_blobs(images: &[SaveItem]) -> BTreeSet<Digest> {
    let mut set = BTreeSet::new();
    for (_, image) in images {
        set.insert(image.manifest_digest);
        set.insert(image.config_digest);
        set.extend(image.manifest.layers.iter().map(|l| l.digest));
    }
    set
}

fn save_oci<W: Write>(store: &Store, images: &[SaveItem], tar: &mut TarOut<W>) -> Result<()> {
    let index = oci_index(store, images)?;
    tar.file_bytes("oci-layout", OCI_LAYOUT.as_bytes())?;
    tar.file_bytes("index.json", &index.to_json())?;
    tar.dir("blobs")?;
    tar.dir("blobs/sha256")?;
    for d in all_blobs(images) {
        let size = store.blobs().size(&d)?;
        let f = store.blobs().open_blob(&d)?;
        tar.file_reader(&format!("blobs/sha256/{}", d.hex()), size, f)?;
    }
    Ok(())
}

/// Writes `images` as an OCI image layout directory at `dest` (created if
/// missing; blobs already there are kept, `index.json` is replaced).
pub fn save_oci_dir(store: &Store, images: &[SaveItem], dest: &Path) -> Result<()> {
    let blob_dir = dest.join("blobs").join("sha256");
    fs::create_dir_all(&blob_dir)
        .map_err(|e| rbuild_cache::Error::io("create directory", &blob_dir, e))?;
    for d in all_blobs(images) {
        let target = blob_dir.join(d.hex());
        if target.is_file() {
            continue;
        }
        let mut src = store.blobs().open_blob(&d)?;
        let mut tmp = tempfile::Builder::new()
            .prefix(TEMP_PREFIX)
            .tempfile_in(&blob_dir)
            .map_err(|e| rbuild_cache::Error::io("create temp file in", &blob_dir, e))?;
        io::copy(&mut src, &mut tmp)
            .and_then(|_| tmp.as_file().sync_all())
            .map_err(|e| rbuild_cache::Error::io("copy blob to", &target, e))?;
        tmp.persist(&target)
            .map_err(|e| rbuild_cache::Error::io("rename into place", &target, e.error))?;
    }
    write_atomic(&dest.join("oci-layout"), OCI_LAYOUT.as_bytes())?;
    let index = oci_index(store, images)?;
    write_atomic(&dest.join("index.json"), &index.to_json())?;
    Ok(())
}

/// One image of a docker-archive's `manifest.json`.
#[derive(Debug, Serialize, Deserialize)]
struct DockerManifestEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers", default)]
    layers: Vec<String>,
}

fn save_docker<W: Write>(store: &Store, images: &[SaveItem], tar: &mut TarOut<W>) -> Result<()> {
    // One manifest.json entry per image ID, carrying all its names.
    let mut order: Vec<&Image> = Vec::new();
    let mut tags: HashMap<Digest, Vec<String>> = HashMap::new();
    let mut repositories: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for (name, image) in images {
        if !order.iter().any(|i| i.config_digest == image.config_digest) {
            order.push(image);
        }
        let names = tags.entry(image.config_digest).or_default();
        // RepoTags as Docker writes them: `name:tag`, short names
        // unqualified; a digest cannot appear there.
        if let Some((r, tag)) = name.as_ref().and_then(|r| Some((r, r.tag()?))) {
            let repo_tag = format!("{}:{tag}", r.familiar_name());
            if !names.contains(&repo_tag) {
                names.push(repo_tag);
            }
            if let Some(top) = image.config.rootfs.diff_ids.last() {
                repositories
                    .entry(r.familiar_name())
                    .or_default()
                    .insert(tag.to_string(), top.hex());
            }
        }
    }
    let mut entries = Vec::new();
    let mut written: BTreeSet<Digest> = BTreeSet::new();
    for image in order {
        let config_name = format!("{}.json", image.config_digest.hex());
        tar.file_bytes(&config_name, &store.blobs().read(&image.config_digest)?)?;
        let mut layer_names = Vec::new();
        for layer in image.layers() {
            let dir = layer.diff_id.hex();
            let name = format!("{dir}/layer.tar");
            if written.insert(layer.diff_id) {
                tar.dir(&dir)?;
                write_uncompressed_layer(store, &layer, &name, tar)?;
            }
            layer_names.push(name);
        }
        let names = tags.remove(&image.config_digest).unwrap_or_default();
        entries.push(DockerManifestEntry {
            config: config_name,
            repo_tags: (!names.is_empty()).then_some(names),
            layers: layer_names,
        });
    }
    let manifest = serde_json::to_vec(&entries).expect("manifest.json always serialises");
    tar.file_bytes("manifest.json", &manifest)?;
    if !repositories.is_empty() {
        let repos = serde_json::to_vec(&repositories).expect("repositories always serialises");
        tar.file_bytes("repositories", &repos)?;
    }
    Ok(())
}

/// docker-archive layers are uncompressed tars (what `docker load` and
/// skopeo read everywhere). A tar entry needs its size first, so a
/// compressed layer is decompressed twice: once to count (and check the
/// diffID), once to write. Nothing is held in memory or on disk.
fn write_uncompressed_layer<W: Write>(
    store: &Store,
    layer: &LayerDescriptor,
    name: &str,
    tar: &mut TarOut<W>,
) -> Result<()> {
    let format = Format::from_media_type(&layer.media_type)
        .ok_or_else(|| LayerError::MediaType(layer.media_type.clone()))?;
    if format == Format::Plain {
        let f = store.blobs().open_blob(&layer.digest)?;
        return tar.file_reader(name, store.blobs().size(&layer.digest)?, f);
    }
    let open = || -> Result<Box<dyn Read + Send>> {
        let f = BufReader::new(store.blobs().open_blob(&layer.digest)?);
        compress::decoder(format, f).map_err(ArchiveError::Read)
    };
    let mut counter = HashingSink::default();
    io::copy(&mut open()?, &mut counter).map_err(|e| decode_err(layer, e))?;
    if counter.hasher.clone().finish() != layer.diff_id {
        return Err(ArchiveError::Mismatch {
            path: format!("layer {}", layer.digest),
            expected: layer.diff_id.to_string(),
            actual: counter.hasher.finish().to_string(),
        });
    }
    tar.file_reader(name, counter.size, open()?)
}

fn decode_err(layer: &LayerDescriptor, e: io::Error) -> ArchiveError {
    ArchiveError::Layer(LayerError::Tar {
        entry: None,
        message: format!("decompressing layer {}: {e}", layer.digest),
    })
}

/// Hashes and counts what is written to it.
#[derive(Default)]
struct HashingSink {
    hasher: Hasher,
    size: u64,
}

impl Write for HashingSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.hasher.update(buf);
        self.size += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A tar writer with fixed metadata: owner 0:0, mtime 0, mode 0644 for
/// files and 0755 for directories.
struct TarOut<W: Write> {
    b: tar::Builder<W>,
}

impl<W: Write> TarOut<W> {
    fn new(out: W) -> TarOut<W> {
        let mut b = tar::Builder::new(out);
        b.mode(tar::HeaderMode::Deterministic);
        TarOut { b }
    }

    fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_size(size);
        h
    }

    fn dir(&mut self, path: &str) -> Result<()> {
        let mut h = Self::header(tar::EntryType::Directory, 0o755, 0);
        self.b
            .append_data(&mut h, format!("{path}/"), io::empty())
            .map_err(|source| ArchiveError::Write {
                path: path.to_string(),
                source,
            })
    }

    fn file_bytes(&mut self, path: &str, data: &[u8]) -> Result<()> {
        self.file_reader(path, data.len() as u64, data)
    }

    fn file_reader(&mut self, path: &str, size: u64, r: impl Read) -> Result<()> {
        let mut h = Self::header(tar::EntryType::Regular, 0o644, size);
        // The tar writer pads whatever it reads to the header's size without
        // checking it: insist on exactly `size` bytes, so a source that
        // changed under us fails instead of corrupting the archive.
        let mut exact = Exact {
            inner: r.take(size),
            left: size,
        };
        self.b
            .append_data(&mut h, path, &mut exact)
            .map_err(|source| ArchiveError::Write {
                path: path.to_string(),
                source,
            })
    }

    fn finish(self) -> Result<W> {
        self.b.into_inner().map_err(|source| ArchiveError::Write {
            path: "end of archive".into(),
            source,
        })
    }
}

/// A reader that fails if its source ends before `left` bytes were read.
struct Exact<R: Read> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for Exact<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && self.left > 0 && !buf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("source ended {} bytes short", self.left),
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// An archive entry staged on disk, hashed while it was written.
#[derive(Debug)]
struct Staged {
    file: PathBuf,
    digest: Digest,
    size: u64,
}

/// Every regular file and symlink of an archive, by cleaned entry name.
struct Staging {
    dir: tempfile::TempDir,
    files: HashMap<String, Staged>,
    links: HashMap<String, String>,
}

/// Normalises an entry name: `./a//b/` is `a/b`; `..` may not climb above
/// the archive root.
fn clean_name(name: &str) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    for c in name.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            c => parts.push(c),
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

impl Staging {
    fn read<R: Read>(store: &Store, reader: R) -> Result<Staging> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("{TEMP_PREFIX}load-"))
            .tempdir_in(store.blobs().tmp_dir())
            .map_err(|e| {
                rbuild_cache::Error::io("create temp directory in", store.blobs().tmp_dir(), e)
            })?;
        let mut staging = Staging {
            dir,
            files: HashMap::new(),
            links: HashMap::new(),
        };
        let mut archive = tar::Archive::new(reader);
        let entries = archive.entries().map_err(ArchiveError::Read)?;
        for (n, entry) in entries.enumerate() {
            let mut entry = entry.map_err(ArchiveError::Read)?;
            let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            let kind = entry.header().entry_type();
            if kind.is_dir() {
                continue;
            }
            let name = clean_name(&raw).ok_or_else(|| {
                ArchiveError::Invalid(format!("entry name {raw:?} escapes the archive"))
            })?;
            if kind.is_symlink() || kind.is_hard_link() {
                let target = entry
                    .link_name_bytes()
                    .map(|t| String::from_utf8_lossy(&t).into_owned())
                    .unwrap_or_default();
                // Symlinks are relative to the link's directory; hard links
                // name an archive path.
                let joined = if kind.is_symlink() && !target.starts_with('/') {
                    match name.rsplit_once('/') {
                        Some((parent, _)) => format!("{parent}/{target}"),
                        None => target,
                    }
                } else {
                    target
                };
                let resolved = clean_name(&joined).ok_or_else(|| {
                    ArchiveError::Invalid(format!("link {raw:?} points outside the archive"))
                })?;
                staging.links.insert(name, resolved);
                continue;
            }
            if !kind.is_file() {
                continue;
            }
            let path = staging.dir.path().join(n.to_string());
            let mut out =
                File::create(&path).map_err(|e| rbuild_cache::Error::io("create", &path, e))?;
            let mut sink = TeeHasher {
                out: &mut out,
                hasher: Hasher::new(),
                size: 0,
            };
            io::copy(&mut entry, &mut sink).map_err(ArchiveError::Read)?;
            let (digest, size) = (sink.hasher.finish(), sink.size);
            staging.links.remove(&name);
            staging.files.insert(
                name,
                Staged {
                    file: path,
                    digest,
                    size,
                },
            );
        }
        Ok(staging)
    }

    /// The staged file for an entry name, following links between entries.
    fn get(&self, name: &str, by: &str) -> Result<&Staged> {
        let missing = || ArchiveError::Missing {
            path: name.to_string(),
            by: by.to_string(),
        };
        let mut cur = clean_name(name).ok_or_else(missing)?;
        for _ in 0..MAX_LINK_DEPTH {
            if let Some(s) = self.files.get(&cur) {
                return Ok(s);
            }
            cur = self.links.get(&cur).ok_or_else(missing)?.clone();
        }
        Err(missing())
    }

    fn has(&self, name: &str) -> bool {
        self.get(name, "").is_ok()
    }

    /// Reads a (small) JSON entry.
    fn json(&self, name: &str, by: &str) -> Result<Vec<u8>> {
        let s = self.get(name, by)?;
        if s.size > MAX_JSON_SIZE {
            return Err(ArchiveError::Invalid(format!(
                "{name} is {} bytes, too large for a JSON document",
                s.size
            )));
        }
        fs::read(&s.file).map_err(|e| rbuild_cache::Error::io("read", &s.file, e).into())
    }

    /// The staged blob `blobs/sha256/<hex>` of an OCI layout, checked
    /// against its descriptor.
    fn blob(&self, d: &Descriptor, by: &str) -> Result<&Staged> {
        let name = format!("blobs/sha256/{}", d.digest.hex());
        let s = self.get(&name, by)?;
        if s.digest != d.digest {
            return Err(ArchiveError::Mismatch {
                path: name,
                expected: d.digest.to_string(),
                actual: s.digest.to_string(),
            });
        }
        if s.size != d.size {
            return Err(ArchiveError::Mismatch {
                path: name,
                expected: format!("{} bytes", d.size),
                actual: format!("{} bytes", s.size),
            });
        }
        Ok(s)
    }
}

/// Writes to a file while hashing and counting.
struct TeeHasher<'a> {
    out: &'a mut File,
    hasher: Hasher,
    size: u64,
}

impl Write for TeeHasher<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.out.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// An image found in an archive and fully verified, not yet in the store.
struct Verified {
    name: Option<Reference>,
    /// Blob digest → staged file, for every blob the image needs.
    blobs: Vec<(Digest, PathBuf)>,
    source: ImageSource,
}

/// Where a verified image's manifest comes from.
enum ImageSource {
    /// OCI archives carry their manifest as a blob.
    Manifest(Digest),
    /// docker-archives have a config and layers; rbuild writes the manifest.
    Assemble(Digest, Vec<LayerDescriptor>),
}

/// Loads an OCI archive or docker-archive (optionally gzip/zstd/bzip2/xz
/// compressed) into the store and names its images (from
/// `io.containerd.image.name`, `org.opencontainers.image.ref.name` when it
/// holds a full name, or `RepoTags`); unnamed images are kept untagged.
/// Returns the images loaded with their names.
pub fn load<R: Read + Send>(store: &Store, reader: R) -> Result<Vec<(Option<Reference>, Image)>> {
    let mut reader = BufReader::with_capacity(256 * 1024, reader);
    let format = compress::sniff(&mut reader).map_err(ArchiveError::Read)?;
    let input = compress::decoder(format, reader).map_err(ArchiveError::Read)?;
    let staging = Staging::read(store, input)?;
    let verified = if staging.has("index.json") {
        verify_oci(&staging)?
    } else if staging.has("manifest.json") {
        verify_docker(&staging)?
    } else {
        return Err(ArchiveError::UnknownFormat);
    };
    // Everything checked: move blobs into place, then write names.
    let mut imported: BTreeSet<Digest> = BTreeSet::new();
    for v in &verified {
        for (digest, file) in &v.blobs {
            if imported.insert(*digest) {
                store.blobs().import_file(file, digest)?;
            }
        }
    }
    let mut images = Vec::new();
    for v in verified {
        let image = match &v.source {
            ImageSource::Assemble(config, layers) => store.assemble(config, layers)?,
            ImageSource::Manifest(m) => store.image(m)?,
        };
        images.push((v.name, image));
    }
    for (name, image) in &images {
        match name {
            Some(r) => store.tag(r, &image.manifest_digest).map(drop)?,
            None => store.register(&image.manifest_digest)?,
        }
    }
    Ok(images)
}

fn json_err(file: &str, message: impl ToString) -> ArchiveError {
    ArchiveError::Json {
        file: file.to_string(),
        message: message.to_string(),
    }
}

fn verify_oci(staging: &Staging) -> Result<Vec<Verified>> {
    let index = Index::from_json(&staging.json("index.json", "the archive")?)
        .map_err(|m| json_err("index.json", m))?;
    let mut out = Vec::new();
    for d in &index.manifests {
        let name = entry_name(d);
        let mut blobs = Vec::new();
        let manifest_desc = if is_index(&d.media_type) {
            let s = staging.blob(d, "index.json")?;
            blobs.push((d.digest, s.file.clone()));
            let nested_name = format!("image index {}", d.digest);
            let nested = Index::from_json(
                &staging.json(&format!("blobs/sha256/{}", d.digest.hex()), "index.json")?,
            )
            .map_err(|m| json_err(&nested_name, m))?;
            pick_platform(&nested).ok_or_else(|| {
                ArchiveError::Invalid(format!(
                    "{nested_name} has no image manifest for this platform"
                ))
            })?
        } else if is_manifest(&d.media_type) {
            d.clone()
        } else {
            return Err(ArchiveError::Invalid(format!(
                "index.json lists {} of unsupported media type {:?}",
                d.digest, d.media_type
            )));
        };
        let by = format!("manifest {}", manifest_desc.digest);
        let s = staging.blob(&manifest_desc, "index.json")?;
        blobs.push((manifest_desc.digest, s.file.clone()));
        let manifest = Manifest::from_json(&staging.json(
            &format!("blobs/sha256/{}", manifest_desc.digest.hex()),
            "index.json",
        )?)
        .map_err(|m| json_err(&by, m))?;
        let cs = staging.blob(&manifest.config, &by)?;
        blobs.push((manifest.config.digest, cs.file.clone()));
        let config = parse_config(
            &staging.json(
                &format!("blobs/sha256/{}", manifest.config.digest.hex()),
                &by,
            )?,
            &by,
        )?;
        check_counts(&config, manifest.layers.len(), &by)?;
        for (layer, diff_id) in manifest.layers.iter().zip(&config.rootfs.diff_ids) {
            let ls = staging.blob(layer, &by)?;
            let format = Format::from_media_type(&layer.media_type).ok_or_else(|| {
                ArchiveError::Invalid(format!(
                    "{by}: unsupported layer media type {:?}",
                    layer.media_type
                ))
            })?;
            check_diff_id(ls, format, diff_id, &format!("layer {}", layer.digest))?;
            blobs.push((layer.digest, ls.file.clone()));
        }
        out.push(Verified {
            name,
            blobs,
            source: ImageSource::Manifest(manifest_desc.digest),
        });
    }
    Ok(out)
}

/// The manifest of an index for the host platform, or its only manifest.
fn pick_platform(index: &Index) -> Option<Descriptor> {
    let (os, arch, variant) = host_platform();
    let manifests: Vec<&Descriptor> = index
        .manifests
        .iter()
        .filter(|d| is_manifest(&d.media_type))
        .collect();
    manifests
        .iter()
        .find(|d| {
            d.platform.as_ref().is_some_and(|p| {
                p.os == os
                    && p.architecture == arch
                    && (variant.is_none() || p.variant.is_none() || p.variant.as_deref() == variant)
            })
        })
        .or_else(|| (manifests.len() == 1).then(|| &manifests[0]))
        .map(|d| (*d).clone())
}

fn parse_config(data: &[u8], by: &str) -> Result<ImageConfig> {
    ImageConfig::from_json(data).map_err(|e| json_err(&format!("config of {by}"), e))
}

fn check_counts(config: &ImageConfig, layers: usize, by: &str) -> Result<()> {
    if config.rootfs.diff_ids.len() != layers {
        return Err(ArchiveError::Invalid(format!(
            "{by}: config lists {} diff_ids but there are {layers} layers",
            config.rootfs.diff_ids.len()
        )));
    }
    Ok(())
}

/// Checks that a staged layer decompresses to a tar with this diffID.
fn check_diff_id(s: &Staged, format: Format, diff_id: &Digest, what: &str) -> Result<()> {
    let actual = if format == Format::Plain {
        s.digest
    } else {
        let f = BufReader::new(
            File::open(&s.file).map_err(|e| rbuild_cache::Error::io("open", &s.file, e))?,
        );
        let mut dec = compress::decoder(format, f).map_err(ArchiveError::Read)?;
        let mut sink = HashingSink::default();
        io::copy(&mut dec, &mut sink)
            .map_err(|e| ArchiveError::Invalid(format!("{what} does not decompress: {e}")))?;
        sink.hasher.finish()
    };
    if actual != *diff_id {
        return Err(ArchiveError::Mismatch {
            path: what.to_string(),
            expected: format!("diff_id {diff_id}"),
            actual: actual.to_string(),
        });
    }
    Ok(())
}

fn verify_docker(staging: &Staging) -> Result<Vec<Verified>> {
    let data = staging.json("manifest.json", "the archive")?;
    let entries: Vec<DockerManifestEntry> =
        serde_json::from_slice(&data).map_err(|e| json_err("manifest.json", e))?;
    let mut out = Vec::new();
    for e in entries {
        let by = format!("manifest.json entry {}", e.config);
        let cs = staging.get(&e.config, "manifest.json")?;
        let config = parse_config(&staging.json(&e.config, "manifest.json")?, &by)?;
        check_counts(&config, e.layers.len(), &by)?;
        let mut blobs = vec![(cs.digest, cs.file.clone())];
        let mut layers = Vec::new();
        for (path, diff_id) in e.layers.iter().zip(&config.rootfs.diff_ids) {
            let ls = staging.get(path, &by)?;
            let mut head = [0u8; 8];
            let n = File::open(&ls.file)
                .and_then(|mut f| f.read(&mut head))
                .map_err(|err| rbuild_cache::Error::io("read", &ls.file, err))?;
            let format = match Format::detect(&head[..n]) {
                f @ (Format::Plain | Format::Gzip | Format::Zstd) => f,
                _ => {
                    return Err(ArchiveError::Invalid(format!(
                        "{path}: unsupported layer compression"
                    )))
                }
            };
            check_diff_id(ls, format, diff_id, path)?;
            let media_type = match format {
                Format::Gzip => compress::MEDIA_TYPE_TAR_GZIP,
                Format::Zstd => compress::MEDIA_TYPE_TAR_ZSTD,
                _ => compress::MEDIA_TYPE_TAR,
            };
            blobs.push((ls.digest, ls.file.clone()));
            layers.push(LayerDescriptor {
                digest: ls.digest,
                diff_id: *diff_id,
                size: ls.size,
                media_type: media_type.to_string(),
            });
        }
        let names: Vec<Reference> = e
            .repo_tags
            .unwrap_or_default()
            .iter()
            .map(|t| {
                Reference::parse(t)
                    .map_err(|err| ArchiveError::Invalid(format!("RepoTags entry {t:?}: {err}")))
            })
            .collect::<Result<_>>()?;
        let names: Vec<Option<Reference>> = if names.is_empty() {
            vec![None]
        } else {
            names.into_iter().map(Some).collect()
        };
        for name in names {
            out.push(Verified {
                name,
                blobs: blobs.clone(),
                source: ImageSource::Assemble(cs.digest, layers.clone()),
            });
        }
    }
    Ok(out)
}

/// Options of [`import_rootfs`].
#[derive(Clone, Debug)]
pub struct ImportOptions {
    /// How the layer is compressed (and `SOURCE_DATE_EPOCH` clamping).
    pub layer: LayerOptions,
    /// Where the tarball came from, for the history comment
    /// (`Imported from <source>`, `-` for standard input).
    pub source: String,
    /// Creation time of the image.
    pub created: SystemTime,
    /// The history comment; `Imported from <source>` when `None`
    /// (`docker import -m`).
    pub message: Option<String>,
    /// The runtime config (Cmd, Env, WorkingDir, ...) of the new image
    /// (`docker import --change`); empty by default.
    pub config: ContainerConfig,
}

/// `docker import`: stores a rootfs tarball (plain or compressed) as a
/// one-layer image for the host platform, with one history entry, and
/// names it `reference` (or lists it untagged).
pub fn import_rootfs<R: Read + Send>(
    store: &Store,
    reader: R,
    reference: Option<&Reference>,
    opts: &ImportOptions,
) -> Result<Image> {
    let layer = compress_tar(reader, store.blobs(), &opts.layer)?;
    let (os, arch, variant) = host_platform();
    let mut config = ImageConfig::new(os, arch, variant);
    let created = rfc3339(opts.created);
    config.created = Some(created.clone());
    config.rootfs.diff_ids = vec![layer.diff_id];
    config.config = opts.config.clone();
    config.history = vec![History {
        created: Some(created),
        comment: Some(
            opts.message
                .clone()
                .unwrap_or_else(|| format!("Imported from {}", opts.source)),
        ),
        ..History::default()
    }];
    let image = store.put_image(&config, &[layer])?;
    match reference {
        Some(r) => store.tag(r, &image.manifest_digest).map(drop)?,
        None => store.register(&image.manifest_digest)?,
    }
    Ok(image)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_source_is_an_error_not_a_padded_entry() {
        let mut t = TarOut::new(Vec::new());
        let err = t.file_reader("x", 10, &b"12345"[..]).unwrap_err();
        assert!(err.to_string().contains("5 bytes short"), "{err}");
        let mut t = TarOut::new(Vec::new());
        t.file_reader("x", 5, &b"1234567"[..]).unwrap();
        let data = t.finish().unwrap();
        let mut a = tar::Archive::new(&data[..]);
        let mut e = a.entries().unwrap().next().unwrap().unwrap();
        let mut s = String::new();
        e.read_to_string(&mut s).unwrap();
        assert_eq!(s, "12345");
    }

    #[test]
    fn entry_names_are_cleaned_and_confined() {
        assert_eq!(clean_name("./a//b/").as_deref(), Some("a/b"));
        assert_eq!(clean_name("a/../b").as_deref(), Some("b"));
        assert_eq!(clean_name("/abs/x").as_deref(), Some("abs/x"));
        assert_eq!(clean_name("../x"), None);
        assert_eq!(clean_name("a/../../x"), None);
        assert_eq!(clean_name("./"), None);
    }
}
