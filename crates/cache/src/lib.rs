//! Content addressing for rbuild: the [`Digest`] type and, built on it, the
//! content-addressed [`BlobStore`], the step [`CacheIndex`], the context
//! [`StatCache`], atomic file writes and advisory store locks.
//!
//! This crate depends on nothing else of rbuild; every other crate names
//! content by a [`Digest`] from here. It owns the `blobs/`, `tmp/`, `cache/`,
//! `statcache/` and `locks/` directories of a store root.

mod atomic;
mod blob;
mod digest;
mod error;
mod index;
mod lock;
mod statcache;

pub use atomic::{stray_temp_files, sync_dir, write_atomic, TEMP_PREFIX};
pub use blob::{BlobStore, BlobWriter};
pub use digest::{Digest, DigestError, Hasher};
pub use error::{Error, Result};
pub use index::{CacheIndex, CacheKey};
pub use lock::{lock_path, FileLock};
pub use statcache::StatCache;
