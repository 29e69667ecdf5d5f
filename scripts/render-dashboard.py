#!/usr/bin/env python3
"""Renders the key panels of grafana/dashboards/switchboard.json to one PNG, from a Prometheus.

Two ways to run it:

  render   Query an existing Prometheus that scrapes Switchboard nodes (job "switchboard"):
             scripts/render-dashboard.py render --prometheus http://127.0.0.1:9090 \\
                 --since 15m --out docs/dashboard.png

  demo     Start the local fleet, drive it with loadgen and render what it did (this is how
           docs/dashboard.png is made):
             scripts/render-dashboard.py demo --seconds 120 --out docs/dashboard.png
           It runs haproxy/fleet.sh up (three nodes of target/debug/switchboard behind HAProxy
           on :8080, with MariaDB at 127.0.0.1:3306 and Redis at 127.0.0.1:6379, as
           scripts/services.sh provides; the fleet's fixed ports must be free), a Prometheus
           with prometheus/prometheus.yml (which scrapes that fleet, rules loaded), and
           target/debug/loadgen: `chat` through HAProxy for the whole run, and `connections`
           that never send a heartbeat, so the nodes close them with 4000. At 40 % of the run,
           fleet.sh restart-rolling drains each node in turn (two closes a second, so the drain
           shows), its clients reconnect to the others, and it starts again.

The panels are found by title in the dashboard JSON and their queries run as written there,
with $node -> .* and $__rate_interval -> --rate-interval, so the picture shows exactly what
Grafana would. Needs python3 with matplotlib (pip install matplotlib).
"""

import argparse
import datetime as dt
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DASHBOARD = os.path.join(ROOT, "grafana", "dashboards", "switchboard.json")
PROMETHEUS_CONFIG = os.path.join(ROOT, "prometheus", "prometheus.yml")
FLEET = os.path.join(ROOT, "haproxy", "fleet.sh")

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
# demo: the local fleet (haproxy/fleet.sh), Prometheus, and loadgen for the traffic


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


def demo(args):
    bin_dir = os.path.abspath(args.bin_dir)
    node, loadgen = os.path.join(bin_dir, "switchboard"), os.path.join(bin_dir, "loadgen")
    for binary in (node, loadgen):
        if not os.access(binary, os.X_OK):
            sys.exit(f"{binary} not found: cargo build --bin {os.path.basename(binary)} first")
    prometheus = shutil.which("prometheus")
    if not prometheus:
        sys.exit("prometheus not found (apt-get install -y prometheus)")
    work = tempfile.mkdtemp(prefix="switchboard-demo-")
    db = f"sb_dashboard_{os.getpid()}"
    # fleet.sh passes SWITCHBOARD_* on to the nodes: a slow drain (2 closes a second) so that it
    # shows on the panels, and a short drain timeout so that a stuck client cannot stall the demo.
    env = dict(os.environ, FLEET_NODES="3", SWITCHBOARD_BIN=node, FLEET_RUN_DIR=os.path.join(work, "fleet"),
               DATABASE_URL=f"{args.mysql.rstrip('/')}/{db}", REDIS_URL=args.redis,
               SWITCHBOARD_DRAIN_CLOSE_RATE="2", SWITCHBOARD_DRAIN_TIMEOUT="30s",
               RUST_LOG=os.environ.get("RUST_LOG", "warn"))
    log = open(os.path.join(work, "demo.log"), "a")

    def fleet(*command):
        subprocess.run([FLEET, *command], env=env, check=True, stdout=log, stderr=log, stdin=subprocess.DEVNULL)

    def spawn(*command):
        return subprocess.Popen([loadgen, *command, "--target", "127.0.0.1:8080",
                                 "--users-file", os.path.join(work, f"{command[0]}.users")],
                                stdout=log, stderr=log, stdin=subprocess.DEVNULL)

    prom_proc, traffic = None, []
    try:
        fleet("up")
        port = free_port()
        prom_proc = subprocess.Popen(
            [prometheus, f"--config.file={PROMETHEUS_CONFIG}", f"--storage.tsdb.path={work}/tsdb",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=log, stderr=log, stdin=subprocess.DEVNULL,
        )
        base = f"http://127.0.0.1:{port}"
        wait_http(base + "/-/ready", proc=prom_proc)
        print(f"[demo] fleet on :8080, Prometheus {base}, logs in {work}", flush=True)
        time.sleep(10)  # a couple of scrapes before the traffic starts
        start = time.time() - 10
        # Chat through HAProxy for the whole run; receivers reconnect when a drain closes them.
        traffic.append(spawn("chat", "--pairs", str(args.pairs), "--rate", str(args.rate),
                             "--duration", str(args.seconds), "--linger", "3"))
        # Sessions that never send a heartbeat: the nodes close them with 4000 after 15 s.
        traffic.append(spawn("connections", "--count", str(args.idle), "--hold", "20"))
        time.sleep(args.seconds * 0.4)
        print(f"[demo] t={time.time() - start:.0f}s: rolling restart", flush=True)
        fleet("restart-rolling")
        print(f"[demo] t={time.time() - start:.0f}s: rolling restart done", flush=True)
        for proc in traffic:
            proc.wait()
        end = time.time()
        time.sleep(10)  # the last scrapes
        render(base, args.out, start, end, args.step, args.rate_interval,
               f"Switchboard: three nodes behind HAProxy, {args.seconds} s of loadgen chat, a rolling restart")
    finally:
        for proc in traffic:
            if proc.poll() is None:
                proc.terminate()
        subprocess.run([FLEET, "down", "--fast"], env=env, stdout=log, stderr=log, check=False)
        if prom_proc:
            prom_proc.send_signal(signal.SIGTERM)
            try:
                prom_proc.wait(10)
            except subprocess.TimeoutExpired:
                prom_proc.kill()
        if shutil.which("mysql") and args.mysql.startswith("mysql://root@127.0.0.1:3306"):
            subprocess.run(["mysql", "-uroot", "-h127.0.0.1", "-e", f"DROP DATABASE IF EXISTS {db}"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        log.close()
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
    d = sub.add_parser("demo", help="start the fleet, Prometheus and loadgen, then render")
    d.add_argument("--seconds", type=int, default=120, help="how long loadgen chat sends")
    d.add_argument("--pairs", type=int, default=20, help="loadgen chat --pairs")
    d.add_argument("--rate", type=float, default=30, help="loadgen chat --rate (messages per second)")
    d.add_argument("--idle", type=int, default=30, help="sessions that never heartbeat (closed with 4000)")
    d.add_argument("--bin-dir", default=os.path.join(ROOT, "target", "debug"),
                   help="where the switchboard and loadgen binaries are")
    d.add_argument("--mysql", default="mysql://root@127.0.0.1:3306", help="MariaDB URL without database")
    d.add_argument("--redis", default="redis://127.0.0.1:6379")
    d.add_argument("--step", default="5s", help="query_range step")
    d.add_argument("--rate-interval", default="20s", help="what $__rate_interval becomes")
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
