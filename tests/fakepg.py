"""A fake psycopg connection for the Postgres collector's logic (postgres_exporter and
query-exporter test theirs the same way): `install(monkeypatch, server)` makes
`psycopg.AsyncConnection.connect` return connections to `server`, a `FakeServer` whose
two queries (SETTINGS_QUERY, ACTIVITY_QUERY of exporter/collectors/postgres.py) answer
literal rows, in the queries' column order, NULLs as None. What a real server does is
tested against a throwaway Postgres in tests/test_postgres.py (slow); this is the floor:
rows, NULLs, errors, reconnects and hangs, without a server.

A server can refuse the login (`refuse`), fail a query (`fail_query`, optionally marking
the connection broken as a restarted server does), or hang (`hang`: execute() waits until
cancelled). It records every connect's arguments and every statement run.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import psycopg

from exporter.collectors.postgres import ACTIVITY_QUERY, SETTINGS_QUERY

# SETTINGS_QUERY's row: version_num, max_connections, superuser_reserved_connections,
# reserved_connections (text; NULL before 16), port, pg_backend_pid(), pg_monitor,
# postmaster start (epoch)
PG15 = (150007, 100, 3, None, 5432, 4242, True, 1.7e9)


def activity(pid, datname="appdb", usename="app", application_name="", state="idle",
             client_addr="127.0.0.1", client_port=40000, state_age=1.0, query_age=1.0,
             backend_start=1.7e9, hidden=False):
    """One ACTIVITY_QUERY row (column order of the query)."""
    return (pid, datname, usename, application_name, state, client_addr, client_port,
            state_age, query_age, backend_start, hidden)


def hidden_row(pid, datname="appdb", usename="other"):
    """A session of another role as a role without pg_monitor sees it: NULL state,
    address, port and times."""
    return (pid, datname, usename, "", None, None, None, None, None, None, True)


@dataclass
class FakeServer:
    settings: tuple = PG15
    rows: list = field(default_factory=list)
    refuse: Exception | None = None        # raised by connect()
    fail_query: Exception | None = None    # raised by the next execute(), then cleared
    break_on_fail: bool = False            # ... and the connection is broken
    hang: bool = False                     # execute() waits until cancelled
    connects: list[dict] = field(default_factory=list)
    statements: list[str] = field(default_factory=list)
    connections: list["FakeConnection"] = field(default_factory=list)
    # libpq's view of where it connected (psycopg's ConnectionInfo): host, port, hostaddr
    reached: tuple = ("db.example", 5432, "192.0.2.10")


class _PgConn:
    def __init__(self, conn: "FakeConnection"):
        self.conn = conn

    def finish(self):
        self.conn.closed = True
        self.conn.finished = True


@dataclass(frozen=True)
class _Info:
    host: str
    port: int
    hostaddr: str


class FakeConnection:
    def __init__(self, server: FakeServer):
        self.server = server
        self.closed = False
        self.broken = False
        self.finished = False       # dropped without a goodbye (pgconn.finish())
        self.pgconn = _PgConn(self)
        self.info = _Info(*server.reached)

    def cursor(self):
        return FakeCursor(self)

    async def close(self):
        self.closed = True


class FakeCursor:
    def __init__(self, conn: FakeConnection):
        self.conn = conn
        self._result = None

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        return False

    async def execute(self, query):
        server = self.conn.server
        if self.conn.closed:
            raise psycopg.OperationalError("the connection is closed")
        server.statements.append(query)
        if server.hang:
            await asyncio.Event().wait()        # until cancelled
        if server.fail_query is not None:
            err, server.fail_query = server.fail_query, None
            if server.break_on_fail:
                self.conn.broken = True
            raise err
        if query == SETTINGS_QUERY:
            self._result = [server.settings]
        elif query == ACTIVITY_QUERY:
            self._result = list(server.rows)
        else:
            raise AssertionError(f"the collector ran a statement the fake does not know: {query!r}")

    async def fetchone(self):
        return self._result[0]

    async def fetchall(self):
        return self._result


def install(monkeypatch, server: FakeServer) -> FakeServer:
    async def connect(dsn, **kwargs):
        server.connects.append({"dsn": dsn, **kwargs})
        if server.refuse is not None:
            raise server.refuse
        conn = FakeConnection(server)
        server.connections.append(conn)
        return conn
    monkeypatch.setattr(psycopg.AsyncConnection, "connect", staticmethod(connect))
    return server
