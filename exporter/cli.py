"""Command-line entry point: parse settings, build collectors, serve until stopped."""

from __future__ import annotations

import logging
import sys

from aiohttp import web

from exporter import __version__
from exporter.collectors.gunicorn import GunicornCollector, GunicornOptions
from exporter.collectors.attribution import AppIndex
from exporter.collectors.logs import LogsCollector
from exporter.collectors.netstat import NetstatCollector
from exporter.collectors.oom import OomCollector
from exporter.collectors.postgres import PostgresCollector
from exporter.config import (Config, ConfigError, build_parser, database_endpoints, load,
                             postgres_options)
from exporter.http import create_app
from exporter.linux.procfs import ProcFS
from exporter.scrape import Scraper

log = logging.getLogger("exporter")


def build_collectors(config: Config) -> list:
    procfs = ProcFS(config.procfs)
    recent = AppIndex()  # pids/listeners/cgroups of gunicorn apps, for oom and logs alike
    pg = postgres_options(config)
    db_ports, db_paths = database_endpoints(config, pg)
    available = {
        "gunicorn": lambda: GunicornCollector(GunicornOptions(
            db_ports=db_ports,
            db_socket_paths=db_paths,
            app_names=config.app_names,
            control_socket=config.control_socket,
            control_timeout=config.control_timeout,
            forget_after=config.forget_after,
            expected_apps=config.expected_apps,
            users=config.users,
            include=config.include,
            exclude=config.exclude,
            max_masters=config.max_masters,
        ), procfs),
        "netstat": lambda: NetstatCollector(procfs),
        # after "gunicorn": they learn its pids in finish(), which runs in this order
        "oom": lambda: OomCollector(kmsg_path=config.kmsg_path or None, procfs=config.procfs,
                                    index=recent),
        "logs": lambda: LogsCollector(config.log_files, config.log_signatures,
                                      interval=config.log_poll_interval,
                                      max_line=config.log_max_line, index=recent),
        "postgres": lambda: PostgresCollector(pg),
    }
    return [make() for name, make in available.items() if config.collectors.get(name)]


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["demo"]:  # `gunicorn-exporter demo`: a throwaway gunicorn to look at
        from exporter.demo import main as demo_main
        return demo_main(args[1:])
    config = load(argv)
    logging.basicConfig(
        level=getattr(logging, config.log_level.upper()),
        format="ts=%(asctime)s level=%(levelname)s logger=%(name)s msg=%(message)r",
        stream=sys.stderr,
    )
    host, port = config.host_port
    try:
        collectors = build_collectors(config)
    except ConfigError as e:  # e.g. a DSN file that became unreadable
        build_parser().error(str(e))
    log.info("starting gunicorn-exporter %s on %s%s with collectors %s", __version__,
             config.listen_address, config.telemetry_path,
             ",".join(c.name for c in collectors) or "(none)")
    app = create_app(config, Scraper(collectors, config.scrape_timeout))
    try:
        web.run_app(app, host=host, port=port, print=None, access_log=None,
                    handle_signals=True)
    except OSError as e:
        log.error("cannot listen on %s: %s", config.listen_address, e.strerror or e)
        return 1
    return 0
