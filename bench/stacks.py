"""What stack captures cost (--collector.stacks), and why py-spy reads them.

1. The stack readers, on a real sync gunicorn worker blocked in `socket.recv` on a
   dependency that never answers: `py-spy dump --nonblocking`, `py-spy dump`, and, when
   it is installed (`pip install pystack`), `pystack remote --no-block` and `pystack
   remote`. Per reader: the wall time of a dump, its CPU time (the children's rusage),
   whether the worker was paused while it ran (its /proc/PID/status read in a loop
   meanwhile: a tracer pid, or the `t (tracing stop)` state), and the frame it names.
2. 64 sync workers stuck at once (every one waiting on that dependency, --timeout 100,
   so stuck from 50.5 s until they are killed at 100 s), watched by two exporters, one
   with --collector.stacks and one without, both restricted to this app
   (--gunicorn.include) and scraped every 15 s as Prometheus would: the CPU each uses
   over the stuck window (its own and its reaped children's: /proc/PID/stat utime,
   stime, cutime, cstime), the captures, and the scrape times of both, interleaved.

    .venv/bin/python bench/stacks.py            # about 2.5 minutes, as root

Prints a markdown report (docs/performance.md#stacks-of-stuck-workers has one).
"""

from __future__ import annotations

import os
import platform
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.exposition import scrape, select, value  # noqa: E402
from tests.harness.masters import Gunicorn  # noqa: E402
from tests.harness.procs import poll, unique_name  # noqa: E402
from tests.harness.servers import running_exporter  # noqa: E402

VENV_BIN = Path(sys.executable).parent
TCK = os.sysconf("SC_CLK_TCK")


def silent_dependency():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1024)
    held = []
    threading.Thread(target=lambda: [held.append(srv.accept()[0]) for _ in range(100000)],
                     daemon=True).start()
    return srv, held


def hold(g: Gunicorn, port: int, n: int, held: list) -> list[socket.socket]:
    clients = []
    for _ in range(n):
        s = socket.create_connection((g.host, g.port))
        s.sendall(f"GET /upstream?port={port} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        clients.append(s)
    poll(lambda: len(held) >= n, 30, message=f"{n} workers did not reach the dependency")
    return clients


def watch_pauses(pid: int, stop: threading.Event, seen: set) -> None:
    while not stop.is_set():
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("State:") and "tracing stop" in line:
                        seen.add("t")
                    elif line.startswith("TracerPid:") and line.split()[1] != "0":
                        seen.add("tracer")
        except OSError:
            return


def readers(pid: int) -> list[tuple[str, list[str], int]]:
    out = []
    spy = shutil.which("py-spy", path=str(VENV_BIN)) or shutil.which("py-spy")
    if spy:
        out += [("py-spy dump --nonblocking", [spy, "dump", "--nonblocking", "--pid", str(pid)], 40),
                ("py-spy dump", [spy, "dump", "--pid", str(pid)], 40)]
    stack = shutil.which("pystack", path=str(VENV_BIN)) or shutil.which("pystack")
    if stack:
        out += [("pystack remote --no-block", [stack, "remote", "--no-block", "--no-color", str(pid)], 15),
                ("pystack remote", [stack, "remote", "--no-color", str(pid)], 15)]
    return out


def compare_readers(tmp: Path, report: list[str]) -> None:
    srv, held = silent_dependency()
    g = Gunicorn.start(tmp / "one", name=unique_name("bench-reader"), workers=1, bind="tcp",
                       timeout=300)
    try:
        clients = hold(g, srv.getsockname()[1], 1, held)
        [pid] = g.worker_pids()
        report += ["| reader | dump, median (min-max) | CPU per dump | worker paused | "
                   "innermost frame it shows |", "|---|---|---|---|---|"]
        for name, argv, n in readers(pid):
            walls = []
            seen: set = set()
            r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
            for _ in range(n):
                stop = threading.Event()
                t = threading.Thread(target=watch_pauses, args=(pid, stop, seen))
                t.start()
                t0 = time.monotonic()
                p = subprocess.run(argv, capture_output=True, text=True, timeout=30,
                                   env={"PATH": "/usr/bin:/bin", "RUST_BACKTRACE": "0"})
                walls.append(time.monotonic() - t0)
                stop.set()
                t.join()
            r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu = (r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime) / n
            lines = [x.strip() for x in p.stdout.splitlines() if "wsgi_app.py" in x]
            shown = lines[0][:60] if lines else f"(exit {p.returncode}) {p.stderr[:60]}"
            paused = "yes (" + ", ".join(sorted(seen)) + ")" if seen else "no"
            report.append(f"| `{name}` | {statistics.median(walls) * 1000:.1f} ms "
                          f"({min(walls) * 1000:.1f}-{max(walls) * 1000:.1f}) | "
                          f"{cpu * 1000:.1f} ms | {paused} | `{shown}` |")
        if not any(r[0].startswith("pystack") for r in readers(pid)):
            report.append("\n(pystack is not installed: `pip install pystack` to compare.)")
        for c in clients:
            c.close()
    finally:
        g.stop()
        srv.close()


def proc_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15]) / TCK


def stuck_workers(tmp: Path, report: list[str], workers: int = 64, timeout: int = 100) -> None:
    srv, held = silent_dependency()
    name = unique_name("bench-stuck")
    g = Gunicorn.start(tmp / "many", name=name, workers=workers, bind="tcp", timeout=timeout,
                       start_timeout=120)
    common = ("--no-collector.postgres", "--no-collector.statsd", "--no-collector.oom",
              "--no-collector.logs", "--gunicorn.include", name)
    try:
        with running_exporter(tmp, "--collector.stacks", *common) as on, \
                running_exporter(tmp, *common) as off:
            for base in (on, off):
                poll(lambda: value(scrape(base), "gunicorn_workers", app=name) == workers, 60)
            clients = hold(g, srv.getsockname()[1], workers, held)
            t_stuck = time.monotonic() + timeout / 2 + 0.5
            poll(lambda: time.monotonic() > t_stuck + 1.5, timeout, interval=1)
            start = time.monotonic()
            cpu0 = {k: proc_cpu(b.pid) for k, b in (("on", on), ("off", off))}
            c0 = value(scrape(on), "gunicorn_stack_capture_cpu_seconds_total")
            n0 = sum(select(scrape(on), "gunicorn_stack_captures_total", app=name).values())
            times: dict[str, list[float]] = {"on": [], "off": []}
            end = start + timeout / 2 - 5
            next_scrape = start
            while time.monotonic() < end:
                if time.monotonic() >= next_scrape:
                    next_scrape += 15
                    for k, b in (("on", on), ("off", off)):
                        t = time.monotonic()
                        scrape(b)
                        times[k].append(time.monotonic() - t)
                time.sleep(0.2)
            elapsed = time.monotonic() - start
            cpu1 = {k: proc_cpu(b.pid) for k, b in (("on", on), ("off", off))}
            series = scrape(on)
            stuck = len(select(series, "gunicorn_worker_stuck_frame_info", app=name))
            n1 = sum(select(series, "gunicorn_stack_captures_total", app=name).values())
            c1 = value(series, "gunicorn_stack_capture_cpu_seconds_total")
            share = {k: (cpu1[k] - cpu0[k]) / elapsed for k in cpu0}
            report += [
                f"{workers} sync workers stuck for {elapsed:.0f} s (of a {timeout} s --timeout), "
                f"two exporters scraped every 15 s:", "",
                "| | exporter CPU (own + py-spy), share of a core | captures | py-spy CPU "
                "(its rusage) | scrape, median (max) |", "|---|---|---|---|---|",
                f"| `--collector.stacks` | {share['on'] * 100:.2f} % | {n1 - n0:.0f} "
                f"({stuck} workers with a frame) | {c1 - c0:.2f} s ({(c1 - c0) / elapsed * 100:.2f} %"
                f" of a core) | {statistics.median(times['on']) * 1000:.0f} ms "
                f"({max(times['on']) * 1000:.0f} ms) |",
                f"| without | {share['off'] * 100:.2f} % | - | - | "
                f"{statistics.median(times['off']) * 1000:.0f} ms ({max(times['off']) * 1000:.0f} ms) |",
                "", f"What the captures added: **{(share['on'] - share['off']) * 100:.2f} % of a "
                f"core** (target: under 2 %).",
            ]
            for c in clients:
                c.close()
    finally:
        g.stop()
        srv.close()


def main() -> int:
    import tempfile
    tmp = Path(tempfile.mkdtemp(prefix="bench-stacks-"))
    load = os.getloadavg()
    report = [f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} with "
              f"`.venv/bin/python bench/stacks.py`: Linux {platform.release()}, "
              f"{os.cpu_count()} CPUs, Python {platform.python_version()}, load average "
              f"{load[0]:.2f} at the start.", ""]
    compare_readers(tmp, report)
    report.append("")
    stuck_workers(tmp, report)
    print("\n".join(report))
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
