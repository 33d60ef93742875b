"""Error signatures: which log lines mean what (docs/oom-and-logs.md lists them).

Every row of the "Error signatures" table of docs/failure-modes.md, gunicorn's worker
life-cycle lines, and the user's own `NAME=REGEX` signatures. Each built-in signature
has a kind that says which lines it may match, so that a client, who writes part of
access log lines and sometimes of application logs, cannot forge one (docs/security.md):

* `gunicorn`: only a line in gunicorn's own error log format,
  `[YYYY-MM-DD HH:MM:SS +ZZZZ] [PID] [LEVEL] message`, whose whole message is the one
  gunicorn writes (`WORKER TIMEOUT (pid:N)` and nothing else); attributed by PID, the
  process that wrote it, never by a pid in the message;
* `nginx`: only a line in nginx's error log format, `YYYY/MM/DD HH:MM:SS [level]
  PID#TID: *CID message`, whose message starts as nginx writes it; attributed by its
  `upstream: "..."` field when the line has exactly one (a client can add a second one in
  its URI or referer, never remove nginx's own);
* `access`: counted from the status of a parsed access log line (exporter/logs/access.py),
  never by searching the line's text;
* `text`: an application's or the kernel's free text, searched anywhere in a line that
  is not an access log line.

A line may match several signatures; each match counts once. User signatures are `text`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

NAME_RE = re.compile(r"[a-z_][a-z0-9_]{0,63}")
MAX_USER_SIGNATURES = 64

GUNICORN, NGINX, ACCESS, TEXT = "gunicorn", "nginx", "access", "text"


@dataclass(frozen=True)
class Signature:
    name: str
    regex: re.Pattern | None
    insight: str          # ID in the insights table ('' for user-defined signatures)
    where: str            # which log shows it
    description: str
    builtin: bool = True
    needle: str = ""      # a substring the line must contain (prefilter); '' = always try
    kind: str = TEXT


def _s(name, pattern, insight, where, description, needle, kind=TEXT):
    return Signature(name, re.compile(pattern) if pattern else None, insight, where,
                     description, True, needle, kind)


_PID = r"(?P<pid>\d{1,10})"
BUILTIN: tuple[Signature, ...] = (
    _s("worker_timeout", rf"WORKER TIMEOUT \(pid:{_PID}\)", "W5", "gunicorn error log",
       "the master killed a worker silent longer than --timeout", "WORKER TIMEOUT", GUNICORN),
    _s("worker_sigkill", rf"Worker \(pid:{_PID}\) was sent SIGKILL!(?: Perhaps out of memory\?)?", "C7",
       "gunicorn error log",
       "a worker died of SIGKILL (gunicorn adds 'Perhaps out of memory?'; also after a timeout escalation)",
       "SIGKILL", GUNICORN),
    _s("worker_signal", rf"Worker \(pid:{_PID}\) was sent (?!SIGKILL!)(?:SIG[A-Z0-9]{{1,12}}|signal \d{{1,3}})!",
       "", "gunicorn error log",
       "a worker died of another signal (SIGTERM on shutdown, SIGABRT after a timeout, SIGSEGV ...)",
       "was sent", GUNICORN),
    _s("worker_exit_code", rf"Worker \(pid:{_PID}\) exited with code \d{{1,3}}\.?", "", "gunicorn error log",
       "a worker exited with a non-zero code", "exited with code", GUNICORN),
    _s("worker_boot", rf"Booting worker with pid: {_PID}", "", "gunicorn error log",
       "the master forked a worker", "Booting worker", GUNICORN),
    _s("worker_exiting", rf"Worker exiting \(pid: {_PID}\)", "", "gunicorn error log",
       "a worker shut down cleanly", "Worker exiting", GUNICORN),
    _s("worker_boot_failed", r"Reason: (?:Worker failed to boot|App failed to load)\.", "",
       "gunicorn error log", "the master gives up: a worker could not load the app", "failed to",
       GUNICORN),
    _s("queuepool_exhausted", r"QueuePool limit of size \d+ overflow -?\d+ reached", "C4", "application log",
       "SQLAlchemy pool exhausted: a request waited pool_timeout for a connection", "QueuePool limit"),
    _s("nginx_connect_refused",
       r"connect\(\) (?:to \S+ )?failed \(111: Connection refused\) while connecting to upstream",
       "W4", "nginx error log", "nobody listens on the upstream socket or port", "(111:", NGINX),
    _s("nginx_upstream_missing",
       r"connect\(\) to unix:\S+ failed \(2: No such file or directory\) while connecting to upstream",
       "W4", "nginx error log", "the upstream unix socket file is gone (gunicorn stopped, or the wrong path)",
       "(2: No such file", NGINX),
    _s("postgres_too_many_clients", r"too many clients already|remaining connection slots are reserved",
       "C5/C6", "application log, Postgres log", "Postgres refuses new connections: max_connections is reached",
       ""),
    _s("http_response", None, "", "nginx or gunicorn access log",
       "any answered request (a parsed access log line): the denominator of the 502/504 error ratios",
       "", ACCESS),
    _s("nginx_upstream_eagain",
       r"connect\(\) to \S+ failed \(11: Resource temporarily unavailable\) while connecting to upstream",
       "C1/C2", "nginx error log", "the unix socket's accept queue is full", "(11:", NGINX),
    _s("nginx_upstream_timeout", r"upstream timed out \(110: (?:Connection|Operation) timed out\)",
       "C1", "nginx error log", "the upstream did not answer within proxy_*_timeout", "upstream timed out",
       NGINX),
    _s("http_502", None, "C1", "nginx access log",
       "a 502 Bad Gateway answer (the status of a parsed access log line)", "", ACCESS),
    _s("http_504", None, "C1", "nginx access log",
       "a 504 Gateway Timeout answer (the status of a parsed access log line)", "", ACCESS),
    _s("heroku_h12", r"\bH12\b.*[Rr]equest [Tt]imeout|code=H12\b", "W8", "Heroku router log",
       "the platform router gave up after 30 s", "H12"),
    _s("kernel_oom_kill", r"[Oo]ut of memory(?: \([^)]*\))?: Killed process \d+", "C7",
       "kernel log (when tailed from a file such as kern.log)", "the kernel OOM killer killed a process",
       "Killed process"),
)

BUILTIN_NAMES = frozenset(s.name for s in BUILTIN)
ACCESS_STATUS = {"502": "http_502", "504": "http_504"}   # status -> access signature

# gunicorn's error log format (glogging: "%(asctime)s [%(process)d] [%(levelname)s]
# %(message)s", datefmt "[%Y-%m-%d %H:%M:%S %z]") and nginx's error log prefix
_GUNICORN_RE = re.compile(r"\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d [+-]\d{4}\] \[(\d{1,10})\] "
                          r"\[(?:DEBUG|INFO|WARNING|ERROR|CRITICAL)\] ")
_NGINX_RE = re.compile(r"\d{4}/\d\d/\d\d \d\d:\d\d:\d\d \[(?:emerg|alert|crit|error|warn|notice|info|debug)\] "
                       r"\d{1,10}#\d{1,10}: (?:\*\d{1,20} )?")
_UPSTREAM_RE = re.compile(r'upstream: "(?:https?|uwsgi|scgi|fastcgi|grpc)://(unix:/[^:"]*|[^/"]+)')


class SignatureError(ValueError):
    pass


def parse_user_signature(text) -> Signature:
    """`NAME=REGEX` (or a {name, regex} table from the config file)."""
    if isinstance(text, dict):
        name, pattern = text.get("name"), text.get("regex")
    else:
        name, sep, pattern = str(text).partition("=")
        if not sep:
            raise SignatureError(f"{text!r} is not NAME=REGEX")
    name = str(name or "").strip()
    if not NAME_RE.fullmatch(name):
        raise SignatureError(f"signature name {name!r} must be lower case letters, digits and _ "
                             "(starting with a letter or _, at most 64 characters)")
    if name in BUILTIN_NAMES:
        raise SignatureError(f"signature name {name!r} is built in; choose another name")
    if not pattern:
        raise SignatureError(f"signature {name!r} has an empty regular expression")
    try:
        regex = re.compile(pattern)
    except re.error as e:
        raise SignatureError(f"signature {name!r}: {pattern!r} is not a valid regular expression: {e}") from None
    return Signature(name, regex, "", "user-defined", f"user-defined: {pattern}", builtin=False)


def merge(user: tuple[Signature, ...] | list[Signature] = ()) -> tuple[Signature, ...]:
    names = set(BUILTIN_NAMES)
    out = list(BUILTIN)
    for s in list(user):
        if s.name in names:
            raise SignatureError(f"signature {s.name!r} is defined twice")
        names.add(s.name)
        out.append(s)
    if len(out) - len(BUILTIN) > MAX_USER_SIGNATURES:
        raise SignatureError(f"at most {MAX_USER_SIGNATURES} user-defined signatures")
    return tuple(out)


def error_line(line: str) -> bool:
    """The line starts with gunicorn's or nginx's error log prefix."""
    c = line[:1]
    return (c == "[" and _GUNICORN_RE.match(line) is not None or
            c.isdigit() and _NGINX_RE.match(line) is not None)


@dataclass(frozen=True, slots=True)
class Match:
    names: list[str]
    pid: int | None = None          # gunicorn's format: the process that wrote the line
    about: int | None = None        # the pid a gunicorn message is about
    upstream: str | None = None     # nginx: the one upstream the line names


NO_MATCH = Match([])


class Matcher:
    def __init__(self, signatures: tuple[Signature, ...] | None = None):
        sigs = signatures if signatures is not None else BUILTIN
        self.signatures = sigs
        self.gunicorn = [s for s in sigs if s.kind == GUNICORN]
        self.nginx = [s for s in sigs if s.kind == NGINX]
        self.text = [s for s in sigs if s.kind == TEXT]

    def match(self, line: str) -> Match:
        """The signatures a line that is not an access log line matches, and who wrote
        it as far as its own format says."""
        names: list[str] = []
        pid = about = upstream = None
        m = _GUNICORN_RE.match(line) if line[:1] == "[" else None
        if m is not None:
            pid = int(m.group(1))
            for s in self.gunicorn:
                if s.needle in line:
                    hit = s.regex.fullmatch(line, m.end())
                    if hit is not None:
                        names.append(s.name)
                        if "pid" in s.regex.groupindex:
                            about = int(hit.group("pid"))
        elif line[:1].isdigit():
            m = _NGINX_RE.match(line)
            if m is not None:
                for s in self.nginx:
                    if s.needle in line and s.regex.match(line, m.end()):
                        names.append(s.name)
                if names and line.count('upstream: "') == 1:
                    up = _UPSTREAM_RE.search(line, m.end())
                    upstream = up.group(1) if up else None
        for s in self.text:
            if (not s.needle or s.needle in line) and s.regex.search(line):
                names.append(s.name)
        if not names:
            return NO_MATCH
        return Match(names, pid, about, upstream)

    @staticmethod
    def writer(line: str) -> int | None:
        """The pid in gunicorn's prefix, if the line has it."""
        m = _GUNICORN_RE.match(line) if line[:1] == "[" else None
        return int(m.group(1)) if m else None
