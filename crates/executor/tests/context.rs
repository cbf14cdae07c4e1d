//! Build context walking, `.dockerignore`, source selection and digests,
//! including hostile contexts (symlinks out, `../x`, FIFOs, sockets).

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;

use rbuild_cache::{Digest, StatCache};
use rbuild_executor::context::{read_ignore_text, BuildContext, ContextError, EntryKind};

fn write(root: &Path, rel: &str, data: &str) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
    fs::write(p, data).expect("write");
}

fn sample() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = dir.path();
    write(r, "Dockerfile", "FROM scratch\n");
    write(r, "src/main.rs", "fn main() {}\n");
    write(r, "src/lib.rs", "pub fn f() {}\n");
    write(r, "docs/a.md", "a\n");
    write(r, "docs/keep/k.md", "k\n");
    write(r, "build/out.o", "obj\n");
    write(r, "build/sub/x.tmp", "tmp\n");
    write(r, "notes.tmp", "n\n");
    symlink("src/main.rs", r.join("main-link")).expect("symlink");
    symlink("../src/main.rs", r.join("src/up-link")).expect("symlink");
    dir
}

fn keys(ctx: &BuildContext) -> Vec<String> {
    ctx.entries().iter().map(|(p, _)| p.clone()).collect()
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn dockerignore_is_applied_with_reinclusion_inside_excluded_dirs() {
    let dir = sample();
    let ctx = BuildContext::open(
        dir.path(),
        Some("docs\n!docs/keep/k.md\n**/*.tmp\nbuild/\n"),
    )
    .expect("open");
    assert_eq!(
        keys(&ctx),
        [
            "Dockerfile",
            "docs",
            "docs/keep",
            "docs/keep/k.md",
            "main-link",
            "src",
            "src/lib.rs",
            "src/main.rs",
            "src/up-link"
        ]
    );
    // Anchored at the root: `main.rs` alone excludes nothing in src/.
    let ctx = BuildContext::open(dir.path(), Some("main.rs\n")).expect("open");
    assert!(ctx.get("src/main.rs").is_some());
    let err = BuildContext::open(dir.path(), Some("a[x-]\n")).unwrap_err();
    assert!(matches!(err, ContextError::Ignore(_)), "{err}");
}

#[test]
fn select_files_dirs_wildcards_and_errors() {
    let dir = sample();
    let ctx = BuildContext::open(dir.path(), Some("build\n")).expect("open");
    let sel = ctx
        .select(&strings(&["src/*.rs", "docs"]), &[], true)
        .expect("select");
    let paths: Vec<_> = sel.sources().iter().map(|s| s.path.as_str()).collect();
    assert_eq!(paths, ["src/lib.rs", "src/main.rs", "docs"]);
    assert!(sel.sources()[2].is_dir);
    let rels: Vec<_> = sel.sources()[2].files.iter().map(|f| f.rel).collect();
    assert_eq!(rels, ["", "a.md", "keep", "keep/k.md"]);

    let err = ctx.select(&strings(&["nope.txt"]), &[], true).unwrap_err();
    assert!(err.to_string().contains("\"nope.txt\""), "{err}");
    // Excluded by .dockerignore means absent.
    let err = ctx
        .select(&strings(&["build/out.o"]), &[], true)
        .unwrap_err();
    assert!(matches!(err, ContextError::NotFound { .. }), "{err}");
    let err = ctx.select(&strings(&["*.nothing"]), &[], true).unwrap_err();
    assert!(matches!(err, ContextError::NoMatch { .. }), "{err}");
    // A leading slash is the context root.
    let sel = ctx
        .select(&strings(&["/src/lib.rs"]), &[], true)
        .expect("abs");
    assert_eq!(sel.sources()[0].path, "src/lib.rs");
}

#[test]
fn exclude_flag_applies_inside_selected_dirs() {
    let dir = sample();
    let ctx = BuildContext::open(dir.path(), None).expect("open");
    let sel = ctx
        .select(
            &strings(&["."]),
            &strings(&["**/*.tmp", "docs", "!docs/keep"]),
            true,
        )
        .expect("select");
    let rels: Vec<_> = sel.sources()[0].files.iter().map(|f| f.rel).collect();
    assert!(rels.contains(&"docs/keep/k.md"), "{rels:?}");
    assert!(
        rels.contains(&"docs"),
        "parent of a re-included path: {rels:?}"
    );
    assert!(!rels.contains(&"docs/a.md"), "{rels:?}");
    assert!(!rels.iter().any(|r| r.ends_with(".tmp")), "{rels:?}");
    // A file source is matched by its name.
    let sel = ctx
        .select(
            &strings(&["notes.tmp", "src/main.rs"]),
            &strings(&["*.tmp"]),
            true,
        )
        .expect("select");
    assert!(sel.sources()[0].files.is_empty());
    assert_eq!(sel.sources()[1].files.len(), 1);
}

#[test]
fn symlinks_named_as_sources_are_followed_inside_the_context_only() {
    let dir = sample();
    let r = dir.path();
    symlink("/etc/passwd", r.join("abs-out")).expect("symlink");
    symlink("../../outside", r.join("src/rel-out")).expect("symlink");
    symlink("src", r.join("srcdir-link")).expect("symlink");
    let ctx = BuildContext::open(r, None).expect("open");

    let sel = ctx
        .select(&strings(&["main-link"]), &[], true)
        .expect("follow");
    assert_eq!(sel.sources()[0].path, "src/main.rs");
    assert_eq!(sel.sources()[0].files[0].entry.kind, EntryKind::File);
    let sel = ctx
        .select(&strings(&["main-link"]), &[], false)
        .expect("nofollow");
    assert!(matches!(
        sel.sources()[0].files[0].entry.kind,
        EntryKind::Symlink(_)
    ));
    // Through a symlinked directory, and a link that climbs back inside.
    let sel = ctx
        .select(&strings(&["srcdir-link/lib.rs"]), &[], true)
        .expect("dir link");
    assert_eq!(sel.sources()[0].path, "src/lib.rs");
    let sel = ctx
        .select(&strings(&["src/up-link"]), &[], true)
        .expect("up link");
    assert_eq!(sel.sources()[0].path, "src/main.rs");

    for (src, via) in [
        ("abs-out", "abs-out -> /etc/passwd"),
        ("src/rel-out", "src/rel-out"),
    ] {
        let err = ctx.select(&strings(&[src]), &[], true).unwrap_err();
        match &err {
            ContextError::OutsideContext { name, via: Some(v) } => {
                assert_eq!(name, src);
                assert!(v.starts_with(via), "{v}");
            }
            other => panic!("{src}: {other}"),
        }
    }
    for src in ["../x", "src/../../x", ".."] {
        let err = ctx.select(&strings(&[src]), &[], true).unwrap_err();
        assert!(
            matches!(err, ContextError::OutsideContext { .. }),
            "{src}: {err}"
        );
        assert!(err.to_string().contains(src), "{err}");
    }
    // Inside a selected directory, symlinks stay symlinks (never followed).
    let sel = ctx.select(&strings(&["src"]), &[], true).expect("dir");
    let link = sel.sources()[0]
        .files
        .iter()
        .find(|f| f.rel == "rel-out")
        .expect("rel-out listed");
    assert_eq!(link.entry.kind, EntryKind::Symlink("../../outside".into()));
}

#[test]
fn special_files_are_kept_as_nodes_or_skipped() {
    let dir = sample();
    let r = dir.path();
    let fifo = r.join("pipe");
    let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).expect("cstring");
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    let _sock = std::os::unix::net::UnixListener::bind(r.join("sock")).expect("socket");
    let ctx = BuildContext::open(r, None).expect("open");
    assert_eq!(ctx.get("pipe").unwrap().kind, EntryKind::Fifo);
    assert!(ctx.get("sock").is_none());
    assert_eq!(ctx.skipped(), ["sock"]);
    // Digesting a selection with a FIFO never opens it (would block).
    let store = tempfile::tempdir().expect("store");
    let cache = StatCache::load(store.path(), "ctx").expect("cache");
    ctx.select(&strings(&["."]), &[], true)
        .expect("select")
        .digest(&cache)
        .expect("digest");
}

#[test]
fn digest_ignores_mtime_and_names_changed_files() {
    let dir = sample();
    let r = dir.path();
    let store = tempfile::tempdir().expect("store");
    let digest = || {
        let cache = StatCache::load(store.path(), "ctx").expect("cache");
        let ctx = BuildContext::open(r, None).expect("open");
        let d = ctx
            .select(&strings(&["src", "docs"]), &[], true)
            .expect("select")
            .digest(&cache)
            .expect("digest");
        cache.save().expect("save");
        d
    };
    let first = digest();
    assert_eq!(first.files.len(), 8);
    // mtime only: same digest.
    let f = fs::File::options()
        .write(true)
        .open(r.join("src/lib.rs"))
        .expect("open");
    f.set_modified(std::time::SystemTime::UNIX_EPOCH)
        .expect("set mtime");
    assert_eq!(digest(), first);
    // Content change: new digest, and exactly that file differs.
    write(r, "src/lib.rs", "pub fn g() {}\n");
    let second = digest();
    assert_ne!(second.digest, first.digest);
    let changed: Vec<_> = first
        .files
        .iter()
        .zip(&second.files)
        .filter(|(a, b)| a != b)
        .map(|(a, _)| a.0.as_str())
        .collect();
    assert_eq!(changed, ["src/lib.rs"]);
    // Mode change alone changes the digest.
    fs::set_permissions(r.join("docs/a.md"), fs::Permissions::from_mode(0o600)).expect("chmod");
    assert_ne!(digest().digest, second.digest);
}

#[test]
fn digest_uses_the_stat_cache_instead_of_reading() {
    let dir = sample();
    let store = tempfile::tempdir().expect("store");
    let ctx = BuildContext::open(dir.path(), None).expect("open");
    let sel = ctx
        .select(&strings(&["src/main.rs"]), &[], true)
        .expect("select");
    let cache = StatCache::load(store.path(), "ctx").expect("cache");
    let real = sel.digest(&cache).expect("digest");
    assert_eq!(cache.len(), 1);
    // A recorded digest for the unchanged stat is trusted, not re-read.
    let planted = StatCache::load(store.path(), "other").expect("cache");
    let meta = fs::symlink_metadata(dir.path().join("src/main.rs")).expect("stat");
    planted.insert("src/main.rs", &meta, Digest::of_bytes(b"planted"));
    assert_ne!(sel.digest(&planted).expect("digest"), real);
}

#[test]
fn dockerfile_specific_ignore_file_wins() {
    let dir = sample();
    let r = dir.path();
    assert_eq!(read_ignore_text(r, None).expect("none"), None);
    write(r, ".dockerignore", "docs\n");
    write(r, "ci/app.Dockerfile", "FROM scratch\n");
    let df = r.join("ci/app.Dockerfile");
    assert_eq!(
        read_ignore_text(r, Some(&df)).expect("ctx").as_deref(),
        Some("docs\n")
    );
    write(r, "ci/app.Dockerfile.dockerignore", "src\n");
    assert_eq!(
        read_ignore_text(r, Some(&df)).expect("df").as_deref(),
        Some("src\n")
    );
}
