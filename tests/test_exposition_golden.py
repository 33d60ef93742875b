"""/metrics for tests.test_docs.full_snapshot(), byte for byte: tests/golden/exposition.txt.

The snapshot is rendered exactly as /metrics renders it (exporter.metrics.render, then the
encoder prometheus_client's choose_encoder picks for a plain Accept header, over
exporter.http's _Families), without the exporter's own process_* metrics (this test
process's CPU and memory) and with the one host-dependent value pinned: the
python_version label of gunicorn_exporter_build_info. A third test proves that the
real /metrics handler serves these bytes for the same snapshot, followed only by
process_* and the HTTP layer's own families.

Any change of a name, help text, type, label, value format or order (a renamed metric,
a prometheus_client upgrade that writes floats differently) shows up as a diff. When the
change is intended, regenerate the file and commit it:

    GUNICORN_EXPORTER_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/test_exposition_golden.py

That run rewrites the file and still fails, so an update is always a conscious commit.
"""

from __future__ import annotations

import asyncio
import difflib
import os
import platform
import re
from pathlib import Path

from prometheus_client import exposition

from exporter.config import Config
from exporter.http import Exporter
from exporter.metrics.encode import _Families
from exporter.metrics import render
from tests.exposition import parse_strict, value
from tests.test_docs import full_snapshot

GOLDEN = Path(__file__).resolve().parent / "golden" / "exposition.txt"
UPDATE_ENV = "GUNICORN_EXPORTER_UPDATE_GOLDEN"
PINNED_PYTHON = "PINNED"
REGENERATE = f"{UPDATE_ENV}=1 .venv/bin/python -m pytest tests/test_exposition_golden.py"


def _pin_build_info(families):
    """gunicorn_exporter_build_info's python_version label -> PINNED (exactly one sample)."""
    pinned = 0
    for f in families:
        if f.name != "gunicorn_exporter_build":
            continue
        for i, s in enumerate(f.samples):
            if "python_version" in s.labels:
                f.samples[i] = s._replace(labels={**s.labels, "python_version": PINNED_PYTHON})
                pinned += 1
    assert pinned == 1, ("gunicorn_exporter_build_info{python_version} changed shape: "
                         "pin its host-dependent labels in this test")
    return families


def render_golden() -> str:
    """What /metrics serves for full_snapshot() (text format), process_* left out."""
    families = _pin_build_info(list(render(full_snapshot())))
    encoder, content_type = exposition.choose_encoder("")
    assert content_type.startswith("text/plain; version=0.0.4"), content_type
    return encoder(_Families(families)).decode("utf-8")


def _without_process_families(text: str) -> str:
    return "".join(line for line in text.splitlines(keepends=True)
                   if not re.match(r"(# (HELP|TYPE) )?process_", line))


def test_exposition_is_the_golden_file():
    got = render_golden()
    want = GOLDEN.read_text(encoding="utf-8") if GOLDEN.exists() else ""
    if got == want:
        return
    if os.environ.get(UPDATE_ENV) == "1":
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text(got, encoding="utf-8")
        raise AssertionError(f"{GOLDEN} rewritten ({UPDATE_ENV}=1): review the diff and commit it; "
                             "the next run without the variable passes")
    diff = "".join(difflib.unified_diff(want.splitlines(keepends=True), got.splitlines(keepends=True),
                                        fromfile=f"{GOLDEN.name} (committed)",
                                        tofile="/metrics (rendered now)"))
    raise AssertionError(f"/metrics differs from {GOLDEN} (missing file: {not GOLDEN.exists()}).\n"
                         f"If the change is intended, regenerate and commit the file:\n    {REGENERATE}\n"
                         f"{diff}")


def test_golden_file_is_a_valid_exposition():
    text = GOLDEN.read_text(encoding="utf-8")
    series = parse_strict(text)
    # the file holds the snapshot's data, not just valid syntax (values of full_snapshot())
    assert value(series, "gunicorn_up", app="shop") == 1 and value(series, "gunicorn_up", app="old") == 0
    assert value(series, "gunicorn_workers_busy", app="shop") == 1
    assert value(series, "gunicorn_listener_queue_length", app="shop",
                 listener="unix:/run/shop.sock") == 3
    assert value(series, "gunicorn_exporter_build_info", version=_version(),
                 python_version=PINNED_PYTHON) == 1
    assert not any(name.startswith("process_") for name, _labels in series)
    # nothing of the host that wrote it: this interpreter's version appears nowhere
    assert f'"{platform.python_version()}"' not in text


def _version() -> str:
    from exporter import __version__
    return __version__


def test_the_metrics_handler_serves_the_golden_bytes():
    """The real /metrics handler, for a scraper that returns full_snapshot(), serves the
    golden bytes first, then only process_* and the HTTP layer's own
    gunicorn_exporter_* families (state of the web server, not of the snapshot)."""
    class _Scraper:
        collectors: list = []

        async def scrape(self, limit=None):
            return full_snapshot()

    exporter = Exporter(Config(), _Scraper())
    response = asyncio.run(exporter.metrics({}))
    assert response.status == 200 and \
        response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    body = response.body.decode("utf-8")
    assert re.search(r"^process_\w+ ", body, re.M), "the handler no longer serves process_* metrics"
    build = f'python_version="{platform.python_version()}"'
    assert body.count(build) == 1, body
    served = _without_process_families(body).replace(build, f'python_version="{PINNED_PYTHON}"')
    golden = render_golden()
    assert served.startswith(golden), "".join(difflib.unified_diff(
        golden.splitlines(keepends=True), served.splitlines(keepends=True), "render()", "/metrics"))
    extra = parse_strict(served[len(golden):])
    golden_names = {name for name, _labels in parse_strict(golden)}
    assert all(name.startswith("gunicorn_exporter_") and name not in golden_names
               for name, _labels in extra), sorted(extra)
