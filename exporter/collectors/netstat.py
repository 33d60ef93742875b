"""Host-wide listen-queue facts: net.core.somaxconn and the kernel's listen overflow counters.

`somaxconn` silently caps every listen backlog (gunicorn's `--backlog` included), and
TcpExt ListenOverflows/ListenDrops count connections the kernel dropped because an
accept queue was full (W11). Both are per network namespace: these are the exporter's
own namespace's values.
"""

from __future__ import annotations

from exporter.collectors.base import Collector
from exporter.linux.procfs import ProcFS
from exporter.snapshot import HostSnapshot


class NetstatCollector(Collector):
    name = "netstat"

    def __init__(self, procfs: ProcFS | None = None):
        self.procfs = procfs or ProcFS()

    async def collect(self) -> HostSnapshot:
        # On the loop: three small files the kernel writes for our own namespace, which
        # cannot block (a thread hop would cost more than the reads: docs/performance.md).
        return self._read()

    def _read(self) -> HostSnapshot:
        snap = HostSnapshot()
        snap.somaxconn = self.procfs.somaxconn()
        tcpext = self.procfs.tcpext()
        snap.listen_overflows = tcpext.get("ListenOverflows")
        snap.listen_drops = tcpext.get("ListenDrops")
        return snap
