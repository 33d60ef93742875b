"""The Postgres collector: pg_stat_activity, the connection limit, and attribution.

For every configured server (`--postgres.dsn`, repeatable):

  * at most one connection, reused across scrapes; after a failed connect the next
    attempt waits (1 s, 2 s, 4 s ... up to `backoff_max`), so a dead server costs one
    fast `up 0` per scrape and no connection storm;
  * the session is autocommit and read-only, with `statement_timeout` and
    `lock_timeout` set at connect time, so a query never waits on a lock or runs past
    the limit on the server side; on the client side every server gets `timeout`
    seconds per scrape, after which it reads `up 0` and the scrape goes on. A hung
    server (e.g. SIGSTOPped) never holds a scrape: the stuck task is cancelled and
    its connection dropped, and no second connection is opened while it unwinds;
  * errors are redacted: no DSN and no password ever reaches a log line or a label;
    the `server` label is host:port/dbname.

`join` (declared in exporter/collectors/__init__.py) attributes the client backends to
the gunicorn collector's workers (`attribute`) and computes each app's connection budget
(`budgets`): pure functions in exporter/postgres/model.py, with the named rows of the
two queries below; DSN handling is in exporter/postgres/dsn.py.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from dataclasses import dataclass, field, replace
from typing import Mapping

from exporter.options import DEFAULTS
from exporter.collectors.base import Collector
from exporter.linux.procfs import ProcFS
from exporter.postgres.dsn import dsn_secrets, redact, server_label
from exporter.postgres.model import ActivityRow, attribute, budgets, build_server_snapshot
from exporter.snapshot import (GunicornSnapshot, PostgresBackend, PostgresServerSnapshot,
                               PostgresSnapshot)

log = logging.getLogger(__name__)

APPLICATION_NAME = "gunicorn-exporter"
MAX_BACKENDS = 20_000          # rows read per scrape; max_connections bounds it in practice
MAX_UNIX_LOOKUPS = 5_000       # backends whose /proc fd table we read per scrape

# The server's limits and who we are. current_setting() reads no table, so no lock.
# reserved_connections exists from Postgres 16 on (missing_ok = true gives NULL before).
SETTINGS_QUERY = """
SELECT current_setting('server_version_num')::int,
       current_setting('max_connections')::int,
       current_setting('superuser_reserved_connections')::int,
       current_setting('reserved_connections', true),
       current_setting('port')::int,
       pg_backend_pid(),
       pg_has_role(current_user, 'pg_monitor', 'USAGE'),
       EXTRACT(EPOCH FROM pg_postmaster_start_time())::float8
"""

# One row per client backend. Without pg_monitor, other roles' sessions show up with
# query '<insufficient privilege>' and NULL state/client_addr/client_port/timestamps,
# and even backend_type is NULL: such rows with a role are counted as hidden sessions
# (a background worker that runs as a role, e.g. the logical replication launcher,
# is among them; Postgres does not say which).
ACTIVITY_QUERY = f"""
SELECT pid,
       coalesce(datname, ''),
       coalesce(usename, ''),
       coalesce(application_name, ''),
       state,
       host(client_addr),
       client_port,
       EXTRACT(EPOCH FROM (now() - state_change))::float8,
       EXTRACT(EPOCH FROM (now() - query_start))::float8,
       EXTRACT(EPOCH FROM backend_start)::float8,
       query IS NOT DISTINCT FROM '<insufficient privilege>'
FROM pg_stat_activity
WHERE backend_type = 'client backend' OR (backend_type IS NULL AND usesysid IS NOT NULL)
LIMIT {MAX_BACKENDS}
"""


@dataclass
class PostgresOptions:
    """The postgres collector's settings; defaults are the options' (exporter/options.py)."""

    dsns: tuple[str, ...] = field(default=(), repr=False)   # may hold passwords
    timeout: float = DEFAULTS["postgres.timeout"]   # per server per scrape; also statement_timeout
    max_application_names: int = DEFAULTS["postgres.max-application-names"]  # the rest: "other"
    # app -> per-worker budget: a number, or "threads" (workers x threads)
    budgets: dict[str, float | str] = field(default_factory=dict)
    default_budget: float | str | None = "threads"   # for apps not in `budgets`
    backoff_max: float = 30.0
    backoff_base: float = 1.0


# --- the collector -------------------------------------------------------------

class _Server:
    def __init__(self, dsn: str, label: str):
        self.dsn = dsn
        self.label = label
        self.secrets = dsn_secrets(dsn)
        self.conn = None                       # psycopg.AsyncConnection
        self.task: asyncio.Task | None = None
        self.failures = 0
        self.next_attempt = 0.0                # monotonic
        self.last_error: str | None = None
        self.logged_error: str | None = None
        self.local: bool | None = None         # checked once per connection
        self.warned_privilege = False


class PostgresCollector(Collector):
    name = "postgres"

    def __init__(self, options: PostgresOptions, procfs: ProcFS | None = None):
        self.options = options
        self.procfs = procfs or ProcFS()
        self.servers: list[_Server] = []
        labels: dict[str, int] = {}
        for i, dsn in enumerate(options.dsns):
            try:
                label = server_label(dsn)
            except ValueError as e:
                raise ValueError(f"postgres DSN #{i + 1}: {e}") from None
            n = labels.get(label, 0)
            labels[label] = n + 1
            self.servers.append(_Server(dsn, label if n == 0 else f"{label}#{n + 1}"))
        try:
            self._boot_time = self.procfs.boot_time()
        except (OSError, ValueError):
            self._boot_time = time.time() - time.monotonic()

    async def collect(self) -> PostgresSnapshot:
        results: dict[int, PostgresServerSnapshot] = {}
        waiting: dict[asyncio.Task, int] = {}
        for i, s in enumerate(self.servers):
            if s.task is not None and not s.task.done():
                # still unwinding from a hang: never a second connection to the same server
                results[i] = self._down(s, s.last_error or "previous query still running")
                continue
            s.task = asyncio.get_running_loop().create_task(self._collect_server(s))
            waiting[s.task] = i
        if waiting:
            done, pending = await asyncio.wait(waiting, timeout=self.options.timeout)
            for t in pending:
                s = self.servers[waiting[t]]
                t.cancel()  # its handler drops the connection; we do not wait for that
                s.conn = None
                s.local = None
                results[waiting[t]] = self._down(
                    s, f"no answer within {self.options.timeout:g}s (server hung or unreachable)")
            for t in done:
                s = self.servers[waiting[t]]
                try:
                    results[waiting[t]] = t.result()
                except Exception as e:  # _collect_server catches; belt and braces
                    results[waiting[t]] = self._down(s, redact(f"{type(e).__name__}: {e}", s.secrets))
        return PostgresSnapshot(servers=[results[i] for i in range(len(self.servers))])

    async def stop(self) -> None:
        """Close every connection (bounded: a hung server cannot hold shutdown)."""
        tasks = [s.task for s in self.servers if s.task is not None and not s.task.done()]
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=12)
        for s in self.servers:
            conn, s.conn = s.conn, None
            if conn is not None:
                try:
                    await asyncio.wait_for(conn.close(), 2)
                except Exception:
                    pass

    close = stop

    # --- one server ----------------------------------------------------------

    def _down(self, s: _Server, error: str) -> PostgresServerSnapshot:
        s.last_error = error
        if s.logged_error != error:
            s.logged_error = error
            log.warning("postgres %s: %s", s.label, error)
        return PostgresServerSnapshot(server=s.label, up=False, error=error)

    async def _collect_server(self, s: _Server) -> PostgresServerSnapshot:
        import psycopg
        try:
            reused = s.conn is not None
            if s.conn is not None and (s.conn.closed or s.conn.broken):
                await self._drop(s)
                reused = False
            if s.conn is None:
                wait = s.next_attempt - time.monotonic()
                if wait > 0:
                    return self._down_quiet(s, f"{s.last_error} (next attempt in {wait:.0f}s)")
                await self._connect(s)
            try:
                snap = await self._query(s)
            except (psycopg.OperationalError, psycopg.InterfaceError):
                if not reused or (s.conn is not None and not s.conn.broken and not s.conn.closed):
                    raise
                # the server restarted under a reused connection: one fresh try now
                await self._drop(s)
                await self._connect(s)
                snap = await self._query(s)
            if s.last_error is not None:
                log.info("postgres %s: up again", s.label)
            s.last_error = s.logged_error = None
            return snap
        except asyncio.CancelledError:
            await self._drop(s)
            raise
        except Exception as e:
            if s.conn is not None and (s.conn.broken or s.conn.closed):
                await self._drop(s)
            return self._down(s, redact(_describe(e), s.secrets))

    def _down_quiet(self, s: _Server, error: str) -> PostgresServerSnapshot:
        # during backoff: same outage, already logged
        return PostgresServerSnapshot(server=s.label, up=False, error=error)

    async def _connect(self, s: _Server) -> None:
        import psycopg
        from psycopg.conninfo import conninfo_to_dict
        ms = max(1, int(self.options.timeout * 1000))
        params = conninfo_to_dict(s.dsn)
        options = " ".join(filter(None, [
            str(params.get("options") or ""),
            f"-c statement_timeout={ms}", f"-c lock_timeout={ms}",
            "-c default_transaction_read_only=on",
            f"-c idle_in_transaction_session_timeout={max(ms, 10_000)}"]))
        try:
            s.conn = await psycopg.AsyncConnection.connect(
                s.dsn, autocommit=True, prepare_threshold=None,
                connect_timeout=max(2, math.ceil(self.options.timeout)),
                fallback_application_name=APPLICATION_NAME, options=options)
        except BaseException:
            s.failures += 1
            delay = min(self.options.backoff_max,
                        self.options.backoff_base * 2 ** (s.failures - 1))
            s.next_attempt = time.monotonic() + delay
            raise
        s.failures = 0
        s.next_attempt = 0.0
        s.local = None

    async def _drop(self, s: _Server) -> None:
        conn, s.conn = s.conn, None
        s.local = None
        if conn is not None:
            try:
                conn.pgconn.finish()  # no goodbye round trip: the server may be hung
            except Exception:
                pass

    async def _query(self, s: _Server) -> PostgresServerSnapshot:
        async with s.conn.cursor() as cur:
            await cur.execute(SETTINGS_QUERY)
            settings = await cur.fetchone()
            await cur.execute(ACTIVITY_QUERY)
            rows = await cur.fetchall()
        snap = build_server_snapshot(s.label, settings, rows, self.options.max_application_names)
        snap.address = peer_address(s.conn.info)
        if snap.monitor_privilege is False and not s.warned_privilege:
            s.warned_privilege = True
            log.warning("postgres %s: the role lacks pg_monitor, so other roles' sessions show no "
                        "state, client address or query times (%d hidden now); "
                        "GRANT pg_monitor TO <role> (see docs/postgres.md)",
                        s.label, snap.hidden_connections)
        if s.local is None:     # once per connection
            own_start = next((r.backend_start for r in map(ActivityRow._make, rows)
                              if r.pid == snap.own_pid), None)
            s.local = await asyncio.to_thread(self._is_local, snap.own_pid, own_start)
        snap.local = bool(s.local)
        if s.local:
            wanted = [b for b in snap.backends
                      if b.pid != snap.own_pid and (b.client_port == -1 or b.hidden)]
            if wanted:
                await asyncio.to_thread(self._read_backend_sockets, wanted[:MAX_UNIX_LOOKUPS])
        return snap

    def _is_local(self, pid: int | None, backend_start: float | None) -> bool:
        """Is our own backend a process on this host (same pid namespace)?

        Its /proc entry must be a postgres process started when pg_stat_activity says
        our session started, so a pid that only happens to exist here does not count.
        """
        if pid is None or backend_start is None:
            return False
        try:
            st = self.procfs.stat(pid)
        except (OSError, ValueError):
            return False
        started = self._boot_time + st.starttime_ticks / os.sysconf("SC_CLK_TCK")
        return abs(started - backend_start) < 2.0

    def _read_backend_sockets(self, backends: list[PostgresBackend]) -> None:
        for b in backends:
            try:
                b.socket_inodes = tuple(self.procfs.scan_fds(b.pid).socket_inodes)
            except (OSError, ValueError):
                pass  # gone, or not ours to read: stays unattributed


def join(own: PostgresSnapshot, others: Mapping[str, object], *,
         options: PostgresOptions) -> PostgresSnapshot:
    """The collection with its client backends attributed to the gunicorn collector's
    workers and the apps' connection budgets (a new value: the join of the scrape)."""
    g = others.get("gunicorn")
    if not isinstance(g, GunicornSnapshot):
        return own
    apps = [a for a in g.apps if a.up]
    addresses = {s.address for s in own.servers if s.address}
    return replace(own, servers=[
        replace(s, attribution=attribute(s.backends, apps, server_port=s.port, own_pid=s.own_pid))
        if s.up else s for s in own.servers],
        budgets=budgets(apps, options.budgets, options.default_budget),
        dependency_peers=sorted((a.app, peer) for a in apps for peer in a.dependencies
                                if peer in addresses))


def peer_address(info) -> str | None:
    """The server as its clients' sockets name it (exporter/gunicorn/dependencies.py's
    peer labels), from libpq's view of the connection: the address it reached over TCP,
    or the unix socket in the directory it used."""
    try:
        host, port, addr = info.host, info.port, info.hostaddr
    except Exception:  # noqa: BLE001 - libpq older than 12 has no hostaddr
        return None
    if host and host.startswith("/"):
        return f"unix:{host.rstrip('/')}/.s.PGSQL.{port}"
    if not addr:
        return None
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def _describe(e: Exception) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text}" if text else type(e).__name__
