"""What the HTTP layer costs per request: this tree against another checkout (e.g. the
one before it served with aiohttp), both real processes with every collector off, so a
request is only the HTTP layer (/-/healthy), interleaved round by round.

    .venv/bin/python bench/serving.py --baseline /tmp/old     # git archive COMMIT | tar -x -C /tmp/old

Per tree and round: 1,000 requests on one kept-alive connection, then 1,000 on a new
connection each; latency from request to the last byte (median, min-max over rounds),
and utime+stime of the server (/proc/PID/stat) over each phase divided by its requests.
"""

from __future__ import annotations

import argparse
import http.client
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from startup import HERE, free_port  # noqa: E402

OFF = ["--no-collector." + c for c in ("gunicorn", "netstat", "oom", "logs", "statsd",
                                        "sampler", "postgres", "advice")]
TICK = os.sysconf("SC_CLK_TCK")


def ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def start(tree: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "exporter", "--web.listen-address",
                             f"127.0.0.1:{port}", *OFF], cwd=tree,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", "/-/healthy")
            c.getresponse().read()
            return proc, port
        except OSError:
            time.sleep(0.01)    # polling interval of the measurement itself
    raise SystemExit(f"{tree} did not start")


def phase(pid: int, port: int, n: int, keepalive: bool) -> tuple[list[float], float]:
    """(latencies in ms, CPU ms per request) of n requests."""
    lat = []
    before = ticks(pid)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    for _ in range(n):
        if not keepalive:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        t = time.perf_counter()
        conn.request("GET", "/-/healthy")
        conn.getresponse().read()
        lat.append((time.perf_counter() - t) * 1000)
        if not keepalive:
            conn.close()
    return lat, (ticks(pid) - before) * 1000 / TICK / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--baseline", required=True)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--requests", type=int, default=1000)
    args = ap.parse_args()
    trees = {"this tree": HERE, "baseline": os.path.abspath(args.baseline)}
    servers = {name: start(tree) for name, tree in trees.items()}
    res = {(name, ka): ([], []) for name in trees for ka in (True, False)}
    try:
        for _ in range(args.rounds):
            for ka in (True, False):
                for name, (proc, port) in servers.items():
                    lat, cpu = phase(proc.pid, port, args.requests, ka)
                    res[(name, ka)][0].append(statistics.median(lat))
                    res[(name, ka)][1].append(cpu)
    finally:
        for proc, _ in servers.values():
            proc.terminate()
            proc.wait(10)
    print(f"| server | connection | latency ms: median (min-max) of {args.rounds} rounds "
          f"| CPU ms per request: median (min-max) |")
    print("|---|---|---:|---:|")
    for (name, ka), (lat, cpu) in res.items():
        print(f"| {name} | {'kept alive' if ka else 'new each request'} | "
              f"{statistics.median(lat):.3f} ({min(lat):.3f}-{max(lat):.3f}) | "
              f"{statistics.median(cpu):.3f} ({min(cpu):.3f}-{max(cpu):.3f}) |")


if __name__ == "__main__":
    main()
