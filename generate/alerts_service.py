"""The alerts of what clients and Prometheus see (groups gunicorn.requests,
gunicorn.exporter): the requests' errors, latency and queueing, and whether the exporter
itself answers and reads everything (generate/alerts.py lists every group in file order)."""

from __future__ import annotations

from generate.alerts_common import Alert


GROUPS: list[tuple[str, list[Alert]]] = [
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
