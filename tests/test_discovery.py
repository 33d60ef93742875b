"""Discovery on literal process tables: what is a master, a worker, an orphan, a USR2 master.

Each case is a small fixture process tree (stat, argv, status) and a literal probe
(fd tables, heartbeat inodes, environments), so the classification rules are tested
without starting anything. tests/test_identity.py provokes the same cases for real.
"""

from __future__ import annotations

import signal

from exporter.gunicorn.discovery import Proc, discover
from exporter.gunicorn.cmdline import gunicorn_args, parse_title
from exporter.linux.procfs import FdScan, ProcStat, ProcStatus

ARBITER = 1 << (signal.SIGHUP - 1) | 1 << (signal.SIGUSR2 - 1) | 1 << (signal.SIGTTIN - 1)
WORKER = 1 << (signal.SIGTERM - 1) | 1 << (signal.SIGTTIN - 1)   # TTIN is inherited


def proc(pid, ppid, argv, *, start=None, uid=1000, caught=None):
    title = parse_title(argv)
    gargs = None if title else gunicorn_args(argv)
    if caught is None:
        caught = ARBITER if (title and title[0] == "master") else WORKER
    stat = ProcStat(pid=pid, comm="gunicorn", state="S", ppid=ppid, utime_ticks=0,
                    stime_ticks=0, num_threads=1, starttime_ticks=start or pid * 10,
                    rss_pages=100)
    return Proc(pid, stat, argv, title, gargs, ProcStatus(uid, uid, frozenset(), caught, 2))


class Probe:
    """fds: pid -> heartbeat inodes held; environ: pid -> dict (missing = unreadable)."""

    def __init__(self, beats=None, environ=None, denied=()):
        self.beats = beats or {}
        self.env = environ or {}
        self.denied = set(denied)

    def fds(self, pid, limit=None, uid=-1):
        if pid in self.denied:
            raise PermissionError(13, "Permission denied")
        beats = self.beats.get(pid, ())
        return FdScan([], [(10 + i, f"/tmp/wgunicorn-{b} (deleted)") for i, b in enumerate(beats)],
                      len(beats))

    def heartbeats(self, pid, scan):
        return frozenset((1, b) for b in self.beats.get(pid, ()))

    def environ(self, pid):
        return self.env.get(pid, {}) if pid not in self.denied else None


APP = ["/venv/bin/gunicorn", "-w", "2", "app:app"]


def table(*procs):
    return {p.pid: p for p in procs}


def test_plain_master_with_two_workers():
    procs = table(proc(100, 1, APP, caught=ARBITER), proc(101, 100, APP), proc(102, 100, APP))
    d = discover(procs, Probe({100: [1, 2], 101: [1], 102: [2]}))
    [m] = d.masters
    assert m.proc.pid == 100 and [w.pid for w in m.workers] == [101, 102]
    assert d.orphans == []


def test_orphan_after_kill_9_is_not_a_master():
    # the master is gone; its busy worker (same argv, parent now init) holds its heartbeat
    procs = table(proc(101, 1, APP))
    d = discover(procs, Probe({101: [1]}))
    assert d.masters == [] and [p.pid for p in d.orphans] == [101]


def test_two_orphans_of_one_app_are_two_orphans_not_two_masters():
    procs = table(proc(101, 1, APP), proc(102, 1, APP))
    d = discover(procs, Probe({101: [1], 102: [2]}))
    assert d.masters == [] and len(d.orphans) == 2


def test_known_worker_stays_an_orphan_even_if_it_catches_the_signals():
    orphan = proc(101, 1, APP, caught=ARBITER)  # e.g. an app that installs a SIGHUP handler
    d = discover(table(orphan), Probe({101: [1]}), known_workers={orphan.key})
    assert d.masters == [] and d.orphans == [orphan]


def test_titled_worker_orphan():
    procs = table(proc(101, 1, ["gunicorn: worker [shop]"]))
    d = discover(procs, Probe())
    assert d.masters == [] and [p.title for p in d.orphans] == [("worker", "shop")]


def test_master_that_has_not_started_its_arbiter_is_not_reported_yet():
    procs = table(proc(100, 1, APP, caught=0))  # loading the app (--preload), no heartbeats
    d = discover(procs, Probe())
    assert d.masters == [] and d.orphans == []


def test_fresh_worker_still_titled_master_is_a_worker_not_an_app():
    master = proc(100, 1, ["gunicorn: master [shop]"])
    fresh = proc(103, 100, ["gunicorn: master [shop]"])  # forked, not retitled yet
    d = discover(table(master, fresh, proc(101, 100, ["gunicorn: worker [shop]"])),
                 Probe({100: [1, 3], 101: [1], 103: [3]}))
    [m] = d.masters
    assert sorted(w.pid for w in m.workers) == [101, 103]


def test_usr2_child_master_is_a_second_master():
    old = proc(100, 1, ["gunicorn: master [shop]"])
    new = proc(200, 100, ["gunicorn: master [shop.2]"])
    procs = table(old, new, proc(101, 100, ["gunicorn: worker [shop]"]),
                  proc(201, 200, ["gunicorn: worker [shop.2]"]))
    d = discover(procs, Probe({100: [1], 101: [1], 200: [2], 201: [2]},
                              environ={200: {"GUNICORN_PID": "100"}}))
    assert [(m.proc.pid, m.upgraded_from) for m in d.masters] == [(100, None), (200, 100)]
    assert [w.pid for w in d.masters[1].workers] == [201]


def test_usr2_child_whose_environment_setproctitle_erased():
    old = proc(100, 1, ["gunicorn: master [shop]"])
    new = proc(200, 100, ["gunicorn: master [shop.2]"])
    procs = table(old, new, proc(101, 100, ["gunicorn: worker [shop]"]),
                  proc(201, 200, ["gunicorn: worker [shop.2]"]))
    d = discover(procs, Probe({100: [1], 101: [1], 200: [2], 201: [2]}))
    assert [(m.proc.pid, m.upgraded_from) for m in d.masters] == [(100, None), (200, 100)]


def test_usr2_child_without_titles():
    old = proc(100, 1, APP, caught=ARBITER)
    new = proc(200, 100, APP, caught=ARBITER)
    procs = table(old, new, proc(101, 100, APP), proc(201, 200, APP))
    d = discover(procs, Probe({100: [1], 101: [1], 200: [2], 201: [2]},
                              environ={200: {"GUNICORN_PID": "100"}}))
    assert [m.proc.pid for m in d.masters] == [100, 200]
    assert [w.pid for w in d.masters[0].workers] == [101]


def test_a_worker_of_a_master_that_was_itself_upgraded_is_no_new_master():
    # the master came from a USR2 of pid 50: its exec-time environment says GUNICORN_PID=50,
    # and so does every worker it forks. Only GUNICORN_PID=<parent> means a new master.
    master = proc(100, 1, ["gunicorn: master [shop]"])
    fresh = proc(103, 100, ["gunicorn: master [shop]"])
    d = discover(table(master, fresh), Probe({100: [3], 103: [3]},
                                             environ={100: {"GUNICORN_PID": "50"},
                                                      103: {"GUNICORN_PID": "50"}}))
    assert [m.proc.pid for m in d.masters] == [100]


def test_dirty_arbiter_and_other_children_are_not_workers():
    master = proc(100, 1, APP, caught=ARBITER)
    d = discover(table(master, proc(101, 100, APP), proc(150, 100, ["gunicorn: dirty-arbiter"]),
                       proc(160, 100, APP)),
                 Probe({100: [1], 101: [1], 160: []}))
    [m] = d.masters
    assert [w.pid for w in m.workers] == [101]
    assert sorted(p.pid for p in m.other_children) == [150, 160]


def test_unreadable_fds_keep_same_argv_children_as_workers():
    master = proc(100, 1, APP, caught=ARBITER, uid=33)
    d = discover(table(master, proc(101, 100, APP, uid=33)), Probe(denied={100, 101}))
    [m] = d.masters
    assert [w.pid for w in m.workers] == [101]
    assert d.permission_denied == {100, 101}


def test_user_filter():
    procs = table(proc(100, 1, APP, caught=ARBITER, uid=33), proc(200, 1, APP, caught=ARBITER, uid=1000))
    d = discover(procs, Probe(), users=frozenset({33}))
    assert [m.proc.pid for m in d.masters] == [100] and d.filtered_masters == 1


def test_cap_is_shared_between_users_so_a_flood_cannot_hide_another_users_app():
    fakes = [proc(1000 + i, 1, APP, caught=ARBITER, uid=666, start=i) for i in range(50)]
    real = proc(5000, 1, APP, caught=ARBITER, uid=33, start=10_000)  # started last
    d = discover(table(*fakes, real), Probe(), max_masters=10)
    pids = [m.proc.pid for m in d.masters]
    assert 5000 in pids and len(pids) == 10 and d.dropped_masters == 41


def test_previously_reported_masters_keep_their_place_under_the_cap():
    fakes = [proc(1000 + i, 1, APP, caught=ARBITER, uid=33, start=i) for i in range(20)]
    real = proc(5000, 1, APP, caught=ARBITER, uid=33, start=10_000)
    d = discover(table(*fakes, real), Probe(), max_masters=5, previous_masters={real.key})
    assert 5000 in [m.proc.pid for m in d.masters]
