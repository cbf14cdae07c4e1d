//! Pulling: resolve a tag or digest to a platform's image manifest, then
//! fetch its config and layers into the blob store, in parallel, each
//! verified against its digest while it streams (bad bytes never land).
//!
//! Blobs already in the store are not fetched again, so a pull that failed
//! half way resumes where it stopped.

use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

use rbuild_cache::{BlobStore, Digest};

use super::client::RegistryClient;
use super::error::{Error, Result};
use super::manifest::{Descriptor, Kind, ManifestView, ACCEPT_MANIFESTS, MAX_MANIFEST_SIZE};
use super::platform::Platform;
use super::sources::BlobSources;

/// How many blobs are transferred at once (dockerd's default for both
/// `max-concurrent-downloads` and uploads is 3 and 5; registries throttle
/// clients that open many more).
pub(crate) const PARALLEL_TRANSFERS: usize = 4;

/// A manifest (or index) as fetched from a registry, bytes verbatim.
#[derive(Debug, Clone)]
pub(crate) struct FetchedManifest {
    pub digest: Digest,
    pub media_type: String,
    pub bytes: Vec<u8>,
    pub view: ManifestView,
    pub kind: Kind,
}

/// What [`pull_content`] brought into the blob store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PulledContent {
    /// The digest of the platform's image manifest (stored verbatim, so the
    /// registry's digest is the store's).
    pub manifest_digest: Digest,
    /// Its media type (OCI or Docker schema 2).
    pub media_type: String,
    /// The digest of the multi-platform index it was chosen from, if any.
    pub index_digest: Option<Digest>,
    /// The config blob's digest.
    pub config_digest: Digest,
    /// How many blobs were downloaded (the rest were already present).
    pub fetched_blobs: usize,
}

/// Resolves `reference` (a tag or `sha256:` digest) in `repository` to the
/// image manifest for `platform` and fetches the manifest, its config and
/// its layers into `blobs`.
pub fn pull_content(
    client: &RegistryClient,
    blobs: &BlobStore,
    repository: &str,
    reference: &str,
    platform: &Platform,
) -> Result<PulledContent> {
    client.add_scope(format!("repository:{repository}:pull"));
    let expected = reference.parse::<Digest>().ok();
    let mut fetched = fetch_manifest(client, repository, reference, expected)?;
    let mut index_digest = None;
    if fetched.kind == Kind::Index {
        let chosen =
            fetched
                .view
                .select(platform)
                .cloned()
                .ok_or_else(|| Error::NoMatchingPlatform {
                    registry: client.registry().to_string(),
                    reference: format!("{repository}:{reference}"),
                    platform: platform.to_string(),
                    available: fetched.view.platforms().join(", "),
                })?;
        index_digest = Some(fetched.digest);
        // Keep the index too, so the image can be pushed on or exported
        // with all its platforms' references intact.
        blobs.put_bytes(&fetched.bytes)?;
        fetched = fetch_manifest(
            client,
            repository,
            &chosen.digest.to_string(),
            Some(chosen.digest),
        )?;
        if fetched.kind != Kind::Manifest {
            return Err(Error::Manifest {
                registry: client.registry().to_string(),
                reference: chosen.digest.to_string(),
                message: "index entry for the platform is not an image manifest".into(),
            });
        }
    }
    let wanted = fetched.view.blobs();
    let fetched_blobs = fetch_blobs(client, blobs, repository, &wanted)?;
    // The manifest goes in last: a manifest in the store means all of its
    // blobs are there too.
    blobs.put_bytes(&fetched.bytes)?;
    let config_digest = fetched
        .view
        .config
        .as_ref()
        .map(|c| c.digest)
        .expect("ManifestView::parse rejects image manifests without config");
    Ok(PulledContent {
        manifest_digest: fetched.digest,
        media_type: fetched.media_type,
        index_digest,
        config_digest,
        fetched_blobs,
    })
}

/// A manifest read from a registry on its own, bytes verbatim: what a
/// caller that fetches blobs lazily (the build cache import) starts from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteManifest {
    /// The digest of `bytes`.
    pub digest: Digest,
    /// Its media type (from `Content-Type`, else the document).
    pub media_type: String,
    /// The manifest itself.
    pub bytes: Vec<u8>,
}

/// Reads the image manifest `reference` (tag or digest) of `repository`
/// without fetching any blob; an index is refused, since a lazy reader wants
/// one manifest's blobs.
pub fn fetch_image_manifest(
    client: &RegistryClient,
    repository: &str,
    reference: &str,
) -> Result<RemoteManifest> {
    client.add_scope(format!("repository:{repository}:pull"));
    let expected = reference.parse::<Digest>().ok();
    let fetched = fetch_manifest(client, repository, reference, expected)?;
    if fetched.kind != Kind::Manifest {
        return Err(Error::Manifest {
            registry: client.registry().to_string(),
            reference: format!("{repository}:{reference}"),
            message: "expected an image manifest, found an index".into(),
        });
    }
    Ok(RemoteManifest {
        digest: fetched.digest,
        media_type: fetched.media_type,
        bytes: fetched.bytes,
    })
}

/// Fetches one blob of `repository` into `blobs` unless it is already
/// there, verified against `digest` and `size` while it streams. Returns
/// whether it was downloaded.
pub fn fetch_blob_to_store(
    client: &RegistryClient,
    blobs: &BlobStore,
    repository: &str,
    digest: &Digest,
    size: u64,
) -> Result<bool> {
    client.add_scope(format!("repository:{repository}:pull"));
    let desc = Descriptor {
        media_type: String::new(),
        digest: *digest,
        size,
        platform: None,
    };
    Ok(fetch_blobs(client, blobs, repository, std::slice::from_ref(&desc))? > 0)
}

/// Fetches a manifest or index by tag or digest. The bytes are checked
/// against `expected` (pulls by digest) and against the registry's
/// `Docker-Content-Digest` header when it sends one.
pub(crate) fn fetch_manifest(
    client: &RegistryClient,
    repository: &str,
    reference: &str,
    expected: Option<Digest>,
) -> Result<FetchedManifest> {
    let what = format!("GET manifest {repository}:{reference}");
    let path = format!("/v2/{repository}/manifests/{reference}");
    let accept = [("Accept", ACCEPT_MANIFESTS)];
    let (bytes, content_type, header_digest) = client.get(&path, &accept, &what, |mut resp| {
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let content_type = header("Content-Type");
        let header_digest = header("Docker-Content-Digest");
        let bytes = resp
            .body_mut()
            .with_config()
            .limit(MAX_MANIFEST_SIZE)
            .read_to_vec()
            .map_err(|e| match e {
                ureq::Error::BodyExceedsLimit(_) => Error::Manifest {
                    registry: client.registry().to_string(),
                    reference: reference.to_string(),
                    message: format!("larger than {MAX_MANIFEST_SIZE} bytes"),
                },
                e => client.transport(&what, e),
            })?;
        Ok((bytes, content_type, header_digest))
    })?;
    let actual = Digest::of_bytes(&bytes);
    let claimed = header_digest.and_then(|h| h.parse::<Digest>().ok());
    for want in [expected, claimed].into_iter().flatten() {
        if want != actual {
            return Err(Error::DigestMismatch {
                registry: client.registry().to_string(),
                what: format!("manifest {repository}:{reference}"),
                expected: want,
                actual,
            });
        }
    }
    let (view, kind, media_type) =
        ManifestView::parse(&bytes, content_type.as_deref()).map_err(|message| {
            Error::Manifest {
                registry: client.registry().to_string(),
                reference: format!("{repository}:{reference}"),
                message,
            }
        })?;
    Ok(FetchedManifest {
        digest: actual,
        media_type,
        bytes,
        view,
        kind,
    })
}

/// Fetches every blob of `wanted` that the store lacks, [`PARALLEL_TRANSFERS`]
/// at a time, and records where they came from. Returns how many were
/// downloaded.
pub(crate) fn fetch_blobs(
    client: &RegistryClient,
    blobs: &BlobStore,
    repository: &str,
    wanted: &[Descriptor],
) -> Result<usize> {
    let sources = BlobSources::new(blobs.root());
    let mut missing: Vec<&Descriptor> = Vec::new();
    for d in wanted {
        if !blobs.contains(&d.digest) && !missing.iter().any(|m| m.digest == d.digest) {
            missing.push(d);
        }
    }
    run_parallel(&missing, |d| {
        fetch_blob(client, blobs, repository, d)?;
        sources.record(&d.digest, client.registry(), repository);
        Ok(())
    })?;
    for d in wanted {
        sources.record(&d.digest, client.registry(), repository);
    }
    Ok(missing.len())
}

/// Streams one blob into the store, verifying size and digest; a broken
/// connection restarts the blob from scratch on the next attempt.
fn fetch_blob(
    client: &RegistryClient,
    blobs: &BlobStore,
    repository: &str,
    desc: &Descriptor,
) -> Result<()> {
    let digest = desc.digest;
    let what = format!("GET blob {digest} from {repository}");
    let path = format!("/v2/{repository}/blobs/{digest}");
    client.get(&path, &[], &what, |mut resp| {
        let mut writer = blobs.writer()?;
        // One byte more than announced, so an overlong body is detected
        // without reading an endless one.
        let mut body = resp.body_mut().as_reader().take(desc.size + 1);
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = body
                .read(&mut buf)
                .map_err(|e| client.transport(&what, e))?;
            if n == 0 {
                break;
            }
            writer.write_all(&buf[..n]).map_err(|source| Error::Io {
                context: format!("writing {}", writer.temp_path().display()),
                source,
            })?;
        }
        let size = writer.size();
        match writer.finish_verified(&digest) {
            Ok(_) if size == desc.size => Ok(()),
            // Right content, wrong size in the manifest: the blob is kept
            // (it is what the digest names) but the manifest is inconsistent.
            Ok(_) => Err(Error::Manifest {
                registry: client.registry().to_string(),
                reference: format!("{repository} blob {digest}"),
                message: format!("blob is {size} bytes, manifest says {}", desc.size),
            }),
            Err(rbuild_cache::Error::DigestMismatch { expected, actual }) => {
                Err(Error::DigestMismatch {
                    registry: client.registry().to_string(),
                    what: format!("blob {digest} of {repository}"),
                    expected,
                    actual,
                })
            }
            Err(e) => Err(e.into()),
        }
    })
}

/// Runs `op` over `items` on up to [`PARALLEL_TRANSFERS`] threads; stops
/// handing out work after the first error and returns it.
pub(crate) fn run_parallel<T: Sync>(
    items: &[T],
    op: impl Fn(&T) -> Result<()> + Sync,
) -> Result<()> {
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let first_error: Mutex<Option<Error>> = Mutex::new(None);
    let workers = PARALLEL_TRANSFERS.min(items.len());
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| {
                while !failed.load(Ordering::Relaxed) {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(item) = items.get(i) else { break };
                    if let Err(e) = op(item) {
                        failed.store(true, Ordering::Relaxed);
                        let mut slot = first_error.lock().unwrap_or_else(|p| p.into_inner());
                        slot.get_or_insert(e);
                    }
                }
            });
        }
    });
    match first_error.into_inner().unwrap_or_else(|p| p.into_inner()) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
