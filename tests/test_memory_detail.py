"""Per-worker USS and PSS (psutil, every --gunicorn.memory-detail-interval) against
/proc/PID/smaps_rollup read directly, on a preloaded app whose workers share a 200 MiB
array with their master: RSS says 200 MiB a worker, USS says what a worker really adds."""

from __future__ import annotations

from pathlib import Path

import pytest

from exporter.gunicorn.memdetail import MemoryDetail, read_memory
from tests.conftest import require
from tests.exposition import scrape
from tests.harness.procs import poll, unique_name
from tests.harness.servers import running_exporter

MiB = 1024 * 1024


def smaps_rollup(pid: int) -> dict[str, int]:
    """The kernel's own sums for the process, in bytes (the oracle)."""
    out = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, _, rest = line.partition(":")
        parts = rest.split()
        if len(parts) == 2 and parts[1] == "kB":
            out[key] = int(parts[0]) * 1024
    return out


def uss_of(rollup: dict[str, int]) -> int:
    return rollup["Private_Clean"] + rollup["Private_Dirty"] + rollup.get("Private_Hugetlb", 0)


def test_read_memory_is_the_kernels_rollup_and_refuses_another_process():
    import os
    import time
    import psutil
    me = psutil.Process()
    uss, pss = read_memory(os.getpid(), me.create_time())
    rollup = smaps_rollup(os.getpid())
    assert abs(uss - uss_of(rollup)) < 8 * MiB and abs(pss - rollup["Pss"]) < 8 * MiB
    assert read_memory(os.getpid(), me.create_time() - 100) is None   # a reused pid
    assert read_memory(2 ** 22 + 1, time.time()) is None               # no such process
    assert MemoryDetail(0).get(os.getpid(), me.create_time()) is None


def workers(series, app: str) -> dict[str, dict]:
    """slot -> {pid, rss, uss, pss} of one app in a scrape."""
    out: dict[str, dict] = {}
    for (name, labels), v in series.items():
        lab = dict(labels)
        if lab.get("app") != app or "worker" not in lab:
            continue
        w = out.setdefault(lab["worker"], {})
        if name == "gunicorn_worker_pid":
            w["pid"] = int(v)
        for metric, key in (("gunicorn_worker_resident_memory_bytes", "rss"),
                            ("gunicorn_worker_unique_memory_bytes", "uss"),
                            ("gunicorn_worker_proportional_memory_bytes", "pss")):
            if name == metric:
                w[key] = v
    return out


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_preloaded_apps_workers_share_its_memory(gunicorn_factory, tmp_path):
    require(Path("/proc/self/smaps_rollup").exists(), "no /proc/PID/smaps_rollup (Linux < 4.14)")
    g = gunicorn_factory(app="shared_app:app", workers=2, name=unique_name("shared"),
                         extra_args=["--preload"])
    with running_exporter(tmp_path, "--no-collector.postgres",
                          "--gunicorn.memory-detail-interval", "1s") as base:
        def both():
            series = scrape(base)
            got = workers(series, g.name)
            return len(got) == 2 and all("uss" in w and "pss" in w for w in got.values()) and \
                (got, series)
        got, series = poll(both, 30, message="no USS/PSS for both workers")
    assert {w["pid"] for w in got.values()} == set(g.worker_pids())
    # the app's sums, in the same scrape (what --gunicorn.worker-series=none serves)
    for name, key in (("gunicorn_workers_unique_memory_bytes", "uss"),
                      ("gunicorn_workers_proportional_memory_bytes", "pss"),
                      ("gunicorn_workers_resident_memory_bytes", "rss")):
        assert series[(name, (("app", g.name),))] == sum(w[key] for w in got.values()), name
    for w in got.values():
        assert w["rss"] >= 190 * MiB, w               # RSS: the whole shared array
        assert w["uss"] < 50 * MiB, w                 # USS: far below it
        assert w["uss"] < w["pss"] < w["rss"], w
        rollup = smaps_rollup(w["pid"])               # the kernel's numbers, a moment later
        assert abs(w["uss"] - uss_of(rollup)) < 8 * MiB, (w, rollup)
        assert abs(w["pss"] - rollup["Pss"]) < 8 * MiB, (w, rollup)
        print(f"\nworker {w['pid']}: RSS {w['rss'] / MiB:.0f} MiB, PSS {w['pss'] / MiB:.0f} MiB, "
              f"USS {w['uss'] / MiB:.1f} MiB (smaps_rollup: Rss {rollup['Rss'] / MiB:.0f}, "
              f"Pss {rollup['Pss'] / MiB:.0f}, private {uss_of(rollup) / MiB:.1f})")
