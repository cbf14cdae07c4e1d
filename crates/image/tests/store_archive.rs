//! Archives written by `save` are checked with the real tools (skopeo,
//! umoci); archives written by skopeo are loaded back; broken and hostile
//! archives are refused without changing the store.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use rbuild_cache::Digest;
use rbuild_image::archive::{self, ArchiveError, ArchiveFormat, ImportOptions};
use rbuild_image::config::ImageConfig;
use rbuild_image::layer::{compress_tar, LayerDescriptor, LayerOptions};
use rbuild_image::{Compression, Image, Reference, Store};

/// A tar with the given regular files (sorted, fixed metadata).
fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, content) in files {
        let mut h = tar::Header::new_ustar();
        h.set_size(content.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(1_700_000_000);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, name, *content).unwrap();
    }
    b.into_inner().unwrap()
}

fn gzip_layer(store: &Store, files: &[(&str, &[u8])]) -> LayerDescriptor {
    let opts = LayerOptions {
        compression: Compression::Gzip { level: 6 },
        source_date_epoch: None,
    };
    compress_tar(&tar_of(files)[..], store.blobs(), &opts).unwrap()
}

/// A two-layer image (gzip layers) with a config that has Docker extras.
fn sample_image(store: &Store, marker: &str) -> Image {
    let l1 = gzip_layer(store, &[("etc/marker", marker.as_bytes())]);
    let l2 = gzip_layer(store, &[("app/hello.txt", b"hello\n")]);
    let mut c = ImageConfig::new("linux", "amd64", None);
    c.created = Some("2024-01-01T00:00:00Z".into());
    c.config.cmd = Some(vec!["/bin/sh".into()]);
    c.config.env = vec!["PATH=/usr/bin:/bin".into()];
    c.config.on_build = vec!["RUN true".into()];
    c.config.labels.insert("marker".into(), marker.into());
    c.rootfs.diff_ids = vec![l1.diff_id, l2.diff_id];
    store.put_image(&c, &[l1, l2]).unwrap()
}

fn r(s: &str) -> Reference {
    Reference::parse(s).unwrap()
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap()
}

fn save_to(
    store: &Store,
    items: &[(Option<Reference>, Image)],
    format: ArchiveFormat,
    path: &Path,
) {
    let f = fs::File::create(path).unwrap();
    archive::save(store, items, format, f).unwrap();
}

/// Blobs, index and tmp of a store: what must not change when a load fails.
fn snapshot(root: &Path) -> (Vec<String>, String, Vec<String>) {
    let list = |d: PathBuf| {
        let mut v: Vec<String> = fs::read_dir(d)
            .map(|rd| {
                rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    };
    (
        list(root.join("blobs/sha256")),
        fs::read_to_string(root.join("index.json")).unwrap(),
        list(root.join("tmp")),
    )
}

#[test]
fn oci_archive_is_read_by_skopeo() {
    let root = tempfile::tempdir().unwrap();
    let s = Store::open(root.path()).unwrap();
    let img = sample_image(&s, "one");
    let out = tempfile::tempdir().unwrap();
    let path = out.path().join("img.tar");
    save_to(
        &s,
        &[(Some(r("app:1")), img.clone())],
        ArchiveFormat::Oci,
        &path,
    );

    let inspect = json(&run(Command::new("skopeo")
        .arg("inspect")
        .arg(format!("oci-archive:{}", path.display()))));
    assert_eq!(inspect["Digest"], img.manifest_digest.to_string());
    assert_eq!(inspect["Labels"]["marker"], "one");
    let layers: Vec<String> = inspect["Layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        layers,
        img.manifest
            .layers
            .iter()
            .map(|l| l.digest.to_string())
            .collect::<Vec<_>>()
    );
    // The config (with ONBUILD, a Docker extra) is kept byte for byte.
    let config = json(&run(Command::new("skopeo")
        .arg("inspect")
        .arg("--config")
        .arg("--raw")
        .arg(format!("oci-archive:{}", path.display()))));
    assert_eq!(config["config"]["OnBuild"][0], "RUN true");

    // index.json carries both name annotations.
    let listing = run(Command::new("tar").arg("-xOf").arg(&path).arg("index.json"));
    let index = json(&listing);
    assert_eq!(
        index["manifests"][0]["annotations"]["io.containerd.image.name"],
        "docker.io/library/app:1"
    );
    assert_eq!(
        index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"],
        "1"
    );

    // Deterministic: saving again gives identical bytes.
    let again = out.path().join("again.tar");
    save_to(&s, &[(Some(r("app:1")), img)], ArchiveFormat::Oci, &again);
    assert_eq!(fs::read(&path).unwrap(), fs::read(&again).unwrap());
}

#[test]
fn oci_dir_is_unpacked_by_umoci_and_read_by_skopeo() {
    let root = tempfile::tempdir().unwrap();
    let s = Store::open(root.path()).unwrap();
    let img = sample_image(&s, "dir");
    let out = tempfile::tempdir().unwrap();
    let layout = out.path().join("layout");
    archive::save_oci_dir(&s, &[(Some(r("app:v2")), img.clone())], &layout).unwrap();

    let inspect = json(&run(Command::new("skopeo")
        .arg("inspect")
        .arg(format!("oci:{}:v2", layout.display()))));
    assert_eq!(inspect["Digest"], img.manifest_digest.to_string());

    let bundle = out.path().join("bundle");
    run(Command::new("umoci")
        .arg("unpack")
        .arg("--image")
        .arg(format!("{}:v2", layout.display()))
        .arg(&bundle));
    assert_eq!(
        fs::read_to_string(bundle.join("rootfs/etc/marker")).unwrap(),
        "dir"
    );
    assert_eq!(
        fs::read_to_string(bundle.join("rootfs/app/hello.txt")).unwrap(),
        "hello\n"
    );
}

#[test]
fn docker_archive_is_read_by_skopeo_with_repo_tags_as_written() {
    let root = tempfile::tempdir().unwrap();
    let s = Store::open(root.path()).unwrap();
    let img = sample_image(&s, "docker");
    let other = sample_image(&s, "other");
    let out = tempfile::tempdir().unwrap();
    let path = out.path().join("docker.tar");
    save_to(
        &s,
        &[
            (Some(r("app:1")), img.clone()),
            (Some(r("localhost:5000/team/app:2")), img.clone()),
            (Some(r("other")), other.clone()),
            (
                Some(r(&format!("other:9@{}", other.manifest_digest))),
                other.clone(),
            ),
            (
                Some(r(&format!("other@{}", other.manifest_digest))),
                other.clone(),
            ),
        ],
        ArchiveFormat::Docker,
        &path,
    );

    let manifest = json(&run(Command::new("tar")
        .arg("-xOf")
        .arg(&path)
        .arg("manifest.json")));
    assert_eq!(manifest.as_array().unwrap().len(), 2);
    assert_eq!(
        manifest[0]["RepoTags"],
        serde_json::json!(["app:1", "localhost:5000/team/app:2"])
    );
    assert_eq!(
        manifest[1]["RepoTags"],
        serde_json::json!(["other:latest", "other:9"])
    );
    assert_eq!(
        manifest[0]["Config"],
        format!("{}.json", img.config_digest.hex())
    );
    let diff = img.config.rootfs.diff_ids[0].hex();
    assert_eq!(manifest[0]["Layers"][0], format!("{diff}/layer.tar"));
    let repos = json(&run(Command::new("tar")
        .arg("-xOf")
        .arg(&path)
        .arg("repositories")));
    assert!(repos["app"]["1"].is_string());

    // skopeo picks an image by its RepoTag and sees uncompressed layers
    // whose digests are the diffIDs.
    let inspect = json(&run(Command::new("skopeo")
        .arg("inspect")
        .arg(format!("docker-archive:{}:app:1", path.display()))));
    assert_eq!(inspect["Labels"]["marker"], "docker");
    let layers: Vec<String> = inspect["Layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        layers,
        img.config
            .rootfs
            .diff_ids
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
    );

    // Round trip through skopeo into an OCI layout, then unpack it.
    let layout = out.path().join("copied");
    run(Command::new("skopeo")
        .arg("copy")
        .arg(format!("docker-archive:{}:other:latest", path.display()))
        .arg(format!("oci:{}:x", layout.display())));
    let bundle = out.path().join("bundle");
    run(Command::new("umoci")
        .arg("unpack")
        .arg("--image")
        .arg(format!("{}:x", layout.display()))
        .arg(&bundle));
    assert_eq!(
        fs::read_to_string(bundle.join("rootfs/etc/marker")).unwrap(),
        "other"
    );
}

#[test]
fn oci_archive_round_trip_keeps_digests_and_names() {
    let src_root = tempfile::tempdir().unwrap();
    let src = Store::open(src_root.path()).unwrap();
    let img = sample_image(&src, "rt");
    let unnamed = sample_image(&src, "unnamed");
    let out = tempfile::tempdir().unwrap();
    let path = out.path().join("img.tar");
    save_to(
        &src,
        &[
            (Some(r("app:1")), img.clone()),
            (Some(r("quay.io/x/y:z")), img.clone()),
            (None, unnamed.clone()),
        ],
        ArchiveFormat::Oci,
        &path,
    );

    let dst_root = tempfile::tempdir().unwrap();
    let dst = Store::open(dst_root.path()).unwrap();
    let loaded = archive::load(&dst, fs::File::open(&path).unwrap()).unwrap();
    let names: Vec<Option<String>> = loaded
        .iter()
        .map(|(n, _)| n.as_ref().map(|r| r.to_string()))
        .collect();
    assert_eq!(
        names,
        vec![
            Some("docker.io/library/app:1".into()),
            Some("quay.io/x/y:z".into()),
            None
        ]
    );
    assert_eq!(dst.resolve("app:1").unwrap().unwrap(), img);
    assert_eq!(dst.resolve("quay.io/x/y:z").unwrap().unwrap(), img);
    assert_eq!(dst.dangling().unwrap(), vec![unnamed]);
    for l in img.layers() {
        dst.blobs().verify(&l.digest).unwrap();
    }
    assert!(
        snapshot(dst_root.path()).2.is_empty(),
        "staging left behind"
    );
}

#[test]
fn docker_archive_round_trip_keeps_image_id_and_repo_tags() {
    let src_root = tempfile::tempdir().unwrap();
    let src = Store::open(src_root.path()).unwrap();
    let img = sample_image(&src, "d");
    let out = tempfile::tempdir().unwrap();
    let path = out.path().join("d.tar");
    save_to(
        &src,
        &[
            (Some(r("app:1")), img.clone()),
            (Some(r("app:2")), img.clone()),
        ],
        ArchiveFormat::Docker,
        &path,
    );

    let dst_root = tempfile::tempdir().unwrap();
    let dst = Store::open(dst_root.path()).unwrap();
    let loaded = archive::load(&dst, fs::File::open(&path).unwrap()).unwrap();
    assert_eq!(loaded.len(), 2);
    let got = dst.resolve("app:2").unwrap().unwrap();
    // Same image ID (config kept byte for byte), uncompressed layers.
    assert_eq!(got.config_digest, img.config_digest);
    assert_eq!(got.config, img.config);
    for l in got.layers() {
        assert_eq!(l.digest, l.diff_id);
        assert_eq!(l.media_type, "application/vnd.oci.image.layer.v1.tar");
    }
    assert_eq!(
        dst.resolve(&img.short_id()).unwrap().unwrap().config_digest,
        img.config_digest
    );
}

#[test]
fn loads_archives_written_by_skopeo_including_compressed_ones() {
    let root = tempfile::tempdir().unwrap();
    let s = Store::open(root.path()).unwrap();
    let img = sample_image(&s, "sk");
    let out = tempfile::tempdir().unwrap();
    let layout = out.path().join("layout");
    archive::save_oci_dir(&s, &[(Some(r("app:1")), img.clone())], &layout).unwrap();
    let docker = out.path().join("sk-docker.tar");
    run(Command::new("skopeo")
        .arg("copy")
        .arg(format!("oci:{}:1", layout.display()))
        .arg(format!("docker-archive:{}:team/sk:3", docker.display())));
    let oci = out.path().join("sk-oci.tar");
    run(Command::new("skopeo")
        .arg("copy")
        .arg(format!("oci:{}:1", layout.display()))
        .arg(format!("oci-archive:{}:example.com/sk:4", oci.display())));
    // A gzip-compressed docker-archive, as `docker save | gzip` makes.
    let gz = out.path().join("sk-docker.tar.gz");
    run(Command::new("sh").arg("-c").arg(format!(
        "gzip -c {} > {}",
        docker.display(),
        gz.display()
    )));

    for (path, name) in [
        (&docker, "team/sk:3"),
        (&oci, "example.com/sk:4"),
        (&gz, "team/sk:3"),
    ] {
        let dst_root = tempfile::tempdir().unwrap();
        let dst = Store::open(dst_root.path()).unwrap();
        let loaded = archive::load(&dst, fs::File::open(path).unwrap()).unwrap();
        assert_eq!(loaded.len(), 1, "{}", path.display());
        assert_eq!(loaded[0].0.as_ref().unwrap(), &r(name));
        let got = dst.resolve(name).unwrap().unwrap();
        assert_eq!(got.config.rootfs.diff_ids, img.config.rootfs.diff_ids);
        assert_eq!(got.config.config.labels["marker"], "sk");
    }
}

/// Rewrites the archive at `src` into `dst`, passing each entry through `f`
/// (which may change its content or drop it by returning `None`).
fn rewrite(src: &Path, dst: &Path, mut f: impl FnMut(&str, Vec<u8>) -> Option<Vec<u8>>) {
    let mut a = tar::Archive::new(fs::File::open(src).unwrap());
    let mut b = tar::Builder::new(fs::File::create(dst).unwrap());
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        let name = e.path().unwrap().to_string_lossy().into_owned();
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut e, &mut data).unwrap();
        let mut h = e.header().clone();
        if let Some(new) = f(&name, data) {
            h.set_size(new.len() as u64);
            b.append_data(&mut h, &name, &new[..]).unwrap();
        }
    }
    b.into_inner().unwrap().flush().unwrap();
}

#[test]
fn broken_archives_are_refused_and_store_unchanged() {
    let src_root = tempfile::tempdir().unwrap();
    let src = Store::open(src_root.path()).unwrap();
    let img = sample_image(&src, "bad");
    let out = tempfile::tempdir().unwrap();
    let oci = out.path().join("oci.tar");
    let docker = out.path().join("docker.tar");
    save_to(
        &src,
        &[(Some(r("app:1")), img.clone())],
        ArchiveFormat::Oci,
        &oci,
    );
    save_to(
        &src,
        &[(Some(r("app:1")), img.clone())],
        ArchiveFormat::Docker,
        &docker,
    );
    let layer0 = format!("blobs/sha256/{}", img.manifest.layers[0].digest.hex());
    let config_blob = format!("blobs/sha256/{}", img.config_digest.hex());
    let docker_layer0 = format!("{}/layer.tar", img.config.rootfs.diff_ids[0].hex());
    let docker_config = format!("{}.json", img.config_digest.hex());

    type Case<'a> = (
        &'a str,
        &'a Path,
        Box<dyn Fn(&str, Vec<u8>) -> Option<Vec<u8>> + 'a>,
        &'a str,
    );
    let cases: Vec<Case> = vec![
        (
            "oci missing layer",
            &oci,
            Box::new(|n: &str, d| (n != layer0).then_some(d)),
            "missing",
        ),
        (
            "oci corrupt layer",
            &oci,
            Box::new(|n: &str, mut d: Vec<u8>| {
                if n == layer0 {
                    let last = d.len() - 1;
                    d[last] ^= 1;
                }
                Some(d)
            }),
            "does not match",
        ),
        (
            "oci malformed index",
            &oci,
            Box::new(|n: &str, d| {
                Some(if n == "index.json" {
                    b"{\"schemaVersion\":2,".to_vec()
                } else {
                    d
                })
            }),
            "malformed index.json",
        ),
        (
            "oci config with extra diff_id",
            &oci,
            Box::new(|n: &str, d| {
                Some(if n == config_blob {
                    extra_diff_id(&d)
                } else {
                    d
                })
            }),
            "does not match",
        ),
        (
            "docker missing layer",
            &docker,
            Box::new(|n: &str, d| (n != docker_layer0).then_some(d)),
            "missing",
        ),
        (
            "docker corrupt layer",
            &docker,
            Box::new(|n: &str, mut d: Vec<u8>| {
                if n == docker_layer0 {
                    d[600] ^= 1;
                }
                Some(d)
            }),
            "does not match",
        ),
        (
            "docker config with extra diff_id",
            &docker,
            Box::new(|n: &str, d| {
                Some(if n == docker_config {
                    extra_diff_id(&d)
                } else {
                    d
                })
            }),
            "diff_ids",
        ),
        (
            "docker malformed manifest",
            &docker,
            Box::new(|n: &str, d| {
                Some(if n == "manifest.json" {
                    b"[{\"Config\":".to_vec()
                } else {
                    d
                })
            }),
            "malformed manifest.json",
        ),
        (
            "neither format",
            &docker,
            Box::new(|n: &str, d| (n != "manifest.json").then_some(d)),
            "not an image archive",
        ),
        (
            "escaping entry",
            &docker,
            Box::new(|_n: &str, d| Some(d)),
            "escapes the archive",
        ),
    ];
    for (what, base, edit, expect) in cases {
        let path = out.path().join("case.tar");
        if what == "escaping entry" {
            write_escaping_archive(&path);
        } else {
            rewrite(base, &path, edit);
        }
        let dst_root = tempfile::tempdir().unwrap();
        let dst = Store::open(dst_root.path()).unwrap();
        let before = snapshot(dst_root.path());
        let err = archive::load(&dst, fs::File::open(&path).unwrap()).expect_err(what);
        assert!(err.to_string().contains(expect), "{what}: {err}");
        assert_eq!(snapshot(dst_root.path()), before, "{what}: store changed");
    }
    // A truncated stream is a read error.
    let data = fs::read(&oci).unwrap();
    let dst_root = tempfile::tempdir().unwrap();
    let dst = Store::open(dst_root.path()).unwrap();
    let before = snapshot(dst_root.path());
    let err = archive::load(&dst, &data[..data.len() / 2]).unwrap_err();
    assert!(
        matches!(err, ArchiveError::Read(_) | ArchiveError::Missing { .. }),
        "{err}"
    );
    assert_eq!(snapshot(dst_root.path()), before);
}

/// The config with one more diff_id than it has layers.
fn extra_diff_id(config: &[u8]) -> Vec<u8> {
    let mut c: ImageConfig = ImageConfig::from_json(config).unwrap();
    c.rootfs.diff_ids.push(Digest::of_bytes(b"extra"));
    c.to_json()
}

fn write_escaping_archive(path: &Path) {
    let mut b = tar::Builder::new(fs::File::create(path).unwrap());
    let mut h = tar::Header::new_gnu();
    h.set_size(2);
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::Regular);
    // Bypass the tar crate's own path checks by writing the name raw.
    h.as_gnu_mut().unwrap().name[..12].copy_from_slice(b"../../escape");
    h.set_cksum();
    b.append(&h, &b"{}"[..]).unwrap();
    b.finish().unwrap();
}

#[test]
fn import_rootfs_makes_a_one_layer_image() {
    let root = tempfile::tempdir().unwrap();
    let s = Store::open(root.path()).unwrap();
    let tarball = tar_of(&[
        ("bin/tool", b"#!/bin/sh\n"),
        ("etc/os-release", b"ID=test\n"),
    ]);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&tarball).unwrap();
    let gz = gz.finish().unwrap();
    let opts = ImportOptions {
        layer: LayerOptions::default(),
        source: "rootfs.tar.gz".into(),
        created: std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_704_067_200),
        message: None,
        config: Default::default(),
    };
    let img = archive::import_rootfs(&s, &gz[..], Some(&r("imported:1")), &opts).unwrap();
    assert_eq!(img.layers().len(), 1);
    assert_eq!(img.config.rootfs.diff_ids, vec![Digest::of_bytes(&tarball)]);
    assert_eq!(img.config.os, "linux");
    assert_eq!(img.config.created.as_deref(), Some("2024-01-01T00:00:00Z"));
    assert_eq!(img.config.history.len(), 1);
    assert_eq!(
        img.config.history[0].comment.as_deref(),
        Some("Imported from rootfs.tar.gz")
    );
    assert_eq!(s.resolve("imported:1").unwrap().unwrap(), img);

    // Readable by umoci after export.
    let out = tempfile::tempdir().unwrap();
    let layout = out.path().join("layout");
    archive::save_oci_dir(&s, &[(Some(r("imported:1")), img)], &layout).unwrap();
    let bundle = out.path().join("bundle");
    run(Command::new("umoci")
        .arg("unpack")
        .arg("--image")
        .arg(format!("{}:1", layout.display()))
        .arg(&bundle));
    assert_eq!(
        fs::read_to_string(bundle.join("rootfs/etc/os-release")).unwrap(),
        "ID=test\n"
    );
}
