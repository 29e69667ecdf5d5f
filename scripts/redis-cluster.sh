#!/usr/bin/env bash
# A Redis Cluster of 3 masters and 3 replicas on loopback, for the tests and `loadgen fleet`
# (docs/routing.md, "Sharded on a Redis Cluster"):
#
#   scripts/redis-cluster.sh start DIR PORT   six nodes on PORT..PORT+5 (cluster bus ports
#                                             +10000), data and pid files under DIR; returns
#                                             once the cluster reports cluster_state:ok
#   scripts/redis-cluster.sh stop DIR         SIGKILLs every node started under DIR
#
# A replica fails over however fresh its copy (cluster-replica-validity-factor 0), since
# tests kill masters moments after the cluster formed.
set -euo pipefail

usage() { echo "usage: $0 start DIR PORT | stop DIR" >&2; exit 64; }
[ $# -ge 2 ] || usage
cmd=$1 dir=$2

wait_for() { # tries, then a command that must succeed
  local tries=$1; shift
  for _ in $(seq "$tries"); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  return 1
}

case $cmd in
start)
  [ $# -eq 3 ] || usage
  port=$3 addrs=()
  mkdir -p "$dir"
  for i in 0 1 2 3 4 5; do
    p=$((port + i))
    mkdir -p "$dir/$p"
    redis-server --daemonize yes --bind 127.0.0.1 --port "$p" --save "" --appendonly no \
      --cluster-enabled yes --cluster-node-timeout 1500 --cluster-replica-validity-factor 0 \
      --cluster-config-file nodes.conf --dir "$dir/$p" --pidfile "$dir/$p/redis.pid" \
      --logfile "$dir/$p/redis.log"
    addrs+=("127.0.0.1:$p")
  done
  for i in 0 1 2 3 4 5; do
    wait_for 100 redis-cli -p $((port + i)) ping || { echo "node $((port + i)) did not start" >&2; exit 1; }
  done
  redis-cli --cluster create "${addrs[@]}" --cluster-replicas 1 --cluster-yes >"$dir/create.log" 2>&1 \
    || { cat "$dir/create.log" >&2; exit 1; }
  ok() { for i in 0 1 2 3 4 5; do redis-cli -p $((port + i)) cluster info | grep -q cluster_state:ok || return 1; done; }
  wait_for 300 ok || { echo "the cluster did not reach cluster_state:ok" >&2; exit 1; }
  ;;
stop)
  for f in "$dir"/*/redis.pid; do
    [ -f "$f" ] && kill -9 "$(cat "$f")" 2>/dev/null || true
  done
  ;;
*) usage ;;
esac
