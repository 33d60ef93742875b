"""procfs parsers on literal text copied from a real machine."""

import os

from exporter.gunicorn.discovery import ProcfsProbe
from exporter.linux.procfs import (FdScan, ProcFS, parse_environ, parse_fdinfo_identity,
                                   parse_fdinfo_mnt_id,
                                   parse_limits_nofile, parse_mountinfo, parse_nul_list,
                                   parse_snmp_table, parse_stat, parse_status)

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


STATUS = """Name:\tgunicorn: worke
Umask:\t0022
State:\tS (sleeping)
Tgid:\t4242
Pid:\t4242
PPid:\t4200
Uid:\t1000\t1001\t1002\t1003
Gid:\t100\t101\t102\t103
FDSize:\t64
Groups:\t4 24 27 100 
VmRSS:\t   21532 kB
Threads:\t1
SigCgt:\t0000000008014a07
Cpus_allowed:\tf
Cpus_allowed_list:\t0-1,4,6-7
voluntary_ctxt_switches:\t150
"""


def test_status_fields_from_a_real_layout():
    s = parse_status(STATUS)
    assert (s.uid, s.gid, s.groups) == (1000, 100, frozenset({4, 24, 27, 100}))
    assert s.catches(1) and s.catches(2) and not s.catches(4) and s.catches(15)
    assert s.cpus_allowed == 5


def test_status_a_name_cannot_forge_a_line():
    # the kernel escapes a newline in the process's name as the two characters \\n
    forged = STATUS.replace("Name:\tgunicorn: worke", "Name:\tx\\\\nUid:\\t0\\t0\\t0\\t0")
    assert parse_status(forged).uid == 1000
    # a name that is exactly a field's text stays on the Name line
    assert parse_status(STATUS.replace("gunicorn: worke", "Uid:\t0")).uid == 1000


def test_status_without_groups_or_cpu_list():
    s = parse_status("Uid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\nGroups:\t\n")
    assert (s.uid, s.groups, s.sig_caught, s.cpus_allowed) == (0, frozenset(), 0, None)


def test_read_bytes_whole_files_and_the_limit(tmp_path):
    from exporter.linux.procfs import ProcFS
    with open("/proc/self/mountinfo", "rb") as f:
        whole = f.read()
    assert ProcFS().read_bytes("self", "mountinfo", limit=1 << 20) == whole
    assert ProcFS().read_bytes("self", "mountinfo", limit=100) == whole[:100]
    (tmp_path / "7").mkdir()
    (tmp_path / "7" / "big").write_bytes(b"x" * 9000 + b"end")
    fake = ProcFS(str(tmp_path))
    assert fake.read_bytes(7, "big") == b"x" * 9000 + b"end"
    assert fake.read_bytes(7, "big", limit=9001) == b"x" * 9000 + b"e"
    # a seq_file of many records, read past its pages (kallsyms: large and stable)
    with open("/proc/kallsyms", "rb") as f:
        head = f.read(50_000)
    assert len(head) == 50_000 and ProcFS().read_bytes("kallsyms", limit=50_000) == head
    assert fake.path(7, "fd", 3) == f"{tmp_path}/7/fd/3"
    assert ProcFS("/").path("self") == "/self"


def test_mountinfo_and_fdinfo_literals():
    text = ("22 1 0:21 / / rw,relatime shared:1 - ext4 /dev/vda rw\n"
            "27 22 0:25 / /tmp rw,nosuid shared:5 - tmpfs tmpfs rw,size=1024k\n"
            "31 22 0:40 / /home/u/with\\040space rw - fuse.sshfs u@h:/ rw,user_id=1000\n"
            "garbage line without separator\n"
            "x 22 0:41 / /bad rw - tmpfs tmpfs rw\n")
    mounts = parse_mountinfo(text)
    assert [(m.mount_id, m.point, m.fstype) for m in mounts] == [
        (22, "/", "ext4"), (27, "/tmp", "tmpfs"), (31, "/home/u/with space", "fuse.sshfs")]
    assert mounts[1].super_options == "rw,size=1024k"
    assert parse_fdinfo_mnt_id("pos:\t0\nflags:\t02\nmnt_id:\t27\nino:\t5\n") == 27
    assert parse_fdinfo_mnt_id("pos:\t0\n") is None
    assert parse_fdinfo_mnt_id("mnt_id:\t-3\n") is None
    assert parse_fdinfo_identity("pos:\t0\nflags:\t02\nmnt_id:\t27\nino:\t18446744073709551615\n") \
        == (27, 2**64 - 1)
    assert parse_fdinfo_identity("pos:\t0\nmnt_id:\t27\n") is None        # before Linux 5.14
    assert parse_fdinfo_identity("mnt_id:\t27\nino:\t1" + "0" * 30 + "\n") is None


def _heartbeat_tree(root, fdinfo: str, mountinfo: str) -> FdScan:
    (root / "10" / "fdinfo").mkdir(parents=True)
    (root / "10" / "fd").mkdir()
    os.symlink("/home/u/fuse/wgunicorn-x (deleted)", root / "10" / "fd" / "5")
    (root / "10" / "fdinfo" / "5").write_text(fdinfo)
    (root / "10" / "mountinfo").write_text(mountinfo)
    return FdScan([], [(5, "/home/u/fuse/wgunicorn-x (deleted)")], 1, False, [])


def test_heartbeat_identity_never_asks_the_files_file_system(tmp_path, monkeypatch):
    """A file named like a heartbeat on a FUSE mount (any local user can hold one): its
    identity comes from fdinfo, and it is never stat()ed (a FUSE daemon that never answers
    would stall discovery for every app); before Linux 5.14 (no `ino:`), it is stat()ed
    only on a file system the kernel answers itself."""
    fuse = "31 22 0:40 / /home/u/fuse rw - fuse.sshfs u@h:/ rw\n"
    probe = ProcfsProbe(ProcFS(str(tmp_path)))
    stats = []
    monkeypatch.setattr(ProcFS, "fd_stat", lambda self, pid, fd: stats.append(fd) or os.stat("/"))
    scan = _heartbeat_tree(tmp_path, "pos:\t0\nmnt_id:\t31\nino:\t77\n", fuse)
    assert probe.heartbeats(10, scan) == frozenset({(31, 77)}) and stats == []
    (tmp_path / "10" / "fdinfo" / "5").write_text("pos:\t0\nmnt_id:\t31\n")
    assert probe.heartbeats(10, scan) == frozenset() and stats == []
    (tmp_path / "10" / "mountinfo").write_text(fuse.replace("fuse.sshfs", "tmpfs"))
    st = os.stat("/")
    assert probe.heartbeats(10, scan) == frozenset({(st.st_dev, st.st_ino)}) and stats == [5]


def test_fd_fstype_of_a_real_fd_and_of_a_fixture(tmp_path):
    """The kernel's answer for our own fd (oracle: os.statvfs of /dev/shm is tmpfs's
    magic), and a fixture proc tree naming a FUSE mount."""
    with open("/dev/shm/gunicorn-exporter-test-%d" % os.getpid(), "w") as f:
        os.unlink(f.name)
        assert ProcFS().fd_fstype(os.getpid(), f.fileno()) == "tmpfs"
    (tmp_path / "10" / "fdinfo").mkdir(parents=True)
    (tmp_path / "10" / "fdinfo" / "5").write_text("pos:\t0\nflags:\t02\nmnt_id:\t31\n")
    (tmp_path / "10" / "mountinfo").write_text(
        "22 1 0:21 / / rw - ext4 /dev/vda rw\n31 22 0:40 / /mnt rw - fuse.sshfs h:/ rw\n")
    assert ProcFS(str(tmp_path)).fd_fstype(10, 5) == "fuse.sshfs"


def test_stat_nosync_is_stat_on_local_files_and_passes_dont_sync(tmp_path, monkeypatch):
    """statx with AT_STATX_DONT_SYNC answers what os.stat answers on local files (the
    oracle), an unlinked file through /proc/self/fd included; the flag is what keeps a
    FUSE daemon from being asked (its value from <linux/fcntl.h>)."""
    from exporter.linux import statx
    assert statx.AT_STATX_DONT_SYNC == 0x4000
    with open(tmp_path / "beat", "w") as f:
        os.utime(f.fileno(), (1_000_000_000.25, 1_000_000_000.5))
        os.unlink(f.name)
        for path in (f"/proc/self/fd/{f.fileno()}", str(tmp_path), "/dev/null"):
            a, b = statx.stat_nosync(path), os.stat(path)
            assert (a.st_dev, a.st_ino, a.st_mtime, a.st_ctime) == \
                (b.st_dev, b.st_ino, b.st_mtime, b.st_ctime), path
        assert statx.stat_nosync(f"/proc/self/fd/{f.fileno()}").st_mtime == 1_000_000_000.5
    try:
        statx.stat_nosync(str(tmp_path / "gone"))
        raise AssertionError("no error for a missing file")
    except FileNotFoundError:
        pass
