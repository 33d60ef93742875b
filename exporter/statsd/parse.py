"""statsd and dogstatsd lines, and what gunicorn's metric names mean: pure functions.

A datagram holds one or more lines separated by `\\n`:

    <name>:<value>[:<value>...]|<type>[|@<sample rate>][|#<tag>,<tag>...][|<extension>...]

type: `c` counter, `ms` timer, `h` histogram, `d` distribution, `g` gauge, `s` set.
Several values per line are dogstatsd's packed form (same type and rate). Extensions
after the type (`|c:<container id>`, `|T<timestamp>`, `|e:...`) are accepted and ignored.

gunicorn (gunicorn/instrument/statsd.py) sends, behind its optional `--statsd-prefix`:

    gunicorn.request.duration:<ms>|ms       one per request
    gunicorn.requests:1|c|@1.0              one per request (the sum of the next)
    gunicorn.request.status.<code>:1|c|@1.0 one per request
    gunicorn.log.<critical|error|warning|exception>:1|c|@1.0
    gunicorn.workers:<n>|g                  the master, now and then

`classify(name)` says which of these a name is; everything else is "ignored" (counted,
never an error: an app may send its own metrics to the same address).
"""

from __future__ import annotations

import math

MAX_LINE = 4096          # bytes; a longer line is malformed (gunicorn's are ~40)
MAX_VALUES = 64          # packed values per line
MAX_NAME = 512
MIN_RATE = 1e-6          # a smaller sample rate would make one line count as a million
MAX_VALUE = 1e12         # |value|: larger ones are malformed (sums stay finite)

COUNTER, TIMER, HISTOGRAM, DISTRIBUTION, GAUGE, SET = b"c", b"ms", b"h", b"d", b"g", b"s"
TYPES = frozenset((COUNTER, TIMER, HISTOGRAM, DISTRIBUTION, GAUGE, SET))
DURATION_TYPES = frozenset((TIMER, HISTOGRAM, DISTRIBUTION))

# What a name is to the exporter (classify()).
IGNORED, DURATION, STATUS, LOG = 0, 1, 2, 3

LEVELS = frozenset(("critical", "error", "warning", "exception"))

# Status codes kept as their own label value: the IANA registry plus nginx's 444/499 and
# the CDN/proxy 52x family; any other code is "other" (the label set stays bounded).
KNOWN_STATUS = frozenset(map(str, [
    100, 101, 102, 103,
    200, 201, 202, 203, 204, 205, 206, 207, 208, 226,
    300, 301, 302, 303, 304, 305, 307, 308,
    400, 401, 402, 403, 404, 405, 406, 407, 408, 409, 410, 411, 412, 413, 414, 415, 416,
    417, 418, 421, 422, 423, 424, 425, 426, 428, 429, 431, 444, 451, 499,
    500, 501, 502, 503, 504, 505, 506, 507, 508, 510, 511, 520, 521, 522, 523, 524,
]))
OTHER = "other"


def status_label(code) -> str:
    """A status code (text or bytes) as a bounded label value."""
    if isinstance(code, (bytes, bytearray)):
        code = code.decode("ascii", "replace")
    code = str(code)
    return code if code in KNOWN_STATUS else OTHER


def _number(raw: bytes) -> float | None:
    try:
        v = float(raw)
    except ValueError:
        return None
    return v if math.isfinite(v) and abs(v) <= MAX_VALUE else None


def parse_line(line: bytes) -> tuple[bytes, tuple[float, ...], bytes, float] | None:
    """(name, values, type, sample rate) of one line, or None when it is malformed.

    Malformed: longer than MAX_LINE; no `:` or `|`; an empty or over-long name; a value
    that is not a finite number (a gauge may carry a sign); an unknown type; a sample
    rate outside [MIN_RATE, 1]; a value above MAX_VALUE; more than MAX_VALUES values. Tags are not validated (free text)."""
    if len(line) > MAX_LINE:
        return None
    if line[-1:] == b"\r":
        line = line[:-1]
    fields = line.split(b"|")
    if len(fields) < 2:
        return None
    head = fields[0].split(b":")
    name = head[0]
    if len(head) < 2 or not name or len(name) > MAX_NAME or len(head) > MAX_VALUES + 1:
        return None
    mtype = fields[1]
    if mtype not in TYPES:
        return None
    if len(head) == 2:
        v = _number(head[1])
        if v is None:
            return None
        values: tuple[float, ...] = (v,)
    else:
        vs = [_number(x) for x in head[1:]]
        if None in vs:
            return None
        values = tuple(vs)  # type: ignore[arg-type]
    rate = 1.0
    for f in fields[2:]:
        if f[:1] == b"@":
            r = _number(f[1:])
            if r is None or not MIN_RATE <= r <= 1.0:
                return None
            rate = r
        elif not f:
            return None
        # '#tags', 'c:container', 'T<ts>', 'e:...': accepted, not used
    return name, values, mtype, rate


def classify(name: bytes) -> tuple[int, bytes, str]:
    """(kind, prefix, key) of a metric name: kind DURATION / STATUS (key: the status
    label) / LOG (key: the level) / IGNORED; prefix: what precedes `gunicorn.` (gunicorn's
    --statsd-prefix, with its trailing dot), b'' when there is none."""
    i = name.rfind(b"gunicorn.")
    if i < 0 or (i and name[i - 1:i] != b"."):
        return IGNORED, b"", ""
    prefix, rest = name[:i], name[i + 9:]
    if rest == b"request.duration":
        return DURATION, prefix, ""
    if rest.startswith(b"request.status."):
        code = rest[15:]
        if len(code) == 3 and code.isdigit():
            return STATUS, prefix, status_label(code)
        return IGNORED, b"", ""
    if rest.startswith(b"log."):
        level = rest[4:].decode("ascii", "replace")
        if level in LEVELS:
            return LOG, prefix, level
    return IGNORED, b"", ""


def prefix_name(prefix: bytes) -> str:
    """A metric prefix as --statsd.prefix names it: without its trailing dots."""
    return prefix.rstrip(b".").decode("utf-8", "replace")


def parse_prefix_map(values) -> dict[str, str]:
    """`PREFIX=APP` or `PREFIX` (the app is then the prefix itself), repeatable; or a
    {prefix: app} table from the config file. Raises ValueError."""
    out: dict[str, str] = {}
    items: list[tuple[str, str]] = []
    for v in values or ():
        if isinstance(v, dict):
            items += [(str(k), str(a)) for k, a in v.items()]
            continue
        text = str(v).strip()
        prefix, sep, app = text.partition("=")
        items.append((prefix, app if sep else prefix))
    for prefix, app in items:
        prefix, app = prefix.strip().rstrip("."), app.strip()
        if not prefix or len(prefix) > 200 or any(c in prefix for c in ":|\n "):
            raise ValueError(f"{prefix!r} is not a statsd prefix (PREFIX=APP)")
        if not app or len(app) > 128 or any(c.isspace() for c in app):
            raise ValueError(f"{app!r} is not an app name (PREFIX=APP)")
        if prefix in out and out[prefix] != app:
            raise ValueError(f"prefix {prefix!r} is mapped twice")
        out[prefix] = app
    return out
