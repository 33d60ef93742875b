#!/usr/bin/env python3
"""Render alerts/gunicorn.rules.yml (Prometheus recording and alerting rules) from the
rule templates below and the tunables in alerts/config.toml.

Why a generator: the same job selector appears in every expression and each threshold
in both an expression and its description. Keeping them in one TOML file (read with the
standard library's tomllib, the format of the exporter's own config file) means a change
is one edit, and the rendered YAML (written with PyYAML by `dump_yaml`, which
deploy/kubernetes/generate.py uses too) stays plain Prometheus rules that anyone can
read, `promtool check rules` and load without this script.

    python alerts/build.py              # rewrite alerts/gunicorn.rules.yml
    python alerts/build.py --check      # exit 1 if the committed file is stale
    python alerts/build.py --for 2s -o /tmp/x.yml   # every `for:` replaced (tests)

Placeholders are string.Template ones with ``@`` as the delimiter (``$`` and ``{{ }}``
belong to Prometheus' templates: ``{{ $labels.app }}``): ``@{name}`` is the value of
``name`` in the alert's [table] of config.toml, else in the alert's ``fixed`` thresholds,
else in [global]; ``@{name_pct}`` renders the ratio ``name`` as a percentage; ``@@`` is a
literal ``@``. Unknown or unused config keys are errors, so the two files cannot drift
apart.
"""

from __future__ import annotations

import argparse
import re
import string
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
CONFIG = HERE / "config.toml"
OUTPUT = HERE / "gunicorn.rules.yml"

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
    # Requests a worker holds: in flight, or served for a client that has gone (a
    # thread still runs the app for it: busy, whoever waits for the answer).
    ("worker:gunicorn_worker_requests:sum",
     "sum without (state) (gunicorn_worker_connections{@{selector}, state=~\"active|client_closed\"})"),
    # Requests waiting inside a worker: those it accepted beyond what it can serve at
    # once (gthread parks them; the accept queue does not show them).
    ("worker:gunicorn_worker_requests_waiting:sum",
     "clamp_min(\n"
     "  worker:gunicorn_worker_requests:sum\n"
     "    - ignoring (worker) group_left gunicorn_worker_capacity{@{selector}},\n"
     "  0)"),
    ("app:gunicorn_worker_connections_waiting:sum",
     "sum without (worker) (worker:gunicorn_worker_requests_waiting:sum)"),
    # Either part alone when the other cannot be read (a listener in another network
    # namespace has no queue length; workers whose fds are unreadable have no connections).
    ("app:gunicorn_requests_waiting:sum",
     "app:gunicorn_listener_queue_length:sum + app:gunicorn_worker_connections_waiting:sum\n"
     "or app:gunicorn_listener_queue_length:sum\n"
     "or app:gunicorn_worker_connections_waiting:sum"),
    # The highest heartbeat age since about the last scrape (the sampler reads it every
    # second: a request that nears --timeout between two scrapes counts), else the age
    # at the scrape (sampler off).
    ("worker:gunicorn_worker_heartbeat_timeout:ratio",
     "(\n"
     "  gunicorn_worker_heartbeat_age_max_seconds{@{selector}}\n"
     "  or gunicorn_worker_heartbeat_age_seconds{@{selector}}\n"
     ")\n"
     "  / ignoring (worker) group_left () (gunicorn_timeout_seconds{@{selector}} > 0)"),
    ("app:gunicorn_worker_heartbeat_timeout:max_ratio",
     "max without (worker) (worker:gunicorn_worker_heartbeat_timeout:ratio)"),
    # Sync workers only: the heartbeat is how long the current request has run, and only
    # busy workers have one (an idle sync worker's heartbeat ages up to timeout/2). The
    # age at the scrape: an average of where the running requests are.
    ("app:gunicorn_busy_worker_heartbeat_timeout:avg_ratio",
     "avg without (worker) (\n"
     "  gunicorn_worker_heartbeat_age_seconds{@{selector}}\n"
     "    / ignoring (worker) group_left () (gunicorn_timeout_seconds{@{selector}} > 0)\n"
     "  and worker:gunicorn_worker_requests:sum\n"
     "    >= ignoring (worker) group_left gunicorn_worker_capacity{@{selector}}\n"
     ")"),
    ("worker:gunicorn_worker_connections:sum",
     "sum without (state) (gunicorn_worker_connections{@{selector}})"),
    ("app:gunicorn_worker_connections_client_closed:sum",
     "sum without (worker, state) (gunicorn_worker_connections{@{selector}, state=\"client_closed\"})"),
    ("app:gunicorn_worker_db_connections:sum",
     "sum without (worker) (gunicorn_worker_db_connections{@{selector}})"),
    ("app:gunicorn_db_connection_budget:ratio",
     "app:gunicorn_worker_db_connections:sum\n"
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
    ("worker:gunicorn_worker_fds:ratio",
     "gunicorn_worker_open_fds{@{selector}} / (gunicorn_worker_max_fds{@{selector}} > 0)"),
    # Requests from gunicorn's statsd stream or an access log (docs/requests.md), per app
    # and source (statsd, access_log: never summed, a proxy's log also holds its own 502s).
    ("app:gunicorn_requests:rate5m",
     "sum without (status) (rate(gunicorn_requests_total{@{selector}}[5m]))"),
    ("app:gunicorn_requests_errors:ratio_rate5m",
     "sum without (status) (rate(gunicorn_requests_total{@{selector}, status=~\"5..\"}[5m]))\n"
     "  / (app:gunicorn_requests:rate5m > 0)"),
    ("app:gunicorn_request_duration_seconds:p95_rate5m",
     "histogram_quantile(0.95, rate(gunicorn_request_duration_seconds_bucket{@{selector}}[5m]))"),
    ("app:gunicorn_request_duration_seconds:p99_rate5m",
     "histogram_quantile(0.99, rate(gunicorn_request_duration_seconds_bucket{@{selector}}[5m]))"),
]

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


GROUPS: list[tuple[str, list[Alert]]] = [
    ("gunicorn.workers", [
        Alert("GunicornDown", "W4",
              "gunicorn_up{@{selector}} == 0",
              "gunicorn app {{ $labels.app }} is down on {{ $labels.instance }}",
              "No gunicorn master of app {{ $labels.app }} runs on {{ $labels.instance }}"
              " (gunicorn_up {{ $value }}): nothing accepts connections on its socket and"
              " the proxy answers 502 (nginx: connect() failed)."),
        Alert("GunicornAppVanished", "W4",
              "max_over_time(gunicorn_up{@{selector}, app!~`.+(\\.2|@@.+)`}[@{window}]) == 1\n"
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
              " taken (whatever the other workers do). They hang until the proxy times out."),
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
              "  gunicorn_worker_heartbeat_age_max_seconds{@{selector}}\n"
              "  or gunicorn_worker_heartbeat_age_seconds{@{selector}}\n"
              ") > @{stall_seconds}\n"
              "and ignoring (worker, " + INFO + ") gunicorn_info{@{selector},"
              " worker_class=~\"gthread|gevent|eventlet|tornado\"}",
              "The main loop of a {{ $labels.app }} worker is blocked",
              "Worker {{ $labels.worker }} of {{ $labels.app }} on {{ $labels.instance }} has"
              " not run its main loop for {{ $value | humanizeDuration }} (it refreshes its"
              " heartbeat every second when it can): CPU-bound code, a lock, or a blocking call"
              " in a green thread holds it, and none of its connections is served."),
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
              _ratio_or_count("http_504", "http_504|nginx_upstream_timeout|heroku_h12"),
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
                                          "|nginx_upstream_missing"),
              "The proxy cannot reach {{ $labels.app }}",
              "The proxy answers 502 or cannot connect to {{ $labels.app }} on"
              " {{ $labels.instance }} ({{ printf \"%.3g\" $value }}: the share of the"
              " answered requests, 0 to 1, when the access log shows enough of them, else the"
              " number of error lines in @{window}): its queue is full or nothing listens."),
    ]),
    ("gunicorn.connections", [
        Alert("GunicornGthreadWorkerConnectionsAtLimit", "C3",
              "worker:gunicorn_worker_connections:sum\n"
              "  >= ignoring (worker) group_left gunicorn_worker_connections_limit{@{selector}}\n"
              "and ignoring (worker, " + INFO + ") gunicorn_info{@{selector},"
              " worker_class=\"gthread\"}",
              "A gthread worker of {{ $labels.app }} is at worker_connections",
              "Worker {{ $labels.worker }} of {{ $labels.app }} on {{ $labels.instance }}"
              " holds {{ $value }} connections, its --worker-connections limit: gthread"
              " workers hang there (idle keep-alive connections count)."),
        Alert("GunicornWorkerConnectionsNearLimit", "C3 W7",
              "worker:gunicorn_worker_connections:sum\n"
              "  / ignoring (worker) group_left gunicorn_worker_connections_limit{@{selector}}\n"
              "  > @{limit_ratio}",
              "A worker of {{ $labels.app }} nears worker_connections",
              "Worker {{ $labels.worker }} of {{ $labels.app }} on {{ $labels.instance }}"
              " holds {{ $value | humanizePercentage }} of --worker-connections (threshold"
              " @{limit_ratio_pct})."),
        Alert("GunicornGthreadConnectionsQueuedInWorker", "W9",
              "quantile_over_time(0.5, worker:gunicorn_worker_requests_waiting:sum[@{window}]) > 0\n"
              "and count_over_time(worker:gunicorn_worker_requests_waiting:sum[@{window}])"
              " >= @{min_samples}\n"
              "and ignoring (worker, " + INFO + ") gunicorn_info{@{selector},"
              " worker_class=\"gthread\"}",
              "Connections wait inside gthread workers of {{ $labels.app }}",
              "Worker {{ $labels.worker }} of {{ $labels.app }} on {{ $labels.instance }}"
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
              "gunicorn_worker_db_connections{@{selector}}\n"
              "  >= ignoring (worker) group_left\n"
              "  max without (source) (gunicorn_app_db_connection_budget_per_worker{@{selector},"
              " source=\"declared\"})",
              "A worker of {{ $labels.app }} uses its whole DB pool",
              "Worker {{ $labels.worker }} of {{ $labels.app }} on {{ $labels.instance }}"
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
              "predict_linear(app:gunicorn_worker_db_connections:sum[@{window}],"
              " @{horizon_seconds})\n"
              "  > gunicorn_app_db_connection_budget{@{selector}}\n"
              "unless\n"
              "app:gunicorn_worker_db_connections:sum\n"
              "  <= max_over_time(app:gunicorn_worker_db_connections:sum[@{history}]"
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
              "gunicorn_worker_db_connections{@{selector}} > @{min_connections}\n"
              "and gunicorn_worker_db_connections{@{selector}}\n"
              "  > @{per_thread} * gunicorn_worker_threads{@{selector}}\n"
              "and gunicorn_worker_db_connections{@{selector}}\n"
              "  > ignoring (worker) group_left\n"
              "  max without (source) (gunicorn_app_db_connection_budget_per_worker{@{selector}})\n"
              "and ignoring (worker, " + INFO + ") gunicorn_info{@{selector},"
              " worker_class=~\"gevent|eventlet\"}",
              "Green threads of {{ $labels.app }} open a DB connection each",
              "Worker {{ $labels.worker }} of {{ $labels.app }} on {{ $labels.instance }}"
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
              "delta(gunicorn_worker_resident_memory_bytes{@{selector}}[@{window}])"
              " > @{growth_bytes}\n"
              "and delta(worker:gunicorn_worker_connections:sum[@{window}]) > 0",
              "Workers of {{ $labels.app }} grow in memory with their connections",
              "Worker {{ $labels.worker }} of {{ $labels.app }} on {{ $labels.instance }}"
              " grew by {{ $value | humanize1024 }}B in @{window} while its connections"
              " grew: requests pile up in memory; an OOM kill may follow."),
        Alert("GunicornWorkerFileDescriptorsHigh", "W10",
              "worker:gunicorn_worker_fds:ratio > @{fd_ratio}",
              "Worker of {{ $labels.app }} nears its file descriptor limit",
              "Worker {{ $labels.worker }} of {{ $labels.app }} on {{ $labels.instance }}"
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

_RANGE = re.compile(r"\[(\w+)(:\w*)?\]")
_UNIT = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
SCALED_KEYS = {"horizon_seconds"}   # config values that are durations of observation
_DURATION = re.compile(r"^(0|(\d+(ms|s|m|h|d|w|y))+)$")
_META_KEYS = {"for", "keep_firing_for", "severity"}


class ConfigError(ValueError):
    pass


def load_config(path: Path = CONFIG) -> dict:
    with open(path, "rb") as f:
        return tomllib.load(f)


def _fmt(value) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value)) if abs(value) >= 1 else str(value)
    return str(value)


def parse_duration(text: str) -> float:
    """Seconds in a Prometheus duration ('90s', '1h30m', '0m')."""
    parts = re.findall(r"(\d+)(ms|s|m|h|d|w|y)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        if text == "0":
            return 0.0
        raise ConfigError("%r is not a duration" % text)
    return sum(int(n) * _UNIT[u] for n, u in parts)


def format_duration(seconds: float) -> str:
    ms = round(seconds * 1000)
    if ms % 1000:
        return "%dms" % ms
    return "%ds" % (ms // 1000)


def scale_durations(expr: str, factor: float) -> str:
    """Every range and subquery duration in a PromQL expression times `factor`
    (at least 1 s): `[5m]` -> `[20s]` for 1/15."""
    def one(m):
        window, step = m.group(1), m.group(2)
        out = "[" + format_duration(max(1.0, parse_duration(window) * factor))
        if step is not None:
            out += ":" + (format_duration(max(1.0, parse_duration(step[1:]) * factor))
                          if len(step) > 1 else "")
        return out + "]"
    return _RANGE.sub(one, expr)


class _Template(string.Template):
    """`@{name}`: PromQL has no `@{`, and `$`, `{{ }}` are Prometheus' templating."""
    delimiter = "@"


def _substitute(text: str, table: dict, glob: dict, used: set, where: str,
                fixed: dict | None = None) -> str:
    """`text` with its placeholders filled in; the keys of `table` it reads go to `used`."""
    template = _Template(text)
    if not template.is_valid():
        raise ConfigError("%s: a stray '@' in %r (write '@@' for a literal one)" % (where, text))
    sources = (table, fixed or {}, glob)

    def lookup(key: str):
        for source in sources:
            if key in source:
                if source is table:
                    used.add(key)
                return source[key]
        if key.endswith("_pct"):
            return None
        raise ConfigError("%s: no %r in alerts/config.toml" % (where, key))

    values = {}
    for name in template.get_identifiers():
        value = lookup(name)
        if value is not None:
            values[name] = _fmt(value)
        else:  # name_pct: the ratio `name` as a percentage
            values[name] = "%g%%" % (float(lookup(name[:-len("_pct")])) * 100)
    return template.substitute(values)


def fixed_thresholds() -> dict[str, dict]:
    """{alert: {parameter: value}}: thresholds built into a rule instead of config.toml."""
    return {a.name: dict(a.fixed) for _, alerts in GROUPS for a in alerts if a.fixed}


def build_rules(config: dict, for_override: str | None = None,
                time_scale: float | None = None) -> list[tuple[str, list[dict]]]:
    """[(group name, [rule dict])] in file order.

    time_scale: multiply every duration (`for:`, range windows, the prediction horizon)
    by this factor, e.g. 1/15 to run the rules against an exporter scraped every second
    instead of every 15 s (tests/test_alerts_faults.py): the same alerts fire on the
    same samples, 15 times sooner."""
    if time_scale is not None:
        config = {name: dict(table) for name, table in config.items()}
        for name, table in config.items():
            for key in SCALED_KEYS & set(table):
                table[key] = max(1, round(table[key] * time_scale))
    glob = config.get("global", {})
    for key in ("selector", "runbook_url"):
        if key not in glob:
            raise ConfigError("[global] needs %r" % key)
    names = [a.name for _, alerts in GROUPS for a in alerts]
    unknown = set(config) - set(names) - {"global"}
    if unknown:
        raise ConfigError("config.toml has tables for unknown alerts: %s" % sorted(unknown))
    groups = []
    used_global: set = set()
    rec = []
    for record, expr in RECORDING_RULES:
        expr = _substitute(expr, {}, glob, used_global, record)
        rec.append({"record": record,
                    "expr": scale_durations(expr, time_scale) if time_scale else expr})
    groups.append(("gunicorn.rules", rec))
    for group, alerts in GROUPS:
        rules = []
        for a in alerts:
            table = config.get(a.name)
            if table is None:
                raise ConfigError("config.toml has no [%s] table" % a.name)
            for key in ("for", "severity"):
                if key not in table:
                    raise ConfigError("[%s] needs %r" % (a.name, key))
            if table["severity"] not in ("critical", "warning"):
                raise ConfigError("[%s] severity must be critical or warning" % a.name)
            for key in ("for", "keep_firing_for"):
                if key in table and not _DURATION.match(str(table[key])):
                    raise ConfigError("[%s] %s = %r is not a duration" % (a.name, key, table[key]))
            fixed = set(table) & set(a.fixed)
            if fixed:
                raise ConfigError("[%s] sets %s, which its rule fixes (alerts/build.py)"
                                  % (a.name, sorted(fixed)))
            used: set = set()
            expr = _substitute(a.expr, table, glob, used, a.name, a.fixed)
            for_ = for_override or table["for"]
            keep = table.get("keep_firing_for")
            if time_scale is not None:
                expr = scale_durations(expr, time_scale)
                for_ = format_duration(parse_duration(for_) * time_scale)
                if keep is not None:
                    keep = format_duration(parse_duration(keep) * time_scale)
            rule = {
                "alert": a.name,
                "expr": expr,
                "for": for_,
                **({"keep_firing_for": keep} if keep is not None else {}),
                "labels": {"severity": table["severity"], **a.extra_labels},
                "annotations": {
                    "summary": _substitute(a.summary, table, glob, used, a.name, a.fixed),
                    "description": _substitute(a.description, table, glob, used, a.name,
                                               a.fixed),
                    "runbook_url": "%s#%s" % (glob["runbook_url"], a.name.lower()),
                },
            }
            unused = set(table) - used - _META_KEYS
            if unused:
                raise ConfigError("[%s] sets %s, which its rule does not use"
                                  % (a.name, sorted(unused)))
            rules.append(rule)
        groups.append((group, rules))
    return groups


class Literal(str):
    """A string `dump_yaml` always writes as a literal block (`|-`): PromQL expressions."""


class _Dumper(yaml.SafeDumper):
    def increase_indent(self, flow=False, indentless=False):
        return super().increase_indent(flow, False)  # list items indented under their key


def _represent_str(dumper: yaml.SafeDumper, value: str):
    literal = isinstance(value, Literal) or "\n" in value
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if literal else None)


_Dumper.add_representer(str, _represent_str)
_Dumper.add_representer(Literal, _represent_str)


def dump_yaml(data, header: str = "") -> str:
    """`data` as block YAML after the comment lines `header`: keys in insertion order,
    multi-line strings and `Literal`s as literal blocks, no line folding. The one YAML
    writer of the generators (deploy/kubernetes/generate.py imports it)."""
    return header + yaml.dump(data, Dumper=_Dumper, sort_keys=False, width=10_000,
                              allow_unicode=True, default_flow_style=False)


HEADER = """\
# Generated by alerts/build.py from alerts/config.toml: edit those, not this file.
# Runbooks: docs/runbooks.md. Tests: tests/test_alerts.py, alerts/tests/.
"""


def to_yaml(groups: list[tuple[str, list[dict]]]) -> str:
    """The rule file: every expression as a literal block."""
    return dump_yaml({"groups": [
        {"name": name, "rules": [dict(r, expr=Literal(r["expr"])) for r in rules]}
        for name, rules in groups]}, HEADER)


def render(config: dict | None = None, for_override: str | None = None,
           time_scale: float | None = None) -> str:
    return to_yaml(build_rules(load_config() if config is None else config, for_override,
                               time_scale))


def alerts_table() -> list[tuple[str, str]]:
    """[(alert name, insight IDs)] for docs and tests."""
    return [(a.name, a.insights) for _, alerts in GROUPS for a in alerts]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="exit 1 if the output file is stale")
    p.add_argument("--config", type=Path, default=CONFIG)
    p.add_argument("-o", "--output", type=Path, default=OUTPUT)
    p.add_argument("--for", dest="for_override", help="use this `for:` for every alert (tests)")
    p.add_argument("--time-scale", type=float, help="multiply every duration by this (tests)")
    args = p.parse_args(argv)
    try:
        text = render(load_config(args.config), args.for_override, args.time_scale)
    except ConfigError as exc:
        print("alerts/build.py: %s" % exc, file=sys.stderr)
        return 2
    if args.check:
        current = args.output.read_text() if args.output.exists() else ""
        if current != text:
            print("%s is stale: run python alerts/build.py" % args.output, file=sys.stderr)
            return 1
        return 0
    args.output.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
