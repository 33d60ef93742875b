"""The panels of the dashboard's rows below the Overview, one function a row (its title
and place: generate/dashboard.py; the Workers row: generate/workers.py): (panel, width,
height) in reading order; `t` holds the alert thresholds (generate/panels.py's
`thresholds`)."""

from __future__ import annotations

from generate.workers import NO_WORKER_SERIES, app_level
from generate.panels import (H, NEEDS_LOGS, NEEDS_OOM, NEEDS_POSTGRES, NEEDS_BUDGET,
                             NEEDS_REQUESTS, NEEDS_RULES, NEEDS_SAMPLER, S, Panel, alert_steps,
                             increase, pct, rate, table, threshold_steps, timeseries)

def saturation(t: dict[str, float]) -> list[Panel]:
    """Busy workers, accept queues, drops, backlogs, slow requests."""
    queue = timeseries("Accept queue length vs limit",
                       "gunicorn_listener_queue_length (connections waiting for a worker, ss -l Recv-Q) "
                       "and the queue's limit gunicorn_listener_queue_max (right axis). C1, C2, W11.",
                       [(f"gunicorn_listener_queue_length{{{S}}}", "{{app}} {{listener}}"),
                        (f"gunicorn_listener_queue_max{{{S}}}", "{{app}} {{listener}} (limit)")],
                       decimals=0)
    queue["fieldConfig"]["overrides"][0]["properties"].append(   # limits on the right axis
        {"id": "custom.axisPlacement", "value": "right"})
    return [
        (timeseries("Busy workers vs workers",
                    "gunicorn_workers_busy (workers whose active connections reach their capacity) "
                    "against the workers alive and the workers configured. Busy = workers for "
                    "minutes with a queue: C1; high most of the time: W2.",
                    [(f"sum by (instance, app) (gunicorn_workers_busy{{{S}}})", "{{app}} @ {{instance}} busy"),
                     (f"sum by (instance, app) (gunicorn_workers{{{S}}})", "{{app}} @ {{instance}} workers (capacity)"),
                     (f"sum by (instance, app) (gunicorn_workers_desired{{{S}}})", "{{app}} @ {{instance}} desired (limit)")],
                    decimals=0), 12, 8),
        (timeseries("Busy ratio",
                    f"Busy workers / workers per app. Dashed: the alert thresholds "
                    f"({pct(t, 'busy_warning', 'busy_critical')}), which the alerts compare with "
                    f"the average over their window; the critical one also needs requests waiting "
                    f"all through its window. C1, W1, W2, W6.",
                    [(f"gunicorn_workers_busy{{{S}}} / (gunicorn_workers{{{S}}} > 0)", "{{app}} @ {{instance}}")],
                    unit="percentunit", threshold=alert_steps(t, "busy_warning", "busy_critical"), max_=1), 12, 8),
        (queue, 12, 8),
        (timeseries("Accept queue fill",
                    f"Queue length / queue limit per listener. Dashed: the alert thresholds "
                    f"({pct(t, 'queue_warning', 'queue_critical')}). A unix socket that stays full "
                    f"for minutes is C2.",
                    [(f"gunicorn_listener_queue_length{{{S}}} / (gunicorn_listener_queue_max{{{S}}} > 0)",
                      "{{app}} {{listener}}")],
                    unit="percentunit", threshold=alert_steps(t, "queue_warning", "queue_critical"), max_=1), 12, 8),
        (timeseries("Accept queue peaks between scrapes",
                    "gunicorn_listener_queue_peak: the deepest accept queue the exporter's sampler "
                    "saw (ten times a second) in the last 15 s, so bursts that drain before the "
                    "next scrape still show. C1, C2, W11.",
                    [(f"gunicorn_listener_queue_peak{{{S}}}", "{{app}} {{listener}}"),
                     (f"gunicorn_listener_queue_max{{{S}}}", "{{app}} {{listener}} (limit)")],
                    decimals=0, no_value=NEEDS_SAMPLER), 12, 8),
        (timeseries("Time requests waited / all workers busy",
                    f"Share of each 5 minutes during which a connection waited in the accept "
                    f"queue (app:gunicorn_listener_queued:ratio_rate5m, the busiest listener) and "
                    f"during which every sync worker was busy "
                    f"(rate of gunicorn_workers_all_busy_seconds_total), both sampled ten times a "
                    f"second. Dashed: the alert threshold ({pct(t, 'queued_warning')}). W2, C1.",
                    [(f"max by (instance, app) (rate(gunicorn_listener_queued_seconds_total{{{S}}}[5m]))",
                      "{{app}} @ {{instance}} waited"),
                     (f"rate(gunicorn_workers_all_busy_seconds_total{{{S}}}[5m])",
                      "{{app}} @ {{instance}} all busy")],
                    unit="percentunit", threshold=alert_steps(t, "queued_warning"), max_=1,
                    no_value=NEEDS_SAMPLER), 12, 8),
        (timeseries("Dropped connections per listener",
                    "Connections the kernel dropped at each TCP listening socket of an app "
                    "(gunicorn_listener_drops_total, sk_drops), per second: a full accept queue. "
                    "Any drop within its window is the GunicornListenDrops alert. Unix sockets "
                    "refuse with EAGAIN instead (nginx logs it); absent for masters in another "
                    "network namespace. W11, C1.",
                    [(rate("gunicorn_listener_drops_total", S, "instance, app, listener"),
                      "{{app}} {{listener}}")],
                    unit="cps"), 12, 8),
        (timeseries("Listen overflows and drops (host)",
                    "TcpExt ListenOverflows / ListenDrops per second in the exporter's network "
                    "namespace: a full accept queue made the kernel drop connections somewhere on "
                    "the host (the panel per listener says where). W11, C1.",
                    [(rate("gunicorn_host_listen_overflows_total", H, "instance"), "{{instance}} overflows"),
                     (rate("gunicorn_host_listen_drops_total", H, "instance"), "{{instance}} drops")],
                    unit="cps"), 12, 8),
        (timeseries("Backlog vs somaxconn",
                    "The configured --backlog against net.core.somaxconn, which silently caps it. W11.",
                    [(f"gunicorn_backlog{{{S}}}", "{{app}} backlog"),
                     (f"max by (instance) (gunicorn_host_somaxconn{{{H}}})", "{{instance}} somaxconn (limit)")],
                    decimals=0), 12, 8),
        (timeseries("Request age of busy sync workers / timeout",
                    "Mean heartbeat age / --timeout of each sync app's busy workers: how far into "
                    "--timeout their current requests are (app:gunicorn_busy_worker_heartbeat_timeout:avg_ratio). "
                    f"Dashed: the alert threshold ({pct(t, 'slow_requests_warning')}, averaged over "
                    "its window, with most workers busy): a slow dependency holds the workers. "
                    f"It {NEEDS_RULES}. W6, W5.",
                    [(f"app:gunicorn_busy_worker_heartbeat_timeout:avg_ratio{{{S}}}", "{{app}} @ {{instance}}")],
                    unit="percentunit", threshold=alert_steps(t, "slow_requests_warning"), max_=1,
                    no_value=f"No busy sync worker, or: {NEEDS_RULES}"), 12, 8),
    ]


def requests(t: dict[str, float]) -> list[Panel]:
    """Requests from gunicorn's statsd stream and access logs (docs/requests.md)."""
    # Per app and source; the sources are never summed (a proxy's access log holds its
    # own 502s).
    by = "job, instance, app, source"
    latency = [(f"histogram_quantile({q}, sum by ({by}, le) (rate(gunicorn_request_duration_seconds_bucket"
                f"{{{S}}}[$__rate_interval])))", "{{app}} {{source}} " + name)
               for q, name in ((0.5, "p50"), (0.95, "p95"), (0.99, "p99"))]
    return [
        (timeseries("Requests per second by status",
                    "gunicorn_requests_total per app, source (statsd: gunicorn's --statsd-host "
                    "stream, attributed to the app by the kernel; access_log: --logs.file lines) "
                    f"and status code. It {NEEDS_REQUESTS}. C1, W8.",
                    [(rate("gunicorn_requests_total", S, "instance, app, source, status"),
                      "{{app}} {{source}} {{status}}")],
                    unit="reqps", stack=True, no_value=f"No data: {NEEDS_REQUESTS}"), 12, 8),
        (timeseries("Error ratio (5xx / all)",
                    "Share of each app's requests answered 5xx, per source. Dashed: the alert "
                    f"threshold ({pct(t, 'error_ratio_critical')}), which the alert compares with "
                    "5-minute rates and only above 0.1 requests a second. From an access log it "
                    f"includes the proxy's own 502 and 504. It {NEEDS_REQUESTS}. C1, W8.",
                    [(f"sum by ({by}) (rate(gunicorn_requests_total{{{S}, status=~\"5..\"}}[$__rate_interval]))"
                      f" / (sum by ({by}) (rate(gunicorn_requests_total{{{S}}}[$__rate_interval])) > 0)",
                      "{{app}} @ {{instance}} {{source}}")],
                    unit="percentunit", threshold=alert_steps(t, "error_ratio_critical"), max_=1,
                    no_value=f"No data: {NEEDS_REQUESTS}"), 12, 8),
        (timeseries("Request duration p50 / p95 / p99",
                    "Quantiles of gunicorn_request_duration_seconds per app and source (statsd: "
                    "gunicorn's request time in the worker; an access log's duration field, nginx's "
                    "including the accept queue). Dashed: the p99 alert threshold "
                    f"({pct(t, 'latency_p99_warning')} s over 5 minutes). Buckets end at 10, 30 and "
                    f"60 s. It {NEEDS_REQUESTS}. W6, W8.",
                    latency, unit="s", threshold=alert_steps(t, "latency_p99_warning"),
                    no_value=f"No data: {NEEDS_REQUESTS}"), 12, 8),
        (timeseries("Queue time p50 / p90 (proxy to gunicorn)",
                    "Quantiles of gunicorn_request_queue_seconds per app: the time from a request's "
                    "arrival at the proxy (its X-Request-Start header) to gunicorn's start of it, the "
                    "wait gunicorn's own duration leaves out. Dashed: the p90 alert threshold "
                    f"({pct(t, 'queue_p90_warning')} s over 5 minutes). Needs the proxy to set "
                    "X-Request-Start and gunicorn's access log to log it (docs/requests.md#queue-time). "
                    "W2, C1.",
                    [(f"histogram_quantile({q}, sum by (job, instance, app, le) (rate("
                      f"gunicorn_request_queue_seconds_bucket{{{S}}}[$__rate_interval])))",
                      "{{app}} @ {{instance}} " + name) for q, name in ((0.5, "p50"), (0.9, "p90"))],
                    unit="s", threshold=alert_steps(t, "queue_p90_warning"),
                    no_value="No data: no access log with X-Request-Start (docs/requests.md#queue-time)"),
         12, 8),
        (timeseries("gunicorn log messages by level",
                    "Messages gunicorn logged at critical, error, warning or exception level "
                    "(gunicorn_log_messages_total, from its statsd gunicorn.log.* counters): "
                    f"exceptions rise with 500s. It {NEEDS_REQUESTS}.",
                    [(increase("gunicorn_log_messages_total", S, "instance, app, level"),
                      "{{app}} @ {{instance}} {{level}}")],
                    bars=True, decimals=0, no_value=f"No data: {NEEDS_REQUESTS}"), 24, 8),
        (timeseries("statsd receiver",
                    "Datagrams the exporter's statsd socket receives per second, lines it could not "
                    "parse, lines it could attribute to no app (by reason: unknown_sender = no "
                    "gunicorn the exporter sees and no --statsd.prefix; limit), and datagrams the "
                    "kernel dropped at the socket (raise --statsd.receive-buffer). docs/requests.md.",
                    [(rate("gunicorn_statsd_packets_total", H, "instance"), "{{instance}} datagrams"),
                     (rate("gunicorn_statsd_malformed_lines_total", H, "instance"), "{{instance}} malformed lines"),
                     (rate("gunicorn_statsd_unattributed_lines_total", H, "instance, reason"),
                      "{{instance}} unattributed lines: {{reason}}"),
                     (rate("gunicorn_statsd_dropped_packets_total", H, "instance"), "{{instance}} dropped by the kernel")],
                    unit="short", no_value="No data: the statsd collector is off (--no-collector.statsd)"), 24, 6),
    ]


def database(t: dict[str, float]) -> list[Panel]:
    """Postgres connections, budgets, old transactions."""
    # As the alerts count: max_connections minus the slots ordinary roles can never use.
    usable = (f"(gunicorn_postgres_max_connections{{{H}}}"
              f" - gunicorn_postgres_superuser_reserved_connections{{{H}}}"
              f" - (gunicorn_postgres_reserved_connections{{{H}}}"
              f" or 0 * gunicorn_postgres_superuser_reserved_connections{{{H}}}))")
    return [
        (timeseries("Postgres connections by state",
                    "Client backends in pg_stat_activity per server and state (stacked), against "
                    "max_connections, the connections ordinary roles may open (max_connections "
                    "minus reserved slots) and the alert thresholds on those "
                    f"({pct(t, 'pg_warning', 'pg_critical')}). It {NEEDS_POSTGRES}. C5, C6.",
                    [(f"sum by (instance, server, state) (gunicorn_postgres_connections{{{H}}})",
                      "{{server}} {{state}}"),
                     (f"max by (instance, server) (gunicorn_postgres_max_connections{{{H}}})",
                      "{{server}} max_connections (limit)"),
                     (f"max by (instance, server) {usable}", "{{server}} usable (limit)"),
                     (f"{t['pg_warning']:g} * max by (instance, server) {usable}",
                      "{{server}} warning (threshold)"),
                     (f"{t['pg_critical']:g} * max by (instance, server) {usable}",
                      "{{server}} critical (threshold)")],
                    stack=True, decimals=0, no_value=f"No data: {NEEDS_POSTGRES}"), 12, 8),
        (timeseries("Postgres connections / usable connections",
                    "All client backends of a server over max_connections minus reserved slots, "
                    f"as the alerts compute it; dashed: the alert thresholds "
                    f"({pct(t, 'pg_warning', 'pg_critical')}). It {NEEDS_POSTGRES}. C5, C6.",
                    [(f"sum by (job, instance, server) (gunicorn_postgres_connections{{{H}}}) / on (job, instance, server) "
                      f"({usable} > 0)", "{{server}}")],
                    unit="percentunit", threshold=alert_steps(t, "pg_warning", "pg_critical"), max_=1,
                    no_value=f"No data: {NEEDS_POSTGRES}"), 12, 8),
        (timeseries("DB connections by app vs budget",
                    "Database connections each app's workers hold (counted from their sockets, and "
                    "as pg_stat_activity attributes them) against the app's budget "
                    f"(workers x per-worker budget; {pct(t, 'db_budget_critical')} x budget is the "
                    "alert). The pg_stat_activity lines need --postgres.dsn; the budget needs the "
                    "postgres collector (on unless --no-collector.postgres). C5.",
                    [(f"sum by (instance, app) (gunicorn_workers_db_connections{{{S}}})", "{{app}} @ {{instance}} sockets"),
                     (f"sum by (instance, app, server) (gunicorn_postgres_app_connections{{{S}}})",
                      "{{app}} @ {{instance}} in {{server}}"),
                     (f"gunicorn_app_db_connection_budget{{{S}}}", "{{app}} @ {{instance}} (budget)")],
                    decimals=0, no_value=f"No data: {NEEDS_POSTGRES}"), 12, 8),
        (timeseries("DB connections / budget",
                    "Each app's database connections (its workers' sockets) over its budget; dashed: "
                    f"the alert threshold ({pct(t, 'db_budget_critical')}). Above it connections "
                    "leak or the budget (--postgres.app-budget) is wrong. C5.",
                    [(f"sum by (job, instance, app) (gunicorn_workers_db_connections{{{S}}}) / on (job, instance, app) "
                      f"(gunicorn_app_db_connection_budget{{{S}}} > 0)", "{{app}} @ {{instance}}")],
                    unit="percentunit", threshold=alert_steps(t, "db_budget_critical"),
                    no_value=f"No budget: {NEEDS_BUDGET}"), 12, 8),
        (timeseries("DB connections per worker vs threads",
                    "Database connections of each worker against its OS threads and its per-worker "
                    "budget. Far above the threads (eventlet/gevent with persistent connections): "
                    "C6; at pool_size + max_overflow: C4." + NO_WORKER_SERIES.format(
                        what="the most one worker holds, and the threads per worker"),
                    [(f"gunicorn_worker_db_connections{{{S}}}", "{{app}} w{{worker}} connections"),
                     (f"gunicorn_worker_threads{{{S}}}", "{{app}} w{{worker}} threads"),
                     (app_level(f"gunicorn_workers_db_connections_max{{{S}}}",
                                f"gunicorn_worker_db_connections{{{S}}}"),
                      "{{app}} most of one worker"),
                     (app_level(f"gunicorn_workers_threads{{{S}}} / (gunicorn_workers{{{S}}} > 0)",
                                f"gunicorn_worker_threads{{{S}}}"), "{{app}} threads per worker"),
                     (f"max by (instance, app) (gunicorn_app_db_connection_budget_per_worker{{{S}}})",
                      "{{app}} per worker (budget)")],
                    decimals=0, no_value=f"No data: {NEEDS_BUDGET}"), 12, 8),
        (timeseries("Unattributed and hidden connections",
                    "Client backends no gunicorn worker on this host holds (by reason), and "
                    f"sessions the exporter's role may not see (grant pg_monitor). It {NEEDS_POSTGRES}.",
                    [(f"gunicorn_postgres_unattributed_connections{{{H}}}", "{{server}} {{reason}}"),
                     (f"gunicorn_postgres_hidden_connections{{{H}}}", "{{server}} hidden")],
                    decimals=0, no_value=f"No data: {NEEDS_POSTGRES}"), 12, 8),
        (timeseries("Oldest transaction and query",
                    "Longest idle-in-transaction session and longest-running query per database. "
                    f"It {NEEDS_POSTGRES}.",
                    [(f"gunicorn_postgres_oldest_idle_in_transaction_seconds{{{H}}}",
                      "{{server}}/{{datname}} idle in transaction"),
                     (f"gunicorn_postgres_oldest_query_seconds{{{H}}}", "{{server}}/{{datname}} query")],
                    unit="s", no_value=f"No data: {NEEDS_POSTGRES}"), 24, 8),
    ]


def events(t: dict[str, float]) -> list[Panel]:
    """OOM kills, worker timeouts, log signatures."""
    return [
        (timeseries("OOM kills",
                    "Processes the kernel OOM killer killed: workers and masters of each app "
                    "(kernel log), the app's memory cgroup counter, and the whole host. Per-app "
                    f"kills {NEEDS_OOM}; without either only the host counter is known. C7.",
                    [(increase("gunicorn_worker_oom_kills_total"), "{{app}} @ {{instance}} workers"),
                     (increase("gunicorn_master_oom_kills_total"), "{{app}} @ {{instance}} master"),
                     (increase("gunicorn_cgroup_oom_kills_total"), "{{app}} @ {{instance}} cgroup"),
                     (increase("gunicorn_host_oom_kills_total", H, "instance"), "{{instance}} host"),
                     (increase("gunicorn_unattributed_oom_kills_total", H, "instance"), "{{instance}} not gunicorn")],
                    bars=True, decimals=0, no_value=f"No data: {NEEDS_OOM}"), 12, 8),
        (timeseries("Worker timeouts",
                    "'WORKER TIMEOUT' lines (W5) and workers killed by SIGKILL (C7, or a timeout "
                    f"escalation) in the followed gunicorn error logs: it {NEEDS_LOGS}.",
                    [(increase("gunicorn_log_events_total", f'{S}, signature="worker_timeout"'),
                      "{{app}} @ {{instance}} worker timeout"),
                     (increase("gunicorn_log_events_total", f'{S}, signature="worker_sigkill"'),
                      "{{app}} @ {{instance}} SIGKILL")],
                    bars=True, decimals=0, no_value=f"No data: {NEEDS_LOGS}"), 12, 8),
        (timeseries("Log signatures",
                    "Matched log lines per signature (docs/oom-and-logs.md): QueuePool exhausted "
                    "(C4), nginx connection refused (W4), EAGAIN on the upstream socket (C1/C2), "
                    "502/504, Heroku H12 (W8), worker life cycle. It needs --logs.file naming "
                    "the gunicorn error log (and the application's or nginx's logs for their "
                    "signatures).",
                    [(increase("gunicorn_log_events_total", S, "instance, app, signature"),
                      "{{app}} {{signature}}")],
                    bars=True, decimals=0, no_value=f"No data: {NEEDS_LOGS}"), 24, 8),
    ]


def exporter(t: dict[str, float]) -> list[Panel]:
    """The exporter's own health and data sources."""
    scrapes = timeseries("Scrapes and collectors",
                         "up: Prometheus reached the exporter. collector success: 0 means that "
                         "collector's series are missing from the scrape (gunicorn_up included).",
                         [(f"up{{{H}}}", "{{instance}} up"),
                          (f"min by (instance, collector) (gunicorn_exporter_collector_success{{{H}}})",
                           "{{instance}} {{collector}}")],
                         max_=1, decimals=0)
    scrapes["fieldConfig"]["defaults"]["thresholds"] = threshold_steps(1, below_is_bad=True)
    process = timeseries("Exporter process",
                         "The exporter's own memory and CPU.",
                         [(f"process_resident_memory_bytes{{{H}}}", "{{instance}} RSS"),
                          (f"rate(process_cpu_seconds_total{{{H}}}[$__rate_interval])", "{{instance}} CPU (cores)")],
                         unit="bytes")
    process["fieldConfig"]["overrides"].append({
        "matcher": {"id": "byRegexp", "options": ".*CPU \\(cores\\)$"},
        "properties": [{"id": "unit", "value": "percentunit"},
                       {"id": "custom.axisPlacement", "value": "right"}]})
    return [
        (scrapes, 12, 8),
        (timeseries("Collector duration",
                    "How long each collector's last run took (limit: --scrape.timeout).",
                    [(f"gunicorn_exporter_collector_duration_seconds{{{H}}}", "{{instance}} {{collector}}")],
                    unit="s"), 12, 8),
        (timeseries("Missing privileges and sources",
                    "gunicorn processes whose /proc entries the exporter may not read (grant "
                    "CAP_SYS_PTRACE: docs/configuration.md#privileges), kernel log overruns, "
                    "log files not open and failed reads (the log series need --logs.file; the kmsg "
                    "overruns appear only while the oom collector reads /dev/kmsg, which needs CAP_SYSLOG "
                    "when kernel.dmesg_restrict=1; else it counts a memory cgroup per app).",
                    [(f"gunicorn_exporter_permission_denied_processes{{{H}}}", "{{instance}} permission denied"),
                     (increase("gunicorn_exporter_kmsg_overruns_total", H, "instance"), "{{instance}} kmsg overruns"),
                     (f"1 - gunicorn_log_file_open{{{H}}}", "{{instance}} not open: {{file}}"),
                     (increase("gunicorn_log_read_errors_total", H, "instance, file"), "{{instance}} read errors: {{file}}")],
                    decimals=0), 12, 8),
        (process, 12, 8),
        (table("Data sources in use",
               "Where socket tables (netlink / procfs) and OOM kills come from (kmsg: per-kill "
               "records, needs CAP_SYSLOG when kernel.dmesg_restrict=1; cgroup: a memory cgroup per "
               "app; vmstat: the host counter only), and the exporter's version.",
               f'label_replace(gunicorn_exporter_socket_table_info{{{H}}}, "kind", "socket table", "", "")'
               f' or label_replace(gunicorn_oom_source_info{{{H}}}, "kind", "oom", "", "")'
               f' or label_replace(gunicorn_exporter_build_info{{{H}}}, "kind", "exporter", "", "")'), 24, 6),
    ]
