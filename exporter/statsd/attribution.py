"""Which gunicorn app sent a datagram, proven by the kernel: source address -> the UDP
socket bound to it (exporter/statsd/udptable.py) -> the gunicorn process whose fd table
holds that socket's inode.

gunicorn's statsd client creates its socket once, in the master's logger, before it
forks: the master and every worker of an app share one socket and so one source port
(the port names the app, not the worker). A socket an app creates itself after the fork
is held by one worker; then the worker's slot is known too.

`Resolver.run` works in a thread, once per collection (never per packet), on a plan made
by exporter/statsd/senders.py:

* verify: each proven sender's address still maps to the same inode and the process
  found holding it still has the same start time (else it is looked up again);
* lookup: new senders, and unknown ones due for a retry: one read of the UDP table,
  then the fd tables of the gunicorn processes of the last collection (`ProcMap`),
  masters first, the socket's owner uid first, until every wanted inode is found;
* adopt: the UDP sockets gunicorn masters hold that are connected to the receiver (what
  gunicorn's statsd client does) are proven senders from this collection on, whether or
  not they sent yet, and take no slot of the sender table: a local user who floods the
  table with senders from churned ports cannot keep an app from being attributed.

A sender's address matches a socket bound to exactly that address and port, or bound to
the wildcard address when the datagram came from loopback or the listening address; a
connected socket must be connected to the receiving port. No match: 'gone' (another
network namespace or host, or closed). Two matches (SO_REUSEPORT): not proven.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from exporter.linux.procfs import ProcFS
from exporter.snapshot import GunicornSnapshot
from exporter.statsd.senders import Route
from exporter.statsd.udptable import UdpSocket, plain_address, read_udp

log = logging.getLogger(__name__)

MAX_FDS_PER_RUN = 200_000
MAX_ADOPTED = 1024
WILDCARD = ("0.0.0.0", "::")


@dataclass(frozen=True, slots=True)
class Proc:
    pid: int
    app: str
    slot: int | None      # None: the master
    uid: int
    # a master's start (clock ticks) and the socket inodes the gunicorn collector found
    # in its fd table; None: not known, the resolver scans the fd table itself
    start: int | None = None
    sockets: frozenset[int] = frozenset()


@dataclass
class ProcMap:
    """The gunicorn processes of one collection (masters first)."""
    generation: int = 0
    procs: list[Proc] = field(default_factory=list)
    by_pid: dict[int, Proc] = field(default_factory=dict)
    apps: frozenset[str] = frozenset()


def proc_map(snap: GunicornSnapshot, generation: int) -> ProcMap:
    masters, workers = [], []
    for a in snap.apps:
        if not a.up or not a.master_pid:
            continue
        # a USR2 master is NAME.2 while the old one runs: its requests are the app's
        app = a.app[:-2] if a.transient and a.app.endswith(".2") else a.app
        masters.append(Proc(a.master_pid, app, None, a.uid, a.master_start_ticks,
                            a.master_sockets))
        workers += [Proc(w.pid, app, w.slot, a.uid) for w in a.workers]
    procs = masters + workers
    return ProcMap(generation, procs, {p.pid: p for p in procs},
                   frozenset(a.app for a in snap.apps))


@dataclass
class Outcome:
    results: dict[object, tuple[str, Route | None]] | None   # None: no socket table
    own_drops: int | None = None
    adopted: dict[object, Route] = field(default_factory=dict)   # addr -> route
    processes_scanned: int = 0
    fds_scanned: int = 0
    seconds: float = 0.0


def _is_local(host: str, listen_host: str | None) -> bool:
    return host.startswith("127.") or host == "::1" or host == listen_host


def match(table: dict[int, list[UdpSocket]], host: str, port: int, listen_host: str | None,
          listen_port: int, own_inode: int | None = None) -> tuple[str, UdpSocket | None]:
    """('one', socket) | ('none', None) | ('ambiguous', None) for a datagram's source
    address; `table`: local port -> sockets (pure)."""
    host = plain_address(host)
    cands = [s for s in table.get(port, ()) if s.inode != own_inode
             and (s.remote_port == 0 or s.remote_port == listen_port)]
    exact = [s for s in cands if plain_address(s.local_addr) == host]
    if not exact and _is_local(host, listen_host):
        exact = [s for s in cands if s.local_addr in WILDCARD]
    if len(exact) == 1:
        return "one", exact[0]
    return ("ambiguous" if exact else "none"), None


class Resolver:
    def __init__(self, procfs: ProcFS, listen_host: str | None, listen_port: int,
                 proc_net: str = "/proc/net"):
        self.procfs = procfs
        self.listen_host = listen_host
        self.listen_port = listen_port
        self.proc_net = proc_net
        self._warned = False

    def _start(self, pid: int) -> int | None:
        try:
            return self.procfs.stat(pid).starttime_ticks
        except (OSError, ValueError, IndexError):
            return None

    def run(self, verify: list[tuple[object, Route]], lookup: list[object],
            pmap: ProcMap | None, own_inode: int | None) -> Outcome:
        t0 = time.perf_counter()
        ports = {a[1] for a, _r in verify} | {a[1] for a in lookup}
        held = self._master_sockets(pmap)                  # inode -> (proc, start)
        try:
            sockets, _source = read_udp(ports, set(held) | ({own_inode} if own_inode else set()),
                                       proc_net=self.proc_net)
        except OSError as e:
            if not self._warned:
                self._warned = True
                log.warning("statsd: cannot read the UDP socket table (%s): senders are "
                            "not attributed", e)
            return Outcome(None, seconds=time.perf_counter() - t0)
        own = sockets.get(own_inode) if own_inode else None
        by_port: dict[int, list[UdpSocket]] = {}
        for s in sockets.values():
            by_port.setdefault(s.local_port, []).append(s)
        out = Outcome({}, own.drops if own else None)
        results = out.results
        for ino, (p, start) in held.items():
            s = sockets.get(ino)
            if s is not None and s.remote_port == self.listen_port and s.local_port and \
                    len(out.adopted) < MAX_ADOPTED:
                out.adopted[(plain_address(s.local_addr), s.local_port)] = \
                    Route(ino, p.pid, start, p.app, p.slot)
        todo: dict[int, list[object]] = {}     # inode -> senders to find its holder for
        owners: dict[int, int] = {}            # inode -> socket owner uid
        for addr, route in verify:
            kind, s = match(by_port, addr[0], addr[1], self.listen_host, self.listen_port,
                            own_inode)
            if kind == "none":
                results[addr] = ("gone", None)
            elif kind == "one" and s.inode == route.inode \
                    and self._start(route.pid) == route.start:
                p = pmap.by_pid.get(route.pid) if pmap else None
                if p is not None and p.app != route.app:   # renamed (a USR2 master's .2)
                    route = Route(route.inode, route.pid, route.start, p.app, p.slot)
                results[addr] = ("kernel", route)
            elif kind == "one":
                todo.setdefault(s.inode, []).append(addr)
                owners[s.inode] = s.uid
            else:
                results[addr] = ("not_found", None)
        for addr in lookup:
            kind, s = match(by_port, addr[0], addr[1], self.listen_host, self.listen_port,
                            own_inode)
            if kind == "one":
                todo.setdefault(s.inode, []).append(addr)
                owners[s.inode] = s.uid
            else:
                results[addr] = ("gone" if kind == "none" else "not_found", None)
        if todo:
            found = self._holders(set(todo), set(owners.values()), pmap, out)
            for ino, addrs in todo.items():
                hit = found.get(ino)
                for addr in addrs:
                    results[addr] = ("kernel", hit) if hit else ("not_found", None)
        out.seconds = time.perf_counter() - t0
        return out

    def _master_sockets(self, pmap: ProcMap | None) -> dict[int, tuple[Proc, int]]:
        """inode -> (master, its start time) of every socket the masters hold: as the
        gunicorn collector's last fd scan of each found them (the pid still naming the
        same process), or from a scan of its own when the map has no such scan."""
        out: dict[int, tuple[Proc, int]] = {}
        for p in (pmap.procs if pmap else ()):
            if p.slot is not None:
                continue
            start = self._start(p.pid)
            if p.start is not None:
                if start == p.start:
                    for ino in p.sockets:
                        out[ino] = (p, start)
                continue
            try:
                scan = self.procfs.scan_fds(p.pid, limit=4096)
            except OSError:
                continue
            if start is not None and self._start(p.pid) == start:
                for ino in scan.socket_inodes:
                    out[ino] = (p, start)
        return out

    def _holders(self, wanted: set[int], uids: set[int], pmap: ProcMap | None,
                 out: Outcome) -> dict[int, Route]:
        """inode -> Route for the wanted inodes some gunicorn process holds."""
        found: dict[int, Route] = {}
        if pmap is None:
            return found
        # masters first (gunicorn's own client lives there), the sockets' owners first
        order = sorted(pmap.procs, key=lambda p: (p.slot is not None, p.uid not in uids))
        for p in order:
            if not wanted or out.fds_scanned >= MAX_FDS_PER_RUN:
                break
            start = self._start(p.pid)
            if start is None:
                continue
            try:
                scan = self.procfs.scan_fds(p.pid, limit=MAX_FDS_PER_RUN - out.fds_scanned)
            except OSError:
                continue
            out.processes_scanned += 1
            out.fds_scanned += scan.count
            hits = wanted.intersection(scan.socket_inodes)
            if hits and self._start(p.pid) == start:   # still the same process
                for ino in hits:
                    found[ino] = Route(ino, p.pid, start, p.app, p.slot)
                wanted -= hits
        return found
