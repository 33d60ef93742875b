#!/usr/bin/env python3
"""Write grafana/dashboards/gunicorn.json, the gunicorn-exporter dashboard.

    python grafana/generate.py            # rewrite the dashboard
    python grafana/generate.py --check    # exit 1 if the file is not what this writes

The dashboard is generated so that every panel has the same datasource, variables and
style, and so that its threshold lines are the alert thresholds: `thresholds()` reads them from
`alerts/config.toml`, the tunables alerts/build.py renders `alerts/gunicorn.rules.yml`
from, or, for a threshold built into an alert's expression, from that alert's `fixed`
thresholds in alerts/build.py (THRESHOLDS names the alert and parameter of each; it
states no value, and a missing one is an error). tests/test_grafana.py fails when the
committed JSON differs from what this script writes from the current alerts, and when
a threshold drawn here does not appear in its alert's expression in the rule file, so
after changing an alert threshold run this script again.

The Overview row shows what the alerts see, per app: it reads the recording rules
(app:gunicorn_workers_busy:ratio, app:gunicorn_requests_waiting:sum, ...) and the
ALERTS / ALERTS_FOR_STATE series of alerts/gunicorn.rules.yml, so those rules must be
loaded in the Prometheus the dashboard reads. Panels whose series need an optional
collector or the rules say so in their `noValue` text (NEEDS_* below).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "grafana" / "dashboards" / "gunicorn.json"
ALERTS_DIR = ROOT / "alerts"

UID = "gunicorn-exporter"
SCHEMA_VERSION = 39
DS = {"type": "prometheus", "uid": "${datasource}"}

# Selectors: every gunicorn_* series of an app, and host/exporter series (no app label).
S = 'job=~"$job", instance=~"$instance", app=~"$app"'
H = 'job=~"$job", instance=~"$instance"'

# Each threshold the dashboard draws: (alert, its parameter, colour). The value is the
# parameter's in alerts/config.toml, or the alert's `fixed` one in alerts/build.py.
THRESHOLDS: dict[str, tuple[str, str, str]] = {
    # busy workers / workers (C1, W2): averaged over each alert's window
    "busy_warning": ("GunicornWorkerPoolSaturated", "busy_ratio", "orange"),
    "busy_critical": ("GunicornWorkerPoolExhausted", "busy_ratio", "red"),
    # listener queue length / queue limit (C2, W11)
    "queue_warning": ("GunicornListenQueueFilling", "fill_ratio", "orange"),
    "queue_critical": ("GunicornListenQueueFull", "fill_ratio", "red"),
    # share of time a connection waited in an accept queue, sampled at 10 Hz (W2, C1)
    "queued_warning": ("GunicornRequestsWaitForWorkers", "queued_ratio", "orange"),
    # 5xx / all requests over 5 minutes, per app and source (C1, W8)
    "error_ratio_critical": ("GunicornErrorRatioHigh", "error_ratio", "red"),
    # p99 request duration in seconds over 5 minutes (W6, W8)
    "latency_p99_warning": ("GunicornLatencyHigh", "p99_seconds", "orange"),
    # heartbeat age / --timeout, the oldest worker (W5)
    "heartbeat_warning": ("GunicornWorkerNearTimeout", "heartbeat_ratio", "orange"),
    # heartbeat age / --timeout, the mean of the busy sync workers (W6)
    "slow_requests_warning": ("GunicornSlowRequestsSaturate", "heartbeat_ratio", "orange"),
    # heartbeat age of gthread/gevent/eventlet/tornado workers, seconds (W6, C1)
    "loop_stall_warning": ("GunicornWorkerLoopBlocked", "stall_seconds", "orange"),
    # open fds / fd limit (W10)
    "fd_warning": ("GunicornWorkerFileDescriptorsHigh", "fd_ratio", "orange"),
    # connections per worker / worker_connections (C3, W7)
    "connections_warning": ("GunicornWorkerConnectionsNearLimit", "limit_ratio", "orange"),
    # app DB connections / budget (C5): fixed in the alert's expression
    "db_budget_critical": ("GunicornDBConnectionsOverBudget", "budget_ratio", "red"),
    # Postgres connections / (max_connections - reserved slots) (C5, C6)
    "pg_warning": ("GunicornPostgresConnectionsNearLimit", "usage_ratio", "orange"),
    "pg_critical": ("GunicornPostgresConnectionsExhausted", "usage_ratio", "red"),
}

# What a panel needs when its series come from an optional collector or from the rule
# file: shown as its `noValue` text (instead of a bare "No data") and in its description.
NEEDS_POSTGRES = "needs --postgres.dsn (the postgres collector's pg_stat_activity series)"
NEEDS_SAMPLER = "needs the sampler (on unless --sampler.interval 0) and a master in the exporter's network namespace"
NEEDS_LOGS = "needs --logs.file with the gunicorn error log (the logs collector)"
NEEDS_REQUESTS = ("needs gunicorn's --statsd-host pointed at the exporter's --statsd.listen-address "
                  "(127.0.0.1:8125 by default), or --logs.file with an access log (docs/requests.md)")
NEEDS_OOM = ("needs CAP_SYSLOG (to read /dev/kmsg) or a memory cgroup per app for OOM kill "
             "records (the oom collector)")
NEEDS_BUDGET = ("needs the postgres collector, which computes the budgets (on unless "
                "--no-collector.postgres; set them with --postgres.app-budget)")
NEEDS_RULES = ("needs the rules of alerts/gunicorn.rules.yml loaded in Prometheus (their "
               "selector, alerts/config.toml [global], must match this job)")


def _alerts_build(alerts_dir: Path):
    """alerts/build.py as a module: its config loader and the thresholds its rules fix."""
    spec = importlib.util.spec_from_file_location("alerts_build", alerts_dir / "build.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def thresholds(alerts_dir: Path = ALERTS_DIR) -> tuple[dict[str, float], dict[str, str]]:
    """(threshold values, where each came from) from alerts/config.toml, the alerts'
    tunables (alerts/build.py renders alerts/gunicorn.rules.yml from it), and the
    thresholds alerts/build.py fixes in an expression. A missing one is an error."""
    build = _alerts_build(alerts_dir)
    config = build.load_config(alerts_dir / "config.toml")
    fixed = build.fixed_thresholds()
    values, source, missing = {}, {}, []
    for key, (alert, param, _colour) in THRESHOLDS.items():
        if param in config.get(alert, {}):
            values[key], source[key] = float(config[alert][param]), f"alerts/config.toml [{alert}] {param}"
        elif param in fixed.get(alert, {}):
            values[key], source[key] = float(fixed[alert][param]), f"alerts/build.py {alert} (fixed in its expression)"
        else:
            missing.append(f"{key}: [{alert}] {param}")
    if missing:
        raise SystemExit("grafana/generate.py: thresholds in neither alerts/config.toml nor "
                         "alerts/build.py: " + ", ".join(missing))
    return values, source


# --------------------------------------------------------------------------
# panel builders
# --------------------------------------------------------------------------

LIMIT_RE = r".*\((limit|capacity|threshold|budget)\)$"


def target(expr: str, legend: str = "__auto", ref: str = "A", *, instant: bool = False,
           fmt: str = "time_series") -> dict:
    return {"datasource": DS, "refId": ref, "expr": expr, "legendFormat": legend,
            "range": not instant, "instant": instant, "format": fmt, "editorMode": "code"}


def _targets(pairs) -> list[dict]:
    return [target(expr, legend, chr(ord("A") + i)) for i, (expr, legend) in enumerate(pairs)]


def _threshold_steps(value: float | None, *, below_is_bad: bool = False) -> dict:
    if value is None:
        return {"mode": "absolute", "steps": [{"color": "green", "value": None}]}
    if below_is_bad:
        return {"mode": "absolute", "steps": [{"color": "red", "value": None},
                                              {"color": "green", "value": value}]}
    return {"mode": "absolute", "steps": [{"color": "green", "value": None},
                                          {"color": "red", "value": value}]}


def alert_steps(t: dict[str, float], *keys: str) -> dict:
    """Threshold steps at the alert thresholds `keys` (orange = warning, red = critical)."""
    steps = [{"color": "green", "value": None}]
    for key in sorted(keys, key=lambda k: t[k]):
        steps.append({"color": THRESHOLDS[key][2], "value": t[key]})
    return {"mode": "absolute", "steps": steps}


def _pct(t: dict[str, float], *keys: str) -> str:
    return " / ".join(f"{THRESHOLDS[k][0]} {t[k]:g}" for k in keys)


def timeseries(title: str, description: str, pairs, *, unit: str = "short",
               threshold: dict | None = None, max_: float | None = None,
               stack: bool = False, bars: bool = False, decimals: int | None = None,
               no_value: str | None = None) -> dict:
    custom = {
        "drawStyle": "bars" if bars else "line", "lineWidth": 1,
        "fillOpacity": 60 if bars else (30 if stack else 10),
        "showPoints": "never", "spanNulls": False, "axisSoftMin": 0,
        "stacking": {"mode": "normal" if stack else "none", "group": "A"},
        "thresholdsStyle": {"mode": "dashed" if threshold is not None else "off"},
    }
    defaults = {"unit": unit, "min": 0, "color": {"mode": "palette-classic"},
                "custom": custom, "thresholds": threshold or _threshold_steps(None)}
    if max_ is not None:
        defaults["max"] = max_
    if decimals is not None:
        defaults["decimals"] = decimals
    if no_value is not None:
        defaults["noValue"] = no_value
    overrides = [{
        # limits drawn next to the values they bound: dashed, unfilled, not stacked
        "matcher": {"id": "byRegexp", "options": LIMIT_RE},
        "properties": [
            {"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}},
            {"id": "custom.fillOpacity", "value": 0},
            {"id": "custom.stacking", "value": {"mode": "none", "group": "A"}},
            {"id": "custom.drawStyle", "value": "line"},
        ],
    }]
    return {"type": "timeseries", "title": title, "description": description,
            "datasource": DS, "targets": _targets(pairs),
            "fieldConfig": {"defaults": defaults, "overrides": overrides},
            "options": {"legend": {"displayMode": "table", "placement": "bottom",
                                   "showLegend": True, "calcs": ["lastNotNull", "max"]},
                        "tooltip": {"mode": "multi", "sort": "desc"}}}


def stat(title: str, description: str, expr: str, legend: str, *, unit: str = "short",
         steps: dict | None = None, mappings: list | None = None, sparkline: bool = False,
         max_: float | None = None, no_value: str | None = None) -> dict:
    defaults = {"unit": unit, "mappings": mappings or [],
                "thresholds": steps or _threshold_steps(None), "color": {"mode": "thresholds"}}
    if sparkline:
        defaults["min"] = 0
    if max_ is not None:
        defaults["max"] = max_
    if no_value is not None:
        defaults["noValue"] = no_value
    return {"type": "stat", "title": title, "description": description, "datasource": DS,
            "targets": [target(expr, legend)],
            "fieldConfig": {"defaults": defaults, "overrides": []},
            "options": {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                        "colorMode": "background", "graphMode": "area" if sparkline else "none",
                        "textMode": "value_and_name" if sparkline else "auto",
                        "orientation": "auto", "justifyMode": "auto", "wideLayout": True,
                        "showPercentChange": False}}


def table(title: str, description: str, expr: str, *, no_value: str | None = None) -> dict:
    defaults = {"custom": {"align": "auto"}, "thresholds": _threshold_steps(None)}
    if no_value is not None:
        defaults["noValue"] = no_value
    return {"type": "table", "title": title, "description": description, "datasource": DS,
            "targets": [target(expr, "", instant=True, fmt="table")],
            "fieldConfig": {"defaults": defaults, "overrides": []},
            "transformations": [{"id": "organize", "options": {
                "excludeByName": {"Time": True, "Value": True, "__name__": True}}}],
            "options": {"showHeader": True, "cellHeight": "sm"}}


def _column(name: str, props: list[dict]) -> dict:
    return {"matcher": {"id": "byName", "options": name}, "properties": props}


def _coloured(steps: dict, unit: str = "short", decimals: int | None = 0) -> list[dict]:
    """A table column whose cells are coloured at `steps`."""
    props = [{"id": "unit", "value": unit}, {"id": "thresholds", "value": steps},
             {"id": "custom.cellOptions", "value": {"type": "color-background", "mode": "basic"}}]
    if decimals is not None:
        props.append({"id": "decimals", "value": decimals})
    return props


def merged_table(title: str, description: str, keys: list[str],
                 columns: list[tuple[str, str, list[dict]]], *, sort_by: str | None = None,
                 no_value: str | None = None) -> dict:
    """One row per distinct `keys` label set, one column per (name, instant query, field
    properties): the queries' tables merged on their common labels (every query must
    aggregate `by (job, <keys>)`, so that their label columns are the same)."""
    targets = [target(expr, "", chr(ord("A") + i), instant=True, fmt="table")
               for i, (_name, expr, _props) in enumerate(columns)]
    rename = {f"Value #{t['refId']}": name for t, (name, _e, _p) in zip(targets, columns)}
    order = {k: i for i, k in enumerate(keys)}
    order.update({f"Value #{t['refId']}": len(keys) + i for i, t in enumerate(targets)})
    defaults = {"custom": {"align": "auto", "cellOptions": {"type": "auto"}},
                "thresholds": _threshold_steps(None)}
    if no_value is not None:
        defaults["noValue"] = no_value
    panel = {"type": "table", "title": title, "description": description, "datasource": DS,
             "targets": targets,
             "fieldConfig": {"defaults": defaults,
                             "overrides": [_column(name, props) for name, _e, props in columns if props]},
             "transformations": [
                 {"id": "merge", "options": {}},
                 {"id": "organize", "options": {"excludeByName": {"Time": True, "job": True},
                                                "indexByName": order, "renameByName": rename}}],
             "options": {"showHeader": True, "cellHeight": "sm", "footer": {"show": False}}}
    if sort_by:
        panel["options"]["sortBy"] = [{"displayName": sort_by, "desc": True}]
    return panel


def row(title: str) -> dict:
    return {"type": "row", "title": title, "collapsed": False, "panels": []}


def _rate(metric: str, sel: str = S, by: str = "instance, app") -> str:
    return f"sum by ({by}) (rate({metric}{{{sel}}}[$__rate_interval]))"


def _increase(metric: str, sel: str = S, by: str = "instance, app") -> str:
    return f"sum by ({by}) (increase({metric}{{{sel}}}[$__rate_interval]))"


def panels(t: dict[str, float]) -> list[tuple[dict, int, int]]:
    """(panel, width, height) in reading order; rows take the full width."""
    up_map = [{"type": "value", "options": {"0": {"text": "DOWN", "color": "red", "index": 0},
                                            "1": {"text": "UP", "color": "green", "index": 1}}}]
    out: list[tuple[dict, int, int]] = []
    add = out.append

    add((row("Overview"), 24, 1))
    # One row per app: what the alerts see (their recording rules), coloured at their thresholds.
    per_app = "max by (job, instance, app) "
    busy_steps = alert_steps(t, "busy_warning", "busy_critical")
    add((merged_table(
        "Apps: what is saturated",
        "One row per app (never a sum over apps): is its master up, workers alive and "
        "configured (--workers), the busy ratio now and its worst in the dashboard's time "
        "range, requests waiting (accept queue + inside gthread workers, "
        "app:gunicorn_requests_waiting:sum), the fullest listener's accept queue, DB "
        "connections / budget, and when the master started. Cells are coloured at the alert "
        f"thresholds ({_pct(t, 'busy_warning', 'busy_critical', 'queue_warning', 'queue_critical', 'db_budget_critical')}); "
        "Waiting is orange as soon as anything waits. The ratio columns read the recording "
        f"rules the alerts read: they {NEEDS_RULES}. DB budget needs the postgres collector "
        "(on by default; budgets from --postgres.app-budget). C1, C2, C5, W2, W4.",
        ["instance", "app"],
        [("Up", per_app + f"(gunicorn_up{{{S}}})",
          [{"id": "mappings", "value": up_map}] + _coloured(_threshold_steps(1, below_is_bad=True))),
         ("Workers", per_app + f"(gunicorn_workers{{{S}}})", [{"id": "decimals", "value": 0}]),
         ("Desired", per_app + f"(gunicorn_workers_desired{{{S}}})", [{"id": "decimals", "value": 0}]),
         ("Busy now", per_app + f"(app:gunicorn_workers_busy:ratio{{{S}}})",
          _coloured(busy_steps, "percentunit")),
         ("Busy max", per_app + f"(max_over_time(app:gunicorn_workers_busy:ratio{{{S}}}[$__range]))",
          _coloured(busy_steps, "percentunit")),
         ("Waiting", per_app + f"(app:gunicorn_requests_waiting:sum{{{S}}})",
          _coloured({"mode": "absolute", "steps": [{"color": "green", "value": None},
                                                   {"color": "orange", "value": 1}]})),
         ("Queue fill", per_app + f"(listener:gunicorn_listener_queue_fill:ratio{{{S}}})",
          _coloured(alert_steps(t, "queue_warning", "queue_critical"), "percentunit")),
         ("DB budget", per_app + f"(app:gunicorn_db_connection_budget:ratio{{{S}}})",
          _coloured(alert_steps(t, "db_budget_critical"), "percentunit")),
         ("Master started", per_app + f"(gunicorn_master_start_time_seconds{{{S}}}) * 1000",
          [{"id": "unit", "value": "dateTimeFromNow"}])],
        sort_by="Busy max", no_value="-"), 24, 8))
    add((stat("Busy ratio per app",
              "Busy workers / workers of each app over time (app:gunicorn_workers_busy:ratio, "
              "one sparkline per app, not a sum), coloured at the alert thresholds "
              f"({_pct(t, 'busy_warning', 'busy_critical')}; the alerts average it over their "
              "window, and the critical one also needs requests waiting). C1, W1, W2, W6.",
              f"app:gunicorn_workers_busy:ratio{{{S}}}", "{{app}} @ {{instance}}",
              unit="percentunit", steps=busy_steps, sparkline=True, max_=1,
              no_value=f"No busy ratio: {NEEDS_RULES}"), 12, 7))
    # Alerts that aggregate the app or instance away (per Postgres server, the exporter
    # absent) have no such label: `|` lets them through the variables' filter.
    alert_sel = 'alertname=~"Gunicorn.*", job=~"$job|", instance=~"$instance|", app=~"$app|"'
    firing = table(
        "Firing alerts",
        "Gunicorn* alerts firing now (ALERTS{alertstate=\"firing\"}) with their severity, app "
        "and instance (alerts per Postgres server have neither), and how long each has been "
        "active: time() - ALERTS_FOR_STATE, whose value is when the alert's condition started "
        "to hold (it fires once that has lasted the alert's for:). Runbooks: "
        "docs/runbooks.md. The alerts come from the rules of alerts/gunicorn.rules.yml.",
        f"time() - (ALERTS_FOR_STATE{{{alert_sel}}} "
        f'and ignoring (alertstate) ALERTS{{alertstate="firing", {alert_sel}}})',
        no_value=f"No gunicorn alert is firing (this panel {NEEDS_RULES})")
    firing["transformations"][0]["options"] = {
        "excludeByName": {"Time": True, "__name__": True, "job": True},
        "indexByName": {"alertname": 0, "severity": 1, "app": 2, "instance": 3, "Value": 99},
        "renameByName": {"Value": "Active for"}}
    firing["fieldConfig"]["overrides"] = [
        _column("Active for", [{"id": "unit", "value": "dtdurations"}]),
        _column("severity", [
            {"id": "mappings", "value": [{"type": "value", "options": {
                "critical": {"color": "red", "index": 0}, "warning": {"color": "orange", "index": 1}}}]},
            {"id": "custom.cellOptions", "value": {"type": "color-text"}}])]
    firing["options"]["sortBy"] = [{"displayName": "Active for", "desc": True}]
    add((firing, 12, 7))
    # Configuration advice (docs/doctor.md): one row per finding of the doctor's rules.
    advice = table(
        "Configuration advice",
        "What the rules of gunicorn-exporter doctor find in each app's configuration now "
        "(gunicorn_advice): the catalogue ID of the failure mode it prevents (W11 backlog "
        "capped, W8 timeout above the proxy's, C3/W9 gthread connections, W10 fd limit, W1 "
        "sync workers waiting on I/O, W2/I3 workers vs CPUs, C6/C5 database connections, W4 "
        "shared control socket), the rule and its severity. The evidence and what to change: "
        "run gunicorn-exporter doctor on the host (docs/doctor.md). The database rules need "
        "--postgres.dsn.",
        f"gunicorn_advice{{{S}}}",
        no_value="No advice: every rule passes")
    advice["transformations"][0]["options"] = {
        "excludeByName": {"Time": True, "Value": True, "__name__": True, "job": True},
        "indexByName": {"severity": 0, "id": 1, "rule": 2, "app": 3, "instance": 4}}
    advice["fieldConfig"]["overrides"] = [_column("severity", [
        {"id": "mappings", "value": [{"type": "value", "options": {
            "critical": {"color": "red", "index": 0}, "warning": {"color": "orange", "index": 1}}}]},
        {"id": "custom.cellOptions", "value": {"type": "color-text"}}])]
    advice["options"]["sortBy"] = [{"displayName": "severity", "desc": False}]
    add((advice, 24, 6))

    add((row("Saturation"), 24, 1))
    add((timeseries("Busy workers vs workers",
                    "gunicorn_workers_busy (workers whose active connections reach their capacity) "
                    "against the workers alive and the workers configured. Busy = workers for "
                    "minutes with a queue: C1; high most of the time: W2.",
                    [(f"sum by (instance, app) (gunicorn_workers_busy{{{S}}})", "{{app}} @ {{instance}} busy"),
                     (f"sum by (instance, app) (gunicorn_workers{{{S}}})", "{{app}} @ {{instance}} workers (capacity)"),
                     (f"sum by (instance, app) (gunicorn_workers_desired{{{S}}})", "{{app}} @ {{instance}} desired (limit)")],
                    decimals=0), 12, 8))
    add((timeseries("Busy ratio",
                    f"Busy workers / workers per app. Dashed: the alert thresholds "
                    f"({_pct(t, 'busy_warning', 'busy_critical')}), which the alerts compare with "
                    f"the average over their window; the critical one also needs requests waiting "
                    f"all through its window. C1, W1, W2, W6.",
                    [(f"gunicorn_workers_busy{{{S}}} / (gunicorn_workers{{{S}}} > 0)", "{{app}} @ {{instance}}")],
                    unit="percentunit", threshold=alert_steps(t, "busy_warning", "busy_critical"), max_=1), 12, 8))
    add((timeseries("Accept queue length vs limit",
                    "gunicorn_listener_queue_length (connections waiting for a worker, ss -l Recv-Q) "
                    "and the queue's limit gunicorn_listener_queue_max (right axis). C1, C2, W11.",
                    [(f"gunicorn_listener_queue_length{{{S}}}", "{{app}} {{listener}}"),
                     (f"gunicorn_listener_queue_max{{{S}}}", "{{app}} {{listener}} (limit)")],
                    decimals=0), 12, 8))
    out[-1][0]["fieldConfig"]["overrides"][0]["properties"].append(
        {"id": "custom.axisPlacement", "value": "right"})
    add((timeseries("Accept queue fill",
                    f"Queue length / queue limit per listener. Dashed: the alert thresholds "
                    f"({_pct(t, 'queue_warning', 'queue_critical')}). A unix socket that stays full "
                    f"for minutes is C2.",
                    [(f"gunicorn_listener_queue_length{{{S}}} / (gunicorn_listener_queue_max{{{S}}} > 0)",
                      "{{app}} {{listener}}")],
                    unit="percentunit", threshold=alert_steps(t, "queue_warning", "queue_critical"), max_=1), 12, 8))
    add((timeseries("Accept queue peaks between scrapes",
                    "gunicorn_listener_queue_peak: the deepest accept queue the exporter's sampler "
                    "saw (ten times a second) in the last 15 s, so bursts that drain before the "
                    "next scrape still show. C1, C2, W11.",
                    [(f"gunicorn_listener_queue_peak{{{S}}}", "{{app}} {{listener}}"),
                     (f"gunicorn_listener_queue_max{{{S}}}", "{{app}} {{listener}} (limit)")],
                    decimals=0, no_value=NEEDS_SAMPLER), 12, 8))
    add((timeseries("Time requests waited / all workers busy",
                    f"Share of each 5 minutes during which a connection waited in the accept "
                    f"queue (app:gunicorn_listener_queued:ratio_rate5m, the busiest listener) and "
                    f"during which every sync worker was busy "
                    f"(rate of gunicorn_workers_all_busy_seconds_total), both sampled ten times a "
                    f"second. Dashed: the alert threshold ({_pct(t, 'queued_warning')}). W2, C1.",
                    [(f"max by (instance, app) (rate(gunicorn_listener_queued_seconds_total{{{S}}}[5m]))",
                      "{{app}} @ {{instance}} waited"),
                     (f"rate(gunicorn_workers_all_busy_seconds_total{{{S}}}[5m])",
                      "{{app}} @ {{instance}} all busy")],
                    unit="percentunit", threshold=alert_steps(t, "queued_warning"), max_=1,
                    no_value=NEEDS_SAMPLER), 12, 8))
    add((timeseries("Dropped connections per listener",
                    "Connections the kernel dropped at each TCP listening socket of an app "
                    "(gunicorn_listener_drops_total, sk_drops), per second: a full accept queue. "
                    "Any drop within its window is the GunicornListenDrops alert. Unix sockets "
                    "refuse with EAGAIN instead (nginx logs it); absent for masters in another "
                    "network namespace. W11, C1.",
                    [(_rate("gunicorn_listener_drops_total", S, "instance, app, listener"),
                      "{{app}} {{listener}}")],
                    unit="cps"), 12, 8))
    add((timeseries("Listen overflows and drops (host)",
                    "TcpExt ListenOverflows / ListenDrops per second in the exporter's network "
                    "namespace: a full accept queue made the kernel drop connections somewhere on "
                    "the host (the panel per listener says where). W11, C1.",
                    [(_rate("gunicorn_host_listen_overflows_total", H, "instance"), "{{instance}} overflows"),
                     (_rate("gunicorn_host_listen_drops_total", H, "instance"), "{{instance}} drops")],
                    unit="cps"), 12, 8))
    add((timeseries("Backlog vs somaxconn",
                    "The configured --backlog against net.core.somaxconn, which silently caps it. W11.",
                    [(f"gunicorn_backlog{{{S}}}", "{{app}} backlog"),
                     (f"max by (instance) (gunicorn_host_somaxconn{{{H}}})", "{{instance}} somaxconn (limit)")],
                    decimals=0), 12, 8))
    add((timeseries("Request age of busy sync workers / timeout",
                    "Mean heartbeat age / --timeout of each sync app's busy workers: how far into "
                    "--timeout their current requests are (app:gunicorn_busy_worker_heartbeat_timeout:avg_ratio). "
                    f"Dashed: the alert threshold ({_pct(t, 'slow_requests_warning')}, averaged over "
                    "its window, with most workers busy): a slow dependency holds the workers. "
                    f"It {NEEDS_RULES}. W6, W5.",
                    [(f"app:gunicorn_busy_worker_heartbeat_timeout:avg_ratio{{{S}}}", "{{app}} @ {{instance}}")],
                    unit="percentunit", threshold=alert_steps(t, "slow_requests_warning"), max_=1,
                    no_value=f"No busy sync worker, or: {NEEDS_RULES}"), 12, 8))

    # Requests: gunicorn's statsd stream and access logs (docs/requests.md), per app and
    # source; the sources are never summed (a proxy's access log holds its own 502s).
    by = "job, instance, app, source"
    add((row("Requests"), 24, 1))
    add((timeseries("Requests per second by status",
                    "gunicorn_requests_total per app, source (statsd: gunicorn's --statsd-host "
                    "stream, attributed to the app by the kernel; access_log: --logs.file lines) "
                    f"and status code. It {NEEDS_REQUESTS}. C1, W8.",
                    [(_rate("gunicorn_requests_total", S, "instance, app, source, status"),
                      "{{app}} {{source}} {{status}}")],
                    unit="reqps", stack=True, no_value=f"No data: {NEEDS_REQUESTS}"), 12, 8))
    add((timeseries("Error ratio (5xx / all)",
                    "Share of each app's requests answered 5xx, per source. Dashed: the alert "
                    f"threshold ({_pct(t, 'error_ratio_critical')}), which the alert compares with "
                    "5-minute rates and only above 0.1 requests a second. From an access log it "
                    f"includes the proxy's own 502 and 504. It {NEEDS_REQUESTS}. C1, W8.",
                    [(f"sum by ({by}) (rate(gunicorn_requests_total{{{S}, status=~\"5..\"}}[$__rate_interval]))"
                      f" / (sum by ({by}) (rate(gunicorn_requests_total{{{S}}}[$__rate_interval])) > 0)",
                      "{{app}} @ {{instance}} {{source}}")],
                    unit="percentunit", threshold=alert_steps(t, "error_ratio_critical"), max_=1,
                    no_value=f"No data: {NEEDS_REQUESTS}"), 12, 8))
    latency = [(f"histogram_quantile({q}, sum by ({by}, le) (rate(gunicorn_request_duration_seconds_bucket"
                f"{{{S}}}[$__rate_interval])))", "{{app}} {{source}} " + name)
               for q, name in ((0.5, "p50"), (0.95, "p95"), (0.99, "p99"))]
    add((timeseries("Request duration p50 / p95 / p99",
                    "Quantiles of gunicorn_request_duration_seconds per app and source (statsd: "
                    "gunicorn's request time in the worker; an access log's duration field, nginx's "
                    "including the accept queue). Dashed: the p99 alert threshold "
                    f"({_pct(t, 'latency_p99_warning')} s over 5 minutes). Buckets end at 10, 30 and "
                    f"60 s. It {NEEDS_REQUESTS}. W6, W8.",
                    latency, unit="s", threshold=alert_steps(t, "latency_p99_warning"),
                    no_value=f"No data: {NEEDS_REQUESTS}"), 12, 8))
    add((timeseries("gunicorn log messages by level",
                    "Messages gunicorn logged at critical, error, warning or exception level "
                    "(gunicorn_log_messages_total, from its statsd gunicorn.log.* counters): "
                    f"exceptions rise with 500s. It {NEEDS_REQUESTS}.",
                    [(_increase("gunicorn_log_messages_total", S, "instance, app, level"),
                      "{{app}} @ {{instance}} {{level}}")],
                    bars=True, decimals=0, no_value=f"No data: {NEEDS_REQUESTS}"), 12, 8))
    add((timeseries("statsd receiver",
                    "Datagrams the exporter's statsd socket receives per second, lines it could not "
                    "parse, lines it could attribute to no app (by reason: unknown_sender = no "
                    "gunicorn the exporter sees and no --statsd.prefix; limit), and datagrams the "
                    "kernel dropped at the socket (raise --statsd.receive-buffer). docs/requests.md.",
                    [(_rate("gunicorn_statsd_packets_total", H, "instance"), "{{instance}} datagrams"),
                     (_rate("gunicorn_statsd_malformed_lines_total", H, "instance"), "{{instance}} malformed lines"),
                     (_rate("gunicorn_statsd_unattributed_lines_total", H, "instance, reason"),
                      "{{instance}} unattributed lines: {{reason}}"),
                     (_rate("gunicorn_statsd_dropped_packets_total", H, "instance"), "{{instance}} dropped by the kernel")],
                    unit="short", no_value="No data: the statsd collector is off (--no-collector.statsd)"), 24, 6))

    add((row("Workers"), 24, 1))
    add((timeseries("Connections per worker",
                    "Client connections each worker holds: active, and client_closed (the client "
                    "hung up, the worker still works on it: W8), against the worker's capacity "
                    "(threads / worker_connections) and worker_connections (gthread hangs there: C3; "
                    f"{_pct(t, 'connections_warning')} x worker_connections is the alert). W9, W7.",
                    [(f'gunicorn_worker_connections{{{S}, state="active"}}', "{{app}} w{{worker}} active"),
                     (f'gunicorn_worker_connections{{{S}, state="client_closed"}}', "{{app}} w{{worker}} client_closed"),
                     (f"gunicorn_worker_capacity{{{S}}}", "{{app}} (capacity)"),
                     (f"gunicorn_worker_connections_limit{{{S}}}", "{{app}} worker_connections (limit)"),
                     (f"{t['connections_warning']:g} * gunicorn_worker_connections_limit{{{S}}}",
                      "{{app}} alert (threshold)")],
                    decimals=0), 12, 8))
    add((timeseries("Heartbeat age vs timeout",
                    "Seconds since each worker last notified the master: for a sync worker, how "
                    "long its current request has run. The master kills the worker at the timeout "
                    f"(WORKER TIMEOUT, W5); {_pct(t, 'heartbeat_warning')} x timeout is the alert. "
                    "Idle sync workers reach timeout/2 normally. The highest age since about "
                    "the last scrape (the sampler reads it every second) is what the alert "
                    "compares: a request that nears the timeout between two scrapes. W5, W8, "
                    "W6, C2.",
                    [(f"gunicorn_worker_heartbeat_age_seconds{{{S}}}", "{{app}} w{{worker}}"),
                     (f"gunicorn_worker_heartbeat_age_max_seconds{{{S}}}",
                      "{{app}} w{{worker}} highest between scrapes"),
                     (f"gunicorn_timeout_seconds{{{S}}} > 0", "{{app}} timeout (limit)"),
                     (f"{t['heartbeat_warning']:g} * gunicorn_timeout_seconds{{{S}}} > 0",
                      "{{app}} alert (threshold)")],
                    unit="s"), 12, 8))
    add((timeseries("Heartbeat age / timeout",
                    f"Each worker's highest heartbeat age since about the last scrape (the age at "
                    f"the scrape when the sampler is off) as a fraction of its app's timeout: "
                    f"what the alert reads; dashed: the alert threshold "
                    f"({_pct(t, 'heartbeat_warning')}). W5.",
                    [(f"(gunicorn_worker_heartbeat_age_max_seconds{{{S}}} or gunicorn_worker_heartbeat_age_seconds{{{S}}})"
                      f" / on (job, instance, app) group_left () (gunicorn_timeout_seconds{{{S}}} > 0)",
                      "{{app}} w{{worker}}")],
                    unit="percentunit", threshold=alert_steps(t, "heartbeat_warning"), max_=1), 12, 8))
    add((timeseries("Main loop stall (gthread, gevent, eventlet, tornado)",
                    "Heartbeat age of workers that refresh their heartbeat every second from their "
                    "main loop while they serve requests: an age of seconds means CPU-bound code, a "
                    "lock or a blocking call holds the loop and none of the worker's connections is "
                    f"served. Dashed: the alert threshold ({_pct(t, 'loop_stall_warning')} s). "
                    "Sync workers are in the heartbeat panels above. W6, C1.",
                    [(f"(gunicorn_worker_heartbeat_age_max_seconds{{{S}}} or gunicorn_worker_heartbeat_age_seconds{{{S}}})"
                      " and ignoring (worker, version, worker_class, user) "
                      f'gunicorn_info{{{S}, worker_class=~"gthread|gevent|eventlet|tornado"}}', "{{app}} w{{worker}}")],
                    unit="s", threshold=alert_steps(t, "loop_stall_warning"),
                    no_value="No gthread, gevent, eventlet or tornado worker"), 12, 8))
    add((timeseries("Resident memory per worker",
                    "RSS of each worker. Rising together with connections: W3, W7; growth before "
                    "a kill: C7.",
                    [(f"gunicorn_worker_resident_memory_bytes{{{S}}}", "{{app}} w{{worker}}")],
                    unit="bytes"), 12, 8))
    add((timeseries("Open fds / fd limit",
                    f"Each worker's open file descriptors over its ulimit -n; dashed: the alert "
                    f"threshold ({_pct(t, 'fd_warning')}). W10.",
                    [(f"gunicorn_worker_open_fds{{{S}}} / gunicorn_worker_max_fds{{{S}}}", "{{app}} w{{worker}}")],
                    unit="percentunit", threshold=alert_steps(t, "fd_warning"), max_=1), 12, 8))
    add((timeseries("CPU per worker",
                    "CPU time per second of each worker (1 = one core). A busy worker that uses "
                    "little CPU waits on I/O: W1, W6, I2.",
                    [(f"rate(gunicorn_worker_cpu_seconds_total{{{S}}}[$__rate_interval])", "{{app}} w{{worker}}")],
                    unit="percentunit"), 12, 8))
    add((timeseries("Worker churn",
                    "Workers spawned per second (control socket) and worker slots whose process "
                    "changed: --max-requests recycling, timeouts (W5), OOM kills (C7).",
                    [(_rate("gunicorn_workers_spawned_total"), "{{app}} @ {{instance}} spawned/s"),
                     (f"sum by (instance, app) (changes(gunicorn_worker_start_time_seconds{{{S}}}[$__rate_interval]))",
                      "{{app}} @ {{instance}} slots restarted")]), 12, 8))
    add((table("Apps", "gunicorn release, worker class and user of each app (gunicorn_info).",
               f"gunicorn_info{{{S}}}"), 24, 5))

    add((row("Database"), 24, 1))
    # As the alerts count: max_connections minus the slots ordinary roles can never use.
    usable = (f"(gunicorn_postgres_max_connections{{{H}}}"
              f" - gunicorn_postgres_superuser_reserved_connections{{{H}}}"
              f" - (gunicorn_postgres_reserved_connections{{{H}}}"
              f" or 0 * gunicorn_postgres_superuser_reserved_connections{{{H}}}))")
    add((timeseries("Postgres connections by state",
                    "Client backends in pg_stat_activity per server and state (stacked), against "
                    "max_connections, the connections ordinary roles may open (max_connections "
                    "minus reserved slots) and the alert thresholds on those "
                    f"({_pct(t, 'pg_warning', 'pg_critical')}). It {NEEDS_POSTGRES}. C5, C6.",
                    [(f"sum by (instance, server, state) (gunicorn_postgres_connections{{{H}}})",
                      "{{server}} {{state}}"),
                     (f"max by (instance, server) (gunicorn_postgres_max_connections{{{H}}})",
                      "{{server}} max_connections (limit)"),
                     (f"max by (instance, server) {usable}", "{{server}} usable (limit)"),
                     (f"{t['pg_warning']:g} * max by (instance, server) {usable}",
                      "{{server}} warning (threshold)"),
                     (f"{t['pg_critical']:g} * max by (instance, server) {usable}",
                      "{{server}} critical (threshold)")],
                    stack=True, decimals=0, no_value=f"No data: {NEEDS_POSTGRES}"), 12, 8))
    add((timeseries("Postgres connections / usable connections",
                    "All client backends of a server over max_connections minus reserved slots, "
                    f"as the alerts compute it; dashed: the alert thresholds "
                    f"({_pct(t, 'pg_warning', 'pg_critical')}). It {NEEDS_POSTGRES}. C5, C6.",
                    [(f"sum by (job, instance, server) (gunicorn_postgres_connections{{{H}}}) / on (job, instance, server) "
                      f"({usable} > 0)", "{{server}}")],
                    unit="percentunit", threshold=alert_steps(t, "pg_warning", "pg_critical"), max_=1,
                    no_value=f"No data: {NEEDS_POSTGRES}"), 12, 8))
    add((timeseries("DB connections by app vs budget",
                    "Database connections each app's workers hold (counted from their sockets, and "
                    "as pg_stat_activity attributes them) against the app's budget "
                    f"(workers x per-worker budget; {_pct(t, 'db_budget_critical')} x budget is the "
                    "alert). The pg_stat_activity lines need --postgres.dsn; the budget needs the "
                    "postgres collector (on unless --no-collector.postgres). C5.",
                    [(f"sum by (instance, app) (gunicorn_worker_db_connections{{{S}}})", "{{app}} @ {{instance}} sockets"),
                     (f"sum by (instance, app, server) (gunicorn_postgres_app_connections{{{S}}})",
                      "{{app}} @ {{instance}} in {{server}}"),
                     (f"gunicorn_app_db_connection_budget{{{S}}}", "{{app}} @ {{instance}} (budget)")],
                    decimals=0, no_value=f"No data: {NEEDS_POSTGRES}"), 12, 8))
    add((timeseries("DB connections / budget",
                    "Each app's database connections (its workers' sockets) over its budget; dashed: "
                    f"the alert threshold ({_pct(t, 'db_budget_critical')}). Above it connections "
                    "leak or the budget (--postgres.app-budget) is wrong. C5.",
                    [(f"sum by (job, instance, app) (gunicorn_worker_db_connections{{{S}}}) / on (job, instance, app) "
                      f"(gunicorn_app_db_connection_budget{{{S}}} > 0)", "{{app}} @ {{instance}}")],
                    unit="percentunit", threshold=alert_steps(t, "db_budget_critical"),
                    no_value=f"No budget: {NEEDS_BUDGET}"), 12, 8))
    add((timeseries("DB connections per worker vs threads",
                    "Database connections of each worker against its OS threads and its per-worker "
                    "budget. Far above the threads (eventlet/gevent with persistent connections): "
                    "C6; at pool_size + max_overflow: C4.",
                    [(f"gunicorn_worker_db_connections{{{S}}}", "{{app}} w{{worker}} connections"),
                     (f"gunicorn_worker_threads{{{S}}}", "{{app}} w{{worker}} threads"),
                     (f"max by (instance, app) (gunicorn_app_db_connection_budget_per_worker{{{S}}})",
                      "{{app}} per worker (budget)")],
                    decimals=0, no_value=f"No data: {NEEDS_BUDGET}"), 12, 8))
    add((timeseries("Unattributed and hidden connections",
                    "Client backends no gunicorn worker on this host holds (by reason), and "
                    f"sessions the exporter's role may not see (grant pg_monitor). It {NEEDS_POSTGRES}.",
                    [(f"gunicorn_postgres_unattributed_connections{{{H}}}", "{{server}} {{reason}}"),
                     (f"gunicorn_postgres_hidden_connections{{{H}}}", "{{server}} hidden")],
                    decimals=0, no_value=f"No data: {NEEDS_POSTGRES}"), 12, 8))
    add((timeseries("Oldest transaction and query",
                    "Longest idle-in-transaction session and longest-running query per database. "
                    f"It {NEEDS_POSTGRES}.",
                    [(f"gunicorn_postgres_oldest_idle_in_transaction_seconds{{{H}}}",
                      "{{server}}/{{datname}} idle in transaction"),
                     (f"gunicorn_postgres_oldest_query_seconds{{{H}}}", "{{server}}/{{datname}} query")],
                    unit="s", no_value=f"No data: {NEEDS_POSTGRES}"), 24, 8))

    add((row("Events"), 24, 1))
    add((timeseries("OOM kills",
                    "Processes the kernel OOM killer killed: workers and masters of each app "
                    "(kernel log), the app's memory cgroup counter, and the whole host. Per-app "
                    f"kills {NEEDS_OOM}; without either only the host counter is known. C7.",
                    [(_increase("gunicorn_worker_oom_kills_total"), "{{app}} @ {{instance}} workers"),
                     (_increase("gunicorn_master_oom_kills_total"), "{{app}} @ {{instance}} master"),
                     (_increase("gunicorn_cgroup_oom_kills_total"), "{{app}} @ {{instance}} cgroup"),
                     (_increase("gunicorn_host_oom_kills_total", H, "instance"), "{{instance}} host"),
                     (_increase("gunicorn_unattributed_oom_kills_total", H, "instance"), "{{instance}} not gunicorn")],
                    bars=True, decimals=0, no_value=f"No data: {NEEDS_OOM}"), 12, 8))
    add((timeseries("Worker timeouts",
                    "'WORKER TIMEOUT' lines (W5) and workers killed by SIGKILL (C7, or a timeout "
                    f"escalation) in the followed gunicorn error logs: it {NEEDS_LOGS}.",
                    [(_increase("gunicorn_log_events_total", f'{S}, signature="worker_timeout"'),
                      "{{app}} @ {{instance}} worker timeout"),
                     (_increase("gunicorn_log_events_total", f'{S}, signature="worker_sigkill"'),
                      "{{app}} @ {{instance}} SIGKILL")],
                    bars=True, decimals=0, no_value=f"No data: {NEEDS_LOGS}"), 12, 8))
    add((timeseries("Log signatures",
                    "Matched log lines per signature (docs/oom-and-logs.md): QueuePool exhausted "
                    "(C4), nginx connection refused (W4), EAGAIN on the upstream socket (C1/C2), "
                    "502/504, Heroku H12 (W8), worker life cycle. It needs --logs.file naming "
                    "the gunicorn error log (and the application's or nginx's logs for their "
                    "signatures).",
                    [(_increase("gunicorn_log_events_total", S, "instance, app, signature"),
                      "{{app}} {{signature}}")],
                    bars=True, decimals=0, no_value=f"No data: {NEEDS_LOGS}"), 24, 8))

    add((row("Exporter"), 24, 1))
    add((timeseries("Scrapes and collectors",
                    "up: Prometheus reached the exporter. collector success: 0 means that "
                    "collector's series are missing from the scrape (gunicorn_up included).",
                    [(f"up{{{H}}}", "{{instance}} up"),
                     (f"min by (instance, collector) (gunicorn_exporter_collector_success{{{H}}})",
                      "{{instance}} {{collector}}")],
                    max_=1, decimals=0), 12, 8))
    out[-1][0]["fieldConfig"]["defaults"]["thresholds"] = _threshold_steps(1, below_is_bad=True)
    add((timeseries("Collector duration",
                    "How long each collector's last run took (limit: --scrape.timeout).",
                    [(f"gunicorn_exporter_collector_duration_seconds{{{H}}}", "{{instance}} {{collector}}")],
                    unit="s"), 12, 8))
    add((timeseries("Missing privileges and sources",
                    "gunicorn processes whose /proc entries the exporter may not read (grant "
                    "CAP_SYS_PTRACE: docs/configuration.md#privileges), kernel log overruns, "
                    "log files not open and failed reads (the log series need --logs.file; the kmsg "
                    "overruns appear only while the oom collector reads /dev/kmsg, which needs CAP_SYSLOG "
                    "when kernel.dmesg_restrict=1; else it counts a memory cgroup per app).",
                    [(f"gunicorn_exporter_permission_denied_processes{{{H}}}", "{{instance}} permission denied"),
                     (_increase("gunicorn_exporter_kmsg_overruns_total", H, "instance"), "{{instance}} kmsg overruns"),
                     (f"1 - gunicorn_log_file_open{{{H}}}", "{{instance}} not open: {{file}}"),
                     (_increase("gunicorn_log_read_errors_total", H, "instance, file"), "{{instance}} read errors: {{file}}")],
                    decimals=0), 12, 8))
    add((timeseries("Exporter process",
                    "The exporter's own memory and CPU.",
                    [(f"process_resident_memory_bytes{{{H}}}", "{{instance}} RSS"),
                     (f"rate(process_cpu_seconds_total{{{H}}}[$__rate_interval])", "{{instance}} CPU (cores)")],
                    unit="bytes"), 12, 8))
    cpu = out[-1][0]
    cpu["fieldConfig"]["overrides"].append({
        "matcher": {"id": "byRegexp", "options": ".*CPU \\(cores\\)$"},
        "properties": [{"id": "unit", "value": "percentunit"},
                       {"id": "custom.axisPlacement", "value": "right"}]})
    add((table("Data sources in use",
               "Where socket tables (netlink / procfs) and OOM kills come from (kmsg: per-kill "
               "records, needs CAP_SYSLOG when kernel.dmesg_restrict=1; cgroup: a memory cgroup per "
               "app; vmstat: the host counter only), and the exporter's version.",
               f'label_replace(gunicorn_exporter_socket_table_info{{{H}}}, "kind", "socket table", "", "")'
               f' or label_replace(gunicorn_oom_source_info{{{H}}}, "kind", "oom", "", "")'
               f' or label_replace(gunicorn_exporter_build_info{{{H}}}, "kind", "exporter", "", "")'), 24, 6))
    return out


def annotations() -> list[dict]:
    def ann(name, expr, title, text, color):
        return {"name": name, "datasource": DS, "enable": True, "hide": False,
                "iconColor": color, "expr": expr, "step": "1m", "titleFormat": title,
                "textFormat": text, "tagKeys": "app,instance", "useValueForTime": False}

    return [
        {"builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"},
         "enable": True, "hide": True, "iconColor": "rgba(0, 211, 255, 1)",
         "name": "Annotations & Alerts", "type": "dashboard"},
        ann("OOM kills", f"sum by (instance, app) (increase(gunicorn_worker_oom_kills_total{{{S}}}[2m])"
            f" + increase(gunicorn_master_oom_kills_total{{{S}}}[2m])) > 0",
            "OOM kill", "{{app}} on {{instance}}: the kernel OOM killer killed a gunicorn process (C7)", "red"),
        ann("Worker timeouts", f'sum by (instance, app) (increase(gunicorn_log_events_total{{{S}, '
            f'signature="worker_timeout"}}[2m])) > 0',
            "WORKER TIMEOUT", "{{app}} on {{instance}}: a worker was killed for exceeding --timeout (W5)", "orange"),
        ann("Error log signatures", f'sum by (instance, app, signature) (increase(gunicorn_log_events_total{{{S}, '
            f'signature!~"worker_timeout|worker_boot|worker_exiting"}}[2m])) > 0',
            "log: {{signature}}", "{{app}} on {{instance}}: {{signature}}", "purple"),
        ann("Master restarts", f"changes(gunicorn_master_start_time_seconds{{{S}}}[2m]) > 0",
            "master restarted", "{{app}} on {{instance}}: a new gunicorn master (restart or USR2 upgrade)", "blue"),
    ]


def variables() -> list[dict]:
    def query_var(name, label, query):
        return {"name": name, "label": label, "type": "query", "datasource": DS,
                "query": {"query": query, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
                "definition": query, "refresh": 2, "includeAll": True, "multi": True,
                "allValue": ".+", "sort": 1, "current": {}, "options": [], "hide": 0,
                "regex": "", "skipUrlSync": False}

    return [
        {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
         "current": {}, "options": [], "hide": 0, "refresh": 1, "regex": "",
         "includeAll": False, "multi": False, "skipUrlSync": False},
        query_var("job", "Job", "label_values(gunicorn_up, job)"),
        query_var("instance", "Instance", 'label_values(gunicorn_up{job=~"$job"}, instance)'),
        query_var("app", "App", 'label_values(gunicorn_up{job=~"$job", instance=~"$instance"}, app)'),
    ]


def layout(items: list[tuple[dict, int, int]]) -> list[dict]:
    """Give every panel an id and a gridPos: left to right, wrapping at 24 columns."""
    out, x, y, row_h = [], 0, 0, 0
    for i, (p, w, h) in enumerate(items, start=1):
        if p["type"] == "row" or x + w > 24:
            x, y, row_h = 0, y + row_h, 0
        p = {"id": i, "gridPos": {"h": h, "w": w, "x": x, "y": y}, **p}
        out.append(p)
        x += w
        row_h = max(row_h, h)
        if p["type"] == "row":
            x, y, row_h = 0, y + h, 0
    return out


def dashboard(alerts_dir: Path = ALERTS_DIR) -> dict:
    t, _source = thresholds(alerts_dir)
    return {
        "uid": UID,
        "title": "gunicorn",
        "description": "gunicorn-exporter: saturation, workers, database, events and the "
                       "exporter's health. Generated by grafana/generate.py; thresholds are the "
                       "alert thresholds of alerts/*.rules.yml.",
        "tags": ["gunicorn", "gunicorn-exporter", "prometheus"],
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "editable": True,
        "graphTooltip": 1,
        "fiscalYearStartMonth": 0,
        "liveNow": False,
        "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"},
        "timepicker": {},
        "timezone": "browser",
        "weekStart": "",
        "links": [],
        "annotations": {"list": annotations()},
        "templating": {"list": variables()},
        "panels": layout(panels(t)),
    }


def render(alerts_dir: Path = ALERTS_DIR) -> str:
    return json.dumps(dashboard(alerts_dir), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if the dashboard is out of date")
    args = ap.parse_args(argv)
    text = render()
    if args.check:
        if not OUT.exists() or OUT.read_text() != text:
            print(f"{OUT.relative_to(ROOT)} is out of date: run python grafana/generate.py",
                  file=sys.stderr)
            return 1
        return 0
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(text)
    _t, source = thresholds()
    for key, value in _t.items():
        print(f"{key} = {value:g} from {source[key]}")
    print(f"wrote {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
