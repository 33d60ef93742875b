"""exporter/linux/pidfd.py (a listener's accept queue empty or not, by poll() of the
owner's socket) and the sampler's fd counter (exporter/sampler/stats.FdCounter): on
literal /proc trees, on this process, and on real child processes with `ss` as the
oracle of the queue."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time

import pytest

from exporter.linux import pidfd
from exporter.sampler.stats import FdCounter, fd_dir_size_counts
from tests.conftest import require
from tests.harness.procs import poll
from tests.harness.ss import ss_listen_queue

# --- literal inputs -------------------------------------------------------------------


def _fake_fds(root, pid: int, links: dict[int, str]) -> None:
    d = root / str(pid) / "fd"
    d.mkdir(parents=True)
    for fd, target in links.items():
        os.symlink(target, d / str(fd))


def test_socket_fds_by_the_links_naming_inodes(tmp_path):
    _fake_fds(tmp_path, 10, {0: "/dev/null", 3: "socket:[771]", 5: "socket:[77]",
                             7: "/tmp/socket:[78]", 8: "socket:[x]", 9: "pipe:[79]"})
    assert pidfd.socket_fds(10, str(tmp_path)) == ({771: 3, 77: 5}, 6)
    assert pidfd.socket_fds(11, str(tmp_path)) == ({}, 0)     # no such process


def test_fd_links_read_are_bounded_per_owner_and_in_all(tmp_path, monkeypatch):
    for pid in (10, 11, 12):
        _fake_fds(tmp_path, pid, {i: f"socket:[{pid * 1000 + i}]" for i in range(10)})
    assert len(pidfd.socket_fds(10, str(tmp_path), limit=4)[0]) == 4
    monkeypatch.setattr(pidfd.ListenerPolls, "MAX_LINKS", 15)
    polls = pidfd.ListenerPolls(str(tmp_path))
    polls._poll = lambda pid, fd, ino: True        # literal owners: no process to poll
    wanted = [(pid * 1000 + i, pid) for pid in (10, 11, 12) for i in range(10)]
    assert len(polls.empty(wanted)) == 15          # 10 of the first owner, 5 of the next
    assert polls._links_left == 0
    polls.reset()
    assert polls._links_left == 15 and polls._owners == {}


def test_fd_counter_by_size_counts_what_a_listing_counts():
    require(fd_dir_size_counts(), "/proc/PID/fd sizes count fds from Linux 6.2 on")
    counter = FdCounter(by_size=True)
    try:
        counter.count(os.getpid())          # its kept O_PATH descriptor included
        assert len(counter._open) == 1
        # through the kept descriptor, what a listing counts less its own fd (asked until
        # no other thread of this process opened or closed one in between)
        poll(lambda: counter.count(os.getpid()) == len(os.listdir("/proc/self/fd")) - 1, 5,
             interval=0.01, message="the size never matched the listing")
    finally:
        counter.close()
    assert counter._open == {}


def test_the_fd_size_probe_says_no_where_sizes_do_not_count(tmp_path):
    fd = tmp_path / "self" / "fd"
    fd.mkdir(parents=True)
    for name in ("0", "1", "2"):
        (fd / name).write_text("")
    assert fd_dir_size_counts(str(tmp_path)) is False      # a directory's size, not 2
    assert fd_dir_size_counts(str(tmp_path / "nowhere")) is False


def test_fd_counter_on_a_proc_without_sizes_lists(tmp_path):
    _fake_fds(tmp_path, 10, {0: "a", 1: "b", 2: "c"})
    counter = FdCounter(str(tmp_path), by_size=False)
    assert counter.count(10) == 3 and counter._open == {}
    assert counter.count(11) is None


# --- real processes ---------------------------------------------------------------------

_HOLDER = """
import os, socket, sys, time
kind, path = sys.argv[1], sys.argv[2]
s = socket.socket(socket.AF_UNIX) if kind == "unix" else socket.socket()
s.bind(path if kind == "unix" else ("127.0.0.1", 0))
s.listen(16)
f = open(os.devnull)
print(s.fileno(), os.fstat(s.fileno()).st_ino, s.getsockname()[1] if kind == "tcp" else 0,
      f.fileno(), flush=True)
time.sleep(120)
"""


@pytest.fixture
def holder():
    """A process holding a listener (unix or TCP) it never accepts from."""
    procs = []
    tmp = tempfile.mkdtemp(prefix="gx-pidfd-")

    def start(kind: str):
        path = os.path.join(tmp, "l.sock")
        p = subprocess.Popen([sys.executable, "-c", _HOLDER, kind, path],
                             stdout=subprocess.PIPE, text=True)
        procs.append(p)
        fd, ino, port, other = map(int, p.stdout.readline().split())
        return p, fd, ino, (path if kind == "unix" else f"127.0.0.1:{port}"), other
    yield start
    for p in procs:
        p.kill()
        p.wait()


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["unix", "tcp"])
def test_listener_empty_until_a_connection_waits(holder, kind):
    p, fd, ino, addr, other = holder(kind)
    assert pidfd.socket_fds(p.pid)[0][ino] == fd
    handle = pidfd.open_pidfd(p.pid)
    try:
        assert ss_listen_queue(addr)[0] == 0
        assert pidfd.listener_empty(handle, fd, ino) is True
        clients = []
        for _ in range(3):
            c = socket.socket(socket.AF_UNIX) if kind == "unix" else socket.socket()
            c.connect(addr if kind == "unix" else ("127.0.0.1", int(addr.rsplit(":", 1)[1])))
            clients.append(c)
        poll(lambda: ss_listen_queue(addr)[0] == 3, 5, message="ss never saw 3 queued")
        assert pidfd.listener_empty(handle, fd, ino) is False
        # not that socket, not a socket, no such fd: unknown, never a guess
        assert pidfd.listener_empty(handle, fd, ino + 1) is None
        assert pidfd.listener_empty(handle, other, ino) is None
        assert pidfd.listener_empty(handle, 999, ino) is None
        assert ss_listen_queue(addr)[0] == 3        # polled, never accepted
        for c in clients:
            c.close()
    finally:
        os.close(handle)


def _my_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


@pytest.mark.slow
def test_what_is_not_the_listener_is_closed_on_the_closer_thread(holder):
    """A file swapped onto the listener's fd number (a FUSE file's close would ask its
    daemon) is never closed on the caller's thread, and is closed: no fd is left."""
    p, fd, ino, _addr, other = holder("unix")
    handle = pidfd.open_pidfd(p.pid)
    try:
        before = _my_fds()
        closes = []
        real_close = os.close
        main = __import__("threading").get_ident()

        def spying_close(n):
            closes.append(__import__("threading").get_ident() == main)
            real_close(n)
        pidfd.os.close = spying_close
        try:
            assert pidfd.listener_empty(handle, other, ino) is None     # /dev/null
            assert pidfd.listener_empty(handle, fd, ino) is True        # the listener
            poll(lambda: pidfd._closing == 0 and _my_fds() == before, 5,
                 message="the duplicate of /dev/null was not closed")
        finally:
            pidfd.os.close = real_close
        assert closes.count(True) == 1 and closes.count(False) == 1, closes  # listener inline
    finally:
        os.close(handle)


def test_no_duplicate_is_taken_while_the_closer_is_behind(monkeypatch):
    """While MAX_CLOSING duplicates wait for the closer (a close that hangs), every
    listener is unknown and pidfd_getfd is not called at all."""
    taken = []
    monkeypatch.setattr(pidfd, "_pidfd_getfd", lambda *a: taken.append(a) or 0)
    monkeypatch.setattr(pidfd, "_closing", pidfd.MAX_CLOSING)
    assert pidfd.listener_empty(3, 4, 5) is None
    assert taken == []


@pytest.mark.slow
def test_a_process_that_exited_is_unknown(holder):
    p, fd, ino, _addr, _other = holder("unix")
    handle = pidfd.open_pidfd(p.pid)
    counter = FdCounter(by_size=fd_dir_size_counts())
    try:
        assert counter.count(p.pid) == len(os.listdir(f"/proc/{p.pid}/fd"))
        p.kill()
        p.wait()
        assert pidfd.listener_empty(handle, fd, ino) is None
        assert pidfd.open_pidfd(p.pid) is None
        assert counter.count(p.pid) is None
        assert counter._open == {}
    finally:
        os.close(handle)
        counter.close()


@pytest.mark.slow
def test_the_sampler_walks_unix_sockets_only_when_connections_wait(holder, monkeypatch):
    """On a host where a unix listener's sock_diag read is costly, the sampler asks
    sock_diag for it only when the poll finds connections waiting (or cannot poll);
    the queue it reports is what `ss` says, and what it would have read."""
    from exporter import sampler as sampler_mod
    from exporter.collectors.sampler import SamplerCollector
    from exporter.snapshot import AppSnapshot, GunicornSnapshot, ListenerSnapshot
    monkeypatch.setattr(sampler_mod, "CHEAP_UNIX_READ", -1.0)   # every walk is costly
    p, fd, ino, addr, _other = holder("unix")
    collector = SamplerCollector(0.1, 60)
    s = collector.sampler
    asked: list[set[int]] = []
    read = s.read_queues

    def recording(wanted):
        asked.append({i for _pid, inodes in wanted.values() for i in inodes})
        return read(wanted)
    s.read_queues = recording
    s.retarget(GunicornSnapshot(apps=[AppSnapshot(
        app="holder", up=True, master_pid=p.pid, worker_class="gthread",
        listeners=[ListenerSnapshot(f"unix:{addr}", "unix", 0, 16, inode=ino)])]))
    t0 = time.monotonic()
    try:
        for t in (0.0, 0.1, 0.2):
            s.tick(t0 + t)
        assert asked == []              # polled: empty, no walk
        clients = []
        for _ in range(2):
            c = socket.socket(socket.AF_UNIX)
            c.connect(addr)
            clients.append(c)
        poll(lambda: ss_listen_queue(addr)[0] == 2, 5, message="ss never saw 2 queued")
        s.tick(t0 + 0.3)
        s.tick(t0 + 0.4)
        assert asked == [{ino}, {ino}]  # not empty: the walk says how long
        [lst] = s.snapshot().listeners
        assert lst.peak == ss_listen_queue(addr)[0] == 2
        assert lst.queued_seconds == pytest.approx(0.1)     # 0.3 to 0.4
        for c in clients:
            c.close()
    finally:
        monkeypatch.undo()
        collector._own.close()
        s._polls.close()
