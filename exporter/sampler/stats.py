"""The sampler's accounting, one value per kind of thing it watches: a sliding maximum,
a listener's queue, a sync app's busy workers, a worker slot's heartbeat; and counting a
worker's fds. Used by the sampler thread (exporter/sampler/__init__.py) under its lock."""

from __future__ import annotations

import os
import resource
from collections import deque
from dataclasses import dataclass, field

from exporter.gunicorn import heartbeat
from exporter.gunicorn.heartbeat import HeartbeatFile
from exporter.linux.statx import stat_nosync


class SlidingMax:
    """The maximum of the values added in the last `window` seconds (monotonic deque:
    O(1) amortised per sample)."""

    def __init__(self, window: float):
        self.window = window
        self._q: deque[tuple[float, int]] = deque()

    def add(self, t: float, value: int) -> None:
        q = self._q
        while q and q[-1][1] <= value:
            q.pop()
        q.append((t, value))
        self._expire(t)

    def _expire(self, now: float) -> None:
        q = self._q
        while len(q) > 1 and q[0][0] < now - self.window:
            q.popleft()

    def value(self, now: float) -> int | None:
        """None when nothing was seen within the window."""
        self._expire(now)
        if not self._q or self._q[0][0] < now - self.window:
            return None
        return self._q[0][1]


@dataclass
class QueueStats:
    """One listener's accounting."""

    peak: SlidingMax
    queued_seconds: float = 0.0
    length_seconds: float = 0.0
    last: int | None = None        # the last sample's queue length; None: not seen yet

    def sample(self, t: float, dt: float | None, length: int | None) -> None:
        if dt is not None and self.last is not None:
            if self.last > 0:
                self.queued_seconds += dt
            self.length_seconds += self.last * dt
        self.last = length
        if length is not None:
            self.peak.add(t, length)


@dataclass
class BusyStats:
    """One sync app's accounting: workers pid -> idle fd count."""

    idle_fds: dict[int, int] = field(default_factory=dict)
    all_busy_seconds: float = 0.0
    last: bool | None = None

    def sample(self, dt: float | None, all_busy: bool | None) -> None:
        if dt is not None and self.last:
            self.all_busy_seconds += dt
        self.last = all_busy


class HeartbeatStats:
    """One worker slot's heartbeat ages: the largest of the last `window` seconds. The
    slot keeps its maximum when its worker is replaced (a worker killed at --timeout
    still counts for the window); `follow` points it at the new worker's file."""

    def __init__(self, window: float):
        self.peak = SlidingMax(window)
        self.pid = 0
        self.file: HeartbeatFile | None = None
        self.path = ""
        self.beat: float | None = None      # the last beat read, on the file's clock

    def follow(self, pid: int, file: HeartbeatFile, proc: str) -> None:
        if (pid, file) != (self.pid, self.file):
            self.pid, self.file, self.beat = pid, file, None
            self.path = f"{proc}/{pid}/fd/{file.fd}"

    def read(self) -> float | None:
        """The last beat now (None: the file is gone, or no longer this worker's)."""
        f = self.file
        try:
            st = stat_nosync(self.path)     # a FUSE file swapped in cannot make us wait
        except OSError:
            return None
        if (st.st_dev, st.st_ino) != (f.dev, f.ino):
            return None
        return heartbeat.last_beat(st.st_mtime, st.st_ctime, f.monotonic)

    def update(self, t: float, beat: float | None, mono: float, wall: float) -> None:
        if beat is None:
            self.file = None        # stop reading it until the next scrape says more
            return
        if self.beat is not None and beat > self.beat:
            self.peak.add(t, beat - self.beat)   # the age just before this beat, at most
        self.beat = beat
        self.peak.add(t, heartbeat.age(beat, self.file.monotonic, mono, wall))


def count_fds(pid: int, proc: str = "/proc", by_size: bool = False) -> int | None:
    """Number of open fds of a process; None if gone or not readable. `by_size`: the
    size of /proc/PID/fd, which Linux >= 6.2 sets to the number of open fds (one stat,
    no directory listing: 0.39 ms instead of 1.0 for 64 workers); else one getdents
    pass (no readlink)."""
    try:
        if by_size:
            n = os.stat(f"{proc}/{pid}/fd").st_size
            if n:
                return n
        return len(os.listdir(f"{proc}/{pid}/fd"))
    except OSError:
        return None


class FdCounter:
    """count_fds for the sampler's workers, ten times a second: where /proc/PID/fd's
    size counts fds, through an O_PATH descriptor of each worker's /proc/PID/fd kept
    open between samples: one fstat(), no path lookup (64 workers: 0.16 ms against 0.25
    for a stat() by path, with the caches cold). The descriptor is bound to the process
    it was opened for, not to its pid: once that process has exited, fstat() fails
    (ENOENT) whoever reuses the pid. At most MAX_OPEN are kept, and a quarter of the
    process's fd limit; the rest are counted by path. Used by the sampler thread only."""

    MAX_OPEN = 1024

    def __init__(self, proc: str = "/proc", by_size: bool = False):
        self.proc = proc
        self.by_size = by_size
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        self.max_open = self.MAX_OPEN if soft == resource.RLIM_INFINITY else \
            min(self.MAX_OPEN, soft // 4)
        self._open: dict[int, int] = {}      # pid -> O_PATH fd of its /proc/PID/fd

    def count(self, pid: int) -> int | None:
        fd = self._open.get(pid)
        if fd is None:
            if not self.by_size or len(self._open) >= self.max_open:
                return count_fds(pid, self.proc, self.by_size)
            try:
                fd = self._open[pid] = os.open(
                    f"{self.proc}/{pid}/fd", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            except OSError:
                return None
        try:
            n = os.fstat(fd).st_size
        except OSError:                 # the process is gone
            os.close(self._open.pop(pid))
            return None
        return n or count_fds(pid, self.proc)

    def keep(self, pids) -> None:
        """Close the descriptors of processes no longer counted."""
        for pid in [p for p in self._open if p not in pids]:
            os.close(self._open.pop(pid))

    def close(self) -> None:
        self.keep(())


def fd_dir_size_counts(proc: str = "/proc", tries: int = 5) -> bool:
    """Whether this proc's /proc/PID/fd sizes count open fds (Linux >= 6.2, a real
    procfs): our own fd directory's size equals its listing, less the fd the listing
    opened. Another thread of ours may open or close an fd between the two reads, so a
    difference is asked again (one match proves it; before 6.2 the size is 0)."""
    for _ in range(tries):
        try:
            size = os.stat(f"{proc}/self/fd").st_size
            if size <= 0:
                return False
            if size == len(os.listdir(f"{proc}/self/fd")) - 1:
                return True
        except OSError:
            return False
    return False
