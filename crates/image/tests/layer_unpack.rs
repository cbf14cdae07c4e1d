//! Unpacking layers (both whiteout forms, verification) and extracting ADD
//! archives, including hostile ones.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{symlink, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use rbuild_cache::BlobStore;
use rbuild_image::{
    entries_from_dir, extract_archive, unpack_layer, write_layer, Compression, EntryKind,
    LayerDescriptor, LayerEntry, LayerError, LayerOptions, Meta, UnpackMode,
};

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Tests that need root run when root, fail in CI without it, and skip
/// with a reason elsewhere.
fn need_root(what: &str) -> bool {
    if is_root() {
        return true;
    }
    assert!(std::env::var_os("CI").is_none(), "{what} needs root in CI");
    eprintln!("skipping {what}: not root");
    false
}

fn store() -> (tempfile::TempDir, BlobStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(dir.path()).unwrap();
    (dir, store)
}

fn sample_tree(root: &Path) {
    fs::create_dir_all(root.join("etc/app")).unwrap();
    fs::write(root.join("etc/app/config"), b"key = value\n").unwrap();
    fs::set_permissions(root.join("etc/app"), fs::Permissions::from_mode(0o750)).unwrap();
    let long = root.join("l".repeat(120));
    fs::create_dir(&long).unwrap();
    fs::write(long.join("n".repeat(200)), vec![7u8; 70_000]).unwrap();
    fs::write(root.join("tool"), b"#!/bin/sh\n").unwrap();
    fs::set_permissions(root.join("tool"), fs::Permissions::from_mode(0o2755)).unwrap();
    fs::hard_link(root.join("tool"), root.join("tool2")).unwrap();
    symlink("/etc/app/config", root.join("cfg")).unwrap();
    rustix::fs::lsetxattr(
        root.join("tool"),
        "user.rbuild.test",
        b"v\0binary",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    std::os::unix::fs::chown(root.join("etc/app/config"), Some(1234), Some(4321)).ok();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        root.join("pipe"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
}

/// A comparable view of a tree: everything but file sources.
fn view(root: &Path) -> Vec<(String, String, Meta)> {
    entries_from_dir(root)
        .unwrap()
        .into_iter()
        .map(|e| {
            let kind = match &e.kind {
                EntryKind::File { source, size } => {
                    format!("file {size} {:?}", fs::read(source).unwrap())
                }
                other => format!("{other:?}"),
            };
            (e.path, kind, e.meta)
        })
        .collect()
}

#[test]
fn round_trip_in_both_modes_and_all_compressions() {
    let src = tempfile::tempdir().unwrap();
    sample_tree(src.path());
    let (_d, store) = store();
    for compression in [
        Compression::Gzip { level: 1 },
        Compression::Zstd { level: 1 },
        Compression::None,
    ] {
        let opts = LayerOptions {
            compression,
            source_date_epoch: None,
        };
        let layer = write_layer(&store, entries_from_dir(src.path()).unwrap(), &opts).unwrap();
        for mode in [UnpackMode::Apply, UnpackMode::Overlay] {
            let dest = tempfile::tempdir().unwrap();
            unpack_layer(&store, &layer, dest.path(), mode).unwrap();
            assert_eq!(
                view(dest.path()),
                view(src.path()),
                "{compression:?} {mode:?}"
            );
            let a = fs::metadata(dest.path().join("tool")).unwrap();
            let b = fs::metadata(dest.path().join("tool2")).unwrap();
            assert_eq!(a.ino(), b.ino(), "hard link kept");
            // Written again from the unpacked tree: the same layer.
            let again = write_layer(&store, entries_from_dir(dest.path()).unwrap(), &opts).unwrap();
            assert_eq!(again, layer);
        }
    }
}

fn meta(mode: u32) -> Meta {
    Meta {
        mode,
        mtime: 1_600_000_000,
        ..Meta::default()
    }
}

fn whiteout_layer(store: &BlobStore, src: &Path) -> LayerDescriptor {
    fs::write(src.join("new"), b"new").unwrap();
    let entries = vec![
        LayerEntry {
            path: "a/x".into(),
            kind: EntryKind::Whiteout,
            meta: Meta::default(),
        },
        LayerEntry {
            path: "b".into(),
            kind: EntryKind::Dir,
            meta: meta(0o755),
        },
        LayerEntry {
            path: "b".into(),
            kind: EntryKind::Opaque,
            meta: Meta::default(),
        },
        LayerEntry {
            path: "b/new".into(),
            kind: EntryKind::File {
                source: src.join("new"),
                size: 3,
            },
            meta: meta(0o644),
        },
    ];
    write_layer(store, entries, &LayerOptions::default()).unwrap()
}

#[test]
fn apply_mode_deletes_whited_out_and_opaque_contents() {
    let (_d, store) = store();
    let src = tempfile::tempdir().unwrap();
    let layer = whiteout_layer(&store, src.path());
    let dest = tempfile::tempdir().unwrap();
    let d = dest.path();
    fs::create_dir_all(d.join("a/x/deep")).unwrap();
    fs::write(d.join("a/keep"), b"k").unwrap();
    fs::create_dir_all(d.join("b/old")).unwrap();
    fs::write(d.join("b/old/f"), b"o").unwrap();
    fs::write(d.join("b/zzz"), b"z").unwrap();
    unpack_layer(&store, &layer, d, UnpackMode::Apply).unwrap();
    assert!(!d.join("a/x").exists());
    assert!(d.join("a/keep").exists());
    assert!(!d.join("b/old").exists());
    assert!(!d.join("b/zzz").exists());
    assert_eq!(fs::read(d.join("b/new")).unwrap(), b"new");
    assert!(!d.join("b/.wh..wh..opq").exists());
    assert!(!d.join("a/.wh.x").exists());
}

#[test]
fn overlay_mode_writes_whiteout_devices_and_opaque_xattrs() {
    if !need_root("overlay whiteouts") {
        return;
    }
    let (_d, store) = store();
    let src = tempfile::tempdir().unwrap();
    let layer = whiteout_layer(&store, src.path());
    let dest = tempfile::tempdir().unwrap();
    let d = dest.path();
    unpack_layer(&store, &layer, d, UnpackMode::Overlay).unwrap();
    let md = fs::symlink_metadata(d.join("a/x")).unwrap();
    assert!(md.file_type().is_char_device());
    assert_eq!(md.rdev(), 0);
    let mut v = [0u8; 8];
    let n = rustix::fs::lgetxattr(d.join("b"), "trusted.overlay.opaque", &mut v[..]).unwrap();
    assert_eq!(&v[..n], b"y");
    assert_eq!(fs::read(d.join("b/new")).unwrap(), b"new");
    assert_eq!(
        fs::metadata(d.join("b")).unwrap().mtime(),
        1_600_000_000,
        "directory mtime set after its children"
    );
}

#[test]
fn verification_rejects_wrong_diff_id_digest_and_media_type() {
    let (_d, store) = store();
    let src = tempfile::tempdir().unwrap();
    let good = whiteout_layer(&store, src.path());
    let mut bad = good.clone();
    bad.diff_id = rbuild_cache::Digest::of_bytes(b"other");
    let dest = tempfile::tempdir().unwrap();
    let err = unpack_layer(&store, &bad, dest.path(), UnpackMode::Apply).unwrap_err();
    assert!(
        matches!(
            err,
            LayerError::Mismatch {
                what: "diff_id",
                ..
            }
        ),
        "{err}"
    );
    let mut bad = good.clone();
    bad.size += 1;
    let err = unpack_layer(&store, &bad, dest.path(), UnpackMode::Apply).unwrap_err();
    assert!(
        matches!(err, LayerError::Mismatch { what: "size", .. }),
        "{err}"
    );
    let mut bad = good.clone();
    bad.media_type = "application/x-rar".into();
    let err = unpack_layer(&store, &bad, dest.path(), UnpackMode::Apply).unwrap_err();
    assert!(matches!(err, LayerError::MediaType(_)), "{err}");
    // A blob whose content no longer matches its name.
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(store.path(&good.digest))
        .unwrap();
    f.write_all(b"trailing").unwrap();
    let mut grown = good.clone();
    grown.size += 8;
    let err = unpack_layer(&store, &grown, dest.path(), UnpackMode::Apply).unwrap_err();
    assert!(
        matches!(
            err,
            LayerError::Mismatch { what: "digest", .. } | LayerError::Tar { .. }
        ),
        "{err}"
    );
}

#[test]
fn multi_member_gzip_from_the_system_gzip_unpacks() {
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    fs::create_dir(w.join("t")).unwrap();
    fs::write(w.join("t/a"), b"first").unwrap();
    fs::write(w.join("t/b"), vec![b'b'; 100_000]).unwrap();
    let status = Command::new("sh")
        .arg("-c")
        .arg(
            "tar -C t --numeric-owner -cf layer.tar a b && \
             head -c 4096 layer.tar | gzip -1 > layer.tgz && \
             tail -c +4097 layer.tar | gzip -9 >> layer.tgz",
        )
        .current_dir(w)
        .status()
        .unwrap();
    assert!(status.success());
    let (_d, store) = store();
    let tar = fs::read(w.join("layer.tar")).unwrap();
    let blob = fs::read(w.join("layer.tgz")).unwrap();
    let digest = store.put_bytes(&blob).unwrap();
    let layer = LayerDescriptor {
        digest,
        diff_id: rbuild_cache::Digest::of_bytes(&tar),
        size: blob.len() as u64,
        media_type: Compression::default().media_type().into(),
    };
    let dest = tempfile::tempdir().unwrap();
    unpack_layer(&store, &layer, dest.path(), UnpackMode::Apply).unwrap();
    assert_eq!(fs::read(dest.path().join("a")).unwrap(), b"first");
    assert_eq!(fs::read(dest.path().join("b")).unwrap().len(), 100_000);
}

/// Raw tar building for hostile archives: the tar crate refuses `..` names.
struct RawTar(Vec<u8>);

impl RawTar {
    fn new() -> RawTar {
        RawTar(Vec::new())
    }

    fn entry(mut self, name: &str, typeflag: u8, link: &str, data: &[u8], size: u64) -> RawTar {
        let mut h = [0u8; 512];
        h[..name.len()].copy_from_slice(name.as_bytes());
        h[100..108].copy_from_slice(b"0000644\0");
        h[108..116].copy_from_slice(b"0000000\0");
        h[116..124].copy_from_slice(b"0000000\0");
        h[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
        h[136..148].copy_from_slice(b"00000000000\0");
        h[156] = typeflag;
        h[157..157 + link.len()].copy_from_slice(link.as_bytes());
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
        h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        self.0.extend_from_slice(&h);
        self.0.extend_from_slice(data);
        let pad = (512 - data.len() % 512) % 512;
        self.0.extend(std::iter::repeat_n(0u8, pad));
        self
    }

    fn file(self, name: &str, data: &[u8]) -> RawTar {
        self.entry(name, b'0', "", data, data.len() as u64)
    }

    fn done(mut self) -> Vec<u8> {
        self.0.extend_from_slice(&[0u8; 1024]);
        self.0
    }
}

/// A rootfs with an "outside" area next to the extraction target.
fn rootfs() -> tempfile::TempDir {
    let r = tempfile::tempdir().unwrap();
    fs::create_dir_all(r.path().join("etc")).unwrap();
    fs::write(r.path().join("etc/passwd"), b"root:x:0:0\n").unwrap();
    fs::create_dir_all(r.path().join("dest")).unwrap();
    r
}

fn assert_untouched(r: &Path) {
    assert_eq!(fs::read(r.join("etc/passwd")).unwrap(), b"root:x:0:0\n");
    let names: Vec<_> = fs::read_dir(r)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 2, "nothing new next to dest: {names:?}");
}

#[test]
fn dotdot_entries_are_refused() {
    let r = rootfs();
    let tar = RawTar::new().file("ok", b"1").file("../evil", b"x").done();
    let err = extract_archive(&tar[..], r.path(), "/dest").unwrap_err();
    assert!(matches!(err, LayerError::Breakout { .. }), "{err}");
    assert!(!r.path().join("evil").exists());
    assert_untouched(r.path());
    let tar = RawTar::new().file("a/../../etc/passwd", b"x").done();
    assert!(extract_archive(&tar[..], r.path(), "/dest").is_err());
    assert_untouched(r.path());
}

#[test]
fn absolute_names_are_clamped_into_the_destination() {
    let r = rootfs();
    let tar = RawTar::new().file("/etc/passwd", b"mine").done();
    assert!(extract_archive(&tar[..], r.path(), "/dest").unwrap());
    assert_eq!(fs::read(r.path().join("dest/etc/passwd")).unwrap(), b"mine");
    assert_untouched(r.path());
}

#[test]
fn writes_through_symlinks_are_refused() {
    for target in ["/", "..", "../etc", "/etc", "../../../../etc"] {
        let r = rootfs();
        let tar = RawTar::new()
            .entry("link", b'2', target, b"", 0)
            .file("link/passwd", b"pwned")
            .done();
        let err = extract_archive(&tar[..], r.path(), "/dest").unwrap_err();
        assert!(
            matches!(err, LayerError::Breakout { .. }),
            "{target}: {err}"
        );
        assert_untouched(r.path());
    }
    // A symlink that stays inside the destination is followed.
    let r = rootfs();
    let tar = RawTar::new()
        .entry("sub/", b'5', "", b"", 0)
        .entry("link", b'2', "/dest/sub", b"", 0)
        .file("link/f", b"ok")
        .done();
    assert!(extract_archive(&tar[..], r.path(), "/dest").unwrap());
    assert_eq!(fs::read(r.path().join("dest/sub/f")).unwrap(), b"ok");
}

#[test]
fn hardlinks_to_outside_are_refused() {
    let r = rootfs();
    let tar = RawTar::new()
        .entry("h", b'1', "../etc/passwd", b"", 0)
        .done();
    let err = extract_archive(&tar[..], r.path(), "/dest").unwrap_err();
    assert!(matches!(err, LayerError::Breakout { .. }), "{err}");
    // Absolute link names mean the destination, where there is no such file.
    let tar = RawTar::new().entry("h", b'1', "/etc/passwd", b"", 0).done();
    assert!(extract_archive(&tar[..], r.path(), "/dest").is_err());
    // Through a symlink written by the same archive.
    let tar = RawTar::new()
        .entry("up", b'2', "/etc", b"", 0)
        .entry("h", b'1', "up/passwd", b"", 0)
        .done();
    assert!(extract_archive(&tar[..], r.path(), "/dest").is_err());
    assert_untouched(r.path());
    assert_eq!(
        fs::metadata(r.path().join("etc/passwd")).unwrap().nlink(),
        1
    );
}

#[test]
fn huge_declared_sizes_and_truncation_fail_without_allocating() {
    let r = rootfs();
    // 8 GiB declared, 10 bytes present.
    let mut tar = RawTar::new().entry("big", b'0', "", b"", (8 << 30) - 1).0;
    tar.extend_from_slice(b"0123456789");
    let err = extract_archive(&tar[..], r.path(), "/dest").unwrap_err();
    assert!(matches!(err, LayerError::Tar { .. }), "{err}");
    // Cut in the middle of a header.
    let tar = RawTar::new().file("a", b"x").done();
    let err = extract_archive(&tar[..700], r.path(), "/dest").unwrap_err();
    assert!(matches!(err, LayerError::Tar { .. }), "{err}");
}

#[test]
fn compressed_archives_are_detected_and_non_archives_reported() {
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    fs::create_dir_all(w.join("src/d")).unwrap();
    fs::write(w.join("src/d/f"), b"hello").unwrap();
    let status = Command::new("sh")
        .arg("-c")
        .arg(
            "tar -C src -cf a.tar d && gzip -k a.tar && bzip2 -k a.tar && xz -k a.tar && \
             zstd -q a.tar -o a.tar.zst",
        )
        .current_dir(w)
        .status()
        .unwrap();
    assert!(status.success());
    for name in ["a.tar", "a.tar.gz", "a.tar.bz2", "a.tar.xz", "a.tar.zst"] {
        let r = rootfs();
        let f = fs::File::open(w.join(name)).unwrap();
        assert!(extract_archive(f, r.path(), "/dest/x").unwrap(), "{name}");
        assert_eq!(
            fs::read(r.path().join("dest/x/d/f")).unwrap(),
            b"hello",
            "{name}"
        );
    }
    let r = rootfs();
    assert!(!extract_archive(&b"just some text, not a tar"[..], r.path(), "/dest").unwrap());
    let gz_text = {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(&[b'x'; 2000]).unwrap();
        e.finish().unwrap()
    };
    assert!(!extract_archive(&gz_text[..], r.path(), "/dest").unwrap());
    assert_eq!(fs::read_dir(r.path().join("dest")).unwrap().count(), 0);
}

#[test]
fn extraction_keeps_modes_and_mtimes() {
    let r = rootfs();
    let mut tar = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_ustar();
    h.set_path("bin/tool").unwrap();
    h.set_mode(0o4711);
    h.set_mtime(1_234_567_890);
    h.set_size(3);
    h.set_cksum();
    tar.append(&h, &b"abc"[..]).unwrap();
    let data = tar.into_inner().unwrap();
    assert!(extract_archive(&data[..], r.path(), "dest").unwrap());
    let md = fs::metadata(r.path().join("dest/bin/tool")).unwrap();
    assert_eq!(md.permissions().mode() & 0o7777, 0o4711);
    assert_eq!(md.mtime(), 1_234_567_890);
}
