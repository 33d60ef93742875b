"""What is kept per app from gunicorn's statsd stream or an access log: requests by
status, a histogram of request durations, log messages by level. Shared by the statsd
collector and the logs collector (exporter/logs/access.py); rendered by exporter/metrics/
from `RequestsSnapshot`.

Everything is bounded: status labels (exporter/statsd/parse.status_label), levels (a
fixed set), buckets (BOUNDS), and apps per table (`max_apps`; past it, data is counted in
`dropped`).
"""

from __future__ import annotations

from bisect import bisect_left

from exporter.snapshot import AppRequests, RequestsSnapshot

# Upper bounds of the duration histogram, in seconds (+Inf is implied): from a fast cached
# answer to gunicorn's default --timeout (30 s) and the 60 s of nginx's proxy_read_timeout.
BOUNDS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                             30.0, 60.0)
MAX_APPS = 256


class Stats:
    """One app's (or one not yet attributed sender's) data; counts are floats because a
    statsd sample rate of 0.1 makes one line count 10."""

    __slots__ = ("statuses", "buckets", "sum", "count", "levels", "lines")

    def __init__(self) -> None:
        self.statuses: dict[str, float] = {}
        self.buckets = [0.0] * (len(BOUNDS) + 1)   # per bucket, not cumulative; last: +Inf
        self.sum = 0.0                               # seconds
        self.count = 0.0
        self.levels: dict[str, float] = {}
        self.lines = 0                               # lines that carried this data

    def observe(self, seconds: float, weight: float = 1.0) -> None:
        self.buckets[bisect_left(BOUNDS, seconds)] += weight   # `le` is inclusive
        self.sum += seconds * weight
        self.count += weight

    def status(self, label: str, n: float = 1.0) -> None:
        self.statuses[label] = self.statuses.get(label, 0.0) + n

    def merge(self, other: "Stats") -> None:
        for k, v in other.statuses.items():
            self.statuses[k] = self.statuses.get(k, 0.0) + v
        for k, v in other.levels.items():
            self.levels[k] = self.levels.get(k, 0.0) + v
        if other.count:
            b = self.buckets
            for i, v in enumerate(other.buckets):
                b[i] += v
            self.sum += other.sum
            self.count += other.count
        self.lines += other.lines

    def snapshot(self) -> AppRequests:
        return AppRequests(statuses=dict(self.statuses), buckets=list(self.buckets),
                           duration_sum=self.sum, duration_count=self.count,
                           log_levels=dict(self.levels))


class RequestTable:
    """app -> Stats, at most `max_apps` apps; what does not fit is counted in `dropped`
    (lines)."""

    def __init__(self, source: str, max_apps: int = MAX_APPS, routed: bool = False):
        self.source = source
        self.max_apps = max_apps
        self.routed = routed            # keys are (app, route) (exporter/logs/routes.py)
        self.apps: dict[str, Stats] = {}
        self.dropped = 0

    def get(self, app) -> Stats | None:
        st = self.apps.get(app)
        if st is None and len(self.apps) < self.max_apps:
            st = self.apps[app] = Stats()
        return st

    def add(self, app: str, data: Stats) -> bool:
        """Fold `data` into `app`; False (and counted in `dropped`) when the table is full."""
        st = self.get(app)
        if st is None:
            self.dropped += data.lines
            return False
        st.merge(data)
        return True

    def keep_only(self, apps) -> None:
        for name in [n for n in self.apps if n not in apps]:
            del self.apps[name]

    def snapshot(self) -> RequestsSnapshot:
        items = {a: s.snapshot() for a, s in sorted(self.apps.items())}
        if self.routed:
            return RequestsSnapshot(source=self.source, bounds=BOUNDS, routes=items)
        return RequestsSnapshot(source=self.source, bounds=BOUNDS, apps=items)
