//! The filesystem a RUN command sees, as a [`Plan`] computed by rbuild before
//! it forks and carried out by [`setup`] inside the new mount namespace.
//!
//! Everything the plan mounts lives in the sandbox's private mount namespace
//! and disappears with it; nothing of it reaches the snapshot's upper dir
//! (mount points that had to be created are removed by the caller).

use std::io;
use std::path::{Path, PathBuf};

use nix::mount::MsFlags;

use super::syscall::Syscall;

/// Host device nodes bind-mounted into the sandbox's `/dev`, as Docker does.
const DEVICES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];

/// Paths under /proc and /sys hidden from the command (Docker's default
/// masked paths): files get /dev/null, directories an empty read-only tmpfs.
const MASKED: [&str; 9] = [
    "proc/acpi",
    "proc/kcore",
    "proc/keys",
    "proc/latency_stats",
    "proc/timer_list",
    "proc/timer_stats",
    "proc/sched_debug",
    "proc/scsi",
    "sys/firmware",
];

/// Paths under /proc made read-only (Docker's default read-only paths).
const READONLY: [&str; 5] = [
    "proc/bus",
    "proc/fs",
    "proc/irq",
    "proc/sys",
    "proc/sysrq-trigger",
];

/// One mount of a `RUN --mount` (or an injected file), with host paths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PlannedMount {
    /// A bind mount, read-only or not.
    Bind {
        source: PathBuf,
        target: PathBuf,
        readonly: bool,
    },
    /// A tmpfs, optionally limited in size (bytes).
    Tmpfs { target: PathBuf, size: Option<u64> },
    /// A writable view of a read-only directory whose writes are thrown away:
    /// overlayfs with a scratch upper dir.
    Overlay {
        lower: PathBuf,
        upper: PathBuf,
        work: PathBuf,
        target: PathBuf,
    },
}

impl PlannedMount {
    fn target(&self) -> &Path {
        match self {
            PlannedMount::Bind { target, .. }
            | PlannedMount::Tmpfs { target, .. }
            | PlannedMount::Overlay { target, .. } => target,
        }
    }
}

/// What [`setup`] does. Targets are host paths inside `rootfs`, already
/// resolved (symlinks of the image followed within the image) by the caller.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    /// The root filesystem (a snapshot's rootfs).
    pub rootfs: PathBuf,
    /// Where /proc, /dev and /sys go.
    pub proc_dir: PathBuf,
    pub dev_dir: PathBuf,
    pub sys_dir: PathBuf,
    /// rbuild-generated files (hosts, resolv.conf, hostname) and where they go.
    pub etc_files: Vec<(PathBuf, PathBuf)>,
    /// `RUN --mount`s, parents before children.
    pub mounts: Vec<PlannedMount>,
    /// The UTS hostname.
    pub hostname: String,
    /// Whether the sandbox has its own network namespace (loopback only).
    pub own_network: bool,
    /// The working directory, as a path inside the image.
    pub cwd: PathBuf,
}

/// A failed step of [`setup`].
#[derive(Debug)]
pub(crate) struct SetupError {
    pub op: &'static str,
    pub path: PathBuf,
    pub source: io::Error,
}

impl std::fmt::Display for SetupError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.op, self.path.display(), self.source)
    }
}

fn at<T>(op: &'static str, path: &Path, r: io::Result<T>) -> Result<T, SetupError> {
    r.map_err(|source| SetupError {
        op,
        path: path.to_path_buf(),
        source,
    })
}

/// Builds the sandbox's filesystem and makes it the root. Runs as PID 1 of
/// the new PID namespace, inside the new mount namespace.
pub(crate) fn setup(sys: &dyn Syscall, plan: &Plan) -> Result<(), SetupError> {
    let root = Path::new("/");
    // Before anything else: no mount below may propagate to the host.
    at(
        "make mounts private",
        root,
        sys.mount(
            None,
            root,
            None,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None,
        ),
    )?;
    // pivot_root needs the new root to be a mount point.
    at(
        "bind rootfs",
        &plan.rootfs,
        sys.mount(
            Some(&plan.rootfs),
            &plan.rootfs,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None,
        ),
    )?;
    let nosuid_nodev_noexec = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    at(
        "mount proc",
        &plan.proc_dir,
        sys.mount(
            Some(Path::new("proc")),
            &plan.proc_dir,
            Some("proc"),
            nosuid_nodev_noexec,
            None,
        ),
    )?;
    setup_dev(sys, &plan.dev_dir)?;
    let sysfs_flags = nosuid_nodev_noexec | MsFlags::MS_RDONLY;
    if sys
        .mount(
            Some(Path::new("sysfs")),
            &plan.sys_dir,
            Some("sysfs"),
            sysfs_flags,
            None,
        )
        .is_err()
    {
        // sysfs cannot be mounted in a network namespace rbuild does not own
        // (host networking from a user namespace): a read-only bind instead.
        bind(sys, Path::new("/sys"), &plan.sys_dir, true)?;
    }
    for rel in MASKED {
        let p = plan.rootfs.join(rel);
        match sys.is_dir(&p) {
            Some(true) => at(
                "mask",
                &p,
                sys.mount(
                    Some(Path::new("tmpfs")),
                    &p,
                    Some("tmpfs"),
                    MsFlags::MS_RDONLY | nosuid_nodev_noexec,
                    Some("size=0"),
                ),
            )?,
            Some(false) => bind(sys, Path::new("/dev/null"), &p, false)?,
            None => {}
        }
    }
    for rel in READONLY {
        let p = plan.rootfs.join(rel);
        if sys.is_dir(&p).is_some() {
            bind(sys, &p, &p, true)?;
        }
    }
    for (source, target) in &plan.etc_files {
        bind(sys, source, target, false)?;
    }
    for m in &plan.mounts {
        if let Ok(rel) = m.target().strip_prefix(&plan.dev_dir) {
            make_dev_mount_point(sys, &plan.dev_dir, rel, m)?;
        }
        match m {
            PlannedMount::Bind {
                source,
                target,
                readonly,
            } => bind(sys, source, target, *readonly)?,
            PlannedMount::Tmpfs { target, size } => {
                let data = size.map(|s| format!("size={s}"));
                at(
                    "mount tmpfs",
                    target,
                    sys.mount(
                        Some(Path::new("tmpfs")),
                        target,
                        Some("tmpfs"),
                        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                        data.as_deref(),
                    ),
                )?
            }
            PlannedMount::Overlay {
                lower,
                upper,
                work,
                target,
            } => {
                let data = format!(
                    "lowerdir={},upperdir={},workdir={},index=off",
                    lower.display(),
                    upper.display(),
                    work.display()
                );
                at(
                    "mount overlay",
                    m.target(),
                    sys.mount(
                        Some(Path::new("overlay")),
                        target,
                        Some("overlay"),
                        MsFlags::empty(),
                        Some(&data),
                    ),
                )?
            }
        }
    }
    at("sethostname", root, sys.sethostname(&plan.hostname))?;
    if plan.own_network {
        at("bring up loopback", Path::new("lo"), sys.loopback_up())?;
    }
    at("pivot_root", &plan.rootfs, sys.pivot_root(&plan.rootfs))?;
    at("chdir", &plan.cwd, sys.chdir(&plan.cwd))?;
    Ok(())
}

/// A minimal /dev: tmpfs with bind-mounted host devices, a private devpts
/// instance, /dev/shm and the usual symlinks.
fn setup_dev(sys: &dyn Syscall, dev: &Path) -> Result<(), SetupError> {
    at(
        "mount /dev",
        dev,
        sys.mount(
            Some(Path::new("tmpfs")),
            dev,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME,
            Some("mode=755,size=65536k"),
        ),
    )?;
    for name in DEVICES {
        let node = dev.join(name);
        at("create", &node, sys.create_file(&node, 0o666))?;
        bind(sys, &Path::new("/dev").join(name), &node, false)?;
    }
    let pts = dev.join("pts");
    at("mkdir", &pts, sys.mkdir(&pts, 0o755))?;
    at(
        "mount devpts",
        &pts,
        sys.mount(
            Some(Path::new("devpts")),
            &pts,
            Some("devpts"),
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            Some("newinstance,ptmxmode=0666,mode=0620"),
        ),
    )?;
    let shm = dev.join("shm");
    at("mkdir", &shm, sys.mkdir(&shm, 0o1777))?;
    at(
        "mount /dev/shm",
        &shm,
        sys.mount(
            Some(Path::new("shm")),
            &shm,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            Some("mode=1777,size=65536k"),
        ),
    )?;
    for (link, target) in [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        let l = dev.join(link);
        at("symlink", &l, sys.symlink(Path::new(target), &l))?;
    }
    Ok(())
}

/// Creates the mount point of `m`, at `rel` under the sandbox's /dev
/// tmpfs, with its missing parents: the tmpfs hides whatever the rootfs
/// had there, and what is made in it never reaches the layer.
fn make_dev_mount_point(
    sys: &dyn Syscall,
    dev: &Path,
    rel: &Path,
    m: &PlannedMount,
) -> Result<(), SetupError> {
    let mut p = dev.to_path_buf();
    let parts: Vec<_> = rel.components().collect();
    for (i, c) in parts.iter().enumerate() {
        p.push(c);
        if sys.is_dir(&p).is_some() {
            continue;
        }
        let last = i + 1 == parts.len();
        let dir = match m {
            PlannedMount::Bind { source, .. } if last => sys.is_dir(source) == Some(true),
            _ => true,
        };
        if dir {
            at("mkdir", &p, sys.mkdir(&p, 0o755))?;
        } else {
            at("create", &p, sys.create_file(&p, 0o644))?;
        }
    }
    Ok(())
}

/// A recursive bind mount, made read-only by a remount when asked (a bind
/// mount ignores MS_RDONLY on its first call).
fn bind(sys: &dyn Syscall, source: &Path, target: &Path, readonly: bool) -> Result<(), SetupError> {
    at(
        "bind mount",
        target,
        sys.mount(
            Some(source),
            target,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None,
        ),
    )?;
    if readonly {
        at(
            "remount read-only",
            target,
            sys.mount(
                None,
                target,
                None,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                None,
            ),
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::syscall::test::Recorder;
    use super::*;

    fn plan() -> Plan {
        let r = PathBuf::from("/s/root");
        Plan {
            proc_dir: r.join("proc"),
            dev_dir: r.join("dev"),
            sys_dir: r.join("sys"),
            etc_files: vec![(PathBuf::from("/t/hosts"), r.join("etc/hosts"))],
            mounts: vec![
                PlannedMount::Bind {
                    source: PathBuf::from("/ctx"),
                    target: r.join("src"),
                    readonly: true,
                },
                PlannedMount::Tmpfs {
                    target: r.join("tmp"),
                    size: Some(1024),
                },
            ],
            hostname: "box".into(),
            own_network: true,
            cwd: PathBuf::from("/src"),
            rootfs: r,
        }
    }

    #[test]
    fn mounts_are_private_first_and_pivot_comes_last() {
        let sys = Recorder::default();
        setup(&sys, &plan()).expect("recorded setup succeeds");
        let calls = sys.calls.borrow();
        assert!(
            calls[0].starts_with("mount - / - MS_REC | MS_PRIVATE"),
            "{}",
            calls[0]
        );
        assert!(
            calls[1].starts_with("mount /s/root /s/root - MS_BIND | MS_REC"),
            "{}",
            calls[1]
        );
        let n = calls.len();
        assert_eq!(calls[n - 2], "pivot_root /s/root");
        assert_eq!(calls[n - 1], "chdir /src");
        assert!(calls.contains(&"sethostname box".to_string()));
        assert!(calls.contains(&"loopback_up".to_string()));
    }

    #[test]
    fn readonly_bind_is_remounted_and_tmpfs_sized() {
        let sys = Recorder::default();
        setup(&sys, &plan()).expect("recorded setup succeeds");
        let calls = sys.calls.borrow();
        let i = calls
            .iter()
            .position(|c| c.starts_with("mount /ctx /s/root/src - MS_BIND | MS_REC"))
            .expect("bind of /ctx");
        assert_eq!(
            calls[i + 1],
            "mount - /s/root/src - MS_RDONLY | MS_REMOUNT | MS_BIND -"
        );
        assert!(calls
            .iter()
            .any(|c| c == "mount tmpfs /s/root/tmp tmpfs MS_NOSUID | MS_NODEV size=1024"));
        // /etc/hosts stays writable (Docker's behaviour); writes go to rbuild's copy.
        assert!(calls
            .iter()
            .any(|c| c == "mount /t/hosts /s/root/etc/hosts - MS_BIND | MS_REC -"));
        assert!(!calls
            .iter()
            .any(|c| c.starts_with("mount - /s/root/etc/hosts")));
    }

    #[test]
    fn dev_has_devices_pts_shm_and_links() {
        let sys = Recorder::default();
        setup(&sys, &plan()).expect("recorded setup succeeds");
        let calls = sys.calls.borrow();
        for d in DEVICES {
            let bind = format!("mount /dev/{d} /s/root/dev/{d} - MS_BIND | MS_REC -");
            assert!(calls.contains(&bind), "missing {bind}");
        }
        assert!(calls
            .iter()
            .any(|c| c.starts_with("mount devpts /s/root/dev/pts devpts")
                && c.contains("newinstance")));
        assert!(calls.contains(&"symlink /s/root/dev/ptmx -> pts/ptmx".to_string()));
    }

    #[test]
    fn mount_points_under_dev_are_made_in_its_tmpfs() {
        let mut sys = Recorder::default();
        let script = PathBuf::from("/t/script");
        sys.files.insert(script.clone());
        let mut p = plan();
        p.mounts.push(PlannedMount::Bind {
            source: script,
            target: PathBuf::from("/s/root/dev/pipes/EOF"),
            readonly: true,
        });
        setup(&sys, &p).expect("recorded setup succeeds");
        let calls = sys.calls.borrow();
        let at = |c: &str| {
            calls
                .iter()
                .position(|x| x.starts_with(c))
                .unwrap_or_else(|| panic!("no {c} in {calls:#?}"))
        };
        let dev = at("mount tmpfs /s/root/dev tmpfs");
        let dir = at("mkdir /s/root/dev/pipes 755");
        let file = at("create /s/root/dev/pipes/EOF 644");
        let bind = at("mount /t/script /s/root/dev/pipes/EOF - MS_BIND | MS_REC");
        assert!(dev < dir && dir < file && file < bind, "{calls:#?}");
        assert_eq!(
            calls[bind + 1],
            "mount - /s/root/dev/pipes/EOF - MS_RDONLY | MS_REMOUNT | MS_BIND -"
        );
        // Mounts elsewhere get no mount point from the setup.
        assert!(!calls.iter().any(|c| c.starts_with("mkdir /s/root/src")));
    }

    #[test]
    fn masked_paths_follow_their_type() {
        let mut sys = Recorder::default();
        sys.files.insert(PathBuf::from("/s/root/proc/kcore"));
        sys.dirs.insert(PathBuf::from("/s/root/proc/acpi"));
        sys.dirs.insert(PathBuf::from("/s/root/proc/sys"));
        setup(&sys, &plan()).expect("recorded setup succeeds");
        let calls = sys.calls.borrow();
        assert!(
            calls.contains(&"mount /dev/null /s/root/proc/kcore - MS_BIND | MS_REC -".to_string())
        );
        assert!(calls
            .iter()
            .any(|c| c.starts_with("mount tmpfs /s/root/proc/acpi tmpfs MS_RDONLY")));
        assert!(calls.contains(
            &"mount - /s/root/proc/sys - MS_RDONLY | MS_REMOUNT | MS_BIND -".to_string()
        ));
        // Paths that do not exist are left alone.
        assert!(!calls.iter().any(|c| c.contains("timer_list")));
    }
}
