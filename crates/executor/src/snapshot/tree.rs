//! Copying a whole root filesystem tree with everything an image layer can
//! hold: owners, permission bits (setuid included), xattrs, mtimes, symlinks,
//! device nodes, fifos and hardlinks. Used by the native snapshotter, which
//! has no copy-on-write filesystem to lean on. File data goes through
//! `copy_file_range` (via `std::fs::copy`), which reflinks where the
//! filesystem can and never copies through user space.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

use crate::diff::{cstring, read_xattrs};

/// Whether names that share an inode in the source share one in the copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Hardlinks {
    /// Keep them linked (a flattened chain of layers, read as it is).
    Keep,
    /// Give each name its own copy, as overlayfs does when it copies one
    /// name of a lower hardlink up (it has no `index` here): writing one
    /// name of a base layer's pair must leave the other as it was.
    Split,
}

/// Copies the contents of directory `src` into the existing directory `dst`,
/// then gives `dst` the metadata of `src`.
pub(crate) fn clone_tree(src: &Path, dst: &Path, hardlinks: Hardlinks) -> io::Result<()> {
    let mut links = HashMap::new();
    clone_dir(src, dst, hardlinks, &mut links)?;
    copy_meta(src, dst, &fs::symlink_metadata(src)?)
}

fn clone_dir(
    src: &Path,
    dst: &Path,
    hardlinks: Hardlinks,
    links: &mut HashMap<(u64, u64), std::path::PathBuf>,
) -> io::Result<()> {
    for entry in fs::read_dir(src)? {
        let entry = entry?;
        let s = entry.path();
        let d = dst.join(entry.file_name());
        let md = fs::symlink_metadata(&s)?;
        let ft = md.file_type();
        if ft.is_dir() {
            fs::create_dir(&d)?;
            clone_dir(&s, &d, hardlinks, links)?;
        } else if ft.is_file() {
            if md.nlink() > 1 && hardlinks == Hardlinks::Keep {
                if let Some(first) = links.get(&(md.dev(), md.ino())) {
                    fs::hard_link(first, &d)?;
                    continue;
                }
                links.insert((md.dev(), md.ino()), d.clone());
            }
            fs::copy(&s, &d)?;
        } else if ft.is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(&s)?, &d)?;
        } else if ft.is_char_device() || ft.is_block_device() || ft.is_fifo() {
            let kind = if ft.is_char_device() {
                libc::S_IFCHR
            } else if ft.is_block_device() {
                libc::S_IFBLK
            } else {
                libc::S_IFIFO
            };
            let c = cstring(d.as_os_str())?;
            // SAFETY: c is a valid C string.
            if unsafe { libc::mknod(c.as_ptr(), kind | (md.mode() & 0o7777), md.rdev()) } != 0 {
                return Err(io::Error::last_os_error());
            }
        } else {
            // Sockets belong to running processes, not to a filesystem image.
            continue;
        }
        copy_meta(&s, &d, &md)?;
    }
    Ok(())
}

/// Owner, then mode (chown clears setuid bits), then xattrs (chown also
/// clears `security.capability`), then times.
fn copy_meta(src: &Path, dst: &Path, md: &fs::Metadata) -> io::Result<()> {
    std::os::unix::fs::lchown(dst, Some(md.uid()), Some(md.gid()))?;
    if !md.file_type().is_symlink() {
        fs::set_permissions(dst, fs::Permissions::from_mode(md.mode() & 0o7777))?;
    }
    let xattrs = read_xattrs(src).map_err(|e| e.source)?;
    let c = cstring(dst.as_os_str())?;
    for (name, value) in xattrs {
        let n = cstring(name.as_ref())?;
        // SAFETY: c and n are valid C strings; value is valid for its length.
        let r = unsafe {
            libc::lsetxattr(
                c.as_ptr(),
                n.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    let times = [
        libc::timespec {
            tv_sec: md.atime(),
            tv_nsec: md.atime_nsec(),
        },
        libc::timespec {
            tv_sec: md.mtime(),
            tv_nsec: md.mtime_nsec(),
        },
    ];
    // SAFETY: c is a valid C string and times has two entries.
    let r = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
