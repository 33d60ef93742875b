"""Whether a listening unix socket of another process has connections waiting, in
constant time: a duplicate of the socket taken through pidfd_getfd(2) (Linux >= 5.6,
the same right as reading /proc/PID/fd: CAP_SYS_PTRACE or the process's user), polled
with a zero timeout, and closed at once. Never accepted from, never read.

sock_diag has no index of unix sockets by inode: the kernel walks every unix socket of
the network namespace to find one (2 ms at 12k unix sockets with the caches cold, ten
times a second: 2 % of a core). poll() answers POLLIN on a unix listener iff its accept
queue is not empty; an empty queue is a length of 0, the rest still needs the walk.

The process may be hostile: the fd is found by its /proc link naming the socket's
inode (kernel text), and what pidfd_getfd hands over is trusted only if it is a socket
(getsockopt, which no file system answers: a FUSE file cannot make us wait), listening,
with that inode. Anything else is None: unknown, read it the slow way. The same holds
for a TCP listener (poll() answers POLLIN iff its accept queue is not empty).
"""

from __future__ import annotations

import ctypes
import os
import select
import socket

SYS_PIDFD_GETFD = 438   # asm-generic: the same number on every architecture
MAX_FDS = 4096          # fd links looked at to find the socket (a hostile process has more)

_libc = None


def _pidfd_getfd(pidfd: int, fd: int) -> int:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    r = _libc.syscall(SYS_PIDFD_GETFD, pidfd, fd, 0)
    if r < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return r


def find_fd(pid: int, inode: int, proc: str = "/proc") -> int | None:
    """The fd number under which `pid` holds the socket `inode` (None: not among its
    first MAX_FDS fds, or unreadable)."""
    link = f"socket:[{inode}]"
    try:
        with os.scandir(f"{proc}/{pid}/fd") as it:
            for i, e in enumerate(it):
                if i >= MAX_FDS:
                    return None
                try:
                    if os.readlink(e.path) == link:
                        return int(e.name)
                except (OSError, ValueError):
                    continue
    except OSError:
        return None
    return None


def open_pidfd(pid: int) -> int | None:
    """A pidfd of `pid` (None: gone, or no pidfd support)."""
    try:
        return os.pidfd_open(pid)
    except OSError:
        return None


def listener_empty(pidfd: int, fd: int, inode: int) -> bool | None:
    """Whether the listening socket `inode`, fd `fd` of the process of `pidfd`, has an
    empty accept queue (None: unknown: gone, not that socket, no right to it)."""
    try:
        dup = _pidfd_getfd(pidfd, fd)
    except OSError:
        return None
    try:
        # a socket (else ENOTSOCK, without asking any file system), listening, and that
        # socket: socket inodes are unique, and fstat() of a socket asks no file system
        if not _listening(dup) or os.fstat(dup).st_ino != inode:
            return None
        p = select.poll()           # not select(): any fd number
        p.register(dup, select.POLLIN)
        return not p.poll(0)
    except OSError:
        return None
    finally:
        os.close(dup)


def _listening(fd: int) -> bool:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    value, size = ctypes.c_int(0), ctypes.c_uint32(4)
    if _libc.getsockopt(fd, socket.SOL_SOCKET, socket.SO_ACCEPTCONN, ctypes.byref(value),
                        ctypes.byref(size)) != 0:
        return False
    return value.value == 1


class ListenerPolls:
    """`listener_empty` for a caller that asks many times a second: each listener's fd
    is looked for once until `reset` (the caller's targets changed), a listener that
    could not be polled is not tried again until then, and the pidfds of at most
    MAX_PIDFDS owners are kept open between calls."""

    MAX_PIDFDS = 64

    def __init__(self, proc: str = "/proc"):
        self.proc = proc
        self._fds: dict[int, int | None] = {}       # inode -> its owner's fd; None: no poll
        self._pidfds: dict[int, int | None] = {}    # owner pid -> its pidfd

    def empty(self, listeners: list[tuple[int, int]]) -> set[int]:
        """The inodes among `listeners` ((inode, owner pid), pid 0: unknown) whose accept
        queue is empty now."""
        out = set()
        for ino, pid in listeners:
            if ino not in self._fds:
                self._fds[ino] = find_fd(pid, ino, self.proc) if pid > 0 else None
            fd = self._fds[ino]
            if fd is None:
                continue
            if pid not in self._pidfds and len(self._pidfds) < self.MAX_PIDFDS:
                self._pidfds[pid] = open_pidfd(pid)
            handle = self._pidfds.get(pid, -1)
            if handle == -1:                # over the limit: one for this call
                handle = open_pidfd(pid)
                empty = None if handle is None else listener_empty(handle, fd, ino)
                if handle is not None:
                    os.close(handle)
            else:
                empty = None if handle is None else listener_empty(handle, fd, ino)
            if empty is None:
                self._fds[ino] = None
            elif empty:
                out.add(ino)
        return out

    def reset(self) -> None:
        for handle in self._pidfds.values():
            if handle is not None:
                os.close(handle)
        self._pidfds = {}
        self._fds = {}

    close = reset
