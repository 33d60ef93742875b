"""What each part of one sample costs the sampler thread, with the caches as cold as the
sampler finds them (one call every 100 ms, CPU time of the thread), in-process:

    sudo unshare --net sh -c 'ip link set lo up; .venv/bin/python bench/sampler_parts.py'

In the fresh network namespace: 64 processes standing for busy sync workers (each one
fd above its idle count), a unix and a TCP listener held by this process (the master),
12k unix sockets of ballast (6k socketpairs, opened after the listeners: the master's
fds are searched in order), 64 established TCP connections that sent last (the
dependency clock's). Prints the whole tick and its parts, median and min of 40 calls.
`--tree DIR` measures another checkout's Sampler (the parts its code has).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def cpu(f, n: int) -> list[float]:
    out = []
    for _ in range(n):
        time.sleep(0.1)     # the sampler's interval: what it finds in the caches
        t = time.thread_time()
        f()
        out.append(time.thread_time() - t)
    return sorted(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tree", default=str(Path(__file__).resolve().parent.parent))
    ap.add_argument("--ticks", type=int, default=100)
    args = ap.parse_args(argv)
    sys.path.insert(0, args.tree)
    from exporter.collectors.sampler import SamplerCollector
    from exporter.gunicorn.dependencies import Outbound
    from exporter.linux import sockdiag
    from exporter.snapshot import AppSnapshot, GunicornSnapshot, ListenerSnapshot, WorkerSnapshot

    d = tempfile.mkdtemp(prefix="gx-parts-")
    unix = socket.socket(socket.AF_UNIX)
    unix.bind(d + "/s")
    unix.listen(16)
    tcp = socket.socket()
    tcp.bind(("127.0.0.1", 0))
    tcp.listen(16)
    peer = socket.socket()
    peer.bind(("127.0.0.1", 0))
    peer.listen(128)
    ballast = [socket.socketpair() for _ in range(6000)]
    kids = [subprocess.Popen(["sleep", "600"]) for _ in range(64)]
    conns = [socket.create_connection(peer.getsockname()) for _ in range(64)]
    for c in conns:
        c.send(b"x")
    port = peer.getsockname()[1]
    out = sorted((s for s in sockdiag.read_all().inet.values()
                  if s.remote_port == port and s.state == 1), key=lambda s: s.inode)
    label = f"127.0.0.1:{port}"
    workers = [WorkerSnapshot(slot=i, pid=k.pid, start_time=0, rss_bytes=0, cpu_seconds=0,
                              threads=1, open_fds=len(os.listdir(f"/proc/{k.pid}/fd")) - 1,
                              fd_limit=1024, heartbeat_age=0, connections_active=0,
                              connections_client_closed=0, db_connections=0)
               for i, k in enumerate(kids)]
    workers = [dataclasses.replace(w, outbound=(Outbound(label, "established", s),))
               for w, s in zip(workers, out)]
    snap = GunicornSnapshot(apps=[AppSnapshot(
        app="a", up=True, master_pid=os.getpid(), worker_class="sync", workers=workers,
        dependencies={label: None},
        listeners=[ListenerSnapshot("unix:" + d + "/s", "unix", 0, 16,
                                    inode=os.fstat(unix.fileno()).st_ino),
                   ListenerSnapshot("127.0.0.1:1", "tcp", 0, 16,
                                    inode=os.fstat(tcp.fileno()).st_ino)])])
    collector = SamplerCollector(0.1, 60)
    s = collector.sampler
    s.retarget(snap)
    try:
        for _ in range(20):
            s.tick()
        tick = cpu(s.tick, args.ticks)
        where, inodes = dict(s._where), {i: (i in s._unix) for i in s._where}
        busy = {app: dict(b.idle_fds) for app, b in s._apps.items() if b.idle_fds}
        parts = {
            "fd counts, 64 workers": lambda: s._count_fds(busy),
            "unix listener, sock_diag": lambda: s.read_queues(
                {None: (0, {i for i, u in inodes.items() if u})}),
            "TCP listener, sock_diag": lambda: s.read_queues(
                {None: (0, {i for i, u in inodes.items() if not u})}),
            "tcp_info of 64 connections (once a second)": lambda: s.deps.read_times(
                {None: (0, out)}),
        }
        if hasattr(s, "_polls"):
            parts["both listeners, poll()"] = lambda: s._polls.empty(
                [(i, pid) for i, (_ns, pid) in where.items()])
        print(f"| part | µs CPU, median (min) of {args.ticks} ticks or 40 calls |")
        print("|---|---:|")
        print(f"| whole tick | {tick[len(tick) // 2] * 1e6:.0f} ({tick[0] * 1e6:.0f}) |")
        for name, f in parts.items():
            v = cpu(f, 40)
            print(f"| {name} | {v[20] * 1e6:.0f} ({v[0] * 1e6:.0f}) |")
        print(f"\nwaiting on the peer: {s.deps.snapshot()}; all busy: "
              f"{s.snapshot().all_busy_seconds}")
    finally:
        for k in kids:
            k.kill()
        del ballast
    return 0


if __name__ == "__main__":
    sys.exit(main())
