"""End to end: real gunicorn -> real exporter -> real Prometheus (the shipped rules,
with every `for:` shortened) -> real Alertmanager, read back from its /api/v2/alerts.

Two failure modes are driven for real: C1 (2 sync workers, 6 slow requests: both
workers busy, 4 connections in the accept queue) fires GunicornWorkerPoolExhausted;
then the master is SIGKILLed (W4) and GunicornDown fires. The rules' durations are
divided by 15 (1 s scrapes instead of 15 s); tests/test_alerts_faults.py provokes the
other failure modes.

Binaries: /usr/bin/prometheus (Debian package `prometheus`) and
/usr/bin/prometheus-alertmanager (`prometheus-alertmanager`); both run on free
127.0.0.1 ports with their config and storage in the test's tmp dir and are stopped
by PID. Without them the test skips (fails with CI=true).
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import time
from pathlib import Path

import pytest

from generate import rules
from tests.conftest import require
from tests.harness.clients import SlowClients
from tests.harness.procs import free_port, poll
from tests.harness.servers import get_json, running_prometheus, running_server, url_ready
from tests.test_alerts import running_exporter

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

SCALE = 15   # 1 s scrapes instead of the 15 s the rules assume


def _binary(name: str) -> str:
    path = shutil.which(name) or (("/usr/bin/" + name) if Path("/usr/bin/" + name).exists() else None)
    require(path is not None, "%s not installed (apt-get install -y %s)"
            % (name, "prometheus" if name == "prometheus" else "prometheus-alertmanager"))
    return path


def _am_alerts(am: str) -> list[dict]:
    return get_json(am + "/api/v2/alerts?active=true&silenced=false&inhibited=false")


def _find(alerts: list[dict], name: str, app: str) -> dict | None:
    for a in alerts:
        labels = a.get("labels", {})
        if labels.get("alertname") == name and labels.get("app") == app:
            return a
    return None


def test_pool_exhaustion_and_dead_master_reach_alertmanager(gunicorn_factory, tmp_path):
    prometheus = _binary("prometheus")
    alertmanager = _binary("prometheus-alertmanager")
    t0 = time.monotonic()

    app = "e2e-%s" % secrets.token_hex(3)
    g = gunicorn_factory(worker_class="sync", workers=2, bind="unix", name=app, timeout=60)

    am_port = free_port()
    am = "http://127.0.0.1:%d" % am_port
    (tmp_path / "am-data").mkdir()
    (tmp_path / "alertmanager.yml").write_text(
        "route:\n"
        "  receiver: blackhole\n"
        "  group_wait: 1s\n"
        "  group_interval: 1s\n"
        "  repeat_interval: 1h\n"
        "receivers:\n"
        "  - name: blackhole\n")
    (tmp_path / "rules.yml").write_text(rules.render(time_scale=1 / SCALE))

    with contextlib.ExitStack() as stack:
        # an app is remembered (gunicorn_up 0 once down) after 1 minute on the rules' clock
        exporter = stack.enter_context(running_exporter(
            tmp_path, "--gunicorn.remember-after", f"{60 / SCALE:g}s"))
        exporter_target = exporter.removeprefix("http://")
        config = (
            "global:\n"
            "  scrape_interval: 1s\n"
            "  evaluation_interval: 1s\n"
            "rule_files:\n"
            "  - %s\n"
            "alerting:\n"
            "  alertmanagers:\n"
            "    - api_version: v2\n"
            "      static_configs:\n"
            "        - targets: ['127.0.0.1:%d']\n"
            "scrape_configs:\n"
            "  - job_name: gunicorn\n"          # the selector of alerts/config.toml
            "    static_configs:\n"
            "      - targets: ['%s']\n"
            % (tmp_path / "rules.yml", am_port, exporter_target))
        stack.enter_context(running_server(
            [alertmanager, "--config.file=%s" % (tmp_path / "alertmanager.yml"),
             "--storage.path=%s" % (tmp_path / "am-data"),
             "--web.listen-address=127.0.0.1:%d" % am_port,
             "--cluster.listen-address="],
            tmp_path / "alertmanager.log", lambda: url_ready(am + "/-/ready"), "alertmanager"))
        prom = stack.enter_context(running_prometheus(prometheus, tmp_path, config,
                                                      "--rules.alert.resend-delay=1s"))
        startup = time.monotonic() - t0

        # Healthy and idle first: the target is scraped and nothing about C1 fires.
        poll(lambda: any(t["health"] == "up" for t in
                         get_json(prom + "/api/v1/targets")["data"]["activeTargets"]),
             20, interval=0.2, message="prometheus never scraped the exporter")
        assert _find(_am_alerts(am), "GunicornWorkerPoolExhausted", app) is None

        # C1: 2 sync workers, 6 requests of 60 s: 2 served, 4 wait in the accept queue.
        clients = stack.enter_context(SlowClients(g, 6, seconds=60))
        assert len(clients) == 6
        t1 = time.monotonic()
        exhausted = poll(lambda: _find(_am_alerts(am), "GunicornWorkerPoolExhausted", app),
                         45, interval=0.25,
                         message="GunicornWorkerPoolExhausted never reached alertmanager")
        c1_latency = time.monotonic() - t1
        assert exhausted["labels"]["severity"] == "critical"
        assert exhausted["labels"]["job"] == "gunicorn"
        assert exhausted["labels"]["instance"] == exporter_target
        ann = exhausted["annotations"]
        assert ann["summary"] == "Requests to %s wait for a worker that has no thread free" % app
        assert ann["description"].startswith("Requests to %s on %s have been waiting for most "
                                             "of the last " % (app, exporter_target))
        queued = int(ann["description"].split("(up to ", 1)[1].split()[0])
        assert 1 <= queued <= 4, ann["description"]
        assert ann["runbook_url"].endswith("docs/runbooks.md#gunicornworkerpoolexhausted")
        assert _find(_am_alerts(am), "GunicornDown", app) is None

        # W4: the master dies; its orphaned workers are not a server.
        g.kill_master()
        t2 = time.monotonic()
        down = poll(lambda: _find(_am_alerts(am), "GunicornDown", app), 45, interval=0.25,
                    message="GunicornDown never reached alertmanager")
        w4_latency = time.monotonic() - t2
        assert down["labels"]["severity"] == "critical"
        assert down["annotations"]["summary"] == "gunicorn app %s is down on %s" % (app, exporter_target)
        assert "(gunicorn_up 0)" in down["annotations"]["description"]
        assert down["annotations"]["runbook_url"].endswith("docs/runbooks.md#gunicorndown")

    print("\nstartup %.1fs, C1 -> alertmanager %.1fs, W4 -> alertmanager %.1fs, total %.1fs"
          % (startup, c1_latency, w4_latency, time.monotonic() - t0))
