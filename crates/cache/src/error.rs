//! The error type of rbuild-cache: every variant names the path or digest it
//! concerns, so a caller can report it without more context.

use std::io;
use std::path::PathBuf;

use crate::Digest;

/// Errors of the blob store, the cache index, the stat cache and the locks.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O operation on a path failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done (`"create"`, `"rename"`, ...).
        op: &'static str,
        /// The file or directory concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Content written or read did not hash to the digest it was supposed to have.
    #[error("digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch {
        /// The digest the content was claimed to have.
        expected: Digest,
        /// The digest it really has.
        actual: Digest,
    },
    /// A stored blob no longer matches its name: the store is corrupt.
    #[error("blob {digest} at {path} is corrupt: its content hashes to {actual}")]
    CorruptBlob {
        /// The digest the blob is stored under.
        digest: Digest,
        /// Its path.
        path: PathBuf,
        /// What its content hashes to.
        actual: Digest,
    },
    /// A blob is not in the store.
    #[error("blob {0} not found in the store")]
    BlobNotFound(Digest),
    /// A record could not be encoded as JSON.
    #[error("encode {what}: {source}")]
    Encode {
        /// What was being encoded.
        what: String,
        /// The serde error.
        #[source]
        source: serde_json::Error,
    },
}

impl Error {
    /// Wraps an `io::Error` with the operation and the path it concerned.
    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Error {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }

    /// True when the error is an I/O "not found".
    pub fn is_not_found(&self) -> bool {
        match self {
            Error::BlobNotFound(_) => true,
            Error::Io { source, .. } => source.kind() == io::ErrorKind::NotFound,
            _ => false,
        }
    }
}

/// The result type of rbuild-cache.
pub type Result<T, E = Error> = std::result::Result<T, E>;
