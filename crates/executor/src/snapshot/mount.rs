//! Host-side mounts of the snapshotter: overlayfs and read-only binds.
//!
//! Overlay mounts use the new mount API (`fsopen`/`fsconfig`/`fsmount`/
//! `move_mount`) with one `lowerdir+` per layer, which avoids the one-page
//! limit of mount(2)'s option string (Linux 6.8+). Older kernels get mount(2)
//! with a `lowerdir=a:b:c` string; the caller keeps that string short enough.
//!
//! Writable overlays are mounted `volatile` (Linux 5.10+) where the kernel
//! has it: without it, unmounting an overlay syncs the whole upper
//! filesystem (`syncfs`), which costs tens of milliseconds to seconds per
//! build step on a busy disk. Nothing relies on that sync: a step's layer is
//! written to the blob store, with its own fsync, from the upper dir's page
//! cache, and the work dir (which the kernel marks as volatile) is never
//! mounted again.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use crate::diff::cstring;

/// The most lower layers one overlayfs mount accepts (`OVL_MAX_STACK`).
pub(crate) const MAX_LOWERS: usize = 500;

/// What mount(2) accepts as its option string: one page, minus room for the
/// non-lowerdir options.
pub(crate) const LEGACY_OPTIONS_MAX: usize = 4096 - 64;

/// An overlay mount request. `lowers` are ordered topmost first.
pub(crate) struct Overlay<'a> {
    pub lowers: &'a [PathBuf],
    /// Upper and work directories; none for a read-only mount.
    pub upper: Option<(&'a Path, &'a Path)>,
}

/// Mounts overlayfs at `target`.
pub(crate) fn mount_overlay(ov: &Overlay<'_>, target: &Path) -> io::Result<()> {
    match mount_overlay_fsconfig(ov, target) {
        Ok(()) => Ok(()),
        // ENOSYS: no new mount API. EINVAL: a kernel without `lowerdir+`.
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOSYS) | Some(libc::EINVAL)) => {
            match mount_overlay_legacy(ov, target, true) {
                // A kernel older than 5.10 rejects `volatile`.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) && ov.upper.is_some() => {
                    mount_overlay_legacy(ov, target, false)
                }
                r => r,
            }
        }
        Err(e) => Err(e),
    }
}

/// The option string mount(2) gets; `None` when it would not fit in a page.
pub(crate) fn legacy_options(ov: &Overlay<'_>) -> Option<String> {
    let mut s = String::from("lowerdir=");
    for (i, l) in ov.lowers.iter().enumerate() {
        if i > 0 {
            s.push(':');
        }
        s.push_str(&escape_option(&l.to_string_lossy()));
    }
    if let Some((upper, work)) = ov.upper {
        s.push_str(",upperdir=");
        s.push_str(&escape_option(&upper.to_string_lossy()));
        s.push_str(",workdir=");
        s.push_str(&escape_option(&work.to_string_lossy()));
    }
    s.push_str(",index=off,redirect_dir=off,metacopy=off");
    if ov.upper.is_some() {
        s.push_str(",volatile");
    }
    (s.len() <= LEGACY_OPTIONS_MAX).then_some(s)
}

/// overlayfs splits its options at `,` and lowerdirs at `:`; both are escaped
/// with a backslash in a path.
fn escape_option(p: &str) -> String {
    let mut out = String::with_capacity(p.len());
    for c in p.chars() {
        if matches!(c, ',' | ':' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn mount_overlay_legacy(ov: &Overlay<'_>, target: &Path, volatile: bool) -> io::Result<()> {
    let mut data = legacy_options(ov).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "overlay lowerdir list longer than a page",
        )
    })?;
    if !volatile {
        data = data.replace(",volatile", "");
    }
    let flags = if ov.upper.is_none() {
        libc::MS_RDONLY
    } else {
        0
    };
    mount_raw(Some("overlay"), target, Some("overlay"), flags, Some(&data))
}

fn mount_overlay_fsconfig(ov: &Overlay<'_>, target: &Path) -> io::Result<()> {
    let fs = fsopen("overlay")?;
    for l in ov.lowers {
        fsconfig_string(&fs, "lowerdir+", &l.to_string_lossy())?;
    }
    if let Some((upper, work)) = ov.upper {
        fsconfig_string(&fs, "upperdir", &upper.to_string_lossy())?;
        fsconfig_string(&fs, "workdir", &work.to_string_lossy())?;
        match fsconfig_flag(&fs, "volatile") {
            // A kernel older than 5.10 does not know the option: its
            // unmounts sync, which is slower but as correct.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
            r => r?,
        }
    }
    // Plain upper dirs: whole files on copy-up, real directories on rename.
    fsconfig_string(&fs, "index", "off")?;
    fsconfig_string(&fs, "redirect_dir", "off")?;
    fsconfig_string(&fs, "metacopy", "off")?;
    // SAFETY: fs is an fs context fd; the other arguments are unused for CMD_CREATE.
    check(unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fs.as_raw_fd(),
            FSCONFIG_CMD_CREATE,
            std::ptr::null::<libc::c_char>(),
            std::ptr::null::<libc::c_void>(),
            0,
        )
    })?;
    let attrs = if ov.upper.is_none() {
        MOUNT_ATTR_RDONLY
    } else {
        0
    };
    // SAFETY: fs is a created fs context.
    let mnt =
        check(unsafe { libc::syscall(libc::SYS_fsmount, fs.as_raw_fd(), FSMOUNT_CLOEXEC, attrs) })?;
    // SAFETY: fsmount returned a new fd that we own.
    let mnt = unsafe { OwnedFd::from_raw_fd(mnt as i32) };
    let empty = CString::default();
    let ctarget = cstring(target.as_os_str())?;
    // SAFETY: mnt is a detached mount fd; ctarget and empty are valid C strings.
    check(unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            mnt.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_FDCWD,
            ctarget.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    })?;
    Ok(())
}

const FSOPEN_CLOEXEC: libc::c_uint = 1;
const FSCONFIG_SET_FLAG: libc::c_uint = 0;
const FSCONFIG_SET_STRING: libc::c_uint = 1;
const FSCONFIG_CMD_CREATE: libc::c_uint = 6;
const FSMOUNT_CLOEXEC: libc::c_uint = 1;
const MOUNT_ATTR_RDONLY: libc::c_uint = 1;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 4;

fn fsopen(fstype: &str) -> io::Result<OwnedFd> {
    let name = cstring(fstype.as_ref())?;
    // SAFETY: name is a valid C string.
    let fd = check(unsafe { libc::syscall(libc::SYS_fsopen, name.as_ptr(), FSOPEN_CLOEXEC) })?;
    // SAFETY: fsopen returned a new fd that we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn fsconfig_string(fs: &OwnedFd, key: &str, value: &str) -> io::Result<()> {
    let k = cstring(key.as_ref())?;
    let v = cstring(value.as_ref())?;
    // SAFETY: fs is an fs context fd; k and v are valid C strings.
    check(unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fs.as_raw_fd(),
            FSCONFIG_SET_STRING,
            k.as_ptr(),
            v.as_ptr(),
            0,
        )
    })
    .map(drop)
}

fn fsconfig_flag(fs: &OwnedFd, key: &str) -> io::Result<()> {
    let k = cstring(key.as_ref())?;
    // SAFETY: fs is an fs context fd; k is a valid C string; a flag has no value.
    check(unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fs.as_raw_fd(),
            FSCONFIG_SET_FLAG,
            k.as_ptr(),
            std::ptr::null::<libc::c_void>(),
            0,
        )
    })
    .map(drop)
}

fn check(ret: libc::c_long) -> io::Result<libc::c_long> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// mount(2).
pub(crate) fn mount_raw(
    source: Option<&str>,
    target: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> io::Result<()> {
    let src = source.map(|s| cstring(s.as_ref())).transpose()?;
    let tgt = cstring(target.as_os_str())?;
    let fst = fstype.map(|s| cstring(s.as_ref())).transpose()?;
    let dat = data.map(|s| cstring(s.as_ref())).transpose()?;
    // SAFETY: all pointers are valid C strings or null.
    let r = unsafe {
        libc::mount(
            src.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
            tgt.as_ptr(),
            fst.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
            flags,
            dat.as_ref()
                .map_or(std::ptr::null(), |s| s.as_ptr().cast::<libc::c_void>()),
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// A read-only bind mount of `source` at `target`.
pub(crate) fn bind_readonly(source: &Path, target: &Path) -> io::Result<()> {
    let src = source.to_string_lossy();
    mount_raw(Some(&src), target, None, libc::MS_BIND | libc::MS_REC, None)?;
    let ro = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY;
    if let Err(e) = mount_raw(None, target, None, ro, None) {
        let _ = unmount(target);
        return Err(e);
    }
    Ok(())
}

/// Unmounts `target`; a busy mount (a file still open in it) is detached
/// instead, so that cleanup never leaves it in the mount table.
pub(crate) fn unmount(target: &Path) -> io::Result<()> {
    let t = cstring(target.as_os_str())?;
    // SAFETY: t is a valid C string.
    if unsafe { libc::umount2(t.as_ptr(), 0) } == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() != Some(libc::EBUSY) {
        return Err(e);
    }
    // SAFETY: as above.
    if unsafe { libc::umount2(t.as_ptr(), libc::MNT_DETACH) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
