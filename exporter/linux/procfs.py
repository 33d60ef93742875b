"""Readers for the parts of /proc that psutil does not cover, or covers too slowly.

Pure parsers (`parse_*`) take text and are tested on literal strings; the thin
readers around them take a `ProcFS` so tests and containers can point them at
another proc root (`--path.procfs`). Nothing here knows about Prometheus or gunicorn.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from dataclasses import dataclass, field

from exporter.linux.statx import FileStat, stat_nosync

# Bound every read: a /proc file we parse is small; anything bigger is not what we expect.
MAX_SMALL_FILE = 64 * 1024
MAX_ENVIRON = 256 * 1024
# A process may hold a million fds; we still read them all for a worker, but never more than this.
MAX_FDS_PER_PROCESS = 200_000

HEARTBEAT_PREFIX = "wgunicorn-"
EPOLL_LINK = "anon_inode:[eventpoll]"
MAX_EPOLLS = 4                  # per process: gthread's selector, and a few of the app's
MAX_EPOLL_FDINFO = 256 * 1024   # one tfd line (about 70 bytes) per watched fd
MAX_MOUNTINFO = 1 << 20
MAX_MOUNTS = 10_000


@dataclass(slots=True)
class FdScan:
    """What a process's fd table says, in one pass over /proc/PID/fd."""

    socket_inodes: list[int]
    heartbeats: list[tuple[int, str]]  # (fd, link target) of gunicorn heartbeat temp files
    count: int                         # number of open fds
    truncated: bool = False
    epolls: list[int] = field(default_factory=list)   # fds of epoll instances (MAX_EPOLLS)


def read_small(path: str, limit: int = MAX_SMALL_FILE) -> bytes:
    """At most `limit` bytes of a file the kernel writes (/proc, cgroupfs), with plain
    read(2) calls (no buffered file object: a scrape reads a few dozen small files, and
    this is half the cost). Read until end of file: a short read is not the end (some
    seq_files, such as /proc/kallsyms, answer a page per read whatever was asked)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        data = os.read(fd, limit)
        if not data or len(data) >= limit:
            return data
        chunks, size = [data], len(data)
        while size < limit:          # a seq_file answers a page or so per read
            chunk = os.read(fd, limit - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        return data if len(chunks) == 1 else b"".join(chunks)
    finally:
        os.close(fd)


class ProcFS:
    """Access to one proc root (normally /proc)."""

    def __init__(self, root: str = "/proc"):
        self.root = root.rstrip("/") or "/"

    def path(self, *parts: object) -> str:
        # (every part is a pid, "self" or a fixed name: a plain join, faster than
        # os.path.join, and no part can replace the root)
        return "/".join((self.root if self.root != "/" else "", *map(str, parts)))

    def read_text(self, *parts: object, limit: int = MAX_SMALL_FILE) -> str:
        return self.read_bytes(*parts, limit=limit).decode("utf-8", "replace")

    def read_bytes(self, *parts: object, limit: int = MAX_SMALL_FILE) -> bytes:
        return read_small(self.path(*parts), limit)

    # --- per process -------------------------------------------------------

    def cmdline(self, pid: int) -> list[str]:
        return parse_nul_list(self.read_bytes(pid, "cmdline"))

    def environ(self, pid: int) -> dict[str, str]:
        return parse_environ(self.read_bytes(pid, "environ", limit=MAX_ENVIRON))

    def stat(self, pid: int) -> "ProcStat":
        return parse_stat(self.read_text(pid, "stat"))

    def status(self, pid: int) -> "ProcStatus":
        return parse_status(self.read_text(pid, "status"))

    def fd_limit(self, pid: int) -> int | None:
        return parse_limits_nofile(self.read_text(pid, "limits"))

    def netns(self, pid: int) -> int | None:
        try:
            return os.stat(self.path(pid, "ns", "net")).st_ino
        except OSError:
            return None

    def scan_fds(self, pid: int, limit: int | None = None) -> FdScan:
        """List a process's fds once: socket inodes, heartbeat files, epoll instances.

        Raises PermissionError when we may not look (another user's process without
        CAP_SYS_PTRACE / CAP_DAC_READ_SEARCH) and FileNotFoundError when it is gone.
        """
        fd_dir = self.path(pid, "fd")
        sockets: list[int] = []
        heartbeats: list[tuple[int, str]] = []
        epolls: list[int] = []
        count = 0
        truncated = False
        cap = MAX_FDS_PER_PROCESS if limit is None else min(limit, MAX_FDS_PER_PROCESS)
        with os.scandir(fd_dir) as it:
            for entry in it:
                count += 1
                if count > cap:
                    truncated = True
                    break
                try:
                    target = os.readlink(entry.path)
                except OSError:  # closed between listing and reading
                    continue
                if target.startswith("socket:["):
                    sockets.append(int(target[8:-1]))
                elif HEARTBEAT_PREFIX in target and target.endswith(" (deleted)"):
                    heartbeats.append((int(entry.name), target))
                elif target == EPOLL_LINK and len(epolls) < MAX_EPOLLS:
                    epolls.append(int(entry.name))
        return FdScan(sockets, heartbeats, count, truncated, epolls)

    def epoll_targets(self, pid: int, fd: int) -> set[int]:
        """Inodes of the files an epoll instance watches (its fdinfo's tfd lines)."""
        return parse_epoll_targets(self.read_text(pid, "fdinfo", fd, limit=MAX_EPOLL_FDINFO))

    def fd_stat(self, pid: int, fd: int) -> FileStat:
        """Device, inode and times of the file behind an fd (follows the magic link, works
        for unlinked files), from what the kernel holds: a FUSE or network file system is
        never asked (statx AT_STATX_DONT_SYNC, exporter/linux/statx.py)."""
        return stat_nosync(self.path(pid, "fd", fd))

    def fd_fstype(self, pid: int, fd: int) -> str | None:
        """The type of the file system that holds the file behind an fd (`tmpfs`,
        `ext4`, `fuse.sshfs`, ...): fdinfo's mount id looked up in the process's own
        mountinfo. Neither read asks that file system anything, so a FUSE daemon that
        never answers cannot stall it. None when the mount is not found."""
        mnt_id = parse_fdinfo_mnt_id(self.read_text(pid, "fdinfo", fd))
        if mnt_id is None:
            return None
        for m in parse_mountinfo(self.read_text(pid, "mountinfo", limit=MAX_MOUNTINFO)):
            if m.mount_id == mnt_id:
                return m.fstype
        return None

    # --- host ---------------------------------------------------------------

    def boot_time(self) -> float:
        for line in self.read_text("stat", limit=1 << 20).splitlines():
            if line.startswith("btime "):
                return float(line.split()[1])
        raise ValueError("no btime in /proc/stat")

    def somaxconn(self) -> int:
        return int(self.read_text("sys", "net", "core", "somaxconn").strip())

    def tcpext(self, pid: int | str | None = None) -> dict[str, int]:
        """The TcpExt counters of /proc/net/netstat: of our own network namespace, or of
        `pid`'s (/proc/PID/net/netstat)."""
        base = ("net",) if pid is None else (pid, "net")
        return parse_snmp_table(self.read_text(*base, "netstat")).get("TcpExt", {})


@dataclass(frozen=True, slots=True)
class Mount:
    mount_id: int
    root: str           # the mounted directory within its file system
    point: str          # where it is mounted, relative to the process's root
    fstype: str
    super_options: str


def parse_mountinfo(text: str) -> list[Mount]:
    """/proc/PID/mountinfo lines (at most MAX_MOUNTS); malformed lines are skipped."""
    out = []
    for line in text.splitlines()[:MAX_MOUNTS]:
        left, sep, right = line.partition(" - ")
        lf = left.split()
        rf = right.split()
        if not sep or len(lf) < 5 or len(rf) < 3 or not lf[0].isdigit():
            continue
        out.append(Mount(int(lf[0]), _unescape_mount(lf[3]), _unescape_mount(lf[4]),
                         rf[0], rf[2]))
    return out


def _unescape_mount(path: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo (octal)
    if "\\" not in path:
        return path
    out, i = [], 0
    while i < len(path):
        code = path[i + 1:i + 4]
        if path[i] == "\\" and len(code) == 3 and all(ch in "01234567" for ch in code):
            out.append(chr(int(code, 8)))
            i += 4
        else:
            out.append(path[i])
            i += 1
    return "".join(out)


def parse_epoll_targets(text: str) -> set[int]:
    """The inodes (`ino:`, hexadecimal) of the `tfd:` lines of an epoll's fdinfo:
    `tfd:        7 events:       19 data:                7  pos:0 ino:1c49 sdev:8`."""
    out = set()
    for line in text.splitlines():
        if not line.startswith("tfd:"):
            continue
        _, _, rest = line.partition(" ino:")
        value = rest.split(" ", 1)[0]
        if 0 < len(value) <= 16:
            try:
                out.add(int(value, 16))
            except ValueError:
                continue
    return out


def parse_fdinfo_mnt_id(text: str) -> int | None:
    """The `mnt_id:` of a /proc/PID/fdinfo/FD text."""
    return _fdinfo_field(text, "mnt_id")


def parse_fdinfo_identity(text: str) -> tuple[int, int] | None:
    """(mnt_id, ino) of a /proc/PID/fdinfo/FD text (Linux >= 5.14 writes `ino:`): which
    file an fd holds, as the kernel says it, without asking the file's file system."""
    mnt_id, ino = _fdinfo_field(text, "mnt_id"), _fdinfo_field(text, "ino")
    return None if mnt_id is None or ino is None else (mnt_id, ino)


def _fdinfo_field(text: str, name: str) -> int | None:
    for line in text.splitlines()[:64]:
        key, _, value = line.partition(":")
        if key == name:
            value = value.strip()
            return int(value) if value.isdigit() and len(value) < 21 else None
    return None


@dataclass(slots=True)
class ProcStat:
    pid: int
    comm: str
    state: str
    ppid: int
    utime_ticks: int
    stime_ticks: int
    num_threads: int
    starttime_ticks: int
    rss_pages: int


def parse_stat(text: str) -> ProcStat:
    """Parse /proc/PID/stat. comm is between the first '(' and the LAST ')'."""
    lpar = text.index("(")
    rpar = text.rindex(")")
    pid = int(text[:lpar])
    comm = text[lpar + 1:rpar]
    f = text[rpar + 2:].split()
    # f[0] is field 3 (state); field N is f[N-3]
    return ProcStat(
        pid=pid,
        comm=comm,
        state=f[0],
        ppid=int(f[1]),
        utime_ticks=int(f[11]),
        stime_ticks=int(f[12]),
        num_threads=int(f[17]),
        starttime_ticks=int(f[19]),
        rss_pages=int(f[21]),
    )


@dataclass(slots=True)
class ProcStatus:
    """The parts of /proc/PID/status the exporter uses (readable by every user)."""

    uid: int                    # real uid
    gid: int                    # real gid
    groups: frozenset[int]
    sig_caught: int             # SigCgt bit mask: bit N-1 is signal N
    cpus_allowed: int | None    # CPUs in the affinity mask (len(os.sched_getaffinity(0)))

    def catches(self, signum: int) -> bool:
        return bool(self.sig_caught >> (signum - 1) & 1)

    def may(self, st: os.stat_result, bit: int) -> bool:
        """Would this user get access `bit` (4 read, 1 search) by the mode bits alone?

        Root (uid 0) bypasses mode bits for read and search, as the kernel does with
        CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH. ACLs are not consulted: a file that only
        an ACL makes readable is treated as not readable (the safe side).
        """
        if self.uid == 0:
            return True
        if st.st_uid == self.uid:
            return bool(st.st_mode >> 6 & bit)
        if st.st_gid == self.gid or st.st_gid in self.groups:
            return bool(st.st_mode >> 3 & bit)
        return bool(st.st_mode & bit)


# The lines of /proc/PID/status we use (the kernel escapes newlines in a process's name,
# the only part a process chooses, so every line is the kernel's own).
_STATUS_FIELDS = re.compile(r"^(Uid|Gid|Groups|SigCgt|Cpus_allowed_list):(.*)$", re.M)


def parse_status(text: str) -> ProcStatus:
    fields = {key: value.strip() for key, value in _STATUS_FIELDS.findall(text)}
    uid = int(fields["Uid"].split()[0])
    gid = int(fields["Gid"].split()[0])
    groups = frozenset(int(g) for g in fields.get("Groups", "").split()[:1024])
    return ProcStatus(uid=uid, gid=gid, groups=groups,
                      sig_caught=int(fields.get("SigCgt", "0"), 16),
                      cpus_allowed=parse_cpu_list(fields.get("Cpus_allowed_list", "")))


def parse_cpu_list(text: str) -> int | None:
    """Number of CPUs in a list such as '0-3,8,10-11'; None when empty or malformed."""
    total = 0
    for part in text.split(",")[:4096]:
        lo, sep, hi = part.strip().partition("-")
        try:
            a = int(lo)
            b = int(hi) if sep else a
        except ValueError:
            return None
        if b < a or b - a > 1 << 20:
            return None
        total += b - a + 1
    return total or None


def parse_nul_list(data: bytes) -> list[str]:
    if not data:
        return []
    return [p.decode("utf-8", "replace") for p in data.rstrip(b"\0").split(b"\0")]


def parse_environ(data: bytes) -> dict[str, str]:
    env: dict[str, str] = {}
    for item in parse_nul_list(data):
        key, sep, value = item.partition("=")
        if sep:
            env[key] = value
    return env


def parse_limits_nofile(text: str) -> int | None:
    """The soft 'Max open files' limit from /proc/PID/limits; None when unlimited/absent."""
    for line in text.splitlines():
        if line.startswith("Max open files"):
            soft = line[len("Max open files"):].split()[0]
            return None if soft == "unlimited" else int(soft)
    return None


def read_regular(path: str, limit: int) -> tuple[bytes, os.stat_result]:
    """A regular file's first `limit + 1` bytes (so the caller can tell it was longer),
    and its stat. The file is first opened with O_PATH, which runs no device driver's
    open() and does not block on a FIFO, and read only if it is a regular file. Raises
    OSError (ValueError-free): not regular -> OSError(EINVAL)."""
    fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", path)
        rfd = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            return os.read(rfd, limit + 1), st
        finally:
            os.close(rfd)
    finally:
        os.close(fd)


def parse_snmp_table(text: str) -> dict[str, dict[str, int]]:
    """/proc/net/netstat and /proc/net/snmp: pairs of 'Prefix: names' / 'Prefix: values' lines."""
    out: dict[str, dict[str, int]] = {}
    lines = text.splitlines()
    for head, values in zip(lines[0::2], lines[1::2]):
        hp, _, hnames = head.partition(":")
        vp, _, vvalues = values.partition(":")
        if hp != vp:
            continue
        try:
            out[hp] = dict(zip(hnames.split(), map(int, vvalues.split())))
        except ValueError:
            continue
    return out
