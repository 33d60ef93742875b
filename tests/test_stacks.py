"""The stacks collector against real gunicorn: a sync or gthread worker whose request
waits on a TCP dependency that accepts and never answers (tests/apps/wsgi_app.py's
/upstream). Oracles that share nothing with the exporter: the app's own source file for
the line that blocks, `ss` for which worker holds the connection to the dependency,
gunicorn's own error log for which worker its master killed at its timeout."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.exposition import scrape, select, value
from tests import test_web
from tests.harness.command import APPS_DIR
from tests.harness.masters import Gunicorn
from tests.harness.procs import poll, unique_name
from tests.harness.servers import running_exporter, silent_peer
from tests.harness.ss import ss_process_connections
from tests.test_web import client_context, get, tls_exporter

pki = test_web.pki      # its module-scoped fixture: the same PKI serves this module

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

ARGS = ("--collector.stacks", "--no-collector.postgres", "--no-collector.statsd",
        "--no-collector.oom")


def blocking_line() -> int:
    """The line of tests/apps/wsgi_app.py where /upstream waits for the dependency's
    answer, read from the file itself."""
    lines = (APPS_DIR / "wsgi_app.py").read_text().splitlines()
    [n] = [i + 1 for i, text in enumerate(lines) if "s.recv(4096)" in text]
    return n


def send_stuck_request(g: Gunicorn, port: int) -> socket.socket:
    s = socket.create_connection((g.host, g.port), timeout=30)
    s.sendall(f"GET /upstream?port={port} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    return s


@contextmanager
def watched_stuck_worker(tmp_path: Path, name: str, *, workers: int, timeout: int):
    """A real sync app (`workers` workers, --timeout `timeout`) seen by a real exporter,
    one of whose workers is stuck on a request to a dependency that never answers
    (silent_peer). Yields (the app, the exporter's base URL, the stuck worker's pid by
    ss, the monotonic time just before the request was sent)."""
    with Gunicorn.start(tmp_path / "g", name=name, workers=workers, bind="tcp",
                        timeout=timeout) as g, \
            silent_peer() as port, running_exporter(tmp_path, *ARGS) as base:
        poll(lambda: value(scrape(base), "gunicorn_workers", app=name) == workers, 20,
             message="the exporter never saw the app")
        sent = time.monotonic()
        with send_stuck_request(g, port):
            yield g, base, holder_of(g, port), sent


def holder_of(g: Gunicorn, port: int) -> int:
    """The worker that holds a connection to 127.0.0.1:port, by ss."""
    def find():
        pids = [p for p in g.worker_pids()
                if any(c.peer == f"127.0.0.1:{port}" and c.state == "ESTAB"
                       for c in ss_process_connections(p))]
        return pids[0] if len(pids) == 1 else None
    return poll(find, 10, message="no worker holds the connection to the dependency")


def log_records(log_path: Path, event: str) -> list[dict]:
    out = []
    for line in log_path.read_text(errors="replace").splitlines():
        m = re.search(r"msg='(%s \{.*\})'$" % event, line)
        if m:
            out.append(json.loads(m.group(1).split(" ", 1)[1]))
    return out


def exporter_log(tmp_path: Path, base: str) -> Path:
    return tmp_path / f"exporter-{base.rsplit(':', 1)[1]}.log"


def test_a_sync_worker_waiting_on_a_dependency_is_named_by_the_apps_own_line(tmp_path):
    name = unique_name("stuck-sync")
    line = blocking_line()
    with watched_stuck_worker(tmp_path, name, workers=2, timeout=10) as (g, base, pid, t0):
        def stuck():
            s = scrape(base)
            return select(s, "gunicorn_worker_stuck_frame_info", app=name) and s
        series = poll(stuck, 9, interval=0.2, message="no stuck frame before the kill")
        took = time.monotonic() - t0
        [(labels, one)] = select(series, "gunicorn_worker_stuck_frame_info", app=name).items()
        labels = dict(labels)
        assert one == 1 and labels["frame"] == f"app (wsgi_app.py:{line})"
        # the stuck worker's slot is the one ss says waits on the dependency
        assert value(series, "gunicorn_worker_pid", app=name, worker=labels["worker"]) == pid
        # heartbeat age past 10 * 0.5 + 0.5 s; read every second, so within a second more
        assert 5.5 <= took < 5.5 + 3.0, took
        assert value(series, "gunicorn_stack_captures_total", app=name, outcome="ok") == 1
        assert value(series, "gunicorn_stack_reader_available") == 1
        [rec] = [r for r in log_records(exporter_log(tmp_path, base), "stack_capture")
                 if r["app"] == name]
        assert rec["pid"] == pid and rec["outcome"] == "ok" and rec["trigger"] == "heartbeat"
        assert rec["frame"] == f"app (wsgi_app.py:{line})"
        assert rec["stack"][0]["frames"][0] == rec["frame"]
        assert any("gunicorn/workers/sync.py" in f for f in rec["stack"][0]["frames"])
        assert rec["heartbeat_age_seconds"] >= 5.5
        assert "locals" not in json.dumps(rec)
        # /debug/stacks: JSON for a program, text for a browser
        with urllib.request.urlopen(base + "/debug/stacks", timeout=10) as r:
            assert r.headers["Content-Type"] == "application/json"
            doc = json.loads(r.read())
        assert doc["apps"][name]["captures"][0]["frame"] == rec["frame"]
        req = urllib.request.Request(base + "/debug/stacks", headers={"Accept": "text/html"})
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.headers["Content-Type"].startswith("text/plain")
            body = r.read().decode()
        assert f"== {name} ==" in body and f"stuck in app (wsgi_app.py:{line})" in body
        with urllib.request.urlopen(base + "/debug/stacks?format=text", timeout=10) as r:
            assert f"stuck in app (wsgi_app.py:{line})" in r.read().decode()


def test_the_postmortem_of_a_worker_killed_at_its_timeout_names_the_line(tmp_path):
    name = unique_name("killed")
    line = blocking_line()
    with watched_stuck_worker(tmp_path, name, workers=1, timeout=3) as (g, base, pid, _sent):
        # gunicorn's own log says which worker its master killed at the timeout
        poll(lambda: f"WORKER TIMEOUT (pid:{pid})" in g.log_text(), 15,
             message="gunicorn never killed the stuck worker")
        log = exporter_log(tmp_path, base)
        [pm] = poll(lambda: [r for r in log_records(log, "stack_postmortem")
                             if r["app"] == name], 10, message="no postmortem line")
        assert pm["pid"] == pid and pm["worker"] == 0
        assert pm["frame"] == f"app (wsgi_app.py:{line})"
        assert pm["stack"][0]["frames"][0] == f"app (wsgi_app.py:{line})"
        assert pm["timeout_seconds"] == 3 and pm["killed_after_seconds"] >= 3
        assert 0 <= pm["captured_seconds_before_death"] < 3
        assert 2.0 < pm["heartbeat_age_seconds"] < 3.5
        # one postmortem for one kill, and the worker's series go with it
        series = scrape(base)
        assert not select(series, "gunicorn_worker_stuck_frame_info", app=name)
        assert len(log_records(log, "stack_postmortem")) >= 1


def test_a_gthread_worker_waiting_on_a_dependency_is_captured_by_its_wait(tmp_path):
    """A gthread worker keeps beating while one of its threads waits: the trigger is its
    dependency wait, which the gunicorn collector's WorkerSnapshot will carry
    (`dependency_wait`); here it is set on a real collection's snapshot."""
    from exporter.collectors.gunicorn import GunicornCollector
    from exporter.collectors.stacks import StacksCollector
    from exporter.snapshot import CollectorResult, Snapshot

    name = unique_name("stuck-gthread")
    line = blocking_line()
    with Gunicorn.start(tmp_path / "g", name=name, workers=2, bind="tcp", timeout=30,
                        worker_class="gthread", threads=4) as g, \
            silent_peer() as port, send_stuck_request(g, port):
        pid = holder_of(g, port)

        async def main():
            gc, stacks = GunicornCollector(), StacksCollector(tick=3600)
            await stacks.start()
            try:
                deadline = time.monotonic() + 20
                while True:     # as a later scrape would: the settings, both workers
                    snap = await gc.collect()
                    [app] = [a for a in snap.apps if a.app == name]
                    if app.worker_class == "gthread" and len(app.workers) == 2 \
                            or time.monotonic() > deadline:
                        break
                    await asyncio.sleep(0.2)
                assert app.worker_class == "gthread" and len(app.workers) == 2, app
                for w in app.workers:      # both beat: the heartbeat does not trigger
                    assert w.heartbeat_age is not None and w.heartbeat_age < 5
                    if w.pid == pid:
                        w.dependency_wait = (f"127.0.0.1:{port}", 6.0)
                stacks.learn(Snapshot({"gunicorn": CollectorResult("gunicorn", True, 0.0,
                                                                   data=snap)}))
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline:
                    await stacks.step()
                    if stacks.counts.get((name, "ok")):
                        break
                    await asyncio.sleep(0.05)
                return await stacks.collect(), stacks
            finally:
                await stacks.stop()
                await gc.stop()
        got, stacks = asyncio.run(main())
        assert got.captures.get((name, "ok")) == 1 and len(
            [k for k in got.captures if k[0] == name]) == 1
        [(app, slot, frame)] = [s for s in got.stuck if s[0] == name]
        assert frame == f"app (wsgi_app.py:{line})"
        doc = json.loads(stacks.store.json())
        [rec] = doc["apps"][name]["captures"]
        assert rec["pid"] == pid and rec["trigger"] == "dependency"
        assert rec["dependency"] == {"peer": f"127.0.0.1:{port}", "wait_seconds": 6.0}
        # the request's thread is first, the main thread (gunicorn's poll loop) after
        assert rec["stack"][0]["frames"][0] == frame
        assert any(t["thread"] == "MainThread" for t in rec["stack"][1:])


def test_debug_stacks_is_behind_the_same_tls_and_auth_as_metrics(tmp_path, pki, monkeypatch):
    monkeypatch.setenv("GUNICORN_EXPORTER_COLLECTOR_STACKS", "true")
    with tls_exporter(tmp_path, pki) as port:
        base = f"https://127.0.0.1:{port}"
        ctx = client_context(pki)
        status, headers, body = get(base + "/debug/stacks", ctx=ctx)
        assert status == 200 and headers["Content-Type"] == "application/json"
        assert json.loads(body)["truncated"] is False
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert get(base + "/debug/stacks", ctx=ctx, user=None)[0] == 401
        assert get(base + "/debug/stacks?format=text", ctx=ctx, password="wrong")[0] == 401
        status, _, body = get(base + "/", ctx=ctx)
        assert status == 200 and b'href="/debug/stacks"' in body


def test_debug_stacks_is_not_there_without_the_collector(tmp_path):
    with running_exporter(tmp_path, "--no-collector.postgres", "--no-collector.statsd") as base:
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(base + "/debug/stacks", timeout=10)
        assert e.value.code == 404


def test_a_capture_is_bounded_in_time_and_output_and_measured():
    """reader.run: a program that ignores SIGTERM is killed at the deadline (its whole
    session), one that floods its output at the cap; the CPU it used is its rusage."""
    import subprocess
    import sys

    from exporter.stacks import reader
    t = time.monotonic()
    r = reader.run(["sh", "-c", "trap '' TERM; sleep 30 & sleep 30; wait"], 0.5)
    assert r.timed_out and r.returncode is None and 0.5 <= time.monotonic() - t < 1.5
    r = reader.run(["sh", "-c", "yes"], 10, max_output=100_000)
    assert r.oversized and len(r.stdout) <= 100_000 and r.seconds < 5
    r = reader.run([sys.executable, "-c",
                    "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass"],
                   10)
    assert r.returncode == 0 and 0.25 <= r.cpu_seconds < 2, r
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        spy = reader.find_py_spy()
        assert spy is not None
        got = reader.capture(spy, sleeper.pid, None, 5.0)
        assert got.outcome == "not_python" and "python" in got.error.lower(), got
        start = reader.start_ticks(sleeper.pid)
        assert reader.capture(spy, sleeper.pid, start + 1, 5.0).outcome == "gone"
    finally:
        sleeper.kill()
        sleeper.wait()
    assert reader.capture(spy, sleeper.pid, None, 5.0).outcome == "gone"

