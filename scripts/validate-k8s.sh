#!/usr/bin/env bash
# Validate the Kubernetes manifests under k8s/ offline, with no cluster and no network.
#
# Every YAML file under k8s/ must be reached from a kustomization (as a resource, a patch or the
# kustomization itself). Then, for every kustomization (k8s/base, k8s/overlays/*):
#   1. raw:      each manifest listed in its "resources" is checked by `kubernetes-validate
#                --strict` (unknown fields are errors; an unknown kind/apiVersion, which
#                kubernetes-validate only warns about, counts as a failure here). Patches are
#                partial objects; they are checked as part of the rendered output;
#   2. render:   the kustomization is built, by `kustomize build` / `kubectl kustomize` when one
#                is installed, and always by the small built-in renderer below, which handles
#                exactly the features k8s/ uses (resources, namespace, configMapGenerator with
#                kustomize's name hash, images, strategic-merge patches). When both ran, their
#                outputs must be identical;
#   3. rendered: every rendered resource is checked by `kubernetes-validate --strict`;
#   4. drain:    the values that must agree across files for a graceful drain do (grace period
#                vs preStop + drain timeout, probes on the admin port, HAProxy's timeouts, slots
#                and ports), and the HAProxy configuration passes `haproxy -c` when haproxy is
#                installed.
# Each check prints PASS or FAIL; the last line is "k8s: N passed, M failed" and the exit status
# is non-zero when anything failed.
#
# Environment: K8S_DIR (default: k8s/ of this repository), KUBE_VERSIONS (Kubernetes schema
# versions to validate against, default "1.29.0 1.37.0"), KUSTOMIZE=none to use only the
# built-in renderer.

set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
K8S_DIR="${K8S_DIR:-$ROOT/k8s}"
KUBERNETES_VALIDATE_VERSION="1.37.0"

if ! python3 -c 'import kubernetes_validate, yaml' 2>/dev/null; then
    echo "installing kubernetes-validate==$KUBERNETES_VALIDATE_VERSION from PyPI" >&2
    if ! python3 -m pip install --quiet --disable-pip-version-check \
        "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" >&2; then
        echo "FAIL  cannot install kubernetes-validate"
        echo "k8s: 0 passed, 1 failed"
        exit 1
    fi
fi

exec python3 - "$K8S_DIR" <<'PYTHON'
import copy
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

import yaml

K8S = os.path.abspath(sys.argv[1])
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
# The built-in renderer: exactly the kustomize features k8s/ uses, and an error for any other.

SUPPORTED = {"apiVersion", "kind", "resources", "namespace", "configMapGenerator",
             "generatorOptions", "images", "patches"}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition",
                  "PersistentVolume", "StorageClass", "PriorityClass", "IngressClass",
                  "ValidatingWebhookConfiguration", "MutatingWebhookConfiguration"}
# kustomize's default output order ("legacy" ordering), so the rendered file reads the same.
ORDER = ["Namespace", "ResourceQuota", "StorageClass", "CustomResourceDefinition",
         "ServiceAccount", "PodSecurityPolicy", "Role", "ClusterRole", "RoleBinding",
         "ClusterRoleBinding", "ConfigMap", "Secret", "Endpoints", "Service", "LimitRange",
         "PriorityClass", "PersistentVolume", "PersistentVolumeClaim", "Deployment",
         "StatefulSet", "CronJob", "PodDisruptionBudget"]
ORDER_LAST = ["MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"]


class RenderError(Exception):
    pass


def kustomization_file(directory):
    for name in ("kustomization.yaml", "kustomization.yml", "Kustomization"):
        if os.path.isfile(os.path.join(directory, name)):
            return os.path.join(directory, name)
    return None


def go_json(value):
    """The bytes Go's json.Marshal gives for a map of strings: sorted keys, HTML escaping."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    for char, escaped in (("&", "\\u0026"), ("<", "\\u003c"), (">", "\\u003e"),
                          ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(char, escaped)
    return text.encode()


def name_hash(configmap):
    """kustomize's content hash suffix of a ConfigMap (api/hasher). kustomize v5 hashes the
    generated object before it has a name, hence the empty "name"; the cross-check against a
    real kustomize below catches any drift."""
    encoded = go_json({"kind": "ConfigMap", "name": "", "data": configmap.get("data", {})})
    digest = hashlib.sha256(encoded).hexdigest()[:10]
    return digest.translate(str.maketrans("013ae", "ghkmt"))


def env_file_pairs(path):
    pairs = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f.read().splitlines(), 1):
            line = line.lstrip()
            if not line or line.startswith("#"):
                continue
            if "=" not in line:
                raise RenderError(f"{rel(path)}:{number}: a value taken from the environment "
                                  "is not reproducible")
            key, value = line.split("=", 1)
            if not re.fullmatch(r"[-._a-zA-Z][-._a-zA-Z0-9]*", key):
                raise RenderError(f"{rel(path)}:{number}: invalid variable name {key!r}")
            pairs.append((key, value))
    return pairs


def generate_configmap(directory, spec, options):
    unknown = set(spec) - {"name", "envs", "files", "literals"}
    if unknown:
        raise RenderError(f"configMapGenerator {spec.get('name')}: unsupported {sorted(unknown)}")
    data = {}
    for env in spec.get("envs", []):
        data.update(env_file_pairs(os.path.join(directory, env)))
    for entry in spec.get("files", []):
        key, _, path = entry.rpartition("=")
        path = os.path.join(directory, path)
        with open(path, encoding="utf-8") as f:
            data[key or os.path.basename(path)] = f.read()
    for literal in spec.get("literals", []):
        key, _, value = literal.partition("=")
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        data[key] = value
    configmap = {"apiVersion": "v1", "kind": "ConfigMap",
                 "metadata": {"name": spec["name"]}, "data": data}
    if not options.get("disableNameSuffixHash"):
        configmap["metadata"]["name"] += "-" + name_hash(configmap)
    return configmap


def list_merge_key(key, items):
    if not all(isinstance(item, dict) for item in items):
        return None
    if key == "ports":
        return "containerPort" if any("containerPort" in i for i in items) else "port"
    if key == "volumeMounts":
        return "mountPath"
    if key in ("containers", "initContainers", "volumes", "env", "imagePullSecrets"):
        return "name"
    return None


def strategic_merge(base, patch, key=None):
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = dict(base)
        for k, v in patch.items():
            if isinstance(k, str) and k.startswith("$"):
                raise RenderError(f"patch directive {k} is not supported")
            if v is None:
                merged.pop(k, None)
            elif k in merged:
                merged[k] = strategic_merge(merged[k], v, k)
            else:
                merged[k] = copy.deepcopy(v)
        return merged
    if isinstance(base, list) and isinstance(patch, list):
        merge_key = list_merge_key(key, base + patch)
        if merge_key:
            merged = [copy.deepcopy(item) for item in base]
            for item in patch:
                index = next((i for i, b in enumerate(merged)
                              if b.get(merge_key) == item.get(merge_key)), None)
                if index is None:
                    merged.append(copy.deepcopy(item))
                else:
                    merged[index] = strategic_merge(merged[index], item)
            return merged
    return copy.deepcopy(patch)


def walk(node, visit):
    if isinstance(node, dict):
        visit(node)
        for value in node.values():
            walk(value, visit)
    elif isinstance(node, list):
        for value in node:
            walk(value, visit)


def set_image(container, rule):
    image = container["image"]
    if "@" in image:
        name, digest, tag = image.split("@", 1)[0], image.split("@", 1)[1], None
    else:
        slash = image.rfind("/")
        colon = image.rfind(":")
        name, tag, digest = (image[:colon], image[colon + 1:], None) if colon > slash else (image, None, None)
    if name != rule["name"]:
        return
    name = rule.get("newName", name)
    if "digest" in rule:
        container["image"] = f"{name}@{rule['digest']}"
    elif "newTag" in rule:
        container["image"] = f"{name}:{rule['newTag']}"
    elif digest:
        container["image"] = f"{name}@{digest}"
    else:
        container["image"] = f"{name}:{tag}" if tag else name


def render(directory):
    path = kustomization_file(directory)
    if path is None:
        raise RenderError(f"{rel(directory)} has no kustomization.yaml")
    with open(path) as f:
        kustomization = yaml.safe_load(f) or {}
    unsupported = set(kustomization) - SUPPORTED
    if unsupported:
        raise RenderError(f"{rel(path)}: unsupported by the built-in renderer: {sorted(unsupported)}")
    resources = []
    for entry in kustomization.get("resources", []):
        target = os.path.normpath(os.path.join(directory, entry))
        resources += render(target) if os.path.isdir(target) else load_docs(target)

    options = kustomization.get("generatorOptions", {})
    if set(options) - {"disableNameSuffixHash"}:
        raise RenderError(f"{rel(path)}: unsupported generatorOptions {sorted(options)}")
    renamed = {}
    for spec in kustomization.get("configMapGenerator", []):
        configmap = generate_configmap(directory, spec, options)
        renamed[spec["name"]] = configmap["metadata"]["name"]
        resources.append(configmap)

    for entry in kustomization.get("patches", []):
        if set(entry) - {"path", "patch"}:
            raise RenderError(f"{rel(path)}: patches with {sorted(set(entry) - {'path', 'patch'})}"
                              " are not supported")
        if "path" in entry:
            with open(os.path.join(directory, entry["path"])) as f:
                patch = yaml.safe_load(f)
        else:
            patch = yaml.safe_load(entry["patch"])
        meta = patch.get("metadata", {})
        matches = [i for i, r in enumerate(resources)
                   if r["kind"] == patch.get("kind") and r["metadata"]["name"] == meta.get("name")
                   and meta.get("namespace") in (None, r["metadata"].get("namespace"))]
        if len(matches) != 1:
            raise RenderError(f"{rel(path)}: patch {entry.get('path', '(inline)')} matches "
                              f"{len(matches)} resources")
        resources[matches[0]] = strategic_merge(resources[matches[0]], patch)

    if "namespace" in kustomization:
        for resource in resources:
            if resource["kind"] not in CLUSTER_SCOPED:
                resource["metadata"]["namespace"] = kustomization["namespace"]

    for rule in kustomization.get("images", []):
        def visit(node, rule=rule):
            for key in ("containers", "initContainers"):
                for container in node.get(key) or []:
                    if isinstance(container, dict) and "image" in container:
                        set_image(container, rule)
        for resource in resources:
            walk(resource, visit)

    def rename(node):
        for key in ("configMap", "configMapRef", "configMapKeyRef"):
            ref = node.get(key)
            if isinstance(ref, dict) and ref.get("name") in renamed:
                ref["name"] = renamed[ref["name"]]
    for resource in resources:
        if resource["kind"] != "ConfigMap":
            walk(resource, rename)

    def order(resource):
        kind = resource["kind"]
        rank = ORDER.index(kind) if kind in ORDER else len(ORDER) + (
            1 + ORDER_LAST.index(kind) if kind in ORDER_LAST else 0)
        return (rank, kind, resource["metadata"].get("namespace", ""), resource["metadata"]["name"])
    return sorted(resources, key=order)


def kustomize_command():
    choice = os.environ.get("KUSTOMIZE", "")
    if choice == "none":
        return None
    if choice:
        return choice.split()
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    return None


def identity(resource):
    meta = resource["metadata"]
    return (resource["kind"], meta.get("namespace", ""), meta["name"])


def differences(left, right, path=""):
    if isinstance(left, dict) and isinstance(right, dict):
        for key in sorted(set(left) | set(right), key=str):
            if key not in left or key not in right:
                yield f"{path}.{key}: only in {'kustomize' if key in right else 'built-in'}"
            else:
                yield from differences(left[key], right[key], f"{path}.{key}")
    elif isinstance(left, list) and isinstance(right, list) and len(left) == len(right):
        for i, (a, b) in enumerate(zip(left, right)):
            yield from differences(a, b, f"{path}[{i}]")
    elif left != right:
        yield f"{path}: built-in {json.dumps(left)[:80]} != kustomize {json.dumps(right)[:80]}"


# --------------------------------------------------------------------------------------------
# Drain invariants: values in different files that must agree.


def duration_seconds(text):
    match = re.fullmatch(r"(\d+)(us|ms|s|m|h|d)?", text)
    if not match:
        raise ValueError(f"not a duration: {text}")
    scale = {"us": 1e-6, "ms": 1e-3, None: 1e-3, "s": 1, "m": 60, "h": 3600, "d": 86400}
    return int(match[1]) * scale[match[2]]


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
    drain_timeout = int(env.get("SWITCHBOARD_DRAIN_TIMEOUT", 300))
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

    kustomize = kustomize_command()
    if kustomize is None:
        print("note: rendering with the built-in renderer only (KUSTOMIZE=none, or no kustomize/kubectl)")
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
            try:
                builtin = render(directory)
                report(True, f"{label}: built-in render ({len(builtin)} resources)")
            except (RenderError, OSError, KeyError, yaml.YAMLError) as e:
                report(False, f"{label}: built-in render", str(e))
                builtin = None
            rendered = builtin
            if kustomize:
                run = subprocess.run(kustomize + [directory], capture_output=True, text=True,
                                     stdin=subprocess.DEVNULL, timeout=300)
                if run.returncode != 0:
                    report(False, f"{label}: {' '.join(kustomize)}", run.stderr.strip())
                    continue
                rendered = [d for d in yaml.safe_load_all(run.stdout) if d]
                report(True, f"{label}: {' '.join(kustomize)} ({len(rendered)} resources)")
                if builtin is not None:
                    ours = {identity(d): d for d in builtin}
                    theirs = {identity(d): d for d in rendered}
                    diff = [f"{'/'.join(k)}: only in {'built-in' if k in ours else 'kustomize'}"
                            for k in sorted(set(ours) ^ set(theirs))]
                    for key in sorted(set(ours) & set(theirs)):
                        diff += [f"{'/'.join(key)}{d}" for d in differences(ours[key], theirs[key])]
                    report(not diff, f"{label}: built-in render == kustomize output",
                           "\n      ".join(diff[:10]))
            if rendered is None:
                continue
            # 3. rendered resources
            out = os.path.join(tmp, label.replace("/", "_") + ".yaml")
            with open(out, "w") as f:
                yaml.safe_dump_all(rendered, f, sort_keys=False)
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
