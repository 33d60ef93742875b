"""What the dashboard's panels are made of: its vocabulary (selectors, the `noValue`
texts, the alert thresholds it draws) and Grafana's panel kinds as JSON (time series,
stat, table, merged table, row) with their layout.

The threshold lines are the alert thresholds: `thresholds()` reads them from
alerts/config.toml, the tunables generate/rules.py renders alerts/gunicorn.rules.yml
from, or, for a threshold built into an alert's expression, from that alert's `fixed`
thresholds in generate/alerts.py (THRESHOLDS names the alert and parameter of each; it
states no value, and a missing one is an error).
"""

from __future__ import annotations

from pathlib import Path

from generate.alerts import fixed_thresholds
from generate.rules import CONFIG, load_config

Panel = tuple[dict, int, int]   # (panel, width, height) in reading order

DS = {"type": "prometheus", "uid": "${datasource}"}

# Selectors: every gunicorn_* series of an app, and host/exporter series (no app label).
S = 'job=~"$job", instance=~"$instance", app=~"$app"'
H = 'job=~"$job", instance=~"$instance"'

# Each threshold the dashboard draws: (alert, its parameter, colour). The value is the
# parameter's in alerts/config.toml, or the alert's `fixed` one in generate/alerts.py.
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
    "queue_p90_warning": ("GunicornRequestQueueHigh", "p90_seconds", "orange"),
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


def thresholds(config: Path = CONFIG) -> tuple[dict[str, float], dict[str, str]]:
    """(threshold values, where each came from) from the alerts' tunables `config`
    (alerts/config.toml) and the thresholds generate/alerts.py fixes in an expression.
    A missing one is an error."""
    tunables = load_config(config)
    fixed = fixed_thresholds()
    values, source, missing = {}, {}, []
    for key, (alert, param, _colour) in THRESHOLDS.items():
        if param in tunables.get(alert, {}):
            values[key], source[key] = float(tunables[alert][param]), f"alerts/config.toml [{alert}] {param}"
        elif param in fixed.get(alert, {}):
            values[key], source[key] = float(fixed[alert][param]), f"generate/alerts.py {alert} (fixed in its expression)"
        else:
            missing.append(f"{key}: [{alert}] {param}")
    if missing:
        raise SystemExit("generate/panels.py: thresholds in neither alerts/config.toml nor "
                         "generate/alerts.py: " + ", ".join(missing))
    return values, source


def alert_steps(t: dict[str, float], *keys: str) -> dict:
    """Threshold steps at the alert thresholds `keys` (orange = warning, red = critical)."""
    steps = [{"color": "green", "value": None}]
    for key in sorted(keys, key=lambda k: t[k]):
        steps.append({"color": THRESHOLDS[key][2], "value": t[key]})
    return {"mode": "absolute", "steps": steps}


def pct(t: dict[str, float], *keys: str) -> str:
    """The thresholds `keys` for a description: 'GunicornWorkerPoolSaturated 0.8 / ...'."""
    return " / ".join(f"{THRESHOLDS[k][0]} {t[k]:g}" for k in keys)


def rate(metric: str, sel: str = S, by: str = "instance, app") -> str:
    """Per-second rate of a counter, summed `by` (per app by default)."""
    return f"sum by ({by}) (rate({metric}{{{sel}}}[$__rate_interval]))"


def increase(metric: str, sel: str = S, by: str = "instance, app") -> str:
    """What a counter grew by in each interval, summed `by` (per app by default)."""
    return f"sum by ({by}) (increase({metric}{{{sel}}}[$__rate_interval]))"


# ---------------------------------------------------------------------- panel kinds

LIMIT_RE = r".*\((limit|capacity|threshold|budget)\)$"


def target(expr: str, legend: str = "__auto", ref: str = "A", *, instant: bool = False,
           fmt: str = "time_series") -> dict:
    return {"datasource": DS, "refId": ref, "expr": expr, "legendFormat": legend,
            "range": not instant, "instant": instant, "format": fmt, "editorMode": "code"}


def _targets(pairs) -> list[dict]:
    return [target(expr, legend, chr(ord("A") + i)) for i, (expr, legend) in enumerate(pairs)]


def threshold_steps(value: float | None, *, below_is_bad: bool = False) -> dict:
    if value is None:
        return {"mode": "absolute", "steps": [{"color": "green", "value": None}]}
    if below_is_bad:
        return {"mode": "absolute", "steps": [{"color": "red", "value": None},
                                              {"color": "green", "value": value}]}
    return {"mode": "absolute", "steps": [{"color": "green", "value": None},
                                          {"color": "red", "value": value}]}


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
                "custom": custom, "thresholds": threshold or threshold_steps(None)}
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
                "thresholds": steps or threshold_steps(None), "color": {"mode": "thresholds"}}
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
    defaults = {"custom": {"align": "auto"}, "thresholds": threshold_steps(None)}
    if no_value is not None:
        defaults["noValue"] = no_value
    return {"type": "table", "title": title, "description": description, "datasource": DS,
            "targets": [target(expr, "", instant=True, fmt="table")],
            "fieldConfig": {"defaults": defaults, "overrides": []},
            "transformations": [{"id": "organize", "options": {
                "excludeByName": {"Time": True, "Value": True, "__name__": True}}}],
            "options": {"showHeader": True, "cellHeight": "sm"}}


def column(name: str, props: list[dict]) -> dict:
    return {"matcher": {"id": "byName", "options": name}, "properties": props}


def coloured(steps: dict, unit: str = "short", decimals: int | None = 0) -> list[dict]:
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
                "thresholds": threshold_steps(None)}
    if no_value is not None:
        defaults["noValue"] = no_value
    panel = {"type": "table", "title": title, "description": description, "datasource": DS,
             "targets": targets,
             "fieldConfig": {"defaults": defaults,
                             "overrides": [column(name, props) for name, _e, props in columns if props]},
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
