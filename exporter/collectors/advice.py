"""The advice collector: the doctor's rules (exporter/doctor/) on every scrape,
`gunicorn_advice{app, id, rule, severity} 1`.

* `collect()` reads the host facts (exporter/doctor/facts.py) in a thread, for the
  masters of the previous collection, again when that set of masters changes and at
  least every FACTS_TTL seconds, and hands them on with the previous collection (W1
  compares two collections);
* `join` (declared in exporter/collectors/__init__.py, after the gunicorn, netstat and
  postgres results it reads) evaluates the rules over this scrape: a pure function of
  the results, the facts and the previous collection, whose findings are the advice
  collector's data (`AdviceSnapshot`, rendered like any other collector's);
* `learn()` remembers the collection for the next one.

A scrape whose advice collector failed or ran out of time exports no advice.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Mapping

from exporter.collectors.base import Collector
from exporter.doctor.evaluate import evaluate, view_of
from exporter.doctor.facts import read_facts
from exporter.doctor.model import Facts, Thresholds
from exporter.linux.procfs import ProcFS
from exporter.snapshot import (AdviceSnapshot, AppSnapshot, GunicornSnapshot, HostSnapshot,
                               PostgresSnapshot, Snapshot)

FACTS_TTL = 60.0


@dataclass(frozen=True)
class AdviceContext:
    """What collect() hands the join: the host facts, and the previous collection."""
    facts: Facts
    previous: GunicornSnapshot | None = None
    previous_at: float = 0.0


class AdviceCollector(Collector):
    name = "advice"

    def __init__(self, procfs: ProcFS | None = None, nginx_config: str = "",
                 caddy_config: str = ""):
        self.procfs = procfs or ProcFS()
        self.nginx_config = nginx_config
        self.caddy_config = caddy_config
        self._masters: list[AppSnapshot] = []
        self._facts = Facts()
        self._facts_key: frozenset | None = None
        self._facts_at = float("-inf")
        self._last: GunicornSnapshot | None = None      # the last collection learned from
        self._last_at = 0.0

    async def collect(self) -> AdviceContext:
        masters = self._masters
        key = frozenset((a.master_pid, a.master_start_time) for a in masters)
        if key != self._facts_key or time.monotonic() - self._facts_at > FACTS_TTL:
            self._facts = await asyncio.to_thread(read_facts, self.procfs, masters,
                                                  self.nginx_config, self.caddy_config)
            self._facts_key, self._facts_at = key, time.monotonic()
        return AdviceContext(self._facts, self._last, self._last_at)

    def learn(self, snapshot: Snapshot) -> None:
        g = snapshot.data("gunicorn", GunicornSnapshot)
        if g is not None:
            self._last, self._last_at = g, snapshot.collected_at
            self._masters = [a for a in g.apps if a.up and a.master_pid]


def join(ctx: AdviceContext, others: Mapping[str, object], *, thresholds: Thresholds,
         now: float | None = None) -> AdviceSnapshot:
    """The findings of every rule over this scrape's results."""
    g = others.get("gunicorn")
    if not isinstance(g, GunicornSnapshot):
        return AdviceSnapshot()
    now = time.time() if now is None else now
    host, pg = others.get("netstat"), others.get("postgres")
    view = view_of(g, host if isinstance(host, HostSnapshot) else None,
                   pg if isinstance(pg, PostgresSnapshot) else None,
                   ctx.previous, now - ctx.previous_at if ctx.previous else None,
                   ctx.facts, thresholds)
    return AdviceSnapshot(sorted({(f.app, f.id, f.rule, f.severity) for f in evaluate(view)}))


def advice_collector(config) -> AdviceCollector:
    return AdviceCollector(ProcFS(config.procfs), config.doctor_nginx_config,
                           config.doctor_caddy_config)
