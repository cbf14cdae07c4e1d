//! The registry error type: every variant names the registry (or the config
//! file) it is about, so a user can tell which server or file to look at.

use std::path::PathBuf;

use rbuild_cache::Digest;

/// Errors from talking to a registry or reading docker credentials.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The connection failed or broke (refused, reset, timed out, TLS),
    /// after the retries allowed.
    #[error("registry {registry}: {what}: {message} (gave up after {attempts} attempt(s))")]
    Transport {
        /// The registry host.
        registry: String,
        /// What rbuild was doing (`GET /v2/...`).
        what: String,
        /// The transport error's text.
        message: String,
        /// How many attempts were made.
        attempts: u32,
    },
    /// The registry's host name does not resolve (not retried).
    #[error("registry {registry}: host not found (requesting {url}): {message}")]
    UnknownHost {
        /// The registry host.
        registry: String,
        /// The URL that was requested.
        url: String,
        /// The resolver's error.
        message: String,
    },
    /// The registry refused the credentials, or wants some and none are
    /// configured.
    #[error("registry {registry}: unauthorized: {message}")]
    Unauthorized {
        /// The registry host.
        registry: String,
        /// The registry's explanation, or rbuild's.
        message: String,
    },
    /// The manifest or blob does not exist.
    #[error("registry {registry}: {what}: not found: {message}")]
    NotFound {
        /// The registry host.
        registry: String,
        /// The missing thing (`manifest repo:tag`, `blob sha256:...`).
        what: String,
        /// The registry's explanation.
        message: String,
    },
    /// Any other unexpected HTTP status (5xx after retries, 4xx).
    #[error("registry {registry}: {what}: HTTP {status}: {message}")]
    Status {
        /// The registry host.
        registry: String,
        /// What rbuild was doing.
        what: String,
        /// The HTTP status code.
        status: u16,
        /// The registry's error message(s), if it sent any.
        message: String,
    },
    /// Content whose bytes do not hash to the digest it was asked for.
    #[error(
        "registry {registry}: {what}: content digest {actual} does not match expected {expected}"
    )]
    DigestMismatch {
        /// The registry host.
        registry: String,
        /// The blob or manifest.
        what: String,
        /// The digest that was asked for.
        expected: Digest,
        /// The digest of what arrived.
        actual: Digest,
    },
    /// A manifest or index rbuild cannot use (bad JSON, unknown media type,
    /// schema 1, too large).
    #[error("registry {registry}: manifest {reference}: {message}")]
    Manifest {
        /// The registry host.
        registry: String,
        /// The reference or digest being resolved.
        reference: String,
        /// What is wrong with it.
        message: String,
    },
    /// A multi-platform image has no manifest for the requested platform.
    #[error("registry {registry}: {reference}: no manifest for platform {platform} (available: {available})")]
    NoMatchingPlatform {
        /// The registry host.
        registry: String,
        /// The image reference.
        reference: String,
        /// The platform asked for.
        platform: String,
        /// The platforms the index lists, comma separated.
        available: String,
    },
    /// A `--platform` value that is not `os/arch[/variant]`.
    #[error("invalid platform {0:?} (expected os/arch[/variant], e.g. linux/arm64/v8)")]
    Platform(String),
    /// The registry would need plain HTTP but is neither loopback nor listed
    /// as insecure.
    #[error("registry {0}: refusing plain HTTP (only loopback hosts and --insecure-registry entries may use it)")]
    InsecureRefused(String),
    /// Reading or writing the docker config file failed.
    #[error("docker config {path}: {message}")]
    Config {
        /// The config.json path.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// A `docker-credential-*` helper failed.
    #[error("credential helper docker-credential-{helper}: {message}")]
    CredentialHelper {
        /// The helper's name (the part after `docker-credential-`).
        helper: String,
        /// Its error output or rbuild's explanation.
        message: String,
    },
    /// Local I/O (the store, a blob file).
    #[error("{context}: {source}")]
    Io {
        /// What was being read or written.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The local image store failed.
    #[error(transparent)]
    Store(#[from] crate::StoreError),
    /// The local blob store failed.
    #[error(transparent)]
    Blob(#[from] rbuild_cache::Error),
}

impl Error {
    /// Whether retrying the same operation may succeed (the connection broke,
    /// the server had a transient failure). Used by the retry loops.
    pub(crate) fn is_transient(&self) -> bool {
        match self {
            Error::Transport { .. } => true,
            Error::Status { status, .. } => *status >= 500 || *status == 429 || *status == 408,
            _ => false,
        }
    }
}

/// The registry module's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
