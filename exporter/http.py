"""The HTTP side: /metrics, a landing page at /, and /-/healthy.

`create_app(config)` builds the aiohttp application; collectors and the scraper live
in typed AppKeys. Rendering to text happens on the loop: it is pure CPU over a
finished snapshot and measured in bench/ (about 5 ms for an app with 64 workers).
"""

from __future__ import annotations

import html

from aiohttp import web
from prometheus_client import exposition
from prometheus_client.core import Metric
from prometheus_client import ProcessCollector

from exporter import __version__
from exporter.config import Config
from exporter.metrics import render
from exporter.scrape import Scraper

SCRAPER = web.AppKey("scraper", Scraper)
CONFIG = web.AppKey("config", Config)
# Leave Prometheus time to receive the answer after the collection ends.
SCRAPE_TIMEOUT_OFFSET = 0.5


class _Families:
    """The minimal registry interface prometheus_client's encoders need."""

    def __init__(self, families: list[Metric]):
        self._families = families

    def collect(self):
        return iter(self._families)


async def metrics(request: web.Request) -> web.Response:
    scraper = request.app[SCRAPER]
    limit = None
    header = request.headers.get("X-Prometheus-Scrape-Timeout-Seconds")
    if header:
        try:
            limit = max(0.5, float(header) - SCRAPE_TIMEOUT_OFFSET)
        except ValueError:
            pass
    snapshot = await scraper.scrape(limit)
    families = list(render(snapshot)) + list(_PROCESS.collect())
    encoder, content_type = exposition.choose_encoder(request.headers.get("Accept", ""))
    body = encoder(_Families(families))
    resp = web.Response(body=body)
    resp.headers["Content-Type"] = content_type
    return resp


async def landing(request: web.Request) -> web.Response:
    path = html.escape(request.app[CONFIG].telemetry_path)
    text = f"""<!doctype html>
<html><head><title>gunicorn-exporter</title></head>
<body><h1>gunicorn-exporter {__version__}</h1>
<p>Prometheus exporter that watches gunicorn masters and workers from outside.</p>
<ul><li><a href="{path}">Metrics</a></li><li><a href="/-/healthy">Health</a></li></ul>
</body></html>
"""
    return web.Response(text=text, content_type="text/html")


async def healthy(_request: web.Request) -> web.Response:
    return web.Response(text="OK\n")


async def _lifecycle(app: web.Application):
    """Every collector's start() before the first scrape, stop() at shutdown (reversed)."""
    started = []
    try:
        for c in app[SCRAPER].collectors:
            await c.start()
            started.append(c)
        yield
    finally:
        for c in reversed(started):
            await c.stop()


def create_app(config: Config, scraper: Scraper) -> web.Application:
    app = web.Application()
    app[CONFIG] = config
    app[SCRAPER] = scraper
    app.cleanup_ctx.append(_lifecycle)
    app.router.add_get("/", landing)
    app.router.add_get(config.telemetry_path, metrics)
    app.router.add_get("/-/healthy", healthy)
    return app


# The exporter's own process_* metrics (CPU, memory, fds), as every exporter has.
_PROCESS = ProcessCollector(registry=None)
