"""What copytruncate rotation costs the log tailer: lines lost, per mode.

A writer thread appends numbered lines at `--rate` lines a second (O_APPEND, one write
per line, as Python's logging does) while the main thread does what logrotate's
`copytruncate` does every `--rotate-every` seconds: copy the file to `NAME.1` (then
`NAME.2`...), then truncate it. A real FileTailer (exporter/logs/tail.py) follows the
file on an event loop. Every line written is numbered, so lost and duplicated lines are
counted exactly. Modes, interleaved and repeated:

* `poll`: stat every second, no recovery from the copy (the tailer before issue 24);
* `poll+copy`: the same, reading the copy's unread rest on truncation;
* `inotify+copy`: reads as soon as a line is written (the default now).

    .venv/bin/python bench/logrotate.py              # 3 x 15 s per mode, about 2.5 minutes
    .venv/bin/python bench/logrotate.py --quick      # 1 x 15 s per mode

Results in docs/performance.md#log-rotation.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from exporter.logs.tail import FileTailer  # noqa: E402

MODES = {"poll": dict(inotify=False, recover=False), "poll+copy": dict(inotify=False, recover=True),
         "inotify+copy": dict(inotify=True, recover=True)}


async def run(base, *, seconds: float = 15.0, rate: float = 100.0, rotate_every: float = 2.5,
              inotify: bool = True, recover: bool = True, interval: float = 1.0) -> dict:
    base = Path(base)
    path = base / "app.log"
    path.write_bytes(b"")
    got: list[str] = []
    tailer = FileTailer(str(path), got.append, interval=interval, inotify=inotify, recover=recover)
    await tailer.start()
    written = 0
    stop = threading.Event()

    def writer():
        nonlocal written
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        try:
            t0 = time.monotonic()
            while not stop.is_set():
                os.write(fd, b"[2026-01-01 00:00:00 +0000] [1] [INFO] line %08d padding padding\n" % written)
                written += 1
                delay = t0 + written / rate - time.monotonic()
                if delay > 0:
                    stop.wait(delay)
        finally:
            os.close(fd)

    th = threading.Thread(target=writer, daemon=True)
    th.start()
    rotations = 0
    t_end = time.monotonic() + seconds
    while time.monotonic() < t_end:
        await asyncio.sleep(rotate_every)   # the bench's schedule, not synchronisation
        rotations += 1
        copy = base / f"app.log.{rotations}"
        await asyncio.to_thread(shutil.copyfile, path, copy)    # logrotate: copy ...
        os.truncate(path, 0)                                     # ... then truncate
    stop.set()
    th.join()
    await tailer.poll()                                          # what is left in the file
    await tailer.stop()
    numbers = [int(line.split(" line ")[1].split()[0]) for line in got if " line " in line]
    received = len(set(numbers))
    return {"written": written, "received": received, "lost": written - received,
            "duplicates": len(numbers) - received, "rotations": rotations,
            "recovered": tailer.lines_recovered}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--rate", type=float, default=100.0)
    ap.add_argument("--rotate-every", type=float, default=2.5)
    args = ap.parse_args()
    repeats = 1 if args.quick else 3
    results: dict[str, list[dict]] = {m: [] for m in MODES}
    for _ in range(repeats):
        for mode, kw in MODES.items():                   # interleaved
            with tempfile.TemporaryDirectory() as d:
                results[mode].append(asyncio.run(run(d, seconds=args.seconds, rate=args.rate,
                                                     rotate_every=args.rotate_every, **kw)))
    print(f"copytruncate every {args.rotate_every} s, {args.rate:g} lines/s, {args.seconds:g} s "
          f"per run, {repeats} run(s) per mode, interleaved\n")
    print("| mode | lines written | lost: median (min-max) | lost % | duplicates | read from the copy |")
    print("|---|---|---|---|---|---|")
    for mode, rs in results.items():
        lost = [r["lost"] for r in rs]
        written = statistics.median(r["written"] for r in rs)
        print(f"| {mode} | {written:g} | {statistics.median(lost):g} ({min(lost)}-{max(lost)}) | "
              f"{100 * statistics.median(lost) / written:.2f} | {sum(r['duplicates'] for r in rs)} | "
              f"{statistics.median(r['recovered'] for r in rs):g} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
