"""A hostile local user against the exporter's web port, with the shipped limits: floods
of connections run as a throwaway unprivileged user (tests/apps/web_attacker.py) while a
real scrape every 50 ms, each on a new connection, must answer 200 within 1 s (the
client's clock is the oracle) at least 99 times in 100; the exporter's own counters must
show the attack pressed on the cap, so a test whose attack did nothing fails. The
exporter runs in a memory cgroup limited to 256 MiB (systemd's MemoryMax=256M) where
one can be made.
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import shutil
import socket
import statistics
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import require
from tests.exposition import parse_strict, value
from tests.harness.command import APPS_DIR
from tests.harness.procs import poll
from tests.harness.servers import running_exporter
from tests.hostile import throwaway_user

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

ATTACKER = APPS_DIR / "web_attacker.py"
SHIPPED_MEMORY_MAX = 256 * 1024 * 1024
MiB = 1024 * 1024


def get(url: str, *, ctx=None, auth: tuple[str, str] | None = None, timeout: float = 1.0):
    """(status or error text, seconds) of one GET on a new connection."""
    req = urllib.request.Request(url)
    if auth:
        req.add_header("Authorization", "Basic " + base64.b64encode(
            f"{auth[0]}:{auth[1]}".encode()).decode())
    start = time.monotonic()
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=timeout) as r:
            r.read()
            return r.status, time.monotonic() - start
    except urllib.error.HTTPError as e:
        return e.code, time.monotonic() - start
    except OSError as e:
        return f"{type(e).__name__}: {str(e)[:80]}", time.monotonic() - start


def scrapes(url: str, n: int = 100, every: float = 0.05, **kw) -> list[tuple[object, float]]:
    out = []
    next_at = time.monotonic()
    for _ in range(n):
        out.append(get(url, **kw))
        next_at += every
        delay = next_at - time.monotonic()
        if delay > 0:
            time.sleep(delay)     # pacing the measurement, not synchronising
    return out


def good(results, within: float = 1.0) -> int:
    return sum(1 for status, took in results if status == 200 and took < within)


@contextlib.contextmanager
def memcg():
    """A memory cgroup limited like the shipped unit (tests/test_oom.py's TestCgroup)."""
    from tests.test_oom import TestCgroup
    require(os.geteuid() == 0, "a memory cgroup needs root")
    cg = TestCgroup()
    require(cg.dir is not None, "no writable memory cgroup hierarchy")
    cg.create(SHIPPED_MEMORY_MAX)
    try:
        yield cg
    finally:
        cg.remove()


@contextlib.contextmanager
def attack(user, mode: str, n: int, port: int, *extra: str):
    """The attacker as `user`; yields a function returning how many connections it has
    opened (or requests answered), once it has opened at least n."""
    status = user.home / f"status-{mode}-{port}"
    proc = user.run(["{python}", str(ATTACKER), mode, str(n), str(port), *extra],
                    env={"STATUS_FILE": str(status)})

    def opened() -> int:
        try:
            return int(status.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return 0
    poll(lambda: proc.poll() is None and opened() >= min(n, 1) or proc.poll() is not None,
         30, message=f"{mode} attacker did not start")
    yield opened, status
    proc.kill()
    proc.wait(10)


def counters(base: str, **kw) -> dict:
    with urllib.request.urlopen(base + "/metrics", timeout=10, **kw) as r:
        return parse_strict(r.read().decode())


def rss_peak(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


@pytest.mark.parametrize("mode,n,pressure", [
    ("slowread", 64, "evicted"),       # pipeline GET /metrics, never read an answer
    ("slowloris", 500, "evicted"),     # half a request head, reconnecting when closed
    ("idle", 2000, "evicted"),         # connect and say nothing, reconnecting
])
def test_no_flood_keeps_a_real_scrape_out(tmp_path, mode, n, pressure):
    with throwaway_user() as user, memcg() as cg, \
            running_exporter(tmp_path, "--no-collector.postgres", cgroup=cg.dir) as base:
        port = int(base.rsplit(":", 1)[1])
        with attack(user, mode, n, port) as (opened, _status):
            poll(lambda: opened() >= n, 60, message=f"the attacker never held {n} connections")
            results = scrapes(base + "/metrics")
            seen = counters(base)
            reopened = opened()
        assert good(results) >= 99, [r for r in results if r[0] != 200 or r[1] >= 1][:10]
        assert value(seen, "gunicorn_exporter_web_refused_total", reason=pressure) > 0, \
            "the attack never pressed on the connection cap"
        assert rss_peak(base.pid) < 100 * MiB
        assert cg.oom_kills() == 0
        took = sorted(t for _s, t in results)
        print(f"\n{mode} x{n}: {good(results)}/100 within 1 s, median "
              f"{statistics.median(took) * 1000:.1f} ms, max {took[-1] * 1000:.0f} ms; "
              f"attacker (re)opened {reopened}; exporter peak RSS "
              f"{rss_peak(base.pid) / MiB:.0f} MiB")
        log = next(tmp_path.glob("exporter-*.log")).read_text().splitlines()
        assert len(log) < 20, log[:30]


def test_a_client_that_does_not_read_is_disconnected_at_the_write_deadline(tmp_path):
    """One connection pipelines 32 requests and never reads: once its answers fill the
    socket buffers, it is gone after --web.write-timeout (the kernel's socket table is the
    oracle: first a send queue that does not drain, then no socket)."""
    require(shutil.which("ss") is not None, "ss (iproute2) is needed as the oracle")
    with running_exporter(tmp_path, "--no-collector.postgres", "--web.write-timeout", "2s") as base:
        port = int(base.rsplit(":", 1)[1])
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(("127.0.0.1", port))
        local = s.getsockname()[1]
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n" * 32)

        def send_queue() -> int | None:
            out = subprocess.run(["ss", "-tnH", "state", "established", f"sport = :{port}",
                                  f"dport = :{local}"], capture_output=True, text=True).stdout
            return int(out.split()[1]) if out.strip() else None
        poll(lambda: (send_queue() or 0) > 0, 20, message="the answers never filled the buffers")
        stalled = time.monotonic()
        poll(lambda: send_queue() is None, 15, message="the stalled connection was never closed")
        took = time.monotonic() - stalled
        s.close()
        assert took < 10.0, took
        assert value(counters(base), "gunicorn_exporter_web_refused_total",
                     reason="write_timeout") == 1


@contextlib.contextmanager
def tls_exporter_and_user(tmp_path):
    """A throwaway user, and the exporter over TLS (a throwaway CA) in the shipped memory
    limit; yields (its base URL, a client SSL context, the user, the cgroup)."""
    from tests.test_web import client_context, make_ca, make_cert
    d = tmp_path / "pki"
    d.mkdir()
    make_ca(d, "ca")
    make_cert(d, "ca", "server", server=True)
    (d / "web.yml").write_text("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n")
    ctx = client_context(d)

    def ready(base):
        return get(base + "/-/healthy", ctx=ctx, timeout=2)[0] == 200
    with throwaway_user() as user, memcg() as cg, \
            running_exporter(tmp_path, "--no-collector.postgres", "--web.config.file",
                             str(d / "web.yml"), cgroup=cg.dir, scheme="https",
                             ready=ready) as base:
        yield base, ctx, user, cg


def test_stalled_tls_handshakes_count_against_the_cap_and_stay_small(tmp_path):
    """2,000 connections that send a ClientHello and stop: the exporter keeps at most
    twice the cap of them, so its memory stays under 100 MiB in a 256 MiB cgroup, and a
    real scrape over TLS still answers."""
    with tls_exporter_and_user(tmp_path) as (base, ctx, user, cg):
        port = int(base.rsplit(":", 1)[1])
        before = rss_peak(base.pid)
        with attack(user, "tlsstall", 2000, port, "once") as (opened, _status):
            poll(lambda: opened() >= 2000, 60, message="the attacker never opened 2,000")
            # the stalls are held; the flood itself is absorbed (the kernel's accept queue
            # of the exporter's port is empty again: ss is the oracle) before the scrapes
            # are timed, so they measure the held state, on a loaded host too
            t = time.monotonic()
            poll(lambda: _listen_queue(port) == 0, 60, interval=0.2,
                 message="the exporter never accepted the flood")
            absorbed = time.monotonic() - t
            results = scrapes(base + "/metrics", n=20, ctx=ctx)
            seen = counters(base, context=ctx)
        assert good(results) >= 19, results
        assert value(seen, "gunicorn_exporter_web_connections") <= 2 * 64
        assert value(seen, "gunicorn_exporter_web_refused_total", reason="evicted") > 0
        peak = rss_peak(base.pid)
        assert peak < 100 * MiB, (before, peak)
        assert cg.oom_kills() == 0
        print(f"\n2,000 stalled TLS handshakes: peak RSS {before / MiB:.0f} -> "
              f"{peak / MiB:.0f} MiB; flood absorbed in {absorbed:.1f} s; "
              f"{good(results)}/20 scrapes within 1 s")


def test_tls_handshakes_reopened_as_fast_as_closed_leave_other_users_scraping(tmp_path):
    """2,000 connections as a throwaway user, each sending a ClientHello and reopened as
    soon as it is closed: each ClientHello costs the exporter a signature. Past its
    user's 50 handshakes a second the user's connections are closed before any TLS work
    (exporter/handshakes.py), so root's real scrapes over TLS still answer within 1 s.
    (Before, 0 of 50 did: the exporter spent a core signing for the attacker.)"""
    with tls_exporter_and_user(tmp_path) as (base, ctx, user, cg):
        port = int(base.rsplit(":", 1)[1])
        with attack(user, "tlsstall", 2000, port) as (opened, _status):
            poll(lambda: opened() >= 4000, 60, message="the attacker never reopened 2,000")
            results = scrapes(base + "/metrics", n=50, ctx=ctx)
            seen = counters(base, context=ctx)
            reopened = opened()
        took = sorted(t for _s, t in results)
        print(f"\nTLS handshakes reopened x2000: {good(results)}/50 within 1 s, median "
              f"{statistics.median(took) * 1000:.1f} ms, max {took[-1] * 1000:.0f} ms; attacker "
              f"(re)opened {reopened}; refused before the handshake "
              f"{value(seen, 'gunicorn_exporter_web_refused_total', reason='handshake_rate'):.0f}")
        assert good(results) >= 48, [r for r in results if r[0] != 200 or r[1] >= 1][:10]
        assert value(seen, "gunicorn_exporter_web_refused_total", reason="handshake_rate") > 1000
        assert rss_peak(base.pid) < 100 * MiB
        assert cg.oom_kills() == 0


def _listen_queue(port: int) -> int | None:
    """Recv-Q of the exporter's listening socket: connections the kernel accepted that the
    exporter has not taken yet."""
    out = subprocess.run(["ss", "-tlnH", f"sport = :{port}"], capture_output=True,
                         text=True).stdout.split()
    return int(out[1]) if len(out) > 1 else None


def test_password_guessing_neither_stalls_scrapes_nor_names_users(tmp_path):
    """1,000 wrong passwords over 8 connections: bcrypt runs off the event loop, so real
    scrapes (whose credentials were verified once) keep a median under 100 ms; an unknown
    user takes as long to refuse as a wrong password for a real one."""
    import bcrypt
    password = "correct horse battery staple"
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(8)).decode()   # ~16 ms a check
    cfg = tmp_path / "web.yml"
    cfg.write_text(f"basic_auth_users:\n  prometheus: '{hashed}'\n")
    # the scrapes time the web path and its auth, not the host: the exporter watches no
    # gunicorn (the suite's other workers' apps would make each collection slower)
    with throwaway_user() as user, \
            running_exporter(tmp_path, "--no-collector.postgres", "--web.config.file", str(cfg),
                             "--web.health-auth", "false",
                             "--gunicorn.include", "no-app-is-named-this") as base:
        port = int(base.rsplit(":", 1)[1])
        url = base + "/metrics"
        assert get(url, auth=("prometheus", password), timeout=10)[0] == 200
        # timing: unknown user against a wrong password, interleaved, 20 each
        unknown, wrong = [], []
        for i in range(20):
            s, t = get(url, auth=("nobody", f"x{i}"), timeout=10)
            assert s == 401
            unknown.append(t)
            s, t = get(url, auth=("prometheus", f"x{i}"), timeout=10)
            assert s == 401
            wrong.append(t)
        ratio = statistics.median(unknown) / statistics.median(wrong)
        assert 0.75 < ratio < 1.33, (statistics.median(unknown), statistics.median(wrong))
        with attack(user, "guess", 8, port, "1000", "prometheus") as (answered, status):
            results = []
            deadline = time.monotonic() + 150
            while answered() < 1000 and time.monotonic() < deadline:
                results.append(get(url, auth=("prometheus", password), timeout=5))
                time.sleep(0.02)          # pacing the measurement, not synchronising
            assert answered() >= 1000, f"the attacker got {answered()} answers"
        took = [t for s, t in results if s == 200]
        assert len(took) == len(results), [r for r in results if r[0] != 200][:5]
        assert len(results) >= 20, "the guesses were over before the scrapes started"
        assert statistics.median(took) < 0.1, statistics.median(took)
        outcome = status.read_text()
        assert int(re.search(r"\b401=(\d+)", outcome).group(1)) >= 990, outcome
        print(f"\n1,000 guesses over 8 connections ({outcome.strip()}): {len(took)} scrapes, "
              f"median {statistics.median(took) * 1000:.1f} ms, max {max(took) * 1000:.0f} ms; "
              f"unknown user {statistics.median(unknown) * 1000:.1f} ms vs wrong password "
              f"{statistics.median(wrong) * 1000:.1f} ms")
