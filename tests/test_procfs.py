"""procfs parsers on literal text copied from a real machine."""

from exporter.linux.procfs import (parse_environ, parse_limits_nofile, parse_nul_list,
                                   parse_snmp_table, parse_stat)

STAT = ("4055 (gunicorn: worke) S 4053 4052 4052 0 -1 4194624 2316 0 0 0 7 3 0 0 20 0 1 0 "
        "1393853 42868736 4792 18446744073709551615 94 95 96 0 0 0 0 16781312 134235655 0 0 0 "
        "17 1 0 0 0 0 0 0 0 0 0 0 0 0 0")


def test_parse_stat():
    s = parse_stat(STAT)
    assert (s.pid, s.comm, s.state, s.ppid) == (4055, "gunicorn: worke", "S", 4053)
    assert (s.utime_ticks, s.stime_ticks, s.num_threads, s.starttime_ticks, s.rss_pages) == \
        (7, 3, 1, 1393853, 4792)


def test_parse_stat_with_parens_and_spaces_in_comm():
    s = parse_stat(STAT.replace("(gunicorn: worke)", "(a) b (c)"))
    assert s.comm == "a) b (c" and s.ppid == 4053


def test_nul_lists_and_environ():
    assert parse_nul_list(b"gunicorn\0-w\x004\0app:app\0") == ["gunicorn", "-w", "4", "app:app"]
    assert parse_nul_list(b"") == []
    assert parse_nul_list(b"\xff\xfe\0") == ["\ufffd\ufffd"]
    assert parse_environ(b"A=1\0GUNICORN_CMD_ARGS=-w 2 --timeout=3\0junk\0") == \
        {"A": "1", "GUNICORN_CMD_ARGS": "-w 2 --timeout=3"}


LIMITS = """Limit                     Soft Limit           Hard Limit           Units
Max cpu time              unlimited            unlimited            seconds
Max open files            20000                1048576              files
Max locked memory         8388608              8388608              bytes
"""


def test_limits():
    assert parse_limits_nofile(LIMITS) == 20000
    assert parse_limits_nofile(LIMITS.replace("20000    ", "unlimited")) is None
    assert parse_limits_nofile("") is None


NETSTAT = """TcpExt: SyncookiesSent SyncookiesRecv ListenOverflows ListenDrops
TcpExt: 0 0 17 19
IpExt: InNoRoutes InTruncatedPkts
IpExt: 0 0
"""


def test_snmp_table():
    t = parse_snmp_table(NETSTAT)
    assert t["TcpExt"]["ListenOverflows"] == 17 and t["TcpExt"]["ListenDrops"] == 19
    assert parse_snmp_table("garbage\nmore garbage\n") == {}
    assert parse_snmp_table("TcpExt: A B\nTcpExt: 1 x\n") == {}
