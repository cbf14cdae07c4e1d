//! `rbuild graph` end to end: the DOT of a two-stage Dockerfile (clusters,
//! parent and `--from` edges, `--target` pruning, a base image node), its
//! cached marks before and after a build and after a context change, and
//! the SVG rendering when graphviz is installed.

use std::path::{Path, PathBuf};
use std::process::Command;

struct World {
    dir: tempfile::TempDir,
}

impl World {
    fn new() -> World {
        let dir = tempfile::Builder::new()
            .prefix("rbuild-graph-")
            .tempdir()
            .expect("temp dir");
        std::fs::create_dir_all(dir.path().join("ctx")).expect("ctx dir");
        World { dir }
    }

    fn ctx(&self) -> PathBuf {
        self.dir.path().join("ctx")
    }

    fn write(&self, rel: &str, text: &str) {
        std::fs::write(self.ctx().join(rel), text).expect("write context file");
    }

    fn rbuild(&self, args: &[&str]) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_rbuild"))
            .arg("--root")
            .arg(self.dir.path().join("store"))
            .args(args)
            .env_remove("RBUILD_ROOT")
            .env_remove("SOURCE_DATE_EPOCH")
            .output()
            .expect("running rbuild")
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.rbuild(args);
        assert!(
            out.status.success(),
            "rbuild {args:?} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8 stdout")
    }

    fn graph(&self, extra: &[&str]) -> String {
        let ctx = self.ctx();
        let mut args = vec!["graph"];
        args.extend_from_slice(extra);
        args.push(ctx.to_str().expect("utf-8 path"));
        self.ok(&args)
    }
}

const DOCKERFILE: &str = "FROM scratch AS build\n\
                          COPY a.txt /out/a\n\
                          FROM scratch\n\
                          COPY b.txt /b\n\
                          COPY --from=build /out/a /a\n\
                          ENV MODE=fast\n";

fn two_stage() -> World {
    let w = World::new();
    w.write("a.txt", "a");
    w.write("b.txt", "b");
    w.write("Dockerfile", DOCKERFILE);
    w
}

/// The label line of each step node, by its id in the DOT text.
fn step_lines(dot: &str) -> Vec<&str> {
    dot.lines()
        .map(str::trim)
        .filter(|l| l.starts_with('n') && l.contains("[label="))
        .collect()
}

fn line_of<'a>(dot: &'a str, instruction: &str) -> &'a str {
    step_lines(dot)
        .into_iter()
        .find(|l| l.contains(instruction))
        .unwrap_or_else(|| panic!("no node for {instruction:?} in\n{dot}"))
}

/// The node id (`n3`) of the step whose label holds `instruction`.
fn id_of(dot: &str, instruction: &str) -> String {
    line_of(dot, instruction)
        .split_whitespace()
        .next()
        .expect("node id")
        .to_string()
}

#[test]
fn dot_has_stages_edges_and_cache_marks() {
    let w = two_stage();
    let dot = w.graph(&[]);
    assert!(dot.starts_with("digraph build {"), "{dot}");
    assert!(
        dot.contains("subgraph cluster_0 {\n    label=\"build\";"),
        "{dot}"
    );
    assert!(
        dot.contains("subgraph cluster_1 {\n    label=\"stage-1 (target)\";"),
        "{dot}"
    );
    assert_eq!(step_lines(&dot).len(), 6, "{dot}");
    let from_build = id_of(&dot, "[build 1/2] FROM scratch AS build");
    let copy_a = id_of(&dot, "COPY a.txt /out/a");
    let copy_b = id_of(&dot, "COPY b.txt /b");
    let copy_from = id_of(&dot, "COPY --from=build /out/a /a");
    let env = id_of(&dot, "ENV MODE=");
    for edge in [
        format!("{from_build} -> {copy_a} [style=solid];"),
        format!("{copy_b} -> {copy_from} [style=solid];"),
        format!("{copy_a} -> {copy_from} [style=dashed];"),
        format!("{copy_from} -> {env} [style=solid];"),
    ] {
        assert!(dot.contains(&edge), "missing {edge} in\n{dot}");
    }
    // Nothing is built yet: every step but the FROMs is to run.
    for instruction in ["COPY a.txt", "COPY b.txt", "COPY --from", "ENV"] {
        assert!(line_of(&dot, instruction).contains("\\nto run\""), "{dot}");
    }

    let ctx = w.ctx();
    w.ok(&["build", "-q", "-t", "g:1", ctx.to_str().unwrap()]);
    let dot = w.graph(&[]);
    for l in step_lines(&dot) {
        assert!(
            l.contains("\\nCACHED\", style=filled"),
            "not cached after a build: {l}"
        );
    }

    // A changed file: its COPY and everything after it run again; the
    // other stage stays cached.
    w.write("b.txt", "B");
    let dot = w.graph(&[]);
    assert!(line_of(&dot, "COPY a.txt").contains("CACHED"), "{dot}");
    for instruction in ["COPY b.txt", "COPY --from", "ENV"] {
        assert!(line_of(&dot, instruction).contains("\\nto run\""), "{dot}");
    }
}

#[test]
fn target_prunes_and_build_args_reach_the_keys() {
    let w = World::new();
    w.write("a.txt", "a");
    w.write(
        "Dockerfile",
        "FROM scratch AS one\nARG V=1\nCOPY a.txt /a$V\nFROM scratch AS two\nCOPY a.txt /b\n",
    );
    let dot = w.graph(&["--target", "one"]);
    assert!(dot.contains("label=\"one (target)\""), "{dot}");
    assert!(!dot.contains("cluster_1") && !dot.contains("[two"), "{dot}");
    let ctx = w.ctx();
    w.ok(&["build", "-q", "--target", "one", ctx.to_str().unwrap()]);
    assert!(line_of(&w.graph(&["--target", "one"]), "COPY").contains("CACHED"));
    let other = w.graph(&["--target", "one", "--build-arg", "V=2"]);
    assert!(line_of(&other, "COPY").contains("to run"), "{other}");
}

#[test]
fn base_images_are_drawn_as_nodes() {
    let w = World::new();
    let rootfs = w.dir.path().join("rootfs.tar");
    let mut b = tar::Builder::new(std::fs::File::create(&rootfs).unwrap());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o644);
    h.set_size(2);
    b.append_data(&mut h, "hello", &b"hi"[..]).unwrap();
    b.finish().unwrap();
    drop(b);
    w.ok(&["import", rootfs.to_str().unwrap(), "base:1"]);
    w.write("Dockerfile", "FROM base:1\nENV A=1\nRUN printf \"a\\n\"\n");
    let dot = w.graph(&[]);
    let image = dot
        .lines()
        .map(str::trim)
        .find(|l| l.contains("shape=ellipse"))
        .unwrap_or_else(|| panic!("no image node in\n{dot}"));
    assert!(image.contains("label=\"base:1\\nsha256:"), "{image}");
    let id = image.split_whitespace().next().unwrap();
    let from = id_of(&dot, "FROM base:1");
    assert!(
        dot.contains(&format!("{id} -> {from} [style=bold];")),
        "{dot}"
    );
    // Quotes and backslashes of an instruction are escaped for DOT.
    assert!(
        line_of(&dot, "RUN").contains(r#"RUN /bin/sh -c printf \"a\\n\"\nto run""#),
        "{dot}"
    );
}

#[test]
fn errors_point_at_the_dockerfile() {
    let w = World::new();
    w.write("Dockerfile", "FROM scratch\nCOPY missing.txt /x\n");
    let out = w.rbuild(&["graph", w.ctx().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("missing.txt"), "{err}");
    assert!(out.stdout.is_empty());
}

fn have_dot() -> bool {
    Command::new("dot").arg("-V").output().is_ok()
}

#[test]
fn svg_is_rendered_by_graphviz() {
    let w = two_stage();
    let out = w.rbuild(&["graph", "--format", "svg", w.ctx().to_str().unwrap()]);
    if !have_dot() {
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("graphviz"), "{err}");
        return;
    }
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let svg = String::from_utf8(out.stdout).unwrap();
    assert!(
        svg.starts_with("<?xml") || svg.starts_with("<svg"),
        "{}",
        &svg[..svg.len().min(200)]
    );
    assert!(svg.contains("</svg>"), "not a whole SVG");
    assert!(svg.contains("COPY b.txt /b"), "step labels are in the SVG");
}

/// Without `dot` on PATH the error says what to install.
#[test]
fn svg_without_graphviz_says_what_is_missing() {
    let w = two_stage();
    let empty = w.dir.path().join("empty-path");
    std::fs::create_dir_all(&empty).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_rbuild"))
        .arg("--root")
        .arg(w.dir.path().join("store"))
        .args(["graph", "--format", "svg"])
        .arg(w.ctx())
        .env("PATH", Path::new(&empty))
        .env_remove("RBUILD_ROOT")
        .output()
        .expect("running rbuild");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("needs graphviz's `dot`") && err.contains("apt-get install graphviz"),
        "{err}"
    );
}
