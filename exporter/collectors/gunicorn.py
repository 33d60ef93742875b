"""The gunicorn collector: masters, workers, their connections, heartbeats and listeners.

One collection:
  1. off the event loop (a worker thread): discover masters and workers in /proc,
     read each network namespace's socket table once (netlink, `/proc/PID/net/*` as
     the fallback), and join socket inodes from the workers' fd tables against it;
  2. on the event loop: ask each master's control socket (if it has one) the read-only
     `show config|stats` questions, with a short time limit;
  3. merge both into `AppSnapshot`s, with stable per-app worker slots.
"""

from __future__ import annotations

import asyncio
import glob
import logging
import os
import re
import socket
import time
from dataclasses import dataclass, field

from exporter.gunicorn import control
from exporter.gunicorn.discovery import Discovery, Master, discover
from exporter.gunicorn.settings import Settings, normalise_worker_class, resolve
from exporter.linux import procnet, sockdiag
from exporter.linux.procfs import FdScan, ProcFS
from exporter.linux.sockdiag import (TCP_CLOSE_WAIT, TCP_ESTABLISHED, TCP_LISTEN,
                                     SocketTable)
from exporter.snapshot import (AppSnapshot, GunicornSnapshot, ListenerSnapshot,
                               WorkerSnapshot)

log = logging.getLogger(__name__)

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
MAX_KNOWN_APPS = 256
PGSQL_SOCKET_RE = re.compile(r"\.s\.PGSQL\.(\d+)$")
WILDCARD_ADDRS = {"0.0.0.0", "::", ""}
SITE_DIR_RE = re.compile(r"(/\S*?/(?:site|dist)-packages)/")
DIST_INFO_RE = re.compile(r"gunicorn-(\d[^-]*?)(?:-py[\d.]+)?\.(?:dist|egg)-info$")


@dataclass
class GunicornOptions:
    db_ports: tuple[int, ...] = (5432, 6432)
    db_socket_paths: tuple[str, ...] = ()
    app_names: tuple[tuple[re.Pattern, str], ...] = ()
    control_socket: bool = True
    control_timeout: float = 1.0
    forget_after: float = 0.0            # seconds; 0 = remember stopped apps while running
    expected_apps: tuple[str, ...] = ()  # always reported, gunicorn_up 0 when absent


@dataclass
class _WorkerRaw:
    pid: int
    stat: object
    scan: FdScan | None
    fd_error: str | None
    fd_limit: int | None
    heartbeat_mtime: float | None
    heartbeat_ctime: float | None
    sockets_unix: list = field(default_factory=list)
    sockets_inet: list = field(default_factory=list)


@dataclass
class _MasterRaw:
    master: Master
    settings: Settings
    version: str
    start_time: float
    listeners: list = field(default_factory=list)        # (socket, worker_pid|None)
    control_path: str | None = None
    workers: list[_WorkerRaw] = field(default_factory=list)
    unix_peers: dict[int, str] = field(default_factory=dict)  # peer inode -> name
    socket_source: str = "none"


class GunicornCollector:
    name = "gunicorn"

    def __init__(self, options: GunicornOptions | None = None, procfs: ProcFS | None = None,
                 read_sockets=None):
        self.options = options or GunicornOptions()
        self.procfs = procfs or ProcFS()
        self._read_sockets = read_sockets or sockdiag.read_all
        self._slots: dict[str, dict[int, int]] = {}
        self._known: dict[str, float] = {}
        self._versions: dict[tuple[int, int], str] = {}
        # Last good control socket answer per master: the socket is closed while the
        # master forks a worker, and a failed query must not flip settings to defaults.
        self._ctl_cache: dict[tuple[int, int], dict[str, dict]] = {}
        self._denied_logged = False
        self._own_netns = self.procfs.netns("self")
        try:
            self._boot_time = self.procfs.boot_time()
        except (OSError, ValueError):
            self._boot_time = time.time() - time.monotonic()

    async def collect(self) -> GunicornSnapshot:
        raws, snap = await asyncio.to_thread(self._measure)
        answers = await asyncio.gather(*(self._ask_control(r) for r in raws))
        live = {_master_key(r) for r in raws}
        for key in list(self._ctl_cache):
            if key not in live:
                del self._ctl_cache[key]
        for i, (r, a) in enumerate(zip(raws, answers)):
            if a:
                self._ctl_cache[_master_key(r)] = a
            else:
                answers[i] = self._ctl_cache.get(_master_key(r), {})
        now = time.time()
        apps = [self._build_app(r, a) for r, a in zip(raws, answers)]
        renamed = _disambiguate(apps)
        self._assign_slots(apps)
        seen = {a.app for a in apps}
        for a in apps:
            # transient names (a USR2 master's NAME.2, NAME@LISTENER while two masters
            # share a name) are not remembered, or they would read "down" forever after
            if a.up and not a.app.endswith(".2") and a.app not in renamed:
                self._known[a.app] = now
        for name in self.options.expected_apps:
            self._known.setdefault(name, now)
        self._forget(now)
        snap.apps = apps + [AppSnapshot(app=name, up=False)
                            for name in sorted(self._known) if name not in seen]
        if snap.permission_denied and not self._denied_logged:
            self._denied_logged = True
            log.warning("not allowed to read /proc entries of %d gunicorn process(es); "
                        "per-worker connections, fds and heartbeats are missing for them. "
                        "Run as the same user as gunicorn or grant CAP_SYS_PTRACE "
                        "(see docs/configuration.md#privileges)", snap.permission_denied)
        return snap

    # --- step 1: /proc and sockets, in a thread -----------------------------

    def _measure(self) -> tuple[list[_MasterRaw], GunicornSnapshot]:
        found: Discovery = discover(self.procfs)
        snap = GunicornSnapshot(permission_denied=len(found.permission_denied),
                                truncated=found.truncated)
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
            raw = self._measure_master(m)
            netns = self.procfs.netns(m.proc.pid)
            if netns not in tables:
                tables[netns] = self._socket_table(netns, m.proc.pid, wanted)
            table = tables[netns]
            if table is not None:
                raw.socket_source = table.source
                _join_sockets(raw, table, self.options)
            raws.append(raw)
        sources = {t.source for t in tables.values() if t is not None}
        snap.socket_source = "netlink" if sources == {"netlink"} else \
            ("+".join(sorted(sources)) if sources else "none")
        return raws, snap

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

    def _measure_master(self, m: Master) -> _MasterRaw:
        p = m.proc
        settings = resolve(p.gargs or [], m.environ, self._config_reader(p.pid))
        start = self._boot_time + p.stat.starttime_ticks / CLK_TCK
        key = (p.pid, p.stat.starttime_ticks)
        if key not in self._versions:
            if len(self._versions) > 4 * MAX_KNOWN_APPS:
                self._versions.clear()
            self._versions[key] = self._gunicorn_version(p.pid, p.argv)
        raw = _MasterRaw(m, settings, self._versions[key], start)
        for w in m.workers:
            scan = m.worker_fds.get(w.pid)
            try:
                limit = self.procfs.fd_limit(w.pid)
            except OSError:
                limit = None
            mtime = ctime = None
            if scan is not None and scan.heartbeats:
                try:
                    st = self.procfs.fd_stat(w.pid, scan.heartbeats[0][0])
                    mtime, ctime = st.st_mtime, st.st_ctime
                except OSError:
                    pass
            raw.workers.append(_WorkerRaw(w.pid, w.stat, scan, m.worker_fd_errors.get(w.pid),
                                          limit, mtime, ctime))
        return raw

    def _config_reader(self, pid: int):
        cwd = self.procfs.path(pid, "cwd")

        def read(path: str) -> str | None:
            full = path if os.path.isabs(path) else os.path.join(cwd, path)
            if os.path.isabs(path):
                full = self.procfs.path(pid, "root") + path
            with open(full, "rb") as f:
                return f.read(1 << 20).decode("utf-8", "replace")
        return read

    def _gunicorn_version(self, pid: int, argv: list[str]) -> str:
        """The version in the name of the installed distribution's metadata directory.

        Where to look: site-packages directories of shared libraries the master has
        mapped (setproctitle, gevent, ... live there, and setproctitle erases argv),
        then the prefix of the script or interpreter in argv, then of /proc/PID/exe.
        """
        sites: list[str] = []
        try:
            maps = self.procfs.read_text(pid, "maps", limit=4 << 20)
            sites.extend(m.group(1) for m in SITE_DIR_RE.finditer(maps))
        except OSError:
            pass
        roots = [os.path.dirname(os.path.dirname(p)) for p in argv[:2] if os.path.isabs(p)]
        try:
            roots.append(os.path.dirname(os.path.dirname(os.readlink(self.procfs.path(pid, "exe")))))
        except OSError:
            pass
        for root in roots:
            sites.extend(glob.glob(os.path.join(root, "lib/python3*/site-packages"))[:4])
            sites.extend(glob.glob(os.path.join(root, "lib/python3*/dist-packages"))[:4])
            sites.append(os.path.join(root, "lib/python3/dist-packages"))
        prefix = self.procfs.path(pid, "root") if self.procfs.root == "/proc" else ""
        for site in list(dict.fromkeys(sites))[:16]:
            for hit in sorted(glob.glob(os.path.join(prefix + site, "gunicorn-*-info")))[:2]:
                m = DIST_INFO_RE.match(os.path.basename(hit))
                if m:
                    return m.group(1)
        return "unknown"

    # --- step 2: control socket, on the loop ---------------------------------

    async def _ask_control(self, raw: _MasterRaw) -> dict[str, dict]:
        if not self.options.control_socket or raw.control_path is None:
            return {}
        path = raw.control_path
        if not os.path.exists(path):
            alt = self.procfs.path(raw.master.proc.pid, "root") + path
            if os.path.exists(alt):
                path = alt
        try:
            return await control.query(path, ("config", "stats"), self.options.control_timeout)
        except (OSError, EOFError, asyncio.TimeoutError, control.ControlError, ValueError) as e:
            log.debug("control socket %s of master %d: %r", path, raw.master.proc.pid, e)
            return {}

    # --- step 3: merge -------------------------------------------------------

    def _build_app(self, raw: _MasterRaw, ctl: dict[str, dict]) -> AppSnapshot:
        s = raw.settings
        cfg = ctl.get("config") or {}
        for key in ("workers", "worker_class", "threads", "worker_connections", "timeout",
                    "keepalive", "bind", "proc_name", "max_requests"):
            if key in cfg and cfg[key] is not None:
                value = cfg[key]
                if key == "worker_class":
                    value = _class_path(str(value))
                s.set(key, value, "control_socket")
        stats = ctl.get("stats") or {}
        if isinstance(stats.get("workers_target"), int):
            s.set("workers", stats["workers_target"], "control_socket")

        worker_class = s.worker_class
        threads = int(s.get("threads") or 1)
        if worker_class == "sync" and threads > 1:
            worker_class = "gthread"  # gunicorn switches on its own
        wc = int(s.get("worker_connections") or 1000)
        capacity: float
        if worker_class == "sync":
            capacity = 1
        elif worker_class == "gthread":
            capacity = threads
        elif worker_class in ("uvicorn", "asgi"):
            capacity = float("inf")  # an asyncio loop accepts without limit
        else:
            capacity = wc

        app = AppSnapshot(
            app=self._app_name(raw, cfg.get("proc_name") if isinstance(cfg.get("proc_name"), str) else None),
            up=True,
            master_pid=raw.master.proc.pid,
            version=raw.version,
            worker_class=worker_class,
            workers_desired=int(s.get("workers") or 1),
            timeout=float(s.get("timeout") or 0),
            keepalive=float(s.get("keepalive") or 0),
            capacity=capacity,
            worker_connections=wc,
            threads=threads,
            backlog=int(s.get("backlog") or 2048),
            settings_source={k: s.sources[k] for k in
                             ("workers", "worker_class", "threads", "worker_connections",
                              "timeout", "keepalive", "backlog", "bind") if k in s.sources},
            control_socket=bool(ctl),
            master_start_time=raw.start_time,
            workers_spawned=stats.get("workers_spawned")
            if isinstance(stats.get("workers_spawned"), int) else None,
        )
        legacy = _legacy_heartbeat(raw.version)
        mono = time.monotonic()
        wall = time.time()
        match = _SocketMatcher.of(raw, self.options)  # once per master, not per worker
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
            active = closed = db = None
            db_tcp: list[tuple[str, int, str, int]] = []
            db_unix: list[tuple[int, int]] = []
            if w.scan is not None and raw.socket_source != "none":
                active, closed = _count_worker_sockets(raw, w, match, db_tcp, db_unix)
                db = len(db_tcp) + len(db_unix)
            app.workers.append(WorkerSnapshot(
                slot=-1, pid=w.pid,
                start_time=self._boot_time + st.starttime_ticks / CLK_TCK,
                rss_bytes=st.rss_pages * PAGE_SIZE,
                cpu_seconds=(st.utime_ticks + st.stime_ticks) / CLK_TCK,
                threads=st.num_threads,
                open_fds=w.scan.count if w.scan is not None else None,
                fd_limit=w.fd_limit,
                heartbeat_age=age,
                connections_active=active,
                connections_client_closed=closed,
                db_connections=db,
                db_tcp=db_tcp,
                db_unix=db_unix,
            ))
        for sock, worker_pid in raw.listeners:
            app.listeners.append(ListenerSnapshot(
                address=_listener_address(sock),
                kind="unix" if isinstance(sock, sockdiag.UnixSocket) else "tcp",
                queue_length=sock.rqueue if sock.rqueue >= 0 else None,
                queue_max=sock.wqueue if sock.wqueue >= 0 else None,
                worker_slot=worker_pid,  # replaced by the slot in _assign_slots
            ))
        return app

    def _app_name(self, raw: _MasterRaw, configured_name: str | None) -> str:
        p = raw.master.proc
        s = raw.settings
        name = None
        if p.title and p.title[0] == "master" and p.title[1]:
            name = p.title[1]
            # A USR2 master calls itself NAME.2 for the rest of its life; we say .2
            # only while the old master is still there (below). Its configured name
            # (control socket) or its exec-time GUNICORN_PID tell us it is one.
            if name.endswith(".2") and (
                    configured_name == name[:-2] or raw.master.upgraded_from is not None
                    or (raw.master.environ or {}).get("GUNICORN_PID")):
                name = name[:-2]
        name = name or s.get("proc_name") or s.app_module or "gunicorn"
        cmd = " ".join(p.argv)
        for pattern, mapped in self.options.app_names:
            if pattern.search(str(name)) or pattern.search(cmd):
                name = mapped
                break
        name = str(name)
        if raw.master.upgraded_from is not None:
            name += ".2"
        return name

    def _assign_slots(self, apps: list[AppSnapshot]) -> None:
        """Give each worker the lowest slot number its app has free.

        A recycled worker's replacement takes the freed slot, so `--max-requests`
        churn does not grow the number of series; the pid is in gunicorn_worker_info.
        """
        live = {a.app for a in apps if a.up}
        for name in list(self._slots):
            if name not in live:
                del self._slots[name]
        for a in apps:
            if not a.up:
                continue
            slots = self._slots.setdefault(a.app, {})
            pids = {w.pid for w in a.workers}
            for pid in list(slots):
                if pid not in pids:
                    del slots[pid]
            used = set(slots.values())
            free = (i for i in range(len(pids) + len(used) + 1) if i not in used)
            for w in sorted(a.workers, key=lambda w: w.start_time):
                if w.pid not in slots:
                    slots[w.pid] = next(free)
                w.slot = slots[w.pid]
            a.workers.sort(key=lambda w: w.slot)
            for lst in a.listeners:
                if lst.worker_slot is not None:
                    lst.worker_slot = slots.get(lst.worker_slot)

    def _forget(self, now: float) -> None:
        horizon = self.options.forget_after
        if horizon > 0:
            for name, seen in list(self._known.items()):
                if now - seen > horizon and name not in self.options.expected_apps:
                    del self._known[name]
        while len(self._known) > MAX_KNOWN_APPS:
            del self._known[min(self._known, key=self._known.__getitem__)]


def _master_key(raw: _MasterRaw) -> tuple[int, int]:
    return raw.master.proc.pid, raw.master.proc.stat.starttime_ticks


def _class_path(value: str) -> str:
    # show config renders the class object: "<class 'gunicorn.workers.sync.SyncWorker'>"
    m = re.search(r"'([\w.]+)'", value)
    return normalise_worker_class(m.group(1) if m else value)


def _legacy_heartbeat(version: str) -> bool | None:
    m = re.match(r"(\d+)\.", version)
    if not m:
        return None
    return int(m.group(1)) < 22


def _listener_address(sock) -> str:
    if isinstance(sock, sockdiag.UnixSocket):
        return f"unix:{sock.name}"
    if sock.family == socket.AF_INET6:
        return f"[{sock.local_addr}]:{sock.local_port}"
    return f"{sock.local_addr}:{sock.local_port}"


def _join_sockets(raw: _MasterRaw, table: SocketTable, options: GunicornOptions) -> None:
    """Find listeners and the control socket among the sockets the master/workers hold."""
    m = raw.master
    master_inodes = set(m.fds.socket_inodes) if m.fds else set()
    worker_inodes: dict[int, set[int]] = {
        w.pid: set(w.scan.socket_inodes) if w.scan else set() for w in raw.workers}
    held_by_workers = set().union(*worker_inodes.values()) if worker_inodes else set()
    ctl_path = raw.settings.get("control_socket")
    for ino in sorted(master_inodes):
        sock = table.unix.get(ino) or table.inet.get(ino)
        if sock is None or sock.state != TCP_LISTEN:
            continue
        if isinstance(sock, sockdiag.UnixSocket):
            name = sock.name or ""
            is_ctl = (ino not in held_by_workers) and (
                name == ctl_path or name.endswith(".ctl"))
            if is_ctl:
                if raw.settings.get("control_socket_disable") is not True:
                    raw.control_path = name
                continue
        raw.listeners.append((sock, None))
    # --reuse-port: every worker binds its own listeners
    for w in raw.workers:
        for ino in sorted(worker_inodes[w.pid] - master_inodes):
            sock = table.unix.get(ino) or table.inet.get(ino)
            if sock is not None and sock.state == TCP_LISTEN:
                raw.listeners.append((sock, w.pid))
    for w in raw.workers:
        for ino in worker_inodes[w.pid]:
            u = table.unix.get(ino)
            if u is not None:
                w.sockets_unix.append(u)
                if u.peer:
                    peer = table.unix.get(u.peer)
                    if peer is not None and peer.name:
                        raw.unix_peers[u.peer] = peer.name
                continue
            i = table.inet.get(ino)
            if i is not None:
                w.sockets_inet.append(i)


@dataclass(frozen=True)
class _SocketMatcher:
    """What tells a master's client connections and DB connections apart."""

    unix_names: frozenset[str]          # paths of its unix listeners
    tcp_ports: dict[int, set[str]]      # port -> local addresses of its TCP listeners
    db_ports: frozenset[int]
    db_paths: tuple[str, ...]

    @classmethod
    def of(cls, raw: _MasterRaw, options: GunicornOptions) -> "_SocketMatcher":
        tcp_ports: dict[int, set[str]] = {}
        for s, _ in raw.listeners:
            if isinstance(s, sockdiag.InetSocket):
                tcp_ports.setdefault(s.local_port, set()).add(s.local_addr)
        return cls(frozenset(s.name for s, _ in raw.listeners
                             if isinstance(s, sockdiag.UnixSocket) and s.name),
                   tcp_ports, frozenset(options.db_ports), options.db_socket_paths)


def _count_worker_sockets(raw: _MasterRaw, w: _WorkerRaw, match: _SocketMatcher,
                          db_tcp: list, db_unix: list) -> tuple[int, int]:
    """(active, client_closed) client connections; DB connections go into db_tcp/db_unix."""
    unix_names, tcp_ports, db_ports = match.unix_names, match.tcp_ports, match.db_ports
    active = closed = 0
    for u in w.sockets_unix:
        if u.state == TCP_LISTEN:
            continue
        if u.name and u.name in unix_names:
            if u.shutdown > 0 and u.shutdown & 1:
                closed += 1
            else:
                active += 1
            continue
        peer_name = raw.unix_peers.get(u.peer) if u.peer else None
        if peer_name and _is_db_socket(peer_name, db_ports, match.db_paths):
            db_unix.append((u.inode, u.peer))
    for i in w.sockets_inet:
        if i.state not in (TCP_ESTABLISHED, TCP_CLOSE_WAIT):
            continue
        addrs = tcp_ports.get(i.local_port)
        if addrs is not None and (addrs & WILDCARD_ADDRS or i.local_addr in addrs
                                  or _v4_mapped(i.local_addr) in addrs):
            if i.state == TCP_CLOSE_WAIT:
                closed += 1
            else:
                active += 1
        elif i.remote_port in db_ports:
            db_tcp.append((i.local_addr, i.local_port, i.remote_addr, i.remote_port))
    return active, closed


def _v4_mapped(addr: str) -> str:
    return addr[7:] if addr.startswith("::ffff:") else addr


def _is_db_socket(name: str, ports: frozenset[int], paths: tuple[str, ...]) -> bool:
    if name in paths:
        return True
    m = PGSQL_SOCKET_RE.search(name)
    return bool(m and int(m.group(1)) in ports)


def _disambiguate(apps: list[AppSnapshot]) -> set[str]:
    """Two unrelated masters with the same name get their first listener appended."""
    renamed: set[str] = set()
    by_name: dict[str, list[AppSnapshot]] = {}
    for a in apps:
        by_name.setdefault(a.app, []).append(a)
    for name, group in by_name.items():
        if len(group) < 2:
            continue
        for a in group:
            where = a.listeners[0].address if a.listeners else f"pid{a.master_pid}"
            a.app = f"{name}@{where}"
            renamed.add(a.app)
    return renamed
