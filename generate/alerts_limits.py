"""The alerts where a request meets a limit (groups gunicorn.timeouts,
gunicorn.listeners, gunicorn.connections): gunicorn's --timeout and the proxy's, the accept
queue and its backlog, --worker-connections (generate/alerts.py lists every group in file
order)."""

from __future__ import annotations

from generate.alerts_common import INFO, Alert, log_events, ratio_or_count


GROUPS: list[tuple[str, list[Alert]]] = [
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
              log_events("worker_timeout") + " > 0",
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
              ratio_or_count("http_504", "http_504|nginx_upstream_timeout|caddy_upstream_timeout"
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
              ratio_or_count("http_502", "http_502|nginx_upstream_eagain|nginx_connect_refused"
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
]
