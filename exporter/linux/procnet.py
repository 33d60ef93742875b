"""Fallback socket tables from the text files under /proc/net.

``/proc/<pid>/net/{unix,tcp,tcp6}`` show the network namespace of <pid>,
which netlink (bound to the caller's netns) cannot.  The parsers are pure
functions over the file text; ``read_table`` is the thin reader.

What the text files cannot tell (compared with netlink) is None, the one
representation of an unknown value in UnixSocket/InetSocket:
  * unix: no queue lengths, no peer inode, no shutdown bits, no file on disk
    (rqueue = wqueue = peer = shutdown = vfs_ino = vfs_dev = None);
  * tcp: the listen backlog limit (wqueue = None for LISTEN sockets) and the
    drop counter (drops = None).
"""

from __future__ import annotations

import os
import socket
import struct

from exporter.linux.sockets import (TCP_CLOSE, TCP_ESTABLISHED, TCP_LISTEN, InetSocket,
                                    SocketTable, UnixSocket)

__all__ = ["parse_proc_net_unix", "parse_proc_net_tcp", "read_table",
           "read_unix_file", "read_tcp_files"]

# /proc/net/unix "Flags" column: __SO_ACCEPTCON, set iff sk_state == LISTEN
_SO_ACCEPTCON = 0x10000
# "St" column (socket_state): SS_UNCONNECTED 1, SS_CONNECTING 2,
# SS_CONNECTED 3, SS_DISCONNECTING 4.  The kernel derives it from sk_state:
# ESTABLISHED -> 3 (2 for an embryo not yet accepted), anything else -> 1 (4).
_SS_CONNECTING = 2
_SS_CONNECTED = 3

_BE32 = struct.Struct(">I")
_NATIVE32 = struct.Struct("=I")
_BE4x32 = struct.Struct(">4I")
_NATIVE4x32 = struct.Struct("=4I")


def parse_proc_net_unix(text: str) -> dict[int, UnixSocket]:
    """Parse /proc/net/unix.  Entries with inode 0 (embryonic connections
    waiting in a listener's accept queue) are left out."""
    out: dict[int, UnixSocket] = {}
    lines = text.split("\n")
    for line in lines[1:]:  # first line is the header
        if not line:
            continue
        parts = line.split(None, 7)
        if len(parts) < 7:
            continue
        try:
            flags = int(parts[3], 16)
            stype = int(parts[4], 16)
            st = int(parts[5], 16)
            ino = int(parts[6])
        except ValueError:
            continue
        if ino == 0:
            continue
        if flags & _SO_ACCEPTCON:
            state = TCP_LISTEN
        elif st == _SS_CONNECTED or st == _SS_CONNECTING:
            state = TCP_ESTABLISHED
        else:
            state = TCP_CLOSE
        name = parts[7] if len(parts) > 7 else None
        out[ino] = UnixSocket(ino, state, stype, name or None, None, None, None, None,
                              None, None)
    return out


def _v4_addr(h: str, cache: dict) -> str:
    s = cache.get(h)
    if s is None:
        # %08X of the __be32 read as a host-order u32
        s = socket.inet_ntoa(_NATIVE32.pack(int(h, 16)))
        cache[h] = s
    return s


def _v6_addr(h: str, cache: dict) -> str:
    s = cache.get(h)
    if s is None:
        # four %08X words, each a host-order u32 of the in6_addr memory
        raw = _NATIVE4x32.pack(*_BE4x32.unpack(bytes.fromhex(h)))
        s = socket.inet_ntop(socket.AF_INET6, raw)
        cache[h] = s
    return s


def parse_proc_net_tcp(text: str, family: int) -> dict[int, InetSocket]:
    """Parse /proc/net/tcp (family=AF_INET) or /proc/net/tcp6 (AF_INET6).

    Entries with inode 0 (TIME_WAIT, SYN_RECV request sockets) are left
    out.  For LISTEN sockets rx_queue is the current accept-queue length
    and the backlog limit is unknown (wqueue = None)."""
    if family == socket.AF_INET:
        conv = _v4_addr
    elif family == socket.AF_INET6:
        conv = _v6_addr
    else:
        raise ValueError(f"unsupported family {family!r}")
    family = int(family)  # plain int, like the netlink reader
    cache: dict[str, str] = {}
    out: dict[int, InetSocket] = {}
    lines = text.split("\n")
    for line in lines[1:]:  # first line is the header
        parts = line.split(None, 10)
        if len(parts) < 10:
            continue
        # sl local rem st tx:rx tr:tm retrnsmt uid timeout inode ...
        try:
            ino = int(parts[9])
            if ino == 0:
                continue
            lh, lp = parts[1].split(":")
            rh, rp = parts[2].split(":")
            state = int(parts[3], 16)
            tx, rx = parts[4].split(":")
            uid = int(parts[7])
            rq = int(rx, 16)
            wq = None if state == TCP_LISTEN else int(tx, 16)
            out[ino] = InetSocket(ino, family, state, conv(lh, cache),
                                  int(lp, 16), conv(rh, cache), int(rp, 16),
                                  rq, wq, uid)
        except ValueError:
            continue
    return out


def _read_text(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        # A missing directory (e.g. /proc/<pid> of a process that exited)
        # must not look like an empty table.
        if not os.path.isdir(os.path.dirname(path)):
            raise
        return None  # e.g. tcp6 when IPv6 is disabled
    return data.decode("utf-8", "surrogateescape")


def read_unix_file(proc_net_dir: str = "/proc/net") -> dict[int, UnixSocket]:
    text = _read_text(proc_net_dir + "/unix")
    return parse_proc_net_unix(text) if text is not None else {}


def read_tcp_files(proc_net_dir: str = "/proc/net") -> dict[int, InetSocket]:
    out: dict[int, InetSocket] = {}
    for fname, fam in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        text = _read_text(f"{proc_net_dir}/{fname}")
        if text is not None:  # tcp6 is missing when IPv6 is disabled
            out.update(parse_proc_net_tcp(text, fam))
    return out


def read_table(proc_net_dir: str = "/proc/net") -> SocketTable:
    """Read unix, tcp and tcp6 from ``proc_net_dir`` (e.g. '/proc/net' or
    '/proc/<pid>/net' for another process's network namespace).  Missing
    files give empty tables (tcp6 without IPv6); a missing directory (the
    pid exited) raises FileNotFoundError; other OSErrors propagate."""
    return SocketTable(unix=read_unix_file(proc_net_dir),
                       inet=read_tcp_files(proc_net_dir),
                       source="procfs")
