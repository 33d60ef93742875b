"""What py-spy's `dump --json` output says: pure functions over its text.

The output is a JSON list of threads, each with its frames innermost first:

    [{"pid": 12, "thread_id": 1402, "thread_name": "MainThread", "os_thread_id": 12,
      "active": false, "owns_gil": false,
      "frames": [{"name": "app", "filename": "/srv/shop/app.py", "short_filename":
                  "app.py", "line": 96, "locals": null, ...}, ...]}, ...]

Everything in it was read from another process's memory: strings are cut, counts are
capped, anything of the wrong type is skipped. Locals are never asked for (py-spy runs
without --locals), and a "locals" key is ignored if it is there.

The frame that names the cause is the innermost one outside gunicorn and the standard
library (`innermost`): a sync worker blocked on a dependency shows the app's own line
that called it (`app (shop/views.py:42)`), not `socket.recv`.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass

from exporter.labels import bounded

MAX_THREADS = 32           # threads kept per capture (those with app frames first)
MAX_FRAMES_PER_THREAD = 64  # innermost frames kept per thread
MAX_FRAMES = 128           # frames kept per capture, all threads together
MAX_TEXT = 200             # bytes of a function or file name kept

# The standard library: .../lib/python3.11/x.py, .../lib64/python3.12t/x.py, but not
# what is installed under it (site-packages, dist-packages).
_STDLIB = re.compile(r"/lib(?:64)?/python\d+(?:\.\d+)?t?/(?!(?:site|dist)-packages/)")
_GUNICORN = re.compile(r"/(?:site|dist)-packages/gunicorn/")

# py-spy's error text (its first line) -> outcome
_OUTCOMES = (
    (re.compile(r"permission denied|operation not permitted|elevated permissions", re.I),
     "denied"),
    (re.compile(r"no such process|no such file|process is running|process .* not found|"
                r"failed to get process", re.I), "gone"),
    (re.compile(r"python version|python interpreter|not a python|find python|"
                r"failed to find|python binary", re.I), "not_python"),
)


@dataclass(frozen=True, slots=True)
class Frame:
    function: str
    filename: str          # the full path, as the target's code object says
    short: str             # py-spy's short file name (package-relative), else the base name
    line: int

    @property
    def label(self) -> str:
        """`function (file:line)`, capped like every label value."""
        return bounded(f"{self.function} ({self.short}:{self.line})")

    @property
    def library(self) -> bool:
        return is_library(self.filename)


@dataclass(frozen=True, slots=True)
class Thread:
    name: str
    tid: int
    frames: tuple[Frame, ...]   # innermost first
    omitted: int = 0            # outer frames not kept


def is_library(filename: str) -> bool:
    """A frame of gunicorn or the standard library (frozen modules included)."""
    if not filename or filename.startswith("<"):
        return True
    if _STDLIB.search(filename) or _GUNICORN.search(filename):
        return True
    return filename.rsplit("/", 1)[-1] == "gunicorn"     # the console script


def _text(value) -> str:
    return bounded(value if isinstance(value, str) else "?", MAX_TEXT)


def _frame(raw) -> Frame | None:
    if not isinstance(raw, dict):
        return None
    line = raw.get("line")
    if isinstance(line, bool) or not isinstance(line, int):
        line = 0
    filename = raw.get("filename") if isinstance(raw.get("filename"), str) else ""
    short = raw.get("short_filename")
    if not isinstance(short, str) or not short:
        short = filename.rsplit("/", 1)[-1] or "?"
    return Frame(_text(raw.get("name")), _text(filename), _text(short),
                 max(0, min(line, 10**9)))


def parse(text: str | bytes) -> tuple[Thread, ...]:
    """py-spy's JSON to threads (ValueError when it is not that JSON). Threads with a
    frame outside the libraries come first; at most MAX_THREADS threads and MAX_FRAMES
    frames in all are kept, each thread's innermost first."""
    data = json.loads(text)
    if not isinstance(data, list):
        raise ValueError("py-spy output is not a list of threads")
    threads: list[Thread] = []
    for raw in data[:1024]:
        if not isinstance(raw, dict):
            continue
        frames_raw = raw.get("frames")
        frames_raw = frames_raw if isinstance(frames_raw, list) else []
        frames = [f for f in map(_frame, frames_raw[:MAX_FRAMES_PER_THREAD]) if f is not None]
        tid = raw.get("os_thread_id", raw.get("thread_id"))
        threads.append(Thread(_text(raw.get("thread_name") or "thread"),
                              tid if isinstance(tid, int) and not isinstance(tid, bool) else 0,
                              tuple(frames), max(0, len(frames_raw) - len(frames))))
    threads.sort(key=lambda t: not any(not f.library for f in t.frames))   # stable
    kept: list[Thread] = []
    left = MAX_FRAMES
    for t in threads[:MAX_THREADS]:
        if left <= 0:
            break
        frames = t.frames[:left]
        kept.append(Thread(t.name, t.tid, frames, t.omitted + len(t.frames) - len(frames)))
        left -= len(frames)
    return tuple(kept)


def innermost(threads: tuple[Thread, ...]) -> Frame | None:
    """The frame that names the cause: each thread's innermost frame outside gunicorn and
    the standard library; of those, the one most threads are in (the first thread's on
    a tie). Without any, the innermost frame of the first thread that has one."""
    picks = [next((f for f in t.frames if not f.library), None) for t in threads]
    found = [f for f in picks if f is not None]
    if found:
        counts = Counter(found)
        best = max(counts.values())
        return next(f for f in found if counts[f] == best)
    return next((t.frames[0] for t in threads if t.frames), None)


def outcome_of_error(stderr: str) -> str:
    """The outcome of a failed run from py-spy's error text: denied, gone, not_python,
    or failed."""
    for regex, outcome in _OUTCOMES:
        if regex.search(stderr[:4096]):
            return outcome
    return "failed"


def error_line(stderr: str) -> str:
    """py-spy's first error line, cut (for a log line)."""
    for line in stderr.splitlines()[:20]:
        line = line.strip()
        if line:
            return bounded(line.removeprefix("Error: "), 200)
    return ""
