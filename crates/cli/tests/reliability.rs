//! Store maintenance end to end: build leases against `rmi`, `check` and
//! `check --repair` on a damaged store, `du`, and `prune` with its options.

#[allow(dead_code)]
#[path = "cli/support.rs"]
mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime};

use support::*;

/// The cache-mount directory `RUN --mount=type=cache` uses, once it exists.
fn find_cache_mount(root: &Path) -> Option<PathBuf> {
    for id in fs::read_dir(root.join("cache-mounts")).ok()?.flatten() {
        let p = id.path().join("0");
        if p.is_dir() {
            return Some(p);
        }
    }
    None
}

/// Waits until `cond` holds, failing if `child` exits first or after a
/// generous bound (a hung build must not hang the suite).
fn wait_for(child: &mut std::process::Child, what: &str, cond: impl Fn() -> bool) {
    let start = Instant::now();
    while !cond() {
        if let Some(status) = child.try_wait().expect("try_wait") {
            panic!("the build exited ({status}) before {what}");
        }
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "gave up waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn rmi_refuses_an_image_a_running_build_uses_unless_forced() {
    if !require_root("rmi_refuses_an_image_a_running_build_uses_unless_forced") {
        return;
    }
    let w = World::new();
    w.import_busybox("base:1");
    // The RUN announces itself in a cache mount the test can see, then waits
    // there for the test's go-ahead.
    w.dockerfile(
        "FROM base:1\n\
         RUN --mount=type=cache,id=sync,target=/sync \
         touch /sync/started && while [ ! -e /sync/go ]; do sleep 0.05; done && echo done > /out\n",
    );
    let mut child = w
        .cmd(&["build", "-q", "-t", "app", w.ctx().to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn build");
    let root = w.root();
    wait_for(&mut child, "the RUN started", || {
        find_cache_mount(&root).is_some_and(|d| d.join("started").exists())
    });
    let sync = find_cache_mount(&root).expect("cache mount");

    // The lease names the base image: removing its only name is refused.
    let err = w.fails(&["rmi", "base:1"]);
    assert!(
        err.contains("unable to remove image base:1 (must be forced): a running build"),
        "{err}"
    );
    assert!(w.ok(&["images", "-q"]).lines().count() == 1);
    // An extra name can go: the image stays listed under the other.
    w.ok(&["tag", "base:1", "base:2"]);
    w.ok(&["rmi", "base:2"]);
    // Forced, it goes even though the build is running.
    let out = w.ok(&["rmi", "-f", "base:1"]);
    assert!(out.contains("Untagged: base:1"), "{out}");

    fs::write(sync.join("go"), b"").unwrap();
    let out = child.wait_with_output().expect("wait build");
    assert!(
        out.status.success(),
        "build failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The build finished with the base's blobs intact; its lease is gone.
    let leases: Vec<_> = fs::read_dir(root.join("leases")).unwrap().collect();
    assert!(leases.is_empty(), "{leases:?}");
    w.ok(&["check"]);
    let out = w.ok(&["inspect", "app"]);
    assert!(out.contains("\"Id\""), "{out}");
}

/// Builds `FROM scratch` + COPY of one file with `content` as `tag`;
/// returns the image ID.
fn build_copy(w: &World, tag: &str, file: &str, content: &str) -> String {
    w.write(file, content);
    w.dockerfile(&format!("FROM scratch\nCOPY {file} /{file}\n"));
    w.build(tag)
}

fn blob_path(root: &Path, digest: &str) -> PathBuf {
    root.join("blobs/sha256")
        .join(digest.trim_start_matches("sha256:"))
}

fn cache_files(root: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(root.join("cache"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    v.sort();
    v
}

fn set_mtime(p: &Path, t: SystemTime) {
    fs::File::options()
        .write(true)
        .open(p)
        .unwrap()
        .set_modified(t)
        .unwrap();
}

#[test]
fn check_reports_damage_and_repair_removes_it() {
    let w = World::new();
    let id = build_copy(&w, "good", "a.txt", "good content");
    build_copy(&w, "bad", "b.txt", "soon corrupt");
    w.ok(&["check"]);
    let root = w.root();

    // Corrupt the layer of `bad`, leave a temp file, a malformed cache
    // record and a stale lease.
    let bad = w.inspect("bad");
    let layer = bad["RootFS"]["Layers"][0].as_str().unwrap().to_string();
    // The layer blob: the cache record of bad's COPY names it with its diffID.
    let layer_blob = cache_files(&root)
        .into_iter()
        .map(|p| fs::read_to_string(p).unwrap())
        .find(|r| r.contains(&layer))
        .map(|r| {
            let v: serde_json::Value = serde_json::from_str(&r).unwrap();
            v["layer"]["digest"].as_str().unwrap().to_string()
        })
        .expect("cache record of bad's layer");
    let p = blob_path(&root, &layer_blob);
    fs::write(&p, b"flipped bits").unwrap();
    fs::write(root.join("tmp/half-written"), b"x").unwrap();
    fs::write(
        root.join("cache").join(format!("{}.json", "ab".repeat(32))),
        b"{tru",
    )
    .unwrap();
    fs::create_dir_all(root.join("leases")).unwrap();
    fs::write(root.join("leases/1-2-x.lock"), b"").unwrap();
    fs::write(root.join("leases/1-2-x.json"), b"{}").unwrap();

    let out = run(w.cmd(&["check"]));
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("blob {layer_blob} is corrupt")),
        "{stdout}"
    );
    assert!(
        stdout.contains("image docker.io/library/bad:latest is broken"),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("cache entry sha256:{} is broken", "ab".repeat(32))),
        "{stdout}"
    );
    assert!(stdout.contains("stale lease"), "{stdout}");
    assert!(
        stdout.contains("stray temp file") && stdout.contains("half-written"),
        "{stdout}"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("check --repair"));

    let out = w.ok(&["check", "--repair"]);
    for expected in [
        format!("removed corrupt blob {layer_blob}"),
        "removed broken image docker.io/library/bad:latest".to_string(),
        format!("removed broken cache entry sha256:{}", "ab".repeat(32)),
        "removed stale lease".to_string(),
        "removed temp file".to_string(),
    ] {
        assert!(out.contains(&expected), "missing {expected:?} in:\n{out}");
    }
    assert!(w.ok(&["check"]).contains("is sound"));
    // The sound image is untouched; the broken one rebuilds.
    assert_eq!(w.inspect("good")["Id"].as_str().unwrap(), id);
    build_copy(&w, "bad", "b.txt", "soon corrupt");
    w.ok(&["check"]);
}

#[test]
fn du_reports_images_cache_and_reclaimable() {
    let w = World::new();
    build_copy(&w, "one", "a.txt", &"a".repeat(5000));
    let out = w.ok(&["du"]);
    let row = |kind: &str| -> Vec<String> {
        out.lines()
            .find(|l| l.starts_with(kind))
            .unwrap_or_else(|| panic!("no {kind} row in:\n{out}"))
            .split_whitespace()
            .map(str::to_string)
            .collect()
    };
    assert!(out.starts_with("TYPE"), "{out}");
    // Images: 1 total, 1 tagged, nothing reclaimable while tagged.
    assert_eq!(row("Images")[1..3], ["1", "1"]);
    assert_eq!(row("Images").last().unwrap(), "0B");
    assert_eq!(row("Build")[2], "1");
    assert_eq!(row("Blobs")[1], "3");
    assert_eq!(row("Blobs").last().unwrap(), "0B");
    // Untagged, the blobs become reclaimable.
    w.ok(&["rmi", "one"]);
    let out = w.ok(&["du"]);
    let blobs = out.lines().find(|l| l.starts_with("Blobs")).unwrap();
    assert!(!blobs.ends_with(" 0B"), "{out}");
}

#[test]
fn prune_keeps_what_tagged_images_need_and_removes_the_rest() {
    let w = World::new();
    let keep = build_copy(&w, "keep", "a.txt", "kept");
    let gone = build_copy(&w, "gone", "b.txt", "removed");
    w.ok(&["rmi", "gone"]);
    let blobs_before = fs::read_dir(w.root().join("blobs/sha256")).unwrap().count();
    let out = w.ok(&["prune", "-v"]);
    assert!(out.contains("deleted cache entry"), "{out}");
    assert!(out.contains("deleted blob"), "{out}");
    assert!(out.contains("Total reclaimed space:"), "{out}");
    assert!(
        !blob_path(&w.root(), &gone).exists(),
        "the pruned image's config stays"
    );
    let blobs_after = fs::read_dir(w.root().join("blobs/sha256")).unwrap().count();
    assert_eq!(
        blobs_after, 3,
        "keep's manifest, config and layer remain (from {blobs_before})"
    );
    w.ok(&["check"]);
    // The kept image is intact and its build is still fully cached: the
    // same image, and no new cache record.
    let records = cache_files(&w.root());
    assert_eq!(build_copy(&w, "keep", "a.txt", "kept"), keep);
    assert_eq!(cache_files(&w.root()), records);
    // A second prune has nothing left to do.
    assert!(w.ok(&["prune"]).contains("Deleted 0 object(s)"));
}

#[test]
fn prune_filters_by_age_and_keeps_recent_cache_within_keep_storage() {
    let w = World::new();
    // Three cache records each holding a layer no image keeps.
    for i in 0..3 {
        build_copy(
            &w,
            &format!("t{i}"),
            &format!("f{i}.bin"),
            &format!("{i}").repeat(3000),
        );
        w.ok(&["rmi", &format!("t{i}")]);
    }
    let records = cache_files(&w.root());
    assert_eq!(records.len(), 3);
    let now = SystemTime::now();
    let day = Duration::from_secs(86400);
    // Ages: 3 days, 2 days, fresh.
    set_mtime(&records[0], now - 3 * day);
    set_mtime(&records[1], now - 2 * day);
    set_mtime(&records[2], now);
    let fresh = records[2].clone();
    let middle = records[1].clone();

    // until=60h: only the 3-day-old record goes.
    w.ok(&["prune", "--filter", "until=60h"]);
    assert!(!records[0].exists());
    assert!(middle.exists() && fresh.exists());

    // keep-storage large enough for one layer: the most recent stays.
    let layer_size = |p: &Path| {
        let v: serde_json::Value = serde_json::from_slice(&fs::read(p).unwrap()).unwrap();
        v["layer"]["size"].as_u64().unwrap()
    };
    let budget = layer_size(&fresh).max(layer_size(&middle)) + 1;
    assert!(budget < layer_size(&fresh) + layer_size(&middle));
    w.ok(&["prune", "--keep-storage", &format!("{budget}b")]);
    assert!(fresh.exists(), "the most recently used record is kept");
    assert!(!middle.exists(), "the older one goes beyond the budget");

    assert!(w
        .fails(&["prune", "--filter", "label=x"])
        .contains("only until=DURATION"));
    let out = run(w.cmd(&["prune", "--keep-storage", "lots"]));
    assert_eq!(out.status.code(), Some(2), "a usage error");
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid size"));
    w.ok(&["check"]);
}

#[test]
fn prune_all_removes_untagged_images_and_cache_mounts() {
    if !require_root("prune_all_removes_untagged_images_and_cache_mounts") {
        return;
    }
    let w = World::new();
    w.import_busybox("base");
    w.dockerfile("FROM base\nRUN --mount=type=cache,target=/c echo hi > /c/x && echo built > /y\n");
    let ctx = w.ctx();
    let untagged = w
        .ok(&["build", "-q", ctx.to_str().unwrap()])
        .trim()
        .to_string();
    assert!(find_cache_mount(&w.root()).is_some());
    // Plain prune keeps untagged images (they are listed) and cache mounts.
    w.ok(&["prune"]);
    assert!(w.ok(&["images"]).contains(&untagged[7..19]));
    assert!(find_cache_mount(&w.root()).is_some());
    let out = w.ok(&["prune", "--all", "-v"]);
    assert!(out.contains("deleted untagged image"), "{out}");
    assert!(out.contains("deleted cache mount"), "{out}");
    assert!(!w.ok(&["images"]).contains(&untagged[7..19]));
    assert!(find_cache_mount(&w.root()).is_none());
    // The tagged base survives and still builds.
    w.ok(&["check"]);
    w.dockerfile("FROM base\nRUN echo again > /z\n");
    w.build("again");
}
