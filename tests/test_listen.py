"""Where the exporter listens: several --web.listen-address at once (IPv4 and IPv6), and
sockets passed by systemd (--web.systemd-socket), started with systemd-socket-activate,
which passes them as systemd does (LISTEN_FDS, LISTEN_PID). `ss` is the oracle for which
process listens where."""

from __future__ import annotations

import shutil
import subprocess
import sys
import urllib.request

import pytest

from tests.conftest import require
from tests.harness.procs import free_port, poll
from tests.harness.servers import running_exporter, stop_process

pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]


def listening(pid: int) -> set[str]:
    """Local addresses of the listening TCP sockets process `pid` holds (ss -tlnp)."""
    require(shutil.which("ss") is not None, "ss (iproute2) is needed as the oracle")
    out = subprocess.run(["ss", "-tlnpH"], capture_output=True, text=True, check=True).stdout
    return {line.split()[3] for line in out.splitlines() if f"pid={pid}," in line}


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/-/healthy", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def test_ipv4_and_ipv6_at_once(tmp_path):
    v6 = free_port("::1")
    with running_exporter(tmp_path, "--no-collector.postgres", "--no-collector.gunicorn",
                          "--web.listen-address", f"[::1]:{v6}") as base:
        v4 = int(base.rsplit(":", 1)[1])
        assert healthy(f"http://[::1]:{v6}") and healthy(base)
        assert listening(base.pid) == {f"127.0.0.1:{v4}", f"[::1]:{v6}"}


def test_systemd_socket_activation(tmp_path):
    tool = shutil.which("systemd-socket-activate")
    require(tool is not None, "systemd-socket-activate not installed (Debian package 'systemd')")
    v4, v6 = free_port(), free_port("::1")
    log = tmp_path / "activated.log"
    with open(log, "wb") as out:
        # the tool binds, then execs the exporter on the first connection, in its place
        p = subprocess.Popen([tool, "-l", f"127.0.0.1:{v4}", "-l", f"[::1]:{v6}",
                              sys.executable, "-m", "exporter", "--web.systemd-socket",
                              "--no-collector.postgres", "--no-collector.gunicorn"],
                             stdout=out, stderr=subprocess.STDOUT)
    try:
        poll(lambda: healthy(f"http://127.0.0.1:{v4}"), 20, message="not activated")
        assert healthy(f"http://[::1]:{v6}")
        assert listening(p.pid) == {f"127.0.0.1:{v4}", f"[::1]:{v6}"}
        text = log.read_text()
        assert f"listening on 127.0.0.1:{v4}, [::1]:{v6}" in text, text
    finally:
        stop_process(p)


def test_systemd_socket_without_sockets_is_one_line_and_exit_1():
    for env in ({}, {"LISTEN_FDS": "1", "LISTEN_PID": "1"}):
        r = subprocess.run([sys.executable, "-m", "exporter", "--web.systemd-socket",
                            "--no-collector.postgres"], capture_output=True, text=True,
                           timeout=30, env={"PATH": "/usr/bin:/bin", **env})
        assert r.returncode == 1 and "--web.systemd-socket:" in r.stderr and \
            "Traceback" not in r.stderr, r.stderr


def test_an_address_in_use_is_one_line_and_exit_1(tmp_path):
    with running_exporter(tmp_path, "--no-collector.postgres", "--no-collector.gunicorn") as base:
        r = subprocess.run([sys.executable, "-m", "exporter", "--web.listen-address",
                            base.split("//")[1], "--no-collector.postgres"],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 1 and "cannot listen on" in r.stderr and \
            "Traceback" not in r.stderr, r.stderr
