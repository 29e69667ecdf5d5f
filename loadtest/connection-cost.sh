#!/usr/bin/env bash
# Connection cost (docs/benchmarks.md, "Connection cost"): one fresh node on a fresh
# MariaDB database and a private Redis, then `loadgen connections` or `loadgen storm`.
#
#   loadtest/connection-cost.sh connections 19000      # idle sessions with heartbeats
#   loadtest/connection-cost.sh storm 19000            # reconnect storm
#   MONGO=1 loadtest/connection-cost.sh connections 10000   # positions in a private stand-in
#
# Extra loadgen flags go in LOADGEN_FLAGS. Output: stdout (tee it into loadtest/results/).
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:?connections|storm} count=${2:?count}
db=${DB:-switchboard_cost}
redis_port=${REDIS_PORT:-6394} mongo_port=${MONGO_PORT:-27019}
port=${PORT:-18841} admin=${ADMIN_PORT:-19841}
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

redis-server --port "$redis_port" --save '' --appendonly no --daemonize no >/dev/null &
pids+=($!)
# The database (and loadgen's users file) is kept between runs, so the users are registered
# once; FRESH=1 starts it over.
if [[ -n ${FRESH:-} ]]; then mysql -uroot -h127.0.0.1 -e "DROP DATABASE IF EXISTS $db"; fi
mysql -uroot -h127.0.0.1 -e "CREATE DATABASE IF NOT EXISTS $db"
env_mongo=()
if [[ -n ${MONGO:-} ]]; then
    secantusd-py --host 127.0.0.1 --port "$mongo_port" --storage-path :memory: --standalone >/dev/null 2>&1 &
    pids+=($!)
    env_mongo=(MONGODB_URL="mongodb://127.0.0.1:$mongo_port/$db")
    sleep 2
fi
sleep 0.5
env RUST_LOG=warn DATABASE_URL="mysql://root@127.0.0.1:3306/$db" REDIS_URL="redis://127.0.0.1:$redis_port" \
    "${env_mongo[@]}" target/release/switchboard --listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$admin" \
    --node-id cost1 --send-rate 100000 &
node=$!
pids+=($node)
for _ in $(seq 50); do curl -sf "127.0.0.1:$admin/readyz" >/dev/null && break; sleep 0.2; done
watch=$(pgrep -d, -x mariadbd || true),$(pgrep -f "redis-server .*:$redis_port" | head -1)
echo "== $mode count=$count $(git rev-parse --short HEAD) $(date +%T) load: $(cut -d' ' -f1-3 /proc/loadavg)"
common=(--target "127.0.0.1:$port" --admin "127.0.0.1:$admin" --node-pid "$node" --watch "$watch"
    --users-file "target/loadgen/cost-$mode-$count.users")
case $mode in
connections)
    target/release/loadgen connections "${common[@]}" --count "$count" --procs 2 --ramp 64 --hold 20 \
        --heartbeat ${LOADGEN_FLAGS:-}
    ;;
storm)
    target/release/loadgen storm "${common[@]}" --count "$count" --procs 2 --ramp 64 --group-size 10 \
        --missed 1 --recover-timeout 60 ${LOADGEN_FLAGS:-}
    ;;
esac
