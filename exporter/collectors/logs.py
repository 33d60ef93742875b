"""The logs collector: error signatures counted from tailed log files (C4, C7, W4, W5, W8...).

Each file the user names (`--logs.file [APP=]PATH`) is followed from its end by a
`FileTailer`; every line is matched against the signatures (built-in and
`--logs.signature NAME=REGEX`). A match is counted against an app:

1. the app the line itself names: an nginx `upstream: "..."` address that is (or was)
   a gunicorn listener, the master pid of gunicorn's log format (`[..] [PID] [LEVEL]`),
   or a worker pid in the message — all looked up in what the gunicorn collector saw;
2. else the app configured for the file (`APP=PATH`);
3. else `unknown`.

Label values are bounded: apps come from the configuration and the gunicorn
collector's (bounded) set, signatures from the configured table.

Access log lines are also counted as requests by status and duration
(exporter/logs/access.py, `--logs.access-format`), for the file's app (`APP=PATH`, else
the app its gunicorn error log lines proved, else `unknown`): docs/requests.md.

Caddy's JSON lines (exporter/logs/caddy.py) are decoded instead: access entries are
requests of the app whose listener their `upstream` field names, else of the file's app;
reverse_proxy errors count their signature against the app whose listener they dialled,
else the file's app. The built-in text signatures are not tried on them (a client's URI
is text inside them); user signatures are.
"""

from __future__ import annotations

import logging

from exporter.collectors.base import Collector
from exporter.collectors.attribution import AppIndex
from exporter.logs import caddy
from exporter.logs.access import DEFAULT_COMPILED, AccessLog
from exporter.logs.files import LogFile
from exporter.logs.signatures import Matcher, Signature, merge
from exporter.logs.tail import FileTailer
from exporter.snapshot import GunicornSnapshot, LogFileStats, LogsSnapshot

log = logging.getLogger(__name__)

UNKNOWN_APP = "unknown"
MAX_SERIES = 20000


class LogsCollector(Collector):
    name = "logs"

    def __init__(self, files: tuple[LogFile, ...] | list[LogFile] = (),
                 signatures: tuple[Signature, ...] = (), *, interval: float = 1.0,
                 max_line: int = 64 * 1024, index: AppIndex | None = None,
                 access_formats=None):
        self.files = tuple(files)
        # access log lines -> requests by status and duration (exporter/logs/access.py)
        self.access = AccessLog(tuple(access_formats) if access_formats is not None else
                                DEFAULT_COMPILED)
        self.matcher = Matcher(merge(signatures))
        self.signatures = self.matcher.signatures + caddy.SIGNATURES
        self.caddy = caddy.CaddyLog(self.access)
        self.user_matcher = Matcher(tuple(s for s in self.signatures if not s.builtin))
        self.interval = interval
        self.max_line = max_line
        self.index = index or AppIndex()
        self.tailers: list[FileTailer] = []
        self._events: dict[tuple[str, str], int] = {}
        self._dropped = 0
        self._started = False
        self._learned: dict[str, str] = {}   # file path -> app its gunicorn lines belong to
        for f in self.files:
            self._zero(f.app or UNKNOWN_APP)

    async def start(self) -> None:
        self._started = True
        for f in self.files:
            t = FileTailer(f.path, self._handler(f), interval=self.interval,
                           max_line=self.max_line)
            await t.start()
            self.tailers.append(t)

    async def stop(self) -> None:
        for t in reversed(self.tailers):
            await t.stop()
        self.tailers.clear()

    def _handler(self, f: LogFile):
        def on_line(line: str) -> None:
            self.handle_line(line, f.app, f.path)
        return on_line

    def handle_line(self, line: str, file_app: str | None = None, path: str | None = None) -> list[str]:
        if line[:1] == "{":
            names = self._caddy(line, file_app, path)
            if names is not None:
                return names
        # an access log line counts for its file's app: a client writes part of the line
        # (the URL), so the pid and upstream hints in it are not trusted for requests
        self.access.feed(line, lambda: file_app or self._learned.get(path or "") or UNKNOWN_APP,
                         path)
        names = self.matcher.match(line)
        if not names:
            return names
        app = self.app_of(line, file_app, path)
        for name in names:
            self._count(app, name)
        return names

    def _caddy(self, line: str, file_app: str | None, path: str | None) -> list[str] | None:
        """A Caddy JSON line's signatures (None: not one): the app of the listener the
        entry names (exporter/logs/caddy.py), else the file's."""
        fallback = file_app or self._learned.get(path or "") or UNKNOWN_APP
        events = self.caddy.feed(line, lambda a: self.index.listener(a) or fallback, path)
        if events is None:
            return None
        events += [(fallback, n) for n in self.user_matcher.match(line)]
        for app, name in events:
            self._count(app, name)
        return [name for _app, name in events]

    def _count(self, app: str, name: str) -> None:
        key = (app, name)
        if key in self._events:
            self._events[key] += 1
        elif len(self._events) < MAX_SERIES:
            self._zero(app)
            self._events[key] = self._events.get(key, 0) + 1
        else:
            self._dropped += 1

    def app_of(self, line: str, file_app: str | None, path: str | None = None) -> str:
        h = self.matcher.hints(line)
        app = self.index.listener(h.upstream)
        if app is None:
            hit = self.index.pid(h.master_pid) or self.index.pid(h.worker_pid)
            app = hit[0] if hit else None
        if path is not None and file_app is None and h.master_pid is not None:
            # A gunicorn log without a configured app: a line logged by a worker the
            # gunicorn collector has not seen yet (`Booting worker`) belongs to the app
            # whose master wrote the file's last attributed line.
            if app is not None:
                self._learned[path] = app
            else:
                app = self._learned.get(path)
        return app or file_app or UNKNOWN_APP

    def _zero(self, app: str) -> None:
        """Every signature of an app exists from 0, so that rate() sees the first match."""
        if len(self._events) + len(self.signatures) > MAX_SERIES:
            return
        for s in self.signatures:
            self._events.setdefault((app, s.name), 0)

    async def collect(self) -> LogsSnapshot:
        if not self._started:
            await self.start()
        snap = LogsSnapshot(events=dict(self._events), dropped=self._dropped,
                            signatures=tuple(s.name for s in self.signatures),
                            requests=self.access.table.snapshot() if self.files else None)
        tailers = {t.path: t for t in self.tailers}
        for f in self.files:
            t = tailers.get(f.path)
            if t is None:
                snap.files.append(LogFileStats(f.path, f.app, False, 0, 0, 0, 0))
            else:
                access = self.access.files.get(f.path, (0, 0))
                snap.files.append(LogFileStats(f.path, f.app, t.open_now, t.lines,
                                               t.truncated_lines, t.rotations, t.errors,
                                               access[0], access[1]))
        return snap

    def learn(self, snapshot) -> None:
        """Every app the gunicorn collector has seen gets its signature counters (at 0
        until a line comes), so that increase() sees the first one."""
        if snapshot.data("gunicorn", GunicornSnapshot) is None:
            return
        if self.files:
            for app in list(self.index.apps):
                if (app, self.signatures[0].name) not in self._events:
                    self._zero(app)
