//! Layer writer: determinism, tar format details and compressed blobs read
//! back by the system's gzip, zstd and tar.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;
use std::process::Command;

use rbuild_cache::BlobStore;
use rbuild_image::{
    compress_tar, entries_from_dir, write_layer, Compression, EntryKind, LayerEntry, LayerOptions,
    Meta,
};

fn sample_tree(root: &Path) {
    fs::create_dir_all(root.join("etc/app")).unwrap();
    fs::write(root.join("etc/app/config"), b"key = value\n").unwrap();
    let long_dir = root.join("d".repeat(80)).join("e".repeat(80));
    fs::create_dir_all(&long_dir).unwrap();
    fs::write(long_dir.join("f".repeat(120)), b"long name").unwrap();
    let mut big = fs::File::create(root.join("big.bin")).unwrap();
    let mut x: u32 = 1;
    for _ in 0..(3 << 20) / 4 {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
        big.write_all(&x.to_le_bytes()).unwrap();
    }
    fs::write(root.join("run.sh"), b"#!/bin/sh\necho hi\n").unwrap();
    fs::set_permissions(root.join("run.sh"), fs::Permissions::from_mode(0o4755)).unwrap();
    fs::hard_link(root.join("run.sh"), root.join("zz-link.sh")).unwrap();
    symlink("etc/app/config", root.join("cfg")).unwrap();
    symlink("x".repeat(150), root.join("dangling")).unwrap();
}

fn store() -> (tempfile::TempDir, BlobStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(dir.path()).unwrap();
    (dir, store)
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("tool runs");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn same_tree_gives_same_digests_and_gzip_reads_it() {
    let src = tempfile::tempdir().unwrap();
    sample_tree(src.path());
    let (_d, store) = store();
    let opts = LayerOptions::default();
    let a = write_layer(&store, entries_from_dir(src.path()).unwrap(), &opts).unwrap();
    let b = write_layer(&store, entries_from_dir(src.path()).unwrap(), &opts).unwrap();
    assert_eq!(a, b);
    assert_eq!(a.media_type, "application/vnd.oci.image.layer.v1.tar+gzip");
    let blob = store.path(&a.digest);
    assert_eq!(fs::metadata(&blob).unwrap().len(), a.size);
    run(Command::new("gzip").arg("-t").arg(&blob));
    let listing = run(Command::new("tar").arg("tvzf").arg(&blob));
    let names: Vec<&str> = listing
        .lines()
        .map(|l| l.split_whitespace().nth(5).unwrap())
        .collect();
    let long = format!("{}/{}/{}", "d".repeat(80), "e".repeat(80), "f".repeat(120));
    assert_eq!(
        names,
        [
            "big.bin",
            "cfg",
            "dangling",
            &format!("{}/", "d".repeat(80)),
            &format!("{}/{}/", "d".repeat(80), "e".repeat(80)),
            &long,
            "etc/",
            "etc/app/",
            "etc/app/config",
            "run.sh",
            "zz-link.sh",
        ]
    );
    assert!(listing.contains("-rwsr-xr-x"), "{listing}");
    assert!(listing.contains(&format!("dangling -> {}", "x".repeat(150))));
    assert!(listing.contains("zz-link.sh link to run.sh"), "{listing}");
    // uname/gname are empty, so tar shows numeric ids.
    assert!(listing.lines().all(|l| l.contains(" 0/0 ")), "{listing}");

    // The diffID is the digest of the uncompressed stream.
    let tar = run(Command::new("sh")
        .arg("-c")
        .arg(format!("gzip -dc {} | sha256sum", blob.display())));
    assert_eq!(tar.split_whitespace().next().unwrap(), a.diff_id.hex());
}

#[test]
fn source_date_epoch_clamps_mtimes() {
    let (_d, store) = store();
    let src = tempfile::tempdir().unwrap();
    fs::write(src.path().join("f"), b"data").unwrap();
    let entries = |mtime: i64| {
        vec![
            LayerEntry {
                path: "dir".into(),
                kind: EntryKind::Dir,
                meta: Meta {
                    mode: 0o755,
                    mtime,
                    ..Meta::default()
                },
            },
            LayerEntry {
                path: "dir/f".into(),
                kind: EntryKind::File {
                    source: src.path().join("f"),
                    size: 4,
                },
                meta: Meta {
                    mode: 0o644,
                    uid: 1000,
                    gid: 1000,
                    mtime: mtime + 5,
                    xattrs: BTreeMap::new(),
                },
            },
        ]
    };
    let opts = LayerOptions {
        compression: Compression::Gzip { level: 9 },
        source_date_epoch: Some(1_000_000),
    };
    let a = write_layer(&store, entries(1_700_000_000), &opts).unwrap();
    let b = write_layer(&store, entries(1_800_000_000), &opts).unwrap();
    assert_eq!(a.digest, b.digest);
    let plain = LayerOptions {
        source_date_epoch: None,
        ..opts
    };
    let c = write_layer(&store, entries(1_700_000_000), &plain).unwrap();
    let d = write_layer(&store, entries(1_800_000_000), &plain).unwrap();
    assert_ne!(c.diff_id, d.diff_id);
    // Older mtimes are kept.
    let e = write_layer(&store, entries(10), &opts).unwrap();
    assert_ne!(e.diff_id, a.diff_id);
    let listing = run(Command::new("tar")
        .arg("--full-time")
        .arg("-tvzf")
        .arg(store.path(&a.digest)));
    assert!(listing.contains("1000/1000"), "{listing}");
    assert!(listing.contains("1970-01-12 13:46:40"), "{listing}");
}

#[test]
fn zstd_and_plain_layers() {
    let src = tempfile::tempdir().unwrap();
    sample_tree(src.path());
    let (_d, store) = store();
    let zst = LayerOptions {
        compression: Compression::Zstd { level: 3 },
        source_date_epoch: None,
    };
    let z = write_layer(&store, entries_from_dir(src.path()).unwrap(), &zst).unwrap();
    assert_eq!(z.media_type, "application/vnd.oci.image.layer.v1.tar+zstd");
    run(Command::new("zstd").arg("-t").arg(store.path(&z.digest)));
    let plain = LayerOptions {
        compression: Compression::None,
        source_date_epoch: None,
    };
    let p = write_layer(&store, entries_from_dir(src.path()).unwrap(), &plain).unwrap();
    assert_eq!(p.media_type, "application/vnd.oci.image.layer.v1.tar");
    assert_eq!(p.digest, p.diff_id);
    assert_eq!(z.diff_id, p.diff_id, "same tar whatever the compression");
    run(Command::new("tar").arg("tf").arg(store.path(&p.digest)));

    // Re-importing the plain tar keeps it byte for byte.
    let g = compress_tar(
        fs::File::open(store.path(&p.digest)).unwrap(),
        &store,
        &LayerOptions::default(),
    )
    .unwrap();
    assert_eq!(g.diff_id, p.diff_id);
    // ... and so does importing a compressed one.
    let again = compress_tar(
        fs::File::open(store.path(&z.digest)).unwrap(),
        &store,
        &LayerOptions::default(),
    )
    .unwrap();
    assert_eq!(again, g);
}

#[test]
fn whiteouts_are_empty_mode_zero_files_and_xattrs_go_to_pax() {
    let (_d, store) = store();
    let mut xattrs = BTreeMap::new();
    xattrs.insert("user.note".to_string(), b"hello".to_vec());
    let entries = vec![
        LayerEntry {
            path: "gone".into(),
            kind: EntryKind::Whiteout,
            meta: Meta {
                mode: 0o644,
                uid: 5,
                ..Meta::default()
            },
        },
        LayerEntry {
            path: "var/cache".into(),
            kind: EntryKind::Opaque,
            meta: Meta::default(),
        },
        LayerEntry {
            path: "var/cache".into(),
            kind: EntryKind::Dir,
            meta: Meta {
                mode: 0o755,
                xattrs,
                ..Meta::default()
            },
        },
    ];
    let opts = LayerOptions {
        compression: Compression::None,
        source_date_epoch: None,
    };
    let l = write_layer(&store, entries, &opts).unwrap();
    let listing = run(Command::new("tar")
        .arg("--xattrs")
        .arg("--xattrs-include=*")
        .arg("-tvvf")
        .arg(store.path(&l.digest)));
    let lines: Vec<&str> = listing.lines().filter(|l| !l.starts_with(' ')).collect();
    assert!(lines[0].starts_with("----------  0/0 "), "{listing}");
    assert!(lines[0].ends_with(" .wh.gone"), "{listing}");
    assert!(lines[1].ends_with(" var/cache/"), "{listing}");
    assert!(lines[2].starts_with("----------  0/0 "), "{listing}");
    assert!(listing.contains("x: 5 user.note"), "{listing}");
    assert!(lines[2].ends_with(" var/cache/.wh..wh..opq"), "{listing}");
    let raw = fs::read(store.path(&l.digest)).unwrap();
    let needle = b"SCHILY.xattr.user.note=hello\n";
    assert!(raw.windows(needle.len()).any(|w| w == needle));
}

#[test]
fn file_that_changed_size_is_an_error() {
    let (_d, store) = store();
    let src = tempfile::tempdir().unwrap();
    fs::write(src.path().join("f"), b"four").unwrap();
    let entry = |size| {
        vec![LayerEntry {
            path: "f".into(),
            kind: EntryKind::File {
                source: src.path().join("f"),
                size,
            },
            meta: Meta::default(),
        }]
    };
    let opts = LayerOptions::default();
    assert!(write_layer(&store, entry(3), &opts).is_err());
    assert!(write_layer(&store, entry(5), &opts).is_err());
    assert!(write_layer(&store, entry(4), &opts).is_ok());
    // Failed writes leave nothing behind but the one good blob.
    assert_eq!(store.list().unwrap().len(), 1);
}
