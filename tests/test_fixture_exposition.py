"""The gunicorn collector end to end on a recorded /proc (tests/fixtures/): node_exporter's
end-to-end test (the real binary on `collector/fixtures/`, the whole output diffed), in
Python and in-process, so it is part of the fast floor.

`python -m exporter`'s own path is taken in-process: the flags go through
`exporter.config.load` and `exporter.collectors.build`, the scrape through `Scraper`,
and the bytes come from the real /metrics handler (renderer and encoder). Only the
gunicorn and netstat collectors run (the others read the host: kmsg, UDP, psutil);
USS/PSS are off (psutil reads the host's /proc). With a proc root other than /proc the
collector reads sockets from PROC/PID/net, so nothing of the host's processes or sockets
can reach the scrape: another gunicorn on this host changes nothing.

The control socket answers come from the transcript a real gunicorn 27 master gave
(tests/fixtures/control/): `control.connect_checked`, which proves with SO_PEERCRED that
a live master answers (tests/test_identity.py tests that on real masters), is replaced by
a socket pair whose other end holds the recorded frames; the rest of `control.query`
(framing, ids, bounds, decoding) runs as it does against a master.

Left out of the diff, because they depend on the exporter's own process or on the clock:
process_*, gunicorn_exporter_web_* (the web server's own state), collector durations,
heartbeat ages (checked against the ages this test gives the heartbeat files) and the
Python version in gunicorn_exporter_build_info. When a change of the output is intended:

    GUNICORN_EXPORTER_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/test_fixture_exposition.py

rewrites tests/golden/fixture.txt and still fails, so the update is a conscious commit.
After recording the fixture again (tests/fixtures/record.py), regenerate it the same way.
"""

from __future__ import annotations

import asyncio
import difflib
import json
import os
import platform
import re
import socket
import urllib.request
from pathlib import Path

import pytest

from exporter.collectors import build
from exporter.config import COLLECTORS, load
from exporter.gunicorn import appsnap, control
from exporter.http import Exporter
from exporter.scrape import Scraper
from tests.exposition import parse_strict, select, value
from tests.fixtures import APPS, EXPECTED, control_answer, control_request, copy_tree
from tests.harness.servers import running_exporter

GOLDEN = Path(__file__).resolve().parent / "golden" / "fixture.txt"
UPDATE_ENV = "GUNICORN_EXPORTER_UPDATE_GOLDEN"
REGENERATE = f"{UPDATE_ENV}=1 .venv/bin/python -m pytest tests/test_fixture_exposition.py"
RUN = ("gunicorn", "netstat")
CLOCK_OR_OWN_PROCESS = ("process_", "gunicorn_exporter_web_", "gunicorn_exporter_collector_duration_",
                        "gunicorn_worker_heartbeat_age_", "gunicorn_control_socket_answer_age_",
                        "gunicorn_workers_heartbeat_age_", "gunicorn_workers_busy_heartbeat_age_")
WORKERS = sorted(pid for app in APPS.values() for pid in app["workers"])
AGES = {pid: 2.0 + 3 * i for i, pid in enumerate(WORKERS)}   # seconds since each beat
CONTROLLED = ("shop", "orders")     # api runs without a control socket


def flags(root: Path, *extra: str, run: tuple[str, ...] = RUN) -> list[str]:
    return ["--path.procfs", str(root), *(f"--no-collector.{n}" for n in COLLECTORS if n not in run),
            *EXPECTED["exporter_args"], *extra]


class RecordedMasters:
    """`control.connect_checked` for the fixture's masters: a socket pair whose far end
    holds what the master answered when recorded; keeps what the exporter sent."""

    def __init__(self):
        self.by_pid = {APPS[app]["master"]: app for app in CONTROLLED}
        self.asked: dict[str, tuple[str, socket.socket]] = {}

    def connect(self, procfs, pid, owner, path, master_pid, expect_vfs, timeout):
        app = self.by_pid.get(master_pid)
        if app is None:
            raise control.NotTheMaster(f"no recorded control socket for master {master_pid}")
        ours, theirs = socket.socketpair()
        theirs.sendall(control_answer(app))
        self.asked[app] = (path, theirs)
        ours.setblocking(False)
        return ours

    def sent(self, app: str) -> bytes:
        _path, theirs = self.asked[app]
        theirs.setblocking(False)
        data = b""
        while True:
            try:
                chunk = theirs.recv(65536)
            except BlockingIOError:
                return data
            if not chunk:
                return data
            data += chunk

    def close(self):
        for _path, theirs in self.asked.values():
            theirs.close()


async def _scrape(argv: list[str]) -> str:
    config = load(argv, environ={})
    collectors, joins = build(config)
    for c in collectors:
        await c.start()
    try:
        exporter = Exporter(config, Scraper(collectors, config.scrape_timeout, joins))
        response = await exporter.metrics({})
        assert response.status == 200
        return response.body.decode("utf-8")
    finally:
        for c in collectors:
            await c.stop()


def scrape(argv: list[str]) -> str:
    return asyncio.run(_scrape(argv))


def comparable(text: str) -> str:
    """The exposition without what depends on the exporter's process or the clock."""
    out = []
    for line in text.splitlines(keepends=True):
        m = re.match(r"(?:# (?:HELP|TYPE) )?([a-zA-Z_:][a-zA-Z0-9_:]*)", line)
        if m and m.group(1).startswith(CLOCK_OR_OWN_PROCESS):
            continue
        out.append(line)
    text = "".join(out)
    pinned = text.replace(f'python_version="{platform.python_version()}"', 'python_version="PINNED"')
    assert pinned.count('python_version="PINNED"') == 1, "gunicorn_exporter_build_info changed shape"
    return pinned


@pytest.fixture(scope="module")
def scraped(tmp_path_factory):
    """One scrape of the fixture with the recorded control socket answers:
    (exposition, the masters' stub)."""
    root = copy_tree(tmp_path_factory.mktemp("fixture"), AGES)
    masters = RecordedMasters()
    mp = pytest.MonkeyPatch()
    mp.setattr(control, "connect_checked", masters.connect)
    # resident memory is stat's rss pages times the page size of the host that recorded them
    mp.setattr(appsnap, "PAGE_SIZE", EXPECTED["page_size"])
    try:
        yield scrape(flags(root)), masters
    finally:
        mp.undo()
        masters.close()


def test_the_fixture_scrapes_to_the_golden_file(scraped):
    got = comparable(scraped[0])
    want = GOLDEN.read_text(encoding="utf-8") if GOLDEN.exists() else ""
    if got == want:
        return
    if os.environ.get(UPDATE_ENV) == "1":
        GOLDEN.write_text(got, encoding="utf-8")
        raise AssertionError(f"{GOLDEN} rewritten ({UPDATE_ENV}=1): review the diff and commit it")
    diff = "".join(difflib.unified_diff(want.splitlines(keepends=True), got.splitlines(keepends=True),
                                        f"{GOLDEN.name} (committed)", "the fixture's scrape now"))
    raise AssertionError(f"the fixture's scrape differs from {GOLDEN}. If the change is intended, "
                         f"regenerate and commit the file:\n    {REGENERATE}\n{diff}")


def test_the_golden_file_says_what_the_recorder_did():
    """The committed golden file against the recorder's own account (expected.json), not
    against the exporter: a golden file regenerated from a broken scrape fails here."""
    s = parse_strict(GOLDEN.read_text(encoding="utf-8"))
    assert {dict(lbl)["app"] for lbl in select(s, "gunicorn_up")} == set(APPS)
    for app, rec in APPS.items():
        assert value(s, "gunicorn_up", app=app) == 1
        assert value(s, "gunicorn_workers", app=app) == len(rec["workers"])
        assert set(select(s, "gunicorn_worker_pid", app=app).values()) == set(rec["workers"])
    # shop: two sync workers, each holding one of the three slow requests (the third waits)
    assert value(s, "gunicorn_workers_busy", app="shop") == EXPECTED["shop_active"] == 2
    assert sorted(select(s, "gunicorn_worker_connections", app="shop", state="active").values()) == [1, 1]
    assert value(s, "gunicorn_workers_connections", app="shop", state="active") == 2
    # api: four connections held (three requests, one idle keep-alive: /proc/PID/net cannot
    # tell that one apart) and one its client left
    roles = EXPECTED["client_ports"]
    assert sum(select(s, "gunicorn_worker_connections", app="api", state="active").values()) == \
        len(roles["active"]) + len(roles["idle"])
    assert sum(select(s, "gunicorn_worker_connections", app="api", state="client_closed").values()) == \
        len(roles["hung_up"])
    # api's settings come from its command line and config file (API_THREADS=4 in its environment)
    assert value(s, "gunicorn_worker_capacity", app="api") == 4
    assert value(s, "gunicorn_keepalive_seconds", app="api") == 300
    for setting, source in (("threads", "config_file"), ("workers", "config_file"),
                            ("bind", "cmdline"), ("keepalive", "config_file")):
        assert value(s, "gunicorn_setting_source_info", app="api", setting=setting, source=source) == 1
    # orders: the one worker holds its Postgres connection
    assert value(s, "gunicorn_worker_db_connections", app="orders", worker="0") == 1
    assert value(s, "gunicorn_workers_db_connections", app="orders") == 1
    # shop and orders: what their control sockets said
    for app in CONTROLLED:
        assert value(s, "gunicorn_setting_source_info", app=app, setting="workers",
                     source="control_socket") == 1
    assert {dict(lbl)["listener"] for lbl in select(s, "gunicorn_listener_queue_length", app="api")} \
        == set(APPS["api"]["binds"])


def test_each_master_was_asked_what_it_was_asked_when_recorded(scraped):
    _text, masters = scraped
    assert set(masters.asked) == set(CONTROLLED)     # api disables its control socket
    for app in CONTROLLED:
        path, _ = masters.asked[app]
        assert path == f"/tmp/gxfix/{app}.ctl"       # found in the fixture's unix table
        assert masters.sent(app) == control_request(app)


def test_the_control_answers_are_this_scrapes_own(scraped):
    """The answers were asked for in this scrape (waited for, a fraction of a second),
    and only the masters with a control socket have one."""
    s = parse_strict(scraped[0])
    for app in APPS:
        age = value(s, "gunicorn_control_socket_answer_age_seconds", app=app)
        if app in CONTROLLED:
            assert age is not None and 0 <= age < 5, (app, age)
        else:
            assert age is None, (app, age)


def test_heartbeat_ages_are_the_ages_of_the_files(scraped):
    s = parse_strict(scraped[0])
    for app, rec in APPS.items():
        pids = {dict(lbl)["worker"]: int(v)
                for lbl, v in select(s, "gunicorn_worker_pid", app=app).items()}
        assert pids, app
        for worker, pid in pids.items():
            age = value(s, "gunicorn_worker_heartbeat_age_seconds", app=app, worker=worker)
            # the scrape ran after the files were given their mtimes, within seconds
            assert AGES[pid] <= age < AGES[pid] + 10, (app, worker, age, AGES[pid])


def test_nothing_of_the_host_reaches_the_scrape(scraped):
    """Other gunicorns on this host (other test runs) are not in the fixture's scrape."""
    s = parse_strict(scraped[0])
    assert {dict(lbl)["app"] for lbl in select(s, "gunicorn_up")} == set(APPS)
    assert value(s, "gunicorn_exporter_socket_table_info", source="procfs") == 1


@pytest.mark.slow
def test_the_real_program_serves_the_same_exposition(tmp_path):
    """`python -m exporter --path.procfs FIXTURE` (a process: slow) serves what the
    in-process scrape renders for the same flags (control socket off in both: no master
    of the fixture can answer a real one)."""
    root = copy_tree(tmp_path / "tree", AGES)
    argv = flags(root, "--gunicorn.control-socket=false")
    with running_exporter(tmp_path, *argv) as base:
        with urllib.request.urlopen(base + "/metrics", timeout=10) as r:
            served = r.read().decode("utf-8")
    assert comparable(served) == comparable(scrape(argv))


def test_show_stats_counters_are_the_answers_own_and_range_checked(scraped):
    """The three `show stats` counters come out as the recorded answers say (gunicorn 27:
    workers_spawned, workers_killed, reloads), and a value that is not a counter is
    dropped rather than exposed."""
    s = parse_strict(scraped[0])
    for app in CONTROLLED:
        raw = control_answer(app)
        first = 4 + int.from_bytes(raw[:4], "big")          # the second frame: show stats
        answer = json.loads(raw[first + 4:])["data"]
        assert value(s, "gunicorn_workers_spawned_total", app=app) == answer["workers_spawned"]
        assert value(s, "gunicorn_worker_kill_signals_total", app=app) == answer["workers_killed"]
        assert value(s, "gunicorn_master_reloads_total", app=app) == answer["reloads"]
    assert [appsnap._count(v) for v in (0, 7, 2**53 - 1)] == [0, 7, 2**53 - 1]
    assert [appsnap._count(v) for v in (-1, 2**53, True, 1.5, "3", None, [1])] == [None] * 7
