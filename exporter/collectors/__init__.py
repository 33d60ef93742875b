"""The collectors and their registry: one table says which collectors exist, whether each
is on by default, what it reads from the others, and how it is built from the settings
(node_exporter's `registerCollector` is the model).

Every collector has the same shape (`base.Collector`): `start()` once before the first
scrape, `collect()` per scrape (concurrently, each within the scrape's time limit),
`finish(snapshot)` after every collector of the scrape is done (in dependency order:
a collector's `requires` come first), and `stop()` once at shutdown.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from exporter.collectors.attribution import AppIndex
from exporter.collectors.base import Collector
from exporter.collectors.gunicorn import GunicornCollector
from exporter.collectors.logs import LogsCollector
from exporter.collectors.netstat import NetstatCollector
from exporter.collectors.oom import OomCollector
from exporter.collectors.postgres import PostgresCollector
from exporter.collectors.sampler import SamplerCollector
from exporter.collectors.statsd import StatsdCollector
from exporter.linux.procfs import ProcFS

if TYPE_CHECKING:
    from exporter.config import Config


@dataclass
class Shared:
    """What collectors built for one exporter share: the proc root and the memory of
    which app a pid, listener or cgroup belongs to (written by the gunicorn collector,
    read by the oom and logs collectors)."""

    procfs: ProcFS
    index: AppIndex


@dataclass(frozen=True)
class Spec:
    default: bool
    help: str
    build: Callable[["Config", Shared], Collector]
    requires: tuple[str, ...] = ()   # collectors whose data this one's finish() reads


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
                                     index=sh.index),
        requires=("gunicorn",)),
    "logs": Spec(
        True, "error signatures counted in the log files named by --logs.file",
        lambda cfg, sh: LogsCollector(cfg.log_files, cfg.log_signatures,
                                      interval=cfg.log_poll_interval, max_line=cfg.log_max_line,
                                      index=sh.index, access_formats=cfg.log_access_formats),
        requires=("gunicorn",)),
    "statsd": Spec(
        True, "gunicorn's own statsd stream (--statsd-host) on --statsd.listen-address: requests, "
        "latency, status and log messages per app, senders attributed by the kernel",
        lambda cfg, sh: StatsdCollector(cfg.statsd_listen_address, cfg.statsd_prefixes,
                                        cfg.statsd_receive_buffer, sh.procfs),
        requires=("gunicorn",)),
    "sampler": Spec(
        True, "listen queues and busy sync workers between scrapes, every --sampler.interval "
        "(peaks, queued seconds); --sampler.interval 0 turns it off",
        lambda cfg, sh: SamplerCollector(cfg.sampler_interval, cfg.sampler_peak_window,
                                         proc=cfg.procfs),
        requires=("gunicorn",)),
    "postgres": Spec(
        True, "pg_stat_activity of --postgres.dsn servers, connections attributed to workers, budgets",
        lambda cfg, sh: PostgresCollector(cfg.postgres_options(), sh.procfs),
        requires=("gunicorn",)),
    "advice": Spec(
        True, "the doctor's configuration rules on every scrape: gunicorn_advice (docs/doctor.md)",
        lambda cfg, sh: _advice(cfg),
        requires=("gunicorn", "netstat", "postgres")),
}


def _advice(cfg: "Config") -> Collector:
    from exporter.doctor.daemon import advice_collector  # the doctor imports this module
    return advice_collector(cfg)


def build(cfg: "Config") -> list[Collector]:
    """The enabled collectors, each after the ones it requires."""
    shared = Shared(ProcFS(cfg.procfs), AppIndex())
    return [REGISTRY[name].build(cfg, shared) for name in ordered(REGISTRY)
            if cfg.collectors.get(name)]


def ordered(specs: dict[str, Spec]) -> list[str]:
    """Names in dependency order (requires first), otherwise in table order."""
    out: list[str] = []

    def visit(name: str, path: tuple[str, ...]) -> None:
        if name in out:
            return
        if name in path:
            raise ValueError(f"collectors require each other: {' -> '.join(path + (name,))}")
        for dep in specs[name].requires:
            visit(dep, path + (name,))
        out.append(name)
    for name in specs:
        visit(name, ())
    return out
