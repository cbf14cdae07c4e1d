#!/usr/bin/env bash
# Writes a minimal busybox root filesystem as a tarball, for `rbuild import`.
# Usage: testdata/busybox-rootfs.sh OUT.tar
# Needs Debian's busybox-static (/bin/busybox, statically linked). The tarball is
# deterministic: sorted entries, numeric owners, fixed mtimes.
set -euo pipefail
out=${1:?usage: busybox-rootfs.sh OUT.tar}
bb=/bin/busybox
if ! file_out=$(LC_ALL=C "$bb" 2>&1 | sed -n 1p) || [[ $file_out != BusyBox* ]]; then
    echo "busybox-rootfs.sh: $bb is missing; apt-get install busybox-static" >&2
    exit 1
fi
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
mkdir -p "$dir"/{bin,sbin,usr/bin,usr/sbin,etc,tmp,root,home/user,var,dev,proc,sys,run}
chmod 755 "$dir"
chmod 1777 "$dir/tmp"
chmod 700 "$dir/root"
cp "$bb" "$dir/bin/busybox"
chmod 755 "$dir/bin/busybox"
# --list-full prints each applet's canonical path (bin/ls, usr/bin/env, sbin/ip, ...).
"$bb" --list-full | while read -r applet; do
    [[ $applet == bin/busybox ]] && continue
    # -s: on a merged-/usr host /bin is a symlink to usr/bin, and resolving it
    # would make usr/bin/awk point at a "busybox" beside it that the image lacks.
    rel=$(realpath -m -s --relative-to="$(dirname "/$applet")" /bin/busybox)
    ln -sf "$rel" "$dir/$applet"
done
cat > "$dir/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/bin/sh
user:x:1000:1000:user:/home/user:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
PASSWD
cat > "$dir/etc/group" <<'GROUP'
root:x:0:
wheel:x:10:user
user:x:1000:
nogroup:x:65534:
GROUP
chown -R 0:0 "$dir"
chown 1000:1000 "$dir/home/user"
tar --sort=name --mtime=@0 --numeric-owner \
    --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
    -C "$dir" -cf "$out" .
