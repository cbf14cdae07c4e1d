//! Content addressing for rbuild: the [`Digest`] type and, built on it, the
//! content-addressed [`BlobStore`], the step [`CacheIndex`], the context
//! [`StatCache`], atomic file writes, advisory store locks and build [`Lease`]s.
//!
//! This crate depends on nothing else of rbuild; every other crate names
//! content by a [`Digest`] from here. It owns the `blobs/`, `tmp/`, `cache/`,
//! `statcache/`, `locks/` and `leases/` directories of a store root.

mod atomic;
mod blob;
mod digest;
mod error;
mod index;
mod lease;
mod lock;
mod statcache;

pub use atomic::{stray_temp_files, sync_dir, write_atomic, TEMP_PREFIX};
pub use blob::{BlobStore, BlobWriter};
pub use digest::{Digest, DigestError, Hasher};
pub use error::{Error, Result};
pub use index::{record_blobs, record_digests, CacheIndex, CacheKey};
pub use lease::{
    lease_dir, live_leases, remove_stale_leases, stale_leases, Lease, LeaseRecord, LiveLease,
};
pub use lock::{lock_path, FileLock, Probe};
pub use statcache::StatCache;
