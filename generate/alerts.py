"""The alert templates of alerts/gunicorn.rules.yml, in file order: what each alert
watches (its expression), says (summary, description) and covers (the failure mode IDs
of docs/failure-modes.md). Placeholders ``@{name}`` are filled from alerts/config.toml
(generate/rules.py says how); a threshold that is no tunable is in the alert's `fixed`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# gunicorn_info's own labels: `ignoring` them joins it with an app's series
INFO = "version, worker_class, user"


@dataclass
class Alert:
    name: str
    insights: str          # IDs of docs/failure-modes.md, for docs and the coverage test
    expr: str
    summary: str
    description: str
    extra_labels: dict = field(default_factory=dict)
    # thresholds built into the rule, not tunable in config.toml (the dashboard draws them)
    fixed: dict = field(default_factory=dict)


def _log_events(signatures: str, window: str = "@{window}") -> str:
    return ("sum without (signature) (increase(gunicorn_log_events_total{@{selector},"
            " signature=~\"%s\"}[%s]))" % (signatures, window))


def _ratio_or_count(access_errors: str, log_errors: str) -> str:
    """Errors per answered request when an access log shows enough of them (its
    `http_response` lines; the errors counted there too), else a count of error lines
    in any log: the one expression both proxy alerts use. A failed request is in both
    nginx logs; the ratio reads the access log only, so it is never counted twice."""
    responses = _log_events("http_response")
    return ("(\n  %s\n  / (%s > @{min_responses})\n) > @{error_ratio}\n"
            "or\n(\n  %s > @{events}\n  unless %s > @{min_responses}\n)"
            % (_log_events(access_errors), responses, _log_events(log_errors), responses))


# The first page of an outage names its cause when the workers already wait on a peer:
# Prometheus runs this query when it renders the annotation (GunicornDependencySlow,
# which pages on it, needs a longer window).
_WAITING_ON = (
    "{{ with printf \"app_peer:gunicorn_dependency_waiting:ratio{job=%q, instance=%q,"
    " app=%q, peer!=\\\"other\\\"} > @{dependency_ratio}\" $labels.job $labels.instance"
    " $labels.app | query }} Most of the requests running wait on a reply from"
    "{{ range . }} {{ .Labels.peer }}{{ end }}: the cause is there"
    " (GunicornDependencySlow).{{ end }}")


GROUPS: list[tuple[str, list[Alert]]] = [
    ("gunicorn.workers", [
        Alert("GunicornDown", "W4",
              "gunicorn_up{@{selector}} == 0",
              "gunicorn app {{ $labels.app }} is down on {{ $labels.instance }}",
              "No gunicorn master of app {{ $labels.app }} runs on {{ $labels.instance }}"
              " (gunicorn_up {{ $value }}): nothing accepts connections on its socket and"
              " the proxy answers 502 (nginx: connect() failed)."),
        Alert("GunicornAppVanished", "W4",
              "max_over_time(gunicorn_workers{@{selector}, app!~`.+(\\.2|@@.+)`}[@{window}]) > 0\n"
              "and count_over_time(gunicorn_workers{@{selector}}[@{window}]) >= @{min_samples}\n"
              "unless gunicorn_up{@{selector}}\n"
              "and on (job, instance) up{@{selector}} == 1\n"
              "and on (job, instance)"
              " gunicorn_exporter_collector_success{@{selector}, collector=\"gunicorn\"} == 1",
              "gunicorn app {{ $labels.app }} vanished from {{ $labels.instance }}",
              "App {{ $labels.app }} ran on {{ $labels.instance }} within @{window} and has"
              " no series now, while the exporter answers: it restarted and the app did not"
              " come back (or the app was renamed or removed)."),
        Alert("GunicornWorkerPoolExhausted", "C1",
              "max_over_time(app:gunicorn_requests_waiting:sum[@{window}])\n"
              "and (\n"
              "  (\n"
              "    app:gunicorn_listener_queued:ratio_rate1m >= @{queued_ratio}\n"
              "    or quantile_over_time(@{quantile}, app:gunicorn_listener_queue_length:sum[@{window}]) > 0\n"
              "  )\n"
              "  and max_over_time(app:gunicorn_workers_busy:ratio[@{window}]) >= @{busy_ratio}\n"
              "  or quantile_over_time(@{quantile}, app:gunicorn_worker_connections_waiting:sum"
              "[@{window}]) > 0\n"
              ")\n"
              "and count_over_time(app:gunicorn_workers_busy:ratio[@{window}]) >= @{min_samples}",
              "Requests to {{ $labels.app }} wait for a worker that has no thread free",
              "Requests to {{ $labels.app }} on {{ $labels.instance }} have been waiting for"
              " most of the last @{window} (up to {{ $value }} at a scrape): in the accept"
              " queue while every worker is busy, or inside a worker whose threads are all"
              " taken (whatever the other workers do). They hang until the proxy times out."
              + _WAITING_ON),
        Alert("GunicornWorkerPoolSaturated", "W2 W6 C1",
              "avg_over_time(app:gunicorn_workers_busy:ratio[@{window}]) > @{busy_ratio}",
              "Workers of {{ $labels.app }} are busy most of the time",
              "On average {{ $value | humanizePercentage }} of the workers of {{ $labels.app }}"
              " on {{ $labels.instance }} were busy over @{window} (threshold"
              " @{busy_ratio_pct}): add workers or threads before the pool runs out."),
        Alert("GunicornRequestsWaitForWorkers", "W2 C1",
              "app:gunicorn_listener_queued:ratio_rate5m > @{queued_ratio}",
              "Requests to {{ $labels.app }} wait for a free worker",
              "Connections waited in the accept queue of {{ $labels.app }} on"
              " {{ $labels.instance }} during {{ $value | humanizePercentage }} of the last"
              " 5 minutes (threshold @{queued_ratio_pct}; sampled ten times a second, so"
              " bursts between scrapes count): the pool runs out at peaks."),
        Alert("GunicornSyncWorkersBlocking", "W1",
              "(\n"
              "  avg_over_time(app:gunicorn_workers_busy:ratio[@{window}]) > @{busy_ratio}\n"
              "  and max_over_time(app:gunicorn_listener_queue_length:sum[@{window}]) > 0\n"
              ")\n"
              "and ignoring (" + INFO + ") gunicorn_info{@{selector}, worker_class=\"sync\"}",
              "Sync workers of {{ $labels.app }} block and requests queue",
              "The sync workers of {{ $labels.app }} on {{ $labels.instance }} were busy"
              " {{ $value | humanizePercentage }} of the time over @{window} and requests"
              " waited in the accept queue: one slow call holds a whole worker."),
        Alert("GunicornWorkersMissing", "C7 W5",
              "gunicorn_workers{@{selector}} < gunicorn_workers_desired{@{selector}}",
              "{{ $labels.app }} runs fewer workers than configured",
              "{{ $labels.app }} on {{ $labels.instance }} has had only {{ $value }} workers"
              " for a while, fewer than --workers: workers keep dying (OOM kills, timeouts)"
              " or fail to boot."),
        Alert("GunicornSlowRequestsSaturate", "W6",
              "avg_over_time(app:gunicorn_busy_worker_heartbeat_timeout:avg_ratio[@{window}])"
              " > @{heartbeat_ratio}\n"
              "and avg_over_time(app:gunicorn_workers_busy:ratio[@{window}]) > @{busy_ratio}\n"
              "and ignoring (" + INFO + ") gunicorn_info{@{selector}, worker_class=\"sync\"}",
              "Slow requests keep the workers of {{ $labels.app }} busy",
              "The busy sync workers of {{ $labels.app }} on {{ $labels.instance }} have been"
              " in their current request for {{ $value | humanizePercentage }} of --timeout"
              " on average over @{window}, with most workers busy: a slow dependency holds"
              " them."),
        Alert("GunicornWorkerLoopBlocked", "W6 C1",
              "(\n"
              "  gunicorn_workers_heartbeat_age_peak_seconds{@{selector}}\n"
              "  or gunicorn_workers_heartbeat_age_max_seconds{@{selector}}\n"
              ") > @{stall_seconds}\n"
              "and ignoring (" + INFO + ") gunicorn_info{@{selector},"
              " worker_class=~\"gthread|gevent|eventlet|tornado\"}",
              "The main loop of a {{ $labels.app }} worker is blocked",
              "A worker of {{ $labels.app }} on {{ $labels.instance }} has"
              " not run its main loop for {{ $value | humanizeDuration }} (it refreshes its"
              " heartbeat every second when it can): CPU-bound code, a lock, or a blocking call"
              " in a green thread holds it, and none of its connections is served."),
    ]),
    ("gunicorn.dependencies", [
        Alert("GunicornDependencySlow", "W6 C1",
              "quantile_over_time(@{quantile}, app_peer:gunicorn_dependency_waiting:ratio"
              "{peer!=\"other\"}[@{window}])\n"
              "  > @{waiting_ratio}\n"
              "and ignoring (peer)\n"
              "  quantile_over_time(@{quantile}, app:gunicorn_workers_busy:ratio[@{window}])"
              " >= @{busy_ratio}",
              "{{ $labels.app }} waits on {{ $labels.peer }}",
              "{{ $value | humanizePercentage }} of the requests the workers of"
              " {{ $labels.app }} on {{ $labels.instance }} run are waiting for a reply from"
              " {{ $labels.peer }}, with the pool at least @{busy_ratio_pct} busy, for most"
              " of @{window}: that dependency is slow and holds the workers (the longest wait:"
              " gunicorn_dependency_wait_seconds)."),
        Alert("GunicornDependencyUnreachable", "W6",
              "min_over_time(gunicorn_dependency_connections{@{selector},"
              " state=\"syn_sent\"}[@{window}]) > 0\n"
              "and count_over_time(gunicorn_dependency_connections{@{selector},"
              " state=\"syn_sent\"}[@{window}]) >= @{min_samples}",
              "{{ $labels.app }} cannot connect to {{ $labels.peer }}",
              "Workers of {{ $labels.app }} on {{ $labels.instance }} have had connections to"
              " {{ $labels.peer }} stuck in SYN-SENT (at least {{ $value }}) for @{window}:"
              " the peer does not accept (down, or its backlog full), or no local port is"
              " free (SNAT exhaustion). Each such request waits for the connect timeout."),
    ]),
    ("gunicorn.timeouts", [
        Alert("GunicornWorkerNearTimeout", "W5",
              "max_over_time(app:gunicorn_worker_heartbeat_timeout:max_ratio[@{window}])"
              " > @{heartbeat_ratio}\n"
              "and ignoring (" + INFO + ") gunicorn_info{@{selector}, worker_class=\"sync\"}",
              "Requests of {{ $labels.app }} keep running close to --timeout",
              "Requests of {{ $labels.app }} on {{ $labels.instance }} keep reaching"
              " {{ $value | humanizePercentage }} of gunicorn's --timeout (threshold"
              " @{heartbeat_ratio_pct}): WORKER TIMEOUT kills are next."),
        Alert("GunicornWorkerTimeouts", "W5",
              _log_events("worker_timeout") + " > 0",
              "Workers of {{ $labels.app }} are killed by WORKER TIMEOUT",
              "gunicorn logged {{ $value | humanize }} WORKER TIMEOUT lines for"
              " {{ $labels.app }} on {{ $labels.instance }} in @{window}: requests run"
              " longer than --timeout and are killed."),
        Alert("GunicornTimeoutAboveProxyTimeout", "W8",
              "gunicorn_timeout_seconds{@{selector}} > @{proxy_timeout_seconds}\n"
              "or gunicorn_timeout_seconds{@{selector}} == 0",
              "{{ $labels.app }} lets requests outlive the proxy's timeout",
              "--timeout of {{ $labels.app }} on {{ $labels.instance }} is {{ $value }} s"
              " (0 = never), above the proxy's @{proxy_timeout_seconds} s: workers keep"
              " working on requests nobody waits for."),
        Alert("GunicornWorkingForGoneClients", "W8",
              "avg_over_time((app:gunicorn_worker_connections_client_closed:sum > bool 0)"
              "[@{window}:]) > @{time_ratio}",
              "Workers of {{ $labels.app }} keep serving clients that hung up",
              "For {{ $value | humanizePercentage }} of the last @{window}, workers of"
              " {{ $labels.app }} on {{ $labels.instance }} held connections whose client had"
              " already hung up: the proxy or platform times out before gunicorn does."),
        Alert("GunicornProxyTimeouts", "C1 W8",
              _ratio_or_count("http_504", "http_504|nginx_upstream_timeout|caddy_upstream_timeout"
                                          "|heroku_h12"),
              "The proxy keeps timing out on {{ $labels.app }}",
              "Requests of {{ $labels.app }} on {{ $labels.instance }} time out at the proxy"
              " ({{ printf \"%.3g\" $value }}: the share of the answered requests, 0 to 1,"
              " when the access log shows enough of them, else the number of error lines in"
              " @{window}): they take longer than the proxy waits."),
    ]),
    ("gunicorn.listeners", [
        Alert("GunicornListenQueueStuck", "C2 C1",
              "(\n"
              "  min_over_time(app:gunicorn_listener_queue_length:sum[@{window}]) > 0\n"
              "  and count_over_time(app:gunicorn_listener_queue_length:sum[@{window}])"
              " >= @{min_samples}\n"
              ")\n"
              "unless max_over_time(app:gunicorn_workers_busy:ratio[@{window}]) >= @{busy_ratio}",
              "The accept queue of {{ $labels.app }} does not drain",
              "Connections have waited in the accept queue of {{ $labels.app }} on"
              " {{ $labels.instance }} for @{window} (at least {{ $value }}) while its"
              " workers are not all busy: they do not accept (stopped, deadlocked, or a stuck"
              " unix socket)."),
        Alert("GunicornListenQueueFilling", "C2 W11",
              "listener:gunicorn_listener_queue_fill:ratio > @{fill_ratio}",
              "The accept queue of {{ $labels.app }} is filling up",
              "The accept queue of {{ $labels.listener }} ({{ $labels.app }} on"
              " {{ $labels.instance }}) is {{ $value | humanizePercentage }} full"
              " (threshold @{fill_ratio_pct})."),
        Alert("GunicornListenQueueFull", "C2 W11",
              "listener:gunicorn_listener_queue_fill:ratio > @{fill_ratio}",
              "The accept queue of {{ $labels.app }} is full",
              "The accept queue of {{ $labels.listener }} ({{ $labels.app }} on"
              " {{ $labels.instance }}) is {{ $value | humanizePercentage }} full: new"
              " connections get EAGAIN (unix) or are dropped (TCP)."),
        Alert("GunicornListenDrops", "W11 C1",
              "sum without (listener) (increase(gunicorn_listener_drops_total{@{selector}}"
              "[@{window}])) > 0",
              "The kernel drops connections to {{ $labels.app }}",
              "The kernel of {{ $labels.instance }} dropped {{ $value | humanize }}"
              " connections to {{ $labels.app }} in @{window} at its full accept queue."),
        Alert("GunicornBacklogCapped", "W11",
              "min without (listener) (gunicorn_listener_queue_max{@{selector}})\n"
              "  >= gunicorn_app_somaxconn{@{selector}}",
              "The accept queue of {{ $labels.app }} is capped by somaxconn",
              "The accept queue limit of {{ $labels.app }} on {{ $labels.instance }} is"
              " {{ $value }}, net.core.somaxconn itself: a larger --backlog is silently cut"
              " to it."),
        Alert("GunicornProxyCannotConnect", "C1 C2 W4",
              _ratio_or_count("http_502", "http_502|nginx_upstream_eagain|nginx_connect_refused"
                                          "|nginx_upstream_missing|caddy_upstream_eagain"
                                          "|caddy_connect_refused|caddy_upstream_missing"),
              "The proxy cannot reach {{ $labels.app }}",
              "The proxy answers 502 or cannot connect to {{ $labels.app }} on"
              " {{ $labels.instance }} ({{ printf \"%.3g\" $value }}: the share of the"
              " answered requests, 0 to 1, when the access log shows enough of them, else the"
              " number of error lines in @{window}): its queue is full or nothing listens."),
    ]),
    ("gunicorn.connections", [
        Alert("GunicornGthreadWorkerConnectionsAtLimit", "C3",
              "gunicorn_workers_connections_max{@{selector}}\n"
              "  >= gunicorn_worker_connections_limit{@{selector}}\n"
              "and ignoring (" + INFO + ") gunicorn_info{@{selector},"
              " worker_class=\"gthread\"}",
              "A gthread worker of {{ $labels.app }} is at worker_connections",
              "A worker of {{ $labels.app }} on {{ $labels.instance }}"
              " holds {{ $value }} connections, its --worker-connections limit: gthread"
              " workers hang there (idle keep-alive connections count)."),
        Alert("GunicornWorkerConnectionsNearLimit", "C3 W7",
              "gunicorn_workers_connections_max{@{selector}}\n"
              "  / gunicorn_worker_connections_limit{@{selector}}\n"
              "  > @{limit_ratio}",
              "A worker of {{ $labels.app }} nears worker_connections",
              "A worker of {{ $labels.app }} on {{ $labels.instance }}"
              " holds {{ $value | humanizePercentage }} of --worker-connections (threshold"
              " @{limit_ratio_pct})."),
        Alert("GunicornGthreadConnectionsQueuedInWorker", "W9",
              "quantile_over_time(0.5, app:gunicorn_worker_connections_waiting:sum[@{window}]) > 0\n"
              "and count_over_time(app:gunicorn_worker_connections_waiting:sum[@{window}])"
              " >= @{min_samples}\n"
              "and ignoring (" + INFO + ") gunicorn_info{@{selector},"
              " worker_class=\"gthread\"}",
              "Connections wait inside gthread workers of {{ $labels.app }}",
              "Workers of {{ $labels.app }} on {{ $labels.instance }}"
              " held more requests than threads in most of the last @{window} (median"
              " {{ $value }} waiting): the extra ones wait inside the worker, invisible in"
              " the accept queue."),
    ]),
    ("gunicorn.database", [
        Alert("GunicornSQLAlchemyPoolExhausted", "C4",
              _log_events("queuepool_exhausted") + " > @{events}",
              "SQLAlchemy pool of {{ $labels.app }} is exhausted",
              "{{ $labels.app }} on {{ $labels.instance }} logged {{ $value | humanize }}"
              " `QueuePool limit ... reached` errors in @{window}: requests wait"
              " pool_timeout and fail."),
        Alert("GunicornWorkerDBPoolAtLimit", "C4",
              "gunicorn_workers_db_connections_max{@{selector}}\n"
              "  >= max without (source) (gunicorn_app_db_connection_budget_per_worker{@{selector},"
              " source=\"declared\"})",
              "A worker of {{ $labels.app }} uses its whole DB pool",
              "A worker of {{ $labels.app }} on {{ $labels.instance }}"
              " holds {{ $value }} database connections, its declared pool_size +"
              " max_overflow: the next checkout waits (QueuePool limit)."),
        Alert("GunicornDBConnectionsOverBudget", "C5",
              "app:gunicorn_db_connection_budget:ratio > @{budget_ratio}",
              "{{ $labels.app }} holds more DB connections than its budget",
              "The workers of {{ $labels.app }} on {{ $labels.instance }} hold"
              " {{ $value | humanizePercentage }} of their connection budget"
              " (workers x per-worker pool): connections leak.",
              fixed={"budget_ratio": 1}),
        Alert("GunicornDBConnectionsWillExceedBudget", "C5",
              "app:gunicorn_db_connection_budget:ratio > @{budget_ratio}\n"
              "and app:gunicorn_db_connection_budget:ratio < 1\n"
              "and\n"
              "predict_linear(gunicorn_workers_db_connections{@{selector}}[@{window}],"
              " @{horizon_seconds})\n"
              "  > gunicorn_app_db_connection_budget{@{selector}}\n"
              "unless\n"
              "gunicorn_workers_db_connections{@{selector}}\n"
              "  <= max_over_time(gunicorn_workers_db_connections{@{selector}}[@{history}]"
              " offset @{window})",
              "DB connections of {{ $labels.app }} grow towards the budget",
              "The workers of {{ $labels.app }} on {{ $labels.instance }} hold"
              " {{ $value | humanizePercentage }} of their connection budget, more than ever"
              " in the @{history} before, and at the trend of the last @{window} they pass it"
              " within @{horizon_seconds} s: a leak (a pool that fills to its size, or refills"
              " after a restart to where it was, is not one)."),
        Alert("GunicornPostgresDown", "C5 C6",
              "max without (instance) (gunicorn_postgres_up{@{selector}}) == 0",
              "Postgres {{ $labels.server }} cannot be queried",
              "No exporter could query Postgres {{ $labels.server }}: it is down, refuses"
              " logins (at max_connections, a new session is refused too) or does not answer"
              " within --postgres.timeout."),
        Alert("GunicornPostgresConnectionsNearLimit", "C5 C6",
              "max without (instance) (server:gunicorn_postgres_connections:ratio) > @{usage_ratio}",
              "Postgres {{ $labels.server }} nears max_connections",
              "Postgres {{ $labels.server }} uses {{ $value | humanizePercentage }} of the"
              " connections ordinary roles may open (threshold @{usage_ratio_pct})."),
        Alert("GunicornPostgresConnectionsExhausted", "C5 C6",
              "max without (instance) (server:gunicorn_postgres_connections:ratio) > @{usage_ratio}",
              "Postgres {{ $labels.server }} is out of connections",
              "Postgres {{ $labels.server }} uses {{ $value | humanizePercentage }} of the"
              " connections ordinary roles may open: new connections fail with"
              " `too many clients`."),
        Alert("GunicornPostgresRefusingConnections", "C5 C6",
              _log_events("postgres_too_many_clients") + " > 0",
              "Postgres refuses connections of {{ $labels.app }}",
              "{{ $labels.app }} on {{ $labels.instance }} logged {{ $value | humanize }}"
              " `too many clients` / `remaining connection slots are reserved` errors in"
              " @{window}: Postgres is at max_connections."),
        Alert("GunicornGreenThreadDBConnections", "C6",
              "gunicorn_workers_db_connections_max{@{selector}} > @{min_connections}\n"
              "and gunicorn_workers_db_connections_max{@{selector}}\n"
              "  > @{per_thread} * gunicorn_workers_threads{@{selector}}"
              " / (gunicorn_workers{@{selector}} > 0)\n"
              "and gunicorn_workers_db_connections_max{@{selector}}\n"
              "  > max without (source) (gunicorn_app_db_connection_budget_per_worker{@{selector}})\n"
              "and ignoring (" + INFO + ") gunicorn_info{@{selector},"
              " worker_class=~\"gevent|eventlet\"}",
              "Green threads of {{ $labels.app }} open a DB connection each",
              "A worker of {{ $labels.app }} on {{ $labels.instance }}"
              " ({{ $value }} DB connections) holds more connections than its budget and far"
              " more than OS threads: every green thread keeps its own connection."),
    ]),
    ("gunicorn.memory", [
        Alert("GunicornWorkerOOMKilled", "C7",
              "increase(gunicorn_worker_oom_kills_total{@{selector}}[@{window}]) > 0\n"
              "or increase(gunicorn_master_oom_kills_total{@{selector}}[@{window}]) > 0",
              "Processes of {{ $labels.app }} were OOM-killed",
              "The kernel OOM killer killed {{ $value | humanize }} processes of"
              " {{ $labels.app }} on {{ $labels.instance }} in @{window} (confirmed by the"
              " kernel log or the cgroup's counter): requests in flight failed."),
        Alert("GunicornWorkerSIGKILLed", "C7",
              _log_events("worker_sigkill") + "\n  > "
              + _log_events("worker_timeout", "@{timeout_window}"),
              "Workers of {{ $labels.app }} die of SIGKILL",
              "gunicorn logged {{ $value | humanize }} `was sent SIGKILL! Perhaps out of"
              " memory?` lines for {{ $labels.app }} on {{ $labels.instance }} in @{window},"
              " more than its WORKER TIMEOUTs (counted over @{timeout_window}, so a timeout's"
              " own escalation to SIGKILL is always explained): something kills workers (an"
              " OOM kill the exporter cannot see, or another process)."),
        Alert("GunicornWorkerMemoryGrowing", "W3 W7 C7",
              "delta(gunicorn_workers_resident_memory_max_bytes{@{selector}}[@{window}])"
              " > @{growth_bytes}\n"
              "and delta(gunicorn_workers_connections_max{@{selector}}[@{window}]) > 0",
              "Workers of {{ $labels.app }} grow in memory with their connections",
              "The largest worker of {{ $labels.app }} on {{ $labels.instance }}"
              " grew by {{ $value | humanize1024 }}B in @{window} while its connections"
              " grew: requests pile up in memory; an OOM kill may follow."),
        Alert("GunicornWorkerFileDescriptorsHigh", "W10",
              "gunicorn_workers_open_fds_max_ratio{@{selector}} > @{fd_ratio}",
              "Worker of {{ $labels.app }} nears its file descriptor limit",
              "A worker of {{ $labels.app }} on {{ $labels.instance }}"
              " uses {{ $value | humanizePercentage }} of its `ulimit -n`: accept() fails"
              " at the limit."),
    ]),
    ("gunicorn.requests", [
        Alert("GunicornErrorRatioHigh", "C1 W8",
              "app:gunicorn_requests_errors:ratio_rate5m > @{error_ratio}\n"
              "and app:gunicorn_requests:rate5m > @{min_rate}",
              "{{ $labels.app }} answers too many requests with 5xx",
              "{{ $value | humanizePercentage }} of the requests of {{ $labels.app }} on"
              " {{ $labels.instance }} got a 5xx answer over 5 minutes (threshold"
              " @{error_ratio_pct}, source {{ $labels.source }}): the app fails (500), or the"
              " proxy cannot reach it in time (502, 504 in an access log)."),
        Alert("GunicornLatencyHigh", "W6 W8",
              "app:gunicorn_request_duration_seconds:p99_rate5m > @{p99_seconds}\n"
              "and app:gunicorn_requests:rate5m > @{min_rate}",
              "Requests of {{ $labels.app }} are slow",
              "The slowest 1% of the requests of {{ $labels.app }} on {{ $labels.instance }}"
              " took longer than {{ $value | humanizeDuration }} over 5 minutes (p99,"
              " threshold @{p99_seconds} s, source {{ $labels.source }}): a slow dependency,"
              " or requests nearing the proxy's timeout."),
        Alert("GunicornRequestQueueHigh", "W2 C1",
              "app:gunicorn_request_queue_seconds:p90_rate5m > @{p90_seconds}\n"
              "and app:gunicorn_request_queue:rate5m > @{min_rate}",
              "Requests of {{ $labels.app }} wait before gunicorn starts them",
              "One request in ten of {{ $labels.app }} on {{ $labels.instance }} waited more"
              " than {{ $value | humanizeDuration }} between the proxy and gunicorn over 5"
              " minutes (p90 of X-Request-Start to the request's start, threshold"
              " @{p90_seconds} s): every worker is busy and requests queue (too few workers,"
              " or slow requests holding them)."),
    ]),
    ("gunicorn.exporter", [
        Alert("GunicornExporterDown", "",
              "up{@{selector}} == 0",
              "gunicorn-exporter on {{ $labels.instance }} does not answer",
              "Prometheus cannot scrape gunicorn-exporter on {{ $labels.instance }}: every"
              " gunicorn alert of that host is blind (and the host may be down)."),
        Alert("GunicornExporterAbsent", "",
              "absent(up{@{selector}})",
              "No gunicorn-exporter target is known to Prometheus",
              "Prometheus has no target for gunicorn-exporter (@{selector}): service"
              " discovery lost it, and every gunicorn alert is blind."),
        Alert("GunicornExporterCollectorFailing", "",
              "avg_over_time(gunicorn_exporter_collector_success{@{selector}}[@{window}])"
              " < @{success_ratio}",
              "gunicorn-exporter collector {{ $labels.collector }} fails",
              "Collector {{ $labels.collector }} of gunicorn-exporter on {{ $labels.instance }}"
              " succeeded in only {{ $value | humanizePercentage }} of the scrapes over"
              " @{window}: its series, and the alerts that read them, come and go."),
        Alert("GunicornExporterAppErrors", "",
              "gunicorn_exporter_app_errors{@{selector}} > 0",
              "gunicorn-exporter cannot fully read {{ $labels.app }}",
              "Parts of the data of {{ $labels.app }} on {{ $labels.instance }} have failed"
              " to collect for a while (the exporter's log says what): some of its series"
              " are missing."),
        Alert("GunicornExporterDroppedMasters", "",
              "gunicorn_exporter_dropped_masters{@{selector}} > 0",
              "gunicorn-exporter does not measure every master",
              "gunicorn-exporter on {{ $labels.instance }} leaves {{ $value }} gunicorn"
              " masters unmeasured (more than --gunicorn.max-masters): raise it, or watch"
              " fewer users with --gunicorn.user."),
        Alert("GunicornExporterPermissionDenied", "",
              "gunicorn_exporter_permission_denied_processes{@{selector}} > 0",
              "gunicorn-exporter cannot read some gunicorn processes",
              "gunicorn-exporter on {{ $labels.instance }} may not read the fds of"
              " {{ $value }} gunicorn processes: their connections, heartbeats and busy"
              " state are missing."),
    ]),
]


def alerts_table() -> list[tuple[str, str]]:
    """[(alert name, insight IDs)] for docs and tests."""
    return [(a.name, a.insights) for _, alerts in GROUPS for a in alerts]


def fixed_thresholds() -> dict[str, dict]:
    """{alert: {parameter: value}}: thresholds built into a rule instead of config.toml."""
    return {a.name: dict(a.fixed) for _, alerts in GROUPS for a in alerts if a.fixed}
