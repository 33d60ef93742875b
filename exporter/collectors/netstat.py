"""Host-wide listen-queue facts: net.core.somaxconn and the kernel's listen overflow counters.

`somaxconn` silently caps every listen backlog (gunicorn's `--backlog` included), and
TcpExt ListenOverflows/ListenDrops count connections the kernel dropped because an
accept queue was full (W11). Both are per network namespace: these are the exporter's
own namespace's values.
"""

from __future__ import annotations

import asyncio

from exporter.collectors.base import Collector
from exporter.linux.procfs import ProcFS
from exporter.snapshot import HostSnapshot


class NetstatCollector(Collector):
    name = "netstat"

    def __init__(self, procfs: ProcFS | None = None):
        self.procfs = procfs or ProcFS()

    async def collect(self) -> HostSnapshot:
        return await asyncio.to_thread(self._read)

    def _read(self) -> HostSnapshot:
        snap = HostSnapshot()
        snap.somaxconn = self.procfs.somaxconn()
        tcpext = self.procfs.netstat_counters().get("TcpExt", {})
        snap.listen_overflows = tcpext.get("ListenOverflows")
        snap.listen_drops = tcpext.get("ListenDrops")
        return snap
