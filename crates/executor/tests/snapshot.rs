//! Snapshots over the busybox base layer: the layer a change produces, on
//! both snapshotters, and that nothing is left mounted or on disk.

#[path = "sandbox_support/mod.rs"]
mod support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use rbuild_executor::snapshot::SnapshotterKind;
use support::{env, layer, list, mounts, opts};

/// A capability xattr value (VFS_CAP_REVISION_2, cap_net_bind_service=ep).
const CAP: [u8; 20] = [0, 0, 0, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];

fn setxattr(p: &Path, name: &str, value: &[u8]) {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    let n = std::ffi::CString::new(name).unwrap();
    let r = unsafe {
        libc::lsetxattr(
            c.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    assert_eq!(
        r,
        0,
        "setxattr {name} on {}: {}",
        p.display(),
        std::io::Error::last_os_error()
    );
}

/// The same change, made from the host side: a new file, a deleted file, a
/// removed-and-recreated directory, a hardlink pair, a capability, a
/// modified file, a chmod, and an untouched copy-up.
fn change(root: &Path) {
    fs::write(root.join("etc/new.conf"), b"hello\n").unwrap();
    fs::remove_file(root.join("etc/group")).unwrap();
    fs::remove_dir_all(root.join("home/user")).unwrap();
    fs::create_dir(root.join("home/user")).unwrap();
    fs::write(root.join("home/user/.profile"), b"export A=1\n").unwrap();
    fs::write(root.join("tmp/a"), b"linked").unwrap();
    fs::hard_link(root.join("tmp/a"), root.join("tmp/b")).unwrap();
    fs::write(root.join("usr/bin/ping2"), b"#!/bin/sh\n").unwrap();
    setxattr(&root.join("usr/bin/ping2"), "security.capability", &CAP);
    let passwd = root.join("etc/passwd");
    let mut text = fs::read_to_string(&passwd).unwrap();
    text.push_str("app:x:2000:2000::/app:/bin/sh\n");
    fs::write(&passwd, text).unwrap();
    fs::set_permissions(root.join("root"), fs::Permissions::from_mode(0o750)).unwrap();
    // Opening for write copies the file up without changing it.
    fs::OpenOptions::new()
        .append(true)
        .open(root.join("bin/busybox"))
        .unwrap();
}

#[test]
fn overlay_and_native_layers_match_and_hold_the_change() {
    let Some(env) = env() else { return };
    let mut digests = Vec::new();
    for kind in [SnapshotterKind::Overlay, SnapshotterKind::Native] {
        let snap = env
            .snapshotter(kind)
            .prepare(std::slice::from_ref(&env.base))
            .unwrap();
        assert!(
            snap.rootfs().join("bin/busybox").is_file(),
            "{kind}: base visible"
        );
        change(snap.rootfs());
        let desc = snap.commit(&opts()).unwrap().expect("a layer");
        let l = layer(&env.blobs, &desc);
        let paths: Vec<&str> = l.keys().map(String::as_str).collect();
        assert_eq!(
            paths,
            [
                "etc",
                "etc/.wh.group",
                "etc/new.conf",
                "etc/passwd",
                "home",
                "home/user",
                "home/user/.profile",
                "home/user/.wh..wh..opq",
                "root",
                "tmp",
                "tmp/a",
                "tmp/b",
                "usr",
                "usr/bin",
                "usr/bin/ping2",
            ],
            "{kind}"
        );
        assert_eq!(l["etc/new.conf"].data, b"hello\n");
        assert_eq!(l["tmp/a"].kind, 'f');
        assert_eq!(l["tmp/b"].kind, 'h');
        assert_eq!(l["tmp/b"].link.as_deref(), Some("tmp/a"));
        assert_eq!(l["usr/bin/ping2"].xattrs["security.capability"], CAP);
        assert_eq!(l["root"].mode, 0o750);
        assert_eq!(l["tmp"].mode, 0o1777, "{kind}: parent dirs keep their mode");
        assert_eq!(l["home/user"].uid, 0, "{kind}: recreated dir is root's");
        digests.push((desc.diff_id, desc.digest));
    }
    assert_eq!(digests[0], digests[1], "overlay and native layers differ");
    assert!(mounts(env.root()).is_empty(), "mounts left behind");
    let tmp: Vec<_> = list(&env.root().join("tmp"));
    assert!(tmp.is_empty(), "temp dirs left behind: {tmp:?}");
}

/// A RUN that rewrites one file of a hardlinked pair from a lower layer:
/// overlayfs (without `index`) copies up only that path, so the link is
/// broken and the other name keeps the old content. The native snapshotter
/// must give the same rootfs and the same layer, byte for byte.
#[test]
fn rewriting_one_name_of_a_lower_hardlink_pair_matches_overlay() {
    let Some(env) = env() else { return };
    let lower = {
        let snap = env
            .snapshotter(SnapshotterKind::Overlay)
            .prepare(std::slice::from_ref(&env.base))
            .unwrap();
        fs::write(snap.rootfs().join("tmp/h1"), b"original\n").unwrap();
        fs::hard_link(snap.rootfs().join("tmp/h1"), snap.rootfs().join("tmp/h2")).unwrap();
        snap.commit(&opts()).unwrap().expect("a layer")
    };
    let chain = [env.base.clone(), lower];
    let mut digests = Vec::new();
    for kind in [SnapshotterKind::Overlay, SnapshotterKind::Native] {
        let snap = env.snapshotter(kind).prepare(&chain).unwrap();
        fs::write(snap.rootfs().join("tmp/h1"), b"changed\n").unwrap();
        assert_eq!(
            fs::read(snap.rootfs().join("tmp/h2")).unwrap(),
            b"original\n",
            "{kind}: the other name keeps its content"
        );
        let desc = snap.commit(&opts()).unwrap().expect("a layer");
        let l = layer(&env.blobs, &desc);
        let paths: Vec<&str> = l.keys().map(String::as_str).collect();
        assert_eq!(paths, ["tmp", "tmp/h1"], "{kind}");
        assert_eq!(l["tmp/h1"].kind, 'f', "{kind}");
        assert_eq!(l["tmp/h1"].data, b"changed\n", "{kind}");
        digests.push((desc.diff_id, desc.digest));
    }
    assert_eq!(digests[0], digests[1], "overlay and native layers differ");

    // A new name for a lower file: overlayfs copies the file up to link it.
    let mut digests = Vec::new();
    for kind in [SnapshotterKind::Overlay, SnapshotterKind::Native] {
        let snap = env.snapshotter(kind).prepare(&chain).unwrap();
        fs::hard_link(snap.rootfs().join("tmp/h1"), snap.rootfs().join("tmp/h3")).unwrap();
        let desc = snap.commit(&opts()).unwrap().expect("a layer");
        let l = layer(&env.blobs, &desc);
        let paths: Vec<&str> = l.keys().map(String::as_str).collect();
        assert_eq!(paths, ["tmp", "tmp/h3"], "{kind}");
        digests.push((desc.diff_id, desc.digest));
    }
    assert_eq!(
        digests[0], digests[1],
        "overlay and native layers differ on ln"
    );
}

#[test]
fn layers_stack_and_whiteouts_hide() {
    let Some(env) = env() else { return };
    for kind in [SnapshotterKind::Overlay, SnapshotterKind::Native] {
        let s = env.snapshotter(kind);
        let snap = s.prepare(std::slice::from_ref(&env.base)).unwrap();
        fs::create_dir(snap.rootfs().join("data")).unwrap();
        fs::write(snap.rootfs().join("data/x"), b"1").unwrap();
        let l1 = snap.commit(&opts()).unwrap().expect("layer 1");

        let snap = s.prepare(&[env.base.clone(), l1.clone()]).unwrap();
        assert_eq!(
            fs::read(snap.rootfs().join("data/x")).unwrap(),
            b"1",
            "{kind}"
        );
        fs::remove_file(snap.rootfs().join("data/x")).unwrap();
        let l2 = snap.commit(&opts()).unwrap().expect("layer 2");
        let entries = layer(&env.blobs, &l2);
        assert_eq!(
            entries.keys().collect::<Vec<_>>(),
            ["data", "data/.wh.x"],
            "{kind}"
        );

        let view = s.view(&[env.base.clone(), l1.clone(), l2.clone()]).unwrap();
        assert!(view.path().join("data").is_dir(), "{kind}");
        assert!(
            !view.path().join("data/x").exists(),
            "{kind}: whiteout hides x"
        );
        assert!(
            fs::write(view.path().join("data/y"), b"").is_err(),
            "{kind}: view is read-only"
        );
        drop(view);

        // A rebuilt snapshot from the stored layers (no reuse of upper dirs).
        let snap = s.prepare(&[env.base.clone(), l1, l2]).unwrap();
        assert!(!snap.rootfs().join("data/x").exists(), "{kind}");
        assert_eq!(
            snap.commit(&opts()).unwrap(),
            None,
            "{kind}: no change, no layer"
        );
    }
    assert!(list(&env.root().join("tmp")).is_empty());
}

#[test]
fn scratch_snapshot_holds_only_what_was_written() {
    let Some(env) = env() else { return };
    let mut digests = Vec::new();
    for kind in [SnapshotterKind::Overlay, SnapshotterKind::Native] {
        let s = env.snapshotter(kind);
        let snap = s.prepare(&[]).unwrap();
        assert!(list(snap.rootfs()).is_empty(), "{kind}: scratch is empty");
        fs::create_dir_all(snap.rootfs().join("app/bin")).unwrap();
        fs::write(snap.rootfs().join("app/bin/tool"), b"x").unwrap();
        std::os::unix::fs::symlink("bin/tool", snap.rootfs().join("app/tool")).unwrap();
        let desc = snap.commit(&opts()).unwrap().expect("layer");
        let l = layer(&env.blobs, &desc);
        assert_eq!(
            l.keys().collect::<Vec<_>>(),
            ["app", "app/bin", "app/bin/tool", "app/tool"]
        );
        assert_eq!(l["app/tool"].link.as_deref(), Some("bin/tool"));
        digests.push(desc.digest);
        let empty = s.prepare(&[]).unwrap();
        assert_eq!(empty.commit(&opts()).unwrap(), None);
    }
    assert_eq!(digests[0], digests[1]);
}

#[test]
fn dropped_snapshot_is_unmounted_and_removed() {
    let Some(env) = env() else { return };
    let s = env.snapshotter(SnapshotterKind::Overlay);
    let snap = s.prepare(std::slice::from_ref(&env.base)).unwrap();
    let root = snap.rootfs().to_path_buf();
    assert!(mounts(env.root()).contains(&root.display().to_string()));
    fs::write(root.join("x"), b"discarded").unwrap();
    drop(snap);
    assert!(mounts(env.root()).is_empty(), "mounts left behind");
    // Temp dirs go on a background thread; the last handle waits for it.
    drop(s);
    assert!(!root.exists());
    assert!(list(&env.root().join("tmp")).is_empty());
    // The base layer was unpacked once, under its diff ID.
    let snaps = env.root().join("snapshots");
    assert!(snaps
        .join(env.base.diff_id.hex())
        .join("bin/busybox")
        .is_file());
}

#[test]
fn detect_finds_overlay_here() {
    let Some(env) = env() else { return };
    assert_eq!(
        SnapshotterKind::detect(env.root()),
        SnapshotterKind::Overlay
    );
    assert_eq!(
        "native".parse::<SnapshotterKind>().unwrap(),
        SnapshotterKind::Native
    );
    assert!("zfs".parse::<SnapshotterKind>().is_err());
    assert!(list(&env.root().join("tmp")).is_empty());
}

#[test]
fn single_layer_view_hides_its_whiteouts() {
    let Some(env) = env() else { return };
    let src = env.root().join("content");
    fs::write(&src, b"y").unwrap();
    let meta = rbuild_image::Meta {
        mode: 0o644,
        ..Default::default()
    };
    let entries = vec![
        rbuild_image::LayerEntry {
            path: "gone".into(),
            kind: rbuild_image::EntryKind::Whiteout,
            meta: Default::default(),
        },
        rbuild_image::LayerEntry {
            path: "y".into(),
            kind: rbuild_image::EntryKind::File {
                source: src.clone(),
                size: 1,
            },
            meta,
        },
    ];
    let desc = rbuild_image::write_layer(&env.blobs, entries, &opts()).unwrap();
    for kind in [SnapshotterKind::Overlay, SnapshotterKind::Native] {
        let view = env
            .snapshotter(kind)
            .view(std::slice::from_ref(&desc))
            .unwrap();
        assert_eq!(fs::read(view.path().join("y")).unwrap(), b"y", "{kind}");
        assert!(
            fs::symlink_metadata(view.path().join("gone")).is_err(),
            "{kind}: a whiteout is not a file"
        );
    }
    assert!(mounts(env.root()).is_empty());
}

#[test]
fn leftovers_of_a_killed_build_are_removed() {
    let Some(env) = env() else { return };
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    // What a SIGKILLed rbuild leaves: a snapshot dir with a live mount.
    let left = env.root().join(format!("tmp/snap-{dead}-AbCdEf"));
    fs::create_dir_all(left.join("merged")).unwrap();
    let st = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "tmpfs"])
        .arg(left.join("merged"))
        .status()
        .unwrap();
    assert!(st.success());
    // A live process's dir (this one's) is kept.
    let live = env
        .root()
        .join(format!("tmp/view-{}-XyZ123", std::process::id()));
    fs::create_dir_all(&live).unwrap();
    let _s = env.snapshotter(SnapshotterKind::Overlay);
    assert!(!left.exists());
    assert!(mounts(env.root()).is_empty());
    assert!(live.is_dir());
    fs::remove_dir(live).unwrap();
}
