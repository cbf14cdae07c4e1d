//! Builds with RUN on a busybox base image imported into a temporary store
//! (needs root for namespaces and overlayfs, and Debian's busybox-static).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use rbuild_solver::{build, BuildError, BuildRequest, DockerfileSource, ExitReason, NoProgress};

/// Imports the busybox rootfs as `busybox:test`; None (with the reason
/// printed) when the host cannot run these tests outside CI.
fn store_with_busybox(dir: &Path) -> Option<PathBuf> {
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    let have_busybox = Path::new("/bin/busybox").exists();
    if (!is_root || !have_busybox) && std::env::var_os("CI").is_none() {
        eprintln!("skipping: RUN tests need root and /bin/busybox (busybox-static)");
        return None;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/busybox-rootfs.sh");
    let tar = dir.join("busybox.tar");
    let status = Command::new("bash")
        .arg(&script)
        .arg(&tar)
        .status()
        .unwrap();
    assert!(status.success(), "busybox-rootfs.sh failed");
    let root = dir.join("store");
    let store = rbuild_image::Store::open(&root).unwrap();
    let reference = rbuild_image::Reference::parse("busybox:test").unwrap();
    rbuild_image::archive::import_rootfs(
        &store,
        fs::File::open(&tar).unwrap(),
        Some(&reference),
        &rbuild_image::archive::ImportOptions {
            layer: Default::default(),
            source: tar.display().to_string(),
            created: std::time::UNIX_EPOCH,
            message: None,
            config: Default::default(),
        },
    )
    .unwrap();
    Some(root)
}

fn request(dir: &Path, root: &Path, text: &str) -> BuildRequest {
    let ctx = dir.join("ctx");
    fs::create_dir_all(&ctx).unwrap();
    fs::write(ctx.join("input.txt"), "from the context\n").unwrap();
    let mut r = BuildRequest::new(&ctx, root);
    r.dockerfile = DockerfileSource::Text {
        name: "Dockerfile".into(),
        text: text.into(),
    };
    r
}

fn read_file(root: &Path, manifest: &rbuild_cache::Digest, path: &str) -> String {
    let store = rbuild_image::Store::open(root).unwrap();
    let image = store.image(manifest).unwrap();
    let snap = rbuild_executor::snapshot::Snapshotter::new(
        root,
        store.blobs().clone(),
        rbuild_executor::snapshot::SnapshotterKind::detect(root),
    )
    .unwrap();
    let view = snap.view(&image.layers()).unwrap();
    fs::read_to_string(view.path().join(path.trim_start_matches('/'))).unwrap()
}

#[test]
fn run_sees_env_args_workdir_user_and_mounts() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(root) = store_with_busybox(tmp.path()) else {
        return;
    };
    let text = "FROM busybox:test
ENV GREETING=hello
ARG WHO=world
WORKDIR /work
RUN echo \"$GREETING $WHO\" > out.txt && pwd >> out.txt
RUN --mount=type=bind,target=/ctx cat /ctx/input.txt > from-ctx.txt
USER user
RUN id -u > /tmp/uid
RUN <<EOF
echo heredoc > /tmp/heredoc
EOF
";
    let r = build(&request(tmp.path(), &root, text), &NoProgress).unwrap();
    assert_eq!(
        read_file(&root, &r.manifest_digest, "/work/out.txt"),
        "hello world\n/work\n"
    );
    assert_eq!(
        read_file(&root, &r.manifest_digest, "/work/from-ctx.txt"),
        "from the context\n"
    );
    assert_eq!(read_file(&root, &r.manifest_digest, "/tmp/uid"), "1000\n");
    assert_eq!(
        read_file(&root, &r.manifest_digest, "/tmp/heredoc"),
        "heredoc\n"
    );
    let image = rbuild_image::Store::open(&root)
        .unwrap()
        .image(&r.manifest_digest)
        .unwrap();
    // ARG values never reach the image's Env.
    assert!(!image
        .config
        .config
        .env
        .iter()
        .any(|e| e.starts_with("WHO=")));
    let run = image
        .config
        .history
        .iter()
        .find(|h| h.created_by.as_deref().unwrap_or("").contains("out.txt"))
        .unwrap();
    assert!(run
        .created_by
        .as_deref()
        .unwrap()
        .starts_with("RUN |1 WHO=world /bin/sh -c echo"));
}

/// A heredoc body starting with `#!` runs under the interpreter it names
/// (here awk, whose program is a syntax error for sh), from a read-only
/// file at `/dev/pipes/<name>` that never reaches the layer; its body is
/// part of the step's key.
#[test]
fn heredoc_with_shebang_runs_its_own_interpreter() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(root) = store_with_busybox(tmp.path()) else {
        return;
    };
    let text = |word: &str| {
        format!(
            "FROM busybox:test
RUN <<PROG
#!/usr/bin/awk -f
BEGIN {{ print \"{word}\" > \"/awk.txt\" }}
PROG
RUN <<-EOF
\t#!/bin/busybox sh
\techo \"$0\" > /zero.txt
\tls -l /dev/pipes/EOF > /mode.txt
\ttouch /dev/pipes/EOF 2> /ro.txt || echo read-only >> /ro.txt
\tEOF
RUN <<EOF
test -e /dev/pipes || echo plain > /plain.txt
EOF
"
        )
    };
    let r = build(&request(tmp.path(), &root, &text("from awk")), &NoProgress).unwrap();
    let read = |p: &str| read_file(&root, &r.manifest_digest, p);
    assert_eq!(read("/awk.txt"), "from awk\n");
    // `<<-` strips the tabs, so the shebang is the first line.
    assert_eq!(read("/zero.txt"), "/dev/pipes/EOF\n");
    assert!(
        read("/mode.txt").starts_with("-rwxr-xr-x"),
        "{}",
        read("/mode.txt")
    );
    assert!(
        read("/ro.txt").ends_with("read-only\n"),
        "{}",
        read("/ro.txt")
    );
    // Without a shebang the body is the shell's script.
    assert_eq!(read("/plain.txt"), "plain\n");
    let store = rbuild_image::Store::open(&root).unwrap();
    let image = store.image(&r.manifest_digest).unwrap();
    let snap = rbuild_executor::snapshot::Snapshotter::new(
        &root,
        store.blobs().clone(),
        rbuild_executor::snapshot::SnapshotterKind::detect(&root),
    )
    .unwrap();
    let view = snap.view(&image.layers()).unwrap();
    assert!(
        !view.path().join("dev/pipes").exists(),
        "the script leaked into a layer"
    );

    let again = build(&request(tmp.path(), &root, &text("changed")), &NoProgress).unwrap();
    assert_eq!(
        read_file(&root, &again.manifest_digest, "/awk.txt"),
        "changed\n"
    );
}

/// Records which RUN steps started and finished, in order.
#[derive(Default)]
struct RunLog(std::sync::Mutex<Vec<String>>);

impl rbuild_solver::ProgressSink for RunLog {
    fn event(&self, event: rbuild_solver::ProgressEvent<'_>) {
        let line = match event {
            rbuild_solver::ProgressEvent::Started(s) if s.instruction.starts_with("RUN") => {
                format!("start {}", s.stage_name)
            }
            rbuild_solver::ProgressEvent::Finished(s, _) if s.instruction.starts_with("RUN") => {
                format!("finish {}", s.stage_name)
            }
            _ => return,
        };
        self.0.lock().unwrap().push(line);
    }
}

/// Independent stages run at the same time: each RUN waits (up to 30 s,
/// then fails) for the other to show up in a shared cache mount, so they
/// can only both succeed if they overlap, and the progress events show
/// each one started before either finished.
#[test]
fn independent_stages_run_concurrently() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(root) = store_with_busybox(tmp.path()) else {
        return;
    };
    let stage = |me: &str, other: &str| {
        format!(
            "FROM busybox:test AS {me}\n\
             RUN --mount=type=cache,id=rendezvous,target=/sync \
             touch /sync/{me}; i=0; \
             while [ ! -e /sync/{other} ]; do i=$((i+1)); [ $i -lt 600 ] || exit 9; sleep 0.05; done; \
             echo {me} > /{me}.txt\n"
        )
    };
    let text = format!(
        "{}{}FROM busybox:test\nCOPY --from=left /left.txt /\nCOPY --from=right /right.txt /\n",
        stage("left", "right"),
        stage("right", "left")
    );
    let mut req = request(tmp.path(), &root, &text);
    req.jobs = 2;
    let log = RunLog::default();
    let r = build(&req, &log).unwrap();
    assert_eq!(read_file(&root, &r.manifest_digest, "/left.txt"), "left\n");
    assert_eq!(
        read_file(&root, &r.manifest_digest, "/right.txt"),
        "right\n"
    );
    let events = log.0.into_inner().unwrap();
    assert_eq!(events.len(), 4, "{events:?}");
    assert!(
        events[..2].iter().all(|e| e.starts_with("start")),
        "a RUN finished before the other started: {events:?}"
    );
}

#[test]
fn failing_run_reports_exit_code_and_output() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(root) = store_with_busybox(tmp.path()) else {
        return;
    };
    let text = "FROM busybox:test\nRUN echo first\nRUN echo about to fail && exit 3\n";
    let e = build(&request(tmp.path(), &root, text), &NoProgress).unwrap_err();
    match &e {
        BuildError::RunFailed {
            step,
            reason,
            output_tail,
        } => {
            assert_eq!(*reason, ExitReason::Code(3));
            assert_eq!(step.line, 3);
            assert_eq!(step.index, 3);
            assert!(
                output_tail.iter().any(|l| l == "about to fail"),
                "{output_tail:?}"
            );
        }
        other => panic!("{other}"),
    }
    // The next build on the same store works, and reuses the first RUN.
    let ok = "FROM busybox:test\nRUN echo first\nRUN echo fine\n";
    let r = build(&request(tmp.path(), &root, ok), &NoProgress).unwrap();
    assert_eq!(r.steps[1].status, rbuild_solver::StepStatus::Cached);
}
