#!/usr/bin/env python3
"""How many statsd datagrams a second the exporter takes without loss, and what
attributing a sender costs. Not a test: numbers for docs/performance.md#statsd-receiver.

    .venv/bin/python bench/statsd.py            # about 3 minutes on 2 cores
    .venv/bin/python bench/statsd.py --quick    # fewer runs, about 1 minute

Scenarios (each run: a sender process paced at RATE datagrams/s for SECONDS, gunicorn's
three lines per request in rotation, one line per datagram as gunicorn sends them):

* exporter: a real `python -m exporter` (every default collector on) scraped over HTTP
  every second, receiving on its statsd socket; with `--statsd.receive-buffer` 8MiB (the
  default) and 0 (the kernel's default, 208 KiB here);
* receiver: the receive path alone in a child process (`--child`), asyncio's datagram
  transport against the batched reader, collect() once a second, at several rates;
* unpaced: the sender as fast as it can: what the receiver sustains at most;
* attribution: real gunicorn masters send to an in-process StatsdCollector; the cost of
  the first lookup (UDP table + fd scans), of a verification, and of a sender no
  gunicorn holds (every gunicorn process scanned).

Loss is counted three ways: datagrams sent minus received, the socket's own drop counter
(sk_drops, netlink sock_diag), and the host's `Udp: RcvbufErrors` (/proc/net/snmp; other
processes could add to it, the report says when they differ). Only processes started
here are stopped, by PID; every wait polls with a deadline.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

LINES = (b"gunicorn.request.duration:12.345|ms", b"gunicorn.requests:1|c|@1.0",
         b"gunicorn.request.status.200:1|c|@1.0")


def free_port(kind=socket.SOCK_DGRAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rcvbuf_errors() -> int:
    with open("/proc/net/snmp") as f:
        rows = [line.split() for line in f if line.startswith("Udp:")]
    return int(rows[1][rows[0].index("RcvbufErrors")])


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def sender(port: int, rate: float, seconds: float) -> tuple[int, float]:
    """Send at `rate` datagrams/s (0: as fast as possible) for `seconds`: (sent, elapsed)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.connect(("127.0.0.1", port))
    send, sent = s.send, 0
    t0 = time.perf_counter()
    end = t0 + seconds
    tick = 0.001
    per_tick = rate * tick
    due = 0.0
    while True:
        now = time.perf_counter()
        if now >= end:
            break
        if rate:
            due = (now - t0) * rate
            n = int(due) - sent
            if n <= 0:
                time.sleep(min(tick, end - now))
                continue
            n = min(n, int(per_tick * 20) + 1)
        else:
            n = 1000
        for i in range(sent, sent + n):
            try:
                send(LINES[i % 3])
            except OSError:        # ECONNREFUSED after an ICMP: keep going
                pass
        sent += n
    elapsed = time.perf_counter() - t0
    s.close()
    return sent, elapsed


def run_sender(port: int, rate: float, seconds: float) -> tuple[int, float]:
    out = subprocess.run([sys.executable, __file__, "--send", str(port), str(rate), str(seconds)],
                         capture_output=True, text=True, timeout=seconds + 60, check=True)
    sent, elapsed = out.stdout.split()
    return int(sent), float(elapsed)


def wait_quiet(read, deadline_s: float = 10.0):
    """Poll `read()` until it stops changing (the receiver drained), with a deadline."""
    last, end = read(), time.monotonic() + deadline_s
    while time.monotonic() < end:
        time.sleep(0.2)
        now = read()
        if now == last:
            return now
        last = now
    return last


# --- the receive path alone, in a child ----------------------------------------------

async def child_main(mode: str, port: int, buffer: int) -> None:
    from exporter.collectors.statsd import StatsdCollector
    c = StatsdCollector(f"127.0.0.1:{port}", receive_buffer=buffer, mode=mode)
    await c.start()
    print("ready", flush=True)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        try:
            line = await asyncio.wait_for(reader.readline(), 1.0)
        except asyncio.TimeoutError:
            await c.collect()          # a scrape's work, once a second
            continue
        if not line or line.strip() == b"quit":
            break
        snap = await c.collect()
        print(json.dumps({"packets": snap.packets, "drops": snap.kernel_drops,
                          "buffer": snap.receive_buffer}), flush=True)
    await c.stop()


class Child:
    def __init__(self, mode: str, buffer: int):
        self.port = free_port()
        self.proc = subprocess.Popen([sys.executable, __file__, "--child", mode, str(self.port),
                                      str(buffer)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True)
        assert self.proc.stdout.readline().strip() == "ready"

    def stats(self) -> dict:
        self.proc.stdin.write("stats\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def stop(self):
        self.proc.stdin.write("quit\n")
        self.proc.stdin.flush()
        self.proc.wait(10)


class Exporter:
    def __init__(self, buffer: str, tmp: str):
        self.port, self.web = free_port(), free_port(socket.SOCK_STREAM)
        self.log = open(Path(tmp) / f"exporter-{self.web}.log", "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "exporter", "--web.listen-address", f"127.0.0.1:{self.web}",
             "--statsd.listen-address", f"127.0.0.1:{self.port}", "--statsd.receive-buffer",
             buffer], cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT)
        end = time.monotonic() + 20
        while self.scrape() is None:
            assert time.monotonic() < end and self.proc.poll() is None, "exporter did not start"
            time.sleep(0.1)

    def scrape(self) -> dict | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.web}/metrics", timeout=10) as r:
                text = r.read().decode()
        except OSError:
            return None
        out = {}
        for line in text.splitlines():
            if line.startswith("gunicorn_statsd_") or line.startswith("gunicorn_exporter_collector_duration"):
                name, _, v = line.rpartition(" ")
                out[name] = float(v)
        return out

    def stats(self) -> dict:
        m = self.scrape()
        return {"packets": m["gunicorn_statsd_packets_total"],
                "drops": m.get("gunicorn_statsd_dropped_packets_total"),
                "buffer": m.get("gunicorn_statsd_receive_buffer_bytes")}

    def stop(self):
        self.proc.terminate()
        self.proc.wait(15)
        self.log.close()


def one_run(target, rate: float, seconds: float, scrape_every: float | None) -> dict:
    before, snmp0, cpu0 = target.stats(), rcvbuf_errors(), cpu_seconds(target.proc.pid)
    if scrape_every:   # scrape while the sender sends (the HTTP server shares the loop)
        proc = subprocess.Popen([sys.executable, __file__, "--send", str(target.port), str(rate),
                                 str(seconds)], stdout=subprocess.PIPE, text=True)
        while proc.poll() is None:
            target.scrape()
            time.sleep(scrape_every)
        sent, elapsed = map(float, proc.stdout.read().split())
    else:
        sent, elapsed = run_sender(target.port, rate, seconds)
    after = wait_quiet(lambda: target.stats()["packets"]) and target.stats()
    cpu = cpu_seconds(target.proc.pid) - cpu0
    got = after["packets"] - before["packets"]
    return {"sent": sent, "rate": sent / elapsed, "received": got, "got_rate": got / elapsed,
            "lost": sent - got,
            "sk_drops": (after["drops"] or 0) - (before["drops"] or 0),
            "rcvbuf_errors": rcvbuf_errors() - snmp0, "cpu_us": cpu / max(got, 1) * 1e6,
            "cores": cpu / elapsed, "buffer": after["buffer"]}


def summary(name: str, rate: float, runs: list[dict]) -> str:
    def med(key, fmt="{:,.0f}"):
        vals = [r[key] for r in runs]
        return f"{fmt.format(statistics.median(vals))} ({fmt.format(min(vals))}–{fmt.format(max(vals))})"
    return (f"| {name} | {rate:,.0f} | {len(runs)} | {med('rate')} | {med('got_rate')} "
            f"| {med('lost')} | {med('sk_drops')} | {med('rcvbuf_errors')} "
            f"| {med('cpu_us', '{:.2f}')} | {med('cores', '{:.2f}')} "
            f"| {runs[0]['buffer'] / 1024:,.0f} KiB |")


# --- attribution cost -------------------------------------------------------------------

async def attribution(n_apps: int) -> list[str]:
    from exporter.collectors.gunicorn import GunicornCollector
    from exporter.collectors.statsd import StatsdCollector
    from exporter.snapshot import CollectorResult, Snapshot
    from tests.harness.masters import Gunicorn
    port = free_port()
    c = StatsdCollector(f"127.0.0.1:{port}")
    await c.start()
    tmp = Path(tempfile.mkdtemp(prefix="bench-statsd-"))
    apps = [Gunicorn.start(tmp, workers=2, bind="tcp", name=f"benchsd{i}",
                           extra_args=["--statsd-host", f"127.0.0.1:{port}"]) for i in range(n_apps)]
    try:
        g = await GunicornCollector().collect()
        c.learn(Snapshot(results={"gunicorn": CollectorResult("gunicorn", True, 0, data=g)}))
        for a in apps:
            a.get("/")
        end = time.monotonic() + 10
        while c.table.packets < 3 * n_apps and time.monotonic() < end:
            await asyncio.sleep(0.05)
        snap = await c.collect()
        first = c.last_cost
        t0 = time.perf_counter()
        await c.collect()
        verify = time.perf_counter() - t0
        alien = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        before = c.table.packets
        alien.sendto(b"gunicorn.request.status.200:1|c", ("127.0.0.1", port))
        end = time.monotonic() + 10   # received before the collection that must look it up
        while c.table.packets == before and time.monotonic() < end:
            await asyncio.sleep(0.01)
        if c.table.packets == before:
            raise RuntimeError("the unknown sender's datagram never arrived")
        await c.collect()
        worst = c.last_cost
        alien.close()
        procs = len(c.pmap.procs)
        return [f"| {n_apps} apps ({procs} gunicorn processes on the host) | first lookup of {n_apps} senders: "
                f"{first[2] * 1e3:.2f} ms ({first[0]} fd tables, {first[1]} fds) | a collection that verifies them: "
                f"{verify * 1e3:.2f} ms | a sender no gunicorn holds: {worst[2] * 1e3:.2f} ms ({worst[0]} fd tables, "
                f"{worst[1]} fds) | kernel-attributed senders: {snap.senders.get('kernel')} |"]
    finally:
        for a in apps:
            a.stop()
        await c.stop()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "statsd.md")
    p.add_argument("--send", nargs=3, help=argparse.SUPPRESS)
    p.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.send:
        sent, elapsed = sender(int(a.send[0]), float(a.send[1]), float(a.send[2]))
        print(sent, elapsed)
        return 0
    if a.child:
        asyncio.run(child_main(a.child[0], int(a.child[1]), int(a.child[2])))
        return 0
    runs, seconds = (2, 5.0) if a.quick else (5, a.seconds)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for buffer in ("8MiB", "0"):
            e = Exporter(buffer, tmp)
            try:
                rows.append(summary(f"exporter, scraped every 1 s, buffer {buffer}", 50_000,
                                    [one_run(e, 50_000, seconds, 1.0) for _ in range(runs)]))
                print(rows[-1], flush=True)
            finally:
                e.stop()
    for mode in ("transport", "batch"):
        for rate in (50_000, 100_000, 150_000):
            c = Child(mode, 8 << 20)
            try:
                rows.append(summary(f"receive path alone, {mode}", rate,
                                    [one_run(c, rate, seconds / 2, None) for _ in range(max(2, runs - 2))]))
                print(rows[-1], flush=True)
            finally:
                c.stop()
    for mode in ("transport", "batch"):
        c = Child(mode, 8 << 20)
        try:
            rows.append(summary(f"unpaced sender, {mode}", 0,
                                [one_run(c, 0, 3.0, None) for _ in range(max(2, runs - 2))]))
            print(rows[-1], flush=True)
        finally:
            c.stop()
    attr = asyncio.run(attribution(4))
    print(attr[0], flush=True)
    header = (f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: Linux {os.uname().release}, "
              f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}; {runs} runs of {seconds:g} s "
              f"(receive path alone: {seconds / 2:g} s); median (min–max).\n\n"
              "| scenario | target rate /s | runs | sent /s | received /s | lost (sent − received) "
              "| sk_drops | RcvbufErrors | CPU µs per datagram received | cores | SO_RCVBUF (getsockopt) |\n"
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
    text = header + "\n".join(rows) + "\n\nAttribution:\n\n| setup | lookup | verify | worst case | result |\n|---|---|---|---|---|\n" + attr[0] + "\n"
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(text)
    print(f"\nwritten to {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
