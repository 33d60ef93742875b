"""The postgres collector: pure functions on literal data, then a real Postgres 15 cluster
(tests/pg.py) with real gunicorn apps (tests/apps/db_app.py) holding connections.

Oracles share no code with the exporter: pg_stat_activity queried by the test itself
(joined on client_port with the workers' sockets as `ss -tnp` lists them) and the
application_name every app connection carries ("dbapp-<worker pid>").
"""

from __future__ import annotations

import asyncio
import functools
import threading
import time

import pytest
from prometheus_client.core import CollectorRegistry
from prometheus_client.exposition import generate_latest

from exporter.collectors.gunicorn import GunicornCollector, GunicornOptions
from exporter.collectors.base import Join
from exporter.collectors.postgres import PostgresCollector, PostgresOptions
from exporter.collectors.postgres import join as postgres_join
from exporter.postgres.dsn import redact, server_label
from exporter.postgres.model import attribute, budgets, build_server_snapshot
from exporter.metrics import render_postgres
from exporter.scrape import Scraper
from exporter.snapshot import (AppSnapshot, PostgresBackend, PostgresSnapshot, WorkerSnapshot)
from tests.conftest import require_module
from tests.harness.clients import http_get
from tests.harness.procs import free_port, poll, unique_name
from tests.harness.ss import ss_process_sockets
from tests.pg import PASSWORD

pytestmark = [pytest.mark.timeout(90)]


# --- pure functions ----------------------------------------------------------

def _w(slot, pid, tcp=(), unix=()):
    return WorkerSnapshot(slot=slot, pid=pid, start_time=0, rss_bytes=0, cpu_seconds=0,
                          threads=1, open_fds=None, fd_limit=None, heartbeat_age=None,
                          connections_active=None, connections_client_closed=None,
                          db_connections=None, db_tcp=list(tcp), db_unix=list(unix))


def test_attribute_literal():
    shop = AppSnapshot(app="shop", up=True, threads=4, workers_desired=2, workers=[
        _w(0, 100, tcp=[("127.0.0.1", 40001, "127.0.0.1", 5432),
                        ("::ffff:10.0.0.5", 40002, "10.0.0.9", 5432),
                        ("127.0.0.1", 40009, "127.0.0.1", 6432)]),   # pgbouncer: other server
        _w(1, 101, unix=[(900, 901)])])
    blog = AppSnapshot(app="blog", up=True, workers=[_w(0, 200)])
    backends = [
        PostgresBackend(1, "127.0.0.1", 40001),
        PostgresBackend(2, "10.0.0.5", 40002),                       # v4-mapped on our side
        PostgresBackend(3, "127.0.0.1", 40009),                      # port 40009 to 6432 only
        PostgresBackend(4, None, -1, socket_inodes=(55, 901)),       # unix, matched by peer
        PostgresBackend(5, None, -1, socket_inodes=(77,)),           # unix, not a worker
        PostgresBackend(6, None, None, hidden=True),                 # no pg_monitor
        PostgresBackend(7, "10.1.1.1", 40001),                       # same port, other host
        PostgresBackend(8, "127.0.0.1", 5555),                       # exporter itself
    ]
    a = attribute(backends, [shop, blog], server_port=5432, own_pid=8)
    assert a.apps == {"shop": 3, "blog": 0}
    assert a.workers == {("shop", 0): 2, ("shop", 1): 1, ("blog", 0): 0}
    assert a.unattributed == {"remote": 2, "unix": 1, "hidden": 1}


def test_budgets_literal():
    apps = [AppSnapshot(app="shop", up=True, workers_desired=4, threads=1),
            AppSnapshot(app="api", up=True, workers_desired=3, threads=8, worker_class="gthread"),
            AppSnapshot(app="ws", up=True, workers_desired=2, threads=1, worker_class="gevent"),
            AppSnapshot(app="off", up=True, workers_desired=2),
            AppSnapshot(app="gone", up=False)]
    out = {b.app: (b.total, b.per_worker, b.source)
           for b in budgets(apps, {"shop": 15, "off": "none"})}
    assert out == {"shop": (60, 15, "declared"), "api": (24, 8, "threads"), "ws": (2, 1, "threads")}
    assert {b.app for b in budgets(apps, {"shop": 15}, default=None)} == {"shop"}
    assert {b.app: b.total for b in budgets(apps, {}, default=2)}["api"] == 6


def test_label_and_redaction():
    assert server_label("postgresql://u:hunter2@db.example:5433/shop") == "db.example:5433/shop"
    assert server_label("host=::1 user=x", environ={}) == "[::1]:5432/x"
    assert server_label("user=x", environ={"PGHOST": "/run/pg", "PGDATABASE": "d"}) == "/run/pg:5432/d"
    with pytest.raises(ValueError) as e:
        server_label("postgresql://u:hunter2@h/db?bogus=1")
    assert "hunter2" not in str(e.value)
    assert redact("auth failed for hunter2 in x", ["hunter2"]) == "auth failed for *** in x"


def test_snapshot_folds_application_names():
    settings = (150004, 40, 3, None, 5432, 9, True, 0.0)
    rows = [(i, "db", "u", f"job-{i % 5}", "idle", "127.0.0.1", 1000 + i, 1.0, 1.0, 0.0, False)
            for i in range(10, 30)]
    rows += [(9, "db", "u", "gunicorn-exporter", "active", None, -1, 0.0, 0.0, 0.0, False),
             (8, "db", "u", "a", "idle in transaction", "127.0.0.1", 999, 7.5, 8.0, 0.0, False),
             (7, "db", "u", "a", "active", "127.0.0.1", 998, 3.0, 3.0, 0.0, False),
             (6, "db", "v", "", None, None, None, None, None, None, True)]
    s = build_server_snapshot("h:5432/db", settings, rows, max_application_names=3)
    names = {k[2] for k in s.connections}
    assert len(names - {"other"}) == 3 and "other" in names
    assert sum(s.connections.values()) == len(rows)
    assert s.connections[("db", "v", "other", "unknown")] == 1
    assert s.hidden_connections == 1
    assert s.oldest_idle_in_transaction == {"db": 7.5}
    assert s.oldest_query == {"db": 3.0}  # the exporter's own query is not counted


def test_render_families():
    s = build_server_snapshot("h:5432/db", (160000, 40, 3, "2", 5432, 9, True, 0.0),
                              [(9, "db", "u", "x", "active", None, -1, 0.0, 0.0, 0.0, False)], 5)
    app = AppSnapshot(app="shop", up=True, workers_desired=1, threads=2, workers=[_w(0, 1)])
    s.attribution = attribute(s.backends, [app], server_port=5432, own_pid=9)
    snap = PostgresSnapshot(servers=[s], budgets=budgets([app], {}))
    text = _exposition(snap)
    for line in ('gunicorn_postgres_up{server="h:5432/db"} 1.0',
                 'gunicorn_postgres_reserved_connections{server="h:5432/db"} 2.0',
                 'gunicorn_postgres_worker_connections{app="shop",server="h:5432/db",worker="0"} 0.0',
                 'gunicorn_app_db_connection_budget{app="shop"} 2.0'):
        assert line in text, text


def _exposition(snap: PostgresSnapshot) -> str:
    class C:
        def collect(self):
            return render_postgres(snap)
    reg = CollectorRegistry()
    reg.register(C())
    return generate_latest(reg).decode()


# --- a real cluster ------------------------------------------------------------

# `pg`: a throwaway cluster per test module (tests/conftest.py)


class Scrapes:
    """A Scraper over the gunicorn and postgres collectors, on one event loop for the test."""

    def __init__(self, pg_collector: PostgresCollector, db_port: int, timeout: float = 8.0):
        self.loop = asyncio.new_event_loop()
        self.pgc = pg_collector
        self.scraper = Scraper(
            [GunicornCollector(GunicornOptions(db_ports=(db_port,))), pg_collector],
            timeout=timeout, joins={"postgres": Join(("gunicorn",), functools.partial(
                postgres_join, options=pg_collector.options))})
        self.duration = 0.0

    def __call__(self):
        t = time.monotonic()
        snap = self.loop.run_until_complete(self.scraper.scrape())
        self.duration = time.monotonic() - t
        return snap

    def server(self, i: int = 0):
        return self().results["postgres"].data.servers[i]

    def close(self):
        try:
            self.loop.run_until_complete(self.pgc.stop())
        finally:
            self.loop.close()


@pytest.fixture
def scrapes():
    made = []

    def make(*args, **kwargs):
        s = Scrapes(*args, **kwargs)
        made.append(s)
        return s
    yield make
    for s in made:
        s.close()


def _collector(pg, role="monitor", dbname="postgres", **kw) -> PostgresCollector:
    kw.setdefault("timeout", 1.0)
    kw.setdefault("backoff_max", 1.0)
    return PostgresCollector(PostgresOptions(dsns=(pg.dsn(role, dbname),), **kw))


def _app_env(pg, pool_size, max_overflow, url=None):
    return {"DB_URL": url or pg.url(), "DB_DSN": pg.dsn("app", "appdb"),
            "POOL_SIZE": str(pool_size), "MAX_OVERFLOW": str(max_overflow), "POOL_TIMEOUT": "1"}


def _exporter_view(snap, g):
    """{worker pid: attributed backends} for master g, from one scrape."""
    app = next((a for a in snap.results["gunicorn"].data.apps if a.up and a.master_pid == g.pid), None)
    srv = snap.results["postgres"].data.servers[0]
    if app is None or not srv.up or srv.attribution is None:
        return None
    return {w.pid: srv.attribution.workers.get((app.app, w.slot), 0) for w in app.workers}


def _oracle_tcp(pg, g):
    """{worker pid: backends} from pg_stat_activity joined on client_port with the
    worker's sockets to the server (ss -tnp); cross-checked with application_name."""
    rows = pg.activity("application_name LIKE 'dbapp-%'")
    view = {}
    for pid in g.worker_pids():
        ports = set()
        for s in ss_process_sockets(pid):
            if s.netid == "tcp" and s.state == "ESTAB" and s.peer.endswith(f":{pg.port}"):
                ports.add(int(s.local.rpartition(":")[2]))
        by_port = [r for r in rows if r[3] in ports]
        by_name = [r for r in rows if r[1] == f"dbapp-{pid}"]
        if len(by_port) != len(by_name):
            return None  # a connection moved between the two reads; ask again
        view[pid] = len(by_port)
    return view


def _agree(scrape, oracle, g, expect):
    """Poll until exporter == oracle around the oracle read, and `expect(view)` holds."""
    def attempt():
        before = _exporter_view(scrape(), g)
        seen = oracle()
        after = _exporter_view(scrape(), g)
        if before is not None and before == seen == after and expect(seen):
            return seen
        return None
    return attempt


def _in_threads(target, paths, timeout=40):
    out, threads = [], []
    for p in paths:
        t = threading.Thread(target=lambda p=p: out.append(http_get(target, p, timeout=timeout)))
        t.start()
        threads.append(t)
    return out, threads


def _join(threads, timeout=40):
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.1, deadline - time.monotonic()))
    assert not any(t.is_alive() for t in threads)


@pytest.mark.slow
@pytest.mark.parametrize("worker_class,workers,threads,pool,requests,n", [
    ("sync", 2, None, (2, 1), 2, 3),      # each worker: one request holding pool_size+overflow
    ("gthread", 1, 4, (2, 2), 4, 1),      # four threads, one connection each
])
def test_sqlalchemy_pool_attributed_per_worker(pg, gunicorn_factory, scrapes, worker_class,
                                               workers, threads, pool, requests, n):
    pool_size, overflow = pool
    limit = pool_size + overflow
    g = gunicorn_factory(worker_class=worker_class, workers=workers, threads=threads, bind="tcp",
                         app="db_app:app", name=unique_name(f"pg-{worker_class}"),
                         env=_app_env(pg, pool_size, overflow))
    coll = _collector(pg, budgets={g.name: limit})
    scrape = scrapes(coll, pg.port)
    assert scrape().results["postgres"].data.servers[0].up

    out, ts = _in_threads(g, [f"/db/hold?n={n}&seconds=5"] * requests)
    # while held: every worker at its pool limit (C4's precondition), exporter == pg_stat_activity
    held = poll(_agree(scrape, lambda: _oracle_tcp(pg, g), g,
                       lambda v: sum(v.values()) == requests * n), 15,
                message="attributed connections never matched pg_stat_activity")
    assert max(held.values()) == limit and all(v <= limit for v in held.values())
    snap = scrape()
    budget = {b.app: b for b in snap.results["postgres"].data.budgets}[g.name]
    assert (budget.total, budget.source) == (workers * limit, "declared")
    srv = snap.results["postgres"].data.servers[0]
    assert srv.attribution.apps[g.name] == requests * n
    assert srv.max_connections == 40 and srv.monitor_privilege is True
    _join(ts)
    assert all(status == 200 for status, _ in out), out

    # released: the pool keeps pool_size per worker that served, overflow closed
    poll(_agree(scrape, lambda: _oracle_tcp(pg, g), g,
                lambda v: sorted(v.values()) == sorted(
                    [pool_size] * (requests * n // limit) + [0] * (workers - requests * n // limit))),
         15, message="pool did not settle at pool_size")

    # one request wanting more than the pool has: SQLAlchemy's C4 signature
    status, body = g.get(f"/db/hold?n={limit + 1}", timeout=20)
    assert status == 503, body
    assert f"QueuePool limit of size {pool_size} overflow {overflow} reached" in body.decode()


@pytest.mark.slow
def test_unix_socket_attributed_by_peer(pg, gunicorn_factory, scrapes):
    url = f"postgresql+psycopg://app@/appdb?host={pg.sockdir}&port={pg.port}"
    g = gunicorn_factory(worker_class="sync", workers=1, bind="tcp", app="db_app:app",
                         name=unique_name("pg-unix"), env=_app_env(pg, 3, 0, url=url))
    scrape = scrapes(_collector(pg), pg.port)
    out, ts = _in_threads(g, ["/db/hold?n=3&seconds=4"])

    def oracle():
        rows = pg.activity("application_name LIKE 'dbapp-%'")
        return {pid: sum(1 for r in rows if r[1] == f"dbapp-{pid}" and r[3] == -1)
                for pid in g.worker_pids()}
    view = poll(_agree(scrape, oracle, g, lambda v: list(v.values()) == [3]), 15,
                message="unix-socket backends not attributed")
    srv = scrape().results["postgres"].data.servers[0]
    assert srv.local and srv.attribution.apps[g.name] == 3, (view, srv.attribution)
    _join(ts)


@pytest.mark.slow
def test_gevent_connection_per_green_thread(pg, gunicorn_factory, scrapes):
    require_module("gevent")
    g = gunicorn_factory(worker_class="gevent", workers=1, worker_connections=100, bind="tcp",
                         app="db_app:app", name=unique_name("pg-gevent"), env=_app_env(pg, 2, 1))
    scrape = scrapes(_collector(pg), pg.port)
    clients = 28
    out, ts = _in_threads(g, ["/gevent/hold?seconds=6"] * clients)
    view = poll(_agree(scrape, lambda: _oracle_tcp(pg, g), g,
                       lambda v: list(v.values()) == [clients]), 20,
                message="per-green-thread connections not seen")
    snap = scrape()
    app = next(a for a in snap.results["gunicorn"].data.apps if a.master_pid == g.pid)
    srv = snap.results["postgres"].data.servers[0]
    budget = {b.app: b for b in snap.results["postgres"].data.budgets}[g.name]
    # C6: one worker, one thread, a connection per green thread, the server near its limit
    assert app.threads == 1 and budget.total == 1 and budget.source == "threads"
    assert srv.attribution.workers[(g.name, 0)] == clients > 10 * app.threads
    used = sum(srv.connections.values())
    usable = srv.max_connections - srv.superuser_reserved_connections
    assert used >= clients + 1 and used / usable > 0.75, (used, usable, view)
    _join(ts)
    assert all(status == 200 for status, _ in out), out[:3]


@pytest.mark.slow
def test_privileges_ages_and_secrets(pg, scrapes):
    import psycopg
    coll = PostgresCollector(PostgresOptions(
        dsns=(pg.dsn("nopriv", "postgres"), pg.dsn("monitor", "appdb"),
              pg.dsn("monitor", "postgres", password="wrong-" + PASSWORD),
              f"host=127.0.0.1 port={free_port()} user=x password={PASSWORD} dbname=d"),
        timeout=1.0, backoff_max=1.0))
    scrape = scrapes(coll, pg.port)
    with psycopg.connect(pg.dsn("app", "appdb"), application_name="idle-tx") as idle, \
            psycopg.connect(pg.dsn("app", "appdb"), autocommit=True, application_name="slow") as busy:
        idle.execute("SELECT 1")  # now idle in transaction
        t = threading.Thread(target=lambda: busy.execute("SELECT pg_sleep(2.5)"))
        t.start()
        try:
            def ready():
                s = scrape().results["postgres"].data.servers
                return s[1].oldest_query.get("appdb", 0) > 0.3 and s[1].oldest_idle_in_transaction.get("appdb", 0) > 0.3 and s
            nopriv, monitor, badpw, nothere = poll(ready, 10, message="ages not seen")
        finally:
            t.join(10)
    assert nopriv.up and nopriv.monitor_privilege is False and nopriv.hidden_connections >= 2
    assert any(k[3] == "unknown" for k in nopriv.connections)
    assert monitor.up and monitor.monitor_privilege is True and monitor.hidden_connections == 0
    assert ("appdb", "app", "idle-tx", "idle_in_transaction") in monitor.connections
    assert monitor.server == f"127.0.0.1:{pg.port}/appdb"
    assert not badpw.up and "password authentication failed" in badpw.error
    assert not nothere.up
    text = _exposition(scrape().results["postgres"].data)
    for s in (nopriv, monitor, badpw, nothere):
        assert PASSWORD not in (s.error or "") and PASSWORD not in s.server
    assert PASSWORD not in text and f'gunicorn_postgres_up{{server="127.0.0.1:{pg.port}/postgres"}}' in text
    assert scrape.duration < 2.5


@pytest.mark.slow
def test_hung_server_sigstop(pg, gunicorn_factory, scrapes):
    g = gunicorn_factory(worker_class="sync", workers=1, bind="tcp", name=unique_name("pg-hang"))
    live = scrapes(_collector(pg), pg.port)
    srv = live.server()
    assert srv.up
    own = srv.own_pid
    fresh = scrapes(_collector(pg), pg.port)
    try:
        pg.pause(children=[own])   # the postmaster and the backend serving `live`
        for s in (live, fresh):
            snap = s()
            assert not snap.results["postgres"].data.servers[0].up
            assert s.duration < 1.8, s.duration
            assert snap.results["gunicorn"].success  # the rest of the exporter carries on
            assert any(a.master_pid == g.pid for a in snap.results["gunicorn"].data.apps)
        again = live()                 # still hung: no second connection, still fast
        assert not again.results["postgres"].data.servers[0].up and live.duration < 1.8
    finally:
        pg.resume()
    poll(lambda: live.server().up and fresh.server().up, 25, interval=0.2,
         message="did not recover after SIGCONT")
    # at most one connection per server: our two collectors, two sessions (the abandoned
    # one is gone once its backend has seen the close)
    poll(lambda: len(pg.activity("application_name = 'gunicorn-exporter'")) == 2, 5,
         message="more than one exporter session per collector")


@pytest.mark.slow
def test_server_restart(pg, scrapes):
    scrape = scrapes(_collector(pg), pg.port)
    assert scrape.server().up
    pg.halt()
    try:
        srv = scrape.server()
        assert not srv.up and scrape.duration < 1.8, (srv, scrape.duration)
        assert not scrape.server().up
    finally:
        pg.run()
    srv = poll(lambda: (s := scrape.server()).up and s, 15, interval=0.2,
               message="did not reconnect after restart")
    assert srv.max_connections == 40


@pytest.mark.slow
def test_a_dsn_server_on_another_port_is_attributed_without_db_port(pg, gunicorn_factory):
    """The cluster listens on a free port (never 5432/6432): naming it with --postgres.dsn
    is enough for its connections to be counted and attributed to workers."""
    from exporter.collectors import build as build_collectors
    from exporter.config import load
    assert pg.port not in (5432, 6432)
    name = f"pg-dsn-{pg.port}"
    g = gunicorn_factory(worker_class="sync", workers=1, bind="tcp", app="db_app:app",
                         name=name, env=_app_env(pg, 2, 0))
    config = load(["--postgres.dsn", pg.dsn("monitor", "postgres"), "--postgres.timeout", "2s",
                   "--no-collector.oom", "--no-collector.logs", "--no-collector.netstat"])
    collectors, joins = build_collectors(config)
    scraper = Scraper(collectors, timeout=8, joins=joins)
    loop = asyncio.new_event_loop()
    try:
        def scrape():
            return loop.run_until_complete(scraper.scrape())
        out, ts = _in_threads(g, ["/db/hold?n=2&seconds=4"])
        held = poll(_agree(scrape, lambda: _oracle_tcp(pg, g), g,
                           lambda v: sum(v.values()) == 2), 15,
                    message="connections to the DSN's server were not attributed")
        assert held == {g.worker_pids()[0]: 2}
        snap = scrape()
        [app] = [a for a in snap.results["gunicorn"].data.apps if a.master_pid == g.pid]
        assert app.workers[0].db_connections >= 2
        _join(ts)
        assert all(status == 200 for status, _ in out), out
    finally:
        pgc = next(c for c in collectors if c.name == "postgres")
        loop.run_until_complete(pgc.stop())
        loop.close()
