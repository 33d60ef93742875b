"""Read-only client for gunicorn's control socket (gunicorn >= 25.1).

The socket speaks length-prefixed JSON: a 4-byte big-endian length, then
`{"id": N, "command": "show", "args": ["config"]}`; answers are framed the same way.
The socket also accepts commands that change the server (worker add/kill, reload,
shutdown). This module can only send the four `show` queries in `ALLOWED`; anything
else is refused before a byte is written.
"""

from __future__ import annotations

import asyncio
import json
import struct

ALLOWED = frozenset({"config", "stats", "workers", "listeners"})
MAX_ANSWER = 4 * 1024 * 1024


class ControlError(Exception):
    pass


def encode_show(request_id: int, what: str) -> bytes:
    if what not in ALLOWED:
        raise ControlError(f"refusing to send 'show {what}': only {sorted(ALLOWED)} are read-only")
    payload = json.dumps({"id": request_id, "command": "show", "args": [what]}).encode()
    return struct.pack(">I", len(payload)) + payload


async def _read_frame(reader: asyncio.StreamReader) -> dict:
    (length,) = struct.unpack(">I", await reader.readexactly(4))
    if length > MAX_ANSWER:
        raise ControlError(f"answer of {length} bytes is larger than {MAX_ANSWER}")
    answer = json.loads(await reader.readexactly(length))
    if not isinstance(answer, dict):
        raise ControlError("answer is not a JSON object")
    return answer


async def query(path: str, what: tuple[str, ...] = ("config", "stats", "workers"),
                timeout: float = 1.0) -> dict[str, dict]:
    """Ask `show X` for each X over one connection; returns {X: data}.

    Raises ControlError/OSError/asyncio.TimeoutError; the caller treats any of them
    as "control socket not available".
    """
    frames = b"".join(encode_show(i, w) for i, w in enumerate(what, 1))

    async def run() -> dict[str, dict]:
        reader, writer = await asyncio.open_unix_connection(path, limit=MAX_ANSWER)
        try:
            writer.write(frames)
            await writer.drain()
            out: dict[str, dict] = {}
            for i, w in enumerate(what, 1):
                answer = await _read_frame(reader)
                if answer.get("id") != i:
                    raise ControlError(f"answer id {answer.get('id')} for request {i}")
                if answer.get("status") != "ok":
                    raise ControlError(f"show {w}: {answer.get('error', 'error')}")
                data = answer.get("data")
                out[w] = data if isinstance(data, dict) else {}
            return out
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except OSError:
                pass

    return await asyncio.wait_for(run(), timeout)
