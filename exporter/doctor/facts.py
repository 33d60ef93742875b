"""Host facts that some rules need and the collectors do not measure, read in a thread:

* the CPUs each master may use: its affinity mask (`Cpus_allowed_list` in
  /proc/PID/status, what os.sched_getaffinity gives), capped by a CPU quota of its
  cgroup or an ancestor (v2 `cpu.max`, v1 `cpu.cfs_quota_us / cpu.cfs_period_us`) when
  readable;
* the control socket each master listens on: a listening unix socket named `*.ctl`
  that the master holds (its fd table, the host's unix socket table through netlink
  sock_diag; only in the exporter's own network namespace);
* nginx's proxy timeouts (exporter/doctor/nginx.py).

Every fact is optional: one that cannot be read is left out, and the rules that need it
say nothing about that app. Parsers are pure functions, tested on literal text.
"""

from __future__ import annotations

import math
import os

from exporter.doctor import nginx
from exporter.doctor.model import CpuFact, Facts
from exporter.linux import sockdiag
from exporter.linux.procfs import ProcFS, parse_cpu_list, parse_mountinfo, read_regular
from exporter.snapshot import AppSnapshot

MAX_CGROUP_DEPTH = 32


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


def cpu_fact(procfs: ProcFS, pid: int, mounts) -> CpuFact | None:
    listed = ""
    for line in procfs.read_text(pid, "status").splitlines():
        if line.startswith("Cpus_allowed_list:"):
            listed = line.split(":", 1)[1].strip()
    cores = parse_cpu_list(listed)
    if cores is None:
        return None
    fact = CpuFact(float(cores), f"affinity {listed} (/proc/{pid}/status Cpus_allowed_list)", listed)
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


def read_facts(procfs: ProcFS, apps: list[AppSnapshot], nginx_config: str) -> Facts:
    """Facts for the running masters in `apps`; never raises for what it cannot read."""
    facts = Facts()
    masters = [a for a in apps if a.up and a.master_pid]
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
    return facts
