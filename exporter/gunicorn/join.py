"""Pure joins of one master's processes with the socket table: listeners, the control
socket, and each worker's client and database connections. No I/O; tested on literal
socket tables in tests/test_join.py.

A socket belongs to a process when its inode is in the process's fd table (kernel
fact). A listener is a listening socket the master holds (or, with --reuse-port, one a
worker holds that the master does not). The control socket is a listening unix socket
that only the master holds, named like gunicorn's control socket.
"""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass, field

from exporter.linux import sockdiag
from exporter.linux.sockdiag import TCP_CLOSE_WAIT, TCP_ESTABLISHED, TCP_LISTEN, SocketTable

PGSQL_SOCKET_RE = re.compile(r"\.s\.PGSQL\.(\d{1,5})$")
WILDCARD_ADDRS = {"0.0.0.0", "::", ""}
MAX_LISTENERS = 64


@dataclass
class WorkerSockets:
    unix: list = field(default_factory=list)
    inet: list = field(default_factory=list)


@dataclass
class Joined:
    listeners: list = field(default_factory=list)           # (socket, worker pid | None)
    control: sockdiag.UnixSocket | None = None
    workers: dict[int, WorkerSockets] = field(default_factory=dict)
    unix_peers: dict[int, str] = field(default_factory=dict)  # peer inode -> bound name


def join_sockets(master_inodes: set[int], worker_inodes: dict[int, set[int]],
                 table: SocketTable, control_path: str | None,
                 control_disabled: bool) -> Joined:
    out = Joined()
    held_by_workers = set().union(*worker_inodes.values()) if worker_inodes else set()
    controls = []
    for ino in sorted(master_inodes):
        sock = table.unix.get(ino) or table.inet.get(ino)
        if sock is None or sock.state != TCP_LISTEN:
            continue
        if isinstance(sock, sockdiag.UnixSocket) and ino not in held_by_workers:
            name = sock.name or ""
            if name and (name == control_path or name.endswith(".ctl")):
                controls.append(sock)
                continue
        if len(out.listeners) < MAX_LISTENERS:
            out.listeners.append((sock, None))
    if controls and not control_disabled:
        # the configured path if the master holds it, else gunicorn's default name
        controls.sort(key=lambda s: (s.name != control_path, not s.name.endswith("/gunicorn.ctl")))
        out.control = controls[0]
    # --reuse-port: every worker binds its own listeners
    for pid, inodes in worker_inodes.items():
        for ino in sorted(inodes - master_inodes):
            sock = table.unix.get(ino) or table.inet.get(ino)
            if sock is not None and sock.state == TCP_LISTEN and len(out.listeners) < MAX_LISTENERS:
                out.listeners.append((sock, pid))
    for pid, inodes in worker_inodes.items():
        ws = out.workers[pid] = WorkerSockets()
        for ino in inodes:
            u = table.unix.get(ino)
            if u is not None:
                ws.unix.append(u)
                if u.peer:
                    peer = table.unix.get(u.peer)
                    if peer is not None and peer.name:
                        out.unix_peers[u.peer] = peer.name
                continue
            i = table.inet.get(ino)
            if i is not None:
                ws.inet.append(i)
    return out


def listener_address(sock) -> str:
    if isinstance(sock, sockdiag.UnixSocket):
        return f"unix:{sock.name}"
    if sock.family == socket.AF_INET6:
        return f"[{sock.local_addr}]:{sock.local_port}"
    return f"{sock.local_addr}:{sock.local_port}"


@dataclass(frozen=True)
class SocketMatcher:
    """What tells a master's client connections and DB connections apart."""

    unix_names: frozenset[str]          # paths of its unix listeners
    tcp_ports: dict[int, set[str]]      # port -> local addresses of its TCP listeners
    db_ports: frozenset[int]
    db_paths: frozenset[str]

    @classmethod
    def of(cls, listeners: list, db_ports, db_paths) -> "SocketMatcher":
        tcp_ports: dict[int, set[str]] = {}
        for s, _ in listeners:
            if isinstance(s, sockdiag.InetSocket):
                tcp_ports.setdefault(s.local_port, set()).add(s.local_addr)
        return cls(frozenset(s.name for s, _ in listeners
                             if isinstance(s, sockdiag.UnixSocket) and s.name),
                   tcp_ports, frozenset(db_ports), frozenset(db_paths))

    def is_db_socket(self, name: str) -> bool:
        if name in self.db_paths:
            return True
        m = PGSQL_SOCKET_RE.search(name)
        return bool(m and int(m.group(1)) in self.db_ports)


@dataclass
class WorkerConnections:
    active: int = 0
    client_closed: int = 0
    idle: int = 0             # TCP keep-alive connections whose last request is answered
    db_tcp: list[tuple[str, int, str, int]] = field(default_factory=list)
    db_unix: list[tuple[int, int]] = field(default_factory=list)


def is_client(i, match: SocketMatcher) -> bool:
    """Whether a TCP socket of a worker was accepted from the master's listeners (its
    local address is one of theirs)."""
    addrs = match.tcp_ports.get(i.local_port)
    return addrs is not None and (addrs & WILDCARD_ADDRS or i.local_addr in addrs
                                  or _v4_mapped(i.local_addr) in addrs)


def client_tcp(ws: WorkerSockets, match: SocketMatcher) -> list:
    """The worker's established TCP client connections (accepted from its listeners)."""
    return [i for i in ws.inet if i.state == TCP_ESTABLISHED and is_client(i, match)]


def count_worker_sockets(ws: WorkerSockets, unix_peers: dict[int, str],
                         match: SocketMatcher, idle: frozenset[int] | set[int] = frozenset()
                         ) -> WorkerConnections:
    """A worker's client connections (active / idle / client_closed) and DB connections.
    `idle`: inodes of connections known to be idle: waiting for the client's next request
    (a gthread worker's epoll, or sock_diag tcp_info)."""
    out = WorkerConnections()
    for u in ws.unix:
        if u.state == TCP_LISTEN:
            continue
        if u.name and u.name in match.unix_names:
            if u.shutdown is not None and u.shutdown & sockdiag.RCV_SHUTDOWN:
                out.client_closed += 1
            elif u.inode in idle:
                out.idle += 1
            else:
                out.active += 1
            continue
        peer_name = unix_peers.get(u.peer) if u.peer else None
        if peer_name and match.is_db_socket(peer_name):
            out.db_unix.append((u.inode, u.peer))
    for i in ws.inet:
        if i.state not in (TCP_ESTABLISHED, TCP_CLOSE_WAIT):
            continue
        if is_client(i, match):
            if i.state == TCP_CLOSE_WAIT:
                out.client_closed += 1
            elif i.inode in idle:
                out.idle += 1
            else:
                out.active += 1
        elif i.remote_port in match.db_ports:
            out.db_tcp.append((i.local_addr, i.local_port, i.remote_addr, i.remote_port))
    return out


def _v4_mapped(addr: str) -> str:
    return addr[7:] if addr.startswith("::ffff:") else addr


def capacity(worker_class: str | None, threads: int | None,
             worker_connections: int | None) -> float | None:
    """Concurrent requests one worker serves; None when a setting it needs is unknown."""
    if worker_class is None:
        return None
    if worker_class == "sync":
        return 1
    if worker_class == "gthread":
        return threads
    if worker_class in ("uvicorn", "asgi"):
        return float("inf")  # an asyncio loop accepts without limit
    return worker_connections


def assign_names(apps: list, owners: dict[str, tuple], remembered_uid) -> set[str]:
    """Make app names unique, and keep a name with the master that owns it.

    Among masters that share a name, the plain name goes to the one that had it in the
    previous scrape (`owners`: name -> (master pid, start time)); else, when the name is
    remembered for a user (`remembered_uid(name)`), to that user's only master of that
    name; else, to a master that is alone with its name and whose name is not another
    user's. Every other master gets its Kubernetes pod appended (`NAME@pod:1f6c7e5a`, the
    start of its pod UID) when it is the only master of that name in its pod, else its
    first listener (`NAME@unix:/a.sock`), or `@pid<N>` if that is shared too. So another
    user's process that calls itself `shop` cannot take `shop` from its owner, nor make a
    stopped `shop` look alive.
    Returns the suffixed names (transient: never remembered); updates `owners`.
    """
    by_name: dict[str, list] = {}
    for a in apps:
        by_name.setdefault(a.app, []).append(a)
    renamed: set[str] = set()
    for name, group in by_name.items():
        keep = _owner(name, group, owners.get(name), remembered_uid(name))
        pods = [a.pod.pod_uid if a.pod else "" for a in group]
        for a, uid in zip(group, pods):
            if a is keep:
                owners[name] = (a.master_pid, a.master_start_time)
                continue
            if uid and pods.count(uid) == 1:
                where = f"pod:{uid[:8]}"
            else:
                where = a.listeners[0].address if a.listeners else f"pid{a.master_pid}"
            a.app = f"{name}@{where}"
            renamed.add(a.app)
    seen: dict[str, int] = {}
    for a in apps:
        seen[a.app] = seen.get(a.app, 0) + 1
    for a in apps:
        if seen[a.app] > 1:
            a.app = f"{a.app}@pid{a.master_pid}"
            renamed.add(a.app)
    live = {a.app for a in apps}
    for name in [n for n in owners if n not in live]:
        del owners[name]
    return renamed


def _owner(name: str, group: list, previous: tuple | None, uid: int | None):
    if previous is not None:
        for a in group:
            if (a.master_pid, a.master_start_time) == previous:
                return a
    if uid is not None:
        mine = [a for a in group if a.uid == uid]
        return mine[0] if len(mine) == 1 else None
    return group[0] if len(group) == 1 else None
