"""Masters in other network namespaces (pods, containers), read at full fidelity through
sock_diag sockets opened inside each namespace (exporter/linux/netns.py), and pod
identity from cgroup paths. The oracle is `ss` run inside each namespace (nsenter)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import uuid
from pathlib import Path

import pytest

from exporter.linux import netns as netns_mod
from exporter.linux import sockdiag
from exporter.linux.cgroup import PodIdentity, parse_pod_identity
from tests.conftest import require
from tests.exposition import scrape, value
from tests.harness.clients import SlowClients
from tests.harness.masters import Gunicorn
from tests.harness.procs import free_port, poll
from tests.harness.servers import running_exporter
from tests.harness.ss import _local_matches, _norm_listener, parse_ss_line

ID = "0123456789abcdef" * 4
UID = "1f6c7e5a-8a7b-4b7e-9a0a-2d3c4e5f6a7b"
UID_ = UID.replace("-", "_")


# --- pod identity from literal /proc/PID/cgroup files ---------------------------------

@pytest.mark.parametrize("text, want", [
    # cgroup v2, systemd driver: containerd, CRI-O, docker (dockershim)
    (f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/"
     f"cri-containerd-{ID}.scope\n", PodIdentity("containerd", ID, UID, "burstable")),
    (f"0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/"
     f"crio-{ID}.scope\n", PodIdentity("cri-o", ID, UID, "besteffort")),
    (f"0::/kubepods.slice/kubepods-pod{UID_}.slice/docker-{ID}.scope\n",
     PodIdentity("docker", ID, UID, "guaranteed")),
    # relative to the exporter's own cgroup namespace (a DaemonSet pod's view)
    (f"0::/../../kubepods-burstable-pod{UID_}.slice/cri-containerd-{ID}.scope\n",
     PodIdentity("containerd", ID, UID, "burstable")),
    # cgroup v2, cgroupfs driver
    (f"0::/kubepods/burstable/pod{UID}/{ID}\n", PodIdentity("unknown", ID, UID, "burstable")),
    # cgroup v1 (one line per hierarchy), cgroupfs and systemd drivers
    (f"12:memory:/kubepods/besteffort/pod{UID}/{ID}\n11:cpu,cpuacct:/kubepods/besteffort/pod{UID}/{ID}\n"
     f"1:name=systemd:/kubepods/besteffort/pod{UID}/{ID}\n",
     PodIdentity("unknown", ID, UID, "besteffort")),
    (f"4:memory:/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{ID}.scope\n0::/\n",
     PodIdentity("containerd", ID, UID, "guaranteed")),
    # plain docker, no Kubernetes
    (f"0::/system.slice/docker-{ID}.scope\n", PodIdentity("docker", ID, "", "")),
    (f"4:memory:/docker/{ID}\n", PodIdentity("unknown", ID, "", "")),
    # host processes
    ("0::/system.slice/shop.service\n", None),
    ("0::/user.slice/user-1000.slice/session-2.scope\n", None),
    ("", None),
    # CRI-O's monitor process is not the container
    (f"0::/kubepods.slice/kubepods-pod{UID_}.slice/crio-conmon-{ID}.scope\n", None),
    # hostile: a name that looks like a pod but is not one (too short, wrong place)
    ("0::/system.slice/evilpod1234.scope\n", None),
    # hostile: a user's delegated subtree that copies a pod's path (review finding)
    (f"0::/user.slice/user-1000.slice/user@1000.service/kubepods.slice/kubepods-pod{UID_}.slice/"
     f"cri-containerd-{ID}.scope\n", None),
    (f"0::/../../user.slice/user-1000.slice/user@1000.service/kubepods/pod{UID}/{ID}\n", None),
    (f"0::/system.slice/evil.service/docker-{ID}.scope\n", None),
    ("0::/" + "kubepods/" * 2000 + "\n", None),
])
def test_pod_identity_from_cgroup_paths(text, want):
    assert parse_pod_identity(text) == want


def test_somaxconn_parsing_is_bounded():
    assert netns_mod.parse_somaxconn("4096\n") == 4096
    assert netns_mod.parse_somaxconn("-1") is None
    assert netns_mod.parse_somaxconn("99999999999") is None
    assert netns_mod.parse_somaxconn("x") is None


# --- real network namespaces ----------------------------------------------------------

def _need_netns():
    require(os.geteuid() == 0 and shutil.which("unshare") and shutil.which("nsenter")
            and shutil.which("ip"), "needs root, unshare, nsenter and ip (util-linux, iproute2)")
    probe = subprocess.run(["unshare", "--net", "true"], capture_output=True)
    require(probe.returncode == 0, f"cannot create network namespaces: {probe.stderr!r}")


def _in_netns(somaxconn: int) -> list[str]:
    """A prefix that runs the rest in a new network namespace with lo up and its own
    net.core.somaxconn, exec'ing it (the pid stays gunicorn's master)."""
    return ["unshare", "--net", "--", "sh", "-c",
            f"ip link set lo up && sysctl -qw net.core.somaxconn={somaxconn} && exec \"$@\"", "sh"]


def _ns_listen_queue(pid: int, listener: str) -> tuple[int, int] | None:
    """(Recv-Q, Send-Q) of a listener, from `ss` run inside pid's network namespace."""
    kind, host, port = _norm_listener(listener)
    out = subprocess.run(["nsenter", f"--net=/proc/{pid}/ns/net", "ss",
                          "-xlnH" if kind == "unix" else "-tlnH"],
                         capture_output=True, text=True, timeout=20, check=True).stdout
    for line in out.splitlines():
        s = parse_ss_line(line, "u_str" if kind == "unix" else "tcp")
        if s is not None and s.state == "LISTEN" and _local_matches(s, kind, host, port):
            return s.recv_q, s.send_q
    return None


def _socket_in(pid: int) -> socket.socket:
    """A TCP socket created inside pid's network namespace (setns in a throwaway thread)."""
    out: dict = {}

    def run():
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        target = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY)
        try:
            netns_mod._call_setns(target)
            out["sock"] = socket.socket()
            netns_mod._call_setns(own)
        finally:
            os.close(own)
            os.close(target)
    t = threading.Thread(target=run)
    t.start()
    t.join(10)
    return out["sock"]


def _hold_tcp(pid: int, port: int, n: int, seconds: float) -> list[socket.socket]:
    socks = []
    for _ in range(n):
        s = _socket_in(pid)
        s.settimeout(5)
        s.connect(("127.0.0.1", port))
        s.sendall(f"GET /slow?seconds={seconds} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        socks.append(s)
    return socks


@pytest.mark.slow
def test_each_namespace_is_read_like_the_host(tmp_path):
    """Two namespaces, each a gunicorn (one sync worker) on a unix socket and on TCP,
    with its own somaxconn, flooded with slow requests: queue length and limit per
    listener equal `ss` inside that namespace, somaxconn is the namespace's own."""
    _need_netns()
    apps = []
    held = []
    try:
        for somaxconn in (257, 1031):
            name = f"ns{somaxconn}-{uuid.uuid4().hex[:6]}"
            g = Gunicorn.start(tmp_path / name, workers=1, bind=["unix", "tcp"], name=name,
                               extra_args=["--backlog", "4000"], prefix=_in_netns(somaxconn))
            apps.append((g, name, somaxconn))
            unix, tcp = g.binds
            held.append(SlowClients(unix, 3, seconds=60))      # paths cross namespaces
            held.append(_hold_tcp(g.pid, int(tcp.rsplit(":", 1)[1]), 4, 60))
        with running_exporter(tmp_path, "--no-collector.postgres", "--no-collector.logs") as base:
            def measured():
                got = scrape(base)
                rows = []
                for g, name, somaxconn in apps:
                    for bind in g.binds:
                        label = bind
                        have = (value(got, "gunicorn_listener_queue_length", app=name, listener=label),
                                value(got, "gunicorn_listener_queue_max", app=name, listener=label))
                        want = _ns_listen_queue(g.pid, bind)
                        if have != (float(want[0]), float(want[1])) or want[0] == 0:
                            return None
                        # the sampler reads the pod's queues too (the flood holds still)
                        peak = value(got, "gunicorn_listener_queue_peak", app=name, listener=label)
                        if peak != want[0]:
                            return None
                        rows.append((name, bind, have))
                    if value(got, "gunicorn_app_somaxconn", app=name) != somaxconn:
                        return None
                assert value(got, "gunicorn_exporter_netns_denied") == 0
                return rows
            rows = poll(measured, 30, interval=0.5, message="queues never matched ss in the namespaces")
            # the flood is visible: the one worker took a unix request first, so 2 wait
            # on unix and all 4 on TCP, in each namespace
            assert sorted(int(h[0]) for _n, _b, h in rows) == [2, 2, 4, 4]
            # the limit is min(backlog, the namespace's somaxconn), different per namespace
            assert sorted({int(h[1]) for _n, _b, h in rows}) == [257, 1031]
    finally:
        for h in held:
            if isinstance(h, SlowClients):
                h.close_all()
            else:
                for s in h:
                    s.close()
        for g, _n, _s in apps:
            g.stop()


@pytest.mark.slow
def test_without_cap_sys_admin_it_falls_back_and_says_so(tmp_path):
    _need_netns()
    require(shutil.which("setpriv"), "needs setpriv (util-linux)")
    name = f"nsdenied-{uuid.uuid4().hex[:6]}"
    with Gunicorn.start(tmp_path, workers=1, bind=["unix", "tcp"], name=name,
                        prefix=_in_netns(300)) as g:
        unix, tcp = g.binds
        env = dict(os.environ)
        script = ("import sys, runpy; sys.argv = ['exporter'] + sys.argv[1:]; "
                  "runpy.run_module('exporter', run_name='__main__')")
        port = free_port()
        log = tmp_path / "exporter.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                ["setpriv", "--inh-caps=-sys_admin", "--bounding-set=-sys_admin", "--",
                 os.sys.executable, "-c", script, "--web.listen-address", f"127.0.0.1:{port}",
                 "--no-collector.postgres", "--no-collector.logs"],
                stdout=out, stderr=subprocess.STDOUT, env=env)
        try:
            base = f"http://127.0.0.1:{port}"

            def fallen_back():
                try:
                    got = scrape(base)
                except OSError:
                    return None
                if value(got, "gunicorn_up", app=name) != 1:
                    return None
                return got
            got = poll(fallen_back, 30, interval=0.3, message="the exporter never saw the app")
            assert value(got, "gunicorn_exporter_netns_denied") == 1
            # /proc/PID/net has TCP queues but no unix queue lengths, and no somaxconn
            assert value(got, "gunicorn_listener_queue_length", app=name, listener=unix) is None
            assert value(got, "gunicorn_listener_queue_length", app=name, listener=tcp) == 0
            assert value(got, "gunicorn_app_somaxconn", app=name) is None
            text = log.read_text()
            assert text.count("cannot enter the network namespaces") == 1, text
        finally:
            proc.terminate()
            proc.wait(10)


@pytest.mark.slow
def test_sockets_of_namespaces_no_longer_seen_are_closed():
    _need_netns()
    p = subprocess.Popen(["unshare", "--net", "sleep", "60"])
    try:
        poll(lambda: os.readlink(f"/proc/{p.pid}/ns/net") != os.readlink("/proc/self/ns/net"),
             10)
        ns = os.stat(f"/proc/{p.pid}/ns/net").st_ino
        cache = netns_mod.NetnsSockets()
        sock, somaxconn = cache.get(ns, p.pid)
        assert somaxconn is not None and cache.get(ns, p.pid)[0] is sock
        table = sockdiag.read_all(sock=sock)
        assert table.source == "netlink" and not table.inet   # a fresh namespace: empty
        with pytest.raises(OSError):                          # the wrong namespace for pid
            netns_mod.open_in(p.pid, ns + 1)
        cache.keep_only(set())
        assert sock.fileno() == -1
    finally:
        p.kill()
        p.wait()


# --- pod identity end to end: a master moved into a kubepods-style cgroup ------------

@pytest.mark.slow
def test_pods_are_told_apart_and_identified(tmp_path):
    """Two masters of the same name in two 'pods' (network namespaces, and v1 memory
    cgroups laid out as the cgroupfs driver does): both are reported, told apart by
    their pods (NAME@pod:<uid>), each with its gunicorn_app_kubernetes_info."""
    _need_netns()
    root = Path("/sys/fs/cgroup")
    v2 = (root / "cgroup.controllers").exists()
    base = root if v2 else root / "memory"
    require(base.is_dir() and os.access(base, os.W_OK), "needs a writable cgroup hierarchy")
    name = f"podapp-{uuid.uuid4().hex[:6]}"
    uids = [str(uuid.uuid4()) for _ in range(2)]
    made, masters = [], []
    try:
        for i, uid in enumerate(uids):
            cid = f"{i:x}" * 64
            if v2:   # the systemd driver's layout, containerd
                u = uid.replace("-", "_")
                cg = (base / "kubepods.slice" / "kubepods-burstable.slice" /
                      f"kubepods-burstable-pod{u}.slice" / f"cri-containerd-{cid}.scope")
            else:    # the cgroupfs driver's layout
                cg = base / "kubepods" / "burstable" / f"pod{uid}" / cid
            cg.mkdir(parents=True)
            made.append(cg)
            g = Gunicorn.start(tmp_path / f"p{i}", workers=1, bind="unix", name=name,
                               prefix=_in_netns(512))
            masters.append(g)
            for pid in [g.pid, *g.worker_pids()]:
                (cg / "cgroup.procs").write_text(str(pid))
        with running_exporter(tmp_path, "--no-collector.postgres", "--no-collector.logs") as base:
            def both():
                got = scrape(base)
                infos = {dict(lbl)["pod_uid"]: dict(lbl) for (n, lbl), v in got.items()
                         if n == "gunicorn_app_kubernetes_info" and dict(lbl)["app"].startswith(name)}
                return infos if set(infos) == set(uids) else None
            infos = poll(both, 30, interval=0.3, message="both pods were not reported")
            # found together, neither owns the plain name: each is named after its pod
            for u in uids:
                assert infos[u]["app"] in (name, f"{name}@pod:{u[:8]}"), infos
            assert len({infos[u]["app"] for u in uids}) == 2
            for u in uids:
                assert infos[u]["qos_class"] == "burstable"
                assert len(infos[u]["container_id"]) == 64
    finally:
        for g in masters:
            g.stop()
        for cg in made:     # the empty ones only: a concurrent run may use the others
            for d in (cg, cg.parent, cg.parent.parent, cg.parent.parent.parent):
                try:
                    d.rmdir()
                except OSError:
                    break
