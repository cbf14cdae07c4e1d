//! Listing a plain directory tree as layer entries (every path an addition).

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use super::{EntryKind, LayerEntry, LayerError, Meta, Result};

/// Lists the tree under `dir` (not `dir` itself) as sorted layer entries.
///
/// Files sharing an inode become one [`EntryKind::File`] (the first path in
/// sorted order) and [`EntryKind::Hardlink`]s to it. Sockets are skipped, as
/// Docker skips them. Extended attributes are read, except overlayfs's own
/// (`trusted.overlay.*`, `user.overlay.*`) and the host's SELinux label.
pub fn entries_from_dir(dir: &Path) -> Result<Vec<LayerEntry>> {
    let mut found = Vec::new();
    walk(dir, "", &mut found)?;
    found.sort_by(|a, b| a.0.path.split('/').cmp(b.0.path.split('/')));
    let mut first_path: HashMap<(u64, u64), String> = HashMap::new();
    let mut out = Vec::with_capacity(found.len());
    for (mut entry, inode) in found {
        if let Some(key) = inode {
            match first_path.get(&key) {
                Some(target) => {
                    entry.kind = EntryKind::Hardlink {
                        target: target.clone(),
                    };
                }
                None => {
                    first_path.insert(key, entry.path.clone());
                }
            }
        }
        out.push(entry);
    }
    Ok(out)
}

/// Adds the entries below `dir` (relative prefix `rel`) to `out`, each with
/// its (dev, inode) when it is a regular file with several links.
fn walk(dir: &Path, rel: &str, out: &mut Vec<(LayerEntry, Option<(u64, u64)>)>) -> Result<()> {
    let rd = fs::read_dir(dir).map_err(|e| LayerError::io("read directory", dir, e))?;
    for item in rd {
        let item = item.map_err(|e| LayerError::io("read directory", dir, e))?;
        let host = item.path();
        let name = item
            .file_name()
            .into_string()
            .map_err(|n| LayerError::InvalidPath(n.to_string_lossy().into_owned()))?;
        let path = if rel.is_empty() {
            name
        } else {
            format!("{rel}/{name}")
        };
        let md = fs::symlink_metadata(&host).map_err(|e| LayerError::io("stat", &host, e))?;
        let ft = md.file_type();
        let mut inode = None;
        let kind = if ft.is_dir() {
            EntryKind::Dir
        } else if ft.is_file() {
            if md.nlink() > 1 {
                inode = Some((md.dev(), md.ino()));
            }
            EntryKind::File {
                source: host.clone(),
                size: md.len(),
            }
        } else if ft.is_symlink() {
            let target = fs::read_link(&host).map_err(|e| LayerError::io("read link", &host, e))?;
            EntryKind::Symlink {
                target: target
                    .into_os_string()
                    .into_string()
                    .map_err(|t| LayerError::InvalidPath(t.to_string_lossy().into_owned()))?,
            }
        } else if ft.is_char_device() {
            EntryKind::CharDevice {
                major: rustix::fs::major(md.rdev()),
                minor: rustix::fs::minor(md.rdev()),
            }
        } else if ft.is_block_device() {
            EntryKind::BlockDevice {
                major: rustix::fs::major(md.rdev()),
                minor: rustix::fs::minor(md.rdev()),
            }
        } else if ft.is_fifo() {
            EntryKind::Fifo
        } else {
            continue;
        };
        let meta = Meta {
            mode: md.mode() & 0o7777,
            uid: md.uid(),
            gid: md.gid(),
            mtime: md.mtime(),
            xattrs: read_xattrs(&host)?,
        };
        let is_dir = matches!(kind, EntryKind::Dir);
        out.push((
            LayerEntry {
                path: path.clone(),
                kind,
                meta,
            },
            inode,
        ));
        if is_dir {
            walk(&host, &path, out)?;
        }
    }
    Ok(())
}

/// Whether an xattr describes the image content (rather than overlayfs
/// bookkeeping or host labelling).
fn keep_xattr(name: &str) -> bool {
    !(name.starts_with("trusted.overlay.")
        || name.starts_with("user.overlay.")
        || name == "security.selinux")
}

/// The extended attributes of `path` (not following a symlink).
pub(crate) fn read_xattrs(path: &Path) -> Result<BTreeMap<String, Vec<u8>>> {
    let mut out = BTreeMap::new();
    let err = |e: rustix::io::Errno| LayerError::io("list xattrs of", path, e.into());
    let mut names = vec![0u8; 1024];
    let len = loop {
        match rustix::fs::llistxattr(path, &mut names[..]) {
            Ok(n) => break n,
            Err(rustix::io::Errno::RANGE) => {
                let need = rustix::fs::llistxattr(path, &mut [0u8; 0][..]).map_err(err)?;
                names.resize(need.max(names.len() * 2), 0);
            }
            Err(rustix::io::Errno::NOTSUP) => return Ok(out),
            Err(e) => return Err(err(e)),
        }
    };
    for raw in names[..len].split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let Ok(name) = std::str::from_utf8(raw) else {
            continue;
        };
        if !keep_xattr(name) {
            continue;
        }
        let mut value = vec![0u8; 256];
        let n = loop {
            match rustix::fs::lgetxattr(path, name, &mut value[..]) {
                Ok(n) => break n,
                Err(rustix::io::Errno::RANGE) => {
                    let need = rustix::fs::lgetxattr(path, name, &mut [0u8; 0][..]).map_err(err)?;
                    value.resize(need.max(value.len() * 2), 0);
                }
                // Removed since it was listed.
                Err(rustix::io::Errno::NODATA) => break usize::MAX,
                Err(e) => return Err(err(e)),
            }
        };
        if n != usize::MAX {
            value.truncate(n);
            out.insert(name.to_string(), value);
        }
    }
    Ok(out)
}
