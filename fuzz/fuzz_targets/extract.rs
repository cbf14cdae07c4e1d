//! Any bytes as an `ADD` archive (plain or compressed tar) and as a layer
//! blob: extraction returns `Ok` or an error, never panics, and nothing is
//! ever created outside the image root (for `ADD`) or the layer directory.
#![no_main]

use std::fs;
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use rbuild_cache::{BlobStore, Digest};
use rbuild_image::{extract_archive, unpack_layer, LayerDescriptor, UnpackMode};

/// Asserts that every entry under `top` (symlinks not followed) is `inside`
/// or below it: an archive must never write next to its destination.
fn assert_confined(top: &Path, inside: &Path) {
    for entry in walk(top) {
        assert!(
            entry.starts_with(inside),
            "{} written outside {}",
            entry.display(),
            inside.display()
        );
    }
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            out.extend(walk(&p));
        }
        out.push(p);
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Ok(top) = tempfile::tempdir() else {
        return;
    };
    // The archive goes to /dest inside rootfs/, which already holds symlinks
    // to `/` and `../..`: they must resolve inside the rootfs.
    let rootfs = top.path().join("rootfs");
    let dest = rootfs.join("dest");
    if fs::create_dir_all(&dest).is_err() {
        return;
    }
    let _ = std::os::unix::fs::symlink("/", dest.join("up"));
    let _ = std::os::unix::fs::symlink("../..", dest.join("rel"));
    let _ = extract_archive(data, &rootfs, "/dest");
    assert_confined(top.path(), &rootfs);

    // The same bytes as an uncompressed layer blob, unpacked in apply form.
    let Ok(store) = BlobStore::open(&top.path().join("blobs")) else {
        return;
    };
    let Ok(digest) = store.put_bytes(data) else {
        return;
    };
    let layer = LayerDescriptor {
        media_type: "application/vnd.oci.image.layer.v1.tar".to_string(),
        digest,
        size: data.len() as u64,
        diff_id: Digest::of_bytes(data),
    };
    let unpacked = top.path().join("layer");
    let _ = unpack_layer(&store, &layer, &unpacked, UnpackMode::Apply);
    for entry in walk(top.path()) {
        assert!(
            entry.starts_with(&rootfs)
                || entry.starts_with(&unpacked)
                || entry.starts_with(top.path().join("blobs")),
            "{} written outside the layer directory",
            entry.display()
        );
    }
});
