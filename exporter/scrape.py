"""Run the enabled collectors for a scrape: concurrently, each within a time limit.

* A collector that raises or overruns its limit (`--scrape.timeout`) is reported as
  failed (`gunicorn_exporter_collector_success{collector} 0`); the others still answer.
* Scrapes that arrive while a collection is running share it (single flight), so two
  Prometheus servers scraping at once cost one collection.
* A caller's own time limit (Prometheus' scrape timeout header) bounds only its own
  wait: when it runs out, that caller gets what has finished, the collectors still
  running count as failed *in its answer*, and they go on for everyone else. A client
  that sends a timeout of 0 cannot cut the collection short for the others.
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
        self.collectors = collectors            # in dependency order (exporter/collectors)
        self.timeout = timeout
        self._tasks: dict[str, asyncio.Task] = {}
        self._started = 0.0
        self._collected_at = 0.0
        self._running: dict[str, asyncio.Task] = {}
        self._last_error: dict[str, str | None] = {}

    async def scrape(self, timeout: float | None = None) -> Snapshot:
        """The current collection as far as it got within `timeout` (this caller's own
        limit; the collection itself runs within --scrape.timeout)."""
        loop = asyncio.get_running_loop()
        if not self._tasks or all(t.done() for t in self._tasks.values()):
            self._started = time.monotonic()
            self._collected_at = time.time()
            self._tasks = {c.name: loop.create_task(self._run_one(c, self.timeout))
                           for c in self.collectors}
        # This caller assembles from *this* collection even if a later caller starts the
        # next one while it waits.
        tasks, started, collected_at = self._tasks, self._started, self._collected_at
        pending = [t for t in tasks.values() if not t.done()]
        if timeout is None or timeout >= self.timeout:
            wait = self.timeout       # every collector ends within its own limit: wait for all
            if pending:
                await asyncio.wait(pending)
        else:
            wait = max(0.0, timeout)
            if pending:
                await asyncio.wait(pending, timeout=wait)
        return self._assemble(tasks, started, collected_at, wait)

    def _assemble(self, tasks: dict[str, asyncio.Task], started: float, collected_at: float,
                  wait: float) -> Snapshot:
        snap = Snapshot(collected_at=collected_at)
        for c in self.collectors:
            task = tasks[c.name]
            if task.done() and not task.cancelled() and task.exception() is None:
                snap.results[c.name] = task.result()
            else:
                snap.results[c.name] = CollectorResult(
                    c.name, False, time.monotonic() - started,
                    error=f"not done within this scrape's own time limit ({wait:.1f}s)")
        # Cross-collector joins (e.g. Postgres backends attributed to gunicorn workers)
        # run once the collectors are in, in dependency order: `finish` may add to its data.
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
