"""Access log formats against hostile clients, on literal lines (fast): every preset and
documented format, each field a client writes set to values that try to shift the
columns, rendered the way the server writes them (gunicorn's own SafeAtoms escaping,
nginx's default escaping, uvicorn's none), must parse to the true status, duration and
request start. Then the pieces of queue time and routes.

The same attacks through real servers: tests/test_log_forgery.py.
"""

from __future__ import annotations

import itertools

import pytest
from gunicorn.glogging import SafeAtoms

from exporter.logs.access import (AccessLog, DEFAULT_COMPILED, MAX_QUEUE, Queue,
                                  parse_access_formats, request_start, upstream_address)
from exporter.logs.formats import PRESETS, compile_format
from exporter.logs.routes import MAX_PATH, RouteError, parse_route, parse_routes, path_of

HOSTILE = [
    "", "-", '"', '""', "\\", "x\\", '\\"', '" "', "a b c", '" 502 1 "', '\\" 200 5 \\"',
    'x" 999999999999.5 y', " 999999999999.5", '" 200 5 "-" "-" 1', '"t=1" 1', "t=1",
    "[CRITICAL] WORKER TIMEOUT (pid:1)", '- - [01/Jan/2020:00:00:00 +0000] "GET / HTTP/1.1" 200 1 "-" "-"',
    '" "t=1700000000.0" 999999999', "\\\\\\", '"\\', "x" * 300,
]
# gunicorn splits the request line at its spaces: a target holds none
URIS = ["/", '/a"b', "/a\\", '/x"502"1"', '/%22?q="1"', '/""t=1"5', '/\\"']
TRUE_STATUS, TRUE_MICROS, TRUE_START = "500", 1234, "t=1700000000.250"


def gunicorn_line(fmt: str, **client) -> str:
    atoms = {"h": "10.0.0.1", "l": "-", "u": "-", "t": "[01/May/2024:10:00:00 +0000]",
             "r": "GET %s HTTP/1.1" % client.pop("uri", "/"), "s": TRUE_STATUS, "b": "10",
             "f": "-", "a": "curl/8", "D": str(TRUE_MICROS), "L": "%.6f" % (TRUE_MICROS / 1e6),
             "p": "<42>", "{x-request-start}i": TRUE_START, "{x-request-id}i": "-"}
    atoms.update(client)
    return fmt % SafeAtoms(atoms)      # gunicorn's own escaping: " -> \"


GUNICORN_FORMATS = [PRESETS["gunicorn"], PRESETS["gunicorn-timed"],
                    PRESETS["gunicorn"] + " %(D)s", PRESETS["gunicorn"] + " %(L)s %(p)s",
                    '%(t)s %(s)s %(D)s "%(r)s" "%(a)s"']


@pytest.mark.parametrize("fmt", GUNICORN_FORMATS)
def test_gunicorn_formats_read_the_true_fields_whatever_the_client_sends(fmt):
    f = compile_format(fmt)
    want_seconds = TRUE_MICROS / 1e6 if f.scale else None
    cases = [dict(u=v) for v in HOSTILE] + [dict(f=v) for v in HOSTILE] + \
        [dict(a=v) for v in HOSTILE] + [dict(uri=u) for u in URIS] + \
        [{"{x-request-start}i": v} for v in HOSTILE] + \
        [dict(f=x, a=y) for x, y in itertools.product(HOSTILE[:12], HOSTILE[:12])]
    for client in cases:
        line = gunicorn_line(fmt, **dict(client))
        m = f.regex.match(line)
        assert m is not None, (fmt, client, line)
        assert m.group("status") == TRUE_STATUS, (client, line)
        if f.scale:
            assert float(m.group("dur")) * f.scale == pytest.approx(want_seconds), (client, line)
        if f.has_start and "{x-request-start}i" not in client:
            assert m.group("start") == TRUE_START, (client, line)
        assert m.group("request").split(" ")[0] == "GET"


def nginx_escape(v: str) -> str:
    """nginx's default log escaping: ", \\ and bytes outside 0x20-0x7e as \\xHH."""
    return "".join(c if 0x20 <= ord(c) < 0x7f and c not in '"\\' else "\\x%02X" % ord(c) for c in v)


@pytest.mark.parametrize("preset", ["nginx", "nginx-upstream", "combined"])
def test_nginx_formats_read_the_true_fields_whatever_the_client_sends(preset):
    f = compile_format(preset)
    for user, ref, ua, uri in itertools.product(HOSTILE[:10], HOSTILE[:10], HOSTILE[:10], URIS[:3]):
        line = (f'10.0.0.1 - {nginx_escape(user) or "-"} [01/May/2024:10:00:00 +0000] '
                f'"GET {nginx_escape(uri)} HTTP/1.1" 502 157 "{nginx_escape(ref)}" "{nginx_escape(ua)}"')
        if preset != "combined":
            line += " 0.512 0.500, 0.010"
        if preset == "nginx-upstream":
            line += ' "unix:/run/shop.sock"'
        assert f.parse(line) == ("502", 0.512 if preset != "combined" else None), line
        if preset == "nginx-upstream":
            assert f.regex.match(line).group("upstream") == "unix:/run/shop.sock"


def test_uvicorn_lines_count_by_status_even_with_raw_quotes():
    f = compile_format("uvicorn")
    assert f.parse('127.0.0.1:51234 - "GET /items/1?q=a HTTP/1.1" 200') == ("200", None)
    # uvicorn quotes the path but writes the query string raw (h11 allows no space in it)
    assert f.parse('127.0.0.1:51234 - "GET /x?a="500" HTTP/1.1" 200') == ("200", None)
    assert f.parse('127.0.0.1:51234 - "GET /x?a=%22 HTTP/1.1" 500') == ("500", None)
    assert f.dialect == "uvicorn" and f.scale is None


@pytest.mark.parametrize("fmt", [
    '%(a)s %(s)s %(f)s',                                    # unquoted, nothing between
    '"%(a)s" %(s)s "%(f)s"',                                # the quote closing a can be the client's
    '%(h)s %(t)s "%(r)s" %(s)s "%(a)s" %(D)s "%({x-request-id}i)s"',
    '$remote_user $status $http_user_agent',
])
def test_formats_a_client_could_shift_are_refused(fmt):
    with pytest.raises(ValueError, match="could shift"):
        compile_format(fmt)


def test_presets_compile_and_defaults_try_the_most_specific_first():
    for name in PRESETS:
        compile_format(name)
    assert [f.text for f in DEFAULT_COMPILED] == [PRESETS[n] for n in
                                                 ("nginx-upstream", "nginx", "gunicorn-timed",
                                                  "gunicorn", "uvicorn")]
    for bad in ("%(h)s %(b)s", "%(s)s%(b)s", "$status$request_time", "x" * 2000,
                " ".join(f'"%({{h{i}}}i)s"' for i in range(9)) + " %(s)s"):
        with pytest.raises(ValueError):
            compile_format(bad)
    with pytest.raises(ValueError):
        parse_access_formats(["gunicorn"] * 17)


def test_durations_past_the_apps_limit_are_malformed_not_observed():
    log = AccessLog(parse_access_formats([PRESETS["gunicorn"] + " %(D)s"]))
    log.limits["shop"] = 35.0
    assert log.feed(gunicorn_line(PRESETS["gunicorn"] + " %(D)s", D="40000000"), lambda: "shop", "/a")
    assert log.feed(gunicorn_line(PRESETS["gunicorn"] + " %(D)s", D="1000"), lambda: "shop", "/a")
    st = log.table.apps["shop"]
    assert st.statuses == {"500": 2.0} and st.count == 1 and st.sum == pytest.approx(0.001)
    assert log.files["/a"] == [2, 0, 1]


def test_upstream_addr_names_the_app_behind_one_nginx():
    apps = {"unix:/run/shop.sock": "shop", "127.0.0.1:8001": "blog"}
    log = AccessLog(parse_access_formats(["nginx-upstream"]), upstream_app=apps.get)
    base = '10.0.0.1 - - [01/May/2024:10:00:00 +0000] "GET / HTTP/1.1" 200 1 "-" "-" 0.1 0.1'
    assert log.feed(base + ' "unix:/run/shop.sock"', lambda: "edge") == ("shop", "200")
    assert log.feed(base.replace(" 0.1 0.1", " 0.2 0.1, 0.1") + ' "127.0.0.1:9, 127.0.0.1:8001"',
                    lambda: "edge") == ("blog", "200")
    assert log.feed(base + ' "-"', lambda: "edge") == ("edge", "200")
    assert log.feed(base + ' "10.9.9.9:80"', lambda: "edge") == ("edge", "200")
    assert upstream_address("a:1, b:2 : c:3") == "c:3"


def test_request_start_units_as_new_relic_reads_them():
    now = 1_700_000_100.0
    assert request_start("t=1700000000.250", now) == pytest.approx(1_700_000_000.25)
    assert request_start("t=1700000000250", now) == pytest.approx(1_700_000_000.25)
    assert request_start("t=1700000000250000", now) == pytest.approx(1_700_000_000.25)
    assert request_start("1700000000250", now) == pytest.approx(1_700_000_000.25)
    for bad in ("", "t=", "t=abc", "t=1.2.3", "t=-5", "t=12", "t=" + "9" * 30, "t=1e9"):
        assert request_start(bad, now) is None, bad


def test_queue_time_is_end_minus_duration_minus_arrival_and_skew_is_counted():
    q = Queue()
    q.add("shop", "t=1000000000.000", 0.5, 1_000_000_003.0)        # waited 2.5 s
    q.add("shop", "t=1000000004.000", 0.5, 1_000_000_003.0)        # the proxy's clock ahead
    q.add("shop", "t=1000000000.000", 0.5, 1_000_000_000.0 + MAX_QUEUE + 1)
    q.add("shop", "t=garbage", 0.5, 1_000_000_003.0)
    q.add("shop", "t=1000000000.000", 0.5, None)                   # not read at once
    snap = q.snapshot()
    a = snap.apps["shop"]
    assert a.duration_count == 1 and a.duration_sum == pytest.approx(2.5)
    assert snap.skew == {"shop": 3} and snap.unmeasured == {"shop": 1}


def test_routes_on_django_style_paths_with_ids():
    r = parse_routes([r"user=^/users/\d+/?$", r"user_orders=^/users/\d+/orders/(\d+/)?$",
                      r"checkout=^/checkout/"])
    assert r.route("GET /users/12/ HTTP/1.1") == "user"
    assert r.route("GET /users/12/orders/ HTTP/1.1") == "user_orders"
    assert r.route("POST /users/12/orders/99/?page=2 HTTP/1.1") == "user_orders"
    assert r.route("GET /checkout/cart-7f3a HTTP/2.0") == "checkout"
    assert r.route("GET /users/12/orders/99/refund HTTP/1.1") == "other"
    assert r.route(None) == "other" and r.names == ("user", "user_orders", "checkout", "other")
    assert len(path_of("GET /" + "a" * 100000 + " HTTP/1.1")) == MAX_PATH
    log = AccessLog(parse_access_formats(["gunicorn"]), routes=r)
    log.feed(gunicorn_line(PRESETS["gunicorn"], uri="/users/7/"), lambda: "shop")
    log.feed(gunicorn_line(PRESETS["gunicorn"], uri="/users/8/"), lambda: "shop")
    log.feed(gunicorn_line(PRESETS["gunicorn"], uri="/admin/"), lambda: "shop")
    snap = log.table.snapshot()
    assert snap.apps == {} and {k: v.statuses for k, v in snap.routes.items()} == {
        ("shop", "user"): {"500": 2.0}, ("shop", "other"): {"500": 1.0}}


def test_route_regexes_are_bounded():
    for bad in ("noequals", "=x", "other=x", "bad name=x", "x=", "x=" + "a" * 300,
                r"x=(a)\1", "x=(?=a)", "x=(?<!a)b", "x=["):
        with pytest.raises(RouteError):
            parse_route(bad)
    with pytest.raises(RouteError, match="max-routes"):
        parse_routes([f"r{i}=^/{i}" for i in range(3)], max_routes=2)
    # a pattern that backtracks exponentially in Python's re is linear in RE2
    name, regex = parse_route("x=(a|aa)*b")
    assert regex.search("a" * MAX_PATH) is None


def test_without_google_re2_routes_are_refused_with_the_reason(monkeypatch):
    """Debian's package runs without google-re2 (bookworm has none): no route, no import;
    a route asked for stops the exporter with the reason."""
    import sys
    monkeypatch.setitem(sys.modules, "re2", None)     # import re2 -> ImportError
    assert parse_routes([]) is None
    with pytest.raises(RouteError, match="google-re2"):
        parse_routes(["x=^/x"])


def test_a_file_of_mixed_formats_parses_every_line():
    # the format of a file's last line is tried first; any other still fits after it
    log = AccessLog(DEFAULT_COMPILED)
    nginx = ('10.0.0.1 - - [01/May/2024:10:00:00 +0000] "GET / HTTP/1.1" 502 1 "-" "-" 0.1 0.1 "-"')
    uvicorn = '127.0.0.1:5 - "GET / HTTP/1.1" 404'
    gunicorn = gunicorn_line(PRESETS["gunicorn-timed"])
    for line in (nginx, gunicorn, gunicorn, uvicorn, nginx, uvicorn):
        assert log.feed(line, lambda: "shop", "/a")[1] in ("502", "500", "404"), line
    assert log.files["/a"] == [6, 0, 0]
    assert log.table.apps["shop"].statuses == {"500": 2.0, "404": 2.0}
    assert log.proxy.apps["shop"].statuses == {"502": 2.0}          # nginx's lines: proxy_log


def test_route_label_beside_statsd_series_renders_a_valid_exposition():
    from prometheus_client.exposition import generate_latest

    from exporter.metrics import render_requests
    from exporter.snapshot import AppRequests, RequestsSnapshot
    from tests.exposition import parse_strict, value
    routed = RequestsSnapshot("access_log", (0.1, 1.0), routes={
        ("shop", "user"): AppRequests({"200": 2}, [2, 0, 0], 0.1, 2),
        ("shop", "other"): AppRequests({"404": 1}, [0, 1, 0], 0.5, 1)})
    statsd = RequestsSnapshot("statsd", (0.1, 1.0), {"shop": AppRequests({"200": 3}, [3, 0, 0], 0.1, 3)})

    class Families:
        def collect(self):
            return iter(render_requests([statsd, routed]))
    text = generate_latest(Families()).decode()
    series = parse_strict(text)
    assert value(series, "gunicorn_requests_total", app="shop", source="access_log", status="200",
                 route="user") == 2
    assert value(series, "gunicorn_request_duration_seconds_count", app="shop", source="access_log",
                 route="other") == 1
    assert 'gunicorn_requests_total{app="shop",route="",source="statsd",status="200"} 3.0' in text
