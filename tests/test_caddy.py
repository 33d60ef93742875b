"""Caddy in front of gunicorn: its JSON access and reverse_proxy error lines, on the lines
a real Caddy 2.6 wrote (literal, fast) and against a real Caddy (slow): requests and
latency per app against the client's own clock and status codes and Caddy's own log;
refused and missing upstreams (a stopped app, on a unix socket and on TCP) and timeouts
(a stuck app) counted as Caddy's log and the client saw them."""

from __future__ import annotations

import asyncio
import json

import pytest

from exporter.collectors.logs import LogsCollector
from exporter.logs import caddy
from exporter.logs.files import LogFile
from exporter.parsing import ConfigError, parse_signatures
from exporter.snapshot import AppSnapshot, GunicornSnapshot, ListenerSnapshot

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
    for value, want in (("unix//run/shop.sock", "unix:/run/shop.sock"),
                        ("tcp/127.0.0.1:8000", "127.0.0.1:8000"), ("127.0.0.1:8000", "127.0.0.1:8000"),
                        ("tcp6/[::1]:8000", "[::1]:8000"), ("unix/relative", None), ("x" * 300, None),
                        (8000, None), ("", None)):
        line = ACCESS_200[:-1] + ',"upstream":' + json.dumps(value) + "}"
        assert caddy.parse(line).address == want, value


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
        ACCESS_200.replace('"duration":0.001532858', '"duration":"1ms"'),
        ACCESS_200[:-1] + ',"x":' + "[" * 20 + "]" * 20 + "}",           # deeper than Caddy writes
        '{"logger":"http.log.access","x":' + "[" * 100000 + "]" * 100000 + "}",   # too long
        '{"logger":"http.log.access","x":' + "[" * 5000,                 # not JSON
        ACCESS_200[:-2],                                                 # cut
        ACCESS_200[:-1] + ',"pad":"' + "a" * caddy.MAX_LINE + '"}',
    ]
    for line in bad:
        assert caddy.parse(line) is False, line[:120]
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
    req = snap.requests.apps
    assert req["shop"].statuses == {"200": 1} and req["edge"].statuses == {"200": 1, "504": 1}
    assert req["edge"].duration_count == 2
    assert abs(req["edge"].duration_sum - (1.002022757 + 0.001532858)) < 1e-9
    assert c.access.files == {path: [3, 1]}   # three access entries, one malformed


def test_caddy_signature_names_are_reserved():
    with pytest.raises(ConfigError, match="built in"):
        parse_signatures(["caddy_connect_refused=x"])
