"""Memory cgroups and the kernel's OOM kill counters.

* /proc/vmstat `oom_kill`: every OOM kill on the host since boot (kernel >= 4.13).
* cgroup v2 `memory.events` `oom_kill`: kills in that cgroup (and below it).
* cgroup v1 `memory.oom_control` `oom_kill`: kills in that memory cgroup (kernel >= 4.13).
* /proc/PID/cgroup tells which cgroup a process is in: the `memory` controller's line on
  v1, the `0::` line on v2 (hybrid hosts have both; the one with the memory controller
  enabled wins).
* /proc/self/mountinfo tells where the hierarchies are mounted.

Pure parsers (`parse_*`) take text; the readers are thin. Nothing here knows about
gunicorn or Prometheus.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from exporter.linux.procfs import parse_mountinfo, read_small

MAX_SMALL_FILE = 64 * 1024
MAX_MOUNTINFO = 1024 * 1024


def parse_flat_keyed(text: str) -> dict[str, int]:
    """`key value` lines (memory.events, memory.oom_control, vmstat); bad lines skipped."""
    out: dict[str, int] = {}
    for line in text.splitlines()[:4096]:
        parts = line.split()
        if len(parts) == 2:
            try:
                out[parts[0]] = int(parts[1])
            except ValueError:
                continue
    return out


def parse_vmstat_oom_kill(text: str) -> int | None:
    return parse_flat_keyed(text).get("oom_kill")


def parse_memory_events(text: str) -> int | None:
    """cgroup v2 memory.events (or memory.events.local): its `oom_kill` count."""
    return parse_flat_keyed(text).get("oom_kill")


def parse_oom_control(text: str) -> int | None:
    """cgroup v1 memory.oom_control: its `oom_kill` count (None before kernel 4.13)."""
    return parse_flat_keyed(text).get("oom_kill")


@dataclass(frozen=True, slots=True)
class MemoryCgroup:
    version: int   # 1 or 2
    path: str      # inside the hierarchy, e.g. '/system.slice/shop.service'


def parse_proc_cgroup(text: str, v2_has_memory: bool = True) -> MemoryCgroup | None:
    """/proc/PID/cgroup -> the process's memory cgroup.

    `hierarchy-ID:controller-list:path` per line. The v1 line naming `memory` wins;
    else the v2 line (`0::/path`) if the v2 hierarchy has the memory controller.
    """
    v2 = None
    for line in text.splitlines()[:64]:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hid, controllers, path = parts
        if not path.startswith("/"):
            continue
        if hid != "0" and "memory" in controllers.split(","):
            return MemoryCgroup(1, path)
        if hid == "0" and controllers == "":
            v2 = MemoryCgroup(2, path)
    return v2 if v2_has_memory else None


@dataclass(frozen=True, slots=True)
class CgroupMounts:
    v1_memory: str | None = None   # mount point of the v1 memory hierarchy
    v2: str | None = None          # mount point of the unified hierarchy
    v2_memory: bool = False        # memory controller available in the unified hierarchy


def find_mounts(mountinfo_text: str, read_controllers=None) -> CgroupMounts:
    v1 = v2 = None
    for m in parse_mountinfo(mountinfo_text):
        if m.fstype == "cgroup" and v1 is None and "memory" in m.super_options.split(","):
            v1 = m.point
        elif m.fstype == "cgroup2" and v2 is None:
            v2 = m.point
    v2_memory = False
    if v2 is not None and read_controllers is not None:
        try:
            v2_memory = "memory" in read_controllers(os.path.join(v2, "cgroup.controllers")).split()
        except OSError:
            v2_memory = False
    return CgroupMounts(v1, v2, v2_memory)


class CgroupFS:
    """Readers for the OOM counters; `procfs` is the proc root (--path.procfs)."""

    def __init__(self, procfs: str = "/proc", mounts: CgroupMounts | None = None):
        self.procfs = procfs.rstrip("/") or "/"
        self._mounts = mounts

    @staticmethod
    def _read(path: str, limit: int = MAX_SMALL_FILE) -> str:
        return read_small(path, limit).decode("utf-8", "replace")

    @property
    def mounts(self) -> CgroupMounts:
        if self._mounts is None:
            try:
                text = self._read(os.path.join(self.procfs, "self", "mountinfo"), MAX_MOUNTINFO)
            except OSError:
                text = ""
            self._mounts = find_mounts(text, self._read)
        return self._mounts

    def vmstat_oom_kill(self) -> int | None:
        return parse_vmstat_oom_kill(self._read(os.path.join(self.procfs, "vmstat")))

    def memory_cgroup(self, pid: int) -> MemoryCgroup | None:
        text = self._read(os.path.join(self.procfs, str(pid), "cgroup"))
        m = self.mounts
        cg = parse_proc_cgroup(text, v2_has_memory=m.v2_memory)
        if cg is None:
            return None
        if cg.version == 1 and m.v1_memory is None:
            return None
        return cg

    def directory(self, cg: MemoryCgroup) -> str | None:
        base = self.mounts.v1_memory if cg.version == 1 else self.mounts.v2
        if base is None:
            return None
        return os.path.join(base, cg.path.lstrip("/"))

    def oom_kills(self, cg: MemoryCgroup) -> int | None:
        """The cgroup's own OOM kill counter; None when it cannot be read."""
        d = self.directory(cg)
        if d is None:
            return None
        try:
            if cg.version == 1:
                return parse_oom_control(self._read(os.path.join(d, "memory.oom_control")))
            return parse_memory_events(self._read(os.path.join(d, "memory.events")))
        except OSError:
            return None


# ---------------------------------------------------------------- Kubernetes pod identity

@dataclass(frozen=True, slots=True)
class PodIdentity:
    """What a process's cgroup path says about the container and pod it runs in."""

    runtime: str        # containerd, cri-o, docker or unknown (cgroupfs driver paths)
    container_id: str   # 64 hex digits, or "" when only the pod is known
    pod_uid: str        # 8-4-4-4-12, or "" outside Kubernetes (a plain docker container)
    qos_class: str      # guaranteed, burstable, besteffort, or "" outside Kubernetes


_POD_UID = re.compile(r"pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12})"
                      r"(?:\.slice)?(?:/|$)")
_SCOPE = re.compile(r"(?:^|/)(cri-containerd|crio|docker)-([0-9a-f]{64})\.scope(?:/|$)")
_BARE_ID = re.compile(r"/([0-9a-f]{64})(?:/|$)")          # cgroupfs driver, docker v1
_QOS = re.compile(r"kubepods[-/](burstable|besteffort)")
_RUNTIMES = {"cri-containerd": "containerd", "crio": "cri-o", "docker": "docker"}


def _rooted(path: str) -> str | None:
    """The cgroup path from its first real component (leading `/..` of a path relative
    to the reader's cgroup namespace dropped), if that component is one only root can
    create for containers: `kubepods*` (the kubelet's), `docker`, or `system.slice` with
    a `docker-`/`crio-`/`cri-containerd-` scope right below it. A user's delegated
    subtree (`/user.slice/...`) that copies a pod's path is not one."""
    parts = [p for p in path.split("/") if p]
    while parts and parts[0] == "..":
        parts.pop(0)
    if not parts:
        return None
    first = parts[0]
    if first.startswith("kubepods") or first == "docker":
        return "/" + "/".join(parts)
    if first == "system.slice" and len(parts) > 1 and \
            parts[1].startswith(("docker-", "crio-", "cri-containerd-")):
        return "/" + "/".join(parts)
    return None


def parse_pod_identity(text: str) -> PodIdentity | None:
    """/proc/PID/cgroup -> the container and pod of the process, or None on a host
    process. Every line is looked at (cgroup v1 lists one per hierarchy, v2 one); the
    path may be relative to the reader's cgroup namespace (`/../../kubepods...`), and
    must be rooted where only root creates cgroups (`_rooted`).

    >>> parse_pod_identity("0::/kubepods.slice/kubepods-burstable.slice/"
    ...     "kubepods-burstable-pod1f6c7e5a_8a7b_4b7e_9a0a_2d3c4e5f6a7b.slice/"
    ...     "cri-containerd-" + "a" * 64 + ".scope").qos_class
    'burstable'
    """
    for line in text.splitlines()[:64]:
        path = _rooted(line.split(":", 2)[-1][:4096])
        if path is None:
            continue
        pod = _POD_UID.search(path)
        scope = _SCOPE.search(path)
        bare = None if scope else _BARE_ID.search(path)
        if not (pod or scope or bare):
            continue
        runtime = _RUNTIMES[scope.group(1)] if scope else "unknown"
        container = scope.group(2) if scope else (bare.group(1) if bare else "")
        if "crio-conmon-" in path:       # CRI-O's monitor process, not the container
            continue
        uid = pod.group(1).replace("_", "-") if pod else ""
        qos = ""
        if "kubepods" in path:
            m = _QOS.search(path)
            qos = m.group(1) if m else "guaranteed"
        return PodIdentity(runtime, container, uid, qos)
    return None
