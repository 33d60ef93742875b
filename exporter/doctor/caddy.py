"""Caddy's reverse_proxy timeouts, read statically from a Caddyfile (untrusted input).

What rule W8 needs, as exporter/doctor/nginx.py reads nginx: for every `reverse_proxy`,
its upstreams (`unix//run/shop.sock`, `localhost:8000`, `http://127.0.0.1:8000`, its
`to` lines) and the time Caddy waits for gunicorn's answer, from its
`transport http { }` block:

* `response_header_timeout`: how long Caddy waits for the response headers (a sync
  worker sends them when the view returns): the one that ends a slow request with 504;
* `read_timeout`: the longest wait for the next read from the upstream; Caddy 2.6
  applies it to TCP upstreams only (measured: a unix-socket upstream behind a 1 s
  read_timeout answered 200 after 1.5 s), so it is ignored for unix sockets;
* neither set (Caddy's default): Caddy waits for ever; reported as 0, Caddy's own
  "no timeout" (`dial_timeout`, 3 s by default, bounds the connect only).

Caddy is neither run nor needed, and nothing is executed; `{$ENV}` and `{placeholders}`
are not resolved (an upstream holding one is skipped). `import` of snippets and of
files (globs relative to the Caddyfile's directory) is followed, within the bounds of
nginx.py's loader: regular files only, 1 MiB each, 64 files, 8 levels of imports, 64
levels of blocks. What does not parse is noted in `problems` and skipped.
"""

from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass

from exporter.doctor import nginx
from exporter.doctor.model import NginxConfig, ProxyPass

MAX_INCLUDE_DEPTH = nginx.MAX_INCLUDE_DEPTH
MAX_BLOCK_DEPTH = nginx.MAX_BLOCK_DEPTH
MAX_GLOB = nginx.MAX_GLOB
DURATION_RE = re.compile(r"(\d{1,9}(?:\.\d{1,9})?)(ns|us|µs|ms|s|m|h|d)")
UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0,
         "d": 86400.0}
MATCHER_RE = re.compile(r"\*|/\S*|@\S+")


@dataclass
class Node:
    name: str
    args: list[str]
    where: str                          # FILE:LINE
    block: list["Node"] | None = None


ParseError = nginx.ParseError


def tokens(text: str):
    """(token, line, quoted) of the Caddyfile lexer: words split by white space, "quoted"
    and `backquoted` strings, # comments at a word's start."""
    return nginx.tokens(text, punct="", quotes="\"`", escape_any=False)


def parse_time(text: str) -> float | None:
    """A Caddy duration ('30s', '1m30s', '500ms', '1.5h', '2d'); None when malformed
    (a bare number has no unit in Caddy either)."""
    if not text or DURATION_RE.sub("", text):
        return None
    return sum(float(v) * UNITS[u] for v, u in DURATION_RE.findall(text))


class _Reader:
    def __init__(self, path: str):
        self.loader = nginx._Loader(os.path.dirname(path) or "/")
        self.snippets: dict[str, list[Node]] = {}

    @property
    def problems(self) -> list[str]:
        return self.loader.problems

    def load(self, path: str, depth: int = 0, top: bool = True) -> list[Node]:
        text = self.loader.read(path)
        if text is None:
            return []
        try:
            lines: dict[int, list[tuple[str, bool]]] = {}
            for tok, line, quoted in tokens(text):
                lines.setdefault(line, []).append((tok, quoted))
            return self._block(iter(sorted(lines.items())), path, depth, 1, top)
        except ParseError as e:
            self.problems.append(f"{path}: {e}")
            return []

    def _block(self, rows, path: str, depth: int, level: int, top: bool) -> list[Node]:
        out: list[Node] = []
        for line, toks in rows:
            words = [t for t, _q in toks]
            opens = words[-1] == "{" and not toks[-1][1]
            if words == ["}"] and not toks[0][1]:
                if level == 1:
                    raise ParseError(f"line {line}: unexpected '}}'")
                return out
            if level > MAX_BLOCK_DEPTH:
                raise ParseError(f"line {line}: blocks nested more than {MAX_BLOCK_DEPTH} deep")
            node = Node(words[0], words[1:-1] if opens else words[1:], f"{path}:{line}")
            if opens:
                node.block = self._block(rows, path, depth, level + 1, False)
            if top and node.name.startswith("(") and node.name.endswith(")") and node.block is not None:
                self.snippets[node.name[1:-1]] = node.block
            elif node.name == "import" and node.args:
                out.extend(self._import(node, depth, top))
            else:
                out.append(node)
        if level > 1:
            raise ParseError("unexpected end of file (a block is not closed)")
        return out

    def _import(self, node: Node, depth: int, top: bool) -> list[Node]:
        if node.args[0] in self.snippets:
            return self.snippets[node.args[0]]
        if depth >= MAX_INCLUDE_DEPTH:
            self.problems.append(f"{node.where}: imports nested more than {MAX_INCLUDE_DEPTH} deep")
            return []
        names = []
        for name in glob.iglob(os.path.join(self.loader.base, node.args[0])):
            names.append(name)
            if len(names) >= MAX_GLOB:
                break
        out: list[Node] = []
        for name in sorted(names):
            out.extend(self.load(name, depth + 1, top))
        return out


def sites(top: list[Node]) -> list[Node]:
    """The site blocks: a leading `{ }` global options block is not one; a file with
    one site may leave out its braces (then every line after the address is its body)."""
    body = [n for n in top if not (n.name == "{" or (n.name.startswith("(") and n.block is not None))]
    if body and body[0].block is None:
        return [Node(body[0].name, body[0].args, body[0].where, body[1:])]
    return [n for n in body if n.block is not None]


def upstream_targets(up: str) -> tuple[str, ...]:
    """Listener addresses (as nginx.matches compares them) a Caddy upstream dials."""
    if "{" in up:
        return ()
    if up.startswith("unix/"):
        return (f"unix:{up[5:]}",) if up[5:].startswith("/") else ()
    m = re.fullmatch(r"(?:(https?|h2c)://)?(\[[0-9a-fA-F:.]+\]|[^:/\[\]]*)(?::(\d{1,5}))?/?", up)
    if not m:
        return ()
    port = m.group(3) or ("443" if m.group(1) == "https" else "80")
    host = m.group(2)
    if host in ("", "localhost"):         # Go dials localhost's addresses, IPv4 first
        return (f"127.0.0.1:{port}", f"[::1]:{port}")
    return (f"{host}:{port}",)


def _timeouts(rp: Node) -> tuple[list[str], dict[str, tuple[float, str]]] | None:
    """A reverse_proxy's upstreams and its transport's timeouts (name -> (s, FILE:LINE));
    None for a transport other than http (fastcgi)."""
    args = rp.args[1:] if rp.args and MATCHER_RE.fullmatch(rp.args[0]) else rp.args
    ups, found = list(args), {}
    for d in rp.block or []:
        if d.name == "to":
            ups.extend(d.args)
        elif d.name == "transport":
            if d.args[:1] != ["http"]:
                return None
            for t in d.block or []:
                if t.name in ("response_header_timeout", "read_timeout") and t.args:
                    seconds = parse_time(t.args[0])
                    if seconds is not None:
                        found[t.name] = (seconds, t.where)
    return ups, found


def proxy_passes(top: list[Node]) -> list[ProxyPass]:
    out = []

    def walk(nodes: list[Node]) -> None:
        for n in nodes:
            if n.name == "reverse_proxy":
                got = _timeouts(n)
                if got is not None:
                    out.extend(_passes(n, *got))
            elif n.block is not None:
                walk(n.block)

    for site in sites(top):
        walk(site.block or [])
    return out


def _passes(rp: Node, ups: list[str], found: dict) -> list[ProxyPass]:
    passes = []
    for up in ups:
        for target in upstream_targets(up):
            usable = {k: v for k, v in found.items() if v[0] > 0 and
                      (k == "response_header_timeout" or not target.startswith("unix:"))}
            if usable:
                name, (seconds, where) = min(usable.items(), key=lambda kv: kv[1][0])
                src = f"{name} at {where}"
            else:
                seconds, src = 0.0, ("Caddy's default: no response_header_timeout" +
                                     (" (read_timeout does not apply to unix sockets)"
                                      if "read_timeout" in found and target.startswith("unix:")
                                      else " or read_timeout") + ", Caddy waits for ever")
            passes.append(ProxyPass((target,), seconds, f"{src} for the reverse_proxy at {rp.where}"))
    return passes


def load(path: str) -> NginxConfig:
    """The reverse_proxy timeouts of the Caddyfile at `path` (and what it imports)."""
    reader = _Reader(path)
    top = reader.load(path)
    return NginxConfig(path=path, files=reader.loader.files, passes=proxy_passes(top),
                       problems=reader.problems[:20])


def timeout_for(cfg: NginxConfig | None, listeners: list[str]) -> tuple[float, str] | None:
    """The shortest Caddy timeout in front of any of the listeners (0: Caddy waits for
    ever, counted as the longest), and where it is set."""
    hits = [(p.timeout, p.where) for p in (cfg.passes if cfg else [])
            if any(nginx.matches(lst, t) for lst in listeners for t in p.targets)]
    return min(hits, key=lambda h: (h[0] or float("inf"), h[1])) if hits else None
