"""The doctor's rules in the daemon: `gunicorn_advice{app, id, rule, severity} 1`.

`AdviceCollector` (named `advice`, registered in exporter/collectors/__init__.py after
the collectors it reads) has the shape of every collector. Its `collect()` reads the
host facts (facts.py) in a thread for the masters of the previous scrape, again when
that set of masters changes and at least every `FACTS_TTL` seconds; its `finish()`, once
the gunicorn, netstat and postgres data of the scrape are in, remembers the collection
before this one (so W1 compares two scrapes), evaluates the rules and leaves the
findings as its data (`AdviceSnapshot`), which exporter/metrics/ renders like any
other collector's. A scrape whose advice collector failed or ran out of time exports no
advice.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from exporter.collectors.attribution import gunicorn_data
from exporter.collectors.base import Collector
from exporter.doctor.evaluate import evaluate, view_of
from exporter.doctor.facts import read_facts
from exporter.doctor.model import Facts, Thresholds
from exporter.linux.procfs import ProcFS
from exporter.snapshot import AdviceSnapshot, AppSnapshot, GunicornSnapshot, Snapshot

FACTS_TTL = 60.0


@dataclass
class AdviceContext:
    """What collect() read for finish(), where the other collectors' results are known."""
    facts: Facts


class AdviceCollector(Collector):
    name = "advice"
    requires = ("gunicorn", "netstat", "postgres")

    def __init__(self, thresholds: Thresholds | None = None, procfs: ProcFS | None = None,
                 nginx_config: str = ""):
        self.thresholds = thresholds or Thresholds()
        self.procfs = procfs or ProcFS()
        self.nginx_config = nginx_config
        self._masters: list[AppSnapshot] = []
        self._facts = Facts()
        self._facts_key: frozenset | None = None
        self._facts_at = float("-inf")
        self._seen: GunicornSnapshot | None = None
        self._seen_at = 0.0
        self._previous: GunicornSnapshot | None = None
        self._previous_at = 0.0

    async def collect(self) -> AdviceContext:
        masters = self._masters
        key = frozenset((a.master_pid, a.master_start_time) for a in masters)
        if key != self._facts_key or time.monotonic() - self._facts_at > FACTS_TTL:
            self._facts = await asyncio.to_thread(read_facts, self.procfs, masters,
                                                  self.nginx_config)
            self._facts_key, self._facts_at = key, time.monotonic()
        return AdviceContext(self._facts)

    def finish(self, snapshot: Snapshot) -> None:
        result = snapshot.results.get(self.name)
        g = gunicorn_data(snapshot)
        if result is None or not isinstance(result.data, AdviceContext) or g is None:
            return
        if g is not self._seen:  # a new collection (shared scrapes finish the same one twice)
            self._previous, self._previous_at = self._seen, self._seen_at
            self._seen, self._seen_at = g, snapshot.collected_at
            self._masters = [a for a in g.apps if a.up and a.master_pid]
        interval = self._seen_at - self._previous_at if self._previous else None
        view = view_of(snapshot, self._previous, interval, result.data.facts, self.thresholds)
        findings = [] if view is None else evaluate(view)
        result.data = AdviceSnapshot(sorted({(f.app, f.id, f.rule, f.severity)
                                             for f in findings}))


def advice_collector(config) -> AdviceCollector:
    return AdviceCollector(Thresholds.from_config(config), ProcFS(config.procfs),
                           config.doctor_nginx_config)

