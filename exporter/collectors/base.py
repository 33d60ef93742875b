"""The one shape every collector has (see `exporter/collectors/__init__.py`), and the one
shape of a join between collectors."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping


class Collector:
    """A source of data for /metrics.

    Subclasses set `name` and implement `collect()`; the other steps default to doing
    nothing. The scraper (`exporter/scrape.py`) and the HTTP server's lifecycle
    (`exporter/http.py`) call them, never anything else.
    """

    name: str = ""

    async def start(self) -> None:
        """Begin background work (log tails, /dev/kmsg): once, before the first scrape."""

    async def collect(self) -> object:
        """One collection's data (a snapshot type of exporter/snapshot.py). The scrape
        never changes it afterwards: a join makes a new value."""
        raise NotImplementedError

    def learn(self, snapshot) -> None:
        """Once a collection is complete (joined, every collector in or out): aim the next
        collection at what this one found (the sampler's listeners, the statsd senders'
        processes, the advice rules' previous collection). Reads the snapshot, never
        changes it; once per collection, however many scrapes shared it."""

    async def stop(self) -> None:
        """Close connections and stop background work: once, at shutdown."""


@dataclass(frozen=True)
class Join:
    """A pure function that makes a collector's data of a scrape from its own and other
    collectors' data of the same scrape (Postgres backends attributed to gunicorn
    workers, the advice rules over gunicorn, netstat and postgres). It returns a new value
    and changes neither input; the results it `reads` are joined first. `fn(own,
    others)`: `others` maps each name of `reads` whose collector succeeded to its data."""

    reads: tuple[str, ...]
    fn: Callable[[object, Mapping[str, object]], object]
