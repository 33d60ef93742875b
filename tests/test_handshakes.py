"""Each local user's TLS handshakes a second (exporter/handshakes.py): the bucket on literal
clocks, which clients are local, and the kernel's answer for a real loopback connection
(in-process: this process's own uid must come back)."""

from __future__ import annotations

import os
import socket

import pytest

from exporter.handshakes import HandshakeBudget, is_local
from exporter.linux import sockdiag
from tests.conftest import require


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


def test_subordinate_ranges_parse_sorted_bounded_and_without_overlaps():
    from exporter.handshakes import parse_subuid
    text = ("alice:100000:65536\n"
            "bob:165536:65536\n"
            "# comment\n"
            "mallory:100:-5\n"            # not a count
            "eve:x:10\n"
            "carol:200000:100\n"           # inside bob's: only the part after his
            "dave:4294967290:100\n"        # past 2^32
            "zed:0:0\n")
    assert parse_subuid(text) == [(100000, 165536, "alice"), (165536, 231072, "bob")]
    assert parse_subuid("") == []


def test_every_uid_of_a_range_is_charged_to_one_bucket(tmp_path):
    from exporter.handshakes import SubordinateIds
    f = tmp_path / "subuid"
    f.write_text("alice:100000:65536\n")
    ids = SubordinateIds(str(f))
    assert ids.charged(100000, 0.0) == ids.charged(165535, 0.0) == ("subuid", "alice", 100000)
    assert ids.charged(165536, 0.0) == 165536 and ids.charged(1000, 0.0) == 1000
    b = HandshakeBudget(rate=50.0, burst=100.0)
    b._subuids = ids
    admitted = sum(b.take(ids.charged(100000 + i % 1000, 0.0), 0.0) for i in range(5000))
    assert admitted == 100                        # one burst for the whole range
    f.write_text("")                              # read again once changed (after the TTL)
    assert ids.charged(100000, 5.0) != 100000
    assert ids.charged(100000, 11.0) == 100000
    (tmp_path / "subuid").unlink()                # unreadable: no ranges
    assert ids.charged(100000, 30.0) == 100000


def test_a_unix_socket_connection_is_not_asked():
    a, b_ = socket.socketpair()
    try:
        assert HandshakeBudget().admit(a)
    finally:
        a.close()
        b_.close()


def test_a_client_bound_to_the_loopback_device_is_found():
    """SO_BINDTODEVICE lo (curl --interface lo): the lookup asks for lo, so the bound
    socket is found and its owner named, not taken for a client that is gone."""
    require(os.geteuid() == 0, "SO_BINDTODEVICE needs CAP_NET_RAW before Linux 5.7")
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    cli = socket.socket()
    cli.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b"lo")
    cli.connect(srv.getsockname())
    conn, _ = srv.accept()
    b = HandshakeBudget()
    try:
        assert b._uid(conn) == os.geteuid()
    finally:
        b.close()
        for s in (cli, conn, srv):
            s.close()


@pytest.mark.slow
def test_a_users_subordinate_uids_get_one_share_not_one_each():
    """A user with a range of subordinate uids (Debian's useradd gives every normal user
    one, for rootless containers) setuids to 30 of them inside a user namespace (unshare
    --map-auto, through the setuid newuidmap) and connects from each: the kernel names 30
    uids, and the user gets one burst for all of them, not 30 (it used to get 30)."""
    import secrets
    import shutil
    import subprocess
    import threading
    import time
    from tests.hostile import throwaway_user
    require(shutil.which("unshare") is not None and shutil.which("newuidmap") is not None,
            "unshare and newuidmap are needed (Debian packages util-linux and uidmap)")
    require(os.geteuid() == 0, "a throwaway user and its subordinate uids need root")
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4096)
    port = srv.getsockname()[1]
    budget, uids, admitted = HandshakeBudget(), set(), []
    diag = sockdiag.open_socket(1.0)

    def serve():
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            with conn:
                uids.add(sockdiag.peer_uid(diag, conn))
                admitted.append(budget.admit(conn))
    server = threading.Thread(target=serve, daemon=True)
    server.start()
    client = f"""
import os, socket
for i in range(1, 31):
    pid = os.fork()
    if pid == 0:
        os.setgid(i)
        os.setuid(i)
        for _ in range(150):
            s = socket.create_connection(("127.0.0.1", {port}))
            s.recv(1)            # until the server has looked and closed
            s.close()
        os._exit(0)
    os.waitpid(pid, 0)
"""
    first = 1_000_000 + secrets.randbelow(1000) * 1000
    with throwaway_user() as user:
        subprocess.run(["usermod", "--add-subuids", f"{first}-{first + 999}", "--add-subgids",
                        f"{first}-{first + 999}", user.name], check=True, capture_output=True)
        try:
            t = time.monotonic()
            proc = user.run(["unshare", "--user", "--map-auto", "--map-root-user",
                             "{python}", "-c", client])
            assert proc.wait(120) == 0, "the user's namespace of 30 uids did not run"
            took = time.monotonic() - t
        finally:
            subprocess.run(["usermod", "--del-subuids", f"{first}-{first + 999}", "--del-subgids",
                            f"{first}-{first + 999}", user.name], capture_output=True)
    srv.close()
    budget.close()
    diag.close()
    server.join(10)
    inside = {u for u in uids if u is not None and first <= u < first + 1000}
    print(f"\n{len(admitted)} connections from {len(inside)} subordinate uids in {took:.1f} s: "
          f"{sum(admitted)} admitted")
    assert len(inside) == 30, sorted(u for u in uids if u is not None)[:40]
    assert len(admitted) == 30 * 150
    assert sum(admitted) <= 100 + 50 * took + 1
