//! RUN in the sandbox over busybox snapshots: output, exit status, users,
//! mounts, isolation, and what reaches the layer.

#[path = "sandbox_support/mod.rs"]
mod support;

use std::fs;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;

use rbuild_executor::sandbox::{
    self, CacheSharing, ExitStatus, Network, RunMount, RunSpec, SandboxError,
};
use rbuild_executor::snapshot::{ActiveSnapshot, SnapshotterKind};
use rbuild_executor::user::ResolvedUser;
use support::{env, layer, list, mounts, opts, Env};

fn sh(env: &Env, script: &str) -> RunSpec {
    RunSpec::new(
        vec!["/bin/sh".into(), "-c".into(), script.into()],
        env.root(),
    )
}

fn run(snap: &ActiveSnapshot, spec: &RunSpec) -> (ExitStatus, String) {
    let mut out = Vec::new();
    let st = sandbox::run(snap.rootfs(), spec, &mut |b| out.extend_from_slice(b)).expect("run");
    (st, String::from_utf8_lossy(&out).into_owned())
}

fn prepare(env: &Env) -> ActiveSnapshot {
    env.snapshotter(SnapshotterKind::Overlay)
        .prepare(std::slice::from_ref(&env.base))
        .unwrap()
}

#[test]
fn output_exit_codes_and_signals() {
    let Some(env) = env() else { return };
    let snap = prepare(&env);
    let (st, out) = run(&snap, &sh(&env, "echo out; echo err >&2; exit 3"));
    assert_eq!(st, ExitStatus::Code(3));
    assert_eq!(out, "out\nerr\n");
    let (st, _) = run(&snap, &sh(&env, "kill -9 $$"));
    assert_eq!(st, ExitStatus::Signal(9));
    let err = sandbox::run(
        snap.rootfs(),
        &RunSpec::new(vec!["nope".into()], env.root()),
        &mut |_| {},
    )
    .unwrap_err();
    assert!(matches!(err, SandboxError::Exec { .. }), "{err}");
    // Nothing the runs did is a change.
    assert_eq!(snap.commit(&opts()).unwrap(), None);
}

#[test]
fn environment_user_workdir_and_stdin() {
    let Some(env) = env() else { return };
    let snap = prepare(&env);
    let mut spec = sh(&env, "echo $PATH; echo $HOME; pwd; id; hostname; echo $FOO");
    spec.env = vec![("FOO".into(), "bar baz".into())];
    spec.cwd = "/app/src".into();
    spec.user = ResolvedUser {
        uid: 1000,
        gid: 1000,
        additional_gids: vec![10],
        home: None,
    };
    spec.hostname = "builder".into();
    let (st, out) = run(&snap, &spec);
    assert!(st.success(), "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], sandbox::DEFAULT_PATH);
    assert_eq!(lines[1], "/");
    assert_eq!(lines[2], "/app/src");
    assert_eq!(lines[3], "uid=1000(user) gid=1000(user) groups=10(wheel)");
    assert_eq!(lines[4], "builder");
    assert_eq!(lines[5], "bar baz");

    let mut spec = RunSpec::new(vec!["/bin/sh".into()], env.root());
    spec.stdin = Some(b"echo from-stdin > /stdin.txt\n".to_vec());
    let (st, _) = run(&snap, &spec);
    assert!(st.success());
    let l = layer(&env.blobs, &snap.commit(&opts()).unwrap().expect("layer"));
    // WORKDIR is created as part of the layer; the script's file too.
    assert_eq!(
        l.keys().collect::<Vec<_>>(),
        ["app", "app/src", "stdin.txt"]
    );
    assert_eq!(l["stdin.txt"].data, b"from-stdin\n");
    assert_eq!(l["app/src"].uid, 0);
}

#[test]
fn generated_files_and_mount_points_stay_out_of_the_layer() {
    let Some(env) = env() else { return };
    for kind in [SnapshotterKind::Overlay, SnapshotterKind::Native] {
        let snap = env
            .snapshotter(kind)
            .prepare(std::slice::from_ref(&env.base))
            .unwrap();
        let secret = env.root().join("secret.txt");
        fs::write(&secret, b"s3cr3t").unwrap();
        let ctx = tempfile::tempdir().unwrap();
        fs::write(ctx.path().join("in.txt"), b"from context").unwrap();
        let mut spec = sh(
            &env,
            "cat /etc/hosts /etc/hostname; test -s /etc/resolv.conf || test ! -s /host-resolv; \
             echo 127.0.0.2 extra >> /etc/hosts; \
             echo cached > /var/cache/apt/c; cat /run/secrets/tok; echo; \
             cat /ctx/in.txt; echo; ! touch /ctx/new 2>/dev/null && \
             echo t > /scratch/t && echo w > /rw/written && cat /run/script.sh && \
             echo done > /result",
        );
        spec.hostname = "box".into();
        spec.secrets.insert("tok".into(), secret.clone());
        spec.mounts = vec![
            RunMount::Cache {
                id: "apt".into(),
                target: "/var/cache/apt".into(),
                sharing: CacheSharing::Locked,
                uid: 0,
                gid: 0,
                mode: 0o755,
                readonly: false,
            },
            RunMount::Secret {
                id: "tok".into(),
                target: None,
                required: true,
                uid: 0,
                gid: 0,
                mode: 0o400,
            },
            RunMount::Bind {
                source: ctx.path().to_path_buf(),
                target: "/ctx".into(),
                readonly: true,
            },
            RunMount::Bind {
                source: ctx.path().to_path_buf(),
                target: "/rw".into(),
                readonly: false,
            },
            RunMount::Tmpfs {
                target: "/scratch".into(),
                size: Some(1 << 20),
            },
            RunMount::File {
                target: "/run/script.sh".into(),
                contents: b"echo script".to_vec(),
                mode: 0o755,
            },
        ];
        let (st, out) = run(&snap, &spec);
        assert!(st.success(), "{kind}: {out}");
        assert!(out.contains("127.0.0.1\tlocalhost box\n"), "{out}");
        assert!(
            out.contains("box\ns3cr3t\nfrom context\necho script"),
            "{out}"
        );
        // rw bind writes are discarded, the cache keeps its content.
        assert!(!ctx.path().join("written").exists());
        let (_, out) = run(&snap, &{
            let mut s = sh(&env, "cat /var/cache/apt/c");
            s.mounts = spec.mounts[..1].to_vec();
            s
        });
        assert_eq!(out, "cached\n", "{kind}");

        let l = layer(&env.blobs, &snap.commit(&opts()).unwrap().expect("layer"));
        assert_eq!(l.keys().collect::<Vec<_>>(), ["result"], "{kind}");
    }
    assert!(mounts(env.root()).is_empty(), "mounts left behind");
    let tmp = list(&env.root().join("tmp"));
    assert!(tmp.is_empty(), "{tmp:?}");
}

#[test]
fn missing_required_secret_fails_and_optional_is_skipped() {
    let Some(env) = env() else { return };
    let snap = prepare(&env);
    let mut spec = sh(&env, "test ! -e /run/secrets/x");
    spec.mounts = vec![RunMount::Secret {
        id: "x".into(),
        target: None,
        required: false,
        uid: 0,
        gid: 0,
        mode: 0o400,
    }];
    assert!(run(&snap, &spec).0.success());
    spec.mounts = vec![RunMount::Secret {
        id: "x".into(),
        target: None,
        required: true,
        uid: 0,
        gid: 0,
        mode: 0o400,
    }];
    let err = sandbox::run(snap.rootfs(), &spec, &mut |_| {}).unwrap_err();
    assert!(
        matches!(err, SandboxError::MissingSecret(ref id) if id == "x"),
        "{err}"
    );
    assert_eq!(snap.commit(&opts()).unwrap(), None);
}

#[test]
fn isolation_from_the_host() {
    let Some(env) = env() else { return };
    let snap = prepare(&env);
    let marker = env.root().join("host-marker");
    fs::write(&marker, b"host").unwrap();
    let m = marker.display();
    let script = format!(
        "cat /proc/1/root{m} 2>/dev/null && echo LEAK-root; \
         ls {m} 2>/dev/null && echo LEAK-path; \
         mount -t tmpfs none /mnt 2>/dev/null && echo LEAK-mount; \
         echo pids: $(ps -o pid= | wc -l); echo self: $$"
    );
    let (st, out) = run(&snap, &sh(&env, &script));
    assert!(st.success(), "{out}");
    assert!(!out.contains("LEAK"), "{out}");
    // The shell, ps and wc: three processes besides init, all with small pids.
    let pids: usize = out
        .lines()
        .find_map(|l| l.strip_prefix("pids: "))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(pids <= 5, "{out}");
    assert_eq!(
        out.lines().find_map(|l| l.strip_prefix("self: ")),
        Some("2"),
        "{out}"
    );
}

#[test]
fn network_none_cannot_reach_host_loopback() {
    let Some(env) = env() else { return };
    let snap = prepare(&env);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        // Serves one connection: the one from the host-network run.
        let (mut c, _) = listener.accept().unwrap();
        let mut buf = [0u8; 1024];
        let _ = c.read(&mut buf);
        c.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nhello")
            .unwrap();
    });
    let url = format!("http://127.0.0.1:{port}/");
    let mut spec = sh(
        &env,
        &format!("wget -q -O - {url}; echo; ip -o link | wc -l"),
    );
    spec.network = Network::None;
    let (_, out) = run(&snap, &spec);
    assert!(!out.contains("hello"), "{out}");
    assert!(out.ends_with("\n1\n"), "only loopback: {out}");
    let mut spec = sh(&env, &format!("wget -q -O - {url}"));
    spec.network = Network::Default;
    let (st, out) = run(&snap, &spec);
    assert!(st.success(), "{out}");
    assert_eq!(out, "hello");
    server.join().unwrap();
}

#[test]
fn no_mounts_left_after_failure() {
    let Some(env) = env() else { return };
    {
        let snap = prepare(&env);
        let (st, _) = run(&snap, &sh(&env, "sleep 100 & echo partial > /p; exit 1"));
        assert_eq!(st, ExitStatus::Code(1));
        let mut bad = sh(&env, "true");
        bad.mounts = vec![RunMount::Bind {
            source: "/nonexistent".into(),
            target: "/x".into(),
            readonly: true,
        }];
        assert!(sandbox::run(snap.rootfs(), &bad, &mut |_| {}).is_err());
        assert!(!Path::new(snap.rootfs()).join("x").exists());
    }
    assert!(mounts(env.root()).is_empty(), "mounts left behind");
    assert!(list(&env.root().join("tmp")).is_empty());
}

#[test]
fn same_run_same_layer_on_both_snapshotters() {
    let Some(env) = env() else { return };
    let script = "set -e; mkdir -p /opt/app; echo v1 > /opt/app/v; ln /opt/app/v /opt/app/v2; \
                  rm /etc/group; rm -rf /home/user; mkdir /home/user; touch /home/user/x; \
                  chmod 700 /tmp; ln -s ../opt/app/v /usr/v";
    let mut digests = Vec::new();
    for kind in [SnapshotterKind::Overlay, SnapshotterKind::Native] {
        let snap = env
            .snapshotter(kind)
            .prepare(std::slice::from_ref(&env.base))
            .unwrap();
        let (st, out) = run(&snap, &sh(&env, script));
        assert!(st.success(), "{kind}: {out}");
        let desc = snap.commit(&opts()).unwrap().expect("layer");
        let l = layer(&env.blobs, &desc);
        assert!(
            l.contains_key("home/user/.wh..wh..opq"),
            "{kind}: {:?}",
            l.keys()
        );
        assert!(l.contains_key("etc/.wh.group"), "{kind}");
        assert_eq!(l["opt/app/v2"].kind, 'h', "{kind}");
        digests.push(desc.digest);
    }
    assert_eq!(digests[0], digests[1]);
}
