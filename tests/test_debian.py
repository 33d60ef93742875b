"""The Debian package, as an administrator meets it: built from this repository with
Debian's own tools (dpkg-buildpackage, debhelper, dh-python; its Build-Depends checked by
dpkg-checkbuilddeps), `lintian` without errors or warnings, installed with `apt-get
install ./prometheus-gunicorn-exporter_*.deb` on Debian's own python3-aiohttp,
python3-prometheus-client, ... (bookworm: aiohttp 3.8, prometheus-client 0.16, bcrypt 3.2,
psycopg 3.1), started as its unit's ExecStart line starts it, scraped, then purged.

systemd is not PID 1 where the tests run (no /run/systemd/system), so the service is
started as the installed unit says: its EnvironmentFile read for $ARGS, its User, Group,
SupplementaryGroups, AmbientCapabilities, CapabilityBoundingSet, NoNewPrivileges and
SecureBits applied by `setpriv` (util-linux). The unit's sandboxing (ProtectSystem, the
system call filter, ...) needs systemd and is checked by `systemd-analyze verify`.
The oracle: a real gunicorn started as root, whose workers' file descriptors the
exporter, running as its own user, reads only through the capabilities the unit gives it.

One package per host: the test holds a lock from install to purge, and purges a copy
left installed by an interrupted run before it installs its own.
"""

from __future__ import annotations

import fcntl
import os
import pwd
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from exporter import __version__
from tests.conftest import require
from tests.harness.artifacts import assert_sees, copy_tree
from tests.harness.procs import free_port, unique_name
from tests.harness.servers import running_server, url_ready
from tests.test_web_rfc import CASES, status_of

PACKAGE = "prometheus-gunicorn-exporter"
UNIT = Path("/lib/systemd/system") / f"{PACKAGE}.service"
DEFAULT = Path("/etc/default") / PACKAGE
DEBIAN_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8",
              "DEBIAN_FRONTEND": "noninteractive"}
APT = ["apt-get", "-y", "-q", "-o", "DPkg::Lock::Timeout=300"]
# RFC 9112 requests Debian bookworm's aiohttp 3.8.4 lets through and aiohttp >= 3.9
# refuses: an obs-fold becomes a space (RFC 9112 5.2 allows that too) and a line with an
# empty field name is dropped. The exporter answers no body and no method but GET and
# HEAD, so neither smuggles a request. The others of CASES the exporter refuses itself.
AIOHTTP_38_LETS_THROUGH = {"obs-fold", "empty field name"}


def run(argv, timeout=300, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)


def unit_settings(text: str) -> dict[str, str]:
    """Key=value lines of a unit (the last wins, as systemd reads single-valued keys)."""
    out = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


def environment_file(text: str) -> dict[str, str]:
    """systemd's EnvironmentFile= format, for the lines Debian's /etc/default files use."""
    env = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";")) and "=" in line:
            key, _, value = line.partition("=")
            env[key.strip()] = shlex.split(value)[0] if value.strip() else ""
    return env


def exec_start_argv(unit: dict[str, str], env: dict[str, str]) -> list[str]:
    """ExecStart with $VAR split into words and ${VAR} kept as one (systemd.service(5))."""
    argv = []
    for word in shlex.split(unit["ExecStart"]):
        if m := re.fullmatch(r"\$(\w+)", word):
            argv += env.get(m[1], "").split()
        else:
            argv.append(re.sub(r"\$\{(\w+)\}", lambda m: env.get(m[1], ""), word))
    return argv


def setpriv_argv(unit: dict[str, str]) -> list[str]:
    """setpriv(1) arguments that give a process what the unit's [Service] lines give it."""
    caps = ",".join("+" + c.lower().removeprefix("cap_") for c in unit["AmbientCapabilities"].split())
    bounding = ",".join("+" + c.lower().removeprefix("cap_")
                        for c in unit["CapabilityBoundingSet"].split())
    argv = ["setpriv", f"--reuid={unit['User']}", f"--regid={unit['Group']}",
            f"--groups={','.join(unit.get('SupplementaryGroups', '').split()) or unit['Group']}",
            f"--inh-caps=-all,{caps}", f"--ambient-caps=-all,{caps}",
            f"--bounding-set=-all,{bounding}"]
    if unit.get("NoNewPrivileges") == "yes":
        argv.append("--no-new-privs")
    if unit.get("SecureBits") == "noroot-locked":
        argv.append("--securebits=+noroot,+noroot_locked")
    return argv + ["--"]


def test_unit_and_environment_file_parsing_on_literal_text():
    unit = unit_settings("[Service]\n# ExecStart=/no\nExecStart=/usr/bin/x $ARGS --y=${ONE}\n"
                         "User=u\nGroup=g\nSupplementaryGroups=adm\nNoNewPrivileges=yes\n"
                         "AmbientCapabilities=CAP_SYS_PTRACE CAP_SYSLOG\n"
                         "CapabilityBoundingSet=CAP_SYS_PTRACE CAP_SYSLOG\n")
    env = environment_file('# ARGS="--no"\nARGS="--a=1  --b"\nONE="two words"\nEMPTY=\n')
    assert env == {"ARGS": "--a=1  --b", "ONE": "two words", "EMPTY": ""}
    assert exec_start_argv(unit, env) == ["/usr/bin/x", "--a=1", "--b", "--y=two words"]
    assert setpriv_argv(unit) == [
        "setpriv", "--reuid=u", "--regid=g", "--groups=adm", "--inh-caps=-all,+sys_ptrace,+syslog",
        "--ambient-caps=-all,+sys_ptrace,+syslog", "--bounding-set=-all,+sys_ptrace,+syslog",
        "--no-new-privs", "--"]


def _cap_names(mask: int) -> set[str]:
    bits = {"CAP_DAC_READ_SEARCH": 2, "CAP_SYS_PTRACE": 19, "CAP_SYSLOG": 34}
    assert mask & ~sum(1 << b for b in bits.values()) == 0, hex(mask)
    return {name for name, b in bits.items() if mask >> b & 1}


def _purge() -> None:
    purge = run(APT + ["purge", PACKAGE], env=DEBIAN_ENV)
    assert purge.returncode == 0, purge.stdout[-2000:] + purge.stderr[-2000:]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_debian_package_builds_lints_installs_serves_and_purges(tmp_path, gunicorn_factory):
    require(os.geteuid() == 0, "installs a Debian package: needs root")
    for tool, package in [("dpkg-buildpackage", "dpkg-dev"), ("dh", "debhelper"),
                          ("pybuild", "dh-python"), ("help2man", "help2man"),
                          ("lintian", "lintian"), ("setpriv", "util-linux"),
                          ("systemd-analyze", "systemd")]:
        require(shutil.which(tool, path=DEBIAN_ENV["PATH"]) is not None,
                f"{tool} not installed (Debian package '{package}'; .ci/run installs it)")

    src = copy_tree(tmp_path / "src")
    build = run(["dpkg-buildpackage", "-us", "-uc", "-b"], cwd=src, timeout=600,
                env={**DEBIAN_ENV, "HOME": str(tmp_path)})
    assert build.returncode == 0, build.stdout[-4000:] + build.stderr[-4000:]
    deb = tmp_path / f"{PACKAGE}_{__version__}_all.deb"
    assert deb.exists(), sorted(p.name for p in tmp_path.iterdir())
    lint = run(["lintian", "--fail-on", "error,warning", str(deb)], env=DEBIAN_ENV)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    assert not re.search(r"^[EW]: ", lint.stdout, re.M), lint.stdout

    with open("/tmp/gunicorn-exporter-debian-test.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if run(["dpkg-query", "-W", PACKAGE]).returncode == 0:
            _purge()                        # left by an interrupted run
        install = run(APT + ["install", str(deb)], env=DEBIAN_ENV, timeout=600)
        assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
        try:
            files = [Path(p) for p in run(["dpkg-query", "-L", PACKAGE]).stdout.split()]
            _installed_package_serves(tmp_path, gunicorn_factory)
        finally:
            _purge()
        assert run(["dpkg-query", "-W", PACKAGE]).returncode != 0, "still known to dpkg"
        left = [p for p in files if p.exists() and not p.is_dir()]
        assert not left, left
        assert not DEFAULT.exists() and not UNIT.exists()
        assert run(["getent", "passwd", PACKAGE]).returncode == 2, "the user outlived the purge"


def _installed_package_serves(tmp_path: Path, gunicorn_factory) -> None:
    user = pwd.getpwnam(PACKAGE)
    assert user.pw_uid < 1000 and user.pw_shell == "/usr/sbin/nologin", user
    assert Path("/usr/share/man/man1", f"{PACKAGE}.1.gz").exists()
    assert "ARGS=" in DEFAULT.read_text()
    verify = run(["systemd-analyze", "verify", str(UNIT)])
    assert verify.returncode == 0 and not verify.stderr.strip(), verify.stderr
    unit = unit_settings(UNIT.read_text())
    assert unit["EnvironmentFile"] == f"-{DEFAULT}" and unit["User"] == PACKAGE

    # the administrator's edit of the conffile: a port of its own on the loopback
    port = free_port()
    DEFAULT.write_text(DEFAULT.read_text() + f'ARGS="--web.listen-address=127.0.0.1:{port} '
                       '--no-collector.statsd --no-collector.postgres"\n')
    argv = exec_start_argv(unit, environment_file(DEFAULT.read_text()))
    assert argv[0] == f"/usr/bin/{PACKAGE}"

    g = gunicorn_factory(workers=2, name=unique_name("deb"))      # as root
    base = f"http://127.0.0.1:{port}"
    with running_server(setpriv_argv(unit) + argv, tmp_path / "service.log",
                        lambda: url_ready(base + "/-/healthy"), "the packaged exporter") as proc:
        status = Path(f"/proc/{proc.pid}/status").read_text()
        assert re.search(rf"^Uid:\s+{user.pw_uid}\s", status, re.M), status
        caps = {k: int(v, 16) for k, v in re.findall(r"^(Cap\w+):\s+(\w+)", status, re.M)}
        want = set(unit["AmbientCapabilities"].split())
        assert _cap_names(caps["CapEff"]) == _cap_names(caps["CapBnd"]) == want
        got = assert_sees(base, g, __version__)
        # the workers' fds belong to root: read through CAP_SYS_PTRACE only
        assert got.get(("gunicorn_worker_open_fds", (("app", g.name), ("worker", "0")))), \
            sorted(k for k in got if g.name in str(k))
        aiohttp = run(["/usr/bin/python3", "-c", "import aiohttp; print(aiohttp.__version__)"])
        old = tuple(int(x) for x in aiohttp.stdout.split(".")[:2]) < (3, 9)
        wrong = {name for name, raw, good, _h11, _rfc in CASES
                 if (status := status_of(port, raw)) != 200 and good
                 or not good and status is not None and status < 400}
        assert wrong == (AIOHTTP_38_LETS_THROUGH if old else set()), (aiohttp.stdout, wrong)
