"""Minimal ASGI app (no framework) for gunicorn's native ``-k asgi`` worker.

Routes: / -> "ok", /slow?seconds=S (asyncio.sleep, capped at 300), /pid.
Handles the lifespan protocol so ``--asgi-lifespan on/auto`` both work.
"""

import asyncio
import os
from urllib.parse import parse_qs

MAX_SECONDS = 300.0


async def _send_text(send, body, status=200):
    data = body.encode("utf-8")
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", str(len(data)).encode()),
        ],
    })
    await send({"type": "http.response.body", "body": data})


async def _lifespan(receive, send):
    for _ in range(16):  # bounded: startup + shutdown are all we expect
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    if scope["type"] != "http":
        return
    path = scope.get("path", "/") or "/"
    pid = os.getpid()
    if path == "/":
        await _send_text(send, "ok")
    elif path == "/pid":
        await _send_text(send, str(pid))
    elif path == "/slow":
        qs = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        try:
            seconds = float(qs.get("seconds", ["1"])[0])
        except ValueError:
            seconds = 1.0
        seconds = max(0.0, min(seconds, MAX_SECONDS))
        await asyncio.sleep(seconds)
        await _send_text(send, "slept %s pid=%d" % (seconds, pid))
    else:
        await _send_text(send, "not found", status=404)
