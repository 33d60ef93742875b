"""What the gunicorn collector remembers from one scrape to the next, all of it bounded.

* `Slots`: the stable `worker` label of each app's workers (lowest free slot number,
  reused when a worker is recycled, so `--max-requests` churn does not grow series).
* `KnownApps`: apps that ran for a while, so that an app whose master is gone reads
  `gunicorn_up 0` instead of vanishing. An app is remembered once it is *established*:
  seen at a scrape with at least one worker and one listening socket, its master
  (kernel start time) running for `--gunicorn.remember-after` (1 minute) or longer.
  A fake master (no workers, no listener), `gunicorn --check-config`, a master whose
  worker fails to boot (gunicorn halts within seconds) or a throwaway test run never is.
  Only names of real masters are remembered (not a USR2 master's `NAME.2`, not
  `NAME@listener` while two masters share a name). A stopped app is forgotten
  `--gunicorn.forget-after` (1 hour, the window of the GunicornAppVanished alert) after
  it was last seen running: by then its last `gunicorn_up 1` sample has left that
  alert's window, so forgetting it pages nobody. When the memory is full, the oldest
  entry of the user with the most entries goes, so one user's masters can only push
  out that user's own apps.
* `WorkerMemory`: processes reported as workers, by (pid, start time) -> app, so a
  worker whose master was killed is counted as that app's orphan and never taken for
  a master.
* `CpuTotals`: each app's workers' CPU seconds as a counter that only grows: the CPU a
  worker used since the last scrape is added, so a recycled worker takes nothing away
  (the time a worker used between the last scrape and its exit is not seen).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

log = logging.getLogger(__name__)

MAX_KNOWN_APPS = 256
MAX_REMEMBERED_WORKERS = 65_536


class Slots:
    def __init__(self) -> None:
        self._slots: dict[str, dict[int, int]] = {}

    def assign(self, app: str, workers: list, start_time=lambda w: w.start_time) -> dict[int, int]:
        """Give each worker (objects with .pid) a slot; returns pid -> slot for the app."""
        slots = self._slots.setdefault(app, {})
        pids = {w.pid for w in workers}
        for pid in list(slots):
            if pid not in pids:
                del slots[pid]
        used = set(slots.values())
        free = (i for i in range(len(pids) + len(used) + 1) if i not in used)
        for w in sorted(workers, key=start_time):
            if w.pid not in slots:
                slots[w.pid] = next(free)
        return slots

    def keep_only(self, apps: set[str]) -> None:
        for name in list(self._slots):
            if name not in apps:
                del self._slots[name]


@dataclass
class _Known:
    uid: int
    last_seen: float


class KnownApps:
    def __init__(self, limit: int = MAX_KNOWN_APPS, forget_after: float = 0.0,
                 expected: tuple[str, ...] = ()):
        self.limit = limit
        self.forget_after = forget_after
        self.expected = frozenset(expected)
        self._apps: dict[str, _Known] = {}
        self.evicted = 0            # names dropped because the memory was full (a counter)
        self._warned = False

    def __contains__(self, name: str) -> bool:
        return name in self._apps or name in self.expected

    def __len__(self) -> int:
        return len(self._apps)

    def names(self) -> set[str]:
        return set(self._apps) | self.expected

    def uid(self, name: str) -> int | None:
        """The user whose master was last seen with this name, if remembered."""
        known = self._apps.get(name)
        return known.uid if known is not None else None

    def seen(self, name: str, uid: int, now: float, established: bool = True) -> None:
        """An app running now: a remembered one is seen again; a new one is remembered
        only once `established` (see the module's docstring)."""
        known = self._apps.get(name)
        if known is not None:
            known.last_seen, known.uid = now, uid
            return
        if not established:
            return
        if len(self._apps) >= self.limit:
            self._evict_one()
        self._apps[name] = _Known(uid, now)

    def expire(self, now: float) -> None:
        if self.forget_after > 0:
            for name, known in list(self._apps.items()):
                if now - known.last_seen > self.forget_after:
                    del self._apps[name]

    def _evict_one(self) -> None:
        counts: dict[int, int] = {}
        for known in self._apps.values():
            counts[known.uid] = counts.get(known.uid, 0) + 1
        heaviest = max(counts, key=lambda uid: (counts[uid], -uid))
        victim = min((n for n, k in self._apps.items() if k.uid == heaviest),
                     key=lambda n: self._apps[n].last_seen)
        del self._apps[victim]
        self.evicted += 1
        if not self._warned:
            self._warned = True
            log.warning("more than %d gunicorn apps seen; forgetting the oldest of the user "
                        "with the most (gunicorn_exporter_forgotten_apps_total counts them; "
                        "see --gunicorn.forget-after)", self.limit)


class WorkerMemory:
    def __init__(self, limit: int = MAX_REMEMBERED_WORKERS):
        self.limit = limit
        self._apps: dict[tuple[int, int], str] = {}

    def get(self, key: tuple[int, int]) -> str | None:
        return self._apps.get(key)

    def keys(self) -> set[tuple[int, int]]:
        return set(self._apps)

    def replace(self, workers: dict[tuple[int, int], str]) -> None:
        """This scrape's workers and the orphans still alive (bounded)."""
        if len(workers) > self.limit:
            workers = dict(list(workers.items())[: self.limit])
        self._apps = workers


class CpuTotals:
    """Per app, the CPU seconds its workers used, as a counter (see the docstring)."""

    KEEP = 600.0      # seconds a worker's last reading is kept after it was last seen

    def __init__(self, limit: int = MAX_REMEMBERED_WORKERS):
        self.limit = limit
        self._totals: dict[str, float] = {}
        self._last: dict[tuple[str, int, float], tuple[float, float]] = {}  # -> (cpu, seen)

    def add(self, app: str, workers: list, now: float) -> float:
        """Count what the workers (objects with .pid, .start_time, .cpu_seconds) used
        since they were last seen; the app's total."""
        total = self._totals.get(app, 0.0)
        for w in workers:
            key = (app, w.pid, w.start_time)
            before = self._last.get(key)
            if before is None and len(self._last) >= self.limit:
                continue
            used = w.cpu_seconds - (before[0] if before is not None else 0.0)
            total += max(0.0, used)
            self._last[key] = (max(w.cpu_seconds, before[0] if before else 0.0), now)
        self._totals[app] = total
        return total

    def keep_only(self, apps: set[str], now: float) -> None:
        for name in [n for n in self._totals if n not in apps]:
            del self._totals[name]
        for key in [k for k, (_, seen) in self._last.items()
                    if k[0] not in apps or now - seen > self.KEEP]:
            del self._last[key]
