"""Reading what the kernel says about the gunicorn masters (the I/O part of a collection,
run in a thread): discovery, each master's settings, gunicorn version and workers' /proc
files, the socket tables joined with the fd tables, and which keep-alive connections are
idle. The result is plain data (`MasterRaw`); `exporter/gunicorn/appsnap.py` turns it into
`AppSnapshot`s and `exporter/collectors/gunicorn.py` keeps what lasts across scrapes.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field

from exporter.gunicorn import join
from exporter.gunicorn.connstates import ConnectionStates
from exporter.gunicorn.heartbeat import SAFE_FSTYPES
from exporter.gunicorn.discovery import (Discovery, Master, ProcfsProbe, discover,
                                         scan_processes)
from exporter.gunicorn.settings import (MAX_CONFIG_BYTES, Settings, evaluate_config,
                                        normalise_worker_class, resolve)
from exporter.gunicorn.version import MAX_MAPS_BYTES, find_version
from exporter.labels import bounded
from exporter.linux import procnet, sockdiag
from exporter.linux.cgroup import PodIdentity, parse_pod_identity
from exporter.linux.netns import NetnsSockets
from exporter.linux.pathwalk import PathWalker
from exporter.linux.procfs import FdScan, ProcFS
from exporter.linux.sockdiag import SocketTable, TcpTimes
from exporter.snapshot import GunicornSnapshot

log = logging.getLogger(__name__)

CLK_TCK = os.sysconf("SC_CLK_TCK")
MAX_CONFIG_CACHE = 1024


@dataclass
class WorkerRaw:
    pid: int
    stat: object
    scan: FdScan | None
    fd_limit: int | None
    heartbeat: tuple[int, os.stat_result] | None    # (fd, stat) of its heartbeat file
    sockets: join.WorkerSockets | None = None
    wchan: str | None = None        # where it sleeps: read for sync workers with outbound connections


@dataclass
class MasterRaw:
    master: Master
    settings: Settings
    version: str = "unknown"
    start_time: float = 0.0
    workers: list[WorkerRaw] = field(default_factory=list)
    joined: join.Joined | None = None
    socket_source: str = "none"
    errors: list[str] = field(default_factory=list)
    idle_measured: bool = False     # idle connections told apart (connstates.py)
    idle: set[int] = field(default_factory=set)   # inodes of idle client connections
    dep_times: dict[int, TcpTimes] = field(default_factory=dict)  # outbound TCP: tcp_info
    netns: int | None = None        # the master's network namespace (inode)
    foreign_netns: bool = False     # not the exporter's own
    somaxconn: int | None = None    # net.core.somaxconn of that namespace
    listen_counters: dict[str, int] = field(default_factory=dict)  # its TcpExt Listen*
    pod: PodIdentity | None = None  # container / pod, from /proc/PID/cgroup

    @property
    def key(self) -> tuple[int, int]:
        return self.master.proc.key


def class_path(value: str) -> str:
    """A worker class as `show config` renders it ("<class 'gunicorn.workers.sync.SyncWorker'>"),
    normalised."""
    import re
    m = re.search(r"'([\w.]{1,200})'", value)
    return normalise_worker_class(m.group(1) if m else value)


# Seconds a worker's soft fd limit is used before /proc/PID/limits is read again.
FD_LIMIT_REFRESH = 60.0
# Reads that may skip the TCP established hash on the strength of one complete read.
NOT_INET_READS = 8


class Measurer(ConnectionStates):
    """Reads one collection; keeps only caches keyed by master (pid, start time)."""

    def __init__(self, procfs: ProcFS, *, users=None, max_masters: int = 256,
                 read_sockets=None, control_answers: dict | None = None):
        self.procfs = procfs
        self.users = users
        self.max_masters = max_masters
        self._read_sockets = read_sockets or sockdiag.read_all
        self._tcp_idle = sockdiag.tcp_idle
        self._tcp_times = sockdiag.tcp_times
        # the collector's last proven control socket answers (read for the worker class)
        self.control_answers = control_answers if control_answers is not None else {}
        self._versions: dict[tuple[int, int], str] = {}
        # master -> {(dev, ino, mtime, size) of its config file: evaluation}
        self._configs: dict[tuple[int, int], dict[tuple, object]] = {}
        # worker (pid, start time) -> (soft fd limit, when read)
        self._fd_limits: dict[tuple[int, int], tuple[int | None, float]] = {}
        # (worker (pid, start time), heartbeat fd) -> its file system is safe to stat
        self._beat_fs: dict[tuple[tuple[int, int], int], bool] = {}
        self._own_netns = self.procfs.netns("self")
        self._facts: dict[int | None, tuple] = {}   # netns -> (somaxconn, TcpExt Listen*)
        # per network namespace: socket inodes held by gunicorn processes that the last
        # complete read found to be neither unix nor TCP (UDP, netlink); while every held
        # inode is a unix socket, a TCP listener or one of these, the next reads skip the
        # walk of the kernel's whole TCP established hash (sockdiag.read_all). A TCP socket
        # not yet connected (state CLOSE) is in no hash and looks the same: the memory
        # lasts NOT_INET_READS reads, so such a socket is seen at most that many later.
        self._not_inet: dict[int | None, tuple[frozenset[int], int]] = {}
        # sock_diag sockets inside other network namespaces (pods): exporter/linux/netns.py
        self.netns_sockets = NetnsSockets(self.procfs.root)
        self._somaxconn: dict[int, int | None] = {}
        self.netns_denied = False       # this scrape fell back to /proc/PID/net for lack of privileges
        self._denied_logged = False
        try:
            self.boot_time = self.procfs.boot_time()
        except (OSError, ValueError):
            self.boot_time = time.time() - time.monotonic()

    def forget(self, live: set[tuple[int, int]]) -> None:
        for cache in (self._configs,):
            for key in list(cache):
                if key not in live:
                    del cache[key]

    def measure(self, known_workers: set, previous_masters: set
                ) -> tuple[list[MasterRaw], Discovery, GunicornSnapshot]:
        """Discover, read every master and its workers, join the socket tables."""
        procs = scan_processes(self.procfs)
        found = discover(procs, ProcfsProbe(self.procfs), known_workers=known_workers,
                         previous_masters=previous_masters, users=self.users,
                         max_masters=self.max_masters)
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
        self.netns_denied = False
        self._facts = {}        # per namespace, this scrape
        for m in found.masters:
            raw = MasterRaw(m, Settings())
            try:
                self._measure_master(raw)
            except Exception as e:  # a hostile or vanished master costs itself only
                raw.errors.append(f"reading /proc: {type(e).__name__}: {str(e)[:120]}")
            try:
                netns = raw.netns = self.procfs.netns(m.proc.pid)
                raw.foreign_netns = netns is not None and netns != self._own_netns
                if netns not in tables:
                    tables[netns] = table = self._socket_table(netns, m.proc.pid, wanted)
                    if table is not None:
                        self._remember_not_inet(netns, table, wanted)
                table = tables[netns]
                self._namespace_facts(raw)
                if table is not None:
                    raw.socket_source = table.source
                    self._join(raw, table)
            except Exception as e:
                raw.errors.append(f"joining sockets: {type(e).__name__}: {str(e)[:120]}")
            raws.append(raw)
        self.netns_sockets.keep_only({ns for ns in tables if ns is not None})
        workers = {w.key for m in found.masters for w in m.workers}
        self._fd_limits = {k: v for k, v in self._fd_limits.items() if k in workers}
        self._beat_fs = {k: v for k, v in self._beat_fs.items() if k[0] in workers}
        for per_netns in (self._not_inet, self._somaxconn):   # namespaces gone
            for ns in [ns for ns in per_netns if ns not in tables]:
                del per_netns[ns]
        snap.netns_denied = self.netns_denied
        sources = {t.source for t in tables.values() if t is not None}
        snap.socket_source = "netlink" if sources == {"netlink"} else \
            ("+".join(sorted(sources)) if sources else "none")
        self._find_idle(raws)
        self._find_waits(raws)
        return raws, found, snap

    def _worker_class_hint(self, raw: MasterRaw) -> str | None:
        cfg = self.control_answers.get(raw.key, {}).get("config") or {}
        if cfg.get("worker_class"):
            return class_path(str(cfg["worker_class"])[:512])
        cls = raw.settings.worker_class
        threads = raw.settings.get("threads")
        if cls == "sync" and isinstance(threads, int) and threads > 1:
            return "gthread"
        return cls

    def _remember_not_inet(self, netns: int | None, table: SocketTable, wanted: set[int]) -> None:
        if table.source != "netlink":
            self._not_inet.pop(netns, None)
        elif table.inet_complete:
            self._not_inet[netns] = (frozenset(
                ino for ino in wanted if ino not in table.unix and ino not in table.inet),
                NOT_INET_READS)
        else:   # what is still held, one read older
            known, left = self._not_inet.get(netns, (frozenset(), 0))
            self._not_inet[netns] = (known & wanted, left - 1)

    def _socket_table(self, netns: int | None, pid: int, wanted: set[int]) -> SocketTable | None:
        known, left = self._not_inet.get(netns, (frozenset(), 0))
        not_inet = known if left > 0 else frozenset()
        if netns is not None and netns == self._own_netns and self.procfs.root == "/proc":
            try:
                return self._read_sockets(wanted=wanted, not_inet=not_inet)
            except OSError as e:
                log.debug("netlink socket dump failed (%s); reading /proc/net", e)
        elif netns is not None:
            # another namespace (a pod): the same netlink dump, through a socket opened
            # inside it (PROC/PID/ns/net, also under --path.procfs=/host/proc);
            # /proc/PID/net only when that is not allowed
            try:
                sock, somaxconn = self.netns_sockets.get(netns, pid)
                self._somaxconn[netns] = somaxconn
                return sockdiag.read_all(wanted=wanted, sock=sock, not_inet=not_inet)
            except PermissionError as e:
                self.netns_denied = True
                if not self._denied_logged:
                    self._denied_logged = True
                    log.warning("cannot enter the network namespaces of other masters (%s): "
                                "their sockets are read from /proc/PID/net, without unix "
                                "queue lengths or TCP backlog limits; grant CAP_SYS_ADMIN "
                                "(docs/kubernetes.md)", e)
            except OSError as e:
                self.netns_sockets.discard(netns)
                log.debug("netlink in network namespace %s failed (%s); reading /proc/net", netns, e)
        try:
            return procnet.read_table(self.procfs.path(pid, "net"))
        except OSError as e:
            log.debug("cannot read socket tables of pid %d: %s", pid, e)
            return None

    def _namespace_facts(self, raw: MasterRaw) -> None:
        """somaxconn and the TCP listen counters of the master's network namespace (read
        once per namespace and scrape)."""
        known = self._facts.get(raw.netns)
        if known is not None:
            raw.somaxconn, raw.listen_counters = known
            return
        pid = raw.master.proc.pid
        if raw.foreign_netns:
            raw.somaxconn = self._somaxconn.get(raw.netns)
        else:
            try:
                raw.somaxconn = self.procfs.somaxconn()
            except (OSError, ValueError):
                pass
        try:
            tcpext = self.procfs.tcpext(pid)
        except (OSError, ValueError):
            tcpext = {}
        raw.listen_counters = {k: v for k, v in tcpext.items()
                               if k in ("ListenOverflows", "ListenDrops") and 0 <= v < 1 << 63}
        self._facts[raw.netns] = (raw.somaxconn, raw.listen_counters)

    def _measure_master(self, raw: MasterRaw) -> None:
        m = raw.master
        p = m.proc
        raw.start_time = self.boot_time + p.stat.starttime_ticks / CLK_TCK
        try:
            raw.pod = parse_pod_identity(self.procfs.read_text(p.pid, "cgroup"))
        except OSError:
            pass
        try:
            raw.settings = resolve(p.gargs, m.environ, self._config_reader(m),
                                   cpu_count=os.cpu_count(),
                                   affinity=p.status.cpus_allowed if p.status else None)
        except Exception as e:
            raw.settings = Settings()
            raw.settings.forget_all("settings could not be worked out")
            raw.errors.append(f"settings: {type(e).__name__}: {str(e)[:120]}")
        if raw.key not in self._versions:
            if len(self._versions) > 4 * self.max_masters:
                self._versions.clear()
            try:
                self._versions[raw.key] = self._gunicorn_version(m)
            except OSError:
                self._versions[raw.key] = "unknown"
        raw.version = self._versions[raw.key]
        now = time.monotonic()
        for w in m.workers:
            scan = m.worker_fds.get(w.pid)
            limit = self._fd_limit(w, now)
            beat = None
            if scan is not None and scan.heartbeats and self._beat_safe(w, scan.heartbeats[0][0]):
                fd = scan.heartbeats[0][0]
                try:
                    beat = (fd, self.procfs.fd_stat(w.pid, fd))
                except OSError:
                    pass
            raw.workers.append(WorkerRaw(w.pid, w.stat, scan, limit, beat))

    def _beat_safe(self, w, fd: int) -> bool:
        """Whether the worker's heartbeat file lies on a file system whose times the
        kernel holds itself (heartbeat.SAFE_FSTYPES): on a FUSE or network one, the
        stat that never asks the server (procfs.fd_stat) answers with cached times, so
        no age is read from it. Known per worker and fd; a file swapped in later cannot
        stall the reader either way."""
        key = (w.key, fd)
        safe = self._beat_fs.get(key)
        if safe is None:
            try:
                safe = self.procfs.fd_fstype(w.pid, fd) in SAFE_FSTYPES
            except OSError:
                return False
            self._beat_fs[key] = safe
        return safe

    def _fd_limit(self, w, now: float) -> int | None:
        """A worker's soft fd limit, read again every FD_LIMIT_REFRESH seconds (it changes
        only by prlimit(1) from outside; /proc/PID/limits is the largest file read per
        worker)."""
        known = self._fd_limits.get(w.key)
        if known is not None and 0 <= now - known[1] < FD_LIMIT_REFRESH:
            return known[0]
        try:
            limit = self.procfs.fd_limit(w.pid)
        except (OSError, ValueError):
            return None
        self._fd_limits[w.key] = (limit, now)     # kept for live workers only (measure())
        return limit

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

    def _join(self, raw: MasterRaw, table: SocketTable) -> None:
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
