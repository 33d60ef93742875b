"""The recording rules of alerts/gunicorn.rules.yml (group gunicorn.rules): the series
the alerts (generate/alerts.py) and the dashboard's Overview read. ``@{selector}`` is
[global] selector of alerts/config.toml (placeholders: generate/rules.py)."""

from __future__ import annotations

# `by`-free aggregation: `without (...)` keeps job, instance and any target labels a
# user adds by relabelling, so every alert carries them without listing them here.

RECORDING_RULES: list[tuple[str, str]] = [
    ("app:gunicorn_workers_busy:ratio",
     "gunicorn_workers_busy{@{selector}} / (gunicorn_workers{@{selector}} > 0)"),
    ("app:gunicorn_listener_queue_length:sum",
     "sum without (listener) (gunicorn_listener_queue_length{@{selector}})"),
    ("listener:gunicorn_listener_queue_fill:ratio",
     "gunicorn_listener_queue_length{@{selector}}\n"
     "  / (gunicorn_listener_queue_max{@{selector}} > 0)"),
    # Share of time (0-1) a connection waited in an accept queue of the app, from the
    # sampler's 10 Hz samples: bursts between scrapes count. `max`: the busiest listener.
    ("app:gunicorn_listener_queued:ratio_rate5m",
     "max without (listener) (rate(gunicorn_listener_queued_seconds_total{@{selector}}[5m]))"),
    ("app:gunicorn_listener_queued:ratio_rate1m",
     "max without (listener) (rate(gunicorn_listener_queued_seconds_total{@{selector}}[1m]))"),
    # Requests waiting inside workers: those a worker accepted beyond what it can serve
    # at once (gthread parks them; the accept queue does not show them). Every rule
    # reads the app-level series (gunicorn_workers_*), never a per-worker one, so each
    # works with --gunicorn.worker-series=none as with all.
    ("app:gunicorn_worker_connections_waiting:sum",
     "gunicorn_workers_requests_waiting{@{selector}}"),
    # Requests being run by a thread: what the workers hold (in flight, or served for a
    # client that has gone), less those waiting for a thread.
    ("app:gunicorn_requests_running:sum",
     "sum without (state) (gunicorn_workers_connections{@{selector}, state=~\"active|client_closed\"})\n"
     "  - app:gunicorn_worker_connections_waiting:sum"),
    # The share of those running requests that wait on one peer (its reply), per peer.
    ("app_peer:gunicorn_dependency_waiting:ratio",
     "gunicorn_dependency_waiting_workers{@{selector}}\n"
     "  / ignoring (peer) group_left () (app:gunicorn_requests_running:sum > 0)"),
    # Either part alone when the other cannot be read (a listener in another network
    # namespace has no queue length; workers whose fds are unreadable have no connections).
    ("app:gunicorn_requests_waiting:sum",
     "app:gunicorn_listener_queue_length:sum + app:gunicorn_worker_connections_waiting:sum\n"
     "or app:gunicorn_listener_queue_length:sum\n"
     "or app:gunicorn_worker_connections_waiting:sum"),
    # The highest heartbeat age of the app's workers since about the last scrape (the
    # sampler reads it every second: a request that nears --timeout between two scrapes
    # counts), else the highest at the scrape (sampler off).
    ("app:gunicorn_worker_heartbeat_timeout:max_ratio",
     "(\n"
     "  gunicorn_workers_heartbeat_age_peak_seconds{@{selector}}\n"
     "  or gunicorn_workers_heartbeat_age_max_seconds{@{selector}}\n"
     ")\n"
     "  / (gunicorn_timeout_seconds{@{selector}} > 0)"),
    # Sync workers only: the heartbeat is how long the current request has run, and only
    # busy workers have one (an idle sync worker's heartbeat ages up to timeout/2). The
    # age at the scrape: an average of where the running requests are.
    ("app:gunicorn_busy_worker_heartbeat_timeout:avg_ratio",
     "gunicorn_workers_busy_heartbeat_age_seconds{@{selector}}\n"
     "  / (gunicorn_workers_busy{@{selector}} > 0)\n"
     "  / (gunicorn_timeout_seconds{@{selector}} > 0)"),
    ("app:gunicorn_worker_connections_client_closed:sum",
     "sum without (state) (gunicorn_workers_connections{@{selector}, state=\"client_closed\"})"),
    ("app:gunicorn_db_connection_budget:ratio",
     "gunicorn_workers_db_connections{@{selector}}\n"
     "  / (gunicorn_app_db_connection_budget{@{selector}} > 0)"),
    ("server:gunicorn_postgres_connections:sum",
     "sum without (datname, usename, application_name, state) "
     "(gunicorn_postgres_connections{@{selector}})"),
    # Slots ordinary roles may use; reserved_connections exists on Postgres 16+ only.
    ("server:gunicorn_postgres_usable_connections:sum",
     "gunicorn_postgres_max_connections{@{selector}}\n"
     "  - gunicorn_postgres_superuser_reserved_connections{@{selector}}\n"
     "  - (gunicorn_postgres_reserved_connections{@{selector}}"
     " or 0 * gunicorn_postgres_superuser_reserved_connections{@{selector}})"),
    ("server:gunicorn_postgres_connections:ratio",
     "server:gunicorn_postgres_connections:sum\n"
     "  / (server:gunicorn_postgres_usable_connections:sum > 0)"),
    # Requests from gunicorn's statsd stream or an access log (docs/requests.md), per app
    # and source (statsd, access_log: never summed, a proxy's log also holds its own 502s).
    # With --requests.route the access log series also carry `route`: summed away here.
    ("app:gunicorn_requests:rate5m",
     "sum without (status, route) (rate(gunicorn_requests_total{@{selector}}[5m]))"),
    ("app:gunicorn_requests_errors:ratio_rate5m",
     "sum without (status, route) (rate(gunicorn_requests_total{@{selector}, status=~\"5..\"}[5m]))\n"
     "  / (app:gunicorn_requests:rate5m > 0)"),
    ("app:gunicorn_request_duration_seconds:p95_rate5m",
     "histogram_quantile(0.95, sum without (route) "
     "(rate(gunicorn_request_duration_seconds_bucket{@{selector}}[5m])))"),
    ("app:gunicorn_request_duration_seconds:p99_rate5m",
     "histogram_quantile(0.99, sum without (route) "
     "(rate(gunicorn_request_duration_seconds_bucket{@{selector}}[5m])))"),
    # Time requests waited between the proxy and gunicorn (X-Request-Start, docs/requests.md)
    ("app:gunicorn_request_queue:rate5m",
     "rate(gunicorn_request_queue_seconds_count{@{selector}}[5m])"),
    ("app:gunicorn_request_queue_seconds:p90_rate5m",
     "histogram_quantile(0.9, rate(gunicorn_request_queue_seconds_bucket{@{selector}}[5m]))"),
]
