"""nginx's proxy timeouts, read statically from its config files (untrusted input).

Only what rule W8 needs: for every `proxy_pass`, where it sends requests
(`http://unix:/run/shop.sock:/`, `http://127.0.0.1:8000`, or an `upstream` block's
servers) and the `proxy_read_timeout` in force there (set in its block or an enclosing
one, as nginx inherits it; nginx's default of 60 s otherwise). nginx is neither run nor
needed, and nothing in the files is executed.

Bounds: regular files only (a FIFO or device is refused without blocking), at most
1 MiB per file and 64 files in all (the main file plus every file an `include` glob
names, relative globs from the main file's directory as nginx does), includes nested at
most 8 deep, blocks at most 64. Anything beyond, or a file that does not parse, is
noted in `problems` and skipped; nothing here raises for bad input.
"""

from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass, field

from exporter.doctor.model import NginxConfig, ProxyPass
from exporter.linux.procfs import read_regular

MAX_FILE = 1 << 20
MAX_FILES = 64
MAX_INCLUDE_DEPTH = 8
MAX_BLOCK_DEPTH = 64
MAX_GLOB = 256
DEFAULT_TIMEOUT = 60.0          # nginx's proxy_read_timeout when none is set
LOOPBACK = {"127.0.0.1", "::1", "localhost"}
WILDCARD = {"0.0.0.0", "::", "*", ""}
TIME_RE = re.compile(r"(\d{1,9})(ms|s|m|h|d|w|M|y)?")
UNITS = {"ms": 0.001, None: 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800,
         "M": 2592000, "y": 31536000}


@dataclass
class Directive:
    name: str
    args: list[str]
    where: str                                  # FILE:LINE
    block: list["Directive"] | None = None


class ParseError(ValueError):
    pass


def tokens(text: str, punct: str = "{};", quotes: str = "\"'", escape_any: bool = True):
    """(token, line, quoted) for nginx's syntax: words, quoted strings, { } ; and # comments.
    Caddy's (exporter/doctor/caddy.py): no punctuation (braces are words), "double" and
    `back` quotes, a backslash escaping only a quote (`escape_any=False`)."""
    stops = " \t\r\n" + punct + quotes
    i, n, line = 0, len(text), 1
    while i < n:
        c = text[i]
        if c == "\n":
            line += 1
            i += 1
        elif c in " \t\r":
            i += 1
        elif c == "#":
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif c in punct:
            yield c, line, False
            i += 1
        elif c in quotes:
            start, j, out = line, i + 1, []
            while j < n and text[j] != c:
                if text[j] == "\\" and j + 1 < n and (escape_any or text[j + 1] == c):
                    j += 1
                line += text[j] == "\n"
                out.append(text[j])
                j += 1
            if j >= n:
                raise ParseError(f"line {start}: unterminated quoted string")
            yield "".join(out), start, True
            i = j + 1
        else:
            j = i
            while j < n and text[j] not in stops:
                if text[j] == "$" and text[j + 1:j + 2] == "{":   # ${variable}
                    end = text.find("}", j)
                    j = n if end < 0 else end
                j += 1
            yield text[i:j], line, False
            i = j


def parse_time(text: str) -> float | None:
    """nginx time: '60', '60s', '500ms', '1m30s'; None when malformed."""
    if not text or TIME_RE.sub("", text):
        return None
    return float(sum(int(n) * UNITS[u or None] for n, u in TIME_RE.findall(text)))


@dataclass
class _Loader:
    base: str
    files: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    seen: set = field(default_factory=set)

    def read(self, path: str) -> str | None:
        if len(self.files) >= MAX_FILES:
            self.problems.append(f"{path}: not read, more than {MAX_FILES} files")
            return None
        try:
            # O_PATH first: a device's open() never runs, a FIFO never blocks
            data, st = read_regular(path, MAX_FILE)
        except OSError as e:
            self.problems.append(f"{path}: {e.strerror or e}")
            return None
        if (st.st_dev, st.st_ino) in self.seen:
            self.problems.append(f"{path}: read already")
            return None
        if len(data) > MAX_FILE:
            self.problems.append(f"{path}: larger than {MAX_FILE} bytes, not read")
            return None
        self.seen.add((st.st_dev, st.st_ino))
        self.files.append(path)
        return data.decode("utf-8", "replace")

    def load(self, path: str, depth: int = 0) -> list[Directive]:
        text = self.read(path)
        if text is None:
            return []
        try:
            return self._parse(text, path, depth)
        except ParseError as e:
            self.problems.append(f"{path}: {e}")
            return []

    def _parse(self, text: str, path: str, depth: int) -> list[Directive]:
        stack: list[list[Directive]] = [[]]
        words: list[str] = []
        first = 0
        for tok, line, quoted in tokens(text):
            if quoted or tok not in "{};":
                first = first if words else line
                words.append(tok)
            elif tok == ";":
                if words:
                    d = Directive(words[0], words[1:], f"{path}:{first}")
                    stack[-1].extend(self._include(d, depth) if d.name == "include" else [d])
                words = []
            elif tok == "{":
                d = Directive(words[0] if words else "", words[1:], f"{path}:{first or line}", [])
                stack[-1].append(d)
                stack.append(d.block)
                words = []
                if len(stack) > MAX_BLOCK_DEPTH:
                    raise ParseError(f"line {line}: blocks nested more than {MAX_BLOCK_DEPTH} deep")
            else:
                if len(stack) == 1 or words:
                    raise ParseError(f"line {line}: unexpected '}}'")
                stack.pop()
        if len(stack) != 1 or words:
            raise ParseError("unexpected end of file")
        return stack[0]

    def _include(self, d: Directive, depth: int) -> list[Directive]:
        if not d.args:
            return []
        if depth >= MAX_INCLUDE_DEPTH:
            self.problems.append(f"{d.where}: includes nested more than {MAX_INCLUDE_DEPTH} deep")
            return []
        pattern = os.path.join(self.base, d.args[0])
        names = []
        for name in glob.iglob(pattern):
            names.append(name)
            if len(names) >= MAX_GLOB:
                break
        out: list[Directive] = []
        for name in sorted(names):
            out.extend(self.load(name, depth + 1))
        return out


def _with_port(hostport: str, default: int) -> str:
    m = re.fullmatch(r"\[([0-9a-fA-F:.]+)\](?::(\d+))?|([^:\[\]]+)(?::(\d+))?", hostport)
    if not m:
        return hostport
    if m.group(1) is not None:
        return f"[{m.group(1)}]:{m.group(2) or default}"
    return f"{m.group(3)}:{m.group(4) or default}"


def _server_target(arg: str) -> str:
    return arg if arg.startswith("unix:") else _with_port(arg, 80)


def pass_targets(url: str, upstreams: dict[str, list[str]]) -> tuple[str, ...]:
    """Where `proxy_pass URL` sends requests; () when it holds variables or is not HTTP."""
    m = re.fullmatch(r"(?i)(https?)://(.+)", url)
    if not m or "$" in url:
        return ()
    rest = m.group(2)
    if rest.startswith("unix:"):
        return (f"unix:{rest[5:].split(':', 1)[0]}",)
    hostport = re.split(r"[/?]", rest, maxsplit=1)[0]
    if hostport in upstreams:
        return tuple(upstreams[hostport])
    return (_with_port(hostport, 443 if m.group(1).lower() == "https" else 80),)


def proxy_passes(top: list[Directive]) -> list[ProxyPass]:
    upstreams: dict[str, list[str]] = {}
    found: list[tuple[str, float, str]] = []

    def walk(block: list[Directive], timeout: float, where: str | None) -> None:
        here = [d for d in block if d.name == "proxy_read_timeout" and d.args]
        seconds = parse_time(here[-1].args[0]) if here else None
        if seconds is not None:
            timeout, where = seconds, here[-1].where
        for d in block:
            if d.name == "upstream" and d.args and d.block is not None:
                upstreams[d.args[0]] = [_server_target(s.args[0]) for s in d.block
                                        if s.name == "server" and s.args]
            elif d.name == "proxy_pass" and d.args:
                src = (f"proxy_read_timeout at {where}" if where else
                       "nginx's default (no proxy_read_timeout)") + f" for the proxy_pass at {d.where}"
                found.append((d.args[0], timeout, src))
            elif d.block is not None:
                walk(d.block, timeout, where)

    walk(top, DEFAULT_TIMEOUT, None)
    return [ProxyPass(targets, t, src) for url, t, src in found
            if (targets := pass_targets(url, upstreams))]


def load(path: str) -> NginxConfig:
    """The proxy timeouts of the nginx config at `path` (and what it includes)."""
    loader = _Loader(os.path.dirname(path) or "/")
    top = loader.load(path)
    return NginxConfig(path=path, files=loader.files, passes=proxy_passes(top),
                       problems=loader.problems[:20])


def _split(address: str) -> tuple[str, str]:
    host, _, port = address.rstrip("+").rpartition(":")
    return host.strip("[]"), port


def matches(listener: str, target: str) -> bool:
    """Does nginx's `target` reach the gunicorn `listener` ('unix:/x.sock', '0.0.0.0:8000')?
    Host names other than localhost are not resolved: they never match."""
    listener = listener.rstrip("+")
    if listener.startswith("unix:") or target.startswith("unix:"):
        return listener == target
    lhost, lport = _split(listener)
    thost, tport = _split(target)
    if lport != tport:
        return False
    return thost == lhost or (lhost in WILDCARD and thost in LOOPBACK)


def timeout_for(cfg: NginxConfig | None, listeners: list[str]) -> tuple[float, str] | None:
    """The shortest proxy_read_timeout in front of any of the listeners, and where it is set."""
    hits = [(p.timeout, p.where) for p in (cfg.passes if cfg else [])
            if any(matches(lst, t) for lst in listeners for t in p.targets)]
    return min(hits) if hits else None
