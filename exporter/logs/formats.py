"""Access log formats compiled to one regular expression each, so that no field a client
writes can move the fields the exporter reads (docs/security.md, "Log lines").

A format is gunicorn's `access_log_format` (`%(x)s` atoms), an nginx `log_format`
(`$variable`), or a preset (PRESETS). Every atom is one of:

* **typed**: written by the server, never by a client (the status, a duration, a byte
  count, the time in brackets, the client address, gunicorn's request line `%(r)s`, which
  gunicorn only logs once it has split it in three at its spaces and checked the
  protocol): a bounded character class that holds no space or quote (except the time's
  and the request line's known shapes);
* **free**: a client may write it (the path, the User-Agent, the referer, the basic-auth
  user, any header). It ends at the first place where the rest of the format matches the
  rest of the line: a lookahead tried only at the character that starts the next literal
  text, so a quote a client sent (gunicorn writes `\\"`, uvicorn writes it raw) or a
  value ending in a backslash cannot end the field early, and matching stays linear.

nginx escapes `"` in every variable (`\\x22`), so its quoted fields are `[^"]*+`.

A format is refused (`ValueError`, one readable message) when a client could still shift
a field the exporter uses: a used field (status, duration, request start, upstream)
between a free field and a later free field, unless a quote the client cannot write lies
between the first free field and it. Two atoms with nothing between them are refused.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_FORMATS = 16
MAX_FORMAT_LEN = 1024
MAX_FREE = 8                 # free fields per format: the regex grows with each
MAX_LINE = 16 * 1024

GUNICORN_DEFAULT = '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s"'
NGINX_COMBINED = ('$remote_addr - $remote_user [$time_local] "$request" $status '
                  '$body_bytes_sent "$http_referer" "$http_user_agent"')
PRESETS = {
    "gunicorn": GUNICORN_DEFAULT,
    # gunicorn's default plus its request time (microseconds) and the proxy's
    # X-Request-Start header: requests, latency and queue time (docs/requests.md)
    "gunicorn-timed": GUNICORN_DEFAULT + ' "%({x-request-start}i)s" %(D)s',
    "combined": NGINX_COMBINED,
    "nginx": NGINX_COMBINED + " $request_time $upstream_response_time",
    # nginx plus the upstream that answered: requests of every app behind one nginx
    "nginx-upstream": NGINX_COMBINED + ' $request_time $upstream_response_time "$upstream_addr"',
    # what uvicorn's worker writes to gunicorn's access log (it ignores access_log_format)
    "uvicorn": "%(h)s - \"%(U)s\" %(s)s",
}
DEFAULT_FORMATS = ("nginx-upstream", "nginx", "gunicorn-timed", "gunicorn", "uvicorn")

_GUNICORN_ATOM = re.compile(r"%\(([A-Za-z]|\{[^}]{1,64}\}[ioe])\)s")
_NGINX_ATOM = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)")
_NUMBER = r"\d{1,12}(?:\.\d{1,9})?"
_LIST = rf"(?:{_NUMBER}(?:(?:, | : ){_NUMBER}){{0,15}}|-)"
_ADDR = r'[^\s"]{0,256}'
_COUNT = r"\d{1,20}|-"
_PROTO = r"HTTP/\d(?:\.\d)?"

# seconds per unit of each duration atom, by preference
GUNICORN_DURATIONS = {"D": 1e-6, "L": 1.0, "M": 1e-3, "T": 1.0}
NGINX_DURATIONS = {"request_time": 1.0, "upstream_response_time": 1.0}

_GUNICORN_TYPED = {
    "h": _ADDR, "l": "-", "t": r"\[[^\]\n]{1,64}\]", "s": r"\d{3}", "b": _COUNT, "B": _COUNT,
    "D": r"\d{1,20}", "T": r"\d{1,20}", "M": r"\d{1,20}", "L": r"\d{1,20}\.\d{1,9}",
    "p": r"<\d{1,10}>",
    # gunicorn logs a request only after splitting its line in three at the spaces and
    # checking the protocol: no space inside the method or the target
    "r": rf"[^\s\"]{{1,64}} [^\s]{{1,{MAX_LINE}}} {_PROTO}",
    # uvicorn's request line (preset uvicorn): path percent-encoded, query string raw
    "U": rf"[^\s\"]{{1,64}} [^\s]{{1,{MAX_LINE}}} {_PROTO}",
}
_NGINX_TYPED = {
    "status": r"\d{3}", "remote_addr": _ADDR, "binary_remote_addr": _ADDR,
    "body_bytes_sent": _COUNT, "bytes_sent": _COUNT, "request_length": _COUNT,
    "connection": _COUNT, "connection_requests": _COUNT, "pid": _COUNT,
    "request_time": _NUMBER + "|-", "msec": _NUMBER,
    "upstream_response_time": _LIST, "upstream_connect_time": _LIST,
    "upstream_header_time": _LIST, "upstream_status": r"[\d,: -]{1,128}",
    "time_local": r"[0-9A-Za-z/:+ -]{1,40}", "time_iso8601": r"[0-9A-Za-z:+.-]{1,40}",
}
# atoms whose value the exporter reads (a group in the regex)
_GROUPS = {"status": "status", "s": "status", "r": "request", "U": "request",
           "request": "request", "upstream_addr": "upstream",
           "{x-request-start}i": "start", "http_x_request_start": "start"}


@dataclass(frozen=True)
class AccessFormat:
    text: str
    regex: re.Pattern
    scale: float | None      # seconds per unit of the duration group; None: no duration
    has_start: bool          # the format logs X-Request-Start
    has_upstream: bool       # nginx's $upstream_addr
    dialect: str             # gunicorn, nginx, uvicorn

    def parse(self, line: str) -> tuple[str, float | None] | None:
        """(status, seconds or None) of a line in this format, or None."""
        m = self.regex.match(line)
        if m is None:
            return None
        seconds = None
        if self.scale is not None and m.group("dur") != "-":
            seconds = sum(map(float, m.group("dur").replace(" : ", ", ").split(", "))) * self.scale
        return m.group("status"), seconds


def _pieces(spec: str, nginx: bool) -> list[tuple[str, str]]:
    atom_re = _NGINX_ATOM if nginx else _GUNICORN_ATOM
    out: list[tuple[str, str]] = []
    pos = 0
    for m in atom_re.finditer(spec):
        if m.start() > pos:
            out.append(("lit", spec[pos:m.start()]))
        out.append(("atom", (m.group(1) or m.group(2)) if nginx else m.group(1)))
        pos = m.end()
    if pos < len(spec):
        out.append(("lit", spec[pos:]))
    return out


def compile_format(text: str) -> AccessFormat:
    """An AccessFormat from a preset name or a format string; ValueError when it has no
    status, two fields with nothing between them, is too long, or lets a client shift a
    field the exporter uses."""
    name = text.strip()
    spec = PRESETS.get(name, text)
    if not spec or len(spec) > MAX_FORMAT_LEN:
        raise ValueError(f"{text[:80]!r}: empty or longer than {MAX_FORMAT_LEN} characters")
    dialect = "uvicorn" if name == "uvicorn" else "gunicorn" if "%(" in spec else "nginx"
    nginx = dialect == "nginx"
    pieces = _pieces(spec, nginx)
    names = [v for k, v in pieces if k == "atom"]
    status = "status" if nginx else "s"
    if names.count(status) != 1:
        raise ValueError(f"{text[:80]!r}: needs exactly one status field "
                         f"({'$status' if nginx else '%(s)s'})")
    for a, b in zip(pieces, pieces[1:]):
        if a[0] == b[0] == "atom":
            raise ValueError(f"{text[:80]!r}: two fields with nothing between them")
    durations = NGINX_DURATIONS if nginx else GUNICORN_DURATIONS
    dur = next((d for d in durations if d in names), None)
    typed = _NGINX_TYPED if nginx else _GUNICORN_TYPED
    free = [i for i, (k, v) in enumerate(pieces) if k == "atom" and v not in typed]
    if len(free) > MAX_FREE:
        raise ValueError(f"{text[:80]!r}: more than {MAX_FREE} fields a client can write")
    used = {i for i, (k, v) in enumerate(pieces)
            if k == "atom" and (v == dur or v in _GROUPS and _GROUPS[v] != "request")}
    _check_unambiguous(text, pieces, free, used, nginx)

    # Build from the end: plain[i] matches pieces[i:] to the end of the line (no groups,
    # for lookaheads); main[i] the same with the groups the exporter reads.
    n = len(pieces)
    plain, main = [r"\Z"] * (n + 1), [r"\Z"] * (n + 1)
    seen: set[str] = set()
    for i in range(n - 1, -1, -1):
        kind, value = pieces[i]
        if kind == "lit":
            lit = re.escape(value)
            plain[i], main[i] = lit + plain[i + 1], lit + main[i + 1]
            continue
        nxt = pieces[i + 1][1] if i + 1 < n else None
        body = _atom(value, typed, nxt, plain[i + 1], nginx, quoted=i > 0 and
                     pieces[i - 1][1].endswith('"') and bool(nxt) and nxt.startswith('"'))
        if value == dur:
            body = _LIST if value == "upstream_response_time" else (
                _NUMBER + "|-" if nginx else typed[value] + "|-")
            group = "dur"
        else:
            group = _GROUPS.get(value)
        plain[i] = f"(?:{body})" + plain[i + 1]
        if group and group not in seen:
            seen.add(group)
            main[i] = f"(?P<{group}>{body})" + main[i + 1]
        else:
            main[i] = f"(?:{body})" + main[i + 1]
    return AccessFormat(spec, re.compile(main[0]), durations[dur] if dur else None,
                        "start" in seen, "upstream" in seen, dialect)


def _atom(value: str, typed: dict, nxt: str | None, rest: str, nginx: bool, quoted: bool) -> str:
    if value in typed:
        return typed[value]
    if nxt is None:
        return r"[^\n]*+"
    c = re.escape(nxt[0])
    if nginx and quoted:
        return f"[^{c}\\n]*+"                  # nginx writes a quote inside as \x22
    # ends at the first c where the rest of the format matches the rest of the line
    return f"(?:[^{c}\\n]++|(?!{rest}){c})*+"


def _check_unambiguous(text, pieces, free, used, nginx) -> None:
    """No used field between two free ones, unless the client cannot get past a quote:
    after an unquoted free field, a quote of the format's literal text (nginx writes a
    client's quote as \\x22, gunicorn as \\", so a quote after anything but a backslash)
    must come before the used field. After a quoted gunicorn field the quote that closes
    it may be the one the client's text ends at, so nothing is read before the next free
    field. nginx's quoted fields cannot hold a quote at all."""
    for a, b in zip(free, free[1:]):
        between = [i for i in used if a < i < b]
        if not between:
            continue
        after = pieces[a + 1][1]
        quoted = after.startswith('"') and a > 0 and pieces[a - 1][1].endswith('"')
        if nginx and quoted:
            continue
        barrier = not quoted and any(
            kind == "lit" and any(value[j] == '"' and (nginx or j == 0 and i > a + 1 or
                                                       j > 0 and value[j - 1] != "\\")
                                  for j in range(len(value)))
            for i, (kind, value) in enumerate(pieces[a + 1:min(between)], a + 1))
        if not barrier:
            atom = "$" + pieces[a][1] if nginx else f"%({pieces[a][1]})s"
            raise ValueError(f"{text[:80]!r}: a client writes {atom} and could shift the "
                             f"fields read after it; put those fields before it or after "
                             f"the last field a client writes")
