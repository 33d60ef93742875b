#!/usr/bin/env python3
"""Render alerts/gunicorn.rules.yml (Prometheus recording and alerting rules) from the
rule templates below and the tunables in alerts/config.toml.

Why a generator: the same job selector appears in every expression and each threshold
in both an expression and its description. Keeping them in one TOML file (read with the
standard library's tomllib, the format of the exporter's own config file, so no new
dependency) means a change is one edit, and the rendered YAML stays plain Prometheus
rules that anyone can read, `promtool check rules` and load without this script.

    python alerts/build.py              # rewrite alerts/gunicorn.rules.yml
    python alerts/build.py --check      # exit 1 if the committed file is stale
    python alerts/build.py --for 2s -o /tmp/x.yml   # every `for:` replaced (tests)

Placeholders: ``<<name>>`` is the value of ``name`` in the alert's [table] of
config.toml, else in [global]; ``<<name|pct>>`` renders a ratio as a percentage.
Unknown or unused config keys are errors, so the two files cannot drift apart.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
CONFIG = HERE / "config.toml"
OUTPUT = HERE / "gunicorn.rules.yml"

# `by`-free aggregation: `without (...)` keeps job, instance and any target labels a
# user adds by relabelling, so every alert carries them without listing them here.

RECORDING_RULES: list[tuple[str, str]] = [
    ("app:gunicorn_workers_busy:ratio",
     "gunicorn_workers_busy{<<selector>>} / (gunicorn_workers{<<selector>>} > 0)"),
    ("app:gunicorn_listener_queue_length:sum",
     "sum without (listener) (gunicorn_listener_queue_length{<<selector>>})"),
    ("listener:gunicorn_listener_queue_fill:ratio",
     "gunicorn_listener_queue_length{<<selector>>}\n"
     "  / (gunicorn_listener_queue_max{<<selector>>} > 0)"),
    ("worker:gunicorn_worker_heartbeat_timeout:ratio",
     "gunicorn_worker_heartbeat_age_seconds{<<selector>>}\n"
     "  / ignoring (worker) group_left () (gunicorn_timeout_seconds{<<selector>>} > 0)"),
    ("app:gunicorn_worker_heartbeat_timeout:max_ratio",
     "max without (worker) (worker:gunicorn_worker_heartbeat_timeout:ratio)"),
    ("app:gunicorn_worker_heartbeat_timeout:min_ratio",
     "min without (worker) (worker:gunicorn_worker_heartbeat_timeout:ratio)"),
    ("worker:gunicorn_worker_connections:sum",
     "sum without (state) (gunicorn_worker_connections{<<selector>>})"),
    ("app:gunicorn_worker_db_connections:sum",
     "sum without (worker) (gunicorn_worker_db_connections{<<selector>>})"),
    ("app:gunicorn_db_connection_budget:ratio",
     "app:gunicorn_worker_db_connections:sum\n"
     "  / (gunicorn_app_db_connection_budget{<<selector>>} > 0)"),
    ("server:gunicorn_postgres_connections:sum",
     "sum without (datname, usename, application_name, state) "
     "(gunicorn_postgres_connections{<<selector>>})"),
    # Slots ordinary roles may use; reserved_connections exists on Postgres 16+ only.
    ("server:gunicorn_postgres_usable_connections:sum",
     "gunicorn_postgres_max_connections{<<selector>>}\n"
     "  - gunicorn_postgres_superuser_reserved_connections{<<selector>>}\n"
     "  - (gunicorn_postgres_reserved_connections{<<selector>>}"
     " or 0 * gunicorn_postgres_superuser_reserved_connections{<<selector>>})"),
    ("server:gunicorn_postgres_connections:ratio",
     "server:gunicorn_postgres_connections:sum\n"
     "  / (server:gunicorn_postgres_usable_connections:sum > 0)"),
    ("worker:gunicorn_worker_fds:ratio",
     "gunicorn_worker_open_fds{<<selector>>} / (gunicorn_worker_max_fds{<<selector>>} > 0)"),
]


@dataclass
class Alert:
    name: str
    insights: str          # IDs of shared/insights.md, for docs and the coverage test
    expr: str
    summary: str
    description: str
    extra_labels: dict = field(default_factory=dict)


GROUPS: list[tuple[str, list[Alert]]] = [
    ("gunicorn.workers", [
        Alert("GunicornDown", "W4",
              "gunicorn_up{<<selector>>} == 0",
              "gunicorn app {{ $labels.app }} is down on {{ $labels.instance }}",
              "No gunicorn master of app {{ $labels.app }} runs on {{ $labels.instance }}"
              " (gunicorn_up {{ $value }}): nothing accepts connections on its socket and"
              " the proxy answers 502 (nginx: connect() failed (111: Connection refused))."),
        Alert("GunicornWorkerPoolExhausted", "C1",
              "app:gunicorn_listener_queue_length:sum > 0\n"
              "and app:gunicorn_workers_busy:ratio >= 1",
              "Every worker of {{ $labels.app }} is busy and requests queue",
              "All workers of {{ $labels.app }} on {{ $labels.instance }} are busy and"
              " {{ $value }} connections wait in the accept queue: requests hang until the"
              " proxy times out (502/504)."),
        Alert("GunicornWorkerPoolSaturated", "W2 W6 C1",
              "avg_over_time(app:gunicorn_workers_busy:ratio[<<window>>]) > <<busy_ratio>>",
              "Workers of {{ $labels.app }} are busy most of the time",
              "On average {{ $value | humanizePercentage }} of the workers of {{ $labels.app }}"
              " on {{ $labels.instance }} were busy over <<window>> (threshold"
              " <<busy_ratio|pct>>): add workers or threads before the pool runs out."),
        Alert("GunicornSyncWorkersBlocking", "W1",
              "(\n"
              "  avg_over_time(app:gunicorn_workers_busy:ratio[<<window>>]) > <<busy_ratio>>\n"
              "  and max_over_time(app:gunicorn_listener_queue_length:sum[<<window>>]) > 0\n"
              ")\n"
              "and ignoring (version, worker_class) gunicorn_info{<<selector>>, worker_class=\"sync\"}",
              "Sync workers of {{ $labels.app }} block and requests queue",
              "The sync workers of {{ $labels.app }} on {{ $labels.instance }} were busy"
              " {{ $value | humanizePercentage }} of the time over <<window>> and requests"
              " waited in the accept queue: one slow call holds a whole worker."),
        Alert("GunicornWorkersMissing", "C7 W5",
              "gunicorn_workers{<<selector>>} < gunicorn_workers_desired{<<selector>>}",
              "{{ $labels.app }} runs fewer workers than configured",
              "{{ $labels.app }} on {{ $labels.instance }} has had only {{ $value }} workers"
              " for a while, fewer than --workers: workers keep dying (OOM kills, timeouts)"
              " or fail to boot."),
        Alert("GunicornAllWorkersSlow", "W6",
              "app:gunicorn_worker_heartbeat_timeout:min_ratio > <<heartbeat_ratio>>\n"
              "and app:gunicorn_workers_busy:ratio >= <<busy_ratio>>",
              "Every worker of {{ $labels.app }} is stuck in a long request",
              "Even the youngest heartbeat of {{ $labels.app }} on {{ $labels.instance }} is"
              " {{ $value | humanizePercentage }} of --timeout while the workers are busy:"
              " a slow dependency holds all of them."),
    ]),
    ("gunicorn.timeouts", [
        Alert("GunicornWorkerNearTimeout", "W5",
              "max_over_time(app:gunicorn_worker_heartbeat_timeout:max_ratio[<<window>>])"
              " > <<heartbeat_ratio>>",
              "Requests of {{ $labels.app }} keep running close to --timeout",
              "Requests of {{ $labels.app }} on {{ $labels.instance }} keep reaching"
              " {{ $value | humanizePercentage }} of gunicorn's --timeout (threshold"
              " <<heartbeat_ratio|pct>>): WORKER TIMEOUT kills are next."),
        Alert("GunicornWorkerTimeouts", "W5",
              "increase(gunicorn_log_events_total{<<selector>>, signature=\"worker_timeout\"}"
              "[<<window>>]) > 0",
              "Workers of {{ $labels.app }} are killed by WORKER TIMEOUT",
              "gunicorn logged {{ $value | humanize }} WORKER TIMEOUT lines for"
              " {{ $labels.app }} on {{ $labels.instance }} in <<window>>: requests run"
              " longer than --timeout and are killed."),
        Alert("GunicornTimeoutAboveProxyTimeout", "W8",
              "gunicorn_timeout_seconds{<<selector>>} > <<proxy_timeout_seconds>>",
              "{{ $labels.app }} lets requests outlive the proxy's timeout",
              "--timeout of {{ $labels.app }} on {{ $labels.instance }} is {{ $value }} s,"
              " above the proxy's <<proxy_timeout_seconds>> s: workers keep working on"
              " requests nobody waits for."),
        Alert("GunicornWorkingForGoneClients", "W8",
              "sum without (worker, state) (gunicorn_worker_connections{<<selector>>,"
              " state=\"client_closed\"}) > 0",
              "Workers of {{ $labels.app }} serve clients that hung up",
              "Workers of {{ $labels.app }} on {{ $labels.instance }} have held"
              " {{ $value }} connections whose client already hung up (proxy or platform"
              " timed out first) for minutes."),
        Alert("GunicornProxyTimeouts", "C1 W8",
              "sum without (signature) (\n"
              "  increase(gunicorn_log_events_total{<<selector>>,"
              " signature=~\"nginx_upstream_timeout|http_504|heroku_h12\"}[<<window>>])\n"
              ") > <<events>>",
              "The proxy keeps timing out on {{ $labels.app }}",
              "{{ $value | humanize }} upstream timeouts, 504s or Heroku H12s for"
              " {{ $labels.app }} on {{ $labels.instance }} in <<window>>: requests take"
              " longer than the proxy waits."),
    ]),
    ("gunicorn.listeners", [
        Alert("GunicornListenQueueStuck", "C2 C1",
              "gunicorn_listener_queue_length{<<selector>>} > 0",
              "The accept queue of {{ $labels.app }} does not drain",
              "{{ $value }} connections wait in the accept queue of {{ $labels.listener }}"
              " ({{ $labels.app }} on {{ $labels.instance }}) and it has not been empty for"
              " minutes: the app does not accept."),
        Alert("GunicornListenQueueFilling", "C2 W11",
              "listener:gunicorn_listener_queue_fill:ratio > <<fill_ratio>>",
              "The accept queue of {{ $labels.app }} is filling up",
              "The accept queue of {{ $labels.listener }} ({{ $labels.app }} on"
              " {{ $labels.instance }}) is {{ $value | humanizePercentage }} full"
              " (threshold <<fill_ratio|pct>>)."),
        Alert("GunicornListenQueueFull", "C2 W11",
              "listener:gunicorn_listener_queue_fill:ratio > <<fill_ratio>>",
              "The accept queue of {{ $labels.app }} is full",
              "The accept queue of {{ $labels.listener }} ({{ $labels.app }} on"
              " {{ $labels.instance }}) is {{ $value | humanizePercentage }} full: new"
              " connections get EAGAIN (unix) or are dropped (TCP)."),
        Alert("GunicornListenOverflows", "W11 C1",
              "rate(gunicorn_host_listen_overflows_total{<<selector>>}[<<window>>]) > 0",
              "The kernel drops connections on full accept queues",
              "The kernel of {{ $labels.instance }} drops {{ $value | humanize }}"
              " connections/s because an accept queue is full (TcpExt ListenOverflows)."),
        Alert("GunicornBacklogCapped", "W11",
              "gunicorn_backlog{<<selector>>}\n"
              "  > min without (listener) (gunicorn_listener_queue_max{<<selector>>})",
              "--backlog of {{ $labels.app }} is silently capped",
              "{{ $labels.app }} on {{ $labels.instance }} asks for --backlog {{ $value }}"
              " but its accept queue is smaller: net.core.somaxconn caps it."),
        Alert("GunicornProxyCannotConnect", "C1 C2 W4",
              "sum without (signature) (\n"
              "  increase(gunicorn_log_events_total{<<selector>>,"
              " signature=~\"nginx_upstream_eagain|nginx_connect_refused|http_502\"}[<<window>>])\n"
              ") > <<events>>",
              "The proxy cannot reach {{ $labels.app }}",
              "{{ $value | humanize }} EAGAIN, connection refused or 502 errors for"
              " {{ $labels.app }} on {{ $labels.instance }} in <<window>>: its queue is"
              " full or nothing listens."),
    ]),
    ("gunicorn.connections", [
        Alert("GunicornGthreadWorkerConnectionsAtLimit", "C3",
              "worker:gunicorn_worker_connections:sum\n"
              "  >= ignoring (worker) group_left gunicorn_worker_connections_limit{<<selector>>}\n"
              "and ignoring (worker, version, worker_class) gunicorn_info{<<selector>>,"
              " worker_class=\"gthread\"}",
              "A gthread worker of {{ $labels.app }} is at worker_connections",
              "Worker {{ $labels.worker }} of {{ $labels.app }} on {{ $labels.instance }}"
              " holds {{ $value }} connections, its --worker-connections limit: gthread"
              " workers hang there (idle keep-alive connections count)."),
        Alert("GunicornWorkerConnectionsNearLimit", "C3 W7",
              "worker:gunicorn_worker_connections:sum\n"
              "  / ignoring (worker) group_left gunicorn_worker_connections_limit{<<selector>>}\n"
              "  > <<limit_ratio>>",
              "A worker of {{ $labels.app }} nears worker_connections",
              "Worker {{ $labels.worker }} of {{ $labels.app }} on {{ $labels.instance }}"
              " holds {{ $value | humanizePercentage }} of --worker-connections (threshold"
              " <<limit_ratio|pct>>)."),
        Alert("GunicornGthreadConnectionsQueuedInWorker", "W9",
              "gunicorn_worker_connections{<<selector>>, state=\"active\"}\n"
              "  > ignoring (worker, state) group_left gunicorn_worker_capacity{<<selector>>}\n"
              "and ignoring (worker, state, version, worker_class) gunicorn_info{<<selector>>,"
              " worker_class=\"gthread\"}",
              "Connections wait inside gthread workers of {{ $labels.app }}",
              "Worker {{ $labels.worker }} of {{ $labels.app }} on {{ $labels.instance }}"
              " holds {{ $value }} active connections, more than its threads: the extra"
              " ones wait inside the worker, invisible in the accept queue."),
    ]),
    ("gunicorn.database", [
        Alert("GunicornSQLAlchemyPoolExhausted", "C4",
              "increase(gunicorn_log_events_total{<<selector>>,"
              " signature=\"queuepool_exhausted\"}[<<window>>]) > <<events>>",
              "SQLAlchemy pool of {{ $labels.app }} is exhausted",
              "{{ $labels.app }} on {{ $labels.instance }} logged {{ $value | humanize }}"
              " `QueuePool limit ... reached` errors in <<window>>: requests wait"
              " pool_timeout and fail."),
        Alert("GunicornWorkerDBPoolAtLimit", "C4",
              "gunicorn_worker_db_connections{<<selector>>}\n"
              "  >= ignoring (worker) group_left\n"
              "  max without (source) (gunicorn_app_db_connection_budget_per_worker{<<selector>>,"
              " source=\"declared\"})",
              "A worker of {{ $labels.app }} uses its whole DB pool",
              "Worker {{ $labels.worker }} of {{ $labels.app }} on {{ $labels.instance }}"
              " holds {{ $value }} database connections, its declared pool_size +"
              " max_overflow: the next checkout waits (QueuePool limit)."),
        Alert("GunicornDBConnectionsOverBudget", "C5",
              "app:gunicorn_db_connection_budget:ratio > 1",
              "{{ $labels.app }} holds more DB connections than its budget",
              "The workers of {{ $labels.app }} on {{ $labels.instance }} hold"
              " {{ $value | humanizePercentage }} of their connection budget"
              " (workers x per-worker pool): connections leak."),
        Alert("GunicornDBConnectionsWillExceedBudget", "C5",
              "predict_linear(app:gunicorn_worker_db_connections:sum[<<window>>],"
              " <<horizon_seconds>>)\n"
              "  > gunicorn_app_db_connection_budget{<<selector>>}",
              "DB connections of {{ $labels.app }} grow towards the budget",
              "At the trend of the last <<window>>, the workers of {{ $labels.app }} on"
              " {{ $labels.instance }} will hold {{ $value | humanize }} database"
              " connections in <<horizon_seconds>> s, above their budget: a leak."),
        Alert("GunicornPostgresConnectionsNearLimit", "C5 C6",
              "server:gunicorn_postgres_connections:ratio > <<usage_ratio>>",
              "Postgres {{ $labels.server }} nears max_connections",
              "Postgres {{ $labels.server }} (seen from {{ $labels.instance }}) uses"
              " {{ $value | humanizePercentage }} of the connections ordinary roles may"
              " open (threshold <<usage_ratio|pct>>)."),
        Alert("GunicornPostgresConnectionsExhausted", "C5 C6",
              "server:gunicorn_postgres_connections:ratio > <<usage_ratio>>",
              "Postgres {{ $labels.server }} is out of connections",
              "Postgres {{ $labels.server }} (seen from {{ $labels.instance }}) uses"
              " {{ $value | humanizePercentage }} of the connections ordinary roles may"
              " open: new connections fail with `too many clients`."),
        Alert("GunicornGreenThreadDBConnections", "C6",
              "gunicorn_worker_db_connections{<<selector>>} > <<min_connections>>\n"
              "and gunicorn_worker_db_connections{<<selector>>}\n"
              "  > <<per_thread>> * gunicorn_worker_threads{<<selector>>}\n"
              "and ignoring (worker, version, worker_class) gunicorn_info{<<selector>>,"
              " worker_class=~\".*(gevent|eventlet).*\"}",
              "Green threads of {{ $labels.app }} open a DB connection each",
              "Worker {{ $labels.worker }} of {{ $labels.app }} on {{ $labels.instance }}"
              " ({{ $value }} DB connections) holds far more connections than OS threads:"
              " every green thread keeps its own connection."),
    ]),
    ("gunicorn.memory", [
        Alert("GunicornWorkerOOMKilled", "C7",
              "increase(gunicorn_worker_oom_kills_total{<<selector>>}[<<window>>]) > 0\n"
              "or sum without (signature) (\n"
              "  increase(gunicorn_log_events_total{<<selector>>,"
              " signature=~\"worker_sigkill|kernel_oom_kill\"}[<<window>>])\n"
              ") > 0",
              "Workers of {{ $labels.app }} were OOM-killed",
              "{{ $value | humanize }} workers of {{ $labels.app }} on {{ $labels.instance }}"
              " were killed by the kernel OOM killer (or SIGKILLed: `Perhaps out of"
              " memory?`) in <<window>>."),
        Alert("GunicornRepeatedOOMKills", "C7",
              "increase(gunicorn_worker_oom_kills_total{<<selector>>}[<<window>>]) >= <<kills>>\n"
              "or increase(gunicorn_master_oom_kills_total{<<selector>>}[<<window>>]) > 0",
              "{{ $labels.app }} is being OOM-killed repeatedly",
              "The OOM killer killed {{ $value | humanize }} processes of {{ $labels.app }}"
              " on {{ $labels.instance }} in <<window>> (or its master): requests fail"
              " and workers respawn in a loop."),
        Alert("GunicornWorkerMemoryGrowing", "W3 W7 C7",
              "delta(gunicorn_worker_resident_memory_bytes{<<selector>>}[<<window>>])"
              " > <<growth_bytes>>\n"
              "and delta(worker:gunicorn_worker_connections:sum[<<window>>]) > 0",
              "Workers of {{ $labels.app }} grow in memory with their connections",
              "Worker {{ $labels.worker }} of {{ $labels.app }} on {{ $labels.instance }}"
              " grew by {{ $value | humanize1024 }}B in <<window>> while its connections"
              " grew: requests pile up in memory; an OOM kill may follow."),
        Alert("GunicornWorkerFileDescriptorsHigh", "W10",
              "worker:gunicorn_worker_fds:ratio > <<fd_ratio>>",
              "Worker of {{ $labels.app }} nears its file descriptor limit",
              "Worker {{ $labels.worker }} of {{ $labels.app }} on {{ $labels.instance }}"
              " uses {{ $value | humanizePercentage }} of its `ulimit -n`: accept() fails"
              " at the limit."),
    ]),
    ("gunicorn.exporter", [
        Alert("GunicornExporterCollectorFailing", "",
              "gunicorn_exporter_collector_success{<<selector>>} == 0",
              "gunicorn-exporter collector {{ $labels.collector }} fails",
              "Collector {{ $labels.collector }} of gunicorn-exporter on"
              " {{ $labels.instance }} has failed for minutes: its series, and the alerts"
              " that read them, are missing."),
        Alert("GunicornExporterPermissionDenied", "",
              "gunicorn_exporter_permission_denied_processes{<<selector>>} > 0",
              "gunicorn-exporter cannot read some gunicorn processes",
              "gunicorn-exporter on {{ $labels.instance }} may not read the fds of"
              " {{ $value }} gunicorn processes: their connections, heartbeats and busy"
              " state are missing."),
    ]),
]

_PLACEHOLDER = re.compile(r"<<(\w+)(\|pct)?>>")
_DURATION = re.compile(r"^(0|(\d+(ms|s|m|h|d|w|y))+)$")
_META_KEYS = {"for", "severity"}


class ConfigError(ValueError):
    pass


def load_config(path: Path = CONFIG) -> dict:
    with open(path, "rb") as f:
        return tomllib.load(f)


def _fmt(value) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value)) if abs(value) >= 1 else str(value)
    return str(value)


def _substitute(text: str, table: dict, glob: dict, used: set, where: str) -> str:
    def one(m):
        key, pct = m.group(1), m.group(2)
        if key in table:
            value = table[key]
            used.add(key)
        elif key in glob:
            value = glob[key]
        else:
            raise ConfigError("%s: no %r in alerts/config.toml" % (where, key))
        if pct:
            return "%g%%" % (float(value) * 100)
        return _fmt(value)
    return _PLACEHOLDER.sub(one, text)


def build_rules(config: dict, for_override: str | None = None) -> list[tuple[str, list[dict]]]:
    """[(group name, [rule dict])] in file order."""
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
        rec.append({"record": record,
                    "expr": _substitute(expr, {}, glob, used_global, record)})
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
            if not _DURATION.match(str(table["for"])):
                raise ConfigError("[%s] for = %r is not a duration" % (a.name, table["for"]))
            used: set = set()
            rule = {
                "alert": a.name,
                "expr": _substitute(a.expr, table, glob, used, a.name),
                "for": for_override or table["for"],
                "labels": {"severity": table["severity"], **a.extra_labels},
                "annotations": {
                    "summary": _substitute(a.summary, table, glob, used, a.name),
                    "description": _substitute(a.description, table, glob, used, a.name),
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


def _scalar(value: str) -> str:
    # JSON strings are valid YAML double-quoted scalars.
    return json.dumps(value, ensure_ascii=False)


def to_yaml(groups: list[tuple[str, list[dict]]]) -> str:
    """The rule file as YAML. A tiny emitter for this one shape (no PyYAML needed):
    expressions as literal blocks, every other string double-quoted."""
    out = ["# Generated by alerts/build.py from alerts/config.toml: edit those, not this file.",
           "# Runbooks: docs/runbooks.md. Tests: tests/test_alerts.py, alerts/tests/.",
           "groups:"]
    for name, rules in groups:
        out.append("  - name: %s" % _scalar(name))
        out.append("    rules:")
        for r in rules:
            head = "record" if "record" in r else "alert"
            out.append("      - %s: %s" % (head, _scalar(r[head])))
            out.append("        expr: |-")
            for line in r["expr"].splitlines():
                out.append(("          " + line).rstrip())
            if "for" in r:
                out.append("        for: %s" % r["for"])
            for key in ("labels", "annotations"):
                if key in r:
                    out.append("        %s:" % key)
                    for k, v in r[key].items():
                        out.append("          %s: %s" % (k, _scalar(v)))
    return "\n".join(out) + "\n"


def render(config: dict | None = None, for_override: str | None = None) -> str:
    return to_yaml(build_rules(load_config() if config is None else config, for_override))


def alerts_table() -> list[tuple[str, str]]:
    """[(alert name, insight IDs)] for docs and tests."""
    return [(a.name, a.insights) for _, alerts in GROUPS for a in alerts]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="exit 1 if the output file is stale")
    p.add_argument("--config", type=Path, default=CONFIG)
    p.add_argument("-o", "--output", type=Path, default=OUTPUT)
    p.add_argument("--for", dest="for_override", help="use this `for:` for every alert (tests)")
    args = p.parse_args(argv)
    try:
        text = render(load_config(args.config), args.for_override)
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
