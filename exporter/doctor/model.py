"""What the rules read and write: findings with their evidence, the thresholds, the host
facts, the `View` of one collection, and the rule registry.

A rule is a function `View -> iterable of Finding`, registered with `@rule(name, ids)`.
It reads only the `View` (plain data: snapshots, facts, thresholds), so every rule is a
pure function, tested on literal snapshots, and the same code runs in
`gunicorn-exporter doctor` and behind the daemon's `gunicorn_advice` series.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Callable, Iterable

from exporter.options import DEFAULTS
from exporter.snapshot import AppSnapshot, HostSnapshot, PostgresSnapshot

SEVERITIES = ("warning", "critical")
# The failure-mode catalogue (docs/failure-modes.md): the IDs a finding may prevent.
CATALOGUE = tuple([f"C{i}" for i in range(1, 8)] + [f"W{i}" for i in range(1, 12)]
                  + [f"I{i}" for i in range(1, 4)])


@dataclass(frozen=True)
class Evidence:
    value: object          # a number, a string, a list of them, or None (not known)
    source: str            # where the value came from


@dataclass
class Finding:
    app: str
    id: str                # catalogue ID the advice prevents
    rule: str              # the rule's name (one function in rules.py / dbrules.py)
    severity: str          # 'warning' or 'critical'
    evidence: dict[str, Evidence]
    advice: str

    def __post_init__(self):
        if self.severity not in SEVERITIES or self.id not in CATALOGUE:
            raise ValueError(f"rule {self.rule}: bad severity {self.severity!r} or id {self.id!r}")

    def as_json(self) -> dict:
        return {"app": self.app, "id": self.id, "rule": self.rule, "severity": self.severity,
                "evidence": {k: {"value": e.value, "source": e.source}
                             for k, e in self.evidence.items()},
                "advice": self.advice}


@dataclass(frozen=True)
class Thresholds:
    """Every rule's tunables; defaults and flags are declared in exporter/options.py."""

    proxy_timeout: float = DEFAULTS["doctor.proxy-timeout"]
    gthread_ratio: float = DEFAULTS["doctor.gthread-connections-per-thread"]
    fd_ratio: float = DEFAULTS["doctor.fd-ratio"]
    io_busy_ratio: float = DEFAULTS["doctor.io-busy-ratio"]
    io_cpu_ratio: float = DEFAULTS["doctor.io-cpu-ratio"]
    workers_min_per_core: float = DEFAULTS["doctor.workers-min-per-core"]
    workers_max_per_core: float = DEFAULTS["doctor.workers-max-per-core"]
    min_queue_limit: int = DEFAULTS["doctor.min-queue-limit"]
    green_db_ratio: float = DEFAULTS["doctor.green-db-ratio"]
    db_budget_ratio: float = DEFAULTS["doctor.db-budget-ratio"]

    @classmethod
    def from_config(cls, cfg) -> "Thresholds":
        """From a Config: each field is the option whose dest is `doctor_<field>`."""
        return cls(**{f.name: getattr(cfg, f"doctor_{f.name}") for f in fields(cls)})


@dataclass(frozen=True)
class CpuFact:
    cores: float           # CPUs the master may use: affinity, capped by a cgroup CPU quota
    source: str            # e.g. 'affinity 0-3 (/proc/PID/status)' or a cpu.max path
    group: str             # apps with the same group share those CPUs


@dataclass(frozen=True)
class HostFact:
    """The host as psutil sees it (psutil.cpu_count, virtual_memory, swap_memory)."""
    cpus: int | None
    memory_total: int
    memory_available: int
    swap_total: int
    swap_used: int


@dataclass(frozen=True)
class MemoryRoom:
    free: int              # bytes more processes of a master could use
    source: str            # the host's available memory, or its cgroup's limit less its use


@dataclass(frozen=True)
class ProxyPass:
    """One nginx proxy_pass and the proxy_read_timeout in force where it is (or one
    Caddy reverse_proxy upstream and its timeout: 0 = Caddy waits for ever)."""
    targets: tuple[str, ...]   # 'unix:/run/shop.sock', '127.0.0.1:8000'
    timeout: float
    where: str                 # 'FILE:LINE of proxy_read_timeout' or "nginx's default"


@dataclass
class NginxConfig:
    path: str
    files: list[str] = field(default_factory=list)
    passes: list[ProxyPass] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


@dataclass
class Facts:
    """What the collectors do not measure and some rules need, read by facts.py."""
    cpus: dict[int, CpuFact] = field(default_factory=dict)           # master pid ->
    control_sockets: dict[int, str] = field(default_factory=dict)    # master pid -> path
    nginx: NginxConfig | None = None
    caddy: NginxConfig | None = None     # a Caddyfile's reverse_proxy timeouts (caddy.py)
    host: HostFact | None = None
    memory_room: dict[int, MemoryRoom] = field(default_factory=dict)  # master pid ->
    # master pid -> USS of its workers, read here when the snapshot has none yet
    worker_uss: dict[int, list[int]] = field(default_factory=dict)


@dataclass
class View:
    """One collection as the rules see it."""
    apps: list[AppSnapshot]                  # running masters only
    host: HostSnapshot | None = None
    postgres: PostgresSnapshot | None = None
    socket_source: str = "none"
    previous: dict[str, AppSnapshot] = field(default_factory=dict)   # the collection before
    interval: float | None = None            # seconds between the two
    facts: Facts = field(default_factory=Facts)
    t: Thresholds = field(default_factory=Thresholds)


Rule = Callable[[View], Iterable[Finding]]
RULES: dict[str, tuple[tuple[str, ...], Rule]] = {}


def rule(name: str, *ids: str):
    """Register a rule under `name`; `ids` are the catalogue IDs its findings carry."""
    def register(fn: Rule) -> Rule:
        if name in RULES:
            raise ValueError(f"rule {name} is registered twice")
        RULES[name] = (ids, fn)
        fn.rule_name = name
        return fn
    return register


FLAGS = {"keepalive": "--keep-alive"}


def source_of(app: AppSnapshot, setting: str) -> str:
    """'--timeout (cmdline)': the gunicorn flag and where the exporter learned its value."""
    flag = FLAGS.get(setting, "--" + setting.replace("_", "-"))
    return f"{flag} ({app.settings_source.get(setting, 'unknown')})"
