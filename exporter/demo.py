"""`gunicorn-exporter demo` / `python -m exporter.demo`: see live metrics in a minute.

Starts, all on 127.0.0.1 and all stopped again on Ctrl-C, SIGTERM or `--duration`:

1. a throwaway gunicorn (2 sync workers by default) serving the tiny WSGI app below,
   `app` in this module (`/` answers at once, `/slow?seconds=S` sleeps S seconds);
2. a little load: a few client threads, one more than there are workers, each sending
   `/slow` requests in a loop, so every worker is busy and a request waits in the accept
   queue most of the time;
3. the exporter itself (`python -m exporter`), following gunicorn's error log;

then prints where to look and, every few seconds, what the exporter says about the demo
app. gunicorn is not a dependency of the exporter: without it the demo says to
`pip install gunicorn` and exits 1. Only processes the demo started are stopped, by pid.
Linux only, like the exporter.
"""

from __future__ import annotations

import argparse
import http.client
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from urllib.parse import parse_qs

APP_NAME = "demo"  # + "-PORT": two demos on one host are two apps, not demo@listener
MAX_SLOW_SECONDS = 60.0
DEFAULT_EXPORTER_PORT = 10188


# --------------------------------------------------------------------------
# the sample WSGI app (imported by the demo's gunicorn workers, never by the exporter)
# --------------------------------------------------------------------------

def app(environ, start_response):
    """`/` -> "ok"; `/slow?seconds=S` sleeps S seconds (at most 60) first."""
    path = environ.get("PATH_INFO") or "/"
    if path == "/slow":
        try:
            seconds = float(parse_qs(environ.get("QUERY_STRING", "")).get("seconds", ["1"])[0])
        except ValueError:
            seconds = 1.0
        seconds = max(0.0, min(seconds, MAX_SLOW_SECONDS))
        time.sleep(seconds)
        body = f"slept {seconds:g}s in worker pid {os.getpid()}\n".encode()
    elif path == "/":
        body = b"ok: try /slow?seconds=2\n"
    else:
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found\n"]
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_or_free(port: int) -> int:
    """`port` if it can be bound on 127.0.0.1 now, else (or for 0) a free one."""
    if port:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
                return port
            except OSError:
                pass
    return _free_port()


def _die_with_parent() -> None:
    """preexec_fn: ask the kernel to SIGTERM the child if the demo dies (even by SIGKILL)."""
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - best effort only
        pass


def _get(url: str, timeout: float = 3.0) -> tuple[int | None, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode("utf-8", "replace")
    except OSError:
        return None, ""


def demo_values(text: str, app: str) -> dict[str, float]:
    """The headline numbers of app `app` from a /metrics text."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.labels.get("app") != app:
                continue
            if s.name in ("gunicorn_up", "gunicorn_workers", "gunicorn_workers_busy"):
                out[s.name] = s.value
            elif s.name == "gunicorn_listener_queue_length":
                out[s.name] = out.get(s.name, 0.0) + s.value
            elif s.name == "gunicorn_worker_heartbeat_age_seconds":
                out[s.name] = max(out.get(s.name, 0.0), s.value)
    return out


class Load:
    """`clients` threads, each sending GET /slow?seconds=S to gunicorn in a loop.

    Bounded: every loop ends when `stop` is set, at the deadline, or after
    `max_requests` requests per client; every request has a socket timeout.
    """

    def __init__(self, port: int, clients: int, seconds: float, deadline: float,
                 max_requests: int = 10_000):
        self.port, self.seconds, self.deadline = port, seconds, deadline
        self.max_requests = max_requests
        self.stop = threading.Event()
        self.done = 0
        self.failed = 0
        self._lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, name=f"demo-load-{i}", daemon=True)
                        for i in range(clients)]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def _run(self) -> None:
        for _ in range(self.max_requests):
            if self.stop.is_set() or time.monotonic() >= self.deadline:
                return
            conn = http.client.HTTPConnection("127.0.0.1", self.port,
                                              timeout=self.seconds * 4 + 10)
            try:
                conn.request("GET", f"/slow?seconds={self.seconds:g}")
                conn.getresponse().read()
                ok = True
            except OSError:
                ok = False
            finally:
                conn.close()
            with self._lock:
                if ok:
                    self.done += 1
                else:
                    self.failed += 1
            if not ok:
                self.stop.wait(0.5)  # gunicorn restarting or stopping: do not spin

    def join(self, timeout: float) -> None:
        self.stop.set()
        end = time.monotonic() + timeout
        for t in self.threads:
            t.join(max(0.0, end - time.monotonic()))


def _stop(proc: subprocess.Popen | None, name: str, timeout: float) -> None:
    """SIGTERM one child the demo started (by its pid), SIGKILL if it does not exit."""
    if proc is None or proc.poll() is not None:
        return
    try:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        print(f"demo: {name} (pid {proc.pid}) did not stop within {timeout:g}s, killing it",
              file=sys.stderr)
        proc.kill()
        proc.wait(5)


def _tail(path: Path, n: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


# --------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gunicorn-exporter demo",
        description="Start a throwaway gunicorn with a sample app, a little load and the "
                    "exporter, all on 127.0.0.1, and show live metrics. Ctrl-C stops everything.")
    p.add_argument("--duration", type=float, default=0,
                   help="stop after this many seconds (default: run until Ctrl-C / SIGTERM)")
    p.add_argument("--port", type=int, default=DEFAULT_EXPORTER_PORT,
                   help=f"exporter port on 127.0.0.1 (default {DEFAULT_EXPORTER_PORT}; "
                        "a free port if taken; 0 = any free port)")
    p.add_argument("--app-port", type=int, default=0,
                   help="port of the sample app on 127.0.0.1 (default: any free port)")
    p.add_argument("--workers", type=int, default=2, help="gunicorn sync workers (default 2)")
    p.add_argument("--clients", type=int, default=None,
                   help="concurrent clients sending slow requests (default: workers + 1)")
    p.add_argument("--slow", type=float, default=2.0,
                   help="seconds each demo request takes (default 2)")
    p.add_argument("--interval", type=float, default=5.0,
                   help="seconds between status lines (default 5; 0 = none)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.duration < 0 or args.workers < 1 or args.slow <= 0 or args.slow > MAX_SLOW_SECONDS:
        build_parser().error("--duration >= 0, --workers >= 1, 0 < --slow <= 60")
    if importlib.util.find_spec("gunicorn") is None:
        print(f"demo: gunicorn is not installed in this Python ({sys.executable}).\n"
              f"The exporter does not need it, the demo does: pip install gunicorn\n"
              f"(e.g. {sys.executable} -m pip install gunicorn), then run the demo again.",
              file=sys.stderr)
        return 1

    stopping = threading.Event()
    received: list[int] = []

    def on_signal(signum, _frame):
        received.append(signum)
        stopping.set()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    demo = Demo(args, Path(tempfile.mkdtemp(prefix="gunicorn-exporter-demo-")), stopping)
    try:
        return demo.run()
    finally:
        demo.stop()
        for s, h in old.items():
            signal.signal(s, h)
        shutil.rmtree(demo.workdir, ignore_errors=True)
        why = f"signal {signal.Signals(received[0]).name}" if received else "done"
        print(f"demo: stopped ({why})", flush=True)


class Demo:
    """One run of the demo in `workdir`: gunicorn, the exporter and the load, started by
    `run` until `stopping` is set or --duration ends, all ended by `stop`."""

    def __init__(self, args: argparse.Namespace, workdir: Path, stopping: threading.Event):
        self.args, self.workdir, self.stopping = args, workdir, stopping
        self.clients = args.clients if args.clients is not None else args.workers + 1
        self.gunicorn: subprocess.Popen | None = None
        self.exporter: subprocess.Popen | None = None
        self.load: Load | None = None
        self.error_log = workdir / "gunicorn-error.log"

    def run(self) -> int:
        """Start everything, wait until it answers, then report until the end; the exit code."""
        self._start_processes()
        failed = self._wait_until_up()
        if failed is not None:
            return failed
        end = time.monotonic() + (self.args.duration or float("inf"))
        self.load = Load(self.app_port, self.clients, self.args.slow,
                         deadline=end if self.args.duration else time.monotonic() + 7 * 86400)
        self.load.start()
        self._print_banner()
        return self._report_until(end)

    def stop(self) -> None:
        """End the load, then the processes the demo started (by pid)."""
        if self.load is not None:
            self.load.stop.set()
        _stop(self.exporter, "exporter", 10)
        _stop(self.gunicorn, "gunicorn", 15)
        if self.load is not None:  # their requests end with gunicorn at the latest
            self.load.join(self.args.slow + 5)

    def _start_processes(self) -> None:
        self.app_port = _port_or_free(self.args.app_port)
        self.app_name = f"{APP_NAME}-{self.app_port}"
        self.exp_port = _port_or_free(self.args.port)
        self.app_url = f"http://127.0.0.1:{self.app_port}"
        self.exp_url = f"http://127.0.0.1:{self.exp_port}"
        env = _child_env()
        workdir = self.workdir
        gunicorn_argv = [sys.executable, "-m", "gunicorn",
                         "--name", self.app_name, "--bind", f"127.0.0.1:{self.app_port}",
                         "--workers", str(self.args.workers), "--worker-class", "sync",
                         "--timeout", "30", "--graceful-timeout", "2",
                         "--chdir", str(workdir), "--worker-tmp-dir", str(workdir),
                         "--control-socket", str(workdir / "gunicorn.ctl"),
                         "--error-logfile", str(self.error_log), "--log-level", "info",
                         "exporter.demo:app"]
        with open(workdir / "gunicorn.out", "wb") as out:
            self.gunicorn = subprocess.Popen(gunicorn_argv, cwd=str(workdir), env=env,
                                             stdin=subprocess.DEVNULL, stdout=out,
                                             stderr=subprocess.STDOUT,
                                             preexec_fn=_die_with_parent,
                                             start_new_session=True)
        exporter_argv = [sys.executable, "-m", "exporter",
                         "--web.listen-address", f"127.0.0.1:{self.exp_port}",
                         "--logs.file", f"{self.app_name}={self.error_log}"]
        with open(workdir / "exporter.log", "wb") as out:
            self.exporter = subprocess.Popen(exporter_argv, env=env, stdin=subprocess.DEVNULL,
                                             stdout=out, stderr=subprocess.STDOUT,
                                             preexec_fn=_die_with_parent,
                                             start_new_session=True)

    def _wait_until_up(self) -> int | None:
        """Wait (bounded) until gunicorn answers and the exporter is healthy: None, or the
        exit code when either exited, did not come up in 30 s, or the demo was stopped."""
        deadline = time.monotonic() + 30
        app_ok = exp_ok = False
        while not (app_ok and exp_ok) and not self.stopping.is_set() \
                and time.monotonic() < deadline:
            if self.gunicorn.poll() is not None:
                print("demo: gunicorn exited:\n" + _tail(self.workdir / "gunicorn.out") + "\n"
                      + _tail(self.error_log), file=sys.stderr)
                return 1
            if self.exporter.poll() is not None:
                print("demo: the exporter exited:\n" + _tail(self.workdir / "exporter.log"),
                      file=sys.stderr)
                return 1
            app_ok = app_ok or _get(self.app_url + "/", 2)[0] == 200
            exp_ok = exp_ok or _get(self.exp_url + "/-/healthy", 2)[0] == 200
            if not (app_ok and exp_ok):
                self.stopping.wait(0.2)
        if self.stopping.is_set():
            return 0
        if not (app_ok and exp_ok):
            print("demo: gunicorn or the exporter did not come up within 30s\n" + self._logs(),
                  file=sys.stderr)
            return 1
        return None

    def _print_banner(self) -> None:
        args, app_url, exp_url = self.args, self.app_url, self.exp_url
        print(f"""gunicorn-exporter demo (everything below stops on Ctrl-C{
              f' or after {args.duration:g}s' if args.duration else ''})
  sample app:  {app_url}/   gunicorn master pid {self.gunicorn.pid}, {args.workers} sync workers, app="{self.app_name}"
  load:        {self.clients} clients sending {app_url}/slow?seconds={args.slow:g} in a loop
  exporter:    {exp_url}/metrics   pid {self.exporter.pid}
  look:        curl -s {exp_url}/metrics | grep 'app="{self.app_name}"'
  Prometheus:  scrape {exp_url}; in a clone of the repository: deploy/prometheus/, grafana/dashboards/
  files:       {self.workdir} (gunicorn error log, exporter log; removed on exit)""", flush=True)

    def _report_until(self, end: float) -> int:
        """A status line every --interval seconds until `end` or a stop: 0, or 1 when
        gunicorn or the exporter exited on its own."""
        next_status = time.monotonic() + (self.args.interval or float("inf"))
        for _ in range(10_000_000):  # bounded; each turn waits up to 0.5 s
            now = time.monotonic()
            if self.stopping.is_set() or now >= end:
                break
            if self.gunicorn.poll() is not None or self.exporter.poll() is not None:
                print("demo: gunicorn or the exporter exited unexpectedly\n" + self._logs(),
                      file=sys.stderr)
                return 1
            if now >= next_status:
                next_status = now + self.args.interval
                self._print_status()
            self.stopping.wait(min(0.5, max(0.0, end - now)))
        return 0

    def _print_status(self) -> None:
        v = demo_values(_get(self.exp_url + "/metrics", 5)[1], self.app_name)
        if v:
            print(f"[{time.strftime('%H:%M:%S')}] app={self.app_name}: "
                  f"busy workers {v.get('gunicorn_workers_busy', 0):g}/"
                  f"{v.get('gunicorn_workers', 0):g}, "
                  f"accept queue {v.get('gunicorn_listener_queue_length', 0):g}, "
                  f"oldest request {v.get('gunicorn_worker_heartbeat_age_seconds', 0):.1f}s, "
                  f"requests done {self.load.done}", flush=True)

    def _logs(self) -> str:
        return _tail(self.workdir / "gunicorn.out") + "\n" + _tail(self.workdir / "exporter.log")


def _child_env() -> dict[str, str]:
    """The environment of gunicorn and the exporter: the package's parent directory first
    on the path, so the workers import exporter.demo:app from this very installation
    (editable or not); no GUNICORN_CMD_ARGS of the caller's."""
    pkg_parent = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ)
    env.pop("GUNICORN_CMD_ARGS", None)
    env["PYTHONPATH"] = os.pathsep.join([pkg_parent] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


if __name__ == "__main__":
    raise SystemExit(main())
