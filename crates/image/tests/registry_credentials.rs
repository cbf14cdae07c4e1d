//! Docker credential helpers (`credHelpers` / `credsStore`): rbuild runs
//! `docker-credential-<name> get|store|erase` with docker's protocol.
//!
//! Alone in its own test binary because it puts a fake helper on `PATH`.

use std::fs;
use std::os::unix::fs::PermissionsExt;

use rbuild_image::registry::{Credentials, DockerConfig};

#[test]
fn credential_helpers_get_store_erase() {
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    fs::create_dir(&bin).unwrap();
    // A helper that keeps one entry in a file, as real ones do in a keychain,
    // and logs the server URL it was asked about.
    let store = dir.path().join("store.json");
    let log = dir.path().join("asked");
    let script = format!(
        "#!/bin/sh\nset -e\ncase \"$1\" in\n\
         get) read url || true; echo \"$url\" >> {log}; if [ -f {s} ]; then cat {s}; else echo 'credentials not found in native keychain'; exit 1; fi;;\n\
         store) cat > {s};;\n\
         erase) rm -f {s};;\nesac\n",
        s = store.display(),
        log = log.display()
    );
    let helper = bin.join("docker-credential-rbtest");
    fs::write(&helper, script).unwrap();
    fs::set_permissions(&helper, fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    // The only test in this binary, so nothing reads PATH concurrently.
    std::env::set_var("PATH", path);

    let cfg_path = dir.path().join("config.json");
    fs::write(
        &cfg_path,
        r#"{"credHelpers":{"127.0.0.1:9":"rbtest"},"auths":{"127.0.0.1:8":{"auth":"YTpi"}}}"#,
    )
    .unwrap();
    let mut cfg = DockerConfig::load(&cfg_path).unwrap();
    assert_eq!(cfg.credentials("127.0.0.1:9").unwrap(), None);
    cfg.store_credentials("127.0.0.1:9", &Credentials::new("hu", "hp"))
        .unwrap();
    assert_eq!(
        cfg.credentials("127.0.0.1:9").unwrap(),
        Some(Credentials::new("hu", "hp"))
    );
    assert_eq!(
        fs::read_to_string(&log).unwrap().lines().last(),
        Some("127.0.0.1:9")
    );
    let saved = fs::read_to_string(&cfg_path).unwrap();
    assert!(!saved.contains("hp"), "secret leaked into config: {saved}");
    // Registries without a helper still use auths.
    assert_eq!(
        cfg.credentials("127.0.0.1:8").unwrap(),
        Some(Credentials::new("a", "b"))
    );

    assert!(cfg.erase_credentials("127.0.0.1:9").unwrap());
    assert_eq!(cfg.credentials("127.0.0.1:9").unwrap(), None);

    // credsStore applies to every registry without its own helper.
    fs::write(&cfg_path, r#"{"credsStore":"rbtest"}"#).unwrap();
    let mut cfg = DockerConfig::load(&cfg_path).unwrap();
    cfg.store_credentials("docker.io", &Credentials::new("hub", "pw"))
        .unwrap();
    assert_eq!(
        cfg.credentials("docker.io").unwrap(),
        Some(Credentials::new("hub", "pw"))
    );
    // Docker Hub is asked for by its historical server URL.
    assert_eq!(
        fs::read_to_string(&log).unwrap().lines().last(),
        Some("https://index.docker.io/v1/")
    );

    // A helper that is not installed is a clear error, not "no credentials".
    fs::write(&cfg_path, r#"{"credsStore":"missing-helper"}"#).unwrap();
    let err = DockerConfig::load(&cfg_path)
        .unwrap()
        .credentials("r.example")
        .unwrap_err();
    assert!(
        err.to_string().contains("docker-credential-missing-helper"),
        "{err}"
    );
}
