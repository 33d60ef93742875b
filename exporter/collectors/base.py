"""The one shape every collector has (see `exporter/collectors/__init__.py`)."""

from __future__ import annotations


class Collector:
    """A source of data for /metrics.

    Subclasses set `name` and implement `collect()`; the other steps default to doing
    nothing. The scraper (`exporter/scrape.py`) and the HTTP server's lifecycle
    (`exporter/http.py`) call them, never anything else.
    """

    name: str = ""
    # collectors whose data this one's finish() reads: they finish first
    requires: tuple[str, ...] = ()

    async def start(self) -> None:
        """Begin background work (log tails, /dev/kmsg): once, before the first scrape."""

    async def collect(self) -> object:
        """One collection's data (a snapshot type of exporter/snapshot.py)."""
        raise NotImplementedError

    def finish(self, snapshot) -> None:
        """Join this collection's data with other collectors' (a `Snapshot` whose results
        are all in), or learn from them; after every collector of the scrape is done."""

    async def stop(self) -> None:
        """Close connections and stop background work: once, at shutdown."""
