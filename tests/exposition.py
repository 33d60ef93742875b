"""A strict parser of the Prometheus text format (0.0.4) for tests: every scrape a test
reads goes through `parse_strict`, which fails on anything Prometheus would reject or
silently mangle. It shares no code with the exporter or prometheus_client.

Checked: every line parses; `# TYPE` at most once per family and before its samples;
every sample belongs to the family declared last; label names are valid and unique in a
sample; label values are correctly escaped; values are floats (NaN/+Inf/-Inf allowed);
and no series (name plus label set) appears twice.
"""

from __future__ import annotations

import math
import re
import urllib.request

NAME_RE = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
LABEL_RE = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
TYPES = {"counter", "gauge", "histogram", "summary", "untyped", "info", "stateset"}
SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"),
            "summary": ("_sum", "_count", "_created"), "gauge": (), "untyped": (),
            "info": ("_info",), "stateset": ()}

Series = tuple[str, tuple[tuple[str, str], ...]]


class ExpositionError(AssertionError):
    pass


def _labels(text: str, i: int, line_no: int) -> tuple[dict[str, str], int]:
    """Parse `{a="b",...}` starting at text[i] == '{'; returns (labels, index after '}')."""
    labels: dict[str, str] = {}
    i += 1
    while True:
        if i < len(text) and text[i] == "}":
            return labels, i + 1
        m = LABEL_RE.match(text, i)
        if not m:
            raise ExpositionError(f"line {line_no}: bad label name at {text[i:i + 20]!r}")
        name = m.group(0)
        i = m.end()
        if text[i:i + 2] != '="':
            raise ExpositionError(f"line {line_no}: expected =\" after label {name}")
        i += 2
        value = []
        while True:
            if i >= len(text):
                raise ExpositionError(f"line {line_no}: unterminated label value")
            c = text[i]
            if c == "\\":
                nxt = text[i + 1:i + 2]
                if nxt not in ("\\", '"', "n"):
                    raise ExpositionError(f"line {line_no}: bad escape \\{nxt}")
                value.append("\n" if nxt == "n" else nxt)
                i += 2
            elif c == '"':
                i += 1
                break
            elif c == "\n":
                raise ExpositionError(f"line {line_no}: newline in label value")
            else:
                value.append(c)
                i += 1
        if name in labels:
            raise ExpositionError(f"line {line_no}: label {name} twice")
        labels[name] = "".join(value)
        if text[i:i + 1] == ",":
            i += 1
        elif text[i:i + 1] != "}":
            raise ExpositionError(f"line {line_no}: expected , or }} after label {name}")


def _value(text: str, line_no: int) -> float:
    if text in ("NaN", "+Inf", "-Inf", "Inf"):
        return {"NaN": math.nan, "+Inf": math.inf, "Inf": math.inf, "-Inf": -math.inf}[text]
    try:
        return float(text)
    except ValueError:
        raise ExpositionError(f"line {line_no}: {text[:40]!r} is not a value") from None


def parse_strict(text: str) -> dict[Series, float]:
    """{(name, sorted label pairs): value} of a whole exposition; ExpositionError if bad."""
    out: dict[Series, float] = {}
    typed: dict[str, str] = {}
    family: str | None = None
    ftype = "untyped"
    if text and not text.endswith("\n"):
        raise ExpositionError("exposition does not end with a newline")
    for line_no, line in enumerate(text.split("\n")[:-1] if text else [], 1):
        if not line:
            continue
        if line.startswith("#"):
            parts = line.split(" ", 3)
            if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                if not NAME_RE.fullmatch(parts[2]):
                    raise ExpositionError(f"line {line_no}: bad metric name {parts[2]!r}")
                if parts[1] == "TYPE":
                    kind = parts[3] if len(parts) > 3 else ""
                    if kind not in TYPES:
                        raise ExpositionError(f"line {line_no}: unknown type {kind!r}")
                    if parts[2] in typed:
                        raise ExpositionError(f"line {line_no}: TYPE of {parts[2]} twice")
                    typed[parts[2]] = kind
                    family, ftype = parts[2], kind
            continue
        m = NAME_RE.match(line)
        if not m:
            raise ExpositionError(f"line {line_no}: no metric name: {line[:60]!r}")
        name = m.group(0)
        i = m.end()
        labels: dict[str, str] = {}
        if line[i:i + 1] == "{":
            labels, i = _labels(line, i, line_no)
        rest = line[i:].split()
        if not 1 <= len(rest) <= 2 or line[i:i + 1] != " ":
            raise ExpositionError(f"line {line_no}: expected ' value [timestamp]': {line[:80]!r}")
        value = _value(rest[0], line_no)
        if family is None or not (name == family or any(name == family + s for s in SUFFIXES[ftype])):
            raise ExpositionError(f"line {line_no}: sample {name} outside its family ({family})")
        key = (name, tuple(sorted(labels.items())))
        if key in out:
            raise ExpositionError(f"line {line_no}: series {name}{dict(labels)} appears twice")
        out[key] = value
    return out


def scrape(base: str, path: str = "/metrics", timeout: float = 10.0) -> dict[Series, float]:
    """GET base+path, check the status and parse the body strictly."""
    with urllib.request.urlopen(base + path, timeout=timeout) as r:
        if r.status != 200:
            raise ExpositionError(f"status {r.status}")
        return parse_strict(r.read().decode("utf-8"))


def value(series: dict[Series, float], name: str, **labels: str) -> float | None:
    """The value of one series, or None."""
    return series.get((name, tuple(sorted(labels.items()))))


def select(series: dict[Series, float], name: str, **labels: str) -> dict[tuple, float]:
    """All series of `name` whose labels include `labels`: {label pairs: value}."""
    want = set(labels.items())
    return {lbl: v for (n, lbl), v in series.items() if n == name and want <= set(lbl)}
