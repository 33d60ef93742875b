"""The HTTP side: /metrics, a landing page at /, and /-/healthy, on
`exporter/httpserver.py`, with TLS and basic auth from `--web.config.file`
(`exporter/webconfig.py`).

Rendering and encoding happen on the loop: pure CPU over a finished snapshot, measured
in bench/ (about 2 ms for an app with 64 workers; the encoder is our own,
exporter/metrics/encode.py). Answers are gzipped when
the client accepts it. Log lines about the same problem (auth failures, handler errors)
are rate-limited.
"""

from __future__ import annotations

import asyncio
import gzip
import html
import logging
import resource
import signal
import time

from prometheus_client import ProcessCollector

from exporter import __version__
from exporter.httpserver import HTTPServer, Request, Response
from exporter.metrics import render, render_web
from exporter.metrics.encode import choose
from exporter.scrape import Scraper
from exporter.webconfig import WebConfigHolder

log = logging.getLogger(__name__)

# Leave Prometheus time to receive the answer after its wait ends.
SCRAPE_TIMEOUT_OFFSET = 0.5
WEB_CONFIG_POLL = 5.0          # seconds between checks for a changed web config or certificate
GZIP_MIN = 1024


class RateLimitedLog:
    """At most one log line per key and `interval`, with how many were left out."""

    def __init__(self, interval: float = 60.0):
        self.interval = interval
        self._last: dict[str, tuple[float, int]] = {}

    def warning(self, key: str, message: str, *args) -> None:
        now = time.monotonic()
        last, skipped = self._last.get(key, (0.0, 0))
        if now - last < self.interval:
            self._last[key] = (last, skipped + 1)
            return
        if len(self._last) > 1024:
            self._last.clear()
        self._last[key] = (now, 0)
        suffix = f" ({skipped} more like it in the last {self.interval:.0f}s)" if skipped else ""
        log.warning(message + suffix, *args)

    def loop_error(self, loop, context: dict) -> None:
        """The event loop's exception handler: asyncio's own errors (accept() out of
        file descriptors, a callback on a closed socket) on one line, rate-limited,
        instead of a traceback per connection."""
        exc = context.get("exception")
        what = context.get("message", "error")
        self.warning(f"loop:{what}:{type(exc).__name__}", "event loop: %s: %r", what, exc)


class Exporter:
    """The web application: routes, auth, compression, and the collectors' lifecycle."""

    def __init__(self, config, scraper: Scraper, web: WebConfigHolder | None = None):
        self.config = config
        self.scraper = scraper
        self.web = web or WebConfigHolder(None)
        self.logs = RateLimitedLog()
        self.server: HTTPServer | None = None
        self._watch: asyncio.Task | None = None
        self._started: list = []

    async def handle(self, request: Request) -> Response:
        path = request.path
        health = path == "/-/healthy"
        if self.web.config.auth and not (health and not self.config.web_health_auth):
            if not self.web.authorized(request.header("authorization")):
                self.logs.warning("auth", "unauthorized request for %s from %s",
                                  path[:100], request.peer)
                return self._finish(request, Response(
                    401, b"Unauthorized\n",
                    headers={"WWW-Authenticate": 'Basic realm="gunicorn-exporter"'}))
        if path == self.config.telemetry_path:
            response = await self.metrics(request)
        elif health:
            response = Response(200, b"OK\n")
        elif path == "/":
            response = self.landing()
        else:
            response = Response(404, b"Not Found\n")
        return self._finish(request, response)

    def _finish(self, request: Request, response: Response) -> Response:
        response.headers.update(self.web.config.headers)
        if len(response.body) >= GZIP_MIN and "gzip" in request.header("accept-encoding").lower():
            response.body = gzip.compress(response.body, compresslevel=1)
            response.headers["Content-Encoding"] = "gzip"
            response.headers["Vary"] = "Accept-Encoding"
        return response

    async def metrics(self, request: Request) -> Response:
        limit = None
        header = request.header("x-prometheus-scrape-timeout-seconds")
        if header:
            try:
                limit = max(0.0, float(header) - SCRAPE_TIMEOUT_OFFSET)
            except ValueError:
                pass
        snapshot = await self.scraper.scrape(limit)
        families = list(render(snapshot)) + list(_PROCESS.collect()) + \
            list(render_web(self.web.last_reload_ok))
        encoder, content_type = choose(request.header("accept"))
        return Response(200, encoder(families), content_type=content_type)

    def landing(self) -> Response:
        path = html.escape(self.config.telemetry_path)
        text = f"""<!doctype html>
<html><head><title>gunicorn-exporter</title></head>
<body><h1>gunicorn-exporter {__version__}</h1>
<p>Prometheus exporter that watches gunicorn masters and workers from outside.</p>
<ul><li><a href="{path}">Metrics</a></li><li><a href="/-/healthy">Health</a></li></ul>
</body></html>
"""
        return Response(200, text.encode(), content_type="text/html; charset=utf-8")

    # --- lifecycle -----------------------------------------------------------

    async def start(self, host: str | None, port: int) -> None:
        raise_fd_limit()
        for c in self.scraper.collectors:
            await c.start()
            self._started.append(c)
        self.server = HTTPServer(self.handle, host, port,
                                 ssl_context=self.web.server_context(),
                                 max_connections=self.config.web_max_connections,
                                 header_timeout=self.config.web_header_timeout)
        await self.server.start()
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
        if self.server is not None:
            await self.server.stop()
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


async def serve(config, scraper: Scraper, web: WebConfigHolder) -> None:
    """Run until SIGTERM or SIGINT; SIGHUP re-reads the web config."""
    app = Exporter(config, scraper, web)
    host, port = config.host_port
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, web.reload)
    loop.set_exception_handler(app.logs.loop_error)
    await app.start(host, port)
    log.info("listening on %s%s (%s)", config.listen_address, config.telemetry_path,
             "TLS" if web.config.ssl else "plain HTTP")
    try:
        await stop.wait()
    finally:
        await app.stop()


# The exporter's own process_* metrics (CPU, memory, fds), as every exporter has.
_PROCESS = ProcessCollector(registry=None)
