"""The netlink walk and the sock_diag parsers (exporter/linux/netlink.py,
exporter/linux/diagmsg.py) on literal datagrams built here with struct: no kernel.
tests/test_sockdiag.py is the live-kernel oracle (against `ss`)."""

from __future__ import annotations

import dataclasses
import errno
import random
import socket
import struct

import pytest

from exporter.linux import diagmsg, netlink, sockdiag
from exporter.linux.diagmsg import (INET_DIAG_INFO, INET_DIAG_SKMEMINFO, SOCK_DIAG_BY_FAMILY,
                                    UNIX_DIAG_NAME, UNIX_DIAG_PEER, UNIX_DIAG_RQLEN,
                                    UNIX_DIAG_SHUTDOWN, UNIX_DIAG_VFS, decode_inet,
                                    decode_listen_drops, decode_listeners, decode_lookups,
                                    decode_unix, parse_tcp_idle)
from exporter.linux.netlink import (NLM_F_MULTI, NLMSG_DONE, NLMSG_ERROR, NLMSG_NOOP,
                                    NLMSG_OVERRUN, NetlinkError, walk)
from exporter.linux.sockets import (TCP_ESTABLISHED, TCP_LISTEN, TCP_TIME_WAIT, InetSocket,
                                    UnixSocket)

HDR = struct.Struct("=IHHII")
UNIX_MSG = struct.Struct("=BBBxI8s")
INET_MSG = struct.Struct("=BBBB" "4s16s16sI8s" "IIIII")   # ports raw (big-endian) in 4s
PID = 4242


# ------------------------------------------------------------------ builders

def pad(b: bytes) -> bytes:
    return b + bytes(-len(b) % 4)


def msg(mtype: int, payload: bytes, seq: int = 1, flags: int = NLM_F_MULTI,
        padded: bool = True) -> bytes:
    """nlmsghdr + payload; nlmsg_len counts the payload unpadded, padding follows."""
    raw = HDR.pack(16 + len(payload), mtype, flags, seq, PID) + payload
    return pad(raw) if padded else raw


def attr(atype: int, value: bytes) -> bytes:
    return pad(struct.pack("=HH", 4 + len(value), atype) + value)


def done(seq: int = 1) -> bytes:
    return msg(NLMSG_DONE, struct.pack("=i", 0), seq)


def error(err: int, seq: int = 1) -> bytes:
    return msg(NLMSG_ERROR, struct.pack("=i", -err) + HDR.pack(40, 20, 0x301, seq, 0), seq, 0)


def unix(ino: int, *attrs: bytes, state: int = TCP_ESTABLISHED,
         stype: int = socket.SOCK_STREAM, seq: int = 1) -> bytes:
    return msg(SOCK_DIAG_BY_FAMILY,
               UNIX_MSG.pack(socket.AF_UNIX, stype, state, ino, b"\xff" * 8) + b"".join(attrs),
               seq)


def peer(i: int) -> bytes:
    return attr(UNIX_DIAG_PEER, struct.pack("=I", i))


def rqlen(rq: int, wq: int) -> bytes:
    return attr(UNIX_DIAG_RQLEN, struct.pack("=II", rq, wq))


def shutdown(bits: int) -> bytes:
    return attr(UNIX_DIAG_SHUTDOWN, bytes([bits]))


def name(raw: bytes) -> bytes:
    return attr(UNIX_DIAG_NAME, raw)


def vfs(ino: int, dev: int) -> bytes:
    return attr(UNIX_DIAG_VFS, struct.pack("=II", ino, dev))


def connected(ino: int, p: int, rq: int = 0, wq: int = 0, shut: int = 0, seq: int = 1) -> bytes:
    """An unnamed connected unix socket exactly as sk_diag_fill() sends it (60 bytes)."""
    return unix(ino, peer(p), rqlen(rq, wq), shutdown(shut), seq=seq)


def inet(ino: int, family: int, src: str, sport: int, dst: str, dport: int,
         state: int = TCP_ESTABLISHED, rq: int = 0, wq: int = 0, uid: int = 1000,
         attrs: bytes = b"", seq: int = 1, padded: bool = True) -> bytes:
    size = 4 if family == socket.AF_INET else 16
    a = socket.inet_pton(family, src)[:size].ljust(16, b"\0")
    b = socket.inet_pton(family, dst)[:size].ljust(16, b"\0")
    body = INET_MSG.pack(family, state, 0, 0, struct.pack(">HH", sport, dport), a, b, 0,
                         b"\xff" * 8, 0, rq, wq, uid, ino)
    return msg(SOCK_DIAG_BY_FAMILY, body + attrs, seq, padded=padded)


def chunks(*datagrams: bytes) -> list:
    return [(bytearray(d), len(d)) for d in datagrams]


def tcp_info(sent: int, recv: int, acked: int | None) -> bytes:
    """struct tcp_info: 232 bytes with bytes_acked (Linux >= 4.1), else 104."""
    info = bytearray(232 if acked is not None else 104)
    struct.pack_into("=I", info, diagmsg.TCPI_LAST_DATA_SENT, sent)
    struct.pack_into("=I", info, diagmsg.TCPI_LAST_DATA_RECV, recv)
    if acked is not None:
        struct.pack_into("=Q", info, diagmsg.TCPI_BYTES_ACKED, acked)
    return bytes(info)


# ------------------------------------------------------------------ unix

NAMED = dict(inode=11, state=TCP_LISTEN, type=socket.SOCK_STREAM, name="/run/app.sock",
             peer=0, rqueue=3, wqueue=128, shutdown=0, vfs_ino=77, vfs_dev=(8 << 20) | 1)


def test_unix_attributes_in_kernel_order():
    # sk_diag_fill(): NAME, VFS, PEER, ICONS, RQLEN, MEMINFO, SHUTDOWN
    d = unix(11, name(b"/run/app.sock\0"), vfs(77, (8 << 20) | 1), rqlen(3, 128), shutdown(0),
             state=TCP_LISTEN) + done()
    got = decode_unix(chunks(d), 1)
    assert got == {11: UnixSocket(**NAMED)}
    assert got[11].vfs == (8, 1, 77)


def test_unix_attributes_reordered_and_unknown_ones_skipped():
    d = unix(11, shutdown(0), attr(7, struct.pack("=I", 1000)),           # UNIX_DIAG_UID
             rqlen(3, 128), attr(99, b"\x01\x02\x03"), vfs(77, (8 << 20) | 1),
             attr(0x8000 | 5, attr(1, b"xxxx")),                           # nested MEMINFO
             name(b"/run/app.sock"), state=TCP_LISTEN) + done()
    assert decode_unix(chunks(d), 1) == {11: UnixSocket(**NAMED)}


def test_unix_missing_attributes_are_none_or_zero():
    got = decode_unix(chunks(unix(12) + done()), 1)[12]
    # no RQLEN / SHUTDOWN: unknown; no PEER / VFS / NAME: there is none
    assert (got.rqueue, got.wqueue, got.shutdown) == (None, None, None)
    assert (got.peer, got.vfs_ino, got.vfs, got.name) == (0, 0, None, None)


def test_unix_abstract_name_and_inode_zero():
    d = unix(13, name(b"\0gunicorn\0x"), state=TCP_LISTEN) + unix(0, peer(13)) + done()
    got = decode_unix(chunks(d), 1)
    assert set(got) == {13} and got[13].name == "@gunicorn@x"


def test_unix_fast_run_with_other_layouts_inside():
    # a 60-byte message with NAME(2) + RQLEN + SHUTDOWN has the fast layout's length
    odd = unix(500, name(b"@z"), rqlen(1, 2), shutdown(3))
    assert len(odd) == len(connected(1, 2)) == 60
    msgs = [connected(100 + i, 200 + i, rq=i, wq=2 * i, shut=i % 4) for i in range(300)]
    msgs[150:150] = [odd, unix(501, name(b"/a"), peer(7), rqlen(0, 0), shutdown(0))]
    got = decode_unix(chunks(b"".join(msgs) + done()), 1)
    assert len(got) == 302
    assert got[100 + 7] == UnixSocket(107, TCP_ESTABLISHED, socket.SOCK_STREAM, None, 207,
                                      7, 14, 3, 0, 0)
    assert got[500] == UnixSocket(500, TCP_ESTABLISHED, socket.SOCK_STREAM, "@z", 0, 1, 2, 3)
    assert got[501].name == "/a" and got[501].peer == 7
    same = bytearray(b"".join(m for m in msgs if len(m) == 60))
    runs, is_done = walk(same, len(same), SOCK_DIAG_BY_FAMILY, 1)
    assert not is_done and runs == [(0, 60, 301)]   # identical headers: one run


def test_unix_wanted_keeps_those_and_their_peers():
    d = b"".join([connected(1, 2), connected(2, 1), connected(3, 4), connected(4, 3),
                  unix(5, name(b"/db.sock"), peer(6), rqlen(0, 0), shutdown(0)),
                  unix(7, name(b"/x"), peer(8), rqlen(0, 0), shutdown(0))]) + done()
    assert set(decode_unix(chunks(d), 1, wanted={1, 6})) == {1, 2, 5}
    assert set(decode_unix(chunks(d), 1)) == {1, 2, 3, 4, 5, 7}


# ------------------------------------------------------------------ the walk

def test_done_in_a_second_datagram_and_nothing_read_after_it():
    first = b"".join(connected(i, i + 1) for i in range(1, 40))
    fed = []

    def datagrams():
        for d in (first, done(), b"never read"):
            fed.append(d)
            yield bytearray(d), len(d)
    assert len(decode_unix(datagrams(), 1)) == 39
    assert len(fed) == 2


def test_no_done_is_an_error():
    with pytest.raises(NetlinkError) as ei:
        decode_unix(chunks(connected(1, 2)), 1)
    assert ei.value.errno == errno.EIO


def test_kernel_error_with_errno():
    with pytest.raises(NetlinkError) as ei:
        decode_unix(chunks(connected(1, 2) + error(errno.EINVAL)), 1)
    assert ei.value.errno == errno.EINVAL and isinstance(ei.value, OSError)
    assert sockdiag.SockDiagError is NetlinkError


def test_ack_noop_skipped_overrun_raises():
    d = error(0) + msg(NLMSG_NOOP, b"") + connected(1, 2) + done()
    assert set(decode_unix(chunks(d), 1)) == {1}
    with pytest.raises(NetlinkError):
        decode_unix(chunks(msg(NLMSG_OVERRUN, b"") + done()), 1)


def test_foreign_sequence_numbers_are_ignored():
    d = (connected(1, 2, seq=7) + done(seq=7) + error(errno.EPERM, seq=7)
         + connected(3, 4, seq=1) + done(seq=1))
    assert set(decode_unix(chunks(d), 1)) == {3}


def test_alignment_padding_between_messages():
    # nlmsg_len not a multiple of 4 (a 5-byte name, no trailing attribute padding in
    # the length): the next message starts at NLMSG_ALIGN; the pad bytes are garbage
    m = msg(SOCK_DIAG_BY_FAMILY,
            UNIX_MSG.pack(1, 1, 1, 21, bytes(8)) + struct.pack("=HH", 9, 0) + b"/sock",
            padded=False)
    assert len(m) % 4 == 1
    d = m + b"\xaa" * 3 + m.replace(struct.pack("=I", 21), struct.pack("=I", 22), 1) \
        + b"\xaa" * 3 + done()
    got = decode_unix(chunks(d), 1)
    assert {k: v.name for k, v in got.items()} == {21: "/sock", 22: "/sock"}


@pytest.mark.parametrize("datagram,decode", [
    (connected(1, 2) + unix(3, name(b"/run/x.sock"), rqlen(1, 2)) + done(), decode_unix),
    (inet(9, socket.AF_INET6, "::1", 80, "::1", 5000) * 3 + done(),
     lambda c, seq: decode_inet(c, seq, {})),
], ids=["unix", "inet"])
def test_every_truncation_raises_the_module_error(datagram, decode):
    decode(chunks(datagram), 1)  # whole: fine
    for cut in range(1, len(datagram)):
        with pytest.raises(NetlinkError):
            decode(chunks(datagram[:cut]), 1)


def test_message_length_past_the_buffer_or_below_the_header():
    m = bytearray(connected(1, 2) + done())
    struct.pack_into("=I", m, 0, 1000)
    with pytest.raises(NetlinkError):
        decode_unix(chunks(bytes(m)), 1)
    struct.pack_into("=I", m, 0, 8)
    with pytest.raises(NetlinkError):
        decode_unix(chunks(bytes(m)), 1)


def test_short_bodies_and_overrunning_attributes_raise():
    with pytest.raises(NetlinkError):   # unix_diag_msg cut to 8 bytes, consistent header
        decode_unix(chunks(msg(SOCK_DIAG_BY_FAMILY, bytes(8)) + done()), 1)
    bad = unix(5, struct.pack("=HH", 200, UNIX_DIAG_PEER) + bytes(4))
    with pytest.raises(NetlinkError):
        decode_unix(chunks(bad + done()), 1)
    with pytest.raises(NetlinkError):   # inet_diag_msg shorter than 72 bytes
        decode_inet(chunks(msg(SOCK_DIAG_BY_FAMILY, bytes(40)) + done()), 1, {})


def test_random_corruption_is_refused_or_decoded_as_the_bytes_say():
    """Random bytes changed in a dump: the decoder raises NetlinkError (never another
    exception) or returns a table, and where the kernel's structs say what the change
    means, the table says exactly that: a change in the 8-byte cookie (which nothing
    reads) leaves the table as it was; a change in udiag_ino alone renames that one
    socket (an inode 0 drops it, an inode that another message has is overwritten by
    the later message, as a dict does)."""
    messages = [connected(i, i + 1) for i in range(1, 21)] \
        + [unix(99, name(b"\0abs"), vfs(1, 2), rqlen(1, 2), shutdown(1))]
    good = b"".join(messages) + done()
    starts = [sum(map(len, messages[:j])) for j in range(len(messages))]
    clean = decode_unix(chunks(good), 1)
    in_order = [clean[ino] for ino in list(range(1, 21)) + [99]]
    rng = random.Random(7)
    seen = {"refused": 0, "decoded": 0, "cookie only": 0, "inode only": 0}
    for _ in range(2000):
        d = bytearray(good)
        touched = set()
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(len(d))
            d[i] = rng.randrange(256)
            touched.add(i)
        try:
            got = decode_unix(chunks(bytes(d)), 1)
        except NetlinkError:
            seen["refused"] += 1
            got = None
        else:
            seen["decoded"] += 1
            assert all(isinstance(s, UnixSocket) and s.inode == ino != 0 for ino, s in got.items())
        # where every change fell: (message, offset in it) of each changed byte
        where = [(j, i - starts[j]) for i in touched
                 for j in range(len(messages)) if starts[j] <= i < starts[j] + len(messages[j])]
        if len(where) == len(touched) and all(24 <= off < 32 for _, off in where):
            seen["cookie only"] += 1
            assert got == clean, sorted(touched)
        elif len(where) == len(touched) and all(20 <= off < 24 for _, off in where):
            seen["inode only"] += 1
            want = {}
            for j, sock in enumerate(in_order):
                ino = struct.unpack_from("=I", d, starts[j] + 20)[0]
                if ino:
                    want[ino] = dataclasses.replace(sock, inode=ino)
            assert got == want, sorted(touched)
    # the run exercised every kind of outcome (fixed seed: this is the same every run)
    assert min(seen.values()) >= 20, seen


def test_walk_splits_runs_on_a_changed_header_and_takes_memoryviews():
    d = connected(1, 2) * 3 + msg(SOCK_DIAG_BY_FAMILY, connected(4, 5)[16:], flags=0x12) \
        + connected(6, 7) + done()
    runs, is_done = walk(memoryview(d), len(d), SOCK_DIAG_BY_FAMILY, 1)
    assert is_done and [(o, c) for o, _l, c in runs] == [(0, 3), (180, 1), (240, 1)]
    assert set(decode_unix([(memoryview(d), len(d))], 1)) == {1, 4, 6}


# ------------------------------------------------------------------ inet

def test_inet_ipv4_and_ipv6_with_big_endian_ports():
    d4 = (inet(31, socket.AF_INET, "127.0.0.1", 0x1F40, "10.1.2.3", 0x0102, rq=3, wq=7,
               attrs=attr(8, b"\0"), seq=2)
          + inet(0, socket.AF_INET, "127.0.0.1", 1, "127.0.0.1", 2, state=TCP_TIME_WAIT, seq=2)
          + done(2))
    d6 = (inet(32, socket.AF_INET6, "::1", 443, "2001:db8::7", 50000, state=TCP_LISTEN,
               seq=3)
          + inet(33, socket.AF_INET6, "::ffff:127.0.0.1", 8000, "::ffff:127.0.0.1", 40000,
                 seq=3)
          + done(3))
    out: dict[int, InetSocket] = {}
    decode_inet(chunks(d4), 2, out)
    decode_inet(chunks(d6), 3, out)
    assert out[31] == InetSocket(31, socket.AF_INET, TCP_ESTABLISHED, "127.0.0.1", 8000,
                                 "10.1.2.3", 258, 3, 7, 1000)
    assert out[31].drops is None
    assert (out[32].local_addr, out[32].local_port, out[32].remote_addr,
            out[32].remote_port) == ("::1", 443, "2001:db8::7", 50000)
    assert out[33].local_addr == "::ffff:127.0.0.1"
    assert set(out) == {31, 32, 33}   # inode 0 (TIME_WAIT) left out


def test_inet_run_without_padding_on_the_last_message_and_wanted():
    # 5-byte attribute: nlmsg_len = 93, stride 96; the datagram ends at the last
    # message's length (no trailing padding), then DONE in its own datagram
    ms = [inet(100 + i, socket.AF_INET, "127.0.0.1", 8000, "127.0.0.1", 40000 + i,
               attrs=struct.pack("=HH", 5, 8) + b"\0", seq=2, padded=False) for i in range(6)]
    assert len(ms[0]) == 93
    d = b"".join(m + b"\0\0\0" for m in ms[:-1]) + ms[-1]
    out: dict[int, InetSocket] = {}
    decode_inet(chunks(d, done(2)), 2, out)
    assert sorted(out) == list(range(100, 106))
    assert out[105].remote_port == 40005
    part: dict[int, InetSocket] = {}
    decode_inet(chunks(d, done(2)), 2, part, wanted={101, 105})
    assert set(part) == {101, 105} and part[105] == out[105]


def test_skmeminfo_drops():
    mem = struct.pack("=9I", 0, 1, 2, 3, 4, 5, 6, 7, 5)       # sk_drops is index 8
    d = (inet(41, socket.AF_INET, "0.0.0.0", 80, "0.0.0.0", 0, state=TCP_LISTEN,
              attrs=attr(8, b"\0") + attr(INET_DIAG_SKMEMINFO, mem), seq=4)
         + inet(42, socket.AF_INET, "0.0.0.0", 81, "0.0.0.0", 0, state=TCP_LISTEN,
                attrs=attr(INET_DIAG_SKMEMINFO, mem[:32]), seq=4)      # too short: unknown
         + inet(43, socket.AF_INET, "0.0.0.0", 82, "0.0.0.0", 0, state=TCP_LISTEN,
                attrs=attr(INET_DIAG_SKMEMINFO, mem), seq=4)    # not in the table
         + done(4))
    out = {i: InetSocket(i, socket.AF_INET, TCP_LISTEN, "0.0.0.0", 80 + i - 41, "0.0.0.0",
                         0, 0, 128, 0) for i in (41, 42)}
    decode_listen_drops(chunks(d), 4, out)
    assert (out[41].drops, out[42].drops) == (5, None)
    # the same dump read as the listeners themselves (read_all's LISTEN-first path)
    got: dict[int, InetSocket] = {}
    decode_listeners(chunks(d), 4, got, wanted={41, 42})
    assert set(got) == {41, 42}
    assert (got[41].drops, got[42].drops) == (5, None)
    assert (got[41].state, got[41].local_port, got[41].wqueue, got[42].local_port) == \
        (TCP_LISTEN, 80, 0, 81)
    every: dict[int, InetSocket] = {}
    decode_listeners(chunks(d), 4, every)
    assert set(every) == {41, 42, 43} and every[43].drops == 5
    with pytest.raises(NetlinkError):
        decode_listeners(chunks(d[:-len(done(4))]), 4, {})     # no NLMSG_DONE


@pytest.mark.parametrize("sent,recv,acked,idle", [
    (100, 200, 10, True),     # answered, nothing received since: idle keep-alive
    (100, 100, 10, True),     # answer in the same tick as the request
    (200, 100, 10, False),    # a request came in after the last answer: in flight
    (100, 200, 0, False),     # never answered anything
    (100, 200, None, True),   # kernel < 4.1 (no bytes_acked): strict order
    (100, 100, None, False),
])
def test_tcp_info_idle(sent, recv, acked, idle):
    m = inet(51, socket.AF_INET, "127.0.0.1", 8000, "127.0.0.1", 40000,
             attrs=attr(INET_DIAG_INFO, tcp_info(sent, recv, acked)))
    assert parse_tcp_idle(m, 16, len(m) - 16) == (51, idle)


def test_lookups_count_errors_as_answers_and_ignore_foreign_ones():
    def answer(ino, seq, attrs=b""):   # an exact lookup's answer: one message, flags 0
        body = inet(ino, socket.AF_INET, "127.0.0.1", 80, "127.0.0.1", ino, attrs=attrs)[16:]
        return msg(SOCK_DIAG_BY_FAMILY, body, seq=seq, flags=0)
    idle = attr(INET_DIAG_INFO, tcp_info(1, 2, 3))
    busy = attr(INET_DIAG_INFO, tcp_info(2, 1, 3))
    d = (answer(61, 257, idle) + error(errno.ENOENT, seq=258) + answer(63, 259, busy)
         + answer(99, 12, idle)          # another batch's: neither counted nor kept
         + answer(64, 260))              # no INET_DIAG_INFO: counted, not kept
    out: dict[int, bool] = {}
    assert decode_lookups(bytearray(d), len(d), 257, 4, out) == 4
    assert out == {61: True, 63: False}


# ------------------------------------------------------------------ requests

def test_requests():
    r = diagmsg.inet_request(socket.AF_INET6, diagmsg.ALL_STATES_MASK, 3)
    mlen, mtype, flags, seq, _pid = HDR.unpack_from(r)
    assert (mlen, mtype, seq) == (len(r), SOCK_DIAG_BY_FAMILY, 3)
    assert flags & netlink.NLM_F_DUMP == netlink.NLM_F_DUMP
    fam, proto, _ext, _pad, states = struct.unpack_from("=BBBBI", r, 16)
    assert (fam, proto) == (socket.AF_INET6, socket.IPPROTO_TCP)
    assert not states & (1 << TCP_TIME_WAIT) and states & (1 << TCP_LISTEN)
    s = InetSocket(1, socket.AF_INET, TCP_ESTABLISHED, "10.0.0.1", 8000, "10.0.0.2", 513,
                   0, 0, 0)
    lk = diagmsg.lookup_requests([s, s], 9)
    assert len(lk) == 2 * (16 + 56)
    assert [HDR.unpack_from(lk, o)[3] for o in (0, 72)] == [9, 10]
    assert lk[16 + 8:16 + 12] == struct.pack(">HH", 8000, 513)
    assert lk[16 + 12:16 + 16] == socket.inet_aton("10.0.0.1")
    u = diagmsg.unix_request(1)
    assert HDR.unpack_from(u)[0] == len(u) == 16 + 24
