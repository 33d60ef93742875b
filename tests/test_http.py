"""The daemon end to end: the real CLI process serving a real gunicorn, and the scraper's limits."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import sys
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from exporter.collectors.base import Collector
from exporter.scrape import Scraper
from tests.conftest import require
from tests.harness.procs import free_port, poll, unique_name
from tests.harness.servers import running_exporter, stop_process

pytestmark = [pytest.mark.timeout(60)]


@pytest.fixture
def exporter_process(tmp_path):
    """Yields start(*args) -> base URL of a `python -m exporter`; all stopped at teardown."""
    with contextlib.ExitStack() as stack:
        yield lambda *args: stack.enter_context(running_exporter(tmp_path, *args))


def _get(url, accept=None, timeout=10):
    req = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.headers.get("Content-Type"), r.read().decode()
    except OSError:
        return None, None, None


def samples(text):
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


@pytest.mark.slow
def test_metrics_of_a_real_gunicorn_pass_promtool(gunicorn_factory, exporter_process, tmp_path):
    g = gunicorn_factory(worker_class="gthread", threads=2, bind="tcp", workers=2,
                         name=unique_name("e2e"))
    base = exporter_process()
    status, ctype, text = _get(base + "/metrics")
    assert status == 200 and ctype.startswith("text/plain")
    got = samples(text)
    assert got[("gunicorn_up", (("app", g.name),))] == 1
    assert got[("gunicorn_exporter_collector_success", (("collector", "gunicorn"),))] == 1
    poll(lambda: samples(_get(base + "/metrics")[2]).get(("gunicorn_workers", (("app", g.name),))) == 2,
         10, message="workers not reported")
    require(shutil.which("promtool") is not None,
            "promtool not installed (Debian package 'prometheus'); cannot lint /metrics")
    lint = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True,
                          text=True, timeout=30)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    assert lint.stdout.strip() == "" and lint.stderr.strip() == "", lint.stdout + lint.stderr


@pytest.mark.slow
def test_openmetrics_landing_and_health(exporter_process):
    base = exporter_process("--no-collector.gunicorn")
    status, ctype, text = _get(base + "/metrics", accept="application/openmetrics-text; version=1.0.0")
    assert status == 200 and ctype.startswith("application/openmetrics-text")
    assert text.rstrip().endswith("# EOF")
    status, ctype, page = _get(base + "/")
    assert status == 200 and 'href="/metrics"' in page
    assert _get(base + "/-/healthy")[:2] == (200, "text/plain; charset=utf-8")
    got = samples(_get(base + "/metrics")[2])
    assert ("gunicorn_exporter_collector_success", (("collector", "gunicorn"),)) not in got
    assert got[("gunicorn_exporter_collector_success", (("collector", "netstat"),))] == 1


@pytest.mark.slow
def test_custom_telemetry_path(exporter_process):
    base = exporter_process("--web.telemetry-path", "/m", "--no-collector.gunicorn")
    assert _get(base + "/m")[0] == 200
    assert _get(base + "/metrics")[0] is None  # 404 -> urllib raises -> None


class _Hangs(Collector):
    name = "hangs"

    async def collect(self):
        await asyncio.Event().wait()


class _Counts(Collector):
    name = "counts"

    def __init__(self):
        self.calls = 0

    async def collect(self):
        self.calls += 1
        await asyncio.sleep(0.2)
        return None


class _Breaks(Collector):
    name = "breaks"

    async def collect(self):
        raise PermissionError(13, "Permission denied", "/proc/1/fd")


def test_a_hanging_collector_does_not_hold_the_scrape():
    counts = _Counts()
    scraper = Scraper([_Hangs(), counts, _Breaks()], timeout=0.5)

    async def go():
        start = time.monotonic()
        snap = await scraper.scrape()
        return time.monotonic() - start, snap
    elapsed, snap = asyncio.run(go())
    assert elapsed < 1.5
    assert snap.results["hangs"].success is False and "timed out" in snap.results["hangs"].error
    assert snap.results["breaks"].success is False and "Permission denied" in snap.results["breaks"].error
    assert snap.results["counts"].success is True


def test_concurrent_scrapes_share_one_collection():
    counts = _Counts()
    scraper = Scraper([counts], timeout=5)

    async def go():
        return await asyncio.gather(*(scraper.scrape() for _ in range(10)))
    snaps = asyncio.run(go())
    assert counts.calls == 1
    # one collection: every caller's answer holds the very same result
    assert all(s.results["counts"] is snaps[0].results["counts"] for s in snaps)


def test_a_stuck_collector_is_not_started_twice():
    class Slow(Collector):
        name = "slow"
        calls = 0

        def __init__(self):
            self.release = asyncio.Event()    # the stuck read ends when the test says so
            self.returned = asyncio.Event()

        async def collect(self):
            Slow.calls += 1
            try:
                await self.release.wait()
                return "done"
            finally:
                self.returned.set()

    async def go():
        slow = Slow()
        scraper = Scraper([slow], timeout=0.3)
        first = await scraper.scrape()
        second = await scraper.scrape()   # the first run is still going: wait for it
        assert Slow.calls == 1
        slow.release.set()
        # the condition itself, with a deadline: the first run has returned
        await asyncio.wait_for(slow.returned.wait(), 10)
        third = await scraper.scrape()    # it finished meanwhile; a new run starts
        return first, second, third
    first, second, third = asyncio.run(go())
    assert not first.results["slow"].success and not second.results["slow"].success
    assert "timed out" in second.results["slow"].error
    assert third.results["slow"].success and third.results["slow"].data == "done"
    assert Slow.calls == 2


def _fake_proc_root(root, pids):
    """A copy of the /proc entries the collector reads for `pids`, with the fd tables
    and environments mode 000: what a process of another user looks like."""
    import os
    import shutil as sh
    root.mkdir()
    for f in ("stat", "uptime"):
        sh.copyfile(f"/proc/{f}", root / f)
    (root / "sys" / "net" / "core").mkdir(parents=True)
    sh.copyfile("/proc/sys/net/core/somaxconn", root / "sys" / "net" / "core" / "somaxconn")
    for pid in pids:
        d = root / str(pid)
        d.mkdir()
        for f in ("stat", "cmdline", "limits"):
            sh.copyfile(f"/proc/{pid}/{f}", d / f)
        for secret in ("fd", "environ"):
            p = d / secret
            p.mkdir() if secret == "fd" else p.write_bytes(b"")
            os.chmod(p, 0)


@pytest.mark.slow
def test_without_privileges_it_says_so_once_and_exports_what_it_can(gunicorn_factory, tmp_path):
    """Another user's /proc/PID/fd is unreadable without CAP_SYS_PTRACE/CAP_DAC_READ_SEARCH.

    The collector reads a copy of the gunicorn processes' /proc entries whose fd tables
    are mode 000, in an exporter whose DAC-override capabilities are dropped (setpriv),
    so the kernel really refuses the reads."""
    import os
    require(os.geteuid() == 0 and shutil.which("setpriv") is not None,
            "needs root and setpriv (util-linux) to drop capabilities")
    g = gunicorn_factory(bind="unix", workers=2, name=unique_name("priv"))
    fake = tmp_path / "proc"
    _fake_proc_root(fake, [g.pid] + g.worker_pids())
    port = free_port()
    log_path = tmp_path / "exporter.log"
    with open(log_path, "wb") as log:
        p = subprocess.Popen(["setpriv", "--bounding-set=-dac_override,-dac_read_search,-sys_ptrace",
                              sys.executable, "-m", "exporter", "--web.listen-address",
                              f"127.0.0.1:{port}", "--no-collector.netstat",
                              "--path.procfs", str(fake)],
                             stdout=log, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        poll(lambda: _get(base + "/-/healthy")[0] == 200, 15, message="exporter not up")
        for _ in range(3):
            got = samples(_get(base + "/metrics")[2])
        assert got[("gunicorn_up", (("app", g.name),))] == 1
        # workers are still found (by title); their fd-based series are absent, not zero
        assert got[("gunicorn_workers", (("app", g.name),))] == 2
        assert got[("gunicorn_exporter_permission_denied_processes", ())] == 3
        assert not any(k[0] in ("gunicorn_worker_open_fds", "gunicorn_worker_connections")
                       and ("app", g.name) in k[1] for k in got)
        assert got[("gunicorn_worker_resident_memory_bytes", (("app", g.name), ("worker", "0")))] > 0
        assert got[("gunicorn_exporter_collector_success", (("collector", "gunicorn"),))] == 1
    finally:
        stop_process(p)
    text = log_path.read_text()
    assert text.count("not allowed to read /proc entries") == 1, text
