"""Families to exposition bytes: OpenMetrics 1.0 or the Prometheus text format 0.0.4.

Byte for byte what prometheus_client's two encoders write (tests/test_encode.py compares
them on the golden snapshot, on the process_* families and on random label values and
floats), at about a seventh of the cost: the library checks every metric and label name
character by character in Python for every sample (about 7 µs a series; 5.7 ms of a
64-worker scrape, against 0.8 ms here, see docs/performance.md). Here a name is checked
once per process with a regular expression, and a label value is escaped only when it
holds one of the three characters that need it.

Anything this fast path does not write (a name outside [a-zA-Z_][a-zA-Z0-9_]*,
exemplars, timestamps, native histograms, an `escaping=dots|values` scrape: the exporter
makes none of them, Prometheus asks for none by default) goes to the library's encoder
for the whole answer, so the output stays the library's in every case.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable

from prometheus_client import exposition
from prometheus_client.core import Metric

# No ':' (legal in a metric name): prometheus_client's OpenMetrics encoder rewrites it in
# sample names; the exporter makes none, and such a name goes to the library.
_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")
_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")
# Names already checked (metric, sample and label names of our own families: a few hundred)
_valid_names: set[str] = set()
_VALID_CACHE_MAX = 10_000

# Samples the text format moves into a gauge family of their own after the family.
_TEXT_OWN_FAMILY = ("_created", "_gsum", "_gcount")
_TEXT_TYPE = {"info": "gauge", "stateset": "gauge", "gaugehistogram": "histogram",
              "unknown": "untyped"}


class _Unsupported(Exception):
    """A family the fast path does not write: the library encodes the answer."""


def choose(accept: str) -> tuple[Callable[[Iterable[Metric]], bytes], str]:
    """The encoder and content type for a request's Accept header, as the library
    chooses them (OpenMetrics when asked for, else the text format)."""
    library, content_type = exposition.choose_encoder(accept)
    openmetrics = content_type.startswith("application/openmetrics-text")
    # names are written as they are: right for the default escaping (underscores) and
    # allow-utf-8, whose escaping leaves legacy names alone; `dots` and `values` rewrite
    # even those (Prometheus 3's metric_name_escaping_scheme): the library's job
    escaping = content_type.partition("escaping=")[2].split(";")[0].strip()
    plain = escaping in ("", "underscores", "allow-utf-8")

    def encoder(families: Iterable[Metric]) -> bytes:
        families = list(families)
        if not plain:
            return library(_Families(families))
        try:
            return encode(families, openmetrics)
        except _Unsupported:
            return library(_Families(families))
    return encoder, content_type


class _Families:
    """The minimal registry interface prometheus_client's encoders need."""

    def __init__(self, families: list[Metric]):
        self._families = families

    def collect(self):
        return iter(self._families)


def encode(families: Iterable[Metric], openmetrics: bool) -> bytes:
    """The exposition of `families`; raises _Unsupported for what only the library writes."""
    out: list[str] = []
    for family in families:
        (_openmetrics_family if openmetrics else _text_family)(family, out)
    if openmetrics:
        out.append("# EOF\n")
    return "".join(out).encode("utf-8")


def _openmetrics_family(f: Metric, out: list[str]) -> None:
    name = _name(f.name)
    out.append(f"# HELP {name} {_escape(f.documentation)}\n# TYPE {name} {f.type}\n")
    if f.unit:
        out.append(f"# UNIT {name} {f.unit}\n")
    for s in f.samples:
        _plain(s)
        out.append(f"{_name(s.name)}{_labels(s.labels)} {_float(s.value)}\n")


def _text_family(f: Metric, out: list[str]) -> None:
    name, mtype = f.name, f.type
    if mtype == "counter":
        name += "_total"
    elif mtype == "info":
        name += "_info"
    mtype = _TEXT_TYPE.get(mtype, mtype)
    name = _name(name)
    doc = f.documentation.replace("\\", r"\\").replace("\n", r"\n")
    out.append(f"# HELP {name} {doc}\n# TYPE {name} {mtype}\n")
    moved: dict[str, list[str]] = {}
    for s in f.samples:
        _plain(s)
        line = f"{_name(s.name)}{_labels(s.labels)} {_float(s.value)}\n"
        suffix = s.name[len(f.name):] if s.name.startswith(f.name) else ""
        if suffix in _TEXT_OWN_FAMILY:
            moved.setdefault(suffix, []).append(line)
        else:
            out.append(line)
    for suffix, lines in sorted(moved.items()):
        own = _name(f.name + suffix)
        out.append(f"# HELP {own} {doc}\n# TYPE {own} gauge\n")
        out.extend(lines)


def _plain(sample) -> None:
    if (sample.value is None or sample.timestamp is not None or sample.exemplar
            or getattr(sample, "native_histogram", None)):
        raise _Unsupported


def _name(name: str) -> str:
    if name not in _valid_names:
        if not _NAME.match(name):
            raise _Unsupported
        if len(_valid_names) >= _VALID_CACHE_MAX:
            _valid_names.clear()
        _valid_names.add(name)
    return name


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    names = tuple(labels)
    order = _orders.get(names)
    if order is None:
        order = _order(names)
    parts = []
    for k in order:
        v = labels[k]
        if "\\" in v or "\n" in v or '"' in v:
            v = _escape(v)
        parts.append(f'{k}="{v}"')
    return "{" + ",".join(parts) + "}"


# label names in the order a sample's dict holds them -> checked and sorted (a family's
# samples share one order: a few dozen entries)
_orders: dict[tuple[str, ...], tuple[str, ...]] = {}


def _order(names: tuple[str, ...]) -> tuple[str, ...]:
    if not all(_LABEL.match(k) for k in names):
        raise _Unsupported
    if len(_orders) >= _VALID_CACHE_MAX:
        _orders.clear()
    order = _orders[names] = tuple(sorted(names))
    return order


def _escape(text: str) -> str:
    return text.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _float(value) -> str:
    """prometheus_client's floatToGoString: Go's float formatting, as Prometheus writes it."""
    d = float(value)
    s = repr(d)
    if s[-1] in "0123456789":       # finite ("1.0", "1e-05", "1.5e+16")
        dot = s.find(".")
        if d > 0 and dot > 6:       # Go switches to exponents sooner than Python
            mantissa = f"{s[0]}.{s[1:dot]}{s[dot + 1:]}".rstrip("0.")
            return f"{mantissa}e+{dot - 1:02d}"
        return s
    if math.isnan(d):
        return "NaN"
    return "+Inf" if d > 0 else "-Inf"
