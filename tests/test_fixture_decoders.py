"""The pure decoders on bytes real kernels and a real gunicorn 27 master sent
(tests/fixtures/: sock_diag answers, the control socket transcript), checked against
what the recorder did (tests/fixtures/expected.json) and against the /proc/PID/net
tables recorded at the same moment (a second reader of the same sockets, sharing no
code with the netlink one). tests/test_netlink.py covers the decoders on bytes built by
hand; tests/test_sockdiag.py the live kernel against `ss` (slow)."""

from __future__ import annotations

import asyncio
import json
import socket

import pytest

from exporter.gunicorn import control
from exporter.linux import sockdiag
from exporter.linux.procnet import parse_proc_net_tcp, parse_proc_net_unix
from tests.fixtures import APPS, EXPECTED, PROC, chunks, control_answer, control_frames, \
    control_request, netlink

ROLES = EXPECTED["client_ports"]


def unix_table():
    request, answer = netlink("unix.hex")
    assert request == sockdiag.unix_request(1)      # what the exporter asks today
    return sockdiag.decode_unix(chunks(answer), 1)


def tcp_table():
    out: dict = {}
    for name, family, seq in (("tcp4.hex", socket.AF_INET, 2), ("tcp6.hex", socket.AF_INET6, 3)):
        request, answer = netlink(name)
        assert request == sockdiag.inet_request(family, sockdiag.ALL_STATES_MASK, seq)
        sockdiag.decode_inet(chunks(answer), seq, out)
    return out


def test_unix_listeners_with_their_queues():
    t = unix_table()
    by_name = {s.name: s for s in t.values() if s.state == sockdiag.TCP_LISTEN}
    assert set(by_name) == {"/tmp/gxfix/shop.sock", "/tmp/gxfix/shop.ctl", "/tmp/gxfix/orders.ctl"}
    shop = by_name["/tmp/gxfix/shop.sock"]
    # three requests for two sync workers: one waits in the accept queue; gunicorn's backlog
    assert (shop.rqueue, shop.wqueue) == (EXPECTED["shop_queued"], 2048)
    assert all(s.vfs is not None for s in by_name.values())   # bound files on disk


def test_unix_connections_and_their_peers():
    t = unix_table()
    accepted = [s for s in t.values()
                if s.name == "/tmp/gxfix/shop.sock" and s.state == sockdiag.TCP_ESTABLISHED]
    assert len(accepted) == EXPECTED["shop_active"]
    for s in accepted:      # each held by a worker; its peer is the recorder's client end
        client = t[s.peer]
        assert client.peer == s.inode and client.name is None
        assert s.shutdown == client.shutdown == 0 and s.rqueue == 0


def test_unix_netlink_and_proc_net_unix_agree():
    t = unix_table()
    text = (PROC / "net" / "unix").read_text()
    procfs = parse_proc_net_unix(text)
    assert procfs and set(procfs) <= set(t)
    for ino, p in procfs.items():
        n = t[ino]
        assert (n.state, n.type, n.name) == (p.state, p.type, p.name), ino


def test_tcp_connections_by_role():
    t = tcp_table()
    by_client = {s.remote_port: s for s in t.values() if s.state != sockdiag.TCP_LISTEN}
    for port in ROLES["active"] + ROLES["idle"]:
        assert by_client[port].state == sockdiag.TCP_ESTABLISHED, port
    for port in ROLES["hung_up"]:
        assert by_client[port].state == sockdiag.TCP_CLOSE_WAIT, port
    db = [s for s in t.values() if s.remote_port == EXPECTED["db_port"]]
    assert len(db) == 1 and db[0].state == sockdiag.TCP_ESTABLISHED
    listeners = {(s.family, s.local_addr, s.local_port) for s in t.values()
                 if s.state == sockdiag.TCP_LISTEN}
    binds = APPS["api"]["binds"] + APPS["orders"]["binds"]
    assert {f"[{a}]:{p}" if f == socket.AF_INET6 else f"{a}:{p}" for f, a, p in listeners} == set(binds)


def test_tcp_netlink_and_proc_net_tcp_agree():
    t = tcp_table()
    procfs = {}
    for name, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        procfs.update(parse_proc_net_tcp((PROC / "net" / name).read_text(), family))
    assert procfs and set(procfs) == set(t)
    for ino, p in procfs.items():
        n = t[ino]
        assert (n.family, n.state, n.local_addr, n.local_port, n.remote_addr, n.remote_port) == \
            (p.family, p.state, p.local_addr, p.local_port, p.remote_addr, p.remote_port), ino


def test_listen_dumps_give_backlogs_and_drop_counters():
    t = tcp_table()
    listeners: dict = {}
    for name, family, seq in (("listen4.hex", socket.AF_INET, 4), ("listen6.hex", socket.AF_INET6, 5)):
        request, answer = netlink(name)
        assert request == sockdiag.listen_request(family, seq)
        sockdiag.decode_listen_drops(chunks(answer), seq, t)
        sockdiag.decode_listeners(chunks(answer), seq, listeners)
    assert set(listeners) == {i for i, s in t.items() if s.state == sockdiag.TCP_LISTEN}
    for ino, s in listeners.items():
        assert s.wqueue == 2048 and s.rqueue == 0           # gunicorn's backlog, nothing waiting
        assert t[ino].drops == s.drops == 0                 # known (not None), none dropped


def test_tcp_info_tells_the_idle_keep_alive_connection():
    t = tcp_table()
    request, answer = netlink("tcp_info.hex")
    api_ports = {int(b.rpartition(":")[2]) for b in APPS["api"]["binds"]}
    asked = [s for s in t.values() if s.state == sockdiag.TCP_ESTABLISHED and s.local_port in api_ports]
    assert request == sockdiag.lookup_requests(asked, 1)
    idle: dict[int, bool] = {}
    assert sockdiag.decode_lookups(bytearray(answer), len(answer), 1, len(asked), idle) == len(asked)
    by_client = {s.remote_port: s.inode for s in asked}
    # the connection whose answer was read and that sent nothing since is idle; the ones
    # whose request is being served (a thread sleeps in /slow) are not
    assert {port: idle[by_client[port]] for port in ROLES["idle"] + ROLES["active"]} == \
        {**{p: True for p in ROLES["idle"]}, **{p: False for p in ROLES["active"]}}


# --- the control socket -------------------------------------------------------------------

@pytest.mark.parametrize("app", ["shop", "orders"])
def test_control_answers_decode_to_what_the_master_runs(app):
    assert control_request(app) == control.encode_show(1, "config") + control.encode_show(2, "stats")
    config, stats = (control.decode_answer(f) for f in control_frames(app))
    assert (config["id"], config["status"], stats["id"], stats["status"]) == (1, "ok", 2, "ok")
    rec = APPS[app]
    assert config["data"]["proc_name"] == app
    assert config["data"]["bind"] == rec["binds"]
    assert config["data"]["workers"] == stats["data"]["workers_target"] == len(rec["workers"])
    assert config["data"]["control_socket"] == f"/tmp/gxfix/{app}.ctl"
    assert stats["data"]["pid"] == rec["master"] and stats["data"]["workers_current"] == len(rec["workers"])
    assert all(control.json_depth(f) <= control.MAX_DEPTH for f in control_frames(app))


def test_control_query_reads_the_framed_transcript(monkeypatch):
    """control.query end to end over a socket whose far end holds the recorded frames (the
    proof that the master answers is replaced: tests/test_identity.py tests it live)."""
    ends = []

    def connect(procfs, pid, owner, path, master_pid, expect_vfs, timeout):
        ours, theirs = socket.socketpair()
        theirs.sendall(control_answer("shop"))
        ends.append(theirs)
        ours.setblocking(False)
        return ours
    monkeypatch.setattr(control, "connect_checked", connect)
    got = asyncio.run(control.query(None, 1, None, "/tmp/gxfix/shop.ctl", 1, None))
    want = [json.loads(f)["data"] for f in control_frames("shop")]
    assert got == {"config": want[0], "stats": want[1]}
    ends[0].setblocking(False)
    assert ends[0].recv(65536) == control_request("shop")
    ends[0].close()
