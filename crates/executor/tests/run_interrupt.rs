//! SIGINT to rbuild while a RUN is running: the command's process tree is
//! killed, the run reports the interruption, and no mount or temp dir is
//! left once the snapshot is dropped. A test binary of its own: the
//! interrupt is process-wide.

#[path = "sandbox_support/mod.rs"]
mod support;

use rbuild_executor::sandbox::{self, RunSpec, SandboxError};
use rbuild_executor::snapshot::SnapshotterKind;
use support::{env, list, mounts};

#[test]
fn sigint_kills_the_step_and_cleans_up() {
    let Some(env) = env() else { return };
    sandbox::handle_interrupts().unwrap();
    let snap = env
        .snapshotter(SnapshotterKind::Overlay)
        .prepare(std::slice::from_ref(&env.base))
        .unwrap();
    let spec = RunSpec::new(
        vec![
            "/bin/sh".into(),
            "-c".into(),
            "echo started; sleep 1000 & sleep 1000; echo not-reached".into(),
        ],
        env.root(),
    );
    let mut out = Vec::new();
    let err = sandbox::run(snap.rootfs(), &spec, &mut |b| {
        out.extend_from_slice(b);
        // The command is running: interrupt rbuild.
        if out.starts_with(b"started") {
            unsafe { libc::raise(libc::SIGINT) };
        }
    })
    .unwrap_err();
    assert!(matches!(err, SandboxError::Interrupted), "{err}");
    assert!(sandbox::interrupted());
    assert!(!String::from_utf8_lossy(&out).contains("not-reached"));
    // No process of the sandbox survives: nothing runs `sleep 1000`.
    let sleeping = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| std::fs::read(e.ok()?.path().join("cmdline")).ok())
        .filter(|c| c.starts_with(b"sleep\x001000"))
        .count();
    assert_eq!(sleeping, 0);
    drop(snap);
    assert!(mounts(env.root()).is_empty(), "mounts left behind");
    assert!(list(&env.root().join("tmp")).is_empty());
    // Later steps refuse to start.
    assert!(matches!(
        env.snapshotter(SnapshotterKind::Overlay).prepare(&[]),
        Err(rbuild_executor::snapshot::SnapshotError::Interrupted)
    ));
    let again = sandbox::run(std::path::Path::new("/"), &spec, &mut |_| {}).unwrap_err();
    assert!(matches!(again, SandboxError::Interrupted));
}
