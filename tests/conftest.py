"""Shared fixtures for gunicorn-exporter tests.

* ``gunicorn_factory``: start real gunicorn masters; all are stopped (by PID)
  at teardown.
* ``require(cond, reason)``: skip normally, fail in strict mode
  (CI=true or GUNICORN_EXPORTER_STRICT=1).
* the fast floor: a test that starts a process (a server, the exporter, or any
  command: ss, promtool, openssl, ...) is marked ``slow``; one that is not and
  starts one anyway fails (`_no_process_unless_slow`), so
  ``pytest -m "not slow"`` runs in-process only.
"""

import contextlib
import os
import sys
from pathlib import Path

import pytest

_TESTS = Path(__file__).resolve().parent
_ROOT = _TESTS.parent
for _p in (str(_ROOT), str(_TESTS / "apps")):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from tests.harness.masters import Gunicorn


def strict_mode() -> bool:
    return (os.environ.get("CI", "").lower() == "true"
            or os.environ.get("GUNICORN_EXPORTER_STRICT", "") == "1")


def require(condition: bool, reason: str) -> None:
    """Skip the test unless ``condition``; in strict mode fail instead."""
    if condition:
        return
    if strict_mode():
        pytest.fail("strict mode: " + reason)
    pytest.skip(reason)


def requires_root() -> None:
    require(os.geteuid() == 0, "needs root")


def require_module(name: str) -> None:
    """Skip (strict mode: fail) unless Python module ``name`` is installed."""
    import importlib.util
    require(importlib.util.find_spec(name) is not None, f"{name} is not installed")


@pytest.fixture
def gunicorn_factory(tmp_path):
    """Yields ``start(**kwargs) -> Gunicorn`` (kwargs of Gunicorn.start;
    ``tmp_path`` defaults to the test's tmp_path). Every master started
    through it is stopped at teardown, newest first."""
    started = []

    def start(**kwargs):
        base = kwargs.pop("tmp_path", tmp_path)
        g = Gunicorn.start(base, **kwargs)
        started.append(g)
        return g

    yield start
    errors = []
    for g in reversed(started):
        try:
            g.stop()
        except Exception as exc:  # keep stopping the others
            errors.append(exc)
    if errors:
        raise errors[0]


@pytest.fixture(scope="module")
def pg():
    """A throwaway Postgres cluster (tests/pg.py; initdb/pg_ctl as user postgres) for the
    tests of one module, max_connections 40."""
    from tests.pg import PgCluster, available
    ok, why = available()
    require(ok, why)
    c = PgCluster.start(max_connections=40)
    try:
        yield c
    finally:
        c.stop()


# --- the fast floor: processes only in tests marked slow ---------------------------------

class _ProcessStarted(AssertionError):
    pass


def _refuse(what):
    def refuse(*args, **kwargs):
        raise _ProcessStarted(
            f"this test starts a process ({what} {str(args[:1])[:120]}) but is not marked "
            "slow: mark it @pytest.mark.slow, or test the same thing in-process "
            "(DEVELOPERS.md, the fast floor)")
    return refuse


@contextlib.contextmanager
def _no_process_unless_slow(item):
    """While a test without the slow mark sets up and runs, every way to start a process
    (fork, posix_spawn, subprocess, multiprocessing, os.system) raises."""
    if item.get_closest_marker("slow") is not None:
        yield
        return
    import _posixsubprocess
    import subprocess
    patches = [(subprocess, "_fork_exec", "a subprocess"), (os, "fork", "os.fork"), (os, "forkpty", "os.forkpty"),
               (os, "posix_spawn", "os.posix_spawn"), (os, "posix_spawnp", "os.posix_spawnp"),
               (os, "system", "os.system"), (_posixsubprocess, "fork_exec", "a subprocess")]
    saved = [(mod, name, getattr(mod, name)) for mod, name, _ in patches if hasattr(mod, name)]
    for mod, name, what in patches:
        if hasattr(mod, name):
            setattr(mod, name, _refuse(what))
    try:
        yield
    finally:
        for mod, name, original in saved:
            setattr(mod, name, original)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item):
    with _no_process_unless_slow(item):
        yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    with _no_process_unless_slow(item):
        yield


# --- the cadence run (tests/test_alerts_cadence.py) --------------------------------------
# About 14 minutes of real 15 s scrapes, mostly waiting: it starts in the background as
# soon as the session knows it will check it, and its checks run last. Under pytest-xdist
# (the suite's default, pyproject.toml) the controller starts it, once, and the worker
# that gets the checks waits for it through its directory (tests/test_alerts_cadence.py).

CADENCE_MODULE = "test_alerts_cadence.py"


def pytest_configure(config):
    if not hasattr(config, "workerinput"):          # the session, or xdist's controller
        import tempfile
        config._cadence_dir = Path(tempfile.mkdtemp(prefix="gx-cadence-"))
        config._cadence_run = None


def pytest_collection_modifyitems(session, config, items):
    items.sort(key=lambda item: item.path.name == CADENCE_MODULE)   # stable: the rest keep order


def _start_cadence(config) -> None:
    from tests.test_alerts_cadence import missing_tools, start_run
    if config._cadence_run is None and missing_tools() is None:
        config._cadence_run = start_run(config._cadence_dir)


def pytest_collection_finish(session):
    config = session.config
    if (hasattr(config, "workerinput") or config.option.collectonly
            or not any(i.path.name == CADENCE_MODULE for i in session.items)):
        return
    _start_cadence(config)


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node):
    """xdist's controller: every worker learns where the cadence run writes."""
    node.workerinput["gx_cadence_dir"] = str(node.config._cadence_dir)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_node_collection_finished(node, ids):
    """xdist's controller: a worker has collected; start the run if the checks are in."""
    if any(i.split("::", 1)[0].endswith("/" + CADENCE_MODULE) for i in ids):
        _start_cadence(node.config)


_SESSION = {"started": None, "rest_ended": None}


def pytest_sessionstart(session):
    import time
    _SESSION["started"] = time.monotonic()


def pytest_runtest_logreport(report):
    """The controller sees every test's reports: when did the last one outside the
    cadence module end?"""
    if report.when == "teardown" and CADENCE_MODULE not in report.nodeid:
        import time
        _SESSION["rest_ended"] = time.monotonic()


def pytest_terminal_summary(terminalreporter, config):
    """The suite's two clocks, so its growth shows: the tests apart from the cadence run (the
    budget: under 8 minutes), and the cadence run (fixed by its 10-minute hold)."""
    if hasattr(config, "workerinput") or _SESSION["rest_ended"] is None:
        return
    line = f"tests apart from the cadence run: {_SESSION['rest_ended'] - _SESSION['started']:.0f} s"
    out = getattr(config, "_cadence_dir", None)
    with contextlib.suppress(OSError, ValueError):
        ran = (out / "exitcode").stat().st_mtime - float((out / "started").read_text())
        line += f"; the cadence run: {ran:.0f} s"
    terminalreporter.write_line(line)


def pytest_unconfigure(config):
    run = getattr(config, "_cadence_run", None)
    if run is not None and run.poll() is None:   # the session ended before its checks
        run.terminate()
        try:
            run.wait(30)
        except Exception:   # noqa: BLE001 - last resort at exit
            run.kill()
    elif run is None and getattr(config, "_cadence_dir", None) is not None:
        with contextlib.suppress(OSError):
            config._cadence_dir.rmdir()              # never started: leave nothing behind
