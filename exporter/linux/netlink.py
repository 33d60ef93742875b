"""The netlink message walk: pure functions over received datagrams.

One walk (`walk`) checks every message header of a datagram (length, alignment,
sequence number) and handles the control messages (NLMSG_DONE, NLMSG_ERROR,
NLMSG_OVERRUN, NLMSG_NOOP); it hands the data messages to the caller as *runs*:
consecutive messages whose 16-byte headers are byte-identical (same length, type,
flags, sequence).  A dump answer is almost entirely one run per datagram, so the
callers (exporter/linux/diagmsg.py) can decode a run at C speed (`leading_matches`,
`struct.iter_unpack`) instead of one Python step per message: on a host with 20k
sockets that per-message work was half the cost of a scrape.

No I/O here: exporter/linux/sockdiag.py owns the socket.  Layouts come from the
uapi header linux/netlink.h; netlink is host-endian.  Knows nothing of sock_diag.
"""

from __future__ import annotations

import errno
import os
import struct

__all__ = ["NetlinkError", "NLMSG_NOOP", "NLMSG_ERROR", "NLMSG_DONE", "NLMSG_OVERRUN",
           "NLM_F_REQUEST", "NLM_F_MULTI", "NLM_F_DUMP", "HDR_LEN", "align", "frame",
           "walk", "attributes", "leading_matches", "malformed"]

NLMSG_NOOP = 1
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLMSG_OVERRUN = 4

NLM_F_REQUEST = 0x01
NLM_F_MULTI = 0x02
NLM_F_ROOT = 0x100
NLM_F_MATCH = 0x200
NLM_F_DUMP = NLM_F_ROOT | NLM_F_MATCH

NLA_TYPE_MASK = 0x3FFF   # strips NLA_F_NESTED / NLA_F_NET_BYTEORDER

_NLMSGHDR = struct.Struct("=IHHII")     # len, type, flags, seq, pid
HDR_LEN = _NLMSGHDR.size                # 16
_NLATTR = struct.Struct("=HH")          # nla_len, nla_type
_I32 = struct.Struct("=i")


class NetlinkError(OSError):
    """A netlink request failed: the kernel's NLMSG_ERROR or NLMSG_OVERRUN, a malformed
    or incomplete answer, or the socket I/O (then raised by exporter/linux/sockdiag.py,
    which exports this class as SockDiagError)."""


def malformed(what: str = "malformed netlink message") -> NetlinkError:
    return NetlinkError(errno.EIO, f"netlink: {what}")


def align(n: int) -> int:
    """NLMSG_ALIGN / NLA_ALIGN: round up to 4 bytes."""
    return (n + 3) & ~3


def frame(msg_type: int, flags: int, seq: int, payload: bytes) -> bytes:
    """One netlink request message: nlmsghdr + payload (pid 0: the kernel)."""
    return _NLMSGHDR.pack(HDR_LEN + len(payload), msg_type, flags, seq, 0) + payload


def walk(buf, n: int, data_type: int, seq: int, nseq: int = 1,
         errors: list | None = None) -> tuple[list[tuple[int, int, int]], bool]:
    """Walk the netlink messages in ``buf[:n]`` (bytes or bytearray).

    Returns ``(runs, done)``: ``runs`` lists ``(offset, length, count)`` for the
    messages of type ``data_type`` whose sequence number is in
    ``[seq, seq + nseq)``: ``count`` consecutive messages with byte-identical
    headers, each ``length`` bytes long (header included) and ``align(length)``
    apart, the first at ``offset``.  ``done`` is True at NLMSG_DONE (the walk stops
    there).  Messages of other sequence numbers (a stale answer) and NLMSG_NOOP are
    skipped; an NLMSG_ERROR carrying 0 (an ACK) too.

    Raises NetlinkError on NLMSG_OVERRUN, on a header whose length is below 16 or
    runs past ``n``, on 1..15 stray bytes after the last message, and on an
    NLMSG_ERROR with an errno -- unless ``errors`` is a list: then ``(seq, errno)``
    is appended to it (exact lookups, where a socket that is gone answers ENOENT).
    """
    unpack_hdr = _NLMSGHDR.unpack_from
    last_seq = seq + nseq
    runs: list[tuple[int, int, int]] = []
    off = 0
    while off + HDR_LEN <= n:
        mlen, mtype, _flags, mseq, _pid = unpack_hdr(buf, off)
        if mlen < HDR_LEN or off + mlen > n:
            raise malformed("netlink message runs past the datagram" if mlen >= HDR_LEN
                            else "netlink message shorter than its header")
        step = (mlen + 3) & ~3
        if not seq <= mseq < last_seq:
            off += step
            continue
        if mtype == data_type:
            count = _repeats(buf, off, mlen, step, n)
            runs.append((off, mlen, count))
            off += count * step
            continue
        if mtype == NLMSG_DONE:
            return runs, True
        if mtype == NLMSG_ERROR:
            err = -_I32.unpack_from(buf, off + HDR_LEN)[0] if mlen >= HDR_LEN + 4 else 0
            if err:
                if errors is None:
                    raise NetlinkError(err, f"netlink: kernel error: {os.strerror(err)}")
                errors.append((mseq, err))
        elif mtype == NLMSG_OVERRUN:
            raise NetlinkError(errno.EIO, "netlink: overrun (answers were lost)")
        off += step
    if 0 < n - off < HDR_LEN:
        raise malformed("truncated netlink header")
    return runs, False


def _repeats(buf, off: int, mlen: int, step: int, n: int) -> int:
    """How many messages from ``off`` on have the header of the one at ``off``."""
    nxt = off + step
    if nxt + mlen > n or buf[nxt:nxt + HDR_LEN] != buf[off:off + HDR_LEN]:
        return 1
    most = (n - off - mlen) // step + 1          # the last one must end within n
    return leading_matches(buf, off, step, most, ((0, bytes(buf[off:off + HDR_LEN])),))


def leading_matches(buf, start: int, step: int, count: int, patterns) -> int:
    """How many of the ``count`` records at ``start``, ``start + step``, ... hold,
    from the first on, every ``(offset, bytes)`` of ``patterns`` (offsets within a
    record).  Done with strided slices, one per pattern byte, not per record."""
    k = count
    for at, pattern in patterns:
        for j in range(len(pattern)):
            p = start + at + j
            col = buf[p:p + (k - 1) * step + 1:step]
            if not isinstance(col, (bytes, bytearray)):
                col = bytes(col)   # a memoryview
            k = min(k, len(col) - len(col.lstrip(pattern[j:j + 1])))
            if not k:
                return 0
    return k


def attributes(buf, a: int, end: int):
    """Yield ``(type, value_offset, value_length)`` for the netlink attributes in
    ``buf[a:end]``, type without the NLA_F_* flag bits.  Raises NetlinkError on an
    attribute whose length is below 4 or runs past ``end``; fewer than 4 bytes left
    over at the end are padding."""
    unpack_attr = _NLATTR.unpack_from
    while a + 4 <= end:
        alen, atype = unpack_attr(buf, a)
        if alen < 4 or a + alen > end:
            raise malformed("netlink attribute runs past its message")
        yield atype & NLA_TYPE_MASK, a + 4, alen - 4
        a += (alen + 3) & ~3
