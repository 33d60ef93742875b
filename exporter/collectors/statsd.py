"""The statsd collector: gunicorn's own statsd stream (`--statsd-host`) received on
`--statsd.listen-address`, attributed to apps by the kernel, as request counts by
status, a request duration histogram and log message counts per app.

* start(): bind the UDP socket (exporter/statsd/receiver.py). A port another process
  holds is one warning and `gunicorn_statsd_up 0`; every collection tries again.
* every datagram: exporter/statsd/senders.py accumulates it under its source address.
* collect(): in a thread, the resolver (exporter/statsd/attribution.py) verifies the
  proven senders and looks up the new ones against the gunicorn processes of the last
  collection; then the senders' data is folded into their apps and a snapshot taken.
* learn(): once a collection is complete, its gunicorn processes (pid -> app, worker
  slot) for the next lookups, and forget the data of apps the gunicorn collector no
  longer reports (it forgets them
  after --gunicorn.forget-after, or when its memory of 256 apps is full).

docs/requests.md describes the design; docs/security.md what a local sender can do.
"""

from __future__ import annotations

import asyncio
import logging
import time

from exporter.collectors.base import Collector
from exporter.linux.procfs import ProcFS
from exporter.options import DEFAULTS
from exporter.parsing import parse_listen_address
from exporter.snapshot import GunicornSnapshot, StatsdSnapshot
from exporter.statsd.attribution import ProcMap, Resolver, proc_map
from exporter.statsd.receiver import Receiver
from exporter.statsd.senders import SenderTable

log = logging.getLogger(__name__)


class StatsdCollector(Collector):
    name = "statsd"

    def __init__(self, listen: str = DEFAULTS["statsd.listen-address"],
                 prefixes: dict[str, str] | None = None,
                 receive_buffer: int = DEFAULTS["statsd.receive-buffer"],
                 procfs: ProcFS | None = None, *, mode: str = "batch"):
        host, port = parse_listen_address(listen)
        self.listen = listen
        self.table = SenderTable(prefixes)
        self.receiver = Receiver(host, port, self.table.feed, receive_buffer=receive_buffer,
                                 mode=mode)
        self.resolver = Resolver(procfs or ProcFS(), host, port)
        self.pmap: ProcMap | None = None
        self.lookups = 0
        self.last_cost: tuple[int, int, float] = (0, 0, 0.0)  # processes, fds, seconds
        self._drops: int | None = None
        self._started = False
        self._warned = False

    async def start(self) -> None:
        self._started = True
        await self._bind()

    async def _bind(self) -> None:
        if self.receiver.up:
            return
        if await self.receiver.start():
            if self._warned:
                log.info("statsd: now listening on %s", self.listen)
            asked, got = self.receiver.receive_buffer, self.receiver.buffer_size or 0
            if asked and got < asked:   # the kernel reports twice what it granted
                log.info("statsd: receive buffer %d bytes, not the %d asked for: raise "
                         "net.core.rmem_max or grant CAP_NET_ADMIN to absorb longer bursts",
                         got // 2, asked)
            return
        if not self._warned:
            self._warned = True
            log.warning("statsd: cannot listen on %s (%s); gunicorn_statsd_up is 0 and "
                        "every other collector works. Another statsd daemon? Set "
                        "--statsd.listen-address or --no-collector.statsd",
                        self.listen, self.receiver.bind_error)

    async def stop(self) -> None:
        await self.receiver.stop()

    async def collect(self) -> StatsdSnapshot:
        if not self._started:
            await self.start()
        else:
            await self._bind()
        now = time.monotonic()
        verify, lookup = self.table.plan(now)
        pmap = self.pmap
        # In a thread: the UDP table it dumps and the senders it verifies are as many as
        # local users make them (100k UDP sockets: 190 ms of decoding).
        outcome = await asyncio.to_thread(self.resolver.run, verify, lookup, pmap,
                                          self.receiver.inode)
        if lookup:
            self.lookups += 1
            self.last_cost = (outcome.processes_scanned, outcome.fds_scanned, outcome.seconds)
        if outcome.own_drops is not None:
            self._drops = outcome.own_drops
        self.table.apply(outcome.results, now, pmap.generation if pmap else 0)
        self.table.adopt(outcome.adopted)
        t = self.table
        return StatsdSnapshot(
            up=self.receiver.up, packets=t.packets, malformed_lines=t.malformed,
            ignored_lines=t.ignored,
            unattributed_lines={"unknown_sender": t.unattributed["unknown_sender"],
                                "limit": t.unattributed["limit"] + t.apps.dropped},
            senders=t.counts(), lookups=self.lookups, kernel_drops=self._drops,
            receive_buffer=self.receiver.buffer_size, requests=t.apps.snapshot())

    def learn(self, snapshot) -> None:
        g = snapshot.data("gunicorn", GunicornSnapshot)
        generation = (self.pmap.generation if self.pmap else 0) + 1
        if g is not None:
            self.pmap = proc_map(g, generation)
        elif snapshot is not None and "gunicorn" not in snapshot.results:
            # --no-collector.gunicorn: no process can be proven; senders go by prefix
            self.pmap = ProcMap(generation)
        else:
            return                     # the gunicorn collector failed this time: wait
        self.table.map_generation = generation
        self.table.keep_apps(self.pmap.apps)
