"""Socket ballast for the benchmark: make a host look like one with many sockets.

    python bench/ballast.py --sockets 20000 [--tcp-share 0.4]

Opens about ``--sockets`` sockets: unix stream socketpairs
(``1 - tcp-share`` of them) and loopback TCP connections through a listener of
its own on 127.0.0.1 (both ends of every connection live here, so each TCP
connection is two sockets with inodes in the host's tables).  When the fd hard
limit (which a container may not let even root raise) is below ``--sockets``,
the rest goes to helper copies of this script, children of this process.  Then it prints one
line ``READY pid=<pid> unix=<n> tcp=<n> total=<n>`` on stdout and waits for its
stdin to close (or a line on it), and exits.  Nothing leaves the machine.

TCP sockets are closed with SO_LINGER 0 (RST), so stopping the ballast leaves no
TIME_WAIT entries behind that would skew the next scenario's ``ss`` numbers.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import socket
import struct
import subprocess
import sys

LINGER_RST = struct.pack("ii", 1, 0)


def raise_nofile(need: int) -> int:
    """Raise the soft fd limit to ``need`` (and the hard one too when allowed)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= need:
        return soft
    if hard == resource.RLIM_INFINITY or hard >= need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
        return need
    try:  # root may raise the hard limit too (up to fs.nr_open)
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, need))
        return need
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        return hard


def open_ballast(total: int, tcp_share: float) -> tuple[list[socket.socket], int, int]:
    total = max(0, total)
    tcp_conns = int(total * tcp_share) // 2          # two sockets per connection
    unix_pairs = (total - 2 * tcp_conns) // 2
    raise_nofile(total + 256)
    keep: list[socket.socket] = []
    for _ in range(unix_pairs):
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        keep += (a, b)
    if tcp_conns:
        lst = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        lst.bind(("127.0.0.1", 0))
        lst.listen(1024)
        addr = lst.getsockname()
        for _ in range(tcp_conns):  # bounded: one connect + one accept each
            c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)
            c.connect(addr)
            s, _peer = lst.accept()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)
            keep += (c, s)
        keep.append(lst)
    return keep, 2 * unix_pairs, 2 * tcp_conns


def _spawn_helper(sockets: int, tcp_share: float) -> tuple[subprocess.Popen, int, int]:
    """Another ballast process for what does not fit under our fd hard limit."""
    p = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--sockets", str(sockets),
                          "--tcp-share", str(tcp_share)],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    line = p.stdout.readline()  # the child prints READY or dies (EOF)
    m = re.match(r"READY pid=\d+ unix=(\d+) tcp=(\d+)", line)
    if not m:
        p.stdin.close()
        p.wait(timeout=30)
        raise RuntimeError(f"ballast helper failed: {line!r}")
    return p, int(m.group(1)), int(m.group(2))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sockets", type=int, required=True, help="sockets to open (approx.)")
    ap.add_argument("--tcp-share", type=float, default=0.4,
                    help="share of the sockets that are loopback TCP (default 0.4)")
    args = ap.parse_args(argv)
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    cap = args.sockets if hard == resource.RLIM_INFINITY else max(1000, hard - 256)
    n_procs = max(1, -(-args.sockets // cap))
    per_proc = -(-args.sockets // n_procs)  # split evenly over the processes
    helpers: list[subprocess.Popen] = []
    n_unix = n_tcp = 0
    left = args.sockets - per_proc
    try:
        while left > 0:  # bounded: each round takes per_proc >= 1000 sockets
            chunk = min(left, per_proc)
            p, u, t = _spawn_helper(chunk, args.tcp_share)
            helpers.append(p)
            n_unix += u
            n_tcp += t
            left -= chunk
        keep, u, t = open_ballast(per_proc, args.tcp_share)
        n_unix += u
        n_tcp += t
        print(f"READY pid={os.getpid()} unix={n_unix} tcp={n_tcp} total={n_unix + n_tcp} "
              f"processes={1 + len(helpers)}", flush=True)
        try:
            sys.stdin.readline()  # EOF or any line: done
        except KeyboardInterrupt:
            pass
        for s in keep:
            s.close()
    finally:
        for p in helpers:
            p.stdin.close()
        for p in helpers:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()  # our own child, by its Popen handle
                p.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
