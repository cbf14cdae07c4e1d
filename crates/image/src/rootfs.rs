//! Path resolution inside an image root filesystem on the host.
//!
//! [`resolve`] is the one function that turns a path inside an image into a
//! host path: it follows symlinks component by component as if the root
//! were `/` (absolute link targets start at the root, `..` stops at the
//! root), so the result never leaves the root, whatever the image holds.
//! COPY/ADD destinations, WORKDIR and archive extraction all go through it.
//! It does not open or create anything.

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Symlinks followed in one resolution before giving up with `ELOOP`, as
/// Linux's `MAXSYMLINKS`.
pub const MAX_SYMLINKS: u32 = 40;

/// Resolves `path` (absolute or relative to the image root, `/` separated)
/// to a host path under `root`, following every symlink including the last
/// component. Components that do not exist are appended as they are.
///
/// ```
/// let root = tempfile::tempdir().unwrap();
/// std::fs::create_dir(root.path().join("srv")).unwrap();
/// std::os::unix::fs::symlink("/srv", root.path().join("app")).unwrap();
/// let p = rbuild_image::rootfs::resolve(root.path(), "/app/../../etc").unwrap();
/// assert_eq!(p, root.path().join("etc"));
/// let p = rbuild_image::rootfs::resolve(root.path(), "app/x").unwrap();
/// assert_eq!(p, root.path().join("srv/x"));
/// ```
pub fn resolve(root: &Path, path: &str) -> io::Result<PathBuf> {
    resolve_components(root, split(path.as_bytes()), true)
}

/// Like [`resolve`] but the last component is not followed: the parent is
/// resolved and the last name appended, so the result names the entry
/// itself (a symlink there is the symlink, to be replaced or read, not its
/// target). A path ending in `..` or naming the root resolves fully.
pub fn resolve_parent(root: &Path, path: &str) -> io::Result<PathBuf> {
    resolve_components(root, split(path.as_bytes()), false)
}

/// Byte-level variant of [`resolve_parent`] for archive names that are not
/// UTF-8.
pub(crate) fn resolve_parent_bytes(root: &Path, path: &[u8]) -> io::Result<PathBuf> {
    resolve_components(root, split(path), false)
}

fn split(path: &[u8]) -> VecDeque<OsString> {
    path.split(|&b| b == b'/')
        .filter(|c| !c.is_empty() && *c != b".")
        .map(|c| OsStr::from_bytes(c).to_os_string())
        .collect()
}

fn resolve_components(
    root: &Path,
    mut todo: VecDeque<OsString>,
    follow_last: bool,
) -> io::Result<PathBuf> {
    let mut done: Vec<OsString> = Vec::new();
    let mut links = 0u32;
    // Once a component is missing, nothing below it can be a symlink.
    let mut missing = false;
    while let Some(comp) = todo.pop_front() {
        if comp == ".." {
            done.pop();
            missing = false;
            continue;
        }
        let last = todo.is_empty();
        if missing || (last && !follow_last) {
            done.push(comp);
            continue;
        }
        let host = join(root, &done).join(&comp);
        match std::fs::symlink_metadata(&host) {
            Ok(md) if md.file_type().is_symlink() => {
                links += 1;
                if links > MAX_SYMLINKS {
                    return Err(io::Error::from_raw_os_error(
                        rustix::io::Errno::LOOP.raw_os_error(),
                    ));
                }
                let target = std::fs::read_link(&host)?;
                let target = target.as_os_str().as_bytes();
                if target.first() == Some(&b'/') {
                    done.clear();
                }
                for c in split(target).into_iter().rev() {
                    todo.push_front(c);
                }
            }
            Ok(_) => done.push(comp),
            Err(e)
                if e.kind() == io::ErrorKind::NotFound
                    || e.raw_os_error() == Some(rustix::io::Errno::NOTDIR.raw_os_error()) =>
            {
                missing = true;
                done.push(comp);
            }
            Err(e) => return Err(e),
        }
    }
    Ok(join(root, &done))
}

fn join(root: &Path, comps: &[OsString]) -> PathBuf {
    let mut p = root.to_path_buf();
    for c in comps {
        p.push(c);
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::symlink;

    #[test]
    fn absolute_and_relative_links_stay_inside() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        fs::create_dir_all(r.join("usr/lib")).unwrap();
        symlink("/", r.join("to-root")).unwrap();
        symlink("../../../../..", r.join("usr/up")).unwrap();
        symlink("/usr/lib", r.join("lib")).unwrap();
        symlink("lib", r.join("usr/lib64")).unwrap();
        assert_eq!(
            resolve(r, "to-root/etc/passwd").unwrap(),
            r.join("etc/passwd")
        );
        assert_eq!(resolve(r, "usr/up/etc").unwrap(), r.join("etc"));
        assert_eq!(resolve(r, "/lib/x").unwrap(), r.join("usr/lib/x"));
        assert_eq!(resolve(r, "usr/lib64/../bin").unwrap(), r.join("usr/bin"));
        assert_eq!(resolve(r, "../../..").unwrap(), r.to_path_buf());
        assert_eq!(resolve(r, "").unwrap(), r.to_path_buf());
        // The last component is kept as is by resolve_parent.
        assert_eq!(resolve_parent(r, "/lib").unwrap(), r.join("lib"));
        assert_eq!(resolve_parent(r, "lib/a").unwrap(), r.join("usr/lib/a"));
    }

    #[test]
    fn loops_fail_with_eloop() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        symlink("b", r.join("a")).unwrap();
        symlink("a", r.join("b")).unwrap();
        let err = resolve(r, "a/x").unwrap_err();
        assert_eq!(
            err.raw_os_error(),
            Some(rustix::io::Errno::LOOP.raw_os_error())
        );
        // Not following the last component never loops.
        assert_eq!(resolve_parent(r, "a").unwrap(), r.join("a"));
    }

    #[test]
    fn missing_components_and_files_in_the_middle() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        fs::write(r.join("file"), b"x").unwrap();
        assert_eq!(resolve(r, "file/sub").unwrap(), r.join("file/sub"));
        assert_eq!(resolve(r, "no/such/../x").unwrap(), r.join("no/x"));
    }
}
