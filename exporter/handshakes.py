"""How often each local user may make the exporter start a TLS handshake
(`exporter/guard.py` asks for every accepted TLS connection).

A handshake costs the server a signature (RSA-2048: about 1 ms of a core) as soon as the
ClientHello arrives, whoever sent it: 2,000 connections reopening handshakes as fast as
they are closed kept a core busy signing, and a real scrape waited behind them for more
than a second. The connection itself cannot tell Prometheus from the attacker; the
kernel can: the client's end of a local connection is a socket of this network
namespace, owned by a uid (one exact sock_diag lookup by addresses and ports,
`exporter.linux.sockdiag.peer_uid`). Each uid gets RATE handshakes a second on average,
BURST at once; past that its connections are closed before any TLS work. A user's flood
then costs the others nothing but accept and close.

A user may hold a range of subordinate uids (/etc/subuid, for rootless containers):
inside a user namespace it can setuid to any of them and connect from each, so every uid
of a range is charged to one bucket, the range's (a user has its own uid's share and one
per range of theirs, never 65,536).

Remote clients (no socket of theirs here) are not limited: a remote flood is the
firewall's. A client from an address of this host whose socket the kernel no longer has
is gone (reset, perhaps on purpose to escape its share): it is closed too, since a
handshake for it would be signed for nobody.
"""

from __future__ import annotations

import bisect
import ipaddress
import os
import socket
import time
from collections import OrderedDict

import psutil

from exporter.linux import sockdiag
from exporter.webauth import RateLimit

RATE = 50.0             # handshakes a second, per local uid, on average
BURST = 100.0           # handshakes at once, per local uid
MAX_USERS = 1024        # uids remembered (least recently seen forgotten: a full bucket again)
LOOKUP_TIMEOUT = 0.05   # seconds: the kernel answers an exact lookup at once
ADDRESSES_TTL = 10.0    # seconds the host's interface addresses are kept
SUBUID = "/etc/subuid"
SUBUID_TTL = 10.0       # seconds between looks at whether /etc/subuid changed
MAX_SUBUID = 1 << 20    # bytes of /etc/subuid read


class HandshakeBudget:
    def __init__(self, rate: float = RATE, burst: float = BURST):
        self.rate, self.burst = rate, burst
        self._users: OrderedDict[object, RateLimit] = OrderedDict()     # least recent first
        self._subuids = SubordinateIds()
        self._diag: socket.socket | None = None
        self._addresses: tuple[float, frozenset[str]] | None = None

    def admit(self, conn: socket.socket) -> bool:
        """May this accepted connection start a handshake? (Only TCP ones are asked: a
        unix socket's peer is the listener's file's business.)"""
        if conn.family not in (socket.AF_INET, socket.AF_INET6):
            return True
        try:
            local, peer = conn.getsockname(), conn.getpeername()
        except OSError:
            return False                    # gone already
        uid = self._uid(conn)
        now = time.monotonic()
        if uid is None:
            return not is_local(peer[0], local[0], self._host_addresses())
        return self.take(self._subuids.charged(uid, now), now)

    def _host_addresses(self) -> frozenset[str]:
        """The addresses of this network namespace's interfaces (psutil), read at most
        every ADDRESSES_TTL seconds."""
        now = time.monotonic()
        if self._addresses is None or now - self._addresses[0] >= ADDRESSES_TTL:
            try:
                found = frozenset(a.address.split("%", 1)[0]
                                  for addrs in psutil.net_if_addrs().values() for a in addrs
                                  if a.family in (socket.AF_INET, socket.AF_INET6))
            except OSError:
                found = frozenset()
            self._addresses = (now, found)
        return self._addresses[1]

    def take(self, who: object, now: float) -> bool:
        """One handshake from the bucket of `who` (a uid, or a subordinate range), if it
        has one (pure but for the bucket)."""
        bucket = self._users.pop(who, None) or RateLimit(1.0 / self.rate, self.burst, now)
        self._users[who] = bucket
        if len(self._users) > MAX_USERS:
            self._users.popitem(last=False)
        return bucket.allow(now)

    def _uid(self, conn: socket.socket) -> int | None:
        try:
            if self._diag is None:
                self._diag = sockdiag.open_socket(LOOKUP_TIMEOUT)
            return sockdiag.peer_uid(self._diag, conn, LOOKUP_TIMEOUT)
        except OSError:                     # no sock_diag, or a late answer: start afresh
            self.close()
            return None

    def close(self) -> None:
        if self._diag is not None:
            self._diag.close()
            self._diag = None


def is_local(peer: str, local: str, host_addresses: frozenset[str] = frozenset()) -> bool:
    """A client on this host: a loopback address, the address it connected to (the kernel
    picks that as the source of a connection to one of its own addresses), or any other
    address of this host's interfaces (a client may bind its source to one)."""
    try:
        addr = ipaddress.ip_address(peer.split("%", 1)[0])
    except ValueError:
        return False
    addr = getattr(addr, "ipv4_mapped", None) or addr
    return addr.is_loopback or peer == local or str(addr) in host_addresses


class SubordinateIds:
    """Which bucket a uid is charged to: a uid inside a range of /etc/subuid is charged to
    the range (its owner's containers), any other uid to itself. The file is read again
    when it changes (looked at every SUBUID_TTL seconds); an unreadable one has no ranges."""

    def __init__(self, path: str = SUBUID):
        self.path = path
        self._looked: float | None = None
        self._stamp: tuple | None = None
        self._starts: list[int] = []
        self._ranges: list[tuple[int, int, str]] = []

    def charged(self, uid: int, now: float) -> object:
        if self._looked is None or now - self._looked >= SUBUID_TTL:
            self._looked = now
            self._refresh()
        i = bisect.bisect_right(self._starts, uid) - 1
        if i >= 0:
            start, end, owner = self._ranges[i]
            if start <= uid < end:
                return ("subuid", owner, start)
        return uid

    def _refresh(self) -> None:
        try:
            st = os.stat(self.path)
            stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
            if stamp == self._stamp:
                return
            with open(self.path, "rb") as f:
                text = f.read(MAX_SUBUID).decode("utf-8", "replace")
        except OSError:
            stamp, text = None, ""
        self._stamp = stamp
        self._ranges = parse_subuid(text)
        self._starts = [r[0] for r in self._ranges]


def parse_subuid(text: str) -> list[tuple[int, int, str]]:
    """(start, end, owner) of each range of an /etc/subuid (`owner:start:count` lines),
    sorted, overlaps cut off; malformed lines are left out."""
    out = []
    for line in text.splitlines():
        parts = line.strip().split(":")
        if len(parts) != 3 or not parts[1].isdigit() or not parts[2].isdigit():
            continue
        start, count = int(parts[1]), int(parts[2])
        if count > 0 and start + count <= 1 << 32:
            out.append((start, start + count, parts[0][:64]))
    out.sort()
    kept: list[tuple[int, int, str]] = []
    for start, end, owner in out:
        if kept and start < kept[-1][1]:
            start = kept[-1][1]
        if start < end:
            kept.append((start, end, owner))
    return kept
