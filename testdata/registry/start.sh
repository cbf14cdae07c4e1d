#!/usr/bin/env bash
# Starts Debian's docker-registry (CNCF distribution 2.8) on 127.0.0.1 for tests.
#
#   testdata/registry/start.sh DIR [--user USER --password PASS] [--port PORT]
#
# Writes DIR/config.yml (filesystem storage in DIR/storage, htpasswd bcrypt auth
# in DIR/htpasswd when --user is given), starts the registry in the background
# with its pid in DIR/registry.pid and its log in DIR/registry.log, waits until
# it answers /v2/, and prints the port. Without --port a free port is chosen.
# Run it again with the same DIR and --port to restart a stopped registry on the
# same storage. Stop it with: kill "$(cat DIR/registry.pid)".
set -euo pipefail

dir=${1:?usage: start.sh DIR [--user USER --password PASS] [--port PORT]}
shift
user="" pass="" port=""
while (($#)); do
    case $1 in
        --user) user=$2; shift 2 ;;
        --password) pass=$2; shift 2 ;;
        --port) port=$2; shift 2 ;;
        *) echo "start.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
mkdir -p "$dir/storage"
dir=$(cd "$dir" && pwd)

auth=""
if [[ -n $user ]]; then
    # distribution accepts only bcrypt entries.
    htpasswd -Bbn "$user" "$pass" >"$dir/htpasswd"
    auth="auth:
  htpasswd:
    realm: rbuild-test
    path: $dir/htpasswd"
fi

# Is something answering on 127.0.0.1:$1?
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

start_on() {
    cat >"$dir/config.yml" <<EOF
version: 0.1
log:
  level: info
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $dir/storage
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:$1
$auth
EOF
    setsid /usr/bin/docker-registry serve "$dir/config.yml" >>"$dir/registry.log" 2>&1 </dev/null &
    local pid=$!
    echo "$pid" >"$dir/registry.pid"
    # Ready when /v2/ answers (200 without auth, 401 with it); give up if the
    # process exits (port taken) or after about 20 seconds.
    for _ in $(seq 200); do
        if ! kill -0 "$pid" 2>/dev/null; then
            return 1
        fi
        code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$1/v2/" || true)
        if [[ $code == 200 || $code == 401 ]]; then
            return 0
        fi
        sleep 0.1
    done
    kill "$pid" 2>/dev/null || true
    return 1
}

if [[ -n $port ]]; then
    start_on "$port" || { echo "start.sh: registry did not start on port $port (see $dir/registry.log)" >&2; exit 1; }
    echo "$port"
    exit 0
fi
for _ in $(seq 20); do
    candidate=$((20000 + RANDOM % 40000))
    port_busy "$candidate" && continue
    if start_on "$candidate"; then
        echo "$candidate"
        exit 0
    fi
done
echo "start.sh: could not start a registry (see $dir/registry.log)" >&2
exit 1
