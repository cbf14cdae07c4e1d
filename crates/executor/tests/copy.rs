//! COPY/ADD semantics on temporary directories: destination rules,
//! wildcards, metadata, `--chmod`/`--chown`/`--parents`/`--exclude`,
//! `--from` sources, heredocs, and hostile destinations in the image.

use std::fs;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::Path;

use rbuild_executor::context::BuildContext;
use rbuild_executor::copy::{apply, Chmod, CopyError, CopyOptions, CopySource};

fn write(root: &Path, rel: &str, data: &str) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
    fs::write(p, data).expect("write");
}

/// The context used by most cases.
fn context() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let r = dir.path();
    write(r, "a.txt", "A");
    write(r, "b.txt", "B");
    write(r, "src/main.rs", "main");
    write(r, "src/lib.rs", "lib");
    write(r, "src/sub/deep.rs", "deep");
    write(r, "x/y/z.txt", "Z");
    symlink("main.rs", r.join("src/link")).expect("symlink");
    symlink("a.txt", r.join("a-link")).expect("symlink");
    fs::set_permissions(r.join("b.txt"), fs::Permissions::from_mode(0o751)).expect("chmod");
    dir
}

/// Every path under `root` with its kind, content or link target.
fn tree(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        let mut names: Vec<_> = fs::read_dir(dir)
            .expect("readdir")
            .map(|e| e.expect("entry").path())
            .collect();
        names.sort();
        for p in names {
            let rel = p
                .strip_prefix(root)
                .expect("prefix")
                .to_string_lossy()
                .into_owned();
            let m = fs::symlink_metadata(&p).expect("lstat");
            if m.file_type().is_symlink() {
                out.push(format!(
                    "{rel} -> {}",
                    fs::read_link(&p).expect("readlink").display()
                ));
            } else if m.is_dir() {
                out.push(format!("{rel}/"));
                walk(root, &p, out);
            } else {
                out.push(format!(
                    "{rel} = {}",
                    fs::read_to_string(&p).unwrap_or_default()
                ));
            }
        }
    }
    walk(root, root, &mut out);
    out
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// Runs one COPY from the context into a fresh rootfs prepared by `setup`.
fn copy_case(
    sources: &[&str],
    dest: &str,
    workdir: &str,
    opts: &CopyOptions,
    setup: impl FnOnce(&Path),
) -> (tempfile::TempDir, Result<(), CopyError>) {
    let ctx_dir = context();
    let ctx = BuildContext::open(ctx_dir.path(), None).expect("open");
    let sel = ctx.select(&strings(sources), &[], true).expect("select");
    let rootfs = tempfile::tempdir().expect("rootfs");
    setup(rootfs.path());
    let res = apply(
        rootfs.path(),
        CopySource::Context(&sel),
        dest,
        workdir,
        opts,
    );
    (rootfs, res)
}

#[test]
fn destination_rules() {
    /// name, sources, destination, workdir, rootfs setup, expected tree.
    type Case = (
        &'static str,
        Vec<&'static str>,
        &'static str,
        &'static str,
        fn(&Path),
        Vec<&'static str>,
    );
    let none: fn(&Path) = |_| {};
    let existing_dir: fn(&Path) = |r| fs::create_dir(r.join("existing")).expect("mkdir");
    let cases: Vec<Case> = vec![
        (
            "file into dir/",
            vec!["a.txt"],
            "/d/",
            "/",
            none,
            vec!["d/", "d/a.txt = A"],
        ),
        (
            "file to new path",
            vec!["a.txt"],
            "/new",
            "/",
            none,
            vec!["new = A"],
        ),
        (
            "file to existing dir",
            vec!["a.txt"],
            "/existing",
            "/",
            existing_dir,
            vec!["existing/", "existing/a.txt = A"],
        ),
        (
            "dir copies contents",
            vec!["src"],
            "/app",
            "/",
            none,
            vec![
                "app/",
                "app/lib.rs = lib",
                "app/link -> main.rs",
                "app/main.rs = main",
                "app/sub/",
                "app/sub/deep.rs = deep",
            ],
        ),
        (
            "wildcard into dir",
            vec!["*.txt"],
            "/w/",
            "/",
            none,
            vec!["w/", "w/a.txt = A", "w/b.txt = B"],
        ),
        (
            "relative to workdir",
            vec!["a.txt"],
            "rel/",
            "/work/dir",
            none,
            vec![
                "work/",
                "work/dir/",
                "work/dir/rel/",
                "work/dir/rel/a.txt = A",
            ],
        ),
        (
            "dot is workdir",
            vec!["a.txt"],
            ".",
            "/wd",
            none,
            vec!["wd/", "wd/a.txt = A"],
        ),
        (
            "symlink source followed, named as written",
            vec!["a-link"],
            "/l/",
            "/",
            none,
            vec!["l/", "l/a-link = A"],
        ),
        (
            "several sources",
            vec!["a.txt", "x"],
            "/m/",
            "/",
            none,
            vec!["m/", "m/a.txt = A", "m/y/", "m/y/z.txt = Z"],
        ),
        (
            "file replaces file",
            vec!["a.txt"],
            "/f",
            "/",
            |r| fs::write(r.join("f"), "old").expect("write"),
            vec!["f = A"],
        ),
    ];
    for (name, sources, dest, workdir, setup, want) in cases {
        let (rootfs, res) = copy_case(&sources, dest, workdir, &CopyOptions::default(), setup);
        res.unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(tree(rootfs.path()), want, "{name}");
    }
}

#[test]
fn errors() {
    let (_r, res) = copy_case(
        &["a.txt", "b.txt"],
        "/nodir",
        "/",
        &CopyOptions::default(),
        |_| {},
    );
    assert!(
        matches!(res, Err(CopyError::MultipleSources { .. })),
        "{res:?}"
    );
    let (_r, res) = copy_case(&["a.txt"], "/f/x", "/", &CopyOptions::default(), |r| {
        fs::write(r.join("f"), "file").expect("write")
    });
    assert!(
        matches!(res, Err(CopyError::NotADirectory { .. })),
        "{res:?}"
    );
    let (_r, res) = copy_case(&["src"], "/f", "/", &CopyOptions::default(), |r| {
        fs::write(r.join("f"), "file").expect("write")
    });
    assert!(
        matches!(res, Err(CopyError::NotADirectory { .. })),
        "{res:?}"
    );
    // Inside a copied tree, a file cannot replace an existing directory.
    let (_r, res) = copy_case(&["src"], "/app", "/", &CopyOptions::default(), |r| {
        fs::create_dir_all(r.join("app/main.rs/inner")).expect("mkdir")
    });
    assert!(matches!(res, Err(CopyError::Conflict { .. })), "{res:?}");
    let opts = CopyOptions {
        chown: Some("nosuchuser".into()),
        ..Default::default()
    };
    let (_r, res) = copy_case(&["a.txt"], "/d/", "/", &opts, |_| {});
    let err = res.expect_err("unknown user");
    assert!(err.to_string().contains("nosuchuser"), "{err}");
}

#[test]
fn metadata_mode_mtime_and_parents() {
    let ctx_dir = context();
    let old = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000);
    fs::File::options()
        .write(true)
        .open(ctx_dir.path().join("b.txt"))
        .expect("open")
        .set_modified(old)
        .expect("mtime");
    let ctx = BuildContext::open(ctx_dir.path(), None).expect("open");
    let sel = ctx
        .select(&strings(&["b.txt", "src"]), &[], true)
        .expect("select");
    let rootfs = tempfile::tempdir().expect("rootfs");
    apply(
        rootfs.path(),
        CopySource::Context(&sel),
        "/deep/er/",
        "/",
        &CopyOptions::default(),
    )
    .expect("copy");
    let r = rootfs.path();
    let m = fs::metadata(r.join("deep/er/b.txt")).expect("stat");
    assert_eq!(m.mode() & 0o7777, 0o751);
    assert_eq!(m.mtime(), 1_000_000);
    // Created parents: 0755, root-owned.
    let p = fs::metadata(r.join("deep")).expect("stat");
    assert_eq!((p.mode() & 0o7777, p.uid(), p.gid()), (0o755, 0, 0));
    // Context files are owned by root whatever their owner on the host.
    assert_eq!(
        fs::metadata(r.join("deep/er/main.rs")).expect("stat").uid(),
        0
    );

    for (chmod, file_mode, dir_mode) in [("640", 0o640, 0o640), ("u+x,go-r", 0o700, 0o711)] {
        let rootfs = tempfile::tempdir().expect("rootfs");
        let opts = CopyOptions {
            chmod: Some(Chmod::parse(chmod).expect("chmod")),
            ..Default::default()
        };
        apply(rootfs.path(), CopySource::Context(&sel), "/c/", "/", &opts).expect("copy");
        let f = fs::metadata(rootfs.path().join("c/main.rs")).expect("stat");
        assert_eq!(f.mode() & 0o777, file_mode, "{chmod}");
        let d = fs::metadata(rootfs.path().join("c/sub")).expect("stat");
        assert_eq!(d.mode() & 0o777, dir_mode, "{chmod}");
        // The created parent gets the --chmod mode as well (BuildKit).
        let parent = fs::metadata(rootfs.path().join("c")).expect("stat");
        let want = Chmod::parse(chmod).expect("chmod").apply(0o755, true);
        assert_eq!(parent.mode() & 0o7777, want, "{chmod}");
    }
}

#[test]
fn parents_flag_keeps_source_paths() {
    let opts = CopyOptions {
        parents: true,
        ..Default::default()
    };
    let (rootfs, res) = copy_case(
        &["src/sub/deep.rs", "x/./y/z.txt"],
        "/p/",
        "/",
        &opts,
        |_| {},
    );
    res.expect("copy");
    assert_eq!(
        tree(rootfs.path()),
        [
            "p/",
            "p/src/",
            "p/src/sub/",
            "p/src/sub/deep.rs = deep",
            "p/y/",
            "p/y/z.txt = Z"
        ]
    );
}

#[test]
fn heredoc_and_from_sources() {
    let rootfs = tempfile::tempdir().expect("rootfs");
    apply(
        rootfs.path(),
        CopySource::Inline {
            name: "hello.sh",
            data: b"echo hi\n",
        },
        "/usr/bin/",
        "/",
        &CopyOptions::default(),
    )
    .expect("inline");
    let m = fs::metadata(rootfs.path().join("usr/bin/hello.sh")).expect("stat");
    assert_eq!(m.mode() & 0o777, 0o644);

    // Another stage's rootfs: wildcards, a symlinked dir followed inside it,
    // ownership preserved, --exclude applied.
    let stage = tempfile::tempdir().expect("stage");
    let s = stage.path();
    write(s, "opt/app/bin/tool", "T");
    write(s, "opt/app/bin/tool.debug", "D");
    write(s, "opt/app/README", "R");
    symlink("/opt/app", s.join("current")).expect("symlink");
    std::os::unix::fs::lchown(s.join("opt/app/README"), Some(123), Some(456)).expect("chown");
    let paths = strings(&["current/bin", "opt/app/READ*"]);
    let opts = CopyOptions {
        exclude: strings(&["*.debug"]),
        ..Default::default()
    };
    apply(
        rootfs.path(),
        CopySource::Dir {
            root: s,
            paths: &paths,
        },
        "/dst/",
        "/",
        &opts,
    )
    .expect("from");
    let got = tree(&rootfs.path().join("dst"));
    assert_eq!(got, ["README = R", "tool = T"]);
    let m = fs::metadata(rootfs.path().join("dst/README")).expect("stat");
    assert_eq!((m.uid(), m.gid()), (123, 456));
    let missing = strings(&["nope"]);
    let err = apply(
        rootfs.path(),
        CopySource::Dir {
            root: s,
            paths: &missing,
        },
        "/dst/",
        "/",
        &CopyOptions::default(),
    )
    .expect_err("missing");
    assert!(err.to_string().contains("\"nope\""), "{err}");
}

#[test]
fn hostile_destinations_stay_in_the_rootfs() {
    // Symlinks in the image pointing at `/`, above the root, and at an
    // absolute path: the copy lands inside the rootfs, never on the host.
    let host_marker = tempfile::tempdir().expect("host dir");
    let setup = |r: &Path| {
        symlink("/", r.join("to-root")).expect("symlink");
        symlink("../../../../../../..", r.join("up")).expect("symlink");
        symlink(host_marker.path(), r.join("abs")).expect("symlink");
    };
    for dest in ["/to-root/etc/", "/up/etc/", "/abs/"] {
        let (rootfs, res) = copy_case(&["a.txt"], dest, "/", &CopyOptions::default(), setup);
        res.unwrap_or_else(|e| panic!("{dest}: {e}"));
        let r = rootfs.path();
        let inside = if dest == "/abs/" {
            r.join(host_marker.path().strip_prefix("/").expect("abs"))
                .join("a.txt")
        } else {
            r.join("etc/a.txt")
        };
        assert_eq!(fs::read_to_string(&inside).expect(dest), "A", "{dest}");
    }
    assert_eq!(
        fs::read_dir(host_marker.path()).expect("readdir").count(),
        0
    );
    // Merged-/usr images: an existing `/lib -> usr/lib` is written through.
    let (rootfs, res) = copy_case(&["x"], "/", "/", &CopyOptions::default(), |r| {
        fs::create_dir_all(r.join("usr/y")).expect("mkdir");
        symlink("usr/y", r.join("y")).expect("symlink");
    });
    res.expect("copy");
    let r = rootfs.path();
    assert!(fs::symlink_metadata(r.join("y"))
        .expect("lstat")
        .file_type()
        .is_symlink());
    assert_eq!(
        fs::read_to_string(r.join("usr/y/z.txt")).expect("read"),
        "Z"
    );
}

#[test]
fn hard_links_and_fifos_are_kept() {
    let ctx_dir = tempfile::tempdir().expect("ctx");
    let c = ctx_dir.path();
    write(c, "d/one", "1");
    fs::hard_link(c.join("d/one"), c.join("d/two")).expect("link");
    let fifo = std::ffi::CString::new(c.join("d/pipe").as_os_str().as_encoded_bytes()).expect("c");
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    let ctx = BuildContext::open(c, None).expect("open");
    let sel = ctx.select(&strings(&["d"]), &[], true).expect("select");
    let rootfs = tempfile::tempdir().expect("rootfs");
    apply(
        rootfs.path(),
        CopySource::Context(&sel),
        "/t",
        "/",
        &CopyOptions::default(),
    )
    .expect("copy");
    let r = rootfs.path();
    let one = fs::metadata(r.join("t/one")).expect("one");
    let two = fs::metadata(r.join("t/two")).expect("two");
    assert_eq!(one.ino(), two.ino());
    let pipe = fs::symlink_metadata(r.join("t/pipe")).expect("pipe");
    assert!(std::os::unix::fs::FileTypeExt::is_fifo(&pipe.file_type()));
}

#[test]
fn chown_resolves_names_in_the_image() {
    let etc = |r: &Path| {
        write(
            r,
            "etc/passwd",
            "root:x:0:0::/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n",
        );
        write(r, "etc/group", "root:x:0:\napp:x:1001:\nstaff:x:50:\n");
    };
    for (spec, want) in [
        ("app", (1000, 1001)),
        ("app:staff", (1000, 50)),
        ("77", (77, 77)),
    ] {
        let opts = CopyOptions {
            chown: Some(spec.into()),
            ..Default::default()
        };
        let (rootfs, res) = copy_case(&["src"], "/new/app/", "/", &opts, etc);
        res.unwrap_or_else(|e| panic!("{spec}: {e}"));
        let r = rootfs.path();
        for p in ["new", "new/app", "new/app/main.rs", "new/app/sub"] {
            let m = fs::symlink_metadata(r.join(p)).expect(p);
            assert_eq!((m.uid(), m.gid()), want, "{spec} {p}");
        }
        let link = fs::symlink_metadata(r.join("new/app/link")).expect("link");
        assert_eq!((link.uid(), link.gid()), want, "{spec} link");
    }
}

#[test]
fn add_extracts_local_archives_and_copy_does_not() {
    let ctx_dir = tempfile::tempdir().expect("ctx");
    let c = ctx_dir.path();
    write(c, "payload/p/hello.txt", "hi");
    let mut names = Vec::new();
    for (name, flag) in [
        ("a.tar", "-cf"),
        ("a.tgz", "-czf"),
        ("a.tar.bz2", "-cjf"),
        ("a.tar.xz", "-cJf"),
        ("a.tar.zst", "--zstd"),
    ] {
        let mut cmd = std::process::Command::new("tar");
        cmd.current_dir(c.join("payload"));
        if flag == "--zstd" {
            cmd.args(["--zstd", "-cf", &format!("../{name}"), "p"]);
        } else {
            cmd.args([flag, &format!("../{name}"), "p"]);
        }
        match cmd.status() {
            Ok(s) if s.success() => names.push(name),
            other => println!("skipped {name}: tar could not create it ({other:?})"),
        }
    }
    assert!(
        names.len() >= 2,
        "tar must at least make plain and gzip archives"
    );
    write(c, "not-an-archive.gz", "plain text");
    let ctx = BuildContext::open(c, None).expect("open");
    for name in names {
        let sel = ctx.select(&strings(&[name]), &[], true).expect("select");
        let rootfs = tempfile::tempdir().expect("rootfs");
        let add = CopyOptions {
            extract_archives: true,
            ..Default::default()
        };
        apply(rootfs.path(), CopySource::Context(&sel), "/x", "/", &add).expect(name);
        assert_eq!(
            fs::read_to_string(rootfs.path().join("x/p/hello.txt")).expect(name),
            "hi",
            "{name}"
        );
        let rootfs = tempfile::tempdir().expect("rootfs");
        apply(
            rootfs.path(),
            CopySource::Context(&sel),
            "/x",
            "/",
            &CopyOptions::default(),
        )
        .expect(name);
        assert!(
            rootfs.path().join("x").is_file(),
            "COPY keeps {name} as a file"
        );
    }
    let sel = ctx
        .select(&strings(&["not-an-archive.gz"]), &[], true)
        .expect("select");
    let rootfs = tempfile::tempdir().expect("rootfs");
    let add = CopyOptions {
        extract_archives: true,
        ..Default::default()
    };
    apply(rootfs.path(), CopySource::Context(&sel), "/d/", "/", &add).expect("plain");
    assert_eq!(
        fs::read_to_string(rootfs.path().join("d/not-an-archive.gz")).expect("read"),
        "plain text"
    );
}
