"""The monitoring mixin (mixin/), rendered by Debian's `jsonnet`: with its default `_config`
it is the rule file and the dashboard (compared after loading both, YAML and JSON); with a
changed `_config` it is what the generator writes from alerts/config.toml changed the same
way (the generator as the oracle of the change), and promtool accepts it."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess

import pytest
import yaml

from generate import rules
from tests.conftest import require
from tests.harness.artifacts import ROOT

MIXIN = ROOT / "mixin"


def render(overrides: str = "{}") -> dict:
    require(shutil.which("jsonnet") is not None, "jsonnet not installed (Debian package 'jsonnet')")
    code = (f"local m = (import 'mixin.libsonnet') + {{ _config+:: {overrides} }};"
            "{alerts: m.prometheusAlerts, rules: m.prometheusRules, "
            "dashboards: m.grafanaDashboards, config: m._config}")
    res = subprocess.run(["jsonnet", "-J", str(MIXIN), "-e", code], capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def groups(rendered: dict) -> list[dict]:
    return rendered["rules"]["groups"] + rendered["alerts"]["groups"]


def generated(config: dict) -> list[dict]:
    return yaml.safe_load(rules.to_yaml(rules.build_rules(config)))["groups"]


@pytest.mark.slow
def test_default_config_renders_the_rule_file_and_the_dashboard():
    m = render()
    assert groups(m) == yaml.safe_load((ROOT / "alerts" / "gunicorn.rules.yml").read_text())["groups"]
    assert m["dashboards"] == {"gunicorn.json": json.loads(
        (ROOT / "grafana" / "dashboards" / "gunicorn.json").read_text())}
    assert [g["name"] for g in m["rules"]["groups"]] == ["gunicorn.rules"]
    config = rules.load_config()
    assert m["config"]["selector"] == config["global"]["selector"]
    assert m["config"]["alerts"]["GunicornWorkerPoolSaturated"] == config["GunicornWorkerPoolSaturated"]


@pytest.mark.slow
def test_a_changed_config_changes_the_rules_as_the_generator_would(tmp_path):
    m = render("{ selector: 'job=\"gunicorn-prod\"', alerts+: { GunicornWorkerPoolSaturated+: "
               "{ busy_ratio: 0.7, 'for': '3m', severity: 'critical' } } }")
    config = copy.deepcopy(rules.load_config())
    config["global"]["selector"] = 'job="gunicorn-prod"'
    config["GunicornWorkerPoolSaturated"].update(busy_ratio=0.7, severity="critical", **{"for": "3m"})
    assert groups(m) == generated(config)

    text = json.dumps(groups(m))
    assert 'job=\\"gunicorn\\"' not in text and text.count('job=\\"gunicorn-prod\\"') > 50
    (saturated,) = [r for g in groups(m) for r in g["rules"]
                    if r.get("alert") == "GunicornWorkerPoolSaturated"]
    assert "> 0.7" in saturated["expr"] and "70%" in saturated["annotations"]["description"]
    assert saturated["for"] == "3m" and saturated["labels"]["severity"] == "critical"
    assert groups(m) != groups(render())

    require(shutil.which("promtool") is not None, "promtool not installed (Debian package 'prometheus')")
    path = tmp_path / "mixin.rules.yml"
    path.write_text(yaml.safe_dump({"groups": groups(m)}))
    check = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True,
                           text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
