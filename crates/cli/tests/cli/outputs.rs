//! Every `-o` output format, read back with the real tools: skopeo inspects
//! each archive or layout, umoci unpacks it, and the unpacked root
//! filesystem must be exactly what the Dockerfile produces.

use std::collections::BTreeMap;
use std::os::unix::fs::symlink as make_symlink;
use std::path::Path;

use serde_json::Value;

use crate::support::*;

/// The tree the test Dockerfile produces.
fn expected_tree() -> BTreeMap<String, Node> {
    [
        ("etc", dir(0o755)),
        ("etc/app.conf", file(0o644, "conf\n")),
        ("srv", dir(0o755)),
        ("srv/app", dir(0o755)),
        ("srv/app/bin", dir(0o755)),
        ("srv/app/bin/run.sh", file(0o755, "#!/bin/sh\necho run\n")),
        ("srv/app/current", symlink("bin/run.sh")),
        ("srv/app/data.txt", file(0o644, "data\n")),
    ]
    .into_iter()
    .map(|(p, n)| (p.to_string(), n))
    .collect()
}

fn setup(w: &World) {
    w.write("app.conf", "conf\n");
    let run = w.write("app/bin/run.sh", "#!/bin/sh\necho run\n");
    std::fs::set_permissions(&run, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    w.write("app/data.txt", "data\n");
    make_symlink("bin/run.sh", w.ctx().join("app/current")).unwrap();
    w.dockerfile(
        "FROM scratch\n\
         COPY app.conf /etc/\n\
         COPY app /srv/app\n\
         ENV MODE=prod\n\
         LABEL org.example.kind=test\n",
    );
}

fn check_config(v: &Value) {
    let env = v["Env"]
        .as_array()
        .expect("Env")
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect::<Vec<_>>();
    assert!(env.contains(&"MODE=prod"), "{env:?}");
    assert_eq!(v["Labels"]["org.example.kind"], "test");
    assert_eq!(v["Layers"].as_array().unwrap().len(), 2);
    assert_eq!(v["Os"], "linux");
}

fn index_annotations(layout: &Path) -> BTreeMap<String, String> {
    let index: Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let m = &index["manifests"].as_array().expect("manifests")[0];
    serde_json::from_value(m["annotations"].clone()).unwrap_or_default()
}

#[test]
fn every_output_format_is_read_by_skopeo_and_umoci() {
    let w = World::new();
    setup(&w);
    let (oci_tar, oci_dir, docker_tar, local, plain_tar) = (
        w.path("image-oci.tar"),
        w.path("image-oci"),
        w.path("image-docker.tar"),
        w.path("local"),
        w.path("rootfs.tar"),
    );
    let ctx = w.ctx();
    let outputs = [
        format!("type=oci,dest={}", oci_tar.display()),
        format!("type=oci,dest={},tar=false", oci_dir.display()),
        format!("type=docker,dest={}", docker_tar.display()),
        format!("type=local,dest={}", local.display()),
        format!("type=tar,dest={}", plain_tar.display()),
    ];
    let mut args = vec!["build", "-q", "-t", "out:1"];
    for o in &outputs {
        args.push("-o");
        args.push(o);
    }
    args.push(ctx.to_str().unwrap());
    let id = w.ok(&args);
    let img = w.inspect("out:1");
    let manifest_digest = img["RepoDigests"][0]
        .as_str()
        .and_then(|s| s.split_once('@'))
        .map(|(_, d)| d.to_string())
        .expect("RepoDigests holds name@digest");

    // local and tar: the final filesystem itself.
    assert_eq!(tree(&local), expected_tree());
    let untarred = w.path("rootfs-untarred");
    untar(&plain_tar, &untarred);
    assert_eq!(tree(&untarred), expected_tree());

    // OCI layout directory.
    let ann = index_annotations(&oci_dir);
    assert_eq!(
        ann.get("org.opencontainers.image.ref.name")
            .map(String::as_str),
        Some("1")
    );
    assert_eq!(
        ann.get("io.containerd.image.name").map(String::as_str),
        Some("docker.io/library/out:1")
    );
    let v = skopeo_inspect(&format!("oci:{}:1", oci_dir.display()));
    check_config(&v);
    assert_eq!(v["Digest"], manifest_digest.as_str());
    assert_eq!(v["Raw"]["config"]["digest"], id.trim());
    let rootfs = umoci_unpack(&oci_dir, "1", &w.path("bundle-dir"));
    assert_eq!(tree(&rootfs), expected_tree());

    // OCI archive: skopeo reads the tarball; umoci needs it untarred.
    let v = skopeo_inspect(&format!("oci-archive:{}", oci_tar.display()));
    check_config(&v);
    assert_eq!(v["Digest"], manifest_digest.as_str());
    let layout = w.path("oci-untarred");
    untar(&oci_tar, &layout);
    assert_eq!(index_annotations(&layout), ann);
    let rootfs = umoci_unpack(&layout, "1", &w.path("bundle-tar"));
    assert_eq!(tree(&rootfs), expected_tree());

    // docker-archive: skopeo reads it (and names it), and converts it to an
    // OCI layout umoci unpacks.
    let v = skopeo_inspect(&format!("docker-archive:{}", docker_tar.display()));
    check_config(&v);
    assert_eq!(v["Raw"]["config"]["digest"], id.trim());
    let manifest: Value = serde_json::from_str(&tool(
        "tar",
        &["-xOf", docker_tar.to_str().unwrap(), "manifest.json"],
    ))
    .unwrap();
    assert_eq!(manifest[0]["RepoTags"], serde_json::json!(["out:1"]));
    let converted = w.path("from-docker");
    tool(
        "skopeo",
        &[
            "copy",
            &format!("docker-archive:{}", docker_tar.display()),
            &format!("oci:{}:t", converted.display()),
        ],
    );
    let rootfs = umoci_unpack(&converted, "t", &w.path("bundle-docker"));
    assert_eq!(tree(&rootfs), expected_tree());
}

#[test]
fn output_names_come_from_name_attribute() {
    let w = World::new();
    setup(&w);
    let oci_dir = w.path("named");
    let ctx = w.ctx();
    w.ok(&[
        "-q",
        "-o",
        &format!(
            "type=oci,dest={},tar=false,name=registry.example:5000/team/app:2",
            oci_dir.display()
        ),
        ctx.to_str().unwrap(),
    ]);
    let ann = index_annotations(&oci_dir);
    assert_eq!(ann["org.opencontainers.image.ref.name"], "2");
    assert_eq!(
        ann["io.containerd.image.name"],
        "registry.example:5000/team/app:2"
    );
    let v = skopeo_inspect(&format!("oci:{}:2", oci_dir.display()));
    check_config(&v);
}

#[test]
fn image_output_only_names_the_image() {
    let w = World::new();
    setup(&w);
    let ctx = w.ctx();
    w.ok(&[
        "-q",
        "-o",
        "type=image,name=viaoutput:3",
        ctx.to_str().unwrap(),
    ]);
    assert_eq!(
        w.inspect("viaoutput:3")["RepoTags"],
        serde_json::json!(["viaoutput:3"])
    );
}
