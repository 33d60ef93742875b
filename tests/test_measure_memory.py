"""The measurer's memory of socket inodes that are neither unix nor TCP (a master's statsd
UDP socket), which lets later reads skip the walk of the kernel's TCP established hash:
what it passes to the socket reader, when it forgets, and that it never outlives
NOT_INET_READS reads. On literal tables; the reader's side is tests/test_sockdiag.py."""

from __future__ import annotations

from exporter.gunicorn.measure import NOT_INET_READS, Measurer
from exporter.linux.procfs import ProcFS
from exporter.linux.sockdiag import SocketTable


def _measurer(calls: list):
    def read(wanted, not_inet):
        calls.append(set(not_inet))
        return tables.pop(0)
    tables: list[SocketTable] = []
    m = Measurer(ProcFS(), read_sockets=read)
    return m, tables


def _cycle(m: Measurer, tables: list, table: SocketTable, wanted: set[int]) -> None:
    tables.append(table)
    got = m._socket_table(m._own_netns, 1, wanted)
    m._remember_not_inet(m._own_netns, got, wanted)


def test_udp_inode_is_remembered_after_a_complete_read_and_forgotten_in_time():
    calls: list = []
    m, tables = _measurer(calls)
    wanted = {10, 11, 12}                  # 10 unix, 11 a TCP listener, 12 UDP
    unix, inet = {10: object()}, {11: object()}
    _cycle(m, tables, SocketTable(unix, inet, "netlink", inet_complete=True), wanted)
    assert calls[-1] == set()              # nothing known yet
    for _ in range(NOT_INET_READS):
        _cycle(m, tables, SocketTable(unix, inet, "netlink", inet_complete=False), wanted)
        assert calls[-1] == {12}           # 12 proven neither unix nor TCP: no walk needed
    _cycle(m, tables, SocketTable(unix, inet, "netlink", inet_complete=True), wanted)
    assert calls[-1] == set()              # expired: this read walks everything again
    _cycle(m, tables, SocketTable(unix, inet, "netlink", inet_complete=False), wanted)
    assert calls[-1] == {12}


def test_memory_keeps_only_what_is_still_held_and_is_dropped_for_procfs():
    calls: list = []
    m, tables = _measurer(calls)
    _cycle(m, tables, SocketTable({}, {}, "netlink", inet_complete=True), {20, 21})
    _cycle(m, tables, SocketTable({}, {}, "netlink", inet_complete=False), {21})
    assert calls[-1] == {20, 21}
    _cycle(m, tables, SocketTable({}, {}, "netlink", inet_complete=False), {21})
    assert calls[-1] == {21}               # 20 no longer held: forgotten
    _cycle(m, tables, SocketTable({}, {}, "procfs"), {21})
    _cycle(m, tables, SocketTable({}, {}, "netlink", inet_complete=False), {21})
    assert calls[-1] == set()              # /proc/net says nothing about socket types
