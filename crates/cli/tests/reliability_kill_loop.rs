//! Crash safety: `scripts/kill-loop.sh` with a reduced count (8 kills; the
//! script's default is 50). Each kill is followed by `rbuild check` (no
//! damage allowed), `check --repair` of leftovers, and a build that must
//! succeed with the right files.

#[allow(dead_code)]
#[path = "cli/support.rs"]
mod support;

use std::path::Path;
use std::process::Command;

#[test]
fn builds_killed_at_random_points_leave_no_damage() {
    if !support::require_root("builds_killed_at_random_points_leave_no_damage") {
        return;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/kill-loop.sh");
    let count = std::env::var("KILL_LOOP_COUNT").unwrap_or_else(|_| "8".to_string());
    let out = Command::new("bash")
        .arg(&script)
        .arg(&count)
        .env("RBUILD", env!("CARGO_BIN_EXE_rbuild"))
        .output()
        .expect("run kill-loop.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "kill loop failed:\n{stdout}\n{stderr}"
    );
    let kills = stdout.lines().filter(|l| l.starts_with("kill ")).count();
    assert_eq!(kills.to_string(), count, "{stdout}");
    assert!(
        stdout.contains("no damage; every following build succeeded"),
        "{stdout}"
    );
}
