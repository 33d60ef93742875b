"""A worker's dependencies (exporter/gunicorn/dependencies.py): the pure functions on
literal sockets, and real sync and gthread workers waiting on real peers, with `ss -tpi`
and the client's clock as the oracles."""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import socketserver
import subprocess
import threading
import time

import pytest

from exporter.collectors.gunicorn import GunicornCollector
from exporter.gunicorn import dependencies as deps
from exporter.gunicorn.join import SocketMatcher, WorkerSockets
from exporter.linux.sockets import (TCP_CLOSE_WAIT, TCP_ESTABLISHED, TCP_LISTEN, TCP_SYN_SENT,
                                    InetSocket, TcpTimes, UnixSocket)
from tests.harness.clients import SlowClients
from tests.harness.procs import poll, unique_name
from tests.harness.servers import silent_peer

# --- literal sockets --------------------------------------------------------------------


def _inet(inode, state, local, remote, family=socket.AF_INET, rq=0):
    (la, lp), (ra, rp) = local, remote
    return InetSocket(inode, family, state, la, lp, ra, rp, rq, 0, 0)


def _unix(inode, peer, name=None, state=TCP_ESTABLISHED, stype=socket.SOCK_STREAM, rq=0):
    return UnixSocket(inode, state, stype, name, peer, rq, 0, 0)


LISTENERS = [(_inet(1, TCP_LISTEN, ("0.0.0.0", 8000), ("0.0.0.0", 0)), None),
             (_unix(2, 0, "/run/app.sock", state=TCP_LISTEN), None)]
MATCH = SocketMatcher.of(LISTENERS, (5432,), ())


def test_outbound_connections_are_neither_listeners_nor_clients_nor_pairs():
    ws = WorkerSockets(
        unix=[_unix(2, 0, "/run/app.sock", state=TCP_LISTEN),          # the listener
              _unix(10, 11, "/run/app.sock"),                           # a client
              _unix(12, 13),                                            # a socketpair...
              _unix(13, 12),                                            # ...inside the worker
              _unix(14, 99),                                            # to redis
              _unix(15, 98, stype=socket.SOCK_DGRAM)],                  # syslog: datagrams
        inet=[_inet(20, TCP_ESTABLISHED, ("127.0.0.1", 8000), ("127.0.0.1", 50000)),  # client
              _inet(21, TCP_ESTABLISHED, ("10.0.0.2", 40000), ("10.0.0.5", 5432)),
              _inet(22, TCP_SYN_SENT, ("10.0.0.2", 40001), ("10.0.0.9", 443)),
              _inet(23, TCP_CLOSE_WAIT, ("::1", 40002), ("::ffff:10.0.0.7", 6379), socket.AF_INET6),
              _inet(24, TCP_ESTABLISHED, ("::1", 40003), ("2001:db8::1", 80), socket.AF_INET6)])
    out = deps.outbound(ws, {99: "/run/redis.sock", 11: "/run/app.sock"}, MATCH)
    assert [(o.peer, o.state) for o in out] == [
        ("unix:/run/redis.sock", "established"), ("10.0.0.5:5432", "established"),
        ("10.0.0.9:443", "syn_sent"), ("10.0.0.7:6379", "close_wait"),
        ("[2001:db8::1]:80", "established")]
    unnamed = deps.outbound(WorkerSockets(unix=[_unix(30, 31)]), {}, MATCH)
    assert [o.peer for o in unnamed] == ["unix:(unnamed)"]


def test_a_connection_waits_when_it_sent_last_and_has_nothing_to_read():
    db = deps.Outbound("10.0.0.5:5432", "established", _inet(21, TCP_ESTABLISHED, ("a", 1), ("b", 2)))
    api = deps.Outbound("10.0.0.9:443", "established", _inet(22, TCP_ESTABLISHED, ("a", 3), ("c", 4)))
    unread = deps.Outbound("10.0.0.9:443", "established",
                           _inet(25, TCP_ESTABLISHED, ("a", 5), ("c", 4), rq=100))
    new = deps.Outbound("10.0.0.9:80", "established", _inet(26, TCP_ESTABLISHED, ("a", 6), ("d", 7)))
    times = {21: TcpTimes(sent_ms=4200, recv_ms=9000, answered=True, received=True),  # sent last
             22: TcpTimes(sent_ms=9000, recv_ms=4200, answered=True, received=True),  # answered
             25: TcpTimes(sent_ms=100, recv_ms=900, answered=True, received=True),    # unread
             # a request sent in the tick the connection opened, nothing back since
             26: TcpTimes(sent_ms=3000, recv_ms=3000, answered=True, received=False)}
    assert deps.waits([db, api, unread, new], times, None) == \
        [deps.Wait("10.0.0.5:5432", 4.2), deps.Wait("10.0.0.9:80", 3.0)]


def test_a_sync_worker_asleep_in_a_request_waits_on_its_latest_exchange():
    """Postgres answers a query's first messages at once, its rows when it is done: the
    connection received last, yet the worker waits on it, asleep in a poll."""
    pool = deps.Outbound("10.0.0.5:5432", "established", _inet(21, TCP_ESTABLISHED, ("a", 1), ("b", 2)))
    query = deps.Outbound("10.0.0.5:5432", "established", _inet(22, TCP_ESTABLISHED, ("a", 3), ("b", 2)))
    times = {21: TcpTimes(sent_ms=60_000, recv_ms=59_999, answered=True, received=True),
             22: TcpTimes(sent_ms=8_000, recv_ms=7_999, answered=True, received=True)}
    assert deps.waits([pool, query], times, "do_sys_poll", request_age=9.0) == \
        [deps.Wait("10.0.0.5:5432", 8.0)]
    assert deps.waits([pool, query], times, "poll_schedule_timeout.constprop.0",
                      request_age=9.0) == [deps.Wait("10.0.0.5:5432", 8.0)]   # Linux 6
    assert deps.waits([pool, query], times, "do_sys_poll", request_age=None) == []  # idle
    assert deps.waits([pool, query], times, "hrtimer_nanosleep", request_age=9.0) == []  # asleep
    assert deps.waits([pool], times, "do_sys_poll", request_age=9.0) == []   # before the request
    # unix (no tcp_info): the one quiet unix connection
    redis = deps.Outbound("unix:/run/redis.sock", "established", _unix(14, 99))
    assert deps.waits([redis, pool], times, "unix_stream_data_wait", request_age=2.0) == \
        [deps.Wait("unix:/run/redis.sock", None)]
    two = deps.Outbound("unix:/run/other.sock", "established", _unix(16, 97))
    assert deps.waits([redis, two], {}, "do_sys_poll", request_age=2.0) == []   # which one?


def test_by_peer_counts_workers_or_connections_and_folds_the_rest_into_other():
    def conn(peer, state="established"):
        return deps.Outbound(peer, state, None)
    w1 = ([conn("db:5432"), conn("db:5432"), conn("api:443", "syn_sent")],
          [deps.Wait("db:5432", 2.0), deps.Wait("db:5432", 7.5)])
    w2 = ([conn("db:5432"), conn("cache:6379")], [deps.Wait("cache:6379", None)])
    sync = deps.by_peer([w1, w2], sync=True, max_peers=10)
    assert sync["db:5432"] == deps.Dependency({"established": 3}, 1, 7.5)
    assert sync["cache:6379"] == deps.Dependency({"established": 1}, 1, None)
    threaded = deps.by_peer([w1, w2], sync=False, max_peers=10)
    assert threaded["db:5432"].waiting == 2
    folded = deps.by_peer([w1, w2], sync=True, max_peers=1)
    assert set(folded) == {"db:5432", "other"}
    assert folded["other"] == deps.Dependency({"syn_sent": 1, "established": 1}, 1, None)
    assert deps.longest([deps.Wait("a", None), deps.Wait("b", 3.0), deps.Wait("c", 1.0)]) == \
        deps.Wait("b", 3.0)
    assert deps.longest([deps.Wait("a", None)]) == deps.Wait("a", None)


# --- real workers, real peers ---------------------------------------------------------


@contextlib.contextmanager
def refusing_peer():
    """A peer that never accepts: a listener with a backlog of 0 whose queue one
    connection fills; later SYNs are dropped, so connects stay in SYN-SENT."""
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(0)
    filler = []
    try:
        for _ in range(2):      # the accept queue holds backlog + 1
            c = socket.socket()
            c.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                c.connect(lst.getsockname())
            filler.append(c)
        yield lst.getsockname()[1]
    finally:
        for c in filler:
            c.close()
        lst.close()


def ss_dependency(pids: list[int], port: int) -> list[tuple[str, int, int, int]]:
    """(state, lastsnd ms, lastrcv ms, bytes received) of the pids' TCP connections to
    127.0.0.1:port, from `ss -tnpi` (the kernel's own account; ss leaves out counters
    that are 0)."""
    out = subprocess.run(["ss", "-tnpiH", "state", "all", f"dport = :{port}"],
                         capture_output=True, text=True, timeout=10).stdout
    rows = []
    lines = out.splitlines()
    for i, line in enumerate(lines):
        if not any(f"pid={p}," in line for p in pids):
            continue
        info = lines[i + 1] if i + 1 < len(lines) else ""
        snd = re.search(r"lastsnd:(\d+)", line + info)
        rcv = re.search(r"lastrcv:(\d+)", line + info)
        got = re.search(r"bytes_received:(\d+)", line + info)
        rows.append((line.split()[0], int(snd.group(1)) if snd else -1,
                     int(rcv.group(1)) if rcv else -1, int(got.group(1)) if got else 0))
    return rows


def app_of(collector, g):
    snap = asyncio.run(collector.collect())
    return next((a for a in snap.apps if a.up and a.master_pid == g.pid), None)


@pytest.mark.slow
@pytest.mark.parametrize("worker_class,threads", [("sync", None), ("gthread", 4)])
def test_workers_waiting_on_a_peer_that_never_answers(gunicorn_factory, worker_class, threads):
    """Two requests wait on a TCP peer that read them and never answers: two waiting
    (sync: workers, gthread: connections), the wait as old as the client's clock says,
    and ss agrees the worker sent last."""
    require_ss()
    with silent_peer() as port:
        g = gunicorn_factory(worker_class=worker_class, workers=2 if worker_class == "sync" else 1,
                             threads=threads, bind="tcp", name=unique_name(f"dep-{worker_class}"))
        collector = GunicornCollector()
        peer = f"127.0.0.1:{port}"
        with SlowClients(g, 2, path=f"/upstream?port={port}"):
            sent = time.monotonic()
            app = poll(lambda: (a := app_of(collector, g)) and peer in a.dependencies
                       and a.dependencies[peer].waiting == 2 and a, 15,
                       message="the two waits were not seen")
            elapsed = time.monotonic() - sent
            d = app.dependencies[peer]
            assert d.connections == {"established": 2}
            assert 0 <= d.wait <= elapsed + 0.1, (d.wait, elapsed)
            rows = ss_dependency(g.worker_pids(), port)
            # the kernel's account: each sent its request and nothing came back since
            assert len(rows) == 2 and all(s == "ESTAB" and (snd < rcv or got == 0)
                                          for s, snd, rcv, got in rows), rows
            stuck = [w.dependency_wait for w in app.workers if w.dependency_wait]
            assert {p for p, _s in stuck} == {peer}
            time.sleep(1.2)     # noqa: the wait must grow with the clock: the thing measured
            later = app_of(collector, g).dependencies[peer]
            assert later.wait >= d.wait + 1.0, (d.wait, later.wait)


def require_ss():
    import shutil
    from tests.conftest import require
    require(shutil.which("ss") is not None, "ss not installed (iproute2)")


@pytest.mark.slow
def test_a_peer_that_never_accepts_shows_syn_sent(gunicorn_factory):
    require_ss()
    with refusing_peer() as port:
        g = gunicorn_factory(workers=1, bind="tcp", name=unique_name("dep-syn"))
        collector = GunicornCollector()
        with SlowClients(g, 1, path=f"/upstream?port={port}"):
            app = poll(lambda: (a := app_of(collector, g)) and
                       a.dependencies.get(f"127.0.0.1:{port}") and a, 15,
                       message="the connect in progress was not seen")
            assert app.dependencies[f"127.0.0.1:{port}"].connections == {"syn_sent": 1}
            assert [row[0] for row in ss_dependency(g.worker_pids(), port)] == ["SYN-SENT"]


@pytest.mark.slow
def test_an_http_dependency_through_urllib(gunicorn_factory):
    """A gthread app calling an HTTP server that answers after 20 s: 3 connections wait."""
    require_ss()
    import http.server

    class Slow(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            time.sleep(20)      # noqa: the slow dependency itself
            self.send_response(200)
            self.end_headers()

        def log_message(self, *a):
            pass
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        g = gunicorn_factory(worker_class="gthread", threads=4, workers=1, bind="tcp",
                             name=unique_name("dep-http"))
        collector = GunicornCollector()
        with SlowClients(g, 3, path=f"/http?port={port}"):
            app = poll(lambda: (a := app_of(collector, g)) and
                       (d := a.dependencies.get(f"127.0.0.1:{port}")) and d.waiting == 3 and a,
                       15, message="the three HTTP calls did not wait")
            assert app.dependencies[f"127.0.0.1:{port}"].connections == {"established": 3}
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.slow
def test_an_idle_pool_connection_does_not_wait(gunicorn_factory, pg):
    """SQLAlchemy keeps its connection after the request: established, not waiting (its
    reply came last); a query that sleeps in Postgres does wait."""
    require_ss()
    from tests.test_postgres import _app_env
    g = gunicorn_factory(workers=1, bind="tcp", app="db_app:app", name=unique_name("dep-pool"),
                         env={**_app_env(pg, 2, 0), "DB_DSN": pg.dsn("app", "appdb")})
    collector = GunicornCollector()
    g.get("/db/hold?n=1&seconds=0")
    peer = f"127.0.0.1:{pg.port}"
    app = poll(lambda: (a := app_of(collector, g)) and peer in a.dependencies and a, 15,
               message="the pooled connection was not seen")
    assert app.dependencies[peer].connections == {"established": 1}
    assert app.dependencies[peer].waiting == 0
    with SlowClients(g, 1, path="/db/sleep?seconds=20"):
        poll(lambda: app_of(collector, g).dependencies[peer].waiting == 1, 15,
             message="pg_sleep's wait was not seen")
        assert app_of(collector, g).dependencies[peer].connections == {"established": 2}


@pytest.mark.slow
def test_a_peer_that_is_a_watched_postgres_says_so(gunicorn_factory, pg, tmp_path):
    """The app's pooled connection goes to the server named by --postgres.dsn: the
    scrape says the peer is that Postgres (the address libpq reached, against the port
    the cluster was started on)."""
    from tests.exposition import scrape, value
    from tests.harness.servers import running_exporter
    from tests.test_postgres import _app_env
    name = unique_name("dep-pg")
    g = gunicorn_factory(workers=1, bind="tcp", app="db_app:app", name=name,
                         env=_app_env(pg, 2, 0))
    g.get("/db/hold?n=1&seconds=0")
    peer = f"127.0.0.1:{pg.port}"
    with running_exporter(tmp_path, "--postgres.dsn", pg.dsn("monitor", "postgres"),
                          "--no-collector.logs", "--no-collector.oom") as base:
        series = poll(lambda: (s := scrape(base)) and value(
            s, "gunicorn_dependency_info", app=name, peer=peer, kind="postgres") == 1 and s,
            20, message="the Postgres peer was not named")
        assert value(series, "gunicorn_dependency_connections", app=name, peer=peer,
                     state="established") == 1
        assert value(series, "gunicorn_dependency_waiting_workers", app=name, peer=peer) == 0


# --- the dependency clock -------------------------------------------------------------

def test_the_clock_counts_worker_seconds_per_peer_once_a_second(tmp_path):
    """Literal inputs: two gthread workers, one waiting on the database for two reads,
    the other on a peer folded into 'other'; each read credits the interval since the
    last one, per app and peer."""
    from exporter.sampler.dependencies import DependencyClock
    from exporter.snapshot import AppSnapshot, GunicornSnapshot, WorkerSnapshot
    db = deps.Outbound("10.0.0.5:5432", "established", _inet(21, TCP_ESTABLISHED, ("a", 1), ("b", 2)))
    rare = deps.Outbound("10.0.0.6:6379", "established", _inet(22, TCP_ESTABLISHED, ("a", 3), ("c", 4)))
    times = {21: TcpTimes(5000, 9000, True, True), 22: TcpTimes(3000, 9000, True, True)}
    clock = DependencyClock(lambda wanted: dict(times), proc=str(tmp_path))
    workers = [WorkerSnapshot(0, 10, 0, 0, 0, 1, None, None, None, None, None, None, outbound=(db,)),
               WorkerSnapshot(1, 11, 0, 0, 0, 1, None, None, None, None, None, None, outbound=(rare,))]
    clock.retarget(GunicornSnapshot(apps=[AppSnapshot(
        "shop", True, worker_class="gthread", workers=workers,
        dependencies={"10.0.0.5:5432": deps.Dependency(), "other": deps.Dependency()})]),
        now=0)
    for t in (0.0, 1.0, 2.0):
        clock.tick(t)
    times[21] = TcpTimes(9000, 100, True, True)      # the reply came: no longer waiting
    clock.tick(3.0)
    clock.tick(3.5)                                  # within the second: not read
    assert clock.snapshot() == [("shop", "10.0.0.5:5432", 2.0), ("shop", "other", 3.0)]
    assert clock.reads == 4
    clock.tick(4.0)
    assert clock.snapshot() == [("shop", "10.0.0.5:5432", 2.0), ("shop", "other", 4.0)]


@pytest.mark.slow
def test_a_two_second_stall_every_ten_seconds_is_counted(gunicorn_factory, tmp_path):
    """A pooled dependency that answers after 2 s, asked every 10 s: a 15 s scrape sees
    such a stall by luck; the clock counts each. Oracle: the client's own clock (each
    request's duration)."""
    from tests.exposition import scrape, value
    from tests.harness.servers import running_exporter

    class Slow(socketserver.ThreadingTCPServer):
        daemon_threads = True
        allow_reuse_address = True
    closing = threading.Event()

    class Handler(socketserver.StreamRequestHandler):
        def handle(self):
            while not closing.is_set() and self.rfile.readline(256):
                closing.wait(2.0)       # the dependency's own slowness, not a sync point
                self.wfile.write(b"ok\n")
    server = Slow(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    name = unique_name("dep-clock")
    try:
        g = gunicorn_factory(workers=1, bind="tcp", name=name)
        g.get(f"/keep?port={port}", timeout=10)          # the pooled connection opens
        with running_exporter(tmp_path, "--no-collector.postgres", "--no-collector.logs") as base:
            key = {"app": name, "peer": f"127.0.0.1:{port}"}
            poll(lambda: value(scrape(base), "gunicorn_dependency_waiting_seconds_total", **key)
                 is not None, 20, message="the clock never followed the connection")
            before = value(scrape(base), "gunicorn_dependency_waiting_seconds_total", **key)
            took = []
            for _ in range(3):
                t = time.monotonic()
                g.get(f"/keep?port={port}", timeout=10)
                took.append(time.monotonic() - t)
                time.sleep(8)       # noqa: the pause between stalls is the scenario itself
            after = value(scrape(base), "gunicorn_dependency_waiting_seconds_total", **key)
        print(f"client: {[round(x, 2) for x in took]} s; clock: {after - before:.2f} s")
        # read once a second: each stall is counted to within a read either side
        assert sum(took) - 3.2 <= after - before <= sum(took) + 3.2, (took, after - before)
    finally:
        closing.set()
        server.shutdown()
        server.server_close()
