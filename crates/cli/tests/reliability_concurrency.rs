//! Concurrency: several rbuild processes on one store at once (the same
//! Dockerfile twice, a different one, `rmi`, `tag` and `prune` in parallel)
//! all succeed (none has a reason to fail), without panics, the store checks clean afterwards, and
//! every build's output is right.

#[allow(dead_code)]
#[path = "cli/support.rs"]
mod support;

use std::fs;
use std::path::Path;
use std::process::{Child, Stdio};

use support::*;

fn spawn(w: &World, args: &[&str]) -> (String, Child) {
    let child = w
        .cmd(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn rbuild");
    (args.join(" "), child)
}

#[test]
fn parallel_builds_rmi_and_prune_on_one_store() {
    if !require_root("parallel_builds_rmi_and_prune_on_one_store") {
        return;
    }
    let w = World::new();
    w.import_busybox("base");
    let ctx_a = w.path("ctx-a");
    let ctx_b = w.path("ctx-b");
    fs::create_dir_all(ctx_a.join("src")).unwrap();
    fs::create_dir_all(&ctx_b).unwrap();
    for i in 0..40 {
        fs::write(
            ctx_a.join(format!("src/f{i}")),
            format!("a{i}\n").repeat(200),
        )
        .unwrap();
    }
    fs::write(
        ctx_a.join("Dockerfile"),
        "FROM base\nARG R\nCOPY src /src\nRUN cat /src/* | wc -l > /count && echo \"$R\" > /round\n",
    )
    .unwrap();
    fs::write(ctx_b.join("b.txt"), "bee\n").unwrap();
    fs::write(
        ctx_b.join("Dockerfile"),
        "FROM scratch\nARG R\nCOPY b.txt /b-$R.txt\n",
    )
    .unwrap();

    for round in 0..3 {
        // Something for rmi to remove while builds run.
        w.ok(&["tag", "base", &format!("old:{round}")]);
        let r = format!("R={round}");
        let out = |n: &str| w.path(&format!("out-{round}-{n}"));
        let (a1, a2, b) = (out("a1"), out("a2"), out("b"));
        let build = |tag: &str, dest: &Path, ctx: &Path| {
            let output = format!("type=local,dest={}", dest.display());
            let ctx = ctx.to_str().unwrap();
            spawn(
                &w,
                &[
                    "build",
                    "-q",
                    "--build-arg",
                    &r,
                    "-t",
                    tag,
                    "-o",
                    &output,
                    ctx,
                ],
            )
        };
        let children = vec![
            build("a:1", &a1, &ctx_a),
            build("a:2", &a2, &ctx_a),
            build("b", &b, &ctx_b),
            spawn(&w, &["rmi", &format!("old:{round}")]),
            spawn(&w, &["tag", "base", &format!("extra:{round}")]),
            spawn(&w, &["prune"]),
            spawn(&w, &["images"]),
        ];
        for (what, child) in children {
            let out = child.wait_with_output().expect("wait");
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(!stderr.contains("panicked"), "{what}: {stderr}");
            // None has a reason to fail: builds share steps, prune waits for
            // them, rmi removes a name no build uses.
            assert!(
                out.status.success(),
                "{what} failed ({}): {stderr}",
                out.status
            );
        }
        for dir in [&a1, &a2] {
            assert_eq!(
                fs::read_to_string(dir.join("count")).unwrap().trim(),
                "8000"
            );
            assert_eq!(
                fs::read_to_string(dir.join("round")).unwrap().trim(),
                round.to_string()
            );
        }
        assert_eq!(
            fs::read_to_string(b.join(format!("b-{round}.txt"))).unwrap(),
            "bee\n"
        );
        let check = w.ok(&["check"]);
        assert!(check.contains("is sound"), "{check}");
        let images = w.ok(&["images"]);
        for name in ["a ", "b ", "base ", "extra "] {
            assert!(
                images.lines().any(|l| l.starts_with(name)),
                "{name} in {images}"
            );
        }
        assert!(!images.contains("old"), "{images}");
    }
    // What the builds stored is sound and complete: saving reads every blob.
    w.ok(&[
        "save",
        "-o",
        w.path("all.tar").to_str().unwrap(),
        "a:1",
        "a:2",
        "b",
        "base",
    ]);
}
