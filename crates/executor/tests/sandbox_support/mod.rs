//! Shared set-up of the snapshot and sandbox tests: a store with the busybox
//! base layer, and readers for layer blobs and the mount table.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use rbuild_cache::BlobStore;
use rbuild_executor::snapshot::{Snapshotter, SnapshotterKind};
use rbuild_image::{compress_tar, Compression, LayerDescriptor, LayerOptions};

/// A temporary store holding the busybox base layer.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub blobs: BlobStore,
    pub base: LayerDescriptor,
}

impl Env {
    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    pub fn snapshotter(&self, kind: SnapshotterKind) -> Snapshotter {
        Snapshotter::new(self.root(), self.blobs.clone(), kind).expect("snapshotter")
    }
}

/// Uncompressed layers with clamped mtimes, so that digests compare.
pub fn opts() -> LayerOptions {
    LayerOptions {
        compression: Compression::None,
        source_date_epoch: Some(1_000_000),
    }
}

/// The test environment, or `None` (with the reason printed) when this host
/// cannot run it and CI is unset. In CI a missing privilege is a failure.
pub fn env() -> Option<Env> {
    let reason = if unsafe { libc::geteuid() } != 0 {
        Some("not root")
    } else if !Path::new("/bin/busybox").exists() {
        Some("/bin/busybox missing (apt-get install busybox-static)")
    } else {
        None
    };
    if let Some(reason) = reason {
        if std::env::var_os("CI").is_some() {
            panic!("cannot run sandbox tests in CI: {reason}");
        }
        eprintln!("skipped: {reason}");
        return None;
    }
    let dir = tempfile::Builder::new()
        .prefix("rbuild-sbx-")
        .tempdir_in(std::env::temp_dir())
        .expect("temp store");
    let blobs = BlobStore::open(dir.path()).expect("blob store");
    let tar = dir.path().join("busybox.tar");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/busybox-rootfs.sh");
    let st = Command::new("bash")
        .arg(&script)
        .arg(&tar)
        .status()
        .expect("run busybox-rootfs.sh");
    assert!(st.success(), "busybox-rootfs.sh failed");
    let base =
        compress_tar(File::open(&tar).expect("open tar"), &blobs, &opts()).expect("import base");
    std::fs::remove_file(&tar).expect("remove tar");
    Some(Env { dir, blobs, base })
}

/// What a layer tar holds at one path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// 'd', 'f', 'l' (symlink), 'h' (hardlink), 'c', 'b', 'p'.
    pub kind: char,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub link: Option<String>,
    pub data: Vec<u8>,
    pub xattrs: BTreeMap<String, Vec<u8>>,
}

/// The entries of an uncompressed layer blob, by path (no trailing `/`).
pub fn layer(blobs: &BlobStore, desc: &LayerDescriptor) -> BTreeMap<String, Entry> {
    let f = File::open(blobs.path(&desc.digest)).expect("open blob");
    let mut ar = tar::Archive::new(f);
    let mut out = BTreeMap::new();
    for e in ar.entries().expect("tar entries") {
        let mut e = e.expect("tar entry");
        let path = e
            .path()
            .expect("path")
            .to_string_lossy()
            .trim_end_matches('/')
            .to_string();
        let h = e.header().clone();
        let kind = match h.entry_type() {
            tar::EntryType::Directory => 'd',
            tar::EntryType::Regular => 'f',
            tar::EntryType::Symlink => 'l',
            tar::EntryType::Link => 'h',
            tar::EntryType::Char => 'c',
            tar::EntryType::Block => 'b',
            tar::EntryType::Fifo => 'p',
            other => panic!("unexpected entry type {other:?}"),
        };
        let mut xattrs = BTreeMap::new();
        if let Some(exts) = e.pax_extensions().expect("pax") {
            for ext in exts {
                let ext = ext.expect("pax ext");
                if let Some(name) = ext.key().expect("key").strip_prefix("SCHILY.xattr.") {
                    xattrs.insert(name.to_string(), ext.value_bytes().to_vec());
                }
            }
        }
        let link = e
            .link_name()
            .expect("link")
            .map(|l| l.to_string_lossy().into_owned());
        let mut data = Vec::new();
        e.read_to_end(&mut data).expect("read entry");
        out.insert(
            path,
            Entry {
                kind,
                mode: h.mode().expect("mode") & 0o7777,
                uid: h.uid().expect("uid"),
                gid: h.gid().expect("gid"),
                link,
                data,
                xattrs,
            },
        );
    }
    out
}

/// The mount points under `root` in this process's mount namespace (tests
/// run in parallel, each with its own store root).
pub fn mounts(root: &Path) -> BTreeSet<String> {
    let prefix = root.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .expect("mountinfo")
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
        .filter(|m| m.starts_with(&prefix))
        .collect()
}

/// Entries of `dir`, for checking that temp dirs were removed.
pub fn list(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    v.sort();
    v
}
