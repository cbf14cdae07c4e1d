#!/usr/bin/env bash
# Installs the Debian packages rbuild's tests use: the independent image checkers
# (skopeo, umoci, jq), the busybox base image source (busybox-static), the registry
# (docker-registry, apache2-utils for htpasswd), compressors and archivers for ADD tests,
# buildah/podman/runc for interop checks and benchmarks, and strace to prove that
# a no-op rebuild opens no context file. Idempotent: installs only
# what is missing and runs `apt-get update` only then.
set -euo pipefail
packages=(
    skopeo umoci jq busybox-static docker-registry apache2-utils
    bzip2 xz-utils zstd pigz graphviz tar gzip python3 curl
    buildah podman runc uidmap strace
)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    echo "installing: ${missing[*]}" >&2
    sudo_cmd=()
    [[ $(id -u) == 0 ]] || sudo_cmd=(sudo)
    "${sudo_cmd[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
