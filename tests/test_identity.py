"""Every gunicorn measured as itself: identity proven by the kernel, the process model
(masters, workers, orphans, USR2), and the settings in force, against real masters.

Oracles: the kernel (SO_PEERCRED of a connection we make ourselves, /proc/PID/stat),
gunicorn's own log (booted workers) and `ss`. Every collection is rendered and parsed
with the strict exposition parser (tests/exposition.py), so a series that appears twice
fails the test. Apps get unique names: other test runs may share the host.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import struct

import pytest

from exporter.collectors.gunicorn import GunicornCollector, GunicornOptions
from exporter.gunicorn import control
from exporter.metrics.encode import _Families
from exporter.linux.procfs import ProcFS
from exporter.metrics import render
from exporter.snapshot import CollectorResult, Snapshot
from prometheus_client.exposition import generate_latest
from tests.exposition import parse_strict, select
from tests.harness.clients import SlowClients
from tests.harness.procs import poll, proc_stat
from tests.harness.ss import ss_worker_active_connections

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


def uniq(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(3)}"


def collect(collector: GunicornCollector):
    """One collection, also rendered and parsed strictly (no duplicate series)."""
    snap = asyncio.run(collector.collect())
    rendered = Snapshot(results={"gunicorn": CollectorResult("gunicorn", True, 0.0, data=snap)})
    parse_strict(generate_latest(_Families(list(render(rendered)))).decode())
    return snap


def apps_named(snap, name):
    return [a for a in snap.apps if a.app == name]


def peer_pid_of(path: str) -> int:
    """Which process listens on a unix socket path, by the kernel's peer credentials."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(path)
        return struct.unpack("3i", s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[0]


# --- identity through the control socket ---------------------------------------------

def test_two_masters_sharing_the_default_control_socket_path(gunicorn_factory, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    alpha_name, beta_name = uniq("alpha"), uniq("beta")
    common = dict(setproctitle=False, control_socket=False, env={"HOME": str(home)}, bind="tcp")
    alpha = gunicorn_factory(name=alpha_name, workers=2, timeout=31, **common)
    beta = gunicorn_factory(name=beta_name, workers=3, timeout=47, **common)
    ctl = str(home / ".gunicorn" / "gunicorn.ctl")
    # beta binds the path (taking it from alpha) once its workers are up: the kernel says when
    poll(lambda: peer_pid_of(ctl) == beta.pid, 15, message="beta never took the control path")
    collector = GunicornCollector(GunicornOptions(remember_after=0))  # beta's outage: 0

    def both():
        snap = collect(collector)
        a, b = apps_named(snap, alpha_name), apps_named(snap, beta_name)
        return (a[0], b[0]) if len(a) == len(b) == 1 and b[0].control_socket else None
    a, b = poll(both, 20, message="beta's control socket never answered")
    assert (a.master_pid, a.workers_desired, a.timeout, len(a.workers)) == (alpha.pid, 2, 31, 2)
    assert not a.control_socket and a.settings_source["timeout"] == "cmdline"
    assert (b.master_pid, b.workers_desired, b.timeout, len(b.workers)) == (beta.pid, 3, 47, 3)
    assert b.settings_source["timeout"] == "control_socket"

    beta.stop()
    snap = poll(lambda: (s := collect(collector)) and apps_named(s, beta_name)
                and not apps_named(s, beta_name)[0].up and s, 20,
                message="beta's outage was not reported")
    [a] = apps_named(snap, alpha_name)
    assert a.up and a.master_pid == alpha.pid and a.workers_desired == 2 and a.timeout == 31


def _decoy(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    s.listen(8)
    s.setblocking(False)
    return s


def _connected(decoy) -> bool:
    try:
        conn, _ = decoy.accept()
    except BlockingIOError:
        return False
    conn.close()
    return True


def test_control_socket_path_replaced_by_a_symlink_or_another_socket(gunicorn_factory, tmp_path):
    name = uniq("ctl-swap")
    g = gunicorn_factory(name=name, workers=1, setproctitle=False, bind="tcp")
    collector = GunicornCollector()
    poll(lambda: apps_named(collect(collector), name)[0].control_socket, 15,
         message="control socket never answered")
    decoy = _decoy(str(tmp_path / "decoy.sock"))
    other = _decoy(str(tmp_path / "other.sock"))
    try:
        os.unlink(g.ctl_path)
        os.symlink(tmp_path / "decoy.sock", g.ctl_path)       # a symlink to another socket
        for _ in range(3):
            [a] = apps_named(collect(collector), name)
            assert a.up and a.master_pid == g.pid
        assert not _connected(decoy), "the exporter followed a symlink at the control path"
        os.unlink(g.ctl_path)
        os.rename(tmp_path / "other.sock", g.ctl_path)         # a socket that is not the master's
        for _ in range(3):
            collect(collector)
        assert not _connected(other), "the exporter connected to a socket the master does not hold"
    finally:
        decoy.close()
        other.close()


def test_an_answer_from_another_process_is_refused_before_anything_is_sent(tmp_path):
    path = str(tmp_path / "impostor.ctl")
    impostor = _decoy(path)
    impostor.setblocking(True)
    impostor.settimeout(5)
    try:
        # we (this test process) listen; the exporter expects master pid 1 to answer
        with pytest.raises(control.NotTheMaster):
            me = ProcFS()
            asyncio.run(control.query(me, os.getpid(), me.status(os.getpid()), path, 1, None,
                                      timeout=2))
        conn, _ = impostor.accept()
        conn.settimeout(5)
        assert conn.recv(100) == b""  # connected, found out, closed: not one byte written
        conn.close()
    finally:
        impostor.close()


# --- the process model ----------------------------------------------------------------

def test_master_killed_while_workers_are_busy(gunicorn_factory):
    name = uniq("doomed")
    g = gunicorn_factory(name=name, workers=2, setproctitle=False, bind="tcp")
    collector = GunicornCollector(GunicornOptions(remember_after=0))   # remembered at once
    [a] = apps_named(collect(collector), name)
    workers = sorted(w.pid for w in a.workers)
    with SlowClients(g, 2, seconds=20):
        poll(lambda: all(ss_worker_active_connections(p, g.listener) == 1 for p in workers), 10,
             message="both workers did not take a request")
        g.kill_master()
        snap = collect(collector)  # the first collection after the kill
        [down] = apps_named(snap, name)
        assert not down.up and snap.orphans.get(name) == 2
        # oracle: the kernel still has both workers, reparented
        for pid in workers:
            st = proc_stat(pid)
            assert st is not None and st[1] != g.pid
        assert not [x for x in snap.apps if x.up and x.master_pid in workers]


def test_max_requests_churn_with_titles_never_makes_a_phantom_app(gunicorn_factory):
    name = uniq("churn")
    g = gunicorn_factory(name=name, workers=2, bind="tcp", extra_args=["--max-requests", "1"])
    collector = GunicornCollector()
    pids = set()
    for _ in range(40):
        g.get("/", timeout=10)
        snap = collect(collector)
        mine = [a for a in snap.apps if a.app.split("@")[0].split(".")[0] == name]
        assert [a.app for a in mine] == [name], [a.app for a in mine]
        assert mine[0].up and mine[0].master_pid == g.pid
        pids |= {w.pid for w in mine[0].workers}
    assert len(pids) >= 10


# --- settings in force --------------------------------------------------------------------

def _print_config(argv: list[str], env: dict[str, str]) -> dict[str, str]:
    """gunicorn's own view of its settings (`--print-config` runs the config file: the
    test may do that, the exporter never does)."""
    import subprocess
    from tests.harness.command import APPS_DIR, GUNICORN_SCRIPT
    out = subprocess.run([str(GUNICORN_SCRIPT), *argv, "--print-config", "wsgi_app:app"],
                         cwd=APPS_DIR, env={**os.environ, **env}, capture_output=True, text=True,
                         timeout=30, check=True).stdout
    return {k.strip(): v.strip() for k, _, v in (line.partition("=") for line in out.splitlines())}


def test_config_file_with_cpu_count_arithmetic_and_environment(gunicorn_factory, tmp_path):
    conf = tmp_path / "gunicorn_conf.py"
    conf.write_text("import multiprocessing\nimport os\n"
                    "workers = multiprocessing.cpu_count() * 2 + 1\n"
                    "keepalive = int(os.environ.get('APP_KEEPALIVE', 3))\n")
    env = {"APP_KEEPALIVE": "7"}
    oracle = _print_config(["-c", str(conf)], env)
    name = uniq("conf")
    g = gunicorn_factory(name=name, workers=None, wait_workers=False, setproctitle=False,
                         control_socket=False, env=env,
                         extra_args=["-c", str(conf), "--no-control-socket"])
    g.wait_for_workers(int(oracle["workers"]))  # and gunicorn's log agrees with --print-config
    [a] = apps_named(collect(GunicornCollector()), name)
    assert (a.workers_desired, len(a.workers), a.keepalive) == \
        (int(oracle["workers"]), int(oracle["workers"]), int(oracle["keepalive"])) == \
        (2 * os.cpu_count() + 1, 2 * os.cpu_count() + 1, 7)
    assert a.settings_source["workers"] == a.settings_source["keepalive"] == "config_file"


def test_web_concurrency(gunicorn_factory):
    name = uniq("webconc")
    g = gunicorn_factory(name=name, workers=None, wait_workers=False, setproctitle=False,
                         control_socket=False, env={"WEB_CONCURRENCY": "3"},
                         extra_args=["--no-control-socket"])
    g.wait_for_workers(3)
    [a] = apps_named(collect(GunicornCollector()), name)
    assert (a.workers_desired, len(a.workers), a.settings_source["workers"]) == (3, 3, "env")


def test_unknown_settings_are_absent_not_defaults(gunicorn_factory, tmp_path):
    conf = tmp_path / "gunicorn_conf.py"
    conf.write_text("import json\nworkers = json.loads('2')\n")  # not something we evaluate
    name = uniq("unknowable")
    g = gunicorn_factory(name=name, workers=None, wait_workers=False, setproctitle=False,
                         control_socket=False, extra_args=["-c", str(conf), "--no-control-socket"])
    g.wait_for_workers(2)
    collector = GunicornCollector()
    snap = collect(collector)
    [a] = apps_named(snap, name)
    assert a.workers_desired is None and a.settings_source["workers"] == "unknown"
    assert len(a.workers) == 2
    rendered = Snapshot(results={"gunicorn": CollectorResult("gunicorn", True, 0.0, data=snap)})
    series = parse_strict(generate_latest(_Families(list(render(rendered)))).decode())
    assert not select(series, "gunicorn_workers_desired", app=name)
    assert select(series, "gunicorn_setting_source_info", app=name, setting="workers",
                  source="unknown")
