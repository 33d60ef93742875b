"""The series budget, measured: real gunicorn masters, real exporters over HTTP, and
for churn a real Prometheus per exporter whose TSDB counts the series it creates.

    .venv/bin/python bench/series.py --baseline /tmp/base      # about 20 minutes
    .venv/bin/python bench/series.py --quick                   # about 6 minutes

(a) Series per app. For each configuration (sync workers 1 to 16, one or two
    listeners, gthread, outbound peers) a gunicorn master runs with the same exporter
    twice, `--gunicorn.worker-series=all` and `none`; once every family is there
    (workers read, the sampler's peaks, USS/PSS), the series of one scrape that carry
    the app's `app` label are counted, per mode. Host and exporter series (no `app`
    label) are counted once.
(b) Series created per hour by recycling: an app of 16 sync workers with
    `--max-requests 1000` under 100 requests/s (a new connection each, paced), watched
    by up to three exporters at once (`--baseline DIR`: another checkout, e.g. the
    commit before the pid left the labels; this tree with `all`; this tree with
    `none`), each scraped every 15 s by a Prometheus of its own. The oracle is that
    Prometheus's TSDB: `prometheus_tsdb_head_series_created_total` read from its own
    /metrics (it does not scrape itself) at the start and the end of each window,
    after a warm-up; recycles are counted from gunicorn's log (`Booting worker`). The
    windows are repeated; the three exporters watch the same workers in the same
    windows, so the host's noise falls on all of them.

Every exporter watches only the bench's apps (`--gunicorn.include`), listens for statsd
on a port of its own, and has Postgres off (no DSN). Prints a markdown report and writes
it to bench/results/series.md (`--out`). Needs `prometheus` (Debian package).
"""

from __future__ import annotations

import argparse
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import APPS_DIR, ROOT, VENV_BIN, free_port, med, poll, starttime, stop_popen  # noqa: E402

sys.path.insert(0, str(ROOT))
from tests.harness.procs import port_open  # noqa: E402

TAG = secrets.token_hex(2)
SCRAPE_INTERVAL = 15


def _get(url: str, timeout: float = 10) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.read().decode()
    except OSError:
        return None


class Proc:
    """A process we started; stopped by PID (after checking its start time)."""

    def __init__(self, argv: list[str], log: Path, cwd: str | None = None, env=None):
        self.log = open(log, "wb")
        self.popen = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, cwd=cwd, env=env)
        self.start = poll(lambda: starttime(self.popen.pid), 10, what=argv[0])
        self.path = log

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, sig: int = signal.SIGTERM) -> None:
        stop_popen(self.popen, self.start, sig)
        self.log.close()


def gunicorn(tmp: Path, name: str, workers: int, *, binds: int = 1, worker_class: str = "sync",
             threads: int = 1, app: str = "wsgi_app:app", extra=()) -> tuple[Proc, list[int]]:
    ports = [free_port() for _ in range(binds)]
    argv = [str(VENV_BIN / "gunicorn"), "-n", name, "-w", str(workers), "-k", worker_class,
            "--threads", str(threads), "--timeout", "120", "--graceful-timeout", "5",
            "--chdir", str(APPS_DIR), *[f"-b127.0.0.1:{p}" for p in ports], *extra, app]
    g = Proc(argv, tmp / f"{name}.log", cwd=str(tmp))
    poll(lambda: all(port_open(p) for p in ports) or not g.alive(), 60, 0.2, f"{name} listening")
    if not g.alive():
        raise RuntimeError(f"gunicorn {name} exited: {g.path.read_text()[-2000:]}")
    return g, ports


def request(port: int, path: str = "/", timeout: float = 5) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(f"GET {path} HTTP/1.0\r\nHost: bench\r\n\r\n".encode())
            return s.recv(64).startswith(b"HTTP/1.")
    except OSError:
        return False


def exporter(tmp: Path, tree: Path, mode: str | None, include: str) -> tuple[Proc, int]:
    port = free_port()
    argv = [sys.executable, "-m", "exporter", "--web.listen-address", f"127.0.0.1:{port}",
            "--gunicorn.include", include, "--statsd.listen-address", f"127.0.0.1:{free_port()}",
            "--no-collector.postgres"]
    if mode is not None:
        argv += ["--gunicorn.worker-series", mode]
    e = Proc(argv, tmp / f"exporter-{port}.log", cwd=str(tree))
    poll(lambda: _get(f"http://127.0.0.1:{port}/-/healthy", 2) or not e.alive(), 30, 0.1,
         "exporter")
    if not e.alive():
        raise RuntimeError(f"exporter exited: {e.path.read_text()[-2000:]}")
    return e, port


def scrape(port: int) -> list[tuple[str, dict[str, str]]]:
    text = _get(f"http://127.0.0.1:{port}/metrics")
    if text is None:
        return []
    return [(s.name, s.labels) for f in text_string_to_metric_families(text) for s in f.samples]


# ---- (a) series per app ------------------------------------------------------------

CONFIGS = [  # (label, workers, listeners, class, threads, peers)
    ("sync, 1 worker", 1, 1, "sync", 1, 0),
    ("sync, 2 workers", 2, 1, "sync", 1, 0),
    ("sync, 4 workers", 4, 1, "sync", 1, 0),
    ("sync, 8 workers", 8, 1, "sync", 1, 0),
    ("sync, 16 workers", 16, 1, "sync", 1, 0),
    ("sync, 4 workers, 2 listeners", 4, 2, "sync", 1, 0),
    ("gthread 4 threads, 4 workers", 4, 1, "gthread", 4, 0),
    ("sync, 4 workers, 3 peers", 4, 1, "sync", 1, 3),
]


def series_per_app(tmp: Path, configs) -> tuple[list[dict], dict[str, int]]:
    rows, host = [], {}
    for label, workers, binds, klass, threads, peers in configs:
        name = f"budget-{TAG}-{len(rows)}"
        peer_socks = [socket.create_server(("127.0.0.1", 0), backlog=64) for _ in range(peers)]
        g, ports = gunicorn(tmp, name, workers, binds=binds, worker_class=klass, threads=threads,
                            app="conn_app:app" if peers else "wsgi_app:app")
        exps = []
        try:
            for ps in peer_socks:           # every worker opens a connection to each peer
                for _ in range(workers * 3):
                    request(ports[0], f"/connect?port={ps.getsockname()[1]}")
            exps = [exporter(tmp, ROOT, mode, re.escape(name)) for mode in ("all", "none")]
            counts = {}
            for (_, port), mode in zip(exps, ("all", "none")):
                counts[mode] = _stable_count(port, name, workers, mode)
            if not host:
                host = {mode: sum(1 for _n, lbl in scrape(port) if "app" not in lbl)
                        for (_, port), mode in zip(exps, ("all", "none"))}
            rows.append({"label": label, "workers": workers, "listeners": binds,
                         "peers": peers, **counts})
            print(f"  {label}: all {counts['all']}, none {counts['none']}", flush=True)
        finally:
            for e, _ in exps:
                e.stop()
            g.stop(signal.SIGQUIT)
            for ps in peer_socks:
                ps.close()
    return rows, host


def _stable_count(port: int, app: str, workers: int, mode: str) -> int:
    """Series with the app's label once every family is in (two equal counts in a row)."""
    need = {"gunicorn_workers_heartbeat_age_peak_seconds", "gunicorn_workers_unique_memory_bytes"}
    if mode == "all":
        need |= {"gunicorn_worker_heartbeat_age_max_seconds", "gunicorn_worker_unique_memory_bytes"}
    last = [None]

    def ready():
        got = [(n, lbl) for n, lbl in scrape(port) if lbl.get("app") == app]
        names = {n for n, _ in got}
        ok = need <= names and ("gunicorn_workers" in names)
        n = len(got) if ok else None
        same = n is not None and n == last[0]
        last[0] = n
        return n if same else None
    return poll(ready, 150, 2.0, f"every family of {app} ({mode})")


# ---- (b) series created per hour -----------------------------------------------------

class Load:
    """`rate` requests a second to the app, a new connection each, paced on a schedule."""

    def __init__(self, port: int, rate: float):
        self.port, self.rate = port, rate
        self.sent = self.failed = 0
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        t0 = time.monotonic()
        while not self.stop_event.is_set():
            due = t0 + self.sent / self.rate
            delay = due - time.monotonic()
            if delay > 0:
                self.stop_event.wait(delay)   # the pacing of the load itself
            self.sent += 1
            if not request(self.port):
                self.failed += 1

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(10)


def prometheus(tmp: Path, target: int, name: str) -> tuple[Proc, int]:
    port = free_port()
    d = tmp / f"prom-{name}"
    d.mkdir()
    (d / "prometheus.yml").write_text(
        f"global:\n  scrape_interval: {SCRAPE_INTERVAL}s\n  scrape_timeout: 10s\n"
        "scrape_configs:\n  - job_name: gunicorn\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{target}']\n")
    p = Proc([shutil.which("prometheus"), f"--config.file={d / 'prometheus.yml'}",
              f"--storage.tsdb.path={d / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
             d / "prometheus.log")
    poll(lambda: _get(f"http://127.0.0.1:{port}/-/ready", 2) or not p.alive(), 30, 0.2, "prometheus")
    return p, port


def head_stats(prom_port: int) -> tuple[float, float]:
    """(prometheus_tsdb_head_series_created_total, prometheus_tsdb_head_series)."""
    text = _get(f"http://127.0.0.1:{prom_port}/metrics") or ""
    got = {}
    for line in text.splitlines():
        for name in ("prometheus_tsdb_head_series_created_total", "prometheus_tsdb_head_series"):
            if line.startswith(name + " "):
                got[name] = float(line.split()[1])
    return got["prometheus_tsdb_head_series_created_total"], got["prometheus_tsdb_head_series"]


def booted(log: Path) -> int:
    return log.read_text(errors="replace").count("Booting worker with pid")


def churn(tmp: Path, baseline: Path | None, windows: int, seconds: float, rate: float) -> dict:
    name = f"churn-{TAG}"
    g, ports = gunicorn(tmp, name, 16, extra=["--max-requests", "1000"])
    runs = ([("baseline (pid label)", baseline, None)] if baseline else []) + \
        [("this tree, all", ROOT, "all"), ("this tree, none", ROOT, "none")]
    started = []
    try:
        for label, tree, mode in runs:
            e, eport = exporter(tmp, tree, mode, re.escape(name))
            p, pport = prometheus(tmp, eport, label.split()[0] + (mode or "base"))
            started.append((label, e, p, pport))
        load = Load(ports[0], rate)
        try:
            # warm-up: every series of the steady state created (three scrapes)
            time.sleep(3 * SCRAPE_INTERVAL + 5)  # noqa: the warm-up is measured time, not a sync
            out = {label: [] for label, *_ in started}
            recycles, head = [], {label: [] for label, *_ in started}
            for w in range(windows):
                before = {label: head_stats(pp) for label, _e, _p, pp in started}
                b0, t0, sent0 = booted(g.path), time.monotonic(), load.sent
                time.sleep(seconds)  # noqa: the window is the measurement
                dt = time.monotonic() - t0
                recycles.append((booted(g.path) - b0) * 3600 / dt)
                for label, _e, _p, pp in started:
                    created, series = head_stats(pp)
                    out[label].append((created - before[label][0]) * 3600 / dt)
                    head[label].append(series)
                print(f"  window {w + 1}: {(load.sent - sent0) / dt:.1f} req/s, "
                      f"{recycles[-1]:.0f} recycles/h, created/h "
                      + ", ".join(f"{k}: {v[-1]:.0f}" for k, v in out.items()), flush=True)
        finally:
            load.stop()
        return {"created": out, "head": head, "recycles": recycles, "sent": load.sent,
                "failed": load.failed}
    finally:
        for _label, e, p, _pp in started:
            p.stop()
            e.stop()
        g.stop(signal.SIGQUIT)


# ---- report ------------------------------------------------------------------------

def fit(rows: list[dict], mode: str) -> tuple[int, int, int, int]:
    """(base, per worker, per extra listener, per peer) from the configurations."""
    by = {(r["workers"], r["listeners"], r["peers"]): r[mode] for r in rows if "sync" in r["label"]}
    per_worker = (by[(16, 1, 0)] - by[(1, 1, 0)]) // 15
    base = by[(1, 1, 0)] - per_worker
    listener = by.get((4, 2, 0), by[(4, 1, 0)]) - by[(4, 1, 0)]
    peer = (by.get((4, 1, 3), by[(4, 1, 0)]) - by[(4, 1, 0)]) // 3
    return base, per_worker, listener, peer


def report(rows, host, ch, args) -> str:
    out = ["# Series budget (bench/series.py)", "",
           f"`{' '.join(sys.argv)}` on {time.strftime('%Y-%m-%d')}; Python {sys.version.split()[0]}.", "",
           "## (a) Series per app (one scrape, samples with the app's label)", "",
           "| configuration | workers | listeners | peers | all | none |", "|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['label']} | {r['workers']} | {r['listeners']} | {r['peers']} "
                   f"| {r['all']} | {r['none']} |")
    if any(r["workers"] == 16 for r in rows) and any(r["workers"] == 1 for r in rows):
        for mode in ("all", "none"):
            b, w, ls, p = fit(rows, mode)
            out.append(f"\n{mode}: {b} + {w} x workers + {ls} x (listeners - 1) + {p} x peers "
                       "(sync, from the rows above)")
    out.append(f"\nHost and exporter series (no app label): all {host.get('all')}, "
               f"none {host.get('none')}.")
    if ch:
        out += ["", "## (b) Series created per hour: 16 sync workers, --max-requests 1000, "
                f"{args.rate:g} requests/s", "",
                f"{len(ch['recycles'])} windows of {args.window:g} s after a {3 * SCRAPE_INTERVAL + 5} s "
                f"warm-up; Prometheus scraping every {SCRAPE_INTERVAL} s; oracle "
                "`prometheus_tsdb_head_series_created_total` (its own /metrics). Median (min-max) per hour.",
                "", "| exporter | series created per hour | head series at the end |", "|---|---|---|"]
        for label, values in ch["created"].items():
            out.append(f"| {label} | {med(values):.0f} ({min(values):.0f}-{max(values):.0f}) "
                       f"| {med(ch['head'][label]):.0f} |")
        r = ch["recycles"]
        out.append(f"\nWorkers recycled (gunicorn's `Booting worker` lines): {med(r):.0f} per hour "
                   f"({min(r):.0f}-{max(r):.0f}); {ch['sent']} requests sent, {ch['failed']} failed.")
    return "\n".join(out) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--baseline", type=Path, help="another checkout, e.g. git worktree add /tmp/base COMMIT")
    p.add_argument("--quick", action="store_true", help="fewer configurations, 2 windows of 90 s")
    p.add_argument("--windows", type=int, default=3)
    p.add_argument("--window", type=float, default=300.0, help="seconds")
    p.add_argument("--rate", type=float, default=100.0, help="requests a second")
    p.add_argument("--skip", choices=["a", "b"], help="leave out one part")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "series.md")
    args = p.parse_args()
    if shutil.which("prometheus") is None:
        raise SystemExit("prometheus not installed (Debian package 'prometheus')")
    if args.quick:
        args.windows, args.window = 2, 90.0
    configs = [c for c in CONFIGS if not args.quick or c[1] in (1, 4, 16)]
    with tempfile.TemporaryDirectory(prefix="series-") as d:
        tmp = Path(d)
        rows, host = ([], {}) if args.skip == "a" else series_per_app(tmp, configs)
        ch = None if args.skip == "b" else churn(tmp, args.baseline, args.windows, args.window,
                                                 args.rate)
    text = report(rows, host, ch, args)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
