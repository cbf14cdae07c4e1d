//! The process side of the sandbox: namespaces, the init process, the
//! command, and the host side waiting for them.
//!
//! ```text
//! rbuild ──fork──▶ helper: setsid, unshare(mnt, pid, ipc, uts[, net])
//!                    └─fork──▶ init (PID 1): mounts, pivot_root, reaps
//!                                └─fork──▶ command: creds, caps, exec
//! ```
//! `fork` (not a raw clone) is used so that glibc's fork handlers keep the
//! allocator usable in the children of a multi-threaded rbuild. The helper
//! dies with rbuild (`PR_SET_PDEATHSIG`), init dies with the helper, and
//! when init exits the kernel kills every process left in the PID namespace;
//! so killing the helper tears the whole tree, its mounts and namespaces
//! down. init reports how the command ended (or why setup failed) on a
//! status pipe; stdout and stderr share one pipe that rbuild reads as data
//! arrives.

use std::ffi::CString;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::atomic::Ordering;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sched::CloneFlags;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, ForkResult, Pid};

use super::setup::{setup, Plan};
use super::syscall::Linux;
use super::{ExitStatus, Network, Result, RunSpec, SandboxError, DEFAULT_PATH, INTERRUPT_R};

/// Capabilities the command keeps: Docker's default set. Everything else,
/// CAP_SYS_ADMIN (mount), CAP_SYS_PTRACE and CAP_SYS_MODULE among them, is
/// dropped from the bounding set.
const KEPT_CAPS: [u32; 14] = [
    0,  // CAP_CHOWN
    1,  // CAP_DAC_OVERRIDE
    3,  // CAP_FOWNER
    4,  // CAP_FSETID
    5,  // CAP_KILL
    6,  // CAP_SETGID
    7,  // CAP_SETUID
    8,  // CAP_SETPCAP
    10, // CAP_NET_BIND_SERVICE
    13, // CAP_NET_RAW
    18, // CAP_SYS_CHROOT
    27, // CAP_MKNOD
    29, // CAP_AUDIT_WRITE
    31, // CAP_SETFCAP
];

/// Everything the children need, computed before forking so that the
/// children do little more than system calls.
struct Exec {
    argv: Vec<CString>,
    envp: Vec<CString>,
    /// Paths to try, in PATH order.
    candidates: Vec<CString>,
    uid: u32,
    gid: u32,
    groups: Vec<nix::unistd::Gid>,
    last_cap: u32,
}

fn cstr(s: &str) -> Result<CString> {
    CString::new(s).map_err(|_| SandboxError::Setup(format!("NUL byte in {s:?}")))
}

impl Exec {
    fn new(spec: &RunSpec) -> Result<Exec> {
        let argv = spec
            .args
            .iter()
            .map(|a| cstr(a))
            .collect::<Result<Vec<_>>>()?;
        let mut env = spec.env.clone();
        if !env.iter().any(|(k, _)| k == "PATH") {
            env.push(("PATH".into(), DEFAULT_PATH.into()));
        }
        if !env.iter().any(|(k, _)| k == "HOME") {
            let home = spec
                .user
                .home
                .clone()
                .unwrap_or_else(|| if spec.user.uid == 0 { "/root" } else { "/" }.to_string());
            env.push(("HOME".into(), home));
        }
        let envp = env
            .iter()
            .map(|(k, v)| cstr(&format!("{k}={v}")))
            .collect::<Result<Vec<_>>>()?;
        let prog = &spec.args[0];
        let path = env
            .iter()
            .rev()
            .find(|(k, _)| k == "PATH")
            .map(|(_, v)| v.as_str())
            .unwrap_or(DEFAULT_PATH);
        // Like runc: a name without a slash is looked up in the command's PATH.
        let candidates = if prog.contains('/') {
            vec![cstr(prog)?]
        } else {
            path.split(':')
                .map(|d| if d.is_empty() { "." } else { d })
                .map(|d| cstr(&format!("{}/{prog}", d.trim_end_matches('/'))))
                .collect::<Result<Vec<_>>>()?
        };
        let last_cap = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(40);
        Ok(Exec {
            argv,
            envp,
            candidates,
            uid: spec.user.uid,
            gid: spec.user.gid,
            groups: spec
                .user
                .additional_gids
                .iter()
                .map(|g| nix::unistd::Gid::from_raw(*g))
                .collect(),
            last_cap,
        })
    }
}

fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| SandboxError::Io {
        op: "pipe",
        path: "pipe".into(),
        source: e.into(),
    })
}

/// Runs the plan and the command; returns how the command ended.
pub(super) fn spawn_and_wait(
    plan: &Plan,
    spec: &RunSpec,
    output: &mut dyn FnMut(&[u8]),
) -> Result<ExitStatus> {
    let exec = Exec::new(spec)?;
    let (out_r, out_w) = pipe()?;
    let (status_r, status_w) = pipe()?;
    let (stdin_r, stdin_w) = match &spec.stdin {
        Some(_) => {
            let (r, w) = pipe()?;
            (r, Some(w))
        }
        None => {
            let null = std::fs::File::open("/dev/null").map_err(|e| SandboxError::Io {
                op: "open",
                path: "/dev/null".into(),
                source: e,
            })?;
            (OwnedFd::from(null), None)
        }
    };
    let mut flags = CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWUTS;
    if spec.network == Network::None {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    let parent_pid = nix::unistd::getpid();

    // SAFETY: the child only runs `helper`, which makes system calls and
    // allocates (safe after glibc's fork) and ends in _exit.
    let helper = match unsafe { fork() } {
        Ok(ForkResult::Child) => {
            drop(out_r);
            drop(status_r);
            if let Some(w) = &stdin_w {
                let _ = nix::unistd::close(w.as_raw_fd());
            }
            helper(parent_pid, flags, plan, &exec, &out_w, &status_w, &stdin_r)
        }
        Ok(ForkResult::Parent { child }) => child,
        Err(e) => {
            return Err(SandboxError::Io {
                op: "fork",
                path: plan.rootfs.clone(),
                source: e.into(),
            })
        }
    };
    drop(out_w);
    drop(status_w);
    drop(stdin_r);

    let feeder = match (stdin_w, &spec.stdin) {
        (Some(w), Some(data)) => {
            let data = data.clone();
            Some(std::thread::spawn(move || {
                let mut f = std::fs::File::from(w);
                // The command may exit without reading all of it.
                let _ = f.write_all(&data);
            }))
        }
        _ => None,
    };

    let interrupted = pump(&out_r, output);
    if interrupted {
        let _ = kill(helper, Signal::SIGKILL);
        // Drain until every process of the sandbox has closed the pipe.
        pump_until_eof(&out_r);
    }
    let _ = waitpid(helper, None);
    if let Some(f) = feeder {
        let _ = f.join();
    }
    if interrupted {
        return Err(SandboxError::Interrupted);
    }
    let mut report = String::new();
    let _ = std::fs::File::from(status_r).read_to_string(&mut report);
    parse_report(&report, &spec.args[0])
}

/// Copies output to `sink` until EOF; true when interrupted first.
fn pump(out: &OwnedFd, sink: &mut dyn FnMut(&[u8])) -> bool {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let intr = INTERRUPT_R.load(Ordering::SeqCst);
        let mut fds = vec![PollFd::new(out.as_fd(), PollFlags::POLLIN)];
        // SAFETY: the interrupt pipe's read end lives for the whole process.
        let intr_fd = (intr >= 0).then(|| unsafe { BorrowedFd::borrow_raw(intr) });
        if let Some(fd) = &intr_fd {
            fds.push(PollFd::new(fd.as_fd(), PollFlags::POLLIN));
        }
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(Errno::EINTR) => continue,
            Err(_) => return false,
        }
        if fds
            .get(1)
            .and_then(|f| f.revents())
            .is_some_and(|r| r.contains(PollFlags::POLLIN))
        {
            return true;
        }
        match nix::unistd::read(out.as_raw_fd(), &mut buf) {
            Ok(0) => return false,
            Ok(n) => sink(&buf[..n]),
            Err(Errno::EINTR) | Err(Errno::EAGAIN) => {}
            Err(_) => return false,
        }
    }
}

fn pump_until_eof(out: &OwnedFd) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match nix::unistd::read(out.as_raw_fd(), &mut buf) {
            Ok(0) => return,
            Ok(_) | Err(Errno::EINTR) => {}
            Err(_) => return,
        }
    }
}

/// Reads init's report: `exit N`, `signal N`, `setup MESSAGE`, `exec ERRNO`.
fn parse_report(report: &str, program: &str) -> Result<ExitStatus> {
    let mut status = None;
    for line in report.lines() {
        let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
        match word {
            "setup" => return Err(SandboxError::Setup(rest.to_string())),
            "exec" => {
                let errno = rest.parse().unwrap_or(libc::ENOENT);
                return Err(SandboxError::Exec {
                    program: program.to_string(),
                    source: io::Error::from_raw_os_error(errno),
                });
            }
            "exit" => status = rest.parse().ok().map(ExitStatus::Code),
            "signal" => status = rest.parse().ok().map(ExitStatus::Signal),
            _ => {}
        }
    }
    status.ok_or_else(|| SandboxError::Setup("the sandbox ended without reporting a status".into()))
}

fn write_report(fd: &OwnedFd, msg: &str) {
    let _ = nix::unistd::write(fd, msg.as_bytes());
}

fn exit(code: i32) -> ! {
    // SAFETY: _exit never returns and runs no Rust or libc exit handlers,
    // which must not run in a forked child.
    unsafe { libc::_exit(code) }
}

/// The helper: new session and namespaces, then init.
fn helper(
    parent: Pid,
    flags: CloneFlags,
    plan: &Plan,
    exec: &Exec,
    out_w: &OwnedFd,
    status_w: &OwnedFd,
    stdin_r: &OwnedFd,
) -> ! {
    // SAFETY: prctl with PR_SET_PDEATHSIG takes a signal number.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    if nix::unistd::getppid() != parent {
        exit(1);
    }
    // Out of rbuild's process group: a terminal's Ctrl-C reaches rbuild,
    // which then kills the sandbox and cleans up.
    let _ = nix::unistd::setsid();
    if let Err(e) = nix::sched::unshare(flags) {
        write_report(status_w, &format!("setup unshare namespaces: {e}\n"));
        exit(1);
    }
    // init cannot see its parent from inside the new PID namespace; this
    // pipe's write end stays open exactly as long as the helper lives.
    let Ok((alive_r, alive_w)) = nix::unistd::pipe2(OFlag::O_CLOEXEC) else {
        write_report(status_w, "setup pipe: cannot create\n");
        exit(1)
    };
    // SAFETY: this process is single-threaded.
    match unsafe { fork() } {
        Ok(ForkResult::Child) => {
            drop(alive_w);
            init(&alive_r, plan, exec, out_w, status_w, stdin_r)
        }
        Ok(ForkResult::Parent { child }) => {
            while let Err(Errno::EINTR) = waitpid(child, None) {}
            exit(0)
        }
        Err(e) => {
            write_report(status_w, &format!("setup fork init: {e}\n"));
            exit(1)
        }
    }
}

/// PID 1 of the sandbox: builds the filesystem, starts the command, reaps
/// every child until the command ends, and reports its status.
fn init(
    helper_alive: &OwnedFd,
    plan: &Plan,
    exec: &Exec,
    out_w: &OwnedFd,
    status_w: &OwnedFd,
    stdin_r: &OwnedFd,
) -> ! {
    // SAFETY: as in `helper`.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    // The helper died before the death signal was armed: stop here.
    let mut fds = [PollFd::new(helper_alive.as_fd(), PollFlags::POLLIN)];
    if poll(&mut fds, PollTimeout::ZERO).is_ok_and(|n| n > 0) {
        exit(1);
    }
    if let Err(e) = setup(&Linux, plan) {
        write_report(status_w, &format!("setup {e}\n"));
        exit(1);
    }
    // SAFETY: this process is single-threaded.
    let cmd = match unsafe { fork() } {
        Ok(ForkResult::Child) => command(exec, out_w, status_w, stdin_r),
        Ok(ForkResult::Parent { child }) => child,
        Err(e) => {
            write_report(status_w, &format!("setup fork command: {e}\n"));
            exit(1)
        }
    };
    loop {
        match waitpid(Pid::from_raw(-1), None) {
            Ok(WaitStatus::Exited(pid, code)) if pid == cmd => {
                write_report(status_w, &format!("exit {code}\n"));
                exit(0)
            }
            Ok(WaitStatus::Signaled(pid, sig, _)) if pid == cmd => {
                write_report(status_w, &format!("signal {}\n", sig as i32));
                exit(0)
            }
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => {
                write_report(status_w, &format!("setup wait: {e}\n"));
                exit(1)
            }
        }
    }
}

/// The command: stdio, signals, capabilities, credentials, exec.
fn command(exec: &Exec, out_w: &OwnedFd, status_w: &OwnedFd, stdin_r: &OwnedFd) -> ! {
    let fail = |what: &str, e: Errno| -> ! {
        write_report(status_w, &format!("setup {what}: {e}\n"));
        exit(1)
    };
    for (src, dst) in [
        (stdin_r.as_raw_fd(), 0),
        (out_w.as_raw_fd(), 1),
        (out_w.as_raw_fd(), 2),
    ] {
        // SAFETY: dup2 on open descriptors.
        if unsafe { libc::dup2(src, dst) } < 0 {
            fail("dup2", Errno::last());
        }
    }
    close_other_fds();
    reset_signals();
    // Docker's umask, whatever rbuild was started with: file modes made by
    // RUN must not depend on the builder's shell.
    // SAFETY: umask only changes this process's file creation mask.
    unsafe { libc::umask(0o022) };
    for cap in 0..=exec.last_cap {
        if !KEPT_CAPS.contains(&cap) {
            // SAFETY: prctl with a capability number; unknown ones fail harmlessly.
            unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
        }
    }
    if let Err(e) = nix::unistd::setgroups(&exec.groups) {
        fail("setgroups", e);
    }
    if let Err(e) = nix::unistd::setgid(nix::unistd::Gid::from_raw(exec.gid)) {
        fail("setgid", e);
    }
    if let Err(e) = nix::unistd::setuid(nix::unistd::Uid::from_raw(exec.uid)) {
        fail("setuid", e);
    }
    let mut err = Errno::ENOENT;
    for cand in &exec.candidates {
        let Err(e) = nix::unistd::execve(cand, &exec.argv, &exec.envp);
        match e {
            // Not here: try the next PATH entry, remembering a permission problem.
            Errno::ENOENT | Errno::ENOTDIR => {}
            Errno::EACCES => err = Errno::EACCES,
            other => {
                err = other;
                break;
            }
        }
    }
    write_report(status_w, &format!("exec {}\n", err as i32));
    exit(127)
}

/// Marks every descriptor above stderr close-on-exec, so the command
/// inherits only stdio (other threads of rbuild may have opened files
/// without O_CLOEXEC).
fn close_other_fds() {
    const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
    // SAFETY: close_range only changes flags of this process's descriptors.
    let r = unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, CLOSE_RANGE_CLOEXEC) };
    if r != 0 {
        // Kernels before 5.11: walk the descriptors instead.
        if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
            let fds: Vec<RawFd> = dir
                .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect();
            for fd in fds.into_iter().filter(|fd| *fd > 2) {
                // SAFETY: setting FD_CLOEXEC on a descriptor number.
                unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
            }
        }
    }
}

/// Default dispositions and an empty mask: Rust ignores SIGPIPE and rbuild
/// handles SIGINT/SIGTERM, and an ignored signal stays ignored across exec.
fn reset_signals() {
    for sig in Signal::iterator() {
        if matches!(sig, Signal::SIGKILL | Signal::SIGSTOP) {
            continue;
        }
        // SAFETY: installing the default disposition.
        let _ = unsafe { nix::sys::signal::signal(sig, nix::sys::signal::SigHandler::SigDfl) };
    }
    let _ = nix::sys::signal::sigprocmask(
        nix::sys::signal::SigmaskHow::SIG_SETMASK,
        Some(&nix::sys::signal::SigSet::empty()),
        None,
    );
}
