"""Read the host's unix and TCP socket tables through NETLINK_SOCK_DIAG: the socket
I/O and the public API.

Stdlib only (``socket`` + ``struct``).  One netlink dump per table: unix sockets,
TCP/IPv4 and TCP/IPv6, then the LISTEN sockets' drop counters; and batched exact
lookups for tcp_info (``tcp_idle``).  Every request is bounded: a fixed receive
buffer, a per-call deadline, a truncated datagram is an error, and the socket is
always closed.

What is sent and how answers are decoded are pure functions elsewhere:
exporter/linux/netlink.py (the message walk) and exporter/linux/diagmsg.py (sock_diag
requests, message parsers); the data classes are exporter/linux/sockets.py's,
re-exported here.  Unknown values are None.  This module knows nothing about
Prometheus or gunicorn.
"""

from __future__ import annotations

import errno
import functools
import socket
import time

from exporter.linux.diagmsg import (  # re-exported: the public API
    ALL_STATES_MASK, NETLINK_SOCK_DIAG, SOCK_DIAG_BY_FAMILY, UDIAG_SHOW_RQLEN, decode_inet,
    decode_inet_lookups, decode_listen_drops, decode_listeners, decode_lookups, decode_unix,
    decode_unix_lookups, inet_request, listen_request, lookup_requests, parse_listen_drops,
    parse_tcp_idle, parse_tcp_times, unix_lookup_requests, unix_request)
from exporter.linux.netlink import NetlinkError
from exporter.linux.sockets import (  # re-exported: the public API
    RCV_SHUTDOWN, SEND_SHUTDOWN, TCP_CLOSE, TCP_CLOSE_WAIT, TCP_CLOSING, TCP_ESTABLISHED,
    TCP_FIN_WAIT1, TCP_FIN_WAIT2, TCP_LAST_ACK, TCP_LISTEN, TCP_NEW_SYN_RECV, TCP_STATE_NAMES,
    TCP_SYN_RECV, TCP_SYN_SENT, TCP_TIME_WAIT, InetSocket, SocketTable, TcpTimes, UnixSocket)

__all__ = [
    "TCP_ESTABLISHED", "TCP_SYN_SENT", "TCP_SYN_RECV", "TCP_FIN_WAIT1",
    "TCP_FIN_WAIT2", "TCP_TIME_WAIT", "TCP_CLOSE", "TCP_CLOSE_WAIT",
    "TCP_LAST_ACK", "TCP_LISTEN", "TCP_CLOSING", "TCP_NEW_SYN_RECV", "TCP_STATE_NAMES",
    "ALL_STATES_MASK", "RCV_SHUTDOWN", "SEND_SHUTDOWN", "NETLINK_SOCK_DIAG",
    "SOCK_DIAG_BY_FAMILY", "MAX_LOOKUPS",
    "UnixSocket", "InetSocket", "SocketTable", "TcpTimes", "SockDiagError",
    "read_unix", "read_tcp", "read_all", "tcp_idle", "tcp_times", "parse_listen_drops",
    "parse_tcp_idle", "parse_tcp_times",
    "ListenQueues", "peer_uid",
]

# Netlink sock_diag is unavailable, or a request failed or timed out: an OSError.
SockDiagError = NetlinkError

_RECV_BUFSIZE = 65536
_DEFAULT_TIMEOUT = 2.0
MAX_LOOKUPS = 4096   # per tcp_idle call: exact lookups cost the kernel a search each
_LOOKUP_BATCH = 256  # lookups per send: a batch fits one socket send buffer


def open_socket(timeout: float) -> socket.socket:
    """A NETLINK_SOCK_DIAG socket of the caller's network namespace (SockDiagError if
    the kernel has none)."""
    try:
        s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                          NETLINK_SOCK_DIAG)
    except OSError as e:
        raise SockDiagError(e.errno or errno.EPROTONOSUPPORT,
                            f"cannot open NETLINK_SOCK_DIAG socket: {e}") from e
    s.settimeout(timeout)
    return s


def _send(sock: socket.socket, data: bytes) -> None:
    try:
        sock.sendto(data, (0, 0))
    except OSError as e:
        raise SockDiagError(e.errno, f"sock_diag request failed: {e}") from e


def _datagrams(sock: socket.socket, deadline: float):
    """Yield ``(buf, n)`` for every datagram received until ``deadline``
    (time.monotonic()); ``buf`` is reused, so decode it before asking for the next.
    Raises SockDiagError on timeout, a truncated datagram (MSG_TRUNC), an empty one
    or an I/O error.  Endless: the consumer stops at its answer's end."""
    buf = bytearray(_RECV_BUFSIZE)
    view = memoryview(buf)
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise SockDiagError(errno.ETIMEDOUT, "sock_diag timed out")
            sock.settimeout(remaining)
            try:
                n, _anc, flags, _addr = sock.recvmsg_into([view])
            except socket.timeout as e:
                raise SockDiagError(errno.ETIMEDOUT, "sock_diag timed out") from e
            except OSError as e:
                raise SockDiagError(e.errno, f"sock_diag recv failed: {e}") from e
            if flags & socket.MSG_TRUNC:
                raise SockDiagError(errno.EMSGSIZE, "sock_diag answer truncated")
            if n == 0:
                raise SockDiagError(errno.EIO, "sock_diag: empty answer")
            yield buf, n
    finally:
        view.release()


def dump(sock: socket.socket, request: bytes, deadline: float, decode):
    """Send one dump request and return ``decode(datagrams)``; the decoder (one of
    diagmsg's, pure) stops reading at NLMSG_DONE."""
    _send(sock, request)
    chunks = _datagrams(sock, deadline)
    try:
        return decode(chunks)
    finally:
        chunks.close()


def lookups(sock: socket.socket, request: bytes, seq: int, count: int, deadline: float,
            decode, out: dict) -> dict:
    """Send `count` exact lookups (sequence numbers `seq`...) and read until each is
    answered: `decode(buf, n, seq, count, out)` returns how many answers a datagram held
    (a socket that is gone answers with an error, which counts)."""
    _send(sock, request)
    answers = 0
    chunks = _datagrams(sock, deadline)
    try:
        for buf, n in chunks:
            answers += decode(buf, n, seq, count, out)
            if answers >= count:
                break
    finally:
        chunks.close()
    return out


def read_unix(timeout: float = _DEFAULT_TIMEOUT) -> dict[int, UnixSocket]:
    """All unix sockets of the current network namespace, keyed by inode.

    Sockets without an inode (embryonic connections not yet accepted, on
    kernels that report them with inode 0) are left out."""
    deadline = time.monotonic() + timeout
    sock = open_socket(timeout)
    try:
        return dump(sock, unix_request(1), deadline, lambda c: decode_unix(c, 1))
    finally:
        sock.close()


def _read_tcp(sock, states: int, first_seq: int, deadline: float, wanted=None
              ) -> dict[int, InetSocket]:
    out: dict[int, InetSocket] = {}
    for seq, family in enumerate((socket.AF_INET, socket.AF_INET6), first_seq):
        dump(sock, inet_request(family, states, seq), deadline,
             lambda c, seq=seq: decode_inet(c, seq, out, wanted))
    return out


def read_tcp(states: int = ALL_STATES_MASK,
             timeout: float = _DEFAULT_TIMEOUT) -> dict[int, InetSocket]:
    """TCP sockets (IPv4 and IPv6) whose state bit is set in ``states``,
    keyed by inode.  Entries with inode 0 (TIME_WAIT, SYN_RECV request
    sockets) are left out; TIME_WAIT is not even requested from the kernel."""
    deadline = time.monotonic() + timeout
    sock = open_socket(timeout)
    try:
        return _read_tcp(sock, states, 1, deadline)
    finally:
        sock.close()


def read_all(timeout: float = _DEFAULT_TIMEOUT, wanted=None,
             sock: socket.socket | None = None, not_inet=frozenset()) -> SocketTable:
    """Unix + TCP tables through one netlink socket (three dumps, and a fourth and
    fifth for the drop counters when there are TCP listeners).

    Raises SockDiagError when netlink sock_diag is unavailable (no
    AF_NETLINK, unix_diag/inet_diag not loadable, seccomp, ...) or a dump
    fails or exceeds ``timeout`` seconds in total.

    ``wanted``: a set of inodes; when given, only those sockets (and unix sockets
    whose peer is one of them) are decoded. The kernel still dumps everything, but
    on a host with 20k sockets and a few hundred held by gunicorn this skips most
    of the Python work (see docs/performance.md).

    With ``wanted``, the TCP listeners come first, with their drop counters, from LISTEN
    dumps, for which the kernel walks only its listening hash; the other TCP sockets
    need a walk of the whole established hash (262,144 buckets on a host with a few GiB,
    whether they hold sockets or not: about 0.4 ms a family), which is skipped when every
    wanted inode is already found or is in ``not_inet`` (inodes an earlier complete
    read found to be neither unix nor TCP: a UDP or netlink socket). The table says
    which (``inet_complete``).

    ``sock``: a NETLINK_SOCK_DIAG socket to use (and leave open), e.g. one opened inside
    another network namespace (exporter/linux/netns.py); by default one is opened in
    the caller's namespace and closed."""
    deadline = time.monotonic() + timeout
    own = sock is None
    sock = open_socket(timeout) if own else sock
    sock.settimeout(timeout)
    try:
        unix = dump(sock, unix_request(1), deadline, lambda c: decode_unix(c, 1, wanted))
        if wanted is None:
            inet = _read_tcp(sock, ALL_STATES_MASK, 2, deadline)
            if any(s.state == TCP_LISTEN for s in inet.values()):
                for seq, family in ((4, socket.AF_INET), (5, socket.AF_INET6)):
                    dump(sock, listen_request(family, seq), deadline,
                         lambda c, seq=seq: decode_listen_drops(c, seq, inet))
            return SocketTable(unix=unix, inet=inet, source="netlink")
        inet = {}
        for seq, family in ((2, socket.AF_INET), (3, socket.AF_INET6)):
            dump(sock, listen_request(family, seq), deadline,
                 lambda c, seq=seq: decode_listeners(c, seq, inet, wanted))
        unknown = any(ino not in unix and ino not in inet and ino not in not_inet
                      for ino in wanted)
        if unknown:
            inet.update(_read_tcp(sock, ALL_STATES_MASK & ~(1 << TCP_LISTEN), 4, deadline,
                                  wanted))
        return SocketTable(unix=unix, inet=inet, source="netlink", inet_complete=unknown)
    finally:
        if own:
            sock.close()


def tcp_idle(sockets: list[InetSocket], timeout: float = _DEFAULT_TIMEOUT,
             sock: socket.socket | None = None) -> dict[int, bool]:
    """inode -> idle (see `diagmsg.parse_tcp_idle`) for a worker's established client
    connections, by exact lookups (no dump of the host's table), sent in batches. Sockets
    that are gone, with unread or unsent data (then the connection is in use) or unknown
    queues, and anything beyond MAX_LOOKUPS are left out."""
    todo = [s for s in sockets if s.state == TCP_ESTABLISHED and s.rqueue == 0
            and s.wqueue == 0]
    return _tcp_lookups(todo, timeout, sock, parse_tcp_idle)


def tcp_times(sockets: list[InetSocket], timeout: float = _DEFAULT_TIMEOUT,
              sock: socket.socket | None = None) -> dict[int, TcpTimes]:
    """inode -> what tcp_info says of the last exchange, for established TCP sockets
    with nothing left unread (a worker's outbound connections: one that sent last waits
    for a reply); the same exact lookups as `tcp_idle`."""
    todo = [s for s in sockets if s.state == TCP_ESTABLISHED and s.rqueue == 0]
    return _tcp_lookups(todo, timeout, sock, parse_tcp_times)


def _tcp_lookups(todo: list[InetSocket], timeout: float, sock: socket.socket | None,
                 parse) -> dict:
    todo = todo[:MAX_LOOKUPS]
    if not todo:
        return {}
    deadline = time.monotonic() + timeout
    out: dict[int, bool] = {}
    own = sock is None
    sock = open_socket(timeout) if own else sock
    sock.settimeout(timeout)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        for start in range(0, len(todo), _LOOKUP_BATCH):
            batch = todo[start:start + _LOOKUP_BATCH]
            seq = start + 1
            lookups(sock, lookup_requests(batch, seq), seq, len(batch), deadline,
                    lambda *a: decode_lookups(*a, parse=parse), out)
        return out
    finally:
        if own:
            sock.close()


class ListenQueues:
    """Accept queue lengths of listening sockets, for a sampler that asks many times a
    second: one netlink socket kept open, and only LISTEN sockets asked for (the kernel
    filters by state, so a host's thousands of connections are never sent or decoded;
    unix sockets come with their queue lengths only).

    ``read(wanted)`` -> inode: queue length, for the listening sockets in ``wanted``
    (unix, TCP/IPv4, TCP/IPv6) of this network namespace. A TCP listener found before is
    looked up by its local address and port (the kernel finds it in its hash tables;
    the answer counts only if it is the same inode); the others come from a dump of
    LISTEN sockets, which walks the whole listening hash (0.06 ms with warm caches, 0.4
    ms ten times a second). The wanted inodes that are not TCP listeners are looked up
    as unix sockets one by one when there are at most UNIX_LOOKUPS of them (the kernel
    walks every unix socket of the namespace for each: 0.6 ms at 12k unix sockets, no
    index by inode), else with a LISTEN dump, which walks them all once.
    Raises SockDiagError; the socket is then reopened on the next call."""

    UNIX_LOOKUPS = 8

    def __init__(self, timeout: float = 1.0, opener=None):
        self.timeout = timeout
        # how to get a socket: in our own namespace by default, or e.g. inside a pod's
        # (exporter/linux/netns.py)
        self._open_socket = opener or (lambda: open_socket(timeout))
        self._sock: socket.socket | None = None
        self._seq = 0
        # what the last read found: TCP listeners (looked up by address next time) and
        # unix listeners (no TCP dump needed to tell them apart)
        self._tcp: dict[int, InetSocket] = {}
        self._unix: set[int] = set()

    def times(self, sockets: list[InetSocket]) -> dict[int, TcpTimes]:
        """tcp_times of `sockets` (in this reader's network namespace), through its socket."""
        if self._sock is None:
            self._sock = self._open_socket()
            self._sock.settimeout(self.timeout)
        return tcp_times(sockets, self.timeout, self._sock)

    def read(self, wanted: set[int]) -> dict[int, int]:
        deadline = time.monotonic() + self.timeout
        if self._sock is None:
            self._sock = self._open_socket()
            self._sock.settimeout(self.timeout)
        sock = self._sock
        try:
            out: dict[int, int] = {}
            known = [self._tcp[i] for i in sorted(wanted) if i in self._tcp]
            base = self._seq = (self._seq + 4 + len(known) + len(wanted)) & 0x3FFFFFFF
            inet: dict[int, InetSocket] = {}
            if known:   # exact lookups by address and port: the kernel hashes, no walk
                found: dict[int, InetSocket] = {}
                lookups(sock, lookup_requests(known, base + 4, ext=0), base + 4, len(known),
                        deadline, decode_inet_lookups, found)
                inet = {i: s for i, s in found.items()
                        if i in wanted and i in self._tcp and s.state == TCP_LISTEN}
            unknown = wanted - inet.keys() - self._unix
            if unknown:  # new, gone, or answered by another socket (a --reuse-port group)
                for seq, family in enumerate((socket.AF_INET, socket.AF_INET6), base + 1):
                    dump(sock, inet_request(family, 1 << TCP_LISTEN, seq), deadline,
                         lambda c, seq=seq: decode_inet(c, seq, inet, unknown))
            self._tcp = dict(inet)
            for ino, t in inet.items():
                out[ino] = t.rqueue
            rest = sorted(wanted - inet.keys())
            if len(rest) > self.UNIX_LOOKUPS:
                seq = base + 3
                unix = dump(sock, unix_request(seq, 1 << TCP_LISTEN, UDIAG_SHOW_RQLEN),
                            deadline, lambda c: decode_unix(c, seq, wanted))
            elif rest:
                unix = lookups(sock, unix_lookup_requests(rest, base + 3), base + 3, len(rest),
                               deadline, decode_unix_lookups, {})
            else:
                unix = {}
            for ino, u in unix.items():
                if u.rqueue is not None and u.state == TCP_LISTEN:
                    out[ino] = u.rqueue
            if len(self._unix) > MAX_LOOKUPS:
                self._unix = set()
            self._unix = (self._unix - set(rest)) | {ino for ino in rest if ino in out}
            return out
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def peer_uid(diag: socket.socket, conn: socket.socket, timeout: float = 0.05) -> int | None:
    """The uid that owns the other end of an accepted TCP connection, when that end is a
    socket of this network namespace (a local client): one exact lookup of the client's
    socket by its addresses and ports, which the kernel answers from its hash table. None
    for a remote client, or when the kernel did not say. An IPv4 client of a dual-stack
    listener (``::ffff:a.b.c.d``) is looked up as the IPv4 socket it is. The interface
    asked is the one a local connection came in on, `lo` (or an IPv6 link-local peer's
    scope), so a client bound to it (SO_BINDTODEVICE) is found too."""
    local, peer = conn.getsockname(), conn.getpeername()
    family = conn.family
    if family not in (socket.AF_INET, socket.AF_INET6):
        return None
    laddr, raddr = local[0].split("%", 1)[0], peer[0].split("%", 1)[0]
    if family == socket.AF_INET6 and raddr.startswith("::ffff:") and "." in raddr:
        family, laddr, raddr = socket.AF_INET, laddr.removeprefix("::ffff:"), raddr[7:]
    scope = peer[3] if len(peer) > 3 else 0
    client = InetSocket(0, family, TCP_ESTABLISHED, raddr, peer[1], laddr, local[1],
                        None, None, -1)
    out: dict = {}
    lookups(diag, lookup_requests([client], 1, ext=0, ifindex=scope or _loopback_index()),
            1, 1, time.monotonic() + timeout, decode_inet_lookups, out)
    for s in out.values():
        if (s.local_port, s.remote_port) == (peer[1], local[1]) and s.uid >= 0:
            return s.uid
    return None


@functools.cache
def _loopback_index() -> int:
    try:
        return socket.if_nametoindex("lo")
    except OSError:
        return 0
