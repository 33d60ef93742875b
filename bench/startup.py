"""Start to first good scrape: how long from exec to a `/metrics` answer with every
collector successful, over HTTP against the real process.

    .venv/bin/python bench/startup.py                     # this tree, 15 runs
    .venv/bin/python bench/startup.py --baseline /tmp/old # beside another checkout

With `--baseline` (a checkout of another version, e.g. `git worktree add /tmp/old
COMMIT`), the two are started alternately, run after run, with the same flags and the
same Python, so the host's noise falls on both. Reports median and min-max in ms, and
the process's VmRSS after the first scrape. Postgres is off (no DSN), so a database's
connect time stays out of the number.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one_run(tree: str, deadline: float = 20.0) -> tuple[float, float]:
    """(ms from exec to a 200 /metrics whose collectors all succeeded, VmRSS MiB)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    start = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "exporter", "--web.listen-address",
                             f"127.0.0.1:{port}", "--no-collector.postgres"],
                            cwd=tree, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while time.monotonic() - start < deadline:
            try:
                with urllib.request.urlopen(url, timeout=5) as r:
                    body = r.read().decode()
                if r.status == 200 and "_collector_success" in body and \
                        not any(line.startswith("gunicorn_exporter_collector_success")
                                and line.endswith(" 0.0") for line in body.splitlines()):
                    took = (time.monotonic() - start) * 1000
                    break
            except OSError:
                pass
            time.sleep(0.005)  # polling interval of the measurement itself
        else:
            raise SystemExit(f"{tree}: no good scrape within {deadline}s")
        with open(f"/proc/{proc.pid}/status") as f:
            rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
        return took, rss / 1024
    finally:
        proc.terminate()
        proc.wait(10)


def summary(values: list[float]) -> str:
    return f"{statistics.median(values):.0f} ({min(values):.0f}-{max(values):.0f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--baseline", help="another checkout to run alternately with this one")
    args = ap.parse_args()
    trees = {"this tree": HERE}
    if args.baseline:
        trees["baseline"] = os.path.abspath(args.baseline)
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in trees}
    for name, tree in trees.items():
        one_run(tree)                      # warm the page cache once for each
    for _ in range(args.runs):
        for name, tree in trees.items():
            results[name].append(one_run(tree))
    print(f"| version | start to first good scrape, ms: median (min-max) of {args.runs} "
          f"| VmRSS after it, MiB |")
    print("|---|---:|---:|")
    for name, runs in results.items():
        print(f"| {name} | {summary([t for t, _ in runs])} | "
              f"{statistics.median(r for _, r in runs):.1f} |")


if __name__ == "__main__":
    main()
