"""Find every gunicorn master on the host and tell its HTTP workers from everything else.

`scan_processes` reads, for every process whose `comm` looks like gunicorn or Python,
its stat, argv and status; `discover` then classifies them. The classification is a pure
function of those records plus a `Probe` that reads fd tables and environments on demand,
so tests run it on literal process tables (tests/test_discovery.py).

What the kernel says, and what it means:

* A process is a gunicorn process when its argv is a gunicorn invocation (`gunicorn ...`,
  `python -m gunicorn ...`, `/venv/bin/python /venv/bin/gunicorn ...`) or setproctitle
  gave it a gunicorn title (`gunicorn: master [name]`, `gunicorn: worker [name]`,
  `gunicorn: dirty-arbiter`, `gunicorn: dirty-worker [name]`).
* A **master** is a gunicorn process that gunicorn's arbiter runs. Its parent is not a
  gunicorn process (or it is a USR2 child, below), and it is titled `master` or, without
  a title, it catches SIGHUP and SIGUSR2 (`SigCgt` in /proc/PID/status): the arbiter
  installs handlers for both, a worker resets both to the default. A worker orphaned by
  `kill -9` of its master has a non-gunicorn parent too, but catches neither; it is an
  **orphan**, counted for its app, never a master. So is a process the exporter saw as
  a worker before (same pid and start time).
* A child of a master is a **USR2 master** when its exec-time environment (which the
  kernel keeps, even after gunicorn pops the variable) has `GUNICORN_PID=<parent>`, or,
  where setproctitle erased the environment, when it is titled `master` under another
  name (`NAME.2`) and shares none of its parent's heartbeat files. A freshly forked
  worker still carries its master's title for a moment, but it holds the heartbeat
  files it inherited: it is a worker, not a new app.
* An **HTTP worker** is a child of a master titled `worker`, or, without titles, a child
  that holds exactly one heartbeat file (`wgunicorn-*`, unlinked) that the master holds
  too. The dirty arbiter, dirty workers and unrelated children never match.

Bounds: `max_masters` masters are measured per scrape, shared out round-robin between
the users that run them (masters reported in the previous scrape first), so one user's
processes cannot crowd out another user's apps; `MAX_WORKERS_PER_MASTER` workers each.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass, field
from typing import Protocol

from exporter.gunicorn.cmdline import gunicorn_args, parse_title
from exporter.gunicorn.heartbeat import SAFE_FSTYPES
from exporter.linux.procfs import FdScan, ProcFS, ProcStat, ProcStatus, parse_fdinfo_identity

MAX_MASTERS = 256
MAX_WORKERS_PER_MASTER = 1024
MAX_ORPHAN_CHECKS = 1024       # root processes whose fds are read to tell orphan from master
ORPHAN_SCAN_FDS = 256          # fds looked at per such process
FD_BUDGET_PER_USER = 500_000   # fd table entries read per user and scrape
ARBITER_SIGNALS = (signal.SIGHUP, signal.SIGUSR2)

Key = tuple[int, int]          # (pid, start time in ticks): a process, even after pid reuse


@dataclass
class Proc:
    pid: int
    stat: ProcStat
    argv: list[str]
    title: tuple[str, str | None] | None
    gargs: list[str] | None    # gunicorn arguments when argv is a gunicorn invocation
    status: ProcStatus | None  # None when /proc/PID/status could not be read

    @property
    def key(self) -> Key:
        return self.pid, self.stat.starttime_ticks

    @property
    def kind(self) -> str | None:
        return self.title[0] if self.title else None

    @property
    def uid(self) -> int:
        return self.status.uid if self.status is not None else -1

    def runs_arbiter(self) -> bool:
        if self.kind == "master":
            return True
        st = self.status
        return st is not None and all(st.catches(s) for s in ARBITER_SIGNALS)


class Probe(Protocol):
    """The reads discovery makes on demand (tests pass literal tables)."""

    def fds(self, pid: int, limit: int | None = None, uid: int = -1) -> FdScan:
        """The first `limit` fds (all when None) of a process of user `uid`.
        Raises PermissionError / OSError."""

    def heartbeats(self, pid: int, scan: FdScan) -> frozenset[tuple[int, int]]:
        """(dev, inode) of the heartbeat files among the fds."""

    def environ(self, pid: int) -> dict[str, str] | None:
        """None when not readable."""


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
    orphans: list[Proc] = field(default_factory=list)
    permission_denied: set[int] = field(default_factory=set)  # pids whose fds/environ we may not read
    dropped_masters: int = 0     # over max_masters
    dropped_workers: int = 0     # over MAX_WORKERS_PER_MASTER
    filtered_masters: int = 0    # not run by a watched user


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
        if title is None and gargs is None:
            continue
        try:
            status = procfs.status(pid)
        except (OSError, ValueError, KeyError, IndexError):
            status = None
        found[pid] = Proc(pid, st, argv, title, gargs, status)
    return found


class ProcfsProbe:
    """`Probe` over a real /proc, with a budget of fd table entries per user and scrape:
    one user's processes with huge fd tables cannot make the scrape slow for the others."""

    def __init__(self, procfs: ProcFS, fd_budget: int = FD_BUDGET_PER_USER):
        self.procfs = procfs
        self.fd_budget = fd_budget
        self._left: dict[int, int] = {}

    def fds(self, pid: int, limit: int | None = None, uid: int = -1) -> FdScan:
        left = self._left.get(uid, self.fd_budget)
        if left <= 0:
            raise OSError(f"fd budget of uid {uid} used up in this scrape")
        scan = self.procfs.scan_fds(pid, left if limit is None else min(limit, left))
        self._left[uid] = left - scan.count
        return scan

    def heartbeats(self, pid: int, scan: FdScan) -> frozenset[tuple[int, int]]:
        """The heartbeat files a process holds, as (mnt_id, ino) from its fdinfo: the
        kernel's own account, so a file on a FUSE mount (any process may hold one named
        like a heartbeat) is never asked anything. A kernel older than 5.14 writes no
        `ino:`; then the file is stat()ed, and only on a file system the kernel answers
        itself (heartbeat.SAFE_FSTYPES)."""
        out = set()
        for fd, _target in scan.heartbeats[:MAX_WORKERS_PER_MASTER]:
            try:
                ident = parse_fdinfo_identity(self.procfs.read_text(pid, "fdinfo", fd))
                if ident is None and self.procfs.fd_fstype(pid, fd) in SAFE_FSTYPES:
                    st = self.procfs.fd_stat(pid, fd)
                    ident = (st.st_dev, st.st_ino)
            except OSError:
                continue
            if ident is not None:
                out.add(ident)
        return frozenset(out)

    def environ(self, pid: int) -> dict[str, str] | None:
        try:
            return self.procfs.environ(pid)
        except OSError:
            return None


def discover(procs: dict[int, Proc], probe: Probe, *, known_workers: set[Key] = frozenset(),
             previous_masters: set[Key] = frozenset(), users: frozenset[int] | None = None,
             max_masters: int = MAX_MASTERS) -> Discovery:
    """Classify `procs` (see the module docstring).

    known_workers: processes reported as workers before (they never become masters);
    previous_masters: masters reported in the previous scrape (kept first under the cap);
    users: uids whose masters are watched (None: all).
    """
    result = Discovery([])
    children: dict[int, list[Proc]] = {}
    for p in procs.values():
        children.setdefault(p.stat.ppid, []).append(p)
    roots: list[Proc] = []
    checked = 0
    for p in sorted(procs.values(), key=lambda p: (p.stat.starttime_ticks, p.pid)):
        if p.stat.ppid in procs or p.kind in ("dirty-arbiter", "dirty-worker"):
            continue  # a child of a gunicorn process: classified with its parent
        if users is not None and p.uid not in users:
            if p.kind != "worker" and p.runs_arbiter():
                result.filtered_masters += 1
            continue  # not a watched user's: not even its fds are read
        if p.kind == "worker" or p.key in known_workers:
            result.orphans.append(p)
        elif p.runs_arbiter():
            roots.append(p)
        elif checked < MAX_ORPHAN_CHECKS:
            # No title and no arbiter signal handlers: a worker whose master is gone
            # (it holds its heartbeat file), or a master that has not started its arbiter yet.
            checked += 1
            if _heartbeat_count(probe, p) == 1:
                result.orphans.append(p)
    roots, result.dropped_masters = _fair_share(roots, previous_masters, max_masters)

    queue: list[tuple[Proc, int | None]] = [(p, None) for p in roots]
    seen: set[int] = set()
    while queue:
        proc, upgraded_from = queue.pop(0)
        if proc.pid in seen:
            continue
        seen.add(proc.pid)
        if len(result.masters) >= max_masters:
            result.dropped_masters += 1
            continue
        environ = probe.environ(proc.pid)
        if environ is None:
            result.permission_denied.add(proc.pid)
        m = Master(proc, environ, upgraded_from)
        result.masters.append(m)
        _classify_children(probe, m, children.get(proc.pid, []), queue, result)
    return result


def _heartbeat_count(probe: Probe, p: Proc) -> int:
    """Heartbeat files among the first ORPHAN_SCAN_FDS fds (a worker opens its heartbeat
    early, before the app; a process with a huge fd table costs no more than that)."""
    try:
        scan = probe.fds(p.pid, limit=ORPHAN_SCAN_FDS, uid=p.uid)
    except OSError:
        return -1
    return len(probe.heartbeats(p.pid, scan))


def _fair_share(roots: list[Proc], previous: set[Key], cap: int) -> tuple[list[Proc], int]:
    """At most `cap` roots, taken round-robin between uids; previously reported first."""
    if len(roots) <= cap:
        return roots, 0
    by_uid: dict[int, list[Proc]] = {}
    for p in sorted(roots, key=lambda p: (p.key not in previous, p.stat.starttime_ticks)):
        by_uid.setdefault(p.uid, []).append(p)
    queues = [list(reversed(v)) for _, v in sorted(by_uid.items())]
    kept: list[Proc] = []
    while len(kept) < cap:
        progressed = False
        for q in queues:
            if q and len(kept) < cap:
                kept.append(q.pop())
                progressed = True
        if not progressed:
            break
    kept.sort(key=lambda p: (p.stat.starttime_ticks, p.pid))
    return kept, len(roots) - len(kept)


def _classify_children(probe: Probe, m: Master, kids: list[Proc],
                       queue: list[tuple[Proc, int | None]], result: Discovery) -> None:
    try:
        m.fds = probe.fds(m.proc.pid, uid=m.proc.uid)
    except PermissionError:
        m.fd_error = "permission denied"
        result.permission_denied.add(m.proc.pid)
    except OSError as e:
        m.fd_error = e.strerror or str(e)
    master_beats = probe.heartbeats(m.proc.pid, m.fds) if m.fds is not None else frozenset()
    for child in sorted(kids, key=lambda p: (p.stat.starttime_ticks, p.pid)):
        kind = child.kind
        if kind in ("dirty-arbiter", "dirty-worker"):
            m.other_children.append(child)
            continue
        if kind == "master":
            if _titled_usr2_master(probe, child, m, master_beats):
                queue.append((child, m.proc.pid))
                continue
            kind = "worker"  # forked a moment ago; it has not retitled itself yet
        if len(m.workers) >= MAX_WORKERS_PER_MASTER:
            result.dropped_workers += 1
            continue
        scan: FdScan | None = None
        try:
            scan = probe.fds(child.pid, uid=child.uid)
        except PermissionError:
            m.worker_fd_errors[child.pid] = "permission denied"
            result.permission_denied.add(child.pid)
        except OSError as e:
            m.worker_fd_errors[child.pid] = e.strerror or str(e)
        if kind == "worker" or _is_http_worker(probe, child, scan, master_beats):
            m.workers.append(child)
            if scan is not None:
                m.worker_fds[child.pid] = scan
            continue
        m.worker_fd_errors.pop(child.pid, None)
        if child.gargs is not None and _started_by_usr2(probe, child, m):
            queue.append((child, m.proc.pid))
        else:
            m.other_children.append(child)


def _titled_usr2_master(probe: Probe, child: Proc, m: Master,
                        master_beats: frozenset[tuple[int, int]]) -> bool:
    """A child titled `master`: a new master started by USR2, or a worker forked a moment
    ago that still carries its parent's title? A fork shares its parent's heartbeat
    files (they are closed on exec, so a new master holds none of the old one's);
    setproctitle erases the environment, so GUNICORN_PID is often not there to read."""
    if _started_by_usr2(probe, child, m):
        return True
    try:
        beats = probe.heartbeats(child.pid, probe.fds(child.pid, uid=child.uid))
    except OSError:
        beats = None
    if beats is not None and master_beats and beats & master_beats:
        return False
    parent_name = m.proc.title[1] if m.proc.title else None
    return beats is not None and child.title is not None and child.title[1] != parent_name


def _started_by_usr2(probe: Probe, child: Proc, m: Master) -> bool:
    env = probe.environ(child.pid)
    return env is not None and env.get("GUNICORN_PID") == str(m.proc.pid)


def _is_http_worker(probe: Probe, child: Proc, scan: FdScan | None,
                    master_beats: frozenset[tuple[int, int]]) -> bool:
    if scan is None:
        # We may not look at its fds: a child running the master's own command line is
        # most likely a worker. Say so by keeping it (its fd-based series are absent).
        return child.gargs is not None
    beats = probe.heartbeats(child.pid, scan)
    if len(beats) != 1:
        return False
    return not master_beats or bool(beats & master_beats)
