"""Which stopped apps are remembered (gunicorn_up 0), for how long, and that the other
collectors' per-app series go with them: on literal inputs (fast). The real
unprivileged user starting and stopping short-lived masters is
tests/test_hostile.py (test_short_lived_masters_are_not_remembered)."""

from __future__ import annotations

import asyncio
import time

from exporter.collectors.attribution import AppIndex
from exporter.collectors.gunicorn import GunicornCollector, GunicornOptions
from exporter.collectors.oom import KEEP_KILLED, OomCollector
from exporter.gunicorn.memory import CpuTotals, KnownApps
from exporter.linux.kmsg import OomKill
from exporter.snapshot import AppSnapshot, GunicornSnapshot, ListenerSnapshot, WorkerSnapshot


def test_an_app_is_remembered_only_once_established_and_forgotten_after_the_window():
    known = KnownApps(forget_after=3600, expected=("must-run",))
    known.seen("quick", 1000, now=0, established=False)
    assert "quick" not in known and len(known) == 0
    known.seen("shop", 33, now=10, established=True)
    assert "shop" in known
    known.seen("shop", 33, now=20, established=False)   # restarted: its new master is young
    assert "shop" in known
    known.expire(now=20 + 3600)
    assert "shop" in known                               # gone exactly the window: kept
    known.expire(now=20 + 3600.5)
    assert "shop" not in known and "must-run" in known   # expected apps are never forgotten
    never = KnownApps(forget_after=0)
    never.seen("shop", 33, now=0)
    never.expire(now=1e9)
    assert "shop" in never


def test_the_cap_stays_and_evicts_the_heaviest_users_oldest():
    known = KnownApps(limit=3, forget_after=3600)
    known.seen("real", 33, now=0)
    for i in range(5):
        known.seen(f"fake{i}", 1000, now=1 + i)
    assert len(known) == 3 and "real" in known and known.evicted == 3
    assert known.names() == {"real", "fake3", "fake4"}


def _app(name, *, started, workers=1, listeners=1, up=True, pid=100) -> AppSnapshot:
    return AppSnapshot(
        app=name, up=up, master_pid=pid - 1, master_start_time=started,
        workers=[WorkerSnapshot(i, pid + i, started, 0, 0.0, 1, None, None, None, None, None, None)
                 for i in range(workers)],
        listeners=[ListenerSnapshot("127.0.0.1:8000", "tcp", 0, 128) for _ in range(listeners)])


def test_established_means_workers_a_listener_and_a_master_up_for_remember_after():
    c = GunicornCollector(GunicornOptions(remember_after=60))
    now = 10_000.0
    assert c._established(_app("shop", started=now - 60), now)
    assert not c._established(_app("young", started=now - 59), now)
    assert not c._established(_app("fake", started=now - 3600, workers=0), now)
    assert not c._established(_app("nolisten", started=now - 3600, listeners=0), now)
    assert not c._established(AppSnapshot(app="unknown", up=True), now)
    assert GunicornCollector(GunicornOptions(remember_after=0))._established(
        _app("test", started=now), now)


def test_the_workers_cpu_counter_never_goes_down():
    cpu = CpuTotals()

    def w(pid, seconds, start=1.0):
        return WorkerSnapshot(0, pid, start, 0, seconds, 1, None, None, None, None, None, None)
    assert cpu.add("shop", [w(1, 10.0), w(2, 5.0)], now=0) == 15.0
    assert cpu.add("shop", [w(1, 12.0), w(2, 6.0)], now=15) == 18.0
    # worker 2 recycled: pid 3 is new (counted whole); worker 2's 6 s stay counted
    assert cpu.add("shop", [w(1, 13.0), w(3, 0.5)], now=30) == 19.5
    # a pid reused by a new process (other start time) is a new worker
    assert cpu.add("shop", [w(1, 13.0), w(3, 0.5, start=99.0)], now=45) == 20.0
    cpu.keep_only({"other"}, now=60)
    assert cpu.add("shop", [w(1, 13.0)], now=75) == 13.0    # forgotten: starts again


def _gsnap(*apps) -> GunicornSnapshot:
    return GunicornSnapshot(apps=list(apps))


def test_oom_series_go_with_the_app_unless_it_was_killed_lately():
    index = AppIndex()
    oom = OomCollector(kmsg_path=None, index=index)
    t = time.time()
    index.update(_gsnap(_app("shop", started=0), _app("fake", started=0, pid=200),
                        _app("gone", started=0, up=False)), now=t)
    assert set(index.apps) == {"shop", "fake", "gone"}
    oom.count_kill(OomKill(pid=200, name="gunicorn", kind="memcg", killed=True))
    snap = asyncio.run(oom.collect())
    assert set(snap.apps) == {"shop", "fake", "gone"}
    index.update(_gsnap(_app("shop", started=0)), now=t + 15)   # fake stopped, gone forgotten
    assert set(index.apps) == {"shop"}
    snap = asyncio.run(oom.collect())
    assert set(snap.apps) == {"shop", "fake"}             # fake's worker was killed just now
    oom._apps["fake"].last_kill_time -= KEEP_KILLED + 1
    assert set(asyncio.run(oom.collect()).apps) == {"shop"}
