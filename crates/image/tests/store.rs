//! Integration tests of the image store: put, tag, resolve, untag, remove,
//! and the OCI layout it keeps at the store root.

use rbuild_cache::Digest;
use rbuild_image::config::ImageConfig;
use rbuild_image::layer::LayerDescriptor;
use rbuild_image::manifest::{ANNOTATION_IMAGE_NAME, ANNOTATION_REF_NAME};
use rbuild_image::{Reference, Store, StoreError};

/// An uncompressed one-file layer (digest == diffID), built with `tar`.
fn layer(store: &Store, name: &str, content: &[u8]) -> LayerDescriptor {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_ustar();
    h.set_size(content.len() as u64);
    h.set_mode(0o644);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Regular);
    b.append_data(&mut h, name, content).unwrap();
    let data = b.into_inner().unwrap();
    let digest = store.blobs().put_bytes(&data).unwrap();
    LayerDescriptor {
        digest,
        diff_id: digest,
        size: data.len() as u64,
        media_type: "application/vnd.oci.image.layer.v1.tar".into(),
    }
}

fn image(store: &Store, tag_text: &str) -> rbuild_image::Image {
    let l = layer(store, "f", tag_text.as_bytes());
    let mut c = ImageConfig::new("linux", "amd64", None);
    c.rootfs.diff_ids = vec![l.diff_id];
    c.config.cmd = Some(vec![tag_text.to_string()]);
    store.put_image(&c, &[l]).unwrap()
}

fn r(s: &str) -> Reference {
    Reference::parse(s).unwrap()
}

#[test]
fn open_creates_an_oci_layout() {
    let root = tempfile::tempdir().unwrap();
    Store::open(root.path()).unwrap();
    assert_eq!(
        std::fs::read_to_string(root.path().join("oci-layout")).unwrap(),
        r#"{"imageLayoutVersion":"1.0.0"}"#
    );
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root.path().join("index.json")).unwrap()).unwrap();
    assert_eq!(index["schemaVersion"], 2);
    assert_eq!(index["manifests"], serde_json::json!([]));
    assert!(root.path().join("blobs/sha256").is_dir());
    // Reopening keeps what is there.
    let s = Store::open(root.path()).unwrap();
    let img = image(&s, "a");
    s.tag(&r("app:1"), &img.manifest_digest).unwrap();
    let s = Store::open(root.path()).unwrap();
    assert_eq!(s.images().unwrap().len(), 1);
}

#[test]
fn put_image_writes_config_and_manifest_blobs() {
    let root = tempfile::tempdir().unwrap();
    let s = Store::open(root.path()).unwrap();
    let img = image(&s, "a");
    let again = s.image(&img.manifest_digest).unwrap();
    assert_eq!(again, img);
    assert_eq!(img.layers().len(), 1);
    assert_eq!(img.layers()[0].diff_id, img.config.rootfs.diff_ids[0]);
    assert_eq!(img.short_id(), &img.config_digest.hex()[..12]);
    let m: serde_json::Value =
        serde_json::from_slice(&s.blobs().read(&img.manifest_digest).unwrap()).unwrap();
    assert_eq!(m["mediaType"], "application/vnd.oci.image.manifest.v1+json");
    assert_eq!(
        m["config"]["mediaType"],
        "application/vnd.oci.image.config.v1+json"
    );
    assert_eq!(m["config"]["digest"], img.config_digest.to_string());
    // Same input, same digests (deterministic encoding).
    assert_eq!(image(&s, "a").manifest_digest, img.manifest_digest);
}

#[test]
fn put_image_rejects_mismatched_or_missing_layers() {
    let root = tempfile::tempdir().unwrap();
    let s = Store::open(root.path()).unwrap();
    let l = layer(&s, "f", b"x");
    let c = ImageConfig::new("linux", "amd64", None);
    assert!(matches!(
        s.put_image(&c, std::slice::from_ref(&l)),
        Err(StoreError::Inconsistent { .. })
    ));
    let mut c2 = c.clone();
    let ghost = LayerDescriptor {
        digest: Digest::of_bytes(b"ghost"),
        diff_id: Digest::of_bytes(b"ghost"),
        size: 5,
        media_type: "application/vnd.oci.image.layer.v1.tar".into(),
    };
    c2.rootfs.diff_ids = vec![ghost.diff_id];
    assert!(matches!(
        s.put_image(&c2, &[ghost]),
        Err(StoreError::MissingBlob { what: "layer", .. })
    ));
}

#[test]
fn tags_live_in_index_json_with_both_annotations() {
    let root = tempfile::tempdir().unwrap();
    let s = Store::open(root.path()).unwrap();
    let img = image(&s, "a");
    assert_eq!(s.tag(&r("app:1"), &img.manifest_digest).unwrap(), None);
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root.path().join("index.json")).unwrap()).unwrap();
    let entry = &index["manifests"][0];
    assert_eq!(entry["digest"], img.manifest_digest.to_string());
    assert_eq!(
        entry["annotations"][ANNOTATION_IMAGE_NAME],
        "docker.io/library/app:1"
    );
    assert_eq!(entry["annotations"][ANNOTATION_REF_NAME], "1");
    assert_eq!(
        entry["size"].as_u64().unwrap(),
        s.blobs().size(&img.manifest_digest).unwrap()
    );
}

#[test]
fn resolve_by_name_id_short_id_and_manifest_digest() {
    let root = tempfile::tempdir().unwrap();
    let s = Store::open(root.path()).unwrap();
    let img = image(&s, "a");
    s.tag(&r("app:1"), &img.manifest_digest).unwrap();
    s.tag(&r("localhost:5000/team/app"), &img.manifest_digest)
        .unwrap();
    let id = img.config_digest;
    for q in [
        "app:1".to_string(),
        "docker.io/library/app:1".to_string(),
        "localhost:5000/team/app".to_string(),
        "localhost:5000/team/app:latest".to_string(),
        id.to_string(),
        id.hex(),
        img.short_id(),
        format!("sha256:{}", &id.hex()[..8]),
        img.manifest_digest.to_string(),
        format!("app@{}", img.manifest_digest),
    ] {
        let got = s
            .resolve(&q)
            .unwrap()
            .unwrap_or_else(|| panic!("{q} not found"));
        assert_eq!(got.manifest_digest, img.manifest_digest, "{q}");
    }
    assert_eq!(s.resolve("app:2").unwrap(), None);
    assert_eq!(s.resolve("other").unwrap(), None);
    assert!(matches!(
        s.resolve("Bad Name"),
        Err(StoreError::Reference(_))
    ));
}

#[test]
fn ambiguous_short_id_is_an_error() {
    let root = tempfile::tempdir().unwrap();
    let s = Store::open(root.path()).unwrap();
    // Make enough images that two IDs share a first hex digit.
    let mut by_first: std::collections::HashMap<char, Vec<rbuild_image::Image>> =
        Default::default();
    let mut i = 0;
    let (a, b) = loop {
        let img = image(&s, &format!("img{i}"));
        s.tag(&r(&format!("app:{i}")), &img.manifest_digest)
            .unwrap();
        let first = img.config_digest.hex().chars().next().unwrap();
        let v = by_first.entry(first).or_default();
        v.push(img);
        if v.len() == 2 {
            break (v[0].clone(), v[1].clone());
        }
        i += 1;
    };
    let prefix = &a.config_digest.hex()[..1];
    match s.resolve(prefix) {
        Err(StoreError::Ambiguous { matches, .. }) => {
            assert!(matches.contains(&a.short_id()) && matches.contains(&b.short_id()));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn tag_moves_and_leaves_the_old_image_untagged() {
    let root = tempfile::tempdir().unwrap();
    let s = Store::open(root.path()).unwrap();
    let a = image(&s, "a");
    let b = image(&s, "b");
    s.tag(&r("app"), &a.manifest_digest).unwrap();
    assert_eq!(
        s.tag(&r("app:latest"), &b.manifest_digest).unwrap(),
        Some(a.manifest_digest)
    );
    assert_eq!(
        s.resolve("app").unwrap().unwrap().manifest_digest,
        b.manifest_digest
    );
    let dangling = s.dangling().unwrap();
    assert_eq!(dangling.len(), 1);
    assert_eq!(dangling[0].manifest_digest, a.manifest_digest);
    // Still findable by ID, like docker's <none> images.
    assert_eq!(s.resolve(&a.short_id()).unwrap().unwrap(), a);
    // Re-tagging the same image is a no-op move.
    assert_eq!(s.tag(&r("app"), &b.manifest_digest).unwrap(), None);
    // Naming the dangling image removes its untagged entry.
    s.tag(&r("old:1"), &a.manifest_digest).unwrap();
    assert!(s.dangling().unwrap().is_empty());
}

#[test]
fn register_lists_untagged_image_once() {
    let root = tempfile::tempdir().unwrap();
    let s = Store::open(root.path()).unwrap();
    let a = image(&s, "a");
    assert!(s.resolve(&a.short_id()).unwrap().is_none());
    s.register(&a.manifest_digest).unwrap();
    s.register(&a.manifest_digest).unwrap();
    assert_eq!(s.dangling().unwrap(), vec![a.clone()]);
    assert!(s.images().unwrap().is_empty());
    assert_eq!(s.resolve(&a.short_id()).unwrap().unwrap(), a);
}

#[test]
fn untag_removes_one_name() {
    let root = tempfile::tempdir().unwrap();
    let s = Store::open(root.path()).unwrap();
    let a = image(&s, "a");
    s.tag(&r("app:1"), &a.manifest_digest).unwrap();
    s.tag(&r("app:2"), &a.manifest_digest).unwrap();
    assert!(s.untag(&r("app:1")).unwrap());
    assert!(!s.untag(&r("app:1")).unwrap());
    let names: Vec<String> = s
        .images()
        .unwrap()
        .iter()
        .map(|(n, _)| n.familiar())
        .collect();
    assert_eq!(names, vec!["app:2"]);
    // Blobs stay for the pruner.
    assert!(s.blobs().contains(&a.manifest_digest));
    assert!(s.untag(&r("app:2")).unwrap());
    assert!(s.images().unwrap().is_empty());
    assert!(s.dangling().unwrap().is_empty());
}

#[test]
fn remove_by_id_refuses_several_names_unless_forced() {
    let root = tempfile::tempdir().unwrap();
    let s = Store::open(root.path()).unwrap();
    let a = image(&s, "a");
    s.tag(&r("app:1"), &a.manifest_digest).unwrap();
    s.tag(&r("other:2"), &a.manifest_digest).unwrap();
    match s.remove(&a.short_id(), false) {
        Err(StoreError::InUse { id, names }) => {
            assert_eq!(id, a.short_id());
            assert_eq!(names, vec!["app:1", "other:2"]);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(s.images().unwrap().len(), 2);
    // By name: just that name.
    assert_eq!(s.remove("app:1", false).unwrap(), vec![r("app:1")]);
    // One name left: removal by ID goes ahead.
    assert_eq!(s.remove(&a.short_id(), false).unwrap(), vec![r("other:2")]);
    assert!(s.images().unwrap().is_empty());
    assert!(matches!(
        s.remove("app:1", false),
        Err(StoreError::NotFound(_))
    ));

    s.tag(&r("app:1"), &a.manifest_digest).unwrap();
    s.tag(&r("app:2"), &a.manifest_digest).unwrap();
    let removed = s.remove(&a.config_digest.to_string(), true).unwrap();
    assert_eq!(removed.len(), 2);
    assert!(s.images().unwrap().is_empty());
    assert!(s.dangling().unwrap().is_empty());
}

#[test]
fn concurrent_taggers_lose_no_tag() {
    let root = tempfile::tempdir().unwrap();
    let s = Store::open(root.path()).unwrap();
    let a = image(&s, "a");
    std::thread::scope(|sc| {
        for t in 0..4 {
            let s = s.clone();
            let d = a.manifest_digest;
            sc.spawn(move || {
                for i in 0..10 {
                    s.tag(&r(&format!("app{t}:{i}")), &d).unwrap();
                }
            });
        }
    });
    assert_eq!(s.images().unwrap().len(), 40);
    let leftovers: Vec<_> = std::fs::read_dir(root.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(rbuild_cache::TEMP_PREFIX))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn broken_manifest_is_reported_not_tagged() {
    let root = tempfile::tempdir().unwrap();
    let s = Store::open(root.path()).unwrap();
    let bad = s.blobs().put_bytes(b"{not json").unwrap();
    assert!(matches!(s.tag(&r("x"), &bad), Err(StoreError::Json { .. })));
    let missing = Digest::of_bytes(b"nothing");
    assert!(matches!(
        s.tag(&r("x"), &missing),
        Err(StoreError::MissingBlob {
            what: "manifest",
            ..
        })
    ));
    assert!(s.images().unwrap().is_empty());
}

#[test]
fn referenced_blobs_cover_named_and_untagged_images_only() {
    let root = tempfile::tempdir().unwrap();
    let s = Store::open(root.path()).unwrap();
    let a = image(&s, "a");
    let b = image(&s, "b");
    let unlisted = image(&s, "c");
    s.tag(&r("app:1"), &a.manifest_digest).unwrap();
    s.register(&b.manifest_digest).unwrap();
    let refs = s.referenced_blobs().unwrap();
    for img in [&a, &b] {
        assert!(refs.contains(&img.manifest_digest));
        assert!(refs.contains(&img.config_digest));
        assert!(refs.contains(&img.manifest.layers[0].digest));
    }
    assert!(!refs.contains(&unlisted.manifest_digest));
    assert!(!refs.contains(&unlisted.manifest.layers[0].digest));
    assert_eq!(refs.len(), 6);
}

#[test]
fn open_holds_the_gc_lock_shared_and_exclusive_open_keeps_others_out() {
    let root = tempfile::tempdir().unwrap();
    let gc = rbuild_cache::lock_path(root.path(), "gc").unwrap();
    let s = Store::open(root.path()).unwrap();
    let clone = s.clone();
    drop(s);
    // A clone keeps the lock: maintenance cannot start under a user.
    assert!(rbuild_cache::FileLock::try_exclusive(&gc)
        .unwrap()
        .is_none());
    drop(clone);
    assert!(rbuild_cache::FileLock::try_exclusive(&gc)
        .unwrap()
        .is_some());
    let ex = Store::open_exclusive(root.path()).unwrap();
    assert!(rbuild_cache::FileLock::try_exclusive(&gc)
        .unwrap()
        .is_none());
    drop(ex);
}

#[test]
fn check_finds_and_repair_removes_corruption() {
    let root = tempfile::tempdir().unwrap();
    let (good, bad, tmp) = {
        let s = Store::open(root.path()).unwrap();
        let good = image(&s, "good");
        let bad = image(&s, "bad");
        s.tag(&r("good:1"), &good.manifest_digest).unwrap();
        s.tag(&r("bad:1"), &bad.manifest_digest).unwrap();
        assert!(s.check().unwrap().is_empty());
        // Corrupt one layer blob, leave a temp file as a killed writer would.
        std::fs::write(s.blobs().path(&bad.manifest.layers[0].digest), b"garbage").unwrap();
        let tmp = s.blobs().temp_file().unwrap().keep().unwrap().1;
        let problems = s.check().unwrap();
        // Not exclusive: the temp file may belong to a running build.
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(matches!(
            s.repair(&problems),
            Err(StoreError::NotExclusive(_))
        ));
        (good, bad, tmp)
    };
    let s = Store::open_exclusive(root.path()).unwrap();
    let problems = s.check().unwrap();
    let text: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
    assert_eq!(problems.len(), 3, "{text:?}");
    assert!(text.iter().any(|t| t.contains("is corrupt")));
    assert!(text
        .iter()
        .any(|t| t.starts_with("image docker.io/library/bad:1 is broken")));
    assert!(text.iter().any(|t| t.starts_with("stray temp file")));
    let done = s.repair(&problems).unwrap();
    assert_eq!(done.len(), 3, "{done:?}");
    assert!(!tmp.exists());
    assert!(!s.blobs().contains(&bad.manifest.layers[0].digest));
    assert!(s.check().unwrap().is_empty());
    assert_eq!(s.resolve("good:1").unwrap().unwrap(), good);
    assert_eq!(s.resolve("bad:1").unwrap(), None);
}
