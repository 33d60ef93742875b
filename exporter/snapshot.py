"""Plain data that one collection produces and `exporter.metrics` renders.

Collectors fill these; nothing here knows metric names. Keeping the snapshot apart
from rendering lets tests check a collection without parsing exposition text, and
lets concurrent scrapes share one collection.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class WorkerSnapshot:
    slot: int                       # stable per-app label value, reused after recycling
    pid: int
    start_time: float               # seconds since the epoch
    rss_bytes: int
    cpu_seconds: float
    threads: int
    open_fds: int | None            # None when the fd table could not be read
    fd_limit: int | None
    heartbeat_age: float | None     # seconds, computed as the master does
    connections_active: int | None
    connections_client_closed: int | None
    db_connections: int | None
    # The worker's database connections, for attribution by the postgres collector:
    # TCP (local_addr, local_port, remote_addr, remote_port) and unix (inode, peer inode).
    db_tcp: list[tuple[str, int, str, int]] = field(default_factory=list)
    db_unix: list[tuple[int, int]] = field(default_factory=list)


@dataclass
class ListenerSnapshot:
    address: str                    # 'unix:/run/app.sock', '127.0.0.1:8000', '[::]:8000'
    kind: str                       # 'unix' or 'tcp'
    queue_length: int | None
    queue_max: int | None
    worker_slot: int | None = None  # per-worker listener (--reuse-port)


@dataclass
class AppSnapshot:
    app: str
    up: bool
    master_pid: int | None = None
    version: str = "unknown"
    worker_class: str = "unknown"
    workers_desired: int | None = None
    timeout: float | None = None
    keepalive: float | None = None
    capacity: float | None = None   # concurrent requests one worker can serve
    worker_connections: int | None = None
    threads: int | None = None
    backlog: int | None = None
    settings_source: dict[str, str] = field(default_factory=dict)
    control_socket: bool = False
    workers: list[WorkerSnapshot] = field(default_factory=list)
    listeners: list[ListenerSnapshot] = field(default_factory=list)
    master_start_time: float | None = None
    workers_spawned: int | None = None  # from the control socket's `show stats`


@dataclass
class GunicornSnapshot:
    apps: list[AppSnapshot] = field(default_factory=list)
    socket_source: str = "none"     # 'netlink', 'procfs' or 'none'
    permission_denied: int = 0      # processes whose /proc entries we could not read
    truncated: bool = False


@dataclass
class HostSnapshot:
    somaxconn: int | None = None
    listen_overflows: int | None = None
    listen_drops: int | None = None


@dataclass
class CollectorResult:
    name: str
    success: bool
    duration: float
    error: str | None = None
    data: object | None = None


@dataclass
class Snapshot:
    results: dict[str, CollectorResult] = field(default_factory=dict)
    collected_at: float = 0.0
