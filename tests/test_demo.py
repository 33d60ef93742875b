"""`python -m exporter.demo`: a real gunicorn, real load, the real exporter, all stopped again."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import urllib.request

import pytest

from exporter.demo import app, demo_values
from tests.harness.procs import pid_alive, poll
from tests.harness.servers import stop_process

pytestmark = [pytest.mark.timeout(90)]

URL_RE = re.compile(r"exporter:\s+(http://127\.0\.0\.1:\d+)/metrics\s+pid (\d+)")
MASTER_RE = re.compile(r"gunicorn master pid (\d+).*app=\"(demo-\d+)\"")


def _scrape(base: str) -> str:
    try:
        with urllib.request.urlopen(base + "/metrics", timeout=5) as r:
            return r.read().decode()
    except OSError:
        return ""


def _start(tmp_path, *args):
    out = open(tmp_path / "demo.out", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "exporter.demo", "--port", "0",
                             "--interval", "0", *args],
                            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    return proc, out


def _text(tmp_path) -> str:
    return (tmp_path / "demo.out").read_text(errors="replace")


def _stop(proc):
    stop_process(proc, 30)


def test_sample_app_answers_without_a_server():
    seen = {}

    def start_response(status, headers):
        seen["status"] = status

    body = b"".join(app({"PATH_INFO": "/slow", "QUERY_STRING": "seconds=0"}, start_response))
    assert seen["status"] == "200 OK" and body.startswith(b"slept 0s")
    assert b"".join(app({"PATH_INFO": "/nope"}, start_response)) == b"not found\n"
    assert seen["status"].startswith("404")


@pytest.mark.slow
def test_demo_shows_busy_workers_and_stops_everything_on_sigterm(tmp_path):
    proc, out = _start(tmp_path, "--duration", "80")
    try:
        m = poll(lambda: URL_RE.search(_text(tmp_path)) if proc.poll() is None else
                 pytest.fail("demo exited early:\n" + _text(tmp_path)),
                 40, message="demo did not print the exporter's address")
        base, exporter_pid = m.group(1), int(m.group(2))
        master = MASTER_RE.search(_text(tmp_path))
        master_pid, app_name = int(master.group(1)), master.group(2)
        # 2 sync workers, 3 clients sending 2 s requests: the exporter must see the
        # demo app saturated (a busy worker or a connection waiting in the queue).
        values = poll(lambda: (lambda v: v if v.get("gunicorn_workers_busy", 0) > 0
                               or v.get("gunicorn_listener_queue_length", 0) > 0 else None)(
                          demo_values(_scrape(base), app_name)),
                      30, interval=0.2, message=f"no busy worker or queued request for app={app_name}")
        assert values["gunicorn_up"] == 1
        assert values["gunicorn_workers"] == 2
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, _text(tmp_path)
        assert "demo: stopped (signal SIGTERM)" in _text(tmp_path)
        assert not pid_alive(master_pid), "demo left its gunicorn master running"
        assert not pid_alive(exporter_pid), "demo left its exporter running"
    finally:
        _stop(proc)
        out.close()


@pytest.mark.slow
def test_demo_ends_by_itself_after_duration(tmp_path):
    proc, out = _start(tmp_path, "--duration", "2", "--slow", "0.5")
    try:
        assert proc.wait(45) == 0, _text(tmp_path)
        text = _text(tmp_path)
        assert "demo: stopped (done)" in text
        master_pid = int(MASTER_RE.search(text).group(1))
        assert not pid_alive(master_pid)
    finally:
        _stop(proc)
        out.close()


@pytest.mark.slow
def test_demo_without_gunicorn_says_how_to_install_it():
    code = ("import sys; sys.modules['gunicorn'] = None\n"
            "from exporter.demo import main\n"
            "raise SystemExit(main(['--duration', '1']))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=30, env={**os.environ})
    assert res.returncode == 1
    assert "pip install gunicorn" in res.stderr
