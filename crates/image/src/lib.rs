//! OCI images: layers, configs, manifests, the local image store and registries.
