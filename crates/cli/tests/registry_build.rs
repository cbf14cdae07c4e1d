//! End-to-end builds against a real `docker-registry` with htpasswd auth:
//! FROM an image pushed by rbuild and read back by skopeo, `--push` and
//! `-o type=image,push=true`, a step cache shared between two stores
//! through the registry and through an OCI layout directory, and a wrong
//! password.

mod registry_support;
#[allow(dead_code)]
#[path = "cli/support.rs"]
mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use registry_support::{available, docker_config, sha256, Registry, PASSWORD, USER};
use serde_json::Value;
use support::{require_root, run, run_fails, run_ok, tool, umoci_unpack, World};

/// `rbuild --root ROOT ARGS` with the test's docker config.
fn rbuild(w: &World, root: &Path, cfg: &Path, args: &[&str]) -> Command {
    let mut c = w.cmd_root(root, args);
    c.env("DOCKER_CONFIG", cfg);
    c
}

/// `skopeo inspect --raw` of `docker://NAME` with the registry's user.
fn skopeo_raw(name: &str) -> Vec<u8> {
    let creds = format!("{USER}:{PASSWORD}");
    let out = run({
        let mut c = Command::new("skopeo");
        c.args(["inspect", "--raw", "--tls-verify=false", "--creds", &creds])
            .arg(format!("docker://{name}"));
        c
    });
    assert!(
        out.status.success(),
        "skopeo inspect {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A registry with the busybox base pushed by rbuild as
/// `HOST/base/busybox:1`, and a docker config that logs in to it.
struct Setup {
    reg: Registry,
    w: World,
    cfg: std::path::PathBuf,
    base: String,
}

fn setup() -> Setup {
    let reg = Registry::start();
    let w = World::new();
    let cfg = w.path("docker");
    docker_config(&cfg, &reg.host(), USER, PASSWORD);
    let base = format!("{}/base/busybox:1", reg.host());
    w.import_busybox(&base);
    let pushed = run_ok(rbuild(&w, &w.root(), &cfg, &["push", "-q", &base]));
    // skopeo reads exactly what was pushed.
    assert_eq!(sha256(&skopeo_raw(&base)), pushed.trim());
    Setup { reg, w, cfg, base }
}

#[test]
fn build_from_a_registry_image_in_a_fresh_store() {
    if !available() || !require_root("build_from_a_registry_image_in_a_fresh_store") {
        return;
    }
    let Setup { reg, w, cfg, base } = setup();
    w.write("a.txt", "from the context\n");
    w.dockerfile(&format!(
        "FROM {base}\nRUN echo built > /built && test -x /bin/busybox\nCOPY a.txt /a.txt\n"
    ));
    let fresh = w.path("fresh");
    let oci = w.path("oci");
    let ctx = w.ctx();
    run_ok(rbuild(
        &w,
        &fresh,
        &cfg,
        &[
            "build",
            "-q",
            "-o",
            &format!("type=oci,dest={},tar=false,name=app:1", oci.display()),
            ctx.to_str().unwrap(),
        ],
    ));
    let rootfs = umoci_unpack(&oci, "1", &w.path("bundle"));
    assert_eq!(
        std::fs::read_to_string(rootfs.join("built")).unwrap(),
        "built\n"
    );
    assert_eq!(
        std::fs::read_to_string(rootfs.join("a.txt")).unwrap(),
        "from the context\n"
    );
    assert!(rootfs.join("bin/busybox").is_file());
    // The base was pulled into the fresh store under its name, with the
    // registry's manifest digest.
    let digest = sha256(&skopeo_raw(&base));
    let index = std::fs::read_to_string(fresh.join("index.json")).unwrap();
    assert!(index.contains(&base) && index.contains(&digest), "{index}");

    // Interop the other way: what skopeo pushes (from the store, which is
    // an OCI layout), rbuild pulls and builds FROM.
    let by_skopeo = format!("{}/skopeo/busybox:2", reg.host());
    tool(
        "skopeo",
        &[
            "copy",
            "--dest-tls-verify=false",
            "--dest-creds",
            &format!("{USER}:{PASSWORD}"),
            &format!("oci:{}:1", w.root().display()),
            &format!("docker://{by_skopeo}"),
        ],
    );
    w.dockerfile(&format!(
        "FROM {by_skopeo}\nRUN test -x /bin/busybox && echo ok > /ok\n"
    ));
    run_ok(rbuild(
        &w,
        &w.path("fresh3"),
        &cfg,
        &["build", "-q", ctx.to_str().unwrap()],
    ));

    // Without credentials the registry refuses, and the error names the
    // image, its line and the registry.
    let anon = w.path("anon");
    std::fs::create_dir_all(&anon).unwrap();
    let err = run_fails(rbuild(
        &w,
        &w.path("fresh2"),
        &anon,
        &["build", "-q", ctx.to_str().unwrap()],
    ));
    assert!(err.contains(&by_skopeo), "{err}");
    assert!(err.contains("Dockerfile:1"), "{err}");
    assert!(
        err.contains(&reg.host()) && err.contains("unauthorized"),
        "{err}"
    );
}

/// The ids of step headers and of CACHED lines in plain progress output.
fn steps_and_cached(progress: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut steps = BTreeSet::new();
    let mut cached = BTreeSet::new();
    for line in progress.lines() {
        let Some((id, rest)) = line.split_once(' ') else {
            continue;
        };
        if !id.starts_with('#') {
            continue;
        }
        if rest.starts_with('[') {
            steps.insert(id.to_string());
        } else if rest == "CACHED" {
            cached.insert(id.to_string());
        }
    }
    (steps, cached)
}

/// Builds with plain progress; returns (image ID, progress output).
fn build_plain(w: &World, root: &Path, cfg: &Path, extra: &[&str]) -> (String, String) {
    let iid = root.with_extension("iid");
    let ctx = w.ctx();
    let mut args = vec![
        "build",
        "--progress",
        "plain",
        "--iidfile",
        iid.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    args.push(ctx.to_str().unwrap());
    let out = run(rbuild(w, root, cfg, &args));
    let progress = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "build failed:\n{progress}");
    (std::fs::read_to_string(&iid).unwrap(), progress)
}

#[test]
fn a_second_store_builds_entirely_from_an_exported_cache() {
    if !available() || !require_root("a_second_store_builds_entirely_from_an_exported_cache") {
        return;
    }
    let Setup { reg, w, cfg, base } = setup();
    w.write("a.txt", "input\n");
    // The random stamps make every RUN's output unique: a step that ran again
    // could not give the same image.
    w.dockerfile(&format!(
        "FROM {base} AS build\n\
         RUN echo one > /one && cat /proc/sys/kernel/random/uuid > /stamp1\n\
         COPY a.txt /a.txt\n\
         RUN cat /a.txt /stamp1 /proc/sys/kernel/random/uuid > /two\n\
         FROM {base}\n\
         COPY --from=build /two /copied/two\n\
         RUN cat /proc/sys/kernel/random/uuid > /final\n\
         ENV DONE=1\n"
    ));
    let cache_ref = format!("{}/cache/app:buildcache", reg.host());
    let local = w.path("local-cache");
    let min = w.path("min-cache");
    let (id_a, progress_a) = build_plain(
        &w,
        &w.root(),
        &cfg,
        &[
            // Nothing there yet: a warning, not a failure (the first build
            // of a branch).
            "--cache-from",
            &format!("type=registry,ref={cache_ref}"),
            "--cache-to",
            &format!("type=registry,ref={cache_ref},mode=max"),
            "--cache-to",
            &format!("type=local,dest={},mode=max", local.display()),
            "--cache-to",
            &format!("type=local,dest={},mode=min", min.display()),
        ],
    );
    let (steps, cached) = steps_and_cached(&progress_a);
    assert!(
        steps.len() >= 7 && cached.len() < steps.len(),
        "{progress_a}"
    );
    assert!(
        progress_a.contains(&format!(
            "WARNING: importing cache from type=registry,ref={cache_ref}"
        )),
        "{progress_a}"
    );

    // The registry holds an rbuild cache artifact that skopeo can read.
    let manifest: Value = serde_json::from_slice(&skopeo_raw(&cache_ref)).unwrap();
    assert_eq!(
        manifest["config"]["mediaType"],
        "application/vnd.rbuild.cache.config.v1+json"
    );
    let cache_layers: Vec<String> = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect();
    // Three layers of the build stage, two of the final one (ENV has none).
    assert_eq!(cache_layers.len(), 5, "{manifest}");

    // mode=min holds only the final stage's steps: its two layers.
    let min_manifest = layout_blob(&min, layout_manifest(&min).0);
    assert_eq!(min_manifest["layers"].as_array().unwrap().len(), 2);

    for (name, from) in [
        ("store-b", format!("type=registry,ref={cache_ref}")),
        ("store-c", format!("type=local,src={}", local.display())),
    ] {
        let root = w.path(name);
        let (id, progress) = build_plain(&w, &root, &cfg, &["--cache-from", &from]);
        let (steps, cached) = steps_and_cached(&progress);
        assert_eq!(steps, cached, "{name}: every step is CACHED:\n{progress}");
        let done = progress.lines().filter(|l| l.contains(" DONE ")).count();
        assert_eq!(done, 1, "{name}: nothing but the export ran:\n{progress}");
        assert_eq!(id, id_a, "{name}: same image as the first store");
        // The empty store pulled the base, and said so.
        assert!(
            progress.contains(&format!("#0 pulling {base} for linux/"))
                && progress.contains(&format!("#0 pulled {base}@sha256:")),
            "{progress}"
        );
        // Layers are fetched only when needed: the build stage's own layers
        // (RUN echo one, COPY a.txt, RUN cat) are not part of the image and
        // stay in the cache; the final image's layers are all here.
        let here = |d: &str| {
            root.join("blobs/sha256")
                .join(d.trim_start_matches("sha256:"))
                .is_file()
        };
        let fetched = cache_layers.iter().filter(|d| here(d)).count();
        assert_eq!(fetched, 2, "{name}: only the final stage's two layers");
        let out = run_ok(rbuild(&w, &root, &cfg, &["inspect", &id]));
        let image: Value = serde_json::from_str(&out).unwrap();
        assert!(image[0]["Config"]["Env"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e == "DONE=1"));
    }

    // A build that only imported can export again (the next CI machine's
    // cache): the layers it never needed are fetched for the export.
    let chain = w.path("chain-cache");
    let (id_d, progress_d) = build_plain(
        &w,
        &w.path("store-d"),
        &cfg,
        &[
            "--cache-from",
            &format!("type=registry,ref={cache_ref}"),
            "--cache-to",
            &format!("type=local,dest={},mode=max", chain.display()),
        ],
    );
    assert_eq!(id_d, id_a, "{progress_d}");
    for d in &cache_layers {
        let blob = chain
            .join("blobs/sha256")
            .join(d.trim_start_matches("sha256:"));
        assert!(blob.is_file(), "{d} missing from the re-export");
    }

    // A RUN that misses after cached steps gets its parent layers fetched
    // then; layers of the build stage are still not needed.
    w.dockerfile(&format!(
        "FROM {base} AS build\n\
         RUN echo one > /one && cat /proc/sys/kernel/random/uuid > /stamp1\n\
         COPY a.txt /a.txt\n\
         RUN cat /a.txt /stamp1 /proc/sys/kernel/random/uuid > /two\n\
         FROM {base}\n\
         COPY --from=build /two /copied/two\n\
         RUN cat /copied/two > /changed\n\
         ENV DONE=1\n"
    ));
    let store_e = w.path("store-e");
    let (_, progress_e) = build_plain(
        &w,
        &store_e,
        &cfg,
        &["--cache-from", &format!("type=registry,ref={cache_ref}")],
    );
    let (steps, cached) = steps_and_cached(&progress_e);
    assert_eq!(
        steps.len() - cached.len(),
        2,
        "the RUN and the ENV after it run:\n{progress_e}"
    );
    let here = |d: &str| {
        store_e
            .join("blobs/sha256")
            .join(d.trim_start_matches("sha256:"))
            .is_file()
    };
    assert_eq!(
        cache_layers.iter().filter(|d| here(d)).count(),
        1,
        "only COPY --from's layer"
    );

    // The image from the cache is complete: push it from store B and read
    // it back.
    let out = run_ok(rbuild(
        &w,
        &w.path("store-b"),
        &cfg,
        &[
            "push",
            "-q",
            id_a.trim(),
            &format!("{}/app/fromcache:1", reg.host()),
        ],
    ));
    assert!(out.trim().starts_with("sha256:"), "{out}");
}

/// `pushed NAME@DIGEST` lines of the progress output, as (name, digest).
fn pushed(progress: &str) -> Vec<(String, String)> {
    progress
        .lines()
        .filter_map(|l| l.split_once(" pushed ").map(|(_, rest)| rest))
        .filter_map(|rest| rest.trim_end_matches(" done").rsplit_once('@'))
        .map(|(n, d)| (n.to_string(), d.to_string()))
        .collect()
}

#[test]
fn build_push_and_image_output_push() {
    if !available() {
        return;
    }
    let Setup { reg, w, cfg, .. } = setup();
    w.write("a.txt", "pushed\n");
    w.dockerfile("FROM scratch\nCOPY a.txt /a.txt\n");
    let tagged = format!("{}/app/tagged:1", reg.host());
    let output = format!("{}/app/output:2", reg.host());
    let (_, progress) = build_plain(
        &w,
        &w.root(),
        &cfg,
        &[
            "-t",
            &tagged,
            "--push",
            "-o",
            &format!("type=image,name={output},push=true"),
        ],
    );
    let list = pushed(&progress);
    assert_eq!(list.len(), 2, "{progress}");
    for (name, digest) in &list {
        assert!(name == &tagged || name == &output, "{name}");
        assert_eq!(&sha256(&skopeo_raw(name)), digest, "{name}");
    }
    assert_eq!(list[0].1, list[1].1, "one image under both names");
    let config: Value = serde_json::from_str(&tool(
        "skopeo",
        &[
            "inspect",
            "--tls-verify=false",
            "--creds",
            &format!("{USER}:{PASSWORD}"),
            &format!("docker://{tagged}"),
        ],
    ))
    .unwrap();
    assert_eq!(config["Layers"].as_array().unwrap().len(), 1);
}

#[test]
fn build_push_with_a_wrong_password_names_the_registry_and_stores_nothing() {
    if !available() {
        return;
    }
    let Setup { reg, w, .. } = setup();
    let wrong = w.path("wrong");
    docker_config(&wrong, &reg.host(), USER, "not-the-password");
    w.write("a.txt", "x\n");
    w.dockerfile("FROM scratch\nCOPY a.txt /a.txt\n");
    let name = format!("{}/app/denied:1", reg.host());
    let ctx = w.ctx();
    let err = run_fails(rbuild(
        &w,
        &w.root(),
        &wrong,
        &["build", "-q", "-t", &name, "--push", ctx.to_str().unwrap()],
    ));
    assert!(err.contains(&reg.host()), "{err}");
    assert!(err.contains("unauthorized"), "{err}");
    // Nothing reached the registry under that name.
    let out = run({
        let mut c = Command::new("skopeo");
        c.args([
            "inspect",
            "--raw",
            "--tls-verify=false",
            "--creds",
            &format!("{USER}:{PASSWORD}"),
        ])
        .arg(format!("docker://{name}"));
        c
    });
    assert!(!out.status.success());

    // A cache export with the wrong password fails the same way.
    let cache = format!("{}/cache/denied:1", reg.host());
    let err = run_fails(rbuild(
        &w,
        &w.root(),
        &wrong,
        &[
            "build",
            "-q",
            "--cache-to",
            &format!("type=registry,ref={cache}"),
            ctx.to_str().unwrap(),
        ],
    ));
    assert!(
        err.contains(&format!("exporting cache to type=registry,ref={cache}"))
            && err.contains(&reg.host())
            && err.contains("unauthorized"),
        "{err}"
    );
}

#[test]
fn pull_flag_refreshes_a_stored_base_image() {
    if !available() {
        return;
    }
    // The registry lives as long as `_reg`.
    let Setup {
        reg: _reg,
        w,
        cfg,
        base,
    } = setup();
    w.write("a.txt", "a\n");
    w.dockerfile(&format!("FROM {base}\nCOPY a.txt /a.txt\n"));
    let other = w.path("other");
    let (first, _) = build_plain(&w, &other, &cfg, &[]);

    // The tag moves on in the registry: a different image is pushed under
    // the base's name.
    w.write("Dockerfile.next", "FROM scratch\nCOPY a.txt /next.txt\n");
    let next = w.ctx().join("Dockerfile.next");
    build_plain(
        &w,
        &w.root(),
        &cfg,
        &["-f", next.to_str().unwrap(), "-t", &base, "--push"],
    );

    // Without --pull the stored base is used (the build is all cached);
    // with it the registry's new image is.
    let (again, progress) = build_plain(&w, &other, &cfg, &[]);
    assert_eq!(again, first);
    let (steps, cached) = steps_and_cached(&progress);
    assert_eq!(steps, cached, "{progress}");
    let (pulled, _) = build_plain(&w, &other, &cfg, &["--pull"]);
    assert_ne!(pulled, first);
    let out = run_ok(rbuild(&w, &other, &cfg, &["inspect", pulled.trim()]));
    let image: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        image[0]["RootFS"]["Layers"].as_array().unwrap().len(),
        2,
        "scratch + COPY of the new base, then this build's COPY: {image}"
    );
}

/// The OCI layout `dir` written by `-o type=oci,tar=false`: its manifest's
/// digest and size.
fn layout_manifest(dir: &Path) -> (String, u64) {
    let index: Value =
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
    let m = &index["manifests"][0];
    (
        m["digest"].as_str().unwrap().to_string(),
        m["size"].as_u64().unwrap(),
    )
}

/// A JSON blob of the OCI layout `dir`.
fn layout_blob(dir: &Path, digest: impl AsRef<str>) -> Value {
    let hex = digest.as_ref().trim_start_matches("sha256:").to_string();
    serde_json::from_slice(&std::fs::read(dir.join("blobs/sha256").join(hex)).unwrap()).unwrap()
}

#[test]
fn from_platform_pulls_that_platform_from_a_multi_platform_index() {
    if !available() {
        return;
    }
    let Setup { reg, w, cfg, .. } = setup();
    let (host, other) = if cfg!(target_arch = "x86_64") {
        ("amd64", "arm64")
    } else {
        ("arm64", "amd64")
    };
    // Two single-platform images, each marked with its architecture, made
    // into one multi-platform index and pushed by skopeo.
    let multi = w.path("multi");
    std::fs::create_dir_all(multi.join("blobs/sha256")).unwrap();
    let mut entries = Vec::new();
    for arch in [host, other] {
        w.write("arch.txt", &format!("{arch}\n"));
        w.write(
            &format!("Dockerfile.{arch}"),
            "FROM scratch\nCOPY arch.txt /arch.txt\n",
        );
        let layout = w.path(&format!("layout-{arch}"));
        let file = w.ctx().join(format!("Dockerfile.{arch}"));
        build_plain(
            &w,
            &w.root(),
            &cfg,
            &[
                "-f",
                file.to_str().unwrap(),
                "--platform",
                &format!("linux/{arch}"),
                "-o",
                &format!("type=oci,dest={},tar=false,name=m:1", layout.display()),
            ],
        );
        for blob in std::fs::read_dir(layout.join("blobs/sha256")).unwrap() {
            let blob = blob.unwrap();
            std::fs::copy(
                blob.path(),
                multi.join("blobs/sha256").join(blob.file_name()),
            )
            .unwrap();
        }
        let (digest, size) = layout_manifest(&layout);
        entries.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest,
            "size": size,
            "platform": {"architecture": arch, "os": "linux"},
        }));
    }
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": entries,
    }))
    .unwrap();
    let index_digest = sha256(&index);
    std::fs::write(
        multi
            .join("blobs/sha256")
            .join(index_digest.trim_start_matches("sha256:")),
        &index,
    )
    .unwrap();
    std::fs::write(
        multi.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    std::fs::write(
        multi.join("index.json"),
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "manifests": [{
                "mediaType": "application/vnd.oci.image.index.v1+json",
                "digest": index_digest,
                "size": index.len(),
                "annotations": {"org.opencontainers.image.ref.name": "multi"},
            }],
        }))
        .unwrap(),
    )
    .unwrap();
    let name = format!("{}/multi/base:1", reg.host());
    tool(
        "skopeo",
        &[
            "copy",
            "--all",
            "--dest-tls-verify=false",
            "--dest-creds",
            &format!("{USER}:{PASSWORD}"),
            &format!("oci:{}:multi", multi.display()),
            &format!("docker://{name}"),
        ],
    );

    // FROM --platform (through a predefined arg) picks that platform's
    // image; the stage and the image are of that platform.
    let fresh = w.path("fresh");
    let build_arch = |dockerfile: &str, out: &str| -> (String, String) {
        w.dockerfile(dockerfile);
        let dest = w.path(out);
        build_plain(
            &w,
            &fresh,
            &cfg,
            &[
                "-o",
                &format!("type=oci,dest={},tar=false,name=r:1", dest.display()),
            ],
        );
        let rootfs = umoci_unpack(&dest, "1", &w.path(&format!("{out}-bundle")));
        let manifest = layout_blob(&dest, layout_manifest(&dest).0);
        let config = layout_blob(&dest, manifest["config"]["digest"].as_str().unwrap());
        (
            std::fs::read_to_string(rootfs.join("arch.txt")).unwrap(),
            config["architecture"].as_str().unwrap().to_string(),
        )
    };
    let (content, arch) = build_arch(
        &format!("ARG P=linux/{other}\nFROM --platform=$P {name}\nENV X=1\n"),
        "out-other",
    );
    assert_eq!((content.trim(), arch.as_str()), (other, other));
    // The stored image of the other platform is not used for the host's:
    // the host's is pulled.
    let (content, arch) = build_arch(&format!("FROM {name}\nENV X=1\n"), "out-host");
    assert_eq!((content.trim(), arch.as_str()), (host, host));
    let (content, _) = build_arch(
        &format!("FROM --platform=$BUILDPLATFORM {name}\nENV X=2\n"),
        "out-build",
    );
    assert_eq!(content.trim(), host);
}
