"""Shared fixtures for gunicorn-exporter tests.

* ``gunicorn_factory``: start real gunicorn masters; all are stopped (by PID)
  at teardown.
* ``require(cond, reason)``: skip normally, fail in strict mode
  (CI=true or GUNICORN_EXPORTER_STRICT=1).
"""

import os
import sys
from pathlib import Path

import pytest

_TESTS = Path(__file__).resolve().parent
_ROOT = _TESTS.parent
for _p in (str(_ROOT), str(_TESTS / "apps")):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from tests.harness import Gunicorn  # noqa: E402


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
