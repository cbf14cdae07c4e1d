#!/usr/bin/env bash
# Builds examples/debian-web: makes a Debian base image with debootstrap (minbase),
# imports it with `rbuild import`, then builds the Dockerfile beside this script, which
# installs nginx with apt-get inside RUN. Needs root and Debian's package archive.
#
# Usage: examples/debian-web/build.sh [STORE_ROOT]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
root=${1:-/tmp/rbuild-debian-web}
rbuild=${RBUILD:-$repo/target/release/rbuild}
[[ -x $rbuild ]] || (cd "$repo" && cargo build --release -p rbuild-cli)

command -v debootstrap >/dev/null || {
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap
}

# The mirror this machine's apt already uses.
mirror=$(sed -n 's/^URIs: *\([^ ]*\).*/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null | grep -v security | head -n1)
[[ -n $mirror ]] || mirror=$(awk '$1 == "deb" { print $2; exit }' /etc/apt/sources.list)

base=$root/debian-minbase.tar
mkdir -p "$root"
if [[ ! -f $base ]]; then
    dir=$(mktemp -d)
    trap 'rm -rf "$dir"' EXIT
    debootstrap --variant=minbase bookworm "$dir" "$mirror"
    rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/*
    tar --numeric-owner -C "$dir" -cf "$base.tmp" .
    mv "$base.tmp" "$base"
fi
"$rbuild" --root "$root/store" import "$base" debian-minbase:bookworm
echo "cold build:" >&2
time "$rbuild" --root "$root/store" build --progress plain -t debian-web:1 "$here"
echo "no-op rebuild:" >&2
time "$rbuild" --root "$root/store" build --progress plain -t debian-web:1 "$here"
"$rbuild" --root "$root/store" inspect debian-web:1
