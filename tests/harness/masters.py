"""Real gunicorn masters for the tests: `Gunicorn.start` runs one from this venv (serving
an app of tests/apps), waits until it listens and its workers have booted, finds its
workers, and stops it and every descendant it saw, by PID after checking each PID still
names the same process (start time from /proc/<pid>/stat)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from tests.harness.clients import http_get
from tests.harness.command import APPS_DIR, command
from tests.harness.procs import (free_port, kill_if_same, pid_alive, proc_children, proc_cmdline,
                                 proc_stat, worker_ready)

# sun_path is 108 bytes including the NUL; keep a margin.
_UNIX_PATH_MAX = 100

_BOOT_RE = re.compile(r"Booting worker with pid: (\d+)")
_DIRTY_ARBITER_RE = re.compile(r"Spawned dirty arbiter \(pid: (\d+)\)")
_LISTEN_RE = re.compile(r"Listening at: (\S+)")


class GunicornStartError(AssertionError):
    pass


def _short_dir(preferred: Path, longest_name: str) -> tuple[Path, bool]:
    """A directory for sockets: ``preferred`` unless paths would be too long
    for sun_path, then a fresh dir under the system tmp dir (to be removed)."""
    if len(str(preferred / longest_name)) <= _UNIX_PATH_MAX:
        return preferred, False
    return Path(tempfile.mkdtemp(prefix="gx-")), True


@dataclass
class Gunicorn:
    """A running gunicorn master started by the tests. Use ``Gunicorn.start``."""

    proc: subprocess.Popen
    rundir: Path
    binds: list[str]
    log_path: Path
    stdout_path: Path
    ctl_path: Path
    argv: list[str]
    env: dict
    worker_class: str
    workers: int
    name: str | None = None           # --name as passed, None without
    _sock_dir: Path | None = None
    _owns_sock_dir: bool = False
    _seen: dict = field(default_factory=dict)  # pid -> starttime (our descendants)
    _master_start: int | None = None
    stopped: bool = False

    # ---- construction ---------------------------------------------------

    @classmethod
    def start(cls, tmp_path, *, worker_class: str = "sync", workers: int | None = 2,
              bind: str | Sequence[str] = "unix", threads: int | None = None,
              worker_connections: int | None = None, timeout: int = 30,
              graceful_timeout: int = 1, name: str | None = None,
              extra_args: Iterable[str] = (), env: dict | None = None,
              setproctitle: bool = True, invoke: str = "script",
              app: str = "wsgi_app:app", wait_workers: bool = True,
              start_timeout: float = 20.0, private_tmpdir: bool = False,
              control_socket: bool = True, run_as=None,
              prefix: Sequence[str] = ()) -> "Gunicorn":
        """Start a master and wait until it listens (and, if ``wait_workers``,
        until ``workers`` workers have booted). The other arguments are the command
        line and environment: see tests.harness.command.command.

        bind: 'unix' (socket in a tmp dir), 'tcp' (127.0.0.1:<free port>),
              'tcp6' ([::1]:<free port>), an explicit gunicorn bind string,
              or a list mixing those.
        workers: --workers N; None passes no --workers (the config file or
              $WEB_CONCURRENCY decide; then call wait_for_workers yourself).
        run_as: a tests.hostile.User to run the master as (``python -m gunicorn`` with
              an interpreter that user may execute; files under its home).
        """
        if run_as is not None:
            tmp_path = run_as.home
            invoke = "module"
        tmp_path = Path(tmp_path)
        tmp_path.mkdir(parents=True, exist_ok=True)
        rundir = Path(tempfile.mkdtemp(prefix="gunicorn-", dir=tmp_path))
        if run_as is not None:
            os.chown(rundir, run_as.uid, run_as.gid)
            rundir.chmod(0o755)
        sock_dir, owns = _short_dir(rundir, "gunicorn.sock")
        if run_as is not None and owns:
            os.chown(sock_dir, run_as.uid, run_as.gid)
        if isinstance(bind, str):
            bind_specs = [bind]
        else:
            bind_specs = list(bind)
        if not bind_specs:
            raise ValueError("bind must not be empty")
        extra_args = list(extra_args)
        last_error = None
        for _attempt in range(5):  # bounded retries on port races
            binds = []
            for i, spec in enumerate(bind_specs):
                if spec == "unix":
                    binds.append("unix:%s" % (sock_dir / ("gunicorn.sock" if i == 0 else "gunicorn%d.sock" % i)))
                elif spec == "tcp":
                    binds.append("127.0.0.1:%d" % free_port("127.0.0.1"))
                elif spec == "tcp6":
                    binds.append("[::1]:%d" % free_port("::1"))
                else:
                    binds.append(spec)
            ctl_path = sock_dir / "gunicorn.ctl"
            log_path = rundir / "error.log"
            stdout_path = rundir / "stdout.log"
            for p in (log_path, stdout_path):
                if p.exists():
                    p.unlink()

            argv, penv = command(
                binds, worker_class=worker_class, workers=workers, threads=threads,
                worker_connections=worker_connections, timeout=timeout,
                graceful_timeout=graceful_timeout, name=name, extra_args=extra_args,
                env=env, setproctitle=setproctitle, invoke=invoke, app=app,
                private_tmpdir=rundir / "tmp" if private_tmpdir else None,
                control_socket=ctl_path if control_socket else None, run_as=run_as,
                prefix=prefix, log_path=log_path)

            ids = {} if run_as is None else {"user": run_as.uid, "group": run_as.gid,
                                             "extra_groups": []}
            with open(stdout_path, "wb") as out:
                proc = subprocess.Popen(argv, cwd=str(APPS_DIR), env=penv,
                                        stdin=subprocess.DEVNULL, stdout=out,
                                        stderr=subprocess.STDOUT, **ids)
            g = cls(proc=proc, rundir=rundir, binds=binds, log_path=log_path,
                    stdout_path=stdout_path, ctl_path=ctl_path, argv=argv,
                    env=penv, worker_class=worker_class, workers=workers, name=name,
                    _sock_dir=sock_dir, _owns_sock_dir=owns)
            st = proc_stat(proc.pid)
            g._master_start = st[2] if st else None
            try:
                g._wait_listening(start_timeout)
            except _PortInUse as exc:
                last_error = exc
                g._hard_kill()
                continue
            except BaseException:
                g.stop(timeout=5)
                raise
            if wait_workers and workers is None:
                raise ValueError("workers=None (not on the command line) needs wait_workers=False")
            if wait_workers and workers > 0:
                try:
                    g.wait_for_workers(workers, timeout=start_timeout)
                except BaseException:
                    g.stop(timeout=5)
                    raise
            return g
        g._cleanup_dirs()
        raise GunicornStartError("could not bind after retries: %s" % last_error)

    # ---- properties -------------------------------------------------------

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def bind(self) -> str:
        """First bind address as passed to gunicorn ('unix:/..' or 'host:port')."""
        return self.binds[0]

    @property
    def unix_path(self) -> str | None:
        return self.bind[5:] if self.bind.startswith("unix:") else None

    @property
    def host(self) -> str | None:
        if self.unix_path:
            return None
        return self.bind.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int | None:
        if self.unix_path:
            return None
        return int(self.bind.rpartition(":")[2])

    @property
    def url(self) -> str | None:
        """http://host:port for TCP binds, None for unix sockets."""
        if self.unix_path:
            return None
        return "http://%s" % self.bind.replace("http://", "")

    @property
    def listener(self) -> str:
        """What the ss helpers take: the unix path or 'host:port'."""
        return self.unix_path or self.bind

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stdout_text(self) -> str:
        try:
            return self.stdout_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def diagnostics(self) -> str:
        return ("argv: %s\nreturncode: %s\n--- error log %s ---\n%s\n--- stdout/stderr ---\n%s"
                % (" ".join(self.argv), self.proc.poll(), self.log_path,
                   self.log_text()[-6000:], self.stdout_text()[-3000:]))

    def alive(self) -> bool:
        return self.proc.poll() is None

    def booted_pids(self) -> set[int]:
        """PIDs the error log reports as 'Booting worker with pid: N'."""
        return {int(m) for m in _BOOT_RE.findall(self.log_text())}

    def dirty_arbiter_pids(self) -> set[int]:
        return {int(m) for m in _DIRTY_ARBITER_RE.findall(self.log_text())}

    # ---- workers ----------------------------------------------------------

    def children(self) -> list[int]:
        """All live (non-zombie) children of the master."""
        if not self.alive():
            return []
        kids = proc_children(self.pid)
        self._remember(kids, depth=2)
        return kids

    def _remember(self, pids, depth):
        """Record pid -> start time of descendants (workers, dirty arbiter
        and its dirty workers) so orphans can be killed safely later."""
        for k in pids:
            st = proc_stat(k)
            if st:
                self._seen.setdefault(k, st[2])
                if depth > 1:
                    self._remember(proc_children(k), depth - 1)

    def worker_pids(self) -> list[int]:
        """Children of the master that are HTTP workers (dirty arbiter and a
        USR2 re-exec'd master excluded)."""
        dirty = self.dirty_arbiter_pids()
        out = []
        for k in self.children():
            if k in dirty:
                continue
            cmd = proc_cmdline(k) or ""
            if cmd.startswith(("gunicorn: dirty", "gunicorn: master")):
                continue
            out.append(k)
        return out

    def wait_for_workers(self, n: int, timeout: float = 20, ready: bool = True) -> list[int]:
        """Poll until exactly ``n`` workers exist and each has logged
        'Booting worker with pid: N'. With ``ready`` (default) also wait for
        each worker's first heartbeat (see worker_heartbeat): gunicorn logs
        'Booting worker' right after fork, *before* loading the app, so the
        log line alone does not mean the worker serves. Returns sorted pids.
        Raises GunicornStartError (with the log) if the master exits."""
        def check():
            if not self.alive():
                raise GunicornStartError("gunicorn master exited early\n" + self.diagnostics())
            pids = self.worker_pids()
            if len(pids) != n:
                return None
            if not set(pids) <= self.booted_pids():
                return None
            if ready and not all(worker_ready(p) for p in pids):
                return None
            return sorted(pids)

        deadline = time.monotonic() + timeout
        last = None
        while True:
            last = check()
            if last:
                return last
            if time.monotonic() >= deadline:
                raise GunicornStartError(
                    "expected %d booted workers within %.1fs, have %r (booted per log: %r)\n%s"
                    % (n, timeout, self.worker_pids(), sorted(self.booted_pids()), self.diagnostics()))
            time.sleep(0.05)

    def _wait_listening(self, timeout: float):
        deadline = time.monotonic() + timeout
        while True:
            text = self.log_text()
            if self.proc.poll() is not None:
                if "Connection in use" in text and self._has_auto_port():
                    raise _PortInUse(text[-500:])
                raise GunicornStartError("gunicorn exited early (rc=%s)\n%s"
                                         % (self.proc.returncode, self.diagnostics()))
            if "Connection in use" in text and self._has_auto_port():
                raise _PortInUse(text[-500:])
            # one line for all binds: 'Listening at: unix:/a,http://127.0.0.1:1 (pid)'
            listening = sum(len(m.split(",")) for m in _LISTEN_RE.findall(text))
            if listening >= len(self.binds):
                return
            # --reuse-port: the master binds nothing ('Listening at:  (pid)'); each
            # worker binds its own socket, which wait_for_workers covers.
            if "--reuse-port" in self.argv and "Listening at:  (" in text:
                return
            if time.monotonic() >= deadline:
                raise GunicornStartError("gunicorn not listening within %.1fs\n%s"
                                         % (timeout, self.diagnostics()))
            time.sleep(0.02)

    def _has_auto_port(self) -> bool:
        return any(not b.startswith("unix:") for b in self.binds)

    # ---- HTTP -------------------------------------------------------------

    def get(self, path: str = "/", timeout: float = 10.0) -> tuple[int, bytes]:
        return http_get(self.unix_path or (self.host, self.port), path, timeout)

    # ---- stopping ---------------------------------------------------------

    def send_signal(self, sig: int):
        """Send ``sig`` to the master (only while it is our live child)."""
        if self.alive():
            os.kill(self.pid, sig)

    def kill_master(self):
        """SIGKILL the master only; its workers are left orphaned (stop()
        later kills those it saw, by PID + start time)."""
        self.children()  # remember current workers for cleanup
        if self.alive():
            os.kill(self.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def _hard_kill(self):
        self.children()
        if self.alive():
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        self._kill_orphans()

    def _kill_orphans(self, timeout: float = 5.0):
        """SIGKILL descendants we saw that outlived the master (same start time)."""
        for pid, start in list(self._seen.items()):
            kill_if_same(pid, start, signal.SIGKILL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not any(pid_alive(p, s) for p, s in self._seen.items()):
                break
            time.sleep(0.02)

    def stop(self, timeout: float = 15.0, sig: int = signal.SIGTERM) -> int | None:
        """SIGTERM the master, wait up to ``timeout``, then SIGKILL; reap it,
        then SIGKILL any of its former children still alive. Idempotent."""
        if self.stopped:
            return self.proc.returncode
        self.stopped = True
        try:
            self.children()
            if self.alive():
                try:
                    os.kill(self.pid, sig)
                except ProcessLookupError:
                    pass
                try:
                    self.proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    try:
                        os.kill(self.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                    self.proc.wait(timeout=10)
            else:
                self.proc.wait(timeout=1)
            self._kill_orphans()
        finally:
            self._cleanup_dirs()
        return self.proc.returncode

    def _cleanup_dirs(self):
        if self._owns_sock_dir and self._sock_dir is not None:
            shutil.rmtree(self._sock_dir, ignore_errors=True)
            self._owns_sock_dir = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
        return False


class _PortInUse(Exception):
    pass
