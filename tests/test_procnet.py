"""Tests for exporter.linux.procnet: pure parsers on literal samples taken
from this machine's /proc/net files (kernel 6.18), plus a live comparison
with the netlink reader."""

from __future__ import annotations

import os
import socket
import sys
import time
import uuid

import pytest

from tests.conftest import require

from exporter.linux import procnet
from exporter.linux.procnet import (
    parse_proc_net_tcp,
    parse_proc_net_unix,
    read_table,
)
from exporter.linux.sockdiag import SockDiagError, read_all
from exporter.linux.sockets import (TCP_CLOSE, TCP_CLOSE_WAIT, TCP_ESTABLISHED, TCP_LISTEN,
                                    InetSocket, SocketTable, UnixSocket)

# ------------------------------------------------------------------ samples

UNIX_SAMPLE = """\
Num       RefCount Protocol Flags    Type St Inode Path
000000007dc7ce50: 00000002 00000000 00000000 0002 01 20279
0000000071bf91f4: 00000003 00000000 00000000 0001 03  1209
00000000959e7a94: 00000003 00000000 00000000 0001 03  1210
00000000d0730ad2: 00000002 00000000 00010000 0001 01 20278 @abs-name
000000001c33e851: 00000002 00000000 00010000 0001 01 20182 /tmp/tmp6_bqpu8w/l.sock
0000000057789aa7: 00000003 00000000 00000000 0001 02     0 /tmp/tmp6_bqpu8w/l.sock
00000000abcdef01: 00000003 00000000 00000000 0001 03 20845 /tmp/tmp6_bqpu8w/l.sock
00000000abcdef02: 00000002 00000000 00000000 0005 01 20900 /run/with space.sock
"""

TCP_SAMPLE = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode                                                     
   0: 0100007F:EC6B 00000000:0000 0A 00000000:00000003 00:00000000 00000000     0        0 20270 1 00000000a920dbe2 100 0 0 10 0                     
   1: 00000000:07E8 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1213 1 000000008246af52 100 0 0 10 0                      
   2: 0100007F:D4DE 0100007F:D4A1 06 00000000:00000000 03:000000DA 00000000     0        0 0 3 000000000cecda4e                                      
   3: 0100007F:EC6B 0100007F:8D0C 01 00000000:0000000A 00:00000000 00000000     0        0 20272 1 00000000e09b360a 20 4 30 10 -1                    
   4: 0100007F:8D0C 0100007F:EC6B 01 00000014:00000000 00:00000000 00000000  1000        0 20271 2 000000008031544c 20 0 0 11 -1                     
   5: 0100007F:D1AC 0100007F:BF77 08 00000000:00000001 00:00000000 00000000     0        0 20276 2 000000000d6b1dc0 20 0 0 10 -1                     
"""

TCP6_SAMPLE = """\
  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:BF77 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 20273 1 0000000023c6c14c 100 0 0 10 0
   1: 00000000000000000000000001000000:CBB2 00000000000000000000000001000000:BF77 01 00000000:00000000 00:00000000 00000000     0        0 20274 2 000000002b8bcaa4 20 0 0 10 -1
   2: 0000000000000000FFFF00000100007F:BF77 0000000000000000FFFF00000100007F:D1AC 01 00000000:00000000 00:00000000 00000000     0        0 20277 1 000000003a47bb29 20 0 0 10 -1
   3: 00000000000000000000000001000000:BF77 00000000000000000000000001000000:CBB2 01 00000000:00000000 00:00000000 00000000     0        0 20275 1 0000000023b05615 20 0 0 10 -1
"""

little_endian_only = pytest.mark.skipif(
    sys.byteorder != "little",
    reason="samples were captured on a little-endian host")


def test_parse_unix_sample():
    u = parse_proc_net_unix(UNIX_SAMPLE)
    assert set(u) == {20279, 1209, 1210, 20278, 20182, 20845, 20900}
    assert 0 not in u  # embryo in accept queue
    assert u[20279] == UnixSocket(20279, TCP_CLOSE, socket.SOCK_DGRAM, None,
                                  None, None, None, None, None, None)
    assert u[1209].state == TCP_ESTABLISHED
    assert u[1209].type == socket.SOCK_STREAM
    assert u[1209].name is None
    assert u[20278].state == TCP_LISTEN and u[20278].name == "@abs-name"
    assert u[20182].state == TCP_LISTEN
    assert u[20182].name == "/tmp/tmp6_bqpu8w/l.sock"
    assert u[20845].state == TCP_ESTABLISHED
    assert u[20845].name == "/tmp/tmp6_bqpu8w/l.sock"
    assert u[20900].type == socket.SOCK_SEQPACKET
    assert u[20900].name == "/run/with space.sock"
    for s in u.values():
        # what /proc/net/unix does not tell is unknown: None
        assert (s.peer, s.rqueue, s.wqueue, s.shutdown, s.vfs_ino, s.vfs) == \
            (None, None, None, None, None, None)


def test_parse_unix_empty_and_garbage():
    assert parse_proc_net_unix("") == {}
    assert parse_proc_net_unix(UNIX_SAMPLE.splitlines()[0] + "\n") == {}
    assert parse_proc_net_unix("hdr\nnot a valid line at all here x\n") == {}


@little_endian_only
def test_parse_tcp_sample():
    t = parse_proc_net_tcp(TCP_SAMPLE, socket.AF_INET)
    assert set(t) == {20270, 1213, 20272, 20271, 20276}  # TIME_WAIT skipped
    lst = t[20270]
    assert lst == InetSocket(20270, socket.AF_INET, TCP_LISTEN, "127.0.0.1",
                             0xEC6B, "0.0.0.0", 0, 3, None, 0)
    assert type(lst.family) is int
    assert t[1213].local_addr == "0.0.0.0" and t[1213].local_port == 2024
    est = t[20272]
    assert est.state == TCP_ESTABLISHED
    assert (est.remote_addr, est.remote_port) == ("127.0.0.1", 0x8D0C)
    assert (est.rqueue, est.wqueue) == (10, 0)
    assert (t[20271].rqueue, t[20271].wqueue, t[20271].uid) == (0, 0x14, 1000)
    assert t[20276].state == TCP_CLOSE_WAIT and t[20276].rqueue == 1


@little_endian_only
def test_parse_tcp6_sample():
    t = parse_proc_net_tcp(TCP6_SAMPLE, socket.AF_INET6)
    assert set(t) == {20273, 20274, 20277, 20275}
    assert t[20273].local_addr == "::" and t[20273].state == TCP_LISTEN
    assert t[20273].wqueue is None and t[20273].drops is None
    assert t[20274].local_addr == "::1" and t[20274].remote_addr == "::1"
    assert (t[20274].local_port, t[20274].remote_port) == (0xCBB2, 0xBF77)
    assert t[20277].local_addr == "::ffff:127.0.0.1"
    assert t[20277].remote_addr == "::ffff:127.0.0.1"
    assert all(s.family == socket.AF_INET6 for s in t.values())


def test_parse_tcp_rejects_other_family():
    with pytest.raises(ValueError):
        parse_proc_net_tcp(TCP_SAMPLE, socket.AF_UNIX)


def test_read_table_dir_layout(tmp_path):
    (tmp_path / "unix").write_text(UNIX_SAMPLE)
    (tmp_path / "tcp").write_text(TCP_SAMPLE)
    t = read_table(str(tmp_path))  # no tcp6 file: IPv6 disabled
    assert isinstance(t, SocketTable) and t.source == "procfs"
    assert len(t.unix) == 7 and len(t.inet) == 5
    (tmp_path / "tcp6").write_text(TCP6_SAMPLE)
    assert len(read_table(str(tmp_path)).inet) == 9


def test_read_table_vanished_pid_raises():
    with pytest.raises(FileNotFoundError):
        read_table("/proc/999999999/net")


# ------------------------------------------------------------------ live

def ino(s: socket.socket) -> int:
    return os.fstat(s.fileno()).st_ino


def wait_for(pred, timeout: float = 1.5):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v or time.monotonic() >= deadline:
            return v
        time.sleep(0.002)


@pytest.fixture
def sockets():
    socks: list[socket.socket] = []
    yield socks
    for s in socks:
        s.close()


def _netlink_or_skip():
    try:
        return read_all()
    except SockDiagError as e:
        require(False, f"netlink unavailable: {e}")


def test_live_table_agrees_with_netlink(tmp_path, sockets):
    # unix: listener with a pending client, an accepted pair, an abstract
    # listener, a socketpair, an unbound dgram socket
    path = str(tmp_path / "s.sock")
    ul = socket.socket(socket.AF_UNIX)
    sockets.append(ul)
    ul.bind(path)
    ul.listen(5)
    uc = socket.socket(socket.AF_UNIX)
    sockets.append(uc)
    uc.connect(path)
    ua, _ = ul.accept()
    sockets.append(ua)
    pending = socket.socket(socket.AF_UNIX)
    sockets.append(pending)
    pending.connect(path)
    abstract = socket.socket(socket.AF_UNIX)
    sockets.append(abstract)
    abstract.bind(f"\0procnet-test-{uuid.uuid4().hex[:8]}")
    abstract.listen(1)
    p1, p2 = socket.socketpair()
    sockets += [p1, p2]
    dg = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sockets.append(dg)
    unix_socks = [ul, uc, ua, pending, abstract, p1, p2, dg]

    # tcp v4 + v6: listener with one pending connection, an accepted
    # connection with unread data, one in CLOSE_WAIT
    tcp_socks = []
    for host, fam in (("127.0.0.1", socket.AF_INET), ("::1", socket.AF_INET6)):
        tl = socket.socket(fam)
        sockets.append(tl)
        tl.bind((host, 0))
        tl.listen(9)
        port = tl.getsockname()[1]
        c1 = socket.socket(fam)
        sockets.append(c1)
        c1.connect((host, port))
        a1, _ = tl.accept()
        sockets.append(a1)
        c1.sendall(b"z" * 7)
        c2 = socket.socket(fam)
        c2.connect((host, port))
        a2, _ = tl.accept()
        sockets.append(a2)
        c2.close()
        c3 = socket.socket(fam)
        sockets.append(c3)
        c3.connect((host, port))  # stays in the accept queue
        tcp_socks += [tl, c1, a1, a2, c3]
        a2i, tli, a1i = ino(a2), ino(tl), ino(a1)
        assert wait_for(lambda: (t := procnet.read_tcp_files()).get(a2i)
                        and t[a2i].state == TCP_CLOSE_WAIT
                        and t[tli].rqueue == 1 and t[a1i].rqueue == 7)

    nl = _netlink_or_skip()
    pf = read_table()
    assert pf.source == "procfs"
    # the same table through /proc/<pid>/net of this process
    assert ino(ul) in read_table(f"/proc/{os.getpid()}/net").unix

    for s in unix_socks:
        i = ino(s)
        a, b = nl.unix[i], pf.unix[i]
        assert (a.state, a.type, a.name) == (b.state, b.type, b.name), (a, b)
    for s in tcp_socks:
        i = ino(s)
        a, b = nl.inet[i], pf.inet[i]
        assert (a.family, a.state, a.local_addr, a.local_port, a.remote_addr,
                a.remote_port, a.rqueue, a.uid) == \
            (b.family, b.state, b.local_addr, b.local_port, b.remote_addr,
             b.remote_port, b.rqueue, b.uid), (a, b)
        if a.state == TCP_LISTEN:
            assert b.wqueue is None and a.wqueue == 9 and a.rqueue == 1
        else:  # unacked bytes; may move between the two reads
            assert a.wqueue >= 0 and b.wqueue >= 0
