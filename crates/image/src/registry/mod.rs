//! OCI distribution registries: pull images into the store, push them out,
//! and log in.
//!
//! Owns the HTTP client ([`RegistryClient`], on `ureq` with rustls and the
//! system's root certificates), authentication (docker `config.json`,
//! credential helpers, Basic and Bearer token flows), manifest and platform
//! selection, and blob transfer with digest verification, retries and
//! resumption. It does not own the store's layout or manifest type (see the
//! store module) or image names (see `Reference`).
//!
//! Plain HTTP is used only for loopback registries and those listed in
//! [`ClientOptions::insecure_registries`], as dockerd does.
//!
//! Why `ureq` and not `oci-client`: rbuild is synchronous (scoped OS
//! threads, no async runtime), and `oci-client` is async on tokio, which
//! every caller would have to bring up; `ureq` 3 is small, maintained,
//! blocking, and streams request and response bodies, so blobs go straight
//! into the blob store's verifying writer. The distribution protocol on top of it
//! (manifests, blobs, uploads, token flow) is a few hundred lines here.
//!
//! Besides whole-image [`pull`] and [`push`], [`fetch_image_manifest`] and
//! [`fetch_blob_to_store`] read one manifest and single blobs, for callers
//! that fetch lazily (the solver's cache import).

mod auth;
mod client;
mod credentials;
mod error;
mod manifest;
mod platform;
mod pull;
mod push;
mod sources;

pub use auth::Credentials;
pub use client::{ClientOptions, RegistryClient, RetryPolicy};
pub use credentials::DockerConfig;
pub use error::{Error, Result};
pub use platform::Platform;
pub use pull::{
    fetch_blob_to_store, fetch_image_manifest, pull_content, PulledContent, RemoteManifest,
};
pub use push::{push_content, PushReport};

use crate::{Image, Reference, Store};

/// Pulls `reference` into `store`: the manifest for `platform` (from a
/// multi-platform index when the name points at one) is stored verbatim, so
/// the image keeps the registry's manifest digest; blobs already in the
/// store are not fetched again. A reference with a tag is tagged in the
/// store; one with only a digest is listed untagged.
pub fn pull(
    store: &Store,
    reference: &Reference,
    platform: &Platform,
    options: &ClientOptions,
) -> Result<Image> {
    let client = RegistryClient::new(reference.registry(), options)?;
    let wanted = match (reference.digest(), reference.tag()) {
        (Some(d), _) => d.to_string(),
        (None, Some(t)) => t.to_string(),
        (None, None) => "latest".to_string(),
    };
    let pulled = pull_content(
        &client,
        store.blobs(),
        reference.repository(),
        &wanted,
        platform,
    )?;
    let image = store.image(&pulled.manifest_digest)?;
    if reference.digest().is_none() && reference.tag().is_some() {
        store.tag(reference, &pulled.manifest_digest)?;
    } else {
        store.register(&pulled.manifest_digest)?;
    }
    Ok(image)
}

/// Pushes `image` from `store` to `destination` (tagged with its tag, or by
/// digest when it has none) and returns what was done; the pushed digest is
/// `report.digest`, the image's manifest digest.
pub fn push(
    store: &Store,
    image: &Image,
    destination: &Reference,
    options: &ClientOptions,
) -> Result<PushReport> {
    let client = RegistryClient::new(destination.registry(), options)?;
    push_content(
        &client,
        store.blobs(),
        destination.repository(),
        destination.tag(),
        &image.manifest_digest,
    )
}

/// Checks `credentials` against `registry` (`GET /v2/`, through the token
/// flow when the registry asks for it) and, only if they are accepted,
/// saves them in the docker config. A wrong password changes nothing.
pub fn login(registry: &str, credentials: &Credentials, options: &ClientOptions) -> Result<()> {
    let client = RegistryClient::with_credentials(registry, options, Some(credentials.clone()))?;
    client.ping()?;
    let mut config = options.load_docker_config()?;
    config.store_credentials(client.registry(), credentials)
}

/// Removes the saved credentials for `registry` from the docker config (and
/// its credential helper). Returns whether there were any.
pub fn logout(registry: &str, options: &ClientOptions) -> Result<bool> {
    let mut config = options.load_docker_config()?;
    config.erase_credentials(registry)
}
