"""The C library this interpreter already runs on (`ctypes.CDLL(None)`), loaded once and
shared by the readers that call it directly (inotify, setns, pidfd_getfd, getsockopt,
statx), with errno kept for `ctypes.get_errno()`."""

from __future__ import annotations

import ctypes
import functools


@functools.cache
def libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)
