"""A real Caddy (Debian package `caddy`) in front of the tests' gunicorns: one site per
port (any Host, bound to 127.0.0.1), each with its own JSON access log, and the reverse_proxy error entries in files
named by global `log` blocks. Admin endpoint and automatic HTTPS off, its state in the
test's directory; stopped by its PID at exit."""

from __future__ import annotations

import contextlib
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from tests.harness.procs import free_port, port_open
from tests.harness.servers import running_server

CADDY = shutil.which("caddy") or "/usr/bin/caddy"


@dataclass
class Site:
    upstream: str                  # 'unix//path' or 'host:port', as Caddy writes upstreams
    transport: str = ""            # lines of a `transport http { }` block
    # handle_path /x/* -> (its upstream, its transport lines)
    routes: dict[str, tuple[str, str]] = field(default_factory=dict)
    port: int = 0
    access_log: Path | None = None


def caddyfile(sites: list[Site], error_logs: list[tuple[Path, str]]) -> str:
    """`error_logs`: (file, the `include`/`exclude` lines of its global log block)."""
    out = ["{", "\tadmin off", "\tauto_https off"]
    for i, (path, rules) in enumerate(error_logs):
        out += [f"\tlog errors{i} {{", f"\t\toutput file {path}", "\t\tformat json",
                *(f"\t\t{r}" for r in rules.splitlines()), "\t}"]
    out.append("}")

    def proxy(indent: str, upstream: str, transport: str) -> list[str]:
        if not transport:
            return [f"{indent}reverse_proxy {upstream}"]
        return [f"{indent}reverse_proxy {upstream} {{", f"{indent}\ttransport http {{",
                *(f"{indent}\t\t{t}" for t in transport.splitlines()), f"{indent}\t}}",
                f"{indent}}}"]

    for site in sites:
        out += [f"http://:{site.port} {{", "\tbind 127.0.0.1", "\tlog {",
                f"\t\toutput file {site.access_log}", "\t\tformat json", "\t}"]
        for prefix, (upstream, transport) in site.routes.items():
            out += [f"\thandle_path {prefix}/* {{", *proxy("\t\t", upstream, transport), "\t}"]
        out += ["\thandle {", *proxy("\t\t", site.upstream, site.transport), "\t}", "}"]
    return "\n".join(out) + "\n"


@contextlib.contextmanager
def running_caddy(tmp_path: Path, sites: list[Site], error_logs: list[tuple[Path, str]] = ()):
    """Caddy serving `sites` (ports and access logs filled in: site i logs to
    caddy/access-i.log, Caddy's logger log<i>); yields the Caddyfile's path."""
    d = Path(tmp_path) / "caddy"
    d.mkdir(parents=True, exist_ok=True)
    for i, site in enumerate(sites):
        site.port = site.port or free_port()
        site.access_log = site.access_log or d / f"access-{i}.log"
    conf = d / "Caddyfile"
    conf.write_text(caddyfile(sites, list(error_logs)))
    argv = ["env", f"HOME={d}", f"XDG_DATA_HOME={d}/data", f"XDG_CONFIG_HOME={d}/config",
            CADDY, "run", "--config", str(conf), "--adapter", "caddyfile"]
    with running_server(argv, d / "caddy.out", lambda: all(port_open(s.port) for s in sites),
                        "caddy"):
        yield conf
