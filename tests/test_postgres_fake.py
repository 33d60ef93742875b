"""The Postgres collector's logic on a fake psycopg connection (tests/fakepg.py): the
queries' rows, NULLs included, become the server snapshot; the session is set up
read-only with server-side timeouts; refused logins back off and are redacted; a failed
query, a restarted server and a hung one each cost what they should; and the join with
the gunicorn collector attributes the recorded fixture's database connection (tests/
fixtures/) to its worker, through the real renderer. No server: the fast floor. The same
behaviour against a throwaway Postgres: tests/test_postgres.py (slow)."""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import time

import psycopg
import pytest

from exporter.collectors.postgres import (APPLICATION_NAME, PostgresCollector, PostgresOptions,
                                          peer_address)
from exporter.gunicorn import appsnap, control
from exporter.linux.procfs import ProcFS
from tests.exposition import parse_strict, select, value
from tests.fakepg import PG15, FakeServer, activity, hidden_row, install
from tests.fixtures import APPS, EXPECTED, PROC, copy_tree
from tests.harness.procs import poll
from tests.test_fixture_exposition import AGES, RecordedMasters, flags, scrape

DSN = "host=db.example port=5432 dbname=appdb user=monitor password=s3cret-Pw"


@pytest.fixture
def collector(tmp_path):
    made = []

    def make(**options):
        options.setdefault("timeout", 1.0)
        # an empty proc root: whether the server is local is "no", whatever this host runs
        c = PostgresCollector(PostgresOptions(dsns=(DSN,), **options), ProcFS(str(tmp_path)))
        made.append(c)
        return c
    yield make
    for c in made:
        asyncio.run(c.stop())


def collect(c):
    return asyncio.run(c.collect()).servers[0]


class _Info:
    def __init__(self, host, port, hostaddr):
        self.host, self.port, self.hostaddr = host, port, hostaddr


class _OldInfo:                       # libpq before 12: no hostaddr
    host, port = "db.example", 5432

    @property
    def hostaddr(self):
        raise psycopg.NotSupportedError("hostaddr requires libpq 12")


@pytest.mark.parametrize("info,want", [
    (_Info("db.example", 5432, "192.0.2.10"), "192.0.2.10:5432"),
    (_Info("db.example", 6432, "2001:db8::1"), "[2001:db8::1]:6432"),
    (_Info("/var/run/postgresql/", 5432, ""), "unix:/var/run/postgresql/.s.PGSQL.5432"),
    (_Info("/tmp", 5433, None), "unix:/tmp/.s.PGSQL.5433"),
    (_Info("db.example", 5432, ""), None),
    (_OldInfo(), None),
])
def test_the_server_is_named_as_its_clients_sockets_name_it(info, want):
    assert peer_address(info) == want


def test_the_snapshot_carries_the_address_libpq_reached(monkeypatch, collector):
    install(monkeypatch, FakeServer(reached=("db.example", 5432, "192.0.2.10")))
    assert collect(collector()).address == "192.0.2.10:5432"


def test_rows_become_the_server_snapshot(monkeypatch, collector):
    install(monkeypatch, FakeServer(rows=[
        activity(4242, usename="monitor", application_name=APPLICATION_NAME, state="active",
                 query_age=0.0),                                   # the exporter itself
        activity(100, application_name="shop", state="active", query_age=7.5),
        activity(101, application_name="shop", state="idle in transaction", state_age=12.0),
        activity(102, application_name="shop", state="idle in transaction (aborted)", state_age=3.0),
        activity(103, datname="jobs", application_name="worker", state="active", query_age=99.0),
        hidden_row(104), hidden_row(105, datname="jobs"),
    ]))
    s = collect(collector())
    assert s.up and s.error is None
    assert (s.version_num, s.port, s.own_pid, s.max_connections, s.superuser_reserved_connections,
            s.reserved_connections, s.monitor_privilege) == (150007, 5432, 4242, 100, 3, None, True)
    assert s.server == "db.example:5432/appdb"
    assert s.connections == {
        ("appdb", "monitor", APPLICATION_NAME, "active"): 1, ("appdb", "app", "shop", "active"): 1,
        ("appdb", "app", "shop", "idle_in_transaction"): 1,
        ("appdb", "app", "shop", "idle_in_transaction_aborted"): 1,
        ("jobs", "app", "worker", "active"): 1,
        ("appdb", "other", "", "unknown"): 1, ("jobs", "other", "", "unknown"): 1}
    assert s.hidden_connections == 2
    # ages: the exporter's own query and hidden sessions never count
    assert s.oldest_query == {"appdb": 7.5, "jobs": 99.0}
    assert s.oldest_idle_in_transaction == {"appdb": 12.0, "jobs": 0.0}
    assert [(b.pid, b.client_addr, b.client_port, b.hidden) for b in s.backends][-2:] == \
        [(104, None, None, True), (105, None, None, True)]
    assert s.local is False


def test_reserved_connections_of_postgres_16_and_an_unprivileged_role(monkeypatch, collector, caplog):
    pg16 = (160002, 50, 3, "2", 5432, 4242, False, 1.7e9)
    install(monkeypatch, FakeServer(settings=pg16, rows=[hidden_row(7), hidden_row(8)]))
    c = collector()
    with caplog.at_level(logging.WARNING, logger="exporter.collectors.postgres"):
        first, second = collect(c), collect(c)
    assert first.reserved_connections == 2 and first.monitor_privilege is False
    assert second.hidden_connections == 2
    warned = [r.getMessage() for r in caplog.records if "pg_monitor" in r.getMessage()]
    assert len(warned) == 1 and "2 hidden now" in warned[0]     # once, not per scrape


def test_the_session_is_read_only_with_server_side_timeouts(monkeypatch, collector):
    server = install(monkeypatch, FakeServer())
    c = collector(timeout=0.5)
    collect(c)
    collect(c)
    assert len(server.connects) == 1                 # one connection, reused
    kw = server.connects[0]
    assert kw["dsn"] == DSN and kw["autocommit"] is True and kw["prepare_threshold"] is None
    assert kw["fallback_application_name"] == APPLICATION_NAME and kw["connect_timeout"] == 2
    for option in ("-c statement_timeout=500", "-c lock_timeout=500",
                   "-c default_transaction_read_only=on",
                   "-c idle_in_transaction_session_timeout=10000"):
        assert option in kw["options"], kw["options"]
    assert server.statements.count(server.statements[0]) == 2 and len(server.statements) == 4


def test_a_refused_login_is_redacted_and_backs_off(monkeypatch, collector):
    server = install(monkeypatch, FakeServer(refuse=psycopg.OperationalError(
        'connection to server at "db.example" failed: FATAL: password authentication failed '
        'for user "monitor" (dsn: password=s3cret-Pw)')))
    c = collector(backoff_base=0.3)
    first = collect(c)
    assert not first.up and "password authentication failed" in first.error
    assert "s3cret-Pw" not in first.error
    second = collect(c)                              # within the backoff: no second attempt
    assert not second.up and "next attempt in" in second.error and len(server.connects) == 1
    server.refuse = None
    up = poll(lambda: collect(c).up, 5, interval=0.05, message="never reconnected after the backoff")
    assert up and len(server.connects) == 2


def test_a_failed_query_keeps_a_sound_connection_and_drops_a_broken_one(monkeypatch, collector):
    server = install(monkeypatch, FakeServer())
    c = collector()
    server.fail_query = psycopg.errors.QueryCanceled("canceling statement due to statement timeout")
    s = collect(c)
    assert not s.up and s.error.startswith("QueryCanceled: canceling statement")
    assert collect(c).up and len(server.connects) == 1      # the same connection served on
    server.fail_query, server.break_on_fail = psycopg.OperationalError("SSL SYSCALL error"), True
    # a reused connection that breaks (a restarted server): one fresh try in the same scrape
    assert collect(c).up and len(server.connects) == 2
    assert server.connections[0].finished and not server.connections[1].closed


def test_a_hung_server_costs_one_timeout_and_its_connection(monkeypatch, collector):
    server = install(monkeypatch, FakeServer())
    c = collector(timeout=0.3)
    assert collect(c).up
    server.hang = True
    start = time.monotonic()
    s = collect(c)
    assert time.monotonic() - start < 2 and not s.up
    assert s.error == "no answer within 0.3s (server hung or unreachable)"
    server.hang = False
    assert collect(c).up and len(server.connects) == 2      # a new connection, not the hung one


def _db_client(root) -> tuple[str, int]:
    """The orders worker's end of its Postgres connection, from the fixture's net/tcp
    (little-endian hex address, hex port)."""
    for line in (root / "net" / "tcp").read_text().splitlines()[1:]:
        local, remote = line.split()[1:3]
        if int(remote.split(":")[1], 16) == EXPECTED["db_port"]:
            addr, port = local.split(":")
            return socket.inet_ntoa(struct.pack("<I", int(addr, 16))), int(port, 16)
    raise AssertionError("the fixture has no connection to its Postgres")


def test_the_fixtures_database_connection_is_attributed_to_its_worker(monkeypatch, tmp_path):
    """The gunicorn collector on the recorded /proc and the Postgres collector on rows
    that name the orders worker's socket, joined and rendered as /metrics serves them."""
    root = copy_tree(tmp_path, AGES)
    addr, port = _db_client(PROC)
    settings = PG15[:4] + (EXPECTED["db_port"],) + PG15[5:]
    install(monkeypatch, FakeServer(settings=settings, rows=[
        activity(4242, usename="monitor", application_name=APPLICATION_NAME, state="active"),
        activity(500, application_name=f"dbapp-{APPS['orders']['workers'][0]}",
                 state="idle in transaction", client_addr=addr, client_port=port),
        activity(501, client_addr="10.0.0.7", client_port=port),       # same port, another host
        hidden_row(502)]))
    masters = RecordedMasters()
    monkeypatch.setattr(control, "connect_checked", masters.connect)
    monkeypatch.setattr(appsnap, "PAGE_SIZE", EXPECTED["page_size"])
    dsn = f"host=127.0.0.1 port={EXPECTED['db_port']} dbname=appdb user=monitor"
    argv = flags(root, "--postgres.dsn", dsn, run=("gunicorn", "netstat", "postgres"))
    try:
        s = parse_strict(scrape(argv))
    finally:
        masters.close()
    server = f"127.0.0.1:{EXPECTED['db_port']}/appdb"
    assert value(s, "gunicorn_postgres_up", server=server) == 1
    workers = select(s, "gunicorn_postgres_worker_connections", server=server)
    assert {(dict(k)["app"], dict(k)["worker"]): v for k, v in workers.items()} == {
        ("shop", "0"): 0, ("shop", "1"): 0, ("api", "0"): 0, ("api", "1"): 0, ("orders", "0"): 1}
    assert value(s, "gunicorn_postgres_app_connections", server=server, app="orders") == 1
    assert value(s, "gunicorn_postgres_unattributed_connections", server=server, reason="remote") == 1
    assert value(s, "gunicorn_postgres_unattributed_connections", server=server, reason="hidden") == 1
    # the budget: one connection per sync worker (the default), what the control socket said
    assert value(s, "gunicorn_app_db_connection_budget", app="orders") == 1
