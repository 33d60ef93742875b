"""Each local user's TLS handshakes a second (exporter/handshakes.py): the bucket on literal
clocks, which clients are local, and the kernel's answer for a real loopback connection
(in-process: this process's own uid must come back)."""

from __future__ import annotations

import os
import socket

import pytest

from exporter.handshakes import HandshakeBudget, is_local
from exporter.linux import sockdiag


def test_each_uid_has_its_own_bucket_of_a_burst_then_the_rate():
    b = HandshakeBudget(rate=50.0, burst=100.0)
    assert all(b.take(1000, 0.0) for _ in range(100))
    assert not b.take(1000, 0.0)                 # the burst is spent
    assert b.take(33, 0.0)                       # another user's is not
    assert not b.take(1000, 0.01)                # half a handshake back: not yet
    assert b.take(1000, 0.02) and not b.take(1000, 0.02)
    # one second later: 50 more, no more
    assert sum(b.take(1000, 1.02) for _ in range(80)) == 50
    # refused attempts do not spend: a user who keeps trying gets the rate, not less
    assert sum(b.take(1000, 1.02 + i / 1000) for i in range(1, 1001)) == 50
    assert b.take(1000, 1000.0)                  # idle for long: a full burst, no more
    assert sum(b.take(1000, 1000.0) for _ in range(200)) == 99


def test_the_users_remembered_are_bounded():
    from exporter import handshakes
    b = HandshakeBudget(rate=1.0, burst=1.0)
    for uid in range(handshakes.MAX_USERS + 10):
        b.take(uid, 0.0)
    assert len(b._users) == handshakes.MAX_USERS
    assert b.take(0, 0.0)                        # forgotten: a full bucket again


@pytest.mark.parametrize("peer,local,expected", [
    ("127.0.0.1", "127.0.0.1", True),
    ("127.3.4.5", "127.0.0.1", True),
    ("::1", "::1", True),
    ("::ffff:127.0.0.1", "::ffff:127.0.0.1", True),
    ("10.0.0.5", "10.0.0.5", True),              # this host, to its own address
    ("10.0.0.6", "10.0.0.5", False),
    ("fe80::1%eth0", "fe80::2%eth0", False),
    ("not an address", "10.0.0.5", False),
    ("192.168.7.7", "10.0.0.5", True),           # another address of this host
    ("::ffff:192.168.7.7", "::ffff:10.0.0.5", True),
])
def test_which_clients_are_local(peer, local, expected):
    assert is_local(peer, local, frozenset({"192.168.7.7", "10.0.0.5"})) is expected


def test_the_host_addresses_are_this_hosts():
    b = HandshakeBudget()
    addresses = b._host_addresses()
    assert "127.0.0.1" in addresses
    assert b._host_addresses() is addresses      # kept, not read again at once


@pytest.mark.parametrize("family,host", [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1"),
                                         (socket.AF_INET6, "::")])
def test_the_kernel_names_the_owner_of_a_local_client(family, host):
    """A real loopback connection (the dual-stack case: an IPv4 client of a `::` listener,
    seen as ::ffff:127.0.0.1): the client's socket is found, owned by this process's uid."""
    try:
        probe = sockdiag.open_socket(1.0)
    except OSError as e:
        pytest.skip(f"no sock_diag here: {e}")
    probe.close()
    srv = socket.socket(family, socket.SOCK_STREAM)
    if host == "::":
        srv.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    srv.bind((host, 0))
    srv.listen(4)
    port = srv.getsockname()[1]
    cli = socket.create_connection(("127.0.0.1" if host == "::" else host, port))
    conn, _ = srv.accept()
    try:
        if host == "::":
            assert conn.getpeername()[0] == "::ffff:127.0.0.1"
        b = HandshakeBudget()
        assert b._uid(conn) == os.geteuid()
        assert b.admit(conn)
        cli.close()
        conn.close()
        assert not b.admit(conn)                 # a closed socket: no handshake
    finally:
        b.close()
        for s in (cli, conn, srv):
            s.close()
