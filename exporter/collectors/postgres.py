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

`finish(snapshot)` joins the client backends with the gunicorn collector's workers
(`attribute`, a pure function) and computes each app's connection budget
(`budgets`, also pure). Both are tested on literal data.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from dataclasses import dataclass, field

from exporter.options import DEFAULTS
from exporter.collectors.base import Collector
from exporter.linux.procfs import ProcFS
from exporter.snapshot import (AppSnapshot, DbBudget, GunicornSnapshot, PostgresAttribution,
                               PostgresBackend, PostgresServerSnapshot, PostgresSnapshot)

log = logging.getLogger(__name__)

APPLICATION_NAME = "gunicorn-exporter"
OTHER = "other"
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


# --- DSN handling -------------------------------------------------------------

def dsn_endpoint(dsn: str, environ: dict[str, str] | None = None) -> tuple[str, int, str]:
    """(host, port, dbname) of a DSN, libpq environment variables and defaults filled in.

    host is a name, an address, or a unix socket directory (starting with /). Raises
    ValueError with a message that does not contain the DSN.
    """
    from psycopg.conninfo import conninfo_to_dict
    env = os.environ if environ is None else environ
    try:
        params = conninfo_to_dict(dsn)
    except Exception:
        raise ValueError("not a valid connection string (libpq key=value or postgresql:// URI)") from None
    host = str(params.get("host") or params.get("hostaddr") or env.get("PGHOST")
               or env.get("PGHOSTADDR") or "localhost")
    port_text = str(params.get("port") or env.get("PGPORT") or "5432")
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError("the port is not a number from 1 to 65535")
    user = str(params.get("user") or env.get("PGUSER") or _os_user())
    dbname = str(params.get("dbname") or env.get("PGDATABASE") or user)
    return host, int(port_text), dbname


def server_label(dsn: str, environ: dict[str, str] | None = None) -> str:
    """host:port/dbname of a DSN (libpq env variables and defaults filled in), no secrets.

    Raises ValueError with a message that does not contain the DSN.
    """
    host, port, dbname = dsn_endpoint(dsn, environ)
    if ":" in host and not host.startswith("/") and "," not in host:
        host = f"[{host}]"
    return f"{host}:{port}/{dbname}"


def dsn_secrets(dsn: str) -> list[str]:
    """Strings that must never be shown: the DSN itself and its password."""
    out = [dsn]
    try:
        from psycopg.conninfo import conninfo_to_dict
        pw = conninfo_to_dict(dsn).get("password")
        if pw:
            out.append(str(pw))
    except Exception:
        pass
    pw = os.environ.get("PGPASSWORD")
    if pw:
        out.append(pw)
    return [s for s in out if s]


def redact(text: str, secrets: list[str]) -> str:
    for s in sorted(secrets, key=len, reverse=True):
        if len(s) >= 1:
            text = text.replace(s, "***")
    return text


def read_dsn_file(path: str) -> list[str]:
    """One DSN per line; blank lines and lines starting with # are skipped."""
    with open(path, encoding="utf-8") as f:
        text = f.read(1 << 20)
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


def _os_user() -> str:
    try:
        import pwd
        return pwd.getpwuid(os.geteuid()).pw_name
    except (KeyError, ImportError):
        return "postgres"


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
    requires = ("gunicorn",)

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

    def finish(self, snapshot) -> None:
        """Attribute client backends to gunicorn workers; compute the apps' budgets."""
        mine = snapshot.results.get(self.name)
        if mine is None or not isinstance(mine.data, PostgresSnapshot):
            return
        g = snapshot.results.get("gunicorn")
        if g is None or not g.success or not isinstance(g.data, GunicornSnapshot):
            return
        apps = [a for a in g.data.apps if a.up]
        for s in mine.data.servers:
            if s.up:
                s.attribution = attribute(s.backends, apps, server_port=s.port, own_pid=s.own_pid)
        mine.data.budgets = budgets(apps, self.options.budgets, self.options.default_budget)

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
        if snap.monitor_privilege is False and not s.warned_privilege:
            s.warned_privilege = True
            log.warning("postgres %s: the role lacks pg_monitor, so other roles' sessions show no "
                        "state, client address or query times (%d hidden now); "
                        "GRANT pg_monitor TO <role> (see docs/postgres.md)",
                        s.label, snap.hidden_connections)
        own_start = next((r[9] for r in rows if r[0] == snap.own_pid), None)
        if s.local is None:
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


def _describe(e: Exception) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


# --- pure functions --------------------------------------------------------------

def _state_label(state: str | None) -> str:
    if state is None:
        return "unknown"
    return state.replace("(", "").replace(")", "").strip().replace(" ", "_") or "unknown"


def build_server_snapshot(label: str, settings, rows, max_application_names: int) -> PostgresServerSnapshot:
    """Turn the two queries' rows into a server snapshot (bounded label values)."""
    (version, max_conn, su_reserved, reserved, port, own_pid, monitor, _pm_start) = settings
    snap = PostgresServerSnapshot(
        server=label, up=True, version_num=version, port=port, own_pid=own_pid,
        monitor_privilege=bool(monitor), max_connections=max_conn,
        superuser_reserved_connections=su_reserved,
        reserved_connections=int(reserved) if reserved not in (None, "") else None)
    names: dict[str, int] = {}
    for r in rows:
        names[r[3]] = names.get(r[3], 0) + 1
    keep = set(sorted(names, key=lambda n: (-names[n], n))[:max(0, max_application_names)])
    for (pid, datname, usename, appname, state, addr, port_, state_age, query_age,
         _start, hidden) in rows:
        key = (datname, usename, appname if appname in keep else OTHER, _state_label(state))
        snap.connections[key] = snap.connections.get(key, 0) + 1
        if hidden:
            snap.hidden_connections += 1
        snap.backends.append(PostgresBackend(pid=pid, client_addr=addr, client_port=port_,
                                             hidden=bool(hidden)))
        if datname not in snap.oldest_query and not hidden:
            snap.oldest_query[datname] = 0.0
            snap.oldest_idle_in_transaction[datname] = 0.0
        if pid == own_pid or hidden:
            continue
        if state == "active" and query_age is not None:
            snap.oldest_query[datname] = max(snap.oldest_query[datname], query_age)
        elif state in ("idle in transaction", "idle in transaction (aborted)") and state_age is not None:
            snap.oldest_idle_in_transaction[datname] = max(
                snap.oldest_idle_in_transaction[datname], state_age)
    return snap


def _norm_addr(addr: str | None) -> str | None:
    if addr is None:
        return None
    addr = addr.split("%", 1)[0]
    return addr[7:] if addr.lower().startswith("::ffff:") else addr


def attribute(backends: list[PostgresBackend], apps: list[AppSnapshot], *,
              server_port: int | None = None, own_pid: int | None = None) -> PostgresAttribution:
    """Count each client backend against the gunicorn app and worker that holds its socket.

    TCP: the backend's (client_addr, client_port) is the worker socket's local
    (address, port), and the worker socket's remote port is the server's port.
    Unix: one of the backend's socket inodes (from /proc/<pid>/fd) is the peer of a
    worker's socket to `.s.PGSQL.<port>`. Nothing else is guessed: the rest is
    unattributed, by reason:
      hidden  the role may not see the client address (no pg_monitor) and the
              socket could not be matched either;
      remote  a TCP client no gunicorn worker on this host holds (another host,
              a cron job, psql, a pooler in between);
      unix    a unix-socket client not matched (not a worker, or the exporter may
              not read the backend's /proc/<pid>/fd, or the server is elsewhere).
    Every app and worker gets a count, 0 included; the exporter's own backend is skipped.
    """
    out = PostgresAttribution()
    tcp: dict[tuple[str, int], tuple[str, int]] = {}
    unix: dict[int, tuple[str, int]] = {}
    for a in apps:
        out.apps.setdefault(a.app, 0)
        for w in a.workers:
            out.workers.setdefault((a.app, w.slot), 0)
            for local_addr, local_port, _raddr, rport in w.db_tcp:
                if server_port is None or rport == server_port:
                    tcp[(_norm_addr(local_addr), local_port)] = (a.app, w.slot)
            for _inode, peer in w.db_unix:
                if peer:
                    unix[peer] = (a.app, w.slot)
    for b in backends:
        if own_pid is not None and b.pid == own_pid:
            continue
        owner = None
        if b.client_port is not None and b.client_port >= 0 and b.client_addr is not None:
            owner = tcp.get((_norm_addr(b.client_addr), b.client_port))
            reason = "remote"
        else:
            for ino in b.socket_inodes:
                owner = unix.get(ino)
                if owner is not None:
                    break
            reason = "hidden" if b.hidden else "unix"
        if owner is None:
            out.unattributed[reason] = out.unattributed.get(reason, 0) + 1
            continue
        out.apps[owner[0]] = out.apps.get(owner[0], 0) + 1
        out.workers[owner] = out.workers.get(owner, 0) + 1
    for reason in ("hidden", "remote", "unix"):
        out.unattributed.setdefault(reason, 0)
    return out


def budgets(apps: list[AppSnapshot], declared: dict[str, float | str],
            default: float | str | None = "threads") -> list[DbBudget]:
    """Connections each app should stay under: workers x per-worker budget.

    Per-worker budget: what the user declared for the app (`pool_size + max_overflow`
    for a SQLAlchemy QueuePool), or "threads" (one connection per thread: sync 1,
    gthread --threads, gevent/eventlet 1, since green threads should share a pool);
    `default` applies to undeclared apps (source "threads" or "default"), None = no
    budget for them; a declared "none" removes one app's budget.
    """
    out = []
    for a in apps:
        if not a.up:
            continue
        if a.app in declared:
            value, source = declared[a.app], "declared"
        elif default is not None:
            value, source = default, ("threads" if default == "threads" else "default")
        else:
            continue
        if value is None or value == "none":
            continue
        per_worker = float(a.threads or 1) if value == "threads" else float(value)
        workers = a.workers_desired if a.workers_desired is not None else len(a.workers)
        out.append(DbBudget(app=a.app, workers=workers, per_worker=per_worker, source=source))
    return out
