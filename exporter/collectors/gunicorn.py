"""The gunicorn collector: masters, workers, their connections, heartbeats and listeners.

One collection:
  1. off the event loop (a worker thread): discover masters, workers and orphans in /proc
     (`exporter/gunicorn/discovery.py`), read each network namespace's socket table once
     (netlink, `/proc/PID/net/*` as the fallback), join socket inodes from the fd tables
     against it (`exporter/gunicorn/join.py`), and work out each master's settings
     (`exporter/gunicorn/settings.py`);
  2. on the event loop: ask each master's control socket the read-only `show config|stats`
     questions, with a short time limit, and keep an answer only when the kernel proves it
     came from that master (`exporter/gunicorn/control.py`);
  3. merge both into `AppSnapshot`s with unique, length-capped names and stable worker
     slots; remember apps and workers across scrapes (`exporter/gunicorn/memory.py`).

Every process read is untrusted: anything that goes wrong with one master (a vanished
process, a hostile config file or control socket answer, a bug) is caught, counted in
that app's `errors`, and costs that master only.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pwd
import re
import time
from dataclasses import dataclass, field

from exporter.gunicorn import control, join
from exporter.gunicorn.discovery import (MAX_MASTERS, Discovery, Master, ProcfsProbe, discover,
                                         scan_processes)
from exporter.gunicorn.memory import KnownApps, Slots, WorkerMemory
from exporter.gunicorn.settings import (MAX_CONFIG_BYTES, Settings, evaluate_config,
                                        normalise_worker_class, resolve)
from exporter.gunicorn.version import MAX_MAPS_BYTES, find_version
from exporter.labels import bounded
from exporter.linux import procnet, sockdiag
from exporter.linux.pathwalk import PathWalker
from exporter.linux.procfs import FdScan, ProcFS
from exporter.linux.sockdiag import SocketTable
from exporter.snapshot import AppSnapshot, GunicornSnapshot, ListenerSnapshot, WorkerSnapshot

log = logging.getLogger(__name__)

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
MAX_CONFIG_CACHE = 1024
MAX_LOGGED_ERRORS = 1024
MAX_ORPHAN_APPS = 256
# worker classes that keep a connection open between requests (HTTP keep-alive) and
# have a finite capacity: there an idle keep-alive connection must not count as busy
# (None: the class is not known, so it may be one of them)
KEEPALIVE_CLASSES = {"gthread", "gevent", "eventlet", "tornado", None}
# the settings the control socket's `show config` answer may override
CONTROL_SETTINGS = ("workers", "worker_class", "threads", "worker_connections", "timeout",
                    "keepalive", "bind", "proc_name", "max_requests", "backlog")
SOURCE_SETTINGS = ("workers", "worker_class", "threads", "worker_connections", "timeout",
                   "keepalive", "backlog", "bind")


@dataclass
class GunicornOptions:
    db_ports: tuple[int, ...] = (5432, 6432)
    db_socket_paths: tuple[str, ...] = ()
    app_names: tuple[tuple[re.Pattern, str], ...] = ()
    control_socket: bool = True
    control_timeout: float = 1.0
    forget_after: float = 0.0            # seconds; 0 = remember stopped apps while running
    expected_apps: tuple[str, ...] = ()  # always reported, gunicorn_up 0 when absent
    users: frozenset[int] | None = None  # uids whose masters are watched; None = all
    include: re.Pattern | None = None    # app names to report (default all)
    exclude: re.Pattern | None = None    # app names not to report
    max_masters: int = MAX_MASTERS


@dataclass
class _WorkerRaw:
    pid: int
    stat: object
    scan: FdScan | None
    fd_limit: int | None
    heartbeat_mtime: float | None
    heartbeat_ctime: float | None
    sockets: join.WorkerSockets | None = None


@dataclass
class _MasterRaw:
    master: Master
    settings: Settings
    version: str = "unknown"
    start_time: float = 0.0
    workers: list[_WorkerRaw] = field(default_factory=list)
    joined: join.Joined | None = None
    socket_source: str = "none"
    errors: list[str] = field(default_factory=list)
    idle_measured: bool = False     # keep-alive connections told apart (TCP, see _find_idle)

    @property
    def key(self) -> tuple[int, int]:
        return self.master.proc.key


class GunicornCollector:
    name = "gunicorn"

    def __init__(self, options: GunicornOptions | None = None, procfs: ProcFS | None = None,
                 read_sockets=None):
        self.options = options or GunicornOptions()
        self.procfs = procfs or ProcFS()
        self._read_sockets = read_sockets or sockdiag.read_all
        self._tcp_idle = sockdiag.tcp_idle
        self._idle: set[int] = set()
        self._slots = Slots()
        self._known = KnownApps(forget_after=self.options.forget_after,
                                expected=self.options.expected_apps)
        self._workers = WorkerMemory()
        self._previous_masters: set[tuple[int, int]] = set()
        self._owners: dict[str, tuple] = {}      # app name -> master that holds it
        # masters seen started by a USR2 upgrade: they keep calling themselves NAME.2
        # after the old master is gone (setproctitle may have erased their environment)
        self._usr2_masters: set[tuple[int, int]] = set()
        self._versions: dict[tuple[int, int], str] = {}
        # master -> {(dev, ino, mtime, size) of its config file: evaluation}
        self._configs: dict[tuple[int, int], dict[tuple, object]] = {}
        # Last proven control socket answer per master: the socket is closed while the
        # master forks a worker, and a failed query must not flip settings to defaults.
        self._ctl_cache: dict[tuple[int, int], dict[str, dict]] = {}
        self._users: dict[int, str] = {}
        self._logged: set[str] = set()
        self._denied_logged = False
        self._cap_logged = False
        self._own_netns = self.procfs.netns("self")
        try:
            self._boot_time = self.procfs.boot_time()
        except (OSError, ValueError):
            self._boot_time = time.time() - time.monotonic()

    async def collect(self) -> GunicornSnapshot:
        raws, found, snap = await asyncio.to_thread(self._measure)
        answers = await asyncio.gather(*(self._ask_control(r) for r in raws))
        live = {r.key for r in raws}
        self._usr2_masters &= live
        for cache in (self._ctl_cache, self._configs):
            for key in list(cache):
                if key not in live:
                    del cache[key]
        now = time.time()
        apps = [self._build_app_guarded(r, a) for r, a in zip(raws, answers)]
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
                self._known.seen(a.app, a.uid, now)
        self._known.expire(now)
        snap.orphans = self._orphans(found, apps, snap)
        live_names = {a.app for a in apps}
        snap.apps = apps + [AppSnapshot(app=name, up=False)
                            for name in sorted(self._known.names() - live_names)]
        snap.remembered_apps = len(self._known)
        snap.forgotten_apps = self._known.evicted
        self._previous_masters = {r.key for r in raws}
        self._log_once(snap, apps)
        return snap

    # --- step 1: /proc and sockets, in a thread -----------------------------

    def _measure(self) -> tuple[list[_MasterRaw], Discovery, GunicornSnapshot]:
        self._idle = set()
        procs = scan_processes(self.procfs)
        found = discover(procs, ProcfsProbe(self.procfs), known_workers=self._workers.keys(),
                         previous_masters=self._previous_masters, users=self.options.users,
                         max_masters=self.options.max_masters)
        snap = GunicornSnapshot(permission_denied=len(found.permission_denied),
                                dropped_masters=found.dropped_masters,
                                dropped_workers=found.dropped_workers,
                                filtered_masters=found.filtered_masters)
        tables: dict[int | None, SocketTable | None] = {}
        # Only sockets that gunicorn processes hold (and their unix peers) are decoded.
        wanted: set[int] = set()
        for m in found.masters:
            if m.fds is not None:
                wanted.update(m.fds.socket_inodes)
            for scan in m.worker_fds.values():
                wanted.update(scan.socket_inodes)
        raws = []
        for m in found.masters:
            raw = _MasterRaw(m, Settings())
            try:
                self._measure_master(raw)
            except Exception as e:  # a hostile or vanished master costs itself only
                raw.errors.append(f"reading /proc: {type(e).__name__}: {str(e)[:120]}")
            try:
                netns = self.procfs.netns(m.proc.pid)
                if netns not in tables:
                    tables[netns] = self._socket_table(netns, m.proc.pid, wanted)
                table = tables[netns]
                if table is not None:
                    raw.socket_source = table.source
                    self._join(raw, table)
            except Exception as e:
                raw.errors.append(f"joining sockets: {type(e).__name__}: {str(e)[:120]}")
            raws.append(raw)
        sources = {t.source for t in tables.values() if t is not None}
        snap.socket_source = "netlink" if sources == {"netlink"} else \
            ("+".join(sorted(sources)) if sources else "none")
        self._find_idle(raws)
        return raws, found, snap

    def _find_idle(self, raws: list[_MasterRaw]) -> None:
        """Which TCP client connections are idle keep-alive ones (last request answered),
        for the worker classes that keep connections open between requests; one batch of
        exact sock_diag lookups (tcp_info), host network namespace only."""
        candidates = []
        for raw in raws:
            if raw.socket_source != "netlink" or raw.joined is None:
                continue
            if self._worker_class_hint(raw) not in KEEPALIVE_CLASSES:
                continue
            match = join.SocketMatcher.of(raw.joined.listeners, (), ())
            for w in raw.workers:
                if w.sockets is not None:
                    candidates.extend(join.client_tcp(w.sockets, match))
            raw.idle_measured = True
        if not candidates:
            return
        try:
            idle = self._tcp_idle(candidates)
        except OSError as e:
            log.debug("tcp_info lookups failed: %s", e)
            for raw in raws:
                raw.idle_measured = False
            return
        self._idle = {ino for ino, is_idle in idle.items() if is_idle}

    def _worker_class_hint(self, raw: _MasterRaw) -> str | None:
        cfg = self._ctl_cache.get(raw.key, {}).get("config") or {}
        if cfg.get("worker_class"):
            return _class_path(str(cfg["worker_class"])[:512])
        cls = raw.settings.worker_class
        threads = raw.settings.get("threads")
        if cls == "sync" and isinstance(threads, int) and threads > 1:
            return "gthread"
        return cls

    def _socket_table(self, netns: int | None, pid: int, wanted: set[int]) -> SocketTable | None:
        if netns is not None and netns == self._own_netns and self.procfs.root == "/proc":
            try:
                return self._read_sockets(wanted=wanted)
            except OSError as e:
                log.debug("netlink socket dump failed (%s); reading /proc/net", e)
        try:
            return procnet.read_table(self.procfs.path(pid, "net"))
        except OSError as e:
            log.debug("cannot read socket tables of pid %d: %s", pid, e)
            return None

    def _measure_master(self, raw: _MasterRaw) -> None:
        m = raw.master
        p = m.proc
        raw.start_time = self._boot_time + p.stat.starttime_ticks / CLK_TCK
        try:
            raw.settings = resolve(p.gargs, m.environ, self._config_reader(m),
                                   cpu_count=os.cpu_count(),
                                   affinity=p.status.cpus_allowed if p.status else None)
        except Exception as e:
            raw.settings = Settings()
            raw.settings.forget_all("settings could not be worked out")
            raw.errors.append(f"settings: {type(e).__name__}: {str(e)[:120]}")
        if raw.key not in self._versions:
            if len(self._versions) > 4 * self.options.max_masters:
                self._versions.clear()
            try:
                self._versions[raw.key] = self._gunicorn_version(m)
            except OSError:
                self._versions[raw.key] = "unknown"
        raw.version = self._versions[raw.key]
        for w in m.workers:
            scan = m.worker_fds.get(w.pid)
            try:
                limit = self.procfs.fd_limit(w.pid)
            except (OSError, ValueError):
                limit = None
            mtime = ctime = None
            if scan is not None and scan.heartbeats:
                try:
                    st = self.procfs.fd_stat(w.pid, scan.heartbeats[0][0])
                    mtime, ctime = st.st_mtime, st.st_ctime
                except OSError:
                    pass
            raw.workers.append(_WorkerRaw(w.pid, w.stat, scan, limit, mtime, ctime))

    def _config_reader(self, m: Master):
        """read_file for `resolve`: the file as the master sees it, with its own user's
        rights (exporter/linux/pathwalk.py); the evaluation is cached per master and
        file version (device, inode, mtime, size)."""
        owner = m.proc.status
        cpus = os.cpu_count()
        affinity = owner.cpus_allowed if owner else None

        def read(path: str):
            if owner is None:
                raise PermissionError("the master's user is not known")
            mine = self._configs.get(m.proc.key, {})
            with PathWalker(self.procfs, m.proc.pid, owner) as walker:
                data, key = walker.read_regular(path, MAX_CONFIG_BYTES, cached=mine)
            if data is None:
                return mine[key]
            result = evaluate_config(data.decode("utf-8", "replace"), m.environ, cpus, affinity)
            if len(self._configs) >= MAX_CONFIG_CACHE:
                self._configs.clear()
            self._configs[m.proc.key] = {key: result}
            return result
        return read

    def _gunicorn_version(self, m: Master) -> str:
        p = m.proc
        if p.status is None or self.procfs.root != "/proc":
            return "unknown"
        try:
            maps = self.procfs.read_text(p.pid, "maps", limit=MAX_MAPS_BYTES)
        except OSError:
            maps = ""
        try:
            exe = os.readlink(self.procfs.path(p.pid, "exe"))
        except OSError:
            exe = None
        with PathWalker(self.procfs, p.pid, p.status) as walker:
            return bounded(find_version(maps, p.argv, exe, walker.list_dir))

    def _join(self, raw: _MasterRaw, table: SocketTable) -> None:
        m = raw.master
        master_inodes = set(m.fds.socket_inodes) if m.fds else set()
        worker_inodes = {w.pid: set(w.scan.socket_inodes) if w.scan else set()
                         for w in raw.workers}
        ctl = raw.settings.get("control_socket")
        raw.joined = join.join_sockets(master_inodes, worker_inodes, table,
                                       ctl if isinstance(ctl, str) else None,
                                       raw.settings.get("control_socket_disable") is True)
        for w in raw.workers:
            w.sockets = raw.joined.workers.get(w.pid)

    # --- step 2: control socket, on the loop ---------------------------------

    async def _ask_control(self, raw: _MasterRaw) -> dict[str, dict]:
        ctl = raw.joined.control if raw.joined is not None else None
        if not self.options.control_socket or ctl is None or not ctl.name:
            return {}
        proc = raw.master.proc
        pid = proc.pid
        if proc.status is None:
            return {}
        try:
            answer = await control.query(self.procfs, pid, proc.status, ctl.name, pid, ctl.vfs,
                                         ("config", "stats"), self.options.control_timeout)
        except Exception as e:  # noqa: BLE001 - any answer at all costs this master only
            log.debug("control socket %s of master %d: %r", ctl.name[:200], pid, e)
            return self._ctl_cache.get(raw.key, {})
        self._ctl_cache[raw.key] = answer
        return answer

    # --- step 3: merge -------------------------------------------------------

    def _build_app_guarded(self, raw: _MasterRaw, ctl: dict[str, dict]) -> AppSnapshot:
        try:
            return self._build_app(raw, ctl)
        except Exception as e:  # noqa: BLE001
            p = raw.master.proc
            name = p.title[1] if p.title and p.title[1] else f"pid{p.pid}"
            return AppSnapshot(app=bounded(name), up=True, master_pid=p.pid, uid=p.uid,
                               user=self._user(p.uid),
                               errors=raw.errors + [f"building: {type(e).__name__}: {str(e)[:120]}"])

    def _build_app(self, raw: _MasterRaw, ctl: dict[str, dict]) -> AppSnapshot:
        s = raw.settings
        cfg = ctl.get("config") or {}
        for key in CONTROL_SETTINGS:
            value = cfg.get(key)
            if value is not None:
                if key == "worker_class":
                    value = _class_path(str(value)[:512])
                s.set(key, value, "control_socket")
        stats = ctl.get("stats") or {}
        target = stats.get("workers_target")
        if isinstance(target, int) and not isinstance(target, bool):
            s.set("workers", target, "control_socket")
        spawned = stats.get("workers_spawned")
        if not isinstance(spawned, int) or isinstance(spawned, bool) or not 0 <= spawned < 2**53:
            spawned = None

        worker_class = s.worker_class
        threads = s.get("threads")
        if worker_class == "sync" and isinstance(threads, int) and threads > 1:
            worker_class = "gthread"  # gunicorn switches on its own
        if worker_class == "sync" and threads is None:
            worker_class = None       # sync, or gthread if --threads > 1: not known
        wc = s.get("worker_connections")
        p = raw.master.proc
        name = self._app_name(raw, cfg.get("proc_name") if isinstance(cfg.get("proc_name"), str) else None)
        backlog, backlog_source = _backlog_in_force(raw, s)
        sources = {k: s.sources.get(k, "unknown") for k in SOURCE_SETTINGS}
        sources["backlog"] = backlog_source
        app = AppSnapshot(
            app=name,
            up=True,
            master_pid=p.pid,
            version=raw.version,
            worker_class=bounded(worker_class) if worker_class else "unknown",
            workers_desired=s.get("workers"),
            timeout=s.get("timeout"),
            keepalive=s.get("keepalive"),
            capacity=join.capacity(worker_class, threads, wc),
            worker_connections=wc,
            threads=threads,
            backlog=backlog,
            settings_source=sources,
            control_socket=bool(ctl),
            master_start_time=raw.start_time,
            workers_spawned=spawned,
            user=self._user(p.uid),
            uid=p.uid,
            errors=list(raw.errors),
            transient=raw.master.upgraded_from is not None,
        )
        legacy = _legacy_heartbeat(raw.version)
        mono = time.monotonic()
        wall = time.time()
        joined = raw.joined
        match = join.SocketMatcher.of(joined.listeners if joined else [],
                                      self.options.db_ports, self.options.db_socket_paths)
        for w in raw.workers:
            st = w.stat
            age = None
            if w.heartbeat_mtime is not None:
                # gunicorn >= 22 stores time.monotonic() in the mtime; older releases
                # toggle the file mode, so the ctime is the last beat (wall clock).
                if legacy is False or (legacy is None and w.heartbeat_mtime <= mono + 60):
                    age = max(0.0, mono - w.heartbeat_mtime)
                else:
                    age = max(0.0, wall - (w.heartbeat_ctime or w.heartbeat_mtime))
            conns = None
            if w.sockets is not None and joined is not None:
                conns = join.count_worker_sockets(w.sockets, joined.unix_peers, match,
                                                  self._idle)
            app.workers.append(WorkerSnapshot(
                slot=-1, pid=w.pid,
                start_time=self._boot_time + st.starttime_ticks / CLK_TCK,
                rss_bytes=st.rss_pages * PAGE_SIZE,
                cpu_seconds=(st.utime_ticks + st.stime_ticks) / CLK_TCK,
                threads=st.num_threads,
                open_fds=w.scan.count if w.scan is not None else None,
                fd_limit=w.fd_limit,
                heartbeat_age=age,
                connections_active=conns.active if conns else None,
                connections_client_closed=conns.client_closed if conns else None,
                connections_idle=conns.idle if conns and raw.idle_measured else None,
                db_connections=len(conns.db_tcp) + len(conns.db_unix) if conns else None,
                db_tcp=conns.db_tcp if conns else [],
                db_unix=conns.db_unix if conns else [],
            ))
        names: set[tuple[str, int | None]] = set()
        for sock, worker_pid in (joined.listeners if joined else []):
            address = bounded(join.listener_address(sock), 256)
            while (address, worker_pid) in names:  # the same address bound twice
                address += "+"
            names.add((address, worker_pid))
            app.listeners.append(ListenerSnapshot(
                address=address,
                kind="unix" if isinstance(sock, sockdiag.UnixSocket) else "tcp",
                queue_length=sock.rqueue if sock.rqueue >= 0 else None,
                queue_max=sock.wqueue if sock.wqueue >= 0 else None,
                worker_slot=worker_pid,  # replaced by the slot once slots are assigned
                drops=getattr(sock, "drops", -1) if getattr(sock, "drops", -1) >= 0 else None,
            ))
        return app

    def _app_name(self, raw: _MasterRaw, configured_name: str | None) -> str:
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
        name = self._name_from(title, raw.settings, m.proc.argv, configured_name)
        return name + ".2" if m.upgraded_from is not None else name

    def _name_from(self, title, settings: Settings, argv: list[str],
                   configured_name: str | None = None) -> str:
        """The app name: the process title's [NAME], the configured proc_name, the app
        module, mapped by --gunicorn.app-name, capped in length."""
        name = (title[1] if title and title[1] else None) or configured_name \
            or settings.get("proc_name") or settings.app_module or "gunicorn"
        name = str(name)
        cmd = " ".join(argv)[:4096]
        for pattern, mapped in self.options.app_names:
            if pattern.search(name[:4096]) or pattern.search(cmd):
                name = mapped
                break
        return bounded(name)

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
                app = self._name_from(p.title, settings, p.argv)
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


def _backlog_in_force(raw: _MasterRaw, s: Settings) -> tuple[int | None, str]:
    """The listen backlog of the app's listeners as the kernel has it, else the setting.

    Sockets inherited from systemd (or a USR2 parent) keep the backlog they were created
    with; gunicorn does not call listen() on them again.
    """
    joined = raw.joined
    limits = [sock.wqueue for sock, _ in (joined.listeners if joined else [])
              if getattr(sock, "wqueue", -1) >= 0 and raw.socket_source == "netlink"]
    if limits:
        return max(limits), "kernel"
    backlog = s.get("backlog")
    return backlog, s.sources.get("backlog", "unknown")


def _class_path(value: str) -> str:
    # show config renders the class object: "<class 'gunicorn.workers.sync.SyncWorker'>"
    m = re.search(r"'([\w.]{1,200})'", value)
    return normalise_worker_class(m.group(1) if m else value)


def _legacy_heartbeat(version: str) -> bool | None:
    m = re.match(r"(\d{1,4})\.", version)
    if not m:
        return None
    return int(m.group(1)) < 22
