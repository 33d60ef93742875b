"""What the Postgres collector's rows become: pure functions, tested on literal rows.

* `SettingsRow` and `ActivityRow` name the columns of SETTINGS_QUERY and ACTIVITY_QUERY
  (exporter/collectors/postgres.py), in their order: rows are read by name, never by
  index;
* `build_server_snapshot`: a server's rows -> PostgresServerSnapshot (bounded labels);
* `attribute`: client backends -> the gunicorn app and worker holding their socket;
* `budgets`: the connections each app should stay under.
"""

from __future__ import annotations

from typing import NamedTuple

from exporter.snapshot import (AppSnapshot, DbBudget, PostgresAttribution, PostgresBackend,
                               PostgresServerSnapshot)

OTHER = "other"


class SettingsRow(NamedTuple):
    version_num: int
    max_connections: int
    superuser_reserved_connections: int
    reserved_connections: str | None     # Postgres 16+, else NULL
    port: int
    own_pid: int
    monitor: bool                        # pg_monitor (or superuser)
    postmaster_start: float


class ActivityRow(NamedTuple):
    pid: int
    datname: str
    usename: str
    application_name: str
    state: str | None
    client_addr: str | None
    client_port: int | None
    state_age: float | None
    query_age: float | None
    backend_start: float | None
    hidden: bool                         # the role may not see this session


def _state_label(state: str | None) -> str:
    if state is None:
        return "unknown"
    return state.replace("(", "").replace(")", "").strip().replace(" ", "_") or "unknown"


def build_server_snapshot(label: str, settings, rows, max_application_names: int) -> PostgresServerSnapshot:
    """Turn the two queries' rows (tuples in the queries' column order, or the named
    rows) into a server snapshot (bounded label values)."""
    st = SettingsRow._make(settings)
    rows = [ActivityRow._make(r) for r in rows]
    snap = PostgresServerSnapshot(
        server=label, up=True, version_num=st.version_num, port=st.port, own_pid=st.own_pid,
        monitor_privilege=bool(st.monitor), max_connections=st.max_connections,
        superuser_reserved_connections=st.superuser_reserved_connections,
        reserved_connections=int(st.reserved_connections)
        if st.reserved_connections not in (None, "") else None)
    names: dict[str, int] = {}
    for r in rows:
        names[r.application_name] = names.get(r.application_name, 0) + 1
    keep = set(sorted(names, key=lambda n: (-names[n], n))[:max(0, max_application_names)])
    for r in rows:
        app = r.application_name if r.application_name in keep else OTHER
        key = (r.datname, r.usename, app, _state_label(r.state))
        snap.connections[key] = snap.connections.get(key, 0) + 1
        if r.hidden:
            snap.hidden_connections += 1
        snap.backends.append(PostgresBackend(pid=r.pid, client_addr=r.client_addr,
                                             client_port=r.client_port, hidden=bool(r.hidden)))
        if r.datname not in snap.oldest_query and not r.hidden:
            snap.oldest_query[r.datname] = 0.0
            snap.oldest_idle_in_transaction[r.datname] = 0.0
        if r.pid == st.own_pid or r.hidden:
            continue
        if r.state == "active" and r.query_age is not None:
            snap.oldest_query[r.datname] = max(snap.oldest_query[r.datname], r.query_age)
        elif r.state in ("idle in transaction", "idle in transaction (aborted)") \
                and r.state_age is not None:
            snap.oldest_idle_in_transaction[r.datname] = max(
                snap.oldest_idle_in_transaction[r.datname], r.state_age)
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
