"""One run of py-spy against one worker: a subprocess bounded in time and output, run
from a thread of the stacks collector's own (never the event loop, never the scrape's).

    py-spy dump --nonblocking --json --pid PID

`--nonblocking`: py-spy reads the worker's memory with process_vm_readv and never
stops it (without it py-spy attaches with ptrace and the worker pauses while it reads).
Never `--locals`: local variables hold passwords and tokens. The run gets a minimal
environment, no standard input, its own session, CAPTURE_TIMEOUT seconds (then SIGKILL)
and MAX_OUTPUT bytes of output (then SIGKILL). Its exit and its output are waited for
on one poll() of the pipes and a pidfd, and its rusage is read with wait4(): the CPU
each capture cost, which the collector's budget (--stacks.max-cpu) is charged.

A worker is the same process before and after the run (pid and start time from
/proc/PID/stat), or the capture is `gone`: a pid reused during the run would otherwise
have its stack reported as the worker's.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from exporter.stacks import pyspy

MAX_OUTPUT = 2 * 1024 * 1024    # py-spy's JSON of 4,000 frames is about 1 MB
MAX_STDERR = 16 * 1024
ENV = {"PATH": "/usr/bin:/bin", "LANG": "C", "RUST_BACKTRACE": "0", "RUST_LIB_BACKTRACE": "0"}


def find_py_spy(configured: str = "", python: str = sys.executable) -> str | None:
    """The py-spy to run: the configured path, else the one installed beside this
    interpreter (a venv's bin/), else the first on PATH. None when there is none."""
    if configured:
        return configured if os.access(configured, os.X_OK) else None
    beside = Path(python).parent / "py-spy"
    if os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("py-spy")


def start_ticks(pid: int, proc: str = "/proc") -> int | None:
    """The process's start time in clock ticks (field 22 of /proc/PID/stat); None when
    it is gone or a zombie."""
    try:
        with open(f"{proc}/{pid}/stat", "rb") as f:
            data = f.read(4096)
        rest = data[data.rindex(b")") + 2:].split()
        if rest[0] in (b"Z", b"X"):
            return None
        return int(rest[19])
    except (OSError, ValueError, IndexError):
        return None


@dataclass(frozen=True)
class Result:
    outcome: str                     # ok, gone, not_python, denied, timeout, failed
    threads: tuple[pyspy.Thread, ...] = ()
    cpu_seconds: float = 0.0         # the run's user + system time
    seconds: float = 0.0             # wall time
    error: str = ""                  # py-spy's first error line, or what went wrong


@dataclass(frozen=True)
class Run:
    returncode: int | None           # None: killed at the deadline or the output cap
    stdout: bytes
    stderr: bytes
    cpu_seconds: float
    seconds: float
    timed_out: bool = False
    oversized: bool = False


def run(argv: list[str], timeout: float, max_output: int = MAX_OUTPUT) -> Run:
    """Run argv with its output read until EOF and its exit, within `timeout` seconds
    and `max_output` bytes (then SIGKILL of its session)."""
    t0 = time.monotonic()
    deadline = t0 + timeout
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env=ENV, close_fds=True,
                         start_new_session=True)
    out, err = bytearray(), bytearray()
    timed_out = oversized = False
    try:
        pidfd = os.pidfd_open(p.pid)
    except OSError:
        pidfd = None
    poller = select.poll()
    streams = {p.stdout.fileno(): out, p.stderr.fileno(): err}
    for fd in streams:
        poller.register(fd, select.POLLIN)
    if pidfd is not None:
        poller.register(pidfd, select.POLLIN)
    exited = False
    try:
        while streams or not exited:
            left = deadline - time.monotonic()
            if left <= 0:
                timed_out = True
                break
            if pidfd is None and not streams:
                exited = _poll_exit(p.pid, deadline)
                timed_out = not exited
                break
            for fd, _ev in poller.poll(max(1, int(left * 1000))):
                if fd == pidfd:
                    exited = True
                    poller.unregister(pidfd)
                    continue
                buf = streams.get(fd)
                if buf is None:
                    continue
                chunk = os.read(fd, 65536)
                if not chunk:
                    poller.unregister(fd)
                    del streams[fd]
                    continue
                limit = max_output if buf is out else MAX_STDERR
                buf += chunk[: max(0, limit - len(buf))]
                if buf is out and len(buf) >= max_output:
                    oversized = True
                    break
            if oversized:
                break
            if pidfd is None and not streams:
                exited = _poll_exit(p.pid, deadline)
                timed_out = not exited
                break
    finally:
        if timed_out or oversized:
            _kill(p)
        _, status, usage = os.wait4(p.pid, 0)      # exited, or SIGKILLed just now
        p.returncode = os.waitstatus_to_exitcode(status)
        p.stdout.close()
        p.stderr.close()
        if pidfd is not None:
            os.close(pidfd)
    return Run(None if (timed_out or oversized) else p.returncode, bytes(out), bytes(err),
               usage.ru_utime + usage.ru_stime, time.monotonic() - t0, timed_out, oversized)


def _poll_exit(pid: int, deadline: float) -> bool:
    """Without a pidfd (Linux < 5.3): whether the child exits by the deadline (it is
    left to wait4 to reap)."""
    while True:
        if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.005)


def _kill(p: subprocess.Popen) -> None:
    try:
        os.killpg(p.pid, signal.SIGKILL)    # its own session: py-spy and anything it started
    except (ProcessLookupError, PermissionError):
        pass


def capture(binary: str, pid: int, start: int | None, timeout: float,
            proc: str = "/proc", max_output: int = MAX_OUTPUT) -> Result:
    """The worker's stack, or why not. `start`: its start time in ticks (None: take the
    one /proc says now)."""
    before = start_ticks(pid, proc)
    if before is None or (start is not None and before != start):
        return Result("gone", error="the worker was gone before the capture")
    try:
        r = run([binary, "dump", "--nonblocking", "--json", "--pid", str(pid)], timeout,
                max_output)
    except OSError as e:
        return Result("failed", error=f"cannot run {binary}: {e.strerror or e}")
    if start_ticks(pid, proc) != before:
        return Result("gone", cpu_seconds=r.cpu_seconds, seconds=r.seconds,
                      error="the worker exited during the capture")
    if r.timed_out:
        return Result("timeout", cpu_seconds=r.cpu_seconds, seconds=r.seconds,
                      error=f"no answer within {timeout:g}s")
    if r.oversized:
        return Result("failed", cpu_seconds=r.cpu_seconds, seconds=r.seconds,
                      error=f"more than {max_output} bytes of output")
    stderr = r.stderr.decode("utf-8", "replace")
    if r.returncode != 0:
        outcome = pyspy.outcome_of_error(stderr)
        if outcome == "gone":        # the worker is still there: not that
            outcome = "failed"
        return Result(outcome, cpu_seconds=r.cpu_seconds, seconds=r.seconds,
                      error=pyspy.error_line(stderr) or f"exit status {r.returncode}")
    try:
        threads = pyspy.parse(r.stdout)
    except (ValueError, RecursionError) as e:
        return Result("failed", cpu_seconds=r.cpu_seconds, seconds=r.seconds,
                      error=f"unreadable output: {str(e)[:120]}")
    if not any(t.frames for t in threads):
        return Result("not_python", cpu_seconds=r.cpu_seconds, seconds=r.seconds,
                      error="no Python frames")
    return Result("ok", threads, r.cpu_seconds, r.seconds)
