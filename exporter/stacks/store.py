"""The last captures and postmortems per app, for GET /debug/stacks, and the one-line
records the collector logs. Bounded: MAX_APPS apps (the least recently captured go
first), CAPTURES and POSTMORTEMS per app, each capture as parse() kept it (at most
MAX_FRAMES frames of at most MAX_TEXT bytes each), and an answer of at most MAX_ANSWER
bytes (the newest first; `truncated` says when something was left out).
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict, deque

from exporter.stacks.schedule import Capture

MAX_APPS = 32
CAPTURES = 5
POSTMORTEMS = 3
MAX_ANSWER = 1024 * 1024


def record(c: Capture, kind: str = "capture", **extra) -> dict:
    """A capture as one JSON object (the log line, an entry of /debug/stacks)."""
    out = {
        "event": f"stack_{kind}", "time": round(c.at, 3), "app": c.app, "worker": c.slot,
        "pid": c.pid,
        "heartbeat_age_seconds": None if c.heartbeat_age is None else round(c.heartbeat_age, 1),
        "timeout_seconds": c.timeout, "trigger": c.trigger,
        "dependency": None if c.dependency is None else
        {"peer": c.dependency[0], "wait_seconds": round(c.dependency[1], 1)},
        "outcome": c.outcome, "frame": c.frame, "capture_seconds": round(c.seconds, 3),
    }
    out.update(extra)
    if c.error:
        out["error"] = c.error
    if c.threads:
        out["stack"] = [{"thread": t.name, "tid": t.tid,
                         "frames": [f.label for f in t.frames],
                         **({"outer_frames_omitted": t.omitted} if t.omitted else {})}
                        for t in c.threads]
    return out


def line(rec: dict) -> str:
    """The log line: the event name, then the record as compact JSON."""
    return rec["event"] + " " + json.dumps(rec, separators=(",", ":"), ensure_ascii=False)


def text(rec: dict) -> str:
    """A record as a reader would write it down (py-spy's own layout, innermost first)."""
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(rec.get("time", 0)))
    head = [f"{rec['event']}  {when} UTC  worker {rec['worker']} (pid {rec['pid']})"]
    if rec.get("killed_after_seconds") is not None:
        head.append(f"  killed at its timeout: heartbeat age about {rec['killed_after_seconds']}s "
                    f"of --timeout {rec['timeout_seconds']}s; stack captured "
                    f"{rec.get('captured_seconds_before_death')}s before")
    else:
        head.append(f"  heartbeat age {rec['heartbeat_age_seconds']}s of --timeout "
                    f"{rec['timeout_seconds']}s, trigger {rec['trigger']}, outcome {rec['outcome']}")
    if rec.get("dependency"):
        head.append(f"  waiting on {rec['dependency']['peer']} for "
                    f"{rec['dependency']['wait_seconds']}s")
    if rec.get("frame"):
        head.append(f"  stuck in {rec['frame']}")
    if rec.get("error"):
        head.append(f"  error: {rec['error']}")
    for t in rec.get("stack", []):
        head.append(f"  Thread {t['tid']} ({t['thread']})")
        head.extend(f"      {f}" for f in t["frames"])
        if t.get("outer_frames_omitted"):
            head.append(f"      ... {t['outer_frames_omitted']} outer frames")
    return "\n".join(head) + "\n"


class Store:
    def __init__(self, max_apps: int = MAX_APPS, captures: int = CAPTURES,
                 postmortems: int = POSTMORTEMS):
        self.max_apps = max_apps
        self.captures = captures
        self.postmortems = postmortems
        self._apps: OrderedDict[str, tuple[deque, deque]] = OrderedDict()

    def _app(self, app: str) -> tuple[deque, deque]:
        entry = self._apps.get(app)
        if entry is None:
            entry = self._apps[app] = (deque(maxlen=self.captures), deque(maxlen=self.postmortems))
        self._apps.move_to_end(app)
        while len(self._apps) > self.max_apps:
            self._apps.popitem(last=False)
        return entry

    def add(self, rec: dict) -> None:
        captures, postmortems = self._app(rec["app"])
        (postmortems if rec["event"] == "stack_postmortem" else captures).appendleft(rec)

    def json(self, limit: int = MAX_ANSWER) -> bytes:
        """{"apps": {app: {"captures": [...], "postmortems": [...]}}, "truncated": bool},
        newest app and record first, at most `limit` bytes."""
        parts: list[str] = []
        size = 64
        truncated = False
        for app, (captures, postmortems) in reversed(self._apps.items()):
            lists = {"captures": [], "postmortems": []}
            for name, recs in (("postmortems", postmortems), ("captures", captures)):
                for rec in recs:
                    enc = json.dumps(rec, ensure_ascii=False)
                    if size + len(enc.encode()) + 2 > limit:
                        truncated = True
                        break
                    lists[name].append(enc)
                    size += len(enc.encode()) + 2
            if not lists["captures"] and not lists["postmortems"]:
                if truncated:
                    break
                continue
            body = ", ".join(f'"{k}": [{", ".join(v)}]' for k, v in lists.items())
            parts.append(f"{json.dumps(app, ensure_ascii=False)}: {{{body}}}")
            size += len(app.encode()) + 32
            if truncated:
                break
        return (f'{{"apps": {{{", ".join(parts)}}}, "truncated": {str(truncated).lower()}}}\n'
                ).encode()

    def text(self, limit: int = MAX_ANSWER) -> bytes:
        """The same as text for a browser, at most `limit` bytes."""
        out: list[str] = []
        size = 0
        for app, (captures, postmortems) in reversed(self._apps.items()):
            block = [f"== {app} ==\n"]
            for rec in list(postmortems) + list(captures):
                block.append(text(rec))
            for chunk in block:
                n = len(chunk.encode())
                if size + n > limit - 64:
                    out.append("... (truncated: more than fits in one answer)\n")
                    return "\n".join(out).encode()
                out.append(chunk)
                size += n + 1
        if not out:
            out.append("no stack captured yet: no worker has been stuck "
                       "(docs/metrics.md#stacks-of-stuck-workers)\n")
        return "\n".join(out).encode()
