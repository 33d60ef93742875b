"""The alerting rules in alerts/: generated file up to date, promtool-valid, unit-tested,
every insight marked **alert** covered and documented, and every metric a rule reads
exported by the real exporter watching a real gunicorn.

promtool is the Debian package `prometheus`; without it these tests skip (fail with CI=true).
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import urllib.request
from pathlib import Path

import pytest
import yaml
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from generate import alerts, recording, rules, ruletests
from generate.__main__ import main as generate_main
from tests.conftest import require
from tests.harness.clients import SlowClients
from tests.harness.procs import poll, unique_name
from tests.harness.servers import running_exporter

ROOT = Path(__file__).resolve().parent.parent
ALERTS = ROOT / "alerts"
RULES = ALERTS / "gunicorn.rules.yml"
RUNBOOKS = ROOT / "docs" / "runbooks.md"
FAILURE_MODES = ROOT / "docs" / "failure-modes.md"
UNIT_TESTS = sorted((ALERTS / "tests").glob("*.yml"))

# Failure mode IDs of docs/failure-modes.md marked **alert** (all critical and warning ones).
ALERT_INSIGHTS = ["C%d" % i for i in range(1, 8)] + ["W%d" % i for i in range(1, 12)]

# Metric families that only appear with a Postgres server to watch (--postgres.dsn), or
# with requests to count (gunicorn's statsd stream or an access log: tests/test_statsd.py);
# checked against exporter.metrics.render() of tests/test_docs.py's full snapshot.
NEEDS_POSTGRES = re.compile(r"^gunicorn_postgres_|^gunicorn_request")
# Series Prometheus itself makes; rules may read them though the exporter does not export them.
PROMETHEUS_SERIES = {"up"}


def promtool() -> str:
    path = shutil.which("promtool")
    require(path is not None, "promtool not installed (Debian package 'prometheus')")
    return path


# ---- the generated file ---------------------------------------------------------

def test_rule_file_is_generated_from_config():
    assert RULES.read_text() == rules.render(), (
        "alerts/gunicorn.rules.yml is stale: run .venv/bin/python -m generate rules")


def test_generate_check_finds_a_stale_file(tmp_path, capsys):
    """The one --check of `python -m generate`: 1 and the command to run while a file is
    missing or differs, 0 once it is what would be written; all three committed files
    are current."""
    out = tmp_path / "rules.yml"
    assert generate_main(["rules", "--check", "-o", str(out)]) == 1
    out.write_text(rules.render() + "# edited\n")
    assert generate_main(["rules", "--check", "-o", str(out)]) == 1
    assert "rules.yml is stale: run python -m generate rules" in capsys.readouterr().err
    assert generate_main(["rules", "-o", str(out)]) == 0
    assert out.read_text() == rules.render()
    assert generate_main(["rules", "--check", "-o", str(out)]) == 0
    with pytest.raises(SystemExit):   # the rule file's variants go with the rules only
        generate_main(["dashboard", "--for", "2s", "-o", str(out)])
    assert generate_main(["--check"]) == 0


def test_build_rejects_unknown_and_unused_config_keys():
    config = rules.load_config()
    config["GunicornDown"] = dict(config["GunicornDown"], treshold=3)
    with pytest.raises(rules.ConfigError, match="treshold"):
        rules.build_rules(config)
    config = rules.load_config()
    config["GunicornWorkerPoolSaturated"] = {"for": "15m", "severity": "warning", "window": "10m"}
    with pytest.raises(rules.ConfigError, match="busy_ratio"):
        rules.build_rules(config)
    config = rules.load_config()
    config["GunicornDown"] = dict(config["GunicornDown"], severity="page")
    with pytest.raises(rules.ConfigError, match="severity"):
        rules.build_rules(config)


def test_placeholders_are_template_ones_that_leave_prometheus_templating_alone():
    used: set = set()
    text = rules._substitute(
        "x{@{selector}} > @{busy_ratio} # @{busy_ratio_pct} {{ $labels.app }} {{ $value }} @@",
        {"busy_ratio": 0.8}, {"selector": 'job="g"'}, used, "test")
    assert text == 'x{job="g"} > 0.8 # 80% {{ $labels.app }} {{ $value }} @'
    assert used == {"busy_ratio"}
    with pytest.raises(rules.ConfigError, match="nope"):
        rules._substitute("@{nope}", {}, {}, set(), "test")
    with pytest.raises(rules.ConfigError, match="stray '@'"):
        rules._substitute("a @ b", {}, {}, set(), "test")
    # a threshold fixed in a rule's expression cannot also be set in config.toml
    config = rules.load_config()
    config["GunicornDBConnectionsOverBudget"] = dict(config["GunicornDBConnectionsOverBudget"],
                                                     budget_ratio=2)
    with pytest.raises(rules.ConfigError, match="budget_ratio"):
        rules.build_rules(config)


def test_for_override_changes_only_for():
    short = rules.render(for_override="2s")
    normal = rules.render()
    assert re.sub(r"\bfor: \S+", "for: X", short) == re.sub(r"\bfor: \S+", "for: X", normal)
    assert set(re.findall(r"\bfor: (\S+)", short)) == {"2s"}
    assert re.findall(r"keep_firing_for: \S+", short) == re.findall(r"keep_firing_for: \S+", normal)


@pytest.mark.slow
def test_promtool_check_rules():
    res = subprocess.run([promtool(), "check", "rules", str(RULES)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    n_alerts = len(alerts.alerts_table())
    assert "SUCCESS: %d rules found" % (n_alerts + len(recording.RECORDING_RULES)) in res.stdout


@pytest.mark.slow
@pytest.mark.parametrize("mode", ruletests.MODES)
def test_promtool_unit_tests(mode, tmp_path):
    """Every test of alerts/tests/ with its input series as --gunicorn.worker-series=MODE
    exposes them (generate/ruletests.py): the same alerts fire in both modes."""
    assert UNIT_TESTS, "no promtool unit tests in alerts/tests/"
    files = [f for f in ruletests.write(mode, tmp_path) if f.parent == tmp_path]
    assert len(files) == len(UNIT_TESTS)
    if mode == "none":
        assert not re.search(r'series: .*\bworker="', "".join(f.read_text() for f in files))
    res = subprocess.run([promtool(), "test", "rules", *map(str, files)],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.count("SUCCESS") == len(UNIT_TESTS), res.stdout


def test_every_alert_has_a_firing_and_a_silent_unit_test():
    text = "\n".join(p.read_text() for p in UNIT_TESTS)
    names = re.findall(r'^\s*- name: "([^"]+)"', text, re.M)
    tested = set(re.findall(r"^\s*alertname: (\w+)", text, re.M))
    for alert, _ in alerts.alerts_table():
        assert alert in tested, alert
        assert any(n.startswith(alert + " fires") for n in names), "%s: no firing case" % alert
        assert any(n.startswith(alert + " stays silent") for n in names), "%s: no silent case" % alert
    # and a firing case really expects the alert: an exp_labels line after its alertname
    for alert, _ in alerts.alerts_table():
        assert re.search(r"alertname: %s\n\s+exp_alerts:\n\s+- exp_labels: \{severity: "
                         % alert, text), "%s: no case expects it to fire" % alert


# ---- coverage and runbooks ----------------------------------------------------------

def _runbook_headings() -> set[str]:
    return set(re.findall(r"^#{2,3} (\w+)\s*$", RUNBOOKS.read_text(), re.M))


def test_every_alert_has_a_runbook_section():
    headings = _runbook_headings()
    urls = {r["alert"]: r["annotations"]["runbook_url"]
            for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"] if "alert" in r}
    for alert, _ in alerts.alerts_table():
        assert alert in headings, "docs/runbooks.md has no section '## %s'" % alert
        assert urls[alert].endswith("runbooks.md#%s" % alert.lower()), urls[alert]


def test_every_alert_insight_has_an_alert_and_a_row_in_the_coverage_table():
    covered = {i for _, ids in alerts.alerts_table() for i in ids.split()}
    missing = [i for i in ALERT_INSIGHTS if i not in covered]
    assert not missing, "insights without an alert: %s" % missing
    doc = RUNBOOKS.read_text()
    for insight in ALERT_INSIGHTS:
        row = re.search(r"^\| %s \|(.*)$" % insight, doc, re.M)
        assert row, "docs/runbooks.md coverage table has no row for %s" % insight
        for alert, ids in alerts.alerts_table():
            if insight in ids.split():
                assert alert in row.group(1), "%s row does not name %s" % (insight, alert)


def test_runbook_alert_list_matches_the_config():
    config = rules.load_config()
    rows = dict((m[0], m[1:]) for m in re.findall(
        r"^\| (Gunicorn\w+) \| (critical|warning) \| (\w+) \| (\w+|-) \| ([^|]*) \|$",
        RUNBOOKS.read_text(), re.M))
    for alert, ids in alerts.alerts_table():
        assert alert in rows, "docs/runbooks.md alert list misses %s" % alert
        severity, for_, keep, insights = rows[alert]
        assert (severity, for_, keep) == (config[alert]["severity"], config[alert]["for"],
                                          config[alert].get("keep_firing_for", "-")), alert
        assert all(i in insights.split() for i in ids.split()), alert


def test_failure_modes_file_marks_the_same_ids():
    # docs/failure-modes.md is part of the repository (the catalogue the alerts cite):
    # a missing file is a failure, not a skip.
    assert FAILURE_MODES.exists(), "docs/failure-modes.md is missing"
    marked = re.findall(r"^\| ([CWI]\d+) \|.*\*\*alert\*\*", FAILURE_MODES.read_text(), re.M)
    assert sorted(marked) == sorted(ALERT_INSIGHTS)


# ---- metric names -----------------------------------------------------------------

_STRIP = [
    re.compile(r'"(?:[^"\\]|\\.)*"'),                       # strings
    re.compile(r"\{[^}]*\}"),                                 # label matchers
    re.compile(r"\[[^\]]*\]"),                                # ranges, subqueries
    re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)"),
]
_KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left",
             "group_right", "bool", "offset", "inf", "nan"}
_IDENT = re.compile(r"(?<![\w:.])([A-Za-z_:][\w:]*)(\s*\()?")


def metric_names(expr: str) -> set[str]:
    """Names of the series an expression reads (functions, keywords, labels removed)."""
    for pattern in _STRIP:
        expr = pattern.sub(" ", expr)
    out = set()
    for name, call in _IDENT.findall(expr):
        if call or name.lower() in _KEYWORDS:
            continue
        out.add(name)
    return out


def test_metric_names_parser():
    assert metric_names(
        'sum without (state) (gunicorn_worker_connections{job="g", state="active"})\n'
        '  / ignoring (worker) group_left () (gunicorn_timeout_seconds{job="g"} > 0)'
        ' and rate(gunicorn_host_listen_overflows_total[5m]) > 0.5 or app:x:ratio >= 1'
    ) == {"gunicorn_worker_connections", "gunicorn_timeout_seconds",
          "gunicorn_host_listen_overflows_total", "app:x:ratio"}


def rule_metric_names() -> set[str]:
    """Exporter series read by any rule (recorded series excluded: they are checked to
    be defined in the file)."""
    groups = rules.build_rules(rules.load_config())
    recorded = {r["record"] for _, members in groups for r in members if "record" in r}
    used = set()
    for _, members in groups:
        for r in members:
            used |= metric_names(r["expr"])
    undefined = {n for n in used if ":" in n} - recorded
    assert not undefined, "rules read recording rules that do not exist: %s" % undefined
    return {n for n in used if ":" not in n}


def _sample_names(text: str) -> set[str]:
    return {s.name for fam in text_string_to_metric_families(text) for s in fam.samples}


def _get(url: str, timeout: float = 10):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except OSError:
        return None, None


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["all", "none"])
def test_rules_read_only_metrics_the_exporter_exports(mode, gunicorn_factory, tmp_path):
    """Every series a rule reads is on a real scrape of a real busy app in both
    --gunicorn.worker-series modes; in mode none, not one series has a worker label."""
    used = rule_metric_names() - PROMETHEUS_SERIES
    # gthread: the class with the most families (worker_connections_limit, threads);
    # busy: 5 slow requests for 4 threads, so one waits inside a worker
    g = gunicorn_factory(worker_class="gthread", threads=2, workers=2, bind="tcp", name=unique_name("alerts"))
    # and an app whose worker holds a connection to a peer (a dependency's series)
    peer = socket.create_server(("127.0.0.1", 0))
    deps = gunicorn_factory(app="conn_app:app", workers=1, bind="tcp", name=unique_name("deps"))
    deps.get(f"/connect?port={peer.getsockname()[1]}")
    per_worker: set[str] = set()
    with peer, SlowClients(g, 5, seconds=60), running_exporter(
            tmp_path, "--logs.file", f"{g.name}={g.log_path}",
            "--gunicorn.worker-series", mode) as base:
        def scraped():
            status, text = _get(base + "/metrics")
            if status != 200:
                return None
            samples = [s for f in text_string_to_metric_families(text) for s in f.samples]
            per_worker.update(s.name for s in samples if "worker" in s.labels)
            # our two apps' series and the host's (another test's apps prove nothing)
            names = {s.name for s in samples if s.labels.get("app") in (None, g.name, deps.name)}
            # workers fully read (heartbeats, the sampler's peak, the requests waiting)
            return names if {"gunicorn_workers_heartbeat_age_max_seconds",
                             "gunicorn_workers_heartbeat_age_peak_seconds",
                             "gunicorn_dependency_connections"} <= names and any(
                s.name == "gunicorn_workers_requests_waiting" and s.value >= 1
                and s.labels.get("app") == g.name for s in samples) else None
        live = poll(scraped, 30, interval=0.2, message="exporter never reported the busy workers")
        # The oom collector learns the apps from the gunicorn collector after a scrape
        # (docs/oom-and-logs.md): per-app OOM series start with the next one.
        live |= poll(scraped, 20, interval=0.2, message="second scrape failed")
    if mode == "none":
        assert not per_worker, f"per-worker series in mode none: {sorted(per_worker)}"
    else:
        assert {"gunicorn_worker_pid", "gunicorn_worker_connections"} <= per_worker
    not_live = used - live
    assert all(NEEDS_POSTGRES.match(n) for n in not_live), (
        "rules read metrics a real exporter watching a real gunicorn does not export: %s"
        % sorted(n for n in not_live if not NEEDS_POSTGRES.match(n)))
    # The Postgres families: the exporter's own renderer with every optional field set.
    from exporter.metrics import render
    from exporter.metrics.encode import _Families
    from tests.test_docs import full_snapshot
    rendered = _sample_names(generate_latest(_Families(list(render(full_snapshot(),
                                                                    mode == "all")))).decode())
    assert not_live <= rendered, "not exported at all: %s" % sorted(not_live - rendered)
