"""The sampler collector: starts and stops the sampling thread (exporter/sampler/),
tells it after each scrape what the gunicorn collector found, and reports its counters.
It owns the netlink sockets the sampler reads through: one in the exporter's network
namespace, and one per other namespace (pod) that holds a watched listener."""

from __future__ import annotations

import logging
import time

from exporter.collectors.base import Collector
from exporter.linux import netns, sockdiag
from exporter.sampler import Sampler
from exporter.snapshot import GunicornSnapshot, SamplerSnapshot

log = logging.getLogger(__name__)


class SamplerCollector(Collector):
    name = "sampler"

    def __init__(self, interval: float, window: float, proc: str = "/proc"):
        self.proc = proc
        self._own = sockdiag.ListenQueues()
        self._pods: dict[int, sockdiag.ListenQueues] = {}   # netns -> its reader
        self._denied: dict[int, float] = {}   # netns -> when to try entering it again
        self.sampler = Sampler(interval, window, self._read, proc=proc, read_times=self._times)

    def _read(self, wanted: dict[int | None, tuple[int, set[int]]]) -> dict[int, int]:
        """Queue lengths of the wanted listeners, namespace by namespace (sampler thread).
        A namespace that cannot be read costs its own listeners this sample only."""
        for ns in [ns for ns in self._pods if ns not in wanted]:
            self._pods.pop(ns).close()
        return self._each(wanted, lambda reader, inodes: reader.read(inodes))

    def _times(self, wanted: dict[int | None, tuple[int, list]]) -> dict:
        """tcp_info of the wanted TCP connections, namespace by namespace (the dependency
        clock, in the sampler thread)."""
        return self._each(wanted, lambda reader, socks: reader.times(socks))

    def _each(self, wanted: dict, ask) -> dict:
        out: dict = {}
        now = time.monotonic()
        for ns, (pid, what) in wanted.items():
            if ns is None:
                out.update(ask(self._own, what))
                continue
            if self._denied.get(ns, 0) > now:
                continue
            reader = self._pods.get(ns)
            if reader is None:
                if len(self._pods) >= netns.MAX_NAMESPACES:
                    continue
                reader = self._pods[ns] = sockdiag.ListenQueues(
                    opener=lambda ns=ns, pid=pid: netns.open_in(pid, ns, self.proc)[0])
            try:
                out.update(ask(reader, what))
            except OSError as e:   # no CAP_SYS_ADMIN, the pod is gone, ...
                self.sampler.errors += 1
                log.debug("sampler: network namespace %s: %r", ns, e)
                if isinstance(e, PermissionError):   # not every tick: once a minute
                    if len(self._denied) > netns.MAX_NAMESPACES:
                        self._denied.clear()
                    self._denied[ns] = now + 60
        return out

    async def start(self) -> None:
        self.sampler.start()

    async def collect(self) -> SamplerSnapshot:
        return self.sampler.snapshot()

    def learn(self, snapshot) -> None:
        g = snapshot.data("gunicorn", GunicornSnapshot)
        if g is not None:
            self.sampler.retarget(g)

    async def stop(self) -> None:
        self.sampler.stop()
        self._own.close()
        for reader in self._pods.values():
            reader.close()
        self._pods.clear()
