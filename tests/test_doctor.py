"""gunicorn-exporter doctor and gunicorn_advice: every rule on literal snapshots, then
provoked by a real misconfigured gunicorn (a real throwaway Postgres for C5 and C6),
checked through the command line's JSON (validated against docs/doctor.schema.json) and
the daemon's /metrics. Oracles share no code with the exporter: `ss`, /proc read here,
pg_stat_activity queried by the test, the settings the test itself gave gunicorn.

The host runs other test runs' masters: the doctor is limited to this test's apps with
--gunicorn.include, and every app has a unique name.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import threading
import urllib.request
import uuid
from pathlib import Path

import pytest

from exporter.doctor import dbrules, nginx, rules
from exporter.doctor.evaluate import RULES, evaluate
from exporter.doctor.facts import (cgroup_mounts, cpu_list, parse_cgroup_paths, parse_cpu_max,
                                   _quota)
from exporter.doctor.model import (CATALOGUE, CpuFact, Facts, MemoryRoom, NginxConfig,
                                   ProxyPass, Thresholds, View, rule)
from exporter.snapshot import (AppSnapshot, CollectorResult, DbBudget, HostSnapshot,
                               ListenerSnapshot, PostgresAttribution, PostgresServerSnapshot,
                               PostgresSnapshot, WorkerSnapshot)
from tests.cli import run_cli
from tests.conftest import require, require_module
from tests.harness.clients import SlowClients, http_get
from tests.harness.procs import poll
from tests.harness.servers import running_exporter
from tests.harness.ss import ss_listen_queue, ss_sockets, ss_worker_active_connections

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = json.loads((ROOT / "docs" / "doctor.schema.json").read_text())
DOC = (ROOT / "docs" / "doctor.md").read_text()


def _validate(findings) -> None:
    import jsonschema
    jsonschema.Draft202012Validator(SCHEMA).validate(findings)


# --- literal snapshots ----------------------------------------------------------------

def _w(slot=0, pid=None, *, active=0, cpu=0.0, threads=1, fds=10, limit=1024, db=0, idle=0):
    return WorkerSnapshot(slot=slot, pid=pid or 1000 + slot, start_time=0, rss_bytes=0,
                          cpu_seconds=cpu, threads=threads, open_fds=fds, fd_limit=limit,
                          heartbeat_age=1.0, connections_active=active,
                          connections_client_closed=0, db_connections=db, connections_idle=idle)


_PIDS = itertools.count(30000)


def _app(name="shop", *, cls="sync", workers=None, source="cmdline", listeners=None, **kw):
    workers = workers if workers is not None else [_w(0), _w(1)]
    settings = dict(dict.fromkeys(("workers", "worker_class", "threads", "worker_connections",
                                   "timeout", "keepalive", "backlog"), source))
    settings.update(kw.pop("settings_source", {}))
    base = dict(app=name, up=True, master_pid=next(_PIDS), worker_class=cls,
                workers_desired=len(workers), timeout=30, keepalive=2, threads=1,
                worker_connections=1000, backlog=2048, workers=workers, settings_source=settings,
                listeners=listeners if listeners is not None else
                [ListenerSnapshot(f"unix:/run/{name}.sock", "unix", 0, 2048)])
    base.update(kw)
    return AppSnapshot(**base)


def _run(fn, *apps, **view):
    view.setdefault("host", HostSnapshot(somaxconn=4096))
    return list(fn(View(apps=list(apps), **view)))


def _one(findings, rule_name, app=None):
    hits = [f for f in findings if f.rule == rule_name and (app is None or f.app == app)]
    assert len(hits) == 1, findings
    _validate([hits[0].as_json()])
    return hits[0]


def test_backlog_capped_literal():
    kernel = {"backlog": "kernel"}
    capped = _app("a", backlog=4096, settings_source=kernel,
                  listeners=[ListenerSnapshot("unix:/a", "unix", 0, 4096)])
    f = _one(_run(rules.backlog_capped, capped), "backlog-capped")
    assert (f.id, f.evidence["queue_limit"].value, f.evidence["somaxconn"].value) == ("W11", 4096, 4096)
    asked = _app("b", backlog=8192, listeners=[ListenerSnapshot("unix:/b", "unix", 0, 4096)])
    assert _one(_run(rules.backlog_capped, asked), "backlog-capped").evidence["backlog"].value == 8192
    fine = _app("c", backlog=2048)
    other_netns = _app("d", backlog=8192, listeners=[ListenerSnapshot("unix:/d", "unix", None, None)])
    assert _run(rules.backlog_capped, fine, other_netns) == []
    # a master in another network namespace: its own somaxconn, never the exporter's
    pod = _app("e", backlog=128, settings_source=kernel, listeners=[ListenerSnapshot("unix:/e", "unix", 0, 128)])
    pod.netns = 4026532000
    assert _run(rules.backlog_capped, pod) == []        # its somaxconn is not known
    pod.somaxconn = 128
    f = _one(_run(rules.backlog_capped, pod), "backlog-capped")
    assert f.evidence["somaxconn"].value == 128 and "master's network namespace" in f.evidence["somaxconn"].source


def test_queue_limit_low_literal():
    asgi = _app("a", cls="asgi", backlog=100, settings_source={"backlog": "kernel"},
                listeners=[ListenerSnapshot("unix:/a", "unix", 0, 100)])
    f = _one(_run(rules.queue_limit_low, asgi), "queue-limit-low")
    assert f.evidence["queue_limit"].value == 100 and "asgi worker" in f.advice
    below = _app("b", backlog=2048, listeners=[ListenerSnapshot("unix:/b", "unix", 0, 128)])
    assert "below the --backlog 2048" in _one(_run(rules.queue_limit_low, below), "queue-limit-low").advice
    mixed = _app("c", backlog=2048, settings_source={"backlog": "kernel"},
                 listeners=[ListenerSnapshot("unix:/c1", "unix", 0, 2048),
                            ListenerSnapshot("127.0.0.1:1", "tcp", 0, 511)])
    f = _one(_run(rules.queue_limit_low, mixed), "queue-limit-low")
    assert f.evidence["listener"].value == "127.0.0.1:1" and "other listeners" in f.advice
    assert _run(rules.queue_limit_low, asgi, t=Thresholds(min_queue_limit=64)) == []
    assert _run(rules.queue_limit_low, _app("d")) == []


def test_timeout_vs_proxy_literal():
    zero, slow, ok = _app("zero", timeout=0), _app("slow", timeout=90), _app("ok", timeout=55)
    found = _run(rules.timeout_vs_proxy, zero, slow, ok)
    assert {f.app for f in found} == {"zero", "slow"}
    f = _one(found, "timeout-vs-proxy", "slow")
    assert f.evidence["proxy_timeout"].value == 60 and "--doctor.proxy-timeout" in f.evidence["proxy_timeout"].source
    cfg = NginxConfig("/etc/nginx/nginx.conf", passes=[
        ProxyPass(("unix:/run/ok.sock",), 30.0, "proxy_read_timeout at /x.conf:3")])
    f = _one(_run(rules.timeout_vs_proxy, ok, facts=Facts(nginx=cfg)), "timeout-vs-proxy")
    assert (f.evidence["proxy_timeout"].value, f.evidence["proxy_timeout"].source) == (30.0, "proxy_read_timeout at /x.conf:3")
    assert _run(rules.timeout_vs_proxy, _app("unknown", timeout=None)) == []


def test_gthread_worker_connections_literal():
    c3 = _app("a", cls="gthread", threads=4, worker_connections=100, keepalive=5)
    w9 = _app("b", cls="gthread", threads=4, worker_connections=100, keepalive=0)
    ok = _app("c", cls="gthread", threads=4, worker_connections=16)
    found = _run(rules.gthread_worker_connections, c3, w9, ok, _app("d", cls="sync"))
    assert [(f.app, f.id) for f in found] == [("a", "C3"), ("b", "W9")]
    assert found[0].evidence["advised_max"].value == 16


def test_fd_limit_literal():
    busy = [_w(0, fds=30, active=5, idle=5, limit=512), _w(1, fds=12, limit=4096)]
    crit = _app("a", cls="gevent", worker_connections=1000, workers=busy)
    f = _one(_run(rules.fd_limit, crit), "fd-limit")
    # the tightest worker's limit; 20 fds held besides clients by worker 0 (30 - 5 - 5)
    assert (f.severity, f.evidence["fd_limit"].value, f.evidence["other_fds"].value) == ("critical", 512, 20)
    warn = _app("b", cls="gthread", worker_connections=900, workers=[_w(0, limit=1024)])
    assert _one(_run(rules.fd_limit, warn), "fd-limit").severity == "warning"
    assert _run(rules.fd_limit, _app("c", cls="gthread", worker_connections=100),
                _app("d", cls="sync", workers=[_w(0, limit=16)])) == []


def test_sync_io_bound_literal():
    before = _app("a", workers=[_w(0, active=1, cpu=1.0), _w(1, active=1, cpu=2.0)])
    after = _app("a", workers=[_w(0, active=1, cpu=1.1), _w(1, active=1, cpu=2.0)])
    f = _one(_run(rules.sync_io_bound, after, previous={"a": before}, interval=5.0), "sync-io-bound")
    assert (f.evidence["busy_ratio"].value, f.evidence["cpu_per_busy_worker"].value) == (1.0, 0.01)
    hot = _app("a", workers=[_w(0, active=1, cpu=5.0), _w(1, active=1, cpu=6.5)])
    idle = _app("a", workers=[_w(0, cpu=1.0), _w(1, cpu=2.0)])
    assert _run(rules.sync_io_bound, hot, previous={"a": before}, interval=5.0) == []
    assert _run(rules.sync_io_bound, idle, previous={"a": idle}, interval=5.0) == []
    assert _run(rules.sync_io_bound, after) == []     # one sample: says nothing


def test_workers_vs_cores_literal():
    few, many = _app("few", workers=[_w(0)]), _app("many", workers=[_w(i) for i in range(7)])
    a, b = _app("a", workers=[_w(0), _w(1)]), _app("b", workers=[_w(0), _w(1)])
    cpus = {few.master_pid: CpuFact(4.0, "affinity 0-3", "0-3"),
            many.master_pid: CpuFact(1.0, "affinity 0", "0"),
            a.master_pid: CpuFact(0.5, "CPU quota 0.5 (/cg/cpu.max)", "q"),
            b.master_pid: CpuFact(0.5, "CPU quota 0.5 (/cg/cpu.max)", "q")}
    found = _run(rules.workers_vs_cores, few, many, a, b, facts=Facts(cpus=cpus))
    assert sorted((f.app, f.id) for f in found) == [("a", "I3"), ("b", "I3"), ("few", "W2"), ("many", "I3")]
    shared = _one(found, "workers-vs-cores", "a")
    assert shared.evidence["workers_on_these_cpus"].value == 4   # 4 > 4 x 0.5 + 1 = 3
    assert _run(rules.workers_vs_cores, few) == []              # no CPU fact: nothing said


def test_w2_says_how_many_more_workers_fit_in_memory_literal():
    MiB = 1024 * 1024
    ws = [_w(0), _w(1), _w(2)]
    for w, uss in zip(ws, (30, 40, 50)):
        w.unique_memory_bytes = uss * MiB
    few = _app("few", workers=ws)
    cpus = {few.master_pid: CpuFact(4.0, "affinity 0-3", "0-3")}
    room = {few.master_pid: MemoryRoom(200 * MiB, "cgroup /x/memory.max less memory.current")}
    f = _one(_run(rules.workers_vs_cores, few, facts=Facts(cpus=cpus, memory_room=room)),
             "workers-vs-cores")
    assert f.id == "W2" and f.evidence["worker_memory"].value == 40 * MiB   # the median USS
    assert f.evidence["more_workers_fit"].value == 5 and "5 more worker(s) fit" in f.advice
    tight = {few.master_pid: MemoryRoom(10 * MiB, "the host's available memory")}
    f = _one(_run(rules.workers_vs_cores, few, facts=Facts(cpus=cpus, memory_room=tight)),
             "workers-vs-cores")
    assert f.evidence["more_workers_fit"].value == 0 and "no more fit in memory" in f.advice
    for w in ws:                    # no USS in the snapshot: the doctor's own reading
        w.unique_memory_bytes = None
    f = _one(_run(rules.workers_vs_cores, few, facts=Facts(
        cpus=cpus, memory_room=room, worker_uss={few.master_pid: [100 * MiB]})), "workers-vs-cores")
    assert f.evidence["more_workers_fit"].value == 2
    f = _one(_run(rules.workers_vs_cores, few, facts=Facts(cpus=cpus)), "workers-vs-cores")
    assert "more_workers_fit" not in f.evidence     # no memory facts: nothing said about it


def test_cpu_lists_are_written_as_the_kernel_writes_them():
    assert cpu_list([0, 1, 2, 4]) == "0-2,4" and cpu_list([3]) == "3"
    assert cpu_list([7, 6, 0, 2, 1]) == "0-2,6-7" and cpu_list([]) == ""


def test_control_socket_shared_literal():
    a, b, c = _app("a"), _app("b"), _app("c")
    ctl = {a.master_pid: "/home/u/.gunicorn/gunicorn.ctl", b.master_pid: "/home/u/.gunicorn/gunicorn.ctl",
           c.master_pid: "/run/c/gunicorn.ctl"}
    found = _run(rules.control_socket_shared, a, b, c, facts=Facts(control_sockets=ctl))
    assert sorted(f.app for f in found) == ["a", "b"]
    assert _one(found, "control-socket-shared", "a").evidence["other_apps"].value == ["b"]


def _pg(attributed=None, max_conn=40, budgets=(), servers=1):
    out = PostgresSnapshot(budgets=list(budgets))
    for i in range(servers):
        s = PostgresServerSnapshot(server=f"db{i}:5432/app", up=True, max_connections=max_conn,
                                   superuser_reserved_connections=3, reserved_connections=None)
        apps: dict[str, int] = {}
        for (app, _slot), n in (attributed or {}).items():
            apps[app] = apps.get(app, 0) + n
        s.attribution = PostgresAttribution(apps=apps, workers=dict(attributed or {}))
        out.servers.append(s)
    return out


def test_green_db_connections_literal():
    green = _app("g", cls="gevent", workers=[_w(0, threads=2, db=3), _w(1, threads=2, db=0)])
    f = _one(_run(dbrules.green_db_connections, green, postgres=_pg({("g", 0): 9})), "green-db-connections")
    assert (f.id, f.severity, f.evidence["db_connections"].value) == ("C6", "critical", 9)
    assert "pg_stat_activity" in f.evidence["db_connections"].source
    alone = dataclasses.replace(green, workers=[_w(0, threads=1, db=5)])
    f = _one(_run(dbrules.green_db_connections, alone), "green-db-connections")  # no Postgres: sockets
    assert "sockets" in f.evidence["db_connections"].source
    declared = _pg({("g", 0): 9}, budgets=[DbBudget("g", 2, 5, "declared")])
    assert _run(dbrules.green_db_connections, green, postgres=declared) == []   # 9 <= 2 x 5
    assert _run(dbrules.green_db_connections, _app("s", workers=[_w(0, db=50)])) == []


def test_db_budget_literal():
    apps = [_app("a"), _app("b"), _app("idle")]
    budgets = [DbBudget("a", 2, 10, "declared"), DbBudget("b", 4, 4, "threads"),
               DbBudget("idle", 8, 1, "threads")]
    pg = _pg({("a", 0): 1, ("b", 0): 2}, budgets=budgets)    # idle holds none: not counted
    found = _run(dbrules.db_budget_vs_max_connections, *apps, postgres=pg)
    assert sorted(f.app for f in found) == ["a", "b"]
    f = _one(found, "db-budget-vs-max-connections", "a")     # 20 + 16 = 36 > 0.8 x 37
    assert (f.severity, f.evidence["budgets_total"].value, f.evidence["max_connections"].value) == ("warning", 36, 40)
    pg = _pg({("a", 0): 1, ("b", 0): 2}, max_conn=30, budgets=budgets)
    assert {f.severity for f in _run(dbrules.db_budget_vs_max_connections, *apps, postgres=pg)} == {"critical"}
    # a declared budget counts with a single server even when no connection is open now
    pg = _pg({}, max_conn=20, budgets=[DbBudget("a", 2, 10, "declared")])
    assert [f.app for f in _run(dbrules.db_budget_vs_max_connections, *apps, postgres=pg)] == ["a"]
    pg = _pg({}, max_conn=20, budgets=[DbBudget("a", 2, 10, "declared")], servers=2)
    assert _run(dbrules.db_budget_vs_max_connections, *apps, postgres=pg) == []


def test_a_broken_rule_costs_only_itself():
    @rule("test-broken")
    def broken(v):
        yield from rules.timeout_vs_proxy(v)
        raise RuntimeError("bug")
    try:
        found = evaluate(View(apps=[_app("x", timeout=0)]))
        assert [f.rule for f in found] == ["timeout-vs-proxy"]
    finally:
        del RULES["test-broken"]


def test_schema_docs_and_registry_agree():
    items = SCHEMA["items"]["properties"]
    assert sorted(items["rule"]["enum"]) == sorted(RULES)
    assert items["id"]["enum"] == list(CATALOGUE)
    for name, (ids, _fn) in RULES.items():
        assert ids and set(ids) <= set(CATALOGUE), name
        assert f"`{name}`" in DOC, f"docs/doctor.md does not describe rule {name}"
    from exporter.options import OPTIONS
    for o in OPTIONS:
        if o.key.startswith("doctor."):
            assert f"`--{o.key}" in DOC, f"docs/doctor.md does not document --{o.key}"
    assert "doctor.md" in (ROOT / "README.md").read_text()
    assert not re.search(r"\]\((?!#)[a-z]+://", DOC), "docs/doctor.md links outside the repository"


def test_advice_compares_a_collection_with_the_one_before(tmp_path):
    """collect() hands the join the collection learned before; the join is a pure
    function of the scrape's results (the same inputs, the same findings)."""
    import asyncio
    from exporter.collectors import advice
    from exporter.linux.procfs import ProcFS
    from exporter.snapshot import GunicornSnapshot, Snapshot
    c = advice.AdviceCollector(ProcFS(str(tmp_path)), nginx_config="")  # no host facts

    def scrape(g, at):
        ctx = asyncio.run(c.collect())
        found = advice.join(ctx, {"gunicorn": g}, thresholds=Thresholds(), now=at)
        c.learn(Snapshot(results={"gunicorn": CollectorResult("gunicorn", True, 0.0, data=g)},
                         collected_at=at))
        return ctx, found
    first = GunicornSnapshot(apps=[_app("a", workers=[_w(0, active=1, cpu=1.0), _w(1, active=1)])])
    ctx, found = scrape(first, 100.0)
    assert ctx.previous is None and found.findings == []
    second = GunicornSnapshot(apps=[_app("a", workers=[_w(0, active=1, cpu=1.2), _w(1, active=1)])])
    ctx, found = scrape(second, 115.0)
    assert ctx.previous is first and ctx.previous_at == 100.0
    assert [(app, rule) for app, _id, rule, _sev in found.findings] == [("a", "sync-io-bound")]
    again = advice.join(ctx, {"gunicorn": second}, thresholds=Thresholds(), now=115.0)
    assert again == found and ctx.previous is first


def test_gunicorn_advice_is_rendered_from_a_snapshot():
    from exporter.metrics import render
    from tests.test_docs import full_snapshot
    (family,) = [f for f in render(full_snapshot()) if f.name == "gunicorn_advice"]
    labels = sorted(tuple(sorted(s.labels.items())) for s in family.samples)
    assert (("app", "shop"), ("id", "C3"), ("rule", "gthread-worker-connections"),
            ("severity", "warning")) in labels
    failed = full_snapshot()
    failed.results["advice"] = CollectorResult("advice", False, 8.0, error="timed out")
    # no advice rather than advice without facts
    assert not [f for f in render(failed) if f.name == "gunicorn_advice"]


# --- nginx and host facts on literal input --------------------------------------------

def test_nginx_parse_includes_and_inheritance(tmp_path):
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "nginx.conf").write_text(
        "events {}\nhttp {\n  proxy_read_timeout 1m30s;\n"
        "  upstream shop { server unix:/run/shop.sock max_fails=2; server 127.0.0.1:8001; }\n"
        "  include conf.d/*.conf;\n}\n")
    (tmp_path / "conf.d" / "a.conf").write_text(
        'server { # a comment ; {\n  location / { proxy_pass http://shop; }\n'
        '  location /api { proxy_pass "http://unix:/run/api.sock:/v1"; proxy_read_timeout 500ms; }\n'
        '  location /v { proxy_pass http://$backend; set $x "${y}z"; }\n'
        '  location /t { proxy_pass http://localhost:9000/; }\n}\n')
    cfg = nginx.load(str(tmp_path / "nginx.conf"))
    assert cfg.problems == [] and len(cfg.files) == 2
    assert nginx.timeout_for(cfg, ["unix:/run/shop.sock"])[0] == 90.0
    t, where = nginx.timeout_for(cfg, ["unix:/run/api.sock"])
    assert t == 0.5 and where.startswith(f"proxy_read_timeout at {tmp_path}/conf.d/a.conf:3")
    assert nginx.timeout_for(cfg, ["0.0.0.0:8001"])[0] == 90.0      # wildcard listener, loopback target
    assert nginx.timeout_for(cfg, ["[::]:9000"])[0] == 90.0
    assert nginx.timeout_for(cfg, ["10.0.0.1:8001", "unix:/run/other.sock"]) is None
    assert [nginx.parse_time(x) for x in ("60", "60s", "2m", "1h30m", "x", "")] == [60, 60, 120, 5400, None, None]


def test_nginx_untrusted_files_are_bounded(tmp_path):
    os.mkfifo(tmp_path / "fifo.conf")          # would block a plain open(): refused at once
    (tmp_path / "big.conf").write_bytes(b"#" * (nginx.MAX_FILE + 1))
    (tmp_path / "bad.conf").write_text("http { server { ")
    (tmp_path / "loop.conf").write_text("include loop.conf;\n")
    (tmp_path / "nginx.conf").write_text(
        "include fifo.conf; include big.conf; include bad.conf; include loop.conf;\n"
        "http { server { location / { proxy_pass http://127.0.0.1:1; } } }\n")
    cfg = nginx.load(str(tmp_path / "nginx.conf"))
    text = "\n".join(cfg.problems)
    for what in ("fifo.conf: not a regular file", "big.conf: larger than", "bad.conf: unexpected end",
                 "loop.conf: read already"):
        assert what in text, text
    assert nginx.timeout_for(cfg, ["127.0.0.1:1"]) == (60.0, "nginx's default (no proxy_read_timeout)"
                                                      f" for the proxy_pass at {tmp_path}/nginx.conf:2")
    many = tmp_path / "many"
    many.mkdir()
    for i in range(nginx.MAX_FILES + 5):
        (many / f"{i:03}.conf").write_text("")
    (tmp_path / "m.conf").write_text("include many/*.conf;")
    cfg = nginx.load(str(tmp_path / "m.conf"))
    assert len(cfg.files) == nginx.MAX_FILES and "more than 64 files" in cfg.problems[0]
    assert nginx.load(str(tmp_path / "absent.conf")).problems
    # a device is refused before its driver's open() runs (O_PATH first)
    (tmp_path / "dev.conf").symlink_to("/dev/null")
    (tmp_path / "d.conf").write_text("include dev.conf;")
    assert "dev.conf: not a regular file" in "\n".join(nginx.load(str(tmp_path / "d.conf")).problems)


def test_cgroup_cpu_parsers(tmp_path):
    assert [parse_cpu_max(t) for t in ("max 100000", "150000 100000", "50000 100000\n", "x y")] == \
        [None, 1.5, 0.5, None]
    assert parse_cgroup_paths("12:cpu,cpuacct:/a\n0::/b/c\n3:memory:/m\n") == ("/b/c", "/a")
    info = ("30 23 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n"
            "31 23 0:27 /docker /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu,cpuacct\n")
    assert cgroup_mounts(info) == (("/", "/sys/fs/cgroup"), ("/docker", "/sys/fs/cgroup/cpu"))
    (tmp_path / "app" / "leaf").mkdir(parents=True)
    (tmp_path / "cpu.max").write_text("max 100000\n")
    (tmp_path / "app" / "cpu.max").write_text("200000 100000\n")     # an ancestor's quota caps
    (tmp_path / "app" / "leaf" / "cpu.max").write_text("max 100000\n")
    assert _quota(("/", str(tmp_path)), "/app/leaf", True) == (2.0, str(tmp_path / "app" / "cpu.max"))
    # a path relative to our own cgroup namespace is not followed out of the mount, and a
    # FIFO where a cpu.max should be is refused, not waited on
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "cpu.max").write_text("100000 100000\n")
    mount = tmp_path / "mnt"
    mount.mkdir()
    assert _quota(("/", str(mount)), "/../outside", True) is None
    (mount / "f").mkdir()
    os.mkfifo(mount / "f" / "cpu.max")
    assert _quota(("/", str(mount)), "/f", True) is None


# --- real gunicorn --------------------------------------------------------------------

def _name(tag: str) -> str:
    return f"doc-{tag}-{uuid.uuid4().hex[:8]}"


def doctor(*names: str, args=(), interval="0", nginx_config="none", caddy_config="none",
           timeout=60):
    """Run `gunicorn-exporter doctor --format json` for these apps only: (exit code,
    findings, stderr); the output is validated against the schema."""
    include = "|".join(re.escape(n) for n in names)
    r = subprocess.run([sys.executable, "-m", "exporter", "doctor", "--format", "json",
                        "--gunicorn.include", f"({include})", "--doctor.interval", interval,
                        "--doctor.nginx-config", nginx_config,
                        "--doctor.caddy-config", caddy_config, *args],
                       capture_output=True, text=True, timeout=timeout)
    assert "Traceback" not in r.stderr, r.stderr
    findings = json.loads(r.stdout)
    _validate(findings)
    return r.returncode, findings, r.stderr


def _find(findings, app, rule_name):
    return next((f for f in findings if f["app"] == app and f["rule"] == rule_name), None)


def _exit_code(findings):
    sev = {f["severity"] for f in findings}
    return 2 if "critical" in sev else (1 if sev else 0)


@contextlib.contextmanager
def inherited(cpus=None, nofile=None):
    """Masters started inside inherit this CPU affinity and soft fd limit (set on this
    thread while it forks them, restored after)."""
    old_cpus, old_nofile = os.sched_getaffinity(0), resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        if cpus is not None:
            os.sched_setaffinity(0, cpus)
        if nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, old_nofile[1]))
        yield
    finally:
        os.sched_setaffinity(0, old_cpus)
        resource.setrlimit(resource.RLIMIT_NOFILE, old_nofile)


def _somaxconn() -> int:
    return int(Path("/proc/sys/net/core/somaxconn").read_text())


def _master_of(name: str) -> int:
    import psutil
    for p in psutil.process_iter(["cmdline"]):
        if f"master [{name}]" in " ".join(p.info["cmdline"] or []):
            return p.pid
    raise AssertionError(f"no master of {name}")


def _one_cpu() -> set[int]:
    return {min(os.sched_getaffinity(0))}


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_well_configured_app_has_no_findings(gunicorn_factory, tmp_path):
    name = _name("good")
    backlog = min(_somaxconn(), 2048) // 2
    with inherited(cpus=_one_cpu()):   # 3 workers = 2 x 1 CPU + 1
        g = gunicorn_factory(worker_class="sync", workers=3, name=name, timeout=30,
                             extra_args=["--backlog", str(backlog)])
    conf = tmp_path / "nginx.conf"     # nginx in front, with a longer timeout than gunicorn's
    conf.write_text(f"events {{}}\nhttp {{ server {{ location / {{ proxy_read_timeout 60s;\n"
                    f"  proxy_pass http://unix:{g.unix_path}:/; }} }} }}\n")
    rc, findings, stderr = doctor(name, interval="1s", nginx_config=str(conf))
    assert (rc, findings) == (0, []), stderr
    assert f"checked 1 app(s): {name}" in stderr
    r = subprocess.run([sys.executable, "-m", "exporter", "doctor", "--gunicorn.include", re.escape(name),
                        "--doctor.interval", "0", "--doctor.nginx-config", str(conf)],
                       capture_output=True, text=True, timeout=60)
    assert (r.returncode, r.stdout) == (0, "No findings.\n"), r.stderr


@pytest.mark.slow
def test_w11_backlog_capped_by_somaxconn(gunicorn_factory):
    name, somax = _name("w11"), _somaxconn()
    g = gunicorn_factory(worker_class="sync", workers=1, name=name, extra_args=["--backlog", str(somax * 2)])
    assert ss_listen_queue(g.listener)[1] == somax      # oracle: the kernel's limit is somaxconn
    rc, findings, _ = doctor(name)
    f = _find(findings, name, "backlog-capped")
    assert f and f["id"] == "W11" and rc == _exit_code(findings) >= 1, findings
    assert f["evidence"]["queue_limit"]["value"] == f["evidence"]["somaxconn"]["value"] == somax


@pytest.mark.slow
def test_w11_asgi_worker_lowers_the_queue_limit(gunicorn_factory):
    name = _name("asgi")
    g = gunicorn_factory(worker_class="asgi", workers=1, name=name, app="asgi_app:app")
    limit = poll(lambda: (q := ss_listen_queue(g.listener)) and q[1] == 100 and q[1], 10,
                 message="the asgi worker did not lower the backlog")
    _rc, findings, _ = doctor(name)
    f = _find(findings, name, "queue-limit-low")
    assert f and f["evidence"]["queue_limit"]["value"] == limit and "asgi worker" in f["advice"], findings


@pytest.mark.slow
def test_w8_timeout_zero_and_above_the_proxy(gunicorn_factory, tmp_path):
    zero, slow, behind = _name("t0"), _name("t90"), _name("nginx")
    gunicorn_factory(worker_class="sync", workers=1, name=zero, timeout=0)
    gunicorn_factory(worker_class="sync", workers=1, name=slow, timeout=90)
    g = gunicorn_factory(worker_class="sync", workers=1, name=behind, timeout=30, bind="tcp")
    (tmp_path / "sites").mkdir()
    conf = tmp_path / "nginx.conf"
    conf.write_text(f"pid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\nevents {{}}\n"
                    f"http {{\n  access_log off;\n  upstream app {{ server {g.bind}; }}\n"
                    "  include sites/*.conf;\n}\n")
    (tmp_path / "sites" / "app.conf").write_text(
        "server {\n  listen 127.0.0.1:1;\n  location / {\n    proxy_read_timeout 20s;\n"
        "    proxy_pass http://app;\n  }\n}\n")
    if shutil.which("nginx") or os.path.exists("/usr/sbin/nginx"):   # the config is real nginx
        t = subprocess.run([shutil.which("nginx") or "/usr/sbin/nginx", "-t", "-c", str(conf),
                            "-e", str(tmp_path / "e.log")], capture_output=True, text=True, timeout=30)
        assert t.returncode == 0, t.stderr
    _rc, findings, _ = doctor(zero, slow, behind, nginx_config=str(conf))
    for app, timeout, proxy in ((zero, 0, 60), (slow, 90, 60), (behind, 30, 20)):
        f = _find(findings, app, "timeout-vs-proxy")
        assert f and f["id"] == "W8", (app, findings)
        assert (f["evidence"]["timeout"]["value"], f["evidence"]["proxy_timeout"]["value"]) == (timeout, proxy)
    where = _find(findings, behind, "timeout-vs-proxy")["evidence"]["proxy_timeout"]["source"]
    assert f"{tmp_path}/sites/app.conf:4" in where, where


@pytest.mark.slow
def test_c3_w9_gthread_worker_connections(gunicorn_factory):
    c3, w9 = _name("c3"), _name("w9")
    gunicorn_factory(worker_class="gthread", workers=1, threads=2, worker_connections=100, name=c3)
    gunicorn_factory(worker_class="gthread", workers=1, threads=2, worker_connections=100, name=w9,
                     extra_args=["--keep-alive", "0"])
    rc, findings, _ = doctor(c3, w9)
    f, g = _find(findings, c3, "gthread-worker-connections"), _find(findings, w9, "gthread-worker-connections")
    assert f["id"] == "C3" and g["id"] == "W9" and rc == 1, findings
    assert (f["evidence"]["worker_connections"]["value"], f["evidence"]["threads"]["value"]) == (100, 2)
    assert f["evidence"]["keepalive"]["value"] == 2 and g["evidence"]["keepalive"]["value"] == 0


@pytest.mark.slow
def test_w10_fd_limit_below_worker_connections(gunicorn_factory):
    require_module("gevent")
    name = _name("w10")
    with inherited(nofile=512):
        g = gunicorn_factory(worker_class="gevent", workers=1, worker_connections=1000, name=name)
    (pid,) = g.worker_pids()
    limits = Path(f"/proc/{pid}/limits").read_text()
    assert re.search(r"Max open files\s+512\s", limits), limits      # oracle: what the worker has
    rc, findings, _ = doctor(name)
    f = _find(findings, name, "fd-limit")
    assert f and (f["id"], f["severity"], rc) == ("W10", "critical", 2), findings
    assert (f["evidence"]["fd_limit"]["value"], f["evidence"]["worker_connections"]["value"]) == (512, 1000)


@pytest.mark.slow
def test_w1_sync_workers_waiting_on_io(gunicorn_factory):
    name = _name("w1")
    g = gunicorn_factory(worker_class="sync", workers=2, name=name, timeout=120)
    with SlowClients(g, 2, seconds=90):
        poll(lambda: all(ss_worker_active_connections(p, g.listener) == 1 for p in g.worker_pids()),
             15, message="the slow requests were not taken by both workers")
        _rc, findings, _ = doctor(name, interval="2s")
    f = _find(findings, name, "sync-io-bound")
    assert f and f["id"] == "W1", findings
    assert f["evidence"]["busy_ratio"]["value"] == 1.0 and f["evidence"]["cpu_per_busy_worker"]["value"] < 0.2
    _rc, findings, _ = doctor(name, interval="1s")   # idle now: nothing to say
    assert _find(findings, name, "sync-io-bound") is None, findings


@pytest.mark.slow
def test_w2_i3_workers_against_the_cpus_they_may_use(gunicorn_factory):
    many, few = _name("i3"), _name("w2")
    with inherited(cpus=_one_cpu()):
        g = gunicorn_factory(worker_class="sync", workers=7, name=many)
    cpus = os.sched_getaffinity(0)
    gunicorn_factory(worker_class="sync", workers=1, name=few)
    assert re.search(r"Cpus_allowed_list:\s+\d+\n", Path(f"/proc/{g.pid}/status").read_text())
    # one doctor per app: apps on the same CPUs are counted together (a 1-CPU host)
    _rc, findings, _ = doctor(many)
    f = _find(findings, many, "workers-vs-cores")
    assert f and f["id"] == "I3" and f["evidence"]["cpus"]["value"] == 1.0, findings
    assert f["evidence"]["workers"]["value"] == 7      # 7 > 4 x 1 CPU + 1
    _rc, findings, stderr = doctor(few, args=["--doctor.workers-min-per-core", "1.5"])
    w = _find(findings, few, "workers-vs-cores")      # 1 < 1.5 x CPUs, on any host
    assert w and w["id"] == "W2" and w["evidence"]["cpus"]["value"] == len(cpus), findings
    # how many more fit: the worker's USS (the oracle: its smaps_rollup) against free memory
    import psutil
    from tests.test_memory_detail import smaps_rollup, uss_of
    (worker,) = [p for p in psutil.Process(_master_of(few)).children()]
    assert abs(w["evidence"]["worker_memory"]["value"] - uss_of(smaps_rollup(worker.pid))) < 8 << 20
    assert w["evidence"]["more_workers_fit"]["value"] >= 1
    assert f"host (psutil): {psutil.cpu_count()} CPUs" in stderr


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_w2_counts_the_memory_its_cgroup_has_left(gunicorn_factory, tmp_path):
    """An app in a memory cgroup limited to 256 MiB: more workers fit in what the limit
    leaves (memory.max less memory.current, read by the test), not in the host's memory."""
    from tests.test_oom import TestCgroup, _gunicorn_in
    require(os.geteuid() == 0, "a memory cgroup needs root")
    cg = TestCgroup()
    require(cg.dir is not None, "no writable memory cgroup hierarchy")
    cg.create(256 << 20)
    try:
        name = _name("w2mem")
        g = _gunicorn_in(cg, gunicorn_factory, tmp_path, name)
        _rc, findings, _ = doctor(name, args=["--doctor.workers-min-per-core", "4"])
        w = _find(findings, name, "workers-vs-cores")
        assert w and w["id"] == "W2", findings
        names = ("memory.limit_in_bytes", "memory.usage_in_bytes") if cg.version == 1 else \
            ("memory.max", "memory.current")
        left = int((cg.dir / names[0]).read_text()) - int((cg.dir / names[1]).read_text())
        free = w["evidence"]["free_memory"]
        assert str(cg.dir) in free["source"] and abs(free["value"] - left) < 16 << 20, free
        per = w["evidence"]["worker_memory"]["value"]
        assert w["evidence"]["more_workers_fit"]["value"] == free["value"] // per
        g.stop()
    finally:
        cg.remove()


@pytest.mark.slow
def test_control_socket_shared_by_two_masters(gunicorn_factory, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    a, b = _name("ctl-a"), _name("ctl-b")
    for n in (a, b):   # gunicorn's default path: $HOME/.gunicorn/gunicorn.ctl, one per user
        gunicorn_factory(worker_class="sync", workers=1, name=n, control_socket=False,
                         env={"HOME": str(home)})
    path = str(home / ".gunicorn" / "gunicorn.ctl")
    # oracle: ss -xl (each master binds it from a thread of its own, once it runs)
    poll(lambda: sum(1 for s in ss_sockets(("-xlnH",)) if s.local == path) == 2, 15,
         message=f"two masters did not both listen on {path}")
    _rc, findings, _ = doctor(a, b)
    for me, other in ((a, b), (b, a)):
        f = _find(findings, me, "control-socket-shared")
        assert f and f["evidence"]["control_socket"]["value"] == path, findings
        assert f["evidence"]["other_apps"]["value"] == [other]


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_daemon_exports_gunicorn_advice(gunicorn_factory, tmp_path):
    name = _name("daemon")
    with inherited(cpus=_one_cpu()):   # 6 workers on 1 CPU: I3 needs the host facts
        gunicorn_factory(worker_class="gthread", workers=6, threads=2, worker_connections=100,
                         name=name)
    want = [f'gunicorn_advice{{app="{name}",id="C3",rule="gthread-worker-connections",'
            'severity="warning"} 1.0',
            f'gunicorn_advice{{app="{name}",id="I3",rule="workers-vs-cores",severity="warning"}} 1.0']
    with running_exporter(tmp_path, "--no-collector.postgres", "--doctor.nginx-config", "none") as base:
        def scrape():
            with urllib.request.urlopen(base + "/metrics", timeout=10) as r:
                return r.read().decode()
        text = poll(lambda: (t := scrape()) and all(w in t for w in want) and t, 30, interval=0.2,
                    message=f"no {want} on /metrics")
    assert 'gunicorn_exporter_collector_success{collector="advice"} 1.0' in text


# --- a real Postgres (C5, C6) ---------------------------------------------------------

# `pg`: a throwaway cluster per test module (tests/conftest.py)


def _db_env(pg, pool_size=2, overflow=1):
    return {"DB_URL": pg.url(), "DB_DSN": pg.dsn("app", "appdb"), "POOL_SIZE": str(pool_size),
            "MAX_OVERFLOW": str(overflow), "POOL_TIMEOUT": "5"}


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_c6_green_threads_with_a_connection_each(pg, gunicorn_factory):
    require_module("gevent")
    name = _name("c6")
    g = gunicorn_factory(worker_class="gevent", workers=1, worker_connections=100, bind="tcp",
                         app="db_app:app", name=name, env=_db_env(pg))
    (pid,) = g.worker_pids()
    clients, threads = 10, []
    for _ in range(clients):
        t = threading.Thread(target=lambda: http_get(g, "/gevent/hold?seconds=25", timeout=60))
        t.start()
        threads.append(t)
    try:   # oracle: the app's own connections, named after the worker, in pg_stat_activity
        poll(lambda: len(pg.activity(f"application_name = 'dbapp-{pid}'")) == clients, 20,
             message="the green threads did not open their connections")
        rc, findings, stderr = doctor(name, args=["--postgres.dsn", pg.dsn("monitor")])
        f = _find(findings, name, "green-db-connections")
        assert f and (f["id"], f["severity"], rc) == ("C6", "critical", 2), (findings, stderr)
        assert f["evidence"]["db_connections"]["value"] == clients
        assert "pg_stat_activity" in f["evidence"]["db_connections"]["source"]
        # oracle: the worker's OS threads now (gevent may add a resolver thread or two)
        threads_now = int(re.search(r"Threads:\s+(\d+)", Path(f"/proc/{pid}/status").read_text()).group(1))
        assert abs(f["evidence"]["os_threads"]["value"] - threads_now) <= 2
        assert f["evidence"]["os_threads"]["value"] * 2 < clients
    finally:
        for t in threads:
            t.join(60)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_c5_budgets_above_max_connections(pg, gunicorn_factory):
    name = _name("c5")
    g = gunicorn_factory(worker_class="sync", workers=3, bind="tcp", app="db_app:app", name=name,
                         env=_db_env(pg))
    status, body = g.get("/db/hold?n=1", timeout=20)    # the pool keeps that connection open
    assert status == 200, body
    usable = 40 - int(pg.sql("SHOW superuser_reserved_connections")[0][0])
    args = ["--postgres.dsn", pg.dsn("monitor"), "--postgres.app-budget", f"{name}=15"]
    rc, findings, stderr = doctor(name, args=args)
    f = _find(findings, name, "db-budget-vs-max-connections")
    assert f and (f["id"], f["severity"], rc) == ("C5", "critical", 2), (findings, stderr)
    assert f["evidence"]["budget"]["value"] == 45 > usable == 40 - f["evidence"]["reserved_connections"]["value"]
    assert f["evidence"]["max_connections"]["value"] == 40 and f["evidence"]["held_now"]["value"] >= 1
    # a budget that fits: no finding
    _rc, findings, _ = doctor(name, args=args[:2] + ["--postgres.app-budget", f"{name}=2"])
    assert _find(findings, name, "db-budget-vs-max-connections") is None, findings


# --- the command line -----------------------------------------------------------------

@pytest.mark.parametrize("args,message", [
    (["--format", "xml"], "invalid choice: 'xml'"),
    (["--doctor.fd-ratio", "lots"], "doctor.fd-ratio: 'lots' is not a number"),
    (["--doctor.proxy-timeout", "0"], "must be greater than 0"),
    (["--doctor.nginx-config", "relative.conf"], "must be an absolute path"),
    (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
])
def test_bad_flags_exit_2_with_one_message(args, message):
    r = run_cli("doctor", *args)      # in-process (tests/cli.py): it exits before it reads
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("gunicorn-exporter doctor: error:") and message in last, r.stderr


def test_text_report_lists_evidence_and_advice():
    from exporter.doctor.main import exit_code, render_text
    found = evaluate(View(apps=[_app("shop", timeout=0), _app("api", cls="gthread", threads=2,
                                                                       worker_connections=16)]))
    text = render_text(found)
    assert "shop: 1 finding(s)" in text and "[warning] W8 timeout-vs-proxy" in text
    assert "timeout = 0  (--timeout (cmdline))" in text and "advice: --timeout 0" in text
    assert "api: 1 finding(s)" in text and exit_code(found) == 1 and exit_code([]) == 0
