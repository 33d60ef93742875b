"""Caddy's JSON logs: access entries as requests, reverse_proxy errors as signatures.

Caddy 2 writes one JSON object per line (zap's encoder, `format json`, its default for
files). Two kinds of entry are read, told apart by their `logger`:

* **access** (`http.log.access`, `http.log.access.log0`, ...; a site's `log` directive):
  `status` and `duration` (seconds, Caddy's default `duration_format`; another format
  writes a string: the request counts without latency): one request, with latency,
  whatever the app's worker class. An `upstream` field, which Caddy 2.8 and later
  write with `log_append upstream {http.reverse_proxy.upstream.address}` (`unix//run/x.sock`,
  `tcp/127.0.0.1:8000`), names the gunicorn listener the request went to.
* **error** (`http.log.error...`, written by the default logger, or by a global `log`
  that includes `http.log.error`) from `reverse_proxy` (`err_trace`
  `reverseproxy.statusError ...`): Go's error in `msg` tells why the proxy answered
  502 or 504, and names the address it dialled or read from:

  | msg (measured on Caddy 2.6) | status | signature |
  |---|---|---|
  | `dial unix /run/x.sock: connect: no such file or directory` | 502 | `caddy_upstream_missing` |
  | `dial tcp 127.0.0.1:8000: connect: connection refused` (or `dial unix ...`) | 502 | `caddy_connect_refused` |
  | `dial unix /run/x.sock: connect: resource temporarily unavailable` | 502 | `caddy_upstream_eagain` |
  | `net/http: timeout awaiting response headers`, `read tcp A->B: i/o timeout`, `dial tcp B: i/o timeout` | 504 | `caddy_upstream_timeout` |

An access entry also yields the signatures an nginx access line does (`http_response`,
`http_502`, `http_504`), so the proxy alerts' error ratios read Caddy as they read nginx.

The structure is Caddy's: what a client sends (URI, headers) is inside JSON strings and
cannot add a field or change one; the line is decoded, never matched as text. A line is
untrusted all the same: longer than MAX_LINE it is not decoded; NaN and Infinity are
refused; nesting deeper than MAX_DEPTH (Caddy writes 4), a status outside 100-599 or a
duration outside 0-MAX_SECONDS make the line malformed. Each costs its own line only.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass

from exporter.logs.signatures import Signature

MAX_LINE = 32 * 1024
MAX_DEPTH = 8
MAX_SECONDS = 7 * 86400.0
MAX_MSG = 1024
MAX_ADDRESS = 256

_NEVER = re.compile(r"(?!)")       # decoded, never matched as text


def _sig(name: str, insight: str, description: str) -> Signature:
    return Signature(name, _NEVER, insight, "Caddy error log (JSON)", description, True,
                     "\0never")


SIGNATURES: tuple[Signature, ...] = (
    _sig("caddy_connect_refused", "W4", "reverse_proxy: nobody listens on the upstream socket or port (502)"),
    _sig("caddy_upstream_missing", "W4", "reverse_proxy: the upstream unix socket file is gone (502)"),
    _sig("caddy_upstream_eagain", "C1/C2", "reverse_proxy: the unix socket's accept queue is full (502)"),
    _sig("caddy_upstream_timeout", "C1", "reverse_proxy: the upstream did not answer within its timeouts (504)"),
)

_DIAL = re.compile(r"dial (tcp[46]?|unix) (\S{1,4096}): (?:connect: )?"
                   r"(connection refused|no such file or directory|"
                   r"resource temporarily unavailable|i/o timeout)")
_READ = re.compile(r"(?:read|write|readfrom) (tcp[46]?|unix) \S*->(\S{1,4096}): i/o timeout")
_DIAL_SIGNATURE = {"connection refused": "caddy_connect_refused",
                   "no such file or directory": "caddy_upstream_missing",
                   "resource temporarily unavailable": "caddy_upstream_eagain",
                   "i/o timeout": "caddy_upstream_timeout"}


@dataclass(frozen=True, slots=True)
class Entry:
    kind: str                      # 'access' | 'error'
    status: int | None             # HTTP status
    seconds: float | None = None   # access: Caddy's duration
    address: str | None = None     # the gunicorn listener named, as the app index has it
    signatures: tuple[str, ...] = ()
    uri: str | None = None         # access: the request's target (routes)


def _refuse(name: str):
    raise ValueError(f"{name} is not a number Caddy writes")


def _deeper(value, limit: int) -> bool:
    """Do dicts and lists nest deeper than `limit`? One level at a time, containers only
    (a quarter of a recursive walk's cost on Caddy's lines)."""
    level, depth = [value], 0
    while level:
        depth += 1
        if depth > limit:
            return True
        level = [x for v in level for x in (v.values() if type(v) is dict else v)
                 if type(x) is dict or type(x) is list]
    return False


def address(network: str, where: str) -> str | None:
    """A dialled address as the app index names listeners: 'unix:/run/x.sock',
    '127.0.0.1:8000', '[::1]:8000'."""
    if len(where) > MAX_ADDRESS:
        return None
    if network == "unix":
        return "unix:" + where if where.startswith("/") else None
    return where if ":" in where else None


def upstream_address(value) -> str | None:
    """Caddy's `{http.reverse_proxy.upstream.address}` ('unix//run/x.sock',
    'tcp/127.0.0.1:8000') or hostport ('127.0.0.1:8000') as the index names listeners."""
    if not isinstance(value, str) or not value or len(value) > MAX_ADDRESS:
        return None
    network, sep, rest = value.partition("/")
    if sep and network in ("unix", "tcp", "tcp4", "tcp6"):
        return address(network, rest)
    if value.startswith("unix:/"):
        return value
    return address("tcp", value)


def _status(value) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and 100 <= value <= 599:
        return value
    return None


def parse(line: str) -> Entry | None | bool:
    """A Caddy access or reverse_proxy error entry; None when the line is not a Caddy
    HTTP log entry (or an entry of no interest), False when it looks like one and is
    malformed or beyond the bounds."""
    if not line.startswith("{") or '"logger":"http.log.' not in line:
        return None
    if len(line) > MAX_LINE:
        return False
    try:
        obj = json.loads(line, parse_constant=_refuse)
    except (ValueError, RecursionError):
        return False
    if not isinstance(obj, dict) or _deeper(obj, MAX_DEPTH):
        return False
    logger = obj.get("logger")
    if not isinstance(logger, str):
        return False
    kind = logger.split(".", 3)[2] if logger.startswith("http.log.") else ""
    if kind not in ("access", "error"):
        return None
    status = _status(obj.get("status"))
    if kind == "access":
        return _access(obj, status)
    trace = obj.get("err_trace")
    msg = obj.get("msg")
    if not (isinstance(trace, str) and trace.startswith("reverseproxy.")
            and isinstance(msg, str)):
        return None
    return _error(msg[:MAX_MSG], status)


def _access(obj: dict, status: int | None) -> Entry | bool:
    if status is None:
        return False
    seconds = obj.get("duration")
    if isinstance(seconds, str) or seconds is None:
        seconds = None          # duration_format string (or none): the request, no latency
    elif isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or \
            not math.isfinite(seconds) or not 0 <= seconds <= MAX_SECONDS:
        return False
    names = ("http_response",) + ((f"http_{status}",) if status in (502, 504) else ())
    request = obj.get("request")
    uri = request.get("uri") if isinstance(request, dict) else None
    return Entry("access", status, None if seconds is None else float(seconds),
                 upstream_address(obj.get("upstream")), names,
                 uri if isinstance(uri, str) else None)


def _error(msg: str, status: int | None) -> Entry | None:
    m = _DIAL.fullmatch(msg)
    if m is not None:
        return Entry("error", status, address=address(m.group(1), m.group(2)),
                     signatures=(_DIAL_SIGNATURE[m.group(3)],))
    if status != 504:
        return None                 # another 502 (the app closed the connection, ...)
    m = _READ.fullmatch(msg)
    return Entry("error", status, address=address(m.group(1), m.group(2)) if m else None,
                 signatures=("caddy_upstream_timeout",))


class CaddyLog:
    """Counts Caddy lines: access entries into an AccessLog's proxy request table (routes
    and duration bounds as for nginx's lines) and its per-file counts, and returns every
    entry's (app, signature) events."""

    def __init__(self, access):
        self.access = access          # exporter.logs.access.AccessLog

    def feed(self, line: str, app_of, path: str | None = None) -> list[tuple[str, str]] | None:
        """None: not a Caddy line. Else the line's events; `app_of(address)` names the
        app of a listener address (None: the file's app)."""
        entry = parse(line)
        if entry is None:
            return None
        counts = self.access.counts(path)
        if entry is False:
            counts[1] += 1
            return []
        app = app_of(entry.address)
        if entry.kind == "access":
            counts[0] += 1
            # a proxy's record of the request, as nginx's: source proxy_log
            self.access.record(self.access.proxy, app, entry.status, entry.seconds,
                               entry.uri, counts)
        return [(app, name) for name in entry.signatures]
