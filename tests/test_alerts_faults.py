"""The shipped alert rules against faults provoked for real.

One stack for the module: a throwaway Postgres, nginx in front of one app, the exporter
(following every app's gunicorn error log and nginx's logs, watching Postgres), and a
real Prometheus scraping it every second with the rules of alerts/gunicorn.rules.yml
rendered with every duration divided by SCALE = 15 (`python -m generate rules
--time-scale`): the rules assume a 15 s scrape interval, so a 1 s interval sees the
same samples 15 times sooner, and every latency measured here is reported times 15.

First a calm phase with normal traffic to every app, in which nothing may fire. Then,
one after the other, each on its own app: sync and gthread pool exhaustion (C1), every
worker stopped so the unix socket stops accepting (C2), worker timeouts (W5), a master
killed (W4), a gevent app opening a connection per green thread against the real
Postgres (C6, C5), a real OOM kill in a memory cgroup (C7), nginx answering 502 for a
stopped app (W4, C1/C2), and an exporter restart after which an app does not come back.
Each must raise exactly its alerts (nothing else for that app), the critical ones within
the time the alerting issue promises; the measured times are in docs/runbooks.md.

With GUNICORN_EXPORTER_RECORD_FAULTS=1 each scenario's series are written to
alerts/tests/recorded/<scenario>.yml as promtool tests (input series as the real
exporter produced them, at 15 s spacing, and the alerts that fired), which
test_recorded_faults_replay runs with the unscaled rules.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from generate import rules, ruletests
from tests.alertwatch import Watcher
from tests.conftest import require
from tests.harness.clients import SlowClients, http_get
from tests.harness.masters import Gunicorn
from tests.harness.procs import free_port, poll
from tests.harness.servers import (get_json, running_exporter, running_prometheus,
                                   running_server, stop_process, url_ready)
from tests.pg import PgCluster, available
from tests.test_alerts import promtool

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parent.parent
RECORDED = ROOT / "alerts" / "tests" / "recorded"
SCALE = 15
RECORD = os.environ.get("GUNICORN_EXPORTER_RECORD_FAULTS") == "1"
# The latest a `for:`-gated alert can fire, in production seconds: the first scrape after
# the onset (up to one scrape interval, 15 s), the first evaluation that sees it (up to one
# evaluation interval, 15 s), then `for:`; plus how late the test can see it (the watcher
# polls every 0.2 s, 3 s here, and a scrape on a loaded 2-core host takes up to 0.3 s).
# A bound tighter than this arithmetic fails on timing luck, not on a slow rule.
INTERVALS = 15 + 15 + 3 + 5


def paged_by(for_seconds: float) -> float:
    return for_seconds + INTERVALS


# GunicornWorkerPoolExhausted: its 1m window needs requests waiting in 4 of its 5 samples
# (45 s of them), then the intervals above: the runbook's promise
C1_PAGE = paged_by(45)
TAG = secrets.token_hex(2)


def name(scenario: str) -> str:
    return f"flt-{scenario}-{TAG}"


APPS = {s: name(s) for s in ("sync", "gthread", "stuck", "timeout", "down", "gevent", "oom",
                             "proxied", "vanish")}


def _binary(path: str, package: str) -> str:
    found = shutil.which(os.path.basename(path)) or (path if os.path.exists(path) else None)
    require(found is not None, f"{path} not installed (apt-get install -y {package})")
    return found


@dataclass
class Stack:
    prom: str
    exporter: str
    watcher: Watcher
    apps: dict = field(default_factory=dict)       # scenario -> Gunicorn
    paused: set = field(default_factory=set)       # scenarios whose background traffic stops
    nginx_port: int = 0
    results: dict = field(default_factory=dict)    # scenario -> {alert: production seconds}
    run_started: float = 0.0


def _traffic(stack: Stack, stop: threading.Event) -> None:
    """Light, normal traffic to every app (and through nginx), one thread per app so a
    stuck app never slows the others."""
    def one(scenario: str, g: Gunicorn | None) -> None:
        while not stop.wait(0.3):
            if scenario in stack.paused:
                continue
            try:
                if g is None:
                    http_get(("127.0.0.1", stack.nginx_port), "/", timeout=1)
                elif g.alive():
                    g.get("/", timeout=1)
            except (OSError, ValueError):
                pass
    threads = [threading.Thread(target=one, args=(s, g), daemon=True)
               for s, g in stack.apps.items() if s != "oom"]
    threads.append(threading.Thread(target=one, args=("nginx", None), daemon=True))
    for t in threads:
        t.start()


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    prometheus = _binary("/usr/bin/prometheus", "prometheus")
    nginx = _binary("/usr/sbin/nginx", "nginx-light")
    require(os.geteuid() == 0, "the fault suite needs root (memory cgroup, nginx as root)")
    ok, why = available()
    require(ok, why)
    from tests.test_oom import TestCgroup
    memcg = TestCgroup()
    require(memcg.dir is not None, "no writable memory cgroup hierarchy")
    base = tmp_path_factory.mktemp("faults")
    logs = base / "logs"
    logs.mkdir()
    with contextlib.ExitStack() as es:
        pg = PgCluster.start(max_connections=60)
        es.callback(pg.stop)
        memcg.create(150 * 1024 * 1024)
        es.callback(memcg.remove)
        started: list[Gunicorn] = []
        es.callback(lambda: [g.stop(timeout=10) for g in reversed(started)])

        def start(scenario: str, **kw) -> Gunicorn:
            g = Gunicorn.start(base / scenario, name=APPS[scenario], **kw)
            started.append(g)
            (logs / f"{scenario}.log").symlink_to(g.log_path)
            return g

        apps = {
            "sync": start("sync", workers=2, bind="unix", timeout=60),
            "gthread": start("gthread", worker_class="gthread", workers=2, threads=2,
                             worker_connections=4, bind="tcp", timeout=60),
            "stuck": start("stuck", workers=2, bind="unix"),
            "timeout": start("timeout", workers=1, bind="tcp", timeout=2),
            "down": start("down", workers=1, bind="tcp"),
            "gevent": start("gevent", worker_class="gevent", workers=1, worker_connections=100,
                            bind="tcp", app="db_app:app",
                            env={"DB_URL": pg.url(), "DB_DSN": pg.dsn("app", "appdb")}),
            "proxied": start("proxied", workers=2, bind="unix"),
            "vanish": start("vanish", workers=1, bind="tcp"),
        }
        hook = base / "in_cgroup.py"
        hook.write_text("import os\n"
                        "def on_starting(server):\n"
                        f"    with open({str(memcg.dir / 'cgroup.procs')!r}, 'w') as f:\n"
                        "        f.write(str(os.getpid()))\n")
        apps["oom"] = start("oom", workers=1, bind="unix", extra_args=["-c", str(hook)])

        # nginx in front of the "proxied" app
        nginx_port = free_port()
        ndir = base / "nginx"
        ndir.mkdir()
        (ndir / "nginx.conf").write_text(
            f"user root;\nworker_processes 1;\npid {ndir}/nginx.pid;\n"
            f"error_log {logs}/nginx-error.log error;\n"
            "events { worker_connections 256; }\n"
            "http {\n"
            f"  access_log {logs}/nginx-access.log combined;\n"
            f"  client_body_temp_path {ndir}/body; proxy_temp_path {ndir}/proxy;\n"
            f"  fastcgi_temp_path {ndir}/fcgi; uwsgi_temp_path {ndir}/uwsgi; scgi_temp_path {ndir}/scgi;\n"
            f"  upstream app {{ server unix:{apps['proxied'].unix_path}; }}\n"
            f"  server {{ listen 127.0.0.1:{nginx_port}; location / {{ proxy_pass http://app; }} }}\n"
            "}\n")
        es.enter_context(running_server(
            [nginx, "-p", str(ndir), "-c", str(ndir / "nginx.conf"), "-g", "daemon off;"],
            base / "nginx.out", lambda: url_ready(f"http://127.0.0.1:{nginx_port}/"), "nginx"))

        exporter_port = free_port()
        # what the exporter remembers, on the rules' clock (1 minute, 1 hour)
        remember = ["--gunicorn.remember-after", f"{60 / SCALE:g}s",
                    "--gunicorn.forget-after", f"{3600 / SCALE:g}s"]
        args = ["--postgres.dsn", pg.dsn("monitor", "postgres"), "--postgres.timeout", "500ms",
                "--logs.poll-interval", "100ms", *remember,
                "--logs.file", f"{APPS['proxied']}={logs}/nginx-access.log",
                "--logs.file", f"{APPS['proxied']}={logs}/nginx-error.log"]
        for scenario in apps:
            args += ["--logs.file", f"{APPS[scenario]}={logs}/{scenario}.log"]
        exporter = es.enter_context(running_exporter(base, *args, port=exporter_port))

        (base / "rules.yml").write_text(rules.render(time_scale=1 / SCALE))
        prom = es.enter_context(running_prometheus(
            prometheus, base,
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            f"rule_files:\n  - {base / 'rules.yml'}\n"
            "scrape_configs:\n  - job_name: gunicorn\n    static_configs:\n"
            f"      - targets: ['127.0.0.1:{exporter_port}']\n"))
        watcher = Watcher(prom)
        watcher.start()
        es.callback(watcher.stop_event.set)
        s = Stack(prom=prom, exporter=exporter, watcher=watcher, apps=apps, nginx_port=nginx_port,
                  run_started=time.monotonic())
        s.pg = pg
        s.memcg = memcg
        s.base = base
        s.exporter_port = exporter_port
        s.exporter_args = args
        es.callback(lambda: getattr(s, "restarted", None) and stop_process(s.restarted))
        stop = threading.Event()
        es.callback(stop.set)
        _traffic(s, stop)
        yield s
        _print_results(s)


def _quietly(fn, *args) -> None:
    """For requests that a fault or the teardown may cut short."""
    with contextlib.suppress(OSError, ValueError):
        fn(*args)


def _print_results(s: Stack) -> None:
    print("\nonset -> firing, production seconds (measured x%d):" % SCALE)
    for scenario, fired in s.results.items():
        print("  %-8s %s" % (scenario, ", ".join(f"{a} {t:.0f} s" for a, t in sorted(fired.items()))))


def _query(prom: str, q: str) -> list[dict]:
    url = prom + "/api/v1/query?" + urllib.parse.urlencode({"query": q})
    return get_json(url)["data"]["result"]


def _scraped(s: Stack, app: str) -> bool:
    return bool(_query(s.prom, f'gunicorn_up{{app="{app}"}} == 1'))


def run_fault(s: Stack, scenario: str, expected: dict[str, float | None], provoke,
              settle: float = 3.0, budget: float = 60.0):
    """Provoke a fault and wait until every expected alert fires for the scenario's app.

    expected: alert -> the most production seconds it may take from onset to firing
    (None: no promise). After the last one, wait `settle` (test seconds) more and check
    that nothing else fired for the app. Returns {alert: production seconds}."""
    app = APPS[scenario]
    poll(lambda: _scraped(s, app), 20, message=f"{app} never scraped")
    t_start = time.time()
    provoke()
    onset = time.monotonic()
    fired = poll(lambda: (f := s.watcher.fired(app, onset)) and set(expected) <= set(f) and f,
                 budget, interval=0.1,
                 message=f"{scenario}: not all of {sorted(expected)} fired "
                         f"(seen {sorted(s.watcher.fired(app))})")
    time.sleep(settle)  # noqa: observation window for anything else firing, not synchronisation
    seen = s.watcher.fired(app)
    latency = {a: (t - onset) * SCALE for a, t in fired.items()}
    s.results[scenario] = latency
    assert set(seen) == set(expected), f"{scenario}: fired {sorted(seen)}, expected {sorted(expected)}"
    for alert, limit in expected.items():
        if limit is not None:
            assert latency[alert] <= limit, f"{alert} took {latency[alert]:.0f} s > {limit} s"
    if RECORD:
        _record(s, scenario, app, t_start)
    return latency


# --- the phases -----------------------------------------------------------------------

def test_calm_traffic_fires_nothing(stack):
    for app in APPS.values():
        poll(lambda app=app: _scraped(stack, app), 30, message=f"{app} never scraped")
    # 40 s at 1 s scrapes = 10 minutes of production time with normal traffic
    mine = set(APPS.values()) | {""}  # our apps, and alerts about no app (exporter, Postgres)
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline:
        firing = {k for k in stack.watcher.first if k[1] in mine}
        assert not firing, f"alerts fired in the calm phase: {sorted(firing)}"
        time.sleep(0.5)  # noqa: a calm period is the point of this test


def run_slow_requests_fault(s: Stack, scenario: str, expected: dict[str, float | None],
                            requests: int):
    """run_fault whose fault is `requests` requests of 60 s sent at once to the
    scenario's app, held open until the alerts are checked."""
    g = s.apps[scenario]
    with contextlib.ExitStack() as held:
        return run_fault(s, scenario, expected,
                         lambda: held.enter_context(SlowClients(g, requests, seconds=60)))


def test_sync_pool_exhaustion_c1(stack):
    run_slow_requests_fault(stack, "sync", {"GunicornWorkerPoolExhausted": C1_PAGE}, 6)


def test_gthread_requests_wait_inside_the_workers_c1(stack):
    # 2 workers x 2 threads, 4 connections each at most: 8 requests fill every
    # worker (2 served, 2 parked each) while the accept queue stays empty
    # (and at --worker-connections: C3 as well)
    run_slow_requests_fault(stack, "gthread", {"GunicornWorkerPoolExhausted": C1_PAGE,
                                               "GunicornGthreadWorkerConnectionsAtLimit": None}, 8)


def test_stopped_workers_stuck_unix_socket_c2(stack):
    g = stack.apps["stuck"]
    workers = g.worker_pids()
    clients = []
    stack.paused.add("stuck")

    def provoke():
        for pid in workers:
            os.kill(pid, signal.SIGSTOP)
        clients.append(SlowClients(g, 3, seconds=1))
    try:
        run_fault(stack, "stuck", {"GunicornListenQueueStuck": 120}, provoke)
    finally:
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        for c in clients:
            c.close_all()


def test_worker_timeouts_w5(stack):
    g = stack.apps["timeout"]
    stack.paused.add("timeout")  # one request at a time: timeouts, not a queue
    done = threading.Event()

    def slow_requests():
        for _ in range(4):
            if done.is_set():
                return
            with contextlib.suppress(OSError, ValueError):
                g.get("/slow?seconds=10", timeout=15)
    t = threading.Thread(target=slow_requests, daemon=True)
    try:
        run_fault(stack, "timeout", {"GunicornWorkerTimeouts": None}, t.start)
    finally:
        done.set()


def test_master_killed_w4(stack):
    g = stack.apps["down"]
    stack.paused.add("down")
    run_fault(stack, "down", {"GunicornDown": paged_by(60)}, g.kill_master)


def test_gevent_connection_per_green_thread_c6(stack):
    g = stack.apps["gevent"]
    holders = []

    def provoke():
        for _ in range(20):
            t = threading.Thread(target=_quietly, args=(g.get, "/gevent/hold?seconds=60", 90),
                                 daemon=True)
            t.start()
            holders.append(t)
    run_fault(stack, "gevent", {"GunicornGreenThreadDBConnections": None,
                                "GunicornDBConnectionsOverBudget": None}, provoke, budget=90)


def test_real_oom_kill_c7(stack):
    g = stack.apps["oom"]

    def provoke():
        def alloc():
            with contextlib.suppress(OSError, ValueError):
                http_get(g.unix_path, "/alloc?mb=300", timeout=30)
        threading.Thread(target=alloc, daemon=True).start()
    # gunicorn logs "was sent SIGKILL! Perhaps out of memory?" too, with no WORKER TIMEOUT.
    # Onset is the request: its allocation (real seconds, times 15 here) comes first.
    run_fault(stack, "oom", {"GunicornWorkerOOMKilled": 45, "GunicornWorkerSIGKILLed": None},
              provoke)


def test_nginx_502_for_a_stopped_app_w4(stack):
    g = stack.apps["proxied"]
    stack.paused.add("proxied")
    # the nginx traffic goes on: every request is answered 502
    run_fault(stack, "proxied", {"GunicornDown": paged_by(60), "GunicornProxyCannotConnect": 180},
              lambda: g.stop(timeout=10))


def test_an_app_that_does_not_come_back_after_an_exporter_restart(stack):
    """The exporter restarts and forgets; an app that stopped meanwhile has no series."""
    g = stack.apps["vanish"]
    stack.paused.add("vanish")
    app = APPS["vanish"]
    poll(lambda: _scraped(stack, app), 20, message="vanish app never scraped")

    def provoke():
        g.stop(timeout=10)
        _restart_exporter(stack)
    run_fault(stack, "vanish", {"GunicornAppVanished": None}, provoke)


def _restart_exporter(stack: Stack) -> None:
    for p in _exporter_processes(stack.exporter_port):
        os.kill(p, signal.SIGTERM)
    poll(lambda: not _exporter_processes(stack.exporter_port), 15, message="exporter did not stop")
    log = open(stack.base / "exporter-restarted.log", "wb")
    proc = subprocess.Popen([os.sys.executable, "-m", "exporter", "--web.listen-address",
                             f"127.0.0.1:{stack.exporter_port}", *stack.exporter_args],
                            stdout=log, stderr=subprocess.STDOUT)
    stack.restarted = proc
    poll(lambda: url_ready(stack.exporter + "/-/healthy"), 20, message="exporter did not restart")


def _exporter_processes(port: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = open(f"/proc/{entry}/cmdline", "rb").read().split(b"\0")
        except OSError:
            continue
        if b"exporter" in argv and f"127.0.0.1:{port}".encode() in argv:
            out.append(int(entry))
    return out


# --- recording the runs as promtool tests -----------------------------------------------

def _rule_metric_names() -> set[str]:
    text = (ROOT / "alerts" / "gunicorn.rules.yml").read_text()
    exprs = re.findall(r"expr: \|-\n((?:          .*\n)+)", text)
    return set(re.findall(r"\b(gunicorn_[a-z0-9_]+|up)\b", "".join(exprs)))


def _record(s: Stack, scenario: str, app: str, t_start: float) -> None:
    t_end = time.time()
    start = t_start - 20  # some calm before the onset
    names = "|".join(sorted(_rule_metric_names()))
    query = f'{{__name__=~"{names}", job="gunicorn", app=~"{app}|"}}'
    url = s.prom + "/api/v1/query_range?" + urllib.parse.urlencode(
        {"query": query, "start": start, "end": t_end, "step": "1s"})
    result = get_json(url, timeout=30)["data"]["result"]
    steps = int(t_end - start) + 1
    lines = []
    for series in sorted(result, key=lambda r: json.dumps(r["metric"], sort_keys=True)):
        labels = dict(series["metric"])
        metric = labels.pop("__name__")
        values = {round(float(t) - start): v for t, v in series["values"]}
        # a point missing after the series existed is a staleness marker in Prometheus
        # (the target or the series went away): promtool writes it as `stale`
        out, seen, gone = [], False, False
        for i in range(steps):
            if i in values:
                out.append(values[i])
                seen, gone = True, False
            else:
                out.append("stale" if seen and not gone else "_")
                gone = gone or seen
        vals = " ".join(out)
        label_text = ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        lines.append(f"      - series: '{metric}{{{label_text}}}'\n        values: '{vals}'")
    firing = _query(s.prom, f'ALERTS{{alertstate="firing", app="{app}"}}')
    samples = []
    for a in sorted(firing, key=lambda r: json.dumps(r["metric"], sort_keys=True)):
        label_text = ", ".join(f'{k}="{v}"' for k, v in sorted(a["metric"].items())
                               if k != "__name__")
        samples.append(f"          - labels: 'ALERTS{{{label_text}}}'\n            value: 1")
    end_eval = (steps - 1) * SCALE
    RECORDED.mkdir(parents=True, exist_ok=True)
    (RECORDED / f"{scenario}.yml").write_text(
        f"# Recorded by tests/test_alerts_faults.py ({scenario}): what a real exporter\n"
        "# exported around a real fault, one sample per second replayed at 15 s spacing,\n"
        "# and the alerts the scaled rules fired at the end. Regenerate with\n"
        "# GUNICORN_EXPORTER_RECORD_FAULTS=1 pytest tests/test_alerts_faults.py\n"
        "rule_files:\n  - ../../gunicorn.rules.yml\nevaluation_interval: 15s\ntests:\n"
        "  - interval: 15s\n    input_series:\n" + "\n".join(lines) + "\n"
        "    promql_exp_test_placeholder: []\n"
        .replace("    promql_exp_test_placeholder: []\n",
                 "    promql_expr_test:\n"
                 f"      - expr: 'ALERTS{{alertstate=\"firing\", app=\"{app}\"}}'\n"
                 "        eval_time: 0s\n        exp_samples: []\n"
                 f"      - expr: 'ALERTS{{alertstate=\"firing\", app=\"{app}\"}}'\n"
                 f"        eval_time: {end_eval}s\n        exp_samples:\n" + "\n".join(samples) + "\n"))


@pytest.mark.parametrize("mode", ruletests.MODES)
def test_recorded_faults_replay(mode, tmp_path):
    """The recorded series of real faults, replayed with the unscaled rules, fire the
    same alerts (and nothing before the onset), with the series as each
    --gunicorn.worker-series mode serves them (generate/ruletests.py)."""
    require(bool(sorted(RECORDED.glob("*.yml"))), "no recorded faults in alerts/tests/recorded")
    files = [f for f in ruletests.write(mode, tmp_path / mode, sources=RECORDED)]
    res = subprocess.run([promtool(), "test", "rules", *map(str, files)],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path / mode)
    assert res.returncode == 0, res.stdout[-5000:] + res.stderr[-2000:]
