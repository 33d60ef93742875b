"""Find every gunicorn master on the host and tell its HTTP workers from its other children.

One pass over /proc per scrape:

* A process is a gunicorn process when its argv is a gunicorn invocation
  (`gunicorn ...`, `python -m gunicorn ...`, `/venv/bin/python /venv/bin/gunicorn ...`)
  or when setproctitle gave it a gunicorn title (`gunicorn: master [name]`,
  `gunicorn: worker [name]`, `gunicorn: dirty-arbiter`, `gunicorn: dirty-worker [name]`).
  Only processes whose `comm` looks like gunicorn or a Python interpreter are read
  further, so hosts with thousands of other processes stay cheap.
* A master is a gunicorn process whose parent is not a gunicorn process, or a child of
  a master that was started by a USR2 binary upgrade (its environment carries
  `GUNICORN_PID=<parent>`; the kernel keeps the exec-time environment visible even
  after gunicorn pops the variable), or a process titled `master`.
* An HTTP worker is a child of a master titled `worker`, or, without titles, a child
  that holds exactly one heartbeat file (`wgunicorn-*`, unlinked) that the master holds
  too. The master creates one heartbeat per HTTP worker and each worker closes its
  siblings', so the dirty arbiter, dirty workers and unrelated children never match.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from exporter.gunicorn.settings import gunicorn_args, parse_title
from exporter.linux.procfs import FdScan, ProcFS, ProcStat

# Bound the work on a host with very many gunicorns or a runaway fork.
MAX_MASTERS = 256
MAX_WORKERS_PER_MASTER = 1024


@dataclass
class Proc:
    pid: int
    stat: ProcStat
    argv: list[str]
    title: tuple[str, str | None] | None
    gargs: list[str] | None  # gunicorn arguments when argv is a gunicorn invocation

    @property
    def is_gunicorn(self) -> bool:
        return self.title is not None or self.gargs is not None


@dataclass
class Master:
    proc: Proc
    environ: dict[str, str] | None
    upgraded_from: int | None  # old master's pid when this one was started by USR2
    workers: list[Proc] = field(default_factory=list)
    fds: FdScan | None = None
    fd_error: str | None = None
    worker_fds: dict[int, FdScan] = field(default_factory=dict)
    worker_fd_errors: dict[int, str] = field(default_factory=dict)
    other_children: list[Proc] = field(default_factory=list)


@dataclass
class Discovery:
    masters: list[Master]
    permission_denied: set[int]  # pids whose fds or environ we were not allowed to read
    truncated: bool = False


def _interesting_comm(comm: str) -> bool:
    # setproctitle also sets comm (truncated to 15 bytes): "gunicorn: maste"
    return comm.startswith(("gunicorn", "python", "pypy")) or comm in ("uv", "uvx")


def scan_processes(procfs: ProcFS) -> dict[int, Proc]:
    """All gunicorn-looking processes on the host (argv or title), keyed by pid."""
    found: dict[int, Proc] = {}
    try:
        entries = os.listdir(procfs.root)
    except OSError:
        return found
    for name in entries:
        if not name.isdigit():
            continue
        pid = int(name)
        try:
            st = procfs.stat(pid)
            if not _interesting_comm(st.comm):
                continue
            argv = procfs.cmdline(pid)
        except (OSError, ValueError, IndexError):
            continue  # vanished mid-read, kernel thread, or unreadable
        title = parse_title(argv)
        gargs = None if title else gunicorn_args(argv)
        proc = Proc(pid, st, argv, title, gargs)
        if proc.is_gunicorn:
            found[pid] = proc
    return found


def _safe_environ(procfs: ProcFS, pid: int) -> dict[str, str] | None:
    try:
        return procfs.environ(pid)
    except OSError:
        return None


def discover(procfs: ProcFS) -> Discovery:
    procs = scan_processes(procfs)
    children: dict[int, list[Proc]] = {}
    for p in procs.values():
        children.setdefault(p.stat.ppid, []).append(p)

    result = Discovery([], set())
    # Roots: gunicorn processes whose parent is not one, and processes titled master.
    # Their children are classified below; a USR2 child master joins the queue.
    queue: list[tuple[Proc, int | None]] = []
    for p in sorted(procs.values(), key=lambda p: p.stat.starttime_ticks):
        kind = p.title[0] if p.title else None
        parent = procs.get(p.stat.ppid)
        if kind == "master":
            queue.append((p, parent.pid if parent is not None else None))
        elif parent is None and kind is None:
            queue.append((p, None))
    seen: set[int] = set()
    while queue:
        proc, upgraded_from = queue.pop(0)
        if proc.pid in seen:
            continue
        seen.add(proc.pid)
        if len(result.masters) >= MAX_MASTERS:
            result.truncated = True
            break
        environ = _safe_environ(procfs, proc.pid)
        if environ is None:
            result.permission_denied.add(proc.pid)
        m = Master(proc, environ, upgraded_from)
        result.masters.append(m)
        _classify_children(procfs, m, children.get(proc.pid, []), queue, result)
    return result


def _classify_children(procfs: ProcFS, m: Master, kids: list[Proc],
                       queue: list[tuple[Proc, int | None]], result: Discovery) -> None:
    try:
        m.fds = procfs.scan_fds(m.proc.pid)
    except PermissionError:
        m.fd_error = "permission denied"
        result.permission_denied.add(m.proc.pid)
    except OSError as e:
        m.fd_error = e.strerror or str(e)
    master_beats = _heartbeat_inodes(procfs, m.proc.pid, m.fds)
    for child in kids:
        kind = child.title[0] if child.title else None
        if kind == "master":
            continue  # queued as a root already
        if kind in ("dirty-arbiter", "dirty-worker"):
            m.other_children.append(child)
            continue
        if len(m.workers) >= MAX_WORKERS_PER_MASTER:
            result.truncated = True
            break
        scan: FdScan | None = None
        try:
            scan = procfs.scan_fds(child.pid)
        except PermissionError:
            m.worker_fd_errors[child.pid] = "permission denied"
            result.permission_denied.add(child.pid)
        except OSError as e:
            m.worker_fd_errors[child.pid] = e.strerror or str(e)
        if kind == "worker" or _is_http_worker(procfs, child, scan, master_beats):
            m.workers.append(child)
            if scan is not None:
                m.worker_fds[child.pid] = scan
            continue
        m.worker_fd_errors.pop(child.pid, None)
        env = _safe_environ(procfs, child.pid) if child.gargs is not None else None
        if env is not None and env.get("GUNICORN_PID") == str(m.proc.pid):
            queue.append((child, m.proc.pid))  # started by a USR2 binary upgrade
        else:
            m.other_children.append(child)


def _heartbeat_inodes(procfs: ProcFS, pid: int, scan: FdScan | None) -> set[tuple[int, int]]:
    out: set[tuple[int, int]] = set()
    if scan is None:
        return out
    for fd, _target in scan.heartbeats:
        try:
            st = procfs.fd_stat(pid, fd)
        except OSError:
            continue
        out.add((st.st_dev, st.st_ino))
    return out


def _is_http_worker(procfs: ProcFS, child: Proc, scan: FdScan | None,
                    master_beats: set[tuple[int, int]]) -> bool:
    if scan is None:
        # We may not look at its fds: a child running the master's own command line is
        # most likely a worker. Say so by keeping it (its fd-based series are absent).
        return child.gargs is not None
    beats = _heartbeat_inodes(procfs, child.pid, scan)
    if len(beats) != 1:
        return False
    return not master_beats or bool(beats & master_beats)
