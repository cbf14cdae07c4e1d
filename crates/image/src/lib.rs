//! OCI images: layers, configs, manifests, the local image store and registries.
//!
//! - [`Reference`]: image names with Docker's normalisation.
//! - [`ImageConfig`] and the [`manifest`] types: the JSON documents of an image.
//! - [`Store`]: the local image store, an OCI image layout at the store root.
//! - [`archive`]: `save`/`load` of OCI archives, OCI directories and
//!   docker-archives, and `import` of rootfs tarballs.
//! - layers (writing, unpacking) and registries (pull, push).

pub mod archive;
pub mod config;
pub mod manifest;
pub mod reference;
pub mod store;
pub use archive::{ArchiveError, ArchiveFormat};
pub use config::{ContainerConfig, Healthcheck, History, ImageConfig, RootFs};
pub use manifest::{Descriptor, Index, Manifest};
pub use reference::{Reference, ReferenceError};
pub use store::{CacheUsage, GcPlan, Image, Problem, PruneOptions, Store, StoreError};

pub mod compress;
pub mod layer;
pub mod registry;
pub mod rootfs;
pub mod unpack;
pub use compress::Compression;
pub use layer::{
    compress_tar, entries_from_dir, write_layer, EntryKind, LayerDescriptor, LayerEntry,
    LayerError, LayerOptions, Meta,
};
pub use unpack::{extract_archive, unpack_layer, UnpackMode};
