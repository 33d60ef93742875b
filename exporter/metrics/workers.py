"""The worker families of the gunicorn collector: one series per worker slot (label
`worker`), and the app-level series made from the same workers (`gunicorn_workers_*`),
which every alert and recording rule reads.

With `--gunicorn.worker-series=none` only the app-level ones are served (the per-worker
families are left out by `exporter.metrics.render`): sums, maxima and counters over the
app's workers that do not depend on how many workers there are or which one is which.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, Metric

from exporter.metrics.family import _g, _maybe
from exporter.snapshot import AppSnapshot, WorkerSnapshot


def busy_workers(a: AppSnapshot) -> list[WorkerSnapshot]:
    """Workers at capacity: their requests (active connections, and those whose client
    has gone, which a thread still serves) fill every thread. When the capacity is not
    known (the worker class cannot be read), a worker with a request counts as busy:
    exact for sync workers, an upper bound for the others."""
    capacity = a.capacity if a.capacity is not None else 1
    if not capacity:
        return []
    return [w for w in a.workers if w.requests is not None and w.requests >= capacity]


def requests_waiting(a: AppSnapshot) -> int | None:
    """Requests the workers hold beyond what they serve at once (gthread parks them: the
    accept queue does not show them); None without a capacity or any worker's
    connections."""
    known = [w.requests for w in a.workers if w.requests is not None]
    if a.capacity is None or not known:
        return None
    return int(sum(max(0, r - a.capacity) for r in known))


def render_workers(apps: list[AppSnapshot]) -> Iterator[Metric]:
    """Per worker slot; `apps` are the running ones."""
    pid = _g("gunicorn_worker_pid", "Process id of the worker in this slot (a value, not a label: a recycled worker makes no new series). Slots are reused when workers are recycled.", ["app", "worker"])
    conn = _g("gunicorn_worker_connections", "Client connections a worker holds that were accepted from the master's listeners, by state: active (a request in flight), idle (TCP keep-alive, its last request answered; gthread/gevent workers), client_closed (the client hung up).", ["app", "worker", "state"])
    beat = _g("gunicorn_worker_heartbeat_age_seconds", "Seconds since the worker last notified the master, computed as the master does; a sync worker's current request has run this long.", ["app", "worker"])
    rss = _g("gunicorn_worker_resident_memory_bytes", "Resident memory of the worker process.", ["app", "worker"])
    uss = _g("gunicorn_worker_unique_memory_bytes", "Memory only this worker maps (USS: what stopping it gives back; copy-on-write pages shared with the master after --preload not counted), read every --gunicorn.memory-detail-interval.", ["app", "worker"])
    pss = _g("gunicorn_worker_proportional_memory_bytes", "The worker's proportional set size (PSS: its unique pages plus its share of each shared one), read every --gunicorn.memory-detail-interval.", ["app", "worker"])
    cpu = CounterMetricFamily("gunicorn_worker_cpu_seconds", "User and system CPU time of the worker process, in seconds.", labels=["app", "worker"])
    threads = _g("gunicorn_worker_threads", "OS threads in the worker process.", ["app", "worker"])
    fds = _g("gunicorn_worker_open_fds", "Open file descriptors of the worker process.", ["app", "worker"])
    maxfds = _g("gunicorn_worker_max_fds", "Soft limit on open file descriptors (ulimit -n) of the worker process.", ["app", "worker"])
    start = _g("gunicorn_worker_start_time_seconds", "Start time of the worker process since the epoch.", ["app", "worker"])
    db = _g("gunicorn_worker_db_connections", "Connections the worker holds to database ports or sockets (Postgres 5432, pgbouncer 6432 by default).", ["app", "worker"])
    for a in apps:
        for w in a.workers:
            lv = [a.app, str(w.slot)]
            pid.add_metric(lv, w.pid)
            if w.connections_active is not None:
                conn.add_metric(lv + ["active"], w.connections_active)
                conn.add_metric(lv + ["client_closed"], w.connections_client_closed or 0)
                if w.connections_idle is not None:
                    conn.add_metric(lv + ["idle"], w.connections_idle)
            _maybe(beat, lv, w.heartbeat_age)
            rss.add_metric(lv, w.rss_bytes)
            _maybe(uss, lv, w.unique_memory_bytes)
            _maybe(pss, lv, w.proportional_memory_bytes)
            cpu.add_metric(lv, w.cpu_seconds)
            threads.add_metric(lv, w.threads)
            _maybe(fds, lv, w.open_fds)
            _maybe(maxfds, lv, w.fd_limit)
            start.add_metric(lv, w.start_time)
            _maybe(db, lv, w.db_connections)
    yield from (pid, conn, beat, rss, uss, pss, cpu, threads, fds, maxfds, start, db)


def render_app_workers(apps: list[AppSnapshot]) -> Iterator[Metric]:
    """Per app, over its workers (both modes); `apps` are the running ones. A family is
    absent for an app none of whose workers has the value (unreadable fds, no workers)."""
    conn = _g("gunicorn_workers_connections", "Client connections the app's workers hold, summed, by state (as gunicorn_worker_connections).", ["app", "state"])
    conn_max = _g("gunicorn_workers_connections_max", "The most client connections (every state) one worker of the app holds: compare with gunicorn_worker_connections_limit.", ["app"])
    waiting = _g("gunicorn_workers_requests_waiting", "Requests the app's workers hold beyond their capacity, summed: they wait inside the worker for a thread (gthread), invisible in the accept queue.", ["app"])
    beat_max = _g("gunicorn_workers_heartbeat_age_max_seconds", "The highest heartbeat age of the app's workers at the scrape.", ["app"])
    busy_beat = _g("gunicorn_workers_busy_heartbeat_age_seconds", "Heartbeat ages of the app's busy workers, summed (sync: how long their current requests have run); divided by gunicorn_workers_busy, the mean.", ["app"])
    rss = _g("gunicorn_workers_resident_memory_bytes", "Resident memory of the app's workers, summed (shared pages counted once per worker).", ["app"])
    rss_max = _g("gunicorn_workers_resident_memory_max_bytes", "Resident memory of the app's largest worker.", ["app"])
    uss = _g("gunicorn_workers_unique_memory_bytes", "Memory only the app's workers map (USS), summed over the workers read so far (every --gunicorn.memory-detail-interval).", ["app"])
    pss = _g("gunicorn_workers_proportional_memory_bytes", "Proportional set size (PSS) of the app's workers, summed over the workers read so far.", ["app"])
    cpu = CounterMetricFamily("gunicorn_workers_cpu_seconds", "User and system CPU time the app's workers used while the exporter watched (a recycled worker's CPU stays counted).", labels=["app"])
    threads = _g("gunicorn_workers_threads", "OS threads of the app's workers, summed.", ["app"])
    fds_max = _g("gunicorn_workers_open_fds_max", "Open file descriptors of the app's worker that holds the most.", ["app"])
    fds_ratio = _g("gunicorn_workers_open_fds_max_ratio", "The highest share of its soft fd limit (ulimit -n) that one worker of the app uses.", ["app"])
    db = _g("gunicorn_workers_db_connections", "Database connections the app's workers hold, summed.", ["app"])
    db_max = _g("gunicorn_workers_db_connections_max", "Database connections of the app's worker that holds the most.", ["app"])
    for a in apps:
        lv = [a.app]
        ws = a.workers
        counted = [w for w in ws if w.connections_active is not None]
        if counted:
            conn.add_metric(lv + ["active"], sum(w.connections_active for w in counted))
            conn.add_metric(lv + ["client_closed"],
                            sum(w.connections_client_closed or 0 for w in counted))
            idle = [w.connections_idle for w in counted if w.connections_idle is not None]
            if idle:
                conn.add_metric(lv + ["idle"], sum(idle))
            conn_max.add_metric(lv, max(w.requests + (w.connections_idle or 0) for w in counted))
        _maybe(waiting, lv, requests_waiting(a))
        beats = [w.heartbeat_age for w in ws if w.heartbeat_age is not None]
        if beats:
            beat_max.add_metric(lv, max(beats))
            busy_beat.add_metric(lv, sum(w.heartbeat_age for w in busy_workers(a)
                                         if w.heartbeat_age is not None))
        if ws:
            rss.add_metric(lv, sum(w.rss_bytes for w in ws))
            rss_max.add_metric(lv, max(w.rss_bytes for w in ws))
            threads.add_metric(lv, sum(w.threads for w in ws))
        _sum(uss, lv, [w.unique_memory_bytes for w in ws])
        _sum(pss, lv, [w.proportional_memory_bytes for w in ws])
        if a.workers_cpu_seconds is not None:
            cpu.add_metric(lv, a.workers_cpu_seconds)
        open_fds = [w.open_fds for w in ws if w.open_fds is not None]
        if open_fds:
            fds_max.add_metric(lv, max(open_fds))
        ratios = [w.open_fds / w.fd_limit for w in ws if w.open_fds is not None and w.fd_limit]
        if ratios:
            fds_ratio.add_metric(lv, max(ratios))
        dbs = [w.db_connections for w in ws if w.db_connections is not None]
        if dbs:
            db.add_metric(lv, sum(dbs))
            db_max.add_metric(lv, max(dbs))
    yield from (conn, conn_max, waiting, beat_max, busy_beat, rss, rss_max, uss, pss, cpu,
                threads, fds_max, fds_ratio, db, db_max)


def _sum(family, labels: list[str], values: list) -> None:
    known = [v for v in values if v is not None]
    if known:
        family.add_metric(labels, sum(known))
