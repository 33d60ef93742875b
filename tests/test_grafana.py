"""grafana/dashboards/gunicorn.json: current schema, parseable PromQL, only real metrics.

* the JSON is what `python -m generate dashboard` writes from the current
  alerts/config.toml, so threshold lines are the alert thresholds, and each such number
  appears in its alert's expression in alerts/gunicorn.rules.yml;
* every PromQL expression (panel targets, annotations, the selectors of the variable
  queries) parses: promtool checks them as one recording rule each, after $variables and
  $__rate_interval are replaced with literal values;
* every metric an expression reads is in docs/metrics.md (or is Prometheus' own `up`,
  `ALERTS`, `ALERTS_FOR_STATE`, or a recording rule of alerts/gunicorn.rules.yml whose
  expression reads only such metrics), and the gunicorn core families it reads appear on
  a live /metrics of the exporter watching a real gunicorn;
* the top row answers per app (no aggregation drops the `app` label there) and lists
  the firing alerts; a panel whose series need an optional collector (Postgres, logs,
  OOM kills) or the rule file says so in its noValue text or description;
* every query runs on a real Prometheus that scrapes the exporter watching a real,
  saturated gunicorn and evaluates alerts/gunicorn.rules.yml.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import urllib.request
import uuid
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

import generate.dashboard
import generate.panels
from tests.conftest import require
from tests.harness.procs import free_port, poll
from tests.harness.servers import running_exporter, stop_process

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "grafana" / "dashboards" / "gunicorn.json"
PROVISIONING = ROOT / "grafana" / "provisioning"
METRICS_DOC = ROOT / "docs" / "metrics.md"
RULES = ROOT / "alerts" / "gunicorn.rules.yml"

# Metrics the dashboard may read that the exporter does not serve: Prometheus makes them
# (`up` per target; ALERTS and ALERTS_FOR_STATE for the alerting rules it evaluates).
PROMETHEUS_OWN = {"up", "ALERTS", "ALERTS_FOR_STATE"}
# Labels an alert may lack (alerts per Postgres server, GunicornExporterAbsent): on ALERTS
# and ALERTS_FOR_STATE the variables' matchers also accept the empty value.
ALERT_SERIES = {"ALERTS", "ALERTS_FOR_STATE"}
# What a panel reading an optional collector's series must say it needs (in its noValue
# text or description): series name pattern -> the words that must appear.
OPTIONAL = [
    (re.compile(r"^gunicorn_postgres_"), ("--postgres.dsn",)),
    (re.compile(r"^gunicorn_log_"), ("--logs.file",)),
    (re.compile(r"oom"), ("CAP_SYSLOG", "memory cgroup")),
    (re.compile(r"^gunicorn_workers_all_busy"), ("sync",)),   # sync worker apps only
]
# Sections of docs/metrics.md whose families every exporter with the gunicorn and netstat
# collectors serves (the others need Postgres, OOM kills or log files).
CORE_SECTIONS = ("App", "Worker", "Listener", "Host", "Exporter self", "Process")
# The app name of the live tests: unique, because the exporter watches every gunicorn of
# the host, and two masters of one name (a concurrent run of this file) are renamed
# NAME@listener.
APP = f"dash-{uuid.uuid4().hex[:8]}"


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def panels(d: dict) -> list[dict]:
    out = []
    for p in d["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))  # collapsed rows keep their panels inside
    return out


def expressions(d: dict) -> list[tuple[str, str]]:
    """(where, PromQL) for every query of the dashboard."""
    out = []
    for p in panels(d):
        for t in p.get("targets", []):
            out.append((f"panel {p['id']} {p['title']!r} {t['refId']}", t["expr"]))
    for a in d["annotations"]["list"]:
        if a.get("expr"):
            out.append((f"annotation {a['name']!r}", a["expr"]))
    for v in d["templating"]["list"]:
        if v["type"] == "query":
            q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
            m = re.fullmatch(r"label_values\((.+),\s*[a-zA-Z_]\w*\)", q)
            assert m, f"variable {v['name']}: not label_values(selector, label): {q}"
            out.append((f"variable {v['name']}", m.group(1)))
    return out


def substitute(expr: str) -> str:
    """Grafana's variables as literal values, so that the expression is plain PromQL."""
    expr = expr.replace("$__rate_interval", "1m").replace("$__interval", "1m").replace("$__range", "1h")
    expr = re.sub(r"\$\{?(job|instance|app)\}?", ".+", expr)
    assert "$" not in expr, f"unknown variable left in {expr}"
    return expr


_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and",
             "or", "unless", "offset", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """Metric names an expression reads (identifiers that are not functions, keywords,
    label names, numbers or durations)."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    e = re.sub(r"\{[^}]*\}", " ", e)
    e = re.sub(r"\[[^\]]*\]", " ", e)
    e = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", e):
        if m.start() and (e[m.start() - 1].isdigit() or e[m.start() - 1] == "."):
            continue  # 1e3, 5m
        if e[m.end():].lstrip().startswith("(") or m.group(0).lower() in _KEYWORDS:
            continue
        names.add(m.group(0))
    return names


def recording_rules() -> dict[str, str]:
    """record name -> expression, from alerts/gunicorn.rules.yml."""
    if not RULES.exists():
        return {}
    return {r["record"]: str(r["expr"]) for g in yaml.safe_load(RULES.read_text())["groups"]
            for r in g["rules"] if "record" in r}


def top_row(d: dict) -> list[dict]:
    """The panels of the first row (the one seen without scrolling)."""
    assert d["panels"][0]["type"] == "row", "the dashboard does not start with a row"
    out = []
    for p in d["panels"][1:]:
        if p["type"] == "row":
            break
        out.append(p)
    return out + d["panels"][0].get("panels", [])


def panel_text(p: dict) -> str:
    return p.get("description", "") + "\n" + str(p.get("fieldConfig", {}).get("defaults", {}).get("noValue", ""))


_AGGREGATION = re.compile(r"\b(sum|avg|min|max|count|group|stddev|stdvar|topk|bottomk|quantile|count_values)"
                          r"\s*(?:(by|without)\s*\(([^)]*)\))?\s*\(")


def aggregations_dropping(expr: str, label: str) -> list[str]:
    """The aggregations of `expr` whose result has no `label` (a bare `sum(...)`, a `by`
    without it, a `without` with it; `sum(...) by (...)` counts as bare)."""
    out = []
    for m in _AGGREGATION.finditer(expr):
        kind, labels = m.group(2), {x.strip() for x in (m.group(3) or "").split(",")}
        if kind is None or (kind == "by") != (label in labels):
            out.append(m.group(0))
    return out


def documented_metrics() -> dict[str, str]:
    """metric name -> the docs/metrics.md section (## heading) whose table lists it."""
    out, section = {}, None
    for line in METRICS_DOC.read_text().splitlines():
        if line.startswith("## "):
            section = line[3:].split(" (")[0].strip()
        m = re.match(r"\|\s*`([a-z_:][a-z0-9_:]*)`\s*\|", line)
        if m and section:
            out[m.group(1)] = section
    return out


def test_metric_name_extraction():
    assert metric_names('sum by (instance, app) (rate(a_total{x="y"}[$__rate_interval])) '
                        '/ on (job) group_left () (b > 0.8) or 1e3 * c offset 5m') == {"a_total", "b", "c"}
    assert metric_names('time() - (ALERTS_FOR_STATE{a="b"} and ignoring (alertstate) ALERTS{c="d"}) '
                        '+ max_over_time(app:x:ratio{e="f"}[$__range])') == {"ALERTS_FOR_STATE", "ALERTS", "app:x:ratio"}


def test_aggregation_check():
    assert aggregations_dropping("max by (job, instance, app) (max_over_time(x[1m]))", "app") == []
    assert aggregations_dropping("sum without (listener) (x)", "app") == []
    assert aggregations_dropping("sum(x) / sum(y)", "app") == ["sum(", "sum("]
    assert aggregations_dropping("sum by (instance) (x)", "app") == ["sum by (instance) ("]
    assert aggregations_dropping("max without (app) (x)", "app") == ["max without (app) ("]


# ---------------------------------------------------------------------------------------


def test_dashboard_is_current_schema_and_complete():
    d = dashboard()
    assert d["schemaVersion"] >= 39
    assert d["uid"] and d["title"]
    names = {v["name"]: v for v in d["templating"]["list"]}
    assert {"datasource", "job", "instance", "app"} <= set(names)
    assert names["datasource"]["type"] == "datasource" and names["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in panels(d)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    rows = [p["title"] for p in d["panels"] if p["type"] == "row"]
    for wanted in ("Saturation", "Workers", "Database", "Events", "Exporter"):
        assert wanted in rows, f"no {wanted} row"
    for p in panels(d):
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24 and g["h"] > 0, p["title"]
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p["targets"], p["title"]
        assert p.get("description"), f"panel {p['title']!r} has no description"
        for t in p["targets"]:
            assert t["datasource"] == p["datasource"]
        if p["type"] in ("timeseries", "stat"):
            assert p["fieldConfig"]["defaults"].get("unit"), f"panel {p['title']!r} has no unit"
    # events drawn as annotations
    ann = {a["name"] for a in d["annotations"]["list"]}
    assert {"OOM kills", "Worker timeouts", "Error log signatures"} <= ann
    # every expression filters on the variables (host series have no app label; alerts
    # may have neither app nor instance, so there the empty value passes too)
    for where, expr in expressions(d):
        if where.startswith("variable"):
            continue
        selectors = re.findall(r"([A-Za-z_:][A-Za-z0-9_:]*)\{([^}]*)\}", expr)
        assert selectors or "{" not in expr, f"{where}: a selector without a metric name: {expr}"
        for name, sel in selectors:
            empty_ok = "|" if name in ALERT_SERIES else ""
            assert f'job=~"$job{empty_ok}"' in sel and f'instance=~"$instance{empty_ok}"' in sel, \
                f"{where}: {name}{{{sel}}} does not filter on $job and $instance: {expr}"
            if name in ALERT_SERIES:
                assert 'app=~"$app|"' in sel and 'alertname=~"Gunicorn.*"' in sel, f"{where}: {expr}"


def test_dashboard_is_what_the_generator_writes():
    assert DASHBOARD.read_text() == generate.dashboard.render(), \
        "grafana/dashboards/gunicorn.json is stale: run python -m generate dashboard"


def test_thresholds_are_the_alert_thresholds():
    values, source = generate.panels.thresholds()
    d = dashboard()
    drawn: dict[float, set[str]] = {}  # step value -> panels (and table columns) drawing it
    for p in panels(d):
        if p["type"] == "row":
            continue
        field_config = p.get("fieldConfig", {})
        step_sets = [(p["title"], field_config.get("defaults", {}).get("thresholds", {}))]
        step_sets += [(f"{p['title']} / {o['matcher']['options']}", prop["value"])
                      for o in field_config.get("overrides", []) for prop in o["properties"]
                      if prop["id"] == "thresholds"]
        for where, steps in step_sets:
            for s in steps.get("steps", []):
                if s["value"] is not None:
                    drawn.setdefault(s["value"], set()).add(where)
    for key, value in values.items():
        assert value in drawn, f"threshold {key}={value} is drawn nowhere"
    # every other step is an alert threshold too; 1 alone may also mean "up" or "any"
    stray = {v: w for v, w in drawn.items() if v not in set(values.values()) | {1}}
    assert not stray, f"thresholds drawn that are no alert threshold of generate.panels.THRESHOLDS: {stray}"
    # the rule file is committed (`python -m generate rules` writes it): its absence is a
    # defect, not a reason to skip the cross-check
    assert RULES.exists(), f"{RULES} is missing: run python -m generate rules"
    rules = [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
    alerts = {r["alert"]: " ".join(str(r["expr"]).split()) for r in rules if "alert" in r}
    for key, (alert, _param, _colour) in generate.panels.THRESHOLDS.items():
        assert alert in alerts, f"{key}: alert {alert} is not in {RULES.name}; update generate/panels.py"
        number = re.escape(f"{values[key]:g}")
        assert re.search(r"[<>]=?\s*" + number + r"(?![\d.])", alerts[alert]), \
            f"{key}: {values[key]:g} ({source[key]}) is not the threshold of {alert}: {alerts[alert]}"


def test_a_threshold_missing_from_the_alerts_is_an_error(tmp_path):
    """THRESHOLDS states no values: one missing from alerts/config.toml (and not fixed in
    generate/alerts.py) stops the generator instead of falling back to a number of its own."""
    config = (ROOT / "alerts" / "config.toml").read_text()
    assert "\nfd_ratio = 0.8" in config
    (tmp_path / "config.toml").write_text(config.replace("\nfd_ratio = 0.8", "\n"))
    with pytest.raises(SystemExit, match=r"fd_warning: \[GunicornWorkerFileDescriptorsHigh\] fd_ratio"):
        generate.panels.thresholds(tmp_path / "config.toml")
    _values, source = generate.panels.thresholds()
    assert "generate/alerts.py" in source["db_budget_critical"]  # fixed in its expression


@pytest.mark.slow
def test_every_expression_parses_with_promtool(tmp_path):
    require(shutil.which("promtool") is not None,
            "promtool not installed (Debian package 'prometheus'): cannot parse the dashboard's PromQL")
    exprs = expressions(dashboard())
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:expr_{i}", "expr": substitute(e)} for i, (_w, e) in enumerate(exprs)]}]}
    path = tmp_path / "dashboard.rules.yml"
    path.write_text(yaml.safe_dump(rules, sort_keys=False))
    res = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr + "\n" + "\n".join(
        f"dashboard:expr_{i} = {w}" for i, (w, _e) in enumerate(exprs))
    assert f"{len(exprs)} rules found" in res.stdout


def test_every_metric_is_documented():
    documented = documented_metrics()
    assert len(documented) > 40, "could not read the metric tables of docs/metrics.md"
    recorded = recording_rules()

    def check(name: str, where: str, expr: str, seen: tuple = ()):
        if name in recorded and name not in seen:
            # a recording rule of alerts/gunicorn.rules.yml: what it reads must be documented
            for inner in metric_names(recorded[name]):
                check(inner, f"{where} via the rule {name}", recorded[name], seen + (name,))
            return
        assert name in documented or name in PROMETHEUS_OWN, \
            f"{where} reads {name}, which neither docs/metrics.md nor {RULES.name} defines: {expr}"

    for where, expr in expressions(dashboard()):
        for name in metric_names(expr):
            check(name, where, expr)


def test_dashboard_covers_the_issue():
    """Saturation, workers, database and events: the families the issue asks for."""
    read = set().union(*(metric_names(e) for _w, e in expressions(dashboard())))
    for name in ("gunicorn_workers_busy", "gunicorn_workers", "gunicorn_listener_queue_length",
                 "gunicorn_listener_queue_max", "gunicorn_worker_connections",
                 "gunicorn_worker_heartbeat_age_seconds", "gunicorn_timeout_seconds",
                 "gunicorn_worker_resident_memory_bytes", "gunicorn_worker_open_fds",
                 "gunicorn_worker_max_fds", "gunicorn_postgres_connections",
                 "gunicorn_postgres_app_connections", "gunicorn_app_db_connection_budget",
                 "gunicorn_postgres_max_connections", "gunicorn_worker_oom_kills_total",
                 "gunicorn_log_events_total", "gunicorn_exporter_collector_success"):
        assert name in read, f"the dashboard does not show {name}"


def test_top_row_is_per_app():
    """One saturated app of five must not read 20%: nothing in the top row sums over apps,
    one table has a row per app with the saturation columns, and the busy ratio is drawn
    per app over time."""
    top = top_row(dashboard())
    assert top, "the top row is empty"
    for p in top:
        for t in p["targets"]:
            assert not aggregations_dropping(t["expr"], "app"), \
                f"top row panel {p['title']!r} aggregates the app away: {aggregations_dropping(t['expr'], 'app')} in {t['expr']}"
    per_app_tables = []
    for p in top:
        if p["type"] != "table" or len(p["targets"]) < 2:
            continue
        organize = [tr["options"] for tr in p.get("transformations", []) if tr["id"] == "organize"]
        excluded = set().union(*(o.get("excludeByName", {}) for o in organize)) if organize else set()
        if "app" in excluded or "instance" in excluded:
            continue
        assert any(tr["id"] == "merge" for tr in p["transformations"]), p["title"]
        # merged on their label columns: every query keeps the same ones
        clauses = {re.match(r"\s*\w+ by \(([^)]*)\)", t["expr"]).group(1) for t in p["targets"]
                   if re.match(r"\s*\w+ by \(", t["expr"])}
        assert len(clauses) == 1 and len(p["targets"]) == sum(
            bool(re.match(r"\s*\w+ by \(", t["expr"])) for t in p["targets"]), \
            f"{p['title']!r}: the merged queries must aggregate by the same labels: {clauses}"
        assert all(t["instant"] and t["format"] == "table" for t in p["targets"]), p["title"]
        per_app_tables.append(p)
    assert per_app_tables, "the top row has no table with one row per app"
    (status,) = per_app_tables
    read = set().union(*(metric_names(t["expr"]) for t in status["targets"]))
    for name in ("gunicorn_up", "gunicorn_workers", "gunicorn_workers_desired",
                 "app:gunicorn_workers_busy:ratio", "app:gunicorn_requests_waiting:sum",
                 "listener:gunicorn_listener_queue_fill:ratio", "app:gunicorn_db_connection_budget:ratio"):
        assert name in read, f"{status['title']!r} has no column reading {name}"
    coloured = {o["matcher"]["options"] for o in status["fieldConfig"]["overrides"]
                if any(prop["id"] == "thresholds" for prop in o["properties"])}
    assert len(coloured) >= 4, f"{status['title']!r}: too few columns coloured at thresholds: {coloured}"
    sparklines = [p for p in top if p["type"] in ("stat", "timeseries")
                  and any({"app:gunicorn_workers_busy:ratio", "gunicorn_workers_busy"} & metric_names(t["expr"])
                          and "{{app}}" in t["legendFormat"] and not t["instant"] for t in p["targets"])]
    assert sparklines, "the top row draws no busy ratio per app over time"
    for p in sparklines:
        if p["type"] == "stat":
            assert p["options"]["graphMode"] == "area", f"{p['title']!r} has no sparkline"


def test_top_row_lists_firing_alerts():
    top = top_row(dashboard())
    firing = [p for p in top if p["type"] == "table"
              and any("ALERTS" in metric_names(t["expr"]) for t in p["targets"])]
    assert firing, "the top row has no panel of firing alerts (ALERTS)"
    (p,) = firing
    (t,) = p["targets"]
    assert re.search(r'ALERTS\{[^}]*alertstate="firing"', t["expr"]), t["expr"]
    assert "ALERTS_FOR_STATE" in metric_names(t["expr"]) and "time()" in t["expr"], \
        f"{p['title']!r} does not say since when each alert is active: {t['expr']}"
    assert t["instant"] and t["format"] == "table"
    options = [tr["options"] for tr in p["transformations"] if tr["id"] == "organize"][0]
    for label in ("alertname", "severity", "app", "instance"):
        assert not options.get("excludeByName", {}).get(label), f"{p['title']!r} hides {label}"
    assert "Value" not in options.get("excludeByName", {}) and options["renameByName"]["Value"]


def test_panels_say_what_their_data_needs():
    """A panel that reads an optional collector's series, or the rules' series, says which
    flag (or privilege, or rule file) it needs instead of a bare "No data"."""
    checked = set()
    recorded = recording_rules()
    for p in panels(dashboard()):
        if p["type"] == "row":
            continue
        read = set().union(*(metric_names(t["expr"]) for t in p["targets"]))
        text = panel_text(p)
        for pattern, words in OPTIONAL:
            if any(pattern.search(n) for n in read):
                checked.add(pattern.pattern)
                for word in words:
                    assert word in text, f"panel {p['title']!r} reads {sorted(n for n in read if pattern.search(n))} " \
                                         f"but its noValue/description does not say it needs {word!r}"
        if read & (set(recorded) | ALERT_SERIES):
            checked.add("rules")
            assert "alerts/gunicorn.rules.yml" in text, \
                f"panel {p['title']!r} reads rule series {sorted(read & (set(recorded) | ALERT_SERIES))} " \
                "but does not say it needs alerts/gunicorn.rules.yml loaded"
    assert checked == {pattern.pattern for pattern, _w in OPTIONAL} | {"rules"}, checked
    # the panels that only an optional collector fills show why when empty
    for p in panels(dashboard()):
        if p["type"] == "row":
            continue
        read = set().union(*(metric_names(t["expr"]) for t in p["targets"]))
        only = [pattern for pattern, _w in OPTIONAL if read and all(pattern.search(n) for n in read)]
        if only:
            assert p["fieldConfig"]["defaults"].get("noValue"), f"panel {p['title']!r} has no noValue text"


def test_provisioning_points_at_the_dashboard():
    prov = yaml.safe_load((PROVISIONING / "dashboards" / "gunicorn-exporter.yml").read_text())
    assert prov["apiVersion"] == 1
    (provider,) = prov["providers"]
    assert provider["type"] == "file" and provider["options"]["path"].startswith("/")
    ds = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yml").read_text())
    assert ds["apiVersion"] == 1 and ds["datasources"][0]["type"] == "prometheus"


# ---------------------------------------------------------------------------------------


def _scrape(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.read().decode()
    except OSError:
        return None


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_core_metrics_it_reads_are_on_a_live_metrics_page(gunicorn_factory, tmp_path):
    documented = documented_metrics()
    read = set().union(*(metric_names(e) for _w, e in expressions(dashboard())))
    core = {n for n in read if documented.get(n) in CORE_SECTIONS
            and not any(pattern.search(n) for pattern, _w in OPTIONAL)}
    assert len(core) > 20
    # gthread: the only class with every core series (worker_connections_limit included)
    gunicorn_factory(worker_class="gthread", threads=2, workers=2, bind="tcp", name=APP)
    with running_exporter(tmp_path, "--no-collector.postgres") as base:
        last: list = [sorted(core)]

        def all_there():
            text = _scrape(base + "/metrics")
            if text is None:
                return False
            seen = {s.name for f in text_string_to_metric_families(text) for s in f.samples
                    if s.labels.get("app", APP) == APP}
            last[0] = sorted(core - seen)
            return not last[0]

        try:
            poll(all_there, 30, interval=0.2)
        except AssertionError:
            pytest.fail(f"core families the dashboard reads are missing from /metrics: {last[0]}")


# ---------------------------------------------------------------------------------------
# every query against a real Prometheus scraping the real exporter

# Panels that must show data for a saturated sync app (2 workers, 3 slow requests) on a
# Prometheus that evaluates alerts/gunicorn.rules.yml.
MUST_SHOW = ("Apps: what is saturated", "Busy ratio per app", "Firing alerts", "Busy ratio",
             "Busy workers vs workers", "Accept queue length vs limit", "Accept queue fill",
             "Dropped connections per listener", "Request age of busy sync workers / timeout",
             "Connections per worker", "Heartbeat age vs timeout", "Heartbeat age / timeout",
             "Resident memory per worker", "Open fds / fd limit", "CPU per worker",
             "Backlog vs somaxconn", "Apps", "Scrapes and collectors", "Collector duration",
             "Exporter process")


def _columns(p: dict) -> dict[str, str]:
    """column name -> query of a merged table."""
    rename = [tr["options"]["renameByName"] for tr in p["transformations"] if tr["id"] == "organize"][0]
    return {rename[f"Value #{t['refId']}"]: t["expr"] for t in p["targets"]}


def _get_json(url: str):
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read().decode())


def _start(argv, log_path, ready_url, what, procs):
    log = open(log_path, "wb")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    procs.append((proc, log))

    def ready():
        if proc.poll() is not None:
            pytest.fail(f"{what} exited: {log_path.read_text()[-3000:]}")
        return _scrape(ready_url) is not None
    poll(ready, 30, interval=0.1, message=f"{what} not ready")


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode", ["all", "none"])
def test_every_query_runs_on_a_real_prometheus(mode, gunicorn_factory, tmp_path):
    """Every query of the dashboard runs; the panels of MUST_SHOW show data in both
    --gunicorn.worker-series modes (in none, the per-worker panels draw their app-level
    series)."""
    prometheus = shutil.which("prometheus")
    require(prometheus is not None, "prometheus not installed (Debian package 'prometheus')")
    from tests.harness.clients import SlowClients
    from urllib.parse import quote

    g = gunicorn_factory(worker_class="sync", workers=2, bind="tcp", name=APP, timeout=60)
    exp_port, prom_port = free_port(), free_port()
    # the rule file as users load it: its selector (alerts/config.toml) is job="gunicorn"
    require(RULES.exists(), f"{RULES} not written: the top row reads its rules")
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [{"job_name": "gunicorn", "scrape_timeout": "1s",
                            "static_configs": [{"targets": [f"127.0.0.1:{exp_port}"]}]}]}))
    procs: list = []
    try:
        with SlowClients(g, 3, seconds=40):
            _start([sys.executable, "-m", "exporter", "--web.listen-address", f"127.0.0.1:{exp_port}",
                    "--no-collector.postgres", "--logs.file", f"{APP}={g.log_path}",
                    "--gunicorn.worker-series", mode],
                   tmp_path / "exporter.log", f"http://127.0.0.1:{exp_port}/-/healthy", "exporter", procs)
            prom = f"http://127.0.0.1:{prom_port}"
            _start([prometheus, f"--config.file={tmp_path / 'prometheus.yml'}",
                    f"--storage.tsdb.path={tmp_path / 'data'}",
                    f"--web.listen-address=127.0.0.1:{prom_port}"],
                   tmp_path / "prometheus.log", prom + "/-/ready", "prometheus", procs)

            def query(expr):
                expr = substitute(expr).replace("[1m]", "[5s]").replace("[2m]", "[5s]")
                return _get_json(f"{prom}/api/v1/query?query={quote(expr)}")

            # enough samples for rate() over 5 s, and the saturation visible
            poll(lambda: query(f'count_over_time(gunicorn_workers_busy{{app="{APP}"}}[5s]) >= 4 '
                               f'and gunicorn_workers_busy{{app="{APP}"}} == 2')["data"]["result"],
                 30, interval=0.25, message="Prometheus did not collect the busy workers")
            d = dashboard()
            top = {p["title"]: p for p in top_row(d)}
            # the saturated pool is an alert, and the firing-alerts panel lists it for the app
            (firing,) = top["Firing alerts"]["targets"]
            poll(lambda: any(r["metric"].get("app") == APP for r in query(firing["expr"])["data"]["result"]),
                 30, interval=0.25, message=f"no firing alert for app {APP}: {query('ALERTS')}")
            rows = [r for r in query(firing["expr"])["data"]["result"] if r["metric"].get("app") == APP]
            for r in rows:
                assert r["metric"]["alertname"].startswith("Gunicorn") and r["metric"]["severity"], r
                assert r["metric"]["instance"] == f"127.0.0.1:{exp_port}", r
                assert 0 <= float(r["value"][1]) < 120, f"active for {r['value'][1]} s: {r}"
            empty = set()
            for where, expr in expressions(d):
                answer = query(expr)
                assert answer["status"] == "success", f"{where}: {answer} for {expr}"
                if not answer["data"]["result"]:
                    empty.add(where)
            shown = {p["title"] for p in panels(d)
                     if p["type"] != "row" and any(
                         f"panel {p['id']} {p['title']!r} {t['refId']}" not in empty for t in p["targets"])}
            assert not set(MUST_SHOW) - shown, f"panels without data: {sorted(set(MUST_SHOW) - shown)}"
            for v in ("job", "instance", "app"):
                assert f"variable {v}" not in empty
            # the top row's per-app table: the saturated app's cells
            cells = {}
            for column, expr in _columns(top["Apps: what is saturated"]).items():
                result = [r for r in query(expr)["data"]["result"] if r["metric"].get("app") == APP]
                assert len(result) <= 1 and all(set(r["metric"]) == {"job", "instance", "app"} for r in result), \
                    f"column {column}: not one row per app: {result}"
                if result:
                    cells[column] = float(result[0]["value"][1])
            assert cells.get("Up") == 1 and cells.get("Workers") == 2 and cells.get("Desired") == 2, cells
            assert cells.get("Busy now") == 1 and cells.get("Busy max") == 1, cells
            assert cells.get("Waiting", 0) >= 1 and cells.get("Queue fill", 0) > 0, cells
            assert "DB budget" not in cells, cells  # --no-collector.postgres: no budget
            (spark,) = top["Busy ratio per app"]["targets"]
            assert [float(r["value"][1]) for r in query(spark["expr"])["data"]["result"]
                    if r["metric"].get("app") == APP] == [1.0]
            busy = query(f'gunicorn_workers_busy{{app="{APP}"}} / gunicorn_workers{{app="{APP}"}}')
            assert float(busy["data"]["result"][0]["value"][1]) == 1.0
    finally:
        for proc, log in reversed(procs):
            stop_process(proc, 15)
            log.close()
