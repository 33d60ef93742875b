"""docs/metrics.md and exporter/metrics/ must describe the same metrics.

Nothing is started: a hand-built Snapshot that fills every optional field is rendered
exactly as /metrics renders it (exporter.metrics.render plus the exporter's own
ProcessCollector), encoded with prometheus_client, parsed back, and compared with the
names written in docs/metrics.md. A second test checks the naming rules on the same
families.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from exporter.http import _PROCESS
from exporter.metrics import render, render_web
from exporter.metrics.encode import _Families
from exporter.postgres.model import attribute, budgets, build_server_snapshot
from exporter.linux.cgroup import PodIdentity
from exporter.gunicorn.dependencies import Dependency
from exporter.snapshot import PostgresSnapshot
from exporter.snapshot import AppRequests, QueueSnapshot, RequestsSnapshot, StatsdSnapshot
from exporter.snapshot import (AdviceSnapshot, AppOom, AppSnapshot, CollectorResult, GunicornSnapshot,
                               HostSnapshot, ListenerSnapshot, LogFileStats, LogsSnapshot,
                               OomSnapshot, SamplerListener, SamplerSnapshot, Snapshot,
                               StacksSnapshot, WorkerSnapshot)

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "metrics.md"
METRICS_DIR = ROOT / "exporter" / "metrics"

# A metric name in the docs: gunicorn_ followed by at least one more name character.
DOC_NAME_RE = re.compile(r"(?<![\w-])gunicorn_[a-z0-9_]*[a-z0-9]\b")
BACKTICK_RE = re.compile(r"`([^`\n]+)`")
SOURCE_NAME_RE = re.compile(r"""["'](gunicorn_[a-z0-9_]+)["']""")
# Unit words that are not base units; a name that carries one of these is wrong.
NON_BASE_UNITS = {"milliseconds", "ms", "microseconds", "us", "nanoseconds", "ns",
                  "minutes", "hours", "days", "kilobytes", "kb", "megabytes", "mb",
                  "gigabytes", "gb", "kib", "mib", "gib", "bits", "percent", "pct"}
BASE_UNITS = ("seconds", "bytes")
# Words that mean a quantity with a unit: a name with one of them must say the unit.
NEEDS_UNIT = {"age", "duration", "time", "timeout", "keepalive", "memory", "latency",
              "uptime", "size", "cpu"}


def _worker(slot: int, pid: int, *, busy: bool) -> WorkerSnapshot:
    return WorkerSnapshot(
        slot=slot, pid=pid, start_time=1_700_000_100.0 + slot, rss_bytes=50_000_000,
        cpu_seconds=12.5, threads=3, open_fds=17, fd_limit=1024, heartbeat_age=1.5,
        connections_active=1 if busy else 0, connections_client_closed=1 if busy else 0,
        connections_idle=2, db_connections=2, unique_memory_bytes=3_000_000,
        proportional_memory_bytes=20_000_000)


def full_snapshot() -> Snapshot:
    """One snapshot in which every family rendered by exporter.metrics has a sample."""
    shop = AppSnapshot(
        app="shop", up=True, master_pid=100, version="23.0.0", worker_class="gthread",
        workers_desired=2, timeout=30.0, keepalive=2.0, capacity=1, worker_connections=1000,
        threads=1, backlog=2048,
        settings_source={"workers": "cmdline", "timeout": "control_socket",
                         "backlog": "default"},
        control_socket=True, control_answer_age=12.5,
        dependencies={"10.0.0.5:5432": Dependency({"established": 4, "syn_sent": 1}, 2, 3.5),
                      "unix:/run/redis.sock": Dependency({"established": 2})},
        workers=[_worker(0, 101, busy=True), _worker(1, 102, busy=False)],
        listeners=[
            ListenerSnapshot("unix:/run/shop.sock", "unix", queue_length=3, queue_max=2048),
            ListenerSnapshot("[::]:8000", "tcp", queue_length=0, queue_max=2048, worker_slot=1,
                             drops=4),
        ],
        master_start_time=1_700_000_000.0, workers_spawned=5, workers_killed=2, reloads=1,
        workers_cpu_seconds=25.0,
        somaxconn=4096,
        listen_overflows=7, listen_drops=9,
        pod=PodIdentity("containerd", "a" * 64, "1f6c7e5a-8a7b-4b7e-9a0a-2d3c4e5f6a7b", "burstable"))
    gone = AppSnapshot(app="old", up=False)
    gunicorn = GunicornSnapshot(apps=[shop, gone], socket_source="netlink",
                                permission_denied=1, orphans={"old": 1})
    host = HostSnapshot(somaxconn=4096, listen_overflows=7, listen_drops=9)
    oom = OomSnapshot(source="kmsg", host_oom_kills=3, unattributed_kills=1, kmsg_lost=0,
                      apps={"shop": AppOom(worker_kills=1, master_kills=0,
                                           last_kill_time=1_700_000_100.0,
                                           cgroup="/shop", cgroup_oom_kills=1)})
    logs = LogsSnapshot(events={("shop", "worker_timeout"): 2},
                        files=[LogFileStats(path="/var/log/shop/error.log", app="shop", lines=10,
                                            truncated_lines=0, rotations=1, open=True, errors=0)])
    pg = build_server_snapshot("h:5432/db", (160000, 40, 3, "2", 5432, 9, True, 0.0),
                               [(9, "db", "u", "x", "active", None, -1, 0.0, 0.0, 0.0, False),
                                (10, "db", "u", "x", "idle", None, -1, 0.0, 0.0, 0.0, True)], 5)
    pg.attribution = attribute(pg.backends, [shop], server_port=5432, own_pid=9)
    pg.attribution.unattributed.setdefault("remote", 1)
    pgsnap = PostgresSnapshot(servers=[pg], budgets=budgets([shop], {}),
                              dependency_peers=[("shop", "10.0.0.5:5432")])
    # requests: gunicorn's statsd stream (statsd collector) and access log lines (logs)
    statsd = StatsdSnapshot(
        up=True, packets=10, malformed_lines=1, ignored_lines=2,
        unattributed_lines={"unknown_sender": 1, "limit": 0},
        senders={"kernel": 1, "pending": 0, "unknown": 1}, lookups=1, kernel_drops=0,
        receive_buffer=425984, requests=RequestsSnapshot("statsd", (0.1, 1.0), {"shop": AppRequests(
            {"200": 3, "503": 1}, [2, 1, 1], 1.75, 4, {"error": 1})}))
    logs.requests = RequestsSnapshot("access_log", (0.1, 1.0), {"shop": AppRequests(
        {"404": 1}, [1, 0, 0], 0.05, 1)})
    logs.files[0].access_lines = 1
    logs.queue = QueueSnapshot((0.1, 1.0), {"shop": AppRequests({}, [0, 1, 0], 0.3, 1)},
                               skew={"shop": 1}, unmeasured={"shop": 0})
    return Snapshot(results={
        "postgres": CollectorResult("postgres", True, 0.01, data=pgsnap),
        "gunicorn": CollectorResult("gunicorn", True, 0.02, data=gunicorn),
        "netstat": CollectorResult("netstat", True, 0.001, data=host),
        "oom": CollectorResult("oom", True, 0.001, data=oom),
        "logs": CollectorResult("logs", True, 0.001, data=logs),
        "statsd": CollectorResult("statsd", True, 0.001, data=statsd),
        "sampler": CollectorResult("sampler", True, 0.0, data=SamplerSnapshot(
            interval=0.1, window=15.0, all_busy_seconds={"shop": 4.5},
            heartbeat_max=[("shop", 0, 21.5)], dependency_waiting=[("shop", "10.0.0.5:5432", 42.0)],
            samples=100,
            listeners=[SamplerListener("shop", "unix:/run/shop.sock", 4, 4.0, 10.0)])),
        "advice": CollectorResult("advice", True, 0.0, data=AdviceSnapshot(
            [("shop", "C3", "gthread-worker-connections", "warning")])),
        "stacks": CollectorResult("stacks", True, 0.0, data=StacksSnapshot(
            reader_available=True, stuck=[("shop", 0, "view (shop/views.py:42)")],
            captures={("shop", "ok"): 3, ("shop", "gone"): 1}, cpu_seconds=0.03)),
    }, collected_at=1_700_000_200.0)


@pytest.fixture(scope="module")
def rendered():
    """(metric families from render(), parsed families of the full /metrics text)."""
    families = list(render(full_snapshot())) + list(render_web(True, (3, {"evicted": 1})))
    text = generate_latest(_Families(families + list(_PROCESS.collect()))).decode()
    parsed = list(text_string_to_metric_families(text))
    return families, parsed


@pytest.fixture(scope="module")
def doc_text() -> str:
    assert DOC.exists(), "docs/metrics.md is missing"
    return DOC.read_text()


def _exposed_names(parsed) -> set[str]:
    return {s.name for f in parsed for s in f.samples}


def _doc_metric_names(doc: str) -> set[str]:
    """gunicorn_* names written in backticks or in a table row of the docs."""
    names: set[str] = set()
    for span in BACKTICK_RE.findall(doc):
        names.update(DOC_NAME_RE.findall(span))
    for line in doc.splitlines():
        if line.lstrip().startswith("|"):
            names.update(DOC_NAME_RE.findall(line))
    return names


def test_snapshot_exercises_every_family(rendered):
    families, _ = rendered
    empty = [f.name for f in families if not f.samples]
    assert not empty, f"full_snapshot() leaves these families without samples: {empty}"
    # every gunicorn_* name spelled in exporter/metrics/ is rendered by the snapshot above
    in_source = set(SOURCE_NAME_RE.findall(
        "\n".join(p.read_text() for p in sorted(METRICS_DIR.glob("*.py")))))
    rendered_names = {f.name for f in families}
    assert in_source <= rendered_names, f"not rendered: {sorted(in_source - rendered_names)}"


def test_every_exposed_metric_is_documented(rendered, doc_text):
    _, parsed = rendered
    missing = sorted(n for n in _exposed_names(parsed)
                     if not re.search(rf"(?<![\w]){re.escape(n)}(?![\w])", doc_text))
    assert not missing, f"exposed but not in docs/metrics.md: {missing}"


def test_docs_name_only_exposed_metrics(rendered, doc_text):
    _, parsed = rendered
    exposed = _exposed_names(parsed)
    documented = _doc_metric_names(doc_text)
    assert documented, "found no gunicorn_* names in docs/metrics.md"
    unknown = sorted(documented - exposed)
    assert not unknown, f"docs/metrics.md names metrics the exporter does not expose: {unknown}"


def test_every_family_has_help(rendered):
    _, parsed = rendered
    no_help = sorted(f.name for f in parsed if not f.documentation.strip())
    assert not no_help, f"families without help text: {no_help}"


def test_metric_names_follow_the_rules(rendered):
    families, parsed = rendered
    problems = naming_problems(families)
    # the exposed form as well (Info gets _info appended, counters _total)
    for f in parsed:
        if f.name.startswith("gunicorn_"):
            for s in f.samples:
                if s.name.endswith("_total_total") or s.name.endswith("_info_info"):
                    problems.append(f"{s.name}: doubled suffix")
    assert not problems, "\n".join(problems)


def naming_problems(families) -> list[str]:
    """Naming rules for the families exporter/metrics/ renders."""
    problems = []
    for f in families:
        name = f.name
        words = name.split("_")
        if not name.startswith("gunicorn_"):
            problems.append(f"{name}: no gunicorn_ prefix")
        if not re.fullmatch(r"[a-z][a-z0-9]*(_[a-z0-9]+)*", name):
            problems.append(f"{name}: not snake case")
        for label in {k for s in f.samples for k in s.labels}:
            if label in ("job", "instance") or not re.fullmatch(r"[a-z][a-z0-9_]*", label):
                problems.append(f"{name}: bad label {label!r}")
        if f.type == "counter":
            # prometheus_client appends _total on exposition; the family name must not
            # carry it already (that would expose _total_total)
            if name.endswith("_total"):
                problems.append(f"{name}: counter family name already ends in _total")
            if any(not s.name.endswith("_total") for s in f.samples
                   if not s.name.endswith("_created")):
                problems.append(f"{name}: counter sample without _total")
        else:
            if name.endswith("_total") or any(s.name.endswith("_total") for s in f.samples):
                problems.append(f"{name}: _total on a {f.type}")
        if f.type == "info" or name.endswith("_info"):
            if any(s.value != 1 for s in f.samples):
                problems.append(f"{name}: info metric whose value is not 1")
        bad_units = NON_BASE_UNITS.intersection(words)
        if bad_units:
            problems.append(f"{name}: non-base unit {sorted(bad_units)}")
        if NEEDS_UNIT.intersection(words) and not any(u in words for u in BASE_UNITS):
            problems.append(f"{name}: measures {sorted(NEEDS_UNIT.intersection(words))} "
                            "but carries no base unit")
        for unit in BASE_UNITS:
            # a unit word goes last (a counter's _total comes after it on exposition)
            if unit in words and words[-1] != unit:
                problems.append(f"{name}: unit {unit!r} is not the last word")
    return problems
