"""What the benchmark's pieces share: polling with a deadline, process bookkeeping
(signal only what we started, by PID, after checking its start time), a gunicorn
master under test, the socket ballast, and how numbers are summarised.

Imported by bench/run.py (outside the namespaces) and bench/nsdriver.py (inside).
"""

from __future__ import annotations

import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
VENV_BIN = Path(sys.executable).parent
APPS_DIR = ROOT / "tests" / "apps"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def poll(pred, timeout: float, interval: float = 0.05, what: str = "condition"):
    """Return pred()'s first truthy value; RuntimeError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        now = time.monotonic()
        if now >= deadline:
            raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(min(interval, deadline - now))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
        return text[text.rindex(")") + 2:].split()
    except (OSError, ValueError):
        return None


def starttime(pid: int) -> int | None:
    f = _stat_fields(pid)
    return int(f[19]) if f else None


def cpu_ticks(pid: int) -> int | None:
    """utime + stime of a process (all its threads, exited ones included), clock ticks."""
    f = _stat_fields(pid)
    return int(f[11]) + int(f[12]) if f else None


def children_of(ppid: int) -> list[int]:
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            f = _stat_fields(int(name))
            if f and int(f[1]) == ppid:
                out.append(int(name))
    return sorted(out)


def signal_if_same(pid: int, start: int | None, sig: int) -> None:
    """Signal a process we started, only if the pid still names it."""
    if start is not None and starttime(pid) == start:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def stop_popen(p: subprocess.Popen, start: int | None, sig: int = signal.SIGTERM) -> None:
    """Stop a child we started: `sig`, then SIGKILL after 20 s; always reaped."""
    if p.poll() is not None:
        return
    signal_if_same(p.pid, start, sig)
    try:
        p.wait(timeout=20)
    except subprocess.TimeoutExpired:
        signal_if_same(p.pid, start, signal.SIGKILL)
        p.wait(timeout=20)


def vm_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM in KiB."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                out[line.split(":")[0]] = int(line.split()[1])
    return out


def count_sockets() -> tuple[int, int]:
    """(lines of `ss -xtanH`, of which TIME-WAIT): the namespace's sockets as ss sees them."""
    out = subprocess.run(["ss", "-xtanH"], capture_output=True, text=True, check=True).stdout
    lines = out.splitlines()
    tw = sum(1 for ln in lines if ln.split(None, 2)[1:2] == ["TIME-WAIT"])
    return len(lines), tw


# --------------------------------------------------------------------------
# summaries

def med(xs) -> float:
    return statistics.median(xs)


def ms(x: float) -> str:
    """Seconds as milliseconds, 3 significant digits or so."""
    v = x * 1000
    if v >= 100:
        return f"{v:,.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def spread(xs, fmt=ms) -> str:
    """median (min-max)"""
    return f"{fmt(med(xs))} ({fmt(min(xs))}-{fmt(max(xs))})"


# --------------------------------------------------------------------------
# the processes under test

class Ballast:
    """bench/ballast.py: ~`sockets` idle sockets in this network namespace."""

    def __init__(self, sockets: int):
        self.proc = subprocess.Popen(
            [sys.executable, str(BENCH / "ballast.py"), "--sockets", str(sockets)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()  # READY line, or EOF if it died
        if not line.startswith("READY"):
            self.stop()
            raise RuntimeError(f"ballast failed to start: {line!r}")
        self.ready = line.strip()

    def stop(self) -> None:
        if self.proc.stdin and not self.proc.stdin.closed:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()  # our child, by its handle
            self.proc.wait(timeout=30)


@dataclass
class Gunicorn:
    """A real gunicorn master from the venv: sync workers, a unix and a TCP listener on
    127.0.0.1, a control socket; `hold(n)` leaves n /slow requests in the workers."""

    name: str
    workers: int
    tmp: Path
    port: int = 0
    proc: subprocess.Popen | None = None
    start: int | None = None
    worker_pids: list[int] = field(default_factory=list)
    worker_starts: dict[int, int | None] = field(default_factory=dict)
    clients: list[socket.socket] = field(default_factory=list)

    @property
    def unix_path(self) -> str:
        return str(self.tmp / f"{self.name}.sock")

    def launch(self) -> None:
        self.port = self.port or free_port()
        cmd = [str(VENV_BIN / "gunicorn"), "-n", self.name, "-w", str(self.workers),
               "-b", f"unix:{self.unix_path}", "-b", f"127.0.0.1:{self.port}",
               "--control-socket", str(self.tmp / f"{self.name}.ctl"),
               "--timeout", "900", "--graceful-timeout", "5",
               "--chdir", str(APPS_DIR), "wsgi_app:app"]
        self.log = open(self.tmp / f"{self.name}.log", "wb")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, cwd=str(self.tmp))
        self.start = poll(lambda: starttime(self.proc.pid), 10, what="gunicorn master")

    def wait_workers(self) -> None:
        def ready():
            if self.proc.poll() is not None:
                raise RuntimeError(f"gunicorn exited: {(self.tmp / f'{self.name}.log').read_text()[-2000:]}")
            kids = children_of(self.proc.pid)
            return kids if len(kids) >= self.workers and os.path.exists(self.unix_path) else None
        self.worker_pids = poll(ready, 120, 0.1, f"{self.workers} gunicorn workers")
        self.worker_starts = {p: starttime(p) for p in self.worker_pids}

    def hold(self, n: int, seconds: int = 300, path: str | None = None) -> None:
        """n requests to /slow (or `path`), half over the unix socket, half over TCP, left
        open."""
        path = path or f"/slow?seconds={seconds}"
        req = f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode()
        for i in range(n):
            if i % 2:
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.connect(("127.0.0.1", self.port))
            else:
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.connect(self.unix_path)
            s.sendall(req)
            self.clients.append(s)

        def accepted():  # both accept queues empty: every held request is in a worker
            out = subprocess.run(["ss", "-lxtnH"], capture_output=True, text=True).stdout
            for ln in out.splitlines():
                f = ln.split()
                if self.unix_path in ln or f"127.0.0.1:{self.port}" in ln:
                    rq = f[2] if f[0] in ("u_str", "tcp") else f[1]
                    if rq != "0":
                        return False
            return True
        poll(accepted, 30, what="held requests to be accepted")

    def stop(self) -> None:
        for s in self.clients:
            s.close()
        self.clients.clear()
        if self.proc is None:
            return
        stop_popen(self.proc, self.start, signal.SIGQUIT)  # quick shutdown
        try:
            poll(lambda: all(starttime(p) != s for p, s in self.worker_starts.items()), 30,
                 what="gunicorn workers to exit")
        except RuntimeError:
            for p, s in self.worker_starts.items():
                signal_if_same(p, s, signal.SIGKILL)
        self.log.close()
