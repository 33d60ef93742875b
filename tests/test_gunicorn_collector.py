"""The gunicorn collector against real gunicorn masters, checked against `ss` and gunicorn itself.

Every comparison with `ss` brackets the ss call between two collections and only
accepts a reading when both collections agree, so a connection that moves between the
two reads cannot make the test flaky, and a wrong number cannot make it pass.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal

import pytest

from exporter.collectors.gunicorn import GunicornCollector, GunicornOptions
from exporter.linux.procfs import ProcFS
from exporter.snapshot import AppSnapshot
from tests.conftest import require
from tests.harness.clients import SlowClients
from tests.harness.procs import poll, proc_stat, unique_name
from tests.harness.ss import (ss_listen_queue, ss_worker_active_connections,
                              ss_worker_close_wait_connections)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]


_LOOPS: dict[int, asyncio.AbstractEventLoop] = {}


def collect(collector: GunicornCollector):
    """One collection on the collector's own event loop, kept between calls as the
    exporter keeps its one loop: a control-socket question that takes longer than the
    collection waits for (FIRST_ANSWER_WAIT) goes on at the next call, where
    asyncio.run would cancel it at every return (then a slow master is never re-asked)."""
    loop = _LOOPS.get(id(collector))
    if loop is None or loop.is_closed():
        loop = _LOOPS[id(collector)] = asyncio.new_event_loop()
    return loop.run_until_complete(collector.collect())


@pytest.fixture(autouse=True)
def _close_loops():
    yield
    while _LOOPS:
        loop = _LOOPS.popitem()[1]
        pending = asyncio.all_tasks(loop)
        for task in pending:
            task.cancel()
        if pending:
            loop.run_until_complete(asyncio.wait(pending))
        loop.close()


def app_for(collector: GunicornCollector, g) -> AppSnapshot | None:
    for a in collect(collector).apps:
        if a.up and a.master_pid == g.pid:
            return a
    return None


def wait_control(collector, g) -> AppSnapshot:
    """gunicorn opens its control socket after the workers boot; wait for its answers."""
    return poll(lambda: (a := app_for(collector, g)) and a.control_socket and a, 15,
                message="control socket never answered")


def listener_of(app: AppSnapshot, g):
    want = g.bind if g.bind.startswith("unix:") else g.listener
    for lst in app.listeners:
        if lst.address == want:
            return lst
    raise AssertionError(f"listener {want} not in {[l.address for l in app.listeners]}")


def by_pid(app: AppSnapshot):
    return {w.pid: w for w in app.workers}


def stable_reading(collector, g, oracle):
    """(exporter view, oracle view) when two exporter collections around the oracle agree."""
    def attempt():
        before = _view(app_for(collector, g), g)
        seen = oracle()
        after = _view(app_for(collector, g), g)
        return (before, seen) if before == after else None
    return attempt


def _view(app, g):
    lst = listener_of(app, g)
    return (lst.queue_length, lst.queue_max,
            tuple(sorted((w.pid, w.connections_active) for w in app.workers)))


def _ss_view(g):
    recv_q, send_q = ss_listen_queue(g.listener)
    return (recv_q, send_q, tuple(sorted(
        (pid, ss_worker_active_connections(pid, g.listener)) for pid in g.worker_pids())))


INF = float("inf")


@pytest.mark.parametrize("worker_class,bind,workers,extra,clients,capacity,queued", [
    ("sync", "unix", 2, {}, 5, 1, 3),
    ("sync", "tcp", 2, {}, 5, 1, 3),
    ("sync", "tcp6", 2, {}, 4, 1, 2),
    ("gthread", "unix", 2, {"threads": 2, "worker_connections": 2}, 7, 2, 3),
    ("gevent", "tcp", 2, {"worker_connections": 2}, 7, 2, 3),
    # gunicorn's asyncio worker counts connections but never stops accepting
    ("asgi", "unix", 1, {"worker_connections": 3, "app": "asgi_app:app"}, 5, INF, 0),
])
def test_queue_and_worker_connections_match_ss(gunicorn_factory, worker_class, bind, workers,
                                               extra, clients, capacity, queued):
    g = gunicorn_factory(worker_class=worker_class, bind=bind, workers=workers,
                         name=unique_name(f"q-{worker_class}-{bind}"), **extra)
    collector = GunicornCollector()
    wait_control(collector, g)
    with SlowClients(g, clients, seconds=30):
        # Workers accept until they are at capacity; the rest waits in the accept queue.
        exp, ss = poll(
            lambda: (r := stable_reading(collector, g, lambda: _ss_view(g))()) and
            r[0][0] == queued and sum(n for _, n in r[0][2]) == clients - queued and r,
            timeout=20,
            message="queue never settled at the expected length")
        assert exp == ss, f"exporter {exp} != ss {ss}"
        app = app_for(collector, g)
        assert app.worker_class == worker_class
        assert app.capacity == capacity
        assert len(app.workers) == workers == app.workers_desired
        assert all(w.connections_client_closed == 0 for w in app.workers)
        busy = sum(1 for w in app.workers if w.connections_active >= app.capacity)
        assert busy == (workers if queued else 0)
    lst = listener_of(app, g)
    if worker_class == "asgi":
        # gunicorn's asyncio worker calls listen() again with asyncio's default of 100,
        # shrinking the master's --backlog: the kernel's limit is what we report.
        assert lst.queue_max == 100
    else:
        assert lst.queue_max == min(2048, ProcFS().somaxconn())


def test_sync_heartbeat_age_tracks_the_running_request(gunicorn_factory):
    g = gunicorn_factory(worker_class="sync", bind="unix", workers=1, timeout=60, name=unique_name("beat"))
    collector = GunicornCollector()
    [pid] = g.worker_pids()
    idle = by_pid(app_for(collector, g))[pid].heartbeat_age
    assert idle is not None and idle < 31  # an idle sync worker beats every timeout/2
    with SlowClients(g, 1, seconds=4) as clients:
        poll(lambda: ss_worker_active_connections(pid, g.listener) == 1, 10,
             message="request not accepted")
        age = poll(lambda: (a := by_pid(app_for(collector, g))[pid].heartbeat_age) >= 2.5 and a,
                   timeout=10, message="heartbeat age did not grow during the request")
        assert age < 4.5
        [answer] = clients.read_all(timeout=10)
        assert answer and b" 200 " in answer.split(b"\r\n", 1)[0]
    # the worker beats again as soon as the request is done
    poll(lambda: by_pid(app_for(collector, g))[pid].heartbeat_age < 1.5, 5,
         message="heartbeat age did not fall after the request")


@pytest.mark.parametrize("bind", ["tcp", "unix"])
def test_client_hangup_shows_as_client_closed(gunicorn_factory, bind):
    """A client that hangs up mid-request: the worker's connection is client_closed, not
    active (TCP: ss shows it in CLOSE-WAIT; unix: its peer is gone)."""
    g = gunicorn_factory(worker_class="sync", bind=bind, workers=1, name=unique_name("hangup-" + bind))
    collector = GunicornCollector()
    [pid] = g.worker_pids()
    with SlowClients(g, 1, seconds=20) as clients:
        poll(lambda: ss_worker_active_connections(pid, g.listener) == 1, 10, message="not accepted")
        w = by_pid(app_for(collector, g))[pid]
        assert (w.connections_active, w.connections_client_closed) == (1, 0)
        clients.hangup(0)
        if bind == "tcp":
            poll(lambda: ss_worker_close_wait_connections(pid, g.listener) == 1, 10,
                 message="no CLOSE-WAIT in ss")
        w = poll(lambda: (w := by_pid(app_for(collector, g))[pid]).connections_client_closed == 1 and w,
                 timeout=10, message="exporter did not see the hang-up")
        assert w.connections_active == 0


def test_killing_the_master_turns_up_to_0_and_drops_worker_series(gunicorn_factory):
    g = gunicorn_factory(worker_class="sync", bind="unix", workers=2, name=unique_name("doomed"))
    collector = GunicornCollector(GunicornOptions(remember_after=0))    # remembered at once
    app = app_for(collector, g)
    assert app.app == g.name and len(app.workers) == 2
    g.kill_master()

    def gone():
        snap = collect(collector)
        mine = [a for a in snap.apps if a.app == g.name]
        return mine if len(mine) == 1 and not mine[0].up else None
    [down] = poll(gone, 15, message="gunicorn_up did not turn 0")
    assert down.workers == [] and down.listeners == []


def test_recycled_workers_reuse_slots(gunicorn_factory):
    g = gunicorn_factory(worker_class="sync", bind="tcp", workers=2, name=unique_name("recycle"),
                         extra_args=["--max-requests", "1"])
    collector = GunicornCollector()
    pids_seen: set[int] = set()
    slots_seen: set[int] = set()
    for _ in range(40):  # bounded: 40 requests, each recycles a worker
        g.get("/", timeout=10)
        app = app_for(collector, g)
        if app is None:
            continue
        pids_seen |= {w.pid for w in app.workers}
        slots_seen |= {w.slot for w in app.workers}
    assert len(pids_seen) >= 10, "workers were not recycled"
    # at most one extra slot for the moment an old worker is still exiting
    assert slots_seen <= {0, 1, 2}, slots_seen


def test_app_label_forms_and_argv_shapes(gunicorn_factory):
    named = gunicorn_factory(bind="unix", workers=3, name=unique_name("shop"))   # 3: the order is checked
    plain = gunicorn_factory(bind="tcp", workers=1, setproctitle=False, invoke="module")
    titled_default = gunicorn_factory(bind="tcp", workers=1)
    mapped = gunicorn_factory(bind="unix", workers=1, setproctitle=False, name=unique_name("legacy-name"))
    billing = unique_name("billing")
    collector = GunicornCollector(GunicornOptions(app_names=((re.compile(mapped.name), billing),)))
    for g in (named, plain, titled_default, mapped):
        wait_control(collector, g)
    snap = collect(collector)
    by_master = {a.master_pid: a for a in snap.apps if a.up}
    assert by_master[named.pid].app == named.name
    # without setproctitle the argv is parsed; python -m gunicorn is recognised
    assert by_master[plain.pid].app.startswith("wsgi_app:app")
    assert by_master[plain.pid].settings_source["workers"] == "control_socket"
    assert by_master[titled_default.pid].app.startswith("wsgi_app:app")
    assert by_master[mapped.pid].app == billing
    for g in (named, plain, titled_default, mapped):
        a = by_master[g.pid]
        # the workers are the harness's (children of the master, /proc), in slot order:
        # a fresh collector numbers them 0.. in the order they started (start time read
        # by the harness from /proc/PID/stat; workers forked in the same clock tick by pid)
        assert sorted(w.pid for w in a.workers) == sorted(g.worker_pids())
        assert [w.slot for w in a.workers] == list(range(g.workers)), [(w.slot, w.pid) for w in a.workers]
        started = [(proc_stat(w.pid)[2], w.pid) for w in a.workers]
        assert started == sorted(started), f"slots not in start order: (start tick, pid) {started}"
        assert len(a.workers) == g.workers and a.version.split(".")[0].isdigit()


def test_settings_without_control_socket_come_from_argv_and_env(gunicorn_factory):
    g = gunicorn_factory(bind="unix", workers=2, setproctitle=False, name=unique_name("argv-only"),
                         worker_class="gthread", threads=3, timeout=45,
                         extra_args=["--no-control-socket"],
                         env={"GUNICORN_CMD_ARGS": "--keep-alive 7 --backlog 100"})
    collector = GunicornCollector()
    a = app_for(collector, g)
    assert not a.control_socket
    assert (a.worker_class, a.threads, a.capacity, a.timeout, a.keepalive, a.backlog,
            a.workers_desired) == ("gthread", 3, 3, 45, 7, 100, 2)
    assert a.settings_source["timeout"] == "cmdline"
    assert a.settings_source["keepalive"] == "env"
    # the kernel's view of the backlog agrees with what we read from the environment
    assert listener_of(a, g).queue_max == ss_listen_queue(g.listener)[1] == 100


def test_control_socket_is_preferred_and_never_changed(gunicorn_factory):
    g = gunicorn_factory(bind="unix", workers=2, name=unique_name("ctl"))
    collector = GunicornCollector()
    a = wait_control(collector, g)
    assert a.control_socket and a.settings_source["workers"] == "control_socket"
    assert a.workers_spawned == 2
    # TTIN raises the target; the control socket's answer follows it
    os.kill(g.pid, signal.SIGTTIN)
    poll(lambda: app_for(collector, g).workers_desired == 3, 10, message="desired did not follow TTIN")
    poll(lambda: len(app_for(collector, g).workers) == 3, 20, message="third worker not seen")
    assert "shutdown" not in g.log_text()


def test_control_socket_is_asked_again_only_when_workers_change(gunicorn_factory, monkeypatch):
    """A proven answer is reused while the master's workers are the same processes (what
    `show config|stats` says changes only when workers come or go); a replaced worker
    makes the next collection ask again, and workers_spawned then matches gunicorn's own
    log. The real query runs; the test only counts the calls."""
    from exporter.collectors import gunicorn as gunicorn_collector
    from exporter.gunicorn import control
    calls = []
    real = control.query

    async def counting(*args, **kwargs):
        calls.append(args[1])
        return await real(*args, **kwargs)
    monkeypatch.setattr(control, "query", counting)
    g = gunicorn_factory(bind="unix", workers=2, name=unique_name("ctl-reuse"))
    collector = GunicornCollector()
    a = wait_control(collector, g)
    assert a.workers_spawned == len(g.booted_pids()) == 2
    calls.clear()
    for _ in range(3):
        a = app_for(collector, g)
        assert a.control_socket and a.workers_spawned == 2
    assert g.pid not in calls                   # (other tests' masters may be asked)
    os.kill(g.worker_pids()[0], signal.SIGKILL)
    a = poll(lambda: (a := app_for(collector, g)) and len(a.workers) == 2 and
             {w.pid for w in a.workers} == set(g.worker_pids()) and a.workers_spawned == 3
             and a, 20, message="the replaced worker's spawn was not seen")
    assert g.pid in calls and len(g.booted_pids()) == 3
    monkeypatch.setattr(gunicorn_collector, "CONTROL_REFRESH", 0.0)
    calls.clear()
    app_for(collector, g)
    assert calls.count(g.pid) == 1              # too old: asked again


def test_control_socket_kill_and_reload_counts_match_gunicorns_log(gunicorn_factory):
    """workers_killed and reloads of `show stats` against gunicorn's own log. A worker
    killed from outside (kill -9) is a spawn without a kill signal; a reload (HUP) is one
    reload (one 'Handling signal: hup' line), a new worker per slot and at least one kill
    signal per old worker (each logs its exit; gunicorn counts signals, and may signal a
    worker twice); TTOU at least one more."""
    g = gunicorn_factory(bind="unix", workers=2, name=unique_name("ctl-kills"))
    collector = GunicornCollector()
    a = wait_control(collector, g)
    assert (a.workers_spawned, a.workers_killed, a.reloads) == (2, 0, 0)
    victim = g.worker_pids()[0]
    os.kill(victim, signal.SIGKILL)
    a = poll(lambda: (a := app_for(collector, g)) and a.workers_spawned == 3 and
             victim not in {w.pid for w in a.workers} and a, 20,
             message="the respawn after kill -9 was not seen")
    assert a.workers_killed == 0 and a.reloads == 0
    assert f"Worker (pid:{victim}) was sent SIGKILL!" in g.log_text()

    exited = re.compile(r"Worker exiting \(pid: (\d+)\)")
    old = set(g.worker_pids())
    os.kill(g.pid, signal.SIGHUP)
    a = poll(lambda: (a := app_for(collector, g)) and a.reloads == 1 and len(a.workers) == 2
             and not old & {w.pid for w in a.workers} and a.workers_spawned == 5 and
             a.workers_killed >= 2 and   # counted after the spawns: an answer between them
             old <= {int(p) for p in exited.findall(g.log_text())} and a, 30,
             message="the reload was not seen")
    log = g.log_text()
    assert a.reloads == log.count("Handling signal: hup") == 1
    assert a.workers_spawned == len(g.booted_pids()) == 5
    assert a.workers_killed >= len(old & {int(p) for p in exited.findall(log)}) == 2
    after_reload = a.workers_killed

    os.kill(g.pid, signal.SIGTTOU)
    a = poll(lambda: (a := app_for(collector, g)) and len(a.workers) == 1 and
             a.workers_killed > after_reload and a, 30, message="the TTOU kill was not seen")
    assert len({int(p) for p in exited.findall(g.log_text())}) == 3
    assert a.reloads == 1 and a.workers_spawned == len(g.booted_pids()) == 5


def test_worker_fd_limit_is_the_kernels_and_read_again_after_its_refresh(gunicorn_factory,
                                                                        monkeypatch):
    """gunicorn_worker_max_fds is the soft RLIMIT_NOFILE the kernel reports for the
    worker (resource.prlimit is the oracle); a change made from outside with prlimit
    shows once the cached value is older than FD_LIMIT_REFRESH."""
    import resource
    from exporter.gunicorn import measure
    g = gunicorn_factory(bind="unix", workers=1, name=unique_name("fdlimit"))
    collector = GunicornCollector()
    [pid] = g.worker_pids()
    soft, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    assert by_pid(app_for(collector, g))[pid].fd_limit == soft
    new = min(soft, hard) - 7
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (new, hard))
    assert by_pid(app_for(collector, g))[pid].fd_limit == soft     # cached for a while
    monkeypatch.setattr(measure, "FD_LIMIT_REFRESH", 0.0)
    assert by_pid(app_for(collector, g))[pid].fd_limit == new == \
        resource.prlimit(pid, resource.RLIMIT_NOFILE)[0]


def test_dirty_arbiter_and_unrelated_children_are_not_workers(gunicorn_factory):
    g = gunicorn_factory(bind="unix", workers=2, name=unique_name("dirty"), setproctitle=False,
                         private_tmpdir=True,
                         extra_args=["--dirty-app", "dirty_app:Dirty", "--dirty-workers", "1"])
    collector = GunicornCollector()
    poll(lambda: g.dirty_arbiter_pids(), 20, message="no dirty arbiter started")
    # gunicorn may respawn its dirty arbiter right after start: compare once the log
    # (the harness's oracle) has caught up with the process table
    a = poll(lambda: (a := app_for(collector, g)) and
             sorted(w.pid for w in a.workers) == sorted(g.worker_pids()) and a, 10,
             message="workers differ from the harness's view")
    assert len(a.workers) == 2
    assert not g.dirty_arbiter_pids() & {w.pid for w in a.workers}


def test_worker_db_connections_tcp_and_unix_match_ss(gunicorn_factory, tmp_path):
    import socket
    from tests.harness.ss import ss_process_connections
    tcp = socket.socket()
    tcp.bind(("127.0.0.1", 0))
    tcp.listen(16)
    port = tcp.getsockname()[1]
    sock_dir = tmp_path / "pg"
    sock_dir.mkdir()
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    unix.bind(str(sock_dir / f".s.PGSQL.{port}"))
    unix.listen(16)
    try:
        g = gunicorn_factory(bind="tcp", workers=1, name=unique_name("dbconn"), app="conn_app:app")
        collector = GunicornCollector(GunicornOptions(db_ports=(port,)))
        [pid] = g.worker_pids()
        assert by_pid(app_for(collector, g))[pid].db_connections == 0
        accepted = []
        for _ in range(3):
            assert g.get(f"/connect?port={port}")[0] == 200
            accepted.append(tcp.accept()[0])
        assert g.get(f"/connect?unix={sock_dir}/.s.PGSQL.{port}")[0] == 200
        accepted.append(unix.accept()[0])  # a real server accepts at once
        w = by_pid(app_for(collector, g))[pid]
        # oracle: ss, counting the worker's TCP connections to the port
        by_ss = [c for c in ss_process_connections(pid)
                 if c.state == "ESTAB" and c.peer.endswith(f":{port}")]
        assert len(by_ss) == 3
        assert w.db_connections == 4
        assert sorted(p for _, p, _, _ in w.db_tcp) == sorted(int(c.local.rsplit(":", 1)[1]) for c in by_ss)
        assert len(w.db_unix) == 1
        # the HTTP connection of the request itself is not a DB connection
        assert w.connections_active == 0
        for c in accepted:
            c.close()
    finally:
        tcp.close()
        unix.close()


def test_reuse_port_gives_per_worker_listeners(gunicorn_factory):
    g = gunicorn_factory(bind="tcp", workers=2, name=unique_name("reuse"), extra_args=["--reuse-port"])
    collector = GunicornCollector()
    a = app_for(collector, g)
    names = sorted(l.address + f"#{l.worker_slot}" for l in a.listeners)
    assert names == [f"{g.listener}#0", f"{g.listener}#1"]
    # ss shows two listening sockets on the same port, each with its own queue
    from tests.harness.ss import ss_sockets
    listening = [s for s in ss_sockets(("-tlnH",)) if s.local == g.listener]
    assert len(listening) == 2
    assert all(l.queue_max == min(2048, ProcFS().somaxconn()) for l in a.listeners)


@pytest.mark.parametrize("setproctitle", [True, False])
def test_usr2_upgrade_shows_both_masters(gunicorn_factory, setproctitle):
    g = gunicorn_factory(bind="unix", workers=1, name=unique_name("usr2"), setproctitle=setproctitle)
    n = g.name
    collector = GunicornCollector()
    os.kill(g.pid, signal.SIGUSR2)
    new_pid = None
    try:
        def both():
            apps = {a.app: a for a in collect(collector).apps
                    if a.up and a.app.startswith(n)}
            new = apps.get(f"{n}.2")
            return (apps, new) if new and new.workers and n in apps else None
        apps, new = poll(both, 20, message=f"new master did not show up as {n}.2")
        new_pid = new.master_pid
        assert apps[n].master_pid == g.pid and new_pid != g.pid
        assert {w.pid for w in apps[n].workers}.isdisjoint({w.pid for w in new.workers})
        # the old master leaves: the new one is plain n again and nothing reads "down"
        os.kill(g.pid, signal.SIGTERM)
        g.proc.wait(15)

        def settled():  # (other tests' masters may run on the same host)
            apps = {a.app: a for a in collect(collector).apps if a.app.startswith(n)}
            return apps if set(apps) == {n} and apps[n].up else None
        apps = poll(settled, 20, message=f"after the old master quit, only {n} should remain")
        assert apps[n].master_pid == new_pid
    finally:
        if new_pid:
            try:
                os.kill(new_pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            poll(lambda: not os.path.exists(f"/proc/{new_pid}") or
                 open(f"/proc/{new_pid}/stat").read().split(") ")[1].startswith("Z"), 15,
                 message="new master did not stop")


@pytest.mark.parametrize("worker_class", ["uvicorn_worker.UvicornWorker", "uvicorn.workers.UvicornWorker"])
def test_uvicorn_workers(gunicorn_factory, worker_class):
    import importlib.util
    module = worker_class.rsplit(".", 1)[0]
    require(importlib.util.find_spec(module) is not None, f"{module} not installed")
    g = gunicorn_factory(worker_class=worker_class, bind="tcp", workers=2, name=unique_name("uvi"),
                         app="asgi_app:app", setproctitle=False)
    collector = GunicornCollector()
    a = wait_control(collector, g)
    assert a.worker_class == "uvicorn" and a.capacity == float("inf")
    assert sorted(w.pid for w in a.workers) == sorted(g.worker_pids())
    with SlowClients(g, 3, seconds=20):
        exp, ss = poll(lambda: (r := stable_reading(collector, g, lambda: _ss_view(g))()) and
                       sum(n for _, n in r[0][2]) == 3 and r, 15,
                       message="uvicorn workers did not take the 3 requests")
        assert exp == ss


def _keepalive_request(g, path: str = "/"):
    """One HTTP/1.1 request on a connection that stays open (keep-alive): the answer is
    read whole (Content-Length), so by the client's own account the connection is idle."""
    import socket as _socket
    if g.unix_path:
        s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        s.settimeout(10)
        s.connect(g.unix_path)
    else:
        s = _socket.create_connection((g.host, g.port), timeout=10)
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        data += s.recv(4096)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int([h.split(b":")[1] for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")][0])
    while len(body) < length:
        body += s.recv(4096)
    assert head.startswith(b"HTTP/1.1 200")
    return s


def test_threads_serving_gone_clients_are_busy(gunicorn_factory, tmp_path):
    """A gthread worker keeps running requests whose clients hung up (the proxy gave
    up): its threads are busy, whoever waits for the answer. ss counts the CLOSE-WAIT
    connections; gunicorn's own access log shows the requests ran to their end."""
    access = tmp_path / "access.log"
    g = gunicorn_factory(worker_class="gthread", threads=2, workers=1, bind="tcp",
                         name=unique_name("gone"), extra_args=["--access-logfile", str(access)])
    collector = GunicornCollector()
    [pid] = g.worker_pids()
    with SlowClients(g, 5, seconds=4) as clients:
        poll(lambda: ss_worker_active_connections(pid, g.listener) == 5, 10, message="not accepted")
        for i in range(5):
            clients.hangup(i)
        poll(lambda: ss_worker_close_wait_connections(pid, g.listener) == 5, 10,
             message="no CLOSE-WAIT in ss")
        app = poll(lambda: (a := app_for(collector, g)) and
                   by_pid(a)[pid].connections_client_closed == 5 and a, 10,
                   message="the exporter did not see the 5 gone clients")
        w = by_pid(app)[pid]
        assert (w.connections_active, w.requests) == (0, 5)
        from exporter.metrics.workers import busy_workers
        assert len(busy_workers(app)) == 1        # 5 requests on 2 threads: every thread runs the app
    poll(lambda: access.exists() and access.read_text().count("/slow?seconds=4") == 5, 30,
         message="gunicorn did not serve the 5 requests of gone clients")


@pytest.mark.parametrize("bind,in_flight,busy", [
    ("tcp", 1, 0),     # one request in flight beside them: one thread of two runs the app
    ("unix", 3, 1),    # 3 requests: 2 run, 1 waits for a thread
], ids=["tcp", "unix"])
def test_idle_keepalive_connections_are_not_busy(gunicorn_factory, bind, in_flight, busy):
    """gthread parks keep-alive connections; they are idle, not requests in flight (the
    client's own account is the oracle: each answer read whole, nothing sent since), and
    requests in flight beside them are active. A unix socket has no tcp_info, but a gthread
    worker says which connections no thread has: those its main loop waits on, in its
    epoll (nginx keeps upstream connections open with `keepalive`)."""
    from exporter.metrics.workers import busy_workers
    g = gunicorn_factory(worker_class="gthread", threads=2, workers=1, bind=bind,
                         name=unique_name(f"keepalive-{bind}"), extra_args=["--keep-alive", "60"])
    collector = GunicornCollector()
    assert wait_control(collector, g).capacity == 2      # the threads known: busy is exact
    [pid] = g.worker_pids()
    idle = [_keepalive_request(g) for _ in range(3)]
    try:
        w = poll(lambda: (w := by_pid(app_for(collector, g))[pid]).connections_idle == 3 and w,
                 10, message=f"idle keep-alive connections ({bind}) not seen")
        assert (w.connections_active, w.requests) == (0, 0)
        assert app_for(collector, g).workers and sum(
            1 for x in app_for(collector, g).workers if x.connections_active >= 2) == 0
        with SlowClients(g, in_flight, seconds=20):
            w = poll(lambda: (w := by_pid(app_for(collector, g))[pid]).connections_active
                     == in_flight and w, 10, message="the requests in flight were not active")
            assert w.connections_idle == 3
            assert len(busy_workers(app_for(collector, g))) == busy
    finally:
        for s in idle:
            s.close()
