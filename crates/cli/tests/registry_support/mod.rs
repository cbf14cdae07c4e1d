//! A real `docker-registry` for the end-to-end registry tests: started by
//! testdata/registry/start.sh on a free 127.0.0.1 port with htpasswd auth,
//! killed on drop; plus the availability check every such test starts with.

// Each test binary that includes this module uses a different part of it.
#![allow(dead_code)]

use std::fs;
use std::path::Path;
use std::process::Command;

/// The user the registry accepts.
pub const USER: &str = "e2e";
/// Its password.
pub const PASSWORD: &str = "e2e-secret";

/// A running registry.
pub struct Registry {
    dir: tempfile::TempDir,
    port: u16,
}

impl Registry {
    /// Starts a registry that requires `USER`/`PASSWORD`.
    pub fn start() -> Registry {
        let dir = tempfile::tempdir().expect("temp dir");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/registry/start.sh");
        let out = Command::new("bash")
            .arg(script)
            .arg(dir.path())
            .args(["--user", USER, "--password", PASSWORD])
            .output()
            .expect("running start.sh");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("start.sh prints the port");
        Registry { dir, port }
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        if let Ok(pid) = fs::read_to_string(self.dir.path().join("registry.pid")) {
            let _ = Command::new("kill").arg(pid.trim()).status();
        }
    }
}

/// Whether docker-registry and skopeo are installed. Without them a test
/// is skipped with a message, except in CI, where they are required.
pub fn available() -> bool {
    let ok = Path::new("/usr/bin/docker-registry").exists()
        && Command::new("skopeo").arg("--version").output().is_ok();
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "docker-registry and skopeo are required in CI"
        );
        eprintln!("skipping: docker-registry or skopeo not installed");
    }
    ok
}

/// A docker config directory holding `user:password` for `host`, for
/// `DOCKER_CONFIG`.
pub fn docker_config(dir: &Path, host: &str, user: &str, password: &str) {
    fs::create_dir_all(dir).expect("config dir");
    let auth = pipe("base64", &["-w0"], format!("{user}:{password}").as_bytes());
    fs::write(
        dir.join("config.json"),
        format!(r#"{{"auths":{{"{host}":{{"auth":"{auth}"}}}}}}"#),
    )
    .expect("writing config.json");
}

/// `sha256:HEX` of some bytes (via sha256sum, an independent hasher).
pub fn sha256(data: &[u8]) -> String {
    let text = pipe("sha256sum", &[], data);
    format!("sha256:{}", text.split_whitespace().next().unwrap_or(""))
}

/// Runs `program` with `input` on stdin; returns its stdout.
fn pipe(program: &str, args: &[&str], input: &[u8]) -> String {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input)
        .expect("writing stdin");
    let out = child.wait_with_output().expect("output");
    assert!(out.status.success(), "{program} failed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}
