"""The OOM collector against a real kernel OOM kill of a real gunicorn worker.

A gunicorn master runs in its own memory cgroup (v1 memory.limit_in_bytes or v2
memory.max = 150 MiB; a config-file hook puts the master there before any worker is
forked), a request to /alloc?mb=300 makes the kernel kill the worker. The exporter
must count exactly that kill against the app, within seconds, and agree with the
kernel's own counters (/proc/vmstat oom_kill, the cgroup's oom_kill) and with
gunicorn's log line.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from pathlib import Path

import pytest

from exporter.collectors.attribution import AppIndex
from exporter.collectors.gunicorn import GunicornCollector, GunicornOptions
from exporter.collectors.oom import OomCollector
from exporter.linux.cgroup import CgroupFS, MemoryCgroup
from exporter.linux.kmsg import OomKill
from exporter.metrics import render_oom
from exporter.scrape import Scraper
from exporter.snapshot import AppSnapshot, CollectorResult, GunicornSnapshot, Snapshot, WorkerSnapshot
from tests.conftest import require
from tests.harness.clients import http_get

LIMIT = 150 * 1024 * 1024


# --- a memory cgroup for the test ---------------------------------------------

class TestCgroup:
    """A child memory cgroup (v1 or v2), removed at the end."""

    __test__ = False

    def __init__(self):
        mounts = CgroupFS().mounts
        self.version = None
        name = f"gx-oom-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        if mounts.v2 and mounts.v2_memory and _writable(mounts.v2):
            self.version, self.dir = 2, Path(mounts.v2) / name
        elif mounts.v1_memory and _writable(mounts.v1_memory):
            self.version, self.dir = 1, Path(mounts.v1_memory) / name
        else:
            self.dir = None

    def create(self, limit: int) -> None:
        self.dir.mkdir()
        if self.version == 1:
            (self.dir / "memory.limit_in_bytes").write_text(str(limit))
        else:
            (self.dir / "memory.max").write_text(str(limit))
            swap = self.dir / "memory.swap.max"
            if swap.exists():
                swap.write_text("0")

    @property
    def path(self) -> str:
        return "/" + self.dir.name  # directly below the hierarchy's root

    def oom_kills(self) -> int:
        v = CgroupFS().oom_kills(MemoryCgroup(self.version, self.path))
        assert v is not None, "cgroup oom_kill counter unreadable"
        return v

    def remove(self, timeout: float = 10.0) -> None:
        if self.dir is None or not self.dir.exists():
            return
        deadline = time.monotonic() + timeout
        while True:  # bounded by the deadline: tasks leave the cgroup when reaped
            try:
                self.dir.rmdir()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise
            time.sleep(0.05)


def _writable(mount: str) -> bool:
    return os.access(mount, os.W_OK)


def vmstat_oom_kill() -> int:
    with open("/proc/vmstat") as f:
        for line in f:
            k, _, v = line.partition(" ")
            if k == "oom_kill":
                return int(v)
    raise AssertionError("no oom_kill in /proc/vmstat")


@pytest.fixture
def memcg():
    require(os.geteuid() == 0, "OOM test needs root (to create a memory cgroup)")
    cg = TestCgroup()
    require(cg.dir is not None, "no writable memory cgroup hierarchy (v1 memory or v2 with the memory controller)")
    require(os.path.exists("/proc/vmstat"), "no /proc/vmstat")
    cg.create(LIMIT)
    try:
        yield cg
    finally:
        cg.remove()


# --- the real thing ------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.timeout(120)
def test_real_oom_kill_of_a_worker_is_counted_for_its_app(memcg, gunicorn_factory, tmp_path):
    require(os.access("/dev/kmsg", os.R_OK), "cannot read /dev/kmsg")
    g = _gunicorn_in(memcg, gunicorn_factory, tmp_path, "oomapp")
    (worker,) = g.worker_pids()
    with open(f"/proc/{worker}/cgroup") as f:
        assert memcg.path in f.read(), "worker is not in the test cgroup"

    async def scenario():
        index = AppIndex()      # written by the gunicorn collector, read by oom's
        gun = GunicornCollector(GunicornOptions(control_socket=False), index=index)
        oom = OomCollector(index=index)
        scraper = Scraper([gun, oom], timeout=10)
        await oom.start()
        try:
            assert oom.source == "kmsg"
            snap = await scraper.scrape()
            app = next(a.app for a in snap.results["gunicorn"].data.apps if a.master_pid == g.pid)
            # the first scrape taught the index the app's pids, the oom collector its cgroup
            snap = await scraper.scrape()
            data = snap.results["oom"].data
            assert data.apps[app].worker_kills == 0
            assert data.apps[app].cgroup == memcg.path
            before = {"vmstat": vmstat_oom_kill(), "cgroup": memcg.oom_kills(),
                      "seen": sum(a.worker_kills + a.master_kills for a in data.apps.values())
                      + data.unattributed_kills}

            sent = time.monotonic()
            request = asyncio.get_running_loop().run_in_executor(None, _alloc, g)
            deadline = time.monotonic() + 30
            counted_at = None
            while time.monotonic() < deadline:  # poll with a deadline
                snap = await scraper.scrape()
                if snap.results["oom"].data.apps[app].worker_kills >= 1:
                    counted_at = time.monotonic()
                    break
                await asyncio.sleep(0.05)
            await request
            assert counted_at is not None, f"no OOM kill counted; recent={oom._recent!r}\n{g.diagnostics()}"
            # the kill record came with the cgroup; one more scrape for stragglers
            snap = await scraper.scrape()
            data = snap.results["oom"].data
            return app, data, before, counted_at - sent, [e for e in data.recent if e.app == app]
        finally:
            await oom.stop()

    app, data, before, seconds, events = asyncio.run(scenario())
    a = data.apps[app]
    assert a.worker_kills == 1 and a.master_kills == 0, a
    assert a.last_kill_time is not None and abs(time.time() - a.last_kill_time) < 60
    (ev,) = events
    assert ev.pid == worker and ev.role == "worker" and ev.kind == "memcg"
    assert ev.task_memcg == memcg.path and ev.attributed_by == "pid"
    # the kernel's own counters moved by the same amount
    assert memcg.oom_kills() - before["cgroup"] == 1
    assert a.cgroup_oom_kills == memcg.oom_kills()
    seen = sum(x.worker_kills + x.master_kills for x in data.apps.values()) + data.unattributed_kills
    assert vmstat_oom_kill() - before["vmstat"] == seen - before["seen"] >= 1
    assert data.kmsg_lost == 0
    # gunicorn saw it too (its guess, which the kernel record confirms)
    text = _wait_log(g, f"Worker (pid:{worker}) was sent SIGKILL! Perhaps out of memory?")
    assert "WORKER TIMEOUT" not in text
    # the rendered families
    fams = {f.name: f for f in render_oom(data)}
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in fams.values() for s in f.samples}
    assert samples[("gunicorn_worker_oom_kills_total", (("app", app),))] == 1
    assert samples[("gunicorn_oom_source_info", (("source", "kmsg"),))] == 1
    assert samples[("gunicorn_cgroup_oom_kills_total", (("app", app),))] == 1
    print(f"\nOOM kill counted {seconds:.2f}s after the request was sent; "
          f"vmstat delta {vmstat_oom_kill() - before['vmstat']}, cgroup delta 1")


def _gunicorn_in(memcg, gunicorn_factory, tmp_path, name):
    """A one-worker gunicorn whose master joins the test cgroup before forking (an
    on_starting hook in a -c file), so the worker is born inside it."""
    hook = tmp_path / "in_cgroup.py"
    hook.write_text(
        "import os\n"
        "def on_starting(server):\n"
        f"    with open({str(memcg.dir / 'cgroup.procs')!r}, 'w') as f:\n"
        "        f.write(str(os.getpid()))\n")
    return gunicorn_factory(workers=1, name=name, extra_args=["-c", str(hook)])


def _alloc(g):
    try:
        return http_get(g.unix_path, "/alloc?mb=300", timeout=30)
    except (OSError, ValueError) as e:  # the worker died mid-request: connection closed
        return e


def _wait_log(g, needle: str, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        text = g.log_text()
        if needle in text:
            return text
        assert time.monotonic() < deadline, f"{needle!r} not in the log:\n{text[-3000:]}"
        time.sleep(0.05)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_cgroup_fallback_counts_the_kill_without_kmsg(memcg, gunicorn_factory, tmp_path):
    """No /dev/kmsg (a container): the master's cgroup counter attributes the kill."""
    g = _gunicorn_in(memcg, gunicorn_factory, tmp_path, "oomfallback")
    (worker,) = g.worker_pids()

    async def scenario():
        index = AppIndex()
        gun = GunicornCollector(GunicornOptions(control_socket=False), index=index)
        oom = OomCollector(kmsg_path=str(tmp_path / "no-such-kmsg"), index=index)
        scraper = Scraper([gun, oom], timeout=10)
        await oom.start()
        snap = await scraper.scrape()
        app = next(a.app for a in snap.results["gunicorn"].data.apps if a.master_pid == g.pid)
        snap = await scraper.scrape()   # cgroup resolved, counter baseline taken
        snap = await scraper.scrape()
        assert snap.results["oom"].data.source == "cgroup"
        await asyncio.get_running_loop().run_in_executor(None, _alloc, g)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            snap = await scraper.scrape()
            if snap.results["oom"].data.apps[app].worker_kills >= 1:
                break
            await asyncio.sleep(0.05)
        await oom.stop()
        return app, snap.results["oom"].data

    app, data = asyncio.run(scenario())
    assert data.source == "cgroup"
    assert data.apps[app].worker_kills == 1
    assert data.apps[app].cgroup_oom_kills == memcg.oom_kills() == 1
    _wait_log(g, f"Worker (pid:{worker}) was sent SIGKILL!")


# --- attribution without a real kill --------------------------------------------

def _gsnap(app="shop", master=100, workers=(101, 102)) -> Snapshot:
    a = AppSnapshot(app=app, up=True, master_pid=master,
                    workers=[WorkerSnapshot(i, p, 0, 0, 0, 1, None, None, None, None, None, None)
                             for i, p in enumerate(workers)])
    s = Snapshot()
    s.results["gunicorn"] = CollectorResult("gunicorn", True, 0, data=GunicornSnapshot(apps=[a]))
    return s


def _learn(oom: OomCollector, snap: Snapshot) -> None:
    """A scrape's effect on the oom collector: the gunicorn collector writes the app
    index, the oom collector learns the apps' memory cgroups."""
    oom.index.update(snap.results["gunicorn"].data)
    oom.learn(snap)


def test_attribution_by_pid_role_and_other():
    oom = OomCollector(kmsg_path=None, cgroupfs=_FakeCgroupFS())
    _learn(oom, _gsnap())
    oom.count_kill(OomKill(pid=101, name="gunicorn", kind="memcg", killed=True))
    oom.count_kill(OomKill(pid=100, name="gunicorn", kind="global", killed=True))
    oom.count_kill(OomKill(pid=999, name="postgres", kind="global", killed=True))
    snap = asyncio.run(oom.collect())
    assert snap.apps["shop"].worker_kills == 1 and snap.apps["shop"].master_kills == 1
    assert snap.unattributed_kills == 1
    assert snap.source == "vmstat"


def test_attribution_by_cgroup_for_a_worker_never_scraped():
    cgfs = _FakeCgroupFS({100: MemoryCgroup(1, "/system.slice/shop.service")})
    oom = OomCollector(kmsg_path=None, cgroupfs=cgfs)
    _learn(oom, _gsnap())
    ev = oom.count_kill(OomKill(pid=555, name="gunicorn", kind="memcg",
                                task_memcg="/system.slice/shop.service", killed=True))
    assert (ev.app, ev.role, ev.attributed_by) == ("shop", "worker", "cgroup")
    # the root cgroup says nothing about who it was
    ev = oom.count_kill(OomKill(pid=556, name="x", kind="global", task_memcg="/", killed=True))
    assert ev.app is None


def test_pid_memory_expires_and_is_bounded():
    idx = AppIndex(max_pids=3, pid_ttl=10)
    idx.update(_gsnap(workers=(1, 2, 3, 4)).results["gunicorn"].data, now=1000)
    assert idx.pid(1, now=1001) is None          # evicted (bound 3: master 100 + 4 workers)
    assert idx.pid(4, now=1001) == ("shop", "worker")
    assert idx.pid(4, now=1011) is None          # expired


def test_cgroup_fallback_counts_increases_only_for_a_private_cgroup():
    cgfs = _FakeCgroupFS({100: MemoryCgroup(2, "/shop.slice")}, {"/shop.slice": 5})
    oom = OomCollector(kmsg_path=None, cgroupfs=cgfs)
    _learn(oom, _gsnap())
    snap = asyncio.run(oom.collect())
    assert snap.source == "cgroup" and snap.apps["shop"].worker_kills == 0  # baseline
    cgfs.values["/shop.slice"] = 7
    snap = asyncio.run(oom.collect())
    assert snap.apps["shop"].worker_kills == 2 and snap.apps["shop"].cgroup_oom_kills == 7
    cgfs.values["/shop.slice"] = 1   # cgroup re-created (service restart): counts from 0
    snap = asyncio.run(oom.collect())
    assert snap.apps["shop"].worker_kills == 3


class _FakeCgroupFS:
    def __init__(self, cgroups=None, values=None):
        self.cgroups = cgroups or {}
        self.values = values or {}

    def vmstat_oom_kill(self):
        return 42

    def memory_cgroup(self, pid):
        return self.cgroups.get(pid)

    def oom_kills(self, cg):
        return self.values.get(cg.path)


def test_one_index_serves_oom_and_logs_and_only_the_gunicorn_collector_writes_it():
    from exporter.collectors.logs import LogsCollector
    idx = AppIndex()
    oom = OomCollector(kmsg_path=None, index=idx)
    logs = LogsCollector(index=idx)
    snap = _gsnap(workers=(1, 2))
    oom.learn(snap)
    logs.learn(snap)
    assert idx.pid(2) is None              # learning reads the index, never writes it
    idx.update(snap.results["gunicorn"].data)   # what the gunicorn collector does
    assert idx.pid(2) == ("shop", "worker") and oom.index is logs.index