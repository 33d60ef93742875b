"""The stacks collector (opt-in, --collector.stacks): the stack of every stuck worker,
read from outside with py-spy, and the last stack of every worker gunicorn kills at its
timeout (the explanation gunicorn never prints: `worker_abort` does not run on a timeout
kill, and an error tracker inside the worker never hears of it).

How it runs, off the scrape's path:

* `learn()`, once per complete collection, hands the schedule (exporter/stacks/
  schedule.py) the workers the gunicorn collector found: slot, pid, --timeout, the
  heartbeat file, and the dependency wait when the gunicorn collector's WorkerSnapshot
  carries one (`dependency_wait`, peer and seconds);
* a watch task of its own, every TICK, reads each followed worker's heartbeat file and
  start time in a thread (`_read`), tells the schedule, starts the captures that are
  due in a pool of --stacks.max-concurrent threads (exporter/stacks/reader.py: py-spy
  as a bounded subprocess), and notices the workers that died;
* `collect()` only copies what is there: the stuck workers' frames, the captures by
  outcome, their CPU. A scrape never waits for a capture.

How it learns of a kill at the timeout: from its own readings only. A worker it has
captured in this stuck episode whose process and heartbeat file are gone, with a
heartbeat age (last reading plus the time since) at or over its --timeout, was killed
by the master at its timeout (that is when the master kills it; another end at that
very moment, an OOM kill, a shutdown, would be read the same way): one
`stack_postmortem` line with its last stack. The logs collector counts the master's
`WORKER TIMEOUT` lines independently (`gunicorn_log_events_total{signature=
"worker_timeout"}`), when the error log is followed; nothing here depends on it.

Each capture is logged as one line, `stack_capture {json}`: app, worker slot, pid,
heartbeat age, trigger, the innermost frame outside gunicorn and the standard library,
and the stack (exporter/stacks/store.py). GET /debug/stacks shows the last ones per app.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from exporter.collectors.base import Collector
from exporter.gunicorn import heartbeat
from exporter.labels import bounded
from exporter.options import DEFAULTS
from exporter.snapshot import GunicornSnapshot, StacksSnapshot
from exporter.stacks import pyspy, reader, store
from exporter.stacks.schedule import Capture, Death, Reading, Schedule, Worker

log = logging.getLogger(__name__)

TICK = 1.0                 # seconds between two readings of the followed workers
MAX_COUNTED_APPS = 1024    # (app, outcome) series kept


@dataclass
class StacksOptions:
    timeout_share: float = DEFAULTS["stacks.timeout-share"]
    min_wait: float = DEFAULTS["stacks.min-wait"]
    interval: float = DEFAULTS["stacks.interval"]
    max_concurrent: int = DEFAULTS["stacks.max-concurrent"]
    max_cpu: float = DEFAULTS["stacks.max-cpu"]
    capture_timeout: float = DEFAULTS["stacks.capture-timeout"]
    py_spy: str | None = DEFAULTS["stacks.py-spy"]


class StacksCollector(Collector):
    name = "stacks"

    def __init__(self, options: StacksOptions | None = None, proc: str = "/proc",
                 tick: float = TICK):
        self.options = o = options or StacksOptions()
        self.proc = proc
        self.tick = tick
        self.schedule = Schedule(o.timeout_share, o.min_wait, o.interval, o.max_concurrent,
                                 o.max_cpu)
        self.store = store.Store()
        self.binary: str | None = None
        self.counts: dict[tuple[str, str], int] = {}
        self.cpu_seconds = 0.0
        self._reads = ThreadPoolExecutor(1, thread_name_prefix="stacks-read")
        self._pool = ThreadPoolExecutor(o.max_concurrent, thread_name_prefix="stacks-capture")
        self._task: asyncio.Task | None = None
        self._captures: set[asyncio.Task] = set()
        self._failed_tick: str | None = None

    # --- the collector's steps -------------------------------------------------------

    async def start(self) -> None:
        self.binary = reader.find_py_spy(self.options.py_spy or "")
        if self.binary is None:
            log.warning("--collector.stacks: py-spy not found (%s); no stack is captured, "
                        "gunicorn_stack_reader_available 0. Install it beside the exporter "
                        "(pip install py-spy) or give --stacks.py-spy",
                        self.options.py_spy or "not beside this Python, not on PATH")
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._watch())

    async def collect(self) -> StacksSnapshot:
        if self._task is None:
            await self.start()
        return StacksSnapshot(reader_available=self.binary is not None,
                              stuck=self.schedule.stuck_frames(), captures=dict(self.counts),
                              cpu_seconds=self.cpu_seconds)

    def learn(self, snapshot) -> None:
        g = snapshot.data("gunicorn", GunicornSnapshot)
        if g is not None:
            self.schedule.learn(workers_of(g, self.proc), time.monotonic())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        for t in list(self._captures):
            t.cancel()
        # a capture in flight ends within --stacks.capture-timeout (its thread kills it)
        self._reads.shutdown(wait=False, cancel_futures=True)
        self._pool.shutdown(wait=False, cancel_futures=True)

    # --- between scrapes ---------------------------------------------------------------

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.tick)
            try:
                await self.step()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - the watch never dies of one bad round
                if repr(e) != self._failed_tick:
                    self._failed_tick = repr(e)
                    log.warning("stacks: a round of readings failed", exc_info=True)

    async def step(self) -> None:
        """One round: read the followed workers, note the dead, start the due captures."""
        loop = asyncio.get_running_loop()
        targets = [(key, w.pid, w.beat_path, w.beat_id, w.monotonic)
                   for key, w in self.schedule.workers.items()]
        readings = await loop.run_in_executor(self._reads, read, targets, self.proc) \
            if targets else {}
        now = time.monotonic()
        for death in self.schedule.observe(readings, now):
            self._postmortem(death, now)
        self._start_due()

    def _start_due(self) -> None:
        """Start the captures that are due (after a round, and as each capture ends:
        when many workers get stuck at once, they are captured back to back while the
        CPU budget lasts, not max-concurrent per round)."""
        loop = asyncio.get_running_loop()
        for w in self.schedule.due(time.monotonic()):
            task = loop.create_task(self._capture(w))
            self._captures.add(task)
            task.add_done_callback(self._captures.discard)

    async def _capture(self, w: Worker) -> Capture:
        at, mono = time.time(), time.monotonic()
        if self.binary is None:
            result = reader.Result("no_reader", error="py-spy not found")
        else:
            try:
                result = await asyncio.get_running_loop().run_in_executor(
                    self._pool, reader.capture, self.binary, w.pid, w.start,
                    self.options.capture_timeout, self.proc)
            except Exception as e:  # noqa: BLE001 - costs this capture only
                result = reader.Result("failed", error=f"{type(e).__name__}: {str(e)[:120]}")
        frame = pyspy.innermost(result.threads)
        c = Capture(at, mono, w.app, w.slot, w.pid, w.age, w.timeout, w.trigger, w.dependency,
                    result.outcome, frame.label if frame else None, result.threads,
                    result.error, result.seconds, result.cpu_seconds)
        self.schedule.finished(w, c)
        self.cpu_seconds += c.cpu_seconds
        key = (c.app, c.outcome)
        if key in self.counts or len(self.counts) < MAX_COUNTED_APPS:
            self.counts[key] = self.counts.get(key, 0) + 1
        if c.outcome != "no_reader":
            rec = store.record(c)
            self.store.add(rec)
            log.info("%s", store.line(rec))
        if self._task is not None and not self._task.done():
            self._start_due()
        return c

    def _postmortem(self, death: Death, now: float) -> None:
        w = death.worker
        if not death.at_timeout:
            return
        if not w.captured_in_episode:
            log.info("stack_postmortem app=%s worker=%d pid=%d: killed at its timeout "
                     "(heartbeat age about %.1fs); no stack was captured while it was stuck",
                     w.app, w.slot, w.pid, death.age)
            return
        rec = store.record(w.last, "postmortem", killed_after_seconds=round(death.age, 1),
                           captured_seconds_before_death=round(max(0.0, now - w.last.mono), 1))
        self.store.add(rec)
        log.warning("%s", store.line(rec))

    # --- what /debug/stacks shows ---------------------------------------------------------

    def debug_stacks(self, fmt: str) -> bytes:
        return self.store.text() if fmt == "text" else self.store.json()


def workers_of(g: GunicornSnapshot, proc: str = "/proc") -> list[tuple[tuple[int, float], Worker]]:
    """The workers of a collection as the schedule follows them."""
    out = []
    for a in g.apps:
        if not a.up:
            continue
        for ws in a.workers:
            bf = ws.heartbeat_file
            out.append(((ws.pid, ws.start_time), Worker(
                app=a.app, slot=ws.slot, pid=ws.pid, timeout=a.timeout,
                worker_class=a.worker_class, owner=a.uid,
                beat_path=f"{proc}/{ws.pid}/fd/{bf.fd}" if bf is not None else None,
                beat_id=(bf.dev, bf.ino) if bf is not None else None,
                monotonic=bf.monotonic if bf is not None else True,
                age=ws.heartbeat_age,
                dependency=dependency_wait(getattr(ws, "dependency_wait", None)))))
    return out


def dependency_wait(value) -> tuple[str, float] | None:
    """(peer, seconds) of a WorkerSnapshot's dependency_wait, or None when it is absent
    or not that."""
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        return None
    peer, seconds = value
    if not isinstance(peer, str) or isinstance(seconds, bool) \
            or not isinstance(seconds, (int, float)) or not math.isfinite(seconds) or seconds < 0:
        return None
    return bounded(peer), float(seconds)


def read(targets, proc: str = "/proc") -> dict:
    """Each worker's liveness, start time and heartbeat age (a thread of the collector's:
    one /proc/PID/stat read and one stat() of the heartbeat file, on a file system the
    kernel answers itself, each)."""
    out = {}
    mono, wall = time.monotonic(), time.time()
    for key, pid, path, ident, monotonic in targets:
        start = reader.start_ticks(pid, proc)
        if start is None:
            out[key] = Reading(False)
            continue
        age = None
        if path is not None:
            try:
                st = os.stat(path)
            except OSError:
                st = None
            if st is not None and (st.st_dev, st.st_ino) == ident:
                age = heartbeat.age(heartbeat.last_beat(st.st_mtime, st.st_ctime, monotonic),
                                    monotonic, mono, wall)
        out[key] = Reading(True, start, age)
    return out
