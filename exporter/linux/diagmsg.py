"""sock_diag messages: the requests to send and the answers to decode, as pure
functions over bytes (no socket here: exporter/linux/sockdiag.py sends and receives).

Answers arrive as an iterable of ``(buffer, length)`` datagrams -- the live receive
loop, or literal datagrams in tests/test_netlink.py -- and every one goes through the
single message walk of exporter/linux/netlink.py.  Decoders: ``decode_unix`` and
``decode_inet`` (the dumps; ``wanted`` keeps only some inodes and skips building the
rest), ``decode_listen_drops`` (INET_DIAG_SKMEMINFO), ``decode_lookups`` (the
batched exact lookups with INET_DIAG_INFO).  Message parsers: ``parse_unix``,
``parse_inet``, ``parse_listen_drops``, ``parse_tcp_idle``.

What they decode into is exporter/linux/sockets.py's; unknown values are None (here:
a unix socket without the RQLEN or SHUTDOWN attribute); 0 means none.

Layouts: uapi linux/sock_diag.h, linux/unix_diag.h, linux/inet_diag.h, linux/tcp.h.
"""

from __future__ import annotations

import errno
import socket
import struct

from exporter.linux.netlink import (HDR_LEN, NLM_F_DUMP, NLM_F_REQUEST, NetlinkError, align,
                                    attributes, frame, leading_matches, malformed, walk)
from exporter.linux.sockets import TCP_LISTEN, TCP_TIME_WAIT, InetSocket, TcpTimes, UnixSocket

ALL_STATES_MASK = (1 << 13) - 1   # states 0..12 (ss's SS_ALL); bit N selects state N

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20

UDIAG_SHOW_NAME = 0x01   # unix_diag_req.udiag_show bits
UDIAG_SHOW_VFS = 0x02
UDIAG_SHOW_PEER = 0x04
UDIAG_SHOW_RQLEN = 0x10
UNIX_DIAG_NAME = 0       # unix attribute types
UNIX_DIAG_VFS = 1
UNIX_DIAG_PEER = 2
UNIX_DIAG_RQLEN = 4
UNIX_DIAG_SHUTDOWN = 6   # sent by sk_diag_fill() unconditionally (kernel >= 3.10)

INET_DIAG_INFO = 2       # inet attribute types (ext bit = 1 << (type - 1))
INET_DIAG_SKMEMINFO = 7
SK_MEMINFO_DROPS = 8     # index in the SKMEMINFO u32 array
TCPI_LAST_DATA_SENT = 44  # offsets in struct tcp_info; milliseconds ago
TCPI_LAST_DATA_RECV = 52
TCPI_BYTES_ACKED = 120    # u64, Linux >= 4.1
TCPI_BYTES_RECEIVED = 128  # u64, Linux >= 4.1


# ------------------------------------------------------------------ requests

_UNIX_DIAG_REQ = struct.Struct("=BBHIII8s")   # family proto pad states ino show cookie
_INET_DIAG_REQ_V2 = struct.Struct("=BBBBI48s")  # family proto ext pad states sockid
_NOCOOKIE_SOCKID = bytes(40) + b"\xff" * 8     # what ss sends; ignored for dumps
_UNIX_SHOW = UDIAG_SHOW_NAME | UDIAG_SHOW_VFS | UDIAG_SHOW_PEER | UDIAG_SHOW_RQLEN


def unix_request(seq: int, states: int = 0xFFFFFFFF, show: int = _UNIX_SHOW) -> bytes:
    """Dump the unix sockets in ``states`` (every one by default) with the attributes
    ``show`` asks for (name, vfs, peer and queue lengths by default)."""
    return frame(SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, seq,
                 _UNIX_DIAG_REQ.pack(socket.AF_UNIX, 0, 0, states & 0xFFFFFFFF, 0, show,
                                     b"\xff" * 8))


def unix_lookup_requests(inodes: list[int], seq: int) -> bytes:
    """One exact lookup per unix socket inode (queue lengths only), sequence numbers
    ``seq``, ``seq + 1``, ...: the kernel finds each by inode instead of walking every
    unix socket of the namespace as a dump does."""
    return b"".join(
        frame(SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST, seq + i,
              _UNIX_DIAG_REQ.pack(socket.AF_UNIX, 0, 0, 0xFFFFFFFF, ino & 0xFFFFFFFF,
                                  UDIAG_SHOW_RQLEN, b"\xff" * 8))
        for i, ino in enumerate(inodes))


def _lookup_answers(buf, n: int, seq: int, nseq: int):
    """(answers in this datagram, (offset, length) of each message) for exact lookups
    with sequence numbers ``seq``... (``nseq`` of them); a socket that is gone answers
    with an NLMSG_ERROR, which counts as an answer."""
    errors: list = []
    runs, _done = walk(buf, n, SOCK_DIAG_BY_FAMILY, seq, nseq, errors)
    messages = list(_messages(buf, runs))
    return len(errors) + len(messages), messages


def _socket_lookups(parse):
    """A decoder of one datagram of exact-lookup answers (``nseq`` of them from ``seq``)
    into ``out``, inode: the socket ``parse`` makes of each; it returns how many answers
    the datagram held (a socket that is gone answers with an NLMSG_ERROR, which counts)."""
    def decode(buf, n: int, seq: int, nseq: int, out: dict) -> int:
        answers, messages = _lookup_answers(buf, n, seq, nseq)
        for off, length in messages:
            s = parse(buf, off, length)
            if s is not None:
                out[s.inode] = s
        return answers
    return decode


def inet_request(family: int, states: int, seq: int) -> bytes:
    """Dump TCP sockets in ``states``.  TIME_WAIT is never asked for: those have no
    inode and there can be tens of thousands."""
    states &= ~(1 << TCP_TIME_WAIT)
    return frame(SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, seq,
                 _INET_DIAG_REQ_V2.pack(family, socket.IPPROTO_TCP, 0, 0,
                                        states & 0xFFFFFFFF, _NOCOOKIE_SOCKID))


def listen_request(family: int, seq: int) -> bytes:
    """Dump LISTEN sockets with their socket memory info, whose sk_drops counts every
    connection dropped there, a full accept queue included (also in TcpExt
    ListenDrops)."""
    return frame(SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, seq,
                 _INET_DIAG_REQ_V2.pack(family, socket.IPPROTO_TCP,
                                        1 << (INET_DIAG_SKMEMINFO - 1), 0,
                                        1 << TCP_LISTEN, _NOCOOKIE_SOCKID))


def udp_request(family: int, seq: int) -> bytes:
    """Dump every UDP socket of ``family`` with its memory info (sk_drops: datagrams
    dropped on a full receive buffer)."""
    return frame(SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, seq,
                 _INET_DIAG_REQ_V2.pack(family, socket.IPPROTO_UDP,
                                        1 << (INET_DIAG_SKMEMINFO - 1), 0,
                                        ALL_STATES_MASK, _NOCOOKIE_SOCKID))


def sockid(s: InetSocket, ifindex: int = 0) -> bytes:
    """struct inet_diag_sockid of a connection (ports and addresses big-endian; the
    interface, host order, only matters for a socket bound to one)."""
    size = 4 if s.family == socket.AF_INET else 16
    src = socket.inet_pton(s.family, s.local_addr)[:size].ljust(16, b"\0")
    dst = socket.inet_pton(s.family, s.remote_addr)[:size].ljust(16, b"\0")
    return (struct.pack(">HH", s.local_port, s.remote_port) + src + dst
            + struct.pack("=I", ifindex) + b"\xff" * 8)


def lookup_requests(sockets: list[InetSocket], seq: int,
                    ext: int = 1 << (INET_DIAG_INFO - 1), ifindex: int = 0) -> bytes:
    """One exact lookup per socket (by its addresses and ports; with INET_DIAG_INFO,
    tcp_info, by default; ``ext=0``: the bare message), sequence numbers ``seq``,
    ``seq + 1``, ...; each is answered by one message or an NLMSG_ERROR. The kernel
    finds each in its hash tables, a listener by its local address and port."""
    return b"".join(
        frame(SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST, seq + i,
              _INET_DIAG_REQ_V2.pack(s.family, socket.IPPROTO_TCP, ext, 0,
                                     ALL_STATES_MASK, sockid(s, ifindex)))
        for i, s in enumerate(sockets))


# ------------------------------------------------------------------ unix answers

_UNIX_DIAG_MSG = struct.Struct("=BBBxI8x")   # family type state pad ino cookie
_U32 = struct.Struct("=I")
_2U32 = struct.Struct("=II")
_U64 = struct.Struct("=Q")

# The commonest unix message, an unnamed connected socket: exactly PEER(8) RQLEN(12)
# SHUTDOWN(5, padded to 8) in the order sk_diag_fill() emits them, 60 bytes with the
# header.  A run of them is checked by its attribute headers and decoded in one go.
_UNIX_FAST = struct.Struct("=16x" "xBBxI8x" "4xI" "4xII" "4xB3x")  # type state ino peer rq wq shut
_UNIX_FAST_ATTRS = ((32, struct.pack("=HH", 8, UNIX_DIAG_PEER)),
                    (40, struct.pack("=HH", 12, UNIX_DIAG_RQLEN)),
                    (52, struct.pack("=HH", 5, UNIX_DIAG_SHUTDOWN)))


def decode_name(raw: bytes) -> str:
    """A bound name as /proc/net/unix and ss show it: abstract as '@name', NULs '@'."""
    if raw[:1] == b"\0":
        return "@" + raw[1:].replace(b"\0", b"@").decode("utf-8", "surrogateescape")
    i = raw.find(b"\0")
    if i >= 0:
        raw = raw[:i]
    return raw.decode("utf-8", "surrogateescape")


def parse_unix(buf, off: int, length: int, wanted=None) -> UnixSocket | None:
    """One unix_diag_msg with its attributes at ``buf[off:off + length]`` (after the
    netlink header), in any attribute order, unknown types skipped.  None for inode 0
    (an embryo in an accept queue) and, with ``wanted``, unless it or its peer is in
    it.  A message shorter than its struct raises NetlinkError."""
    if length < _UNIX_DIAG_MSG.size:
        raise malformed("unix_diag_msg shorter than its struct")
    _fam, stype, state, ino = _UNIX_DIAG_MSG.unpack_from(buf, off)
    name = None
    peer = 0
    rq = wq = shut = None
    vfs_ino = vfs_dev = 0
    for atype, p, vlen in attributes(buf, off + _UNIX_DIAG_MSG.size, off + length):
        if atype == UNIX_DIAG_PEER and vlen >= 4:
            peer = _U32.unpack_from(buf, p)[0]
        elif atype == UNIX_DIAG_RQLEN and vlen >= 8:
            rq, wq = _2U32.unpack_from(buf, p)
        elif atype == UNIX_DIAG_SHUTDOWN and vlen >= 1:
            shut = buf[p]
        elif atype == UNIX_DIAG_NAME:
            name = bytes(buf[p:p + vlen])
        elif atype == UNIX_DIAG_VFS and vlen >= 8:
            vfs_ino, vfs_dev = _2U32.unpack_from(buf, p)
    if not ino or (wanted is not None and ino not in wanted and peer not in wanted):
        return None
    return UnixSocket(ino, state, stype, None if name is None else decode_name(name),
                      peer, rq, wq, shut, vfs_ino, vfs_dev)


def decode_unix(chunks, seq: int, wanted=None) -> dict[int, UnixSocket]:
    """A unix dump answer -> inode: UnixSocket, from ``(buffer, length)`` datagrams
    until NLMSG_DONE.  ``wanted``: a set of inodes; only those and the unix sockets
    whose peer is one of them are kept.  NetlinkError when the datagrams end first."""
    out: dict[int, UnixSocket] = {}
    Unix = UnixSocket
    iter_fast = _UNIX_FAST.iter_unpack
    FAST = _UNIX_FAST.size
    for buf, n in chunks:
        runs, done = walk(buf, n, SOCK_DIAG_BY_FAMILY, seq)
        for off, mlen, count in runs:
            step = align(mlen)
            while count:
                k = leading_matches(buf, off, FAST, count, _UNIX_FAST_ATTRS) \
                    if mlen == FAST else 0
                if k:
                    for stype, state, ino, peer, rq, wq, shut in iter_fast(buf[off:off + k * FAST]):
                        if ino and (wanted is None or ino in wanted or peer in wanted):
                            out[ino] = Unix(ino, state, stype, None, peer, rq, wq, shut, 0)
                    off += k * FAST
                    count -= k
                    continue
                s = parse_unix(buf, off + HDR_LEN, mlen - HDR_LEN, wanted)
                if s is not None:
                    out[s.inode] = s
                off += step
                count -= 1
        if done:
            return out
    raise NetlinkError(errno.EIO, "sock_diag: answer ended without NLMSG_DONE")


# ------------------------------------------------------------------ inet answers

INET_DIAG_MSG_LEN = 72
# inet_diag_msg: family state timer retrans | sockid: ports(be) src dst if cookie |
# expires rqueue wqueue uid inode.  Ports are big-endian: kept raw, read with _PORTS.
_INET_MSG = "BB2x4s16s16s12x4xIIII"
_INET = struct.Struct("=" + _INET_MSG)
_PORTS = struct.Struct(">HH")
_inet_runs: dict[int, struct.Struct] = {}   # message stride -> header + msg + rest


def _address(family: int, raw16: bytes) -> str:
    if family == socket.AF_INET:
        return socket.inet_ntoa(raw16[:4])
    return socket.inet_ntop(socket.AF_INET6, raw16)


def parse_inet(buf, off: int, length: int) -> InetSocket | None:
    """One inet_diag_msg at ``buf[off:off + length]`` (after the netlink header);
    attributes ignored.  None for inode 0 (TIME_WAIT, request sockets)."""
    if length < INET_DIAG_MSG_LEN:
        raise malformed("inet_diag_msg shorter than its struct")
    fam, state, ports, src, dst, rq, wq, uid, ino = _INET.unpack_from(buf, off)
    if not ino:
        return None
    sport, dport = _PORTS.unpack(ports)
    return InetSocket(ino, fam, state, _address(fam, src), sport, _address(fam, dst),
                      dport, rq, wq, uid)


def decode_inet(chunks, seq: int, out: dict[int, InetSocket], wanted=None) -> None:
    """A TCP dump answer into ``out`` (inode: InetSocket), from ``(buffer, length)``
    datagrams until NLMSG_DONE; ``wanted`` as in decode_unix (no peers here)."""
    cache: dict[bytes, str] = {}
    Inet = InetSocket
    unpack_ports = _PORTS.unpack
    for buf, n in chunks:
        runs, done = walk(buf, n, SOCK_DIAG_BY_FAMILY, seq)
        for off, mlen, count in runs:
            if mlen < HDR_LEN + INET_DIAG_MSG_LEN:
                raise malformed("inet_diag_msg shorter than its struct")
            step = align(mlen)
            whole = min(count, (n - off) // step)   # the last may lack its padding
            rec = _inet_runs.get(step)
            if rec is None:
                if len(_inet_runs) >= 16:   # one or two strides per kernel; bounded
                    _inet_runs.clear()
                rec = _inet_runs[step] = struct.Struct(
                    f"=16x{_INET_MSG}{step - HDR_LEN - INET_DIAG_MSG_LEN}x")
            for fam, state, ports, src, dst, rq, wq, uid, ino in \
                    rec.iter_unpack(buf[off:off + whole * step]):
                if ino and (wanted is None or ino in wanted):
                    sport, dport = unpack_ports(ports)
                    la = cache.get(src)
                    if la is None:
                        la = cache[src] = _address(fam, src)
                    ra = cache.get(dst)
                    if ra is None:
                        ra = cache[dst] = _address(fam, dst)
                    out[ino] = Inet(ino, fam, state, la, sport, ra, dport, rq, wq, uid)
            for i in range(whole, count):
                s = parse_inet(buf, off + i * step + HDR_LEN, mlen - HDR_LEN)
                if s is not None and (wanted is None or s.inode in wanted):
                    out[s.inode] = s
        if done:
            return
    raise NetlinkError(errno.EIO, "sock_diag: answer ended without NLMSG_DONE")


def _messages(buf, runs):
    """(payload offset, payload length) of every message of ``runs``."""
    for off, mlen, count in runs:
        step = align(mlen)
        for i in range(count):
            yield off + i * step + HDR_LEN, mlen - HDR_LEN


def parse_listen_drops(buf, off: int, length: int) -> tuple[int, int] | None:
    """(inode, sk_drops) from one inet_diag_msg with INET_DIAG_SKMEMINFO; None
    without that attribute."""
    if length < INET_DIAG_MSG_LEN:
        raise malformed("inet_diag_msg shorter than its struct")
    inode = _U32.unpack_from(buf, off + 68)[0]
    for atype, p, vlen in attributes(buf, off + INET_DIAG_MSG_LEN, off + length):
        if atype == INET_DIAG_SKMEMINFO and vlen >= 4 * (SK_MEMINFO_DROPS + 1):
            return inode, _U32.unpack_from(buf, p + 4 * SK_MEMINFO_DROPS)[0]
    return None


def decode_listen_drops(chunks, seq: int, out: dict[int, InetSocket]) -> None:
    """A LISTEN dump with SKMEMINFO: set ``drops`` of the sockets of ``out``."""
    for buf, n in chunks:
        runs, done = walk(buf, n, SOCK_DIAG_BY_FAMILY, seq)
        for off, length in _messages(buf, runs):
            hit = parse_listen_drops(buf, off, length)
            if hit is not None and hit[0] in out:
                out[hit[0]].drops = hit[1]
        if done:
            return
    raise NetlinkError(errno.EIO, "sock_diag: answer ended without NLMSG_DONE")


def decode_listeners(chunks, seq: int, out: dict[int, InetSocket], wanted=None) -> None:
    """A LISTEN dump with SKMEMINFO (listen_request) into ``out``: each listening socket
    (``wanted`` as in decode_inet) with its ``drops``."""
    for buf, n in chunks:
        runs, done = walk(buf, n, SOCK_DIAG_BY_FAMILY, seq)
        for off, length in _messages(buf, runs):
            s = parse_inet(buf, off, length)
            if s is None or (wanted is not None and s.inode not in wanted):
                continue
            hit = parse_listen_drops(buf, off, length)
            if hit is not None:
                s.drops = hit[1]
            out[s.inode] = s
        if done:
            return
    raise NetlinkError(errno.EIO, "sock_diag: answer ended without NLMSG_DONE")


def parse_tcp_times(buf, off: int, length: int) -> tuple[int, TcpTimes] | None:
    """(inode, times) from one inet_diag_msg carrying INET_DIAG_INFO (struct tcp_info);
    None without that attribute."""
    if length < INET_DIAG_MSG_LEN:
        raise malformed("inet_diag_msg shorter than its struct")
    inode = _U32.unpack_from(buf, off + 68)[0]
    for atype, p, vlen in attributes(buf, off + INET_DIAG_MSG_LEN, off + length):
        if atype == INET_DIAG_INFO and vlen >= TCPI_LAST_DATA_RECV + 4:
            sent = _U32.unpack_from(buf, p + TCPI_LAST_DATA_SENT)[0]
            recv = _U32.unpack_from(buf, p + TCPI_LAST_DATA_RECV)[0]
            answered = _U64.unpack_from(buf, p + TCPI_BYTES_ACKED)[0] > 0 \
                if vlen >= TCPI_BYTES_ACKED + 8 else None
            received = _U64.unpack_from(buf, p + TCPI_BYTES_RECEIVED)[0] > 0 \
                if vlen >= TCPI_BYTES_RECEIVED + 8 else None
            return inode, TcpTimes(sent, recv, answered, received)
    return None


def parse_tcp_idle(buf, off: int, length: int) -> tuple[int, bool] | None:
    """(inode, idle) of a worker's client connection: the connection has sent data (its
    answer, bytes_acked > 0) and received nothing after its last send (last_data_recv
    >= last_data_sent, both "ms ago"; equal when the answer left in the same clock tick
    as the request came in): a keep-alive connection waiting for its next request. A
    request that came in after the last answer makes last_data_recv smaller: in flight."""
    hit = parse_tcp_times(buf, off, length)
    return None if hit is None else (hit[0], hit[1].sent_last)


# answers to unix_lookup_requests(...) -> UnixSocket; to lookup_requests(..., ext=0) ->
# InetSocket (whatever socket the kernel found at that address)
decode_unix_lookups = _socket_lookups(parse_unix)
decode_inet_lookups = _socket_lookups(parse_inet)


def decode_lookups(buf, n: int, seq: int, nseq: int, out: dict, parse=parse_tcp_idle) -> int:
    """One datagram of answers to ``lookup_requests(..., seq)`` (``nseq`` of them):
    inode -> idle (or what ``parse`` makes of it) into ``out``; returns how many answers
    it held (a socket that is gone answers with an NLMSG_ERROR, which counts too)."""
    answers, messages = _lookup_answers(buf, n, seq, nseq)
    for off, length in messages:
        hit = parse(buf, off, length)
        if hit is not None:
            out[hit[0]] = hit[1]
    return answers
