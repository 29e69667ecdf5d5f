#!/usr/bin/env bash
# Validate the Kubernetes manifests under k8s/ offline, with no cluster and no network.
#
# Every YAML file under k8s/ must be reached from a kustomization (as a resource, a patch or the
# kustomization itself). Then, for every kustomization (k8s/base, k8s/overlays/*):
#   1. raw:      each manifest listed in its "resources" is checked by `kubernetes-validate
#                --strict` (unknown fields are errors; an unknown kind/apiVersion, which
#                kubernetes-validate only warns about, counts as a failure here). Patches are
#                partial objects; they are checked as part of the rendered output;
#   2. render:   `kubectl kustomize` builds the kustomization, exactly as `kubectl apply -k`
#                would. A warning from it (a deprecated field, say) is a failure, so the
#                manifests keep working on the kubectl versions users have;
#   3. rendered: every rendered resource is checked by `kubernetes-validate --strict`;
#   4. drain:    the values that must agree across files for a graceful drain do (grace period
#                vs preStop + drain timeout, probes on the admin port, HAProxy's timeouts, slots
#                and ports), and the HAProxy configuration passes `haproxy -c` when haproxy is
#                installed.
# Each check prints PASS or FAIL; the last line is "k8s: N passed, M failed" and the exit status
# is non-zero when anything failed.
#
# The tools come from scripts/services.sh (the test command runs it first): kubectl, pinned, in
# target/tools/kubectl, and kubernetes-validate from PyPI.
#
# Environment: K8S_DIR (default: k8s/ of this repository), KUBECTL (default: the pinned
# target/tools/kubectl; any kubectl with kustomize v5 works), KUBE_VERSIONS (Kubernetes schema
# versions to validate against, default "1.29.0 1.37.0").

set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
K8S_DIR="${K8S_DIR:-$ROOT/k8s}"
KUBECTL="${KUBECTL:-$ROOT/target/tools/kubectl}"

missing=()
[[ -x "$KUBECTL" ]] || missing+=("kubectl ($KUBECTL)")
python3 -c 'import kubernetes_validate, yaml' 2>/dev/null || missing+=("kubernetes-validate")
if (( ${#missing[@]} )); then
    echo "FAIL  missing ${missing[*]}: run scripts/services.sh, which installs them"
    echo "k8s: 0 passed, 1 failed"
    exit 1
fi

exec python3 - "$K8S_DIR" "$KUBECTL" <<'PYTHON'
import os
import re
import shutil
import subprocess
import sys
import tempfile

import yaml

K8S = os.path.abspath(sys.argv[1])
KUBECTL = sys.argv[2]
REPO = os.path.dirname(K8S)
VERSIONS = os.environ.get("KUBE_VERSIONS", "1.29.0 1.37.0").split()
counts = {"passed": 0, "failed": 0, "skipped": 0}


def rel(path):
    return os.path.relpath(path, REPO)


def report(ok, what, detail=""):
    counts["passed" if ok else "failed"] += 1
    print(f"{'PASS' if ok else 'FAIL'}  {what}" + (f"\n      {detail}" if detail else ""))


def skip(what, why):
    counts["skipped"] += 1
    print(f"SKIP  {what}: {why}")


def load_docs(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


# --------------------------------------------------------------------------------------------
# kubernetes-validate


def kubernetes_validate(path, label):
    """One result per resource and Kubernetes version in a (multi-document) file."""
    expected = len(load_docs(path)) * len(VERSIONS)
    cmd = [sys.executable, "-m", "kubernetes_validate", "--strict"]
    for version in VERSIONS:
        cmd += ["-k", version]
    run = subprocess.run(cmd + [path], capture_output=True, text=True, stdin=subprocess.DEVNULL)
    seen = errors = 0
    for line in (run.stdout + run.stderr).splitlines():
        ok = re.match(r"INFO .* passed for resource (\S+) against version (\S+)", line)
        if ok:
            report(True, f"{label}: {ok[1]} (kubernetes {ok[2]})")
            seen += 1
        elif line.startswith(("ERROR", "WARN", "FATAL")):
            # WARN means no schema was found (unknown kind or apiVersion): nothing was checked.
            report(False, f"{label}: kubernetes-validate", line.replace(path, label))
            seen += 1
            errors += 1
    if seen != expected or (run.returncode != 0 and errors == 0):
        tail = " | ".join((run.stdout + run.stderr).strip().splitlines()[-3:])
        report(False, f"{label}: kubernetes-validate",
               f"exit {run.returncode}, {seen} results for {expected} expected: {tail}")


# --------------------------------------------------------------------------------------------
# Drain invariants: values in different files that must agree.


def duration_seconds(text):
    match = re.fullmatch(r"(\d+)(us|ms|s|m|h|d)?", text)
    if not match:
        raise ValueError(f"not a duration: {text}")
    scale = {"us": 1e-6, "ms": 1e-3, None: 1e-3, "s": 1, "m": 60, "h": 3600, "d": 86400}
    return int(match[1]) * scale[match[2]]


def node_duration_seconds(text):
    """A switchboard duration (`300s`, `5m`, `1h 30m`, `500ms`, `0`): always with its unit."""
    if text.strip() == "0":
        return 0
    scale = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}
    parts = re.findall(r"(\d+)\s*([a-z]+)", text)
    if not parts or re.sub(r"(\d+)\s*([a-z]+)", "", text).strip() or any(u not in scale for _, u in parts):
        raise ValueError(f"not a switchboard duration (with its unit, e.g. 300s): {text!r}")
    return sum(int(n) * scale[u] for n, u in parts)


def haproxy_sections(text):
    sections, current = [], None
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].rstrip()
        if not line.strip():
            continue
        words = line.split()
        if not raw[0].isspace():
            current = (words[0], words[1] if len(words) > 1 else "", [])
            sections.append(current)
        elif current is not None:
            current[2].append(words)
    return sections


def pod_env(docs, container):
    env = {}
    configmaps = {d["metadata"]["name"]: d.get("data", {}) for d in docs if d["kind"] == "ConfigMap"}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(configmaps.get(source["configMapRef"]["name"], {}))
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
    return env


def prestop_seconds(container):
    pre = container.get("lifecycle", {}).get("preStop", {})
    if "sleep" in pre:
        return int(pre["sleep"]["seconds"])
    command = pre.get("exec", {}).get("command", [])
    if len(command) == 2 and os.path.basename(command[0]) == "sleep":
        return int(command[1])
    return 0


def port_number(container, port):
    for p in container.get("ports", []):
        if port in (p.get("name"), p.get("containerPort")):
            return p["containerPort"]
    return port


def drain_checks(label, docs):
    def find(kind, name):
        return next((d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name), None)

    node = find("Deployment", "switchboard")
    if node is None:
        report(False, f"{label}: Deployment switchboard present")
        return
    pod = node["spec"]["template"]["spec"]
    container = next(c for c in pod["containers"] if c["name"] == "switchboard")
    env = pod_env(docs, container)
    drain_timeout = node_duration_seconds(env.get("SWITCHBOARD_DRAIN_TIMEOUT", "300s"))
    prestop = prestop_seconds(container)
    grace = pod.get("terminationGracePeriodSeconds", 30)
    report(prestop > 0, f"{label}: switchboard has a preStop sleep ({prestop} s)")
    report(grace > prestop + drain_timeout,
           f"{label}: switchboard terminationGracePeriodSeconds {grace} > preStop {prestop} "
           f"+ SWITCHBOARD_DRAIN_TIMEOUT {drain_timeout}")
    rolling = node["spec"].get("strategy", {}).get("rollingUpdate", {})
    report(node["spec"].get("strategy", {}).get("type") == "RollingUpdate"
           and rolling.get("maxUnavailable") == 0,
           f"{label}: switchboard rolls with maxUnavailable 0 (maxSurge {rolling.get('maxSurge')})")

    admin_listen = env.get("SWITCHBOARD_ADMIN_LISTEN", "127.0.0.1:9000")
    admin_port = int(admin_listen.rsplit(":", 1)[1])
    report(not admin_listen.startswith(("127.", "localhost", "[::1]")),
           f"{label}: SWITCHBOARD_ADMIN_LISTEN {admin_listen} is reachable by probes and Prometheus")
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        get = container.get(probe, {}).get("httpGet", {})
        port = port_number(container, get.get("port"))
        report(get.get("path") == path and port == admin_port,
               f"{label}: switchboard {probe} GET {get.get('path')} on port {port} "
               f"(want {path} on the admin port {admin_port})")
    annotations = node["spec"]["template"]["metadata"].get("annotations", {})
    report(annotations.get("prometheus.io/scrape") == "true"
           and annotations.get("prometheus.io/port") == str(admin_port),
           f"{label}: switchboard pods carry Prometheus scrape annotations for port {admin_port}")

    labels = node["spec"]["template"]["metadata"]["labels"]
    pdbs = [d for d in docs if d["kind"] == "PodDisruptionBudget"
            and d["spec"]["selector"].get("matchLabels", {}).items() <= labels.items()]
    report(len(pdbs) == 1, f"{label}: one PodDisruptionBudget covers the switchboard pods")
    hpa = next((d for d in docs if d["kind"] == "HorizontalPodAutoscaler"
                and d["spec"]["scaleTargetRef"]["name"] == "switchboard"), None)
    report(hpa is not None and "replicas" not in node["spec"],
           f"{label}: an HPA scales switchboard and the Deployment sets no replicas")
    max_replicas = hpa["spec"]["maxReplicas"] if hpa else 1

    proxy = find("Deployment", "haproxy")
    if proxy is None:
        return
    proxy_pod = proxy["spec"]["template"]["spec"]
    proxy_container = proxy_pod["containers"][0]
    config_name = next(v["configMap"]["name"] for v in proxy_pod.get("volumes", [])
                       if "configMap" in v)
    cfg = find("ConfigMap", config_name)["data"]["haproxy.cfg"]

    if shutil.which("haproxy"):
        with tempfile.NamedTemporaryFile("w", suffix=".cfg") as f:
            f.write(cfg)
            f.flush()
            run = subprocess.run(["haproxy", "-c", "-f", f.name], capture_output=True, text=True)
        output = (run.stdout + run.stderr).strip()
        report(run.returncode == 0 and "WARNING" not in output,
               f"{label}: haproxy -c accepts ConfigMap {config_name} without warnings",
               "" if run.returncode == 0 and "WARNING" not in output else output)
    else:
        skip(f"{label}: haproxy -c on ConfigMap {config_name}", "haproxy is not installed")

    sections = haproxy_sections(cfg)
    settings = [(kind, name, words) for kind, name, lines in sections for words in lines]
    tunnel = [duration_seconds(w[2]) for _, _, w in settings if w[:2] == ["timeout", "tunnel"]]
    report(bool(tunnel) and min(tunnel) > drain_timeout,
           f"{label}: HAProxy timeout tunnel {tunnel} s > SWITCHBOARD_DRAIN_TIMEOUT {drain_timeout} s")
    maxconns = {f"{kind} {name}".strip(): int(w[1]) for kind, name, w in settings
                if w[0] == "maxconn" and kind in ("global", "frontend")}
    report(maxconns.get("global", 10**9) <= 9000 and all(v <= 9000 for v in maxconns.values())
           and all(f"frontend {n}" in maxconns for k, n, _ in sections if k == "frontend"),
           f"{label}: HAProxy maxconn <= 9000 in global and every frontend {maxconns}")
    backend = next(l for k, _, l in sections if k == "backend")
    template = next((w for w in backend if w[0] == "server-template"), None)
    if template is None:
        report(False, f"{label}: HAProxy backend discovers the nodes with server-template")
        return
    low, _, high = template[2].partition("-")
    slots = int(high) - int(low) + 1 if high else int(low)
    surge = int(str(rolling.get("maxSurge", 1)).rstrip("%"))
    report(slots >= 2 * max_replicas + surge,
           f"{label}: HAProxy server-template slots {slots} >= 2 x HPA maxReplicas "
           f"{max_replicas} + maxSurge {surge} (running + draining pods)")
    words = template
    check_port = int(words[words.index("port") + 1]) if "port" in words else None
    agent_port = int(words[words.index("agent-port") + 1]) if "agent-port" in words else None
    agent_listen = env.get("SWITCHBOARD_AGENT_LISTEN", "")
    report(check_port == admin_port and agent_listen.endswith(f":{agent_port}"),
           f"{label}: HAProxy checks port {check_port} and agent-port {agent_port} match "
           f"the node's admin {admin_listen} and agent {agent_listen or '(off)'} listeners")
    fqdn = template[3].rsplit(":", 1)[0]
    service, _, rest = fqdn.partition(".")
    namespace = rest.split(".")[0]
    headless = find("Service", service)
    report(headless is not None and headless["metadata"].get("namespace") == namespace
           and headless["spec"].get("clusterIP") == "None"
           and headless["spec"].get("publishNotReadyAddresses") is True,
           f"{label}: {fqdn} is a headless Service in namespace {namespace} that publishes "
           "starting and draining pods")
    proxy_prestop = prestop_seconds(proxy_container)
    hard_stop = [duration_seconds(w[1]) for k, _, w in settings
                 if k == "global" and w[0] == "hard-stop-after"]
    proxy_grace = proxy_pod.get("terminationGracePeriodSeconds", 30)
    report(bool(hard_stop) and proxy_grace > proxy_prestop + hard_stop[0],
           f"{label}: haproxy terminationGracePeriodSeconds {proxy_grace} > preStop "
           f"{proxy_prestop} + hard-stop-after {hard_stop[0] if hard_stop else '(unset)'}")


# --------------------------------------------------------------------------------------------


def kustomization_file(directory):
    for name in ("kustomization.yaml", "kustomization.yml", "Kustomization"):
        if os.path.isfile(os.path.join(directory, name)):
            return os.path.join(directory, name)
    return None


def main():
    kustomizations = []
    for directory, dirs, _ in os.walk(K8S):
        dirs.sort()
        if kustomization_file(directory):
            kustomizations.append(directory)
    if not kustomizations:
        report(False, f"kustomizations under {rel(K8S)}", "none found")

    # Every YAML file must be reached from a kustomization, or nothing above would check it.
    referenced = set()
    for directory in kustomizations:
        referenced.add(kustomization_file(directory))
        with open(kustomization_file(directory)) as f:
            kustomization = yaml.safe_load(f) or {}
        entries = list(kustomization.get("resources", []))
        entries += [p["path"] for p in kustomization.get("patches", []) if "path" in p]
        for spec in kustomization.get("configMapGenerator", []):
            entries += spec.get("envs", []) + [e.rpartition("=")[2] for e in spec.get("files", [])]
        referenced.update(os.path.normpath(os.path.join(directory, e)) for e in entries)
    for directory, _, files in os.walk(K8S):
        for name in sorted(files):
            path = os.path.join(directory, name)
            if name.endswith((".yaml", ".yml")) and path not in referenced:
                report(False, f"{rel(path)} is used by a kustomization",
                       "not listed in any kustomization's resources or patches, so never checked")

    tmp = tempfile.mkdtemp(prefix="validate-k8s-")
    try:
        for directory in kustomizations:
            label = rel(directory)
            with open(kustomization_file(directory)) as f:
                kustomization = yaml.safe_load(f) or {}
            # 1. raw manifests
            for entry in kustomization.get("resources", []):
                target = os.path.normpath(os.path.join(directory, entry))
                if os.path.isfile(target):
                    kubernetes_validate(target, rel(target))
            # 2. render
            run = subprocess.run([KUBECTL, "kustomize", directory], capture_output=True,
                                 text=True, stdin=subprocess.DEVNULL, timeout=300)
            if run.returncode != 0:
                report(False, f"{label}: kubectl kustomize", run.stderr.strip())
                continue
            rendered = [d for d in yaml.safe_load_all(run.stdout) if d]
            report(not run.stderr.strip(), f"{label}: kubectl kustomize ({len(rendered)} resources)",
                   run.stderr.strip())
            # 3. rendered resources
            out = os.path.join(tmp, label.replace("/", "_") + ".yaml")
            with open(out, "w") as f:
                f.write(run.stdout)
            kubernetes_validate(out, f"{label} (rendered)")
            # 4. drain invariants
            try:
                drain_checks(f"{label} (rendered)", rendered)
            except (KeyError, ValueError, StopIteration, TypeError, IndexError) as e:
                report(False, f"{label} (rendered): drain invariants", f"{type(e).__name__}: {e}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    line = f"k8s: {counts['passed']} passed, {counts['failed']} failed"
    if counts["skipped"]:
        line += f", {counts['skipped']} skipped"
    print(line)
    return 1 if counts["failed"] else 0


sys.exit(main())
PYTHON
