"""`gunicorn-exporter doctor`: say, per app, what to change before it fails.

With the daemon's discovery, privileges and settings (flags, environment, config file),
it builds the gunicorn and netstat collectors (and postgres with `--postgres.dsn`),
collects twice `--doctor.interval` apart (once with 0), reads the host facts
(exporter/doctor/facts.py), runs every rule and prints the findings: as text, or with
`--format json` as a list of objects (docs/doctor.schema.json). It only reads: /proc,
netlink, the control socket's `show` queries, pg_stat_activity, nginx's config files.

Exit status: 0 no findings, 1 warnings only, 2 at least one critical finding (also
argparse's code for bad flags), 3 when the gunicorn collection itself failed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import textwrap

from exporter.collectors import REGISTRY, build
from exporter.config import ConfigError, _build, build_parser
from exporter.doctor.evaluate import evaluate, view_of
from exporter.doctor.facts import read_facts
from exporter.doctor.model import Finding, Thresholds
from exporter.linux.procfs import ProcFS
from exporter.scrape import Scraper
from exporter.snapshot import GunicornSnapshot, HostSnapshot, PostgresSnapshot

log = logging.getLogger("exporter.doctor")
EXIT_CANNOT_CHECK = 3
# collectors the doctor runs: it reads settings and the host, not events (OOM kills, logs)
DOCTOR_COLLECTORS = ("gunicorn", "netstat", "postgres")


# settings of the daemon only: the doctor serves nothing, samples nothing, tails nothing
DAEMON_ONLY = ("web.", "collector.", "sampler.", "oom.", "logs.", "statsd.")


def parser():
    p = build_parser(hidden=DAEMON_ONLY)
    p.prog = "gunicorn-exporter doctor"
    p.description = ("Configuration advice for every gunicorn on this host: each finding with "
                     "the failure mode it prevents, its evidence and what to change "
                     "(docs/doctor.md). Exit 0: none, 1: warnings, 2: critical.")
    p.add_argument("--format", choices=("text", "json"), default="text",
                   help="text for people, json for machines (docs/doctor.schema.json)")
    return p


def parse(argv: list[str]):
    """(Config, format); bad input: one message listing every problem, exit 2."""
    p = parser()
    args, unknown = p.parse_known_args(argv)
    errors = [f"unrecognized arguments: {' '.join(unknown)}"] if unknown else []
    cfg = _build(args, os.environ, errors)
    if errors:
        p.error("; ".join(errors))
    cfg.collectors = {name: name in DOCTOR_COLLECTORS for name in REGISTRY}
    return cfg, args.format


async def collect(cfg) -> tuple[list[Finding] | None, list[str]]:
    """Findings (None: the gunicorn collection failed) and notes for stderr."""
    try:
        collectors, joins = build(cfg)
    except ConfigError as e:
        parser().error(str(e))
    if not (cfg.postgres_dsns or cfg.postgres_dsn_files):
        collectors = [c for c in collectors if c.name != "postgres"]
    scraper = Scraper(collectors, cfg.scrape_timeout, joins)
    notes: list[str] = []
    started = []
    try:
        for c in collectors:
            await c.start()
            started.append(c)
        first = await scraper.scrape()
        snap, previous, interval = first, None, None
        if cfg.doctor_interval > 0:
            await asyncio.sleep(cfg.doctor_interval)   # the second sample, for W1
            snap = await scraper.scrape()
            previous = first.data("gunicorn", GunicornSnapshot)
            interval = snap.collected_at - first.collected_at
        for name, r in snap.results.items():
            if not r.success:
                notes.append(f"collector {name} failed: {r.error}")
        g = snap.data("gunicorn", GunicornSnapshot)
        if g is None:
            return None, notes
        if g.permission_denied:
            notes.append(f"not allowed to read /proc entries of {g.permission_denied} gunicorn "
                         "process(es): run as root or as gunicorn's user (docs/configuration.md#privileges)")
        pg = snap.data("postgres", PostgresSnapshot)
        for s in pg.servers if pg is not None else []:
            if not s.up:
                notes.append(f"postgres {s.server} is down or refused the login: no DB checks for it")
        apps = [a for a in g.apps if a.up and a.master_pid]
        facts = await asyncio.to_thread(read_facts, ProcFS(cfg.procfs), apps, cfg.doctor_nginx_config,
                                        cfg.doctor_caddy_config)
        if facts.host is not None:
            h = facts.host
            notes.append(f"host (psutil): {h.cpus} CPUs, {h.memory_total / 2**30:.1f} GiB memory "
                         f"({h.memory_available / 2**30:.1f} GiB available), swap "
                         f"{h.swap_used / 2**30:.1f} of {h.swap_total / 2**30:.1f} GiB used")
        for proxy, read, path in (("nginx config", facts.nginx, cfg.doctor_nginx_config),
                                  ("Caddyfile", facts.caddy, cfg.doctor_caddy_config)):
            if read is not None:
                notes.extend(f"{proxy}: {p}" for p in read.problems
                             if not (p.startswith(path) and "No such file" in p))
        view = view_of(g, snap.data("netstat", HostSnapshot), pg, previous, interval, facts,
                       Thresholds.from_config(cfg))
        notes.append(f"checked {len(view.apps)} app(s): " + (", ".join(a.app for a in view.apps) or "none found"))
        return evaluate(view), notes
    finally:
        for c in reversed(started):
            try:
                await asyncio.wait_for(c.stop(), 15)
            except Exception:  # noqa: BLE001 - stop the others anyway
                log.debug("collector %s did not stop cleanly", c.name, exc_info=True)


def render_text(findings: list[Finding]) -> str:
    if not findings:
        return "No findings.\n"
    out = []
    for app in sorted({f.app for f in findings}):
        mine = [f for f in findings if f.app == app]
        out.append(f"{app}: {len(mine)} finding(s)")
        for f in mine:
            out.append(f"  [{f.severity}] {f.id} {f.rule}")
            for key, e in f.evidence.items():
                out.append(f"    {key} = {_value(e.value)}  ({e.source})")
            out.extend(textwrap.wrap(f.advice, 96, initial_indent="    advice: ",
                                     subsequent_indent="            "))
        out.append("")
    return "\n".join(out)


def _value(v) -> str:
    if isinstance(v, list):
        return ", ".join(_value(x) for x in v) or "none"
    if isinstance(v, float):
        return f"{v:g}"
    return "unknown" if v is None else str(v)


def exit_code(findings: list[Finding]) -> int:
    severities = {f.severity for f in findings}
    return 2 if "critical" in severities else (1 if severities else 0)


def main(argv: list[str] | None = None) -> int:
    cfg, fmt = parse(sys.argv[1:] if argv is None else argv)
    cfg.use_procfs()
    logging.basicConfig(level=getattr(logging, cfg.log_level.upper()), stream=sys.stderr,
                        format="ts=%(asctime)s level=%(levelname)s logger=%(name)s msg=%(message)r")
    findings, notes = asyncio.run(collect(cfg))
    for note in notes:
        print(f"gunicorn-exporter doctor: {note}", file=sys.stderr)
    if findings is None:
        print("gunicorn-exporter doctor: the gunicorn collection failed; nothing was checked",
              file=sys.stderr)
        return EXIT_CANNOT_CHECK
    if fmt == "json":
        sys.stdout.write(json.dumps([f.as_json() for f in findings], indent=2) + "\n")
    else:
        sys.stdout.write(render_text(findings))
    return exit_code(findings)
