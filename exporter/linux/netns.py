"""Netlink sock_diag sockets inside other network namespaces (pods, containers).

A NETLINK_SOCK_DIAG socket answers for the network namespace it was created in. To read
a pod's unix and TCP tables with the same fidelity as the host's (unix queue lengths,
TCP backlog limits, peers, shutdown state: /proc/PID/net has none of these), the socket
is created inside the pod's namespace: a throwaway thread joins it with setns(2), creates
the socket, reads net.core.somaxconn there (a per-namespace sysctl, resolved against the
opener's namespace), and then ends. Namespaces are per thread, so no other thread of the
exporter ever runs in the pod's namespace, and the thread ends even if returning failed.
The socket stays bound to that namespace for as long as it is open.

Needs CAP_SYS_ADMIN (setns) and ptrace access to the process (opening /proc/PID/ns/net).
Without them `open_in` raises PermissionError and the caller reads /proc/PID/net.

`NetnsSockets` caches one socket per namespace (keyed by the namespace's inode, which is
checked against the opened file, so a reused pid cannot swap namespaces underneath) and
closes those of namespaces no longer seen.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import socket
import threading

from exporter.linux.diagmsg import NETLINK_SOCK_DIAG
from exporter.linux.libc import libc

log = logging.getLogger(__name__)

CLONE_NEWNET = 0x40000000
MAX_NAMESPACES = 1024        # sockets kept open at most (one fd each)
SOMAXCONN_MAX = 1 << 31      # the sysctl is an int

_setns = libc().setns
_setns.argtypes = (ctypes.c_int, ctypes.c_int)
_setns.restype = ctypes.c_int


def _call_setns(fd: int) -> None:
    if _setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def parse_somaxconn(text: str) -> int | None:
    try:
        value = int(text.strip())
    except ValueError:
        return None
    return value if 0 <= value < SOMAXCONN_MAX else None


def open_in(pid: int, netns: int, proc: str = "/proc", timeout: float = 2.0
            ) -> tuple[socket.socket, int | None]:
    """(a NETLINK_SOCK_DIAG socket in pid's network namespace, its somaxconn).

    `netns` is the namespace's inode as read before (/proc/PID/ns/net); if the file opened
    now is another namespace (the pid was reused), OSError(ESRCH). PermissionError
    without CAP_SYS_ADMIN or ptrace access."""
    result: dict = {}

    def run() -> None:
        try:
            own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            result["error"] = e
            return
        try:
            target = os.open(f"{proc}/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            os.close(own)
            result["error"] = e
            return
        try:
            st, mine = os.fstat(target), os.fstat(own)
            if st.st_ino != netns or st.st_dev != mine.st_dev:   # nsfs, that namespace
                raise OSError(errno.ESRCH, f"pid {pid} is no longer in network namespace {netns}")
            _call_setns(target)
            try:
                sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                                     NETLINK_SOCK_DIAG)
                somaxconn = None
                try:
                    with open("/proc/sys/net/core/somaxconn", "rb") as f:
                        somaxconn = parse_somaxconn(f.read(32).decode("ascii", "replace"))
                except OSError:
                    pass
                result["value"] = (sock, somaxconn)
            finally:
                # back home; if that failed this thread ends here anyway and runs nothing
                # else in the other namespace
                try:
                    _call_setns(own)
                except OSError as e:
                    log.warning("could not return to the exporter's network namespace "
                                "(the helper thread ends): %s", e)
        except OSError as e:
            result["error"] = e
        finally:
            os.close(target)
            os.close(own)

    t = threading.Thread(target=run, name=f"netns-{netns}", daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        raise OSError(errno.ETIMEDOUT, f"opening a socket in network namespace {netns} timed out")
    if "error" in result:
        raise result["error"]
    return result["value"]


class NetnsSockets:
    """One sock_diag socket per foreign network namespace, opened on demand, closed
    when its namespace is not asked for in a scrape (`keep_only`)."""

    def __init__(self, proc: str = "/proc"):
        self.proc = proc
        self._socks: dict[int, tuple[socket.socket, int | None]] = {}
        self._lock = threading.Lock()
        self.denied = False        # the last attempt lacked privileges (CAP_SYS_ADMIN)

    def get(self, netns: int, pid: int) -> tuple[socket.socket, int | None]:
        with self._lock:
            got = self._socks.get(netns)
        if got is not None:
            return got
        if len(self._socks) >= MAX_NAMESPACES:
            raise OSError(errno.EMFILE, "too many network namespaces open")
        try:
            got = open_in(pid, netns, self.proc)
        except PermissionError:
            self.denied = True
            raise
        self.denied = False
        with self._lock:
            old = self._socks.get(netns)
            if old is not None:            # opened twice concurrently: keep one
                got[0].close()
                return old
            self._socks[netns] = got
        return got

    def discard(self, netns: int) -> None:
        """Close a namespace's socket after an error (its sequence numbers may be off)."""
        with self._lock:
            got = self._socks.pop(netns, None)
        if got is not None:
            got[0].close()

    def keep_only(self, live: set[int]) -> None:
        with self._lock:
            gone = [ns for ns in self._socks if ns not in live]
            socks = [self._socks.pop(ns)[0] for ns in gone]
        for s in socks:
            s.close()

    def close(self) -> None:
        self.keep_only(set())
