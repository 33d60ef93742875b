"""Access log lines as requests: status, duration, the time each request waited before
gunicorn started it, and its route, per app, from the files the logs collector follows
(`--logs.file`), in the formats of `--logs.access-format` (exporter/logs/formats.py).

Used fields: the status (`%(s)s`, `$status`) and one duration, the most precise the
format has: gunicorn `%(D)s` (microseconds), `%(L)s` (seconds, decimal), `%(M)s`
(milliseconds), `%(T)s` (whole seconds); nginx `$request_time`, else
`$upstream_response_time` (the sum of its list). A `-` duration counts the request
without one. A duration above the app's limit (`limits`: its timeout plus a margin for a
sync app, else MAX_DURATION) is counted as malformed and not observed.

* `$upstream_addr` (nginx) names the app: the gunicorn listener the kernel showed at that
  address (exporter/collectors/attribution.py); else the file's app.
* `%({x-request-start}i)s` (gunicorn): the proxy's arrival time (New Relic's `t=<sec>`,
  `t=<msec>`, `t=<usec>`); queue = (end - duration) - arrival, where the end is when the
  exporter read the line (`read_at`, from inotify: docs/requests.md states the bound).
  Negative or over MAX_QUEUE: counted as clock skew, not observed.
* routes (exporter/logs/routes.py): the request's path, cut to routes.MAX_PATH, names a
  route; the request then counts under (app, route).
"""

from __future__ import annotations

from typing import Callable

from exporter.logs.formats import (DEFAULT_FORMATS, MAX_FORMATS, MAX_LINE, AccessFormat,
                                   compile_format)
from exporter.logs.signatures import error_line
from exporter.statsd.parse import status_label
from exporter.statsd.stats import BOUNDS, RequestTable, Stats
from exporter.snapshot import QueueSnapshot

MAX_DURATION = 3600.0        # seconds: longer is malformed whatever the app
TIMEOUT_MARGIN = 30.0        # a sync worker's request ends by its timeout (plus this)
MAX_QUEUE = 3600.0           # seconds: a longer wait is a clock, not a queue
_JAN_2000 = 946684800.0

# the formats used when --logs.access-format is not given, compiled once
DEFAULT_COMPILED = tuple(compile_format(f) for f in DEFAULT_FORMATS)


def parse_access_formats(values) -> tuple[AccessFormat, ...]:
    values = list(values or ())
    if len(values) > MAX_FORMATS:
        raise ValueError(f"at most {MAX_FORMATS} access log formats")
    return tuple(compile_format(str(v)) for v in values)


def looks_like_access(line: str) -> bool:
    """A line that holds an HTTP request line in quotes (`"GET / HTTP/1.1"`) and is not a
    gunicorn or nginx error log line (nginx's name the request too)."""
    return '"' in line and " HTTP/" in line and not error_line(line)


def request_start(raw: str, now: float) -> float | None:
    """The proxy's arrival time in seconds since the epoch from an X-Request-Start value:
    `t=<seconds with a fraction>`, `t=<milliseconds>`, `t=<microseconds>` or the number
    alone (New Relic's agents: the largest unit that gives a time after 2000)."""
    raw = raw.strip()
    if raw.startswith("t="):
        raw = raw[2:]
    if not raw or len(raw) > 24 or not raw.replace(".", "", 1).isdigit():
        return None
    value = float(raw)
    for divisor in (1e6, 1e3, 1.0):
        t = value / divisor
        if t > _JAN_2000:
            return t if t < now + 10 * 365 * 86400 else None
    return None


def upstream_address(raw: str) -> str:
    """The upstream that answered: the last of nginx's `a, b : c` list."""
    for sep in (" : ", ", "):
        raw = raw.rpartition(sep)[2]
    return raw.strip()


class Queue:
    """Queue time per app: a histogram, and the lines whose arrival time made no sense
    (skew) or whose end time was not seen promptly (unmeasured)."""

    def __init__(self, max_apps: int = 256):
        self.max_apps = max_apps
        self.apps: dict[str, Stats] = {}
        self.skew: dict[str, int] = {}
        self.unmeasured: dict[str, int] = {}

    def add(self, app: str, raw: str, seconds: float | None, read_at: float | None) -> None:
        if app not in self.apps and len(self.apps) >= self.max_apps:
            return
        st = self.apps.setdefault(app, Stats())
        if seconds is None or read_at is None:
            self.unmeasured[app] = self.unmeasured.get(app, 0) + 1
            return
        arrival = request_start(raw, read_at)
        queue = -1.0 if arrival is None else read_at - seconds - arrival
        if queue < 0 or queue > MAX_QUEUE:
            self.skew[app] = self.skew.get(app, 0) + 1
        else:
            st.observe(queue)

    def snapshot(self) -> QueueSnapshot:
        return QueueSnapshot(bounds=BOUNDS,
                             apps={a: s.snapshot() for a, s in sorted(self.apps.items())},
                             skew=dict(self.skew), unmeasured=dict(self.unmeasured))


class AccessLog:
    """Requests counted from access log lines, per app (source `access_log`)."""

    def __init__(self, formats: tuple[AccessFormat, ...], routes=None,
                 upstream_app: Callable[[str], str | None] | None = None):
        self.formats = formats
        self.routes = routes                      # exporter/logs/routes.Routes or None
        self.upstream_app = upstream_app or (lambda address: None)
        # the app's own log (gunicorn, uvicorn) and a proxy's (nginx, which also holds the
        # answers it made itself and the time in the queue): two sources, never summed
        self.table = RequestTable("access_log", routed=routes is not None)
        self.proxy = RequestTable("proxy_log", routed=routes is not None)
        self.queue = Queue()
        self.limits: dict[str, float] = {}        # app -> longest plausible duration
        self.files: dict[str, list[int]] = {}     # path -> [parsed, unparsed, malformed]
        self._last: dict[str, AccessFormat] = {}  # path -> the format of its last line

    def parse(self, line: str, path: str = ""):
        """(format, match) | None (not an access log line) | False (looks like one, no
        format fits). The format that fit the file's last line is tried first: a file
        holds one format, and a line that fails a format costs a scan."""
        if len(line) <= MAX_LINE:
            last = self._last.get(path)
            if last is not None:
                m = last.regex.match(line)
                if m is not None:
                    return last, m
            for f in self.formats:
                if f is not last:
                    m = f.regex.match(line)
                    if m is not None:
                        if len(self._last) < 4096 or path in self._last:
                            self._last[path] = f
                        return f, m
        return False if looks_like_access(line) else None

    def feed(self, line: str, app_of, path: str | None = None,
             read_at: float | None = None) -> str | None:
        """Count one line; `app_of()` names its app (called only for a request not named
        by its upstream). Returns (app, status) for a request, False for a line that
        looks like one but fits no format, None for a line that is not one."""
        hit = self.parse(line, path or "")
        if hit is None:
            return None
        counts = self.counts(path)
        if hit is False:
            counts[1] += 1
            return False
        counts[0] += 1
        f, m = hit
        app = None
        if f.has_upstream:
            up = m.group("upstream")
            if up and up != "-":
                app = self.upstream_app(upstream_address(up))
        if app is None:
            app = app_of()
        status = m.group("status")
        seconds = None
        if f.scale is not None:
            raw = m.group("dur")
            if raw != "-":
                seconds = (float(raw) if f.dialect != "nginx" else
                           sum(map(float, raw.replace(" : ", ", ").split(", ")))) * f.scale
        seconds = self.record(self.proxy if f.dialect == "nginx" else self.table, app,
                              status, seconds, m.group("request"), counts)
        if seconds is not False and f.has_start:
            raw = m.group("start")
            if raw and raw != "-":
                self.queue.add(app, raw, seconds, read_at)
        return app, status

    def counts(self, path: str | None) -> list[int]:
        """The file's [parsed, unparsed, malformed] line counts (at most 4096 files)."""
        counts = self.files.get(path or "")
        if counts is None:
            counts = [0, 0, 0]
            if len(self.files) < 4096:
                self.files[path or ""] = counts
        return counts

    def record(self, table: RequestTable, app: str, status, seconds: float | None,
               request: str | None, counts: list[int]) -> float | None | bool:
        """One request of `app` into `table` (an access log's or a proxy's): its status,
        its route when routes are set, and its duration unless longer than the app's
        longest plausible one (then the line counts as malformed and no duration is
        observed). Returns the duration observed, False when the table is full."""
        if seconds is not None and seconds > self.limits.get(app, MAX_DURATION):
            counts[2] += 1
            seconds = None
        key = app if self.routes is None else (app, self.routes.route(request))
        st = table.get(key)
        if st is None:
            table.dropped += 1
            return False
        st.status(status_label(status))
        if seconds is not None:
            st.observe(seconds)
        st.lines += 1
        return seconds
