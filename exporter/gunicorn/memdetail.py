"""What a worker really costs in memory: its unique set size (USS: pages no other process
maps, what stopping it would give back) and proportional set size (PSS: its pages, each
shared one divided by the processes sharing it). RSS counts every copy-on-write page a
worker still shares with its master after `--preload`, so RSS x workers overstates an
app's memory, often many times over.

Both come from psutil (`Process.memory_full_info()`, which reads /proc/PID/smaps_rollup),
the ecosystem's reader for them. The kernel walks the process's page tables for that
file, a cost that grows with its memory, so it is read off the scrape's path: every
`--gunicorn.memory-detail-interval` (60 s) in a thread of its own, for the workers of the
last collection; scrapes use the last values of workers that are still the same process
(pid and start time). A pass stops after `PASS_BUDGET` seconds and goes on from there
the next time, so one process whose reads are slow delays only the rest of that pass.
"""

from __future__ import annotations

import asyncio
import logging
import time

log = logging.getLogger(__name__)

PASS_BUDGET = 2.0           # seconds of reading per pass
MAX_BYTES = 1 << 50         # a value above this (1 PiB) is not believed


def read_memory(pid: int, start_time: float) -> tuple[int, int] | None:
    """(USS, PSS) in bytes of process `pid` if it is still the one that started at
    `start_time` (seconds since the epoch); None if it is gone, another one, or unreadable.
    psutil reads psutil.PROCFS_PATH, which the command line sets from --path.procfs."""
    import psutil
    try:
        p = psutil.Process(pid)
        if abs(p.create_time() - start_time) > 1.0:
            return None
        info = p.memory_full_info()
    except (psutil.Error, OSError, ValueError):
        return None
    uss, pss = getattr(info, "uss", None), getattr(info, "pss", None)
    if not isinstance(uss, int) or not isinstance(pss, int) or \
            not 0 <= uss <= MAX_BYTES or not 0 <= pss <= MAX_BYTES:
        return None
    return uss, pss


class MemoryDetail:
    """The last USS and PSS of each worker, keyed by (pid, start time)."""

    def __init__(self, interval: float):
        self.interval = interval            # 0: never read
        self.values: dict[tuple[int, float], tuple[int, int]] = {}
        self._queue: list[tuple[int, float]] = []
        self._next = 0.0
        self._task: asyncio.Task | None = None

    def get(self, pid: int, start_time: float) -> tuple[int, int] | None:
        return self.values.get((pid, start_time))

    def update(self, workers: list[tuple[int, float]]) -> None:
        """Called on the loop with every collection's workers: forget the gone ones, and
        start a pass in a thread when one is due and none is running."""
        live = set(workers)
        for key in [k for k in self.values if k not in live]:
            del self.values[key]
        if self.interval <= 0 or (self._task is not None and not self._task.done()):
            return
        now = time.monotonic()
        if not self._queue:
            if now < self._next:
                return
            self._queue = list(workers)
            self._next = now + self.interval
        if self._queue:
            self._task = asyncio.get_running_loop().create_task(
                asyncio.to_thread(self._pass, list(self._queue)))
            self._task.add_done_callback(self._merge)

    def _pass(self, queue: list[tuple[int, float]]):
        """In the thread: (values read, how many of the queue were tried)."""
        deadline = time.monotonic() + PASS_BUDGET
        got: dict[tuple[int, float], tuple[int, int] | None] = {}
        for key in queue:
            if time.monotonic() >= deadline:
                break
            try:
                got[key] = read_memory(key[0], key[1])
            except Exception as e:  # noqa: BLE001 - one process costs itself only
                log.debug("memory of %d: %r", key[0], e)
                got[key] = None
        return got

    def _merge(self, task: asyncio.Task) -> None:
        """On the loop: keep what the pass read; the rest of the queue waits for the next."""
        if task.cancelled() or task.exception() is not None:
            self._queue = []
            return
        got = task.result()
        for key, v in got.items():
            if v is None:
                self.values.pop(key, None)
            else:
                self.values[key] = v
        self._queue = [k for k in self._queue if k not in got]
