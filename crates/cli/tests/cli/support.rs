//! Shared helpers for the end-to-end tests: a temporary store and context per
//! test, running the real `rbuild` binary, reading file trees, and driving the
//! independent checkers (skopeo, umoci).

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

/// One test's world: a store root and a build context in a temp dir.
pub struct World {
    pub dir: tempfile::TempDir,
}

impl World {
    pub fn new() -> World {
        let dir = tempfile::Builder::new()
            .prefix("rbuild-e2e-")
            .tempdir()
            .expect("temp dir");
        fs::create_dir_all(dir.path().join("ctx")).expect("ctx dir");
        World { dir }
    }

    pub fn root(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    pub fn ctx(&self) -> PathBuf {
        self.dir.path().join("ctx")
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Writes a file in the context, creating parent directories.
    pub fn write(&self, rel: &str, contents: &str) -> PathBuf {
        let p = self.ctx().join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, contents).unwrap();
        p
    }

    pub fn dockerfile(&self, text: &str) {
        self.write("Dockerfile", text);
    }

    /// `rbuild --root STORE ARGS...` (not yet run).
    pub fn cmd(&self, args: &[&str]) -> Command {
        self.cmd_root(&self.root(), args)
    }

    pub fn cmd_root(&self, root: &Path, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_rbuild"));
        c.arg("--root").arg(root).args(args);
        c.env_remove("SOURCE_DATE_EPOCH").env_remove("RBUILD_ROOT");
        c
    }

    /// Runs rbuild and requires success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        run_ok(self.cmd(args))
    }

    /// Runs rbuild and requires failure; returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        run_fails(self.cmd(args))
    }

    /// Builds the context with plain progress and `-t TAG`; returns the
    /// image ID printed by `-q`.
    pub fn build(&self, tag: &str) -> String {
        let ctx = self.ctx();
        self.ok(&["build", "-q", "-t", tag, ctx.to_str().unwrap()])
            .trim()
            .to_string()
    }

    /// `rbuild inspect NAME`'s first element.
    pub fn inspect(&self, name: &str) -> Value {
        let out = self.ok(&["inspect", name]);
        let v: Value = serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("inspect output is not JSON ({e}): {out}"));
        v[0].clone()
    }

    /// Imports the busybox rootfs from testdata as NAME.
    pub fn import_busybox(&self, name: &str) -> String {
        let tar = self.path("busybox.tar");
        if !tar.exists() {
            let script =
                Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/busybox-rootfs.sh");
            run_ok({
                let mut c = Command::new("bash");
                c.arg(script).arg(&tar);
                c
            });
        }
        self.ok(&["import", tar.to_str().unwrap(), name])
            .trim()
            .to_string()
    }
}

pub fn run(mut c: Command) -> Output {
    c.output().unwrap_or_else(|e| panic!("running {c:?}: {e}"))
}

pub fn run_ok(c: Command) -> String {
    let desc = format!("{c:?}");
    let out = run(c);
    assert!(
        out.status.success(),
        "{desc} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 stdout")
}

pub fn run_fails(c: Command) -> String {
    let desc = format!("{c:?}");
    let out = run(c);
    assert!(
        !out.status.success(),
        "{desc} succeeded but should fail:\nstdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(1), "exit code of {desc}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A tool invocation that must succeed (skopeo, umoci, tar).
pub fn tool(program: &str, args: &[&str]) -> String {
    let mut c = Command::new(program);
    c.args(args);
    run_ok(c)
}

pub fn skopeo_inspect(transport_ref: &str) -> Value {
    let out = tool("skopeo", &["inspect", "--raw", transport_ref]);
    let raw: Value = serde_json::from_str(&out).expect("skopeo --raw JSON");
    let out = tool("skopeo", &["inspect", transport_ref]);
    let mut v: Value = serde_json::from_str(&out).expect("skopeo JSON");
    v["Raw"] = raw;
    v
}

/// `umoci unpack --image DIR:TAG BUNDLE`; returns BUNDLE/rootfs.
pub fn umoci_unpack(oci_dir: &Path, tag: &str, bundle: &Path) -> PathBuf {
    let image = format!("{}:{tag}", oci_dir.display());
    tool(
        "umoci",
        &["unpack", "--image", &image, bundle.to_str().unwrap()],
    );
    bundle.join("rootfs")
}

/// One entry of a file tree, for comparisons.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Dir { mode: u32 },
    File { mode: u32, content: String },
    Symlink { target: String },
}

pub fn dir(mode: u32) -> Node {
    Node::Dir { mode }
}

pub fn file(mode: u32, content: &str) -> Node {
    Node::File {
        mode,
        content: content.to_string(),
    }
}

pub fn symlink(target: &str) -> Node {
    Node::Symlink {
        target: target.to_string(),
    }
}

/// The tree under `root` (not including it): relative path -> node, with
/// permission bits (07777) and, for files, contents as text.
pub fn tree(root: &Path) -> BTreeMap<String, Node> {
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn walk(root: &Path, at: &Path, out: &mut BTreeMap<String, Node>) {
    let mut entries: Vec<_> = fs::read_dir(at).unwrap().map(|e| e.unwrap()).collect();
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let p = e.path();
        let rel = p.strip_prefix(root).unwrap().to_str().unwrap().to_string();
        let meta = fs::symlink_metadata(&p).unwrap();
        let mode = meta.permissions().mode() & 0o7777;
        let node = if meta.file_type().is_symlink() {
            symlink(fs::read_link(&p).unwrap().to_str().unwrap())
        } else if meta.is_dir() {
            walk(root, &p, out);
            dir(mode)
        } else {
            file(mode, &String::from_utf8_lossy(&fs::read(&p).unwrap()))
        };
        out.insert(rel, node);
    }
}

/// Owner of a path as (uid, gid).
pub fn owner(p: &Path) -> (u32, u32) {
    let m = fs::symlink_metadata(p).unwrap();
    (m.uid(), m.gid())
}

/// A listing of every file of a store with its size and content digest,
/// for checking that a failed build changed nothing. The stat cache is left
/// out: it only records hashes of context files.
pub fn store_listing(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().to_str().unwrap().to_string();
            if rel == "statcache" || rel.starts_with("statcache/") {
                continue;
            }
            let meta = fs::symlink_metadata(&p).unwrap();
            if meta.is_dir() {
                out.insert(rel, "dir".into());
                stack.push(p);
            } else if meta.is_file() {
                let data = fs::read(&p).unwrap();
                out.insert(rel, format!("{} {:x}", data.len(), md5ish(&data)));
            } else {
                out.insert(rel, format!("{:?}", meta.file_type()));
            }
        }
    }
    out
}

/// A cheap content fingerprint (FNV-1a): enough to see a change.
fn md5ish(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ *b as u64).wrapping_mul(0x100000001b3)
    })
}

pub fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Whether a test that needs root may run; prints why it is skipped. In CI
/// (CI set) a missing privilege is a failure, never a skip.
pub fn require_root(test: &str) -> bool {
    if is_root() {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("{test} needs root, and CI is set");
    }
    eprintln!("skipping {test}: needs root (run as root, or set CI to make this a failure)");
    false
}

/// Untars `tar` into a new directory `dest`.
pub fn untar(tar: &Path, dest: &Path) {
    fs::create_dir_all(dest).unwrap();
    tool(
        "tar",
        &["-xf", tar.to_str().unwrap(), "-C", dest.to_str().unwrap()],
    );
}
