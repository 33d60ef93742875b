"""Plain data that one collection produces and `exporter.metrics` renders.

Collectors fill these; nothing here knows metric names. Keeping the snapshot apart
from rendering lets tests check a collection without parsing exposition text, and
lets concurrent scrapes share one collection.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from exporter.gunicorn.dependencies import Dependency, Outbound
from exporter.gunicorn.heartbeat import HeartbeatFile
from exporter.linux.cgroup import PodIdentity


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
    connections_idle: int | None = None     # None: not measured (unix listeners, sync workers...)
    # memory only this worker maps (USS) and its proportional share (PSS), read every
    # --gunicorn.memory-detail-interval (exporter/gunicorn/memdetail.py); None: not yet
    unique_memory_bytes: int | None = None
    proportional_memory_bytes: int | None = None
    heartbeat_file: HeartbeatFile | None = None  # for the sampler (not rendered)
    # the peer it waits on longest now, and for how long (None: unknown, a unix peer)
    dependency_wait: tuple[str, float | None] | None = None
    outbound: tuple[Outbound, ...] = ()     # for the sampler's dependency clock (not rendered)

    @property
    def requests(self) -> int | None:
        """Requests the worker holds, being served or waiting for a thread: its active
        connections and those whose client has gone (a thread still runs the app for
        them). None when its connections could not be read."""
        if self.connections_active is None:
            return None
        return self.connections_active + (self.connections_client_closed or 0)


@dataclass
class ListenerSnapshot:
    address: str                    # 'unix:/run/app.sock', '127.0.0.1:8000', '[::]:8000'
    kind: str                       # 'unix' or 'tcp'
    queue_length: int | None
    queue_max: int | None
    worker_slot: int | None = None  # per-worker listener (--reuse-port)
    drops: int | None = None        # TCP: connections the kernel dropped at this socket
    inode: int | None = None        # the socket's inode (for the sampler; not rendered)

    @property
    def label(self) -> str:
        """The `listener` label value: the address, and the worker slot of a per-worker
        (--reuse-port) listener."""
        return self.address if self.worker_slot is None else f"{self.address}#{self.worker_slot}"


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
    control_answer_age: float | None = None  # seconds since the control socket answer in use came
    workers: list[WorkerSnapshot] = field(default_factory=list)
    listeners: list[ListenerSnapshot] = field(default_factory=list)
    # its workers' outbound connections: peer -> connections by state, waits
    dependencies: dict[str, Dependency] = field(default_factory=dict)
    master_start_time: float | None = None
    workers_spawned: int | None = None  # from the control socket's `show stats`
    workers_killed: int | None = None   # `show stats`: SIGTERM/SIGKILL the master sent a worker
    reloads: int | None = None          # `show stats`: HUP reloads
    workers_cpu_seconds: float | None = None  # CPU its workers used, a counter (CpuTotals)
    user: str = ""                  # the master's user name (or uid), for gunicorn_info
    uid: int = -1
    errors: list[str] = field(default_factory=list)  # parts of this app that failed, this scrape
    transient: bool = False         # a USR2 master's NAME.2 or NAME@listener: never remembered
    # the master's network namespace: somaxconn and TcpExt listen counters (W11), read in
    # that namespace (a pod's own, not the host's)
    somaxconn: int | None = None
    listen_overflows: int | None = None
    listen_drops: int | None = None
    pod: PodIdentity | None = None  # container and Kubernetes pod, from the master's cgroup
    netns: int | None = None        # the master's network namespace inode, if not the exporter's
    # not rendered: the master's start (clock ticks) and the socket inodes it held at
    # this scrape, for the statsd collector's attribution
    master_start_ticks: int | None = None
    master_sockets: frozenset[int] = frozenset()


@dataclass
class GunicornSnapshot:
    apps: list[AppSnapshot] = field(default_factory=list)
    socket_source: str = "none"     # 'netlink', 'procfs' or 'none'
    permission_denied: int = 0      # processes whose /proc entries we could not read
    orphans: dict[str, int] = field(default_factory=dict)  # app -> workers whose master is gone
    dropped_masters: int = 0        # masters over --gunicorn.max-masters, not measured
    dropped_workers: int = 0        # workers over the per-master cap
    filtered_masters: int = 0       # masters of users not watched (--gunicorn.user)
    remembered_apps: int = 0        # apps remembered to report gunicorn_up 0
    forgotten_apps: int = 0         # apps dropped from that memory because it was full (counter)
    netns_denied: bool = False      # masters in other network namespaces read from /proc/PID/net


@dataclass
class AdviceSnapshot:
    """The doctor's findings for one scrape (exporter/doctor): (app, catalogue id, rule,
    severity) each."""
    findings: list[tuple[str, str, str, str]] = field(default_factory=list)


@dataclass
class SamplerListener:
    app: str
    listener: str                   # ListenerSnapshot.label
    peak: int | None                # largest queue length in the peak window; None: not seen
    queued_seconds: float           # seconds with a non-empty queue
    length_seconds: float           # integral of the queue length over time


@dataclass
class SamplerSnapshot:
    interval: float
    window: float
    listeners: list[SamplerListener] = field(default_factory=list)
    all_busy_seconds: dict[str, float] = field(default_factory=dict)   # sync apps only
    # (app, worker slot, seconds): the highest heartbeat age of the last peak window
    heartbeat_max: list[tuple[str, int, float]] = field(default_factory=list)
    # (app, peer, worker-seconds waiting on it): the dependency clock
    dependency_waiting: list[tuple[str, str, float]] = field(default_factory=list)
    samples: int = 0
    errors: int = 0
    skipped_seconds: float = 0.0
    busy_seconds: float = 0.0       # wall time the sampler spent sampling


@dataclass
class HostSnapshot:
    somaxconn: int | None = None
    listen_overflows: int | None = None
    listen_drops: int | None = None


@dataclass(frozen=True)
class CollectorResult:
    name: str
    success: bool
    duration: float
    error: str | None = None
    data: object | None = None


@dataclass(frozen=True)
class Snapshot:
    """One scrape: every collector's result, joined (exporter/scrape.py). A value: nothing
    changes it once the scraper has made it."""
    results: Mapping[str, CollectorResult] = field(default_factory=dict)
    collected_at: float = 0.0

    def data(self, name: str, kind: type):
        """Collector `name`'s data when it succeeded and is a `kind`, else None."""
        r = self.results.get(name)
        if r is None or not r.success or not isinstance(r.data, kind):
            return None
        return r.data


# --- Postgres (exporter/collectors/postgres.py) ------------------------------

@dataclass
class PostgresBackend:
    """One client backend from pg_stat_activity, as far as attribution needs it."""
    pid: int
    client_addr: str | None         # None: unix socket, or hidden (no pg_monitor)
    client_port: int | None         # -1: unix socket; None: hidden
    hidden: bool = False            # the role may not see this session's details
    socket_inodes: tuple[int, ...] = ()  # from /proc/<pid>/fd when the server is local


@dataclass
class PostgresAttribution:
    apps: dict[str, int] = field(default_factory=dict)                   # app -> backends
    workers: dict[tuple[str, int], int] = field(default_factory=dict)    # (app, slot) -> backends
    unattributed: dict[str, int] = field(default_factory=dict)           # reason -> backends


@dataclass
class PostgresServerSnapshot:
    server: str                     # host:port/dbname, never credentials
    up: bool
    error: str | None = None        # redacted; for logs and tests, not a label
    version_num: int | None = None
    port: int | None = None         # the server's `port` setting (matches worker sockets)
    own_pid: int | None = None      # the exporter's own backend
    local: bool = False             # backend pids are processes on this host
    monitor_privilege: bool | None = None   # pg_monitor (or superuser): sees every session
    max_connections: int | None = None
    superuser_reserved_connections: int | None = None
    reserved_connections: int | None = None  # Postgres 16+
    # (datname, usename, application_name, state) -> client backends
    connections: dict[tuple[str, str, str, str], int] = field(default_factory=dict)
    hidden_connections: int = 0
    oldest_idle_in_transaction: dict[str, float] = field(default_factory=dict)  # datname -> s
    oldest_query: dict[str, float] = field(default_factory=dict)                # datname -> s
    backends: list[PostgresBackend] = field(default_factory=list)
    attribution: PostgresAttribution | None = None  # by the join, when gunicorn ran
    # the server as the exporter reaches it, as a dependency peer ('10.0.0.5:5432',
    # 'unix:/run/postgresql/.s.PGSQL.5432'): workers connected to it depend on it
    address: str | None = None


@dataclass
class DbBudget:
    app: str
    workers: int
    per_worker: float
    source: str                     # 'declared' or 'threads' (the default)

    @property
    def total(self) -> float:
        return self.workers * self.per_worker


@dataclass
class PostgresSnapshot:
    servers: list[PostgresServerSnapshot] = field(default_factory=list)
    budgets: list[DbBudget] = field(default_factory=list)
    dependency_peers: list[tuple[str, str]] = field(default_factory=list)  # (app, peer): a server


# --- OOM kills (exporter/collectors/oom.py) -----------------------------------------

@dataclass
class OomEvent:
    time: float
    pid: int
    name: str
    app: str | None     # None = not a gunicorn process we know
    role: str | None    # 'worker' or 'master'
    kind: str           # 'memcg' or 'global'
    task_memcg: str | None = None
    attributed_by: str | None = None  # 'pid' or 'cgroup'


@dataclass
class AppOom:
    worker_kills: int = 0
    master_kills: int = 0
    last_kill_time: float | None = None
    cgroup: str | None = None              # memory cgroup path of the master
    cgroup_oom_kills: int | None = None    # that cgroup's own kernel counter


@dataclass
class OomSnapshot:
    source: str = "none"                   # 'kmsg', 'cgroup', 'vmstat' or 'none'
    host_oom_kills: int | None = None      # /proc/vmstat oom_kill (since boot)
    unattributed_kills: int = 0            # kmsg victims that were no gunicorn process
    apps: dict[str, AppOom] = field(default_factory=dict)
    recent: list[OomEvent] = field(default_factory=list)
    kmsg_records: int = 0
    kmsg_malformed: int = 0
    kmsg_lost: int = 0


# --- log signatures (exporter/collectors/logs.py) -------------------------------------

@dataclass
class LogFileStats:
    path: str
    app: str | None
    open: bool
    lines: int
    truncated_lines: int
    rotations: int
    errors: int
    access_lines: int = 0           # lines parsed as access log entries
    access_unparsed: int = 0        # lines that look like access log entries, no format fits
    malformed: dict[str, int] = field(default_factory=dict)  # reason -> lines not counted
    lines_lost: int = 0             # lines the file held that the exporter could not read
    lines_recovered: int = 0        # read from a copytruncate copy


@dataclass
class LogsSnapshot:
    events: dict[tuple[str, str], int] = field(default_factory=dict)   # (app, signature) -> count
    files: list[LogFileStats] = field(default_factory=list)
    signatures: tuple[str, ...] = ()
    dropped: int = 0    # matches not counted because the series limit was reached
    requests: "RequestsSnapshot | None" = None   # access log lines (exporter/logs/access.py)
    proxy_requests: "RequestsSnapshot | None" = None   # the same from a proxy's (nginx) log
    queue: "QueueSnapshot | None" = None         # X-Request-Start of access log lines


# --- requests: gunicorn's statsd stream, access logs (exporter/statsd/, logs/access.py) ---

@dataclass
class AppRequests:
    statuses: dict[str, float] = field(default_factory=dict)  # status label -> requests
    buckets: list[float] = field(default_factory=list)  # per bucket (not cumulative), +Inf last
    duration_sum: float = 0.0       # seconds
    duration_count: float = 0.0
    log_levels: dict[str, float] = field(default_factory=dict)  # level -> messages


@dataclass
class RequestsSnapshot:
    source: str                     # 'statsd' or 'access_log'
    bounds: tuple[float, ...] = ()  # histogram upper bounds in seconds (+Inf implied)
    apps: dict[str, AppRequests] = field(default_factory=dict)
    # with --requests.route: (app, route) -> requests (then `apps` is empty)
    routes: dict[tuple[str, str], AppRequests] = field(default_factory=dict)


@dataclass
class QueueSnapshot:
    """Time requests waited between the proxy and gunicorn (X-Request-Start), per app."""
    bounds: tuple[float, ...] = ()  # histogram upper bounds in seconds (+Inf implied)
    apps: dict[str, AppRequests] = field(default_factory=dict)   # histogram only
    skew: dict[str, int] = field(default_factory=dict)           # app -> lines not observed
    unmeasured: dict[str, int] = field(default_factory=dict)     # app -> lines read late


@dataclass
class StatsdSnapshot:
    up: bool = False                # the UDP socket is bound
    packets: int = 0
    malformed_lines: int = 0
    ignored_lines: int = 0          # well-formed, not a metric the exporter uses
    unattributed_lines: dict[str, float] = field(default_factory=dict)  # reason -> lines
    senders: dict[str, int] = field(default_factory=dict)   # attribution -> senders now
    lookups: int = 0                # sender lookups done (socket table + fd tables)
    kernel_drops: int | None = None  # datagrams the kernel dropped at the socket (sk_drops)
    receive_buffer: int | None = None   # SO_RCVBUF in force, bytes
    requests: RequestsSnapshot = field(default_factory=lambda: RequestsSnapshot("statsd"))


# --- stacks of stuck workers (exporter/collectors/stacks.py) -----------------------------

@dataclass
class StacksSnapshot:
    reader_available: bool = False  # py-spy was found
    # (app, worker slot, `function (file:line)`): stuck workers captured while stuck
    stuck: list[tuple[str, int, str]] = field(default_factory=list)
    captures: dict[tuple[str, str], int] = field(default_factory=dict)  # (app, outcome) -> n
    cpu_seconds: float = 0.0        # the captures' CPU (their rusage), since start
