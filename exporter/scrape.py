"""Run the enabled collectors for a scrape: concurrently, each within a time limit.

* A collector that raises or overruns its limit is reported as failed
  (`gunicorn_exporter_collector_success{collector} 0`); the others still answer.
* Scrapes that arrive while a collection is running share it (single flight), so two
  Prometheus servers scraping at once cost one collection.
* A collector whose previous run is still going (stuck in a thread on a slow read) is
  not started a second time; the new scrape waits for the same run, within its limit.
"""

from __future__ import annotations

import asyncio
import logging
import time
from exporter.collectors.base import Collector
from exporter.snapshot import CollectorResult, Snapshot

log = logging.getLogger(__name__)


class Scraper:
    def __init__(self, collectors: list[Collector], timeout: float = 8.0):
        self.collectors = collectors
        self.timeout = timeout
        self._current: asyncio.Task | None = None
        self._running: dict[str, asyncio.Task] = {}
        self._last_error: dict[str, str | None] = {}

    async def scrape(self, timeout: float | None = None) -> Snapshot:
        """One shared collection; `timeout` (e.g. from Prometheus' scrape timeout) can only shorten it."""
        if self._current is None or self._current.done():
            limit = min(self.timeout, timeout) if timeout else self.timeout
            self._current = asyncio.get_running_loop().create_task(self._collect_all(limit))
        return await asyncio.shield(self._current)

    async def _collect_all(self, limit: float) -> Snapshot:
        snap = Snapshot(collected_at=time.time())
        results = await asyncio.gather(*(self._run_one(c, limit) for c in self.collectors))
        for r in results:
            snap.results[r.name] = r
        # Cross-collector joins (e.g. Postgres backends attributed to gunicorn workers)
        # run once every collector is done, in dependency order (the collectors list is
        # built that way: exporter/collectors/__init__.py): `finish` may add to its data.
        for c in self.collectors:
            result = snap.results.get(c.name)
            if result is not None and result.success:
                try:
                    c.finish(snap)
                except Exception as e:  # never fail the scrape
                    log.warning("collector %s: joining with other collectors failed: %r", c.name, e)
        return snap

    async def _run_one(self, collector: Collector, limit: float) -> CollectorResult:
        start = time.monotonic()
        task = self._running.get(collector.name)
        if task is None or task.done():
            task = asyncio.get_running_loop().create_task(collector.collect())
            self._running[collector.name] = task
        try:
            data = await asyncio.wait_for(asyncio.shield(task), limit)
        except asyncio.TimeoutError:
            return self._fail(collector.name, start, f"timed out after {limit:.1f}s")
        except asyncio.CancelledError:
            raise
        except Exception as e:  # one broken collector never fails the scrape
            log.debug("collector %s failed", collector.name, exc_info=True)
            return self._fail(collector.name, start, f"{type(e).__name__}: {e}")
        if self._last_error.get(collector.name):
            log.info("collector %s recovered", collector.name)
        self._last_error[collector.name] = None
        return CollectorResult(collector.name, True, time.monotonic() - start, data=data)

    def _fail(self, name: str, start: float, error: str) -> CollectorResult:
        # Log a failure once per change of error text, not on every scrape.
        if self._last_error.get(name) != error:
            log.warning("collector %s failed: %s", name, error)
        self._last_error[name] = error
        return CollectorResult(name, False, time.monotonic() - start, error=error)
