"""Access log lines as requests: status and duration, per app, from the files the logs
collector follows (`--logs.file`), in the formats of `--logs.access-format`.

A format is gunicorn's `access_log_format` (`%(x)s` atoms) or an nginx `log_format`
(`$variable` atoms), or a preset name:

* `gunicorn`: gunicorn's default, `%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s"`
  (no duration: requests by status only);
* `combined`: nginx's `combined`;
* `nginx`: `combined` plus ` $request_time $upstream_response_time`.

Used fields: the status (`%(s)s`, `$status`) and one duration, the most precise the
format has: gunicorn `%(D)s` (microseconds), `%(L)s` (seconds, decimal), `%(M)s`
(milliseconds), `%(T)s` (whole seconds); nginx `$request_time`, else
`$upstream_response_time` (the sum of its comma / colon separated list). A `-` duration
counts the request without one.

Each format becomes one anchored regular expression whose every atom is a possessive
character class that cannot cross the literal text after it (`[^"]*+` before a quote),
so matching is linear in the line and never backtracks; two atoms with no text between
them are refused. Lines longer than MAX_LINE are not parsed (counted as unparsed when
they look like access log lines). A line is tried against the formats in the order
given, after a substring test on each format's longest literal text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from exporter.statsd.parse import status_label
from exporter.statsd.stats import RequestTable

MAX_LINE = 16 * 1024
MAX_FORMATS = 16
MAX_FORMAT_LEN = 1024

GUNICORN_DEFAULT = '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s"'
NGINX_COMBINED = ('$remote_addr - $remote_user [$time_local] "$request" $status '
                  '$body_bytes_sent "$http_referer" "$http_user_agent"')
PRESETS = {"gunicorn": GUNICORN_DEFAULT, "combined": NGINX_COMBINED,
           "nginx": NGINX_COMBINED + " $request_time $upstream_response_time"}
DEFAULT_FORMATS = ("nginx", "gunicorn")

_GUNICORN_ATOM = re.compile(r"%\(([A-Za-z]|\{[^}]{1,64}\}[ioe])\)s")
_NGINX_ATOM = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)")
# duration atoms by preference: name -> seconds per unit
_GUNICORN_DURATIONS = {"D": 1e-6, "L": 1.0, "M": 1e-3, "T": 1.0}
_NGINX_DURATIONS = {"request_time": 1.0, "upstream_response_time": 1.0}
_NUMBER = r"\d{1,12}(?:\.\d{1,9})?"
_LIST = rf"(?:{_NUMBER}(?:(?:, | : ){_NUMBER}){{0,15}}|-)"


@dataclass(frozen=True)
class AccessFormat:
    text: str
    regex: re.Pattern
    needle: str             # the longest literal text: a line without it cannot match
    scale: float | None     # seconds per unit of the duration field; None: no duration

    def parse(self, line: str) -> tuple[str, float | None] | None:
        """(status code, seconds or None) of a line in this format, or None."""
        if self.needle not in line:
            return None
        m = self.regex.fullmatch(line)
        if m is None:
            return None
        seconds = None
        if self.scale is not None:
            raw = m.group("dur")
            if raw != "-":
                seconds = sum(float(x) for x in re.split(r", | : ", raw)) * self.scale
        return m.group("status"), seconds


def compile_format(text: str) -> AccessFormat:
    """An AccessFormat from a preset name or a format string; ValueError when it has no
    status field, two fields without text between them, or is too long."""
    spec = PRESETS.get(text.strip(), text)
    if not spec or len(spec) > MAX_FORMAT_LEN:
        raise ValueError(f"{text[:80]!r}: empty or longer than {MAX_FORMAT_LEN} characters")
    nginx = "%(" not in spec
    atom_re, durations = (_NGINX_ATOM, _NGINX_DURATIONS) if nginx else \
        (_GUNICORN_ATOM, _GUNICORN_DURATIONS)
    pieces: list[tuple[str, str]] = []        # ('lit', text) | ('atom', name)
    pos = 0
    for m in atom_re.finditer(spec):
        if m.start() > pos:
            pieces.append(("lit", spec[pos:m.start()]))
        pieces.append(("atom", m.group(1) or (m.group(2) if nginx else m.group(1))))
        pos = m.end()
    if pos < len(spec):
        pieces.append(("lit", spec[pos:]))
    names = [p[1] for p in pieces if p[0] == "atom"]
    status = "status" if nginx else "s"
    if names.count(status) != 1:
        raise ValueError(f"{text[:80]!r}: needs exactly one status field "
                         f"({'$status' if nginx else '%(s)s'})")
    dur = next((d for d in durations if d in names), None)
    out, needle = [], ""
    for i, (kind, value) in enumerate(pieces):
        if kind == "lit":
            out.append(re.escape(value))
            needle = value if len(value) > len(needle) else needle
            continue
        nxt = pieces[i + 1] if i + 1 < len(pieces) else None
        if nxt is not None and nxt[0] == "atom":
            raise ValueError(f"{text[:80]!r}: two fields with nothing between them")
        if value == status:
            out.append(r"(?P<status>\d{3})")
        elif value == dur:
            out.append(rf"(?P<dur>{_LIST if value == 'upstream_response_time' else _NUMBER + '|-'})")
        elif value == "t" and not nginx:
            out.append(r"\[[^\]\n]*+\]")           # gunicorn's [time] has a space inside
        elif nxt is None:
            out.append(r"[^\n]*+")
        else:
            out.append(f"[^{re.escape(nxt[1][0])}\\n]*+")
    scale = durations[dur] if dur else None
    return AccessFormat(spec, re.compile("".join(out)), needle, scale)


# the formats used when --logs.access-format is not given, compiled once
DEFAULT_COMPILED = tuple(compile_format(f) for f in DEFAULT_FORMATS)


def parse_access_formats(values) -> tuple[AccessFormat, ...]:
    values = list(values or ())
    if len(values) > MAX_FORMATS:
        raise ValueError(f"at most {MAX_FORMATS} access log formats")
    return tuple(compile_format(str(v)) for v in values)


def looks_like_access(line: str) -> bool:
    """A line that holds an HTTP request line in quotes (`"GET / HTTP/1.1"`)."""
    return '"' in line and " HTTP/" in line


class AccessLog:
    """Requests counted from access log lines, per app (source `access_log`)."""

    def __init__(self, formats: tuple[AccessFormat, ...]):
        self.formats = formats
        self.table = RequestTable("access_log")
        self.files: dict[str, list[int]] = {}       # path -> [parsed, unparsed]

    def parse(self, line: str) -> tuple[str, float | None] | None | bool:
        """(status, seconds) | None (not an access log line) | False (looks like one,
        no format fits)."""
        if len(line) <= MAX_LINE:
            for f in self.formats:
                hit = f.parse(line)
                if hit is not None:
                    return hit
        return False if looks_like_access(line) else None

    def feed(self, line: str, app_of, path: str | None = None) -> bool | None:
        """Count one line; `app_of()` names its app (called only for a request).
        True: counted; False: unparsed; None: not an access log line."""
        hit = self.parse(line)
        if hit is None:
            return None
        counts = self.files.setdefault(path or "", [0, 0]) if len(self.files) < 4096 \
            else [0, 0]
        if hit is False:
            counts[1] += 1
            return False
        counts[0] += 1
        st = self.table.get(app_of())
        if st is None:
            self.table.dropped += 1
            return True
        status, seconds = hit
        st.status(status_label(status))
        if seconds is not None:
            st.observe(seconds)
        st.lines += 1
        return True
