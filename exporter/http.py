"""The HTTP side: /metrics, a landing page at /, /-/healthy and /debug/stacks, served by aiohttp's
low-level server (`aiohttp.web.Server`: it parses HTTP/1.1 as RFC 9112 asks), behind
the connection limits of `exporter/guard.py`, with TLS, basic auth, headers and the rate
limit of `--web.config.file` (`exporter/webconfig.py`, `exporter/webauth.py`).

On top of aiohttp's parser, the few checks RFC 9112 asks of a server that it leaves to
the application: a Host header that is a host (400 otherwise; HTTP/1.1 needs one), field
names that are tokens (aiohttp 3.8, Debian bookworm's, lets others through), an HTTP
version it speaks (505), GET and HEAD only (405), no request body (413). Rendering and
encoding happen on the loop: pure CPU over a finished snapshot (about 2 ms for an app with 64
workers; the encoder is our own, exporter/metrics/encode.py). Answers are gzipped when
the client accepts it. Log lines about the same problem are rate-limited.
"""

from __future__ import annotations

import asyncio
import gzip
import html
import logging
import math
import re
import resource
import signal
import time

from aiohttp import HttpVersion10, HttpVersion11, web
from prometheus_client import ProcessCollector

from exporter import __version__
from exporter.guard import Guard
from exporter.listen import bind_all, describe, systemd_sockets
from exporter.metrics import render, render_web
from exporter.metrics.encode import choose
from exporter.scrape import Scraper
from exporter.webauth import BasicAuth, RateLimit
from exporter.webconfig import WebConfigHolder
from exporter.webtls import describe_tls

log = logging.getLogger(__name__)

# Leave Prometheus time to receive the answer after its wait ends.
SCRAPE_TIMEOUT_OFFSET = 0.5
WEB_CONFIG_POLL = 5.0          # seconds between checks for a changed web config or certificate
GZIP_MIN = 1024
DEBUG_STACKS = "/debug/stacks"     # the stacks collector's last captures (--collector.stacks)
# RFC 9112 3.2 / RFC 3986 3.2.2: Host = uri-host [ ":" port ], possibly empty
HOST = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~%!$&'()*+,;=]*)(:[0-9]*)?")
# RFC 9110 5.1: a field name is a token
TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


class RateLimitedLog:
    """At most one log line per key and `interval`, with how many were left out."""

    def __init__(self, interval: float = 60.0):
        self.interval = interval
        self._last: dict[str, tuple[float, int]] = {}

    def warning(self, key: str, message: str, *args, **kw) -> None:
        now = time.monotonic()
        last, skipped = self._last.get(key, (-1e9, 0))
        if now - last < self.interval:
            self._last[key] = (last, skipped + 1)
            return
        if len(self._last) > 1024:
            self._last.clear()
        self._last[key] = (now, 0)
        suffix = f" ({skipped} more like it in the last {self.interval:.0f}s)" if skipped else ""
        log.warning(message + suffix, *args, **kw)

    def loop_error(self, loop, context: dict) -> None:
        """The event loop's exception handler: asyncio's own errors on one line,
        rate-limited, instead of a traceback per connection."""
        exc = context.get("exception")
        what = context.get("message", "error")
        self.warning(f"loop:{what}:{type(exc).__name__}", "event loop: %s: %r", what, exc)

    def filter(self, record: logging.LogRecord) -> bool:
        """A logging filter for aiohttp's server logger: a client's bad request is one
        line a minute, without a traceback."""
        exc = record.exc_info[1] if record.exc_info else None
        self.warning(f"aiohttp:{type(exc).__name__}", "web: %s: %s",
                     record.getMessage()[:200], str(exc)[:200].replace("\n", " "))
        return False


def text(status: int, body: str, close: bool = False, **headers: str) -> web.Response:
    response = web.Response(status=status, body=body.encode(), headers={
        "Content-Type": "text/plain; charset=utf-8", **headers})
    if close:
        response.force_close()
    return response


class Exporter:
    """The web application: routes, auth, compression, and the collectors' lifecycle."""

    def __init__(self, config, scraper: Scraper, web_config: WebConfigHolder | None = None):
        self.config = config
        self.scraper = scraper
        self.web = web_config or WebConfigHolder(None)
        self.logs = RateLimitedLog()
        self.auth = BasicAuth()
        self.refused: dict[str, int] = {"rate_limited": 0, "unauthorized": 0, "auth_busy": 0}
        self.guard: Guard | None = None
        self.server: web.Server | None = None
        self._limiter: tuple[object, RateLimit | None] = (None, None)
        self._watch: asyncio.Task | None = None
        self._started: list = []

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        conn = self.guard.conn(request.transport) if self.guard else None
        if conn is not None:
            conn.serving()
        try:
            response = await self.respond(request)
        except Exception:  # noqa: BLE001 - a 500 for this request only
            self.logs.warning("handler", "request for %s failed", request.path[:200], exc_info=True)
            response = text(500, "internal error\n")
        response.headers.update(self.web.config.headers)
        if conn is not None:
            conn.writing()          # from here the write deadline runs
        try:
            await response.prepare(request)
            await response.write_eof()
        except (ConnectionError, RuntimeError):
            pass                    # the client went, or was disconnected at the deadline
        if conn is not None:
            conn.waiting()
        return response

    async def respond(self, request: web.BaseRequest) -> web.StreamResponse:
        if request.version not in (HttpVersion10, HttpVersion11):
            return text(505, "HTTP/1.0 and HTTP/1.1 only\n", close=True)
        hosts = request.headers.getall("Host", [])
        if (len(hosts) > 1 or (hosts and not HOST.fullmatch(hosts[0]))
                or (not hosts and request.version == HttpVersion11)):
            return text(400, "bad Host header\n", close=True)
        # aiohttp >= 3.9 refuses these itself; Debian bookworm's 3.8 lets them through
        if not all(TOKEN.fullmatch(name) for name, _ in request.raw_headers):
            return text(400, "bad header field name\n", close=True)
        if request.method not in ("GET", "HEAD"):
            return text(405, "only GET and HEAD\n", Allow="GET, HEAD")
        if request.body_exists:
            return text(413, "request bodies are not accepted\n", close=True)
        config = self.web.config
        if config.rate_limit is not None:
            key, limiter = self._limiter
            if key is not config:
                limiter = RateLimit(*config.rate_limit)
                self._limiter = (config, limiter)
            if not limiter.allow():
                self.refused["rate_limited"] += 1
                return text(429, "Too Many Requests\n")
        path = request.path
        health = path == "/-/healthy"
        if config.auth and not (health and not self.config.web_health_auth):
            ok = await self.auth.check(config.users, request.headers.get("Authorization", ""))
            if ok is None:
                self.refused["auth_busy"] += 1
                return text(429, "too many password checks waiting\n", **{"Retry-After": "1"})
            if not ok:
                self.refused["unauthorized"] += 1
                self.logs.warning("auth", "unauthorized request for %s from %s", path[:100],
                                  request.remote)
                return text(401, "Unauthorized\n",
                            **{"WWW-Authenticate": 'Basic realm="gunicorn-exporter"'})
        if path == self.config.telemetry_path:
            response = await self.metrics(request.headers)
        elif health:
            return text(200, "OK\n")
        elif path == "/":
            response = self.landing()
        elif path == DEBUG_STACKS:
            response = self.debug_stacks(request)
        else:
            return text(404, "Not Found\n")
        if len(response.body) >= GZIP_MIN and \
                "gzip" in request.headers.get("Accept-Encoding", "").lower():
            response.body = gzip.compress(response.body, compresslevel=1)
            response.headers["Content-Encoding"] = "gzip"
            response.headers["Vary"] = "Accept-Encoding"
        return response

    async def metrics(self, headers) -> web.Response:
        limit = None
        header = headers.get("X-Prometheus-Scrape-Timeout-Seconds", "")
        if header:
            try:
                limit = max(0.0, float(header) - SCRAPE_TIMEOUT_OFFSET)
            except ValueError:
                pass
            if limit is not None and not math.isfinite(limit):
                limit = None
        snapshot = await self.scraper.scrape(limit)
        families = list(render(snapshot, self.config.worker_series == "all")) + \
            list(_PROCESS.collect()) + \
            list(render_web(self.web.last_reload_ok, self.web_counts()))
        encoder, content_type = choose(headers.get("Accept", ""))
        return web.Response(body=encoder(families), headers={"Content-Type": content_type})

    def _stacks(self):
        return next((c for c in self.scraper.collectors if c.name == "stacks"), None)

    def debug_stacks(self, request: web.BaseRequest) -> web.Response:
        """The last stack captures per app (exporter/stacks/store.py, bounded): JSON, or
        text for a browser (`Accept: text/html` or text/plain, or `?format=text|json`)."""
        stacks = self._stacks()
        if stacks is None:
            return text(404, "the stacks collector is off (--collector.stacks)\n")
        fmt = request.query.get("format", "")
        if fmt not in ("json", "text"):
            accept = request.headers.get("Accept", "").lower()
            fmt = "text" if ("text/html" in accept or "text/plain" in accept) \
                and "application/json" not in accept else "json"
        content_type = "text/plain; charset=utf-8" if fmt == "text" else "application/json"
        return web.Response(body=stacks.debug_stacks(fmt), headers={
            "Content-Type": content_type, "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff"})

    def web_counts(self) -> tuple[int, dict[str, int]]:
        """(open connections, refusals by reason) for gunicorn_exporter_web_*."""
        refused = dict(self.refused)
        if self.guard is not None:
            refused.update(self.guard.refused)
        return (self.guard.open if self.guard else 0), refused

    def landing(self) -> web.Response:
        path = html.escape(self.config.telemetry_path)
        stacks = (f'<li><a href="{DEBUG_STACKS}">Stacks of stuck workers</a></li>'
                  if self._stacks() is not None else "")
        page = f"""<!doctype html>
<html><head><title>gunicorn-exporter</title></head>
<body><h1>gunicorn-exporter {__version__}</h1>
<p>Prometheus exporter that watches gunicorn masters and workers from outside.</p>
<ul><li><a href="{path}">Metrics</a></li><li><a href="/-/healthy">Health</a></li>{stacks}</ul>
</body></html>
"""
        return web.Response(body=page.encode(), headers={
            "Content-Type": "text/html; charset=utf-8"})

    # --- lifecycle -----------------------------------------------------------

    async def start(self, sockets) -> None:
        raise_fd_limit()
        for c in self.scraper.collectors:
            await c.start()
            self._started.append(c)
        server_log = logging.getLogger("exporter.http.aiohttp")
        server_log.addFilter(self.logs)
        timeout = self.config.web_header_timeout
        self.server = web.Server(self.handle, access_log=None, logger=server_log,
                                 keepalive_timeout=timeout + 15.0 + 5.0, lingering_time=0,
                                 max_line_size=8190, max_field_size=8190, max_headers=100)
        self.guard = Guard(self.server, self.web,
                           max_connections=self.config.web_max_connections,
                           header_timeout=timeout, write_timeout=self.config.web_write_timeout)
        for sock in sockets:
            self.guard.serve(sock)
        if self.web.path:
            self._watch = asyncio.get_running_loop().create_task(self._watch_web_config())

    async def _watch_web_config(self) -> None:
        while True:
            await asyncio.sleep(WEB_CONFIG_POLL)
            if self.web.changed():
                self.web.reload()

    async def stop(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
        if self.guard is not None:
            await self.guard.stop()
        if self.server is not None:
            await self.server.shutdown(2.0)
        self.auth.close()
        for c in reversed(self._started):
            try:
                await asyncio.wait_for(c.stop(), 15)
            except Exception:  # noqa: BLE001 - stop the others anyway
                log.warning("collector %s did not stop cleanly", c.name, exc_info=True)


def raise_fd_limit() -> None:
    """Soft fd limit up to the hard one: a connection flood should meet the connection
    cap, not EMFILE."""
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard != resource.RLIM_INFINITY and hard > soft:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError):
        pass


def listening_sockets(config):
    """The sockets to serve on (OSError with a message when there are none)."""
    return systemd_sockets() if config.web_systemd_socket else bind_all(config.listen_addresses)


async def serve(config, scraper: Scraper, web_config: WebConfigHolder, sockets) -> None:
    """Run until SIGTERM or SIGINT; SIGHUP re-reads the web config."""
    app = Exporter(config, scraper, web_config)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, web_config.reload)
    loop.set_exception_handler(app.logs.loop_error)
    await app.start(sockets)
    log.info("listening on %s (%s), metrics at %s", ", ".join(describe(s) for s in sockets),
             describe_tls(web_config.config.ssl), config.telemetry_path)
    try:
        await stop.wait()
    finally:
        await app.stop()


# The exporter's own process_* metrics (CPU, memory, fds), as every exporter has.
_PROCESS = ProcessCollector(registry=None)
