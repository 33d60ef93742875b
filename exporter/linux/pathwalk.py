"""Resolve a path the way another process sees it, with that process's user's rights.

The exporter runs as root; a path named by a monitored process (its config file, its
control socket) is attacker input. `PathWalker` resolves it one component at a time
from the process's own root (`/proc/PID/root`) or working directory, with `O_PATH`
file descriptors, so that:

* absolute symlinks resolve inside the process's root, never the exporter's, and `..`
  never climbs above it;
* every directory on the way must be searchable by the process's user (mode bits of its
  uid, gid and groups; root's own processes excepted) — the check the kernel would make
  for that user, done here because the exporter's own root privileges skip it;
* nothing is opened for reading until the final object is known to be what the caller
  wants (`O_PATH` opens neither devices nor FIFOs);
* lookups never enter a FUSE mount of the process's mount namespace (a FUSE daemon can
  stall a lookup forever); at most 40 symlinks and 256 components are followed.

The result is an `O_PATH` fd of the final object; `read_regular` reads it as a regular
file, and `exporter/gunicorn/control.py` connects to a socket through it
(`/proc/self/fd/N`), so what was checked is what is used.
"""

from __future__ import annotations

import os
import stat
from collections import deque

from exporter.linux.procfs import MAX_MOUNTINFO, ProcFS, ProcStatus, parse_mountinfo

MAX_SYMLINKS = 40
MAX_COMPONENTS = 256
O_PATH = os.O_PATH | os.O_CLOEXEC


class WalkError(OSError):
    pass


def fuse_mount_points(mountinfo: str) -> frozenset[str]:
    """Mount points (relative to the process's root) of FUSE file systems in a
    /proc/PID/mountinfo text."""
    return frozenset(m.point for m in parse_mountinfo(mountinfo) if is_fuse(m.fstype))


def is_fuse(fstype: str) -> bool:
    return fstype == "fuse" or fstype.startswith(("fuse.", "fuseblk"))


class PathWalker:
    """Resolves paths for one process (see the module docstring). Close it after use."""

    def __init__(self, procfs: ProcFS, pid: int, owner: ProcStatus):
        self.owner = owner
        self.procfs = procfs
        self.pid = pid
        try:
            mountinfo = procfs.read_text(pid, "mountinfo", limit=MAX_MOUNTINFO)
        except OSError:
            mountinfo = ""
        self.fuse = fuse_mount_points(mountinfo)
        self.root_fd = os.open(procfs.path(pid, "root"), O_PATH | os.O_DIRECTORY)
        st = os.fstat(self.root_fd)
        self.root_id = (st.st_dev, st.st_ino)

    def close(self) -> None:
        os.close(self.root_fd)

    def __enter__(self) -> "PathWalker":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _on_fuse(self, logical: str) -> bool:
        return any(logical == m or logical.startswith(m.rstrip("/") + "/") for m in self.fuse)

    def resolve(self, path: str, follow_last: bool = True) -> int:
        """An O_PATH fd of `path` (absolute: from the process's root; relative: from its
        working directory). Raises WalkError / PermissionError / OSError."""
        if path.startswith("/"):
            cur, logical = os.dup(self.root_fd), "/"
        else:
            try:
                logical = os.readlink(self.procfs.path(self.pid, "cwd"))
            except OSError:
                logical = "?"
            if self._on_fuse(logical):
                raise WalkError(f"the working directory {logical[:80]!r} is on a FUSE mount")
            cur = os.open(self.procfs.path(self.pid, "cwd"), O_PATH | os.O_DIRECTORY)
        comps = deque(path.split("/"))
        links = steps = 0
        try:
            while comps:
                c = comps.popleft()
                if c in ("", "."):
                    continue
                steps += 1
                if steps > MAX_COMPONENTS:
                    raise WalkError("too many path components")
                st = os.fstat(cur)
                if not stat.S_ISDIR(st.st_mode):
                    raise WalkError(f"{logical[:80]!r} is not a directory")
                if not self.owner.may(st, 1):
                    raise PermissionError(f"uid {self.owner.uid} may not search {logical[:80]!r}")
                if c == "..":
                    if (st.st_dev, st.st_ino) == self.root_id:
                        continue  # never above the process's root
                    nxt = os.open("..", O_PATH | os.O_DIRECTORY, dir_fd=cur)
                    os.close(cur)
                    cur, logical = nxt, os.path.dirname(logical.rstrip("/")) or "/"
                    continue
                child = os.path.join(logical, c)
                if self._on_fuse(child):
                    raise WalkError(f"{child[:80]!r} is on a FUSE mount")
                nxt = os.open(c, O_PATH | os.O_NOFOLLOW, dir_fd=cur)
                if stat.S_ISLNK(os.fstat(nxt).st_mode) and (comps or follow_last):
                    target = os.readlink("", dir_fd=nxt)
                    os.close(nxt)
                    links += 1
                    if links > MAX_SYMLINKS:
                        raise WalkError("too many symbolic links")
                    comps.extendleft(reversed(target.split("/")))
                    if target.startswith("/"):
                        os.close(cur)
                        cur, logical = os.dup(self.root_fd), "/"
                    continue
                os.close(cur)
                cur, logical = nxt, child
            return cur
        except BaseException:
            os.close(cur)
            raise

    def read_regular(self, path: str, limit: int, cached=()) -> tuple[bytes | None, tuple]:
        """Read a regular file of at most `limit` bytes that the process's user may read.
        Returns (content, (dev, ino, mtime_ns, size)); content is None when that key is
        in `cached`."""
        fd = self.resolve(path)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise WalkError(f"not a regular file: {path[:80]!r}")
            if st.st_size > limit:
                raise WalkError(f"larger than {limit} bytes: {path[:80]!r}")
            if not self.owner.may(st, 4):
                raise PermissionError(f"uid {self.owner.uid} may not read {path[:80]!r}")
            key = (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)
            if key in cached:
                return None, key
            rfd = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            try:
                data = os.read(rfd, limit + 1)
            finally:
                os.close(rfd)
            if len(data) > limit:
                raise WalkError(f"larger than {limit} bytes: {path[:80]!r}")
            return data, key
        finally:
            os.close(fd)

    def list_dir(self, path: str, prefix: str, limit: int) -> list[str]:
        """Names starting with `prefix` in a directory the process's user may read."""
        try:
            fd = self.resolve(path)
        except OSError:
            return []
        try:
            st = os.fstat(fd)
            if not stat.S_ISDIR(st.st_mode) or not self.owner.may(st, 4):
                return []
            out = []
            with os.scandir(f"/proc/self/fd/{fd}") as it:
                for i, entry in enumerate(it):
                    if i >= limit:
                        break
                    if entry.name.startswith(prefix):
                        out.append(entry.name)
            return out
        except OSError:
            return []
        finally:
            os.close(fd)
