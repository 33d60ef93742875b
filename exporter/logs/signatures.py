"""Error signatures: which log lines mean what (docs/oom-and-logs.md lists them).

Every row of the "Error signatures" table of docs/failure-modes.md, gunicorn's worker
life-cycle lines, and the user's own `NAME=REGEX` signatures. A line may match several
signatures; each match counts once.

`Matcher.match(line)` returns the names that matched plus hints that tie the line to an
app: the pid in brackets of gunicorn's log format (`[2024-..] [PID] [LEVEL] ...`, the
master's pid), a worker pid (`(pid:N)`, `pid: N`), and an nginx `upstream: "..."` address.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

NAME_RE = re.compile(r"[a-z_][a-z0-9_]{0,63}")
MAX_USER_SIGNATURES = 64
# A cheap prefilter keeps the common case (a line that matches nothing) fast: every
# built-in regex needs one of these words; user signatures are always tried.


@dataclass(frozen=True)
class Signature:
    name: str
    regex: re.Pattern
    insight: str          # ID in the insights table ('' for user-defined signatures)
    where: str            # which log shows it
    description: str
    builtin: bool = True
    needle: str = ""      # a substring the line must contain (prefilter); '' = always try


def _s(name, pattern, insight, where, description, needle):
    return Signature(name, re.compile(pattern), insight, where, description, True, needle)


BUILTIN: tuple[Signature, ...] = (
    _s("worker_timeout", r"WORKER TIMEOUT \(pid:\d+\)", "W5", "gunicorn error log",
       "the master killed a worker silent longer than --timeout", "WORKER TIMEOUT"),
    _s("worker_sigkill", r"Worker \(pid:\d+\) was sent SIGKILL!", "C7", "gunicorn error log",
       "a worker died of SIGKILL (gunicorn adds 'Perhaps out of memory?'; also after a timeout escalation)",
       "SIGKILL"),
    _s("worker_signal", r"Worker \(pid:\d+\) was sent (?!SIGKILL)(?:SIG\w+|signal \d+)!", "", "gunicorn error log",
       "a worker died of another signal (SIGTERM on shutdown, SIGABRT after a timeout, SIGSEGV ...)",
       "was sent"),
    _s("worker_exit_code", r"Worker \(pid:\d+\) exited with code \d+", "", "gunicorn error log",
       "a worker exited with a non-zero code", "exited with code"),
    _s("worker_boot", r"Booting worker with pid: \d+", "", "gunicorn error log",
       "the master forked a worker", "Booting worker"),
    _s("worker_exiting", r"Worker exiting \(pid: \d+\)", "", "gunicorn error log",
       "a worker shut down cleanly", "Worker exiting"),
    _s("worker_boot_failed", r"Worker failed to boot|App failed to load", "", "gunicorn error log",
       "the master gives up: a worker could not load the app", "failed to"),
    _s("queuepool_exhausted", r"QueuePool limit of size \d+ overflow -?\d+ reached", "C4", "application log",
       "SQLAlchemy pool exhausted: a request waited pool_timeout for a connection", "QueuePool limit"),
    _s("nginx_connect_refused", r"connect\(\) (?:to \S+ )?failed \(111: Connection refused\) while connecting to upstream",
       "W4", "nginx error log", "nobody listens on the upstream socket or port", "(111:"),
    _s("nginx_upstream_missing", r"connect\(\) to unix:\S+ failed \(2: No such file or directory\) while connecting to upstream",
       "W4", "nginx error log", "the upstream unix socket file is gone (gunicorn stopped, or the wrong path)",
       "(2: No such file"),
    _s("postgres_too_many_clients", r"too many clients already|remaining connection slots are reserved",
       "C5/C6", "application log, Postgres log", "Postgres refuses new connections: max_connections is reached",
       ""),
    _s("http_response", r"\"\s\d{3}\s(?:\d+|-)", "", "nginx or gunicorn access log",
       "any answered request: the denominator of the 502/504 error ratios", "HTTP/"),
    _s("nginx_upstream_eagain", r"\(11: Resource temporarily unavailable\) while connecting to upstream",
       "C1/C2", "nginx error log", "the unix socket's accept queue is full", "(11:"),
    _s("nginx_upstream_timeout", r"upstream timed out \(110: (?:Connection|Operation) timed out\)",
       "C1", "nginx error log", "the upstream did not answer within proxy_*_timeout", "upstream timed out"),
    _s("http_502", r"\"\s502\s(?:\d+|-)", "C1", "nginx access log", "a 502 Bad Gateway answer", " 502 "),
    _s("http_504", r"\"\s504\s(?:\d+|-)", "C1", "nginx access log", "a 504 Gateway Timeout answer", " 504 "),
    _s("heroku_h12", r"\bH12\b.*[Rr]equest [Tt]imeout|code=H12\b", "W8", "Heroku router log",
       "the platform router gave up after 30 s", "H12"),
    _s("kernel_oom_kill", r"[Oo]ut of memory(?: \([^)]*\))?: Killed process \d+", "C7",
       "kernel log (when tailed from a file such as kern.log)", "the kernel OOM killer killed a process",
       "Killed process"),
)

BUILTIN_NAMES = frozenset(s.name for s in BUILTIN)

_MASTER_PID_RE = re.compile(r"^\[[^\]]{1,64}\] \[(\d{1,10})\] \[[A-Z]{4,8}\] ")
_WORKER_PID_RE = re.compile(r"\(pid: ?(\d{1,10})\)|with pid: (\d{1,10})")
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


@dataclass(frozen=True, slots=True)
class LineHints:
    master_pid: int | None = None   # gunicorn log format: the logging process (the master)
    worker_pid: int | None = None   # the pid a gunicorn message is about
    upstream: str | None = None     # nginx upstream: 'unix:/run/app.sock' or '127.0.0.1:8000'


class Matcher:
    def __init__(self, signatures: tuple[Signature, ...] | None = None):
        self.signatures = signatures if signatures is not None else BUILTIN

    def match(self, line: str) -> list[str]:
        return [s.name for s in self.signatures
                if (not s.needle or s.needle in line) and s.regex.search(line)]

    @staticmethod
    def hints(line: str) -> LineHints:
        mp = _MASTER_PID_RE.match(line)
        wp = _WORKER_PID_RE.search(line)
        up = _UPSTREAM_RE.search(line) if "upstream:" in line else None
        upstream = None
        if up:
            upstream = up.group(1)
        return LineHints(master_pid=int(mp.group(1)) if mp else None,
                         worker_pid=int(wp.group(1) or wp.group(2)) if wp else None,
                         upstream=upstream)
