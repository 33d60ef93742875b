"""The kernel log as a stream: /dev/kmsg records and the OOM killer's records in them.

/dev/kmsg hands out one record per read(2):

    PRIORITY,SEQUENCE,TIMESTAMP_USEC,FLAGS[,...];MESSAGE\\n[ KEY=VALUE\\n]...

(PRIORITY = facility * 8 + level; the message escapes unprintable bytes as \\xNN;
continuation "dictionary" lines start with a space). A read fails with EPIPE when the
ring buffer overwrote records we had not read yet; the next read returns the oldest
record still there. A reader that opens the device starts at the oldest record; we
lseek(SEEK_END) first so kills from before a restart are not counted again.

Two records describe one OOM kill (kernel >= 4.19 prints the first one):

    oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,mems_allowed=0,
        oom_memcg=/x,task_memcg=/x,task=gunicorn,pid=123,uid=0
    Memory cgroup out of memory: Killed process 123 (gunicorn) total-vm:...kB, ...

(the global killer says `Out of memory: Killed process ...`). `parse_oom` reads either;
`OomRecordJoiner` turns the pair into one `OomKill`.

Pure parsers are tested on literal records; `KmsgReader` is a thin non-blocking reader
driven by the event loop (add_reader). Nothing here knows about gunicorn or Prometheus.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import re
import time
from dataclasses import dataclass, field
from typing import Callable

log = logging.getLogger(__name__)

# A record is at most ~1 KiB of text plus its dictionary; the kernel fails a read with
# EINVAL if the buffer is too small for one record.
READ_SIZE = 16 * 1024
# Records handled per wakeup of the event loop before yielding to other work.
MAX_RECORDS_PER_WAKEUP = 512
MAX_MESSAGE = 4096

_HEADER_RE = re.compile(rb"(\d{1,4}),(\d{1,20}),(\d{1,20}),([^,;]*)(?:,[^;]*)?;")
_ESCAPE_RE = re.compile(r"\\x([0-9a-fA-F]{2})")

# `oom-kill:constraint=...,task_memcg=/x,task=NAME,pid=N,uid=N` (the task name may
# contain commas, so it is matched up to `,pid=`)
_OOM_KILL_RE = re.compile(
    r"oom-kill:constraint=(?P<constraint>[A-Z_]+)(?P<rest>.*?),task=(?P<name>.{0,64}?),pid=(?P<pid>\d+),uid=(?P<uid>\d+)")
_OOM_FIELD_RE = re.compile(r",(oom_memcg|task_memcg)=([^,]*)")
# `Out of memory: Killed process N (name) total-vm:...` and its variants
# (`Memory cgroup out of memory:`, `Out of memory (oom_kill_allocating_task):`)
_KILLED_RE = re.compile(
    r"(?:(?P<context>(?:Memory cgroup )?[Oo]ut of memory(?: \([^)]{0,64}\))?): )?Killed process (?P<pid>\d+) "
    r"\((?P<name>.{0,64}?)\)(?: total-vm:(?P<total_vm>\d+)kB, anon-rss:(?P<anon_rss>\d+)kB)?")
# kernels before 5.1 announce the victim first: `Out of memory: Kill process N (name) score S or
# sacrifice child` / `Memory cgroup out of memory: Kill process ...`, then `Killed process N (name) total-vm:...`
_KILL_OLD_RE = re.compile(
    r"(?P<context>(?:Memory cgroup )?[Oo]ut of memory(?: \([^)]{0,64}\))?): Kill process (?P<pid>\d+) "
    r"\((?P<name>.{0,64}?)\) score")


@dataclass(slots=True)
class KmsgRecord:
    level: int          # 0 emerg .. 7 debug
    facility: int       # 0 = kernel
    seq: int
    timestamp_usec: int  # since boot (the kernel's local clock)
    flags: str          # '-' or 'c' (continuation)
    message: str
    fields: dict[str, str] = field(default_factory=dict)  # dictionary lines, e.g. SUBSYSTEM


def parse_kmsg_record(data: bytes) -> KmsgRecord | None:
    """One record as read(2) returned it; None if it is not a well-formed record."""
    if not data:
        return None
    m = _HEADER_RE.match(data)
    if not m:
        return None
    try:
        prio = int(m.group(1))
        seq = int(m.group(2))
        ts = int(m.group(3))
    except ValueError:
        return None
    body = data[m.end():]
    lines = body.split(b"\n")
    text = lines[0][:MAX_MESSAGE].decode("utf-8", "replace")
    text = _ESCAPE_RE.sub(lambda e: _unescape(e.group(1)), text)
    fields: dict[str, str] = {}
    for extra in lines[1:32]:
        if extra.startswith(b" ") and b"=" in extra:
            k, _, v = extra[1:].partition(b"=")
            fields[k.decode("utf-8", "replace")[:64]] = v[:256].decode("utf-8", "replace")
    return KmsgRecord(level=prio & 7, facility=prio >> 3, seq=seq, timestamp_usec=ts,
                      flags=m.group(4).decode("ascii", "replace"), message=text, fields=fields)


def _unescape(hex2: str) -> str:
    c = int(hex2, 16)
    # keep escaped control characters escaped; printable ones were never escaped
    return chr(c) if 0x20 <= c < 0x7f else "\\x" + hex2


@dataclass(slots=True)
class OomKill:
    """What the kernel said about one OOM kill (fields it did not say are None)."""

    pid: int
    name: str
    kind: str                       # 'memcg' (a cgroup's limit) or 'global' (the host ran out)
    constraint: str | None = None   # CONSTRAINT_NONE, CONSTRAINT_MEMCG, CONSTRAINT_CPUSET, ...
    task_memcg: str | None = None   # the victim's memory cgroup, as in /proc/PID/cgroup
    oom_memcg: str | None = None    # the cgroup whose limit was hit
    uid: int | None = None
    total_vm_kb: int | None = None
    anon_rss_kb: int | None = None
    killed: bool = False            # True for the `Killed process` record (the kill itself)


def parse_oom(message: str) -> OomKill | None:
    """An `oom-kill:` summary or a `... out of memory: Killed process` record; else None."""
    if "oom-kill:" in message:
        m = _OOM_KILL_RE.search(message)
        if not m:
            return None
        extra = dict(_OOM_FIELD_RE.findall(m.group("rest")))
        constraint = m.group("constraint")
        return OomKill(pid=int(m.group("pid")), name=m.group("name"),
                       kind="memcg" if constraint == "CONSTRAINT_MEMCG" else "global",
                       constraint=constraint, task_memcg=extra.get("task_memcg") or None,
                       oom_memcg=extra.get("oom_memcg") or None, uid=int(m.group("uid")))
    if "Killed process" in message:
        m = _KILLED_RE.search(message)
        # without the "out of memory" context (kernels < 5.1) the kill record has total-vm
        if not m or (m.group("context") is None and m.group("total_vm") is None):
            return None
        context = m.group("context") or ""
        return OomKill(pid=int(m.group("pid")), name=m.group("name"),
                       kind="memcg" if context.startswith("Memory cgroup") else "global",
                       total_vm_kb=int(m.group("total_vm")) if m.group("total_vm") else None,
                       anon_rss_kb=int(m.group("anon_rss")) if m.group("anon_rss") else None,
                       killed=True)
    if "Kill process" in message:
        m = _KILL_OLD_RE.search(message)
        if not m:
            return None
        return OomKill(pid=int(m.group("pid")), name=m.group("name"),
                       kind="memcg" if m.group("context").startswith("Memory cgroup") else "global")
    return None


class OomRecordJoiner:
    """Joins the `oom-kill:` summary with the `Killed process` record that follows it.

    `feed(message)` returns a finished `OomKill` when a `Killed process` record arrives
    (enriched with the cgroup and constraint of the matching summary, if one came
    first). A summary without its kill record (a malformed or lost record) is never
    counted: the kill record is the kernel's statement that it killed.
    """

    MAX_PENDING = 16

    def __init__(self):
        self._pending: dict[int, OomKill] = {}

    def feed(self, message: str) -> OomKill | None:
        oom = parse_oom(message)
        if oom is None:
            return None
        if not oom.killed:
            if len(self._pending) >= self.MAX_PENDING:
                self._pending.pop(next(iter(self._pending)))
            self._pending[oom.pid] = oom
            return None
        summary = self._pending.pop(oom.pid, None)
        if summary is not None:
            oom.constraint = summary.constraint
            oom.task_memcg = summary.task_memcg
            oom.oom_memcg = summary.oom_memcg
            oom.uid = summary.uid
            if summary.constraint:
                oom.kind = "memcg" if summary.constraint == "CONSTRAINT_MEMCG" else "global"
            elif summary.kind == "memcg":  # an old kernel's `Memory cgroup out of memory: Kill process`
                oom.kind = "memcg"
            if len(summary.name) > len(oom.name):
                oom.name = summary.name
        return oom


class KmsgReader:
    """Reads /dev/kmsg without blocking the event loop; calls `on_record` per record.

    `open()` raises OSError when the device cannot be read (no CAP_SYSLOG with
    kernel.dmesg_restrict=1, a container without /dev/kmsg); the caller falls back.
    """

    def __init__(self, on_record: Callable[[KmsgRecord], None], path: str = "/dev/kmsg",
                 from_end: bool = True):
        self.path = path
        self.on_record = on_record
        self.from_end = from_end
        self.fd: int | None = None
        self.records = 0
        self.malformed = 0
        self.lost = 0           # times the ring buffer overwrote unread records (EPIPE)
        self.last_read: float | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def open(self) -> None:
        fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            if self.from_end:
                os.lseek(fd, 0, os.SEEK_END)
            # One read proves we may read (dmesg_restrict fails here, not at open).
            try:
                data = os.read(fd, READ_SIZE)
            except BlockingIOError:
                data = b""
            except OSError as e:
                if e.errno != errno.EPIPE:
                    raise
                data = b""
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd
        if data:
            self._handle(data)

    async def start(self) -> None:
        if self.fd is None:
            self.open()
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.fd, self.read_available)

    async def stop(self) -> None:
        self.close()

    def close(self) -> None:
        if self.fd is not None:
            if self._loop is not None:
                try:
                    self._loop.remove_reader(self.fd)
                except (ValueError, RuntimeError):
                    pass
            os.close(self.fd)
            self.fd = None

    def read_available(self) -> int:
        """Read the records that are there now (at most MAX_RECORDS_PER_WAKEUP)."""
        n = 0
        for _ in range(2 * MAX_RECORDS_PER_WAKEUP):  # bounded: EPIPE/EINTR do not count as records
            if self.fd is None or n >= MAX_RECORDS_PER_WAKEUP:
                break
            try:
                data = os.read(self.fd, READ_SIZE)
            except BlockingIOError:
                break
            except InterruptedError:
                continue
            except OSError as e:
                if e.errno == errno.EPIPE:
                    self.lost += 1
                    continue
                log.warning("reading %s failed: %s; kernel OOM records are no longer read",
                            self.path, e)
                self.close()
                break
            if not data:
                break
            n += 1
            self._handle(data)
        return n

    def _handle(self, data: bytes) -> None:
        self.last_read = time.time()
        rec = parse_kmsg_record(data)
        if rec is None:
            self.malformed += 1
            return
        self.records += 1
        try:
            self.on_record(rec)
        except Exception:  # a consumer bug must not stop the stream
            log.exception("handling a kernel log record failed")
