"""Read-only client for gunicorn's control socket (gunicorn >= 25.1), with proof of who answers.

The socket speaks length-prefixed JSON: a 4-byte big-endian length, then
`{"id": N, "command": "show", "args": ["config"]}`; answers are framed the same way.
The socket also accepts commands that change the server (worker add/kill, reload,
shutdown). This module can only send the `show` queries in `ALLOWED`; anything else is
refused before a byte is written.

**Identity.** Every master of one user binds the same default path
(`$HOME/.gunicorn/gunicorn.ctl`), so a path names whichever master bound it last, and
anybody who can write the directory can put a symlink there. An answer is therefore
used only when the kernel says it comes from the master being asked:

1. the path, resolved as the master sees it and with its user's rights
   (`exporter/linux/pathwalk.py`; the last component is not followed if it is a
   symlink), is a socket file whose (device, inode) is the one bound by the listening
   socket the master holds (sock_diag's UNIX_DIAG_VFS);
2. the connection is made through an `O_PATH` fd of that very file, so the path cannot
   be swapped between the check and the connect;
3. after `connect()`, and before anything is written, the peer's credentials
   (SO_PEERCRED: the process that called `listen()`) name the master's pid.

**Bounds.** Answers are size-capped, JSON nesting is checked before parsing, NaN and
Infinity are refused, and the caller gives a time limit for the whole exchange.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import stat
import struct
from concurrent.futures import ThreadPoolExecutor

from exporter.linux.pathwalk import PathWalker
from exporter.linux.procfs import ProcFS, ProcStatus

ALLOWED = frozenset({"config", "stats", "workers", "listeners"})
MAX_ANSWER = 1024 * 1024
MAX_DEPTH = 16
# Path walks and connects run here, not on the event loop or in asyncio's default pool.
_CONNECTS = ThreadPoolExecutor(max_workers=4, thread_name_prefix="control-socket")


class ControlError(Exception):
    pass


class NotTheMaster(ControlError):
    """The socket at the path is not (or no longer) the one the master listens on."""


def encode_show(request_id: int, what: str) -> bytes:
    if what not in ALLOWED:
        raise ControlError(f"refusing to send 'show {what}': only {sorted(ALLOWED)} are read-only")
    payload = json.dumps({"id": request_id, "command": "show", "args": [what]}).encode()
    return struct.pack(">I", len(payload)) + payload


def json_depth(data: bytes) -> int:
    """Deepest nesting of [ and { outside strings: linear, no recursion."""
    depth = deepest = 0
    in_str = escaped = False
    for b in data:
        if in_str:
            if escaped:
                escaped = False
            elif b == 0x5C:      # backslash
                escaped = True
            elif b == 0x22:      # "
                in_str = False
        elif b == 0x22:
            in_str = True
        elif b in (0x5B, 0x7B):  # [ {
            depth += 1
            if depth > deepest:
                deepest = depth
        elif b in (0x5D, 0x7D):  # ] }
            depth -= 1
    return deepest


def _no_constants(name: str):
    raise ValueError(f"{name} is not a number gunicorn sends")


def decode_answer(data: bytes) -> dict:
    """One answer frame's payload as a dict; ControlError for anything else."""
    if len(data) > MAX_ANSWER:
        raise ControlError(f"answer of {len(data)} bytes is larger than {MAX_ANSWER}")
    if json_depth(data) > MAX_DEPTH:
        raise ControlError(f"answer nested deeper than {MAX_DEPTH}")
    try:
        answer = json.loads(data, parse_constant=_no_constants)
    except (ValueError, RecursionError, UnicodeDecodeError) as e:
        raise ControlError(f"answer is not JSON: {str(e)[:80]}") from None
    if not isinstance(answer, dict):
        raise ControlError("answer is not a JSON object")
    return answer


async def _read_frame(reader: asyncio.StreamReader) -> dict:
    (length,) = struct.unpack(">I", await reader.readexactly(4))
    if length > MAX_ANSWER:
        raise ControlError(f"answer of {length} bytes is larger than {MAX_ANSWER}")
    return decode_answer(await reader.readexactly(length))


def connect_checked(procfs: ProcFS, pid: int, owner: ProcStatus, path: str, master_pid: int,
                    expect_vfs: tuple[int, int, int] | None, timeout: float) -> socket.socket:
    """A socket connected to the master's control socket, proven (see the module
    docstring), or NotTheMaster before anything is written. Blocking: run in a thread."""
    with PathWalker(procfs, pid, owner) as walker:
        fd = walker.resolve(path, follow_last=False)
    try:
        st = os.fstat(fd)
        if not stat.S_ISSOCK(st.st_mode):
            raise NotTheMaster("control socket path is not a socket (a symlink or a file)")
        if expect_vfs is not None and \
                (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino) != expect_vfs:
            raise NotTheMaster("control socket path is bound by another socket "
                               "(another master took the path)")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.settimeout(timeout)
            sock.connect(f"/proc/self/fd/{fd}")  # the very file checked above
            peer = peer_pid(sock)
            if peer != master_pid:
                raise NotTheMaster(f"the socket at the path is served by pid {peer}, "
                                   f"not by master {master_pid}")
            sock.setblocking(False)
            return sock
        except BaseException:
            sock.close()
            raise
    finally:
        os.close(fd)


def peer_pid(sock) -> int:
    pid, _uid, _gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                          struct.calcsize("3i")))
    return pid


async def query(procfs: ProcFS, pid: int, owner: ProcStatus, path: str, master_pid: int,
                expect_vfs: tuple[int, int, int] | None,
                what: tuple[str, ...] = ("config", "stats"),
                timeout: float = 1.0) -> dict[str, dict]:
    """Ask `show X` for each X over one connection to the master `master_pid`; {X: data}.

    `path` is resolved as process `pid` (normally the master) sees it, with the rights of
    its user `owner`. The path walk and connect run in a small thread pool of their own,
    so a lookup that blocks costs that pool, never the event loop. Raises NotTheMaster
    when the socket is not proven to be that master's, and ControlError / OSError /
    asyncio.TimeoutError for anything else; the caller treats all of them as "no
    answer from the control socket".
    """
    frames = b"".join(encode_show(i, w) for i, w in enumerate(what, 1))

    async def run() -> dict[str, dict]:
        loop = asyncio.get_running_loop()
        sock = await loop.run_in_executor(_CONNECTS, connect_checked, procfs, pid, owner, path,
                                          master_pid, expect_vfs, timeout)
        reader, writer = await asyncio.open_unix_connection(sock=sock, limit=MAX_ANSWER + 4)
        try:
            writer.write(frames)
            await writer.drain()
            out: dict[str, dict] = {}
            for i, w in enumerate(what, 1):
                answer = await _read_frame(reader)
                if answer.get("id") != i:
                    raise ControlError(f"answer id {str(answer.get('id'))[:20]} for request {i}")
                if answer.get("status") != "ok":
                    raise ControlError(f"show {w}: {str(answer.get('error', 'error'))[:80]}")
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
