"""Test harness for gunicorn-exporter: real gunicorn masters, raw slow
clients, and an ``ss``-based oracle that shares no code with the exporter.

Rules this module follows (project rules):
  * real gunicorn masters, started from this venv;
  * no sleeping as synchronisation: ``poll()`` a condition with a deadline;
  * servers bind to 127.0.0.1 / ::1 / unix sockets in temporary dirs only;
  * only processes started here are signalled, by PID, after checking the
    PID still names the same process (start time from /proc/<pid>/stat);
  * every loop is bounded (deadline or fixed iteration count).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import namedtuple
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

TESTS_DIR = Path(__file__).resolve().parent
APPS_DIR = TESTS_DIR / "apps"
NO_SETPROCTITLE_DIR = APPS_DIR / "no_setproctitle"
VENV_BIN = Path(sys.executable).parent
GUNICORN_SCRIPT = VENV_BIN / "gunicorn"

# sun_path is 108 bytes including the NUL; keep a margin.
_UNIX_PATH_MAX = 100

_BOOT_RE = re.compile(r"Booting worker with pid: (\d+)")
_DIRTY_ARBITER_RE = re.compile(r"Spawned dirty arbiter \(pid: (\d+)\)")
_LISTEN_RE = re.compile(r"Listening at: (\S+)")


# --------------------------------------------------------------------------
# generic helpers
# --------------------------------------------------------------------------

def poll(predicate: Callable[[], object], timeout: float, interval: float = 0.05,
         message: str = "condition not met"):
    """Call ``predicate`` until it returns a truthy value; return that value.

    Raises AssertionError carrying ``message`` and the last value (or the last
    exception raised by the predicate) once ``timeout`` seconds have passed.
    The predicate is always evaluated at least once, and once more at the
    deadline.
    """
    deadline = time.monotonic() + timeout
    last = None
    last_exc = None
    while True:
        try:
            last = predicate()
            last_exc = None
        except Exception as exc:  # noqa: BLE001 - reported below
            last, last_exc = None, exc
        if last:
            return last
        now = time.monotonic()
        if now >= deadline:
            break
        time.sleep(min(interval, deadline - now))
    detail = "last value: %r" % (last,)
    if last_exc is not None:
        detail = "last exception: %r" % (last_exc,)
    raise AssertionError("%s (after %.1fs; %s)" % (message, timeout, detail))


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (bind port 0 and close).

    Racy by nature; Gunicorn.start() retries with a new port on EADDRINUSE.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------
# /proc helpers (independent of the exporter)
# --------------------------------------------------------------------------

def proc_stat(pid: int):
    """(state, ppid, starttime) from /proc/<pid>/stat, or None if gone."""
    try:
        with open("/proc/%d/stat" % pid, "rb") as f:
            data = f.read().decode("ascii", "replace")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    rest = data[data.rindex(")") + 2:].split()
    # rest[0] is field 3 (state); field 4 ppid; field 22 starttime
    return rest[0], int(rest[1]), int(rest[19])


def proc_cmdline(pid: int) -> str | None:
    """/proc/<pid>/cmdline with NULs turned into spaces (trailing stripped)."""
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            raw = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return raw.replace(b"\0", b" ").decode("utf-8", "replace").strip()


def proc_comm(pid: int) -> str | None:
    try:
        with open("/proc/%d/comm" % pid) as f:
            return f.read().rstrip("\n")
    except (FileNotFoundError, ProcessLookupError):
        return None


def proc_children(pid: int) -> list[int]:
    """Direct children of ``pid`` (all its threads), zombies excluded."""
    kids: set[int] = set()
    task_dir = "/proc/%d/task" % pid
    try:
        tids = os.listdir(task_dir)
    except FileNotFoundError:
        return []
    have_children_file = False
    for tid in tids:
        try:
            with open("%s/%s/children" % (task_dir, tid)) as f:
                kids.update(int(x) for x in f.read().split())
            have_children_file = True
        except (FileNotFoundError, ProcessLookupError):
            continue
    if not have_children_file:  # kernel without CONFIG_PROC_CHILDREN
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                st = proc_stat(int(entry))
                if st and st[1] == pid:
                    kids.add(int(entry))
    out = []
    for kid in sorted(kids):
        st = proc_stat(kid)
        if st and st[0] != "Z" and st[1] == pid:
            out.append(kid)
    return out


_WORKERTMP_RE = re.compile(r"/wgunicorn-[^/]* \(deleted\)$")


def worker_heartbeat(pid: int) -> float | None:
    """st_mtime of a gunicorn worker's heartbeat file (the unlinked
    ``wgunicorn-*`` tmp file it holds open), or None if not found.

    gunicorn's WorkerTmp.notify() sets the mtime to time.monotonic(), while
    the file is created with the wall-clock time; so a small value (< 1e9)
    means the worker has entered its run loop at least once."""
    fd_dir = "/proc/%d/fd" % pid
    try:
        fds = os.listdir(fd_dir)
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    for fd in fds:
        try:
            target = os.readlink("%s/%s" % (fd_dir, fd))
            if _WORKERTMP_RE.search(target):
                return os.stat("%s/%s" % (fd_dir, fd)).st_mtime
        except OSError:
            continue
    return None


def worker_ready(pid: int) -> bool:
    """True once the worker has notified its heartbeat (app loaded, in loop)."""
    mtime = worker_heartbeat(pid)
    return mtime is not None and mtime < 1e9


def pid_alive(pid: int, starttime: int | None = None) -> bool:
    """True if pid exists, is not a zombie, and (if given) has that start time."""
    st = proc_stat(pid)
    if st is None or st[0] in ("Z", "X"):
        return False
    return starttime is None or st[2] == starttime


def _kill_if_same(pid: int, starttime: int, sig: int) -> bool:
    if not pid_alive(pid, starttime):
        return False
    try:
        os.kill(pid, sig)
        return True
    except ProcessLookupError:
        return False


# --------------------------------------------------------------------------
# raw HTTP helper (works for unix and TCP without extra deps)
# --------------------------------------------------------------------------

def _connect(target, timeout: float | None) -> socket.socket:
    """Connect to a unix path, a (host, port) tuple, 'host:port', or a
    Gunicorn instance (its first bind)."""
    if isinstance(target, Gunicorn):
        target = target.unix_path or (target.host, target.port)
    if isinstance(target, (str, os.PathLike)):
        text = os.fspath(target)
        if text.startswith("unix:"):
            text = text[5:]
        if text.startswith("/"):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(timeout)
            try:
                s.connect(text)
            except BaseException:
                s.close()
                raise
            return s
        host, _, port = text.rpartition(":")
        target = (host.strip("[]"), int(port))
    host, port = target
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect((host, port))
    except BaseException:
        s.close()
        raise
    return s


def _request_bytes(path: str) -> bytes:
    return ("GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % path).encode("ascii")


def _read_to_eof(s: socket.socket, timeout: float) -> bytes:
    deadline = time.monotonic() + timeout
    chunks = []
    for _ in range(100000):  # bounded
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("no EOF within %.1fs (got %r)" % (timeout, b"".join(chunks)[:200]))
        s.settimeout(left)
        data = s.recv(65536)
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks)


def parse_http_response(raw: bytes) -> tuple[int, bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0]
    parts = status_line.split()
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/"):
        raise ValueError("not an HTTP response: %r" % raw[:200])
    return int(parts[1]), body


def http_get(target, path: str = "/", timeout: float = 10.0) -> tuple[int, bytes]:
    """One ``GET path`` with Connection: close; returns (status, body)."""
    s = _connect(target, timeout)
    try:
        s.sendall(_request_bytes(path))
        return parse_http_response(_read_to_eof(s, timeout))
    finally:
        s.close()


# --------------------------------------------------------------------------
# Gunicorn master
# --------------------------------------------------------------------------

# The exporter sees every gunicorn on the host, other runs of this suite included, and
# two masters of one name are told apart as NAME@listener: a fixed name is not ours
# alone. Tests name their apps unique_name("shop") (runs as `shop-1a2b`) and read the
# name back from Gunicorn.name.
RUN_TAG = secrets.token_hex(2)


def unique_name(name: str) -> str:
    return f"{name}-{RUN_TAG}"


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
        until ``workers`` workers have booted).

        bind: 'unix' (socket in a tmp dir), 'tcp' (127.0.0.1:<free port>),
              'tcp6' ([::1]:<free port>), an explicit gunicorn bind string,
              or a list mixing those.
        graceful_timeout: --graceful-timeout; 1 s (gunicorn's default is 30) so that
              stop() of a master with requests in flight takes about a second. A test
              that needs the in-flight requests to finish on SIGTERM passes more.
        invoke: 'script' runs <venv>/bin/gunicorn, 'module' runs
                ``python -m gunicorn``.
        private_tmpdir: set TMPDIR to a per-master dir. gunicorn 27 keeps the
              dirty arbiter pidfile at $TMPDIR/gunicorn-dirty-<proc_name>.pid
              and kills the "orphan" it names on start, so parallel masters
              with dirty workers and the same proc_name must not share TMPDIR.
              (Also moves the worker heartbeat tmp files.)
        workers: --workers N; None passes no --workers (the config file or
              $WEB_CONCURRENCY decide; then call wait_for_workers yourself).
        control_socket: pass --control-socket with a path of its own; False leaves
              gunicorn's default ($XDG_RUNTIME_DIR or $HOME/.gunicorn/gunicorn.ctl,
              shared by every master of a user: set HOME in ``env``).
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

            python, python_env = sys.executable, {}
            if run_as is not None:
                from tests.hostile import interpreter
                python, python_env = interpreter()
            if invoke == "script":
                argv = [str(GUNICORN_SCRIPT)]
            elif invoke == "module":
                argv = [python, "-m", "gunicorn"]
            else:
                raise ValueError("invoke must be 'script' or 'module'")
            argv += ["--chdir", str(APPS_DIR),
                     "--worker-class", worker_class]
            if workers is not None:
                argv += ["--workers", str(workers)]
            argv += ["--timeout", str(timeout),
                     "--graceful-timeout", str(graceful_timeout),
                     "--error-logfile", str(log_path),
                     "--log-level", "info"]
            if control_socket:
                argv += ["--control-socket", str(ctl_path)]
            for b in binds:
                argv += ["--bind", b]
            if threads is not None:
                argv += ["--threads", str(threads)]
            if worker_connections is not None:
                argv += ["--worker-connections", str(worker_connections)]
            if name is not None:
                argv += ["--name", name]
            argv += extra_args
            argv.append(app)
            # e.g. `unshare --net ...`: a command that execs the rest (same pid)
            argv = [*prefix, *argv]

            penv = dict(os.environ)
            penv.pop("GUNICORN_CMD_ARGS", None)
            penv.pop("WEB_CONCURRENCY", None)
            pypath = [str(APPS_DIR)]
            if not setproctitle:
                pypath.insert(0, str(NO_SETPROCTITLE_DIR))
            if penv.get("PYTHONPATH"):
                pypath.append(penv["PYTHONPATH"])
            if python_env.get("PYTHONPATH"):
                pypath.append(python_env["PYTHONPATH"])
            penv["PYTHONPATH"] = os.pathsep.join(pypath)
            if run_as is not None:
                penv["HOME"] = str(run_as.home)
            if not control_socket:
                penv.pop("XDG_RUNTIME_DIR", None)  # so the default is $HOME/.gunicorn/...
            penv["PYTHONUNBUFFERED"] = "1"
            if private_tmpdir:
                tdir = rundir / "tmp"
                tdir.mkdir(exist_ok=True)
                penv["TMPDIR"] = str(tdir)
            if env:
                penv.update(env)

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
            _kill_if_same(pid, start, signal.SIGKILL)
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


# --------------------------------------------------------------------------
# slow raw-socket clients
# --------------------------------------------------------------------------

class SlowClients:
    """N concurrent raw HTTP/1.1 requests sent without waiting for answers.

    ``target``: a Gunicorn, a unix path ('/..' or 'unix:/..'), 'host:port',
    or a (host, port) tuple. Each socket is connected and the whole request
    is sent; sockets stay open until closed.
    """

    def __init__(self, target, n: int, seconds: float = 5.0, path: str | None = None,
                 connect_timeout: float = 5.0):
        self.target = target
        self.path = path or "/slow?seconds=%s" % seconds
        self.socks: list[socket.socket | None] = []
        try:
            for _ in range(n):
                s = _connect(target, connect_timeout)
                s.sendall(_request_bytes(self.path))
                self.socks.append(s)
        except BaseException:
            self.close_all()
            raise

    def __len__(self):
        return len(self.socks)

    def _take(self, i: int) -> socket.socket:
        s = self.socks[i]
        if s is None:
            raise ValueError("client %d already closed" % i)
        self.socks[i] = None
        return s

    def close(self, i: int):
        """Plain close() of client i."""
        self._take(i).close()

    def hangup(self, i: int):
        """Close client i without reading the answer: shutdown both ways
        (sends FIN; the server side of a TCP conn goes to CLOSE-WAIT until
        the worker closes it), then close."""
        s = self._take(i)
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        s.close()

    def reset(self, i: int):
        """Abort client i with RST (SO_LINGER 0)."""
        s = self._take(i)
        import struct
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        s.close()

    def read(self, i: int, timeout: float) -> bytes:
        """Read client i's whole answer (until EOF) and close it."""
        s = self._take(i)
        try:
            return _read_to_eof(s, timeout)
        finally:
            s.close()

    def read_all(self, timeout: float) -> list[bytes | None]:
        """Read every still-open client's answer (shared deadline); closed
        clients give None. Raises TimeoutError if one does not finish."""
        deadline = time.monotonic() + timeout
        out: list[bytes | None] = []
        for i, s in enumerate(self.socks):
            if s is None:
                out.append(None)
                continue
            out.append(self.read(i, max(0.01, deadline - time.monotonic())))
        return out

    def close_all(self):
        for i, s in enumerate(self.socks):
            if s is not None:
                self.socks[i] = None
                s.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close_all()
        return False


# --------------------------------------------------------------------------
# ss oracle (parses iproute2 `ss`; shares nothing with the exporter)
# --------------------------------------------------------------------------

SsConn = namedtuple("SsConn", "netid state local peer")

_NETIDS = {"u_str", "u_seq", "u_dgr", "tcp", "udp", "raw", "nl", "p_raw", "p_dgr",
           "v_str", "v_dgr", "sctp", "mptcp", "tipc", "xdp"}
_USER_RE = re.compile(r"pid=(\d+),fd=(\d+)")


@dataclass
class SsSocket:
    netid: str
    state: str
    recv_q: int
    send_q: int
    local: str          # unix path ('*' if unnamed) or 'host:port'
    peer: str           # '*' for unix, 'host:port' for tcp
    local_inode: int | None = None
    peer_inode: int | None = None
    owners: list = field(default_factory=list)  # [(pid, fd), ...]

    def owned_by(self, pid: int) -> bool:
        return any(p == pid for p, _ in self.owners)


def _run_ss(args: Sequence[str]) -> list[str]:
    res = subprocess.run(["ss", *args], capture_output=True, text=True, timeout=20)
    if res.returncode != 0:
        raise RuntimeError("ss %s failed: %s" % (" ".join(args), res.stderr))
    return [line for line in res.stdout.splitlines() if line.strip()]


def parse_ss_line(line: str, default_netid: str | None = None) -> SsSocket | None:
    """Parse one ``ss -H`` line (unix or tcp; with or without -p)."""
    users = ""
    idx = line.find("users:(")
    if idx >= 0:
        users = line[idx:]
        line = line[:idx]
    tok = line.split()
    if not tok:
        return None
    if tok[0] in _NETIDS:
        netid = tok.pop(0)
    else:
        netid = default_netid or "?"
    if len(tok) < 5:
        return None
    state, recv_q, send_q = tok[0], int(tok[1]), int(tok[2])
    owners = [(int(p), int(f)) for p, f in _USER_RE.findall(users)]
    if netid.startswith("u_"):
        # Local-path inode Peer-path inode; unix peer is '*' for stream conns
        if len(tok) < 7:
            return None
        return SsSocket(netid, state, recv_q, send_q, tok[3], tok[5],
                        int(tok[4]) if tok[4].isdigit() else None,
                        int(tok[6]) if tok[6].isdigit() else None, owners)
    return SsSocket(netid, state, recv_q, send_q, tok[3], tok[4], owners=owners)


def ss_sockets(args: Sequence[str] = ("-xtanpH",)) -> list[SsSocket]:
    default = None
    flags = "".join(a.lstrip("-") for a in args if a.startswith("-") and not a.startswith("--"))
    if "t" in flags and "x" not in flags:
        default = "tcp"
    elif "x" in flags and "t" not in flags:
        default = "u_str"
    out = []
    for line in _run_ss(args):
        s = parse_ss_line(line, default)
        if s is not None:
            out.append(s)
    return out


def _norm_listener(addr) -> tuple[str, str | None, int | None]:
    """-> ('unix', path, None) or ('tcp', host-or-None, port)."""
    if hasattr(addr, "listener"):
        addr = addr.listener
    if isinstance(addr, int):
        return "tcp", None, addr
    if isinstance(addr, tuple):
        return "tcp", addr[0], int(addr[1])
    text = os.fspath(addr)
    if text.startswith("unix:"):
        text = text[5:]
    if text.startswith("/"):
        return "unix", text, None
    text = text.replace("http://", "")
    host, _, port = text.rpartition(":")
    return "tcp", (host.strip("[]") or None), int(port)


def _split_hostport(hp: str) -> tuple[str, int | None]:
    host, _, port = hp.rpartition(":")
    host = host.strip("[]")
    # ss may print scope like 127.0.0.1%lo
    host = host.split("%", 1)[0]
    return host, (int(port) if port.isdigit() else None)


def _local_matches(sock: SsSocket, kind: str, host: str | None, port: int | None) -> bool:
    if kind == "unix":
        return sock.netid.startswith("u_") and sock.local == host
    if sock.netid != "tcp":
        return False
    h, p = _split_hostport(sock.local)
    if p != port:
        return False
    if host is None:
        return True
    return h == host or h in ("*", "0.0.0.0", "::")


def ss_listen_queue(addr) -> tuple[int, int] | None:
    """(recv_q, send_q) of a listening socket: for LISTEN sockets Recv-Q is
    the current accept-queue length and Send-Q the backlog. ``addr`` is a
    unix path ('unix:' prefix ok), 'host:port', '[::1]:port', a port, or a
    Gunicorn. None if no such listener."""
    kind, host, port = _norm_listener(addr)
    if kind == "unix":
        socks = ss_sockets(("-xlnH",))
    else:
        socks = ss_sockets(("-tlnH",))
    for s in socks:
        if s.state == "LISTEN" and _local_matches(s, kind, host, port):
            return s.recv_q, s.send_q
    return None


def ss_process_sockets(pid: int) -> list[SsSocket]:
    """All unix+tcp sockets (any state) that ``pid`` holds an fd for."""
    return [s for s in ss_sockets(("-xtanpH",)) if s.owned_by(pid)]


def ss_process_connections(pid: int) -> list[SsConn]:
    """[(netid, state, local, peer)] for sockets owned by ``pid`` (ss -xtanpH)."""
    return [SsConn(s.netid, s.state, s.local, s.peer) for s in ss_process_sockets(pid)]


def _count_state(pid: int, listener, states: set[str]) -> int:
    kind, host, port = _norm_listener(listener)
    return sum(1 for s in ss_process_sockets(pid)
               if s.state in states and _local_matches(s, kind, host, port))


def ss_worker_active_connections(pid: int, listener) -> int:
    """ESTAB connections held by ``pid`` whose local address is the listener
    (unix path, or TCP port [+host])."""
    return _count_state(pid, listener, {"ESTAB"})


def ss_worker_close_wait_connections(pid: int, listener) -> int:
    """TCP CLOSE-WAIT connections held by ``pid`` on the listener."""
    return _count_state(pid, listener, {"CLOSE-WAIT"})


ss_worker_close_wait = ss_worker_close_wait_connections


def ss_requests_held(g: "Gunicorn") -> int:
    """Connections an app has taken and not finished, by ss: its accept queue, and every
    connection its workers hold on its listener, open or already left by the client."""
    queue = ss_listen_queue(g.listener)
    return (queue[0] if queue else 0) + sum(
        _count_state(pid, g.listener, {"ESTAB", "CLOSE-WAIT"}) for pid in g.worker_pids())


# ---------------------------------------------------------------- processes

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
