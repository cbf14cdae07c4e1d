//! Content addressing for rbuild: the [`Digest`] type and, built on it, the
//! content-addressed blob store and the step cache index.
//!
//! This crate depends on nothing else of rbuild; every other crate names
//! content by a [`Digest`] from here.

mod digest;

pub use digest::{Digest, DigestError, Hasher};
