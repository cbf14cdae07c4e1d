//! End-to-end `rbuild login`, `push`, `pull` and `logout` against a real
//! `docker-registry` on 127.0.0.1 with htpasswd auth, checked with skopeo.

mod registry_support;

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use registry_support::{available, sha256, Registry, PASSWORD, USER};

fn rbuild(docker_config: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_rbuild"))
        .args(args)
        .env("DOCKER_CONFIG", docker_config)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(s) = stdin {
        input.write_all(s.as_bytes()).unwrap();
    }
    drop(input);
    child.wait_with_output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn rootfs_tar(dir: &Path) -> PathBuf {
    let path = dir.join("rootfs.tar");
    let mut b = tar::Builder::new(fs::File::create(&path).unwrap());
    let data = b"pushed by rbuild\n";
    let mut h = tar::Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_mtime(0);
    h.set_cksum();
    b.append_data(&mut h, "etc/motd", &data[..]).unwrap();
    b.finish().unwrap();
    path
}

#[test]
fn login_push_inspect_pull_logout() {
    if !available() {
        return;
    }
    let reg = Registry::start();
    let work = tempfile::tempdir().unwrap();
    let cfg = work.path().join("docker");
    let store1 = work.path().join("store1");
    let store2 = work.path().join("store2");
    let name = format!("{}/e2e/app:1", reg.host());

    let tar = rootfs_tar(work.path());
    let out = rbuild(
        &cfg,
        &[
            "--root",
            store1.to_str().unwrap(),
            "import",
            tar.to_str().unwrap(),
            &name,
        ],
        None,
    );
    assert!(out.status.success(), "import: {}", text(&out.stderr));

    // Wrong password: fails, names the registry, saves nothing.
    let out = rbuild(
        &cfg,
        &["login", &reg.host(), "-u", USER, "-p", "wrong"],
        None,
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains(&reg.host()),
        "{}",
        text(&out.stderr)
    );
    assert!(!cfg.join("config.json").exists());

    // Pushing without a login is refused by the registry.
    let out = rbuild(
        &cfg,
        &["--root", store1.to_str().unwrap(), "push", &name],
        None,
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("unauthorized"),
        "{}",
        text(&out.stderr)
    );

    let out = rbuild(
        &cfg,
        &["login", &reg.host(), "-u", USER, "--password-stdin"],
        Some(&format!("{PASSWORD}\n")),
    );
    assert!(out.status.success(), "login: {}", text(&out.stderr));
    let mode = fs::metadata(cfg.join("config.json"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);

    let out = rbuild(
        &cfg,
        &["--root", store1.to_str().unwrap(), "push", "-q", &name],
        None,
    );
    assert!(out.status.success(), "push: {}", text(&out.stderr));
    let digest = text(&out.stdout).trim().to_string();
    assert!(digest.starts_with("sha256:"), "{digest}");

    // skopeo reads exactly what was pushed.
    let raw = Command::new("skopeo")
        .args([
            "inspect",
            "--raw",
            "--tls-verify=false",
            "--creds",
            &format!("{USER}:{PASSWORD}"),
        ])
        .arg(format!("docker://{name}"))
        .output()
        .unwrap();
    assert!(raw.status.success(), "{}", text(&raw.stderr));
    assert_eq!(sha256(&raw.stdout), digest);

    // A second, empty store pulls it back under the same digest.
    let out = rbuild(
        &cfg,
        &["--root", store2.to_str().unwrap(), "pull", "-q", &name],
        None,
    );
    assert!(out.status.success(), "pull: {}", text(&out.stderr));
    let hex = digest.trim_start_matches("sha256:");
    assert!(store2.join("blobs/sha256").join(hex).is_file());
    let index = fs::read_to_string(store2.join("index.json")).unwrap();
    assert!(index.contains(&name) && index.contains(&digest), "{index}");

    let out = rbuild(&cfg, &["logout", &reg.host()], None);
    assert!(out.status.success(), "logout: {}", text(&out.stderr));
    assert!(!fs::read_to_string(cfg.join("config.json"))
        .unwrap()
        .contains(&reg.host()));
}
