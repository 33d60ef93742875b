"""Tests for exporter.linux.sockdiag against the real kernel, with `ss`
(iproute2, which also uses sock_diag but is an independent implementation)
as the oracle.  The parsers alone, on literal messages: tests/test_netlink.py."""

from __future__ import annotations

import errno
import os
import re
import shutil
import socket
import struct
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import require

from exporter.linux import diagmsg, netlink, sockdiag
from exporter.linux.sockdiag import (
    ALL_STATES_MASK,
    TCP_CLOSE,
    TCP_CLOSE_WAIT,
    TCP_ESTABLISHED,
    TCP_LISTEN,
    InetSocket,
    SockDiagError,
    SocketTable,
    UnixSocket,
    read_all,
    read_tcp,
    read_unix,
)

SS = shutil.which("ss")


@pytest.fixture
def _ss():
    require(SS is not None, "ss (iproute2) not installed: it is the oracle here")


needs_ss = pytest.mark.usefixtures("_ss")


def _netlink_ok() -> bool:
    try:
        read_unix()
        return True
    except SockDiagError:
        return False


@pytest.fixture(autouse=True)
def _netlink():
    require(_netlink_ok(), "NETLINK_SOCK_DIAG unavailable (seccomp or no sock_diag modules)")


# ---------------------------------------------------------------- helpers

def ino(sock: socket.socket) -> int:
    return os.fstat(sock.fileno()).st_ino


def wait_for(pred, timeout: float = 1.5, interval: float = 0.002):
    """Poll pred() until it returns a truthy value or the deadline passes."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v or time.monotonic() >= deadline:
            return v
        time.sleep(interval)


_NETIDS = {"tcp", "u_str", "u_dgr", "u_seq", "udp", "raw", "tcp6"}


def ss_rows(*args: str) -> list[list[str]]:
    """Run `ss -H <args>` and return the whitespace-split rows, with the
    leading Netid column dropped when ss prints one."""
    out = subprocess.run([SS, "-H", *args], check=True, capture_output=True,
                         text=True, timeout=10).stdout
    rows = []
    for line in out.splitlines():
        t = line.split()
        if not t:
            continue
        if t[0] in _NETIDS:
            t = t[1:]
        rows.append(t)
    return rows


def ss_unix_by_inode(*args: str) -> dict[int, list[str]]:
    # state rq sq local_path local_ino peer_path peer_ino ...
    return {int(r[4]): r for r in ss_rows("-xn", *args)}


_INO_RE = re.compile(r"\bino:(\d+)")


def ss_tcp_by_inode(*args: str) -> dict[int, list[str]]:
    # state rq sq local peer ... ino:N ...  (no state column when a
    # state filter is given)
    out = {}
    for r in ss_rows("-tne", *args):
        m = _INO_RE.search(" ".join(r[3:]))
        if m:
            out[int(m.group(1))] = r
    return out


@pytest.fixture
def sockets():
    """Collect sockets to close at test end."""
    socks: list[socket.socket] = []
    yield socks
    for s in socks:
        try:
            s.close()
        except OSError:
            pass


def unix_listener(tmp_path, socks, backlog=7):
    path = str(tmp_path / f"l-{uuid.uuid4().hex[:8]}.sock")
    lst = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    socks.append(lst)
    lst.bind(path)
    lst.listen(backlog)
    return lst, path


def tcp_listener(host, family, socks, backlog=7):
    lst = socket.socket(family, socket.SOCK_STREAM)
    socks.append(lst)
    lst.bind((host, 0))
    lst.listen(backlog)
    return lst


def tcp_connect(lst, host, family, socks):
    c = socket.socket(family, socket.SOCK_STREAM)
    socks.append(c)
    c.connect((host, lst.getsockname()[1]))
    return c


# ---------------------------------------------------------------- unix

@pytest.mark.slow
@needs_ss
def test_unix_listener_accept_queue_matches_ss(tmp_path, sockets):
    lst, path = unix_listener(tmp_path, sockets, backlog=7)
    for _ in range(3):
        c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sockets.append(c)
        c.connect(path)

    u = read_unix()
    me = u[ino(lst)]
    assert me.state == TCP_LISTEN
    assert me.type == socket.SOCK_STREAM
    assert me.name == path
    assert (me.rqueue, me.wqueue) == (3, 7)
    assert me.vfs_ino == os.stat(path).st_ino
    assert me.shutdown == 0
    assert me.peer == 0

    row = ss_unix_by_inode("-l")[ino(lst)]
    assert row[0] == "LISTEN"
    assert (int(row[1]), int(row[2])) == (me.rqueue, me.wqueue)
    assert row[3] == path


@pytest.mark.slow
@needs_ss
def test_unix_accepted_name_and_peers(tmp_path, sockets):
    lst, path = unix_listener(tmp_path, sockets)
    c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sockets.append(c)
    c.connect(path)
    a, _ = lst.accept()
    sockets.append(a)

    u = read_unix()
    sa, sc = u[ino(a)], u[ino(c)]
    # the accepted socket reports the listener's path (ss -x shows the same)
    assert sa.name == path
    assert sc.name is None
    assert sa.state == sc.state == TCP_ESTABLISHED
    assert sa.peer == sc.inode and sc.peer == sa.inode
    assert sa.rqueue == 0 and sa.shutdown == 0

    rows = ss_unix_by_inode("-a")
    assert rows[ino(a)][3] == path
    assert int(rows[ino(a)][6]) == sc.inode
    assert int(rows[ino(c)][6]) == sa.inode


def test_unix_pending_client_has_no_peer_until_accepted(tmp_path, sockets):
    # kernel quirk worth knowing: the embryo socket in the accept queue has
    # inode 0 and is not reported; the client reports peer 0 until accept().
    lst, path = unix_listener(tmp_path, sockets)
    c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sockets.append(c)
    c.connect(path)
    u = read_unix()
    assert 0 not in u
    assert u[ino(c)].state == TCP_ESTABLISHED
    assert u[ino(c)].peer == 0
    a, _ = lst.accept()
    sockets.append(a)
    assert read_unix()[ino(c)].peer == ino(a)


def test_unix_shutdown_after_client_close(tmp_path, sockets):
    lst, path = unix_listener(tmp_path, sockets)
    c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    c.connect(path)
    a, _ = lst.accept()
    sockets.append(a)
    a_ino = ino(a)
    assert read_unix()[a_ino].shutdown == 0
    c.close()
    s = read_unix()[a_ino]
    assert s.shutdown & sockdiag.RCV_SHUTDOWN
    # unix sockets stay ESTABLISHED after the peer is gone; shutdown is the
    # only signal
    assert s.state == TCP_ESTABLISHED


def test_unix_half_close_bits(sockets):
    a, b = socket.socketpair()
    sockets += [a, b]
    a.shutdown(socket.SHUT_WR)
    u = read_unix()
    assert u[ino(a)].shutdown == sockdiag.SEND_SHUTDOWN
    assert u[ino(b)].shutdown == sockdiag.RCV_SHUTDOWN


@pytest.mark.slow
@needs_ss
def test_unix_socketpair_queues_match_ss(sockets):
    a, b = socket.socketpair()
    sockets += [a, b]
    a.sendall(b"x" * 100)
    u = read_unix()
    sa, sb = u[ino(a)], u[ino(b)]
    assert sa.peer == sb.inode and sb.peer == sa.inode
    assert sb.rqueue == 100
    assert sa.name is None and sa.vfs_ino == 0
    rows = ss_unix_by_inode("-a")
    for s in (sa, sb):
        r = rows[s.inode]
        assert (int(r[1]), int(r[2])) == (s.rqueue, s.wqueue)


@pytest.mark.slow
@needs_ss
def test_unix_abstract_name(sockets):
    name = f"gexp-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    lst = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sockets.append(lst)
    lst.bind("\0" + name)
    lst.listen(3)
    s = read_unix()[ino(lst)]
    assert s.name == "@" + name
    assert s.vfs_ino == 0
    assert (s.rqueue, s.wqueue) == (0, 3)
    assert ss_unix_by_inode("-l")[ino(lst)][3] == "@" + name


def test_unix_dgram_and_seqpacket(tmp_path, sockets):
    d = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sockets.append(d)
    d.bind(str(tmp_path / "dg.sock"))
    sp = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sockets.append(sp)
    u = read_unix()
    assert u[ino(d)].type == socket.SOCK_DGRAM
    assert u[ino(d)].state == TCP_CLOSE
    assert u[ino(d)].name == str(tmp_path / "dg.sock")
    assert u[ino(sp)].type == socket.SOCK_SEQPACKET
    assert u[ino(sp)].name is None


# ---------------------------------------------------------------- tcp

FAMILIES = [("127.0.0.1", socket.AF_INET), ("::1", socket.AF_INET6)]


@pytest.mark.slow
@needs_ss
@pytest.mark.parametrize("host,family", FAMILIES, ids=["v4", "v6"])
def test_tcp_listener_accept_queue_matches_ss(host, family, sockets):
    lst = tcp_listener(host, family, sockets, backlog=7)
    for _ in range(3):
        tcp_connect(lst, host, family, sockets)
    li = ino(lst)
    s = wait_for(lambda: (t := read_tcp().get(li)) and t.rqueue == 3 and t)
    assert s, read_tcp().get(li)
    assert s.state == TCP_LISTEN
    assert s.family == family
    assert (s.rqueue, s.wqueue) == (3, 7)
    assert s.local_addr == host
    assert s.local_port == lst.getsockname()[1]
    assert s.remote_port == 0
    assert s.uid == os.getuid()

    row = ss_tcp_by_inode("-l")[li]
    assert row[0] == "LISTEN"
    assert (int(row[1]), int(row[2])) == (3, 7)


@pytest.mark.slow
@needs_ss
@pytest.mark.parametrize("host,family", FAMILIES, ids=["v4", "v6"])
def test_tcp_close_wait_matches_ss(host, family, sockets):
    lst = tcp_listener(host, family, sockets)
    c = socket.socket(family, socket.SOCK_STREAM)
    c.connect((host, lst.getsockname()[1]))
    a, _ = lst.accept()
    sockets.append(a)
    ai = ino(a)
    assert read_tcp()[ai].state == TCP_ESTABLISHED
    c.close()
    s = wait_for(lambda: (t := read_tcp().get(ai)) and
                 t.state == TCP_CLOSE_WAIT and t)
    assert s, read_tcp().get(ai)
    assert ai in ss_tcp_by_inode("-a", "state", "close-wait")


@pytest.mark.slow
@needs_ss
@pytest.mark.parametrize("host,family", FAMILIES, ids=["v4", "v6"])
def test_tcp_established_fields(host, family, sockets):
    lst = tcp_listener(host, family, sockets)
    c = tcp_connect(lst, host, family, sockets)
    a, _ = lst.accept()
    sockets.append(a)
    c.sendall(b"y" * 10)
    ai, ci = ino(a), ino(c)
    s = wait_for(lambda: (t := read_tcp().get(ai)) and t.rqueue == 10 and t)
    assert s
    t = read_tcp()
    sa, sc = t[ai], t[ci]
    assert sa.family == sc.family == family
    assert (sa.local_addr, sa.local_port) == a.getsockname()[:2]
    assert (sa.remote_addr, sa.remote_port) == a.getpeername()[:2]
    assert (sc.local_addr, sc.local_port) == c.getsockname()[:2]
    assert sc.remote_port == lst.getsockname()[1]
    assert sa.rqueue == 10
    rows = ss_tcp_by_inode("-a")
    assert rows[ai][0] == "ESTAB" and int(rows[ai][1]) == 10


def test_tcp_v4_mapped_address(sockets):
    lst = tcp_listener("::", socket.AF_INET6, sockets)
    c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sockets.append(c)
    c.connect(("127.0.0.1", lst.getsockname()[1]))
    a, _ = lst.accept()
    sockets.append(a)
    t = read_tcp()
    assert t[ino(lst)].local_addr == "::"
    assert t[ino(a)].family == socket.AF_INET6
    assert t[ino(a)].local_addr == "::ffff:127.0.0.1"
    assert t[ino(c)].family == socket.AF_INET
    assert t[ino(c)].remote_addr == "127.0.0.1"


def test_tcp_state_filter(sockets):
    lst = tcp_listener("127.0.0.1", socket.AF_INET, sockets)
    c = tcp_connect(lst, "127.0.0.1", socket.AF_INET, sockets)
    only_listen = read_tcp(states=1 << TCP_LISTEN)
    assert ino(lst) in only_listen
    assert ino(c) not in only_listen
    assert all(s.state == TCP_LISTEN for s in only_listen.values())
    assert 0 not in read_tcp(ALL_STATES_MASK)


# ---------------------------------------------------------------- read_all

@pytest.mark.slow
@needs_ss
def test_read_all_agrees_with_ss_on_many_sockets(tmp_path, sockets):
    for _ in range(200):
        a, b = socket.socketpair()
        sockets += [a, b]
    lst = tcp_listener("127.0.0.1", socket.AF_INET, sockets, backlog=128)
    tcp_socks = [lst]
    for _ in range(50):
        tcp_socks.append(tcp_connect(lst, "127.0.0.1", socket.AF_INET,
                                     sockets))
        a, _ = lst.accept()
        sockets.append(a)
        tcp_socks.append(a)
    unix_socks = [s for s in sockets if s.family == socket.AF_UNIX]

    t = read_all()
    assert isinstance(t, SocketTable) and t.source == "netlink"
    assert all(isinstance(v, UnixSocket) for v in t.unix.values())
    assert all(isinstance(v, InetSocket) for v in t.inet.values())
    ss_u = ss_unix_by_inode("-a")
    ss_t = ss_tcp_by_inode("-a")
    for s in unix_socks:
        i = ino(s)
        assert t.unix[i].state == TCP_ESTABLISHED
        assert int(ss_u[i][6]) == t.unix[i].peer
    for s in tcp_socks:
        i = ino(s)
        assert i in t.inet and i in ss_t
    assert t.inet[ino(lst)].state == TCP_LISTEN


def _netlink_fds() -> set[int]:
    """Our fds that are netlink sockets (by inode, /proc/self/net/netlink): other threads
    of this process (an xdist worker's) open and close other fds meanwhile."""
    lines = Path("/proc/self/net/netlink").read_text().splitlines()[1:]
    inodes = {f"socket:[{line.split()[-1]}]" for line in lines if line.split()}
    out = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") in inodes:
                out.add(int(fd))
        except OSError:
            pass
    return out


def test_no_fd_leak():
    before = _netlink_fds()
    for _ in range(20):
        read_all()
    assert _netlink_fds() <= before


def test_kernel_error_becomes_sockdiagerror():
    # sdiag_family 255 (>= AF_MAX) -> the kernel answers NLMSG_ERROR -EINVAL
    sock = sockdiag.open_socket(2.0)
    try:
        req = netlink.frame(diagmsg.SOCK_DIAG_BY_FAMILY, netlink.NLM_F_REQUEST | netlink.NLM_F_DUMP,
                            7, struct.pack("=BBHIII8s", 255, 0, 0, 0xFFFFFFFF, 0, 0, bytes(8)))
        with pytest.raises(SockDiagError) as ei:
            sockdiag.dump(sock, req, time.monotonic() + 2.0,
                           lambda c: diagmsg.decode_unix(c, 7))
        assert ei.value.errno == errno.EINVAL
        assert isinstance(ei.value, OSError)
    finally:
        sock.close()


def test_deadline_is_enforced():
    sock = sockdiag.open_socket(2.0)
    try:
        with pytest.raises(SockDiagError) as ei:
            sockdiag.dump(sock, diagmsg.unix_request(1), time.monotonic() - 1,
                           lambda c: diagmsg.decode_unix(c, 1))
        assert ei.value.errno == errno.ETIMEDOUT
    finally:
        sock.close()


def test_open_failure_is_sockdiagerror(monkeypatch):
    def boom(*a, **k):
        raise OSError(errno.EAFNOSUPPORT, "no netlink")
    monkeypatch.setattr(sockdiag.socket, "socket", boom)
    with pytest.raises(SockDiagError):
        read_all()


def test_wanted_filter_keeps_only_those_inodes_and_their_unix_peers():
    import socket as _s
    a, b = _s.socketpair()
    other_a, other_b = _s.socketpair()
    lst = _s.socket(_s.AF_INET, _s.SOCK_STREAM)
    lst.bind(("127.0.0.1", 0))
    lst.listen(3)
    try:
        ino = lambda s: os.fstat(s.fileno()).st_ino  # noqa: E731
        full = sockdiag.read_all()
        assert {ino(a), ino(b), ino(other_a), ino(lst)} <= set(full.unix) | set(full.inet)
        part = sockdiag.read_all(wanted={ino(a), ino(lst)})
        # a's peer b is kept because its peer (a) is wanted: the DB-socket lookup needs it
        assert set(part.unix) == {ino(a), ino(b)}
        assert set(part.inet) == {ino(lst)}
        assert part.unix[ino(a)] == full.unix[ino(a)]
        assert part.inet[ino(lst)] == full.inet[ino(lst)]
    finally:
        for s in (a, b, other_a, other_b, lst):
            s.close()


def test_listeners_first_and_the_established_walk_only_for_unknown_inodes():
    """With `wanted`, TCP listeners come from the LISTEN dumps; the walk of the whole
    TCP table happens only when a wanted inode is neither a unix socket, nor a listener,
    nor in `not_inet`; either way every socket found equals what the full read says."""
    a, b = socket.socketpair()
    lst = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    lst.bind(("::1", 0))
    lst.listen(3)
    cli = socket.create_connection(lst.getsockname()[:2])
    srv, _ = lst.accept()
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    try:
        full = sockdiag.read_all()
        assert full.inet[ino(lst)].drops == 0
        held = sockdiag.read_all(wanted={ino(a), ino(lst)})
        assert held.inet_complete is False                      # no walk: all were known
        assert set(held.inet) == {ino(lst)} and held.inet[ino(lst)] == full.inet[ino(lst)]
        conn = sockdiag.read_all(wanted={ino(a), ino(lst), ino(srv)})
        assert conn.inet_complete is True                       # srv is established: walk
        assert set(conn.inet) == {ino(lst), ino(srv)} and conn.inet[ino(srv)] == full.inet[ino(srv)]
        with_udp = sockdiag.read_all(wanted={ino(lst), ino(udp)})
        assert with_udp.inet_complete is True and set(with_udp.inet) == {ino(lst)}
        remembered = sockdiag.read_all(wanted={ino(lst), ino(udp)}, not_inet={ino(udp)})
        assert remembered.inet_complete is False and set(remembered.inet) == {ino(lst)}
        # what not_inet wrongly claims still shows up when it is a listener or unix
        assert set(sockdiag.read_all(wanted={ino(lst), ino(a)},
                                     not_inet={ino(lst), ino(a)}).inet) == {ino(lst)}
    finally:
        for s in (a, b, cli, srv, lst, udp):
            s.close()


def test_listener_drops_and_tcp_idle(sockets):
    """The SKMEMINFO dump and the batched tcp_info lookups against sockets whose state
    is known: a fresh listener has dropped nothing; a connection that answered and
    waits is idle, one that never sent is not, a closed one is left out."""
    lst = tcp_listener("127.0.0.1", socket.AF_INET, sockets)
    pairs = []
    for _ in range(3):
        c = tcp_connect(lst, "127.0.0.1", socket.AF_INET, sockets)
        a, _ = lst.accept()
        sockets.append(a)
        pairs.append((c, a))
    c0, a0 = pairs[0]
    c0.sendall(b"GET")
    assert a0.recv(3) == b"GET"
    a0.sendall(b"200")
    assert c0.recv(3) == b"200"
    gone = ino(pairs[2][1])
    t = read_all()
    assert t.inet[ino(lst)].drops == 0
    assert all(s.drops is None for i, s in t.inet.items() if s.state != TCP_LISTEN)
    server_side = [wait_for(lambda i=ino(a): (s := read_tcp().get(i)) and s.wqueue == 0 and s)
                   for _c, a in pairs]
    pairs[2][1].close()
    idle = sockdiag.tcp_idle(server_side)
    assert idle[ino(a0)] is True
    assert idle[ino(pairs[1][1])] is False
    assert gone not in idle


@pytest.mark.slow
def test_listen_queues_match_ss_by_lookup_and_by_dump(tmp_path):
    """The sampler's reader: unix listeners by exact lookups (few) or a LISTEN dump
    (many), TCP by a LISTEN dump; `ss -l` is the oracle."""
    from tests.harness.ss import ss_listen_queue
    path = str(tmp_path / "lq.sock")
    u = socket.socket(socket.AF_UNIX)
    u.bind(path)
    u.listen(7)
    t = socket.socket()
    t.bind(("127.0.0.1", 0))
    t.listen(9)
    clients = [socket.socket(socket.AF_UNIX) for _ in range(3)]
    for c in clients:
        c.connect(path)
    clients.append(socket.create_connection(t.getsockname()))
    try:
        ui, ti = ino(u), ino(t)
        want = {ui: ss_listen_queue(path)[0], ti: ss_listen_queue(t.getsockname()[1])[0]}
        assert want == {ui: 3, ti: 1}
        reader = sockdiag.ListenQueues()
        assert reader.read({ui, ti, 1}) == want            # lookups; inode 1 is no listener
        reader.UNIX_LOOKUPS = 0
        assert reader.read({ui, ti}) == want               # the dump
        reader.close()
    finally:
        for s in (*clients, u, t):
            s.close()


@pytest.mark.slow
def test_listen_queues_look_up_known_tcp_listeners_and_dump_only_for_new_ones(monkeypatch):
    """A TCP listener found by a LISTEN dump is looked up by address next time (no
    dump); a --reuse-port group, whose lookups the kernel answers with one socket of the
    group, and a listener re-bound on the same port (a new inode) fall back to the
    dump. Every answer equals `ss -l`; the dumps are counted by a spy on the real one."""
    from tests.harness.ss import ss_listen_queue
    dumps = []
    real = sockdiag.dump

    def counting(sock, request, deadline, decode):
        dumps.append(request)
        return real(sock, request, deadline, decode)
    monkeypatch.setattr(sockdiag, "dump", counting)
    socks: list[socket.socket] = []
    try:
        v4 = tcp_listener("127.0.0.1", socket.AF_INET, socks)
        v6 = tcp_listener("::1", socket.AF_INET6, socks)
        for _ in range(2):
            tcp_connect(v4, "127.0.0.1", socket.AF_INET, socks)
        tcp_connect(v6, "::1", socket.AF_INET6, socks)
        want = {ino(v4): 2, ino(v6): 1}
        assert ss_listen_queue(v4.getsockname()[1])[0] == 2
        reader = sockdiag.ListenQueues()
        assert reader.read(set(want)) == want and len(dumps) == 2       # first: dumped
        dumps.clear()
        for _ in range(3):
            assert reader.read(set(want)) == want
        assert dumps == []                                              # then looked up
        tcp_connect(v4, "127.0.0.1", socket.AF_INET, socks)
        assert reader.read(set(want))[ino(v4)] == 3 and dumps == []     # live values
        # the port re-bound by a new listener: the old inode is gone, the new one dumped
        port = v4.getsockname()[1]
        v4.close()
        new = socket.socket()
        socks.append(new)
        new.bind(("127.0.0.1", port))
        new.listen(3)
        assert reader.read({ino(new), ino(v6)}) == {ino(new): 0, ino(v6): 1} and dumps
        # a reuse-port group: each member's own queue, whichever one the kernel answers
        group = []
        for _ in range(3):
            s = socket.socket()
            socks.append(s)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            s.bind(("127.0.0.1", group[0].getsockname()[1] if group else 0))
            s.listen(5)
            group.append(s)
        tcp_connect(group[0], "127.0.0.1", socket.AF_INET, socks)
        by_inode = ss_tcp_by_inode("-l")                     # one ss for the whole group
        queued = {ino(s): int(by_inode[ino(s)][1]) for s in group}
        assert sum(queued.values()) == 1
        for _ in range(3):
            assert reader.read(set(queued)) == queued
        reader.close()
    finally:
        for s in socks:
            s.close()
