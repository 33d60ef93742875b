"""Families of the gunicorn collector and of the sampler: apps, workers, listeners,
the apps' network namespaces and pods, and what happened between scrapes."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, Metric

from exporter.metrics.family import _g, _maybe
from exporter.metrics.workers import busy_workers, render_app_workers, render_workers
from exporter.snapshot import GunicornSnapshot, SamplerSnapshot


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
    busy = _g("gunicorn_workers_busy", "Workers whose requests (active connections, and connections whose client has gone that a thread still serves) are at or above their capacity.", ["app"])
    backlog = _g("gunicorn_backlog", "Configured --backlog; the kernel caps it at net.core.somaxconn (see gunicorn_listener_queue_max).", ["app"])
    master_start = _g("gunicorn_master_start_time_seconds", "Start time of the master process since the epoch.", ["app"])
    answer_age = _g("gunicorn_control_socket_answer_age_seconds", "Seconds since the control socket answer whose settings this scrape uses came: it is asked again when workers change and every 60 s, beside the scrape; a master that stops answering keeps its last answer, growing older.", ["app"])
    spawned = CounterMetricFamily("gunicorn_workers_spawned", "Workers the master has spawned since it started (control socket only).", labels=["app"])
    killed = CounterMetricFamily("gunicorn_worker_kill_signals", "SIGTERM and SIGKILL signals the master has sent to its workers since it started (gunicorn's workers_killed): retiring workers after a reload or TTOU, shutting down, escalating a WORKER TIMEOUT; a worker slow to exit is signalled again each master loop, and workers killed by others (OOM killer, kill -9) are not in it (control socket only).", labels=["app"])
    reloads = CounterMetricFamily("gunicorn_master_reloads", "Reloads (HUP) the master has done since it started: each replaces every worker (control socket only).", labels=["app"])
    source = _g("gunicorn_setting_source_info", "Where the exporter learned each setting: control_socket, cmdline, env, config_file, default, kernel (backlog of the listening sockets) or unknown (not knowable: its gauge is absent); always 1.", ["app", "setting", "source"])
    errors = _g("gunicorn_exporter_app_errors", "Parts of this app's data that could not be collected in this scrape (0 = complete; the exporter's log says what failed).", ["app"])
    orphans = _g("gunicorn_orphan_workers", "Worker processes of the app whose master is gone (killed with -9 while they were busy); they serve nothing new and exit after their current request.", ["app"])

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
        for family, value in ((spawned, a.workers_spawned), (killed, a.workers_killed),
                              (reloads, a.reloads)):
            if value is not None:
                family.add_metric([a.app], value)
        _maybe(answer_age, [a.app], a.control_answer_age)
        for setting, where in sorted(a.settings_source.items()):
            source.add_metric([a.app, setting, where], 1)
        busy.add_metric([a.app], len(busy_workers(a)))
        for lst in a.listeners:
            name = lst.label
            _maybe(l_len, [a.app, name], lst.queue_length)
            _maybe(l_max, [a.app, name], lst.queue_max)
            if lst.drops is not None:
                l_drops.add_metric([a.app, name], lst.drops)

    for app, n in sorted(snap.orphans.items()):
        orphans.add_metric([app], n)

    running = [a for a in snap.apps if a.up]
    yield from (up, info, workers, desired, timeout, keepalive, capacity, conn_limit, busy,
                backlog, master_start, answer_age, spawned, killed, reloads, source, errors, orphans)
    yield from render_app_workers(running)
    yield from render_workers(running)
    yield from (l_len, l_max, l_drops)
    yield from _render_app_namespaces(snap)
    yield from render_dependencies(snap)

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


def render_dependencies(snap: GunicornSnapshot) -> Iterator[Metric]:
    """What the apps' workers are connected to, and wait on (exporter/gunicorn/dependencies.py)."""
    conns = _g("gunicorn_dependency_connections", "Outbound connections of the app's workers to a peer (its dependency: host:port, [v6]:port or unix:PATH), by TCP state: established, syn_sent (the peer does not accept, or no source port is free), close_wait (the peer closed, the worker has not).", ["app", "peer", "state"])
    waiting = _g("gunicorn_dependency_waiting_workers", "Workers (sync) or connections (gthread, async) that sent to the peer and have had no reply since: waiting on it now.", ["app", "peer"])
    wait = _g("gunicorn_dependency_wait_seconds", "The longest of those waits now, in seconds (TCP: since the request went out; unknown for unix peers).", ["app", "peer"])
    for a in snap.apps:
        if not a.up:
            continue
        for peer, d in sorted(a.dependencies.items()):
            for state, n in sorted(d.connections.items()):
                conns.add_metric([a.app, peer, state], n)
            waiting.add_metric([a.app, peer], d.waiting)
            _maybe(wait, [a.app, peer], d.wait)
    yield from (conns, waiting, wait)


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
    beat_max = _g("gunicorn_worker_heartbeat_age_max_seconds", "Highest heartbeat age of the worker slot in the last --sampler.peak-window (read every second, and at the scrape): a request that comes close to --timeout between two scrapes.", ["app", "worker"])
    beat_peak = _g("gunicorn_workers_heartbeat_age_peak_seconds", "Highest heartbeat age of any worker of the app in the last --sampler.peak-window (read every second, and at the scrape).", ["app"])
    peaks: dict[str, float] = {}
    for app, slot, seconds in snap.heartbeat_max:
        beat_max.add_metric([app, str(slot)], seconds)
        peaks[app] = max(seconds, peaks.get(app, seconds))
    for app, seconds in sorted(peaks.items()):
        beat_peak.add_metric([app], seconds)
    dep = CounterMetricFamily("gunicorn_dependency_waiting_seconds", "Worker-seconds (sync workers; gthread and async: connection-seconds) spent waiting for the peer's reply, read once a second between scrapes.", labels=["app", "peer"])
    for app, peer, seconds in snap.dependency_waiting:
        dep.add_metric([app, peer], seconds)
    samples = CounterMetricFamily("gunicorn_exporter_sampler_samples", "Samples the sampler took.")
    samples.add_metric([], snap.samples)
    errors = CounterMetricFamily("gunicorn_exporter_sampler_errors", "Samples whose listen queues could not be read.")
    errors.add_metric([], snap.errors)
    skipped = CounterMetricFamily("gunicorn_exporter_sampler_skipped_seconds", "Time between two samples longer than one second (the sampler was starved), not credited to any counter.")
    skipped.add_metric([], snap.skipped_seconds)
    spent = CounterMetricFamily("gunicorn_exporter_sampler_spent_seconds", "Wall-clock time the sampler spent taking samples (its cost).")
    spent.add_metric([], snap.busy_seconds)
    yield from (peak, queued, integral, busy, beat_peak, beat_max, dep, samples, errors, skipped, spent)
