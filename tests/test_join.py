"""The join of fd tables with a socket table, on literal tables (no kernel, no processes)."""

from __future__ import annotations

import socket

from exporter.gunicorn import join
from exporter.linux.sockdiag import (TCP_CLOSE_WAIT, TCP_ESTABLISHED, TCP_LISTEN, InetSocket,
                                     SocketTable, UnixSocket)


def unix(ino, state, name=None, peer=0, rq=0, wq=0, shutdown=0, vfs=0):
    return UnixSocket(ino, state, socket.SOCK_STREAM, name, peer, rq, wq, shutdown, vfs, 0)


def tcp(ino, state, laddr, lport, raddr="0.0.0.0", rport=0, rq=0, wq=0, family=socket.AF_INET):
    return InetSocket(ino, family, state, laddr, lport, raddr, rport, rq, wq, 1000)


def tbl(*socks):
    return SocketTable(unix={s.inode: s for s in socks if isinstance(s, UnixSocket)},
                       inet={s.inode: s for s in socks if isinstance(s, InetSocket)},
                       source="netlink")


def test_listeners_control_socket_and_worker_connections():
    t = tbl(
        unix(1, TCP_LISTEN, "/run/shop.sock", rq=3, wq=2048),
        unix(2, TCP_LISTEN, "/home/u/.gunicorn/gunicorn.ctl", wq=4096, vfs=77),
        tcp(3, TCP_LISTEN, "0.0.0.0", 8000, wq=2048),
        unix(10, TCP_ESTABLISHED, "/run/shop.sock", peer=11),             # a client
        unix(12, TCP_ESTABLISHED, "/run/shop.sock", peer=13, shutdown=1),  # client gone
        tcp(14, TCP_ESTABLISHED, "127.0.0.1", 8000, "127.0.0.1", 50000),
        tcp(15, TCP_CLOSE_WAIT, "127.0.0.1", 8000, "127.0.0.1", 50001),
        tcp(16, TCP_ESTABLISHED, "127.0.0.1", 40000, "127.0.0.1", 5433),   # database
        unix(17, TCP_ESTABLISHED, None, peer=18),
        unix(18, TCP_ESTABLISHED, "/var/run/postgresql/.s.PGSQL.5433", peer=17),
    )
    j = join.join_sockets({1, 2, 3}, {101: {1, 3, 10, 12, 14, 15, 16, 17}}, t,
                          control_path=None, control_disabled=False)
    assert [join.listener_address(s) for s, _ in j.listeners] == ["unix:/run/shop.sock", "0.0.0.0:8000"]
    assert j.control.inode == 2
    match = join.SocketMatcher.of(j.listeners, (5433,), ())
    c = join.count_worker_sockets(j.workers[101], j.unix_peers, match)
    assert (c.active, c.client_closed) == (2, 2)
    assert c.db_tcp == [("127.0.0.1", 40000, "127.0.0.1", 5433)] and c.db_unix == [(17, 18)]


def test_a_ctl_socket_the_workers_hold_is_a_listener_not_the_control_socket():
    t = tbl(unix(1, TCP_LISTEN, "/run/app.ctl"))
    j = join.join_sockets({1}, {101: {1}}, t, control_path=None, control_disabled=False)
    assert j.control is None and len(j.listeners) == 1


def test_control_socket_disabled_or_configured_path_preferred():
    t = tbl(unix(1, TCP_LISTEN, "/x/gunicorn.ctl"), unix(2, TCP_LISTEN, "/y/mine.ctl"))
    assert join.join_sockets({1, 2}, {}, t, "/y/mine.ctl", False).control.inode == 2
    assert join.join_sockets({1, 2}, {}, t, None, False).control.inode == 1
    assert join.join_sockets({1, 2}, {}, t, None, True).control is None


def test_reuse_port_listeners_belong_to_their_worker():
    t = tbl(tcp(5, TCP_LISTEN, "127.0.0.1", 8000), tcp(6, TCP_LISTEN, "127.0.0.1", 8000))
    j = join.join_sockets(set(), {101: {5}, 102: {6}}, t, None, False)
    assert sorted((s.inode, pid) for s, pid in j.listeners) == [(5, 101), (6, 102)]


def test_listener_addresses():
    assert join.listener_address(tcp(1, TCP_LISTEN, "::1", 80, family=socket.AF_INET6)) == "[::1]:80"
    assert join.listener_address(unix(1, TCP_LISTEN, "/a b")) == "unix:/a b"


def test_capacity_is_unknown_when_a_setting_is():
    assert join.capacity("sync", None, None) == 1
    assert join.capacity("gthread", 4, 1000) == 4
    assert join.capacity("gthread", None, 1000) is None
    assert join.capacity("gevent", 1, None) is None
    assert join.capacity("uvicorn", None, None) == float("inf")
    assert join.capacity(None, 1, 1000) is None


class _App:
    def __init__(self, app, pid, listener=None, uid=1000):
        self.app, self.master_pid, self.master_start_time, self.uid = app, pid, 1.0 * pid, uid
        self.pod = None
        self.listeners = [type("L", (), {"address": listener})()] if listener else []


def test_names_are_unique_and_stay_with_their_owner():
    owners: dict = {}
    apps = [_App("shop", 1, "unix:/a"), _App("shop", 2, "unix:/b"), _App("x", 3),
            _App("dup", 4, "1.2.3.4:80"), _App("dup", 5, "1.2.3.4:80")]
    renamed = join.assign_names(apps, owners, lambda name: None)
    names = [a.app for a in apps]
    assert names[:3] == ["shop@unix:/a", "shop@unix:/b", "x"]  # two new masters: both suffixed
    assert len(set(names)) == len(names)
    assert "x" not in renamed and "shop@unix:/a" in renamed and owners == {"x": (3, 3.0)}


def test_another_user_cannot_take_a_name_or_hide_its_outage():
    owners: dict = {}
    remembered = {"shop": 33}
    real = _App("shop", 10, "unix:/run/shop.sock", uid=33)
    assert join.assign_names([real], owners, remembered.get) == set()
    # a process of user 666 calls itself shop: the owner keeps the name
    real, fake = _App("shop", 10, "unix:/run/shop.sock", uid=33), _App("shop", 99, uid=666)
    join.assign_names([real, fake], owners, remembered.get)
    assert (real.app, fake.app) == ("shop", "shop@pid99")
    # the real master restarts (new pid) while the fake runs: still the owner's user
    real, fake = _App("shop", 11, "unix:/run/shop.sock", uid=33), _App("shop", 99, uid=666)
    join.assign_names([fake, real], owners, remembered.get)
    assert (real.app, fake.app) == ("shop", "shop@pid99")
    # the real app is down: the fake alone does not get the name (shop stays "down")
    fake = _App("shop", 99, uid=666)
    owners.clear()
    join.assign_names([fake], owners, remembered.get)
    assert fake.app == "shop@pid99"
