#!/usr/bin/env bash
# Crash-safety loop: starts rbuild operations on one store (pulls from a
# loopback registry, builds with a COPY of a large context, a RUN, layer
# export and tagging, save and load), SIGKILLs them at random points, and
# after every kill requires:
#   1. `rbuild check` reports no damage: no corrupt blob, no broken image or
#      cache record. Leftovers of the killed process (temp files, stale
#      leases, stale mounts) are allowed: they are not corruption, since a
#      crash cannot be prevented from leaving them;
#   2. `rbuild check --repair` clears those leftovers and a second
#      `rbuild check` is clean;
#   3. a build then succeeds and produces the right files.
#
#   scripts/kill-loop.sh [COUNT]      (default 50 kills)
#
# Environment: RBUILD (the binary; default target/debug/rbuild, built if
# missing), KILL_LOOP_SEED (seed for $RANDOM, to replay a run),
# KILL_LOOP_KEEP=1 keeps the work directory. Needs root (RUN, overlayfs),
# docker-registry and busybox-static (scripts/install-test-deps.sh).
set -euo pipefail
count=${1:-50}
here=$(cd "$(dirname "$0")/.." && pwd)
rbuild=${RBUILD:-$here/target/debug/rbuild}
if [[ ! -x $rbuild ]]; then
    (cd "$here" && cargo build -q -p rbuild-cli)
fi
seed=${KILL_LOOP_SEED:-$$}
RANDOM=$seed
echo "kill-loop: $count kills, seed $seed (KILL_LOOP_SEED replays it)"

work=$(mktemp -d /tmp/rbuild-kill-loop.XXXXXX)
root=$work/store
registry_pid=""
cleanup() {
    [[ -n $registry_pid ]] && kill "$registry_pid" 2>/dev/null || true
    if [[ ${KILL_LOOP_KEEP:-0} == 1 ]]; then
        echo "work directory kept: $work"
    else
        # Mounts of a killed build must go before the tree is removed.
        "$rbuild" --root "$root" check --repair >/dev/null 2>&1 || true
        rm -rf "$work"
    fi
}
trap cleanup EXIT

rb() { "$rbuild" --root "$root" "$@"; }
fail() {
    echo "kill-loop: FAILED: $*" >&2
    KILL_LOOP_KEEP=1
    exit 1
}
now_ms() { date +%s%3N; }

# --- Setup: a base image in a loopback registry, a large context. ---------
port=$("$here/testdata/registry/start.sh" "$work/registry")
registry_pid=$(cat "$work/registry/registry.pid")
base=127.0.0.1:$port/kill-loop/base:1
bash "$here/testdata/busybox-rootfs.sh" "$work/busybox.tar"
seed=$work/seed-store
"$rbuild" --root "$seed" import "$work/busybox.tar" busybox >/dev/null
"$rbuild" --root "$seed" tag busybox "$base"
"$rbuild" --root "$seed" push "$base" >/dev/null

ctx=$work/ctx
mkdir -p "$ctx/files"
head -c $((24 * 1024 * 1024)) /dev/urandom >"$ctx/big.bin"
for i in $(seq 200); do
    head -c $((16 * 1024 + i)) /dev/urandom >"$ctx/files/f$i"
done
cat >"$ctx/Dockerfile" <<EOF
FROM $base
ARG N=0
COPY . /ctx
RUN cat /ctx/big.bin /ctx/files/* > /joined && echo "\$N" > /n
EOF
# What the RUN concatenates (the glob sorts f1 f10 f100 ...), computed
# again after operations that change the context.
joined_digest() {
    (cd "$ctx" && cat big.bin $(printf 'files/%s\n' $(ls files | LC_ALL=C sort)) | sha256sum | cut -d' ' -f1)
}

# --- The operations that get killed. ----------------------------------------
n=0
op_build() { rb build -q --build-arg "N=$n" -t "app:$((n % 3))" "$ctx"; }
op_build_pull() {
    rb rmi -f "$base" >/dev/null 2>&1 || true
    rb build -q --pull --build-arg "N=$n" -t app:pulled "$ctx"
}
op_copy_change() {
    head -c 4096 /dev/urandom >"$ctx/files/f$((RANDOM % 200 + 1))"
    rb build -q --build-arg "N=$n" -t app:changed "$ctx"
}
op_save_load() {
    rb save -o "$work/save.tar" "app:0" 2>/dev/null || rb save -o "$work/save.tar" "$base"
    rb load -i "$work/save.tar"
}
op_pull() {
    rb rmi -f "$base" >/dev/null 2>&1 || true
    rb pull "$base"
}
op_prune() { rb prune --all; }
ops=(op_build op_build_pull op_copy_change op_save_load op_pull op_build op_copy_change op_prune)

# How long each operation takes uninterrupted, so kills land inside it.
declare -A duration
for op in "${ops[@]}"; do
    [[ -n ${duration[$op]:-} ]] && continue
    n=$((n + 1))
    start=$(now_ms)
    "$op" >/dev/null 2>&1 || fail "$op failed without being killed"
    duration[$op]=$(($(now_ms) - start + 50))
    echo "setup: $op takes ${duration[$op]} ms"
done

# --- The loop. ----------------------------------------------------------------
killed=0 finished=0 leftovers=0
for i in $(seq "$count"); do
    n=$((n + 1))
    op=${ops[RANDOM % ${#ops[@]}]}
    delay=$(((RANDOM * 32768 + RANDOM) % duration[$op]))
    # Own process group, so the kill takes rbuild and its RUN children,
    # as a CI runner's job cancellation does.
    setsid bash -c "$(declare -f rb "$op"); rbuild='$rbuild' root='$root' ctx='$ctx' work='$work' base='$base' n=$n; $op" \
        >/dev/null 2>&1 &
    pid=$!
    sleep "$(printf '%d.%03d' $((delay / 1000)) $((delay % 1000)))"
    if kill -KILL -- "-$pid" 2>/dev/null; then
        wait "$pid" 2>/dev/null || true
        outcome=killed
        killed=$((killed + 1))
    else
        wait "$pid" 2>/dev/null || true
        outcome="finished first"
        finished=$((finished + 1))
    fi

    report=$(rb check 2>&1) && status=0 || status=$?
    if grep -q '^damage:' <<<"$report"; then
        fail "kill $i ($op at ${delay} ms): check found damage:\n$report"
    fi
    found=$(grep -c '^leftover:' <<<"$report" || true)
    if ((status != 0)); then
        ((found > 0)) || fail "kill $i: check failed without naming a problem:\n$report"
        leftovers=$((leftovers + found))
        rb check --repair >/dev/null || fail "kill $i: check --repair failed"
        rb check >/dev/null || fail "kill $i: check not clean after --repair"
    fi
    echo "kill $i/$count: $op at ${delay} ms of ~${duration[$op]} ms: $outcome; leftovers: $found"

    # The next build must succeed and be right.
    verify=$work/verify
    rm -rf "$verify"
    rb build -q --build-arg N=verify -t app:verify -o "type=local,dest=$verify" "$ctx" >/dev/null \
        || fail "kill $i: the build after the kill failed"
    [[ $(cat "$verify/n") == verify ]] || fail "kill $i: wrong /n"
    [[ $(sha256sum <"$verify/joined" | cut -d' ' -f1) == "$(joined_digest)" ]] \
        || fail "kill $i: /joined has the wrong content"
done
rb check >/dev/null || fail "final check not clean"
echo "kill-loop: $count runs: $killed killed mid-operation, $finished finished before the kill;" \
    "$leftovers leftovers cleared by check --repair; no damage; every following build succeeded"
