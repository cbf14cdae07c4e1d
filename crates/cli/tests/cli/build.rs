//! Builds FROM scratch and FROM an imported base: COPY semantics and the
//! metadata instructions, checked through `-o type=local` and `inspect`.

use std::os::unix::fs::symlink as make_symlink;

use serde_json::json;

use crate::support::*;

#[test]
fn copy_files_dirs_and_wildcards_from_scratch() {
    let w = World::new();
    w.write("a.txt", "A");
    w.write("dir/b.txt", "B");
    w.write("dir/sub/c.txt", "C");
    make_symlink("b.txt", w.ctx().join("dir/link")).unwrap();
    w.write("x1.log", "1");
    w.write("x2.log", "2");
    w.write("y.md", "not copied");
    w.dockerfile(
        "FROM scratch\n\
         COPY a.txt /a.txt\n\
         COPY dir /d/\n\
         COPY *.log /logs/\n\
         COPY a.txt /new/name\n",
    );
    let out = w.path("out");
    let ctx = w.ctx();
    let id = w.ok(&[
        "-q",
        "-t",
        "copy:1",
        "-o",
        &format!("type=local,dest={}", out.display()),
        ctx.to_str().unwrap(),
    ]);
    assert!(
        id.trim().starts_with("sha256:") && id.trim().len() == 71,
        "{id}"
    );
    let want = [
        ("a.txt", file(0o644, "A")),
        ("d", dir(0o755)),
        ("d/b.txt", file(0o644, "B")),
        ("d/link", symlink("b.txt")),
        ("d/sub", dir(0o755)),
        ("d/sub/c.txt", file(0o644, "C")),
        ("logs", dir(0o755)),
        ("logs/x1.log", file(0o644, "1")),
        ("logs/x2.log", file(0o644, "2")),
        ("new", dir(0o755)),
        ("new/name", file(0o644, "A")),
    ];
    let want: std::collections::BTreeMap<String, Node> =
        want.into_iter().map(|(p, n)| (p.to_string(), n)).collect();
    assert_eq!(tree(&out), want);
    let img = w.inspect("copy:1");
    assert_eq!(img["Id"], id.trim());
    assert_eq!(img["RepoTags"], json!(["copy:1"]));
    assert_eq!(img["RootFS"]["Layers"].as_array().unwrap().len(), 4);
}

#[test]
fn chown_and_chmod_are_applied() {
    if !require_root("chown_and_chmod_are_applied") {
        return;
    }
    let w = World::new();
    w.import_busybox("bb:base");
    w.write("f.txt", "F");
    w.write("tree/g.txt", "G");
    w.dockerfile(
        "FROM bb:base\n\
         COPY --chown=1000:10 f.txt /numeric\n\
         COPY --chown=user:wheel --chmod=0750 tree /named/\n\
         COPY --chmod=600 f.txt /private\n",
    );
    let out = w.path("out");
    let ctx = w.ctx();
    w.ok(&["-q", "-o", out.to_str().unwrap(), ctx.to_str().unwrap()]);
    assert_eq!(owner(&out.join("numeric")), (1000, 10));
    assert_eq!(owner(&out.join("named/g.txt")), (1000, 10));
    let t = tree(&out);
    assert_eq!(t["named/g.txt"], file(0o750, "G"));
    assert_eq!(t["private"], file(0o600, "F"));
    assert_eq!(owner(&out.join("private")), (0, 0));
    // The base image's files are there too.
    assert!(matches!(t["bin/busybox"], Node::File { .. }));
    assert_eq!(t["bin/sh"], symlink("busybox"));
}

#[test]
fn metadata_instructions_reach_the_image_config() {
    let w = World::new();
    w.dockerfile(
        r#"FROM scratch
ARG V=1
LABEL a=b "c d"=e
ENV PATH=/usr/bin FOO="x y"
WORKDIR /app
USER 1000:1000
EXPOSE 80 53/udp
VOLUME /data
ENTRYPOINT ["/bin/app"]
CMD ["--help"]
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=5s --timeout=2s --retries=3 CMD ["/bin/check"]
MAINTAINER me
ONBUILD COPY x /x
SHELL ["/bin/bash", "-c"]
"#,
    );
    let ctx = w.ctx();
    let id = w.ok(&[
        "-q",
        "-t",
        "meta:1",
        "--label",
        "cli=yes",
        ctx.to_str().unwrap(),
    ]);
    let img = w.inspect("meta:1");
    assert_eq!(img["Id"], id.trim());
    assert_eq!(img["RepoTags"], json!(["meta:1"]));
    assert_eq!(img["Os"], "linux");
    assert_eq!(img["Author"], "me");
    assert!(img["Architecture"].as_str().is_some_and(|a| !a.is_empty()));
    let c = &img["Config"];
    assert_eq!(c["Labels"], json!({"a": "b", "c d": "e", "cli": "yes"}));
    let env: Vec<&str> = c["Env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(env.contains(&"PATH=/usr/bin"), "{env:?}");
    assert!(env.contains(&"FOO=x y"), "{env:?}");
    assert!(
        !env.iter().any(|e| e.starts_with("V=")),
        "ARG leaked into Env: {env:?}"
    );
    assert_eq!(c["WorkingDir"], "/app");
    assert_eq!(c["User"], "1000:1000");
    assert_eq!(c["ExposedPorts"], json!({"80/tcp": {}, "53/udp": {}}));
    assert_eq!(c["Volumes"], json!({"/data": {}}));
    assert_eq!(c["Entrypoint"], json!(["/bin/app"]));
    assert_eq!(c["Cmd"], json!(["--help"]));
    assert_eq!(c["StopSignal"], "SIGTERM");
    assert_eq!(c["Healthcheck"]["Test"], json!(["CMD", "/bin/check"]));
    assert_eq!(c["Healthcheck"]["Interval"], 5_000_000_000u64);
    assert_eq!(c["Healthcheck"]["Timeout"], 2_000_000_000u64);
    assert_eq!(c["Healthcheck"]["Retries"], 3);
    assert_eq!(c["OnBuild"], json!(["COPY x /x"]));
    assert_eq!(c["Shell"], json!(["/bin/bash", "-c"]));
    assert_eq!(img["RootFS"]["Type"], "layers");

    let history = w.ok(&["history", "--no-trunc", "meta:1"]);
    let first = history.lines().next().unwrap();
    for col in ["IMAGE", "CREATED", "CREATED BY", "SIZE", "COMMENT"] {
        assert!(first.contains(col), "{first}");
    }
    assert!(history.contains("ENTRYPOINT [\"/bin/app\"]"), "{history}");
    assert!(history.contains("WORKDIR /app"), "{history}");
}

#[test]
fn dockerfile_from_stdin_and_f_flag() {
    let w = World::new();
    w.write("a.txt", "A");
    w.write("other.Dockerfile", "FROM scratch\nCOPY a.txt /from-f\n");
    let ctx = w.ctx();
    let f = ctx.join("other.Dockerfile");
    let out = w.path("out-f");
    w.ok(&[
        "-q",
        "-f",
        f.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        ctx.to_str().unwrap(),
    ]);
    assert_eq!(tree(&out)["from-f"], file(0o644, "A"));

    let out = w.path("out-stdin");
    let mut c = w.cmd(&[
        "build",
        "-q",
        "-f",
        "-",
        "-o",
        out.to_str().unwrap(),
        ctx.to_str().unwrap(),
    ]);
    c.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = c.spawn().unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"FROM scratch\nCOPY a.txt /from-stdin\n")
        .unwrap();
    let res = child.wait_with_output().unwrap();
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    assert_eq!(tree(&out)["from-stdin"], file(0o644, "A"));
}

#[test]
fn build_args_and_default_subcommand() {
    let w = World::new();
    w.write("one.txt", "1");
    w.write("two.txt", "2");
    w.dockerfile("FROM scratch\nARG SRC=one.txt\nCOPY ${SRC} /picked\n");
    let ctx = w.ctx();
    let out = w.path("out");
    // No `build` word, --root after the context, value from the environment.
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_rbuild"));
    c.args([
        "-q",
        "--build-arg",
        "SRC",
        "-o",
        out.to_str().unwrap(),
        ctx.to_str().unwrap(),
        "--root",
    ])
    .arg(w.root())
    .env("SRC", "two.txt");
    run_ok(c);
    assert_eq!(tree(&out)["picked"], file(0o644, "2"));
}

#[test]
fn import_then_from_the_imported_image() {
    let w = World::new();
    let id = w.import_busybox("busybox:test");
    assert!(id.starts_with("sha256:") && id.len() == 71, "{id}");
    let img = w.inspect("busybox:test");
    assert_eq!(img["Id"], id);
    assert_eq!(img["RootFS"]["Layers"].as_array().unwrap().len(), 1);
    w.write("hello.txt", "hello");
    w.dockerfile("FROM busybox:test\nCOPY hello.txt /home/user/\n");
    let out = w.path("out");
    let ctx = w.ctx();
    w.ok(&[
        "-q",
        "-t",
        "child:1",
        "-o",
        out.to_str().unwrap(),
        ctx.to_str().unwrap(),
    ]);
    let t = tree(&out);
    assert_eq!(t["home/user/hello.txt"], file(0o644, "hello"));
    assert_eq!(t["bin/ls"], symlink("busybox"));
    match &t["etc/passwd"] {
        Node::File { content, .. } => assert!(content.contains("user:x:1000:1000:"), "{content}"),
        other => panic!("etc/passwd is {other:?}"),
    }
    let child = w.inspect("child:1");
    let base_layers = img["RootFS"]["Layers"].as_array().unwrap();
    let child_layers = child["RootFS"]["Layers"].as_array().unwrap();
    assert_eq!(child_layers.len(), 2);
    assert_eq!(child_layers[0], base_layers[0]);
}

#[test]
fn import_changes_set_the_config_a_build_inherits() {
    if !require_root("import_changes_set_the_config_a_build_inherits") {
        return;
    }
    let w = World::new();
    w.import_busybox("plain:1");
    let tar = w.path("busybox.tar");
    let tar = tar.to_str().unwrap();
    let id = w
        .ok(&[
            "import",
            "-c",
            "ENV APP=/srv/app",
            "--change",
            "WORKDIR $APP",
            "-c",
            r#"CMD ["sh", "-c", "pwd"]"#,
            "-c",
            "EXPOSE 8080",
            "-m",
            "busybox with defaults",
            tar,
            "based:1",
        ])
        .trim()
        .to_string();
    let img = w.inspect("based:1");
    assert_eq!(img["Id"], id);
    assert_eq!(img["Config"]["WorkingDir"], "/srv/app");
    assert_eq!(img["Config"]["Cmd"], serde_json::json!(["sh", "-c", "pwd"]));
    assert_eq!(img["Config"]["Env"], serde_json::json!(["APP=/srv/app"]));
    assert!(
        img["Config"]["ExposedPorts"]["8080/tcp"].is_object(),
        "{img}"
    );
    assert_eq!(img["Comment"], "busybox with defaults");
    // Same layer as a plain import: the changes touch only the config.
    assert_eq!(img["RootFS"], w.inspect("plain:1")["RootFS"]);

    // A build FROM it starts in that WORKDIR with that ENV (and Docker's
    // PATH added, as the base has none).
    w.dockerfile("FROM based:1\nRUN pwd > where && echo $APP >> where\n");
    let out = w.path("out");
    let ctx = w.ctx();
    w.ok(&["-q", "-o", out.to_str().unwrap(), ctx.to_str().unwrap()]);
    assert_eq!(
        tree(&out)["srv/app/where"],
        file(0o644, "/srv/app\n/srv/app\n")
    );

    // Build instructions are refused before anything is stored.
    let before = store_listing(&w.root());
    let err = w.fails(&["import", "-c", "RUN true", tar, "bad:1"]);
    assert!(err.contains("RUN is not a valid change command"), "{err}");
    assert_eq!(store_listing(&w.root()), before);
    // Without a name the image is stored untagged and its ID printed.
    let untagged = w.ok(&["import", tar]);
    assert!(w.ok(&["images"]).contains("<none>"));
    assert!(untagged.starts_with("sha256:"), "{untagged}");
}

/// Runs rbuild with `input` on stdin.
fn with_stdin(mut c: std::process::Command, input: &[u8]) -> std::process::Output {
    use std::io::Write;
    use std::process::Stdio;
    c.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn context_from_stdin_is_a_tarball_or_a_dockerfile() {
    let w = World::new();
    w.write("app/a.txt", "A");
    w.write("build/Dockerfile.ci", "FROM scratch\nCOPY app /srv\n");
    let tgz = w.path("ctx.tgz");
    run_ok({
        let mut c = std::process::Command::new("tar");
        c.arg("czf").arg(&tgz).arg("-C").arg(w.ctx()).arg(".");
        c
    });

    // A compressed context tarball; -f names a file inside it.
    let out = w.path("out");
    let o = with_stdin(
        w.cmd(&[
            "build",
            "-q",
            "-f",
            "build/Dockerfile.ci",
            "-o",
            out.to_str().unwrap(),
            "-",
        ]),
        &std::fs::read(&tgz).unwrap(),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(tree(&out)["srv/a.txt"], file(0o644, "A"));

    // A Dockerfile: the context is empty, so COPY finds nothing, and the
    // error names the stdin Dockerfile's line.
    let o = with_stdin(
        w.cmd(&["build", "-q", "-"]),
        b"FROM scratch\nLABEL x=1\nCOPY app /srv\n",
    );
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("Dockerfile:3:1"), "{err}");
    assert!(err.contains("\"app\" not found"), "{err}");
    let o = with_stdin(
        w.cmd(&["build", "-q", "-t", "s:1", "-"]),
        b"FROM scratch\nLABEL x=1\n",
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(w.inspect("s:1")["Config"]["Labels"]["x"], "1");

    // Both on stdin is refused; no temp dir is left in the store.
    let err = w.fails(&["build", "-f", "-", "-"]);
    assert!(
        err.contains("both the build context and the Dockerfile"),
        "{err}"
    );
    let tmp = w.root().join("tmp");
    let left: Vec<_> = std::fs::read_dir(&tmp).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
}
