//! Test support for registry tests: a real `docker-registry` started through
//! `testdata/registry/start.sh` (killed on drop), OCI image layouts made
//! from scratch for skopeo to push, and a loopback TCP proxy that can cut
//! connections after a byte budget (a registry that stops mid-transfer).

#![allow(dead_code)]

use std::cell::RefCell;
use std::fs;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rbuild_cache::Digest;
use rbuild_image::registry::{ClientOptions, RetryPolicy};

pub const USER: &str = "rbuilder";
pub const PASSWORD: &str = "correct horse";

/// Whether the registry tools are installed; tests skip (saying so) only
/// outside CI when they are not.
pub fn tools_available() -> bool {
    let ok = Path::new("/usr/bin/docker-registry").exists()
        && which("skopeo")
        && which("htpasswd")
        && which("curl");
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "docker-registry, skopeo, htpasswd and curl are required in CI"
        );
        eprintln!("skipping: docker-registry/skopeo/htpasswd/curl not installed");
    }
    ok
}

fn which(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// A running registry; killed when dropped.
pub struct Registry {
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub auth: bool,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/registry/start.sh")
}

impl Registry {
    /// Starts a registry on a free loopback port, with htpasswd auth
    /// (`USER`/`PASSWORD`) when `auth`.
    pub fn start(auth: bool) -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let port = run_start(dir.path(), auth, None);
        Registry { dir, port, auth }
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Stops the registry process (storage is kept).
    pub fn stop(&self) {
        if let Ok(pid) = fs::read_to_string(self.dir.path().join("registry.pid")) {
            let pid = pid.trim();
            let _ = Command::new("kill").arg(pid).status();
            // Wait for the process to go so the port is free for a restart.
            let _ = Command::new("sh")
                .arg("-c")
                .arg(format!(
                    "while kill -0 {pid} 2>/dev/null; do sleep 0.05; done"
                ))
                .status();
            let _ = fs::remove_file(self.dir.path().join("registry.pid"));
        }
    }

    /// Starts it again on the same port and storage.
    pub fn restart(&self) {
        run_start(self.dir.path(), self.auth, Some(self.port));
    }

    /// The registry's on-disk file for a blob (to tamper with it).
    pub fn blob_data_path(&self, digest: &Digest) -> PathBuf {
        let hex = digest.hex();
        self.dir
            .path()
            .join("storage/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(&hex)
            .join("data")
    }

    /// Whether `repo` has the blob, asked of the registry directly.
    pub fn has_blob(&self, repo: &str, digest: &Digest) -> bool {
        let mut args = vec![
            "-s".to_string(),
            "-o".into(),
            "/dev/null".into(),
            "-w".into(),
            "%{http_code}".into(),
            "-I".into(),
        ];
        if self.auth {
            args.push("-u".into());
            args.push(format!("{USER}:{PASSWORD}"));
        }
        args.push(format!("http://{}/v2/{repo}/blobs/{digest}", self.host()));
        let code = String::from_utf8(run("curl", &args)).unwrap();
        match code.trim() {
            "200" => true,
            "404" => false,
            other => panic!("HEAD blob: HTTP {other}"),
        }
    }

    /// skopeo credentials flags for this registry.
    pub fn creds_args(&self, flag: &str) -> Vec<String> {
        if self.auth {
            vec![format!("--{flag}-creds"), format!("{USER}:{PASSWORD}")]
        } else {
            vec![]
        }
    }

    /// Copies an OCI layout image into `repo:tag` with skopeo (`--all` keeps
    /// every platform of an index).
    pub fn skopeo_push(&self, layout: &Path, tag_in_layout: &str, repo_tag: &str) {
        let mut args = vec![
            "copy".to_string(),
            "--all".into(),
            "--dest-tls-verify=false".into(),
        ];
        args.extend(self.creds_args("dest"));
        args.push(format!("oci:{}:{tag_in_layout}", layout.display()));
        args.push(format!("docker://{}/{repo_tag}", self.host()));
        run("skopeo", &args);
    }

    /// `skopeo inspect --raw` of `repo_tag`: the manifest bytes as served.
    pub fn skopeo_raw(&self, repo_tag: &str) -> Vec<u8> {
        let mut args = vec![
            "inspect".to_string(),
            "--raw".into(),
            "--tls-verify=false".into(),
        ];
        args.extend(self.creds_args(""));
        // `--creds` is the flag name for inspect.
        if self.auth {
            args.truncate(3);
            args.push("--creds".into());
            args.push(format!("{USER}:{PASSWORD}"));
        }
        args.push(format!("docker://{}/{repo_tag}", self.host()));
        run("skopeo", &args)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

fn run_start(dir: &Path, auth: bool, port: Option<u16>) -> u16 {
    let mut cmd = Command::new("bash");
    cmd.arg(script()).arg(dir);
    if auth {
        cmd.args(["--user", USER, "--password", PASSWORD]);
    }
    if let Some(p) = port {
        cmd.args(["--port", &p.to_string()]);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "start.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// Runs a command, panicking with its output on failure; returns stdout.
pub fn run(program: &str, args: &[String]) -> Vec<u8> {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A docker config dir holding `USER`/`PASSWORD` for `host`, and options
/// using it with quick retries.
pub fn options_with_login(host: &str) -> (tempfile::TempDir, ClientOptions) {
    let dir = tempfile::tempdir().unwrap();
    let auth = base64_of(format!("{USER}:{PASSWORD}").as_bytes());
    fs::write(
        dir.path().join("config.json"),
        format!(r#"{{"auths":{{"{host}":{{"auth":"{auth}"}}}}}}"#),
    )
    .unwrap();
    let opts = ClientOptions {
        docker_config: Some(dir.path().join("config.json")),
        retry: quick_retries(),
        ..ClientOptions::default()
    };
    (dir, opts)
}

/// Options with an empty docker config.
pub fn options_anonymous() -> (tempfile::TempDir, ClientOptions) {
    let dir = tempfile::tempdir().unwrap();
    let opts = ClientOptions {
        docker_config: Some(dir.path().join("config.json")),
        retry: quick_retries(),
        ..ClientOptions::default()
    };
    (dir, opts)
}

pub fn quick_retries() -> RetryPolicy {
    RetryPolicy {
        attempts: 3,
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(40),
    }
}

/// Standard base64, as docker's config.json stores `user:password`.
pub fn base64_of(data: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// One image in an OCI layout made by [`Layout`].
#[derive(Debug, Clone)]
pub struct BuiltImage {
    pub manifest: Digest,
    pub config: Digest,
    pub layers: Vec<Digest>,
}

/// An OCI image layout directory written from scratch.
pub struct Layout {
    pub dir: tempfile::TempDir,
    index: RefCell<Vec<String>>,
}

impl Layout {
    pub fn new() -> Layout {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("blobs/sha256")).unwrap();
        fs::write(
            dir.path().join("oci-layout"),
            r#"{"imageLayoutVersion":"1.0.0"}"#,
        )
        .unwrap();
        Layout {
            dir,
            index: RefCell::new(Vec::new()),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    fn put(&self, data: &[u8]) -> Digest {
        let d = Digest::of_bytes(data);
        fs::write(self.dir.path().join("blobs/sha256").join(d.hex()), data).unwrap();
        d
    }

    /// An image of `arch` whose layers hold the given files (name, bytes),
    /// one layer per entry, gzip-compressed.
    pub fn image(&self, arch: &str, files: &[(&str, Vec<u8>)]) -> BuiltImage {
        let mut layers = Vec::new();
        let mut diff_ids = Vec::new();
        let mut layer_json = Vec::new();
        for (name, data) in files {
            let mut tar = tar::Builder::new(Vec::new());
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_mtime(0);
            h.set_cksum();
            tar.append_data(&mut h, name, &data[..]).unwrap();
            let raw = tar.into_inner().unwrap();
            diff_ids.push(format!("\"{}\"", Digest::of_bytes(&raw)));
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(&raw).unwrap();
            let gz = gz.finish().unwrap();
            let d = self.put(&gz);
            layer_json.push(format!(
                r#"{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{d}","size":{}}}"#,
                gz.len()
            ));
            layers.push(d);
        }
        let config = format!(
            r#"{{"architecture":"{arch}","os":"linux","config":{{"Env":["PATH=/bin"]}},"rootfs":{{"type":"layers","diff_ids":[{}]}}}}"#,
            diff_ids.join(",")
        );
        let config_digest = self.put(config.as_bytes());
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config_digest}","size":{}}},"layers":[{}]}}"#,
            config.len(),
            layer_json.join(",")
        );
        let manifest_digest = self.put(manifest.as_bytes());
        BuiltImage {
            manifest: manifest_digest,
            config: config_digest,
            layers,
        }
    }

    /// Tags a single image in index.json.
    pub fn tag(&self, tag: &str, image: &BuiltImage) {
        let size = fs::metadata(
            self.dir
                .path()
                .join("blobs/sha256")
                .join(image.manifest.hex()),
        )
        .unwrap()
        .len();
        self.add_index_entry(
            tag,
            "application/vnd.oci.image.manifest.v1+json",
            &image.manifest,
            size,
        );
    }

    /// Tags an index of several (arch, image) pairs; returns its digest.
    pub fn tag_index(&self, tag: &str, images: &[(&str, &BuiltImage)]) -> Digest {
        let entries: Vec<String> = images
            .iter()
            .map(|(arch, img)| {
                let size = fs::metadata(self.dir.path().join("blobs/sha256").join(img.manifest.hex()))
                    .unwrap()
                    .len();
                let (arch, variant) = match arch.split_once('/') {
                    Some((a, v)) => (a, format!(r#","variant":"{v}""#)),
                    None => (*arch, String::new()),
                };
                format!(
                    r#"{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{}","size":{size},"platform":{{"architecture":"{arch}","os":"linux"{variant}}}}}"#,
                    img.manifest
                )
            })
            .collect();
        let index = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{}]}}"#,
            entries.join(",")
        );
        let d = self.put(index.as_bytes());
        self.add_index_entry(
            tag,
            "application/vnd.oci.image.index.v1+json",
            &d,
            index.len() as u64,
        );
        d
    }

    fn add_index_entry(&self, tag: &str, media_type: &str, digest: &Digest, size: u64) {
        let mut index = self.index.borrow_mut();
        index.push(format!(
            r#"{{"mediaType":"{media_type}","digest":"{digest}","size":{size},"annotations":{{"org.opencontainers.image.ref.name":"{tag}"}}}}"#
        ));
        fs::write(
            self.dir.path().join("index.json"),
            format!(r#"{{"schemaVersion":2,"manifests":[{}]}}"#, index.join(",")),
        )
        .unwrap();
    }
}

/// Deterministic incompressible bytes (xorshift), so gzip keeps the size.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// The host's architecture in OCI names.
pub fn host_arch() -> String {
    rbuild_image::registry::Platform::host().architecture
}

/// A loopback TCP proxy to `target`. Each direction has a byte budget; when
/// one runs out every connection is cut and new ones are closed at once,
/// as if the registry had gone away, until [`Proxy::revive`].
pub struct Proxy {
    pub port: u16,
    state: Arc<ProxyState>,
}

struct ProxyState {
    target: u16,
    /// Bytes left server→client and client→server; negative = unlimited.
    down_budget: AtomicI64,
    up_budget: AtomicI64,
    dead: AtomicBool,
    conns: Mutex<Vec<TcpStream>>,
    stop: AtomicBool,
}

impl Proxy {
    pub fn start(target: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(ProxyState {
            target,
            down_budget: AtomicI64::new(-1),
            up_budget: AtomicI64::new(-1),
            dead: AtomicBool::new(false),
            conns: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
        });
        let st = state.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = conn else { continue };
                if st.dead.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", st.target)) else {
                    continue;
                };
                {
                    let mut conns = st.conns.lock().unwrap();
                    conns.push(client.try_clone().unwrap());
                    conns.push(server.try_clone().unwrap());
                }
                pump(
                    st.clone(),
                    client.try_clone().unwrap(),
                    server.try_clone().unwrap(),
                    true,
                );
                pump(st.clone(), server, client, false);
            }
        });
        Proxy { port, state }
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Cut everything after `bytes` more bytes from the server.
    pub fn limit_download(&self, bytes: i64) {
        self.state.down_budget.store(bytes, Ordering::SeqCst);
    }

    /// Cut everything after `bytes` more bytes from the client.
    pub fn limit_upload(&self, bytes: i64) {
        self.state.up_budget.store(bytes, Ordering::SeqCst);
    }

    /// Whether a budget ran out and the proxy is refusing.
    pub fn is_dead(&self) -> bool {
        self.state.dead.load(Ordering::SeqCst)
    }

    /// Back to forwarding without limits.
    pub fn revive(&self) {
        self.state.down_budget.store(-1, Ordering::SeqCst);
        self.state.up_budget.store(-1, Ordering::SeqCst);
        self.state.dead.store(false, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        self.state.kill();
        // Wake the accept loop so its thread ends.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

impl ProxyState {
    fn kill(&self) {
        self.dead.store(true, Ordering::SeqCst);
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }
}

fn pump(st: Arc<ProxyState>, mut from: TcpStream, mut to: TcpStream, upstream: bool) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let budget = if upstream {
                &st.up_budget
            } else {
                &st.down_budget
            };
            let mut n_allowed = n;
            let left = budget.load(Ordering::SeqCst);
            if left >= 0 {
                n_allowed = n.min(left as usize);
                budget.fetch_sub(n_allowed as i64, Ordering::SeqCst);
            }
            if n_allowed > 0 && to.write_all(&buf[..n_allowed]).is_err() {
                break;
            }
            if n_allowed < n || budget.load(Ordering::SeqCst) == 0 {
                st.kill();
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}
