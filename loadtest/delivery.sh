#!/usr/bin/env bash
# The delivery-cost benchmark: one release node on MariaDB + a private Redis (and, with
# INBOX=mongo, a private MongoDB stand-in for positions), or with BACKEND=embedded on a
# fresh SQLite file and the in-process backplane, driven by `loadgen chat`, which
# prints throughput, latency, the checker and the CPU of the node, MariaDB, Redis and the
# stand-in per accepted message (us_per_msg_*), read from /proc in the same run.
#
#   loadtest/delivery.sh [loadgen chat args...]
#
# e.g. loadtest/delivery.sh --pairs 100 --rate 2000 --duration 10
#      INBOX=mongo loadtest/delivery.sh --pairs 20 --group-size 100 --rate 2000 --duration 10
#
# Environment: BACKEND [mysql | embedded], BACKPLANE [redis | cluster | nats: with BACKEND=mysql,
# a private Redis, Redis Cluster (3 masters, 3 replicas, scripts/redis-cluster.sh, --routing
# sharded) or nats-server; every one of their processes is watched], INBOX [sql | mongo], TASKSET [a CPU list to pin the node to, e.g. 0 or 0,1],
# NODE_ARGS [extra node flags], NODE_BIN [target/release/switchboard; another build to compare], PORT [18801] (admin PORT+1000), REDIS_PORT [6390],
# MONGO_PORT [27018], RUST_LOG [warn]. Every run uses a fresh MariaDB database and is cleaned
# up on exit; the binaries are target/release/{switchboard,loadgen} (`cargo build --release`).

set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

INBOX="${INBOX:-sql}"
PORT="${PORT:-18801}"
ADMIN=$((PORT + 1000))
REDIS_PORT="${REDIS_PORT:-6390}"
NATS_PORT="${NATS_PORT:-4290}"
BACKPLANE="${BACKPLANE:-redis}"
CLUSTER_DIR="/tmp/$$-delivery-cluster"
MONGO_PORT="${MONGO_PORT:-27018}"
DB="bench_$$_$RANDOM"
PIDS=()

cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    sleep 1
    for pid in "${PIDS[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    [[ -d "$CLUSTER_DIR" ]] && { scripts/redis-cluster.sh stop "$CLUSTER_DIR"; rm -rf "$CLUSTER_DIR"; }
    mariadb -uroot -e "DROP DATABASE IF EXISTS $DB" 2>/dev/null || true
    rm -f "/tmp/$DB.db" "/tmp/$DB.db-wal" "/tmp/$DB.db-shm"
}
trap cleanup EXIT

if [[ "${BACKEND:-mysql}" == embedded ]]; then
    WATCH=""
    ENV=(RUST_LOG="${RUST_LOG:-warn}" DATABASE_URL="sqlite:///tmp/$DB.db")
else
    ENV=(RUST_LOG="${RUST_LOG:-warn}" DATABASE_URL="mysql://root@127.0.0.1:3306/$DB")
    case "$BACKPLANE" in
    redis)
        redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no --daemonize no >/dev/null &
        PIDS+=($!)
        WATCH="$(pgrep -xo mariadbd),$!"
        ENV+=(REDIS_URL="redis://127.0.0.1:$REDIS_PORT")
        ;;
    cluster)
        scripts/redis-cluster.sh start "$CLUSTER_DIR" "$REDIS_PORT"
        WATCH="$(pgrep -xo mariadbd),$(cat "$CLUSTER_DIR"/*/redis.pid | paste -sd,)"
        ENV+=(REDIS_CLUSTER_URLS="redis://127.0.0.1:$REDIS_PORT" SWITCHBOARD_ROUTING=sharded)
        ;;
    nats)
        nats-server -a 127.0.0.1 -p "$NATS_PORT" >/dev/null 2>&1 &
        PIDS+=($!)
        WATCH="$(pgrep -xo mariadbd),$!"
        ENV+=(NATS_URL="nats://127.0.0.1:$NATS_PORT")
        ;;
    *) echo "BACKPLANE must be redis, cluster or nats" >&2; exit 64 ;;
    esac
fi
if [[ "$INBOX" == mongo ]]; then
    secantusd-py --host 127.0.0.1 --port "$MONGO_PORT" --storage-path :memory: --standalone >/dev/null 2>&1 &
    PIDS+=($!)
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$MONGO_PORT") 2>/dev/null && break
        sleep 0.2
    done
    # The stand-in runs as a Python child of its launcher script; watch the process that works.
    MONGO_PID="$(pgrep -f "secantusd.*--port $MONGO_PORT" | tail -1)"
    WATCH="$WATCH,$MONGO_PID"
    ENV+=(MONGODB_URL="mongodb://127.0.0.1:$MONGO_PORT/$DB")
fi
sleep 0.5

PIN=()
[[ -n "${TASKSET:-}" ]] && PIN=(taskset -c "$TASKSET")
# shellcheck disable=SC2086
env "${ENV[@]}" "${PIN[@]}" "${NODE_BIN:-target/release/switchboard}" --listen "127.0.0.1:$PORT" --admin-listen "127.0.0.1:$ADMIN" \
    --node-id bench --send-rate 1000000 --send-burst 1000000 ${NODE_ARGS:-} &
NODE=$!
PIDS+=("$NODE")
for _ in $(seq 100); do
    curl -sf "127.0.0.1:$ADMIN/readyz" >/dev/null && break
    sleep 0.1
done

echo "load: $(cut -d' ' -f1-3 /proc/loadavg)  backend: ${BACKEND:-mysql}  backplane: $BACKPLANE  inbox: $INBOX  pin: ${TASKSET:-none}  commit: $(git rev-parse --short HEAD)"
target/release/loadgen chat --target "127.0.0.1:$PORT" --admin "127.0.0.1:$ADMIN" --node-pid "$NODE" ${WATCH:+--watch "$WATCH"} "$@"
# Where a send's time went (the serial points of docs/benchmarks.md): the send round trip,
# the wait for its group-commit batch, the batch write, and the batch sizes.
curl -s "127.0.0.1:$ADMIN/metrics" | awk '
    function part(name) { return name ~ /_sum/ ? "sum" : "count" }
    /^switchboard_http_request_duration_seconds_(sum|count)\{route="\/send_message"\}/ { http[part($1)] = $2 }
    /^switchboard_commit_wait_seconds_(sum|count) / { wait[part($1)] = $2 }
    /^switchboard_store_query_duration_seconds_(sum|count)\{op="insert_messages"\}/ { ins[part($1)] = $2 }
    /^switchboard_commit_batch_messages_(sum|count) / { b[part($1)] = $2 }
    END {
        f = "serial: send_ms=%.3f commit_wait_ms=%.3f commit_write_ms=%.3f batch_messages=%.1f wait_share=%.2f write_share=%.2f\n"
        s = http["sum"] / (http["count"] + 1e-9) * 1000; w = wait["sum"] / (wait["count"] + 1e-9) * 1000
        i = ins["sum"] / (ins["count"] + 1e-9) * 1000; n = b["sum"] / (b["count"] + 1e-9)
        printf f, s, w, i, n, (s > 0 ? w / s : 0), (s > 0 ? i / s : 0)
    }'
