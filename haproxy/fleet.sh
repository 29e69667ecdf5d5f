#!/usr/bin/env bash
# Run a local Switchboard fleet: N nodes behind HAProxy, sharing MySQL, Redis and (optionally)
# MongoDB.
#
#   haproxy/fleet.sh up                start the nodes, wait for /readyz, start HAProxy
#   haproxy/fleet.sh status            one line per node: pid, /readyz, HAProxy's view, sessions
#   haproxy/fleet.sh restart-rolling   SIGTERM each node in turn, wait for it to exit, start it
#                                      again, wait for /readyz and for HAProxy to see it UP
#   haproxy/fleet.sh down [--fast]     SIGTERM every node (drain), wait, then stop HAProxy;
#                                      --fast sends a second SIGTERM so nodes finish at once
#   haproxy/fleet.sh render [--bind ADDR] [--stats-bind ADDR] [PUBLIC:ADMIN:AGENT ...]
#                                      print the HAProxy config: one server line per node,
#                                      node i at the i-th port triple (default: the fleet's
#                                      800i:900i:910i), the frontends at :8080 and :8404 unless
#                                      given (the tests render theirs with this)
#
# Node i (1..N) listens on 127.0.0.1:800i (HTTP + WebSocket), 127.0.0.1:900i (admin: /readyz,
# /metrics, POST /admin/drain) and 127.0.0.1:910i (HAProxy agent), with node id "node<i>".
# HAProxy serves the fleet on :8080 and its stats on :8404/stats and :8404/metrics.
#
# Environment (defaults in brackets):
#   FLEET_NODES        number of nodes, 1..9 [3]
#   SWITCHBOARD_BIN    node binary [target/release/switchboard]
#   FLEET_RUN_DIR      pid files, logs, the generated haproxy.cfg [target/fleet]
#   DATABASE_URL       [mysql://root@127.0.0.1:3306/switchboard]
#   REDIS_URL          [redis://127.0.0.1:6379]
#   MONGODB_URL        unset = the nodes keep the inbox in SQL
#   HAPROXY_CFG        template config [haproxy/haproxy.cfg]
#   FLEET_READY_TIMEOUT  seconds to wait for a node's /readyz [60]
#   FLEET_STOP_TIMEOUT   seconds to wait for a node to exit after SIGTERM before SIGKILL
#                        [SWITCHBOARD_DRAIN_TIMEOUT (300s) + 30]
#   FLEET_ROLL_PAUSE     seconds to wait between two nodes of a rolling restart [2]
# Any other SWITCHBOARD_* variable (e.g. SWITCHBOARD_DRAIN_CLOSE_RATE) reaches the nodes as is.
# Paths given relative are taken from the repository root.

set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
cd "$ROOT"

NODES="${FLEET_NODES:-3}"
BIN="${SWITCHBOARD_BIN:-target/release/switchboard}"
RUN_DIR="${FLEET_RUN_DIR:-target/fleet}"
HAPROXY_TEMPLATE="${HAPROXY_CFG:-$HERE/haproxy.cfg}"
READY_TIMEOUT="${FLEET_READY_TIMEOUT:-60}"
# Whole seconds (rounded up) of a node duration such as 300s, 5m, 1h 30m or 1500ms.
duration_seconds() {
    local text="$1" total_ms=0 n unit
    [[ "$text" == 0 ]] && { echo 0; return; }
    while [[ "$text" =~ ^[[:space:]]*([0-9]+)[[:space:]]*([a-z]+)(.*)$ ]]; do
        n="${BASH_REMATCH[1]}" unit="${BASH_REMATCH[2]}" text="${BASH_REMATCH[3]}"
        case "$unit" in
            ms) total_ms=$(( total_ms + n )) ;;
            s|sec|secs) total_ms=$(( total_ms + n * 1000 )) ;;
            m|min|mins) total_ms=$(( total_ms + n * 60000 )) ;;
            h|hr|hrs) total_ms=$(( total_ms + n * 3600000 )) ;;
            d|days) total_ms=$(( total_ms + n * 86400000 )) ;;
            *) echo "fleet.sh: unsupported unit in duration: $1" >&2; return 1 ;;
        esac
    done
    [[ -z "${text// /}" ]] || { echo "fleet.sh: not a duration (write its unit, e.g. 300s): $1" >&2; return 1; }
    echo $(( (total_ms + 999) / 1000 ))
}
STOP_TIMEOUT="${FLEET_STOP_TIMEOUT:-$(( $(duration_seconds "${SWITCHBOARD_DRAIN_TIMEOUT:-300s}") + 30 ))}"
ROLL_PAUSE="${FLEET_ROLL_PAUSE:-2}"
STATS_URL="http://127.0.0.1:8404/stats;csv"

export DATABASE_URL="${DATABASE_URL:-mysql://root@127.0.0.1:3306/switchboard}"
export REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379}"
# MONGODB_URL passes through only when the caller set it.

log() { printf '[fleet] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# ---------------------------------------------------------------------------------------------
# processes

http_port()  { echo $(( 8000 + $1 )); }
admin_port() { echo $(( 9000 + $1 )); }
agent_port() { echo $(( 9100 + $1 )); }

pid_file() { echo "$RUN_DIR/$1.pid"; }
log_file() { echo "$RUN_DIR/$1.log"; }

# The pid recorded for a process name, if that process is still alive and still ours.
running_pid() {
    local name="$1" file pid
    file="$(pid_file "$name")"
    [[ -f "$file" ]] || return 1
    pid="$(<"$file")"
    [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null || return 1
    # Guard against a recycled pid: the command line must still be the one we started.
    local expected
    expected="$(basename "$BIN")"
    [[ "$name" == haproxy ]] && expected="haproxy"
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$expected" || return 1
    echo "$pid"
}

# Poll until a pid is gone; returns 1 on timeout.
wait_exit() {
    local pid="$1" timeout="$2" waited=0
    while kill -0 "$pid" 2>/dev/null; do
        if (( waited >= timeout * 5 )); then return 1; fi
        sleep 0.2
        waited=$(( waited + 1 ))
    done
}

http_status() {
    curl -s -o /dev/null -m 2 -w '%{http_code}' "$1" 2>/dev/null || true
}

# ---------------------------------------------------------------------------------------------
# nodes

start_node() {
    local i="$1" name="node$1" pid
    if pid="$(running_pid "$name")"; then
        log "$name already running (pid $pid)"
        return 0
    fi
    log "starting $name on :$(http_port "$i") (admin :$(admin_port "$i"), agent :$(agent_port "$i"))"
    nohup "$BIN" \
        --listen "127.0.0.1:$(http_port "$i")" \
        --admin-listen "127.0.0.1:$(admin_port "$i")" \
        --agent-listen "127.0.0.1:$(agent_port "$i")" \
        --node-id "$name" \
        >>"$(log_file "$name")" 2>&1 </dev/null &
    echo $! >"$(pid_file "$name")"
}

wait_node_ready() {
    local i="$1" name="node$1" url deadline pid
    url="http://127.0.0.1:$(admin_port "$i")/readyz"
    deadline=$(( SECONDS + READY_TIMEOUT ))
    until [[ "$(http_status "$url")" == 200 ]]; do
        if ! pid="$(running_pid "$name")"; then
            log "$name exited before becoming ready; last lines of $(log_file "$name"):"
            tail -n 20 "$(log_file "$name")" >&2 || true
            return 1
        fi
        if (( SECONDS >= deadline )); then
            log "$name (pid $pid) not ready after ${READY_TIMEOUT}s; last lines of $(log_file "$name"):"
            tail -n 20 "$(log_file "$name")" >&2 || true
            return 1
        fi
        sleep 0.2
    done
    log "$name ready"
}

# SIGTERM starts the node's drain (readyz 503, agent "drain", paced 1001 closes, exit 0).
# With fast=1 a second SIGTERM follows, which makes the node finish at once.
stop_node() {
    local name="$1" fast="${2:-0}" pid
    if ! pid="$(running_pid "$name")"; then
        rm -f "$(pid_file "$name")"
        return 0
    fi
    log "draining $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    if (( fast )); then
        sleep 0.5
        kill -TERM "$pid" 2>/dev/null || true
    fi
    if ! wait_exit "$pid" "$STOP_TIMEOUT"; then
        log "$name still running after ${STOP_TIMEOUT}s; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        wait_exit "$pid" 5 || true
    fi
    rm -f "$(pid_file "$name")"
    log "$name stopped"
}

# ---------------------------------------------------------------------------------------------
# haproxy

# Prints the config. The template lists node1..node3; the copy has one server line per node,
# each derived from node1's line, so FLEET_NODES=5 gets node1..node5. Arguments: see `render`
# in the header; without port triples, node i of FLEET_NODES gets 800i:900i:910i.
render_config() {
    local bind="" stats_bind="" ports=() i
    while (( $# )); do
        case "$1" in
            --bind) bind="${2:?--bind needs an address}"; shift 2 ;;
            --stats-bind) stats_bind="${2:?--stats-bind needs an address}"; shift 2 ;;
            *:*:*) ports+=("$1"); shift ;;
            *) die "render: '$1' is not PUBLIC:ADMIN:AGENT" ;;
        esac
    done
    if (( ${#ports[@]} == 0 )); then
        for (( i = 1; i <= NODES; i++ )); do
            ports+=("$(http_port "$i"):$(admin_port "$i"):$(agent_port "$i")")
        done
    fi
    awk -v ports="${ports[*]}" -v bind="$bind" -v stats="$stats_bind" '
        bind != "" && /^[[:space:]]*bind :8080([[:space:]]|$)/ { sub(/:8080/, bind) }
        stats != "" && /^[[:space:]]*bind :8404([[:space:]]|$)/ { sub(/:8404/, stats) }
        /^[[:space:]]*server node[0-9]+[[:space:]]/ {
            if ($2 == "node1") {
                n = split(ports, triples, " ")
                for (i = 1; i <= n; i++) {
                    split(triples[i], p, ":")
                    line = $0
                    sub(/node1/, "node" i, line)
                    sub(/:8001/, ":" p[1], line)
                    sub(/check port 9001/, "check port " p[2], line)
                    sub(/agent-port 9101/, "agent-port " p[3], line)
                    print line
                }
            }
            next
        }
        { print }
    ' "$HAPROXY_TEMPLATE"
}

# Writes the fleet's config into the run directory, checks it, and prints its path.
render_haproxy_cfg() {
    local out="$RUN_DIR/haproxy.cfg"
    render_config >"$out"
    HAPROXY_RUN_DIR="$RUN_DIR" haproxy -c -q -f "$out" || die "generated $out is invalid"
    echo "$out"
}

start_haproxy() {
    local cfg pid
    if pid="$(running_pid haproxy)"; then
        log "haproxy already running (pid $pid)"
        return 0
    fi
    cfg="$(render_haproxy_cfg)"
    log "starting haproxy on :8080 (stats http://127.0.0.1:8404/stats)"
    # -db: stay in the foreground, so the pid we record is haproxy's own.
    HAPROXY_RUN_DIR="$RUN_DIR" nohup haproxy -db -f "$cfg" \
        >>"$(log_file haproxy)" 2>&1 </dev/null &
    echo $! >"$(pid_file haproxy)"
}

stop_haproxy() {
    local pid
    if ! pid="$(running_pid haproxy)"; then
        rm -f "$(pid_file haproxy)"
        return 0
    fi
    log "stopping haproxy (pid $pid)"
    # The nodes are stopped first, so no WebSocket is left to cut: a hard stop is fine.
    kill -TERM "$pid" 2>/dev/null || true
    wait_exit "$pid" 10 || kill -KILL "$pid" 2>/dev/null || true
    rm -f "$(pid_file haproxy)"
}

# HAProxy's status for one server of be_switchboard ("UP", "DOWN", "DRAIN", "MAINT", ...),
# read from the CSV stats; column 18 is "status", column 5 "scur" (current sessions).
haproxy_server_field() {
    local server="$1" column="$2" csv
    csv="$(curl -s -m 2 "$STATS_URL" 2>/dev/null || true)"
    awk -F, -v s="$server" -v c="$column" '$1 == "be_switchboard" && $2 == s { print $c }' <<<"$csv"
}

wait_haproxy_up() {
    local name="$1" deadline state=""
    deadline=$(( SECONDS + 30 ))
    while (( SECONDS < deadline )); do
        state="$(haproxy_server_field "$name" 18)"
        [[ "$state" == UP ]] && { log "haproxy sees $name UP"; return 0; }
        sleep 0.2
    done
    log "haproxy does not see $name UP after 30s (state: ${state:-unknown})"
    return 1
}

# ---------------------------------------------------------------------------------------------
# setup

preflight() {
    [[ "$NODES" =~ ^[1-9]$ ]] || die "FLEET_NODES must be 1..9 (ports 800i/900i/910i), got '$NODES'"
    [[ -x "$BIN" ]] || die "no executable at $BIN (cargo build --release, or set SWITCHBOARD_BIN)"
    command -v haproxy >/dev/null || die "haproxy not found (apt-get install -y haproxy)"
    command -v curl >/dev/null || die "curl not found (apt-get install -y curl)"
    mkdir -p "$RUN_DIR"
}

# The nodes run their migrations, but MySQL needs the database itself to exist. Best effort:
# with a mysql/mariadb client and a plain mysql://user[:pass]@host[:port]/db URL.
ensure_mysql_database() {
    local re='^mysql://([^:@/]+)(:([^@]*))?@([^:/]+)(:([0-9]+))?/([A-Za-z0-9_]+)'
    [[ "$DATABASE_URL" =~ $re ]] || return 0
    local user="${BASH_REMATCH[1]}" pass="${BASH_REMATCH[3]}" host="${BASH_REMATCH[4]}"
    local port="${BASH_REMATCH[6]:-3306}" db="${BASH_REMATCH[7]}" client
    client="$(command -v mariadb || command -v mysql || true)"
    [[ -n "$client" ]] || return 0
    MYSQL_PWD="$pass" "$client" -h "$host" -P "$port" -u "$user" \
        -e "CREATE DATABASE IF NOT EXISTS \`$db\`" 2>/dev/null ||
        log "warning: could not create database '$db' on $host:$port (the nodes will say why)"
}

# ---------------------------------------------------------------------------------------------
# commands

cmd_up() {
    preflight
    ensure_mysql_database
    local i
    for (( i = 1; i <= NODES; i++ )); do start_node "$i"; done
    for (( i = 1; i <= NODES; i++ )); do wait_node_ready "$i"; done
    start_haproxy
    for (( i = 1; i <= NODES; i++ )); do wait_haproxy_up "node$i"; done
    log "fleet up: http://127.0.0.1:8080 (logs in $RUN_DIR)"
}

cmd_down() {
    local fast=0 i pids=()
    [[ "${1:-}" == --fast ]] && fast=1
    mkdir -p "$RUN_DIR"
    # Drain all nodes concurrently, then HAProxy.
    for (( i = 1; i <= 9; i++ )); do
        [[ -f "$(pid_file "node$i")" ]] || continue
        stop_node "node$i" "$fast" &
        pids+=("$!")
    done
    local rc=0
    for pid in "${pids[@]}"; do wait "$pid" || rc=1; done
    stop_haproxy
    log "fleet down"
    return "$rc"
}

cmd_status() {
    local i name pid ready state sessions
    printf '%-8s %-8s %-7s %-8s %s\n' NODE PID READYZ HAPROXY SESSIONS
    for (( i = 1; i <= NODES; i++ )); do
        name="node$i"
        pid="$(running_pid "$name" || echo -)"
        ready="$(http_status "http://127.0.0.1:$(admin_port "$i")/readyz")"
        [[ "$ready" == 000 ]] && ready="-"
        state="$(haproxy_server_field "$name" 18)"
        sessions="$(haproxy_server_field "$name" 5)"
        printf '%-8s %-8s %-7s %-8s %s\n' "$name" "$pid" "$ready" "${state:--}" "${sessions:--}"
    done
    printf '%-8s %-8s\n' haproxy "$(running_pid haproxy || echo -)"
}

cmd_restart_rolling() {
    preflight
    running_pid haproxy >/dev/null || die "haproxy is not running; use '$0 up' first"
    local i
    for (( i = 1; i <= NODES; i++ )); do
        stop_node "node$i"
        start_node "$i"
        wait_node_ready "$i"
        # Do not drain the next node before HAProxy sends traffic to this one again.
        wait_haproxy_up "node$i"
        if (( i < NODES )); then sleep "$ROLL_PAUSE"; fi
    done
    log "rolling restart done"
}

usage() {
    sed -n '2,/^$/{s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}" >&2
    exit "${1:-64}"
}

main() {
    local cmd="${1:-}"
    shift || true
    case "$cmd" in
        up) cmd_up ;;
        down) cmd_down "$@" ;;
        status) cmd_status ;;
        restart-rolling) cmd_restart_rolling ;;
        render) render_config "$@" ;;
        -h | --help | help) usage 0 ;;
        *) usage ;;
    esac
}

main "$@"
