"""The fast floor's rule, enforced by tests/conftest.py: a test that is not marked slow
cannot start a process, whichever way it tries."""

import multiprocessing
import os
import subprocess
import sys

import pytest

from tests.conftest import _no_process_unless_slow, _ProcessStarted


class _Item:
    def __init__(self, slow: bool):
        self.slow = slow

    def get_closest_marker(self, name):
        return object() if name == "slow" and self.slow else None


@pytest.mark.parametrize("start", [
    lambda: subprocess.run([sys.executable, "-c", "pass"]),
    lambda: os.system("true"),
    lambda: os.fork(),
    lambda: os.posix_spawn(sys.executable, [sys.executable, "-c", "pass"], os.environ),
    lambda: multiprocessing.get_context("spawn").Process(target=print).start(),
], ids=["subprocess", "os.system", "os.fork", "posix_spawn", "multiprocessing"])
def test_a_fast_test_cannot_start_a_process(start):
    # this test itself is fast: the guard is already on; inside a second one it still is
    with _no_process_unless_slow(_Item(slow=False)):
        with pytest.raises(_ProcessStarted, match="not marked slow"):
            start()
    with pytest.raises(_ProcessStarted):
        start()


@pytest.mark.slow
def test_a_slow_test_starts_processes():
    assert subprocess.run(["true"]).returncode == 0
    pid = os.fork()
    if pid == 0:
        os._exit(7)
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 7
