#!/usr/bin/env bash
# Offline checks of the Prometheus and Grafana material:
#   - promtool check config  prometheus/prometheus.yml and prometheus/kubernetes.yml
#   - promtool check rules   prometheus/rules/switchboard.yml
#   - promtool test rules    prometheus/tests/switchboard_test.yml
#   - the dashboard JSON parses, has the datasource and node variables, and every
#     panel query is valid PromQL (checked by promtool after substituting
#     $node -> .*, $__rate_interval -> 1m) and filters on instance=~"$node"
#   - the Grafana provisioning files exist and point at the dashboard folder
# Prints `promtool: N passed, M failed` last and exits non-zero on any failure.
# promtool comes from Debian's `prometheus` package; it is installed when missing
# and this runs as root (as on the project's machines and in CI).
set -u
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
cd "$root" || exit 2

passed=0
failed=0
step() {
    local name="$1"; shift
    local out
    if out="$("$@" 2>&1)"; then
        passed=$((passed + 1))
        printf 'ok   %s\n' "$name"
    else
        failed=$((failed + 1))
        printf 'FAIL %s\n' "$name"
        printf '%s\n' "$out" | sed 's/^/     /'
    fi
}

if ! command -v promtool >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "promtool not found: installing Debian's prometheus package" >&2
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus; } >/dev/null 2>&1
    fi
fi
if ! command -v promtool >/dev/null 2>&1; then
    echo "promtool not found (apt-get install -y prometheus)" >&2
    echo "promtool: 0 passed, 1 failed"
    exit 1
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

step "check config prometheus/prometheus.yml" promtool check config prometheus/prometheus.yml
# Debian's prometheus package is built without Kubernetes service discovery,
# so its promtool rejects kubernetes_sd_configs as an unknown field. With such
# a promtool, check the file with the discovery block swapped for a static
# target: everything else (relabel rules, rule_files, globals) is still checked.
check_kubernetes() {
    local out
    if out="$(promtool check config prometheus/kubernetes.yml 2>&1)"; then
        return 0
    fi
    if ! grep -q 'field kubernetes_sd_configs not found' <<<"$out"; then
        printf '%s\n' "$out"
        return 1
    fi
    echo "promtool lacks Kubernetes SD; checking with a static target instead"
    python3 - prometheus/kubernetes.yml "$tmp/kubernetes.yml" <<'PY' || return 1
import sys
src, dst = sys.argv[1], sys.argv[2]
out, skip, found = [], None, False
for line in open(src):
    indent = len(line) - len(line.lstrip())
    if skip is not None:
        if line.strip() and indent <= skip:
            skip = None
        else:
            continue
    if line.strip() == "kubernetes_sd_configs:":
        found, skip = True, indent
        out.append(" " * indent + "static_configs: [{targets: ['127.0.0.1:9000']}]\n")
        continue
    out.append(line)
if not found:
    sys.exit("no kubernetes_sd_configs block in " + src)
open(dst, "w").writelines(out)
PY
    mkdir -p "$tmp/rules" && cp prometheus/rules/*.yml "$tmp/rules/"
    promtool check config "$tmp/kubernetes.yml"
}
step "check config prometheus/kubernetes.yml" check_kubernetes
step "check rules prometheus/rules/switchboard.yml" promtool check rules prometheus/rules/switchboard.yml
step "test rules prometheus/tests/switchboard_test.yml" promtool test rules prometheus/tests/switchboard_test.yml

# The dashboard: parse it, check its variables, and turn every target expr into
# a recording rule (JSON is YAML) so promtool parses each one.
dashboard_json() {
    python3 - "$root/grafana/dashboards/switchboard.json" "$tmp/dashboard_rules.yml" <<'PY'
import json, sys
src, dst = sys.argv[1], sys.argv[2]
d = json.load(open(src))
errors = []
variables = {v["name"]: v for v in d.get("templating", {}).get("list", [])}
ds = variables.get("datasource")
if not ds or ds.get("type") != "datasource" or ds.get("query") != "prometheus":
    errors.append("missing datasource variable of type prometheus")
node = variables.get("node")
if not node or "label_values(switchboard_ws_connections, instance)" not in json.dumps(node.get("query")) \
        or not node.get("multi") or not node.get("includeAll"):
    errors.append("node variable must be label_values(switchboard_ws_connections, instance), multi, include all")
rules, ids = [], set()
def walk(panels):
    for p in panels:
        yield p
        yield from walk(p.get("panels", []))
for p in walk(d.get("panels", [])):
    if p.get("id") in ids:
        errors.append("duplicate panel id %s" % p.get("id"))
    ids.add(p.get("id"))
    for t in p.get("targets", []):
        expr = t.get("expr", "")
        where = "%s/%s" % (p.get("title"), t.get("refId"))
        if 'instance=~"$node"' not in expr:
            errors.append(where + ': query does not filter on instance=~"$node"')
        if t.get("datasource", {}).get("uid") != "${datasource}":
            errors.append(where + ": target datasource is not ${datasource}")
        e = expr.replace("$__rate_interval", "1m").replace("$node", ".*")
        if "$" in e:
            errors.append(where + ": unknown variable left in " + e)
        rules.append({"record": "dashboard:expr_%d" % len(rules), "expr": e})
if not rules:
    errors.append("no panel queries found")
json.dump({"groups": [{"name": "dashboard", "rules": rules}]}, open(dst, "w"), indent=1)
for e in errors:
    print(e)
sys.exit(1 if errors else 0)
PY
}
step "dashboard JSON parses and its variables and targets are sound" dashboard_json
if [ -s "$tmp/dashboard_rules.yml" ]; then
    step "dashboard PromQL is valid (promtool check rules)" promtool check rules "$tmp/dashboard_rules.yml"
fi

provisioning() {
    grep -q 'type: prometheus' grafana/provisioning/datasources/prometheus.yaml &&
    grep -q 'url: http' grafana/provisioning/datasources/prometheus.yaml &&
    grep -q 'type: file' grafana/provisioning/dashboards/switchboard.yaml &&
    grep -q 'path:' grafana/provisioning/dashboards/switchboard.yaml
}
step "grafana provisioning files present" provisioning

echo "promtool: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
