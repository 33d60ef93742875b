"""What dependency attribution costs: the scrape and the sampler of a checkout with it,
beside a checkout without it, in one namespace, interleaved.

    git worktree add /tmp/gx-before 3fdedf1^     # the commit before dependencies
    git worktree add /tmp/gx-after 7107c0a       # dependencies, their clock, nothing else
    sudo .venv/bin/python bench/dependencies.py --before /tmp/gx-before --after /tmp/gx-after

One namespace of its own (bench/run.py's): 64 sync workers, every one of them in a
request that waits on a peer that never answers (64 outbound connections, all waiting),
20k sockets of ballast. Both exporters run with their default flags (sampler at 100 ms)
against the same processes and sockets: scrapes interleaved (before, after, before, ...),
then idle windows in which both are measured at once (the sampler's CPU, which the
dependency clock adds to). Prints a markdown table; docs/performance.md#dependencies.
`--reps 0` skips the scrapes: the sampler's windows only, e.g. a sampler change against
its parent commit (`git archive HEAD^ | tar -x -C /tmp/before`).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import CLK_TCK, med, spread  # noqa: E402
from run import EHASH, Others, close_all, cpu_of, interleaved, log, open_all, warm  # noqa: E402


def pct(x: float) -> str:
    return f"{100 * x:.2f} %"


def measure(before: str, after: str, sockets: int, reps: int, windows: int,
            seconds: float) -> dict:
    ehash = None
    if EHASH.exists():
        ehash = abs(int(Path("/proc/sys/net/ipv4/tcp_ehash_entries").read_text()))
    label = "deps"
    spec = dict(apps=[["app64", 64, 64]], sockets=sockets, held_on_dependency=True,
                exporters={"before": {"tree": before}, "after": {"tree": after},
                           "after, sampler off": {"tree": after,
                                                  "flags": ["--sampler.interval", "0"]}})
    log(f"starting the namespace: 64 workers waiting on a silent peer, {sockets:,} sockets")
    nss, info = open_all({label: spec}, ehash)
    ns = nss[label]
    try:
        pairs = [(label, "before"), (label, "after")]
        warm(nss, pairs, 5)
        steps = [(label, "scrape", (("target", t),)) for _, t in pairs]
        lat, cpu0, cpu1, load = {s: [] for s in steps}, {}, {}, None
        if reps:        # --reps 0: the sampler's idle windows only
            log(f"{reps} interleaved rounds")
            busy = Others(nss)
            cpu0 = cpu_of(nss, pairs)
            lat = interleaved(nss, steps, reps)
            cpu1 = cpu_of(nss, pairs)
            load = busy.share()
        idle = {"before": [], "after": [], "after, sampler off": []}
        log(f"{windows} idle windows of {seconds:.0f} s")
        busy_idle = Others(nss)
        for _ in range(windows):
            c0, t0 = ns.call("cpu", targets=list(idle)), time.monotonic()
            time.sleep(seconds)     # the window is the measurement: nothing to wait for
            c1, dt = ns.call("cpu", targets=list(idle)), time.monotonic() - t0
            for t in idle:
                idle[t].append((c1[t] - c0[t]) / CLK_TCK / dt)
        load_idle = busy_idle.share()
        text = ns.call("scrape", target="after")
    finally:
        close_all(nss)
    return {"info": info[label], "reps": reps, "load": load, "load_idle": load_idle,
            "lat": {t: lat[s] for (_, t), s in zip(pairs, steps)},
            "cpu": {t: (cpu1[(label, t)] - cpu0[(label, t)]) / CLK_TCK / reps
                    for _, t in pairs if reps},
            "idle": idle, "windows": windows, "seconds": seconds, "bytes": text.get("bytes")}


def render(r: dict, before: str, after: str, sockets: int) -> str:
    seen = r["info"]["seen"]
    workers = ", ".join("%s: %.0f" % (k, sum(v["workers"].values())) for k, v in seen.items())
    active = ", ".join("%s: %.0f" % (k, v["active"]) for k, v in seen.items())
    scraped = bool(r["reps"])
    lines = [
        f"64 sync workers, each in a request waiting on a peer that never answers; "
        f"{r['info']['ss_lines']:,} sockets (`ss -xtan`) in the namespace; both exporters saw "
        f"{workers} workers and "
        f"{active} active connections; "
        f"*after* saw {seen['after']['waiting_on_dependencies']:.0f} workers waiting on a dependency. "
        f"*before*: `{before}`, *after*: `{after}`; default flags (the sampler at 100 ms).",
        "",
        (f"| | scrape ms: median (min-max), {r['reps']} interleaved rounds "
         f"(others' CPU {pct(r['load'])}) | CPU/scrape ms " if scraped else "| ")
        + f"| idle CPU, share of a core: median (min-max), {r['windows']} × "
        f"{r['seconds']:.0f} s (others' CPU {pct(r['load_idle'])}) |",
        "|---|---:|---:|---:|" if scraped else "|---|---:|",
    ]
    for t in ("before", "after", "after, sampler off"):
        idle = r["idle"][t]
        scrape = ""
        if scraped:
            scrape = (f" {spread(r['lat'][t])} | {1000 * r['cpu'][t]:.1f} |" if t in r["cpu"]
                      else " (not scraped) | |")
        lines.append(f"| {t} |{scrape} {pct(med(idle))} "
                     f"({pct(min(idle))}-{pct(max(idle))}) |")
    off = r["idle"]["after, sampler off"]
    sampler = {t: [a - o for a, o in zip(r["idle"][t], off)] for t in ("before", "after")}
    lines += [""]
    if scraped:
        b, a = r["lat"]["before"], r["lat"]["after"]
        ratios = sorted(y / x for x, y in zip(b, a))
        lines += [f"after / before, scrape latency per round: median "
                  f"{med(ratios):.2f}x ({ratios[0]:.2f}-{ratios[-1]:.2f}); CPU per scrape "
                  f"{r['cpu']['after'] / r['cpu']['before']:.2f}x.", ""]
    lines += ["The sampler, per window (the exporter less *after* with the sampler off): "
              + "; ".join(f"{t} {pct(med(v))} ({pct(min(v))}-{pct(max(v))})"
                          for t, v in sampler.items())
              + f" of a core; after - before {med(r['idle']['after']) - med(r['idle']['before']):+.2%}."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--before", required=True, help="a checkout without dependency attribution")
    ap.add_argument("--after", required=True, help="a checkout with it")
    ap.add_argument("--sockets", type=int, default=20000)
    ap.add_argument("--reps", type=int, default=40,
                    help="interleaved scrape rounds (0: only the idle windows, the sampler)")
    ap.add_argument("--windows", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=10.0)
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench/dependencies.py needs root (namespaces)", file=sys.stderr)
        return 2
    r = measure(os.path.abspath(args.before), os.path.abspath(args.after), args.sockets,
                args.reps, args.windows, args.seconds)
    print(render(r, args.before, args.after, args.sockets))
    return 0


if __name__ == "__main__":
    sys.exit(main())
