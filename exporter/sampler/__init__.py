"""Between scrapes: every gunicorn listener's accept queue, and whether every sync
worker is busy, sampled at --sampler.interval (100 ms) in a thread of its own.

A scrape every 15-60 s sees one instant; a 5-second burst that filled the accept queue
and drained before the next scrape leaves no trace in `gunicorn_listener_queue_length`.
The sampler keeps, per listener:

* the largest queue length of the last --sampler.peak-window (a sliding maximum: the
  same value whoever scrapes, and however often);
* the seconds during which the queue was not empty (a request waited for a worker);
* the integral of the queue length over time (queue-seconds: `rate()` of it is the
  mean queue length, and with the request rate Little's law gives the mean wait);

and per app of sync workers, the seconds during which every worker was busy; and per
worker (every class), the highest heartbeat age of the last --sampler.peak-window, so a
request that comes close to --timeout between two scrapes is seen whatever the scrape
interval (a sampled age aliases: 25 s requests against a 30 s timeout, scraped every
15 s, read 1, 16, 6, 21, 11 s).

What it reads per sample, and nothing else: whether each watched listener has
connections waiting, by a poll() of the master's own socket (exporter/linux/pidfd.py:
constant time, 0.1 ms with the caches cold); the length of the queues that are not
empty, or that cannot be polled, through netlink (`sockdiag.ListenQueues`: TCP
listeners by exact lookups of their address and port, unix listeners by exact lookups
of their inodes, LISTEN-only dumps for new ones; the host's connections are never
sent), per network namespace that holds a watched listener (a pod's through a socket
opened inside it, exporter/linux/netns.py); and for sync apps the size of each worker's
/proc/PID/fd (an fstat() of a descriptor kept open, stats.FdCounter), up to the first
idle worker. What to watch comes from the last scrape (`retarget`): listener inodes,
their namespaces and masters, worker pids and each worker's idle fd count.

A sync worker serves one request at a time and holds the client's socket while it does:
it is busy when it has more fds open than when idle. The idle count is its fd count at
the last scrape minus the client connections it held then, lowered by any smaller count
seen since (an fd opened for good after a scrape, such as a lazily made database
connection, makes the worker look busy until the next scrape re-learns it). A
non-empty accept queue also means no worker was free. Worker classes that serve many
requests at once (gthread, gevent, ...) are not sampled for busyness: their fds count
idle keep-alive connections too.

On a host with many unix sockets, reading a unix listener's queue is the one costly
part of a sample: the kernel finds the socket by walking every unix socket of the
namespace (sock_diag has no index by inode for unix sockets; a LISTEN-state dump walks
them all too). So when such a read costs more than CHEAP_UNIX_READ (0.2 ms, a few
thousand unix sockets), the unix listeners of a sync app are skipped, and taken as
empty, while one of its workers is idle by its fd count (it would be accepting) and the
last read found the queue empty; they are read every UNIX_RECHECK (1 s) whatever the
workers look like, and at every sample once a read finds the queue non-empty or every
worker busy. The cost: a queue that fills while a worker looks idle (workers stuck
outside any request) is seen up to 1 s late. TCP listeners (a hash lookup in the
kernel) and other worker classes are read at every sample. Workers' fd counts stop at
the first idle worker: one is enough to say not all are busy. Every listener read at a
sample is polled first (unix ones only when their walk is costly): an empty queue then
costs no netlink read at all, which with every sync worker busy and nothing queued (the
worst case of the old rule) leaves the sampler at 0.6-0.8 % of a core instead of
1.6-2.8 %, at 64 workers and 12k unix sockets (docs/performance.md).

Heartbeats are read once a second (HEARTBEAT_READ), not at every sample: a stat() of
each worker's heartbeat file (`/proc/PID/fd/N`, checked to be the same file by device
and inode; only on file systems the kernel answers itself, see
exporter/gunicorn/heartbeat.py). The age grows by one second per second until the next
beat, so reading it once a second loses nothing but the last second before a beat, and
that is recovered: the beat's own time stamp says when it came, so when a read finds a
new beat, the age just before it was the gap between the two beats (exact when one beat
came between the reads, as at the end of a sync worker's request; at most the read
interval too high when several did). The scrape reads every heartbeat once more, so the
value includes the age at that moment.

Accounting holds each sample's value until the next one (left Riemann sum). A gap longer
than MAX_GAP (the thread was starved) is not credited to anything: it is counted in
`skipped_seconds` instead of guessed.
"""

from __future__ import annotations

import logging
import threading
import time

from exporter.gunicorn.heartbeat import HeartbeatFile
from exporter.linux import pidfd
from exporter.sampler.dependencies import DependencyClock
from exporter.sampler.stats import (  # noqa: F401 - tests and the collector use them here
    BusyStats, FdCounter, HeartbeatStats, QueueStats, SlidingMax,
    fd_dir_size_counts)
from exporter.snapshot import GunicornSnapshot, SamplerListener, SamplerSnapshot

log = logging.getLogger(__name__)

MAX_GAP = 1.0          # seconds; longer gaps between samples are not credited
KEEP = 600.0           # seconds a listener or app's counters outlive its last scrape
MAX_LISTENERS = 4096   # bounded state whatever the host runs
MAX_WORKERS = 16384
# A unix listener's queue costs the kernel a walk of every unix socket of the namespace,
# even by exact inode (0.6 ms at 12k unix sockets, 11 ms at 60k): when a read that
# includes unix listeners costs more than CHEAP_UNIX_READ, the unix listeners of a sync
# app with an idle worker and an empty queue last time are read only every UNIX_RECHECK
# seconds (see the module docstring).
CHEAP_UNIX_READ = 0.0002
UNIX_RECHECK = 1.0
HEARTBEAT_READ = 1.0   # seconds between two reads of a worker's heartbeat file


class Sampler:
    """The accounting and the sampling thread. `retarget` and `snapshot` are called
    from the event loop, `tick` from the thread; one lock guards the state."""

    def __init__(self, interval: float, window: float, read_queues, proc: str = "/proc",
                 read_times=None):
        self.interval = interval
        self.window = window
        # {namespace: (a pid in it, wanted inodes)} -> {inode: queue length}; namespace
        # None is the exporter's own
        self.read_queues = read_queues
        self.proc = proc
        self._by_size = fd_dir_size_counts(proc)
        self._fds = FdCounter(proc, self._by_size)
        self._fds_of: dict | None = None    # the workers whose fds _fds counts
        self._lock = threading.Lock()
        self._listeners: dict[tuple[str, str], QueueStats] = {}
        self._inodes: dict[int, tuple[str, str]] = {}       # inode -> (app, listener)
        self._unix: dict[int, str] = {}                     # unix listener inode -> app
        self._unix_cost = 0.0          # seconds the last read with unix listeners took
        self._unix_read_at: dict[int, float] = {}   # unix listener inode -> last read
        self._polls = pidfd.ListenerPolls(proc)     # listeners empty by a poll()
        self._polls_of: dict | None = None          # the _unix they were found for
        self._where: dict[int, tuple[int | None, int]] = {}  # inode -> (netns, master pid)
        self._apps: dict[str, BusyStats] = {}
        self._beats: dict[tuple[str, int], HeartbeatStats] = {}    # (app, worker slot)
        self._next_beats = 0.0      # when to read the heartbeat files next
        self._seen: dict[object, float] = {}                # stats key -> last scrape with it
        self._reported: set = set()      # keys found by the last scrape
        self._last_t: float | None = None
        self.samples = 0
        self.errors = 0
        self.skipped_seconds = 0.0
        self.busy_seconds = 0.0     # wall time spent sampling
        # the dependency clock, when the caller can read tcp_info (read_times)
        self.deps = (DependencyClock(read_times, proc, self._by_size)
                     if read_times is not None else None)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- what to watch, from the last scrape -----------------------------------------

    def retarget(self, snap: GunicornSnapshot, now: float | None = None) -> None:
        """Watch what this scrape found. Counters of listeners and apps it did not find
        are kept (not reported, not sampled) for KEEP seconds, so that one failed read
        does not reset them."""
        now = time.monotonic() if now is None else now
        inodes: dict[int, tuple[str, str]] = {}
        unix: dict[int, str] = {}
        where: dict[int, tuple[int | None, int]] = {}
        sync: dict[str, dict[int, int]] = {}
        beats: dict[tuple[str, int], tuple[int, HeartbeatFile]] = {}
        for a in snap.apps:
            if not a.up:
                continue
            for w in a.workers:
                if w.heartbeat_file is not None and len(beats) < MAX_WORKERS:
                    beats[(a.app, w.slot)] = (w.pid, w.heartbeat_file)
            for lst in a.listeners:
                if lst.inode and len(inodes) < MAX_LISTENERS:
                    inodes[lst.inode] = (a.app, lst.label)
                    where[lst.inode] = (a.netns, a.master_pid or 0)
                    if lst.kind == "unix":
                        unix[lst.inode] = a.app
            if a.worker_class == "sync" and a.workers:
                idle = {}
                for w in a.workers:
                    if w.open_fds is None:
                        continue
                    held = (w.connections_active or 0) + (w.connections_client_closed or 0)
                    idle[w.pid] = max(0, w.open_fds - held)
                if len(idle) == len(a.workers):   # every worker measurable, or none
                    sync[a.app] = idle
        with self._lock:
            self._inodes = inodes
            self._unix = unix
            self._where = where
            for key in set(inodes.values()):
                self._seen[key] = now
                if key not in self._listeners:
                    self._listeners[key] = QueueStats(SlidingMax(self.window))
            for app, idle in sync.items():
                self._seen[app] = now
                stats = self._apps.setdefault(app, BusyStats())
                stats.idle_fds = dict(list(idle.items())[:MAX_WORKERS])
            for app, stats in self._apps.items():
                if app not in sync:
                    stats.idle_fds = {}
                    stats.last = None
            for key in [k for k in self._beats if k not in beats]:
                del self._beats[key]
            for key, (pid, file) in beats.items():
                stats = self._beats.get(key)
                if stats is None:
                    stats = self._beats[key] = HeartbeatStats(self.window)
                stats.follow(pid, file, self.proc)
            self._reported = set(inodes.values()) | set(sync)
            for key, seen in list(self._seen.items()):
                if now - seen > KEEP:
                    del self._seen[key]
                    self._listeners.pop(key, None)
                    self._apps.pop(key, None)
        if self.deps is not None:
            self.deps.retarget(snap, now)

    # --- one sample ------------------------------------------------------------------

    def tick(self, now: float | None = None) -> None:
        start = time.monotonic()
        now = start if now is None else now
        with self._lock:
            where = dict(self._where)
            unix = dict(self._unix)
            empty = {ino for ino, key in self._inodes.items()
                     if (s := self._listeners.get(key)) is not None and s.last == 0}
            workers = {app: dict(b.idle_fds) for app, b in self._apps.items() if b.idle_fds}
        fds, all_busy = self._count_fds(workers)
        beats = None
        if now >= self._next_beats:
            self._next_beats = now + HEARTBEAT_READ
            beats = self._read_beats()
        skipped: set[int] = set()
        read_at = self._unix_read_at = {i: t for i, t in self._unix_read_at.items() if i in unix}
        costly = self._unix_cost > CHEAP_UNIX_READ
        if costly:
            skipped = {ino for ino, app in unix.items()
                       if ino in empty and all_busy.get(app) is False
                       and ino in read_at and 0 <= now - read_at[ino] < UNIX_RECHECK}
        if self._polls_of is not self._unix:    # a scrape retargeted: look for them again
            self._polls.reset()
            self._polls_of = self._unix
        probed = self._polls.empty([(i, pid) for i, (_ns, pid) in where.items()
                                    if i not in skipped and (costly or i not in unix)])
        for ino in probed:          # read, and empty: sock_diag would have said 0
            if ino in unix:
                read_at[ino] = now
        skipped |= probed
        wanted: dict[int | None, tuple[int, set[int]]] = {}
        for ino, (netns, pid) in where.items():
            if ino not in skipped:
                wanted.setdefault(netns, (pid, set()))[1].add(ino)
        read_start = time.monotonic()
        try:
            queues = self.read_queues(wanted) if wanted else {}
        except OSError as e:
            queues = None
            self.errors += 1
            log.debug("sampler: reading listen queues failed: %r", e)
        asked_unix = [ino for ino in unix if ino in where and ino not in skipped]
        if asked_unix and queues is not None:
            self._unix_cost = time.monotonic() - read_start
            for ino in asked_unix:          # each listener's own clock: one app read at
                read_at[ino] = now          # every sample cannot delay another's recheck
        if queues is not None:
            for ino in skipped:
                queues[ino] = 0          # a worker is free to accept: nothing waits
        with self._lock:
            dt = None if self._last_t is None else now - self._last_t
            if dt is not None and (dt > MAX_GAP or dt < 0):
                self.skipped_seconds += max(dt, 0.0)
                dt = None
            self._last_t = now
            waiting: dict[str, bool] = {}
            for ino, key in self._inodes.items():
                stats = self._listeners.get(key)
                if stats is None:
                    continue
                length = None if queues is None else queues.get(ino)
                stats.sample(now, dt, length)
                if length:
                    waiting[key[0]] = True
            for app, counts in fds.items():
                stats = self._apps.get(app)
                if stats is None or not stats.idle_fds:
                    continue
                for pid, n in counts.items():    # a worker idle below its known count
                    idle = stats.idle_fds.get(pid)
                    if n is not None and idle is not None and n < idle:
                        stats.idle_fds[pid] = n
                stats.sample(dt, all_busy[app] or waiting.get(app, False))
            if beats is not None:
                self._update_beats(now, beats)
        if self.deps is not None:
            self.deps.tick(now, fds)
        with self._lock:
            self.samples += 1
            self.busy_seconds += time.monotonic() - start

    def _read_beats(self) -> list[tuple[HeartbeatStats, HeartbeatFile, float | None]]:
        """Every followed heartbeat file's last beat (stat() outside the lock)."""
        with self._lock:
            stats = [(b, b.file) for b in self._beats.values() if b.file is not None]
        return [(b, f, b.read()) for b, f in stats]

    def _update_beats(self, now: float, beats: list) -> None:
        mono, wall = time.monotonic(), time.time()
        for stats, file, beat in beats:
            if stats.file is file:      # not re-pointed by a scrape since the read
                stats.update(now, beat, mono, wall)

    def _count_fds(self, workers: dict[str, dict[int, int]]
                   ) -> tuple[dict[str, dict[int, int | None]], dict[str, bool]]:
        """Per sync app: the fd counts read, and whether every worker is busy (more fds
        than when idle). Stops at the first worker that is not: one is enough."""
        fds: dict[str, dict[int, int | None]] = {}
        all_busy: dict[str, bool] = {}
        pids = {pid for idle in workers.values() for pid in idle}
        if pids != self._fds_of:
            self._fds.keep(pids)
            self._fds_of = pids
        for app, idle in workers.items():
            counts = fds[app] = {}
            busy = True
            for pid, base in idle.items():
                n = counts[pid] = self._fds.count(pid)
                if n is None or n <= base:   # idle, or gone (a worker being replaced)
                    busy = False
                    break
            all_busy[app] = busy
        return fds, all_busy

    # --- the thread --------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        next_t = time.monotonic()
        last_error = None
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception as e:  # noqa: BLE001 - the sampler never dies of one bad sample
                self.errors += 1
                if repr(e) != last_error:   # once per kind of failure, not ten times a second
                    last_error = repr(e)
                    log.warning("sampler: a sample failed", exc_info=True)
            next_t += self.interval
            delay = next_t - time.monotonic()
            if delay < 0:                       # late: skip the missed ticks
                next_t = time.monotonic()
                delay = 0
            self._stop.wait(delay)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
            if not self._thread.is_alive():
                self._fds.close()
                self._polls.close()

    # --- what a scrape reports ---------------------------------------------------------

    def snapshot(self) -> SamplerSnapshot:
        beats = self._read_beats()      # so that the maxima include this moment
        now = time.monotonic()
        with self._lock:
            self._update_beats(now, beats)
            heartbeat_max = []
            for (app, slot), b in sorted(self._beats.items()):
                value = b.peak.value(now)
                if value is not None:
                    heartbeat_max.append((app, slot, value))
            listeners = [
                SamplerListener(app, label, s.peak.value(now), s.queued_seconds,
                                s.length_seconds)
                for (app, label), s in sorted(self._listeners.items())
                if (app, label) in self._reported]
            busy = {app: b.all_busy_seconds for app, b in sorted(self._apps.items())
                    if app in self._reported}
            return SamplerSnapshot(
                interval=self.interval, window=self.window, listeners=listeners,
                all_busy_seconds=busy, heartbeat_max=heartbeat_max,
                dependency_waiting=self.deps.snapshot() if self.deps is not None else [],
                samples=self.samples, errors=self.errors,
                skipped_seconds=self.skipped_seconds, busy_seconds=self.busy_seconds)
