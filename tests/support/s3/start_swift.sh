#!/usr/bin/env bash
# Start a real S3-compatible object store on 127.0.0.1 for the test suite and the bench:
# OpenStack Swift (Debian packages) with its s3api and tempauth middlewares, one node.
#
#   start_swift.sh PORT DIR      # start; prints shell lines to source (below)
#   start_swift.sh stop DIR      # stop, by PID, what a start left in DIR
#
# Installs the Debian packages when missing (swift swift-proxy swift-account
# swift-container swift-object memcached; .ci/run installs them up front), starts the
# proxy (s3api) on PORT, account/container/object servers on PORT+1..+3 and a private
# memcached on PORT+4 (S3_BACKEND_PORTS="p1 p2 p3 p4" overrides), all under DIR,
# waits until /healthcheck answers and prints:
#   S3_ENDPOINT_URL=http://127.0.0.1:PORT  AWS_ACCESS_KEY_ID=test:tester
#   AWS_SECRET_ACCESS_KEY=testing  AWS_DEFAULT_REGION=us-east-1  S3_PIDS="..."  S3_STOP="..."
# Logs go to DIR/log/, PIDs to DIR/pids.  A failed start stops what it started.
# DIR needs user xattrs (ext4, xfs, tmpfs on Linux >= 6.6).  Requests must be signed for
# S3_REGION (default us-east-1).  Swift 2.30 quirks the code designs around: no
# conditional PUTs (If-None-Match -> 501), DeleteObjects needs Content-MD5.
set -euo pipefail

log() { echo "[start_swift] $*" >&2; }
elapsed() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }
die() { log "ERROR: $*"; exit 1; }

if [[ "${1:-}" == "stop" ]]; then
    d="${2:?usage: start_swift.sh stop DIR}"
    [[ -f "$d/pids" ]] || die "no $d/pids"
    alive() { [[ -e /proc/$1 ]] && ! grep -q '^[0-9]* ([^)]*) Z' "/proc/$1/stat" 2>/dev/null; }
    while read -r pid; do
        [[ -n "$pid" ]] && kill "$pid" 2>/dev/null && log "sent TERM to $pid" || true
    done < "$d/pids"
    for _ in $(seq 50); do   # up to 5 s, then KILL
        left=0; while read -r pid; do [[ -n "$pid" ]] && alive "$pid" && left=1; done < "$d/pids"
        (( left )) || break; sleep 0.1
    done
    while read -r pid; do
        [[ -n "$pid" ]] && alive "$pid" && kill -9 "$pid" 2>/dev/null && log "sent KILL to $pid" || true
    done < "$d/pids"
    mv "$d/pids" "$d/pids.stopped"
    exit 0
fi

PORT="${1:?usage: start_swift.sh PORT DIR}"
DIR="${2:?usage: start_swift.sh PORT DIR}"
BACKEND=swift
REGION="${S3_REGION:-us-east-1}"
WAIT_S="${S3_WAIT_S:-60}"
mkdir -p "$DIR"
DIR="$(cd "$DIR" && pwd)"
[[ -e "$DIR/pids" ]] && die "$DIR/pids exists: a server may already run there (stop it first)"
: > "$DIR/pids"
T0=$(date +%s.%N)
STARTED=0
on_exit() {  # a failed start leaves nothing running
    if [[ $STARTED != 1 && -s "$DIR/pids" ]]; then
        log "start failed: stopping what was started"
        bash "$0" stop "$DIR" || true
    elif [[ $STARTED != 1 ]]; then
        rm -f "$DIR/pids"
    fi
}
trap on_exit EXIT

port_free() {  # exit 0 if nothing listens on 127.0.0.1:$1
    ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

wait_tcp() {  # wait_tcp PORT PID
    local p=$1 pid=$2 t_end=$(( $(date +%s) + WAIT_S ))
    while ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; do
        kill -0 "$pid" 2>/dev/null || die "process $pid (port $p) died; see $DIR/log"
        (( $(date +%s) < t_end )) || die "port $p not answering after ${WAIT_S}s; see $DIR/log"
        sleep 0.1
    done
}

apt_install() {
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -q --no-install-recommends "$@" >&2; then
        apt-get update -q >&2
        apt-get install -y -q --no-install-recommends "$@" >&2
    fi
}

start_bg() {  # start_bg NAME CMD...  (own session; PID recorded)
    local name=$1; shift
    setsid "$@" > "$DIR/log/$name.log" 2>&1 < /dev/null &
    echo $! >> "$DIR/pids"
    echo $!
}

mkdir -p "$DIR/log"

    # ---------------------------------------------------------------- install
    if ! command -v swift-proxy-server >/dev/null || ! command -v swift-object-server >/dev/null \
       || ! command -v swift-ring-builder >/dev/null || ! [[ -x /usr/bin/memcached ]]; then
        log "installing Debian swift packages"
        ti=$(date +%s.%N)
        apt_install swift swift-proxy swift-account swift-container swift-object memcached
        log "install took $(elapsed "$ti") s"
    fi
    read -r PA PC PO PM <<< "${S3_BACKEND_PORTS:-$((PORT+1)) $((PORT+2)) $((PORT+3)) $((PORT+4))}"
    for p in "$PORT" "$PA" "$PC" "$PO" "$PM"; do port_free "$p" || die "port $p already in use"; done

    ETC="$DIR/etc"; NODE="$DIR/node"; RUN="$DIR/run"
    mkdir -p "$ETC" "$NODE/d1" "$RUN"
    /usr/bin/python3 -c 'import os, sys; p = sys.argv[1] + "/.xattr-probe"; open(p, "w").close()
try: os.setxattr(p, "user.swift.probe", b"1")
finally: os.remove(p)' "$NODE/d1" || die "$NODE/d1: filesystem without user xattrs; pick another DIR"
    # keep the hash suffix of an earlier run in DIR, or its objects become unreachable
    SUFFIX=$(sed -n 's/^swift_hash_path_suffix = //p' "$ETC/swift.conf" 2>/dev/null || true)
    [[ -n "$SUFFIX" ]] || SUFFIX=$(od -An -tx8 -N8 /dev/urandom | tr -d ' ')

    cat > "$ETC/swift.conf" <<EOF
[swift-hash]
swift_hash_path_suffix = $SUFFIX
swift_hash_path_prefix = saio
[storage-policy:0]
name = Policy-0
default = yes
[swift-constraints]
max_file_size = 5368709122
EOF

    common() {  # common PORT NAME
        cat <<EOF
[DEFAULT]
devices = $NODE
mount_check = false
disable_fallocate = true
bind_ip = 127.0.0.1
bind_port = $1
workers = 0
user = $(id -un)
swift_dir = $ETC
log_name = $2
log_level = ${S3_LOG_LEVEL:-WARNING}
# no syslog socket here -> swift falls back to UDP 127.0.0.1:514 (dropped);
# -v on the command line also logs to DIR/log/*.log
log_address = $RUN/no-syslog
EOF
    }
    { common "$PA" account-server; cat <<EOF
[pipeline:main]
pipeline = account-server
[app:account-server]
use = egg:swift#account
EOF
    } > "$ETC/account-server.conf"
    { common "$PC" container-server; cat <<EOF
[pipeline:main]
pipeline = container-server
[app:container-server]
use = egg:swift#container
EOF
    } > "$ETC/container-server.conf"
    { common "$PO" object-server; cat <<EOF
[pipeline:main]
pipeline = object-server
[app:object-server]
use = egg:swift#object
EOF
    } > "$ETC/object-server.conf"

    cat > "$ETC/proxy-server.conf" <<EOF
[DEFAULT]
bind_ip = 127.0.0.1
bind_port = $PORT
workers = 0
user = $(id -un)
swift_dir = $ETC
log_name = proxy-server
log_level = ${S3_LOG_LEVEL:-WARNING}
log_address = $RUN/no-syslog

[pipeline:main]
pipeline = catch_errors gatekeeper healthcheck proxy-logging cache listing_formats bulk s3api tempauth copy slo dlo versioned_writes symlink proxy-logging proxy-server

[app:proxy-server]
use = egg:swift#proxy
account_autocreate = true
allow_account_management = true
# single replica: don't wait for / retry other nodes
node_timeout = 30
recoverable_node_timeout = 30
conn_timeout = 2

[filter:s3api]
use = egg:swift#s3api
# SigV4 requests must be signed for exactly this region
location = $REGION
s3_acl = false
check_bucket_owner = false
allow_multipart_uploads = true
max_upload_part_num = 10000
min_segment_size = 5242880
dns_compliant_bucket_names = true

[filter:tempauth]
use = egg:swift#tempauth
user_admin_admin = admin .admin .reseller_admin
user_test_tester = testing .admin
user_test2_tester2 = testing2 .admin

[filter:healthcheck]
use = egg:swift#healthcheck
[filter:cache]
use = egg:swift#memcache
memcache_servers = 127.0.0.1:$PM
[filter:catch_errors]
use = egg:swift#catch_errors
[filter:gatekeeper]
use = egg:swift#gatekeeper
[filter:proxy-logging]
use = egg:swift#proxy_logging
[filter:listing_formats]
use = egg:swift#listing_formats
[filter:bulk]
use = egg:swift#bulk
[filter:copy]
use = egg:swift#copy
[filter:slo]
use = egg:swift#slo
min_segment_size = 1
[filter:dlo]
use = egg:swift#dlo
[filter:versioned_writes]
use = egg:swift#versioned_writes
allow_versioned_writes = true
allow_object_versioning = true
[filter:symlink]
use = egg:swift#symlink
EOF

    # ------------------------------------------------------------------ rings
    # one Python process instead of 9 swift-ring-builder calls (~3x faster)
    /usr/bin/python3 - "$ETC" "$PA" "$PC" "$PO" <<'PY'
import sys
from swift.common.ring import RingBuilder
etc, ports = sys.argv[1], dict(zip(("account", "container", "object"), map(int, sys.argv[2:5])))
for kind, port in ports.items():
    b = RingBuilder(8, 1, 1)   # part_power=8, replicas=1, min_part_hours=1
    b.add_dev({"id": 0, "region": 1, "zone": 1, "ip": "127.0.0.1", "port": port,
               "device": "d1", "weight": 100, "meta": ""})
    b.rebalance()
    b.save(f"{etc}/{kind}.builder")
    b.get_ring().save(f"{etc}/{kind}.ring.gz")
PY

    # ------------------------------------------------------------------ start
    MUSER=(); [[ $(id -u) == 0 ]] && MUSER=(-u root)
    PIDM=$(start_bg memcached /usr/bin/memcached -l 127.0.0.1 -p "$PM" -U 0 -m 64 "${MUSER[@]}")
    PIDA=$(start_bg account   swift-account-server   "$ETC/account-server.conf"   -v)
    PIDC=$(start_bg container swift-container-server "$ETC/container-server.conf" -v)
    PIDO=$(start_bg object    swift-object-server    "$ETC/object-server.conf"    -v)
    PIDP=$(start_bg proxy     swift-proxy-server     "$ETC/proxy-server.conf"     -v)
    wait_tcp "$PM" "$PIDM"; wait_tcp "$PA" "$PIDA"; wait_tcp "$PC" "$PIDC"; wait_tcp "$PO" "$PIDO"; wait_tcp "$PORT" "$PIDP"
    t_end=$(( $(date +%s) + WAIT_S ))
    until [[ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PORT/healthcheck")" == 200 ]]; do
        (( $(date +%s) < t_end )) || die "proxy healthcheck failing; see $DIR/log"
        sleep 0.1
    done
    KEY="test:tester"; SECRET="testing"

STARTED=1
log "$BACKEND up in $(elapsed "$T0") s (incl. any install)"
cat <<EOF
S3_ENDPOINT_URL=http://127.0.0.1:$PORT
AWS_ACCESS_KEY_ID=$KEY
AWS_SECRET_ACCESS_KEY=$SECRET
AWS_DEFAULT_REGION=$REGION
S3_PIDS="$(tr '\n' ' ' < "$DIR/pids" | sed 's/ $//')"
S3_STOP="bash $(cd "$(dirname "$0")" && pwd)/$(basename "$0") stop $DIR"
EOF
