"""Throwaway unprivileged users and the processes they run, for the hostile-host tests.

* `throwaway_user()` creates a system user with no home and no shell (useradd), yields
  it, and removes it (userdel) after stopping, by PID, every process started for it.
* `User.run(argv)` starts a process as that user (setuid/setgid in the child, no
  supplementary groups) with a Python interpreter the user may execute: the test venv's
  own if its path is searchable by others, else the system's python3 of the same
  version with the venv's site-packages on PYTHONPATH (the venv may live under /root).
* `fake_gunicorn(...)`: tests/apps/fake_gunicorn.py started as `.../gunicorn ARGS`, so it
  looks like a gunicorn master to anyone reading /proc.
* `real_app_fixture(name)`: the module's real app measured beside them.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import require
from tests.harness.command import APPS_DIR
from tests.harness.masters import Gunicorn
from tests.harness.procs import pid_alive, proc_stat

FAKE = APPS_DIR / "fake_gunicorn.py"


def _searchable_by_others(path: str) -> bool:
    p = Path(path).resolve()
    for d in [p, *p.parents]:
        mode = d.stat().st_mode
        if d != p and not mode & 0o001:
            return False
    return bool(p.stat().st_mode & 0o005)


def interpreter() -> tuple[str, dict[str, str]]:
    """(python, extra env) that a user other than root can run with the venv's packages."""
    if _searchable_by_others(sys.executable):
        return sys.executable, {}
    system = shutil.which("python3", path="/usr/bin:/bin")
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    require(system is not None and subprocess.run(
        [system, "-c", f"import sys; assert '%d.%d' % sys.version_info[:2] == '{version}'"],
        capture_output=True).returncode == 0,
        f"the test venv is not executable by other users and there is no system python{version}")
    return system, {"PYTHONPATH": sysconfig.get_paths()["purelib"]}


@dataclass
class User:
    name: str
    uid: int
    gid: int
    home: Path                                   # a directory the user owns (removed after)
    procs: list = field(default_factory=list)    # (Popen, start time)

    def run(self, argv: list[str], env: dict[str, str] | None = None, cwd: str | None = None,
            stdin=subprocess.DEVNULL) -> subprocess.Popen:
        python, extra = interpreter()
        argv = [python if a == "{python}" else a for a in argv]
        penv = {"PATH": "/usr/bin:/bin", "HOME": str(self.home), "LANG": "C.UTF-8", **extra,
                **(env or {})}
        p = subprocess.Popen(argv, env=penv, cwd=cwd or str(self.home), user=self.uid,
                             group=self.gid, extra_groups=[], stdin=stdin,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        st = proc_stat(p.pid)
        self.procs.append((p, st[2] if st else None))
        return p

    def stop_all(self) -> None:
        for p, start in self.procs:
            if start is not None and pid_alive(p.pid, start):
                try:
                    os.kill(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for p, _ in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                pass
        self.procs.clear()


@contextlib.contextmanager
def throwaway_user():
    require(os.geteuid() == 0, "creating a throwaway user needs root")
    require(shutil.which("useradd") is not None and shutil.which("userdel") is not None,
            "useradd/userdel not installed (Debian package 'passwd')")
    name = "gx" + secrets.token_hex(4)
    subprocess.run(["useradd", "--system", "--no-create-home", "--home-dir", "/nonexistent",
                    "--shell", "/usr/sbin/nologin", "--user-group", name],
                   check=True, capture_output=True)
    home = Path(tempfile.mkdtemp(prefix=f"{name}-", dir="/tmp"))
    try:
        pw = pwd.getpwnam(name)
        os.chown(home, pw.pw_uid, pw.pw_gid)
        home.chmod(0o755)
        user = User(name, pw.pw_uid, pw.pw_gid, home)
        try:
            yield user
        finally:
            user.stop_all()
    finally:
        shutil.rmtree(home, ignore_errors=True)
        subprocess.run(["userdel", name], capture_output=True)
        with contextlib.suppress(KeyError):
            grp.getgrnam(name)
            subprocess.run(["groupdel", name], capture_output=True)


def fake_gunicorn(user: User, args: list[str], mode: str = "plain",
                  env: dict[str, str] | None = None, count: int = 1) -> list[subprocess.Popen]:
    """Start `count` fake masters as `user`: `<dir>/gunicorn ARGS` running
    tests/apps/fake_gunicorn.py in `mode` (see that file)."""
    bindir = user.home / "bin"
    if not bindir.exists():
        bindir.mkdir()
        (bindir / "gunicorn").symlink_to(FAKE)
        os.chown(bindir, user.uid, user.gid)
    return [user.run(["{python}", str(bindir / "gunicorn"), *args],
                     env={"FAKE_MODE": mode, "FAKE_DIR": str(user.home), **(env or {})})
            for _ in range(count)]


def real_app_fixture(name: str):
    """A module-scoped `real_app` fixture: a real gunicorn master named `name` (2 sync
    workers on TCP) whose real numbers every scrape must still report, whatever the
    hostile processes do."""
    @pytest.fixture(scope="module")
    def real_app(tmp_path_factory):
        with Gunicorn.start(tmp_path_factory.mktemp("real"), name=name, workers=2,
                            bind="tcp") as g:
            yield g
    return real_app
