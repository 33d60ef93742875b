"""Servers the tests run beside gunicorn: any server (Prometheus, Alertmanager, nginx, ...)
with `running_server` (`running_prometheus` for a Prometheus), and the exporter itself (`python -m exporter`) with
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

from tests.harness.procs import free_port, poll, port_open

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


@contextlib.contextmanager
def running_prometheus(binary: str, base: Path, config: str, *args: str):
    """A Prometheus on a free 127.0.0.1 port with ``config`` as its prometheus.yml, its
    config, TSDB (prom-data) and log in ``base``; yields its URL once /-/ready answers."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    (base / "prometheus.yml").write_text(config)
    (base / "prom-data").mkdir()
    with running_server([binary, f"--config.file={base / 'prometheus.yml'}",
                         f"--storage.tsdb.path={base / 'prom-data'}",
                         f"--web.listen-address=127.0.0.1:{port}", *args],
                        base / "prometheus.log", lambda: url_ready(url + "/-/ready"), "prometheus"):
        yield url


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


# nginx's log_format of the `nginx-upstream` preset (exporter/logs/formats.py), and the
# header the docs tell users to set (docs/requests.md)
NGINX_UPSTREAM_FORMAT = ("'$remote_addr - $remote_user [$time_local] \"$request\" $status "
                         "$body_bytes_sent \"$http_referer\" \"$http_user_agent\" "
                         "$request_time $upstream_response_time \"$upstream_addr\"'")


@contextlib.contextmanager
def running_nginx(base: Path, upstream: str, *, location: str = "", http: str = ""):
    """nginx (as root, one worker) on 127.0.0.1:<free port> proxying to ``upstream``
    ('unix:/path' or 'host:port'), its access log in the `nginx-upstream` format at
    ``base/nginx-access.log``, its error log at ``base/nginx-error.log``. Yields
    (port, access log path, error log path); stopped by PID at exit."""
    import shutil
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
    if nginx is None:
        raise FileNotFoundError("nginx is not installed (apt-get install -y nginx-light)")
    base = Path(base)
    ndir = base / "nginx"
    ndir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    access, error = base / "nginx-access.log", base / "nginx-error.log"
    (ndir / "nginx.conf").write_text(
        f"user root;\nworker_processes 1;\npid {ndir}/nginx.pid;\n"
        f"error_log {error} error;\n"
        "events { worker_connections 256; }\n"
        "http {\n"
        f"  log_format upstream {NGINX_UPSTREAM_FORMAT};\n"
        f"  access_log {access} upstream;\n"
        f"  client_body_temp_path {ndir}/body; proxy_temp_path {ndir}/proxy;\n"
        f"  fastcgi_temp_path {ndir}/fcgi; uwsgi_temp_path {ndir}/uwsgi; scgi_temp_path {ndir}/scgi;\n"
        f"  upstream app {{ server {upstream}; }}\n"
        f"  {http}\n"
        f"  server {{ listen 127.0.0.1:{port}; location / {{ proxy_pass http://app; {location} }} }}\n"
        "}\n")
    with running_server([nginx, "-p", str(ndir), "-c", str(ndir / "nginx.conf"), "-g", "daemon off;"],
                        base / "nginx.out", lambda: port_open(port), "nginx"):
        yield port, access, error
