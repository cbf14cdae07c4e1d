//! Image management: images, tag, rmi, inspect, save and load.

use serde_json::json;

use crate::support::*;

fn simple_image(w: &World, tag: &str) -> String {
    w.write("a.txt", "A");
    w.dockerfile("FROM scratch\nCOPY a.txt /a.txt\nENV K=V\n");
    w.build(tag)
}

#[test]
fn images_tag_rmi() {
    let w = World::new();
    let id = simple_image(&w, "app:1");
    let short = &id["sha256:".len().."sha256:".len() + 12];

    let table = w.ok(&["images"]);
    let mut lines = table.lines();
    let header = lines.next().unwrap();
    for col in ["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"] {
        assert!(header.contains(col), "{header}");
    }
    let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(&row[..3], &["app", "1", short], "{table}");
    assert!(lines.next().is_none(), "{table}");

    w.ok(&["tag", "app:1", "other/name:latest"]);
    w.ok(&["tag", short, "third"]);
    let table = w.ok(&["images"]);
    assert_eq!(table.lines().count(), 4, "{table}");
    assert!(table.contains("other/name"), "{table}");
    assert_eq!(
        w.ok(&["images", "-q"]).lines().collect::<Vec<_>>(),
        vec![short; 3]
    );
    assert_eq!(w.inspect("third:latest")["Id"], id);
    let mut tags: Vec<String> = serde_json::from_value(w.inspect(&id)["RepoTags"].clone()).unwrap();
    tags.sort();
    assert_eq!(tags, ["app:1", "other/name:latest", "third:latest"]);

    // By ID with several names: refused without -f, and nothing changes.
    let err = w.fails(&["rmi", short]);
    assert!(
        err.contains("must be forced") && err.contains(short),
        "{err}"
    );
    assert_eq!(w.ok(&["images", "-q"]).lines().count(), 3);

    // By name: removes that name only.
    let out = w.ok(&["rmi", "other/name"]);
    assert_eq!(out.trim(), "Untagged: other/name:latest");
    let err = w.fails(&["inspect", "other/name"]);
    assert!(err.contains("other/name"), "{err}");
    assert_eq!(w.inspect("app:1")["Id"], id);

    // Forced by ID: every name goes, and the image with them.
    let out = w.ok(&["rmi", "-f", short]);
    assert!(
        out.contains("Untagged: app:1") && out.contains("Untagged: third:latest"),
        "{out}"
    );
    assert!(out.contains(&format!("Deleted: {id}")), "{out}");
    assert_eq!(w.ok(&["images", "-q"]), "");
    let err = w.fails(&["rmi", "app:1"]);
    assert!(err.contains("app:1"), "{err}");
}

#[test]
fn inspect_is_a_docker_style_json_array() {
    let w = World::new();
    let id = simple_image(&w, "app:1");
    // `app` means app:latest, which does not exist.
    let err = w.fails(&["inspect", "app"]);
    assert!(err.contains("app"), "{err}");
    let v: serde_json::Value = serde_json::from_str(&w.ok(&["inspect", "app:1"])).unwrap();
    let arr = v.as_array().unwrap();
    assert_eq!(arr.len(), 1);
    let img = &arr[0];
    assert_eq!(img["Id"], id);
    assert_eq!(img["RepoTags"], json!(["app:1"]));
    let digest = img["RepoDigests"][0].as_str().unwrap();
    assert!(digest.starts_with("app@sha256:"), "{digest}");
    assert!(img["Created"].as_str().is_some_and(|c| c.contains('T')));
    assert!(img["Size"].as_u64().unwrap() > 0);
    assert_eq!(img["RootFS"]["Type"], "layers");
    // BuildKit gives a FROM scratch stage the default PATH.
    assert_eq!(
        img["Config"]["Env"],
        json!([
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "K=V"
        ])
    );
    for key in ["Architecture", "Os"] {
        assert!(img[key].is_string(), "{key}");
    }
}

#[test]
fn save_and_load_keep_the_manifest_digest() {
    let w = World::new();
    let id = simple_image(&w, "app:1");
    let digest = w.inspect("app:1")["RepoDigests"].clone();
    for (format, file) in [("oci", "oci.tar"), ("docker", "docker.tar")] {
        let tar = w.path(file);
        w.ok(&[
            "save",
            "--format",
            format,
            "-o",
            tar.to_str().unwrap(),
            "app:1",
        ]);
        let fresh = w.path(&format!("store-{format}"));
        let out = run_ok(w.cmd_root(&fresh, &["load", "-i", tar.to_str().unwrap()]));
        assert_eq!(out.trim(), "Loaded image: app:1", "{format}");
        let v: serde_json::Value =
            serde_json::from_str(&run_ok(w.cmd_root(&fresh, &["inspect", "app:1"]))).unwrap();
        assert_eq!(v[0]["Id"], id, "{format}");
        if format == "oci" {
            assert_eq!(v[0]["RepoDigests"], digest, "{format}");
        }
    }
}

#[test]
fn load_rejects_a_broken_archive_and_stores_nothing() {
    let w = World::new();
    simple_image(&w, "app:1");
    let before = store_listing(&w.root());
    let junk = w.path("junk.tar");
    std::fs::write(&junk, b"this is not a tar archive").unwrap();
    let err = w.fails(&["load", "-i", junk.to_str().unwrap()]);
    assert!(err.contains("junk.tar"), "{err}");
    assert_eq!(store_listing(&w.root()), before);
}

#[test]
fn images_lists_one_row_per_image_id() {
    let w = World::new();
    w.write("a.txt", "A");
    w.dockerfile("FROM scratch\nCOPY a.txt /a.txt\n");
    let ctx = w.ctx();
    let ctx = ctx.to_str().unwrap();
    let build = |extra: &[&str]| {
        let mut c = w.cmd(&["build", "-q"]);
        c.args(extra).arg(ctx).env("SOURCE_DATE_EPOCH", "0");
        run_ok(c).trim().to_string()
    };
    let id = build(&["-t", "app:1"]);
    // The same config with zstd layers: another manifest, the same image ID,
    // stored untagged.
    let again = build(&["--no-cache", "--compression", "zstd"]);
    assert_eq!(again, id);
    let listed = w.ok(&["images", "-q"]);
    assert_eq!(listed.lines().count(), 1, "{listed}");
    assert!(!w.ok(&["images"]).contains("<none>"));
}
