"""Turning what was read about one master (`MasterRaw`, exporter/gunicorn/measure.py)
into its `AppSnapshot`: settings merged with the control socket's proven answer,
capacity, workers with their connections and heartbeat ages, listeners. No I/O.
"""

from __future__ import annotations

import os
import time

from exporter.gunicorn import dependencies, heartbeat, join
from exporter.gunicorn.measure import CLK_TCK, MasterRaw, class_path
from exporter.gunicorn.settings import Settings
from exporter.labels import bounded
from exporter.linux import sockdiag
from exporter.snapshot import AppSnapshot, ListenerSnapshot, WorkerSnapshot

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
# the settings the control socket's `show config` answer may override
CONTROL_SETTINGS = ("workers", "worker_class", "threads", "worker_connections", "timeout",
                    "keepalive", "bind", "proc_name", "max_requests", "backlog")
SOURCE_SETTINGS = ("workers", "worker_class", "threads", "worker_connections", "timeout",
                   "keepalive", "backlog", "bind")


def _count(value) -> int | None:
    """A counter of `show stats`: a non-negative integer below 2**53, else None."""
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**53:
        return None
    return value


def build_app(raw: MasterRaw, ctl: dict[str, dict], *, name_of, user: str, boot_time: float,
              db_ports, db_paths, max_peers: int = 10) -> AppSnapshot:
    """One running master's AppSnapshot: its settings (the control socket's proven answer
    `ctl` wins), workers with their connections and heartbeat age, and listeners.
    `name_of(raw, configured_name)` names the app (the collector knows USR2 history)."""
    cfg, counters = _merge_control_answer(raw.settings, ctl)
    worker_class = _worker_class_in_force(raw.settings)
    app = _app(raw, ctl, cfg, counters, worker_class, name_of=name_of, user=user)
    joined = raw.joined
    match = join.SocketMatcher.of(joined.listeners if joined else [], db_ports, db_paths)
    deps = []       # per worker: (outbound connections, those that wait)
    legacy = heartbeat.legacy_version(raw.version)
    clocks = (time.monotonic(), time.time())
    for w in raw.workers:
        worker, out, waiting = _worker(w, raw, worker_class, match, legacy, clocks, boot_time)
        deps.append((out, waiting))
        app.workers.append(worker)
    app.dependencies = dependencies.by_peer(deps, worker_class == "sync", max_peers)
    app.listeners.extend(_listeners(raw))
    return app


def _merge_control_answer(s: Settings, ctl: dict[str, dict]) -> tuple[dict, tuple]:
    """Write the control socket's `show config` and `show stats` answers over the settings
    read from the command line and files; (the config answer, its spawned, killed and
    reloads counters)."""
    cfg = ctl.get("config") or {}
    for key in CONTROL_SETTINGS:
        value = cfg.get(key)
        if value is not None:
            if key == "worker_class":
                value = class_path(str(value)[:512])
            s.set(key, value, "control_socket")
    stats = ctl.get("stats") or {}
    target = stats.get("workers_target")
    if isinstance(target, int) and not isinstance(target, bool):
        s.set("workers", target, "control_socket")
    return cfg, tuple(_count(stats.get(k)) for k in
                      ("workers_spawned", "workers_killed", "reloads"))


def _worker_class_in_force(s: Settings) -> str | None:
    """The worker class as gunicorn runs it: sync with --threads > 1 is gthread; None when
    --threads is unknown (sync or gthread)."""
    worker_class = s.worker_class
    threads = s.get("threads")
    if worker_class == "sync" and isinstance(threads, int) and threads > 1:
        worker_class = "gthread"  # gunicorn switches on its own
    if worker_class == "sync" and threads is None:
        worker_class = None       # sync, or gthread if --threads > 1: not known
    return worker_class


def _app(raw: MasterRaw, ctl: dict[str, dict], cfg: dict, counters: tuple,
         worker_class: str | None, *, name_of, user: str) -> AppSnapshot:
    """The app's snapshot without workers and listeners: name, settings, master."""
    s = raw.settings
    threads = s.get("threads")
    wc = s.get("worker_connections")
    p = raw.master.proc
    name = name_of(raw, cfg.get("proc_name") if isinstance(cfg.get("proc_name"), str) else None)
    backlog, backlog_source = _backlog_in_force(raw, s)
    sources = {k: s.sources.get(k, "unknown") for k in SOURCE_SETTINGS}
    sources["backlog"] = backlog_source
    spawned, killed, reloads = counters
    return AppSnapshot(
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
        workers_killed=killed,
        reloads=reloads,
        user=user,
        uid=p.uid,
        errors=list(raw.errors),
        transient=raw.master.upgraded_from is not None,
        somaxconn=raw.somaxconn,
        listen_overflows=raw.listen_counters.get("ListenOverflows"),
        listen_drops=raw.listen_counters.get("ListenDrops"),
        pod=raw.pod,
        netns=raw.netns if raw.foreign_netns else None,
        master_start_ticks=p.stat.starttime_ticks,
        master_sockets=frozenset(raw.master.fds.socket_inodes) if raw.master.fds else frozenset(),
    )


def _worker(w, raw: MasterRaw, worker_class: str | None, match, legacy: bool,
            clocks: tuple[float, float], boot_time: float) -> tuple[WorkerSnapshot, list, list]:
    """One worker's snapshot, its outbound connections and those that wait for a reply."""
    age, beat_file = _heartbeat(w, legacy, clocks)
    joined = raw.joined
    read = w.sockets is not None and joined is not None
    conns = join.count_worker_sockets(w.sockets, joined.unix_peers, match, raw.idle) \
        if read else None
    out = dependencies.outbound(w.sockets, joined.unix_peers, match) if read else []
    in_request = worker_class == "sync" and conns is not None and \
        conns.active + conns.client_closed > 0
    waiting = dependencies.waits(out, raw.dep_times, w.wchan, age if in_request else None)
    stuck = dependencies.longest(waiting)
    st = w.stat
    return WorkerSnapshot(
        slot=-1, pid=w.pid,
        start_time=boot_time + st.starttime_ticks / CLK_TCK,
        rss_bytes=st.rss_pages * PAGE_SIZE,
        cpu_seconds=(st.utime_ticks + st.stime_ticks) / CLK_TCK,
        threads=st.num_threads,
        open_fds=w.scan.count if w.scan is not None else None,
        fd_limit=w.fd_limit,
        heartbeat_age=age,
        heartbeat_file=beat_file,
        connections_active=conns.active if conns else None,
        connections_client_closed=conns.client_closed if conns else None,
        connections_idle=conns.idle if conns and raw.idle_measured else None,
        db_connections=len(conns.db_tcp) + len(conns.db_unix) if conns else None,
        db_tcp=conns.db_tcp if conns else [],
        db_unix=conns.db_unix if conns else [],
        dependency_wait=None if stuck is None else (stuck.peer, stuck.seconds),
        outbound=tuple(out),
    ), out, waiting


def _heartbeat(w, legacy: bool, clocks: tuple[float, float]):
    """(age in seconds, HeartbeatFile) of a worker's heartbeat file, (None, None) unread."""
    if w.heartbeat is None:
        return None, None
    mono, wall = clocks
    fd, hst = w.heartbeat
    monotonic = heartbeat.is_monotonic(hst.st_mtime, legacy, mono)
    age = heartbeat.age(heartbeat.last_beat(hst.st_mtime, hst.st_ctime, monotonic),
                        monotonic, mono, wall)
    return age, heartbeat.HeartbeatFile(fd, hst.st_dev, hst.st_ino, monotonic)


def _listeners(raw: MasterRaw) -> list[ListenerSnapshot]:
    """The app's listening sockets, each address once per worker (a repeat gets a "+")."""
    joined = raw.joined
    names: set[tuple[str, int | None]] = set()
    listeners = []
    for sock, worker_pid in (joined.listeners if joined else []):
        address = bounded(join.listener_address(sock), 256)
        while (address, worker_pid) in names:  # the same address bound twice
            address += "+"
        names.add((address, worker_pid))
        listeners.append(ListenerSnapshot(
            address=address,
            kind="unix" if isinstance(sock, sockdiag.UnixSocket) else "tcp",
            queue_length=sock.rqueue,   # None: unknown
            queue_max=sock.wqueue,
            worker_slot=worker_pid,  # replaced by the slot once slots are assigned
            drops=sock.drops if isinstance(sock, sockdiag.InetSocket) else None,
            inode=sock.inode,
        ))
    return listeners


def name_from(title, settings: Settings, argv: list[str], app_names,
              configured_name: str | None = None) -> str:
    """The app name: the process title's [NAME], the configured proc_name, the app
    module, mapped by --gunicorn.app-name, capped in length."""
    name = (title[1] if title and title[1] else None) or configured_name \
        or settings.get("proc_name") or settings.app_module or "gunicorn"
    name = str(name)
    cmd = " ".join(argv)[:4096]
    for pattern, mapped in app_names:
        if pattern.search(name[:4096]) or pattern.search(cmd):
            name = mapped
            break
    return bounded(name)


def _backlog_in_force(raw: MasterRaw, s: Settings) -> tuple[int | None, str]:
    """The listen backlog of the app's listeners as the kernel has it, else the setting.

    Sockets inherited from systemd (or a USR2 parent) keep the backlog they were created
    with; gunicorn does not call listen() on them again.
    """
    joined = raw.joined
    limits = [sock.wqueue for sock, _ in (joined.listeners if joined else [])
              if sock.wqueue is not None and raw.socket_source == "netlink"]
    if limits:
        return max(limits), "kernel"
    backlog = s.get("backlog")
    return backlog, s.sources.get("backlog", "unknown")
