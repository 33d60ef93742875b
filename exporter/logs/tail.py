"""Follow a log file like `tail -F`, by polling its stat once a second (no inotify).

* Starts at the end of a file that exists at start-up; a file that appears later (or
  replaces the one we followed) is read from its beginning.
* rename-and-create rotation (logrotate's default; the writer reopens on a signal): the
  old file is read to its end, then the new one from its start.
* copytruncate rotation: the file shrinks below our position, or its bytes before our
  position change (truncated and refilled between two polls); we start again at 0.
* A missing file is waited for; a deleted file (nlink 0) is drained and closed.
* Lines are cut at `max_line` bytes (the rest of an over-long line is skipped, never
  buffered) and decoded as UTF-8 with replacement: binary junk cannot break it.
* Every poll reads at most `max_read_per_poll` bytes, so one huge burst is spread over
  several polls instead of stalling the loop.

File I/O runs in a worker thread; `on_line(text)` is called on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import stat
from typing import Callable

log = logging.getLogger(__name__)

CHUNK = 64 * 1024
FINGERPRINT = 64  # bytes before our position compared on every poll (copytruncate)


class FileTailer:
    def __init__(self, path: str, on_line: Callable[[str], None], *, interval: float = 1.0,
                 max_line: int = 64 * 1024, max_read_per_poll: int = 8 * 1024 * 1024,
                 from_end: bool = True):
        self.path = path
        self.on_line = on_line
        self.interval = interval
        self.max_line = max(16, max_line)
        self.max_read_per_poll = max(CHUNK, max_read_per_poll)
        self.from_end = from_end
        # health counters (read by the collector)
        self.lines = 0
        self.truncated_lines = 0
        self.rotations = 0
        self.bytes_read = 0
        self.errors = 0
        self.open_now = False
        self._f = None           # binary file object
        self._ino: tuple[int, int] | None = None
        self._pos = 0
        self._tail = b""         # last FINGERPRINT bytes before _pos
        self._partial = bytearray()
        self._skipping = False   # inside an over-long line: drop bytes until its newline
        self._first = True
        self._task: asyncio.Task | None = None
        self._last_error: str | None = None

    # --- life cycle -----------------------------------------------------------

    async def start(self) -> None:
        # The first look happens now, so "from the end at start-up" means this moment.
        await self.poll()
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"tail {self.path}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        self._close()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)  # the poll period, not synchronisation
            await self.poll()

    async def poll(self) -> int:
        """One look at the file; returns the number of lines delivered."""
        try:
            lines = await asyncio.to_thread(self.poll_sync)
        except Exception as e:  # never let the task die
            self.errors += 1
            msg = f"{type(e).__name__}: {e}"
            if msg != self._last_error:
                log.warning("tailing %s: %s", self.path, msg)
            self._last_error = msg
            return 0
        self._last_error = None
        for line in lines:
            try:
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
            if replaced or gone:
                # rename-and-create (or delete): finish the old file first
                self._read(out, budget=self.max_read_per_poll)
                self._close()
                self.rotations += 1
                if gone and st is not None and (st.st_dev, st.st_ino) == self._ino:
                    st = os.stat(self.path)  # inode number reused by the new file
            else:
                self._check_truncated(fst.st_size)
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
        self._pos = st.st_size if start_at_end else 0
        self._tail = b""
        if start_at_end and self._pos:
            self._tail = os.pread(f.fileno(), min(FINGERPRINT, self._pos), self._pos - min(FINGERPRINT, self._pos))
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
        self.open_now = False

    def _check_truncated(self, size: int) -> None:
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
            self._pos = 0
            self._tail = b""
            self._partial.clear()
            self._skipping = False

    def _read(self, out: list[str], budget: int) -> None:
        fd = self._f.fileno()
        for _ in range(budget // CHUNK + 1):  # bounded
            data = os.pread(fd, CHUNK, self._pos)
            if not data:
                break
            self._pos += len(data)
            self.bytes_read += len(data)
            self._tail = (self._tail + data)[-FINGERPRINT:]
            self._split(data, out)
            if len(data) < CHUNK:
                break

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
