"""deploy/kubernetes/autoscaling: the manifests validate against their schemas, and the
queries they hold compute the intended numbers (promtool unit tests on literal series:
two pods of one Deployment on two nodes, watched by the DaemonSet exporter)."""

from __future__ import annotations

import copy
import subprocess
import textwrap
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.test_alerts import promtool
from tests.test_deploy import validate

ROOT = Path(__file__).resolve().parent.parent
AUTO = ROOT / "deploy" / "kubernetes" / "autoscaling"
RULES = ROOT / "alerts" / "gunicorn.rules.yml"

STR_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
INT32 = {"type": "integer", "minimum": 0, "maximum": 2**31 - 1}

# keda.sh/v1alpha1 ScaledObject: the parts of KEDA's CRD (openAPIV3Schema) this example
# uses, closed so that a misspelt key fails; the prometheus trigger's metadata keys as
# KEDA's Prometheus scaler documents them (all strings).
SCALED_OBJECT = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "ScaledObject"},
        "metadata": {"type": "object", "required": ["name", "namespace"]},
        "spec": {
            "type": "object", "additionalProperties": False,
            "required": ["scaleTargetRef", "triggers"],
            "properties": {
                "scaleTargetRef": {
                    "type": "object", "additionalProperties": False, "required": ["name"],
                    "properties": {"apiVersion": {"type": "string"}, "kind": {"type": "string"},
                                   "name": {"type": "string"}, "envSourceContainerName": {"type": "string"}}},
                "minReplicaCount": INT32, "maxReplicaCount": INT32, "idleReplicaCount": INT32,
                "pollingInterval": INT32, "cooldownPeriod": INT32,
                "advanced": {"type": "object", "additionalProperties": False, "properties": {
                    "restoreToOriginalReplicaCount": {"type": "boolean"},
                    "horizontalPodAutoscalerConfig": {
                        "type": "object", "additionalProperties": False, "properties": {
                            "name": {"type": "string"},
                            "behavior": {"type": "object", "additionalProperties": False,
                                         "properties": {"scaleUp": {"type": "object"},
                                                        "scaleDown": {"type": "object"}}}}}}},
                "triggers": {"type": "array", "minItems": 1, "items": {
                    "type": "object", "additionalProperties": False,
                    "required": ["type", "metadata"],
                    "properties": {
                        "type": {"type": "string"}, "name": {"type": "string"},
                        "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
                        "metadata": STR_MAP,
                        "authenticationRef": {"type": "object", "required": ["name"]}},
                    "if": {"properties": {"type": {"const": "prometheus"}}},
                    "then": {"properties": {"metadata": {
                        "required": ["serverAddress", "query", "threshold"],
                        "additionalProperties": False,
                        "properties": {k: {"type": "string"} for k in (
                            "serverAddress", "query", "threshold", "activationThreshold",
                            "namespace", "customHeaders", "ignoreNullValues", "queryParameters",
                            "unsafeSsl", "authModes")} | {
                            "threshold": {"type": "string", "pattern": r"^[0-9]+(\.[0-9]+)?$"}}}}}}},
            }},
    },
}

# prometheus-adapter's config file (its `rules`), as the adapter's docs describe it.
ADAPTER = {
    "type": "object", "additionalProperties": False, "required": ["rules"],
    "properties": {"rules": {"type": "array", "minItems": 1, "items": {
        "type": "object", "additionalProperties": False,
        "required": ["seriesQuery", "resources", "name", "metricsQuery"],
        "properties": {
            "seriesQuery": {"type": "string"},
            "seriesFilters": {"type": "array"},
            "resources": {"type": "object", "additionalProperties": False, "properties": {
                "template": {"type": "string"},
                "overrides": {"type": "object", "additionalProperties": {
                    "type": "object", "additionalProperties": False, "required": ["resource"],
                    "properties": {"resource": {"type": "string"}, "group": {"type": "string"}}}}}},
            "name": {"type": "object", "additionalProperties": False, "properties": {
                "matches": {"type": "string"}, "as": {"type": "string"}}},
            "metricsQuery": {"type": "string", "pattern": "<<\\.Series>>"}}}}},
}


def load(name: str) -> dict:
    return yaml.safe_load((AUTO / name).read_text())


def check(name: str, doc: dict) -> None:
    if name == "keda-scaledobject.yaml":
        jsonschema.validate(doc, SCALED_OBJECT)
    elif name == "prometheus-adapter.yaml":
        jsonschema.validate(doc, ADAPTER)
    else:
        validate(doc)


@pytest.mark.parametrize("name", ["rules.yaml", "keda-scaledobject.yaml",
                                  "prometheus-adapter.yaml", "hpa.yaml"])
def test_every_autoscaling_file_is_valid(name):
    check(name, load(name))


@pytest.mark.parametrize("name, break_it", [
    ("keda-scaledobject.yaml", lambda d: d["spec"]["triggers"][0]["metadata"].update(threshold=2.8)),
    ("keda-scaledobject.yaml", lambda d: d["spec"].update(maxReplicas=3)),
    ("prometheus-adapter.yaml", lambda d: d["rules"][0].update(metricsQuery="up")),
    ("hpa.yaml", lambda d: d["spec"]["metrics"][0]["pods"]["target"].update(averageValu="1")),
])
def test_the_validation_has_teeth(name, break_it):
    doc = copy.deepcopy(load(name))
    break_it(doc)
    with pytest.raises((jsonschema.ValidationError, kubernetes_validate.ValidationError)):
        check(name, doc)


def test_the_hpa_reads_the_metric_the_adapter_serves():
    served = load("prometheus-adapter.yaml")["rules"][0]["name"]["as"]
    metric = load("hpa.yaml")["spec"]["metrics"][0]["pods"]["metric"]["name"]
    assert metric == served
    recorded = {r["record"] for g in load("rules.yaml")["spec"]["groups"] for r in g["rules"]}
    assert load("prometheus-adapter.yaml")["rules"][0]["seriesQuery"].split("{")[0] in recorded
    query = load("keda-scaledobject.yaml")["spec"]["triggers"][0]["metadata"]["query"]
    assert any(r in query for r in recorded)


def _adapter_query(pod: str) -> str:
    rule = load("prometheus-adapter.yaml")["rules"][0]
    return (rule["metricsQuery"].replace("<<.Series>>", rule["seriesQuery"].split("{")[0])
            .replace("<<.LabelMatchers>>", f'namespace="shop",pod="{pod}"')
            .replace("<<.GroupBy>>", "pod"))


@pytest.mark.slow
def test_the_queries_compute_the_busy_ratio_per_pod(tmp_path):
    """Two pods of Deployment shop (4 workers each) on two nodes: 3 and 2 busy workers.
    The per-pod ratio is 0.75 and 0.5; KEDA's query is 5 busy workers (ceil(5 / 2.8) = 2
    replicas); the adapter serves 0.75 for the first pod. A third pod of another
    namespace and an app outside Kubernetes stay out."""
    tool = promtool()
    keda = load("keda-scaledobject.yaml")["spec"]["triggers"][0]["metadata"]["query"]
    ours = yaml.safe_load(RULES.read_text())
    auto = load("rules.yaml")["spec"]
    probes = {"groups": [{"name": "probes", "rules": [
        {"record": "probe:keda", "expr": keda},
        {"record": "probe:adapter", "expr": _adapter_query("shop-7d9f-abcde")}]}]}
    files = []
    for i, doc in enumerate((ours, auto, probes)):
        f = tmp_path / f"rules{i}.yml"
        f.write_text(yaml.safe_dump(doc))
        files.append(f.name)
    sel = 'job="gunicorn"'
    series = []
    for node, app, pod, uid, ns, busy in (("n1:10188", "shop", "shop-7d9f-abcde", "u1", "shop", 3),
                                          ("n2:10188", "shop", "shop-7d9f-fghij", "u2", "shop", 2),
                                          ("n2:10188", "shop@pod:u3", "shop-x-y", "u3", "other", 4)):
        lv = f'{sel},instance="{node}",app="{app}"'
        series += [(f"gunicorn_workers{{{lv}}}", "4x20"), (f"gunicorn_workers_busy{{{lv}}}", f"{busy}x20"),
                   (f'gunicorn_app_kubernetes_info{{{lv},pod_uid="{uid}",container_id="c",'
                    f'runtime="containerd",qos_class="burstable"}}', "1x20"),
                   (f'kube_pod_info{{job="kube-state-metrics",namespace="{ns}",pod="{pod}",uid="{uid}",'
                    f'node="{node.split(":")[0]}"}}', "1x20")]
    series += [(f'gunicorn_workers{{{sel},instance="vm:10188",app="shop"}}', "4x20"),
               (f'gunicorn_workers_busy{{{sel},instance="vm:10188",app="shop"}}', "4x20")]
    test = {
        "rule_files": files, "evaluation_interval": "15s",
        "tests": [{"interval": "15s",
                   "input_series": [{"series": s, "values": v} for s, v in series],
                   "promql_expr_test": [
                       {"expr": "namespace_pod:gunicorn_workers_busy:ratio", "eval_time": "2m",
                        "exp_samples": [
                            {"labels": 'namespace_pod:gunicorn_workers_busy:ratio{namespace="shop",pod="shop-7d9f-abcde"}', "value": 0.75},
                            {"labels": 'namespace_pod:gunicorn_workers_busy:ratio{namespace="shop",pod="shop-7d9f-fghij"}', "value": 0.5},
                            {"labels": 'namespace_pod:gunicorn_workers_busy:ratio{namespace="other",pod="shop-x-y"}', "value": 1}]},
                       {"expr": "probe:keda", "eval_time": "2m",
                        "exp_samples": [{"labels": "probe:keda", "value": 5}]},
                       {"expr": "probe:adapter", "eval_time": "2m",
                        "exp_samples": [{"labels": 'probe:adapter{pod="shop-7d9f-abcde"}', "value": 0.75}]}]}],
    }
    (tmp_path / "test.yml").write_text(yaml.safe_dump(test))
    r = subprocess.run([tool, "test", "rules", "test.yml"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, textwrap.shorten(r.stdout + r.stderr, 3000)
