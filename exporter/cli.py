"""Command-line entry point: parse settings, build collectors, serve until stopped."""

from __future__ import annotations

import asyncio
import logging
import sys

from exporter import __version__
from exporter.collectors import build
from exporter.config import ConfigError, build_parser, load
from exporter.webconfig import WebConfigError, WebConfigHolder
from exporter.scrape import Scraper

log = logging.getLogger("exporter")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["demo"]:  # `gunicorn-exporter demo`: a throwaway gunicorn to look at
        from exporter.demo import main as demo_main
        return demo_main(args[1:])
    if args[:1] == ["doctor"]:  # `gunicorn-exporter doctor`: configuration advice (docs/doctor.md)
        from exporter.doctor.main import main as doctor_main
        return doctor_main(args[1:])
    config = load(argv)
    config.use_procfs()
    logging.basicConfig(
        level=getattr(logging, config.log_level.upper()),
        format="ts=%(asctime)s level=%(levelname)s logger=%(name)s msg=%(message)r",
        stream=sys.stderr,
    )
    try:
        collectors, joins = build(config)
        web = WebConfigHolder(config.web_config_file)
    except (ConfigError, WebConfigError) as e:  # a DSN file or a web config that is bad
        build_parser().error(str(e))
    from exporter.http import listening_sockets, serve
    try:
        sockets = listening_sockets(config)
    except OSError as e:
        log.error("%s", e)
        return 1
    log.info("starting gunicorn-exporter %s with collectors %s", __version__,
             ",".join(c.name for c in collectors) or "(none)")
    asyncio.run(serve(config, Scraper(collectors, config.scrape_timeout, joins), web, sockets))
    return 0
