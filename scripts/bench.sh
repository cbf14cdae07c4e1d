#!/usr/bin/env bash
# Benchmarks rbuild against buildah on the same generated Dockerfiles.
#
# Usage: scripts/bench.sh [-n RUNS] [-w w1,w2,w3,w4] [--no-buildah] [--scale F] [--gen-only]
#                         [--rbuild BIN] [WORKDIR]
#   -n RUNS       runs per measurement, median reported (default 3)
#   -w LIST       workloads to run (default w1,w2,w3,w4)
#   --no-buildah  measure rbuild only
#   --scale F     workload size factor: w1 gets 20000*F files, w3 1 GiB*F (default 1; 0.05 for a quick check)
#   --gen-only    only generate the workloads (and the base image tarball) and exit
#   --rbuild BIN  use this rbuild binary instead of building it with cargo --release
#
# Workloads (all FROM a busybox base image made from Debian's busybox-static):
#   w1  20,000 small files (~200 MB, nested, with a .dockerignore): COPY . /app, then a RUN counting files
#   w2  three stages: two independent ~2 s RUN stages, the last copying from both
#   w3  one 1 GiB file copied in
#   w4  a chain of 50 RUN/ENV/COPY instructions with small effects
# For each: cold build (empty store but the base image), no-op rebuild, and for w1 a rebuild
# after touching one small file; wall seconds (median of RUNS) and peak RSS (max). buildah runs
# as `buildah bud --isolation chroot --layers` on overlay storage in its own root.
#
# Old stores are moved aside and deleted only after all measurements: on an ext4 without a
# journal, creating many files right after deleting many is several times slower.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

runs=3
workloads=w1,w2,w3,w4
with_buildah=1
scale=1
gen_only=0
rbuild=
while (($#)); do
    case $1 in
        -n) runs=$2; shift 2 ;;
        -w) workloads=$2; shift 2 ;;
        --no-buildah) with_buildah=0; shift ;;
        --scale) scale=$2; shift 2 ;;
        --gen-only) gen_only=1; shift ;;
        --rbuild) rbuild=$(realpath "$2"); shift 2 ;;
        -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
        *) break ;;
    esac
done
work=${1:-/tmp/rbuild-bench}
# scale_int N: N*scale rounded, at least 1.
scale_int() { awk -v n="$1" -v s="$scale" 'BEGIN { v = int(n * s + 0.5); print (v < 1 ? 1 : v) }'; }

scripts/install-test-deps.sh
if [[ -z $rbuild ]] && ((!gen_only)); then
    cargo build --release -p rbuild-cli --locked
    rbuild=${CARGO_TARGET_DIR:-$repo/target}/release/rbuild
fi

mkdir -p "$work"
trash=$work/.trash
mkdir -p "$trash"
gen=$work/gen-x$scale
base_tar=$work/busybox-rootfs.tar
[[ -f $base_tar ]] || testdata/busybox-rootfs.sh "$base_tar"

# ---------------------------------------------------------------- workloads
gen_w1() {
    local d=$gen/w1
    [[ -f $d/.done ]] && return
    rm -rf "$d"; mkdir -p "$d"
    python3 - "$d" "$(scale_int 20)" <<'PY'
import os, random, sys
root = sys.argv[1]
top = int(sys.argv[2])
rng = random.Random(1)
n = 0
for a in range(top):
    for b in range(25):
        dirp = os.path.join(root, "src", f"d{a:02}", f"e{b:02}")
        os.makedirs(dirp, exist_ok=True)
        for c in range(40):
            size = rng.randint(2_000, 18_000)
            with open(os.path.join(dirp, f"f{c:03}.txt"), "wb") as f:
                f.write(rng.randbytes(size))
            n += 1
os.makedirs(os.path.join(root, "ignored"), exist_ok=True)
for i in range(100):
    with open(os.path.join(root, "ignored", f"junk{i}.log"), "wb") as f:
        f.write(b"x" * 1000)
print(n, "files")
PY
    printf 'ignored\n**/*.log\nDockerfile\n' >"$d/.dockerignore"
    cat >"$d/Dockerfile" <<'EOF'
FROM busybox-base
COPY . /app
RUN find /app -type f | wc -l > /count
EOF
    touch "$d/.done"
}

gen_w2() {
    local d=$gen/w2
    mkdir -p "$d"
    cat >"$d/Dockerfile" <<'EOF'
FROM busybox-base AS left
RUN i=0; while [ $i -lt 400000 ]; do i=$((i+1)); done; echo left > /left.txt

FROM busybox-base AS right
RUN i=0; while [ $i -lt 400000 ]; do i=$((i+1)); done; echo right > /right.txt

FROM busybox-base
COPY --from=left /left.txt /out/
COPY --from=right /right.txt /out/
EOF
}

gen_w3() {
    local d=$gen/w3
    [[ -f $d/big.bin ]] && return
    mkdir -p "$d"
    head -c "$(scale_int $((1024 * 1024 * 1024)))" /dev/urandom >"$d/big.bin.tmp"
    mv "$d/big.bin.tmp" "$d/big.bin"
    cat >"$d/Dockerfile" <<'EOF'
FROM busybox-base
COPY big.bin /data/big.bin
EOF
}

gen_w4() {
    local d=$gen/w4
    mkdir -p "$d/files"
    {
        echo "FROM busybox-base"
        for i in $(seq 1 50); do
            case $((i % 3)) in
                0) echo "RUN echo step$i > /s$i" ;;
                1) echo "ENV V$i=value$i" ;;
                2) echo "step $i" >"$d/files/f$i.txt"; echo "COPY files/f$i.txt /files/" ;;
            esac
        done
    } >"$d/Dockerfile"
}

# ---------------------------------------------------------------- tools
# time_cmd OUTFILE CMD...: runs CMD, appends "wall_s rss_kb" to OUTFILE.
time_cmd() {
    local out=$1; shift
    local t
    t=$(mktemp)
    if ! /usr/bin/time -f '%e %M' -o "$t" "$@" >"$work/last.log" 2>&1; then
        echo "command failed: $*" >&2
        tail -n 30 "$work/last.log" >&2
        rm -f "$t"
        exit 1
    fi
    cat "$t" >>"$out"
    rm -f "$t"
}

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
maxcol2() { awk 'BEGIN{m=0} {if ($2>m) m=$2} END {print m}'; }

aside() { # moves a store out of the way; deleted at the end
    [[ -e $1 ]] && mv "$1" "$trash/$(basename "$1").$RANDOM$RANDOM"
    return 0
}

rb_fresh() { # fresh rbuild store with the base image
    aside "$work/rb-root"
    "$rbuild" --root "$work/rb-root" import "$base_tar" busybox-base:latest >/dev/null
}
rb_build() { # rb_build OUT WORKLOAD
    time_cmd "$1" "$rbuild" --root "$work/rb-root" build --progress plain -t "bench-$2" "$gen/$2"
}

ba_flags=()
ba_fresh() {
    aside "$work/ba-root"
    aside "$work/ba-run"
    ba_flags=(--root "$work/ba-root" --runroot "$work/ba-run" --storage-driver overlay)
    local c
    c=$(buildah "${ba_flags[@]}" from scratch)
    buildah "${ba_flags[@]}" add "$c" "$base_tar" / >/dev/null
    buildah "${ba_flags[@]}" commit -q "$c" localhost/busybox-base:latest >/dev/null
    buildah "${ba_flags[@]}" rm "$c" >/dev/null
}
ba_build() {
    time_cmd "$1" buildah "${ba_flags[@]}" bud --isolation chroot --layers -q -t "bench-$2" "$gen/$2"
}

# measure TOOL WORKLOAD: prints rows "TOOL WORKLOAD PHASE wall rss"
measure() {
    local tool=$1 w=$2 fresh build
    fresh=${tool}_fresh build=${tool}_build
    local cold=$work/$tool-$w-cold noop=$work/$tool-$w-noop touch=$work/$tool-$w-touch
    : >"$cold"; : >"$noop"; : >"$touch"
    for _ in $(seq 1 "$runs"); do
        $fresh
        $build "$cold" "$w"
        $build "$noop" "$w"
        if [[ $w == w1 ]]; then
            echo "$RANDOM" >>"$gen/w1/src/d00/e07/f011.txt"
            $build "$touch" "$w"
        fi
    done
    for phase in cold noop touch; do
        local f=$work/$tool-$w-$phase
        [[ -s $f ]] || continue
        printf '%s %s %s %s %s\n' "$tool" "$w" "$phase" "$(median <"$f")" "$(maxcol2 <"$f")"
    done
}

results=$work/results.txt
: >"$results"
IFS=, read -r -a ws <<<"$workloads"
if ((gen_only)); then
    for w in "${ws[@]}"; do "gen_$w"; done
    echo "workloads in $gen, base image tarball $base_tar"
    exit 0
fi
for w in "${ws[@]}"; do
    "gen_$w"
    measure rb "$w" | tee -a "$results"
    if ((with_buildah)); then measure ba "$w" | tee -a "$results"; fi
done

echo
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -r)"
printf '%-4s %-6s %10s %10s %10s %10s %8s\n' work phase rbuild_s buildah_s ratio rb_rss_MB ba_rss_MB
awk '
    { key=$2" "$3; if ($1=="rb") { rb[key]=$4; rbm[key]=$5 } else { ba[key]=$4; bam[key]=$5 }; keys[key]=1 }
    END {
        for (k in keys) {
            split(k, p, " ")
            r = (k in ba && ba[k] > 0) ? sprintf("%.3f", rb[k]/ba[k]) : "-"
            printf "%-4s %-6s %10s %10s %10s %10.1f %8s\n", p[1], p[2], rb[k], (k in ba ? ba[k] : "-"), r, rbm[k]/1024, (k in bam ? sprintf("%.1f", bam[k]/1024) : "-")
        }
    }' "$results" | sort

# Layer export throughput against the reference compressors, on the w1 context as one tar.
if [[ " ${ws[*]} " == *" w1 "* ]]; then
    tarball=$work/w1.tar
    tar -C "$gen/w1" -cf "$tarball" src
    size_mb=$(($(stat -c %s "$tarball") / 1048576))
    t0=$(date +%s.%N); pigz -c "$tarball" >/dev/null; t1=$(date +%s.%N)
    zstd -q -T0 -1 -c "$tarball" >/dev/null; t2=$(date +%s.%N)
    echo
    awk -v s="$size_mb" -v a="$t0" -v b="$t1" -v c="$t2" \
        'BEGIN { printf "reference compressors on %d MB: pigz %.0f MB/s, zstd -T0 -1 %.0f MB/s\n", s, s/(b-a), s/(c-b) }'
    echo "(rbuild's own layer throughput: cargo bench -p rbuild-image --bench layer)"
fi

rm -rf "$trash"
