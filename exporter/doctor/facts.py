"""Host facts that some rules need and the collectors do not measure, read in a thread:

* the host's CPUs, memory and swap (psutil);
* the CPUs each master may use: its affinity mask (psutil's `cpu_affinity`,
  sched_getaffinity(2)), capped by a CPU quota of its cgroup or an ancestor (v2
  `cpu.max`, v1 `cpu.cfs_quota_us / cpu.cfs_period_us`) when readable;
* the memory more workers of a master could use: the host's available memory, or less
  when its memory cgroup or an ancestor has a limit (`memory.max` less `memory.current`,
  v1 `memory.limit_in_bytes` less `memory.usage_in_bytes`); and the USS of its workers
  (exporter/gunicorn/memdetail.py) when the collection has none yet;
* the control socket each master listens on: a listening unix socket named `*.ctl`
  that the master holds (its fd table, the host's unix socket table through netlink
  sock_diag; only in the exporter's own network namespace);
* nginx's proxy timeouts (exporter/doctor/nginx.py), Caddy's (exporter/doctor/caddy.py).

Every fact is optional: one that cannot be read is left out, and the rules that need it
say nothing about that app. Parsers are pure functions, tested on literal text.
"""

from __future__ import annotations

import math
import os

from exporter.doctor import caddy, nginx
from exporter.doctor.model import CpuFact, Facts, HostFact, MemoryRoom
from exporter.gunicorn.memdetail import read_memory
from exporter.linux import sockdiag
from exporter.linux.cgroup import CgroupFS
from exporter.linux.procfs import ProcFS, parse_mountinfo, read_regular
from exporter.snapshot import AppSnapshot

MAX_CGROUP_DEPTH = 32
USS_SAMPLE = 8              # workers per app whose USS the doctor reads itself
UNLIMITED = 1 << 60         # a cgroup v1 limit this large means none


def parse_cpu_max(text: str) -> float | None:
    """cgroup v2 cpu.max ('max 100000', '150000 100000') -> CPUs (1.5); None = no quota."""
    parts = text.split()
    if len(parts) < 1 or parts[0] == "max":
        return None
    try:
        quota, period = int(parts[0]), int(parts[1]) if len(parts) > 1 else 100000
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def parse_cgroup_paths(text: str) -> tuple[str | None, str | None]:
    """/proc/PID/cgroup -> (v2 path, v1 path of the cpu controller)."""
    v2 = v1 = None
    for line in text.splitlines()[:64]:
        parts = line.split(":", 2)
        if len(parts) != 3 or not parts[2].startswith("/"):
            continue
        if parts[0] == "0" and parts[1] == "":
            v2 = parts[2]
        elif "cpu" in parts[1].split(","):
            v1 = parts[2]
    return v2, v1


def cgroup_mounts(mountinfo: str) -> tuple[tuple[str, str] | None, tuple[str, str] | None]:
    """((root, mount point) of cgroup2, (root, mount point) of the v1 cpu hierarchy)."""
    v2 = v1 = None
    for m in parse_mountinfo(mountinfo):
        if m.fstype == "cgroup2" and v2 is None:
            v2 = (m.root, m.point)
        elif m.fstype == "cgroup" and v1 is None and "cpu" in m.super_options.split(","):
            v1 = (m.root, m.point)
    return v2, v1


def _read(path: str) -> str:
    return read_regular(path, 4096)[0][:4096].decode("ascii", "replace")


def _quota(mount: tuple[str, str], path: str, v2: bool) -> tuple[float, str] | None:
    """The smallest CPU quota on the way from the cgroup up to the mount's root."""
    root, point = mount
    rel = path[len(root):] if root != "/" and path.startswith(root) else path
    if ".." in rel.split("/"):
        # relative to our own cgroup namespace (a DaemonSet pod's): not under this mount
        return None
    d = os.path.normpath(os.path.join(point, rel.lstrip("/")))
    best = None
    for _ in range(MAX_CGROUP_DEPTH):
        if d != point and not d.startswith(point.rstrip("/") + "/"):
            break
        try:
            if v2:
                where = os.path.join(d, "cpu.max")
                cpus = parse_cpu_max(_read(where))
            else:
                where = os.path.join(d, "cpu.cfs_quota_us")
                quota = int(_read(where).strip())
                period = int(_read(os.path.join(d, "cpu.cfs_period_us")).strip())
                cpus = quota / period if quota > 0 and period > 0 else None
        except (OSError, ValueError):
            cpus = None
        if cpus is not None and (best is None or cpus < best[0]):
            best = (cpus, where)
        if d == point:          # (a d outside point ended the loop above)
            break
        d = os.path.dirname(d)
    return best


def cpu_list(cpus: list[int]) -> str:
    """[0, 1, 2, 4] -> '0-2,4' (as Cpus_allowed_list writes it)."""
    runs: list[list[int]] = []
    for c in sorted(set(cpus)):
        if runs and runs[-1][1] == c - 1:
            runs[-1][1] = c
        else:
            runs.append([c, c])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def cpu_fact(procfs: ProcFS, pid: int, mounts) -> CpuFact | None:
    import psutil
    try:
        allowed = psutil.Process(pid).cpu_affinity()
    except (psutil.Error, OSError):
        return None
    if not allowed:
        return None
    cores, listed = len(allowed), cpu_list(allowed)
    fact = CpuFact(float(cores), f"affinity {listed} (sched_getaffinity of {pid}, psutil)", listed)
    try:
        v2_path, v1_path = parse_cgroup_paths(procfs.read_text(pid, "cgroup"))
    except OSError:
        return fact
    v2_mount, v1_mount = mounts
    quota = None
    if v2_path is not None and v2_mount is not None:
        quota = _quota(v2_mount, v2_path, True)
    if quota is None and v1_path is not None and v1_mount is not None:
        quota = _quota(v1_mount, v1_path, False)
    if quota is not None and quota[0] < cores:
        cpus = math.ceil(quota[0] * 100) / 100
        return CpuFact(cpus, f"CPU quota {quota[0]:g} ({quota[1]})", f"{listed}|{quota[1]}")
    return fact


def control_sockets(procfs: ProcFS, apps: list[AppSnapshot]) -> dict[int, str]:
    """master pid -> path of the control socket it listens on (own network namespace only)."""
    if procfs.root != "/proc":
        return {}
    http = {lst.address[5:] for a in apps for lst in a.listeners if lst.address.startswith("unix:")}
    held: dict[int, int] = {}
    for a in apps:
        try:
            for ino in procfs.scan_fds(a.master_pid, limit=4096).socket_inodes:
                held[ino] = a.master_pid
        except (OSError, ValueError):
            continue
    if not held:
        return {}
    out: dict[int, str] = {}
    for ino, sock in sockdiag.read_unix().items():
        pid = held.get(ino)
        name = sock.name or ""
        if pid is None or sock.state != sockdiag.TCP_LISTEN or not name.endswith(".ctl") \
                or name in http:
            continue
        if pid not in out or name.endswith("/gunicorn.ctl"):
            out[pid] = name
    return out


def host_fact() -> HostFact | None:
    import psutil
    try:
        mem, swap = psutil.virtual_memory(), psutil.swap_memory()
        return HostFact(psutil.cpu_count(), mem.total, mem.available, swap.total, swap.used)
    except (psutil.Error, OSError, RuntimeError):
        return None


def _limit(text: str) -> int | None:
    text = text.strip()
    return None if text in ("", "max") or not text.isdigit() or int(text) >= UNLIMITED else int(text)


def memory_room(cgfs: CgroupFS, pid: int, available: int) -> MemoryRoom:
    """What more processes of `pid`'s cgroup could use: the host's available memory, or
    the least room a limit leaves on the way up from its memory cgroup."""
    room = MemoryRoom(available, "the host's available memory (psutil, MemAvailable)")
    try:
        cg = cgfs.memory_cgroup(pid)
        d = cgfs.directory(cg) if cg is not None else None
    except OSError:
        return room
    if d is None or ".." in cg.path.split("/"):
        return room
    top = cgfs.mounts.v1_memory if cg.version == 1 else cgfs.mounts.v2
    names = ("memory.limit_in_bytes", "memory.usage_in_bytes") if cg.version == 1 else \
        ("memory.max", "memory.current")
    for _ in range(MAX_CGROUP_DEPTH):
        try:
            limit = _limit(_read(os.path.join(d, names[0])))
            used = int(_read(os.path.join(d, names[1])).strip())
        except (OSError, ValueError):
            limit = None
        if limit is not None and limit - used < room.free:
            room = MemoryRoom(max(0, limit - used), f"{os.path.join(d, names[0])} less "
                                                    f"{names[1]}")
        if d == top or not d.startswith(top.rstrip("/") + "/"):
            break
        d = os.path.dirname(d)
    return room


def workers_uss(procfs: ProcFS, app: AppSnapshot) -> list[int]:
    """USS of a few of the app's workers, read now (the collection had none yet)."""
    out = []
    for w in app.workers[:USS_SAMPLE]:
        got = read_memory(w.pid, w.start_time)
        if got is not None:
            out.append(got[0])
    return out


def read_facts(procfs: ProcFS, apps: list[AppSnapshot], nginx_config: str,
               caddy_config: str = "") -> Facts:
    """Facts for the running masters in `apps`; never raises for what it cannot read."""
    facts = Facts(host=host_fact())
    masters = [a for a in apps if a.up and a.master_pid]
    cgfs = CgroupFS(procfs.root)
    for a in masters:
        if facts.host is not None:
            facts.memory_room[a.master_pid] = memory_room(cgfs, a.master_pid,
                                                          facts.host.memory_available)
        if a.workers and not any(w.unique_memory_bytes for w in a.workers):
            uss = workers_uss(procfs, a)
            if uss:
                facts.worker_uss[a.master_pid] = uss
    try:
        mounts = cgroup_mounts(procfs.read_text("self", "mountinfo", limit=1 << 20))
    except OSError:
        mounts = (None, None)
    for a in masters:
        try:
            cpu = cpu_fact(procfs, a.master_pid, mounts)
        except (OSError, ValueError):
            cpu = None
        if cpu is not None:
            facts.cpus[a.master_pid] = cpu
    try:
        facts.control_sockets = control_sockets(procfs, masters)
    except OSError:
        pass
    if nginx_config:
        facts.nginx = nginx.load(nginx_config)
    if caddy_config:
        facts.caddy = caddy.load(caddy_config)
    return facts
