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
# About 15 minutes of real 15 s scrapes, mostly waiting: it starts in the background as
# soon as the session knows it will check it, and its checks run last.

CADENCE_MODULE = "test_alerts_cadence.py"


def pytest_collection_modifyitems(session, config, items):
    items.sort(key=lambda item: item.path.name == CADENCE_MODULE)   # stable: the rest keep order


def pytest_collection_finish(session):
    config = session.config
    if config.option.collectonly or not any(i.path.name == CADENCE_MODULE for i in session.items):
        return
    from tests.test_alerts_cadence import missing_tools, start_run
    if missing_tools() is None:
        import time
        config._cadence_started = time.monotonic()
        config._cadence_run = start_run()


def pytest_unconfigure(config):
    run = getattr(config, "_cadence_run", None)
    if run is not None and run[0].poll() is None:   # the session ended before its checks
        run[0].terminate()
        try:
            run[0].wait(30)
        except Exception:   # noqa: BLE001 - last resort at exit
            run[0].kill()
