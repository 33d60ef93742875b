"""The promtool tests of alerts/tests/ as each --gunicorn.worker-series mode exposes
their input series, for `promtool test rules`:

    python -m generate.ruletests --worker-series none -o /tmp/none   # then
    cd /tmp/none && promtool test rules *.yml recorded/*.yml

The test files describe workers as the exporter's per-worker series do (`worker 0 holds
100 connections`). The rules read only the app-level series made from the same workers
(`gunicorn_workers_*`, exporter/metrics/workers.py), so for every app of a test this
adds them, computed at each sample as the exporter computes them (`derive`), unless the
test gives that family itself (the recorded faults hold the real exporter's). Mode
`all` keeps the per-worker series beside them, as `--gunicorn.worker-series=all` serves
both; mode `none` drops every series with a `worker` label. The rules must pass both:
tests/test_alerts.py runs them, and checks `derive` against the exporter's own renderer.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from pathlib import Path

import yaml

from generate.output import ALERTS_DIR

TESTS_DIR = ALERTS_DIR / "tests"
RULES = ALERTS_DIR / "gunicorn.rules.yml"
MODES = ("all", "none")
MISSING, STALE = "_", "stale"
APP_KEYS = ("job", "instance", "app")

_SERIES = re.compile(r"^\s*([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{(.*)\}\s*$")
_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*,?')


def parse_series(text: str) -> tuple[str, dict[str, str]]:
    """'name{a="1",b="2"}' -> ('name', {'a': '1', 'b': '2'})."""
    m = _SERIES.match(text)
    if not m:
        raise ValueError(f"not a series: {text!r}")
    labels, rest = {}, m.group(2)
    while rest.strip():
        lm = _LABEL.match(rest)
        if not lm:
            raise ValueError(f"bad labels in {text!r}")
        labels[lm.group(1)] = lm.group(2)
        rest = rest[lm.end():]
    return m.group(1), labels


def format_series(name: str, labels: dict[str, str]) -> str:
    return name + "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}"


def _number(text: str) -> float:
    return float(text.replace("Inf", "inf"))


def expand(values: str) -> list:
    """promtool's expanding notation as a list of floats, MISSING and STALE: 'a+bxn'
    (n + 1 samples), 'axn', '_xn' (n missing), '_', 'stale'."""
    out: list = []
    for token in str(values).split():
        if token in (MISSING, STALE):
            out.append(token)
            continue
        if token.startswith("_x"):
            out.extend([MISSING] * int(token[2:]))
            continue
        if "x" not in token:
            out.append(_number(token))
            continue
        base, n = token.rsplit("x", 1)
        start, step = base, "0"
        for i in range(1, len(base)):   # the sign that starts the step (not an exponent's)
            if base[i] in "+-" and base[i - 1] not in "eE":
                start, step = base[:i], base[i:]
                break
        a, b = _number(start), _number(step)
        out.extend(a + k * b for k in range(int(n) + 1))
    return out


def _fmt(v) -> str:
    if isinstance(v, str):
        return v
    if math.isinf(v):
        return "Inf" if v > 0 else "-Inf"
    return str(int(v)) if v == int(v) and abs(v) < 1e15 else repr(v)


def derive(series: list[tuple[str, dict[str, str], list]]) -> list[tuple[str, dict[str, str], list]]:
    """The app-level series the exporter makes from the per-worker ones (and the app's
    capacity), sample by sample. `series`: (name, labels, expanded values)."""
    apps: dict[tuple, dict] = {}
    for name, labels, values in series:
        key = _app_key(labels)
        app = apps.setdefault(key, {"workers": {}, "capacity": None, "n": 0})
        app["n"] = max(app["n"], len(values))
        if name == "gunicorn_worker_capacity" and "worker" not in labels:
            app["capacity"] = values
        elif name.startswith("gunicorn_worker_") and "worker" in labels:
            field = name[len("gunicorn_worker_"):]
            if field == "connections":
                field += "_" + labels.get("state", "")
            app["workers"].setdefault(labels["worker"], {})[field] = values
    out = []
    for key, app in apps.items():
        if not app["workers"]:
            continue
        base = dict(key)
        made: dict[tuple, list] = {}
        for i in range(app["n"]):
            cap = _at(app["capacity"], i)
            ws = [{f: _at(v, i) for f, v in fields.items()} for fields in app["workers"].values()]
            for (name, extra), value in _app_values(ws, cap).items():
                made.setdefault((name, extra), [None] * app["n"])[i] = value
        for (name, extra), values in made.items():
            out.append((name, {**base, **dict(extra)}, _with_gaps(values)))
    return out


def _app_key(labels: dict[str, str]) -> tuple:
    """The labels that name an app's series (target labels and `app`)."""
    return tuple((k, labels[k]) for k in APP_KEYS if k in labels)


def _at(values: list | None, i: int):
    """The sample i of a series: a float, or None (missing, stale, or after its end)."""
    if values is None or i >= len(values) or isinstance(values[i], str):
        return None
    return values[i]


def _app_values(ws: list[dict], capacity: float | None) -> dict[tuple, float]:
    """exporter/metrics/workers.py's render_app_workers for one sample: `ws` the workers'
    values by field (None: not known)."""
    out: dict[tuple, float] = {}

    def put(name, value, extra=()):
        if value is not None:
            out[(name, extra)] = value

    def known(field):
        return [w[field] for w in ws if w.get(field) is not None]

    counted = [w for w in ws if w.get("connections_active") is not None]
    requests = [w["connections_active"] + (w.get("connections_client_closed") or 0) for w in counted]
    if counted:
        put("gunicorn_workers_connections", sum(w["connections_active"] for w in counted),
            (("state", "active"),))
        put("gunicorn_workers_connections",
            sum(w.get("connections_client_closed") or 0 for w in counted),
            (("state", "client_closed"),))
        idle = [w["connections_idle"] for w in counted if w.get("connections_idle") is not None]
        if idle:
            put("gunicorn_workers_connections", sum(idle), (("state", "idle"),))
        put("gunicorn_workers_connections_max",
            max(r + (w.get("connections_idle") or 0) for r, w in zip(requests, counted)))
        if capacity is not None:
            put("gunicorn_workers_requests_waiting", sum(max(0.0, r - capacity) for r in requests))
    beats = known("heartbeat_age_seconds")
    if beats:
        put("gunicorn_workers_heartbeat_age_max_seconds", max(beats))
        need = capacity if capacity is not None else 1
        busy = [w["heartbeat_age_seconds"] for w, r in zip(counted, requests)
                if need and r >= need and w.get("heartbeat_age_seconds") is not None]
        put("gunicorn_workers_busy_heartbeat_age_seconds", sum(busy))
    peaks = known("heartbeat_age_max_seconds")
    if peaks:
        put("gunicorn_workers_heartbeat_age_peak_seconds", max(peaks))
    for field, total, largest in (
            ("resident_memory_bytes", "gunicorn_workers_resident_memory_bytes",
             "gunicorn_workers_resident_memory_max_bytes"),
            ("unique_memory_bytes", "gunicorn_workers_unique_memory_bytes", None),
            ("proportional_memory_bytes", "gunicorn_workers_proportional_memory_bytes", None),
            ("threads", "gunicorn_workers_threads", None),
            ("open_fds", None, "gunicorn_workers_open_fds_max"),
            ("db_connections", "gunicorn_workers_db_connections",
             "gunicorn_workers_db_connections_max")):
        values = known(field)
        if values and total:
            put(total, sum(values))
        if values and largest:
            put(largest, max(values))
    ratios = [w["open_fds"] / w["max_fds"] for w in ws
              if w.get("open_fds") is not None and w.get("max_fds")]
    if ratios:
        put("gunicorn_workers_open_fds_max_ratio", max(ratios))
    return out


def _with_gaps(values: list) -> list:
    """None -> STALE right after a value (the exporter stops serving the series: Prometheus
    marks it stale), else MISSING."""
    out, before = [], None
    for v in values:
        out.append(v if v is not None else (STALE if before is not None else MISSING))
        before = v
    return out


def for_mode(doc: dict, mode: str, rules: Path = RULES) -> dict:
    """A promtool test file (parsed) with its input series as `mode` exposes them."""
    if mode not in MODES:
        raise ValueError(f"mode {mode!r}: one of {MODES}")
    doc = dict(doc, rule_files=[str(rules)])
    tests = []
    for test in doc.get("tests", []):
        given = [(item, *parse_series(item["series"])) for item in test.get("input_series", [])]
        expanded = [(name, labels, expand(item["values"])) for item, name, labels in given]
        present = {(name, _app_key(labels)) for _, name, labels in given}
        inputs = [item for item, name, labels in given
                  if mode == "all" or "worker" not in labels]
        for name, labels, values in derive(expanded):
            if (name, _app_key(labels)) not in present:
                inputs.append({"series": format_series(name, labels),
                               "values": " ".join(map(_fmt, values))})
        tests.append(dict(test, input_series=inputs))
    doc["tests"] = tests
    return doc


def write(mode: str, out: Path, sources: Path = TESTS_DIR, rules: Path = RULES) -> list[Path]:
    """Every test file under `sources` (alerts/tests, recorded/ included) for `mode`,
    written under `out` in the same layout; the files written."""
    written = []
    for path in sorted(sources.rglob("*.yml")):
        target = out / path.relative_to(sources)
        target.parent.mkdir(parents=True, exist_ok=True)
        doc = for_mode(yaml.safe_load(path.read_text()), mode, rules)
        target.write_text(f"# {path.name} for --gunicorn.worker-series={mode}: written by "
                          "python -m generate.ruletests\n"
                          + yaml.safe_dump(doc, sort_keys=False, width=10_000))
        written.append(target)
    return written


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m generate.ruletests",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--worker-series", choices=MODES, required=True)
    p.add_argument("-o", "--output", type=Path, required=True, help="directory to write to")
    p.add_argument("--rules", type=Path, default=RULES, help="rule file the tests load")
    args = p.parse_args(argv)
    for path in write(args.worker_series, args.output, rules=args.rules.resolve()):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
