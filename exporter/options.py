"""Every setting of the exporter, declared once: its key (the flag without `--`, the
environment variable `GUNICORN_EXPORTER_<KEY>` and the config file key all derive from
it), the parser that checks a value, the default, and the help text. A setting's type
is its parser's return annotation (`Option.value_type`): written once, there.

`exporter/config.py` reads flags, environment and config file against this table;
collectors take their defaults from `DEFAULTS`, so no default is written twice. The
parsers raise `ConfigError` with a message that never echoes a secret (DSNs).
"""

from __future__ import annotations

import typing
from dataclasses import dataclass

from exporter.logs.access import DEFAULT_COMPILED as DEFAULT_ACCESS_FORMATS
from exporter.logs.formats import DEFAULT_FORMATS, PRESETS
from exporter.parsing import (DEFAULT_PORT, ConfigError, _log_level, _max_names,
                              parse_access_formats, parse_app_budgets, parse_app_names,
                              parse_bool, parse_dsn_files, parse_dsns, parse_duration,
                              parse_line_length, parse_listen_address,
                              parse_log_files, parse_max_masters, parse_max_peers,
                              parse_ports,
                              parse_receive_buffer, parse_regex, parse_routes, parse_signatures,
                              parse_optional_path, parse_statsd_prefixes, parse_users,
                              parse_worker_series, _path,
                              _positive_duration, _positive_int, _ratio, _strings,
                              _telemetry_path)



@dataclass(frozen=True)
class Option:
    key: str                 # flag without --, config file key (dots: TOML tables)
    dest: str                # attribute of Config
    parse: object            # value -> parsed value; raises ConfigError; annotated
    default: object
    help: str
    repeatable: bool = False
    comma_split: bool = True  # repeatable: one environment variable may hold a comma list
    secret: bool = False      # never shown (DSNs may hold passwords)
    flag: bool = False        # a switch: --key alone means true (--key=false also works)
    shown: str | None = None  # the default as the help text says it (else derived)

    @property
    def value_type(self) -> object:
        """The setting's type: its parser's return annotation (`object` when it has none),
        or None as well when the default is None (not set)."""
        parsed = typing.get_type_hints(self.parse).get("return", object)
        return parsed | None if self.default is None else parsed

    def help_text(self) -> str:
        shown = self.shown if self.shown is not None else _show(self.default)
        return f"{self.help} (default {shown})" if shown else self.help


def _show(value) -> str:
    if value in (None, (), {}, frozenset()):
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    if isinstance(value, float) and value.is_integer():
        return f"{int(value)}s"
    return str(value)


def _listen_address(value) -> str:
    parse_listen_address(str(value))
    return str(value)


def _listen_addresses(values) -> tuple[str, ...]:
    out = []
    for v in values if isinstance(values, (list, tuple)) else [values]:
        for part in str(v).split(","):
            if part.strip():
                out.append(_listen_address(part.strip()))
    if not out:
        raise ConfigError("give at least one HOST:PORT")
    return tuple(dict.fromkeys(out))


O = Option
OPTIONS: tuple[Option, ...] = (
    O("web.listen-address", "listen_addresses", _listen_addresses, (f":{DEFAULT_PORT}",),
      "address to serve metrics on: HOST:PORT, [IPv6]:PORT, or :PORT for every address "
      "(repeatable or comma-separated)", repeatable=True),
    O("web.systemd-socket", "web_systemd_socket", parse_bool, False,
      "serve on the sockets systemd passes (socket activation: LISTEN_FDS) instead of "
      "--web.listen-address", flag=True),
    O("web.telemetry-path", "telemetry_path", _telemetry_path, "/metrics", "path of the metrics page"),
    O("web.config.file", "web_config_file", _path, None,
      "exporter-toolkit web config (YAML) with TLS, client certificates, basic auth and "
      "headers; re-read on SIGHUP and when it or a file it names changes", shown=""),
    O("web.max-connections", "web_max_connections", _positive_int, 64,
      "connections kept at once: a new one pushes out the oldest that is not being served "
      "(idle, half-sent, handshaking or not reading); 503 only when all are being served"),
    O("web.header-timeout", "web_header_timeout", _positive_duration, 10.0,
      "time a client has to send its request headers (and finish a TLS handshake)"),
    O("web.write-timeout", "web_write_timeout", _positive_duration, 10.0,
      "time a client has to read an answer; then the connection is closed"),
    O("web.health-auth", "web_health_auth", parse_bool, True,
      "/-/healthy needs the same credentials as /metrics; false leaves it open (for probes)"),
    O("log.level", "log_level", _log_level, "info", "debug, info, warn or error"),
    O("path.procfs", "procfs", _path, "/proc", "proc file system root"),
    O("scrape.timeout", "scrape_timeout", _positive_duration, 8.0,
      "time limit for one collection; Prometheus' own scrape timeout header can only shorten it"),
    O("gunicorn.db-port", "db_ports", parse_ports, (5432, 6432),
      "TCP port of Postgres/pgbouncer that worker connections are counted to (repeatable or "
      "comma-separated; every --postgres.dsn server's port is added)", repeatable=True),
    O("gunicorn.db-socket", "db_socket_paths", _strings, (),
      "extra unix socket path of a database (repeatable; .s.PGSQL.<db-port> sockets are always counted)",
      repeatable=True),
    O("gunicorn.app-name", "app_names", parse_app_names, (),
      "REGEX=NAME: call a master whose name or command line matches REGEX NAME (repeatable, first match wins)",
      repeatable=True, comma_split=False),
    O("gunicorn.expected-app", "expected_apps", _strings, (),
      "an app that should always run: gunicorn_up{app} 0 from the first scrape when it is absent (repeatable)",
      repeatable=True),
    O("gunicorn.control-socket", "control_socket", parse_bool, True,
      "ask the master's control socket (read-only 'show' commands) for its settings"),
    O("gunicorn.control-socket-timeout", "control_timeout", _positive_duration, 1.0,
      "time limit for one control socket query"),
    O("gunicorn.forget-after", "forget_after", parse_duration, 3600.0,
      "stop reporting gunicorn_up 0 for an app gone this long (the window of the "
      "GunicornAppVanished alert); 0 = never", shown="1h"),
    O("gunicorn.remember-after", "remember_after", parse_duration, 60.0,
      "remember an app (gunicorn_up 0 once it stops) only after its master has run this "
      "long with workers and a listening socket", shown="1m"),
    O("gunicorn.worker-series", "worker_series", parse_worker_series, "all",
      "all: per-worker series (label worker) as well as the app-level ones; none: only the "
      "app-level series (a fleet's series budget, docs/metrics.md#series-budget)"),
    O("gunicorn.user", "users", parse_users, None,
      "watch only masters run by this user (name or uid; repeatable or comma-separated)",
      repeatable=True, shown="every user"),
    O("gunicorn.include", "include", parse_regex, None,
      "report only apps whose whole name matches this regular expression", comma_split=False,
      shown="all"),
    O("gunicorn.exclude", "exclude", parse_regex, None,
      "do not report apps whose whole name matches this regular expression", comma_split=False,
      shown="none"),
    O("gunicorn.memory-detail-interval", "memory_detail_interval", parse_duration, 60.0,
      "how often each worker's unique and proportional memory (USS, PSS: psutil, "
      "/proc/PID/smaps_rollup) is read, in a thread, off the scrape's path; 0 = never",
      shown="60s"),
    O("gunicorn.max-masters", "max_masters", parse_max_masters, 256,
      "masters measured per scrape, shared out between their users; the rest are counted in "
      "gunicorn_exporter_dropped_masters"),
    O("dependencies.max-peers", "dependency_max_peers", parse_max_peers, 10,
      "peers per app in the gunicorn_dependency_* series (those with the most connections); "
      "the rest are folded into peer=\"other\""),
    O("sampler.interval", "sampler_interval", parse_duration, 0.1,
      "how often the sampler reads the listeners' accept queues between scrapes; 0 turns "
      "the sampler off", shown="100ms"),
    O("sampler.peak-window", "sampler_peak_window", _positive_duration, 15.0,
      "gunicorn_listener_queue_peak and gunicorn_worker_heartbeat_age_max_seconds are the "
      "largest queue length and heartbeat age seen in this window"),
    O("oom.kmsg-path", "kmsg_path", parse_optional_path, "/dev/kmsg",
      "kernel log device read for OOM kill records; 'none' = use cgroup and /proc/vmstat counters only"),
    O("logs.file", "log_files", parse_log_files, (),
      "[APP=]PATH: follow this log file (gunicorn error log, application log, nginx error/access "
      "log, Caddy's JSON access/error log) and count error signatures in it, against APP unless a line names its app (repeatable)",
      repeatable=True),
    O("logs.signature", "log_signatures", parse_signatures, (),
      "NAME=REGEX: count log lines matching REGEX as signature NAME, in addition to the built-in "
      "ones (repeatable)", repeatable=True, comma_split=False),
    O("logs.poll-interval", "log_poll_interval", _positive_duration, 1.0,
      "how often log files are checked for new lines and rotation"),
    O("logs.max-line-length", "log_max_line", parse_line_length, 64 * 1024,
      "longer lines are matched on their beginning only", shown="64KiB"),
    O("logs.access-format", "log_access_formats", parse_access_formats, DEFAULT_ACCESS_FORMATS,
      "access log format tried on every --logs.file line, in order: a gunicorn access_log_format, "
      f"an nginx log_format, or a preset ({', '.join(PRESETS)}; docs/requests.md); repeatable",
      repeatable=True, comma_split=False, shown=",".join(DEFAULT_FORMATS)),
    O("requests.route", "request_route_values", parse_routes, (),
      "NAME=REGEX: access log requests whose path matches REGEX (RE2 syntax, searched in the "
      "path without its query string) count under route=NAME; the first match wins, the rest "
      "is route=\"other\"; no route label without one (repeatable)", repeatable=True,
      comma_split=False),
    O("requests.route-file", "request_route_files", _strings, (),
      "file of NAME=REGEX routes, one a line (# comments), read at start (repeatable)",
      repeatable=True),
    O("requests.max-routes", "request_max_routes", _positive_int, 50,
      "route names allowed (each multiplies the access log request series)"),
    O("statsd.listen-address", "statsd_listen_address", _listen_address, "127.0.0.1:8125",
      "UDP address gunicorn's --statsd-host sends to"),
    O("statsd.prefix", "statsd_prefixes", parse_statsd_prefixes, {},
      "PREFIX=APP: count statsd lines named PREFIX.gunicorn.* against APP when their sender is "
      "not a gunicorn process the exporter can see (another network namespace or host); "
      "PREFIX alone means APP=PREFIX (repeatable)", repeatable=True, shown=""),
    O("statsd.receive-buffer", "statsd_receive_buffer", parse_receive_buffer, 8 * 1024 * 1024,
      "SO_RCVBUF of the statsd socket (capped at net.core.rmem_max without CAP_NET_ADMIN)",
      shown="8MiB"),
    O("postgres.dsn", "postgres_dsns", parse_dsns, (),
      "libpq connection string or postgresql:// URI of a server to watch (repeatable); prefer "
      "--postgres.dsn-file or PGPASSFILE for the password. The usual PG* environment variables apply",
      repeatable=True, comma_split=False, secret=True),
    O("postgres.dsn-file", "postgres_dsn_files", parse_dsn_files, (),
      "file with one DSN per line (# comments), read at start; keeps passwords out of the "
      "process list (repeatable)", repeatable=True),
    O("postgres.timeout", "postgres_timeout", _positive_duration, 2.0,
      "time limit per server and scrape; also the session's statement_timeout and lock_timeout"),
    O("postgres.app-budget", "postgres_app_budgets", parse_app_budgets, {},
      "APP=N: database connections one worker of APP may hold (SQLAlchemy pool_size + max_overflow), "
      "or APP=threads, or APP=none; *=... sets the default for other apps (repeatable)",
      repeatable=True, shown="threads"),
    O("postgres.max-application-names", "postgres_max_application_names", _max_names, 20,
      "application_name values kept per server; the rest are reported as 'other'"),
    # stacks of stuck workers (--collector.stacks, off by default; docs/security.md)
    O("stacks.timeout-share", "stacks_timeout_share", _ratio, 0.5,
      "a worker whose heartbeat age passes this share of its --timeout (and half a second; "
      "for sync workers at least 0.5, as an idle one beats every timeout/2) is stuck: its "
      "stack is captured"),
    O("stacks.min-wait", "stacks_min_wait", _positive_duration, 5.0,
      "a worker that has waited on one dependency this long is stuck: its stack is captured"),
    O("stacks.interval", "stacks_interval", _positive_duration, 10.0,
      "at most one capture per worker in this time"),
    O("stacks.max-concurrent", "stacks_max_concurrent", _positive_int, 2,
      "at most this many captures (py-spy processes) at once"),
    O("stacks.max-cpu", "stacks_max_cpu", _ratio, 0.01,
      "share of one core the captures may use on average (each py-spy run's own CPU time); "
      "captures wait while it is spent"),
    O("stacks.capture-timeout", "stacks_capture_timeout", _positive_duration, 2.0,
      "time limit for one capture; then py-spy is killed"),
    O("stacks.py-spy", "stacks_py_spy", _path, None,
      "the py-spy executable (default: the one installed beside the exporter's Python, "
      "else the first on PATH)", shown=""),
    # configuration advice: `gunicorn-exporter doctor` and gunicorn_advice (docs/doctor.md)
    O("doctor.interval", "doctor_interval", parse_duration, 5.0,
      "doctor: time between its two collections (busy workers against CPU, W1); 0 = one "
      "collection, without that rule"),
    O("doctor.proxy-timeout", "doctor_proxy_timeout", _positive_duration, 60.0,
      "timeout of the proxy in front of the apps (W8), for apps no nginx location or Caddy "
      "reverse_proxy proxies to"),
    O("doctor.nginx-config", "doctor_nginx_config", parse_optional_path, "/etc/nginx/nginx.conf",
      "nginx config read statically for proxy_read_timeout (and its includes); 'none' = do not read"),
    O("doctor.caddy-config", "doctor_caddy_config", parse_optional_path, "/etc/caddy/Caddyfile",
      "Caddyfile read statically for reverse_proxy's response_header_timeout and read_timeout "
      "(and its imports); 'none' = do not read"),
    O("doctor.gthread-connections-per-thread", "doctor_gthread_ratio", _ratio, 4.0,
      "gthread --worker-connections above this many per thread is advised against (C3, W9)",
      shown="4"),
    O("doctor.fd-ratio", "doctor_fd_ratio", _ratio, 0.8,
      "advise when a worker at its --worker-connections would use more than this share of its fd limit (W10)"),
    O("doctor.io-busy-ratio", "doctor_io_busy_ratio", _ratio, 0.75,
      "sync workers busy at least this share of the samples while using little CPU are I/O-bound (W1)"),
    O("doctor.io-cpu-ratio", "doctor_io_cpu_ratio", _ratio, 0.2,
      "busy sync workers using at most this many CPU seconds per second wait on I/O (W1)"),
    O("doctor.workers-min-per-core", "doctor_workers_min_per_core", _ratio, 1.0,
      "fewer workers than this many per usable CPU is advised against (W2)", shown="1"),
    O("doctor.workers-max-per-core", "doctor_workers_max_per_core", _ratio, 4.0,
      "more workers than this many per usable CPU, plus one, is advised against (I3)",
      shown="4"),
    O("doctor.min-queue-limit", "doctor_min_queue_limit", _max_names, 128,
      "an accept queue limit below this is advised against (W11)"),
    O("doctor.green-db-ratio", "doctor_green_db_ratio", _ratio, 2.0,
      "a gevent/eventlet worker holding more DB connections than this times its OS threads "
      "(or its declared budget) is C6", shown="2"),
    O("doctor.db-budget-ratio", "doctor_db_budget_ratio", _ratio, 0.8,
      "warn when the apps' DB budgets add up to more than this share of a server's usable "
      "connections (critical above all of them, C5)"),
)
del O

BY_KEY: dict[str, Option] = {o.key: o for o in OPTIONS}
DEFAULTS: dict[str, object] = {o.key: o.default for o in OPTIONS}
