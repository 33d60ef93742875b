"""Rules over database connections: green threads holding connections of their own (C6)
and the apps' connection budgets against the server's max_connections (C5). They read
the postgres collector's snapshot (`--postgres.dsn`: pg_stat_activity, its backends
attributed to gunicorn workers, and each app's budget, exporter/postgres/model.py);
C6 falls back to the workers' own sockets to database ports without it.
"""

from __future__ import annotations

from exporter.doctor.model import Evidence as E
from exporter.doctor.model import Finding, View, rule, source_of

GREEN = ("gevent", "eventlet")
ATTRIBUTED = "pg_stat_activity backends whose socket the worker holds (--postgres.dsn)"
SOCKETS = "the worker's sockets to database ports (/proc/PID/fd, sock_diag; --gunicorn.db-port)"


@rule("green-db-connections", "C6")
def green_db_connections(v: View):
    pg = v.postgres
    attributed: dict[tuple[str, int], int] = {}
    for s in pg.servers if pg else []:
        if s.up and s.attribution is not None:
            for key, n in s.attribution.workers.items():
                attributed[key] = attributed.get(key, 0) + n
    declared = {b.app: b.per_worker for b in (pg.budgets if pg else []) if b.source == "declared"}
    for a in v.apps:
        if a.worker_class not in GREEN:
            continue
        worst = None
        for w in a.workers:
            seen = [(attributed[(a.app, w.slot)], ATTRIBUTED)] if (a.app, w.slot) in attributed else []
            if w.db_connections is not None:
                seen.append((w.db_connections, SOCKETS))
            if not seen:
                continue
            n, where = max(seen, key=lambda x: x[0])   # Postgres' count wins a tie
            allowed = max(w.threads, declared.get(a.app, 0))
            if n > v.t.green_db_ratio * allowed and (worst is None or n > worst[0]):
                worst = (n, where, w, allowed)
        if worst is None:
            continue
        n, where, w, allowed = worst
        ev = {"db_connections": E(n, f"worker {w.slot}: {where}"),
              "os_threads": E(w.threads, f"worker {w.slot}: /proc/PID/stat num_threads"),
              "budget_per_worker": E(declared.get(a.app), "--postgres.app-budget (declared)"),
              "worker_connections": E(a.worker_connections, source_of(a, "worker_connections")),
              "advised_max": E(v.t.green_db_ratio * allowed,
                               "--doctor.green-db-ratio x max(OS threads, declared budget)")}
        yield Finding(a.app, "C6", "green-db-connections", "critical", ev,
                      f"Under {a.worker_class} every green thread that touches the database opens "
                      f"and keeps a connection of its own: worker {w.slot} holds {n} for "
                      f"{w.threads} OS threads, and up to --worker-connections "
                      f"{a.worker_connections} per worker could do the same until Postgres refuses "
                      "connections (C6, C5). Share a small pool instead: pgbouncer in transaction "
                      "mode in front of Postgres, a SQLAlchemy pool sized to the concurrency you "
                      "want (psycogreen for psycopg2), CONN_MAX_AGE=0 under Django; and declare "
                      "the pool with --postgres.app-budget.")


@rule("db-budget-vs-max-connections", "C5")
def db_budget_vs_max_connections(v: View):
    pg = v.postgres
    if pg is None:
        return
    running = {a.app for a in v.apps}
    budgets = {b.app: b for b in pg.budgets if b.app in running}
    servers = [s for s in pg.servers if s.up and s.max_connections]
    for s in servers:
        reserved = (s.superuser_reserved_connections or 0) + (s.reserved_connections or 0)
        usable = s.max_connections - reserved
        held = s.attribution.apps if s.attribution is not None else {}
        # apps seen using this server now; with one server, also every declared budget
        using = {app: b for app, b in budgets.items()
                 if held.get(app, 0) > 0 or (b.source == "declared" and len(servers) == 1)}
        total = sum(b.total for b in using.values())
        if not using or total <= v.t.db_budget_ratio * usable:
            continue
        severity = "critical" if total > usable else "warning"
        listing = ", ".join(f"{app} {b.total:g}" for app, b in sorted(using.items()))
        for app, b in sorted(using.items()):
            ev = {"server": E(s.server, "--postgres.dsn"),
                  "max_connections": E(s.max_connections, "current_setting('max_connections')"),
                  "reserved_connections": E(reserved, "superuser_reserved_connections + "
                                                      "reserved_connections"),
                  "budget": E(b.total, f"{b.workers} workers x {b.per_worker:g} per worker "
                                       f"({b.source}; --postgres.app-budget)"),
                  "held_now": E(held.get(app, 0), "backends attributed to the app's workers"),
                  "budgets_total": E(total, f"apps using the server: {listing}"),
                  "advised_max": E(v.t.db_budget_ratio * usable,
                                   "--doctor.db-budget-ratio x usable connections")}
            yield Finding(app, "C5", "db-budget-vs-max-connections", severity, ev,
                          f"The apps using {s.server} may open {total:g} connections together "
                          f"(workers x per-worker budget) but the server takes {usable} "
                          f"(max_connections {s.max_connections} minus {reserved} reserved): at "
                          "full load the last ones get 'too many clients' (C5), and cron jobs, "
                          "psql and replicas need slots too. Lower the per-worker pools "
                          "(pool_size + max_overflow) or the workers, put pgbouncer in front, "
                          "or raise max_connections.")
