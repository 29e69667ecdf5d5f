#!/usr/bin/env bash
# Connection cost (docs/benchmarks.md, "Connection cost"): one fresh node on a fresh
# MariaDB database and a private Redis, then `loadgen connections` or `loadgen storm`.
#
#   loadtest/connection-cost.sh connections 19000      # idle sessions with heartbeats
#   loadtest/connection-cost.sh storm 19000            # reconnect storm
#   MONGO=1 loadtest/connection-cost.sh connections 10000   # positions in a private stand-in
#   NODES=6 PROCS=6 LOADGEN_FLAGS="--sources 127.0.0.2,...,127.0.0.7" \
#       loadtest/connection-cost.sh connections 100000        # spread over 6 nodes
#
# With NODES > 1 every node's RSS, sessions and CPU are printed every 5 s.
# Extra loadgen flags go in LOADGEN_FLAGS; NODE_BIN runs another build of the node. Output: stdout (tee it into loadtest/results/).
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:?connections|storm} count=${2:?count}
db=${DB:-switchboard_cost}
redis_port=${REDIS_PORT:-6394} mongo_port=${MONGO_PORT:-27019}
port=${PORT:-18841} admin=${ADMIN_PORT:-19841}
pids=()
# The node first, then its backends, so it does not log their disappearance.
cleanup() {
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
        kill "${pids[i]}" 2>/dev/null && wait "${pids[i]}" 2>/dev/null || true
    done
}
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
nodes=()
for ((i = 0; i < ${NODES:-1}; i++)); do
    env RUST_LOG=warn DATABASE_URL="mysql://root@127.0.0.1:3306/$db" REDIS_URL="redis://127.0.0.1:$redis_port" \
        "${env_mongo[@]}" "${NODE_BIN:-target/release/switchboard}" --listen "127.0.0.1:$((port + i))" \
        --admin-listen "127.0.0.1:$((admin + i))" --node-id "cost$i" --send-rate 100000 &
    nodes+=($!)
    pids+=($!)
done
node=${nodes[0]}
targets=$(for ((i = 0; i < ${#nodes[@]}; i++)); do printf '127.0.0.1:%d,' $((port + i)); done)
admins=$(for ((i = 0; i < ${#nodes[@]}; i++)); do printf '127.0.0.1:%d,' $((admin + i)); done)
for ((i = 0; i < ${#nodes[@]}; i++)); do
    for _ in $(seq 50); do curl -sf "127.0.0.1:$((admin + i))/readyz" >/dev/null && break; sleep 0.2; done
done
if ((${#nodes[@]} > 1)); then
    (
        declare -A last
        while sleep 5; do
            line="nodes $(date +%T):"
            for ((i = 0; i < ${#nodes[@]}; i++)); do
                p=${nodes[i]}
                rss=$(awk '/VmRSS/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0)
                ticks=$(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0)
                cpu=$(awk -v a="${last[$p]:-$ticks}" -v b="$ticks" 'BEGIN {printf "%.2f", (b - a) / 100 / 5}')
                last[$p]=$ticks
                conns=$(curl -s -m 2 "127.0.0.1:$((admin + i))/metrics" | awk '/^switchboard_ws_connections / {print $2}' || true)
                line+=" [$i rss=$((rss / 1024))MiB sessions=${conns:-?} cpu=$cpu]"
            done
            echo "$line"
        done
    ) &
    pids+=($!)
fi
watch=$(pgrep -d, -x mariadbd || true),$(pgrep -f "redis-server .*:$redis_port" | head -1)
if [[ -n ${MONGO:-} ]]; then watch+=,$(pgrep -f "secantusd-py .*--port $mongo_port" | head -1); fi
echo "== $mode count=$count $(git rev-parse --short HEAD) $(date +%T) load: $(cut -d' ' -f1-3 /proc/loadavg)"
common=(--target "${targets%,}" --admin "${admins%,}" --node-pid "$node" --watch "$watch"
    --users-file "target/loadgen/cost-$mode-$count.users")
case $mode in
connections)
    target/release/loadgen connections "${common[@]}" --count "$count" --procs "${PROCS:-2}" --ramp 64 --hold 20 \
        --heartbeat ${LOADGEN_FLAGS:-}
    ;;
storm)
    target/release/loadgen storm "${common[@]}" --count "$count" --procs "${PROCS:-2}" --ramp 64 --group-size 10 \
        --missed 1 --recover-timeout 60 ${LOADGEN_FLAGS:-}
    ;;
esac
