"""--gunicorn.worker-series on literal snapshots (fast): what each mode renders, the
app-level series made from the workers, and generate/ruletests.py, which feeds the
promtool tests the same app-level series (checked here against the exporter's own
renderer, so that the rule tests replay what the exporter serves).

The real scrape of a busy app in mode none is tests/test_alerts.py
(test_rules_read_only_metrics_the_exporter_exports)."""

from __future__ import annotations

import math

import pytest
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from exporter.metrics import KEPT_PER_WORKER, render
from exporter.metrics.encode import _Families
from exporter.snapshot import AppSnapshot, CollectorResult, GunicornSnapshot, Snapshot, WorkerSnapshot
from generate import recording, ruletests
from generate.alerts import GROUPS
from tests.test_alerts import metric_names
from tests.test_docs import full_snapshot


def samples(snapshot: Snapshot, worker_series: bool = True) -> dict:
    text = generate_latest(_Families(list(render(snapshot, worker_series)))).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def worker(slot, pid, *, active, closed=0, idle=None, beat=None, rss=100, fds=10, limit=100,
           db=0, threads=1, uss=None) -> WorkerSnapshot:
    return WorkerSnapshot(slot=slot, pid=pid, start_time=1.0e9, rss_bytes=rss, cpu_seconds=1.0,
                          threads=threads, open_fds=fds, fd_limit=limit, heartbeat_age=beat,
                          connections_active=active, connections_client_closed=closed,
                          connections_idle=idle, db_connections=db, unique_memory_bytes=uss)


def one_app(*workers, capacity=2.0) -> Snapshot:
    app = AppSnapshot(app="api", up=True, master_pid=10, worker_class="gthread", capacity=capacity,
                      workers=list(workers), workers_cpu_seconds=7.5)
    return Snapshot(results={"gunicorn": CollectorResult(
        "gunicorn", True, 0.0, data=GunicornSnapshot(apps=[app, AppSnapshot(app="old", up=False)]))})


def test_mode_none_serves_no_family_with_a_worker_label():
    snap = full_snapshot()
    every, app_level = samples(snap), samples(snap, worker_series=False)
    per_worker = {k for k in every if "worker" in dict(k[1])}
    assert per_worker, "the full snapshot has per-worker series"
    # the one kept: a stuck worker's frame (a cause no app-level series can name)
    kept = {k for k in per_worker if k[0] in KEPT_PER_WORKER}
    assert kept and not [k for k in app_level if "worker" in dict(k[1]) and k not in kept]
    assert set(app_level) == set(every) - (per_worker - kept)     # nothing else goes
    # whole families go, not only their samples: no HELP/TYPE without series
    text = generate_latest(_Families(list(render(snap, False)))).decode()
    assert "gunicorn_worker_pid" not in text and "gunicorn_postgres_worker_connections" not in text


def test_the_pid_is_a_value_so_a_recycled_worker_makes_no_new_series():
    before = samples(one_app(worker(0, 101, active=1), worker(1, 102, active=0)))
    after = samples(one_app(worker(0, 103, active=1), worker(1, 102, active=0)))  # slot 0 recycled
    assert set(before) == set(after)
    pid = ("gunicorn_worker_pid", (("app", "api"), ("worker", "0")))
    assert (before[pid], after[pid]) == (101, 103)
    assert not [k for k in before if "pid" in dict(k[1])]


def test_app_level_series_from_the_workers():
    # gthread, 2 threads: w0 holds 3 requests (one waits for a thread) and 4 idle
    # keep-alive connections; w1 holds 1 request and a gone client: 2, busy too
    got = samples(one_app(
        worker(0, 101, active=3, idle=4, beat=4.0, rss=300, fds=90, limit=100, db=3, threads=3,
               uss=50),
        worker(1, 102, active=1, closed=1, idle=0, beat=9.0, rss=200, fds=20, limit=100, db=1,
               threads=3),
        worker(2, 103, active=0, idle=0, beat=1.0, rss=100, fds=10, limit=None, db=0, threads=3)))

    def v(name, **labels):
        return got.get((name, tuple(sorted({"app": "api", **labels}.items()))))
    assert v("gunicorn_workers_connections", state="active") == 4
    assert v("gunicorn_workers_connections", state="client_closed") == 1
    assert v("gunicorn_workers_connections", state="idle") == 4
    assert v("gunicorn_workers_connections_max") == 7
    assert v("gunicorn_workers_requests_waiting") == 1
    assert v("gunicorn_workers_busy") == 2
    assert v("gunicorn_workers_busy_heartbeat_age_seconds") == 13.0     # 4 + 9: the busy ones
    assert v("gunicorn_workers_heartbeat_age_max_seconds") == 9.0
    assert v("gunicorn_workers_resident_memory_bytes") == 600
    assert v("gunicorn_workers_resident_memory_max_bytes") == 300
    assert v("gunicorn_workers_unique_memory_bytes") == 50              # the one read so far
    assert v("gunicorn_workers_threads") == 9
    assert v("gunicorn_workers_open_fds_max") == 90
    assert v("gunicorn_workers_open_fds_max_ratio") == 0.9
    assert (v("gunicorn_workers_db_connections"), v("gunicorn_workers_db_connections_max")) == (4, 3)
    assert v("gunicorn_workers_cpu_seconds_total") == 7.5
    assert v("gunicorn_workers_proportional_memory_bytes") is None      # never read yet
    assert not [k for k in got if dict(k[1]).get("app") == "old" and k[0] != "gunicorn_up"]


def test_without_readable_connections_or_capacity_those_series_are_absent():
    got = samples(one_app(worker(0, 101, active=None, closed=None, beat=None), capacity=None))
    names = {name for name, labels in got if dict(labels).get("app") == "api"}
    assert not names & {"gunicorn_workers_connections", "gunicorn_workers_connections_max",
                        "gunicorn_workers_requests_waiting", "gunicorn_workers_heartbeat_age_max_seconds"}
    assert "gunicorn_workers_resident_memory_bytes" in names


def test_no_rule_reads_a_per_worker_series():
    """What lets every rule work in both modes: none reads a family with a worker label."""
    exprs = [e for _, e in recording.RECORDING_RULES] + [a.expr for _, alerts in GROUPS for a in alerts]
    per_worker = {n for n, labels in samples(full_snapshot()) if "worker" in dict(labels)}
    for expr in exprs:
        assert not metric_names(expr) & per_worker, expr
        assert "worker:" not in expr and "(worker" not in expr, expr


# ---- generate/ruletests.py ----------------------------------------------------------

@pytest.mark.parametrize("text,expected", [
    ("1x3", [1, 1, 1, 1]),
    ("-2+4x3", [-2, 2, 6, 10]),
    ("1-2x2", [1, -1, -3]),
    ("1e+06+1e3x1", [1e6, 1.001e6]),
    ("1 _x3 stale 4", [1, "_", "_", "_", "stale", 4]),
    ("Inf NaN", [math.inf, "nan"]),
])
def test_expanding_notation(text, expected):
    got = ruletests.expand(text)
    assert [("nan" if isinstance(g, float) and math.isnan(g) else g) for g in got] == expected


def test_series_labels_round_trip():
    text = 'gunicorn_up{job="gunicorn",app="a\\"b",listener="unix:/x"}'
    name, labels = ruletests.parse_series(text)
    assert (name, labels) == ("gunicorn_up", {"job": "gunicorn", "app": 'a\\"b', "listener": "unix:/x"})
    assert ruletests.format_series(name, labels) == text


def test_derived_series_are_what_the_exporter_renders():
    """The same workers through generate/ruletests.py's `derive` and through the
    exporter: every app-level gunicorn_workers_* series equal (the CPU counter, which
    the exporter accumulates across scrapes, aside)."""
    snap = one_app(
        worker(0, 101, active=3, idle=4, beat=4.0, rss=300, fds=90, limit=100, db=3, uss=50),
        worker(1, 102, active=1, closed=1, idle=0, beat=9.0, rss=200, fds=20, limit=100, db=1),
        worker(2, 103, active=0, idle=0, beat=1.0, rss=100, fds=10, limit=None, db=0))
    exposed = samples(snap)
    given = [(name, dict(labels), [value]) for (name, labels), value in exposed.items()
             if "worker" in dict(labels) or name == "gunicorn_worker_capacity"]
    derived = {(name, tuple(sorted(labels.items()))): values[0]
               for name, labels, values in ruletests.derive(given)}
    expected = {k: v for k, v in exposed.items()
                if k[0].startswith("gunicorn_workers_") and k[0] not in (
                    "gunicorn_workers_busy", "gunicorn_workers_cpu_seconds_total")}
    assert derived == expected


def test_for_mode_derives_strips_and_keeps_what_a_test_gives():
    doc = {"rule_files": ["../gunicorn.rules.yml"], "tests": [{"input_series": [
        {"series": 'gunicorn_worker_connections{app="a",worker="0",state="active"}', "values": "1 2 stale"},
        {"series": 'gunicorn_worker_connections{app="a",worker="1",state="active"}', "values": "1 _ 5"},
        {"series": 'gunicorn_worker_db_connections{app="a",worker="0"}', "values": "3x2"},
        {"series": 'gunicorn_workers_db_connections{app="a"}', "values": "9x2"}]}]}
    none = ruletests.for_mode(doc, "none")
    series = {i["series"]: i["values"] for i in none["tests"][0]["input_series"]}
    assert not [s for s in series if "worker=" in s]
    assert series['gunicorn_workers_connections{app="a",state="active"}'] == "2 2 5"
    assert series['gunicorn_workers_connections_max{app="a"}'] == "1 2 5"
    assert series['gunicorn_workers_db_connections{app="a"}'] == "9x2"     # the test's own
    assert series['gunicorn_workers_db_connections_max{app="a"}'] == "3 3 3"
    assert none["rule_files"] == [str(ruletests.RULES)]
    every = ruletests.for_mode(doc, "all")["tests"][0]["input_series"]
    assert len(every) == len(none["tests"][0]["input_series"]) + 3
    with pytest.raises(ValueError):
        ruletests.for_mode(doc, "some")
