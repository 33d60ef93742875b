"""Between scrapes, the dependency clock: once a second (DEPENDENCY_READ), which of the
workers' outbound connections the last scrape found wait for a reply
(exporter/gunicorn/dependencies.py's rules), and how long: per app and peer, the
worker-seconds spent waiting (sync workers count one each, gthread and async workers a
connection each), `gunicorn_dependency_waiting_seconds_total`. A scrape every 15 s sees
a 2 s stall every 10 s at most by luck; this counts each.

What it reads per read: tcp_info of the known outbound TCP connections (exact sock_diag
lookups, in each connection's network namespace: `read_times`), and for a sync worker
none of whose TCP connections awaits a reply (that answer needs nothing else), where it
sleeps (/proc/PID/wchan), whether it is in a request (its fd count above what it holds
idle: the count the busy sampling took in the same tick, when it took one) and since
when (its heartbeat file).
A connection opened and closed between two scrapes is not known to it: pooled and
kept-alive connections (a database, a cache, an HTTP session) are; a library that
opens a connection per call is seen only while one is open at a scrape.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from exporter.gunicorn import dependencies, heartbeat
from exporter.gunicorn.dependencies import Outbound
from exporter.gunicorn.heartbeat import HeartbeatFile
from exporter.linux.sockets import InetSocket
from exporter.linux.statx import stat_nosync
from exporter.sampler.stats import count_fds

DEPENDENCY_READ = 1.0     # seconds between two reads
KEEP = 600.0              # seconds a peer's counter outlives its last sighting
MAX_CONNECTIONS = 4096    # outbound connections followed, all workers together


@dataclass(frozen=True)
class Target:
    app: str
    peers: frozenset[str]           # the app's peer labels (others are 'other')
    pid: int
    conns: tuple[Outbound, ...]
    netns: int | None
    master: int
    sync: bool
    idle_fds: int | None            # a sync worker's fds when idle (None: unknown)
    beat: HeartbeatFile | None


class DependencyClock:
    def __init__(self, read_times, proc: str = "/proc", by_size: bool = False):
        # {namespace: (a pid in it, [InetSocket])} -> {inode: TcpTimes}
        self.read_times = read_times
        self.proc = proc
        self.by_size = by_size      # count fds by /proc/PID/fd's size (stats.count_fds)
        self._lock = threading.Lock()
        self._targets: list[Target] = []
        self._seconds: dict[tuple[str, str], float] = {}
        self._seen: dict[tuple[str, str], float] = {}
        self._next = 0.0
        self._last: float | None = None
        self.reads = 0

    def retarget(self, snap, now: float | None = None) -> None:
        """Follow the outbound connections this scrape found."""
        now = time.monotonic() if now is None else now
        targets, n = [], 0
        for a in snap.apps:
            if not a.up:
                continue
            peers = frozenset(a.dependencies)
            for w in a.workers:
                conns = tuple(w.outbound)[:max(0, MAX_CONNECTIONS - n)]
                if not conns:
                    continue
                n += len(conns)
                idle = None
                if w.open_fds is not None and w.requests is not None:
                    idle = max(0, w.open_fds - w.requests)
                targets.append(Target(a.app, peers, w.pid, conns, a.netns, a.master_pid or 0,
                                      a.worker_class == "sync", idle, w.heartbeat_file))
        with self._lock:
            self._targets = targets
            for t in targets:
                for peer in t.peers:
                    self._seen[(t.app, peer)] = now
            for key, seen in list(self._seen.items()):
                if now - seen > KEEP:
                    del self._seen[key]
                    self._seconds.pop(key, None)

    def tick(self, now: float, counted: dict[str, dict[int, int | None]] | None = None) -> None:
        """Called at every sample; reads once every DEPENDENCY_READ. `counted`: per app,
        pid -> fd count, as the sample just counted them."""
        if now < self._next:
            return
        fds = {pid: n for counts in (counted or {}).values() for pid, n in counts.items()}
        self._next = now + DEPENDENCY_READ
        with self._lock:
            targets = list(self._targets)
        wanted: dict[int | None, tuple[int, list[InetSocket]]] = {}
        for t in targets:
            socks = [c.sock for c in t.conns if isinstance(c.sock, InetSocket)]
            if socks:
                wanted.setdefault(t.netns, (t.master, []))[1].extend(socks)
        try:
            times = self.read_times(wanted) if wanted else {}
        except OSError:
            times = None
        waiting: dict[tuple[str, str], int] = {}
        if times is not None:
            for t in targets:
                conns = list(t.conns)
                ws = dependencies.waits(conns, times, None)   # a TCP wait needs nothing else
                if not ws and t.sync:
                    ws = dependencies.waits(conns, times, *self._sync_state(t, fds))
                for w in ws:
                    key = (t.app, w.peer if w.peer in t.peers else dependencies.OTHER)
                    waiting[key] = waiting.get(key, 0) + 1
                    if t.sync:
                        break               # a sync worker waits on one peer at a time
        with self._lock:
            dt = None if self._last is None or times is None else now - self._last
            self._last = now if times is not None else None
            if dt is not None and 0 < dt <= 3 * DEPENDENCY_READ:
                for key, n in waiting.items():
                    self._seconds[key] = self._seconds.get(key, 0.0) + n * dt
            self.reads += 1

    def _sync_state(self, t: Target, fds: dict[int, int | None]
                    ) -> tuple[str | None, float | None]:
        """Where a sync worker sleeps, and how long its request has run (None: not in a
        request by its fd count, or unknown)."""
        try:
            with open(f"{self.proc}/{t.pid}/wchan", "rb") as f:
                wchan = f.read(64).decode("ascii", "replace").strip()
        except OSError:
            return None, None
        n = fds[t.pid] if fds.get(t.pid) is not None else count_fds(t.pid, self.proc,
                                                                     self.by_size)
        if t.idle_fds is None or n is None or n <= t.idle_fds or t.beat is None:
            return wchan, None
        try:
            st = stat_nosync(f"{self.proc}/{t.pid}/fd/{t.beat.fd}")
        except OSError:
            return wchan, None
        if (st.st_dev, st.st_ino) != (t.beat.dev, t.beat.ino):
            return wchan, None
        beat = heartbeat.last_beat(st.st_mtime, st.st_ctime, t.beat.monotonic)
        return wchan, heartbeat.age(beat, t.beat.monotonic, time.monotonic(), time.time())

    def snapshot(self) -> list[tuple[str, str, float]]:
        """(app, peer, waiting seconds) of the peers seen within KEEP."""
        with self._lock:
            return sorted((app, peer, self._seconds.get((app, peer), 0.0))
                          for app, peer in self._seen)
