"""Read the host's unix and TCP socket tables through NETLINK_SOCK_DIAG.

Stdlib only (``socket`` + ``struct``).  One netlink dump per table: unix
sockets, TCP/IPv4 and TCP/IPv6.  Every dump is bounded: a fixed receive
buffer, a per-call deadline and the socket is always closed.

The layouts below come from the kernel uapi headers
``linux/netlink.h``, ``linux/sock_diag.h``, ``linux/unix_diag.h`` and
``linux/inet_diag.h``.

This module knows nothing about Prometheus or gunicorn.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import time
from dataclasses import dataclass

__all__ = [
    "TCP_ESTABLISHED", "TCP_SYN_SENT", "TCP_SYN_RECV", "TCP_FIN_WAIT1",
    "TCP_FIN_WAIT2", "TCP_TIME_WAIT", "TCP_CLOSE", "TCP_CLOSE_WAIT",
    "TCP_LAST_ACK", "TCP_LISTEN", "TCP_CLOSING", "TCP_STATE_NAMES",
    "ALL_STATES_MASK", "RCV_SHUTDOWN", "SEND_SHUTDOWN",
    "UnixSocket", "InetSocket", "SocketTable", "SockDiagError",
    "read_unix", "read_tcp", "read_all",
]

# --------------------------------------------------------------------------
# Public constants

# TCP state numbers as the kernel uses them (include/net/tcp_states.h).
# Unix sockets reuse them: 1 ESTABLISHED, 7 CLOSE, 10 LISTEN.
TCP_ESTABLISHED = 1
TCP_SYN_SENT = 2
TCP_SYN_RECV = 3
TCP_FIN_WAIT1 = 4
TCP_FIN_WAIT2 = 5
TCP_TIME_WAIT = 6
TCP_CLOSE = 7
TCP_CLOSE_WAIT = 8
TCP_LAST_ACK = 9
TCP_LISTEN = 10
TCP_CLOSING = 11
TCP_NEW_SYN_RECV = 12  # request sockets; reported with inode 0

TCP_STATE_NAMES = {
    TCP_ESTABLISHED: "ESTABLISHED", TCP_SYN_SENT: "SYN_SENT",
    TCP_SYN_RECV: "SYN_RECV", TCP_FIN_WAIT1: "FIN_WAIT1",
    TCP_FIN_WAIT2: "FIN_WAIT2", TCP_TIME_WAIT: "TIME_WAIT",
    TCP_CLOSE: "CLOSE", TCP_CLOSE_WAIT: "CLOSE_WAIT",
    TCP_LAST_ACK: "LAST_ACK", TCP_LISTEN: "LISTEN", TCP_CLOSING: "CLOSING",
    TCP_NEW_SYN_RECV: "NEW_SYN_RECV",
}

# Bit mask of states 0..12 (same as ss's SS_ALL). Bit N selects state N.
ALL_STATES_MASK = (1 << 13) - 1

# sk_shutdown bits
RCV_SHUTDOWN = 1
SEND_SHUTDOWN = 2

# --------------------------------------------------------------------------
# Kernel ABI constants

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20

NLM_F_REQUEST = 0x01
NLM_F_ROOT = 0x100
NLM_F_MATCH = 0x200
NLM_F_DUMP = NLM_F_ROOT | NLM_F_MATCH
NLM_F_DUMP_INTR = 0x10

NLMSG_NOOP = 1
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLMSG_OVERRUN = 4

# unix_diag_req.udiag_show bits
UDIAG_SHOW_NAME = 0x01
UDIAG_SHOW_VFS = 0x02
UDIAG_SHOW_PEER = 0x04
UDIAG_SHOW_ICONS = 0x08
UDIAG_SHOW_RQLEN = 0x10
UDIAG_SHOW_MEMINFO = 0x20
UDIAG_SHOW_UID = 0x40

# unix diag attribute types
UNIX_DIAG_NAME = 0
UNIX_DIAG_VFS = 1
UNIX_DIAG_PEER = 2
UNIX_DIAG_ICONS = 3
UNIX_DIAG_RQLEN = 4
UNIX_DIAG_MEMINFO = 5
UNIX_DIAG_SHUTDOWN = 6
UNIX_DIAG_UID = 7

# --------------------------------------------------------------------------
# Struct layouts (native byte order; netlink is host-endian)

_NLMSGHDR = struct.Struct("=IHHII")          # len, type, flags, seq, pid
_NLMSGHDR_LEN = _NLMSGHDR.size               # 16
_NLATTR = struct.Struct("=HH")               # nla_len, nla_type
_U32 = struct.Struct("=I")
_2U32 = struct.Struct("=II")
_I32 = struct.Struct("=i")

# struct unix_diag_req: family, protocol, pad16, states, ino, show, cookie[2]
_UNIX_DIAG_REQ = struct.Struct("=BBHIII8s")
# struct unix_diag_msg: family, type, state, pad, ino, cookie[2]
_UNIX_DIAG_MSG = struct.Struct("=BBBxI8x")
_UNIX_DIAG_MSG_LEN = _UNIX_DIAG_MSG.size     # 16

# struct inet_diag_req_v2: family, protocol, ext, pad, states, inet_diag_sockid
#   inet_diag_sockid: sport(be16) dport(be16) src[4](be32) dst[4](be32) if cookie[2]
_INET_DIAG_REQ_V2 = struct.Struct("=BBBBI48s")
# struct inet_diag_msg (72 bytes): family state timer retrans | sockid(48) |
#   expires rqueue wqueue uid inode.  Ports are big-endian: read separately.
_INET_DIAG_MSG_LEN = 72
_PORTS = struct.Struct(">HH")                # sport, dport at offset 4

_UNIX_SHOW = (UDIAG_SHOW_NAME | UDIAG_SHOW_VFS | UDIAG_SHOW_PEER
              | UDIAG_SHOW_RQLEN)
# UNIX_DIAG_SHUTDOWN is emitted unconditionally by sk_diag_fill() (no show
# bit exists for it); it is present on every kernel >= 3.10.

_RECV_BUFSIZE = 65536
_DEFAULT_TIMEOUT = 2.0


# --------------------------------------------------------------------------
# Data classes

@dataclass(slots=True)
class UnixSocket:
    inode: int
    state: int          # TCP_LISTEN / TCP_ESTABLISHED / TCP_CLOSE ...
    type: int           # socket.SOCK_STREAM etc.
    name: str | None    # bound path; abstract as '@name'; None when unnamed
    peer: int           # peer socket inode, 0 if none
    rqueue: int         # LISTEN: accept-queue length; else receive queue
    wqueue: int         # LISTEN: max backlog; else send queue
    shutdown: int       # sk_shutdown bits of this socket; -1 if unknown
    vfs_ino: int = 0    # inode of the socket file on disk, 0 if none
    vfs_dev: int = 0    # its device in the kernel's encoding (major << 20 | minor)

    @property
    def vfs(self) -> tuple[int, int, int] | None:
        """(major, minor, inode) of the bound file, comparable with os.stat()."""
        if not self.vfs_ino:
            return None
        return self.vfs_dev >> 20, self.vfs_dev & 0xFFFFF, self.vfs_ino


@dataclass(slots=True)
class InetSocket:
    inode: int
    family: int         # socket.AF_INET or AF_INET6
    state: int
    local_addr: str
    local_port: int
    remote_addr: str
    remote_port: int
    rqueue: int         # LISTEN: accept-queue length; else bytes unread
    wqueue: int         # LISTEN: backlog limit; else bytes unsent
    uid: int
    drops: int = -1     # LISTEN: connections dropped at this socket (sk_drops); -1 unknown


@dataclass(slots=True)
class SocketTable:
    unix: dict[int, UnixSocket]
    inet: dict[int, InetSocket]
    source: str         # 'netlink' or 'procfs'


class SockDiagError(OSError):
    """Netlink sock_diag is unavailable or the dump failed."""


# --------------------------------------------------------------------------
# Netlink plumbing

def _open(timeout: float) -> socket.socket:
    try:
        s = socket.socket(socket.AF_NETLINK,
                          socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                          NETLINK_SOCK_DIAG)
    except OSError as e:
        raise SockDiagError(e.errno or errno.EPROTONOSUPPORT,
                            f"cannot open NETLINK_SOCK_DIAG socket: {e}") from e
    s.settimeout(timeout)
    return s


def _chunks(sock: socket.socket, payload: bytes, seq: int, deadline: float):
    """Send one SOCK_DIAG_BY_FAMILY dump request; yield ``(buf, n)`` for
    every datagram of the answer (``buf`` is reused: parse it before asking
    for the next one).  The caller walks the netlink messages and calls
    ``_control`` for anything that is not SOCK_DIAG_BY_FAMILY; it must stop
    when that returns True (NLMSG_DONE).  Raises SockDiagError on timeout
    (``deadline`` is time.monotonic() based), truncation or I/O errors."""
    hdr = _NLMSGHDR.pack(_NLMSGHDR_LEN + len(payload), SOCK_DIAG_BY_FAMILY,
                         NLM_F_REQUEST | NLM_F_DUMP, seq, 0)
    try:
        sock.sendto(hdr + payload, (0, 0))
    except OSError as e:
        raise SockDiagError(e.errno, f"sock_diag request failed: {e}") from e

    buf = bytearray(_RECV_BUFSIZE)
    view = memoryview(buf)
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise SockDiagError(errno.ETIMEDOUT, "sock_diag dump timed out")
            sock.settimeout(remaining)
            try:
                n, _anc, flags, _addr = sock.recvmsg_into([view])
            except socket.timeout as e:
                raise SockDiagError(errno.ETIMEDOUT,
                                    "sock_diag dump timed out") from e
            except OSError as e:
                raise SockDiagError(e.errno,
                                    f"sock_diag recv failed: {e}") from e
            if flags & socket.MSG_TRUNC:
                raise SockDiagError(errno.EMSGSIZE,
                                    "sock_diag answer truncated")
            if n == 0:
                raise SockDiagError(errno.EIO, "sock_diag: empty answer")
            yield buf, n
    finally:
        view.release()


def _control(buf, off: int, mlen: int, mtype: int) -> bool:
    """Handle a non-data netlink message.  True means NLMSG_DONE."""
    if mtype == NLMSG_DONE:
        return True
    if mtype == NLMSG_ERROR:
        err = 0
        if mlen >= _NLMSGHDR_LEN + 4:
            err = -_I32.unpack_from(buf, off + _NLMSGHDR_LEN)[0]
        if err == 0:  # an ACK; not expected for dumps
            return False
        raise SockDiagError(err, f"sock_diag: kernel error: {os.strerror(err)}")
    if mtype == NLMSG_OVERRUN:
        raise SockDiagError(errno.EIO, "sock_diag: overrun")
    return False  # NLMSG_NOOP or unknown: skip


def _malformed() -> SockDiagError:
    return SockDiagError(errno.EIO, "sock_diag: malformed netlink message")


def _dump(sock: socket.socket, payload: bytes, seq: int, deadline: float,
          on_msg) -> None:
    """Generic (slower) dump: call ``on_msg(buf, off, length)`` for every
    SOCK_DIAG_BY_FAMILY payload.  Used by tests and for odd requests."""
    unpack_hdr = _NLMSGHDR.unpack_from
    for buf, n in _chunks(sock, payload, seq, deadline):
        off = 0
        while off + _NLMSGHDR_LEN <= n:
            mlen, mtype, _f, mseq, _p = unpack_hdr(buf, off)
            if mlen < _NLMSGHDR_LEN or off + mlen > n:
                raise _malformed()
            if mseq == seq:
                if mtype == SOCK_DIAG_BY_FAMILY:
                    on_msg(buf, off + _NLMSGHDR_LEN, mlen - _NLMSGHDR_LEN)
                elif _control(buf, off, mlen, mtype):
                    return
            off += (mlen + 3) & ~3


def _decode_name(raw: bytes) -> str:
    if raw[:1] == b"\0":
        # abstract: same rendering as /proc/net/unix and ss ('@', NUL -> '@')
        return "@" + raw[1:].replace(b"\0", b"@").decode("utf-8",
                                                          "surrogateescape")
    i = raw.find(b"\0")
    if i >= 0:
        raw = raw[:i]
    return raw.decode("utf-8", "surrogateescape")


def _unix_request() -> bytes:
    return _UNIX_DIAG_REQ.pack(socket.AF_UNIX, 0, 0, 0xFFFFFFFF, 0,
                               _UNIX_SHOW, b"\xff" * 8)


# Fast path for the commonest unix answer: an unnamed connected socket,
# whose attributes are exactly PEER(8) RQLEN(12) SHUTDOWN(5, padded to 8)
# in the order sk_diag_fill() emits them.  nlmsghdr + msg + attrs in one go.
_UNIX_FAST = struct.Struct("=IHHII" "BBBxI8x" "HHI" "HHII" "HHB3x")
_UNIX_FAST_LEN = _UNIX_FAST.size  # 16 + 16 + 28 = 60


def _dump_unix(sock: socket.socket, seq: int, deadline: float,
               wanted=None) -> dict[int, UnixSocket]:
    out: dict[int, UnixSocket] = {}
    unpack_hdr = _NLMSGHDR.unpack_from
    unpack_fast = _UNIX_FAST.unpack_from
    unpack_msg = _UNIX_DIAG_MSG.unpack_from
    unpack_attr = _NLATTR.unpack_from
    unpack_u32 = _U32.unpack_from
    unpack_2u32 = _2U32.unpack_from
    HDR = _NLMSGHDR_LEN
    MSGLEN = _UNIX_DIAG_MSG_LEN
    FAST = _UNIX_FAST_LEN
    BY_FAMILY = SOCK_DIAG_BY_FAMILY
    Unix = UnixSocket

    for buf, n in _chunks(sock, _unix_request(), seq, deadline):
        off = 0
        while off + HDR <= n:
            if off + FAST <= n:
                (mlen, mtype, _f, mseq, _p, _fam, stype, state, ino,
                 _l1, t1, peer, _l2, t2, rq, wq, _l3, t3, shut
                 ) = unpack_fast(buf, off)
                if (mlen == FAST and mtype == BY_FAMILY and mseq == seq
                        and t1 == 2 and t2 == 4 and t3 == 6):
                    # t1..t3 == UNIX_DIAG_PEER, UNIX_DIAG_RQLEN, UNIX_DIAG_SHUTDOWN
                    if ino and (wanted is None or ino in wanted or peer in wanted):
                        out[ino] = Unix(ino, state, stype, None, peer, rq, wq,
                                        shut, 0)
                    off += FAST
                    continue
            mlen, mtype, _f, mseq, _p = unpack_hdr(buf, off)
            if mlen < HDR or off + mlen > n:
                raise _malformed()
            if mseq != seq:
                off += (mlen + 3) & ~3
                continue
            if mtype != BY_FAMILY:
                if _control(buf, off, mlen, mtype):
                    return out
                off += (mlen + 3) & ~3
                continue
            end = off + mlen
            a = off + HDR + MSGLEN
            if a > end:
                off += (mlen + 3) & ~3
                continue
            _fam, stype, state, ino = unpack_msg(buf, off + HDR)
            name = None
            raw_name = None
            peer = 0
            rq = wq = 0
            shut = -1
            vfs_ino = vfs_dev = 0
            while a + 4 <= end:
                alen, atype = unpack_attr(buf, a)
                if alen < 4 or a + alen > end:
                    break
                atype &= 0x3FFF  # strip NLA_F_NESTED / NLA_F_NET_BYTEORDER
                p = a + 4
                if atype == UNIX_DIAG_PEER:
                    peer = unpack_u32(buf, p)[0]
                elif atype == UNIX_DIAG_RQLEN:
                    rq, wq = unpack_2u32(buf, p)
                elif atype == UNIX_DIAG_SHUTDOWN:
                    shut = buf[p]
                elif atype == UNIX_DIAG_NAME:
                    raw_name = (p, a + alen)
                elif atype == UNIX_DIAG_VFS and alen >= 12:
                    vfs_ino, vfs_dev = unpack_2u32(buf, p)
                a += (alen + 3) & ~3
            # embryos waiting in an accept queue have inode 0
            if ino and (wanted is None or ino in wanted or peer in wanted):
                if raw_name is not None:
                    name = _decode_name(bytes(buf[raw_name[0]:raw_name[1]]))
                out[ino] = Unix(ino, state, stype, name, peer, rq, wq, shut,
                                vfs_ino, vfs_dev)
            off += (mlen + 3) & ~3
    raise SockDiagError(errno.EIO, "sock_diag: dump ended without NLMSG_DONE")


def _inet_request(family: int, states: int) -> bytes:
    # TIME_WAIT sockets never have an inode and would be dropped anyway;
    # do not make the kernel dump them (there can be tens of thousands).
    states &= ~(1 << TCP_TIME_WAIT)
    # sockid zeroed except cookie = INET_DIAG_NOCOOKIE (~0), which is what
    # ss sends; the kernel ignores the sockid for dumps anyway.
    sockid = bytes(40) + b"\xff" * 8
    return _INET_DIAG_REQ_V2.pack(family, socket.IPPROTO_TCP, 0, 0,
                                  states & 0xFFFFFFFF, sockid)


# nlmsghdr + inet_diag_msg up to idiag_inode in one unpack; ports are
# big-endian and read separately.
_INET_FAST = struct.Struct("=IHHII" "BB2x4s16s16s12x4xIIII")
_INET_FAST_LEN = _NLMSGHDR_LEN + _INET_DIAG_MSG_LEN  # 88


def _dump_inet(sock: socket.socket, family: int, states: int, seq: int,
               deadline: float, out: dict[int, InetSocket], wanted=None) -> None:
    unpack = _INET_FAST.unpack_from
    unpack_hdr = _NLMSGHDR.unpack_from
    unpack_ports = _PORTS.unpack_from
    HDR = _NLMSGHDR_LEN
    MIN = _INET_FAST_LEN
    BY_FAMILY = SOCK_DIAG_BY_FAMILY
    Inet = InetSocket
    cache: dict[bytes, str] = {}
    if family == socket.AF_INET:
        def conv(raw16):
            return socket.inet_ntoa(raw16[:4])
    else:
        def conv(raw16):
            return socket.inet_ntop(socket.AF_INET6, raw16)

    for buf, n in _chunks(sock, _inet_request(family, states), seq, deadline):
        off = 0
        while off + HDR <= n:
            mlen, mtype, _f, mseq, _p = unpack_hdr(buf, off)
            if mlen < HDR or off + mlen > n:
                raise _malformed()
            if mseq == seq:
                if mtype == BY_FAMILY:
                    if mlen >= MIN:
                        (_l, _t, _f, _s, _p, fam, state, _ports, src, dst,
                         rq, wq, uid, ino) = unpack(buf, off)
                        # TIME_WAIT / request socks have inode 0
                        if ino and (wanted is None or ino in wanted):
                            sport, dport = unpack_ports(buf, off + HDR + 4)
                            la = cache.get(src)
                            if la is None:
                                la = cache[src] = conv(src)
                            ra = cache.get(dst)
                            if ra is None:
                                ra = cache[dst] = conv(dst)
                            out[ino] = Inet(ino, fam, state, la, sport, ra,
                                            dport, rq, wq, uid)
                elif _control(buf, off, mlen, mtype):
                    return
            off += (mlen + 3) & ~3
    raise SockDiagError(errno.EIO, "sock_diag: dump ended without NLMSG_DONE")


INET_DIAG_SKMEMINFO = 7
SK_MEMINFO_DROPS = 8


def _inet_listen_request(family: int) -> bytes:
    """LISTEN sockets only, with their socket memory info (its sk_drops: the kernel
    counts every connection dropped at a full accept queue there, as well as in the
    host-wide TcpExt ListenDrops)."""
    sockid = bytes(40) + b"\xff" * 8
    return _INET_DIAG_REQ_V2.pack(family, socket.IPPROTO_TCP, 1 << (INET_DIAG_SKMEMINFO - 1),
                                  0, 1 << TCP_LISTEN, sockid)


def parse_listen_drops(buf, off: int, length: int) -> tuple[int, int] | None:
    """(inode, drops) from one inet_diag_msg with an INET_DIAG_SKMEMINFO attribute."""
    if length < _INET_DIAG_MSG_LEN:
        return None
    inode = _U32.unpack_from(buf, off + 68)[0]
    a, end = off + _INET_DIAG_MSG_LEN, off + length
    while a + 4 <= end:
        alen, atype = _NLATTR.unpack_from(buf, a)
        if alen < 4 or a + alen > end:
            return None
        if atype & 0x3FFF == INET_DIAG_SKMEMINFO and alen >= 4 + 4 * (SK_MEMINFO_DROPS + 1):
            return inode, _U32.unpack_from(buf, a + 4 + 4 * SK_MEMINFO_DROPS)[0]
        a += (alen + 3) & ~3
    return None


def _listen_drops(sock: socket.socket, seq: int, deadline: float,
                  out: dict[int, InetSocket]) -> None:
    for family in (socket.AF_INET, socket.AF_INET6):
        def on_msg(buf, off, length):
            hit = parse_listen_drops(buf, off, length)
            if hit is not None and hit[0] in out:
                out[hit[0]].drops = hit[1]
        _dump(sock, _inet_listen_request(family), seq, deadline, on_msg)
        seq += 1


INET_DIAG_INFO = 2
_TCPI_LAST_DATA_SENT = 44   # offsets in struct tcp_info (linux/tcp.h), milliseconds
_TCPI_LAST_DATA_RECV = 52
_TCPI_BYTES_ACKED = 120     # u64, Linux >= 4.1
MAX_LOOKUPS = 4096          # per call: exact lookups cost a netlink round trip each


def _sockid(s: InetSocket) -> bytes:
    size = 4 if s.family == socket.AF_INET else 16
    src = socket.inet_pton(s.family, s.local_addr)[:size].ljust(16, b"\0")
    dst = socket.inet_pton(s.family, s.remote_addr)[:size].ljust(16, b"\0")
    return struct.pack(">HH", s.local_port, s.remote_port) + src + dst + b"\0" * 4 + b"\xff" * 8


def parse_tcp_idle(buf, off: int, length: int) -> tuple[int, bool] | None:
    """(inode, idle) from one inet_diag_msg carrying INET_DIAG_INFO (struct tcp_info).

    Idle: the connection has sent data (its answer, bytes_acked > 0) and received
    nothing after its last send (last_data_recv >= last_data_sent, both "ms ago"; equal
    when the answer left in the same clock tick as the request came in): a keep-alive
    connection waiting for its next request. A request that came in after the last
    answer makes last_data_recv smaller: in flight."""
    if length < _INET_DIAG_MSG_LEN:
        return None
    inode = _U32.unpack_from(buf, off + 68)[0]
    a, end = off + _INET_DIAG_MSG_LEN, off + length
    while a + 4 <= end:
        alen, atype = _NLATTR.unpack_from(buf, a)
        if alen < 4 or a + alen > end:
            return None
        if atype & 0x3FFF == INET_DIAG_INFO and alen >= 4 + _TCPI_LAST_DATA_RECV + 4:
            sent = _U32.unpack_from(buf, a + 4 + _TCPI_LAST_DATA_SENT)[0]
            recv = _U32.unpack_from(buf, a + 4 + _TCPI_LAST_DATA_RECV)[0]
            if alen >= 4 + _TCPI_BYTES_ACKED + 8:
                answered = struct.unpack_from("=Q", buf, a + 4 + _TCPI_BYTES_ACKED)[0] > 0
                return inode, answered and recv >= sent
            return inode, recv > sent  # kernels before 4.1: only a strict order tells
        a += (alen + 3) & ~3
    return None


def tcp_idle(sockets: list[InetSocket], timeout: float = _DEFAULT_TIMEOUT) -> dict[int, bool]:
    """inode -> idle (see `parse_tcp_idle`) for established TCP sockets, by exact
    lookups (no dump of the host's table), all sent in one batch. Sockets that are gone,
    unread or unsent data (then the connection is in use), and anything beyond
    MAX_LOOKUPS are left out."""
    todo = [s for s in sockets if s.state == TCP_ESTABLISHED and s.rqueue == 0
            and s.wqueue == 0][:MAX_LOOKUPS]
    if not todo:
        return {}
    deadline = time.monotonic() + timeout
    out: dict[int, bool] = {}
    sock = _open(timeout)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        for start in range(0, len(todo), 256):  # a batch fits one send buffer
            batch = todo[start:start + 256]
            msgs = []
            for i, s in enumerate(batch):
                payload = _INET_DIAG_REQ_V2.pack(s.family, socket.IPPROTO_TCP,
                                                 1 << (INET_DIAG_INFO - 1), 0,
                                                 ALL_STATES_MASK, _sockid(s))
                msgs.append(_NLMSGHDR.pack(_NLMSGHDR_LEN + len(payload), SOCK_DIAG_BY_FAMILY,
                                           NLM_F_REQUEST, start + i + 1, 0) + payload)
            try:
                sock.sendto(b"".join(msgs), (0, 0))
            except OSError as e:
                raise SockDiagError(e.errno, f"sock_diag request failed: {e}") from e
            answers = 0
            buf = bytearray(_RECV_BUFSIZE)
            while answers < len(batch):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise SockDiagError(errno.ETIMEDOUT, "sock_diag lookups timed out")
                sock.settimeout(remaining)
                try:
                    n = sock.recv_into(buf)
                except socket.timeout as e:
                    raise SockDiagError(errno.ETIMEDOUT, "sock_diag lookups timed out") from e
                off = 0
                while off + _NLMSGHDR_LEN <= n:
                    mlen, mtype, _f, _seq, _p = _NLMSGHDR.unpack_from(buf, off)
                    if mlen < _NLMSGHDR_LEN or off + mlen > n:
                        raise _malformed()
                    answers += 1
                    if mtype == SOCK_DIAG_BY_FAMILY:
                        hit = parse_tcp_idle(buf, off + _NLMSGHDR_LEN, mlen - _NLMSGHDR_LEN)
                        if hit is not None:
                            out[hit[0]] = hit[1]
                    off += (mlen + 3) & ~3
        return out
    finally:
        sock.close()


# --------------------------------------------------------------------------
# Public API

def read_unix(timeout: float = _DEFAULT_TIMEOUT) -> dict[int, UnixSocket]:
    """All unix sockets of the current network namespace, keyed by inode.

    Sockets without an inode (embryonic connections not yet accepted, on
    kernels that report them with inode 0) are left out."""
    deadline = time.monotonic() + timeout
    sock = _open(timeout)
    try:
        return _dump_unix(sock, 1, deadline)
    finally:
        sock.close()


def read_tcp(states: int = ALL_STATES_MASK,
             timeout: float = _DEFAULT_TIMEOUT) -> dict[int, InetSocket]:
    """TCP sockets (IPv4 and IPv6) whose state bit is set in ``states``,
    keyed by inode.  Entries with inode 0 (TIME_WAIT, SYN_RECV request
    sockets) are left out; TIME_WAIT is not even requested from the kernel."""
    deadline = time.monotonic() + timeout
    sock = _open(timeout)
    try:
        out: dict[int, InetSocket] = {}
        _dump_inet(sock, socket.AF_INET, states, 1, deadline, out)
        _dump_inet(sock, socket.AF_INET6, states, 2, deadline, out)
        return out
    finally:
        sock.close()


def read_all(timeout: float = _DEFAULT_TIMEOUT, wanted=None) -> SocketTable:
    """Unix + TCP tables through one netlink socket (three dumps).

    Raises SockDiagError when netlink sock_diag is unavailable (no
    AF_NETLINK, unix_diag/inet_diag not loadable, seccomp, ...) or a dump
    fails or exceeds ``timeout`` seconds in total.

    ``wanted``: a set of inodes; when given, only those sockets (and unix sockets
    whose peer is one of them) are decoded. The kernel still dumps everything, but
    on a host with 20k sockets and a few hundred held by gunicorn this skips most
    of the Python work (see docs/performance.md)."""
    deadline = time.monotonic() + timeout
    sock = _open(timeout)
    try:
        unix = _dump_unix(sock, 1, deadline, wanted)
        inet: dict[int, InetSocket] = {}
        _dump_inet(sock, socket.AF_INET, ALL_STATES_MASK, 2, deadline, inet, wanted)
        _dump_inet(sock, socket.AF_INET6, ALL_STATES_MASK, 3, deadline, inet, wanted)
        if any(s.state == TCP_LISTEN for s in inet.values()):
            _listen_drops(sock, 4, deadline, inet)
        return SocketTable(unix=unix, inet=inet, source="netlink")
    finally:
        sock.close()
