"""The alerts of what the workers hold (groups gunicorn.database, gunicorn.memory):
database connections against their pool, budget and Postgres' max_connections; memory,
OOM kills and file descriptors (generate/alerts.py lists every group in file order)."""

from __future__ import annotations

from generate.alerts_common import INFO, Alert, log_events


GROUPS: list[tuple[str, list[Alert]]] = [
    ("gunicorn.database", [
        Alert("GunicornSQLAlchemyPoolExhausted", "C4",
              log_events("queuepool_exhausted") + " > @{events}",
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
              log_events("postgres_too_many_clients") + " > 0",
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
              log_events("worker_sigkill") + "\n  > "
              + log_events("worker_timeout", "@{timeout_window}"),
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
]
