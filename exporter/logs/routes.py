"""Routes: a bounded `route` label for requests counted from access logs.

`--requests.route NAME=REGEX` (repeatable) or `--requests.route-file PATH` (one
`NAME=REGEX` a line, `#` comments) names the paths of a route; the first route whose
regex matches the request's path wins, anything else is `other`. Without routes there is
no route label at all (the default: one series per app and status).

The regexes are compiled by RE2 (google-re2), which matches in time linear in the path
and refuses what cannot be matched so (backreferences, lookarounds); a regex is at most
MAX_REGEX characters and its compiled program at most MAX_MEM bytes. The path (the
request target without its query string) is cut to MAX_PATH characters before matching.
So a client's path costs at most MAX_PATH steps per route, whatever the regex.
google-re2 is imported only when routes are given: Debian bookworm packages none, and
its .deb runs without routes (`--requests.route` then stops the exporter with the
reason, exit 2).
"""

from __future__ import annotations

import re

MAX_ROUTES = 50              # --requests.max-routes default
MAX_REGEX = 256
MAX_PATH = 1024
MAX_MEM = 1 << 20            # bytes of RE2 program per route
OTHER = "other"
NAME_RE = re.compile(r"[A-Za-z0-9_:./{}-]{1,64}")


class RouteError(ValueError):
    pass


def _re2():
    try:
        import re2
    except ImportError:
        raise RouteError("routes need the google-re2 package (pip install google-re2; "
                         "Debian bookworm has none)") from None
    return re2


def _options(re2):
    o = re2.Options()
    o.max_mem = MAX_MEM
    o.log_errors = False
    return o


def parse_route(text) -> tuple[str, object]:
    """`NAME=REGEX` -> (name, compiled regex)."""
    name, sep, pattern = str(text).partition("=")
    name = name.strip()
    if not sep or not name:
        raise RouteError(f"{str(text)[:80]!r} is not NAME=REGEX")
    if not NAME_RE.fullmatch(name) or name == OTHER:
        raise RouteError(f"route name {name[:80]!r}: letters, digits and _:./{{}}- (at most 64), "
                         f"not {OTHER!r}")
    if not pattern or len(pattern) > MAX_REGEX:
        raise RouteError(f"route {name!r}: the regular expression is empty or longer than "
                         f"{MAX_REGEX} characters")
    re2 = _re2()
    try:
        regex = re2.compile(pattern, _options(re2))
    except re2.error as e:
        raise RouteError(f"route {name!r}: {pattern[:80]!r} is not a regular expression RE2 "
                         f"accepts (no backreferences or lookarounds): {e}") from None
    return name, regex


def path_of(request: str | None) -> str:
    """The path of a request line (`GET /a/b?c HTTP/1.1`) or a bare target, without its
    query string, cut to MAX_PATH characters."""
    if not request:
        return ""
    target = request
    if " " in request:
        parts = request.split(" ", 2)
        target = parts[1] if len(parts) > 1 else ""
    return target.partition("?")[0][:MAX_PATH]


class Routes:
    def __init__(self, routes: list[tuple[str, object]]):
        self.routes = routes
        self.names = tuple(dict.fromkeys(n for n, _ in routes)) + (OTHER,)

    def route(self, request: str | None) -> str:
        path = path_of(request)
        for name, regex in self.routes:
            if regex.search(path):
                return name
        return OTHER


def parse_routes(values, files=(), max_routes: int = MAX_ROUTES) -> Routes | None:
    """Routes from NAME=REGEX values and route files; None when there are none."""
    items = [str(v) for v in (values or ())]
    for path in files or ():
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read(1 << 20)
        except OSError as e:
            raise RouteError(f"route file {path}: {e.strerror or e}") from None
        items += [ln.strip() for ln in text.splitlines()
                  if ln.strip() and not ln.lstrip().startswith("#")]
    if not items:
        return None
    routes = [parse_route(v) for v in items]
    names = {n for n, _ in routes}
    if len(names) > max_routes:
        raise RouteError(f"{len(names)} route names: at most --requests.max-routes "
                         f"({max_routes}) (each one multiplies the request series)")
    return Routes(routes)
