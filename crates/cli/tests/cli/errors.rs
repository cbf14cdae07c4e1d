//! Bad input fails before it changes anything: each case exits 1 with a
//! message naming the culprit and its Dockerfile line, and the store is
//! byte-for-byte what it was.

use crate::support::*;

fn check_failure(w: &World, dockerfile: &str, extra: &[&str], wants: &[&str]) {
    w.dockerfile(dockerfile);
    let before = store_listing(&w.root());
    let ctx = w.ctx();
    // --pull=never: a missing image must not send these tests to Docker Hub.
    let mut args = vec![
        "build",
        "--pull=never",
        "--progress",
        "plain",
        "-t",
        "bad:1",
    ];
    args.extend_from_slice(extra);
    args.push(ctx.to_str().unwrap());
    let err = w.fails(&args);
    for want in wants {
        assert!(err.contains(want), "expected {want:?} in:\n{err}");
    }
    assert_eq!(
        store_listing(&w.root()),
        before,
        "store changed by:\n{dockerfile}"
    );
}

#[test]
fn bad_input_fails_cleanly() {
    let w = World::new();
    w.write("a.txt", "A");
    std::fs::write(w.path("outside.txt"), "secret").unwrap();
    std::os::unix::fs::symlink("../outside.txt", w.ctx().join("escape")).unwrap();
    // A good build first, so the store is populated.
    w.dockerfile("FROM scratch\nCOPY a.txt /a\n");
    w.build("good:1");

    check_failure(
        &w,
        "FROM scratch\nCOPY a.txt /a\nCOPY nothere.txt /x\n",
        &[],
        &["nothere.txt", "Dockerfile:3"],
    );
    check_failure(
        &w,
        "FROM scratch\nCOPY ../outside.txt /x\n",
        &[],
        &["outside.txt", "Dockerfile:2"],
    );
    check_failure(
        &w,
        "FROM scratch\nCOPY escape /x\n",
        &[],
        &["escape", "Dockerfile:2"],
    );
    check_failure(
        &w,
        "FROM scratch AS one\nCOPY a.txt /a\nFROM scratch\nCOPY --from=nostage /a /b\n",
        &[],
        &["nostage", "Dockerfile:4"],
    );
    check_failure(
        &w,
        "FROM scratch AS one\nCOPY a.txt /a\n",
        &["--target", "nope"],
        &["nope"],
    );
    check_failure(
        &w,
        "FROM nosuchimage:1\nCOPY a.txt /a\n",
        &[],
        &["nosuchimage", "Dockerfile:1"],
    );
    check_failure(
        &w,
        "FROM scratch\nFROBNICATE x\n",
        &[],
        &["Dockerfile:2:1", "FROBNICATE", "   2 | FROBNICATE x"],
    );
    // Checked before anything runs: the good first step does not run.
    check_failure(
        &w,
        "FROM scratch\nCOPY a.txt /fresh\nEXPOSE notaport\n",
        &[],
        &["Dockerfile:3"],
    );
}

#[test]
fn usage_errors_name_the_flag() {
    let w = World::new();
    let ctx = w.ctx();
    w.dockerfile("FROM scratch\n");
    let err = w.fails(&["build", "-o", "type=zip,dest=x", ctx.to_str().unwrap()]);
    assert!(err.contains("zip"), "{err}");
    let err = w.fails(&["build", "-t", "Bad Name", ctx.to_str().unwrap()]);
    assert!(err.contains("Bad Name"), "{err}");
    let err = w.fails(&["build", w.path("nodir").to_str().unwrap()]);
    assert!(err.contains("nodir"), "{err}");
}
