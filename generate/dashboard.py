"""The gunicorn-exporter dashboard, grafana/dashboards/gunicorn.json: its Overview row,
the order of the rows (the others are in generate/rows.py), variables and annotations.

    python -m generate dashboard            # rewrite the dashboard
    python -m generate dashboard --check    # exit 1 if the file is not what this writes

The dashboard is generated so that every panel has the same datasource, variables and
style, and so that its threshold lines are the alert thresholds (generate/panels.py's
`thresholds`). tests/test_grafana.py fails when the committed JSON differs from what
this writes from the current alerts, and when a threshold drawn here does not appear in
its alert's expression in the rule file, so after changing an alert threshold generate
again.

The Overview row shows what the alerts see, per app: it reads the recording rules
(app:gunicorn_workers_busy:ratio, app:gunicorn_requests_waiting:sum, ...) and the
ALERTS / ALERTS_FOR_STATE series of alerts/gunicorn.rules.yml, so those rules must be
loaded in the Prometheus the dashboard reads. Panels whose series need an optional
collector or the rules say so in their `noValue` text (NEEDS_* in generate/panels.py).
"""

from __future__ import annotations

import json
from pathlib import Path

from generate import causes, rows, workers
from generate.output import ROOT
from generate.panels import (DS, NEEDS_RULES, S, Panel, alert_steps, coloured, column, layout,
                             merged_table, pct, row, stat, table, thresholds, threshold_steps)
from generate.rules import CONFIG

OUTPUT = ROOT / "grafana" / "dashboards" / "gunicorn.json"
UID = "gunicorn-exporter"
SCHEMA_VERSION = 39
UP_MAP = [{"type": "value", "options": {"0": {"text": "DOWN", "color": "red", "index": 0},
                                        "1": {"text": "UP", "color": "green", "index": 1}}}]


def _apps_table(t: dict[str, float]) -> Panel:
    """One row per app: what the alerts see (their recording rules), coloured at their
    thresholds."""
    per_app = "max by (job, instance, app) "
    busy_steps = alert_steps(t, "busy_warning", "busy_critical")
    return merged_table(
        "Apps: what is saturated",
        "One row per app (never a sum over apps): is its master up, workers alive and "
        "configured (--workers), the busy ratio now and its worst in the dashboard's time "
        "range, requests waiting (accept queue + inside gthread workers, "
        "app:gunicorn_requests_waiting:sum), the fullest listener's accept queue, DB "
        "connections / budget, and when the master started. Cells are coloured at the alert "
        f"thresholds ({pct(t, 'busy_warning', 'busy_critical', 'queue_warning', 'queue_critical', 'db_budget_critical')}); "
        "Waiting is orange as soon as anything waits. The ratio columns read the recording "
        f"rules the alerts read: they {NEEDS_RULES}. DB budget needs the postgres collector "
        "(on by default; budgets from --postgres.app-budget). C1, C2, C5, W2, W4.",
        ["instance", "app"],
        [("Up", per_app + f"(gunicorn_up{{{S}}})",
          [{"id": "mappings", "value": UP_MAP}] + coloured(threshold_steps(1, below_is_bad=True))),
         ("Workers", per_app + f"(gunicorn_workers{{{S}}})", [{"id": "decimals", "value": 0}]),
         ("Desired", per_app + f"(gunicorn_workers_desired{{{S}}})", [{"id": "decimals", "value": 0}]),
         ("Busy now", per_app + f"(app:gunicorn_workers_busy:ratio{{{S}}})",
          coloured(busy_steps, "percentunit")),
         ("Busy max", per_app + f"(max_over_time(app:gunicorn_workers_busy:ratio{{{S}}}[$__range]))",
          coloured(busy_steps, "percentunit")),
         ("Waiting", per_app + f"(app:gunicorn_requests_waiting:sum{{{S}}})",
          coloured({"mode": "absolute", "steps": [{"color": "green", "value": None},
                                                   {"color": "orange", "value": 1}]})),
         ("Queue fill", per_app + f"(listener:gunicorn_listener_queue_fill:ratio{{{S}}})",
          coloured(alert_steps(t, "queue_warning", "queue_critical"), "percentunit")),
         ("DB budget", per_app + f"(app:gunicorn_db_connection_budget:ratio{{{S}}})",
          coloured(alert_steps(t, "db_budget_critical"), "percentunit")),
         ("Master started", per_app + f"(gunicorn_master_start_time_seconds{{{S}}}) * 1000",
          [{"id": "unit", "value": "dateTimeFromNow"}])],
        sort_by="Busy max", no_value="-"), 24, 8


def _busy_ratio(t: dict[str, float]) -> Panel:
    return stat("Busy ratio per app",
                "Busy workers / workers of each app over time (app:gunicorn_workers_busy:ratio, "
                "one sparkline per app, not a sum), coloured at the alert thresholds "
                f"({pct(t, 'busy_warning', 'busy_critical')}; the alerts average it over their "
                "window, and the critical one also needs requests waiting). C1, W1, W2, W6.",
                f"app:gunicorn_workers_busy:ratio{{{S}}}", "{{app}} @ {{instance}}",
                unit="percentunit", steps=alert_steps(t, "busy_warning", "busy_critical"),
                sparkline=True, max_=1, no_value=f"No busy ratio: {NEEDS_RULES}"), 12, 7


def _firing_alerts() -> Panel:
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
        column("Active for", [{"id": "unit", "value": "dtdurations"}]),
        column("severity", [
            {"id": "mappings", "value": [{"type": "value", "options": {
                "critical": {"color": "red", "index": 0}, "warning": {"color": "orange", "index": 1}}}]},
            {"id": "custom.cellOptions", "value": {"type": "color-text"}}])]
    firing["options"]["sortBy"] = [{"displayName": "Active for", "desc": True}]
    return firing, 12, 7


def _advice() -> Panel:
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
    advice["fieldConfig"]["overrides"] = [column("severity", [
        {"id": "mappings", "value": [{"type": "value", "options": {
            "critical": {"color": "red", "index": 0}, "warning": {"color": "orange", "index": 1}}}]},
        {"id": "custom.cellOptions", "value": {"type": "color-text"}}])]
    advice["options"]["sortBy"] = [{"displayName": "severity", "desc": False}]
    return advice, 24, 6


def overview(t: dict[str, float]) -> list[Panel]:
    """What the alerts see, app by app, the alerts firing and the doctor's advice."""
    return [_apps_table(t), _busy_ratio(t), _firing_alerts(), _advice()]


# The rows in order, with the function that makes each one's panels.
ROWS = (("Overview", overview), ("Saturation", rows.saturation), ("Why busy", causes.why_busy),
        ("Requests", rows.requests),
        ("Workers", workers.workers), ("Database", rows.database), ("Events", rows.events),
        ("Exporter", rows.exporter))


def panels(t: dict[str, float]) -> list[Panel]:
    """(panel, width, height) in reading order; rows take the full width."""
    return [item for title, make in ROWS for item in [(row(title), 24, 1), *make(t)]]


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


def dashboard(config: Path = CONFIG) -> dict:
    t, _source = thresholds(config)
    return {
        "uid": UID,
        "title": "gunicorn",
        "description": "gunicorn-exporter: saturation, workers, database, events and the "
                       "exporter's health. Generated by `python -m generate dashboard`; thresholds are the "
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


def render(config: Path = CONFIG) -> str:
    return json.dumps(dashboard(config), indent=2, ensure_ascii=False) + "\n"
