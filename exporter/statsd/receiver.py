"""The statsd UDP socket and how the event loop reads it.

asyncio's own datagram transport reads one datagram per readiness callback: at tens of
thousands of packets a second the loop spends more time in epoll and callback dispatch
than in the work. `Receiver` registers the non-blocking socket with `loop.add_reader`
and drains up to `batch` datagrams per wake-up (the recvmmsg idea, with one recvfrom
call each: Python has no recvmmsg), handing each to a `DatagramProtocol`'s
`datagram_received`. The batch bound keeps the loop responsive (a scrape waits at most
one batch); what is left is read on the next wake-up, and the kernel buffers it
meanwhile (SO_RCVBUF, raised with SO_RCVBUFFORCE when the exporter may, else up to
net.core.rmem_max).

`mode="transport"` uses `loop.create_datagram_endpoint` instead (bench/statsd.py compares
the two).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import time

log = logging.getLogger(__name__)

BATCH = 256                 # datagrams per wake-up
DRAIN_SECONDS = 0.005       # and at most this much work per wake-up
MAX_DATAGRAM = 65535


class StatsdProtocol(asyncio.DatagramProtocol):
    """Hands every datagram to `feed(data, addr)`; an exception there costs that
    datagram only (counted in `errors`, logged once)."""

    def __init__(self, feed):
        self.feed = feed
        self.errors = 0
        self._logged = False

    def datagram_received(self, data: bytes, addr) -> None:
        try:
            self.feed(data, addr)
        except Exception:  # noqa: BLE001 - a bug must not stop the receiver
            self.errors += 1
            if not self._logged:
                self._logged = True
                log.exception("statsd: a datagram could not be handled")

    def error_received(self, exc: Exception) -> None:
        self.errors += 1


def bind(host: str | None, port: int, receive_buffer: int) -> socket.socket:
    """A non-blocking UDP socket bound to host:port (all IPv4 interfaces when host is
    None). SO_REUSEADDR is not set: a port another socket holds fails (EADDRINUSE)
    instead of being shared."""
    family = socket.AF_INET6 if host and ":" in host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
    try:
        if receive_buffer:
            try:   # beyond net.core.rmem_max: needs CAP_NET_ADMIN
                s.setsockopt(socket.SOL_SOCKET, getattr(socket, "SO_RCVBUFFORCE", 33),
                             receive_buffer)
            except OSError:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        s.bind((host or "", port))
    except BaseException:
        s.close()
        raise
    return s


class Receiver:
    def __init__(self, host: str | None, port: int, feed, *, receive_buffer: int = 0,
                 batch: int = BATCH, mode: str = "batch"):
        self.host, self.port = host, port
        self.protocol = StatsdProtocol(feed)
        self.receive_buffer = receive_buffer
        self.batch = batch
        self.mode = mode
        self.sock: socket.socket | None = None
        self.inode: int | None = None
        self.buffer_size: int | None = None   # SO_RCVBUF in force (the kernel doubles it)
        self.bind_error: OSError | None = None
        self._transport = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def up(self) -> bool:
        return self.sock is not None

    async def start(self) -> bool:
        """Bind and start reading; False (and `bind_error` set) when the address cannot
        be bound. Calling it again retries."""
        if self.sock is not None:
            return True
        try:
            sock = bind(self.host, self.port, self.receive_buffer)
        except OSError as e:
            self.bind_error = e
            return False
        self.bind_error = None
        self.sock = sock
        self.inode = os.fstat(sock.fileno()).st_ino
        self.buffer_size = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        self._loop = asyncio.get_running_loop()
        if self.mode == "transport":
            self._transport, _ = await self._loop.create_datagram_endpoint(
                lambda: self.protocol, sock=sock)
        else:
            self._loop.add_reader(sock.fileno(), self._drain)
        return True

    def _drain(self) -> None:
        """Read what is there, at most `batch` datagrams and DRAIN_SECONDS of work (on
        the event loop: a flood of heavy datagrams must not hold up a scrape)."""
        recv = self.sock.recvfrom
        handle = self.protocol.datagram_received
        deadline = time.monotonic() + DRAIN_SECONDS
        for i in range(self.batch):
            if i & 15 == 15 and time.monotonic() > deadline:
                return          # the socket stays readable: the loop calls again
            try:
                data, addr = recv(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                if e.errno not in (errno.ECONNREFUSED, errno.EAGAIN):
                    self.protocol.error_received(e)
                return
            handle(data, addr)

    async def stop(self) -> None:
        if self.sock is None:
            return
        if self._transport is not None:
            self._transport.close()
            self._transport = None
        else:
            try:
                self._loop.remove_reader(self.sock.fileno())
            except (ValueError, RuntimeError):
                pass
            self.sock.close()
        self.sock = None
