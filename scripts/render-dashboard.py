#!/usr/bin/env python3
"""Renders the key panels of grafana/dashboards/switchboard.json to one PNG, from a Prometheus.

Two ways to run it:

  render   Query an existing Prometheus that scrapes Switchboard nodes (job "switchboard"):
             scripts/render-dashboard.py render --prometheus http://127.0.0.1:9090 \\
                 --since 15m --out docs/dashboard.png

  demo     Start a small fleet, generate traffic and render what it did (this is how
           docs/dashboard.png is made):
             scripts/render-dashboard.py demo --seconds 80 --out docs/dashboard.png
           It starts two nodes of target/debug/switchboard (MariaDB at 127.0.0.1:3306 and
           Redis at 127.0.0.1:6379, as scripts/services.sh provides), a Prometheus scraping
           their admin listeners every second with prometheus/rules loaded, and a traffic
           generator: users on both nodes writing to each other at a varying rate, heartbeats,
           session churn, 4xx requests, refused upgrades, protocol errors, an oversized frame
           and a heartbeat timeout. Around 55 % of the run node 2 is drained (POST
           /admin/drain, closing one session a second), its clients reconnect to node 1, and
           node 2 is started again once it has exited, as in a rolling deploy.

The panels are found by title in the dashboard JSON and their queries run as written there,
with $node -> .* and $__rate_interval -> --rate-interval, so the picture shows exactly what
Grafana would. Needs python3 with matplotlib (and websocket-client for demo):
  pip install matplotlib websocket-client
"""

import argparse
import datetime as dt
import json
import math
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DASHBOARD = os.path.join(ROOT, "grafana", "dashboards", "switchboard.json")
RULES = os.path.join(ROOT, "prometheus", "rules", "switchboard.yml")

# The panels drawn, in grid order (titles as in the dashboard JSON).
PANELS = [
    "Connections per node",
    "Connects and disconnects /s by reason",
    "Lifecycle phase over time",
    "Messages sent and delivered /s",
    "Delivery latency (accept to socket write)",
    "HTTP requests /s by route and status",
    "Backplane messages received /s and reconnects",
    "Store query latency p99 by op",
    "Drain sessions remaining",
]
# Most series drawn in one panel; the rest are summed into "other".
MAX_SERIES = 8
PHASES = {0: "Starting", 1: "Ready", 2: "Draining", 3: "Stopped"}


# ---------------------------------------------------------------------------------------
# Prometheus queries and rendering


def http_get_json(url, timeout=10):
    with urllib.request.urlopen(url, timeout=timeout) as res:
        return json.load(res)


def prom(base, path, **params):
    body = http_get_json(base.rstrip("/") + path + "?" + urllib.parse.urlencode(params))
    if body.get("status") != "success":
        raise RuntimeError(f"{path} {params}: {body}")
    return body["data"]


def dashboard_panels():
    with open(DASHBOARD) as f:
        d = json.load(f)
    out = {}

    def walk(panels):
        for p in panels:
            # A title used twice (a stat and a graph): the graph wins.
            if p.get("title") not in out or p.get("type") == "timeseries":
                out[p.get("title")] = p
            walk(p.get("panels", []))

    walk(d["panels"])
    return out


def node_names(base):
    """instance -> node id, from switchboard_build_info{node}."""
    names = {}
    try:
        for s in prom(base, "/api/v1/query", query="max_over_time(switchboard_build_info[1h])")["result"]:
            names[s["metric"].get("instance")] = s["metric"].get("node")
    except Exception:  # older data or no build_info: keep instances as they are
        pass
    return names


def legend(fmt, labels, names):
    def sub(m):
        key = m.group(1).strip()
        value = labels.get(key, "")
        if key == "instance":
            value = names.get(value, value)
        return value

    text = re.sub(r"\{\{\s*([^}]+?)\s*\}\}", sub, fmt or "").strip()
    return text or ",".join(f"{k}={v}" for k, v in sorted(labels.items())) or "value"


def fetch_panel(base, panel, start, end, step, rate_interval, names):
    """[(legend, [timestamps], [values])] for every series of every target of a panel."""
    series = []
    for t in panel.get("targets", []):
        expr = t["expr"].replace("$__rate_interval", rate_interval).replace("$node", ".*")
        data = prom(base, "/api/v1/query_range", query=expr, start=start, end=end, step=step)
        for s in data["result"]:
            ts = [float(v[0]) for v in s["values"]]
            vs = [float(v[1]) for v in s["values"]]
            series.append((legend(t.get("legendFormat"), s["metric"], names), ts, vs))
    return series


def top_series(series):
    """At most MAX_SERIES series: the largest by mean, the rest summed into "other"."""
    if len(series) <= MAX_SERIES:
        return series

    def weight(s):
        finite = [v for v in s[2] if math.isfinite(v)]
        return sum(finite) / len(finite) if finite else 0.0

    ranked = sorted(series, key=weight, reverse=True)
    keep, rest = ranked[: MAX_SERIES - 1], ranked[MAX_SERIES - 1 :]
    grid = {}
    for _, ts, vs in rest:
        for t, v in zip(ts, vs):
            if math.isfinite(v):
                grid[t] = grid.get(t, 0.0) + v
    ts = sorted(grid)
    keep.append((f"other ({len(rest)} series)", ts, [grid[t] for t in ts]))
    return keep


def break_gaps(ts, vs, step):
    """Inserts a NaN where samples are missing (a node down, a series not yet born), so the
    line breaks instead of bridging the gap."""
    out_t, out_v = [], []
    for t, v in zip(ts, vs):
        if out_t and t - out_t[-1] > 2.5 * step:
            out_t.append(out_t[-1] + step)
            out_v.append(float("nan"))
        out_t.append(t)
        out_v.append(v)
    return out_t, out_v


def render(base, out, start, end, step, rate_interval, title, panels=PANELS):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.dates as mdates
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FuncFormatter
    except ImportError:
        sys.exit("matplotlib is missing: pip install matplotlib")

    defs = dashboard_panels()
    missing = [p for p in panels if p not in defs]
    if missing:
        sys.exit(f"panels not in {DASHBOARD}: {missing}")
    names = node_names(base)
    step_seconds = parse_duration(step)
    cols = 3
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6.2 * cols, 3.9 * rows), squeeze=False)
    fig.suptitle(title, fontsize=15, fontweight="bold", x=0.01, ha="left")
    for ax, name in zip(axes.flat, panels):
        panel = defs[name]
        unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit", "")
        series = top_series(fetch_panel(base, panel, start, end, step, rate_interval, names))
        ax.set_title(name, fontsize=11, loc="left")
        for label, ts, vs in sorted(series, key=lambda s: s[0]):
            ts, vs = break_gaps(ts, vs, step_seconds)
            times = [dt.datetime.fromtimestamp(t) for t in ts]
            if "Lifecycle" in name:
                ax.step(times, vs, where="post", label=label, linewidth=1.8)
            else:
                ax.plot(times, vs, label=label, linewidth=1.4)
        if not series:
            ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center", color="grey")
        ax.set_xlim(dt.datetime.fromtimestamp(start), dt.datetime.fromtimestamp(end))
        ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S"))
        ax.tick_params(labelsize=8)
        ax.grid(True, alpha=0.3)
        if "Lifecycle" in name:
            ax.set_ylim(-0.3, 3.3)
            ax.set_yticks(list(PHASES))
            ax.set_yticklabels(PHASES.values())
        elif unit == "s" or "latency" in name.lower():
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v * 1000:g} ms" if v < 1 else f"{v:g} s"))
            ax.set_ylim(bottom=0)
        elif unit == "bytes":
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v / 2**20:.0f} MiB"))
        else:
            ax.set_ylim(bottom=0)
        if series:
            ax.legend(fontsize=7, loc="upper left", ncol=2 if len(series) > 4 else 1, framealpha=0.8)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=100)
    print(f"wrote {out}")


def parse_duration(text):
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([smh]?)", text)
    if not m:
        raise argparse.ArgumentTypeError(f"bad duration {text!r} (e.g. 90s, 15m, 1h)")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[m.group(2)]


def human(seconds):
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


# ---------------------------------------------------------------------------------------
# demo: a two-node fleet, Prometheus and a traffic generator


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url, seconds=30, proc=None):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process for {url} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as res:
                if res.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} never answered 200")


class Node:
    def __init__(self, name, binary, env, logdir):
        self.name, self.binary, self.env, self.logdir = name, binary, env, logdir
        self.port, self.admin = free_port(), free_port()
        self.proc = None
        # Set by Traffic's health checker (every second, like a load balancer's check).
        self.is_ready = True

    @property
    def base(self):
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin_base(self):
        return f"http://127.0.0.1:{self.admin}"

    def start(self):
        log = open(os.path.join(self.logdir, f"{self.name}.log"), "a")
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--listen", f"127.0.0.1:{self.port}",
                "--admin-listen", f"127.0.0.1:{self.admin}",
                "--node-id", self.name,
                # Close one session a second while draining, so the drain is visible.
                "--drain-close-rate", "1",
                "--drain-timeout", "60",
            ],
            env=self.env, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
        )
        wait_http(self.admin_base + "/readyz", proc=self.proc)

    def ready(self):
        return self.is_ready

    def check(self):
        try:
            with urllib.request.urlopen(self.admin_base + "/readyz", timeout=1) as res:
                return res.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def post(base, path, **fields):
    """(status, JSON body) of a form POST; 4xx/5xx come back as status, not exceptions."""
    data = urllib.parse.urlencode(fields).encode()
    req = urllib.request.Request(base + path, data=data, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as res:
            return res.status, json.load(res)
    except urllib.error.HTTPError as e:
        return e.code, None


def get_status(url):
    try:
        with urllib.request.urlopen(url, timeout=10) as res:
            return res.status
    except urllib.error.HTTPError as e:
        return e.code


class Traffic:
    """Users on both nodes chatting over WebSockets and REST, with misbehaviour on the side."""

    def __init__(self, nodes, seconds, pairs, drain_at):
        import websocket  # websocket-client

        self.ws_mod = websocket
        self.nodes, self.seconds, self.pairs, self.drain_at = nodes, seconds, pairs, drain_at
        self.stop = threading.Event()
        self.t0 = time.time()
        self.lock = threading.Lock()
        self.counts = {"sent": 0, "received": 0, "reconnects": 0, "errors": 0}
        self.home = {}  # user -> node index the session is on
        self.threads = []
        self.end = None

    def health(self):
        while not self.stop.is_set():
            for n in self.nodes:
                n.is_ready = n.check()
            self.stop.wait(1.0)

    def count(self, key, n=1):
        with self.lock:
            self.counts[key] += n

    def elapsed(self):
        return time.time() - self.t0

    def ready_node(self):
        """The ready node with the fewest of our sessions (HAProxy leastconn, roughly)."""
        with self.lock:
            load = {i: 0 for i in range(len(self.nodes))}
            for i in self.home.values():
                load[i] = load.get(i, 0) + 1
        ready = [i for i, n in enumerate(self.nodes) if n.ready()]
        return min(ready, key=lambda i: load[i]) if ready else None

    def connect(self, user, node):
        ws = self.ws_mod.create_connection(f"ws://127.0.0.1:{self.nodes[node].port}/ws/{user}", timeout=10)
        ws.settimeout(1.0)
        with self.lock:
            self.home[user] = node
        return ws

    def session(self, user, node, churn):
        """One user's client: heartbeat every 4 s, reconnect when the server closes, and now
        and then (churn) close and come back."""
        ws = None
        next_hb = time.time()
        next_churn = time.time() + random.uniform(8, 20) if churn else math.inf
        while not self.stop.is_set():
            if ws is None:
                node = node if self.nodes[node].ready() else self.ready_node()
                if node is None:
                    time.sleep(0.5)
                    continue
                try:
                    ws = self.connect(user, node)
                except Exception:
                    self.count("errors")
                    time.sleep(random.uniform(0.5, 1.5))
                    continue
            try:
                if time.time() >= next_hb:
                    ws.send("heartbeat")
                    next_hb = time.time() + 4
                if time.time() >= next_churn:
                    ws.close()  # 1000: reason client_close
                    ws, next_churn = None, time.time() + random.uniform(8, 20)
                    node = self.ready_node() or 0
                    self.count("reconnects")
                    continue
                opcode, data = ws.recv_data(control_frame=True)
                if opcode == self.ws_mod.ABNF.OPCODE_CLOSE:
                    raise self.ws_mod.WebSocketConnectionClosedException("closed")
                if opcode == self.ws_mod.ABNF.OPCODE_TEXT and b'"type":"message"' in data:
                    self.count("received")
            except self.ws_mod.WebSocketTimeoutException:
                continue
            except Exception:
                # Closed by the server (drain, 1001) or dropped: back off, then pick a node.
                ws = None
                with self.lock:
                    self.home.pop(user, None)
                self.count("reconnects")
                time.sleep(random.uniform(0.2, 1.0))
                node = self.ready_node() or 0
        if ws is not None:
            try:
                ws.close()
            except Exception:
                pass

    def rate(self):
        """Messages per second: a slow swell from ~8/s to ~40/s and back."""
        t = self.elapsed()
        return 8 + 32 * math.sin(math.pi * min(t, self.seconds) / self.seconds) ** 2

    def sender(self, pairs, share):
        while not self.stop.is_set():
            a, b, group = random.choice(pairs)
            sender = random.choice((a, b))
            node = self.nodes[self.home.get(sender, 0)]
            if not node.ready():
                node = self.nodes[self.ready_node() or 0]
            try:
                status, _ = post(node.base, "/send_message", sender_id=sender, group_id=group,
                                 content=f"hello {random.randint(0, 10**6)}")
                self.count("sent" if status == 200 else "errors")
            except Exception:
                self.count("errors")
            time.sleep(share / max(self.rate(), 0.1))

    def misbehave(self, users, groups):
        """4xx answers, refused upgrades and the odd bad client, on both nodes."""
        ws_mod = self.ws_mod
        events = [
            (6, "silent"), (10, "protocol"), (14, "too_large"), (18, "protocol"), (30, "too_large"),
        ]
        next_4xx = time.time()
        for at, what in events:
            while self.elapsed() < at and not self.stop.is_set():
                if time.time() >= next_4xx:
                    self.bad_requests(users, groups)
                    next_4xx = time.time() + random.uniform(1, 3)
                time.sleep(0.2)
            for node in self.nodes:
                if not node.ready():
                    continue
                try:
                    ws = ws_mod.create_connection(f"ws://127.0.0.1:{node.port}/ws/{random.choice(users)}", timeout=10)
                    if what == "protocol":
                        ws.send("this is not a frame")  # 1008
                    elif what == "too_large":
                        ws.send("x" * 70 * 1024)  # 1009
                    elif what == "silent":
                        # Never sends: closed with 4000 after the heartbeat timeout (15 s).
                        threading.Thread(target=self.hold, args=(ws,), daemon=True).start()
                        continue
                    time.sleep(0.5)
                    ws.close()
                except Exception:
                    pass
        while not self.stop.is_set():
            if time.time() >= next_4xx:
                self.bad_requests(users, groups)
                next_4xx = time.time() + random.uniform(1, 3)
            time.sleep(0.2)

    def hold(self, ws):
        ws.settimeout(1.0)
        while not self.stop.is_set():
            try:
                opcode, _ = ws.recv_data(control_frame=True)
                if opcode == self.ws_mod.ABNF.OPCODE_CLOSE:
                    return
            except self.ws_mod.WebSocketTimeoutException:
                continue
            except Exception:
                return

    def bad_requests(self, users, groups):
        node = random.choice([n for n in self.nodes if n.ready()] or self.nodes)
        choice = random.randrange(6)
        try:
            if choice == 0:
                post(node.base, "/register", username="")
            elif choice == 1:
                post(node.base, "/send_message", sender_id=random.choice(users), group_id=999999999, content="hi")
            elif choice == 2:
                post(node.base, "/send_message", sender_id=random.choice(users), group_id=random.choice(groups),
                     content="x" * 17 * 1024)
            elif choice == 3:
                get_status(node.base + "/ws/999999999")
            elif choice == 4:
                get_status(node.base + "/nope")
            else:
                get_status(node.base + "/users/abc/groups")
        except Exception:
            pass

    def drainer(self):
        """Drain node 2 at drain_at, start it again once it has exited (a rolling deploy)."""
        node = self.nodes[-1]
        while self.elapsed() < self.drain_at:
            if self.stop.wait(0.2):
                return
        print(f"[demo] t={self.elapsed():.0f}s: draining {node.name}", flush=True)
        node.is_ready = False
        req = urllib.request.Request(node.admin_base + "/admin/drain", data=b"", method="POST")
        urllib.request.urlopen(req, timeout=5).close()
        while node.proc.poll() is None:
            if self.stop.wait(0.2):
                return
        print(f"[demo] t={self.elapsed():.0f}s: {node.name} exited with {node.proc.returncode}; restarting",
              flush=True)
        time.sleep(2)
        node.start()

    def run(self):
        users, pairs, groups = [], [], []
        for i in range(self.pairs):
            a = post(self.nodes[0].base, "/register", username=f"demo_a{i}_{os.getpid()}")[1]["user_id"]
            b = post(self.nodes[1].base, "/register", username=f"demo_b{i}_{os.getpid()}")[1]["user_id"]
            status, body = post(self.nodes[i % 2].base, "/create_group", name=f"pair {i}", created_by=a,
                                user_ids=str(b))
            pairs.append((a, b, body["group_id"]))
            users += [a, b]
            groups.append(body["group_id"])
        # Two bigger groups, so one send fans out to several sessions on both nodes.
        for k in range(2):
            members = random.sample(users, 6)
            status, body = post(self.nodes[k].base, "/create_group", name=f"team {k}", created_by=members[0],
                                user_ids=",".join(map(str, members[1:])))
            pairs.append((members[0], members[1], body["group_id"]))
            groups.append(body["group_id"])
        self.t0 = time.time()
        self.spawn(self.health)
        for i, u in enumerate(users):
            self.spawn(self.session, u, i % 2, i % 3 == 0)
        for _ in range(3):
            self.spawn(self.sender, pairs, 3)
        self.spawn(self.misbehave, users, groups)
        self.spawn(self.drainer)
        while self.elapsed() < self.seconds:
            time.sleep(5)
            with self.lock:
                c = dict(self.counts)
                on = [list(self.home.values()).count(i) for i in range(len(self.nodes))]
            print(f"[demo] t={self.elapsed():.0f}s rate={self.rate():.0f}/s sessions per node={on} {c}", flush=True)
        self.end = time.time()
        self.stop.set()
        for t in self.threads:
            t.join(15)

    def spawn(self, fn, *args):
        t = threading.Thread(target=fn, args=args, daemon=True)
        t.start()
        self.threads.append(t)


def demo(args):
    try:
        import websocket  # noqa: F401
    except ImportError:
        sys.exit("websocket-client is missing: pip install websocket-client")
    binary = os.path.abspath(args.binary)
    if not os.access(binary, os.X_OK):
        sys.exit(f"{binary} not found: cargo build first")
    prometheus = shutil.which("prometheus")
    if not prometheus:
        sys.exit("prometheus not found (apt-get install -y prometheus)")
    work = tempfile.mkdtemp(prefix="switchboard-demo-")
    db = f"sb_dashboard_{os.getpid()}"
    env = dict(os.environ, DATABASE_URL=f"{args.mysql.rstrip('/')}/{db}", REDIS_URL=args.redis,
               RUST_LOG=os.environ.get("RUST_LOG", "warn"))
    nodes = [Node(f"node-{i + 1}", binary, env, work) for i in range(2)]
    prom_proc = None
    try:
        for n in nodes:
            n.start()
        port = free_port()
        targets = ", ".join(f"'127.0.0.1:{n.admin}'" for n in nodes)
        config = os.path.join(work, "prometheus.yml")
        with open(config, "w") as f:
            f.write(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\n  evaluation_interval: 1s\n"
                f"rule_files:\n  - '{RULES}'\n"
                "scrape_configs:\n  - job_name: switchboard\n"
                f"    static_configs:\n      - targets: [{targets}]\n"
            )
        prom_log = open(os.path.join(work, "prometheus.log"), "w")
        prom_proc = subprocess.Popen(
            [prometheus, f"--config.file={config}", f"--storage.tsdb.path={work}/tsdb",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=prom_log, stderr=prom_log, stdin=subprocess.DEVNULL,
        )
        base = f"http://127.0.0.1:{port}"
        wait_http(base + "/-/ready", proc=prom_proc)
        print(f"[demo] nodes {[n.base for n in nodes]}, Prometheus {base}, logs in {work}", flush=True)
        time.sleep(3)  # a few scrapes before the traffic starts
        start = time.time() - 3
        traffic = Traffic(nodes, args.seconds, args.pairs, args.seconds * 0.55)
        traffic.run()
        time.sleep(3)  # the last scrapes
        end = traffic.end  # not the wind-down after it
        render(base, args.out, start, end, args.step, args.rate_interval,
               f"Switchboard: two nodes, {args.seconds:.0f} s of demo traffic, node-2 drained and restarted")
    finally:
        for n in nodes:
            n.stop()
        if prom_proc:
            prom_proc.send_signal(signal.SIGTERM)
            try:
                prom_proc.wait(10)
            except subprocess.TimeoutExpired:
                prom_proc.kill()
        if shutil.which("mysql") and args.mysql.startswith("mysql://root@127.0.0.1:3306"):
            subprocess.run(["mysql", "-uroot", "-h127.0.0.1", "-e", f"DROP DATABASE IF EXISTS {db}"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("render", help="render from an existing Prometheus")
    r.add_argument("--prometheus", default="http://127.0.0.1:9090", help="Prometheus base URL")
    r.add_argument("--since", type=parse_duration, default=parse_duration("15m"), help="time range, e.g. 15m")
    r.add_argument("--step", default="5s", help="query_range step")
    r.add_argument("--rate-interval", default="20s",
                   help="what $__rate_interval becomes (4 scrape intervals; 20s for prometheus/prometheus.yml)")
    r.add_argument("--out", default=os.path.join(ROOT, "docs", "dashboard.png"))
    d = sub.add_parser("demo", help="start two nodes, Prometheus and traffic, then render")
    d.add_argument("--seconds", type=float, default=80, help="how long the traffic runs")
    d.add_argument("--pairs", type=int, default=15, help="pairs of users (one per node)")
    d.add_argument("--binary", default=os.path.join(ROOT, "target", "debug", "switchboard"))
    d.add_argument("--mysql", default="mysql://root@127.0.0.1:3306", help="MariaDB URL without database")
    d.add_argument("--redis", default="redis://127.0.0.1:6379")
    d.add_argument("--step", default="1s")
    d.add_argument("--rate-interval", default="10s")
    d.add_argument("--keep", action="store_true", help="keep the temp dir with logs and the TSDB")
    d.add_argument("--out", default=os.path.join(ROOT, "docs", "dashboard.png"))
    args = p.parse_args()
    if args.cmd == "render":
        end = time.time()
        render(args.prometheus, args.out, end - args.since, end, args.step, args.rate_interval,
               f"Switchboard, last {human(args.since)} ({args.prometheus})")
    else:
        demo(args)


if __name__ == "__main__":
    main()
