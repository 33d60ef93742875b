"""inotify(7) through ctypes: a non-blocking descriptor that says when a directory's
files are written, created, moved or deleted (the log tailer reads at once).

Why not a library: inotify_simple and asyncinotify locate libc with
`ctypes.util.find_library("c")`, which runs `/sbin/ldconfig -p` (and gcc where ldconfig
is missing) as a subprocess the first time: an exporter running as root should not start
programs to watch a file. The libc the interpreter already runs on is `CDLL(None)`; the
two calls and the event layout (struct inotify_event) are stable kernel ABI.
"""

from __future__ import annotations

import ctypes
import os
import struct

from exporter.linux.libc import libc

IN_MODIFY = 0x002
IN_ATTRIB = 0x004
IN_CLOSE_WRITE = 0x008
IN_MOVED_FROM = 0x040
IN_MOVED_TO = 0x080
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_Q_OVERFLOW = 0x4000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC

_EVENT = struct.Struct("iIII")      # wd, mask, cookie, len (then len bytes of name)


class Inotify:
    """One inotify instance: `add_watch(path, mask)`, `fileno()` for the event loop,
    `read()` -> [(mask, name)] without blocking, `close()`."""

    def __init__(self):
        fd = libc().inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e))
        self.fd = fd

    def fileno(self) -> int:
        return self.fd

    def add_watch(self, path: str, mask: int) -> int:
        wd = libc().inotify_add_watch(self.fd, os.fsencode(path), ctypes.c_uint32(mask))
        if wd < 0:
            e = ctypes.get_errno()
            raise OSError(e, f"{os.strerror(e)}: {path}")
        return wd

    def read(self, limit: int = 64 * 1024) -> list[tuple[int, str]]:
        try:
            data = os.read(self.fd, limit)
        except BlockingIOError:
            return []
        return parse_events(data)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def parse_events(data: bytes) -> list[tuple[int, str]]:
    """struct inotify_event records -> [(mask, name)] (a truncated record ends the list)."""
    out = []
    at = 0
    while at + _EVENT.size <= len(data):
        _wd, mask, _cookie, n = _EVENT.unpack_from(data, at)
        at += _EVENT.size
        if at + n > len(data):
            break
        name = data[at:at + n].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
        at += n
        out.append((mask, name))
    return out
