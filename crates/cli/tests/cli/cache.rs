//! The step cache seen from outside: a no-op rebuild is fully cached, a
//! changed file re-runs exactly the steps from the first COPY that selects
//! it and `--explain` names it, and SOURCE_DATE_EPOCH makes builds in
//! different stores byte-identical.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

use crate::support::*;

const DOCKERFILE: &str = "FROM scratch\n\
                          COPY a.txt /a\n\
                          COPY b.txt /b\n\
                          COPY . /all\n\
                          ENV X=1\n";

/// Builds with `--explain=json`; returns (instruction, status) per step and
/// the whole document.
fn explained_build(w: &World) -> (Vec<(String, String)>, Value) {
    let ctx = w.ctx();
    let out = w.ok(&[
        "build",
        "--progress",
        "plain",
        "--explain=json",
        "-t",
        "c:1",
        ctx.to_str().unwrap(),
    ]);
    let doc: Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("explain JSON ({e}): {out}"));
    let steps = doc["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|s| {
            (
                s["info"]["instruction"].as_str().unwrap().to_string(),
                s["status"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    (steps, doc)
}

fn statuses(steps: &[(String, String)]) -> Vec<&str> {
    steps.iter().map(|(_, s)| s.as_str()).collect()
}

#[test]
fn rebuilds_are_cached_and_changes_are_explained() {
    let w = World::new();
    w.write("a.txt", "A");
    w.write("b.txt", "B");
    w.dockerfile(DOCKERFILE);
    let (first, doc1) = explained_build(&w);
    assert_eq!(first.len(), 5, "{first:?}");
    assert_eq!(first[1].0, "COPY a.txt /a");

    // Unchanged context: every step cached, same image.
    let (second, doc2) = explained_build(&w);
    assert_eq!(statuses(&second), ["cached"; 5], "{second:?}");
    assert_eq!(doc2["manifest_digest"], doc1["manifest_digest"]);

    // Touching a file (new mtime, same content) changes nothing either.
    let b = w.ctx().join("b.txt");
    let later = std::time::SystemTime::now() + std::time::Duration::from_secs(5);
    std::fs::File::options()
        .write(true)
        .open(&b)
        .unwrap()
        .set_modified(later)
        .unwrap();
    let (third, _) = explained_build(&w);
    assert_eq!(statuses(&third), ["cached"; 5], "{third:?}");

    // New content in b.txt: FROM and COPY a.txt stay cached; the first COPY
    // selecting b.txt and everything after it re-run.
    std::fs::write(&b, "B2").unwrap();
    let (fourth, doc4) = explained_build(&w);
    assert_eq!(
        statuses(&fourth),
        ["cached", "cached", "executed", "executed", "executed"],
        "{fourth:?}"
    );
    assert_ne!(doc4["manifest_digest"], doc1["manifest_digest"]);
    let why = &doc4["steps"][2]["explain"]["differences"];
    let changes = why
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["kind"] == "files")
        .unwrap_or_else(|| panic!("no file difference in {why}"));
    assert_eq!(changes["changes"][0]["path"], "b.txt");
    assert_ne!(changes["changes"][0]["old"], changes["changes"][0]["new"]);

    // The text form names the file too.
    std::fs::write(&b, "B3").unwrap();
    let ctx = w.ctx();
    let out = w
        .cmd(&[
            "build",
            "--progress",
            "plain",
            "--explain",
            "-t",
            "c:1",
            ctx.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("file b.txt changed: sha256:"), "{text}");
}

#[test]
fn plain_progress_marks_cached_steps() {
    let w = World::new();
    w.write("a.txt", "A");
    w.write("b.txt", "B");
    w.dockerfile(DOCKERFILE);
    let ctx = w.ctx();
    let run = || {
        let mut c = w.cmd(&[
            "build",
            "--progress",
            "plain",
            "-t",
            "p:1",
            ctx.to_str().unwrap(),
        ]);
        c.env("NO_COLOR", "1");
        let out = run(c);
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let first = run();
    assert!(first.contains("[2/5] COPY a.txt /a"), "{first}");
    assert!(
        first.contains("naming to docker.io/library/p:1 done"),
        "{first}"
    );
    let second = run();
    assert_eq!(second.matches(" CACHED").count(), 5, "{second}");
}

fn manifest_digest(w: &World, root: &Path) -> String {
    let out = run_ok(w.cmd_root(root, &["inspect", "r:1"]));
    let v: Value = serde_json::from_str(&out).unwrap();
    v[0]["RepoDigests"][0].as_str().unwrap().to_string()
}

#[test]
fn source_date_epoch_gives_identical_images_in_different_stores() {
    let w = World::new();
    w.write("a.txt", "A");
    w.write("dir/b.txt", "B");
    w.dockerfile("FROM scratch\nCOPY a.txt /a\nCOPY dir /dir\nLABEL x=y\n");
    let ctx = w.ctx();
    let mut digests = Vec::new();
    for store in ["s1", "s2"] {
        let root = w.path(store);
        // Different mtimes between the builds must not matter.
        std::fs::write(w.ctx().join("a.txt"), "A").unwrap();
        let mut c = w.cmd_root(&root, &["build", "-q", "-t", "r:1", ctx.to_str().unwrap()]);
        c.env("SOURCE_DATE_EPOCH", "1700000000");
        run_ok(c);
        digests.push(manifest_digest(&w, &root));
    }
    assert_eq!(digests[0], digests[1]);
    let out = run_ok(w.cmd_root(&w.path("s1"), &["inspect", "r:1"]));
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v[0]["Created"], "2023-11-14T22:13:20Z");
}

/// The context files a traced rbuild opened other than as a directory:
/// every successful `open`/`openat`/`openat2` of a path under `ctx`
/// without `O_DIRECTORY`, as strace logged them.
fn context_files_opened(log: &str, ctx: &Path) -> Vec<String> {
    let prefix = format!("\"{}/", ctx.display());
    log.lines()
        .filter(|l| {
            l.contains("open")
                && l.contains(&prefix)
                && !l.contains("O_DIRECTORY")
                && !l.contains(" = -1 ")
        })
        .filter_map(|l| {
            let start = l.find(&prefix)? + prefix.len();
            let end = start + l[start..].find('"')?;
            Some(l[start..end].to_string())
        })
        .collect()
}

#[test]
fn no_op_rebuild_opens_no_context_file() {
    if Command::new("strace").arg("-V").output().is_err() {
        assert!(
            std::env::var_os("CI").is_none(),
            "strace is missing; scripts/install-test-deps.sh installs it"
        );
        eprintln!("skipping no_op_rebuild_opens_no_context_file: strace is not installed");
        return;
    }
    let w = World::new();
    for i in 0..50 {
        w.write(&format!("src/d{}/f{i}.txt", i % 5), &format!("file {i}"));
    }
    w.write("a.txt", "A");
    w.write("b.txt", "B");
    w.dockerfile(DOCKERFILE);
    let ctx = w.ctx();
    let args = ["build", "-q", "-t", "s:1", ctx.to_str().unwrap()];
    let trace = |log: &Path| {
        let mut c = Command::new("strace");
        c.args(["-f", "-qq", "-e", "trace=open,openat,openat2", "-o"])
            .arg(log)
            .arg(env!("CARGO_BIN_EXE_rbuild"))
            .arg("--root")
            .arg(w.root())
            .args(args);
        c.env_remove("SOURCE_DATE_EPOCH").env_remove("RBUILD_ROOT");
        let id = run_ok(c);
        (id, std::fs::read_to_string(log).unwrap())
    };

    // The cold build reads every selected file: the trace sees them, so an
    // empty list below means something.
    let (first_id, cold) = trace(&w.path("cold.strace"));
    let cold_opened = context_files_opened(&cold, &ctx);
    assert!(
        cold_opened.contains(&"a.txt".to_string()),
        "{cold_opened:?}"
    );
    assert!(
        cold_opened.contains(&"src/d3/f8.txt".to_string()),
        "{cold_opened:?}"
    );

    // The no-op rebuild: same image, and the only context file opened is
    // the Dockerfile itself.
    let (second_id, noop) = trace(&w.path("noop.strace"));
    assert_eq!(second_id, first_id);
    assert_eq!(context_files_opened(&noop, &ctx), ["Dockerfile"]);
}
