"""The shipped alert rules against faults held for minutes, at the cadence users run:
real 15 s scrapes and rule evaluations, the rules exactly as shipped
(alerts/gunicorn.rules.yml, no time scaling). Time-scaled runs hide what matters here:
a page that flaps during one outage, a threshold that a sampled value aliases around.

    python -m tests.cadence OUTDIR        # about 14 minutes; writes OUTDIR/results.json

tests/test_alerts_cadence.py starts it in the background when the session starts (it
spends most of its time waiting for Prometheus' clock, so the rest of the suite runs
beside it) and checks the results at the end.

One stack: a throwaway Postgres, nginx in front of one app, a dependency that answers
after 25 s, the exporter with its shipped defaults, and Prometheus. After a calm minute
of light traffic (nothing of ours may fire), every fault starts at once, each on its
own app, and is held:

* sync: 2 sync workers behind nginx, 4 clients in a loop on requests that wait 25 s
  on the dependency: two requests always wait in the accept queue, C1 for 10 minutes,
  caused by the dependency (W6): the C1 page names it, GunicornDependencySlow follows;
* gthread: 2 gthread workers of 4 threads, 16 clients in a loop on 20 s requests:
  requests wait inside the workers, C1 for 10 minutes;
* imbalance: 2 gthread workers of 4 threads; one worker takes a burst of 8 requests of
  4 minutes (the other one is stopped for the moment of the burst), then serves light
  traffic: the app is half busy, 4 requests wait inside one worker;
* gone: 1 gthread worker of 4 threads takes 60 requests of 20 s whose clients hang up
  at once: 5 minutes of work for clients that have gone;
* timeout: 2 sync workers, --timeout 30, one client in a loop on the 25 s dependency:
  no queue, every request at 83 % of --timeout;
* pool: 2 sync workers with a SQLAlchemy pool of 6 (pool_size 6, no overflow) each,
  declared with --postgres.app-budget, filled and held: 12 connections of 12.

(No app has a --timeout above 60 s, the proxy's: GunicornTimeoutAboveProxyTimeout would
go pending for every one, a configuration warning none of these faults is about.)

(More clients than that would time out and come back while their abandoned requests
still run: a backlog that outlives the load by minutes, the gone scenario's subject.)
A fault ends when the app has finished what it took (ss: nothing in its accept queue,
nothing held by its workers beyond what they serve); the stack is watched until every
page has resolved, or for AFTER seconds. The results:
per scenario, when its fault began and ended, and every state change of every alert of
its app (tests/alertwatch.py polls Prometheus every 3 s), plus measurements read back
from Prometheus (its own record of the exporter's series) for the checks.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import socketserver
import sys
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

from tests.alertwatch import Watcher
from tests.harness.clients import SlowClients, _connect, _read_to_eof, _request_bytes
from tests.harness.masters import Gunicorn
from tests.harness.procs import free_port, poll, unique_name
from tests.harness.servers import get_json, running_exporter, running_server, url_ready
from tests.harness.ss import ss_requests_held, ss_worker_active_connections
from tests.pg import PgCluster

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "alerts" / "gunicorn.rules.yml"
INTERVAL = 15           # scrape and evaluation interval, seconds: the shipped assumption
CALM = 45               # light traffic before the faults: the 1m windows fill
HOLD = 600              # the C1 faults are held this long
AFTER = 240             # at most this long after the last fault ends, until every page
                        # resolved (keep_firing_for 2m + the 1m window + intervals)
DEPENDENCY_SECONDS = 25
SCENARIOS = ("sync", "gthread", "imbalance", "gone", "timeout", "pool")


# --- load ------------------------------------------------------------------------------

class RequestLoop:
    """`n` clients, each sending `path` to `target` again as soon as its last request
    ended (answered, timed out or refused); `stop()` cuts the requests in flight."""

    def __init__(self, target, path: str, n: int, timeout: float, pause: float = 0.0):
        self.target, self.path, self.timeout, self.pause = target, path, timeout, pause
        self.stop_event = threading.Event()
        self.answers: dict[int, int] = {}          # status -> count (0: no answer)
        self._socks: set[socket.socket] = set()
        self._lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(n)]
        for t in self.threads:
            t.start()

    def _run(self) -> None:
        while not self.stop_event.is_set():
            status = 0
            try:
                s = _connect(self.target, 5)
            except OSError:
                self.stop_event.wait(0.5)
                continue
            with self._lock:
                self._socks.add(s)
            try:
                s.sendall(_request_bytes(self.path))
                raw = _read_to_eof(s, self.timeout)
                status = int(raw.split(b" ", 2)[1]) if raw.startswith(b"HTTP/") else 0
            except (OSError, ValueError, IndexError):
                pass
            finally:
                with self._lock:
                    self._socks.discard(s)
                s.close()
            with self._lock:
                self.answers[status] = self.answers.get(status, 0) + 1
            if self.pause:
                self.stop_event.wait(self.pause)

    def stop(self) -> None:
        self.stop_event.set()
        with self._lock:
            for s in list(self._socks):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
        for t in self.threads:
            t.join(10)


class Dependency(socketserver.ThreadingTCPServer):
    """A dependency that answers each line after `delay` seconds, on 127.0.0.1."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, delay: float):
        self.delay = delay
        self.closing = threading.Event()

        class Handler(socketserver.StreamRequestHandler):
            def handle(inner) -> None:
                inner.rfile.readline(256)
                if not self.closing.wait(self.delay):
                    with contextlib.suppress(OSError):
                        inner.wfile.write(b"ok\n")
        super().__init__(("127.0.0.1", 0), Handler)
        self.port = self.server_address[1]
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.closing.set()
        self.shutdown()
        self.server_close()


# --- the run -----------------------------------------------------------------------------

@dataclass
class Scenario:
    name: str
    app: str
    onset: float | None = None          # monotonic
    ended: float | None = None          # the fault's end (clients stopped, backlog done)
    notes: dict = field(default_factory=dict)


@dataclass
class Run:
    base: Path
    prom: str = ""
    watcher: Watcher | None = None
    scenarios: dict[str, Scenario] = field(default_factory=dict)
    apps: dict[str, Gunicorn] = field(default_factory=dict)
    t0_wall: float = 0.0
    t0_mono: float = 0.0
    calm_start: float = 0.0
    calm_end: float = 0.0
    errors: list[str] = field(default_factory=list)

    def wall(self, mono: float) -> float:
        return self.t0_wall + (mono - self.t0_mono)

    def query(self, expr: str, at: float | None = None) -> list[dict]:
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{self.wall(at):.3f}"
        url = self.prom + "/api/v1/query?" + urllib.parse.urlencode(params)
        return get_json(url, timeout=30)["data"]["result"]

    def query_range(self, expr: str, start: float, end: float) -> list[dict]:
        params = {"query": expr, "start": f"{self.wall(start):.3f}",
                  "end": f"{self.wall(end):.3f}", "step": str(INTERVAL)}
        url = self.prom + "/api/v1/query_range?" + urllib.parse.urlencode(params)
        return get_json(url, timeout=30)["data"]["result"]


def _binary(name: str, fallback: str) -> str:
    found = shutil.which(name) or (fallback if os.path.exists(fallback) else None)
    if found is None:
        raise SystemExit(f"{name} is not installed")
    return found


def _nginx_conf(ndir: Path, port: int, upstream: str) -> str:
    return (f"user root;\nworker_processes 1;\npid {ndir}/nginx.pid;\n"
            f"error_log {ndir}/error.log error;\n"
            "events { worker_connections 512; }\n"
            "http {\n"
            f"  access_log {ndir}/access.log combined;\n"
            f"  client_body_temp_path {ndir}/body; proxy_temp_path {ndir}/proxy;\n"
            f"  fastcgi_temp_path {ndir}/fcgi; uwsgi_temp_path {ndir}/uwsgi;"
            f" scgi_temp_path {ndir}/scgi;\n"
            f"  upstream app {{ server unix:{upstream}; }}\n"
            f"  server {{ listen 127.0.0.1:{port}; location / {{ proxy_pass http://app; }} }}\n"
            "}\n")


def start_stack(es: contextlib.ExitStack, run: Run) -> dict[str, object]:
    base = run.base
    pg = PgCluster.start(max_connections=60)
    es.callback(pg.stop)
    dep = Dependency(DEPENDENCY_SECONDS)
    es.callback(dep.close)
    names = {s: unique_name(f"cad-{s}") for s in SCENARIOS}
    for s in SCENARIOS:
        run.scenarios[s] = Scenario(s, names[s])

    def start(scenario: str, **kw) -> Gunicorn:
        g = Gunicorn.start(base / scenario, name=names[scenario], **kw)
        es.callback(g.stop, 10)
        run.apps[scenario] = g
        return g

    start("sync", workers=2, bind="unix", timeout=30)
    start("gthread", worker_class="gthread", workers=2, threads=4, bind="tcp", timeout=60)
    start("imbalance", worker_class="gthread", workers=2, threads=4, bind="tcp", timeout=60)
    start("gone", worker_class="gthread", workers=1, threads=4, bind="tcp", timeout=60)
    start("timeout", workers=2, bind="tcp", timeout=30)
    start("pool", workers=2, bind="tcp", app="db_app:app", timeout=60,
          env={"DB_URL": pg.url(), "POOL_SIZE": "6", "MAX_OVERFLOW": "0", "POOL_TIMEOUT": "30"})

    nginx_port = free_port()
    ndir = base / "nginx"
    ndir.mkdir()
    (ndir / "nginx.conf").write_text(_nginx_conf(ndir, nginx_port, run.apps["sync"].unix_path))
    nginx = _binary("nginx", "/usr/sbin/nginx")
    es.enter_context(running_server(
        [nginx, "-p", str(ndir), "-c", str(ndir / "nginx.conf"), "-g", "daemon off;"],
        base / "nginx.out", lambda: url_ready(f"http://127.0.0.1:{nginx_port}/"), "nginx"))

    exporter_port = free_port()
    args = ["--postgres.dsn", pg.dsn("monitor", "postgres"),
            "--postgres.app-budget", f"{names['pool']}=6"]
    for s, g in run.apps.items():
        args += ["--logs.file", f"{names[s]}={g.log_path}"]
    es.enter_context(running_exporter(base, *args, port=exporter_port))

    prom_port = free_port()
    run.prom = f"http://127.0.0.1:{prom_port}"
    (base / "prometheus.yml").write_text(
        f"global:\n  scrape_interval: {INTERVAL}s\n  evaluation_interval: {INTERVAL}s\n"
        f"rule_files:\n  - {RULES}\n"
        "scrape_configs:\n  - job_name: gunicorn\n    static_configs:\n"
        f"      - targets: ['127.0.0.1:{exporter_port}']\n")
    (base / "prom-data").mkdir()
    prometheus = _binary("prometheus", "/usr/bin/prometheus")
    es.enter_context(running_server(
        [prometheus, f"--config.file={base / 'prometheus.yml'}",
         f"--storage.tsdb.path={base / 'prom-data'}",
         f"--web.listen-address=127.0.0.1:{prom_port}"],
        base / "prometheus.log", lambda: url_ready(run.prom + "/-/ready"), "prometheus"))
    run.t0_wall, run.t0_mono = time.time(), time.monotonic()
    run.watcher = Watcher(run.prom, interval=3.0)
    run.watcher.start()
    es.callback(run.watcher.stop_event.set)
    return {"nginx": ("127.0.0.1", nginx_port), "dependency": dep.port, "pg": pg}


# --- the faults -----------------------------------------------------------------------------

def held_loop(sc: Scenario, done: threading.Event, target, path: str, clients: int,
              timeout: float, drain: Gunicorn | None = None) -> None:
    """`clients` requests of `path` in a loop from the onset for HOLD seconds; the fault
    ends when they stop, or once `drain` has served what it took."""
    loop = RequestLoop(target, path, clients, timeout=timeout)
    sc.onset = time.monotonic()
    done.wait(HOLD)
    loop.stop()
    if drain is not None:
        drained(sc, drain)
    else:
        sc.ended = time.monotonic()
    sc.notes["answers"] = loop.answers


def fault_sync(run: Run, env: dict, done: threading.Event) -> None:
    sc = run.scenarios["sync"]
    sc.notes["dependency"] = f"127.0.0.1:{env['dependency']}"
    held_loop(sc, done, env["nginx"], f"/upstream?port={env['dependency']}", 4, 75,
              drain=run.apps["sync"])


def fault_gthread(run: Run, env: dict, done: threading.Event) -> None:
    g = run.apps["gthread"]
    held_loop(run.scenarios["gthread"], done, (g.host, g.port), "/slow?seconds=20", 16, 75,
              drain=g)


def fault_imbalance(run: Run, env: dict, done: threading.Event) -> None:
    """8 requests of 240 s on one worker (4 run, 4 wait for a thread) while the other
    serves light traffic. The other worker is stopped only while the burst connects."""
    sc = run.scenarios["imbalance"]
    g = run.apps["imbalance"]
    one, other = g.worker_pids()[:2]
    os.kill(other, signal.SIGSTOP)
    try:
        clients = SlowClients(g, 8, seconds=240)
        poll(lambda: ss_worker_active_connections(one, g.listener) == 8, 20,
             message="the burst did not land on one worker")
        sc.onset = time.monotonic()
    finally:
        os.kill(other, signal.SIGCONT)
    light = RequestLoop((g.host, g.port), "/", 1, timeout=10, pause=1.0)
    done.wait(240)
    light.stop()
    # the light requests that landed behind the burst (their clients gave up after 10 s)
    # wait until a thread is free: until the burst's second half ends, at 480 s
    drained(sc, g, left=4)
    clients.close_all()


def drained(sc: Scenario, g: Gunicorn, left: int = 0) -> None:
    """The fault's end: once the app holds at most `left` requests (ss), its backlog
    served, those of clients that have gone included."""
    poll(lambda: ss_requests_held(g) <= left, 15 * 60, interval=1,
         message=f"{sc.name}: the backlog did not drain")
    sc.ended = time.monotonic()
    sc.notes["drained_after_hold"] = round(sc.ended - sc.onset, 1)


def fault_gone(run: Run, env: dict, done: threading.Event) -> None:
    """60 requests of 20 s whose clients hang up once the worker has them: 4 threads
    run them for 5 minutes, for nobody."""
    sc = run.scenarios["gone"]
    g = run.apps["gone"]
    [pid] = g.worker_pids()
    clients = SlowClients(g, 60, seconds=20)
    poll(lambda: ss_worker_active_connections(pid, g.listener) == 60, 20,
         message="the worker did not take the 60 connections")
    for i in range(60):
        clients.hangup(i)
    sc.onset = time.monotonic()
    drained(sc, g)
    sc.notes["backlog_seconds"] = round(sc.ended - sc.onset, 1)


def fault_timeout(run: Run, env: dict, done: threading.Event) -> None:
    g = run.apps["timeout"]
    held_loop(run.scenarios["timeout"], done, (g.host, g.port),
              f"/upstream?port={env['dependency']}", 1, 60)


def fault_pool(run: Run, env: dict, done: threading.Event) -> None:
    """Both workers check out their whole pool (6 each) and keep it: 12 of 12."""
    g = run.apps["pool"]
    held_loop(run.scenarios["pool"], done, (g.host, g.port), "/db/hold?n=6&seconds=30", 2, 60)


FAULTS = {"sync": fault_sync, "gthread": fault_gthread, "imbalance": fault_imbalance,
          "gone": fault_gone, "timeout": fault_timeout, "pool": fault_pool}


# --- measuring --------------------------------------------------------------------------------

def _values(result: list[dict]) -> list[float]:
    return [float(v) for r in result for _, v in r["values"]]


def measure(run: Run) -> None:
    s = run.scenarios
    for name, sc in s.items():
        sc.notes["alerts"] = {
            alert: {"changes": [(round(t - sc.onset, 1), state) for t, state in
                                run.watcher.changes[(alert, app)]],
                    "episodes": [(round(a - sc.onset, 1), None if b is None else round(b - sc.onset, 1))
                                 for a, b in run.watcher.episodes(alert, app)],
                    "severity": run.watcher.labels.get((alert, app), {}).get("severity", ""),
                    "labels": run.watcher.labels.get((alert, app), {}),
                    "description": run.watcher.annotations.get((alert, app), {}).get("description", "")}
            for (alert, app) in list(run.watcher.changes) if app == sc.app}
        # the episodes of the page again, from Prometheus' own ALERTS series (15 s steps)
        series = run.query_range(f'ALERTS{{alertstate="firing", app="{sc.app}"}}',
                                 run.calm_start, time.monotonic())
        sc.notes["alerts_series"] = {r["metric"]["alertname"]: _rising_edges(r["values"])
                                     for r in series}
    during = lambda sc, expr, a=60, b=None: _values(run.query_range(  # noqa: E731
        expr, sc.onset + a, sc.onset + b if b is not None else sc.ended))
    for name in ("sync", "gthread"):
        sc = s[name]
        sc.notes["busy_ratio"] = during(sc, f'app:gunicorn_workers_busy:ratio{{app="{sc.app}"}}')
        sc.notes["waiting"] = during(sc, f'app:gunicorn_requests_waiting:sum{{app="{sc.app}"}}')
        sc.notes["queued_share"] = during(
            sc, f'app:gunicorn_listener_queued:ratio_rate1m{{app="{sc.app}"}}')
    sc = s["imbalance"]
    sc.notes["busy_ratio"] = during(sc, f'app:gunicorn_workers_busy:ratio{{app="{sc.app}"}}')
    sc.notes["waiting_inside"] = during(
        sc, f'app:gunicorn_worker_connections_waiting:sum{{app="{sc.app}"}}')
    sc = s["gone"]
    sc.notes["busy_ratio"] = during(sc, f'app:gunicorn_workers_busy:ratio{{app="{sc.app}"}}', 30)
    sc.notes["client_closed"] = during(
        sc, f'sum(gunicorn_worker_connections{{app="{sc.app}", state="client_closed"}})', 30)
    sc = s["timeout"]
    sc.notes["age_at_scrapes"] = during(
        sc, f'max(gunicorn_worker_heartbeat_age_seconds{{app="{sc.app}"}})', 0)
    sc.notes["age_max"] = during(
        sc, f'max(gunicorn_worker_heartbeat_age_max_seconds{{app="{sc.app}"}})', 0)
    sc = s["pool"]
    sc.notes["budget_ratio"] = during(sc, f'app:gunicorn_db_connection_budget:ratio{{app="{sc.app}"}}')


def _rising_edges(values: list) -> int:
    """Firing episodes in a 15 s-step range of an ALERTS series: a gap (a step without a
    sample: the alert resolved, Prometheus wrote a stale marker) ends one."""
    times = [float(t) for t, _ in values]
    return sum(1 for i, t in enumerate(times) if i == 0 or t - times[i - 1] > INTERVAL * 1.5)


def main(outdir: str) -> int:
    base = Path(outdir)
    base.mkdir(parents=True, exist_ok=True)
    run = Run(base=base)
    out: dict = {"ok": False}

    def stopped(signum, frame):   # unwind: every process this run started is stopped
        raise SystemExit(128 + signum)
    signal.signal(signal.SIGTERM, stopped)
    try:
        with contextlib.ExitStack() as es:
            env = start_stack(es, run)
            apps = {sc.app for sc in run.scenarios.values()}
            poll(lambda: len({r["metric"]["app"] for r in run.query("gunicorn_up == 1")} & apps)
                 == len(apps), 60, interval=1, message="Prometheus never scraped every app")
            run.calm_start = time.monotonic()
            light = [RequestLoop((g.host, g.port) if g.port else g.unix_path, "/", 1,
                                 timeout=10, pause=2.0)
                     for s, g in run.apps.items() if s != "pool"]
            done = threading.Event()
            done.wait(CALM)      # noqa: the calm period is the observation, not a sync point
            for loop in light:
                loop.stop()
            run.calm_end = time.monotonic()
            threads = [threading.Thread(target=FAULTS[s], args=(run, env, done), daemon=True)
                       for s in SCENARIOS]
            for t in threads:
                t.start()
            for t in threads:
                t.join(HOLD + 600)
            last = max(sc.ended or time.monotonic() for sc in run.scenarios.values())
            with contextlib.suppress(AssertionError):   # a page still firing: the checks say
                poll(lambda: not any(
                    state == "firing" and run.watcher.labels[key].get("severity") == "critical"
                    for key, history in list(run.watcher.changes.items()) if key[1] in apps
                    for _, state in history[-1:]),
                    max(1.0, last + AFTER - time.monotonic()), interval=3)
            measure(run)
            out = {"ok": True, "calm": [0, round(run.calm_end - run.calm_start, 1)],
                   "calm_alerts": sorted({f"{n} {a} {st}" for (n, a), h in run.watcher.changes.items()
                                          for t, st in h if a in apps and st != "inactive"
                                          and run.calm_start <= t <= run.calm_end + 30}),
                   "scenarios": {n: {"app": sc.app,
                                     "ended": None if sc.ended is None else round(sc.ended - sc.onset, 1),
                                     **sc.notes} for n, sc in run.scenarios.items()},
                   "polls": run.watcher.polls}
    except BaseException as e:  # noqa: BLE001 - reported in the results for the tests
        out["error"] = f"{type(e).__name__}: {e}"
        raise
    finally:
        (base / "results.json").write_text(json.dumps(out, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
