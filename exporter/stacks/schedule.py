"""Which workers are stuck, which are due for a capture, which were killed at their
timeout. Pure: the clock and everything read from /proc are passed in.

A worker is **stuck** while its heartbeat age is past --stacks.timeout-share of its
--timeout, and IDLE_SLACK more (a sync worker's request has run that long; any other
worker's main loop has not come back; an idle sync worker beats every timeout/2, so
for sync workers the share is at least 0.5), or while it has waited on one dependency at least --stacks.min-wait (the
gunicorn collector's `WorkerSnapshot.dependency_wait`, peer and seconds, when it has
one). A stuck worker is captured:

* at most once per --stacks.interval (a failed capture counts: a process that defeats
  the reader is not asked again sooner);
* at most --stacks.max-concurrent captures at once;
* while the captures' CPU (each run's rusage) stays within --stacks.max-cpu of one core
  on average: a bucket of CPU seconds that fills at that rate up to BURST seconds'
  worth, each finished capture takes what it used, and no capture starts while it is
  empty. When every worker of a big app is stuck at once, the first BURST seconds'
  worth are captured at once, the rest as the budget allows;
* workers not yet captured in this episode first; among them, and then among those
  captured before, the owners (the uid of each worker's master) take turns, and the apps
  of one owner take turns, so one user's stuck workers, a hostile user's 200 fake ones
  included, never hold back another user's capture for more than one turn; within an app,
  nearest their timeout first, then those captured longest ago.

A worker that was captured and then disappears (its heartbeat file and process gone)
with a heartbeat age, at the last reading plus the time since, at or over its timeout
was killed at its timeout by the master (WORKER TIMEOUT, then SIGABRT or SIGKILL): its
last stack is its postmortem.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from exporter.stacks.pyspy import Thread

IDLE_SLACK = 0.5      # seconds past the share of --timeout before a worker is stuck
BURST = 20.0          # seconds' worth of --stacks.max-cpu that may be spent at once
MAX_WORKERS = 16384   # workers followed; more are not (the scrape's own caps are lower)


@dataclass(frozen=True)
class Capture:
    """One capture of one worker: what the log line, /debug/stacks and the metric say."""
    at: float                       # wall clock, when it started
    mono: float                     # monotonic clock, when it started
    app: str
    slot: int
    pid: int
    heartbeat_age: float | None
    timeout: float | None
    trigger: str                    # 'heartbeat' or 'dependency'
    dependency: tuple[str, float] | None
    outcome: str
    frame: str | None = None        # `function (file:line)`, the innermost non-library
    threads: tuple[Thread, ...] = ()
    error: str = ""
    seconds: float = 0.0
    cpu_seconds: float = 0.0


@dataclass
class Worker:
    app: str
    slot: int
    pid: int
    timeout: float | None
    worker_class: str = "sync"
    owner: int | None = None        # uid of its master: owners take turns for captures
    beat_path: str | None = None    # /proc/PID/fd/N of its heartbeat file
    beat_id: tuple[int, int] | None = None   # (st_dev, st_ino) of that file
    monotonic: bool = True          # the beat is time.monotonic() (gunicorn >= 22)
    start: int | None = None        # start time in ticks, from the first reading
    age: float | None = None        # heartbeat age at read_at
    read_at: float = 0.0
    dependency: tuple[str, float] | None = None
    missing: bool = False           # not in the last scrape: gone or not, the next reading says
    stuck_since: float | None = None
    trigger: str = ""
    last_attempt: float | None = None
    running: bool = False
    last: Capture | None = None     # its last successful capture

    @property
    def captured_in_episode(self) -> bool:
        return (self.stuck_since is not None and self.last is not None
                and self.last.mono >= self.stuck_since)


@dataclass
class Reading:
    """What one look at a worker found (exporter/collectors/stacks.py reads it)."""
    alive: bool
    start: int | None = None        # start time in ticks
    age: float | None = None        # heartbeat age now; None: not readable


@dataclass
class Death:
    worker: Worker
    age: float                      # heartbeat age at death (at most this)
    at_timeout: bool


@dataclass
class Schedule:
    share: float = 0.5
    min_wait: float = 5.0
    interval: float = 10.0
    max_concurrent: int = 2
    max_cpu: float = 0.01
    workers: dict[tuple[int, float], Worker] = field(default_factory=dict)
    tokens: float | None = None     # CPU seconds that may be spent now
    _dead: dict[tuple[int, float], float] = field(default_factory=dict)  # key -> when, oldest first
    _refilled: float | None = None
    _turn: int = 0                  # captures started so far
    _turns: dict[tuple, int] = field(default_factory=dict)   # owner / (owner, app) -> last turn

    # --- what the scrapes found ----------------------------------------------------

    def learn(self, seen: list[tuple[tuple[int, float], Worker]], now: float) -> None:
        """Follow the workers of a complete collection (key: pid and start time). A
        known worker keeps its state and takes the new slot, timeout, dependency wait
        and heartbeat file; one the collection did not have is `missing` until the next
        reading says whether it is gone."""
        keys = set()
        for key, w in seen[:MAX_WORKERS]:
            keys.add(key)
            old = self.workers.get(key)
            if old is None and key in self._dead:
                continue            # a collection from before its death, learnt after it
            if old is None:
                w.read_at = now
                if len(self.workers) < MAX_WORKERS:
                    self.workers[key] = w
                continue
            old.app, old.slot, old.timeout, old.dependency = w.app, w.slot, w.timeout, w.dependency
            old.worker_class, old.owner = w.worker_class, w.owner
            old.missing = False
            if (w.beat_path, w.beat_id) != (old.beat_path, old.beat_id):
                old.beat_path, old.beat_id, old.monotonic = w.beat_path, w.beat_id, w.monotonic
            if old.beat_path is None:          # no file to read: the scrape's age is all
                old.age, old.read_at = w.age, now
        for key, w in self.workers.items():
            if key not in keys:
                w.missing = True

    # --- between scrapes -----------------------------------------------------------

    def observe(self, readings: dict[tuple[int, float], Reading], now: float) -> list[Death]:
        """Take a round of readings; return the workers that died (and forget them).
        A worker found alive but missing from the last scrape is forgotten quietly."""
        deaths: list[Death] = []
        for key, r in readings.items():
            w = self.workers.get(key)
            if w is None:
                continue
            if not r.alive or (w.start is not None and r.start != w.start):
                if not w.running:
                    age = (w.age or 0.0) + max(0.0, now - w.read_at)
                    deaths.append(Death(w, age, w.timeout is not None and w.age is not None
                                        and age >= w.timeout))
                    del self.workers[key]
                    self._dead[key] = now
                    if len(self._dead) > MAX_WORKERS:
                        self._dead.pop(next(iter(self._dead)))
                continue
            if w.missing and not w.running:
                del self.workers[key]
                continue
            if w.start is None:
                w.start = r.start
            if r.age is not None:
                w.age, w.read_at = r.age, now
        for w in self.workers.values():
            self._stuck(w, now)
        return deaths

    def threshold(self, w: Worker) -> float | None:
        """The heartbeat age past which the worker is stuck (None: no --timeout known).
        An idle sync worker beats every timeout/2 (it waits that long for a connection),
        so its ages reach timeout/2 without any request: for sync workers the share is at
        least 0.5. IDLE_SLACK more keeps a beat that comes a moment late from counting."""
        if w.timeout is None or w.timeout <= 0:
            return None
        share = max(self.share, 0.5) if w.worker_class == "sync" else self.share
        return share * w.timeout + IDLE_SLACK

    def _stuck(self, w: Worker, now: float) -> None:
        limit = self.threshold(w)
        by_age = limit is not None and w.age is not None and w.age > limit
        by_wait = w.dependency is not None and w.dependency[1] >= self.min_wait
        if by_age or by_wait:
            if w.stuck_since is None:
                w.stuck_since = now
            w.trigger = "heartbeat" if by_age else "dependency"
        else:
            w.stuck_since = None

    # --- captures -------------------------------------------------------------------

    def refill(self, now: float) -> None:
        cap = self.max_cpu * BURST
        if self.tokens is None or self._refilled is None:
            self.tokens, self._refilled = cap, now
            return
        self.tokens = min(cap, self.tokens + max(0.0, now - self._refilled) * self.max_cpu)
        self._refilled = now

    def due(self, now: float) -> list[Worker]:
        """The workers to capture now (marked running)."""
        self.refill(now)
        running = sum(1 for w in self.workers.values() if w.running)
        free = self.max_concurrent - running
        if free <= 0 or self.tokens is None or self.tokens <= 0:
            return []
        ready = [w for w in self.workers.values()
                 if w.stuck_since is not None and not w.running and not w.missing
                 and (w.last_attempt is None or now - w.last_attempt >= self.interval)]
        picked = []
        for _ in range(min(free, len(ready))):
            w = min(ready, key=lambda w: (
                w.captured_in_episode, self._turns.get((w.owner,), -1),
                self._turns.get((w.owner, w.app), -1), -_nearness(w),
                w.last_attempt if w.last_attempt is not None else -1e18))
            ready.remove(w)
            picked.append(w)
            w.running = True
            w.last_attempt = now
            self._turn += 1
            self._turns[(w.owner,)] = self._turns[(w.owner, w.app)] = self._turn
        if len(self._turns) > 2 * MAX_WORKERS:      # owners and apps that are gone
            present = {k for w in self.workers.values() for k in ((w.owner,), (w.owner, w.app))}
            self._turns = {k: v for k, v in self._turns.items() if k in present}
        return picked

    def finished(self, w: Worker, capture: Capture) -> None:
        w.running = False
        if self.tokens is not None:
            self.tokens -= capture.cpu_seconds
        if capture.outcome == "ok":
            w.last = capture

    def stuck_frames(self) -> list[tuple[str, int, str]]:
        """(app, slot, frame) of every stuck worker captured in this episode."""
        return sorted((w.app, w.slot, w.last.frame) for w in self.workers.values()
                      if w.captured_in_episode and w.last.frame and not w.missing)


def _nearness(w: Worker) -> float:
    """How near its timeout a worker is (its heartbeat age over its timeout; the
    dependency wait over min-wait ranks after any heartbeat)."""
    if w.timeout and w.age is not None:
        return w.age / w.timeout
    return 0.0
