"""A worker's heartbeat file, read as gunicorn's master reads it.

Every worker refreshes an unlinked temp file (`wgunicorn-*`) while it is free to do so;
the master kills a worker whose file is older than `--timeout`. gunicorn >= 22 stores
`time.monotonic()` in the file's mtime (`os.utime(fd, (t, t))`); older releases toggle
the file's mode, so there the ctime is the last beat, on the wall clock. A sync worker
cannot beat during a request: its heartbeat age is how long the request has run.

Pure functions, plus `HeartbeatFile`, what the gunicorn collector hands the sampler
(exporter/sampler/) so that it can read a worker's age between scrapes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# File systems whose stat() is answered by the kernel itself. The sampler and the
# collector stat a worker's heartbeat file only there: a FUSE or network file system
# (the worker chooses --worker-tmp-dir) could stall the call forever.
SAFE_FSTYPES = frozenset({"tmpfs", "ramfs", "devtmpfs", "ext2", "ext3", "ext4", "xfs",
                          "btrfs", "overlay", "zfs", "f2fs", "bcachefs", "jfs"})


@dataclass(frozen=True, slots=True)
class HeartbeatFile:
    """Where a worker's heartbeat is and how to read it (not rendered)."""

    fd: int                 # in the worker's fd table: /proc/PID/fd/FD
    dev: int                # st_dev and st_ino, so a reused pid or fd is not mistaken
    ino: int
    monotonic: bool         # True: the mtime is time.monotonic() (gunicorn >= 22)


def legacy_version(version: str) -> bool | None:
    """True for gunicorn releases before 22 (ctime beats), None if the version is unknown."""
    m = re.match(r"(\d{1,4})\.", version)
    if not m:
        return None
    return int(m.group(1)) < 22


def is_monotonic(mtime: float, legacy: bool | None, mono_now: float) -> bool:
    """Whether the mtime is a monotonic-clock beat: by the version when it is known, else
    by its size (a wall-clock mtime is decades ahead of the monotonic clock)."""
    return legacy is False or (legacy is None and mtime <= mono_now + 60)


def last_beat(mtime: float, ctime: float, monotonic: bool) -> float:
    """The time of the last beat, on the clock `monotonic` names."""
    return mtime if monotonic else (ctime or mtime)


def age(beat: float, monotonic: bool, mono_now: float, wall_now: float) -> float:
    """Seconds since the beat, as the master computes them (never negative)."""
    return max(0.0, (mono_now if monotonic else wall_now) - beat)
