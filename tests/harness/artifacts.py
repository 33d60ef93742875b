"""What the artifact tests share (the wheel, the Debian package, the container image):
the repository's files as a clean copy, and the one check every installed exporter must
pass, whatever installed it: it is up, and it sees a real gunicorn the test started, with
the number of workers that gunicorn's own log says it booted."""

from __future__ import annotations

import subprocess
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from tests.harness.procs import poll

ROOT = Path(__file__).resolve().parent.parent.parent


def copy_tree(dest: Path) -> Path:
    """The repository's files (tracked and new, not ignored: no .venv, no build output)
    copied to `dest`, symlinks as symlinks (tests/fixtures holds /proc's)."""
    dest.mkdir(parents=True, exist_ok=True)
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT,
                           capture_output=True, check=True, timeout=60).stdout
    pack = subprocess.Popen(["tar", "--null", "-T", "-", "-cf", "-"], cwd=ROOT,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    unpack = subprocess.Popen(["tar", "-xf", "-", "-C", str(dest)], stdin=pack.stdout)
    pack.stdout.close()
    pack.communicate(files, timeout=120)
    assert unpack.wait(120) == 0 and pack.returncode == 0
    return dest


def scrape(base: str) -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(base + "/metrics", timeout=10) as r:
        text = r.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def assert_sees(base: str, gunicorn, version: str) -> dict:
    """The exporter at `base` reports `gunicorn` (a tests.harness.masters.Gunicorn) up with
    as many workers as gunicorn's log says it booted, and says it is `version`."""
    booted = len(gunicorn.booted_pids())
    app = (("app", gunicorn.name),)

    def seen():
        got = scrape(base)
        return got if (got.get(("gunicorn_up", app)) == 1
                       and got.get(("gunicorn_workers", app)) == booted) else None
    got = poll(seen, 20, message=f"{base} does not report {gunicorn.name} with {booted} workers")
    builds = [dict(k[1]) for k in got if k[0] == "gunicorn_exporter_build_info"]
    assert [b["version"] for b in builds] == [version], builds
    return got
