"""Benchmark: one full gunicorn collection vs `ss -xtanp` vs psutil per process.

    .venv/bin/python bench/run.py [--quick] [--out bench/results/latest.md]

Four scenarios, in one run: a real gunicorn master with 8 or 64 sync workers, on a
host with ~1k or ~20k sockets (ballast from bench/ballast.py, a separate process).
A few `/slow` requests are held open on the workers so the inode join has work to do.
For each scenario it times, on the same host state:

* the exporter: `GunicornCollector.collect()` (discovery in /proc, one netlink dump
  per socket table, the inode join, the control socket questions) and the render of
  the result to Prometheus text; `sockdiag.read_all()` and `discover()` alone too;
* one `ss -xtanp` run (output to /dev/null);
* psutil per process: `Process(pid).net_connections(kind="all")` for the master and
  every worker, one pass over all of them.

At 64 workers / 20k sockets it also runs a real `gunicorn-exporter` process, scrapes
its /metrics 50 times over HTTP and reports its RSS.  It prints a markdown report,
writes it to --out and exits 0 unless something failed; targets that are missed are
reported, not turned into an exit status.

Rules kept: servers bind to 127.0.0.1 and unix sockets in a temp dir; only processes
started here are signalled, by PID, after checking the PID still names the process we
started; every wait polls a condition with a deadline.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402
from prometheus_client.exposition import generate_latest  # noqa: E402

from exporter.collectors.gunicorn import GunicornCollector  # noqa: E402
from exporter.gunicorn.discovery import discover, scan_processes  # noqa: E402
from exporter.http import _Families  # noqa: E402
from exporter.linux import sockdiag  # noqa: E402
from exporter.linux.procfs import ProcFS  # noqa: E402
from exporter.metrics import render  # noqa: E402
from exporter.snapshot import CollectorResult, Snapshot  # noqa: E402

BENCH = Path(__file__).resolve().parent
VENV_BIN = Path(sys.executable).parent
APPS_DIR = ROOT / "tests" / "apps"
TARGET_SS = 5.0
TARGET_PSUTIL = 50.0


# --------------------------------------------------------------------------
# small helpers

def poll(pred, timeout: float, interval: float = 0.05, what: str = "condition"):
    """Return pred()'s first truthy value; RuntimeError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        now = time.monotonic()
        if now >= deadline:
            raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(min(interval, deadline - now))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def starttime(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
        return int(text[text.rindex(")") + 2:].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def children_of(ppid: int) -> list[int]:
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                text = f.read()
            if int(text[text.rindex(")") + 2:].split()[1]) == ppid:
                out.append(int(name))
        except (OSError, ValueError, IndexError):
            continue
    return sorted(out)


def signal_if_same(pid: int, start: int | None, sig: int) -> None:
    """Signal a process we started, only if the pid still names it."""
    if start is not None and starttime(pid) == start:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def timed(fn, runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def p95(xs: list[float]) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(0.95 * len(s)) - 1))]


def ms(x: float) -> str:
    if x >= 1:
        return f"{x * 1000:,.0f}"
    if x >= 0.01:
        return f"{x * 1000:.1f}"
    return f"{x * 1000:.2f}"


def count_host_sockets() -> tuple[int, int]:
    """(lines of `ss -xtanH`, of which TIME-WAIT) — the host's socket count as ss sees it."""
    out = subprocess.run(["ss", "-xtanH"], capture_output=True, text=True, check=True).stdout
    lines = out.splitlines()
    tw = sum(1 for ln in lines if ln.split(None, 2)[1:2] == ["TIME-WAIT"])
    return len(lines), tw


# --------------------------------------------------------------------------
# the processes under test

class Ballast:
    def __init__(self, sockets: int):
        self.proc = subprocess.Popen(
            [sys.executable, str(BENCH / "ballast.py"), "--sockets", str(sockets)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()  # READY line, or EOF if it died
        if not line.startswith("READY"):
            self.stop()
            raise RuntimeError(f"ballast failed to start: {line!r}")
        self.ready = line.strip()

    def stop(self) -> None:
        if self.proc.stdin and not self.proc.stdin.closed:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()  # our child, by its handle
            self.proc.wait(timeout=30)


@dataclass
class Gunicorn:
    workers: int
    tmp: Path
    port: int = 0
    proc: subprocess.Popen | None = None
    start: int | None = None
    worker_pids: list[int] = field(default_factory=list)
    worker_starts: dict[int, int | None] = field(default_factory=dict)
    clients: list[socket.socket] = field(default_factory=list)

    @property
    def unix_path(self) -> str:
        return str(self.tmp / "b.sock")

    def launch(self) -> None:
        self.port = free_port()
        app_dir = APPS_DIR if (APPS_DIR / "wsgi_app.py").exists() else BENCH
        app = "wsgi_app:app" if app_dir == APPS_DIR else "app:app"
        cmd = [str(VENV_BIN / "gunicorn"), "-w", str(self.workers),
               "-b", f"unix:{self.unix_path}", "-b", f"127.0.0.1:{self.port}",
               "--control-socket", str(self.tmp / "g.ctl"),
               "--timeout", "300", "--graceful-timeout", "5",
               "--chdir", str(app_dir), app]
        self.log = open(self.tmp / "gunicorn.log", "wb")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, cwd=str(self.tmp))
        self.start = poll(lambda: starttime(self.proc.pid), 10, what="gunicorn master")

        def ready():
            if self.proc.poll() is not None:
                raise RuntimeError(f"gunicorn exited: {(self.tmp / 'gunicorn.log').read_text()[-2000:]}")
            kids = children_of(self.proc.pid)
            return kids if len(kids) >= self.workers and os.path.exists(self.unix_path) else None
        self.worker_pids = poll(ready, 120, 0.1, f"{self.workers} gunicorn workers")
        self.worker_starts = {p: starttime(p) for p in self.worker_pids}

    def hold(self, n: int, seconds: int = 280) -> None:
        """n requests to /slow, half over the unix socket, half over TCP, left open."""
        req = f"GET /slow?seconds={seconds} HTTP/1.1\r\nHost: bench\r\n\r\n".encode()
        for i in range(n):
            if i % 2:
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.connect(("127.0.0.1", self.port))
            else:
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.connect(self.unix_path)
            s.sendall(req)
            self.clients.append(s)

        def accepted():  # both accept queues empty: every held request is in a worker
            out = subprocess.run(["ss", "-lxtnH"], capture_output=True, text=True).stdout
            for ln in out.splitlines():
                f = ln.split()
                if (self.unix_path in ln or f"127.0.0.1:{self.port}" in ln):
                    rq = f[2] if f[0] in ("u_str", "tcp") else f[1]
                    if rq != "0":
                        return False
            return True
        poll(accepted, 30, what="held requests to be accepted")

    def stop(self) -> None:
        for s in self.clients:
            s.close()
        self.clients.clear()
        if self.proc is None:
            return
        signal_if_same(self.proc.pid, self.start, signal.SIGQUIT)  # quick shutdown
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            signal_if_same(self.proc.pid, self.start, signal.SIGKILL)
            self.proc.wait(timeout=30)
        # workers exit with their master; make sure, bounded
        try:
            poll(lambda: all(starttime(p) != s for p, s in self.worker_starts.items()), 30,
                 what="gunicorn workers to exit")
        except RuntimeError:
            for p, s in self.worker_starts.items():
                signal_if_same(p, s, signal.SIGKILL)
        self.log.close()


# --------------------------------------------------------------------------
# the three ways of reading a worker's connections

def psutil_pass(pids: list[int]) -> int:
    n = 0
    for pid in pids:
        p = psutil.Process(pid)
        get = getattr(p, "net_connections", None) or p.connections
        n += len(get(kind="all"))
    return n


def ss_once() -> None:
    subprocess.run(["ss", "-xtanp"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   check=True)


def render_text(snap) -> bytes:
    snapshot = Snapshot(results={"gunicorn": CollectorResult("gunicorn", True, 0.0, data=snap)})
    return generate_latest(_Families(list(render(snapshot))))


@dataclass
class Row:
    workers: int
    target_sockets: int
    ss_lines: int = 0
    time_wait: int = 0
    table_size: int = 0
    held: int = 0
    seen_active: int | None = None
    workers_seen: int | None = None
    masters_seen: int = 0
    collect: list[float] = field(default_factory=list)
    render: list[float] = field(default_factory=list)
    read_all: list[float] = field(default_factory=list)
    discover: list[float] = field(default_factory=list)
    ss: list[float] = field(default_factory=list)
    psutil: list[float] = field(default_factory=list)
    psutil_conns: int = 0
    metrics_bytes: int = 0


def measure(g: Gunicorn, row: Row, quick: bool) -> None:
    runs = 8 if quick else 30
    collector = GunicornCollector()
    loop = asyncio.new_event_loop()
    try:
        snap = loop.run_until_complete(collector.collect())  # warm-up (version cache etc.)
        for _ in range(runs):
            t = time.perf_counter()
            snap = loop.run_until_complete(collector.collect())
            row.collect.append(time.perf_counter() - t)
    finally:
        loop.close()
    app = next((a for a in snap.apps if a.master_pid == g.proc.pid), None)
    row.masters_seen = sum(1 for a in snap.apps if a.up)
    if app is not None:
        row.workers_seen = len(app.workers)
        row.seen_active = sum(w.connections_active or 0 for w in app.workers)
    row.render = timed(lambda: render_text(snap), runs)
    row.metrics_bytes = len(render_text(snap))
    table = sockdiag.read_all()
    row.table_size = len(table.unix) + len(table.inet)
    row.read_all = timed(sockdiag.read_all, runs)
    procfs = ProcFS()
    row.discover = timed(lambda: discover(procfs), runs)
    row.ss = timed(ss_once, 3 if quick else 5)
    pids = [g.proc.pid] + g.worker_pids
    big = g.workers * row.target_sockets >= 64 * 20000
    passes = 1 if quick else (2 if big else 3)
    row.psutil_conns = psutil_pass(pids)  # also the warm-up
    row.psutil = timed(lambda: psutil_pass(pids), passes)


def exporter_process(g: Gunicorn, tmp: Path, scrapes: int) -> dict:
    """A real gunicorn-exporter on 127.0.0.1: `scrapes` GETs of /metrics, then its RSS."""
    port = free_port()
    log = open(tmp / "exporter.log", "wb")
    p = subprocess.Popen([str(VENV_BIN / "gunicorn-exporter"),
                          "--web.listen-address", f"127.0.0.1:{port}"],
                         stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    start = poll(lambda: starttime(p.pid), 10, what="exporter process")
    base = f"http://127.0.0.1:{port}"

    def up():
        if p.poll() is not None:
            raise RuntimeError(f"gunicorn-exporter exited: {(tmp / 'exporter.log').read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(base + "/-/healthy", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False
    try:
        poll(up, 30, 0.1, what="gunicorn-exporter to listen")
        with open(f"/proc/{p.pid}/status") as f:
            rss0 = int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))
        lat = []
        body = b""
        for _ in range(scrapes):
            t = time.perf_counter()
            with urllib.request.urlopen(base + "/metrics", timeout=30) as r:
                body = r.read()
            lat.append(time.perf_counter() - t)
        with open(f"/proc/{p.pid}/status") as f:
            st = f.read()
        rss = int(re.search(r"VmRSS:\s+(\d+)", st).group(1))
        hwm = int(re.search(r"VmHWM:\s+(\d+)", st).group(1))
        ok = b'gunicorn_workers{app="' in body
        return {"scrapes": scrapes, "median": median(lat), "p95": p95(lat),
                "rss_start_kib": rss0, "rss_kib": rss, "hwm_kib": hwm,
                "bytes": len(body), "has_workers": ok}
    finally:
        signal_if_same(p.pid, start, signal.SIGTERM)
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            signal_if_same(p.pid, start, signal.SIGKILL)
            p.wait(timeout=30)
        log.close()


# --------------------------------------------------------------------------
# report

def host_info() -> dict:
    procs = [n for n in os.listdir("/proc") if n.isdigit()]
    procfs = ProcFS()
    scan = timed(lambda: scan_processes(procfs), 20)
    return {
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "psutil": psutil.__version__,
        "gunicorn": subprocess.run([str(VENV_BIN / "gunicorn"), "--version"],
                                   capture_output=True, text=True).stdout.strip(),
        "ss": subprocess.run(["ss", "-V"], capture_output=True, text=True).stdout.strip(),
        "processes": len(procs),
        "scan_median": median(scan),
    }


def report(rows: list[Row], host: dict, exp: dict | None, quick: bool, total: float) -> str:
    out = []
    out.append(f"Run {time.strftime('%Y-%m-%d %H:%M:%S %Z')}{' (--quick)' if quick else ''}: "
               f"Linux {host['kernel']}, {host['cpus']} CPUs, Python {host['python']}, "
               f"{host['gunicorn']}, psutil {host['psutil']}, {host['ss']}; "
               f"{host['processes']} processes in /proc at start. Whole run {total:.0f} s.")
    out.append("")
    out.append("Times in milliseconds. *collect* = `GunicornCollector.collect()` (median / p95); "
               "*render* = snapshot to Prometheus text; *read_all* and *discover* are parts of "
               "*collect* timed alone; *ss* = one `ss -xtanp`; *psutil* = one pass of "
               "`net_connections(kind='all')` over the master and all workers (median).")
    out.append("")
    out.append("| workers | host sockets: `ss -xtan` lines (TIME-WAIT) / with inode | held conns "
               "(exporter saw) | collect median | "
               "collect p95 | render | read_all | discover | ss -xtanp | psutil per process | "
               "ss / collect | psutil / collect |")
    out.append("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        c = median(r.collect)
        seen = "?" if r.seen_active is None else str(r.seen_active)
        out.append(
            f"| {r.workers} | {r.ss_lines:,} ({r.time_wait:,}) / {r.table_size:,} | {r.held} ({seen}) | "
            f"{ms(c)} | {ms(p95(r.collect))} | {ms(median(r.render))} | {ms(median(r.read_all))} | "
            f"{ms(median(r.discover))} | {ms(median(r.ss))} | {ms(median(r.psutil))} | "
            f"{median(r.ss) / c:.1f}x | {median(r.psutil) / c:.0f}x |")
    out.append("")
    notes = []
    for r in rows:
        if r.workers_seen != r.workers or r.seen_active != r.held:
            notes.append(f"- {r.workers} workers / {r.target_sockets:,} sockets: the exporter saw "
                         f"{r.workers_seen} workers and {r.seen_active} active connections "
                         f"(expected {r.workers} and {r.held}).")
        if r.masters_seen > 1:
            notes.append(f"- {r.workers} workers / {r.target_sockets:,} sockets: {r.masters_seen} running "
                         "gunicorn masters on the host during the run (others than the bench's are "
                         "collected too).")
    big = next((r for r in rows if r.workers == 64 and r.target_sockets == 20000), None)
    if big is not None:
        c = median(big.collect)
        rs, rp = median(big.ss) / c, median(big.psutil) / c
        out.append("Targets (64 workers, ~20k sockets):")
        out.append("")
        out.append(f"- at least {TARGET_SS:.0f}x faster than one `ss -xtanp`: "
                   f"{rs:.1f}x — {'met' if rs >= TARGET_SS else 'NOT met'}")
        out.append(f"- at least {TARGET_PSUTIL:.0f}x faster than psutil per process: "
                   f"{rp:.0f}x — {'met' if rp >= TARGET_PSUTIL else 'NOT met'}")
        out.append("")
    if exp is not None:
        out.append(f"`gunicorn-exporter` process, 64 workers / ~20k sockets, {exp['scrapes']} "
                   f"scrapes of /metrics over HTTP: median {ms(exp['median'])} ms, p95 "
                   f"{ms(exp['p95'])} ms per scrape ({exp['bytes']:,} bytes); RSS "
                   f"{exp['rss_start_kib'] / 1024:.1f} MiB before, {exp['rss_kib'] / 1024:.1f} MiB "
                   f"after (peak {exp['hwm_kib'] / 1024:.1f} MiB)"
                   f"{'' if exp['has_workers'] else '; WARNING: no gunicorn_workers series'}.")
        out.append("")
    out.append(f"Process discovery: `scan_processes()` over {host['processes']} processes in /proc "
               f"takes {ms(host['scan_median'])} ms (median of 20).")
    if any(r.time_wait for r in rows):
        notes.append("- TIME-WAIT entries (left by other programs on the host) have no inode: ss and "
                     "psutil read them, the exporter's netlink dump does not ask for them.")
    if notes:
        out.append("")
        out.append("Notes:")
        out.append("")
        out.extend(notes)
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="gunicorn-exporter scrape benchmark")
    ap.add_argument("--quick", action="store_true", help="fewer repetitions")
    ap.add_argument("--out", default=str(BENCH / "results" / "latest.md"))
    ap.add_argument("--workers", default="8,64", help="worker counts (default 8,64)")
    ap.add_argument("--sockets", default="1000,20000", help="host socket counts (default 1000,20000)")
    args = ap.parse_args(argv)
    t0 = time.monotonic()
    host = host_info()
    rows: list[Row] = []
    exp = None
    tmp = Path(tempfile.mkdtemp(prefix="gexp-bench-"))
    try:
        for nw in [int(x) for x in args.workers.split(",")]:
            g = Gunicorn(nw, tmp)
            try:
                print(f"starting gunicorn with {nw} workers", file=sys.stderr, flush=True)
                g.launch()
                held = max(2, nw // 4)
                g.hold(held)
                for target in [int(x) for x in args.sockets.split(",")]:
                    lines, tw = count_host_sockets()
                    ballast = Ballast(max(0, target - (lines - tw)))
                    try:
                        row = Row(nw, target, held=held)
                        row.ss_lines, row.time_wait = count_host_sockets()
                        print(f"  {nw} workers, {row.ss_lines} sockets: measuring "
                              f"({ballast.ready})", file=sys.stderr, flush=True)
                        measure(g, row, args.quick)
                        rows.append(row)
                        if nw == 64 and target == 20000:
                            print("  gunicorn-exporter process: 50 scrapes", file=sys.stderr,
                                  flush=True)
                            exp = exporter_process(g, tmp, 50)
                    finally:
                        ballast.stop()
            finally:
                g.stop()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    text = report(rows, host, exp, args.quick, time.monotonic() - t0)
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
