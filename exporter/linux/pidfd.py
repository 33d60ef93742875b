"""Whether a listening unix socket of another process has connections waiting, in
constant time: a duplicate of the socket taken through pidfd_getfd(2) (Linux >= 5.6; the
right to ptrace-attach: CAP_SYS_PTRACE, or the process's user where Yama's ptrace_scope
is 0; without it the answer is "unknown" and the slow way is taken), polled with a zero
timeout, and closed at once. Never accepted from, never read.

sock_diag has no index of unix sockets by inode: the kernel walks every unix socket of
the network namespace to find one (2 ms at 12k unix sockets with the caches cold, ten
times a second: 2 % of a core). poll() answers POLLIN on a unix listener iff its accept
queue is not empty; an empty queue is a length of 0, the rest still needs the walk.

The process may be hostile: the fd is found by its /proc link naming the socket's
inode (kernel text), and what pidfd_getfd hands over is trusted only if it is a socket
(getsockopt, which no file system answers: a FUSE file cannot make us wait), listening,
with that inode. Anything else is None: unknown, read it the slow way. The same holds
for a TCP listener (poll() answers POLLIN iff its accept queue is not empty).

Closing a duplicate can wait in the kernel when it is not what was asked for: close()
of a FUSE file asks its daemon (FUSE_FLUSH), and the last close of a connected socket
with SO_LINGER waits for its unsent data; a hostile process can swap such a file onto
the fd number between the lookup and pidfd_getfd. So only a duplicate proven to be the
listener is closed here (closing a listener never waits); anything else goes to one
closer thread, and while MAX_CLOSING of those are not closed yet, no duplicate is taken
at all (every listener is read the slow way): a hostile process can cost a few fds and
this shortcut, never the sampler's time.
"""

from __future__ import annotations

import ctypes
import os
import queue
import select
import socket
import threading

from exporter.linux.libc import libc

SYS_PIDFD_GETFD = 438   # asm-generic: the same number on every architecture
MAX_FDS = 4096          # fd links read per process to find its sockets (a hostile one has more)
MAX_CLOSING = 4         # duplicates handed to the closer and not closed yet: above, none taken

_closing = 0            # handed to the closer, not closed yet
_closing_lock = threading.Lock()
_closer: queue.SimpleQueue[int] | None = None

def _pidfd_getfd(pidfd: int, fd: int) -> int:
    r = libc().syscall(SYS_PIDFD_GETFD, pidfd, fd, 0)
    if r < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return r


def socket_fds(pid: int, proc: str = "/proc", limit: int = MAX_FDS) -> tuple[dict[int, int], int]:
    """The sockets among the first `limit` fds of `pid`: ({inode: fd}, links read)."""
    out: dict[int, int] = {}
    n = 0
    try:
        with os.scandir(f"{proc}/{pid}/fd") as it:
            for e in it:
                if n >= limit:
                    break
                n += 1
                try:
                    link = os.readlink(e.path)
                    if link.startswith("socket:[") and link.endswith("]"):
                        out.setdefault(int(link[8:-1]), int(e.name))
                except (OSError, ValueError):
                    continue
    except OSError:
        pass
    return out, n


def open_pidfd(pid: int) -> int | None:
    """A pidfd of `pid` (None: gone, or no pidfd support)."""
    try:
        return os.pidfd_open(pid)
    except OSError:
        return None


def listener_empty(pidfd: int, fd: int, inode: int) -> bool | None:
    """Whether the listening socket `inode`, fd `fd` of the process of `pidfd`, has an
    empty accept queue (None: unknown: gone, not that socket, no right to it, or the
    closer is behind)."""
    if _closing >= MAX_CLOSING:
        return None
    try:
        dup = _pidfd_getfd(pidfd, fd)
    except OSError:
        return None
    try:
        # a socket (else ENOTSOCK, without asking any file system), listening, and that
        # socket: socket inodes are unique, and fstat() of a socket asks no file system
        if not _listening(dup) or os.fstat(dup).st_ino != inode:
            _close_elsewhere(dup)
            return None
    except OSError:
        _close_elsewhere(dup)
        return None
    try:
        p = select.poll()           # not select(): any fd number
        p.register(dup, select.POLLIN)
        return not p.poll(0)
    except OSError:
        return None
    finally:
        os.close(dup)               # a listener: its close never waits


def _close_elsewhere(fd: int) -> None:
    """Close `fd`, which may wait in the kernel, on the closer thread."""
    global _closing, _closer
    with _closing_lock:
        _closing += 1
        if _closer is None:
            _closer = queue.SimpleQueue()
            threading.Thread(target=_close_loop, args=(_closer,), name="pidfd-closer",
                             daemon=True).start()
    _closer.put(fd)


def _close_loop(q: queue.SimpleQueue[int]) -> None:
    global _closing
    while True:
        fd = q.get()
        try:
            os.close(fd)
        except OSError:
            pass
        with _closing_lock:
            _closing -= 1


def _listening(fd: int) -> bool:
    value, size = ctypes.c_int(0), ctypes.c_uint32(4)
    if libc().getsockopt(fd, socket.SOL_SOCKET, socket.SO_ACCEPTCONN, ctypes.byref(value),
                        ctypes.byref(size)) != 0:
        return False
    return value.value == 1


class ListenerPolls:
    """`listener_empty` for a caller that asks many times a second: each owner's socket
    fds are listed once until `reset` (the caller's targets changed; at most MAX_LINKS
    fd links in all between two resets, so hostile owners with huge fd tables cost a
    bounded scan), a listener that could not be polled is not tried again until then,
    and the pidfds of at most MAX_PIDFDS owners are kept open between calls."""

    MAX_PIDFDS = 64
    MAX_LINKS = 16384

    def __init__(self, proc: str = "/proc"):
        self.proc = proc
        self.reset()

    def empty(self, listeners: list[tuple[int, int]]) -> set[int]:
        """The inodes among `listeners` ((inode, owner pid), pid 0: unknown) whose accept
        queue is empty now."""
        out = set()
        for ino, pid in listeners:
            if pid <= 0 or ino in self._failed:
                continue
            if pid not in self._owners:
                limit = min(MAX_FDS, self._links_left)
                self._owners[pid], used = socket_fds(pid, self.proc, limit) if limit else ({}, 0)
                self._links_left -= used
            fd = self._owners[pid].get(ino)
            empty = None if fd is None else self._poll(pid, fd, ino)
            if empty is None:
                self._failed.add(ino)
            elif empty:
                out.add(ino)
        return out

    def _poll(self, pid: int, fd: int, ino: int) -> bool | None:
        if pid not in self._pidfds and len(self._pidfds) < self.MAX_PIDFDS:
            self._pidfds[pid] = open_pidfd(pid)
        if pid in self._pidfds:
            handle = self._pidfds[pid]
            return None if handle is None else listener_empty(handle, fd, ino)
        handle = open_pidfd(pid)            # over the limit: one for this call
        if handle is None:
            return None
        try:
            return listener_empty(handle, fd, ino)
        finally:
            os.close(handle)

    def reset(self) -> None:
        for handle in getattr(self, "_pidfds", {}).values():
            if handle is not None:
                os.close(handle)
        self._pidfds: dict[int, int | None] = {}     # owner pid -> its pidfd
        self._owners: dict[int, dict[int, int]] = {}  # owner pid -> {socket inode: fd}
        self._failed: set[int] = set()                # listeners not to poll again
        self._links_left = self.MAX_LINKS

    close = reset
