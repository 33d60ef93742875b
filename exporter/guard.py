"""Which connections the web server keeps, and for how long: a thin layer between the
listening sockets and aiohttp (`exporter/http.py` answers; aiohttp parses HTTP).

aiohttp's `web.Server` is an asyncio protocol factory; every accepted connection gets
a `Conn`, an asyncio protocol that hands the bytes to aiohttp's protocol and keeps
what aiohttp does not:

* **a deadline for the request head**: from accept to a complete request head
  (`--web.header-timeout`), the TLS handshake included; between requests the idle
  limit (`keepalive_timeout`); while an answer is written, `--web.write-timeout`. A
  client that misses one is disconnected;
* **a connection cap that a flood cannot turn against Prometheus**: at most
  `--web.max-connections` connections stay past their first second. A connection is
  *being served* while its request is answered; every other one (handshaking, sending
  its head, idle, or not reading its answer) can be pushed out, oldest first, to make
  room for a new one. New connections get a second (`GRACE`) to send their request
  before they count as pushable, so a burst of attackers cannot push out the real
  scrape that arrived among them; the total stays under `ceiling` (twice the cap, and
  below the fd limit), where the oldest is pushed out whatever its age. Only when every
  connection is being served is a newcomer refused (503 on plain HTTP);
* **a share of TLS handshakes per local user**: a handshake costs a signature, so each
  local uid (the owner of the client's socket, by sock_diag) starts at most its share a
  second (`exporter/handshakes.py`); past it, its connections are closed at accept;
* **TLS per connection**: the handshake runs through `loop.start_tls` with the
  `ssl.SSLContext` in force when the connection arrived (`exporter/webconfig.py`), so
  a reload changes every TLS setting for the next connection; handshakes count against
  the cap and the head deadline like any connection; `client_allowed_sans` is checked
  on the verified client certificate before aiohttp sees a byte;
* **bounded input and output**: at most `MAX_UNANSWERED` bytes from a client that is
  not being served, a small fixed send buffer per socket, and accepts in bursts of
  `ACCEPT_BURST` so the loop reads what arrived in between.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import resource
import socket
import time
from collections import Counter, OrderedDict

from exporter.handshakes import HandshakeBudget
from exporter.webtls import peer_sans

log = logging.getLogger(__name__)

ACCEPT_BURST = 16
GRACE = 1.0                     # seconds a new connection cannot be pushed out (below ceiling)
MAX_UNANSWERED = 32 * 1024      # bytes a client may send while nothing of it is being answered
SNDBUF = 64 * 1024              # SO_SNDBUF of each connection: what a client that never reads pins
FD_RESERVE = 64                 # fds left for everything else the exporter opens
PLAIN_CEILING = 64              # x --web.max-connections: plain connections at most
TLS_CEILING = 2                 # x --web.max-connections: TLS connections at most
MAX_CEILING = 4096
BUSY_503 = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
            b"Content-Length: 21\r\nConnection: close\r\n\r\ntoo many connections\n")
REASONS = ("evicted", "over_limit", "header_timeout", "write_timeout", "tls_handshake",
           "client_certificate", "oversized_request", "handshake_rate")


class Conn(asyncio.Protocol):
    """One client connection: its state, its deadline, and aiohttp's protocol for it."""

    def __init__(self, guard: Guard):
        self.guard = guard
        self.inner: asyncio.Protocol | None = None    # aiohttp's RequestHandler
        self.transport: asyncio.Transport | None = None
        self.busy = False
        self.answered = False                          # a response was written on it
        self.closed = False
        self.since = time.monotonic()                  # in its current state since
        self.received = 0
        self.early: list[bytes] | None = []
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task | None = None

    # --- asyncio protocol ------------------------------------------------------------

    def connection_made(self, transport) -> None:
        self.transport = transport
        g = self.guard
        if self.closed:
            transport.abort()
            return
        self._pushable()
        self._arm(g.header_timeout, "header_timeout")
        config = g.web.config
        if config.ssl is None:
            self._attach(transport)
            return
        transport.pause_reading()    # the ClientHello is for the TLS layer, read after start_tls
        self._task = g.loop.create_task(self._handshake(transport, config))

    async def _handshake(self, raw, config) -> None:
        g = self.guard
        try:
            tls = await g.loop.start_tls(raw, self, config.ssl, server_side=True,
                                         ssl_handshake_timeout=g.header_timeout)
        except (OSError, asyncio.TimeoutError, ConnectionError, ValueError, RuntimeError) as e:
            # The error's traceback holds start_tls' frame and with it the SSLProtocol and
            # its 256 KiB buffer in a reference cycle (error -> frame -> waiter -> error)
            # that only the cyclic GC would free: cut it, so it is freed now.
            e.__traceback__ = None
            tls = None
        finally:
            self._task = None
        if tls is None or self.closed:      # (None: the client went during the handshake)
            self.close("tls_handshake")
            if tls is not None:
                tls.abort()
            return
        self.transport = tls
        if config.allowed_sans is not None and \
                not peer_sans(tls.get_extra_info("ssl_object")) & config.allowed_sans:
            self.close("client_certificate")
            return
        self._attach(tls)

    def _attach(self, transport) -> None:
        self.inner = self.guard.factory()
        self.guard.by_transport[transport] = self
        self.inner.connection_made(transport)
        early, self.early = self.early, None
        for data in early or ():
            self.inner.data_received(data)

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        if not self.busy and self.received > MAX_UNANSWERED:
            self.close("oversized_request")
        elif self.inner is not None:
            self.inner.data_received(data)
        elif self.early is not None:
            self.early.append(data)

    def eof_received(self):
        return self.inner.eof_received() if self.inner is not None else None

    def connection_lost(self, exc) -> None:
        self.closed = True
        self._cancel()
        self.guard.forget(self)
        if self.inner is not None:
            inner, self.inner = self.inner, None
            inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self.inner is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.inner is not None:
            self.inner.resume_writing()

    # --- what the request handler says -------------------------------------------------

    def serving(self) -> None:
        """A request is being answered: not pushable, no deadline but the scrape's."""
        self.busy, self.received = True, 0
        self.guard.pushable.pop(self, None)
        self._cancel()

    def writing(self) -> None:
        """The answer is written: pushable, and it must be read within the write deadline."""
        if not self.closed:
            self.busy, self.answered = False, True
            self._pushable()
            self._arm(self.guard.write_timeout, "write_timeout")

    def waiting(self) -> None:
        """Answered: idle until the next request, within the idle limit."""
        if not self.closed:
            self.busy, self.received = False, 0
            self._pushable()
            self._arm(self.guard.keepalive_timeout, None)

    def _pushable(self) -> None:
        """Pushable since now: last in the guard's oldest-first order."""
        self.since = time.monotonic()
        self.guard.pushable[self] = None
        self.guard.pushable.move_to_end(self)

    # --- ending it ---------------------------------------------------------------------

    def close(self, reason: str | None) -> None:
        if self.closed:
            return
        self.closed = True
        self._cancel()
        self.guard.forget(self)
        if reason:
            self.guard.note(reason)
        if self.transport is not None:
            self.transport.abort()

    def _arm(self, delay: float, reason: str | None) -> None:
        self._cancel()
        self._timer = self.guard.loop.call_later(delay, self._expired, reason)

    def _expired(self, reason: str | None) -> None:
        self._timer = None
        if not self.busy:
            # before the first answer a missed deadline is the head's, after it idleness
            self.close(reason if reason != "header_timeout" or not self.answered else None)

    def _cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class Guard:
    def __init__(self, factory, web, *, max_connections: int, header_timeout: float,
                 write_timeout: float, keepalive_timeout: float = 15.0):
        self.factory = factory              # aiohttp's web.Server: () -> protocol
        self.web = web                      # WebConfigHolder: the TLS context in force
        self.header_timeout = header_timeout
        self.write_timeout = write_timeout
        self.keepalive_timeout = keepalive_timeout
        self.loop = asyncio.get_running_loop()
        self.max_connections = max_connections
        self.fd_room = fd_limit() - FD_RESERVE
        self.conns: dict[Conn, None] = {}
        # connections not being served, oldest first (by Conn.since)
        self.pushable: OrderedDict[Conn, None] = OrderedDict()   # O(1) oldest
        self.by_transport: dict[object, Conn] = {}
        self.refused: Counter[str] = Counter({r: 0 for r in REASONS})
        self._listeners: list[socket.socket] = []
        self._tasks: set[asyncio.Task] = set()
        self._paused: set[socket.socket] = set()
        self._noted: dict[str, tuple[float, int]] = {}
        self.handshakes = HandshakeBudget()     # TLS: each local user's handshakes a second

    # --- listening ---------------------------------------------------------------------

    def serve(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self._listeners.append(sock)
        self.loop.add_reader(sock.fileno(), self._accept, sock)

    def _accept(self, sock: socket.socket) -> None:
        for _ in range(ACCEPT_BURST):
            try:
                conn, _addr = sock.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as e:
                if e.errno not in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    return
                # out of descriptors or memory: stop accepting for a second, say so
                self._pause(sock, e)
                return
            self._admit(conn)

    def _pause(self, sock: socket.socket, e: OSError) -> None:
        if sock in self._paused:
            return
        self._paused.add(sock)
        self.loop.remove_reader(sock.fileno())
        self.note("accept_failed", f"accept() failed ({e.strerror}); not accepting for 1 s")
        self.loop.call_later(1.0, self._resume, sock)

    def _resume(self, sock: socket.socket) -> None:
        self._paused.discard(sock)
        if sock in self._listeners:
            self.loop.add_reader(sock.fileno(), self._accept, sock)

    def _admit(self, sock: socket.socket) -> None:
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SNDBUF)
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            sock.close()
            return
        try:
            admitted = self.web.config.ssl is None or self.handshakes.admit(sock)
        except Exception:   # noqa: BLE001 - one connection's oddity never stops the accepts
            log.debug("handshake share: lookup failed", exc_info=True)
            admitted = True
        if not admitted:
            self.note("handshake_rate")
            sock.close()
            return
        if not self._make_room():
            self.note("over_limit")
            if self.web.config.ssl is None:
                try:
                    sock.send(BUSY_503)
                except OSError:
                    pass
            sock.close()
            return
        conn = Conn(self)
        self.conns[conn] = None
        task = self.loop.create_task(self._connect(conn, sock))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _connect(self, conn: Conn, sock: socket.socket) -> None:
        try:
            await self.loop.connect_accepted_socket(lambda: conn, sock)
        except OSError as e:
            e.__traceback__ = None
            conn.closed = True
            self.forget(conn)
            sock.close()

    @property
    def ceiling(self) -> int:
        """Connections at most, new ones included: TLS ones cost about 300 KiB each
        (asyncio's 256 KiB read buffer, OpenSSL's state), plain ones about 4 KiB."""
        per_cap = TLS_CEILING if self.web.config.ssl is not None else PLAIN_CEILING
        return max(1, min(per_cap * self.max_connections, MAX_CEILING, self.fd_room))

    def _make_room(self) -> bool:
        """Room for one more connection: push out the oldest pushable one when over the
        cap (once it is past GRACE) or at the ceiling (whatever its age)."""
        n = len(self.conns)
        if n < self.max_connections:
            return True
        oldest = next(iter(self.pushable), None)
        ceiling = self.ceiling
        if oldest is not None and (n >= ceiling or time.monotonic() - oldest.since >= GRACE):
            oldest.close("evicted")
            return True
        return n < ceiling

    def forget(self, conn: Conn) -> None:
        self.conns.pop(conn, None)
        self.pushable.pop(conn, None)
        if conn.transport is not None:
            self.by_transport.pop(conn.transport, None)

    def conn(self, transport) -> Conn | None:
        return self.by_transport.get(transport)

    @property
    def open(self) -> int:
        return len(self.conns)

    # --- what happened -----------------------------------------------------------------

    def note(self, reason: str, message: str | None = None) -> None:
        """Count a refusal; log at most one line a minute per reason, with the count."""
        if reason in self.refused:
            self.refused[reason] += 1
        now = time.monotonic()
        last, skipped = self._noted.get(reason, (-1e9, 0))
        if now - last < 60:
            self._noted[reason] = (last, skipped + 1)
            return
        self._noted[reason] = (now, 0)
        if reason in ("header_timeout", "tls_handshake") and message is None:
            return           # common and harmless one at a time: counted, not logged
        more = f" ({skipped} more in the last minute)" if skipped else ""
        log.warning("web: %s%s", message or _MESSAGES.get(reason, reason), more)

    async def stop(self) -> None:
        for sock in self._listeners:
            if sock not in self._paused:
                self.loop.remove_reader(sock.fileno())
            sock.close()
        self._listeners.clear()
        self.handshakes.close()
        for conn in list(self.conns):
            if conn.inner is None:
                conn.close(None)


_MESSAGES = {
    "evicted": "connection cap reached: the oldest idle or half-sent connection was closed "
               "to make room (a flood of connections? gunicorn_exporter_web_refused_total)",
    "over_limit": "every connection is being served: a new one was refused with 503",
    "write_timeout": "a client did not read its answer within --web.write-timeout; closed",
    "client_certificate": "a client certificate without an allowed SAN "
                          "(client_allowed_sans) was refused",
    "oversized_request": "a client sent more than 32 KiB without a complete request; closed",
    "handshake_rate": "a local user opened TLS connections faster than 50 a second "
                      "(exporter/handshakes.py); closed before the handshake",
}


def fd_limit() -> int:
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if soft != resource.RLIM_INFINITY else 1 << 20
