"""Follow a log file like `tail -F`: read as soon as it is written (inotify,
exporter/linux/inotify.py), and stat it every `interval` as well (files inotify does not see written:
NFS, a directory it cannot watch).

* Starts at the end of a file that exists at start-up; a file that appears later (or
  replaces the one we followed) is read from its beginning.
* rename-and-create rotation (logrotate's default; the writer reopens on a signal): the
  old file is read to its end (over as many reads as it takes), then the new one.
* copytruncate rotation: the file shrinks below our position, or its bytes before our
  position change (truncated and refilled). Before starting again at 0, what the copy
  holds past our position is read from it (`recovered`): a regular file in the same
  directory whose first bytes are the followed file's first bytes and whose bytes just
  before our position are the ones we read last. Lines written between the copy and the
  truncation that we had not read yet are in neither file: that window is a few
  milliseconds with inotify (docs/oom-and-logs.md), the poll interval without.
* A missing file is waited for; a deleted file (nlink 0) is drained and closed.
* Lines are cut at `max_line` bytes (the rest of an over-long line is skipped, never
  buffered) and decoded as UTF-8 with replacement: binary junk cannot break it.
* Every read takes at most `max_read_per_poll` bytes; the rest comes on the next one.

File I/O runs in a worker thread; `on_line(text)` (or `on_line(text, read_at)` with
`timed=True`) is called on the event loop. `read_at` is the wall-clock time the line was
read when an inotify event triggered the read (an upper bound of when it was written),
else None.
"""

from __future__ import annotations

import asyncio
import logging
import os
import stat
import time
from typing import Callable

from exporter.linux import inotify as ino

log = logging.getLogger(__name__)

CHUNK = 64 * 1024
FINGERPRINT = 64    # bytes before our position compared on every poll (copytruncate)
MAX_DIR_ENTRIES = 1000   # looked at when searching a copytruncate copy
MAX_RECOVER = 64 * 1024 * 1024

_DIR_EVENTS = (ino.IN_MODIFY | ino.IN_CREATE | ino.IN_MOVED_TO | ino.IN_MOVED_FROM |
               ino.IN_DELETE | ino.IN_ATTRIB | ino.IN_CLOSE_WRITE)
_STRUCTURE = ino.IN_CREATE | ino.IN_MOVED_TO | ino.IN_MOVED_FROM | ino.IN_DELETE | ino.IN_Q_OVERFLOW


class FileTailer:
    def __init__(self, path: str, on_line: Callable[..., None], *, interval: float = 1.0,
                 max_line: int = 64 * 1024, max_read_per_poll: int = 8 * 1024 * 1024,
                 from_end: bool = True, timed: bool = False, inotify: bool = True,
                 recover: bool = True):
        self.path = path
        self.dir, self.base = os.path.split(path)
        self.on_line = on_line
        self.interval = interval
        self.max_line = max(16, max_line)
        self.max_read_per_poll = max(CHUNK, max_read_per_poll)
        self.from_end = from_end
        self.timed = timed
        self.use_inotify = inotify
        self.recover = recover       # read a copytruncate copy's unread rest
        # health counters (read by the collector)
        self.lines = 0
        self.truncated_lines = 0
        self.rotations = 0
        self.bytes_read = 0
        self.errors = 0
        self.lines_recovered = 0     # read from a copytruncate copy
        self.lines_lost = 0          # known to exist, not read (over MAX_RECOVER)
        self.open_now = False
        self.watching = False        # inotify watches the file's directory
        self._f = None               # binary file object
        self._ino: tuple[int, int] | None = None
        self._pos = 0
        self._tail = b""             # last FINGERPRINT bytes before _pos
        self._head = b""             # first FINGERPRINT bytes of the file
        self._partial = bytearray()
        self._skipping = False       # inside an over-long line: drop bytes until its newline
        self._first = True
        self._detached = False       # our file is no longer at the path (draining it)
        self._more = False           # the last read stopped at its budget
        self._task: asyncio.Task | None = None
        self._kicked: asyncio.Task | None = None
        self._again = False
        self._lock: asyncio.Lock | None = None
        self._inotify = None
        self._last_error: str | None = None

    # --- life cycle -----------------------------------------------------------

    async def start(self) -> None:
        # The first look happens now, so "from the end at start-up" means this moment.
        self._lock = asyncio.Lock()
        await self.poll()
        self._watch()
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"tail {self.path}")

    async def stop(self) -> None:
        self._unwatch()
        for task in (self._task, self._kicked):
            if task is not None:
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
        self._task = self._kicked = None
        self._close()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)  # the poll period, not synchronisation
            await self.poll()

    def _watch(self) -> None:
        if not self.use_inotify:
            return
        try:
            watch = ino.Inotify()
            try:
                watch.add_watch(self.dir or ".", _DIR_EVENTS)
                asyncio.get_running_loop().add_reader(watch.fileno(), self._on_events)
            except BaseException:
                watch.close()
                raise
        except OSError as e:
            log.warning("tailing %s: no inotify (%s): polling every %ss", self.path, e, self.interval)
            return
        self._inotify = watch
        self.watching = True

    def _unwatch(self) -> None:
        if self._inotify is not None:
            try:
                asyncio.get_running_loop().remove_reader(self._inotify.fileno())
            except (RuntimeError, ValueError):
                pass
            self._inotify.close()
            self._inotify = None
        self.watching = False

    def _on_events(self) -> None:
        try:
            events = self._inotify.read()
        except OSError:
            return
        if any(name == self.base or mask & _STRUCTURE for mask, name in events) or \
                (events and (self._detached or self._more)):
            self._kick()

    def _kick(self) -> None:
        if self._kicked is not None and not self._kicked.done():
            self._again = True
            return
        self._kicked = asyncio.get_running_loop().create_task(self._prompt())

    async def _prompt(self) -> None:
        for _ in range(1000):               # bounded: events keep coming under load
            self._again = False
            await self.poll(prompt=True)
            if not (self._again or self._more):
                return

    async def poll(self, prompt: bool = False) -> int:
        """One look at the file; returns the number of lines delivered."""
        lock = self._lock or asyncio.Lock()
        async with lock:
            try:
                lines = await asyncio.to_thread(self.poll_sync)
            except Exception as e:  # never let the task die
                self.errors += 1
                msg = f"{type(e).__name__}: {e}"
                if msg != self._last_error:
                    log.warning("tailing %s: %s", self.path, msg)
                self._last_error = msg
                return 0
            read_at = time.time() if prompt else None
        self._last_error = None
        for line in lines:
            try:
                if self.timed:
                    self.on_line(line, read_at)
                else:
                    self.on_line(line)
            except Exception:
                log.exception("handling a line of %s failed", self.path)
        return len(lines)

    # --- the work (in a thread) ---------------------------------------------

    def poll_sync(self) -> list[str]:
        out: list[str] = []
        first, self._first = self._first, False
        try:
            st: os.stat_result | None = os.stat(self.path)
        except FileNotFoundError:
            st = None
        if self._f is not None:
            fst = os.fstat(self._f.fileno())
            replaced = st is not None and (st.st_dev, st.st_ino) != self._ino
            gone = fst.st_nlink == 0
            self._detached = st is None or replaced or gone
            if replaced or gone:
                # rename-and-create (or delete): finish the old file first
                self._read(out, budget=self.max_read_per_poll)
                if self._more:
                    return out                  # more of the old file on the next read
                self._close()
                self.rotations += 1
                if gone and st is not None and (st.st_dev, st.st_ino) == self._ino:
                    st = os.stat(self.path)  # inode number reused by the new file
            else:
                self._check_truncated(fst.st_size, out)
        if self._f is None and st is not None:
            if not stat.S_ISREG(st.st_mode):
                raise OSError(f"{self.path} is not a regular file")
            self._open(start_at_end=first and self.from_end)
        if self._f is not None:
            self._read(out, budget=self.max_read_per_poll)
        return out

    def _open(self, start_at_end: bool) -> None:
        f = open(self.path, "rb", buffering=0)
        st = os.fstat(f.fileno())
        self._f = f
        self._ino = (st.st_dev, st.st_ino)
        self._detached = False
        self._pos = st.st_size if start_at_end else 0
        self._tail = b""
        self._head = b""
        if start_at_end and self._pos:
            n = min(FINGERPRINT, self._pos)
            self._tail = os.pread(f.fileno(), n, self._pos - n)
        self._partial.clear()
        self._skipping = False
        self.open_now = True

    def _close(self) -> None:
        if self._f is not None:
            try:
                self._f.close()
            except OSError:
                pass
        self._f = None
        self._ino = None
        self._partial.clear()
        self._skipping = False
        self._more = False
        self.open_now = False

    def _check_truncated(self, size: int, out: list[str]) -> None:
        truncated = size < self._pos
        if not truncated and self._tail:
            n = len(self._tail)
            try:
                now = os.pread(self._f.fileno(), n, self._pos - n)
            except OSError:
                now = b""
            truncated = now != self._tail
        if truncated:
            self.rotations += 1
            self._recover(out)
            self._pos = 0
            self._tail = b""
            self._head = b""
            self._partial.clear()
            self._skipping = False

    def _recover(self, out: list[str]) -> None:
        """copytruncate: read what the copy holds past our position (see the module doc)."""
        head, tail, pos = self._head, self._tail, self._pos
        if not self.recover or len(head) < FINGERPRINT or len(tail) < min(FINGERPRINT, pos) or not pos:
            return
        try:
            with os.scandir(self.dir or ".") as it:
                candidates = []
                for i, e in enumerate(it):
                    if i >= MAX_DIR_ENTRIES:
                        break
                    if e.name != self.base and e.is_file(follow_symlinks=False):
                        candidates.append(e.path)
        except OSError:
            return
        for path in candidates:
            try:
                fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode) or st.st_size < pos or \
                        os.pread(fd, len(head), 0) != head or \
                        os.pread(fd, len(tail), pos - len(tail)) != tail:
                    continue
                before = len(out)
                end = min(st.st_size, pos + MAX_RECOVER)
                at = pos
                while at < end:
                    data = os.pread(fd, min(CHUNK, end - at), at)
                    if not data:
                        break
                    at += len(data)
                    self._split(data, out)
                self._partial.clear()      # the copy's unfinished last line: not a line
                self._skipping = False
                self.lines_recovered += len(out) - before
                if st.st_size > end:
                    self.lines_lost += _count_lines(fd, end, st.st_size)
                return
            finally:
                os.close(fd)

    def _read(self, out: list[str], budget: int) -> None:
        fd = self._f.fileno()
        self._more = False
        if len(self._head) < FINGERPRINT and self._pos > len(self._head):
            self._head = os.pread(fd, FINGERPRINT, 0)
        for _ in range(budget // CHUNK):  # bounded
            data = os.pread(fd, CHUNK, self._pos)
            if not data:
                return
            self._pos += len(data)
            self.bytes_read += len(data)
            self._tail = (self._tail + data)[-FINGERPRINT:]
            if len(self._head) < FINGERPRINT:
                self._head = os.pread(fd, FINGERPRINT, 0)
            self._split(data, out)
            if len(data) < CHUNK:
                return
        self._more = True

    def _split(self, data: bytes, out: list[str]) -> None:
        start = 0
        n = len(data)
        while start < n:
            nl = data.find(b"\n", start)
            end = n if nl < 0 else nl
            if not self._skipping:
                room = self.max_line - len(self._partial)
                piece = data[start:end]
                if len(piece) > room:
                    self._partial += piece[:room]
                    self._emit(out, truncated=True)
                    self._skipping = True
                else:
                    self._partial += piece
            if nl < 0:
                break
            if self._skipping:
                self._skipping = False
            else:
                self._emit(out, truncated=False)
            start = nl + 1

    def _emit(self, out: list[str], truncated: bool) -> None:
        raw = bytes(self._partial)
        self._partial.clear()
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        self.lines += 1
        if truncated:
            self.truncated_lines += 1
        out.append(raw.decode("utf-8", "replace"))


def _count_lines(fd: int, start: int, end: int) -> int:
    n = 0
    while start < end:
        data = os.pread(fd, min(CHUNK * 16, end - start), start)
        if not data:
            break
        n += data.count(b"\n")
        start += len(data)
    return n
