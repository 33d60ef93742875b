"""Raw HTTP clients that need no library and work on unix and TCP sockets alike:
one `http_get`, and `SlowClients`, requests sent and left open (held by a worker or waiting
in an accept queue) until the test reads, closes, hangs up or resets them."""

from __future__ import annotations

import os
import socket
import struct
import time

def _connect(target, timeout: float | None) -> socket.socket:
    """Connect to a unix path, a (host, port) tuple, 'host:port', or a
    tests.harness.masters.Gunicorn (its first bind)."""
    if hasattr(target, "unix_path") and hasattr(target, "port"):   # a harness Gunicorn
        target = target.unix_path or (target.host, target.port)
    if isinstance(target, (str, os.PathLike)):
        text = os.fspath(target)
        if text.startswith("unix:"):
            text = text[5:]
        if text.startswith("/"):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(timeout)
            try:
                s.connect(text)
            except BaseException:
                s.close()
                raise
            return s
        host, _, port = text.rpartition(":")
        target = (host.strip("[]"), int(port))
    host, port = target
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect((host, port))
    except BaseException:
        s.close()
        raise
    return s


def _request_bytes(path: str) -> bytes:
    return ("GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % path).encode("ascii")


def _read_to_eof(s: socket.socket, timeout: float) -> bytes:
    deadline = time.monotonic() + timeout
    chunks = []
    for _ in range(100000):  # bounded
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("no EOF within %.1fs (got %r)" % (timeout, b"".join(chunks)[:200]))
        s.settimeout(left)
        data = s.recv(65536)
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks)


def parse_http_response(raw: bytes) -> tuple[int, bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0]
    parts = status_line.split()
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/"):
        raise ValueError("not an HTTP response: %r" % raw[:200])
    return int(parts[1]), body


def http_get(target, path: str = "/", timeout: float = 10.0) -> tuple[int, bytes]:
    """One ``GET path`` with Connection: close; returns (status, body)."""
    s = _connect(target, timeout)
    try:
        s.sendall(_request_bytes(path))
        return parse_http_response(_read_to_eof(s, timeout))
    finally:
        s.close()



class SlowClients:
    """N concurrent raw HTTP/1.1 requests sent without waiting for answers.

    ``target``: a Gunicorn, a unix path ('/..' or 'unix:/..'), 'host:port',
    or a (host, port) tuple. Each socket is connected and the whole request
    is sent; sockets stay open until closed.
    """

    def __init__(self, target, n: int, seconds: float = 5.0, path: str | None = None,
                 connect_timeout: float = 5.0):
        self.target = target
        self.path = path or "/slow?seconds=%s" % seconds
        self.socks: list[socket.socket | None] = []
        try:
            for _ in range(n):
                s = _connect(target, connect_timeout)
                s.sendall(_request_bytes(self.path))
                self.socks.append(s)
        except BaseException:
            self.close_all()
            raise

    def __len__(self):
        return len(self.socks)

    def _take(self, i: int) -> socket.socket:
        s = self.socks[i]
        if s is None:
            raise ValueError("client %d already closed" % i)
        self.socks[i] = None
        return s

    def close(self, i: int):
        """Plain close() of client i."""
        self._take(i).close()

    def hangup(self, i: int):
        """Close client i without reading the answer: shutdown both ways
        (sends FIN; the server side of a TCP conn goes to CLOSE-WAIT until
        the worker closes it), then close."""
        s = self._take(i)
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        s.close()

    def reset(self, i: int):
        """Abort client i with RST (SO_LINGER 0)."""
        s = self._take(i)
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        s.close()

    def read(self, i: int, timeout: float) -> bytes:
        """Read client i's whole answer (until EOF) and close it."""
        s = self._take(i)
        try:
            return _read_to_eof(s, timeout)
        finally:
            s.close()

    def read_all(self, timeout: float) -> list[bytes | None]:
        """Read every still-open client's answer (shared deadline); closed
        clients give None. Raises TimeoutError if one does not finish."""
        deadline = time.monotonic() + timeout
        out: list[bytes | None] = []
        for i, s in enumerate(self.socks):
            if s is None:
                out.append(None)
                continue
            out.append(self.read(i, max(0.01, deadline - time.monotonic())))
        return out

    def close_all(self):
        for i, s in enumerate(self.socks):
            if s is not None:
                self.socks[i] = None
                s.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close_all()
        return False
