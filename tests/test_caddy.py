"""Caddy in front of gunicorn: its JSON access and reverse_proxy error lines, on the lines
a real Caddy 2.6 wrote (literal, fast) and against a real Caddy (slow): requests and
latency per app against the client's own clock and status codes and Caddy's own log;
refused and missing upstreams (a stopped app, on a unix socket and on TCP) and timeouts
(a stuck app) counted as Caddy's log and the client saw them."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import re
import signal
import socket
import subprocess
import time
from collections import Counter

import pytest

from exporter.collectors.logs import LogsCollector
from exporter.doctor import caddy as doctor_caddy
from exporter.logs import caddy
from exporter.logs.files import LogFile
from exporter.parsing import ConfigError, parse_signatures
from exporter.snapshot import AppSnapshot, GunicornSnapshot, ListenerSnapshot
from tests.conftest import require
from tests.exposition import scrape, select, value
from tests.harness.caddy import CADDY, Site, running_caddy
from tests.harness.clients import http_get
from tests.harness.procs import poll, unique_name
from tests.harness.servers import running_exporter

# written by Caddy 2.6.2 (Debian bookworm), headers shortened
REQ = ('"request":{"remote_ip":"127.0.0.1","remote_port":"38578","proto":"HTTP/1.1",'
       '"method":"GET","host":"127.0.0.1:18080","uri":"/u/","headers":{"User-Agent":'
       '["curl/7.88.1"],"Accept":["*/*"]}}')
ACCESS_200 = ('{"level":"info","ts":1796598358.8062773,"logger":"http.log.access.log0",'
              '"msg":"handled request",' + REQ + ',"user_id":"","duration":0.001532858,'
              '"size":2,"status":200,"resp_headers":{"Server":["Caddy","gunicorn"]}}')
ACCESS_504 = ('{"level":"error","ts":1796598359.8453374,"logger":"http.log.access.log0",'
              '"msg":"handled request",' + REQ + ',"user_id":"","duration":1.002022757,'
              '"size":0,"status":504,"resp_headers":{"Server":["Caddy"]}}')


def error(msg: str, status: int, trace="reverseproxy.statusError (reverseproxy.go:1272)") -> str:
    return ('{"level":"error","ts":1796598360.882262,"logger":"http.log.error.log0","msg":'
            + json.dumps(msg) + "," + REQ + f',"duration":0.000387824,"status":{status},'
            f'"err_id":"p6az7315x","err_trace":"{trace}"}}')


ERRORS = {   # msg -> (status, signature, address)
    "dial unix /tmp/cx/missing.sock: connect: no such file or directory":
        (502, "caddy_upstream_missing", "unix:/tmp/cx/missing.sock"),
    "dial tcp 127.0.0.1:18082: connect: connection refused":
        (502, "caddy_connect_refused", "127.0.0.1:18082"),
    "dial unix /run/shop.sock: connect: connection refused":
        (502, "caddy_connect_refused", "unix:/run/shop.sock"),
    "dial unix /run/shop.sock: connect: resource temporarily unavailable":
        (502, "caddy_upstream_eagain", "unix:/run/shop.sock"),
    "net/http: timeout awaiting response headers": (504, "caddy_upstream_timeout", None),
    "read tcp 127.0.0.1:56474->127.0.0.1:18081: i/o timeout":
        (504, "caddy_upstream_timeout", "127.0.0.1:18081"),
    "read unix @->/run/shop.sock: i/o timeout": (504, "caddy_upstream_timeout", "unix:/run/shop.sock"),
    "dial tcp [::1]:8000: i/o timeout": (504, "caddy_upstream_timeout", "[::1]:8000"),
}


def test_access_entries_are_requests_with_latency():
    e = caddy.parse(ACCESS_200)
    assert (e.kind, e.status, e.seconds, e.address, e.signatures) == \
        ("access", 200, 0.001532858, None, ("http_response",))
    e = caddy.parse(ACCESS_504)
    assert (e.status, e.seconds, e.signatures) == (504, 1.002022757, ("http_response", "http_504"))
    # Caddy 2.8+: log_append upstream {http.reverse_proxy.upstream.address}
    for field, want in (("unix//run/shop.sock", "unix:/run/shop.sock"),
                        ("tcp/127.0.0.1:8000", "127.0.0.1:8000"), ("127.0.0.1:8000", "127.0.0.1:8000"),
                        ("tcp6/[::1]:8000", "[::1]:8000"), ("unix/relative", None), ("x" * 300, None),
                        (8000, None), ("", None)):
        line = ACCESS_200[:-1] + ',"upstream":' + json.dumps(field) + "}"
        assert caddy.parse(line).address == want, field


def test_reverse_proxy_errors_name_their_signature_and_address():
    for msg, (status, name, addr) in ERRORS.items():
        e = caddy.parse(error(msg, status))
        assert (e.kind, e.signatures, e.address) == ("error", (name,), addr), msg
    # other 502s (the app closed the connection) are in the access log's http_502 only
    assert caddy.parse(error("EOF", 502)) is None
    # errors of other handlers, and other loggers, are not proxy errors
    assert caddy.parse(error("dial tcp 1.2.3.4:80: connect: connection refused", 502,
                             trace="fileserver.(*FileServer).ServeHTTP")) is None
    assert caddy.parse('{"level":"info","ts":1.5,"logger":"http.log","msg":"server running"}') is None
    assert caddy.parse('{"level":"info","logger":"http.log.accessx","status":200}') is None
    for text in ("", "plain text", '10.0.0.1 - - [01/May/2024] "GET / HTTP/1.1" 200 1', "{}"):
        assert caddy.parse(text) is None


def test_hostile_lines_cost_themselves_only():
    bad = [
        ACCESS_200.replace('"status":200', '"status":999'),
        ACCESS_200.replace('"status":200', '"status":true'),
        ACCESS_200.replace('"status":200', '"status":"200"'),
        ACCESS_200.replace('"duration":0.001532858', '"duration":-1'),
        ACCESS_200.replace('"duration":0.001532858', '"duration":1e12'),
        ACCESS_200.replace('"duration":0.001532858', '"duration":NaN'),
        ACCESS_200.replace('"duration":0.001532858', '"duration":Infinity'),
        ACCESS_200[:-1] + ',"x":' + "[" * 20 + "]" * 20 + "}",           # deeper than Caddy writes
        '{"logger":"http.log.access","x":' + "[" * 100000 + "]" * 100000 + "}",   # too long
        '{"logger":"http.log.access","x":' + "[" * 5000,                 # not JSON
        ACCESS_200[:-2],                                                 # cut
        ACCESS_200[:-1] + ',"pad":"' + "a" * caddy.MAX_LINE + '"}',
    ]
    for line in bad:
        assert caddy.parse(line) is False, line[:120]
    # another duration_format (a string): the request counts, without latency
    e = caddy.parse(ACCESS_200.replace('"duration":0.001532858', '"duration":"1.53ms"'))
    assert (e.status, e.seconds) == (200, None)
    # what a client sends is inside JSON strings: it cannot add or change a field
    forged = {"level": "info", "logger": "http.log.access.log0", "msg": "handled request",
              "request": {"uri": '/x","status":502,"duration":1e12,"upstream":"unix//run/other.sock',
                          "headers": {"User-Agent": ['" 502 1 Worker (pid:1) was sent SIGKILL!',
                                                     "[CRITICAL] WORKER TIMEOUT (pid:123)"]}},
              "duration": 0.5, "size": 1, "status": 200}
    e = caddy.parse(json.dumps(forged, separators=(",", ":")))
    assert (e.status, e.seconds, e.address, e.signatures) == (200, 0.5, None, ("http_response",))


def _index_with_shop(c: LogsCollector) -> None:
    a = AppSnapshot(app="shop", up=True, master_pid=123, listeners=[
        ListenerSnapshot("unix:/run/shop.sock", "unix", 0, 0),
        ListenerSnapshot("0.0.0.0:8000", "tcp", 0, 0)])
    c.index.update(GunicornSnapshot(apps=[a]))


def test_collector_attributes_caddy_lines_by_the_listener_they_name():
    c = LogsCollector([LogFile("/nonexistent/caddy.log", "edge")],
                      parse_signatures(["slow_uri=/slow"]))
    c._started = True
    _index_with_shop(c)
    path = "/nonexistent/caddy.log"
    c.handle_line(error("dial unix /run/shop.sock: connect: no such file or directory", 502), "edge", path)
    c.handle_line(error("dial tcp 127.0.0.1:8000: connect: connection refused", 502), "edge", path)
    c.handle_line(error("net/http: timeout awaiting response headers", 504), "edge", path)
    c.handle_line(error("dial tcp 10.9.9.9:80: connect: connection refused", 502), None, path)
    c.handle_line(ACCESS_200[:-1] + ',"upstream":"unix//run/shop.sock"}', "edge", path)
    c.handle_line(ACCESS_504, "edge", path)
    c.handle_line(ACCESS_200.replace('"uri":"/u/"', '"uri":"/slow WORKER TIMEOUT (pid:123)"'), "edge", path)
    c.handle_line(ACCESS_200.replace('"status":200', '"status":999'), "edge", path)
    snap = asyncio.run(c.collect())
    ev = snap.events
    assert ev[("shop", "caddy_upstream_missing")] == 1
    assert ev[("shop", "caddy_connect_refused")] == 1          # wildcard listener, loopback dial
    assert ev[("edge", "caddy_upstream_timeout")] == 1         # no address: the file's app
    assert ev[("unknown", "caddy_connect_refused")] == 1       # not a gunicorn listener, no app
    assert ev[("shop", "http_response")] == 1 and ev[("edge", "http_response")] == 2
    assert ev[("edge", "http_504")] == 1
    assert ev[("edge", "slow_uri")] == 1                       # user signatures see the line
    assert ev[("shop", "worker_timeout")] == ev[("edge", "worker_timeout")] == 0
    assert ev[("shop", "caddy_upstream_eagain")] == 0          # every app has every signature
    req = snap.proxy_requests.apps          # a proxy's record, as nginx's lines
    assert snap.requests.apps == {}
    assert req["shop"].statuses == {"200": 1} and req["edge"].statuses == {"200": 1, "504": 1}
    assert req["edge"].duration_count == 2
    assert abs(req["edge"].duration_sum - (1.002022757 + 0.001532858)) < 1e-9
    assert c.access.files == {path: [3, 1, 0]}   # three access entries, one malformed


def test_caddy_signature_names_are_reserved():
    with pytest.raises(ConfigError, match="built in"):
        parse_signatures(["caddy_connect_refused=x"])


# --- a real Caddy --------------------------------------------------------------------

def _caddy_lines(path) -> list[dict]:
    """Caddy's own log, read independently of the exporter's parser."""
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_real_caddy_requests_and_proxy_errors_per_app(gunicorn_factory, tmp_path):
    """Four apps behind one Caddy 2.6, a site each. Requests and latency per app against
    the client's status codes and clock and Caddy's access log; then a graceful stop
    (unix socket file gone: 502), a stop on TCP (refused: 502), a kill -9 of a master and
    its workers (stale socket file, refused: 502) and a stuck app (Caddy's
    response_header_timeout and read_timeout: 504) against the client's statuses and
    Caddy's error log. Error entries are attributed by the address Caddy dialled, the
    timeout without one by its file's app."""
    require(os.path.exists(CADDY), "caddy is not installed (Debian package caddy)")
    names = {k: unique_name("caddy-" + k) for k in ("fast", "thr", "stale", "stuck")}
    fast = gunicorn_factory(workers=2, bind="unix", name=names["fast"])
    thr = gunicorn_factory(worker_class="gthread", threads=2, workers=1, bind="tcp", name=names["thr"])
    stale = gunicorn_factory(workers=1, bind="unix", name=names["stale"])
    stuck = gunicorn_factory(workers=1, bind=["unix", "tcp"], name=names["stuck"], timeout=30)
    stuck_tcp = stuck.binds[1]
    sites = [Site(f"unix/{fast.unix_path}"), Site(thr.bind), Site(f"unix/{stale.unix_path}"),
             Site(f"unix/{stuck.unix_path}", transport="response_header_timeout 1s",
                  routes={"/r": (stuck_tcp, "read_timeout 1s"),
                          "/u": (f"unix/{stuck.unix_path}", "read_timeout 1s")})]
    errors, stuck_errors = tmp_path / "caddy-errors.log", tmp_path / "caddy-stuck-errors.log"
    error_logs = [(stuck_errors, "include http.log.error.log3"),
                  (errors, "include http.log.error\nexclude http.log.error.log3")]
    with running_caddy(tmp_path, sites, error_logs):
        files = [f"{names[k]}={s.access_log}" for k, s in zip(names, sites)]
        files += [f"{names['stuck']}={stuck_errors}", str(errors)]
        args = [a for f in files for a in ("--logs.file", f)]
        with running_exporter(tmp_path, *args, "--no-collector.postgres", "--no-collector.statsd") as base:
            poll(lambda: all(value(scrape(base), "gunicorn_up", app=n) == 1 for n in names.values()),
                 30, interval=0.2, message="the exporter did not see the four apps")
            client: dict[str, list[tuple[int, float]]] = {k: [] for k in names}

            def get(key: str, path: str, n: int = 1) -> None:
                for _ in range(n):
                    t0 = time.monotonic()
                    status, _ = http_get(("127.0.0.1", sites[list(names).index(key)].port), path)
                    client[key].append((status, time.monotonic() - t0))

            get("fast", "/status?code=200&seconds=0.1", 6)
            get("fast", "/status?code=500", 3)
            get("fast", "/status?code=404", 2)
            get("thr", "/slow?seconds=0.05", 5)
            get("stale", "/", 2)
            get("stuck", "/slow?seconds=3", 2)          # response_header_timeout: 504
            get("stuck", "/r/slow?seconds=3", 1)        # read_timeout, TCP: 504
            get("stuck", "/u/slow?seconds=1.5", 1)      # read_timeout, unix: not applied
            fast.stop()                                 # graceful: the socket file goes
            get("fast", "/", 3)
            thr.stop()                                  # TCP: nothing listens
            get("thr", "/", 3)
            workers = stale.worker_pids()
            stale.kill_master()                         # the socket file stays ...
            for pid in workers:                         # ... and nobody listens on it
                os.kill(pid, signal.SIGKILL)
            poll(lambda: _refused(stale.unix_path), 10, message="the stale socket still accepts")
            get("stale", "/", 3)

            def events(s, app: str, name: str) -> float:
                return value(s, "gunicorn_log_events_total", app=app, signature=name) or 0

            want = {("fast", "caddy_upstream_missing"): 3, ("thr", "caddy_connect_refused"): 3,
                    ("stale", "caddy_connect_refused"): 3, ("stuck", "caddy_upstream_timeout"): 3}
            s = poll(lambda: (s := scrape(base)) and all(
                events(s, names[k], sig) >= n for (k, sig), n in want.items()) and all(
                sum(_requests(s, names[k]).values()) >= len(client[k]) for k in names) and s,
                30, interval=0.3, message="the exporter did not count what Caddy logged")

    # the client's status codes, Caddy's access logs and the exporter agree, per app
    for key, site in zip(names, sites):
        logged = [e for e in _caddy_lines(site.access_log) if e["logger"].startswith("http.log.access")]
        assert Counter(str(st) for st, _ in client[key]) == Counter(str(e["status"]) for e in logged) \
            == _requests(s, names[key]), key
        total = value(s, "gunicorn_request_duration_seconds_sum", app=names[key], source="proxy_log")
        count = value(s, "gunicorn_request_duration_seconds_count", app=names[key], source="proxy_log")
        assert count == len(logged) and total == pytest.approx(sum(e["duration"] for e in logged), abs=1e-6)
        assert total <= sum(t for _, t in client[key])   # the client waited at least that long
        assert events(s, names[key], "http_response") == len(logged)
        for code in (502, 504):
            assert events(s, names[key], f"http_{code}") == sum(st == code for st, _ in client[key])
    assert [st for st, _ in client["fast"][-3:]] == [502] * 3
    assert [st for st, _ in client["stuck"]] == [504] * 3 + [200]
    assert all(0.9 < t < 2.5 for _, t in client["stuck"][:3])  # Caddy's 1 s, not the app's 3 s
    # Caddy 2.6 applies read_timeout to TCP upstreams only (what the doctor assumes)
    assert client["stuck"][3][1] > 1.5
    # the proxy signatures against Caddy's error logs: one per error entry, by the
    # address Caddy dialled (the app had gone), or the file's app for the timeout
    msgs = Counter(e["msg"] for e in _caddy_lines(errors))
    assert msgs == {f"dial unix {fast.unix_path}: connect: no such file or directory": 3,
                    f"dial tcp {thr.bind}: connect: connection refused": 3,
                    f"dial unix {stale.unix_path}: connect: connection refused": 3}
    stuck_msgs = Counter(re.sub(r"^read tcp 127\.0\.0\.1:\d+->", "read tcp ->", e["msg"])
                         for e in _caddy_lines(stuck_errors))
    assert stuck_msgs == {"net/http: timeout awaiting response headers": 2,
                          f"read tcp ->{stuck_tcp}: i/o timeout": 1}, stuck_msgs
    for (key, sig), n in want.items():
        assert events(s, names[key], sig) == n, (key, sig)
    caddy_sigs = [x.name for x in caddy.SIGNATURES]
    assert sum(v for (n, lbl), v in s.items() if n == "gunicorn_log_events_total"
               and dict(lbl)["signature"] in caddy_sigs) == sum(want.values())
    assert all(value(s, "gunicorn_log_access_unparsed_lines_total", file=str(x.access_log)) == 0
               for x in sites)


def _refused(path: str) -> bool:
    with socket.socket(socket.AF_UNIX) as c:
        return c.connect_ex(path) == errno.ECONNREFUSED


def _requests(s, app: str) -> Counter:
    return Counter({dict(lbl)["status"]: int(v) for lbl, v in
                    select(s, "gunicorn_requests_total", app=app, source="proxy_log").items()})


# --- the doctor reads a Caddyfile ---------------------------------------------------

CADDYFILE = """\
{
\tadmin off
\t# a comment { with a brace
}
(proxied) {
\treverse_proxy unix//run/snip.sock {
\t\ttransport http {
\t\t\tresponse_header_timeout 45s
\t\t}
\t}
}
shop.example.com, www.shop.example.com {
\tencode gzip
\thandle_path /api/* {
\t\treverse_proxy @api localhost:8000 127.0.0.1:8001 {
\t\t\tto unix//run/shop.sock
\t\t\ttransport http {
\t\t\t\tdial_timeout 2s
\t\t\t\tread_timeout 1m30s
\t\t\t\tresponse_header_timeout "2m"
\t\t\t}
\t\t}
\t}
\treverse_proxy /slow/* http://10.0.0.5:9000 {
\t\ttransport http {
\t\t\tresponse_header_timeout 500ms
\t\t}
\t}
\timport sites/*.caddy
\timport proxied
}
:8080 {
\treverse_proxy unix//run/forever.sock [::1]:7000 {$UPSTREAM} {http.request.header.X}
\treverse_proxy /php/* unix//run/php.sock {
\t\ttransport fastcgi
\t}
}
"""


def test_caddyfile_timeouts_literal(tmp_path):
    (tmp_path / "sites").mkdir()
    (tmp_path / "sites" / "extra.caddy").write_text(
        "reverse_proxy unix//run/extra.sock {\n\ttransport http {\n\t\tread_timeout 10s\n\t}\n}\n")
    (tmp_path / "Caddyfile").write_text(CADDYFILE)
    cfg = doctor_caddy.load(str(tmp_path / "Caddyfile"))
    assert cfg.problems == [] and len(cfg.files) == 2
    f = str(tmp_path / "Caddyfile")

    def t(listener):
        return doctor_caddy.timeout_for(cfg, [listener])
    # read_timeout (90 s) is shorter than response_header_timeout (120 s), on TCP
    assert t("127.0.0.1:8000") == (90.0, f"read_timeout at {f}:19 for the reverse_proxy at {f}:15")
    assert t("[::1]:8000")[0] == t("0.0.0.0:8001")[0] == 90.0      # localhost; wildcard listener
    # ... but not on a unix socket: there only response_header_timeout counts
    assert t("unix:/run/shop.sock") == (120.0, f"response_header_timeout at {f}:20 for the "
                                               f"reverse_proxy at {f}:15")
    assert t("10.0.0.5:9000")[0] == 0.5
    assert t("unix:/run/snip.sock")[0] == 45.0                     # from the snippet
    # no response_header_timeout: Caddy waits for ever (0), read_timeout ignored on unix
    got = t("unix:/run/extra.sock")
    assert got[0] == 0.0 and "read_timeout does not apply to unix sockets" in got[1], got
    assert t("unix:/run/forever.sock")[0] == 0.0 and t("[::1]:7000")[0] == 0.0
    assert t("unix:/run/php.sock") is None and t("127.0.0.1:9999") is None
    assert [doctor_caddy.parse_time(x) for x in ("30s", "1m30s", "500ms", "1.5h", "2d", "30", "", "5x")] \
        == [30, 90, 0.5, 5400, 172800, None, None, None]
    # a single site without braces, and a Caddyfile that does not parse
    (tmp_path / "one").write_text("localhost:80\nreverse_proxy unix//run/one.sock\n")
    assert doctor_caddy.timeout_for(doctor_caddy.load(str(tmp_path / "one")), ["unix:/run/one.sock"])[0] == 0
    for bad in ("x {\n\treverse_proxy unix//run/a.sock\n", "}\n", 'x {\n\tfoo "unterminated\n}\n'):
        (tmp_path / "bad").write_text(bad)
        got = doctor_caddy.load(str(tmp_path / "bad"))
        assert got.passes == [] and got.problems, bad
    (tmp_path / "loop").write_text("x {\n\timport loop\n}\n")            # imports itself
    assert "read already" in "\n".join(doctor_caddy.load(str(tmp_path / "loop")).problems)


def test_timeout_vs_caddy_literal():
    from tests.test_doctor import _app, _one, _run
    from exporter.doctor import rules
    from exporter.doctor.model import Facts, NginxConfig, ProxyPass
    caddy_cfg = NginxConfig("/etc/caddy/Caddyfile", passes=[
        ProxyPass(("unix:/run/slow.sock",), 20.0, "response_header_timeout at /C:3"),
        ProxyPass(("unix:/run/zero.sock",), 0.0, "Caddy's default"),
        ProxyPass(("unix:/run/ok.sock",), 0.0, "Caddy's default")])
    nginx_cfg = NginxConfig("/etc/nginx/nginx.conf", passes=[
        ProxyPass(("unix:/run/ok.sock",), 10.0, "proxy_read_timeout at /n:1")])

    def app(name, timeout):
        return _app(name, timeout=timeout, listeners=[ListenerSnapshot(f"unix:/run/{name}.sock", "unix", 0, 128)])
    facts = Facts(caddy=caddy_cfg)
    f = _one(_run(rules.timeout_vs_proxy, app("slow", 30), facts=facts), "timeout-vs-proxy")
    assert f.evidence["proxy_timeout"].value == 20.0 and "--timeout a little below" in f.advice
    f = _one(_run(rules.timeout_vs_proxy, app("zero", 0), facts=facts), "timeout-vs-proxy")
    assert f.evidence["proxy_timeout"].value == 0.0 and "waits for ever too" in f.advice
    assert _run(rules.timeout_vs_proxy, app("zero", 30), facts=facts) == []   # gunicorn gives up first
    # nginx (10 s) and a Caddy that waits for ever in front of one app: the shorter counts
    f = _one(_run(rules.timeout_vs_proxy, app("ok", 30), facts=Facts(nginx=nginx_cfg, caddy=caddy_cfg)),
             "timeout-vs-proxy")
    assert f.evidence["proxy_timeout"].value == 10.0


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_doctor_reads_the_caddyfile_caddy_runs(gunicorn_factory, tmp_path):
    """The doctor against real gunicorns and a Caddyfile that the real Caddy validates:
    gunicorn's 30 s behind Caddy's 20 s response_header_timeout (unix socket) and
    --timeout 0 behind a reverse_proxy with no timeout (TCP, via localhost) are W8; 30 s
    behind a Caddy that waits for ever is not."""
    from tests.test_doctor import _find, _name, doctor
    require(os.path.exists(CADDY), "caddy is not installed (Debian package caddy)")
    behind, zero, fine = _name("cdy20"), _name("cdy0"), _name("cdyok")
    g1 = gunicorn_factory(workers=1, bind="unix", name=behind, timeout=30)
    g2 = gunicorn_factory(workers=1, bind="tcp", name=zero, timeout=0)
    g3 = gunicorn_factory(workers=1, bind="unix", name=fine, timeout=30)
    conf = tmp_path / "Caddyfile"
    conf.write_text(f"{{\n\tadmin off\n}}\nhttp://:1 {{\n"
                    f"\treverse_proxy unix/{g1.unix_path} {{\n\t\ttransport http {{\n"
                    f"\t\t\tresponse_header_timeout 20s\n\t\t}}\n\t}}\n}}\n"
                    f"http://:2 {{\n\treverse_proxy localhost:{g2.port}\n}}\n"
                    f"http://:3 {{\n\treverse_proxy unix/{g3.unix_path}\n}}\n")
    r = subprocess.run([CADDY, "validate", "--config", str(conf), "--adapter", "caddyfile"],
                       capture_output=True, text=True, timeout=30,
                       env={"HOME": str(tmp_path), "PATH": os.environ.get("PATH", "")})
    assert r.returncode == 0, r.stderr
    _rc, findings, _ = doctor(behind, zero, fine, caddy_config=str(conf))
    f = _find(findings, behind, "timeout-vs-proxy")
    assert (f["evidence"]["timeout"]["value"], f["evidence"]["proxy_timeout"]["value"]) == (30, 20)
    assert f"response_header_timeout at {conf}:7" in f["evidence"]["proxy_timeout"]["source"]
    f = _find(findings, zero, "timeout-vs-proxy")
    assert f["evidence"]["proxy_timeout"]["value"] == 0 and "waits for ever" in f["advice"]
    assert _find(findings, fine, "timeout-vs-proxy") is None
