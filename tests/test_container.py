"""The container image, built from the Dockerfile as it stands and run.

The base is Debian bookworm with python3, made by `debootstrap` from Debian's mirror and
imported with `podman import` (the python:*-slim images come from a registry this host
does not reach); it is passed as the PYTHON_IMAGE build argument. `buildah bud` builds the
image (vfs storage in the test's own directory, chroot isolation). `podman run` needs
setrlimit, which this sandbox refuses, so the image runs the way a container runtime
would without it: its file system mounted read-only in a mount namespace of its own,
/proc mounted (the host's processes, as with --pid=host), the image's Entrypoint, Cmd,
Env and User from its config, in a chroot (as --network=host: the host's loopback).
The oracle: a real gunicorn started by the test, reported by the exporter in the image.

The debootstrapped base (about 90 s, 175 MB) is kept for a day as a tar file in
~/.cache/gunicorn-exporter (or $XDG_CACHE_HOME), made under a lock, written to a
temporary name and renamed when complete, older days' files removed.

Where the host's TLS is intercepted by a proxy whose CA only the host trusts, the build's
RUN steps see the host's CA bundle and a pip.conf naming it (bind mounts, not in the image).
"""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from exporter import __version__
from tests.conftest import require
from tests.harness.artifacts import ROOT, assert_sees
from tests.harness.procs import free_port, unique_name
from tests.harness.servers import running_server, url_ready

MIRROR = "http://deb.debian.org/debian"
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
# What runs the image's process: a private mount namespace (`unshare --mount`), the image
# read-only, /proc, /dev and a /tmp, then chroot as the image's user (the caller adds
# `env -i` and the image's Env).
RUN_IMAGE = r"""set -e
root=$1; mnt=$2; user=$3; shift 3
mount --bind "$root" "$mnt"
mount -o remount,bind,ro "$mnt"
mount -t proc proc "$mnt/proc"
mount --rbind /dev "$mnt/dev"
mount -t tmpfs tmpfs "$mnt/tmp"
exec /usr/sbin/chroot --userspec="$user" --groups="${user#*:}" "$mnt" "$@"
"""


def run(argv, timeout=600, **kw) -> subprocess.CompletedProcess:
    res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)
    assert res.returncode == 0, f"{argv[:4]}: {res.stdout[-3000:]}{res.stderr[-3000:]}"
    return res


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "gunicorn-exporter"


def bookworm_base() -> Path:
    """Today's debootstrapped bookworm with python3 and python3-venv, as a tar file."""
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    tar = cache / f"bookworm-python3-{datetime.date.today():%Y%m%d}.tar"
    with open(cache / "bookworm.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not tar.exists():
            rootfs = cache / "rootfs.tmp"
            shutil.rmtree(rootfs, ignore_errors=True)
            try:
                run(["debootstrap", "--variant=minbase", "--include=python3,python3-venv",
                     "bookworm", str(rootfs), MIRROR], timeout=900)
                for cached in ("var/cache/apt/archives", "var/lib/apt/lists"):
                    for f in (rootfs / cached).glob("*"):
                        if f.is_file():
                            f.unlink()
                run(["tar", "-C", str(rootfs), "--numeric-owner", "-cf", f"{tar}.tmp", "."])
                os.rename(f"{tar}.tmp", tar)
            finally:
                shutil.rmtree(rootfs, ignore_errors=True)
        for old in cache.glob("bookworm-python3-*.tar*"):
            if old != tar:
                old.unlink()
    return tar


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_image_builds_and_runs_as_its_user(tmp_path, gunicorn_factory):
    require(os.geteuid() == 0, "debootstrap, buildah and the chroot need root")
    for tool, package in [("debootstrap", "debootstrap"), ("buildah", "buildah"),
                          ("podman", "podman"), ("unshare", "util-linux")]:
        require(shutil.which(tool) is not None, f"{tool} not installed (Debian package "
                f"'{package}'; .ci/run installs it)")
    storage = tmp_path / "storage"
    runroot = tempfile.mkdtemp(prefix="gx-run-")        # podman: at most 50 characters
    s = ["--root", str(storage), "--runroot", runroot, "--storage-driver", "vfs"]
    try:
        run(["podman", *s, "import", str(bookworm_base()), "localhost/bookworm-python3:test"])
        pip_conf = tmp_path / "pip.conf"
        pip_conf.write_text(f"[global]\ncert = {CA_BUNDLE}\n")
        run(["buildah", *s, "bud", "--isolation", "chroot", "--format", "docker",
             "-v", f"{CA_BUNDLE}:{CA_BUNDLE}:ro", "-v", f"{pip_conf}:/etc/pip.conf:ro",
             "--build-arg", "PYTHON_IMAGE=localhost/bookworm-python3:test",
             "-t", "localhost/gunicorn-exporter:test", str(ROOT)], timeout=900)
        (image,) = json.loads(run(["podman", *s, "image", "inspect",
                                   "localhost/gunicorn-exporter:test"]).stdout)
        config = {**image["Config"], "Healthcheck": image["Healthcheck"]}
        _runs_as_its_user(tmp_path, config, run(
            ["podman", *s, "image", "mount", "localhost/gunicorn-exporter:test"]).stdout.strip(),
            gunicorn_factory)
    finally:
        shutil.rmtree(storage, ignore_errors=True)      # vfs: a full copy per layer
        shutil.rmtree(runroot, ignore_errors=True)


def _runs_as_its_user(tmp_path: Path, config: dict, root: str, gunicorn_factory) -> None:
    user = config["User"]
    assert user.split(":")[0] not in ("", "0", "root"), user
    script = tmp_path / "run-image.sh"
    script.write_text(RUN_IMAGE)
    mnt = tmp_path / "mnt"
    mnt.mkdir()

    def in_image(*argv: str) -> list[str]:
        return ["unshare", "--mount", "--propagation", "private", "sh", str(script), root,
                str(mnt), user, "/usr/bin/env", "-i", *config["Env"], *argv]
    assert run(in_image("id", "-u")).stdout.strip() == user.split(":")[0]
    version = run(in_image(*config["Entrypoint"], "--version")).stdout.strip()
    assert version == f"gunicorn-exporter {__version__}"

    g = gunicorn_factory(workers=2, name=unique_name("image"))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    # the image's command, its listen address moved off the shared port 10188
    cmd = [a.replace(":10188", f"127.0.0.1:{port}") for a in config["Cmd"]]
    assert cmd != config["Cmd"], config["Cmd"]
    with running_server(in_image(*config["Entrypoint"], *cmd, "--no-collector.statsd"),
                        tmp_path / "image.log", lambda: url_ready(base + "/-/healthy"),
                        "the image's exporter") as proc:
        status = Path(f"/proc/{proc.pid}/status").read_text()
        assert f"Uid:\t{user.split(':')[0]}\t" in status, status
        assert_sees(base, g, __version__)
        # the HEALTHCHECK, run in the image as Docker would
        health = config["Healthcheck"]["Test"]
        assert health[0] == "CMD", health
        run(in_image(*[a.replace(":10188/", f":{port}/") for a in health[1:]]))
