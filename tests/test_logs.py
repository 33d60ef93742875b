"""Log tailing and error signatures: rotation, junk, long lines, and a real WORKER TIMEOUT.

The tailer tests drive `FileTailer.poll_sync()` directly (one poll = one call), so
they need no timing at all; the end-to-end test runs the collectors on a loop against
a real gunicorn whose request outlives --timeout.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time

import pytest

from exporter.collectors.attribution import AppIndex
from exporter.collectors.gunicorn import GunicornCollector, GunicornOptions
from exporter.collectors.logs import LogsCollector
from exporter.logs.files import LogFile, parse_log_file
from exporter.parsing import ConfigError
from exporter.logs.signatures import BUILTIN, Matcher, SignatureError, parse_user_signature
from exporter.logs.tail import FileTailer
from exporter.metrics import render_logs
from exporter.parsing import parse_line_length, parse_log_files, parse_signatures
from exporter.scrape import Scraper
from exporter.snapshot import (AppSnapshot, CollectorResult, GunicornSnapshot, ListenerSnapshot,
                               Snapshot)
from tests.harness.procs import unique_name


def tailer(path, **kw):
    lines: list[str] = []
    t = FileTailer(str(path), lines.append, **kw)
    return t, lines


def followed(path, content: bytes = b"", **kw):
    """A file holding `content`, its tailer, and the first poll done (the tailer is at
    the file's end)."""
    path.write_bytes(content)
    t, lines = tailer(path, **kw)
    poll(t, lines)
    return t, lines


def append(path, data: bytes) -> None:
    with open(path, "ab") as f:
        f.write(data)


def poll(t: FileTailer, sink: list[str]) -> list[str]:
    """One poll; the lines it delivered (poll_sync's result, as poll() hands them over)."""
    got = t.poll_sync()
    sink.extend(got)
    return got


# --- tailer --------------------------------------------------------------------

def test_starts_at_the_end_and_follows_appends(tmp_path):
    p = tmp_path / "a.log"
    p.write_bytes(b"old 1\nold 2\n")
    t, lines = tailer(p)
    assert poll(t, lines) == []
    append(p, b"new 1\nnew ")
    assert poll(t, lines) == ["new 1"]
    append(p, b"2\r\n")
    assert poll(t, lines) == ["new 2"]
    assert poll(t, lines) == []
    assert t.lines == 2


def test_missing_file_is_waited_for_then_read_from_its_start(tmp_path):
    p = tmp_path / "later.log"
    t, lines = tailer(p)
    assert poll(t, lines) == [] and not t.open_now and t.errors == 0
    p.write_bytes(b"first\nsecond\n")
    assert poll(t, lines) == ["first", "second"]
    assert t.open_now


def test_rename_and_create_rotation(tmp_path):
    p = tmp_path / "app.log"
    t, lines = followed(p)
    append(p, b"a\n")
    os.rename(p, tmp_path / "app.log.1")
    append(tmp_path / "app.log.1", b"b\n")         # the writer has not reopened yet
    assert poll(t, lines) == ["a", "b"]            # renamed away, nothing new: keep reading it
    append(tmp_path / "app.log.1", b"c\n")
    p.write_bytes(b"d\n")                          # the new file appears
    assert poll(t, lines) == ["c", "d"]            # old file drained first, then the new one
    assert t.rotations == 1
    append(p, b"e\n")
    assert poll(t, lines) == ["e"]
    assert lines == ["a", "b", "c", "d", "e"]      # nothing twice, nothing lost


def test_copytruncate_rotation(tmp_path):
    p = tmp_path / "app.log"
    t, lines = followed(p, b"x" * 100 + b"\n")
    append(p, b"before\n")
    assert poll(t, lines) == ["before"]
    shutil.copy(p, tmp_path / "app.log.1")
    os.truncate(p, 0)
    append(p, b"after\n")
    assert poll(t, lines) == ["after"]
    assert t.rotations == 1
    # truncated and refilled past our position between two polls: the bytes before
    # our position changed, so we start again at 0 instead of reading from the middle
    os.truncate(p, 0)
    append(p, b"refilled, and longer than before\nnext\n")
    assert poll(t, lines) == ["refilled, and longer than before", "next"]
    assert t.rotations == 2
    assert lines == ["before", "after", "refilled, and longer than before", "next"]


def test_copytruncate_reads_what_the_copy_holds_past_our_position(tmp_path):
    p = tmp_path / "app.log"
    t, lines = followed(p, b"".join(b"line %03d of the first file, long enough\n" % i
                                    for i in range(5)))
    append(p, b"read before the copy\n")
    assert poll(t, lines) == ["read before the copy"]
    append(p, b"unread 1\nunread 2\npartial")   # written, not read yet ...
    shutil.copy(p, tmp_path / "app.log.1")       # ... then logrotate's copytruncate
    (tmp_path / "other.log").write_bytes(p.read_bytes()[:30] + b"x" * 500)   # same head only
    os.truncate(p, 0)
    append(p, b"after\n")
    assert poll(t, lines) == ["unread 1", "unread 2", "after"]
    assert (t.rotations, t.lines_recovered, t.lines_lost) == (1, 2, 0)
    # without the copy there is nothing to recover (and nothing counted twice)
    append(p, b"gone with the file\n")
    os.truncate(p, 0)
    append(p, b"new\n")
    assert poll(t, lines) == ["new"]
    assert t.lines_recovered == 2


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_copytruncate_at_100_lines_a_second_loses_nothing_with_inotify(tmp_path):
    """The issue's measurement: copytruncate every 0.5 s while a writer appends 100 lines
    a second; every line arrives exactly once (bench/logrotate.py measures the modes)."""
    from bench.logrotate import run
    got = asyncio.run(run(tmp_path, seconds=3.0, rate=100, rotate_every=0.5, inotify=True,
                          recover=True, interval=1.0))
    assert got["rotations"] >= 5
    assert got["duplicates"] == 0
    assert got["received"] + got["lost"] == got["written"], got
    assert got["lost"] <= 1, got


def test_deleted_and_recreated(tmp_path):
    p = tmp_path / "app.log"
    t, lines = followed(p)
    append(p, b"one\n")
    p.unlink()
    assert poll(t, lines) == ["one"]     # drained, then closed
    assert not t.open_now
    assert poll(t, lines) == []
    p.write_bytes(b"two\n")
    assert poll(t, lines) == ["two"]
    assert lines == ["one", "two"]


def test_one_mib_line_is_cut_and_the_next_line_is_intact(tmp_path):
    p = tmp_path / "app.log"
    t, lines = followed(p, max_line=4096)
    append(p, b"WORKER TIMEOUT (pid:1) " + b"y" * (1 << 20) + b"\nshort\n")
    got = poll(t, lines)
    assert len(got) == 2 and len(got[0]) == 4096 and got[0].startswith("WORKER TIMEOUT")
    assert got[1] == "short"
    assert t.truncated_lines == 1


def test_long_line_split_over_polls_and_read_budget(tmp_path):
    p = tmp_path / "app.log"
    t, lines = followed(p, max_line=1000, max_read_per_poll=64 * 1024)
    append(p, b"z" * 300_000)  # no newline yet, larger than the budget
    first = poll(t, lines)
    assert len(first) == 1 and len(first[0]) == 1000  # cut once, rest skipped, not buffered
    assert len(t._partial) == 0
    for _ in range(10):                              # bounded: budget 64 KiB per poll
        poll(t, lines)
    append(p, b"tail\nok\n")
    for _ in range(10):
        poll(t, lines)
    assert lines == ["z" * 1000, "ok"]


def test_invalid_utf8_and_binary_junk(tmp_path):
    p = tmp_path / "app.log"
    t, lines = followed(p)
    append(p, b"\xff\xfe\x00\x01 bin\n\xc3\x28 WORKER TIMEOUT (pid:5)\n" + os.urandom(5000) + b"\nend\n")
    got = poll(t, lines)
    assert got[0] == "\ufffd\ufffd\x00\x01 bin"
    assert got[1].endswith("WORKER TIMEOUT (pid:5)")
    assert got[-1] == "end"


def test_not_a_regular_file_is_an_error_not_a_hang(tmp_path):
    p = tmp_path / "fifo"
    os.mkfifo(p)
    t, lines = tailer(p)
    assert asyncio.run(t.poll()) == 0
    assert t.errors == 1


def test_async_start_stop(tmp_path):
    p = tmp_path / "app.log"
    p.write_bytes(b"old\n")

    async def go():
        got = []
        t = FileTailer(str(p), got.append, interval=0.05)
        await t.start()
        append(p, b"new\n")
        deadline = time.monotonic() + 5
        while not got and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        await t.stop()
        return got

    assert asyncio.run(go()) == ["new"]


# --- signatures -------------------------------------------------------------------

EXAMPLES = {
    "worker_timeout": "[2024-05-01 10:00:00 +0000] [123] [CRITICAL] WORKER TIMEOUT (pid:456)",
    "worker_sigkill": "[2024-05-01 10:00:01 +0000] [123] [ERROR] Worker (pid:456) was sent SIGKILL! Perhaps out of memory?",
    "worker_signal": "[2024-05-01 10:00:01 +0000] [123] [WARNING] Worker (pid:456) was sent SIGABRT!",
    "worker_exit_code": "[2024-05-01 10:00:01 +0000] [123] [ERROR] Worker (pid:456) exited with code 1.",
    "worker_boot": "[2024-05-01 10:00:02 +0000] [789] [INFO] Booting worker with pid: 789",
    "worker_exiting": "[2024-05-01 10:00:02 +0000] [456] [INFO] Worker exiting (pid: 456)",
    "worker_boot_failed": "[2024-05-01 10:00:02 +0000] [123] [INFO] Reason: Worker failed to boot.",
    "queuepool_exhausted": "sqlalchemy.exc.TimeoutError: QueuePool limit of size 5 overflow 10 reached, "
                           "connection timed out, timeout 30.00 (Background on this error at: https://sqlalche.me/e/20/3o7r)",
    "nginx_connect_refused": '2024/05/01 10:00:00 [error] 31#31: *1 connect() failed (111: Connection refused) while '
                             'connecting to upstream, client: 10.0.0.1, server: _, request: "GET / HTTP/1.1", '
                             'upstream: "http://127.0.0.1:8000/", host: "example.com"',
    "nginx_upstream_eagain": '2024/05/01 10:00:00 [error] 31#31: *2 connect() to unix:/run/shop.sock failed '
                             '(11: Resource temporarily unavailable) while connecting to upstream, client: 10.0.0.1, '
                             'server: _, request: "GET / HTTP/1.1", upstream: "http://unix:/run/shop.sock:/", host: "x"',
    "nginx_upstream_timeout": '2024/05/01 10:00:00 [error] 31#31: *3 upstream timed out (110: Connection timed out) '
                              'while reading response header from upstream, client: 10.0.0.1, '
                              'upstream: "http://unix:/run/shop.sock:/slow", host: "x"',
    "http_502": '10.0.0.1 - - [01/May/2024:10:00:00 +0000] "GET / HTTP/1.1" 502 157 "-" "curl/8.0"',
    "http_504": '10.0.0.1 - - [01/May/2024:10:00:00 +0000] "GET /slow HTTP/1.1" 504 167 "-" "curl/8.0"',
    "heroku_h12": 'heroku[router]: at=error code=H12 desc="Request timeout" method=GET path="/" dyno=web.1',
    "nginx_upstream_missing": '2024/05/01 10:00:00 [crit] 31#31: *4 connect() to unix:/run/shop.sock failed '
                              '(2: No such file or directory) while connecting to upstream, client: 10.0.0.1, '
                              'server: _, request: "GET / HTTP/1.1", upstream: "http://unix:/run/shop.sock:/", host: "x"',
    "postgres_too_many_clients": 'psycopg.OperationalError: connection failed: FATAL:  sorry, too many clients already',
    "http_response": '10.0.0.1 - - [01/May/2024:10:00:00 +0000] "GET / HTTP/1.1" 200 2 "-" "curl/8.0"',
    "kernel_oom_kill": "May  1 10:00:00 host kernel: Memory cgroup out of memory: Killed process 456 (gunicorn) "
                       "total-vm:900000kB, anon-rss:800000kB",
}


ACCESS_KINDS = {"http_response", "http_502", "http_504"}


def test_every_builtin_signature_has_an_example_that_matches_only_it():
    m = Matcher()
    assert set(EXAMPLES) == {s.name for s in BUILTIN}
    for name, line in EXAMPLES.items():
        if name in ACCESS_KINDS:          # counted from a parsed access line's status
            assert m.match(line).names == [], name
            c = LogsCollector([])
            assert set(c.handle_line(line, "shop", "/a.log")) == {name, "http_response"}, name
            continue
        assert m.match(line).names == [name], (name, m.match(line))
    for line in ("[2024] [1] [INFO] Listening at: unix:/x (1)", "GET / 200 12", "", "\x00" * 100):
        assert m.match(line).names == [], line
    assert m.match("FATAL:  remaining connection slots are reserved for roles with the "
                   "SUPERUSER attribute").names == ["postgres_too_many_clients"]


def test_insight_ids_cover_the_insights_table():
    ids = {s.insight for s in BUILTIN}
    assert {"W5", "C7", "C4", "W4", "C1/C2", "C1", "W8"} <= ids


def test_who_wrote_a_line_is_its_format_prefix_never_its_text():
    m = Matcher()
    h = m.match(EXAMPLES["worker_timeout"])
    assert (h.pid, h.about, h.upstream) == (123, 456, None)
    assert m.match(EXAMPLES["nginx_upstream_eagain"]).upstream == "unix:/run/shop.sock"
    assert m.match(EXAMPLES["nginx_connect_refused"]).upstream == "127.0.0.1:8000"
    ok = "2024/05/01 10:00:00 [error] 1#1: *1 connect() failed (111: Connection refused) while connecting to upstream"
    assert m.match(ok + ', upstream: "http://[::1]:9000/x"').upstream == "[::1]:9000"


@pytest.mark.parametrize("line", [
    # free text that says what gunicorn says, anywhere but at the start of its own format
    '10.0.0.1 - - [01/May/2024:10:00:00 +0000] "GET / HTTP/1.1" 200 2 "-" "[CRITICAL] WORKER TIMEOUT (pid:456)"',
    "x [2024-05-01 10:00:00 +0000] [123] [CRITICAL] WORKER TIMEOUT (pid:456)",
    # gunicorn's prefix with a date gunicorn never writes (a basic-auth user cannot hold ':')
    "[2024-05-01 10.00.00 +0000] [123] [CRITICAL] WORKER TIMEOUT (pid:456)",
    # gunicorn's message with text after it (the rest of an access line behind a newline)
    '[2024-05-01 10:00:00 +0000] [123] [CRITICAL] WORKER TIMEOUT (pid:456) [01/May/2024] "GET / HTTP/1.1" 200',
    "[2024-05-01 10:00:00 +0000] [123] [ERROR] Error handling request /Worker (pid:456) was sent SIGKILL!",
    "[2024-05-01 10:00:00 +0000] [123] [INFO] Reason: Worker failed to boot. (said the client)",
    # nginx's message must start where nginx's prefix ends
    '2024/05/01 10:00:00 [error] 31#31: *1 open() "/x/upstream timed out (110: Connection timed out)" failed',
])
def test_forged_signatures_do_not_match(line):
    assert Matcher().match(line).names == []


def test_an_nginx_line_with_two_upstreams_names_none():
    # nginx accepts spaces in a URI: the request field can carry a second upstream
    line = ('2024/05/01 10:00:00 [error] 31#31: *2 connect() to unix:/run/shop.sock failed (11: Resource '
            'temporarily unavailable) while connecting to upstream, client: 10.0.0.1, server: _, request: '
            '"GET /a, upstream: "http://unix:/run/other.sock:/ HTTP/1.1", upstream: "http://unix:/run/shop.sock:/"')
    m = Matcher().match(line)
    assert m.names == ["nginx_upstream_eagain"] and m.upstream is None


def test_user_signatures():
    s = parse_user_signature("payment_failed=PaymentError: .*declined")
    m = Matcher((*BUILTIN, s))
    assert m.match("PaymentError: card declined").names == ["payment_failed"]
    assert parse_user_signature({"name": "x_y", "regex": "a,b"}).regex.pattern == "a,b"
    for bad in ("nameonly", "Bad-Name=x", "worker_timeout=x", "ok=", "ok=(unclosed"):
        with pytest.raises(SignatureError):
            parse_user_signature(bad)
    with pytest.raises(ConfigError, match="not a valid regular expression"):
        parse_signatures(["broken=[a-"])
    with pytest.raises(ConfigError, match="twice"):
        parse_signatures(["dup=a", "dup=b"])


def test_settings_parsers():
    assert parse_log_file("shop=/var/log/shop.log") == LogFile("/var/log/shop.log", "shop")
    assert parse_log_file("/var/log/a=b.log") == LogFile("/var/log/a=b.log", None)
    assert parse_log_file({"app": "x", "path": "/l"}) == LogFile("/l", "x")
    for bad in (["relative.log"], ["shop=relative"], ["/a", "/a"]):
        with pytest.raises(ConfigError):
            parse_log_files(bad)
    assert parse_line_length("64KiB") == 65536 and parse_line_length("1m") == 1 << 20
    with pytest.raises(ConfigError):
        parse_line_length("1")


# --- the collector ------------------------------------------------------------------

def _gsnap(master=123, workers=(456,), listeners=("unix:/run/shop.sock", "0.0.0.0:8000")):
    from exporter.snapshot import WorkerSnapshot
    a = AppSnapshot(app="shop", up=True, master_pid=master,
                    workers=[WorkerSnapshot(i, p, 0, 0, 0, 1, None, None, None, None, None, None)
                             for i, p in enumerate(workers)],
                    listeners=[ListenerSnapshot(x, "unix" if x.startswith("unix:") else "tcp", 0, 0)
                               for x in listeners])
    s = Snapshot()
    s.results["gunicorn"] = CollectorResult("gunicorn", True, 0, data=GunicornSnapshot(apps=[a]))
    return s


def test_collector_attributes_lines_to_apps():
    c = LogsCollector([LogFile("/nonexistent/nginx.log", "edge")])
    c._started = True
    snap = _gsnap()
    c.index.update(snap.results["gunicorn"].data)   # the gunicorn collector's part
    c.learn(snap)
    c.handle_line(EXAMPLES["nginx_upstream_eagain"], "edge")     # upstream names shop
    c.handle_line(EXAMPLES["nginx_connect_refused"], "edge")     # 127.0.0.1:8000 -> wildcard listener
    c.handle_line(EXAMPLES["worker_timeout"], None)              # master pid 123
    c.handle_line(EXAMPLES["http_502"], "edge")                  # no hint: the file's app
    c.handle_line(EXAMPLES["http_504"], None)                    # nothing: unknown
    c.handle_line("nothing to see", "edge")
    snap = asyncio.run(c.collect())
    ev = snap.events
    assert ev[("shop", "nginx_upstream_eagain")] == 1
    assert ev[("shop", "nginx_connect_refused")] == 1
    assert ev[("shop", "worker_timeout")] == 1
    assert ev[("edge", "http_502")] == 1
    assert ev[("unknown", "http_504")] == 1
    assert ev[("edge", "worker_timeout")] == 0                  # zero series exist from the start
    assert {a for a, _ in ev} == {"shop", "edge", "unknown"}
    fams = {f.name: f for f in render_logs(snap)}
    assert "gunicorn_log_events" in fams and "gunicorn_log_lines" in fams


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_real_worker_timeout_is_counted_once(gunicorn_factory):
    g = gunicorn_factory(workers=1, timeout=2, name=unique_name("timeoutapp"))
    (worker,) = g.worker_pids()

    async def scenario():
        index = AppIndex()      # written by the gunicorn collector, read by the logs one
        gun = GunicornCollector(GunicornOptions(control_socket=False), index=index)
        logs = LogsCollector([LogFile(str(g.log_path))], interval=0.1, index=index)
        scraper = Scraper([gun, logs], timeout=10)
        await logs.start()
        try:
            snap = await scraper.scrape()
            app = next(a.app for a in snap.results["gunicorn"].data.apps if a.master_pid == g.pid)
            snap = await scraper.scrape()
            ev = snap.results["logs"].data.events
            # started at the end of the file: the boot lines before it are not counted
            assert ev[(app, "worker_boot")] == 0 and ev[(app, "worker_timeout")] == 0
            request = asyncio.get_running_loop().run_in_executor(None, _slow, g)
            sent = time.monotonic()
            deadline = time.monotonic() + 30
            counted = None
            while time.monotonic() < deadline:
                ev = (await scraper.scrape()).results["logs"].data.events
                if ev.get((app, "worker_timeout"), 0) >= 1 and ev.get((app, "worker_boot"), 0) >= 1:
                    counted = time.monotonic() - sent
                    break
                await asyncio.sleep(0.05)
            await request
            assert counted is not None, g.diagnostics()
            # a few more polls of the file: still exactly one
            for _ in range(5):
                await logs.tailers[0].poll()
            return app, (await scraper.scrape()).results["logs"].data, counted
        finally:
            await logs.stop()

    app, data, seconds = asyncio.run(scenario())
    assert g.log_text().count("WORKER TIMEOUT") == 1
    assert data.events[(app, "worker_timeout")] == 1
    assert data.events[(app, "worker_boot")] == 1
    assert data.files[0].open and data.files[0].lines >= 2
    print(f"\nWORKER TIMEOUT counted {seconds:.2f}s after the request was sent (--timeout 2)")


def _slow(g):
    try:
        return g.get("/slow?seconds=20", timeout=30)
    except (OSError, ValueError) as e:
        return e
