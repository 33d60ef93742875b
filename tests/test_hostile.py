"""A hostile local user against the exporter: a throwaway unprivileged user (made by the
test, removed after) runs processes that look like gunicorn, each carrying one of the
inputs that used to break, hide, impersonate or leak through the exporter, while a real
app is measured in the same scrapes by a real exporter process over HTTP.

Every scrape is parsed strictly (tests/exposition.py). What must hold in every case:
/metrics answers 200 with the gunicorn collector successful, the real app is reported
with its real numbers, no label value is longer than 128 bytes, nothing the user could
not read leaks, and the hostile master's own data says what could not be known.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import require
from tests.exposition import scrape, select, value
from tests.harness.procs import poll
from tests.harness.servers import running_exporter
from tests.hostile import fake_gunicorn, real_app_fixture, throwaway_user

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

REAL = f"real-{secrets.token_hex(3)}"


real_app = real_app_fixture(REAL)


@pytest.fixture(scope="module")
def exporter(tmp_path_factory, real_app):
    # an app is remembered at its first sighting with workers and a listener (the flood
    # test stops one right after): test_short_lived_masters_are_not_remembered has the default
    with running_exporter(tmp_path_factory.mktemp("exp"), "--no-collector.postgres",
                          "--no-collector.logs", "--scrape.timeout", "8s",
                          "--gunicorn.remember-after", "0s") as base:
        yield base


def healthy_scrape(base: str) -> dict:
    """One scrape, with what must hold whatever the hostile process does."""
    series = scrape(base)
    assert value(series, "gunicorn_exporter_collector_success", collector="gunicorn") == 1
    assert value(series, "gunicorn_up", app=REAL) == 1
    assert value(series, "gunicorn_workers", app=REAL) == 2
    assert value(series, "gunicorn_workers_desired", app=REAL) == 2
    assert value(series, "gunicorn_exporter_app_errors", app=REAL) == 0
    for _name, labels in series:
        for _k, v in labels:
            assert len(v.encode()) <= 256, f"label value of {len(v.encode())} bytes"
        for k, v in labels:
            if k == "app":
                assert len(v.encode()) <= 128
    return series


def wait_for_app(base: str, name: str) -> dict:
    return poll(lambda: (s := healthy_scrape(base)) and value(s, "gunicorn_up", app=name) == 1 and s,
                20, message=f"the exporter never reported {name}")


def source_of(series, app, setting):
    hits = select(series, "gunicorn_setting_source_info", app=app, setting=setting)
    return [dict(lbl)["source"] for lbl in hits]


def _own(user, path: Path, text: str | None = None, mode: int = 0o644):
    if text is not None:
        path.write_text(text)
    os.chown(path, user.uid, user.gid)
    path.chmod(mode)
    return path


@pytest.mark.parametrize("case", ["huge-workers", "inf-timeout", "big-expression", "huge-string",
                                  "fifo-config", "long-name", "surrogate-name"])
def test_hostile_command_lines_and_config_files(exporter, case):
    with throwaway_user() as user:
        name = f"fake-{case}-{secrets.token_hex(2)}"
        args = [name]
        if case == "huge-workers":
            args = ["-w", "9" * 400, name]
        elif case == "inf-timeout":
            args = ["-c", str(_own(user, user.home / "c.py", "timeout = 1e999\n")), name]
        elif case == "big-expression":
            expr = "timeout = " + "+".join(["1"] * 50_000) + "\n"
            args = ["-c", str(_own(user, user.home / "c.py", expr)), name]
        elif case == "huge-string":
            args = ["-c", str(_own(user, user.home / "c.py", 'proc_name = "x" * 4194304\n')), name]
        elif case == "fifo-config":
            fifo = user.home / "fifo.py"
            os.mkfifo(fifo)
            _own(user, fifo, mode=0o666)
            args = ["-c", str(fifo), name]
            # a writer blocks until someone opens the FIFO for reading: the exporter must not
            writer = user.run(["{python}", "-c", f"open({str(fifo)!r}, 'w').write('x')"])
        elif case == "surrogate-name":  # a lone surrogate: not encodable as UTF-8
            args = ["-c", str(_own(user, user.home / "c.py", 'proc_name = "evil\\ud800"\n')), name]
        elif case == "long-name":
            args = ["--name", "n" * 100_000, name]
        fake_gunicorn(user, args)
        if case == "long-name":
            def up_long(s):
                return [dict(lbl)["app"] for (n, lbl), v in s.items() if n == "gunicorn_up"
                        and v == 1 and dict(lbl)["app"].startswith("nnnn")]
            series = poll(lambda: (s := healthy_scrape(exporter)) and up_long(s) and s, 20,
                          message="the fake master with a long name was not reported")
            [app] = up_long(series)
            assert len(app) == 128 and "~" in app  # cut, with a hash of the whole name
            return
        if case == "surrogate-name":
            series = poll(lambda: (s := healthy_scrape(exporter)) and
                          value(s, "gunicorn_up", app="evil?") == 1 and s, 20,
                          message="the fake master was not reported")
            return
        series = wait_for_app(exporter, name)
        if case == "huge-workers":
            assert source_of(series, name, "workers") == ["unknown"]
            assert value(series, "gunicorn_workers_desired", app=name) is None
        elif case in ("inf-timeout", "big-expression"):
            assert source_of(series, name, "timeout") == ["unknown"]
            assert value(series, "gunicorn_timeout_seconds", app=name) is None
        elif case == "huge-string":
            pass  # proc_name could not be known: the app is named by its app module
        elif case == "fifo-config":
            assert source_of(series, name, "workers") == ["unknown"]
        for _ in range(2):
            healthy_scrape(exporter)
        if case == "fifo-config":
            assert writer.poll() is None, "the exporter opened the FIFO for reading"


@pytest.mark.parametrize("answer", ["nested", "infinity", "garbage", "hang"])
def test_hostile_control_socket_answers(exporter, answer):
    with throwaway_user() as user:
        name = f"fake-ctl-{answer}-{secrets.token_hex(2)}"
        fake_gunicorn(user, ["-w", "3", name], mode="ctl", env={"FAKE_ANSWER": answer})
        series = wait_for_app(exporter, name)
        for _ in range(2):
            series = healthy_scrape(exporter)
        # nothing from the answer was believed: the settings are the command line's
        assert source_of(series, name, "workers") == ["cmdline"]
        assert value(series, "gunicorn_workers_desired", app=name) == 3
        assert value(series, "gunicorn_up", app=name) == 1


def test_a_huge_name_from_a_proven_control_socket_is_capped(exporter):
    # the socket is the fake's own (proven), so what it says about itself is taken, bounded
    with throwaway_user() as user:
        fake_gunicorn(user, ["-w", "3", "fake-bigname"], mode="ctl", env={"FAKE_ANSWER": "bigname"})

        def named():
            s = healthy_scrape(exporter)
            hits = [dict(lbl)["app"] for (n, lbl), v in s.items() if n == "gunicorn_up"
                    and v == 1 and dict(lbl)["app"].startswith("nnnn")]
            return (s, hits[0]) if hits else None
        series, app = poll(named, 20, message="the fake's answer was not used")
        assert len(app) == 128 and "~" in app
        assert value(series, "gunicorn_workers_desired", app=app) == 2
        assert source_of(series, app, "workers") == ["control_socket"]


def test_long_paths_in_maps_do_not_stall_the_scrape(exporter):
    with throwaway_user() as user:
        name = f"fake-maps-{secrets.token_hex(2)}"
        [p] = fake_gunicorn(user, [name], mode="maps")
        poll(lambda: os.path.exists(f"/proc/{p.pid}/maps") and
             open(f"/proc/{p.pid}/maps").read().count("site-packages-no") >= 200, 20,
             message="the fake did not map its files")
        wait_for_app(exporter, name)
        for _ in range(3):
            healthy_scrape(exporter)  # the gunicorn collector succeeds within its time limit


def test_a_config_file_only_root_may_read_is_not_published(exporter, tmp_path_factory):
    secret = f"SECRET{secrets.token_hex(4)}"
    vault = tmp_path_factory.mktemp("vault")
    vault.chmod(0o755)
    conf = vault / "root-only.py"
    conf.write_text(f'proc_name = "{secret}"\ntimeout = 77\n')
    conf.chmod(0o600)
    with throwaway_user() as user:
        link = user.home / "link.py"
        link.symlink_to(conf)
        for args in (["-c", str(conf)], ["-c", str(link)]):
            name = f"fake-secret-{secrets.token_hex(2)}"
            fake_gunicorn(user, [*args, name])
            series = wait_for_app(exporter, name)
            for _ in range(2):
                series = healthy_scrape(exporter)
            text = repr(series)
            assert secret not in text and value(series, "gunicorn_timeout_seconds", app=name) is None
            assert source_of(series, name, "timeout") == ["unknown"]


def test_a_flood_of_fake_masters_hides_no_real_app_and_evicts_no_real_memory(
        exporter, gunicorn_factory, tmp_path):
    require(os.path.exists("/bin/bash"), "bash is needed for the cheap fake masters")
    down = f"down-{secrets.token_hex(2)}"
    g = gunicorn_factory(name=down, workers=1, bind="tcp")
    wait_for_app(exporter, down)
    g.stop()
    poll(lambda: value(healthy_scrape(exporter), "gunicorn_up", app=down) == 0, 20,
         message="the stopped app did not read 0")
    with throwaway_user() as user:
        bash = user.home / "gunicorn"  # comm "gunicorn"; traps HUP and USR2 like an arbiter
        subprocess.run(["cp", "/bin/bash", str(bash)], check=True)
        script = "trap : HUP USR2; read -r line"  # waits on a pipe we keep open; no children
        fakes = [user.run([str(bash), "-c", script, f"flood{i}-{secrets.token_hex(2)}"],
                          stdin=subprocess.PIPE) for i in range(300)]
        poll(lambda: (value(healthy_scrape(exporter), "gunicorn_exporter_dropped_masters") or 0) > 0,
             30, message="300 fake masters did not exceed the cap")
        late = f"late-{secrets.token_hex(2)}"
        gunicorn_factory(name=late, workers=1, bind="tcp")
        series = wait_for_app(exporter, late)  # started after the flood, still measured
        assert value(series, "gunicorn_up", app=down) == 0
        for p in fakes:
            p.stdin.close()  # read returns: every fake exits
        for p in fakes:
            p.wait(10)
    # the fakes are gone; what the exporter remembers of real apps is intact
    series = poll(lambda: (s := healthy_scrape(exporter)) and
                  not (value(s, "gunicorn_exporter_dropped_masters") or 0) and s, 30,
                  message="the flood did not clear")
    assert value(series, "gunicorn_up", app=down) == 0
    assert value(series, "gunicorn_up", app=late) == 1


def test_another_user_cannot_take_an_apps_name(exporter):
    """A fake master calling itself REAL: the real app keeps its name, its numbers and
    gunicorn_up 1; the fake is reported under a suffixed name."""
    with throwaway_user() as user:
        [p] = fake_gunicorn(user, ["--name", REAL, "fakeapp:app"])
        series = poll(lambda: (s := healthy_scrape(exporter)) and
                      value(s, "gunicorn_up", app=f"{REAL}@pid{p.pid}") == 1 and s, 20,
                      message="the impostor was not reported under a suffixed name")
        assert value(series, "gunicorn_up", app=REAL) == 1
        [info] = select(series, "gunicorn_info", app=REAL)
        assert dict(info)["user"] == "root"


def test_orphans_titled_with_another_users_app_name(exporter):
    """Processes titled `gunicorn: worker [REAL]` by another user do not count as REAL's
    orphans."""
    require(os.path.exists("/bin/bash"), "bash is needed")
    with throwaway_user() as user:
        bash = user.home / "gunicorn"
        subprocess.run(["cp", "/bin/bash", str(bash)], check=True)
        fakes = [user.run([str(bash), "-c", f'exec -a "gunicorn: worker [{REAL}]" {bash} -c "read -r x"'],
                          stdin=subprocess.PIPE) for _ in range(3)]
        name = f"{REAL}@uid{user.uid}"
        series = poll(lambda: (s := healthy_scrape(exporter)) and
                      value(s, "gunicorn_orphan_workers", app=name) == 3 and s, 20,
                      message="the titled processes were not counted as the user's own orphans")
        assert value(series, "gunicorn_orphan_workers", app=REAL) is None
        for p in fakes:
            p.stdin.close()
        for p in fakes:
            p.wait(10)


def test_a_symlink_resolved_in_another_mount_namespace_leaks_nothing(exporter):
    """The attacker's own mount namespace hides a root-only directory behind a tmpfs it
    owns, and points -c at a file in that directory through an absolute symlink: the
    path must resolve in the master's namespace, with the master's user's rights."""
    require(shutil.which("unshare") is not None, "unshare (util-linux) is needed")
    secret = f"SECRET{secrets.token_hex(4)}"
    outer = Path(tempfile.mkdtemp(prefix="gx-vault-", dir="/tmp"))  # 0700 by mkdtemp
    outer.chmod(0o755)
    vault = outer / "vault"
    vault.mkdir(mode=0o700)                  # root's: the user may not search it
    (vault / "secret.py").write_text(f'proc_name = "{secret}"\n')
    (vault / "secret.py").chmod(0o644)
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, outer, True)
        user = stack.enter_context(throwaway_user())
        probe = user.run(["unshare", "-Urm", "true"])
        require(probe.wait(10) == 0, "unprivileged user namespaces are not allowed here")
        link = user.home / "link.py"
        link.symlink_to(vault / "secret.py")
        name = f"fake-ns-{secrets.token_hex(2)}"
        python, _ = __import__("tests.hostile", fromlist=["interpreter"]).interpreter()
        script = (f"mount -t tmpfs none {vault} && exec {python} {user.home}/bin/gunicorn "
                  f"-c {link} {name}")
        fake_gunicorn(user, [f"{name}-plain"])  # creates bin/gunicorn
        user.run(["unshare", "-Urm", "sh", "-c", script],
                 env={"FAKE_MODE": "plain", "FAKE_DIR": str(user.home),
                      **__import__("tests.hostile", fromlist=["interpreter"]).interpreter()[1]})
        series = wait_for_app(exporter, name)  # seen, its config file looked at
        for _ in range(3):
            series = healthy_scrape(exporter)
        assert secret not in repr(series)
        assert source_of(series, name, "timeout") == ["unknown"]


def test_control_sockets_that_never_answer_cost_the_scrape_nothing(exporter):
    """Any local user can bind a control socket that accepts and never answers for a
    fake master. Before: each added its --gunicorn.control-socket-timeout (1 s) to every
    scrape. Now the questions run beside the scrape: a scrape waits at most 0.1 s for
    the answers due, and not at all for a master whose last exchange failed. The
    client's clock times the scrapes; the real app's settings still come from its own
    control socket, with their age."""
    import time
    with throwaway_user() as user:
        names = [f"fake-hang{i}-{secrets.token_hex(2)}" for i in range(20)]
        for name in names:
            fake_gunicorn(user, ["-w", "3", name], mode="ctl", env={"FAKE_ANSWER": "hang"})
        poll(lambda: all(value(healthy_scrape(exporter), "gunicorn_up", app=n) == 1
                         for n in names), 30, message="the fake masters were not reported")
        took = []
        for _ in range(5):
            t = time.monotonic()
            series = healthy_scrape(exporter)
            took.append(time.monotonic() - t)
        print(f"scrapes with 20 silent control sockets: {[round(x, 3) for x in took]} s")
        assert max(took) < 0.5, took
        assert source_of(series, REAL, "workers") == ["control_socket"]
        age = value(series, "gunicorn_control_socket_answer_age_seconds", app=REAL)
        assert age is not None and 0 <= age < 120, age
        for name in names:    # nothing came from the fakes' sockets
            assert source_of(series, name, "workers") == ["cmdline"]
            assert value(series, "gunicorn_control_socket_answer_age_seconds", app=name) is None


def test_short_lived_masters_are_not_remembered(tmp_path, gunicorn_factory):
    """An unprivileged user starts 100 processes that look like masters and 3 real
    gunicorns with workers, and stops them all within --gunicorn.remember-after: none
    is remembered, /metrics is back to its size before (it used to keep about 4,400
    lines of `gunicorn_up 0` and their OOM counters). A real app that ran longer is
    remembered (gunicorn_up 0), and forgotten --gunicorn.forget-after after it stopped,
    by the test's own clock."""
    require(os.path.exists("/bin/bash"), "bash is needed for the cheap fake masters")
    from tests.harness.command import APPS_DIR
    from tests.harness.procs import free_port
    prefix = f"sl{secrets.token_hex(2)}"
    keep = gunicorn_factory(name=f"{prefix}-keep", workers=1, bind="tcp")
    with running_exporter(tmp_path, "--no-collector.postgres", "--no-collector.logs",
                          "--gunicorn.include", f"{prefix}-.*", "--gunicorn.remember-after", "20s",
                          "--gunicorn.forget-after", "15s",
                          "--statsd.listen-address", f"127.0.0.1:{free_port()}") as base:
        def lines() -> list[str]:
            with urllib.request.urlopen(base + "/metrics", timeout=10) as r:
                return [ln for ln in r.read().decode().splitlines() if not ln.startswith("#")]
        poll(lambda: value(scrape(base), "gunicorn_up", app=keep.name) == 1, 20,
             message="the long-running app was not reported")
        before = lines()
        with throwaway_user() as user:
            bash = user.home / "gunicorn"   # comm "gunicorn"; traps HUP and USR2 like an arbiter
            subprocess.run(["cp", "/bin/bash", str(bash)], check=True)
            fakes = [f"{prefix}-fake{i}" for i in range(100)]
            held = [user.run([str(bash), "-c", "trap : HUP USR2; read -r line", name],
                             stdin=subprocess.PIPE) for name in fakes]
            shorts = [f"{prefix}-short{i}" for i in range(3)]
            reals = [user.run(["{python}", "-m", "gunicorn", "-n", name, "-w", "1",
                               "-b", f"127.0.0.1:{free_port()}", "--chdir", str(APPS_DIR),
                               "wsgi_app:app"]) for name in shorts]
            poll(lambda: (s := scrape(base)) and all(
                value(s, "gunicorn_up", app=n) == 1 for n in fakes + shorts) and all(
                value(s, "gunicorn_workers", app=n) == 1 for n in shorts) and s, 30,
                message="the user's masters were not all reported")
            during = len(lines())
            for p in reals:
                os.kill(p.pid, signal.SIGTERM)    # a clean stop: no orphaned workers
            for p in reals:
                p.wait(20)
            for p in held:
                p.stdin.close()                   # read returns: every fake exits
            for p in held:
                p.wait(10)
        mine = fakes + shorts

        def forgotten():
            text = lines()
            return not any(f'app="{n}"' in ln for ln in text for n in mine) and text
        after = poll(forgotten, 20, message="the user's stopped masters are still reported")
        print(f"\n/metrics lines: {len(before)} before, {during} with the user's 103 masters, "
              f"{len(after)} after they stopped")
        assert during > len(before) + 1000
        # nothing is left but what was there before, and the long-running app's own
        # series that came since (its OOM counters, memory details)
        new = {ln.rsplit(" ", 1)[0] for ln in after} - {ln.rsplit(" ", 1)[0] for ln in before}
        assert all(f'app="{keep.name}"' in key for key in new), new
        # the long-running app: remembered once it ran 20 s, forgotten 15 s after it stopped
        poll(lambda: value(scrape(base), "gunicorn_exporter_remembered_apps") == 1, 40,
             message="the long-running app was never remembered")
        seen_up = time.monotonic()      # a scrape from here on finds it running
        assert value(scrape(base), "gunicorn_up", app=keep.name) == 1
        keep.stop()
        stopped = time.monotonic()
        poll(lambda: value(scrape(base), "gunicorn_up", app=keep.name) == 0, 20,
             message="the stopped app did not read gunicorn_up 0")
        poll(lambda: value(scrape(base), "gunicorn_up", app=keep.name) is None, 40, interval=0.2,
             message="the stopped app was never forgotten")
        # forgotten 15 s after it was last seen running: after the scrape above, and at
        # most a few seconds (a scrape, the stop) later than 15 s after the stop
        gone = time.monotonic()
        assert 15 <= gone - seen_up and gone - stopped < 15 + 5, (gone - seen_up, gone - stopped)
        assert not any(f'app="{keep.name}"' in ln for ln in lines())
