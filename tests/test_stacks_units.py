"""The stacks collector's pure parts on literal inputs: py-spy's JSON and error text, the
frame that names the cause, the schedule (triggers, rate limits, the CPU budget, kills at
the timeout), the store's bounds, and the trigger on a dependency wait carried by a
snapshot built here (the gunicorn collector's WorkerSnapshot may carry one)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from exporter.collectors.stacks import StacksCollector, dependency_wait, workers_of
from exporter.gunicorn.heartbeat import HeartbeatFile
from exporter.labels import MAX_LABEL_BYTES
from exporter.snapshot import (AppSnapshot, CollectorResult, GunicornSnapshot, Snapshot,
                               WorkerSnapshot)
from exporter.stacks import pyspy, store
from exporter.stacks.schedule import BURST, IDLE_SLACK, Capture, Reading, Schedule, Worker

VENV = "/srv/venv/lib/python3.11/site-packages"
STDLIB = "/usr/lib/python3.11"


def frame(name, filename, line, short=None):
    return {"name": name, "filename": filename, "module": None, "line": line,
            "short_filename": short if short is not None else filename.rsplit("/", 1)[-1],
            "locals": None, "is_entry": False, "is_shim_entry": False}


SYNC = [{
    "pid": 12, "thread_id": 140136125574016, "thread_name": "MainThread", "os_thread_id": 12,
    "active": False, "owns_gil": False, "process_info": None,
    "frames": [
        frame("SocketIO.readinto", f"{STDLIB}/socket.py", 706),
        frame("HTTPResponse._read_status", f"{STDLIB}/http/client.py", 287),
        frame("fetch", f"{VENV}/shop/client.py", 31, "shop/client.py"),
        frame("view", "/srv/shop/views.py", 42, "shop/views.py"),
        frame("SyncWorker.handle_request", f"{VENV}/gunicorn/workers/sync.py", 184,
              "gunicorn/workers/sync.py"),
        frame("<module>", "/srv/venv/bin/gunicorn", 8),
    ]}]


def thread(name, tid, frames):
    return {"pid": 7, "thread_id": tid, "thread_name": name, "os_thread_id": tid,
            "active": False, "owns_gil": False, "frames": frames}


GTHREAD = [
    thread("MainThread", 7, [frame("EpollSelector.select", f"{STDLIB}/selectors.py", 468),
                             frame("ThreadWorker.run", f"{VENV}/gunicorn/workers/gthread.py", 220,
                                   "gunicorn/workers/gthread.py")]),
    thread("ThreadPoolExecutor-0_0", 8, [
        frame("socket.recv", "<frozen socket>", 1),
        frame("app", "/srv/app.py", 96), frame("_worker", f"{STDLIB}/concurrent/futures/thread.py", 83)]),
    thread("ThreadPoolExecutor-0_1", 9, [frame("app", "/srv/app.py", 96)]),
    thread("ThreadPoolExecutor-0_2", 10, [frame("other", "/srv/app.py", 12)]),
]


def test_the_innermost_frame_outside_gunicorn_and_the_standard_library():
    threads = pyspy.parse(json.dumps(SYNC))
    [t] = threads
    assert t.name == "MainThread" and t.tid == 12 and len(t.frames) == 6
    f = pyspy.innermost(threads)
    # an installed package that is not gunicorn counts as the app's own code
    assert f.label == "fetch (shop/client.py:31)"
    assert [x.library for x in t.frames] == [True, True, False, False, True, True]


def test_of_a_threaded_worker_the_frame_most_request_threads_are_in():
    threads = pyspy.parse(json.dumps(GTHREAD))
    assert pyspy.innermost(threads).label == "app (app.py:96)"
    assert threads[-1].name == "MainThread"      # threads with app frames come first


def test_a_stack_of_library_frames_only_names_its_innermost_frame():
    raw = [thread("MainThread", 1, [frame("select", f"{STDLIB}/selectors.py", 468),
                                     frame("run", f"{VENV}/gunicorn/arbiter.py", 1)])]
    assert pyspy.innermost(pyspy.parse(json.dumps(raw))).label == "select (selectors.py:468)"
    assert pyspy.innermost(()) is None


@pytest.mark.parametrize("path,library", [
    ("/usr/lib/python3.11/socket.py", True),
    ("/root/.pyenv/versions/3.11.7/lib/python3.11/http/client.py", True),
    ("/usr/lib64/python3.13t/threading.py", True),
    ("/usr/lib/python3/dist-packages/gunicorn/workers/sync.py", True),
    ("/srv/venv/lib/python3.11/site-packages/gunicorn/arbiter.py", True),
    ("/srv/venv/bin/gunicorn", True),
    ("<frozen importlib._bootstrap>", True),
    ("", True),
    ("/srv/venv/lib/python3.11/site-packages/requests/api.py", False),
    ("/srv/venv/lib/python3.11/site-packages/gunicorn_extras/x.py", False),
    ("/srv/shop/views.py", False),
    ("/usr/lib/python3.11/site-packages/shop/views.py", False),
])
def test_what_counts_as_gunicorn_or_the_standard_library(path, library):
    assert pyspy.is_library(path) is library


def test_what_py_spy_read_from_another_process_is_bounded():
    long = "x" * 100_000
    raw = [thread(long, 1, [frame(long, "/srv/" + long, 10**12)] + [
        frame(f"f{i}", "/srv/a.py", i) for i in range(200)])]
    raw += [thread(f"t{i}", i, [frame("g", "/srv/b.py", 1)]) for i in range(100)]
    raw.append({"frames": "not a list"})
    raw.append(["not", "a", "thread"])
    raw.append(thread("bad", True, [None, {"name": 5, "filename": None, "line": "9"}]))
    threads = pyspy.parse(json.dumps(raw))
    assert len(threads) <= pyspy.MAX_THREADS
    assert sum(len(t.frames) for t in threads) <= pyspy.MAX_FRAMES
    first = threads[0]
    assert len(first.frames) == pyspy.MAX_FRAMES_PER_THREAD and first.omitted == 201 - 64
    assert len(first.name.encode()) <= pyspy.MAX_TEXT
    assert first.frames[0].line == 10**9
    assert len(first.frames[0].label.encode()) <= MAX_LABEL_BYTES
    for bad in ("{}", "not json", "[1, 2", '"text"'):
        with pytest.raises(ValueError):
            pyspy.parse(bad)


def test_locals_are_never_kept_even_if_the_output_had_them():
    raw = [thread("MainThread", 1, [dict(frame("login", "/srv/auth.py", 3),
                                         locals=[{"name": "password", "repr": "'hunter2'"}])])]
    threads = pyspy.parse(json.dumps(raw))
    assert "hunter2" not in repr(threads)
    assert "hunter2" not in json.dumps(store.record(_capture(threads=threads)))


@pytest.mark.parametrize("stderr,outcome", [
    ("Error: Failed to find python version from target process\n\nStack backtrace:\n", "not_python"),
    ("Error: Failed to find a python interpreter in the .data section\n", "not_python"),
    ("Permission Denied: Try running again with elevated permissions by going 'sudo env \"PATH=$PATH\" !!'",
     "denied"),
    ("Error: Operation not permitted (os error 1)\n", "denied"),
    ("Error: Failed to get process executable name. Check that the process is running.\n", "gone"),
    ("Error: No such process (os error 3)\n", "gone"),
    ("thread 'main' panicked at src/x.rs:1:2\n", "failed"),
    ("", "failed"),
])
def test_the_outcome_of_a_failed_run_from_py_spys_error_text(stderr, outcome):
    assert pyspy.outcome_of_error(stderr) == outcome


def test_the_error_line_is_the_first_line_cut():
    assert pyspy.error_line("\n\nError: Failed to find python version\nStack backtrace:\n") == \
        "Failed to find python version"
    assert len(pyspy.error_line("E" * 10_000)) <= 200


# --- the schedule --------------------------------------------------------------------


def worker(pid, *, app="shop", timeout=30.0, age=0.0, cls="sync", dep=None, owner=0):
    return (pid, 1000.0 + pid), Worker(app, pid % 100, pid, timeout, cls, owner=owner,
                                       age=age, dependency=dep)


def alive(sched, ages, now):
    return sched.observe({k: Reading(True, 5, ages.get(k[0])) for k in sched.workers}, now)


def test_a_sync_worker_is_stuck_past_half_its_timeout_and_never_while_idle():
    s = Schedule(share=0.5)
    s.learn([worker(1), worker(2, cls="gthread"), worker(3, cls="sync")], 0.0)
    s2 = Schedule(share=0.2)
    s2.learn([worker(1), worker(2, cls="gthread")], 0.0)
    # an idle sync worker reaches timeout/2 between two beats: never stuck
    alive(s, {1: 15.0 + IDLE_SLACK, 2: 3.0, 3: 15.0 + IDLE_SLACK + 0.01}, 1.0)
    assert [w.pid for w in s.workers.values() if w.stuck_since is not None] == [3]
    # a smaller share applies to other worker classes only
    alive(s2, {1: 14.0, 2: 6.0 + IDLE_SLACK + 0.01}, 1.0)
    assert [w.pid for w in s2.workers.values() if w.stuck_since is not None] == [2]
    # no --timeout known: no heartbeat trigger
    s3 = Schedule()
    s3.learn([worker(4, timeout=None)], 0.0)
    alive(s3, {4: 1e6}, 1.0)
    assert s3.workers[(4, 1004.0)].stuck_since is None


def test_a_dependency_wait_past_min_wait_makes_a_worker_stuck():
    s = Schedule(min_wait=5.0)
    s.learn([worker(1, dep=("db:5432", 4.9)), worker(2, dep=("api:443", 5.0))], 0.0)
    alive(s, {1: 0.1, 2: 0.1}, 1.0)
    stuck = {w.pid: w.trigger for w in s.workers.values() if w.stuck_since is not None}
    assert stuck == {2: "dependency"}


def test_the_trigger_reads_dependency_wait_from_a_snapshot_when_it_carries_one():
    beat = HeartbeatFile(fd=7, dev=1, ino=2, monotonic=True)
    w = WorkerSnapshot(0, 4242, 1000.0, 0, 0.0, 1, 10, 1024, 0.5, 1, 0, 0, heartbeat_file=beat)
    carried = dataclasses.replace(w, pid=4243, slot=1)
    carried.dependency_wait = ("[::1]:8080", 7.5)        # what the gunicorn collector adds
    bad = dataclasses.replace(w, pid=4244, slot=2)
    bad.dependency_wait = ("x", float("nan"))
    app = AppSnapshot("shop", True, timeout=30.0, worker_class="gthread", workers=[w, carried, bad])
    c = StacksCollector()
    c.learn(Snapshot({"gunicorn": CollectorResult("gunicorn", True, 0.0,
                                                  data=GunicornSnapshot(apps=[app]))}))
    ws = {w.pid: w for w in c.schedule.workers.values()}
    assert ws[4242].dependency is None and ws[4244].dependency is None
    assert ws[4243].dependency == ("[::1]:8080", 7.5)
    assert ws[4243].beat_path == "/proc/4243/fd/7" and ws[4243].beat_id == (1, 2)
    c.schedule.observe({k: Reading(True, 9, 0.5) for k in c.schedule.workers}, 1.0)
    [due] = c.schedule.due(1.0)
    assert due.pid == 4243 and due.trigger == "dependency"
    assert [w[1].pid for w in workers_of(GunicornSnapshot(apps=[app]))] == [4242, 4243, 4244]


@pytest.mark.parametrize("value,expected", [
    (None, None), (("db:5432", 6), ("db:5432", 6.0)), (["db", 1.5], ("db", 1.5)),
    (("db", -1), None), (("db", True), None), ((5, 1.0), None), (("a", 1, 2), None),
    ("db:5432", None), (("db", float("inf")), None),
])
def test_a_dependency_wait_that_is_not_peer_and_seconds_is_ignored(value, expected):
    assert dependency_wait(value) == expected


def test_a_dependency_peer_is_capped_like_every_label():
    peer, seconds = dependency_wait(("p" * 1000, 1.0))
    assert len(peer.encode()) <= MAX_LABEL_BYTES and seconds == 1.0


def _capture(outcome="ok", cpu=0.008, mono=0.0, threads=(), w=None):
    return Capture(0.0, mono, "shop", 0, 1, 20.0, 30.0, "heartbeat", None, outcome,
                   "view (views.py:1)", threads, "", 0.01, cpu)


def test_one_capture_per_worker_per_interval_and_max_concurrent_at_once():
    s = Schedule(interval=10.0, max_concurrent=2, max_cpu=1.0)
    s.learn([worker(i) for i in range(1, 6)], 0.0)
    alive(s, {i: 20.0 + i for i in range(1, 6)}, 1.0)
    first = s.due(1.0)
    assert [w.pid for w in first] == [5, 4]            # nearest their timeout first
    assert s.due(1.1) == []                            # two running already
    for w in first:
        s.finished(w, _capture(mono=1.0))
    second = s.due(2.0)
    assert [w.pid for w in second] == [3, 2]           # not yet captured in this episode
    for w in second:
        s.finished(w, _capture("gone", mono=2.0))      # failed ones count for the interval
    third = s.due(3.0)
    assert [w.pid for w in third] == [1]
    s.finished(third[0], _capture(mono=3.0))
    assert s.due(10.9) == []                           # nobody again within the interval
    again = s.due(11.0)
    assert [w.pid for w in again] == [5, 4]            # all captured: the longest ago first


def test_owners_then_their_apps_take_turns_whatever_one_owner_has_stuck():
    """A hostile user (uid 1000) with 200 stuck workers nearer their timeout than anyone's
    (a fake heartbeat hours old) gets the first capture, and www-data's one stuck worker the
    next: turns go by owner, then by app within an owner, only then by nearness."""
    s = Schedule(interval=10.0, max_concurrent=1, max_cpu=1.0)
    fakes = [worker(i, app="fake", owner=1000, age=24834.0) for i in range(1000, 1200)]
    s.learn(fakes + [worker(1, app="shop", owner=33), worker(2, app="blog", owner=33),
                     worker(3, app="fake2", owner=1000, age=16.0)], 0.0)
    alive(s, {**{i: 24834.0 for i in range(1000, 1200)}, 1: 16.0, 2: 17.0, 3: 16.0}, 1.0)
    order = []
    for t in range(6):
        [w] = s.due(2.0 + t)
        order.append((w.owner, w.app))
        s.finished(w, _capture(mono=2.0 + t))
    # owners alternate; within an owner its apps alternate; within an app the nearest first
    assert order == [(1000, "fake"), (33, "blog"), (1000, "fake2"), (33, "shop"),
                     (1000, "fake"), (1000, "fake")]
    # with two at once, both owners get one
    s2 = Schedule(interval=10.0, max_concurrent=2, max_cpu=1.0)
    s2.learn(fakes + [worker(1, app="shop", owner=33)], 0.0)
    alive(s2, {**{i: 24834.0 for i in range(1000, 1200)}, 1: 16.0}, 1.0)
    assert sorted(w.owner for w in s2.due(2.0)) == [33, 1000]


def test_the_cpu_budget_holds_captures_back_once_spent():
    s = Schedule(interval=0.001, max_concurrent=1, max_cpu=0.01)
    s.learn([worker(1, age=25.0)], 0.0)
    alive(s, {1: 25.0}, 0.0)
    spent, t, captures = 0.0, 0.0, 0
    while t < 100.0:
        for w in s.due(t):
            s.finished(w, _capture(cpu=0.008, mono=t))
            spent += 0.008
            captures += 1
        t += 0.01
    # the burst, then at most max_cpu of a core, plus the one capture that overdraws
    assert spent <= 0.01 * BURST + 0.01 * 100.0 + 0.008
    assert spent >= 0.01 * 100.0                        # and it does spend the budget
    assert captures == pytest.approx((0.01 * BURST + 1.0) / 0.008, abs=2)


def test_a_captured_worker_gone_at_its_timeout_was_killed_there():
    s = Schedule()
    s.learn([worker(1, timeout=3.0), worker(2, timeout=3.0), worker(3, timeout=30.0)], 0.0)
    alive(s, {1: 2.5, 2: 1.0, 3: 16.0}, 10.0)
    for w in s.due(10.0):
        s.finished(w, _capture(mono=10.0))
    alive(s, {1: 2.5, 2: 1.0, 3: 16.0}, 10.0)
    deaths = {d.worker.pid: d for d in s.observe(
        {(1, 1001.0): Reading(False), (2, 1002.0): Reading(True, 6, 0.1),   # pid 2 reused
         (3, 1003.0): Reading(False)}, 10.6)}
    assert deaths[1].at_timeout and deaths[1].age == pytest.approx(3.1)
    assert deaths[1].worker.captured_in_episode
    assert deaths[2].at_timeout is False and deaths[2].age == pytest.approx(1.6)
    assert deaths[3].at_timeout is False                 # a 30 s timeout not reached
    assert s.workers == {}


def test_a_dead_worker_in_a_collection_learnt_after_its_death_is_not_followed_again():
    s = Schedule()
    s.learn([worker(1, timeout=3.0, age=2.5)], 0.0)
    alive(s, {1: 2.5}, 1.0)
    [d] = s.observe({(1, 1001.0): Reading(False)}, 2.0)
    assert d.at_timeout
    s.learn([worker(1, timeout=3.0, age=2.9)], 2.1)      # the scrape from before its death
    assert s.workers == {} and s.observe({}, 3.0) == []


def test_a_worker_missing_from_a_scrape_but_alive_is_forgotten_quietly():
    s = Schedule()
    s.learn([worker(1, timeout=3.0, age=2.9)], 0.0)
    s.learn([], 1.0)
    assert s.observe({(1, 1001.0): Reading(True, 5, 2.9)}, 1.5) == []
    assert s.workers == {}


def test_the_stuck_frame_lasts_while_the_worker_is_stuck():
    s = Schedule()
    s.learn([worker(1)], 0.0)
    alive(s, {1: 20.0}, 1.0)
    [w] = s.due(1.0)
    s.finished(w, _capture(mono=1.0))
    assert s.stuck_frames() == [("shop", 1, "view (views.py:1)")]
    alive(s, {1: 0.2}, 2.0)                              # it beat: the request ended
    assert s.stuck_frames() == []
    alive(s, {1: 20.0}, 30.0)                            # stuck again: not the old capture
    assert s.stuck_frames() == []


# --- the store ---------------------------------------------------------------------


def test_the_store_keeps_the_newest_within_its_bounds():
    st = store.Store(max_apps=2, captures=2, postmortems=1)
    threads = pyspy.parse(json.dumps(SYNC))
    for app in ("a", "b", "c"):
        for i in range(4):
            rec = store.record(dataclasses.replace(_capture(threads=threads), app=app, pid=i))
            st.add(rec)
        st.add(store.record(dataclasses.replace(_capture(threads=threads), app=app), "postmortem",
                            killed_after_seconds=3.1, captured_seconds_before_death=1.0))
    doc = json.loads(st.json())
    assert list(doc["apps"]) == ["c", "b"] and doc["truncated"] is False
    assert [r["pid"] for r in doc["apps"]["c"]["captures"]] == [3, 2]
    assert doc["apps"]["c"]["postmortems"][0]["event"] == "stack_postmortem"
    assert doc["apps"]["c"]["captures"][0]["frame"] == "view (views.py:1)"
    assert doc["apps"]["c"]["captures"][0]["stack"][0]["frames"][2] == "fetch (shop/client.py:31)"
    small = st.json(limit=3000)
    assert len(small) <= 3000 and json.loads(small)["truncated"] is True
    text = st.text()
    assert text.startswith(b"== c ==") and b"killed at its timeout" in text
    assert len(st.text(limit=2000)) <= 2000
    assert b"no stack captured yet" in store.Store().text()
    line = store.line(store.record(_capture(threads=threads)))
    assert line.startswith("stack_capture {") and "\n" not in line
    assert json.loads(line.split(" ", 1)[1])["worker"] == 0
