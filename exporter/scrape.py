"""Run the enabled collectors for a scrape: concurrently, each within a time limit, then
the joins between them, then what they learn for the next collection. One way through:

    collect() of every collector  ->  joins (pure: new values)  ->  Snapshot  ->  learn()

* A collector that raises or overruns its limit (`--scrape.timeout`) is reported as
  failed (`gunicorn_exporter_collector_success{collector} 0`); the others still answer.
* Scrapes that arrive while a collection is running share it (single flight), so two
  Prometheus servers scraping at once cost one collection. The collection is joined and
  learned from once, when every collector is done.
* A caller's own time limit (Prometheus' scrape timeout header) bounds only its own
  wait: when it runs out, that caller gets what has finished (joined as far as it can
  be), the collectors still running count as failed *in its answer*, and they go on for
  everyone else. A client that sends a timeout of 0 cannot cut the collection short for
  the others.
* A collector whose previous run is still going (stuck in a thread on a slow read) is
  not started a second time; the new scrape waits for the same run, within its limit.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from typing import Mapping

from exporter.collectors.base import Collector, Join
from exporter.snapshot import CollectorResult, Snapshot

log = logging.getLogger(__name__)


class Scraper:
    def __init__(self, collectors: list[Collector], timeout: float = 8.0,
                 joins: Mapping[str, Join] | None = None):
        self.collectors = collectors            # each after the ones its join reads
        self.timeout = timeout
        self.joins = dict(joins or {})
        self._tasks: dict[str, asyncio.Task] = {}
        self._complete: asyncio.Task | None = None   # the collection, joined and learned
        self._started = 0.0
        self._collected_at = 0.0
        self._running: dict[str, asyncio.Task] = {}
        self._last_error: dict[str, str | None] = {}
        self._join_failed: set[str] = set()

    async def scrape(self, timeout: float | None = None) -> Snapshot:
        """The current collection as far as it got within `timeout` (this caller's own
        limit; the collection itself runs within --scrape.timeout)."""
        if self._complete is None or self._complete.done():
            self._start_collection()
        # This caller assembles from *this* collection even if a later caller starts the
        # next one while it waits.
        tasks, complete = self._tasks, self._complete
        started, collected_at = self._started, self._collected_at
        if timeout is None or timeout >= self.timeout:
            return await asyncio.shield(complete)   # every collector ends within its limit
        wait = max(0.0, timeout)
        await asyncio.wait([complete], timeout=wait)
        if complete.done():
            return complete.result()
        return self._assemble(tasks, started, collected_at, wait)

    def _start_collection(self) -> None:
        loop = asyncio.get_running_loop()
        self._started = time.monotonic()
        self._collected_at = time.time()
        self._tasks = {c.name: loop.create_task(self._run_one(c, self.timeout))
                       for c in self.collectors}
        self._complete = loop.create_task(
            self._completed(self._tasks, self._started, self._collected_at))

    async def _completed(self, tasks: dict[str, asyncio.Task], started: float,
                         collected_at: float) -> Snapshot:
        """Once every collector is done: the joined snapshot, and each collector learns."""
        await asyncio.wait(list(tasks.values()))
        snap = self._assemble(tasks, started, collected_at, self.timeout)
        for c in self.collectors:
            try:
                c.learn(snap)
            except Exception as e:  # noqa: BLE001 - never fail the scrape
                log.warning("collector %s: learning from the collection failed: %r", c.name, e)
        return snap

    def _assemble(self, tasks: dict[str, asyncio.Task], started: float, collected_at: float,
                  wait: float) -> Snapshot:
        results: dict[str, CollectorResult] = {}
        for c in self.collectors:
            task = tasks[c.name]
            if task.done() and not task.cancelled() and task.exception() is None:
                results[c.name] = self._joined(task.result(), results)
            else:
                results[c.name] = CollectorResult(
                    c.name, False, time.monotonic() - started,
                    error=f"not done within this scrape's own time limit ({wait:.1f}s)")
        return Snapshot(results=results, collected_at=collected_at)

    def _joined(self, result: CollectorResult, results: dict[str, CollectorResult]
                ) -> CollectorResult:
        """The result with its join applied, reading the results joined before it (a
        collector comes after those its join reads). A join that raises leaves the
        collector's own data, and says so once."""
        join = self.joins.get(result.name)
        if join is None or not result.success:
            return result
        others = {n: results[n].data for n in join.reads
                  if n in results and results[n].success}
        try:
            data = join.fn(result.data, others)
        except Exception as e:  # noqa: BLE001 - never fail the scrape
            if result.name not in self._join_failed:
                self._join_failed.add(result.name)
                log.warning("collector %s: joining with %s failed: %r", result.name,
                            ", ".join(join.reads), e, exc_info=True)
            return result
        return dataclasses.replace(result, data=data)

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
