"""Resolving paths as another process and user would (exporter/linux/pathwalk.py), on a
real directory tree made by the test, walked as this process with a pretend owner."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from exporter.linux.pathwalk import PathWalker, WalkError, fuse_mount_points
from exporter.linux.procfs import ProcFS, ProcStatus
from tests.conftest import require

USER = ProcStatus(uid=4242, gid=4242, groups=frozenset(), sig_caught=0, cpus_allowed=1)


@pytest.fixture
def walker():
    with PathWalker(ProcFS(), os.getpid(), USER) as w:
        yield w


@pytest.fixture
def tree():
    require(os.geteuid() == 0, "checking another user's rights needs files owned by others: root")
    tmp_path = Path(tempfile.mkdtemp(prefix="gx-walk-", dir="/tmp"))  # reachable by others
    tmp_path.chmod(0o755)
    (tmp_path / "pub").mkdir(mode=0o755)
    (tmp_path / "pub" / "conf.py").write_text("workers = 2\n")
    (tmp_path / "pub" / "conf.py").chmod(0o644)
    (tmp_path / "vault").mkdir(mode=0o700)
    (tmp_path / "vault" / "secret.py").write_text("proc_name = 'secret'\n")
    (tmp_path / "vault" / "secret.py").chmod(0o644)
    (tmp_path / "pub" / "private.py").write_text("x = 1\n")
    (tmp_path / "pub" / "private.py").chmod(0o600)
    yield tmp_path
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_reads_what_the_user_may_read(walker, tree):
    data, key = walker.read_regular(str(tree / "pub" / "conf.py"), 1024)
    assert data == b"workers = 2\n" and key[3] == len(data)
    assert walker.read_regular(str(tree / "pub" / "conf.py"), 1024, cached={key}) == (None, key)


@pytest.mark.parametrize("name", ["vault/secret.py", "pub/private.py"])
def test_refuses_what_the_user_may_not_read(walker, tree, name):
    with pytest.raises(PermissionError):
        walker.read_regular(str(tree / name), 1024)


def test_symlinks_are_followed_with_the_users_rights(walker, tree):
    (tree / "pub" / "link.py").symlink_to(tree / "vault" / "secret.py")
    (tree / "pub" / "rel.py").symlink_to("conf.py")
    with pytest.raises(PermissionError):
        walker.read_regular(str(tree / "pub" / "link.py"), 1024)
    assert walker.read_regular(str(tree / "pub" / "rel.py"), 1024)[0] == b"workers = 2\n"


def test_dotdot_never_climbs_above_the_root(walker, tree):
    deep = "/.." * 50 + str(tree / "pub" / "conf.py")
    assert walker.read_regular(deep, 1024)[0] == b"workers = 2\n"


def test_symlink_loops_and_non_regular_files_end_cleanly(walker, tree):
    (tree / "pub" / "a").symlink_to(tree / "pub" / "b")
    (tree / "pub" / "b").symlink_to(tree / "pub" / "a")
    with pytest.raises(WalkError):
        walker.read_regular(str(tree / "pub" / "a"), 1024)
    os.mkfifo(tree / "pub" / "fifo")
    (tree / "pub" / "fifo").chmod(0o666)
    with pytest.raises(WalkError):  # refused from an O_PATH fd: never opened for reading
        walker.read_regular(str(tree / "pub" / "fifo"), 1024)
    with pytest.raises(WalkError):
        walker.read_regular(str(tree / "pub"), 1024)
    with pytest.raises(WalkError):
        walker.read_regular(str(tree / "pub" / "conf.py"), 4)  # larger than the limit


def test_the_last_symlink_can_be_refused(walker, tree):
    (tree / "pub" / "link.py").symlink_to(tree / "pub" / "conf.py")
    fd = walker.resolve(str(tree / "pub" / "link.py"), follow_last=False)
    try:
        import stat
        assert stat.S_ISLNK(os.fstat(fd).st_mode)
    finally:
        os.close(fd)


def test_fuse_mount_points_from_mountinfo():
    text = (
        "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
        "40 22 0:40 / /home/u/mnt rw,nosuid - fuse.sshfs u@h: rw,user_id=1000\n"
        "41 22 0:41 / /srv/with\\040space rw - fuse /dev/fuse rw\n"
        "42 22 0:42 / /proc rw - proc proc rw\n"
        "garbage line\n")
    assert fuse_mount_points(text) == {"/home/u/mnt", "/srv/with space"}
