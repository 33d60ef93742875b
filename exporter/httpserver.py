"""A small HTTP/1.1 server on asyncio streams, for the three GET pages an exporter serves.

Why not aiohttp (which the exporter used before): importing it costs about 140 ms of the
start-up (its client side, which a server never uses; docs/performance.md), and it has
no limit on how long a client may take to send its request headers, which is what a
slowloris attack uses. This server only does what an exporter needs, and bounds all of
it:

* GET and HEAD only, no request bodies (405 / 400 otherwise);
* the request line and headers within `header_timeout` (also the TLS handshake's limit)
  and `max_header_bytes`, at most `MAX_HEADERS` lines;
* keep-alive connections closed after `keepalive_timeout` idle, and at most
  `max_connections` at once. A new connection over the limit pushes out the oldest one
  that is not being served (still sending its headers, or idle between requests), so
  a slowloris or a flood of idle connections cannot lock a real scrape out; only when
  every connection is being served is the new one answered 503 and closed. The file
  descriptors in use stay bounded by the limit;
* TLS through an `ssl.SSLContext` provider, asked at every handshake (certificates are
  rotated without dropping the listener: exporter/webconfig.py).

The handler is `async handler(Request) -> Response`; an exception in it is a 500 for
that request only, and is logged (rate-limited) by the caller's handler.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

MAX_HEADERS = 100
REASONS = {200: "OK", 304: "Not Modified", 400: "Bad Request", 401: "Unauthorized",
           404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout",
           413: "Payload Too Large", 431: "Request Header Fields Too Large",
           500: "Internal Server Error", 503: "Service Unavailable"}


@dataclass
class Request:
    method: str
    path: str
    query: str
    version: str
    headers: dict[str, str]          # lower-case names; repeated headers joined with ", "
    peer: object = None
    tls: bool = False

    def header(self, name: str, default: str = "") -> str:
        return self.headers.get(name.lower(), default)


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)


class BadRequest(Exception):
    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status


def parse_head(data: bytes) -> tuple[str, str, str, str, dict[str, str]]:
    """(method, path, query, version, headers) of a request head ending in CRLF CRLF."""
    try:
        text = data.decode("latin-1")
    except UnicodeDecodeError:  # latin-1 decodes every byte; kept for clarity
        raise BadRequest(400, "undecodable request") from None
    lines = text[:-4].split("\r\n") if text.endswith("\r\n\r\n") else text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise BadRequest(400, "malformed request line")
    method, target, version = parts
    if not target.startswith("/"):
        raise BadRequest(400, "request target must be a path")
    path, _, query = target.partition("?")
    if len(lines) - 1 > MAX_HEADERS:
        raise BadRequest(431, "too many header lines")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip() or " " in name:
            raise BadRequest(400, "malformed header line")
        key = name.lower()
        value = value.strip()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return method, path, query, version, headers


class HTTPServer:
    def __init__(self, handler, host: str | None, port: int, *,
                 ssl_context=None, max_connections: int = 64,
                 header_timeout: float = 10.0, keepalive_timeout: float = 15.0,
                 max_header_bytes: int = 32 * 1024):
        self.handler = handler
        self.host, self.port = host, port
        self.ssl_context = ssl_context          # an SSLContext (or None: plain HTTP)
        self.max_connections = max_connections
        self.header_timeout = header_timeout
        self.keepalive_timeout = keepalive_timeout
        self.max_header_bytes = max_header_bytes
        self.rejected = 0                       # connections over the cap (a counter)
        self.evicted = 0                        # waiting connections pushed out (a counter)
        # writer -> (busy, since): busy while a request is being answered
        self._state: dict[asyncio.StreamWriter, tuple[bool, float]] = {}
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._connection, self.host or None, self.port, ssl=self.ssl_context,
            ssl_handshake_timeout=self.header_timeout if self.ssl_context else None,
            limit=self.max_header_bytes + 4, backlog=128, reuse_address=True)

    @property
    def sockets(self):
        return self._server.sockets if self._server else []

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for t in list(self._tasks):
                t.cancel()
            if self._tasks:
                await asyncio.wait(self._tasks, timeout=5)
            await self._server.wait_closed()

    @property
    def connections(self) -> int:
        return len(self._state)

    def _make_room(self) -> bool:
        """Close the oldest connection that is not being served; False if all are."""
        waiting = [(since, w) for w, (busy, since) in self._state.items() if not busy]
        if not waiting:
            return False
        _since, victim = min(waiting, key=lambda x: x[0])
        del self._state[victim]
        self.evicted += 1
        victim.transport.abort()
        return True

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        task = asyncio.current_task()
        self._tasks.add(task)
        try:
            if len(self._state) >= self.max_connections and not self._make_room():
                self.rejected += 1
                await self._send(writer, Response(503, b"too many connections\n"), "HTTP/1.1",
                                 close=True, head_only=False)
                return
            self._state[writer] = (False, time.monotonic())
            await self._serve(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError, TimeoutError,
                asyncio.TimeoutError):
            pass
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - one connection's trouble stays there
            log.debug("connection failed", exc_info=True)
        finally:
            self._state.pop(writer, None)
            self._tasks.discard(task)
            writer.close()
            try:
                await asyncio.wait_for(writer.wait_closed(), 2)
            except (OSError, asyncio.TimeoutError, ssl.SSLError):
                pass

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        timeout = self.header_timeout
        peer = writer.get_extra_info("peername")
        tls = writer.get_extra_info("sslcontext") is not None
        while True:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
            except asyncio.LimitOverrunError:
                await self._send(writer, Response(431, b"request header too large\n"),
                                 "HTTP/1.1", close=True, head_only=False)
                return
            except asyncio.IncompleteReadError:
                return  # the client went away (or closed an idle keep-alive connection)
            except asyncio.TimeoutError:
                return  # too slow to send its headers, or idle too long: just close
            try:
                method, path, query, version, headers = parse_head(head)
            except BadRequest as e:
                await self._send(writer, Response(e.status, f"{e}\n".encode()), "HTTP/1.1",
                                 close=True, head_only=False)
                return
            if headers.get("content-length", "0").strip() not in ("", "0") or \
                    "transfer-encoding" in headers:
                await self._send(writer, Response(413, b"request bodies are not accepted\n"),
                                 version, close=True, head_only=False)
                return
            close = version == "HTTP/1.0" and headers.get("connection", "").lower() != "keep-alive" \
                or headers.get("connection", "").lower() == "close"
            if method not in ("GET", "HEAD"):
                response = Response(405, b"only GET and HEAD\n", headers={"Allow": "GET, HEAD"})
            else:
                request = Request(method, path, query, version, headers, peer, tls)
                if writer not in self._state:
                    return  # pushed out meanwhile
                self._state[writer] = (True, time.monotonic())
                try:
                    response = await self.handler(request)
                except asyncio.CancelledError:
                    raise
                except Exception:  # noqa: BLE001 - a 500 for this request only
                    log.warning("request %s failed", path[:200], exc_info=True)
                    response = Response(500, b"internal error\n")
            await self._send(writer, response, version, close=close, head_only=method == "HEAD")
            if close or writer not in self._state:
                return
            self._state[writer] = (False, time.monotonic())
            timeout = self.keepalive_timeout

    @staticmethod
    async def _send(writer, response: Response, version: str, *, close: bool,
                    head_only: bool) -> None:
        reason = REASONS.get(response.status, "Unknown")
        lines = [f"{version if version in ('HTTP/1.0', 'HTTP/1.1') else 'HTTP/1.1'} "
                 f"{response.status} {reason}",
                 f"Content-Type: {response.content_type}",
                 f"Content-Length: {len(response.body)}"]
        lines += [f"{k}: {v}" for k, v in response.headers.items()]
        if close:
            lines.append("Connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace")
        writer.write(head if head_only else head + response.body)
        await writer.drain()
