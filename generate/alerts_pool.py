"""The alerts of the workers' pool (groups gunicorn.workers, gunicorn.dependencies):
whether the app runs, whether its workers have a thread free, and what busy workers wait
on (generate/alerts.py lists every group in file order)."""

from __future__ import annotations

from generate.alerts_common import INFO, Alert

# The first page of an outage names its cause when the workers already wait on a peer:
# Prometheus runs this query when it renders the annotation (GunicornDependencySlow,
# which pages on it, needs a longer window).
WAITING_ON = (
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
              + WAITING_ON),
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
]
