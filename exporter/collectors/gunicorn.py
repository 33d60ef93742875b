"""The gunicorn collector: masters, workers, their connections, heartbeats and listeners.

One collection:
  1. off the event loop (a worker thread, `exporter/gunicorn/measure.py`): discover
     masters, workers and orphans in /proc (`exporter/gunicorn/discovery.py`), read each
     network namespace's socket table once (netlink, `/proc/PID/net/*` as the fallback),
     join socket inodes from the fd tables against it (`exporter/gunicorn/join.py`), and
     work out each master's settings (`exporter/gunicorn/settings.py`);
  2. on the event loop, beside the scrape: ask each master's control socket the read-only
     `show config|stats` questions, each exchange within --gunicorn.control-socket-timeout,
     and keep an answer only when the kernel proves it came from that master
     (`exporter/gunicorn/control.py`). The scrape uses each master's last proven answer
     (`gunicorn_control_socket_answer_age_seconds` says how old); it waits at most
     FIRST_ANSWER_WAIT for the questions due, and not at all for a master whose last
     exchange failed: a control socket that accepts and never answers (any local user can
     bind one for a fake master) costs the scrape nothing after that master's first
     sighting;
  3. merge both into `AppSnapshot`s (`exporter/gunicorn/appsnap.py`) with unique,
     length-capped names and stable worker slots; remember apps and workers across
     scrapes (`exporter/gunicorn/memory.py`). This module is that orchestration and the
     state that lasts from one scrape to the next.

Every process read is untrusted: anything that goes wrong with one master (a vanished
process, a hostile config file or control socket answer, a bug) is caught, counted in
that app's `errors`, and costs that master only.
"""

from __future__ import annotations

import asyncio
import logging
import pwd
import re
import time
from dataclasses import dataclass

from exporter.collectors.attribution import AppIndex
from exporter.collectors.base import Collector
from exporter.gunicorn import control, join
from exporter.gunicorn.appsnap import build_app, name_from
from exporter.gunicorn.discovery import Discovery
from exporter.gunicorn.measure import MasterRaw, Measurer
from exporter.gunicorn.memdetail import MemoryDetail
from exporter.gunicorn.memory import CpuTotals, KnownApps, Slots, WorkerMemory
from exporter.gunicorn.settings import Settings, resolve
from exporter.labels import bounded
from exporter.linux.procfs import ProcFS
from exporter.options import DEFAULTS
from exporter.snapshot import AppSnapshot, GunicornSnapshot

log = logging.getLogger(__name__)

MAX_LOGGED_ERRORS = 1024
MAX_ORPHAN_APPS = 256


# Seconds a master's proven control socket answer is used again while its workers stay
# the same ones (see GunicornCollector._ask_control).
CONTROL_REFRESH = 60.0
# Seconds a scrape waits for the answers due (a real master answers in a millisecond or
# two; its settings are then in that very scrape).
FIRST_ANSWER_WAIT = 0.1


@dataclass
class GunicornOptions:
    """The gunicorn collector's settings; defaults are the options' (exporter/options.py)."""

    db_ports: tuple[int, ...] = DEFAULTS["gunicorn.db-port"]
    db_socket_paths: tuple[str, ...] = ()
    app_names: tuple[tuple[re.Pattern, str], ...] = ()
    control_socket: bool = DEFAULTS["gunicorn.control-socket"]
    control_timeout: float = DEFAULTS["gunicorn.control-socket-timeout"]
    forget_after: float = DEFAULTS["gunicorn.forget-after"]  # 0 = remember while running
    remember_after: float = DEFAULTS["gunicorn.remember-after"]  # up this long: remembered
    expected_apps: tuple[str, ...] = ()  # always reported, gunicorn_up 0 when absent
    users: frozenset[int] | None = None  # uids whose masters are watched; None = all
    include: re.Pattern | None = None    # app names to report (default all)
    exclude: re.Pattern | None = None    # app names not to report
    max_masters: int = DEFAULTS["gunicorn.max-masters"]
    dependency_max_peers: int = DEFAULTS["dependencies.max-peers"]
    memory_detail_interval: float = DEFAULTS["gunicorn.memory-detail-interval"]


class GunicornCollector(Collector):
    name = "gunicorn"

    def __init__(self, options: GunicornOptions | None = None, procfs: ProcFS | None = None,
                 read_sockets=None, index: AppIndex | None = None):
        self.options = options or GunicornOptions()
        # which app a pid, listener or cgroup belongs to: written here after every
        # collection, read by the oom and logs collectors (exporter/collectors/__init__.py)
        self.index = index or AppIndex()
        self.procfs = procfs or ProcFS()
        # Last proven control socket answer per master: the socket is closed while the
        # master forks a worker, and a failed query must not flip settings to defaults.
        self._ctl_cache: dict[tuple[int, int], dict[str, dict]] = {}
        # when each master was last asked, and its workers then (see _ask_if_due)
        self._ctl_asked: dict[tuple[int, int], tuple[float, frozenset[int]]] = {}
        self._ctl_tasks: dict[tuple[int, int], asyncio.Task] = {}   # exchanges under way
        self._ctl_failed: set[tuple[int, int]] = set()   # masters whose last exchange failed
        self._ctl_at: dict[tuple[int, int], float] = {}  # when each answer in use came
        self._measurer = Measurer(self.procfs, users=self.options.users,
                                  max_masters=self.options.max_masters,
                                  read_sockets=read_sockets, control_answers=self._ctl_cache)
        self._slots = Slots()
        self._known = KnownApps(forget_after=self.options.forget_after,
                                expected=self.options.expected_apps)
        self._workers = WorkerMemory()
        self._cpu = CpuTotals()
        self._memory = MemoryDetail(self.options.memory_detail_interval)
        self._previous_masters: set[tuple[int, int]] = set()
        self._owners: dict[str, tuple] = {}      # app name -> master that holds it
        # masters seen started by a USR2 upgrade: they keep calling themselves NAME.2
        # after the old master is gone (setproctitle may have erased their environment)
        self._usr2_masters: set[tuple[int, int]] = set()
        self._users: dict[int, str] = {}
        self._logged: set[str] = set()
        self._denied_logged = False
        self._cap_logged = False

    async def stop(self) -> None:
        for task in self._ctl_tasks.values():
            task.cancel()
        self._measurer.netns_sockets.close()

    async def collect(self) -> GunicornSnapshot:
        raws, found, snap = await asyncio.to_thread(
            self._measurer.measure, self._workers.keys(), self._previous_masters)
        live = {r.key for r in raws}
        for key in [k for k in self._ctl_tasks if k not in live]:
            self._ctl_tasks.pop(key).cancel()          # the master is gone
        for cache in (self._ctl_cache, self._ctl_asked, self._ctl_at):
            for key in [k for k in cache if k not in live]:
                del cache[key]
        self._ctl_failed &= live
        answers = await self._control_answers(raws)
        self._usr2_masters &= live
        self._measurer.forget(live)
        now = time.time()
        apps = [self._build_app_guarded(r, a) for r, a in zip(raws, answers)]
        mono = time.monotonic()
        for r, a in zip(raws, apps):
            if a.control_socket and r.key in self._ctl_at:
                a.control_answer_age = max(0.0, mono - self._ctl_at[r.key])
        apps = [a for a in apps if self._watched(a.app)]
        renamed = join.assign_names(apps, self._owners, self._known.uid)
        for a in apps:
            a.app = bounded(a.app)
            a.transient = a.transient or a.app in renamed
            slots = self._slots.assign(a.app, a.workers)
            for w in a.workers:
                w.slot = slots[w.pid]
            a.workers.sort(key=lambda w: w.slot)
            for lst in a.listeners:
                if lst.worker_slot is not None:
                    lst.worker_slot = slots.get(lst.worker_slot)
        self._slots.keep_only({a.app for a in apps})
        for a in apps:
            if not a.transient:
                self._known.seen(a.app, a.uid, now, self._established(a, now))
            a.workers_cpu_seconds = self._cpu.add(a.app, a.workers, now)
        self._known.expire(now)
        self._memory.update([(w.pid, w.start_time) for a in apps for w in a.workers])
        for a in apps:
            for w in a.workers:
                got = self._memory.get(w.pid, w.start_time)
                if got is not None:
                    w.unique_memory_bytes, w.proportional_memory_bytes = got
        snap.orphans = self._orphans(found, apps, snap)
        live_names = {a.app for a in apps}
        snap.apps = apps + [AppSnapshot(app=name, up=False)
                            for name in sorted(self._known.names() - live_names)]
        self._cpu.keep_only({a.app for a in snap.apps}, now)
        snap.remembered_apps = len(self._known)
        snap.forgotten_apps = self._known.evicted
        self._previous_masters = {r.key for r in raws}
        self._log_once(snap, apps)
        self.index.update(snap)
        return snap

    def _established(self, a: AppSnapshot, now: float) -> bool:
        """Up for a while, serving: workers and a listener, its master running for
        --gunicorn.remember-after (exporter/gunicorn/memory.py says why)."""
        return bool(a.workers and a.listeners and a.master_start_time is not None
                    and now - a.master_start_time >= self.options.remember_after)

    # --- step 2: control socket, on the loop, beside the scrape -----------------

    async def _control_answers(self, raws: list[MasterRaw]) -> list[dict[str, dict]]:
        """Each master's last proven answer ({} while there is none); the questions that
        are due are asked in tasks of their own, and waited for FIRST_ANSWER_WAIT at most,
        unless the master's last exchange failed (a socket that never answers is not
        waited for again)."""
        due = []
        for raw in raws:
            task = self._ask_if_due(raw)
            if task is not None and raw.key not in self._ctl_failed:
                due.append(task)
        if due:
            await asyncio.wait(due, timeout=FIRST_ANSWER_WAIT)
        return [self._ctl_cache.get(r.key, {}) for r in raws]

    def _ask_if_due(self, raw: MasterRaw) -> asyncio.Task | None:
        ctl = raw.joined.control if raw.joined is not None else None
        proc = raw.master.proc
        if not self.options.control_socket or ctl is None or not ctl.name or proc.status is None:
            return None
        # What `show config|stats` says changes only when workers come or go (a reload
        # with HUP replaces them all, TTIN/TTOU and `worker add|remove` spawn or stop
        # one, workers_spawned counts spawns): a proven answer is used again while this
        # master's workers are the same ones, for up to CONTROL_REFRESH seconds.
        workers = frozenset(w.pid for w in raw.master.workers)
        now = time.monotonic()
        asked = self._ctl_asked.get(raw.key)
        running = self._ctl_tasks.get(raw.key)
        if running is not None and not running.done():
            return running                 # at most one exchange per master at a time
        if self._ctl_cache.get(raw.key) and asked is not None and asked[1] == workers \
                and 0 <= now - asked[0] < CONTROL_REFRESH:
            return None
        task = self._ctl_tasks[raw.key] = asyncio.get_running_loop().create_task(
            self._ask_control(raw.key, proc, ctl, workers))
        return task

    async def _ask_control(self, key, proc, ctl, workers: frozenset[int]) -> None:
        try:
            answer = await control.query(self.procfs, proc.pid, proc.status, ctl.name, proc.pid,
                                         ctl.vfs, ("config", "stats"),
                                         self.options.control_timeout)
        except Exception as e:  # noqa: BLE001 - any answer at all costs this master only
            log.debug("control socket %s of master %d: %r", ctl.name[:200], proc.pid, e)
            self._ctl_asked.pop(key, None)     # asked again at the next scrape
            self._ctl_failed.add(key)
            return
        self._ctl_cache[key] = answer
        self._ctl_asked[key] = (time.monotonic(), workers)
        self._ctl_at[key] = time.monotonic()
        self._ctl_failed.discard(key)

    # --- step 3: merge -------------------------------------------------------

    def _build_app_guarded(self, raw: MasterRaw, ctl: dict[str, dict]) -> AppSnapshot:
        try:
            return build_app(raw, ctl, name_of=self._app_name, user=self._user(raw.master.proc.uid),
                             boot_time=self._measurer.boot_time, db_ports=self.options.db_ports,
                             db_paths=self.options.db_socket_paths,
                             max_peers=self.options.dependency_max_peers)
        except Exception as e:  # noqa: BLE001
            p = raw.master.proc
            name = p.title[1] if p.title and p.title[1] else f"pid{p.pid}"
            return AppSnapshot(app=bounded(name), up=True, master_pid=p.pid, uid=p.uid,
                               user=self._user(p.uid),
                               errors=raw.errors + [f"building: {type(e).__name__}: {str(e)[:120]}"])

    def _app_name(self, raw: MasterRaw, configured_name: str | None) -> str:
        m = raw.master
        title = m.proc.title
        if m.upgraded_from is not None:
            self._usr2_masters.add(m.proc.key)
        if title and title[0] == "master" and title[1] and title[1].endswith(".2") and (
                configured_name == title[1][:-2] or m.proc.key in self._usr2_masters
                or (m.environ or {}).get("GUNICORN_PID")):
            # A USR2 master calls itself NAME.2 for the rest of its life; we say .2 only
            # while the old master is still there (below). Its configured name (control
            # socket) or its exec-time GUNICORN_PID tell us it is one.
            title = (title[0], title[1][:-2])
        name = name_from(title, raw.settings, m.proc.argv, self.options.app_names,
                         configured_name)
        return name + ".2" if m.upgraded_from is not None else name

    def _watched(self, name: str) -> bool:
        inc, exc = self.options.include, self.options.exclude
        base = name[:-2] if name.endswith(".2") else name
        return (inc is None or bool(inc.fullmatch(base))) and \
            (exc is None or not exc.fullmatch(base))

    def _orphans(self, found: Discovery, apps: list[AppSnapshot],
                 snap: GunicornSnapshot) -> dict[str, int]:
        """Count orphaned workers per app; remember this scrape's workers for the next.

        An orphan the exporter saw as a worker keeps that app's name. Otherwise it is
        named by its title or command line, but a name remembered for another user gets
        `@uid<N>`: a process cannot count itself into someone else's app."""
        by_pid = {a.master_pid: a for a in apps}
        remembered: dict[tuple[int, int], str] = {}
        for m in found.masters:
            a = by_pid.get(m.proc.pid)
            if a is not None:
                for w in m.workers:
                    remembered[w.key] = a.app
        counts: dict[str, int] = {}
        for p in found.orphans:
            app = self._workers.get(p.key)
            if app is None:
                settings = resolve(p.gargs, {}) if p.gargs is not None else Settings()
                app = name_from(p.title, settings, p.argv, self.options.app_names)
                owner = self._known.uid(app)
                if owner is not None and owner != p.uid:
                    app = bounded(f"{app}@uid{p.uid}")
            if not self._watched(app):
                continue
            if app not in counts and len(counts) >= MAX_ORPHAN_APPS:
                snap.dropped_workers += 1
                continue
            remembered[p.key] = app
            counts[app] = counts.get(app, 0) + 1
        self._workers.replace(remembered)
        return counts

    def _user(self, uid: int) -> str:
        if uid < 0:
            return "unknown"
        name = self._users.get(uid)
        if name is None:
            try:
                name = bounded(pwd.getpwuid(uid).pw_name, 64)
            except (KeyError, OverflowError):
                name = str(uid)
            if len(self._users) > 4096:
                self._users.clear()
            self._users[uid] = name
        return name

    def _log_once(self, snap: GunicornSnapshot, apps: list[AppSnapshot]) -> None:
        if snap.permission_denied and not self._denied_logged:
            self._denied_logged = True
            log.warning("not allowed to read /proc entries of %d gunicorn process(es); "
                        "per-worker connections, fds and heartbeats are missing for them. "
                        "Run as the same user as gunicorn or grant CAP_SYS_PTRACE "
                        "(see docs/configuration.md#privileges)", snap.permission_denied)
        if snap.dropped_masters and not self._cap_logged:
            self._cap_logged = True
            log.warning("more gunicorn masters than --gunicorn.max-masters=%d: %d not measured "
                        "(shared out between users; gunicorn_exporter_dropped_masters)",
                        self.options.max_masters, snap.dropped_masters)
        for a in apps:
            for err in a.errors:
                text = f"{a.app}: {err}"
                if text not in self._logged and len(self._logged) < MAX_LOGGED_ERRORS:
                    self._logged.add(text)
                    log.warning("app %s (master %s): %s", a.app, a.master_pid, err)
