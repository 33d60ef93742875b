"""Self-tests of the harness (tests/harness/, tests/conftest.py,
tests/apps). They start real gunicorn masters."""

import os
import signal
import sys
import time

import pytest

from tests.conftest import require, requires_root, strict_mode
from tests.harness.clients import SlowClients, http_get
from tests.harness.command import GUNICORN_SCRIPT, VENV_BIN
from tests.harness.masters import Gunicorn, GunicornStartError
from tests.harness.procs import free_port, pid_alive, poll, proc_cmdline, proc_stat, unique_name
from tests.harness.ss import (parse_ss_line, ss_listen_queue, ss_process_connections,
                              ss_worker_active_connections, ss_worker_close_wait_connections)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]


def test_sync_unix_master_two_workers(gunicorn_factory):
    g = gunicorn_factory(worker_class="sync", workers=2, bind="unix")
    assert g.unix_path and os.path.exists(g.unix_path)
    assert g.bind == "unix:" + g.unix_path and g.port is None and g.url is None
    pids = g.worker_pids()
    assert len(pids) == 2
    for pid in pids:
        assert proc_stat(pid)[1] == g.pid  # ppid is the master
    assert set(pids) <= g.booted_pids()
    assert g.get("/") == (200, b"ok")
    status, body = g.get("/pid")
    assert status == 200 and int(body) in pids
    poll(lambda: g.ctl_path.exists(), 5, message="control socket not created")
    assert g.log_path.exists()


def test_slow_clients_fill_accept_queue(gunicorn_factory):
    g = gunicorn_factory(worker_class="sync", workers=2, bind="unix")
    workers = g.worker_pids()
    with SlowClients(g, 3, seconds=30) as clients:
        assert len(clients) == 3
        # each sync worker holds one request; the third waits in the backlog
        poll(lambda: ss_listen_queue(g.listener) == (1, 2048) or None, 5,
             message="accept queue never reached 1")
        poll(lambda: [ss_worker_active_connections(p, g.listener) for p in workers] == [1, 1],
             5, message="each worker should hold one ESTAB connection")
    # quick shutdown: the in-flight 30 s sleeps are abandoned
    g.stop(sig=signal.SIGQUIT)
    assert not pid_alive(g.pid)


def test_tcp_hangup_gives_close_wait(gunicorn_factory):
    g = gunicorn_factory(worker_class="sync", workers=1, bind="tcp")
    assert g.host == "127.0.0.1" and g.url == "http://127.0.0.1:%d" % g.port
    (worker,) = g.worker_pids()
    clients = SlowClients(g, 1, seconds=30)
    try:
        poll(lambda: ss_worker_active_connections(worker, g.listener) == 1, 5,
             message="worker never held the connection")
        conns = ss_process_connections(worker)
        assert any(c.netid == "tcp" and c.state == "ESTAB" for c in conns), conns
        clients.hangup(0)
        poll(lambda: ss_worker_close_wait_connections(worker, g.listener) == 1, 5,
             message="no CLOSE-WAIT after client hangup")
        assert ss_worker_active_connections(worker, g.port) == 0
    finally:
        clients.close_all()
    g.stop(sig=signal.SIGQUIT)


@pytest.mark.parametrize("kwargs", [
    dict(worker_class="gthread", threads=4),
    dict(worker_class="gevent", worker_connections=100),
    dict(worker_class="gevent_pywsgi"),
    dict(worker_class="asgi", app="asgi_app:app"),
], ids=lambda kw: kw["worker_class"])
def test_worker_classes_boot(gunicorn_factory, kwargs):
    g = gunicorn_factory(workers=2, bind="tcp", **kwargs)
    pids = g.worker_pids()
    assert len(pids) == 2
    assert g.get("/") == (200, b"ok")
    status, body = g.get("/slow?seconds=0.05")
    assert status == 200 and body.startswith(b"slept")
    assert int(g.get("/pid")[1]) in pids
    assert "Using worker: %s" % kwargs["worker_class"] in g.log_text()


def test_eventlet_worker_state(tmp_path):
    """gunicorn 27 dropped its eventlet worker; if it is there, it must boot."""
    from gunicorn.workers import SUPPORTED_WORKERS
    tmp = tmp_path
    if "eventlet" in SUPPORTED_WORKERS:
        with Gunicorn.start(tmp, worker_class="eventlet", workers=1) as g:
            assert g.get("/") == (200, b"ok")
        return
    t0 = time.monotonic()
    with pytest.raises(GunicornStartError) as err:
        Gunicorn.start(tmp, worker_class="eventlet", workers=1)
    assert time.monotonic() - t0 < 10  # fails fast, with the log
    assert "eventlet" in str(err.value) and "not found" in str(err.value)


@pytest.mark.parametrize("bind", ["tcp6", ["unix", "tcp", "tcp6"]], ids=["tcp6", "multi"])
def test_binds_listen(gunicorn_factory, bind):
    g = gunicorn_factory(workers=1, bind=bind)
    for b in g.binds:
        assert ss_listen_queue(b) == (0, 2048), b
        assert http_get(b, "/") == (200, b"ok")
    if bind == "tcp6":
        assert g.bind.startswith("[::1]:") and g.host == "::1"


def test_setproctitle_on_and_off(gunicorn_factory):
    on = gunicorn_factory(workers=1, setproctitle=True, name=unique_name("harness-on"))
    off = gunicorn_factory(workers=1, setproctitle=False, name=unique_name("harness-off"))
    assert proc_cmdline(on.pid) == f"gunicorn: master [{on.name}]"
    assert [proc_cmdline(p) for p in on.worker_pids()] == [f"gunicorn: worker [{on.name}]"]
    off_cmd = proc_cmdline(off.pid)
    # script invoke: the kernel runs the shebang interpreter with the script path
    assert off_cmd.startswith(str(VENV_BIN) + "/python"), off_cmd
    assert str(GUNICORN_SCRIPT) in off_cmd and off_cmd.endswith("wsgi_app:app")
    assert proc_cmdline(off.worker_pids()[0]) == off_cmd  # forked, title untouched


def test_invoke_module(gunicorn_factory):
    g = gunicorn_factory(workers=1, invoke="module", setproctitle=False)
    cmd = proc_cmdline(g.pid)
    assert cmd.startswith(sys.executable + " -m gunicorn "), cmd
    assert g.get("/") == (200, b"ok")
    titled = gunicorn_factory(workers=1, invoke="module")
    assert proc_cmdline(titled.pid) == "gunicorn: master [wsgi_app:app]"


def test_app_routes(gunicorn_factory):
    g = gunicorn_factory(workers=1, worker_class="gthread", threads=2)
    assert g.get("/hold?seconds=0.1")[1].startswith(b"held 0.1")
    assert g.get("/alloc?mb=8")[1].startswith(b"allocated 8 MiB")
    assert g.get("/nope")[0] == 404
    with SlowClients(g, 2, seconds=0.05) as clients:
        answers = clients.read_all(timeout=10)
    assert [a.split(b"\r\n", 1)[0] for a in answers] == [b"HTTP/1.1 200 OK"] * 2


def test_fail_fast_and_kill_master_cleanup(gunicorn_factory, tmp_path):
    t0 = time.monotonic()
    with pytest.raises(GunicornStartError) as err:
        gunicorn_factory(workers=1, app="no_such_module:app")
    assert time.monotonic() - t0 < 10
    assert "no_such_module" in str(err.value)

    g = gunicorn_factory(workers=2)
    workers = g.worker_pids()
    g.kill_master()
    assert not g.alive()
    g.stop()  # kills the orphaned workers by PID (+ start time)
    poll(lambda: not any(pid_alive(p) for p in workers), 5, message="orphans left")


def test_long_tmp_path_uses_short_socket_dir(gunicorn_factory, tmp_path):
    deep = tmp_path / ("d" * 60) / ("e" * 40)
    g = gunicorn_factory(workers=1, tmp_path=deep)
    assert len(g.unix_path) < 108 and len(str(g.ctl_path)) < 108
    assert g.log_path.parent.parent == deep
    sock_dir = os.path.dirname(g.unix_path)
    g.stop()
    assert not os.path.exists(sock_dir)


def test_helpers(monkeypatch):
    assert 0 < free_port() < 65536
    assert poll(lambda: 42, 1) == 42
    with pytest.raises(AssertionError, match="never true.*last value: 0"):
        poll(lambda: 0, 0.1, message="never true")
    s = parse_ss_line('u_str ESTAB 0 0 /tmp/a.sock 20012 * 20011 '
                      'users:(("gunicorn: worke",pid=12,fd=5),("x",pid=13,fd=7))')
    assert (s.local, s.peer, s.owners) == ("/tmp/a.sock", "*", [(12, 5), (13, 7)])
    s = parse_ss_line("LISTEN 1 5 [::1]:34421 [::]:*", "tcp")
    assert (s.netid, s.recv_q, s.send_q, s.local) == ("tcp", 1, 5, "[::1]:34421")

    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("GUNICORN_EXPORTER_STRICT", raising=False)
    assert not strict_mode()
    require(True, "fine")
    with pytest.raises(pytest.skip.Exception):
        require(False, "missing thing")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="strict mode: missing thing"):
        require(False, "missing thing")
    monkeypatch.setenv("CI", "false")
    monkeypatch.setenv("GUNICORN_EXPORTER_STRICT", "1")
    with pytest.raises(pytest.fail.Exception):
        require(False, "x")
    monkeypatch.delenv("GUNICORN_EXPORTER_STRICT")
    requires_root() if os.geteuid() == 0 else None
