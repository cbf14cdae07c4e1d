//! The kernel calls that set up a sandbox's filesystem, behind one small
//! interface: [`Linux`] makes them, and the recording double in the tests
//! checks the order and arguments of a setup without root.

use std::io;
use std::path::Path;

use nix::mount::{MntFlags, MsFlags};

/// The calls [`super::setup`] makes inside the sandbox's namespaces.
pub(crate) trait Syscall {
    /// mount(2).
    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> io::Result<()>;
    /// Creates an empty file (a bind-mount point) with `mode`.
    fn create_file(&self, path: &Path, mode: u32) -> io::Result<()>;
    /// mkdir(2) with `mode`.
    fn mkdir(&self, path: &Path, mode: u32) -> io::Result<()>;
    /// symlink(2): `link` pointing to `target`.
    fn symlink(&self, target: &Path, link: &Path) -> io::Result<()>;
    /// Whether `path` is a directory (`None`: it does not exist).
    fn is_dir(&self, path: &Path) -> Option<bool>;
    /// Makes `new_root` the root: chdir, pivot_root(".", "."), detach the
    /// old root, chdir("/"). No directory for the old root is needed, so
    /// nothing is created in the image.
    fn pivot_root(&self, new_root: &Path) -> io::Result<()>;
    /// sethostname(2).
    fn sethostname(&self, name: &str) -> io::Result<()>;
    /// Brings the loopback interface of the current network namespace up.
    fn loopback_up(&self) -> io::Result<()>;
    /// chdir(2).
    fn chdir(&self, path: &Path) -> io::Result<()>;
}

/// The real kernel.
pub(crate) struct Linux;

impl Syscall for Linux {
    fn mount(
        &self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> io::Result<()> {
        nix::mount::mount(source, target, fstype, flags, data).map_err(io::Error::from)
    }

    fn create_file(&self, path: &Path, mode: u32) -> io::Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(mode)
            .open(path)
            .map(drop)
    }

    fn mkdir(&self, path: &Path, mode: u32) -> io::Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new().mode(mode).create(path)
    }

    fn symlink(&self, target: &Path, link: &Path) -> io::Result<()> {
        std::os::unix::fs::symlink(target, link)
    }

    fn is_dir(&self, path: &Path) -> Option<bool> {
        std::fs::symlink_metadata(path).ok().map(|m| m.is_dir())
    }

    fn pivot_root(&self, new_root: &Path) -> io::Result<()> {
        nix::unistd::chdir(new_root)?;
        nix::unistd::pivot_root(".", ".")?;
        // The old root is now stacked on "."; detach it.
        nix::mount::umount2(".", MntFlags::MNT_DETACH)?;
        nix::unistd::chdir("/")?;
        Ok(())
    }

    fn sethostname(&self, name: &str) -> io::Result<()> {
        nix::unistd::sethostname(name).map_err(io::Error::from)
    }

    fn loopback_up(&self) -> io::Result<()> {
        use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
        use std::os::fd::AsRawFd;
        let sock = socket(
            AddressFamily::Inet,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC,
            None,
        )?;
        // SAFETY: ifreq is plain data; zeroed is a valid value.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
            *dst = *src as libc::c_char;
        }
        // SAFETY: sock is a socket and req a valid ifreq for these ioctls.
        unsafe {
            if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) < 0 {
                return Err(io::Error::last_os_error());
            }
            req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
            if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }

    fn chdir(&self, path: &Path) -> io::Result<()> {
        nix::unistd::chdir(path).map_err(io::Error::from)
    }
}

#[cfg(test)]
pub(crate) mod test {
    //! A [`Syscall`] that records calls instead of making them.

    use super::*;
    use std::cell::RefCell;
    use std::collections::BTreeSet;
    use std::path::PathBuf;

    /// Records every call as a line of text; `dirs` are the paths that
    /// exist as directories, `files` as other files.
    #[derive(Default)]
    pub(crate) struct Recorder {
        pub calls: RefCell<Vec<String>>,
        pub dirs: BTreeSet<PathBuf>,
        pub files: BTreeSet<PathBuf>,
    }

    impl Recorder {
        fn log(&self, s: String) -> io::Result<()> {
            self.calls.borrow_mut().push(s);
            Ok(())
        }
    }

    impl Syscall for Recorder {
        fn mount(
            &self,
            source: Option<&Path>,
            target: &Path,
            fstype: Option<&str>,
            flags: MsFlags,
            data: Option<&str>,
        ) -> io::Result<()> {
            let flags = format!("{flags:?}");
            let flags = flags
                .strip_prefix("MsFlags(")
                .and_then(|f| f.strip_suffix(')'))
                .unwrap_or(&flags);
            self.log(format!(
                "mount {} {} {} {flags} {}",
                source.map_or("-".into(), |s| s.display().to_string()),
                target.display(),
                fstype.unwrap_or("-"),
                data.unwrap_or("-")
            ))
        }
        fn create_file(&self, path: &Path, mode: u32) -> io::Result<()> {
            self.log(format!("create {} {mode:o}", path.display()))
        }
        fn mkdir(&self, path: &Path, mode: u32) -> io::Result<()> {
            self.log(format!("mkdir {} {mode:o}", path.display()))
        }
        fn symlink(&self, target: &Path, link: &Path) -> io::Result<()> {
            self.log(format!(
                "symlink {} -> {}",
                link.display(),
                target.display()
            ))
        }
        fn is_dir(&self, path: &Path) -> Option<bool> {
            if self.dirs.contains(path) {
                Some(true)
            } else if self.files.contains(path) {
                Some(false)
            } else {
                None
            }
        }
        fn pivot_root(&self, new_root: &Path) -> io::Result<()> {
            self.log(format!("pivot_root {}", new_root.display()))
        }
        fn sethostname(&self, name: &str) -> io::Result<()> {
            self.log(format!("sethostname {name}"))
        }
        fn loopback_up(&self) -> io::Result<()> {
            self.log("loopback_up".into())
        }
        fn chdir(&self, path: &Path) -> io::Result<()> {
            self.log(format!("chdir {}", path.display()))
        }
    }
}
