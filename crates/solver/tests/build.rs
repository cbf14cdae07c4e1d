//! End-to-end builds through the library API into temporary stores:
//! FROM scratch + COPY + metadata, caching, invalidation, `--explain`,
//! reproducibility, and failures that must leave the store unchanged.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::sync::Mutex;

use rbuild_solver::{
    build, BuildError, BuildRequest, Difference, DockerfileSource, ProgressEvent, ProgressSink,
    PullPolicy, StepStatus,
};

/// Records the instructions of steps that ran.
#[derive(Default)]
struct Record(Mutex<Vec<String>>);

impl ProgressSink for Record {
    fn event(&self, event: ProgressEvent<'_>) {
        if let ProgressEvent::Started(s) = event {
            self.0.lock().unwrap().push(s.instruction.clone());
        }
    }
}

const DOCKERFILE: &str = "FROM scratch
ARG V=1
ENV APP=/app V=$V
WORKDIR /app
COPY a.txt ./
COPY dir/ ./dir/
LABEL stage=final
EXPOSE 80
CMD [\"/app/a.txt\"]
";

fn context(dir: &Path) {
    fs::create_dir_all(dir.join("dir/sub")).unwrap();
    fs::write(dir.join("Dockerfile"), DOCKERFILE).unwrap();
    fs::write(dir.join("a.txt"), "a\n").unwrap();
    fs::write(dir.join("dir/b.txt"), "b\n").unwrap();
    fs::write(dir.join("dir/sub/c.txt"), "c\n").unwrap();
}

fn request(ctx: &Path, root: &Path) -> BuildRequest {
    let mut r = BuildRequest::new(ctx, root);
    r.jobs = 2;
    r
}

fn image_config(root: &Path, digest: &rbuild_cache::Digest) -> rbuild_image::Image {
    rbuild_image::Store::open(root)
        .unwrap()
        .image(digest)
        .unwrap()
}

#[test]
fn scratch_copy_build_caches_and_invalidates_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let (ctx, root) = (tmp.path().join("ctx"), tmp.path().join("store"));
    context(&ctx);

    let first = build(&request(&ctx, &root), &Record::default()).unwrap();
    let image = image_config(&root, &first.manifest_digest);
    let c = &image.config;
    assert!(c.config.env.contains(&"APP=/app".to_string()));
    assert!(c.config.env.contains(&"V=1".to_string()));
    assert!(c.config.env.iter().any(|e| e.starts_with("PATH=")));
    assert_eq!(c.config.working_dir, "/app");
    assert_eq!(c.config.cmd, Some(vec!["/app/a.txt".to_string()]));
    assert_eq!(c.config.labels["stage"], "final");
    assert!(c.config.exposed_ports.contains_key("80/tcp"));
    // WORKDIR and the two COPYs made layers; the history matches them.
    assert_eq!(image.layers().len(), 3);
    assert_eq!(c.history.len(), 8);
    assert_eq!(c.history.iter().filter(|h| !h.empty_layer).count(), 3);
    assert_eq!(
        c.history[3].created_by.as_deref(),
        Some("COPY a.txt ./ # buildkit")
    );

    // Unchanged: every step cached, the same image.
    let rec = Record::default();
    let second = build(&request(&ctx, &root), &rec).unwrap();
    assert_eq!(second.manifest_digest, first.manifest_digest);
    assert!(rec.0.lock().unwrap().is_empty());
    assert!(second.steps.iter().all(|s| s.status == StepStatus::Cached));

    // Touch one file: only the COPY that selects it and what follows run,
    // and --explain names the file with both digests.
    fs::write(ctx.join("dir/sub/c.txt"), "changed\n").unwrap();
    let rec = Record::default();
    let mut req = request(&ctx, &root);
    req.explain = true;
    let third = build(&req, &rec).unwrap();
    assert_ne!(third.manifest_digest, first.manifest_digest);
    assert_eq!(
        *rec.0.lock().unwrap(),
        vec![
            "COPY dir/ ./dir/",
            "LABEL stage=final",
            "EXPOSE 80",
            "CMD [\"/app/a.txt\"]"
        ]
    );
    let copy = third
        .steps
        .iter()
        .find(|s| s.info.instruction == "COPY dir/ ./dir/")
        .unwrap();
    let explain = copy.explain.as_ref().unwrap();
    assert!(explain.has_previous);
    match &explain.differences[0] {
        Difference::Files { changes } => {
            assert_eq!(changes.len(), 1);
            assert_eq!(changes[0].path, "dir/sub/c.txt");
            assert!(changes[0].old.is_some() && changes[0].new.is_some());
            assert_ne!(changes[0].old, changes[0].new);
        }
        other => panic!("{other:?}"),
    }
    let label = third
        .steps
        .iter()
        .find(|s| s.info.instruction == "LABEL stage=final")
        .unwrap();
    assert!(matches!(
        label.explain.as_ref().unwrap().differences[0],
        Difference::Parent { .. }
    ));

    // A build arg feeding ENV invalidates from the ENV on.
    let rec = Record::default();
    let mut req = request(&ctx, &root);
    req.build_args = BTreeMap::from([("V".to_string(), "2".to_string())]);
    build(&req, &rec).unwrap();
    let ran = rec.0.lock().unwrap();
    assert_eq!(ran[0], "ARG V=2");
    assert!(ran.contains(&"COPY a.txt ./".to_string()));
}

#[test]
fn source_date_epoch_gives_the_same_digest_in_two_stores() {
    let tmp = tempfile::tempdir().unwrap();
    let ctx = tmp.path().join("ctx");
    context(&ctx);
    let digests: Vec<_> = ["s1", "s2"]
        .iter()
        .map(|s| {
            let mut req = request(&ctx, &tmp.path().join(s));
            req.source_date_epoch = Some(1_700_000_000);
            build(&req, &Record::default()).unwrap().manifest_digest
        })
        .collect();
    assert_eq!(digests[0], digests[1]);
    let image = image_config(&tmp.path().join("s1"), &digests[0]);
    assert_eq!(
        image.config.created.as_deref(),
        Some("2023-11-14T22:13:20Z")
    );
}

fn index_json(root: &Path) -> String {
    fs::read_to_string(root.join("index.json")).unwrap_or_default()
}

fn failing(text: &str) -> (BuildError, bool) {
    let tmp = tempfile::tempdir().unwrap();
    let (ctx, root) = (tmp.path().join("ctx"), tmp.path().join("store"));
    context(&ctx);
    // A first good build so the store has content to compare.
    build(&request(&ctx, &root), &Record::default()).unwrap();
    let before = index_json(&root);
    let mut req = request(&ctx, &root);
    req.dockerfile = DockerfileSource::Text {
        name: "Dockerfile".into(),
        text: text.into(),
    };
    // Missing images stay missing: no registry lookups from these tests.
    req.pull = PullPolicy::Never;
    let err = build(&req, &Record::default()).unwrap_err();
    (err, index_json(&root) == before)
}

#[test]
fn bad_input_fails_with_the_line_and_leaves_the_store_unchanged() {
    let (e, same) = failing("FROM scratch\nCOPY a.txt /a\nCOPY missing.txt /m\n");
    assert!(same);
    assert_eq!(e.line(), Some(3), "{e}");
    assert!(e.to_string().contains("missing.txt"), "{e}");

    let (e, same) = failing("FROM scratch\nCOPY ../outside /o\n");
    assert!(same);
    assert_eq!(e.line(), Some(2), "{e}");

    let (e, same) = failing("FROM scratch\nCOPY --from=nowhere /a /a\n");
    assert!(same);
    assert!(e.to_string().contains("nowhere"), "{e}");

    // Not in the store, and --pull=never keeps registries out of it.
    let (e, same) = failing("FROM no-such-image:1\nCOPY a.txt /a\n");
    assert!(same);
    assert!(
        matches!(e, BuildError::BaseImageNotFound { line: 1, .. }),
        "{e}"
    );
    assert!(e.to_string().contains("no-such-image:1"), "{e}");

    // A typo late in the file fails before anything runs.
    let (e, _) = failing("FROM scratch\nCOPY a.txt /a\nFROBNICATE x\n");
    assert!(matches!(e, BuildError::Parse { .. }), "{e}");
}

#[test]
fn multi_stage_copy_from_and_target() {
    let tmp = tempfile::tempdir().unwrap();
    let (ctx, root) = (tmp.path().join("ctx"), tmp.path().join("store"));
    context(&ctx);
    let text = "FROM scratch AS one\nCOPY a.txt /one/a\nFROM scratch AS two\nCOPY dir/ /two/\nFROM scratch AS unused\nCOPY missing /x\nFROM scratch\nCOPY --from=one /one/a /a\nCOPY --from=1 /two/b.txt /b\n";
    let mut req = request(&ctx, &root);
    req.dockerfile = DockerfileSource::Text {
        name: "Dockerfile".into(),
        text: text.into(),
    };
    let r = build(&req, &Record::default()).unwrap();
    // The unused stage (with its missing source) was never built.
    assert!(r.steps.iter().all(|s| s.info.stage_name != "unused"));
    let image = image_config(&root, &r.manifest_digest);
    assert_eq!(image.layers().len(), 2);

    req.target = Some("two".into());
    let r = build(&req, &Record::default()).unwrap();
    assert_eq!(r.target, "two");
    assert!(r.steps.iter().all(|s| s.info.stage_name == "two"));

    req.target = Some("nope".into());
    assert!(matches!(
        build(&req, &Record::default()),
        Err(BuildError::UnknownTarget { .. })
    ));
}

/// Serves the current `body` for every request on 127.0.0.1; returns the
/// base URL.
fn serve(body: std::sync::Arc<Mutex<String>>) -> String {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            while reader.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
                if line == "\r\n" {
                    break;
                }
                line.clear();
            }
            let body = body.lock().unwrap().clone();
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    format!("http://{addr}")
}

#[test]
fn add_url_downloads_and_keys_on_content() {
    let tmp = tempfile::tempdir().unwrap();
    let (ctx, root) = (tmp.path().join("ctx"), tmp.path().join("store"));
    context(&ctx);
    let build_with = |url: &str| {
        let mut req = request(&ctx, &root);
        req.dockerfile = DockerfileSource::Text {
            name: "Dockerfile".into(),
            text: format!("FROM scratch\nADD {url}/file.txt /dl/\nCOPY a.txt /a\n"),
        };
        let rec = Record::default();
        let r = build(&req, &rec).unwrap();
        let ran = rec.0.lock().unwrap().clone();
        (r, ran)
    };
    let body = std::sync::Arc::new(Mutex::new("one\n".to_string()));
    let url = serve(body.clone());
    let (r1, _) = build_with(&url);
    let image = image_config(&root, &r1.manifest_digest);
    assert_eq!(image.layers().len(), 2);
    // Same URL, same content: cached.
    let (r2, ran) = build_with(&url);
    assert!(ran.is_empty(), "{ran:?}");
    assert_eq!(r2.manifest_digest, r1.manifest_digest);
    // Different content behind the same URL: the ADD and what follows run
    // again.
    *body.lock().unwrap() = "two\n".to_string();
    let (_, ran) = build_with(&url);
    assert_eq!(ran.len(), 2, "{ran:?}");
    // Nothing downloaded is left behind.
    let leftovers: Vec<_> = fs::read_dir(root.join("tmp"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("add-"))
        .collect();
    assert!(leftovers.is_empty());
}

#[test]
fn onbuild_triggers_run_in_the_child_with_its_context() {
    let tmp = tempfile::tempdir().unwrap();
    let (ctx, root) = (tmp.path().join("ctx"), tmp.path().join("store"));
    context(&ctx);
    let mut req = request(&ctx, &root);
    req.dockerfile = DockerfileSource::Text {
        name: "parent".into(),
        text: "FROM scratch\nONBUILD COPY a.txt /from-trigger\nONBUILD ENV TRIGGERED=1\n".into(),
    };
    let parent = build(&req, &Record::default()).unwrap();
    let store = rbuild_image::Store::open(&root).unwrap();
    store
        .tag(
            &rbuild_image::Reference::parse("parent:1").unwrap(),
            &parent.manifest_digest,
        )
        .unwrap();

    fs::write(ctx.join("a.txt"), "child context\n").unwrap();
    req.dockerfile = DockerfileSource::Text {
        name: "child".into(),
        text: "FROM parent:1\nONBUILD RUN echo grandchild\n".into(),
    };
    let child = build(&req, &Record::default()).unwrap();
    let texts: Vec<&str> = child
        .steps
        .iter()
        .map(|s| s.info.instruction.as_str())
        .collect();
    assert_eq!(
        texts,
        vec![
            "FROM parent:1",
            "COPY a.txt /from-trigger",
            "ENV TRIGGERED=1",
            "ONBUILD RUN echo grandchild"
        ]
    );
    let image = image_config(&root, &child.manifest_digest);
    assert!(image.config.config.env.contains(&"TRIGGERED=1".to_string()));
    // Only the child's own ONBUILD lines are kept.
    assert_eq!(image.config.config.on_build, vec!["RUN echo grandchild"]);
    assert_eq!(image.layers().len(), 1);
}
