"""Families of the host, OOM, logs, Postgres, statsd and advice collectors, and the
request families that statsd and access logs share."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily,
                                    HistogramMetricFamily, Metric)
from prometheus_client.utils import floatToGoString

from exporter.metrics.family import _g, _maybe
from exporter.snapshot import (AdviceSnapshot, HostSnapshot, LogsSnapshot, OomSnapshot,
                               PostgresSnapshot, QueueSnapshot, RequestsSnapshot,
                               StatsdSnapshot)


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
    malformed = CounterMetricFamily("gunicorn_log_malformed_lines", "Lines of the log file not believed, by reason: duration (an access log duration longer than the app's timeout plus 30 s for a sync app, or an hour: the request is counted, its duration is not), pid (a gunicorn line whose writer belongs to another app than the file's, or whose message is about a worker of another app than its writer's: not counted).", labels=["file", "reason"])
    lost = CounterMetricFamily("gunicorn_log_lines_lost", "Lines the exporter knows the file held and did not read (a copytruncate copy's rest past 64 MiB).", labels=["file"])
    recovered = CounterMetricFamily("gunicorn_log_lines_recovered", "Lines read from a copytruncate copy: written before the copy, not yet read when the file was truncated.", labels=["file"])
    for f in snap.files:
        for reason in ("duration", "pid"):
            malformed.add_metric([f.path, reason], f.malformed.get(reason, 0))
        lost.add_metric([f.path], f.lines_lost)
        recovered.add_metric([f.path], f.lines_recovered)
        access.add_metric([f.path], f.access_lines)
        unparsed.add_metric([f.path], f.access_unparsed)
        lines.add_metric([f.path], f.lines)
        cut.add_metric([f.path], f.truncated_lines)
        rot.add_metric([f.path], f.rotations)
        up.add_metric([f.path], 1 if f.open else 0)
        err.add_metric([f.path], f.errors)
    yield from (lines, cut, rot, up, err, access, unparsed, malformed, lost, recovered)
    if snap.queue is not None:
        yield from render_queue(snap.queue)


def render_queue(q: QueueSnapshot) -> Iterator[Metric]:
    hist = HistogramMetricFamily("gunicorn_request_queue_seconds", "Time a request waited between its arrival at the proxy (X-Request-Start, logged by gunicorn's access log) and gunicorn's start of it (the line's end, seen through inotify, minus its duration), in seconds.", labels=["app"])
    skew = CounterMetricFamily("gunicorn_request_queue_clock_skew", "Access log lines whose X-Request-Start gave a negative queue time, one over an hour, or no time at all: not observed (the proxy's and the host's clocks differ, or a client sent the header).", labels=["app"])
    unmeasured = CounterMetricFamily("gunicorn_request_queue_unmeasured", "Access log lines with an X-Request-Start whose queue time was not measured: no duration in the line, or the line was not read as it was written (no inotify, or read by the fallback poll).", labels=["app"])
    les = [floatToGoString(b) for b in q.bounds] + ["+Inf"]
    for app, a in sorted(q.apps.items()):
        if len(a.buckets) == len(les):
            cumulative, acc = [], 0.0
            for le, n in zip(les, a.buckets):
                acc += n
                cumulative.append((le, acc))
            hist.add_metric([app], cumulative, a.duration_sum)
        skew.add_metric([app], q.skew.get(app, 0))
        unmeasured.add_metric([app], q.unmeasured.get(app, 0))
    yield from (hist, skew, unmeasured)


def render_postgres(snap: PostgresSnapshot) -> Iterator[Metric]:
    kind = _g("gunicorn_dependency_info", "The app's workers are connected to this peer, and it is a server of this kind (postgres: one of --postgres.dsn); always 1.", ["app", "peer", "kind"])
    for app, peer in snap.dependency_peers:
        kind.add_metric([app, peer, "postgres"], 1)
    yield kind
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


def render_requests(parts: list[RequestsSnapshot]) -> Iterator[Metric]:
    # a route label only when routes are configured (--requests.route); statsd's series
    # then carry route="" (an empty label is no label to Prometheus)
    routed = any(p.routes for p in parts)
    extra = ["route"] if routed else []
    total = CounterMetricFamily("gunicorn_requests", "Requests answered by the app, by status code (codes outside the HTTP registry are 'other') and source: statsd (gunicorn's --statsd-host stream) or access_log (--logs.file lines); route with --requests.route.", labels=["app", "source", "status"] + extra)
    hist = HistogramMetricFamily("gunicorn_request_duration_seconds", "Time gunicorn took to answer a request (statsd: gunicorn.request.duration), or the duration field of an access log line, in seconds.", labels=["app", "source"] + extra)
    logs = CounterMetricFamily("gunicorn_log_messages", "Messages gunicorn logged at level critical, error, warning, or exception (its statsd gunicorn.log.* counters).", labels=["app", "source", "level"])
    for part in parts:
        les = [floatToGoString(b) for b in part.bounds] + ["+Inf"]
        items = [((app, ""), a) for app, a in sorted(part.apps.items())] + sorted(part.routes.items())
        for (app, route), a in items:
            r = [route] if routed else []
            for status, n in sorted(a.statuses.items()):
                total.add_metric([app, part.source, status] + r, n)
            for level, n in sorted(a.log_levels.items()):
                logs.add_metric([app, part.source, level], n)
            if a.duration_count and len(a.buckets) == len(les):
                cumulative, acc = [], 0.0
                for le, n in zip(les, a.buckets):
                    acc += n
                    cumulative.append((le, acc))
                hist.add_metric([app, part.source] + r, cumulative, a.duration_sum)
    yield from (total, hist, logs)


def render_advice(snap: AdviceSnapshot) -> Iterator[Metric]:
    """gunicorn_advice: the findings of the doctor's rules for this scrape (docs/doctor.md)."""
    g = _g("gunicorn_advice", "A configuration finding of gunicorn-exporter doctor about the app: the catalogue ID of the failure mode it prevents, the rule, and its severity (warning or critical); always 1. docs/doctor.md says what each rule checks and what to change.", ["app", "id", "rule", "severity"])
    for key in snap.findings:
        g.add_metric(list(key), 1)
    yield g
