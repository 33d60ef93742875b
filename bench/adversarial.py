"""Worst-case cost of the exporter's parsers on hostile inputs (docs/security.md).

Every input here is something a local user can make the exporter read: a process's maps,
command line, config file, control socket answer, or a kernel OOM record carrying a
crafted cgroup name. Each case is timed in-process, repeated, and reported as median and
max in milliseconds; the old `/proc/PID/maps` regular expression is timed beside its
replacement on a smaller input (it is quadratic, so the full input would take minutes).
The process scan is timed on this host's real /proc as the cost per process examined.

    .venv/bin/python bench/adversarial.py            # about 10 s
    .venv/bin/python bench/adversarial.py --repeat 3 # quicker

Prints a markdown table; docs/performance.md#worst-case-inputs keeps the latest run.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from exporter.gunicorn import confeval, control  # noqa: E402
from exporter.gunicorn.cmdline import parse_title  # noqa: E402
from exporter.gunicorn.discovery import scan_processes  # noqa: E402
from exporter.gunicorn.settings import DEFAULTS, resolve  # noqa: E402
from exporter.gunicorn.version import site_dirs_from_maps  # noqa: E402
from exporter.labels import bounded  # noqa: E402
from exporter.linux import kmsg  # noqa: E402
from exporter.linux.procfs import ProcFS  # noqa: E402
from exporter.logs import caddy  # noqa: E402

OLD_SITE_DIR_RE = re.compile(r"(/\S*?/(?:site|dist)-packages)/")  # before this change


def maps_text(lines: int) -> str:
    path = "/a" * 2000  # many slashes: each is a place the old regex started again
    return "".join(f"7f{i:010x}-7f{i + 1:010x} r--p 00000000 08:01 {i} {path[:4000]}\n"
                   for i in range(lines))


def caddy_access(uri: str = "/", headers: int = 2) -> str:
    """An access entry as Caddy 2.6 writes it, with `headers` request headers."""
    hdrs = ",".join(f'"X-H{i}":["{"v" * 20}"]' for i in range(headers))
    return ('{"level":"info","ts":1796598358.8062773,"logger":"http.log.access.log0",'
            '"msg":"handled request","request":{"remote_ip":"127.0.0.1","remote_port":"38578",'
            f'"proto":"HTTP/1.1","method":"GET","host":"shop","uri":"{uri}","headers":{{{hdrs}}}}},'
            '"user_id":"","duration":0.001532858,"size":2,"status":200,'
            '"resp_headers":{"Server":["Caddy","gunicorn"]}}')


CADDY_LINES = [caddy_access(f"/item/{i}", 8) for i in range(10_000)]


CASES = {
    # name: (function, input description)
    "maps 1 MiB, 4,000-char paths (linear parser)":
        (lambda t=maps_text(256): site_dirs_from_maps(t), "256 lines"),
    "maps, old regex, 4 lines only":
        (lambda t=maps_text(4): list(OLD_SITE_DIR_RE.finditer(t)), "4 lines"),
    "config: 100 kB expression":
        (lambda t="timeout = " + "+".join(["1"] * 50_000): confeval.evaluate(
            t, names=DEFAULTS, environ={}, cpu_count=2, affinity=2), "50,000 terms"),
    "config: 10**10**10, 'x'*10**9, 1e999":
        (lambda t="a = 10**10**10\nb = 'x' * 10**9\ntimeout = 1e999\n": confeval.evaluate(
            t, names=DEFAULTS, environ={}, cpu_count=2, affinity=2), "3 lines"),
    "config: 5,000 dependent statements":
        (lambda t="workers = 1\n" + "workers = workers + 1\n" * 5000: confeval.evaluate(
            t, names=DEFAULTS, environ={}, cpu_count=2, affinity=2), "5,001 lines"),
    "config: 256 KiB of literals":
        (lambda t=("x = [" + ", ".join(["'abcdefgh'"] * 20_000) + "]\n"): confeval.evaluate(
            t[:256 * 1024 - 2] + "]\n", names=DEFAULTS, environ={}, cpu_count=2, affinity=2),
         "one 256 KiB list"),
    "control answer: 1 MiB nested JSON":
        (lambda t=b"[" * 500_000 + b"]" * 500_000: _swallow(control.decode_answer, t), "depth 500,000"),
    "control answer: 1 MiB flat JSON":
        (lambda t=b'{"data": "' + b"x" * (1024 * 1024 - 40) + b'"}': _swallow(control.decode_answer, t),
         "one string"),
    "argv: 64 KiB, parsed as gunicorn args":
        (lambda a=["/venv/bin/gunicorn"] + ["-b", "x" * 1000] * 32: resolve(a[1:], {}), "64 args"),
    "title: 64 KiB":
        (lambda a=["gunicorn: master [" + "n" * 65_000 + "]"]: parse_title(a), "one string"),
    "label: 4 MiB name":
        (lambda s="n" * (4 << 20): bounded(s), "4 MiB"),
    "kmsg: 4 KiB crafted OOM record":
        (lambda m=("oom-kill:constraint=CONSTRAINT_NONE" + ",task=" + "x" * 60 + ",pid=1") * 40:
         kmsg.parse_oom(m[:4096]), "4 KiB"),
    "Caddy line: 32 KiB nested JSON":
        (lambda t='{"logger":"http.log.access","x":' + "[" * 16_000 + "]" * 16_000 + "}":
         caddy.parse(t[:caddy.MAX_LINE]), "depth 16,000"),
    "Caddy line: 32 KiB of request headers":
        (lambda t=caddy_access("/", 950): caddy.parse(t), "950 headers"),
    "Caddy line: 1 MiB (over the limit)":
        (lambda t=caddy_access("/" + "x" * (1 << 20)): caddy.parse(t), "1 MiB"),
    "Caddy: 10,000 ordinary access entries (8 headers)":
        (lambda: [caddy.parse(x) for x in CADDY_LINES], "10,000 lines of 590 B"),
    "kmsg: 4 KiB 'Killed process' record":
        (lambda m="Out of memory: Killed process 1 (" + "(" * 4000: kmsg.parse_oom(m), "4 KiB"),
}


def _swallow(fn, arg):
    try:
        return fn(arg)
    except control.ControlError:
        return None


def timed(fn, repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1000)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args()
    print("| Input | Size | Median ms | Max ms |")
    print("|---|---|---:|---:|")
    for name, (fn, size) in CASES.items():
        ms = timed(fn, args.repeat)
        print(f"| {name} | {size} | {statistics.median(ms):.2f} | {max(ms):.2f} |")
    procfs = ProcFS()
    pids = sum(1 for n in os.listdir("/proc") if n.isdigit())
    ms = timed(lambda: scan_processes(procfs), args.repeat)
    print(f"| process scan of this host's /proc | {pids} processes | "
          f"{statistics.median(ms):.2f} | {max(ms):.2f} |")
    print(f"\nper process examined: {statistics.median(ms) * 1000 / pids:.1f} µs (median)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
