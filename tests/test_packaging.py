"""The wheel and the sdist, as a user installs them: `python -m build` (the wheel built from
the sdist, so the sdist is complete), `twine check --strict`, the wheel installed into a
fresh virtualenv (not editable, not from the tree) and the installed exporter scraped
beside a real gunicorn. The version is written once (exporter/__init__.py) and the wheel,
`--version`, debian/changelog and CHANGELOG.md agree with it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from exporter import __version__
from tests.cli import run_cli
from tests.harness.artifacts import ROOT, assert_sees, copy_tree
from tests.harness.procs import free_port, unique_name
from tests.harness.servers import running_server, url_ready


def test_one_version_everywhere():
    assert run_cli("--version").stdout.strip() == f"gunicorn-exporter {__version__}"
    debian = (ROOT / "debian" / "changelog").read_text().splitlines()[0]
    assert re.match(rf"prometheus-gunicorn-exporter \({re.escape(__version__)}(-\d+)?\) ", debian), debian
    assert re.search(rf"^## {re.escape(__version__)}\b", (ROOT / "CHANGELOG.md").read_text(), re.M)
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in pyproject["project"] and "version" in pyproject["project"]["dynamic"]
    assert pyproject["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "exporter.__version__"}


def _built(tmp_path: Path) -> tuple[Path, Path]:
    src = copy_tree(tmp_path / "src")
    out = tmp_path / "dist"
    build = subprocess.run([sys.executable, "-m", "build", "--outdir", str(out), str(src)],
                           capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    # a setuptools deprecation (the license table, ...) is a build that stops working later
    assert "deprecat" not in (build.stdout + build.stderr).lower(), build.stdout + build.stderr
    (wheel,), (sdist,) = out.glob("*.whl"), out.glob("*.tar.gz")
    return wheel, sdist


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_wheel_installs_into_a_fresh_venv_and_scrapes(tmp_path, gunicorn_factory):
    wheel, sdist = _built(tmp_path)
    assert wheel.name == f"gunicorn_exporter-{__version__}-py3-none-any.whl"
    check = subprocess.run([sys.executable, "-m", "twine", "check", "--strict", str(wheel),
                            str(sdist)], capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stdout + check.stderr

    # every module of the package, and nothing but it, its metadata and its license
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {str(p.relative_to(ROOT)) for p in (ROOT / "exporter").rglob("*.py")}
    assert modules <= names, sorted(modules - names)
    assert {n.split("/")[0] for n in names} == {"exporter", f"gunicorn_exporter-{__version__}.dist-info"}
    assert f"gunicorn_exporter-{__version__}.dist-info/licenses/LICENSE" in names
    assert not [n for n in names if n.endswith(".py") and n not in modules], "stray files"

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    pip = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", str(wheel)], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=400)
    assert pip.returncode == 0, pip.stdout[-3000:] + pip.stderr[-3000:]
    where = subprocess.run([str(venv / "bin" / "python"), "-c",
                            "import exporter; print(exporter.__file__)"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=60, check=True).stdout
    assert where.startswith(str(venv)), f"imported from {where}, not the venv"
    script = venv / "bin" / "gunicorn-exporter"
    version = subprocess.run([str(script), "--version"], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=60)
    assert version.stdout.strip() == f"gunicorn-exporter {__version__}", version

    g = gunicorn_factory(workers=2, name=unique_name("wheel"))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with running_server([str(script), "--web.listen-address", f"127.0.0.1:{port}",
                         "--no-collector.statsd", "--no-collector.postgres"],
                        tmp_path / "exporter.log", lambda: url_ready(base + "/-/healthy"),
                        "the installed exporter"):
        assert_sees(base, g, __version__)
