"""grafana/dashboards/gunicorn.json: current schema, parseable PromQL, only real metrics.

* the JSON is what grafana/generate.py writes from the current alerts/config.toml, so
  threshold lines are the alert thresholds, and each such number appears in its alert's
  expression in alerts/gunicorn.rules.yml;
* every PromQL expression (panel targets, annotations, the selectors of the variable
  queries) parses: promtool checks them as one recording rule each, after $variables and
  $__rate_interval are replaced with literal values;
* every metric an expression reads is in docs/metrics.md (or is Prometheus' own `up`),
  and the gunicorn core families it reads appear on a live /metrics of the exporter
  watching a real gunicorn.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import require
from tests.harness import free_port, poll, running_exporter, stop_process

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "grafana" / "dashboards" / "gunicorn.json"
PROVISIONING = ROOT / "grafana" / "provisioning"
METRICS_DOC = ROOT / "docs" / "metrics.md"
RULES = ROOT / "alerts" / "gunicorn.rules.yml"

# Metrics the dashboard may read that the exporter does not serve: Prometheus makes them.
PROMETHEUS_OWN = {"up"}
# Sections of docs/metrics.md whose families every exporter with the gunicorn and netstat
# collectors serves (the others need Postgres, OOM kills or log files).
CORE_SECTIONS = ("App", "Worker", "Listener", "Host", "Exporter self", "Process")

_spec = importlib.util.spec_from_file_location("grafana_generate", ROOT / "grafana" / "generate.py")
generate = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(generate)


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
    # every expression filters on the variables (host series have no app label)
    for where, expr in expressions(d):
        if where.startswith("variable"):
            continue
        for sel in re.findall(r"[a-z_:]+\{([^}]*)\}", expr):
            assert 'job=~"$job"' in sel and 'instance=~"$instance"' in sel, f"{where}: {expr}"


def test_dashboard_is_what_the_generator_writes():
    assert DASHBOARD.read_text() == generate.render(), \
        "grafana/dashboards/gunicorn.json is stale: run python grafana/generate.py"


def test_thresholds_are_the_alert_thresholds():
    values, source = generate.thresholds()
    d = dashboard()
    drawn = {s["value"] for p in panels(d) if p["type"] != "row"
             for s in p.get("fieldConfig", {}).get("defaults", {}).get("thresholds", {}).get("steps", [])
             if s["value"] is not None}
    for key, value in values.items():
        assert value in drawn, f"threshold {key}={value} is drawn nowhere"
    if not RULES.exists():
        return  # alerts not written yet: the dashboard uses generate.THRESHOLDS' values
    rules = [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
    alerts = {r["alert"]: " ".join(str(r["expr"]).split()) for r in rules if "alert" in r}
    for key, (alert, _param, _default, _colour) in generate.THRESHOLDS.items():
        assert alert in alerts, f"{key}: alert {alert} is not in {RULES.name}; update grafana/generate.py"
        number = re.escape(f"{values[key]:g}")
        assert re.search(r"[<>]=?\s*" + number + r"(?![\d.])", alerts[alert]), \
            f"{key}: {values[key]:g} ({source[key]}) is not the threshold of {alert}: {alerts[alert]}"


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
    for where, expr in expressions(dashboard()):
        for name in metric_names(expr):
            assert name in documented or name in PROMETHEUS_OWN, \
                f"{where} reads {name}, which docs/metrics.md does not list: {expr}"


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
    core = {n for n in read if documented.get(n) in CORE_SECTIONS}
    assert len(core) > 20
    # gthread: the only class with every core series (worker_connections_limit included)
    gunicorn_factory(worker_class="gthread", threads=2, workers=2, bind="tcp", name="dash")
    with running_exporter(tmp_path, "--no-collector.postgres") as base:
        last: list = [sorted(core)]

        def all_there():
            text = _scrape(base + "/metrics")
            if text is None:
                return False
            seen = {s.name for f in text_string_to_metric_families(text) for s in f.samples
                    if s.labels.get("app", "dash") == "dash"}
            last[0] = sorted(core - seen)
            return not last[0]

        try:
            poll(all_there, 30, interval=0.2)
        except AssertionError:
            pytest.fail(f"core families the dashboard reads are missing from /metrics: {last[0]}")


# ---------------------------------------------------------------------------------------
# every query against a real Prometheus scraping the real exporter

# Panels that must show data for a saturated sync app (2 workers, 3 slow requests).
MUST_SHOW = ("Up", "Busy ratio", "Busy workers vs workers", "Accept queue length vs limit",
             "Accept queue fill", "Connections per worker", "Heartbeat age vs timeout",
             "Heartbeat age / timeout", "Resident memory per worker", "Open fds / fd limit",
             "CPU per worker", "Backlog vs somaxconn", "Scrapes and collectors",
             "Collector duration", "Exporter process")


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
def test_every_query_runs_on_a_real_prometheus(gunicorn_factory, tmp_path):
    prometheus = shutil.which("prometheus")
    require(prometheus is not None, "prometheus not installed (Debian package 'prometheus')")
    from tests.harness import SlowClients
    from urllib.parse import quote

    g = gunicorn_factory(worker_class="sync", workers=2, bind="tcp", name="dash", timeout=60)
    exp_port, prom_port = free_port(), free_port()
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{"job_name": "gunicorn", "scrape_timeout": "1s",
                            "static_configs": [{"targets": [f"127.0.0.1:{exp_port}"]}]}]}))
    procs: list = []
    try:
        with SlowClients(g, 3, seconds=40):
            _start([sys.executable, "-m", "exporter", "--web.listen-address", f"127.0.0.1:{exp_port}",
                    "--no-collector.postgres", "--logs.file", f"dash={g.log_path}"],
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
            poll(lambda: query('count_over_time(gunicorn_workers_busy{app="dash"}[5s]) >= 4 '
                               'and gunicorn_workers_busy{app="dash"} == 2')["data"]["result"],
                 30, interval=0.25, message="Prometheus did not collect the busy workers")
            empty = set()
            for where, expr in expressions(dashboard()):
                answer = query(expr)
                assert answer["status"] == "success", f"{where}: {answer} for {expr}"
                if not answer["data"]["result"]:
                    empty.add(where)
            shown = {p["title"] for p in panels(dashboard())
                     if p["type"] != "row" and any(
                         f"panel {p['id']} {p['title']!r} {t['refId']}" not in empty for t in p["targets"])}
            assert not set(MUST_SHOW) - shown, f"panels without data: {sorted(set(MUST_SHOW) - shown)}"
            for v in ("job", "instance", "app"):
                assert f"variable {v}" not in empty
            busy = query('gunicorn_workers_busy{app="dash"} / gunicorn_workers{app="dash"}')
            assert float(busy["data"]["result"][0]["value"][1]) == 1.0
    finally:
        for proc, log in reversed(procs):
            stop_process(proc, 15)
            log.close()
