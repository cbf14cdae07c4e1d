//! User and group resolution inside an image: `USER` specs for RUN and the
//! process config, and `--chown` specs for COPY/ADD, against the image's
//! `/etc/passwd` and `/etc/group` (read through [`rootfs::resolve`], so a
//! symlinked `/etc` stays inside the image).
//!
//! The two kinds of spec differ in one rule, as in Docker:
//! - `USER` (runc's `GetExecUser`): a name or numeric uid takes its primary
//!   gid from passwd (gid 0 for a numeric uid with no entry); without an
//!   explicit group, the groups listing the user by name are added as
//!   supplementary groups.
//! - `--chown` (BuildKit's file operations): a name takes its passwd gid, a
//!   bare numeric uid is used as the gid too; no supplementary groups.
//!
//! Numeric ids never need the files; unknown names are errors.

use std::fs;
use std::io;
use std::path::Path;

use rbuild_image::rootfs;

/// Errors resolving a user or group.
#[derive(Debug, thiserror::Error)]
pub enum UserError {
    /// The spec is malformed (`a:b:c`, empty name).
    #[error("invalid user spec {0:?}")]
    Invalid(String),
    /// No passwd entry has this name.
    #[error("unable to find user {name}: no matching entries in passwd file")]
    UnknownUser {
        /// The user name.
        name: String,
    },
    /// No group entry has this name.
    #[error("unable to find group {name}: no matching entries in group file")]
    UnknownGroup {
        /// The group name.
        name: String,
    },
    /// Reading `/etc/passwd` or `/etc/group` failed.
    #[error("read {path} in the image: {source}")]
    Io {
        /// The path inside the image.
        path: &'static str,
        /// The OS error.
        source: io::Error,
    },
}

type Result<T> = std::result::Result<T, UserError>;

/// A resolved user: the ids a process runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedUser {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Supplementary group ids (sorted, without the primary gid).
    pub additional_gids: Vec<u32>,
    /// Home directory from passwd, when the user has an entry.
    pub home: Option<String>,
}

impl ResolvedUser {
    /// root (0:0), the default user.
    pub fn root() -> ResolvedUser {
        ResolvedUser {
            uid: 0,
            gid: 0,
            additional_gids: Vec::new(),
            home: Some("/root".to_string()),
        }
    }
}

/// One passwd line.
struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
    home: String,
}

/// One group line.
struct GroupEntry {
    name: String,
    gid: u32,
    members: Vec<String>,
}

/// Reads a file of the image; a missing file reads as empty (an image
/// without `/etc/passwd` still accepts numeric ids).
fn read_image_file(rootfs_dir: &Path, path: &'static str) -> Result<String> {
    let host = match rootfs::resolve(rootfs_dir, path) {
        Ok(p) => p,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(String::new()),
        Err(source) => return Err(UserError::Io { path, source }),
    };
    match fs::read(&host) {
        Ok(data) => Ok(String::from_utf8_lossy(&data).into_owned()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(String::new()),
        Err(source) => Err(UserError::Io { path, source }),
    }
}

fn passwd(rootfs_dir: &Path) -> Result<Vec<PasswdEntry>> {
    let text = read_image_file(rootfs_dir, "/etc/passwd")?;
    Ok(text
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            Some(PasswdEntry {
                name: f.first()?.to_string(),
                uid: f.get(2)?.trim().parse().ok()?,
                gid: f.get(3)?.trim().parse().ok()?,
                home: f.get(5).unwrap_or(&"").to_string(),
            })
        })
        .collect())
}

fn groups(rootfs_dir: &Path) -> Result<Vec<GroupEntry>> {
    let text = read_image_file(rootfs_dir, "/etc/group")?;
    Ok(text
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            Some(GroupEntry {
                name: f.first()?.to_string(),
                gid: f.get(2)?.trim().parse().ok()?,
                members: f
                    .get(3)
                    .map(|m| {
                        m.split(',')
                            .map(str::trim)
                            .filter(|s| !s.is_empty())
                            .map(str::to_string)
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        })
        .collect())
}

/// Splits `user[:group]`, rejecting empty parts and extra colons.
fn split_spec(spec: &str) -> Result<(&str, Option<&str>)> {
    let invalid = || UserError::Invalid(spec.to_string());
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    if user.is_empty() || group.is_some_and(|g| g.is_empty() || g.contains(':')) {
        return Err(invalid());
    }
    Ok((user, group))
}

fn resolve_group(group: &str, groups: &[GroupEntry]) -> Result<u32> {
    if let Ok(gid) = group.parse::<u32>() {
        return Ok(gid);
    }
    groups
        .iter()
        .find(|g| g.name == group)
        .map(|g| g.gid)
        .ok_or_else(|| UserError::UnknownGroup {
            name: group.to_string(),
        })
}

/// Resolves a `USER` spec (`name`, `uid`, `name:group`, `uid:gid`, ...) as
/// a process would run with it. An empty spec is root.
pub fn lookup_user(rootfs_dir: &Path, spec: &str) -> Result<ResolvedUser> {
    if spec.is_empty() {
        return lookup_user(rootfs_dir, "root").or_else(|_| Ok(ResolvedUser::root()));
    }
    let (user, group) = split_spec(spec)?;
    let users = passwd(rootfs_dir)?;
    let (uid, entry) =
        match user.parse::<u32>() {
            Ok(uid) => (uid, users.iter().find(|u| u.uid == uid)),
            Err(_) => {
                let e = users.iter().find(|u| u.name == user).ok_or_else(|| {
                    UserError::UnknownUser {
                        name: user.to_string(),
                    }
                })?;
                (e.uid, Some(e))
            }
        };
    let mut resolved = ResolvedUser {
        uid,
        gid: entry.map(|e| e.gid).unwrap_or(0),
        additional_gids: Vec::new(),
        home: entry.map(|e| e.home.clone()),
    };
    let all_groups = groups(rootfs_dir)?;
    match group {
        Some(g) => resolved.gid = resolve_group(g, &all_groups)?,
        None => {
            // Supplementary groups only in the implicit form, by user name.
            if let Some(name) = entry.map(|e| e.name.as_str()) {
                let mut extra: Vec<u32> = all_groups
                    .iter()
                    .filter(|g| g.members.iter().any(|m| m == name))
                    .map(|g| g.gid)
                    .filter(|gid| *gid != resolved.gid)
                    .collect();
                extra.sort_unstable();
                extra.dedup();
                resolved.additional_gids = extra;
            }
        }
    }
    Ok(resolved)
}

/// Resolves a COPY/ADD `--chown` spec to `(uid, gid)` with BuildKit's
/// rules: a user name takes its passwd gid, a numeric uid alone is also the
/// gid, an explicit group (name or number) overrides.
///
/// ```no_run
/// # use std::path::Path;
/// use rbuild_executor::user::lookup_chown;
/// assert_eq!(lookup_chown(Path::new("/rootfs"), "1000").unwrap(), (1000, 1000));
/// ```
pub fn lookup_chown(rootfs_dir: &Path, spec: &str) -> Result<(u32, u32)> {
    let (user, group) = split_spec(spec)?;
    let (uid, mut gid) =
        match user.parse::<u32>() {
            Ok(uid) => (uid, uid),
            Err(_) => {
                let users = passwd(rootfs_dir)?;
                let e = users.iter().find(|u| u.name == user).ok_or_else(|| {
                    UserError::UnknownUser {
                        name: user.to_string(),
                    }
                })?;
                (e.uid, e.gid)
            }
        };
    if let Some(g) = group {
        let all = if g.parse::<u32>().is_ok() {
            Vec::new()
        } else {
            groups(rootfs_dir)?
        };
        gid = resolve_group(g, &all)?;
    }
    Ok((uid, gid))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image() -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        let etc = dir.path().join("etc");
        fs::create_dir_all(&etc).expect("mkdir");
        fs::write(
            etc.join("passwd"),
            "root:x:0:0:root:/root:/bin/sh\n\
             app:x:1000:1000:App:/home/app:/bin/sh\n\
             svc:x:1001:50::/srv:/bin/false\n",
        )
        .expect("passwd");
        fs::write(
            etc.join("group"),
            "root:x:0:\nstaff:x:50:\nwheel:x:10:app,svc\ndocker:x:999:app\napp:x:1000:\n",
        )
        .expect("group");
        dir
    }

    #[test]
    fn user_specs() {
        let img = image();
        let r = |s| lookup_user(img.path(), s);
        let app = r("app").unwrap();
        assert_eq!((app.uid, app.gid), (1000, 1000));
        assert_eq!(app.additional_gids, vec![10, 999]);
        assert_eq!(app.home.as_deref(), Some("/home/app"));
        let explicit = r("app:staff").unwrap();
        assert_eq!((explicit.uid, explicit.gid), (1000, 50));
        assert!(explicit.additional_gids.is_empty());
        let numeric = r("1001").unwrap();
        assert_eq!((numeric.uid, numeric.gid), (1001, 50));
        assert_eq!(numeric.additional_gids, vec![10]);
        let unknown_numeric = r("4242:77").unwrap();
        assert_eq!((unknown_numeric.uid, unknown_numeric.gid), (4242, 77));
        assert_eq!(r("4242").unwrap().gid, 0);
        assert_eq!(r("").unwrap().uid, 0);
        assert!(matches!(r("nobody"), Err(UserError::UnknownUser { .. })));
        assert!(matches!(
            r("app:nogroup"),
            Err(UserError::UnknownGroup { .. })
        ));
        assert!(matches!(r("a:b:c"), Err(UserError::Invalid(_))));
        assert!(matches!(r(":5"), Err(UserError::Invalid(_))));
    }

    #[test]
    fn chown_specs() {
        let img = image();
        let c = |s| lookup_chown(img.path(), s);
        assert_eq!(c("app").unwrap(), (1000, 1000));
        assert_eq!(c("svc").unwrap(), (1001, 50));
        assert_eq!(c("1001").unwrap(), (1001, 1001));
        assert_eq!(c("1001:wheel").unwrap(), (1001, 10));
        assert_eq!(c("svc:7").unwrap(), (1001, 7));
        assert!(c("ghost").is_err());
        // Numeric ids need no files at all.
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(lookup_chown(empty.path(), "5:6").unwrap(), (5, 6));
        assert_eq!(lookup_user(empty.path(), "5").unwrap().uid, 5);
    }
}
