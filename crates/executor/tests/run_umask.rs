//! RUN gets Docker's umask (0022) whatever rbuild's own is. A test binary of
//! its own: the umask is process-wide and would leak into parallel tests.

#[path = "sandbox_support/mod.rs"]
mod support;

use rbuild_executor::sandbox::{self, RunSpec};
use rbuild_executor::snapshot::SnapshotterKind;
use support::env;

#[test]
fn umask_is_dockers_whatever_rbuild_has() {
    let Some(env) = env() else { return };
    let snap = env
        .snapshotter(SnapshotterKind::Overlay)
        .prepare(std::slice::from_ref(&env.base))
        .unwrap();
    let spec = RunSpec::new(
        vec![
            "/bin/sh".into(),
            "-c".into(),
            "umask; touch /f; stat -c %a /f".into(),
        ],
        env.root(),
    );
    let old = unsafe { libc::umask(0o077) };
    let mut out = Vec::new();
    let st = sandbox::run(snap.rootfs(), &spec, &mut |b| out.extend_from_slice(b));
    unsafe { libc::umask(old) };
    let out = String::from_utf8_lossy(&out).into_owned();
    assert!(st.unwrap().success(), "{out}");
    assert_eq!(out, "0022\n644\n");
}
