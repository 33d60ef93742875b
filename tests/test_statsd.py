"""Requests from gunicorn's statsd stream and access logs (docs/requests.md).

Pure parsers on literal input first; then real gunicorn masters with --statsd-host
pointing at a real exporter: counts per status and the duration histogram against what
the client measured, two apps without a prefix told apart by the kernel, the access log
of the same run, fuzzed datagrams, and a statsd port another socket holds. The host runs
other tests' gunicorns and exporters: only this file's own apps are asserted on.
"""

from __future__ import annotations

import random
import socket
import struct
import time
import uuid

import pytest
from prometheus_client.utils import floatToGoString

from exporter.logs.access import AccessLog, compile_format, parse_access_formats
from exporter.metrics import render_requests
from exporter.parsing import ConfigError, parse_receive_buffer, parse_statsd_prefixes
from exporter.statsd.attribution import match
from exporter.statsd.parse import (DURATION, IGNORED, LOG, STATUS, classify, parse_line,
                                   parse_prefix_map, status_label)
from exporter.statsd.senders import KERNEL, PENDING, UNKNOWN, Route, SenderTable
from exporter.statsd.stats import BOUNDS, Stats
from exporter.statsd.udptable import UdpSocket, decode_udp, parse_proc_net_udp, plain_address
from tests.exposition import parse_strict, scrape, select, value
from tests.harness.procs import poll
from tests.harness.servers import running_exporter

APP = f"sd-{uuid.uuid4().hex[:6]}"
ACCESS_FORMAT = '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s" %(D)s'


# --- statsd lines ------------------------------------------------------------------

def test_parse_line_accepts_statsd_and_dogstatsd():
    assert parse_line(b"gunicorn.request.duration:12.5|ms") == (b"gunicorn.request.duration", (12.5,), b"ms", 1.0)
    assert parse_line(b"gunicorn.requests:1|c|@1.0") == (b"gunicorn.requests", (1.0,), b"c", 1.0)
    assert parse_line(b"x.gunicorn.log.error:1|c|@0.1|#env:prod,app:shop") == \
        (b"x.gunicorn.log.error", (1.0,), b"c", 0.1)
    assert parse_line(b"gunicorn.workers:-2|g") == (b"gunicorn.workers", (-2.0,), b"g", 1.0)
    assert parse_line(b"t:1:2:3|h|#a|c:abc|T1700000000") == (b"t", (1.0, 2.0, 3.0), b"h", 1.0)
    assert parse_line(b"d:4|d\r") == (b"d", (4.0,), b"d", 1.0)


@pytest.mark.parametrize("line", [
    b"", b"noseparators", b"name:1", b"name|c", b":1|c", b"name:abc|c", b"name:1|x",
    b"name:1|c|@0", b"name:1|c|@1.5", b"name:1|c|@x", b"name:nan|ms", b"name:inf|c",
    b"name:1|c||", b"n:" + b"1:" * 70 + b"1|c", b"n" * 600 + b":1|c", b"n:1|c" + b"x" * 5000])
def test_parse_line_rejects_malformed(line):
    assert parse_line(line) is None


def test_classify_gunicorn_names():
    assert classify(b"gunicorn.request.duration") == (DURATION, b"", "")
    assert classify(b"gunicorn.request.status.404") == (STATUS, b"", "404")
    assert classify(b"shop.gunicorn.request.status.299") == (STATUS, b"shop.", "other")
    assert classify(b"a.b.gunicorn.log.exception") == (LOG, b"a.b.", "exception")
    assert classify(b"gunicorn.log.info")[0] == IGNORED
    assert classify(b"gunicorn.requests")[0] == IGNORED
    assert classify(b"gunicorn.workers")[0] == IGNORED
    assert classify(b"mygunicorn.requests")[0] == IGNORED
    assert classify(b"gunicorn.request.status.20x")[0] == IGNORED
    assert status_label("418") == "418" and status_label(b"499") == "499"
    assert status_label("299") == status_label("600") == "other"


def test_prefix_map():
    assert parse_prefix_map(["shop.=web", "api", {"x": "y"}]) == {"shop": "web", "api": "api", "x": "y"}
    for bad in (["a b=c"], ["=x"], ["p=has space"], ["p=a", "p=b"]):
        with pytest.raises(ValueError):
            parse_prefix_map(bad)
    assert parse_statsd_prefixes("shop=web") == {"shop": "web"}
    with pytest.raises(ConfigError):
        parse_statsd_prefixes("p:x=y")
    assert parse_receive_buffer("8MiB") == 8 << 20 and parse_receive_buffer("0") == 0
    with pytest.raises(ConfigError):
        parse_receive_buffer("1000")


def test_histogram_buckets_are_inclusive():
    st = Stats()
    for v in (0.0, 0.005, 0.0051, 60.0, 61.0):
        st.observe(v)
    assert st.buckets[0] == 2 and st.buckets[1] == 1          # le=0.005 holds 0.005
    assert st.buckets[len(BOUNDS) - 1] == 1 and st.buckets[-1] == 1
    assert st.count == 5 and st.sum == pytest.approx(121.0101)


# --- the sender table: per-sender accumulation, folding ----------------------------------

A, B, C = ("127.0.0.1", 40001), ("127.0.0.1", 40002), ("10.9.9.9", 40003)
REQUEST = b"gunicorn.request.duration:30.0|ms\ngunicorn.requests:1|c|@1.0\ngunicorn.request.status.200:1|c|@1.0"


def test_senders_fold_into_apps_only_once_proven():
    t = SenderTable({"edge": "edgeapp"})
    t.feed(REQUEST, A)
    t.feed(b"gunicorn.request.status.503:1|c|@0.5\ngunicorn.log.error:2|c", A)
    t.feed(b"edge.gunicorn.request.status.500:1|c\nedge.gunicorn.request.duration:5|ms", C)
    t.feed(b"bogus\n\nother.metric:1|c\ngunicorn.request.duration:-1|ms", B)
    assert (t.packets, t.malformed, t.ignored) == (4, 2, 2)
    assert t.plan(0.0) == ([], [A, C, B])
    # nothing known yet: kept
    t.apply({A: ("not_found", None), B: ("not_found", None), C: ("gone", None)}, 0.0, 0)
    assert t.senders[A].state == PENDING and t.senders[C].state == UNKNOWN
    assert set(t.apps.apps) == {"edgeapp"}                      # C by its prefix
    edge = t.apps.apps["edgeapp"]
    assert edge.statuses == {"500": 1.0} and edge.count == 1 and edge.buckets[0] == 1
    # A proven: what it sent before the table read that proved it is nobody's for sure
    route = Route(99, 1234, 5678, "shop")
    assert t.plan(1.0) == ([], [A, B])
    t.apply({A: ("kernel", route)}, 1.0, 1)
    assert "shop" not in t.apps.apps and t.unattributed["unknown_sender"] == 4  # lines
    # from then on, verified at every collection, its lines are shop's
    t.feed(REQUEST, A)
    t.feed(b"gunicorn.request.status.503:1|c|@0.5\ngunicorn.log.error:2|c", A)
    assert t.plan(2.0) == ([(A, route)], [B])
    t.apply({A: ("kernel", route), B: ("not_found", None)}, 2.0, 2)
    shop = t.apps.apps["shop"]
    assert shop.statuses == {"200": 1.0, "503": 2.0} and shop.levels == {"error": 2.0}
    assert shop.count == 1 and shop.sum == pytest.approx(0.03) and shop.buckets[3] == 1
    # B: a local socket no gunicorn holds, two collections after its first packet
    assert t.senders[B].state == UNKNOWN
    t.feed(b"gunicorn.request.status.200:1|c", B)
    t.plan(3.0)
    t.apply({}, 3.0, 2)
    assert t.unattributed["unknown_sender"] == 5
    assert t.counts() == {PENDING: 0, KERNEL: 1, UNKNOWN: 1}
    # the proven socket closes: what came since the last check may be anyone's
    t.feed(b"gunicorn.request.status.200:1|c", A)
    t.plan(4.0)
    t.apply({A: ("gone", None)}, 4.0, 3)
    assert shop.statuses["200"] == 1.0 and t.unattributed["unknown_sender"] == 6
    t.plan(5.0)
    t.apply({}, 5.0, 3)
    assert A not in t.senders
    t.keep_apps({"other"})
    assert set(t.apps.apps) == {"edgeapp"}     # prefix-mapped apps are kept


def test_a_port_freed_or_sprayed_before_a_gunicorn_took_it_credits_nothing():
    """Attacks a local user can make on the source port (found in review): send from a
    port before a gunicorn binds it, or from one a proven gunicorn freed, then close."""
    t = SenderTable()
    shop = Route(7, 100, 1000, "shop")
    # pre-spray: the attacker sends from P and closes; the victim binds P; one lookup
    t.feed(b"gunicorn.request.status.503:5000|c", A)
    t.plan(0.0)
    t.apply({A: ("kernel", shop)}, 0.0, 0)
    assert "shop" not in t.apps.apps and t.unattributed["unknown_sender"] == 1
    # the victim is proven and counted; then it stops, and the attacker takes P
    t.feed(REQUEST, A)
    t.plan(1.0)
    t.apply({A: ("kernel", shop)}, 1.0, 1)
    assert t.apps.apps["shop"].statuses == {"200": 1.0}
    t.feed(b"gunicorn.request.status.500:10000|c", A)
    t.plan(2.0)
    t.apply({A: ("gone", None)}, 2.0, 2)
    assert t.apps.apps["shop"].statuses == {"200": 1.0}
    # P now belongs to another gunicorn's socket: nothing crosses from the old route
    t2 = SenderTable()
    t2.feed(REQUEST, A)
    t2.plan(0.0)
    t2.apply({A: ("kernel", shop)}, 0.0, 0)
    t2.feed(REQUEST, A)
    t2.plan(1.0)
    t2.apply({A: ("kernel", Route(8, 200, 2000, "api"))}, 1.0, 1)
    assert "shop" not in t2.apps.apps and "api" not in t2.apps.apps


def test_heavy_datagrams_cost_bounded_work_and_sums_stay_finite():
    t = SenderTable()
    packed = b"gunicorn.request.duration:" + b":".join([b"5"] * 64) + b"|ms"
    t.feed(b"\n".join([packed] * 400), A)
    st = t.senders[A].by_prefix[b""]
    assert st.count == 256                      # MAX_DATAGRAM_VALUES observations at most
    assert t.malformed == 400 - 4               # the rest counted, not parsed
    t.feed(b"gunicorn.request.status.500:1e300|c|@1e-300", B)        # rate and value bounds
    t.feed(b"gunicorn.request.status.500:999999999999|c|@0.000001", B)
    assert t.malformed == 400 - 4 + 1
    assert all(v < float("inf") for v in t.senders[B].by_prefix[b""].statuses.values())


def test_churned_one_shot_senders_do_not_crowd_out_an_app():
    t = SenderTable(max_senders=4)
    app = ("127.0.0.1", 40000)
    t.feed(REQUEST, app)
    t.feed(REQUEST, app)                        # an app sends again and again
    for port in range(1000, 3000):              # an attacker: one datagram per fresh port
        t.feed(b"gunicorn.request.status.200:1|c", ("127.0.0.1", port))
    assert app in t.senders and len(t.senders) == 4
    assert t.overflow.packets == 0 and t.unattributed["limit"] == 2000 - 3


def test_a_master_socket_connected_to_the_receiver_is_adopted_without_a_slot():
    """However full the table, a gunicorn master's statsd socket found at a collection is
    a proven sender from then on (review: a churn flood kept a new app unattributed)."""
    t = SenderTable(max_senders=2)
    for port in (1, 2, 1, 2):                   # two attacker senders, not one-shot
        t.feed(b"gunicorn.request.status.200:1|c", ("127.0.0.1", port))
    t.adopt({A: Route(9, 90, 900, "shop")})
    t.feed(REQUEST, A)
    assert t.senders[A].state == KERNEL and t.overflow.packets == 0
    t.plan(0.0)
    t.apply({}, 0.0, 0)
    assert t.apps.apps["shop"].statuses == {"200": 1.0}


def test_sender_and_prefix_limits_count_instead_of_growing():
    t = SenderTable(max_senders=2)
    for port in range(5):       # twice each: not one-shot, so not evicted for a newcomer
        t.feed(b"gunicorn.request.status.200:1|c", ("127.0.0.1", port))
        t.feed(b"gunicorn.request.status.200:1|c", ("127.0.0.1", port))
    assert len(t.senders) == 2 and t.overflow.packets == 6
    t.plan(0.0)
    t.apply({}, 0.0, 0)
    assert t.unattributed["limit"] == 6
    t.feed(b"\n".join(b"p%d.gunicorn.log.error:1|c" % i for i in range(30)), ("127.0.0.1", 0))
    assert len(t.senders[("127.0.0.1", 0)].by_prefix) == 16 and t.unattributed["limit"] == 6 + 14


def test_fuzzed_datagrams_never_raise():
    rng = random.Random(13)
    t = SenderTable({"p": "papp"})
    seeds = [REQUEST, b"p.gunicorn.log.warning:1|c|@0.25|#a:b", b"x:1:2|ms|@0.5"]
    for i in range(20000):
        if i % 3:
            data = bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 200)))
        else:
            data = bytearray(rng.choice(seeds))
            for _ in range(rng.randrange(1, 6)):
                data[rng.randrange(len(data))] = rng.choice(b":|@#\n.-e0123456789\x00\xff")
            data = bytes(data)
        t.feed(data, ("127.0.0.1", rng.randrange(3)))
    t.apply({("127.0.0.1", 0): ("kernel", Route(1, 1, 1, "fz"))}, 0.0, 0)
    snap = t.apps.snapshot()
    assert t.packets == 20000 and t.malformed > 1000
    for a in snap.apps.values():
        assert sum(a.buckets) == pytest.approx(a.duration_count)
        assert all(v >= 0 for v in a.statuses.values())


# --- the kernel's UDP table -----------------------------------------------------------

def _udp_message(seq, inode, sport, src, dport, dst, drops, family=socket.AF_INET):
    size = 4 if family == socket.AF_INET else 16
    sockid = struct.pack(">HH", sport, dport) + socket.inet_pton(family, src)[:size].ljust(16, b"\0") \
        + socket.inet_pton(family, dst)[:size].ljust(16, b"\0") + b"\0" * 4 + b"\xff" * 8
    msg = struct.pack("=BBBB", family, 1, 0, 0) + sockid + struct.pack("=IIIII", 0, 0, 0, 1000, inode)
    mem = struct.pack("=HH", 40, 7) + struct.pack("=9I", *([0] * 8 + [drops]))
    body = msg + mem
    return struct.pack("=IHHII", 16 + len(body), 20, 2, seq, 0) + body


def test_decode_udp_dump_on_literal_messages():
    done = struct.pack("=IHHIIi", 20, 3, 2, 7, 0, 0)
    data = (_udp_message(7, 111, 41361, "127.0.0.1", 8125, "127.0.0.1", 0)
            + _udp_message(7, 222, 8125, "127.0.0.1", 0, "0.0.0.0", 17)
            + _udp_message(7, 333, 53, "0.0.0.0", 0, "0.0.0.0", 0) + done)
    out: dict = {}
    decode_udp([(data, len(data))], 7, out, ports={41361}, inodes={222})
    assert out == {111: UdpSocket(111, socket.AF_INET, "127.0.0.1", 41361, "127.0.0.1", 8125, 1000, 0),
                   222: UdpSocket(222, socket.AF_INET, "127.0.0.1", 8125, "0.0.0.0", 0, 1000, 17)}
    # the raw-bytes prefilter (port at offset 4, inode at 68) against the full decode
    every: dict = {}
    decode_udp([(data, len(data))], 7, every)
    assert set(every) == {111, 222, 333}
    for ports, inodes, want in [({53}, None, {333}), ({8125}, {333}, {222, 333}),
                                (set(), {111}, {111}), ({1}, None, set())]:
        got: dict = {}
        decode_udp([(data, len(data))], 7, got, ports=ports, inodes=inodes)
        assert got == {i: every[i] for i in want}, (ports, inodes)


def test_proc_net_udp_and_address_matching():
    text = ("   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n"
            "  1: 0100007F:A191 0100007F:1FBD 01 00000000:00000000 00:00000000 00000000     0        0 111 2 0000000000000000 0\n"
            "  2: 0100007F:1FBD 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 222 2 0000000000000000 17\n"
            "  3: 00000000:A192 00000000:0000 07 00000000:00000000 00:00000000 00000000    33        0 333 2 0000000000000000 0\n")
    t = parse_proc_net_udp(text, socket.AF_INET)
    assert t[111].local_port == 41361 and t[111].remote_port == 8125 and t[222].drops == 17
    by_port: dict = {}
    for s in t.values():
        by_port.setdefault(s.local_port, []).append(s)
    assert match(by_port, "127.0.0.1", 41361, "127.0.0.1", 8125, 222) == ("one", t[111])
    assert match(by_port, "::ffff:127.0.0.1", 41362, "127.0.0.1", 8125) == ("one", t[333])   # wildcard
    assert match(by_port, "10.1.1.1", 41362, "127.0.0.1", 8125) == ("none", None)   # not local
    assert match(by_port, "127.0.0.1", 41361, "127.0.0.1", 9999) == ("none", None)  # connected elsewhere
    by_port[41362].append(UdpSocket(444, socket.AF_INET, "0.0.0.0", 41362, "0.0.0.0", 0, 0))
    assert match(by_port, "127.0.0.1", 41362, "127.0.0.1", 8125) == ("ambiguous", None)
    assert plain_address("::ffff:10.0.0.1") == "10.0.0.1" and plain_address("::1") == "::1"


# --- access logs ------------------------------------------------------------------------

GUNICORN_LINE = '127.0.0.1 - - [22/Nov/2025:01:53:10 +0000] "GET /x?a=b HTTP/1.1" 404 9 "-" "curl/8.5.0"'
NGINX_LINE = ('10.0.0.1 - bob [22/Nov/2025:01:53:10 +0000] "POST /api HTTP/2.0" 502 157 "https://r/" '
              '"Mozilla/5.0 (X11)" 0.512 0.500, 0.010')


def test_access_formats_on_literal_lines():
    assert compile_format("gunicorn").parse(GUNICORN_LINE) == ("404", None)
    assert compile_format("nginx").parse(GUNICORN_LINE) is None
    assert compile_format("nginx").parse(NGINX_LINE) == ("502", 0.512)
    assert compile_format("combined").parse(NGINX_LINE) is None
    up = compile_format(compile_format("combined").text + " $upstream_response_time")
    assert up.parse(NGINX_LINE.replace("0.512 ", "")) == ("502", pytest.approx(0.51))
    for atom, raw, seconds in (("D", "245000", 0.245), ("L", "0.245000", 0.245), ("M", "245", 0.245),
                               ("T", "1", 1.0), ("D", "-", None)):
        f = compile_format(compile_format("gunicorn").text + " %(" + atom + ")s")
        status, got = f.parse(GUNICORN_LINE + " " + raw)
        assert status == "404" and got == (pytest.approx(seconds) if seconds else None)
    # both durations: the most precise wins
    both = compile_format('%(s)s %(L)s %(D)s')
    assert both.parse("200 0.1 123456") == ("200", pytest.approx(0.123456))
    for bad in ("%(h)s %(b)s", "%(s)s%(b)s", "$status$request_time", "x" * 2000):
        with pytest.raises(ValueError):
            compile_format(bad)
    with pytest.raises(ValueError):
        parse_access_formats(["gunicorn"] * 17)


def test_access_log_counts_and_bounds():
    log = AccessLog(parse_access_formats(["nginx", "gunicorn"]))
    assert log.feed(NGINX_LINE, lambda: "shop", "/n") == ("shop", "502")
    assert log.feed(GUNICORN_LINE, lambda: "shop", "/g") == ("shop", "404")
    assert log.feed('1.2.3.4 - - [x] "GET / HTTP/1.1" 2000 1 "-" "-"', lambda: "shop", "/g") is False
    assert log.feed("[2025-11-22 01:53:10 +0000] [123] [INFO] Booting worker", lambda: 1 / 0) is None
    pathological = '"' + " HTTP/" * 3000 + '"' * 3000
    assert log.feed(pathological, lambda: "shop", "/g") is False
    shop = log.table.apps["shop"]                  # gunicorn's own log
    assert shop.statuses == {"404": 1.0} and shop.count == 0
    proxied = log.proxy.apps["shop"]               # nginx's: another source, never summed
    assert proxied.statuses == {"502": 1.0} and proxied.count == 1
    assert log.files == {"/n": [1, 0, 0], "/g": [1, 2, 0]}


def test_access_lines_count_for_their_file_not_for_pids_a_client_writes():
    from exporter.collectors.logs import LogsCollector, LogFile
    from exporter.snapshot import AppSnapshot, GunicornSnapshot, WorkerSnapshot
    logs = LogsCollector([LogFile("/a.log", "shop"), LogFile("/b.log")])
    other = AppSnapshot(app="other", up=True, master_pid=455, workers=[WorkerSnapshot(
        0, 456, 0.0, 0, 0.0, 1, None, None, None, None, None, None)])
    logs.index.update(GunicornSnapshot(apps=[other]))
    line = GUNICORN_LINE.replace("/x?a=b", "/x?(pid:456)")
    logs.handle_line(line, "shop", "/a.log")
    logs.handle_line(line, None, "/b.log")
    apps = logs.access.table.apps
    assert set(apps) == {"shop", "unknown"} and apps["shop"].statuses == {"404": 1.0}


def test_request_families_render_as_a_valid_exposition():
    from prometheus_client.exposition import generate_latest
    t = SenderTable()
    t.feed(b"gunicorn.workers:2|g", A)                           # known, then proven first
    t.plan(0.0)
    t.apply({A: ("kernel", Route(1, 1, 1, "shop"))}, 0.0, 0)
    t.feed(REQUEST, A)
    t.plan(1.0)
    t.apply({A: ("kernel", Route(1, 1, 1, "shop"))}, 1.0, 1)
    log = AccessLog(parse_access_formats(["nginx"]))
    log.feed(NGINX_LINE, lambda: "shop")

    class Families:
        def collect(self):
            return iter(render_requests([t.apps.snapshot(), log.proxy.snapshot()]))
    series = parse_strict(generate_latest(Families()).decode())
    assert value(series, "gunicorn_requests_total", app="shop", source="statsd", status="200") == 1
    assert value(series, "gunicorn_requests_total", app="shop", source="proxy_log", status="502") == 1
    assert value(series, "gunicorn_request_duration_seconds_bucket", app="shop", source="statsd", le="0.05") == 1
    assert value(series, "gunicorn_request_duration_seconds_bucket", app="shop", source="proxy_log", le="0.5") == 0
    assert value(series, "gunicorn_request_duration_seconds_count", app="shop", source="proxy_log") == 1


def test_resolver_proves_verifies_and_notices_a_reused_port():
    """Real sockets, this process standing in for a gunicorn master: the sender's inode
    is found in its fd table; a verification passes while the socket lives; the same
    port bound again by a new socket is looked up again (new inode); a closed one is
    gone; a process map without this pid proves nothing."""
    import os
    from exporter.linux.procfs import ProcFS
    from exporter.statsd.attribution import Proc, ProcMap, Resolver
    port = udp_port()
    me = Proc(os.getpid(), "self", None, os.getuid())
    pmap = ProcMap(1, [me], {me.pid: me}, frozenset({"self"}))
    r = Resolver(ProcFS(), "127.0.0.1", port)

    def sender(src_port=0):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", src_port))
        s.connect(("127.0.0.1", port))
        return s, s.getsockname()
    s, addr = sender()
    out = r.run([], [addr], pmap, None)
    kind, route = out.results[addr]
    assert kind == "kernel" and route.app == "self" and route.pid == os.getpid()
    assert route.inode == os.fstat(s.fileno()).st_ino and out.processes_scanned == 1
    assert r.run([(addr, route)], [], pmap, None).results[addr] == ("kernel", route)
    assert r.run([], [addr], ProcMap(2), None).results[addr] == ("not_found", None)
    s.close()
    s2, addr2 = sender(addr[1])                      # the port reused by another socket
    assert addr2 == addr
    kind, route2 = r.run([(addr, route)], [], pmap, None).results[addr]
    assert kind == "kernel" and route2.inode == os.fstat(s2.fileno()).st_ino != route.inode
    s2.close()
    assert r.run([(addr, route2)], [], pmap, None).results[addr] == ("gone", None)


def test_without_the_gunicorn_collector_senders_go_by_prefix():
    """--no-collector.gunicorn: no process can be proven, so after two collections a
    sender is unknown and its lines go by --statsd.prefix or count as unattributed."""
    import asyncio
    from exporter.collectors.statsd import StatsdCollector
    from exporter.snapshot import Snapshot

    async def scenario():
        c = StatsdCollector(f"127.0.0.1:{udp_port()}", {"x": "xapp"})
        await c.start()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.sendto(b"gunicorn.request.status.200:1|c\nx.gunicorn.request.status.201:1|c",
                     ("127.0.0.1", c.receiver.port))
            deadline = time.monotonic() + 10
            while c.table.packets < 1 and time.monotonic() < deadline:
                await asyncio.sleep(0.01)      # polling the receiver, with a deadline
            for _ in range(3):
                snap = await c.collect()
                c.learn(Snapshot())            # no "gunicorn" result: the collector is off
        await c.stop()
        return snap
    snap = asyncio.run(scenario())
    assert snap.packets == 1 and snap.senders["unknown"] == 1
    assert snap.unattributed_lines["unknown_sender"] == 1
    assert snap.requests.apps["xapp"].statuses == {"201": 1.0}


# --- real gunicorn, real exporter ---------------------------------------------------------

def udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _statsd_args(port: int) -> list[str]:
    return ["--statsd.listen-address", f"127.0.0.1:{port}", "--no-collector.postgres"]


def _requests(series, app, source):
    return {dict(lbl)["status"]: v for lbl, v in
            select(series, "gunicorn_requests_total", app=app, source=source).items()}


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_real_gunicorn_counts_latency_two_apps_and_access_log(gunicorn_factory, tmp_path):
    port = udp_port()
    access = tmp_path / "access.log"
    other = f"{APP}-b"
    with running_exporter(tmp_path, *_statsd_args(port), "--logs.file", f"{APP}={access}",
                          "--logs.access-format", ACCESS_FORMAT) as base:
        g = gunicorn_factory(workers=2, bind="tcp", name=APP, extra_args=[
            "--statsd-host", f"127.0.0.1:{port}", "--access-logfile", str(access),
            "--access-logformat", ACCESS_FORMAT])
        h = gunicorn_factory(workers=1, bind="tcp", name=other,
                             extra_args=["--statsd-host", f"127.0.0.1:{port}"])
        # A sender's data counts from the collection that proved its socket on (what came
        # before may have been someone else's, docs/requests.md): one request each, then
        # wait until both senders are proven.
        assert g.get("/status?code=204")[0] == 204 and h.get("/status?code=204")[0] == 204
        before = poll(lambda: (s := scrape(base)) and value(
            s, "gunicorn_statsd_senders", attribution="kernel") == 2
            and _requests(s, APP, "access_log").get("204") == 1 and s, 30, interval=0.2,
                      message="the two senders were not proven")
        base_statsd = {k: v for k, v in _requests(before, APP, "statsd").items()}
        base_access = _requests(before, APP, "access_log")
        base_unknown = value(before, "gunicorn_statsd_unattributed_lines_total", reason="unknown_sender")
        base_count = {src: value(before, "gunicorn_request_duration_seconds_count", app=APP, source=src) or 0
                      for src in ("statsd", "access_log")}
        base_sum = {src: value(before, "gunicorn_request_duration_seconds_sum", app=APP, source=src) or 0
                    for src in ("statsd", "access_log")}
        base_bucket = {(src, le): value(before, "gunicorn_request_duration_seconds_bucket", app=APP,
                                        source=src, le=floatToGoString(le)) or 0
                       for src in ("statsd", "access_log") for le in BOUNDS}
        base_lines = value(before, "gunicorn_log_access_lines_total", file=str(access)) or 0

        def delta(now: dict, base: dict) -> dict:
            return {k: v - base.get(k, 0) for k, v in now.items() if v - base.get(k, 0)}

        sleeps, elapsed = [], []
        for code, seconds, n in ((200, 0.03, 15), (404, 0.15, 5)):
            for _ in range(n):
                t0 = time.monotonic()
                status, _body = g.get(f"/status?code={code}&seconds={seconds}")
                elapsed.append(time.monotonic() - t0)
                sleeps.append(seconds)
                assert status == code
        for _ in range(3):
            assert h.get("/status?code=500")[0] == 500

        def counted():
            s = scrape(base)
            done = (sum(delta(_requests(s, APP, "statsd"), base_statsd).values()) >= 20
                    and sum(delta(_requests(s, APP, "access_log"), base_access).values()) >= 20
                    and _requests(s, other, "statsd").get("500", 0) >= 3)
            return s if done else None
        s = poll(counted, 30, interval=0.2, message="requests not counted")
        assert delta(_requests(s, APP, "statsd"), base_statsd) == {"200": 15, "404": 5}
        assert delta(_requests(s, other, "statsd"), {"204": 1}) == {"500": 3}   # told apart, no prefix
        assert delta(_requests(s, APP, "access_log"), base_access) == {"200": 15, "404": 5}
        # only the two masters send to this exporter: two senders, both proven
        assert value(s, "gunicorn_statsd_senders", attribution="kernel") == 2
        assert value(s, "gunicorn_statsd_unattributed_lines_total", reason="unknown_sender") == base_unknown
        sums = {}
        for source in ("statsd", "access_log"):
            count = value(s, "gunicorn_request_duration_seconds_count", app=APP, source=source) - base_count[source]
            total = value(s, "gunicorn_request_duration_seconds_sum", app=APP, source=source) - base_sum[source]
            sums[source] = total
            assert count == 20, source
            # gunicorn's request time lies between the app's sleep and the client's round trip
            assert sum(sleeps) <= total <= sum(elapsed), (source, total, sum(sleeps), sum(elapsed))
            for le in BOUNDS:
                got = value(s, "gunicorn_request_duration_seconds_bucket", app=APP, source=source,
                            le=floatToGoString(le)) - base_bucket[(source, le)]
                fast = sum(e <= le for e in elapsed)
                slow_enough = sum(x <= le for x in sleeps)
                assert fast <= got <= slow_enough, (source, le, got)
        assert sums["statsd"] == pytest.approx(sums["access_log"], abs=1e-4)   # the same request_time
        assert value(s, "gunicorn_log_access_lines_total", file=str(access)) - base_lines == 20


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_fuzz_unknown_senders_and_prefix_fallback_on_a_live_exporter(tmp_path):
    port = udp_port()
    with running_exporter(tmp_path, *_statsd_args(port), "--statsd.prefix", "fz=fuzzapp") as base:
        rng = random.Random(7)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for i in range(3000):
                s.sendto(bytes(rng.getrandbits(8) for _ in range(rng.randrange(1, 300))),
                         ("127.0.0.1", port))
            s.sendto(b"fz.gunicorn.request.status.502:1|c\ngunicorn.request.status.200:1|c|@0.5",
                     ("127.0.0.1", port))
            s.sendto(b"x" * 65000, ("127.0.0.1", port))

            def settled():
                m = scrape(base)
                return m if value(m, "gunicorn_requests_total", app="fuzzapp", source="statsd",
                                  status="502") == 1 else None
            m = poll(settled, 30, interval=0.2, message="the prefix-mapped line was not counted")
        assert value(m, "gunicorn_statsd_up") == 1
        assert value(m, "gunicorn_statsd_packets_total") >= 3002
        assert value(m, "gunicorn_statsd_malformed_lines_total") > 100
        # the test process is no gunicorn: its unprefixed line (counting 2) is unattributed
        assert value(m, "gunicorn_statsd_unattributed_lines_total", reason="unknown_sender") >= 1
        assert value(m, "gunicorn_exporter_collector_success", collector="statsd") == 1


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_port_taken_is_statsd_up_0_and_everything_else_works(tmp_path):
    holder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    holder.bind(("127.0.0.1", 0))
    port = holder.getsockname()[1]
    try:
        with running_exporter(tmp_path, *_statsd_args(port)) as base:
            m = scrape(base)
            assert value(m, "gunicorn_statsd_up") == 0
            assert value(m, "gunicorn_exporter_collector_success", collector="statsd") == 1
            assert value(m, "gunicorn_exporter_collector_success", collector="gunicorn") == 1
            holder.close()     # the next collection binds it
            poll(lambda: value(scrape(base), "gunicorn_statsd_up") == 1, 20, interval=0.2,
                 message="the freed port was not bound")
        log = next(tmp_path.glob("exporter-*.log")).read_text()
        assert log.count("cannot listen") == 1 and "Traceback" not in log
    finally:
        holder.close()


def test_master_sockets_from_the_gunicorn_scan_are_adopted_while_the_pid_is_the_same():
    """The resolver adopts a master's socket connected to the receiver from the inodes
    the gunicorn collector found in the master's fd table (no fd scan of its own), only
    while the pid names the same process (same start time) and only those inodes."""
    import os
    from exporter.linux.procfs import ProcFS
    from exporter.statsd.attribution import Proc, ProcMap, Resolver, Route
    port = udp_port()
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.connect(("127.0.0.1", port))
    try:
        ino = os.fstat(s.fileno()).st_ino
        start = ProcFS().stat(os.getpid()).starttime_ticks
        r = Resolver(ProcFS(), "127.0.0.1", port)

        def adopted(start_ticks, sockets):
            me = Proc(os.getpid(), "shop", None, os.getuid(), start_ticks, frozenset(sockets))
            return r.run([], [], ProcMap(1, [me], {me.pid: me}, frozenset({"shop"})),
                         None).adopted
        assert adopted(start, {ino}) == {
            ("127.0.0.1", s.getsockname()[1]): Route(ino, os.getpid(), start, "shop", None)}
        assert adopted(start + 1, {ino}) == {}       # the pid now names another process
        assert adopted(start, set()) == {}           # not among the master's sockets
        assert adopted(None, set()) != {}            # unknown: the resolver scans itself
    finally:
        s.close()
