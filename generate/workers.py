"""The dashboard's Workers row: a series per worker, and for apps without per-worker
series (--gunicorn.worker-series=none) the app-level series made from the same workers
(gunicorn_workers_*), so that every panel shows data in both modes."""

from __future__ import annotations

from generate.panels import S, Panel, alert_steps, increase, pct, rate, table, timeseries

# A worker's highest heartbeat age since about the last scrape, else (sampler off) its
# age at the scrape; and the same for the app's workers together: what the alerts read.
HEARTBEAT = f"(gunicorn_worker_heartbeat_age_max_seconds{{{S}}} or gunicorn_worker_heartbeat_age_seconds{{{S}}})"
APP_HEARTBEAT = (f"(gunicorn_workers_heartbeat_age_peak_seconds{{{S}}}"
                 f" or gunicorn_workers_heartbeat_age_max_seconds{{{S}}})")
INFO_LABELS = "version, worker_class, user"
# Panels that show a series per worker also draw the app-level series made from the
# same workers for apps without per-worker series (--gunicorn.worker-series=none).
NO_WORKER_SERIES = " (with --gunicorn.worker-series=none: {what} of each app)"


def app_level(app_expr: str, worker_expr: str) -> str:
    """`app_expr` (per app) for the apps that have no series of `worker_expr`."""
    return f"({app_expr}) unless on (job, instance, app) ({worker_expr})"


def per_worker(title: str, description: str, expr: str, app_expr: str, what: str,
               **options) -> Panel:
    """A panel of `expr`, one series a worker, and `app_expr` (`what`, per app) where
    there are no per-worker series; half the width."""
    return timeseries(title, description + NO_WORKER_SERIES.format(what=what),
                      [(expr, "{{app}} w{{worker}}"),
                       (app_level(app_expr, expr), "{{app}} " + what)], **options), 12, 8



def workers(t: dict[str, float]) -> list[Panel]:
    """Per worker: connections, heartbeats, memory, fds, CPU, churn (per app without the
    per-worker series)."""
    active = f'gunicorn_worker_connections{{{S}, state="active"}}'
    closed = f'gunicorn_worker_connections{{{S}, state="client_closed"}}'
    stall_classes = (f" and ignoring ({INFO_LABELS}) "
                     f'gunicorn_info{{{S}, worker_class=~"gthread|gevent|eventlet|tornado"}}')
    return [
        (timeseries("Connections per worker",
                    "Client connections each worker holds: active, and client_closed (the client "
                    "hung up, the worker still works on it: W8), against the worker's capacity "
                    "(threads / worker_connections) and worker_connections (gthread hangs there: C3; "
                    f"{pct(t, 'connections_warning')} x worker_connections is the alert, on the "
                    "worker that holds the most, gunicorn_workers_connections_max). W9, W7."
                    + NO_WORKER_SERIES.format(what="the most one worker holds"),
                    [(active, "{{app}} w{{worker}} active"),
                     (closed, "{{app}} w{{worker}} client_closed"),
                     (app_level(f"gunicorn_workers_connections_max{{{S}}}",
                                f"gunicorn_worker_connections{{{S}}}"), "{{app}} most of one worker"),
                     (f"gunicorn_worker_capacity{{{S}}}", "{{app}} (capacity)"),
                     (f"gunicorn_worker_connections_limit{{{S}}}", "{{app}} worker_connections (limit)"),
                     (f"{t['connections_warning']:g} * gunicorn_worker_connections_limit{{{S}}}",
                      "{{app}} alert (threshold)")],
                    decimals=0), 12, 8),
        (timeseries("Heartbeat age vs timeout",
                    "Seconds since each worker last notified the master: for a sync worker, how "
                    "long its current request has run. The master kills the worker at the timeout "
                    f"(WORKER TIMEOUT, W5); {pct(t, 'heartbeat_warning')} x timeout is the alert. "
                    "Idle sync workers reach timeout/2 normally. The highest age since about "
                    "the last scrape (the sampler reads it every second) is what the alert "
                    "compares: a request that nears the timeout between two scrapes. W5, W8, "
                    "W6, C2." + NO_WORKER_SERIES.format(what="the oldest heartbeat"),
                    [(f"gunicorn_worker_heartbeat_age_seconds{{{S}}}", "{{app}} w{{worker}}"),
                     (f"gunicorn_worker_heartbeat_age_max_seconds{{{S}}}",
                      "{{app}} w{{worker}} highest between scrapes"),
                     (app_level(APP_HEARTBEAT, f"gunicorn_worker_heartbeat_age_seconds{{{S}}}"),
                      "{{app}} oldest heartbeat"),
                     (f"gunicorn_timeout_seconds{{{S}}} > 0", "{{app}} timeout (limit)"),
                     (f"{t['heartbeat_warning']:g} * gunicorn_timeout_seconds{{{S}}} > 0",
                      "{{app}} alert (threshold)")],
                    unit="s"), 12, 8),
        per_worker("Heartbeat age / timeout",
                   f"Each worker's highest heartbeat age since about the last scrape (the age at "
                   f"the scrape when the sampler is off) as a fraction of its app's timeout; "
                   f"the alert reads the oldest of the app; dashed: the alert threshold "
                   f"({pct(t, 'heartbeat_warning')}). W5.",
                   HEARTBEAT + f" / on (job, instance, app) group_left () (gunicorn_timeout_seconds{{{S}}} > 0)",
                   APP_HEARTBEAT + f" / on (job, instance, app) (gunicorn_timeout_seconds{{{S}}} > 0)",
                   "oldest heartbeat",
                   unit="percentunit", threshold=alert_steps(t, "heartbeat_warning"), max_=1),
        per_worker("Main loop stall (gthread, gevent, eventlet, tornado)",
                   "Heartbeat age of workers that refresh their heartbeat every second from their "
                   "main loop while they serve requests: an age of seconds means CPU-bound code, a "
                   "lock or a blocking call holds the loop and none of the worker's connections is "
                   f"served. Dashed: the alert threshold ({pct(t, 'loop_stall_warning')} s). "
                   "Sync workers are in the heartbeat panels above. W6, C1.",
                   HEARTBEAT + " and ignoring (worker, " + INFO_LABELS + ") "
                   f'gunicorn_info{{{S}, worker_class=~"gthread|gevent|eventlet|tornado"}}',
                   APP_HEARTBEAT + stall_classes, "oldest heartbeat",
                   unit="s", threshold=alert_steps(t, "loop_stall_warning"),
                   no_value="No gthread, gevent, eventlet or tornado worker"),
        per_worker("Resident memory per worker",
                   "RSS of each worker. Rising together with connections: W3, W7; growth before "
                   "a kill: C7; the alert reads the largest worker's.",
                   f"gunicorn_worker_resident_memory_bytes{{{S}}}",
                   f"gunicorn_workers_resident_memory_max_bytes{{{S}}}", "largest worker",
                   unit="bytes"),
        per_worker("Open fds / fd limit",
                   f"Each worker's open file descriptors over its ulimit -n; dashed: the alert "
                   f"threshold ({pct(t, 'fd_warning')}), on the fullest worker. W10.",
                   f"gunicorn_worker_open_fds{{{S}}} / gunicorn_worker_max_fds{{{S}}}",
                   f"gunicorn_workers_open_fds_max_ratio{{{S}}}", "fullest worker",
                   unit="percentunit", threshold=alert_steps(t, "fd_warning"), max_=1),
        per_worker("CPU per worker",
                   "CPU time per second of each worker (1 = one core). A busy worker that uses "
                   "little CPU waits on I/O: W1, W6, I2.",
                   f"rate(gunicorn_worker_cpu_seconds_total{{{S}}}[$__rate_interval])",
                   f"rate(gunicorn_workers_cpu_seconds_total{{{S}}}[$__rate_interval])",
                   "all workers",
                   unit="percentunit"),
        (timeseries("Worker churn",
                    "Workers spawned per second, kill signals the master sent and its reloads "
                    "(control socket), and worker slots whose process changed (with "
                    "--gunicorn.worker-series=all): --max-requests recycling, timeouts (W5), "
                    "OOM kills (C7: spawns without kill signals).",
                    [(rate("gunicorn_workers_spawned_total"), "{{app}} @ {{instance}} spawned/s"),
                     (rate("gunicorn_worker_kill_signals_total"),
                      "{{app}} @ {{instance}} kill signals/s"),
                     (increase("gunicorn_master_reloads_total"), "{{app}} @ {{instance}} reloads"),
                     (f"sum by (instance, app) (changes(gunicorn_worker_pid{{{S}}}[$__rate_interval]))",
                      "{{app}} @ {{instance}} slots restarted")]), 12, 8),
        (table("Apps", "gunicorn release, worker class and user of each app (gunicorn_info).",
               f"gunicorn_info{{{S}}}"), 24, 5),
    ]
