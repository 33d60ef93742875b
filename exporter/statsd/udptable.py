"""The UDP sockets of this network namespace: which socket inode has a given local
address and port, and the drop counter (sk_drops) of the exporter's own socket.

One netlink sock_diag dump per family (IPPROTO_UDP, with INET_DIAG_SKMEMINFO for the drop
counters), decoded with the same message walk and parsers as the TCP tables
(exporter/linux/netlink.py, exporter/linux/diagmsg.py); `/proc/net/udp` and `udp6` are the
fallback (the same columns as /proc/net/tcp, plus `drops` last). Only sockets on the
ports asked for (and the exporter's own inode) are kept, so a host's DNS traffic costs
the kernel's dump and a port comparison per socket, nothing more.

Pure functions (`decode_udp`, `parse_proc_net_udp`; the request is diagmsg's
`udp_request`) are tested on literal input; `read_udp` is the I/O. Knows nothing of
gunicorn or Prometheus.
"""

from __future__ import annotations

import errno
import socket
import struct
import time
from dataclasses import dataclass

from exporter.linux import sockdiag
from exporter.linux.diagmsg import (INET_DIAG_MSG_LEN, SOCK_DIAG_BY_FAMILY, parse_inet,
                                    parse_listen_drops, udp_request)
from exporter.linux.netlink import HDR_LEN, NetlinkError, align, walk
from exporter.linux.procnet import parse_proc_net_tcp

_U32 = struct.Struct("=I")                   # the inode, at offset 68 of inet_diag_msg


@dataclass(slots=True)
class UdpSocket:
    inode: int
    family: int
    local_addr: str
    local_port: int
    remote_addr: str       # '0.0.0.0' / '::' when not connected
    remote_port: int       # 0 when not connected
    uid: int
    drops: int | None = None


def decode_udp(chunks, seq: int, out: dict[int, UdpSocket], ports: set[int] | None = None,
               inodes: set[int] | None = None) -> None:
    """A UDP dump answer into `out` (inode -> UdpSocket), from `(buffer, length)`
    datagrams until NLMSG_DONE; only sockets on `ports` or with an inode in `inodes`
    when given. NetlinkError when the datagrams end first."""
    for buf, n in chunks:
        runs, done = walk(buf, n, SOCK_DIAG_BY_FAMILY, seq)
        for off, mlen, count in runs:
            step = align(mlen)
            for i in range(count):
                p = off + i * step + HDR_LEN
                if ports is not None and mlen - HDR_LEN >= INET_DIAG_MSG_LEN:
                    # the local port and inode from the raw message: most of a crowded
                    # table is skipped before anything is decoded
                    if (buf[p + 4] << 8 | buf[p + 5]) not in ports and \
                            (inodes is None or _U32.unpack_from(buf, p + 68)[0] not in inodes):
                        continue
                s = parse_inet(buf, p, mlen - HDR_LEN)   # (raises when shorter)
                if s is None:
                    continue
                d = parse_listen_drops(buf, p, mlen - HDR_LEN)
                out[s.inode] = UdpSocket(s.inode, s.family, s.local_addr, s.local_port,
                                         s.remote_addr, s.remote_port, s.uid,
                                         d[1] if d else None)
        if done:
            return
    raise NetlinkError(errno.EIO, "sock_diag: answer ended without NLMSG_DONE")


def parse_proc_net_udp(text: str, family: int) -> dict[int, UdpSocket]:
    """/proc/net/udp (AF_INET) or udp6 (AF_INET6): the tcp parser's columns, and the
    `drops` column last."""
    out: dict[int, UdpSocket] = {}
    drops: dict[int, int] = {}
    for line in text.split("\n")[1:]:
        parts = line.split()
        if len(parts) >= 13 and parts[9].isdigit() and parts[-1].isdigit():
            drops[int(parts[9])] = int(parts[-1])
    for ino, s in parse_proc_net_tcp(text, family).items():
        out[ino] = UdpSocket(ino, s.family, s.local_addr, s.local_port, s.remote_addr,
                             s.remote_port, s.uid, drops.get(ino))
    return out


def _netlink(ports, inodes, timeout: float) -> dict[int, UdpSocket]:
    """The two dumps through sockdiag's bounded socket I/O (deadline, MSG_TRUNC)."""
    deadline = time.monotonic() + timeout
    out: dict[int, UdpSocket] = {}
    sock = sockdiag.open_socket(timeout)
    try:
        for seq, family in enumerate((socket.AF_INET, socket.AF_INET6), 1):
            sockdiag.dump(sock, udp_request(family, seq), deadline,
                          lambda chunks, seq=seq: decode_udp(chunks, seq, out, ports, inodes))
        return out
    finally:
        sock.close()


def _procfs(ports, inodes, proc_net: str) -> dict[int, UdpSocket]:
    out: dict[int, UdpSocket] = {}
    for name, family in (("udp", socket.AF_INET), ("udp6", socket.AF_INET6)):
        try:
            with open(f"{proc_net}/{name}", "rb") as f:
                text = f.read(64 << 20).decode("ascii", "replace")
        except FileNotFoundError:   # udp6 without IPv6
            continue
        for ino, s in parse_proc_net_udp(text, family).items():
            if ports is None or s.local_port in ports or (inodes and ino in inodes):
                out[ino] = s
    return out


def read_udp(ports: set[int] | None = None, inodes: set[int] | None = None,
             timeout: float = 1.0, proc_net: str = "/proc/net") -> tuple[dict[int, UdpSocket], str]:
    """(inode -> UdpSocket, source) for the sockets on `ports` or with an inode in
    `inodes` (every socket when `ports` is None); source 'netlink' or 'procfs'. Raises
    OSError when neither can be read."""
    try:
        return _netlink(ports, inodes, timeout), "netlink"
    except OSError:
        return _procfs(ports, inodes, proc_net), "procfs"


_MAPPED = "::ffff:"


def plain_address(host: str) -> str:
    """An IPv4-mapped IPv6 address (a dual-stack socket's view of an IPv4 sender) as
    IPv4; anything else unchanged."""
    if host.startswith(_MAPPED) and "." in host:
        return host[len(_MAPPED):]
    return host
