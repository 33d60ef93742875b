"""The pages at the cadence users run: real 15 s scrapes and evaluations, the shipped
rules, faults held for minutes (tests/cadence.py runs them; this module checks what
Prometheus did). Each bound below is a promise of docs/runbooks.md.

The run takes about 14 minutes of Prometheus' clock and little CPU: tests/conftest.py
starts it in the background as soon as the session has collected its tests, and these
checks run last, so the rest of the suite runs beside it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import require
from tests.harness.procs import poll

pytestmark = [pytest.mark.slow, pytest.mark.timeout(25 * 60)]

ROOT = Path(__file__).resolve().parent.parent
RUN_SECONDS = 22 * 60       # the run's own bound: about 14 minutes, on a loaded host more
# The latest a page may come after its onset, in seconds: the first scrape after the
# onset (up to 15 s), the evaluation that sees it (up to 15 s), how long the rule's
# window needs (C1: requests waiting in all but one of the 5 samples of its 1m window,
# 45 s), and the watcher's 3 s poll.
C1_PAGE = 15 + 15 + 45 + 3 + 5
# GunicornDependencySlow: requests wait on the peer in all but two of the 9 samples of
# its 2m window, 105 s (the promtool test), plus a scrape, an evaluation and a poll.
DEPENDENCY_PAGE = 15 + 15 + 105 + 3 + 5
# A page resolves once its condition has been false for keep_firing_for (2m): the 1m
# window no longer holds enough waiting samples 30 s after recovery, plus a scrape, an
# evaluation and a poll.
RESOLVE = 120 + 30 + 15 + 15 + 3 + 5


def missing_tools() -> str | None:
    for tool, package in (("prometheus", "prometheus"), ("nginx", "nginx-light")):
        if not (shutil.which(tool) or os.path.exists(f"/usr/sbin/{tool}")):
            return f"{tool} not installed (apt-get install -y {package})"
    if os.geteuid() != 0:
        return "the cadence run needs root (nginx as root, ss -p of every process)"
    from tests.pg import available
    ok, why = available()
    return None if ok else why


def start_run(out: Path) -> subprocess.Popen:
    """Start the run, writing into `out`: `started` (its wall-clock start), `run/` (its
    results), `run.log`, and `exitcode` once it has ended, so a process that did not start
    it (an xdist worker) can wait for it."""
    (out / "started").write_text(repr(time.time()))
    with open(out / "run.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "tests.cadence", str(out / "run")],
                                cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
    (out / "pid").write_text(str(proc.pid))

    def reap():
        (out / "exitcode").write_text(str(proc.wait()))
    threading.Thread(target=reap, name="cadence-reaper", daemon=True).start()
    return proc


@pytest.fixture(scope="module")
def results(request):
    why = missing_tools()
    require(why is None, why or "")
    config = request.config
    out = Path(config.workerinput["gx_cadence_dir"]) if hasattr(config, "workerinput") \
        else config._cadence_dir
    if not (out / "started").exists():      # this module alone, or its hook did not run
        start_run(out)
    left = float((out / "started").read_text()) + RUN_SECONDS - time.time()
    try:
        poll(lambda: (out / "exitcode").exists(), max(60.0, left), interval=1.0)
    except AssertionError:
        with contextlib.suppress(OSError, ValueError):
            os.kill(int((out / "pid").read_text()), signal.SIGKILL)
        pytest.fail(f"the cadence run did not end in {RUN_SECONDS} s:\n"
                    + (out / "run.log").read_text()[-3000:])
    path = out / "run" / "results.json"
    assert path.exists(), (out / "run.log").read_text()[-5000:]
    data = json.loads(path.read_text())
    print(f"\ncadence run: {out}")
    assert data.get("ok"), data.get("error", "") + "\n" + (out / "run.log").read_text()[-5000:]
    return data


def scenario(results: dict, name: str) -> dict:
    sc = results["scenarios"][name]
    print(f"\n{name}: " + json.dumps({k: v for k, v in sc.items() if k != "alerts"})[:1500])
    for alert, record in sorted(sc["alerts"].items()):
        print(f"  {alert} ({record['severity']}): episodes {record['episodes']}")
    return sc


def pages(sc: dict) -> dict[str, dict]:
    return {a: r for a, r in sc["alerts"].items() if r["severity"] == "critical"}


def one_page(sc: dict, alert: str, by: float, resolve: bool = True) -> tuple[float, float | None]:
    """The one firing episode of `alert` (after the onset, within `by` seconds), and
    Prometheus' own ALERTS series agrees that there was one; returns (start, end)."""
    record = sc["alerts"].get(alert)
    assert record is not None, f"{alert} never went pending or fired"
    episodes = record["episodes"]
    assert len(episodes) == 1, f"{alert}: {len(episodes)} firing episodes: {episodes}"
    assert sc["alerts_series"].get(alert) == 1, f"ALERTS says {sc['alerts_series']}"
    start, end = episodes[0]
    assert 0 < start <= by, f"{alert} fired {start} s after the onset (bound {by} s)"
    if resolve:
        assert end is not None, f"{alert} still firing at the end of the run"
        assert end - sc["ended"] <= RESOLVE, \
            f"{alert} resolved {end - sc['ended']:.0f} s after the fault ended (bound {RESOLVE} s)"
    return start, end


def test_the_calm_minute_fires_nothing(results):
    firing = [a for a in results["calm_alerts"] if a.endswith(" firing")]
    print(f"\ncalm: {results['calm_alerts']}")
    assert firing == [], firing


@pytest.mark.parametrize("name", ["sync", "gthread"])
def test_pool_exhaustion_held_ten_minutes_pages_once(results, name):
    """C1 for 10 minutes (sync behind nginx: clients come back after nginx's 504; gthread:
    requests wait inside the workers): one page, on time, resolved a few minutes after."""
    sc = scenario(results, name)
    start, end = one_page(sc, "GunicornWorkerPoolExhausted", C1_PAGE)
    assert sc["ended"] >= 590, sc["ended"]
    if name == "sync":
        # its requests wait 25 s on a dependency: the first page names it, and the cause's
        # own page follows once its 2-minute window agrees (one episode each)
        peer = sc["dependency"]
        description = sc["alerts"]["GunicornWorkerPoolExhausted"]["description"]
        assert f"wait on a reply from {peer}:" in description, description
        one_page(sc, "GunicornDependencySlow", DEPENDENCY_PAGE)
        assert sc["alerts"]["GunicornDependencySlow"]["labels"].get("peer") == peer
        assert set(pages(sc)) == {"GunicornWorkerPoolExhausted", "GunicornDependencySlow"}, \
            sorted(pages(sc))
    else:
        assert set(pages(sc)) == {"GunicornWorkerPoolExhausted"}, sorted(pages(sc))
    # the fault was as unsteady as users see it: scrapes that found a worker between
    # two requests or nothing waiting did not resolve the page
    print(f"  busy ratio at scrapes: min {min(sc['busy_ratio'])}, waiting min {min(sc['waiting'])}")


def test_one_saturated_gthread_worker_pages(results):
    """4 requests wait inside one worker while the app is half busy: a page within 90 s."""
    sc = scenario(results, "imbalance")
    one_page(sc, "GunicornWorkerPoolExhausted", 90)
    assert max(sc["busy_ratio"]) == 0.5, sc["busy_ratio"]
    assert min(sc["waiting_inside"]) >= 4, sc["waiting_inside"]
    assert set(pages(sc)) == {"GunicornWorkerPoolExhausted"}, sorted(pages(sc))


def test_threads_serving_gone_clients_are_busy_and_page(results):
    """60 requests whose clients hung up: the worker's 4 threads run them for minutes;
    busy reads 1.0 the whole time, the connections are visible as client_closed, and
    the requests waiting inside the worker page as C1."""
    sc = scenario(results, "gone")
    assert sc["backlog_seconds"] >= 250, sc["backlog_seconds"]   # 60 x 20 s / 4 threads
    busy = sc["busy_ratio"]
    assert busy and set(busy) == {1.0}, busy
    assert max(sc["client_closed"]) >= 50, sc["client_closed"]
    one_page(sc, "GunicornWorkerPoolExhausted", 90)
    assert set(pages(sc)) == {"GunicornWorkerPoolExhausted"}, sorted(pages(sc))


def test_a_25_of_30_second_dependency_warns_near_timeout(results):
    """Every request at 83 % of --timeout: the ages at the scrapes alias below the 80 %
    threshold; the between-scrape maximum does not, and the warning fires."""
    sc = scenario(results, "timeout")
    record = sc["alerts"].get("GunicornWorkerNearTimeout")
    assert record and record["episodes"], "GunicornWorkerNearTimeout never fired"
    start = record["episodes"][0][0]
    assert start <= 6 * 60 + DEPENDENCY_BOUND, f"fired {start} s after the onset"
    assert 24.5 <= max(sc["age_max"]) <= 26.0, sc["age_max"]
    print(f"  heartbeat ages at the scrapes: max {max(sc['age_at_scrapes'])} s of 30")
    assert pages(sc) == {}, sorted(pages(sc))


# the first request reaches 80 % of --timeout 24 s after the onset, then `for: 6m`,
# plus a scrape, an evaluation and a poll
DEPENDENCY_BOUND = 25 + 15 + 15 + 3 + 5


def test_a_pool_at_its_size_is_no_leak(results):
    """12 connections of a budget of 12, held for 10 minutes: no leak prediction."""
    sc = scenario(results, "pool")
    assert set(sc["budget_ratio"]) == {1.0}, sc["budget_ratio"]
    assert "GunicornDBConnectionsWillExceedBudget" not in sc["alerts"], \
        sc["alerts"]["GunicornDBConnectionsWillExceedBudget"]
    assert pages(sc) == {}, sorted(pages(sc))
