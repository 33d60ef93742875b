"""Tiny framework-free WSGI app used by the gunicorn-exporter test-suite.

Routes:
    /                    -> 200 "ok"
    /slow?seconds=S      -> time.sleep(S) (S capped at 300) then 200 "slept S pid=N"
    /hold?seconds=S      -> sleeps in 0.05 s steps (observable), then 200
    /alloc?mb=N[&seconds=S] -> allocates N MiB (capped at 4096), touches every
                            page so it is resident, optionally holds it S
                            seconds, then 200
    /pid                 -> os.getpid() as text
    /status?code=N&seconds=S -> time.sleep(S) (capped at 300), then status N (100-599,
                            default 200) with body "status N"
    /upstream?port=P     -> a dependency call: connects to 127.0.0.1:P, sends one line
                            and reads the answer until the peer closes (at most 300 s),
                            then 200 "upstream N bytes pid=N"
    /http?port=P         -> an HTTP dependency through urllib: GET http://127.0.0.1:P/
                            (at most 300 s), then 200 with its status
    /keep?port=P         -> a pooled dependency: one connection to 127.0.0.1:P per worker,
                            kept across requests; each request sends a line and reads
                            the line the peer answers (at most 300 s)

time.sleep is monkey-patched by gevent/eventlet, so /slow and /hold
cooperate with async workers.
"""

import os
import socket
import time
from urllib.parse import parse_qs

MAX_SECONDS = 300.0
_KEPT: dict = {}        # /keep: port -> the worker's connection to it
MAX_MB = 4096
MIB = 1024 * 1024


def _param(environ, name, default, cap, conv=float):
    qs = parse_qs(environ.get("QUERY_STRING", ""))
    try:
        value = conv(qs.get(name, [default])[0])
    except (TypeError, ValueError):
        value = conv(default)
    return max(conv(0), min(value, conv(cap)))


def _respond(start_response, body, status="200 OK"):
    data = body.encode("utf-8") if isinstance(body, str) else body
    start_response(status, [
        ("Content-Type", "text/plain; charset=utf-8"),
        ("Content-Length", str(len(data))),
    ])
    return [data]


def _hold(seconds):
    deadline = time.monotonic() + seconds
    # bounded: at most seconds / 0.05 + 1 iterations
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        time.sleep(min(0.05, left))


def app(environ, start_response):
    path = environ.get("PATH_INFO", "/") or "/"
    pid = os.getpid()
    if path == "/":
        return _respond(start_response, "ok")
    if path == "/pid":
        return _respond(start_response, str(pid))
    if path == "/status":
        code = _param(environ, "code", 200, 599, conv=int)
        seconds = _param(environ, "seconds", 0.0, MAX_SECONDS)
        if seconds:
            time.sleep(seconds)
        code = code if code >= 100 else 200
        return _respond(start_response, "status %d" % code, status="%d Status %d" % (code, code))
    if path == "/slow":
        seconds = _param(environ, "seconds", 1.0, MAX_SECONDS)
        time.sleep(seconds)
        return _respond(start_response, "slept %s pid=%d" % (seconds, pid))
    if path == "/hold":
        seconds = _param(environ, "seconds", 1.0, MAX_SECONDS)
        _hold(seconds)
        return _respond(start_response, "held %s pid=%d" % (seconds, pid))
    if path == "/alloc":
        mb = _param(environ, "mb", 1, MAX_MB, conv=int)
        seconds = _param(environ, "seconds", 0.0, MAX_SECONDS)
        # bytes * n is a memset: every page is written, hence resident
        blob = b"\x01" * (mb * MIB)
        if seconds:
            _hold(seconds)
        size = len(blob)
        del blob
        return _respond(start_response, "allocated %d MiB pid=%d" % (size // MIB, pid))
    if path == "/upstream":
        port = _param(environ, "port", 1, 65535, conv=int)
        with socket.create_connection(("127.0.0.1", port), timeout=MAX_SECONDS) as s:
            s.sendall(b"GET\n")
            got = 0
            while chunk := s.recv(4096):   # bounded by the peer and the timeout
                got += len(chunk)
        return _respond(start_response, "upstream %d bytes pid=%d" % (got, pid))
    if path == "/keep":
        port = _param(environ, "port", 1, 65535, conv=int)
        conn = _KEPT.get(port)
        if conn is None:
            conn = _KEPT[port] = socket.create_connection(("127.0.0.1", port), timeout=MAX_SECONDS)
        conn.sendall(b"GET\n")
        got = b""
        while not got.endswith(b"\n"):      # bounded by the peer and the timeout
            chunk = conn.recv(256)
            if not chunk:
                del _KEPT[port]
                break
            got += chunk
        return _respond(start_response, "kept %r pid=%d" % (got, pid))
    if path == "/http":
        import urllib.request
        port = _param(environ, "port", 1, 65535, conv=int)
        with urllib.request.urlopen("http://127.0.0.1:%d/" % port, timeout=MAX_SECONDS) as r:
            return _respond(start_response, "upstream status %d pid=%d" % (r.status, pid))
    return _respond(start_response, "not found", status="404 Not Found")


application = app
