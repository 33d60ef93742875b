"""stat() that never asks a file's file system: statx(2) with AT_STATX_DONT_SYNC.

A heartbeat file is another process's choice: a worker can hold a file on a FUSE mount
whose daemon never answers (or swap one onto its heartbeat's fd number at any time),
and a plain stat() of `/proc/PID/fd/N` would then wait for that daemon. With
AT_STATX_DONT_SYNC, FUSE (and NFS, CIFS, Ceph) answer from the attributes the kernel
already holds instead of asking the server; local file systems (tmpfs, ext4, xfs, ...)
are always current, so for them this is the same answer as stat(). Following the magic
link `/proc/PID/fd/N` asks no file system either. Needs glibc's statx() (2.28+) and
Linux 4.11+; without them, `stat_nosync` raises OSError (the caller skips the file).
"""

from __future__ import annotations

import ctypes
import os
from typing import NamedTuple

from exporter.linux.libc import libc

AT_STATX_DONT_SYNC = 0x4000
STATX_BASIC_STATS = 0x07FF


class _Timestamp(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_int64), ("tv_nsec", ctypes.c_uint32),
                ("reserved", ctypes.c_int32)]


class _Statx(ctypes.Structure):
    _fields_ = [("mask", ctypes.c_uint32), ("blksize", ctypes.c_uint32),
                ("attributes", ctypes.c_uint64), ("nlink", ctypes.c_uint32),
                ("uid", ctypes.c_uint32), ("gid", ctypes.c_uint32),
                ("mode", ctypes.c_uint16), ("spare0", ctypes.c_uint16),
                ("ino", ctypes.c_uint64), ("size", ctypes.c_uint64),
                ("blocks", ctypes.c_uint64), ("attributes_mask", ctypes.c_uint64),
                ("atime", _Timestamp), ("btime", _Timestamp), ("ctime", _Timestamp),
                ("mtime", _Timestamp), ("rdev_major", ctypes.c_uint32),
                ("rdev_minor", ctypes.c_uint32), ("dev_major", ctypes.c_uint32),
                ("dev_minor", ctypes.c_uint32), ("spare", ctypes.c_uint64 * 14)]


class FileStat(NamedTuple):
    """The fields of os.stat_result the heartbeat readers use, with the same meaning."""
    st_dev: int
    st_ino: int
    st_mtime: float
    st_ctime: float


_statx = None


def stat_nosync(path: str) -> FileStat:
    """statx(path) with AT_STATX_DONT_SYNC (follows symlinks, as os.stat does)."""
    global _statx
    if _statx is None:
        if not hasattr(libc(), "statx"):
            raise OSError("statx() not in this C library")
        _statx = libc().statx
        _statx.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_uint,
                           ctypes.POINTER(_Statx)]
    buf = _Statx()
    if _statx(-100, os.fsencode(path), AT_STATX_DONT_SYNC, STATX_BASIC_STATS,  # AT_FDCWD
              ctypes.byref(buf)) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), path)
    return FileStat(os.makedev(buf.dev_major, buf.dev_minor), buf.ino,
                    buf.mtime.tv_sec + buf.mtime.tv_nsec / 1e9,
                    buf.ctime.tv_sec + buf.ctime.tv_nsec / 1e9)
