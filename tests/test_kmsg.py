"""The /dev/kmsg record parser and the OOM record parser, on literal records.

The records below are what kernel 6.18 wrote for a memcg OOM kill on the test machine
(the `oom-kill:` summary and the `Killed process` record), plus the global killer's
variants of older kernels and malformed input.
"""

from __future__ import annotations

import asyncio
import errno
import os
import uuid

from exporter.collectors.oom import OomCollector
from exporter.linux.kmsg import (KmsgReader, OomRecordJoiner, parse_kmsg_record,
                                 parse_oom)
from tests.conftest import require
from tests.harness.procs import poll

MEMCG_SUMMARY = (b"6,416,1110139936,-;oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,"
                 b"mems_allowed=0,oom_memcg=/gx-probe-13850,task_memcg=/gx-probe-13850,task=python3,"
                 b"pid=14840,uid=0\n")
MEMCG_KILLED = (b"3,417,1110139966,-;Memory cgroup out of memory: Killed process 14840 (python3) "
                b"total-vm:323768kB, anon-rss:102016kB, file-rss:6704kB, shmem-rss:0kB, UID:0 "
                b"pgtables:268kB oom_score_adj:0\n")
GLOBAL_SUMMARY = (b"6,900,5000000,-;oom-kill:constraint=CONSTRAINT_NONE,nodemask=(null),cpuset=/,"
                  b"mems_allowed=0,global_oom,task_memcg=/system.slice/shop.service,"
                  b"task=gunicorn: worke,pid=4242,uid=33\n")
GLOBAL_KILLED = (b"3,901,5000100,-;Out of memory: Killed process 4242 (gunicorn: worke) "
                 b"total-vm:900000kB, anon-rss:800000kB, file-rss:0kB, shmem-rss:0kB, UID:33\n")
OLD_KILLED = b"3,12,99,-;Killed process 77 (python) total-vm:1kB, anon-rss:1kB, file-rss:0kB\n"
OLD_KILLED_WITH_CONTEXT = (b"3,13,100,-;Out of memory (oom_kill_allocating_task): Killed process 78 "
                           b"(my app) total-vm:2kB, anon-rss:1kB, file-rss:0kB\n")


def test_record_header_message_and_dictionary():
    rec = parse_kmsg_record(b"6,1234,5678,-;usb 1-1: new device\n SUBSYSTEM=usb\n DEVICE=c189:1\n")
    assert (rec.level, rec.facility, rec.seq, rec.timestamp_usec, rec.flags) == (6, 0, 1234, 5678, "-")
    assert rec.message == "usb 1-1: new device"
    assert rec.fields == {"SUBSYSTEM": "usb", "DEVICE": "c189:1"}
    user = parse_kmsg_record(b"14,5,6,-;written by a process\n")
    assert (user.facility, user.level) == (1, 6)


def test_escaped_and_invalid_bytes():
    rec = parse_kmsg_record(b"4,1,2,c;tab\\x09 and \\x41 and \xff\xfe raw\n")
    assert rec.flags == "c"
    assert rec.message == "tab\\x09 and A and \ufffd\ufffd raw"


def test_malformed_records_are_none_not_exceptions():
    for junk in (b"", b"\n", b";", b"no header at all\n", b"6,1;short\n", b"a,b,c,-;x\n",
                 b"6,1,2", b"\x00\x01\x02\xff" * 100, b"9" * 5000 + b",1,2,-;x",
                 b"6,1,2,-" + b"x" * 10000):
        assert parse_kmsg_record(junk) is None, junk


def test_memcg_oom_records():
    summary = parse_oom(parse_kmsg_record(MEMCG_SUMMARY).message)
    assert (summary.pid, summary.name, summary.kind, summary.constraint, summary.killed) == \
        (14840, "python3", "memcg", "CONSTRAINT_MEMCG", False)
    assert summary.task_memcg == summary.oom_memcg == "/gx-probe-13850"
    killed = parse_oom(parse_kmsg_record(MEMCG_KILLED).message)
    assert (killed.pid, killed.name, killed.kind, killed.killed) == (14840, "python3", "memcg", True)
    assert (killed.total_vm_kb, killed.anon_rss_kb) == (323768, 102016)


def test_global_oom_records_and_old_kernels():
    s = parse_oom(parse_kmsg_record(GLOBAL_SUMMARY).message)
    assert (s.pid, s.name, s.kind, s.uid, s.task_memcg, s.oom_memcg) == \
        (4242, "gunicorn: worke", "global", 33, "/system.slice/shop.service", None)
    k = parse_oom(parse_kmsg_record(GLOBAL_KILLED).message)
    assert (k.pid, k.name, k.kind) == (4242, "gunicorn: worke", "global")
    old = parse_oom(parse_kmsg_record(OLD_KILLED).message)   # kernels < 5.1
    assert (old.pid, old.name, old.kind, old.killed) == (77, "python", "global", True)
    assert parse_oom("Killed process 77 (python)") is None     # no context, no total-vm: not the kernel's
    k = parse_oom(parse_kmsg_record(OLD_KILLED_WITH_CONTEXT).message)
    assert (k.pid, k.name) == (78, "my app")


def test_old_kernel_pair_is_joined():
    j = OomRecordJoiner()
    assert j.feed("Memory cgroup out of memory: Kill process 77 (python) score 999 or sacrifice child") is None
    kill = j.feed(parse_kmsg_record(OLD_KILLED).message)
    assert (kill.pid, kill.kind) == (77, "memcg")


def test_not_oom_or_broken_oom_lines():
    for msg in ("oom_reaper: reaped process 14840 (python3), now anon-rss:0kB",
                "python3 invoked oom-killer: gfp_mask=0xcc0(GFP_KERNEL), order=0",
                "oom-kill:constraint=CONSTRAINT_MEMCG,task=x",            # cut short
                "Out of memory: Killed process abc (x)",
                "Memory cgroup stats for /gx-probe-13850:",
                "Tasks state (memory values in pages):"):
        assert parse_oom(msg) is None, msg


def test_joiner_counts_each_kill_once_and_enriches_it():
    j = OomRecordJoiner()
    assert j.feed(parse_kmsg_record(MEMCG_SUMMARY).message) is None
    kill = j.feed(parse_kmsg_record(MEMCG_KILLED).message)
    assert kill.task_memcg == "/gx-probe-13850" and kill.constraint == "CONSTRAINT_MEMCG"
    # a lone summary (its kill record lost) never counts; a lone kill record does
    assert j.feed(parse_kmsg_record(GLOBAL_SUMMARY).message) is None
    lone = j.feed(parse_kmsg_record(OLD_KILLED_WITH_CONTEXT).message)
    assert lone.pid == 78 and lone.task_memcg is None
    # pending summaries are bounded
    for pid in range(1000):
        j.feed(f"oom-kill:constraint=CONSTRAINT_NONE,nodemask=(null),task=x,pid={pid},uid=0")
    assert len(j._pending) <= OomRecordJoiner.MAX_PENDING


def test_record_stream_with_malformed_records_counts_once():
    """A stream as the reader sees it, garbage and a user-space forgery included."""
    oom = OomCollector(kmsg_path=None)
    stream = [b"\xff\xff garbage", MEMCG_SUMMARY, b"6,417,1,-", b"",
              b"14,418,1,-;Memory cgroup out of memory: Killed process 14840 (python3) total-vm:1kB",
              MEMCG_KILLED, MEMCG_KILLED[:40], GLOBAL_KILLED, b"6,999,1,-;" + b"\x00" * 2000]
    reader = KmsgReader(oom.on_record, path="/nonexistent")
    for data in stream:
        reader._handle(data)
    snap = asyncio.run(oom.collect())
    assert snap.unattributed_kills == 2          # 14840 and 4242, each once
    assert [e.pid for e in snap.recent] == [14840, 4242]
    assert reader.malformed == 3 and reader.records == 6


def test_reader_on_a_pipe_reads_records_and_survives_errors(tmp_path):
    """The non-blocking read loop: one read per record, EAGAIN ends a wakeup."""
    got = []
    r, w = os.pipe()
    try:
        reader = KmsgReader(got.append, path="/dev/null")
        reader.fd = r
        os.set_blocking(r, False)
        os.write(w, MEMCG_SUMMARY)
        assert reader.read_available() == 1
        assert reader.read_available() == 0          # EAGAIN: nothing more now
        assert got[0].seq == 416
    finally:
        os.close(w)
        reader.close()


def test_reader_real_kmsg_starts_at_the_end():
    """Records logged before open() are not delivered, records logged after are. The
    oracle: two marker records this test writes to /dev/kmsg itself (user facility)."""
    require(os.access("/dev/kmsg", os.R_OK | os.W_OK),
            "cannot read and write /dev/kmsg (needs root; a container may have none)")
    tag = uuid.uuid4().hex
    before, after = f"gunicorn-exporter test {tag} before open", f"gunicorn-exporter test {tag} after open"
    got = []
    reader = KmsgReader(got.append)
    with open("/dev/kmsg", "wb", buffering=0) as kmsg:
        kmsg.write(before.encode() + b"\n")
        try:
            reader.open()
        except OSError as e:
            assert e.errno in (errno.EPERM, errno.EACCES, errno.ENOENT), e
            require(False, f"/dev/kmsg cannot be read: {e} (kernel.dmesg_restrict without CAP_SYSLOG?)")
        try:
            kmsg.write(after.encode() + b"\n")
            poll(lambda: reader.read_available() >= 0 and any(r.message == after for r in got), 10,
                 message=f"the record written after open() was not read: {[r.message for r in got]}")
            assert not any(before in r.message for r in got), "a record older than open() was delivered"
            (mine,) = [r for r in got if r.message == after]
            assert mine.facility == 1, mine           # LOG_USER: what a write to /dev/kmsg is
        finally:
            reader.close()
