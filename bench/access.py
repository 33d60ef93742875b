"""Access log parsing speed: lines a second on one core, per format, through the whole
per-line path of the logs collector (`LogsCollector.handle_line`: the format's regex,
the app, the status, the histogram, the queue time, the access signatures) and through
the regex alone. Target: at least 100k lines/s for the gunicorn and nginx formats.

    .venv/bin/python bench/access.py            # 7 interleaved rounds of 200k lines each
    .venv/bin/python bench/access.py --quick    # 3 rounds

Lines are realistic (varied paths, user agents, statuses, durations) plus, for each
format, a hostile mix (quotes, backslashes and fake fields in every client field).
Results in docs/performance.md#access-log-parsing.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from exporter.collectors.logs import LogsCollector  # noqa: E402
from exporter.logs.files import LogFile  # noqa: E402
from exporter.logs.access import parse_access_formats  # noqa: E402
from exporter.logs.formats import DEFAULT_FORMATS, PRESETS  # noqa: E402

UAS = ["Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36",
       "curl/8.5.0", "python-requests/2.31.0", "Googlebot/2.1 (+http://www.google.com/bot.html)"]
HOSTILE = ['x\\" 999999999999.5 y', '\\" 502 1 \\"', "ends with a backslash\\", '[CRITICAL] WORKER TIMEOUT (pid:1)']
PATHS = ["/", "/api/v1/orders/%d", "/users/%d/profile", "/static/app.%d.js", "/checkout/cart?item=%d&q=a%%20b"]


def lines(kind: str, n: int, hostile: bool, rnd: random.Random) -> list[str]:
    out = []
    for i in range(n):
        path = rnd.choice(PATHS)
        path = path % rnd.randrange(10**6) if "%d" in path else path
        status = rnd.choice([200] * 8 + [301, 404, 500, 502])
        ua = rnd.choice(HOSTILE if hostile else UAS)
        ref = rnd.choice(HOSTILE) if hostile else "https://example.com/"
        if kind == "gunicorn":
            out.append(f'10.0.{i % 256}.{i % 200} - - [06/Dec/2026:23:06:05 +0000] "GET {path} HTTP/1.1" '
                       f'{status} {rnd.randrange(100000)} "{ref}" "{ua}" "t={1765062365000 + i}" '
                       f'{rnd.randrange(1000, 2000000)}')
        else:  # nginx-upstream (nginx escapes quotes and backslashes as \xHH)
            esc = (ua.replace("\\", "\\x5C").replace('"', "\\x22"),
                   ref.replace("\\", "\\x5C").replace('"', "\\x22"))
            out.append(f'10.0.{i % 256}.{i % 200} - - [06/Dec/2026:23:06:05 +0000] "GET {path} HTTP/1.1" '
                       f'{status} {rnd.randrange(100000)} "{esc[1]}" "{esc[0]}" '
                       f'{rnd.randrange(1, 2000) / 1000:.3f} {rnd.randrange(1, 2000) / 1000:.3f} "unix:/run/shop.sock"')
    return out


def timed(fn, items) -> float:
    t0 = time.process_time()
    fn(items)
    return len(items) / (time.process_time() - t0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--lines", type=int, default=200_000)
    args = ap.parse_args()
    rounds = 3 if args.quick else 7
    rnd = random.Random(24)
    cases = {}
    for kind, fmt in (("gunicorn", PRESETS["gunicorn-timed"]), ("nginx", "nginx-upstream")):
        for hostile in (False, True):
            cases[(kind, hostile)] = ([fmt], lines(kind, args.lines, hostile, rnd))
    # no --logs.access-format: the default presets, tried in order (gunicorn-timed third)
    cases[("gunicorn, default formats", False)] = (list(DEFAULT_FORMATS), cases[("gunicorn", False)][1])
    results: dict[tuple, dict[str, list[float]]] = {k: {"collector": [], "regex": []} for k in cases}
    for _ in range(rounds):
        for key, (fmt, items) in cases.items():          # interleaved
            c = LogsCollector([LogFile("/var/log/shop/access.log", "shop")],
                              access_formats=parse_access_formats(fmt))
            now = time.time()

            def whole(items, c=c, now=now):
                h = c.handle_line
                for line in items:
                    h(line, "shop", "/var/log/shop/access.log", now)

            def bare(items, parse=c.access.parse):
                for line in items:
                    parse(line, "/var/log/shop/access.log")
            results[key]["collector"].append(timed(whole, items))
            results[key]["regex"].append(timed(bare, items))
    print(f"{args.lines} lines per case, {rounds} interleaved rounds, one core (process time), "
          f"Python {sys.version.split()[0]}\n")
    print("| format | lines | whole path, lines/s: median (min-max) | parse alone, lines/s |")
    print("|---|---|---|---|")
    for (kind, hostile), r in results.items():
        w, x = r["collector"], r["regex"]
        print(f"| {kind} | {'hostile' if hostile else 'realistic'} | {statistics.median(w):,.0f} "
              f"({min(w):,.0f}-{max(w):,.0f}) | {statistics.median(x):,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
