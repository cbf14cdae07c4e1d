//! Registry interop against a real `docker-registry` on 127.0.0.1: skopeo
//! pushes, rbuild pulls; rbuild pushes, skopeo reads; login; tampered blobs;
//! a registry that goes away mid-transfer.

mod registry_support;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};

use rbuild_cache::{BlobStore, Digest};
use rbuild_image::registry::{
    login, logout, pull, pull_content, push, push_content, ClientOptions, Credentials, Error,
    Platform, RegistryClient,
};
use rbuild_image::{Reference, Store};

use registry_support::*;

fn host_platform() -> Platform {
    Platform::host()
}

#[test]
fn skopeo_push_then_pull_with_basic_auth_and_resume() {
    if !tools_available() {
        return;
    }
    let reg = Registry::start(true);
    let layout = Layout::new();
    let img = layout.image(
        &host_arch(),
        &[("a.txt", b"hello".to_vec()), ("b.bin", noise(300_000, 7))],
    );
    layout.tag("v1", &img);
    reg.skopeo_push(layout.path(), "v1", "team/app:v1");

    let (_cfg, opts) = options_with_login(&reg.host());
    let store_dir = tempfile::tempdir().unwrap();
    let blobs = BlobStore::open(store_dir.path()).unwrap();
    let client = RegistryClient::new(&reg.host(), &opts).unwrap();
    let pulled = pull_content(&client, &blobs, "team/app", "v1", &host_platform()).unwrap();

    // skopeo pushed the layout's manifest verbatim; the store holds the
    // same bytes under the same digest.
    assert_eq!(pulled.manifest_digest, img.manifest);
    assert_eq!(pulled.config_digest, img.config);
    assert_eq!(pulled.fetched_blobs, 3);
    for d in [img.manifest, img.config].iter().chain(&img.layers) {
        assert_eq!(
            fs::read(blobs.path(d)).unwrap(),
            fs::read(layout.path().join("blobs/sha256").join(d.hex())).unwrap(),
            "{d}"
        );
    }
    assert_eq!(
        Digest::of_bytes(&reg.skopeo_raw("team/app:v1")),
        img.manifest
    );

    // A second pull finds everything present and downloads nothing.
    let inode = fs::metadata(blobs.path(&img.layers[1])).unwrap().ino();
    let again = pull_content(&client, &blobs, "team/app", "v1", &host_platform()).unwrap();
    assert_eq!(again.fetched_blobs, 0);
    assert_eq!(
        fs::metadata(blobs.path(&img.layers[1])).unwrap().ino(),
        inode
    );

    // By digest too.
    let by_digest = pull_content(
        &client,
        &blobs,
        "team/app",
        &img.manifest.to_string(),
        &host_platform(),
    )
    .unwrap();
    assert_eq!(by_digest.manifest_digest, img.manifest);

    // Without credentials the registry refuses, and the error says which.
    let (_anon, anon_opts) = options_anonymous();
    let anon = RegistryClient::new(&reg.host(), &anon_opts).unwrap();
    let other = tempfile::tempdir().unwrap();
    let err = pull_content(
        &anon,
        &BlobStore::open(other.path()).unwrap(),
        "team/app",
        "v1",
        &host_platform(),
    )
    .unwrap_err();
    assert!(matches!(err, Error::Unauthorized { .. }), "{err}");
    assert!(err.to_string().contains(&reg.host()), "{err}");

    // A missing tag is a not-found naming the registry and the tag.
    let err = pull_content(&client, &blobs, "team/app", "nope", &host_platform()).unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err}");
    assert!(err.to_string().contains("team/app:nope"), "{err}");
}

#[test]
fn multi_platform_index_selects_platform() {
    if !tools_available() {
        return;
    }
    let reg = Registry::start(false);
    let layout = Layout::new();
    let amd = layout.image("amd64", &[("arch", b"amd64".to_vec())]);
    let arm = layout.image("arm64", &[("arch", b"arm64".to_vec())]);
    let index = layout.tag_index("multi", &[("amd64", &amd), ("arm64/v8", &arm)]);
    reg.skopeo_push(layout.path(), "multi", "lib/multi:1");

    let (_cfg, opts) = options_anonymous();
    let client = RegistryClient::new(&reg.host(), &opts).unwrap();
    let store_dir = tempfile::tempdir().unwrap();
    let blobs = BlobStore::open(store_dir.path()).unwrap();

    let arm_pull = pull_content(
        &client,
        &blobs,
        "lib/multi",
        "1",
        &"linux/arm64".parse().unwrap(),
    )
    .unwrap();
    assert_eq!(arm_pull.manifest_digest, arm.manifest);
    assert_eq!(arm_pull.index_digest, Some(index));
    assert!(blobs.contains(&arm.layers[0]));
    assert!(
        !blobs.contains(&amd.layers[0]),
        "other platform's layer fetched"
    );

    let amd_pull = pull_content(
        &client,
        &blobs,
        "lib/multi",
        "1",
        &"linux/amd64".parse().unwrap(),
    )
    .unwrap();
    assert_eq!(amd_pull.manifest_digest, amd.manifest);

    let err = pull_content(
        &client,
        &blobs,
        "lib/multi",
        "1",
        &"linux/s390x".parse().unwrap(),
    )
    .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::NoMatchingPlatform { .. }), "{msg}");
    assert!(
        msg.contains("linux/s390x") && msg.contains("linux/arm64/v8"),
        "{msg}"
    );
}

#[test]
fn push_is_read_by_skopeo_and_skips_or_mounts_existing_blobs() {
    if !tools_available() {
        return;
    }
    let reg = Registry::start(true);
    let (_cfg, opts) = options_with_login(&reg.host());
    let client = RegistryClient::new(&reg.host(), &opts).unwrap();

    // Put an image straight into a store, as a build would.
    let layout = Layout::new();
    let img = layout.image(
        &host_arch(),
        &[("one", noise(50_000, 1)), ("two", noise(70_000, 2))],
    );
    let store_dir = tempfile::tempdir().unwrap();
    let blobs = BlobStore::open(store_dir.path()).unwrap();
    for d in [img.manifest, img.config].iter().chain(&img.layers) {
        let bytes = fs::read(layout.path().join("blobs/sha256").join(d.hex())).unwrap();
        assert_eq!(blobs.put_bytes(&bytes).unwrap(), *d);
    }

    let report = push_content(&client, &blobs, "ci/app", Some("1.0"), &img.manifest).unwrap();
    assert_eq!(report.digest, img.manifest);
    assert_eq!(
        (report.uploaded, report.mounted, report.existing),
        (3, 0, 0)
    );

    // skopeo reads what rbuild pushed, and pulls it back byte for byte.
    assert_eq!(
        Digest::of_bytes(&reg.skopeo_raw("ci/app:1.0")),
        img.manifest
    );
    let out = tempfile::tempdir().unwrap();
    let mut args = vec!["copy".to_string(), "--src-tls-verify=false".into()];
    args.extend(reg.creds_args("src"));
    args.push(format!("docker://{}/ci/app:1.0", reg.host()));
    args.push(format!("oci:{}:x", out.path().display()));
    run("skopeo", &args);
    for d in &img.layers {
        assert_eq!(
            fs::read(out.path().join("blobs/sha256").join(d.hex())).unwrap(),
            fs::read(blobs.path(d)).unwrap()
        );
    }

    // Pushing again uploads nothing.
    let report = push_content(&client, &blobs, "ci/app", Some("1.0"), &img.manifest).unwrap();
    assert_eq!(
        (report.uploaded, report.mounted, report.existing),
        (0, 0, 3)
    );

    // Another repository of the same registry: mounted, not uploaded.
    let report = push_content(&client, &blobs, "ci/other", Some("latest"), &img.manifest).unwrap();
    assert_eq!(
        (report.uploaded, report.mounted, report.existing),
        (0, 3, 0)
    );
    assert_eq!(
        Digest::of_bytes(&reg.skopeo_raw("ci/other:latest")),
        img.manifest
    );

    // A fresh store pulls the pushed image back.
    let fresh_dir = tempfile::tempdir().unwrap();
    let fresh = BlobStore::open(fresh_dir.path()).unwrap();
    let pulled = pull_content(&client, &fresh, "ci/other", "latest", &host_platform()).unwrap();
    assert_eq!(pulled.manifest_digest, img.manifest);
    assert!(img.layers.iter().all(|d| fresh.contains(d)));
}

#[test]
fn login_checks_password_before_saving() {
    if !tools_available() {
        return;
    }
    let reg = Registry::start(true);
    let cfg_dir = tempfile::tempdir().unwrap();
    let cfg = cfg_dir.path().join("docker/config.json");
    let opts = ClientOptions {
        docker_config: Some(cfg.clone()),
        retry: quick_retries(),
        ..ClientOptions::default()
    };

    let err = login(&reg.host(), &Credentials::new(USER, "wrong"), &opts).unwrap_err();
    assert!(matches!(err, Error::Unauthorized { .. }), "{err}");
    assert!(err.to_string().contains(&reg.host()), "{err}");
    assert!(!cfg.exists(), "a failed login wrote {}", cfg.display());

    // Other tools' keys survive a login.
    fs::create_dir_all(cfg.parent().unwrap()).unwrap();
    fs::write(&cfg, r#"{"detachKeys":"ctrl-x"}"#).unwrap();
    login(&reg.host(), &Credentials::new(USER, PASSWORD), &opts).unwrap();
    let meta = fs::metadata(&cfg).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let saved: serde_json::Value = serde_json::from_slice(&fs::read(&cfg).unwrap()).unwrap();
    assert_eq!(saved["detachKeys"], "ctrl-x");
    assert!(saved["auths"][reg.host()]["auth"].is_string());

    // The saved login is what a client uses.
    RegistryClient::new(&reg.host(), &opts)
        .unwrap()
        .ping()
        .unwrap();

    assert!(logout(&reg.host(), &opts).unwrap());
    let saved: serde_json::Value = serde_json::from_slice(&fs::read(&cfg).unwrap()).unwrap();
    assert!(saved["auths"].get(reg.host()).is_none());
    assert_eq!(saved["detachKeys"], "ctrl-x");
    let err = RegistryClient::new(&reg.host(), &opts)
        .unwrap()
        .ping()
        .unwrap_err();
    assert!(matches!(err, Error::Unauthorized { .. }), "{err}");
}

#[test]
fn tampered_blob_is_rejected_and_not_stored() {
    if !tools_available() {
        return;
    }
    let reg = Registry::start(false);
    let layout = Layout::new();
    let img = layout.image(&host_arch(), &[("f", noise(10_000, 3))]);
    layout.tag("t", &img);
    reg.skopeo_push(layout.path(), "t", "bad/img:t");

    // Flip bytes of the layer in the registry's storage (same length).
    let data = reg.blob_data_path(&img.layers[0]);
    let mut bytes = fs::read(&data).unwrap();
    for b in &mut bytes[100..110] {
        *b ^= 0xff;
    }
    fs::write(&data, &bytes).unwrap();

    let (_cfg, opts) = options_anonymous();
    let client = RegistryClient::new(&reg.host(), &opts).unwrap();
    let store_dir = tempfile::tempdir().unwrap();
    let blobs = BlobStore::open(store_dir.path()).unwrap();
    let err = pull_content(&client, &blobs, "bad/img", "t", &host_platform()).unwrap_err();
    match &err {
        Error::DigestMismatch {
            registry, expected, ..
        } => {
            assert_eq!(registry, &reg.host());
            assert_eq!(expected, &img.layers[0]);
        }
        other => panic!("expected a digest mismatch, got {other}"),
    }
    assert!(!blobs.contains(&img.layers[0]));
    // Nothing under the bad bytes' digest either, no manifest, no temp files.
    assert!(!blobs.contains(&Digest::of_bytes(&bytes)));
    assert!(!blobs.contains(&img.manifest));
    let leftovers: Vec<_> = fs::read_dir(blobs.tmp_dir()).unwrap().collect();
    assert!(leftovers.is_empty(), "temp files left: {leftovers:?}");
}

#[test]
fn registry_gone_mid_pull_then_resume() {
    if !tools_available() {
        return;
    }
    let reg = Registry::start(false);
    let layout = Layout::new();
    let img = layout.image(
        &host_arch(),
        &[("small", b"s".to_vec()), ("big", noise(2_000_000, 9))],
    );
    layout.tag("t", &img);
    reg.skopeo_push(layout.path(), "t", "flaky/img:t");

    let proxy = Proxy::start(reg.port);
    // Enough for the manifest, the config and the small layer, not the big one.
    proxy.limit_download(200_000);
    let (_cfg, opts) = options_anonymous();
    let client = RegistryClient::new(&proxy.host(), &opts).unwrap();
    let store_dir = tempfile::tempdir().unwrap();
    let blobs = BlobStore::open(store_dir.path()).unwrap();
    let err = pull_content(&client, &blobs, "flaky/img", "t", &host_platform()).unwrap_err();
    match &err {
        Error::Transport {
            registry, attempts, ..
        } => {
            assert_eq!(registry, &proxy.host());
            assert_eq!(*attempts, quick_retries().attempts);
        }
        other => panic!("expected a transport error, got {other}"),
    }
    assert!(proxy.is_dead());
    assert!(!blobs.contains(&img.layers[1]), "truncated blob stored");
    assert!(
        !blobs.contains(&img.manifest),
        "manifest stored before its blobs"
    );
    let present: Vec<Digest> = [img.config, img.layers[0]]
        .into_iter()
        .filter(|d| blobs.contains(d))
        .collect();

    // The registry is back: the pull completes, fetching only what is missing.
    proxy.revive();
    let pulled = pull_content(&client, &blobs, "flaky/img", "t", &host_platform()).unwrap();
    assert_eq!(pulled.manifest_digest, img.manifest);
    assert_eq!(pulled.fetched_blobs, 3 - present.len());
    assert!(blobs.contains(&img.layers[1]));
}

#[test]
fn registry_gone_mid_push_then_resume() {
    if !tools_available() {
        return;
    }
    let reg = Registry::start(true);
    let layout = Layout::new();
    let img = layout.image(
        &host_arch(),
        &[("small", b"s".to_vec()), ("big", noise(2_000_000, 11))],
    );
    let store_dir = tempfile::tempdir().unwrap();
    let blobs = BlobStore::open(store_dir.path()).unwrap();
    for d in [img.manifest, img.config].iter().chain(&img.layers) {
        let bytes = fs::read(layout.path().join("blobs/sha256").join(d.hex())).unwrap();
        blobs.put_bytes(&bytes).unwrap();
    }

    let proxy = Proxy::start(reg.port);
    proxy.limit_upload(500_000);
    let (_cfg, opts) = options_with_login(&proxy.host());
    let client = RegistryClient::new(&proxy.host(), &opts).unwrap();
    let err = push_content(&client, &blobs, "flaky/push", Some("t"), &img.manifest).unwrap_err();
    assert!(
        matches!(&err, Error::Transport { registry, .. } if registry == &proxy.host()),
        "{err}"
    );
    assert!(proxy.is_dead());
    assert!(
        !reg.has_blob("flaky/push", &img.layers[1]),
        "the big layer cannot have made it"
    );
    let kept = [img.config, img.layers[0]]
        .iter()
        .filter(|d| reg.has_blob("flaky/push", d))
        .count();

    // The registry is back: blobs that made it are not sent again.
    proxy.revive();
    let report = push_content(&client, &blobs, "flaky/push", Some("t"), &img.manifest).unwrap();
    assert_eq!((report.existing, report.uploaded), (kept, 3 - kept));
    assert_eq!(
        Digest::of_bytes(&reg.skopeo_raw("flaky/push:t")),
        img.manifest
    );
}

#[test]
fn registry_down_gives_bounded_retries_and_clear_error() {
    if !tools_available() {
        return;
    }
    let reg = Registry::start(false);
    let host = reg.host();
    reg.stop();
    let (_cfg, opts) = options_anonymous();
    let client = RegistryClient::new(&host, &opts).unwrap();
    let store_dir = tempfile::tempdir().unwrap();
    let blobs = BlobStore::open(store_dir.path()).unwrap();
    let err = pull_content(&client, &blobs, "any/img", "t", &host_platform()).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, Error::Transport { attempts: 3, .. }),
        "expected 3 attempts: {msg}"
    );
    assert!(msg.contains(&host) && msg.contains("any/img"), "{msg}");
}

#[test]
fn pull_into_store_then_push_from_it() {
    if !tools_available() {
        return;
    }
    let reg = Registry::start(true);
    let layout = Layout::new();
    let img = layout.image(&host_arch(), &[("etc/motd", b"hi\n".to_vec())]);
    layout.tag("1", &img);
    reg.skopeo_push(layout.path(), "1", "lib/base:1");

    let (_cfg, opts) = options_with_login(&reg.host());
    let store_dir = tempfile::tempdir().unwrap();
    let store = Store::open(store_dir.path()).unwrap();
    let name = format!("{}/lib/base:1", reg.host());
    let image = pull(
        &store,
        &Reference::parse(&name).unwrap(),
        &host_platform(),
        &opts,
    )
    .unwrap();
    // The registry's manifest digest is the store's, and the tag is there.
    assert_eq!(image.manifest_digest, img.manifest);
    assert_eq!(image.config_digest, img.config);
    assert_eq!(image.layers().len(), 1);
    let found = store
        .resolve(&name)
        .unwrap()
        .expect("pulled image is tagged");
    assert_eq!(found.manifest_digest, img.manifest);

    // Pull by digest: listed, found by digest.
    let by_digest = format!("{}/lib/base@{}", reg.host(), img.manifest);
    pull(
        &store,
        &Reference::parse(&by_digest).unwrap(),
        &host_platform(),
        &opts,
    )
    .unwrap();
    assert!(store.resolve(&by_digest).unwrap().is_some());

    // Push it under another name of the same registry: blobs are mounted.
    let dest = Reference::parse(&format!("{}/lib/copy:2", reg.host())).unwrap();
    let report = push(&store, &image, &dest, &opts).unwrap();
    assert_eq!(report.digest, img.manifest);
    assert_eq!(
        (report.uploaded, report.mounted, report.existing),
        (0, 2, 0)
    );
    assert_eq!(
        Digest::of_bytes(&reg.skopeo_raw("lib/copy:2")),
        img.manifest
    );
}
