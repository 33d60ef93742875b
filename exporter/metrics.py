"""The one place where metric families are named, described and rendered.

`render(snapshot)` turns a `Snapshot` (plain data from the collectors) into
prometheus_client metric families; nothing else in the package creates a metric.
docs/metrics.md documents every family below; tests/test_docs.py keeps the two in sync.

Sample output (one sync app, two workers, one busy):

    gunicorn_up{app="shop"} 1.0
    gunicorn_workers{app="shop"} 2.0
    gunicorn_workers_busy{app="shop"} 1.0
    gunicorn_worker_connections{app="shop",state="active",worker="0"} 1.0
    gunicorn_worker_heartbeat_age_seconds{app="shop",worker="0"} 12.4
    gunicorn_listener_queue_length{app="shop",listener="unix:/run/shop.sock"} 3.0
    gunicorn_listener_queue_max{app="shop",listener="unix:/run/shop.sock"} 2048.0
"""

from __future__ import annotations

import logging
import platform
from collections.abc import Iterable, Iterator

from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily,
                                    HistogramMetricFamily, InfoMetricFamily, Metric)
from prometheus_client.utils import floatToGoString

from exporter import __version__
from exporter.snapshot import (AdviceSnapshot, AppSnapshot, GunicornSnapshot, HostSnapshot,
                               LogsSnapshot, OomSnapshot, PostgresSnapshot, RequestsSnapshot,
                               SamplerSnapshot, Snapshot, StatsdSnapshot)

log = logging.getLogger(__name__)


def _g(name: str, doc: str, labels: Iterable[str] = (), unit: str = "") -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=list(labels), unit=unit)


RENDERERS = {}  # snapshot type -> renderer, filled below


def render(snapshot: Snapshot) -> Iterator[Metric]:
    """All families for one scrape, data first, exporter self-metrics last.

    A collector's families are rendered completely before any is yielded: if rendering
    fails (a bug, or a value that is not a number), that collector is reported as failed
    and the others still answer; /metrics never fails as a whole.
    """
    for result in snapshot.results.values():
        if not result.success or result.data is None:
            continue
        renderer = RENDERERS.get(type(result.data))
        if renderer is None:
            continue
        try:
            families = [_checked(f) for f in renderer(result.data)]
        except Exception as e:  # noqa: BLE001
            log.warning("collector %s: rendering failed: %r", result.name, e)
            result.success, result.error = False, f"rendering: {type(e).__name__}"
            continue
        yield from families
    yield from _requests_guarded(snapshot)
    yield from render_self(snapshot)


def _checked(family: Metric) -> Metric:
    """Every sample can be written: its value is a float, its label values encode as
    UTF-8 (or the sample goes, with a warning: it is a bug upstream)."""
    if not all(_writable(s) for s in family.samples):
        family.samples = [s for s in family.samples if _writable(s)]
        log.warning("%s: dropped a sample that cannot be written", family.name)
    return family


def _writable(sample) -> bool:
    try:
        float(sample.value)
        for v in sample.labels.values():
            v.encode("utf-8")
        return True
    except (TypeError, ValueError, OverflowError, UnicodeError, AttributeError):
        return False


def _render_app_namespaces(snap: GunicornSnapshot) -> Iterator[Metric]:
    """What the master's own network namespace and cgroup say (a pod's, on Kubernetes)."""
    somax = _g("gunicorn_app_somaxconn", "net.core.somaxconn of the master's network namespace (a pod's own on Kubernetes): the cap on its listen backlogs.", ["app"])
    overflows = CounterMetricFamily("gunicorn_app_listen_overflows", "TcpExt ListenOverflows of the master's network namespace: times a full accept queue there made the kernel drop a connection (shared by every app of that namespace).", labels=["app"])
    drops = CounterMetricFamily("gunicorn_app_listen_drops", "TcpExt ListenDrops of the master's network namespace (shared by every app of that namespace).", labels=["app"])
    k8s = _g("gunicorn_app_kubernetes_info", "The container and Kubernetes pod the master runs in, from its cgroup path; join with kube-state-metrics' kube_pod_info{uid} for namespace and pod name; always 1.", ["app", "pod_uid", "container_id", "runtime", "qos_class"])
    for a in snap.apps:
        if not a.up:
            continue
        _maybe(somax, [a.app], a.somaxconn)
        if a.listen_overflows is not None:
            overflows.add_metric([a.app], a.listen_overflows)
        if a.listen_drops is not None:
            drops.add_metric([a.app], a.listen_drops)
        if a.pod is not None and a.pod.pod_uid:
            k8s.add_metric([a.app, a.pod.pod_uid, a.pod.container_id, a.pod.runtime,
                            a.pod.qos_class], 1)
    denied = _g("gunicorn_exporter_netns_denied", "1 if masters in other network namespaces were read from /proc/PID/net (no unix queue lengths, no TCP backlog limits) because the exporter may not enter them (CAP_SYS_ADMIN).")
    denied.add_metric([], 1 if snap.netns_denied else 0)
    yield from (somax, overflows, drops, k8s, denied)


def render_gunicorn(snap: GunicornSnapshot) -> Iterator[Metric]:
    up = _g("gunicorn_up", "1 if the gunicorn master of this app is running; 0 if it ran before (or is expected by --gunicorn.expected-app) and is not running now.", ["app"])
    info = _g("gunicorn_info", "Gunicorn version, worker class and user of a running master; always 1.", ["app", "version", "worker_class", "user"])
    workers = _g("gunicorn_workers", "HTTP worker processes alive under the master.", ["app"])
    desired = _g("gunicorn_workers_desired", "Number of workers the master is configured to run.", ["app"])
    timeout = _g("gunicorn_timeout_seconds", "Worker timeout (--timeout): a worker silent this long is killed; 0 = disabled.", ["app"])
    keepalive = _g("gunicorn_keepalive_seconds", "Keep-alive timeout (--keep-alive) for idle client connections.", ["app"])
    capacity = _g("gunicorn_worker_capacity", "Concurrent requests one worker can serve: sync 1, gthread threads, gevent/eventlet worker_connections, asgi/uvicorn +Inf (no limit).", ["app"])
    conn_limit = _g("gunicorn_worker_connections_limit", "Configured --worker-connections: the most client connections one worker accepts (gthread, gevent, eventlet).", ["app"])
    busy = _g("gunicorn_workers_busy", "Workers whose active client connections are at or above their capacity.", ["app"])
    backlog = _g("gunicorn_backlog", "Configured --backlog; the kernel caps it at net.core.somaxconn (see gunicorn_listener_queue_max).", ["app"])
    master_start = _g("gunicorn_master_start_time_seconds", "Start time of the master process since the epoch.", ["app"])
    spawned = CounterMetricFamily("gunicorn_workers_spawned", "Workers the master has spawned since it started (control socket only).", labels=["app"])
    source = _g("gunicorn_setting_source_info", "Where the exporter learned each setting: control_socket, cmdline, env, config_file, default, kernel (backlog of the listening sockets) or unknown (not knowable: its gauge is absent); always 1.", ["app", "setting", "source"])
    errors = _g("gunicorn_exporter_app_errors", "Parts of this app's data that could not be collected in this scrape (0 = complete; the exporter's log says what failed).", ["app"])
    orphans = _g("gunicorn_orphan_workers", "Worker processes of the app whose master is gone (killed with -9 while they were busy); they serve nothing new and exit after their current request.", ["app"])

    w_info = _g("gunicorn_worker_info", "Process id of the worker in this slot; always 1. Slots are reused when workers are recycled.", ["app", "worker", "pid"])
    w_conn = _g("gunicorn_worker_connections", "Client connections a worker holds that were accepted from the master's listeners, by state: active (a request in flight), idle (TCP keep-alive, its last request answered; gthread/gevent workers), client_closed (the client hung up).", ["app", "worker", "state"])
    w_beat = _g("gunicorn_worker_heartbeat_age_seconds", "Seconds since the worker last notified the master, computed as the master does; a sync worker's current request has run this long.", ["app", "worker"])
    w_rss = _g("gunicorn_worker_resident_memory_bytes", "Resident memory of the worker process.", ["app", "worker"])
    w_cpu = CounterMetricFamily("gunicorn_worker_cpu_seconds", "User and system CPU time of the worker process, in seconds.", labels=["app", "worker"])
    w_threads = _g("gunicorn_worker_threads", "OS threads in the worker process.", ["app", "worker"])
    w_fds = _g("gunicorn_worker_open_fds", "Open file descriptors of the worker process.", ["app", "worker"])
    w_maxfds = _g("gunicorn_worker_max_fds", "Soft limit on open file descriptors (ulimit -n) of the worker process.", ["app", "worker"])
    w_start = _g("gunicorn_worker_start_time_seconds", "Start time of the worker process since the epoch.", ["app", "worker"])
    w_db = _g("gunicorn_worker_db_connections", "Connections the worker holds to database ports or sockets (Postgres 5432, pgbouncer 6432 by default).", ["app", "worker"])

    l_len = _g("gunicorn_listener_queue_length", "Connections waiting in the listening socket's accept queue (ss Recv-Q).", ["app", "listener"])
    l_max = _g("gunicorn_listener_queue_max", "Accept queue limit of the listening socket: min(--backlog, somaxconn) (ss Send-Q).", ["app", "listener"])
    l_drops = CounterMetricFamily("gunicorn_listener_drops", "Connections the kernel dropped at this TCP listening socket since it was created, full accept queue included (its share of TcpExt ListenDrops).", labels=["app", "listener"])

    for a in snap.apps:
        up.add_metric([a.app], 1 if a.up else 0)
        if not a.up:
            continue
        info.add_metric([a.app, a.version, a.worker_class, a.user], 1)
        errors.add_metric([a.app], len(a.errors))
        workers.add_metric([a.app], len(a.workers))
        _maybe(desired, [a.app], a.workers_desired)
        _maybe(timeout, [a.app], a.timeout)
        _maybe(keepalive, [a.app], a.keepalive)
        _maybe(capacity, [a.app], a.capacity)
        if a.worker_class not in ("sync", "uvicorn"):  # the only classes that ignore it
            _maybe(conn_limit, [a.app], a.worker_connections)
        _maybe(backlog, [a.app], a.backlog)
        _maybe(master_start, [a.app], a.master_start_time)
        if a.workers_spawned is not None:
            spawned.add_metric([a.app], a.workers_spawned)
        for setting, where in sorted(a.settings_source.items()):
            source.add_metric([a.app, setting, where], 1)
        busy.add_metric([a.app], _busy(a))
        for w in a.workers:
            lv = [a.app, str(w.slot)]
            w_info.add_metric(lv + [str(w.pid)], 1)
            if w.connections_active is not None:
                w_conn.add_metric(lv + ["active"], w.connections_active)
                w_conn.add_metric(lv + ["client_closed"], w.connections_client_closed or 0)
                if w.connections_idle is not None:
                    w_conn.add_metric(lv + ["idle"], w.connections_idle)
            _maybe(w_beat, lv, w.heartbeat_age)
            w_rss.add_metric(lv, w.rss_bytes)
            w_cpu.add_metric(lv, w.cpu_seconds)
            w_threads.add_metric(lv, w.threads)
            _maybe(w_fds, lv, w.open_fds)
            _maybe(w_maxfds, lv, w.fd_limit)
            w_start.add_metric(lv, w.start_time)
            _maybe(w_db, lv, w.db_connections)
        for lst in a.listeners:
            name = lst.label
            _maybe(l_len, [a.app, name], lst.queue_length)
            _maybe(l_max, [a.app, name], lst.queue_max)
            if lst.drops is not None:
                l_drops.add_metric([a.app, name], lst.drops)

    for app, n in sorted(snap.orphans.items()):
        orphans.add_metric([app], n)

    yield from (up, info, workers, desired, timeout, keepalive, capacity, conn_limit, busy,
                backlog, master_start, spawned, source, errors, orphans, w_info, w_conn, w_beat,
                w_rss, w_cpu, w_threads, w_fds, w_maxfds, w_start, w_db, l_len, l_max, l_drops)
    yield from _render_app_namespaces(snap)

    denied = _g("gunicorn_exporter_permission_denied_processes", "Gunicorn processes whose /proc fd table or environment the exporter may not read (0 = full view).")
    denied.add_metric([], snap.permission_denied)
    src = _g("gunicorn_exporter_socket_table_info", "Where socket queues and states were read from: netlink, procfs, netlink+procfs (masters in several network namespaces) or none (no master found); always 1.", ["source"])
    src.add_metric([snap.socket_source], 1)
    yield denied
    yield src
    for name, value, doc in (
            ("gunicorn_exporter_dropped_masters", snap.dropped_masters,
             "Gunicorn masters found but not measured in this scrape because there are more than --gunicorn.max-masters (shared out between users)."),
            ("gunicorn_exporter_dropped_workers", snap.dropped_workers,
             "Worker processes not measured in this scrape because a master has more than 1024."),
            ("gunicorn_exporter_filtered_masters", snap.filtered_masters,
             "Gunicorn masters not watched because their user is not one of --gunicorn.user."),
            ("gunicorn_exporter_remembered_apps", snap.remembered_apps,
             "Apps the exporter remembers so that a stopped one reads gunicorn_up 0 (at most 256).")):
        g = _g(name, doc)
        g.add_metric([], value)
        yield g
    forgotten = CounterMetricFamily("gunicorn_exporter_forgotten_apps", "Apps dropped from that memory because it was full (the oldest of the user with the most).")
    forgotten.add_metric([], snap.forgotten_apps)
    yield forgotten


def _busy(a: AppSnapshot) -> int:
    """Workers at capacity. When the capacity is not known (the worker class cannot be
    read), a worker with a request in flight counts as busy: exact for sync workers, an
    upper bound for the others."""
    capacity = a.capacity if a.capacity is not None else 1
    if not capacity:
        return 0
    return sum(1 for w in a.workers
               if w.connections_active is not None and w.connections_active >= capacity)


def _maybe(family: GaugeMetricFamily, labels: list[str], value) -> None:
    if value is not None:
        family.add_metric(labels, value)


def render_host(snap: HostSnapshot) -> Iterator[Metric]:
    if snap.somaxconn is not None:
        g = _g("gunicorn_host_somaxconn", "net.core.somaxconn: the kernel's cap on every listen backlog.")
        g.add_metric([], snap.somaxconn)
        yield g
    for name, value, doc in (
            ("gunicorn_host_listen_overflows", snap.listen_overflows,
             "TcpExt ListenOverflows: times a full accept queue made the kernel drop a connection."),
            ("gunicorn_host_listen_drops", snap.listen_drops,
             "TcpExt ListenDrops: SYNs dropped at listening sockets, overflows included.")):
        if value is not None:
            c = CounterMetricFamily(name, doc)
            c.add_metric([], value)
            yield c


def render_oom(snap: OomSnapshot) -> Iterator[Metric]:
    source = GaugeMetricFamily(
        "gunicorn_oom_source_info",
        "Where OOM kills are learned from: kmsg (kernel log records, per kill), cgroup (the "
        "memory cgroup counters of the apps' masters), vmstat (host-wide counter only) or none; "
        "always 1.", labels=["source"])
    source.add_metric([snap.source], 1)
    yield source
    if snap.host_oom_kills is not None:
        host = CounterMetricFamily(
            "gunicorn_host_oom_kills",
            "Processes the kernel OOM killer killed on this host since boot, any process (/proc/vmstat oom_kill).")
        host.add_metric([], snap.host_oom_kills)
        yield host
    worker = CounterMetricFamily(
        "gunicorn_worker_oom_kills",
        "Workers of the app the kernel OOM killer killed since the exporter started (C7).", labels=["app"])
    master = CounterMetricFamily(
        "gunicorn_master_oom_kills",
        "Masters of the app the kernel OOM killer killed since the exporter started (kmsg source only).",
        labels=["app"])
    last = GaugeMetricFamily(
        "gunicorn_last_oom_kill_timestamp_seconds",
        "When the kernel OOM killer last killed a process of the app (seen by the exporter), since the epoch.",
        labels=["app"])
    cgroup = CounterMetricFamily(
        "gunicorn_cgroup_oom_kills",
        "The kernel's OOM kill counter of the memory cgroup the app's master runs in, any process in it "
        "(v2 memory.events, v1 memory.oom_control; not for the root cgroup).", labels=["app"])
    for app, a in sorted(snap.apps.items()):
        worker.add_metric([app], a.worker_kills)
        master.add_metric([app], a.master_kills)
        if a.last_kill_time is not None:
            last.add_metric([app], a.last_kill_time)
        if a.cgroup_oom_kills is not None:
            cgroup.add_metric([app], a.cgroup_oom_kills)
    yield from (worker, master, last, cgroup)
    if snap.source == "kmsg":
        other = CounterMetricFamily(
            "gunicorn_unattributed_oom_kills",
            "OOM kills seen in the kernel log since the exporter started whose victim was not a known gunicorn process.")
        other.add_metric([], snap.unattributed_kills)
        lost = CounterMetricFamily(
            "gunicorn_exporter_kmsg_overruns",
            "Times the kernel ring buffer overwrote records before the exporter read them (kills may be missed).")
        lost.add_metric([], snap.kmsg_lost)
        yield other
        yield lost


def render_logs(snap: LogsSnapshot) -> Iterator[Metric]:
    events = CounterMetricFamily(
        "gunicorn_log_events",
        "Log lines that matched an error signature since the exporter started, by app and signature "
        "(docs/oom-and-logs.md lists the signatures).", labels=["app", "signature"])
    for (app, sig), n in sorted(snap.events.items()):
        events.add_metric([app, sig], n)
    yield events
    if not snap.files:
        return
    lines = CounterMetricFamily("gunicorn_log_lines", "Lines read from the log file since the exporter started.", labels=["file"])
    cut = CounterMetricFamily("gunicorn_log_lines_truncated", "Lines longer than --logs.max-line-length, matched on their beginning only.", labels=["file"])
    rot = CounterMetricFamily("gunicorn_log_rotations", "Rotations (rename-and-create, copytruncate, delete) of the log file the exporter followed.", labels=["file"])
    up = GaugeMetricFamily("gunicorn_log_file_open", "1 if the log file is open and followed; 0 while it does not exist or cannot be read.", labels=["file"])
    err = CounterMetricFamily("gunicorn_log_read_errors", "Polls of the log file that failed (permission denied, not a regular file...).", labels=["file"])
    access = CounterMetricFamily("gunicorn_log_access_lines", "Lines of the log file parsed as access log entries (--logs.access-format): counted in gunicorn_requests_total{source=\"access_log\"}.", labels=["file"])
    unparsed = CounterMetricFamily("gunicorn_log_access_unparsed_lines", "Lines of the log file that look like access log entries (a quoted HTTP request line) but fit no --logs.access-format, skipped.", labels=["file"])
    for f in snap.files:
        access.add_metric([f.path], f.access_lines)
        unparsed.add_metric([f.path], f.access_unparsed)
        lines.add_metric([f.path], f.lines)
        cut.add_metric([f.path], f.truncated_lines)
        rot.add_metric([f.path], f.rotations)
        up.add_metric([f.path], 1 if f.open else 0)
        err.add_metric([f.path], f.errors)
    yield from (lines, cut, rot, up, err, access, unparsed)


def render_postgres(snap: PostgresSnapshot) -> Iterator[Metric]:
    up = _g("gunicorn_postgres_up", "1 if the exporter could query this Postgres server in this scrape, 0 if it is down, refused the login, or did not answer within --postgres.timeout.", ["server"])
    priv = _g("gunicorn_postgres_monitor_privilege", "1 if the exporter's role sees every session (pg_monitor or superuser); 0 if other roles' sessions are hidden.", ["server"])
    max_conn = _g("gunicorn_postgres_max_connections", "The server's max_connections setting, in connections.", ["server"])
    su_reserved = _g("gunicorn_postgres_superuser_reserved_connections", "Connection slots kept for superusers (superuser_reserved_connections).", ["server"])
    reserved = _g("gunicorn_postgres_reserved_connections", "Connection slots kept for roles with pg_use_reserved_connections (reserved_connections, Postgres 16+).", ["server"])
    conns = _g("gunicorn_postgres_connections", "Client backends in pg_stat_activity by database, role, application_name (rare names folded into 'other') and state (unknown = hidden from this role).", ["server", "datname", "usename", "application_name", "state"])
    hidden = _g("gunicorn_postgres_hidden_connections", "Client backends whose state and client address this role may not see (grant pg_monitor to see them).", ["server"])
    idle_tx = _g("gunicorn_postgres_oldest_idle_in_transaction_seconds", "Seconds the longest idle-in-transaction session of the database has been idle in its transaction; 0 if none.", ["server", "datname"])
    oldest = _g("gunicorn_postgres_oldest_query_seconds", "Seconds the longest-running active query of the database has run; 0 if none.", ["server", "datname"])
    app_conn = _g("gunicorn_postgres_app_connections", "Client backends whose socket is held by a worker of this gunicorn app on this host.", ["server", "app"])
    w_conn = _g("gunicorn_postgres_worker_connections", "Client backends whose socket is held by this gunicorn worker (slot).", ["server", "app", "worker"])
    unattr = _g("gunicorn_postgres_unattributed_connections", "Client backends not held by any gunicorn worker seen on this host, by reason: remote (TCP from elsewhere), unix (unmatched unix socket), hidden (no pg_monitor).", ["server", "reason"])
    budget = _g("gunicorn_app_db_connection_budget", "Database connections the app should stay under: workers x per-worker budget (declared with --postgres.app-budget, default one per thread).", ["app"])
    per_worker = _g("gunicorn_app_db_connection_budget_per_worker", "Database connections one worker of the app may hold, and where that number comes from (declared, default, threads).", ["app", "source"])

    for s in snap.servers:
        up.add_metric([s.server], 1 if s.up else 0)
        if not s.up:
            continue
        _maybe(priv, [s.server], None if s.monitor_privilege is None else int(s.monitor_privilege))
        _maybe(max_conn, [s.server], s.max_connections)
        _maybe(su_reserved, [s.server], s.superuser_reserved_connections)
        _maybe(reserved, [s.server], s.reserved_connections)
        for (datname, usename, appname, state), n in sorted(s.connections.items()):
            conns.add_metric([s.server, datname, usename, appname, state], n)
        hidden.add_metric([s.server], s.hidden_connections)
        for datname, age in sorted(s.oldest_idle_in_transaction.items()):
            idle_tx.add_metric([s.server, datname], age)
        for datname, age in sorted(s.oldest_query.items()):
            oldest.add_metric([s.server, datname], age)
        a = s.attribution
        if a is None:
            continue
        for app, n in sorted(a.apps.items()):
            app_conn.add_metric([s.server, app], n)
        for (app, slot), n in sorted(a.workers.items()):
            w_conn.add_metric([s.server, app, str(slot)], n)
        for reason, n in sorted(a.unattributed.items()):
            unattr.add_metric([s.server, reason], n)
    for b in snap.budgets:
        budget.add_metric([b.app], b.total)
        per_worker.add_metric([b.app, b.source], b.per_worker)

    yield from (up, priv, max_conn, su_reserved, reserved, conns, hidden, idle_tx, oldest,
                app_conn, w_conn, unattr, budget, per_worker)


def render_sampler(snap: SamplerSnapshot) -> Iterator[Metric]:
    peak = _g("gunicorn_listener_queue_peak", "Largest accept queue length the sampler saw (every --sampler.interval) in the last --sampler.peak-window: bursts between scrapes.", ["app", "listener"])
    queued = CounterMetricFamily("gunicorn_listener_queued_seconds", "Seconds during which the listener's accept queue was not empty (a connection waited for a worker), sampled every --sampler.interval.", labels=["app", "listener"])
    integral = CounterMetricFamily("gunicorn_listener_queue_length_seconds", "Integral of the accept queue length over time (queue-seconds): rate() of it is the mean queue length over any window.", labels=["app", "listener"])
    for lst in snap.listeners:
        lv = [lst.app, lst.listener]
        _maybe(peak, lv, lst.peak)
        queued.add_metric(lv, lst.queued_seconds)
        integral.add_metric(lv, lst.length_seconds)
    busy = CounterMetricFamily("gunicorn_workers_all_busy_seconds", "Seconds during which every sync worker of the app was busy, or a connection waited in its accept queue (sync worker apps only), sampled every --sampler.interval.", labels=["app"])
    for app, seconds in snap.all_busy_seconds.items():
        busy.add_metric([app], seconds)
    samples = CounterMetricFamily("gunicorn_exporter_sampler_samples", "Samples the sampler took.")
    samples.add_metric([], snap.samples)
    errors = CounterMetricFamily("gunicorn_exporter_sampler_errors", "Samples whose listen queues could not be read.")
    errors.add_metric([], snap.errors)
    skipped = CounterMetricFamily("gunicorn_exporter_sampler_skipped_seconds", "Time between two samples longer than one second (the sampler was starved), not credited to any counter.")
    skipped.add_metric([], snap.skipped_seconds)
    spent = CounterMetricFamily("gunicorn_exporter_sampler_spent_seconds", "Wall-clock time the sampler spent taking samples (its cost).")
    spent.add_metric([], snap.busy_seconds)
    yield from (peak, queued, integral, busy, samples, errors, skipped, spent)


def render_statsd(snap: StatsdSnapshot) -> Iterator[Metric]:
    up = _g("gunicorn_statsd_up", "1 if the exporter receives statsd datagrams on --statsd.listen-address; 0 if it cannot bind it (another statsd daemon holds the port).")
    up.add_metric([], 1 if snap.up else 0)
    yield up
    for name, value, doc in (
            ("gunicorn_statsd_packets", snap.packets, "Statsd datagrams received since the exporter started."),
            ("gunicorn_statsd_malformed_lines", snap.malformed_lines, "Statsd lines that could not be parsed (syntax, a value that is not a finite number, an unknown type, a sample rate outside (0, 1], a negative count or duration), skipped."),
            ("gunicorn_statsd_ignored_lines", snap.ignored_lines, "Well-formed statsd lines of metrics the exporter does not use (gunicorn.workers, gunicorn.requests, an app's own metrics)."),
            ("gunicorn_statsd_sender_lookups", snap.lookups, "Collections that looked up new statsd senders (one UDP socket table read and the fd tables of gunicorn processes; never per packet).")):
        c = CounterMetricFamily(name, doc)
        c.add_metric([], value)
        yield c
    unattr = CounterMetricFamily("gunicorn_statsd_unattributed_lines", "Statsd lines of requests, durations or log messages counted against no app, by reason: unknown_sender (not a gunicorn process the exporter sees, and no --statsd.prefix mapping for the line), limit (sender, prefix or app limits reached).", labels=["reason"])
    for reason, n in sorted(snap.unattributed_lines.items()):
        unattr.add_metric([reason], n)
    senders = _g("gunicorn_statsd_senders", "Statsd senders (source addresses) the exporter holds, by attribution: kernel (socket held by a gunicorn process), pending (not known yet, data kept), unknown (prefix mapping or unattributed).", ["attribution"])
    for kind, n in sorted(snap.senders.items()):
        senders.add_metric([kind], n)
    yield unattr
    yield senders
    if snap.kernel_drops is not None:
        drops = CounterMetricFamily("gunicorn_statsd_dropped_packets", "Datagrams the kernel dropped at the exporter's statsd socket because its receive buffer was full (the socket's sk_drops; the host-wide count is Udp RcvbufErrors).")
        drops.add_metric([], snap.kernel_drops)
        yield drops
    if snap.receive_buffer is not None:
        buf = _g("gunicorn_statsd_receive_buffer_bytes", "Receive buffer of the statsd socket in bytes (SO_RCVBUF as the kernel reports it: twice what was granted).")
        buf.add_metric([], snap.receive_buffer)
        yield buf


def _requests_guarded(snapshot: Snapshot) -> Iterator[Metric]:
    """The request families, from every collector that counts requests (statsd, access
    logs): one family each, a `source` label per collector."""
    parts = [r.data.requests for r in snapshot.results.values()
             if r.success and isinstance(getattr(r.data, "requests", None), RequestsSnapshot)]
    if not parts:
        return
    try:
        families = [_checked(f) for f in render_requests(parts)]
    except Exception as e:  # noqa: BLE001
        log.warning("rendering the request families failed: %r", e)
        return
    yield from families


def render_requests(parts: list[RequestsSnapshot]) -> Iterator[Metric]:
    total = CounterMetricFamily("gunicorn_requests", "Requests answered by the app, by status code (codes outside the HTTP registry are 'other') and source: statsd (gunicorn's --statsd-host stream) or access_log (--logs.file lines).", labels=["app", "source", "status"])
    hist = HistogramMetricFamily("gunicorn_request_duration_seconds", "Time gunicorn took to answer a request (statsd: gunicorn.request.duration), or the duration field of an access log line, in seconds.", labels=["app", "source"])
    logs = CounterMetricFamily("gunicorn_log_messages", "Messages gunicorn logged at level critical, error, warning, or exception (its statsd gunicorn.log.* counters).", labels=["app", "source", "level"])
    for part in parts:
        les = [floatToGoString(b) for b in part.bounds] + ["+Inf"]
        for app, a in sorted(part.apps.items()):
            for status, n in sorted(a.statuses.items()):
                total.add_metric([app, part.source, status], n)
            for level, n in sorted(a.log_levels.items()):
                logs.add_metric([app, part.source, level], n)
            if a.duration_count and len(a.buckets) == len(les):
                cumulative, acc = [], 0.0
                for le, n in zip(les, a.buckets):
                    acc += n
                    cumulative.append((le, acc))
                hist.add_metric([app, part.source], cumulative, a.duration_sum)
    yield from (total, hist, logs)


RENDERERS.update({GunicornSnapshot: render_gunicorn, HostSnapshot: render_host,
                  OomSnapshot: render_oom, LogsSnapshot: render_logs,
                  PostgresSnapshot: render_postgres, SamplerSnapshot: render_sampler})
RENDERERS[StatsdSnapshot] = render_statsd


def render_web(reload_ok: bool) -> Iterator[Metric]:
    g = _g("gunicorn_exporter_web_config_last_reload_successful",
           "1 if the last reading of --web.config.file (at start, on SIGHUP or after a file it "
           "names changed) succeeded; 0 while the previous config stays in force.")
    g.add_metric([], 1 if reload_ok else 0)
    yield g


def render_advice(snap: AdviceSnapshot) -> Iterator[Metric]:
    """gunicorn_advice: the findings of the doctor's rules for this scrape (docs/doctor.md)."""
    g = _g("gunicorn_advice", "A configuration finding of gunicorn-exporter doctor about the app: the catalogue ID of the failure mode it prevents, the rule, and its severity (warning or critical); always 1. docs/doctor.md says what each rule checks and what to change.", ["app", "id", "rule", "severity"])
    for key in snap.findings:
        g.add_metric(list(key), 1)
    yield g


RENDERERS[AdviceSnapshot] = render_advice


def render_self(snapshot: Snapshot) -> Iterator[Metric]:
    ok = _g("gunicorn_exporter_collector_success", "1 if the collector's last run succeeded within its time limit.", ["collector"])
    dur = _g("gunicorn_exporter_collector_duration_seconds", "How long the collector's last run took, in seconds.", ["collector"])
    for name, r in sorted(snapshot.results.items()):
        ok.add_metric([name], 1 if r.success else 0)
        dur.add_metric([name], r.duration)
    yield ok
    yield dur
    build = InfoMetricFamily("gunicorn_exporter_build", "Version of gunicorn-exporter and the Python running it.")
    build.add_metric([], {"version": __version__, "python_version": platform.python_version()})
    yield build
