//! Property tests of `rootfs::resolve`: in random symlink farms, whatever
//! the path asked for, the answer stays under the root and holds no
//! symlink on the way.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Component, Path};

use proptest::prelude::*;
use rbuild_image::rootfs::{resolve, resolve_parent};

/// Components link targets and lookups are made of.
fn component() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("..".to_string()),
        Just(".".to_string()),
        Just("a".to_string()),
        Just("b".to_string()),
        Just("c".to_string()),
        Just("l1".to_string()),
        Just("l2".to_string()),
        Just("l3".to_string()),
    ]
}

fn rel_path() -> impl Strategy<Value = String> {
    (any::<bool>(), prop::collection::vec(component(), 0..6)).prop_map(|(abs, comps)| {
        let p = comps.join("/");
        if abs {
            format!("/{p}")
        } else {
            p
        }
    })
}

/// A farm: directories, then symlinks at `dir/lN` with random targets.
#[derive(Debug, Clone)]
struct Farm {
    dirs: Vec<String>,
    links: Vec<(String, String)>,
}

fn farm() -> impl Strategy<Value = Farm> {
    let dir = prop::collection::vec(prop_oneof![Just("a"), Just("b"), Just("c")], 1..4)
        .prop_map(|c| c.join("/"));
    let link_at = (
        prop::collection::vec(prop_oneof![Just("a"), Just("b")], 0..3),
        prop_oneof![Just("l1"), Just("l2"), Just("l3")],
    )
        .prop_map(|(d, l)| {
            let mut d = d.join("/");
            if !d.is_empty() {
                d.push('/');
            }
            d + l
        });
    (
        prop::collection::vec(dir, 0..6),
        prop::collection::vec((link_at, rel_path()), 0..8),
    )
        .prop_map(|(dirs, links)| Farm { dirs, links })
}

fn build(root: &Path, f: &Farm) {
    for d in &f.dirs {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    for (at, target) in &f.links {
        let at = root.join(at);
        if let Some(p) = at.parent() {
            // The parent may itself be a symlink or a missing path: a farm
            // is whatever could be built.
            if fs::create_dir_all(p).is_err() {
                continue;
            }
        }
        let _ = symlink(target, &at);
    }
}

fn check(root: &Path, result: std::io::Result<std::path::PathBuf>, follow_last: bool) {
    let p = match result {
        Ok(p) => p,
        Err(e) => {
            assert_eq!(
                e.raw_os_error(),
                Some(rustix::io::Errno::LOOP.raw_os_error()),
                "{e}"
            );
            return;
        }
    };
    let rel = p.strip_prefix(root).expect("result under root");
    assert!(
        rel.components().all(|c| matches!(c, Component::Normal(_))),
        "{}",
        p.display()
    );
    let comps: Vec<_> = rel.components().collect();
    let mut cur = root.to_path_buf();
    for (i, c) in comps.iter().enumerate() {
        cur.push(c);
        let last = i + 1 == comps.len();
        match fs::symlink_metadata(&cur) {
            Ok(md) if md.file_type().is_symlink() => {
                assert!(last && !follow_last, "symlink left in {}", p.display());
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn resolution_never_leaves_the_root(f in farm(), lookups in prop::collection::vec(rel_path(), 1..6)) {
        let tmp = tempfile::tempdir().unwrap();
        let root = fs::canonicalize(tmp.path()).unwrap();
        build(&root, &f);
        for path in &lookups {
            check(&root, resolve(&root, path), true);
            check(&root, resolve_parent(&root, path), false);
        }
    }
}
