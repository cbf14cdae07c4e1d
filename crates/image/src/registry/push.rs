//! Pushing: upload the blobs a manifest references that the registry lacks
//! (checked with `HEAD`), mounting them from another repository of the same
//! registry when rbuild knows one holds them, then put the manifest.
//!
//! Every blob is checked before it is sent, so a push that failed half way
//! resumes: blobs that made it are skipped the next time.

use ureq::http::Method;

use rbuild_cache::{BlobStore, Digest};

use super::client::{Payload, RegistryClient};
use super::error::{Error, Result};
use super::manifest::{Descriptor, Kind, ManifestView};
use super::pull::run_parallel;
use super::sources::BlobSources;

/// How a blob reached the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BlobOutcome {
    /// It was already there.
    Exists,
    /// The registry linked it from another repository.
    Mounted,
    /// Its bytes were uploaded.
    Uploaded,
}

/// What [`push_content`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushReport {
    /// The digest of the pushed manifest (or index).
    pub digest: Digest,
    /// Blobs whose bytes were uploaded.
    pub uploaded: usize,
    /// Blobs mounted from another repository.
    pub mounted: usize,
    /// Blobs the registry already had.
    pub existing: usize,
}

/// Pushes the manifest (or index) `manifest_digest` from `blobs`, with
/// everything it references, to `repository`, tagged `tag` (or by digest
/// when `tag` is `None`). The manifest bytes are sent verbatim, so the
/// registry's digest is the store's.
pub fn push_content(
    client: &RegistryClient,
    blobs: &BlobStore,
    repository: &str,
    tag: Option<&str>,
    manifest_digest: &Digest,
) -> Result<PushReport> {
    client.add_scope(format!("repository:{repository}:pull,push"));
    let mut report = PushReport {
        digest: *manifest_digest,
        uploaded: 0,
        mounted: 0,
        existing: 0,
    };
    push_manifest(client, blobs, repository, tag, manifest_digest, &mut report)?;
    Ok(report)
}

fn push_manifest(
    client: &RegistryClient,
    blobs: &BlobStore,
    repository: &str,
    tag: Option<&str>,
    digest: &Digest,
    report: &mut PushReport,
) -> Result<()> {
    let bytes = blobs.read(digest)?;
    let (view, kind, media_type) =
        ManifestView::parse(&bytes, None).map_err(|message| Error::Manifest {
            registry: client.registry().to_string(),
            reference: digest.to_string(),
            message,
        })?;
    match kind {
        // An index goes up after each of its manifests, by digest.
        Kind::Index => {
            for child in &view.manifests {
                push_manifest(client, blobs, repository, None, &child.digest, report)?;
            }
        }
        Kind::Manifest => {
            let wanted = view.blobs();
            let outcomes = std::sync::Mutex::new(Vec::new());
            run_parallel(&wanted, |d| {
                let outcome = push_blob(client, blobs, repository, d)?;
                outcomes
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(outcome);
                Ok(())
            })?;
            for o in outcomes.into_inner().unwrap_or_else(|p| p.into_inner()) {
                match o {
                    BlobOutcome::Exists => report.existing += 1,
                    BlobOutcome::Mounted => report.mounted += 1,
                    BlobOutcome::Uploaded => report.uploaded += 1,
                }
            }
        }
    }
    let reference = tag
        .map(str::to_string)
        .unwrap_or_else(|| digest.to_string());
    let what = format!("PUT manifest {repository}:{reference}");
    let path = format!("/v2/{repository}/manifests/{reference}");
    let resp = client.send(
        Method::PUT,
        &path,
        &[("Content-Type", media_type.as_str())],
        Payload::Bytes(&bytes),
        &what,
    )?;
    let status = resp.status().as_u16();
    if !(200..300).contains(&status) {
        return Err(client.status_error(resp, &what, status));
    }
    if let Some(returned) = resp
        .headers()
        .get("Docker-Content-Digest")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<Digest>().ok())
    {
        if returned != *digest {
            return Err(Error::DigestMismatch {
                registry: client.registry().to_string(),
                what: format!("manifest {repository}:{reference} as stored by the registry"),
                expected: *digest,
                actual: returned,
            });
        }
    }
    Ok(())
}

/// Makes sure the registry has one blob: `HEAD`, else mount, else upload.
fn push_blob(
    client: &RegistryClient,
    blobs: &BlobStore,
    repository: &str,
    desc: &Descriptor,
) -> Result<BlobOutcome> {
    let digest = desc.digest;
    if !blobs.contains(&digest) {
        return Err(Error::Blob(rbuild_cache::Error::BlobNotFound(digest)));
    }
    let sources = BlobSources::new(blobs.root());
    let what = format!("push blob {digest} to {repository}");
    let outcome = client.with_retries(&what, || {
        let head = client.send_once(
            Method::HEAD,
            &format!("/v2/{repository}/blobs/{digest}"),
            &[],
            Payload::None,
            &what,
        )?;
        match head.status().as_u16() {
            200 => return Ok(BlobOutcome::Exists),
            404 => {}
            s => return Err(client.status_error(head, &what, s)),
        }
        let mut location = None;
        let others: Vec<String> = sources
            .repositories(&digest, client.registry())
            .into_iter()
            .filter(|r| r != repository)
            .take(3)
            .collect();
        for from in others {
            client.add_scope(format!("repository:{from}:pull"));
            let resp = client.send_once(
                Method::POST,
                &format!("/v2/{repository}/blobs/uploads/?mount={digest}&from={from}"),
                &[],
                Payload::Bytes(b""),
                &what,
            )?;
            match resp.status().as_u16() {
                201 => return Ok(BlobOutcome::Mounted),
                // The registry could not mount and opened an upload instead.
                202 => {
                    location = Some(upload_location(client, &resp, &what)?);
                    break;
                }
                s if s >= 500 => return Err(client.status_error(resp, &what, s)),
                // Not allowed to read the source repository: upload instead.
                _ => {}
            }
        }
        let location = match location {
            Some(l) => l,
            None => {
                let resp = client.send_once(
                    Method::POST,
                    &format!("/v2/{repository}/blobs/uploads/"),
                    &[],
                    Payload::Bytes(b""),
                    &what,
                )?;
                match resp.status().as_u16() {
                    202 => upload_location(client, &resp, &what)?,
                    s => return Err(client.status_error(resp, &what, s)),
                }
            }
        };
        // Monolithic upload: the whole blob streams from its file in the
        // PUT that closes the session.
        let sep = if location.contains('?') { '&' } else { '?' };
        let put_url = format!("{location}{sep}digest={digest}");
        let resp = client.send_once(
            Method::PUT,
            &put_url,
            &[("Content-Type", "application/octet-stream")],
            Payload::File(&blobs.path(&digest)),
            &what,
        )?;
        match resp.status().as_u16() {
            201 | 204 => Ok(BlobOutcome::Uploaded),
            s => Err(client.status_error(resp, &what, s)),
        }
    })?;
    sources.record(&digest, client.registry(), repository);
    Ok(outcome)
}

fn upload_location(
    client: &RegistryClient,
    resp: &ureq::http::Response<ureq::Body>,
    what: &str,
) -> Result<String> {
    resp.headers()
        .get("Location")
        .and_then(|v| v.to_str().ok())
        .map(|l| client.url(l))
        .ok_or_else(|| Error::Status {
            registry: client.registry().to_string(),
            what: what.to_string(),
            status: resp.status().as_u16(),
            message: "upload started without a Location header".into(),
        })
}
