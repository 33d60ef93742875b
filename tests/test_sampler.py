"""The sampler (exporter/sampler/): accounting on literal inputs, and against real
gunicorn masters with a client's own clock as the oracle."""

from __future__ import annotations

import os
import threading
import time
import uuid

import pytest

from exporter import sampler as sampler_mod
from exporter.gunicorn import heartbeat
from exporter.gunicorn.heartbeat import HeartbeatFile
from exporter.sampler import HeartbeatStats, QueueStats, Sampler, SlidingMax
from exporter.snapshot import AppSnapshot, GunicornSnapshot, ListenerSnapshot, WorkerSnapshot
from tests.exposition import scrape, value
from tests.harness.clients import _connect, _read_to_eof, _request_bytes
from tests.harness.masters import Gunicorn
from tests.harness.procs import poll
from tests.harness.servers import running_exporter

# --- literal inputs -------------------------------------------------------------------


def test_sliding_max_forgets_what_left_the_window():
    m = SlidingMax(15)
    for t, v in [(0, 1), (1, 4), (2, 2), (10, 3)]:
        m.add(t, v)
    assert m.value(10) == 4
    assert m.value(16) == 4      # t=1 is the window's edge: still in
    assert m.value(16.5) == 3    # the 4 at t=1 is older than 15 s
    assert m.value(25) == 3
    assert m.value(25.5) is None # nothing within [10.5, 25.5]


def test_queue_stats_hold_each_sample_until_the_next():
    s = QueueStats(SlidingMax(15))
    # the oracle's shape at 10 Hz: 4, 3, 2, 1 for one second each, then empty
    t = 0.0
    for length in [4] * 10 + [3] * 10 + [2] * 10 + [1] * 10 + [0] * 5:
        s.sample(t, None if t == 0 else 0.1, length)
        t += 0.1
    assert s.queued_seconds == pytest.approx(4.0)
    assert s.length_seconds == pytest.approx(10.0)
    assert s.peak.value(t) == 4


def test_an_unreadable_sample_is_not_credited():
    s = QueueStats(SlidingMax(15))
    s.sample(0.0, None, 5)
    s.sample(0.1, 0.1, None)     # reading failed: 5 held for 0.1 s, then unknown
    s.sample(0.2, 0.1, 0)        # unknown is not held
    assert s.queued_seconds == pytest.approx(0.1)
    assert s.length_seconds == pytest.approx(0.5)


def _reader(queue: dict[int, int]):
    """A read_queues over literal queue lengths: {netns: (pid, inodes)} -> {inode: length}."""
    return lambda wanted: {i: queue[i] for _pid, inodes in wanted.values()
                           for i in inodes if i in queue}


def _snapshot(worker_fds: dict[int, tuple[int, int]], inode: int = 77) -> GunicornSnapshot:
    """One sync app with a listener `inode`; workers pid -> (open fds, active conns)."""
    workers = [WorkerSnapshot(slot=i, pid=pid, start_time=0, rss_bytes=0, cpu_seconds=0,
                              threads=1, open_fds=n, fd_limit=1024, heartbeat_age=0,
                              connections_active=active, connections_client_closed=0,
                              db_connections=0)
               for i, (pid, (n, active)) in enumerate(sorted(worker_fds.items()))]
    return GunicornSnapshot(apps=[AppSnapshot(
        app="shop", up=True, worker_class="sync", workers=workers,
        listeners=[ListenerSnapshot("unix:/run/shop.sock", "unix", 0, 128, inode=inode)])])


def _fake_proc(root, fds: dict[int, int]):
    for pid, n in fds.items():
        d = root / str(pid) / "fd"
        d.mkdir(parents=True, exist_ok=True)
        for f in d.iterdir():
            f.unlink()
        for i in range(n):
            (d / str(i)).touch()


def test_all_busy_seconds_from_fd_counts_and_the_queue(tmp_path):
    queue = {77: 0}
    sampler = Sampler(0.1, 15, _reader(queue), proc=str(tmp_path))
    # at the scrape, worker 10 held one client connection (7 fds), worker 11 was idle
    _fake_proc(tmp_path, {10: 7, 11: 6})
    sampler.retarget(_snapshot({10: (7, 1), 11: (6, 0)}), now=0)
    sampler.tick(0.0)
    sampler.tick(0.1)                       # one idle, one busy: not all busy
    _fake_proc(tmp_path, {10: 7, 11: 7})
    sampler.tick(0.2)
    sampler.tick(0.3)                       # both busy since 0.2
    _fake_proc(tmp_path, {10: 6, 11: 6})
    queue[77] = 2                           # idle by fd count, but connections wait
    sampler.tick(0.4)
    queue[77] = 0
    sampler.tick(0.5)
    sampler.tick(0.6)
    snap = sampler.snapshot()
    assert snap.all_busy_seconds["shop"] == pytest.approx(0.3)
    [lst] = snap.listeners
    assert (lst.app, lst.listener, lst.queued_seconds, lst.length_seconds) == \
        ("shop", "unix:/run/shop.sock", pytest.approx(0.1), pytest.approx(0.2))


def test_a_worker_that_opened_a_file_for_good_looks_idle_again_at_its_lowest(tmp_path):
    sampler = Sampler(0.1, 15, _reader({}), proc=str(tmp_path))
    _fake_proc(tmp_path, {10: 8})
    sampler.retarget(_snapshot({10: (8, 0)}), now=0)   # scraped while it held a file
    sampler.tick(0.0)
    _fake_proc(tmp_path, {10: 6})                     # its real idle count
    sampler.tick(0.1)
    _fake_proc(tmp_path, {10: 7})                     # a request
    sampler.tick(0.2)
    sampler.tick(0.3)
    assert sampler.snapshot().all_busy_seconds["shop"] == pytest.approx(0.1)


def test_costly_unix_reads_wait_while_a_worker_is_free(tmp_path, monkeypatch):
    """On a host where reading a unix listener costs a walk of every unix socket, a sync
    app's unix listener is read only every UNIX_RECHECK while one of its workers is idle
    and the queue was empty; at every sample once every worker is busy or a read finds
    connections waiting. Its TCP listener is read at every sample."""
    monkeypatch.setattr(sampler_mod, "CHEAP_UNIX_READ", -1.0)   # every read is costly
    queue = {77: 0, 78: 0}
    asked: list[set[int]] = []

    def reader(wanted):
        inodes = {i for _pid, ws in wanted.values() for i in ws}
        asked.append(inodes)
        return {i: queue[i] for i in inodes}
    sampler = Sampler(0.1, 15, reader, proc=str(tmp_path))
    snap = _snapshot({10: (6, 0), 11: (6, 0)})
    snap.apps[0].listeners.append(ListenerSnapshot("127.0.0.1:8000", "tcp", 0, 128, inode=78))
    _fake_proc(tmp_path, {10: 6, 11: 6})
    sampler.retarget(snap, now=0)
    for t in (0.0, 0.1, 0.5, 0.9, 1.0, 1.1):
        sampler.tick(t)
    assert asked == [{77, 78}, {78}, {78}, {78}, {77, 78}, {78}]
    _fake_proc(tmp_path, {10: 7, 11: 7})        # every worker busy: read at every sample
    asked.clear()
    sampler.tick(1.2)
    sampler.tick(1.3)
    assert asked == [{77, 78}, {77, 78}]
    _fake_proc(tmp_path, {10: 6, 11: 6})        # workers look free but connections wait
    queue[77] = 3                               # (workers stuck outside any request)
    asked.clear()
    sampler.tick(1.4)                           # the last read (1.3) found it empty
    sampler.tick(2.3)
    sampler.tick(2.4)                           # 1 s after the last read: seen
    sampler.tick(2.5)                           # and read again while not empty
    assert asked == [{78}, {78}, {77, 78}, {77, 78}]
    [lst] = [x for x in sampler.snapshot().listeners if x.listener.startswith("unix:")]
    assert (lst.queued_seconds, lst.length_seconds) == (pytest.approx(0.1), pytest.approx(0.3))


def test_one_apps_busy_listener_does_not_delay_anothers_recheck(tmp_path, monkeypatch):
    """Each unix listener has its own recheck clock (review: one app read at every
    sample kept another app's queue, filling behind workers that looked idle, unread)."""
    monkeypatch.setattr(sampler_mod, "CHEAP_UNIX_READ", -1.0)
    queue = {90: 0, 91: 0}
    reads = {90: 0, 91: 0}

    def reader(wanted):
        inodes = {i for _pid, ws in wanted.values() for i in ws}
        for i in inodes:
            reads[i] += 1
        return {i: queue[i] for i in inodes}

    def app(name, pid, inode):
        snap = _snapshot({pid: (6, 0)}, inode=inode)
        a = snap.apps[0]
        a.app = name
        a.listeners[0] = ListenerSnapshot(f"unix:/run/{name}.sock", "unix", 0, 128, inode=inode)
        return a
    sampler = Sampler(0.1, 15, reader, proc=str(tmp_path))
    _fake_proc(tmp_path, {10: 6, 20: 6})
    sampler.retarget(GunicornSnapshot(apps=[app("busy", 10, 90), app("stuck", 20, 91)]), now=0)
    sampler.tick(0.0)
    _fake_proc(tmp_path, {10: 7, 20: 6})        # busy's worker busy; stuck's looks idle
    queue[91] = 5                               # while 5 connections wait at stuck
    for k in range(1, 31):
        sampler.tick(round(k * 0.1, 1))
    stuck = [x for x in sampler.snapshot().listeners if x.app == "stuck"][0]
    assert reads[90] == 31 and reads[91] >= 21
    assert stuck.queued_seconds == pytest.approx(2.0)   # seen from t=1.0 on


def test_cheap_unix_reads_happen_at_every_sample(tmp_path):
    asked: list[set[int]] = []

    def reader(wanted):
        inodes = {i for _pid, ws in wanted.values() for i in ws}
        asked.append(inodes)
        return {i: 0 for i in inodes}
    sampler = Sampler(0.1, 15, reader, proc=str(tmp_path))
    _fake_proc(tmp_path, {10: 6})
    sampler.retarget(_snapshot({10: (6, 0)}), now=0)
    for t in (0.0, 0.1, 0.2):
        sampler.tick(t)
    assert asked == [{77}, {77}, {77}]          # a literal reader costs microseconds


def test_a_long_gap_is_skipped_not_guessed():
    sampler = Sampler(0.1, 15, _reader({77: 3}))
    sampler.retarget(GunicornSnapshot(apps=[AppSnapshot(
        app="shop", up=True, listeners=[ListenerSnapshot("x", "tcp", 0, 1, inode=77)])]), now=0)
    sampler.tick(0.0)
    sampler.tick(5.0)
    sampler.tick(5.1)
    snap = sampler.snapshot()
    assert snap.skipped_seconds == pytest.approx(5.0)
    assert snap.listeners[0].queued_seconds == pytest.approx(0.1)


def test_counters_survive_a_scrape_that_missed_the_listener():
    sampler = Sampler(0.1, 15, _reader({77: 1}))
    found = GunicornSnapshot(apps=[AppSnapshot(
        app="shop", up=True, listeners=[ListenerSnapshot("x", "tcp", 0, 1, inode=77)])])
    sampler.retarget(found, now=0)
    sampler.tick(0.0)
    sampler.tick(0.1)
    sampler.retarget(GunicornSnapshot(apps=[]), now=1)
    assert sampler.snapshot().listeners == []           # not reported while missing
    sampler.retarget(found, now=2)
    assert sampler.snapshot().listeners[0].queued_seconds == pytest.approx(0.1)
    sampler.retarget(GunicornSnapshot(apps=[]), now=1000)
    sampler.retarget(found, now=1001)                    # gone for longer than KEEP
    assert sampler.snapshot().listeners[0].queued_seconds == 0


def test_heartbeat_clock_by_version_or_by_size():
    assert heartbeat.legacy_version("21.2.0") is True
    assert heartbeat.legacy_version("27.0.1") is False
    assert heartbeat.legacy_version("unknown") is None
    assert heartbeat.is_monotonic(1000.0, None, mono_now=5000.0)          # monotonic-sized
    assert not heartbeat.is_monotonic(1.7e9, None, mono_now=5000.0)       # an epoch time
    assert not heartbeat.is_monotonic(1000.0, True, mono_now=5000.0)      # gunicorn 21
    assert heartbeat.last_beat(10.0, 20.0, monotonic=True) == 10.0
    assert heartbeat.last_beat(10.0, 20.0, monotonic=False) == 20.0
    assert heartbeat.age(10.0, True, mono_now=35.5, wall_now=0.0) == 25.5
    assert heartbeat.age(40.0, True, mono_now=35.5, wall_now=0.0) == 0.0   # never negative


def _beat_file(tmp_path, pid: int = 10, fd: int = 5):
    """A heartbeat file at PROC/PID/fd/FD (a plain file: stat() is what is read)."""
    path = tmp_path / str(pid) / "fd" / str(fd)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()
    st = path.stat()
    return path, HeartbeatFile(fd, st.st_dev, st.st_ino, monotonic=True)


def test_heartbeat_max_recovers_the_age_just_before_an_unseen_beat(tmp_path):
    """Read once a second: a beat between two reads ends an age nobody sampled at its
    largest; the beat's own time stamp (mtime: gunicorn's monotonic clock) gives it."""
    path, file = _beat_file(tmp_path)
    stats = HeartbeatStats(window=15)
    stats.follow(10, file, str(tmp_path))
    mono = 1000.0
    os.utime(path, (mono, mono))                 # a beat at 1000: a request starts
    stats.update(mono, stats.read(), mono, 0.0)
    for t in range(1, 25):                       # reads every second: ages 1..24
        stats.update(mono + t, stats.read(), mono + t, 0.0)
    os.utime(path, (mono + 24.6, mono + 24.6))   # the request ends at 24.6 s: a beat
    stats.update(mono + 25, stats.read(), mono + 25, 0.0)
    assert stats.peak.value(mono + 25) == pytest.approx(24.6)
    assert stats.peak.value(mono + 39) == pytest.approx(24.6)   # kept for the window
    assert stats.peak.value(mono + 40.5) is None                # 15 s later: forgotten


def test_heartbeat_of_another_file_is_not_read(tmp_path):
    """A reused pid or fd: the device and inode must still be the heartbeat's."""
    path, file = _beat_file(tmp_path)
    stats = HeartbeatStats(window=15)
    stats.follow(10, file, str(tmp_path))
    assert stats.read() is not None
    other = path.with_name("other")
    other.touch()
    os.replace(other, path)                      # another file at the same place
    assert stats.read() is None
    stats.update(1.0, None, 1.0, 0.0)
    assert stats.file is None                    # not read again until the next scrape


def test_sampler_reports_heartbeat_max_per_slot_and_keeps_it_past_a_new_worker(tmp_path):
    path, file = _beat_file(tmp_path, pid=10)
    snap = _snapshot({10: (6, 1)})
    snap.apps[0].workers[0].heartbeat_file = file
    sampler = Sampler(0.1, 15, _reader({}), proc=str(tmp_path))
    sampler.retarget(snap, now=0)
    mono = time.monotonic()
    os.utime(path, (mono - 20, mono - 20))       # in its request for 20 s
    assert sampler.snapshot().heartbeat_max == [("shop", 0, pytest.approx(20, abs=0.5))]
    new_path, new_file = _beat_file(tmp_path, pid=11)   # killed; slot 0 gets pid 11
    os.utime(new_path, (mono, mono))
    snap = _snapshot({11: (6, 0)})
    snap.apps[0].workers[0].heartbeat_file = new_file
    sampler.retarget(snap, now=1)
    [(app, slot, seconds)] = sampler.snapshot().heartbeat_max
    assert (app, slot) == ("shop", 0) and seconds == pytest.approx(20, abs=0.5)
    sampler.retarget(GunicornSnapshot(apps=[]), now=2)
    assert sampler.snapshot().heartbeat_max == []


# --- real gunicorn, the client's clock as the oracle ------------------------------------

def _concurrent_requests(target, n: int, seconds: float) -> tuple[float, list[float]]:
    """n requests sent at once; (when they were sent, sorted times their answers ended)."""
    socks = [_connect(target, 5) for _ in range(n)]
    ends: list[float] = []
    t0 = time.monotonic()
    for s in socks:
        s.sendall(_request_bytes(f"/slow?seconds={seconds}"))

    def read(s):
        body = _read_to_eof(s, 30)
        assert b" 200 " in body.split(b"\r\n", 1)[0], body[:100]
        ends.append(time.monotonic())
        s.close()
    threads = [threading.Thread(target=read, args=(s,)) for s in socks]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(ends) == n
    return t0, sorted(ends)


def _counters(base, app, listener):
    got = scrape(base)
    lv = {"app": app, "listener": listener}
    return (value(got, "gunicorn_listener_queued_seconds_total", **lv),
            value(got, "gunicorn_listener_queue_length_seconds_total", **lv),
            value(got, "gunicorn_workers_all_busy_seconds_total", app=app),
            value(got, "gunicorn_listener_queue_peak", **lv))


@pytest.mark.slow
@pytest.mark.parametrize("bind", ["unix", "tcp"])
def test_five_requests_on_one_sync_worker(tmp_path, bind):
    """One sync worker, 5 simultaneous 1-second requests: the queue is 4, 3, 2, 1 for a
    second each. The client's clock says when each answer ended: request k (k >= 2)
    waited from the send until answer k-1 ended."""
    name = f"samp5-{uuid.uuid4().hex[:8]}"
    with Gunicorn.start(tmp_path, workers=1, bind=bind, name=name) as g, \
            running_exporter(tmp_path, "--no-collector.postgres", "--no-collector.logs") as base:
        app, listener = name, g.bind   # the listener label is the bind as passed
        poll(lambda: _counters(base, app, listener)[0] is not None, 20,
             message="the sampler never reported the listener")
        q0, i0, b0, _ = _counters(base, app, listener)
        t0, ends = _concurrent_requests(g.listener, 5, 1.0)
        queued, integral, busy, peak = _counters(base, app, listener)
        print(f"{bind}: queued {queued - q0:.2f}, integral {integral - i0:.2f}, "
              f"busy {busy - b0:.2f}, peak {peak}; client: "
              f"{ends[3] - t0:.2f} {sum(e - t0 for e in ends[:4]):.2f} {ends[4] - t0:.2f}")
        expect_queued = ends[3] - t0
        expect_integral = sum(end - t0 for end in ends[:4])
        expect_busy = ends[4] - t0
        # 4 wait while the worker runs one; 5 if all arrived before its first accept (a
        # busy host: the worker woke after the last connection was queued)
        assert peak in (4, 5)
        assert queued - q0 == pytest.approx(expect_queued, abs=0.35)
        assert integral - i0 == pytest.approx(expect_integral, abs=1.0)
        assert busy - b0 == pytest.approx(expect_busy, abs=0.35)
        assert expect_queued == pytest.approx(4, abs=0.3)   # the schedule really was 4,3,2,1
        assert expect_integral == pytest.approx(10, abs=0.6)


@pytest.mark.slow
def test_all_busy_only_while_every_worker_is(tmp_path):
    """Two sync workers: one request alone keeps one busy (adds ~0 s); two at once keep
    both busy for as long as the shorter lasts (client's clock)."""
    name = f"sampbusy-{uuid.uuid4().hex[:8]}"
    with Gunicorn.start(tmp_path, workers=2, bind="tcp", name=name) as g, \
            running_exporter(tmp_path, "--no-collector.postgres", "--no-collector.logs") as base:
        app, listener = name, g.bind   # the listener label is the bind as passed
        poll(lambda: _counters(base, app, listener)[2] is not None, 20,
             message="the sampler never reported the app")
        busy0 = _counters(base, app, listener)[2]
        _concurrent_requests(g.listener, 1, 1.0)
        busy1 = _counters(base, app, listener)[2]
        assert busy1 - busy0 < 0.25
        t0, ends = _concurrent_requests(g.listener, 2, 1.5)
        busy2 = _counters(base, app, listener)[2]
        assert busy2 - busy1 == pytest.approx(ends[0] - t0, abs=0.35)


@pytest.mark.slow
def test_sampler_off(tmp_path):
    with running_exporter(tmp_path, "--sampler.interval", "0", "--no-collector.postgres") as base:
        got = scrape(base)
        assert not any(name.startswith("gunicorn_exporter_sampler") for name, _ in got)
        assert ("gunicorn_exporter_collector_success", (("collector", "sampler"),)) not in got


@pytest.mark.slow
def test_heartbeat_max_sees_a_request_between_two_scrapes(tmp_path):
    """A 6 s request that starts and ends between two scrapes: the second scrape's
    heartbeat age is small again, its between-scrape maximum is the request's length
    (the client's clock bounds it from above: connect, send and read included)."""
    name = f"sampbeat-{uuid.uuid4().hex[:8]}"
    with Gunicorn.start(tmp_path, workers=1, bind="tcp", name=name, timeout=30) as g, \
            running_exporter(tmp_path, "--no-collector.postgres", "--no-collector.logs") as base:
        lv = {"app": name, "worker": "0"}
        poll(lambda: value(scrape(base), "gunicorn_worker_heartbeat_age_max_seconds", **lv)
             is not None, 20, message="no heartbeat maximum for the worker")
        t0, [end] = _concurrent_requests(g.listener, 1, 6.0)
        client = end - t0
        got = scrape(base)
        peak = value(got, "gunicorn_worker_heartbeat_age_max_seconds", **lv)
        now = value(got, "gunicorn_worker_heartbeat_age_seconds", **lv)
        print(f"client {client:.2f} s, heartbeat max {peak:.2f} s, now {now:.2f} s")
        assert now < 2.0
        assert 5.9 <= peak <= client + 0.05
