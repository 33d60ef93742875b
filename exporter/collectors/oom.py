"""The OOM collector: kernel OOM kills, attributed to gunicorn apps (C7).

Sources, best first (`gunicorn_oom_source_info{source}` says which one is in use):

* `kmsg`: /dev/kmsg read as a stream in the background (needs CAP_SYSLOG when
  kernel.dmesg_restrict=1, and the device in a container). Every `Killed process`
  record is attributed to an app: its pid was a worker or master the gunicorn
  collector saw recently, else its memory cgroup (from the `oom-kill:` record) is the
  cgroup of exactly one app's master. Anything else counts as unattributed. Only
  records of facility 0 (the kernel) count: processes may write to /dev/kmsg too.
* `cgroup`: no /dev/kmsg; the kernel's OOM counter of each app's memory cgroup
  (v2 memory.events, v1 memory.oom_control). An increase counts as worker kills of the
  app whose master runs in that cgroup; a cgroup shared by several apps, or the root
  cgroup, cannot be attributed.
* `vmstat`: neither; only the host-wide /proc/vmstat oom_kill counter.

The host-wide counter and the apps' cgroup counters are exported in every mode as the
kernel's own evidence.
"""

from __future__ import annotations

import logging
import time
from collections import deque


from exporter.collectors.base import Collector
from exporter.collectors.attribution import AppIndex
from exporter.linux.cgroup import CgroupFS, MemoryCgroup
from exporter.linux.kmsg import KmsgReader, KmsgRecord, OomKill, OomRecordJoiner
from exporter.snapshot import AppOom, GunicornSnapshot, OomEvent, OomSnapshot

log = logging.getLogger(__name__)

MAX_RECENT_KILLS = 32
# Seconds the counters of an app the gunicorn collector no longer reports outlive its
# last kill (a master OOM-killed before it was remembered: its alert needs the series).
KEEP_KILLED = 3600.0


class OomCollector(Collector):
    name = "oom"

    def __init__(self, kmsg_path: str | None = "/dev/kmsg", procfs: str = "/proc",
                 cgroupfs: CgroupFS | None = None, index: AppIndex | None = None):
        self.kmsg_path = kmsg_path or None
        self.cgroupfs = cgroupfs or CgroupFS(procfs)
        self.index = index or AppIndex()
        self.reader: KmsgReader | None = None
        self._joiner = OomRecordJoiner()
        self._apps: dict[str, AppOom] = {}
        self._unattributed = 0
        self._recent: deque[OomEvent] = deque(maxlen=MAX_RECENT_KILLS)
        self._memcgs: dict[str, tuple[int, MemoryCgroup | None]] = {}  # app -> (master pid, cgroup)
        self._cg_last: dict[str, tuple[str, int]] = {}  # app -> (cgroup path, last counter)
        self._vmstat_ok = True
        self._cgroup_ok = False
        self._started = False

    # --- background reader ---------------------------------------------------

    async def start(self) -> None:
        self._started = True
        if self.kmsg_path is None:
            return
        reader = KmsgReader(self.on_record, self.kmsg_path)
        try:
            await reader.start()
        except OSError as e:
            log.warning("cannot read %s (%s): OOM kills are counted from cgroup counters "
                        "instead (grant CAP_SYSLOG, or mount /dev/kmsg into the container, "
                        "for per-kill attribution)", self.kmsg_path, e.strerror or e)
            return
        self.reader = reader

    async def stop(self) -> None:
        if self.reader is not None:
            await self.reader.stop()
            self.reader = None

    @property
    def source(self) -> str:
        if self.reader is not None and self.reader.fd is not None:
            return "kmsg"
        if self._cgroup_ok:
            return "cgroup"
        return "vmstat" if self._vmstat_ok else "none"

    def on_record(self, rec: KmsgRecord) -> None:
        if rec.facility != 0:  # written by a process, not by the kernel
            return
        kill = self._joiner.feed(rec.message)
        if kill is not None:
            self.count_kill(kill)

    def count_kill(self, kill: OomKill, now: float | None = None) -> OomEvent:
        now = time.time() if now is None else now
        app = role = how = None
        hit = self.index.pid(kill.pid, now)
        if hit is not None:
            (app, role), how = hit, "pid"
        elif kill.task_memcg:
            app = self._app_of_memcg(kill.task_memcg)
            if app is not None:
                role, how = ("master" if self.index.masters.get(app) == kill.pid else "worker"), "cgroup"
        ev = OomEvent(now, kill.pid, kill.name, app, role, kill.kind, kill.task_memcg, how)
        self._recent.append(ev)
        if app is None:
            self._unattributed += 1
            log.info("kernel OOM killer killed pid %d (%s), not a known gunicorn process",
                     kill.pid, kill.name)
        else:
            a = self._app(app)
            if role == "master":
                a.master_kills += 1
            else:
                a.worker_kills += 1
            a.last_kill_time = now
            log.warning("kernel OOM killer killed gunicorn %s pid %d of app %s (%s, cgroup %s)",
                        role, kill.pid, app, kill.kind, kill.task_memcg or "?")
        return ev

    def _app(self, app: str) -> AppOom:
        a = self._apps.get(app)
        if a is None:
            if len(self._apps) >= self.index.max_apps:
                # forget the app that was seen least recently (bounded label set)
                for old in list(self._apps):
                    if old not in self.index.apps:
                        del self._apps[old]
                        break
            a = self._apps[app] = AppOom()
        return a

    def _app_of_memcg(self, path: str) -> str | None:
        if path in ("/", ""):
            return None
        apps = [app for app, (_pid, cg) in self._memcgs.items() if cg is not None and cg.path == path]
        return apps[0] if len(apps) == 1 else None

    # --- scrape ----------------------------------------------------------------

    async def collect(self) -> OomSnapshot:
        if not self._started:  # used without the HTTP app (tests, one-shot): still works
            await self.start()
        cgroups = {app: cg for app, (_pid, cg) in self._memcgs.items() if cg is not None}
        # On the loop: small counter files the kernel writes (cgroupfs, /proc/vmstat),
        # one per app, which cannot block; a thread hop costs more (docs/performance.md).
        host, values = self._read_counters(cgroups)
        return self._build(host, values, cgroups)

    def _read_counters(self, cgroups: dict[str, MemoryCgroup]) -> tuple[int | None, dict[str, int]]:
        """File reads only; the bookkeeping is in _build()."""
        try:
            host = self.cgroupfs.vmstat_oom_kill()
        except OSError:
            host = None
        values: dict[str, int] = {}
        for app, cg in cgroups.items():
            value = self.cgroupfs.oom_kills(cg)
            if value is not None:
                values[app] = value
        return host, values

    def _build(self, host: int | None, values: dict[str, int],
               cgroups: dict[str, MemoryCgroup]) -> OomSnapshot:
        snap = OomSnapshot(host_oom_kills=host)
        self._vmstat_ok = host is not None
        self._cgroup_ok = bool(values)
        now = time.time()
        sharing: dict[str, int] = {}
        for cg in cgroups.values():
            sharing[cg.path] = sharing.get(cg.path, 0) + 1
        kmsg = self.reader is not None and self.reader.fd is not None
        for app, value in values.items():
            cg = cgroups[app]
            a = self._app(app)
            a.cgroup = cg.path
            a.cgroup_oom_kills = value if cg.path != "/" else None
            prev = self._cg_last.get(app)
            self._cg_last[app] = (cg.path, value)
            if kmsg or prev is None or prev[0] != cg.path or cg.path == "/" or sharing[cg.path] != 1:
                continue
            delta = value - prev[1] if value >= prev[1] else value  # smaller: a new cgroup
            if delta > 0:
                a.worker_kills += delta
                a.last_kill_time = now
        for app in list(self._cg_last):
            if app not in cgroups:
                del self._cg_last[app]
        snap.source = self.source
        snap.unattributed_kills = self._unattributed
        for app in self.index.apps:   # every app reported: its counters exist from 0
            self._app(app)
        for app in [n for n, a in self._apps.items() if n not in self.index.apps
                    and (a.last_kill_time is None or now - a.last_kill_time > KEEP_KILLED)]:
            del self._apps[app]       # an app the gunicorn collector no longer reports
        snap.apps = {k: AppOom(v.worker_kills, v.master_kills, v.last_kill_time, v.cgroup,
                               v.cgroup_oom_kills) for k, v in self._apps.items()}
        snap.recent = list(self._recent)
        if self.reader is not None:
            snap.kmsg_records = self.reader.records
            snap.kmsg_malformed = self.reader.malformed
            snap.kmsg_lost = self.reader.lost
        return snap

    def learn(self, snapshot) -> None:
        """The memory cgroup of each app's master, for the next collections (the app
        index, written by the gunicorn collector, knows their processes)."""
        g = snapshot.data("gunicorn", GunicornSnapshot)
        if g is None:
            return
        seen = set()
        for a in g.apps:
            if not a.up or not a.master_pid:
                continue
            seen.add(a.app)
            cached = self._memcgs.get(a.app)
            if cached is not None and cached[0] == a.master_pid:
                continue
            try:
                cg = self.cgroupfs.memory_cgroup(a.master_pid)
            except (OSError, ValueError):
                cg = None
            self._memcgs[a.app] = (a.master_pid, cg)
        for app in list(self._memcgs):
            if app not in seen:  # stopped apps: their cgroup is gone or reused
                del self._memcgs[app]
