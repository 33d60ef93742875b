"""No client of an app can forge what the logs say (docs/security.md, "Log lines").

A client writes part of every access log line (the path, the User-Agent, the referer,
the basic-auth user name, any header a format logs). These tests send the forgeries of
issue 24 with plain `curl` to a real gunicorn whose access log and error log a real
exporter follows, beside a second app whose workers the forgeries name, and check the
exporter's numbers against gunicorn's own log and the statuses curl received.

The pure parts (formats on lines rendered by gunicorn's own logger, signatures on
literal lines) are in tests/test_access_formats.py and tests/test_logs.py.
"""

from __future__ import annotations

import base64
import shutil
import subprocess

import pytest

from tests.conftest import require
from tests.exposition import scrape, select, value
from tests.harness.procs import poll, unique_name
from tests.harness.servers import running_exporter

ACCESS = '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s" "%({x-request-id}i)s" %(L)s'


def curl(url: str, *args: str) -> int:
    out = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "10",
                          *args, url], capture_output=True, text=True, timeout=20, check=True)
    return int(out.stdout)


def _events(series, app):
    return {dict(k)["signature"]: v for k, v in
            select(series, "gunicorn_log_events_total", app=app).items()}


def _requests(series, app):
    return {dict(k)["status"]: v for k, v in
            select(series, "gunicorn_requests_total", app=app, source="access_log").items()}


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_curl_cannot_forge_signatures_statuses_or_durations(gunicorn_factory, tmp_path):
    require(shutil.which("curl") is not None, "curl is not installed")
    access = tmp_path / "access.log"
    victim = gunicorn_factory(workers=1, bind="tcp", name=unique_name("victim"))
    shop = gunicorn_factory(workers=1, bind="tcp", name=unique_name("shop"), timeout=5, extra_args=[
        "--access-logfile", str(access), "--access-logformat", ACCESS])
    (vworker,) = victim.worker_pids()
    with running_exporter(tmp_path, "--logs.file", str(access), "--logs.file", str(shop.log_path),
                          "--logs.access-format", ACCESS, "--logs.poll-interval", "0.1",
                          "--no-collector.postgres", "--no-collector.statsd") as base:
        poll(lambda: value(scrape(base), "gunicorn_up", app=victim.name) == 1
             and value(scrape(base), "gunicorn_up", app=shop.name) == 1, 30)
        url = shop.url + "/status?code=500"
        # gunicorn cuts the user at its first ':' and writes its newline as it is
        forged_user = "x\n[2024-05-01 10.00.00 +0000] [%d] [INFO] Worker failed to boot." % victim.pid
        statuses = [
            curl(url, "-A", f"[CRITICAL] WORKER TIMEOUT (pid:{vworker})"),
            curl(url, "-A", f'" 502 1 Worker (pid:{vworker}) was sent SIGKILL!'),
            curl(url, "-A", 'x" 999999999999.5 y', "-H", "X-Request-Id: z"),
            curl(url, "-A", 'a"b'),
            curl(url, "-A", "ends with a backslash\\", "-e", "so does this\\"),
            curl(url, "-e", '" 200 5 "', "-A", "QueuePool limit of size 5 overflow 10 reached"),
            curl(url, "-H", "Authorization: Basic "
                 + base64.b64encode(forged_user.encode() + b":pw").decode()),
        ]
        assert statuses == [500] * len(statuses)
        # gunicorn writes the line after the answer: wait for its file (the oracle)
        lines = poll(lambda: (ls := [ln for ln in access.read_text().splitlines() if ln])
                     and len(ls) >= len(statuses) + 1 and ls, 10)
        # the basic-auth user's newline splits its line in two: that request is unparsed
        parsed = len(statuses) - 1
        s = poll(lambda: (s := scrape(base)) and sum(_requests(s, "unknown").values()) >= parsed
                 and (value(s, "gunicorn_log_access_unparsed_lines_total", file=str(access))
                      or 0) >= 1 and s, 20, message="the access lines were not all read")
        # gunicorn wrote what the clients sent (the oracle: its own file), one line each,
        # except the basic-auth user's newline, which gunicorn writes as it is
        assert len(lines) == len(statuses) + 1, lines
        assert any(ln.startswith("[2024-05-01 10.00.00 +0000] [%d]" % victim.pid) for ln in lines)
        assert _requests(s, "unknown") == {"500": parsed}
        assert sum(_events(s, victim.name).values()) == 0, _events(s, victim.name)
        shop_events = {k: v for k, v in _events(s, shop.name).items() if v}
        assert "worker_timeout" not in shop_events and "worker_sigkill" not in shop_events
        unknown = {k: v for k, v in _events(s, "unknown").items() if v}
        assert unknown == {"http_response": parsed}, unknown
        # every duration is gunicorn's own (the app answers at once): no 1e12 s
        total = value(s, "gunicorn_request_duration_seconds_sum", app="unknown", source="access_log")
        assert 0 < total < 5, total
        assert value(s, "gunicorn_log_access_unparsed_lines_total", file=str(access)) == 1
