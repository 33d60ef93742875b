"""Waiting and processes, for every test: `poll` (a condition with a deadline, never a
sleep), free ports, what /proc says about the processes the tests started (independent of
the exporter's readers), and unique app names for a crowded host."""

from __future__ import annotations

import os
import re
import secrets
import socket
import time
from typing import Callable

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


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    """Something accepts TCP connections at host:port (a server started by a test is up)."""
    try:
        socket.create_connection((host, port), timeout=1).close()
        return True
    except OSError:
        return False


# --- /proc of the processes the tests started (independent of the exporter) ---------

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


def kill_if_same(pid: int, starttime: int, sig: int) -> bool:
    if not pid_alive(pid, starttime):
        return False
    try:
        os.kill(pid, sig)
        return True
    except ProcessLookupError:
        return False




# The exporter sees every gunicorn on the host, other runs of this suite included, and
# two masters of one name are told apart as NAME@listener: a fixed name is not ours
# alone. Tests name their apps unique_name("shop") (runs as `shop-1a2b`) and read the
# name back from Gunicorn.name.
RUN_TAG = secrets.token_hex(2)


def unique_name(name: str) -> str:
    return f"{name}-{RUN_TAG}"
