"""The collectors and their registry: one table says which collectors exist, whether each
is on by default, how it is built from the settings, and which joins make its data of a
scrape from other collectors' (node_exporter's `registerCollector` is the model).

Every collector has the same shape (`base.Collector`): `start()` once before the first
scrape, `collect()` per scrape (concurrently, each within the scrape's time limit),
`learn(snapshot)` once a collection is complete, `stop()` once at shutdown. A join
(`base.Join`) is a pure function declared here: it takes this scrape's results and
returns a new value, after the results it reads. The scrape flows one way
(exporter/scrape.py): collect, join, render; and what a collection found aims the next
one (learn).

What lasts between scrapes and is shared: which app a pid, listener or cgroup belongs to
(`attribution.AppIndex`), written by the gunicorn collector after each collection, read
by the oom and logs collectors.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

from exporter.collectors import advice, postgres
from exporter.collectors.attribution import AppIndex
from exporter.collectors.base import Collector, Join
from exporter.collectors.gunicorn import GunicornCollector
from exporter.collectors.logs import LogsCollector
from exporter.collectors.netstat import NetstatCollector
from exporter.collectors.oom import OomCollector
from exporter.collectors.sampler import SamplerCollector
from exporter.collectors.stacks import StacksCollector
from exporter.collectors.statsd import StatsdCollector
from exporter.doctor.model import Thresholds
from exporter.linux.procfs import ProcFS


@dataclass
class Shared:
    """What collectors built for one exporter share: the proc root and the memory of
    which app a pid, listener or cgroup belongs to (written by the gunicorn collector,
    read by the oom and logs collectors)."""

    procfs: ProcFS
    index: AppIndex


# `cfg` below is the settings (exporter/config.py's Config, which imports this table
# for the --collector.NAME flags: hence no import of it here).
Build = Callable[[object, Shared], Collector]


@dataclass(frozen=True)
class Spec:
    default: bool
    help: str
    build: Build
    reads: tuple[str, ...] = ()      # the results its join reads: they are joined first
    join: Callable[[object], Callable] | None = None   # cfg -> the join's pure function


REGISTRY: dict[str, Spec] = {
    "gunicorn": Spec(
        True, "masters, workers, connections, heartbeats, listen queues",
        lambda cfg, sh: GunicornCollector(cfg.gunicorn_options(), sh.procfs, index=sh.index)),
    "netstat": Spec(
        True, "net.core.somaxconn and TCP listen overflow counters",
        lambda cfg, sh: NetstatCollector(sh.procfs)),
    "oom": Spec(
        True, "kernel OOM kills attributed to gunicorn apps (/dev/kmsg, cgroup and vmstat counters)",
        lambda cfg, sh: OomCollector(kmsg_path=cfg.kmsg_path or None, procfs=cfg.procfs,
                                     index=sh.index)),
    "logs": Spec(
        True, "error signatures counted in the log files named by --logs.file",
        lambda cfg, sh: LogsCollector(cfg.log_files, cfg.log_signatures,
                                      interval=cfg.log_poll_interval, max_line=cfg.log_max_line,
                                      index=sh.index, access_formats=cfg.log_access_formats,
                                      routes=cfg.request_routes(), procfs=cfg.procfs)),
    "statsd": Spec(
        True, "gunicorn's own statsd stream (--statsd-host) on --statsd.listen-address: requests, "
        "latency, status and log messages per app, senders attributed by the kernel",
        lambda cfg, sh: StatsdCollector(cfg.statsd_listen_address, cfg.statsd_prefixes,
                                        cfg.statsd_receive_buffer, sh.procfs)),
    "sampler": Spec(
        True, "listen queues and busy sync workers between scrapes, every --sampler.interval "
        "(peaks, queued seconds); --sampler.interval 0 turns it off",
        lambda cfg, sh: SamplerCollector(cfg.sampler_interval, cfg.sampler_peak_window,
                                         proc=cfg.procfs)),
    "postgres": Spec(
        True, "pg_stat_activity of --postgres.dsn servers, connections attributed to workers, budgets",
        lambda cfg, sh: postgres.PostgresCollector(cfg.postgres_options(), sh.procfs),
        reads=("gunicorn",),
        join=lambda cfg: functools.partial(postgres.join, options=cfg.postgres_options())),
    "advice": Spec(
        True, "the doctor's configuration rules on every scrape: gunicorn_advice (docs/doctor.md)",
        lambda cfg, sh: advice.advice_collector(cfg),
        reads=("gunicorn", "netstat", "postgres"),
        join=lambda cfg: functools.partial(advice.join, thresholds=Thresholds.from_config(cfg))),
    "stacks": Spec(
        False, "the stacks of stuck workers and the last stack of every worker killed at its "
        "timeout, read with py-spy (needs CAP_SYS_PTRACE or the workers' user; docs/security.md)",
        lambda cfg, sh: StacksCollector(cfg.stacks_options(), proc=cfg.procfs)),
}


def build(cfg) -> tuple[list[Collector], dict[str, Join]]:
    """The enabled collectors, each after the ones its join reads, and their joins."""
    shared = Shared(ProcFS(cfg.procfs), AppIndex())
    names = [n for n in ordered(REGISTRY) if cfg.collectors.get(n)]
    joins = {n: Join(REGISTRY[n].reads, REGISTRY[n].join(cfg)) for n in names
             if REGISTRY[n].join is not None}
    return [REGISTRY[n].build(cfg, shared) for n in names], joins


def ordered(specs: dict[str, Spec]) -> list[str]:
    """Names in the order their joins need (what a join reads first), otherwise in table
    order."""
    out: list[str] = []

    def visit(name: str, path: tuple[str, ...]) -> None:
        if name in out:
            return
        if name in path:
            raise ValueError(f"joins read each other: {' -> '.join(path + (name,))}")
        for dep in specs[name].reads:
            visit(dep, path + (name,))
        out.append(name)
    for name in specs:
        visit(name, ())
    return out
