//! OCI images: layers, configs, manifests, the local image store and registries.

pub mod compress;
pub mod layer;
pub mod rootfs;
pub mod unpack;
pub use compress::Compression;
pub use layer::{
    compress_tar, entries_from_dir, write_layer, EntryKind, LayerDescriptor, LayerEntry,
    LayerError, LayerOptions, Meta,
};
pub use unpack::{extract_archive, unpack_layer, UnpackMode};
