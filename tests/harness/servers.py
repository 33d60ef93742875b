"""Servers the tests run beside gunicorn: any server (Prometheus, Alertmanager, nginx, ...)
with `running_server`, and the exporter itself (`python -m exporter`) with
`running_exporter`; each stopped by its PID at exit. `silent_peer`: a dependency, in
this process, that never answers."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import socketserver
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path
from typing import Callable

from tests.harness.procs import free_port, poll

def stop_process(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """SIGTERM a process we started, SIGKILL it after ``timeout``; always reaped."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)


@contextlib.contextmanager
def running_server(argv: list[str], log_path: Path, ready: Callable[[], bool], what: str):
    """Start a server (Prometheus, Alertmanager, nginx, ...) with its output in
    ``log_path``, wait until ``ready()``, stop it by PID at exit."""
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
        try:
            def up():
                if proc.poll() is not None:
                    raise AssertionError("%s exited (rc %s): %s"
                                         % (what, proc.returncode, log_path.read_text()[-3000:]))
                return ready()
            poll(up, 30, interval=0.1, message="%s not ready" % what)
            yield proc
        finally:
            stop_process(proc, 15)


def url_ready(url: str, timeout: float = 2.0) -> bool:
    """``url`` answers 200."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status == 200
    except OSError:
        return False


def get_json(url: str, timeout: float = 5):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read().decode())


def _healthy(base: str) -> bool:
    return url_ready(base + "/-/healthy", timeout=5)


@contextlib.contextmanager
def running_exporter(tmp_path, *args: str, port: int | None = None,
                     ready_timeout: float = 20.0, fd_limit: int | None = None,
                     cgroup: Path | None = None, scheme: str = "http", ready=None):
    """`python -m exporter` on 127.0.0.1 (a free port unless given); yields its base
    URL once /-/healthy answers (or `ready(base)` is true); stopped by PID on exit. Its
    log is ``tmp_path/exporter-PORT.log``. `fd_limit` sets both the soft and the hard
    RLIMIT_NOFILE of the exporter (so it cannot raise it); `cgroup` is a cgroup
    directory it starts in (its pid written to cgroup.procs before exec)."""
    port = port or free_port()
    log_path = Path(tmp_path) / ("exporter-%d.log" % port)

    def preexec():
        if fd_limit is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (fd_limit, fd_limit))
        if cgroup is not None:
            (Path(cgroup) / "cgroup.procs").write_text(str(os.getpid()))
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "exporter",
                                 "--web.listen-address", "127.0.0.1:%d" % port, *args],
                                stdout=log, stderr=subprocess.STDOUT,
                                preexec_fn=None if fd_limit is None and cgroup is None
                                else preexec)
        try:
            base = "%s://127.0.0.1:%d" % (scheme, port)

            def up():
                if proc.poll() is not None:
                    raise AssertionError("exporter exited: " + log_path.read_text())
                return ready(base) if ready is not None else _healthy(base)
            poll(up, ready_timeout, message="exporter did not come up")
            base_url = _Base(base)
            base_url.pid = proc.pid
            yield base_url
        finally:
            stop_process(proc)


class _Base(str):
    """The base URL, with the exporter's pid as `.pid`."""
    pid: int = 0


class Silent(socketserver.ThreadingTCPServer):
    """A peer that accepts, reads a line and never answers (until closed)."""
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self):
        self.closing = threading.Event()

        class Handler(socketserver.StreamRequestHandler):
            def handle(inner):
                inner.rfile.readline(256)
                self.closing.wait(120)
        super().__init__(("127.0.0.1", 0), Handler)
        self.port = self.server_address[1]
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def close(self):
        self.closing.set()
        self.shutdown()
        self.server_close()


@contextlib.contextmanager
def silent_peer():
    s = Silent()
    try:
        yield s.port
    finally:
        s.close()
