"""The logs collector: error signatures counted from tailed log files (C4, C7, W4, W5, W8...).

Each file the user names (`--logs.file [APP=]PATH`) is followed from its end by a
`FileTailer` (inotify: a line is read as soon as it is written). Access log lines are
counted as requests (exporter/logs/access.py) and their status as the `access`
signatures; every other line is matched against the signatures (built-in and
`--logs.signature NAME=REGEX`, exporter/logs/signatures.py). A match is counted against
an app:

1. gunicorn's own lines: the pid in gunicorn's prefix `[..] [PID] [LEVEL]`, the process
   that wrote the line, looked up in what the gunicorn collector saw (a worker it has
   not seen yet, booting: its parent master, from /proc/PID/stat). Never a pid in the
   message: a message that is about a worker of another app than its writer's, or a
   writer of another app than the file's configured one, is not counted
   (`gunicorn_log_malformed_lines_total{reason="pid"}`);
2. nginx error lines naming exactly one `upstream: "..."` that is (or was) a gunicorn
   listener: that app;
3. else the app configured for the file (`APP=PATH`), else the app of the file's last
   attributed gunicorn line, else `unknown`.

Label values are bounded: apps come from the configuration and the gunicorn
collector's (bounded) set, signatures from the configured table.

Caddy's JSON lines (exporter/logs/caddy.py) are decoded instead: access entries are a
proxy's requests (as nginx's) of the app whose listener their `upstream` field names,
else of the file's app; reverse_proxy errors count their signature against the app whose
listener they dialled, else the file's app. The built-in text signatures are not tried
on them (a client's URI is text inside them); user signatures are.
"""

from __future__ import annotations

import logging
import os

from exporter.collectors.base import Collector
from exporter.collectors.attribution import AppIndex
from exporter.logs import caddy
from exporter.logs.access import DEFAULT_COMPILED, TIMEOUT_MARGIN, AccessLog
from exporter.logs.files import LogFile
from exporter.logs.signatures import ACCESS_STATUS, Matcher, Signature, merge
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
                 access_formats=None, routes=None, procfs: str = "/proc"):
        self.files = tuple(files)
        self.index = index or AppIndex()
        # access log lines -> requests by status and duration (exporter/logs/access.py)
        self.access = AccessLog(tuple(access_formats) if access_formats is not None else
                                DEFAULT_COMPILED, routes=routes,
                                upstream_app=self.index.listener)
        self.matcher = Matcher(merge(signatures))
        self.signatures = self.matcher.signatures + caddy.SIGNATURES
        self.caddy = caddy.CaddyLog(self.access)
        self.user_matcher = Matcher(tuple(s for s in self.signatures if not s.builtin))
        self.interval = interval
        self.max_line = max_line
        self.procfs = procfs
        self.tailers: list[FileTailer] = []
        self._events: dict[tuple[str, str], int] = {}
        self._dropped = 0
        self._started = False
        self._learned: dict[str, str] = {}   # file path -> app its gunicorn lines belong to
        self._rejected: dict[str, int] = {}  # file path -> lines whose pid was not believed
        self._parents: dict[int, str | None] = {}   # pid -> app of its parent, this collection
        for f in self.files:
            self._zero(f.app or UNKNOWN_APP)

    async def start(self) -> None:
        self._started = True
        for f in self.files:
            t = FileTailer(f.path, self._handler(f), interval=self.interval,
                           max_line=self.max_line, timed=True)
            await t.start()
            self.tailers.append(t)

    async def stop(self) -> None:
        for t in reversed(self.tailers):
            await t.stop()
        self.tailers.clear()

    def _handler(self, f: LogFile):
        def on_line(line: str, read_at: float | None = None) -> None:
            self.handle_line(line, f.app, f.path, read_at)
        return on_line

    def handle_line(self, line: str, file_app: str | None = None, path: str | None = None,
                    read_at: float | None = None) -> list[str]:
        """Count one line; returns the signatures it counted."""
        if line[:1] == "{":
            names = self._caddy(line, file_app, path)
            if names is not None:
                return names
        hit = self.access.feed(line, lambda: file_app or self._learned.get(path or "")
                               or UNKNOWN_APP, path, read_at)
        if hit is not None:
            # an access log line: its text is partly the client's, only its parsed
            # status counts (http_response, http_502, http_504)
            if not hit:
                return []
            app, status = hit
            names = ["http_response"]
            if status in ACCESS_STATUS:
                names.append(ACCESS_STATUS[status])
            self._count(app, names)
            return names
        m = self.matcher.match(line)
        if not m.names:
            return []
        app = self.app_of(m, file_app, path)
        if app is None:
            if len(self._rejected) < 4096 or path in self._rejected:
                self._rejected[path or ""] = self._rejected.get(path or "", 0) + 1
            return []
        self._count(app, m.names)
        return m.names

    def _count(self, app: str, names: list[str]) -> None:
        for name in names:
            key = (app, name)
            if key in self._events:
                self._events[key] += 1
            elif len(self._events) < MAX_SERIES:
                self._zero(app)
                self._events[key] = self._events.get(key, 0) + 1
            else:
                self._dropped += 1

    def _caddy(self, line: str, file_app: str | None, path: str | None) -> list[str] | None:
        """A Caddy JSON line's signatures (None: not one): the app of the listener the
        entry names (exporter/logs/caddy.py), else the file's."""
        fallback = file_app or self._learned.get(path or "") or UNKNOWN_APP
        events = self.caddy.feed(line, lambda a: self.index.listener(a) or fallback, path)
        if events is None:
            return None
        events += [(fallback, n) for n in self.user_matcher.match(line).names]
        for app, name in events:
            self._count(app, [name])
        return [name for _app, name in events]

    def app_of(self, m, file_app: str | None, path: str | None = None) -> str | None:
        """The app a matched line counts for; None: not believed (a gunicorn line whose
        writer belongs to another app than the file's, or whose message is about a
        worker of another app than its writer's)."""
        if m.pid is not None:
            hit = self.index.pid(m.pid)
            app = hit[0] if hit else self._parent_app(m.pid)
            if m.about is not None and m.about != m.pid:
                about = self.index.pid(m.about)
                if about is not None and about[0] != app:
                    return None
            if app is not None:
                if file_app is not None and app != file_app:
                    return None
                if path is not None and file_app is None:
                    self._learned[path] = app
                return app
            # a writer the gunicorn collector never saw: the file's app
            return file_app or self._learned.get(path or "") or UNKNOWN_APP
        if m.upstream is not None:
            app = self.index.listener(m.upstream)
            if app is not None:
                return app
        return file_app or UNKNOWN_APP

    def _parent_app(self, pid: int) -> str | None:
        """The app of a process the gunicorn collector has not seen yet (a worker that is
        booting): its parent's, if that is a known master (/proc/PID/stat, read once per
        pid and collection: a flood of forged pids costs one small read each, bounded)."""
        if pid in self._parents:
            return self._parents[pid]
        if len(self._parents) >= 4096:
            return None
        self._parents[pid] = None
        try:
            with open(os.path.join(self.procfs, str(pid), "stat"), "rb") as f:
                data = f.read(4096)
            ppid = int(data[data.rindex(b")") + 2:].split()[1])
        except (OSError, ValueError, IndexError):
            return None
        hit = self.index.pid(ppid)
        app = self._parents[pid] = hit[0] if hit and hit[1] == "master" else None
        return app

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
                            requests=self.access.table.snapshot() if self.files else None,
                            proxy_requests=self.access.proxy.snapshot() if self.files else None,
                            queue=self.access.queue.snapshot() if self.files else None)
        tailers = {t.path: t for t in self.tailers}
        for f in self.files:
            t = tailers.get(f.path)
            if t is None:
                snap.files.append(LogFileStats(f.path, f.app, False, 0, 0, 0, 0))
            else:
                access = self.access.files.get(f.path, (0, 0, 0))
                snap.files.append(LogFileStats(
                    f.path, f.app, t.open_now, t.lines, t.truncated_lines, t.rotations,
                    t.errors, access[0], access[1],
                    malformed={"duration": access[2], "pid": self._rejected.get(f.path, 0)},
                    lines_lost=t.lines_lost, lines_recovered=t.lines_recovered))
        return snap

    def learn(self, snapshot) -> None:
        """Every app the gunicorn collector has seen gets its signature counters (at 0
        until a line comes), so that increase() sees the first one."""
        gun = snapshot.data("gunicorn", GunicornSnapshot)
        self._parents.clear()
        if gun is None:
            return
        # a sync worker's request ends by its timeout: a longer duration is malformed
        for a in gun.apps:
            if a.up and a.worker_class == "sync" and a.timeout:
                self.access.limits[a.app] = a.timeout + TIMEOUT_MARGIN
        if self.files:
            for app in list(self.index.apps):
                if (app, self.signatures[0].name) not in self._events:
                    self._zero(app)
